"""An ingested kinfer log replays its policy whatever numbers the policy's joints carry: the
log's ``joint_0``, ... placeholders name no joints unless they are the policy's own."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from _kinfer_packages import MakePackage

import kinodb
from kinodb.infer import CallableProvider, Runner, load_model, replay
from kinodb.ingest import ingest

NUMBERED = {
    "one_based": ("joint_1", "joint_2", "joint_3", "joint_4"),  # as a Kinova URDF names them
    "reversed": ("joint_3", "joint_2", "joint_1", "joint_0"),  # the placeholders, in another order
    "motor_ids": ("joint_11", "joint_12", "joint_13", "joint_14"),
}


@pytest.mark.parametrize("joints", NUMBERED.values(), ids=NUMBERED.keys())
def test_an_ingested_log_of_a_numbered_policy_replays_by_position(
    make_package: MakePackage, tmp_path: Path, joints: tuple[str, ...], kino: Callable[..., int],
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    built = make_package(
        inputs=("joint_angles", "joint_angular_velocities", "carry"), joints=joints, commands=()
    )
    model = load_model(built.path)
    rng = np.random.default_rng(7)
    log, data = tmp_path / "run.ndjson", tmp_path / "run.kdb"
    provider = CallableProvider(joint_angles=lambda names: rng.standard_normal(4),
                                joint_angular_velocities=lambda names: rng.standard_normal(4))  # fmt: skip
    Runner(model, provider, rate_hz=500, max_steps=25, log_path=log).run()
    ingest(log, data, format="kinfer-ndjson")
    with kinodb.open(data) as db:
        assert list(db.schema()["actions"]["names"]) == [f"joint_{i}" for i in range(4)]

    report = replay(model, data)
    assert report.frames == 25 and report.joint_names == joints
    assert float(report.max_abs.max()) == 0.0  # fed and scored as logged: joint i is column i
    capsys.readouterr()
    assert kino("infer", "replay", built.path, data, "--json") == 0
    assert "another order" not in capsys.readouterr().err
