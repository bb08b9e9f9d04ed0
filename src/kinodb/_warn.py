"""Where kinodb's warnings point: at the user's line, not at kinodb's own."""

from __future__ import annotations

import os
import sys

_KINODB = os.path.dirname(os.path.abspath(__file__)) + os.sep  # the kinodb package's folder


def user_stacklevel() -> int:
    """The ``stacklevel`` that attributes a warning issued by the function calling this to
    the first caller outside kinodb: the user's line, however many kinodb calls lie between
    (``from_mixture`` -> `KinoIterDataset` -> `KinoFrameDataset` -> the check)."""
    level, frame = 1, sys._getframe(1)
    while frame.f_back is not None and frame.f_code.co_filename.startswith(_KINODB):
        frame, level = frame.f_back, level + 1
    return level
