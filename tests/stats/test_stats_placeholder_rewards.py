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


def test_placeholder_episodes_are_left_out_of_the_rewards_statistics(tmp_path: Path) -> None:
    path = write(tmp_path / "mix.kdb", ["real", "none", "zeros", "none", "real"])
    with kinodb.open(path) as db:
        rewards = [db.read_array(e, "rewards") for e in range(len(db))]
        assert [placeholder_rewards(db, [e]) for e in range(len(db))] == [False, True, False, True, False]
    given = np.concatenate([rewards[0], rewards[2], rewards[4]]).astype(np.float64)
    for arrays in (None, ["rewards"]):  # named or not: the placeholder never passes for rewards
        entry = compute_stats(path, arrays=arrays)["arrays"]["rewards"]
        assert entry["count"] == len(given) and entry["nonfinite"] == 0
        assert (entry["placeholder_episodes"], entry["placeholder_frames"]) == (2, 16)
        np.testing.assert_allclose(entry["mean"], [given.mean()], rtol=1e-12)
        np.testing.assert_allclose(entry["std"], [given.std()], rtol=1e-12)
        q01, q99 = np.quantile(given, [0.01, 0.99])
        assert (entry["min"][0], entry["max"][0]) == (given.min(), given.max())
        assert (entry["q01"][0], entry["q99"][0]) == (q01, q99)


def test_a_merge_of_files_with_and_without_rewards_summarises_the_given_ones(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ones = tmp_path / "ones.kdb"
    with kinodb.Writer(ones, mode="w") as w:
        for _ in range(3):
            w.add_episode(actions=np.zeros((10, 2), np.float32), rewards=np.ones(10, np.float32))
    none = write(tmp_path / "none.kdb", ["none", "none"], T=5)
    merged = tmp_path / "merged.kdb"
    kinodb.merge([ones, none], merged)
    assert main(["stats", str(merged)]) == 0
    assert "rewards: float32 (), 30 frames; 2 episodes (10 frames) without rewards" in capsys.readouterr().out
    with kinodb.open(merged) as db:
        entry = db.stats()["arrays"]["rewards"]
    assert entry["mean"] == [1.0] and entry["min"] == [1.0] and entry["count"] == 30
    assert (entry["placeholder_episodes"], entry["placeholder_frames"]) == (2, 10)


def test_rewards_without_placeholder_episodes_are_summarised_as_before(tmp_path: Path) -> None:
    path = write(tmp_path / "d.kdb", ["real", "zeros", "real"])
    with kinodb.open(path) as db:
        every = np.concatenate([db.read_array(e, "rewards") for e in range(len(db))]).astype(np.float64)
    entry = compute_stats(path)["arrays"]["rewards"]
    assert "placeholder_episodes" not in entry and "placeholder_frames" not in entry
    assert entry["count"] == len(every) and (entry["min"][0], entry["max"][0]) == (0.0, every.max())
    np.testing.assert_allclose(entry["mean"], [every.mean()], rtol=1e-12)


def test_rewards_given_with_a_non_finite_value_are_not_the_placeholder(tmp_path: Path) -> None:
    path = tmp_path / "nan.kdb"
    with kinodb.Writer(path, mode="w") as w:
        w.add_episode(actions=np.zeros((3, 1), np.float32), rewards=np.array([0, np.nan, 0], np.float32))
        w.add_episode(actions=np.zeros((4, 1), np.float32))
        w.add_episode(actions=np.zeros((2, 1), np.float32), rewards=np.array([2, 3], np.float32))
    with kinodb.open(path) as db:
        assert np.isnan(db.episodes()["total_reward"][0])  # null, as for the placeholder
    entry = compute_stats(path)["arrays"]["rewards"]
    assert (entry["count"], entry["nonfinite"]) == (5, 1)
    assert (entry["placeholder_episodes"], entry["placeholder_frames"]) == (1, 4)
    assert (entry["min"][0], entry["max"][0]) == (0.0, 3.0)
