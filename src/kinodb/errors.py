"""The kinodb error hierarchy.

Every class also inherits the builtin exception a caller would naturally catch, so
``except IndexError`` around ``db.read_episode(i)`` keeps working.
"""

from __future__ import annotations

__all__ = [
    "ConversionError",
    "CorruptFileError",
    "EpisodeNotFoundError",
    "FormatError",
    "FrameRangeError",
    "KinodbError",
    "MissingExtraError",
    "MixtureError",
    "NameNotFoundError",
    "QuerySyntaxError",
    "UnsupportedVersionError",
    "WriterError",
]


class KinodbError(Exception):
    """Base class of every error kinodb raises on purpose."""


class FormatError(KinodbError, ValueError):
    """A file is not a readable ``.kdb`` file."""


class CorruptFileError(FormatError):
    """A ``.kdb`` file's bytes contradict its own index or checksums."""


class UnsupportedVersionError(FormatError):
    """A ``.kdb`` file was written by a format version this kinodb cannot read."""


class EpisodeNotFoundError(KinodbError, IndexError):
    """An episode index is out of range."""


class NameNotFoundError(KinodbError, KeyError):
    """An episode has no array or camera of the name asked for."""

    def __str__(self) -> str:  # the message as written (KeyError's own str quotes it)
        return str(self.args[0]) if self.args else ""


class FrameRangeError(KinodbError, IndexError):
    """A frame window lies outside an episode."""


class WriterError(KinodbError, ValueError):
    """An episode handed to a writer is malformed (wrong shape, dtype or length)."""


class QuerySyntaxError(KinodbError, ValueError):
    """A KQL query does not parse.

    Attributes:
        position: Character offset of the offending token in the query.
    """

    def __init__(self, message: str, position: int = 0) -> None:
        super().__init__(message)
        self.position = position


class ConversionError(KinodbError, ValueError):
    """A source dataset cannot be converted."""


class MixtureError(KinodbError, ValueError):
    """A mixture specification is invalid: a bad weight, or a source with no episodes."""


class MissingExtraError(KinodbError, ImportError):
    """An optional dependency is not installed."""
