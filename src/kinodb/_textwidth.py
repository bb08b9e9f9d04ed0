"""How many terminal columns text takes: the CLI's tables and the caret of a query error."""

from __future__ import annotations

import unicodedata

# Marks drawn over or joined with the character before them, and invisible format
# characters (zero width joiner, variation selectors are Mn, bidi marks): none takes a
# column of its own, whatever its combining class (Thai and Devanagari vowel signs are 0).
_ZERO_WIDTH = frozenset(("Mn", "Me", "Cf"))


def char_width(ch: str) -> int:
    """Terminal columns of one character: 0 marks and format characters, 2 wide (CJK,
    emoji), else 1. The soft hyphen (U+00AD) is 1, as terminals show it."""
    if ch == "\u00ad":
        return 1
    if unicodedata.combining(ch) or unicodedata.category(ch) in _ZERO_WIDTH:
        return 0
    return 2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1
