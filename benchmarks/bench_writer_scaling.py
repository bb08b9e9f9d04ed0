#!/usr/bin/env python
"""Writer scaling: the cost of one `Writer.add_episode` as a file grows, with extra fields.

Writes files of ``--sizes`` episodes (10 frames, state 14, action 7) whose episodes carry
seven extra fields of every kind (str, list, float, int), the way ingest and merge record
provenance, and times each quarter of the file. A writer whose cost per episode is
constant shows the same microseconds per episode in the last quarter of the largest
file as in the last quarter of the smallest; the ratio of the two is printed. The same
files are also written without extra fields, the floor. Medians of ``--repeats`` runs.

Run ``python benchmarks/bench_writer_scaling.py`` (``--quick`` for a smoke run).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

import kinodb


def write(path: Path, n: int, extras: bool) -> list[float]:
    """Write ``n`` episodes; return the microseconds per episode of each quarter."""
    actions, states = np.zeros((10, 7), np.float32), np.zeros((10, 14), np.float32)
    quarter, marks = max(1, n // 4), []
    t0 = time.perf_counter()
    with kinodb.Writer(path) as w:
        for i in range(n):
            extra = (
                {"source_file": f"/data/robot/demos/{i % 97}.hdf5", "source_episode": i, "operator": f"op{i % 5}",
                 "scene": "kitchen", "split": "train", "tags": ["pick", "place"], "score": 0.5}
                if extras else None
            )  # fmt: skip
            w.add_episode(actions=actions, states=states, extra=extra)
            if (i + 1) % quarter == 0:
                marks.append(time.perf_counter() - t0)
    edges = [0.0, *marks[:4]]
    return [(b - a) / quarter * 1e6 for a, b in itertools.pairwise(edges)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="5000,40000", help="episode counts, comma-separated")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--out", default=None, help="results JSON (default: benchmarks/results/writer_scaling.json)"
    )
    parser.add_argument("--quick", action="store_true", help="tiny smoke run")
    args = parser.parse_args()
    args.out = args.out or f"benchmarks/results/writer_scaling{'_quick' if args.quick else ''}.json"
    sizes = [int(s) for s in ("1000,4000" if args.quick else args.sizes).split(",")]
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="kinodb-bench-writer-") as tmp:
        for extras in (True, False):
            for n in sizes:
                runs = []
                for r in range(1 if args.quick else args.repeats):
                    path = Path(tmp) / f"w{n}_{extras}_{r}.kdb"
                    runs.append(write(path, n, extras))
                    path.unlink()
                quarters = [statistics.median(q) for q in zip(*runs, strict=True)]
                rows.append({"episodes": n, "extra_fields": extras, "us_per_episode_by_quarter": quarters})
                shown = " / ".join(f"{q:6.1f}" for q in quarters)
                print(
                    f"{'7 extra fields' if extras else 'no extra fields':16s} {n:>7d} episodes: {shown} us/episode"
                )
    ratios = {}
    for extras in (True, False):
        mine = [r for r in rows if r["extra_fields"] is extras]
        ratios["extras" if extras else "none"] = (
            mine[-1]["us_per_episode_by_quarter"][-1] / mine[0]["us_per_episode_by_quarter"][-1]
        )
    print(f"last quarter of {sizes[-1]} episodes / last quarter of {sizes[0]}: with extra fields "
          f"{ratios['extras']:.2f}x, without {ratios['none']:.2f}x (constant cost: about 1x)")  # fmt: skip
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as fh:
        json.dump({"benchmark": "writer_scaling", "rows": rows, "ratios": ratios, "python": platform.python_version(),
                   "kinodb": kinodb.__version__}, fh, indent=1)  # fmt: skip
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
