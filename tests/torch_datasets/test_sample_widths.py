"""Single samples of a dataset over several schemas carry its widths: pad_collate pads any
batch of them to the widest of all sources, and the default collate names the fix."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader, Dataset

import kinodb
from _factories import write_episodes
from kinodb.torch import KinoFrameDataset, KinoIterDataset, from_mixture, pad_collate
from kinodb.torch._collate import Sample


@pytest.fixture
def narrow_and_wide(tmp_path: Path) -> tuple[str, str]:
    """A narrow robot (state 3, action 2), float32; a wide one (state 6, action 7), float64."""
    narrow, wide = tmp_path / "narrow.kdb", tmp_path / "wide.kdb"
    write_episodes(narrow, [8, 9, 7])
    rng = torch.Generator().manual_seed(0)
    with kinodb.Writer(wide) as w:
        for T in (4, 5):
            w.add_episode(states=torch.randn(T, 6, generator=rng, dtype=torch.float64).numpy(),
                          actions=torch.randn(T, 7, generator=rng, dtype=torch.float64).numpy(), fps=10.0)  # fmt: skip
    return str(narrow), str(wide)


class Wrapper(Dataset[Any]):
    """A wrapper dataset, as augmentation adds one: items handed on one by one."""

    def __init__(self, inner: KinoFrameDataset) -> None:
        self.inner = inner

    def __len__(self) -> int:
        return len(self.inner)

    def __getitem__(self, i: int) -> Any:
        return self.inner[i]


def _layout(batch: dict[str, Any]) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    return {k: (tuple(v.shape[1:]), v.dtype) for k, v in batch.items() if isinstance(v, torch.Tensor)}


@pytest.mark.parametrize("num_workers", [0, 2])
def test_a_sample_stream_collated_by_pad_collate_has_one_layout(
    narrow_and_wide: tuple[str, str], num_workers: int
) -> None:
    # 10:1 draws: most batches of 4 hold narrow samples only, which were padded to the
    # widest of their own batch before.
    narrow, wide = narrow_and_wide
    ds = from_mixture({narrow: 10, wide: 1}, num_samples=60, obs_horizon=2, action_horizon=3, image_key=False,
                      seed=0)  # fmt: skip
    batches = list(DataLoader(ds, batch_size=4, collate_fn=pad_collate, num_workers=num_workers))
    assert any(set(b["source"].tolist()) == {0} for b in batches)
    layouts = {tuple(sorted(_layout(b).items())) for b in batches}
    assert len(layouts) == 1
    layout = dict(next(iter(layouts)))
    assert layout["state"] == ((2, 6), torch.float64) and layout["action"] == ((3, 7), torch.float64)
    assert layout["action_mask"] == ((3, 7), torch.bool)
    made = list(DataLoader(from_mixture({narrow: 10, wide: 1}, num_samples=60, obs_horizon=2, action_horizon=3,
                                        image_key=False, seed=0, batch_size=4), batch_size=None))  # fmt: skip
    assert all(_layout(got) == _layout(made[0]) for got in batches)  # as the batches the stream makes
    if num_workers == 0:  # (workers deal single samples out in turn: other batches, alike)
        for got, want in zip(batches, made, strict=True):
            for key in ("state", "action", "state_mask", "action_mask", "source", "frame_index"):
                assert torch.equal(got[key], want[key]), key


def test_items_of_a_wrapper_dataset_pad_to_the_widest_source(narrow_and_wide: tuple[str, str]) -> None:
    ds = KinoFrameDataset(
        kinodb.Mixture(list(narrow_and_wide)), obs_horizon=2, action_horizon=3, image_key=False
    )
    item = ds[0]
    assert isinstance(item, dict) and isinstance(item, Sample) and item.pad is not None
    assert item["state"].shape == (2, 3)  # the item itself keeps its own width
    loader = DataLoader(
        Wrapper(ds), batch_size=4, sampler=[0, 1, 2, 3, 24, 25, 26, 27], collate_fn=pad_collate
    )
    narrow_only, wide_only = list(loader)
    for batch in (narrow_only, wide_only):
        assert batch["state"].shape == (4, 2, 6) and batch["state"].dtype == torch.float64
        assert batch["action"].shape == (4, 3, 7) and batch["action_mask"].shape == (4, 3, 7)
    assert not narrow_only["action_mask"][..., 2:].any() and wide_only["action_mask"].all()
    gathered = next(iter(DataLoader(ds, batch_size=4, collate_fn=pad_collate)))  # the batch path, alike
    for key in ("state", "action", "state_mask", "action_mask", "state_is_pad"):
        assert torch.equal(narrow_only[key], gathered[key]), key
    again = pickle.loads(pickle.dumps(item))  # the widths travel with a pickled item
    assert (
        type(again) is Sample and again.pad == item.pad and pad_collate([again])["state"].shape == (1, 2, 6)
    )


def test_a_wrapper_with_the_default_collate_names_pad_collate(narrow_and_wide: tuple[str, str]) -> None:
    ds = KinoFrameDataset(kinodb.Mixture(list(narrow_and_wide)), action_horizon=2, image_key=False)
    with pytest.raises(
        kinodb.KinodbError, match=r"mixes 'state' of shapes .*collate_fn=kinodb\.torch\.pad_collate"
    ):
        next(iter(DataLoader(Wrapper(ds), batch_sampler=[[0, 30]])))
    same = next(iter(DataLoader(Wrapper(ds), batch_sampler=[[0, 1]])))  # one source: stacked as it is
    assert same["state"].shape == (2, 1, 3) and "state_mask" not in same


def test_the_streams_default_collate_error_suggests_what_works_for_it(
    narrow_and_wide: tuple[str, str],
) -> None:
    narrow, wide = narrow_and_wide
    ds = from_mixture({narrow: 1, wide: 1}, num_samples=32, action_horizon=2, image_key=False)
    with pytest.raises(kinodb.KinodbError) as err:
        for _ in DataLoader(ds, batch_size=16):
            pass
    text = str(err.value)
    assert "collate_fn=kinodb.torch.pad_collate" in text
    assert "a KinoIterDataset pads the batches it makes itself with batch_size=" in text
    assert "a map-style dataset may instead batch by schema" in text


def test_one_schema_keeps_its_plain_items_and_batches(tmp_path: Path) -> None:
    path = tmp_path / "one.kdb"
    write_episodes(path, [5, 6])
    ds = KinoFrameDataset(path, action_horizon=2, image_key=False)
    assert ds[0].pad is None  # type: ignore[attr-defined]
    batch = pad_collate([ds[i] for i in range(4)])
    assert batch["state"].shape == (4, 1, 3) and batch["state"].dtype == torch.float32
    stream = KinoIterDataset(path, action_horizon=2, image_key=False, shuffle=False)
    plain = next(iter(DataLoader(stream, batch_size=4)))
    assert "state_mask" not in plain and plain["action"].shape == (4, 2, 2)
