"""Rewards the writer stored as a placeholder (the source had none) get no statistics."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import kinodb
from kinodb._cli.main import main
from kinodb.stats import compute_stats, placeholder_rewards, write_stats


def write(path: Path, kinds: list[str], T: int = 8) -> Path:
    """One episode per kind: ``"none"`` (no rewards given), ``"real"`` or ``"zeros"`` (given)."""
    rng = np.random.default_rng(1)
    with kinodb.Writer(path, mode="w") as w:
        for kind in kinds:
            given = {"none": None, "real": rng.random(T).astype(np.float32), "zeros": np.zeros(T, np.float32)}
            w.add_episode(actions=rng.random((T, 2)).astype(np.float32), rewards=given[kind])
    return path


def test_rewards_of_a_file_without_them_are_skipped(tmp_path: Path) -> None:
    path = write(tmp_path / "none.kdb", ["none", "none"])
    stats = compute_stats(path)
    assert "rewards" not in stats["arrays"] and "actions" in stats["arrays"]
    assert "writer's placeholder" in stats["skipped"]["rewards"]
    named = compute_stats(path, arrays=["rewards"])  # asked for by name: summarised as before
    assert named["arrays"]["rewards"]["max"][0] == 0.0 and "rewards" not in named["skipped"]


@pytest.mark.parametrize("kinds", [["real"], ["zeros", "zeros"], ["none", "real"], ["none", "zeros"]])
def test_rewards_given_by_some_episode_are_summarised(tmp_path: Path, kinds: list[str]) -> None:
    path = write(tmp_path / "d.kdb", kinds)
    assert "rewards" in compute_stats(path)["arrays"]
    with kinodb.open(path) as db:
        assert not placeholder_rewards(db)
        if kinds[0] == "none":
            assert placeholder_rewards(db, [0])


def test_kino_stats_replaces_stored_placeholder_statistics(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path / "none.kdb", ["none"])
    write_stats(path, compute_stats(path, arrays=["actions", "rewards"]))
    assert main(["stats", str(path)]) == 0
    assert "skipped rewards: no episode holds rewards from its source" in capsys.readouterr().out
    with kinodb.open(path) as db:
        stored = db.stats()
    assert "rewards" not in stored["arrays"] and "rewards" in stored["skipped"]
