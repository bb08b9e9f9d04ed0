"""An output path that ends in a separator names a folder: refused at once, before any work."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

import kinodb
from _factories import tiny_robomimic_hdf5, write_episodes
from kinodb._cli.main import main
from kinodb.errors import WriterError
from kinodb.synthetic import create_test


def _listing(folder: Path) -> list[str]:
    return sorted(os.listdir(folder))


@pytest.mark.parametrize("mode", ["x", "w", "a"])
def test_a_path_ending_in_a_separator_is_refused_before_any_file_is_made(tmp_path: Path, mode: str) -> None:
    out = f"{tmp_path / 'out'}{os.sep}"
    with pytest.raises(WriterError) as info:
        kinodb.Writer(out, mode=mode)
    assert str(info.value) == (
        f"{out} names a folder; give the path of a .kdb file, e.g. {tmp_path / 'out' / 'data.kdb'}"
    )
    assert _listing(tmp_path) == []  # no temporary file, no folder


def test_an_existing_folder_with_a_separator_is_refused_too(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    with pytest.raises(WriterError, match=r"names a folder; give the path of a \.kdb file"):
        kinodb.Writer(f"{tmp_path / 'out'}{os.sep}", mode="w")
    assert _listing(tmp_path / "out") == []


def test_the_same_file_without_the_separator_is_written(tmp_path: Path) -> None:
    with kinodb.Writer(tmp_path / "out", mode="x") as w:
        w.add_episode(actions=np.zeros((3, 2), np.float32))
    with kinodb.open(tmp_path / "out") as db:
        assert len(db) == 1


def test_create_test_and_merge_refuse_it(tmp_path: Path) -> None:
    with pytest.raises(WriterError, match="names a folder"):
        create_test(f"{tmp_path / 'nd'}/", 3)
    src = tmp_path / "a.kdb"
    write_episodes(src, [1, 2])
    with pytest.raises(WriterError, match="names a folder"):
        kinodb.merge([src], f"{tmp_path / 'm'}/")
    assert _listing(tmp_path) == ["a.kdb"]


def test_ingest_refuses_it_before_reading_the_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("h5py", reason="the hdf5 extra is not installed")
    from kinodb.ingest import ingest
    from kinodb.ingest.hdf5 import HDF5Source

    src = tiny_robomimic_hdf5(tmp_path / "demo.hdf5")
    listed: list[str] = []
    original = HDF5Source.episodes

    def episodes(self: HDF5Source) -> list[str]:
        keys = original(self)
        listed.append(str(len(keys)))
        return keys

    monkeypatch.setattr(HDF5Source, "episodes", episodes)
    with pytest.raises(WriterError, match="names a folder"):
        ingest(src, f"{tmp_path / 'new'}/")
    assert listed == []  # the source was never read
    assert _listing(tmp_path) == ["demo.hdf5"]
    ingest(src, tmp_path / "new.kdb")  # the same call with a file name works (and reads the source)
    assert len(listed) == 1


@pytest.mark.parametrize("command", ["create-test", "ingest", "merge", "upgrade"])
def test_commands_exit_1_naming_the_folder(
    tmp_path: Path, command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "a.kdb"
    write_episodes(src, [1, 2])
    out = f"{tmp_path / 'out'}/"
    if command == "ingest":
        pytest.importorskip("h5py", reason="the hdf5 extra is not installed")
        argv = ["ingest", str(tiny_robomimic_hdf5(tmp_path / "d.hdf5")), "-o", out, "-q"]
    else:
        argv = {"create-test": ["create-test", out, "-n", "3"], "merge": ["merge", str(src), "-o", out],
                "upgrade": ["upgrade", str(src), out]}[command]  # fmt: skip
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert (
        err
        == f"error: {out} names a folder; give the path of a .kdb file, e.g. {tmp_path / 'out' / 'data.kdb'}\n"
    )
    assert not (tmp_path / "out").exists()
