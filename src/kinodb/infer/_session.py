"""ONNX Runtime sessions tuned for one small policy step at a time."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from kinodb._optional import require
from kinodb.infer._errors import InferError, NotOnnxError, describe_start


def onnxruntime() -> Any:
    """The onnxruntime module, or `MissingExtraError` naming the ``infer`` extra."""
    return require("onnxruntime", extra="infer")


def session_options() -> Any:
    """Options for latency: one intra-op thread, sequential execution, full graph optimisation.

    The default intra-op pool spins its threads after each run; on a few cores that
    competes with the control loop and costs milliseconds at the tail.
    """
    ort = onnxruntime()
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.log_severity_level = 3
    return opts


def make_session(data: bytes, where: str, *, providers: Sequence[str] | None) -> Any:
    """An `InferenceSession` over ONNX bytes; ORT's load errors become `InferError`.

    Raises:
        NotOnnxError: the bytes are not an ONNX model at all (protobuf parsing failed).
        InferError: ONNX Runtime cannot load the graph (``where`` names the file and member).
    """
    ort = onnxruntime()
    try:
        return ort.InferenceSession(
            data, session_options(), providers=list(providers) if providers else ["CPUExecutionProvider"]
        )
    except Exception as exc:  # ORT raises its own exception types (Fail, InvalidGraph, ...)
        if type(exc).__name__ == "InvalidProtobuf":
            raise NotOnnxError(
                f"{where}: not an ONNX model (ONNX Runtime cannot parse it: protobuf parsing failed); "
                f"{describe_start(data)}"
            ) from None
        text = " ".join(str(exc).split())
        raise InferError(f"{where}: ONNX Runtime cannot load it: {text}") from None
