"""A ``--quick`` run of a benchmark script writes NAME_quick.json and keeps the recorded NAME.json."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("script", "name"),
    [("bench_merge.py", "merge"), ("bench_kql.py", "kql"), ("bench_export_rlds.py", "export_rlds")],
)
def test_quick_run_keeps_the_recorded_result(script: str, name: str, tmp_path: Path) -> None:
    # A copy, so that the project's own benchmarks/results/ is never touched.
    bench = tmp_path / "benchmarks"
    shutil.copytree(
        ROOT / "benchmarks", bench, ignore=shutil.ignore_patterns("results", "data", ".data", "__pycache__")
    )
    results = bench / "results"
    results.mkdir()
    recorded = results / f"{name}.json"
    recorded.write_text('{"recorded": true}')
    proc = subprocess.run(
        [sys.executable, str(bench / script), "--quick"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert json.loads(recorded.read_text()) == {"recorded": True}
    assert json.loads((results / f"{name}_quick.json").read_text())["quick"] is True
