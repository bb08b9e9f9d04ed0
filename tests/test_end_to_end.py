"""The end-to-end example (the README's demo runs it): record, ingest, mix, train, deploy, record."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import kinodb
from kinodb.synthetic import create_test

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "end_to_end.py"
SAMPLES = Path(__file__).resolve().parents[2] / "shared" / "samples"
BRIDGE = SAMPLES / "octo_bridge_rlds" / "bridge_dataset" / "1.0.0"
G1 = SAMPLES / "unitree_g1_lerobot_v21"


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


@pytest.mark.integration
@pytest.mark.skipif(
    not (BRIDGE / "dataset_info.json").is_file() or not (G1 / "meta" / "info.json").is_file(),
    reason=f"the real Bridge and G1 samples are not under {SAMPLES} (see shared/samples/SOURCES.md)",
)
def test_cross_robot_example_on_the_real_bridge_and_g1_samples(tmp_path: Path) -> None:
    """Two real robots, ingested from their own formats, trained on together: WidowX (RLDS,
    actions 7, 256x256 JPEG at 5 fps) and Unitree G1 (LeRobot v2.1, actions 26, AV1 at 30 fps)."""
    bridge, g1 = tmp_path / "bridge.kdb", tmp_path / "g1.kdb"
    kinodb.ingest.ingest(BRIDGE, bridge)
    kinodb.ingest.ingest(G1, g1, episodes=[29])  # the one episode whose data the sample holds
    with kinodb.open(bridge) as a, kinodb.open(g1) as b:
        assert (a.read_meta(0)["action_dim"], b.read_meta(0)["action_dim"]) == (7, 26)
    proc = subprocess.run(
        [sys.executable, str(EXAMPLE.parent / "cross_robot.py"), str(bridge), "image_0", str(g1), "cam_high",
         "--steps", "4"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.count("frames (32, 2, 3, 64, 64)  actions (32, 8, 26)") == 4
    assert "windows drawn per robot: [64, 64] (weights 1:1; windows held: [250, 221])" in proc.stdout
    losses = [float(line.split("loss ")[1].split()[0]) for line in proc.stdout.splitlines() if "loss" in line]
    assert len(losses) == 4 and all(np.isfinite(losses))
