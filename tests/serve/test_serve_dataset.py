"""`KinoRemoteDataset` against a real server: the local datasets' keys and values, DataLoader workers."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from _server_proc import ServerProcess

torch = pytest.importorskip("torch", reason="KinoRemoteDataset needs torch")
from torch.utils.data import DataLoader  # noqa: E402

from kinodb.remote import KinoClient, KinoRemoteDataset  # noqa: E402
from kinodb.torch import KinoFrameDataset, KinoMapDataset  # noqa: E402


def test_episode_samples_match_kino_map_dataset(server: ServerProcess, main_kdb: Path) -> None:
    ds = KinoRemoteDataset(
        server.addr, batch_size=6, mode="sequential", include_images=True, image_key="wrist"
    )
    local = KinoMapDataset(main_kdb, image_key="wrist")
    samples = list(DataLoader(ds, batch_size=None))
    assert [s["episode_index"] for s in samples] == [*range(20), 0, 1, 2, 3]  # 4 batches of 6
    for sample in samples[:20]:
        want = local[sample["episode_index"]]
        assert set(sample) == set(want)
        for key, value in want.items():
            if isinstance(value, torch.Tensor):
                assert sample[key].dtype == value.dtype, key
                torch.testing.assert_close(sample[key], value, rtol=0, atol=0)
            else:
                assert sample[key] == value, key


def test_window_batches_match_kino_frame_dataset(server: ServerProcess, main_kdb: Path) -> None:
    local = KinoFrameDataset(main_kdb, obs_horizon=2, action_horizon=4, image_key="cam")
    ds = KinoRemoteDataset(server.addr, batch_size=32, mode="sequential", include_images=True,
                           windows={"obs_horizon": 2, "action_horizon": 4})  # fmt: skip
    batches = list(DataLoader(ds, batch_size=None, num_workers=2))
    assert len(batches) == math.ceil(len(local) / 32)
    seen = torch.cat([b["index"] for b in batches])
    assert sorted(seen.tolist()) == sorted(np.arange(len(batches) * 32) % len(local))
    for batch in batches[:3]:
        want = local.__getitems__(batch["index"].tolist()).stacked
        assert set(want) <= set(batch)
        for key, value in want.items():
            if isinstance(value, torch.Tensor):
                assert batch[key].dtype == value.dtype, key
                torch.testing.assert_close(batch[key], value, rtol=0, atol=0)
            else:
                assert batch[key] == value, key


def test_seeded_epochs_over_workers(server: ServerProcess) -> None:
    def epoch(seed: int, e: int) -> list[list[int]]:
        ds = KinoRemoteDataset(
            server.addr, batch_size=16, seed=seed, num_batches=6, windows={"action_horizon": 2}
        )
        ds.set_epoch(e)
        return [b["index"].tolist() for b in DataLoader(ds, batch_size=None, num_workers=2)]

    first = epoch(5, 0)
    assert len(first) == 6 and len({tuple(b) for b in first}) == 6  # the two workers draw different batches
    assert epoch(5, 0) == first
    assert epoch(5, 1) != first and epoch(6, 0) != first
    unseeded = KinoRemoteDataset(server.addr, batch_size=4, num_batches=2, to_tensor=False)
    items = list(unseeded)
    assert len(items) == 8 and isinstance(items[0]["action"], np.ndarray)


def test_an_epoch_covers_the_windows_the_filter_keeps(server: ServerProcess, main_kdb: Path) -> None:
    kql = "success = true AND num_frames > 9"
    local = KinoFrameDataset(main_kdb, obs_horizon=2, action_horizon=4, kql_filter=kql)
    with KinoClient(server.addr) as client:
        assert len(local) < client.server_info()["num_frames"] - 8
    ds = KinoRemoteDataset(server.addr, batch_size=8, mode="sequential",
                           windows={"obs_horizon": 2, "action_horizon": 4, "kql_filter": kql})  # fmt: skip
    for workers in (0, 2):
        batches = list(DataLoader(ds, batch_size=None, num_workers=workers))
        assert len(batches) == math.ceil(len(local) / 8)
        seen = torch.cat([b["index"] for b in batches]).tolist()
        assert set(seen) == set(range(len(local)))  # every window the filter keeps, once (and a few again)
        assert len(seen) - len(local) < 8
