"""The HDF5 converter keeps the attributes of the demos and of ``data``, fills missing rewards
in the file's reward dtype, and says how to get past a broken demo; on files h5py writes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import kinodb
from kinodb._cli.main import main
from kinodb.errors import ConversionError
from kinodb.export import export

h5py = pytest.importorskip("h5py")
from kinodb.ingest import ingest, verify  # noqa: E402  (after h5py is known to be installed)

PROVENANCE = ("source_file", "source_episode", "origin_file", "origin_episode")
EP_META = [
    {
        "lang": "pick the apple",
        "layout_id": 3 + i,
        "style_id": 7,
        "object_cfgs": [{"name": "obj", "pos": [0.1, i]}],
    }
    for i in range(3)
]
CAMERA_INFO = json.dumps({"agentview": {"intrinsics": [[1, 0, 0], [0, 1, 0], [0, 0, 1]]}})


def write_robocasa(path: Path, *, big: bool = False, nan_in: int | None = None) -> Path:
    """RoboCasa/LIBERO-style demos with attributes beyond what the converter reads.

    ``big``: a data attribute and a demo attribute too large to keep; ``nan_in``: the demo
    whose ``offset`` attribute holds NaN.
    """
    rng = np.random.default_rng(11)
    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        data.attrs["env_args"] = json.dumps({"env_name": "PnPCounterToCab", "type": 1,
                                             "env_kwargs": {"robots": ["PandaOmron"], "control_freq": 20}})  # fmt: skip
        data.attrs["bddl_file_content"] = "(define (problem KITCHEN) ...)"
        data.attrs["num_demos"] = np.int64(3)
        data.attrs["scene_ids"] = np.array([4, 5, 6], np.int32)
        data.attrs["date"] = np.bytes_(b"2024-05-01")
        if big:
            data.attrs["lookup"] = np.zeros(5000)
        for i, ep_meta in enumerate(EP_META):
            T = 4 + i
            g = data.create_group(f"demo_{i}")
            g.attrs["num_samples"] = T
            g.attrs["model_file"] = "<mujoco/>"
            g.attrs["ep_meta"] = json.dumps(ep_meta)
            g.attrs["init_state"] = rng.standard_normal(40).astype(np.float32)
            g.attrs["camera_info"] = CAMERA_INFO
            g.attrs["operator"] = np.bytes_(b"op%d" % i)
            g.attrs["good"] = np.bool_(i != 1)
            g.attrs["offset"] = np.float64(np.nan if i == nan_in else 0.5 * i)
            g.attrs["grid"] = np.arange(6, dtype=np.int16).reshape(2, 3) + i
            if big:
                g.attrs["cloud"] = np.zeros(3000, np.float32)
            g["actions"] = rng.standard_normal((T, 7))
            g["states"] = rng.standard_normal((T, 40))
            g["obs/eef"] = rng.standard_normal((T, 3))
    return path


def _meta(db: Any, i: int) -> dict[str, Any]:
    return {k: v for k, v in db.read_meta(i).items() if k not in PROVENANCE}


def test_demo_and_data_attributes_are_kept_as_extra_fields_and_metadata(tmp_path: Path) -> None:
    src = write_robocasa(tmp_path / "robocasa.hdf5")
    out = tmp_path / "out.kdb"
    ingest(src, out, format="hdf5")
    with h5py.File(src) as f, kinodb.open(out) as db:
        for i in range(3):
            attrs, meta = f[f"data/demo_{i}"].attrs, db.read_meta(i)
            assert meta["ep_meta"] == attrs["ep_meta"]  # the text as stored, every key in it
            assert json.loads(meta["ep_meta"])["layout_id"] == 3 + i and meta["task"] == "pick the apple"
            assert meta["attrs.init_state"] == attrs["init_state"].tolist()  # float32 values, exact
            assert meta["attrs.camera_info"] == CAMERA_INFO
            assert meta["attrs.operator"] == f"op{i}" and meta["attrs.good"] is (i != 1)
            assert (
                meta["attrs.offset"] == 0.5 * i
                and meta["attrs.grid"] == (np.arange(6).reshape(2, 3) + i).tolist()
            )
            assert not {"attrs.num_samples", "attrs.model_file", "attrs.ep_meta"} & set(meta)
        hdf5 = db.metadata()["hdf5"]
        assert hdf5["data_attrs"] == {
            "bddl_file_content": "(define (problem KITCHEN) ...)", "date": "2024-05-01", "num_demos": 3,
            "scene_ids": [4, 5, 6],
        }  # fmt: skip
        assert list(hdf5["left_out"]) == ["attrs/model_file"]
        assert db.metadata()["env_args"]["env_name"] == "PnPCounterToCab"  # read, not kept twice
    assert verify(src, out).ok


def test_what_cannot_be_kept_is_named_in_left_out_and_warned_about(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    src = write_robocasa(tmp_path / "big.hdf5", big=True, nan_in=2)
    out = tmp_path / "out.kdb"
    with caplog.at_level("WARNING", logger="kinodb.ingest.hdf5"):
        ingest(src, out, format="hdf5")
    with kinodb.open(out) as db:
        left_out = db.metadata()["hdf5"]["left_out"]
        assert "an array of 5000 values [5000], more than the 1024 kept" in left_out["data/attrs/lookup"]
        assert "an array of 3000 values [3000], more than the 1024 kept (demo_0)" in left_out["attrs/cloud"]
        assert "holds NaN or infinity, which JSON cannot store (demo_2)" in left_out["attrs/offset"]
        assert "attrs/model_file" in left_out
        for i in range(3):  # kept in every demo or in none
            meta = db.read_meta(i)
            assert "attrs.offset" not in meta and "attrs.cloud" not in meta and "attrs.init_state" in meta
        assert "lookup" not in db.metadata()["hdf5"]["data_attrs"]
    for name in ("data/attrs/lookup", "attrs/cloud", "attrs/offset"):
        assert f"attribute {name} is left out" in caplog.text
    assert "attrs/model_file" not in caplog.text


def test_attributes_survive_ingest_export_ingest(tmp_path: Path) -> None:
    src = write_robocasa(tmp_path / "robocasa.hdf5")
    first, h5, back = tmp_path / "first.kdb", tmp_path / "x.hdf5", tmp_path / "back.kdb"
    ingest(src, first, format="hdf5")
    export(first, h5, format="hdf5")
    with h5py.File(src) as a, h5py.File(h5) as b:  # robomimic and RoboCasa readers see the source's
        for i in range(3):
            got, want = b[f"data/demo_{i}"].attrs, a[f"data/demo_{i}"].attrs
            assert got["ep_meta"] == want["ep_meta"] and got["camera_info"] == want["camera_info"]
            np.testing.assert_array_equal(got["init_state"], want["init_state"])
            np.testing.assert_array_equal(got["grid"], want["grid"])
            assert bool(got["good"]) is bool(want["good"]) and json.loads(got["kinodb_ep_meta"])["lang"]
        assert b["data"].attrs["bddl_file_content"] == a["data"].attrs["bddl_file_content"]
        np.testing.assert_array_equal(b["data"].attrs["scene_ids"], a["data"].attrs["scene_ids"])
        assert b["data"].attrs["num_demos"] == 3
    ingest(h5, back, format="hdf5")
    with kinodb.open(first) as one, kinodb.open(back) as two:
        assert [_meta(one, i) for i in range(3)] == [_meta(two, i) for i in range(3)]
        assert one.metadata()["hdf5"]["data_attrs"] == two.metadata()["hdf5"]["data_attrs"]


def test_an_export_of_some_demos_counts_them_in_num_demos(tmp_path: Path) -> None:
    src = write_robocasa(tmp_path / "robocasa.hdf5")
    first, h5 = tmp_path / "first.kdb", tmp_path / "x.hdf5"
    ingest(src, first, format="hdf5")
    export(first, h5, format="hdf5", filter="episode_id < 2")
    with h5py.File(h5) as f:
        assert f["data"].attrs["num_demos"] == 2 and len(f["data"]) == 2


def write_some_rewards(path: Path, dtype: Any) -> Path:
    """Six demos; only the even ones hold ``rewards`` and ``dones``, of ``dtype``."""
    rng = np.random.default_rng(5)
    with h5py.File(path, "w") as f:
        for i in range(6):
            T = 3 + i
            g = f.create_group(f"data/demo_{i}")
            g["actions"] = rng.standard_normal((T, 4))
            if i % 2 == 0:
                g["rewards"] = (np.arange(T) == T - 1).astype(dtype)
                g["dones"] = (np.arange(T) == T - 1).astype(np.int64)
    return path


@pytest.mark.parametrize(
    ("dtype", "stored"), [(np.float64, np.float64), (np.uint8, np.float32), (np.int32, np.float64)]
)
def test_demos_without_rewards_get_zeros_of_the_files_reward_dtype(
    tmp_path: Path, dtype: Any, stored: Any
) -> None:
    src = write_some_rewards(tmp_path / "some.hdf5", dtype)
    out = tmp_path / "out.kdb"
    ingest(src, out, format="hdf5")
    with kinodb.open(out) as db:
        for i in range(6):
            rewards = db.read_array(i, "rewards")
            assert rewards.dtype == stored, i
            if i % 2:
                assert not rewards.any() and db.read_meta(i)["success"] is None  # unknown, not failed
                assert db.read_array(i, "is_terminal")[-1]
            else:
                assert rewards[-1] == 1 and db.read_meta(i)["success"] is True
    assert verify(src, out).ok


def test_a_file_without_rewards_keeps_the_writers_default(tmp_path: Path) -> None:
    src = tmp_path / "none.hdf5"
    with h5py.File(src, "w") as f:
        f["data/demo_0/actions"] = np.zeros((3, 2))
    ingest(src, tmp_path / "out.kdb", format="hdf5")
    with kinodb.open(tmp_path / "out.kdb") as db:
        assert db.read_array(0, "rewards").dtype == np.float32 and db.read_meta(0)["total_reward"] is None


def write_broken(path: Path) -> Path:
    """Six demos: demo_2 is empty, demo_4's obs key is short; mask/odd lists demo_1, 3 and 5."""
    rng = np.random.default_rng(2)
    with h5py.File(path, "w") as f:
        for i in range(6):
            T = 0 if i == 2 else 9 if i == 4 else 10
            g = f.create_group(f"data/demo_{i}")
            g["actions"] = rng.standard_normal((T, 7)).astype(np.float32)
            g["obs/ee_pos"] = rng.standard_normal((8 if i == 4 else T, 3)).astype(np.float32)
        f["mask/later"] = np.array([b"demo_1", b"demo_3", b"demo_4"])
    return path


@pytest.mark.parametrize(
    ("episodes", "split", "message", "others"),
    [
        ([2], None, "demo_2: actions has 0 rows; empty demos cannot be stored", "0-1,3-5"),
        ([4], None, "demo_4: obs/ee_pos has 8 rows, actions has 9", "0-3,5"),
        ([2], "later", "demo_4: obs/ee_pos has 8 rows, actions has 9", "0-1"),
    ],
)
def test_a_broken_demo_says_how_to_leave_it_out(
    tmp_path: Path, episodes: list[int], split: str | None, message: str, others: str
) -> None:
    src = write_broken(tmp_path / "broken.hdf5")
    where = f"mask/{split}" if split else "the file"
    with pytest.raises(ConversionError) as info:
        ingest(src, tmp_path / "out.kdb", format="hdf5", episodes=episodes, split=split)
    advice = (
        f"; to leave the demo out, select the others with episodes='{others}' (positions among the "
        f"demos of {where}, in numeric order), or pass on_error='skip'"
    )
    assert str(info.value).startswith(f"{src}: {message}") and str(info.value).endswith(advice)


def test_following_the_advice_converts_the_other_demos(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = write_broken(tmp_path / "broken.hdf5")
    out = tmp_path / "out.kdb"
    assert main(["ingest", str(src), "-o", str(out), "-q", "--episodes", "0-1,3,5"]) == 0
    with kinodb.open(out) as db:
        assert [db.read_meta(i)["source_episode"] for i in range(len(db))] == [
            "demo_0",
            "demo_1",
            "demo_3",
            "demo_5",
        ]
    assert main(["ingest", str(src), "-o", str(out), "-q", "--force", "--on-error", "skip"]) == 0
    with kinodb.open(out) as db:
        skipped = db.metadata()["ingest"]["skipped"]
        assert [s["episode"] for s in skipped] == ["demo_2", "demo_4"]
        assert all(
            "--on-error" not in s["reason"] and "--episodes" not in s["reason"] for s in skipped
        )  # advice taken


def test_a_file_of_one_demo_gives_no_advice_to_leave_it_out(tmp_path: Path) -> None:
    src = tmp_path / "one.hdf5"
    with h5py.File(src, "w") as f:
        f["data/demo_0/actions"] = np.zeros((0, 2))
    with pytest.raises(ConversionError, match=r"empty demos cannot be stored\Z"):
        ingest(src, tmp_path / "out.kdb", format="hdf5")
