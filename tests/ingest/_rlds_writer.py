"""A test-only RLDS/TFDS writer, written from the specs and sharing no code with kinodb.

TFRecord framing (tensorflow/core/lib/io/record_writer.cc): uint64 length, masked CRC-32C
of the length, data, masked CRC-32C of the data. The CRC is computed bit by bit here.
Example protobuf (tensorflow/core/example/{example,feature}.proto) is encoded by hand;
``packed=False`` writes repeated floats and ints one field at a time, as old writers did.
``features.json`` and ``dataset_info.json`` follow what TFDS writes (see the Bridge
sample): int64 fields as strings, shard lengths per shard, each the shard's number of
records (TFDS examples: episodes, or steps where a record is one step).
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

Value = Any  # list[bytes] | np.ndarray (float -> FloatList, int/bool -> Int64List)


def _crc_table() -> list[int]:
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_TABLE = _crc_table()


def crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for b in data:
        crc = _TABLE[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def masked(data: bytes) -> int:
    c = crc32c(data)
    return (((c >> 15) | (c << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def record(data: bytes) -> bytes:
    head = struct.pack("<Q", len(data))
    return head + struct.pack("<I", masked(head)) + data + struct.pack("<I", masked(data))


# -- protobuf -----------------------------------------------------------------------------


def varint(n: int) -> bytes:
    n &= (1 << 64) - 1  # negative int64 values take ten bytes
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def field(number: int, payload: bytes) -> bytes:
    """A length-delimited field."""
    return varint((number << 3) | 2) + varint(len(payload)) + payload


def feature(value: Value, *, packed: bool = True) -> bytes:
    if isinstance(value, (list, tuple)):
        return field(1, b"".join(field(1, bytes(v)) for v in value))
    arr = np.asarray(value).reshape(-1)
    if arr.dtype.kind == "f":
        if packed:
            return field(2, field(1, arr.astype("<f4").tobytes()))
        return field(2, b"".join(b"\x0d" + struct.pack("<f", float(v)) for v in arr))
    ints = [int(v) for v in arr.tolist()]
    if packed:
        return field(3, field(1, b"".join(varint(v) for v in ints)))
    return field(3, b"".join(b"\x08" + varint(v) for v in ints))


def example(features: Mapping[str, Value], *, packed: bool = True) -> bytes:
    entries = b"".join(
        field(1, field(1, key.encode()) + field(2, feature(value, packed=packed)))
        for key, value in features.items()
    )
    return field(1, entries)


# -- episodes -----------------------------------------------------------------------------


def episode_example(ep: Mapping[str, Value], *, packed: bool = True) -> bytes:
    """One record per episode: per-step features flattened under ``steps/``."""
    return example(ep, packed=packed)


def step_examples(ep: Mapping[str, Value], T: int) -> list[bytes]:
    """One record per step: ``steps/`` dropped, episode-level features on every step."""
    out = []
    for t in range(T):
        feats: dict[str, Value] = {}
        for key, value in ep.items():
            if not key.startswith("steps/"):
                feats[key] = value
            elif isinstance(value, list):
                feats[key[6:]] = [value[t]]
            else:
                arr = np.asarray(value)
                feats[key[6:]] = arr.reshape(T, -1)[t]
        out.append(example(feats))
    return out


def write_shard(path: Path, records: Sequence[bytes]) -> None:
    path.write_bytes(b"".join(record(r) for r in records))


# -- TFDS metadata ------------------------------------------------------------------------

_PY = "tensorflow_datasets.core.features."


def tensor(shape: Sequence[int], dtype: str) -> dict[str, Any]:
    cls = "scalar.Scalar" if not shape else "tensor_feature.Tensor"
    return {"pythonClassName": _PY + cls,
            "tensor": {"shape": {"dimensions": [str(d) for d in shape]}, "dtype": dtype, "encoding": "none"}}  # fmt: skip


def image(shape: Sequence[int], encoding: str) -> dict[str, Any]:
    return {"pythonClassName": _PY + "image_feature.Image",
            "image": {"shape": {"dimensions": [str(d) for d in shape]}, "dtype": "uint8", "encodingFormat": encoding}}  # fmt: skip


def text() -> dict[str, Any]:
    return {"pythonClassName": _PY + "text_feature.Text", "text": {}}


def features_dict(children: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "pythonClassName": _PY + "features_dict.FeaturesDict",
        "featuresDict": {"features": dict(children)},
    }


def dataset(step: Mapping[str, Any]) -> dict[str, Any]:
    return {"pythonClassName": _PY + "dataset_feature.Dataset",
            "sequence": {"feature": features_dict(step), "length": "-1"}}  # fmt: skip


def write_tfds(
    root: Path,
    name: str,
    splits: Mapping[str, Sequence[Sequence[bytes]]],
    features: Mapping[str, Any] | None,
    *,
    template: str | None = "{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}",
    info: bool = True,
) -> Path:
    """Write ``splits`` ({split: [records of shard 0, records of shard 1, ...]}) as a TFDS folder;
    ``dataset_info.json``'s shard lengths count the records, as TFDS's do."""
    root.mkdir(parents=True, exist_ok=True)
    entries = []
    for split, shards in splits.items():
        n = len(shards)
        for i, records in enumerate(shards):
            pattern = template or "{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}"
            fname = (pattern.replace("{DATASET}", name).replace("{SPLIT}", split).replace("{FILEFORMAT}", "tfrecord")
                     .replace("{SHARD_X_OF_Y}", f"{i:05d}-of-{n:05d}").replace("{SHARD_INDEX}", f"{i:05d}"))  # fmt: skip
            write_shard(root / fname, records)
        lengths = [len(r) for r in shards]
        entry: dict[str, Any] = {"name": split, "numBytes": "0", "shardLengths": [str(n) for n in lengths]}
        if template is not None:
            entry["filepathTemplate"] = template
        entries.append(entry)
    if info:
        meta = {"name": name, "version": "1.0.0", "fileFormat": "tfrecord", "splits": entries,
                "description": "test data", "moduleName": "test"}  # fmt: skip
        (root / "dataset_info.json").write_text(json.dumps(meta, indent=2))
    if features is not None:
        (root / "features.json").write_text(json.dumps(features_dict(features), indent=2))
    return root


# -- an independent reader, for expected values from real files ---------------------------


def _read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    shift = value = 0
    while True:
        b = buf[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        shift += 7
        if b < 0x80:
            return value, pos


def _fields(buf: bytes) -> list[tuple[int, int, Any]]:
    out, pos = [], 0
    while pos < len(buf):
        tag, pos = _read_varint(buf, pos)
        number, wire = tag >> 3, tag & 7
        value: Any
        if wire == 0:
            value, pos = _read_varint(buf, pos)
        elif wire == 2:
            n, pos = _read_varint(buf, pos)
            value, pos = buf[pos : pos + n], pos + n
        elif wire == 5:
            value, pos = buf[pos : pos + 4], pos + 4
        elif wire == 1:
            value, pos = buf[pos : pos + 8], pos + 8
        else:
            raise ValueError(f"wire type {wire}")
        out.append((number, wire, value))
    return out


def decode_example(buf: bytes) -> dict[str, list[Any]]:
    """``{name: values}`` with bytes, floats (Python float of the float32) or ints."""
    out: dict[str, list[Any]] = {}
    for _, _, features in _fields(buf):
        for _, _, entry in _fields(features):
            parts = dict((n, v) for n, _, v in _fields(entry))
            values: list[Any] = []
            for kind, _, lst in _fields(parts.get(2, b"")):
                for _, wire, v in _fields(lst):
                    if kind == 1:
                        values.append(bytes(v))
                    elif kind == 2:
                        values += list(struct.unpack(f"<{len(v) // 4}f", v))
                    elif wire == 2:
                        pos = 0
                        while pos < len(v):
                            n, pos = _read_varint(v, pos)
                            values.append(n - (1 << 64) if n >= 1 << 63 else n)
                    else:
                        values.append(v - (1 << 64) if v >= 1 << 63 else v)
            out[parts[1].decode()] = values
    return out


def read_records(path: Path) -> list[bytes]:
    """Every record's data (no CRC check: the code under test checks them)."""
    buf, pos, out = path.read_bytes(), 0, []
    while pos < len(buf):
        (n,) = struct.unpack_from("<Q", buf, pos)
        out.append(buf[pos + 12 : pos + 12 + n])
        pos += 16 + n
    return out
