"""Provider interfaces (kinodb's getters, kinfer 0.6.1's get_inputs) and replay by joint name."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from _kinfer_builders import IR_VERSION, init_graph, metadata_bytes, write_archive
from _kinfer_packages import Built, MakePackage
from onnx import TensorProto, checker, helper, numpy_helper

import kinodb
from kinodb.infer import (
    CallableProvider,
    InferError,
    KdbReplayProvider,
    ProviderMetadata,
    Runner,
    load_model,
    replay,
)

# -- kinfer 0.6.1's provider interface ----------------------------------------------------


class Kinfer061Provider:
    """A provider written against kinfer 0.6.1's ModelProviderABC: get_inputs, take_action(action, metadata)."""

    def __init__(self, built: Built, seed: int = 0) -> None:
        self.built = built
        self.rng = np.random.default_rng(seed)
        self.asked: list[list[str]] = []
        self.served: list[dict[str, np.ndarray]] = []
        self.actions: list[np.ndarray] = []
        self.metadata: list[Any] = []
        self.prefetched: list[tuple[list[str], Any]] = []

    def pre_fetch_inputs(self, input_types: list[str], metadata: Any) -> None:
        self.prefetched.append((list(input_types), metadata))

    def get_inputs(self, input_types: list[str], metadata: Any) -> dict[str, Any]:
        self.asked.append(list(input_types))
        obs = self.built.random_obs(self.rng)
        # kinfer converts element by element: float64 arrays and lists are accepted
        served = {
            n: obs[n].astype(np.float64) if k % 2 else obs[n].tolist() for k, n in enumerate(input_types)
        }
        self.served.append(obs)
        return served

    def take_action(self, action: np.ndarray, metadata: Any) -> None:
        self.actions.append(action)
        self.metadata.append(metadata)


def _expected_actions(built: Built, served: list[dict[str, np.ndarray]]) -> np.ndarray:
    carry, out = built.initial, []
    for obs in served:
        action, carry = built.reference({**obs, "carry": carry})
        out.append(action)
    return np.array(out)


def test_a_kinfer_0_6_1_provider_runs_through_get_inputs(make_package: MakePackage) -> None:
    built = make_package()
    provider = Kinfer061Provider(built)
    stats = Runner(load_model(built.path), provider, rate_hz=500, max_steps=12, prefetch_s=0.0005).run()
    assert stats["steps"] == 12
    names = [n for n in built.order if n != "carry"]
    assert provider.asked == [names] * 12  # carry is never requested
    assert len(provider.prefetched) == 12 and provider.prefetched[0][0] == names
    np.testing.assert_allclose(
        np.array(provider.actions), _expected_actions(built, provider.served), rtol=1e-5, atol=1e-6
    )
    meta = provider.metadata[0]
    assert isinstance(meta, ProviderMetadata) and provider.prefetched[0][1] is meta
    assert meta.joint_names == built.joints and meta.command_names == built.commands
    assert meta.carry_size == built.carry
    assert json.loads(meta.to_json()) == {
        "joint_names": list(built.joints),
        "command_names": list(built.commands),
        "carry_size": list(built.carry),
    }


def test_getters_with_kinfers_take_action_get_the_action(make_package: MakePackage) -> None:
    built = make_package(inputs=("joint_angles", "carry"), commands=())
    q = np.arange(4, dtype=np.float32)

    class Mixed:
        """kinodb's getters, with kinfer 0.6.1's take_action(action, metadata)."""

        def get_joint_angles(self, joint_names: Sequence[str]) -> np.ndarray:
            return q

        def take_action(self, action: np.ndarray, metadata: Any) -> None:
            self.action, self.meta = action, metadata

        def pre_fetch_inputs(self, input_types: list[str], metadata: Any) -> None:
            self.prefetch = (input_types, metadata)

    provider = Mixed()
    Runner(load_model(built.path), provider, rate_hz=500, max_steps=1, prefetch_s=0.0005).run()
    want, _ = built.reference({"joint_angles": q, "carry": built.initial})
    assert isinstance(provider.action, np.ndarray)
    np.testing.assert_allclose(provider.action, want, rtol=1e-5, atol=1e-6)
    assert provider.meta.joint_names == built.joints
    assert provider.prefetch == (["joint_angles"], provider.meta)


def test_kinodb_forms_are_dispatched_by_signature(make_package: MakePackage) -> None:
    built = make_package(inputs=("joint_angles", "carry"), commands=())
    calls: list[Any] = []

    class Getters:
        def get_joint_angles(self, names: Sequence[str]) -> np.ndarray:
            return np.ones(4, np.float32)

        def take_action(self, joint_names: Sequence[str], action: np.ndarray) -> None:
            calls.append((tuple(joint_names), action))

        def pre_fetch_inputs(self, input_names: Sequence[str]) -> None:
            calls.append(list(input_names))

    Runner(load_model(built.path), Getters(), rate_hz=500, max_steps=2, prefetch_s=0.0005).run()
    assert calls[0] == ["joint_angles"] and calls[1][0] == built.joints
    assert isinstance(calls[1][1], np.ndarray) and calls[1][1].shape == (4,)


def test_a_proxy_provider_answering_any_name_keeps_its_getters(make_package: MakePackage) -> None:
    # A __getattr__ proxy (an RPC stub, a Mock) "has" get_inputs too; only a get_inputs
    # the provider defines switches it to kinfer's interface.
    built = make_package(inputs=("joint_angles", "carry"), commands=())
    sent: list[np.ndarray] = []

    class Proxy:
        def __getattr__(self, name: str) -> Any:
            if name == "take_action":
                return lambda joint_names, action: sent.append(action)
            if name.startswith("get_"):  # get_inputs too, as a remote stub would
                return lambda *args: np.ones(4, np.float32)
            raise AttributeError(name)

    Runner(load_model(built.path), Proxy(), rate_hz=500, max_steps=2).run()
    assert len(sent) == 2 and sent[0].shape == (4,)


def test_a_proxy_forwarding_to_a_kinfer_provider_keeps_get_inputs(make_package: MakePackage) -> None:
    built = make_package(inputs=("joint_angles", "carry"), commands=())
    sent: list[np.ndarray] = []

    class KinferProvider:
        def get_inputs(self, input_types: list[str], metadata: Any) -> dict[str, Any]:
            return {"joint_angles": np.full(4, 2, np.float32)}

        def take_action(self, action: np.ndarray, metadata: Any) -> None:
            sent.append(action)

    class Forwarding:  # a logging or locking wrapper
        def __init__(self, inner: Any) -> None:
            self._inner = inner

        def __getattr__(self, name: str) -> Any:
            return getattr(self._inner, name)

    Runner(load_model(built.path), Forwarding(KinferProvider()), rate_hz=500, max_steps=2).run()
    assert len(sent) == 2 and sent[0].shape == (4,)


def test_a_provider_of_neither_interface_names_both(make_package: MakePackage) -> None:
    model = load_model(make_package(inputs=("joint_angles", "carry"), commands=()).path)

    class Nothing:
        def take_action(self, action: np.ndarray, metadata: Any) -> None: ...

    with pytest.raises(InferError) as err:
        Runner(model, Nothing(), rate_hz=50)
    text = str(err.value)
    assert "get_joint_angles()" in text and "get_inputs(input_types, metadata)" in text
    assert "take_action(joint_names, action)" in text and "take_action(action, metadata)" in text

    class OneArgTake:
        def get_inputs(self, input_types: list[str], metadata: Any) -> dict[str, Any]:
            return {}

        def take_action(self, action: np.ndarray) -> None: ...

    with pytest.raises(InferError, match=r"take_action\(action\) takes neither \(joint_names, action\) nor"):
        Runner(model, OneArgTake(), rate_hz=50)

    class BadPrefetch(CallableProvider):
        def pre_fetch_inputs(self) -> None: ...

    provider = BadPrefetch(joint_angles=lambda names: np.zeros(4))
    with pytest.raises(InferError, match=r"pre_fetch_inputs\(\) takes neither \(input_names\) nor"):
        Runner(model, provider, rate_hz=50, prefetch_s=0.001)
    with pytest.raises(InferError, match=r"pre_fetch_inputs\(input_types, metadata\)"):
        Runner(model, CallableProvider(joint_angles=lambda names: np.zeros(4)), rate_hz=50, prefetch_s=0.001)


def test_get_inputs_that_returns_no_dict_is_named(make_package: MakePackage) -> None:
    model = load_model(make_package(inputs=("joint_angles", "carry"), commands=()).path)

    class ListInputs:
        def get_inputs(self, input_types: list[str], metadata: Any) -> Any:
            return [np.zeros(4)]

        def take_action(self, action: np.ndarray, metadata: Any) -> None: ...

    with pytest.raises(InferError, match=r"ListInputs\.get_inputs\(input_types, metadata\) returned list"):
        Runner(model, ListInputs(), rate_hz=200, max_steps=1).run()


# -- replay by joint name -----------------------------------------------------------------

JOINT_GAIN = {"hip": 1.0, "knee": -2.0, "ankle": 0.5}
JOINT_DAMP = {"hip": 0.1, "knee": 0.3, "ankle": -0.7}


def _per_joint_policy(tmp_path: Path, joints: Sequence[str], name: str) -> Path:
    """action[j] = gain[j] * q[j] + damp[j] * dq[j] + sum(carry): the same policy in any joint order."""
    gain = np.array([JOINT_GAIN.get(j, 3.0) for j in joints], np.float32)
    damp = np.array([JOINT_DAMP.get(j, 3.0) for j in joints], np.float32)
    J = len(joints)
    nodes = [
        helper.make_node("Mul", ["joint_angles", "gain"], ["q_term"]),
        helper.make_node("Mul", ["joint_angular_velocities", "damp"], ["dq_term"]),
        helper.make_node("Add", ["q_term", "dq_term"], ["action"]),
        helper.make_node("Add", ["carry", "one"], ["next_carry"]),
    ]
    graph = helper.make_graph(
        nodes,
        "step_fn",
        [
            helper.make_tensor_value_info("joint_angles", TensorProto.FLOAT, [J]),
            helper.make_tensor_value_info("joint_angular_velocities", TensorProto.FLOAT, [J]),
            helper.make_tensor_value_info("carry", TensorProto.FLOAT, [2]),
        ],
        [
            helper.make_tensor_value_info("action", TensorProto.FLOAT, [J]),
            helper.make_tensor_value_info("next_carry", TensorProto.FLOAT, [2]),
        ],
        [
            numpy_helper.from_array(gain, "gain"),
            numpy_helper.from_array(damp, "damp"),
            numpy_helper.from_array(np.ones(2, np.float32), "one"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="tests")
    model.ir_version = IR_VERSION
    checker.check_model(model)
    meta = {"joint_names": list(joints), "command_names": [], "carry_size": [2]}
    return write_archive(
        tmp_path / name,
        [
            ("init_fn.onnx", init_graph(np.zeros(2, np.float32))),
            ("step_fn.onnx", model.SerializeToString()),
            ("metadata.json", metadata_bytes(meta)),
        ],
    )


def _record(tmp_path: Path, joints: Sequence[str], steps: int = 15) -> tuple[Path, dict[str, np.ndarray]]:
    """Run the policy of ``joints`` against a robot whose state is known per joint; record it."""
    rng = np.random.default_rng(3)
    robot = {"q": [], "dq": []}
    state: dict[str, dict[str, float]] = {}

    def q(names: Sequence[str]) -> np.ndarray:
        state["q"] = {j: float(rng.normal()) for j in names}
        robot["q"].append(state["q"])
        return np.array([state["q"][j] for j in names], np.float32)

    def dq(names: Sequence[str]) -> np.ndarray:
        state["dq"] = {j: float(rng.normal()) for j in names}
        robot["dq"].append(state["dq"])
        return np.array([state["dq"][j] for j in names], np.float32)

    out = tmp_path / "rollouts.kdb"
    model = load_model(_per_joint_policy(tmp_path, joints, "recorded.kinfer"))
    provider = CallableProvider(joint_angles=q, joint_angular_velocities=dq)
    Runner(model, provider, rate_hz=1000, max_steps=steps, record_to=out).run()
    return out, robot  # type: ignore[return-value]


def test_replay_matches_joints_by_name(tmp_path: Path) -> None:
    out, robot = _record(tmp_path, ["hip", "knee", "ankle"])
    reordered = load_model(_per_joint_policy(tmp_path, ["ankle", "hip", "knee"], "reordered.kinfer"))
    report = replay(reordered, out)
    assert report.frames == 15 and report.joint_names == ("ankle", "hip", "knee")
    assert float(report.max_abs.max()) == 0.0  # fed and scored by name: the same policy, exactly
    provider = KdbReplayProvider(out, 0)
    provider.bind(reordered.signature)
    for frame in (0, 7):
        provider.frame = frame
        want = [robot["q"][frame][j] for j in ("ankle", "hip", "knee")]  # type: ignore[index]
        np.testing.assert_array_equal(
            provider.get_joint_angles(reordered.signature.joint_names), np.float32(want)
        )
        want_dq = [robot["dq"][frame][j] for j in ("ankle", "hip", "knee")]  # type: ignore[index]
        np.testing.assert_array_equal(
            provider.get_joint_angular_velocities(reordered.signature.joint_names), np.float32(want_dq)
        )
    with kinodb.open(out) as db:
        recorded = db.read_episode(0)["actions"]
    np.testing.assert_array_equal(provider.actions_in_order(reordered.signature), recorded[:, [2, 0, 1]])
    by_position = replay(reordered, out, by_name=False)
    assert float(by_position.max_abs.max()) > 0.1  # the columns by position: other joints


def test_replay_refuses_other_joint_names(tmp_path: Path) -> None:
    out, _ = _record(tmp_path, ["hip", "knee", "ankle"])
    other = load_model(_per_joint_policy(tmp_path, ["hip", "knee", "wrist"], "other.kinfer"))
    with pytest.raises(InferError) as err:
        replay(other, out)
    text = str(err.value)
    assert "rollouts.kdb: episode 0" in text and "'wrist'" in text and "'ankle'" in text
    assert "by_name=False" in text and "kino infer replay --by-position" in text
    with pytest.raises(InferError, match=r"joint_angles=states\.joint_angles: the states columns name"):
        KdbReplayProvider(out, 0).bind(other.signature)
    assert replay(other, out, by_name=False).frames == 15


def test_a_missing_states_component_is_named_with_the_components(tmp_path: Path) -> None:
    out, _ = _record(tmp_path, ["hip", "knee", "ankle"])
    model = load_model(_per_joint_policy(tmp_path, ["hip", "knee", "ankle"], "same.kinfer"))
    provider = KdbReplayProvider(out, 0, state_map={"joint_angles": "states.nope"})
    with pytest.raises(InferError) as err:
        provider.bind(model.signature)
    text = str(err.value)
    assert "--state-map joint_angles=states.nope: states has no component 'nope'; its components are " in text
    assert (
        "['joint_angles', 'joint_angular_velocities'] (joint_angles [0:3], joint_angular_velocities [3:6])"
        in text
    )
    assert "no array" not in text
    provider = KdbReplayProvider(out, 0, state_map={"joint_angles": "actions.hip"})
    with pytest.raises(InferError, match=r"only states has named components .*select columns with actions\["):
        provider.bind(model.signature)


def test_a_state_map_for_an_input_the_model_lacks_is_refused(tmp_path: Path) -> None:
    out, _ = _record(tmp_path, ["hip", "knee", "ankle"])
    model = load_model(_per_joint_policy(tmp_path, ["hip", "knee", "ankle"], "same.kinfer"))
    assert "command" not in model.signature.observation_names
    with pytest.raises(InferError) as err:
        replay(model, out, state_map={"command": "0"})
    text = str(err.value)
    assert "--state-map command=0: the model has no input 'command'" in text
    assert "its observation inputs are ['joint_angles', 'joint_angular_velocities']" in text
    assert replay(model, out, state_map={"joint_angles": "states.joint_angles"}).frames == 15
