"""A dataset's kql_filter over several files: errors name the file, and say when a field holds
values of different kinds in different files; a filter that keeps nothing explains
``episode_index``; delta_timestamps refuses two keys for one feature."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import kinodb
from _factories import write_episodes
from kinodb.windows import FrameWindows


def _with_field(path: Path, value: object, *, name: str = "quality", episodes: int = 1) -> str:
    with kinodb.Writer(path, mode="w") as w:
        for _ in range(episodes):
            w.add_episode(actions=np.zeros((3, 2), np.float32), extra={name: value})
    return str(path)


@pytest.fixture
def quality_files(tmp_path: Path) -> tuple[str, str]:
    """``qi.kdb`` whose field ``quality`` holds a number, ``qs.kdb`` where it holds text."""
    return _with_field(tmp_path / "qi.kdb", 3), _with_field(tmp_path / "qs.kdb", "high")


def test_a_type_error_over_a_list_names_the_file_and_the_kinds_apart(quality_files: tuple[str, str]) -> None:
    qi, qs = quality_files
    with pytest.raises(kinodb.QuerySyntaxError) as info:
        FrameWindows([qi, qs], kql_filter="quality > 1")
    text = str(info.value)
    assert text.startswith(f"source 1 ({qs}): filter 'quality > 1': type mismatch: quality holds strings")
    assert info.value.position == 10
    assert (
        f"quality holds numbers in source 0 ({qi}) and strings in source 1 ({qs}): one kql_filter cannot "
        "compare it in every source; give each file its own filter: pass kinodb.Mixture("
    ) in text
    with pytest.raises(kinodb.QuerySyntaxError, match=rf"^source 0 \({qi}\): filter \"quality = 'high'\""):
        FrameWindows([qi, qs], kql_filter="quality = 'high'")  # following the first hint


def test_a_type_error_over_a_mixture_names_its_source(quality_files: tuple[str, str]) -> None:
    qi, qs = quality_files
    mix = kinodb.Mixture({qi: 1, qs: 1})
    with pytest.raises(kinodb.QuerySyntaxError) as info:
        FrameWindows(mix, kql_filter="quality > 1")
    text = str(info.value)
    assert text.startswith(f"mixture source 1 ({qs}): filter 'quality > 1': type mismatch")
    assert f"quality holds numbers in mixture source 0 ({qi}) and strings in mixture source 1 ({qs})" in text
    assert "give the mixture's sources their own filters instead, Mixture(..., filters=" in text


def test_errors_the_files_share_name_no_file(quality_files: tuple[str, str], tmp_path: Path) -> None:
    qi, qs = quality_files
    with pytest.raises(kinodb.QuerySyntaxError) as info:
        FrameWindows([qi, qs], kql_filter="quality >")  # a syntax error: the text, whichever file
    assert not str(info.value).startswith("source")
    with pytest.raises(kinodb.QuerySyntaxError) as info:
        FrameWindows(qs, kql_filter="quality > 1")  # one file: as kinodb.open(...).query says it
    assert str(info.value).startswith("type mismatch") and "holds numbers" not in str(info.value)
    other = _with_field(tmp_path / "q2.kdb", "low")  # the same kind in both: no note of kinds
    with pytest.raises(kinodb.QuerySyntaxError) as info:
        FrameWindows([qs, other], kql_filter="quality > 1")
    assert str(info.value).startswith(f"source 0 ({qs}): ") and "holds numbers" not in str(info.value)


def test_a_filter_on_episode_index_that_keeps_nothing_says_what_episode_index_is(tmp_path: Path) -> None:
    path = _with_field(tmp_path / "lr.kdb", 29, name="episode_index")  # as LeRobot ingest keeps it
    with pytest.raises(kinodb.KinodbError) as info:
        FrameWindows(path, kql_filter="episode_index = 0")
    assert str(info.value) == (
        f"{path}: the filter 'episode_index = 0' keeps no episode with frames; in KQL, episode_index is the "
        f"file's extra field of that name, the source dataset's own episode number (episode 0 of {path} has "
        "episode_index 29); the items' episode_index is the episode's position in its file, which KQL calls "
        "episode_id (e.g. kql_filter='episode_id = 0')"
    )
    assert len(FrameWindows(path, kql_filter="episode_id = 0")) == 3
    with pytest.raises(kinodb.KinodbError) as info:  # a filter that does not name it: no note
        FrameWindows(path, kql_filter="episode_id > 5")
    assert str(info.value).endswith("keeps no episode with frames")


@pytest.mark.parametrize(
    ("delta", "said"),
    [
        ({"observation.state": [-0.1, 0.0], "state": [0.0]}, "the feature 'state' twice, as 'observation.state' and as 'state'"),
        ({"action": [0.0], "actions": [0.0, 0.1]}, "the feature 'action' twice, as 'action' and as 'actions'"),
        ({"observation.images.front": [0.0], "front": [0.0]}, "camera 'front' twice, as 'observation.images.front' and as 'front'"),
    ],
)  # fmt: skip
def test_delta_timestamps_refuses_two_keys_for_one_feature(tmp_path: Path, delta: dict, said: str) -> None:
    path = tmp_path / "cams.kdb"
    write_episodes(path, [5, 6], cameras={"front": (4, 4, 3)})
    with pytest.raises(ValueError, match=f"^delta_timestamps names {said}; give its offsets under one"):
        FrameWindows(path, delta_timestamps=delta)
    one = {key: value for key, value in list(delta.items())[:1]}
    assert len(FrameWindows(path, delta_timestamps=one)) == 11
