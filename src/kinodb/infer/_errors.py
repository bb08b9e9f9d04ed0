"""The errors that policy loading, export and the runtime raise, and what their messages show."""

from __future__ import annotations

from kinodb.errors import KinodbError


class InferError(KinodbError, ValueError):
    """A policy package, a model's contract or an observation is invalid.

    The message names the file, the archive member, the input and the expected shape.
    """


class NotOnnxError(InferError):
    """Bytes that ONNX Runtime cannot parse as an ONNX model at all (not a protobuf ``ModelProto``)."""


# File signatures of what is often given by mistake where a policy belongs.
KNOWN_MAGIC = (
    (b"KINO", "a kinodb .kdb file"),
    (b"\x89HDF\r\n\x1a\n", "an HDF5 file"),
    (b"PK\x03\x04", "a zip archive; a PyTorch checkpoint is one: export it with kinodb.infer.export_torch"),
    (b"PAR1", "a Parquet file"),
    (b"\x93NUMPY", "a NumPy .npy file"),
    (b"\x1f\x8b", "a gzip file"),
)


def describe_start(data: bytes) -> str:
    """What a file's first bytes show, for errors: ``it starts with b'KINO...' (a kinodb .kdb file)``."""
    if not data:
        return "it is empty (0 bytes)"
    what = next((name for magic, name in KNOWN_MAGIC if data.startswith(magic)), None)
    if what is None and data.lstrip()[:1] in (b"{", b"["):
        what = "JSON text"
    return f"it starts with {data[:8]!r}" + (f" ({what})" if what else "")
