"""The Arrow side of a LeRobot export: column types, Hugging Face feature JSON, meta tables,
and Parquet files written a row group of several episodes at a time (`RowGroupFile`).

A LeRobot feature of shape ``(1,)`` is a plain column, ``(N,)`` a fixed-size list, 2 to 5
dimensions nested lists (the storage of ``datasets.Array2D`` ... ``Array5D``), and an
``image`` a ``{bytes, path}`` struct (``datasets.Image``). The ``huggingface`` schema
metadata records those ``datasets`` features, as LeRobot's own files do.

Arrays are built from NumPy buffers (``pa.Array.from_buffers``), never by ``pa.array`` or
``Table.from_pylist``: pyarrow converts NumPy and Python values through its pandas shim,
which imports pandas on first use (a large import) and drops a Ctrl-C or SIGTERM that
lands meanwhile.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

import numpy as np

from kinodb._version import __version__


@dataclass(frozen=True, slots=True)
class Feature:
    """One LeRobot feature and the kinodb data it holds.

    Attributes:
        key: the LeRobot feature name (``action``, ``observation.images.front``, ...).
        source: the kinodb array or camera it comes from ("" for LeRobot's own columns).
        dtype: a NumPy dtype name, or ``"video"`` / ``"image"`` for cameras.
        shape: the per-frame shape: ``(1,)`` for scalars, ``(H, W, C)`` for cameras.
        names: ``info.json`` names: one per element, a dict of such lists per
            component, or None.
    """

    key: str
    source: str
    dtype: str
    shape: tuple[int, ...]
    names: list[str] | dict[str, list[str]] | None = None

    @property
    def is_camera(self) -> bool:
        """Whether this is a video or image feature."""
        return self.dtype in ("video", "image")

    def info(self) -> dict[str, Any]:
        """The feature's ``info.json`` entry (without a video's ``info`` block)."""
        return {"dtype": self.dtype, "shape": list(self.shape), "names": self.names}


def element_names(
    part: dict[str, Any], dim: int
) -> tuple[list[str], list[tuple[int, int, str]], bool] | None:
    """The element names a LeRobot export gives a schema part of ``actions`` or ``states``.

    Returns ``(names, components, tiles)``: the part's ``names``, else names spelt from its
    components (``eef_0``, ``eef_1``, ...; ``dim_k`` between them); the components as
    sorted ``(start, stop, name)``; whether they tile ``[0, dim)``. None without either.
    The ingest of an export reads the names back by the same rule.
    """
    given = part.get("names")
    comps = sorted((int(a), int(b), str(name)) for name, (a, b) in (part.get("components") or {}).items())
    if isinstance(given, list) and len(given) == dim:
        names = [str(n) for n in given]
    elif comps:
        names = [f"dim_{k}" for k in range(dim)]
        for a, b, name in comps:
            for k in range(a, min(b, dim)):
                names[k] = name if b - a == 1 else f"{name}_{k - a}"
    else:
        return None
    tiles = bool(comps) and comps[0][0] == 0 and comps[-1][1] == dim and all(
        p[1] == q[0] for p, q in pairwise(comps)
    )  # fmt: skip
    return names, comps, tiles


def arrow_type(feature: Feature, pa: Any) -> Any:
    """The Arrow type of ``feature``'s data column."""
    if feature.dtype == "image":
        return pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    t = pa.from_numpy_dtype(np.dtype(feature.dtype))
    if feature.shape == (1,):
        return t
    if len(feature.shape) == 1:
        return pa.list_(t, feature.shape[0])
    for _ in feature.shape:
        t = pa.list_(t)
    return t


def hf_feature(feature: Feature) -> dict[str, Any]:
    """The ``datasets`` feature JSON of ``feature`` (as LeRobot's ``get_hf_features_from_features``)."""
    if feature.dtype == "image":
        return {"_type": "Image"}
    value = {"dtype": feature.dtype, "_type": "Value"}
    if feature.shape == (1,):
        return value
    if len(feature.shape) == 1:
        return {"feature": value, "length": feature.shape[0], "_type": "List"}
    return {"shape": list(feature.shape), "dtype": feature.dtype, "_type": f"Array{len(feature.shape)}D"}


def data_schema(features: list[Feature], pa: Any) -> Any:
    """The schema of the data files: every non-video feature, with ``huggingface`` metadata."""
    stored = [f for f in features if f.dtype != "video"]
    hf = {"info": {"features": {f.key: hf_feature(f) for f in stored}}}
    return pa.schema(
        [(f.key, arrow_type(f, pa)) for f in stored],
        metadata={"huggingface": json.dumps(hf)},
    )


def numpy_array(values: np.ndarray, pa: Any) -> Any:
    """NumPy values, flattened, as an Arrow array over their buffer (bools bit-packed).

    Copies only where Arrow cannot take the buffer as it is: non-contiguous, unaligned or
    big-endian values.
    """
    flat = values.reshape(-1)
    if flat.dtype == np.bool_:
        bits = np.packbits(flat, bitorder="little")
        return pa.Array.from_buffers(pa.bool_(), len(flat), [None, pa.py_buffer(bits)])
    flat = np.require(flat, flat.dtype.newbyteorder("<"), ["C", "A"])
    return pa.Array.from_buffers(pa.from_numpy_dtype(flat.dtype), len(flat), [None, pa.py_buffer(flat)])


def list_column(values: np.ndarray, pa: Any) -> Any:
    """``(N, *shape)`` values as N rows of nested variable-size lists (one level per dimension)."""
    column = numpy_array(values, pa)
    for d in reversed(values.shape[1:]):
        column = _lists(column, len(column) // d, d, pa)
    return column


def _lists(values: Any, rows: int, size: int, pa: Any) -> Any:
    """``values`` cut into ``rows`` lists of ``size`` each (int32 offsets, as ``pa.list_``)."""
    offsets = numpy_array(np.arange(0, rows * size + 1, size, dtype=np.int32), pa)
    return pa.ListArray.from_arrays(offsets, values)


def array_column(values: np.ndarray, feature: Feature, pa: Any) -> Any:
    """``(T, *shape)`` values as one Arrow column of ``feature``'s type (no per-frame loop)."""
    if feature.shape == (1,):
        return numpy_array(values, pa)
    if len(feature.shape) == 1:
        return pa.FixedSizeListArray.from_arrays(numpy_array(values, pa), feature.shape[0])
    return list_column(values.reshape(len(values), *feature.shape), pa)


_BINARY_LIMIT = 2**31 - 1  # the most bytes one binary or string array holds (int32 offsets)


def binary_array(items: list[bytes], pa: Any, type_: Any = None) -> Any:
    """Byte strings as one Arrow ``binary`` (or ``type_``: ``string``) array of their bytes.

    Raises:
        ValueError: they hold more than 2 GiB, more than one array holds.
    """
    lengths = np.fromiter(map(len, items), np.int64, len(items))
    offsets = np.zeros(len(items) + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    if offsets[-1] > _BINARY_LIMIT:
        raise ValueError(f"{offsets[-1]} bytes do not fit one arrow array (at most {_BINARY_LIMIT})")
    data = pa.py_buffer(b"".join(items))
    return pa.Array.from_buffers(
        pa.binary() if type_ is None else type_,
        len(items),
        [None, pa.py_buffer(offsets.astype(np.int32)), data],
    )


def string_array(texts: list[str], pa: Any) -> Any:
    """Texts as one Arrow ``string`` array (UTF-8)."""
    return binary_array([t.encode("utf-8") for t in texts], pa, pa.string())


def image_column(blobs: list[bytes], paths: list[str], pa: Any) -> Any:
    """Encoded frames as a ``datasets.Image`` column: ``{bytes, path}`` structs.

    One array, or a chunked array when the frames hold more bytes than one array can.
    """
    names = [p.encode("utf-8") for p in paths]
    chunks, start, size = [], 0, 0
    for end, (blob, name) in enumerate(zip(blobs, names, strict=True)):
        if end > start and size + len(blob) + len(name) > _BINARY_LIMIT:
            chunks.append((start, end))
            start, size = end, 0
        size += len(blob) + len(name)
    chunks.append((start, len(blobs)))
    parts = [
        pa.StructArray.from_arrays(
            [binary_array(blobs[a:b], pa), binary_array(names[a:b], pa, pa.string())], names=["bytes", "path"]
        )
        for a, b in chunks
    ]
    return parts[0] if len(parts) == 1 else pa.chunked_array(parts)


def rows_table(rows: list[dict[str, Any]], pa: Any) -> Any:
    """Rows of one set of keys as a table, typed as ``Table.from_pylist`` types Python values.

    Values are ints (int64), floats (float64), texts, lists of texts, or NumPy arrays of
    one shape per key (nested lists: bool, int64 (uint64 past its range) or float64, as
    their ``tolist()`` would be).
    """
    if not rows:
        return pa.Table.from_arrays([], names=[])
    names = list(rows[0])
    return pa.Table.from_arrays([_row_column([row[k] for row in rows], pa) for k in names], names=names)


def _row_column(values: list[Any], pa: Any) -> Any:
    first = values[0]
    if isinstance(first, np.ndarray):
        stacked = np.stack(values)
        if stacked.dtype.kind == "u" and stacked.size and int(stacked.max()) > np.iinfo(np.int64).max:
            return list_column(stacked.astype(np.uint64), pa)  # Python ints past int64 (as tolist gives)
        if stacked.dtype.kind in "iu":
            return list_column(stacked.astype(np.int64, copy=False), pa)
        return list_column(
            stacked if stacked.dtype == np.bool_ else stacked.astype(np.float64, copy=False), pa
        )
    if isinstance(first, bool):
        return numpy_array(np.array(values, np.bool_), pa)
    if isinstance(first, int):
        return numpy_array(np.array(values, np.int64), pa)
    if isinstance(first, float):
        return numpy_array(np.array(values, np.float64), pa)
    if isinstance(first, str):
        return string_array(values, pa)
    if isinstance(first, list):  # lists of texts
        texts = string_array([t for v in values for t in v], pa)
        offsets = np.zeros(len(values) + 1, np.int64)
        np.cumsum([len(v) for v in values], out=offsets[1:])
        return pa.ListArray.from_arrays(numpy_array(offsets.astype(np.int32), pa), texts)
    raise TypeError(f"no arrow column for values of type {type(first).__name__}")


def tasks_table(tasks: list[str], pa: Any) -> Any:
    """``meta/tasks.parquet``: a pandas frame indexed by the task text, one column ``task_index``.

    Laid out as pandas writes it (LeRobot reads it with ``pd.read_parquet``), without
    needing pandas: the index is the column ``__index_level_0__`` named in the ``pandas``
    schema metadata.
    """
    pandas_meta = {
        "index_columns": ["__index_level_0__"],
        "column_indexes": [{"name": None, "field_name": None, "pandas_type": "unicode",
                            "numpy_type": "object", "metadata": {"encoding": "UTF-8"}}],
        "columns": [
            {"name": "task_index", "field_name": "task_index", "pandas_type": "int64",
             "numpy_type": "int64", "metadata": None},
            {"name": None, "field_name": "__index_level_0__", "pandas_type": "unicode",
             "numpy_type": "object", "metadata": None},
        ],
        "attributes": {},
        "creator": {"library": "kinodb", "version": __version__},
    }  # fmt: skip
    schema = pa.schema(
        [("task_index", pa.int64()), ("__index_level_0__", pa.string())],
        metadata={"pandas": json.dumps(pandas_meta)},
    )
    codes = numpy_array(np.arange(len(tasks), dtype=np.int64), pa)
    return pa.Table.from_arrays([codes, string_array(tasks, pa)], schema=schema)


# Small tables held for a row group are joined into one this often (tables, bytes).
_JOIN_TABLES = 64
_JOIN_BYTES = 256 * 2**10


class RowGroupFile:
    """A Parquet file written a row group at a time: tables are held until the next would
    take the rows past ``max_rows`` or (as Arrow counts them) ``max_bytes``.

    A ``ParquetWriter`` keeps every row group's metadata until its file closes, and readers
    pay for each row group, so short episodes are gathered, not written one by one. Small
    tables are joined every `_JOIN_TABLES` tables or `_JOIN_BYTES` bytes (into Arrow's
    memory, dropping the NumPy arrays and Arrow objects of each), so what is held stays
    within the limits whatever the number of episodes. The file is created with the first
    row group, its schema that of the tables.
    """

    def __init__(self, path: str, pa: Any, pq: Any, *, max_rows: int, max_bytes: float,
                 **options: Any) -> None:  # fmt: skip
        self._path, self._pa, self._pq, self._options = path, pa, pq, options
        self._max_rows, self._max_bytes = max_rows, max_bytes
        self._writer: Any = None
        self._joined: list[Any] = []
        self._small: list[Any] = []
        self._small_bytes = 0
        self._rows = 0
        self._bytes = 0

    def add(self, table: Any) -> None:
        """Append ``table``'s rows, writing those held first when they would make too many."""
        rows, size = int(table.num_rows), int(table.nbytes)
        held = self._rows or self._joined or self._small
        if held and (self._rows + rows > self._max_rows or self._bytes + size > self._max_bytes):
            self.flush()
        if size >= _JOIN_BYTES:
            self._join()
            self._joined.append(table)
        else:
            self._small.append(table)
            self._small_bytes += size
            if len(self._small) >= _JOIN_TABLES or self._small_bytes >= _JOIN_BYTES:
                self._join()
        self._rows += rows
        self._bytes += size

    def _join(self) -> None:
        if self._small:
            self._joined.append(self._pa.concat_tables(self._small).combine_chunks())
            self._small, self._small_bytes = [], 0

    def flush(self) -> None:
        """Write the rows held as one row group; rows past the limits (one table that alone
        exceeds them) as even row groups within them."""
        self._join()
        if not self._joined:
            return
        table, size = self._pa.concat_tables(self._joined), self._bytes
        self._joined, self._rows, self._bytes = [], 0, 0
        if self._writer is None:
            os.makedirs(os.path.dirname(self._path), exist_ok=True)
            self._writer = self._pq.ParquetWriter(self._path, table.schema, **self._options)
        by_bytes = int(table.num_rows * self._max_bytes // max(size, 1))  # as `add` counts them
        groups = -(-table.num_rows // max(1, min(self._max_rows, by_bytes)))
        self._writer.write_table(table, row_group_size=-(-table.num_rows // groups))

    def close(self, *, flush: bool = True) -> None:
        """Write the rows held (unless not ``flush``: they are dropped) and close the file."""
        try:
            if flush:
                self.flush()
        finally:
            self._joined, self._small, self._small_bytes, self._rows, self._bytes = [], [], 0, 0, 0
            if self._writer is not None:
                self._writer.close()
                self._writer = None
