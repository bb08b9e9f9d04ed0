"""``kino query``: the episodes of one or more datasets that match a KQL query."""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import sys
import traceback
from typing import Any

import numpy as np

from kinodb._cli._text import fit
from kinodb._cli.info import CHUNK, SUCCESS, JsonList, episode_json, fitted, readable, write_json
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
                   help="print only the number of matching episodes (per file and in total for several; "
                        "with --json: the JSON without positions and episodes)")  # fmt: skip
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
    _check_order(paths, args.kql)
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


def _check_order(paths: list[Any], kql: str) -> None:
    """Refuse arguments in the wrong order before anything runs: the query is the last one.

    Raises:
        ValueError: the query looks like a file and a path does not exist, or the last
            argument is a file that exists (the query was left out).
    """
    missing = [str(p) for p in paths if not os.path.exists(p)]
    if missing and os.path.isfile(kql):
        raise ValueError(
            f"{missing[0]!r} is not a file, and the last argument {kql!r} is one: the query comes "
            f"last (kino query PATH... KQL), e.g. kino query {kql} {shlex.quote(missing[0])}"
        )
    if not missing and os.path.isfile(kql) and kql.endswith(".kdb"):
        raise ValueError(
            f"the last argument {kql!r} is a .kdb file, but it is where the query goes: add one "
            f"(kino query PATH... KQL), e.g. kino query {' '.join(map(str, paths))} {kql} 'success = true'"
        )


def _shown(args: argparse.Namespace, positions: Any) -> np.ndarray:
    shown = np.asarray(positions, dtype=np.int64)
    return shown if args.limit is None else shown[: args.limit]


def _print_one(args: argparse.Namespace, db: Any, positions: Any) -> None:
    total, shown = len(positions), _shown(args, positions)
    if args.json:
        listed = {} if args.count else _listed(db, shown)
        write_json({"path": db.path(), "query": args.kql, "matches": total, **listed}, sys.stdout)
    elif args.count:
        print(total)
    else:
        _print_table(db, total, shown)


def _print_several(args: argparse.Namespace, dbs: list[Any], found: list[Any]) -> None:
    total = sum(len(positions) for positions in found)
    if args.json:
        files = [{"path": db.path(), "matches": len(positions),
                  **({} if args.count else _listed(db, _shown(args, positions)))}
                 for db, positions in zip(dbs, found, strict=True)]  # fmt: skip
        write_json({"query": args.kql, "matches": total, "files": files}, sys.stdout)
    elif args.count:
        lines = [f"{db.path()}: {len(positions)}" for db, positions in zip(dbs, found, strict=True)]
        print("\n".join([*lines, f"total: {total}"]))
    else:
        plural = "" if total == 1 else "s"
        last = f"{total} matching episode{plural} in {len(dbs)} files\n"
        shown = [_shown(args, positions) for positions in found]
        if not all(readable(db, rows) for db, rows in zip(dbs, shown, strict=True)):  # nothing printed
            parts = [_table(db, len(positions), rows.tolist(), name=db.path())
                     for db, positions, rows in zip(dbs, found, shown, strict=True)]  # fmt: skip
            sys.stdout.write("\n".join([*parts, last]))
            return
        for db, positions, rows in zip(dbs, found, shown, strict=True):
            _write_table(db, len(positions), rows, name=db.path())
            sys.stdout.write("\n")
        sys.stdout.write(last)


def _listed(db: Any, shown: np.ndarray) -> dict[str, Any]:
    """``positions`` and ``episodes`` (``{"position": i, **read_meta(i)}``) of the JSON
    output: written a chunk at a time where every episode reads (checked first, so that a
    damaged one stops the command before anything is printed)."""
    if not readable(db, shown):  # read_meta names the damage
        return {"positions": shown.tolist(),
                "episodes": [{"position": i, **db.read_meta(i)} for i in shown.tolist()]}  # fmt: skip
    return {
        "positions": JsonList(lambda level: (list(map(str, shown[a : a + CHUNK].tolist()))
                                             for a in range(0, len(shown), CHUNK))),
        "episodes": JsonList(lambda level: episode_json(db, shown, level, position=True)),
    }  # fmt: skip


def _print_table(db: Any, total: int, shown: np.ndarray) -> None:
    """Print the table of matches of one file (a damaged episode stops the command before
    anything is printed)."""
    if readable(db, shown):
        _write_table(db, total, shown)
    else:
        sys.stdout.write(_table(db, total, shown.tolist()))  # read_meta names the damage


def _write_table(db: Any, total: int, shown: np.ndarray, *, name: str | None = None) -> None:
    """Print the table of matches, the rows formatted a chunk at a time from the index's
    columns (every episode of ``shown`` `readable`)."""
    sys.stdout.write(_head(total, len(shown), name))
    for a in range(0, len(shown), CHUNK):
        idx = shown[a : a + CHUNK]
        cols = db._meta_columns(idx)
        if cols is None:  # not after `readable`: read_meta would name the damage
            sys.stdout.write("".join(line + "\n" for line in _rows_each(db, idx.tolist())))
            continue
        c = {key: values for key, values, _ in cols}
        emb, task = fitted(c["embodiment"], EMBODIMENT_WIDTH), fitted(c["task"], TASK_WIDTH, pad=False)
        rows = zip(idx.tolist(), emb, c["num_frames"], c["action_dim"], c["success"], task, strict=True)
        sys.stdout.write(
            "".join(f"{i:>7}  {e} {t:>7}{d:>5}  {SUCCESS[ok]:<8}{k}\n" for i, e, t, d, ok, k in rows)
        )


def _head(total: int, shown: int, name: str | None) -> str:
    head = f"{total} matching episode{'' if total == 1 else 's'}"
    if name is not None:
        head = f"{name}: {head}"
    if shown < total:
        head += f" (showing the first {shown})"
    lines = [head]
    if shown:
        lines.append(
            f"{'POS':>7}  {fit('EMBODIMENT', EMBODIMENT_WIDTH)} {'FRAMES':>7}{'ACT':>5}  {'SUCCESS':<8}TASK"
        )
    return "\n".join(lines) + "\n"


def _table(db: Any, total: int, shown: list[int], *, name: str | None = None) -> str:
    """The table of matches, episode by episode (`read_meta` names a damaged one)."""
    return "\n".join([_head(total, len(shown), name).rstrip("\n"), *_rows_each(db, shown)]) + "\n"


def _rows_each(db: Any, shown: list[int]) -> list[str]:
    lines = []
    for i in shown:
        m = db.read_meta(i)
        succ = {True: "yes", False: "no", None: "-"}[m["success"]]
        lines.append(
            f"{i:>7}  {fit(m['embodiment'], EMBODIMENT_WIDTH)} {m['num_frames']:>7}{m['action_dim']:>5}  "
            f"{succ:<8}{fit(m['task'], TASK_WIDTH, pad=False)}"
        )
    return lines
