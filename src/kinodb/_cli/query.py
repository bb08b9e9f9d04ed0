"""``kino query``: the episodes of one or more datasets that match a KQL query."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import traceback
from typing import Any

from kinodb._cli._text import finite, fit
from kinodb.errors import QuerySyntaxError
from kinodb.kdb.reader import open_database
from kinodb.kql import parse, query
from kinodb.kql._eval import fields_of

EMBODIMENT_WIDTH, TASK_WIDTH = 13, 40


def register(sub: Any) -> None:
    """Add the subcommand to ``sub``."""
    p = sub.add_parser(
        "query",
        help="list the episodes that match a KQL query",
        description="List the episodes whose metadata match a KQL query (see docs/kql.md). Over several "
        "files the query is one query over all of them (an extra field some files lack is null in "
        "those), and the matches are listed per file, the file named.",
        epilog="examples: kino query data.kdb \"embodiment = 'franka' AND success = true AND num_frames > 50\"\n"
        '          kino query a.kdb b.kdb "success = true" --count',
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("path", nargs="+", metavar="PATH", help="the .kdb file(s) to query")
    p.add_argument("kql", metavar="KQL",
                   help="the query, last, e.g. \"task CONTAINS 'pick' AND NOT success = false\"")  # fmt: skip
    p.add_argument("-l", "--limit", type=_count, default=None, metavar="N",
                   help="list only the first N matching episodes of each file (counts stay the totals)")  # fmt: skip
    p.add_argument("-c", "--count", action="store_true",
                   help="print only the number of matching episodes (per file and in total for several)")  # fmt: skip
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
    """Print the matching episodes as a table, JSON, or just their number (per file).

    A query that does not parse, or names a field or type a file does not have, prints
    ``error: ...`` (naming that file when there are several) and returns 1.
    """
    given = args.path
    paths = [given] if isinstance(given, (str, os.PathLike)) else list(given)
    with contextlib.ExitStack() as stack:
        dbs = [stack.enter_context(open_database(path)) for path in paths]
        # One query over every file, as a Mixture or a merge reads it: a field that only
        # some files hold is null in the others. Every file is evaluated before any output.
        absent = fields_of(dbs) if len(dbs) > 1 else frozenset()
        found = []
        db = None
        try:
            parse(args.kql)  # a syntax error is the query's, whichever file it is run on
            for db in dbs:
                found.append(query(db, args.kql, absent=absent))
        except QuerySyntaxError as exc:
            # Printed here as well as by `kino`'s error table (the same lines: the query with a
            # caret under the error, and the traceback first under --debug), so that `run`
            # gives exit 1 when called on its own. Over several files a field or type error
            # names the file it was found in.
            if getattr(args, "debug", False):
                traceback.print_exc()
            where = f"{db.path()}: " if db is not None and len(dbs) > 1 else ""
            print(f"error: {where}{exc}", file=sys.stderr)
            return 1
        if len(dbs) == 1:
            _print_one(args, dbs[0], found[0])
        else:
            _print_several(args, dbs, found)
    return 0


def _shown(args: argparse.Namespace, positions: Any) -> list[int]:
    return [int(i) for i in (positions if args.limit is None else positions[: args.limit])]


def _print_one(args: argparse.Namespace, db: Any, positions: Any) -> None:
    total, shown = len(positions), _shown(args, positions)
    if args.count:
        print(total)
    elif args.json:
        out = {"path": db.path(), "query": args.kql, "matches": total, "positions": shown,
               "episodes": [{"position": i, **db.read_meta(i)} for i in shown]}  # fmt: skip
        print(json.dumps(finite(out), indent=2, default=str, allow_nan=False))
    else:
        sys.stdout.write(_table(db, total, shown))


def _print_several(args: argparse.Namespace, dbs: list[Any], found: list[Any]) -> None:
    total = sum(len(positions) for positions in found)
    if args.count:
        lines = [f"{db.path()}: {len(positions)}" for db, positions in zip(dbs, found, strict=True)]
        print("\n".join([*lines, f"total: {total}"]))
    elif args.json:
        files = []
        for db, positions in zip(dbs, found, strict=True):
            shown = _shown(args, positions)
            files.append({"path": db.path(), "matches": len(positions), "positions": shown,
                          "episodes": [{"position": i, **db.read_meta(i)} for i in shown]})  # fmt: skip
        out = {"query": args.kql, "matches": total, "files": files}
        print(json.dumps(finite(out), indent=2, default=str, allow_nan=False))
    else:
        parts = [
            _table(db, len(positions), _shown(args, positions), name=db.path())
            for db, positions in zip(dbs, found, strict=True)
        ]
        plural = "" if total == 1 else "s"
        sys.stdout.write("\n".join([*parts, f"{total} matching episode{plural} in {len(dbs)} files\n"]))


def _table(db: Any, total: int, shown: list[int], *, name: str | None = None) -> str:
    head = f"{total} matching episode{'' if total == 1 else 's'}"
    if name is not None:
        head = f"{name}: {head}"
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
