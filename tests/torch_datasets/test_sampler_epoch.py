"""MixtureSampler.set_epoch takes an int >= 0, as KinoIterDataset.set_epoch does."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import kinodb
from _factories import write_episodes
from kinodb.torch import KinoMapDataset, MixtureSampler


@pytest.fixture
def sampler(tmp_path: Path) -> MixtureSampler:
    a, b = tmp_path / "a.kdb", tmp_path / "b.kdb"
    write_episodes(a, [3, 4, 5])
    write_episodes(b, [3, 3])
    return MixtureSampler(
        KinoMapDataset(kinodb.Mixture({str(a): 1, str(b): 2}, seed=0)), num_samples=12, seed=1
    )


@pytest.mark.parametrize("bad", [1.7, "2", -1, True, None, 2.0])
def test_set_epoch_refuses_what_is_not_an_int_of_zero_or_more(sampler: MixtureSampler, bad: object) -> None:
    with pytest.raises(
        ValueError, match=rf"^epoch must be a non-negative int, got {bad!r}$".replace("(", r"\(")
    ):
        sampler.set_epoch(bad)  # type: ignore[arg-type]
    assert sampler.epoch == 0


def test_set_epoch_takes_ints_numpy_ones_too(sampler: MixtureSampler) -> None:
    sampler.set_epoch(3)
    third = sampler.indices().tolist()
    sampler.set_epoch(np.int64(3))
    assert sampler.epoch == 3 and type(sampler.epoch) is int
    assert sampler.indices().tolist() == third
    sampler.set_epoch(0)
    assert sampler.indices().tolist() != third
