"""SIGTERM and SIGHUP during `kino bench`: its temporary directory is removed, as after Ctrl-C."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

# Run `kino` as `python -m kinodb._cli.main` does, SIGHUP at its default (a test run started
# under nohup would hand its children an ignored SIGHUP, which kino leaves ignored).
_KINO = """
import runpy, signal, sys
if hasattr(signal, "SIGHUP"):
    signal.signal(signal.SIGHUP, signal.SIG_DFL)
sys.argv = ["kino", *sys.argv[1:]]
runpy.run_module("kinodb._cli.main", run_name="__main__")
"""

# Small episodes, timed many times over: the run lasts far longer than the test waits.
_LONG_BENCH = ["bench", "-n", "8", "--frames", "10", "--repeats", "100000", "--no-h5py"]


def _bench_dirs(folder: Path) -> list[str]:
    return [name for name in os.listdir(folder) if name.startswith("kino-bench-")]


def _signal_bench(sig: int, tmp_path: Path) -> tuple[int, str]:
    """Start `kino bench` with TMPDIR in ``tmp_path``, send ``sig`` once its folder appears."""
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    proc = subprocess.Popen([sys.executable, "-c", _KINO, *_LONG_BENCH], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not _bench_dirs(tmp_path) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert proc.poll() is None, f"kino bench ended before its folder appeared: {proc.communicate()}"
        assert _bench_dirs(tmp_path), "kino bench made no kino-bench-* folder in TMPDIR within 120 s"
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, err


@pytest.mark.integration
@pytest.mark.parametrize("name", ["SIGTERM", "SIGHUP"])
def test_bench_removes_its_temporary_directory_when_terminated(tmp_path: Path, name: str) -> None:
    if not hasattr(signal, name):
        pytest.skip(f"no {name} on this platform")
    sig = getattr(signal, name)
    code, err = _signal_bench(sig, tmp_path)
    assert code == 128 + sig, err  # 143 for SIGTERM, 129 for SIGHUP, as a shell reports them
    assert err.strip().splitlines()[-1] == f"kino bench: terminated ({name})", err
    assert _bench_dirs(tmp_path) == [], "the temporary directory was left behind"
