"""Deterministic datasets for the loader and training benchmarks, in every form they read.

A `SetSpec` fully determines a synthetic ``.kdb`` (smooth state trajectories, actions that
follow them, and camera frames of moving shapes over a drifting texture). The forms the
peers read are written from it by kinodb's own exporters: robomimic HDF5 (raw uint8
frames) with ``kinodb.export.export(..., format="hdf5")`` and LeRobot v3.0 (mp4 video)
with ``format="lerobot"``. The training sets also go the other way: the native form is
ingested back into ``.kdb`` with lossless PNG frames (the very tensors the peer decodes)
and with JPEG frames.

Everything is cached under a data directory, one folder per set named by a digest of its
spec, completed by a ``manifest.json`` written last; a folder without one is rebuilt (under
a lock file, so concurrent runs build a set once).

Sets:

- `dataloader_sets`: a state-only set and a 2-camera set (224x224 JPEG), for
  ``benchmarks/dataloader.py``.
- `pusht_like`: one 96x96 camera, state 2, action 2, ~200 episodes x ~150 frames; native
  form LeRobot v3.0 with mp4.
- `libero_like`: two 128x128 cameras, state 9, action 7, ~100 episodes x ~120 frames;
  native form robomimic HDF5 with raw uint8 frames.

Run ``python benchmarks/_data.py --data-dir DIR [--quick]`` to build them ahead of time.
"""

from __future__ import annotations

import argparse
import dataclasses
import fcntl
import hashlib
import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

import kinodb
import kinodb.export
import kinodb.ingest

GENERATOR_VERSION = 1  # bump when the generated content changes: cached sets are rebuilt
DEFAULT_DATA_DIR = Path(__file__).resolve().parent / "data"  # gitignored
TASKS = (
    "push the block onto the target",
    "pick up the bowl and place it on the plate",
    "open the top drawer of the cabinet",
    "turn on the stove",
    "put the mug in the basket",
)


@dataclass(frozen=True)
class SetSpec:
    """What a synthetic set holds; equal specs give identical data.

    Attributes:
        name: the set's name (its cache folder starts with it).
        episodes: number of episodes.
        frames: mean episode length; lengths vary by ``jitter`` (a fraction) around it.
        state_dim: width of ``states``.
        action_dim: width of ``actions``.
        cameras: camera names (none for a state-only set).
        image_size: square frame side in pixels.
        fps: frame rate.
        seed: seed of every random draw.
        jitter: relative spread of the episode lengths.
        image_codec: how the generated ``.kdb`` stores frames (``jpeg``, ``png``, ``raw``).
        jpeg_quality: JPEG quality when ``image_codec`` is ``jpeg``.
        state_components: named ``[start, stop)`` spans of ``states`` (robomimic obs keys).
        embodiment: the robot name stored with every episode.
    """

    name: str
    episodes: int
    frames: int
    state_dim: int
    action_dim: int
    cameras: tuple[str, ...] = ()
    image_size: int = 96
    fps: float = 10.0
    seed: int = 0
    jitter: float = 0.2
    image_codec: str = "jpeg"
    jpeg_quality: int = 90
    state_components: tuple[tuple[str, int, int], ...] = ()
    embodiment: str = "panda"

    def digest(self) -> str:
        """A short digest of the spec and the generator version (the cache key)."""
        text = json.dumps([GENERATOR_VERSION, dataclasses.asdict(self)], sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:12]


@dataclass
class SetPaths:
    """Where one set's forms are.

    Attributes:
        spec: the set's spec.
        root: the set's cache folder.
        kdb: the generated ``.kdb`` (the exporters' input).
        hdf5: the robomimic-layout HDF5 form, if built.
        lerobot: the LeRobot v3.0 folder, if built.
        kdb_png: the native form ingested with PNG frames, if built.
        kdb_jpeg: the native form ingested with JPEG frames, if built.
        native: the form a training peer reads (``hdf5`` or ``lerobot``), if any.
        video_codec: the LeRobot form's video codec.
        extra: the manifest (what was built, the spec, build seconds).
    """

    spec: SetSpec
    root: Path
    kdb: Path
    hdf5: Path | None = None
    lerobot: Path | None = None
    kdb_png: Path | None = None
    kdb_jpeg: Path | None = None
    native: Path | None = None
    video_codec: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


# -- content -----------------------------------------------------------------------------------


def episode_lengths(spec: SetSpec) -> np.ndarray:
    """Each episode's number of frames."""
    rng = np.random.default_rng([spec.seed, 1])
    spread = round(spec.frames * spec.jitter)
    lengths = spec.frames + rng.integers(-spread, spread + 1, spec.episodes)
    return np.maximum(lengths, 2).astype(np.int64)


def trajectories(rng: np.random.Generator, T: int, dim: int) -> np.ndarray:
    """Smooth, bounded float32 trajectories ``(T, dim)``: a few sinusoids per dimension."""
    t = np.arange(T, dtype=np.float64)[:, None, None] / max(T - 1, 1)
    freq = rng.uniform(0.3, 2.0, (1, dim, 3))
    phase = rng.uniform(0, 2 * np.pi, (1, dim, 3))
    amp = rng.uniform(0.1, 0.6, (1, dim, 3))
    offset = rng.uniform(-0.5, 0.5, (dim,))
    return (np.sin(2 * np.pi * freq * t + phase) * amp).sum(axis=2).astype(np.float32) + offset.astype(
        np.float32
    )


def camera_frames(rng: np.random.Generator, path: np.ndarray, size: int, hue: float) -> np.ndarray:
    """uint8 frames ``(T, size, size, 3)``: a drifting texture and two shapes moving along ``path``.

    ``path`` ``(T, 2)`` drives the disc's centre (in [-1, 1] units of the frame); the square
    circles the frame. A fixed grain gives the frames fine detail, as camera images have.
    """
    T = len(path)
    ax = np.linspace(0.0, 1.0, size, dtype=np.float32)
    yy, xx = ax[:, None], ax[None, :]
    t = np.arange(T, dtype=np.float32)[:, None, None]
    kx, ky = rng.uniform(2, 5, 2).astype(np.float32)
    texture = np.sin(2 * np.pi * (kx * xx + 0.02 * t)) * np.cos(2 * np.pi * (ky * yy - 0.015 * t))
    base = np.stack(
        [80 + 60 * xx + 25 * texture, 70 + 70 * yy + 25 * texture, hue + 30 * (xx + yy) - 20 * texture],
        axis=-1,
    )  # (T, size, size, 3) after broadcasting
    grain = rng.normal(0.0, 6.0, (size, size, 1)).astype(np.float32)  # fixed sensor-like detail
    frames = np.broadcast_to(base + grain, (T, size, size, 3)).copy()
    centre = 0.5 + 0.35 * np.tanh(path[:, :2]).astype(np.float32)  # (T, 2) in [0.15, 0.85]
    cy, cx = centre[:, 0, None, None], centre[:, 1, None, None]
    disc = (yy - cy) ** 2 + (xx - cx) ** 2 < 0.012
    angle = 2 * np.pi * np.arange(T, dtype=np.float32) / max(T, 1) + hue / 40
    sy, sx = (0.5 + 0.3 * np.sin(angle))[:, None, None], (0.5 + 0.3 * np.cos(angle))[:, None, None]
    square = (np.abs(yy - sy) < 0.08) & (np.abs(xx - sx) < 0.08)
    frames[disc] = (230.0, 60.0, 40.0)
    frames[square] = (40.0, 90.0, 220.0)
    return np.clip(frames, 0, 255).astype(np.uint8)


def episodes(spec: SetSpec) -> Iterator[dict[str, Any]]:
    """Keyword dicts for `kinodb.Writer.add_episode`, deterministic in the spec."""
    for i, T in enumerate(episode_lengths(spec).tolist()):
        rng = np.random.default_rng([spec.seed, 2, i])
        path = trajectories(rng, T + 1, max(spec.state_dim, 2))
        states = np.ascontiguousarray(path[:-1, : spec.state_dim])
        delta = np.diff(path, axis=0)  # the motion each action causes
        reps = -(-spec.action_dim // delta.shape[1])
        actions = np.ascontiguousarray(np.tile(delta * 10.0, (1, reps))[:, : spec.action_dim])
        rewards = np.zeros(T, np.float32)
        success = bool(i % 5 != 4)
        if success:
            rewards[-1] = 1.0
        ep: dict[str, Any] = {
            "actions": actions,
            "states": states,
            "rewards": rewards,
            "timestamps": np.arange(T, dtype=np.float64) / spec.fps,
            "embodiment": spec.embodiment,
            "task": TASKS[i % len(TASKS)],
            "fps": spec.fps,
            "success": success,
        }
        if spec.cameras:
            ep["images"] = {
                cam: camera_frames(rng, path[:-1, 2 * k : 2 * k + 2] if spec.state_dim > 2 * k + 1
                                   else path[:-1, :2], spec.image_size, 40.0 + 50 * ((i + k) % 4))
                for k, cam in enumerate(spec.cameras)
            }  # fmt: skip
        yield ep


def write_kdb(spec: SetSpec, path: Path) -> Path:
    """Write the spec's ``.kdb`` to ``path`` (replacing it)."""
    schema: dict[str, Any] = {}
    if spec.state_components:
        schema["states"] = {"components": {n: [a, b] for n, a, b in spec.state_components}}
    with kinodb.Writer(
        path, mode="w", image_codec=spec.image_codec, jpeg_quality=spec.jpeg_quality, schema=schema,
        source_format="synthetic", metadata={"generator": "benchmarks/_data.py", "spec": dataclasses.asdict(spec)},
    ) as w:  # fmt: skip
        for ep in episodes(spec):
            w.add_episode(**ep)
    return path


# -- cache -------------------------------------------------------------------------------------


def _cached(data_dir: Path, spec: SetSpec, tag: str, build: Callable[[Path], dict[str, Any]]) -> SetPaths:
    """The set folder for ``spec`` and ``tag``, building it first if it has no manifest."""
    root = Path(data_dir) / f"{spec.name}-{tag}-{spec.digest()}"
    manifest = root / "manifest.json"
    if manifest.exists():
        return _paths(spec, root, json.loads(manifest.read_text()))
    root.parent.mkdir(parents=True, exist_ok=True)
    with open(root.parent / f".{root.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process may be building the same set
        if manifest.exists():
            return _paths(spec, root, json.loads(manifest.read_text()))
        return _build(spec, root, build)


def _build(spec: SetSpec, root: Path, build: Callable[[Path], dict[str, Any]]) -> SetPaths:
    manifest = root / "manifest.json"
    if root.exists():
        shutil.rmtree(root)  # an interrupted build
    root.mkdir(parents=True)
    t0 = time.perf_counter()
    print(f"[data] building {root.name} ...", file=sys.stderr, flush=True)
    facts = build(root)
    facts["seconds"] = round(time.perf_counter() - t0, 2)
    facts["spec"] = dataclasses.asdict(spec)
    tmp = root / "manifest.json.tmp"
    tmp.write_text(json.dumps(facts, indent=1))
    os.replace(tmp, manifest)
    print(f"[data] built {root.name} in {facts['seconds']} s", file=sys.stderr, flush=True)
    return _paths(spec, root, facts)


def _paths(spec: SetSpec, root: Path, facts: dict[str, Any]) -> SetPaths:
    def p(key: str) -> Path | None:
        return root / facts[key] if facts.get(key) else None

    kdb = p("kdb")
    assert kdb is not None
    return SetPaths(spec=spec, root=root, kdb=kdb, hdf5=p("hdf5"), lerobot=p("lerobot"),
                    kdb_png=p("kdb_png"), kdb_jpeg=p("kdb_jpeg"), native=p("native"),
                    video_codec=facts.get("video_codec"), extra=facts)  # fmt: skip


def exported_set(
    data_dir: Path, spec: SetSpec, *, hdf5: bool = True, lerobot: bool = True, video_codec: str = "h264"
) -> SetPaths:
    """The spec's ``.kdb`` and its exports (robomimic HDF5, LeRobot v3.0), cached."""
    tag = "x" + ("h" if hdf5 else "") + (f"l{video_codec}" if lerobot else "")

    def build(root: Path) -> dict[str, Any]:
        write_kdb(spec, root / "source.kdb")
        facts: dict[str, Any] = {"kdb": "source.kdb", "video_codec": video_codec if lerobot else None}
        if hdf5:
            kinodb.export.export(root / "source.kdb", root / "robomimic.hdf5", format="hdf5")
            facts["hdf5"] = "robomimic.hdf5"
        if lerobot:
            kinodb.export.export(root / "source.kdb", root / "lerobot", format="lerobot",
                                 video_codec=video_codec if spec.cameras else None)  # fmt: skip
            facts["lerobot"] = "lerobot"
        return facts

    return _cached(data_dir, spec, tag, build)


def training_set(data_dir: Path, spec: SetSpec, native: str, *, video_codec: str = "h264") -> SetPaths:
    """A training set: the native form (``hdf5`` or ``lerobot``) written from the spec's
    ``.kdb`` by the exporter, then ingested back with PNG and with JPEG frames, cached."""
    if native not in ("hdf5", "lerobot"):
        raise ValueError(f"native must be 'hdf5' or 'lerobot', got {native!r}")
    tag = f"t{native}{video_codec if native == 'lerobot' else ''}"

    def build(root: Path) -> dict[str, Any]:
        write_kdb(spec, root / "source.kdb")
        out = root / ("robomimic.hdf5" if native == "hdf5" else "lerobot")
        codec = video_codec if native == "lerobot" else None
        kinodb.export.export(root / "source.kdb", out, format=native, video_codec=codec)
        for codec_name in ("png", "jpeg"):
            kinodb.ingest.ingest(out, root / f"ingested-{codec_name}.kdb", image_codec=codec_name,
                                 jpeg_quality=spec.jpeg_quality, overwrite=True)  # fmt: skip
        return {"kdb": "source.kdb", native: out.name, "native": out.name, "kdb_png": "ingested-png.kdb",
                "kdb_jpeg": "ingested-jpeg.kdb", "video_codec": codec}  # fmt: skip

    return _cached(data_dir, spec, tag, build)


# -- the sets ----------------------------------------------------------------------------------

DATALOADER_STATE_DIM, DATALOADER_ACTION_DIM = 9, 7
DATALOADER_CAMERAS = ("agentview", "wrist")


def dataloader_specs(quick: bool = False) -> tuple[SetSpec, SetSpec]:
    """The state-only and the 2-camera (224x224 JPEG) specs of the loader benchmark."""
    comps = (("joint_pos", 0, 7), ("gripper_pos", 7, 9))
    common = {"state_dim": DATALOADER_STATE_DIM, "action_dim": DATALOADER_ACTION_DIM, "fps": 10.0,
              "state_components": comps}  # fmt: skip
    if quick:
        state = SetSpec("dl-state-quick", episodes=60, frames=150, **common)  # type: ignore[arg-type]
        images = SetSpec("dl-images-quick", episodes=8, frames=120, cameras=DATALOADER_CAMERAS,
                         image_size=224, **common)  # type: ignore[arg-type]  # fmt: skip
    else:
        state = SetSpec("dl-state", episodes=200, frames=150, **common)  # type: ignore[arg-type]
        images = SetSpec("dl-images", episodes=40, frames=150, cameras=DATALOADER_CAMERAS,
                         image_size=224, **common)  # type: ignore[arg-type]  # fmt: skip
    return state, images


def dataloader_sets(
    data_dir: Path = DEFAULT_DATA_DIR, *, quick: bool = False, video_codec: str = "h264"
) -> tuple[SetPaths, SetPaths]:
    """The loader benchmark's state-only and 2-camera sets, each as ``.kdb``, HDF5 and LeRobot."""
    state, images = dataloader_specs(quick)
    return (
        exported_set(data_dir, state, video_codec=video_codec),
        exported_set(data_dir, images, video_codec=video_codec),
    )


def pusht_spec(episodes: int = 200, frames: int = 150) -> SetSpec:
    """PushT-like: one 96x96 camera, state 2 (agent xy), action 2 (target xy), 10 fps."""
    return SetSpec(f"pusht-{episodes}x{frames}", episodes=episodes, frames=frames, state_dim=2,
                   action_dim=2, cameras=("image",), image_size=96, fps=10.0, seed=1,
                   image_codec="png", jpeg_quality=95, embodiment="pusht")  # fmt: skip


def libero_spec(episodes: int = 100, frames: int = 120) -> SetSpec:
    """LIBERO-like: two 128x128 cameras, state 9 (joints 7, gripper 2), action 7, 20 fps."""
    return SetSpec(f"libero-{episodes}x{frames}", episodes=episodes, frames=frames, state_dim=9,
                   action_dim=7, cameras=("agentview_rgb", "eye_in_hand_rgb"), image_size=128, fps=20.0,
                   seed=2, image_codec="png", jpeg_quality=95,
                   state_components=(("joint_states", 0, 7), ("gripper_states", 7, 9)))  # fmt: skip


def pusht_like(
    data_dir: Path = DEFAULT_DATA_DIR, *, episodes: int = 200, frames: int = 150, video_codec: str = "h264"
) -> SetPaths:
    """The PushT-like training set: LeRobot v3.0 with mp4 (``native``), plus ``kdb_png`` and ``kdb_jpeg``."""
    return training_set(data_dir, pusht_spec(episodes, frames), "lerobot", video_codec=video_codec)


def libero_like(data_dir: Path = DEFAULT_DATA_DIR, *, episodes: int = 100, frames: int = 120) -> SetPaths:
    """The LIBERO-like training set: robomimic HDF5, raw uint8 frames (``native``), plus ``kdb_png`` and ``kdb_jpeg``."""
    return training_set(data_dir, libero_spec(episodes, frames), "hdf5")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    parser.add_argument("--quick", action="store_true", help="the small loader sets only")
    parser.add_argument("--training", action="store_true", help="also the PushT-like and LIBERO-like sets")
    args = parser.parse_args(argv)
    for s in dataloader_sets(args.data_dir, quick=args.quick):
        print(s.root)
    if args.training:
        for s in (pusht_like(args.data_dir), libero_like(args.data_dir)):
            print(s.root)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
