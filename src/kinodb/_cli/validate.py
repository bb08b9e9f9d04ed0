"""``kino validate``: check every checksum, offset, dimension and image."""

from __future__ import annotations

import argparse
from typing import Any

from kinodb._cli._errors import ingest_hint
from kinodb.kdb.validate import validate

_SHOWN = 10


def register(sub: Any) -> None:
    """Add the subcommand to ``sub``."""
    p = sub.add_parser(
        "validate",
        help="check checksums, offsets, dims, images and NaN/Inf; exit 1 on errors",
        description=(
            "Check a .kdb file: its header and commit records, the index's and every payload's\n"
            "checksum, offsets and dims, NaN and Inf in the arrays, and (unless --no-decode) that\n"
            "every image frame decodes. Prints the findings; exits 0 when every check passes, 1\n"
            "otherwise."
        ),
        epilog="example: kino validate data.kdb --verbose",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("path", help="the .kdb file")
    p.add_argument("-v", "--verbose", action="store_true", help="show every check and every problem")
    p.add_argument("--no-decode", action="store_true", help="skip decoding every image frame")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Validate, print the findings, return 1 if any check failed."""
    report = validate(args.path, decode_images=not args.no_decode)
    if not report.passed and report.errors and "not a .kdb file" in report.errors[0]:
        hint = ingest_hint(args.path)  # a dataset of another format: say how to convert it
        if hint is not None:
            report.errors[0] += f"; {hint}"
    if args.verbose:
        for line in report.passed:
            print(f"[ok] {line}")
        for line in report.skipped:
            print(f"[skipped] {line}")
    for label, items in (("warning", report.warnings), ("error", report.errors)):
        shown = items if args.verbose else items[:_SHOWN]
        for line in shown:
            print(f"[{label}] {line}")
        if len(items) > len(shown):
            print(f"... {len(items) - len(shown)} more {label}s (use --verbose)")
    status = "OK" if report.ok else "FAILED"
    print(f"{report.path}: {status} ({len(report.errors)} errors, {len(report.warnings)} warnings)")
    return 0 if report.ok else 1
