"""Read ``.kdb`` files: memory-mapped, zero-copy NumPy views over each section."""

from __future__ import annotations

import contextlib
import copy
import mmap
import os
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from kinodb.errors import (
    CorruptFileError,
    EpisodeNotFoundError,
    FormatError,
    FrameRangeError,
    UnsupportedVersionError,
)
from kinodb.kdb import _codecs
from kinodb.kdb._layout import (
    DATA_START,
    HEADER_SIZE,
    KIND_CAMERA,
    LegacyFormat,
    latest_commit,
    parse_header,
    read_version,
)
from kinodb.kdb._sections import Locator, Section, episode_sections, int_view
from kinodb.kdb._table import ABSENT, IndexBlock, decode_index

META_FIELDS = (
    "episode_id", "embodiment", "task", "num_frames", "fps", "action_dim", "state_dim",
    "success", "total_reward",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Camera:
    """Where one camera's frames of one episode live."""

    codec: str
    shape: tuple[int, int, int, int]  # (T, H, W, C)
    data_offset: int
    frame_offsets: np.ndarray  # (T + 1,) byte offsets relative to data_offset


class Database:
    """A read-only, memory-mapped ``.kdb`` file.

    Sized, indexable (``db[i]`` is `read_episode`), iterable over episodes, a context
    manager, and picklable by path: a DataLoader worker re-opens the map itself.

    Example:
        >>> db = kinodb.open("demo.kdb")
        >>> ep = db.read_episode(0)
        >>> ep["actions"].shape
        (4, 7)
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self._path = os.fspath(path)
        self._mm: mmap.mmap | None = None
        # Every view is made over this array, which holds a buffer export of the map:
        # the map cannot be closed under a live view (np.ndarray(buffer=mmap) alone
        # does not pin it, and touching such a view after close would crash).
        self._buf: np.ndarray | None = None
        with open(self._path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            head = fh.read(DATA_START)
            parse_header(head[:HEADER_SIZE], self._path)
            self._version = "{}.{}".format(*read_version(head, self._path))
            self._slot, self._commit = latest_commit(head, self._path, size)
            self._mm = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        self._buf = np.frombuffer(self._mm, np.uint8)
        self._size = size
        self._load(decode_index(self._buf, self._commit.index_offset, self._commit.index_length, self._path))

    def _load(self, block: IndexBlock) -> None:
        self._block = block
        self._cols = block.columns
        self._n = len(self._cols["episode_id"])
        if self._n != self._commit.num_episodes:
            raise CorruptFileError(
                f"{self._path}: commit record says {self._commit.num_episodes} episodes, index has {self._n}"
            )
        self._names = block.section_names
        self._locators: dict[str, Locator] = {}
        self._ints: tuple[Any, ...] | None = None
        self._array_names: list[str] = []  # the arrays of the last episode decoded in full
        # Per array: the offset of its usual row in every episode (-1: take the checked path).
        self._offsets: dict[str, tuple[list[int], Locator]] = {}
        self._strided_views: dict[str, tuple[np.ndarray | None, Locator]] = {}
        self._reads: dict[str, int] = {}
        self._frames: list[int] | None = None
        self._cameras_per_episode = 0

    # -- file-level -----------------------------------------------------------------------

    def path(self) -> str:
        """The file path this database was opened from."""
        return self._path

    def version(self) -> str:
        """The file's format version from its header, e.g. ``"1.0"``."""
        return self._version

    def num_episodes(self) -> int:
        """Number of episodes."""
        return self._n

    def num_frames(self) -> int:
        """Total number of frames over all episodes."""
        return int(self._commit.num_frames)

    def schema(self) -> dict[str, Any]:
        """The dataset schema: dims, dtypes, named components, cameras, extra arrays."""
        return copy.deepcopy(self._block.dataset.get("schema", {}))

    def metadata(self) -> dict[str, Any]:
        """Free-form dataset metadata given to the writer."""
        return dict(self._block.dataset.get("metadata", {}))

    def dataset_info(self) -> dict[str, Any]:
        """The whole dataset-level JSON block (format, writer, creation time, source, ...)."""
        return copy.deepcopy(self._block.dataset)

    def stats(self, *, allow_stale: bool = False) -> dict[str, Any]:
        """The normalisation statistics ``kino stats`` stored, as float64 NumPy arrays.

        Returns the stored block (``version``, ``computed``, ``num_frames``, ``arrays``,
        ``skipped``) with each array's ``mean``, ``std``, ``min``, ``max``, ``q01`` and
        ``q99`` turned into flat float64 arrays (NaN where a feature had no finite value).

        Example:
            >>> mean = db.stats()["arrays"]["actions"]["mean"]

        Raises:
            UnsupportedVersionError: the file is a legacy format 0.x file.
            FormatError: no statistics are stored, or episodes were appended after they
                were computed (pass ``allow_stale=True`` to get them anyway, with a warning).
        """
        path = self._path
        if self.version().startswith("0."):
            raise UnsupportedVersionError(
                f"{path} is a format {self.version()} file, which holds no statistics; convert it "
                f"first: kino upgrade {path} NEW.kdb, then: kino stats NEW.kdb"
            )
        stored = self._block.dataset.get("stats")
        if not isinstance(stored, dict) or not isinstance(stored.get("arrays"), dict):
            raise FormatError(f"no statistics stored in {path}; run: kino stats {path}")
        out = copy.deepcopy(stored)
        counted = (out.get("num_frames"), out.get("num_episodes", self._n))
        stale = bool(out.get("stale")) or counted != (self.num_frames(), self._n)
        if stale:
            msg = (
                f"the statistics stored in {path} are stale: episodes were added after they were "
                f"computed ({out.get('num_frames')} frames then, {self.num_frames()} now); run: kino stats {path}"
            )
            if not allow_stale:
                raise FormatError(msg)
            warnings.warn(msg, stacklevel=2)
            out["stale"] = True
        for entry in out["arrays"].values():
            for key in ("mean", "std", "min", "max", "q01", "q99"):
                if key in entry:
                    entry[key] = np.array([np.nan if v is None else v for v in entry[key]], np.float64)
        return out

    def summary(self) -> str:
        """A short human-readable description."""
        info = self._block.dataset
        emb = sorted(set(self._block.strings["embodiment"].dictionary)) if self._n else []
        succ = self._cols["success"]
        known = int((succ >= 0).sum())
        cams = sorted(info.get("schema", {}).get("cameras", {}))
        lines = [
            f"kinodb {self.version()} file {self._path}",
            f"  episodes: {self._n}, frames: {self.num_frames()}, size: {_human(self._size)}",
            f"  embodiments: {', '.join(emb) or '-'}",
            f"  success: {int((succ == 1).sum())}/{known} known" + (f" ({100 * (succ == 1).sum() / known:.1f}%)" if known else ""),
            f"  cameras: {', '.join(cams) or '-'}",
        ]  # fmt: skip
        if info.get("source_format"):
            lines.append(f"  source format: {info['source_format']}")
        return "\n".join(lines)

    # -- metadata -------------------------------------------------------------------------

    def _check(self, i: int) -> int:
        try:
            idx = int(i)  # accepts NumPy integers; rejects floats via the comparison below
        except (TypeError, ValueError):
            raise EpisodeNotFoundError(f"episode index must be an int, got {i!r}") from None
        if idx != i or isinstance(i, bool):
            raise EpisodeNotFoundError(f"episode index must be an int, got {i!r}")
        if not 0 <= idx < self._n:
            rng = f"0..{self._n - 1}" if self._n else "none"
            raise EpisodeNotFoundError(f"episode {i} out of range: file has {self._n} episodes ({rng})")
        return idx

    def read_meta(self, i: int) -> dict[str, Any]:
        """Metadata of episode ``i``: the built-in fields plus its extra fields.

        An extra field whose name clashes with a built-in appears as ``"extra.NAME"``.

        Raises:
            EpisodeNotFoundError: ``i`` is out of range.
        """
        i = self._check(i)
        c = self._cols
        succ = int(c["success"][i])
        if not -1 <= succ <= 1:
            raise CorruptFileError(f"{self._path}: episode {i}: success code {succ} is not -1, 0 or 1")
        meta: dict[str, Any] = {
            "episode_id": int(c["episode_id"][i]),
            "embodiment": self._block.strings["embodiment"][i],
            "task": self._block.strings["task"][i],
            "num_frames": int(c["num_frames"][i]),
            "fps": float(c["fps"][i]),
            "action_dim": int(c["action_dim"][i]),
            "state_dim": int(c["state_dim"][i]),
            "success": None if succ < 0 else bool(succ),
            "total_reward": float(c["total_reward"][i]) if c["total_reward.valid"][i] else None,
        }
        for name, col in self._block.extras.items():
            value = col.get(i)
            if value is not ABSENT:
                meta[f"extra.{name}" if name in META_FIELDS else name] = value
        return meta

    def episodes(self) -> dict[str, np.ndarray]:
        """The metadata table: one NumPy array per column, one entry per episode.

        ``success`` is an object array of True/False/None; ``total_reward`` is float64
        with NaN where unknown; extra fields are named as in `read_meta`.
        """
        c = self._cols
        codes = c["success"].astype(np.int64) + 1
        if len(codes) and not 0 <= codes.min() <= codes.max() <= 2:
            raise CorruptFileError(f"{self._path}: success column holds codes other than -1, 0 and 1")
        succ = np.array([None, False, True], dtype=object)[codes]
        table: dict[str, np.ndarray] = {
            "episode_id": c["episode_id"],
            "embodiment": self._block.strings["embodiment"].to_numpy(),
            "task": self._block.strings["task"].to_numpy(),
            "num_frames": c["num_frames"],
            "fps": c["fps"],
            "action_dim": c["action_dim"],
            "state_dim": c["state_dim"],
            "success": succ,
            "total_reward": np.where(c["total_reward.valid"].astype(bool), c["total_reward"], np.nan),
        }
        for name, col in self._block.extras.items():
            table[f"extra.{name}" if name in META_FIELDS else name] = col.to_numpy()
        return table

    def query(self, kql: str, *, limit: int | None = None) -> np.ndarray:
        """Positions of the episodes matching a KQL query, ascending (int64).

        Example:
            >>> db.query("embodiment = 'franka' AND success = true AND num_frames > 50")

        Raises:
            QuerySyntaxError: the query does not parse or compares incompatible types.
        """
        from kinodb.kql import query  # deferred: kql builds on kdb, and this is its entry point

        return query(self, kql, limit=limit)

    # -- sections -------------------------------------------------------------------------

    def _map(self) -> np.ndarray:
        # np.ndarray(buffer=None) would silently allocate garbage instead of failing.
        if self._buf is None:
            raise ValueError(f"{self._path}: the database is closed")
        return self._buf

    def _episode_sections(self, i: int) -> list[Section]:
        return episode_sections(self._cols, self._names, i, self._size, self._path)

    def _episode_arrays(self, i: int) -> dict[str, np.ndarray]:
        names = self._array_names
        if names:
            out = {}
            for name in names:
                arr = self._fast_array(i, name)
                if arr is None:
                    break
                out[name] = arr
            else:
                if len(out) + self._cameras_per_episode == self._ints[1][i]:  # type: ignore[index]
                    return out
        return self._slow_arrays(i)

    def _slow_arrays(self, i: int) -> dict[str, np.ndarray]:
        """Decode the rows of episode ``i``; remember where each array sat for the next reads."""
        buf, out = self._map(), {}
        sections = self._episode_sections(i)
        for k, sec in enumerate(sections):
            if sec.kind != KIND_CAMERA:
                out[sec.name] = np.ndarray(sec.shape, sec.dtype, buffer=buf, offset=sec.offset)  # type: ignore[arg-type]
                self._locators[sec.name] = Locator.from_section(self._names.index(sec.name), k, sec)
        self._array_names = list(out)
        self._cameras_per_episode = len(sections) - len(out)
        self._int_views()
        return out

    def _episode_cameras(self, i: int) -> dict[str, Camera]:
        out = {}
        for sec in self._episode_sections(i):
            if sec.kind == KIND_CAMERA:
                T = sec.shape[0]
                table = np.ndarray((T + 1,), "<u8", buffer=self._map(), offset=sec.offset)  # type: ignore[arg-type]
                data = sec.offset + sec.nbytes
                if (
                    table[0] != 0
                    or (np.diff(table.astype(np.int64)) < 0).any()
                    or data + int(table[-1]) > self._size
                ):
                    raise CorruptFileError(
                        f"{self._path}: episode {i}, camera {sec.name!r}: frame offset table at byte "
                        f"offset {sec.offset} is damaged"
                    )
                out[sec.name] = Camera(sec.codec, sec.shape, data, table)  # type: ignore[arg-type]
        return out

    def _int_views(self) -> tuple[Any, ...]:
        if self._ints is None:
            c = self._cols
            self._ints = tuple(int_view(c[k]) for k in (
                "sec_start", "sec_count", "num_frames", "sec.name", "sec.kind", "sec.dtype", "sec.ndim", "sec.dims", "sec.offset",
            ))  # fmt: skip
        return self._ints

    def _locate(self, i: int, name: str) -> tuple[int, int, Locator] | None:
        """``(byte offset, frames, layout)`` of array ``name`` in episode ``i`` if it sits
        where the last episode decoded had it (checked), else None."""
        loc = self._locators.get(name)
        if loc is None:
            return None
        start, count, frames, names, kinds, dtypes, ndims, dims, offs = self._ints or self._int_views()
        row = start[i] + loc.k
        if not (
            loc.k < count[i] and row < len(names) and names[row] == loc.code and kinds[row] != KIND_CAMERA
            and dtypes[row] == loc.dtype_code and ndims[row] == loc.ndim
            and (dims[3 * row], dims[3 * row + 1], dims[3 * row + 2]) == loc.dims
        ):  # fmt: skip
            return None
        off, T = offs[row], frames[i]
        if off < DATA_START or off + T * loc.row_bytes > self._size:
            raise CorruptFileError(
                f"{self._path}: episode {i}: array {name!r} at byte offset {off} does not fit the file"
            )
        return off, T, loc

    def _fast_array(self, i: int, name: str) -> np.ndarray | None:
        """Array ``name`` of episode ``i`` if it sits where the last episode had it, else None."""
        found = self._locate(i, name)
        if found is None:
            return None
        off, T, loc = found
        return np.ndarray((T, *loc.trail), loc.dtype, buffer=self._map(), offset=off)  # type: ignore[arg-type, no-any-return]

    def _build_offsets(self, name: str) -> None:
        """Check array ``name``'s usual row in every episode at once; keep the offsets.

        Built after enough single reads that its O(episodes) NumPy cost is repaid; episodes
        whose row differs get -1 and keep taking the checked path.
        """
        c, loc, size = self._cols, self._locators[name], self._size
        rows = c["sec_start"].astype(np.int64) + loc.k
        ok = (c["sec_count"] > loc.k) & (rows >= 0) & (rows < len(c["sec.name"]))
        r = np.where(ok, rows, 0)
        ok &= (c["sec.name"][r] == loc.code) & (c["sec.kind"][r] != KIND_CAMERA)
        ok &= (c["sec.dtype"][r] == loc.dtype_code) & (c["sec.ndim"][r] == loc.ndim)
        ok &= (c["sec.dims"][r] == np.array(loc.dims)).all(axis=1)
        frames = c["num_frames"]
        ok &= frames <= size // max(loc.row_bytes, 1)  # no overflow below
        off = c["sec.offset"][r].astype(np.int64)
        ok &= (off >= DATA_START) & (off <= size - np.where(ok, frames, 0).astype(np.int64) * loc.row_bytes)
        if self._frames is None:
            self._frames = frames.tolist()
        self._offsets[name] = (np.where(ok, off, -1).tolist(), loc)
        # When every episode holds the array alike at a constant stride (the usual file),
        # one strided view over the map serves batch reads with a single vectorised copy.
        view = None
        size = int(frames[0]) * loc.row_bytes if len(frames) else 0
        if len(off) > 1 and ok.all() and (frames == frames[0]).all():
            step = int(off[1] - off[0])
            if step >= size and (np.diff(off) == step).all():
                # One opaque item per episode, so copies move whole rows (memcpy), not bytes.
                item = np.dtype((np.void, size))
                view = np.ndarray((self._n,), item, buffer=self._map(), offset=int(off[0]), strides=(step,))
        self._strided_views[name] = (view, loc)

    def read_array(self, i: int, name: str) -> np.ndarray:
        """One low-dimensional array of episode ``i`` (e.g. ``"actions"``), zero-copy.

        The cheapest read: no metadata, no dict, one view over the map, O(1) in the
        number of episodes.

        Raises:
            EpisodeNotFoundError: ``i`` is out of range.
            KeyError: the episode has no array called ``name``.
        """
        if type(i) is not int or not 0 <= i < self._n:
            i = self._check(i)
        checked = self._offsets.get(name)
        if checked is not None and checked[0][i] >= 0 and self._buf is not None:
            loc = checked[1]  # the layout the offsets were checked against
            frames: list[int] = self._frames  # type: ignore[assignment]  # set with the table
            view: np.ndarray = np.ndarray(
                (frames[i], *loc.trail), loc.dtype, buffer=self._buf, offset=checked[0][i]
            )  # type: ignore[arg-type]
            return view
        arr = self._fast_array(i, name)
        if arr is not None:
            reads = self._reads[name] = self._reads.get(name, 0) + 1
            if reads == max(256, self._n // 8) and checked is None:
                self._build_offsets(name)
            return arr
        # First read of this array, or an episode laid out differently: decode its rows.
        arrays = self._slow_arrays(i)
        if name not in arrays:
            raise KeyError(f"episode {i} has no array {name!r}; it has {sorted(arrays)}")
        return arrays[name]

    def gather(self, name: str, episodes: Any = None, *, out: np.ndarray | None = None) -> np.ndarray:
        """Array ``name`` of many episodes, concatenated along frames into one array.

        The batch read a data loader wants: one copy from the map into ``out`` (or a new
        array) of shape ``(sum of frames, *dims)``, episodes in the order given; split it
        with the episodes' ``num_frames``. The selected episodes must share the array's
        dtype and trailing dims.

        Example:
            >>> acts = db.gather("actions", db.query("success = true"))

        Raises:
            EpisodeNotFoundError: an index is out of range.
            KeyError: an episode has no array ``name``.
            ValueError: the episodes disagree on dtype or dims, or ``out`` has the wrong shape.
        """
        idx = np.arange(self._n) if episodes is None else np.asarray(episodes, dtype=np.int64).reshape(-1)
        if len(idx) and (idx.min() < 0 or idx.max() >= self._n):
            bad = int(idx[(idx < 0) | (idx >= self._n)][0])
            raise EpisodeNotFoundError(
                f"episode {bad} out of range: file has {self._n} episodes (0..{self._n - 1})"
            )
        if not len(idx):
            raise ValueError("gather needs at least one episode")
        first = self.read_array(int(idx[0]), name)
        # Checking every episode's offsets is O(episodes): worth it for large batches only.
        if name not in self._offsets and name in self._locators and len(idx) * 8 >= self._n:
            self._build_offsets(name)
        frames = self._cols["num_frames"][idx].astype(np.int64)
        shape = (int(frames.sum()), *first.shape[1:])
        if out is None:
            out = np.empty(shape, first.dtype)
        elif out.shape != shape or out.dtype != first.dtype:
            raise ValueError(f"out must be {first.dtype} {shape}, got {out.dtype} {out.shape}")
        strided = self._strided(name, first)
        if strided is not None:  # every episode alike, at a constant stride: one vectorised copy
            rows = out.reshape(-1).view(np.uint8).view(strided.dtype)
            if episodes is None:
                rows[...] = strided
            else:
                rows[...] = strided[idx]  # fancy indexing walks the strides; take() would copy all first
            return out
        outb, pos = out.reshape(-1).view(np.uint8), 0
        for i in idx.tolist():
            src = self.read_array(i, name)
            if src.dtype != first.dtype or src.shape[1:] != first.shape[1:]:
                raise ValueError(
                    f"episode {i}: {name} is {src.dtype} {src.shape}; episode {int(idx[0])} has "
                    f"{first.dtype} {first.shape[1:]} per frame; gather needs them alike"
                )
            outb[pos : pos + src.nbytes] = src.reshape(-1).view(np.uint8)
            pos += src.nbytes
        return out

    def _strided(self, name: str, first: np.ndarray) -> np.ndarray | None:
        """One opaque item per episode over array ``name`` if every episode holds it alike."""
        view, loc = self._strided_views.get(name, (None, None))
        if view is None or loc is None or loc.trail != first.shape[1:] or loc.dtype != first.dtype:
            return None
        return view

    def cameras(self, i: int) -> dict[str, dict[str, Any]]:
        """Cameras of episode ``i``: codec and (T, H, W, C) shape per camera."""
        return {
            k: {"codec": c.codec, "shape": c.shape} for k, c in self._episode_cameras(self._check(i)).items()
        }

    # -- episodes -------------------------------------------------------------------------

    def read_episode_actions_only(self, i: int) -> dict[str, Any]:
        """Episode ``i`` without images: meta plus zero-copy low-dimensional arrays."""
        i = self._check(i)
        out: dict[str, Any] = {"meta": self.read_meta(i)}
        out.update(self._episode_arrays(i))
        return out

    def read_episode(self, i: int) -> dict[str, Any]:
        """Episode ``i``: meta, arrays, and ``images`` {camera: uint8 (T, H, W, C)}.

        Raises:
            EpisodeNotFoundError: ``i`` is out of range.
            CorruptFileError: a frame fails to decode (names episode, camera and frame).
        """
        out = self.read_episode_actions_only(i)
        i = self._check(i)
        out["images"] = {
            name: self._decode(i, name, cam, 0, cam.shape[0])
            for name, cam in self._episode_cameras(i).items()
        }
        return out

    def read_frames(
        self, i: int, start: int, stop: int, *, cameras: Sequence[str] | None = None
    ) -> dict[str, Any]:
        """Frames ``start:stop`` of episode ``i``, decoding only those frames.

        Returns arrays sliced to the window (zero-copy) and ``images`` for the chosen
        cameras (all by default).

        Raises:
            EpisodeNotFoundError: ``i`` is out of range.
            FrameRangeError: the window is empty or outside the episode.
            KeyError: a requested camera does not exist.
        """
        i = self._check(i)
        T = int(self._cols["num_frames"][i])
        if not (0 <= start < stop <= T):
            raise FrameRangeError(f"frames {start}:{stop} outside episode {i}, which has frames 0:{T}")
        out: dict[str, Any] = {k: v[start:stop] for k, v in self._episode_arrays(i).items()}
        cams = self._episode_cameras(i)
        chosen = list(cams) if cameras is None else list(cameras)
        for name in chosen:
            if name not in cams:
                raise KeyError(f"episode {i} has no camera {name!r}; it has {sorted(cams)}")
        out["images"] = {name: self._decode(i, name, cams[name], start, stop) for name in chosen}
        return out

    def read_image_bytes(self, i: int, camera: str, frame: int) -> bytes:
        """The stored bytes of one frame (JPEG/PNG as encoded; raw pixels for ``raw``)."""
        i = self._check(i)
        cams = self._episode_cameras(i)
        if camera not in cams:
            raise KeyError(f"episode {i} has no camera {camera!r}; it has {sorted(cams)}")
        cam = cams[camera]
        if not 0 <= frame < cam.shape[0]:
            raise FrameRangeError(f"frame {frame} outside episode {i}, which has frames 0:{cam.shape[0]}")
        return bytes(self._frame_bytes(cam, frame))

    def _frame_bytes(self, cam: Camera, t: int) -> memoryview:
        a, b = int(cam.frame_offsets[t]), int(cam.frame_offsets[t + 1])
        return self._map()[cam.data_offset + a : cam.data_offset + b].data

    def _decode(self, i: int, name: str, cam: Camera, start: int, stop: int) -> np.ndarray:
        _, h, w, c = cam.shape
        if cam.codec == "raw":
            frame = h * w * c
            if int(cam.frame_offsets[-1]) != frame * cam.shape[0]:
                raise CorruptFileError(
                    f"{self._path}: episode {i}, camera {name!r}: raw frames have the wrong size"
                )
            return np.ndarray((stop - start, h, w, c), np.uint8, buffer=self._map(),  # type: ignore[arg-type, no-any-return]
                              offset=cam.data_offset + start * frame)  # fmt: skip
        blobs = [self._frame_bytes(cam, t) for t in range(start, stop)]
        return _codecs.decode(blobs, (h, w, c), f"{self._path}: episode {i}, camera {name!r}", first=start)

    # -- protocols ------------------------------------------------------------------------

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, i: int) -> dict[str, Any]:
        if isinstance(i, (int, np.integer)) and not isinstance(i, bool) and -self._n <= i < 0:
            i += self._n
        return self.read_episode(i)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for i in range(self._n):
            yield self.read_episode(i)

    def __enter__(self) -> Database:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Release the map. Arrays already returned stay valid (they hold the map)."""
        mm, self._mm, self._buf = self._mm, None, None
        release = getattr(self._cols, "release", None)
        if release is not None:
            release()
        self._locators, self._ints, self._array_names = {}, None, []
        self._offsets, self._reads, self._strided_views = {}, {}, {}
        if mm is not None:
            with contextlib.suppress(BufferError):  # views still reference it; it closes with the last one
                mm.close()

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (open_database, (self._path,))

    def __repr__(self) -> str:
        return f"<kinodb.Database {self._path!r} ({self._n} episodes, format {self.version()})>"


def open_database(path: str | os.PathLike[str]) -> Database:
    """Open a ``.kdb`` file of any supported format version.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        FormatError: the file is not a readable ``.kdb`` file.
    """
    try:
        return Database(path)
    except LegacyFormat:
        from kinodb.kdb.legacy import LegacyDatabase  # deferred: only 0.x files need it

        return LegacyDatabase(path)


def _human(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


__all__ = ["Camera", "Database", "open_database"]
