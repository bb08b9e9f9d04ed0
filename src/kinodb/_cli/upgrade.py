"""``kino upgrade``: rewrite an older .kdb file as format v1."""

from __future__ import annotations

import argparse
from typing import Any


def register(sub: Any) -> None:
    """Add the subcommand to ``sub``."""
    p = sub.add_parser("upgrade", help="rewrite an older .kdb file (format 0.1) as format v1")
    p.add_argument("old")
    p.add_argument("new")
    p.add_argument("--force", action="store_true", help="replace NEW if it exists")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Upgrade and report."""
    from kinodb.kdb.upgrade import upgrade

    n = upgrade(args.old, args.new, overwrite=args.force)
    print(f"upgraded {args.old} -> {args.new} ({n} episodes, format 1.0)")
    return 0
