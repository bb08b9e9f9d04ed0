"""Copying episodes of another file into a `kinodb.kdb.writer.Writer`, byte for byte.

`_EpisodeCopies`, a base of `Writer`, holds `copy_episode`: a v1 episode's payload is
copied unchanged once `verify_payload` has checked it against its checksum, its sections
re-based to where the payload lands (sections stay aligned: the payload starts on a
`SECTION_ALIGN` boundary); a format 0.1 episode is converted through
`Writer.add_episode`. `kinodb.kdb.writer` re-exports `verify_payload`.

A writer in mode ``"a"`` that found no file writes a new one; when another writer creates
the file meanwhile, `_EpisodeCopies._append_instead` copies the new file's episodes into it.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import threading
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, BinaryIO

import numpy as np

from kinodb.errors import CorruptFileError, WriterError
from kinodb.kdb._builder import TableBuilder, check_dims, note_schema
from kinodb.kdb._checks import check_extra_name, dims3, json_value
from kinodb.kdb._files import keep_aside
from kinodb.kdb._frames import RawFrames
from kinodb.kdb._layout import CODECS, DTYPE_CODE, KIND_CAMERA, SECTION_ALIGN, align, crc32
from kinodb.kdb._sections import Section

if TYPE_CHECKING:
    from kinodb.kdb.reader import Database
    from kinodb.kdb.writer import Writer

# How long `Writer.close` waits for the lock of a file another writer created meanwhile
# while a third appends to it (a recording run's append takes milliseconds).
RACE_WAIT_S = 5.0


def verify_payload(db: Database, i: int) -> tuple[int, int, int]:
    """Check episode ``i``'s payload of the v1 file ``db`` against its checksum: ``(offset,
    length, crc)``.

    Raises:
        CorruptFileError: the payload's bytes do not match their checksum.
    """
    cols = db._cols
    off, length, crc = (int(cols[k][i]) for k in ("payload_offset", "payload_length", "payload_crc"))
    if crc32(db._map()[off : off + length].data) != crc:
        raise CorruptFileError(
            f"{db.path()}: episode {i}: payload checksum mismatch at byte offset {off}; run kino validate "
            f"{db.path()} for the details"
        )
    return off, length, crc


def _check_extents(db: Database, i: int, sections: Sequence[Section], off: int, length: int) -> None:
    """Check that every section of episode ``i`` (a camera's offset table and its frames
    included) lies inside its payload, bytes ``off .. off + length``: only the payload is
    copied, and the sections are re-based to where it lands.

    Raises:
        CorruptFileError: a section lies outside the payload (the index is damaged).
    """
    for sec in sections:
        end = sec.offset + sec.nbytes
        if sec.kind == KIND_CAMERA and off <= sec.offset and end <= off + length:
            table = np.frombuffer(db._map(), "<u8", sec.shape[0] + 1, sec.offset).astype(np.int64)
            end = end + int(table[-1]) if table[0] == 0 and not (np.diff(table) < 0).any() else -1
        if not off <= sec.offset <= end <= off + length:
            raise CorruptFileError(
                f"{db.path()}: episode {i}: section {sec.name!r} at byte offset {sec.offset} lies outside its "
                f"payload (bytes {off}..{off + length}); the index is damaged: run kino validate {db.path()} "
                "for the details"
            )


class _EpisodeCopies:
    """How a `Writer` appends the episodes of another file.

    The base of `kinodb.kdb.writer.Writer`, whose open file (``_fh``, ``_pos``), index
    table (``_table``), dataset block (``_dataset``), lock, checks and episode writing
    (``_add_episode``, ``_add_row``, ``_rollback``, ``_fail``) it uses.
    """

    if TYPE_CHECKING:  # what these methods use of `Writer`
        _lock: threading.RLock
        _path: str
        _target: str
        _table: TableBuilder
        _dataset: dict[str, Any]
        _fh: BinaryIO
        _pos: int
        _add_episode: Callable[..., int]  # `Writer._add_episode`: add_episode's keywords and sum_rewards

        def _check_open(self) -> None: ...
        def _check_owner(self) -> None: ...
        def _check_section_limits(self, names: Sequence[str]) -> None: ...
        def _rollback(self, mark: int, sec_start: int) -> bool: ...
        def _fail(self, exc: BaseException, doing: str) -> BaseException: ...
        def _add_row(
            self, meta: Mapping[str, Any], start: int, length: int, crc: int, sec_start: int,
            extra: Mapping[str, Any],
        ) -> None: ...  # fmt: skip

    def copy_episode(
        self, db: Database, i: int, *, extra: Mapping[str, Any] | None = None, notes: list[str] | None = None
    ) -> int:
        """Append episode ``i`` of another file byte for byte; return its index here.

        The payload (arrays and encoded frames) is copied without decoding or
        re-encoding after its checksum is verified; the episode keeps its extra fields
        under their stored names, and ``extra`` fields are added to them (and override
        them). Episodes of a format 0.1 file are converted through `add_episode`: arrays
        are copied exactly, JPEG/PNG frames keep their stored bytes and raw frames stay raw,
        whatever the writer's ``image_codec``, and an unknown ``total_reward`` stays null
        (never the sum of the rewards); a camera that cannot keep its bytes (frames
        that mix codecs, or whose headers do not fit the camera) is stored raw, decoded
        exactly, with a warning (or a line appended to ``notes`` when it is given) once
        the episode is written.

        Raises:
            CorruptFileError: the source payload fails its checksum.
            EpisodeNotFoundError: ``i`` is out of range in ``db``.
            WriterError: an ``extra`` name is invalid, or the episode exceeds a format limit.
        """
        self._check_owner()
        with self._lock:
            return self._copy(db, i, extra, notes)

    def _copy(self, db: Database, i: int, extra: Mapping[str, Any] | None, notes: list[str] | None) -> int:
        self._check_open()
        for key in extra or {}:
            check_extra_name(key)
        added = {key: json_value(v, f"extra[{key!r}]") for key, v in (extra or {}).items()}
        i = db._check(i)  # a position 0..n-1: the section and field lookups below take no negative index
        meta = db.read_meta(i)
        if db.version().startswith("0."):
            from kinodb.kdb.upgrade import episode_args  # deferred: upgrade imports the writer

            said: list[str] = []
            args = episode_args(db, i, notes=said)
            args["extra"] = {**args["extra"], **added}
            # Decoded frames are the episode's exact pixels: never re-encoded lossily.
            args["images"] = {
                name: RawFrames(frames) if isinstance(frames, np.ndarray) else frames
                for name, frames in args["images"].items()
            }
            index = self._add_episode(**args, sum_rewards=False)  # an unknown total_reward stays null
            for note in said:  # once written: a note says what the file holds
                if notes is None:
                    warnings.warn(f"{db.path()}: {note}", stacklevel=3)
                else:
                    notes.append(f"{db.path()}: {note}")
            return index
        off, length, crc = verify_payload(db, i)
        payload = db._map()[off : off + length].data
        sections = db._episode_sections(i)
        _check_extents(db, i, sections, off, length)
        check_dims(self._dataset["schema"], meta["action_dim"], meta["state_dim"])
        self._check_section_limits([sec.name for sec in sections])
        # By stored name: read_meta's keys mark some names with "extra." (a built-in's name).
        extras = db._extra_fields(i)
        extras.update(added)
        mark, table = self._pos, self._table
        sec_start = table.section_count()
        try:
            # Sections keep their offsets relative to the payload, so its start keeps their alignment.
            self._fh.write(bytes(align(self._pos, SECTION_ALIGN) - self._pos))
            start = align(self._pos, SECTION_ALIGN)
            self._fh.write(payload)
            self._pos = start + length
        except BaseException as exc:
            if isinstance(exc, OSError) or not self._rollback(mark, sec_start):
                raise self._fail(exc, "copying an episode") from exc
            raise
        arrays, cams = {}, {}
        for sec in sections:
            table.add_section({
                "sec.name": table.name_code(sec.name), "sec.kind": sec.kind, "sec.dtype": DTYPE_CODE[sec.dtype],
                "sec.codec": CODECS.index(sec.codec), "sec.ndim": len(sec.shape), "sec.dims": dims3(sec.shape),
                "sec.offset": sec.offset - off + start,
            })  # fmt: skip
            if sec.kind == KIND_CAMERA:
                cams[sec.name] = (sec.codec, sec.shape[1:])
            else:
                arrays[sec.name] = (sec.dtype, sec.shape)
        self._add_row(meta, start, length, crc, sec_start, extras)
        note_schema(self._dataset["schema"], arrays, cams)
        return len(table) - 1

    # -- a file created meanwhile ------------------------------------------------------------

    def _append_instead(self, tmp: str) -> None:
        """Append the episodes of ``tmp``, this writer's committed new file, to the file
        another writer created at the path meanwhile, as mode ``"a"`` appends: under that
        file's lock, this writer's declared schema checked against the file's, its metadata
        and statistics set as an append sets them; then delete ``tmp``.

        Raises:
            WriterError: they could not be appended: the file is as the other writer left
                it, and ``tmp`` is kept beside it under the name the message gives.
        """
        from kinodb.kdb.reader import Database  # deferred: the reader never imports the writer

        try:
            with Database(tmp) as source, self._appender() as into:
                for i in range(len(source)):
                    into.copy_episode(source, i)
        except BaseException as exc:
            kept = keep_aside(tmp, self._target)
            where = kept if kept != tmp else (
                f"{tmp} (a temporary file: move it elsewhere before this process ends, or the next writer "
                "of the path deletes it)"
            )  # fmt: skip
            merge = f"kino merge {shlex.quote(self._path)} {shlex.quote(kept)} -o MERGED.kdb"
            said = (
                f"{self._path}: another writer created this file while this one wrote, and this writer's "
                f"{len(self._table)} episodes could not be appended to it; the file is as that writer left it, "
                + (
                    f"and they are kept in {where}: add them with {merge}"
                    if os.path.exists(kept)
                    else f"and they are lost: another process deleted this writer's temporary file {tmp}"
                )
            )
            if not isinstance(exc, Exception):  # an interrupt stays one
                add_note = getattr(exc, "add_note", None)  # Python 3.11+
                if add_note is not None:
                    add_note(said)
                raise
            raise WriterError(f"{said} ({exc})") from exc
        with contextlib.suppress(OSError):
            os.unlink(tmp)

    def _appender(self) -> Writer:
        """A `Writer` appending to the file at the path, with this writer's declared schema,
        metadata, source format and statistics; another appender is waited for, up to
        `RACE_WAIT_S` seconds."""
        from kinodb.kdb.writer import Writer  # deferred: the writer module imports this one

        dataset = self._dataset
        declared = {
            part: dataset["schema"][part] for part in ("actions", "states") if part in dataset["schema"]
        }
        deadline, delay = time.monotonic() + RACE_WAIT_S, 0.01
        while True:
            try:
                into = Writer(
                    self._path, mode="a", schema=declared, metadata=dict(dataset["metadata"]),
                    source_format=dataset["source_format"],
                )  # fmt: skip
            except WriterError as exc:
                if not isinstance(exc.__cause__, BlockingIOError) or time.monotonic() + delay > deadline:
                    raise
                time.sleep(delay)
                delay = min(2 * delay, 0.5)
                continue
            if dataset.get("stats") is not None:  # they describe this writer's episodes: stale there
                into.stats = dataset["stats"]
            return into
