"""Messages about a mixture's sources: the fixes they give are each source's own (a filter
in the mixture, a camera per source), and a source the filters empty is warned of."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

import kinodb
from _factories import write_episodes
from kinodb.torch import KinoFrameDataset, KinoMapDataset


@pytest.fixture
def robots(tmp_path: Path) -> tuple[str, str]:
    """A 5 fps robot with camera image_0 and a 30 fps one with cam_high (and 2 episodes at 10 fps)."""
    slow, fast = tmp_path / "slow.kdb", tmp_path / "fast.kdb"
    write_episodes(slow, [6, 7], fps=5.0, cameras={"image_0": (4, 4, 3)})
    eps = write_episodes(fast, [8, 9, 6], fps=30.0, cameras={"cam_high": (4, 4, 3)}, seed=1)
    with kinodb.Writer(fast, mode="a") as w:
        for ep in eps[:2]:
            w.add_episode(**{**ep, "fps": 10.0})
    return str(slow), str(fast)


def test_off_grid_offsets_in_a_mixture_suggest_the_sources_own_filter(robots: tuple[str, str]) -> None:
    slow, fast = robots
    every_30 = {"action": [i / 30 for i in range(4)]}
    with pytest.raises(kinodb.KinodbError) as err:  # every episode of the slow source: leave it out
        KinoFrameDataset(kinodb.Mixture({slow: 1, fast: 1}), delta_timestamps=every_30, image_key=False)
    text = str(err.value)
    assert f"mixture source 0 ({slow})" in text and "kql_filter" not in text
    assert "leave this source out of the mixture (all 2 of its selected episodes run at 5 fps)" in text
    with pytest.raises(kinodb.KinodbError) as err:  # some episodes of the fast source: its own filter
        KinoFrameDataset(kinodb.Mixture({fast: 1, slow: 1}, filters={fast: "num_frames > 6"}),
                         delta_timestamps=every_30, image_key=False)  # fmt: skip
    text = str(err.value)
    own = "(num_frames > 6) AND fps != 10.0"
    assert f"Mixture(..., filters={{{fast!r}: {own!r}}})" in text and 'kql_filter="' not in text
    fixed = kinodb.Mixture({fast: 1}, filters={fast: own})
    assert len(KinoFrameDataset(fixed, delta_timestamps=every_30, image_key=False)) == 8 + 9


def test_a_filter_that_empties_a_mixture_source_is_warned_of(robots: tuple[str, str]) -> None:
    slow, fast = robots
    with pytest.warns(UserWarning, match=rf"mixture source 0 \({slow}\) keeps no windows after the filters "
                      r"\(kql_filter='fps != 5.0'\): .*filters=\{"):  # fmt: skip
        ds = KinoFrameDataset(kinodb.Mixture({slow: 1, fast: 1}), kql_filter="fps != 5.0", image_key=False)
    assert ds.windows.counts_by_source().tolist() == [0, 8 + 9 + 6 + 8 + 9]
    with pytest.warns(UserWarning, match=r"mixture source 1 .* keeps no episodes after the filters "
                      r"\(kql_filter='fps = 5.0', its own filter 'num_frames > 6'\)"):  # fmt: skip
        mix = kinodb.Mixture({slow: 1, fast: 1}, filters={fast: "num_frames > 6"})
        KinoMapDataset(mix, kql_filter="fps = 5.0", image_key=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every source keeps windows: no warning
        KinoFrameDataset(kinodb.Mixture({slow: 1, fast: 1}), kql_filter="num_frames > 6", image_key=False)
        KinoFrameDataset([slow, fast], kql_filter="fps != 5.0", image_key=False)  # a list has no weights


def test_a_camera_only_some_sources_have_names_the_mapping(robots: tuple[str, str]) -> None:
    slow, fast = robots
    mapping = "image_key={'cam_high': ['image_0', 'cam_high']}"
    with pytest.raises(kinodb.KinodbError) as err:
        KinoFrameDataset(kinodb.Mixture({slow: 1, fast: 1}), image_key="cam_high")
    text = str(err.value)
    assert f"mixture source 0 ({slow}): no camera 'cam_high'; it has ['image_0']" in text and mapping in text
    with pytest.raises(kinodb.KinodbError, match=r"no camera 'image_0'.*image_key=\{'image_0': \['image_0', "
                       r"'cam_high'\]\}"):  # fmt: skip
        KinoFrameDataset(kinodb.Mixture({slow: 1, fast: 1}), image_key="image_0")
    with pytest.raises(kinodb.KinodbError) as err:  # one file: no mapping to suggest
        KinoFrameDataset(slow, image_key="cam_high")
    assert "no camera 'cam_high'; it has ['image_0']" in str(err.value) and "mapping" not in str(err.value)
    ds = KinoFrameDataset(kinodb.Mixture({slow: 1, fast: 1}), image_key={"cam_high": ["image_0", "cam_high"]})
    assert ds[0]["images"]["cam_high"].shape == (1, 3, 4, 4)


@pytest.mark.parametrize("image_key", [None, ["image_0"]])
def test_delta_timestamps_of_another_sources_camera_names_the_source_and_the_mapping(
    robots: tuple[str, str], image_key: list[str] | None
) -> None:
    slow, fast = robots
    with pytest.raises(kinodb.KinodbError) as err:
        KinoFrameDataset(kinodb.Mixture({slow: 1, fast: 1}), image_key=image_key,
                         delta_timestamps={"observation.images.cam_high": [0.0]})  # fmt: skip
    text = str(err.value)
    assert (
        f"delta_timestamps names camera 'observation.images.cam_high'; mixture source 0 ({slow}) has" in text
    )
    assert "image_key={'cam_high': ['image_0', 'cam_high']}" in text
    assert "delta_timestamps then names the output name" in text
    ds = KinoFrameDataset(kinodb.Mixture({slow: 1, fast: 1}), image_key={"cam_high": ["image_0", "cam_high"]},
                          delta_timestamps={"observation.images.cam_high": [0.0]}, kql_filter="fps != 10.0")  # fmt: skip
    assert ds[0]["images"]["cam_high"].shape == (1, 3, 4, 4)
