"""export_torch: PyTorch -> .kinfer -> load -> step parity, with the carry threaded."""

from __future__ import annotations

import io
import json
import logging
import tarfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="export needs torch")
onnx = pytest.importorskip("onnx")

from kinodb.infer import CallableProvider, InferError, Runner, export_torch, load_model  # noqa: E402
from kinodb.infer._package import pack, package_metadata  # noqa: E402

JOINTS = tuple(f"joint_{i}" for i in range(6))
COMMANDS = ("vx", "vy", "wz")


class GruPolicy(torch.nn.Module):  # type: ignore[misc,name-defined]
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


class Init(torch.nn.Module):  # type: ignore[misc,name-defined]
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


def test_export_on_torch_before_2_5(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """torch.onnx.export had no ``dynamo`` argument before torch 2.5 (TorchScript was the default)."""
    real = torch.onnx.export
    calls = []

    def export_before_2_5(model: Any, args: Any, f: Any, *, input_names: Any = None, output_names: Any = None,
                          opset_version: Any = None, do_constant_folding: bool = True) -> None:  # fmt: skip
        calls.append(opset_version)
        real(model, args, f, input_names=input_names, output_names=output_names, opset_version=opset_version,
             do_constant_folding=do_constant_folding, dynamo=False)  # fmt: skip

    monkeypatch.setattr(torch.onnx, "export", export_before_2_5)
    path = tmp_path / "old.kinfer"
    export_torch(GruPolicy(), path, joint_names=JOINTS, command_names=COMMANDS, carry_shape=(16,))
    assert calls and load_model(path).signature.joint_names == JOINTS


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
    class Branchy(torch.nn.Module):  # type: ignore[misc,name-defined]
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


class IgnoresOne(torch.nn.Module):  # type: ignore[misc,name-defined]
    """A first policy: three step arguments, of which ``ignored`` is never read."""

    def __init__(self, ignored: str) -> None:
        super().__init__()
        self.ignored = ignored
        self.mix = torch.nn.Linear(3 + 2, 3 + 2)

    def forward(self, joint_angles: Any, joint_angular_velocities: Any, carry: Any) -> tuple[Any, Any]:
        q = torch.zeros(3) if self.ignored == "joint_angles" else joint_angles
        dq = torch.zeros(3) if self.ignored == "joint_angular_velocities" else joint_angular_velocities
        c = torch.zeros(2) if self.ignored == "carry" else carry
        y = self.mix(torch.cat([q + 0.5 * dq, c]))
        return y[:3], torch.tanh(y[3:])


STEP_ARGS = ("joint_angles", "joint_angular_velocities", "carry")


def _step_inputs(path: Path) -> list[tuple[str, list[int]]]:
    with tarfile.open(path) as tar:
        member = tar.extractfile("step_fn.onnx")
        assert member is not None
        graph = onnx.load_from_string(member.read()).graph
    return [(i.name, [d.dim_value for d in i.type.tensor_type.shape.dim]) for i in graph.input]


@pytest.mark.parametrize("ignored", STEP_ARGS)
def test_an_argument_the_policy_never_reads_stays_a_step_input(
    tmp_path: Path, ignored: str, caplog: pytest.LogCaptureFixture
) -> None:
    torch.manual_seed(1)
    policy = IgnoresOne(ignored).eval()
    path = tmp_path / "first.kinfer"
    with caplog.at_level(logging.WARNING, logger="kinodb.infer.export"):
        report = export_torch(policy, path, joint_names=("a", "b", "c"), carry_shape=(2,))
    assert report.unused_inputs == (ignored,) and report.max_abs_diff <= 1e-5
    assert f"['{ignored}'] are never read" in caplog.text
    assert _step_inputs(path) == [("joint_angles", [3]), ("joint_angular_velocities", [3]), ("carry", [2])]
    model = load_model(path)
    assert model.signature.input_names == STEP_ARGS
    assert report.signature == model.signature
    rng = np.random.default_rng(3)
    with torch.no_grad():
        carry = torch.zeros(2)
        for _ in range(5):
            obs = {n: rng.normal(size=3).astype(np.float32) for n in STEP_ARGS[:2]}
            want, carry = policy(*(torch.from_numpy(obs[n]) for n in STEP_ARGS[:2]), carry)
            np.testing.assert_allclose(model.step(obs), want.numpy(), atol=1e-5)
            np.testing.assert_allclose(model.carry, carry.numpy(), atol=1e-5)
    if ignored != "carry":  # no node reads it: even NaN leaves the action as zeros do
        model.reset()
        plain = model.step({**obs, ignored: np.zeros(3, np.float32)})
        model.reset()
        np.testing.assert_array_equal(model.step({**obs, ignored: np.full(3, np.nan, np.float32)}), plain)
        with pytest.raises(InferError, match=f"missing input '{ignored}'"):
            model.step({n: v for n, v in obs.items() if n != ignored})


def test_a_policy_that_ignores_velocities_runs_in_the_loop(tmp_path: Path) -> None:
    torch.manual_seed(2)
    policy = IgnoresOne("joint_angular_velocities").eval()
    path = tmp_path / "first.kinfer"
    export_torch(policy, path, joint_names=("a", "b", "c"), carry_shape=(2,))
    angles = [np.full(3, 0.1 * k, np.float32) for k in range(6)]
    asked: list[tuple[str, ...]] = []

    def velocities(names: Any) -> np.ndarray:
        asked.append(tuple(names))
        return np.zeros(3, np.float32)

    actions: list[np.ndarray] = []
    provider = CallableProvider(
        joint_angles=lambda names: angles[len(actions)], joint_angular_velocities=velocities,
        take_action=lambda names, action: actions.append(action),
    )  # fmt: skip
    stats = Runner(load_model(path), provider, rate_hz=500, max_steps=5).run()
    assert stats["steps"] == 5 and asked == [("a", "b", "c")] * 5
    with torch.no_grad():
        carry = torch.zeros(2)
        for k in range(5):
            want, carry = policy(torch.from_numpy(angles[k]), torch.zeros(3), carry)
            np.testing.assert_allclose(actions[k], want.numpy(), atol=1e-5)


def test_a_package_whose_graph_dropped_an_argument_loads_without_it(tmp_path: Path) -> None:
    # What torch.onnx.export alone writes (and packages exported that way hold): no input for
    # an argument the function never reads. The runtime feeds the graph's inputs only.
    policy = IgnoresOne("joint_angular_velocities").eval()
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter announces its deprecation
        torch.onnx.export(policy, (torch.zeros(3), torch.zeros(3), torch.zeros(2)), buf, dynamo=False,
                          input_names=list(STEP_ARGS), output_names=["action", "next_carry"], opset_version=17)  # fmt: skip
    step = onnx.load_from_string(buf.getvalue())
    assert [i.name for i in step.graph.input] == ["joint_angles", "carry"]
    zeros = onnx.helper.make_graph(
        [onnx.helper.make_node("Constant", [], ["carry"], value=onnx.numpy_helper.from_array(np.zeros(2, np.float32)))],
        "init_fn", [], [onnx.helper.make_tensor_value_info("carry", onnx.TensorProto.FLOAT, [2])],
    )  # fmt: skip
    init = onnx.helper.make_model(zeros, opset_imports=[onnx.helper.make_opsetid("", 17)])
    init.ir_version = 8
    path = tmp_path / "dropped.kinfer"
    path.write_bytes(
        pack(init.SerializeToString(), buf.getvalue(), package_metadata(("a", "b", "c"), (), (2,)))
    )
    model = load_model(path)
    assert model.signature.observation_names == ("joint_angles",)
    obs = {"joint_angles": np.ones(3, np.float32), "joint_angular_velocities": np.ones(3, np.float32)}
    with torch.no_grad():
        want, _ = policy(torch.ones(3), torch.ones(3), torch.zeros(2))
    np.testing.assert_allclose(model.step(obs), want.numpy(), atol=1e-5)
    provider = CallableProvider(joint_angles=lambda names: np.ones(3, np.float32))
    assert Runner(model, provider, rate_hz=500, max_steps=3).run()["steps"] == 3


def test_a_step_that_reads_none_of_its_arguments(tmp_path: Path) -> None:
    def step(joint_angles: Any, carry: Any) -> tuple[Any, Any]:
        return torch.full((2,), 0.25), torch.ones(1)

    report = export_torch(step, tmp_path / "const.kinfer", joint_names=("a", "b"), carry_shape=(1,))
    assert report.unused_inputs == ("joint_angles", "carry")
    model = load_model(report.path)
    assert model.signature.input_names == ("joint_angles", "carry")
    np.testing.assert_array_equal(model.step({"joint_angles": np.zeros(2, np.float32)}), [0.25, 0.25])
    np.testing.assert_array_equal(model.carry, [1.0])


class QuatPolicy(torch.nn.Module):  # type: ignore[misc,name-defined]
    """A K-Bot-era policy reading the orientation quaternion and the initial heading."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(3 + 4 + 1 + 2, 3)

    def forward(self, joint_angles: Any, quaternion: Any, initial_heading: Any, command: Any,
                carry: Any) -> tuple[Any, Any]:  # fmt: skip
        return self.lin(torch.cat([joint_angles, quaternion, initial_heading, command])), carry + 1


def test_quaternion_and_initial_heading_are_refused_for_kinfer_0_6(tmp_path: Path) -> None:
    path = tmp_path / "quat.kinfer"
    with pytest.raises(InferError) as err:
        export_torch(
            QuatPolicy(), path, joint_names=("a", "b", "c"), command_names=("vx", "vy"), carry_shape=(2,)
        )
    text = str(err.value)
    assert "['quaternion', 'initial_heading']" in text and "kinfer 0.6.1" in text
    assert "projected_gravity" in text and "legacy_inputs=True" in text
    assert not path.exists()


def test_legacy_inputs_write_a_0_5_package(tmp_path: Path) -> None:
    path = tmp_path / "quat.kinfer"
    report = export_torch(QuatPolicy(), path, joint_names=("a", "b", "c"), command_names=("vx", "vy"),
                          carry_shape=(2,), legacy_inputs=True, checks=2)  # fmt: skip
    with tarfile.open(path) as tar:
        member = tar.extractfile("metadata.json")
        assert member is not None
        meta = json.loads(member.read())
    assert meta == {"joint_names": ["a", "b", "c"], "num_commands": 2, "carry_size": [2]}
    model = load_model(path)
    assert model.signature.generation == report.signature.generation == "0.5"
    assert model.signature.command_names == ("command_0", "command_1")
    assert model.signature.input_names == (
        "joint_angles",
        "quaternion",
        "initial_heading",
        "command",
        "carry",
    )


def test_a_torchscript_function_exports_like_kinfers_export_fn(tmp_path: Path) -> None:
    def fn(
        joint_angles: torch.Tensor, command: torch.Tensor, carry: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return joint_angles * 2.0 + command.sum(), carry * 0.5 + joint_angles.sum()

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit.script announces its deprecation
        step = torch.jit.script(fn)

    assert type(step).__name__ == "ScriptFunction"
    path = tmp_path / "scripted.kinfer"
    report = export_torch(
        step, path, joint_names=("a", "b", "c"), command_names=("vx",), carry_shape=(4,), checks=3
    )
    assert report.signature.input_names == ("joint_angles", "command", "carry")
    assert report.max_abs_diff <= 1e-5
    model = load_model(path)
    a = model.step({"joint_angles": np.ones(3, np.float32), "command": np.float32([0.5])})
    np.testing.assert_allclose(a, [2.5, 2.5, 2.5])
    np.testing.assert_allclose(model.carry, np.full(4, 3.0))


class DropoutPolicy(torch.nn.Module):  # type: ignore[misc,name-defined]
    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Dropout(0.5), torch.nn.Linear(16, 6))

    def forward(self, joint_angles: Any, carry: Any) -> tuple[Any, Any]:
        return self.net(joint_angles), carry


def test_export_exports_eval_mode_and_gives_the_module_back_as_it_was(tmp_path: Path) -> None:
    policy = DropoutPolicy().train()
    policy.net[2].eval()  # a mix, as a partly frozen model has
    before = [m.training for m in policy.modules()]
    report = export_torch(policy, tmp_path / "p.kinfer", joint_names=JOINTS, carry_shape=(1,))
    assert report.max_abs_diff <= 1e-5  # dropout was off while tracing and checking
    assert [m.training for m in policy.modules()] == before == [True, True, True, True, False]


def test_a_function_over_trainable_parameters_says_how_to_export_it(tmp_path: Path) -> None:
    net = torch.nn.Linear(6, 6)

    def step(joint_angles: Any, carry: Any) -> tuple[Any, Any]:
        return net(joint_angles), carry

    with pytest.raises(
        InferError, match=r"pass the nn.Module itself, or call .requires_grad_\(False\)"
    ) as exc:
        export_torch(step, tmp_path / "f.kinfer", joint_names=JOINTS, carry_shape=(1,))
    assert len(str(exc.value)) < 800  # not the whole weight matrix
    assert not (tmp_path / "f.kinfer").exists()
    net.requires_grad_(False)
    export_torch(step, tmp_path / "f.kinfer", joint_names=JOINTS, carry_shape=(1,))


def test_an_output_in_a_missing_folder_is_named(tmp_path: Path) -> None:
    target = tmp_path / "nope" / "p.kinfer"
    with pytest.raises(InferError, match=r"p\.kinfer: the folder .*nope does not exist; create it first"):
        export_torch(DropoutPolicy(), target, joint_names=JOINTS, carry_shape=(1,))
    with pytest.raises(InferError, match="is a folder; give the path of the file to write"):
        export_torch(DropoutPolicy(), tmp_path, joint_names=JOINTS, carry_shape=(1,))
