"""Hand-built ONNX graphs and ``.kinfer`` archives of every kinfer generation (onnx.helper).

The step graph is small but real: ``x = concat(flattened inputs in graph order)``,
``action = tanh(x @ Wa)``, ``next_carry = tanh(x @ Wc)`` reshaped to the carry shape.
`reference_step` computes the same in NumPy, so a loaded model can be checked numerically.
"""

from __future__ import annotations

import gzip
import io
import json
import tarfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

IR_VERSION = 10  # onnx.helper defaults to 14, which onnxruntime 1.31 rejects


def fixed_shapes(joints: int, commands: int, carry: Sequence[int]) -> dict[str, list[int]]:
    """The contract's shape for every input name."""
    return {
        "joint_angles": [joints], "joint_angular_velocities": [joints], "projected_gravity": [3],
        "accelerometer": [3], "gyroscope": [3], "command": [commands], "time": [1], "carry": list(carry),
        "quaternion": [4], "initial_heading": [1],
    }  # fmt: skip


def step_graph(
    inputs: Mapping[str, Sequence[int | str]],
    joints: int,
    carry: Sequence[int],
    *,
    seed: int = 0,
    action_shape: Sequence[int] | None = None,
    outputs: int = 2,
    dtype: int = TensorProto.FLOAT,
) -> tuple[bytes, dict[str, np.ndarray]]:
    """A step function over ``inputs`` (name -> declared shape); returns (bytes, weights)."""
    rng = np.random.default_rng(seed)
    static = {n: [d if isinstance(d, int) else 1 for d in s] for n, s in inputs.items()}
    width = int(sum(np.prod(s) for s in static.values()))
    carry_size = int(np.prod(carry)) if len(carry) else 1
    wa = (rng.normal(size=(width, joints)) / np.sqrt(width)).astype(np.float32)
    wc = (rng.normal(size=(width, carry_size)) / np.sqrt(width)).astype(np.float32)
    nodes, inits = [], [
        numpy_helper.from_array(wa, "Wa"), numpy_helper.from_array(wc, "Wc"),
        numpy_helper.from_array(np.array([1, -1], np.int64), "row"),
        numpy_helper.from_array(np.array(action_shape or [joints], np.int64), "action_shape"),
        numpy_helper.from_array(np.array(list(carry), np.int64), "carry_shape"),
    ]  # fmt: skip
    flat = []
    for name in inputs:
        src = name
        if dtype != TensorProto.FLOAT:
            nodes.append(helper.make_node("Cast", [name], [f"{name}_f"], to=TensorProto.FLOAT))
            src = f"{name}_f"
        nodes.append(helper.make_node("Reshape", [src, "row"], [f"{name}_row"]))
        flat.append(f"{name}_row")
    nodes += [
        helper.make_node("Concat", flat, ["x"], axis=1),
        helper.make_node("MatMul", ["x", "Wa"], ["a_pre"]),
        helper.make_node("Tanh", ["a_pre"], ["a_row"]),
        helper.make_node("Reshape", ["a_row", "action_shape"], ["action"]),
        helper.make_node("MatMul", ["x", "Wc"], ["c_pre"]),
        helper.make_node("Tanh", ["c_pre"], ["c_row"]),
        helper.make_node("Reshape", ["c_row", "carry_shape"], ["next_carry"]),
    ]
    outs = [
        helper.make_tensor_value_info("action", TensorProto.FLOAT, list(action_shape or [joints])),
        helper.make_tensor_value_info("next_carry", TensorProto.FLOAT, list(carry)),
    ]
    if outputs == 3:
        nodes.append(helper.make_node("Identity", ["action"], ["extra"]))
        outs.append(helper.make_tensor_value_info("extra", TensorProto.FLOAT, list(action_shape or [joints])))
    elif outputs == 1:
        outs = outs[:1]
    graph = helper.make_graph(
        nodes,
        "step_fn",
        [helper.make_tensor_value_info(n, dtype, list(s)) for n, s in inputs.items()],
        outs,
        inits,
    )
    return _finish(graph), {"Wa": wa, "Wc": wc}


def init_graph(value: np.ndarray) -> bytes:
    """An ``init_fn``: no inputs, one constant output."""
    value = np.asarray(value, np.float32)
    node = helper.make_node("Constant", [], ["carry"], value=numpy_helper.from_array(value, "c"))
    graph = helper.make_graph(
        [node], "init_fn", [], [helper.make_tensor_value_info("carry", TensorProto.FLOAT, list(value.shape))]
    )
    return _finish(graph)


def _finish(graph: Any, *, ir_version: int = IR_VERSION, props: Mapping[str, str] | None = None) -> bytes:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="tests")
    model.ir_version = ir_version
    for k, v in (props or {}).items():
        entry = model.metadata_props.add()
        entry.key, entry.value = k, v
    onnx.checker.check_model(model)
    return bytes(model.SerializeToString())


def with_ir_version(data: bytes, ir_version: int) -> bytes:
    """The same model with another IR version."""
    model = onnx.load_from_string(data)
    model.ir_version = ir_version
    return bytes(model.SerializeToString())


def with_props(data: bytes, props: Mapping[str, str]) -> bytes:
    """The same model with ``metadata_props``."""
    model = onnx.load_from_string(data)
    for k, v in props.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = k, v
    return bytes(model.SerializeToString())


def reference_step(
    weights: Mapping[str, np.ndarray],
    order: Sequence[str],
    feed: Mapping[str, np.ndarray],
    carry: Sequence[int],
) -> tuple[np.ndarray, np.ndarray]:
    """NumPy version of `step_graph`."""
    x = np.concatenate([np.asarray(feed[n], np.float32).reshape(-1) for n in order])[None]
    action = np.tanh(x @ weights["Wa"])[0]
    nxt = np.tanh(x @ weights["Wc"]).reshape(list(carry))
    return action, nxt


def write_archive(path: Path, members: Sequence[tuple[str, bytes]]) -> Path:
    """A gzip tar with ``members`` in order, as kinfer's ``pack`` writes it."""
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0) as gz, tarfile.open(fileobj=gz, mode="w") as tar:
        for name, blob in members:
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(blob), 0o644
            tar.addfile(info, io.BytesIO(blob))
    path.write_bytes(buf.getvalue())
    return path


def metadata_bytes(meta: Mapping[str, Any]) -> bytes:
    """``metadata.json`` content."""
    return json.dumps(dict(meta)).encode()
