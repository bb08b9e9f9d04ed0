"""The torch datasets refuse what a later episode would break when they are made, in the
main process, not mid-epoch inside a DataLoader worker."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

import kinodb
from _factories import kql_advice, varied_episode, write_raw
from kinodb.torch import KinoFrameDataset, KinoMapDataset, pad_collate

RGB, GRAY, BIG = {"front": (8, 8, 3)}, {"front": (8, 8, 1)}, {"front": (16, 12, 3)}
CASES = {
    "array missing in episode 2": (
        [varied_episode(6, 0, force=(2,)), varied_episode(6, 1, force=(2,)), varied_episode(6, 2)],
        dict(delta_timestamps={"force": [0.0, 0.1]}, image_key=False),
        r"1 of 3 episodes have no array 'force' \(episode 2\)",
    ),
    "states float64 in episode 1": (
        [varied_episode(6, 0), varied_episode(6, 1, states=np.float64)],
        dict(obs_horizon=2, image_key=False),
        r"array 'states' is float64 \(5,\) per frame in 1 of 2 episodes \(episode 1\) but float32 \(5,\)",
    ),
    "extra array of widths 2 and 3": (
        [varied_episode(6, 0, force=(2,)), varied_episode(6, 1, force=(3,))],
        dict(delta_timestamps={"force": [0.0]}, image_key=False),
        r"array 'force' is float32 \(3,\) per frame in 1 of 2 episodes \(episode 1\)",
    ),
    "grayscale in episode 1, with image_size": (
        [varied_episode(6, 0, cameras=RGB), varied_episode(6, 1, cameras=GRAY)],
        dict(image_key="front", image_size=(8, 8)),
        r"camera 'front' has 1 channel\(s\) in 1 of 2 episodes of .* \(episode 1\) but 3 in the others",
    ),
    "16x12 in episode 2, no image_size": (
        [
            varied_episode(6, 0, cameras=RGB),
            varied_episode(6, 1, cameras=RGB),
            varied_episode(6, 2, cameras=BIG),
        ],
        dict(image_key="front"),
        r"camera 'front' is \(16, 12, 3\) in 1 of 3 episodes of .* \(episode 2\) but \(8, 8, 3\) in the "
        r"others; pass image_size=\(H, W\)",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_later_episode_unlike_the_first_is_refused_when_the_dataset_is_made(
    tmp_path: Path, case: str
) -> None:
    episodes, options, message = CASES[case]
    path = write_raw(tmp_path / "late.kdb", episodes)
    with pytest.raises(kinodb.KinodbError, match=message) as exc:
        KinoFrameDataset(path, **options)
    ds = KinoFrameDataset(path, **options, kql_filter=kql_advice(str(exc.value)))  # the advice works
    n = sum(len(b["action"]) for b in DataLoader(ds, batch_size=4, shuffle=True, num_workers=2))
    assert n == len(ds) == 6 * (len(episodes) - 1)


def test_sizes_that_differ_within_a_file_need_image_size_when_made(tmp_path: Path) -> None:
    path = write_raw(
        tmp_path / "sizes.kdb", [varied_episode(6, 0, cameras=RGB), varied_episode(6, 1, cameras=BIG)]
    )
    ds = KinoFrameDataset(path, image_key="front", image_size=(8, 8), normalize=False)
    shapes = {tuple(b["image"].shape[1:]) for b in DataLoader(ds, batch_size=4)}
    assert shapes == {(1, 3, 8, 8)}


def test_sources_that_differ_in_rank_are_refused_when_made(tmp_path: Path) -> None:
    a = write_raw(tmp_path / "a.kdb", [varied_episode(4, 0, force=(6,))])
    b = write_raw(tmp_path / "b.kdb", [varied_episode(5, 1, force=(2, 3))])
    mix = kinodb.Mixture({str(a): 1, str(b): 1})
    with pytest.raises(
        kinodb.KinodbError, match=r"the sources hold 'force' as .*not the kind of value or the rank"
    ):
        KinoFrameDataset(mix, delta_timestamps={"force": [0.0]}, image_key=False)
    widths = KinoFrameDataset(  # widths alone differ: padded, as before
        kinodb.Mixture({str(a): 1, str(write_raw(tmp_path / "c.kdb", [varied_episode(5, 1, force=(2,))])): 1}),
        delta_timestamps={"force": [0.0]}, image_key=False,
    )  # fmt: skip
    batch = next(iter(DataLoader(widths, batch_size=9, collate_fn=pad_collate)))
    assert batch["force"].shape == (9, 1, 6) and batch["force_mask"][4:, 0, 2:].logical_not().all()


def test_the_first_camera_is_looked_for_in_every_episode(tmp_path: Path) -> None:
    both = {"front": (8, 8, 3), "wrist": (4, 4, 3)}
    eps = [varied_episode(6, 0), varied_episode(6, 1, cameras=both), varied_episode(6, 2, cameras=both)]
    path = write_raw(tmp_path / "first.kdb", eps)  # episode 0 has no camera
    with pytest.raises(
        kinodb.KinodbError,
        match=r"1 of 3 episodes have no camera 'front' \(episode 0\); leave it out with "
        r'kql_filter="episode_id != 0", or pass image_key=False',
    ):
        KinoFrameDataset(path)  # image_key=None: the first camera, which episode 0 lacks
    for options in ({"image_key": "front"}, {"delta_timestamps": {"observation.images.front": [0.0]}}):
        with pytest.raises(kinodb.KinodbError, match=r"1 of 3 episodes have no camera 'front' \(episode 0\)"):
            KinoFrameDataset(path, **options)  # type: ignore[arg-type]
    ds = KinoFrameDataset(path, kql_filter="episode_id != 0", normalize=False)
    want = torch.from_numpy(np.concatenate([eps[1]["images"]["front"], eps[2]["images"]["front"]]))
    torch.testing.assert_close(
        ds.__getitems__(list(range(12))).stacked["image"][:, 0], want.permute(0, 3, 1, 2)
    )
    with pytest.raises(kinodb.KinodbError, match=r"1 of 3 episodes have no cameras \(episode 0\)"):
        KinoMapDataset(path)  # each episode's first camera: episode 0 has none
    items = KinoMapDataset(path, kql_filter="episode_id != 0", normalize=False)
    assert [tuple(items[i]["image"].shape) for i in range(2)] == [(6, 3, 8, 8)] * 2
    assert len(KinoFrameDataset(path, image_key=False)) == 18


def test_a_mixture_camera_some_episodes_lack_names_the_mixture_filter(tmp_path: Path) -> None:
    a = write_raw(tmp_path / "a.kdb", [varied_episode(4, 0, cameras={"cam_high": (6, 6, 3)})])
    b = write_raw(
        tmp_path / "b.kdb",
        [varied_episode(3, 1, cameras={**RGB, "wrist": (4, 4, 3)}), varied_episode(4, 2, cameras=RGB)],
    )
    mapping = {"front": ["cam_high", "wrist"]}
    with pytest.raises(kinodb.KinodbError) as exc:
        KinoFrameDataset(kinodb.Mixture({str(a): 1, str(b): 1}), image_key=mapping, image_size=(4, 4))
    msg = str(exc.value)
    assert "1 of 2 episodes have no camera 'wrist' (episode 1)" in msg and "kql_filter" not in msg
    assert f"Mixture(..., filters={{{str(b)!r}: 'episode_id != 1'}})" in msg
    ds = KinoFrameDataset(kinodb.Mixture({str(a): 1, str(b): 1}, filters={str(b): "episode_id != 1"}),
                          image_key=mapping, image_size=(4, 4))  # fmt: skip
    assert len(ds) == 7 and ds.__getitems__(list(range(7))).stacked["images"]["front"].shape == (
        7,
        1,
        3,
        4,
        4,
    )


def test_a_file_without_cameras_says_how_to_ask_for_windows_without_images(lowdim: Path) -> None:
    with pytest.raises(
        kinodb.NameNotFoundError, match="no cameras; pass image_key=False for windows without images"
    ):
        KinoFrameDataset(lowdim, image_key="front")
    with pytest.raises(
        kinodb.KinodbError, match=r"has cameras \[\]: leave the camera out of delta_timestamps"
    ):
        KinoFrameDataset(lowdim, image_key=False, delta_timestamps={"observation.images.front": [0.0]})


def test_delta_timestamps_that_are_not_a_mapping_are_refused_with_its_form(lowdim: Path) -> None:
    with pytest.raises(
        TypeError, match=r"delta_timestamps must map a feature to its offsets in seconds.*got list"
    ):
        KinoFrameDataset(lowdim, image_key=False, delta_timestamps=[0.0, 0.1])  # type: ignore[arg-type]


def test_a_dataset_over_a_closed_database_says_to_keep_it_open(lowdim: Path) -> None:
    with kinodb.open(lowdim) as db:
        ds = KinoMapDataset(db, image_key=False)
    with pytest.raises(ValueError, match=r"the database is closed; open it again .* keep it open while"):
        ds[0]
