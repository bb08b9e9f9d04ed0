"""Write ``tests/data/lerobot_written/``: a LeRobot v3.0 dataset written by LeRobot itself.

The other LeRobot fixtures are written by the tests from the documented layout; this one
is what ``lerobot`` 0.4.4's own ``LeRobotDataset.create`` / ``add_frame`` /
``save_episode`` / ``finalize`` leave on disk, so the tests catch any difference between
the documentation and the library. It holds two AV1 video cameras whose episodes share
mp4 files and roll over into a second file (small file-size limits), one ``image``
feature stored as PNG inside the data parquet, data parquet files that roll over too,
two tasks, and an extra float feature.

``expected.npz`` holds what ``LeRobotDataset`` (its PyAV video path) returns for every
frame: the arrays, the episode and frame indices, the task, and for each camera the
SHA-256 of every frame as uint8 (LeRobot's float frames times 255), with the PyAV and
libswscale versions that decoded them. The ``image`` camera's frames must equal what
was given (PNG is lossless), which this script checks. The test compares kinodb's ingest
against all of it.

Run it with the benchmark environment, which has lerobot installed (``bash
benchmarks/setup_peers.sh``)::

    PYTHONPATH=benchmarks/_shims .venv-bench/bin/python tests/data/make_lerobot_written.py
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
from pathlib import Path

import av
import numpy as np

HERE = Path(__file__).resolve().parent
OUT = HERE / "lerobot_written"
LENGTHS = (20, 27, 34, 13)
H, W = 48, 64


def top(ep: int, t: int) -> np.ndarray:
    """A bright column that moves 3 pixels a frame over a background set by the episode."""
    img = np.zeros((H, W, 3), np.uint8)
    img[..., 1] = 40 * ep
    img[:, (3 * t) % W] = 255
    return img


def side(ep: int, t: int) -> np.ndarray:
    """A bright row that moves 2 pixels a frame over a blue set by the episode."""
    img = np.zeros((H, W, 3), np.uint8)
    img[..., 2] = 255 - 40 * ep
    img[(2 * t) % H] = 200
    return img


def wrist(ep: int, t: int) -> np.ndarray:
    """A smooth gradient (small as PNG) shifted by frame and episode."""
    y, x = np.mgrid[0:H, 0:W]
    img = np.stack([(x * 4 + t) % 256, (y * 5 + 7 * ep) % 256, (x + y + t) % 256], axis=-1)
    return img.astype(np.uint8)


def write(root: Path) -> None:
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    joints = ["shoulder_pan", "shoulder_lift", "elbow_flex", "wrist_flex", "wrist_roll", "gripper"]
    video = {"dtype": "video", "shape": (H, W, 3), "names": ["height", "width", "channels"]}
    features = {
        "observation.state": {"dtype": "float32", "shape": (6,), "names": joints},
        "action": {"dtype": "float32", "shape": (6,), "names": joints},
        "observation.environment_state": {"dtype": "float32", "shape": (4,), "names": None},
        "observation.images.top": video,
        "observation.images.side": video,
        "observation.images.wrist": {
            "dtype": "image",
            "shape": (H, W, 3),
            "names": ["height", "width", "channels"],
        },
    }
    ds = LeRobotDataset.create(
        "kinodb/lerobot-written", fps=30, root=root, robot_type="koch", features=features
    )
    ds.meta.info["data_files_size_in_mb"] = 0.005  # roll the data parquet over every episode or two
    ds.meta.info["video_files_size_in_mb"] = 0.008  # episodes share an mp4, then roll over
    rng = np.random.default_rng(7)
    for ep, n in enumerate(LENGTHS):
        for t in range(n):
            ds.add_frame(
                {
                    "observation.state": rng.standard_normal(6).astype(np.float32),
                    "action": rng.standard_normal(6).astype(np.float32),
                    "observation.environment_state": rng.standard_normal(4).astype(np.float32),
                    "observation.images.top": top(ep, t),
                    "observation.images.side": side(ep, t),
                    "observation.images.wrist": wrist(ep, t),
                    "task": ["pick up the red cube", "open the drawer"][ep % 2],
                }
            )
        ds.save_episode()
    ds.finalize()


def expected(root: Path) -> dict[str, np.ndarray]:
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    ds = LeRobotDataset("kinodb/lerobot-written", root=root, video_backend="pyav")
    keys = ("action", "observation.state", "observation.environment_state")
    cams = ("top", "side", "wrist")
    out: dict[str, list[np.ndarray]] = {k: [] for k in (*keys, "episode_index", "frame_index", "task", *cams)}
    for g in range(len(ds)):
        item = ds[g]
        for k in keys:
            out[k].append(item[k].numpy())
        out["episode_index"].append(np.int64(item["episode_index"]))
        out["frame_index"].append(np.int64(item["frame_index"]))
        out["task"].append(np.str_(item["task"]))
        for c in cams:
            frame = item[f"observation.images.{c}"].numpy()  # float32 (C, H, W) in [0, 1]
            rgb = (frame.transpose(1, 2, 0) * 255).round().astype(np.uint8)
            if c == "wrist":
                ep, t = int(item["episode_index"]), int(item["frame_index"])
                assert np.array_equal(rgb, wrist(ep, t)), f"LeRobot changed PNG frame {t} of episode {ep}"
            out[c].append(
                np.frombuffer(hashlib.sha256(np.ascontiguousarray(rgb).tobytes()).digest(), np.uint8)
            )
    arrays = {k: np.stack(v) for k, v in out.items()}
    arrays["av_version"] = np.str_(av.__version__)
    arrays["swscale_version"] = np.array(av.library_versions["libswscale"], np.int64)
    return arrays


def main() -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if OUT.exists():
        shutil.rmtree(OUT)
    write(OUT)
    shutil.rmtree(OUT / "images", ignore_errors=True)  # LeRobot's PNG staging, emptied by finalize()
    arrays = expected(OUT)
    np.savez_compressed(OUT / "expected.npz", **arrays)
    files = sorted(p.relative_to(OUT).as_posix() for p in OUT.rglob("*") if p.is_file())
    print("\n".join(files))
    print(
        f"{len(arrays['frame_index'])} frames, {sum(p.stat().st_size for p in OUT.rglob('*') if p.is_file())} bytes"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
