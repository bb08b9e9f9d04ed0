"""The ingest plug-in surface: the `Source` protocol, options, and the format registry.

A source lists its episodes as ordered keys and turns one key into the keyword
arguments of `kinodb.Writer.add_episode`. Everything else (selection, workers, dtype,
image encoding, error policy, provenance, the report) is the framework's job, in
`kinodb.ingest._run`, so a converter stays small.
"""

from __future__ import annotations

import functools
import importlib
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any, ClassVar, Protocol, runtime_checkable

from kinodb.errors import ConversionError

ENTRY_POINT_GROUP = "kinodb.sources"
SKIP_ADVICE = ", or pass --on-error skip"
"""Ends the message of an episode that can be skipped; the framework drops it once skipping."""


@dataclass(frozen=True, slots=True)
class SourceOptions:
    """What a source may need to know to read episodes (picklable, for worker processes).

    Attributes:
        images: read camera frames (False: skip them, and do not even decode them).
        state_keys: observation keys to concatenate into ``states``, in this order
            (None: the source's default, usually every low-dim key in sorted order).
        split: the dataset split to read, for sources that have splits.
        flip_images: rotate frames by 180 degrees (LIBERO stores them upside down).
        fps: frames per second when the source does not say.
        jpeg_quality: set when decoded frames will be stored as JPEG at this quality: a
            source that decodes video may then return a camera's frames already encoded
            (a list of JPEG bytes) instead of pixels. None: always pixels.
        action_key: the source feature that holds the actions, for sources whose
            datasets name it differently (None: the source's default, e.g. LeRobot's
            ``action``, else ``actions``). Only sources whose class sets
            ``accepts_action_key = True`` are given one; ``ingest`` refuses it for others.
    """

    images: bool = True
    state_keys: tuple[str, ...] | None = None
    split: str | None = None
    flip_images: bool = False
    fps: float | None = None
    jpeg_quality: int | None = None
    action_key: str | None = None


@dataclass
class SourceInfo:
    """Dataset-level facts a source reports once: schema, format name, metadata."""

    source_format: str
    schema: dict[str, Any] = field(default_factory=dict)  # {"states": {"components": ..., "names": ...}, ...}
    metadata: dict[str, Any] = field(default_factory=dict)
    fps: float | None = None
    embodiment: str | None = None
    task: str | None = None


@runtime_checkable
class Source(Protocol):
    """A readable dataset in some other format.

    Implementations take ``(path, options)`` in ``__init__`` and must be re-creatable
    from those two alone (worker processes build their own). ``read`` raises
    `ConversionError` naming the file, the episode and the key at fault.
    """

    format: ClassVar[str]

    @classmethod
    def detect(cls, path: str) -> bool:
        """Whether ``path`` looks like this format (cheap: no full parse)."""
        ...

    def episodes(self) -> list[str]:
        """Every episode's key, in the source's own order."""
        ...

    def info(self) -> SourceInfo:
        """Dataset-level facts."""
        ...

    def read(self, key: str) -> dict[str, Any]:
        """Keyword arguments for `Writer.add_episode` for episode ``key``."""
        ...

    def close(self) -> None:
        """Release files."""
        ...


_BUILTIN = {
    "hdf5": "kinodb.ingest.hdf5:HDF5Source",
    "rlds": "kinodb.ingest.rlds:RLDSSource",
    "lerobot": "kinodb.ingest.lerobot:LeRobotSource",
    "kinfer-ndjson": "kinodb.ingest.kinfer_ndjson:KinferNdjsonSource",
}


def exported_extra(meta: Mapping[str, Any], builtin: frozenset[str]) -> dict[str, Any]:
    """The extra fields of an episode a kinodb export wrote, from its ``read_meta`` dict.

    ``read_meta`` spells an extra field named like a built-in ``extra.NAME``, and one an
    earlier writer stored as ``extra.NAME`` (today's writer refuses the prefix)
    ``extra.extra.NAME``: every ``extra.`` prefix goes, and a name that is then taken gets
    ``_`` appended, so no value is lost.
    """
    stored = {key.removeprefix("extra."): value for key, value in meta.items() if key not in builtin}
    out = {name: value for name, value in stored.items() if not name.startswith("extra.")}
    for name, value in stored.items():  # names today's writer refuses, after those it takes
        if name.startswith("extra."):
            while name.startswith("extra."):
                name = name.removeprefix("extra.")
            while name in out:
                name += "_"
            out[name] = value
    return out


def _load(spec: str) -> type[Source]:
    module, _, name = spec.partition(":")
    cls: type[Source] = getattr(importlib.import_module(module), name)
    return cls


def formats() -> dict[str, Callable[[], type[Source]]]:
    """Every known format name, built-in and from the ``kinodb.sources`` entry points."""
    found: dict[str, Callable[[], type[Source]]] = {
        name: functools.partial(_load, spec) for name, spec in _BUILTIN.items()
    }
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        found.setdefault(ep.name, ep.load)
    return found


def source_class(fmt: str, path: str) -> type[Source]:
    """The source class for ``fmt``, or the one that recognises ``path`` for ``"auto"``.

    Raises:
        ConversionError: the format is unknown, or nothing recognises ``path``.
    """
    known = formats()
    if fmt != "auto":
        if fmt not in known:
            raise ConversionError(f"unknown source format {fmt!r}; known formats: {', '.join(sorted(known))}")
        return known[fmt]()
    if not os.path.exists(path):
        raise FileNotFoundError(2, "No such file or directory", path)
    for name in sorted(known):
        cls = known[name]()
        if cls.detect(path):
            return cls
    raise ConversionError(
        f"{path}: cannot tell its format (tried {', '.join(sorted(known))}); pass --format explicitly"
    )
