"""The forms a provider's functions are called in: CallableProvider's take_action, getter arities."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from _kinfer_packages import Built, MakePackage

import kinodb
from kinodb.infer import CallableProvider, InferError, ProviderMetadata, Runner, load_model


def _reference_actions(built: Built, obs: dict[str, np.ndarray], steps: int) -> np.ndarray:
    carry, out = built.initial, []
    for _ in range(steps):
        action, carry = built.reference({**obs, "carry": carry})
        out.append(action)
    return np.array(out)


def test_callable_take_action_is_called_in_the_form_its_signature_declares(make_package: MakePackage) -> None:
    built = make_package(inputs=("joint_angles", "carry"), commands=())
    model = load_model(built.path)
    q = np.random.default_rng(3).normal(size=len(built.joints)).astype(np.float32)
    expected = _reference_actions(built, {"joint_angles": q}, 3)
    calls: list[tuple[Any, ...]] = []

    def one(action: np.ndarray) -> None:
        calls.append((action.copy(),))

    def kinfer(action: np.ndarray, metadata: Any) -> None:
        calls.append((action.copy(), metadata))

    def kinfer_by_metadata(out: np.ndarray, metadata: Any) -> None:
        calls.append((out.copy(), metadata))

    def kinodb(joint_names: Any, action: np.ndarray) -> None:
        calls.append((action.copy(), joint_names))

    def unnamed(a: Any, b: np.ndarray) -> None:  # no telling names: kinodb's (joint_names, action)
        calls.append((b.copy(), a))

    def tagged(tag: str, action: np.ndarray) -> None:
        calls.append((action.copy(), tag))

    class Robot:
        def send(self, action: np.ndarray) -> None:
            calls.append((action.copy(),))

    kept: list[np.ndarray] = []
    meta = ProviderMetadata(built.joints, (), built.carry)
    forms: list[tuple[Callable[..., Any], tuple[Any, ...]]] = [
        (one, ()),
        (Robot().send, ()),  # a bound method: self is not a parameter
        (functools.partial(tagged, "arm"), ("arm",)),
        (kinfer, (meta,)),
        (kinfer_by_metadata, (meta,)),
        (kinodb, (built.joints,)),
        (unnamed, (built.joints,)),
        (kept.append, ()),  # a builtin's bound method
    ]
    for fn, rest in forms:
        calls.clear()
        kept.clear()
        provider = CallableProvider(joint_angles=lambda names: q, take_action=fn)
        Runner(model, provider, rate_hz=500, max_steps=3).run()
        got = [np.asarray(a) for a in kept] if fn == kept.append else [c[0] for c in calls]
        np.testing.assert_allclose(np.array(got), expected, rtol=1e-5, atol=1e-6, err_msg=repr(fn))
        for call in calls:
            assert call[1:] == rest, fn
        np.testing.assert_allclose(provider.last_action, expected[-1], rtol=1e-5, atol=1e-6)
        assert provider.actions_taken == 3


def test_callable_take_action_of_no_accepted_form_is_refused_at_construction() -> None:
    def nothing() -> None: ...

    def three(a: Any, b: Any, c: Any) -> None: ...

    def keyword(action: Any, *, port: int) -> None: ...

    for fn in (nothing, three, keyword, lambda: None):
        with pytest.raises(InferError) as err:
            CallableProvider(joint_angles=lambda names: np.zeros(4), take_action=fn)
        message = str(err.value)
        assert f"take_action={fn.__name__}): it takes (" in message
        assert "(action), (action, metadata) (kinfer 0.6.1's) or (joint_names, action) (kinodb's)" in message

    def kinfer(action: Any, metadata: Any) -> None: ...

    unbound = CallableProvider(take_action=kinfer)  # metadata comes from the model it is bound to
    with pytest.raises(InferError, match=r"takes \(action, metadata\).*bind\(signature\)"):
        unbound.take_action(("hip",), np.zeros(1, np.float32))


def test_getters_that_cannot_take_their_call_are_refused_at_construction(make_package: MakePackage) -> None:
    built = make_package(inputs=("joint_angles", "projected_gravity", "carry"), commands=())
    model = load_model(built.path)
    q, g = np.zeros(len(built.joints), np.float32), np.array([0, 0, -1], np.float32)

    with pytest.raises(InferError, match=r"joint_angles=<lambda>\): it takes \(\) but is called as "
                       r"get_joint_angles\(joint_names\)"):  # fmt: skip
        CallableProvider(joint_angles=lambda: q)
    with pytest.raises(InferError, match=r"called as get_projected_gravity\(\)"):
        CallableProvider(projected_gravity=lambda names: g)
    with pytest.raises(InferError, match=r"called as get_command\(command_names\)"):
        CallableProvider(command=lambda a, b: np.zeros(2))

    class NoNames:
        def get_joint_angles(self) -> np.ndarray:
            return q

        def get_projected_gravity(self) -> np.ndarray:
            return g

        def take_action(self, joint_names: Any, action: np.ndarray) -> None: ...

    with pytest.raises(InferError, match=r"NoNames.get_joint_angles\(\) cannot be called as "
                       r"get_joint_angles\(joint_names\), as the model's input 'joint_angles' needs"):  # fmt: skip
        Runner(model, NoNames(), rate_hz=50)

    # what can take the call is accepted: *args, defaults, partials, bound methods, builtins
    def angles(scale: float, names: Any) -> np.ndarray:
        return q * scale

    accepted = CallableProvider(
        joint_angles=functools.partial(angles, 2.0),
        projected_gravity=functools.partial(np.asarray, g),
        take_action=lambda *args: None,
    )
    assert Runner(model, accepted, rate_hz=500, max_steps=2).run()["steps"] == 2
    assert Runner(model, CallableProvider(joint_angles=lambda *a: q, projected_gravity=lambda x=0: g),
                  rate_hz=500, max_steps=2).run()["steps"] == 2  # fmt: skip


def test_the_quick_start_of_the_docs_runs_as_written(make_package: MakePackage, tmp_path: Path) -> None:
    built = make_package(inputs=("joint_angles", "joint_angular_velocities", "projected_gravity", "command",
                                 "carry"), commands=("vx", "wz"))  # fmt: skip

    class Robot:
        q = np.full(len(built.joints), 0.1, np.float32)
        dq = np.zeros(len(built.joints), np.float32)

        def __init__(self) -> None:
            self.sent: list[np.ndarray] = []

        def send(self, action: np.ndarray) -> None:
            self.sent.append(action.copy())

    class Imu:
        def gravity(self) -> np.ndarray:
            return np.array([0, 0, -1.0])

    robot, imu = Robot(), Imu()

    def joystick() -> list[float]:
        return [0.3, 0.0]

    model = load_model(built.path)
    provider = CallableProvider(
        joint_angles=lambda names: robot.q, joint_angular_velocities=lambda names: robot.dq,
        projected_gravity=imu.gravity, command=lambda names: joystick(), take_action=robot.send,
    )  # fmt: skip
    stats = Runner(model, provider, rate_hz=500, max_steps=4, record_to=tmp_path / "rollouts.kdb").run()
    assert stats["steps"] == 4 and stats["dropped_log_lines"] == 0
    obs = {"joint_angles": robot.q, "joint_angular_velocities": robot.dq,
           "projected_gravity": np.array([0, 0, -1], np.float32), "command": np.array([0.3, 0], np.float32)}  # fmt: skip
    np.testing.assert_allclose(np.array(robot.sent), _reference_actions(built, obs, 4), rtol=1e-5, atol=1e-6)
    with kinodb.open(tmp_path / "rollouts.kdb") as db:
        assert len(db) == 1
        np.testing.assert_allclose(db[0]["actions"], np.array(robot.sent), rtol=1e-5, atol=1e-6)
