"""The Arrow side of a LeRobot export: column types, Hugging Face feature JSON, meta tables.

A LeRobot feature of shape ``(1,)`` is a plain column, ``(N,)`` a fixed-size list, 2 to 5
dimensions nested lists (the storage of ``datasets.Array2D`` ... ``Array5D``), and an
``image`` a ``{bytes, path}`` struct (``datasets.Image``). The ``huggingface`` schema
metadata records those ``datasets`` features, as LeRobot's own files do.
"""

from __future__ import annotations

import json
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


def array_column(values: np.ndarray, feature: Feature, pa: Any) -> Any:
    """``(T, *shape)`` values as one Arrow column of ``feature``'s type (no per-frame loop)."""
    flat = pa.array(np.ascontiguousarray(values).reshape(-1), type=pa.from_numpy_dtype(values.dtype))
    if feature.shape == (1,):
        return flat
    if len(feature.shape) == 1:
        return pa.FixedSizeListArray.from_arrays(flat, feature.shape[0])
    column = flat
    for d in reversed(feature.shape):
        rows = len(column) // d
        column = pa.ListArray.from_arrays(pa.array(np.arange(0, rows * d + 1, d, dtype=np.int32)), column)
    return column


def image_column(blobs: list[bytes], paths: list[str], pa: Any) -> Any:
    """Encoded frames as a ``datasets.Image`` column: ``{bytes, path}`` structs."""
    return pa.StructArray.from_arrays(
        [pa.array(blobs, type=pa.binary()), pa.array(paths, type=pa.string())], names=["bytes", "path"]
    )


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
    return pa.table([pa.array(range(len(tasks)), pa.int64()), pa.array(tasks, pa.string())], schema=schema)


def split_rows(table: Any, limit_bytes: int) -> list[Any]:
    """``table`` cut into consecutive slices of at most about ``limit_bytes`` each."""
    n = table.num_rows
    per_row = max(table.nbytes / max(n, 1), 1.0)
    rows = max(1, int(limit_bytes // per_row))
    return [table.slice(start, rows) for start in range(0, max(n, 1), rows)]
