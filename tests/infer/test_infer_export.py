"""export_torch: PyTorch -> .kinfer -> load -> step parity, with the carry threaded."""

from __future__ import annotations

import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="export needs torch")
onnx = pytest.importorskip("onnx")

from kinodb.infer import InferError, export_torch, load_model  # noqa: E402

JOINTS = tuple(f"joint_{i}" for i in range(6))
COMMANDS = ("vx", "vy", "wz")


class GruPolicy(torch.nn.Module):  # type: ignore[misc]
    """An MLP with a GRU-style gated carry, like the reference's anchor policy (smaller)."""

    def __init__(self, joints: int = 6, commands: int = 3, hidden: int = 32, carry: int = 16) -> None:
        super().__init__()
        n_in = 2 * joints + 3 + 3 + commands + carry
        self.body = torch.nn.Sequential(
            torch.nn.Linear(n_in, hidden), torch.nn.ELU(), torch.nn.Linear(hidden, hidden)
        )
        self.action = torch.nn.Linear(hidden, joints)
        self.z = torch.nn.Linear(hidden + carry, carry)
        self.r = torch.nn.Linear(hidden + carry, carry)
        self.w = torch.nn.Linear(hidden, carry)
        self.u = torch.nn.Linear(carry, carry, bias=False)

    def forward(self, joint_angles: Any, joint_angular_velocities: Any, projected_gravity: Any,
                gyroscope: Any, command: Any, carry: Any) -> tuple[Any, Any]:  # fmt: skip
        x = torch.cat([joint_angles, joint_angular_velocities, projected_gravity, gyroscope, command, carry])
        h = torch.nn.functional.elu(self.body(x))
        hc = torch.cat([h, carry])
        z, r = torch.sigmoid(self.z(hc)), torch.sigmoid(self.r(hc))
        n = torch.tanh(self.w(h) + self.u(r * carry))
        return self.action(h), (1 - z) * n + z * carry


class Init(torch.nn.Module):  # type: ignore[misc]
    def __init__(self) -> None:
        super().__init__()
        self.c = torch.nn.Parameter(torch.linspace(-1, 1, 16))

    def forward(self) -> Any:
        return torch.tanh(self.c)


def _obs(rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {
        "joint_angles": rng.normal(size=6).astype(np.float32),
        "joint_angular_velocities": rng.normal(size=6).astype(np.float32),
        "projected_gravity": rng.normal(size=3).astype(np.float32),
        "gyroscope": rng.normal(size=3).astype(np.float32),
        "command": rng.normal(size=3).astype(np.float32),
    }


@pytest.mark.parametrize("with_init", [False, True])
def test_export_load_step_matches_torch_over_100_steps(tmp_path: Path, with_init: bool) -> None:
    torch.manual_seed(0)
    policy = GruPolicy().eval()
    init = Init() if with_init else None
    path = tmp_path / "gru.kinfer"
    report = export_torch(policy, path, joint_names=JOINTS, command_names=COMMANDS, carry_shape=(16,),
                          init_module=init)  # fmt: skip
    assert report.max_abs_diff <= 1e-5
    assert report.opset >= 17 and report.ir_version <= 10
    model = load_model(path)
    assert model.signature.generation == "0.6"
    assert model.signature.joint_names == JOINTS and model.signature.command_names == COMMANDS
    assert model.signature.observation_names == (
        "joint_angles",
        "joint_angular_velocities",
        "projected_gravity",
        "gyroscope",
        "command",
    )
    rng = np.random.default_rng(7)
    with torch.no_grad():
        carry = init() if init is not None else torch.zeros(16)
        np.testing.assert_allclose(model.carry, carry.numpy(), atol=1e-6)
        worst = 0.0
        for _ in range(100):
            obs = _obs(rng)
            want, carry = policy(*(torch.from_numpy(obs[k]) for k in obs), carry)
            got = model.step(obs)
            worst = max(worst, float(np.abs(got - want.numpy()).max()))
        assert worst <= 1e-5
        np.testing.assert_allclose(model.carry, carry.numpy(), atol=1e-5)


def test_zero_init_and_member_layout(tmp_path: Path) -> None:
    path = tmp_path / "p.kinfer"
    export_torch(GruPolicy(), path, joint_names=JOINTS, command_names=COMMANDS, carry_shape=(16,))
    with tarfile.open(path) as tar:
        assert tar.getnames() == ["init_fn.onnx", "step_fn.onnx", "metadata.json"]
        init = tar.extractfile("init_fn.onnx")
        assert init is not None
        proto = onnx.load_from_string(init.read())
    assert proto.ir_version <= 10 and not proto.graph.input
    np.testing.assert_array_equal(load_model(path).carry, np.zeros(16, np.float32))


def test_plain_function_with_a_multi_dimensional_carry(tmp_path: Path) -> None:
    def step(joint_angles: Any, carry: Any) -> tuple[Any, Any]:
        return joint_angles * 2 + carry[0, :3].sum(), carry * 0.5 + joint_angles.sum()

    path = tmp_path / "fn.kinfer"
    export_torch(step, path, joint_names=("a", "b", "c"), carry_shape=(2, 4))
    model = load_model(path)
    assert model.signature.carry_shape == (2, 4) and model.signature.command_names == ()
    a = model.step({"joint_angles": np.ones(3, np.float32)})
    np.testing.assert_allclose(a, [2, 2, 2])
    np.testing.assert_allclose(model.carry, np.full((2, 4), 3.0))


def test_unknown_argument_is_refused(tmp_path: Path) -> None:
    def step(joint_positions: Any, carry: Any) -> tuple[Any, Any]:
        return joint_positions, carry

    with pytest.raises(InferError, match=r"\['joint_positions'\] are not step inputs"):
        export_torch(step, tmp_path / "x.kinfer", joint_names=("a",), carry_shape=(1,))
    assert not (tmp_path / "x.kinfer").exists()


def test_command_without_command_names_is_refused(tmp_path: Path) -> None:
    def step(command: Any, carry: Any) -> tuple[Any, Any]:
        return command, carry

    with pytest.raises(InferError, match="command_names is empty"):
        export_torch(step, tmp_path / "x.kinfer", joint_names=("a",), carry_shape=(1,))


def test_trace_that_disagrees_with_eager_writes_nothing(tmp_path: Path) -> None:
    class Branchy(torch.nn.Module):  # type: ignore[misc]
        def forward(self, joint_angles: Any, carry: Any) -> tuple[Any, Any]:
            if bool(joint_angles.sum() > 0):  # data-dependent: tracing freezes one branch
                return joint_angles + 1, carry
            return joint_angles - 1, carry

    path = tmp_path / "branchy.kinfer"
    with pytest.raises(InferError, match=r"disagree.*nothing was written"):
        export_torch(Branchy(), path, joint_names=("a", "b", "c", "d"), carry_shape=(2,), checks=16)
    assert not path.exists()


def test_wrong_action_width_is_refused(tmp_path: Path) -> None:
    def step(joint_angles: Any, carry: Any) -> tuple[Any, Any]:
        return joint_angles[:2], carry

    with pytest.raises(InferError, match=r"output 0 \(action\) has shape \[2\]; expected \[4\]"):
        export_torch(step, tmp_path / "x.kinfer", joint_names=("a", "b", "c", "d"), carry_shape=(1,))
