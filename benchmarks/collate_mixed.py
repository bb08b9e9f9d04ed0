#!/usr/bin/env python
"""Collating frame windows of robots with different state/action widths: `pad_collate` on a
batch gathered per source (whole arrays) against padding the same samples one by one.

Five synthetic sources (20 episodes x 100 frames each; action/state widths 7/9, 14/26,
2/3, 7/8 and 7/21, float32) in a `kinodb.Mixture`; `KinoFrameDataset(obs_horizon=2,
action_horizon=16)`, state-only. Each timed batch is ``pad_collate(ds.__getitems__(idx))``
for 256 seeded random windows, the way a DataLoader calls them; the peer pads
``[dict(s) for s in batch]``, the per-sample path every collate of sample dicts takes.
Both give the same tensors (checked). Medians over ``--batches`` batches, alternating.

Run ``python benchmarks/collate_mixed.py``.
"""

from __future__ import annotations

import argparse
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
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batches", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=256)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory(prefix="kinodb-bench-collate-") as tmp:
        paths = []
        for k, (a, s) in enumerate(WIDTHS):
            path = Path(tmp) / f"robot{k}.kdb"
            with kinodb.Writer(path) as w:
                for _ in range(20):
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
        print(f"whole arrays are {med['per sample'] / med['whole arrays']:.1f}x faster")


if __name__ == "__main__":
    main()
