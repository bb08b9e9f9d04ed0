"""The error that policy loading, export and the runtime raise."""

from __future__ import annotations

from kinodb.errors import KinodbError


class InferError(KinodbError, ValueError):
    """A policy package, a model's contract or an observation is invalid.

    The message names the file, the archive member, the input and the expected shape.
    """
