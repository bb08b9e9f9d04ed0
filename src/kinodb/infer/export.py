"""Export a PyTorch step function to a ``.kinfer`` package, checked against ONNX Runtime."""

from __future__ import annotations

import contextlib
import inspect
import io
import logging
import os
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from kinodb._optional import require
from kinodb.infer._errors import InferError
from kinodb.infer._package import (
    KNOWN_INPUTS,
    LEGACY_INPUTS,
    META_MEMBER,
    Package,
    expected_shape,
    pack,
    package_metadata,
    parse_metadata,
    write_atomic,
)
from kinodb.infer.model import Model, Signature

log = logging.getLogger(__name__)

OPSET = 17
MAX_IR_VERSION = 10  # ONNX Runtime releases accept up to 10 at least; the legacy exporter writes 8
PARITY_ATOL = 1e-5


@dataclass(frozen=True, slots=True)
class ExportReport:
    """What `export_torch` wrote.

    Attributes:
        path: the package.
        signature: the signature as `load_model` reads it back.
        max_abs_diff: the largest |ONNX Runtime - PyTorch| over the parity checks.
        opset: the ONNX opset of the step function.
        ir_version: its ONNX IR version.
        bytes: the package size.
        unused_inputs: step arguments the function never reads; they stay graph inputs
            of their declared shape, so the runtime still asks the provider for them.
    """

    path: str
    signature: Signature
    max_abs_diff: float
    opset: int
    ir_version: int
    bytes: int
    unused_inputs: tuple[str, ...] = ()


def export_torch(
    step_module: Any,
    path: str | os.PathLike[str],
    *,
    joint_names: Sequence[str],
    command_names: Sequence[str] = (),
    carry_shape: Sequence[int],
    init_module: Any = None,
    checks: int = 8,
    seed: int = 0,
    legacy_inputs: bool = False,
) -> ExportReport:
    """Export a PyTorch step function to a kinfer 0.6 ``.kinfer`` package.

    ``step_module`` is an ``nn.Module``, a function, or a ``torch.jit.ScriptFunction``
    (what kinfer's ``export_fn`` takes) whose arguments are named after the step inputs
    (``joint_angles``, ``command``, ``carry``, ...) and which returns
    ``(action, next_carry)``. The 0.5-era inputs ``quaternion`` and ``initial_heading``
    are refused: kinfer 0.6.1 rejects a package that takes them, and no released kinfer
    accepts them. ``legacy_inputs=True`` writes such a step function anyway, as a 0.5-style
    package (``num_commands`` instead of ``command_names``, the layout of the K-Bot's
    ``walk_jun22.kinfer``) that kinodb loads; its commands read back as ``command_0``, .... ``init_module`` takes no arguments and returns the
    initial carry; without it the carry starts at zero. The graphs use opset 17 and IR
    version <= 10. Before anything is written, ONNX Runtime and PyTorch are run on
    ``checks`` random inputs (and a rollout of the same length with the carry fed back);
    they must agree to 1e-5. An argument the function never reads stays a step input
    (the TorchScript exporter drops it; it is put back), so the package takes exactly the
    inputs ``forward`` names.

    Example:
        >>> kinodb.infer.export_torch(policy, "walk.kinfer", joint_names=names,
        ...                           command_names=("vx", "vy", "wz"), carry_shape=(128,))

    Raises:
        InferError: ``carry_shape`` is not a sequence of ints, the metadata would make
            `load_model` refuse the package (repeated or empty joint names, a negative carry
            dimension; the same message), an argument is not a known input (or is
            ``quaternion`` / ``initial_heading`` without ``legacy_inputs``), the function run
            once in PyTorch does not return ``(action, next_carry)`` of the declared shapes,
            or ONNX Runtime disagrees with PyTorch. Nothing is written then.
        MissingExtraError: torch or onnx is not installed.
    """
    torch = require("torch", extra="torch")
    onnx = require("onnx", extra="infer")
    joints, commands = tuple(str(n) for n in joint_names), tuple(str(n) for n in command_names)
    carry = _carry_dims(carry_shape)
    with _keeping_modes(torch, step_module, init_module):  # exporting runs them in eval mode
        return _export_torch(
            torch, onnx, step_module, path, joints, commands, carry, init_module, checks, seed, legacy_inputs
        )


def _export_torch(
    torch: Any, onnx: Any, step_module: Any, path: str | os.PathLike[str], joints: tuple[str, ...],
    commands: tuple[str, ...], carry: tuple[int, ...], init_module: Any, checks: int, seed: int,
    legacy_inputs: bool,
) -> ExportReport:  # fmt: skip
    module = _as_module(torch, step_module)
    names = _argument_names(step_module, legacy_inputs)
    legacy = [n for n in names if n in LEGACY_INPUTS]
    if legacy and not legacy_inputs:
        raise InferError(
            f"step arguments {legacy} are not kinfer 0.6 inputs: kinfer 0.6.1 refuses to load a package "
            "that takes them (unknown input name), and no released kinfer accepts them. Take "
            "projected_gravity instead of quaternion (the provider computes it from the IMU "
            "orientation) and fold initial_heading into the command, or pass legacy_inputs=True to write a "
            "0.5-style package (num_commands, as the K-Bot's walk_jun22.kinfer) that kinodb loads"
        )
    where = os.fspath(path)
    meta = package_metadata(joints, commands, carry)
    if legacy:
        meta = {
            "joint_names": meta["joint_names"],
            "num_commands": len(commands),
            "carry_size": meta["carry_size"],
        }
    # load_model's own checks, before anything is exported or written: a package it would refuse
    # (repeated or empty joint names, a negative carry dimension) is never written.
    fields = parse_metadata(meta, f"{where}: {META_MEMBER}")
    shapes = _input_shapes(names, joints, commands, carry)
    gen = torch.Generator().manual_seed(seed)
    example = tuple(torch.randn(shapes[n], generator=gen) for n in names)
    _check_outputs(torch, module, example, (len(joints),), carry)
    step_bytes, unused = _export(torch, onnx, module, example, names, ["action", "next_carry"])
    if unused:
        log.warning(
            "step arguments %s are never read by the step function; they stay inputs of the "
            "package (a runner still reads observations among them from the provider every step, "
            "and feeds the carry back)",
            list(unused),
        )
    if init_module is None:
        init_bytes = _zeros_init(onnx, carry)
    else:
        init_bytes, _ = _export(torch, onnx, _as_module(torch, init_module), (), [], ["carry"])
    package = Package(
        path=where, generation=fields.generation, joint_names=fields.joint_names,
        command_names=fields.command_names, carry_size=fields.carry_size, metadata=meta, init_fn=init_bytes,
        step_fn=step_bytes,
    )  # fmt: skip
    model = Model(package)  # the contract checks of load_model
    diff = _parity(torch, module, init_module, model, names, shapes, checks, gen)
    data = pack(init_bytes, step_bytes, meta)
    write_atomic(where, data)
    proto = onnx.load_from_string(step_bytes)
    return ExportReport(where, model.signature, diff, _opset(proto), int(proto.ir_version), len(data), unused)


@contextlib.contextmanager
def _keeping_modes(torch: Any, *fns: Any) -> Iterator[None]:
    """Restore the train/eval mode of every submodule of ``fns`` afterwards: a checkpoint
    exported mid-training must not leave dropout off and batch norm frozen."""
    modes = [(m, m.training) for fn in fns if isinstance(fn, torch.nn.Module) for m in fn.modules()]
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


def _as_module(torch: Any, fn: Any) -> Any:
    if isinstance(fn, torch.nn.Module):
        return fn.eval()
    if not callable(fn):
        raise InferError(f"expected a torch.nn.Module or a function, got {type(fn).__name__}")

    class _Wrapped(torch.nn.Module):  # type: ignore[misc,name-defined]
        def forward(self, *args: Any) -> Any:
            return fn(*args)

    return _Wrapped().eval()


def _carry_dims(carry_shape: Any) -> tuple[int, ...]:
    """``carry_shape`` as a tuple of ints; a bare int is refused: ``1`` could mean ``(1,)`` or
    the scalar carry ``()``."""
    try:
        return tuple(int(d) for d in carry_shape)
    except (TypeError, ValueError):
        raise InferError(
            f"carry_shape must be a sequence of ints (the carry's shape), got {carry_shape!r}: "
            "pass (n,) for a vector of n, or () for a scalar carry"
        ) from None


def _check_outputs(
    torch: Any, module: Any, example: tuple[Any, ...], action: tuple[int, ...], carry: tuple[int, ...]
) -> None:
    """Run the step function once in PyTorch: it must return ``(action, next_carry)``, two
    tensors of the declared shapes (the exporter's own message on a wrong count names neither)."""
    with torch.no_grad():
        try:
            out = module(*example)
        except Exception as exc:
            text = " ".join(str(exc).split())
            text = text if len(text) <= 400 else text[:400] + "…"
            shapes = ", ".join(f"{list(a.shape)}" for a in example)
            raise InferError(
                f"the step function raised on inputs of the declared shapes ({shapes}): "
                f"{type(exc).__name__}: {text}"
            ) from exc
    if not (
        isinstance(out, (tuple, list)) and len(out) == 2 and all(isinstance(t, torch.Tensor) for t in out)
    ):
        raise InferError(
            f"the step function returns {_described(torch, out)}; expected a tuple of 2 tensors "
            "(action, next_carry): return the carry too, e.g. `return action, carry`"
        )
    for k, (value, want, what) in enumerate(((out[0], action, "action"), (out[1], carry, "next_carry"))):
        if tuple(value.shape) != want:
            raise InferError(
                f"the step function's output {k} ({what}) has shape {list(value.shape)}; expected {list(want)}"
                + (" (one per joint, unbatched)" if k == 0 else " (carry_shape)")
            )


def _described(torch: Any, value: Any) -> str:
    """What a step function returned, in a few words."""
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {list(value.shape)}"
    if isinstance(value, (tuple, list)):
        kind = type(value).__name__
        if not value:
            return f"an empty {kind}"
        items = ", ".join(
            f"tensor {list(v.shape)}" if isinstance(v, torch.Tensor) else type(v).__name__ for v in value
        )
        return f"a {kind} of {len(value)} ({items})"
    return f"a {type(value).__name__}"


def _argument_names(fn: Any, legacy_inputs: bool) -> list[str]:
    target = fn.forward if hasattr(fn, "forward") else fn
    try:
        params = list(inspect.signature(target).parameters.values())
    except (TypeError, ValueError) as exc:
        names = _schema_names(target)
        if names is None:
            raise InferError(f"cannot read the arguments of {fn!r}: {exc}") from None
    else:
        names = []
        for p in params:
            if p.kind not in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
                raise InferError(f"step argument {p.name!r} must be positional; name each input explicitly")
            names.append(p.name)
    unknown = [n for n in names if n not in KNOWN_INPUTS]
    if unknown:
        accepted = [n for n in KNOWN_INPUTS if legacy_inputs or n not in LEGACY_INPUTS]
        raise InferError(
            f"step arguments {unknown} are not step inputs; name them after {', '.join(accepted)}"
        )
    if not names:
        raise InferError("the step function takes no arguments; it needs at least one input")
    return names


def _schema_names(fn: Any) -> list[str] | None:
    """Argument names from a TorchScript schema (a ``torch.jit.ScriptFunction`` has no signature)."""
    arguments = getattr(getattr(fn, "schema", None), "arguments", None)
    if arguments is None:
        return None
    names = []
    for arg in arguments:
        if arg.name == "self":
            continue
        if getattr(arg, "kwarg_only", False):
            raise InferError(f"step argument {arg.name!r} must be positional; name each input explicitly")
        names.append(str(arg.name))
    return names


def _input_shapes(
    names: list[str], joints: tuple[str, ...], commands: tuple[str, ...], carry: tuple[int, ...]
) -> dict[str, tuple[int, ...]]:
    if not joints:
        raise InferError("joint_names is empty; the action needs at least one joint")
    if "command" in names and not commands:
        raise InferError("the step function takes 'command' but command_names is empty")
    out = {}
    for n in names:
        shape = expected_shape(n, len(joints), len(commands), carry)
        assert shape is not None  # names are known inputs
        out[n] = shape
    return out


def _export(
    torch: Any, onnx: Any, module: Any, args: tuple[Any, ...], inputs: list[str], outputs: list[str]
) -> tuple[bytes, tuple[str, ...]]:
    """The ONNX bytes of ``module`` traced on ``args``, and the inputs it never reads."""
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter announces its deprecation
        # The TorchScript exporter: the default before torch 2.5, which has no ``dynamo``.
        legacy = {"dynamo": False} if "dynamo" in inspect.signature(torch.onnx.export).parameters else {}
        try:
            torch.onnx.export(
                module, args, buf, input_names=inputs, output_names=outputs, opset_version=OPSET,
                do_constant_folding=True, **legacy,
            )  # fmt: skip
        except Exception as exc:
            text = " ".join(str(exc).split())
            text = text if len(text) <= 400 else text[:400] + "…"  # some messages print a whole tensor
            if "requires grad as a constant" in text:
                text += (
                    "; the function uses tensors that require grad (a trained module's parameters): "
                    "pass the nn.Module itself, or call .requires_grad_(False) on it before exporting"
                )
            raise InferError(f"torch.onnx.export failed: {text}") from exc
    proto = onnx.load_from_string(buf.getvalue())
    if len(proto.graph.output) != len(outputs):
        raise InferError(
            f"the exported function returns {len(proto.graph.output)} outputs; expected {len(outputs)} ({', '.join(outputs)})"
        )
    unused = _keep_unused_inputs(onnx, proto, inputs, args)
    proto.ir_version = min(int(proto.ir_version), MAX_IR_VERSION)
    onnx.checker.check_model(proto)
    return bytes(proto.SerializeToString()), unused


def _keep_unused_inputs(onnx: Any, proto: Any, inputs: list[str], args: tuple[Any, ...]) -> tuple[str, ...]:
    """Put back the inputs the exporter dropped because no node reads them; return their names.

    A runtime (kinodb's and kinfer's) feeds exactly the step graph's inputs, so this makes
    the package take the inputs ``forward`` declares, in its order. An input no node reads
    cannot change the outputs, whatever its values (touching it, ``0 * x``, would turn an
    inf into NaN).

    Raises:
        InferError: the exported graph's inputs are not the function's arguments.
    """
    graph = proto.graph
    weights = {t.name for t in graph.initializer}
    present = {i.name: i for i in graph.input if i.name not in weights}
    strange = [n for n in present if n not in inputs]
    produced = weights | {o for node in graph.node for o in node.output}
    missing = [n for n in inputs if n not in present]
    if strange or any(n in produced for n in missing):
        raise InferError(
            f"the exported graph's inputs are {list(present)}; expected the function's arguments "
            f"{inputs} (rename the arguments or the module's parameters so they do not clash)"
        )
    if not missing:
        return ()
    declared = {
        n: onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, list(a.shape))
        for n, a in zip(inputs, args, strict=True)
    }
    kept = [i for i in graph.input if i.name in weights]
    ordered = [present[n] if n in present else declared[n] for n in inputs]
    del graph.input[:]
    graph.input.extend(ordered + kept)
    return tuple(missing)


def _zeros_init(onnx: Any, carry: tuple[int, ...]) -> bytes:
    """An ``init_fn`` with no inputs that returns float32 zeros of the carry shape."""
    h = onnx.helper
    tensor = h.make_tensor(
        "zeros", onnx.TensorProto.FLOAT, list(carry), np.zeros(carry, np.float32).reshape(-1).tolist()
    )
    node = h.make_node("Constant", [], ["carry"], value=tensor)
    graph = h.make_graph(
        [node], "init_fn", [], [h.make_tensor_value_info("carry", onnx.TensorProto.FLOAT, list(carry))]
    )
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", OPSET)], producer_name="kinodb")
    model.ir_version = MAX_IR_VERSION
    onnx.checker.check_model(model)
    return bytes(model.SerializeToString())


def _parity(
    torch: Any, module: Any, init_module: Any, model: Model, names: list[str],
    shapes: dict[str, tuple[int, ...]], checks: int, gen: Any,
) -> float:  # fmt: skip
    """Largest |ORT - torch| over random single steps and a rollout with carry feedback."""
    worst = 0.0
    sess = model._sess  # the plain run path, independent of the bound buffers
    with torch.no_grad():
        torch_carry = (
            torch.zeros(shapes.get("carry", model.signature.carry_shape))
            if init_module is None
            else _as_module(torch, init_module)()
        )
        init_diff = float(np.max(np.abs(model.carry - torch_carry.numpy()), initial=0.0))
        if not init_diff <= PARITY_ATOL:
            raise InferError(
                f"ONNX Runtime and PyTorch disagree on the initial carry: max |diff| {init_diff:.3g} "
                f"> {PARITY_ATOL}; nothing was written"
            )
        worst = init_diff
        for k in range(max(1, checks)):
            feed = {n: torch.randn(shapes[n], generator=gen) for n in names}
            want = module(*(feed[n] for n in names))
            got = sess.run(None, {n: v.numpy() for n, v in feed.items()})
            for i, what in enumerate(("action", "next carry")):
                diff = float(np.max(np.abs(got[i] - want[i].numpy()), initial=0.0))
                if not diff <= PARITY_ATOL:
                    raise InferError(
                        f"ONNX Runtime and PyTorch disagree on the {what} of random input {k}: "
                        f"max |diff| {diff:.3g} > {PARITY_ATOL}; nothing was written"
                    )
                worst = max(worst, diff)
        model.reset()
        for t in range(max(1, checks)):
            obs = {n: torch.randn(shapes[n], generator=gen) for n in names if n != "carry"}
            args = [torch_carry if n == "carry" else obs[n] for n in names]
            want_action, torch_carry = module(*args)
            got_action = model.step({n: v.numpy() for n, v in obs.items()})
            diff = float(np.max(np.abs(got_action - want_action.numpy()), initial=0.0))
            if not diff <= PARITY_ATOL:
                raise InferError(
                    f"ONNX Runtime and PyTorch disagree on the action at rollout step {t}: "
                    f"max |diff| {diff:.3g} > {PARITY_ATOL}; nothing was written"
                )
            worst = max(worst, diff)
        model.reset()
    return worst


def _opset(proto: Any) -> int:
    return max((int(o.version) for o in proto.opset_import if o.domain in ("", "ai.onnx")), default=0)
