"""An unknown ``total_reward`` of a format 0.1 episode stays unknown (null) when the
episode is upgraded or merged to v1; the public `Writer.add_episode` still sums rewards."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

import kinodb
from _legacy_encoder import encode, random_episode
from kinodb.kdb.upgrade import upgrade
from kinodb.kql import query


def _legacy(path: Path) -> list[float | None]:
    """A 0.1 file whose episodes 0 and 2 have no total_reward (and nonzero rewards)."""
    rng = np.random.default_rng(11)
    rewards = [None, 2.5, None, -1.0]
    path.write_bytes(encode([random_episode(rng, 4, 2, 2, total_reward=r) for r in rewards]))
    return rewards


def test_upgrade_keeps_an_unknown_total_reward_unknown(tmp_path: Path) -> None:
    old, new = tmp_path / "old.kdb", tmp_path / "new.kdb"
    want = _legacy(old)
    assert upgrade(old, new) == 4
    with kinodb.open(old) as a, kinodb.open(new) as b:
        assert [b.read_meta(i)["total_reward"] for i in range(4)] == want
        assert query(b, "total_reward = null").tolist() == query(a, "total_reward = null").tolist() == [0, 2]
        np.testing.assert_array_equal(b.read_array(0, "rewards"), a.read_array(0, "rewards"))


def test_merge_keeps_an_unknown_total_reward_unknown(tmp_path: Path) -> None:
    old, new = tmp_path / "old.kdb", tmp_path / "merged.kdb"
    want = _legacy(old)
    kinodb.merge([old], new)
    with kinodb.open(new) as db:
        assert [db.read_meta(i)["total_reward"] for i in range(4)] == want


def test_upgrade_stores_a_non_finite_total_reward_as_null_with_a_warning(tmp_path: Path) -> None:
    rng = np.random.default_rng(12)
    old, new = tmp_path / "old.kdb", tmp_path / "new.kdb"
    old.write_bytes(encode([random_episode(rng, 3, 1, 1, total_reward=math.nan)]))
    with pytest.warns(UserWarning, match="episode 0: total_reward nan .* stored as null"):
        upgrade(old, new)
    with kinodb.open(new) as db:
        assert db.read_meta(0)["total_reward"] is None


def test_add_episode_still_fills_in_the_sum_of_the_rewards(tmp_path: Path) -> None:
    rewards = np.array([0.5, 1.0, 2.0], np.float32)
    with kinodb.Writer(tmp_path / "new.kdb") as w:
        w.add_episode(actions=np.zeros((3, 2), np.float32), rewards=rewards)
    with kinodb.open(tmp_path / "new.kdb") as db:
        assert db.read_meta(0)["total_reward"] == 3.5
