#!/usr/bin/env python
"""Training-loader throughput: `kinodb.torch.KinoFrameDataset` against LeRobot and robomimic, same windows.

Every loader serves the same windows in the same seeded order through a
``torch.utils.data.DataLoader``: the state at ``t-1, t`` (obs history 2), the actions at
``t .. t+15`` (chunk 16), edge-padded at episode ends, and for the image case two
cameras at 96x96. The data is one synthetic dataset per case (benchmarks/_data.py),
stored once as ``.kdb`` and written from it by kinodb's exporters into the forms the
peers read:

- kinodb: ``KinoFrameDataset(obs_horizon=2, action_horizon=16, image_size=(96, 96))`` on
  the ``.kdb`` (224x224 JPEG frames, decoded with DCT scaling and resized), batches
  gathered by ``__getitems__`` and passed through ``kinodb.torch.collate``.
- LeRobot: ``LeRobotDataset`` (lerobot 0.4.4) with ``delta_timestamps`` on the LeRobot
  v3.0 export (mp4 video, pyav backend; resize as its ``image_transforms``).
- robomimic: ``SequenceDataset`` (robomimic 0.3.0) with ``frame_stack=2, seq_length=16``
  and ``hdf5_cache_mode="low_dim"`` on the robomimic HDF5 export (raw uint8 frames).
- bare decode (the floor, image case): Pillow decoding exactly the JPEG frames the
  kinodb windows need (draft-mode scaled decode, bilinear resize to 96x96) into one HWC
  array in a plain loop, on as many threads as kinodb decodes with, the bytes read up
  front. It is compared with kinodb's uint8 frames in the same memory layout
  (``normalize=False, channels_last=True``): the same work.

Without the peers installed (``benchmarks/setup_peers.sh`` builds ``.venv-bench``), the
h5py and pyarrow+PyAV stand-ins of benchmarks/_peers.py, written the way those
libraries read, take their place and the output says so.

Each case runs with ``num_workers`` 0 and 2 (persistent workers). A pass reads windows
in the case's seeded order as an epoch does; passes repeat until they have run
``--min-seconds``. The state case's timed passes are whole epochs (all 30,110 windows)
for every loader that can read one within ``--min-seconds``, and the first 4,096 windows
for those that cannot (LeRobot); the warm-up pass reads those 4,096 windows, and the
image case's passes 512. One warm-up pass, then the median of ``--repeats`` timed
passes, loaders rotating between passes. Before timing, the first batch of every loader is compared with kinodb's
(states and actions exactly, frames within the video codec's error).

Run ``.venv-bench/bin/python benchmarks/dataloader.py`` (``--quick`` for a 1-2 minute check).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import _data  # noqa: E402
import _peers  # noqa: E402
import kinodb  # noqa: E402

OBS_HORIZON, ACTION_HORIZON, IMAGE_SIZE = 2, 16, 96
TARGETS = {"state_vs_peers": 20.0, "images_vs_lerobot": 3.0, "images_vs_floor": 0.8}


@dataclass
class Case:
    """One table section: a dataset, its windows, batch size and number of windows per pass."""

    name: str
    paths: _data.SetPaths
    windows: _peers.Windows
    batch_size: int
    n_windows: int | None  # windows per pass (None: epochs over every window; see `PassOrder`)


@dataclass
class Row:
    """One loader under one ``num_workers``: what it read and how fast."""

    case: str
    workers: int
    loader: str
    threads: int | None = None
    passes: list[float] = field(default_factory=list)  # windows/s of each timed pass

    @property
    def median(self) -> float:
        return statistics.median(self.passes) if self.passes else float("nan")


# -- loaders -----------------------------------------------------------------------------------


def kinodb_dataset(case: Case, *, decode_threads: int | None = None, uint8: bool = False) -> Any:
    from kinodb.torch import KinoFrameDataset

    w = case.windows
    return KinoFrameDataset(
        str(case.paths.kdb), obs_horizon=w.obs_horizon, action_horizon=w.action_horizon,
        image_key=list(w.cameras) if w.cameras else False,
        image_size=(w.image_size, w.image_size) if w.image_size else None,
        pad="edge", normalize=False if uint8 else None, resize="bilinear", decode_threads=decode_threads,
        channels_last=uint8,
    )  # fmt: skip


FIRST_PASS = 4096  # windows of the warm-up pass, and of a timed pass too long for an epoch
NOOP = "DataLoader floor (no-op dataset)"


class NoOpWindows(torch.utils.data.Dataset):  # type: ignore[type-arg]
    """A dataset that does no work: it hands back one prepared batch (kinodb's first, same
    layout and transport) for any indices. Through a DataLoader it measures what torch's
    own machinery costs per batch on this machine: the ceiling of any loader."""

    def __init__(self, batch: dict[str, Any], n: int) -> None:
        self.batch, self.n = dict(batch), n

    def __len__(self) -> int:
        return self.n

    def __getitems__(self, indices: list[int]) -> Any:
        from kinodb.torch import Batch

        k = len(indices)
        return Batch({key: v[:k] for key, v in self.batch.items()}, k)


class PassOrder(torch.utils.data.Sampler[int]):
    """The first ``n`` windows of a fixed order; ``n`` may change between passes."""

    def __init__(self, order: list[int], n: int) -> None:
        self.order, self.n = order, n

    def __iter__(self) -> Iterator[int]:
        return iter(self.order[: self.n])

    def __len__(self) -> int:
        return self.n

    def size_for(self, rate: float, seconds: float, batch: int) -> None:
        """Whole epochs when one takes at most ``seconds`` at ``rate`` windows/s, else `FIRST_PASS`."""
        epoch = len(self.order)
        self.n = epoch if epoch <= rate * seconds else min(epoch, FIRST_PASS)


def loader(
    dataset: Any, case: Case, order: PassOrder, workers: int, *, kino: bool, prefetch: int | None = None
) -> DataLoader[Any]:
    """A DataLoader over ``order`` (a fixed order, so every loader reads the same windows);
    ``prefetch``: its ``prefetch_factor`` with workers (None: torch's default, 2)."""
    kwargs: dict[str, Any] = {}
    if prefetch is not None and workers > 0:
        kwargs["prefetch_factor"] = prefetch
    if kino:
        from kinodb.torch import collate

        kwargs["collate_fn"] = collate
    return DataLoader(dataset, batch_size=case.batch_size, sampler=order, num_workers=workers,
                      persistent_workers=workers > 0, **kwargs)  # fmt: skip


def window_frames(db: kinodb.Database, order: list[int], windows: _peers.Windows) -> list[bytes]:
    """The stored JPEG bytes of every frame the windows need, in kinodb's order (window, camera, step)."""
    lengths = db.episodes()["num_frames"].astype(np.int64)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    idx = np.asarray(order, np.int64)
    ep = np.searchsorted(starts, idx, side="right") - 1
    t = idx - starts[ep]
    steps = np.clip(t[:, None] + np.arange(-windows.obs_horizon + 1, 1)[None, :], 0, lengths[ep][:, None] - 1)
    out: list[bytes] = []
    for cam in windows.cameras:  # kinodb decodes camera by camera, window by window
        for e, row in zip(ep.tolist(), steps.tolist(), strict=True):
            out.extend(db.read_image_bytes(e, cam, f) for f in row)
    return out


def decode_floor(blobs: list[bytes], size: int, threads: int) -> Callable[[], int]:
    """The bare decode loop: each blob decoded (draft-scaled) and resized, into one array."""
    import io

    from PIL import Image

    out = np.empty((len(blobs), size, size, 3), np.uint8)

    def run(lo: int, hi: int) -> None:
        for k in range(lo, hi):
            im = Image.open(io.BytesIO(blobs[k]))
            im.draft("RGB", (size, size))
            out[k] = np.asarray(im.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=None))

    bounds = np.linspace(0, len(blobs), threads + 1).astype(int).tolist()
    pool = ThreadPoolExecutor(threads) if threads > 1 else None

    def once() -> int:
        if pool is None:
            run(0, len(blobs))
        else:
            list(pool.map(run, bounds[:-1], bounds[1:]))
        return len(blobs)

    return once


# -- timing ------------------------------------------------------------------------------------


def drain(dl: Iterable[Any]) -> int:
    """Iterate a loader; return the number of windows it produced."""
    n = 0
    for batch in dl:
        n += int(batch["action"].shape[0])
    return n


def timed(fn: Callable[[], int], min_seconds: float) -> float:
    """Windows per second of ``fn`` (one pass), repeated until it has run ``min_seconds``."""
    n, t0 = 0, time.perf_counter()
    while True:
        n += fn()
        elapsed = time.perf_counter() - t0
        if elapsed >= min_seconds:
            return n / elapsed


def as_float(frames: torch.Tensor) -> torch.Tensor:
    """Frames as float in [0, 1] (kinodb's uint8 rows hand over uint8)."""
    return frames.float().div(255) if frames.dtype == torch.uint8 else frames.float()


def first_batch_check(batches: dict[str, dict[str, Any]], reference: str) -> list[str]:
    """Compare every loader's first batch with kinodb's: the same windows, the same values."""
    ref = batches[reference]
    problems = []
    for name, b in batches.items():
        for key in ("state", "action", "action_is_pad"):
            if not torch.equal(torch.as_tensor(b[key]), torch.as_tensor(ref[key])):
                problems.append(f"{name}: {key} differs from {reference}'s")
        for cam, frames in (ref.get("images") or {}).items():
            got = b["images"][cam]
            same = got.shape == frames.shape
            diff = float((as_float(got) - as_float(frames)).abs().mean()) if same else None
            tol = 0.03 if "lerobot" in name else 0.01  # video is lossy; resize kernels differ slightly
            if diff is None or diff > tol:
                problems.append(f"{name}: images[{cam}] {tuple(got.shape)} differs (mean abs {diff})")
    return problems


def floor_name(threads: int) -> str:
    return f"bare decode ({threads} thread{'s' if threads > 1 else ''})"


def run_case(
    case: Case, workers_list: list[int], args: argparse.Namespace, peers: dict[str, str | None]
) -> list[Row]:
    """Every loader of ``case`` under each ``num_workers``: first batches compared, then timed."""
    rng = np.random.default_rng(args.seed)
    with kinodb.open(case.paths.kdb) as db:
        order = rng.permutation(db.num_frames())[: case.n_windows].tolist()
        blobs = window_frames(db, order, case.windows) if case.windows.cameras else []
    first_pass = min(len(order), FIRST_PASS)
    images = bool(case.windows.cameras)
    per_window = len(blobs) / len(order)
    lerobot_name = "lerobot" if peers["lerobot"] else "lerobot-style (pyarrow+PyAV)"
    robomimic_name = "robomimic" if peers["robomimic"] else "robomimic-style (h5py)"
    rows: list[Row] = []
    floors: dict[int, Callable[[], int]] = {}
    for workers in workers_list:
        jobs: dict[str, tuple[Row, Callable[[], int]]] = {}
        samplers: dict[str, PassOrder] = {}
        first: dict[str, dict[str, Any]] = {}
        # kinodb decodes on min(4, cpus) threads in the main process, on 1 in each worker.
        threads = max(1, min(4, os.cpu_count() or 1)) if workers == 0 else workers
        kino = [("kinodb", {}, threads)]
        if images:
            kino.append(("kinodb uint8 channels-last", {"uint8": True}, threads))
            if workers == 0 and threads != 1:
                kino.append(
                    ("kinodb uint8 channels-last (1 thread)", {"uint8": True, "decode_threads": 1}, 1)
                )
        for name, options, n_threads in kino:
            samplers[name] = PassOrder(order, first_pass)
            dl = loader(
                kinodb_dataset(case, **options),
                case,
                samplers[name],
                workers,
                kino=True,
                prefetch=args.prefetch_factor,
            )  # type: ignore[arg-type]
            jobs[name] = (Row(case.name, workers, name, n_threads if images else None), partial(drain, dl))
        lerobot = (_peers.LeRobotWindows if peers["lerobot"] else _peers.ParquetVideoWindows)(
            case.paths.lerobot, case.windows
        )
        robomimic = (_peers.RobomimicWindows if peers["robomimic"] else _peers.H5SequenceWindows)(
            case.paths.hdf5, case.windows
        )
        for name, ds in ((lerobot_name, lerobot), (robomimic_name, robomimic)):
            samplers[name] = PassOrder(order, first_pass)
            dl = loader(ds, case, samplers[name], workers, kino=False, prefetch=args.prefetch_factor)
            jobs[name] = (Row(case.name, workers, name), partial(drain, dl))
        for name, (_, fn) in jobs.items():
            first[name] = next(iter(fn.args[0]))  # type: ignore[attr-defined]
        if not images:  # the ceiling: torch's DataLoader with a dataset that does nothing
            samplers[NOOP] = PassOrder(order, first_pass)
            noop = NoOpWindows(first["kinodb"], len(order))
            dl = loader(noop, case, samplers[NOOP], workers, kino=True, prefetch=args.prefetch_factor)
            jobs[NOOP] = (Row(case.name, workers, NOOP), partial(drain, dl))
            first[NOOP] = next(iter(dl))
        if images:
            for n in sorted({1, threads}) if workers == 0 else [threads]:
                fn = floors.setdefault(n, decode_floor(blobs, IMAGE_SIZE, n))
                jobs[floor_name(n)] = (
                    Row(case.name, workers, floor_name(n), n),
                    lambda fn=fn: round(fn() / per_window),
                )
        problems = first_batch_check(first, "kinodb")
        if problems:
            raise SystemExit("the loaders disagree on the windows:\n  " + "\n  ".join(problems))
        names = list(jobs)
        for rep in range(args.repeats + 1):  # pass 0 warms up (workers, page cache, lazy opens)
            shift = rep % len(names)
            for name in names[shift:] + names[:shift]:
                row, fn = jobs[name]
                rate = timed(fn, args.min_seconds if rep else 0.0)
                if rep:
                    row.passes.append(rate)
                elif name in samplers:
                    samplers[name].size_for(rate, args.min_seconds, case.batch_size)
            print(
                f"  {case.name} workers={workers} pass {rep}/{args.repeats} done", file=sys.stderr, flush=True
            )
        rows += [row for row, _ in jobs.values()]
        if isinstance(robomimic, _peers.RobomimicWindows):
            robomimic.close()
        del jobs, first  # ends the persistent workers
    return rows


# -- report ------------------------------------------------------------------------------------


def reference(row: Row, rows: list[Row]) -> Row | None:
    """The kinodb row a peer row is compared with: for the decode floor, kinodb's uint8 frames
    on the same number of decode threads (the same work); for the peers, kinodb's float frames
    (the same tensors they return)."""
    if row.loader.startswith("kinodb"):
        return None
    same = [r for r in rows if r.case == row.case and r.workers == row.workers]
    if row.loader.startswith("bare decode"):
        return next(
            (r for r in same if r.loader.startswith("kinodb uint8") and r.threads == row.threads), None
        )
    return next((r for r in same if r.loader == "kinodb"), None)


def ratios(rows: list[Row]) -> list[dict[str, Any]]:
    """kinodb's windows/s over each other loader's, per (case, workers)."""
    out = []
    for row in rows:
        ref = reference(row, rows)
        if ref is not None:
            out.append({"case": row.case, "num_workers": row.workers, "kinodb": ref.loader, "peer": row.loader,
                        "ratio": ref.median / row.median})  # fmt: skip
    return out


def verdicts(table: list[dict[str, Any]]) -> dict[str, bool]:
    """The targets: state-only >= 20x both peers; images >= 3x LeRobot and >= 0.8x the decode floor."""
    out = {}
    for r in table:
        label = f"{r['case']}, num_workers={r['num_workers']}: {r['kinodb']} vs {r['peer']}"
        if r["peer"] == NOOP:
            continue  # a reference, not a peer
        if r["case"] == "state":
            target = TARGETS["state_vs_peers"]
        elif r["peer"].startswith("lerobot"):
            target = TARGETS["images_vs_lerobot"]
        elif r["peer"].startswith("bare decode"):
            target = TARGETS["images_vs_floor"]
        else:
            continue
        out[f"{label} >= {target}x"] = r["ratio"] >= target
    return out


def render(rows: list[Row]) -> str:
    """The table: windows/s per loader, and kinodb's ratio over each peer (see `reference`)."""
    lines = [f"{'case':<7} {'workers':>7}  {'loader':<32} {'windows/s':>11}  {'kinodb is':>10}  passes"]
    for row in rows:
        ref = reference(row, rows)
        ratio = f"{ref.median / row.median:.2f}x" if ref is not None else "-"
        spread = ", ".join(f"{p:.0f}" for p in row.passes)
        lines.append(
            f"{row.case:<7} {row.workers:>7}  {row.loader:<32} {row.median:>11,.0f}  {ratio:>10}  {spread}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick", action="store_true", help="small sets, fewer windows and passes (1-2 minutes)"
    )
    parser.add_argument(
        "--data-dir", type=Path, default=_data.DEFAULT_DATA_DIR, help="where generated data is cached"
    )
    parser.add_argument(
        "--video-codec", choices=("h264", "av1"), default="h264", help="the LeRobot form's video codec"
    )
    parser.add_argument("--workers", default="0,2", help="num_workers values, comma-separated")
    parser.add_argument("--repeats", type=int, default=None, help="timed passes (after one warm-up)")
    parser.add_argument("--min-seconds", type=float, default=None, help="shortest timed pass")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--torch-threads",
        type=int,
        default=1,
        help="torch intra-op threads in the main process (workers always use 1)",
    )
    parser.add_argument("--only", choices=("state", "images"), default=None)
    parser.add_argument(
        "--prefetch-factor",
        type=int,
        default=None,
        help="DataLoader prefetch_factor for every loader with workers (default: torch's, 2; the targets "
        "are judged at the default)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="results JSON (default: benchmarks/results/dataloader.json, dataloader_quick.json with --quick)",
    )
    args = parser.parse_args(argv)
    # A smoke run never replaces the recorded full run.
    args.out = args.out or HERE / "results" / f"dataloader{'_quick' if args.quick else ''}.json"
    args.repeats = args.repeats or (2 if args.quick else 3)
    args.min_seconds = args.min_seconds if args.min_seconds is not None else (0.3 if args.quick else 1.0)
    workers_list = [int(w) for w in args.workers.split(",")]
    # One intra-op thread: the loaders' own work is measured, not OpenMP spinning on shared
    # cores (DataLoader workers run with one thread anyway).
    torch.set_num_threads(args.torch_threads)
    t0 = time.perf_counter()

    peers = _peers.available()
    for name, version in peers.items():
        if version is None:
            print(
                f"note: {name} is not importable here; measuring its stand-in (see benchmarks/setup_peers.sh)"
            )
    state_set, image_set = _data.dataloader_sets(
        args.data_dir, quick=args.quick, video_codec=args.video_codec
    )
    cases = [
        Case("state", state_set, _peers.Windows(OBS_HORIZON, ACTION_HORIZON), 256, 1024 if args.quick else None),
        Case("images", image_set, _peers.Windows(OBS_HORIZON, ACTION_HORIZON, _data.DATALOADER_CAMERAS, IMAGE_SIZE),
             64, 128 if args.quick else 512),
    ]  # fmt: skip
    rows: list[Row] = []
    for case in cases:
        if args.only and case.name != args.only:
            continue
        rows += run_case(case, workers_list, args, peers)
    table = ratios(rows)
    checks = verdicts(table)
    print()
    print(render(rows))
    print()
    for name, ok in checks.items():
        print(f"{'PASS' if ok else 'MISS'}  {name}")
    if args.prefetch_factor is not None:
        print(f"note: every loader ran with prefetch_factor={args.prefetch_factor}; the targets are judged at "
              "torch's default (2)")  # fmt: skip
    result = {
        "benchmark": "dataloader",
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "quick": args.quick,
        "windows": {
            "obs_horizon": OBS_HORIZON,
            "action_horizon": ACTION_HORIZON,
            "image_size": IMAGE_SIZE,
            "cameras": list(_data.DATALOADER_CAMERAS),
            "stored": f"224x224 JPEG (kinodb), raw uint8 (HDF5), {args.video_codec} mp4 (LeRobot)",
        },
        "cases": {
            c.name: {
                "batch_size": c.batch_size,
                "windows_per_pass": c.n_windows
                or "an epoch (all windows), 4096 for loaders too slow for one",
                "frames": kinodb.open(c.paths.kdb).num_frames(),
                "episodes": c.paths.spec.episodes,
                "data": str(c.paths.root),
            }
            for c in cases
        },
        "repeats": args.repeats,
        "min_seconds": args.min_seconds,
        "rows": [
            {
                "case": r.case,
                "num_workers": r.workers,
                "loader": r.loader,
                "decode_threads": r.threads,
                "windows_per_s": r.median,
                "passes": r.passes,
            }
            for r in rows
        ],
        "kinodb_ratios": table,
        "torch_threads": args.torch_threads,
        "prefetch_factor": args.prefetch_factor,
        "targets": checks,
        "versions": {
            "kinodb": kinodb.__version__,
            "torch": torch.__version__,
            **peers,
            "python": platform.python_version(),
        },
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
        "seconds": round(time.perf_counter() - t0, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"\nwrote {args.out} ({result['seconds']} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
