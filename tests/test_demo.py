"""The README's demo command (``make demo``, ``scripts/demo.sh``) runs through, in a folder of its own."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.prefix) / "bin"


@pytest.mark.skipif(
    not (BIN / "kino").is_file(), reason=f"needs kinodb installed in {sys.prefix} (its kino command)"
)
def test_the_demo_runs_through(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    env = {**os.environ, "VENV": sys.prefix, "KINODB_DEMO": str(out)}
    proc = subprocess.run(
        ["bash", str(ROOT / "scripts" / "demo.sh")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    # Every re-ingest it checks with --verify agrees with its source.
    checked = [line for line in log.splitlines() if line.startswith("verified ")]
    assert len(checked) >= 4 and all(line.endswith(": OK") for line in checked), checked
    for name in ("demo.kdb", "train.kdb", "franka_from_rlds.kdb", "pusht_again.kdb", "e2e/reach.kinfer"):
        assert (out / name).is_file(), name
    assert (out / "rlds" / "franka" / "1.0.0" / "dataset_info.json").is_file()
