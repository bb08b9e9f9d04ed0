"""Ingesting a kinodb LeRobot export: what ``meta/kinodb*.json`` gives back, and what the data overrides."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import _lerobot_fixtures as F
import numpy as np
import pandas as pd
import pytest

import kinodb
from kinodb.ingest import ingest, verify
from kinodb.windows import FrameWindows

LENGTHS = [8, 6, 7]


@pytest.fixture
def exported(tmp_path: Path) -> Path:
    """A kinodb LeRobot export of a dataset whose episode 0 changes task halfway."""
    eps = F.make_episodes(np.random.default_rng(31), LENGTHS, cameras={}, task_of=[1, 0, 1], task_switch=True)
    kdb = tmp_path / "ds.kdb"
    ingest(F.write_v3(tmp_path / "ds", eps, per_file=2), kdb)
    with kinodb.open(kdb) as db:
        assert db.read_meta(0)["tasks"] == [F.TASKS[1], F.TASKS[0]]
    out = tmp_path / "export"
    kinodb.export.export(kdb, out, format="lerobot")
    assert (out / "meta" / "kinodb_episodes.jsonl").is_file()
    return out


def relabel_in_place(root: Path, task: str) -> None:
    """What LeRobot 0.4.4's ``dataset_tools.modify_tasks(dataset, new_task=task)`` does to the
    files: every frame's task_index, each episode's ``tasks``, ``meta/tasks.parquet`` and
    ``total_tasks``; the export's ``meta/kinodb*`` files stay as they were."""
    for path in sorted((root / "data").rglob("*.parquet")):
        df = pd.read_parquet(path)
        df["task_index"] = 0
        df.to_parquet(path, index=False)
    for path in sorted((root / "meta" / "episodes").rglob("*.parquet")):
        df = pd.read_parquet(path)
        df["tasks"] = df["episode_index"].apply(lambda e: [task])
        df.to_parquet(path, index=False)
    F.tasks_parquet(root / "meta" / "tasks.parquet", [task])
    info = json.loads((root / "meta" / "info.json").read_text())
    info["total_tasks"] = 1
    (root / "meta" / "info.json").write_text(json.dumps(info, indent=4))


def test_an_unchanged_export_gets_its_per_frame_tasks_back(exported: Path, tmp_path: Path) -> None:
    again = tmp_path / "again.kdb"
    ingest(exported, again, verify=True)
    with kinodb.open(again) as db:
        assert db.read_meta(0)["tasks"] == [F.TASKS[1], F.TASKS[0]]
        np.testing.assert_array_equal(db.read_array(0, "task_index"), [0] * 4 + [1] * 4)
        assert "tasks" not in db.read_meta(1)


def test_tasks_edited_in_place_come_from_the_data_not_the_stale_export_record(
    exported: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    relabel_in_place(exported, "relabeled task")
    out = tmp_path / "relabeled.kdb"
    with caplog.at_level(logging.WARNING, logger="kinodb.ingest"):
        report = ingest(exported, out, verify=True)
    assert report.verification is not None and report.verification.ok
    assert "meta/kinodb_episodes.jsonl (written by kinodb's export) lists" in caplog.text
    assert "the data's are kept" in caplog.text and caplog.text.count("tasks were edited") == 1
    with kinodb.open(out) as db:
        for k in range(3):
            meta = db.read_meta(k)
            assert meta["task"] == "relabeled task" and "tasks" not in meta
            assert "task_index" not in db.read_episode_actions_only(k)
            assert meta["success"] is not None  # the export's other fields still come back
    fw = FrameWindows(str(out))  # per-frame tasks read back (a stale list without its array would fail)
    assert fw.tasks(range(len(fw))) == ["relabeled task"] * sum(LENGTHS)


def test_an_export_record_that_does_not_fit_its_episode_is_not_used(
    exported: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    records = exported / "meta" / "kinodb_episodes.jsonl"
    rows = [json.loads(line) for line in records.read_text().splitlines()]
    rows[2]["meta"].update(num_frames=99, operator="alice")  # a record of some other episode
    rows[1]["meta"]["operator"] = "bob"
    records.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out.kdb"
    with caplog.at_level(logging.WARNING, logger="kinodb.ingest"):
        ingest(exported, out)
    assert (
        "does not describe episode 2 of the data (it says num_frames 99, the data has 7): the dataset was "
        "changed after the export" in caplog.text
    )
    with kinodb.open(out) as db:
        assert db.read_meta(1)["operator"] == "bob" and "operator" not in db.read_meta(2)
    assert verify(exported, out).ok


# -- the source's schema and dataset metadata ---------------------------------------------------

PARTS = [
    {"names": ["a", "b", "c"]},
    {"components": {"eef": [0, 2], "grip": [2, 3]}},  # tiles: names made up per component
    {"components": {"eef": [0, 2]}},  # does not tile: a flat list of made-up names
    {"components": {"grip": [2, 3], "eef": [0, 2]}, "names": ["x", "y", "g"]},
    {},
]


@pytest.mark.parametrize("part", PARTS)
def test_as_exported_is_what_the_export_writes_and_the_ingest_reads(part: dict) -> None:
    from kinodb.export.lerobot import _names
    from kinodb.ingest._lerobot_kinodb import as_exported
    from kinodb.ingest.lerobot import names_and_components

    names, comps = names_and_components(_names(part, 3), 3)
    read = ({"names": names} if names is not None else {}) | ({"components": comps} if comps else {})
    assert as_exported({**part, "dim": 3}) == read


def _source_parts(tmp_path: Path, schema: dict, metadata: dict) -> tuple[Path, Path]:
    src = tmp_path / "src.kdb"
    with kinodb.Writer(src, mode="w", schema=schema, metadata=metadata) as w:
        for T in (3, 4):
            w.add_episode(actions=np.zeros((T, 3), np.float32), states=np.ones((T, 2), np.float32), fps=10.0)
    out = tmp_path / "lr"
    kinodb.export.export(src, out, format="lerobot")
    return src, out


def _restored(root: Path) -> tuple[dict, dict]:
    from kinodb.ingest._lerobot_kinodb import restore_dataset
    from kinodb.ingest.lerobot import LeRobotSource

    source = LeRobotSource(root)
    try:
        info = source.info()
        return restore_dataset(source._kinodb, info.schema, info.metadata, source._info, str(root))
    finally:
        source.close()


@pytest.mark.parametrize("part", PARTS[:4])
def test_the_source_schema_comes_back_as_it_was(tmp_path: Path, part: dict) -> None:
    src, out = _source_parts(tmp_path, {"actions": part}, {})
    schema, _ = _restored(out)
    with kinodb.open(src) as db:
        want = db.schema()["actions"]
    assert schema["actions"] == {k: want[k] for k in ("names", "components") if k in want}


def test_the_source_metadata_comes_back_under_the_ingests_own(tmp_path: Path) -> None:
    meta = {"license": "CC-BY", "robot": {"urdf": "g1.urdf"}, "lerobot": "the source's", "ingest": {"x": 1}}
    _, out = _source_parts(tmp_path, {}, meta)
    _, got = _restored(out)
    assert got["license"] == "CC-BY" and got["robot"] == {"urdf": "g1.urdf"}
    assert isinstance(got["lerobot"], dict) and "ingest" not in got  # the ingest's own keys win, or come anew


def test_a_dataset_changed_since_the_export_gets_no_source_record_back(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _, out = _source_parts(
        tmp_path, {"actions": {"components": {"eef": [0, 2], "grip": [2, 3]}}}, {"license": "x"}
    )
    info = json.loads((out / "meta" / "info.json").read_text())
    info["total_frames"] -= 1  # as if frames were cut after the export
    (out / "meta" / "info.json").write_text(json.dumps(info, indent=4))
    with caplog.at_level(logging.WARNING, logger="kinodb.ingest"):
        schema, meta = _restored(out)
    assert "describes 2 episodes of 7 frames, the dataset has 2 of 6" in caplog.text
    assert "license" not in meta and schema["actions"]["names"] == ["eef_0", "eef_1", "grip"]
