"""An in-place merge (the output is an input) never drops what another writer committed
while it ran: it refuses, and leaves the file as that writer left it."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import kinodb
from kinodb._cli.main import main
from kinodb.errors import WriterError

merge_module = importlib.import_module("kinodb.merge")  # `kinodb.merge` is the function


def three_episodes(path: Path) -> None:
    with kinodb.Writer(path, mode="w") as w:
        for i in range(3):
            w.add_episode(actions=np.full((2, 2), i, np.float32))


def append_here(path: Path) -> None:
    with kinodb.Writer(path, mode="a") as w:
        w.add_episode(actions=np.full((2, 2), 99, np.float32))


def append_in_another_process(path: Path) -> None:
    code = (
        "import sys, numpy as np, kinodb\n"
        "with kinodb.Writer(sys.argv[1], mode='a') as w:\n"
        "    w.add_episode(actions=np.full((2, 2), 99, np.float32))\n"
    )
    subprocess.run([sys.executable, "-c", code, str(path)], check=True)


def replace_here(path: Path) -> None:
    with kinodb.Writer(path, mode="w") as w:
        w.add_episode(actions=np.full((5, 2), 7, np.float32))


def firsts(path: Path) -> list[float]:
    """The first action value of each episode of ``path``."""
    with kinodb.open(path) as db:
        return [float(db.read_array(i, "actions")[0, 0]) for i in range(len(db))]


@pytest.fixture
def in_window(monkeypatch: pytest.MonkeyPatch) -> Callable[[Callable[[Path], None], Path], None]:
    """Run a change to the output once the merge has opened its inputs, just before it
    creates its output Writer (the moment an unguarded merge would lose the change)."""

    def arm(change: Callable[[Path], None], path: Path) -> None:
        real = kinodb.Writer
        done: list[bool] = []

        def writer(*args: Any, **kwargs: Any) -> Any:
            if not done:
                done.append(True)
                change(path)
            return real(*args, **kwargs)

        monkeypatch.setattr(merge_module, "Writer", writer)

    return arm


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
