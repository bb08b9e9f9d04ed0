"""Exact casts and comparisons: checked against Python's own exact int/float arithmetic."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from kinodb.ingest._exact import exact_equal, first_rounded, holds_exactly, significand_bits


@pytest.mark.parametrize(
    ("src", "dst", "exact"),
    [
        ("int64", "float64", False),  # NumPy calls this cast "safe"; 2**53 + 1 says otherwise
        ("uint64", "float64", False),
        ("int32", "float64", True),
        ("uint32", "float32", False),
        ("int16", "float32", True),
        ("uint16", "float32", True),
        ("int8", "float16", True),
        ("uint16", "float16", False),
        ("bool", "float16", True),
        ("float32", "float64", True),
        ("float64", "float32", False),
        ("int32", "int64", True),
        ("uint64", "int64", False),
        ("float32", "int64", False),
    ],
)
def test_holds_exactly(src: str, dst: str, exact: bool) -> None:
    assert holds_exactly(src, dst) is exact
    assert np.can_cast(src, dst, "safe") or not exact  # never more than NumPy allows


def test_significand_bits() -> None:
    assert [significand_bits(d) for d in ("float16", "float32", "float64")] == [11, 24, 53]
    assert significand_bits("int64") is None


def _exact_in_float64(v: int) -> bool:
    return int(float(v)) == v  # Python's float() rounds to nearest, like NumPy's cast


@given(st.lists(st.integers(-(2**63), 2**63 - 1), min_size=1, max_size=20))
def test_first_rounded_finds_the_first_int64_float64_rounds(values: list[int]) -> None:
    arr = np.array(values, np.int64)
    bad = [k for k, v in enumerate(values) if not _exact_in_float64(v)]
    assert first_rounded(arr, np.float64) == ((bad[0], values[bad[0]]) if bad else None)


@given(st.lists(st.integers(0, 2**64 - 1), min_size=1, max_size=20))
def test_first_rounded_uint64_near_the_top_of_the_range(values: list[int]) -> None:
    arr = np.array(values, np.uint64)
    bad = [k for k, v in enumerate(values) if not _exact_in_float64(v)]
    assert first_rounded(arr, np.float64) == ((bad[0], values[bad[0]]) if bad else None)


def test_first_rounded_floats_and_nan() -> None:
    assert first_rounded(np.array([1.5, np.nan, np.inf]), np.float32) is None
    assert first_rounded(np.array([1.5, 0.1]), np.float32) == (1, 0.1)
    assert first_rounded(np.array([2**24 + 1], np.int32), np.float32) == (0, 2**24 + 1)
    assert first_rounded(np.zeros((0, 3), np.int64), np.float32) is None


def _python_equal(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float) and a != a and b != b:
        return True  # NaN equals NaN here
    return bool(a == b)  # Python compares int and float exactly


@given(
    st.lists(st.integers(-(2**63), 2**63 - 1), min_size=1, max_size=20),
    st.sampled_from(["float64", "float32", "int64", "uint64"]),
)
def test_exact_equal_agrees_with_python(values: list[int], other: str) -> None:
    a = np.array(values, np.int64)
    with np.errstate(all="ignore"):
        b = a.astype(other)  # rounded (floats) or wrapped (uint64): exact only where it kept the value
    want = [_python_equal(x, y) for x, y in zip(a.tolist(), b.tolist(), strict=True)]
    assert exact_equal(a, b).tolist() == want
    assert exact_equal(b, a).tolist() == want


def test_exact_equal_nan_and_mixed_widths() -> None:
    x = np.array([np.nan, 1.0, 0.1], np.float32)
    assert exact_equal(x, x.astype(np.float64)).tolist() == [True, True, True]
    wide = np.array([np.nan, 1.0, 0.1])
    assert exact_equal(x, wide).tolist() == [True, True, False]  # 0.1 in float32 differs
    big = np.array([2**53 + 1], np.int64)
    assert not exact_equal(big, big.astype(np.float64)).any()
