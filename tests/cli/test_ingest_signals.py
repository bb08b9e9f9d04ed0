"""Ctrl-C and SIGTERM that land while a library imports a module it then ignores the failure of."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"

# A command that calls pyarrow's `to_numpy`, which imports pandas on first use and drops
# whatever is raised during that import: the signal is sent at that moment, as `timeout`,
# Slurm or a Ctrl-C would. ``wait`` seconds of work follow before the output is written.
_COMMAND = """
import argparse, os, signal, sys, time
import numpy as np, pyarrow as pa
from kinodb._cli._errors import dispatch

signum, out, wait = getattr(signal, sys.argv[1]), sys.argv[2], float(sys.argv[3])

class SignalInImport:
    def find_spec(self, name, path=None, target=None):
        if name == "pandas":
            os.kill(os.getpid(), signum)
        return None

def run(args):
    sys.meta_path.insert(0, SignalInImport())
    pa.Array.from_buffers(pa.int64(), 3, [None, pa.py_buffer(np.arange(3))]).to_numpy()
    deadline = time.monotonic() + wait
    while True:  # not `while cond: pass`, whose exceptions Python 3.13 does not handle (CPython gh-130279)
        if time.monotonic() >= deadline:
            break
    with open(args.output, "w") as fh:
        fh.write("done")
    return 0

args = argparse.Namespace(run=run, debug=False, command="ingest", output=out)
sys.exit(dispatch(args, error_prefix="", usage_prefix="kino ingest: "))
"""


def _command(signum: str, out: Path, wait: float) -> tuple[subprocess.CompletedProcess[str], float]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", _COMMAND, signum, str(out), str(wait)],
                          capture_output=True, text=True, env=env, timeout=120)  # fmt: skip
    return proc, time.monotonic() - t0


@pytest.mark.integration
@pytest.mark.parametrize(("signum", "code", "how"), [("SIGTERM", 143, "terminated (SIGTERM)"),
                                                      ("SIGINT", 130, "interrupted")])  # fmt: skip
def test_a_signal_in_an_import_that_pyarrow_swallows_still_stops_the_command(
    tmp_path: Path, signum: str, code: int, how: str
) -> None:
    out = tmp_path / "out.kdb"
    proc, took = _command(signum, out, wait=30.0)
    assert proc.returncode == code, proc.stderr
    assert proc.stderr == f"kino ingest: {how}; nothing was written to {out}\n"
    assert not out.exists() and took < 25  # raised once the import was over, not at the end


@pytest.mark.integration
def test_a_signal_put_off_until_the_command_ended_is_not_a_success(tmp_path: Path) -> None:
    out = tmp_path / "out.kdb"
    proc, _ = _command("SIGTERM", out, wait=0.0)  # done before the signal is sent again, as a rule
    assert proc.returncode == 143, proc.stderr
    # On a busy machine the signal sent again may land while the file is written instead.
    assert proc.stderr in (
        f"kino ingest: terminated (SIGTERM); {out} was written before the interruption\n",
        f"kino ingest: terminated (SIGTERM); nothing was written to {out}\n",
    ), proc.stderr
