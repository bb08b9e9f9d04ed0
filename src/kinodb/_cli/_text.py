"""Text output shared by the commands: terminal columns and strict JSON values."""

from __future__ import annotations

import math
from typing import Any

from kinodb._textwidth import char_width as _width


def finite(value: Any) -> Any:
    """``value`` with NaN and infinite floats as None: JSON has no such numbers (0.1 files
    and files of earlier writers can hold a NaN or infinite total_reward)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


def fit(text: str, width: int, *, pad: bool = True) -> str:
    """``text`` on one line in ``width`` terminal columns: clipped with an ellipsis, padded.

    Clips whole characters by display width (0.1 cut UTF-8 bytes and crashed);
    control characters and newlines show as spaces.
    """
    text = "".join(c if c.isprintable() else " " for c in text)
    widths = [_width(c) for c in text]
    used = sum(widths)
    if used > width:
        keep, used = 0, 1  # the ellipsis
        while used + widths[keep] <= width:
            used += widths[keep]
            keep += 1
        text = text[:keep] + "…"
    return text + " " * (width - used) if pad else text
