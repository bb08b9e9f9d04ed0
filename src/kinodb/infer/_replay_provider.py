"""`KdbReplayProvider`: the observations of a recorded ``.kdb`` episode served to a policy,
one frame per action (open-loop evaluation, `kinodb.infer.replay`), and `parse_state_map`
for the ``--state-map`` items that say where each input comes from."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from kinodb.infer._errors import InferError
from kinodb.infer.model import Signature
from kinodb.infer.providers import GETTERS, JOINT_INPUTS, LOG_NAMES
from kinodb.kdb.reader import Database

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

        Index names name joints only when they are the policy's own, in its order: an ingested
        kinfer log numbers its columns ``joint_0``, ... whatever the policy calls its joints,
        and a policy may number its joints too (``joint_1``, ... as a Kinova URDF names them).

        Raises:
            InferError: the names are joint names, but not the policy's joints.
        """
        if stored == joints:
            return _JointMatch(stored, None)
        if _index_names(stored):
            return None
        if len(stored) == len(joints) and len(set(stored)) == len(stored) and set(stored) == set(joints):
            return _JointMatch(stored, [stored.index(j) for j in joints])
        if not strict and not set(stored) & set(joints):
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
