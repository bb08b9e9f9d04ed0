"""The ``.kdb`` file format: layout, reader, writer, validation and the legacy reader.

Imports NumPy and the standard library only (Pillow is loaded on the first image).
"""

from __future__ import annotations

from kinodb.kdb.reader import Database, open_database
from kinodb.kdb.writer import Writer

__all__ = ["Database", "Writer", "open_database"]
