#!/usr/bin/env python
"""Appending one episode to a large file: time and peak memory against the file's size.

Files of 20K and 80K episodes (10 frames each, 7 extra fields: str, int, float, bool, a
list, a constant str and a mostly-null str) are built once; each run copies one, opens it
with ``Writer(mode="a")``, adds one episode and commits, in a fresh process whose peak RSS
growth over its baseline (after imports) is recorded. Two index builders run interleaved:
``current`` (kinodb's `TableBuilder`) and ``reference`` (the earlier builder, kept with
its encoders in ``_reference_index.py``, which turned every stored column into Python
lists and every extra value into a Python object before encoding them all again). Both must write byte-identical files, which the
script checks. An append writes the whole index again (docs/format.md), so some growth with
the file is the format's; what the builder decides is the constant: the reference/current
ratios, the growth ratio 80K/20K (4.0 = proportional) and the peak RSS growth per byte of
the index, all measured in this run.

Run ``python benchmarks/bench_append.py`` (``--quick`` for a smoke run).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

import kinodb
from _reference_index import ReferenceTableBuilder
from kinodb.kdb import writer as writer_module

VARIANTS = ("current", "reference")


def episode(i: int) -> dict[str, Any]:
    """Episode ``i`` of the benchmark files: 10 frames, 7 extra fields."""
    rng = np.random.default_rng(i)
    return {
        "actions": rng.normal(size=(10, 7)).astype(np.float32),
        "states": rng.normal(size=(10, 8)).astype(np.float32),
        "embodiment": "franka" if i % 4 else "ur5",
        "task": f"task {i % 37}",
        "success": bool(i % 3),
        "extra": {
            "scene": f"scene-{i % 101}", "attempt": i, "score": i * 0.25, "ok": i % 2 == 0,
            "tags": ["pick", i % 5, [i % 2 == 0, None]], "operator": "kim",
            "note": None if i % 7 else f"note {i}",
        },
    }  # fmt: skip


def build(path: Path, episodes: int) -> None:
    with kinodb.Writer(path, mode="w") as w:
        for i in range(episodes):
            w.add_episode(**episode(i))


def _status_kb(key: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def reset_peak_rss() -> int:
    """Reset this process's peak RSS to its current RSS (Linux); return that, in KiB.

    Elsewhere the peak since start is the baseline, which can hide a smaller append.
    """
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return _status_kb("VmHWM")
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux


def peak_rss() -> int:
    """This process's peak RSS in KiB, since `reset_peak_rss`."""
    try:
        return _status_kb("VmHWM")
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def child(variant: str, path: str) -> None:
    """Append one episode to ``path`` in this process; print timings and RSS growth."""
    if variant == "reference":
        writer_module.TableBuilder = ReferenceTableBuilder  # type: ignore[misc, assignment]
    ep = episode(10**9)
    before = reset_peak_rss()
    t0 = time.perf_counter()
    w = kinodb.Writer(path, mode="a")
    t1 = time.perf_counter()
    w.add_episode(**ep)
    t2 = time.perf_counter()
    w.close()
    t3 = time.perf_counter()
    after = peak_rss()
    print(json.dumps({"open_s": t1 - t0, "add_s": t2 - t1, "commit_s": t3 - t2, "total_s": t3 - t0,
                      "peak_rss_delta_kb": after - before}))  # fmt: skip


def run_child(variant: str, path: Path) -> dict[str, Any]:
    env = {**os.environ, "SOURCE_DATE_EPOCH": "1700000000"}  # the same bytes from both variants
    out = subprocess.run(
        [sys.executable, __file__, "--child", variant, str(path)], env=env, capture_output=True, text=True
    )
    if out.returncode != 0:
        raise SystemExit(f"{variant} append failed:\n{out.stderr}")
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    result["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs=2, default=[20_000, 80_000], metavar=("SMALL", "LARGE"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=None, help="results JSON (default: benchmarks/results/append.json)")
    parser.add_argument("--quick", action="store_true", help="tiny smoke run")
    parser.add_argument("--child", nargs=2, metavar=("VARIANT", "PATH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    args.out = args.out or f"benchmarks/results/append{'_quick' if args.quick else ''}.json"
    if args.quick:
        args.sizes, args.repeats = [500, 2000], 1
    runs: dict[int, dict[str, list[dict[str, Any]]]] = {}
    index_bytes: dict[int, int] = {}
    with tempfile.TemporaryDirectory(prefix="kinodb-bench-append-") as tmp:
        for n in args.sizes:
            base = Path(tmp) / f"base{n}.kdb"
            t0 = time.perf_counter()
            build(base, n)
            with kinodb.open(base) as db:
                index_bytes[n] = db._commit.index_length
            print(
                f"built {n} episodes ({base.stat().st_size / 1e6:.1f} MB, index {index_bytes[n] / 1e6:.1f} MB) "
                f"in {time.perf_counter() - t0:.1f} s"
            )
            runs[n] = {v: [] for v in VARIANTS}
            for r in range(args.repeats):
                for variant in VARIANTS if r % 2 == 0 else VARIANTS[::-1]:
                    work = Path(tmp) / f"{variant}.kdb"
                    shutil.copyfile(base, work)
                    runs[n][variant].append(run_child(variant, work))
            shas = {run["sha256"] for v in VARIANTS for run in runs[n][v]}
            if len(shas) != 1:
                raise SystemExit(f"{n} episodes: the variants wrote different files")
            base.unlink()
    med = {
        n: {v: {k: statistics.median(run[k] for run in runs[n][v]) for k in runs[n][v][0] if k != "sha256"}
            for v in VARIANTS}
        for n in args.sizes
    }  # fmt: skip
    small, large = args.sizes
    print(f"append 1 episode, median of {args.repeats} (fresh process each; files byte-identical)")
    print(
        f"{'episodes':>9} {'variant':>10} {'open ms':>9} {'commit ms':>10} {'total ms':>9} {'peak RSS +MB':>13}"
    )
    for n in args.sizes:
        for v in VARIANTS:
            m = med[n][v]
            print(f"{n:>9} {v:>10} {m['open_s'] * 1e3:>9.1f} {m['commit_s'] * 1e3:>10.1f} "
                  f"{m['total_s'] * 1e3:>9.1f} {m['peak_rss_delta_kb'] / 1024:>13.1f}")  # fmt: skip
    growth = {
        v: {
            "time": med[large][v]["total_s"] / med[small][v]["total_s"],
            "rss": med[large][v]["peak_rss_delta_kb"] / max(med[small][v]["peak_rss_delta_kb"], 1),
        }
        for v in VARIANTS
    }
    speedup = {n: med[n]["reference"]["total_s"] / med[n]["current"]["total_s"] for n in args.sizes}
    memory = {
        n: med[n]["reference"]["peak_rss_delta_kb"] / max(med[n]["current"]["peak_rss_delta_kb"], 1)
        for n in args.sizes
    }
    for v in VARIANTS:
        print(f"growth {large}/{small} ({large / small:.0f}x the episodes), {v}: "
              f"time {growth[v]['time']:.2f}x, peak RSS {growth[v]['rss']:.2f}x")  # fmt: skip
    per_index = {
        n: {v: med[n][v]["peak_rss_delta_kb"] * 1024 / index_bytes[n] for v in VARIANTS} for n in args.sizes
    }
    for n in args.sizes:
        print(
            f"{n} episodes: reference/current time {speedup[n]:.2f}x, peak RSS {memory[n]:.2f}x; peak RSS "
            f"growth per index byte: current {per_index[n]['current']:.1f}, reference {per_index[n]['reference']:.1f}"
        )
    result = {
        "quick": args.quick, "sizes": args.sizes, "repeats": args.repeats, "frames": 10, "extra_fields": 7,
        "runs": {str(n): runs[n] for n in args.sizes}, "median": {str(n): med[n] for n in args.sizes},
        "growth": growth, "reference_over_current_time": {str(n): speedup[n] for n in args.sizes},
        "reference_over_current_rss": {str(n): memory[n] for n in args.sizes},
        "index_bytes": {str(n): index_bytes[n] for n in args.sizes},
        "peak_rss_per_index_byte": {str(n): per_index[n] for n in args.sizes},
        "python": platform.python_version(), "kinodb": kinodb.__version__, "machine": platform.machine(),
        "cpus": os.cpu_count(),
    }  # fmt: skip
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
