"""The peer loaders, built for given windows: LeRobot's `LeRobotDataset` and robomimic's `SequenceDataset`.

Both peers are installed by ``benchmarks/setup_peers.sh`` into ``.venv-bench``; they
import torchvision, which has no build for the CPU-only torch used here, so
`enable_peer_imports` puts the PyAV-backed stand-in ``benchmarks/_shims`` on
``sys.path`` (kinodb never imports it) and keeps the Hugging Face Hub offline.

A window at global frame ``t`` is what a diffusion-style policy trains on: the
observations at ``t - obs_horizon + 1 .. t`` and the actions at ``t .. t + action_horizon - 1``,
clamped to the episode (edge padding) with ``action_is_pad`` marking the clamped actions.
Every loader here returns the same window for the same index, as a dict:

- ``state``: float32 ``(Ho, S)``;
- ``action``: float32 ``(Ha, A)``, ``action_is_pad``: bool ``(Ha,)``;
- ``images``: ``{camera: float32 (Ho, 3, H, W) in [0, 1]}``, resized to ``image_size``
  when one is given (bilinear, antialiased), when the windows have cameras.

How each peer gets there, the way its users configure it:

- LeRobot: ``delta_timestamps`` for the state, action and camera keys,
  ``video_backend="pyav"`` (torchcodec has no CPU build here), the resize as its
  ``image_transforms``; the item's keys are renamed.
- robomimic: ``frame_stack=Ho`` and ``seq_length=Ha`` with padding, as its
  diffusion-policy config does, ``hdf5_cache_mode="low_dim"`` (its advice: low-dim data in
  memory, frames read from the file). A robomimic window spans ``Ho - 1 + Ha`` frames for
  every key; the policy keeps the first ``Ho`` observations, and the last ``Ha`` actions
  line up with ``t``. The state is the robomimic obs keys concatenated; frames are
  uint8 HWC in the file and are converted and resized here.

Run ``python benchmarks/_peers.py --check`` (in ``.venv-bench``) to build a tiny set and
compare every peer's windows with the ones read straight from the ``.kdb``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
SHIMS = HERE / "_shims"


def enable_peer_imports() -> None:
    """Make ``lerobot`` and ``robomimic`` importable: the torchvision shim on ``sys.path``, Hub offline."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    if str(SHIMS) not in sys.path:
        sys.path.insert(0, str(SHIMS))
    # DataLoader workers started by spawn or forkserver re-import from PYTHONPATH.
    paths = os.environ.get("PYTHONPATH", "").split(os.pathsep)
    if str(SHIMS) not in paths:
        os.environ["PYTHONPATH"] = os.pathsep.join([str(SHIMS), *[p for p in paths if p]])


def available() -> dict[str, str | None]:
    """Each peer's version, or None when it cannot be imported here."""
    enable_peer_imports()
    out: dict[str, str | None] = {}
    for name, module in (
        ("lerobot", "lerobot.datasets.lerobot_dataset"),
        ("robomimic", "robomimic.utils.dataset"),
    ):
        try:
            __import__(module)
            top = __import__(name)
            out[name] = str(getattr(top, "__version__", "installed"))
        except Exception:  # any import failure means "not available"
            out[name] = None
    if out["lerobot"] == "installed":
        from importlib.metadata import version

        out["lerobot"] = version("lerobot")
    return out


@dataclass(frozen=True)
class Windows:
    """The windows every loader returns.

    Attributes:
        obs_horizon: observations per window (``Ho``), ending at the window's frame.
        action_horizon: actions per window (``Ha``), starting at the window's frame.
        cameras: the cameras to load (none: state and actions only).
        image_size: the side frames are resized to, or None to keep them as stored.
    """

    obs_horizon: int = 2
    action_horizon: int = 16
    cameras: tuple[str, ...] = ()
    image_size: int | None = None


class Resize:
    """Frames ``(N, C, H, W)`` float to ``(N, C, size, size)``: bilinear, antialiased (picklable)."""

    def __init__(self, size: int | None) -> None:
        self.size = size

    def __call__(self, frames: torch.Tensor) -> torch.Tensor:
        if self.size is None or frames.shape[-2:] == (self.size, self.size):
            return frames
        return F.interpolate(
            frames, size=(self.size, self.size), mode="bilinear", antialias=True, align_corners=False
        )


# -- LeRobot ---------------------------------------------------------------------------------


class LeRobotWindows(torch.utils.data.Dataset[dict[str, Any]]):
    """A `LeRobotDataset` read with the windows' ``delta_timestamps``, items renamed to the common keys."""

    def __init__(
        self, root: str | os.PathLike[str], windows: Windows, *, video_backend: str = "pyav"
    ) -> None:
        enable_peer_imports()
        from lerobot.datasets.lerobot_dataset import LeRobotDataset, LeRobotDatasetMetadata

        meta = LeRobotDatasetMetadata("kinodb/bench", root=root)
        fps = meta.fps
        obs = [(k - windows.obs_horizon + 1) / fps for k in range(windows.obs_horizon)]
        delta = {"observation.state": obs, "action": [k / fps for k in range(windows.action_horizon)]}
        self.camera_keys = {cam: f"observation.images.{cam}" for cam in windows.cameras}
        for key in self.camera_keys.values():
            if key not in meta.camera_keys:
                raise KeyError(f"{root} has no camera {key!r}; it has {meta.camera_keys}")
            delta[key] = obs
        self.dataset = LeRobotDataset(
            "kinodb/bench", root=root, delta_timestamps=delta, video_backend=video_backend,
            image_transforms=Resize(windows.image_size) if windows.cameras else None,
        )  # fmt: skip
        self.windows = windows

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = self.dataset[index]
        out = {
            "state": item["observation.state"],
            "action": item["action"],
            "action_is_pad": item["action_is_pad"],
            "episode_index": item["episode_index"],
            "frame_index": item["frame_index"],
        }
        if self.camera_keys:
            out["images"] = {cam: item[key] for cam, key in self.camera_keys.items()}
        return out


# -- robomimic -------------------------------------------------------------------------------


def robomimic_obs_keys(path: str | os.PathLike[str], cameras: tuple[str, ...]) -> list[str]:
    """The low-dim obs keys of ``path``'s first demo in state order (the exporter's ``[start, stop)``)."""
    import json

    import h5py

    with h5py.File(path, "r") as f:
        demo = f["data"][sorted(f["data"], key=lambda n: int(n.split("_")[1]))[0]]
        keys = [k for k in demo["obs"] if k not in cameras and demo["obs"][k].ndim == 2]
        schema = json.loads(f["data"].attrs.get("kinodb_dataset", "{}")).get("schema", {})
    comps = schema.get("states", {}).get("components") or {}
    return sorted(keys, key=lambda k: (comps.get(k, [1 << 30])[0], k))


class RobomimicWindows(torch.utils.data.Dataset[dict[str, Any]]):
    """robomimic's `SequenceDataset` with ``frame_stack=Ho``, ``seq_length=Ha``, items cut to the common windows."""

    def __init__(
        self, path: str | os.PathLike[str], windows: Windows, *, cache_mode: str | None = "low_dim",
        uint8: bool = False,
    ) -> None:  # fmt: skip
        """``uint8``: frames as robomimic's `SequenceDataset` returns them, uint8 (Ho, H, W, C);
        robomimic itself turns them into float CHW in its training step
        (``Algo.postprocess_batch_for_training``, on the device)."""
        if uint8 and windows.image_size is not None:
            raise ValueError("uint8 frames are handed over at their stored size (image_size=None)")
        self.uint8 = uint8
        enable_peer_imports()
        import robomimic.utils.obs_utils as ObsUtils
        from robomimic.utils.dataset import SequenceDataset

        self.low_dim = robomimic_obs_keys(path, windows.cameras)
        self.cameras = list(windows.cameras)
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            ObsUtils.initialize_obs_utils_with_obs_specs(
                {"obs": {"low_dim": self.low_dim, "rgb": self.cameras}}
            )
            self.dataset = SequenceDataset(
                hdf5_path=os.fspath(path), obs_keys=[*self.low_dim, *self.cameras], dataset_keys=["actions"],
                frame_stack=windows.obs_horizon, seq_length=windows.action_horizon, pad_frame_stack=True,
                pad_seq_length=True, get_pad_mask=True, goal_mode=None, hdf5_cache_mode=cache_mode,
                hdf5_use_swmr=True, hdf5_normalize_obs=False, filter_by_attribute=None, load_next_obs=False,
            )  # fmt: skip
        self.windows = windows
        self.resize = Resize(windows.image_size)

    def __len__(self) -> int:
        return len(self.dataset)

    def close(self) -> None:
        """Close the HDF5 file now (robomimic otherwise closes it at interpreter exit, noisily)."""
        self.dataset.close_and_delete_hdf5_handle()

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = self.dataset[index]
        ho = self.windows.obs_horizon
        obs = item["obs"]
        state = np.concatenate([obs[k][:ho] for k in self.low_dim], axis=1)
        out: dict[str, Any] = {
            "state": torch.from_numpy(np.ascontiguousarray(state, dtype=np.float32)),
            "action": torch.from_numpy(np.ascontiguousarray(item["actions"][ho - 1 :], dtype=np.float32)),
            "action_is_pad": torch.from_numpy(~item["pad_mask"][ho - 1 :, 0]),
        }
        if self.cameras and self.uint8:
            out["images"] = {
                cam: torch.from_numpy(np.ascontiguousarray(obs[cam][:ho])) for cam in self.cameras
            }
        elif self.cameras:
            out["images"] = {
                cam: self.resize(torch.from_numpy(obs[cam][:ho]).permute(0, 3, 1, 2).float().div_(255))
                for cam in self.cameras
            }
        return out


# -- stand-ins when a peer is not installed ------------------------------------------------


class H5SequenceWindows(torch.utils.data.Dataset[dict[str, Any]]):
    """robomimic's read path with h5py alone: low-dim data cached, frames sliced from the file.

    Like ``SequenceDataset(frame_stack=Ho, seq_length=Ha, hdf5_cache_mode="low_dim")``: every
    key is read over the ``Ho - 1 + Ha`` frames of the window, clamped and edge-padded, and
    the file is opened lazily in each process.
    """

    def __init__(self, path: str | os.PathLike[str], windows: Windows) -> None:
        import h5py

        self.path, self.windows = os.fspath(path), windows
        self.low_dim = robomimic_obs_keys(path, windows.cameras)
        self.resize = Resize(windows.image_size)
        self._file: Any = None
        self.demos: list[str] = []
        self.cache: list[dict[str, np.ndarray]] = []
        with h5py.File(self.path, "r") as f:
            names = sorted(f["data"], key=lambda n: int(n.split("_")[1]))
            for name in names:
                g = f["data"][name]
                entry = {k: g["obs"][k][()] for k in self.low_dim}
                entry["actions"] = g["actions"][()]
                self.cache.append(entry)
                self.demos.append(name)
        lengths = np.array([len(c["actions"]) for c in self.cache], np.int64)
        self.starts = np.concatenate([[0], np.cumsum(lengths)])

    def __len__(self) -> int:
        return int(self.starts[-1])

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_file"] = None
        return state

    def __getitem__(self, index: int) -> dict[str, Any]:
        ep = int(np.searchsorted(self.starts, index, side="right") - 1)
        t, T = index - int(self.starts[ep]), int(self.starts[ep + 1] - self.starts[ep])
        ho, ha = self.windows.obs_horizon, self.windows.action_horizon
        begin, end = max(0, t - ho + 1), min(T, t + ha)
        pad = (max(0, ho - 1 - t), max(0, t + ha - T))

        def seq(arr: Any) -> np.ndarray:
            part = np.asarray(arr[begin:end])
            return np.concatenate([part[:1]] * pad[0] + [part] + [part[-1:]] * pad[1])

        cache = self.cache[ep]
        state = np.concatenate([seq(cache[k])[:ho] for k in self.low_dim], axis=1)
        raw = np.arange(t, t + ha)
        out: dict[str, Any] = {
            "state": torch.from_numpy(np.ascontiguousarray(state, dtype=np.float32)),
            "action": torch.from_numpy(
                np.ascontiguousarray(seq(cache["actions"])[ho - 1 :], dtype=np.float32)
            ),
            "action_is_pad": torch.from_numpy(raw >= T),
        }
        if self.windows.cameras:
            if self._file is None:
                import h5py

                self._file = h5py.File(self.path, "r", swmr=True, libver="latest")
            g = self._file["data"][self.demos[ep]]["obs"]
            out["images"] = {
                cam: self.resize(torch.from_numpy(seq(g[cam])[:ho]).permute(0, 3, 1, 2).float().div_(255))
                for cam in self.windows.cameras
            }
        return out


class ParquetVideoWindows(torch.utils.data.Dataset[dict[str, Any]]):
    """LeRobot v3.0's read path with pyarrow and PyAV alone.

    Like ``LeRobotDataset`` with ``delta_timestamps`` and the ``pyav`` backend: indices
    clamped to the episode, arrays gathered per item from the memory-mapped Arrow table
    (without the ``datasets`` layer's own overhead, so faster than LeRobot), and for each camera one
    seek to the keyframe before the first frame asked for, a forward decode to the last,
    and the frames nearest each time picked.
    """

    def __init__(self, root: str | os.PathLike[str], windows: Windows) -> None:
        import json

        import pyarrow.parquet as pq

        self.root, self.windows = Path(root), windows
        info = json.loads((self.root / "meta" / "info.json").read_text())
        self.fps = float(info["fps"])
        episodes = pq.read_table(sorted((self.root / "meta" / "episodes").rglob("*.parquet"))).to_pydict()
        self.episodes = [
            dict(zip(episodes, row, strict=True)) for row in zip(*episodes.values(), strict=True)
        ]
        self.video_path = info["video_path"]
        files = sorted((self.root / "data").rglob("*.parquet"))
        columns = ["observation.state", "action", "episode_index"]
        self.table = pq.read_table(files, memory_map=True, columns=columns)
        self.episode_of = self.table.column("episode_index").to_numpy()
        self.resize = Resize(windows.image_size)

    def _take(self, column: str, rows: np.ndarray) -> torch.Tensor:
        """Rows of an Arrow column as one tensor, gathered per item as ``datasets`` does."""
        import pyarrow as pa

        values = self.table.column(column).take(pa.array(rows)).to_numpy(zero_copy_only=False)
        return torch.from_numpy(np.stack(values).astype(np.float32))

    def __len__(self) -> int:
        return len(self.episode_of)

    def __getitem__(self, index: int) -> dict[str, Any]:
        ep = self.episodes[int(self.episode_of[index])]
        lo, hi = int(ep["dataset_from_index"]), int(ep["dataset_to_index"])
        ho, ha = self.windows.obs_horizon, self.windows.action_horizon
        obs_q = np.clip(np.arange(index - ho + 1, index + 1), lo, hi - 1)
        act_raw = np.arange(index, index + ha)
        out: dict[str, Any] = {
            "state": self._take("observation.state", obs_q),
            "action": self._take("action", np.clip(act_raw, lo, hi - 1)),
            "action_is_pad": torch.from_numpy(act_raw >= hi),
        }
        if self.windows.cameras:
            times = ((obs_q - lo) / self.fps).tolist()
            out["images"] = {cam: self.resize(self._decode(ep, cam, times)) for cam in self.windows.cameras}
        return out

    def _decode(self, ep: dict[str, Any], cam: str, times: list[float]) -> torch.Tensor:
        import av

        key = f"observation.images.{cam}"
        path = self.root / self.video_path.format(
            video_key=key,
            chunk_index=ep[f"videos/{key}/chunk_index"],
            file_index=ep[f"videos/{key}/file_index"],
        )
        shifted = [ep[f"videos/{key}/from_timestamp"] + t for t in times]
        frames, pts = [], []
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            container.seek(
                round(min(shifted) / stream.time_base), backward=True, any_frame=False, stream=stream
            )
            for frame in container.decode(stream):
                ts = float(frame.pts * frame.time_base)
                frames.append(torch.from_numpy(frame.to_rgb().to_ndarray()).permute(2, 0, 1))
                pts.append(ts)
                if ts >= max(shifted):
                    break
        nearest = np.abs(np.array(shifted)[:, None] - np.array(pts)[None, :]).argmin(axis=1)
        return torch.stack([frames[k] for k in nearest]).float().div_(255)


# -- the same windows read straight from a .kdb ------------------------------------------------


def reference_window(db: Any, index: int, windows: Windows) -> dict[str, Any]:
    """Window ``index`` (a global frame) read with `kinodb.Database.read_frames`, for checks."""
    table = db.episodes()
    lengths = table["num_frames"].astype(np.int64)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    ep = int(np.searchsorted(starts, index, side="right") - 1)
    t, T = index - int(starts[ep]), int(lengths[ep])
    full = db.read_frames(ep, 0, T, cameras=list(windows.cameras))
    obs_idx = np.clip(np.arange(t - windows.obs_horizon + 1, t + 1), 0, T - 1)
    act_raw = np.arange(t, t + windows.action_horizon)
    out: dict[str, Any] = {
        "state": torch.from_numpy(np.asarray(full["states"][obs_idx], np.float32)),
        "action": torch.from_numpy(np.asarray(full["actions"][np.clip(act_raw, 0, T - 1)], np.float32)),
        "action_is_pad": torch.from_numpy(act_raw >= T),
        "episode_index": ep,
        "frame_index": t,
    }
    if windows.cameras:
        resize = Resize(windows.image_size)
        out["images"] = {
            cam: resize(torch.from_numpy(full["images"][cam][obs_idx]).permute(0, 3, 1, 2).float().div_(255))
            for cam in windows.cameras
        }
    return out


def compare(name: str, got: dict[str, Any], want: dict[str, Any], *, image_tol: float) -> list[str]:
    """What differs between two windows (arrays exactly, frames within ``image_tol`` mean abs)."""
    problems = []
    for key in ("state", "action", "action_is_pad"):
        a, b = torch.as_tensor(got[key]), torch.as_tensor(want[key])
        if a.shape != b.shape or not torch.equal(a.to(b.dtype), b):
            problems.append(f"{name}: {key} differs ({tuple(a.shape)} vs {tuple(b.shape)})")
    for cam, frames in want.get("images", {}).items():
        g = got["images"][cam]
        if g.shape != frames.shape:
            problems.append(f"{name}: images[{cam}] shape {tuple(g.shape)}, expected {tuple(frames.shape)}")
        elif float((g - frames).abs().mean()) > image_tol:
            problems.append(
                f"{name}: images[{cam}] mean abs difference {float((g - frames).abs().mean()):.4f}"
            )
    return problems


def check(data_dir: Path) -> int:
    """Build a tiny set; read windows through both peers and compare with the ``.kdb``."""
    import kinodb

    sys.path.insert(0, str(HERE))
    import _data

    spec = _data.SetSpec("peer-check", episodes=3, frames=40, state_dim=9, action_dim=7,
                         cameras=("agentview", "wrist"), image_size=64,
                         state_components=(("joint_pos", 0, 7), ("gripper_pos", 7, 9)))  # fmt: skip
    paths = _data.exported_set(data_dir, spec)
    versions = available()
    print(f"peers: {versions}")
    problems: list[str] = []
    for windows in (Windows(2, 16), Windows(2, 16, spec.cameras, 32)):
        peers: dict[str, torch.utils.data.Dataset[dict[str, Any]]] = {}
        if versions["lerobot"]:
            assert paths.lerobot is not None
            peers["lerobot"] = LeRobotWindows(paths.lerobot, windows)
        if versions["robomimic"]:
            assert paths.hdf5 is not None
            peers["robomimic"] = RobomimicWindows(paths.hdf5, windows)
        assert paths.lerobot is not None and paths.hdf5 is not None
        peers["robomimic-style"] = H5SequenceWindows(paths.hdf5, windows)
        peers["lerobot-style"] = ParquetVideoWindows(paths.lerobot, windows)
        with kinodb.open(paths.kdb) as db:
            n = db.num_frames()
            for name, ds in peers.items():
                if len(ds) != n:
                    problems.append(f"{name}: {len(ds)} windows, the .kdb has {n} frames")
                    continue
                for index in (0, 1, 5, n // 2, n - 3, n - 1):
                    tol = (
                        0.03 if name.startswith("lerobot") else 1e-6
                    )  # video is lossy; HDF5 holds decoded frames
                    problems += compare(f"{name}[{index}]", ds[index], reference_window(db, index, windows),
                                        image_tol=tol)  # fmt: skip
                loader = torch.utils.data.DataLoader(ds, batch_size=4, num_workers=2)
                batch = next(iter(loader))
                if batch["action"].shape != (4, windows.action_horizon, spec.action_dim):
                    problems.append(f"{name}: DataLoader batch action shape {tuple(batch['action'].shape)}")
                print(f"{name}: {len(ds)} windows, cameras {windows.cameras or '-'}: read and compared")
                if isinstance(ds, RobomimicWindows):
                    ds.close()
    missing = [k for k, v in versions.items() if v is None]
    for line in problems:
        print("MISMATCH", line)
    if missing:
        print(f"not importable: {', '.join(missing)} (run benchmarks/setup_peers.sh)")
    return 1 if problems or missing else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--check", action="store_true", help="build a tiny set and compare every peer's windows"
    )
    parser.add_argument(
        "--data-dir", type=Path, default=None, help="where the tiny set goes (default: a temp dir)"
    )
    args = parser.parse_args(argv)
    if not args.check:
        print(available())
        return 0
    if args.data_dir is not None:
        return check(args.data_dir)
    with tempfile.TemporaryDirectory(prefix="kinodb-peers-") as tmp:
        return check(Path(tmp))


if __name__ == "__main__":
    raise SystemExit(main())
