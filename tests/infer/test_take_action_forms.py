"""take_action functions and methods with optional parameters: the action, never an option, gets
the action; what the names cannot settle is refused with the fix."""

from __future__ import annotations

import queue
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest
from _kinfer_packages import Built, MakePackage

from kinodb.infer import CallableProvider, InferError, ProviderMetadata, Runner, load_model


def _expected(built: Built, q: np.ndarray, steps: int) -> np.ndarray:
    carry, out = built.initial, []
    for _ in range(steps):
        action, carry = built.reference({"joint_angles": q, "carry": carry})
        out.append(action)
    return np.array(out)


def _policy(make_package: MakePackage) -> tuple[Built, np.ndarray]:
    built = make_package(inputs=("joint_angles", "carry"), commands=())
    return built, np.random.default_rng(5).normal(size=len(built.joints)).astype(np.float32)


def test_a_function_requiring_one_argument_gets_the_action_and_keeps_its_options(
    make_package: MakePackage,
) -> None:
    built, q = _policy(make_package)
    model = load_model(built.path)
    expected = _expected(built, q, 3)

    sink: queue.Queue[Any] = queue.Queue()
    # Queue.put(item, block=True, timeout=None): one required argument
    provider = CallableProvider(joint_angles=lambda names: q, take_action=sink.put)
    Runner(model, provider, rate_hz=500, max_steps=3).run()
    got = [sink.get_nowait() for _ in range(sink.qsize())]
    assert all(isinstance(a, np.ndarray) for a in got), got
    np.testing.assert_allclose(np.array(got), expected, rtol=1e-5, atol=1e-6)

    calls: list[tuple[Any, ...]] = []

    class Robot:
        def set_joint_targets(self, targets: np.ndarray, duration_s: float = 0.0) -> None:
            calls.append((targets.copy(), duration_s))

        def send(self, action: np.ndarray, blocking: bool = True) -> None:
            calls.append((action.copy(), blocking))

    robot = Robot()
    for fn, option in ((robot.set_joint_targets, 0.0), (robot.send, True)):
        calls.clear()
        provider = CallableProvider(joint_angles=lambda names: q, take_action=fn)
        Runner(model, provider, rate_hz=500, max_steps=3).run()
        np.testing.assert_allclose(np.array([c[0] for c in calls]), expected, rtol=1e-5, atol=1e-6)
        assert all(c[1] == option and type(c[1]) is type(option) for c in calls), (fn, calls)


def test_an_optional_second_parameter_named_for_its_argument_gets_it(make_package: MakePackage) -> None:
    built, q = _policy(make_package)
    model = load_model(built.path)
    expected = _expected(built, q, 2)
    meta = ProviderMetadata(built.joints, (), built.carry)
    calls: list[tuple[Any, ...]] = []

    def kinfer(action: np.ndarray, metadata: Any = None) -> None:
        calls.append((action.copy(), metadata))

    def kinodb(joint_names: Any, action: Any = None) -> None:
        calls.append((action.copy(), joint_names))

    def by_action_name(names: Any, action: Any = None) -> None:
        calls.append((action.copy(), names))

    def joints_then_rest(joint_names: Any, *rest: Any) -> None:
        calls.append((rest[0].copy(), joint_names))

    for fn, second in ((kinfer, meta), (kinodb, built.joints), (by_action_name, built.joints),
                       (joints_then_rest, built.joints)):  # fmt: skip
        calls.clear()
        provider = CallableProvider(joint_angles=lambda names: q, take_action=fn)
        Runner(model, provider, rate_hz=500, max_steps=2).run()
        np.testing.assert_allclose(np.array([c[0] for c in calls]), expected, rtol=1e-5, atol=1e-6)
        assert all(c[1] == second for c in calls), fn


def test_a_function_whose_names_contradict_each_other_is_refused_with_the_fix() -> None:
    def send(joint_names: Any, metadata: Any = None) -> None: ...

    with pytest.raises(InferError) as err:
        CallableProvider(joint_angles=lambda names: np.zeros(4), take_action=send)
    text = str(err.value)
    assert "CallableProvider(take_action=send): its parameters (joint_names, metadata) do not say" in text
    assert "wrap it in a lambda of the form you mean, e.g. take_action=lambda action: send(action)" in text


def test_a_provider_method_requiring_one_argument_is_refused_unless_named(make_package: MakePackage) -> None:
    built, q = _policy(make_package)
    model = load_model(built.path)
    expected = _expected(built, q, 2)

    class Blocking:
        def __init__(self) -> None:
            self.calls: list[tuple[Any, ...]] = []

        def get_joint_angles(self, joint_names: Sequence[str]) -> np.ndarray:
            return q

        def take_action(self, action: np.ndarray, blocking: bool = True) -> None:
            self.calls.append((action, blocking))

    provider = Blocking()
    with pytest.raises(InferError) as err:
        Runner(model, provider, rate_hz=500, max_steps=2)
    text = str(err.value)
    assert "Blocking.take_action(action, blocking) does not say which arguments it takes" in text
    assert "its optional parameter 'blocking'" in text
    assert "name its parameters (action, metadata) or (joint_names, action)" in text
    assert provider.calls == []

    class KinferNamed(Blocking):
        def take_action(self, action: np.ndarray, metadata: Any = None) -> None:  # type: ignore[override]
            self.calls.append((action.copy(), metadata))

    class KinodbNamed(Blocking):
        def take_action(self, joint_names: Any, action: Any = None) -> None:  # type: ignore[override]
            self.calls.append((action.copy(), joint_names))

    class Variadic(Blocking):  # *args takes the second argument: the interface's form, by the first name
        def take_action(self, action: np.ndarray, *rest: Any) -> None:  # type: ignore[override]
            self.calls.append((action.copy(), *rest))

    meta = ProviderMetadata(built.joints, (), built.carry)
    for cls, second in ((KinferNamed, meta), (KinodbNamed, built.joints), (Variadic, meta)):
        named = cls()
        Runner(model, named, rate_hz=500, max_steps=2).run()
        np.testing.assert_allclose(np.array([c[0] for c in named.calls]), expected, rtol=1e-5, atol=1e-6)
        assert all(c[1] == second for c in named.calls), cls


def test_a_kinfer_pre_fetch_with_an_option_keeps_its_default(make_package: MakePackage) -> None:
    built, q = _policy(make_package)

    class Kinfer:
        def __init__(self) -> None:
            self.prefetched: list[tuple[Any, ...]] = []

        def get_inputs(self, input_types: list[str], metadata: Any) -> dict[str, Any]:
            return {"joint_angles": q}

        def take_action(self, action: np.ndarray, metadata: Any) -> None: ...

        def pre_fetch_inputs(self, input_types: list[str], timeout_s: float = 0.1) -> None:
            self.prefetched.append((input_types, timeout_s))

    provider = Kinfer()
    Runner(load_model(built.path), provider, rate_hz=500, max_steps=2, prefetch_s=0.0005).run()
    assert provider.prefetched == [(["joint_angles"], 0.1)] * 2


def test_a_callable_provider_missing_an_input_names_the_keyword_to_pass(make_package: MakePackage) -> None:
    built = make_package(inputs=("joint_angles", "accelerometer", "command", "carry"), commands=("vx",))
    model = load_model(built.path)
    with pytest.raises(InferError) as err:
        Runner(model, CallableProvider(joint_angles=lambda names: np.zeros(4)), rate_hz=50)
    text = str(err.value)
    assert "the model's input 'accelerometer' needs: pass accelerometer=f to CallableProvider, a function " \
        "called as f()" in text  # fmt: skip
    assert "get_inputs" not in text
    provider = CallableProvider(joint_angles=lambda names: np.zeros(4), accelerometer=lambda: np.zeros(3))
    with pytest.raises(InferError, match=r"pass command=f to CallableProvider, a function called as "
                       r"f\(command_names\)"):  # fmt: skip
        Runner(model, provider, rate_hz=50)
