"""Sizes and ranks given as NumPy ints are taken, bools and floats refused when the dataset
is made; messages name what the user typed, and warnings point at the user's line."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

import kinodb
from _factories import write_episodes
from kinodb.torch import KinoFrameDataset, KinoIterDataset, KinoMapDataset, SchemaBatchSampler, from_mixture


@pytest.fixture
def files(tmp_path: Path) -> tuple[str, str]:
    """``a.kdb`` (3 episodes, camera front of 4x6 frames) and ``b.kdb`` (2 episodes, state 5)."""
    a, b = tmp_path / "a.kdb", tmp_path / "b.kdb"
    write_episodes(a, [5, 9, 3], cameras={"front": (4, 6, 3)})
    write_episodes(b, [4, 6], state_dim=5, cameras={"front": (4, 6, 3)}, seed=1)
    return str(a), str(b)


def test_numpy_ints_are_taken_as_sizes_and_ranks(files: tuple[str, str]) -> None:
    a, _ = files
    common = dict(obs_horizon=1, image_key=False, seed=3)
    as_int = KinoIterDataset(a, batch_size=4, num_samples=10, rank=1, world_size=2, **common)
    as_numpy = KinoIterDataset(
        a,
        batch_size=np.int64(4),
        num_samples=np.int32(10),
        rank=np.int64(1),
        world_size=np.int64(2),
        **common,
    )
    assert type(as_numpy.batch_size) is int and type(as_numpy.num_samples) is int
    assert len(as_numpy) == len(as_int) == 2
    assert as_numpy.worker_order().tolist() == as_int.worker_order().tolist()
    ds = KinoFrameDataset(a, image_key=False)
    sampler = SchemaBatchSampler(ds, np.int64(4), rank=np.int64(1), world_size=np.int64(2))
    assert type(sampler.batch_size) is int and (sampler.rank, sampler.world_size) == (1, 2)
    assert list(sampler) == list(SchemaBatchSampler(ds, 4, rank=1, world_size=2))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(rank=1.0, world_size=2), r"rank must be an int, got 1\.0 \(float\)"),
        (dict(rank=True, world_size=2), r"rank must be an int, got True \(bool\)"),
        (dict(rank=0, world_size=2.0), r"world_size must be an int, got 2\.0 \(float\)"),
        (
            dict(rank=np.int64(2), world_size=np.int64(2)),
            r"need 0 <= rank < world_size, got rank=2, world_size=2$",
        ),
        (dict(rank=1), "give both rank and world_size"),
        (dict(batch_size=True), "batch_size must be a positive int or None, got True"),
        (dict(batch_size=np.float64(8.0)), "batch_size must be a positive int or None"),
        (dict(num_samples=np.int64(0)), "num_samples must be a positive int or None"),
        (dict(num_samples=2.5), "num_samples must be a positive int or None"),
    ],
)
def test_bools_floats_and_ranks_out_of_range_are_refused_when_made(
    files: tuple[str, str], kwargs: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        KinoIterDataset(files[0], obs_horizon=1, image_key=False, **kwargs)  # type: ignore[arg-type]
    if "batch_size" in kwargs or "num_samples" in kwargs:
        return
    with pytest.raises(ValueError, match=message):
        SchemaBatchSampler(KinoFrameDataset(files[0], image_key=False), 4, **kwargs)  # type: ignore[arg-type]


def test_a_misspelt_delta_timestamps_feature_is_named_as_given(files: tuple[str, str]) -> None:
    with pytest.raises(
        kinodb.KinodbError, match=r"windows ask for 'stat' \('observation\.stat'\), but its episodes hold \["
    ):
        KinoFrameDataset(files[0], delta_timestamps={"observation.stat": [0.0]}, image_key=False)
    with pytest.raises(kinodb.KinodbError, match=r"windows ask for 'stats' \('observation\.stats'\)"):
        KinoFrameDataset(files[0], delta_timestamps={"observation.stats": [0.0]}, image_key=False)


def test_warnings_of_the_streams_point_at_the_callers_line(files: tuple[str, str]) -> None:
    a, b = files
    with pytest.warns(UserWarning, match="squashes camera 'front'") as record:
        KinoIterDataset(a, obs_horizon=2, image_size=4)
    assert [w.filename for w in record] == [__file__]
    with pytest.warns(UserWarning, match="squashes camera 'front'") as record:
        from_mixture({a: 1, b: 1}, obs_horizon=2, image_size=4, batch_size=2)
    assert [w.filename for w in record] == [__file__]
    with pytest.warns(UserWarning, match="squashes camera 'front'") as record:
        KinoMapDataset(a, image_size=4)
    assert [w.filename for w in record] == [__file__]
    # b keeps nothing but has no draws of 10 at weight 1 against 1000: warned of, not refused
    mix = kinodb.Mixture({a: 1000, b: 1})
    for windows in (dict(obs_horizon=1), {}):
        with pytest.warns(UserWarning, match=r"mixture source 1 .* keeps no") as record:
            KinoIterDataset(mix, kql_filter="state_dim = 3", num_samples=10, image_key=False, **windows)
        assert [w.filename for w in record] == [__file__]


def test_a_source_refused_for_its_draws_is_not_warned_of_first(files: tuple[str, str]) -> None:
    a, b = files
    mix = kinodb.Mixture({a: 1, b: 1})
    for windows in (dict(obs_horizon=1), {}):
        with warnings.catch_warnings(record=True) as record:
            warnings.simplefilter("always")
            with pytest.raises(kinodb.KinodbError, match=r"mixture source 1 .* has a share of the draws"):
                KinoIterDataset(mix, kql_filter="state_dim = 3", image_key=False, **windows)
        assert [str(w.message) for w in record] == []
