"""``kino upgrade``: rewrite an older .kdb file as format v1 (or compact a v1 file)."""

from __future__ import annotations

import argparse
import sys
import warnings
from typing import Any


def register(sub: Any) -> None:
    """Add the subcommand to ``sub``."""
    p = sub.add_parser(
        "upgrade",
        help="rewrite an older .kdb file (format 0.1) as format v1, or compact a v1 file",
        description="Rewrite OLD as a format v1 file NEW. A v1 OLD is compacted: payloads are copied byte "
        "for byte, without the space that appends left behind.",
    )
    p.add_argument("old")
    p.add_argument("new")
    p.add_argument("--force", action="store_true", help="replace NEW if it exists")
    p.add_argument("--on-error", choices=("raise", "skip"), default="raise",
                   help="an episode that cannot be read or stored: stop (default), or leave it out and "
                        "list it (warning, and NEW's metadata upgraded_from.skipped)")  # fmt: skip
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Upgrade and report; the library's warnings print as ``warning: ...`` lines."""
    from kinodb.kdb.upgrade import upgrade

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            n = upgrade(args.old, args.new, overwrite=args.force, on_error=args.on_error)
        finally:  # also before an error: a warning may explain it
            for w in caught:
                print(f"warning: {w.message}", file=sys.stderr)
    print(f"upgraded {args.old} -> {args.new} ({n} episodes, format 1.0)")
    return 0
