#!/usr/bin/env python
"""Core read/write benchmark: ``.kdb`` against h5py (robomimic layout) and Parquet (LeRobot v2.1).

Every format gets the same synthetic state-only episodes (50 frames, state_dim 14,
action_dim 7, float32 rewards, 1-byte dones, embodiment/task/success/scene metadata)
and is measured in the same process, in the same run, with the same consumer:

* open: ``kinodb.open``; ``h5py.File`` plus listing ``data/``; LeRobot's metadata load
  (``meta/info.json``, ``tasks.jsonl``, ``episodes.jsonl``).
* open back to back: opens in a loop (at least 5, for at least 20 ms), the median open
  (``timeit``'s way: one garbage collection before the loop; each handle closed off the
  clock). The single "open" above is one call right after a garbage collection, with
  cold CPU caches.
* first episode read: episode 0 right after open (exposes work deferred from open).
* sequential read: actions and states of every episode, copied into one preallocated
  buffer per array (every byte is touched; the buffers are then checked bit for bit
  against the source data and their float64 sums compared across formats).
* random read: the same seeded draws of episode indices for every format.
* metadata scan: count episodes with ``success and embodiment == "franka"``.
* write time and bytes on disk (against the raw bytes of the arrays).

Each read operation runs on a freshly opened handle, every repeat; the order of the
formats rotates between repeats. Files are read right after they are written, so the
OS page cache is warm: this measures format and library overhead, not the disk.

Run ``python benchmarks/bench_core.py`` (``--quick`` for a smoke run).
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import h5py
import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq

import kinodb

FRAMES = 50
STATE_DIM = 14
ACTION_DIM = 7
FPS = 20
CHUNKS_SIZE = 1000  # LeRobot v2.x default: episodes per data/chunk-XXX folder
EMBODIMENTS = ("franka", "ur5e", "widowx", "aloha")
TASKS = tuple(f"task {k}: put object {k} in the bin" for k in range(10))
SCENES = ("kitchen", "lab", "office")
PQ_DATA_PATH = "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet"
# robomimic obs/ keys: the 14-dim state split into named low-dim observations.
OBS_KEYS = (("robot0_joint_pos", 0, 7), ("robot0_eef_pos", 7, 10), ("robot0_eef_quat", 10, 14))

LAYOUTS = {
    "kdb": "one .kdb v1 file written by kinodb.Writer (arrays: actions, states, rewards, is_terminal)",
    "h5py": (
        "robomimic HDF5: data/demo_{i}/{actions,states,rewards,dones,obs/<key>}, one group per demo, "
        "attrs num_samples/embodiment/task/success/scene; contiguous, uncompressed (h5py defaults); "
        "obs/ holds the 14-dim state split into robot0_joint_pos(7), robot0_eef_pos(3), robot0_eef_quat(4), "
        "so the state bytes are stored twice, as in a robomimic file that has both states and obs"
    ),
    "parquet": (
        "LeRobot v2.1: one parquet file per episode at " + PQ_DATA_PATH + " (chunks of 1000 episodes), "
        "one row per frame, fixed_size_list<float> action[7] and observation.state[14], timestamp, "
        "frame_index, episode_index, index, task_index, next.reward, next.done; snappy (pyarrow default); "
        "meta/info.json, meta/tasks.jsonl, meta/episodes.jsonl (success, embodiment, scene added per line)"
    ),
}
VARIANTS = {
    "kdb": "kdb: db.read_array(i, 'actions') + db.read_array(i, 'states')",
    "kdb-ep": "kdb: db.read_episode_actions_only(i) (meta dict + every array view)",
    "kdb-batch": "kdb: db.gather(name, episodes, out=buffer) (one call per array, straight into the buffer)",
    "h5py": "h5py: g = f['data'][f'demo_{i}']; g['actions'][()], g['states'][()]",
    "parquet": "pyarrow: pq.ParquetFile(path, pre_buffer=False).read(columns, use_threads=False) per episode",
    "parquet-ram": "pyarrow: all episode files loaded into one Arrow table at open, then NumPy slices",
    "numpy": "floor: copy from the in-memory source arrays (no file format at all)",
}
PEERS = ("h5py", "parquet", "parquet-ram")
OPS = ("open", "first", "seq", "random", "meta")
LOOP_S = 0.02  # a back-to-back open sample runs opens for at least this long,
LOOP_MIN = 5  # and at least this many
CHECKED = {"seq": "seq_sum", "random": "random_sum", "meta": "meta_count"}  # cross-format checks


@dataclass
class Data:
    """Synthetic episodes, stored as stacked arrays so each episode is a contiguous view."""

    actions: np.ndarray  # (N, T, 7) float32
    states: np.ndarray  # (N, T, 14) float32
    rewards: np.ndarray  # (N, T) float32
    dones: np.ndarray  # (N, T) bool
    embodiment: list[str]
    task_index: np.ndarray
    success: np.ndarray  # bool
    scene: list[str]

    @property
    def n(self) -> int:
        return len(self.actions)

    def expected_matches(self) -> int:
        emb = np.array(self.embodiment, dtype=object)
        return int((self.success & (emb == "franka")).sum())


def generate(n: int, seed: int) -> Data:
    """Seeded synthetic episodes: Gaussian arrays, sparse rewards, a done on the last frame."""
    rng = np.random.default_rng(seed)
    success = rng.random(n) < 0.6
    rewards = np.zeros((n, FRAMES), np.float32)
    rewards[:, -1] = success
    dones = np.zeros((n, FRAMES), bool)
    dones[:, -1] = True
    return Data(
        actions=rng.standard_normal((n, FRAMES, ACTION_DIM), dtype=np.float32),
        states=rng.standard_normal((n, FRAMES, STATE_DIM), dtype=np.float32),
        rewards=rewards,
        dones=dones,
        embodiment=[EMBODIMENTS[k] for k in rng.integers(0, len(EMBODIMENTS), n)],
        task_index=rng.integers(0, len(TASKS), n),
        success=success,
        scene=[SCENES[k] for k in rng.integers(0, len(SCENES), n)],
    )


def raw_bytes(data: Data) -> int:
    """Bytes of the arrays every format stores: actions, states, rewards, dones."""
    return data.actions.nbytes + data.states.nbytes + data.rewards.nbytes + data.dones.nbytes


# -- writers ------------------------------------------------------------------------------


def write_kdb(data: Data, path: str) -> None:
    with kinodb.Writer(path, mode="w") as w:
        for i in range(data.n):
            w.add_episode(
                actions=data.actions[i], states=data.states[i], rewards=data.rewards[i],
                is_terminal=data.dones[i], embodiment=data.embodiment[i],
                task=TASKS[data.task_index[i]], fps=FPS, success=bool(data.success[i]),
                extra={"scene": data.scene[i]},
            )  # fmt: skip


def write_h5(data: Data, path: str) -> None:
    with h5py.File(path, "w") as f:
        grp = f.create_group("data")
        for i in range(data.n):
            g = grp.create_group(f"demo_{i}")
            g.attrs["num_samples"] = FRAMES
            g.attrs["embodiment"] = data.embodiment[i]
            g.attrs["task"] = TASKS[data.task_index[i]]
            g.attrs["success"] = bool(data.success[i])
            g.attrs["scene"] = data.scene[i]
            g.create_dataset("actions", data=data.actions[i])
            g.create_dataset("states", data=data.states[i])
            g.create_dataset("rewards", data=data.rewards[i])
            g.create_dataset("dones", data=data.dones[i].astype(np.uint8))
            obs = g.create_group("obs")
            for key, a, b in OBS_KEYS:
                obs.create_dataset(key, data=data.states[i][:, a:b])
        grp.attrs["total"] = data.n * FRAMES
        grp.attrs["env_args"] = json.dumps({"env_name": "Synthetic", "type": 1, "env_kwargs": {}})


def _pq_features() -> dict[str, Any]:
    def vec(n: int) -> dict[str, Any]:
        return {"dtype": "float32", "shape": [n], "names": None}

    scalar = {k: {"dtype": t, "shape": [1], "names": None} for k, t in (
        ("timestamp", "float32"), ("frame_index", "int64"), ("episode_index", "int64"),
        ("index", "int64"), ("task_index", "int64"), ("next.reward", "float32"), ("next.done", "bool"),
    )}  # fmt: skip
    return {"observation.state": vec(STATE_DIM), "action": vec(ACTION_DIM), **scalar}


def _pq_schema() -> pa.Schema:
    hf = {"info": {"features": {
        k: ({"feature": {"dtype": v["dtype"], "_type": "Value"}, "length": v["shape"][0], "_type": "Sequence"}
            if k in ("observation.state", "action") else {"dtype": v["dtype"], "_type": "Value"})
        for k, v in _pq_features().items()
    }}}  # fmt: skip
    return pa.schema(
        [
            ("observation.state", pa.list_(pa.float32(), STATE_DIM)),
            ("action", pa.list_(pa.float32(), ACTION_DIM)),
            ("timestamp", pa.float32()),
            ("frame_index", pa.int64()),
            ("episode_index", pa.int64()),
            ("index", pa.int64()),
            ("task_index", pa.int64()),
            ("next.reward", pa.float32()),
            ("next.done", pa.bool_()),
        ],
        metadata={"huggingface": json.dumps(hf)},
    )


def write_parquet(data: Data, root: str) -> None:
    """LeRobot v2.1 layout: one parquet file per episode plus the JSON/JSONL metadata."""
    schema = _pq_schema()
    frame = np.arange(FRAMES, dtype=np.int64)
    timestamp = (frame / FPS).astype(np.float32)
    os.makedirs(os.path.join(root, "meta"), exist_ok=True)
    with open(os.path.join(root, "meta", "episodes.jsonl"), "w") as eps:
        for i in range(data.n):
            path = os.path.join(root, PQ_DATA_PATH.format(episode_chunk=i // CHUNKS_SIZE, episode_index=i))
            if i % CHUNKS_SIZE == 0:
                os.makedirs(os.path.dirname(path), exist_ok=True)
            cols = [
                pa.FixedSizeListArray.from_arrays(pa.array(data.states[i].reshape(-1)), STATE_DIM),
                pa.FixedSizeListArray.from_arrays(pa.array(data.actions[i].reshape(-1)), ACTION_DIM),
                pa.array(timestamp),
                pa.array(frame),
                pa.array(np.full(FRAMES, i, np.int64)),
                pa.array(frame + i * FRAMES),
                pa.array(np.full(FRAMES, data.task_index[i], np.int64)),
                pa.array(data.rewards[i]),
                pa.array(data.dones[i]),
            ]
            pq.write_table(pa.Table.from_arrays(cols, schema=schema), path)
            eps.write(json.dumps({
                "episode_index": i, "tasks": [TASKS[data.task_index[i]]], "length": FRAMES,
                "success": bool(data.success[i]), "embodiment": data.embodiment[i], "scene": data.scene[i],
            }) + "\n")  # fmt: skip
    with open(os.path.join(root, "meta", "tasks.jsonl"), "w") as fh:
        fh.writelines(json.dumps({"task_index": k, "task": t}) + "\n" for k, t in enumerate(TASKS))
    info = {
        "codebase_version": "v2.1", "robot_type": "mixed", "total_episodes": data.n,
        "total_frames": data.n * FRAMES, "total_tasks": len(TASKS), "total_videos": 0,
        "total_chunks": (data.n + CHUNKS_SIZE - 1) // CHUNKS_SIZE, "chunks_size": CHUNKS_SIZE,
        "fps": FPS, "splits": {"train": f"0:{data.n}"}, "data_path": PQ_DATA_PATH, "video_path": None,
        "features": _pq_features(),
    }  # fmt: skip
    with open(os.path.join(root, "meta", "info.json"), "w") as fh:
        json.dump(info, fh, indent=4)


# -- readers: open / sequential / random / metadata scan ------------------------------------
# Each consumer copies actions[k] and states[k] into preallocated buffers A and S.


def kdb_seq(db: Any, A: np.ndarray, S: np.ndarray) -> None:
    for k in range(len(A)):
        A[k] = db.read_array(k, "actions")
        S[k] = db.read_array(k, "states")


def kdb_random(db: Any, idx: list[int], A: np.ndarray, S: np.ndarray) -> None:
    for k, i in enumerate(idx):
        A[k] = db.read_array(i, "actions")
        S[k] = db.read_array(i, "states")


def kdb_batch_seq(db: Any, A: np.ndarray, S: np.ndarray) -> None:
    db.gather("actions", out=A.reshape(-1, A.shape[-1]))
    db.gather("states", out=S.reshape(-1, S.shape[-1]))


def kdb_batch_random(db: Any, idx: list[int], A: np.ndarray, S: np.ndarray) -> None:
    db.gather("actions", idx, out=A.reshape(-1, A.shape[-1]))
    db.gather("states", idx, out=S.reshape(-1, S.shape[-1]))


def kdb_ep_seq(db: Any, A: np.ndarray, S: np.ndarray) -> None:
    for k in range(len(A)):
        ep = db.read_episode_actions_only(k)
        A[k] = ep["actions"]
        S[k] = ep["states"]


def kdb_ep_random(db: Any, idx: list[int], A: np.ndarray, S: np.ndarray) -> None:
    for k, i in enumerate(idx):
        ep = db.read_episode_actions_only(i)
        A[k] = ep["actions"]
        S[k] = ep["states"]


def kdb_meta(db: Any) -> int:
    t = db.episodes()
    return int(((t["success"] == True) & (t["embodiment"] == "franka")).sum())  # noqa: E712


@dataclass
class H5:
    file: h5py.File
    keys: list[str]


def h5_open(path: str) -> H5:
    f = h5py.File(path, "r")
    return H5(f, list(f["data"].keys()))


def h5_seq(h: H5, A: np.ndarray, S: np.ndarray) -> None:
    grp = h.file["data"]
    for k in range(len(A)):
        g = grp[f"demo_{k}"]
        A[k] = g["actions"][()]
        S[k] = g["states"][()]


def h5_random(h: H5, idx: list[int], A: np.ndarray, S: np.ndarray) -> None:
    grp = h.file["data"]
    for k, i in enumerate(idx):
        g = grp[f"demo_{i}"]
        A[k] = g["actions"][()]
        S[k] = g["states"][()]


def h5_meta(h: H5) -> int:
    grp = h.file["data"]
    count = 0
    for name in h.keys:
        attrs = grp[name].attrs
        if attrs["success"] and attrs["embodiment"] == "franka":
            count += 1
    return count


@dataclass
class LeRobot:
    root: str
    info: dict[str, Any]
    tasks: list[dict[str, Any]]
    episodes: list[dict[str, Any]]
    actions: np.ndarray | None = None  # parquet-ram only: every frame, in episode order
    states: np.ndarray | None = None
    starts: np.ndarray | None = None

    def path(self, i: int) -> str:
        chunk = i // self.info["chunks_size"]
        return os.path.join(self.root, self.info["data_path"].format(episode_chunk=chunk, episode_index=i))


def _jsonl(path: str) -> list[dict[str, Any]]:
    with open(path) as fh:
        return [json.loads(line) for line in fh]


def pq_open(root: str) -> LeRobot:
    """What LeRobotDatasetMetadata loads: info.json, tasks.jsonl, episodes.jsonl."""
    with open(os.path.join(root, "meta", "info.json")) as fh:
        info = json.load(fh)
    meta = os.path.join(root, "meta")
    return LeRobot(
        root, info, _jsonl(os.path.join(meta, "tasks.jsonl")), _jsonl(os.path.join(meta, "episodes.jsonl"))
    )


def _pq_arrays(table: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    acts = table.column("action").combine_chunks().flatten().to_numpy()
    sts = table.column("observation.state").combine_chunks().flatten().to_numpy()
    return acts.reshape(-1, ACTION_DIM), sts.reshape(-1, STATE_DIM)


def _pq_read(path: str) -> tuple[np.ndarray, np.ndarray]:
    pf = pq.ParquetFile(path, pre_buffer=False)
    return _pq_arrays(pf.read(columns=["action", "observation.state"], use_threads=False))


def pq_seq(h: LeRobot, A: np.ndarray, S: np.ndarray) -> None:
    for k in range(len(A)):
        A[k], S[k] = _pq_read(h.path(k))


def pq_random(h: LeRobot, idx: list[int], A: np.ndarray, S: np.ndarray) -> None:
    for k, i in enumerate(idx):
        A[k], S[k] = _pq_read(h.path(i))


def pq_meta(h: LeRobot) -> int:
    return sum(1 for e in h.episodes if e["success"] and e["embodiment"] == "franka")


def pq_ram_open(root: str) -> LeRobot:
    """Metadata, then every episode file into one Arrow table (as a hub-style loader would)."""
    h = pq_open(root)
    files = [h.path(e["episode_index"]) for e in h.episodes]
    table = pads.dataset(files, format="parquet").to_table(
        columns=["action", "observation.state", "episode_index"]
    )
    h.actions, h.states = _pq_arrays(table)
    lengths = np.array([e["length"] for e in h.episodes], np.int64)
    h.starts = np.concatenate([[0], np.cumsum(lengths)])
    if len(h.actions) != h.starts[-1]:
        raise RuntimeError(f"{root}: loaded {len(h.actions)} frames, episodes.jsonl says {h.starts[-1]}")
    return h


def pq_ram_seq(h: LeRobot, A: np.ndarray, S: np.ndarray) -> None:
    assert h.actions is not None and h.states is not None and h.starts is not None
    acts, sts, starts = h.actions, h.states, h.starts
    for k in range(len(A)):
        a, b = starts[k], starts[k + 1]
        A[k] = acts[a:b]
        S[k] = sts[a:b]


def pq_ram_random(h: LeRobot, idx: list[int], A: np.ndarray, S: np.ndarray) -> None:
    assert h.actions is not None and h.states is not None and h.starts is not None
    acts, sts, starts = h.actions, h.states, h.starts
    for k, i in enumerate(idx):
        a, b = starts[i], starts[i + 1]
        A[k] = acts[a:b]
        S[k] = sts[a:b]


def np_seq(d: Data, A: np.ndarray, S: np.ndarray) -> None:
    acts, sts = d.actions, d.states
    for k in range(len(A)):
        A[k] = acts[k]
        S[k] = sts[k]


def np_random(d: Data, idx: list[int], A: np.ndarray, S: np.ndarray) -> None:
    acts, sts = d.actions, d.states
    for k, i in enumerate(idx):
        A[k] = acts[i]
        S[k] = sts[i]


@dataclass
class Variant:
    name: str
    fmt: str  # which file it reads ("kdb", "h5py", "parquet", or "" for the in-memory floor)
    open: Callable[[str], Any]
    close: Callable[[Any], None]
    seq: Callable[[Any, np.ndarray, np.ndarray], None]
    random: Callable[[Any, list[int], np.ndarray, np.ndarray], None]
    meta: Callable[[Any], int] | None
    times_open: bool = True


def variants(data: Data) -> list[Variant]:
    def noop(_: Any) -> None:
        return None

    return [
        Variant("kdb", "kdb", kinodb.open, lambda db: db.close(), kdb_seq, kdb_random, kdb_meta),
        Variant("kdb-ep", "kdb", kinodb.open, lambda db: db.close(), kdb_ep_seq, kdb_ep_random, None, False),
        Variant(
            "kdb-batch",
            "kdb",
            kinodb.open,
            lambda db: db.close(),
            kdb_batch_seq,
            kdb_batch_random,
            None,
            False,
        ),
        Variant("h5py", "h5py", h5_open, lambda h: h.file.close(), h5_seq, h5_random, h5_meta),
        Variant("parquet", "parquet", pq_open, noop, pq_seq, pq_random, pq_meta),
        Variant("parquet-ram", "parquet", pq_ram_open, noop, pq_ram_seq, pq_ram_random, None),
        Variant("numpy", "", lambda _: data, noop, np_seq, np_random, None, False),
    ]


# -- measurement --------------------------------------------------------------------------


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    """Run ``fn`` with the garbage collector paused; return (seconds, result)."""
    gc.collect()
    gc.disable()
    try:
        t0 = time.perf_counter()
        out = fn()
        return time.perf_counter() - t0, out
    finally:
        gc.enable()


def open_loop(v: Variant, src: str) -> float:
    """Seconds per open, opening back to back for at least `LOOP_S` (the way ``timeit``
    measures: one garbage collection before the loop, none inside it). Only the opens are
    timed: each handle is closed between them, off the clock."""
    gc.collect()
    gc.disable()
    try:
        times: list[float] = []
        start = time.perf_counter()
        while len(times) < LOOP_MIN or time.perf_counter() - start < LOOP_S:
            t0 = time.perf_counter()
            h = v.open(src)
            times.append(time.perf_counter() - t0)
            v.close(h)
        return float(np.median(times))
    finally:
        gc.enable()


def file_bytes(path: str) -> dict[str, int]:
    """Apparent size and allocated size of a file or of every file under a folder."""
    paths = [path] if os.path.isfile(path) else [os.path.join(r, f) for r, _, fs in os.walk(path) for f in fs]
    stats = [os.stat(p) for p in paths]
    return {
        "bytes": sum(s.st_size for s in stats),
        "allocated": sum(s.st_blocks * 512 for s in stats),
        "files": len(stats),
    }


def _check_buffers(name: str, op: str, A: np.ndarray, S: np.ndarray, A0: np.ndarray, S0: np.ndarray) -> float:
    if not (np.array_equal(A, A0) and np.array_equal(S, S0)):
        raise RuntimeError(f"{name} {op}: the data read back differs from the data written")
    return float(A.sum(dtype=np.float64) + S.sum(dtype=np.float64))


class Buffers:
    """Preallocated destinations and the expected contents for each read operation."""

    def __init__(self, data: Data, idx: list[int]) -> None:
        self.data, self.idx = data, idx
        self.A, self.S = np.empty_like(data.actions), np.empty_like(data.states)
        self.A0r, self.S0r = data.actions[idx], data.states[idx]
        self.Ar, self.Sr = np.empty_like(self.A0r), np.empty_like(self.S0r)
        self.A1, self.S1 = np.empty_like(data.actions[:1]), np.empty_like(data.states[:1])


def measure(v: Variant, op: str, h: Any, b: Buffers) -> tuple[float, Any]:
    """Time one read operation on an open handle; return (seconds, value to cross-check)."""
    d = b.data
    if op == "first":
        dt, _ = timed(lambda: v.random(h, [0], b.A1, b.S1))
        return dt, _check_buffers(v.name, op, b.A1, b.S1, d.actions[:1], d.states[:1])
    if op == "seq":
        b.A.fill(np.nan)
        b.S.fill(np.nan)
        dt, _ = timed(lambda: v.seq(h, b.A, b.S))
        return dt, _check_buffers(v.name, op, b.A, b.S, d.actions, d.states)
    if op == "random":
        b.Ar.fill(np.nan)
        b.Sr.fill(np.nan)
        dt, _ = timed(lambda: v.random(h, b.idx, b.Ar, b.Sr))
        return dt, _check_buffers(v.name, op, b.Ar, b.Sr, b.A0r, b.S0r)
    assert v.meta is not None
    meta = v.meta
    return timed(lambda: meta(h))


def run_size(n: int, args: argparse.Namespace, workdir: str) -> dict[str, Any]:
    data = generate(n, args.seed)
    where = os.path.join(workdir, f"n{n}")
    os.makedirs(where, exist_ok=True)
    paths = {"kdb": os.path.join(where, "bench.kdb"), "h5py": os.path.join(where, "bench.hdf5"),
             "parquet": os.path.join(where, "lerobot")}  # fmt: skip
    writers = {"kdb": write_kdb, "h5py": write_h5, "parquet": write_parquet}
    write: dict[str, list[float]] = {}
    for fmt, writer in writers.items():
        for _ in range(args.write_repeats):
            if os.path.isdir(paths[fmt]):
                shutil.rmtree(paths[fmt])
            dt, _ = timed(lambda w=writer, p=paths[fmt]: w(data, p))
            write.setdefault(fmt, []).append(dt)
        print(f"  wrote {fmt:8s} in {np.median(write[fmt]):8.2f} s", flush=True)
    sizes = {fmt: file_bytes(p) for fmt, p in paths.items()}

    idx = np.random.default_rng(args.seed + 1).integers(0, n, args.draws).tolist()
    vs = [v for v in variants(data) if v.name in args.formats]
    bufs = Buffers(data, idx)
    samples: dict[str, dict[str, list[float]]] = {op: {} for op in (*OPS, "open-loop")}
    checks: dict[str, dict[str, Any]] = {key: {} for key in CHECKED.values()}
    for rep in range(args.repeats):
        order = vs[rep % len(vs) :] + vs[: rep % len(vs)]
        for v in order:
            src = paths.get(v.fmt, "")
            for op in OPS:
                if (op == "open" and not v.times_open) or (op == "meta" and v.meta is None):
                    continue
                t_open, h = timed(lambda v=v, s=src: v.open(s))
                dt, check = (t_open, None) if op == "open" else measure(v, op, h, bufs)
                v.close(h)
                del h
                samples[op].setdefault(v.name, []).append(dt)
                if op in CHECKED:
                    checks[CHECKED[op]][v.name] = check
            if v.times_open:
                samples["open-loop"].setdefault(v.name, []).append(open_loop(v, src))
        print(f"  repeat {rep + 1}/{args.repeats} done", flush=True)
    return summarise(n, data, write, sizes, samples, checks)


def summarise(
    n: int, data: Data, write: dict[str, list[float]], sizes: dict[str, dict[str, int]],
    samples: dict[str, dict[str, list[float]]], checks: dict[str, dict[str, Any]],
) -> dict[str, Any]:  # fmt: skip
    expected = {
        "seq_sum": float(data.actions.sum(dtype=np.float64) + data.states.sum(dtype=np.float64)),
        "meta_count": data.expected_matches(),
    }
    for key in ("seq_sum", "meta_count"):
        bad = {k: v for k, v in checks[key].items() if v != expected[key]}
        if bad:
            raise RuntimeError(f"N={n}: {key} disagrees: expected {expected[key]}, got {bad}")
    if len(set(checks["random_sum"].values())) > 1:
        raise RuntimeError(f"N={n}: random-read sums disagree across formats: {checks['random_sum']}")
    medians = {op: {k: float(np.median(v)) for k, v in per.items()} for op, per in samples.items()}
    medians["write"] = {k: float(np.median(v)) for k, v in write.items()}
    raw = raw_bytes(data)
    ratios: dict[str, dict[str, float]] = {}
    for op, per in medians.items():
        for kdb in ("kdb", "kdb-ep", "kdb-batch"):
            if kdb not in per:
                continue
            for peer in PEERS:
                if peer in per:
                    ratios.setdefault(op, {})[f"{peer}/{kdb}"] = per[peer] / per[kdb]
    size = {fmt: {**s, "ratio_to_raw": s["bytes"] / raw} for fmt, s in sizes.items()}
    return {
        "episodes": n, "frames": n * FRAMES, "raw_array_bytes": raw,
        "raw_array_bytes_formula": "N*50*(14+7)*4 (states, actions) + N*50*4 (rewards) + N*50*1 (dones)",
        "timings_s": {**samples, "write": write}, "median_s": medians, "ratios": ratios,
        "size": size, "checks": {**checks, "expected": expected}, "targets": targets(medians, size),
    }  # fmt: skip


TARGETS = (
    ("open", "h5py", 500.0, "open >= 500x faster than h5py open+list"),
    ("open-loop", "h5py", 500.0, "open >= 500x faster than h5py open+list (back to back)"),
    ("seq", "h5py", 50.0, "sequential read >= 50x faster than h5py per-demo reads"),
    ("seq", "parquet", 200.0, "sequential read >= 200x faster than per-episode Parquet reads"),
    ("random", "h5py", 50.0, "random reads >= 50x faster than h5py"),
)


def targets(medians: dict[str, dict[str, float]], size: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for op, peer, need, label in TARGETS:
        for kdb in ("kdb", "kdb-ep", "kdb-batch"):
            per = medians.get(op, {})
            if kdb in per and peer in per:
                got = per[peer] / per[kdb]
                out.append(
                    {"target": label, "kdb_variant": kdb, "need": need, "got": got, "met": got >= need}
                )
    got = size["kdb"]["ratio_to_raw"]
    out.append({"target": "state-only .kdb size <= 1.05x raw array bytes", "kdb_variant": "kdb",
                "need": 1.05, "got": got, "met": got <= 1.05})  # fmt: skip
    return out


# -- reporting ----------------------------------------------------------------------------


def fmt_time(s: float) -> str:
    if s < 1e-3:
        return f"{s * 1e6:.1f} us"
    if s < 1:
        return f"{s * 1e3:.2f} ms"
    return f"{s:.2f} s"


def fmt_size(b: float) -> str:
    return f"{b / 2**20:.1f} MiB"


def print_result(res: dict[str, Any], draws: int) -> None:
    med = res["median_s"]
    cols = [c for c in ("kdb", "kdb-ep", "kdb-batch", "h5py", "parquet", "parquet-ram", "numpy")
            if any(c in med[op] for op in med)]  # fmt: skip
    labels = {
        "open": "open",
        "open-loop": "open (back to back)",
        "first": "first episode read",
        "seq": f"seq read ({res['episodes']} ep)",
        "random": f"random read ({draws})",
        "meta": "metadata scan",
        "write": "write",
    }
    print(f"\nN = {res['episodes']} episodes x {FRAMES} frames (medians; page cache warm)")
    print(f"{'':22s}" + "".join(f"{c:>13s}" for c in cols))
    for op, label in labels.items():
        row = "".join(f"{fmt_time(med[op][c]) if c in med[op] else '-':>13s}" for c in cols)
        print(f"{label:22s}{row}")
    size = res["size"]
    print(
        f"{'size on disk':22s}"
        + "".join(f"{fmt_size(size[c]['bytes']) if c in size else '-':>13s}" for c in cols)
    )
    print(
        f"{'size / raw arrays':22s}"
        + "".join(f"{size[c]['ratio_to_raw']:>12.3f}x" if c in size else f"{'-':>13s}" for c in cols)
    )
    print(f"raw array bytes: {res['raw_array_bytes']:,} ({fmt_size(res['raw_array_bytes'])})")
    for op in ("open", "open-loop", "first", "seq", "random", "meta", "write"):
        for kdb in ("kdb", "kdb-ep", "kdb-batch"):
            if kdb not in med[op]:
                continue
            parts = [f"{peer} {fmt_time(med[op][peer])} -> {med[op][peer] / med[op][kdb]:.1f}x"
                     for peer in PEERS if peer in med[op]]  # fmt: skip
            print(f"{op}: {kdb} {fmt_time(med[op][kdb])}; " + "; ".join(parts))
    for t in res["targets"]:
        mark = "MET " if t["met"] else "MISS"
        print(f"  [{mark}] {t['target']} ({t['kdb_variant']}): {t['got']:.3g}x (need {t['need']:g}x)")


def machine_info(workdir: str) -> dict[str, Any]:
    info: dict[str, Any] = {
        "platform": platform.platform(), "machine": platform.machine(), "cpu_count": os.cpu_count(),
        "python": sys.version.split()[0], "numpy": np.__version__, "h5py": h5py.__version__,
        "hdf5": h5py.version.hdf5_version, "pyarrow": pa.__version__, "kinodb": kinodb.__version__,
        "kinodb_path": os.path.dirname(kinodb.__file__),
    }  # fmt: skip
    if hasattr(os, "sched_getaffinity"):
        info["cpus_usable"] = len(os.sched_getaffinity(0))
    try:
        with open("/proc/cpuinfo") as fh:
            info["cpu_model"] = next(
                (ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")), None
            )
        with open("/proc/meminfo") as fh:
            info["mem_total_kib"] = int(next(ln for ln in fh if ln.startswith("MemTotal")).split()[1])
        with open("/proc/mounts") as fh:
            mounts = [ln.split() for ln in fh]
        real = os.path.realpath(workdir)
        best = max((m for m in mounts if real.startswith(m[1])), key=lambda m: len(m[1]), default=None)
        info["workdir_fs"] = best[2] if best else None
    except (OSError, StopIteration):
        pass
    try:
        here = os.path.dirname(os.path.abspath(__file__))
        rev = subprocess.run(
            ["git", "-C", here, "rev-parse", "HEAD"], capture_output=True, text=True, check=True
        )
        dirty = subprocess.run(
            ["git", "-C", here, "status", "--porcelain", "--", ":/src"], capture_output=True, text=True
        )
        info["git_commit"] = rev.stdout.strip() + ("+dirty-src" if dirty.stdout.strip() else "")
        if dirty.stdout.strip():  # identify the uncommitted source that was measured
            diff = subprocess.run(["git", "-C", here, "diff", "HEAD", "--", ":/src"], capture_output=True)
            untracked = subprocess.run(
                ["git", "-C", here, "ls-files", "--others", "--exclude-standard", "--", ":/src"],
                capture_output=True,
            )
            info["src_diff_sha256"] = hashlib.sha256(diff.stdout + untracked.stdout).hexdigest()
    except (OSError, subprocess.CalledProcessError):
        pass
    return info


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", default="1000,10000,50000", help="episode counts, comma-separated")
    p.add_argument("--repeats", type=int, default=5, help="repeats per read measurement (median reported)")
    p.add_argument("--write-repeats", type=int, default=1, help="repeats per write measurement")
    p.add_argument("--draws", type=int, default=1000, help="random episode reads per repeat")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--formats", default=",".join(VARIANTS), help=f"subset of {','.join(VARIANTS)}")
    p.add_argument(
        "--out",
        default=None,
        help="results JSON (default: benchmarks/results/core.json, core_quick.json with --quick)",
    )
    p.add_argument("--workdir", default=None, help="where data files go (default: a temp dir, removed after)")
    p.add_argument("--keep", action="store_true", help="keep the data files")
    p.add_argument("--quick", action="store_true", help="smoke run: 200 episodes, 3 repeats, 200 draws")
    args = p.parse_args(argv)
    # A smoke run never replaces the recorded full run.
    args.out = args.out or f"benchmarks/results/core{'_quick' if args.quick else ''}.json"
    if args.quick:
        args.sizes, args.repeats, args.draws = "200", 3, 200
    args.sizes = [int(s) for s in str(args.sizes).split(",") if s]
    args.formats = [f for f in args.formats.split(",") if f]
    unknown = set(args.formats) - set(VARIANTS)
    if unknown or "kdb" not in args.formats:
        p.error(f"--formats must include kdb and name only {sorted(VARIANTS)}; got {args.formats}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    own = args.workdir is None
    workdir = tempfile.mkdtemp(prefix="kinodb-bench-") if own else args.workdir
    os.makedirs(workdir, exist_ok=True)
    meta = {"machine": machine_info(workdir), "args": {k: v for k, v in vars(args).items()},
            "layouts": LAYOUTS, "variants": VARIANTS, "consumer": "copy actions/states into preallocated buffers",
            "page_cache": "warm: files are read right after being written; no cache drop",
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}  # fmt: skip
    print(f"kinodb {kinodb.__version__}; data in {workdir}; page cache warm")
    results = []
    try:
        for n in args.sizes:
            print(f"N = {n}", flush=True)
            res = run_size(n, args, workdir)
            results.append(res)
            print_result(res, args.draws)
            if own and not args.keep:
                shutil.rmtree(os.path.join(workdir, f"n{n}"), ignore_errors=True)
    finally:
        if own and not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as fh:
        json.dump({"quick": args.quick, "meta": meta, "results": results}, fh, indent=1)
    missed = [
        (r["episodes"], t["target"])
        for r in results
        for t in r["targets"]
        if not t["met"] and t["kdb_variant"] == "kdb"
    ]
    print(f"\nwrote {args.out}; targets missed (kdb read_array variant): {len(missed)}")
    for n, t in missed:
        print(f"  N={n}: {t}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
