"""``kino export``: a .kdb file (optionally filtered) to NumPy files, JSON metadata, robomimic HDF5, LeRobot,
a zarr replay buffer or RLDS."""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import warnings
from typing import Any

_FORMATS = ("numpy", "json", "hdf5", "lerobot", "zarr", "rlds")


def register(sub: Any) -> None:
    """Add the subcommand to ``sub``."""
    p = sub.add_parser(
        "export",
        help="export a .kdb file to .npy files, JSON metadata, robomimic HDF5, a LeRobot dataset, a zarr "
        "replay buffer or an RLDS (TFDS) dataset",
        description="Export episodes to a folder of .npy arrays and image files (numpy), metadata "
        "only (json), one robomimic-layout HDF5 file (hdf5), a LeRobot v3.0 dataset folder "
        "(lerobot), a zarr replay buffer as diffusion_policy reads it (zarr: a folder, or a zip archive when "
        "OUT ends in .zip), or an RLDS dataset folder of TFRecord shards as tfds.load reads it (rlds: name OUT "
        "<name>/<version> for tfds.load(name, data_dir=...)). The output appears only when complete. OUT must be a new path, or with --force "
        "an earlier kinodb export or an empty folder; OUT is never the current folder, the input "
        "file, or a folder holding either.",
    )
    p.add_argument("path", metavar="PATH", help="the .kdb file")
    p.add_argument("-o", "--output", required=True, metavar="OUT",
                   help="output folder (numpy, json, lerobot, zarr, rlds) or file (hdf5, zarr as .zarr.zip); its "
                   "folder must exist (rlds creates it: OUT is <name>/<version>)")  # fmt: skip
    p.add_argument("-F", "--format", choices=_FORMATS, type=_format,
                   help="default: hdf5 when OUT ends in .hdf5, .h5 or .he5, zarr when it ends in .zarr or "
                   ".zarr.zip, else numpy (an OUT ending in .json, .jsonl, .kdb or another .zip needs --format)")  # fmt: skip
    p.add_argument("--video-codec", choices=("h264", "av1"),
                   help="lerobot: codec of the camera videos (default: h264)")  # fmt: skip
    p.add_argument("--images-as", choices=("video", "image"),
                   help="lerobot: cameras as mp4 videos (default) or images in the Parquet files (stored JPEG "
                   "and PNG frames copied as they are, raw frames as PNG)")  # fmt: skip
    p.add_argument("--keep-upright", action="store_true",
                   help="hdf5: keep frames the ingest turned upright (--flip-images) upright; by default "
                   "they are turned back to the source's orientation")  # fmt: skip
    p.add_argument("--no-next-obs", action="store_true",
                   help="hdf5: leave out next_obs (each obs key one frame later, which robomimic's readers "
                   "load by default: they then need load_next_obs=False), halving the file")  # fmt: skip
    p.add_argument("--hdf5-compression", choices=("gzip", "lzf", "none"),
                   help="hdf5: compress the demos' datasets with gzip (level 4, as robomimic's "
                   "dataset_states_to_obs.py --compress) or lzf (default: none, uncompressed; robomimic reads "
                   "either)")  # fmt: skip
    p.add_argument("--filter", metavar="KQL", help="export only episodes matching this query")
    p.add_argument("--force", action="store_true",
                   help="replace OUT if it is an earlier kinodb export (a file: only when exporting hdf5, or zarr "
                   "to a .zip) or "
                   "an empty folder; anything else at OUT is never replaced")  # fmt: skip
    p.set_defaults(run=run)


def _format(text: str) -> str:
    """``-F/--format``: a KQL query given there by mistake is a usage error that names --filter.

    ``-F`` is ``--format`` here (as in ingest and verify, and as ingest's was in the earlier
    kinodb command line) but ``--filter`` in ``kino merge``; argparse alone would answer
    ``kino export ... -F "success = true"`` with a bare "invalid choice".
    """
    if text in _FORMATS or not _looks_like_kql(text):
        return text  # a format, or a word that argparse's "invalid choice" lists the formats for
    raise argparse.ArgumentTypeError(
        f"{text!r} is a KQL query, not a format: -F is --format here (one of {', '.join(_FORMATS)}); "
        f"to export only the matching episodes use --filter {shlex.quote(text)}"
    )


def _looks_like_kql(text: str) -> bool:
    """Whether ``text`` parses as KQL, or holds a comparison or a space as a query does."""
    from kinodb.errors import QuerySyntaxError
    from kinodb.kql import parse

    try:
        parse(text)
    except QuerySyntaxError:
        return any(c in text for c in "=<>!") or len(text.split()) > 1
    return True


def run(args: argparse.Namespace) -> int:
    """Export and print a one-line summary (warnings on stderr, each once)."""
    from kinodb.export import export  # deferred: keeps `kino --help` light
    from kinodb.export._run import output_format

    if not args.output:
        raise ValueError("-o/--output is empty (an unset variable?); name the folder or file to write")
    fmt = output_format(args.output, getattr(args, "format", None), option="--format {}")
    video_codec, images_as = getattr(args, "video_codec", None), getattr(args, "images_as", None)
    keep_upright = getattr(args, "keep_upright", False)
    no_next_obs = getattr(args, "no_next_obs", False)
    compression = getattr(args, "hdf5_compression", None)
    if fmt != "lerobot" and (video_codec is not None or images_as is not None):
        raise ValueError(
            f"--video-codec and --images-as apply to format 'lerobot' only (--format lerobot), not {fmt!r}"
        )
    for flag, given in (
        ("--keep-upright", keep_upright),
        ("--no-next-obs", no_next_obs),
        ("--hdf5-compression", compression is not None),
    ):
        if fmt != "hdf5" and given:
            raise ValueError(f"{flag} applies to format 'hdf5' only (--format hdf5), not {fmt!r}")
    # The report carries the exporter's warnings; Python warnings raised on the way (by
    # the library or what it calls) join them, so that each prints once, as "warning: ...".
    report = None
    with warnings.catch_warnings(record=True) as raised:
        try:
            report = export(
                args.path, args.output, format=fmt, filter=args.filter, overwrite=args.force,
                video_codec=video_codec, images_as=images_as, flip_images=False if keep_upright else None,
                next_obs=False if no_next_obs else None, compression=compression,
            )  # fmt: skip
        except FileExistsError as exc:
            raise _in_the_way(args.output, fmt, exc) from exc
        finally:  # also before the error of an export that fails
            lines = [*(report.warnings if report is not None else ()), *(str(w.message) for w in raised)]
            for line in dict.fromkeys(lines):
                print(f"warning: {line}", file=sys.stderr)
    print(report.summary())
    return 0


def _in_the_way(output: str, fmt: str, exc: FileExistsError) -> OSError:
    """The library's refusal of an existing OUT, with the command's advice: --force only where it works.

    A plain OSError, so that kino's error table prints it as it stands.
    """
    from kinodb._cli._errors import one_line
    from kinodb.export._base import existing_output, exists_message
    from kinodb.export._run import zipped_output

    target = os.path.abspath(output)
    directory = fmt != "hdf5" and not zipped_output(output, fmt)
    found = existing_output(target, directory=directory)
    if found is None:  # not OUT (or gone since): the error as it stands
        return OSError(one_line(exc))
    return OSError(exists_message(target, found, directory=directory, force="--force"))
