"""A quick synthetic benchmark behind ``kino bench``: ``.kdb`` beside robomimic-layout HDF5.

Both formats get the same synthetic episodes (`kinodb.synthetic`) and run in the same
process, in the same run, in a fresh temporary directory that is removed afterwards:

* write: `Writer` (raw images) against one h5py group per demo (contiguous, uncompressed).
* open: ``kinodb.open`` against ``h5py.File`` plus listing ``data/``.
* seq_read: actions and states of every episode, copied into one buffer per array.
* random_read: the actions of seeded random episodes.
* meta_scan: count successful ``franka`` episodes (metadata table against per-demo attrs).
* kql: a three-condition KQL query against the same filter over HDF5 attrs.
* windows: batches of frame windows (2 states of history, 16 actions ahead, edge
  padding) from `kinodb.windows.FrameWindows.lowdim` against robomimic's
  ``SequenceDataset`` access pattern: per sample, slices of each ``obs/`` key and of
  ``actions``, padded by repeating the edge frame, then stacked.
* image_read (``--images``): every frame of one camera, per episode.

Each figure is the median of ``repeats`` timed calls (``time.perf_counter``, garbage
collector paused), each on a freshly opened handle; the format that runs first alternates.
Results of both formats are compared (counts, arrays), so a faster wrong answer shows; the
frames of ``image_read`` are compared pixel for pixel in an untimed pass afterwards.

The episodes are generated in memory before anything is timed, so a run needs memory and
temporary-directory space in proportion to its size: `run_bench` estimates both and refuses
a size that does not fit before it generates anything.
"""

from __future__ import annotations

import contextlib
import gc
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import numpy as np

from kinodb import synthetic
from kinodb._optional import require
from kinodb.errors import MissingExtraError
from kinodb.kdb.reader import Database, open_database
from kinodb.kdb.writer import Writer

__all__ = ["BenchConfig", "run_bench"]

KQL = "embodiment = 'franka' AND success = true AND scene = 'lab'"
OBS_KEYS = tuple((f"robot0_{name}", a, b) for name, (a, b) in synthetic.STATE_COMPONENTS.items())
IMAGE_POOL = 8  # distinct image stacks, reused round-robin, so --images stays small in memory
CAMERA = "front"
CAMERAS, IMAGE_BYTES = 2, 64 * 64 * 3  # synthetic.episodes(images=True): two 64x64 RGB cameras

# Bytes per frame, per episode and per file, measured on runs of this module (peak resident
# memory, file sizes) and rounded up: what the in-memory episodes, the copied read results,
# the index, the headers and the h5py objects cost. Page-cache pages are not counted.
_MEMORY = {"frame": 288, "episode": 2048, "file": 0}
_MEMORY_H5PY = {"frame": 160, "episode": 14 * 1024, "file": 0}
_DISK_KDB = {"frame": 104, "episode": 2048, "file": 64 * 1024}
_DISK_H5PY = {"frame": 160, "episode": 6 * 1024, "file": 64 * 1024}

OPS = {
    "write": "write every episode to a new file",
    "open": "open the file",
    "seq_read": "actions + states of every episode into one buffer",
    "random_read": "actions of {draws}",
    "meta_scan": "count success and embodiment = franka",
    "kql": "KQL query (h5py: the same filter over attrs)",
    "windows": "{windows} ({states}, {actions}), {batch} per batch",
    "image_read": f"every {CAMERA} frame of every episode",
}


@dataclass(frozen=True, slots=True)
class BenchConfig:
    """What to measure: dataset size, images, repeats and sampling sizes."""

    episodes: int = 500
    frames: int = 50
    images: bool = False
    repeats: int = 5
    seed: int = 0
    draws: int = 1000
    batch: int = 256
    batches: int = 8
    obs_horizon: int = 2
    action_horizon: int = 16

    def check(self) -> None:
        """Raise ValueError on sizes that cannot run."""
        for name in ("episodes", "frames", "repeats", "draws", "batch", "batches"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {self.seed}")

    def estimate(self, *, peer: bool) -> dict[str, int]:
        """Estimated peak ``memory`` and temporary-directory ``disk`` bytes of a run.

        ``peer``: whether the HDF5 file is written and read too.
        """
        n, T = self.episodes, self.frames
        images = CAMERAS * IMAGE_BYTES * T if self.images else 0  # one episode's stacks

        def cost(per: dict[str, int]) -> int:
            return n * (T * per["frame"] + per["episode"]) + per["file"]

        # The image pool, plus the frames an image read holds for each format at once.
        memory = cost(_MEMORY) + images * (min(IMAGE_POOL, n) + (2 if peer else 1))
        disk = cost(_DISK_KDB) + n * images
        if peer:
            memory += cost(_MEMORY_H5PY)
            disk += cost(_DISK_H5PY) + n * images
        return {"memory": memory, "disk": disk}


@dataclass
class _Data:
    """The episodes both formats store, held in memory so generation is never timed."""

    episodes: list[dict[str, Any]]
    pool: list[dict[str, np.ndarray]] = field(default_factory=list)

    def images(self, i: int) -> dict[str, np.ndarray] | None:
        return self.pool[i % len(self.pool)] if self.pool else None


def run_bench(config: BenchConfig, *, peer: bool = True) -> dict[str, Any]:
    """Run every operation; return ``{"config", "peer", "rows", "sizes", "checks"}``.

    ``rows`` holds, per operation, the median seconds of ``kdb`` and ``h5py`` (None when
    h5py is not installed or ``peer`` is False) and their ratio ``h5py / kdb``.

    Raises:
        ValueError: a size in ``config`` is below 1, or the run would need more memory or
            temporary-directory space than is available.
    """
    config.check()
    h5py, why = _peer() if peer else (None, "not requested")
    check_room(config, peer=h5py is not None)
    data = _make_data(config)
    rows: dict[str, dict[str, float | None]] = {}
    checks: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="kino-bench-") as tmp:
        kdb, h5 = os.path.join(tmp, "bench.kdb"), os.path.join(tmp, "bench.hdf5")
        rows["write"] = _measure(config, _write_kdb(kdb, data), _write_h5(h5py, h5, data))[0]
        sizes = {"kdb": os.path.getsize(kdb), "h5py": os.path.getsize(h5) if h5py else None}
        for name, op in _READS.items():
            if name == "image_read" and not config.images:
                continue
            kdb_op, h5_op = op(config, kdb, h5py, h5)
            rows[name], results = _measure(config, kdb_op, h5_op)
            # Every pixel compared inside the timed read would distort it: it runs afterwards, untimed.
            checks[name] = _same_frames(config, kdb, h5py, h5) if name == "image_read" else _compare(results)
    out_rows = [
        {"op": name, "what": _what(name, config), **times, "ratio": _ratio(times)}
        for name, times in rows.items()
    ]
    return {
        "config": {k: getattr(config, k) for k in config.__slots__},
        "peer": {"name": "h5py", "version": getattr(h5py, "__version__", None), "missing": why},
        "rows": out_rows,
        "sizes": sizes,
        "checks": checks,
    }


# -- room -----------------------------------------------------------------------------------


def check_room(config: BenchConfig, *, peer: bool, tmpdir: str | None = None) -> None:
    """Refuse a run whose estimated memory or temporary-directory space is not available.

    Memory is compared with ``MemAvailable`` of ``/proc/meminfo`` where the system has it;
    space with the free space of ``tmpdir`` (default: `tempfile.gettempdir`).

    Raises:
        ValueError: the estimate of either is larger than what is available.
    """
    need = config.estimate(peer=peer)
    tmpdir = tmpdir or tempfile.gettempdir()
    have = {"memory": available_memory(), "disk": _free_space(tmpdir)}
    where = {
        "memory": ("memory", "is available (MemAvailable)", ""),
        "disk": (f"space in {tmpdir}", "is free there", ", or set TMPDIR to a larger disk"),
    }
    for what, (room, free_text, fix) in where.items():
        free = have[what]
        if free is not None and need[what] > free:
            raise ValueError(
                f"{_count(config.episodes, 'episode')} x {_count(config.frames, 'frame')} would need "
                f"about {_bytes(need[what])} of {room}; {_bytes(free)} {free_text}; pass a smaller "
                f"-n or --frames{fix}"
            )


def available_memory() -> int | None:
    """Bytes of memory available without swapping (``MemAvailable``), or None where unknown."""
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024  # the value is in kB
    except (OSError, ValueError, IndexError):
        pass
    return None


def _free_space(path: str) -> int | None:
    try:
        st = os.statvfs(path)
    except (OSError, AttributeError):  # no statvfs on Windows
        return None
    return st.f_bavail * st.f_frsize


def _bytes(n: int) -> str:
    size = float(n)
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if size < 1024:
            return f"{n} bytes" if unit == "bytes" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:,.1f} EiB" if size < 1e6 else f"{size:.1e} EiB"


def _count(n: int, word: str) -> str:
    return f"{n:,} {word}" if n == 1 else f"{n:,} {word}s"


# -- timing -------------------------------------------------------------------------------

# An operation: (open a handle, run on it and return a comparable result, close the handle).
Op = tuple[Callable[[], Any], Callable[[Any], Any], Callable[[Any], None]]


def _measure(config: BenchConfig, kdb: Op, h5: Op | None) -> tuple[dict[str, float | None], dict[str, Any]]:
    """Median seconds of each format's run over ``repeats``; the last result of each."""
    ops = {"kdb": kdb, "h5py": h5}
    times: dict[str, list[float]] = {"kdb": [], "h5py": []}
    results: dict[str, Any] = {}
    for r in range(config.repeats):
        order = ("kdb", "h5py") if r % 2 == 0 else ("h5py", "kdb")
        for name in order:
            op = ops[name]
            if op is None:
                continue
            setup, run, close = op
            results.pop(name, None)  # the previous result: never hold two copies of a big one
            handle = setup()
            gc.collect()
            gc.disable()
            try:
                t0 = time.perf_counter()
                results[name] = run(handle)
                times[name].append(time.perf_counter() - t0)
            finally:
                gc.enable()
                close(handle)
    return {k: statistics.median(v) if v else None for k, v in times.items()}, results


def _compare(results: dict[str, Any]) -> dict[str, Any]:
    """The ``.kdb`` result (summarised) and whether h5py's equals it (None without h5py)."""
    kdb, h5 = results.get("kdb"), results.get("h5py")
    equal: bool | None = None
    if h5 is not None:
        if isinstance(kdb, dict):
            equal = kdb.keys() == h5.keys() and all(np.array_equal(kdb[k], h5[k]) for k in kdb)
        else:
            equal = bool(np.array_equal(np.asarray(kdb), np.asarray(h5)))
    return {"equal": equal, "kdb": _summary(kdb)}


def _summary(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _summary(v) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        return {"shape": list(value.shape), "sum": float(value.astype(np.float64).sum())}
    return value


def _ratio(times: dict[str, float | None]) -> float | None:
    kdb, h5 = times.get("kdb"), times.get("h5py")
    return None if kdb is None or h5 is None or kdb <= 0 else h5 / kdb


def _what(name: str, config: BenchConfig) -> str:
    return OPS[name].format(
        draws=_count(config.draws, "seeded random episode"),
        windows=_count(config.batch * config.batches, "window"),
        states=_count(config.obs_horizon, "state"),
        actions=_count(config.action_horizon, "action"),
        batch=config.batch,
    )


def _peer() -> tuple[ModuleType | None, str | None]:
    try:
        return require("h5py", extra="hdf5"), None
    except MissingExtraError as exc:
        return None, str(exc)


def _none(handle: Any) -> None:
    return None


# -- data and writes ----------------------------------------------------------------------


def _make_data(config: BenchConfig) -> _Data:
    eps = list(synthetic.episodes(config.episodes, config.frames, seed=config.seed))
    pool = []
    if config.images:
        for ep in synthetic.episodes(
            min(IMAGE_POOL, config.episodes), config.frames, images=True, seed=config.seed
        ):
            pool.append(ep["images"])
    return _Data(eps, pool)


def _write_kdb(path: str, data: _Data) -> Op:
    schema = {
        "states": {"components": synthetic.STATE_COMPONENTS},
        "actions": {"components": synthetic.ACTION_COMPONENTS},
    }

    def run(_: Any) -> int:
        with Writer(path, mode="w", image_codec="raw", schema=schema, source_format="synthetic") as w:
            for i, ep in enumerate(data.episodes):
                w.add_episode(**ep, images=data.images(i))
        return len(data.episodes)

    return (lambda: None), run, _none


def _write_h5(h5py: ModuleType | None, path: str, data: _Data) -> Op | None:
    if h5py is None:
        return None

    def run(_: Any) -> int:
        with h5py.File(path, "w") as f:
            grp = f.create_group("data")
            total = 0
            for i, ep in enumerate(data.episodes):
                g = grp.create_group(f"demo_{i}")
                states, T = ep["states"], len(ep["actions"])
                g.create_dataset("actions", data=ep["actions"])
                g.create_dataset("states", data=states)
                g.create_dataset("rewards", data=ep["rewards"])
                dones = np.zeros(T, np.uint8)
                dones[-1] = 1
                g.create_dataset("dones", data=dones)
                obs = g.create_group("obs")
                for key, a, b in OBS_KEYS:
                    obs.create_dataset(key, data=states[:, a:b])
                for cam, frames in (data.images(i) or {}).items():
                    obs.create_dataset(f"{cam}_image", data=frames)
                g.attrs["num_samples"] = T
                g.attrs["embodiment"] = ep["embodiment"]
                g.attrs["task"] = ep["task"]
                g.attrs["success"] = -1 if ep["success"] is None else int(ep["success"])
                g.attrs["scene"] = ep["extra"]["scene"]
                total += T
            grp.attrs["total"] = total
        return len(data.episodes)

    return (lambda: None), run, _none


# -- reads --------------------------------------------------------------------------------


def _open(config: BenchConfig, kdb: str, h5py: ModuleType | None, h5: str) -> tuple[Op, Op | None]:
    def kdb_run(_: Any) -> int:
        with open_database(kdb) as db:
            return len(db)

    def h5_run(_: Any) -> int:
        with h5py.File(h5, "r") as f:  # type: ignore[union-attr]  # only called with h5py
            return len(list(f["data"].keys()))

    return ((lambda: None), kdb_run, _none), (((lambda: None), h5_run, _none) if h5py else None)


def _seq(config: BenchConfig, kdb: str, h5py: ModuleType | None, h5: str) -> tuple[Op, Op | None]:
    n, T = config.episodes, config.frames

    def kdb_run(db: Database) -> dict[str, np.ndarray]:
        acts, states = (
            np.empty((n * T, synthetic.ACTION_DIM), np.float32),
            np.empty((n * T, synthetic.STATE_DIM), np.float32),
        )
        for i in range(n):
            acts[i * T : (i + 1) * T] = db.read_array(i, "actions")
            states[i * T : (i + 1) * T] = db.read_array(i, "states")
        return {"actions": acts, "states": states}

    def h5_run(f: Any) -> dict[str, np.ndarray]:
        acts, states = (
            np.empty((n * T, synthetic.ACTION_DIM), np.float32),
            np.empty((n * T, synthetic.STATE_DIM), np.float32),
        )
        data = f["data"]
        for i in range(n):
            g = data[f"demo_{i}"]
            acts[i * T : (i + 1) * T] = g["actions"][()]
            states[i * T : (i + 1) * T] = g["states"][()]
        return {"actions": acts, "states": states}

    return _with_kdb(kdb, kdb_run), _with_h5(h5py, h5, h5_run)


def _random(config: BenchConfig, kdb: str, h5py: ModuleType | None, h5: str) -> tuple[Op, Op | None]:
    draws = np.random.default_rng(config.seed + 1).integers(0, config.episodes, config.draws).tolist()
    shape = (config.frames, synthetic.ACTION_DIM)

    def kdb_run(db: Database) -> np.ndarray:
        buf, acc = np.empty(shape, np.float32), np.zeros(shape, np.float64)
        for i in draws:
            buf[...] = db.read_array(i, "actions")
            acc += buf
        return acc

    def h5_run(f: Any) -> np.ndarray:
        buf, acc = np.empty(shape, np.float32), np.zeros(shape, np.float64)
        data = f["data"]
        for i in draws:
            buf[...] = data[f"demo_{i}"]["actions"][()]
            acc += buf
        return acc

    return _with_kdb(kdb, kdb_run), _with_h5(h5py, h5, h5_run)


def _meta(config: BenchConfig, kdb: str, h5py: ModuleType | None, h5: str) -> tuple[Op, Op | None]:
    def kdb_run(db: Database) -> int:
        t = db.episodes()
        return int(((t["success"] == True) & (t["embodiment"] == "franka")).sum())  # noqa: E712 (object array)

    def h5_run(f: Any) -> int:
        data = f["data"]
        count = 0
        for name in data:
            attrs = data[name].attrs
            count += int(attrs["success"] == 1 and attrs["embodiment"] == "franka")
        return count

    return _with_kdb(kdb, kdb_run), _with_h5(h5py, h5, h5_run)


def _kql(config: BenchConfig, kdb: str, h5py: ModuleType | None, h5: str) -> tuple[Op, Op | None]:
    def kdb_run(db: Database) -> np.ndarray:
        return db.query(KQL)

    def h5_run(f: Any) -> np.ndarray:
        data = f["data"]
        hits = []
        for i in range(len(data)):
            a = data[f"demo_{i}"].attrs
            if a["embodiment"] == "franka" and a["success"] == 1 and a["scene"] == "lab":
                hits.append(i)
        return np.asarray(hits, np.int64)

    return _with_kdb(kdb, kdb_run), _with_h5(h5py, h5, h5_run)


def _windows(config: BenchConfig, kdb: str, h5py: ModuleType | None, h5: str) -> tuple[Op, Op | None]:
    from kinodb.windows import FrameWindows  # deferred: only this operation needs it

    T, ho, ha = config.frames, config.obs_horizon, config.action_horizon
    rng = np.random.default_rng(config.seed + 2)
    batches = [rng.integers(0, config.episodes * T, config.batch) for _ in range(config.batches)]

    def kdb_setup() -> FrameWindows:
        return FrameWindows(kdb, obs_horizon=ho, action_horizon=ha, pad="edge")

    def kdb_run(fw: FrameWindows) -> dict[str, np.ndarray]:
        out = [fw.lowdim(idx) for idx in batches]
        return {key: np.concatenate([b[key] for b in out]) for key in ("state", "action")}

    def h5_run(f: Any) -> dict[str, np.ndarray]:
        states, actions = [], []
        for idx in batches:
            samples = [_h5_window(f, int(k) // T, int(k) % T, T, ho, ha) for k in idx]
            states.append(np.stack([s for s, _ in samples]))
            actions.append(np.stack([a for _, a in samples]))
        return {"state": np.concatenate(states), "action": np.concatenate(actions)}

    return (kdb_setup, kdb_run, lambda fw: fw.database().close()), _with_h5(h5py, h5, h5_run)


def _h5_window(f: Any, demo: int, t: int, T: int, ho: int, ha: int) -> tuple[np.ndarray, np.ndarray]:
    """One sample the way robomimic's SequenceDataset reads it: slices per key, edge padding."""
    g = f[f"data/demo_{demo}"]
    begin, end = max(0, t - ho + 1), min(T, t + ha)
    obs = np.concatenate([g[f"obs/{key}"][begin : t + 1] for key, _, _ in OBS_KEYS], axis=1)
    acts = g["actions"][t:end]
    obs = np.concatenate([np.repeat(obs[:1], ho - len(obs), axis=0), obs])
    acts = np.concatenate([acts, np.repeat(acts[-1:], ha - len(acts), axis=0)])
    return obs, acts


def _images(config: BenchConfig, kdb: str, h5py: ModuleType | None, h5: str) -> tuple[Op, Op | None]:
    """Each episode's frames copied into one buffer; `_same_frames` checks the pixels."""
    n, T = config.episodes, config.frames

    def kdb_run(db: Database) -> int:
        buf, count = None, 0
        for i in range(n):
            frames = db.read_frames(i, 0, T, cameras=[CAMERA])["images"][CAMERA]
            if buf is None:
                buf = np.empty_like(frames)
            buf[...] = frames
            count += len(frames)
        return count

    def h5_run(f: Any) -> int:
        buf, count = None, 0
        data = f["data"]
        for i in range(n):
            frames = data[f"demo_{i}"][f"obs/{CAMERA}_image"][()]
            if buf is None:
                buf = np.empty_like(frames)
            buf[...] = frames
            count += len(frames)
        return count

    return _with_kdb(kdb, kdb_run), _with_h5(h5py, h5, h5_run)


def _same_frames(config: BenchConfig, kdb: str, h5py: ModuleType | None, h5: str) -> dict[str, Any]:
    """The `_images` check, untimed: every pixel of every frame read from both files."""
    n, T = config.episodes, config.frames
    equal: bool | None = None if h5py is None else True
    total, shape = 0, (0,)
    peer = h5py.File(h5, "r") if h5py is not None else contextlib.nullcontext()
    with open_database(kdb) as db, peer as f:
        for i in range(n):
            frames = db.read_frames(i, 0, T, cameras=[CAMERA])["images"][CAMERA]
            total, shape = total + int(frames.sum(dtype=np.uint64)), frames.shape
            if f is not None and equal:
                equal = bool(np.array_equal(frames, f["data"][f"demo_{i}"][f"obs/{CAMERA}_image"][()]))
    return {"equal": equal, "kdb": {"shape": [n * T, *shape[1:]], "sum": float(total)}}


def _with_kdb(path: str, run: Callable[[Any], Any]) -> Op:
    """A read of the ``.kdb`` file on a freshly opened `Database`."""
    return (lambda: open_database(path)), run, (lambda db: db.close())


def _with_h5(h5py: ModuleType | None, path: str, run: Callable[[Any], Any]) -> Op | None:
    """A read of the HDF5 file on a freshly opened ``h5py.File`` (None without h5py)."""
    if h5py is None:
        return None
    return (lambda: h5py.File(path, "r")), run, (lambda f: f.close())


_READS: dict[str, Callable[[BenchConfig, str, ModuleType | None, str], tuple[Op, Op | None]]] = {
    "open": _open,
    "seq_read": _seq,
    "random_read": _random,
    "meta_scan": _meta,
    "kql": _kql,
    "windows": _windows,
    "image_read": _images,
}
