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


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
@pytest.mark.parametrize("overwrite", [False, True])
def test_an_output_that_is_no_regular_file_is_never_replaced(
    src: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, overwrite: bool
) -> None:
    """A FIFO (or a device: ``-o /dev/null --force`` as root) is refused, --force or not,
    before the source is read; the writer refuses it in every mode too."""
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    monkeypatch.setattr(_run, "_scan_source", _never_read)
    with pytest.raises(
        WriterError, match=f"{fifo} is a FIFO \\(named pipe\\), not a regular file; give the path"
    ):
        ingest(src, fifo, overwrite=overwrite)
    for mode in ("w", "x"):
        with pytest.raises(kinodb.FormatError, match=r"is a FIFO .*cannot be written or replaced"):
            kinodb.Writer(fifo, mode=mode)
    assert fifo.is_fifo()


def test_an_empty_output_path_is_refused_before_the_source_is_read(
    src: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_run, "_scan_source", _never_read)
    with pytest.raises(WriterError, match=r"the output path is empty; give the path of a \.kdb file"):
        ingest(src, "")


@pytest.mark.skipif(os.name != "posix", reason="RLIMIT_FSIZE")
def test_a_full_disk_stops_a_skipping_ingest_at_once_naming_the_output(tmp_path: Path) -> None:
    """With on_error="skip", a write that fails (a full disk, a size limit) is the output's
    fault, not the episode's: the ingest stops there instead of skipping every episode."""
    import subprocess
    import sys
    import textwrap

    h5py = pytest.importorskip("h5py")
    src = tmp_path / "big.hdf5"
    with h5py.File(src, "w") as f:
        for k in range(12):
            f.create_dataset(f"data/demo_{k}/actions", data=np.zeros((20_000, 8)))
    out = tmp_path / "out.kdb"
    script = textwrap.dedent(
        f"""
        import resource, signal
        from kinodb.ingest import ingest
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (3 << 20, 3 << 20))
        calls = []
        import kinodb.ingest._run as run
        real = run._convert_one
        run._convert_one = lambda key: (calls.append(key), real(key))[1]
        try:
            ingest({str(src)!r}, {str(out)!r}, on_error="skip")
        except Exception as exc:
            print(type(exc).__name__, exc)
        print(len(calls))
        """
    )
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    error, converted = run.stdout.strip().splitlines()
    assert error.startswith(f"WriterError {out}: writing an episode failed (File too large)"), (
        run.stdout + run.stderr
    )
    assert int(converted) < 12  # stopped at the failed write, not after converting every episode
    assert not out.exists() and [p.name for p in tmp_path.iterdir()] == ["big.hdf5"]
