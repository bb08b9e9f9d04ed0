"""Argument types shared by the subcommands: each names what it expected and what it got."""

from __future__ import annotations

import argparse


def _integer(text: str, least: int, what: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
    if value < least:
        raise argparse.ArgumentTypeError(f"expected {what}, got {value}")
    return value


def non_negative_int(text: str) -> int:
    """An integer >= 0 (seeds, counts that may be zero)."""
    return _integer(text, 0, "a non-negative integer")


def positive_int(text: str) -> int:
    """An integer >= 1 (sizes, repeats)."""
    return _integer(text, 1, "a positive integer")
