"""Reward windows refuse a source whose rewards are the writer's placeholder (it had none)."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

import kinodb
from kinodb.errors import KinodbError
from kinodb.windows import FrameWindows

REWARD = {"next.reward": [0.0, 0.1]}


def write(path: Path, rewards: str, *, episodes: int = 2, T: int = 6) -> Path:
    """Episodes without rewards (``"none"``), with real rewards (``"real"``), with rewards
    given as zeros (``"zeros"``), or the first without and the rest real (``"mixed"``)."""
    rng = np.random.default_rng(0)
    with kinodb.Writer(path, mode="w") as w:
        for i in range(episodes):
            kind = rewards if rewards != "mixed" else ("none" if i == 0 else "real")
            given = {"none": None, "real": rng.random(T).astype(np.float32), "zeros": np.zeros(T, np.float32)}
            w.add_episode(
                actions=rng.random((T, 2)).astype(np.float32),
                states=rng.random((T, 3)).astype(np.float32),
                rewards=given[kind],
                task=kind,
            )
    return path


@pytest.mark.parametrize("as_db", [False, True])
def test_reward_windows_refuse_a_file_without_rewards(tmp_path: Path, as_db: bool) -> None:
    path = write(tmp_path / "none.kdb", "none")
    source = kinodb.open(path) if as_db else path
    with pytest.raises(KinodbError, match=r"none\.kdb.*holds none.*placeholder.*leave 'next\.reward' out"):
        FrameWindows(source, delta_timestamps=REWARD)


def test_reward_windows_refuse_the_mixture_source_without_rewards(tmp_path: Path) -> None:
    real, none = write(tmp_path / "real.kdb", "real"), write(tmp_path / "none.kdb", "none")
    mix = kinodb.Mixture({str(real): 1, str(none): 1})
    with pytest.raises(KinodbError, match=r"source 1 \(.*none\.kdb\).*holds none.*out of the Mixture"):
        FrameWindows(mix, delta_timestamps={"reward": [0.0]})
    FrameWindows(mix, delta_timestamps={"action": [0.0]})  # rewards not asked for: no check


def test_reward_windows_serve_real_and_explicit_zero_rewards(tmp_path: Path) -> None:
    for kind in ("real", "zeros", "mixed"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore" if kind == "mixed" else "error")
            fw = FrameWindows(write(tmp_path / f"{kind}.kdb", kind), delta_timestamps=REWARD)
        batch = fw.lowdim(np.arange(len(fw)))
        assert batch["reward"].shape == (len(fw), 2)
        if kind == "zeros":  # given by the caller: total_reward 0.0, real zeros
            assert not batch["reward"].any()


def test_reward_windows_check_only_the_selected_episodes(tmp_path: Path) -> None:
    path = write(tmp_path / "mixed.kdb", "mixed", episodes=3)
    FrameWindows(path, delta_timestamps=REWARD, kql_filter="task = 'real'")
    with pytest.raises(KinodbError, match="holds none"):
        FrameWindows(path, delta_timestamps=REWARD, kql_filter="task = 'none'")


def test_reward_windows_warn_where_some_episodes_hold_the_placeholder(tmp_path: Path) -> None:
    path = write(tmp_path / "mixed.kdb", "mixed", episodes=3)  # episode 0 without rewards
    with pytest.warns(
        UserWarning,
        match=r"mixed\.kdb: windows ask for rewards \('next\.reward'\), but 1 of its 3 "
        r"selected episodes hold none \(episodes 0, positions.*total_reward IS NOT NULL",
    ) as said:
        FrameWindows(path, delta_timestamps=REWARD)
    assert said[0].filename == __file__  # the caller's line
    with warnings.catch_warnings():  # the advice works
        warnings.simplefilter("error")
        fw = FrameWindows(path, delta_timestamps=REWARD, kql_filter="total_reward IS NOT NULL")
    assert set(fw.lowdim(np.arange(len(fw)))["episode_index"].tolist()) == {1, 2}
