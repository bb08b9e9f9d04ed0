"""`kino stats`: tables, JSON, --arrays, --dry-run, and exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import kinodb
from _legacy_encoder import encode, random_episode
from kinodb._cli.main import main
from kinodb.errors import FormatError
from kinodb.kdb.validate import validate


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    path = tmp_path / "d.kdb"
    assert main(["create-test", str(path), "-n", "6", "--frames", "15"]) == 0
    return path


def test_prints_a_table_per_array_with_component_names_and_stores(
    dataset: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    assert main(["stats", str(dataset)]) == 0
    out = capsys.readouterr().out
    assert "90 frames in 6 episodes" in out
    assert "actions: float32 (7,), 90 frames" in out and "states: float32 (14,), 90 frames" in out
    for label in ("delta_pos[0]", "delta_rot[2]", "gripper", "joint_pos[6]", "eef_quat[3]"):
        assert f"\n  {label} " in out, label
    assert "MEAN" in out and "Q01" in out and "Q99" in out
    assert "skipped is_terminal: dtype bool is not floating point" in out
    assert f"stored in {dataset}" in out
    with kinodb.open(dataset) as db:
        stats = db.stats()
        states = db.gather("states").astype(np.float64)
    np.testing.assert_array_equal(stats["arrays"]["states"]["q99"], np.quantile(states, 0.99, axis=0))
    gripper_row = next(line for line in out.splitlines() if line.startswith("  gripper "))
    mean = stats["arrays"]["actions"]["mean"][6]
    assert f"{mean:.5g}" in gripper_row
    assert validate(dataset).ok


def test_json_dry_run_prints_and_stores_nothing(dataset: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = dataset.read_bytes()
    capsys.readouterr()
    assert main(["stats", str(dataset), "--json", "--dry-run", "--arrays", "actions,rewards"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["stored"] is False and doc["path"] == str(dataset)
    assert list(doc["stats"]["arrays"]) == ["actions", "rewards"]
    assert len(doc["stats"]["arrays"]["actions"]["q01"]) == 7
    assert dataset.read_bytes() == before
    with kinodb.open(dataset) as db, pytest.raises(FormatError, match="no statistics"):
        db.stats()


def test_json_stores(dataset: Path, capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    assert main(["stats", str(dataset), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["stored"] is True
    with kinodb.open(dataset) as db:
        assert db.dataset_info()["stats"]["arrays"] == doc["stats"]["arrays"]


def test_dry_run_text(dataset: Path, capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    assert main(["stats", str(dataset), "--dry-run", "--arrays", "rewards"]) == 0
    out = capsys.readouterr().out
    assert "not stored (--dry-run)" in out and "\n  rewards " in out


def test_exit_codes(dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["stats", str(dataset), "--arrays", "nope"]) == 2
    assert "no array 'nope'" in capsys.readouterr().err
    assert main(["stats", str(dataset), "--arrays", ","]) == 2
    assert main(["stats", str(dataset), "--arrays", "is_terminal"]) == 1
    captured = capsys.readouterr()
    assert (
        "skipped is_terminal" in captured.out
        and "no array" in captured.err
        and "could be summarised" in captured.err
    )
    assert main(["stats", str(tmp_path / "missing.kdb")]) == 1
    assert "missing.kdb" in capsys.readouterr().err


def test_legacy_files_need_an_upgrade_unless_dry_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "old.kdb"
    path.write_bytes(encode([random_episode(np.random.default_rng(0), 5, 2, 3)]))
    assert main(["stats", str(path)]) == 1
    assert "kino upgrade" in capsys.readouterr().err
    assert main(["stats", str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "actions: float32 (3,), 5 frames" in out and "rewards: float32 (), 5 frames" in out
    assert "cannot be read as one array" not in out
    assert main(["stats", str(path), "--dry-run", "--json"]) == 0
    assert sorted(json.loads(capsys.readouterr().out)["stats"]["arrays"]) == ["actions", "rewards", "states"]


def test_arrays_add_to_the_stored_statistics_while_they_describe_the_file(
    dataset: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["stats", str(dataset), "--arrays", "actions,states"]) == 0
    with kinodb.open(dataset) as db:
        first = db.stats()
    assert main(["stats", str(dataset), "--arrays", "rewards"]) == 0
    with kinodb.open(dataset) as db:
        both = db.stats()
        states = db.gather("states").astype(np.float64)
    assert list(both["arrays"]) == ["actions", "states", "rewards"]
    np.testing.assert_array_equal(both["arrays"]["actions"]["mean"], first["arrays"]["actions"]["mean"])
    np.testing.assert_array_equal(both["arrays"]["states"]["max"], states.max(axis=0))
    with kinodb.Writer(dataset, mode="a") as w:  # the stored statistics go stale
        w.add_episode(actions=np.ones((4, 7), np.float32), states=np.ones((4, 14), np.float32))
    assert main(["stats", str(dataset), "--arrays", "rewards"]) == 0
    with kinodb.open(dataset) as db:
        assert list(db.stats()["arrays"]) == ["rewards"]  # stale entries are not carried over
    capsys.readouterr()
