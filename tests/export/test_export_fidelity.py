"""What export and ingest give back beyond the arrays: per-frame tasks, schema names, dataset
metadata, statistics, and nothing the source did not have."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import kinodb
from kinodb.export import export

h5py = pytest.importorskip("h5py")
from kinodb.ingest import ingest  # noqa: E402  (after h5py is known to be installed)

SCHEMA = {"actions": {"names": ["j0", "j1", "grip"]}, "states": {"names": ["q0", "q1"]}}
METADATA = {
    "robot_urdf": "g1.urdf",
    "license": "CC-BY",
    "calibration": {"date": "2026-01-02", "offsets": [0.5]},
}


def _kdb(path: Path, *, schema: dict[str, Any] | None = None, metadata: dict[str, Any] | None = None,
         state_dim: int = 2, episodes: int = 2) -> Path:  # fmt: skip
    rng = np.random.default_rng(5)
    with kinodb.Writer(path, mode="w", schema=schema, metadata=metadata) as w:
        for k in range(episodes):
            T = 3 + k
            w.add_episode(actions=rng.normal(size=(T, 3)).astype(np.float32),
                          states=rng.normal(size=(T, state_dim)).astype(np.float32), fps=10.0, task=f"t{k}")  # fmt: skip
    return path


def _hdf5_back(src: Path, tmp_path: Path, **options: Any) -> Path:
    export(src, tmp_path / "x.hdf5", format="hdf5", **options)
    back = tmp_path / "back_h5.kdb"
    ingest(tmp_path / "x.hdf5", back, format="hdf5")
    return back


# -- per-frame tasks --------------------------------------------------------------------------


def _tasks_kdb(path: Path) -> Path:
    with kinodb.Writer(path, mode="w") as w:
        w.add_episode(actions=np.zeros((4, 2), np.float32), task="reach", fps=10.0,
                      extra={"tasks": ["reach", "grasp"]}, extra_arrays={"task_index": np.array([0, 0, 1, 1])})  # fmt: skip
        w.add_episode(actions=np.ones((3, 2), np.float32), task="lift", fps=10.0)
    return path


def test_an_hdf5_round_trip_adds_no_tasks_to_single_task_episodes(tmp_path: Path) -> None:
    src = _tasks_kdb(tmp_path / "tasks.kdb")
    export(src, tmp_path / "x.hdf5", format="hdf5")
    with h5py.File(tmp_path / "x.hdf5", "r") as f:
        assert "task_index" in f["data/demo_0"] and "task_index" not in f["data/demo_1"]
        assert "tasks" not in json.loads(f["data/demo_1"].attrs["ep_meta"])
    back = tmp_path / "back.kdb"
    ingest(tmp_path / "x.hdf5", back)
    with kinodb.open(back) as db:
        assert db.read_meta(0)["tasks"] == ["reach", "grasp"]
        assert db.read_array(0, "task_index").tolist() == [0, 0, 1, 1]
        assert "tasks" not in db.read_meta(1) and "task_index" not in db.read_episode_actions_only(1)
    export(back, tmp_path / "lr", format="lerobot")  # exports as the source does


def test_a_task_index_beside_a_one_task_list_is_lerobots_task_column(tmp_path: Path) -> None:
    pq = pytest.importorskip("pyarrow.parquet")
    src = tmp_path / "one.kdb"
    with kinodb.Writer(src, mode="w") as w:  # as an earlier HDF5 round trip wrote single-task episodes
        w.add_episode(actions=np.zeros((4, 2), np.float32), task="reach", fps=10.0,
                      extra={"tasks": ["reach", "grasp"]}, extra_arrays={"task_index": np.array([0, 1, 1, 0])})  # fmt: skip
        w.add_episode(actions=np.ones((3, 2), np.float32), task="lift", fps=10.0,
                      extra={"tasks": ["lift"]}, extra_arrays={"task_index": np.zeros(3, np.int64)})  # fmt: skip
    export(src, tmp_path / "lr", format="lerobot")
    info = json.loads((tmp_path / "lr/meta/info.json").read_text())
    assert "observation.task_index" not in info["features"]
    table = pq.read_table(tmp_path / "lr/data/chunk-000/file-000.parquet")
    assert table["task_index"].to_pylist() == [0, 1, 1, 0, 2, 2, 2]
    tasks = pq.read_table(tmp_path / "lr/meta/tasks.parquet").to_pylist()
    assert [t["__index_level_0__"] for t in tasks] == ["reach", "grasp", "lift"]


# -- schema names, state components and user metadata -----------------------------------------


def test_an_hdf5_round_trip_keeps_names_and_user_metadata(tmp_path: Path) -> None:
    src = _kdb(tmp_path / "src.kdb", schema=SCHEMA, metadata=METADATA)
    back = _hdf5_back(src, tmp_path)
    with kinodb.open(back) as db:
        schema, meta = db.schema(), db.metadata()
    assert schema["actions"]["names"] == ["j0", "j1", "grip"] and schema["states"]["names"] == ["q0", "q1"]
    assert "components" not in schema["states"]  # the source had none: no made-up "state" component
    assert {k: meta[k] for k in METADATA} == METADATA
    assert meta["ingest"]["source"] == str(tmp_path / "x.hdf5")  # this ingest's record, not the source's


def test_state_components_the_export_could_not_split_come_back(tmp_path: Path) -> None:
    schema = {
        "states": {"components": {"eef": [0, 2]}},
        "actions": {"components": {"arm": [0, 2], "grip": [2, 3]}},
    }
    src = _kdb(tmp_path / "src.kdb", schema=schema, state_dim=3)
    back = _hdf5_back(src, tmp_path)
    with h5py.File(tmp_path / "x.hdf5", "r") as f:
        assert list(f["data/demo_0/obs"]) == ["state"]  # [0, 2) of 3 does not tile: written whole
    with kinodb.open(back) as db:
        got = db.schema()
    assert got["states"]["components"] == {"eef": [0, 2]}
    assert got["actions"]["components"] == {"arm": [0, 2], "grip": [2, 3]}


def test_components_the_export_wrote_as_obs_keys_stay_with_their_names(tmp_path: Path) -> None:
    schema = {"states": {"components": {"joint": [0, 2], "eef": [2, 4]}, "names": ["a", "b", "c", "d"]}}
    src = _kdb(tmp_path / "src.kdb", schema=schema, state_dim=4)
    back = _hdf5_back(src, tmp_path)
    with kinodb.open(back) as db:
        got = db.schema()["states"]
    assert got["components"] == {"joint": [0, 2], "eef": [2, 4]} and got["names"] == ["a", "b", "c", "d"]


def test_state_keys_in_another_order_keep_their_own_names(tmp_path: Path) -> None:
    schema = {"states": {"components": {"joint": [0, 2], "eef": [2, 4]}, "names": ["a", "b", "c", "d"]}}
    src = _kdb(tmp_path / "src.kdb", schema=schema, state_dim=4)
    export(src, tmp_path / "x.hdf5", format="hdf5")
    back = tmp_path / "back.kdb"
    ingest(tmp_path / "x.hdf5", back, format="hdf5", state_keys=["eef", "joint"])
    with kinodb.open(back) as db:
        got = db.schema()["states"]
    assert got["components"] == {"eef": [0, 2], "joint": [2, 4]}
    assert "names" not in got  # "a".."d" named the values in the export's order: they would mislabel


def test_an_hdf5_export_changed_since_gives_back_no_dataset_record(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    src = _kdb(tmp_path / "src.kdb", schema=SCHEMA, metadata=METADATA, episodes=3)
    export(src, tmp_path / "x.hdf5", format="hdf5")
    with h5py.File(tmp_path / "x.hdf5", "a") as f:
        del f["data/demo_2"]  # a demo removed after the export
    back = tmp_path / "back.kdb"
    with caplog.at_level(logging.WARNING, logger="kinodb.ingest.hdf5"):
        ingest(tmp_path / "x.hdf5", back, format="hdf5")
    assert "recorded 3 demos of 12 frames, and the file holds 2 of 7" in caplog.text
    with kinodb.open(back) as db:
        assert "license" not in db.metadata() and "names" not in db.schema()["actions"]


def test_a_lerobot_export_records_what_its_ingest_gives_back(tmp_path: Path) -> None:
    pytest.importorskip("pyarrow")
    from kinodb.ingest._lerobot_kinodb import restore_dataset
    from kinodb.ingest.lerobot import LeRobotSource

    schema = {"actions": {"components": {"delta_pos": [0, 2], "grip": [2, 3]}},
              "states": {"names": ["q0", "q1"], "components": {"q": [0, 1]}}}  # fmt: skip
    src = _kdb(tmp_path / "src.kdb", schema=schema, metadata=METADATA)
    export(src, tmp_path / "lr", format="lerobot")
    source = LeRobotSource(tmp_path / "lr")
    try:
        info = source.info()
        got, meta = restore_dataset(
            source._kinodb, info.schema, info.metadata, source._info, str(tmp_path / "lr")
        )
    finally:
        source.close()
    with kinodb.open(src) as db:
        want = db.schema()
    for part in ("actions", "states"):
        assert got[part] == {k: want[part][k] for k in ("names", "components") if k in want[part]}, part
    assert {k: meta[k] for k in METADATA} == METADATA and "lerobot" in meta


def test_a_lerobot_round_trip_keeps_user_metadata(tmp_path: Path) -> None:
    pytest.importorskip("pyarrow")
    src = _kdb(tmp_path / "src.kdb", schema=SCHEMA, metadata=METADATA)
    export(src, tmp_path / "lr", format="lerobot")
    ingest(tmp_path / "lr", tmp_path / "back.kdb")
    with kinodb.open(tmp_path / "back.kdb") as db:
        assert {k: db.metadata().get(k) for k in METADATA} == METADATA


# -- statistics -------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["hdf5", "lerobot"])
def test_statistics_are_embedded_only_when_they_describe_the_export(tmp_path: Path, fmt: str) -> None:
    if fmt == "lerobot":
        pytest.importorskip("pyarrow")
    from kinodb.stats import compute_stats, write_stats
    from kinodb.synthetic import create_test

    src = tmp_path / "src.kdb"
    create_test(src, 6, 5)
    write_stats(src, compute_stats(src))

    def exported(name: str, **options: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        out = tmp_path / name
        export(src, out, format=fmt, **options)
        if fmt == "lerobot":
            record = json.loads((out / "meta/kinodb.json").read_text())
            return record["dataset"], record["export"]
        with h5py.File(out, "r") as f:
            return json.loads(f["data"].attrs["kinodb_dataset"]), json.loads(f["data"].attrs["kinodb_export"])

    dataset, facts = exported("whole")
    assert dataset["stats"]["num_episodes"] == 6 and "stats_left_out" not in facts
    dataset, facts = exported("some", filter="episode_id < 2")
    assert "stats" not in dataset
    assert "cover all 6 episodes and this export holds 2" in facts["stats_left_out"]


@pytest.mark.parametrize(
    "schema", [None, {"actions": {"names": ["x", "y", "z"]}}], ids=["no-schema", "names"]
)
def test_an_hdf5_round_trip_without_state_components_verifies(
    tmp_path: Path, schema: dict[str, Any] | None
) -> None:
    src = _kdb(tmp_path / "src.kdb", schema=schema, state_dim=4)
    export(src, tmp_path / "x.hdf5", format="hdf5")
    report = ingest(tmp_path / "x.hdf5", tmp_path / "back.kdb", format="hdf5", verify=True)
    assert report.verification is not None and report.verification.ok, report.verification
    with kinodb.open(tmp_path / "back.kdb") as db:
        assert "components" not in db.schema()["states"]  # nothing the source did not have
