"""``kino upgrade``: rewrite an older .kdb file as format v1 (or compact a v1 file)."""

from __future__ import annotations

import argparse
import shlex
import sys
import warnings
from typing import Any


def register(sub: Any) -> None:
    """Add the subcommand to ``sub``."""
    p = sub.add_parser(
        "upgrade",
        help="rewrite an older .kdb file (format 0.1) as format v1, or compact a v1 file",
        description=(
            "Rewrite OLD as a format v1 file NEW (given with -o, as other commands take their output,\n"
            "or as the second argument). A v1 OLD is compacted: payloads are copied byte for byte,\n"
            "without the space that appends left behind."
        ),
        epilog="examples: kino upgrade old.kdb -o new.kdb\n          kino upgrade old.kdb new.kdb",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("old", metavar="OLD", help="the .kdb file to read (any format version)")
    p.add_argument("new", nargs="?", metavar="NEW", action=_Output, help="the v1 file to write (or -o NEW)")
    p.add_argument("-o", "--output", dest="new", metavar="NEW", action=_Output, help="the v1 file to write")
    p.add_argument("--force", action="store_true", help="replace NEW if it exists")
    p.add_argument("--on-error", choices=("raise", "skip"), default="raise",
                   help="an episode that cannot be read or stored: stop (default), or leave it out and "
                        "list it (warning, and NEW's metadata upgraded_from.skipped)")  # fmt: skip
    p.add_argument("--commit", choices=("newest", "committed"), default=None,
                   help="OLD's newest commit record is damaged and hides a newer commit (kino validate says "
                        "so): copy that newer commit (newest) or the one the file reads as (committed); "
                        "without it such a file is refused")  # fmt: skip
    p.set_defaults(run=run)


class _Output(argparse.Action):
    """NEW, as ``-o NEW`` or as the second argument: once."""

    def __call__(
        self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
        option_string: str | None = None,
    ) -> None:  # fmt: skip
        if values is None:  # the positional NEW left out
            return
        if getattr(namespace, self.dest, None) is not None:
            parser.error("NEW is given twice: give it as -o NEW or as the second argument, not both")
        setattr(namespace, self.dest, values)


def run(args: argparse.Namespace) -> int:
    """Upgrade and report; the library's warnings print as ``warning: ...`` lines.

    Raises:
        ValueError: no NEW was given (a usage error).
    """
    from kinodb.kdb.upgrade import upgrade

    if args.new is None:
        raise ValueError(f"give the file to write: kino upgrade {shlex.quote(args.old)} -o NEW.kdb")

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            n = upgrade(args.old, args.new, overwrite=args.force, on_error=args.on_error, commit=args.commit)
        finally:  # also before an error: a warning may explain it
            for w in caught:
                print(f"warning: {w.message}", file=sys.stderr)
    print(f"upgraded {args.old} -> {args.new} ({n} episodes, format 1.0)")
    return 0
