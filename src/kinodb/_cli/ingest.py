"""``kino ingest``: convert a dataset from another format into one .kdb file."""

from __future__ import annotations

import argparse
import re
import sys
from typing import Any

from kinodb._cli._types import float_dtype, jpeg_quality, positive_float, positive_int
from kinodb.ingest._base import formats


def register(sub: Any) -> None:
    """Add the subcommand to ``sub``."""
    p = sub.add_parser("ingest", help="convert robomimic/LIBERO HDF5, RLDS TFRecord, LeRobot or zarr into a .kdb file",
                       description="Convert a dataset into one .kdb file, exactly: source dtypes are kept and "
                                   "encoded frames pass through unchanged.")  # fmt: skip
    p.add_argument("src", help="source file or folder")
    p.add_argument("-o", "--output", required=True, help="output .kdb file")
    p.add_argument("-F", "--format", default="auto", type=source_format,
                   help="auto (default), hdf5, rlds, lerobot, zarr, kinfer-ndjson, numpy, or a plug-in's name")  # fmt: skip
    p.add_argument("-e", "--embodiment", type=embodiment_name,
                   help="embodiment of every episode (default: from the source); episodes are chosen "
                        "with --episodes")  # fmt: skip
    p.add_argument("-t", "--task", help="task of every episode and frame (default: from the source)")
    p.add_argument("--fps", type=positive_float,
                   help="frames per second (default: from the source; robosuite and LIBERO HDF5 files without "
                        "control_freq: 20, robosuite's default; else 10)")  # fmt: skip
    p.add_argument("--episodes", metavar="SPEC",
                   help="source episodes by position in the source's list, from 0, e.g. 0-9,29 (positions, "
                        "not LeRobot's episode_index values)")  # fmt: skip
    p.add_argument(
        "--max-episodes", type=positive_int, metavar="N", help="at most N episodes (after --episodes)"
    )
    p.add_argument("--image-codec", choices=("jpeg", "png", "raw"),
                   help="how to store raw source frames (default jpeg; encoded frames pass through)")  # fmt: skip
    p.add_argument("--compress", type=jpeg_quality, metavar="Q",
                   help="JPEG quality 1-100 of --image-codec jpeg (default 95)")  # fmt: skip
    p.add_argument("--no-images", action="store_true", help="leave cameras out")
    p.add_argument("--dtype", type=float_dtype,
                   help="cast floating arrays to a floating dtype, e.g. float32 (default: keep the source dtype)")  # fmt: skip
    p.add_argument("--state-keys", metavar="K1,K2", help="observation keys that make up the state, in order")
    p.add_argument("--action-key", metavar="KEY",
                   help="the feature that holds the actions (LeRobot: default action, else actions; "
                        "RLDS: default steps/action; a dict of tensors such as action_dict is concatenated; "
                        "zarr: default data/action, else data/actions)")  # fmt: skip
    p.add_argument(
        "--split",
        help="split to read: RLDS shards (train, val, ...; default train, and the summary names the splits "
        "left out) or an HDF5 mask/<name> filter key (default: every demo)",
    )
    p.add_argument(
        "--flip-images",
        action="store_true",
        help="rotate frames 180 degrees (LIBERO stores them upside down)",
    )
    p.add_argument("--keep-model-file", action="store_true",
                   help="HDF5: keep each demo's model_file attribute (the MJCF XML that robomimic's "
                        "playback_dataset.py and dataset_states_to_obs.py need, tens of KB a demo) as the extra "
                        "field attrs.model_file, which kino export --format hdf5 writes back")  # fmt: skip
    p.add_argument(
        "--workers", type=positive_int, default=1, metavar="N", help="convert in N processes (same output)"
    )
    p.add_argument("--on-error", choices=("raise", "skip"), default="raise",
                   help="stop at the first bad episode (default) or skip it and report why")  # fmt: skip
    p.add_argument("--force", action="store_true", help="replace OUTPUT if it exists")
    p.add_argument("--verify", action="store_true",
                   help="then re-read the source and compare every episode (kino verify, in this one "
                        "process, whatever --workers says: it decodes every stored frame, and re-encodes "
                        "JPEG frames under the PSNR floor, so it can take several times the ingest); exit 1 "
                        "on a mismatch, keeping the output")  # fmt: skip
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=run)


_KINDS = {
    "hdf5": "robomimic/LIBERO HDF5",
    "rlds": "RLDS/TFDS TFRecord shards",
    "lerobot": "LeRobot v2.0, v2.1, v3.0",
    "kinfer-ndjson": "kinfer NDJSON logs",
    "numpy": "a kino export --format numpy folder",
    "zarr": "a zarr replay buffer (diffusion_policy, UMI)",
}


def source_format(text: str) -> str:
    """``--format``: ``auto`` or a registered source format; anything else is a usage error."""
    known = sorted(formats())
    if text == "auto" or text in known:
        return text
    accepted = ", ".join(f"{name} ({_KINDS[name]})" if name in _KINDS else name for name in known)
    raise argparse.ArgumentTypeError(f"unknown format {text!r}; accepted: auto (detect), {accepted}")


# Digits, ranges and commas only: what --episodes takes (``0-2``, ``5``, ``0-9,29``).
_EPISODE_SPEC = re.compile(r"\s*[0-9]+(\s*-\s*[0-9]+)?(\s*,\s*[0-9]+(\s*-\s*[0-9]+)?)*\s*")


def embodiment_name(text: str) -> str:
    """``-e/--embodiment``: refuse an episode selection given there by mistake.

    ``-e`` is ``--embodiment`` here (as in the earlier kinodb command line) but
    ``--episodes`` in ``kino info``; ``-e 0-2`` would otherwise label every episode
    of the source with the embodiment "0-2".
    """
    if _EPISODE_SPEC.fullmatch(text):
        raise argparse.ArgumentTypeError(
            f"{text!r} is an episode selection, not an embodiment name: -e is --embodiment; to choose "
            f"episodes use --episodes {''.join(text.split())}"
        )
    return text


def run(args: argparse.Namespace) -> int:
    """Ingest and print the report."""
    from kinodb.ingest import ingest  # deferred: converters load their libraries on first use

    _refuse_unused_image_options(args)
    report = ingest(
        args.src, args.output, format=args.format, embodiment=args.embodiment, task=args.task, fps=args.fps,
        episodes=args.episodes, max_episodes=args.max_episodes, image_codec=args.image_codec or "jpeg",
        jpeg_quality=95 if args.compress is None else args.compress, images=not args.no_images, dtype=args.dtype,
        state_keys=args.state_keys,  # K1,K2: split by the library, as for Python callers
        action_key=args.action_key.strip() if args.action_key else None, split=args.split,
        flip_images=args.flip_images, keep_model_file=args.keep_model_file, workers=args.workers,
        on_error=args.on_error, overwrite=args.force, progress=not args.quiet, verify=args.verify,
    )  # fmt: skip
    print(report.summary())
    if report.skipped:
        print(
            f"warning: {len(report.skipped)} episode{'' if len(report.skipped) == 1 else 's'} skipped (summarised above; every one is listed with "
            "its reason in the file's metadata, ingest.skipped)",
            file=sys.stderr,
        )
    return 0


def _refuse_unused_image_options(args: argparse.Namespace) -> None:
    """Refuse image options that the other options leave nothing to do.

    Raises:
        ValueError: ``--compress`` without JPEG, or ``--image-codec``/``--compress`` with
            ``--no-images``.
    """
    if args.no_images:
        given = [opt for opt, value in (("--image-codec", args.image_codec), ("--compress", args.compress))
                 if value is not None]  # fmt: skip
        if given:
            raise ValueError(f"--no-images leaves the cameras out, so {given[0]} has no frames to store: "
                             f"leave {given[0]} out")  # fmt: skip
    elif args.compress is not None and args.image_codec not in (None, "jpeg"):
        raise ValueError(
            f"--compress sets the JPEG quality, but --image-codec {args.image_codec} stores frames without "
            "JPEG: leave --compress out"
        )
