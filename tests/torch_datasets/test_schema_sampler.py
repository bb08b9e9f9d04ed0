"""SchemaBatchSampler: batches of one schema and one frame size per camera, split by rank."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from torch.utils.data import DataLoader

import kinodb
from _factories import write_episodes
from kinodb.torch import KinoFrameDataset, KinoMapDataset, SchemaBatchSampler


@pytest.fixture
def two_schemas(tmp_path: Path) -> KinoFrameDataset:
    """17 windows of (state 3, action 2) and 14 of (state 5, action 4)."""
    a, b = tmp_path / "a.kdb", tmp_path / "b.kdb"
    write_episodes(a, [5, 9, 3])
    write_episodes(b, [7, 7], state_dim=5, action_dim=4, seed=1)
    return KinoFrameDataset(kinodb.Mixture({str(a): 1, str(b): 1}), action_horizon=2, image_key=False)


@pytest.mark.parametrize("world", [2, 3, 4, 12])
@pytest.mark.parametrize("drop_last", [False, True])
def test_ranks_take_disjoint_batches_and_as_many_each(
    two_schemas: KinoFrameDataset, world: int, drop_last: bool
) -> None:
    keys = two_schemas.schema_keys()
    whole = list(SchemaBatchSampler(two_schemas, 4, seed=3, drop_last=drop_last))
    assert len(whole) == (4 + 3 if drop_last else 5 + 4)
    parts = [
        list(SchemaBatchSampler(two_schemas, 4, seed=3, drop_last=drop_last, rank=r, world_size=world))
        for r in range(world)
    ]
    want = len(whole) // world if drop_last else -(-len(whole) // world)
    assert [len(p) for p in parts] == [want] * world
    assert (
        len(SchemaBatchSampler(two_schemas, 4, drop_last=drop_last, rank=world - 1, world_size=world)) == want
    )
    dealt = [b for r in range(want) for b in (p[r] for p in parts)]  # back in the epoch's order
    if drop_last:  # the epoch's last batches, that do not divide among the ranks, left out
        assert dealt == whole[: want * world]
    else:  # the epoch, then its first batches again up to a multiple of the world size
        assert dealt == [whole[i % len(whole)] for i in range(want * world)]
    for batch in (b for p in parts for b in p):
        assert len({tuple(keys[i]) for i in batch}) == 1


def test_set_epoch_reshuffles_alike_on_every_rank(two_schemas: KinoFrameDataset) -> None:
    samplers = [SchemaBatchSampler(two_schemas, 4, seed=1, rank=r, world_size=2) for r in range(2)]
    epochs = []
    for epoch in (0, 1):
        whole = SchemaBatchSampler(two_schemas, 4, seed=1)
        whole.set_epoch(epoch)
        want = list(whole)  # 9 batches: 5 per rank, the epoch's first one twice
        for s in samplers:
            s.set_epoch(epoch)
        parts = [list(s) for s in samplers]
        assert parts == [[want[i] for i in (0, 2, 4, 6, 8)], [want[i] for i in (1, 3, 5, 7, 0)]]
        epochs.append(parts)
    assert epochs[0] != epochs[1]


def test_rank_and_world_size_are_checked(two_schemas: KinoFrameDataset) -> None:
    with pytest.raises(ValueError, match="give both rank and world_size"):
        SchemaBatchSampler(two_schemas, 4, rank=0)
    with pytest.raises(ValueError, match=r"need 0 <= rank < world_size, got rank=2, world_size=2"):
        SchemaBatchSampler(two_schemas, 4, rank=2, world_size=2)
    with pytest.raises(ValueError, match="seed must be a non-negative int"):
        SchemaBatchSampler(two_schemas, 4, seed=-1)


def test_same_dims_but_other_frame_sizes_never_share_a_batch(tmp_path: Path) -> None:
    # Two 7-DoF robots, 64x64 and 96x96 frames: the same (state_dim, action_dim).
    small, large = tmp_path / "small.kdb", tmp_path / "large.kdb"
    write_episodes(small, [6, 6], state_dim=7, action_dim=7, cameras={"image_0": (8, 8, 3)})
    write_episodes(large, [5, 5], state_dim=7, action_dim=7, cameras={"front": (12, 12, 3)}, seed=1)
    mix = kinodb.Mixture({str(small): 1, str(large): 1})
    cams = {"front": ["image_0", "front"]}
    ds = KinoFrameDataset(mix, obs_horizon=2, action_horizon=3, image_key=cams)
    assert len({tuple(k) for k in ds.schema_keys()}) == 1
    sampler = SchemaBatchSampler(ds, 5, seed=0)
    sizes = []
    for batch in DataLoader(ds, batch_sampler=sampler):  # each batch stacks one frame size
        sizes.append(tuple(batch["images"]["front"].shape[-2:]))
        assert len(set(batch["source"].tolist())) == 1
    assert sorted(set(sizes)) == [(8, 8), (12, 12)] and len(sizes) == len(sampler) == 3 + 2
    resized = KinoFrameDataset(mix, obs_horizon=2, action_horizon=3, image_key=cams, image_size=(8, 8))
    keys = resized.batch_keys()  # one size for all: the sources may share batches
    assert len({tuple(k) for k in keys}) == 1 and len(SchemaBatchSampler(resized, 5)) == 5
    batch = next(iter(DataLoader(resized, batch_sampler=SchemaBatchSampler(resized, 22, shuffle=False))))
    assert set(batch["source"].tolist()) == {0, 1} and batch["images"]["front"].shape == (22, 2, 3, 8, 8)


def test_batch_keys_are_the_schema_then_each_cameras_frame_size(tmp_path: Path) -> None:
    a, b = tmp_path / "a.kdb", tmp_path / "b.kdb"
    write_episodes(a, [3], cameras={"top": (6, 8, 3), "wrist": (4, 4, 1)})
    write_episodes(b, [2], action_dim=5, cameras={"top": (6, 8, 3), "wrist": (4, 4, 1)})
    ds = KinoFrameDataset([str(a), str(b)], image_key=["top", "wrist"])
    want = [[3, 2, 6, 8, 3, 4, 4, 1]] * 3 + [[3, 5, 6, 8, 3, 4, 4, 1]] * 2
    assert ds.batch_keys().tolist() == want and ds.batch_keys().dtype == np.int64
    sized = KinoFrameDataset([str(a), str(b)], image_key=["top", "wrist"], image_size=(4, 4))
    assert sized.batch_keys().tolist() == [[3, 2, 3, 1]] * 3 + [[3, 5, 3, 1]] * 2  # channels only
    assert KinoFrameDataset(str(a), image_key=False).batch_keys().tolist() == [[3, 2]] * 3
    episodes = KinoMapDataset([str(a), str(b)], image_key=False)  # no batch_keys: by schema_keys
    assert sorted(map(sorted, SchemaBatchSampler(episodes, 4, shuffle=False))) == [[0], [1]]
