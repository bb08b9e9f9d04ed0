"""Physical merge: many ``.kdb`` files (optionally filtered by KQL) into one."""

from __future__ import annotations

import os
import shlex
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from kinodb._provenance import PROVENANCE, carried
from kinodb.errors import ConversionError, FormatError, QuerySyntaxError, WriterError
from kinodb.kdb._files import human_bytes
from kinodb.kdb._layout import DTYPES, KIND_ARRAY
from kinodb.kdb._table import EXTRA_ABSENT
from kinodb.kdb.reader import Database, open_database
from kinodb.kdb.upgrade import (
    SKIP_ADVICE,
    Identity,
    check_columns,
    episode_error,
    leave_out,
    refuse_changed,
    same_file_inputs,
    skip_reason,
    unnamed,
)
from kinodb.kdb.writer import Writer

if TYPE_CHECKING:
    from kinodb._window_checks import _Sections


@dataclass(frozen=True, slots=True)
class MergeInput:
    """What one input contributed: ``kept`` of its ``total`` episodes (``frames`` frames)
    were written; ``skipped`` lists the positions that matched but were left out
    (``on_error="skip"``)."""

    path: str
    kept: int
    total: int
    frames: int
    skipped: tuple[int, ...] = ()


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
_AS_STORED = "as_stored"  # the image_orientation of frames kept as the source stored them


def merge(
    inputs: Sequence[str | os.PathLike[str]],
    output: str | os.PathLike[str],
    *,
    filter: str | None = None,
    overwrite: bool = False,
    on_error: str = "raise",
) -> MergeResult:
    """Write the episodes of ``inputs`` (those matching ``filter``) to one new file.

    Each kept episode's payload is copied byte for byte (a JPEG stays the same JPEG)
    after its checksum is verified, and gains the extra fields ``source_file`` (the
    input's absolute path) and ``source_episode`` (its position there). What the episode
    already held of these two (its ingest source, an earlier merge's input, or fields of
    its own; one or both) moves to ``origin_file``/``origin_episode`` when neither of those
    is set, so the first origin survives any number of merges (the two move together: an
    origin is never half of one source and half of another). When an origin is set, each
    held value is kept as ``pre_merge_source_file``/``pre_merge_source_episode``
    (``..._2`` and on when that is taken too), with a warning, except the pair an earlier
    merge wrote (``source_file`` one of the files in the input's ``merged_from``), which
    the output's metadata keeps naming. No other value is lost. Episodes of a format 0.1 input are
    converted as `kino upgrade` converts them: arrays exactly, JPEG/PNG frames with their
    stored bytes, raw frames raw (a camera that cannot keep its bytes is stored raw,
    decoded exactly, with a warning). Inputs may have different schemas: dims and dtypes are
    per episode, the output schema lists every source's schema under ``"sources"``, and
    differing dims, dtypes, cameras and extra arrays are reported in `MergeResult.warnings`
    with what readers need (a file of one dtype per array for `kinodb.stats`), as
    is a file given more than once (its episodes are written once per time). Each
    input's metadata is kept under ``metadata["merged_from"]``; keys, and the named
    components of actions and states, that every input contributing episodes agrees on
    are also set at the top. Like every write, the output appears only when complete.

    An episode that cannot be read or stored (damaged, 0 frames, fps <= 0) fails the
    merge, naming the file and the episode; with ``on_error="skip"`` it is left out
    instead, listed in ``metadata["merged_from"][k]["skipped"]`` and in the warnings.

    Example:
        >>> kinodb.merge(["a.kdb", "b.kdb"], "train.kdb", filter="success = true AND split = 'train'")

    Raises:
        QuerySyntaxError: ``filter`` does not parse (the message names the filter, before any
            input is opened), is not valid Unicode text (the output records it), or does not
            fit an input's fields (the message names the input).
        WriterError: no input has a matching episode; or ``output`` is an input and another
            writer appended to it (or replaced it) during the merge; nothing was written.
        FormatError: an input is not a readable ``.kdb`` file, its index fails its checksum,
            or an episode's data is damaged (`CorruptFileError`; nothing is written).
        ConversionError: an episode cannot be stored in format v1, or every matching
            episode was skipped.
        FileExistsError: ``output`` exists and ``overwrite`` is False.
    """
    if isinstance(inputs, (str, bytes, os.PathLike)):
        raise TypeError(
            f"inputs must be a list of paths, not one path: merge([{os.fsdecode(inputs)!r}], ...)"
        )
    if not inputs:
        raise ValueError("merge needs at least one input file")
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    if filter is not None:
        _check_filter(filter)
    dbs: list[Database] = []
    out = os.fspath(output)
    inplace: list[tuple[Database, Identity]] = []  # inputs that are the output: checked before it is replaced
    try:
        for p in inputs:
            dbs.append(open_database(p))
            inplace += same_file_inputs(dbs[-1:], out)
            # Before anything is written: a damaged index must not be stored again under a
            # valid checksum (legacy files have none to check).
            dbs[-1]._verify_index()
            check_columns(dbs[-1])  # damage every episode shares: skipping episodes cannot help
        from kinodb.kql._eval import fields_of  # deferred: kql builds on kdb

        absent = fields_of(dbs) if filter else frozenset()  # a field some inputs lack is null there
        kept = [_select(db, filter, absent) for db in dbs]
        if not any(len(k) for k in kept):
            where = f" match {filter!r}" if filter else ""
            raise WriterError(f"no episode in {len(dbs)} input files{where}; nothing was written")
        warnings = [
            *_same_file_warnings(dbs, out), *_dim_warnings(dbs, kept), *_dtype_warnings(dbs, kept),
            *_layout_warnings(dbs, kept), *_sparse_field_warnings(dbs, kept),
        ]  # fmt: skip
        return _write(dbs, kept, out, filter, overwrite, on_error == "skip", warnings, inplace)
    finally:
        for db in dbs:
            db.close()


def _file_id(path: str) -> tuple[int, int] | str | None:
    """What names the same file under any path (device and inode), or None if absent."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino) if st.st_ino else os.path.realpath(path)


def _same_file_warnings(dbs: list[Database], output: str) -> list[str]:
    """A file given as an input more than once (each of its episodes is written once per
    time: it may be meant, as a weighting), and an output that is also an input."""
    given: dict[tuple[int, int] | str | None, list[str]] = {}
    for db in dbs:
        given.setdefault(_file_id(db.path()), []).append(db.path())
    out = []
    for paths in given.values():
        if len(paths) > 1:
            names = list(dict.fromkeys(paths))
            also = f" (as {', '.join(names[1:])})" if len(names) > 1 else ""
            out.append(
                f"{names[0]} is an input {len(paths)} times{also}: each of its episodes is written "
                f"{len(paths)} times; give it once unless that is meant"
            )
    target = _file_id(output)
    if target is not None and target in given:
        out.append(f"the output {output} is also an input: the merged file replaces it")
    return out


def _check_filter(kql: str) -> None:
    """Refuse a filter that the output's metadata cannot record, or that does not parse, before
    any input is opened: the message is the filter's, not an input file's."""
    from kinodb.kql._lexer import query_error  # deferred: kql builds on kdb
    from kinodb.kql._parser import parse

    try:
        kql.encode()
    except UnicodeEncodeError as exc:
        # A command-line byte that is not UTF-8 arrives as a lone surrogate: KQL could compare
        # it, but metadata["filter"] cannot store it. Shown escaped, so the message prints.
        shown = kql.encode("utf-8", "backslashreplace").decode()
        raise query_error(
            shown, exc.start, "filter: not valid Unicode text (a byte that is not UTF-8)",
            ["the output records the filter in its metadata: write it in UTF-8"],
        ) from None  # fmt: skip
    try:
        parse(kql)
    except QuerySyntaxError as exc:
        raise QuerySyntaxError(f"filter: {exc}", exc.position) from exc


def _select(db: Database, kql: str | None, absent: frozenset[str] = frozenset()) -> np.ndarray:
    if kql is None:
        return np.arange(len(db), dtype=np.int64)
    try:
        return db.query(kql, absent=absent)
    except QuerySyntaxError as exc:  # the filter parses (`_check_filter`): a field or type of this file
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


# Extra fields held by under this share of the merged episodes are "sparse"; they are named
# when their columns would take more than both of these in the merged index.
_SPARSE_SHARE = 0.1
_SPARSE_BYTES_PER_EPISODE = 256
_SPARSE_BYTES = 16 << 20
_FIELD_BYTES = 9  # a field's state byte and 8-byte value (or JSON offset) per episode


def _sparse_field_warnings(dbs: list[Database], kept: list[np.ndarray]) -> list[str]:
    """A warning when extra fields that few of the merged episodes hold would make the
    merged index large: every field has a column over every episode (docs/format.md)."""
    held: dict[str, int] = {}
    for db, k in zip(dbs, kept, strict=True):
        extras = getattr(getattr(db, "_block", None), "extras", None)
        if not len(k) or not extras:
            continue
        for name, col in extras.items():
            held[name] = held.get(name, 0) + int((np.asarray(col.state)[k] != EXTRA_ABSENT).sum())
    total = sum(len(k) for k in kept)
    sparse = sorted((n for n, h in held.items() if h < _SPARSE_SHARE * total), key=lambda n: (held[n], n))
    cost = len(sparse) * _FIELD_BYTES * total
    if not sparse or cost <= max(_SPARSE_BYTES, _SPARSE_BYTES_PER_EPISODE * total):
        return []
    shown = ", ".join(repr(n) for n in sparse[:_SHOWN]) + (", ..." if len(sparse) > _SHOWN else "")
    return [
        f"{len(sparse)} extra fields are each held by under a tenth of the {total} merged episodes ({shown}); "
        f"the index keeps a column over every episode for each, about {human_bytes(cost)} here "
        f"({len(sparse) * _FIELD_BYTES} bytes an episode), and the merge takes time and memory in proportion: "
        "keep such keys in one list-valued field (tags = ['scene=kitchen', ...]), or merge inputs that share "
        'their fields (docs/format.md, "Extra fields")'
    ]


_BUILTIN = ("actions", "states", "rewards")


def _dtype_warnings(dbs: list[Database], kept: list[np.ndarray]) -> list[str]:
    """Actions, states or rewards held in different dtypes by the inputs' kept episodes (one
    warning naming each input's dtypes, and the fixes)."""
    from kinodb._window_checks import _Sections  # deferred: it builds on kql, as the filter does

    used = [(db, _Sections.of(db, k)) for db, k in zip(dbs, kept, strict=True) if len(k)]
    parts = []
    for name in _BUILTIN:
        per = [(os.path.basename(db.path()), _dtypes(db, sections, name)) for db, sections in used]
        if len({d for _, ds in per for d in ds}) > 1:
            parts.append(f"{name} ({', '.join(f'{file}: ' + ' and '.join(ds) for file, ds in per)})")
    if not parts:
        return []
    return [
        f"dtypes differ between inputs: {', '.join(parts)}; kino stats, Database.gather and frame "
        "windows need one dtype per array in a file: re-ingest the inputs with one --dtype (such as "
        "--dtype float32) and merge them again, or keep them as separate files and combine them with "
        "kinodb.Mixture, whose batches bring every source's arrays to one dtype"
    ]


def _dtypes(db: Database, sections: _Sections | None, name: str) -> list[str]:
    """The dtypes of array ``name`` in ``sections`` (the kept episodes' index rows), in the
    order first held; the schema's for a file without section columns (format 0.1)."""
    if sections is None:
        dtype = db.schema().get(name, {}).get("dtype")
        return [str(dtype or "mixed dtypes")]
    rows = sections.find(name, KIND_ARRAY)
    codes = sections.column("sec.dtype", rows[rows >= 0])
    _, first = np.unique(codes, return_index=True)
    return [_dtype_name(int(codes[j])) for j in sorted(first.tolist())]


def _dtype_name(code: int) -> str:
    return np.dtype(DTYPES[code]).name if 0 <= code < len(DTYPES) else f"dtype code {code}"


def _layout_warnings(dbs: list[Database], kept: list[np.ndarray]) -> list[str]:
    """Cameras of different sizes and extra arrays of different dtypes or shapes between the
    inputs, or held by only some of them, each with what readers need; then, when a camera
    is absent from some inputs, how to window each input's own camera."""
    used = [db for db, k in zip(dbs, kept, strict=True) if len(k)]
    out = []
    absent: list[str] = []  # cameras some inputs lack
    for key, kind in (("cameras", "camera"), ("arrays", "extra array")):
        specs = [db.schema().get(key, {}) for db in used]
        for name in sorted({n for spec in specs for n in spec}):
            seen = [
                (os.path.basename(db.path()), spec.get(name)) for db, spec in zip(used, specs, strict=True)
            ]
            if len({_layout(spec, key) for _, spec in seen}) > 1:
                per = ", ".join(f"{file}: {_layout(spec, key)}" for file, spec in seen)
                hint = _camera_hint(name, seen) if key == "cameras" else _array_hint(seen)
                out.append(f"{kind} {name!r} differs between inputs ({per}); {hint}")
                if key == "cameras" and any(spec is None for _, spec in seen):
                    absent.append(name)
    if absent:
        out.extend(_mixture_hint(used, absent[0]))
    return out


def _camera_hint(name: str, seen: list[tuple[str, dict[str, Any] | None]]) -> str:
    """What windows need of camera ``name``: the inputs that lack it left out, and frames of
    one size."""
    sizes = {_layout(spec, "cameras") for _, spec in seen if spec is not None}
    resize = "batches need image_size=(H, W) to resize them alike"
    lacking = [file for file, spec in seen if spec is None]
    if not lacking:
        return resize
    text = (
        f"the episodes of {', '.join(lacking)} have no {name!r}: frame windows "
        "over the merged file need image_key=False, or a kql_filter that leaves those episodes out"
    )
    return text + (f"; {resize}" if len(sizes) > 1 else "")


def _array_hint(seen: list[tuple[str, dict[str, Any] | None]]) -> str:
    """What readers of an extra array must handle: per-episode dtypes, shapes, or its absence."""
    held = [spec for _, spec in seen if spec is not None]
    dtypes = {spec.get("dtype") for spec in held}
    varies = [
        what
        for what, values in (("dtypes", dtypes), ("shapes", {_shape(spec) for spec in held}))
        if len(values) > 1 or None in values
    ]
    hints = [f"readers must handle per-episode {' and '.join(varies)}"] if varies else []
    if "dtypes" in varies and all(d is not None and np.dtype(d).kind == "f" for d in dtypes):
        hints.append("re-ingest the inputs with one --dtype (such as --dtype float32) to give it one")
    lacking = [file for file, spec in seen if spec is None]
    if lacking:
        hints.append(f"the episodes of {', '.join(lacking)} have none: readers must handle its absence")
    return "; ".join(hints)


def _shape(spec: dict[str, Any]) -> tuple[int, ...] | None:
    shape = spec.get("shape")
    return None if shape is None or None in shape else tuple(shape)


def _mixture_hint(used: list[Database], camera: str) -> list[str]:
    """How to window each input's own camera (a `Mixture` of the inputs with an ``image_key``
    mapping, filled in as for ``camera``), when every input has a camera."""
    cameras = {db.path(): list(db.schema().get("cameras", {})) for db in used}
    if not all(cameras.values()):
        return []  # an input without cameras: only image_key=False serves it
    names = [camera if camera in have else have[0] for have in cameras.values()]
    mixture = {path: 1 for path in cameras}
    return [
        f"the inputs hold different cameras: to window each input's own camera, keep the inputs as "
        f"separate files and combine them with kinodb.Mixture({mixture!r}) and "
        f"image_key={{{camera!r}: {names!r}}} (a camera of each source, in order)"
    ]


def _layout(spec: dict[str, Any] | None, key: str) -> str:
    if spec is None:
        return "absent"
    if key == "cameras":
        # Codecs may differ (frames decode alike); sizes may not.
        return "x".join("?" if spec.get(k) is None else str(spec[k]) for k in ("height", "width", "channels"))
    shape = spec.get("shape")
    return f"{spec.get('dtype') or 'mixed dtypes'} {'?' if shape is None else tuple(shape)}"


def _shared_components(dbs: list[Database]) -> dict[str, Any]:
    """Named components every one of ``dbs`` declares identically (the rest stay per source)."""
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
    skip: bool,
    warnings: list[str],
    inplace: list[tuple[Database, Identity]],
) -> MergeResult:
    """Write the ``kept`` episodes of ``dbs`` to ``output``, with the merge's schema and metadata;
    ``inplace`` are the inputs that are ``output`` (`same_file_inputs`).

    Raises:
        WriterError: ``output`` changed since ``inplace`` were opened (`refuse_changed`).
        ConversionError: every matching episode was skipped (``skip``), or, without ``skip``,
            one cannot be stored (`episode_error`).
    """
    sources = _source_entries(dbs, kept)
    metadata = _merged_metadata(dbs, kept, sources, kql, warnings)
    with Writer(
        output,
        mode="w" if overwrite else "x",
        # Decided by the inputs that contribute episodes, as the metadata at the top is.
        schema=_shared_components([db for db, k in zip(dbs, kept, strict=True) if len(k)]),
        source_format="kinodb-merge",
        metadata=metadata,
    ) as w:
        # Its lock keeps appenders out from here until the merged file replaces the output.
        refuse_changed(inplace, output, "merge")
        w.schema["sources"] = sources
        reasons: list[str] = []  # per input that had episodes skipped
        report = [
            _copy_input(w, j, db, positions, kql, skip, warnings, reasons)
            for j, (db, positions) in enumerate(zip(dbs, kept, strict=True))
        ]
        if not len(w):
            total = sum(len(k) for k in kept)
            raise ConversionError(
                f"every one of the {total} matching episodes was skipped, so nothing was written: "
                + "; ".join(reasons)
            )
    return MergeResult(output, report, warnings)


def _source_entries(dbs: list[Database], kept: list[np.ndarray]) -> list[dict[str, Any]]:
    """The schema's ``sources``: each input's file, version, format, episodes kept of all, schema."""
    return [
        {"file": os.path.abspath(db.path()), "format_version": db.version(),
         "source_format": db.dataset_info().get("source_format"), "episodes": len(k), "of": len(db),
         "schema": db.schema()}
        for db, k in zip(dbs, kept, strict=True)
    ]  # fmt: skip


def _merged_metadata(
    dbs: list[Database], kept: list[np.ndarray], sources: list[dict[str, Any]], kql: str | None,
    warnings: list[str],
) -> dict[str, Any]:  # fmt: skip
    """The output's metadata: what the contributing inputs agree on, ``merged_from``, ``filter``
    and ``image_orientation``."""
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
    orientation = _image_orientation(dbs, kept, warnings)
    if orientation is not None:
        metadata["image_orientation"] = orientation
    return metadata


def _image_orientation(dbs: list[Database], kept: list[np.ndarray], warnings: list[str]) -> str | None:
    """How the contributing inputs' frames stand, "mixed" (with a warning), or None when none says."""
    # How the frames stand (--flip-images turns LIBERO's upright on ingest): kept when every
    # input with cameras agrees, "mixed" (with a warning) when some were turned and some not.
    # An input that records none (a file written with kinodb.Writer) holds its frames as it
    # was given them, as an ingest without --flip-images does: it counts as "as_stored".
    recorded = [
        db.metadata().get("image_orientation")
        for db, k in zip(dbs, kept, strict=True)
        if len(k) and db.schema().get("cameras")
    ]
    if all(o is None for o in recorded):
        return None
    orientations = {_AS_STORED if o is None else o for o in recorded}
    if len(orientations) == 1:
        return orientations.pop()
    warnings.append(
        "the inputs' camera frames stand differently (some were turned upright on ingest with "
        "--flip-images, some not): the output records image_orientation 'mixed'"
    )
    return "mixed"


def _copy_input(
    w: Writer, j: int, db: Database, positions: np.ndarray, kql: str | None, skip: bool, warnings: list[str],
    reasons: list[str],
) -> MergeInput:  # fmt: skip
    """Copy episodes ``positions`` of input ``j`` to ``w`` with their provenance; what it contributed.

    A skipped episode is recorded (`_record_skipped`), the input's reason added to ``reasons``.
    """
    frames, skipped = 0, []
    merged = _merged_files(db)
    renamed: dict[tuple[str, str], int] = {}  # (field, kept as): episodes
    for i in positions.tolist():
        try:
            extra, moved = _provenance(db, i, merged)
            # A 0.1 camera that cannot keep its encoded frames is stored raw: the
            # note goes to the result's warnings.
            w.copy_episode(db, i, extra=extra, notes=warnings)
        except (FormatError, WriterError, ConversionError) as exc:
            if w._closed:  # the output failed (a full disk), not the episode
                raise
            if not skip:
                raise episode_error(unnamed(exc, len(w)), db.path(), i, _advice(db, i, kql)) from exc
            skipped.append((i, skip_reason(exc, db, i, len(w))))
            continue
        frames += int(db._cols["num_frames"][i])
        for pair in moved:
            renamed[pair] = renamed.get(pair, 0) + 1
    warnings.extend(_renamed_warnings(db.path(), renamed))
    if skipped:
        reasons.append(_record_skipped(w, j, db.path(), skipped, warnings))
    done = len(positions) - len(skipped)
    return MergeInput(db.path(), done, len(db), frames, tuple(i for i, _ in skipped))


_SHOWN = 5  # skipped episodes named in one warning


def _record_skipped(w: Writer, j: int, path: str, skipped: list[tuple[int, str]], warnings: list[str]) -> str:
    """List input ``j``'s skipped episodes in the output's metadata and in a warning; return
    them as ``PATH: episode I: REASON; ...``."""
    entry = w.metadata["merged_from"][j]
    entry["episodes"] -= len(skipped)
    entry["skipped"] = [{"episode": i, "reason": reason} for i, reason in skipped]
    w.schema["sources"][j]["episodes"] -= len(skipped)
    shown = "; ".join(f"episode {i}: {reason}" for i, reason in skipped[:_SHOWN])
    more = f"; and {len(skipped) - _SHOWN} more" if len(skipped) > _SHOWN else ""
    n = len(skipped)
    warnings.append(
        f"{path}: {n} episode{'s' if n > 1 else ''} skipped (listed in the output's metadata, "
        f"merged_from[{j}].skipped): {shown}{more}"
    )
    return f"{path}: {shown}{more}"


def _advice(db: Database, i: int, kql: str | None) -> str:
    """How to get past episode ``i`` of ``db``: a filter that leaves out its kind, or skipping it."""
    kind = leave_out(db, i)
    if kind is None:
        return SKIP_ADVICE
    what, extra = kind
    combined = extra if kql is None else f"({kql}) AND {extra}"
    quoted = shlex.quote(combined) if any(c in combined for c in '"$`\\!') else f'"{combined}"'
    return f"to leave out {what}, merge with -F {quoted} (Python: filter={combined!r}); or {SKIP_ADVICE}"


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


def _merged_files(db: Database) -> frozenset[str]:
    """The inputs an earlier merge wrote ``db`` from (its ``merged_from`` files), or none."""
    entries = db.metadata().get("merged_from")
    if db.dataset_info().get("source_format") != "kinodb-merge" or not isinstance(entries, list):
        return frozenset()
    return frozenset(e["file"] for e in entries if isinstance(e, dict) and isinstance(e.get("file"), str))


def _provenance(db: Database, i: int, merged: frozenset[str]) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    """The extra fields episode ``i`` of ``db`` gains, and the ``(field, kept as)`` pairs of
    values that could not move to an ``origin_*`` name.

    ``source_file``/``source_episode`` name the input. What the episode already held of
    either (one or both) moves to ``origin_file``/``origin_episode`` when neither of those is
    taken, so the first origin survives any number of merges; the two move together, so an
    origin is never half one source and half another. When an origin is taken, each value is
    kept as ``pre_merge_NAME`` (or ``pre_merge_NAME_2``, ...), unless an earlier merge wrote
    the pair (``source_file`` one of ``merged``, the files of the input's ``merged_from``):
    that pair is replaced, as the input's own metadata names those files.
    """
    meta = db.read_meta(i)
    extra: dict[str, Any] = {"source_file": os.path.abspath(db.path()), "source_episode": i}
    if any(origin in meta for _, origin in PROVENANCE) and (
        meta.get("source_file") in merged and type(meta.get("source_episode")) is int
    ):
        return extra, []
    kept, moved = carried(meta)
    extra.update(kept)
    return extra, moved


def _renamed_warnings(path: str, renamed: dict[tuple[str, str], int]) -> list[str]:
    """One warning per field of input ``path`` kept under another name, with its count."""
    out = []
    for (name, kept), n in renamed.items():
        eps = f"{n} episode{'s' if n > 1 else ''}"
        now = "this input's path" if name == "source_file" else "each one's position in this input"
        out.append(
            f"{path}: {eps} held {name}, and an origin_file or origin_episode too: {name} now holds "
            f"{now}, and the value each held is kept as {kept}"
        )
    return out


__all__ = ["MergeInput", "MergeResult", "merge"]
