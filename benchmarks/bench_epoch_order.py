#!/usr/bin/env python
"""Memory and time a `KinoIterDataset` DataLoader worker spends on one epoch's order.

Each DataLoader worker of each rank needs only its part of the epoch: rank ``r`` of ``w``
takes every ``w``-th sample, and its workers deal that share out in batches. The peer is
the straightforward construction, kept as it was in kinodb before (``_reference_epochs.py``):
build the whole epoch's int64 order in every worker (a seeded permutation; for a mixture,
each source's cycled draws concatenated and shuffled together), then slice. It is compared with
``KinoIterDataset.worker_order`` (what a worker builds now) and ``epoch_order`` (the
whole order, which workers no longer build), on the same datasets, for rank 3 of 8,
worker 1 of 2, batches of 256, the case measured at scale.

Two datasets per epoch size: a 3:1 mixture of two files (60% and 40% of the samples) and
the same two files as one shuffled dataset; one window per frame, so the epoch has as
many samples as the files have frames (1000-frame episodes, one float per frame).

Measured: the peak of the heap while the order is built (``tracemalloc``, which sees
NumPy's buffers) and the growth of the peak RSS (``VmHWM`` after ``clear_refs``), each
in a fresh subprocess per variant; and the median time over repeats, the variants
interleaved in one process in rotating order, with the cyclic GC paused.

Run ``python benchmarks/bench_epoch_order.py`` (``--quick`` for a smoke run).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import numpy as np

import _reference_epochs
import kinodb
from kinodb.torch import KinoIterDataset, from_mixture

RANK, WORLD, WORKER, WORKERS, BATCH = 3, 8, 1, 2, 256
EPISODE = 1000  # frames per episode
VARIANTS = ("reference", "worker_order", "epoch_order")


def write_files(root: str, samples: int) -> tuple[str, str]:
    """Two files holding 60% and 40% of ``samples`` frames (whole episodes)."""
    paths = (os.path.join(root, f"a{samples}.kdb"), os.path.join(root, f"b{samples}.kdb"))
    first = samples * 3 // 5 // EPISODE * EPISODE
    zeros = np.zeros((EPISODE, 1), np.float32)
    for path, frames in zip(paths, (first, samples - first), strict=True):
        if os.path.exists(path):
            continue
        with kinodb.Writer(path) as w:
            for _ in range(frames // EPISODE):
                w.add_episode(actions=zeros)
    return paths


def dataset(paths: tuple[str, str], case: str) -> KinoIterDataset:
    options: dict[str, Any] = {"obs_horizon": 1, "action_horizon": 1, "image_key": False, "batch_size": BATCH,
                               "rank": RANK, "world_size": WORLD}  # fmt: skip
    if case == "mixture":
        return from_mixture({paths[0]: 3, paths[1]: 1}, seed=0, **options)
    return KinoIterDataset(list(paths), seed=0, **options)


def reference_order(ds: KinoIterDataset) -> np.ndarray:
    """The whole epoch's int64 order, then the worker's part of it (the peer)."""
    return _reference_epochs.worker_order(ds, ds.epoch, RANK, WORLD, WORKER, WORKERS)


def variant(ds: KinoIterDataset, name: str) -> Callable[[], np.ndarray]:
    if name == "reference":
        return lambda: reference_order(ds)
    if name == "worker_order":
        return lambda: ds.worker_order(worker=WORKER, num_workers=WORKERS)
    return ds.epoch_order


def _status() -> dict[str, int]:
    with open("/proc/self/status") as fh:
        return {
            line.split(":")[0]: int(line.split()[1]) for line in fh if line.startswith(("VmRSS", "VmHWM"))
        }


def measure_memory(paths: tuple[str, str], case: str, name: str) -> dict[str, float]:
    """In this (fresh) process: heap peak and peak-RSS growth of one build of the order."""
    import tracemalloc

    ds = dataset(paths, case)
    build = variant(ds, name)
    ds._epoch_size()  # what a dataset computes once is not the order's cost
    gc.collect()
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")  # resets VmHWM to the current RSS
    before = _status()["VmRSS"]
    out = build()
    rss = (_status()["VmHWM"] - before) / 1024
    del out
    gc.collect()
    tracemalloc.start()
    out = build()
    heap = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    return {"heap_peak_mb": heap, "rss_peak_growth_mb": rss, "kept_mb": out.nbytes / 2**20, "kept": len(out)}


def measure_times(paths: tuple[str, str], case: str, repeats: int) -> dict[str, float]:
    ds = dataset(paths, case)
    builds = {name: variant(ds, name) for name in VARIANTS}
    want = builds["reference"]()
    if not np.array_equal(builds["worker_order"](), want):
        raise SystemExit(f"{case}: worker_order differs from the reference")
    if not np.array_equal(
        builds["epoch_order"]()[RANK::WORLD][BATCH * WORKER : BATCH * (WORKER + 1)], want[:BATCH]
    ):
        raise SystemExit(f"{case}: epoch_order differs from the reference")
    times: dict[str, list[float]] = {name: [] for name in VARIANTS}
    gc.disable()
    try:
        for r in range(repeats):
            for name in VARIANTS[r % 3 :] + VARIANTS[: r % 3]:
                t0 = time.perf_counter()
                builds[name]()
                times[name].append(time.perf_counter() - t0)
    finally:
        gc.enable()
    return {name: statistics.median(t) * 1000 for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="one small epoch, few repeats")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument(
        "--out", default=None, help="results JSON (default: benchmarks/results/epoch_order.json)"
    )
    parser.add_argument(
        "--data-dir", default=None, help="where the .kdb files go (default: a temporary folder)"
    )
    parser.add_argument("--memory-of", nargs=4, metavar=("A", "B", "CASE", "VARIANT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_of:  # the subprocess of one memory measurement
        a, b, case, name = args.memory_of
        print(json.dumps(measure_memory((a, b), case, name)))
        return
    sizes = [100_000] if args.quick else [750_000, 2_500_000]
    repeats = args.repeats or (3 if args.quick else 7)
    results_dir = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
    out = args.out or os.path.join(results_dir, f"epoch_order{'_quick' if args.quick else ''}.json")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = args.data_dir or tmp
        os.makedirs(root, exist_ok=True)
        for samples in sizes:
            paths = write_files(root, samples)
            for case in ("mixture", "shuffled"):
                times = measure_times(paths, case, repeats)
                for name in VARIANTS:
                    cmd = [sys.executable, __file__, "--memory-of", *paths, case, name]
                    mem = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)
                    rows.append(
                        {"samples": samples, "case": case, "variant": name, "median_ms": times[name], **mem}
                    )
    ref = {(r["samples"], r["case"]): r for r in rows if r["variant"] == "reference"}
    print(f"rank {RANK} of {WORLD}, worker {WORKER} of {WORKERS}, batches of {BATCH}; medians of {repeats}")
    print(
        f"{'samples':>9} {'case':9} {'variant':13} {'heap MB':>8} {'x ref':>6} {'RSS+ MB':>8} {'ms':>7} {'x ref':>6}"
    )
    for r in rows:
        base = ref[(r["samples"], r["case"])]
        r["heap_over_reference"] = r["heap_peak_mb"] / base["heap_peak_mb"]
        r["time_over_reference"] = r["median_ms"] / base["median_ms"]
        print(f"{r['samples']:>9} {r['case']:9} {r['variant']:13} {r['heap_peak_mb']:8.1f} "
              f"{r['heap_over_reference']:6.2f} {r['rss_peak_growth_mb']:8.1f} {r['median_ms']:7.1f} "
              f"{r['time_over_reference']:6.2f}")  # fmt: skip
    kept = {(r["samples"], r["case"]): r["kept_mb"] for r in rows if r["variant"] == "worker_order"}
    print("kept by the worker: " + ", ".join(f"{s} {c}: {mb:.2f} MB" for (s, c), mb in kept.items()))
    meta = {"python": sys.version.split()[0], "numpy": np.__version__, "machine": platform.machine(),
            "cpus": os.cpu_count(), "repeats": repeats}  # fmt: skip
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as fh:
        json.dump({"quick": args.quick, "meta": meta, "results": rows}, fh, indent=1)
    print(f"results in {out}")


if __name__ == "__main__":
    main()
