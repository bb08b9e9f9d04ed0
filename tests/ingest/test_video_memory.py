"""Video frames encoded as they are decoded: an episode's pixels are never all held at once.

Peak allocations are measured with tracemalloc (NumPy reports its arrays to it, Python
its bytes objects); a whole episode of RGB pixels is ``T * H * W * 3`` bytes, and the
encoded frames of these flat-coloured videos are a small part of that. The frames stored
must be the very bytes of the episode decoded to RGB and then encoded by the writer.
"""

from __future__ import annotations

import io
import re
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pytest

av = pytest.importorskip("av")
pytest.importorskip("pyarrow")
pytest.importorskip("simplejpeg")

import _lerobot_fixtures as F  # noqa: E402
from PIL import Image  # noqa: E402

import kinodb  # noqa: E402
from kinodb.ingest import SourceOptions, _video, ingest  # noqa: E402
from kinodb.ingest.lerobot import LeRobotSource  # noqa: E402
from kinodb.kdb import _codecs  # noqa: E402

T, H, W = 240, 96, 128
RAW = T * H * W * 3  # one episode of RGB pixels: 8.8 MB
BT709 = 1  # AVColorSpace
R = TypeVar("R")


def _flat_frames(T: int) -> np.ndarray:
    """uint8 (T, H, W, 3): one colour per frame and a bright block that moves, off-centre
    so that a frame turned 180 degrees differs from the frame."""
    out = np.empty((T, H, W, 3), np.uint8)
    for t in range(T):
        out[t] = ((t * 5) % 160 + 40, (t * 3) % 160 + 40, 120)
        x0 = (t * 4) % (W - 24)
        out[t, 8:24, x0 : x0 + 16] = 240
    return out


def _peak(fn: Callable[[], R]) -> tuple[R, int]:
    """``fn()`` and the peak of the memory traced while it ran, in bytes."""
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        result = fn()
        return result, tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()


def _dataset(tmp_path: Path, colorspace: int | None, n: int = T) -> tuple[Path, Path]:
    """A one-episode LeRobot v2.1 dataset of ``n`` flat frames, and its mp4 (re-encoded in
    ``colorspace`` when given)."""
    eps = F.make_episodes(np.random.default_rng(0), [n], cameras={F.CAMERA: (8, 8)})
    eps[0]["frames"][F.CAMERA] = _flat_frames(n)
    root = F.write_v2(tmp_path / "ds", eps, gop=10)
    mp4 = root / "videos" / "chunk-000" / F.CAMERA / "episode_000000.mp4"
    if colorspace is not None:
        F.encode_video(mp4, _flat_frames(n), 10.0, gop=10, colorspace=colorspace)
    return root, mp4


def _read(root: Path, **options: Any) -> Any:
    source = LeRobotSource(root, SourceOptions(**options))
    try:
        key = source.episodes()[0]
        return _peak(lambda: source.read(key)["images"]["top"])
    finally:
        source.close()


def _pixels(blob: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(blob)) as im:
        return np.asarray(im.convert("RGB"))


@pytest.mark.parametrize(
    ("colorspace", "flip"),
    [(BT709, False), (BT709, True), (None, True)],
    ids=["bt709", "bt709-flip", "bt601-flip"],
)
def test_jpeg_frames_are_encoded_as_they_are_decoded(
    tmp_path: Path, colorspace: int | None, flip: bool
) -> None:
    root, mp4 = _dataset(tmp_path, colorspace)
    frames, peak = _read(root, jpeg_quality=95, flip_images=flip)
    assert isinstance(frames, list) and len(frames) == T
    assert peak < RAW / 4, f"{peak:,} bytes traced, an episode of pixels is {RAW:,}"
    # The bytes the writer made of the whole episode decoded to RGB (and turned over).
    _, ref = F.reference_decode(mp4)
    turned = np.ascontiguousarray(ref[:, ::-1, ::-1]) if flip else ref
    assert frames == _codecs.encode(turned, "jpeg", 95)


@pytest.mark.parametrize("flip", [False, True], ids=["upright", "flip"])
def test_png_frames_are_encoded_as_they_are_decoded(tmp_path: Path, flip: bool) -> None:
    _, mp4 = _dataset(tmp_path, BT709)
    times, ref = F.reference_decode(mp4)
    frames, peak = _peak(lambda: _video.decode_at(str(mp4), times, image_codec="png", flip=flip))
    assert isinstance(frames, list) and len(frames) == T
    assert peak < RAW / 4, f"{peak:,} bytes traced, an episode of pixels is {RAW:,}"
    turned = np.ascontiguousarray(ref[:, ::-1, ::-1]) if flip else ref
    assert frames == _codecs.encode(turned, "png", 95)
    np.testing.assert_array_equal(np.stack([_pixels(b) for b in frames]), turned)  # lossless


def test_turned_pixels_are_not_copied(tmp_path: Path) -> None:
    """Raw frames are one episode of pixels (nothing less can hold them), turned in place."""
    root, mp4 = _dataset(tmp_path, BT709)
    frames, peak = _read(root, flip_images=True)
    _, ref = F.reference_decode(mp4)
    np.testing.assert_array_equal(frames, ref[:, ::-1, ::-1])
    assert frames.flags.c_contiguous
    assert peak < RAW * 1.5, f"{peak:,} bytes traced, an episode of pixels is {RAW:,}"


def test_ingest_stores_the_same_frames_as_encoding_the_decoded_episode(tmp_path: Path) -> None:
    root, mp4 = _dataset(tmp_path, BT709)
    _, ref = F.reference_decode(mp4)
    out = tmp_path / "out.kdb"
    report, peak = _peak(lambda: ingest(root, out, flip_images=True, jpeg_quality=90))
    assert report.episodes == 1
    assert peak < RAW / 2, f"{peak:,} bytes traced, an episode of pixels is {RAW:,}"
    with kinodb.open(out) as db:
        stored = [db.read_image_bytes(0, "top", t) for t in range(T)]
    assert stored == _codecs.encode(np.ascontiguousarray(ref[:, ::-1, ::-1]), "jpeg", 90)


@pytest.mark.parametrize("flip", [False, True], ids=["upright", "flip"])
def test_png_ingest_stores_the_same_frames_as_encoding_the_decoded_episode(
    tmp_path: Path, flip: bool
) -> None:
    root, mp4 = _dataset(tmp_path, BT709)
    _, ref = F.reference_decode(mp4)
    turned = np.ascontiguousarray(ref[:, ::-1, ::-1]) if flip else ref
    out = tmp_path / "out.kdb"
    report, peak = _peak(lambda: ingest(root, out, image_codec="png", flip_images=flip))
    assert report.episodes == 1
    assert peak < RAW / 2, f"{peak:,} bytes traced, an episode of pixels is {RAW:,}"
    with kinodb.open(out) as db:
        stored = [db.read_image_bytes(0, "top", t) for t in range(T)]
    assert stored == _codecs.encode(turned, "png", 95)
    np.testing.assert_array_equal(np.stack([_pixels(b) for b in stored]), turned)  # lossless


LONG = 4 * T  # verify's own chunks of frames (and their int16/int32 PSNR sums) weigh some 8 MB


@pytest.mark.parametrize(
    ("version", "codec", "flip"),
    [("v2.1", "jpeg", True), ("v2.1", "png", False), ("v3.0", "jpeg", False)],
    ids=["v2-jpeg-flip", "v2-png", "v3-jpeg"],
)
def test_verify_compares_decoded_frames_a_chunk_at_a_time(
    tmp_path: Path, version: str, codec: str, flip: bool
) -> None:
    episodes = 1 if version == "v2.1" else 3
    if version == "v2.1":
        root, _ = _dataset(tmp_path, BT709, LONG)
    else:  # one file of three episodes: each is reached from where the last one stopped
        eps = F.make_episodes(np.random.default_rng(0), [LONG] * episodes, cameras={F.CAMERA: (H, W)})
        for ep in eps:
            ep["frames"][F.CAMERA] = _flat_frames(LONG)
        root = F.write_v3(tmp_path / "ds", eps, per_file=episodes, gop=10)
    out = tmp_path / "out.kdb"
    ingest(root, out, image_codec=codec, flip_images=flip)
    report, peak = _peak(lambda: kinodb.ingest.verify(root, out))
    assert report.ok, report.summary()
    assert report.cameras["top"].reencoded == episodes * LONG
    raw = LONG * H * W * 3
    assert peak < raw / 3, f"{peak:,} bytes traced, an episode of pixels is {raw:,}"


def test_verify_reports_a_video_that_fails_while_it_is_compared(tmp_path: Path) -> None:
    root, mp4 = _dataset(tmp_path, BT709, LONG)
    out = tmp_path / "out.kdb"
    ingest(root, out)
    F.encode_video(mp4, _flat_frames(LONG)[: LONG // 2], 10.0, gop=10, colorspace=BT709)  # cut short
    report = kinodb.ingest.verify(root, out)
    assert report.mismatches == {"unreadable": 1}
    assert re.fullmatch(
        r"episode 0 \(episode_000000\): the source episode cannot be read now: .*episode_000000\.mp4: short "
        r"video: it ends at 47\.900000 s, but a frame at 48\.000000 s is needed \(480 of 960 wanted frames "
        r"are past its end\); .* \(episode 0, camera 'top', feature 'observation\.images\.top'\)",
        report.problems[0],
    ), report.problems[0]


def test_a_frame_that_cannot_be_encoded_names_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, mp4 = _dataset(tmp_path, BT709)
    times, _ = F.reference_decode(mp4)

    def broken(frames: np.ndarray, codec: str, quality: int) -> list[bytes]:
        raise OSError("encoder failed")

    monkeypatch.setattr(_codecs, "encode", broken)
    with pytest.raises(
        kinodb.ConversionError,
        match=r"episode_000000\.mp4: PNG encoding of a decoded frame failed \(OSError: encoder failed\); "
        r"store the frames with another image codec \(raw\)",
    ):
        _video.decode_at(str(mp4), times, image_codec="png")


def test_image_codec_needs_a_known_codec_and_a_quality(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="image_codec must be"):
        _video.decode_at(str(tmp_path / "v.mp4"), np.zeros(1), image_codec="jpeg")
    with pytest.raises(ValueError, match="image_codec must be"):
        _video.decode_at(str(tmp_path / "v.mp4"), np.zeros(1), image_codec="raw")


@pytest.mark.parametrize("frames", [0, 12])
def test_a_stream_without_a_codec_on_an_older_pyav_is_a_conversion_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, frames: int
) -> None:
    from kinodb.ingest import _video

    av = _video._av()
    path = tmp_path / "cut.mp4"
    path.write_bytes(b"\0\0\0\x18ftypisom" + bytes(64))

    class OldStream:  # PyAV < 17: no index_entries; the header's frame count instead
        codec_context = None

        def __init__(self) -> None:
            self.frames = frames

    class Streams:
        video = (OldStream(),)

    class Container:
        streams = Streams()

        def close(self) -> None:
            pass

    monkeypatch.setattr(av, "open", lambda *_a, **_k: Container())
    expected = "names no codec and lists no frames" if frames == 0 else "has no decoder for the codec"
    with pytest.raises(kinodb.ConversionError, match=expected):
        _video.open_video(str(path))
