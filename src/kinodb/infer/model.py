"""A loaded policy: contract checks at load, then one preallocated, IOBinding-bound step.

The step session is bound once: every input is an `OrtValue` over a preallocated NumPy
buffer (zero-copy), and so are the two outputs, except an output that is a graph input
passed straight through, which is copied from the input after the run. A step copies
the observation into the input buffers, runs, copies the next carry into the carry input
buffer and returns a copy of the action. No `RunOptions` is passed: in ONNX Runtime
1.31's Python binding any `RunOptions` costs about 40 us per run (a config lookup that
throws and catches).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from kinodb.infer._errors import InferError
from kinodb.infer._package import (
    INIT_MEMBER,
    KNOWN_INPUTS,
    V03_ADVICE,
    Package,
    expected_shape,
    read_package,
    shape_rule,
    step_where,
)
from kinodb.infer._session import make_session, onnxruntime

log = logging.getLogger(__name__)

_FLOAT = "tensor(float)"


@dataclass(frozen=True, slots=True)
class InputSpec:
    """One step input: its name and static shape (float32, no batch dimension)."""

    name: str
    shape: tuple[int, ...]

    @property
    def size(self) -> int:
        """Number of elements."""
        return int(np.prod(self.shape, dtype=np.int64))


@dataclass(frozen=True, slots=True)
class Signature:
    """What a policy takes and returns.

    Attributes:
        joint_names: action order, and the order of the joint inputs.
        command_names: one name per command entry.
        carry_shape: the recurrent state's shape: ``()`` for a scalar carry, and also when
            the model has no carry (``"carry" in input_names`` tells them apart).
        inputs: the step function's inputs, in graph order (the carry included).
        generation: the kinfer generation of the package (``"0.4"``, ``"0.5"``,
            ``"0.6"``) or ``"onnx"`` for a plain step function.
    """

    joint_names: tuple[str, ...]
    command_names: tuple[str, ...]
    carry_shape: tuple[int, ...]
    inputs: tuple[InputSpec, ...]
    generation: str

    @property
    def input_names(self) -> tuple[str, ...]:
        """Every step input name, in graph order."""
        return tuple(i.name for i in self.inputs)

    @property
    def observation_names(self) -> tuple[str, ...]:
        """The inputs a caller supplies each step: every input but the carry."""
        return tuple(i.name for i in self.inputs if i.name != "carry")

    @property
    def num_joints(self) -> int:
        """Length of the action."""
        return len(self.joint_names)

    @property
    def num_commands(self) -> int:
        """Length of the command input."""
        return len(self.command_names)

    def shape(self, name: str) -> tuple[int, ...]:
        """The shape of input ``name``.

        Raises:
            KeyError: the model has no such input.
        """
        for spec in self.inputs:
            if spec.name == name:
                return spec.shape
        raise KeyError(f"the model has no input {name!r}; its inputs are {list(self.input_names)}")


def load_model(path: str | os.PathLike[str], *, providers: Sequence[str] | None = None) -> Model:
    """Load a ``.kinfer`` package (any kinfer generation) or a plain ``.onnx`` step function.

    Example:
        >>> model = kinodb.infer.load_model("walk.kinfer")
        >>> action = model.step({"joint_angles": q, "joint_angular_velocities": dq,
        ...                      "projected_gravity": g, "command": cmd})

    Args:
        path: the package.
        providers: ONNX Runtime execution providers (default: CPU).

    Raises:
        InferError: the package breaks the contract; the message names the member,
            the input and the expected shape.
        MissingExtraError: onnxruntime is not installed.
    """
    return Model(read_package(path), providers=providers)


class Model:
    """A policy ready to step; the carry is threaded internally.

    Build it with `load_model`. ``step(obs)`` takes a mapping from input names to
    arrays (float32, or anything NumPy casts to it safely) of exactly the input's shape.
    """

    def __init__(self, package: Package, *, providers: Sequence[str] | None = None) -> None:
        self.package = package
        where = package.path
        self._init_sess = (
            None
            if package.init_fn is None
            else make_session(package.init_fn, f"{where}: {INIT_MEMBER}", providers=providers)
        )
        self._sess = make_session(package.step_fn, step_where(package), providers=providers)
        self.providers: tuple[str, ...] = tuple(self._sess.get_providers())
        initial = self._run_init()
        self.signature = self._check_step(initial.shape)
        self._initial: npt.NDArray[np.float32] = initial
        self._bind()
        self._dry_run()
        self.reset()

    # -- contract -------------------------------------------------------------------------

    def _run_init(self) -> npt.NDArray[np.float32]:
        """The initial carry: ``init_fn``'s output, or zeros for a plain step function."""
        pkg, member = self.package, f"{self.package.path}: {INIT_MEMBER}"
        if self._init_sess is None:
            carry = pkg.carry_size
            if carry is None:
                steps = {i.name: i for i in self._sess.get_inputs()}
                shape = steps["carry"].shape if "carry" in steps else []
                carry = tuple(shape) if all(isinstance(d, int) for d in shape) else ()
            return np.zeros(carry, np.float32)
        ins, outs = self._init_sess.get_inputs(), self._init_sess.get_outputs()
        if ins:
            raise InferError(f"{member}: has inputs {[i.name for i in ins]}; init_fn must take none")
        if len(outs) != 1:
            raise InferError(
                f"{member}: has {len(outs)} outputs; init_fn must return exactly one (the carry)"
            )
        if outs[0].type != _FLOAT:
            raise InferError(
                f"{member}: output {outs[0].name!r} is {outs[0].type}; the carry must be float32"
            )
        try:
            (value,) = self._init_sess.run(None, {})
        except Exception as exc:
            raise InferError(f"{member}: running it failed: {' '.join(str(exc).split())}") from None
        # asarray, not ascontiguousarray: that one makes a 0-d (scalar) carry 1-d
        value = np.asarray(value, dtype=np.float32, order="C")
        if pkg.carry_size is not None and tuple(value.shape) != pkg.carry_size:
            raise InferError(
                f"{member}: returns a carry of shape {list(value.shape)}, but metadata.json says "
                f"carry_size {list(pkg.carry_size)}"
            )
        return value

    def _check_step(self, carry: tuple[int, ...]) -> Signature:
        pkg, member = self.package, step_where(self.package)
        joints, commands = len(pkg.joint_names), len(pkg.command_names)
        specs: list[InputSpec] = []
        for node in self._sess.get_inputs():
            name = node.name
            want = expected_shape(name, joints, commands, carry)
            if want is None:
                hint = f". If it is a kinfer <=0.3 model: {V03_ADVICE}" if pkg.init_fn is None else ""
                raise InferError(
                    f"{member}: unknown input {name!r}; step inputs must be named after "
                    f"{', '.join(KNOWN_INPUTS)}{hint}"
                )
            if node.type != _FLOAT:
                raise InferError(
                    f"{member}: input {name!r} is {node.type}; expected float32 of shape {list(want)}"
                )
            got = list(node.shape)
            if not all(isinstance(d, int) for d in got):
                raise InferError(
                    f"{member}: input {name!r} has a dynamic shape {got}; expected the static shape "
                    f"{list(want)} ({shape_rule(name)})"
                )
            if tuple(got) != want:
                raise InferError(
                    f"{member}: input {name!r} has shape {got}; expected {list(want)} ({shape_rule(name)})"
                )
            specs.append(InputSpec(name, want))
        outs = self._sess.get_outputs()
        if len(outs) != 2:
            raise InferError(
                f"{member}: has {len(outs)} outputs; expected exactly 2 (the action [{joints}], then the "
                f"next carry {list(carry)})"
            )
        for k, (node, want, what) in enumerate(
            ((outs[0], (joints,), "action"), (outs[1], carry, "next carry"))
        ):
            if node.type != _FLOAT:
                raise InferError(f"{member}: output {k} ({what}) is {node.type}; expected float32")
            got = list(node.shape)
            if all(isinstance(d, int) for d in got) and tuple(got) != want:
                raise InferError(f"{member}: output {k} ({what}) has shape {got}; expected {list(want)}")
        return Signature(pkg.joint_names, pkg.command_names, carry, tuple(specs), pkg.generation)

    # -- binding --------------------------------------------------------------------------

    def _bind(self) -> None:
        ort = onnxruntime()
        sig = self.signature
        self._buffers: dict[str, npt.NDArray[np.float32]] = {
            spec.name: np.zeros(spec.shape, np.float32) for spec in sig.inputs
        }
        self._carry_in: npt.NDArray[np.float32] | None = self._buffers.get("carry")
        self._action: npt.NDArray[np.float32] = np.zeros((sig.num_joints,), np.float32)
        self._carry_out: npt.NDArray[np.float32] = np.zeros(sig.carry_shape, np.float32)
        self._binding = self._sess.io_binding()
        self._values = []  # keep the OrtValues alive as long as the binding
        for name, buf in self._buffers.items():
            value = ort.OrtValue.ortvalue_from_numpy(buf)
            self._binding.bind_ortvalue_input(name, value)
            self._values.append(value)
        # An output that is a graph input passed straight through (no node between) cannot be
        # bound: ONNX Runtime leaves a bound buffer of that name untouched. Copy the input instead.
        passthrough, bound = [], 0
        for node, buf in zip(self._sess.get_outputs(), (self._action, self._carry_out), strict=True):
            if node.name in self._buffers:
                passthrough.append((buf, self._buffers[node.name]))
                continue
            value = ort.OrtValue.ortvalue_from_numpy(buf)
            self._binding.bind_ortvalue_output(node.name, value)
            self._values.append(value)
            bound += 1
        self._passthrough = tuple(passthrough)
        # (name, buffer) pairs for the observation inputs: the step's only Python loop.
        self._obs_slots = tuple((n, b) for n, b in self._buffers.items() if n != "carry")
        self._views = {n: _readonly(b) for n, b in self._buffers.items()}
        # With both outputs passed through there is nothing to compute (and ORT refuses a run
        # that requests no output).
        self._run = self._sess.run_with_iobinding if bound else _no_run

    def _dry_run(self) -> None:
        """One step on zeros, to prove the outputs have the shapes the contract says."""
        member = step_where(self.package)
        sig = self.signature
        try:
            outputs = self._sess.run(
                None, {n: np.zeros(b.shape, np.float32) for n, b in self._buffers.items()}
            )
        except Exception as exc:
            raise InferError(
                f"{member}: a step on zero inputs failed: {' '.join(str(exc).split())}"
            ) from None
        for k, (value, want, what) in enumerate(
            ((outputs[0], (sig.num_joints,), "action"), (outputs[1], sig.carry_shape, "next carry"))
        ):
            if tuple(np.shape(value)) != want:
                raise InferError(
                    f"{member}: output {k} ({what}) came out with shape {list(np.shape(value))}; "
                    f"expected {list(want)}"
                )

    # -- public ---------------------------------------------------------------------------

    @property
    def path(self) -> str:
        """Where the package was read from."""
        return self.package.path

    def init(self) -> npt.NDArray[np.float32]:
        """Run ``init_fn`` again, make its output the initial and current carry, return a copy."""
        self._initial = self._run_init()
        self.reset()
        out: npt.NDArray[np.float32] = self._initial.copy()
        return out

    def reset(self) -> None:
        """Put the carry back to the initial carry (start of an episode)."""
        if self._carry_in is not None:
            np.copyto(self._carry_in, self._initial)
        np.copyto(self._carry_out, self._initial)

    @property
    def carry(self) -> npt.NDArray[np.float32]:
        """A copy of the current carry (the one the next step will read)."""
        out: npt.NDArray[np.float32] = (self._carry_out if self._carry_in is None else self._carry_in).copy()
        return out

    def inputs(self) -> Mapping[str, npt.NDArray[np.float32]]:
        """Read-only views of the input buffers, as the last step read them (carry included)."""
        return self._views

    def step(self, obs: Mapping[str, Any]) -> npt.NDArray[np.float32]:
        """Run one step on ``obs`` (input name -> array) and return the action.

        The carry is threaded internally; ``obs`` needs every input but ``carry``.

        Raises:
            InferError: an input is missing, or has the wrong shape or a non-numeric type.
        """
        for name, buf in self._obs_slots:
            try:
                value = obs[name]
                shape = value.shape if type(value) is np.ndarray else np.shape(value)
                if shape != buf.shape and not (shape == () and buf.size == 1):  # a scalar time
                    raise InferError(
                        f"input {name!r} has shape {list(shape)}; the model expects {list(buf.shape)}"
                    )
                np.copyto(buf, value, casting="same_kind")
            except KeyError:
                raise InferError(
                    f"missing input {name!r}; the model takes {list(self.signature.observation_names)}"
                ) from None
            except (TypeError, ValueError) as exc:
                if isinstance(exc, InferError):
                    raise
                raise InferError(f"input {name!r}: cannot use it as float32 ({exc})") from None
        self._run(self._binding)
        for dst, src in self._passthrough:
            np.copyto(dst, src)
        if self._carry_in is not None:
            np.copyto(self._carry_in, self._carry_out)
        action: npt.NDArray[np.float32] = self._action.copy()
        return action

    def __repr__(self) -> str:
        sig = self.signature
        return (
            f"<kinodb.infer.Model {os.path.basename(self.path)!r} kinfer {sig.generation}: "
            f"{sig.num_joints} joints, {sig.num_commands} commands, carry {list(sig.carry_shape)}, "
            f"inputs {list(sig.input_names)}>"
        )


def _no_run(binding: Any) -> None:
    """The step of a graph whose outputs are all its inputs: nothing to run."""


def _readonly(buf: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    view: npt.NDArray[np.float32] = buf.view()
    view.flags.writeable = False
    return view
