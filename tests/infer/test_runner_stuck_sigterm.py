"""SIGTERM ends a run whose provider is blocked in a read: the steps before it are written, then
the process ends as SIGTERM ends it."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from _kinfer_packages import MakePackage

import kinodb

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="needs POSIX signals")

# A provider whose joint-angle read blocks at step 30 (a socket read with no timeout: a sensor
# that never answers). argv: package, log, recording, STUCK_TICK_S.
SCRIPT = """
import socket, sys
import numpy as np
from kinodb.infer import CallableProvider, Runner, load_model
from kinodb.infer import runner
runner.STUCK_TICK_S = float(sys.argv[4])
model = load_model(sys.argv[1])
sig = model.signature
getters = {n: (lambda n=n: lambda *_: np.ones(sig.shape(n), np.float32))() for n in sig.observation_names}
a, b = socket.socketpair()
calls = [0]
def joint_angles(names):
    calls[0] += 1
    if calls[0] == 31:
        print("BLOCKED", flush=True)
        a.recv(1)
    return np.ones(len(names), np.float32)
getters["joint_angles"] = joint_angles
Runner(model, CallableProvider(**getters), rate_hz=500, log_path=sys.argv[2], record_to=sys.argv[3]).run()
print("not reached", flush=True)
"""


def _blocked_run(
    make_package: MakePackage, tmp_path: Path, stuck_s: float
) -> tuple[subprocess.Popen[str], Path, Path]:
    built = make_package()
    log, out = tmp_path / "stuck.ndjson", tmp_path / "stuck.kdb"
    argv = [sys.executable, "-c", SCRIPT, str(built.path), str(log), str(out), str(stuck_s)]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "BLOCKED"
    return proc, log, out


def _ended_by_sigterm(proc: subprocess.Popen[str], log: Path, out: Path) -> None:
    try:
        code = proc.wait(timeout=15)
    finally:
        if proc.poll() is None:  # still blocked: the fix is missing
            proc.kill()
            proc.wait()
    assert code == -signal.SIGTERM, proc.stderr.read() if proc.stderr else ""
    assert proc.stdout is not None and "not reached" not in proc.stdout.read()
    assert len(log.read_text().splitlines()) == 30  # the steps before the blocked one
    with kinodb.open(out) as db:
        assert len(db) == 1 and db.read_meta(0)["num_frames"] == 30


def test_a_second_sigterm_ends_a_blocked_provider(make_package: MakePackage, tmp_path: Path) -> None:
    proc, log, out = _blocked_run(make_package, tmp_path, stuck_s=60.0)
    proc.send_signal(signal.SIGTERM)  # the tick has not been stuck long: the run waits for it ...
    time.sleep(0.3)
    assert proc.poll() is None
    proc.send_signal(signal.SIGTERM)  # ... and a second SIGTERM ends it
    _ended_by_sigterm(proc, log, out)


def test_one_sigterm_ends_a_tick_stuck_past_the_grace(make_package: MakePackage, tmp_path: Path) -> None:
    proc, log, out = _blocked_run(make_package, tmp_path, stuck_s=0.2)
    time.sleep(0.5)  # stuck longer than STUCK_TICK_S
    proc.send_signal(signal.SIGTERM)
    _ended_by_sigterm(proc, log, out)
