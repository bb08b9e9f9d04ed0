"""``kino verify``: compare a .kdb file with the dataset it was ingested from."""

from __future__ import annotations

import argparse
import json
from typing import Any

from kinodb._cli._types import float_dtype, positive_float
from kinodb._cli.ingest import source_format
from kinodb.ingest._verify import CODEC_MARGIN_DB, DEFAULT_PSNR, verify


def register(sub: Any) -> None:
    """Add the subcommand to ``sub``."""
    p = sub.add_parser(
        "verify",
        help="compare a .kdb file with the dataset it was ingested from; exit 1 on a mismatch",
        description="Re-read the source with its own reader (with the options the ingest recorded) and "
        "compare every episode: arrays exactly, passed-through frames byte for byte, re-encoded "
        "frames by PSNR, labels, and missing or extra episodes.",
    )
    p.add_argument("src", help="the source file or folder the ingest read")
    p.add_argument("output", help="the .kdb file the ingest wrote")
    p.add_argument("-F", "--format", default="auto", type=source_format,
                   help="source format (default: as recorded, else detected)")  # fmt: skip
    p.add_argument("--psnr", type=positive_float, default=None, metavar="DB",
                   help=f"lowest PSNR for frames stored as JPEG from the source's pixels (default: "
                   f"{DEFAULT_PSNR:g} dB, or within {CODEC_MARGIN_DB:g} dB of a fresh JPEG encode of the "
                   "source frame at the recorded quality)")  # fmt: skip
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--split", help="override the recorded split")
    p.add_argument("--state-keys", metavar="K1,K2", help="override the recorded state keys")
    p.add_argument(
        "--dtype", type=float_dtype, help="override the recorded dtype cast: a floating dtype such as float32"
    )
    p.add_argument(
        "--flip-images", action="store_true", default=None, help="the ingest rotated frames 180 degrees"
    )
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Verify, print the report, return 1 on any mismatch."""
    report = verify(
        args.src, args.output, format=args.format, psnr=args.psnr, split=args.split,
        state_keys=[k.strip() for k in args.state_keys.split(",")] if args.state_keys else None, dtype=args.dtype,
        flip_images=args.flip_images,
    )  # fmt: skip
    print(json.dumps(report.to_dict(), indent=2) if args.json else report.summary())
    return 0 if report.ok else 1
