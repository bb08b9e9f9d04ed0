"""I/O failures while writing (a full disk, a file-size limit, a failed fsync), writers that
replace a file being appended to, and output paths that cannot hold a file: the committed
state always survives, and the errors name the user's path."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import kinodb
from kinodb import WriterError
from kinodb.kdb.validate import validate

SRC = Path(__file__).resolve().parents[2] / "src"


def _base(path: Path, n: int = 2) -> bytes:
    with kinodb.Writer(path, mode="w") as w:
        for k in range(n):
            w.add_episode(actions=np.full((10, 3), k, np.float32), states=np.zeros((10, 2), np.float32))
    return path.read_bytes()


def _limited(path: Path, limit: int, body: str) -> subprocess.CompletedProcess[str]:
    """Run ``body`` in a process whose files may not grow past ``limit`` bytes (EFBIG)."""
    script = textwrap.dedent(
        f"""
        import resource, signal, sys
        import numpy as np
        import kinodb
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))
        path = {str(path)!r}
        """
    ) + textwrap.dedent(body)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=env
    )


def test_a_write_error_in_an_append_closes_the_writer_and_keeps_the_committed_file(tmp_path: Path) -> None:
    path = tmp_path / "a.kdb"
    before = _base(path)
    run = _limited(
        path,
        len(before) + (64 << 10),
        """
        w = kinodb.Writer(path, mode="a")
        w.add_episode(actions=np.ones((5, 3), np.float32), states=np.zeros((5, 2), np.float32))
        try:  # 4 MB cannot fit under the limit
            w.add_episode(actions=np.ones((100_000, 10), np.float32), states=np.zeros((100_000, 2), np.float32))
        except kinodb.WriterError as exc:
            print("add:", exc)
        try:  # the caller frees space and tries to keep the first episode
            w.close()
        except kinodb.WriterError as exc:
            print("close:", exc)
        else:
            print("close: committed")
        """,
    )
    assert run.returncode == 0, run.stderr
    add, close = run.stdout.splitlines()
    assert add.startswith(f"add: {path}: writing an episode failed (File too large); the file is as it was")
    assert close.startswith(f"close: {path}: this writer closed itself when writing an episode failed")
    assert path.read_bytes() == before  # the committed file, byte for byte
    assert validate(path).ok
    with kinodb.Writer(path, mode="a") as w:  # nothing blocks the next append
        w.add_episode(actions=np.ones((5, 3), np.float32), states=np.zeros((5, 2), np.float32))
    with kinodb.open(path) as db:
        assert len(db) == 3


def test_a_commit_that_fails_keeps_the_committed_file_and_cannot_be_retried(tmp_path: Path) -> None:
    path = tmp_path / "c.kdb"
    before = _base(path)
    run = _limited(
        path,
        len(before) + 4096,
        """
        w = kinodb.Writer(path, mode="a")
        for _ in range(20):  # buffered: the limit is met when close flushes
            w.add_episode(actions=np.ones((50, 3), np.float32), states=np.zeros((50, 2), np.float32))
        for attempt in (1, 2):
            try:
                w.close()
            except kinodb.WriterError as exc:
                print(attempt, exc)
        """,
    )
    assert run.returncode == 0, run.stderr
    first, second = run.stdout.splitlines()
    assert first.startswith(f"1 {path}: committing failed (File too large); the file is as it was")
    assert second.startswith(f"2 {path}: this writer closed itself when committing failed")
    assert path.read_bytes() == before
    with kinodb.Writer(path, mode="a") as w:  # the lock was released
        w.add_episode(actions=np.ones((5, 3), np.float32))


def test_a_new_file_whose_commit_fails_leaves_nothing(tmp_path: Path) -> None:
    path = tmp_path / "n.kdb"
    run = _limited(
        path,
        64 << 10,
        """
        try:
            with kinodb.Writer(path, mode="x") as w:
                for _ in range(40):
                    w.add_episode(actions=np.ones((100, 3), np.float32))
        except kinodb.WriterError as exc:
            print(exc)
        """,
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith(f"{path}: ") and "nothing was written" in run.stdout
    assert os.listdir(tmp_path) == []


E1 = {"actions": np.ones((5, 3), np.float32), "states": np.zeros((5, 2), np.float32)}


def _close_failing(
    path: Path, monkeypatch: pytest.MonkeyPatch, target: Any, name: str, replacement: Any, expected: Any
) -> pytest.ExceptionInfo[Any]:
    """Append one episode to ``path`` and close the writer while ``target.name`` is
    ``replacement``; return the error ``close`` raised (of type ``expected``)."""
    w = kinodb.Writer(path, mode="a")
    w.add_episode(**E1)
    with monkeypatch.context() as m:
        m.setattr(target, name, replacement)
        with pytest.raises(expected) as info:
            w.close()
    return info


def _second_fsync_raises(error: BaseException, calls: list[int], before: Any = None) -> Any:
    """An ``os.fsync`` whose second call (the one after the commit record) raises ``error``,
    having first called ``before``."""
    real = os.fsync

    def fsync(fd: int) -> None:
        calls.append(fd)
        if len(calls) == 2:
            if before is not None:
                before()
            raise error
        real(fd)

    return fsync


def test_a_commit_record_written_before_a_failed_fsync_stands(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once the record is written a reader may map the new commit: the writer must neither
    take the record back nor truncate the file under that map. It says the commit stands
    and its durability is in doubt."""
    path = tmp_path / "s.kdb"
    _base(path)
    calls: list[int] = []
    early: list[Any] = []
    fsync = _second_fsync_raises(
        OSError(5, "Input/output error"), calls, lambda: early.append(kinodb.open(path))
    )
    exc = _close_failing(path, monkeypatch, os, "fsync", fsync, WriterError)
    assert str(exc.value).startswith(
        f"{path}: the append was committed (3 episodes in all) and readers see it, but making its commit record "
        "durable failed (Input/output error)"
    )
    assert len(calls) == 2  # nothing written after the failure
    (reader,) = early  # a reader that opened right then reads on
    assert len(reader) == 3
    np.testing.assert_array_equal(reader.read_episode(2)["actions"], E1["actions"])
    reader.close()
    with kinodb.open(path) as db:
        assert len(db) == 3
    assert validate(path).ok
    with kinodb.Writer(path, mode="a") as again:  # the writer let go of the file
        again.add_episode(**E1)


def test_an_interrupt_after_the_commit_record_is_written_keeps_the_commit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "k.kdb"
    _base(path)
    _close_failing(
        path, monkeypatch, os, "fsync", _second_fsync_raises(KeyboardInterrupt(), []), KeyboardInterrupt
    )
    with kinodb.open(path) as db:
        assert len(db) == 3
    assert validate(path).ok


def test_a_commit_record_whose_write_fails_is_put_back_and_later_appends_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The record's own write fails: the bytes it overwrote are put back (never zeros, which
    `validate` and the next append would read as a damaged record hiding a commit)."""
    from kinodb.kdb import writer as writer_mod

    path = tmp_path / "p.kdb"
    _base(path)
    with kinodb.Writer(path, mode="a") as w:  # generation 2: both records hold a commit
        w.add_episode(**E1)
    before = path.read_bytes()
    real_pack = writer_mod.pack_slot

    def torn(commit: Any) -> bytes:  # half a record reaches the file, then the disk fails
        with open(path, "r+b") as f:
            f.seek(writer_mod.SLOT_OFFSETS[0])
            f.write(real_pack(commit)[:32])
        raise OSError(5, "Input/output error")

    exc = _close_failing(path, monkeypatch, writer_mod, "pack_slot", torn, WriterError)
    assert "committing failed (Input/output error); the file is as it was" in str(exc.value)
    assert path.read_bytes() == before
    assert validate(path).ok
    with kinodb.Writer(path, mode="a") as w:
        w.add_episode(**E1)
    with kinodb.open(path) as db:
        assert len(db) == 4
    assert validate(path).ok


def test_replacing_a_file_waits_for_no_appender_and_appenders_follow_a_replacement(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "r.kdb"
    _base(path)
    appending = kinodb.Writer(path, mode="a")
    with pytest.raises(WriterError, match="another writer is writing to this file"):
        kinodb.Writer(path, mode="w")  # it would swap the file out from under the append
    appending.add_episode(actions=np.ones((5, 3), np.float32), states=np.zeros((5, 2), np.float32))
    appending.close()
    with kinodb.open(path) as db:
        assert len(db) == 3
    assert [p.name for p in tmp_path.iterdir()] == ["r.kdb"]

    # A replacement that lands between an appender's open and its lock: the appender
    # must commit into the new file, not into the unlinked old one.
    from kinodb.kdb import writer as writer_mod

    replacement = tmp_path / "other.kdb"
    _base(replacement, 5)
    real_lock, swapped = writer_mod.lock, []

    def lock(fd: int, where: str) -> None:
        if not swapped:
            swapped.append(True)
            os.replace(replacement, path)
        real_lock(fd, where)

    monkeypatch.setattr(writer_mod, "lock", lock)
    with kinodb.Writer(path, mode="a") as w:
        w.add_episode(actions=np.ones((5, 3), np.float32), states=np.zeros((5, 2), np.float32))
    with kinodb.open(path) as db:
        assert len(db) == 6


@pytest.mark.parametrize("mode", ["x", "w", "a"])
def test_output_paths_that_cannot_hold_a_file_are_named(tmp_path: Path, mode: str) -> None:
    missing = tmp_path / "nodir" / "x.kdb"
    with pytest.raises(WriterError) as exc:
        kinodb.Writer(missing, mode=mode)
    assert str(exc.value) == f"{missing}: the folder {missing.parent} does not exist; create it first"
    folder = tmp_path / "out"
    folder.mkdir()
    with pytest.raises(WriterError, match=f"{folder} is a folder; give the path of a .kdb file, e.g. "):
        kinodb.Writer(folder, mode=mode)
    afile = tmp_path / "f.txt"
    afile.write_text("x")
    with pytest.raises(WriterError, match="is not a folder"):
        kinodb.Writer(afile / "x.kdb", mode=mode)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.txt", "out"]
    assert list(folder.iterdir()) == []


def test_a_live_temporary_of_a_longer_name_is_not_taken_for_a_stale_one(tmp_path: Path) -> None:
    # ".bridge.2024.kdb.PID.TOKEN.tmp" belongs to "bridge.2024.kdb", not to "bridge".
    live = tmp_path / f".bridge.2024.kdb.{os.getpid()}.0badf00d.tmp"
    live.write_bytes(b"in progress")
    stale = tmp_path / ".bridge.4194999.0badf00d.tmp"
    stale.write_bytes(b"left by a killed writer")
    with kinodb.Writer(tmp_path / "bridge", mode="w") as w:
        w.add_episode(actions=np.zeros((2, 3), np.float32))
    assert live.exists() and not stale.exists()


def test_mode_a_on_a_path_another_writer_created_meanwhile_appends_to_it(tmp_path: Path) -> None:
    path = tmp_path / "new.kdb"
    first = kinodb.Writer(path, mode="a")  # no file yet: both write a new one
    second = kinodb.Writer(path, mode="a")
    first.add_episode(actions=np.zeros((2, 3), np.float32))
    second.add_episode(actions=np.ones((2, 3), np.float32))
    first.close()
    second.close()  # appends its episode after the first writer's
    with kinodb.open(path) as db:
        assert len(db) == 2
        np.testing.assert_array_equal(db.read_array(1, "actions"), np.ones((2, 3), np.float32))
    assert [p.name for p in tmp_path.iterdir()] == ["new.kdb"]


def test_a_fifo_is_refused_not_replaced_and_not_waited_on(tmp_path: Path) -> None:
    """Mode "w" never replaces what is no regular file (a FIFO, a device: /dev/null), and
    refuses it before opening it (opening a FIFO to lock it would block)."""
    path = tmp_path / "fifo.kdb"
    os.mkfifo(path)
    for mode in ("w", "a", "x"):
        with pytest.raises(kinodb.FormatError, match=r"is a FIFO \(named pipe\), not a regular file"):
            kinodb.Writer(path, mode=mode)
    assert path.is_fifo()


def _interrupted_writer_leaves_nothing(
    tmp_path: Path, mode: str, monkeypatch: pytest.MonkeyPatch, name: str, interrupted: object
) -> None:
    """Open a `Writer` in ``mode`` with ``kinodb.kdb.writer.NAME`` replaced by ``interrupted``
    (which raises KeyboardInterrupt): the folder is left as it was, and nothing holds the file."""
    from kinodb.kdb import writer as writer_module

    path = tmp_path / ("a.kdb" if mode == "a" else "w.kdb")
    if mode == "w":
        with kinodb.Writer(path, mode="w") as w:
            w.add_episode(actions=np.zeros((3, 2), np.float32))
    before = sorted(os.listdir(tmp_path))
    monkeypatch.setattr(writer_module, name, interrupted, raising=False)
    with pytest.raises(KeyboardInterrupt):
        kinodb.Writer(path, mode=mode)
    monkeypatch.undo()
    assert sorted(os.listdir(tmp_path)) == before
    with kinodb.Writer(path, mode="a") as w:  # nothing left holds the file
        w.add_episode(actions=np.ones((3, 2), np.float32))


@pytest.mark.parametrize("mode", ["w", "x", "a"])
def test_a_signal_before_the_cleanup_is_registered_leaves_no_temporary(
    tmp_path: Path, mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # SIGTERM and Ctrl-C arrive as exceptions wherever the writer stands, also just after it
    # created its temporary file and before its cleanup knows of it.
    def interrupted(*args: object) -> None:
        raise KeyboardInterrupt

    _interrupted_writer_leaves_nothing(tmp_path, mode, monkeypatch, "Flusher", interrupted)


@pytest.mark.parametrize("mode", ["w", "x"])
def test_a_signal_as_the_temporary_file_is_made_leaves_no_temporary(
    tmp_path: Path, mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The signal's handler runs as `open` returns: the file exists, and the writer holds no
    # handle to it yet.
    def made_then_interrupted(file: str, *args: object, **kwargs: object) -> object:
        open(file, *args, **kwargs).close()  # type: ignore[call-overload]
        raise KeyboardInterrupt

    _interrupted_writer_leaves_nothing(tmp_path, mode, monkeypatch, "open", made_then_interrupted)
