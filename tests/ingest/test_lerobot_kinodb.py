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
