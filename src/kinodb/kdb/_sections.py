"""The section directory: where each array and camera of each episode lives.

Two views of the same index columns, both checked against the file before any byte
is mapped: `episode_sections` decodes the rows of one episode (used for cameras and
validation), and `Locator` finds one array in an episode in O(1) from the usual row order
(the hot read path), so no read costs O(episodes).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from kinodb.errors import CorruptFileError
from kinodb.kdb._layout import CODECS, DATA_START, DTYPE_CODE, DTYPES, KIND_CAMERA

_DTYPES = [np.dtype(d) for d in DTYPES]


@dataclass(frozen=True, slots=True)
class Section:
    """One checked section row: an array, or a camera's offset table plus frames."""

    name: str
    kind: int
    dtype: np.dtype[Any]
    codec: str
    shape: tuple[int, ...]  # full shape; the first dim is the episode's frame count
    offset: int  # arrays: the data; cameras: the (T + 1) u64 frame-offset table
    nbytes: int  # arrays: the data; cameras: the offset table (the frames follow it)


def episode_sections(
    cols: Mapping[str, np.ndarray], names: list[str], i: int, size: int, path: str
) -> list[Section]:
    """Decode and check the section rows of episode ``i``.

    Raises:
        CorruptFileError: a row has a bad code or rank, or lies outside the file.
    """
    start, count = int(cols["sec_start"][i]), int(cols["sec_count"][i])
    T = int(cols["num_frames"][i])
    if start + count > len(cols["sec.name"]):
        raise CorruptFileError(f"{path}: episode {i}: section rows {start}..{start + count} do not exist")
    rows = slice(start, start + count)
    name, kind, dt, codec, ndim = (
        cols[k][rows].tolist() for k in ("sec.name", "sec.kind", "sec.dtype", "sec.codec", "sec.ndim")
    )
    dims, offs = cols["sec.dims"][rows].tolist(), cols["sec.offset"][rows].tolist()
    out = []
    for r in range(count):
        where = f"{path}: episode {i}, section row {start + r} (byte offset {offs[r]})"
        if name[r] >= len(names) or kind[r] > KIND_CAMERA or dt[r] >= len(DTYPES) or not 1 <= ndim[r] <= 4:
            raise CorruptFileError(f"{where}: bad name, kind, dtype or rank code; the index is damaged")
        trail = tuple(dims[r][: ndim[r] - 1])
        if any(dims[r][ndim[r] - 1 :]):
            raise CorruptFileError(f"{where}: dims beyond the rank are set; the index is damaged")
        shape = (T, *trail)
        if kind[r] == KIND_CAMERA:
            if ndim[r] != 4 or codec[r] >= len(CODECS) or min(trail) < 1 or trail[2] > 4:
                raise CorruptFileError(
                    f"{where}: camera has codec {codec[r]} and shape {shape}; the index is damaged"
                )
            nbytes = 8 * (T + 1)
        else:
            nbytes = math.prod(shape) * _DTYPES[dt[r]].itemsize
        if offs[r] < DATA_START or offs[r] + nbytes > size:
            raise CorruptFileError(f"{where}: {nbytes} bytes do not fit in the file ({size} bytes)")
        out.append(
            Section(
                names[name[r]],
                kind[r],
                _DTYPES[dt[r]],
                CODECS[codec[r]] if kind[r] else "raw",
                shape,
                offs[r],
                nbytes,
            )
        )
    return out


def int_view(arr: np.ndarray) -> Any:
    """Index access to an integer column that returns Python ints (fast, no copy)."""
    if sys.byteorder == "little" and arr.dtype.kind in "iu" and arr.flags.c_contiguous:
        fmt = (
            {1: "B", 2: "H", 4: "I", 8: "Q"}[arr.dtype.itemsize]
            if arr.dtype.kind == "u"
            else {1: "b", 2: "h", 4: "i", 8: "q"}[arr.dtype.itemsize]
        )
        return arr.reshape(-1).data.cast("B").cast(fmt)  # type: ignore[call-overload]
    return arr.reshape(-1).tolist()


@dataclass(frozen=True, slots=True)
class Locator:
    """Where array ``name`` sits in an episode whose rows follow the usual order.

    Writers put an episode's sections in one order, so an array is usually the
    ``k``-th row of every episode with the same dtype and trailing shape. A read checks
    that the row really is that array before mapping it, and falls back to decoding
    the episode's rows when it is not.
    """

    code: int
    k: int
    dtype_code: int
    ndim: int
    dims: tuple[int, int, int]
    dtype: np.dtype[Any]
    trail: tuple[int, ...]
    row_bytes: int  # bytes per frame

    @classmethod
    def from_section(cls, code: int, k: int, sec: Section) -> Locator:
        """The locator of ``sec``, the ``k``-th row of an episode."""
        trail = sec.shape[1:]
        dims = (*trail, 0, 0, 0)[:3]
        return cls(code, k, DTYPE_CODE[sec.dtype], len(sec.shape), dims, sec.dtype, trail,  # type: ignore[arg-type]
                   math.prod(trail) * sec.dtype.itemsize)  # fmt: skip
