"""Samples taken from a batch gathered at once keep the edits made to them, through every
collate; a batch left untouched is still handed on as gathered."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader, Dataset, default_collate

import kinodb
from _factories import write_episodes
from kinodb.torch import KinoFrameDataset, collate, pad_collate
from kinodb.torch._collate import Batch, MixedBatch, Sample


@pytest.fixture
def cameras(tmp_path: Path) -> KinoFrameDataset:
    """16 windows with two cameras: items hold ``images`` ``{camera: frames}``."""
    path = tmp_path / "cams.kdb"
    write_episodes(path, [7, 9], cameras={"front": (4, 6, 3), "side": (4, 6, 3)})
    return KinoFrameDataset(path, obs_horizon=2, action_horizon=3, image_key=["front", "side"])


@pytest.fixture
def two_schemas(tmp_path: Path) -> KinoFrameDataset:
    """A mixture of (state 3, action 2) and (state 5, action 4) windows."""
    a, b = tmp_path / "a.kdb", tmp_path / "b.kdb"
    write_episodes(a, [5, 6])
    write_episodes(b, [4, 7], state_dim=5, action_dim=4, seed=1)
    return KinoFrameDataset(kinodb.Mixture({str(a): 1, str(b): 1}), action_horizon=2, image_key=False)


class Shifted(Dataset[Any]):
    """A wrapper that forwards ``__getitems__`` and edits every sample it hands on."""

    def __init__(self, inner: KinoFrameDataset, edit: Any) -> None:
        self.inner, self.edit = inner, edit

    def __len__(self) -> int:
        return len(self.inner)

    def __getitems__(self, indices: list[int]) -> Any:
        batch = self.inner.__getitems__(indices)
        for sample in batch:
            self.edit(sample)
        return batch


def _shift_state(sample: dict[str, Any]) -> None:
    sample["state"] = sample["state"] + 1000.0


def test_a_sample_of_a_batch_is_made_once_and_keeps_what_is_set(cameras: KinoFrameDataset) -> None:
    batch = cameras.__getitems__([0, 1, 2])
    assert batch[0] is batch[0] is batch[-3]
    assert [s is t for s, t in zip(batch, [*batch[:2], batch[2]], strict=True)] == [True] * 3
    assert not batch.edited
    batch[0]["state"] = torch.full((2, 3), 7.0)
    assert float(batch[0]["state"][0, 0]) == 7.0 and batch.edited
    assert float(batch.stacked["state"][0, 0, 0]) != 7.0  # the gathered arrays are left as they were


@pytest.mark.parametrize(
    "collate_fn", [None, collate, default_collate, pad_collate], ids=["loader", "kinodb", "default", "pad"]
)
def test_edits_made_by_a_wrapper_dataset_are_collated(cameras: KinoFrameDataset, collate_fn: Any) -> None:
    plain = next(
        iter(DataLoader(cameras, batch_size=8, **({"collate_fn": collate_fn} if collate_fn else {})))
    )
    loader = DataLoader(Shifted(cameras, _shift_state), batch_size=8,
                        **({"collate_fn": collate_fn} if collate_fn else {}))  # fmt: skip
    edited = next(iter(loader))
    torch.testing.assert_close(edited["state"], plain["state"] + 1000.0)
    for key in ("action", "state_is_pad", "frame_index", "source"):
        torch.testing.assert_close(edited[key], plain[key])
    for cam in ("front", "side"):
        torch.testing.assert_close(edited["images"][cam], plain["images"][cam])
    assert edited["task"] == plain["task"]


def test_edits_to_a_samples_images_and_removed_keys_are_collated(cameras: KinoFrameDataset) -> None:
    def edit(sample: dict[str, Any]) -> None:
        sample["images"]["front"] = torch.zeros_like(sample["images"]["front"])
        del sample["frame_index"]
        sample.pop("task")

    plain = next(iter(DataLoader(cameras, batch_size=4)))
    for collate_fn in (default_collate, collate, pad_collate):
        got = next(iter(DataLoader(Shifted(cameras, edit), batch_size=4, collate_fn=collate_fn)))
        assert "frame_index" not in got and "task" not in got
        assert not got["images"]["front"].any()
        torch.testing.assert_close(got["images"]["side"], plain["images"]["side"])
        torch.testing.assert_close(got["state"], plain["state"])


@pytest.mark.parametrize(
    "change",
    [
        lambda s: s.update(extra=torch.ones(())),
        lambda s: s.setdefault("extra", torch.ones(())),
        lambda s: s.__ior__({"extra": torch.ones(())}),
        lambda s: s.popitem(),
        lambda s: s.clear(),
    ],
    ids=["update", "setdefault", "ior", "popitem", "clear"],
)
def test_every_way_of_changing_a_sample_is_noted(cameras: KinoFrameDataset, change: Any) -> None:
    batch = cameras.__getitems__([0, 1])
    assert not batch[1].changed
    change(batch[1])
    assert batch[1].changed and batch.edited and not batch[0].changed


def test_an_untouched_batch_is_handed_on_as_gathered(cameras: KinoFrameDataset) -> None:
    batch = cameras.__getitems__(list(range(8)))
    batch[0]["state"].add_(0.0)  # read, and changed in place: a view of the gathered arrays
    _ = batch[3]["images"]["front"]
    batch[0].setdefault("state", None)  # a key it has: no change
    assert not batch.edited
    for collate_fn in (default_collate, collate):
        out = collate_fn(batch)
        assert (
            out["state"] is batch.stacked["state"]
            and out["images"]["front"] is batch.stacked["images"]["front"]
        )
    in_place = cameras.__getitems__([0, 1])
    in_place[1]["state"] += 5.0  # a view: set back in place, noted, and collated either way
    assert in_place.edited
    torch.testing.assert_close(default_collate(in_place)["state"], in_place.stacked["state"])


def test_edits_to_a_batch_of_several_schemas_are_padded(two_schemas: KinoFrameDataset) -> None:
    idx = [0, 1, 12, 13]  # two windows of each source
    batch = two_schemas.__getitems__(idx)
    assert isinstance(batch, MixedBatch)
    plain = pad_collate(batch)
    again = two_schemas.__getitems__(idx)
    for sample in again:
        sample["action"] = sample["action"] * 10.0
    got = pad_collate(again)
    torch.testing.assert_close(got["action"], plain["action"] * 10.0)
    torch.testing.assert_close(got["action_mask"], plain["action_mask"])
    torch.testing.assert_close(got["state"], plain["state"])
    one = two_schemas.__getitems__([0, 1, 2])  # one source: a Batch, padded to the widest source
    assert isinstance(one, Batch)
    want = pad_collate(one)
    one[2]["state"] = one[2]["state"] - 1.0
    got = pad_collate(one)
    assert got["state"].shape == want["state"].shape == (3, 1, 5)
    torch.testing.assert_close(got["state"][2, :, :3], want["state"][2, :, :3] - 1.0)
    torch.testing.assert_close(got["state"][:2], want["state"][:2])


def test_a_sample_pickles_as_made_with_its_widths(
    cameras: KinoFrameDataset, two_schemas: KinoFrameDataset
) -> None:
    sample = two_schemas.__getitems__([0])[0]
    sample["state"] = sample["state"] * 2
    again = pickle.loads(pickle.dumps(sample))
    assert isinstance(again, Sample) and again.pad == sample.pad and not again.changed
    torch.testing.assert_close(again["state"], sample["state"])
    images = pickle.loads(pickle.dumps(cameras.__getitems__([0])[0]))["images"]
    assert type(images) is dict and set(images) == {"front", "side"}
