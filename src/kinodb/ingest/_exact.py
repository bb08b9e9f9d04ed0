"""Exact number conversions for converters: which dtype holds which values, exactly.

NumPy's ``"safe"`` casting calls int64 -> float64 safe, but float64 holds integers
exactly only up to 2**53 in magnitude (float32: 2**24), so a nanosecond timestamp
concatenated with float observations would be rounded. These helpers say which casts
keep every value (by dtype), find the first value a cast would change (by value), and
compare arrays of different dtypes without rounding either side.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import DTypeLike, NDArray

_F64 = np.dtype(np.float64)


def holds_exactly(src: DTypeLike, dst: DTypeLike) -> bool:
    """Whether every value of dtype ``src`` is a value of dtype ``dst`` (bool, ints, floats).

    An integer fits a float when its magnitude bits fit the float's significand (int32 in
    float64, int16 in float32; int64 and uint64 in no float NumPy has everywhere).
    """
    s, d = np.dtype(src), np.dtype(dst)
    if s == d:
        return True
    if s.kind == "b":
        return d.kind in "biuf"
    if d.kind == "f":
        if s.kind == "f":
            return s.itemsize <= d.itemsize
        if s.kind in "iu":
            return bool(s.itemsize * 8 - (s.kind == "i") <= int(np.finfo(d).nmant) + 1)
        return False
    if d.kind in "iu" and s.kind in "iu":
        return bool(np.can_cast(s, d, "safe"))
    return False


def significand_bits(dtype: DTypeLike) -> int | None:
    """Bits of a float dtype's significand (float64: 53), so that integers up to 2**bits in
    magnitude are exact; None for other dtypes."""
    d = np.dtype(dtype)
    return int(np.finfo(d).nmant) + 1 if d.kind == "f" else None


def first_rounded(arr: NDArray[Any], dtype: DTypeLike) -> tuple[int, Any] | None:
    """The first value of ``arr`` that a cast to ``dtype`` changes, as (flat index, value);
    None when the cast keeps every value (NaN stays NaN)."""
    d = np.dtype(dtype)
    if holds_exactly(arr.dtype, d) or arr.size == 0:
        return None
    with np.errstate(all="ignore"):
        cast = arr.astype(d)
        same = cast.astype(arr.dtype) == arr
        if arr.dtype.kind in "iu" and d.kind == "f":
            # a cast back from a float past the integer range is undefined (it may saturate)
            info = np.iinfo(arr.dtype)
            same &= (cast >= float(info.min)) & (cast < float(info.max) + 1.0)
        if arr.dtype.kind == "f":
            same |= np.isnan(arr) & np.isnan(cast)
    bad = np.flatnonzero(~same)
    if bad.size == 0:
        return None
    k = int(bad[0])
    return k, arr.reshape(-1)[k].item()


def exact_equal(a: NDArray[Any], b: NDArray[Any]) -> NDArray[np.bool_]:
    """Element-wise ``a == b`` without rounding either side (NaN equals NaN).

    Same-shaped arrays of bools, integers or floats of any widths: an int64 that float64
    cannot hold differs from every float64.
    """
    if holds_exactly(a.dtype, _F64) and holds_exactly(b.dtype, _F64):
        x, y = a.astype(_F64), b.astype(_F64)
        out: NDArray[np.bool_] = (x == y) | (np.isnan(x) & np.isnan(y))
        return out
    if a.dtype.kind in "iub" and b.dtype.kind in "iub":
        common = np.promote_types(a.dtype, b.dtype)
        if holds_exactly(a.dtype, common) and holds_exactly(b.dtype, common):
            same: NDArray[np.bool_] = a.astype(common) == b.astype(common)
            return same
    # int64 or uint64 beside a float, or int64 beside uint64: Python compares these exactly
    return np.asarray(a.astype(object) == b.astype(object), dtype=bool)


__all__ = ["exact_equal", "first_rounded", "holds_exactly", "significand_bits"]
