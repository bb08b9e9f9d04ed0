"""A normalising dataset over integer states or actions says that normalisation needs
floats and how to store them so, not to run kino stats (which skips integer arrays)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("torch")
import kinodb
from kinodb.stats import compute_stats, write_stats
from kinodb.torch import KinoFrameDataset, KinoIterDataset, KinoMapDataset

DATASETS = [KinoFrameDataset, KinoMapDataset, KinoIterDataset]


def _write(path: Path, *, states: Any = np.int32, actions: Any = np.float32, stats: bool = True) -> Path:
    rng = np.random.default_rng(0)
    with kinodb.Writer(path, mode="w") as w:
        for T in (5, 6):
            w.add_episode(
                actions=(rng.normal(size=(T, 2)) * 100).astype(actions),
                states=(rng.normal(size=(T, 3)) * 100).astype(states),
            )
    if stats:
        write_stats(path, compute_stats(path))
    return path


def _refusal(cls: Any, path: Path) -> str:
    with pytest.raises(kinodb.KinodbError) as info:
        cls(path, image_key=False, normalize="mean_std")
    return str(info.value)


@pytest.mark.parametrize("cls", DATASETS)
@pytest.mark.parametrize("stats", [True, False], ids=["with_stats", "no_stats"])
def test_integer_states_are_refused_with_the_float_advice(tmp_path: Path, cls: Any, stats: bool) -> None:
    path = _write(tmp_path / "ticks.kdb", stats=stats)
    message = _refusal(cls, path)
    assert message.startswith(f"{path}: normalize='mean_std' needs floating-point states, but the file stores "
                              "states as int32 (")  # fmt: skip
    assert "states=states.astype(np.float32)" in message
    assert message.endswith("or leave normalize unset")
    assert "run: kino stats" not in message


def test_integer_states_and_actions_are_named_together(tmp_path: Path) -> None:
    path = _write(tmp_path / "ticks.kdb", states=np.int16, actions=np.int64)
    message = _refusal(KinoFrameDataset, path)
    assert (
        "needs floating-point states and actions, but the file stores states as int16 and actions as int64"
        in (message)
    )
    assert "run: kino stats" not in message


def test_missing_statistics_of_float_arrays_still_advise_kino_stats(tmp_path: Path) -> None:
    path = _write(tmp_path / "floats.kdb", states=np.float32, stats=False)
    write_stats(path, compute_stats(path, arrays=["actions"]))
    message = _refusal(KinoFrameDataset, path)
    assert re.search(
        r"needs statistics of states, but its stored statistics have none.*run: kino stats", message
    )


def test_the_advice_works_once_the_states_are_written_as_floats(tmp_path: Path) -> None:
    ticks = _write(tmp_path / "ticks.kdb")
    floats = tmp_path / "floats.kdb"
    with kinodb.open(ticks) as db, kinodb.Writer(floats, mode="w") as w:
        for i in range(len(db)):
            ep = db[i]
            w.add_episode(actions=ep["actions"], states=ep["states"].astype(np.float32))
    write_stats(floats, compute_stats(floats))
    frame = KinoFrameDataset(floats, image_key=False, normalize="mean_std")[0]
    assert frame["state"].dtype.is_floating_point


def test_integer_states_without_features_need_no_statistics(tmp_path: Path) -> None:
    path = tmp_path / "no_states.kdb"
    with kinodb.Writer(path, mode="w") as w:
        w.add_episode(actions=np.arange(8, dtype=np.float32).reshape(4, 2), states=np.zeros((4, 0), np.int32))
    write_stats(path, compute_stats(path))
    assert KinoFrameDataset(path, image_key=False, normalize="mean_std")[0]["action"].shape == (1, 2)
