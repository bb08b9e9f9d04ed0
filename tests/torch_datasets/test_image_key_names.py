"""``image_key`` names a camera as stored or as LeRobot's ``observation.images.CAM``, as
``delta_timestamps`` does; items keep the stored name."""

from __future__ import annotations

from pathlib import Path

import pytest

import kinodb
from _factories import write_episodes
from kinodb.torch import KinoFrameDataset, KinoMapDataset


@pytest.fixture
def cams(tmp_path: Path) -> Path:
    path = tmp_path / "cams.kdb"
    write_episodes(path, [4, 5], cameras={"front": (6, 8, 3), "wrist": (4, 4, 3)})
    return path


def test_image_key_takes_lerobot_camera_names(cams: Path) -> None:
    item = KinoFrameDataset(cams, image_key="observation.images.front")[2]
    assert "image" in item and "images" not in item and tuple(item["image"].shape) == (1, 3, 6, 8)
    ds = KinoFrameDataset(
        cams, image_key=["observation.images.front", "wrist"], delta_timestamps={"observation.images.front": [-0.1, 0.0]}
    )  # fmt: skip
    item = ds[2]
    assert sorted(item["images"]) == ["front", "wrist"] and tuple(item["images"]["front"].shape) == (
        2,
        3,
        6,
        8,
    )
    assert ds.windows.cameras == ["front", "wrist"]
    episode = KinoMapDataset(cams, image_key="observation.images.wrist")[1]
    assert tuple(episode["image"].shape) == (5, 3, 4, 4)


def test_image_key_refuses_one_camera_under_two_names_and_unknown_ones(cams: Path) -> None:
    with pytest.raises(
        ValueError, match=r"names camera 'front' twice, as 'front' and as 'observation.images.front'"
    ):
        KinoFrameDataset(cams, image_key=["front", "observation.images.front"])
    with pytest.raises(
        kinodb.KinodbError, match=r"no camera 'observation.images.back'; it has \['front', 'wrist'\]"
    ):
        KinoFrameDataset(cams, image_key="observation.images.back")
