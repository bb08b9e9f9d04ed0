"""``kino info``: summary of a dataset, optionally per episode."""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
from collections.abc import Callable, Collection, Iterator
from typing import Any, TextIO

import numpy as np

from kinodb._cli._text import finite, fit
from kinodb.kdb._stale import stale_stats
from kinodb.kdb.reader import Database, open_database

# Episodes read and formatted at once by the listings: their memory stays bounded.
CHUNK = 8192
SUCCESS = {True: "yes", False: "no", None: "-"}


def register(sub: Any) -> None:
    """Add the subcommand to ``sub``."""
    p = sub.add_parser(
        "info",
        help="summarise a .kdb file",
        description=(
            "Summarise a .kdb file: format version, episodes and frames, tasks, embodiments, frame\n"
            "rates, and whether normalisation statistics are stored and up to date; -e lists every\n"
            "episode."
        ),
        epilog="examples: kino info data.kdb\n          kino info data.kdb --episodes --json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("path", help="the .kdb file")
    p.add_argument("-e", "--episodes", action="store_true", help="also list every episode")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(run=run)


def _warn_hidden(db: Any) -> None:
    """Say so on stderr when a damaged commit record hides a newer commit: the summary
    describes the older commit the file reads as."""
    from kinodb.kdb.validate import hidden_commit, hidden_text, recover

    if not isinstance(db, Database):
        return
    found = hidden_commit(db)
    if found is not None:
        c = db._commit
        print(
            f"warning: {hidden_text(db, found)} What follows describes generation {c.generation}. "
            f"{recover(db.path(), found, c.num_episodes)}",
            file=sys.stderr,
        )


def run(args: argparse.Namespace) -> int:
    """Print the summary (and the episode table)."""
    with open_database(args.path) as db:  # not a .kdb file: _errors names the ingest command
        _warn_hidden(db)
        if args.json:
            out: dict[str, Any] = {
                "path": db.path(), "format_version": db.version(),
                "num_episodes": db.num_episodes(), "num_frames": db.num_frames(),
                "dataset": db.dataset_info(), "statistics": statistics(db),
            }  # fmt: skip
            if args.episodes:
                everyone = np.arange(len(db))
                if not readable(db, everyone):  # read_meta names the damage, before anything is printed
                    out["episodes"] = [db.read_meta(i) for i in range(len(db))]
                else:
                    out["episodes"] = JsonList(lambda level: episode_json(db, everyone, level))
            write_json(out, sys.stdout)
            return 0
        print(db.summary())
        table = db._columns(("embodiment", "task", "fps"))
        if len(db):
            emb, counts = _counts(table["embodiment"])
            tasks = sorted(set(table["task"].tolist()))
            print(
                f"  tasks: {len(tasks)}: "
                + "; ".join(fit(t, 40, pad=False) for t in tasks[:5])
                + (" ..." if len(tasks) > 5 else "")
            )
            print(
                "  per embodiment: "
                + ", ".join(f"{fit(e, 40, pad=False)} {c}" for e, c in zip(emb, counts, strict=True))
            )
            print(f"  fps: {_fps(table['fps'])}")
        print(f"  statistics: {_statistics_line(statistics(db))}")
        if args.episodes:
            print(
                f"\n{'ID':>6}  {fit('EMBODIMENT', 14)}{'FRAMES':>7}{'ACT':>5}{'STATE':>6}  {'SUCCESS':<8}TASK"
            )
            _print_episodes(db)
    return 0


def _print_episodes(db: Database) -> None:
    """The episode table's rows, formatted a chunk of episodes at a time from the index's
    columns (`Database._meta_columns`), episode by episode where a chunk is damaged."""
    for start in range(0, len(db), CHUNK):
        idx = np.arange(start, min(start + CHUNK, len(db)))
        cols = db._meta_columns(idx)
        if cols is None:  # read_meta names the damage, after the rows before it
            for i in idx.tolist():
                m = db.read_meta(i)
                succ = {True: "yes", False: "no", None: "-"}[m["success"]]
                print(f"{m['episode_id']:>6}  {fit(m['embodiment'], 13)} {m['num_frames']:>7}"
                      f"{m['action_dim']:>5}{m['state_dim']:>6}  {succ:<8}{fit(m['task'], 40, pad=False)}")  # fmt: skip
            continue
        c = {key: values for key, values, _ in cols}
        emb, task = fitted(c["embodiment"], 13), fitted(c["task"], 40, pad=False)
        rows = zip(c["episode_id"], emb, c["num_frames"], c["action_dim"], c["state_dim"], c["success"], task,
                   strict=True)  # fmt: skip
        sys.stdout.write("".join(
            f"{e:>6}  {m} {t:>7}{a:>5}{s:>6}  {SUCCESS[ok]:<8}{k}\n" for e, m, t, a, s, ok, k in rows
        ))  # fmt: skip


def fitted(values: list[str], width: int, *, pad: bool = True) -> list[str]:
    """`fit` of every value, computed once per distinct value."""
    done = {v: fit(v, width, pad=pad) for v in set(values)}
    return list(map(done.__getitem__, values))


def readable(db: Database, idx: np.ndarray) -> bool:
    """Whether `Database.read_meta` reads every episode of ``idx`` (checked a chunk at a
    time: `Database._meta_columns`)."""
    return all(db._meta_columns(idx[a : a + CHUNK]) is not None for a in range(0, len(idx), CHUNK))


class JsonList:
    """A JSON array that `write_json` writes a batch of items at a time.

    ``texts(level)`` yields lists of item texts laid out as ``json.dumps(indent=2)``
    lays out an item of an array nested ``level`` deep.
    """

    def __init__(self, texts: Callable[[int], Iterator[list[str]]]) -> None:
        self.texts = texts


def write_json(value: Any, out: TextIO) -> None:
    """Print ``value`` as ``print(json.dumps(finite(value), indent=2, default=str,
    allow_nan=False))`` prints it, each `JsonList` in it written a batch at a time."""
    _write(value, out.write, 0)
    out.write("\n")


def _write(value: Any, write: Callable[[str], Any], level: int) -> None:
    inner, outer = "\n" + "  " * (level + 1), "\n" + "  " * level
    if isinstance(value, JsonList):
        empty = True
        for batch in value.texts(level + 1):
            if batch:
                write(("[" if empty else ",") + inner + ("," + inner).join(batch))
                empty = False
        write("[]" if empty else outer + "]")
    elif isinstance(value, dict) and _streams(value):
        for k, (key, item) in enumerate(value.items()):
            write(("{" if k == 0 else ",") + inner + json.dumps(key) + ": ")
            _write(item, write, level + 1)
        write(outer + "}")
    elif isinstance(value, (list, tuple)) and _streams(value):
        for k, item in enumerate(value):
            write(("[" if k == 0 else ",") + inner)
            _write(item, write, level + 1)
        write(outer + "]")
    else:
        write(json.dumps(finite(value), indent=2, default=str, allow_nan=False).replace("\n", outer))


def _streams(value: Any) -> bool:
    """Whether ``value`` holds a `JsonList`, at any depth."""
    if isinstance(value, JsonList):
        return True
    items = value.values() if isinstance(value, dict) else value if isinstance(value, (list, tuple)) else ()
    return any(_streams(v) for v in items)


def episode_json(db: Database, idx: np.ndarray, level: int, *, position: bool = False) -> Iterator[list[str]]:
    """``read_meta`` of the episodes ``idx`` as JSON objects nested ``level`` deep, a chunk
    at a time (with ``"position"`` first if ``position``, as ``{"position": i, **meta}``)."""
    for start in range(0, len(idx), CHUNK):
        chunk = idx[start : start + CHUNK]
        cols = db._meta_columns(chunk)
        if cols is not None and position and any(key == "position" for key, _, _ in cols):
            cols = None  # an extra field called position: the dict literal decides its place
        if cols is None:
            pad = "\n" + "  " * level
            yield [
                json.dumps(finite({"position": i, **db.read_meta(i)} if position else db.read_meta(i)),
                           indent=2, default=str, allow_nan=False).replace("\n", pad)
                for i in chunk.tolist()
            ]  # fmt: skip
            continue
        if position:
            cols.insert(0, ("position", chunk.tolist(), None))
        yield _objects(cols, level)


def _objects(cols: list[tuple[str, list[Any], np.ndarray | None]], level: int) -> list[str]:
    """One JSON object per episode from columns ``(key, values, held)`` (`Database._meta_columns`)."""
    pad, end = "\n" + "  " * (level + 1), "\n" + "  " * level + "}"
    keys = [json.dumps(key).replace("%", "%%") for key, _, _ in cols]  # %-templates below
    texts = [_texts(values, level + 1) for _, values, _ in cols]
    optional = [k for k, (_, _, held) in enumerate(cols) if held is not None]

    def template(held: Collection[int]) -> str:
        return "{" + ",".join(f"{pad}{keys[k]}: %s" for k in sorted(held)) + end

    if not optional:
        every = template(range(len(cols)))
        return [every % row for row in zip(*texts, strict=True)]
    # Each episode prints the optional keys it holds: one template per pattern of them.
    always = [k for k in range(len(cols)) if k not in optional]
    held = zip(*(cols[k][2].tolist() for k in optional), strict=True)  # type: ignore[union-attr]
    patterns = [tuple(k for k, h in zip(optional, row, strict=True) if h) for row in held]
    templates = {p: (template([*always, *p]), sorted([*always, *p])) for p in set(patterns)}
    out = []
    for p, row in zip(patterns, zip(*texts, strict=True), strict=True):
        text, fields = templates[p]
        out.append(text % tuple(row[k] for k in fields))
    return out


_LITERALS = {True: "true", False: "false", None: "null"}


def _texts(values: list[Any], level: int) -> list[str]:
    """``values`` as ``json.dumps(finite(v), indent=2)`` writes each, nested ``level`` deep."""
    kinds = set(map(type, values))
    if kinds <= {int}:
        return list(map(int.__repr__, values))
    if kinds <= {int, type(None)}:
        return ["null" if v is None else int.__repr__(v) for v in values]
    if kinds <= {float, type(None)}:
        return [float.__repr__(v) if v is not None and math.isfinite(v) else "null" for v in values]
    if kinds <= {bool, type(None)}:
        return list(map(_LITERALS.__getitem__, values))
    if kinds <= {str, type(None)}:
        done = {v: "null" if v is None else json.dumps(v) for v in set(values)}
        return list(map(done.__getitem__, values))
    pad = "\n" + "  " * level
    return [json.dumps(finite(v), indent=2, default=str, allow_nan=False).replace("\n", pad) for v in values]


def statistics(db: Database) -> dict[str, Any]:
    """Whether normalisation statistics are stored, for which arrays, and whether they
    still describe the file: ``{"stored", "arrays", "computed", "stale", "why_stale",
    "refresh"}`` (``refresh``: the command that computes them again, or None when they
    are up to date; ``why_stale``: None unless stale)."""
    refresh = f"kino stats {shlex.quote(db.path())}"
    stored = db.dataset_info().get("stats") if not db.version().startswith("0.") else None
    if not isinstance(stored, dict) or not isinstance(stored.get("arrays"), dict):
        legacy = db.version().startswith("0.")
        return {"stored": False, "arrays": [], "computed": None, "stale": False, "why_stale": None,
                "refresh": f"kino upgrade {shlex.quote(db.path())} NEW.kdb, then: kino stats NEW.kdb"
                if legacy else refresh}  # fmt: skip
    why = stale_stats(stored, db.num_frames(), len(db))
    return {"stored": True, "arrays": list(stored["arrays"]), "computed": stored.get("computed"),
            "stale": why is not None, "why_stale": why, "refresh": None if why is None else refresh}  # fmt: skip


def _statistics_line(st: dict[str, Any]) -> str:
    if not st["stored"]:
        return f"none stored (datasets' normalize= needs them); run: {st['refresh']}"
    arrays = ", ".join(st["arrays"]) or "no arrays"
    when = f", computed {st['computed']}" if st["computed"] else ""
    if st["stale"]:
        return f"{arrays}{when}; stale: {st['why_stale']}; run: {st['refresh']}"
    return f"{arrays}{when}, up to date"


def _fps(values: Any) -> str:
    """The frame rates, with the episodes of each when they differ: ``15`` or ``5 (25 episodes), 30 (1 episode)``."""
    import numpy as np

    rates, counts = np.unique(np.asarray(values, dtype=np.float64), return_counts=True)
    if len(rates) == 1:
        return f"{rates[0]:g}"
    return ", ".join(
        f"{r:g} ({c} episode{'' if c == 1 else 's'})"
        for r, c in zip(rates.tolist(), counts.tolist(), strict=True)
    )


def _counts(values: Any) -> tuple[list[str], list[int]]:
    import numpy as np

    uniq, counts = np.unique(values.astype(str), return_counts=True)
    return uniq.tolist(), counts.tolist()
