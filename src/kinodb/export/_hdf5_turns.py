"""Which frames and arrays an HDF5 export turns back, read from what the ingest recorded.

A file ingested with ``flip_images`` (``kino ingest --flip-images``, for LIBERO, which
stores frames upside down; the metadata's ``image_orientation`` is ``rotated_180``) holds
its frames upright, and the HDF5 export rotates what the ingest rotated 180 degrees back.
What the ingest rotated is its metadata's ``hdf5.rotated``: each camera and extra array
with its axes (``[1, 2]`` for ``(T, H, W[, C])``, ``[2, 3]`` for channel-first frames);
arrays it does not name stay as stored. The LeRobot and RLDS ingests keep the same record
as ``lerobot.rotated`` and ``rlds.rotated``: the record read is that of the file's source
format (`rotation_space`). Files ingested before the record was kept have their cameras
and 4-D extra arrays turned on axes 1 and 2, as the HDF5 ingest did.

A merge keeps a namespace only where its inputs agree on it; otherwise each episode
follows the record of the input it came from (its ``source_file``, the metadata's
``merged_from``: `merge_inputs`), and an episode whose input kept no record though it may
have rotated arrays (a merge of merges) is refused rather than written with wrong pixels,
as is a record that does not fit the file (`turn_back`). A merge of files ingested with
and without ``--flip-images`` (``image_orientation`` ``mixed``) is exported one
orientation at a time: episodes whose frames stand differently are refused together, and
the message names a ``--filter`` on ``source_file`` that picks those of one input
(`one_orientation`). What the export records of the orientation it wrote is
`oriented_info`'s.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kinodb.errors import ConversionError
from kinodb.kdb.reader import Database

# The metadata's image_orientation, as the HDF5 ingest records it.
ORIENTATION_TURNED, ORIENTATION_AS_STORED = "rotated_180", "as_stored"
MERGE_FORMAT = "kinodb-merge"  # the source_format of a `kinodb.merge` output
MIXED = "mixed"  # a merge's image_orientation when its inputs' frames stand differently
# Where each ingest records what it rotated: ``<namespace>.rotated`` of its metadata.
_SPACES = ("hdf5", "lerobot", "rlds")

Turns = dict[str, tuple[int, ...]]  # camera or extra array -> the axes reversed to rotate it 180 degrees


@dataclass(frozen=True, slots=True)
class _Rotations:
    """What one ingest rotated 180 degrees (``--flip-images``), as its metadata records it."""

    where: str  # the file the record is of, for messages
    orientation: Any  # its metadata's image_orientation
    rotated: Turns | None  # SPACE.rotated: each rotated camera and array with its axes; None: not recorded
    lost: str = ""  # why what it rotated cannot be told without a record (a merge kept none), else ""
    space: str = "hdf5"  # the metadata namespace the record is kept in


@dataclass(frozen=True, slots=True)
class MergeInput:
    """One input of a merge, as the merge's metadata and schema list it."""

    metadata: dict[str, Any] | None  # None: the path is listed twice, differently
    merged: bool  # the input was itself a merge
    space: str | None  # where its metadata keeps the record of what its ingest rotated (`rotation_space`)


_RECORD_FIX = "export with --keep-upright (flip_images=False) to write every array as this file holds it"
_NO_RECORD = (
    "a merge that kept no record (metadata hdf5.rotated, lerobot.rotated or rlds.rotated) of what its "
    "inputs' ingest rotated"
)


def turned_upright(db: Database) -> bool:
    """Whether ``db``'s frames were rotated 180 degrees on ingest (``--flip-images``)."""
    return bool(db.metadata().get("image_orientation") == ORIENTATION_TURNED)


def rotation_space(info: dict[str, Any]) -> str | None:
    """Where the metadata of the file that ``info`` describes keeps the record of what its
    ingest rotated: ``lerobot`` for a LeRobot ingest, ``rlds`` for an RLDS one, ``hdf5``
    for any other (the HDF5 ingest, a file written directly).

    ``info`` is a dataset block (``db.dataset_info()``) or an entry of a merge's schema
    ``sources``. A merge's record is where its inputs' (those it holds episodes of) is,
    None when they keep it in different places.
    """
    fmt = info.get("source_format")
    if fmt != MERGE_FORMAT:
        fmt = fmt if isinstance(fmt, str) else ""
        return "lerobot" if fmt.startswith("lerobot") else "rlds" if fmt == "rlds" else "hdf5"
    schema = info.get("schema")
    sources = schema.get("sources") if isinstance(schema, dict) else None
    spaces = {
        rotation_space(s)
        for s in (sources if isinstance(sources, list) else [])
        if isinstance(s, dict) and s.get("episodes") != 0
    }
    return spaces.pop() if len(spaces) == 1 else None if spaces else "hdf5"


def merge_inputs(db: Database) -> dict[str, MergeInput] | None:
    """A merge's inputs by absolute path (their episodes' ``source_file``); None if ``db`` is no merge."""
    info = db.dataset_info()
    if info.get("source_format") != MERGE_FORMAT:
        return None
    sources = (info.get("schema") or {}).get("sources")
    sources = [s for s in sources if isinstance(s, dict)] if isinstance(sources, list) else []
    merges = {s.get("file") for s in sources if s.get("source_format") == MERGE_FORMAT}
    spaces: dict[Any, set[str | None]] = {}
    for s in sources:
        spaces.setdefault(s.get("file"), set()).add(rotation_space(s))
    listed = (info.get("metadata") or {}).get("merged_from")
    inputs: dict[str, MergeInput] = {}
    for entry in listed if isinstance(listed, list) else []:
        if not isinstance(entry, dict) or not isinstance(entry.get("file"), str):
            continue
        path, meta = entry["file"], entry.get("metadata")
        meta = meta if isinstance(meta, dict) else None
        if path in inputs and inputs[path].metadata != meta:
            meta = None
        space = spaces.get(path, {"hdf5"})  # not listed in sources: as the record was read before
        inputs[path] = MergeInput(meta, path in merges, next(iter(space)) if len(space) == 1 else None)
    return inputs


def one_orientation(db: Database, positions: list[int], merge: dict[str, MergeInput] | None) -> Any:
    """The ``image_orientation`` that the episodes ``positions`` of a file whose frames stand
    differently (``mixed``) share; None for any other file.

    Each episode's is that of the merge input it came from (its ``source_file``); an
    episode without cameras has none.

    Raises:
        ConversionError: the episodes' frames stand differently, or how some stand cannot
            be told (the file is no merge, or their input is itself mixed or not listed).
    """
    if db.metadata().get("image_orientation") != MIXED:
        return None
    found: dict[Any, list[str]] = {}  # orientation -> the inputs whose episodes stand so
    for i in (i for i in positions if db.cameras(i)):
        path = db.read_meta(i).get("source_file")
        given = merge.get(path) if merge is not None and isinstance(path, str) else None
        meta = given.metadata if given is not None else None
        # An input that records no orientation (written with kinodb.Writer) holds its frames as given.
        files = found.setdefault(
            MIXED if meta is None else meta.get("image_orientation", ORIENTATION_AS_STORED), []
        )
        files += [] if str(path) in files else [str(path)]
    if len(found) < 2 and MIXED not in found:
        return next(iter(found), None)
    what = "stand differently from episode to episode (image_orientation 'mixed')"
    if merge is None:
        raise ConversionError(
            f"{db.path()}: its camera frames {what}, and this file, no merge, does not say which stand how, so "
            "no one orientation can be written back: export to --format numpy or lerobot, which keep the frames "
            "as the file holds them"
        )
    listed = "; ".join(
        f"{o!r}: {', '.join(files[:3])}{', ...' if len(files) > 3 else ''}" for o, files in found.items()
    )
    lost = found.get(MIXED, [])
    again = f"; {lost[0]} is itself mixed (or not an input): export from it instead" if lost else ""
    example = next((files[0] for o, files in found.items() if o != MIXED), lost[0] if lost else "...")
    raise ConversionError(
        f"{db.path()}: the camera frames of the exported episodes {what}: a merge of files ingested with and "
        f"without --flip-images (image_orientation by source_file: {listed}), so no one orientation can be "
        f"written back: export the episodes of each source apart, e.g. with --filter "
        f"\"source_file = '{example}'\"{again}"
    )


def turn_back(
    db: Database, positions: list[int], merge: dict[str, MergeInput] | None, warnings: list[str]
) -> dict[int, Turns]:
    """Per episode, the cameras and arrays to rotate back to the ingested source's orientation,
    saying so in ``warnings``.

    Raises:
        ConversionError: what the ingest rotated cannot be told: a record (``hdf5.rotated``,
            ``lerobot.rotated``, ``rlds.rotated``) that does not fit the file, or an episode
            whose input kept none though it may have rotated arrays.
    """
    own = _rotations(db.metadata(), db.path(), merge is not None, rotation_space(db.dataset_info()))
    if own.rotated is not None:
        merge = None  # kept by the merge: every input recorded the same
    elif merge is None and own.orientation != ORIENTATION_TURNED:
        return {}  # nothing was turned on ingest
    turns: dict[int, Turns] = {}
    for i in positions:
        source = own if merge is None else _input_of(db, i, merge, own)
        turned = _episode_turns(db, i, source)
        if turned:
            turns[i] = turned
    if turns:
        warnings.append(
            "camera frames (and the arrays turned with them) rotated 180 degrees back to the orientation of "
            "the ingested source (this .kdb holds them upright: it was ingested with --flip-images); ingest the export with --flip-images, "
            "as the original, to get the same frames, or export with --keep-upright (flip_images=False) "
            "to write them upright"
        )
    return turns


def oriented_info(info: dict[str, Any], turned_back: bool, orientation: Any) -> dict[str, Any]:
    """The exported dataset info, its ``image_orientation`` that of the exported frames
    (``orientation``: that of the episodes exported from a ``mixed`` file, else None).

    The ingest reads it to tell upright frames from a LIBERO file's upside-down ones, and
    so whether to advise ``--flip-images``. Frames turned back are no longer rotated: the
    record of what was (``hdf5.rotated``, ``lerobot.rotated``, ``rlds.rotated``) is left out.
    """
    if turned_back:
        meta = {**info["metadata"], "image_orientation": ORIENTATION_AS_STORED}
        for space in _SPACES:
            if isinstance(meta.get(space), dict):
                meta[space] = {k: v for k, v in meta[space].items() if k != "rotated"}
        info = {**info, "metadata": meta}
    elif orientation is not None:
        info = {**info, "metadata": {**info["metadata"], "image_orientation": orientation}}
    return info


def _rotations(meta: dict[str, Any], where: str, merged: bool, space: str | None) -> _Rotations:
    """The record in ``meta`` (the metadata of ``where``, a merge if ``merged``) of what its
    ingest rotated, kept under ``space`` (None: no one place, no record).

    Raises:
        ConversionError: the record is not a map of names to two axes, or names frames
            rotated while ``image_orientation`` says they were not.
    """
    block = meta.get(space) if space is not None else None
    recorded = block.get("rotated") if isinstance(block, dict) else None
    orientation = meta.get("image_orientation")
    if recorded is None:
        return _Rotations(where, orientation, None, _NO_RECORD if merged else "", space or "hdf5")
    if not isinstance(recorded, dict):
        raise ConversionError(
            f"{where}: the metadata's {space}.rotated is {recorded!r}, not a map of cameras and arrays to the "
            f"axes the ingest rotated; {_RECORD_FIX}"
        )
    turns: Turns = {}
    for name, axes in recorded.items():
        if not (isinstance(axes, list) and len(axes) == 2 and all(type(a) is int for a in axes)) or not (
            0 < axes[0] < axes[1]
        ):
            raise ConversionError(
                f"{where}: the metadata's {space}.rotated[{name!r}] is {axes!r}, not two frame axes in "
                f"increasing order (such as [1, 2]); {_RECORD_FIX}"
            )
        turns[str(name)] = (axes[0], axes[1])
    if turns and orientation is not None and orientation != ORIENTATION_TURNED:
        raise ConversionError(
            f"{where}: the metadata's {space}.rotated names {', '.join(sorted(turns)[:6])} as rotated 180 "
            f"degrees on ingest, but its image_orientation is {orientation!r}, so the record does not "
            f"describe what the file holds; {_RECORD_FIX}"
        )
    return _Rotations(where, orientation, turns, space=str(space))


def _input_of(db: Database, i: int, merge: dict[str, MergeInput], own: _Rotations) -> _Rotations:
    """The record of what the ingest of merged episode ``i``'s input rotated."""
    path = db.read_meta(i).get("source_file")
    given = merge.get(path) if isinstance(path, str) else None
    if given is None or given.metadata is None:
        why = "which is not one input (listed once) of the metadata's merged_from"
        return _Rotations(f"the source_file {path!r}", own.orientation, None, why)
    return _rotations(given.metadata, str(path), given.merged, given.space)


def _episode_turns(db: Database, i: int, source: _Rotations) -> Turns:
    """Episode ``i``'s cameras and arrays that ``source`` says its ingest rotated, with the axes.

    Raises:
        ConversionError: the record names an array with fewer axes than it says were
            rotated; or ``source`` kept no record and the episode holds arrays of 3 or 4
            dims, or camera frames of a merge whose frames stand differently.
    """
    cameras = {name: tuple(int(d) for d in cam["shape"]) for name, cam in db.cameras(i).items()}
    arrays = {name: arr.shape for name, arr in db._episode_arrays(i).items()}
    if source.rotated is not None:
        turns: Turns = {}
        for name, axes in source.rotated.items():
            shape = cameras.get(name, arrays.get(name))
            if shape is not None and axes[-1] >= len(shape):
                kind, held = "camera" if name in cameras else "array", ", ".join(map(str, shape[1:]))
                of = "" if source.where == db.path() else f" of its input {source.where}"
                raise ConversionError(
                    f"{db.path()}: episode {i} holds the {kind} {name!r} as (T, {held}), but the metadata's "
                    f"{source.space}.rotated{of} says it was rotated on axes {list(axes)}, which it does not "
                    f"have; {_RECORD_FIX}"
                )
            if shape is not None:
                turns[name] = axes
        return turns
    framed = sorted(name for name, shape in arrays.items() if len(shape) >= 3)
    if (source.lost and framed) or (source.orientation == MIXED and (cameras or framed)):
        why = (
            source.lost
            or "whose frames stand differently from episode to episode (image_orientation 'mixed')"
        )
        held = ", ".join(framed[:6]) + (", ..." if len(framed) > 6 else "") if framed else "cameras"
        raise ConversionError(
            f"{db.path()}: episode {i} comes from {source.where}, {why}; which of its arrays and frames "
            f"({held}) were rotated 180 degrees on ingest (--flip-images) cannot be told, so they cannot be "
            f"turned back: export its episodes from that file itself, or {_RECORD_FIX}"
        )
    if source.orientation != ORIENTATION_TURNED:
        return {}
    # Ingested before the record was kept: that ingest turned the cameras and every 4-D array.
    return {name: (1, 2) for name in [*cameras, *(n for n, shape in arrays.items() if len(shape) == 4)]}
