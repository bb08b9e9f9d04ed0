"""The end-to-end example (the README's demo runs it): record, ingest, mix, train, deploy, record."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import kinodb
from kinodb.synthetic import create_test

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "end_to_end.py"


@pytest.mark.integration
def test_end_to_end_example_runs_and_leaves_its_files(tmp_path: Path) -> None:
    out = tmp_path / "e2e"
    proc = subprocess.run(
        [sys.executable, str(EXAMPLE), str(out), "--episodes", "8", "--epochs", "3"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for step in range(1, 9):
        assert f"== {step}." in proc.stdout
    names = {p.name for p in out.iterdir()}
    assert names >= {"reach_robomimic.hdf5", "reach_lerobot", "reach_robomimic.kdb", "reach_lerobot.kdb",
                     "reach.kinfer", "rollouts.kdb", "telemetry.ndjson", "from_log.kdb"}  # fmt: skip
    with kinodb.open(out / "rollouts.kdb") as db:
        assert len(db) == 1 and db.read_array(0, "actions").shape[1] == 7
    with kinodb.open(out / "reach_robomimic.kdb") as a, kinodb.open(out / "reach_lerobot.kdb") as b:
        assert len(a) == len(b) == 8


@pytest.mark.integration
def test_serve_example_reads_over_grpc_and_stops_cleanly(tmp_path: Path) -> None:
    path = tmp_path / "demo.kdb"
    create_test(path, 20, 30)
    example = EXAMPLE.parent / "serve_and_read.py"
    proc = subprocess.run(
        [sys.executable, str(example), str(path)], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "server_info: 20 episodes, 600 frames" in proc.stdout
    assert "KinoRemoteDataset through a DataLoader: 4 batches of (128, 8, 7)" in proc.stdout
    assert "exit code 0" in proc.stdout


@pytest.mark.integration
def test_cross_robot_example_trains_on_two_robots_by_weight(tmp_path: Path) -> None:
    from _factories import write_episodes

    a, b = tmp_path / "a.kdb", tmp_path / "b.kdb"
    write_episodes(a, [40, 50, 60], action_dim=7, state_dim=8, cameras={"image_0": (32, 40, 3)}, codec="jpeg")
    write_episodes(b, [20], action_dim=14, state_dim=16, cameras={"cam_high": (48, 64, 3)}, codec="png")
    proc = subprocess.run(
        [sys.executable, str(EXAMPLE.parent / "cross_robot.py"), str(a), "image_0", str(b), "cam_high",
         "--steps", "4"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "frames (32, 2, 3, 64, 64)" in proc.stdout
    assert "windows drawn per robot: [64, 64] (weights 1:1; windows held: [150, 20])" in proc.stdout
