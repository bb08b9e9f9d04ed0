#!/usr/bin/env python
"""Serving benchmark: window batches over loopback gRPC against in-process reads of the same batches.

One synthetic state-only file (``--episodes`` episodes of 50 frames, state 14, action 7)
is served by a real ``kino-serve`` process on 127.0.0.1; the peer is the same process
reading the same batches in-process with `FrameWindows` (one vectorised gather),
measured in the same run. Batches are frame windows of ``--batch`` (256) samples with
obs_horizon 2 and action_horizon 16 (the diffusion-policy shape), random with seeds, so
every path reads exactly the same windows; the first batches of each path are checked
against each other bit for bit.

Paths:

* ``local``: ``FrameWindows.lowdim`` and ``FrameWindows.tasks`` (the arrays and task
  strings the server sends) on indices drawn as the server draws them.
* ``unary``: ``KinoClient.get_windows(seed=s)``, one call per batch.
* ``stream``: ``KinoClient.stream_windows(seed=1)`` with its defaults, one server stream
  for all batches (the server stacks several batches per message; the client yields
  them one at a time).
* ``stream1``: the same stream with ``batches_per_message=1``: one batch per message,
  as clients that predate the option receive them.

Then a load run: ``--clients`` (32) concurrent clients, each with its own channel,
each making ``--calls`` (500) unary batch calls; latency p50/p99 and errors.
Clients run as threads spread over a few processes, so client-side Python does not
serialise on one interpreter lock.

Run ``python benchmarks/serve.py`` (``--quick`` for a smoke run). Prints the ratios
against ``local`` (of the median rates, and the median of each repeat's ratio, where the
paths ran back to back under the same machine load) and writes JSON to
``benchmarks/results/serve.json``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

import kinodb
from kinodb.remote import KinoClient
from kinodb.synthetic import create_test
from kinodb.windows import FrameWindows

OBS, ACT = 2, 16
STREAMS: dict[str, dict[str, Any]] = {"stream": {}, "stream1": {"batches_per_message": 1}}
ROOT = Path(__file__).resolve().parents[1]
_READY = re.compile(r"^kino-serve: serving .* on (\S+) \[")


def start_server(path: Path, workers: int) -> tuple[subprocess.Popen[str], str]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]))
    cmd = [sys.executable, "-m", "kinodb._cli.serve", str(path), "--port", "0", "--workers", str(workers)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout is not None
    for line in proc.stdout:
        found = _READY.match(line)
        if found:
            threading.Thread(target=proc.stdout.read, daemon=True).start()  # keep the pipe drained
            return proc, found.group(1)
    raise RuntimeError(f"kino-serve exited with {proc.wait()} before serving")


def local_batches(fw: FrameWindows, batches: int, batch: int, seed: int) -> float:
    """Seconds to draw and gather ``batches`` batches as a seeded stream does."""
    rng = np.random.default_rng(seed)
    n = len(fw)
    t0 = time.perf_counter()
    for _ in range(batches):
        idx = rng.integers(0, n, batch, dtype=np.int64)
        fw.lowdim(idx)
        fw.tasks(idx)
    return time.perf_counter() - t0


def unary_batches(client: KinoClient, batches: int, batch: int) -> float:
    t0 = time.perf_counter()
    for s in range(1, batches + 1):
        client.get_windows(batch, obs_horizon=OBS, action_horizon=ACT, seed=s)
    return time.perf_counter() - t0


def stream_batches(client: KinoClient, batches: int, batch: int, seed: int, **kw: Any) -> float:
    t0 = time.perf_counter()
    for _ in client.stream_windows(
        batch, num_batches=batches, obs_horizon=OBS, action_horizon=ACT, seed=seed, **kw
    ):
        pass
    return time.perf_counter() - t0


def _same(got: dict[str, Any], fw: FrameWindows, idx: np.ndarray, what: str) -> None:
    assert np.array_equal(got["index"], idx), f"{what}: other windows than the local read"
    for key, value in fw.lowdim(idx).items():
        assert got[key].dtype == value.dtype and np.array_equal(got[key], value), f"{what}: {key} differs"
    assert got["task"] == fw.tasks(idx), f"{what}: tasks differ"


def check_same(fw: FrameWindows, client: KinoClient, batch: int) -> None:
    """Every path reads the same windows as the local path, bit for bit (arrays and tasks)."""
    for name, kw in STREAMS.items():
        rng = np.random.default_rng(1)
        streamed = client.stream_windows(
            batch, num_batches=20, obs_horizon=OBS, action_horizon=ACT, seed=1, **kw
        )
        for k, got in enumerate(streamed):
            _same(got, fw, rng.integers(0, len(fw), batch, dtype=np.int64), f"{name} batch {k}")
    for s in (1, 2):
        got = client.get_windows(batch, obs_horizon=OBS, action_horizon=ACT, seed=s)
        _same(
            got, fw, np.random.default_rng(s).integers(0, len(fw), batch, dtype=np.int64), f"unary seed {s}"
        )


def _load_worker(addr: str, threads: int, calls: int, batch: int, first: int, out: Any) -> None:
    latencies: list[list[float]] = [[] for _ in range(threads)]
    errors: list[str] = []
    start = threading.Barrier(threads)

    def client_loop(k: int) -> None:
        with KinoClient(addr, timeout=60) as client:
            client.server_info()  # connect before the clock starts
            start.wait()
            for j in range(calls):
                t0 = time.perf_counter()
                try:
                    got = client.get_windows(
                        batch, obs_horizon=OBS, action_horizon=ACT, seed=1 + (first + k) * calls + j
                    )
                    if len(got["index"]) != batch:
                        errors.append(f"client {first + k}: short batch")
                except Exception as exc:  # counted, not raised: the load run reports errors
                    errors.append(f"client {first + k}: {type(exc).__name__}: {exc}")
                latencies[k].append(time.perf_counter() - t0)

    pool = [threading.Thread(target=client_loop, args=(k,)) for k in range(threads)]
    t0 = time.perf_counter()
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    out.put(
        {
            "latencies": [x for row in latencies for x in row],
            "errors": errors,
            "wall": time.perf_counter() - t0,
        }
    )


def load_run(addr: str, clients: int, calls: int, batch: int, processes: int) -> dict[str, Any]:
    ctx = mp.get_context("spawn")  # fresh interpreters: no gRPC state inherited through fork
    out = ctx.Queue()
    per = [clients // processes + (1 if p < clients % processes else 0) for p in range(processes)]
    firsts = np.concatenate([[0], np.cumsum(per)[:-1]]).tolist()
    procs = [
        ctx.Process(target=_load_worker, args=(addr, n, calls, batch, f, out))
        for n, f in zip(per, firsts, strict=True)
        if n
    ]
    t0 = time.perf_counter()
    for p in procs:
        p.start()
    results = [out.get(timeout=3600) for _ in procs]
    for p in procs:
        p.join()
    wall = time.perf_counter() - t0
    lat = np.array([x for r in results for x in r["latencies"]])
    errors = [e for r in results for e in r["errors"]]
    return {
        "clients": clients, "calls_per_client": calls, "processes": len(procs), "calls": int(lat.size),
        "errors": len(errors), "error_samples": errors[:5],
        "p50_ms": float(np.percentile(lat, 50) * 1e3), "p99_ms": float(np.percentile(lat, 99) * 1e3),
        "max_ms": float(lat.max() * 1e3), "wall_s": wall,
        "windows_per_s": float(lat.size * batch / max(r["wall"] for r in results)),
    }  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--episodes", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--batches", type=int, default=1000, help="batches per timed repeat")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--calls", type=int, default=500)
    parser.add_argument("--processes", type=int, default=4, help="client processes of the load run")
    parser.add_argument("--workers", type=int, default=32, help="kino-serve --workers")
    parser.add_argument("--quick", action="store_true", help="smoke run: small file, few batches and calls")
    parser.add_argument(
        "--out",
        default=None,
        help="results JSON (default: benchmarks/results/serve.json, serve_quick.json with --quick)",
    )
    args = parser.parse_args()
    # A smoke run never replaces the recorded full run.
    args.out = args.out or str(
        ROOT / "benchmarks" / "results" / f"serve{'_quick' if args.quick else ''}.json"
    )
    if args.quick:
        args.episodes, args.batches, args.repeats, args.calls = 200, 30, 3, 20

    with tempfile.TemporaryDirectory(prefix="kino-serve-bench-") as tmp:
        path = Path(tmp) / "bench.kdb"
        create_test(path, n=args.episodes, frames=50, seed=0)
        proc, addr = start_server(path, args.workers)
        try:
            with kinodb.open(path) as db, KinoClient(addr, timeout=120) as client:
                fw = FrameWindows(db, obs_horizon=OBS, action_horizon=ACT)
                check_same(fw, client, args.batch)
                for _ in range(2):  # warm both sides: caches, connections, page cache
                    local_batches(fw, 10, args.batch, 99)
                    unary_batches(client, 10, args.batch)
                    for kw in STREAMS.values():
                        stream_batches(client, 10, args.batch, 99, **kw)
                times: dict[str, list[float]] = {"local": [], "unary": [], **{k: [] for k in STREAMS}}
                order = list(times)
                for r in range(args.repeats):  # rotate the order between repeats
                    for name in order[r % len(order) :] + order[: r % len(order)]:
                        if name == "local":
                            times[name].append(local_batches(fw, args.batches, args.batch, 1))
                        elif name == "unary":
                            times[name].append(unary_batches(client, args.batches, args.batch))
                        else:
                            times[name].append(
                                stream_batches(client, args.batches, args.batch, 1, **STREAMS[name])
                            )
            load = load_run(addr, args.clients, args.calls, args.batch, args.processes)
        finally:
            proc.terminate()
            proc.wait(timeout=60)

    per_batch = {k: statistics.median(v) / args.batches for k, v in times.items()}
    rate = {k: args.batch / v for k, v in per_batch.items()}
    window_bytes = (OBS * 14 + ACT * 7) * 4
    print(f"window batches of {args.batch} (obs {OBS} x 14, action {ACT} x 7 float32: {window_bytes * args.batch / 1024:.0f} KiB "
          f"of arrays per batch), {args.episodes} episodes x 50 frames, median of {args.repeats} x {args.batches} batches")  # fmt: skip
    # Also per repeat: each path against the local run of the same repeat (same machine load).
    paired = {
        k: statistics.median(a / b for a, b in zip(times["local"], v, strict=True)) for k, v in times.items()
    }
    print(f"{'path':<8} {'ms/batch':>9} {'windows/s':>12} {'vs local':>9} {'paired':>7}")
    for k in times:
        print(
            f"{k:<8} {per_batch[k] * 1e3:>9.3f} {rate[k]:>12,.0f} {rate[k] / rate['local']:>8.2f}x {paired[k]:>6.2f}x"
        )
    print(
        f"load: {load['clients']} clients x {load['calls_per_client']} calls ({load['processes']} processes): "
        f"p50 {load['p50_ms']:.2f} ms, p99 {load['p99_ms']:.2f} ms, max {load['max_ms']:.1f} ms, "
        f"{load['windows_per_s']:,.0f} windows/s, errors {load['errors']}"
    )
    result = {
        "benchmark": "serve",
        "quick": args.quick,
        "machine": {
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
        },
        "config": {k: v for k, v in vars(args).items() if k != "out"}
        | {"obs_horizon": OBS, "action_horizon": ACT},
        "median_s_per_batch": per_batch,
        "windows_per_s": rate,
        "ratio_vs_local": {k: rate[k] / rate["local"] for k in rate},
        "paired_ratio_vs_local": paired,
        "raw_s": times,
        "load": load,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
