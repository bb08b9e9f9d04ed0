"""An in-place upgrade (``dst`` is ``src``) never drops what another writer committed while
it ran: it refuses, and leaves the file as that writer left it."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

import kinodb
import kinodb.kdb.upgrade as upgrade_module
from _inplace_race import (
    Change,
    append_in_another_process,
    before_output_writer,
    firsts,
    replace_here,
    three_episodes,
)
from _legacy_encoder import encode, random_episode
from kinodb._cli.main import main
from kinodb.errors import WriterError
from kinodb.kdb.upgrade import upgrade


@pytest.fixture
def in_window(monkeypatch: pytest.MonkeyPatch) -> Callable[[Change, Path], None]:
    """Run a change to the file once the upgrade has opened it, just before it creates its
    output Writer."""
    return before_output_writer(monkeypatch, upgrade_module)


def test_an_append_during_an_in_place_upgrade_is_kept(tmp_path: Path, in_window: Callable[..., None]) -> None:
    path = tmp_path / "x.kdb"
    three_episodes(path)
    in_window(append_in_another_process, path)
    with pytest.raises(WriterError, match=r"changed while the upgrade was rewriting it in place") as err:
        upgrade(path, path, overwrite=True)
    assert "held 3 episodes when the upgrade read it and holds 4 now" in str(err.value)
    assert firsts(path) == [0, 1, 2, 99]  # the file as the appender left it
    assert sorted(os.listdir(tmp_path)) == ["x.kdb"]  # no temporary left behind
    assert upgrade(path, path, overwrite=True) == 4  # run again: nothing is lost
    assert firsts(path) == [0, 1, 2, 99]


def test_kino_upgrade_in_place_reports_the_append(
    tmp_path: Path, in_window: Callable[..., None], capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "x.kdb"
    three_episodes(path)
    in_window(append_in_another_process, path)
    assert main(["upgrade", str(path), str(path), "--force"]) == 1
    assert "changed while the upgrade was rewriting it in place" in capsys.readouterr().err
    assert firsts(path) == [0, 1, 2, 99]


def test_a_0_1_file_replaced_during_its_in_place_upgrade_is_left_as_replaced(
    tmp_path: Path, in_window: Callable[..., None]
) -> None:
    path = tmp_path / "x.kdb"
    path.write_bytes(encode([random_episode(np.random.default_rng(0), 4, 2, 2)]))
    in_window(replace_here, path)
    with pytest.raises(WriterError, match=r"another file took its place"):
        upgrade(path, path, overwrite=True)
    assert firsts(path) == [7]  # the replacement, not the upgraded 0.1 file


def test_a_0_1_file_upgrades_in_place_when_nothing_races(tmp_path: Path) -> None:
    path = tmp_path / "x.kdb"
    path.write_bytes(encode([random_episode(np.random.default_rng(0), 4, 2, 2)] * 2))
    assert upgrade(path, path, overwrite=True) == 2
    with kinodb.open(path) as db:
        assert db.version() == "1.0" and len(db) == 2
