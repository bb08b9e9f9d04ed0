"""``kino info``: summary of a dataset, optionally per episode."""

from __future__ import annotations

import argparse
import json
import shlex
from typing import Any

from kinodb._cli._text import finite, fit
from kinodb.kdb._stale import stale_stats
from kinodb.kdb.reader import Database, open_database


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


def run(args: argparse.Namespace) -> int:
    """Print the summary (and the episode table)."""
    with open_database(args.path) as db:  # not a .kdb file: _errors names the ingest command
        if args.json:
            out: dict[str, Any] = {
                "path": db.path(), "format_version": db.version(),
                "num_episodes": db.num_episodes(), "num_frames": db.num_frames(),
                "dataset": db.dataset_info(), "statistics": statistics(db),
            }  # fmt: skip
            if args.episodes:
                out["episodes"] = [db.read_meta(i) for i in range(len(db))]
            print(json.dumps(finite(out), indent=2, default=str, allow_nan=False))
            return 0
        print(db.summary())
        table = db.episodes()
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
            for i in range(len(db)):
                m = db.read_meta(i)
                succ = {True: "yes", False: "no", None: "-"}[m["success"]]
                print(f"{m['episode_id']:>6}  {fit(m['embodiment'], 13)} {m['num_frames']:>7}"
                      f"{m['action_dim']:>5}{m['state_dim']:>6}  {succ:<8}{fit(m['task'], 40, pad=False)}")  # fmt: skip
    return 0


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
