"""Spawned DataLoader workers of the local datasets exit cleanly when a loop leaves early."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from _factories import write_episodes

pytestmark = pytest.mark.skipif(
    not os.path.isdir("/dev/shm"), reason="checks what workers leave in /dev/shm (Linux)"
)

_EARLY_EXIT = """
import os, sys
import kinodb
from torch.utils.data import DataLoader
from kinodb.torch import KinoFrameDataset, MixtureSampler, pad_collate

def report_pid(worker_id):
    print("worker", os.getpid(), flush=True)

if __name__ == "__main__":
    d = sys.argv[1]
    mix = kinodb.Mixture({f"{d}/a.kdb": 2, f"{d}/b.kdb": 1, f"{d}/c.kdb": 1}, seed=0)
    ds = KinoFrameDataset(mix, obs_horizon=2, action_horizon=8, image_size=(96, 96),
                          image_key={"front": ["image_0", "cam_high", "agentview_rgb"]})
    for epoch in range(2):
        loader = DataLoader(ds, batch_size=64, sampler=MixtureSampler(ds, num_samples=2000, seed=epoch),
                            collate_fn=pad_collate, num_workers=2, multiprocessing_context="spawn",
                            worker_init_fn=report_pid)
        for i, batch in enumerate(loader):
            if i == 2:
                break  # leave the epoch: the workers exit with batches of frames still being handed over
        del loader
        print("epoch", epoch, flush=True)
"""


def test_leaving_a_mixture_of_image_windows_early_exits_spawned_workers_cleanly(tmp_path: Path) -> None:
    # Three robots with differently named cameras and widths: 7 MB of float32 frames per batch.
    write_episodes(tmp_path / "a.kdb", [60] * 4, action_dim=7, state_dim=5,
                   cameras={"image_0": (128, 128, 3)}, codec="jpeg", seed=0)  # fmt: skip
    write_episodes(tmp_path / "b.kdb", [60] * 4, action_dim=26, state_dim=9,
                   cameras={"cam_high": (96, 128, 3)}, codec="jpeg", seed=1)  # fmt: skip
    write_episodes(tmp_path / "c.kdb", [60] * 4, action_dim=7, state_dim=8,
                   cameras={"agentview_rgb": (64, 64, 3)}, codec="png", seed=2)  # fmt: skip
    script = tmp_path / "early.py"
    script.write_text(_EARLY_EXIT)
    before = set(os.listdir("/dev/shm"))
    run = subprocess.run(
        [sys.executable, str(script), str(tmp_path)], capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert [line for line in lines if line.startswith("epoch")] == [f"epoch {k}" for k in range(2)]
    pids = [line.split()[1] for line in lines if line.startswith("worker")]
    assert len(pids) == 4
    # A worker that ended with SIGABRT is reported by the DataLoader that shut it down.
    assert "terminate called" not in run.stderr and "Aborted" not in run.stderr, run.stderr
    left = sorted(
        name
        for name in set(os.listdir("/dev/shm")) - before
        if "kinodb" in name or any(f"_{pid}_" in name for pid in pids)
    )
    assert left == []
