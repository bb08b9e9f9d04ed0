#!/usr/bin/env python
"""HDF5 ingest throughput: `kinodb.ingest.ingest` against reading the same file with h5py.

Two robomimic-style files are generated: a state-only one (float64 actions, simulator
states, four low-dim observation keys, rewards, dones; no ``next_obs``) and one that adds
an 84x84 uint8 camera. The peer reads every dataset of every demo into memory with h5py,
which is the floor of any converter that reads its source whole; ingest reads the same
datasets and also concatenates states, writes and checksums the ``.kdb`` file and
commits it. Rows: state-only; camera stored with ``image_codec="raw"`` (HDF5 frames are
raw pixels, so there is no encoded frame to pass through); and, for reference, camera
encoded to JPEG (bound by the encoder, no target). Both run in the same process,
alternating, on a warm page cache; medians are reported.

Run ``python benchmarks/bench_ingest_hdf5.py`` (``--quick`` for a smoke run).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
from pathlib import Path
from typing import Any

import h5py
import numpy as np

import kinodb
from _ingest_timing import measure as measure_ingest
from _ingest_timing import print_rows
from kinodb.ingest import ingest

LOW_DIM = {"object": 10, "robot0_eef_pos": 3, "robot0_eef_quat": 4, "robot0_gripper_qpos": 2}


def write_source(path: Path, demos: int, frames: int, camera: int | None, seed: int = 0) -> int:
    """Write a robomimic-style file; return the bytes of its datasets."""
    rng = np.random.default_rng(seed)
    total = 0
    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        data.attrs["env_args"] = json.dumps(
            {"env_name": "Lift", "type": 1, "env_kwargs": {"robots": ["Panda"], "control_freq": 20}}
        )
        for i in range(demos):
            g = data.create_group(f"demo_{i}")
            g.attrs["num_samples"] = frames
            arrays: dict[str, np.ndarray] = {
                "actions": rng.uniform(-1, 1, (frames, 7)),
                "states": rng.normal(size=(frames, 32)),
                "rewards": (np.arange(frames) == frames - 1).astype(np.float64),
                "dones": (np.arange(frames) == frames - 1).astype(np.int64),
            }
            arrays.update({f"obs/{k}": rng.normal(size=(frames, d)) for k, d in LOW_DIM.items()})
            if camera:
                # Smooth content, so the JPEG row encodes something image-like.
                base = rng.integers(0, 256, (1, camera, camera, 3), dtype=np.uint8)
                arrays["obs/agentview_image"] = (
                    base + np.arange(frames, dtype=np.uint8)[:, None, None, None]
                ) % 255
            for name, arr in arrays.items():
                g[name] = arr
                total += arr.nbytes
    return total


def read_all(path: Path) -> int:
    """The peer: every dataset of every demo into memory with h5py; return bytes read."""
    total = 0
    with h5py.File(path, "r") as f:
        for g in f["data"].values():
            paths: list[str] = []
            g.visit(paths.append)
            for p in paths:
                obj = g[p]
                if isinstance(obj, h5py.Dataset):
                    total += obj[()].nbytes
    return total


def measure(src: Path, out: Path, repeats: int, frames: int, nbytes: int, **kw: Any) -> dict[str, Any]:
    """Time ingest and the h5py peer, alternating; return the row."""
    return measure_ingest(
        lambda: ingest(src, out, format="hdf5", **kw), lambda: read_all(src), out,
        peer="h5py_read", repeats=repeats, frames=frames, nbytes=nbytes, options=kw,
    )  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--demos", type=int, default=500, help="demos in the state-only file (default 500)")
    parser.add_argument(
        "--camera-demos", type=int, default=100, help="demos in the camera file (default 100)"
    )
    parser.add_argument("--frames", type=int, default=100, help="frames per demo (default 100)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--out",
        default=None,
        help="results JSON (default: benchmarks/results/ingest_hdf5.json, ingest_hdf5_quick.json with --quick)",
    )
    parser.add_argument("--quick", action="store_true", help="tiny smoke run")
    args = parser.parse_args()
    # A smoke run never replaces the recorded full run.
    args.out = args.out or f"benchmarks/results/ingest_hdf5{'_quick' if args.quick else ''}.json"
    if args.quick:
        args.demos, args.camera_demos, args.frames, args.repeats = 20, 5, 20, 2
    rows: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="kinodb-bench-ingest-") as tmp:
        work = Path(tmp)
        state_src, cam_src = work / "low_dim.hdf5", work / "image.hdf5"
        state_bytes = write_source(state_src, args.demos, args.frames, None)
        cam_bytes = write_source(cam_src, args.camera_demos, args.frames, 84)
        n_state, n_cam = args.demos * args.frames, args.camera_demos * args.frames
        rows["state_only"] = measure(state_src, work / "s.kdb", args.repeats, n_state, state_bytes)
        rows["camera_raw"] = measure(
            cam_src, work / "c.kdb", args.repeats, n_cam, cam_bytes, image_codec="raw"
        )
        rows["camera_jpeg"] = measure(
            cam_src, work / "j.kdb", args.repeats, n_cam, cam_bytes, image_codec="jpeg"
        )
    ratio = rows["state_only"]["throughput_ratio_ingest_over_read"]
    result = {
        "quick": args.quick,
        "demos": args.demos, "camera_demos": args.camera_demos, "frames_per_demo": args.frames,
        "rows": rows, "target_state_only": 0.5, "met": ratio >= 0.5,
        "python": platform.python_version(), "kinodb": kinodb.__version__, "h5py": h5py.__version__,
        "machine": platform.machine(), "cpus": os.cpu_count(),
    }  # fmt: skip
    print_rows(rows, "h5py")
    print(
        f"state-only ingest = {ratio:.2f}x h5py read-only (target >= 0.5x): {'met' if ratio >= 0.5 else 'NOT met'}"
    )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
