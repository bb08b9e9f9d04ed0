"""Physical merge: many ``.kdb`` files (optionally filtered by KQL) into one."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from kinodb.errors import QuerySyntaxError, WriterError
from kinodb.kdb.reader import Database, open_database
from kinodb.kdb.writer import Writer


@dataclass(frozen=True, slots=True)
class MergeInput:
    """What one input contributed."""

    path: str
    kept: int
    total: int
    frames: int


@dataclass(frozen=True, slots=True)
class MergeResult:
    """What `merge` wrote."""

    output: str
    inputs: list[MergeInput]
    warnings: list[str] = field(default_factory=list)

    @property
    def episodes(self) -> int:
        """Episodes written."""
        return sum(i.kept for i in self.inputs)

    @property
    def frames(self) -> int:
        """Frames written."""
        return sum(i.frames for i in self.inputs)


# Metadata keys a merge writes itself, or that describe how one input was made.
_OWN_METADATA = frozenset({"merged_from", "filter", "image_orientation", "ingest"})


def merge(
    inputs: Sequence[str | os.PathLike[str]],
    output: str | os.PathLike[str],
    *,
    filter: str | None = None,
    overwrite: bool = False,
) -> MergeResult:
    """Write the episodes of ``inputs`` (those matching ``filter``) to one new file.

    Each kept episode's payload is copied byte for byte (a JPEG stays the same JPEG)
    after its checksum is verified, and gains the extra fields ``source_file`` and
    ``source_episode`` (a pair it already held moves to ``origin_file`` and
    ``origin_episode``). Inputs may have different schemas: dims are per episode, the
    output schema lists every source's schema under ``"sources"``, and differing dims,
    cameras and extra arrays are reported in `MergeResult.warnings`. Each input's
    metadata is kept under ``metadata["merged_from"]``; keys all inputs agree on are
    also copied to the top. Like every write, the output appears only
    when complete.

    Example:
        >>> kinodb.merge(["a.kdb", "b.kdb"], "train.kdb", filter="success = true AND split = 'train'")

    Raises:
        QuerySyntaxError: ``filter`` does not parse or does not fit an input's fields.
        WriterError: no input has a matching episode.
        FileExistsError: ``output`` exists and ``overwrite`` is False.
    """
    if isinstance(inputs, (str, bytes, os.PathLike)):
        raise TypeError(
            f"inputs must be a list of paths, not one path: merge([{os.fsdecode(inputs)!r}], ...)"
        )
    if not inputs:
        raise ValueError("merge needs at least one input file")
    dbs = [open_database(p) for p in inputs]
    try:
        from kinodb.kql._eval import fields_of  # deferred: kql builds on kdb

        absent = fields_of(dbs) if filter else frozenset()  # a field some inputs lack is null there
        kept = [_select(db, filter, absent) for db in dbs]
        if not any(len(k) for k in kept):
            where = f" match {filter!r}" if filter else ""
            raise WriterError(f"no episode in {len(dbs)} input files{where}; nothing was written")
        warnings = _dim_warnings(dbs, kept) + _layout_warnings(dbs, kept)
        return _write(dbs, kept, os.fspath(output), filter, overwrite, warnings)
    finally:
        for db in dbs:
            db.close()


def _select(db: Database, kql: str | None, absent: frozenset[str] = frozenset()) -> np.ndarray:
    if kql is None:
        return np.arange(len(db), dtype=np.int64)
    try:
        return db.query(kql, absent=absent)
    except QuerySyntaxError as exc:
        raise QuerySyntaxError(f"{db.path()}: {exc}", exc.position) from exc


def _dims(db: Database, kept: np.ndarray) -> tuple[list[int], list[int]]:
    cols = db._cols
    return (
        sorted(set(cols["action_dim"][kept].tolist())),
        sorted(set(cols["state_dim"][kept].tolist())),
    )


def _dim_warnings(dbs: list[Database], kept: list[np.ndarray]) -> list[str]:
    dims = [_dims(db, k) for db, k in zip(dbs, kept, strict=True) if len(k)]
    out = []
    for j, part in enumerate(("action_dim", "state_dim")):
        seen = sorted({d for ds in dims for d in ds[j]})
        if len(seen) > 1:
            per = ", ".join(
                f"{os.path.basename(db.path())}: {_dims(db, k)[j]}"
                for db, k in zip(dbs, kept, strict=True)
                if len(k)
            )
            out.append(f"{part} differs between episodes ({per}); readers must handle per-episode dims")
    return out


def _layout_warnings(dbs: list[Database], kept: list[np.ndarray]) -> list[str]:
    """Cameras of different sizes and extra arrays of different dtypes or shapes between the
    inputs, or held by only some of them."""
    used = [db for db, k in zip(dbs, kept, strict=True) if len(k)]
    out = []
    for key, kind, hint in (
        ("cameras", "camera", "batches need image_size=(H, W) to resize them alike"),
        ("arrays", "extra array", "readers must handle per-episode shapes"),
    ):
        specs = [db.schema().get(key, {}) for db in used]
        for name in sorted({n for spec in specs for n in spec}):
            seen = [
                (os.path.basename(db.path()), _layout(spec.get(name), key))
                for db, spec in zip(used, specs, strict=True)
            ]
            if len({text for _, text in seen}) > 1:
                per = ", ".join(f"{file}: {text}" for file, text in seen)
                out.append(f"{kind} {name!r} differs between inputs ({per}); {hint}")
    return out


def _layout(spec: dict[str, Any] | None, key: str) -> str:
    if spec is None:
        return "absent"
    if key == "cameras":
        # Codecs may differ (frames decode alike); sizes may not.
        return "x".join("?" if spec.get(k) is None else str(spec[k]) for k in ("height", "width", "channels"))
    shape = spec.get("shape")
    return f"{spec.get('dtype') or 'mixed dtypes'} {'?' if shape is None else tuple(shape)}"


def _shared_components(dbs: list[Database]) -> dict[str, Any]:
    """Named components every input declares identically (the rest stay per source)."""
    shared: dict[str, Any] = {}
    for part in ("actions", "states"):
        specs = [
            {k: v for k, v in db.schema().get(part, {}).items() if k in ("components", "names")} for db in dbs
        ]
        if specs[0] and all(s == specs[0] for s in specs):
            shared[part] = specs[0]
    return shared


def _write(
    dbs: list[Database],
    kept: list[np.ndarray],
    output: str,
    kql: str | None,
    overwrite: bool,
    warnings: list[str],
) -> MergeResult:
    sources = [
        {"file": db.path(), "format_version": db.version(), "source_format": db.dataset_info().get("source_format"),
         "episodes": len(k), "of": len(db), "schema": db.schema()}
        for db, k in zip(dbs, kept, strict=True)
    ]  # fmt: skip
    report = []
    # The inputs' metadata stays with each input; keys every contributing input agrees on
    # (a robot, a calibration) also stand at the top, as in a file written directly.
    metas = [_compact(db.metadata()) for db in dbs]
    used = [m for m, k in zip(metas, kept, strict=True) if len(k)]
    metadata: dict[str, Any] = {
        key: value
        for key, value in used[0].items()
        if key not in _OWN_METADATA and all(key in m and m[key] == value for m in used[1:])
    }
    metadata["merged_from"] = [
        {**{k: s[k] for k in ("file", "episodes", "of")}, "metadata": m}
        for s, m in zip(sources, metas, strict=True)
    ]
    metadata["filter"] = kql
    # How the frames stand (the HDF5 ingest's --flip-images turns LIBERO's upright): kept
    # when every input with cameras agrees, "mixed" (with a warning) when they differ.
    orientations = {
        db.metadata().get("image_orientation")
        for db, k in zip(dbs, kept, strict=True)
        if len(k) and db.schema().get("cameras")
    }
    if len(orientations) == 1 and None not in orientations:
        metadata["image_orientation"] = orientations.pop()
    elif len(orientations) > 1:
        metadata["image_orientation"] = "mixed"
        warnings.append(
            "the inputs' camera frames stand differently (some were turned upright on ingest with "
            "--flip-images, some not): the output records image_orientation 'mixed'"
        )
    with Writer(
        output,
        mode="w" if overwrite else "x",
        schema=_shared_components(dbs),
        source_format="kinodb-merge",
        metadata=metadata,
    ) as w:
        w.schema["sources"] = sources
        # A 0.1 camera that cannot keep its encoded frames is stored raw: say so in the result.
        for db, positions in zip(dbs, kept, strict=True):
            frames = 0
            for i in positions.tolist():
                w.copy_episode(db, i, extra=_provenance(db, i), notes=warnings)
                frames += int(db._cols["num_frames"][i])
            report.append(MergeInput(db.path(), len(positions), len(db), frames))
    return MergeResult(output, report, warnings)


def _compact(meta: dict[str, Any]) -> dict[str, Any]:
    """An input's metadata with its own ``merged_from`` cut to file names and counts, so
    merging merges does not nest every earlier input's metadata again."""
    inner = meta.get("merged_from")
    if isinstance(inner, list):
        keep = ("file", "episodes", "of")
        meta = {
            **meta,
            "merged_from": [{k: e[k] for k in keep if k in e} for e in inner if isinstance(e, dict)],
        }
    return meta


def _provenance(db: Database, i: int) -> dict[str, Any]:
    """``source_file``/``source_episode`` of the input; a pair the episode already held (its
    ingest source, or an earlier merge's input) moves to ``origin_file``/``origin_episode``
    unless those are set, so the first origin survives any number of merges."""
    extra: dict[str, Any] = {"source_file": db.path(), "source_episode": i}
    meta = db.read_meta(i)
    if "source_file" in meta and "origin_file" not in meta:
        extra["origin_file"] = meta["source_file"]
        extra["origin_episode"] = meta.get("source_episode")
    return extra


__all__ = ["MergeInput", "MergeResult", "merge"]
