"""kinodb: one indexed, memory-mapped ``.kdb`` file per robot-learning dataset.

Example:
    >>> import kinodb
    >>> with kinodb.open("demo.kdb") as db:
    ...     actions = db.read_episode(0)["actions"]

The names below load on first use (PEP 562), so ``import kinodb`` itself imports only the
standard library, and the ``kino`` commands can answer Ctrl-C from their first moment.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

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

if TYPE_CHECKING:
    from kinodb import export, ingest, kql
    from kinodb.kdb import Database, Writer
    from kinodb.kdb import open_database as open
    from kinodb.merge import merge
    from kinodb.mixture import Mixture

# name -> (module, attribute; None: the module itself)
_LAZY: dict[str, tuple[str, str | None]] = {
    "Database": ("kinodb.kdb", "Database"),
    "Writer": ("kinodb.kdb", "Writer"),
    "open": ("kinodb.kdb", "open_database"),
    "merge": ("kinodb.merge", "merge"),
    "Mixture": ("kinodb.mixture", "Mixture"),
    "export": ("kinodb.export", None),
    "ingest": ("kinodb.ingest", None),
    "kql": ("kinodb.kql", None),
}


def __getattr__(name: str) -> Any:
    where = _LAZY.get(name)
    if where is None:
        raise AttributeError(f"module 'kinodb' has no attribute {name!r}")
    module = importlib.import_module(where[0])
    value = module if where[1] is None else getattr(module, where[1])
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


class _Package(types.ModuleType):
    """kinodb's module type: ``kinodb.merge`` stays the function when the submodule of that
    name loads (the import system sets a package's attribute to each submodule it loads)."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "merge" and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


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
    "ingest",
    "kql",
    "merge",
    "open",
]
