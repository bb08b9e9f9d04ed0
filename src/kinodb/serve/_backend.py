"""What the server serves: a file or a mixture, read into response messages.

Everything here is safe to call from many threads at once. Reads go through the
memory map (views, no shared cursor); the only locks guard the server's seeded stream
(one integer drawn per request) and the creation of a `FrameWindows` per window spec,
whose lazily built caches are filled before it is shared. No lock is held while reading.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from kinodb._version import __version__
from kinodb.errors import EpisodeNotFoundError, KinodbError, NameNotFoundError
from kinodb.kdb.reader import Database
from kinodb.kql._eval import fields_of
from kinodb.mixture import Mixture
from kinodb.serve._errors import BatchTooLargeError
from kinodb.serve._messages import legacy_frames, meta_to_pb
from kinodb.serve._proto import kinodb_pb2 as pb
from kinodb.serve._sizes import EpisodeSizes, episode_sizes, mib
from kinodb.serve._wire import CameraPart, EpisodePart, encode_episode, encode_episodes, encode_windows
from kinodb.windows import FrameWindows, Normalizers, normalized_arrays, prefetch_frames

__all__ = ["MAX_BATCHES_PER_MESSAGE", "MODES", "Backend"]

log = logging.getLogger(__name__)

MODES = ("sequential", "random", "weighted")
MAX_HORIZON = 4096  # frames per window feature; larger asks are refused, not allocated
_MAX_MESSAGE = 2**31 - 1 - (1 << 20)  # gRPC's int32 limit, less room for framing
_MIN_MESSAGE = 16 << 20
_WINDOW_CACHE = 8  # window specs kept open at once
MAX_BATCHES_PER_MESSAGE = 64
_GROUP_BYTES = 1 << 20  # a stream message stacks batches up to about this size
_DECODE_THREADS = 2
_STORED_CACHE = 1 << 16  # episodes whose mean stored frame size is kept


@dataclass(frozen=True, slots=True)
class _Images:
    decoded: bool
    cameras: tuple[str, ...]
    size: tuple[int, int] | None


class Backend:
    """Responses for every RPC over one `Database` or `Mixture` (not owned: the caller closes it).

    Args:
        source: The data.
        seed: Seed of the server's stream, which requests with seed 0 draw from.
        max_batch: Largest ``batch_size`` a request may ask for.
    """

    def __init__(self, source: Database | Mixture, *, seed: int, max_batch: int) -> None:
        if isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1:
            raise ValueError(f"max_batch must be a positive int, got {max_batch!r}")
        self.source, self.max_batch = source, max_batch
        if isinstance(source, Mixture):
            infos = source.sources()
            self._dbs = [source.database(i) for i in range(len(infos))]
            self._kept = [_kept(db, info.filter) for db, info in zip(self._dbs, infos, strict=True)]
            self._paths = [info.path for info in infos]
            self._shares = np.array([info.share for info in infos], dtype=np.float64)
        else:
            self._dbs, self._kept = [source], [np.arange(len(source), dtype=np.int64)]
            self._paths, self._shares = [source.path()], np.ones(1)
        for db in self._dbs:  # requests read episodes and windows at random: no read-ahead around them
            db._advise_random()
        counts = [len(k) for k in self._kept]
        self._starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self._g_source = np.repeat(np.arange(len(counts), dtype=np.int64), counts)
        self._g_pos = np.concatenate(self._kept).astype(np.int64)
        self._g_frames = np.concatenate(
            [np.asarray(db.episodes()["num_frames"], dtype=np.int64)[k] for db, k in zip(self._dbs, self._kept, strict=True)]
        )  # fmt: skip
        self._sizes(episode_sizes(db, k) for db, k in zip(self._dbs, self._kept, strict=True))
        self._task_names, self._task_codes, self._task_base = self._task_table()
        whole = self._g_arrays + sum(self._g_images.values(), np.zeros(len(self), dtype=np.int64))
        largest = int(whole.max(initial=0))  # an episode with every camera's frames decoded
        item = largest + largest // 4 + 4096  # the earlier per-frame form costs ~1.25x the packed bytes
        self.max_message = int(min(_MAX_MESSAGE, max(_MIN_MESSAGE, max_batch * item)))
        self._stream = np.random.default_rng(seed)
        self._stream_lock = threading.Lock()
        self._windows: dict[tuple[Any, ...], tuple[FrameWindows, int, Normalizers | None]] = {}
        self._windows_lock = threading.Lock()
        self._stored_cache: dict[tuple[Any, ...], int] = {}

    def _sizes(self, per_source: Iterable[EpisodeSizes]) -> None:
        """Per served episode: bytes of its arrays and of each camera's decoded frames; the
        cameras of each source and of all (the union, in order of first appearance)."""
        sizes = list(per_source)
        self._source_cameras = [s.cameras for s in sizes]
        self.cameras: list[str] = list(dict.fromkeys(c for s in sizes for c in s.cameras))
        self._g_arrays = np.concatenate([s.arrays for s in sizes]).astype(np.int64)
        self._g_images: dict[str, NDArray[np.int64]] = {}
        for cam in self.cameras:
            self._g_images[cam] = np.concatenate(
                [s.images.get(cam, np.zeros(len(s.arrays), dtype=np.int64)) for s in sizes]
            ).astype(np.int64)
        frames = np.maximum(self._g_frames, 1)
        self._largest_frame = {cam: int((b // frames).max(initial=0)) for cam, b in self._g_images.items()}

    def _common_cameras(self) -> list[str]:
        """The cameras every served source holds (in some kept episode), in the first's order."""
        names = [cams for cams, kept in zip(self._source_cameras, self._kept, strict=True) if len(kept)]
        return [cam for cam in names[0] if all(cam in other for other in names[1:])] if names else []

    def _task_table(self) -> tuple[NDArray[Any], NDArray[np.int32], NDArray[np.int64]]:
        """Every task text once, each file position's code, and each source's first code row."""
        per_source = [np.asarray(db.episodes()["task"], dtype=object) for db in self._dbs]
        every = np.concatenate(per_source) if per_source else np.empty(0, object)
        names, codes = np.unique(every, return_inverse=True) if len(every) else (every, every)
        base = np.concatenate([[0], np.cumsum([len(t) for t in per_source])[:-1]]).astype(np.int64)
        return names.astype(object), np.asarray(codes, dtype=np.int32).reshape(-1), base

    def __len__(self) -> int:
        return int(self._starts[-1])

    def num_frames(self) -> int:
        """Frames of the served episodes."""
        return int(self._g_frames.sum())

    # -- RPCs -------------------------------------------------------------------------------

    def info(self) -> pb.InfoResponse:
        """`ServerInfo`."""
        return pb.InfoResponse(
            num_episodes=len(self), num_frames=self.num_frames(), num_sources=len(self._dbs),
            version=__version__, sources=self._paths, shares=self._shares.tolist(), max_batch=self.max_batch,
            max_message_bytes=self.max_message, cameras=list(self.cameras),
            source_episodes=np.diff(self._starts).tolist(), features=list(FEATURES),
        )  # fmt: skip

    def meta(self, index: int) -> pb.MetaResponse:
        """`GetMeta`: reads the metadata table only."""
        s, pos = self._locate(index)
        resp = pb.MetaResponse(source=s, position=pos)
        meta_to_pb(self._dbs[s].read_meta(pos), resp.meta)
        return resp

    def episode(self, req: pb.EpisodeRequest, *, legacy: bool = False) -> pb.EpisodeResponse | bytes:
        """`GetEpisode`, as wire bytes (see `kinodb.serve._wire`); the earlier service always
        sent decoded images, in its per-frame form."""
        images = _Images(True, (), None) if legacy else self._image_opts(req, req.include_images)
        self._locate(req.position)  # out of range: EpisodeNotFoundError, before any estimate
        self._check_estimate(self._estimate(np.array([req.position]), images), "this episode")
        if legacy:
            resp = pb.EpisodeResponse()
            self._legacy_episode(req.position, resp.episode, images)
            self._check_size(resp.ByteSize(), "this episode")
            return resp
        reply = encode_episode(self._episode(req.position, images))
        self._check_size(len(reply), "this episode")
        return reply

    def query(self, req: pb.QueryRequest, *, legacy: bool = False) -> pb.QueryResponse:
        """`Query`: global indices of the matches, ascending; ``total_matches`` counts them all."""
        hits = []
        absent = fields_of(self._dbs)  # a field only some sources hold is null in the others
        for s, (db, kept) in enumerate(zip(self._dbs, self._kept, strict=True)):
            found = np.asarray(db.query(req.kql, absent=absent), dtype=np.int64)
            at = np.minimum(np.searchsorted(kept, found), max(len(kept) - 1, 0))
            mine = at[kept[at] == found] if len(kept) else at[:0]
            hits.append(self._starts[s] + mine)
        every = np.concatenate(hits) if hits else np.empty(0, np.int64)
        shown = every[: req.limit] if req.limit else every
        resp = pb.QueryResponse(positions=shown.tolist(), total_matches=len(every))
        if legacy or req.include_metas:
            for index in shown.tolist():
                s, pos = self._locate(index)
                meta_to_pb(self._dbs[s].read_meta(pos), resp.metas.add())
        return resp

    def batch(
        self, req: pb.BatchRequest, rng: np.random.Generator | None = None, *, offset: int | None = None,
        legacy: bool = False,
    ) -> pb.BatchResponse | bytes:  # fmt: skip
        """`GetBatch`: episodes, or frame windows when ``req.windows`` is set, as wire bytes
        (episodes of the earlier service: a message)."""
        size, mode = self._batch_args(req)
        rng = rng if rng is not None else self.rng(req.seed)
        start = req.offset if offset is None else offset
        if req.HasField("windows") and not legacy:
            return self._window_batch(req, mode, [start], rng)
        idx = self._draw(mode, len(self), size, start, rng, np.diff(self._starts), self._shares)
        images = self._image_opts(req, req.include_images)
        if legacy and images is not None:  # the earlier service always sent decoded frames
            images = _Images(True, images.cameras, None)
        if images is not None and images.size is not None:
            raise ValueError(
                "image_height and image_width resize the frames of window batches (with windows set); "
                "a batch of episodes sends each camera at its stored size: leave the size out"
            )
        what = f"a batch of {size} episodes"
        self._check_estimate(self._estimate(idx, images), what)
        next_offset = (start + size) % len(self) if mode == "sequential" else 0
        if legacy:
            resp = pb.BatchResponse(next_offset=next_offset)
            for index in idx.tolist():
                self._legacy_episode(index, resp.episodes.add(), images)
            self._check_size(resp.ByteSize(), what)
            return resp
        reply = encode_episodes([self._episode(i, images) for i in idx.tolist()], next_offset=next_offset)
        self._check_size(len(reply), what)
        return reply

    def stream(self, req: pb.StreamRequest) -> Iterator[pb.BatchResponse | bytes]:
        """`StreamBatches`: one seeded generator and a moving offset for the whole stream.

        Window batches without images are stacked ``req.batches_per_message`` to a message
        (at most `MAX_BATCHES_PER_MESSAGE`, and as many as fit in about 1 MiB) and gathered
        at once: the batches and their order are those of one batch per message, drawn
        from the same generator.
        """
        first = req.batch
        size, mode = self._batch_args(first)
        rng = self.rng(first.seed)
        stride = req.stride or size
        group = self._group(req)
        offset, sent = first.offset, 0
        while req.num_batches == 0 or sent < req.num_batches:
            k = group if req.num_batches == 0 else min(group, req.num_batches - sent)
            if k == 1:
                yield self.batch(first, rng, offset=offset)
            else:
                yield self._window_batch(first, mode, [offset + i * stride for i in range(k)], rng)
            offset, sent = offset + k * stride, sent + k

    def _batch_args(self, req: pb.BatchRequest) -> tuple[int, str]:
        """The request's batch size and mode, checked."""
        size = req.batch_size
        if size < 1:
            raise ValueError("batch_size must be at least 1")
        if size > self.max_batch:
            raise BatchTooLargeError(
                f"batch_size {size} is over this server's limit of {self.max_batch} (kino-serve --max-batch)"
            )
        mode = req.mode or "random"
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        return size, mode

    def _group(self, req: pb.StreamRequest) -> int:
        """Batches per message of a stream: 1 unless it asked for more and carries state-only windows."""
        first = req.batch
        if req.batches_per_message <= 1 or not first.HasField("windows") or first.include_images:
            return 1
        per_batch = first.batch_size * self._window_bytes(first.windows)
        return max(
            1, min(req.batches_per_message, MAX_BATCHES_PER_MESSAGE, _GROUP_BYTES // max(per_batch, 1))
        )

    # -- pieces -----------------------------------------------------------------------------

    def rng(self, seed: int) -> np.random.Generator:
        """The request's generator: from its seed, or (seed 0) seeded from the server's stream."""
        if seed:
            return np.random.default_rng(seed)
        with self._stream_lock:
            child = int(self._stream.integers(1, 2**63))
        return np.random.default_rng(child)

    def _locate(self, index: int) -> tuple[int, int]:
        n = len(self)
        if not 0 <= index < n:
            rng = f"0..{n - 1}" if n else "none"
            raise EpisodeNotFoundError(f"episode {index} out of range: the server has {n} episodes ({rng})")
        return int(self._g_source[index]), int(self._g_pos[index])

    def _draw(
        self, mode: str, n: int, size: int, offset: int, rng: np.random.Generator,
        counts: NDArray[np.int64], shares: NDArray[np.float64],
    ) -> NDArray[np.int64]:  # fmt: skip
        """``size`` indices in ``range(n)``; ``counts`` and ``shares`` describe the sources."""
        if n == 0:
            raise KinodbError("the server has nothing to serve: its sources hold no episodes")
        if mode == "sequential":
            return (offset % n + np.arange(size, dtype=np.int64)) % n
        if mode == "random" or len(counts) == 1:
            return rng.integers(0, n, size, dtype=np.int64)
        src = rng.choice(len(counts), size=size, p=shares / shares.sum())
        within = np.minimum((rng.random(size) * counts[src]).astype(np.int64), counts[src] - 1)
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
        return starts[src] + within  # type: ignore[no-any-return]

    def _estimate(self, idx: NDArray[np.int64], images: _Images | None) -> int:
        """Bytes the episodes ``idx`` take in a reply, from the index alone (nothing decoded)."""
        total = int(self._g_arrays[idx].sum())
        if images is None:
            return total
        names = images.cameras or self.cameras  # a camera no episode has: the read names it
        if images.decoded:
            return total + sum(int(self._g_images[c][idx].sum()) for c in names if c in self._g_images)
        for index in idx.tolist():  # stored frames: their offset tables give their bytes
            s, pos = int(self._g_source[index]), int(self._g_pos[index])
            cams = self._dbs[s]._episode_cameras(pos)
            total += sum(int(cams[c].frame_offsets[-1]) + 8 * cams[c].shape[0] for c in names if c in cams)
        return total

    def _image_opts(self, req: Any, include: bool) -> _Images | None:
        h, w = getattr(req, "image_height", 0), getattr(req, "image_width", 0)
        if (h or w) and not include:
            raise ValueError(
                f"image_height and image_width ({h}x{w}) size frames, but include_images is false: set "
                "include_images, or leave the size out"
            )
        if not include:
            return None
        decoded = req.image_encoding == pb.IMAGE_ENCODING_DECODED
        if bool(h) != bool(w):
            raise ValueError(f"give both image_height and image_width, or neither (got {h} and {w})")
        if h and not decoded:
            raise ValueError(
                f"image_height and image_width ({h}x{w}) resize decoded frames, but IMAGE_ENCODING_STORED "
                "sends each frame's stored bytes as they are: ask for IMAGE_ENCODING_DECODED, or leave the "
                "size out and resize after decoding"
            )
        return _Images(decoded, tuple(req.cameras), (h, w) if h else None)

    def _episode(self, index: int, images: _Images | None) -> EpisodePart:
        """Episode ``index`` for a reply: its arrays and frames as read, to be copied once into it."""
        s, pos, meta, arrays, cameras = self._read_episode(index, images)
        msg = pb.EpisodeMeta()
        meta_to_pb(meta, msg)
        return EpisodePart(msg.SerializeToString(), arrays, cameras, index=index, source=s, position=pos)

    def _legacy_episode(self, index: int, msg: pb.Episode, images: _Images | None) -> None:
        """Fill ``msg`` with episode ``index`` in the earlier service's per-frame form."""
        decoded = _Images(True, images.cameras, None) if images is not None else None
        s, pos, meta, arrays, cameras = self._read_episode(index, decoded)
        meta_to_pb(meta, msg.meta)
        msg.index, msg.source, msg.position = index, s, pos
        frames = {cam.camera: cam.pixels for cam in cameras if cam.pixels is not None}
        legacy_frames(msg, arrays, frames)

    def _read_episode(
        self, index: int, images: _Images | None
    ) -> tuple[int, int, dict[str, Any], dict[str, NDArray[Any]], list[CameraPart]]:
        """``(source, position, meta, arrays, cameras)`` of episode ``index``: decoded frames
        or the stored frames' bytes (views of the file), of ``images``' cameras (all: none named).

        Raises:
            NameNotFoundError: the episode lacks a camera asked for.
        """
        s, pos = self._locate(index)
        db = self._dbs[s]
        arrays = db.read_episode_actions_only(pos)
        meta = arrays.pop("meta")
        cameras: list[CameraPart] = []
        if images is None:
            return s, pos, meta, arrays, cameras
        cams = db._episode_cameras(pos)
        if any("=" in name for name in images.cameras):
            raise ValueError("a camera mapping (name=a,b) applies to windows; ask episodes for camera names")
        for name in images.cameras or tuple(cams):
            if name not in cams:
                raise NameNotFoundError(f"episode {index} has no camera {name!r}; it has {sorted(cams)}")
            cam = cams[name]
            T, h, w, c = cam.shape
            prefetch_frames(db, cam)  # a reply holds them all: large reads, not page by page
            if images.decoded:
                pixels = (
                    db.read_frames(pos, 0, T, cameras=[name])["images"][name]
                    if T
                    else np.zeros((0, h, w, c), np.uint8)
                )
                cameras.append(CameraPart(name, "raw", h, w, c, pixels=pixels))
            else:
                frames = [db._frame_bytes(cam, t) for t in range(T)]
                cameras.append(CameraPart(name, cam.codec, h, w, c, frames=frames))
        return s, pos, meta, arrays, cameras

    def windows(self, spec: pb.WindowSpec, cameras: Sequence[str] | None) -> FrameWindows:
        """The `FrameWindows` of a spec, built once (its caches filled before it is shared)."""
        return self._window_entry(spec, cameras)[0]

    def _window_bytes(self, spec: pb.WindowSpec) -> int:
        """Bytes of one state-only window of a spec in a reply (arrays, index and task code)."""
        return self._window_entry(spec, None)[1]

    def _window_entry(
        self, spec: pb.WindowSpec, cameras: Sequence[str] | None
    ) -> tuple[FrameWindows, int, Normalizers | None]:
        obs, act = spec.obs_horizon or 1, spec.action_horizon or 1
        if obs > MAX_HORIZON or act > MAX_HORIZON:
            raise ValueError(
                f"obs_horizon and action_horizon must be at most {MAX_HORIZON}, got {obs} and {act}"
            )
        pad = spec.pad or "edge"
        if pad not in ("edge", "zero"):
            raise ValueError(f"pad must be 'edge' or 'zero', got {pad!r}")
        normalize = getattr(spec, "normalize", "")
        if normalize not in ("", "mean_std", "min_max"):
            raise ValueError(f"normalize must be 'mean_std', 'min_max' or empty, got {normalize!r}")
        key = (obs, act, pad, spec.kql_filter, tuple(cameras) if cameras else None, normalize)
        entry = self._windows.get(key)
        if entry is not None:
            return entry
        with self._windows_lock:
            entry = self._windows.get(key)
            if entry is None:
                try:
                    fw = FrameWindows(self.source, obs_horizon=obs, action_horizon=act, pad=pad,  # type: ignore[arg-type]
                                      kql_filter=spec.kql_filter or None, cameras=_camera_arg(cameras))  # fmt: skip
                except KinodbError as exc:
                    if cameras is None or "no camera" not in str(exc) or any("=" in c for c in cameras):
                        raise
                    if all(c in self._common_cameras() for c in cameras):  # some episodes lack it
                        # The windows name those episodes and a kql_filter that leaves them out;
                        # a client has no image_key but asks for windows without images.
                        text = str(exc).replace("pass image_key=False for", "ask for")
                        raise NameNotFoundError(text) from None  # a bad argument: INVALID_ARGUMENT
                    raise NameNotFoundError(  # the advice a client can take: it has no image_key
                        f"{str(exc).split('; ', 1)[0]}; windows of this server need cameras every served "
                        f"source has ({', '.join(self._common_cameras()) or 'none'}): ask for those with "
                        "cameras=[...], map an output name to each source's camera with "
                        "cameras={'front': ['cam_a', 'cam_b']}, or ask for windows without images"
                    ) from None
                try:
                    norm = Normalizers(fw._sources, normalize, normalized_arrays(fw)) if normalize else None
                except KinodbError as exc:  # the files as they were when the server started
                    raise type(exc)(
                        f"{exc} (the server reads its files as they were when it started: restart "
                        "kino-serve after kino stats)"
                    ) from exc
                # One window per source fills every per-array cache now, under the lock.
                first = fw.lowdim_padded(np.concatenate([[0], np.cumsum(fw.sample_counts())[:-1]]))
                per_window = sum(a.nbytes // max(len(a), 1) for a in first.values()) + 8 + 4  # + index, task
                if len(self._windows) >= _WINDOW_CACHE:
                    self._windows.pop(next(iter(self._windows)))
                entry = self._windows[key] = (fw, per_window, norm)
                log.info("window spec %s: %d windows", key, len(fw))
        return entry

    def _window_batch(
        self, req: pb.BatchRequest, mode: str, offsets: Sequence[int], rng: np.random.Generator
    ) -> bytes:
        """The wire bytes of a `BatchResponse` of windows (see `kinodb.serve._wire`).

        Several ``offsets`` stack as many batches in one reply (drawn in order, gathered at once).
        """
        images = self._image_opts(req, req.include_images)
        cams = (images.cameras or tuple(self.cameras)[:1]) if images is not None else None
        if cams is not None and not cams:
            raise ValueError("include_images was asked for, but the served episodes have no cameras")
        fw, _, norm = self._window_entry(req.windows, cams)
        if images is not None and images.decoded and images.size is None:
            _check_one_size(fw)  # refused now, not at the first batch that mixes the sources
        n, size = len(fw), req.batch_size
        counts = fw.counts_by_source()  # per served source, 0 where the request's filter kept nothing
        shares = (
            self._shares * (counts > 0) if len(counts) == len(self._shares) else counts.astype(np.float64)
        )
        draws = [self._draw(mode, n, size, offset, rng, counts, shares) for offset in offsets]
        idx = draws[0] if len(draws) == 1 else np.concatenate(draws)
        what = (
            f"a batch of {size} windows" if len(offsets) == 1 else f"{len(offsets)} batches of {size} windows"
        )
        arrays = fw.lowdim_padded(idx, normalizers=norm)  # several widths: padded to the widest, with masks
        arrays["index"] = idx
        tasks: list[str]
        if fw.tasks_vary:  # some episode's task changes within it: each window's frame's text
            names, inverse = np.unique(np.asarray(fw.tasks(idx), dtype=object), return_inverse=True)
            tasks, arrays["task_index"] = names.tolist(), inverse.astype(np.int32).reshape(-1)
        else:
            used, arrays["task_index"] = self._task_index(arrays["source"], arrays["episode_index"])
            tasks = self._task_names[used].tolist()
        cameras: list[CameraPart] = []
        if images is None:
            nbytes = sum(a.nbytes for a in arrays.values())
            self._check_estimate(nbytes + sum(len(t) + 8 for t in tasks) + 1024, what)
        else:
            where = (arrays["source"], arrays["episode_index"])
            cameras = self._window_images(fw, idx, images, cams or (), where)
        next_offset = (offsets[-1] + size) % n if mode == "sequential" else 0
        reply = encode_windows(arrays, tasks, cameras, next_offset=next_offset, batches=len(offsets))
        if images is not None:
            self._check_size(len(reply), what)
        return reply

    def _task_index(
        self, source: NDArray[np.int64], episode: NDArray[np.int64]
    ) -> tuple[NDArray[np.int64], NDArray[np.int32]]:
        """Tasks travel once per batch: the codes of the distinct tasks, and each window's pick."""
        codes = self._task_codes[self._task_base[source] + episode]
        if len(self._task_names) > 4 * len(codes) + 4096:  # many tasks: sort the few at hand
            used, inverse = np.unique(codes, return_inverse=True)
            return used.astype(np.int64), inverse.astype(np.int32).reshape(-1)
        present = np.zeros(len(self._task_names), dtype=bool)
        present[codes] = True
        return np.flatnonzero(present), (np.cumsum(present, dtype=np.int32) - 1)[codes]

    def _window_images(
        self, fw: FrameWindows, idx: NDArray[np.int64], images: _Images, cams: Sequence[str],
        where: tuple[NDArray[np.int64], NDArray[np.int64]],
    ) -> list[CameraPart]:  # fmt: skip
        """The cameras' parts of a window reply; ``where`` is each window's served source and
        episode position, for the stored frames' size."""
        k = max(len(o) for o in fw.spec.images.values())
        layouts = {cam: fw.camera_layouts(cam) for cam in fw.cameras}
        what = f"a batch of {len(idx)} windows with images"
        if not images.decoded:  # stored bytes travel: estimated from the frames' offset tables
            self._check_estimate(k * self._stored_bytes(*where, cams), what, stored=True)
        else:
            per = sum(
                max(int(np.prod(images.size or hwc[:2])) * hwc[2] for _, hwc in per_source)
                for per_source in layouts.values()
            )
            if images.size is None:  # each episode's own size: the largest frame of each camera served
                per = max(per, sum(
                    max((self._largest_frame.get(name, 0) for name in names), default=0)
                    for names in _stored_names(cams)
                ))  # fmt: skip
            self._check_estimate(len(idx) * k * per, what)
        if images.decoded:
            out = []
            for cam, pixels in fw.images(idx, size=images.size, threads=_DECODE_THREADS).items():
                _, _, c, h, w = pixels.shape
                out.append(CameraPart(cam, "raw", h, w, c, pixels=pixels))
            return out
        stored = fw.encoded(idx)
        out = []
        for cam in fw.cameras:
            kinds = sorted(set(layouts[cam]))
            if len(kinds) > 1:
                raise ValueError(
                    f"stored frames of camera {cam!r} differ between the served sources ({kinds}); ask for "
                    "decoded frames, with image_size=(H, W) when their sizes differ"
                )
            codec, (h, w, c) = kinds[0]
            frames = [blob for sample in stored for blob in sample[cam]]
            out.append(CameraPart(cam, codec, h, w, c, frames=frames))
        return out

    def _stored_bytes(
        self, source: NDArray[np.int64], episode: NDArray[np.int64], cams: Sequence[str]
    ) -> int:
        """Bytes of one stored frame per camera of each window, summed over the windows: each
        episode's mean stored frame (its offset table's total over its frames), plus the length
        prefix a frame takes in the reply."""
        source, episode = np.asarray(source, np.int64), np.asarray(episode, np.int64)
        key = source * (int(episode.max(initial=0)) + 1) + episode
        _, first, inverse = np.unique(key, return_index=True, return_inverse=True)
        names = _stored_names(cams)
        per_episode = np.array(  # one lookup per distinct episode, not per frame
            [self._stored_frame_bytes(int(source[at]), int(episode[at]), names) for at in first.tolist()],
            dtype=np.int64,
        )
        return int(per_episode[inverse.reshape(-1)].sum())

    def _stored_frame_bytes(self, s: int, pos: int, names: list[list[str]]) -> int:
        """Mean bytes of one stored frame of each requested camera of episode ``pos`` of source
        ``s`` (cached: a window batch meets the same episodes again)."""
        key = (s, pos, tuple(map(tuple, names)))
        found = self._stored_cache.get(key)
        if found is None:
            cams = self._dbs[s]._episode_cameras(pos)
            found = 0
            for per_source in names:
                sizes = [
                    -(-int(cams[n].frame_offsets[-1]) // max(int(cams[n].shape[0]), 1)) + 8
                    for n in per_source if n in cams
                ]  # fmt: skip
                found += max(sizes, default=0)
            if len(self._stored_cache) >= _STORED_CACHE:
                self._stored_cache.clear()
            self._stored_cache[key] = found
        return found

    def _check_estimate(self, estimate: int, what: str, *, stored: bool = False) -> None:
        if estimate > self.max_message:
            advice = "ask for fewer" if stored else "ask for fewer, or for stored (encoded) images"
            raise BatchTooLargeError(
                f"{what} would be about {mib(estimate)}, over this server's message limit of "
                f"{mib(self.max_message)}; {advice}"
            )

    def _check_size(self, size: int, what: str) -> None:
        if size > self.max_message:
            raise BatchTooLargeError(
                f"{what} is {mib(size)}, over this server's message limit of {mib(self.max_message)}; "
                "ask for fewer, or for stored (encoded) images"
            )


def _check_one_size(fw: FrameWindows) -> None:
    """Refuse decoded window frames at their stored size when a camera's frames differ in
    size across the sources the request's filter keeps: a batch may mix them.

    Raises:
        ValueError: names the camera, each source and its frame size (INVALID_ARGUMENT).
    """
    for cam in fw.cameras:
        layouts = fw.camera_layouts(cam)
        if len({hwc[:2] for _, hwc in layouts}) > 1:
            sizes = ", ".join(
                f"{hwc[0]}x{hwc[1]} in {source.where}"
                for source, (_, hwc) in zip(fw._sources, layouts, strict=True)
            )
            raise ValueError(
                f"camera {cam!r} differs in size between the served sources ({sizes}), and a batch may "
                "mix them; pass image_size=(H, W) to resize its frames to one size"
            )


def _kept(db: Database, kql: str | None) -> NDArray[np.int64]:
    if kql is None:
        return np.arange(len(db), dtype=np.int64)
    return np.asarray(db.query(kql), dtype=np.int64)


FEATURES = ("window_normalize", "camera_mapping", "padded_windows")
"""What `InfoResponse.features` advertises: requests an older server would silently ignore."""


def _camera_arg(cameras: Sequence[str] | None) -> list[str] | dict[str, Any] | None:
    """A request's cameras as `FrameWindows` takes them: names, or entries ``out=a,b`` (an
    output name and each served source's camera) as a mapping."""
    if not cameras:
        return None
    mapped = [c for c in cameras if "=" in c]
    if not mapped:
        return list(cameras)
    if len(mapped) != len(cameras):
        raise ValueError(f"give every camera as a mapping (name=a,b) or none: {list(cameras)}")
    out: dict[str, Any] = {}
    for name, names in (c.split("=", 1) for c in cameras):
        each = names.split(",")
        out[name] = each[0] if len(each) == 1 else each  # one name: that camera in every source
    return out


def _stored_names(cameras: Sequence[str]) -> list[list[str]]:
    """Per output camera of a window request, the served cameras it stands for."""
    return [c.split("=", 1)[1].split(",") if "=" in c else [c] for c in cameras]
