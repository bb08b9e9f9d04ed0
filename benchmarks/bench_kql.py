#!/usr/bin/env python
"""KQL against a pandas boolean mask over the same episode metadata.

A 50K-episode ``.kdb`` file is written with `kinodb.Writer`: small state-only episodes
(8 to 48 frames, action_dim 7 or 14, state_dim 8) with realistic metadata: four
embodiments, 24 task strings, success true/false/unknown, total_reward where success is
known, and extra fields ``scene`` (str, sometimes absent), ``operator`` (str, sometimes
null) and ``tags`` (a list of 0 to 3 strings, sometimes absent).

The pandas side gets a DataFrame built beforehand (not timed) from the same metadata,
as a pandas user would hold it: pandas' default string dtype for strings, the nullable
``boolean`` dtype for ``success``, Python lists in an object column for ``tags``; and a
second DataFrame with the string columns as ``category`` (dictionary-encoded, as in the
``.kdb`` index), the faster pandas layout for these queries. Each
query is written for pandas by hand with KQL's null rules (a comparison with a missing
value is false), and both sides must return the same positions.

Timed, in the same process and run: ``kinodb.kql.query(db, text)`` on an open database,
parse and type checks included; and each pandas mask plus ``np.flatnonzero``. Medians
over repeats, in blocks whose order rotates, with the cyclic GC paused (as timeit does).
Also reported: a cold query (open the file, then query), which includes decoding the
string dictionaries that an open database keeps.

Run ``python benchmarks/bench_kql.py`` (``--quick`` for a smoke run). Needs pandas.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

import kinodb
import kinodb.kql

EMBODIMENTS = ("franka", "ur5e", "widowx", "aloha")
EMB_WEIGHTS = (0.4, 0.25, 0.2, 0.15)
VERBS = ("pick up the {} {}", "place the {} {} in the bin", "push the {} {} to the left", "stack the {} {}")
COLORS = ("red", "blue")
OBJECTS = ("cup", "block", "bowl")
TASKS = tuple(v.format(c, o) for v in VERBS for c in COLORS for o in OBJECTS)
SCENES = ("kitchen", "lab", "office", "sim", "warehouse", "living room")
OPERATORS = tuple(f"op{k:02d}" for k in range(20))
TAGS = ("occluded", "clutter", "night", "retry", "bimanual", "long_horizon", "teleop_lag", "novel_object")

QUERIES = {
    "builtins_and_str_extras": (
        "(embodiment = 'franka' OR embodiment = 'ur5e') AND task CONTAINS 'pick' "
        "AND NOT success = false AND num_frames >= 24 AND scene != 'sim'"
    ),
    "with_list_extra": (
        "(embodiment = 'franka' OR embodiment = 'ur5e') AND task CONTAINS 'pick' "
        "AND NOT success = false AND num_frames >= 24 AND NOT tags CONTAINS 'occluded'"
    ),
}


def pandas_mask(name: str, df: pd.DataFrame) -> pd.Series:
    """The pandas boolean mask of query ``name``, with KQL's null rules written out."""
    emb = df["embodiment"].eq("franka") | df["embodiment"].eq("ur5e")
    base = emb & df["task"].str.contains("pick", regex=False) & ~df["success"].eq(False).fillna(False)
    base &= df["num_frames"] >= 24
    if name == "builtins_and_str_extras":
        return base & (df["scene"].ne("sim") & df["scene"].notna())
    occluded = df["tags"].map(lambda t: isinstance(t, list) and "occluded" in t).astype(bool)
    return base & ~occluded


PANDAS_TEXT = {
    "builtins_and_str_extras": (
        "(df.embodiment.eq('franka') | df.embodiment.eq('ur5e')) & df.task.str.contains('pick', regex=False)"
        " & ~df.success.eq(False).fillna(False) & (df.num_frames >= 24) & (df.scene.ne('sim') & df.scene.notna())"
    ),
    "with_list_extra": (
        "(df.embodiment.eq('franka') | df.embodiment.eq('ur5e')) & df.task.str.contains('pick', regex=False)"
        " & ~df.success.eq(False).fillna(False) & (df.num_frames >= 24)"
        " & ~df.tags.map(lambda t: isinstance(t, list) and 'occluded' in t).astype(bool)"
    ),
}


def generate(n: int, seed: int) -> list[dict[str, Any]]:
    """Metadata of ``n`` episodes (add_episode keywords without the arrays)."""
    rng = np.random.default_rng(seed)
    emb = rng.choice(len(EMBODIMENTS), n, p=EMB_WEIGHTS)
    task = rng.integers(0, len(TASKS), n)
    succ = rng.choice(3, n, p=(0.55, 0.3, 0.15))
    frames = rng.integers(8, 49, n)
    scene = rng.integers(-1, len(SCENES), n)  # -1: absent
    operator = rng.integers(-1, len(OPERATORS), n)  # -1: null
    ntags = rng.choice(4, n, p=(0.4, 0.3, 0.2, 0.1))
    out = []
    for i in range(n):
        s = (True, False, None)[succ[i]]
        extra: dict[str, Any] = {"operator": None if operator[i] < 0 else OPERATORS[operator[i]]}
        if scene[i] >= 0:
            extra["scene"] = SCENES[scene[i]]
        if i % 17:  # some episodes have no tags field at all
            extra["tags"] = [TAGS[k] for k in rng.choice(len(TAGS), ntags[i], replace=False)]
        out.append({
            "embodiment": EMBODIMENTS[emb[i]], "task": TASKS[task[i]], "success": s,
            "fps": 10.0 if emb[i] != 3 else 50.0, "num_frames": int(frames[i]),
            "action_dim": 14 if emb[i] == 3 else 7,
            "total_reward": None if s is None else float(s), "extra": extra,
        })  # fmt: skip
    return out


def write(metas: list[dict[str, Any]], path: str) -> None:
    with kinodb.Writer(path, mode="w") as w:
        for m in metas:
            t, a = m["num_frames"], m["action_dim"]
            w.add_episode(
                actions=np.zeros((t, a), np.float32), states=np.zeros((t, 8), np.float32),
                embodiment=m["embodiment"], task=m["task"], fps=m["fps"], success=m["success"],
                total_reward=m["total_reward"], extra=m["extra"],
            )  # fmt: skip


def dataframe(db: kinodb.Database) -> pd.DataFrame:
    """The metadata as a pandas user would hold it, built from ``read_meta``."""
    df = pd.DataFrame.from_records([db.read_meta(i) for i in range(len(db))])
    df["success"] = df["success"].astype("boolean")
    return df


def median_ms(fn: Callable[[], object], repeats: int) -> float:
    """Median wall time of ``fn`` in ms, with the cyclic GC paused as timeit does."""
    times = []
    gc.collect()
    gc.disable()
    try:
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    finally:
        gc.enable()
    return statistics.median(times) * 1e3


def run_query(name: str, db: kinodb.Database, frames: dict[str, pd.DataFrame], path: str,
              repeats: int) -> dict[str, Any]:  # fmt: skip
    text = QUERIES[name]
    got = kinodb.kql.query(db, text)
    for label, df in frames.items():
        want = np.flatnonzero(pandas_mask(name, df).to_numpy())
        if not np.array_equal(got, want):
            raise SystemExit(f"{name}: KQL and {label} disagree ({len(got)} vs {len(want)} positions)")

    def kql() -> None:
        kinodb.kql.query(db, text)

    def cold() -> None:
        with kinodb.open(path) as fresh:
            kinodb.kql.query(fresh, text)

    sides: dict[str, Callable[[], object]] = {"kql": kql}
    for label, df in frames.items():
        sides[label] = lambda df=df: np.flatnonzero(pandas_mask(name, df).to_numpy())
    times: dict[str, list[float]] = {label: [] for label in sides}
    for r in range(5):  # blocks of repeats, the order rotating between blocks
        labels = list(sides)[r % len(sides) :] + list(sides)[: r % len(sides)]
        for label in labels:
            times[label].append(median_ms(sides[label], max(1, repeats // 5)))
    res: dict[str, Any] = {"kql": text, "pandas": PANDAS_TEXT[name], "matches": len(got)}
    for label, ts in times.items():
        res[f"{label}_ms"] = statistics.median(ts)
    for label in frames:
        res[f"{label}_over_kql"] = res[f"{label}_ms"] / res["kql_ms"]
    res["kql_cold_open_and_query_ms"] = median_ms(cold, max(3, repeats // 10))
    return res


def machine_info() -> dict[str, Any]:
    info: dict[str, Any] = {
        "platform": platform.platform(), "python": sys.version.split()[0], "cpu_count": os.cpu_count(),
        "numpy": np.__version__, "pandas": pd.__version__, "kinodb": kinodb.__version__,
    }  # fmt: skip
    try:
        with open("/proc/cpuinfo") as fh:
            info["cpu_model"] = next(
                (ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")), None
            )
    except OSError:
        pass
    return info


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--episodes", type=int, default=50_000)
    ap.add_argument("--repeats", type=int, default=100, help="timed runs per side (medians)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="2000 episodes, 20 repeats")
    ap.add_argument(
        "--out",
        default=None,
        help="results JSON (default: benchmarks/results/kql.json, kql_quick.json with --quick)",
    )
    args = ap.parse_args(argv)
    # A smoke run never replaces the recorded full run.
    results_dir = os.path.join(os.path.dirname(__file__), "results")
    args.out = args.out or os.path.join(results_dir, f"kql{'_quick' if args.quick else ''}.json")
    if args.quick:
        args.episodes, args.repeats = 2000, 20
    with tempfile.TemporaryDirectory(prefix="kinodb-bench-kql-") as tmp:
        path = os.path.join(tmp, "meta.kdb")
        t0 = time.perf_counter()
        write(generate(args.episodes, args.seed), path)
        print(
            f"wrote {args.episodes} episodes in {time.perf_counter() - t0:.1f} s ({os.path.getsize(path) >> 20} MiB)"
        )
        with kinodb.open(path) as db:
            df = dataframe(db)
            cat = df.astype({c: "category" for c in ("embodiment", "task", "scene", "operator")})
            frames = {"pandas": df, "pandas_categorical": cat}
            gc.collect()
            results = {name: run_query(name, db, frames, path, args.repeats) for name in QUERIES}
    print(f"{'query':<25}{'matches':>8}{'KQL ms':>8}{'pandas ms':>11}{'ratio':>7}{'pandas-cat ms':>15}{'ratio':>7}"
          f"{'KQL cold ms':>13}")  # fmt: skip
    for name, r in results.items():
        print(f"{name:<25}{r['matches']:>8}{r['kql_ms']:>8.2f}{r['pandas_ms']:>11.2f}{r['pandas_over_kql']:>6.1f}x"
              f"{r['pandas_categorical_ms']:>15.2f}{r['pandas_categorical_over_kql']:>6.1f}x"
              f"{r['kql_cold_open_and_query_ms']:>13.2f}")  # fmt: skip
    print("ratio: pandas time / KQL time (above 1: KQL is faster)")
    recorded = {**vars(args), "out": os.path.relpath(args.out, os.path.dirname(os.path.dirname(__file__)))}
    meta = {"machine": machine_info(), "args": recorded, "dataframe_dtypes": {k: str(v) for k, v in df.dtypes.items()},
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}  # fmt: skip
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as fh:
        json.dump({"quick": args.quick, "meta": meta, "results": results}, fh, indent=1)
    print(f"results in {args.out}")
    slower = [f"{n} ({k})" for n, r in results.items() for k in frames if r[f"{k}_over_kql"] < 1]
    if slower:
        print(f"KQL slower than pandas on: {', '.join(slower)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
