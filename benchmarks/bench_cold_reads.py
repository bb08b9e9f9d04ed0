#!/usr/bin/env python
"""Cold page cache random reads: maps advised random (as kinodb's datasets advise them)
against the default read-ahead, in bytes read from disk and time.

A page fault on a cold page of a default map reads the read-ahead window around it
(``/sys/block/*/queue/read_ahead_kb``, often megabytes); random frame windows need a few
kilobytes each. The frame datasets and the server advise their maps random
(``Database._advise_random``); the "default" variant here turns that advice off, as
kinodb read before. Before every cold run the maps are closed and the file is dropped
from the page cache (``posix_fadvise(POSIX_FADV_DONTNEED)`` on that file alone; ``mincore``
checks that it left). Bytes are the process's ``read_bytes`` in ``/proc/self/io``.

Measured, variants interleaved, medians of ``--repeats``:

- random windows through ``KinoFrameDataset.__getitems__`` on a file of 64x64 JPEG
  frames: a sparse read (one batch of 32 windows: what each batch costs on a file much
  larger than the page cache) and a dense one (5 batches of 256: on this small file,
  the default's read-ahead ends up reading most of the file, and later faults hit it);
- the first use of a large index (50,000 episodes, a ~9 MB index block): opening a
  ``KinoFrameDataset``, which verifies the index checksum in one pass and reads the
  index columns; advised is the payload range only, "whole map" advises the index too;
- whole episodes through ``KinoMapDataset`` (arrays only, and with every frame of the
  camera decoded): reads that are sequential within an episode;
- random windows on a warm page cache (advice should not matter there).

Linux only. Files go to ``--dir`` (default ``/tmp/bench_cold``) and are deleted at the
end unless ``--keep``. Run ``python benchmarks/bench_cold_reads.py`` (``--quick`` for a
smoke run).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import ctypes.util
import gc
import io
import json
import mmap
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
from PIL import Image

import kinodb
from kinodb.kdb.reader import Database
from kinodb.torch import KinoFrameDataset, KinoMapDataset

_libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
MiB = 1 << 20


# -- files -------------------------------------------------------------------------------------


def build_images(path: Path, episodes: int, frames: int) -> None:
    """Episodes of ``frames`` frames: state 14, action 7, one 64x64 JPEG camera (noise, ~3 KB)."""
    rng = np.random.default_rng(0)
    jpegs = []
    for _ in range(16):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, "JPEG", quality=75)
        jpegs.append(buf.getvalue())
    shots = [jpegs[t % 16] for t in range(frames)]
    with kinodb.Writer(path, mode="w") as w:
        for i in range(episodes):
            actions = rng.standard_normal((frames, 7)).astype(np.float32)
            states = rng.standard_normal((frames, 14)).astype(np.float32)
            w.add_episode(actions=actions, states=states, images={"front": shots}, embodiment="franka",
                          task=f"task {i % 30}")  # fmt: skip


def build_index(path: Path, episodes: int) -> None:
    """Many short state-only episodes: an index block of ~190 bytes per episode."""
    rng = np.random.default_rng(1)
    actions = rng.standard_normal((4, 7)).astype(np.float32)
    states = rng.standard_normal((4, 14)).astype(np.float32)
    with kinodb.Writer(path, mode="w") as w:
        for i in range(episodes):
            w.add_episode(actions=actions, states=states, embodiment="franka", task=f"task {i % 30}")


# -- the page cache ----------------------------------------------------------------------------


def read_bytes() -> int:
    """Bytes this process has read from storage so far."""
    with open("/proc/self/io") as fh:
        for line in fh:
            if line.startswith("read_bytes:"):
                return int(line.split()[1])
    raise RuntimeError("/proc/self/io has no read_bytes")


def resident(path: Path) -> float:
    """The fraction of ``path``'s pages in the page cache (``mincore`` over a fresh map)."""
    size = path.stat().st_size
    with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        pages = (size + mmap.PAGESIZE - 1) // mmap.PAGESIZE
        vec = (ctypes.c_ubyte * pages)()
        buf = np.frombuffer(mm, np.uint8)
        addr = buf.__array_interface__["data"][0]
        if _libc.mincore(ctypes.c_void_p(addr), ctypes.c_size_t(size), vec) != 0:
            raise OSError(ctypes.get_errno(), "mincore failed")
        del buf
        return float(np.frombuffer(vec, np.uint8).astype(bool).mean())


def evict(path: Path) -> None:
    """Drop ``path`` from the page cache (its maps must be closed first), and check that it left."""
    gc.collect()
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    left = resident(path)
    if left > 0.01:
        raise RuntimeError(f"{path}: {left:.1%} of its pages stayed in the page cache (still mapped?)")


def warm(path: Path) -> None:
    with open(path, "rb") as fh:
        while fh.read(64 * MiB):
            pass


@contextlib.contextmanager
def variant(name: str) -> Iterator[None]:
    """kinodb as it reads now ("advised"), without the advice ("default"), or advising the
    whole map, index block included ("whole map")."""
    if name == "advised":
        yield
        return

    def whole(self: Database) -> bool:
        if self._mm is None:
            return False
        self._mm.madvise(mmap.MADV_RANDOM)
        return True

    with mock.patch.object(Database, "_advise_random", (lambda self: False) if name == "default" else whole):
        yield


def close_all(sources: Any) -> None:
    for source in sources:
        source.db.close()


# -- measurements ------------------------------------------------------------------------------


def measured(fn: Callable[[], object]) -> tuple[float, float]:
    """Seconds ``fn`` took, and MiB this process read from storage meanwhile."""
    b0, t0 = read_bytes(), time.perf_counter()
    fn()
    return time.perf_counter() - t0, (read_bytes() - b0) / MiB


def cold(
    path: Path, names: tuple[str, ...], repeats: int, run: Callable[[], tuple[float, float]]
) -> dict[str, Any]:
    """``run`` (which returns what it measured) under each variant on a cold cache, interleaved."""
    out: dict[str, dict[str, list[float]]] = {n: {"seconds": [], "MiB": []} for n in names}
    for r in range(repeats):
        for name in names if r % 2 == 0 else names[::-1]:
            evict(path)
            with variant(name):
                dt, mb = run()
            out[name]["seconds"].append(dt)
            out[name]["MiB"].append(mb)
    return {n: {**v, "median_seconds": statistics.median(v["seconds"]), "median_MiB": statistics.median(v["MiB"])}
            for n, v in out.items()}  # fmt: skip


def cold_windows(path: Path, batches: int, batch: int, repeats: int) -> dict[str, Any]:
    """Random windows on a cold cache: the reads alone (the dataset is opened first, on the
    same cold cache, and its opening is not counted)."""
    seeds = iter(range(1 << 30))

    def run() -> tuple[float, float]:
        ds = KinoFrameDataset(path, obs_horizon=2, action_horizon=16, image_key="front", decode_threads=1,
                              to_tensor=False)  # fmt: skip
        rng = np.random.default_rng(next(seeds) // 2)  # both variants of a repeat read the same windows

        def read() -> None:
            for _ in range(batches):
                ds.__getitems__(rng.integers(0, len(ds), batch).tolist())

        got = measured(read)
        close_all(ds.windows._sources)
        return got

    needed = batches * batch * 2 * frame_bytes(path)
    return {"batches": batches, "batch": batch, "jpeg_MiB_needed": needed / MiB,
            **cold(path, ("default", "advised"), repeats, run)}  # fmt: skip


def frame_bytes(path: Path) -> float:
    with kinodb.open(path) as db:
        cam = db._episode_cameras(0)["front"]
        return float(cam.frame_offsets[-1]) / len(cam.frame_offsets[:-1])


def index_open(path: Path, repeats: int) -> dict[str, Any]:
    """Opening a dataset over a large index on a cold cache (its checksum, its columns)."""
    opened: list[Any] = []

    def run() -> tuple[float, float]:
        got = measured(lambda: opened.append(KinoFrameDataset(path, image_key=False, to_tensor=False)))
        close_all(opened.pop().windows._sources)
        return got

    return cold(path, ("default", "advised", "whole map"), repeats, run)


def map_episodes(path: Path, episodes: int, images: bool, repeats: int) -> dict[str, Any]:
    """Random whole episodes through KinoMapDataset on a cold cache (opened first, not counted)."""

    def run() -> tuple[float, float]:
        ds = KinoMapDataset(path, image_key="front" if images else False, decode_threads=1, to_tensor=False)
        picks = np.random.default_rng(2).integers(0, len(ds), episodes).tolist()
        got = measured(lambda: [ds[i] for i in picks])
        close_all(ds._open()[0])
        return got

    return {"episodes": episodes, "images": images, **cold(path, ("default", "advised"), repeats, run)}


def warm_windows(path: Path, batches: int, batch: int, repeats: int) -> dict[str, Any]:
    """Random windows on a warm cache: median seconds per batch, variants interleaved."""
    warm(path)
    out: dict[str, list[float]] = {"default": [], "advised": []}
    datasets = {}
    for name in out:
        with variant(name):
            datasets[name] = KinoFrameDataset(path, obs_horizon=2, action_horizon=16, image_key="front",
                                              decode_threads=1, to_tensor=False)  # fmt: skip
    rng = np.random.default_rng(3)
    for r in range(repeats * batches):
        idx = rng.integers(0, len(datasets["default"]), batch).tolist()
        for name in ("default", "advised") if r % 2 == 0 else ("advised", "default"):
            t0 = time.perf_counter()
            datasets[name].__getitems__(idx)
            out[name].append(time.perf_counter() - t0)
    for ds in datasets.values():
        close_all(ds.windows._sources)
    return {"batches": len(out["default"]), "batch": batch,
            **{n: {"median_seconds": statistics.median(v)} for n, v in out.items()}}  # fmt: skip


# -- report ------------------------------------------------------------------------------------


def line(what: str, res: dict[str, Any], names: tuple[str, ...] = ("default", "advised")) -> str:
    parts = [f"{n} {res[n]['median_MiB']:8.1f} MiB {res[n]['median_seconds'] * 1e3:8.1f} ms" for n in names]
    base = res["default"]
    ratios = [
        f"{n}: {base['median_MiB'] / max(res[n]['median_MiB'], 1e-9):.1f}x fewer bytes, "
        f"{base['median_seconds'] / res[n]['median_seconds']:.2f}x speed"
        for n in names[1:]
    ]
    return f"{what:34s} " + " | ".join(parts) + "  (" + "; ".join(ratios) + ")"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dir", type=Path, default=Path("/tmp/bench_cold"))
    parser.add_argument("--episodes", type=int, default=400, help="episodes of the image file (default 400)")
    parser.add_argument("--frames", type=int, default=500, help="frames per episode (default 500)")
    parser.add_argument("--index-episodes", type=int, default=50_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--keep", action="store_true", help="keep the generated files")
    parser.add_argument(
        "--out", default=None, help="results JSON (default: benchmarks/results/cold_reads.json)"
    )
    parser.add_argument("--quick", action="store_true", help="tiny smoke run")
    args = parser.parse_args()
    if not hasattr(os, "posix_fadvise") or not Path("/proc/self/io").exists():
        raise SystemExit("this benchmark needs Linux (posix_fadvise, /proc/self/io)")
    args.out = args.out or f"benchmarks/results/cold_reads{'_quick' if args.quick else ''}.json"
    if args.quick:
        args.episodes, args.frames, args.index_episodes, args.repeats = 40, 200, 5_000, 1
    args.dir.mkdir(parents=True, exist_ok=True)
    images, index = args.dir / "cold_images.kdb", args.dir / "cold_index.kdb"
    try:
        t0 = time.perf_counter()
        build_images(images, args.episodes, args.frames)
        build_index(index, args.index_episodes)
        print(f"built {images} ({images.stat().st_size / MiB:.0f} MiB) and {index} "
              f"({index.stat().st_size / MiB:.0f} MiB) in {time.perf_counter() - t0:.1f} s")  # fmt: skip
        with kinodb.open(index) as db:
            index_mib = db._commit.index_length / MiB
        result: dict[str, Any] = {
            "quick": args.quick, "episodes": args.episodes, "frames": args.frames,
            "image_file_bytes": images.stat().st_size, "index_episodes": args.index_episodes,
            "index_block_MiB": index_mib, "repeats": args.repeats,
            "read_ahead_kb": {p.parent.parent.name: int(p.read_text()) for p in Path("/sys/block").glob("*/queue/read_ahead_kb")},
        }  # fmt: skip
        sparse = cold_windows(images, 1, 32, args.repeats)
        print(line("cold windows, 1 batch x 32", sparse))
        dense = cold_windows(images, 5, 256, args.repeats)
        print(line("cold windows, 5 batches x 256", dense))
        print(f"{'':34s} (JPEG frames needed: {dense['jpeg_MiB_needed']:.1f} MiB)")
        opened = index_open(index, args.repeats)
        print(
            line(f"cold first index use ({index_mib:.1f} MiB)", opened, ("default", "advised", "whole map"))
        )
        lowdim = map_episodes(images, 30, False, args.repeats)
        print(line("cold KinoMapDataset, 30 ep. arrays", lowdim))
        full = map_episodes(images, 10, True, args.repeats)
        print(line("cold KinoMapDataset, 10 ep. + frames", full))
        hot = warm_windows(images, 20, 256, args.repeats)
        d, a = hot["default"]["median_seconds"], hot["advised"]["median_seconds"]
        print(f"{'warm windows, batches of 256':34s} default {d * 1e3:8.2f} ms | advised {a * 1e3:8.2f} ms "
              f"per batch  (advised/default {a / d:.3f})")  # fmt: skip
        result.update(cold_windows_sparse=sparse, cold_windows_dense=dense, cold_index_open=opened,
                      cold_map_arrays=lowdim, cold_map_frames=full, warm_windows=hot,
                      python=platform.python_version(), kinodb=kinodb.__version__, machine=platform.machine(),
                      cpus=os.cpu_count())  # fmt: skip
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2))
        print(f"wrote {args.out}")
    finally:
        if not args.keep:
            for path in (images, index):
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()


if __name__ == "__main__":
    main()
