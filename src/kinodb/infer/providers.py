"""Providers: where observations come from and where actions go.

A provider has kinfer's methods, so robot-side code ports over unchanged:
``get_joint_angles(joint_names)``, ``get_joint_angular_velocities(joint_names)``,
``get_projected_gravity()``, ``get_accelerometer()``, ``get_gyroscope()``,
``get_command(command_names)``, ``get_quaternion()``, ``get_initial_heading()``,
``get_time()`` and ``take_action(joint_names, action)``. Only the getters a model's
inputs need are looked up and called. Two optional hooks: ``bind(signature)`` is
called once before the first step (check and prepare), ``done()`` after each action
(True ends a run), and ``pre_fetch_inputs(input_names)`` starts sensor reads when a
runner has a ``prefetch_s`` gap.

Built in: `CallableProvider` (plain functions) and `KdbReplayProvider` (the
observations of a recorded ``.kdb`` episode, for open-loop evaluation).
"""

from __future__ import annotations

import functools
import os
import re
import time
from collections.abc import Callable, Mapping, Sequence
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

# kinfer's NDJSON field names for inputs, as an ingested log may still carry them
LOG_NAMES = {
    "joint_angular_velocities": "joint_vels",
    "projected_gravity": "projected_g",
    "accelerometer": "accel",
    "gyroscope": "gyro",
}


@runtime_checkable
class Provider(Protocol):
    """What a runner needs of every provider; the getters depend on the model's inputs."""

    def take_action(self, joint_names: Sequence[str], action: npt.NDArray[np.float32]) -> None:
        """Send the action (joint position targets, in ``joint_names`` order)."""
        ...


def bind_getters(signature: Signature, provider: Any) -> tuple[tuple[str, Callable[[], Any]], ...]:
    """``(input name, zero-argument getter)`` for every observation input of ``signature``.

    Raises:
        InferError: the provider lacks a method an input needs.
    """
    out = []
    for name in signature.observation_names:
        method, arg = GETTERS[name]
        fn = getattr(provider, method, None)
        if not callable(fn):
            raise InferError(
                f"{type(provider).__name__} has no {method}(), which the model's input {name!r} needs"
            )
        if arg == "joints":
            fn = functools.partial(fn, signature.joint_names)
        elif arg == "commands":
            fn = functools.partial(fn, signature.command_names)
        out.append((name, fn))
    if not callable(getattr(provider, "take_action", None)):
        raise InferError(f"{type(provider).__name__} has no take_action(joint_names, action)")
    bind = getattr(provider, "bind", None)
    if callable(bind):
        bind(signature)
    return tuple(out)


class CallableProvider:
    """A provider made of plain functions, one per input, each taking what kinfer's method takes.

    ``joint_angles`` and ``joint_angular_velocities`` get the joint names, ``command``
    the command names, the others nothing. ``time`` defaults to seconds since the
    provider was made (as the K-Bot provider does); ``take_action`` defaults to keeping
    the action in `last_action`.

    Example:
        >>> provider = CallableProvider(
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
        take_action: Callable[[Sequence[str], npt.NDArray[np.float32]], Any] | None = None,
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
                setattr(self, GETTERS[name][0], fn)
        self._t0 = _monotonic()
        self._send = take_action
        self.last_action: npt.NDArray[np.float32] | None = None
        self.actions_taken = 0

    def get_time(self) -> float:
        """Seconds since the provider was made (replaced by a ``time`` function when given)."""
        return _monotonic() - self._t0

    def take_action(self, joint_names: Sequence[str], action: npt.NDArray[np.float32]) -> None:
        """Keep the action, then hand it to the ``take_action`` function if one was given."""
        self.last_action = action
        self.actions_taken += 1
        if self._send is not None:
            self._send(joint_names, action)


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


class KdbReplayProvider:
    """Serve one recorded ``.kdb`` episode's observations, one frame per action (open loop).

    Inputs are found, unless ``state_map`` says otherwise, as an extra array of the same
    name, a ``states`` component of that name (what a recording or an ingested kinfer log
    holds), or kinfer's log field name; ``time`` falls back to the episode's timestamps,
    else frame / fps. The actions the model takes are kept in `predicted`.

    Example:
        >>> provider = KdbReplayProvider("rollouts.kdb", 3, state_map={"command": "0"})
    """

    def __init__(
        self,
        data: Database | str | os.PathLike[str],
        episode: int = 0,
        *,
        state_map: Sequence[str] | Mapping[str, str] | None = None,
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
        self._rows: dict[str, npt.NDArray[np.float32]] = {}
        self.predicted: npt.NDArray[np.float32] = np.zeros((0, 0), np.float32)
        self.frame = 0

    # -- resolution -----------------------------------------------------------------------

    def bind(self, signature: Signature) -> None:
        """Find every input the model needs in the episode; check the widths.

        Raises:
            InferError: an input cannot be found, or its width differs from the model's.
        """
        self._rows = {}
        for name in signature.observation_names:
            want = signature.shape(name)
            rows = self._resolve(name, int(np.prod(want)))
            self._rows[name] = np.ascontiguousarray(rows, dtype=np.float32).reshape((self.num_frames, *want))
        self.predicted = np.zeros((self.num_frames, signature.num_joints), np.float32)
        self.frame = 0

    def _resolve(self, name: str, width: int) -> npt.NDArray[Any]:
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
        return rows

    def _components(self) -> dict[str, list[int]]:
        comps: dict[str, list[int]] = self.db.schema().get("states", {}).get("components", {}) or {}
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
