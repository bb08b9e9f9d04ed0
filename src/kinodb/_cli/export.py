"""``kino export``: a .kdb file (optionally filtered) to NumPy files, JSON metadata, robomimic HDF5 or LeRobot."""

from __future__ import annotations

import argparse
import sys
import warnings
from typing import Any


def register(sub: Any) -> None:
    """Add the subcommand to ``sub``."""
    p = sub.add_parser(
        "export",
        help="export a .kdb file to .npy files, JSON metadata, robomimic HDF5 or a LeRobot dataset",
        description="Export episodes to a folder of .npy arrays and image files (numpy), metadata "
        "only (json), one robomimic-layout HDF5 file (hdf5), or a LeRobot v3.0 dataset folder "
        "(lerobot). The output appears only when complete.",
    )
    p.add_argument("path", metavar="PATH", help="the .kdb file")
    p.add_argument("-o", "--output", required=True, metavar="OUT",
                   help="output folder (numpy, json, lerobot) or .hdf5 file (hdf5)")  # fmt: skip
    p.add_argument(
        "--format", choices=("numpy", "json", "hdf5", "lerobot"), default="numpy", help="default: numpy"
    )
    p.add_argument("--video-codec", choices=("h264", "av1"),
                   help="lerobot: codec of the camera videos (default: h264)")  # fmt: skip
    p.add_argument("--images-as", choices=("video", "image"),
                   help="lerobot: cameras as mp4 videos (default) or PNG images in the Parquet files")  # fmt: skip
    p.add_argument("--keep-upright", action="store_true",
                   help="hdf5: keep frames the ingest turned upright (--flip-images) upright; by default "
                   "they are turned back to the source's orientation")  # fmt: skip
    p.add_argument("-F", "--filter", metavar="KQL", help="export only episodes matching this query")
    p.add_argument("--force", action="store_true", help="replace OUT if it exists")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Export and print a one-line summary (warnings on stderr, each once)."""
    from kinodb.export import export  # deferred: keeps `kino --help` light

    # The report carries the exporter's warnings; Python warnings raised on the way (by
    # the library or what it calls) join them, so that each prints once, as "warning: ...".
    report = None
    with warnings.catch_warnings(record=True) as raised:
        try:
            report = export(
                args.path, args.output, format=args.format, filter=args.filter, overwrite=args.force,
                video_codec=getattr(args, "video_codec", None), images_as=getattr(args, "images_as", None),
                flip_images=False if getattr(args, "keep_upright", False) else None,
            )  # fmt: skip
        finally:  # also before the error of an export that fails
            lines = [*(report.warnings if report is not None else ()), *(str(w.message) for w in raised)]
            for line in dict.fromkeys(lines):
                print(f"warning: {line}", file=sys.stderr)
    print(report.summary())
    return 0
