"""Camera frames in `verify`: stored frames against the source episode's, one camera at a time.

Frames the source holds encoded must be stored byte for byte, and each stored frame must
decode in full as the reader decodes it (a damaged frame of the source, stored byte for
byte, is still damaged). Frames encoded from the source's pixels are decoded in chunks
and compared by PSNR: lossless codecs (``png``, ``raw``) must decode exactly; ``jpeg``
frames must reach the report's threshold, or (with the default threshold) come within
`CODEC_MARGIN_DB` of what a fresh JPEG encode of the source frame at the recorded
quality reaches.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

from kinodb.errors import CorruptFileError, KinodbError
from kinodb.ingest._base import FrameChunks
from kinodb.ingest._verify_report import CODEC_MARGIN_DB, CameraCheck, VerifyReport
from kinodb.kdb import _codecs
from kinodb.kdb.reader import Database

_CHUNK = 64  # frames decoded at a time for the PSNR
_LISTED = 10  # frame numbers named in one problem line
_LOSSLESS = ("raw", "png")


class _SourceUnreadable(Exception):
    """The source's frames fail to decode while they are compared (`FrameChunks`)."""


class FrameChecker:
    """Compares an output's camera frames with the source's, recording into ``report``."""

    def __init__(self, db: Database, report: VerifyReport, jpeg_quality: int) -> None:
        self.db, self.report = db, report
        self.jpeg_quality = jpeg_quality  # what frames encoded as JPEG were encoded with

    def compare(self, i: int, where: str, images: Mapping[str, Any]) -> None:
        """Every camera of output episode ``i`` against the source episode's ``images``."""
        stored = self.db.cameras(i)
        for cam in [*images, *(c for c in stored if c not in images)]:
            if cam not in stored or cam not in images:
                side = "missing from the output" if cam not in stored else "not in the source"
                self.report.add("cameras", f"{where}: camera {cam!r} is {side}")
                continue
            check = self.report.cameras.setdefault(cam, CameraCheck())
            check.codecs.add(stored[cam]["codec"])
            value = images[cam]
            if isinstance(value, FrameChunks):  # decoded as compared: errors surface here
                try:
                    self._pixels(i, f"{where}: camera {cam!r}", cam, stored[cam], value, check)
                except _SourceUnreadable as exc:
                    self.report.add("unreadable", f"{where}: the source episode cannot be read now: {exc}")
                continue
            if isinstance(value, np.ndarray):
                self._pixels(i, f"{where}: camera {cam!r}", cam, stored[cam], value, check)
                continue
            if isinstance(value, _codecs.EncodedFrames):  # read back with the channels it sets
                channels = stored[cam]["shape"][-1]
                if channels != value.channels:
                    self.report.add("cameras", f"{where}: camera {cam!r} reads back with {channels} channels, "
                                    f"the source's frames with {value.channels}")  # fmt: skip
                value = value.frames
            self._bytes(i, f"{where}: camera {cam!r}", cam, tuple(stored[cam]["shape"]), list(value), check)

    def _bytes(
        self, i: int, where: str, cam: str, shape: tuple[int, ...], blobs: list[Any], check: CameraCheck
    ) -> None:
        """Encoded source frames: the stored frames must be the same bytes, and decode."""
        T = shape[0]
        if len(blobs) != T:
            self.report.add("cameras", f"{where} has {T} frames, the source {len(blobs)}")
            return
        check.frames += T
        check.passed_through += T
        stored = self.db.read_images_bytes(i, cam, 0, T)
        same = np.fromiter((s == bytes(b) for s, b in zip(stored, blobs, strict=True)), bool, T)
        check.byte_identical += int(same.sum())
        if not same.all():
            bad = np.flatnonzero(~same)
            self.report.add(
                "images", f"{where}: {len(bad)} frames differ from the source's bytes "
                f"(first: frame {int(bad[0])})",
            )  # fmt: skip
        self._decodes(where, stored, shape, check)

    def _decodes(self, where: str, stored: list[bytes], shape: tuple[int, ...], check: CameraCheck) -> None:
        """Decode every stored frame in full, as the reader does: byte identity does not
        make a frame readable when the source's own frame is damaged."""
        out = np.empty((1, *shape[1:]), np.uint8)
        failed: list[tuple[int, str]] = []
        for t, blob in enumerate(stored):
            try:
                _codecs.decode_into(out, [blob], where, first=t)
            except CorruptFileError as exc:
                failed.append((t, str(exc)))
        check.decoded += len(stored) - len(failed)
        if not failed:
            return
        first = failed[0][1]
        if len(failed) == 1:
            self.report.add("decode", first)
            return
        frames = ", ".join(str(f) for f, _ in failed[:_LISTED]) + (", ..." if len(failed) > _LISTED else "")
        detail = first.removeprefix(f"{where}, ")  # "frame 1: image does not decode (...)"
        self.report.add(
            "decode", f"{where}: {len(failed)} stored frames do not decode (frames {frames}); {detail}"
        )

    def _pixels(
        self,
        i: int,
        where: str,
        cam: str,
        stored: Mapping[str, Any],
        frames: np.ndarray | FrameChunks,
        check: CameraCheck,
    ) -> None:
        """Pixel source frames: exact for lossless codecs, else a PSNR at least the threshold.

        Compared a chunk at a time: `FrameChunks` are decoded only as they are compared.
        """
        codec, shape = stored["codec"], tuple(stored["shape"])
        chunks = _chunks(frames)
        first = next(chunks, None)
        if first is None:  # an array of no frames
            empty = frames if not isinstance(frames, np.ndarray) or frames.ndim == 4 else frames[..., None]
            want_shape: tuple[int, ...] = empty.shape if isinstance(empty, np.ndarray) else (0,)
        else:
            want_shape = (len(frames), *first[1].shape[1:])
        if want_shape != shape:
            self.report.add("cameras", f"{where} is {shape}, the source {want_shape}")
            return
        T = shape[0]
        threshold = self.report.psnr_threshold
        relative = self.report.codec_relative and codec == "jpeg"
        psnr, fresh = np.empty(T), np.full(T, np.nan)  # fresh: a fresh JPEG encode's, under the threshold
        done = 0
        for a, part in itertools.chain([first] if first is not None else [], chunks):
            b = a + len(part)
            if a != done or b > T or part.shape[1:] != shape[1:]:
                self.report.add("cameras", f"{where} is {shape}, the source {(T, *part.shape[1:])}")
                return
            got = self.db.read_frames(i, a, b, cameras=[cam])["images"][cam]
            psnr[a:b] = frame_psnr(got, part)
            low = np.flatnonzero(psnr[a:b] < threshold)
            if relative and low.size:
                fresh[a + low] = self._fresh(part[low], where)
            done = b
        check.frames += T
        check.reencoded += T
        check.exact += int(np.isinf(psnr).sum())
        worst = float(psnr.min()) if T else math.inf
        check.min_psnr = min(check.min_psnr, worst)
        if codec in _LOSSLESS and not math.isinf(worst):
            self.report.add(
                "images",
                f"{where} ({codec}, lossless) differs at frame {int(psnr.argmin())} (PSNR {worst:.2f} dB)",
            )
        elif worst < threshold:
            self._lossy(where, codec, psnr, fresh, check)

    def _fresh(self, frames: np.ndarray, where: str) -> np.ndarray:
        """The PSNR of a fresh JPEG encode of ``frames`` at the recorded quality."""
        again = _codecs.decode(_codecs.encode(frames, "jpeg", self.jpeg_quality), frames.shape[1:], where)
        return frame_psnr(again, frames)

    def _lossy(self, where: str, codec: str, psnr: np.ndarray, fresh: np.ndarray, check: CameraCheck) -> None:
        """Frames under the threshold: a failure, unless (by default) a fresh encode of the
        source frame at the recorded quality (``fresh``) loses about as much."""
        threshold = self.report.psnr_threshold
        low = np.flatnonzero(psnr < threshold)
        if not (self.report.codec_relative and codec == "jpeg"):
            frame = int(low[psnr[low].argmin()])
            self.report.add(
                "images",
                f"{where} ({codec}): PSNR {psnr[frame]:.2f} dB at frame {frame}, below the threshold {threshold:g} dB",
            )
            return
        quality = self.jpeg_quality
        short = fresh[low] - psnr[low]  # how far each frame falls short of a fresh encode
        bad = short > CODEC_MARGIN_DB
        check.codec_limited += int((~bad).sum())
        if bad.any():
            k = int(np.flatnonzero(bad)[short[bad].argmax()])
            self.report.add(
                "images",
                f"{where} ({codec}): PSNR {psnr[low[k]]:.2f} dB at frame {int(low[k])}, below the threshold "
                f"{threshold:g} dB and {short[k]:.2f} dB below a fresh JPEG q{quality} encode of the source "
                f"frame ({fresh[low[k]]:.2f} dB): not the source's frame, or damaged",
            )


def _chunks(frames: np.ndarray | FrameChunks) -> Iterator[tuple[int, np.ndarray]]:
    """``(start, frames)`` chunks of (T, H, W, C) frames (a channel axis added to (T, H, W))."""
    if isinstance(frames, FrameChunks):
        decoded = iter(frames)
        while True:
            try:
                a, part = next(decoded)
            except StopIteration:
                return
            except (KinodbError, ValueError, KeyError, OSError) as exc:  # what reading the episode raises
                raise _SourceUnreadable(str(exc)) from exc
            yield a, part if part.ndim == 4 else part[..., None]
    want = frames if frames.ndim == 4 else frames[..., None]
    for a in range(0, len(want), _CHUNK):
        yield a, want[a : a + _CHUNK]


def frame_psnr(got: np.ndarray, want: np.ndarray) -> np.ndarray:
    """Per-frame PSNR in dB of uint8 ``(T, H, W, C)`` frames (inf where they are equal)."""
    d = got.astype(np.int16) - want.astype(np.int16)
    mse = np.square(d, dtype=np.int32).reshape(len(d), -1).mean(axis=1)
    with np.errstate(divide="ignore"):
        out: np.ndarray = 10.0 * np.log10(255.0**2 / mse)
    return out
