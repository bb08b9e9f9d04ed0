"""``benchmarks/collate_mixed.py --quick`` writes collate_mixed_quick.json and keeps the recorded
collate_mixed.json; ``--out`` chooses the path."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch", reason="collate_mixed.py times kinodb.torch's pad_collate")

ROOT = Path(__file__).resolve().parents[2]


def test_quick_run_writes_its_own_json_and_out_chooses_the_path(tmp_path: Path) -> None:
    bench = tmp_path / "benchmarks"  # a copy: the project's own benchmarks/results/ is never touched
    bench.mkdir()
    shutil.copy(ROOT / "benchmarks" / "collate_mixed.py", bench)
    results = bench / "results"
    results.mkdir()
    recorded = results / "collate_mixed.json"
    recorded.write_text('{"recorded": true}')

    def run(*args: str) -> None:
        proc = subprocess.run([sys.executable, str(bench / "collate_mixed.py"), "--quick", *args],
                              cwd=tmp_path, capture_output=True, text=True, timeout=300)  # fmt: skip
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
        assert "x faster" in proc.stdout

    run()
    assert json.loads(recorded.read_text()) == {"recorded": True}
    quick = json.loads((results / "collate_mixed_quick.json").read_text())
    assert quick["quick"] is True and quick["batches"] == len(quick["seconds"]["per sample"]) == 4
    assert quick["per_sample_over_whole_arrays"] == pytest.approx(
        quick["median_ms"]["per sample"] / quick["median_ms"]["whole arrays"]
    )
    elsewhere = tmp_path / "elsewhere" / "c.json"
    run("--out", str(elsewhere))
    assert json.loads(elsewhere.read_text())["quick"] is True
