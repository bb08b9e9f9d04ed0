"""``kino query``: the episodes of a dataset that match a KQL query."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from kinodb._cli._text import finite, fit
from kinodb.errors import QuerySyntaxError
from kinodb.kdb.reader import open_database
from kinodb.kql import query

EMBODIMENT_WIDTH, TASK_WIDTH = 13, 40


def register(sub: Any) -> None:
    """Add the subcommand to ``sub``."""
    p = sub.add_parser(
        "query",
        help="list the episodes that match a KQL query",
        description="List the episodes whose metadata match a KQL query (see docs/kql.md).",
        epilog="example: kino query data.kdb \"embodiment = 'franka' AND success = true AND num_frames > 50\"",
    )
    p.add_argument("path")
    p.add_argument("kql", help="the query, e.g. \"task CONTAINS 'pick' AND NOT success = false\"")
    p.add_argument("-l", "--limit", type=_count, default=None, metavar="N",
                   help="list only the first N matching episodes (the count stays the total)")  # fmt: skip
    p.add_argument("-c", "--count", action="store_true", help="print only the number of matching episodes")
    p.add_argument("--json", action="store_true", help="print JSON: the count, positions and metadata")
    p.set_defaults(run=run)


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def run(args: argparse.Namespace) -> int:
    """Print the matching episodes as a table, JSON, or just their number."""
    with open_database(args.path) as db:
        try:
            positions = query(db, args.kql)
        except QuerySyntaxError as exc:
            # Printed here as well as by `kino`'s error table (the same lines: the query with a
            # caret under the error), so that `run` gives exit 1 when called on its own.
            print(f"error: {exc}", file=sys.stderr)
            return 1
        total = len(positions)
        shown = positions if args.limit is None else positions[: args.limit]
        if args.count:
            print(total)
        elif args.json:
            episodes = [{"position": int(i), **db.read_meta(int(i))} for i in shown]
            out = {"path": db.path(), "query": args.kql, "matches": total,
                   "positions": [int(i) for i in shown], "episodes": episodes}  # fmt: skip
            print(json.dumps(finite(out), indent=2, default=str, allow_nan=False))
        else:
            sys.stdout.write(_table(db, total, [int(i) for i in shown]))
    return 0


def _table(db: Any, total: int, shown: list[int]) -> str:
    head = f"{total} matching episode{'' if total == 1 else 's'}"
    if len(shown) < total:
        head += f" (showing the first {len(shown)})"
    lines = [head]
    if shown:
        lines.append(
            f"{'POS':>7}  {fit('EMBODIMENT', EMBODIMENT_WIDTH)} {'FRAMES':>7}{'ACT':>5}  {'SUCCESS':<8}TASK"
        )
    for i in shown:
        m = db.read_meta(i)
        succ = {True: "yes", False: "no", None: "-"}[m["success"]]
        lines.append(
            f"{i:>7}  {fit(m['embodiment'], EMBODIMENT_WIDTH)} {m['num_frames']:>7}{m['action_dim']:>5}  "
            f"{succ:<8}{fit(m['task'], TASK_WIDTH, pad=False)}"
        )
    return "\n".join(lines) + "\n"
