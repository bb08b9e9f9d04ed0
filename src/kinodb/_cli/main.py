"""Entry point of ``kino``: argument parsing and the one error-to-exit-code table."""

from __future__ import annotations

import argparse
import logging
import sys
import traceback
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
from kinodb._version import __version__
from kinodb.errors import KinodbError

COMMANDS = (
    create_test, info, schema, validate, query, ingest, verify, export, merge, mix, upgrade, stats, serve, infer,
    bench,
)  # fmt: skip

EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2


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
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.WARNING, format="%(message)s")
    try:
        return int(args.run(args))
    except (KinodbError, OSError) as exc:
        if args.debug:
            traceback.print_exc()
        print(f"error: {_one_line(exc)}", file=sys.stderr)
        return EXIT_ERROR
    except ValueError as exc:  # bad option values that argparse cannot see
        if args.debug:
            traceback.print_exc()
        print(f"kino {args.command}: error: {_one_line(exc)}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.filename is not None and exc.strerror:
        return f"{exc.filename}: {exc.strerror}"
    return " ".join(str(exc).split()) or type(exc).__name__


def entry() -> None:
    """Console-script entry point."""
    sys.exit(main())


if __name__ == "__main__":
    entry()
