"""The robomimic/LIBERO HDF5 converter, on files written by h5py itself."""

from __future__ import annotations

import json
import os
import pickle
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import kinodb
from kinodb._cli.main import main
from kinodb.errors import ConversionError
from kinodb.ingest import SourceOptions, ingest, verify
from kinodb.ingest.hdf5 import HDF5Source
from kinodb.kdb.validate import validate

h5py = pytest.importorskip("h5py")

LOW_DIM = {"robot0_eef_pos": 3, "robot0_eef_quat": 4, "robot0_gripper_qpos": 2, "object": 10}
CAMERAS = {"agentview_image": (16, 16), "robot0_eye_in_hand_image": (12, 10)}
VALID = ("demo_3", "demo_10")
LIBERO_LOW_DIM = {"ee_ori": 3, "ee_pos": 3, "ee_states": 6, "gripper_states": 2, "joint_states": 7}


def frames_of(demo: int) -> int:
    return 4 + (3 * demo) % 5


def write_robomimic(
    path: Path, *, demos: int = 13, start: int = 0, seed: int = 0, mutate: Callable[[Any], None] | None = None
) -> Path:
    """A robomimic-style file: float64 low-dim obs, two cameras, states, masks, env_args."""
    rng = np.random.default_rng(seed)
    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        env_kwargs = {"robots": ["Panda"], "control_freq": 15, "has_renderer": False}
        data.attrs["env_args"] = json.dumps({"env_name": "Lift", "type": 1, "env_kwargs": env_kwargs})
        names = [f"demo_{i}" for i in range(start, start + demos)]
        for i, name in enumerate(names):
            T = frames_of(i)
            g = data.create_group(name)
            g.attrs["num_samples"] = T
            g["actions"] = rng.uniform(-1, 1, (T, 7))
            g["states"] = rng.normal(size=(T, 12))
            rewards = np.zeros(T)
            rewards[-1] = float(i % 3 != 0)
            g["rewards"] = rewards
            g["dones"] = (np.arange(T) == T - 1).astype(np.int64)
            # As robomimic writes them: next_obs[t] = obs[t + 1], and next_obs[T - 1] the
            # observation after the final action, which obs does not hold.
            for key, dim in LOW_DIM.items():
                values = rng.normal(size=(T + 1, dim))
                g[f"obs/{key}"], g[f"next_obs/{key}"] = values[:-1], values[1:]
            for key, (h, w) in CAMERAS.items():
                frames = rng.integers(0, 256, (T + 1, h, w, 3), dtype=np.uint8)
                g[f"obs/{key}"], g[f"next_obs/{key}"] = frames[:-1], frames[1:]
        data.attrs["total"] = sum(frames_of(i) for i in range(demos))
        train = [n for n in names if n not in VALID]
        f["mask/train"] = np.array([n.encode() for n in train], dtype="S8")
        f["mask/valid"] = np.array([n.encode() for n in VALID if n in names], dtype="S8")
        if mutate is not None:
            mutate(f)
    return path


def write_libero(path: Path, *, demos: int = 4, seed: int = 1) -> Path:
    """A LIBERO-style file: problem_info, uint8 rewards/dones, 128x128 cameras, no next_obs."""
    rng = np.random.default_rng(seed)
    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        data.attrs["env_name"] = "Libero_Kitchen_Tabletop_Manipulation"
        data.attrs["problem_info"] = json.dumps({
            "problem_name": "libero_kitchen_tabletop_manipulation", "domain_name": "robosuite",
            "language_instruction": '"open the top drawer of the cabinet"',
        })  # fmt: skip
        data.attrs["macros_image_convention"] = "opengl"
        data.attrs["bddl_file_name"] = "libero_10/KITCHEN_SCENE3_open_the_top_drawer.bddl"
        data.attrs["env_args"] = json.dumps({"type": 1, "env_name": "Libero_Kitchen_Tabletop_Manipulation",
                                             "env_kwargs": {"robots": ["Panda"]}})  # fmt: skip
        for i in range(demos):
            T = 5 + i
            g = data.create_group(f"demo_{i}")
            g.attrs["num_samples"] = T
            g["actions"] = rng.uniform(-1, 1, (T, 7))
            g["states"] = rng.normal(size=(T, 20))
            g["robot_states"] = rng.normal(size=(T, 9))
            last = (np.arange(T) == T - 1).astype(np.uint8)
            g["rewards"], g["dones"] = last, last
            for key, dim in LIBERO_LOW_DIM.items():
                dtype = np.float32 if key == "ee_pos" else np.float64  # mixed dtypes: states become float64
                g[f"obs/{key}"] = rng.normal(size=(T, dim)).astype(dtype)
            for key in ("agentview_rgb", "eye_in_hand_rgb"):
                g[f"obs/{key}"] = rng.integers(0, 256, (T, 128, 128, 3), dtype=np.uint8)
    return path


@pytest.fixture
def robomimic(tmp_path: Path) -> Path:
    return write_robomimic(tmp_path / "lift.hdf5", start=1)


@pytest.fixture
def libero(tmp_path: Path) -> Path:
    return write_libero(tmp_path / "KITCHEN_SCENE3_open_the_top_drawer_demo.hdf5")


def same_bits(got: np.ndarray, want: np.ndarray, what: str = "") -> None:
    assert got.dtype == want.dtype and got.shape == want.shape, (what, got.dtype, want.dtype)
    assert got.tobytes() == want.tobytes(), what


def source_demos(path: Path) -> dict[str, dict[str, np.ndarray]]:
    """Every dataset of every demo, read with h5py: the ground truth."""
    out: dict[str, dict[str, np.ndarray]] = {}
    with h5py.File(path, "r") as f:
        for name, g in f["data"].items():
            paths: list[str] = []
            g.visit(paths.append)
            out[name] = {p: g[p][()] for p in paths if isinstance(g[p], h5py.Dataset)}
    return out


def numeric(key: str) -> int:
    return int(key.split("_")[1])


# -- detection and the source itself ---------------------------------------------------


def test_detect_by_signature(tmp_path: Path, robomimic: Path) -> None:
    assert HDF5Source.detect(str(robomimic))
    with h5py.File(tmp_path / "ub.h5", "w", userblock_size=1024) as f:
        f["x"] = 1
    assert HDF5Source.detect(str(tmp_path / "ub.h5"))
    (tmp_path / "text.hdf5").write_text("not hdf5 at all, although the name says so" * 40)
    assert not HDF5Source.detect(str(tmp_path / "text.hdf5"))
    assert not HDF5Source.detect(str(tmp_path))
    assert not HDF5Source.detect(str(tmp_path / "missing.hdf5"))


def test_import_does_not_load_h5py() -> None:
    code = "import sys, kinodb, kinodb.ingest.hdf5; print('h5py' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_demos_in_numeric_order_and_source_pickles(robomimic: Path) -> None:
    src = HDF5Source(str(robomimic), SourceOptions(images=False))
    try:
        keys = src.episodes()
        assert keys == [f"demo_{i}" for i in range(1, 14)]  # demo_2 before demo_10
        clone = pickle.loads(pickle.dumps(src))
        np.testing.assert_array_equal(clone.read("demo_10")["actions"], src.read("demo_10")["actions"])
        clone.close()
    finally:
        src.close()
        src.close()  # idempotent


# -- robomimic -------------------------------------------------------------------------


def test_robomimic_exact(tmp_path: Path, robomimic: Path) -> None:
    out = tmp_path / "lift.kdb"
    report = ingest(robomimic, out, image_codec="png")
    truth = source_demos(robomimic)
    order = sorted(truth, key=numeric)
    assert report.episodes == 13 and not report.skipped
    assert report.frames == sum(len(truth[k]["actions"]) for k in order)
    with kinodb.open(out) as db:
        comps = db.schema()["states"]["components"]
        assert comps == {"object": [0, 10], "robot0_eef_pos": [10, 13], "robot0_eef_quat": [13, 17],
                         "robot0_gripper_qpos": [17, 19]}  # fmt: skip
        for i, key in enumerate(order):
            src, ep = truth[key], db.read_episode(i)
            meta = ep["meta"]
            assert meta["source_episode"] == key and meta["source_file"] == str(robomimic)
            same_bits(ep["actions"], src["actions"], "actions")  # float64 stays float64
            states = np.concatenate([src[f"obs/{k}"] for k in sorted(LOW_DIM)], axis=1)
            same_bits(ep["states"], states, "states")
            same_bits(ep["sim_state"], src["states"], "sim_state")
            same_bits(ep["rewards"], src["rewards"], "rewards")
            same_bits(ep["is_terminal"], src["dones"] != 0, "is_terminal")
            for cam in CAMERAS:  # png: pixel-exact
                same_bits(ep["images"][cam], src[f"obs/{cam}"], cam)
            assert "next_obs" not in str(sorted(ep))  # next_obs is obs one frame later: not kept twice
            last = {k: v for k, *v in meta["hdf5.next_obs_last"]}  # its last row, which obs lacks, is kept
            assert sorted(last) == sorted([*LOW_DIM, *CAMERAS])
            assert meta["embodiment"] == "Panda" and meta["task"] == "" and meta["fps"] == 15.0
            assert meta["success"] is bool(src["rewards"][-1] > 0)
            assert meta["total_reward"] == float(src["rewards"].sum())
        info = db.dataset_info()
        assert info["source_format"] == "robomimic-hdf5"
        assert db.schema()["cameras"]["robot0_eye_in_hand_image"]["codec"] == "png"
        md = db.metadata()
        assert md["env_name"] == "Lift" and md["env_type"] == 1 and md["image_orientation"] == "as_stored"
        assert md["hdf5"]["fps_from"] == "env_args.env_kwargs.control_freq"
        assert md["hdf5"]["left_out"] == {}
        assert md["hdf5"]["next_obs"] == {k: f"next_obs.{k}" for k in sorted([*LOW_DIM, *CAMERAS])}
        assert md["hdf5"]["filter_keys"] == {"train": 11, "valid": 2}
    assert validate(out).ok


def test_filter_keys_are_queryable(tmp_path: Path, robomimic: Path) -> None:
    out = tmp_path / "lift.kdb"
    ingest(robomimic, out, images=False)
    with kinodb.open(out) as db:
        valid = db.query("filter_keys CONTAINS 'valid'")
        assert [db.read_meta(int(i))["source_episode"] for i in valid] == list(VALID)
        assert len(db.query("filter_keys CONTAINS 'train'")) == 11
        assert db.read_meta(0)["filter_keys"] == ["train"]


def test_split_reads_one_filter_key(tmp_path: Path, robomimic: Path) -> None:
    out = tmp_path / "valid.kdb"
    ingest(robomimic, out, split="valid", images=False)
    with kinodb.open(out) as db:
        assert [db.read_meta(i)["source_episode"] for i in range(len(db))] == list(VALID)
    with pytest.raises(ConversionError, match="no filter key mask/test; filter keys: train, valid"):
        ingest(robomimic, tmp_path / "x.kdb", split="test")


def test_an_empty_filter_key_is_named_as_empty_not_as_absent(tmp_path: Path) -> None:
    # robomimic's split_train_val.py on 5 demos: int(0.1 * 5) = 0 validation demos, and
    # create_hdf5_filter_key writes np.array([], dtype="S") as mask/valid.
    def small_split(f: Any) -> None:
        del f["mask/train"], f["mask/valid"]
        f["mask/train"] = np.array([f"demo_{i}".encode() for i in range(5)], dtype="S8")
        f["mask/valid"] = np.array([], dtype="S")
        f["mask/stale"] = np.array([b"demo_99"], dtype="S8")  # lists a demo the file does not hold

    path = write_robomimic(tmp_path / "small.hdf5", demos=5, mutate=small_split)
    with pytest.raises(
        ConversionError,
        match=r"small\.hdf5: filter key mask/valid exists but lists no demos \(the dataset is empty\); "
        r"filter keys that list demos: train \(5\): pick one with split, or leave split out",
    ):
        ingest(path, tmp_path / "v.kdb", split="valid")
    with pytest.raises(
        ConversionError, match=r"mask/stale exists but lists no demos \(the dataset names 1 demos"
    ):
        ingest(path, tmp_path / "v.kdb", split="stale")
    with pytest.raises(ConversionError, match=r"no filter key mask/test; filter keys: stale, train, valid"):
        ingest(path, tmp_path / "v.kdb", split="test")
    assert not (tmp_path / "v.kdb").exists()
    ingest(path, tmp_path / "all.kdb", images=False)
    with kinodb.open(tmp_path / "all.kdb") as db:
        assert db.metadata()["hdf5"]["filter_keys"] == {"stale": 0, "train": 5, "valid": 0}


def test_a_filter_key_naming_absent_demos_is_warned_about_once_naming_them(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    def stale(f: Any) -> None:
        missing = [f"demo_{i}".encode() for i in range(90, 95)]
        del f["mask/train"]
        f["mask/train"] = np.array([b"demo_0", *missing], dtype="S8")
        f["mask/ids"] = np.array([0, 1], dtype=np.int64)  # demo numbers, not names

    path = write_robomimic(tmp_path / "stale.hdf5", demos=3, mutate=stale)
    with caplog.at_level("WARNING", logger="kinodb.ingest.hdf5"):
        ingest(path, tmp_path / "x.kdb", images=False, verify=True)  # the source is opened three times
    said = [r.getMessage() for r in caplog.records if "mask/" in r.getMessage()]
    assert len(said) == 2, said
    ids, train = sorted(said)
    assert "filter key mask/ids holds int64 entries (0, 1), not demo names as text" in ids
    assert "rewrite it with the demos' names" in ids
    assert (
        "mask/train lists 5 entries that data/ does not hold ('demo_90', 'demo_91', 'demo_92' and 2 more)"
        in train
    )
    assert "rewrite mask/train without them" in train


def test_selection_and_max_episodes(tmp_path: Path) -> None:
    path = write_robomimic(tmp_path / "zero.hdf5")  # numbered from demo_0
    ingest(path, tmp_path / "sel.kdb", episodes="0-3,7", images=False)
    ingest(path, tmp_path / "max.kdb", max_episodes=3, images=False)
    ingest(path, tmp_path / "both.kdb", episodes=[12, 2, 11], max_episodes=2, images=False)
    for name, want in (("sel", [0, 1, 2, 3, 7]), ("max", [0, 1, 2]), ("both", [12, 2])):
        with kinodb.open(tmp_path / f"{name}.kdb") as db:
            assert [db.read_meta(i)["source_episode"] for i in range(len(db))] == [f"demo_{k}" for k in want]


def test_state_keys_choose_and_order(tmp_path: Path, robomimic: Path) -> None:
    out = tmp_path / "keys.kdb"
    assert main(["ingest", str(robomimic), "-o", str(out), "-q", "--no-images",
                 "--state-keys", "robot0_gripper_qpos,obs/robot0_eef_pos"]) == 0  # fmt: skip
    truth = source_demos(robomimic)["demo_5"]
    with kinodb.open(out) as db:
        assert db.schema()["states"]["components"] == {
            "robot0_gripper_qpos": [0, 2],
            "robot0_eef_pos": [2, 5],
        }
        want = np.concatenate([truth["obs/robot0_gripper_qpos"], truth["obs/robot0_eef_pos"]], axis=1)
        same_bits(db.read_array(4, "states"), want)
        # the other low-dim keys are not dropped: each is an extra array, bit for bit
        md = db.metadata()["hdf5"]
        for key in ("object", "robot0_eef_quat"):
            same_bits(db.read_array(4, key), truth[f"obs/{key}"], key)
            assert md["extra_arrays"][key] == f"obs/{key}"
            assert md["kept_apart"][key].startswith(
                "not among the chosen state keys (state_keys, --state-keys)"
            )
        assert "obs/object" not in md["left_out"]
    with pytest.raises(ConversionError, match="'agentview_image' is not a low-dim obs/ dataset"):
        ingest(robomimic, tmp_path / "bad.kdb", state_keys=["agentview_image"])
    assert not (tmp_path / "bad.kdb").exists()


def test_action_key_is_refused_for_hdf5(
    tmp_path: Path, robomimic: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(
        ValueError,
        match=r"action_key names the actions of LeRobot, RLDS and zarr datasets; .* is read as hdf5",
    ):
        ingest(robomimic, tmp_path / "a.kdb", action_key="act")
    assert main(["ingest", str(robomimic), "-o", str(tmp_path / "a.kdb"), "-q", "--action-key", "act"]) == 2
    assert "leave it out" in capsys.readouterr().err
    assert not (tmp_path / "a.kdb").exists()
    from kinodb.ingest import verify

    ingest(robomimic, tmp_path / "b.kdb", images=False)
    with pytest.raises(ValueError, match=r"is read as hdf5, whose converter takes no action_key"):
        verify(robomimic, tmp_path / "b.kdb", action_key="act")


def test_state_keys_typed_with_spaces_are_stripped(
    tmp_path: Path, robomimic: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "spaced.kdb"
    assert main(["ingest", str(robomimic), "-o", str(out), "-q", "--no-images",
                 "--state-keys", " robot0_eef_pos, robot0_eef_quat ,obs/robot0_gripper_qpos,"]) == 0  # fmt: skip
    with kinodb.open(out) as db:
        assert db.schema()["states"]["components"] == {
            "robot0_eef_pos": [0, 3],
            "robot0_eef_quat": [3, 7],
            "robot0_gripper_qpos": [7, 9],
        }
    assert main(["ingest", str(robomimic), "-o", str(tmp_path / "none.kdb"), "-q", "--no-images",
                 "--state-keys", " , "]) == 1  # fmt: skip
    err = capsys.readouterr().err
    assert "name no key" in err and "robot0_eef_pos" in err
    assert not (tmp_path / "none.kdb").exists()


def test_dtype_float32_and_no_images(tmp_path: Path, robomimic: Path) -> None:
    out = tmp_path / "f32.kdb"
    assert main(["ingest", str(robomimic), "-o", str(out), "-q", "--dtype", "float32", "--no-images"]) == 0
    truth = source_demos(robomimic)["demo_1"]
    with kinodb.open(out) as db:
        ep = db.read_episode(0)
        same_bits(ep["actions"], truth["actions"].astype(np.float32))
        same_bits(ep["sim_state"], truth["states"].astype(np.float32))
        assert ep["states"].dtype == ep["rewards"].dtype == np.float32
        assert ep["images"] == {} and db.schema()["cameras"] == {}
        assert db.metadata()["hdf5"]["cameras"] == []


# -- LIBERO ----------------------------------------------------------------------------


def test_libero(tmp_path: Path, libero: Path) -> None:
    out = tmp_path / "libero.kdb"
    ingest(libero, out, image_codec="raw")
    truth = source_demos(libero)
    with kinodb.open(out) as db:
        assert db.dataset_info()["source_format"] == "libero-hdf5"
        md = db.metadata()
        assert md["image_orientation"] == "as_stored" and md["macros_image_convention"] == "opengl"
        assert md["hdf5"]["fps_from"] == "default (LIBERO)" and "next_obs" not in md["hdf5"]["left_out"]
        assert md["problem_info"]["problem_name"] == "libero_kitchen_tabletop_manipulation"
        for i in range(len(db)):
            src, ep = truth[f"demo_{i}"], db.read_episode(i)
            meta = ep["meta"]
            assert meta["task"] == "open the top drawer of the cabinet"  # quotes stripped
            assert meta["embodiment"] == "Panda" and meta["fps"] == 20.0 and meta["success"] is True
            same_bits(ep["rewards"], src["rewards"].astype(np.float32), "rewards")  # uint8 -> float32
            same_bits(ep["is_terminal"], src["dones"] == 1, "dones")
            states = np.concatenate(
                [src[f"obs/{k}"].astype(np.float64) for k in sorted(LIBERO_LOW_DIM)], axis=1
            )
            same_bits(ep["states"], states, "states")  # the float32 key is widened exactly
            same_bits(ep["robot_states"], src["robot_states"], "robot_states")
            for cam in ("agentview_rgb", "eye_in_hand_rgb"):
                same_bits(ep["images"][cam], src[f"obs/{cam}"], cam)


def test_export_puts_obs_arrays_back_and_names_what_it_drops(tmp_path: Path) -> None:
    def depth_and_model(f: Any) -> None:
        for k, g in enumerate(f["data"].values()):
            T = g["actions"].shape[0]
            g["obs/agentview_depth"] = np.random.default_rng(k).random((T, 16, 16, 1), dtype=np.float32)
            g.attrs["model_file"] = "<mujoco model='m'/>"

    src = write_robomimic(tmp_path / "depth.hdf5", demos=3, mutate=depth_and_model)
    kdb = tmp_path / "depth.kdb"
    ingest(src, kdb, image_codec="png")
    with kinodb.open(kdb) as db:
        assert db.metadata()["hdf5"]["extra_arrays"]["agentview_depth"] == "obs/agentview_depth"
        assert "MJCF XML" in db.metadata()["hdf5"]["left_out"]["attrs/model_file"]
    out = tmp_path / "back.hdf5"
    kinodb.export.export(kdb, out, format="hdf5")
    truth = source_demos(src)
    with h5py.File(out, "r") as f:
        for k in range(3):
            g = f[f"data/demo_{k}"]
            assert "agentview_depth" not in g  # robomimic reads observations under obs/ only
            same_bits(g["obs/agentview_depth"][()], truth[f"demo_{k}"]["obs/agentview_depth"], "depth")
    again = tmp_path / "again.kdb"
    ingest(out, again, image_codec="png")
    with kinodb.open(kdb) as a, kinodb.open(again) as b:
        same_bits(b.read_array(2, "agentview_depth"), a.read_array(2, "agentview_depth"), "depth")


def test_export_gives_state_keys_back_their_dtype_and_shape(tmp_path: Path) -> None:
    def mixed(f: Any) -> None:
        for k, g in enumerate(f["data"].values()):
            T = g["actions"].shape[0]
            rng = np.random.default_rng(k)
            g["obs/contact"] = rng.integers(-5, 5, T)  # (T,) int64
            g["obs/joint_pos"] = rng.normal(size=(T, 7)).astype(np.float32)
            g["obs/rotmat"] = rng.normal(size=(T, 3, 3)).astype(np.float32)  # 3-D: an extra array

    src = write_robomimic(tmp_path / "mixed.hdf5", demos=3, mutate=mixed)
    truth = source_demos(src)
    # by default the int64 key stays apart (float64 states could round it); named in
    # state_keys, it joins the states, whose float64 holds these small values exactly
    chosen = ["contact", "joint_pos", *LOW_DIM]
    for name, keys in (("apart", None), ("chosen", chosen)):
        kdb = tmp_path / f"{name}.kdb"
        ingest(src, kdb, images=False, state_keys=keys)
        with kinodb.open(kdb) as db:
            assert db.read_episode(0)["states"].dtype == np.float64  # widened exactly
            layout = db.metadata()["hdf5"]["state_layout"]
            assert ("contact" in layout) == (keys is not None)
            if keys is None:
                same_bits(db.read_array(1, "contact"), truth["demo_1"]["obs/contact"], "contact apart")
            else:
                assert layout["contact"] == {"dtype": "int64", "shape": []}
        out = tmp_path / f"{name}.hdf5"
        kinodb.export.export(kdb, out, format="hdf5")
        with h5py.File(out, "r") as f:
            for k in range(3):
                g, want = f[f"data/demo_{k}/obs"], truth[f"demo_{k}"]
                for key in ("contact", "joint_pos", "rotmat", *LOW_DIM):
                    same_bits(g[key][()], want[f"obs/{key}"], key)
    cast = tmp_path / "f32.kdb"
    ingest(src, cast, images=False, dtype="float32", state_keys=chosen)
    kinodb.export.export(cast, tmp_path / "f32.hdf5", format="hdf5")
    with h5py.File(tmp_path / "f32.hdf5", "r") as f:  # the chosen dtype stays; the shapes come back
        assert f["data/demo_0/obs/object"].dtype == np.float32 == f["data/demo_0/obs/contact"].dtype
        assert f["data/demo_0/obs/contact"].shape == truth["demo_0"]["obs/contact"].shape


STAMP0 = 1_700_000_000_123_456_789  # nanoseconds since the epoch: beyond float64's 2**53


def write_stamped(path: Path, *, stamps: Callable[[int, int], np.ndarray] | None = None) -> Path:
    """Demos whose obs hold float32 positions and an int64 nanosecond timestamp per frame."""
    rng = np.random.default_rng(5)
    with h5py.File(path, "w") as f:
        for k in range(3):
            T = 4 + k
            g = f.create_group(f"data/demo_{k}")
            g["actions"] = rng.normal(size=(T, 2)).astype(np.float32)
            g["obs/eef_pos"] = rng.normal(size=(T, 3)).astype(np.float32)
            # distinct stamps 1 ns apart, which float64 (spacing 256 here) would merge
            g["obs/stamp_ns"] = STAMP0 + 10**9 * k + np.arange(T) if stamps is None else stamps(k, T)
    return path


def test_an_int64_obs_key_stays_exact_apart_from_float_states(tmp_path: Path) -> None:
    src = write_stamped(tmp_path / "stamped.hdf5")
    truth = source_demos(src)
    out = tmp_path / "stamped.kdb"
    report = ingest(src, out)
    assert any("obs/stamp_ns is not part of the states" in n and "2**53" in n for n in report.notes)
    assert "note: obs/stamp_ns is not part of the states" in report.summary()
    with kinodb.open(out) as db:
        assert db.schema()["states"]["components"] == {"eef_pos": [0, 3]}
        assert "stamp_ns" in db.metadata()["hdf5"]["kept_apart"]
        assert db.metadata()["hdf5"]["extra_arrays"]["stamp_ns"] == "obs/stamp_ns"
        for k in range(3):
            same_bits(db.read_array(k, "states"), truth[f"demo_{k}"]["obs/eef_pos"], "states")  # float32 kept
            same_bits(db.read_array(k, "stamp_ns"), truth[f"demo_{k}"]["obs/stamp_ns"], "stamp_ns")
    assert verify(src, out).ok
    back = tmp_path / "back.hdf5"  # the export puts it back where it was, with its dtype
    kinodb.export.export(out, back, format="hdf5")
    with h5py.File(back, "r") as f:
        same_bits(f["data/demo_2/obs/stamp_ns"][()], truth["demo_2"]["obs/stamp_ns"], "exported")


def test_state_keys_take_an_int64_key_only_when_its_values_are_exact(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = write_stamped(tmp_path / "stamped.hdf5")
    out = tmp_path / "chosen.kdb"
    message = (
        "obs/stamp_ns holds 1700000000123456789 at frame 0 (int64), which the float64 states cannot hold "
        "exactly; leave it out of {} to keep the states exact"
    )
    with pytest.raises(ConversionError, match=re.escape(f"{src}: demo_0: {message.format('state_keys')}")):
        ingest(src, out, state_keys=["eef_pos", "stamp_ns"])
    assert not out.exists()
    args = ["ingest", str(src), "-o", str(out), "--state-keys", "eef_pos,stamp_ns", "-q"]
    assert main(args) == 1 and message.format("--state-keys") in capsys.readouterr().err
    # small counts fit float64: named in state_keys, they join the states, exactly
    small = write_stamped(tmp_path / "small.hdf5", stamps=lambda k, T: np.arange(T) + 2**53 - T)
    ingest(small, out, state_keys=["eef_pos", "stamp_ns"])
    truth = source_demos(small)
    with kinodb.open(out) as db:
        assert db.schema()["states"]["components"] == {"eef_pos": [0, 3], "stamp_ns": [3, 4]}
        states = db.read_array(2, "states")
        assert states.dtype == np.float64
        assert states[:, 3].astype(np.int64).tolist() == truth["demo_2"]["obs/stamp_ns"].tolist()
    assert verify(small, out).ok


def test_a_truncated_hdf5_file_is_named_as_such(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = write_robomimic(tmp_path / "lift.hdf5", demos=3)
    data = src.read_bytes()
    src.write_bytes(data[: len(data) // 2])  # an interrupted copy
    out = tmp_path / "out.kdb"
    with pytest.raises(ConversionError) as caught:
        ingest(src, out)
    message = str(caught.value)
    assert message.startswith(f"{src}: a truncated HDF5 file: it starts as HDF5, but h5py cannot open it")
    assert "copy it again" in message and f"the file has {len(data) // 2} bytes" in message
    assert "it is an HDF5 file" not in message  # no hint that contradicts the message
    assert main(["ingest", str(src), "-o", str(out), "-q"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "a truncated HDF5 file" in err


# Holds an HDF5 file open for writing, as a notebook still appending demos does.
_HOLD = """
import sys, time, h5py
f = h5py.File(sys.argv[1], "a")
open(sys.argv[2], "w").close()
time.sleep(120)
"""


@pytest.mark.integration
def test_a_file_another_process_writes_is_named_as_locked_not_damaged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("HDF5_USE_FILE_LOCKING", raising=False)  # HDF5's default: files are locked
    src, ready = write_robomimic(tmp_path / "lift.hdf5", demos=3), tmp_path / "ready"
    env = {k: v for k, v in os.environ.items() if k != "HDF5_USE_FILE_LOCKING"}
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(src), str(ready)], env=env)
    try:
        deadline = time.monotonic() + 60
        while not ready.exists():
            assert holder.poll() is None and time.monotonic() < deadline, "the writer did not open the file"
            time.sleep(0.01)
        out = tmp_path / "out.kdb"
        with pytest.raises(ConversionError) as caught:
            ingest(src, out)
        message = str(caught.value)
        assert message.startswith(
            f"{src}: locked by another process, which has it open for writing (still being written?); close it "
            "there and try again, or, if nothing writes to it any more, read it without HDF5's file locking: set "
            "HDF5_USE_FILE_LOCKING=FALSE ("
        ), message
        assert "damaged" not in message and "copy it again" not in message
        assert main(["ingest", str(src), "-o", str(out), "-q"]) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "locked by another process" in err
        assert not out.exists()
    finally:
        holder.kill()
        holder.wait()


def _same_frames(a: Path, b: Path) -> None:
    with kinodb.open(a) as x, kinodb.open(b) as y:
        same_bits(
            y.read_episode(1)["images"]["agentview_rgb"], x.read_episode(1)["images"]["agentview_rgb"], "rgb"
        )


def test_an_export_of_upright_libero_frames_is_flipped_as_its_source(
    tmp_path: Path, libero: Path, caplog: pytest.LogCaptureFixture
) -> None:
    upright = tmp_path / "upright.kdb"
    ingest(libero, upright, image_codec="png", flip_images=True)
    exported = tmp_path / "upright.hdf5"
    kinodb.export.export(upright, exported, format="hdf5")  # frames turned back, as LIBERO stores them
    caplog.clear()
    with caplog.at_level("WARNING"):
        ingest(libero, tmp_path / "stored.kdb", image_codec="png")
    assert "pass flip_images" in caplog.text  # LIBERO's own file: frames upside down
    caplog.clear()
    with caplog.at_level("WARNING"):
        ingest(exported, tmp_path / "stored_again.kdb", image_codec="png")
    assert "pass flip_images" in caplog.text  # and so is its export
    ingest(exported, tmp_path / "again.kdb", image_codec="png", flip_images=True)
    _same_frames(upright, tmp_path / "again.kdb")


def test_an_export_kept_upright_is_not_flipped_again(
    tmp_path: Path, libero: Path, caplog: pytest.LogCaptureFixture
) -> None:
    upright = tmp_path / "upright.kdb"
    ingest(libero, upright, image_codec="png", flip_images=True)
    exported = tmp_path / "upright.hdf5"
    kinodb.export.export(upright, exported, format="hdf5", flip_images=False)
    caplog.clear()
    with caplog.at_level("WARNING"):
        ingest(exported, tmp_path / "again.kdb", image_codec="png")
    assert "flip_images" not in caplog.text  # the export's frames are upright already
    _same_frames(upright, tmp_path / "again.kdb")


def test_flip_images_rotates_180(tmp_path: Path, libero: Path) -> None:
    out = tmp_path / "flipped.kdb"
    assert main(["ingest", str(libero), "-o", str(out), "-q", "--flip-images", "--image-codec", "png"]) == 0
    truth = source_demos(libero)["demo_2"]
    with kinodb.open(out) as db:
        assert db.metadata()["image_orientation"] == "rotated_180"
        got = db.read_episode(2)["images"]["agentview_rgb"]
        same_bits(got, truth["obs/agentview_rgb"][:, ::-1, ::-1].copy())
        same_bits(got[0], truth["obs/agentview_rgb"][0][::-1, ::-1].copy())


def test_variants_1d_obs_depth_ep_meta_success(tmp_path: Path) -> None:
    path, T = tmp_path / "variants.hdf5", 6
    rng = np.random.default_rng(3)
    with h5py.File(path, "w") as f:
        f.create_group("data").attrs["env_args"] = json.dumps({"env_name": "Stack", "env_type": 1,
                                                  "env_kwargs": {"robots": ["Panda", "Sawyer"]}})  # fmt: skip
        for i in range(2):
            g = f.create_group(f"data/demo_{i}")
            g["actions"] = rng.normal(size=(T, 2)).astype(np.float32)
            g["obs/gripper"] = rng.normal(size=T).astype(np.float32)  # 1-D: one state column
            g["obs/joint_pos"] = rng.normal(size=(T, 3)).astype(np.float32)
            g["obs/front_depth"] = rng.integers(0, 256, (T, 8, 8, 1), dtype=np.uint8)  # 1-channel camera
            g["obs/front_depth_m"] = rng.uniform(0, 2, (T, 8, 8, 1)).astype(np.float32)  # extra array
            g["obs/label"] = np.array([b"x"] * T)  # not numeric: left out, and said so
            g["action_dict/abs_pos"] = rng.normal(size=(T, 3))
            g.attrs["ep_meta"] = json.dumps({"lang": f"stack block {i}", "layout": 3})
            g.attrs["success"] = i == 1
    out = tmp_path / "variants.kdb"
    ingest(path, out, image_codec="png", flip_images=True)
    with h5py.File(path, "r") as f, kinodb.open(out) as db:
        assert db.schema()["states"]["components"] == {"gripper": [0, 1], "joint_pos": [1, 4]}
        assert db.schema()["cameras"]["front_depth"]["channels"] == 1
        md = db.metadata()
        assert md["env_type"] == 1 and md["hdf5"]["fps_from"] == "robosuite default control_freq (20)"
        assert md["hdf5"]["left_out"]["obs/label"].startswith("dtype |S1 is not numeric")
        for i in range(2):
            g, ep = f[f"data/demo_{i}"], db.read_episode(i)
            want = np.concatenate([g["obs/gripper"][()][:, None], g["obs/joint_pos"][()]], axis=1)
            same_bits(ep["states"], want, "states")
            same_bits(ep["images"]["front_depth"], g["obs/front_depth"][()][:, ::-1, ::-1].copy())
            same_bits(ep["front_depth_m"], g["obs/front_depth_m"][()][:, ::-1, ::-1].copy())
            same_bits(ep["action_dict.abs_pos"], g["action_dict/abs_pos"][()])
            meta = ep["meta"]
            assert meta["task"] == f"stack block {i}" and meta["success"] is (i == 1)
            assert meta["embodiment"] == "Panda+Sawyer" and meta["fps"] == 20.0  # robosuite's default rate
            assert meta["total_reward"] is None and "filter_keys" not in meta


def test_ep_meta_labels_and_timestamps(tmp_path: Path) -> None:
    path, T = tmp_path / "labels.hdf5", 3
    metas = [{"lang": "a", "success": None, "embodiment": "ur5", "fps": 15}, {"success": True}, {}]
    with h5py.File(path, "w") as f:
        f.create_group("data").attrs["env_args"] = json.dumps(
            {"env_name": "Lift", "type": 1, "env_kwargs": {"robots": "Panda", "control_freq": 20}}
        )
        for i, ep_meta in enumerate(metas):
            g = f.create_group(f"data/demo_{i}")
            g["actions"] = np.zeros((T, 2))
            g["rewards"] = np.array([0.0, 0.0, 0.5])
            g["timestamps"] = np.arange(T) / 20.0 + i
            g.attrs["ep_meta"] = json.dumps(ep_meta)
    out = tmp_path / "labels.kdb"
    ingest(path, out)
    with kinodb.open(out) as db:
        got = [db.read_meta(i) for i in range(3)]
        assert [(m["task"], m["embodiment"], m["fps"], m["success"]) for m in got] == [
            ("a", "ur5", 15.0, None),  # ep_meta wins; its null success means unknown
            ("", "Panda", 20.0, True),
            ("", "Panda", 20.0, True),  # no explicit success: the final reward is positive
        ]
        same_bits(db.read_episode(2)["timestamps"], np.arange(T) / 20.0 + 2)
        assert "demo.timestamps" not in db.schema()["arrays"]
    ingest(path, out, fps=30.0, embodiment="franka", task="t", overwrite=True)
    with kinodb.open(out) as db:  # the caller's values win over every source value
        assert {(m["task"], m["embodiment"], m["fps"]) for m in map(db.read_meta, range(3))} == {
            ("t", "franka", 30.0)
        }


# -- workers ---------------------------------------------------------------------------


@pytest.mark.integration
def test_workers_give_identical_content(tmp_path: Path, robomimic: Path) -> None:
    one, two = tmp_path / "one.kdb", tmp_path / "two.kdb"
    ingest(robomimic, one, workers=1, image_codec="jpeg")
    ingest(robomimic, two, workers=2, image_codec="jpeg")
    with kinodb.open(one) as a, kinodb.open(two) as b:
        assert len(a) == len(b) == 13 and a.schema() == b.schema() and a.metadata() == b.metadata()
        for i in range(len(a)):
            ea, eb = a.read_episode_actions_only(i), b.read_episode_actions_only(i)
            assert ea["meta"] == eb["meta"] and sorted(ea) == sorted(eb)
            for name in ea:
                if name != "meta":
                    same_bits(ea[name], eb[name], name)
            for cam in CAMERAS:
                T = ea["meta"]["num_frames"]
                assert [a.read_image_bytes(i, cam, t) for t in range(T)] == [
                    b.read_image_bytes(i, cam, t) for t in range(T)
                ]


# -- errors ----------------------------------------------------------------------------


def drop_actions(f: Any) -> None:
    del f["data/demo_3/actions"]


def short_obs(f: Any) -> None:
    del f["data/demo_5/obs/robot0_eef_pos"]
    f["data/demo_5/obs/robot0_eef_pos"] = np.zeros((2, 3))


def missing_obs(f: Any) -> None:
    del f["data/demo_7/obs/agentview_image"]


BROKEN = {
    "missing actions": (drop_actions, "demo_3", "actions is missing"),
    "length mismatch": (short_obs, "demo_5", "obs/robot0_eef_pos has 2 rows, actions has"),
    "missing key": (missing_obs, "demo_7", "obs/agentview_image is missing; 12 of 13 demos hold it"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_broken_demo_raises_naming_file_demo_key(
    tmp_path: Path, case: str, capsys: pytest.CaptureFixture[str]
) -> None:
    mutate, demo, message = BROKEN[case]
    path = write_robomimic(tmp_path / "broken.hdf5", mutate=mutate)
    out = tmp_path / "out.kdb"
    with pytest.raises(ConversionError) as err:
        ingest(path, out, image_codec="raw")
    assert str(path) in str(err.value) and demo in str(err.value) and message in str(err.value)
    assert not out.exists() and list(tmp_path.glob(".out.kdb*")) == []
    assert main(["ingest", str(path), "-o", str(out), "-q", "--image-codec", "raw"]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and demo in lines[0] and message in lines[0]
    assert not out.exists()


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_broken_demo_is_skipped_and_reported(
    tmp_path: Path, case: str, capsys: pytest.CaptureFixture[str]
) -> None:
    mutate, demo, message = BROKEN[case]
    path = write_robomimic(tmp_path / "broken.hdf5", mutate=mutate)
    out = tmp_path / "out.kdb"
    assert (
        main(["ingest", str(path), "-o", str(out), "-q", "--on-error", "skip", "--image-codec", "raw"]) == 0
    )
    captured = capsys.readouterr()
    assert f"skipped {demo}: " in captured.out and message in captured.out
    assert "1 episode skipped" in captured.err
    with kinodb.open(out) as db:
        assert len(db) == 12
        assert demo not in [db.read_meta(i)["source_episode"] for i in range(len(db))]
        (skipped,) = db.metadata()["ingest"]["skipped"]
        assert skipped["episode"] == demo and message in skipped["reason"]


def test_not_hdf5_and_no_data_group(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = tmp_path / "notes.hdf5"
    text.write_text("hello")
    empty = tmp_path / "empty.hdf5"
    with h5py.File(empty, "w") as f:
        f["observations/qpos"] = np.zeros((3, 2))
    nodemos = tmp_path / "nodemos.hdf5"
    with h5py.File(nodemos, "w") as f:
        f.create_group("data/episode_a")
    cases = ((text, "not a readable HDF5 file"), (empty, "no 'data' group"),
             (nodemos, "data group holds no demo_N groups (it holds: episode_a)"))  # fmt: skip
    for path, message in cases:
        out = tmp_path / "out.kdb"
        with pytest.raises(ConversionError, match=re.escape(message)):
            ingest(path, out, format="hdf5")
        assert main(["ingest", str(path), "-o", str(out), "-F", "hdf5", "-q"]) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and str(path) in err and message in err
        assert not out.exists()


def test_cli_format_auto_detects_hdf5(
    tmp_path: Path, libero: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "auto.kdb"
    assert main(["ingest", str(libero), "-o", str(out), "--format", "auto", "-q", "--no-images"]) == 0
    assert "ingested 4 episodes" in capsys.readouterr().out
    with kinodb.open(out) as db:
        assert db.dataset_info()["source_format"] == "libero-hdf5"
        assert db.metadata()["ingest"]["format"] == "hdf5"
