#!/usr/bin/env python
"""Collating frame windows of robots with different state/action widths: `pad_collate` on a
batch gathered per source (whole arrays) against padding the same samples one by one.

Five synthetic sources (20 episodes x 100 frames each; action/state widths 7/9, 14/26,
2/3, 7/8 and 7/21, float32) in a `kinodb.Mixture`; `KinoFrameDataset(obs_horizon=2,
action_horizon=16)`, state-only. Each timed batch is ``pad_collate(ds.__getitems__(idx))``
for 256 seeded random windows, the way a DataLoader calls them; the peer pads
``[dict(s) for s in batch]``, the per-sample path every collate of sample dicts takes.
Both give the same tensors (checked). Medians over ``--batches`` batches, alternating.

Run ``python benchmarks/collate_mixed.py`` (``--quick`` for a smoke run). The timings and
the ratio go to ``--out`` (default ``benchmarks/results/collate_mixed.json``, or
``collate_mixed_quick.json`` with ``--quick``).
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

import numpy as np
import torch

import kinodb
from kinodb.torch import KinoFrameDataset, pad_collate

WIDTHS = [(7, 9), (14, 26), (2, 3), (7, 8), (7, 21)]


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--batches", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--episodes", type=int, default=20, help="episodes of 100 frames per source")
    parser.add_argument("--quick", action="store_true", help="smoke run: 4 episodes per source, 4 batches")
    parser.add_argument(
        "--out", default=None,
        help="results JSON (default: benchmarks/results/collate_mixed.json, collate_mixed_quick.json with --quick)",
    )  # fmt: skip
    args = parser.parse_args()
    # A smoke run never replaces the recorded full run.
    results_dir = Path(__file__).resolve().parent / "results"
    args.out = args.out or str(results_dir / f"collate_mixed{'_quick' if args.quick else ''}.json")
    if args.quick:
        args.episodes, args.batches = 4, 4
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory(prefix="kinodb-bench-collate-") as tmp:
        paths = []
        for k, (a, s) in enumerate(WIDTHS):
            path = Path(tmp) / f"robot{k}.kdb"
            with kinodb.Writer(path) as w:
                for _ in range(args.episodes):
                    w.add_episode(actions=rng.normal(size=(100, a)).astype(np.float32),
                                  states=rng.normal(size=(100, s)).astype(np.float32), fps=10.0)  # fmt: skip
            paths.append(str(path))
        ds = KinoFrameDataset(kinodb.Mixture([(p, 1.0) for p in paths]), obs_horizon=2, action_horizon=16)
        times: dict[str, list[float]] = {"whole arrays": [], "per sample": []}
        for b in range(args.batches):
            idx = rng.integers(0, len(ds), args.batch_size).tolist()
            outs = {}
            for name in list(times) if b % 2 == 0 else list(times)[::-1]:
                t0 = time.perf_counter()
                batch = ds.__getitems__(idx)
                outs[name] = (
                    pad_collate(batch) if name == "whole arrays" else pad_collate([dict(s) for s in batch])
                )
                times[name].append(time.perf_counter() - t0)
            for key, value in outs["per sample"].items():
                if isinstance(value, torch.Tensor):
                    assert torch.equal(outs["whole arrays"][key], value), key
        med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
        for name, ms in med.items():
            print(
                f"{name:<13} {ms:7.2f} ms per batch of {args.batch_size} windows (median of {args.batches})"
            )
        ratio = med["per sample"] / med["whole arrays"]
        print(f"whole arrays are {ratio:.1f}x faster")
    result = {
        "quick": args.quick, "batches": args.batches, "batch_size": args.batch_size,
        "episodes_per_source": args.episodes, "frames_per_episode": 100, "widths": WIDTHS,
        "obs_horizon": 2, "action_horizon": 16,
        "seconds": times, "median_ms": med, "per_sample_over_whole_arrays": ratio,
        "python": platform.python_version(), "torch": torch.__version__, "kinodb": kinodb.__version__,
        "machine": platform.machine(), "cpus": os.cpu_count(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }  # fmt: skip
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"results in {args.out}")


if __name__ == "__main__":
    main()
