"""Write ``.kdb`` v1 files: stream episodes, then commit the index atomically.

Copying the episodes of another file (`Writer.copy_episode`) comes from
`kinodb.kdb._writer_copy` (`_EpisodeCopies`, a base of `Writer`); `verify_payload` is
re-exported from there.
"""

from __future__ import annotations

import contextlib
import copy
import errno
import math
import os
import secrets
import threading
import warnings
import weakref
from collections.abc import Callable, Mapping, Sequence
from typing import Any, BinaryIO

import numpy as np

from kinodb._version import __version__
from kinodb.errors import FormatError, WriterError
from kinodb.kdb._builder import (
    Metadata,
    TableBuilder,
    check_dataset,
    check_dims,
    declared_schema,
    drift_message,
    dtype_drift,
    json_metadata,
    note_schema,
    utc_now,
    writer_fix,
)
from kinodb.kdb._checks import check_text, dims3, episode_meta, json_mapping, mapping, positive_fps
from kinodb.kdb._files import (
    Flusher,
    cleanup,
    forget,
    fsync_dir,
    hold,
    keep_mode,
    lock,
    not_regular,
    output_error,
    parent_only,
    publish_new,
    refuse_folder,
    still_at,
)
from kinodb.kdb._frames import camera_frames, check_quality, episode_arrays
from kinodb.kdb._layout import (
    ALIGN,
    CODECS,
    DATA_START,
    DTYPE_CODE,
    KIND_ARRAY,
    KIND_CAMERA,
    SECTION_ALIGN,
    SLOT_OFFSETS,
    SLOT_SIZE,
    Commit,
    align,
    crc32,
    crc32_parts,
    pack_header,
    pack_slot,
)
from kinodb.kdb._stale import hold_temp, release_temp, remove_stale_temps
from kinodb.kdb._table import check_append_dataset
from kinodb.kdb._writer_copy import _EpisodeCopies
from kinodb.kdb._writer_copy import verify_payload as verify_payload

_U16_MAX = 0xFFFF  # sec_count and sec.name are u16 columns
_ZEROS = bytes(ALIGN)
# Arrays of fewer bytes are joined with their neighbours into one write (`Writer._emit_arrays`).
_JOIN_BELOW = 1 << 16


# Parts of a stored schema recorded from the episodes written (or, ``sources``, by
# `kinodb.merge` from its inputs), not declared: a schema copied from `Database.schema()`
# may hold them (as it holds each part's dim and dtype).
_RECORDED = frozenset({"cameras", "arrays", "rewards", "is_terminal", "timestamps", "sources"})


def _named(exc: WriterError, n: int) -> WriterError:
    """``exc``, saying which episode was being added (its position in the file)."""
    return WriterError(f"{exc} (adding episode {n})")


def _defaults_like(
    arrays: dict[str, np.ndarray], schema: Mapping[str, Any], states: bool, rewards: bool
) -> None:
    """Left-out ``states``/``rewards`` (zeros, float32) take the dtype the file's earlier
    episodes hold them in: an episode without rewards added to a file of float64 rewards
    is no dtype drift (zeros are exact in every dtype)."""
    for name, defaulted in (("states", states), ("rewards", rewards)):
        recorded = schema.get(name, {}).get("dtype") if defaulted else None
        if recorded and recorded != arrays[name].dtype.name:
            arrays[name] = np.zeros(arrays[name].shape, np.dtype(recorded).newbyteorder("<"))


class Writer(_EpisodeCopies):
    """Write episodes to a ``.kdb`` file; nothing is visible until `close` commits.

    Modes follow h5py: ``"x"`` creates (fails if the file exists), ``"w"`` replaces
    (through a link, the file it points at; keeping the replaced file's permission bits),
    ``"a"`` appends to an existing file. New files are written to a temporary file
    beside ``path`` and renamed into place; appends write after the committed data and
    switch the commit record last, so a crash leaves the old or the new state. In mode
    ``"a"`` on a path with no file yet, the writer writes a new file; should another writer
    create the file meanwhile, `close` appends this writer's episodes to it, after that
    writer's (their indices then follow its episodes), as an append would.

    ``image_codec`` (``"jpeg"``, ``"png"`` or ``"raw"``) encodes frames given as uint8
    arrays; unset, they are JPEG (quality ``jpeg_quality``), and an append stores each
    camera the file already holds in that camera's own codec (raw depth stays raw). An
    append's ``schema`` must agree with the file's: the episodes already there keep theirs.

    One writer may be shared by threads: `add_episode` checks and encodes each episode in
    its caller's thread and writes it whole under the writer's lock. A process forked
    while a writer is open cannot use it (`WriterError`); the child, and its exit, leave
    the file to the parent.

    ``schema`` declares the named components (``{"states": {"components": {"eef_pos":
    [0, 3]}, "names": [...]}}``) of ``actions`` and ``states``; a stored schema
    (``db.schema()``) may be passed whole, its dims, dtypes, cameras and arrays being
    recorded from the episodes written.

    Example:
        >>> import numpy as np, kinodb
        >>> with kinodb.Writer("demo.kdb", mode="w", image_codec="raw") as w:
        ...     w.add_episode(actions=np.zeros((4, 7), np.float32), embodiment="franka")
        0

    Raises:
        FileExistsError: mode ``"x"`` and ``path`` exists.
        FormatError: mode ``"a"`` and ``path`` is not a ``.kdb`` file (or not a regular file).
        WriterError: an episode is malformed, another process is appending, ``path``
            is a folder or names one (ends in a path separator, ``out/``), or (mode ``"a"``)
            the file cannot be opened for writing (permissions, a read-only mount).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        mode: str = "x",
        image_codec: str | None = None,
        jpeg_quality: int = 95,
        schema: Mapping[str, Any] | None = None,
        source_format: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> None:
        if mode not in ("x", "w", "a"):
            raise ValueError(f"mode must be 'x', 'w' or 'a', got {mode!r}")
        if image_codec is not None and image_codec not in CODECS:
            raise ValueError(f"image_codec must be one of {CODECS}, got {image_codec!r}")
        quality = check_quality(jpeg_quality)
        # Checked before any file is touched: a bad value would otherwise fail the commit.
        metadata = json_metadata(metadata or {}, "metadata")
        if source_format is not None:
            check_text(str(source_format), f"source_format {source_format!r}")
        schema = mapping(schema, "schema", "{'actions': {'names': [...]}}")
        created = utc_now()  # a bad SOURCE_DATE_EPOCH fails here, not at the commit
        self._path = os.fspath(path)
        self._mode, self._codec, self._quality = mode, image_codec, quality
        # Only the process that opened the writer writes, commits or cleans up (not a fork).
        self._owner = os.getpid()
        # add_episode, copy_episode, close and abort from several threads take turns;
        # frames are encoded before the lock is taken.
        self._lock = threading.RLock()
        self._table = TableBuilder()
        self._closed = False
        self._failure: str | None = None  # why the writer closed itself (an I/O error)
        self._unplaced: str | None = None  # why close could not put its file in place, and what it kept
        # An append's commit: where its record goes and the bytes there before it (restored if
        # the record's write fails), and whether the record is written (readers may then see
        # the new commit, which therefore stands whatever fails after).
        self._old_record: tuple[int, bytes] | None = None
        self._record_written = False
        self._guard: int | None = None  # mode "w": the replaced file, locked against appenders
        self._num_frames = 0
        self._generation, self._slot = 0, 0
        refuse_folder(self._path)
        kind = not_regular(self._path)  # "w" would replace a device or a FIFO with a file
        if kind is not None:
            done = "appended to" if mode == "a" else "written or replaced"
            raise FormatError(
                f"{self._path} is {kind}, not a regular file, and cannot be {done}; give the path of a .kdb "
                "file"
            )
        # Through a link, as open() writes: the link stays, the file it points at is replaced.
        self._target = os.path.realpath(self._path) if os.path.islink(self._path) else self._path
        self._base_end: int | None = None  # an append: the committed end of the file
        self._held: BinaryIO | None = None  # a new file: its temporary, locked while this writer lives
        self._drifted: set[str] = set()  # arrays warned about holding another dtype than earlier episodes
        # Episode layouts written (see `_add_episode`), each with its arrays' section rows but
        # the offsets; forgotten whenever the schema is handed out, which may then change it.
        self._layouts: dict[tuple[Any, ...], list[tuple[Any, ...]]] = {}
        # Says a drift instead of the warning (an ingest, in its own words): (episode, array, dtype, earlier).
        self._on_drift: Callable[[int, str, str, str], None] | None = None
        # An append: the file's episode count and dataset when opened (see `close`).
        self._unchanged: tuple[int, dict[str, Any]] | None = None
        if mode == "a" and os.path.exists(self._path):
            self._open_append()
        else:
            if mode == "x" and os.path.lexists(self._path):
                raise FileExistsError(f"{self._path} exists; use mode='w' to replace it or 'a' to append")
            self._dataset: dict[str, Any] = {
                "format": "kinodb", "format_version": "1.0", "created": created,
                "writer": f"kinodb {__version__}", "source_format": None,
                "schema": {"cameras": {}, "arrays": {}}, "metadata": Metadata(),
            }  # fmt: skip
            self._tmp: str | None = None
            if mode == "w":  # no append may commit into the file this one replaces
                self._guard = hold(self._target)
            try:
                self._fh, self._held = self._new_temp()
            except BaseException as exc:
                if self._guard is not None:
                    os.close(self._guard)
                if isinstance(exc, OSError):
                    raise output_error(self._path, exc) from None
                raise
        try:
            if self._tmp is not None:
                self._fh.write(bytes(DATA_START))
                self._pos = DATA_START
            self._flusher = Flusher(self._pos)
            self._finalizer = weakref.finalize(
                self, cleanup, self._owner, self._tmp, self._fh, self._flusher, self._guard, self._base_end
            )
            self._unhold = weakref.finalize(self, release_temp, self._owner, self._held)
        except BaseException:  # a signal (SIGTERM, Ctrl-C) or an error before the cleanup is registered
            self._drop_new_file()
            raise
        parent_only(self._fh)
        if self._held is not None:
            parent_only(self._held)
        # Stored statistics describe the episodes present when they were set (see `stats`).
        self._stats_episodes = len(self._table)
        if source_format is not None:
            self._dataset["source_format"] = str(source_format)
        self._dataset["metadata"].update(metadata)
        try:
            for part, spec in schema.items():
                self._declare(part, spec)
            # A writer killed while writing left its temporary, as large as the dataset: the
            # next writer that gets to write the path removes it. Live writers, here or in
            # another PID namespace (a container sharing the folder), hold theirs locked.
            remove_stale_temps(self._target)
        except BaseException:
            self._finalizer()  # release the file (and an append's lock) now, not when collected
            self._unhold()
            raise

    def _new_temp(self) -> tuple[BinaryIO, BinaryIO]:
        """Create this writer's temporary file beside the target (``self._tmp``) and lock it
        (`hold_temp`): the open file to write, and the handle that holds its lock until the
        file is published (closing the first, once committed, keeps the lock)."""
        folder, base = os.path.dirname(os.path.abspath(self._target)), os.path.basename(self._target)
        for _ in range(3):
            tmp = self._tmp = os.path.join(folder, f".{base}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
            fh: BinaryIO | None = None
            held: BinaryIO | None = None
            try:
                fh = open(tmp, "xb", buffering=1 << 20)  # noqa: SIM115
                held = open(os.dup(fh.fileno()), "rb")  # noqa: SIM115 - the same open file: its lock
                if hold_temp(held, tmp):
                    return fh, held
            except BaseException as exc:
                for f in (held, fh):
                    if f is not None:
                        with contextlib.suppress(OSError):
                            f.close()
                if fh is not None or not isinstance(exc, OSError):  # made, or a signal as it was made
                    with contextlib.suppress(OSError):
                        os.unlink(tmp)
                raise
            # A writer's sweep in another PID namespace took it as it was made: it deletes it.
            held.close()
            fh.close()
        raise WriterError(
            f"{self._path}: other processes deleted this writer's temporary files in {folder} as they were "
            "made; retry, and check what else writes there"
        )

    def _drop_new_file(self) -> None:
        """Remove a new file's temporary and release what it holds, before `cleanup` can."""
        with contextlib.suppress(OSError, AttributeError):
            self._fh.close()
        if self._tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(self._tmp)
        release_temp(self._owner, self._held)
        if self._guard is not None:
            with contextlib.suppress(OSError):
                os.close(self._guard)

    def _open_append(self) -> None:
        # Deferred: the reader (and validate, built on it) never import the writer.
        from kinodb.kdb.reader import Database
        from kinodb.kdb.validate import refuse_hidden_commit

        self._tmp = None
        for _ in range(10):
            try:
                self._fh = open(self._path, "r+b", buffering=1 << 20)  # noqa: SIM115
            except OSError as exc:
                raise self._unwritable(exc) from exc
            try:
                lock(self._fh.fileno(), self._path)
                if still_at(self._fh.fileno(), self._path):
                    break
            except BaseException:
                self._fh.close()
                raise
            self._fh.close()  # replaced (by a writer in mode "w") between opening and locking
        else:
            raise WriterError(
                f"{self._path}: another process keeps replacing this file; retry when it is done"
            )
        try:
            with Database(self._path) as db:  # read under the lock: no other appender moves it
                if db.version().startswith("0."):
                    raise FormatError(
                        f"{self._path} is a format {db.version()} file and cannot be appended "
                        f"to; convert it first: kino upgrade {self._path} NEW.kdb"
                    )
                if db.version() != "1.0":  # a newer minor version: its index holds what 1.0 cannot
                    raise FormatError(
                        f"{self._path} is a format {db.version()} file (written by "
                        f"{db.dataset_info().get('writer') or 'a newer kinodb'}); this kinodb ({__version__}) "
                        "writes format 1.0 and would drop what the newer format adds: append with the kinodb "
                        "that wrote it, or a later one (pip install -U kinodb)"
                    )
                commit, self._slot = db._commit, db._slot
                refuse_hidden_commit(db)  # an append would truncate a newer commit away
                # `_block` verifies the index checksum: a damaged index is never stored
                # again under a valid one.
                self._dataset = db._block.dataset
                where = f"{self._path}: index at byte offset {commit.index_offset}"
                check_append_dataset(self._dataset, where, self._path)
                self._dataset["metadata"] = Metadata(self._dataset["metadata"])  # checked from now on
                self._table.load(db._block, where)  # the stored rows stay encoded: no object per episode
                # What the file holds: an append that adds nothing and changes none of it commits nothing.
                self._unchanged = (len(self._table), copy.deepcopy(self._dataset))
        except BaseException:
            self._fh.close()
            raise
        self._num_frames = commit.num_frames
        self._generation = commit.generation
        # Bytes past the committed end belong to no state (a killed writer's leftovers).
        self._fh.truncate(commit.end)
        self._fh.seek(commit.end)
        self._pos = commit.end
        self._base_end = commit.end

    def _unwritable(self, exc: OSError) -> WriterError:
        """``exc``, raised opening the existing file at the path to append, said of that file."""
        if exc.errno == errno.EROFS:
            return WriterError(
                f"{self._path}: cannot open the file to append to it ({exc.strerror}): its file system is "
                "mounted read-only; copy the file to a writable folder and append to the copy"
            )
        if isinstance(exc, PermissionError):
            return WriterError(
                f"{self._path}: cannot open the file to append to it ({exc.strerror}): this user may not "
                f"write it; give it write permission (as its owner: chmod u+w {self._path}), or append to a "
                "copy in a writable folder"
            )
        return WriterError(f"{self._path}: cannot open the file to append to it ({exc.strerror or exc})")

    # -- schema ---------------------------------------------------------------------------

    @property
    def metadata(self) -> dict[str, Any]:
        """Free-form dataset metadata, stored as JSON at commit: a dict (`Metadata`) whose
        values are checked as they are set.

        Raises:
            WriterError: (setting a value) JSON cannot store it: NaN, infinity, an array,
                bytes, a key that is not a str; the message names the key.
        """
        return self._dataset["metadata"]  # type: ignore[no-any-return]

    @property
    def schema(self) -> dict[str, Any]:
        """The dataset schema stored at commit; dims and cameras fill in as episodes arrive."""
        with self._lock:
            self._layouts.clear()  # the caller may change it: each layout is checked against it anew
        return self._dataset["schema"]  # type: ignore[no-any-return]

    @property
    def stats(self) -> dict[str, Any] | None:
        """Normalisation statistics stored with the dataset (``kinodb.stats``), or None.

        Statistics describe the episodes present when they were set: if episodes are added
        afterwards (for example by an append), `close` marks them ``"stale": true`` and
        `Database.stats` refuses them until ``kino stats`` computes them again.
        """
        value = self._dataset.get("stats")
        return value if isinstance(value, dict) else None

    @stats.setter
    def stats(self, value: Mapping[str, Any] | None) -> None:
        if value is None:
            self._dataset.pop("stats", None)
            return
        self._dataset["stats"] = json_mapping(value, "stats")
        self._stats_episodes = len(self._table)

    def _mark_stale_stats(self) -> None:
        stats = self._dataset.get("stats")
        if isinstance(stats, dict) and len(self._table) != self._stats_episodes:
            stats["stale"] = True

    def _codec_for(self, cam: str) -> str:
        """The codec of camera ``cam``'s array frames: ``image_codec`` when given; else, when
        appending, the codec the file already stores the camera in; else JPEG."""
        if self._codec is not None:
            return str(self._codec)
        if self._mode != "a" or self._tmp is not None:
            return "jpeg"
        entry = self._dataset["schema"].get("cameras", {}).get(cam)
        if entry is None:
            return "jpeg"
        stored = entry.get("codec")
        return stored if stored in CODECS else "png"  # codecs vary: lossless, whatever was stored

    def _declare(self, part: str, spec: Mapping[str, Any]) -> None:
        if part in _RECORDED:  # a stored schema (`Database.schema()`): these follow the episodes
            return
        if part not in ("actions", "states"):
            raise ValueError(
                f"schema keys are 'actions' and 'states' (with 'components' and 'names'), got {part!r}"
            )
        new = declared_schema(part, spec)
        entry = self._dataset["schema"].setdefault(part, {})
        comps = new.get("components", {})
        if self._mode == "a" and self._tmp is None:  # appending: the file's episodes keep their schema
            for key, value in new.items():
                if entry.get(key) is not None and entry[key] != value:
                    raise WriterError(
                        f"{self._path}: schema {part}.{key} is {entry[key]!r} in the file, not {value!r}; "
                        "an append cannot change the schema of the episodes already there: pass the "
                        "file's schema (or none), or write a new file"
                    )
            dims = sorted(set(self._table.rows["action_dim" if part == "actions" else "state_dim"]))
            names, stops = new.get("names"), [stop for _, stop in comps.values()]
            if dims and ((names is not None and dims != [len(names)]) or (stops and max(stops) > dims[0])):
                what = f"{len(names)} names" if names is not None else f"components up to {max(stops)}"
                raise WriterError(
                    f"{self._path}: schema {part} declares {what}, but the file's episodes have {part} dim "
                    f"{', '.join(map(str, dims))}: an append must fit the episodes already there; write a new file"
                )
        entry.update(new)

    # -- episodes -------------------------------------------------------------------------

    def add_episode(
        self,
        *,
        actions: Any,
        states: Any = None,
        rewards: Any = None,
        is_terminal: Any = None,
        timestamps: Any = None,
        images: Mapping[str, Any] | None = None,
        extra_arrays: Mapping[str, Any] | None = None,
        embodiment: str = "unknown",
        task: str = "",
        fps: float | np.floating[Any] = 10.0,
        success: bool | np.bool_ | None = None,
        total_reward: float | np.floating[Any] | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> int:
        """Validate, encode and write one episode; return its index in the file.

        Arrays that are not NumPy arrays become float32 (timestamps: float64); NumPy
        arrays keep their dtype. Left-out ``states`` (``(T, 0)``) and ``rewards`` are zeros
        in the dtype the file's earlier episodes hold them in (float32 when those differ or
        there are none). ``images`` maps a camera name to uint8 frames
        ``(T, H, W, C)`` to encode with the writer's codec, or to a list of T encoded
        JPEG/PNG frames stored unchanged (or `EncodedFrames`, which also sets the channel
        count readers convert them to). ``total_reward`` defaults to the sum of ``rewards``
        when rewards are given, or None (unknown) when that sum is NaN or infinite; given
        explicitly, it must be a finite number. Extra field names must not start with
        ``extra.``, which marks extra fields in `Database.read_meta` and KQL.

        Several threads may add episodes to one writer: each episode is checked and its
        frames encoded in its own thread, then written whole, in the order they finish.

        An array held in another dtype than the file's earlier episodes hold it (float64
        actions after float32 ones) is stored as given, with a warning once per array:
        `Database.gather`, frame windows and ``kino stats`` need one dtype per array.

        Raises:
            WriterError: a field has the wrong shape, dtype, length or value; an episode has
                more than 65535 arrays and cameras, or the file more than 65536 distinct
                array and camera names (both are u16 in the format); the message names it,
                and the episode being added (its position in the file).
        """
        return self._add_episode(
            actions=actions, states=states, rewards=rewards, is_terminal=is_terminal, timestamps=timestamps,
            images=images, extra_arrays=extra_arrays, embodiment=embodiment, task=task, fps=fps,
            success=success, total_reward=total_reward, extra=extra, sum_rewards=True,
        )  # fmt: skip

    def _add_episode(
        self, *, actions: Any, states: Any = None, rewards: Any = None, is_terminal: Any = None,
        timestamps: Any = None, images: Mapping[str, Any] | None = None,
        extra_arrays: Mapping[str, Any] | None = None, embodiment: str = "unknown", task: str = "",
        fps: float | np.floating[Any] = 10.0, success: bool | np.bool_ | None = None,
        total_reward: float | np.floating[Any] | None = None, extra: Mapping[str, Any] | None = None,
        sum_rewards: bool,
    ) -> int:  # fmt: skip
        """`add_episode`; without ``sum_rewards``, a None ``total_reward`` is stored as null
        (unknown) whatever the rewards: an episode converted from another file keeps its null."""
        self._check_open()
        n = len(self._table)
        try:
            arrays = episode_arrays(actions, states, rewards, is_terminal, timestamps, extra_arrays)
            cameras = mapping(images, "images", "{'front': uint8 frames (T, H, W, 3)}")
        except WriterError as exc:
            raise _named(exc, n) from exc.__cause__
        names = [*arrays, *map(str, cameras)]
        if len(names) > _U16_MAX:  # refused before any frame is encoded
            self._check_section_limits(names)
        T = arrays["actions"].shape[0]
        try:
            positive_fps(fps)  # before any frame is encoded
            cams = {
                str(c): camera_frames(str(c), v, T, self._codec_for, self._quality)
                for c, v in cameras.items()
            }
            flag = bool(success) if isinstance(success, np.bool_) else success
            given = rewards if sum_rewards else None  # episode_meta sums the rewards only when given
            meta = episode_meta(embodiment, task, fps, flag, total_reward, arrays["rewards"], given, extra)
        except WriterError as exc:
            raise _named(exc, n) from exc.__cause__
        with self._lock:
            self._check_open()
            schema = self._dataset["schema"]
            _defaults_like(arrays, schema, states is None, rewards is None)
            # An episode laid out as one already written (the arrays' names, dtypes and
            # trailing dims, the cameras' formats) passes the schema's checks as that one did
            # and would record nothing new in it: `_Layout`.
            key = (
                tuple([(k, a.dtype, a.shape[1:]) for k, a in arrays.items()]),
                tuple([(c, codec, hwc) for c, (codec, hwc, _) in cams.items()]),
            )
            layout = self._layouts.get(key)
            drift: list[tuple[str, str, str]] = []
            if layout is None:
                self._check_section_limits(names)
                try:
                    check_dims(schema, arrays["actions"].shape[1], arrays["states"].shape[1])
                except WriterError as exc:
                    raise _named(exc, len(self._table)) from exc.__cause__
                drift = dtype_drift(schema, arrays, self._drifted)
            n = len(self._table)
            index = self._write(arrays, cams, meta, layout)
            if layout is None:
                note_schema(schema, {k: (v.dtype, v.shape) for k, v in arrays.items()},
                            {k: (codec, hwc) for k, (codec, hwc, _) in cams.items()})  # fmt: skip
                self._layouts[key] = self._layout_rows(arrays)
        for name, got, was in drift:  # once written, at the caller's line
            if self._on_drift is not None:
                self._on_drift(n, name, got, was)
            else:
                warnings.warn(
                    drift_message(self._path, n, name, got, was, writer_fix(name, got, was)), stacklevel=3
                )
        return index

    def _layout_rows(self, arrays: Mapping[str, np.ndarray]) -> list[tuple[Any, ...]]:
        """The arrays' section rows but their offsets (see `_layouts`)."""
        return [
            (self._table.name_code(k), KIND_ARRAY, DTYPE_CODE[a.dtype], 0, a.ndim, dims3(a.shape))
            for k, a in arrays.items()
        ]

    def _add_columns(
        self, lengths: Sequence[int], *, actions: np.ndarray, states: np.ndarray | None, rewards: np.ndarray | None,
        is_terminal: np.ndarray | None, extra_arrays: Mapping[str, np.ndarray], embodiment: str,
        tasks: Sequence[str], fps: float, successes: Sequence[bool | None], extras: Sequence[Mapping[str, Any]],
    ) -> bool:  # fmt: skip
        """Add several episodes given at once: each array holds all their steps, one episode
        after another (``lengths`` steps each); the file is the one `add_episode` called on
        each episode's slices would give (rewards summed per episode).

        Returns False, adding none of them, where they are not all of a layout already
        written (arrays' names, dtypes and dims), or one of them is refused: adding them one
        by one then says why. Cameras and timestamps are not taken.

        Raises:
            WriterError: writing failed (the writer is then closed, as `add_episode` leaves it).
        """
        self._check_open()
        T = sum(lengths)
        if not lengths or min(lengths) < 1:
            return False
        if is_terminal is None:  # add_episode's default, per episode: its last step
            is_terminal = np.zeros(T, bool)
            is_terminal[np.cumsum(lengths) - 1] = True
        try:
            arrays = episode_arrays(actions, states, rewards, is_terminal, None, extra_arrays)
            if arrays["actions"].shape[0] != T:
                return False
            rew = arrays["rewards"]
            totals: list[float | None] = [None] * len(lengths)
            if rewards is not None:
                # Each episode's sum as add_episode takes it: the sum of its own slice (a sum
                # over runs, np.add.reduceat, adds in another order); not finite: unknown.
                wide = rew.astype(np.float64)
                with np.errstate(invalid="ignore"):
                    sums = [
                        float(wide[end - n : end].sum())
                        for n, end in zip(lengths, np.cumsum(lengths).tolist(), strict=True)
                    ]
                totals = [t if math.isfinite(t) else None for t in sums]
            metas = [
                episode_meta(embodiment, task, fps, bool(flag) if isinstance(flag, np.bool_) else flag, total, rew,
                             None, extra)
                for task, flag, total, extra in zip(tasks, successes, totals, extras, strict=True)
            ]  # fmt: skip
        except (WriterError, ValueError, TypeError):
            return False
        with self._lock:
            self._check_open()
            schema = self._dataset["schema"]
            _defaults_like(arrays, schema, states is None, rewards is None)
            key = (tuple([(k, a.dtype, a.shape[1:]) for k, a in arrays.items()]), ())
            layout = self._layouts.get(key)
            if layout is None:  # the first episode of a new layout: added alone, with its checks
                n = lengths[0]
                try:
                    self._add_episode(
                        actions=actions[:n], states=None if states is None else states[:n],
                        rewards=None if rewards is None else rewards[:n],
                        is_terminal=None if is_terminal is None else is_terminal[:n],
                        extra_arrays={k: v[:n] for k, v in extra_arrays.items()}, embodiment=embodiment,
                        task=tasks[0], fps=fps, success=successes[0], extra=extras[0], sum_rewards=True,
                    )  # fmt: skip
                except (WriterError, ValueError, TypeError):
                    if self._failure is not None:  # writing failed: the writer's own error
                        raise
                    return False
                if len(lengths) == 1:
                    return True
                layout = self._layout_rows(arrays)
                arrays = {k: v[n:] for k, v in arrays.items()}
                lengths, metas = lengths[1:], metas[1:]
            self._write_columns(arrays, lengths, metas, layout)
        return True

    def _write_columns(
        self, arrays: dict[str, np.ndarray], lengths: Sequence[int], metas: list[dict[str, Any]],
        layout: list[tuple[Any, ...]],
    ) -> None:  # fmt: skip
        """`_add_columns`' episodes, written in one go: each laid out as `_write` lays it out."""
        table = self._table
        # each array's bytes, and the bytes of one of its steps
        views = [
            (np.ascontiguousarray(a).reshape(-1).view(np.uint8).data, a[:1].nbytes) for a in arrays.values()
        ]
        pos = self._pos
        parts: list[Any] = []
        spans, rows = [], []  # each episode's payload; the section rows of all, in order
        step = 0
        for T in lengths:
            payload = align(pos, SECTION_ALIGN)
            if payload > pos:
                parts.append(_ZEROS[: payload - pos])
            pos = payload
            for (view, width), row in zip(views, layout, strict=True):
                pad = -pos % SECTION_ALIGN
                if pad:
                    parts.append(_ZEROS[:pad])
                    pos += pad
                rows.append((*row, pos))
                parts.append(view[step * width : (step + T) * width])
                pos += T * width
            spans.append((payload, pos))
            step += T
        base = self._pos
        blob = b"".join(parts)
        try:
            self._fh.write(blob)
        except BaseException as exc:
            if isinstance(exc, OSError) or not self._rollback(base, table.section_count()):
                raise self._fail(exc, "writing an episode") from exc
            raise
        self._pos = pos
        whole = memoryview(blob)
        dims = arrays["actions"].shape[1], arrays["states"].shape[1]
        sec_start, count = table.section_count(), len(layout)
        table.add_sections(rows)
        for (start, end), meta, T in zip(spans, metas, lengths, strict=True):
            crc = crc32(whole[start - base : end - base])
            meta.update(num_frames=T, action_dim=dims[0], state_dim=dims[1])
            self._add_row(meta, start, end - start, crc, sec_start, meta["extra"], count, flush=False)
            sec_start += count
        self._flush_some()

    def _check_section_limits(self, names: Sequence[str]) -> None:
        """Refuse an episode whose sections the u16 columns ``sec_count`` and ``sec.name``
        cannot count, before anything is written (the commit would fail on it)."""
        if len(names) > _U16_MAX:
            raise WriterError(
                f"{self._path}: episode {len(self._table)} has {len(names)} arrays and cameras; the format "
                f"stores at most {_U16_MAX} per episode (sec_count is u16): stack related arrays into one "
                "array with more dims"
            )
        total = len(self._table.section_names) + self._table.new_names(names)
        if total > _U16_MAX + 1:
            raise WriterError(
                f"{self._path}: episode {len(self._table)} would bring the file to {total} distinct array and "
                f"camera names; the format stores at most {_U16_MAX + 1} (sec.name is u16): reuse names "
                "across episodes, or write the episodes to several files"
            )

    # -- bytes ----------------------------------------------------------------------------

    def _emit(self, data: bytes | memoryview, crc: int, to: int = SECTION_ALIGN) -> tuple[int, int]:
        pad = align(self._pos, to) - self._pos
        if pad:
            self._fh.write(_ZEROS[:pad])
            crc = crc32(_ZEROS[:pad], crc)
            self._pos += pad
        start = self._pos
        self._fh.write(data)
        self._pos += len(data)
        return start, crc32(data, crc)

    def _emit_frames(self, frames: list[bytes], crc: int) -> int:
        write = self._fh.write
        for blob in frames:
            write(blob)
        self._pos += sum(map(len, frames))
        return crc32_parts(frames, crc)

    def _emit_arrays(self, arrays: Mapping[str, np.ndarray], layout: list[tuple[Any, ...]] | None) -> int:
        """Write the arrays at the payload's start, each on the section grid, adding their
        section rows; return the payload's CRC-32 so far.

        Small arrays go out joined, in one write and one CRC pass: per-array calls cost more
        than the bytes on episodes of small arrays. A large one is written as it is, not
        copied into a joined buffer first.
        """
        layout = layout or self._layout_rows(arrays)
        pos = self._pos
        parts: list[Any] = []
        rows = []
        crc = 0
        for arr, row in zip(arrays.values(), layout, strict=True):
            if not arr.flags.c_contiguous:
                arr = np.ascontiguousarray(arr)
            pad = -pos % SECTION_ALIGN
            if pad:
                parts.append(_ZEROS[:pad])
                pos += pad
            rows.append((*row, pos))
            # an ndarray is a buffer (of its bytes, C-contiguous): joined and written as one
            parts.append(arr)
            pos += arr.nbytes
            if arr.nbytes >= _JOIN_BELOW:
                crc = self._write_parts(parts, crc)
                parts = []
        crc = self._write_parts(parts, crc)
        self._pos = pos
        self._table.add_sections(rows)
        return crc

    def _write_parts(self, parts: list[Any], crc: int) -> int:
        """Write ``parts`` (bytes and C-contiguous arrays): those before a large last one
        joined, the last one as it is; return the CRC-32 continued over them."""
        if not parts:
            return crc
        last = parts[-1]
        big = isinstance(last, np.ndarray) and last.nbytes >= _JOIN_BELOW
        head = parts[:-1] if big else parts
        if head:
            data = b"".join(head)
            self._fh.write(data)
            crc = crc32(data, crc)
        if big:
            view = last.reshape(-1).view(np.uint8).data  # a byte view: zero-size shapes too
            self._fh.write(view)
            crc = crc32(view, crc)
        return crc

    def _write(
        self, arrays: dict[str, np.ndarray], cams: dict[str, Any], meta: dict[str, Any],
        layout: list[tuple[Any, ...]] | None = None,
    ) -> int:  # fmt: skip
        """Write an episode and add its rows; ``layout``: its arrays' section rows but the
        offsets, when an episode of its layout was written before."""
        table = self._table
        T = arrays["actions"].shape[0]
        sec_start = table.section_count()
        mark = self._pos
        try:
            self._fh.write(_ZEROS[: align(mark, SECTION_ALIGN) - mark])  # before the payload: not in its CRC
            self._pos = payload_start = align(mark, SECTION_ALIGN)
            crc = self._emit_arrays(arrays, layout)
            for cam, (codec, (h, w, c), frames) in cams.items():
                pixels = isinstance(frames, np.ndarray)
                sizes = [h * w * c] * T if pixels else [len(b) for b in frames]
                table_off = np.zeros(T + 1, "<u8")
                np.cumsum(sizes, out=table_off[1:])
                off, crc = self._emit(table_off.tobytes(), crc)
                # The frames follow their offset table directly; encoded ones are written one
                # by one, not joined first (which would hold a second copy of the episode's).
                if pixels:
                    _, crc = self._emit(frames.reshape(-1).data, crc, to=1)
                else:
                    crc = self._emit_frames(frames, crc)
                table.add_section({
                    "sec.name": table.name_code(cam), "sec.kind": KIND_CAMERA, "sec.dtype": DTYPE_CODE[np.dtype("u1")],
                    "sec.codec": CODECS.index(codec), "sec.ndim": 4, "sec.dims": dims3((T, h, w, c)),
                    "sec.offset": off,
                })  # fmt: skip
        except BaseException as exc:
            if isinstance(exc, OSError) or not self._rollback(mark, sec_start):
                raise self._fail(exc, "writing an episode") from exc
            raise
        meta = {**meta, "num_frames": T, "action_dim": arrays["actions"].shape[1],
                "state_dim": arrays["states"].shape[1]}  # fmt: skip
        self._add_row(meta, payload_start, self._pos - payload_start, crc, sec_start, meta["extra"])
        return len(table) - 1

    def _add_row(
        self,
        meta: Mapping[str, Any],
        start: int,
        length: int,
        crc: int,
        sec_start: int,
        extra: Mapping[str, Any],
        sec_count: int | None = None,
        *,
        flush: bool = True,
    ) -> None:
        """Add an episode's row: its ``sec_count`` section rows (those added since
        ``sec_start`` where None) are in the table; ``flush``: hand the bytes written so far
        to the disk in the background, when enough are (`Flusher`)."""
        table, success, reward = self._table, meta["success"], meta["total_reward"]
        table.add_episode_values(
            (  # in EPISODE_COLUMNS' order
                len(table), meta["num_frames"], meta["action_dim"], meta["state_dim"], meta["fps"],
                -1 if success is None else int(bool(success)),
                math.nan if reward is None else reward, reward is not None,
                start, length, crc, sec_start, table.section_count() - sec_start if sec_count is None else sec_count,
            ),
            {"embodiment": meta["embodiment"], "task": meta["task"]},
            extra,
        )  # fmt: skip
        self._num_frames += int(meta["num_frames"])
        if flush:
            self._flush_some()

    def _flush_some(self) -> None:
        try:
            self._flusher.after_write(self._fh, self._pos)
        except OSError as exc:
            raise self._fail(exc, "writing to disk") from exc

    def _rollback(self, mark: int, sec_start: int) -> bool:
        """Take back a partly written episode; False if the file could not be (the writer
        must then close itself: its idea of the file no longer matches the file)."""
        self._table.drop_sections(sec_start)
        try:
            self._fh.flush()
            self._fh.seek(mark)
            self._fh.truncate(mark)
        except OSError:
            return False
        self._pos = mark
        return True

    def _fail(self, exc: BaseException, doing: str) -> BaseException:
        """Close the writer after ``exc`` (nothing uncommitted is kept); the error to raise."""
        self.abort()
        if not isinstance(exc, OSError):
            return exc
        kept = "nothing was written" if self._tmp is not None else "the file is as it was before this writer"
        self._failure = f"{doing} failed ({exc.strerror or exc})"
        return WriterError(
            f"{self._path}: {self._failure}; {kept} (the episodes added to this writer are not kept)"
        )

    def _check_open(self) -> None:
        self._check_owner()
        if self._failure is not None:
            raise WriterError(
                f"{self._path}: this writer closed itself when {self._failure}; nothing was committed"
            )
        if self._unplaced is not None:
            raise WriterError(f"this writer is closed: {self._unplaced}")
        if self._closed:
            raise WriterError(f"{self._path}: writer is closed")

    def _check_owner(self) -> None:
        """Refuse to use the writer in a forked child: its file belongs to the parent."""
        if os.getpid() != self._owner:
            raise WriterError(
                f"{self._path}: this Writer was opened by process {self._owner}; this process "
                f"({os.getpid()}) is a fork of it and cannot use or close it (the parent keeps "
                "writing the file): open a Writer in this process instead"
            )

    # -- commit ---------------------------------------------------------------------------

    def close(self) -> None:
        """Commit: write the index, fsync, then publish it (rename or commit record).

        An append that added no episode and changed neither metadata nor statistics
        commits nothing: the file keeps its bytes (and its ``modified`` time).

        Raises:
            WriterError: nothing was added to a new file; or writing failed (a full disk),
                or failed earlier, and nothing was committed: the file is as it was. Or
                JSON cannot store a metadata value (the message names it): nothing was
                committed yet and the writer stays open, to fix the value and close again.
            WriterError: mode ``"a"``, another writer created ``path`` meanwhile, and this
                writer's episodes could not be appended to it (a third writer held it for
                seconds, its schema disagrees, it is not a ``.kdb`` file): that
                file is left as it was, and the episodes are kept in a new file beside it,
                which the message names with the ``kino merge`` command that adds them.
            FileExistsError: mode ``"x"`` and another writer created ``path`` meanwhile.
        """
        self._check_owner()
        with self._lock:
            if self._failure is not None or self._unplaced is not None:
                self._check_open()
            if self._closed:
                return
            if self._tmp is not None and len(self._table) == 0:
                self.abort()
                raise WriterError(f"{self._path}: no episodes were added; nothing was written")
            check_dataset(self._dataset, self._path, len(self._table))
            if self._tmp is None and (len(self._table), self._dataset) == self._unchanged:
                self.abort()  # nothing to commit: the file keeps its bytes (and its modified time)
                return
            if self._tmp is None:
                try:
                    self._dataset["modified"] = utc_now()
                except WriterError:
                    self.abort()
                    raise
            unconfirmed: BaseException | None = None
            try:
                self._commit()
            except BaseException as exc:
                if not self._record_written:
                    raise self._fail(exc, "committing") from exc
                unconfirmed = exc  # after the record was written: the commit stands
            self._closed = True
            self._finalizer.detach()
            with contextlib.suppress(OSError):  # flushed and synced: closing cannot lose data
                self._fh.close()
            if isinstance(unconfirmed, OSError):
                raise self._unconfirmed(unconfirmed) from unconfirmed
            if unconfirmed is not None:  # a Ctrl-C: the commit is complete, the interrupt goes on
                raise unconfirmed
            if self._tmp is not None:
                try:
                    self._publish(self._tmp)
                except WriterError as exc:
                    self._unplaced = str(exc)
                    raise

    def _publish(self, tmp: str) -> None:
        """Put the committed temporary file ``tmp`` in place of the target; in mode ``"a"``,
        append its episodes to a file another writer created there meanwhile."""
        try:
            if self._mode != "w":
                publish_new(tmp, self._target)
            else:
                keep_mode(tmp, self._target)
                os.replace(tmp, self._target)
        except FileExistsError:
            if self._mode == "a":
                self._append_instead(tmp)
                return
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        except BaseException as exc:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            if isinstance(exc, OSError):
                raise WriterError(
                    f"{self._path}: cannot put the new file in place ({exc.strerror or exc}); nothing was written"
                ) from exc
            raise
        finally:
            self._unhold()  # published, kept aside or deleted: no longer a temporary to keep
            if self._guard is not None:
                with contextlib.suppress(OSError):
                    os.close(self._guard)
        fsync_dir(self._target)

    def _commit(self) -> None:
        self._mark_stale_stats()
        index = self._table.encode(self._dataset)
        index_offset = align(self._pos)
        self._fh.write(bytes(index_offset - self._pos))
        self._fh.write(index)
        crc = crc32(memoryview(index))
        commit = Commit(
            self._generation + 1, index_offset, len(index), len(self._table), self._num_frames, crc
        )
        slot = 1 - self._slot if self._tmp is None else 0
        self._fh.flush()
        self._flusher.wait(self._path)
        if self._tmp is None:  # an append: data and index are durable before the record points at them
            os.fsync(self._fh.fileno())
        else:  # a new file: its rename commits it, after the one fsync below of all of it
            self._fh.seek(0)
            self._fh.write(pack_header())
        at = SLOT_OFFSETS[slot]
        if self._tmp is None:  # an append: the record it overwrites, to restore if the write fails
            self._old_record = (at, os.pread(self._fh.fileno(), SLOT_SIZE, at))
        self._fh.seek(at)
        self._fh.write(pack_slot(commit))
        self._fh.flush()
        # Written: a reader opening the file from now on reads the new commit, so nothing
        # may be taken back (truncating the file would pull pages from under its map).
        self._record_written = self._tmp is None
        os.fsync(self._fh.fileno())

    def _unconfirmed(self, exc: OSError) -> WriterError:
        """The error to raise when the fsync after an append's commit record fails: the
        episodes are committed (readers see them), only their durability is in doubt."""
        return WriterError(
            f"{self._path}: the append was committed ({len(self._table)} episodes in all) and readers see it, but "
            f"making its commit record durable failed ({exc.strerror or exc}): a crash or power loss before the system "
            "writes it back would leave the file at its previous commit; check the disk (dmesg), and run "
            "kino validate on the file after a restart"
        )

    def abort(self) -> None:
        """Discard everything added since opening; the file on disk is left as it was.

        In a forked child, only the child's copy of the open file is closed: the parent
        goes on writing.
        """
        if os.getpid() != self._owner:
            forget(self._fh)
            return
        with self._lock:
            if self._closed:
                return
            self._closed = True
            with contextlib.suppress(WriterError):
                self._flusher.wait(self._path)
            if self._tmp is None and self._base_end is not None:
                with contextlib.suppress(OSError):
                    self._fh.flush()  # may fail (a full disk): the truncate below runs anyway
                fd = self._fh.fileno()
                if self._old_record is not None:  # a record whose write failed: put back what it overwrote
                    at, old = self._old_record
                    with contextlib.suppress(OSError):
                        os.pwrite(fd, old, at)
                        os.fsync(fd)
                with contextlib.suppress(OSError):  # not through the buffer: it may hold unwritten bytes
                    os.ftruncate(fd, self._base_end)
                forget(self._fh)  # so closing the buffer cannot write them back
            self._finalizer()
            self._unhold()

    def __enter__(self) -> Writer:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def __len__(self) -> int:
        return len(self._table)

    def __repr__(self) -> str:
        if "_closed" not in self.__dict__:  # __init__ refused its arguments (a traceback shows it)
            return f"<kinodb.Writer {self.__dict__.get('_path')!r} (not opened)>"
        state = "closed" if self._closed else f"mode={self._mode!r}"
        return f"<kinodb.Writer {self._path!r} ({len(self)} episodes, {state})>"
