"""`KinoRemoteDataset` items leave DataLoader workers as `TensorBatch`es; arguments are checked
when the dataset is made, not in a worker."""

from __future__ import annotations

import multiprocessing
from typing import Any

import pytest

from _server_proc import ServerProcess

torch = pytest.importorskip("torch", reason="KinoRemoteDataset needs torch")
from torch.utils.data import DataLoader  # noqa: E402

from kinodb.remote import KinoRemoteDataset  # noqa: E402
from kinodb.torch import TensorBatch  # noqa: E402

# Workers start from a fork server, a process that never used gRPC (see test_serve_dataset.py).
FORKSERVER = {"multiprocessing_context": "forkserver", "timeout": 120}
multiprocessing.get_context("forkserver").set_forkserver_preload(["torch", "kinodb.remote"])


def _same(got: Any, want: Any, where: str = "") -> None:
    if isinstance(want, dict):
        assert set(got) == set(want), where
        for key in want:
            _same(got[key], want[key], f"{where}.{key}")
    elif isinstance(want, torch.Tensor):
        assert got.dtype == want.dtype and got.shape == want.shape, where
        assert torch.equal(got, want), where
    else:
        assert got == want, where


@pytest.mark.parametrize(
    "kw",
    [
        {"windows": {"obs_horizon": 2, "action_horizon": 4}},
        {"windows": {"obs_horizon": 2}, "image_key": ["cam", "wrist"], "image_size": (6, 6)},
        {},  # episodes
    ],
    ids=["windows", "windows-with-images", "episodes"],
)
def test_items_cross_workers_as_tensor_batches(server: ServerProcess, kw: dict[str, Any]) -> None:
    def epoch(workers: int) -> list[Any]:
        ds = KinoRemoteDataset(server.addr, batch_size=16, mode="sequential", num_batches=4, **kw)
        loader = DataLoader(ds, batch_size=None, num_workers=workers, **(FORKSERVER if workers else {}))
        return list(loader)

    alone, spread = epoch(0), epoch(2)
    assert len(alone) == len(spread) == (4 if "windows" in kw else 64)
    if "windows" not in kw:  # workers hand over episodes one at a time, in turn: the same ones
        alone, spread = (sorted(items, key=lambda e: e["episode_index"]) for items in (alone, spread))
    for a, b in zip(alone, spread, strict=True):
        # A plain dict would arrive as a plain dict: the type says how the item crossed.
        assert type(a) is TensorBatch and type(b) is TensorBatch
        _same(b, a)


def test_episodes_with_frames_stay_plain_dicts(server: ServerProcess) -> None:
    ds = KinoRemoteDataset(server.addr, batch_size=4, mode="sequential", num_batches=1, image_key="wrist")
    items = list(DataLoader(ds, batch_size=None))
    assert len(items) == 4 and all(type(item) is dict for item in items)
    assert items[0]["image"].shape[1:] == (3, 8, 8)


@pytest.mark.parametrize("kw", [{}, {"include_images": False}])
def test_image_size_without_images_is_refused_when_made(kw: dict[str, Any]) -> None:
    windows = {"obs_horizon": 2, "action_horizon": 16}
    with pytest.raises(ValueError, match="image_size resizes window frames, but images are off: pass "
                                         "include_images=True"):  # fmt: skip
        KinoRemoteDataset("127.0.0.1:9", windows=windows, image_size=(96, 96), **kw)
    for ok in ({"include_images": True}, {"image_key": "cam"}):
        KinoRemoteDataset("127.0.0.1:9", windows=windows, image_size=(96, 96), **ok)


@pytest.mark.parametrize("size", [(0, 5), (96,), "96x96"])
def test_a_malformed_image_size_is_refused_when_made(size: Any) -> None:
    with pytest.raises(ValueError, match="image_size must be"):
        KinoRemoteDataset("127.0.0.1:9", windows={}, include_images=True, image_size=size)
