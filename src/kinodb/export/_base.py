"""What every exporter shares: the report, one-value checks, records, JSON text, safe names, staging."""

from __future__ import annotations

import contextlib
import json
import math
import os
import secrets
import shutil
import string
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from kinodb.errors import ConversionError
from kinodb.kdb._stale import stale_temps
from kinodb.kdb.reader import Database

_SAFE_CHARS = frozenset(string.ascii_letters + string.digits + "-_.")
_MAX_NAME_BYTES = 200  # well under the usual 255-byte file-name limit, leaving room for suffixes
# Line breaks that JSON leaves unescaped but str.splitlines() splits on: escaped so that
# every episodes.jsonl line stays one line for any reader.
_LINE_BREAKS = {"\u2028": "\\u2028", "\u2029": "\\u2029", "\x85": "\\u0085"}


@dataclass(frozen=True, slots=True)
class ExportReport:
    """What `export` wrote.

    Attributes:
        output: the folder (``numpy``, ``json``) or file (``hdf5``) written.
        format: the export format.
        episodes: episodes exported.
        frames: frames over those episodes.
        files: files written.
        bytes: total size of those files.
        seconds: wall time of the export.
        warnings: things a reader of the output should know (e.g. a schema that could
            not be kept).
    """

    output: str
    format: str
    episodes: int
    frames: int
    files: int
    bytes: int
    seconds: float
    warnings: tuple[str, ...] = ()

    def summary(self) -> str:
        """One line for people."""
        return (
            f"exported {self.episodes} episodes ({self.frames} frames) to {self.output} as {self.format}: "
            f"{self.files} files, {self.bytes / 1e6:.1f} MB in {self.seconds:.1f} s"
        )


def select(db: Database, kql: str | None) -> list[int]:
    """Positions of the episodes to export, ascending.

    Raises:
        QuerySyntaxError: ``kql`` does not parse.
        ConversionError: nothing is left to export.
    """
    positions = list(range(len(db))) if kql is None else db.query(kql).tolist()
    if not positions:
        where = f" match {kql!r}" if kql is not None else ""
        raise ConversionError(f"{db.path()}: no episodes{where}; nothing was exported")
    return positions


def one_value(
    db: Database, table: dict[str, np.ndarray], positions: list[int], column: str, what: str, why: str
) -> Any:
    """The one value of the numeric metadata column ``column`` over ``positions``.

    ``table`` is ``db.episodes()``; ``what`` names the column for people ("action dims")
    and ``why`` says why the format needs one value.

    Raises:
        ConversionError: the episodes hold different values; the message counts the
            episodes of each and suggests a ``--filter`` that keeps one of them.
    """
    values = table[column][positions]
    distinct = sorted(set(values.tolist()))
    if len(distinct) == 1:
        return distinct[0]
    tally = [(v, int((values == v).sum())) for v in distinct[:6]]
    counts = ", ".join(f"{v:g}: {n} episode{'' if n == 1 else 's'}" for v, n in tally)
    raise ConversionError(
        f"{db.path()}: the episodes have different {what} ({counts}); {why}: export them separately, "
        f"e.g. with --filter '{column} = {distinct[0]:g}'"
    )


def dataset_record(db: Database, positions: list[int], facts: dict[str, Any]) -> dict[str, Any]:
    """``dataset.json`` of an export: the file's dataset block plus ``export`` (``facts``).

    The stored statistics cover every episode of the file: an export of some of them
    leaves them out (and says so in ``export``) rather than hand over statistics of
    episodes it does not hold.
    """
    info = db.dataset_info()
    stats = info.get("stats")
    if not isinstance(stats, dict):
        return {**info, "export": facts}
    counted = (stats.get("num_frames", db.num_frames()), stats.get("num_episodes", len(db)))
    if stats.get("stale") or counted != (db.num_frames(), len(db)):  # as Database.stats() judges
        why = "the file's statistics are stale (episodes were added after they were computed): run kino stats on it"
    elif len(set(positions)) != len(db):
        why = (
            f"the file's statistics cover all {len(db)} episodes and this export holds {len(positions)}; for "
            "statistics of these episodes, run kino merge with the same --filter, then kino stats"
        )
    else:
        return {**info, "export": facts}
    del info["stats"]
    return {**info, "export": {**facts, "stats_left_out": why}}


def episode_record(db: Database, i: int) -> dict[str, Any]:
    """Episode ``i``'s position, metadata and cameras (codec and (T, H, W, C) shape)."""
    cameras = {
        name: {"codec": cam["codec"], "shape": [int(d) for d in cam["shape"]]}
        for name, cam in db.cameras(i).items()
    }
    return {"position": i, "meta": db.read_meta(i), "cameras": cameras}


def index_width(count: int) -> int:
    """Digits for zero-padded numbers ``0..count-1``: at least 6, so names sort numerically."""
    return max(6, len(str(max(count - 1, 0))))


# -- JSON -----------------------------------------------------------------------------------


def _finite(value: Any) -> Any:
    """``value`` with non-finite floats spelled as strings (JSON has no NaN or infinity)."""
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def dumps(value: Any, *, indent: int | None = None) -> str:
    """Strict JSON text (UTF-8 characters kept, every line break escaped)."""
    text = json.dumps(_finite(value), ensure_ascii=False, allow_nan=False, indent=indent)
    for char, escaped in _LINE_BREAKS.items():
        text = text.replace(char, escaped)  # only ever inside strings: JSON syntax is ASCII
    return text


def write_json(path: str, value: Any, *, indent: int | None = None) -> None:
    """Write ``value`` as JSON to ``path`` (UTF-8, one line unless ``indent`` is given)."""
    with open(path, "w", encoding="utf-8", newline="\n") as fh:
        fh.write(dumps(value, indent=indent))
        fh.write("\n")


# -- names ----------------------------------------------------------------------------------


def file_name(name: str, what: str) -> str:
    """``name`` as one portable file name: bytes outside ``[A-Za-z0-9._-]`` become ``%XX``.

    The escaping is reversible (``urllib.parse.unquote``), so different names never share
    a file; ``.`` and ``..`` are escaped too.

    Raises:
        ConversionError: the escaped name is too long for a file system.
    """
    out = "".join(c if c in _SAFE_CHARS else "".join(f"%{b:02X}" for b in c.encode()) for c in name)
    if out in (".", ".."):
        out = out.replace(".", "%2E")
    if not out or len(out) > _MAX_NAME_BYTES:
        raise ConversionError(
            f"{what} name {name!r} cannot be a file name ({len(out)} bytes once escaped, "
            f"limit {_MAX_NAME_BYTES}); rename it"
        )
    return out


def check_case_collisions(names: dict[str, str], what: str) -> None:
    """Refuse names whose files would collide on a case-insensitive file system.

    Raises:
        ConversionError: two names differ only in letter case.
    """
    seen: dict[str, str] = {}
    for name, fname in names.items():
        other = seen.setdefault(fname.lower(), name)
        if other != name:
            raise ConversionError(
                f"{what} names {other!r} and {name!r} differ only in letter case; their files would "
                "collide on case-insensitive file systems (macOS, Windows); rename one"
            )


# -- staging --------------------------------------------------------------------------------


@contextlib.contextmanager
def staged(target: str, *, directory: bool, overwrite: bool) -> Iterator[str]:
    """Yield a temporary path beside ``target``; move it into place when the block succeeds.

    On any failure the temporary output is removed and ``target`` is left as it was.

    Raises:
        FileExistsError: ``target`` exists and ``overwrite`` is False.
        FileNotFoundError: the folder that should hold ``target`` does not exist.
    """
    target = os.path.abspath(target)
    _check_target(target, overwrite)
    parent, base = os.path.split(target)
    _remove_stale(parent, base)
    token = f"{os.getpid()}.{secrets.token_hex(4)}"
    tmp = os.path.join(parent, f".{base}.{token}.tmp")
    if directory:
        os.mkdir(tmp)
    try:
        yield tmp
        _check_target(target, overwrite)  # it may have appeared while we were writing
        _publish(tmp, target, os.path.join(parent, f".{base}.{token}.old"))
    except BaseException:
        _remove(tmp)
        raise
    with contextlib.suppress(OSError):
        fd = os.open(parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _check_target(target: str, overwrite: bool) -> None:
    if os.path.lexists(target) and not overwrite:
        raise FileExistsError(f"{target} exists; pass overwrite=True (kino export --force) to replace it")
    parent = os.path.dirname(target)
    if not os.path.isdir(parent):
        raise FileNotFoundError(f"{parent} does not exist or is not a folder; create it first")


def _publish(tmp: str, target: str, old: str) -> None:
    if os.path.isfile(tmp) and not os.path.isdir(target):
        os.replace(tmp, target)  # one atomic step, replacing a file if there is one
        return
    if not os.path.lexists(target):
        os.rename(tmp, target)
        return
    # A folder cannot be replaced in one step: move the old output aside, then the new
    # one in, and put the old one back if that fails.
    os.rename(target, old)
    try:
        os.rename(tmp, target)
    except BaseException:
        os.rename(old, target)
        raise
    _remove(old)


def _remove(path: str) -> None:
    with contextlib.suppress(OSError):
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            os.unlink(path)


def _remove_stale(parent: str, base: str) -> None:
    """Delete temporary outputs that killed exports of ``base`` left behind."""
    for tmp in stale_temps(os.path.join(parent, base)):
        _remove(tmp)


def tree_size(path: str) -> tuple[int, int]:
    """``(files, bytes)`` under ``path`` (a file or a folder)."""
    if os.path.isfile(path):
        return 1, os.path.getsize(path)
    files = size = 0
    for folder, _dirs, names in os.walk(path):
        for name in names:
            files += 1
            size += os.path.getsize(os.path.join(folder, name))
    return files, size
