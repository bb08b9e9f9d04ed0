"""What every exporter shares: the report, checks, records, JSON text, safe names, output paths, staging."""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import math
import os
import re
import secrets
import shutil
import string
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from kinodb._optional import require
from kinodb.errors import ConversionError
from kinodb.export._export_tree import unexpected_entries, unexpected_zip_entries
from kinodb.kdb import _codecs
from kinodb.kdb._stale import stale_stats, stale_temps
from kinodb.kdb.reader import Database

logger = logging.getLogger(__name__)

WINDOW = 32  # camera frames decoded (and per-frame arrays copied) at a time
_SAFE_CHARS = frozenset(string.ascii_letters + string.digits + "-_.")
_MAX_HINT = 1000  # characters of a suggested --filter quoted in an error message
_QUOTABLE = re.compile(r"[\w .:+-]+")  # embodiments a suggested filter can quote as they are
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
            f"exported {self.episodes} episode{'' if self.episodes == 1 else 's'} ({self.frames} frames) to {self.output} as {self.format}: "
            f"{self.files} file{'' if self.files == 1 else 's'}, {self.bytes / 1e6:.1f} MB in {self.seconds:.1f} s"
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


def array_forms(
    db: Database, table: dict[str, np.ndarray], positions: list[int], why: str
) -> tuple[dict[str, tuple[np.dtype[Any], tuple[int, ...]]], dict[str, int]]:
    """Each array's one dtype and per-frame shape over the episodes ``positions`` (``table``
    is ``db.episodes()``), and how many of them hold it.

    Raises:
        ConversionError: the episodes hold an array in different dtypes or shapes; says
            ``why`` that matters and gives a ``--filter`` that exports one kind.
    """
    kinds: dict[str, dict[tuple[str, tuple[int, ...]], list[int]]] = {}
    for i in positions:
        for name, arr in db._episode_arrays(i).items():
            kinds.setdefault(name, {}).setdefault((arr.dtype.str, arr.shape[1:]), []).append(i)
    for name, forms in kinds.items():
        if len(forms) > 1:
            listed = ", ".join(
                f"{np.dtype(d).name} {shape_text(s)} in {len(g)}" for (d, s), g in list(forms.items())[:4]
            )
            raise ConversionError(
                f"{db.path()}: the episodes' {name} differ in dtype or shape per frame ({listed}); {why}: export "
                f"them separately, {split_advice(table, max(forms.values(), key=len))}"
            )
    one = {name: next(iter(forms.items())) for name, forms in kinds.items()}
    return ({name: (np.dtype(d), s) for name, ((d, s), _) in one.items()},
            {name: len(g) for name, (_, g) in one.items()})  # fmt: skip


def shape_text(shape: tuple[int, ...]) -> str:
    """A per-frame shape as errors show it: ``(2, 3)``, or ``scalar``."""
    return "(" + ", ".join(map(str, shape)) + ")" if shape else "scalar"


def episodes_filter(table: dict[str, np.ndarray], eps: list[int]) -> str:
    """A KQL query that keeps exactly the episodes at positions ``eps``, by ``episode_id``.

    ``table`` is ``db.episodes()``. Runs of three or more consecutive ids are written
    ``episode_id BETWEEN a AND b``, the rest ``episode_id IN (...)``.
    """
    ids = sorted({int(x) for x in table["episode_id"][eps].tolist()})
    runs: list[list[int]] = []
    for x in ids:
        if runs and runs[-1][1] == x - 1:
            runs[-1][1] = x
        else:
            runs.append([x, x])
    terms = [f"episode_id BETWEEN {a} AND {b}" for a, b in runs if b - a >= 2]
    single = [str(x) for a, b in runs if b - a < 2 for x in range(a, b + 1)]
    if len(single) == 1:
        terms.append(f"episode_id = {single[0]}")
    elif single:
        terms.append(f"episode_id IN ({', '.join(single)})")
    return " OR ".join(terms)


def split_advice(table: dict[str, np.ndarray], group: list[int]) -> str:
    """A ready ``--filter`` that exports the episodes at positions ``group`` (one of several
    that each fit one export), as advice: "e.g. the 3 episodes like episode 0 with --filter ...".

    ``table`` is ``db.episodes()``. The filter names the group's embodiment where that
    picks out exactly the group in the file, else its episode ids (`episodes_filter`).
    """
    first, n = min(group), len(group)
    like = f"the {_count(n)} like episode {first}" if n > 1 else f"episode {first}"
    robots = sorted(set(table["embodiment"][group].tolist()))
    if (
        len(robots) == 1
        and _QUOTABLE.fullmatch(robots[0])  # safe inside '...' inside "..."
        and np.flatnonzero(table["embodiment"] == robots[0]).tolist() == sorted(group)
    ):
        return f"e.g. {like} with --filter \"embodiment = '{robots[0]}'\""
    kql = episodes_filter(table, group)
    if len(kql) <= _MAX_HINT:
        return f'e.g. {like} with --filter "{kql}"'
    shown = kql[: _MAX_HINT // 4].rsplit(" ", 1)[0]
    return f'e.g. {like} with --filter "{shown} ..." (their episode ids, too many to list here)'


def _count(n: int) -> str:
    return f"{n} episode{'' if n == 1 else 's'}"


def dataset_record(db: Database, positions: list[int], facts: dict[str, Any]) -> dict[str, Any]:
    """``dataset.json`` of an export: the file's dataset block plus ``export`` (``facts``).

    The stored statistics are kept only where they describe the export (see `exported_dataset`).
    """
    info, facts = exported_dataset(db, positions, facts)
    return {**info, "export": facts}


def exported_dataset(
    db: Database, positions: list[int], facts: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The file's dataset block as an export of episodes ``positions`` carries it, and the export's facts.

    The stored statistics cover every episode of the file: an export of some of them
    (or of a file whose statistics are stale) leaves them out, and says why in the
    facts' ``stats_left_out``, rather than hand over statistics of episodes it does not
    hold.
    """
    info = db.dataset_info()
    stats = info.get("stats")
    if not isinstance(stats, dict):
        return info, facts
    changed = stale_stats({"num_frames": db.num_frames(), **stats}, db.num_frames(), len(db))
    if changed is not None:  # as Database.stats() judges
        why = f"the file's statistics are stale: {changed}; run kino stats on it"
    elif len(set(positions)) != len(db):
        why = (
            f"the file's statistics cover all {len(db)} episodes and this export holds {len(positions)}; for "
            "statistics of these episodes, run kino merge with the same --filter, then kino stats"
        )
    else:
        return info, facts
    del info["stats"]
    return info, {**facts, "stats_left_out": why}


def episode_record(db: Database, i: int) -> dict[str, Any]:
    """Episode ``i``'s position, metadata and cameras (codec and (T, H, W, C) shape)."""
    cameras = {
        name: {"codec": cam["codec"], "shape": [int(d) for d in cam["shape"]]}
        for name, cam in db.cameras(i).items()
    }
    return {"position": i, "meta": db.read_meta(i), "cameras": cameras}


def camera_windows(db: Database, i: int, camera: str, T: int) -> Iterator[tuple[int, np.ndarray]]:
    """``(start, frames)``: episode ``i``'s decoded frames of ``camera``, `WINDOW` at a time,
    so that a long episode's frames are never all decoded at once."""
    for start in range(0, T, WINDOW):
        stop = min(start + WINDOW, T)
        yield start, db.read_frames(i, start, stop, cameras=[camera])["images"][camera]


def holds_image(blob: bytes, codec: str, shape: Sequence[int], *, channels: bool = True) -> bool:
    """Whether the stored frame ``blob`` is a ``codec`` image of ``shape`` (H, W, C), by its
    header; without ``channels``, of ``shape``'s height and width in any channel count.

    A 0.1 file's JPEG or PNG camera can hold frames that are not: raw pixels that begin with
    JPEG or PNG magic, which the 0.1 writer flagged as compressed and kinodb's readers
    return as pixels. Exporters write such a camera's decoded frames, not its stored bytes.
    """
    if _codecs.sniff(blob[:8]) != codec:
        return False
    try:
        found = _codecs.probe(blob)
    except Exception:  # Pillow raises many types on bytes that are not an image
        return False
    return found == tuple(shape) if channels else found[:2] == tuple(shape[:2])


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


# -- the output path ------------------------------------------------------------------------

# Where each export writes its facts (the "export" object of a JSON file): a folder holding
# such facts and, at every level, only the entries that export writes (`unexpected_entries`)
# is an earlier export, which overwrite may replace.
_FOLDER_MARKERS = (
    ("dataset.json", ("numpy", "json")),
    (os.path.join("meta", "kinodb.json"), ("lerobot",)),
    (".zattrs", ("zarr",)),  # its kinodb_export
    ("kinodb_export.json", ("rlds",)),
)
_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
_MAX_MARKER_BYTES = 1 << 26  # a dataset.json is kilobytes: anything this large is no export's
_ADVICE = {
    errno.ENAMETOOLONG: "choose a shorter name",
    errno.ENOSPC: "free some space or choose another folder",
    errno.EDQUOT: "free some space or choose another folder",
    errno.EACCES: "choose a writable folder",
    errno.EPERM: "choose a writable folder",
    errno.EROFS: "choose a writable folder",
}


@dataclass(frozen=True, slots=True)
class Existing:
    """What an output path holds already, and which exports may replace it.

    Attributes:
        what: what the path is, for people ("an earlier kinodb numpy export").
        by_folder: a folder export (``numpy``, ``json``, ``lerobot``) may replace it.
        by_file: a file export (``hdf5``) may replace it.
    """

    what: str
    by_folder: bool = False
    by_file: bool = False

    def replaceable(self, *, directory: bool) -> bool:
        """Whether an export writing a folder (``directory``) or a file may replace it."""
        return self.by_folder if directory else self.by_file


def existing_output(target: str, *, directory: bool) -> Existing | None:
    """What ``target`` holds, or None when nothing is there.

    Only an earlier kinodb export is replaceable: a folder holding the facts its export
    wrote (``dataset.json`` of a numpy or json export, ``meta/kinodb.json`` of a lerobot
    export) and only the entries that export writes, or an empty folder; a file only by an
    export writing a file (``hdf5``), and only when it is an HDF5 export of kinodb (its
    ``/data`` group carries ``kinodb_export``). ``directory`` says which kind the export
    writes. Symbolic links are never replaced.

    Raises:
        MissingExtraError: an HDF5 file to recognise and no h5py.
    """
    if os.path.islink(target):
        return Existing("a symbolic link")
    if os.path.isdir(target):
        return _existing_folder(target)
    if os.path.isfile(target):
        if directory:
            return Existing("a file (this format writes a folder)")
        if _hdf5_export(target):
            return Existing("an earlier kinodb hdf5 export", by_file=True)
        zipped = _zarr_zip_export(target)
        if zipped == []:
            return Existing("an earlier kinodb zarr export (a zip archive)", by_file=True)
        if zipped:
            listed = ", ".join(zipped[:3]) + (", ..." if len(zipped) > 3 else "")
            return Existing(
                f"an earlier kinodb zarr export (a zip archive) holding entries the export did not write ({listed})"
            )
        return Existing("a file that is not an earlier kinodb hdf5 or zarr export")
    if os.path.lexists(target):
        return Existing("neither a file nor a folder")
    return None


def exists_message(target: str, found: Existing, *, directory: bool, force: str) -> str:
    """Why ``target`` is in the way; ``force`` (how to ask for overwrite) is named only where it would work."""
    if found.replaceable(directory=directory):
        return f"{target} exists and is {found.what}; pass {force} to replace it"
    return (
        f"{target} exists and is {found.what}, which an export does not replace: choose a new path, "
        "or remove it yourself"
    )


def check_output(source: str, target: str, *, shown: str, directory: bool, overwrite: bool) -> None:
    """Refuse the output path ``target`` before anything is converted.

    ``source`` is the input file; ``shown`` is ``target`` as the caller spelled it.

    Raises:
        ValueError: ``target`` is the current folder or holds it, or is ``source`` or holds it.
        FileNotFoundError: the folder that should hold ``target`` does not exist.
        NotADirectoryError: that path is not a folder.
        PermissionError: that folder is not writable.
        FileExistsError: ``target`` exists and is not replaceable, or ``overwrite`` is False.
    """
    _refuse_enclosing(source, target, shown)
    check_parent(target, shown)
    check_existing(target, directory=directory, overwrite=overwrite)


def _refuse_enclosing(source: str, target: str, shown: str) -> None:
    """Refuse a ``target`` whose replacement would take the input or the current folder with it."""
    if not os.path.lexists(target):
        return
    why = None
    try:
        cwd: str | None = os.getcwd()
    except OSError:  # the current folder was deleted: nothing to protect
        cwd = None
    if _same(target, source):
        why = "is the input file"
    elif cwd is not None and _holds(target, cwd):
        why = "is the current folder" if _same(target, cwd) else "is a folder holding the current folder"
    elif _holds(target, source):
        why = "is a folder holding the input file"
    if why is not None:
        real = os.path.realpath(target)
        label = shown if shown == real else f"{shown} ({real})"
        raise ValueError(f"the output {label} {why}; choose a new path for the export")


def _same(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _holds(folder: str, path: str) -> bool:
    """Whether ``folder`` is ``path`` or one of the folders above it."""
    here = os.path.realpath(path)
    while True:
        if _same(folder, here):
            return True
        up = os.path.dirname(here)
        if up == here:
            return False
        here = up


def check_parent(target: str, shown: str) -> None:
    """Refuse a ``target`` whose folder is missing, not a folder or not writable.

    Raises:
        FileNotFoundError: the folder does not exist.
        NotADirectoryError: the path is not a folder.
        PermissionError: the folder is not writable.
    """
    parent = os.path.dirname(target)
    if not os.path.isdir(parent):
        if os.path.lexists(parent):
            raise NotADirectoryError(
                f"cannot write {shown}: {parent} is not a folder; choose a path in a folder"
            )
        raise FileNotFoundError(f"cannot write {shown}: the folder {parent} does not exist; create it first")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise PermissionError(
            f"cannot write {shown}: the folder {parent} is not writable; choose a writable folder"
        )


def check_existing(target: str, *, directory: bool, overwrite: bool) -> None:
    """Refuse a ``target`` that exists, unless ``overwrite`` and it is replaceable.

    Raises:
        FileExistsError: as said; the message says what ``target`` is and what to do.
    """
    found = existing_output(target, directory=directory)
    if found is not None and not (overwrite and found.replaceable(directory=directory)):
        raise FileExistsError(exists_message(target, found, directory=directory, force="overwrite=True"))


def _existing_folder(path: str) -> Existing:
    try:
        entries = sorted(os.listdir(path))
    except OSError as exc:
        return Existing(f"a folder that cannot be listed ({exc.strerror})")
    if not entries:
        return Existing("an empty folder", by_folder=True, by_file=True)
    fmt = _folder_export(path)
    if fmt is None:
        n = len(entries)
        return Existing(
            f"a folder of {n} entr{'y' if n == 1 else 'ies'} that is not an earlier kinodb export"
        )
    others = unexpected_entries(path, fmt)
    if others:
        listed = ", ".join(others[:3]) + (", ..." if len(others) > 3 else "")
        return Existing(f"an earlier kinodb {fmt} export holding entries the export did not write ({listed})")
    return Existing(f"an earlier kinodb {fmt} export", by_folder=True, by_file=True)


def _folder_export(path: str) -> str | None:
    """The format of the earlier kinodb export in the folder ``path``, or None."""
    for rel, formats in _FOLDER_MARKERS:
        facts = _export_facts(os.path.join(path, rel))
        if facts is not None and facts.get("format") in formats:
            return str(facts["format"])
    return None


def _export_facts(path: str) -> dict[str, Any] | None:
    """The ``export`` object that kinodb wrote into the JSON file ``path``, or None."""
    try:
        if not os.path.isfile(path) or os.path.getsize(path) > _MAX_MARKER_BYTES:
            return None
        with open(path, encoding="utf-8") as fh:
            return _kinodb_facts(json.load(fh))
    except (OSError, ValueError):
        return None


def _kinodb_facts(record: Any) -> dict[str, Any] | None:
    facts = record.get("export", record.get("kinodb_export")) if isinstance(record, dict) else None
    if isinstance(facts, dict) and str(facts.get("exporter", "")).startswith("kinodb "):
        return facts
    return None


def _hdf5_export(path: str) -> bool:
    """Whether the file ``path`` is an HDF5 export of kinodb."""
    try:
        with open(path, "rb") as fh:
            if fh.read(len(_HDF5_SIGNATURE)) != _HDF5_SIGNATURE:
                return False
    except OSError:
        return False
    h5py = require("h5py", extra="hdf5")
    try:
        with h5py.File(path, "r") as f:
            data = f.get("data")
            raw = data.attrs.get("kinodb_export") if isinstance(data, h5py.Group) else None
            if isinstance(raw, bytes):
                raw = raw.decode("utf-8")
            facts = _kinodb_facts({"export": json.loads(raw)}) if isinstance(raw, str) else None
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return facts is not None and facts.get("format") == "hdf5"


def _zarr_zip_export(path: str) -> list[str] | None:
    """For a zipped zarr export of kinodb at ``path`` (``.zattrs`` with its facts), the
    entries in it that the export did not write (empty: none); None for any other file."""
    try:
        with zipfile.ZipFile(path) as zf:
            if zf.getinfo(".zattrs").file_size > _MAX_MARKER_BYTES:
                return None
            attrs = json.loads(zf.read(".zattrs").decode("utf-8"))
            facts = _kinodb_facts(attrs)
            names = zf.namelist()
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return None
    if facts is None or facts.get("format") != "zarr":
        return None
    return unexpected_zip_entries(names, attrs)


# -- staging --------------------------------------------------------------------------------


@contextlib.contextmanager
def staged(target: str, *, directory: bool, overwrite: bool, shown: str | None = None) -> Iterator[str]:
    """Yield a temporary path beside ``target``; move it into place when the block succeeds.

    On any failure the temporary output is removed and ``target`` is left as it was; OS
    errors name ``target`` (``shown``, as the caller spelled it), never the temporary path,
    and those of a full, read-only or forbidden file system say what to do. ``target`` is
    replaced only where `existing_output` says it may be; an earlier folder there is
    moved aside while the new one moves in, and put back by the next export if a killed
    process left it aside (`_restore_stale`).

    Raises:
        FileExistsError: ``target`` exists and is not replaceable, or ``overwrite`` is False.
        FileNotFoundError: the folder that should hold ``target`` does not exist.
        PermissionError: that folder is not writable.
    """
    target = os.path.abspath(target)
    shown = target if shown is None else shown
    check_parent(target, shown)
    parent, base = os.path.split(target)
    _restore_stale(target)
    _remove_stale(parent, base)
    check_existing(target, directory=directory, overwrite=overwrite)
    token = f"{os.getpid()}.{secrets.token_hex(4)}"
    tmp = os.path.join(parent, f".{base}.{token}.tmp")
    created = False
    try:  # a signal that lands as soon as the staging folder exists still has it removed
        _create_staging(tmp, target, directory=directory, shown=shown)
        created = True
        yield tmp
        check_existing(target, directory=directory, overwrite=overwrite)  # it may have changed meanwhile
        aside = os.path.join(parent, f".{base}.{token}")
        _publish(tmp, target, f"{aside}.old", f"{aside}.del")
    except BaseException as exc:
        _remove(tmp)
        if created and isinstance(exc, OSError):  # `_create_staging`'s own errors name the output
            named = _naming_target(exc, tmp, shown)
            if named is not exc:
                raise named from exc
        raise
    with contextlib.suppress(OSError):
        fd = os.open(parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _create_staging(tmp: str, target: str, *, directory: bool, shown: str) -> None:
    """Create the staging folder ``tmp`` for ``target``, or try creating the file (the writer creates it)."""
    try:
        if directory:
            os.mkdir(tmp)
        else:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
            os.unlink(tmp)
    except OSError as exc:
        advice = _ADVICE.get(exc.errno or 0, "choose another path")
        why = exc.strerror or str(exc)
        if exc.errno == errno.ENAMETOOLONG:  # the name may fit while the temporary one does not
            extra = len(os.path.basename(tmp)) - len(os.path.basename(target))
            why += f" (an export first writes under a name {extra} characters longer)"
        raise _like(exc, f"cannot write {shown} in {os.path.dirname(tmp)}: {why}; {advice}") from exc


def _naming_target(exc: OSError, tmp: str, shown: str) -> OSError:
    """``exc`` naming the output (``shown``) instead of the staging path ``tmp``, which
    people never see.

    An error of a full, read-only or forbidden file system (`_ADVICE`) says so in one
    line with the advice, also where it named no path (a write that runs out of space
    names none) or only within its text (h5py's).
    """
    advice = _ADVICE.get(exc.errno or 0)
    filename = exc.filename if isinstance(exc.filename, str) else None
    inner = None
    if filename is not None and (filename == tmp or filename.startswith(tmp + os.sep)):
        inner = os.path.relpath(filename, tmp)
    inside = inner is not None
    where = "" if inner in (None, ".") else f" (writing {inner})"
    if advice is not None and (inside or filename is None or tmp in str(exc)):
        return _like(exc, f"{shown}: {os.strerror(exc.errno or 0)}{where}; {advice}")
    if inside:
        return _like(exc, f"{shown}: {exc.strerror or exc}{where}")
    if tmp in str(exc):
        return _like(exc, f"{shown}: {str(exc).replace(tmp, shown)}")
    return exc


def _like(exc: OSError, message: str) -> OSError:
    """An error of ``exc``'s class and errno with ``message`` as its text."""
    try:
        new = type(exc)(message)
    except TypeError:  # a subclass with another constructor
        new = OSError(message)
    new.errno = exc.errno
    return new


def _publish(tmp: str, target: str, old: str, dead: str) -> None:
    """Move ``tmp`` to ``target``; an earlier folder there goes aside to ``old``, then
    (renamed ``dead``) away.

    Whatever interrupts it, ``target`` is left holding the new output or the earlier
    one: an ``old`` that a killed process leaves behind is restored by the next export
    to ``target`` (`_restore_stale`).
    """
    if os.path.isfile(tmp) and not os.path.isdir(target):
        os.replace(tmp, target)  # one atomic step, replacing a file if there is one
        return
    if not os.path.lexists(target):
        os.rename(tmp, target)
        return
    # A folder cannot be replaced in one step: move the old output aside, then the new
    # one in, and put the old one back if that fails.
    try:
        os.rename(target, old)
        os.rename(tmp, target)
    except BaseException:
        if os.path.lexists(tmp):  # the new output did not move in
            if os.path.lexists(old) and not os.path.lexists(target):
                os.rename(old, target)
            raise
        _discard(old, dead)  # interrupted once both were moved: the replacement is done
        raise
    _discard(old, dead)


def _discard(old: str, dead: str) -> None:
    """Delete the replaced output ``old``, first renamed ``dead``: an ``old`` is whole, a
    ``dead`` one may be partly deleted. Interrupted, the deletion is finished first."""
    with contextlib.suppress(OSError):
        os.rename(old, dead)
    gone = dead if os.path.lexists(dead) else old
    try:
        _remove(gone)
    except BaseException:
        _remove(gone)  # a second signal of the kind is ignored while cleaning up
        raise


def _remove(path: str) -> None:
    with contextlib.suppress(OSError):
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            os.unlink(path)


def _restore_stale(target: str) -> None:
    """Put back the earlier output that an export killed while replacing ``target`` left
    aside (``.NAME.PID.TOKEN.old`` of a process gone), when ``target`` is missing."""
    found = [] if os.path.lexists(target) else stale_temps(target, kinds=("old",))
    if not found:
        return
    try:
        os.rename(found[0], target)
    except OSError as exc:
        logger.warning(
            "%s is missing and %s holds the earlier output that an interrupted export moved aside; it "
            "could not be put back (%s): move it there yourself", target, found[0], exc.strerror or exc
        )  # fmt: skip
        return
    logger.warning(
        "%s: put back the output that an interrupted export had moved aside to %s", target, found[0]
    )


def _remove_stale(parent: str, base: str) -> None:
    """Delete temporary outputs that killed exports of ``base`` left behind: staging
    outputs, replaced outputs (``.old`` only while the output exists: see
    `_restore_stale`), and replaced outputs partly deleted."""
    target = os.path.join(parent, base)
    kinds = ("tmp", "del", "old") if os.path.lexists(target) else ("tmp", "del")
    for tmp in stale_temps(target, kinds=kinds):
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
