"""KinoFrameDataset refuses reward windows from a source whose rewards are the writer's placeholder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import kinodb
from kinodb.errors import KinodbError
from kinodb.torch import KinoFrameDataset


def write(path: Path, rewards: np.ndarray | None, T: int = 6) -> Path:
    rng = np.random.default_rng(2)
    with kinodb.Writer(path, mode="w") as w:
        for _ in range(2):
            w.add_episode(actions=rng.random((T, 2)).astype(np.float32), rewards=rewards)
    return path


def test_frame_dataset_refuses_next_reward_without_source_rewards(tmp_path: Path) -> None:
    none = write(tmp_path / "none.kdb", None)
    real = write(tmp_path / "real.kdb", np.linspace(0, 1, 6, dtype=np.float32))
    delta = {"next.reward": [0.0, 0.1]}
    with pytest.raises(KinodbError, match=r"none\.kdb.*holds none.*leave 'next\.reward' out"):
        KinoFrameDataset(none, image_key=False, delta_timestamps=delta)
    with pytest.raises(KinodbError, match=r"none\.kdb.*out of the Mixture"):
        KinoFrameDataset(
            kinodb.Mixture({str(real): 1, str(none): 1}), image_key=False, delta_timestamps=delta
        )
    item = KinoFrameDataset(real, image_key=False, delta_timestamps=delta)[1]
    assert item["reward"].tolist() == pytest.approx([0.2, 0.4]) and not item["reward_is_pad"].any()
    zeros = write(tmp_path / "zeros.kdb", np.zeros(6, np.float32))  # given zeros are real rewards
    assert not KinoFrameDataset(zeros, image_key=False, delta_timestamps=delta)[0]["reward"].any()
