"""Run an export: open, select, write into a staging path, publish, report."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from typing import Any

from kinodb._version import __version__
from kinodb.export import _json_meta, _numpy_dir
from kinodb.export._base import ExportReport, check_output, select, staged, tree_size
from kinodb.kdb.reader import Database, open_database

FORMATS = ("numpy", "json", "hdf5", "lerobot", "zarr", "rlds")
HDF5_COMPRESSIONS = ("gzip", "lzf", "none")
"""What the ``hdf5`` export's ``compression`` takes (``gzip`` at level 4, h5py's default)."""

# Without a format, an output named like an HDF5 file is exported as one.
SUFFIX_FORMATS = {".hdf5": "hdf5", ".h5": "hdf5", ".he5": "hdf5", ".zarr": "zarr"}
ZIP_SUFFIX = ".zip"
"""A ``zarr`` export to a name ending so (``pusht.zarr.zip``) is a zip archive of the store."""
# Suffixes of single files that no export writes: a folder so named is a surprise, so an
# output named so needs its format said.
_FILE_SUFFIXES = {
    ".json": ("json", "the json export is a folder (dataset.json, episodes.jsonl), not one JSON file"),
    ".jsonl": ("json", "the json export is a folder (dataset.json, episodes.jsonl), not one JSON file"),
    ".kdb": ("numpy", "an export never writes a .kdb file (kino merge --filter copies episodes into one)"),
}

_FormatWriter = Callable[[Database, list[int], str, dict[str, Any]], list[str] | None]


def _hdf5_writer(flip_images: bool, next_obs: bool, compression: str | None) -> _FormatWriter:
    from kinodb.export import hdf5  # deferred: it is the only module that needs h5py

    def write(db: Database, positions: list[int], out: str, facts: dict[str, Any]) -> list[str]:
        return hdf5.write(
            db, positions, out, facts, flip_images=flip_images, next_obs=next_obs, compression=compression
        )

    return write


def _lerobot_writer(video_codec: str | None, images_as: str | None) -> _FormatWriter:
    from kinodb.export import lerobot  # deferred: it is the only module that needs pyarrow and av

    def write(db: Database, positions: list[int], out: str, facts: dict[str, Any]) -> list[str]:
        return lerobot.write(
            db, positions, out, facts, video_codec=video_codec or "h264", images_as=images_as or "video"
        )

    return write


def _zarr_writer(zipped: bool) -> _FormatWriter:
    from kinodb.export import zarr  # deferred: it is the only module that needs numcodecs

    def write(db: Database, positions: list[int], out: str, facts: dict[str, Any]) -> list[str]:
        return zarr.write(db, positions, out, facts, zipped=zipped)

    return write


def _rlds_writer(target: str) -> _FormatWriter:
    from kinodb.export import rlds

    def write(db: Database, positions: list[int], out: str, facts: dict[str, Any]) -> list[str]:
        return rlds.write(db, positions, out, facts, target=target)

    return write


def zipped_output(out: str | os.PathLike[str], format: str) -> bool:
    """Whether the export ``format`` to ``out`` writes one file (a zip archive), not a folder."""
    return format == "zarr" and os.fspath(out).lower().endswith(ZIP_SUFFIX)


_WRITERS: dict[str, _FormatWriter] = {
    "numpy": _numpy_dir.write,
    "json": _json_meta.write,
}  # and "hdf5" and "lerobot", built per call with their options


def output_format(out: str | os.PathLike[str], format: str | None, *, option: str = "format={!r}") -> str:
    """The format of an export to ``out``: ``format`` when given, else from ``out``'s name.

    A name ending in ``.hdf5``, ``.h5`` or ``.he5`` means ``hdf5``, one ending in ``.zarr``
    or ``.zarr.zip`` means ``zarr``; any other name means ``numpy``. ``option`` spells how to pass a format (``"--format {}"`` on the command line).

    Raises:
        ValueError: ``format`` is unknown; or it is None and ``out`` ends in ``.json``,
            ``.jsonl`` or ``.kdb``, names of files that no export writes, or in ``.zip``
            (not ``.zarr.zip``), which only ``zarr`` writes.
    """
    if format is not None:
        if format not in FORMATS:
            raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {format!r}")
        return format
    name = os.fspath(out)
    if name.lower().endswith(".zarr" + ZIP_SUFFIX):
        return "zarr"
    if name.lower().endswith(ZIP_SUFFIX):
        raise ValueError(
            f"the output {name} ends in {ZIP_SUFFIX}, and only the zarr export writes a zip archive: pass "
            f"{option.format('zarr')} for a zipped zarr replay buffer (or name it .zarr.zip), or name the output "
            f"without {ZIP_SUFFIX}"
        )
    suffix = os.path.splitext(name)[1].lower()
    if suffix in _FILE_SUFFIXES:
        fmt, why = _FILE_SUFFIXES[suffix]
        raise ValueError(
            f"the output {name} ends in {suffix}, but {why}: name the output without {suffix}, or pass "
            f"{option.format(fmt)} to write a folder of that name"
        )
    return SUFFIX_FORMATS.get(suffix, "numpy")


def export(
    path: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    format: str | None = None,
    filter: str | None = None,
    overwrite: bool = False,
    video_codec: str | None = None,
    images_as: str | None = None,
    flip_images: bool | None = None,
    next_obs: bool | None = None,
    compression: str | None = None,
) -> ExportReport:
    """Export a ``.kdb`` file (the episodes matching ``filter``) to another format.

    ``numpy``, ``json`` and ``lerobot`` write the folder ``out``; ``hdf5`` writes the
    robomimic-layout file ``out``; ``zarr`` writes a replay buffer in diffusion_policy's
    layout (`kinodb.export.zarr`), the folder ``out``, or a zip archive of it where ``out``
    ends in ``.zip``; ``rlds`` writes the folder ``out`` as an RLDS dataset in TFDS's
    layout (`kinodb.export.rlds`), named after ``out`` (``rlds/pick/1.0.0``: ``pick``, version
    ``1.0.0``), and creates the folders above it that are missing. Without ``format``, an ``out`` ending in ``.hdf5``, ``.h5`` or
    ``.he5`` is exported as ``hdf5``, one ending in ``.zarr`` or ``.zarr.zip`` as ``zarr``,
    another ending in ``.zip`` needs ``format``, and any other is ``numpy`` (see
    `output_format`). The output is written beside ``out`` under a temporary name and
    renamed into place when complete, so a failed export leaves nothing (and an existing
    output unchanged). ``overwrite`` replaces only an earlier kinodb export or an empty
    folder, and a file only with ``hdf5`` or a zipped ``zarr`` (see `existing_output`); an output that is the
    current folder, the input file or a folder holding either is refused even then.
    ``video_codec`` (``h264``, the default, or ``av1``) and ``images_as`` (``video``, the
    default, or ``image``) apply to ``lerobot`` only. ``flip_images`` and ``next_obs``
    apply to ``hdf5``: frames the ingest turned upright (``--flip-images``) are turned
    back to the source's orientation unless ``flip_images`` is False, and each demo holds
    ``next_obs`` (every obs key one frame later, as robomimic's files do, which its
    readers load by default) unless ``next_obs`` is False, which halves the file.
    ``compression`` (``hdf5`` only: `HDF5_COMPRESSIONS`) compresses the demos' datasets with
    ``"gzip"`` (level 4, h5py's default, as robomimic's ``dataset_states_to_obs.py
    --compress`` writes) or ``"lzf"``; by default (None or ``"none"``) they are written
    uncompressed, which robomimic reads as well, in a larger file.

    Example:
        >>> kinodb.export.export("pick.kdb", "pick_npy", filter="success = true")
        >>> kinodb.export.export("pick.kdb", "pick_lerobot", format="lerobot", video_codec="av1")
        >>> kinodb.export.export("pick.kdb", "pick.zarr.zip")  # a zipped replay buffer
        >>> kinodb.export.export("pick.kdb", "rlds/pick/1.0.0", format="rlds")  # tfds.load("pick", data_dir="rlds")

    Raises:
        ConversionError: no episode matches, or the content cannot be written in this format.
        QuerySyntaxError: ``filter`` does not parse.
        ValueError: an unknown format or a misplaced option; ``out`` is empty, is the
            current folder, the input file or a folder holding either.
        FileExistsError: ``out`` exists and is not replaceable, or ``overwrite`` is False.
        FileNotFoundError: the folder that should hold ``out`` does not exist (but for ``rlds``).
        PermissionError: that folder is not writable.
        MissingExtraError: ``hdf5`` without h5py, ``lerobot`` without pyarrow or PyAV, or
            ``zarr`` without numcodecs.
    """
    shown = os.fspath(out)
    if not shown:
        raise ValueError("the output path is empty; name the folder or file to write")
    format = output_format(shown, format)
    if format != "lerobot" and (video_codec is not None or images_as is not None):
        raise ValueError(f"video_codec and images_as apply to format 'lerobot' only, not {format!r}")
    for name, value, flag in (
        ("flip_images", flip_images, "--keep-upright"),
        ("next_obs", next_obs, "--no-next-obs"),
        ("compression", compression, "--hdf5-compression"),
    ):
        if format != "hdf5" and value is not None:
            raise ValueError(f"{name} (kino export {flag}) applies to format 'hdf5' only, not {format!r}")
    if compression is not None and compression not in HDF5_COMPRESSIONS:
        raise ValueError(
            f"compression must be one of {', '.join(map(repr, HDF5_COMPRESSIONS))} or None, got {compression!r}"
        )
    t0 = time.perf_counter()
    target = os.path.abspath(shown)
    with _parents(target, format == "rlds"):
        return _export(path, shown, target, format, filter, overwrite, t0, video_codec, images_as, flip_images,
                       next_obs, compression)  # fmt: skip


@contextlib.contextmanager
def _parents(target: str, make: bool) -> Iterator[None]:
    """Create the missing folders above ``target`` where ``make`` (an RLDS dataset's
    ``<name>/<version>`` folder), removing them again, while empty, if the export fails."""
    made: list[str] = []
    parent = os.path.dirname(target)
    while make and parent and not os.path.exists(parent):
        made.append(parent)
        parent = os.path.dirname(parent)
    for folder in reversed(made):
        os.mkdir(folder)
    try:
        yield
    except BaseException:
        for folder in made:
            with contextlib.suppress(OSError):
                os.rmdir(folder)
        raise


def _export(
    path: str | os.PathLike[str], shown: str, target: str, format: str, filter: str | None, overwrite: bool,
    t0: float, video_codec: str | None, images_as: str | None, flip_images: bool | None, next_obs: bool | None,
    compression: str | None,
) -> ExportReport:  # fmt: skip
    directory = format != "hdf5" and not zipped_output(shown, format)
    check_output(os.fspath(path), target, shown=shown, directory=directory, overwrite=overwrite)
    if format == "lerobot":
        writer = _lerobot_writer(video_codec, images_as)
    elif format == "zarr":
        writer = _zarr_writer(not directory)
    elif format == "rlds":
        writer = _rlds_writer(target)
    elif format == "hdf5":
        writer = _hdf5_writer(flip_images is not False, next_obs is not False, compression)
    else:
        writer = _WRITERS[format]
    with open_database(path) as db:
        positions = select(db, filter)
        if not db.version().startswith("0."):  # v1 payloads carry checksums: never export damage
            from kinodb.kdb.writer import verify_payload

            for i in positions:
                verify_payload(db, i)
        frames = int(db._int_columns()["num_frames"][positions].sum())
        facts = {"format": format, "source": db.path(), "filter": filter, "episodes": len(positions),
                 "frames": frames, "exporter": f"kinodb {__version__}"}  # fmt: skip
        with staged(target, directory=directory, overwrite=overwrite, shown=shown) as tmp:
            warnings = writer(db, positions, tmp, facts) or []
            files, size = tree_size(tmp)
    return ExportReport(
        output=target, format=format, episodes=len(positions), frames=frames, files=files, bytes=size,
        seconds=time.perf_counter() - t0, warnings=tuple(warnings),
    )  # fmt: skip
