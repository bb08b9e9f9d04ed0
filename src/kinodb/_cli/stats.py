"""``kino stats``: compute normalisation statistics and store them in the file."""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
from collections.abc import Mapping
from typing import Any

import numpy as np

from kinodb.errors import KinodbError, UnsupportedVersionError
from kinodb.kdb.reader import Database, open_database
from kinodb.stats import (
    DTYPE_VARIES,
    QUANTILES,
    SHAPE_VARIES,
    compute_stats,
    dtype_groups,
    stats_to_json,
    write_stats,
)

_COLUMNS = ("mean", "std", "min", *QUANTILES, "max")
_CELL = 13  # a value column: the longest 5-digit number ("-1.2346e-100", 12 characters) and a space


def register(sub: Any) -> None:
    """Add the subcommand to ``sub``."""
    p = sub.add_parser(
        "stats",
        help="compute per-feature mean, std, min, max, q01, q99 and store them in the file",
        description=(
            "Stream every floating-point array (states, actions, rewards, extra arrays) and "
            "store per-feature statistics in the file's dataset metadata (an append-safe "
            "update: only the index is rewritten). Percentiles are exact."
        ),
    )
    p.add_argument("path")
    p.add_argument("--arrays", help="comma-separated array names (default: every float array but timestamps)")
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")
    p.add_argument("--dry-run", action="store_true", help="compute and print, but do not store")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Compute, print and (unless --dry-run) store; exit 1 when no array could be summarised."""
    wanted = None
    if args.arrays is not None:
        wanted = [a.strip() for a in args.arrays.split(",") if a.strip()]
        if not wanted:
            raise ValueError("--arrays needs at least one array name")
    with open_database(args.path) as db:
        if not args.dry_run and db.version() != "1.0":
            raise UnsupportedVersionError(
                f"{args.path} is a format {db.version()} file and cannot store statistics; convert it "
                f"first: kino upgrade {args.path} NEW.kdb (or use --dry-run to only print them)"
            )
        try:
            stats = compute_stats(db, arrays=wanted)
        except ValueError as exc:
            if isinstance(exc, KinodbError) or str(exc).startswith(f"{args.path}:"):
                raise
            raise ValueError(f"{args.path}: {exc}") from exc  # the library's message: "no array 'x' ..."
        schema = db.schema()
        why = "" if stats["arrays"] else _why_none(db, args.path, stats["skipped"], asked=wanted is not None)
    ok = bool(stats["arrays"])
    stored = ok and not args.dry_run
    if stored:
        write_stats(args.path, stats)
    if args.json:
        print(json.dumps({"path": args.path, "stored": stored, "stats": stats_to_json(stats)}, indent=2))
    else:
        _print_tables(stats, schema)
        if stored:
            print(f"\nstored in {args.path} (read with db.stats())")
        elif ok:
            print("\nnot stored (--dry-run)")
    if not ok:
        print(f"error: no array of {args.path} could be summarised: {why}", file=sys.stderr)
        return 1
    return 0


def _why_none(db: Database, path: str, skipped: Mapping[str, str], *, asked: bool) -> str:
    """Why no array of ``db`` could be summarised, and what to do about it (``asked``: the
    arrays were named with --arrays)."""
    dtypes = [n for n, reason in skipped.items() if reason.startswith(DTYPE_VARIES)]
    shapes = [n for n, reason in skipped.items() if reason.startswith(SHAPE_VARIES)]
    parts = []
    if dtypes:
        detail = skipped[dtypes[0]][len(DTYPE_VARIES) :].lstrip(": ")
        parts.append(
            f"{_names(dtypes)} {'is' if len(dtypes) == 1 else 'are'} held in different dtypes by different "
            f"episodes ({dtypes[0]}: {detail or 'see kino schema'}), as a kino merge of files ingested with "
            "different --dtype makes them; re-ingest the sources with one --dtype (such as --dtype float32) "
            "and merge them again, or keep the files apart, run kino stats on each and combine them with "
            "kinodb.Mixture" + _split_advice(db, path, dtypes[0])
        )
    if shapes:
        parts.append(
            f"{_names(shapes)} {'has' if len(shapes) == 1 else 'have'} per-frame shapes that vary between "
            "episodes, as a kino merge of robots with different dims makes them; run kino stats on each "
            "robot's own file and combine the files with kinodb.Mixture (normalize= uses each file's own "
            "statistics)"
        )
    if not parts:
        # Each array with its reason, in the text and the JSON output alike.
        parts = [f"{name} ({reason})" for name, reason in skipped.items()]
        if asked:
            parts.append("name floating-point arrays with --arrays, or leave it out to summarise every one")
    return "; ".join(parts)


def _names(names: list[str]) -> str:
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


def _split_advice(db: Database, path: str, name: str) -> str:
    """How to write the episodes of one dtype of array ``name`` to a file of their own, when
    they are one run of consecutive episode_ids; else nothing."""
    groups = dtype_groups(db, name)
    if len(groups) < 2:
        return ""
    dtype, episodes = groups[0]
    ids = np.asarray(db._int_columns()["episode_id"], np.int64)[episodes]
    if not (np.diff(ids) == 1).all() or not (np.diff(episodes) == 1).all():
        return ""
    stem = path[: -len(".kdb")] if path.endswith(".kdb") else path
    return (
        f"; or write one dtype's episodes to a file of their own and summarise that: kino merge "
        f"{shlex.quote(path)} -o {shlex.quote(f'{stem}-{dtype}.kdb')} "
        f'-F "episode_id BETWEEN {int(ids[0])} AND {int(ids[-1])}"'
    )


def feature_names(name: str, size: int, schema: Mapping[str, Any]) -> list[str]:
    """Labels for the ``size`` features of array ``name``: schema names, components, or indices."""
    entry = schema.get(name, {}) if name in ("actions", "states") else {}
    names = entry.get("names")
    if isinstance(names, list) and len(names) == size:
        return [str(n) for n in names]
    labels = [f"[{k}]" for k in range(size)]
    for comp, (start, stop) in sorted(entry.get("components", {}).items(), key=lambda kv: kv[1][0]):
        for k in range(start, min(stop, size)):
            labels[k] = f"{comp}[{k - start}]" if stop - start > 1 else comp
    return labels


def _print_tables(stats: Mapping[str, Any], schema: Mapping[str, Any]) -> None:
    print(f"{stats['num_frames']} frames in {stats['num_episodes']} episodes")
    for name, entry in stats["arrays"].items():
        size = len(entry["mean"])
        labels = feature_names(name, size, schema) if entry["shape"] else [name]
        width = max(12, *(len(label) for label in labels)) + 2
        nonfinite = f", {entry['nonfinite']} non-finite values left out" if entry["nonfinite"] else ""
        if entry.get("placeholder_episodes"):  # a merge of files with and without rewards
            nonfinite += (
                f"; {entry['placeholder_episodes']} episodes ({entry['placeholder_frames']} frames) without "
                "rewards (the writer's placeholder zeros) left out"
            )
        print(f"\n{name}: {entry['dtype']} {tuple(entry['shape'])}, {entry['count']} frames{nonfinite}")
        print(f"  {'FEATURE':<{width}}" + "".join(f"{c.upper():>{_CELL}}" for c in _COLUMNS))
        for k, label in enumerate(labels):
            print(f"  {label:<{width}}" + "".join(_cell(entry[c][k]) for c in _COLUMNS))
    for name, reason in stats["skipped"].items():
        print(f"\nskipped {name}: {reason}")


def _cell(value: Any) -> str:
    v = float(value)
    return f"{'-':>{_CELL}}" if not math.isfinite(v) else f"{v:>{_CELL}.5g}"
