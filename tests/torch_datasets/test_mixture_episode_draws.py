"""Whole episodes of a mixture drawn by its weights: episode streams (`from_mixture`,
`KinoIterDataset`) and `MixtureSampler` over a `KinoMapDataset`; with ``weight_by="frame"``
in proportion to their length."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from torch.utils.data import DataLoader

import kinodb
from _factories import write_episodes
from kinodb.torch import KinoIterDataset, KinoMapDataset, MixtureSampler, from_mixture, pad_collate

A_LENGTHS, B_LENGTHS = [2, 6, 40, 12], [30, 3, 9]  # items 0..3, then 4..6; 60 and 42 frames


@pytest.fixture
def files(tmp_path: Path) -> tuple[str, str]:
    a, b = tmp_path / "a.kdb", tmp_path / "b.kdb"
    write_episodes(a, A_LENGTHS)
    write_episodes(b, B_LENGTHS, seed=1)
    return str(a), str(b)


def _episodes(items: list[dict]) -> Counter[tuple[int, int]]:
    return Counter((int(item["source"]), int(item["episode_index"])) for item in items)


def test_a_long_stream_draws_episodes_in_proportion_to_their_length(files: tuple[str, str]) -> None:
    a, b = files
    ds = from_mixture({a: 1, b: 1}, weight_by="frame", seed=0, num_samples=1200, image_key=False)
    counts = _episodes(list(ds))
    assert sum(counts.values()) == len(ds) == 1200
    # Source a: 600 draws are 10 whole passes over its 60 frames, so each episode exactly
    # 10 times its length (a uniform draw would give every episode 150).
    assert [counts[(0, e)] for e in range(4)] == [10 * n for n in A_LENGTHS]
    # Source b: 600 draws are 14 whole passes over its 42 frames and part of a 15th.
    for e, n in enumerate(B_LENGTHS):
        assert 14 * n <= counts[(1, e)] <= 15 * n
    # The same proportions as the mixture's own epochs, within one pass of each episode.
    pairs = kinodb.Mixture({a: 1, b: 1}, weight_by="frame", seed=0).weighted_epoch(1200)
    want = Counter(map(tuple, pairs.tolist()))
    for (s, e), got in counts.items():
        assert abs(got - want[(s, e)]) <= (A_LENGTHS, B_LENGTHS)[s][e]


def test_frame_passes_continue_across_epochs(files: tuple[str, str]) -> None:
    a, b = files
    ds = KinoIterDataset(kinodb.Mixture({a: 1, b: 2}, weight_by="frame"), num_samples=30, seed=4)
    drawn: Counter[int] = Counter()
    for epoch in range(6):  # 10 draws of source a per epoch: 6 epochs are one pass of its 60 frames
        order = ds.epoch_order(epoch)
        drawn.update(order[order < len(A_LENGTHS)].tolist())
    assert [drawn[e] for e in range(4)] == A_LENGTHS


def test_the_order_is_seeded_and_split_over_workers_and_ranks(files: tuple[str, str]) -> None:
    a, b = files
    mix = kinodb.Mixture({a: 1, b: 2}, weight_by="frame")
    ds = KinoIterDataset(mix, num_samples=90, seed=7, image_key=False)
    order = ds.epoch_order(2)
    np.testing.assert_array_equal(order, KinoIterDataset(mix, num_samples=90, seed=7).epoch_order(2))
    assert order.tolist() != ds.epoch_order(3).tolist()
    assert order.dtype == np.int64 and order.min() >= 0 and order.max() < len(ds)
    for world in (1, 3):
        for workers in (1, 2):
            parts = [
                KinoIterDataset(mix, num_samples=90, seed=7, rank=r, world_size=world).worker_order(
                    2, worker=w, num_workers=workers
                )
                for r in range(world)
                for w in range(workers)
            ]
            assert sorted(np.concatenate(parts).tolist()) == sorted(order.tolist())
    ds.set_epoch(2)
    read = [(int(item["source"]), int(item["episode_index"])) for item in ds]
    assert read == [(0, i) if i < len(A_LENGTHS) else (1, i - len(A_LENGTHS)) for i in order.tolist()]
    small = KinoIterDataset(mix, num_samples=12, seed=7, image_key=False)
    loaded = DataLoader(small, batch_size=None, num_workers=2)  # the workers deal out the rank's order
    assert [int(i["episode_index"]) for i in loaded] == [int(i["episode_index"]) for i in small]


def test_a_source_the_filter_empties_is_refused_by_its_frames(files: tuple[str, str]) -> None:
    a, b = files
    mix = kinodb.Mixture({a: 1, b: 1}, weight_by="frame")
    with pytest.raises(
        kinodb.KinodbError, match=r"mixture source 1 \(.*b\.kdb\) keeps no frames after the filters"
    ):
        KinoIterDataset(mix, kql_filter="num_frames = 40", num_samples=10, image_key=False)


# -- MixtureSampler over a KinoMapDataset ------------------------------------------------


def _counts(indices: list[int]) -> list[int]:
    return np.bincount(indices, minlength=len(A_LENGTHS) + len(B_LENGTHS)).tolist()


def test_episodes_are_drawn_by_the_weights_and_uniformly_within_a_source(files: tuple[str, str]) -> None:
    a, b = files
    mix = kinodb.Mixture({a: 1, b: 2})
    ds = KinoMapDataset(mix, image_key=False)
    sampler = MixtureSampler(ds, num_samples=36, seed=1)
    assert len(sampler) == 36
    # 12 draws of a (3 passes of its 4 episodes), 24 of b (8 passes of its 3)
    assert _counts(list(sampler)) == [3] * 4 + [8] * 3
    assert len(MixtureSampler(ds)) == len(ds) == 7


def test_frame_weights_draw_episodes_in_proportion_to_their_length(files: tuple[str, str]) -> None:
    a, b = files
    mix = kinodb.Mixture({a: 10, b: 7}, weight_by="frame")
    sampler = MixtureSampler(KinoMapDataset(mix, image_key=False), num_samples=204, seed=2)
    # 120 draws of a and 84 of b: two whole passes over each source's frames
    assert _counts(list(sampler)) == [2 * n for n in A_LENGTHS + B_LENGTHS]
    drawn: Counter[int] = Counter()
    for epoch in range(6):  # 10 draws of a per epoch: the passes go on across epochs
        sampler = MixtureSampler(KinoMapDataset(mix, image_key=False), num_samples=17, seed=2)
        sampler.set_epoch(epoch)
        drawn.update(i for i in sampler if i < len(A_LENGTHS))
    assert [drawn[e] for e in range(4)] == A_LENGTHS


def test_ranks_split_the_epoch_and_a_loader_reads_the_episodes(files: tuple[str, str]) -> None:
    a, b = files
    ds = KinoMapDataset(kinodb.Mixture({a: 1, b: 1}, weight_by="frame"), image_key=False)
    whole = list(MixtureSampler(ds, num_samples=10, seed=3))
    parts = [list(MixtureSampler(ds, num_samples=10, seed=3, rank=r, world_size=3)) for r in range(3)]
    assert [len(p) for p in parts] == [4, 4, 4]  # the epoch's first index twice, for equal ranks
    assert sorted(i for p in parts for i in p) == sorted([*whole, whole[0], whole[1]])
    sampler = MixtureSampler(ds, num_samples=10, seed=3)
    batches = list(DataLoader(ds, batch_size=4, sampler=sampler, num_workers=2, collate_fn=pad_collate))
    read = [(int(s), int(e)) for b in batches for s, e in zip(b["source"], b["episode_index"], strict=True)]
    assert read == [(0, i) if i < len(A_LENGTHS) else (1, i - len(A_LENGTHS)) for i in whole]


def test_datasets_it_cannot_draw_are_refused(files: tuple[str, str]) -> None:
    a, b = files
    mix = kinodb.Mixture({a: 1, b: 1})
    with pytest.raises(
        TypeError, match=r"KinoMapDataset over a kinodb\.Mixture, got a KinoIterDataset.*from_mixture"
    ):
        MixtureSampler(KinoIterDataset(mix, image_key=False))
    with pytest.raises(TypeError, match=r"over a kinodb\.Mixture, not over str"):
        MixtureSampler(KinoMapDataset(a, image_key=False))
    for weight_by, what in (("episode", "episodes"), ("frame", "frames")):
        with pytest.warns(UserWarning, match="keeps no episodes"):
            ds = KinoMapDataset(
                kinodb.Mixture({a: 1, b: 1}, weight_by=weight_by),
                kql_filter="num_frames = 40",
                image_key=False,
            )
        with pytest.raises(
            ValueError, match=rf"mixture source 1 \(.*b\.kdb\) keeps no {what} after the filters"
        ):
            MixtureSampler(ds, num_samples=10)
