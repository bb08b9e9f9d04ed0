"""Replacing an earlier folder export: never losing it, never leaving a hidden copy behind;
and errors of a full or read-only file system that name the output and say what to do."""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from kinodb.export import _base, _numpy_dir, export, hdf5
from kinodb.kdb._stale import stale_temps

DEAD = 999_999_999  # above any pid_max: no such process


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def _hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def _positions(out: Path) -> list[int]:
    return [json.loads(p.read_text())["position"] for p in sorted(out.glob("episode_*/meta.json"))]


# -- leftovers of killed exports --------------------------------------------------------------


def test_stale_temps_finds_only_the_kinds_asked_for_of_dead_processes(tmp_path: Path) -> None:
    for name in (f".out.{DEAD}.ab12.tmp", f".out.{DEAD}.ab12.old", f".out.{DEAD}.ab12.del",
                 f".out.{os.getpid()}.cd34.old", f".out.x.{DEAD}.ab12.old", f".out.{DEAD}.ab12.bak"):  # fmt: skip
        (tmp_path / name).mkdir()
    target = str(tmp_path / "out")
    assert [Path(p).name for p in stale_temps(target)] == [f".out.{DEAD}.ab12.tmp"]
    found = stale_temps(target, kinds=("old", "del"))
    assert [Path(p).name for p in found] == [f".out.{DEAD}.ab12.del", f".out.{DEAD}.ab12.old"]


def test_replaced_outputs_left_by_killed_exports_are_removed(make_kdb, tmp_path: Path) -> None:
    src, _ = make_kdb(3)
    out = tmp_path / "out"
    export(src, out)
    for kind in ("tmp", "old", "del"):  # a partly deleted earlier export, whichever its stage
        (tmp_path / f".out.{DEAD}.ab12.{kind}" / "episode_000000").mkdir(parents=True)
    live = tmp_path / f".out.{os.getpid()}.cd34.old"  # another export, in this very process
    live.mkdir()
    export(src, out, overwrite=True, filter="episode_id = 1")
    assert _hidden(tmp_path) == [live.name]
    assert _positions(out) == [1]


def test_an_earlier_export_left_aside_by_a_killed_export_is_put_back(
    make_kdb, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    src, _ = make_kdb(3)
    out = tmp_path / "out"
    export(src, out)
    before = _files(out)
    aside = tmp_path / f".out.{DEAD}.ab12.old"
    out.rename(aside)  # killed between moving the earlier export aside and the new one in
    (tmp_path / f".out.{DEAD}.ab12.tmp").mkdir()  # and its new output, never published
    with caplog.at_level(logging.WARNING, logger="kinodb.export._base"), pytest.raises(FileExistsError):
        export(src, out)  # the earlier export is back, so this one needs overwrite
    assert _files(out) == before and _hidden(tmp_path) == []
    assert f"put back the output that an interrupted export had moved aside to {aside}" in caplog.text
    out.rename(aside)
    export(src, out, overwrite=True, filter="episode_id = 2")
    assert _positions(out) == [2] and _hidden(tmp_path) == []


# -- interrupted while publishing -------------------------------------------------------------


def test_an_interrupt_right_after_the_earlier_export_moved_aside_puts_it_back(
    make_kdb, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src, _ = make_kdb(3)
    out = tmp_path / "out"
    export(src, out)
    before = _files(out)
    real = os.rename

    def then_interrupted(a: Any, b: Any) -> None:
        real(a, b)
        if str(a) == str(out):  # the signal lands as the first rename returns
            raise KeyboardInterrupt

    monkeypatch.setattr(_base.os, "rename", then_interrupted)
    with pytest.raises(KeyboardInterrupt):
        export(src, out, overwrite=True, filter="episode_id = 1")
    assert _files(out) == before and _hidden(tmp_path) == []


def test_an_interrupt_while_the_earlier_export_is_deleted_finishes_the_deletion(
    make_kdb, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src, _ = make_kdb(3)
    out = tmp_path / "out"
    export(src, out)
    real, calls = shutil.rmtree, []

    def interrupted(path: Any, *args: Any, **kwargs: Any) -> None:
        calls.append(path)
        if len(calls) == 1:  # part of it deleted, then Ctrl-C
            real(next(Path(path).glob("episode_*")))
            raise KeyboardInterrupt
        real(path, *args, **kwargs)

    monkeypatch.setattr(_base.shutil, "rmtree", interrupted)
    with pytest.raises(KeyboardInterrupt):
        export(src, out, overwrite=True, filter="episode_id = 1")
    assert Path(calls[0]).name.endswith(".del")  # whole ones are .old, partly deleted ones .del
    assert _positions(out) == [1] and _hidden(tmp_path) == []


# -- full, read-only and forbidden file systems -----------------------------------------------


def _disk_full() -> OSError:
    """The error a write to a full disk raises (no file name), from the kernel itself."""
    try:
        with open("/dev/full", "wb", buffering=0) as fh:
            fh.write(b"x")
    except OSError as exc:
        return exc
    pytest.skip("no /dev/full to run out of space on")


@pytest.mark.parametrize(("fmt", "module", "name"), [("numpy", _numpy_dir, "write_episode"),
                                                     ("hdf5", hdf5, "_write_demo")])  # fmt: skip
def test_running_out_of_space_names_the_output_and_says_what_to_do(
    make_kdb, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fmt: str, module: Any, name: str
) -> None:
    src, _ = make_kdb(3)
    full = _disk_full()
    assert full.errno == errno.ENOSPC and full.filename is None

    def write(*args: Any) -> None:
        raise full

    monkeypatch.setattr(module, name, write)
    with pytest.raises(OSError) as exc:
        export(src, tmp_path / "out", format=fmt)
    assert (
        str(exc.value)
        == f"{tmp_path / 'out'}: No space left on device; free some space or choose another folder"
    )
    assert exc.value.errno == errno.ENOSPC
    assert sorted(p.name for p in tmp_path.iterdir()) == [src.name]  # nothing left


@pytest.mark.parametrize(
    ("code", "advice"), [(errno.EDQUOT, "free some space or choose another folder"),
                         (errno.EROFS, "choose a writable folder"), (errno.EACCES, "choose a writable folder")],
)  # fmt: skip
def test_errors_that_name_only_the_staging_path_in_their_text_name_the_output(
    make_kdb, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int, advice: str
) -> None:
    src, _ = make_kdb(2)

    def write(db: Any, i: int, folder: str) -> None:  # as h5py and pyarrow put it: the path in the text
        raise OSError(code, f"Can't write data (file write failed: filename = '{folder}/x', errno = {code})")

    monkeypatch.setattr(_numpy_dir, "write_episode", write)
    with pytest.raises(OSError) as exc:
        export(src, tmp_path / "out")
    assert str(exc.value) == f"{tmp_path / 'out'}: {os.strerror(code)}; {advice}"
    assert ".tmp" not in str(exc.value) and exc.value.errno == code


def test_other_errors_without_a_path_are_left_as_they_are(
    make_kdb, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src, _ = make_kdb(2)
    broken = OSError(errno.EIO, "Input/output error")

    def write(*args: Any) -> None:
        raise broken

    monkeypatch.setattr(_numpy_dir, "write_episode", write)
    with pytest.raises(OSError) as exc:
        export(src, tmp_path / "out")
    assert exc.value is broken
