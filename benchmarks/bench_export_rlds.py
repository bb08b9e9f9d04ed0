#!/usr/bin/env python
"""RLDS export throughput: `kinodb.export.export(..., format="rlds")` against writers given the same records.

The ``.kdb`` files are ingested from the synthetic TFDS datasets of `bench_ingest_rlds`:
a state-only one (by default 1,000 episodes x 100 steps) and one with two 128x128 JPEG
cameras (300 episodes x 30 steps), whose frames the export passes through. The peers get
every episode's features already in memory (off the clock), as the export builds them,
and only write: the ``tfrecord`` package (``pip install tfrecord``: protobuf's
``tf.train.Example`` and its own framing, what code without TensorFlow uses), when it is
installed, and kinodb's own encoder and framing (the export's floor, which must also read
the ``.kdb`` file and plan the features). All run in the same process, alternating; each
run writes a new folder (the previous one is deleted off the clock); medians are
reported. No target applies: this is for the record.

Run ``python benchmarks/bench_export_rlds.py`` (``--quick`` for a smoke run).
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

import numpy as np

import kinodb
from bench_ingest_rlds import write_synthetic
from kinodb.export import export
from kinodb.export import rlds as rlds_export
from kinodb.ingest import _tfrecord, ingest
from kinodb.ingest._example import encode_example

try:
    from tfrecord import TFRecordWriter
except ImportError:  # the peer is optional
    TFRecordWriter = None


def records_of(kdb: Path) -> list[dict[str, Any]]:
    """Every episode's features, as the export writes them."""
    with kinodb.open(kdb) as db:
        positions = list(range(len(db)))
        plan, _ = rlds_export._plan(db, positions)
        table = db.episodes()
        return [rlds_export._record(db, i, int(table["num_frames"][i]), plan, table) for i in positions]


def tfrecord_datum(features: dict[str, Any]) -> dict[str, tuple[Any, str]]:
    """The ``tfrecord`` package's form of one episode: ``{key: (values, "float"|"int"|"byte")}``."""
    out: dict[str, tuple[Any, str]] = {}
    for key, value in features.items():
        if isinstance(value, list):
            out[key] = (value, "byte")
        else:
            flat = np.asarray(value).ravel()
            out[key] = (flat, "float") if flat.dtype.kind == "f" else (flat.astype(np.int64), "int")
    return out


def tfrecord_write(data: list[dict[str, tuple[Any, str]]], out: Path) -> None:
    assert TFRecordWriter is not None
    out.mkdir()
    writer = TFRecordWriter(str(out / "peer-train.tfrecord-00000-of-00001"))
    for datum in data:
        writer.write(datum)
    writer.close()


def kinodb_encode(records: list[dict[str, Any]], out: Path) -> None:
    out.mkdir()
    _tfrecord.write_records(out / "peer-train.tfrecord-00000-of-00001", (encode_example(r) for r in records))


def measure(name: str, kdb: Path, work: Path, repeats: int) -> dict[str, Any]:
    records = records_of(kdb)
    with kinodb.open(kdb) as db:
        frames = int(db.episodes()["num_frames"].sum())
    runs: dict[str, Any] = {"export": lambda out: export(kdb, out, format="rlds"),
                            "kinodb_encode": lambda out: kinodb_encode(records, out)}  # fmt: skip
    if TFRecordWriter is not None:
        data = [tfrecord_datum(r) for r in records]
        runs["tfrecord_write"] = lambda out: tfrecord_write(data, out)
    times: dict[str, list[float]] = {k: [] for k in runs}
    order = list(runs)
    for r in range(repeats):
        for key in order[r % len(order) :] + order[: r % len(order)]:
            out = work / f"{name}_{key}"
            shutil.rmtree(out, ignore_errors=True)
            t0 = time.perf_counter()
            runs[key](out)
            times[key].append(time.perf_counter() - t0)
    size = sum(p.stat().st_size for p in (work / f"{name}_export").glob("*.tfrecord-*"))
    med = {k: statistics.median(v) for k, v in times.items()}
    row: dict[str, Any] = {"name": name, "episodes": len(records), "frames": frames, "record_bytes": size,
                           "seconds": times, "median_seconds": med,
                           "export_frames_per_s": frames / med["export"], "export_MBps": size / med["export"] / 1e6}  # fmt: skip
    for key in runs:
        if key != "export":
            row[f"throughput_ratio_export_over_{key}"] = med[key] / med["export"]
    return row


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
        help="results JSON (default: benchmarks/results/export_rlds.json, export_rlds_quick.json with --quick)",
    )
    parser.add_argument("--quick", action="store_true", help="tiny smoke run")
    args = parser.parse_args()
    args.out = args.out or f"benchmarks/results/export_rlds{'_quick' if args.quick else ''}.json"
    if args.quick:
        args.episodes, args.steps, args.repeats = 20, 10, 2
        args.state_episodes, args.state_steps = 50, 20
    if TFRecordWriter is None:
        print(
            "note: the tfrecord package is not installed (pip install tfrecord): kinodb's encoder is the only peer"
        )
    rows = []
    with tempfile.TemporaryDirectory(prefix="kinodb-bench-export-rlds-") as tmp:
        work = Path(tmp)
        for name, episodes, steps, size in (("state_only", args.state_episodes, args.state_steps, 0),
                                            ("jpeg", args.episodes, args.steps, args.size)):  # fmt: skip
            src = work / f"src_{name}" / "1.0.0"
            write_synthetic(src, episodes, steps, 4, size)
            kdb = work / f"{name}.kdb"
            ingest(src, kdb, progress=False)
            rows.append(measure(name, kdb, work, args.repeats))
    peers = [k for k in ("tfrecord_write", "kinodb_encode") if k in rows[0]["median_seconds"]]
    print(f"{'row':<11} {'kinodb export':>26} " + " ".join(f"{p + ' (in memory)':>26}" for p in peers))
    for row in rows:
        med = row["median_seconds"]
        cells = " ".join(
            f"{med[p] * 1e3:>9.1f} ms {row[f'throughput_ratio_export_over_{p}']:>6.2f}x{'':>7}" for p in peers
        )
        print(
            f"{row['name']:<11} {med['export'] * 1e3:>9.1f} ms {row['export_MBps']:>7.0f} MB/s{'':>4} {cells}"
        )
    result = {
        "quick": args.quick, "rows": rows, "crc32c": "google-crc32c" if _tfrecord._fast is not None else "numpy",
        "state_only": {"episodes": args.state_episodes, "steps": args.state_steps},
        "jpeg": {"episodes": args.episodes, "steps": args.steps, "cameras": 2, "size": args.size},
        "python": platform.python_version(), "kinodb": kinodb.__version__, "machine": platform.machine(),
        "cpus": os.cpu_count(), "tfrecord": _version("tfrecord"),
    }  # fmt: skip
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))


def _version(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


if __name__ == "__main__":
    main()
