"""SIGHUP (the terminal or ssh session closed) while a command writes: cleaned up like Ctrl-C."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import kinodb

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="no SIGHUP on this platform")

# Run `kino` as `python -m kinodb._cli.main` does, SIGHUP ignored first when asked (as nohup does),
# else at its default (a test run started under nohup would hand its children an ignored SIGHUP).
_KINO = """
import runpy, signal, sys
signal.signal(signal.SIGHUP, signal.SIG_IGN if sys.argv[1] == "nohup" else signal.SIG_DFL)
sys.argv = ["kino", *sys.argv[2:]]
runpy.run_module("kinodb._cli.main", run_name="__main__")
"""


def _source(path: Path) -> Path:
    """A file whose numpy export takes a few seconds: PNG frames to decode and write out."""
    rng = np.random.default_rng(0)
    with kinodb.Writer(path, image_codec="png") as w:
        for _ in range(300):
            w.add_episode(actions=rng.standard_normal((20, 7)).astype(np.float32),
                          images={"front": rng.integers(0, 255, (20, 32, 32, 3), dtype=np.uint8)})  # fmt: skip
    return path


def _robomimic(path: Path) -> Path:
    h5py = pytest.importorskip("h5py")
    rng = np.random.default_rng(1)
    with h5py.File(path, "w") as f:
        for d in range(300):
            f[f"data/demo_{d}/actions"] = rng.standard_normal((20, 7))
            f[f"data/demo_{d}/obs/agentview_image"] = rng.integers(0, 255, (20, 32, 32, 3), dtype=np.uint8)
    return path


def _hidden(folder: Path) -> list[str]:
    return [name for name in os.listdir(folder) if name.startswith(".")]


def _hang_up(argv: list[str], folder: Path, *, nohup: bool = False) -> tuple[int, str]:
    """Start ``kino ARGV``, send SIGHUP once its hidden output appears; its exit code and stderr."""
    proc = subprocess.Popen([sys.executable, "-c", _KINO, "nohup" if nohup else "-", *argv],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not _hidden(folder) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.002)
        assert proc.poll() is None, f"the command ended before it wrote anything: {proc.communicate()}"
        proc.send_signal(signal.SIGHUP)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    return proc.returncode, err


@pytest.mark.integration
@pytest.mark.parametrize("command", ["export", "ingest"])
def test_sighup_cleans_up_like_ctrl_c(tmp_path: Path, command: str) -> None:
    if command == "export":
        src, out = _source(tmp_path / "in.kdb"), tmp_path / "out"
    else:
        src, out = _robomimic(tmp_path / "robo.hdf5"), tmp_path / "out.kdb"
    before = sorted(os.listdir(tmp_path))
    quiet = ["-q"] if command == "ingest" else []  # no progress bar on stderr
    code, err = _hang_up([command, str(src), "-o", str(out), *quiet], tmp_path)
    assert code == 129, err  # 128 + SIGHUP, as a shell reports it
    assert err == f"kino {command}: terminated (SIGHUP); nothing was written to {out}\n"
    assert sorted(os.listdir(tmp_path)) == before  # no hidden staging output left


@pytest.mark.integration
def test_a_command_run_under_nohup_goes_on(tmp_path: Path) -> None:
    src, out = _source(tmp_path / "in.kdb"), tmp_path / "out"
    code, err = _hang_up(["export", str(src), "-o", str(out)], tmp_path, nohup=True)
    assert code == 0, err
    assert len(list(out.glob("episode_*"))) == 300 and _hidden(tmp_path) == []
