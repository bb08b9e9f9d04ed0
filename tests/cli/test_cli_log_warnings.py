"""Warnings the library logs print as kino's own: one ``warning: ...`` line each on stderr."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest


def _record(level: int, message: str) -> logging.LogRecord:
    return logging.LogRecord("kinodb.ingest", level, __file__, 1, message, None, None)


@pytest.mark.parametrize(
    ("prefix", "level", "message", "line"),
    [
        ("", logging.WARNING, "a.hdf5: odd", "warning: a.hdf5: odd"),
        ("", logging.WARNING, "warning: said already", "warning: said already"),
        ("", logging.ERROR, "gone", "error: gone"),
        ("", logging.DEBUG, "detail", "detail"),
        ("kino-serve: ", logging.WARNING, "slow", "kino-serve: warning: slow"),
        ("kino-serve: ", logging.WARNING, "warning: slow", "kino-serve: warning: slow"),
    ],
)
def test_log_lines_carry_their_level(prefix: str, level: int, message: str, line: str) -> None:
    from kinodb._cli._errors import _Prefixed

    assert _Prefixed("%(message)s", prefix=prefix).format(_record(level, message)) == line


@pytest.mark.integration
def test_a_logged_ingest_warning_prints_with_the_prefix(tmp_path: Path) -> None:
    h5py = pytest.importorskip("h5py")
    src = tmp_path / "robo.hdf5"
    with h5py.File(src, "w") as f:
        f.create_group("data").attrs["env_args"] = "{not json"  # logged: kept as text
        for d in range(2):
            f[f"data/demo_{d}/actions"] = np.zeros((4, 7))
            f[f"data/demo_{d}/obs/state"] = np.zeros((4, 3))
    run = subprocess.run(
        [sys.executable, "-m", "kinodb._cli.main", "ingest", str(src), "-o", str(tmp_path / "o.kdb"), "-q"],
        capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    lines = run.stderr.splitlines()
    assert lines, "the malformed env_args attribute was not reported"
    assert all(line.startswith("warning: ") and not line.startswith("warning: warning:") for line in lines), (
        lines
    )
    assert f"warning: {src}: data attribute env_args is not JSON" in run.stderr
