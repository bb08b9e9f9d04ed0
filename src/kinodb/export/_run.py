"""Run an export: open, select, write into a staging path, publish, report."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

from kinodb._version import __version__
from kinodb.export import _json_meta, _numpy_dir
from kinodb.export._base import ExportReport, select, staged, tree_size
from kinodb.kdb.reader import Database, open_database

FORMATS = ("numpy", "json", "hdf5")

_FormatWriter = Callable[[Database, list[int], str, dict[str, Any]], list[str] | None]


def _hdf5_write(db: Database, positions: list[int], out: str, facts: dict[str, Any]) -> list[str]:
    from kinodb.export import hdf5  # deferred: it is the only module that needs h5py

    return hdf5.write(db, positions, out, facts)


_WRITERS: dict[str, _FormatWriter] = {
    "numpy": _numpy_dir.write,
    "json": _json_meta.write,
    "hdf5": _hdf5_write,
}


def export(
    path: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    format: str = "numpy",
    filter: str | None = None,
    overwrite: bool = False,
) -> ExportReport:
    """Export a ``.kdb`` file (the episodes matching ``filter``) to another format.

    ``numpy`` and ``json`` write the folder ``out``; ``hdf5`` writes the robomimic-layout
    file ``out``. The output is written beside ``out`` under a temporary name and
    renamed into place when complete, so a failed export leaves nothing (and an existing
    output, with ``overwrite``, unchanged).

    Example:
        >>> kinodb.export.export("pick.kdb", "pick_npy", filter="success = true")

    Raises:
        ConversionError: no episode matches, or the content cannot be written in this format.
        QuerySyntaxError: ``filter`` does not parse.
        FileExistsError: ``out`` exists and ``overwrite`` is False.
        MissingExtraError: ``hdf5`` without h5py installed.
    """
    if format not in _WRITERS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {format!r}")
    t0 = time.perf_counter()
    target = os.path.abspath(os.fspath(out))
    if os.path.realpath(target) == os.path.realpath(path):
        raise ValueError(f"the output {target} is the input file; choose another output path")
    with open_database(path) as db:
        positions = select(db, filter)
        frames = int(db.episodes()["num_frames"][positions].sum())
        facts = {"format": format, "source": db.path(), "filter": filter, "episodes": len(positions),
                 "frames": frames, "exporter": f"kinodb {__version__}"}  # fmt: skip
        with staged(target, directory=format != "hdf5", overwrite=overwrite) as tmp:
            warnings = _WRITERS[format](db, positions, tmp, facts) or []
            files, size = tree_size(tmp)
    return ExportReport(
        output=target, format=format, episodes=len(positions), frames=frames, files=files, bytes=size,
        seconds=time.perf_counter() - t0, warnings=tuple(warnings),
    )  # fmt: skip
