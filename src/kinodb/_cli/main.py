"""Entry point of ``kino``: argument parsing and the one error-to-exit-code table."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from kinodb._cli import (
    bench,
    create_test,
    export,
    infer,
    info,
    ingest,
    merge,
    mix,
    query,
    schema,
    serve,
    stats,
    upgrade,
    validate,
    verify,
)
from kinodb._cli._errors import dispatch
from kinodb._version import __version__

COMMANDS = (
    create_test, info, schema, validate, query, ingest, verify, export, merge, mix, upgrade, stats, serve, infer,
    bench,
)  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    """The ``kino`` parser with every subcommand registered."""
    parser = argparse.ArgumentParser(
        prog="kino", description="kinodb: robot-learning datasets in one .kdb file"
    )
    parser.add_argument("-V", "--version", action="version", version=f"kino {__version__}")
    parser.add_argument("--debug", action="store_true", help="print tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for module in COMMANDS:
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``kino``; return the exit code (0 ok, 1 kinodb or I/O error, 2 usage)."""
    args = build_parser().parse_args(argv)
    return dispatch(args, error_prefix="", usage_prefix=f"kino {args.command}: ")


def entry() -> None:
    """Console-script entry point."""
    sys.exit(main())


if __name__ == "__main__":
    entry()
