"""An output the writer cannot create is refused with the writer's own message, before the
source is read; only what the writer refuses in the source's metadata is said of the source."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import _lerobot_fixtures as F
import numpy as np
import pytest
from _fake_source import FakeSource, write_fake

import kinodb
from kinodb._cli.main import main
from kinodb.errors import ConversionError, WriterError
from kinodb.ingest import SourceInfo, _base, _run, ingest


@pytest.fixture(params=["lerobot", "hdf5"])
def src(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    """A LeRobot v2.1 dataset (parquet with PNG frames) or a robomimic HDF5 file."""
    if request.param == "lerobot":
        eps = F.make_episodes(np.random.default_rng(3), [5, 4], cameras={"observation.images.top": (8, 8)})
        return F.write_v2(tmp_path / "lerobot", eps, images="PNG")
    h5py = pytest.importorskip("h5py")
    path = tmp_path / "demo.hdf5"
    with h5py.File(path, "w") as f:
        for k in range(2):
            f.create_dataset(f"data/demo_{k}/actions", data=np.zeros((3, 2)))
    return path


def _never_read(*args: Any) -> None:
    raise AssertionError("the source was read before the output folder was checked")


def test_a_missing_output_folder_is_the_writers_message_before_the_source_is_read(
    src: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "no_such_dir" / "x.kdb"
    message = f"{out}: the folder {out.parent} does not exist; create it first"
    assert main(["ingest", str(src), "-o", str(out), "-q"]) == 1
    assert capsys.readouterr().err == f"error: {message}\n"  # not said of the source's metadata
    monkeypatch.setattr(_run, "_scan_source", _never_read)
    with pytest.raises(WriterError) as info:
        ingest(src, out)
    assert str(info.value) == message
    assert not out.parent.exists()


def test_an_output_folder_that_is_a_file_is_refused_naming_it(src: Path, tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("")
    out = tmp_path / "notes.txt" / "x.kdb"
    with pytest.raises(WriterError) as info:
        ingest(src, out)
    assert str(info.value) == f"{out}: {out.parent} is not a folder; give a path inside a folder"


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes into any folder")
def test_a_read_only_output_folder_is_refused_before_the_source_is_read(
    src: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "locked"
    folder.mkdir()
    folder.chmod(0o555)
    monkeypatch.setattr(_run, "_scan_source", _never_read)
    try:
        with pytest.raises(WriterError, match=re.escape(f"cannot create files in {folder} (")):
            ingest(src, folder / "x.kdb")
    finally:
        folder.chmod(0o755)


def test_a_file_another_writer_holds_is_the_writers_message(src: Path, tmp_path: Path) -> None:
    out = tmp_path / "held.kdb"
    ingest(src, out)
    with kinodb.Writer(out, mode="a"), pytest.raises(WriterError) as info:  # holds the writers' lock
        ingest(src, out, overwrite=True)
    assert str(info.value).startswith(f"{out}: another writer is writing to this file")
    assert "metadata" not in str(info.value)


def test_metadata_the_writer_cannot_store_is_still_said_of_the_source(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(_base._BUILTIN, "fake", "_fake_source:FakeSource")
    monkeypatch.setattr(FakeSource, "info", lambda self: SourceInfo("fake-1", {}, {"blob": b"\x00"}))
    src = write_fake(tmp_path / "src", [{"key": "ep0", "frames": 3, "seed": 1}])
    with pytest.raises(ConversionError) as info:
        ingest(src, tmp_path / "out.kdb")
    assert str(info.value).startswith(
        f"{src}: the dataset metadata or schema that the fake converter read from it cannot be stored: "
    )
    assert "'blob'" in str(info.value) and not (tmp_path / "out.kdb").exists()
