"""Providers: where observations come from and where actions go.

Two provider interfaces are accepted, so robot-side code of either kind ports over:

- kinodb's (kinfer 0.4's): one getter per input, ``get_joint_angles(joint_names)``,
  ``get_joint_angular_velocities(joint_names)``, ``get_projected_gravity()``,
  ``get_accelerometer()``, ``get_gyroscope()``, ``get_command(command_names)``,
  ``get_quaternion()``, ``get_initial_heading()``, ``get_time()``, and
  ``take_action(joint_names, action)``. Only the getters a model's inputs need are
  looked up and called.
- kinfer 0.6.1's Python one (``ModelProviderABC``): ``get_inputs(input_types, metadata)``
  returns a dict from input name to array for the names asked (never ``carry``), and
  ``take_action(action, metadata)``. ``metadata`` is a `ProviderMetadata` (the fields of
  kinfer's ``PyModelMetadata``).

A provider with ``get_inputs`` is driven through it, as kinfer drives it, even when it
also has getters. ``take_action`` and ``pre_fetch_inputs`` are called in the form their
signature declares: with two required parameters, ``(action, metadata)`` when the first is
``action`` or the second ``metadata``, ``(joint_names, action)`` when the second is
``action`` or the first ``joint_names``/``names``, else its interface's form. A second
argument never lands in an optional parameter unless that parameter's name (or a first one
named ``joint_names``/``names``) asks for it: a ``take_action(self, action, blocking=True)``
is refused (name its parameters). ``pre_fetch_inputs`` takes ``(input_names)`` or kinfer's
``(input_types, metadata)``.
Optional hooks: ``bind(signature)`` is called once before the first step (check and
prepare), ``done()`` after each action (True ends a run), and ``pre_fetch_inputs`` starts
sensor reads when a runner has a ``prefetch_s`` gap.

Built in: `CallableProvider` (plain functions) and `KdbReplayProvider`
(`kinodb.infer._replay_provider`: the observations of a recorded ``.kdb`` episode, for
open-loop evaluation).
"""

from __future__ import annotations

import functools
import inspect
import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from kinodb.infer._errors import InferError
from kinodb.infer.model import Signature

# input name -> (provider method, which names it is called with)
GETTERS: dict[str, tuple[str, str | None]] = {
    "joint_angles": ("get_joint_angles", "joints"),
    "joint_angular_velocities": ("get_joint_angular_velocities", "joints"),
    "projected_gravity": ("get_projected_gravity", None),
    "accelerometer": ("get_accelerometer", None),
    "gyroscope": ("get_gyroscope", None),
    "command": ("get_command", "commands"),
    "time": ("get_time", None),
    "quaternion": ("get_quaternion", None),
    "initial_heading": ("get_initial_heading", None),
}
JOINT_INPUTS = ("joint_angles", "joint_angular_velocities")  # one column per joint

# kinfer's NDJSON field names for inputs, as an ingested log may still carry them
LOG_NAMES = {
    "joint_angular_velocities": "joint_vels",
    "projected_gravity": "projected_g",
    "accelerometer": "accel",
    "gyroscope": "gyro",
}

INTERFACES = (
    "kinodb's per-input getters (get_joint_angles(joint_names), ..., one per model input) with "
    "take_action(joint_names, action), or kinfer 0.6.1's get_inputs(input_types, metadata) with "
    "take_action(action, metadata)"
)


@runtime_checkable
class Provider(Protocol):
    """What a runner needs of every provider; the getters depend on the model's inputs.

    ``take_action`` is kinodb's ``(joint_names, action)`` or kinfer 0.6.1's
    ``(action, metadata)``; see the module docstring.
    """

    def take_action(self, joint_names: Sequence[str], action: npt.NDArray[np.float32]) -> None:
        """Send the action (joint position targets, in ``joint_names`` order)."""
        ...


@dataclass(frozen=True, slots=True)
class ProviderMetadata:
    """The ``metadata`` kinfer 0.6.1 hands its providers (the fields of ``PyModelMetadata``)."""

    joint_names: tuple[str, ...]
    command_names: tuple[str, ...]
    carry_size: tuple[int, ...]

    @classmethod
    def from_signature(cls, signature: Signature) -> ProviderMetadata:
        """The metadata of a loaded model."""
        return cls(signature.joint_names, signature.command_names, signature.carry_shape)

    def to_json(self) -> str:
        """kinfer's ``metadata.json`` form."""
        return json.dumps(
            {
                "joint_names": list(self.joint_names),
                "command_names": list(self.command_names),
                "carry_size": list(self.carry_size),
            }
        )


@dataclass(frozen=True, slots=True)
class BoundProvider:
    """A provider adapted to one model: zero-argument calls a loop makes each tick.

    Attributes:
        provider: the provider itself.
        interface: ``"getters"`` (kinodb's) or ``"get_inputs"`` (kinfer 0.6.1's).
        fetch: returns the observation, a mapping from input name to value.
        take_action: hands one action over.
        pre_fetch: starts the sensor reads (None unless asked for).
        metadata: what a kinfer 0.6.1 provider receives as ``metadata``.
    """

    provider: Any
    interface: str
    fetch: Callable[[], Mapping[str, Any]]
    take_action: Callable[[npt.NDArray[np.float32]], Any]
    pre_fetch: Callable[[], Any] | None
    metadata: ProviderMetadata


def bind_provider(signature: Signature, provider: Any, *, pre_fetch: bool = False) -> BoundProvider:
    """Adapt ``provider`` to the model of ``signature``; call its ``bind`` hook if it has one.

    Raises:
        InferError: the provider has neither interface complete for the model's inputs,
            or its ``take_action`` / ``pre_fetch_inputs`` (when ``pre_fetch``) takes
            neither accepted form; the message names both interfaces.
    """
    cls = type(provider).__name__
    metadata = ProviderMetadata.from_signature(signature)
    # kinfer's get_inputs drives a provider that defines it. One that only answers it on
    # request (a __getattr__ proxy, a Mock) is driven by it only if it lacks the getters
    # the model's inputs need (a proxy forwarding to a kinfer provider).
    get_inputs = getattr(provider, "get_inputs", None)
    kinfer = callable(get_inputs) and _takes(get_inputs, 2)
    if kinfer and not _defines(provider, "get_inputs"):
        kinfer = not all(
            callable(getattr(provider, GETTERS[n][0], None)) for n in signature.observation_names
        )
    if kinfer and get_inputs is not None:
        fetch = _get_inputs_fetch(cls, get_inputs, list(signature.observation_names), metadata)
    else:
        why = "; its get_inputs() does not take (input_types, metadata)" if callable(get_inputs) else ""
        fetch = _getters_fetch(_getters(signature, provider, cls, why))
    take = getattr(provider, "take_action", None)
    if not callable(take):
        raise InferError(f"{cls} has no take_action(); a provider has {INTERFACES}")
    form = _take_action_form(take, kinfer)
    if form is None:
        raise InferError(
            f"{cls}.take_action{_describe(take)} takes neither (joint_names, action) nor "
            f"(action, metadata); a provider has {INTERFACES}"
        )
    if form == _AMBIGUOUS:
        raise InferError(_ambiguous_method(cls, take))
    send = (
        functools.partial(_send_kinfer, take, metadata)
        if form == "kinfer"
        else functools.partial(take, signature.joint_names)
    )
    prefetch = _bind_pre_fetch(provider, cls, kinfer, signature, metadata) if pre_fetch else None
    bind = getattr(provider, "bind", None)
    if callable(bind):
        bind(signature)
    return BoundProvider(provider, "get_inputs" if kinfer else "getters", fetch, send, prefetch, metadata)


def _getters(
    signature: Signature, provider: Any, cls: str, why: str
) -> tuple[tuple[str, Callable[[], Any]], ...]:
    out = []
    for name in signature.observation_names:
        method, arg = GETTERS[name]
        fn = getattr(provider, method, None)
        if not callable(fn) and isinstance(provider, CallableProvider):
            raise InferError(
                f"{cls} has no {method}(), which the model's input {name!r} needs: pass {name}=f "
                f"to {cls}, a function called as f({_ARG_NAMES.get(arg or '', '')}) (the model's "
                f"inputs are {list(signature.observation_names)})"
            )
        if not callable(fn):
            raise InferError(
                f"{cls} has no {method}(), which the model's input {name!r} needs, and no "
                f"get_inputs(input_types, metadata){why}; a provider has {INTERFACES}"
            )
        if not _takes(fn, 1 if arg else 0):
            raise InferError(
                f"{cls}.{method}{_describe(fn)} cannot be called as {_getter_call(method, arg)}, as the "
                f"model's input {name!r} needs; give it that signature"
            )
        if arg == "joints":
            fn = functools.partial(fn, signature.joint_names)
        elif arg == "commands":
            fn = functools.partial(fn, signature.command_names)
        out.append((name, fn))
    return tuple(out)


_ARG_NAMES = {"joints": "joint_names", "commands": "command_names"}


def _getter_call(method: str, arg: str | None) -> str:
    """How a getter is called: ``get_joint_angles(joint_names)``, ``get_gyroscope()``."""
    return f"{method}({_ARG_NAMES[arg] if arg else ''})"


def _defines(obj: Any, name: str) -> bool:
    """Whether ``obj`` has ``name`` of its own (not made up by ``__getattr__``)."""
    try:
        inspect.getattr_static(obj, name)
    except AttributeError:
        return False
    return True


def _getters_fetch(getters: tuple[tuple[str, Callable[[], Any]], ...]) -> Callable[[], Mapping[str, Any]]:
    obs: dict[str, Any] = {}

    def fetch() -> Mapping[str, Any]:
        for name, get in getters:
            obs[name] = get()
        return obs

    return fetch


def _get_inputs_fetch(
    cls: str, get_inputs: Callable[..., Any], names: list[str], metadata: ProviderMetadata
) -> Callable[[], Mapping[str, Any]]:
    def fetch() -> Mapping[str, Any]:
        got = get_inputs(list(names), metadata)  # a fresh list: the provider may keep or change it
        if type(got) is not dict and not isinstance(got, Mapping):
            raise InferError(
                f"{cls}.get_inputs(input_types, metadata) returned {type(got).__name__}; expected a dict "
                f"from input name to array for {names}"
            )
        return got

    return fetch


def _send_kinfer(
    take: Callable[..., Any], metadata: ProviderMetadata, action: npt.NDArray[np.float32]
) -> Any:
    return take(action, metadata)


def _bind_pre_fetch(
    provider: Any, cls: str, kinfer: bool, signature: Signature, metadata: ProviderMetadata
) -> Callable[[], Any]:
    fn = getattr(provider, "pre_fetch_inputs", None)
    if not callable(fn):
        raise InferError(
            f"prefetch_s is set but {cls} has no pre_fetch_inputs(input_names) (kinodb's form) or "
            f"pre_fetch_inputs(input_types, metadata) (kinfer 0.6.1's)"
        )
    names = list(signature.observation_names)
    info = _positional(fn)
    if info is None:
        two = kinfer
    else:
        params, required, maximum = info
        if required == 2 or (maximum >= 2 and params[1:2] == ["metadata"]):
            two = True
        elif required <= 1 <= maximum:  # the metadata never goes to an option named otherwise
            two = kinfer and maximum >= 2 and len(params) < 2
        else:
            raise InferError(
                f"{cls}.pre_fetch_inputs{_describe(fn)} takes neither (input_names) nor "
                f"(input_types, metadata); a provider has {INTERFACES}"
            )
    if two:
        return lambda: fn(list(names), metadata)
    return lambda: fn(list(names))


def _positional(fn: Callable[..., Any]) -> tuple[list[str], int, float] | None:
    """Positional parameter names, how many are required and how many fit (None: unknown)."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):  # a builtin or an extension type: no signature to read
        return None
    names: list[str] = []
    required, maximum = 0, 0.0
    for p in sig.parameters.values():
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
            names.append(p.name)
            maximum += 1
            required += p.default is p.empty
        elif p.kind is p.VAR_POSITIONAL:
            maximum = math.inf
        elif p.kind is p.KEYWORD_ONLY and p.default is p.empty:
            return names, 3, 0.0  # needs a keyword no caller passes: fits no form
    return names, required, maximum


_AMBIGUOUS = "ambiguous"  # a take_action whose parameters do not say which arguments it takes
_JOINT_PARAMS = ("joint_names", "names")  # a first parameter of these names takes kinodb's joint names


def _takes(fn: Callable[..., Any], n: int) -> bool:
    info = _positional(fn)
    return info is None or info[1] <= n <= info[2]


def _take_action_form(fn: Callable[..., Any], kinfer: bool, *, one: bool = False) -> str | None:
    """How ``fn`` is called: ``"kinfer"`` ``(action, metadata)``, ``"kinodb"`` ``(joint_names, action)``,
    ``"action"`` ``(action)`` (only when ``one``), ``"ambiguous"``, or None: it takes none of them.

    Two required parameters are told apart by their names, else get the interface's form
    (kinodb's for a function). With one required parameter (or none) a second argument would
    land in an optional parameter, so only that parameter's name (``metadata``, ``action``) or
    a first one named ``joint_names``/``names`` asks for it; else a function gets ``(action)``
    and a provider's method, which has no one-argument form, is ambiguous. A second argument
    that ``*args`` takes is given as for two required parameters.
    """
    interface = "kinfer" if kinfer else "kinodb"
    info = _positional(fn)
    if info is None:
        return interface
    names, required, maximum = info
    if required > 2 or maximum < 1:
        return None
    if maximum < 2:
        return "action" if one else None
    first, second = [*names, "", ""][:2]
    if required == 2 or (not one and len(names) < 2):
        if first == "action" or second == "metadata":
            return "kinfer"
        if second == "action" or first in _JOINT_PARAMS:
            return "kinodb"
        return interface
    to_kinfer = second == "metadata"
    to_kinodb = second == "action" or first in _JOINT_PARAMS
    if to_kinfer != to_kinodb:
        return "kinfer" if to_kinfer else "kinodb"
    return "action" if one and not to_kinfer else _AMBIGUOUS


def _describe(fn: Callable[..., Any]) -> str:
    """``(a, b)``: the parameter names, without annotations."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return "(...)"
    names = [
        ("*" if p.kind is p.VAR_POSITIONAL else "**" if p.kind is p.VAR_KEYWORD else "") + p.name
        for p in params
    ]
    return "(" + ", ".join(names) + ")"


class CallableProvider:
    """A provider made of plain functions, one per input, each taking what kinodb's getter takes.

    ``joint_angles`` and ``joint_angular_velocities`` get the joint names, ``command``
    the command names, the others nothing. ``time`` defaults to seconds since the
    provider was made (as the K-Bot provider does). ``take_action`` is called in the form
    its signature declares: a function requiring one argument (``robot.send``,
    ``queue.Queue().put``) gets ``f(action)``, its options left at their defaults, unless a
    second parameter named ``metadata`` (kinfer 0.6.1's ``f(action, metadata)``) or
    ``action``, or a first named ``joint_names``/``names`` (kinodb's
    ``f(joint_names, action)``) asks for two; one requiring two gets ``f(action, metadata)``
    when its first parameter is ``action`` or its second ``metadata``, else
    ``f(joint_names, action)``. The action is also kept in `last_action`.

    Raises:
        InferError: a function cannot take the call its input or ``take_action`` gets, or
            ``take_action``'s parameter names contradict each other (wrap it in a lambda).

    Example:
        >>> provider = CallableProvider(  # robot.send(action): the one-parameter form
        ...     joint_angles=lambda names: robot.q, joint_angular_velocities=lambda names: robot.dq,
        ...     projected_gravity=imu.gravity, command=lambda names: joystick(), take_action=robot.send)
    """

    def __init__(
        self,
        *,
        joint_angles: Callable[[Sequence[str]], Any] | None = None,
        joint_angular_velocities: Callable[[Sequence[str]], Any] | None = None,
        projected_gravity: Callable[[], Any] | None = None,
        accelerometer: Callable[[], Any] | None = None,
        gyroscope: Callable[[], Any] | None = None,
        command: Callable[[Sequence[str]], Any] | None = None,
        time: Callable[[], Any] | None = None,
        quaternion: Callable[[], Any] | None = None,
        initial_heading: Callable[[], Any] | None = None,
        take_action: Callable[..., Any] | None = None,
    ) -> None:
        given = {
            "joint_angles": joint_angles, "joint_angular_velocities": joint_angular_velocities,
            "projected_gravity": projected_gravity, "accelerometer": accelerometer, "gyroscope": gyroscope,
            "command": command, "time": time, "quaternion": quaternion, "initial_heading": initial_heading,
        }  # fmt: skip
        for name, fn in given.items():
            if fn is not None:
                if not callable(fn):
                    raise TypeError(f"{name} must be callable, got {type(fn).__name__}")
                method, arg = GETTERS[name]
                if not _takes(fn, 1 if arg else 0):
                    raise InferError(
                        f"CallableProvider({name}={_fn_name(fn)}): it takes {_describe(fn)} but is called as "
                        f"{_getter_call(method, arg)}; give a function of that signature"
                    )
                setattr(self, method, fn)
        self._t0 = _monotonic()
        self._send = take_action
        self._form = None if take_action is None else _callable_take_form(take_action)
        self._metadata: ProviderMetadata | None = None
        self.last_action: npt.NDArray[np.float32] | None = None
        self.actions_taken = 0

    def get_time(self) -> float:
        """Seconds since the provider was made (replaced by a ``time`` function when given)."""
        return _monotonic() - self._t0

    def bind(self, signature: Signature) -> None:
        """Keep the model's metadata, which a ``take_action(action, metadata)`` function gets."""
        self._metadata = ProviderMetadata.from_signature(signature)

    def take_action(self, joint_names: Sequence[str], action: npt.NDArray[np.float32]) -> None:
        """Keep the action, then hand it to the ``take_action`` function in its form.

        Raises:
            InferError: the function takes ``(action, metadata)`` and no model was bound yet.
        """
        self.last_action = action
        self.actions_taken += 1
        if self._send is None:
            return
        if self._form == "action":
            self._send(action)
        elif self._form == "kinodb":
            self._send(joint_names, action)
        elif self._metadata is None:
            raise InferError(
                f"CallableProvider(take_action={_fn_name(self._send)}) takes (action, metadata), and the "
                "metadata comes from the model: run it with a Runner, or call bind(signature) first"
            )
        else:
            self._send(action, self._metadata)


def _callable_take_form(fn: Callable[..., Any]) -> str:
    """A take_action function's form: ``"action"``, ``"kinfer"`` or ``"kinodb"``.

    Raises:
        InferError: ``fn`` takes none of them, or its parameters' names contradict each other.
    """
    if not callable(fn):
        raise TypeError(f"take_action must be callable, got {type(fn).__name__}")
    form = _take_action_form(fn, kinfer=False, one=True)
    if form is None:
        raise InferError(
            f"CallableProvider(take_action={_fn_name(fn)}): it takes {_describe(fn)}, none of the accepted "
            "forms (action), (action, metadata) (kinfer 0.6.1's) or (joint_names, action) (kinodb's)"
        )
    if form == _AMBIGUOUS:
        name = _fn_name(fn)
        call = f"obj.{name.rpartition('.')[2]}" if "." in name else name  # a method: call it on its object
        raise InferError(
            f"CallableProvider(take_action={name}): its parameters {_describe(fn)} do not say whether it is "
            "called as f(action), f(action, metadata) (kinfer 0.6.1's) or f(joint_names, action) (kinodb's); "
            f"wrap it in a lambda of the form you mean, e.g. take_action=lambda action: {call}(action)"
        )
    return form


def _ambiguous_method(cls: str, take: Callable[..., Any]) -> str:
    """Why a provider's ``take_action`` with one required parameter is refused, and the fix."""
    names, required, _ = _positional(take) or (["", ""], 0, 0.0)
    return (
        f"{cls}.take_action{_describe(take)} does not say which arguments it takes: a provider's "
        "take_action is called with two, (joint_names, action) or (action, metadata), and it requires "
        f"{required}, so the second would land in its optional parameter {names[1]!r}; name its "
        "parameters (action, metadata) or (joint_names, action)"
    )


def _fn_name(fn: Callable[..., Any]) -> str:
    """``send``, ``Robot.send``, ``<lambda>``: the qualified name, without enclosing functions."""
    name = str(getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or type(fn).__name__)
    return name.rpartition("<locals>.")[2]


def _monotonic() -> float:
    return time.perf_counter()
