"""A scalar carry (``carry_size: []``, an init_fn returning a 0-d tensor; legal in kinfer 0.6)
keeps its shape through load, init, step, the run loop's log and recording, and export."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from _kinfer_packages import MakePackage
from test_infer_runner import Served

import kinodb
from kinodb.infer import Runner, load_model, read_log


@pytest.mark.parametrize("generation", ["0.6", "0.5", "0.4", "onnx"])
def test_a_scalar_carry_loads_and_steps_as_a_0d_array(
    make_package: MakePackage, rng: np.random.Generator, generation: str
) -> None:
    built = make_package(generation, carry=())
    model = load_model(built.path)
    assert model.signature.carry_shape == () and model.signature.shape("carry") == ()
    assert "carry" in model.signature.input_names and "carry" not in model.signature.observation_names
    assert model.carry.shape == () and model.carry == built.initial
    carry = built.initial
    for _ in range(5):
        obs = built.random_obs(rng)
        want_action, carry = built.reference({**obs, "carry": carry})
        np.testing.assert_allclose(model.step(obs), want_action, rtol=1e-5, atol=1e-6)
        assert model.carry.shape == () and model.inputs()["carry"].shape == ()
        np.testing.assert_allclose(model.carry, carry, rtol=1e-5, atol=1e-6)
    assert model.init().shape == () and model.carry == built.initial
    assert "carry []" in repr(model)


def test_a_scalar_carry_runs_logs_and_records(make_package: MakePackage, tmp_path: Path) -> None:
    built = make_package(carry=())
    model = load_model(built.path)
    served = Served(built, 3)
    log, data = tmp_path / "run.ndjson", tmp_path / "rollouts.kdb"
    stats = Runner(model, served.provider, rate_hz=1000, max_steps=25, log_path=log, record_to=data).run()
    assert stats["steps"] == stats["log_lines"] == 25
    (run,) = read_log(log)
    np.testing.assert_array_equal(run["output"], np.stack(served.actions))
    assert "carry" not in run  # kinfer logs no carry
    with kinodb.open(data) as db:
        assert len(db) == 1 and db.read_meta(0)["num_frames"] == 25
    # The recorded steps replay with the carry threaded from the initial scalar carry.
    model.reset()
    for obs, action in zip(served.served, served.actions, strict=True):
        np.testing.assert_array_equal(model.step(obs), action)


def test_export_torch_writes_a_scalar_carry_package_that_loads(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch", reason="export needs torch")
    pytest.importorskip("onnx")
    from kinodb.infer import export_torch

    class Counter(torch.nn.Module):  # type: ignore[misc,name-defined]
        def forward(self, joint_angles: Any, carry: Any) -> tuple[Any, Any]:
            return joint_angles * carry, carry + 1

    class Start(torch.nn.Module):  # type: ignore[misc,name-defined]
        def forward(self) -> Any:
            return torch.tensor(2.0)

    path = tmp_path / "counter.kinfer"
    report = export_torch(Counter(), path, joint_names=("a", "b"), carry_shape=(), init_module=Start())
    assert report.signature.carry_shape == ()
    model = load_model(path)
    assert model.package.metadata["carry_size"] == [] and model.carry.shape == () and model.carry == 2.0
    for k in range(3):
        np.testing.assert_array_equal(model.step({"joint_angles": np.ones(2, np.float32)}), [2.0 + k] * 2)
    assert model.carry == 5.0
