#!/usr/bin/env python
"""Zarr export throughput: `kinodb.export.export(..., format="zarr")` against zarr writing the same arrays.

The ``.kdb`` files are ingested from the Push-T-like replay buffers of
`bench_ingest_zarr` (200 episodes x 150 frames by default): state-only, and with a 96x96
RGB camera stored raw and stored as PNG. The peer is the zarr library writing the same
arrays, already in memory, as one format-2 store with the same chunks and compressor
(Blosc LZ4 level 5, byte shuffle): the floor of any exporter, which must also read the
``.kdb`` file (and decode PNG frames). Both run in the same process, alternating; each
run writes a new store (the previous one is deleted off the clock); medians are
reported. No target applies: this is for the record.

Run ``python benchmarks/bench_export_zarr.py`` (``--quick`` for a smoke run).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numcodecs
import numpy as np
import zarr

import kinodb
from bench_ingest_zarr import write_source
from kinodb.export import export
from kinodb.export import zarr as zarr_export
from kinodb.ingest import ingest


def arrays_of(path: Path) -> dict[str, np.ndarray]:
    """What the export writes under ``data/``, as whole arrays in memory."""
    with kinodb.open(path) as db:
        eps = [db.read_episode(i) for i in range(len(db))]
    out = {"action": np.concatenate([e["actions"] for e in eps]), "state": np.concatenate([e["states"] for e in eps]),
           "reward": np.concatenate([e["rewards"] for e in eps]), "done": np.concatenate([e["is_terminal"] for e in eps])}  # fmt: skip
    for name in eps[0]:
        if name not in ("meta", "images", "actions", "states", "rewards", "is_terminal"):
            out[name] = np.concatenate([e[name] for e in eps])
    for cam in eps[0]["images"]:
        out[cam] = np.concatenate([e["images"][cam] for e in eps])
    out["episode_ends"] = np.cumsum([len(e["actions"]) for e in eps]).astype(np.int64)
    return out


def zarr_write(arrays: dict[str, np.ndarray], out: Path) -> None:
    """The peer: every array written whole by zarr, format 2, the export's chunks and compressor."""
    compressor = numcodecs.Blosc(cname="lz4", clevel=5, shuffle=numcodecs.Blosc.SHUFFLE)
    root = zarr.open_group(out, mode="w", zarr_format=2)
    data, meta = root.require_group("data"), root.require_group("meta")
    for name, value in arrays.items():
        group = meta if name == "episode_ends" else data
        row = max(1, value.dtype.itemsize * int(np.prod(value.shape[1:], dtype=np.int64)))
        chunks = (max(1, min(len(value), zarr_export.CHUNK_BYTES // row)), *value.shape[1:])
        group.create_array(name, shape=value.shape, dtype=value.dtype, chunks=chunks, compressors=compressor)[
            ...
        ] = value


def measure(kdb: Path, work: Path, repeats: int, frames: int) -> dict[str, Any]:
    arrays = arrays_of(kdb)
    nbytes = sum(a.nbytes for a in arrays.values())
    times: dict[str, list[float]] = {"export": [], "zarr_write": []}
    for r in range(repeats):
        for name in ("export", "zarr_write") if r % 2 == 0 else ("zarr_write", "export"):
            out = work / f"{name}.zarr"
            shutil.rmtree(out, ignore_errors=True)
            t0 = time.perf_counter()
            if name == "export":
                export(kdb, out, format="zarr")
            else:
                zarr_write(arrays, out)
            times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        "frames": frames, "array_bytes": nbytes, "seconds": times, "median_seconds": med,
        "export_frames_per_s": frames / med["export"], "zarr_write_frames_per_s": frames / med["zarr_write"],
        "export_MBps": nbytes / med["export"] / 1e6, "zarr_write_MBps": nbytes / med["zarr_write"] / 1e6,
        "throughput_ratio_export_over_zarr_write": med["zarr_write"] / med["export"],
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--episodes", type=int, default=200, help="episodes (default 200)")
    parser.add_argument("--frames", type=int, default=150, help="frames per episode (default 150)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--out",
        default=None,
        help="results JSON (default: benchmarks/results/export_zarr.json, export_zarr_quick.json with --quick)",
    )
    parser.add_argument("--quick", action="store_true", help="tiny smoke run")
    args = parser.parse_args()
    args.out = args.out or f"benchmarks/results/export_zarr{'_quick' if args.quick else ''}.json"
    if args.quick:
        args.episodes, args.frames, args.repeats = 10, 20, 2
    n = args.episodes * args.frames
    rows: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="kinodb-bench-export-zarr-") as tmp:
        work = Path(tmp)
        write_source(work / "low_dim.zarr", args.episodes, args.frames, None)
        write_source(work / "image.zarr", args.episodes, args.frames, 96)
        for name, src, codec in (("state_only", "low_dim.zarr", "raw"), ("camera_raw", "image.zarr", "raw"),
                                 ("camera_png", "image.zarr", "png")):  # fmt: skip
            kdb = work / f"{name}.kdb"
            ingest(work / src, kdb, format="zarr", fps=10, image_codec=codec, progress=False)
            rows[name] = measure(kdb, work, args.repeats, n)
    print(f"{'row':<12} {'kinodb export':>24} {'zarr write (in memory)':>26} {'ratio':>7}")
    for name, row in rows.items():
        print(
            f"{name:<12} {row['export_frames_per_s']:>10,.0f} fr/s {row['export_MBps']:>6.0f} MB/s "
            f"{row['zarr_write_frames_per_s']:>12,.0f} fr/s {row['zarr_write_MBps']:>6.0f} MB/s "
            f"{row['throughput_ratio_export_over_zarr_write']:>6.2f}x"
        )
    result = {
        "quick": args.quick, "episodes": args.episodes, "frames_per_episode": args.frames, "rows": rows,
        "python": platform.python_version(), "kinodb": kinodb.__version__, "zarr": zarr.__version__,
        "machine": platform.machine(), "cpus": os.cpu_count(),
    }  # fmt: skip
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
