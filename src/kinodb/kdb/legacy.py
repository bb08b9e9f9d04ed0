"""Read ``.kdb`` format 0.1 files (the Rust kinodb's layout) through the `Database` API.

Format 0.1 is a 64-byte header, then per episode a metadata blob, an interleaved
state/action section and an image section, then 64-byte index entries at the end of
the file. It has no checksums and no per-frame image offsets, so the index and every
metadata blob are parsed at open and an episode's image section is walked on first use.

Unlike the Rust reader this one never drops a frame or a camera: a frame that is
missing, has another size, or does not decode raises `CorruptFileError` naming the
episode, camera and frame. Every offset and length is checked against the file size:
the metadata blobs at open, an episode's state/action and image sections when that
episode's arrays or frames are read, so one damaged episode leaves the others (and every
episode's metadata and queries) readable. The header's episode and frame counts are
informational, as for the Rust reader: a count that disagrees with the index is a warning.
"""

from __future__ import annotations

import datetime as _dt
import io
import mmap
import os
import struct
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, SupportsIndex

import numpy as np

from kinodb.errors import CorruptFileError, FormatError, NameNotFoundError
from kinodb.kdb._codecs import DAMAGED_ADVICE, describe, sniff
from kinodb.kdb._layout import CLOSED, Commit, read_version
from kinodb.kdb._table import IndexBlock, StringColumn
from kinodb.kdb.reader import Camera, Database

HEADER = struct.Struct("<4sHHQQQQQ16s")  # magic, major, minor, episodes, frames, index off/len, created
ENTRY_SIZE = 64
ENTRY_DTYPE = np.dtype([
    ("episode_id", "<u8"), ("num_frames", "<u4"), ("action_dim", "<u2"), ("state_dim", "<u2"),
    ("actions_offset", "<u8"), ("actions_length", "<u8"), ("images_offset", "<u8"),
    ("images_length", "<u8"), ("meta_offset", "<u8"), ("meta_length", "<u8"),
])  # fmt: skip
_U16 = struct.Struct("<H")
_META_TAIL = struct.Struct("<fBB")  # fps, success, reward_present
_F32 = struct.Struct("<f")
_CAM_HEAD = struct.Struct("<IIBBI")  # width, height, channels, format, data_len
_FORMAT_RAW = 0
_SUCCESS = {1: 0, 2: 1}  # legacy code -> v1 column value; anything else is unknown (-1)
_MAX_PIXELS = 1 << 28  # larger frames are treated as a damaged header, not allocated
_CACHE_EPISODES = 8


@dataclass(frozen=True, slots=True)
class LegacyCamera(Camera):
    """Where one camera's frames of one 0.1 episode live.

    Frames are interleaved with other cameras, so ``frame_offsets`` holds cumulative
    frame sizes (its last entry is the camera's total bytes) and ``starts`` the absolute
    byte offset of each frame. ``formats`` is the stored code per frame (0 raw, >=1
    compressed); ``codec`` is ``"mixed"`` when the frames do not share one codec.
    """

    starts: np.ndarray  # (T,) absolute byte offsets
    lengths: np.ndarray  # (T,) stored bytes per frame
    formats: np.ndarray  # (T,) stored format code per frame


class LegacyDatabase(Database):
    """A read-only ``.kdb`` format 0.x file, read through the same API as v1.

    ``kinodb.open`` returns one for files whose header says major version 0. Arrays are
    strided read-only views over the memory map. ``rewards`` are read as stored: the
    0.1 writer stored a missing reward as 0.0.

    Example:
        >>> db = kinodb.open("old.kdb")
        >>> db.version()
        '0.1'

    Raises:
        FormatError: the file is not a format 0.x ``.kdb`` file.
        CorruptFileError: an offset, length or metadata blob contradicts the file.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self._path = os.fspath(path)
        self._mm: mmap.mmap | None = None
        with open(self._path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            head = fh.read(HEADER.size)
            fields = self._parse_header(head, size)
            self._mm = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        self._size = size
        self._slot = 0
        # Views are made over this array, not the map: it holds a buffer export, so
        # close() cannot unmap memory that returned arrays still point into.
        self._buf: np.ndarray | None = np.frombuffer(self._mm, np.uint8)
        self._cam_cache: OrderedDict[int, dict[str, Camera]] = OrderedDict()
        major, minor, num_episodes, num_frames, index_offset, index_length, created = fields
        entries = self._parse_index(index_offset, index_length)
        self._entries = entries
        n = len(entries)
        total = int(entries["num_frames"].sum(dtype=np.uint64))
        if num_episodes != n or num_frames != total:
            # Informational in 0.1 (its reader counts index entries): the index is what holds.
            warnings.warn(
                f"{self._path}: the header at byte offset 8 says {_count(num_episodes, 'episode')} and "
                f"{_count(num_frames, 'frame')}, the index has {_count(n, 'episode')} and "
                f"{_count(total, 'frame')}; reading the index's (kino upgrade writes a file whose counts agree)",
                stacklevel=3,
            )
        self._commit = Commit(0, index_offset, index_length, n, total, 0)
        self._check_metas(entries)
        strings, cols = self._parse_metas(entries)
        self._load(self._build_block(entries, strings, cols, f"{major}.{minor}", created))

    # -- open -----------------------------------------------------------------------------

    def _parse_header(self, head: bytes, size: int) -> tuple[int, int, int, int, int, int, int]:
        major, minor = read_version(head, self._path)
        if major != 0:
            raise FormatError(
                f"{self._path}: format {major}.{minor} is not a 0.x file; open it with kinodb.open"
            )
        if len(head) < HEADER.size:
            raise CorruptFileError(f"{self._path}: truncated header: {len(head)} of {HEADER.size} bytes")
        _, _, _, neps, nframes, ioff, ilen, created, _ = HEADER.unpack(head)
        if ilen % ENTRY_SIZE:
            raise CorruptFileError(
                f"{self._path}: index length {ilen} (header byte offset 32) is not a multiple of {ENTRY_SIZE}"
            )
        if ioff < HEADER.size or ioff + ilen > size:
            raise CorruptFileError(
                f"{self._path}: index at byte offset {ioff} ({ilen} bytes) lies outside the file "
                f"({size} bytes); the file is truncated or damaged"
            )
        return major, minor, neps, nframes, ioff, ilen, created

    def _parse_index(self, offset: int, length: int) -> np.ndarray:
        raw = np.frombuffer(self._mmap(), ENTRY_DTYPE, length // ENTRY_SIZE, offset)
        return np.array(raw)  # a copy: a view would keep the map exported after close()

    def _check_metas(self, entries: np.ndarray) -> None:
        """Check that every metadata blob lies in the file (they are all parsed at open)."""
        for i, (off, n) in enumerate(
            zip(entries["meta_offset"].tolist(), entries["meta_length"].tolist(), strict=True)
        ):
            self._check_extent(i, "metadata", off, n)

    def _check_extent(self, i: int, what: str, off: int, n: int) -> None:
        if (off < HEADER.size and n) or off + n > self._size:
            raise CorruptFileError(
                f"{self._path}: episode {i}: {what} section at byte offset {off} "
                f"({n} bytes) lies outside the file ({self._size} bytes)"
            )

    def _image_section(self, i: int) -> tuple[int, int, int]:
        """``(num_frames, offset, length)`` of episode ``i``'s image section, checked."""
        t, off, length = (int(self._entries[k][i]) for k in ("num_frames", "images_offset", "images_length"))
        self._check_extent(i, "image", off, length)
        return t, off, length

    def _state_action_section(self, i: int) -> tuple[int, int, int, int]:
        """``(num_frames, action_dim, state_dim, offset)`` of episode ``i``'s state/action
        section, checked when the episode is read (the 0.1 writer took state_dim from
        frame 0 alone, so one episode's section can disagree with its index entry)."""
        t, a, s, off, n = (
            int(self._entries[k][i])
            for k in ("num_frames", "action_dim", "state_dim", "actions_offset", "actions_length")
        )
        self._check_extent(i, "state/action", off, n)
        if n != t * (4 * (s + a) + 5):
            raise CorruptFileError(
                f"{self._path}: episode {i}: state/action section at byte offset {off} has {n} bytes; "
                f"{t} frames of state_dim {s} and action_dim {a} need {t * (4 * (s + a) + 5)} (the 0.1 "
                "writer checked only frame 0's state length); the other episodes read normally"
            )
        return t, a, s, off

    def _parse_metas(self, entries: np.ndarray) -> tuple[dict[str, list[str]], dict[str, list[Any]]]:
        mm = self._mmap()
        strings: dict[str, list[str]] = {"embodiment": [], "task": []}
        cols: dict[str, list[Any]] = {"fps": [], "success": [], "total_reward": [], "total_reward.valid": []}
        for i, (off, length) in enumerate(
            zip(entries["meta_offset"].tolist(), entries["meta_length"].tolist(), strict=True)
        ):
            where = f"{self._path}: episode {i}: metadata blob"
            end = off + length
            emb, pos = _read_string(mm, off, end, where)
            task, pos = _read_string(mm, pos, end, where)
            if pos + _META_TAIL.size > end:
                raise CorruptFileError(f"{where} ends early at byte offset {pos}")
            fps, success, has_reward = _META_TAIL.unpack_from(mm, pos)
            pos += _META_TAIL.size
            if has_reward not in (0, 1) or (has_reward and pos + _F32.size > end):
                raise CorruptFileError(f"{where}: bad total_reward field at byte offset {pos - 1}")
            strings["embodiment"].append(emb)
            strings["task"].append(task)
            cols["fps"].append(fps)
            cols["success"].append(_SUCCESS.get(success, -1))
            cols["total_reward"].append(_F32.unpack_from(mm, pos)[0] if has_reward else np.nan)
            cols["total_reward.valid"].append(has_reward)
        return strings, cols

    def _build_block(
        self, entries: np.ndarray, strings: dict[str, list[str]], cols: dict[str, list[Any]],
        version: str, created: int,
    ) -> IndexBlock:  # fmt: skip
        columns: dict[str, np.ndarray] = {
            "episode_id": entries["episode_id"].astype(np.uint64),
            "num_frames": entries["num_frames"].astype(np.uint64),
            "action_dim": entries["action_dim"].astype(np.uint32),
            "state_dim": entries["state_dim"].astype(np.uint32),
            "fps": np.array(cols["fps"], np.float64),
            "success": np.array(cols["success"], np.int8),
            "total_reward": np.array(cols["total_reward"], np.float64),
            "total_reward.valid": np.array(cols["total_reward.valid"], np.uint8),
        }
        for arr in columns.values():
            arr.flags.writeable = False
        stamp = (
            _dt.datetime.fromtimestamp(created, _dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
            if 0 < created < 253402300800  # year 10000
            else None
        )
        dataset = {
            "format": "kinodb", "format_version": version, "created": stamp, "writer": None,
            "source_format": None, "schema": self._legacy_schema(entries), "metadata": {},
        }  # fmt: skip
        block = IndexBlock(dataset, columns, [], {})
        for name, values in strings.items():
            block.strings[name] = StringColumn.from_values(values, name)
        return block

    def _legacy_schema(self, entries: np.ndarray) -> dict[str, Any]:
        """Dims from the index and cameras from frame 0 of each episode (None where they vary)."""
        schema: dict[str, Any] = {"cameras": {}, "arrays": {}}
        for part, col in (("actions", "action_dim"), ("states", "state_dim")):
            dims = set(entries[col].tolist())
            schema[part] = {"dim": dims.pop() if len(dims) == 1 else None, "dtype": "float32"}
        schema["rewards"] = {"shape": [], "dtype": "float32"}
        schema["is_terminal"] = {"shape": [], "dtype": "bool"}
        cams: dict[str, dict[str, Any]] = schema["cameras"]
        for i in range(len(entries)):
            try:
                first = self._first_frame_cameras(i)
            except CorruptFileError:
                continue  # reading that episode's images raises; the schema only describes
            for name, info in first.items():
                entry = cams.setdefault(name, info)
                for key, value in info.items():
                    if entry[key] != value:
                        entry[key] = None
        return schema

    def _first_frame_cameras(self, i: int) -> dict[str, dict[str, Any]]:
        t, off, length = self._image_section(i)
        if t == 0 or length == 0:
            return {}
        mm = self._mmap()
        end = off + length
        where = f"{self._path}: episode {i}, frame 0"
        ncam, pos = _read_u16(mm, off, end, where)
        out: dict[str, dict[str, Any]] = {}
        for _ in range(ncam):
            name, pos = _read_string(mm, pos, end, where)
            w, h, c, fmt, dlen, pos = _read_camera_head(mm, pos, end, f"{where}, camera {name!r}")
            codec = "raw" if fmt == _FORMAT_RAW else sniff(bytes(mm[pos : pos + 8]))
            out[name] = {"codec": codec, "height": h, "width": w, "channels": c}
            pos += dlen
        return out

    # -- hooks used by Database -----------------------------------------------------------

    def _mmap(self) -> mmap.mmap:
        if self._mm is None:
            raise ValueError(f"{self._path}: {CLOSED}")
        return self._mm

    def _bytes(self) -> np.ndarray:
        if self._buf is None:
            raise ValueError(f"{self._path}: {CLOSED}")
        return self._buf

    def _episode_arrays(self, i: int) -> dict[str, np.ndarray]:
        t, a, s, off = self._state_action_section(i)
        if t == 0:
            empty = {"actions": np.empty((0, a), "<f4"), "states": np.empty((0, s), "<f4"),
                     "rewards": np.empty(0, "<f4"), "is_terminal": np.empty(0, bool)}  # fmt: skip
            for arr in empty.values():
                arr.flags.writeable = False
            return empty
        mm = self._bytes()
        row = 4 * (s + a) + 5
        f4 = np.dtype("<f4")
        states = np.ndarray((t, s), f4, buffer=mm, offset=off, strides=(row, 4))  # type: ignore[call-overload]
        actions = np.ndarray((t, a), f4, buffer=mm, offset=off + 4 * s, strides=(row, 4))  # type: ignore[call-overload]
        rewards = np.ndarray((t,), f4, buffer=mm, offset=off + 4 * (s + a), strides=(row,))  # type: ignore[call-overload]
        flags = np.ndarray((t,), np.uint8, buffer=mm, offset=off + 4 * (s + a) + 4, strides=(row,))  # type: ignore[call-overload]
        if int(flags.max()) <= 1:
            terminal = flags.view(np.bool_)
        else:  # the 0.1 reader treats any nonzero byte as true; a bool view needs 0/1
            terminal = flags != 0
            terminal.flags.writeable = False
        return {"actions": actions, "states": states, "rewards": rewards, "is_terminal": terminal}

    def read_array(self, i: SupportsIndex, name: str) -> np.ndarray:
        """One low-dimensional array of episode ``i`` (e.g. ``"actions"``), zero-copy.

        Raises:
            EpisodeNotFoundError: ``i`` is out of range.
            NameNotFoundError: the episode has no array called ``name`` (a KeyError).
        """
        arrays = self._episode_arrays(self._check(i))
        if name not in arrays:
            raise NameNotFoundError(
                f"{self._path}: episode {i} has no array {name!r}; it has {sorted(arrays)}"
            )
        return arrays[name]

    def _episode_cameras(self, i: int) -> dict[str, Camera]:
        cams = self._cam_cache.get(i)
        if cams is None:
            cams = self._walk_images(i)
            self._cam_cache[i] = cams
            if len(self._cam_cache) > _CACHE_EPISODES:
                self._cam_cache.popitem(last=False)
        else:
            self._cam_cache.move_to_end(i)
        return cams

    def _walk_images(self, i: int) -> dict[str, Camera]:
        """Parse every frame header of episode ``i``'s image section."""
        t_count, off, length = self._image_section(i)
        if length == 0:
            return {}
        mm, end, pos = self._mmap(), off + length, off
        walk = _CameraWalk(t_count)
        for t in range(t_count):
            ncam, pos = _read_u16(mm, pos, end, f"{self._path}: episode {i}, frame {t}")
            if t and ncam != len(walk.names):
                raise CorruptFileError(
                    f"{self._path}: episode {i}, frame {t}: {ncam} cameras at byte offset {pos - 2}, "
                    f"frame 0 has {len(walk.names)} ({', '.join(walk.names)})"
                )
            for _ in range(ncam):
                name, pos = _read_string(mm, pos, end, f"{self._path}: episode {i}, frame {t}")
                where = f"{self._path}: episode {i}, camera {name!r}, frame {t}"
                w, h, c, fmt, dlen, pos = _read_camera_head(mm, pos, end, where)
                codec = "raw" if fmt == _FORMAT_RAW else sniff(bytes(mm[pos : pos + 8])) or "unknown"
                walk.add(t, name, (h, w, c), fmt, codec, pos, dlen, where)
                pos += dlen
        if pos != end:
            raise CorruptFileError(
                f"{self._path}: episode {i}: image section ends at byte offset {pos}, the index says {end}"
            )
        return walk.cameras(off)

    def _frame_bytes(self, cam: Camera, t: int) -> memoryview:
        lc = _legacy(cam)
        a = int(lc.starts[t])
        return memoryview(self._mmap())[a : a + int(lc.lengths[t])]

    def _decode(self, i: int, name: str, cam: Camera, start: int, stop: int) -> np.ndarray:
        lc = _legacy(cam)
        _, h, w, c = lc.shape
        if lc.codec == "raw" or start == stop:
            return self._raw_frames(lc, start, stop)
        out: np.ndarray | None = None
        for t in range(start, stop):
            if int(lc.formats[t]) == _FORMAT_RAW:
                frame = self._raw_frames(lc, t, t + 1)[0]
            else:
                where = f"{self._path}: episode {i}, camera {name!r}, frame {t}"
                try:
                    frame = _decode_image(self._frame_bytes(lc, t), (h, w, c), where)
                except CorruptFileError:
                    # The 0.1 writer flagged raw pixels that happen to begin with JPEG or PNG
                    # magic as compressed: a frame of exactly H*W*C bytes is such a frame.
                    if int(lc.lengths[t]) != h * w * c:
                        raise
                    frame = self._raw_frames(lc, t, t + 1)[0]
            if out is None:  # allocated once a frame has proven the header's size is real
                out = np.empty((stop - start, h, w, c), np.uint8)
            out[t - start] = frame
        return out if out is not None else np.empty((0, h, w, c), np.uint8)

    def _raw_frames(self, cam: LegacyCamera, start: int, stop: int) -> np.ndarray:
        """Raw frames ``start:stop`` as a strided view when evenly spaced, else a copy."""
        _, h, w, c = cam.shape
        starts = cam.starts[start:stop]
        if len(starts) == 0:
            return np.empty((0, h, w, c), np.uint8)
        gaps = np.diff(starts)
        step = int(gaps[0]) if len(gaps) else h * w * c
        mm = self._bytes()
        if len(gaps) == 0 or bool((gaps == step).all()):
            return np.ndarray(  # type: ignore[call-overload, no-any-return]
                (stop - start, h, w, c),
                np.uint8,
                buffer=mm,
                offset=int(starts[0]),
                strides=(step, w * c, c, 1),
            )
        out = np.empty((stop - start, h, w, c), np.uint8)
        for j, a in enumerate(starts.tolist()):
            out[j] = mm[a : a + h * w * c].reshape(h, w, c)
        return out

    def version(self) -> str:
        """The file's format version, ``"0.1"`` for files of the Rust kinodb."""
        return str(self._block.dataset["format_version"])

    def close(self) -> None:
        """Release the map. Arrays already returned stay valid (they hold the map)."""
        self._cam_cache.clear()
        self._buf = None
        super().close()


class _CameraWalk:
    """Collects per-frame camera headers and checks they agree with frame 0."""

    def __init__(self, num_frames: int) -> None:
        self.t_count = num_frames
        self.names: list[str] = []
        self._shape: dict[str, tuple[int, int, int]] = {}
        self._codecs: dict[str, set[str]] = {}
        self._cols: dict[str, tuple[list[int], list[int], list[int]]] = {}

    def add(
        self, t: int, name: str, shape: tuple[int, int, int], fmt: int, codec: str, pos: int, dlen: int,
        where: str,
    ) -> None:  # fmt: skip
        """Record camera ``name`` of frame ``t``, whose data is ``dlen`` bytes at ``pos``."""
        if t == 0 and name not in self._shape:
            self.names.append(name)
            self._shape[name] = shape
            self._codecs[name] = set()
            self._cols[name] = ([], [], [])
        starts, lengths, formats = self._cols.get(name, ([], [], []))
        if name not in self._shape or len(starts) != t:
            raise CorruptFileError(
                f"{where}: camera at byte offset {pos} is not in frame 0 or repeats in this frame"
            )
        if shape != self._shape[name]:
            raise CorruptFileError(
                f"{where}: frame is {shape} (H, W, C) at byte offset {pos}, frame 0 is {self._shape[name]}"
            )
        starts.append(pos)
        lengths.append(dlen)
        formats.append(fmt)
        self._codecs[name].add(codec)

    def cameras(self, section_offset: int) -> dict[str, Camera]:
        """The walked cameras, in frame 0's order."""
        out: dict[str, Camera] = {}
        for name in self.names:
            starts, lengths, formats = self._cols[name]
            codecs = self._codecs[name]
            codec = codecs.pop() if len(codecs) == 1 and "unknown" not in codecs else "mixed"
            sizes = np.zeros(self.t_count + 1, np.uint64)
            np.cumsum(lengths, out=sizes[1:])
            out[name] = LegacyCamera(
                codec, (self.t_count, *self._shape[name]), section_offset, sizes,
                np.array(starts, np.int64), np.array(lengths, np.int64), np.array(formats, np.uint8),
            )  # fmt: skip
        return out


def _legacy(cam: Camera) -> LegacyCamera:
    if not isinstance(cam, LegacyCamera):
        raise TypeError(f"expected a LegacyCamera from a 0.x file, got {type(cam).__name__}")
    return cam


def _read_u16(mm: mmap.mmap, pos: int, end: int, where: str) -> tuple[int, int]:
    if pos + 2 > end:
        raise CorruptFileError(f"{where}: section ends early at byte offset {pos}")
    return _U16.unpack_from(mm, pos)[0], pos + 2


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _read_string(mm: mmap.mmap, pos: int, end: int, where: str) -> tuple[str, int]:
    """A u16-length-prefixed UTF-8 string at ``pos``; returns it and the next offset."""
    n, pos = _read_u16(mm, pos, end, where)
    if pos + n > end:
        raise CorruptFileError(f"{where}: a {n}-byte string at byte offset {pos} runs past its section")
    try:
        return mm[pos : pos + n].decode(), pos + n
    except UnicodeDecodeError as exc:
        raise CorruptFileError(f"{where}: invalid UTF-8 at byte offset {pos}") from exc


def _read_camera_head(mm: mmap.mmap, pos: int, end: int, where: str) -> tuple[int, int, int, int, int, int]:
    """One camera's frame header; returns ``(w, h, c, format, data_len, data offset)``."""
    if pos + _CAM_HEAD.size > end:
        raise CorruptFileError(f"{where}: image header at byte offset {pos} runs past its section")
    w, h, c, fmt, dlen = _CAM_HEAD.unpack_from(mm, pos)
    pos += _CAM_HEAD.size
    if not (1 <= c <= 4 and w > 0 and h > 0 and w * h <= _MAX_PIXELS):
        raise CorruptFileError(
            f"{where}: image header at byte offset {pos - _CAM_HEAD.size} says {w}x{h}x{c}"
        )
    if pos + dlen > end:
        raise CorruptFileError(
            f"{where}: {dlen} bytes of image data at byte offset {pos} run past its section"
        )
    if fmt == _FORMAT_RAW and dlen != w * h * c:
        raise CorruptFileError(
            f"{where}: raw image at byte offset {pos} has {dlen} bytes, {w}x{h}x{c} needs {w * h * c}"
        )
    return w, h, c, fmt, dlen, pos


def _decode_image(data: memoryview, shape: tuple[int, int, int], where: str) -> np.ndarray:
    """Decode one JPEG/PNG frame to ``shape`` (H, W, C), converting to the stored channels."""
    from PIL import Image  # deferred: importing kinodb stays light

    h, w, c = shape
    mode = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}[c]
    try:
        with Image.open(io.BytesIO(data), formats=("JPEG", "PNG")) as im:
            size = im.size
            arr = np.asarray(im if im.mode == mode else im.convert(mode)) if size == (w, h) else None
    except Exception as exc:  # Pillow's decoders raise many exception types on damaged input
        raise CorruptFileError(f"{where}: image does not decode ({describe(exc)}); {DAMAGED_ADVICE}") from exc
    if arr is None:
        raise CorruptFileError(f"{where}: image is {size[0]}x{size[1]}, its header says {w}x{h}")
    return arr.reshape(h, w, c)


__all__ = ["LegacyCamera", "LegacyDatabase"]
