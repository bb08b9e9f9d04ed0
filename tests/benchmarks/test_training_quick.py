"""benchmarks/training.py end to end on a tiny set: the kinodb runs, and the peer rows where installed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "training.py"
FIELDS = {"dataset", "policy", "loader", "seed", "init_s", "data_s", "compute_s", "total_s", "epoch_losses"}
TINY = ["--quick", "--datasets", "pusht", "--policies", "mlp", "--epochs", "2", "--samples", "32",
        "--batch-size", "16", "--check-batches", "2"]  # fmt: skip

pytestmark = pytest.mark.slow


def run_script(tmp_path: Path, *extra: str) -> dict[str, Any]:
    out = tmp_path / "training.json"
    cmd = [
        sys.executable,
        str(SCRIPT),
        *TINY,
        "--data-dir",
        str(tmp_path / "data"),
        "--out",
        str(out),
        *extra,
    ]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    result: dict[str, Any] = json.loads(out.read_text())
    return result


def peer_missing() -> str | None:
    """Why the LeRobot peer cannot run in this interpreter, or None (asked in a child process:
    making the peers importable changes ``sys.path`` and the environment)."""
    probe = (
        "import sys; sys.path.insert(0, 'benchmarks'); import _peers; print(_peers.available()['lerobot'])"
    )
    proc = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    if proc.returncode != 0 or proc.stdout.strip().splitlines()[-1:] == ["None"]:
        return f"lerobot is not importable by {sys.executable} (benchmarks/setup_peers.sh builds .venv-bench with it)"
    return None


def test_kinodb_only_writes_one_record_per_run(tmp_path: Path) -> None:
    result = run_script(tmp_path, "--kinodb-only", "--seeds", "42,123")
    runs = result["runs"]
    assert sorted((r["loader"], r["seed"]) for r in runs) == [
        ("kinodb-jpeg", 42), ("kinodb-jpeg", 123), ("kinodb-png", 42), ("kinodb-png", 123),
        ("kinodb-raw", 42), ("kinodb-raw", 123),
    ]  # fmt: skip
    for r in runs:
        assert set(r) >= FIELDS, FIELDS - set(r)
        assert (r["dataset"], r["policy"], r["native"]) == ("pusht", "mlp", False)
        assert len(r["epoch_losses"]) == 2 and all(loss > 0 for loss in r["epoch_losses"])
        assert r["steps"] == 4 and len(r["step_losses"]) == 4  # 2 epochs x 32 windows / 16
        assert 0 <= r["init_s"] <= r["total_s"]
        assert r["data_s"] > 0 and r["compute_s"] > 0
        assert r["init_s"] + r["data_s"] + r["compute_s"] <= r["total_s"] * 1.001
    # Same seed, same lossless tensors: the PNG runs are reproducible; seeds differ.
    png = {r["seed"]: r for r in runs if r["loader"] == "kinodb-png"}
    assert png[42]["step_losses"] != png[123]["step_losses"]
    raw = {r["seed"]: r for r in runs if r["loader"] == "kinodb-raw"}
    assert raw[42]["step_losses"] == png[42]["step_losses"]  # both lossless: the same tensors
    again = run_script(tmp_path, "--kinodb-only", "--seeds", "42")
    same = next(r for r in again["runs"] if r["loader"] == "kinodb-png")
    assert same["step_losses"] == png[42]["step_losses"]
    assert result["loss_checks"] == [] and all("native" not in row for row in result["summary"])


def test_peer_rows_have_identical_losses(tmp_path: Path) -> None:
    reason = peer_missing()
    if reason is not None:
        pytest.skip(reason)
    result = run_script(tmp_path)
    loaders = {r["loader"] for r in result["runs"]}
    assert loaders == {"lerobot", "kinodb-png", "kinodb-raw", "kinodb-jpeg"}
    for lossless in ("kinodb-png", "kinodb-raw"):
        assert result["sets"]["pusht"]["exactness_check"][lossless]["identical"]
        checks = [c for c in result["loss_checks"] if c["loader"] == lossless]
        assert checks and all(c["identical"] and c["max_abs_diff"] == 0.0 for c in checks)
    row = next(r for r in result["summary"] if r["loader"] == "kinodb-png")
    assert row["native"] == "lerobot" and row["total_speedup_mean"] > 0
