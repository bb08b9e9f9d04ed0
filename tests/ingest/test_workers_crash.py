"""Ingest worker processes that die, and signals sent to the whole process group.

Each ingest runs in a process group of its own, under a hard timeout: a run that hangs
fails the test, and whatever is left of its group is killed.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads process groups from /proc"),
]

SRC = Path(__file__).resolve().parents[2] / "src"
TIMEOUT_S = 90.0

# A source whose episodes take ``sleep`` seconds each and whose reader ends its process at
# episode ``crash`` (``how``): what the OOM killer, a segfault in a decoder or a plug-in does.
_SOURCE = """
import json, os, resource, signal, sys, threading, time
import numpy as np
from kinodb.ingest import SourceInfo

class Unpicklable(Exception):
    def __init__(self, text, lock):
        super().__init__(text)
        self.lock = lock

class CrashSource:
    format = "crash"

    def __init__(self, path, options):
        with open(path) as fh:
            self.spec = json.load(fh)

    @classmethod
    def detect(cls, path):
        return path.endswith(".crash")

    def episodes(self):
        return [f"ep{i}" for i in range(self.spec["episodes"])]

    def info(self):
        return SourceInfo("crash", fps=10.0)

    def read(self, key):
        time.sleep(self.spec["sleep"])
        if key == f"ep{self.spec['crash']}":
            how = self.spec["how"]
            if how == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            elif how == "abort":
                resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # no core file left behind
                os.abort()
            elif how == "exit":
                sys.exit(3)
            elif how == "unpicklable":
                raise Unpicklable(f"odd failure at {key}", threading.Lock())
        rng = np.random.default_rng(int(key[2:]))
        return {"actions": rng.standard_normal((8, 3)).astype(np.float32),
                "images": {"cam": rng.integers(0, 255, (8, 16, 16, 3), dtype=np.uint8)}}

    def close(self):
        pass
"""

# `kino` with the source registered, as `python -m kinodb._cli.main` runs it.
_KINO = """
import runpy, sys
from kinodb.ingest import _base
_base._BUILTIN["crash"] = "crash_source:CrashSource"
sys.argv = ["kino", *sys.argv[1:]]
runpy.run_module("kinodb._cli.main", run_name="__main__")
"""


def _dataset(
    tmp_path: Path, *, episodes: int = 40, crash: int = -1, how: str = "none", sleep: float = 0.0
) -> Path:
    (tmp_path / "crash_source.py").write_text(_SOURCE)
    path = tmp_path / "data" / "set.crash"
    path.parent.mkdir()
    path.write_text(json.dumps({"episodes": episodes, "crash": crash, "how": how, "sleep": sleep}))
    return path


def _group(pgid: int) -> list[int]:
    """The live processes of process group ``pgid`` (zombies aside)."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:
            found.append(int(name))
    return found


def _workers(pid: int) -> list[int]:
    """The ingest workers of process ``pid`` (its spawned children, the resource tracker aside)."""
    found = []
    for child in _group(pid):
        try:
            with open(f"/proc/{child}/cmdline", "rb") as fh:
                cmdline = fh.read()
            with open(f"/proc/{child}/stat") as fh:
                ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
        except OSError:
            continue
        if ppid == pid and b"spawn_main" in cmdline and b"resource_tracker" not in cmdline:
            found.append(child)
    return found


def _semaphores(pids: list[int]) -> set[str]:
    """The POSIX semaphores (multiprocessing's locks) that processes ``pids`` have open."""
    found = set()
    for pid in pids:
        with contextlib.suppress(OSError), open(f"/proc/{pid}/maps") as fh:
            found |= {line.split("/dev/shm/", 1)[1].split()[0] for line in fh if "/dev/shm/sem." in line}
    return found


def _default_sighup() -> None:
    """In the child: SIGHUP at its default, also when the tests run under nohup (which ignores it)."""
    if hasattr(signal, "SIGHUP"):
        signal.signal(signal.SIGHUP, signal.SIG_DFL)


class _Run:
    """One ``kino`` (or Python) process in a process group of its own."""

    def __init__(self, argv: list[str], cwd: Path) -> None:
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(cwd), str(SRC), os.environ.get("PYTHONPATH", "")]),
        }
        self.proc = subprocess.Popen([sys.executable, *argv], cwd=cwd, env=env, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, start_new_session=True,
                                     preexec_fn=_default_sighup)  # fmt: skip
        self.t0 = time.monotonic()
        self.out = ""
        self.semaphores: set[str] = set()  # what its processes had open, seen by `look`

    def wait_for(self, condition: object, what: str) -> None:
        while not condition():
            assert self.proc.poll() is None, f"ended before {what}: {self.proc.communicate()}"
            assert time.monotonic() - self.t0 < TIMEOUT_S, f"no {what} after {TIMEOUT_S} s"
            time.sleep(0.005)

    def look(self) -> None:
        """Note the semaphores that its processes have open now."""
        self.semaphores |= _semaphores(_group(self.proc.pid))

    def finish(self) -> tuple[int, str]:
        """Its exit code and stderr; a hang fails. Nothing of its group may outlive it."""
        try:
            self.out, err = self.proc.communicate(timeout=max(1.0, TIMEOUT_S - (time.monotonic() - self.t0)))
        except subprocess.TimeoutExpired:
            pytest.fail(
                f"hung: still running {TIMEOUT_S} s after it started; its group: {_group(self.proc.pid)}"
            )
        deadline = time.monotonic() + 10  # the resource tracker ends once its pipe does
        while _group(self.proc.pid) and time.monotonic() < deadline:
            time.sleep(0.02)
        left = _group(self.proc.pid)
        assert not left, f"processes left running in its group: {left}"
        kept = sorted(name for name in self.semaphores if os.path.exists(f"/dev/shm/{name}"))
        assert not kept, f"semaphores left in /dev/shm: {kept}"
        return self.proc.returncode, err

    def kill(self) -> None:
        for pid in _group(self.proc.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


Starter = Callable[..., _Run]


@pytest.fixture
def run(tmp_path: Path) -> Iterator[Starter]:
    """Start runs; each is killed, with its whole group, at the end of the test."""
    runs: list[_Run] = []

    def start(*argv: str) -> _Run:
        runs.append(_Run(list(argv), tmp_path))
        return runs[-1]

    yield start
    for r in runs:
        r.kill()


def _left(folder: Path) -> list[str]:
    return sorted(name for name in os.listdir(folder) if name != "set.crash")


@pytest.mark.parametrize(
    ("how", "died"),
    [
        ("kill", r"signal 9, SIGKILL: out of memory\?"),
        ("abort", r"signal 6, SIGABRT: a crash in compiled code"),
    ],
)
def test_a_worker_that_dies_ends_the_ingest_with_one_line(
    tmp_path: Path, run: Starter, how: str, died: str
) -> None:
    src = _dataset(tmp_path, crash=13, how=how)
    out = src.parent / "out.kdb"
    code, err = run("-c", _KINO, "ingest", str(src), "-o", str(out), "-q", "--workers", "2").finish()
    assert code == 1, err
    pattern = (
        rf"error: ingest worker \(pid \d+\) died \({died}\) while converting episode ep13 of {re.escape(str(src))}; "
        r"nothing was written"
    )
    assert re.fullmatch(pattern + r"(; if memory ran out, rerun with fewer --workers)?\n", err), err
    assert _left(src.parent) == []  # no output, no hidden temporary output


def test_a_worker_killed_from_outside_while_the_others_work(tmp_path: Path, run: Starter) -> None:
    # The OOM killer's way: SIGKILL from outside, while the other worker is busy too.
    src = _dataset(tmp_path, episodes=400, sleep=0.02)
    out = src.parent / "out.kdb"
    r = run("-c", _KINO, "ingest", str(src), "-o", str(out), "-q", "--workers", "2")
    r.wait_for(lambda: len(_workers(r.proc.pid)) == 2, "two workers")
    time.sleep(1.0)  # both convert by now
    victim = _workers(r.proc.pid)[0]
    r.look()
    os.kill(victim, signal.SIGKILL)
    code, err = r.finish()
    assert code == 1, err
    assert re.fullmatch(
        rf"error: ingest worker \(pid {victim}\) died \(signal 9, SIGKILL: out of memory\?\) while converting "
        rf"episode ep\d+ of {re.escape(str(src))}; nothing was written; if memory ran out, rerun with fewer "
        r"--workers\n",
        err,
    ), err
    assert _left(src.parent) == []


def test_the_python_api_raises_a_conversion_error_naming_the_worker(tmp_path: Path, run: Starter) -> None:
    src = _dataset(tmp_path, crash=5, how="kill")
    script = f"""
from kinodb.errors import ConversionError
from kinodb.ingest import _base, ingest
_base._BUILTIN["crash"] = "crash_source:CrashSource"
try:
    ingest({str(src)!r}, {str(src.parent / "out.kdb")!r}, workers=3)
except ConversionError as exc:
    print(exc)
"""
    r = run("-c", script)
    code, err = r.finish()
    assert code == 0, err
    out = r.out
    assert re.fullmatch(
        r"ingest worker \(pid \d+\) died \(signal 9, SIGKILL: out of memory\?\) while converting episode ep5 of "
        rf"{re.escape(str(src))}; nothing was written; if memory ran out, rerun with fewer workers\n",
        out,
    ), (out, err)
    assert _left(src.parent) == []


@pytest.mark.parametrize(
    ("how", "message"),
    [
        ("exit", r"ingest worker \(pid \d+\) raised SystemExit: 3"),
        ("unpicklable", "Unpicklable: odd failure at ep7"),  # reported by the worker, as one line
    ],
)
def test_what_a_worker_cannot_send_back_is_one_line(
    tmp_path: Path, run: Starter, how: str, message: str
) -> None:
    src = _dataset(tmp_path, crash=7, how=how)
    out = src.parent / "out.kdb"
    code, err = run("-c", _KINO, "ingest", str(src), "-o", str(out), "-q", "--workers", "2").finish()
    assert code == 1, err
    assert re.fullmatch(rf"error: {re.escape(str(src))}: episode ep7: {message}\n", err), err
    assert _left(src.parent) == []


@pytest.mark.parametrize(
    ("signame", "code", "how"),
    [
        ("SIGHUP", 129, "terminated (SIGHUP)"),
        ("SIGTERM", 143, "terminated (SIGTERM)"),
        ("SIGINT", 130, "interrupted"),
    ],
)
@pytest.mark.parametrize("when", ["starting", "converting"])
def test_a_signal_to_the_process_group_stops_every_worker(
    tmp_path: Path, run: Starter, signame: str, code: int, how: str, when: str
) -> None:
    # As a closed terminal or a dropped ssh session (SIGHUP), Slurm (SIGTERM) or Ctrl-C sends it:
    # to the parent and its workers at once, while the workers start or while they convert.
    src = _dataset(tmp_path, episodes=400, sleep=0.02)
    out = src.parent / "out.kdb"
    r = run("-c", _KINO, "ingest", str(src), "-o", str(out), "-q", "--workers", "2")
    if when == "starting":  # the first worker process exists: it may still be starting Python
        r.wait_for(lambda: len(_workers(r.proc.pid)) >= 1, "a worker")
    else:
        r.wait_for(lambda: len(_workers(r.proc.pid)) == 2, "two workers")
        time.sleep(1.0)
    r.look()
    os.killpg(r.proc.pid, getattr(signal, signame))
    got, err = r.finish()
    assert got == code, err
    assert (
        err == f"kino ingest: {how}; nothing was written to {out}\n"
    )  # no traceback, no resource_tracker noise
    assert _left(src.parent) == []


def test_more_workers_than_episodes_give_the_same_file_as_one_process(tmp_path: Path, run: Starter) -> None:
    import kinodb

    src = _dataset(tmp_path, episodes=3)
    one, four = src.parent / "one.kdb", src.parent / "four.kdb"
    for out, workers in ((one, "1"), (four, "4")):
        code, err = run("-c", _KINO, "ingest", str(src), "-o", str(out), "-q", "--workers", workers).finish()
        assert code == 0, err
    with kinodb.open(one) as a, kinodb.open(four) as b:
        assert len(a) == len(b) == 3
        for i in range(3):
            x, y = a.read_episode(i), b.read_episode(i)
            assert a.read_meta(i) == b.read_meta(i) and x.keys() == y.keys()
            assert (x["actions"] == y["actions"]).all()
