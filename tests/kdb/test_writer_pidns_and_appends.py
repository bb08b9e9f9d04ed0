"""Writers of one path in other processes and PID namespaces, and what an append session
keeps: schemas of merged files, dtypes, sessions that add nothing, unwritable files."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import kinodb
from kinodb.errors import WriterError
from kinodb.kdb import writer as writer_mod
from kinodb.kdb._stale import hold_temp, remove_stale_temps
from kinodb.kdb.validate import validate

fcntl = pytest.importorskip("fcntl")

DEAD = 4194999  # above Linux's pid_max: no such process here
A = np.zeros((5, 2), np.float32)

# A recorder in another process: opens a writer on the path, adds an episode, says "ready",
# then waits for a line on stdin before closing.
_RECORDER = textwrap.dedent(
    """
    import sys, numpy as np, kinodb
    w = kinodb.Writer(sys.argv[1], mode="a")
    w.add_episode(actions=np.full((5, 2), 1, np.float32))
    print("ready", flush=True)
    sys.stdin.readline()
    w.close()
    print("closed", flush=True)
    """
)


def _temps(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def _no_such_process(pid: int, sig: int) -> None:
    raise ProcessLookupError(errno.ESRCH, "No such process")


# -- temporaries of live writers ------------------------------------------------------------


def test_a_live_writers_temporary_is_kept_though_its_process_id_means_nothing_here(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A writer in another process holds its temporary; this process sees no such process id,
    # as a writer in another PID namespace (a container sharing the folder) sees none.
    path = tmp_path / "rec.kdb"
    other = subprocess.Popen(
        [sys.executable, "-c", _RECORDER, str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert other.stdout is not None and other.stdin is not None
        assert other.stdout.readline().strip() == "ready"
        (theirs,) = _temps(tmp_path)
        monkeypatch.setattr(os, "kill", _no_such_process)
        with kinodb.Writer(path, mode="a") as w:
            w.add_episode(actions=np.full((5, 2), 2, np.float32))
        monkeypatch.undo()
        assert (tmp_path / theirs).exists()
        out, _ = other.communicate("\n", timeout=60)
    finally:
        if other.poll() is None:
            other.kill()
            other.wait()
    assert other.returncode == 0 and "closed" in out
    with kinodb.open(path) as db:
        assert sorted(float(db.read_array(i, "actions")[0, 0]) for i in range(len(db))) == [1.0, 2.0]
    assert _temps(tmp_path) == []


def test_the_sweep_deletes_unlocked_temporaries_of_dead_processes_and_keeps_locked_ones(
    tmp_path: Path,
) -> None:
    path = tmp_path / "d.kdb"
    dead = tmp_path / f".d.kdb.{DEAD}.0badf00d.tmp"
    held = tmp_path / f".d.kdb.{DEAD}.00c0ffee.tmp"  # its id means nothing here, but it is locked
    alive = tmp_path / f".d.kdb.{os.getpid()}.0badf00d.tmp"  # unlocked, but its process runs here
    for junk in (dead, held, alive):
        junk.write_bytes(b"half-written")
    with open(held, "rb") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert remove_stale_temps(str(path)) == [str(dead)]
        assert held.exists() and alive.exists() and not dead.exists()
    assert remove_stale_temps(str(path)) == [str(held)]  # its holder is gone
    assert alive.exists()


def test_a_temporary_locked_or_deleted_by_another_sweep_is_not_the_writers(tmp_path: Path) -> None:
    tmp = tmp_path / f".d.kdb.{os.getpid()}.0badf00d.tmp"
    tmp.write_bytes(b"")
    with open(tmp, "rb") as sweeper, open(tmp, "rb") as mine:
        fcntl.flock(sweeper.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert hold_temp(mine, str(tmp)) is False
    with open(tmp, "rb") as mine:
        tmp.unlink()
        assert hold_temp(mine, str(tmp)) is False
    tmp.write_bytes(b"")
    with open(tmp, "rb") as mine:
        assert hold_temp(mine, str(tmp)) is True


@pytest.mark.parametrize("mode", ["x", "a"])
def test_a_writer_refused_the_path_deletes_no_temporaries(tmp_path: Path, mode: str) -> None:
    path = tmp_path / "d.kdb"
    with kinodb.Writer(path) as w:
        w.add_episode(actions=A)
    stale = tmp_path / f".d.kdb.{DEAD}.0badf00d.tmp"
    with kinodb.Writer(path, mode="a") as appending:
        stale.write_bytes(b"left by a killed writer")
        with pytest.raises((FileExistsError, WriterError)):
            kinodb.Writer(path, mode=mode)  # "x": the file exists; "a": another writer appends
        assert stale.exists()
        appending.add_episode(actions=A)
    with kinodb.Writer(path, mode="a") as w:
        w.add_episode(actions=A)
    assert not stale.exists()  # a writer that got to write swept it


def test_episodes_whose_temporary_was_deleted_are_said_to_be_lost(tmp_path: Path) -> None:
    path = tmp_path / "rec.kdb"
    first, second = kinodb.Writer(path, mode="a"), kinodb.Writer(path, mode="a")
    first.add_episode(actions=A)
    second.add_episode(actions=A)
    first.close()
    (theirs,) = _temps(tmp_path)
    (tmp_path / theirs).unlink()  # as a process that takes no heed of locks would
    with pytest.raises(WriterError, match=f"and they are lost: another process deleted .*{theirs}"):
        second.close()


def _unshare_works() -> bool:
    if shutil.which("unshare") is None or os.geteuid() != 0:
        return False
    try:
        probe = ["unshare", "--pid", "--fork", "--mount-proc", "true"]
        return subprocess.run(probe, capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


@pytest.mark.skipif(
    not _unshare_works(), reason="needs root and a working `unshare --pid --fork --mount-proc`"
)
def test_writers_in_different_pid_namespaces_keep_each_others_episodes(tmp_path: Path) -> None:
    path = tmp_path / "rec.kdb"
    w = kinodb.Writer(path, mode="a")
    for i in range(3):
        w.add_episode(actions=np.full((5, 2), i, np.float32))
    code = (
        "import sys, numpy as np, kinodb\n"
        "with kinodb.Writer(sys.argv[1], mode='a') as w:\n"
        "    w.add_episode(actions=np.full((5, 2), 7, np.float32))\n"
    )
    other = ["unshare", "--pid", "--fork", "--mount-proc", sys.executable, "-c", code, str(path)]
    done = subprocess.run(other, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    w.close()
    with kinodb.open(path) as db:
        assert sorted(float(db.read_array(i, "actions")[0, 0]) for i in range(len(db))) == [
            0.0,
            1.0,
            2.0,
            7.0,
        ]
    assert _temps(tmp_path) == []


# -- schemas of merged files ----------------------------------------------------------------


@pytest.mark.parametrize("mode", ["w", "a"])
def test_the_schema_of_a_merged_file_can_be_given_to_a_writer(tmp_path: Path, mode: str) -> None:
    schema = {"actions": {"components": {"xy": [0, 2]}, "names": ["x", "y"]}}
    for name in ("a.kdb", "b.kdb"):
        with kinodb.Writer(tmp_path / name, schema=schema) as w:
            w.add_episode(actions=A)
    kinodb.merge([tmp_path / "a.kdb", tmp_path / "b.kdb"], tmp_path / "m.kdb")
    with kinodb.open(tmp_path / "m.kdb") as db:
        merged = db.schema()
    assert "sources" in merged
    target = tmp_path / ("m.kdb" if mode == "a" else "copy.kdb")
    with kinodb.Writer(target, mode=mode, schema=merged) as w:
        w.add_episode(actions=A)
    with kinodb.open(target) as db:
        assert db.schema()["actions"]["components"] == {"xy": [0, 2]}
        assert db.schema()["actions"]["names"] == ["x", "y"]
        # A merge's record of its inputs stays with the merged file; a new file gets none.
        assert ("sources" in db.schema()) == (mode == "a")


# -- dtypes that change between episodes ----------------------------------------------------


def test_an_append_whose_arrays_change_dtype_warns_once_per_array(tmp_path: Path) -> None:
    path = tmp_path / "drift.kdb"
    rng = np.random.default_rng(0)
    with kinodb.Writer(path) as w:
        w.add_episode(
            actions=rng.random((4, 3), np.float32), extra_arrays={"force": np.zeros((4, 6), np.float32)}
        )
    with pytest.warns(UserWarning) as said, kinodb.Writer(path, mode="a") as w:
        for _ in range(2):  # float64, as a ROS message gives them
            w.add_episode(actions=rng.random((4, 3)), extra_arrays={"force": np.zeros((4, 6))})
    messages = [str(x.message) for x in said]
    assert len(messages) == 2
    assert (
        "episode 1 holds 'actions' as float64, but the file's earlier episodes hold it as float32"
        in messages[0]
    )
    assert "actions.astype(np.float32), or kino ingest --dtype float32" in messages[0]
    assert said[0].filename == __file__  # at the caller's line
    assert "extra_arrays['force'].astype(np.float32)" in messages[1]
    assert validate(path).ok  # valid, though gather needs one dtype per array
    with kinodb.open(path) as db:
        assert len(db) == 3 and db.schema()["actions"]["dtype"] is None


def test_episodes_of_one_dtype_give_no_warning(tmp_path: Path) -> None:
    path = tmp_path / "same.kdb"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with kinodb.Writer(path) as w:
            w.add_episode(actions=A)
        with kinodb.Writer(path, mode="a") as w:
            w.add_episode(actions=A)


def test_left_out_states_and_rewards_take_the_files_dtype(tmp_path: Path) -> None:
    path = tmp_path / "f64.kdb"
    f64 = np.float64
    with kinodb.Writer(path) as w:
        w.add_episode(actions=np.zeros((4, 2), f64), states=np.zeros((4, 0), f64), rewards=np.ones(4, f64))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no drift: the defaults are float64 zeros
        with kinodb.Writer(path, mode="a") as w:
            w.add_episode(actions=np.zeros((4, 2), f64))
    with kinodb.open(path) as db:
        assert db.read_array(1, "rewards").dtype == f64 and db.read_array(1, "states").dtype == f64
        np.testing.assert_array_equal(db.gather("rewards", [0, 1]), np.r_[np.ones(4), np.zeros(4)])
        assert db.schema()["rewards"]["dtype"] == "float64"


# -- append sessions that add nothing -------------------------------------------------------


def test_an_append_session_that_adds_nothing_leaves_the_file_as_it_was(tmp_path: Path) -> None:
    path = tmp_path / "a.kdb"
    with kinodb.Writer(path, metadata={"robot": "franka"}) as w:
        w.add_episode(actions=A)
    before = path.read_bytes()
    for _ in range(3):
        with kinodb.Writer(path, mode="a") as w:
            w.metadata["robot"] = "franka"  # set to what it is: no change
    assert path.read_bytes() == before
    with kinodb.Writer(path, mode="a"):
        pass  # released: another writer may append at once
    with kinodb.Writer(path, mode="a") as w:
        w.add_episode(actions=A)
    with kinodb.open(path) as db:
        assert len(db) == 2


@pytest.mark.parametrize("change", ["metadata", "stats", "argument"])
def test_an_append_session_that_changes_the_metadata_commits_it(tmp_path: Path, change: str) -> None:
    path = tmp_path / "a.kdb"
    with kinodb.Writer(path) as w:
        w.add_episode(actions=A)
    before = path.read_bytes()
    given: dict[str, Any] = {"metadata": {"operator": "kim"}} if change == "argument" else {}
    with kinodb.Writer(path, mode="a", **given) as w:
        if change == "metadata":
            w.metadata["operator"] = "kim"
        elif change == "stats":
            w.stats = {"num_frames": 5, "num_episodes": 1, "arrays": {}}
    assert path.read_bytes() != before
    with kinodb.open(path) as db:
        info = db.dataset_info()
        assert "modified" in info
        assert (info.get("stats") is not None) if change == "stats" else db.metadata()["operator"] == "kim"


# -- files that cannot be written -----------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "said"),
    [
        (PermissionError(errno.EACCES, "Permission denied"), "chmod u+w"),
        (OSError(errno.EROFS, "Read-only file system"), "mounted read-only"),
    ],
)
def test_appending_to_an_unwritable_file_names_it_and_the_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error: OSError, said: str
) -> None:
    path = tmp_path / "a.kdb"
    with kinodb.Writer(path) as w:
        w.add_episode(actions=A)

    def refuse(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        if "+" in mode:
            raise error
        return open(file, mode, *args, **kwargs)

    monkeypatch.setattr(writer_mod, "open", refuse, raising=False)
    with pytest.raises(WriterError, match=f"{path}: cannot open the file to append to it") as got:
        kinodb.Writer(path, mode="a")
    assert said in str(got.value)


def _as_nobody() -> list[str]:
    """This Python run as user nobody through setpriv; skips where that cannot be."""
    if shutil.which("setpriv") is None or os.geteuid() != 0:
        pytest.skip("needs root and setpriv to append as another user")
    cmd = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable]
    probe = subprocess.run([*cmd, "-c", "import kinodb, numpy"], capture_output=True, text=True, timeout=120)
    if probe.returncode != 0:  # e.g. an interpreter whose shared library lies under /root
        pytest.skip(
            f"this Python cannot run as user nobody here: {(probe.stderr.strip().splitlines() or [f'exit {probe.returncode}'])[-1]}"
        )
    return cmd


def test_appending_as_a_user_who_may_not_write_the_file_raises_a_writer_error() -> None:
    as_nobody = _as_nobody()
    folder = Path(tempfile.mkdtemp(dir="/tmp"))
    try:
        folder.chmod(0o755)
        path = folder / "a.kdb"
        with kinodb.Writer(path) as w:
            w.add_episode(actions=A)
        path.chmod(0o644)  # the owner's (root's) to write
        code = (
            "import sys, numpy as np, kinodb\n"
            "try:\n"
            "    kinodb.Writer(sys.argv[1], mode='a')\n"
            "except kinodb.WriterError as e:\n"
            "    print('WriterError:', e)\n"
        )
        done = subprocess.run(
            [*as_nobody, "-c", code, str(path)], capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, done.stderr
        assert f"WriterError: {path}: cannot open the file to append to it (Permission denied)" in done.stdout
    finally:
        shutil.rmtree(folder)
