"""A process forked while a Writer is open (``os.fork``, a fork-started worker) shares the
writer's open file: the child, even one that exits normally and runs its exit handlers,
must leave the parent's file alone, and is refused if it tries to use the writer."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import kinodb
from kinodb.kdb.validate import validate

SRC = Path(__file__).resolve().parents[2] / "src"

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork is POSIX only")

# Run in its own interpreter: the child's sys.exit must end a plain script (running its
# atexit handlers and finalizers), not unwind into the test runner's frames.
SCRIPT = textwrap.dedent(
    """
    import os, sys
    import numpy as np
    import kinodb

    path, mode, how = sys.argv[1], sys.argv[2], sys.argv[3]

    def child(w):
        try:
            w.add_episode(actions=np.zeros((1, 2), np.float32))
        except kinodb.WriterError as exc:
            print("add:", exc, flush=True)
        else:
            print("add: accepted", flush=True)
        try:
            w.close()
        except kinodb.WriterError as exc:
            print("close:", exc, flush=True)
        sys.exit(0)  # a normal exit: atexit handlers and finalizers run

    def fork_and_wait(w):
        pid = os.fork()
        if pid == 0:
            child(w)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0, status

    if how == "with":
        with kinodb.Writer(path, mode=mode) as w:
            w.add_episode(actions=np.full((3, 2), 1.0, np.float32))
            if os.fork() == 0:
                sys.exit(0)  # inside the with block: the child's SystemExit aborts its copy
            os.wait()
            w.add_episode(actions=np.full((4, 2), 2.0, np.float32))
    else:
        w = kinodb.Writer(path, mode=mode)
        w.add_episode(actions=np.full((3, 2), 1.0, np.float32))
        fork_and_wait(w)  # the child tries to use the writer, then exits normally
        w.add_episode(actions=np.full((4, 2), 2.0, np.float32))
        w.close()
    print("parent: committed", flush=True)
    """
)


def _run(path: Path, mode: str, how: str) -> list[str]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]))
    run = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(path), mode, how],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "Exception ignored" not in run.stderr, run.stderr
    return run.stdout.splitlines()


@pytest.mark.parametrize("how", ["with", "bare"])
@pytest.mark.parametrize("mode", ["w", "a", "x"])
def test_a_forked_child_that_exits_normally_leaves_the_parents_writer_intact(
    tmp_path: Path, mode: str, how: str
) -> None:
    path = tmp_path / "f.kdb"
    if mode != "x":
        with kinodb.Writer(path, mode="w") as w:  # one committed episode to replace or keep
            w.add_episode(actions=np.zeros((2, 2), np.float32))
    lines = _run(path, mode, how)
    assert lines[-1] == "parent: committed"
    report = validate(path)
    assert report.ok and not report.warnings, report
    kept = [(2, 0.0)] if mode == "a" else []  # mode "w" replaced the committed episode
    with kinodb.open(path) as db:
        got = [
            (db.read_meta(i)["num_frames"], float(db.read_array(i, "actions")[0, 0])) for i in range(len(db))
        ]
    assert got == [*kept, (3, 1.0), (4, 2.0)]
    leftovers = [name for name in os.listdir(tmp_path) if name != path.name]
    assert leftovers == []  # the temporary file was published, not deleted by the child


def test_a_forked_child_is_refused_the_parents_writer(tmp_path: Path) -> None:
    path = tmp_path / "f.kdb"
    with kinodb.Writer(path, mode="w") as w:
        w.add_episode(actions=np.zeros((2, 2), np.float32))
    add, close, done = _run(path, "a", "bare")
    for line, verb in ((add, "add:"), (close, "close:")):
        assert line.startswith(f"{verb} {path}: this Writer was opened by process "), line
        assert "is a fork of it and cannot use or close it" in line
        assert "open a Writer in this process instead" in line
    assert done == "parent: committed"
    with kinodb.open(path) as db:
        assert len(db) == 3  # the child's episode is nowhere


def test_a_fork_started_worker_leaves_the_writer_intact(tmp_path: Path) -> None:
    """multiprocessing's fork start method: the worker ends with os._exit, its copies untouched."""
    import multiprocessing

    path = tmp_path / "mp.kdb"
    with kinodb.Writer(path, mode="w") as w:
        w.add_episode(actions=np.full((3, 2), 1.0, np.float32))
        worker = multiprocessing.get_context("fork").Process(target=len, args=((),))
        worker.start()
        worker.join(60)
        assert worker.exitcode == 0
        w.add_episode(actions=np.full((4, 2), 2.0, np.float32))
    assert validate(path).ok
    with kinodb.open(path) as db:
        assert len(db) == 2
