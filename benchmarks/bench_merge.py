#!/usr/bin/env python
"""Merge throughput: `kinodb.merge` against a plain copy of the same kept bytes.

Three inputs with two JPEG cameras each are merged with a KQL filter. The peer copies
exactly the payload bytes of the kept episodes from the same memory-mapped inputs into
one file with the same buffering, then fsyncs it: the floor any merge that keeps the
bytes must pay. Both run in the same process, alternating, on a warm page cache.

Run ``python benchmarks/bench_merge.py`` (``--quick`` for a smoke run).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import kinodb
from kinodb.synthetic import create_test


def plain_copy(inputs: list[Path], kept: list[list[int]], out: Path) -> int:
    """Copy the kept episodes' payload bytes into ``out``; return bytes copied."""
    total = 0
    with open(out, "wb", buffering=1 << 20) as fh:
        for path, positions in zip(inputs, kept, strict=True):
            with kinodb.open(path) as db:
                buf, cols = db._map(), db._cols
                for i in positions:
                    off, n = int(cols["payload_offset"][i]), int(cols["payload_length"][i])
                    fh.write(buf[off : off + n].data)
                    total += n
        fh.flush()
        os.fsync(fh.fileno())
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--episodes", type=int, default=300, help="episodes per input (default 300)")
    parser.add_argument("--frames", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--filter", default="success = true OR embodiment = 'aloha'")
    parser.add_argument(
        "--out",
        default=None,
        help="results JSON (default: benchmarks/results/merge.json, merge_quick.json with --quick)",
    )
    parser.add_argument("--quick", action="store_true", help="tiny smoke run")
    args = parser.parse_args()
    # A smoke run never replaces the recorded full run.
    args.out = args.out or f"benchmarks/results/merge{'_quick' if args.quick else ''}.json"
    if args.quick:
        args.episodes, args.frames, args.repeats = 20, 10, 2
    with tempfile.TemporaryDirectory(prefix="kinodb-bench-merge-") as tmp:
        work = Path(tmp)
        inputs = [work / f"in{k}.kdb" for k in range(3)]
        for k, path in enumerate(inputs):
            create_test(path, args.episodes, args.frames, images=True, compress=90, seed=k)
        kept = []
        for path in inputs:
            with kinodb.open(path) as db:
                kept.append(db.query(args.filter).tolist())
        times: dict[str, list[float]] = {"merge": [], "plain_copy": []}
        copied = 0
        for r in range(args.repeats):
            for name in ("merge", "plain_copy") if r % 2 == 0 else ("plain_copy", "merge"):
                out = work / f"{name}.kdb"
                t0 = time.perf_counter()
                if name == "merge":
                    kinodb.merge(inputs, out, filter=args.filter, overwrite=True)
                else:
                    copied = plain_copy(inputs, kept, out)
                times[name].append(time.perf_counter() - t0)
        merged = (work / "merge.kdb").stat().st_size
    med = {k: statistics.median(v) for k, v in times.items()}
    ratio = med["plain_copy"] / med["merge"]
    episodes = sum(len(k) for k in kept)
    result = {
        "quick": args.quick,
        "inputs": len(inputs), "episodes_per_input": args.episodes, "frames": args.frames,
        "filter": args.filter, "kept_episodes": episodes, "kept_payload_bytes": copied,
        "merged_file_bytes": merged, "seconds": times, "median_seconds": med,
        "merge_MBps": copied / med["merge"] / 1e6, "plain_copy_MBps": copied / med["plain_copy"] / 1e6,
        "throughput_ratio_merge_over_copy": ratio, "target": 0.5, "met": ratio >= 0.5,
        "python": platform.python_version(), "kinodb": kinodb.__version__, "machine": platform.machine(),
        "cpus": os.cpu_count(),
    }  # fmt: skip
    print(f"kept {episodes} of {len(inputs) * args.episodes} episodes, {copied / 1e6:.1f} MB of payload")
    print(f"merge       median {med['merge'] * 1e3:8.1f} ms  {result['merge_MBps']:8.0f} MB/s")
    print(f"plain copy  median {med['plain_copy'] * 1e3:8.1f} ms  {result['plain_copy_MBps']:8.0f} MB/s")
    print(
        f"merge throughput = {ratio:.2f}x plain copy (target >= 0.5x): {'met' if ratio >= 0.5 else 'NOT met'}"
    )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
