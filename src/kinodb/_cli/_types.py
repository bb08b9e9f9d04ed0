"""Argument types shared by the subcommands: each names what it expected and what it got."""

from __future__ import annotations

import argparse
import math

from kinodb.ingest._run import check_dtype


def _integer(text: str, least: int, what: str, most: int | None = None) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
    if value < least or (most is not None and value > most):
        raise argparse.ArgumentTypeError(f"expected {what}, got {value}")
    return value


def non_negative_int(text: str) -> int:
    """An integer >= 0 (seeds, counts that may be zero)."""
    return _integer(text, 0, "a non-negative integer")


def positive_int(text: str) -> int:
    """An integer >= 1 (sizes, repeats)."""
    return _integer(text, 1, "a positive integer")


def jpeg_quality(text: str) -> int:
    """A JPEG quality, 1..100 (``--compress``)."""
    return _integer(text, 1, "a JPEG quality from 1 to 100", most=100)


def positive_float(text: str) -> float:
    """A finite number > 0 (frame rates, thresholds); ``0``, ``nan`` and ``inf`` are refused."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text.strip()}")
    return value


def float_dtype(text: str) -> str:
    """A floating NumPy dtype name such as ``float32`` (``--dtype`` of ingest and verify)."""
    try:
        check_dtype(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a floating dtype such as float32, float16 or float64, got {text!r}"
        ) from None
    return text
