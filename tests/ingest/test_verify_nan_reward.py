"""Verification of episodes whose rewards hold NaN or infinity: their total reward is unknown."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

import kinodb
from kinodb._cli.main import main
from kinodb.ingest import ingest, verify

h5py = pytest.importorskip("h5py")

from test_verify import rewrite  # noqa: E402  (needs h5py)


def write_plain_robomimic(path: Path, rewards: list[list[float]]) -> Path:
    """A robomimic-style file written by h5py alone, one demo per reward list."""
    with h5py.File(path, "w") as f:
        for i, rew in enumerate(rewards):
            g = f.create_group(f"data/demo_{i}")
            T = len(rew)
            g.create_dataset("actions", data=np.arange(T * 2, dtype=np.float64).reshape(T, 2))
            g.create_dataset("rewards", data=np.array(rew, np.float64))
            g.create_dataset("dones", data=(np.arange(T) == T - 1).astype(np.int64))
            g.create_dataset("obs/x", data=np.zeros((T, 1)))
    return path


@pytest.fixture
def nan_rewards(tmp_path: Path) -> Path:
    inf = float("inf")
    return write_plain_robomimic(
        tmp_path / "nan.hdf5", [[0.0, float("nan"), 1.0], [1.0, inf, 0.0], [0.0, -inf, 1.0], [0.5, 0.5]]
    )


def test_non_finite_rewards_verify_as_an_unknown_total(
    tmp_path: Path, nan_rewards: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "nan.kdb"
    report = ingest(nan_rewards, out, verify=True)
    assert report.verification is not None and report.verification.ok, report.verification
    with kinodb.open(out) as db:
        assert [db.read_meta(i)["total_reward"] for i in range(len(db))] == [None, None, None, 1.0]
    assert main(["ingest", str(nan_rewards), "-o", str(tmp_path / "cli.kdb"), "--verify", "-q"]) == 0
    assert main(["verify", str(nan_rewards), str(out)]) == 0
    assert ": OK" in capsys.readouterr().out


def test_a_total_reward_that_differs_is_still_caught(tmp_path: Path, nan_rewards: Path) -> None:
    out = tmp_path / "nan.kdb"
    ingest(nan_rewards, out)

    def relabel(i: int, args: dict[str, Any]) -> None:
        if i == 0:
            args["total_reward"] = 5.0  # the source's sum is NaN: unknown
        if i == 3:
            args["total_reward"] = 2.0  # the source's sum is 1.0

    report = verify(nan_rewards, rewrite(out, tmp_path / "bad.kdb", edit=relabel))
    assert not report.ok
    assert report.mismatches == {"total_reward": 2}
    said = "\n".join(report.problems)
    assert (
        "total_reward is 5.0, the source says None" in said
        and "total_reward is 2.0, the source says 1.0" in said
    )
