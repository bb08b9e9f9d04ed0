"""Encode camera frames into mp4 files with PyAV: H.264 or AV1, yuv420p, episodes back to back.

Frame ``n`` of a file is shown at exactly ``n / fps`` seconds, so an episode that starts at
frame ``s`` of the file spans ``[s / fps, (s + T) / fps)``, and its first frame is forced to
be a keyframe: each episode decodes on its own.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import numpy as np

from kinodb._optional import require
from kinodb.errors import ConversionError


@dataclass(frozen=True, slots=True)
class VideoCodec:
    """An encoder and its settings.

    Attributes:
        name: the codec name PyAV reports when reading the file back (``info.json``).
        encoder: the FFmpeg encoder.
        options: encoder options; ``g=2`` (a keyframe every 2 frames) as LeRobot writes,
            which keeps random access cheap.
    """

    name: str
    encoder: str
    options: dict[str, str] = field(default_factory=dict)


# H.264 at CRF 20 is close to visually lossless; AV1 uses LeRobot's own defaults
# (libsvtav1, CRF 30, preset 12).
CODECS = {
    "h264": VideoCodec("h264", "libx264", {"g": "2", "crf": "20"}),
    "av1": VideoCodec("av1", "libsvtav1", {"g": "2", "crf": "30", "preset": "12"}),
}
PIX_FMT = "yuv420p"
# SVT-AV1 refuses frames with a side under 4 pixels, and never finishes a file (its flush
# hangs, deaf to Ctrl-C) whose frames are narrow and long: a short side of 24 pixels or
# less with a long side over 64, at any frame count. Side lengths of 26 to 30 encode, but
# the rule keeps a margin: frames it names are stored as images instead of hanging.
_AV1_MIN_SIDE = 4
_AV1_NARROW_SIDE = 32  # a short side under this ...
_AV1_LONG_SIDE = 64  # ... with a long side over this: never encoded as AV1


def frame_rate(fps: float) -> Fraction:
    """``fps`` as the exact fraction the encoder runs at (30000/1001 for 29.97...)."""
    return Fraction(fps).limit_denominator(10_000)


def unencodable(height: int, width: int, channels: int, *, codec: str = "h264") -> str | None:
    """Why frames of this shape cannot be a yuv420p video of ``codec`` (a `CODECS` key), or None if they can."""
    if channels != 3:
        return f"{channels} channel(s), but a yuv420p video holds RGB (3 channels)"
    if height % 2 or width % 2:
        return f"size {height}x{width} is odd, but yuv420p needs even height and width"
    if codec == "av1":
        short, long = min(height, width), max(height, width)
        if short < _AV1_MIN_SIDE:
            return (
                f"size {height}x{width}: the AV1 encoder (SVT-AV1) needs sides of {_AV1_MIN_SIDE} pixels or "
                "more; --video-codec h264 encodes it"
            )
        if short < _AV1_NARROW_SIDE and long > _AV1_LONG_SIDE:
            return (
                f"size {height}x{width}: the AV1 encoder (SVT-AV1) never finishes a video whose frames have a "
                f"side under {_AV1_NARROW_SIDE} pixels and the other over {_AV1_LONG_SIDE}; --video-codec h264 "
                "encodes it"
            )
    return None


class VideoFile:
    """One mp4 file being written; episodes are appended back to back.

    Example:
        >>> with VideoFile("front.mp4", CODECS["h264"], fps=15.0, height=96, width=128) as v:
        ...     v.add(frames, episode_start=True)
    """

    def __init__(
        self, path: str, codec: VideoCodec, *, fps: float, height: int, width: int, camera: str | None = None
    ) -> None:
        av = require("av", extra="lerobot")
        if codec.encoder not in getattr(av, "codecs_available", (codec.encoder,)):
            raise ConversionError(
                f"this PyAV build (av {getattr(av, '__version__', '?')}) has no {codec.encoder} encoder "
                f"for {codec.name} video: pip install -U av (PyAV 15 or later carries libsvtav1 and "
                "libx264), or choose the other --video-codec"
            )
        if codec.encoder == "libsvtav1":
            # SVT-AV1 prints a banner and its settings to stderr for every file unless told
            # otherwise; keep errors only, unless the caller chose a level.
            os.environ.setdefault("SVT_LOG", "1")
        self.path = path
        self.camera = camera  # named in errors, before the path
        self.frames = 0  # frames written so far
        self.bytes = 0  # encoded bytes muxed so far
        self._failed = False  # the encoder or muxer raised: nothing more is muxed
        self._av = av
        self._encoder = codec.encoder
        self._rate = frame_rate(fps)
        self._time_base = 1 / self._rate
        self._container: Any = av.open(path, "w", format="mp4", options={"movflags": "faststart"})
        try:
            self._stream: Any = self._container.add_stream(
                codec.encoder, rate=self._rate, options=dict(codec.options)
            )
            self._stream.width, self._stream.height = width, height
            self._stream.pix_fmt = PIX_FMT
        except Exception as exc:
            self._container.close()
            raise ConversionError(
                f"cannot start a {codec.name} video ({codec.encoder}) at {path}: {exc}"
            ) from exc

    def add(self, frames: np.ndarray, *, episode_start: bool) -> None:
        """Encode uint8 ``(n, H, W, 3)`` RGB frames; the first is a keyframe if ``episode_start``."""
        av = self._av
        for k, frame in enumerate(frames):
            vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
            vf.pts = self.frames
            vf.time_base = self._time_base
            if episode_start and k == 0:
                vf.pict_type = av.video.frame.PictureType.I
            self._encode(vf)
            self.frames += 1

    def _encode(self, frame: Any) -> None:
        """Encode ``frame`` (None: drain the encoder) and mux the packets that come out."""
        try:
            for packet in self._stream.encode(frame):
                self.bytes += packet.size
                self._container.mux(packet)
        except self._av.FFmpegError as exc:  # an encoder or muxer failure: kinodb's error, exit 1
            self._failed = True
            what = f"camera {self.camera!r} ({self.path})" if self.camera is not None else self.path
            raise ConversionError(
                f"{what}: the {self._encoder} encoder failed after {self.frames} frames of "
                f"{self._stream.height}x{self._stream.width} ({exc}); export again, with --video-codec h264 "
                "or --images-as image"
            ) from None

    def close(self, *, flush: bool = True) -> None:
        """Finish the file; ``flush=False`` (after a failure) drains the encoder without muxing.

        An encoder that opened is drained either way: SVT-AV1 torn down without its end of
        stream logs an error, and can hang in its teardown. One that failed to open is left
        alone (draining it crashes PyAV 19).
        """
        if self._container is None:
            return
        try:
            if flush and not self._failed:
                self._encode(None)
            elif self._stream.codec_context.is_open:
                with contextlib.suppress(Exception):  # the file is discarded; only the encoder matters
                    for _ in self._stream.encode(None):
                        pass
        finally:
            self._container.close()
            self._container = None

    def __enter__(self) -> VideoFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
