"""benchmarks/_data.py: generation is deterministic, and the exported forms ingest back to the same arrays."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

import kinodb
import kinodb.ingest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
import _data  # noqa: E402

av = pytest.importorskip("av", reason="the LeRobot form needs PyAV (dev extra)")
h5py = pytest.importorskip("h5py", reason="the robomimic form needs h5py (dev extra)")

SPEC = _data.SetSpec(
    "harness", episodes=3, frames=12, state_dim=9, action_dim=7, cameras=("agentview", "wrist"), image_size=32,
    state_components=(("joint_pos", 0, 7), ("gripper_pos", 7, 9)),
)  # fmt: skip
ARRAYS = ("actions", "states", "rewards", "is_terminal")


def episodes_of(path: Path) -> list[dict[str, object]]:
    with kinodb.open(path) as db:
        return [db.read_episode(i) for i in range(len(db))]


def test_generation_is_deterministic(tmp_path: Path) -> None:
    a = _data.write_kdb(SPEC, tmp_path / "a.kdb")
    b = _data.write_kdb(SPEC, tmp_path / "b.kdb")
    with kinodb.open(a) as da, kinodb.open(b) as db:
        assert len(da) == len(db) == SPEC.episodes
        for i in range(len(da)):
            ea, eb = da.read_episode(i), db.read_episode(i)
            for key in ARRAYS:
                np.testing.assert_array_equal(ea[key], eb[key])
            assert ea["meta"]["task"] == eb["meta"]["task"]
            for cam in SPEC.cameras:
                T = int(ea["meta"]["num_frames"])
                assert [da.read_image_bytes(i, cam, t) for t in range(T)] == [
                    db.read_image_bytes(i, cam, t) for t in range(T)
                ]
    other = _data.write_kdb(_data.SetSpec(**{**SPEC.__dict__, "seed": 7}), tmp_path / "c.kdb")
    with kinodb.open(a) as da, kinodb.open(other) as dc:
        assert not np.array_equal(da.read_episode(0)["states"], dc.read_episode(0)["states"])


def test_content_follows_the_spec(tmp_path: Path) -> None:
    lengths = _data.episode_lengths(SPEC)
    spread = round(SPEC.frames * SPEC.jitter)
    assert len(lengths) == SPEC.episodes and (np.abs(lengths - SPEC.frames) <= spread).all()
    with kinodb.open(_data.write_kdb(SPEC, tmp_path / "s.kdb")) as db:
        assert db.episodes()["num_frames"].tolist() == lengths.tolist()
        ep = db.read_frames(1, 0, int(lengths[1]))
        assert ep["states"].shape == (lengths[1], SPEC.state_dim) and ep["states"].dtype == np.float32
        assert ep["actions"].shape == (lengths[1], SPEC.action_dim)
        frames = ep["images"]["agentview"]
        assert frames.shape == (lengths[1], 32, 32, 3)
        assert frames.std() > 10  # real content, not a flat colour
        assert np.abs(np.diff(frames.astype(np.int16), axis=0)).mean() > 0.5  # and it moves
        assert db.schema()["states"]["components"] == {"joint_pos": [0, 7], "gripper_pos": [7, 9]}


def test_sets_are_cached_until_their_manifest_goes(tmp_path: Path) -> None:
    first = _data.exported_set(tmp_path, SPEC, lerobot=False)
    stamp = first.kdb.stat().st_mtime_ns
    again = _data.exported_set(tmp_path, SPEC, lerobot=False)
    assert again.root == first.root and again.kdb.stat().st_mtime_ns == stamp
    assert first.hdf5 is not None and first.lerobot is None
    (first.root / "manifest.json").unlink()  # as after an interrupted build
    rebuilt = _data.exported_set(tmp_path, SPEC, lerobot=False)
    assert rebuilt.root == first.root and (rebuilt.root / "manifest.json").exists()


def test_hdf5_form_ingests_back_to_identical_arrays_and_pixels(tmp_path: Path) -> None:
    paths = _data.exported_set(tmp_path, SPEC, lerobot=False)
    assert paths.hdf5 is not None
    with h5py.File(paths.hdf5, "r") as f:  # the robomimic layout the peer reads
        demo = f["data/demo_0"]
        assert set(demo["obs"]) == {"joint_pos", "gripper_pos", "agentview", "wrist"}
        assert demo["obs/agentview"].dtype == np.uint8 and demo["obs/agentview"].shape[1:] == (32, 32, 3)
    back = tmp_path / "back.kdb"
    kinodb.ingest.ingest(paths.hdf5, back, image_codec="raw")
    with kinodb.open(paths.kdb) as src, kinodb.open(back) as got:
        assert len(got) == len(src)
        for i in range(len(src)):
            T = int(src.episodes()["num_frames"][i])
            a, b = src.read_frames(i, 0, T), got.read_frames(i, 0, T)
            for key in ARRAYS:
                assert a[key].dtype == b[key].dtype
                np.testing.assert_array_equal(a[key], b[key])
            for cam in SPEC.cameras:  # the HDF5 holds the decoded JPEG pixels, stored raw here
                np.testing.assert_array_equal(a["images"][cam], b["images"][cam])


def test_lerobot_form_ingests_back_to_identical_arrays(tmp_path: Path) -> None:
    paths = _data.exported_set(tmp_path, SPEC, hdf5=False)
    assert paths.lerobot is not None and paths.video_codec == "h264"
    assert sorted(p.parent.parent.name for p in paths.lerobot.glob("videos/*/chunk-*/*.mp4")) == [
        "observation.images.agentview", "observation.images.wrist",
    ]  # fmt: skip
    back = tmp_path / "back.kdb"
    kinodb.ingest.ingest(paths.lerobot, back, image_codec="png")
    with kinodb.open(paths.kdb) as src, kinodb.open(back) as got:
        assert len(got) == len(src)
        for i in range(len(src)):
            T = int(src.episodes()["num_frames"][i])
            a, b = src.read_frames(i, 0, T), got.read_frames(i, 0, T)
            for key in ("actions", "states"):
                np.testing.assert_array_equal(a[key], b[key])
            for cam in SPEC.cameras:  # H.264 is lossy: close, not equal
                diff = np.abs(a["images"][cam].astype(np.int16) - b["images"][cam].astype(np.int16))
                assert diff.mean() < 6, (i, cam, diff.mean())


def test_training_sets_hold_the_native_pixels_losslessly(tmp_path: Path) -> None:
    libero = _data.training_set(tmp_path, _data.libero_spec(episodes=2, frames=10), "hdf5")
    assert libero.native == libero.hdf5 and libero.kdb_png is not None and libero.kdb_jpeg is not None
    with h5py.File(libero.native, "r") as f, kinodb.open(libero.kdb_png) as png:
        for i in range(2):
            demo = f[f"data/demo_{i}"]
            T = demo["actions"].shape[0]
            ep = png.read_frames(i, 0, T)
            np.testing.assert_array_equal(ep["actions"], demo["actions"][()])
            state = np.concatenate([demo["obs/joint_states"][()], demo["obs/gripper_states"][()]], axis=1)
            np.testing.assert_array_equal(ep["states"], state)
            for cam in ("agentview_rgb", "eye_in_hand_rgb"):
                np.testing.assert_array_equal(ep["images"][cam], demo[f"obs/{cam}"][()])
    with kinodb.open(libero.kdb_jpeg) as jpeg:
        assert jpeg.cameras(0)["agentview_rgb"]["codec"] == "jpeg"

    pusht = _data.training_set(tmp_path, _data.pusht_spec(episodes=2, frames=10), "lerobot")
    assert pusht.native == pusht.lerobot and pusht.kdb_png is not None
    (video,) = pusht.lerobot.glob("videos/observation.images.image/chunk-*/*.mp4")
    with av.open(str(video)) as container:  # decoded here with PyAV alone, as LeRobot's pyav path does
        decoded = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
    with kinodb.open(pusht.kdb_png) as png:
        frames = np.concatenate([png.read_frames(i, 0, int(n))["images"]["image"]
                                 for i, n in enumerate(png.episodes()["num_frames"])])  # fmt: skip
        assert png.cameras(0)["image"]["codec"] == "png"
    np.testing.assert_array_equal(frames, decoded)
