"""Decode video files with PyAV, frame-exact by presentation time.

A frame's time is its ``pts * time_base`` in seconds, exactly as LeRobot's own loader
compares it (no ``start_time`` is subtracted). `decode_at` decodes one file once, in
order, and returns for every wanted time the decoded frame whose time is nearest (the
earlier one on a tie), when it lies within ``tolerance`` seconds
(``|frame time - wanted| <= tolerance``, LeRobot's rule; its default, 1e-4 s, is
``TOLERANCE_S``). A wanted time with no such frame is an error, never a neighbour. Frames that nothing wants are decoded (a decoder cannot skip them)
but never converted to RGB; wanted frames become exactly the pixels of
``frame.to_ndarray(format="rgb24")``. With ``seek=True`` the file is positioned once at the
keyframe at or before the first wanted time, then decoded forward: how a LeRobot v3
episode in the middle of a concatenated file is read without decoding what precedes it.
Should the seek land after the first wanted frame (a damaged index), the file is decoded
again from its start. A `VideoReader` passed in keeps the file open between calls: when
the next call's first wanted time lies just after where the previous call stopped (the
next episode of a LeRobot v3 file), decoding goes on from there, without reopening the
file, seeking, or decoding again from a keyframe. A file that starts as a video file but
does not read or decode to its end (a partial download or copy) raises
`DamagedVideoError`, naming the file and saying to replace it.

With ``jpeg_quality`` set, frames that will be stored as JPEG skip RGB altogether where
the video allows it: 8-bit 4:2:0 frames in BT.601 (or untagged, which FFmpeg also reads as
BT.601) are encoded straight from the decoder's Y, Cb and Cr planes (simplejpeg, on a
thread pool of half the CPUs, running while the next frames decode). Limited-range planes are
first stretched to the full range JPEG expects (swscale). Chroma keeps its stored 4:2:0
resolution, so the frame is never up-sampled to RGB and down-sampled again. Against the
exact BT.601 conversion of the planes these frames are closer than FFmpeg's own
``rgb24`` output, which runs about one level dark in every channel. Any other frame
(another pixel format or matrix, or without simplejpeg 1.8 or later) takes the RGB path.

With ``image_codec`` (``"jpeg"`` or ``"png"``) every wanted frame comes back encoded, each
as soon as it is decoded (on the same thread pool): planar JPEGs where the planar path
applies, else its RGB pixels (turned 180 degrees first with ``flip``) encoded exactly as the
writer encodes pixels (`kinodb.kdb._codecs.encode`, Pillow), so the stored bytes are those
of an episode decoded to RGB and encoded afterwards. Memory then holds the encoded frames
and at most `_IN_FLIGHT` decoded ones, never a whole episode's pixels (a five-minute 720p
episode is some 25 GB of RGB). Without it, RGB frames come back as one (T, H, W, 3) array,
or, from `decode_chunks`, as arrays of `CHUNK` frames, one at a time.
"""

from __future__ import annotations

import bisect
import collections
import math
import os
import threading
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from kinodb._optional import require
from kinodb.errors import ConversionError
from kinodb.kdb import _codecs

TOLERANCE_S = 1e-4
_PLANAR_FORMATS = ("yuv420p", "yuvj420p")
_BT601 = (2, 5, 6)  # AVColorSpace: unspecified (FFmpeg reads it as BT.601), BT470BG, SMPTE170M
_FULL_RANGE = 2  # AVColorRange JPEG
_IN_FLIGHT = 32  # frames decoded but not yet encoded, at most
_CODECS = ("jpeg", "png")
CHUNK = 32  # frames a `decode_chunks` array holds


def _av() -> Any:
    return require("av", extra="lerobot")


def encoder_threads() -> int:
    """JPEG encoder threads: half the CPUs this process may run on (the decoder has its own).

    On two cores one encoding thread beside FFmpeg's threaded decoder was measured faster
    than two, which only fight the decoder for the same cores.
    """
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    return max(1, n // 2)


class DamagedVideoError(ConversionError):
    """A video file that is damaged or cut short (a partial download or copy)."""


def damaged(path: str, what: str) -> DamagedVideoError:
    """The error for a damaged or truncated video file: what went wrong, its size, the fix."""
    try:
        size = f"{os.path.getsize(path):,} bytes"
    except OSError:
        size = "size unknown"
    return DamagedVideoError(
        f"{path}: the video file is damaged or truncated ({what}; the file has {size}): replace it with a "
        "complete copy (download or copy it again from where the dataset came from)"
    )


_VIDEO_HEADS = (b"ftyp", b"moov", b"mdat", b"free", b"wide")  # ISO BMFF (mp4/mov) boxes, at bytes 4-8
_EBML = b"\x1a\x45\xdf\xa3"  # Matroska/WebM


def _looks_like_video(path: str) -> bool:
    """Whether the file starts as an mp4/mov or Matroska/WebM file does."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(8)
    except OSError:
        return False
    return head[4:8] in _VIDEO_HEADS or head[:4] == _EBML


def open_video(path: str) -> tuple[Any, Any]:
    """Open ``path`` and return ``(container, video stream)`` with threaded decoding.

    Raises:
        ConversionError: the file is missing, unreadable, or holds no video stream;
            `DamagedVideoError` when it starts as a video file but is damaged or cut short.
    """
    av = _av()
    if not os.path.isfile(path):
        raise ConversionError(f"{path}: missing video file")
    try:
        container = av.open(path)
    except (av.FFmpegError, OSError) as exc:
        if isinstance(exc, av.FFmpegError) and _looks_like_video(path):
            raise damaged(path, f"FFmpeg cannot read it: {exc.strerror or exc}") from None
        raise ConversionError(f"{path}: not a readable video file ({exc})") from None
    if not container.streams.video:
        # A header that stops early lists no stream, or one whose kind and codec are unknown.
        unknown = all(getattr(s, "codec_context", None) is None for s in container.streams)
        container.close()
        if unknown and _looks_like_video(path):
            raise damaged(path, "FFmpeg finds no video stream with a codec in it")
        raise ConversionError(f"{path}: holds no video stream")
    stream = container.streams.video[0]
    if stream.codec_context is None:  # FFmpeg found no decoder for the stream's codec
        try:
            frames = len(stream.index_entries)
        except (AttributeError, TypeError):  # PyAV before 17 has no index_entries
            frames = int(getattr(stream, "frames", 0) or 0)
        container.close()
        if not frames:  # and no frame in its index either: the header stops short
            raise damaged(path, "its video stream names no codec and lists no frames")
        raise ConversionError(
            f"{path}: this FFmpeg build (PyAV {av.__version__}) has no decoder for the codec of its video "
            "stream; install a PyAV build that decodes it, or re-encode the video as H.264"
        )
    stream.thread_type = "AUTO"  # frame and slice threads; output is identical
    return container, stream


class VideoReader:
    """One video file, open and decoded forward across `decode_at` calls."""

    # Without the file's keyframe index (PyAV before 17): decode on to a later start rather
    # than seek, when it is at most this far ahead.
    AHEAD_S = 2.0
    # With it: seek (reopen the file at the keyframe at or before the start) when that
    # keyframe lies more than this past where decoding stands; a reopen and seek cost about
    # as much as decoding a few frames.
    SEEK_S = 0.1

    def __init__(self, path: str) -> None:
        self.path = path
        self._container: Any = None
        self._stream: Any = None
        self._decoded: Iterator[Any] | None = None  # None: nothing decoded since the last (re)open
        self._held: tuple[float, Any] | None = None  # decoded, not yet handed out
        self._last = -math.inf  # time of the last frame handed out
        self._keys: npt.NDArray[np.float64] | None = None  # keyframe times, read on first need

    def _reopen(self) -> None:
        self.close()
        self._container, self._stream = open_video(self.path)

    def continues_at(self, start: float) -> bool:
        """Whether frames from ``start`` on come next, none of them handed out yet, and
        decoding on to them costs less than seeking. The next episode of a LeRobot v3
        file does; one a few episodes further on (an ingest worker converts every n-th
        episode) does not when a keyframe lies in between, as in LeRobot's videos (a
        keyframe every 2 frames)."""
        if self._decoded is None or self._last >= start:
            return False
        nxt = self._held[0] if self._held is not None else self._last
        keys = self._keyframes()
        if not len(keys):
            return start <= nxt + self.AHEAD_S
        k = int(np.searchsorted(keys, start, side="right"))  # keys[k - 1]: where a seek lands
        return k == 0 or float(keys[k - 1]) <= nxt + self.SEEK_S

    def _keyframes(self) -> npt.NDArray[np.float64]:
        """Keyframe times (seconds, ascending) from the open file's index, read once;
        empty where PyAV has no index (before 17) or the index lists no keyframe."""
        if self._keys is None:
            stream = self._stream
            try:
                tb = stream.time_base.numerator / stream.time_base.denominator
                stamps = [e.timestamp for e in stream.index_entries if e.is_keyframe]
            except (AttributeError, TypeError):  # no time base, or no index (PyAV before 17)
                tb, stamps = 0.0, []
            self._keys = np.sort(np.array(stamps, np.float64) * tb)
        return self._keys

    def frames(self, seek_to: float | None, *, resume: bool = False) -> Iterator[tuple[float, Any]]:
        """``(time, frame)`` in decoding order: where the last call stopped (``resume``), else
        from the keyframe at or before ``seek_to``, else from the start of the file."""
        if not resume:
            self._reopen()
            self._held, self._last = None, -math.inf
            if seek_to is not None:
                stream = self._stream
                self._container.seek(max(0, math.floor(seek_to / stream.time_base)), stream=stream)
            self._decoded = iter(self._container.decode(self._stream))
        assert self._decoded is not None
        if self._held is not None:
            held, self._held = self._held, None
            yield held
        # pts * num / den in integers then one division: the same float as float(pts * time_base)
        # without a Fraction per frame.
        num, den = self._stream.time_base.numerator, self._stream.time_base.denominator
        for frame in self._decoded:
            pts = frame.pts
            if pts is None:
                raise ConversionError(f"{self.path}: a frame has no presentation timestamp")
            yield pts * num / den, frame

    def done(self, last: float, held: tuple[float, Any] | None) -> None:
        """Record where a call stopped: the last frame it handed out, and one it read past it."""
        self._last, self._held = last, held

    def broken(self) -> None:
        """Forget the decoding state (after an error): the next call reopens the file."""
        self._decoded, self._held = None, None

    def close(self) -> None:
        self._decoded, self._held = None, None
        if self._container is not None:
            self._container.close()
            self._container = None


@dataclass(frozen=True, slots=True)
class _Output:
    """What `decode_at` hands back for the wanted frames."""

    codec: str | None  # "jpeg" or "png": every frame encoded; None: RGB pixels (or planar JPEGs)
    quality: int | None  # JPEG quality
    planar: bool  # 4:2:0 BT.601 frames may be JPEG-encoded from their planes
    flip: bool  # frames turned 180 degrees


def decode_at(
    path: str,
    times: npt.NDArray[np.float64],
    *,
    tolerance: float = TOLERANCE_S,
    seek: bool = False,
    jpeg_quality: int | None = None,
    reader: VideoReader | None = None,
    image_codec: str | None = None,
    flip: bool = False,
    others: tuple[int, int] = (0, 0),
) -> npt.NDArray[np.uint8] | list[bytes]:
    """Frames of ``path`` nearest to each time in ``times`` (seconds), as uint8 (T, H, W, 3) RGB.

    With ``jpeg_quality``, frames the planar path can take come back as a list of JPEG
    bytes (one per time) instead; any other video still returns RGB, unless
    ``image_codec`` (``"jpeg"``, at ``jpeg_quality``, or ``"png"``) asks for every frame
    encoded, as the writer encodes pixels. ``flip`` turns the frames 180 degrees (planar
    JPEGs are made of unturned frames only). ``reader`` (for ``path``) is left open,
    positioned after the last frame used. ``others``: how many times a caller decoding in
    chunks asks for before these and after them (a short video's message counts them).

    Raises:
        ConversionError: the file is missing or unreadable, ends before the last wanted
            time (a short video), or has no frame within ``tolerance`` of a wanted time;
            the message names the file and the first frame at fault.
        ValueError: ``image_codec`` is not ``"jpeg"`` or ``"png"``, or is ``"jpeg"``
            without ``jpeg_quality``.
    """
    if image_codec not in (None, *_CODECS) or (image_codec == "jpeg" and jpeg_quality is None):
        raise ValueError(f"image_codec must be 'jpeg' (with jpeg_quality) or 'png', got {image_codec!r}")
    times = np.asarray(times, np.float64)
    if times.size == 0:
        raise ConversionError(f"{path}: no frame times asked for")
    if not np.isfinite(times).all():
        raise ConversionError(f"{path}: frame times must be finite numbers")
    planar_ok = (
        jpeg_quality is not None and not flip and image_codec in (None, "jpeg") and _simplejpeg() is not None
    )
    output = _Output(image_codec, jpeg_quality, planar_ok, flip)
    order = np.argsort(times, kind="stable")
    wanted = times[order]
    start = float(wanted[0]) - tolerance
    own = reader is None
    video = VideoReader(path) if reader is None else reader
    try:
        out = None
        if not own and video.continues_at(start):
            out = _match(video, wanted, tolerance, None, output, others, resume=True)
        if out is None:
            out = _match(video, wanted, tolerance, start if seek and start > 0 else None, output, others)
        if out is None:  # the seek landed past the first wanted frame: decode from the start
            out = _match(video, wanted, tolerance, None, output, others)
    except BaseException:
        video.broken()
        raise
    finally:
        if own:
            video.close()
    assert out is not None
    if order[-1] == len(order) - 1 and (order[:-1] < order[1:]).all():
        return out  # already in order (the usual case): no copy
    if isinstance(out, list):
        back: list[bytes] = [b""] * len(out)
        for k, i in enumerate(order.tolist()):
            back[i] = out[k]
        return back
    result = np.empty_like(out)
    result[order] = out
    return result


def decode_chunks(
    path: str,
    times: npt.NDArray[np.float64],
    *,
    chunk: int = CHUNK,
    tolerance: float = TOLERANCE_S,
    seek: bool = False,
    reader: VideoReader | None = None,
    flip: bool = False,
) -> Iterator[tuple[int, npt.NDArray[np.uint8]]]:
    """`decode_at`'s RGB frames, ``chunk`` at a time: ``(start, frames)``, frames being uint8
    (n, H, W, 3) for ``times[start:start + n]``.

    Times in increasing order (the usual case) are decoded forward once, across the chunks,
    with one reader kept open (``reader`` when given, left open as `decode_at` leaves it);
    times out of order come back as one chunk.

    Raises:
        ConversionError: as `decode_at`, while iterating; also when a chunk's frames have
            another size than the earlier ones.
    """
    times = np.asarray(times, np.float64)
    step = chunk if bool((np.diff(times) >= 0).all()) else len(times)
    own = reader is None
    video = VideoReader(path) if reader is None else reader
    shape: tuple[int, ...] | None = None
    try:
        for a in range(0, max(len(times), 1), max(step, 1)):
            part = times[a : a + step]
            others = (a, len(times) - a - len(part))  # counted in a short video's message
            frames = decode_at(
                path, part, tolerance=tolerance, seek=seek, reader=video, flip=flip, others=others
            )
            assert isinstance(frames, np.ndarray)  # no codec asked for: pixels
            if shape is None:
                shape = frames.shape[1:]
            elif frames.shape[1:] != shape:
                raise ConversionError(
                    f"{path}: the frame at {float(part[0]):.6f} s is {frames.shape[1:]}, earlier frames {shape}"
                )
            yield a, frames
    finally:
        if own:
            video.close()


def _match(
    video: VideoReader,
    wanted: npt.NDArray[np.float64],
    tolerance: float,
    seek_to: float | None,
    output: _Output,
    others: tuple[int, int] = (0, 0),
    *,
    resume: bool = False,
) -> npt.NDArray[np.uint8] | list[bytes] | None:
    """Decode forward, keeping per sorted wanted time the nearest frame (None: seek overshot)."""
    av = _av()
    path = video.path
    # One converter for the whole file: `frame.to_ndarray(format=...)` builds a new one per
    # frame; the pixels are the same, the set-up cost is not.
    rgb24 = av.video.reformatter.VideoReformatter()
    # Per frame, plain Python on floats: a frame matches at most a few wanted times, and
    # NumPy's per-call cost would outweigh the work.
    times = wanted.tolist()
    best = [math.inf] * len(times)
    out: npt.NDArray[np.uint8] | None = None
    jobs: _Encodes | None = None
    seen: list[float] = []
    first, last = times[0] + tolerance, times[-1] + tolerance
    held: tuple[float, Any] | None = None
    try:
        for t, frame in video.frames(seek_to, resume=resume):
            if seek_to is not None and not seen and t > first:
                return None
            if t > last and seen:
                held = (t, frame)  # the first frame past this call's times: the next call may want it
                break
            seen.append(t)
            lo = bisect.bisect_left(times, t - tolerance)
            hi = bisect.bisect_right(times, t + tolerance, lo)
            take = [k for k in range(lo, hi) if abs(times[k] - t) < best[k]]
            if take:
                if jobs is None and out is None:
                    jobs = _Encodes.start(len(times), output, frame)
                if jobs is not None:
                    jobs.add(take, frame, path, t)
                else:
                    # One thread: the decoder's own threads already use the cores, and
                    # swscale's would contend with them (same pixels either way).
                    rgb = reformat(rgb24, frame, "rgb24").to_ndarray()
                    if out is None:
                        out = np.empty((len(wanted), *rgb.shape), np.uint8)
                    elif rgb.shape != out.shape[1:]:
                        raise ConversionError(
                            f"{path}: the frame at {t:.6f} s is {rgb.shape}, earlier frames {out.shape[1:]}"
                        )
                    out[take] = rgb[::-1, ::-1] if output.flip else rgb
                for k in take:
                    best[k] = abs(times[k] - t)
        encoded = jobs.result(path) if jobs is not None else None
    except av.FFmpegError as exc:
        raise damaged(path, f"decoding failed after {len(seen)} frames: {exc.strerror or exc}") from None
    finally:
        if jobs is not None:
            jobs.cancel()
    if seen:
        video.done(seen[-1], held)
    if (seek_to is not None or resume) and not seen:
        return None  # sought or resumed past the end: decode afresh to say how short the file is
    missing = np.flatnonzero(~np.isfinite(np.asarray(best)))
    if missing.size:
        decoded = [*seen, held[0]] if held is not None else seen
        if not decoded:
            raise damaged(
                path, f"no frame decodes; the frame at {float(wanted[int(missing[0])]):.6f} s is needed"
            )
        raise ConversionError(_miss_message(path, wanted, int(missing[0]), decoded, tolerance, others))
    if encoded is not None:
        return encoded
    assert out is not None
    return out


# -- JPEG straight from the decoder's planes ------------------------------------------------


def _simplejpeg() -> Any:
    """simplejpeg, or None without it or where it is older than 1.8 (no ``encode_jpeg_yuv_planes``:
    the RGB path then encodes the frames)."""
    try:
        import simplejpeg
    except ImportError:
        return None
    return simplejpeg if hasattr(simplejpeg, "encode_jpeg_yuv_planes") else None


def planar(frame: Any) -> bool:
    """Whether ``frame`` can be JPEG-encoded from its own planes with the same colours as RGB."""
    return (
        frame.format.name in _PLANAR_FORMATS
        and int(frame.colorspace) in _BT601
        and frame.width % 2 == 0
        and frame.height % 2 == 0
    )


_reformat_threads = True  # PyAV before 17 has no ``threads`` argument (and one thread)


def reformat(reformatter: Any, frame: Any, fmt: str) -> Any:
    """``frame`` converted to pixel format ``fmt`` on one thread, on any PyAV >= 12."""
    global _reformat_threads
    if _reformat_threads:
        try:
            return reformatter.reformat(frame, format=fmt, threads=1)
        except TypeError as exc:
            if "threads" not in str(exc):
                raise
            _reformat_threads = False
    return reformatter.reformat(frame, format=fmt)


_pool_lock = threading.Lock()
_pools: dict[int, ThreadPoolExecutor] = {}
_local = threading.local()


def _pool() -> ThreadPoolExecutor:
    # Keyed by pid: a pool inherited through fork has no threads.
    pid = os.getpid()
    with _pool_lock:
        pool = _pools.get(pid)
        if pool is None:
            pool = _pools[pid] = ThreadPoolExecutor(encoder_threads(), thread_name_prefix="kinodb-jpeg")
        return pool


def encode_planar(frame: Any, quality: int) -> bytes:
    """One 4:2:0 frame as JPEG from its Y, Cb, Cr planes (stretched to full range first)."""
    if frame.format.name != "yuvj420p" and int(frame.color_range) != _FULL_RANGE:
        reformatter = getattr(_local, "reformatter", None)
        if reformatter is None:
            reformatter = _local.reformatter = _av().video.reformatter.VideoReformatter()
        frame = reformat(reformatter, frame, "yuvj420p")
    planes = [
        np.frombuffer(p, np.uint8).reshape(p.height, p.line_size)[:, : p.width] for p in frame.planes[:3]
    ]
    return bytes(_simplejpeg().encode_jpeg_yuv_planes(*planes, quality=quality, fastdct=False))


def encode_rgb(frame: Any, codec: str, quality: int, flip: bool) -> bytes:
    """One frame's RGB pixels (turned 180 degrees with ``flip``), encoded as the writer does."""
    reformatter = getattr(_local, "rgb24", None)
    if reformatter is None:
        reformatter = _local.rgb24 = _av().video.reformatter.VideoReformatter()
    rgb = reformat(reformatter, frame, "rgb24").to_ndarray()
    pixels = np.ascontiguousarray(rgb[::-1, ::-1] if flip else rgb)
    return _codecs.encode(pixels[None], codec, quality)[0]


class _Encodes:
    """Encodes of the wanted frames, running on a thread pool while decoding goes on."""

    def __init__(self, n: int, output: _Output, first: Any) -> None:
        self.output = output
        self.planar = output.planar and planar(first)  # else RGB, encoded with output.codec
        self.size = (first.width, first.height)
        self.slots: list[Future[bytes] | None] = [None] * n
        self.in_flight: collections.deque[Future[bytes]] = collections.deque()

    @classmethod
    def start(cls, n: int, output: _Output, first: Any) -> _Encodes | None:
        """The encodes for ``n`` wanted frames from ``first`` on; None: hand back RGB pixels."""
        if output.codec is None and not (output.planar and planar(first)):
            return None
        return cls(n, output, first)

    @property
    def codec(self) -> str:
        return "jpeg" if self.planar else str(self.output.codec)

    def add(self, take: list[int], frame: Any, path: str, t: float) -> None:
        if (frame.width, frame.height) != self.size or (self.planar and not planar(frame)):
            raise ConversionError(
                f"{path}: the frame at {t:.6f} s is {frame.height}x{frame.width} {frame.format.name}, "
                f"earlier frames {self.size[1]}x{self.size[0]}"
            )
        while len(self.in_flight) >= _IN_FLIGHT:  # bound the decoded frames held in memory
            self._wait(self.in_flight.popleft(), path)
        quality = self.output.quality if self.output.quality is not None else 0  # PNG takes none
        if self.planar:
            job = _pool().submit(encode_planar, frame, quality)
        else:
            job = _pool().submit(encode_rgb, frame, self.codec, quality, self.output.flip)
        self.in_flight.append(job)
        for i in take:
            self.slots[i] = job

    def _wait(self, job: Future[bytes], path: str) -> bytes:
        try:
            return job.result()
        except MemoryError:
            raise  # not the frame's fault: the command says so
        except Exception as exc:
            others = "png or raw" if self.codec == "jpeg" else "raw"
            raise ConversionError(
                f"{path}: {self.codec.upper()} encoding of a decoded frame failed ({type(exc).__name__}: {exc}); "
                f"store the frames with another image codec ({others})"
            ) from None

    def result(self, path: str) -> list[bytes] | None:
        """The encoded frames, or None while some wanted time has no frame (an error follows)."""
        if any(job is None for job in self.slots):
            return None
        return [self._wait(job, path) for job in self.slots if job is not None]

    def cancel(self) -> None:
        for job in self.in_flight:
            job.cancel()


def _miss_message(
    path: str,
    wanted: npt.NDArray[np.float64],
    i: int,
    seen: list[float],
    tol: float,
    others: tuple[int, int] = (0, 0),
) -> str:
    w = float(wanted[i])
    if w > max(seen) + tol:
        before, after = others  # wanted times of other chunks: those after are past the end too
        past = int((wanted > max(seen) + tol).sum()) + after
        return (
            f"{path}: short video: it ends at {max(seen):.6f} s, but a frame at {w:.6f} s is needed "
            f"({past} of {before + len(wanted) + after} wanted frames are past its end); "
            "a file cut short needs replacing with a complete copy"
        )
    near = min(seen, key=lambda s: abs(s - w))
    return (
        f"{path}: no frame within {tol:g} s of {w:.6f} s (nearest at {near:.6f} s); "
        f"the video and the parquet timestamps disagree"
    )
