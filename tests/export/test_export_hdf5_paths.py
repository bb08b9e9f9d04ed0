"""The HDF5 export puts what the HDF5 ingest took out of a file back where it was:
``action_dict/KEY`` datasets in their group, and the ``data`` attrs read into the metadata."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import kinodb
from kinodb.export import export

h5py = pytest.importorskip("h5py")
from kinodb.ingest import ingest  # noqa: E402  (after h5py is known to be installed)

ACTION_DICT = {"abs_pos": 3, "abs_rot_6d": 6, "gripper": 1}


def _robocasa(path: Path) -> Path:
    """robomimic >= 0.4 / RoboCasa / MimicGen demos: action_dict/ beside actions."""
    rng = np.random.default_rng(5)
    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        data.attrs["env_args"] = json.dumps({"env_name": "PnPCounterToCab", "type": 1, "env_kwargs": {}})
        for name, T in (("demo_0", 5), ("demo_1", 4)):
            g = data.create_group(name)
            g.attrs["num_samples"] = T
            g["actions"] = rng.uniform(-1, 1, (T, 7))
            for key, width in ACTION_DICT.items():
                g[f"action_dict/{key}"] = rng.uniform(-1, 1, (T, width)).astype(np.float32)
            g["obs/robot0_eef_pos"] = rng.normal(size=(T, 3))
    return path


def test_action_dict_goes_back_into_its_group(tmp_path: Path) -> None:
    src = _robocasa(tmp_path / "robocasa.hdf5")
    kdb = tmp_path / "robocasa.kdb"
    ingest(src, kdb)
    with kinodb.open(kdb) as db:
        assert db.metadata()["hdf5"]["extra_arrays"] == {
            f"action_dict.{k}": f"action_dict/{k}" for k in ACTION_DICT
        }
    out = tmp_path / "export.hdf5"
    export(kdb, out, format="hdf5")
    with h5py.File(src, "r") as a, h5py.File(out, "r") as b:
        for demo in ("demo_0", "demo_1"):
            g = b[f"data/{demo}"]
            assert not any(name.startswith("action_dict.") for name in g), sorted(g)
            assert sorted(g["action_dict"]) == sorted(ACTION_DICT)
            for key in ACTION_DICT:
                want, got = a[f"data/{demo}/action_dict/{key}"], g[f"action_dict/{key}"]
                assert got.dtype == want.dtype and got[()].tobytes() == want[()].tobytes(), (demo, key)
    back = tmp_path / "back.kdb"  # and it reads back under the same names
    ingest(out, back)
    with kinodb.open(kdb) as x, kinodb.open(back) as y:
        for i in range(len(x)):
            for key in ACTION_DICT:
                name = f"action_dict.{key}"
                assert x.read_episode(i)[name].tobytes() == y.read_episode(i)[name].tobytes()


@pytest.mark.parametrize("path", ["action_dict/a/b", "action_dict/", "other/abs_pos", "action_dict/."])
def test_a_recorded_path_that_is_not_one_group_and_one_name_stays_at_the_top(
    tmp_path: Path, path: str
) -> None:
    kdb = tmp_path / "x.kdb"
    with kinodb.Writer(kdb, metadata={"hdf5": {"extra_arrays": {"abs_pos": path}}}) as w:
        w.add_episode(actions=np.zeros((3, 2), np.float32), extra_arrays={"abs_pos": np.ones((3, 3))})
    export(kdb, tmp_path / "x.hdf5", format="hdf5")
    with h5py.File(tmp_path / "x.hdf5", "r") as f:
        g = f["data/demo_0"]
        assert "abs_pos" in g and "action_dict" not in g and np.array_equal(g["abs_pos"][()], np.ones((3, 3)))


def _libero(path: Path, *, env_args: bool = True) -> Path:
    rng = np.random.default_rng(6)
    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        data.attrs["problem_info"] = json.dumps({"language_instruction": "turn on the stove"})
        data.attrs["bddl_file_name"] = "libero/bddl_files/libero_90/KITCHEN_SCENE3_turn_on_the_stove.bddl"
        data.attrs["macros_image_convention"] = "opengl"
        data.attrs["env_name"] = "Libero_Kitchen_Tabletop_Manipulation"
        if env_args:
            data.attrs["env_args"] = json.dumps({"env_name": "Libero", "type": 1, "env_kwargs": {}})
        g = data.create_group("demo_0")
        g["actions"] = rng.uniform(-1, 1, (3, 7))
        g["obs/ee_pos"] = rng.normal(size=(3, 3))
    return path


@pytest.mark.parametrize("env_args", [True, False])
def test_libero_data_attrs_read_into_the_metadata_are_written_back(tmp_path: Path, env_args: bool) -> None:
    src = _libero(tmp_path / "libero.hdf5", env_args=env_args)
    kdb = tmp_path / "libero.kdb"
    ingest(src, kdb)
    out = tmp_path / "export.hdf5"
    export(kdb, out, format="hdf5")
    with h5py.File(src, "r") as a, h5py.File(out, "r") as b:
        want, got = a["data"].attrs, b["data"].attrs
        assert sorted(set(want) - set(got)) == []
        for name in ("bddl_file_name", "macros_image_convention", "env_name"):
            assert got[name] == want[name], name


def test_a_file_not_ingested_from_hdf5_gets_no_data_attrs_from_its_metadata(tmp_path: Path) -> None:
    kdb = tmp_path / "x.kdb"
    with kinodb.Writer(kdb, metadata={"env_name": "Lift", "bddl_file_name": "x.bddl"}) as w:
        w.add_episode(actions=np.zeros((3, 2), np.float32))
    export(kdb, tmp_path / "x.hdf5", format="hdf5")
    with h5py.File(tmp_path / "x.hdf5", "r") as f:
        assert "bddl_file_name" not in f["data"].attrs and "env_name" not in f["data"].attrs
