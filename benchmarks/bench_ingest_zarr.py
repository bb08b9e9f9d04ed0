#!/usr/bin/env python
"""Zarr ingest throughput: `kinodb.ingest.ingest` against reading the same store with zarr.

Two Push-T-like replay buffers (diffusion_policy's layout, zarr format 2, Blosc LZ4 as
zarr 2 writes by default) are generated: a state-only one (``state`` 5, ``keypoint``
9x2, ``n_contacts`` 1, ``action`` 2, float32) and one that adds a 96x96 RGB camera
``img``. The peer reads every array whole with the zarr library (what diffusion_policy
does when it loads a replay buffer into memory): the floor of any converter that reads
the store. Ingest reads the same arrays episode by episode with its own chunk reader,
checks every chunk, writes and checksums the ``.kdb`` file and commits it. Rows:
state-only; camera stored with ``image_codec="raw"``; camera stored as PNG (lossless,
bound by the encoder). Both run in the same process, alternating; medians are reported.
No target applies: this is for the record.

Run ``python benchmarks/bench_ingest_zarr.py`` (``--quick`` for a smoke run).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import zarr

import kinodb
from _ingest_timing import measure as measure_ingest
from _ingest_timing import print_rows
from kinodb.ingest import ingest


def write_source(path: Path, episodes: int, frames: int, camera: int | None, seed: int = 0) -> int:
    """Write a Push-T-like replay buffer; return the bytes of its arrays."""
    rng = np.random.default_rng(seed)
    n = episodes * frames
    t = np.arange(n, dtype=np.float32)
    arrays: dict[str, np.ndarray] = {
        "state": (np.sin(t[:, None] / np.arange(7, 12)) * 50 + 48).astype(np.float32),
        "keypoint": rng.normal(48, 10, (n, 9, 2)).astype(np.float32),
        "n_contacts": rng.integers(0, 3, (n, 1)).astype(np.float32),
        "action": (np.cos(t[:, None] / np.arange(5, 7)) * 40 + 48).astype(np.float32),
    }
    if camera:
        yy, xx = np.mgrid[0:camera, 0:camera]
        base = np.stack([(xx * 2) % 256, (yy * 2) % 256, ((xx + yy) * 3) % 256], axis=-1).astype(np.uint8)
        arrays["img"] = (base[None] + (np.arange(n) % 256).astype(np.uint8)[:, None, None, None]) % 255
    root = zarr.open_group(path, mode="w", zarr_format=2)
    data = root.require_group("data")
    for name, value in arrays.items():
        chunks = (161, *value.shape[1:]) if value.ndim == 4 else value.shape  # as Push-T's store chunks them
        data.create_array(name, shape=value.shape, dtype=value.dtype, chunks=chunks)[...] = value
    ends = np.arange(1, episodes + 1, dtype=np.int64) * frames
    root.require_group("meta").create_array("episode_ends", shape=ends.shape, dtype=np.int64)[...] = ends
    return sum(a.nbytes for a in arrays.values())


def read_all(path: Path) -> int:
    """The peer: every array of ``data/`` and ``meta/`` into memory with zarr; return bytes read."""
    root = zarr.open_group(path, mode="r")
    return sum(np.asarray(root[g][k][...]).nbytes for g in ("data", "meta") for k in root[g].array_keys())


def measure(src: Path, out: Path, repeats: int, frames: int, nbytes: int, **kw: Any) -> dict[str, Any]:
    """Time ingest and the zarr peer, alternating; return the row."""
    return measure_ingest(
        lambda: ingest(src, out, format="zarr", fps=10, **kw), lambda: read_all(src), out,
        peer="zarr_read", repeats=repeats, frames=frames, nbytes=nbytes, options=kw,
    )  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--episodes", type=int, default=200, help="episodes per store (default 200)")
    parser.add_argument("--frames", type=int, default=150, help="frames per episode (default 150)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--out",
        default=None,
        help="results JSON (default: benchmarks/results/ingest_zarr.json, ingest_zarr_quick.json with --quick)",
    )
    parser.add_argument("--quick", action="store_true", help="tiny smoke run")
    args = parser.parse_args()
    args.out = args.out or f"benchmarks/results/ingest_zarr{'_quick' if args.quick else ''}.json"
    if args.quick:
        args.episodes, args.frames, args.repeats = 10, 20, 2
    rows: dict[str, dict[str, Any]] = {}
    n = args.episodes * args.frames
    with tempfile.TemporaryDirectory(prefix="kinodb-bench-ingest-zarr-") as tmp:
        work = Path(tmp)
        state_src, cam_src = work / "low_dim.zarr", work / "image.zarr"
        state_bytes = write_source(state_src, args.episodes, args.frames, None)
        cam_bytes = write_source(cam_src, args.episodes, args.frames, 96)
        rows["state_only"] = measure(state_src, work / "s.kdb", args.repeats, n, state_bytes)
        rows["camera_raw"] = measure(cam_src, work / "c.kdb", args.repeats, n, cam_bytes, image_codec="raw")
        rows["camera_png"] = measure(cam_src, work / "p.kdb", args.repeats, n, cam_bytes, image_codec="png")
    result = {
        "quick": args.quick, "episodes": args.episodes, "frames_per_episode": args.frames, "rows": rows,
        "python": platform.python_version(), "kinodb": kinodb.__version__, "zarr": zarr.__version__,
        "machine": platform.machine(), "cpus": os.cpu_count(),
    }  # fmt: skip
    print_rows(rows, "zarr")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
