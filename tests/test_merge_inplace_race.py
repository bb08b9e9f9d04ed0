"""An in-place merge (the output is an input) never drops what another writer committed
while it ran: it refuses, and leaves the file as that writer left it."""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from pathlib import Path

import pytest

import kinodb
from _inplace_race import (
    Change,
    append_here,
    append_in_another_process,
    before_output_writer,
    firsts,
    replace_here,
    three_episodes,
)
from kinodb._cli.main import main
from kinodb.errors import WriterError

merge_module = importlib.import_module("kinodb.merge")  # `kinodb.merge` is the function


@pytest.fixture
def in_window(monkeypatch: pytest.MonkeyPatch) -> Callable[[Change, Path], None]:
    """Run a change to the file once the merge has opened it, just before it creates its
    output Writer."""
    return before_output_writer(monkeypatch, merge_module)


@pytest.mark.parametrize("append", [append_here, append_in_another_process])
def test_an_append_during_an_in_place_merge_is_kept(
    tmp_path: Path, in_window: Callable[..., None], append: Callable[[Path], None]
) -> None:
    path = tmp_path / "x.kdb"
    three_episodes(path)
    in_window(append, path)
    with pytest.raises(WriterError, match=r"changed while the merge was rewriting it in place") as err:
        kinodb.merge([path], path, overwrite=True)
    assert "held 3 episodes when the merge read it and holds 4 now" in str(err.value)
    assert "run the merge again" in str(err.value)
    assert firsts(path) == [0, 1, 2, 99]  # the file as the appender left it
    assert sorted(os.listdir(tmp_path)) == ["x.kdb"]  # no temporary left behind
    # Run again (nothing races it now): the appended episode is merged too.
    result = kinodb.merge([path], path, overwrite=True)
    assert result.episodes == 4
    assert firsts(path) == [0, 1, 2, 99]


def test_an_in_place_merge_with_other_inputs_refuses_too(
    tmp_path: Path, in_window: Callable[..., None]
) -> None:
    path, other = tmp_path / "x.kdb", tmp_path / "other.kdb"
    three_episodes(path)
    three_episodes(other)
    in_window(append_here, path)
    with pytest.raises(WriterError, match="changed while the merge"):
        kinodb.merge([other, path], path, overwrite=True, filter="num_frames > 0")
    assert firsts(path) == [0, 1, 2, 99]


def test_a_file_replaced_during_an_in_place_merge_is_left_as_replaced(
    tmp_path: Path, in_window: Callable[..., None]
) -> None:
    path = tmp_path / "x.kdb"
    three_episodes(path)
    in_window(replace_here, path)
    with pytest.raises(WriterError, match=r"another file took its place"):
        kinodb.merge([path], path, overwrite=True)
    assert firsts(path) == [7]


def test_kino_merge_in_place_reports_the_append(
    tmp_path: Path, in_window: Callable[..., None], capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "x.kdb"
    three_episodes(path)
    in_window(append_here, path)
    assert main(["merge", str(path), "-o", str(path), "--force"]) == 1
    assert "changed while the merge was rewriting it in place" in capsys.readouterr().err
    assert firsts(path) == [0, 1, 2, 99]


def test_an_in_place_merge_nothing_races_still_replaces_the_file(tmp_path: Path) -> None:
    path = tmp_path / "x.kdb"
    three_episodes(path)
    result = kinodb.merge([path], path, overwrite=True, filter="episode_id != 1")
    assert result.episodes == 2
    assert firsts(path) == [0, 2]
