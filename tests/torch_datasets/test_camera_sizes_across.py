"""Frame sizes across sources, int ``image_size`` on non-square frames, and source cameras
named in ``delta_timestamps`` under an ``image_key`` mapping."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

import kinodb
from _factories import write_episodes
from kinodb.torch import KinoFrameDataset, KinoIterDataset, KinoMapDataset, from_mixture


@pytest.fixture
def robots(tmp_path: Path) -> tuple[Path, Path]:
    """Two robots naming their camera apart, with frames of different sizes."""
    a, b = tmp_path / "a.kdb", tmp_path / "b.kdb"
    write_episodes(a, [5, 6], cameras={"image_0": (4, 4, 3)})
    write_episodes(b, [5, 6], cameras={"cam_high": (6, 8, 3)}, seed=1)
    return a, b


def test_stream_batches_refuse_sizes_that_differ_across_sources(robots: tuple[Path, Path]) -> None:
    a, b = robots
    mapping = {"front": ["image_0", "cam_high"]}
    with pytest.raises(
        kinodb.KinodbError, match=r"camera 'front' is 6x8 in .*b\.kdb.* but 4x4 in .*a\.kdb.*image_size"
    ):
        from_mixture({str(a): 1, str(b): 1}, obs_horizon=2, action_horizon=2, image_key=mapping, batch_size=4)
    with pytest.raises(kinodb.KinodbError, match=r"several sizes"):
        KinoIterDataset([str(a), str(b)], obs_horizon=1, image_key=mapping, batch_size=4)
    # a source without draws, image_size, or single samples (no batches made) are accepted
    from_mixture({str(a): 9, str(b): 1}, obs_horizon=2, image_key=mapping, batch_size=4, num_samples=1)
    ds = from_mixture(
        {str(a): 1, str(b): 1}, obs_horizon=2, image_key=mapping, batch_size=4, image_size=(4, 4)
    )
    assert tuple(next(iter(ds))["images"]["front"].shape) == (4, 2, 3, 4, 4)
    from_mixture({str(a): 1, str(b): 1}, obs_horizon=2, image_key=mapping)


def test_int_image_size_warns_on_non_square_frames(robots: tuple[Path, Path]) -> None:
    a, b = robots
    with pytest.warns(UserWarning, match=r"camera 'cam_high' \(6x8 in .*b\.kdb\).*image_size=\(3, 4\)"):
        ds = KinoFrameDataset(b, image_key="cam_high", image_size=3)
    assert tuple(ds[0]["image"].shape) == (1, 3, 3, 3)  # (N, N): squashed
    with pytest.warns(UserWarning, match=r"camera 'cam_high' \(6x8"):
        KinoMapDataset(b, image_key="cam_high", image_size=3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        KinoFrameDataset(a, image_key="image_0", image_size=3)  # square frames: no warning
        KinoFrameDataset(b, image_key="cam_high", image_size=(3, 3))  # a pair: as asked


def test_delta_timestamps_naming_a_source_camera_names_the_output_camera(robots: tuple[Path, Path]) -> None:
    a, b = robots
    mix = kinodb.Mixture({str(a): 1, str(b): 1})
    for name in ("observation.images.cam_high", "cam_high"):
        with pytest.raises(
            kinodb.KinodbError,
            match=r"name the output camera instead: 'observation.images.front' \(which maps 'cam_high' in source 1\)",
        ):
            KinoFrameDataset(mix, image_key={"front": ["image_0", "cam_high"]}, image_size=(4, 4),
                             delta_timestamps={name: [-0.1, 0.0]})  # fmt: skip
    ds = KinoFrameDataset(mix, image_key={"front": ["image_0", "cam_high"]}, image_size=(4, 4),
                          delta_timestamps={"observation.images.front": [-0.1, 0.0]})  # fmt: skip
    assert tuple(ds[0]["images"]["front"].shape) == (2, 3, 4, 4)
