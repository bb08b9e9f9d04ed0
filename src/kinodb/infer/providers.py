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
signature declares: ``(action, metadata)`` when the first parameter is ``action`` or the
second ``metadata``, ``(joint_names, action)`` when the second is ``action`` or the first
``joint_names``/``names``; any other two-parameter signature gets its interface's form.
``pre_fetch_inputs`` takes ``(input_names)`` or kinfer's ``(input_types, metadata)``.
Optional hooks: ``bind(signature)`` is called once before the first step (check and
prepare), ``done()`` after each action (True ends a run), and ``pre_fetch_inputs`` starts
sensor reads when a runner has a ``prefetch_s`` gap.

Built in: `CallableProvider` (plain functions) and `KdbReplayProvider` (the
observations of a recorded ``.kdb`` episode, for open-loop evaluation).
"""

from __future__ import annotations

import functools
import inspect
import json
import math
import os
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from kinodb.infer._errors import InferError
from kinodb.infer.model import Signature
from kinodb.kdb.reader import Database

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


def _getter_call(method: str, arg: str | None) -> str:
    """How a getter is called: ``get_joint_angles(joint_names)``, ``get_gyroscope()``."""
    names = {"joints": "joint_names", "commands": "command_names"}
    return f"{method}({names[arg] if arg else ''})"


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
        elif required <= 1 <= maximum:
            two = kinfer and maximum >= 2
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


def _takes(fn: Callable[..., Any], n: int) -> bool:
    info = _positional(fn)
    return info is None or info[1] <= n <= info[2]


def _take_action_form(fn: Callable[..., Any], kinfer: bool) -> str | None:
    """``"kinfer"`` for ``(action, metadata)``, ``"kinodb"`` for ``(joint_names, action)``, None: neither."""
    info = _positional(fn)
    if info is None:
        return "kinfer" if kinfer else "kinodb"
    names, required, maximum = info
    if not required <= 2 <= maximum:
        return None
    first, second = [*names, "", ""][:2]
    if first == "action" or second == "metadata":
        return "kinfer"
    if second == "action" or first in ("joint_names", "names"):
        return "kinodb"
    return "kinfer" if kinfer else "kinodb"


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
    its signature declares: ``f(action)``, kinfer 0.6.1's ``f(action, metadata)`` (first
    parameter ``action`` or second ``metadata``) or kinodb's ``f(joint_names, action)``
    (any other two-parameter function); the action is also kept in `last_action`.

    Raises:
        InferError: a function cannot take the call its input or ``take_action`` gets.

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
        InferError: ``fn`` takes none of them.
    """
    if not callable(fn):
        raise TypeError(f"take_action must be callable, got {type(fn).__name__}")
    form = _take_action_form(fn, kinfer=False)  # two parameters fit: by their names, else kinodb's
    if form is None and _takes(fn, 1):
        form = "action"
    if form is None:
        raise InferError(
            f"CallableProvider(take_action={_fn_name(fn)}): it takes {_describe(fn)}, none of the accepted "
            "forms (action), (action, metadata) (kinfer 0.6.1's) or (joint_names, action) (kinodb's)"
        )
    return form


def _fn_name(fn: Callable[..., Any]) -> str:
    """``send``, ``Robot.send``, ``<lambda>``: the qualified name, without enclosing functions."""
    name = str(getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or type(fn).__name__)
    return name.rpartition("<locals>.")[2]


def _monotonic() -> float:
    return time.perf_counter()


# -- replay from a .kdb episode -----------------------------------------------------------

_SPEC = re.compile(r"^(?P<array>[^\[\]]+?)(?:\[(?P<start>\d*):(?P<stop>\d*)\])?$")


def parse_state_map(items: Sequence[str] | Mapping[str, str] | None) -> dict[str, str]:
    """Parse ``INPUT=SOURCE`` items into ``{input: source}``.

    SOURCE is an array of the episode (``states``, ``actions`` or an extra array),
    optionally with columns ``[START:STOP]``; ``states.COMPONENT`` for a component the
    schema names; or ``0`` for zeros.

    Raises:
        ValueError: an item is not ``INPUT=SOURCE`` or names an unknown input.
    """
    if items is None:
        return {}
    pairs = list(items.items()) if isinstance(items, Mapping) else [_split_item(i) for i in items]
    out = {}
    for name, source in pairs:
        if name not in GETTERS:
            raise ValueError(
                f"--state-map: {name!r} is not an observation input; use one of {', '.join(GETTERS)}"
            )
        if not _SPEC.match(source):
            raise ValueError(
                f"--state-map {name}={source}: expected ARRAY, ARRAY[START:STOP], states.COMPONENT or 0"
            )
        out[name] = source
    return out


def _split_item(item: str) -> tuple[str, str]:
    name, sep, source = item.partition("=")
    if not sep or not name.strip() or not source.strip():
        raise ValueError(f"--state-map {item!r}: expected INPUT=SOURCE, e.g. joint_angles=states[0:7]")
    return name.strip(), source.strip()


@dataclass(frozen=True, slots=True)
class _JointMatch:
    """Columns named ``stored`` that name the policy's joints; ``order`` puts them in the
    policy's order (None: they are in it)."""

    stored: tuple[str, ...]
    order: list[int] | None


_INDEX_NAME = re.compile(r"(.*?)([0-9]+)")


def _index_names(names: Sequence[str]) -> bool:
    """Whether ``names`` only number the columns (``joint_0``, ``joint_1``, ...: one stem, consecutive numbers)."""
    found = [_INDEX_NAME.fullmatch(n) for n in names]
    if not found or any(m is None for m in found):
        return False
    stems = {m.group(1) for m in found if m is not None}
    numbers = [int(m.group(2)) for m in found if m is not None]
    return len(stems) == 1 and numbers == list(range(numbers[0], numbers[0] + len(numbers)))


class KdbReplayProvider:
    """Serve one recorded ``.kdb`` episode's observations, one frame per action (open loop).

    Inputs are found, unless ``state_map`` says otherwise, as an extra array of the same
    name, a ``states`` component of that name (what a recording or an ingested kinfer log
    holds), or kinfer's log field name; ``time`` falls back to the episode's timestamps,
    else frame / fps. The actions the model takes are kept in `predicted`.

    Joints are matched by name where the file names them: ``states`` columns named
    ``<input>.<joint>`` (``joint_angles.hip``, as a recording names them) or plainly
    (``hip``, as a LeRobot ingest names them) feed the joint inputs in the policy's joint
    order, and `actions_in_order` puts the recorded actions (``actions`` names) in that
    order too. Names that are a permutation of the policy's joints are reordered; other
    joint names are refused. Names that only number the columns (``joint_0``, ...: an
    ingested kinfer log), and plain names none of which is a policy joint, name no joints:
    those columns are used by position. Both sides are matched the same way: where one
    side would be reordered and the other names no joints, `actions_in_order` refuses.
    ``by_name=False`` uses every column by position instead.

    Example:
        >>> provider = KdbReplayProvider("rollouts.kdb", 3, state_map={"command": "0"})
    """

    def __init__(
        self,
        data: Database | str | os.PathLike[str],
        episode: int = 0,
        *,
        state_map: Sequence[str] | Mapping[str, str] | None = None,
        by_name: bool = True,
    ) -> None:
        self._own = not isinstance(data, Database)
        self.db = Database(data) if not isinstance(data, Database) else data
        self.episode = int(episode)
        ep = self.db.read_episode_actions_only(self.episode)
        self._arrays = {k: v for k, v in ep.items() if isinstance(v, np.ndarray)}
        self.meta: dict[str, Any] = ep["meta"]
        self.recorded_actions: npt.NDArray[Any] = self._arrays["actions"]
        self.num_frames = int(self.meta["num_frames"])
        self._map = parse_state_map(state_map)
        self.by_name = bool(by_name)
        self._schema: dict[str, Any] = self.db.schema()
        self._rows: dict[str, npt.NDArray[np.float32]] = {}
        self.predicted: npt.NDArray[np.float32] = np.zeros((0, 0), np.float32)
        self.frame = 0

    # -- resolution -----------------------------------------------------------------------

    def bind(self, signature: Signature) -> None:
        """Find every input the model needs in the episode; check the widths.

        Raises:
            InferError: an input cannot be found, its width differs from the model's,
                ``state_map`` maps an input the model does not have, or (by name) the
                columns of a joint input name other joints than the policy's.
        """
        self._rows = {}
        unused = [n for n in self._map if n not in signature.observation_names]
        if unused:
            raise InferError(
                f"{self.db.path()}: --state-map {', '.join(f'{n}={self._map[n]}' for n in unused)}: the model "
                f"has no input {' or '.join(repr(n) for n in unused)}; its observation inputs are "
                f"{list(signature.observation_names)}"
            )
        for name in signature.observation_names:
            want = signature.shape(name)
            source, rows = self._resolve(name, int(np.prod(want)))
            if name in JOINT_INPUTS and self.by_name:
                match = self._state_match(name, source, signature)
                if match is not None and match.order is not None:
                    rows = rows[:, match.order]
            self._rows[name] = np.ascontiguousarray(rows, dtype=np.float32).reshape((self.num_frames, *want))
        self.predicted = np.zeros((self.num_frames, signature.num_joints), np.float32)
        self.frame = 0

    def actions_in_order(self, signature: Signature) -> npt.NDArray[Any]:
        """The recorded actions, columns in the policy's joint order (by ``actions`` names).

        By name, the joint inputs and the actions are matched the same way: where one side
        names the policy's joints in another order and the other names no joints, the
        columns of that other side cannot be put in order, and the replay is refused.

        Raises:
            InferError: the recorded actions name other joints than the policy's, or only
                one side names its joints and that side is in another order.
        """
        actions = self.recorded_actions
        if not self.by_name or actions.ndim != 2:
            return actions
        names = self._schema.get("actions", {}).get("names")
        sides: dict[str, _JointMatch | None] = {}
        for name in signature.observation_names:
            if name in JOINT_INPUTS:
                source, _ = self._resolve(name, int(np.prod(signature.shape(name))))
                if source not in ("0", "zeros"):  # zeros are in every order
                    sides[f"the {name} columns ({name}={source})"] = self._state_match(
                        name, source, signature
                    )
        action = None
        if names and len(names) == actions.shape[1]:
            action = self._match(tuple(str(n) for n in names), signature.joint_names, "the recorded actions",
                                 strict=True)  # fmt: skip
        sides["the recorded actions"] = action
        self._check_sides(sides, signature)
        return actions if action is None or action.order is None else actions[:, action.order]

    def _check_sides(self, sides: Mapping[str, _JointMatch | None], signature: Signature) -> None:
        """Refuse a replay where one side would be reordered by name and another, naming no
        joints, could only be used by position: the two would be compared joint against
        another joint."""
        moved = [what for what, m in sides.items() if m is not None and m.order is not None]
        unnamed = [what for what, m in sides.items() if m is None]
        if not moved or not unnamed:
            return
        stored = next(m.stored for m in sides.values() if m is not None and m.order is not None)
        raise InferError(
            f"{self.db.path()}: episode {self.episode}: {' and '.join(moved)} name the policy's joints in "
            f"another order ({list(stored)}; the policy's: {list(signature.joint_names)}), but "
            f"{' and '.join(unnamed)} name no joints, so they cannot be matched by name too. If those "
            "columns are in the policy's joint order, replay by position: replay(..., by_name=False), or "
            "kino infer replay --by-position; else name the joints in the file's schema"
        )

    def _state_match(self, name: str, source: str, signature: Signature) -> _JointMatch | None:
        """How the ``states`` columns that ``source`` selects match the policy's joints, by
        their names; None where they name no joints."""
        stored = self._state_joints(source)
        if stored is None:
            return None
        names, prefixed = stored
        return self._match(
            names, signature.joint_names, f"{name}={source}: the states columns", strict=prefixed
        )

    def _state_joints(self, source: str) -> tuple[tuple[str, ...], bool] | None:
        """The names of the ``states`` columns ``source`` selects, without their ``<input>.``
        prefix when they all have one (as a recording names them), and whether they had it;
        None where the file names no columns there. Plain names (``hip``, ``kLeftElbow``, as a
        LeRobot ingest names them) are returned as they are."""
        names = self._schema.get("states", {}).get("names")
        if source.startswith("states.") and source[7:] in self._components():
            start, stop = self._components()[source[7:]]
        else:
            m = _SPEC.match(source)
            if m is None or m.group("array") != "states" or not names:
                return None
            start = int(m.group("start") or 0)
            stop = int(m.group("stop") or len(names))
        if not names or stop > len(names) or start >= stop:
            return None
        picked = [str(n) for n in names[start:stop]]
        prefix = picked[0].split(".", 1)[0] + "." if "." in picked[0] else ""
        if prefix[:-1] in JOINT_INPUTS and all(n.startswith(prefix) for n in picked):
            return tuple(n[len(prefix) :] for n in picked), True
        return tuple(picked), False

    def _match(
        self, stored: tuple[str, ...], joints: tuple[str, ...], what: str, *, strict: bool
    ) -> _JointMatch | None:
        """How columns named ``stored`` match the policy's ``joints``: in order, reordered, or
        None where the names are no joint names (index names such as ``joint_0``, ...; or,
        unless ``strict``, names none of which is one of the policy's joints).

        Raises:
            InferError: the names are joint names, but not the policy's joints.
        """
        if stored == joints:
            return _JointMatch(stored, None)
        if len(stored) == len(joints) and len(set(stored)) == len(stored) and set(stored) == set(joints):
            return _JointMatch(stored, [stored.index(j) for j in joints])
        if not set(stored) & set(joints) and (not strict or _index_names(stored)):
            return None
        missing = [j for j in joints if j not in stored]
        other = [n for n in stored if n not in joints]
        raise InferError(
            f"{self.db.path()}: episode {self.episode}: {what} name the joints {list(stored)}, "
            f"not the policy's {list(joints)} (not in the file: {missing}; not the policy's: {other}). "
            "Replay data recorded with this policy's joints, or use the columns by position: "
            "replay(..., by_name=False), or kino infer replay --by-position"
        )

    def _resolve(self, name: str, width: int) -> tuple[str, npt.NDArray[Any]]:
        where = f"{self.db.path()}: episode {self.episode}"
        source = self._map.get(name)
        if source is None:
            source = self._default(name)
            if source is None:
                raise InferError(
                    f"{where}: cannot find the model input {name!r}: no extra array or states component "
                    f"of that name (arrays: {sorted(self._arrays)}, states components: "
                    f"{sorted(self._components())}); map it with --state-map {name}=ARRAY[START:STOP] or {name}=0"
                )
        rows = self._select(source, where, name, width)
        if rows.shape[1] != width:
            raise InferError(
                f"{where}: {name}={source} gives {rows.shape[1]} values per frame; the model's "
                f"input {name!r} takes {width}"
            )
        return source, rows

    def _no_component(self, array: str, component: str) -> str:
        """Why ``ARRAY.COMPONENT`` names nothing: the components there are, or that only states has them."""
        if array != "states":
            return (
                f"only states has named components ({array}.{component} names none); "
                f"select columns with {array}[START:STOP]"
            )
        comps = self._components()
        if not comps:
            return (
                f"states has no component {component!r}: the file names none; "
                "select columns with states[START:STOP]"
            )
        spans = ", ".join(f"{c} [{a}:{b}]" for c, (a, b) in comps.items())
        return f"states has no component {component!r}; its components are {sorted(comps)} ({spans})"

    def _components(self) -> dict[str, list[int]]:
        comps: dict[str, list[int]] = self._schema.get("states", {}).get("components", {}) or {}
        return comps

    def _default(self, name: str) -> str | None:
        if name in self._arrays:
            return name
        if name in self._components():
            return f"states.{name}"
        alias = LOG_NAMES.get(name)
        if alias is not None and alias in self._arrays:
            return alias
        if name == "time":
            return "@time"
        return None

    def _select(self, source: str, where: str, name: str, width: int) -> npt.NDArray[Any]:
        T = self.num_frames
        if source in ("0", "zeros"):
            return np.zeros((T, width), np.float32)
        if source == "@time":
            ts = self._arrays.get("timestamps")
            t = ts - ts[0] if ts is not None else np.arange(T) / float(self.meta["fps"])
            return np.asarray(t, np.float64).reshape(T, 1)
        if source.startswith("states.") and source[7:] in self._components():
            start, stop = self._components()[source[7:]]
            return self._arrays["states"][:, start:stop]
        m = _SPEC.match(source)
        array = m.group("array") if m else source
        if array not in self._arrays:
            owner, dot, component = array.partition(".")
            if dot and owner in self._arrays:
                raise InferError(
                    f"{where}: --state-map {name}={source}: {self._no_component(owner, component)}"
                )
            raise InferError(
                f"{where}: --state-map {name}={source}: no array {array!r}; it has {sorted(self._arrays)}"
            )
        arr = self._arrays[array]
        arr = arr.reshape(T, -1)
        if m and m.group("start") is not None:
            start = int(m.group("start") or 0)
            stop = int(m.group("stop") or arr.shape[1])
            if not 0 <= start < stop <= arr.shape[1]:
                raise InferError(
                    f"{where}: --state-map {name}={source}: columns {start}:{stop} lie outside "
                    f"{array!r}, which has {arr.shape[1]}"
                )
            arr = arr[:, start:stop]
        return arr

    # -- provider methods -----------------------------------------------------------------

    def _row(self, name: str) -> npt.NDArray[np.float32]:
        row: npt.NDArray[np.float32] = self._rows[name][min(self.frame, self.num_frames - 1)]
        return row

    def get_joint_angles(self, joint_names: Sequence[str]) -> npt.NDArray[np.float32]:
        """Recorded joint angles of the current frame."""
        return self._row("joint_angles")

    def get_joint_angular_velocities(self, joint_names: Sequence[str]) -> npt.NDArray[np.float32]:
        """Recorded joint velocities of the current frame."""
        return self._row("joint_angular_velocities")

    def get_projected_gravity(self) -> npt.NDArray[np.float32]:
        """Recorded projected gravity of the current frame."""
        return self._row("projected_gravity")

    def get_accelerometer(self) -> npt.NDArray[np.float32]:
        """Recorded accelerometer reading of the current frame."""
        return self._row("accelerometer")

    def get_gyroscope(self) -> npt.NDArray[np.float32]:
        """Recorded gyroscope reading of the current frame."""
        return self._row("gyroscope")

    def get_command(self, command_names: Sequence[str]) -> npt.NDArray[np.float32]:
        """Recorded command of the current frame."""
        return self._row("command")

    def get_quaternion(self) -> npt.NDArray[np.float32]:
        """Recorded orientation quaternion of the current frame."""
        return self._row("quaternion")

    def get_initial_heading(self) -> npt.NDArray[np.float32]:
        """Recorded initial heading of the current frame."""
        return self._row("initial_heading")

    def get_time(self) -> npt.NDArray[np.float32]:
        """Time of the current frame."""
        return self._row("time")

    def take_action(self, joint_names: Sequence[str], action: npt.NDArray[np.float32]) -> None:
        """Keep the predicted action of this frame and move to the next frame."""
        if self.frame < self.num_frames:
            self.predicted[self.frame] = action
        self.frame += 1

    def done(self) -> bool:
        """Whether every frame has been served."""
        return self.frame >= self.num_frames

    def close(self) -> None:
        """Close the database if this provider opened it."""
        if self._own:
            self.db.close()
