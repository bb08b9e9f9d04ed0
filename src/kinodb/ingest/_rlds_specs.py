"""RLDS feature specs: what each TFDS feature is, from ``features.json`` or a record.

A `Spec` describes one flattened feature (``steps/observation/image_0``): its kind,
per-step shape and dtype, and how TFDS stores it (an image encoding; a tensor stored as
bytes, ``encoding='bytes'`` or ``'zlib'``). `flatten_features` reads them from
``features.json``; `infer_spec` from the first record when there is none. `Disagrees` is
the error of a record whose feature is not as its spec says.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from kinodb.errors import ConversionError
from kinodb.ingest._example import FeatureValue
from kinodb.kdb import _codecs

STEPS = "steps/"
_KINDS = {"Image": "image", "Text": "text", "ClassLabel": "int"}
TENSOR_ENCODINGS = ("bytes", "zlib")  # TFDS tensors stored as bytes: tobytes(), then zlib.compress for zlib


class Disagrees(ConversionError):
    """A record's feature is not as its spec says: `convert` adds where the spec came from
    (``features.json``, else the first record) and what to do."""


@dataclass(frozen=True, slots=True)
class Spec:
    """One flattened feature.

    Attributes:
        key: flat name, e.g. ``steps/action``.
        kind: ``image``, ``text``, ``float``, ``int`` or ``bool``.
        shape: per-step shape for ``steps/`` features, whole shape otherwise; None where
            a dimension is unknown.
        dtype: declared dtype (``float32``, ``int32``, ``bool``, ``uint8`` ...), if any.
        encoding: ``jpeg``/``png`` for images, if declared; for a tensor TFDS stores as
            bytes, its tensor encoding (``bytes``, ``zlib``).
        listed: an episode-level feature that is a list (kept a list of any length).
        ragged: a per-step feature whose steps hold lists of their own lengths, or an
            episode-level list of lists (TFDS stores both as flat values and row lengths).
        channels: an image's declared channel count (also when height and width are not).
        dims: a tensor's declared dimensions, -1 where unknown (of each element, in a
            ``Sequence``); None where not declared.
        sequence: an episode-level ``Sequence`` of such tensors (a list of them).
        problem: why this reader cannot decode the feature (it is then left out), if so.
    """

    key: str
    kind: str
    shape: tuple[int, ...] | None = None
    dtype: str | None = None
    encoding: str | None = None
    listed: bool = False  # a list of values (a Sequence, or a tensor with dimensions)
    ragged: bool = False  # per step, a list of its own length (a Sequence inside steps)
    channels: int | None = None
    dims: tuple[int, ...] | None = None
    sequence: bool = False
    problem: str | None = None

    @property
    def as_bytes(self) -> bool:
        """A tensor TFDS stores as bytes, one entry per value (per step, per list element)."""
        return self.encoding in TENSOR_ENCODINGS

    @property
    def dynamic(self) -> bool:
        """A tensor stored as bytes with several unknown dimensions: its record holds its shape
        (``KEY/shape``) beside the bytes (``KEY/value``), as TFDS writes one."""
        return self.as_bytes and not self.sequence and self.dims is not None and self.dims.count(-1) > 1

    @property
    def width(self) -> int | None:
        """Values per step (per episode for episode-level features), if known."""
        return None if self.shape is None else math.prod(self.shape)

    def describe(self) -> dict[str, Any]:
        """JSON for the dataset metadata."""
        out: dict[str, Any] = {"kind": self.kind}
        if self.shape is not None:
            out["shape"] = list(self.shape)
        if self.dtype:
            out["dtype"] = self.dtype
        if self.encoding:
            out["encoding"] = self.encoding
        if self.channels is not None and self.shape is None:
            out["channels"] = self.channels
        return out


# -- features.json ------------------------------------------------------------------------


def _kind(node: Mapping[str, Any]) -> tuple[str | None, dict[str, Any]]:
    cls = str(node.get("pythonClassName", "")).rsplit(".", 1)[-1]
    if cls == "Image":
        return "image", dict(node.get("image", {}))
    if cls in _KINDS:
        return _KINDS[cls], dict(node.get("text", node.get("tensor", {})))
    tensor = dict(node.get("tensor", {}))
    dtype = str(tensor.get("dtype", ""))
    if dtype == "bool":
        return "bool", tensor
    if dtype.startswith(("float", "bfloat")):
        return "float", tensor
    if dtype.startswith(("int", "uint")):
        return "int", tensor
    if dtype == "string":
        return "text", tensor
    return None, tensor


def _dims(info: Mapping[str, Any]) -> tuple[int, ...] | None:
    """Declared dimensions, -1 where unknown (TFDS writes ``None`` as -1)."""
    dims = info.get("shape", {}).get("dimensions", [])
    try:
        return tuple(max(-1, int(d)) for d in dims)
    except (TypeError, ValueError):
        return None


def _shape(info: Mapping[str, Any]) -> tuple[int, ...] | None:
    shape = _dims(info)
    return None if shape is None or any(d < 0 for d in shape) else shape


def shown(dims: tuple[int, ...] | None) -> str:
    """Dimensions as TFDS prints them: ``(None, 3)``."""
    if dims is None:
        return "unknown"
    return str(tuple(None if d < 0 else d for d in dims))


def decode_dtype(name: str | None) -> np.dtype[Any] | None:
    """The little-endian NumPy dtype of a tensor TFDS stores as bytes (``arr.tobytes()`` on a
    little-endian machine), or None where NumPy has none to decode it into (``bfloat16``,
    ``string``)."""
    try:
        dtype = np.dtype(name or "")
    except TypeError:
        return None
    return dtype.newbyteorder("<") if dtype.kind in "biuf" else None


def _bytes_spec(key: str, kind: str | None, info: Mapping[str, Any], encoding: str, lists: int) -> Spec:
    """A tensor TFDS stores as bytes (``encoding`` ``bytes`` or ``zlib``): one entry per value,
    per step, or per element of an episode-level ``Sequence``; its ``problem`` set where
    this reader cannot decode it."""
    dtype = str(info.get("dtype") or "") or None
    dims = _dims(info)
    shape = _shape(info)
    steps = key.startswith(STEPS)
    how = f"stored as bytes (encoding {encoding!r})"
    problem = None
    if encoding not in TENSOR_ENCODINGS:
        problem = f"a tensor of encoding {encoding!r}, which this reader does not know (TFDS writes 'none', 'bytes', 'zlib')"
    elif kind not in ("float", "int", "bool") or decode_dtype(dtype) is None:
        problem = f"a {dtype or 'untyped'} tensor {how}; this reader decodes bool, integer and float tensors of NumPy dtypes"
    elif shape is None and steps:
        problem = (
            f"a tensor of shape {shown(dims)} {how} at every step: each step may hold another shape, "
            "and a .kdb array has one shape per episode"
        )
    elif shape is None and lists:
        problem = f"a list of tensors of shape {shown(dims)} {how}: each may hold another shape"
    listed = bool(lists) or bool(dims)
    return Spec(key, kind or "unknown", shape, dtype, encoding, listed=listed, dims=dims,
                sequence=bool(lists) and not steps, problem=problem)  # fmt: skip


def flatten_features(
    node: Mapping[str, Any],
    prefix: str,
    out: dict[str, Spec],
    *,
    steps: bool = False,
    lists: int = 0,
    unknown: set[str] | None = None,
) -> None:
    """Add every leaf of a ``features.json`` node to ``out`` under ``prefix``.

    ``steps``: ``node`` is the episode's ``steps`` dataset, whose sequence is the steps
    themselves; any other sequence around a leaf makes it a list (``listed``, or
    ``ragged`` under ``steps/``). ``unknown`` collects the keys of leaves of a feature
    class this reader does not know (classified from the records instead).

    A tensor TFDS stores as bytes (encoding ``bytes`` or ``zlib``) is decoded as TFDS does;
    where this reader cannot, its spec's ``problem`` says why (it is then left out).
    """
    cls = str(node.get("pythonClassName", "")).rsplit(".", 1)[-1]
    if cls == "FeaturesDict" or "featuresDict" in node:
        for name, child in node.get("featuresDict", {}).get("features", {}).items():
            flatten_features(child, f"{prefix}{name}/", out, lists=lists, unknown=unknown)
        return
    if cls in ("Dataset", "Sequence") or "sequence" in node:
        inner = node.get("sequence", {}).get("feature", {})
        flatten_features(inner, prefix, out, lists=lists if steps else lists + 1, unknown=unknown)
        return
    key = prefix.rstrip("/")
    kind, info = _kind(node)
    # TFDS writes a feature inside two sequences (the steps count as one) ragged
    if (lists and key.startswith(STEPS)) or lists > 1:
        out[key] = Spec(key, kind or "unknown", None, info.get("dtype") or None, ragged=True)
        return
    tensor_encoding = str(info.get("encoding") or "none") if kind != "image" else "none"
    if tensor_encoding != "none":
        out[key] = _bytes_spec(key, kind, info, tensor_encoding, lists)
        return
    if kind is None:  # unknown feature class: classified from the records instead
        if unknown is not None:
            unknown.add(key)
        return
    shape = _shape(info) if kind != "text" else _text_shape(info) if key.startswith(STEPS) else ()
    channels = _channels(info) if kind == "image" else None
    if kind == "image" and shape is not None and len(shape) != 3:
        shape = None
    encoding = info.get("encodingFormat") if kind == "image" else None
    listed = bool(lists) or (kind != "text" and bool(info.get("shape", {}).get("dimensions")))
    dims = _dims(info) if kind in ("float", "int", "bool") else None
    out[key] = Spec(
        key, kind, shape, info.get("dtype") or None, encoding or None, listed=listed, channels=channels,
        dims=dims, sequence=bool(lists) and not key.startswith(STEPS),
    )  # fmt: skip


def _text_shape(info: Mapping[str, Any]) -> tuple[int, ...] | None:
    """A per-step text's shape: ``()`` for one text per step (a ``Text``, a string scalar, or
    a string tensor of one value), else its declared dimensions (None where unknown)."""
    shape = _shape(info)
    return () if shape is not None and math.prod(shape) == 1 else shape


def _channels(info: Mapping[str, Any]) -> int | None:
    """An image's declared channel count: the last of its three dimensions, if known."""
    dims = info.get("shape", {}).get("dimensions", [])
    try:
        c = int(dims[-1]) if len(dims) == 3 else 0
    except (TypeError, ValueError):
        return None
    return c if 1 <= c <= 4 else None


def infer_spec(key: str, value: FeatureValue, steps: int | None) -> Spec:
    """A feature's spec from its first decoded value (no ``features.json`` entry).

    ``steps`` is the episode's step count for ``steps/`` features; a width of one
    value per step is taken as a scalar.
    """
    if isinstance(value, list):
        kind = "image" if value and _codecs.sniff(value[0]) else "text"
        if kind == "image":
            return Spec(key, kind, None, None, _codecs.sniff(value[0]))
        n = len(value)
        per_step = n // steps if steps and n > steps and n % steps == 0 else 1
        return Spec(key, kind, () if per_step == 1 else (per_step,))  # several texts a step: left out
    kind = "float" if value.dtype.kind == "f" else "int"
    n = value.size if steps is None else (value.size // steps if steps else 0)
    return Spec(key, kind, () if n == 1 else (n,), "float32" if kind == "float" else "int64")
