"""The one error-to-exit-code table of the command-line entry points (``kino``, ``kino-serve``)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback

from kinodb.errors import KinodbError, QuerySyntaxError

EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2


def dispatch(
    args: argparse.Namespace,
    *,
    error_prefix: str,
    usage_prefix: str,
    usage: argparse.ArgumentParser | None = None,
) -> int:
    """Run ``args.run(args)``: 0 ok, 1 kinodb or I/O error, 2 usage error.

    Errors print as one line, except KQL errors, which keep their lines: the query with a
    caret under the offending token, then the hint. ``--debug`` adds the traceback;
    ``usage`` prints that parser's usage line before a usage error.
    """
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.WARNING, format="%(message)s")
    try:
        return int(args.run(args))
    except BrokenPipeError:
        # The reader went away (``kino info ... | head``): not an error of ours. Point
        # stdout at /dev/null so the interpreter's final flush does not complain either.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except (KinodbError, OSError) as exc:
        if args.debug:
            traceback.print_exc()
        message = _kql_lines(exc) if isinstance(exc, QuerySyntaxError) else one_line(exc)
        if isinstance(exc, FileExistsError) and getattr(args, "force", None) is False:
            # The library's advice is for Python callers (mode='w'); the command's is --force.
            where = exc.filename or str(exc).split(" exists", 1)[0]
            message = f"{where} exists; pass --force to replace it"
        print(f"{error_prefix}error: {message}", file=sys.stderr)
        return EXIT_ERROR
    except ValueError as exc:  # bad option values that argparse cannot see
        if args.debug:
            traceback.print_exc()
        if usage is not None:
            usage.print_usage(sys.stderr)
        print(f"{usage_prefix}error: {one_line(exc)}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130


def one_line(exc: BaseException) -> str:
    """An exception as one line: ``FILE: reason`` for OS errors, whitespace collapsed."""
    if isinstance(exc, OSError) and exc.filename is not None and exc.strerror:
        return f"{exc.filename}: {exc.strerror}"
    return " ".join(str(exc).split()) or type(exc).__name__


def _kql_lines(exc: QuerySyntaxError) -> str:
    """A KQL error as its own lines: collapsing them would move the caret off its token."""
    return str(exc).rstrip() or type(exc).__name__
