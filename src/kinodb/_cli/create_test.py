"""``kino create-test``: write a synthetic dataset."""

from __future__ import annotations

import argparse
import errno
import os
from typing import Any

from kinodb._cli._types import jpeg_quality, non_negative_int, positive_int
from kinodb.synthetic import create_test


def register(sub: Any) -> None:
    """Add the subcommand to ``sub``."""
    p = sub.add_parser("create-test", help="write a synthetic dataset",
                       description="Write synthetic episodes with several embodiments, tasks and outcomes.")  # fmt: skip
    p.add_argument("path", nargs="?", default="test.kdb", help="output file (default: test.kdb)")
    p.add_argument("-n", "--num-episodes", type=positive_int, default=10, help="episodes (default: 10)")
    p.add_argument("-f", "--frames", type=positive_int, default=50, help="frames per episode (default: 50)")
    p.add_argument("--images", action="store_true", help="add two 64x64 RGB cameras, front and wrist")
    p.add_argument(
        "--compress",
        type=jpeg_quality,
        metavar="Q",
        help="store images as JPEG of quality Q (1-100) instead of raw",
    )
    p.add_argument("--seed", type=non_negative_int, default=0, help="random seed (default: 0)")
    p.add_argument("--force", action="store_true", help="replace PATH if it exists")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Write the dataset and print one line about it."""
    if args.compress is not None and not args.images:
        raise ValueError("--compress sets the JPEG quality of the cameras, which only --images adds: "
                         "add --images or leave --compress out")  # fmt: skip
    if (
        not args.force and os.path.exists(args.path) and not os.path.isdir(args.path)
    ):  # a folder: the writer says so
        raise FileExistsError(errno.EEXIST, "exists; pass --force to replace it", args.path)
    n = create_test(args.path, args.num_episodes, args.frames, images=args.images,
                    compress=args.compress, seed=args.seed, mode="w" if args.force else "x")  # fmt: skip
    cams = (
        " with cameras front, wrist" + (f" (JPEG q{args.compress})" if args.compress else " (raw)")
        if args.images
        else ""
    )
    print(f"wrote {n} episodes x {args.frames} frames to {args.path}{cams}")
    return 0
