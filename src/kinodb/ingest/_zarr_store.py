"""Zarr groups and arrays on disk, read a block of rows at a time, for the zarr source.

A store is a folder (zarr's ``DirectoryStore``/``LocalStore``) or a zip archive of one
(``ZipStore``, ``*.zarr.zip``). Format 2 arrays (``.zarray``; what diffusion_policy's
``ReplayBuffer`` and UMI write, with zarr 2) are read here, chunk by chunk, with
numcodecs for the codecs. Format 3 arrays (``zarr.json``) are read through the zarr
library (3.0 or later), which their codec pipeline and sharding need.

Reading format 2 chunks here, not through zarr, is for exactness: numcodecs' Blosc
decompresses a truncated chunk without an error (LZ4 inside Blosc reads past the end of
the buffer: garbage values, or a crash of the process), so each Blosc chunk's header is
checked against its file's size first, and every decoded chunk against the size its
array's metadata gives. A chunk that is absent is the array's fill value, as in zarr
(zarr 3 does not write chunks that hold only the fill value); `Array.missing_chunks`
counts them for the report.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import struct
import threading
import zipfile
from typing import Any

import numpy as np

from kinodb.errors import ConversionError

V2_ARRAY, V2_GROUP, V2_ATTRS, V3_META = ".zarray", ".zgroup", ".zattrs", "zarr.json"
_BLOSC_HEADER = struct.Struct("<BBBBIII")  # version, versionlz, flags, typesize, nbytes, blocksize, cbytes
_RESTORE = "restore the store from its original, or convert it again"


class Store:
    """A zarr store: a folder, or a zip archive of one (keys are ``/``-separated paths)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._zip: zipfile.ZipFile | None = None
        self._names: set[str] = set()
        self._lock = threading.Lock()
        if os.path.isfile(path):
            try:
                self._zip = zipfile.ZipFile(path)
            except (zipfile.BadZipFile, OSError) as exc:
                raise ConversionError(f"{path}: not a readable zip archive ({exc}); {_RESTORE}") from None
            self._names = {n for n in self._zip.namelist() if not n.endswith("/")}  # not folders

    @property
    def kind(self) -> str:
        return "zip" if self._zip is not None else "directory"

    def where(self, key: str) -> str:
        """``key`` as a message names it: a file's path, or ``ARCHIVE.zip:key``."""
        return f"{self.path}:{key}" if self._zip is not None else os.path.join(self.path, *key.split("/"))

    def get(self, key: str) -> bytes | None:
        """The bytes stored under ``key``, or None when there are none."""
        if self._zip is not None:
            if key not in self._names:
                return None
            try:
                with self._lock:  # one ZipFile reads one member at a time
                    return self._zip.read(key)
            except Exception as exc:  # BadZipFile (a CRC), zlib.error, EOFError: a damaged member
                raise ConversionError(
                    f"{self.where(key)}: cannot be read from the archive ({exc}); {_RESTORE}"
                ) from None
        try:
            with open(os.path.join(self.path, *key.split("/")), "rb") as fh:
                return fh.read()
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as exc:
            raise ConversionError(f"{self.where(key)}: cannot be read ({exc.strerror or exc})") from None

    def json(self, key: str) -> dict[str, Any] | None:
        """The JSON object stored under ``key``, or None when there is none.

        Raises:
            ConversionError: ``key`` holds something else than a JSON object.
        """
        raw = self.get(key)
        if raw is None:
            return None
        try:
            value = json.loads(raw)
        except ValueError as exc:
            raise ConversionError(f"{self.where(key)}: not readable JSON ({exc}); {_RESTORE}") from None
        if not isinstance(value, dict):
            raise ConversionError(f"{self.where(key)}: expected a JSON object; {_RESTORE}")
        return value

    def children(self, prefix: str) -> list[str]:
        """The names directly under ``prefix`` (a group's path, ``""`` for the root), sorted."""
        if self._zip is not None:
            lead = f"{prefix}/" if prefix else ""
            return sorted(
                {
                    n[len(lead) :].split("/")[0]
                    for n in self._names
                    if n.startswith(lead) and len(n) > len(lead)
                }
            )
        try:
            return sorted(os.listdir(os.path.join(self.path, *prefix.split("/")) if prefix else self.path))
        except OSError:
            return []

    def count(self, prefix: str) -> int:
        """How many keys lie under ``prefix`` (a folder's files, at any depth)."""
        lead = f"{prefix}/"
        if self._zip is not None:
            return sum(1 for n in self._names if n.startswith(lead))
        total = 0
        for _, _, files in os.walk(os.path.join(self.path, *prefix.split("/"))):
            total += len(files)
        return total

    def close(self) -> None:
        if self._zip is not None:
            self._zip.close()
            self._zip = None


def store_format(store: Store) -> int | None:
    """The zarr format of the store's root group (2 or 3), or None when it has none."""
    if store.get(V2_GROUP) is not None:
        return 2
    meta = store.json(V3_META) if store.get(V3_META) is not None else None
    if meta is not None and meta.get("node_type") == "group":
        return 3
    return None


class Array:
    """One zarr array's metadata, and its rows read a block at a time."""

    name: str
    shape: tuple[int, ...]
    dtype: np.dtype[Any]
    attrs: dict[str, Any]
    missing_chunks: int
    chunk_count: int

    @property
    def numeric(self) -> bool:
        """Whether it holds numbers or bools (else strings or bytes)."""
        return self.dtype.kind in "biuf"

    def read(self, start: int, stop: int) -> np.ndarray:
        """Rows ``start`` to ``stop - 1`` (all of every other dimension), in native byte order."""
        raise NotImplementedError


class V2Array(Array):
    """A format 2 array (``.zarray``), read chunk by chunk (see the module docstring)."""

    def __init__(self, store: Store, name: str) -> None:
        self.store, self.name = store, name
        where = store.where(f"{name}/{V2_ARRAY}")
        meta = store.json(f"{name}/{V2_ARRAY}") or {}
        try:
            self.shape = tuple(int(d) for d in meta["shape"])
            self.chunks = tuple(int(d) for d in meta["chunks"])
            self._order = meta.get("order", "C")
            self._sep = meta.get("dimension_separator") or "."
            raw_dtype = meta["dtype"]
        except (KeyError, TypeError, ValueError) as exc:
            raise ConversionError(f"{where}: not zarr array metadata (no valid {exc}); {_RESTORE}") from None
        if (
            len(self.chunks) != len(self.shape)
            or any(c < 1 for c in self.chunks)
            or any(d < 0 for d in self.shape)
        ):
            raise ConversionError(
                f"{where}: chunks {list(self.chunks)} do not fit shape {list(self.shape)}; {_RESTORE}"
            )
        if self._order not in ("C", "F") or self._sep not in (".", "/"):
            raise ConversionError(
                f"{where}: order {self._order!r} or separator {self._sep!r} is not zarr's; {_RESTORE}"
            )
        self.stored = _dtype(raw_dtype, where, meta.get("filters"))
        self.dtype = self.stored.newbyteorder("=") if self.stored.byteorder not in "=|" else self.stored
        self._fill = _fill_value(meta.get("fill_value"), self.stored)
        self.compressor = _codec(meta.get("compressor"), where, name)
        self.filters = [_codec(f, where, name) for f in (meta.get("filters") or [])]
        self.attrs = store.json(f"{name}/{V2_ATTRS}") or {}
        self._cache: tuple[int, dict[tuple[int, ...], np.ndarray]] = (-1, {})
        self.chunk_count = (
            math.prod(-(-d // c) for d, c in zip(self.shape, self.chunks, strict=True))
            if all(self.shape)
            else 0
        )
        stored = store.count(name) - sum(store.get(f"{name}/{n}") is not None for n in (V2_ARRAY, V2_ATTRS))
        self.missing_chunks = max(0, self.chunk_count - stored)

    def read(self, start: int, stop: int) -> np.ndarray:
        out = np.empty((stop - start, *self.shape[1:]), self.dtype)
        if stop <= start:
            return out
        c0, rest = self.chunks[0], self.chunks[1:]
        grid = [range(-(-d // c)) for d, c in zip(self.shape[1:], rest, strict=True)]
        for i0 in range(start // c0, (stop - 1) // c0 + 1):
            lo = i0 * c0
            a, b = max(start, lo), min(stop, lo + c0)
            for idx in itertools.product(*grid):
                block = self._block(i0, idx)
                dst = [slice(a - start, b - start)]
                src = [slice(a - lo, b - lo)]
                for j, c, d in zip(idx, rest, self.shape[1:], strict=True):
                    dst.append(slice(j * c, min((j + 1) * c, d)))
                    src.append(slice(0, min(c, d - j * c)))
                out[tuple(dst)] = block[tuple(src)]
        return out

    def _block(self, i0: int, idx: tuple[int, ...]) -> np.ndarray:
        """Chunk ``(i0, *idx)``, decoded; the chunks of the last row block read are kept
        (the next episode usually starts in it)."""
        row, blocks = self._cache
        if row != i0:
            blocks = {}
            self._cache = (i0, blocks)
        block = blocks.get(idx)
        if block is None:
            block = blocks[idx] = self._decode((i0, *idx))
        return block

    def _decode(self, index: tuple[int, ...]) -> np.ndarray:
        key = f"{self.name}/{self._sep.join(map(str, index))}"
        raw = self.store.get(key)
        if raw is None:
            if self.stored.kind in "OUS":
                return np.full(self.chunks, "" if self.stored.kind != "S" else b"", self.dtype)
            return np.full(self.chunks, self._fill, self.dtype)
        expected = math.prod(self.chunks) * self.stored.itemsize
        where = self.store.where(key)
        damaged = f"the chunk is damaged or was cut short; {_RESTORE}"
        if self.compressor is not None and self.compressor.codec_id == "blosc":
            said = _BLOSC_HEADER.unpack_from(raw)[6] if len(raw) >= _BLOSC_HEADER.size else None
            if said != len(raw):
                raise ConversionError(
                    f"{where}: {len(raw)} bytes, where its Blosc header says {said} (chunk {list(index)} of "
                    f"{self.name}); {damaged}"
                )
        try:
            buf: Any = raw if self.compressor is None else self.compressor.decode(raw)
            for f in reversed(self.filters):
                buf = f.decode(buf)
        except Exception as exc:  # each codec raises its own kind
            raise ConversionError(
                f"{where}: cannot be decoded with {self._codecs()} ({type(exc).__name__}: {exc}; chunk "
                f"{list(index)} of {self.name}); {damaged}"
            ) from None
        if self.stored.kind == "O":
            return self._objects(buf, index, where, damaged)
        data = np.ascontiguousarray(buf).reshape(-1).view(np.uint8)
        if data.size != expected:
            raise ConversionError(
                f"{where}: {data.size} bytes after decoding with {self._codecs()}, where a chunk of {self.name} "
                f"({'x'.join(map(str, self.chunks))} {self.stored.str}) holds {expected}; {damaged}"
            )
        block = data.view(self.stored).reshape(self.chunks, order=self._order)
        return block.astype(self.dtype) if self.stored != self.dtype else block

    def _objects(self, buf: Any, index: tuple[int, ...], where: str, damaged: str) -> np.ndarray:
        """A chunk of variable-length strings or bytes, as the codec decoded it."""
        arr = np.asarray(buf, dtype=object).reshape(-1)
        if arr.size != math.prod(self.chunks):
            raise ConversionError(
                f"{where}: {arr.size} values after decoding with {self._codecs()}, where a chunk of {self.name} "
                f"({'x'.join(map(str, self.chunks))}) holds {math.prod(self.chunks)}; {damaged}"
            )
        return arr.reshape(self.chunks, order=self._order)

    def _codecs(self) -> str:
        names = [c.codec_id for c in (self.compressor, *self.filters) if c is not None]
        return "+".join(names) or "no codec"


class V3Array(Array):
    """A format 3 array, read through the zarr library.

    Where its last codec is Blosc and it is not sharded, each chunk a read needs has its
    Blosc header checked against its size first, from the store's own bytes, as format 2
    chunks are: zarr 3 decodes through the same numcodecs Blosc.
    """

    def __init__(self, array: Any, name: str, store: Store) -> None:
        self._array, self.name, self.store = array, name, store
        self.shape = tuple(int(d) for d in array.shape)
        dtype = np.dtype(array.dtype)
        if dtype.kind not in "biufUSOT":
            raise ConversionError(
                f"{store.where(name)}: dtype {dtype} is not one kinodb reads (numbers, bools, strings)"
            )
        if dtype.kind in "biuf":
            self.dtype = dtype.newbyteorder("=") if dtype.byteorder not in "=|" else dtype
        else:
            self.dtype = np.dtype(object)  # strings, read as Python objects
        self.attrs = dict(array.attrs)
        self.chunk_count = int(array.nchunks)
        self.missing_chunks = max(0, self.chunk_count - int(array.nchunks_initialized))
        meta = store.json(f"{name}/{V3_META}") or {}
        codecs = [c.get("name") for c in meta.get("codecs", []) if isinstance(c, dict)]
        grid = (meta.get("chunk_grid") or {}).get("configuration", {}).get("chunk_shape")
        encoding = meta.get("chunk_key_encoding") or {}
        self._chunks: tuple[int, ...] | None = None
        if codecs and codecs[-1] == "blosc" and "sharding_indexed" not in codecs and isinstance(grid, list):
            self._chunks = tuple(int(c) for c in grid)
            sep = (encoding.get("configuration") or {}).get("separator")
            self._v2_keys = encoding.get("name") == "v2"
            self._sep = sep or ("." if self._v2_keys else "/")

    def _chunk_key(self, idx: tuple[int, ...]) -> str:
        """A chunk's key below the array (``c/1/0``; ``1.0`` with the ``v2`` key encoding)."""
        if self._v2_keys:
            return self._sep.join(map(str, idx))
        return "c" + "".join(f"{self._sep}{i}" for i in idx)

    def read(self, start: int, stop: int) -> np.ndarray:
        if self._chunks is not None and stop > start:
            self._check_blosc(start, stop)
        try:
            out = np.asarray(self._array[start:stop])
        except Exception as exc:  # the codec pipeline's own errors
            raise ConversionError(
                f"{self.store.where(self.name)}: rows {start}-{stop - 1} cannot be read ({type(exc).__name__}: "
                f"{exc}); {_RESTORE}"
            ) from None
        return out.astype(self.dtype) if out.dtype != self.dtype else out

    def _check_blosc(self, start: int, stop: int) -> None:
        assert self._chunks is not None
        c0, rest = self._chunks[0], self._chunks[1:]
        grid = [range(-(-d // c)) for d, c in zip(self.shape[1:], rest, strict=True)]
        for i0 in range(start // c0, (stop - 1) // c0 + 1):
            for idx in itertools.product(*grid):
                key = f"{self.name}/{self._chunk_key((i0, *idx))}"
                raw = self.store.get(key)
                said = (
                    _BLOSC_HEADER.unpack_from(raw)[6]
                    if raw is not None and len(raw) >= _BLOSC_HEADER.size
                    else None
                )
                if raw is not None and said != len(raw):
                    raise ConversionError(
                        f"{self.store.where(key)}: {len(raw)} bytes, where its Blosc header says {said} (chunk "
                        f"{[i0, *idx]} of {self.name}); the chunk is damaged or was cut short; {_RESTORE}"
                    )


def open_v3(path: str, store: Store) -> Any:
    """The root group of a format 3 store, through the zarr library.

    Raises:
        ConversionError: zarr 3 is not installed.
    """
    try:
        import zarr
    except ImportError:
        raise ConversionError(
            f"{path}: a zarr format 3 store, which kinodb reads through the zarr library: pip install 'zarr>=3' "
            "(Python 3.11 or later)"
        ) from None
    if int(zarr.__version__.split(".")[0]) < 3:
        raise ConversionError(
            f"{path}: a zarr format 3 store, and the installed zarr {zarr.__version__} reads format 2 only: "
            "pip install 'zarr>=3' (Python 3.11 or later)"
        )
    raw = (
        zarr.storage.ZipStore(path, mode="r")
        if store.kind == "zip"
        else zarr.storage.LocalStore(path, read_only=True)
    )
    return zarr.open_group(raw, mode="r")


_VLEN = ("vlen-utf8", "vlen-bytes")  # the object codecs read here (never pickle)


def _dtype(raw: Any, where: str, filters: Any = None) -> np.dtype[Any]:
    """The array's dtype: numbers and bools, fixed-width strings and bytes, and object arrays
    whose filters are a variable-length string or bytes codec."""
    try:
        dtype = np.dtype(raw) if isinstance(raw, str) else None
    except TypeError:
        dtype = None
    if dtype is not None and dtype.kind == "O":
        ids = [f.get("id") for f in filters or [] if isinstance(f, dict)]
        if not any(i in _VLEN for i in ids):
            dtype = None
    if dtype is None or dtype.kind not in "biufUSO" or dtype.shape:
        raise ConversionError(
            f"{where}: dtype {json.dumps(raw)[:60]} is not one kinodb reads (numbers, bools, strings, bytes)"
        )
    return dtype


def _fill_value(raw: Any, dtype: np.dtype[Any]) -> Any:
    if raw is None or dtype.kind in "OUS":
        return 0
    if isinstance(raw, str) and raw in ("NaN", "Infinity", "-Infinity"):
        return {"NaN": np.nan, "Infinity": np.inf, "-Infinity": -np.inf}[raw]
    return raw


_registered = False


def _codec(config: Any, where: str, name: str) -> Any:
    """The numcodecs codec of ``config`` (None for none); imagecodecs' codecs (the JPEG 2000
    and JPEG XL of diffusion_policy's and UMI's image arrays) are registered when installed.

    Raises:
        ConversionError: numcodecs is missing, or knows no codec of that id.
    """
    global _registered
    if config is None:
        return None
    try:
        import numcodecs
    except ImportError:
        raise ConversionError(
            f"{where}: reading zarr arrays needs numcodecs: pip install 'kinodb[zarr]'"
        ) from None
    if not isinstance(config, dict) or not isinstance(config.get("id"), str):
        raise ConversionError(f"{where}: codec {json.dumps(config)[:80]} has no 'id'; {_RESTORE}")
    codec_id = config["id"]
    if codec_id.startswith("imagecodecs_") and not _registered:
        try:
            from imagecodecs.numcodecs import register_codecs
        except ImportError:
            pass
        else:
            register_codecs()
            _registered = True
    try:
        return numcodecs.get_codec(dict(config))
    except (ValueError, TypeError, KeyError) as exc:
        need = (
            "pip install imagecodecs"
            if codec_id.startswith("imagecodecs_")
            else "install the package that registers it with numcodecs"
        )
        raise ConversionError(
            f"{where}: {name} is compressed with the codec {codec_id!r}, which numcodecs does not know ({exc}): {need}"
        ) from None
