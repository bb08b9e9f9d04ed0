"""How many terminal columns text takes: the CLI's tables and the caret of a query error."""

from __future__ import annotations

import unicodedata


def char_width(ch: str) -> int:
    """Terminal columns of one character: 0 combining, 2 wide (CJK, emoji), else 1."""
    if unicodedata.combining(ch):
        return 0
    return 2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1
