"""Ctrl-C during ``kino infer bench``'s fixed-rate loop: the run is reported as stopped early, exit 130."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from _kinfer_packages import MakePackage

SRC = Path(__file__).resolve().parents[2] / "src"


def _bench_interrupted_in_loop(
    package: Path, tmp_path: Path, *extra: str
) -> subprocess.CompletedProcess[str]:
    """Run the bench with a 60 s loop; Ctrl-C once the loop's telemetry log has lines."""
    # The runner logs the loop's ticks to $KINFER_LOG_PATH/$KINFER_LOG_UUID.ndjson.
    log = tmp_path / "logs" / "loop.ndjson"
    env = {**os.environ, "KINFER_LOG_PATH": str(log.parent), "KINFER_LOG_UUID": "loop",
           "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}  # fmt: skip
    argv = [sys.executable, "-m", "kinodb", "infer", "bench", str(package), "--steps", "50", "--rate", "200",
            "--seconds", "60", *extra]  # fmt: skip
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 60
    while not (log.is_file() and log.stat().st_size > 0):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the loop did not start"
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)


@pytest.mark.integration
def test_json_says_the_loop_was_stopped_and_the_exit_code_is_130(
    make_package: MakePackage, tmp_path: Path
) -> None:
    built = make_package()
    proc = _bench_interrupted_in_loop(built.path, tmp_path, "--json")
    assert proc.returncode == 130, proc.stderr
    assert proc.stderr.endswith("kino infer: interrupted\n")
    assert "the run stopped on Ctrl-C after" in proc.stderr  # and where its steps went
    loop = json.loads(proc.stdout)["loop"]
    assert loop["stopped_by"] == "interrupt"
    assert 1 <= loop["steps"] < 60 * 200 and loop["duration_s"] < 60 and loop["seconds"] == 60


@pytest.mark.integration
def test_text_says_the_loop_was_stopped_early(make_package: MakePackage, tmp_path: Path) -> None:
    built = make_package()
    proc = _bench_interrupted_in_loop(built.path, tmp_path)
    assert proc.returncode == 130, proc.stderr
    assert proc.stderr.endswith("kino infer: interrupted\n")
    assert "the run stopped on Ctrl-C after" in proc.stderr  # and where its steps went
    last = proc.stdout.splitlines()[-1]
    assert last.startswith("the loop was stopped early by Ctrl-C: ") and last.endswith(" s of 60 s")


def test_a_loop_that_runs_its_course_says_so(
    make_package: MakePackage, capsys: pytest.CaptureFixture[str]
) -> None:
    from kinodb._cli.main import main

    built = make_package()
    assert main(["infer", "bench", str(built.path), "--steps", "50", "--rate", "200", "--seconds", "0.1",
                 "--json"]) == 0  # fmt: skip
    loop = json.loads(capsys.readouterr().out)["loop"]
    assert loop["stopped_by"] == "duration" and loop["steps"] >= 1
