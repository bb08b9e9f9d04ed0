"""The ingest's progress on stderr: sparse in log files, and ended before an error is reported."""

from __future__ import annotations

import io
import os
import select
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from kinodb.ingest import _run

SRC = Path(__file__).resolve().parents[2] / "src"
STEPS, PAUSE = 10, 0.15  # 1.5 s of episodes: a terminal's bar refreshes ~10 times in it


def _tick(progress: _run._Progress) -> None:
    for k in range(STEPS):
        time.sleep(PAUSE)
        progress(f"demo_{k}")


def test_a_log_file_gets_the_bar_at_its_start_and_end_only(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("tqdm", reason="the hdf5/lerobot/rlds extras' tqdm is not installed")
    log = io.StringIO()  # no terminal, as a batch job's log file
    monkeypatch.setattr(sys, "stderr", log)
    _tick(_run._Progress(STEPS, True))
    text = log.getvalue()
    assert text.count(f"/{STEPS}") == 2, text  # 0/10 when it starts, 10/10 when it ends
    assert text.endswith("\n") and f"{STEPS}/{STEPS}" in text.splitlines()[-1]


def test_a_terminal_gets_the_bar_refreshed(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("tqdm", reason="the hdf5/lerobot/rlds extras' tqdm is not installed")
    fcntl = pytest.importorskip("fcntl", reason="no pseudo-terminals here (POSIX only)")
    termios = pytest.importorskip("termios", reason="no pseudo-terminals here (POSIX only)")
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # 100 columns
    with os.fdopen(slave, "w") as terminal:
        monkeypatch.setattr(sys, "stderr", terminal)
        _tick(_run._Progress(STEPS, True))
        terminal.flush()
        chunks = []
        while select.select([master], [], [], 0.2)[0]:
            chunks.append(os.read(master, 65536))
    os.close(master)
    text = b"".join(chunks).decode()
    assert text.count(f"/{STEPS}") > 4, text


def test_without_tqdm_a_log_file_gets_whole_lines(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tqdm", None)  # import tqdm raises ImportError
    log = io.StringIO()
    monkeypatch.setattr(sys, "stderr", log)
    _tick(_run._Progress(STEPS, True))
    lines = log.getvalue().split("\n")
    assert "\r" not in log.getvalue() and lines[-1] == "" and len(lines) == 2, lines
    assert lines[0].startswith(f"{STEPS}/{STEPS} episodes (")


def test_a_disabled_bar_writes_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    log = io.StringIO()
    monkeypatch.setattr(sys, "stderr", log)
    progress = _run._Progress(3, False)
    for key in "abc":
        progress(key)
    progress.close()
    assert log.getvalue() == ""


def _bad_hdf5(path: Path) -> Path:
    """Four robomimic demos; demo_2's observations are shorter than its actions."""
    h5py = pytest.importorskip("h5py", reason="the hdf5 extra is not installed")
    with h5py.File(path, "w") as fh:
        for k in range(4):
            fh.create_dataset(f"data/demo_{k}/actions", data=np.zeros((5, 2), np.float32))
            fh.create_dataset(f"data/demo_{k}/obs/x", data=np.zeros((3 if k == 2 else 5, 3), np.float32))
    return path


@pytest.mark.integration
def test_the_bar_is_ended_before_the_error_line(tmp_path: Path) -> None:
    pytest.importorskip("tqdm", reason="the hdf5 extra's tqdm is not installed")
    src = _bad_hdf5(tmp_path / "bad.hdf5")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-m", "kinodb", "ingest", str(src), "-o", str(tmp_path / "o.kdb")],
                          capture_output=True, text=True, env=env, timeout=120)  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    bar, error = proc.stderr.rsplit("\n", 2)[:2]
    assert "/4 [" in bar  # the bar's last state, on its own line
    assert error.startswith(f"error: {src}: demo_2: obs/x has 3 rows, actions has 5"), proc.stderr
    assert proc.stderr.endswith(error + "\n")  # nothing after the error: no bar written again
    assert proc.stderr.count("\r") <= 2  # its first and last state only (stderr is no terminal)
