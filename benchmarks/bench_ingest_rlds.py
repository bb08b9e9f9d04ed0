#!/usr/bin/env python
"""RLDS ingest throughput: `kinodb.ingest.ingest` against just reading the same TFRecord shards.

The peer reads every record of every shard with kinodb's TFRecord reader (both CRC-32C
checks) and parses each into its features: the floor of any converter of these shards.
Ingest does the same and also builds the episodes, passes the JPEG frames through
(the writer reads each frame's header), writes, checksums and commits the ``.kdb`` file.
Inputs: the real Bridge sample (25 episodes x 10 steps, four 64x64 JPEG cameras) when
``../shared/samples`` has it, and a synthetic TFDS dataset (by default 300 episodes x 30
steps in 4 shards, two 128x128 JPEG cameras, state, action, a 512-d language embedding),
and a state-only one (by default 1,000 episodes x 100 steps: state, action, reward,
flags and the instruction text, no cameras).
A third variant runs the converter alone (as the ingest runs it, without the writer), to
separate the converter's cost from the writer's. All run in the same
process, rotating, on a warm page cache; medians are reported. Each ingest writes a new
output file, as a user's does: the previous run's output is deleted off the clock. ``workers=2`` repeats the
synthetic ingest with two converter processes. A last row measures the read-only peer
with the NumPy CRC-32C (no ``google-crc32c``).

Run ``python benchmarks/bench_ingest_rlds.py`` (``--quick`` for a smoke run).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

import kinodb
from kinodb.ingest import SourceOptions, _tfrecord, ingest
from kinodb.ingest._example import encode_example, parse_example
from kinodb.ingest._run import COLUMN_BYTES, COLUMN_EPISODES
from kinodb.ingest.rlds import RLDSSource

BRIDGE = (
    Path(__file__).resolve().parents[1].parent
    / "shared"
    / "samples"
    / "octo_bridge_rlds"
    / "bridge_dataset"
    / "1.0.0"
)
_PY = "tensorflow_datasets.core.features."


def _tensor(shape: list[int], dtype: str) -> dict[str, Any]:
    dims = {"dimensions": [str(d) for d in shape]}
    return {
        "pythonClassName": _PY + "tensor_feature.Tensor",
        "tensor": {"shape": dims, "dtype": dtype, "encoding": "none"},
    }


def _features(size: int) -> dict[str, Any]:
    """features.json of the synthetic set; ``size`` 0: no cameras and no language embedding
    (the state-only set)."""

    def fdict(children: dict[str, Any]) -> dict[str, Any]:
        return {"pythonClassName": _PY + "features_dict.FeaturesDict", "featuresDict": {"features": children}}

    image = {"pythonClassName": _PY + "image_feature.Image",
             "image": {"shape": {"dimensions": [str(size), str(size), "3"]}, "dtype": "uint8", "encodingFormat": "jpeg"}}  # fmt: skip
    step = {
        "is_first": _tensor([], "bool"), "is_last": _tensor([], "bool"), "is_terminal": _tensor([], "bool"),
        "action": _tensor([7], "float32"), "reward": _tensor([], "float32"), "discount": _tensor([], "float32"),
        "language_instruction": {"pythonClassName": _PY + "text_feature.Text", "text": {}},
        "language_embedding": _tensor([512], "float32"),
        "observation": fdict({"image": image, "wrist_image": image, "state": _tensor([8], "float32")}),
    }  # fmt: skip
    if not size:
        del step["language_embedding"]
        step["observation"] = fdict({"state": _tensor([8], "float32")})
    steps = {
        "pythonClassName": _PY + "dataset_feature.Dataset",
        "sequence": {"feature": fdict(step), "length": "-1"},
    }
    return fdict(
        {
            "steps": steps,
            "episode_metadata": fdict({"file_path": {"pythonClassName": _PY + "text_feature.Text"}}),
        }
    )


def _jpeg_pool(rng: np.random.Generator, n: int, size: int) -> list[bytes]:
    """Distinct image-like JPEG frames: smooth gradients plus noise."""
    yy, xx = np.mgrid[0:size, 0:size]
    out = []
    for k in range(n):
        base = np.stack([(xx * (k + 1)) % 256, (yy * 3 + k) % 256, ((xx + yy) * 2) % 256], -1)
        img = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def write_synthetic(root: Path, episodes: int, steps: int, shards: int, size: int, seed: int = 0) -> None:
    """A TFDS RLDS dataset folder, one record per episode, as TFDS lays it out; ``size`` 0:
    state-only (no cameras, no language embedding)."""
    rng = np.random.default_rng(seed)
    pool = _jpeg_pool(rng, 240, size) if size else []
    root.mkdir(parents=True)
    per = -(-episodes // shards)
    lengths = []
    for s in range(shards):
        records = []
        for i in range(s * per, min(episodes, (s + 1) * per)):
            flags = np.zeros(steps, np.int64)
            last = flags.copy()
            last[-1] = 1
            flags[0] = 1
            action = rng.normal(size=(steps, 7)).astype(np.float32)  # drawn in the order earlier runs drew
            embedding = rng.normal(size=(steps, 512)).astype(np.float32) if size else None
            features: dict[str, Any] = {
                "steps/is_first": flags, "steps/is_last": last, "steps/is_terminal": last,
                "steps/action": action, "steps/reward": last.astype(np.float32),
                "steps/discount": np.ones(steps, np.float32),
                "steps/language_instruction": [b"put the spoon in the pot"] * steps,
                "steps/observation/state": rng.normal(size=(steps, 8)).astype(np.float32),
                "episode_metadata/file_path": [f"/data/traj_{i}.pkl".encode()],
            }  # fmt: skip
            if size:  # the cameras and the embedding; the state-only set has neither
                frames = [pool[(i * 7 + t) % len(pool)] for t in range(steps)]
                features["steps/language_embedding"] = embedding
                features["steps/observation/image"] = frames
                features["steps/observation/wrist_image"] = frames[::-1]
            records.append(encode_example(features))
        _tfrecord.write_records(root / f"synthetic_rlds-train.tfrecord-{s:05d}-of-{shards:05d}", records)
        lengths.append(str(len(records)))
    split = {
        "name": "train",
        "shardLengths": lengths,
        "filepathTemplate": "{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}",
    }
    info = {"name": "synthetic_rlds", "version": "1.0.0", "fileFormat": "tfrecord", "splits": [split]}
    (root / "dataset_info.json").write_text(json.dumps(info))
    (root / "features.json").write_text(json.dumps(_features(size)))


def read_only(root: Path) -> int:
    """The peer: every record of every shard read (CRCs checked) and parsed; return records."""
    n = 0
    for shard in sorted(root.glob("*.tfrecord-*")):
        for data in _tfrecord.iter_records(str(shard)):
            parse_example(data)
            n += 1
    return n


def convert_only(root: Path) -> int:
    """The converter without the writer, as the ingest runs it: runs of episodes at once
    where the source takes them so, else every episode's `add_episode` arguments; return
    frames."""
    source = RLDSSource(str(root), SourceOptions())
    try:
        keys, frames, at = source.episodes(), 0, 0
        while at < len(keys):
            run = keys[at : at + COLUMN_EPISODES]
            values = source.read_columns(run, COLUMN_BYTES) if len(run) > 1 else None
            if values is not None:
                frames += sum(values["lengths"])
                at += len(values["lengths"])
            else:
                frames += sum(len(source.read(key)["actions"]) for key in run)
                at += len(run)
        return frames
    finally:
        source.close()


def measure(name: str, root: Path, out: Path, repeats: int, workers: int) -> dict[str, Any]:
    """Median seconds of ingest, of the converter alone and of the read-only peer, rotating."""
    order = ["ingest", "convert_only", "read_only"]
    times: dict[str, list[float]] = {k: [] for k in order}
    for r in range(repeats):
        for what in order[r % 3 :] + order[: r % 3]:
            if what == "ingest":
                out.unlink(missing_ok=True)  # off the clock: a new output deletes no old file
            t0 = time.perf_counter()
            if what == "ingest":
                report = ingest(root, out, workers=workers)
            elif what == "convert_only":
                convert_only(root)
            else:
                read_only(root)
            times[what].append(time.perf_counter() - t0)
    with kinodb.open(out) as db:
        frames, eps = db.num_frames(), len(db)
    source_bytes = sum(p.stat().st_size for p in root.glob("*.tfrecord-*"))
    med = {k: statistics.median(v) for k, v in times.items()}
    ratio = med["read_only"] / med["ingest"]
    conv = med["read_only"] / med["convert_only"]
    row = {
        "input": name, "workers": workers, "episodes": eps, "frames": frames, "source_bytes": source_bytes,
        "kdb_bytes": report.bytes, "seconds": times, "median_seconds": med,
        "ingest_frames_per_s": frames / med["ingest"], "read_only_frames_per_s": frames / med["read_only"],
        "ingest_MBps": source_bytes / med["ingest"] / 1e6, "read_only_MBps": source_bytes / med["read_only"] / 1e6,
        "convert_only_frames_per_s": frames / med["convert_only"],
        "throughput_ratio_ingest_over_read": ratio, "target": 0.5, "met": ratio >= 0.5,
        "throughput_ratio_convert_only_over_read": conv,
    }  # fmt: skip
    print(f"{name:<10} workers={workers}  {eps} episodes, {frames} frames, {source_bytes / 1e6:.1f} MB")
    print(
        f"  ingest     median {med['ingest'] * 1e3:8.1f} ms  {row['ingest_frames_per_s']:9.0f} frames/s  {row['ingest_MBps']:7.0f} MB/s"
    )
    print(
        f"  read only  median {med['read_only'] * 1e3:8.1f} ms  {row['read_only_frames_per_s']:9.0f} frames/s  {row['read_only_MBps']:7.0f} MB/s"
    )
    print(f"  converter  median {med['convert_only'] * 1e3:8.1f} ms  {row['convert_only_frames_per_s']:9.0f} frames/s"
          f"  (no writer: {conv:.2f}x read-only)")  # fmt: skip
    print(
        f"  ingest = {ratio:.2f}x read-only throughput (target >= 0.5x): {'met' if ratio >= 0.5 else 'NOT met'}"
    )
    return row


def numpy_crc_read(root: Path, repeats: int) -> dict[str, Any]:
    """The read-only peer with the NumPy CRC-32C instead of google-crc32c."""
    saved = _tfrecord._fast
    _tfrecord._fast = None
    try:
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            read_only(root)
            times.append(time.perf_counter() - t0)
    finally:
        _tfrecord._fast = saved
    source_bytes = sum(p.stat().st_size for p in root.glob("*.tfrecord-*"))
    med = statistics.median(times)
    print(f"  read only with the NumPy CRC-32C: {med * 1e3:.1f} ms, {source_bytes / med / 1e6:.0f} MB/s")
    return {"median_seconds": med, "MBps": source_bytes / med / 1e6}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--episodes", type=int, default=300)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--size", type=int, default=128, help="camera height and width (default 128)")
    parser.add_argument("--state-episodes", type=int, default=1000, help="episodes of the state-only set")
    parser.add_argument(
        "--state-steps", type=int, default=100, help="steps per episode of the state-only set"
    )
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--out",
        default=None,
        help="results JSON (default: benchmarks/results/ingest_rlds.json, ingest_rlds_quick.json with --quick)",
    )
    parser.add_argument("--quick", action="store_true", help="tiny smoke run")
    args = parser.parse_args()
    # A smoke run never replaces the recorded full run.
    args.out = args.out or f"benchmarks/results/ingest_rlds{'_quick' if args.quick else ''}.json"
    if args.quick:
        args.episodes, args.steps, args.repeats = 20, 10, 2
        args.state_episodes, args.state_steps = 50, 20
    if _tfrecord._fast is None:
        print(
            "note: google-crc32c is not installed, so both the ingest and the read-only peer check\n"
            "CRC-32C in NumPy, some 10x slower than what `pip install 'kinodb[rlds]'` gives; the\n"
            "ratios then compare two slow readers. Install it for the figures docs/benchmarks.md quotes."
        )
    rows = []
    with tempfile.TemporaryDirectory(prefix="kinodb-bench-rlds-") as tmp:
        work = Path(tmp)
        if BRIDGE.is_dir():
            rows.append(measure("bridge", BRIDGE, work / "bridge.kdb", args.repeats, 1))
        else:
            print(f"Bridge sample not found at {BRIDGE}; synthetic data only")
        synth = work / "synthetic_rlds" / "1.0.0"
        write_synthetic(synth, args.episodes, args.steps, 4, args.size)
        rows.append(measure("synthetic", synth, work / "synthetic.kdb", args.repeats, 1))
        rows.append(measure("synthetic", synth, work / "synthetic2.kdb", args.repeats, 2))
        numpy_crc = numpy_crc_read(synth, args.repeats)
        state = work / "synthetic_state" / "1.0.0"
        write_synthetic(state, args.state_episodes, args.state_steps, 4, 0)
        rows.append(measure("state-only", state, work / "state.kdb", args.repeats, 1))
    crc = "google-crc32c" if _tfrecord._fast is not None else "numpy"
    result = {
        "quick": args.quick,
        "rows": rows, "crc32c": crc, "synthetic_read_only_numpy_crc": numpy_crc,
        "synthetic": {"episodes": args.episodes, "steps": args.steps, "cameras": 2, "size": args.size, "shards": 4},
        "state_only": {"episodes": args.state_episodes, "steps": args.state_steps, "cameras": 0, "shards": 4},
        "python": platform.python_version(), "kinodb": kinodb.__version__, "machine": platform.machine(),
        "cpus": os.cpu_count(),
    }  # fmt: skip
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
