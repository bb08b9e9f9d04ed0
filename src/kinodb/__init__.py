"""kinodb: one indexed, memory-mapped ``.kdb`` file per robot-learning dataset.

Example:
    >>> import kinodb
    >>> with kinodb.open("demo.kdb") as db:
    ...     actions = db.read_episode(0)["actions"]
"""

from __future__ import annotations

from kinodb import export, kql
from kinodb._version import __version__
from kinodb.errors import (
    ConversionError,
    CorruptFileError,
    EpisodeNotFoundError,
    FormatError,
    FrameRangeError,
    KinodbError,
    MissingExtraError,
    MixtureError,
    NameNotFoundError,
    QuerySyntaxError,
    UnsupportedVersionError,
    WriterError,
)
from kinodb.kdb import Database, Writer
from kinodb.kdb import open_database as open
from kinodb.merge import merge
from kinodb.mixture import Mixture

__all__ = [
    "ConversionError",
    "CorruptFileError",
    "Database",
    "EpisodeNotFoundError",
    "FormatError",
    "FrameRangeError",
    "KinodbError",
    "MissingExtraError",
    "Mixture",
    "MixtureError",
    "NameNotFoundError",
    "QuerySyntaxError",
    "UnsupportedVersionError",
    "Writer",
    "WriterError",
    "__version__",
    "export",
    "kql",
    "merge",
    "open",
]
