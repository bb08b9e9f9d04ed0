"""JPEG frames straight from a video's 4:2:0 planes, and a video reader that goes on across calls."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest

av = pytest.importorskip("av")
pytest.importorskip("simplejpeg")

import _lerobot_fixtures as F  # noqa: E402
from PIL import Image  # noqa: E402

from kinodb.errors import ConversionError  # noqa: E402
from kinodb.ingest import _video  # noqa: E402


def _jpeg_pixels(blob: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(blob)) as im:
        assert im.format == "JPEG"
        return np.asarray(im.convert("RGB"))


def _exact_bt601(path: Path) -> np.ndarray:
    """Every frame converted from its own planes with the BT.601 formula, in float (N, H, W, 3)."""
    out = []
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            y, u, v = (
                np.frombuffer(p, np.uint8).reshape(p.height, p.line_size)[:, : p.width].astype(np.float64)
                for p in frame.planes
            )
            u, v = (c.repeat(2, 0).repeat(2, 1) for c in (u, v))
            if frame.format.name == "yuvj420p":
                u, v = u - 128, v - 128
            else:  # limited range: stretch to full
                y, u, v = (y - 16) * 255 / 219, (u - 128) * 255 / 224, (v - 128) * 255 / 224
            rgb = np.stack([y + 1.402 * v, y - 0.344136 * u - 0.714136 * v, y + 1.772 * u], -1)
            out.append(np.clip(rgb, 0, 255))
    return np.stack(out)


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(((a.astype(np.float64) - b.astype(np.float64)) ** 2).mean())
    return 10 * np.log10(255.0**2 / mse)


@pytest.mark.parametrize("pix_fmt", ["yuv420p", "yuvj420p"])
def test_jpeg_from_planes_keeps_the_videos_colours(tmp_path: Path, pix_fmt: str) -> None:
    frames = F.frames_for(0, 40, 48, 64)  # more frames than are encoded at once
    path = tmp_path / "v.mp4"
    F.encode_video(path, frames, 10.0, pix_fmt=pix_fmt)
    times, ref = F.reference_decode(path)
    exact = _exact_bt601(path)
    got = _video.decode_at(str(path), times, jpeg_quality=95)
    assert isinstance(got, list) and len(got) == len(times)
    pixels = np.stack([_jpeg_pixels(b) for b in got])
    assert pixels.shape == ref.shape
    # As close to PyAV's RGB as encoding that RGB with Pillow at the same quality (these
    # small, sharp frames are hard for JPEG: about 30 dB either way).
    via_rgb = np.stack([_jpeg_pixels(F.image_bytes(r, "JPEG", quality=95)) for r in ref])
    for p, r, v in zip(pixels, ref, via_rgb, strict=True):
        assert _psnr(p, r) > _psnr(v, r) - 1.0
    # The range is stretched exactly once: no channel is off on average (a missed or a
    # doubled stretch moves the mean by 10 levels or more here).
    bias = (pixels - exact).mean(axis=(0, 1, 2))
    assert np.abs(bias).max() < 2, bias


def test_jpeg_frames_follow_the_order_of_the_times(tmp_path: Path) -> None:
    path = tmp_path / "v.mp4"
    F.encode_video(path, F.frames_for(1, 12, 32, 48), 10.0)
    times, _ = F.reference_decode(path)
    in_order = _video.decode_at(str(path), times, jpeg_quality=90)
    shuffled = [7, 2, 2, 11, 0]
    got = _video.decode_at(str(path), times[shuffled], jpeg_quality=90)
    assert got == [in_order[i] for i in shuffled]


@pytest.mark.parametrize("kind", [{"pix_fmt": "yuv444p"}, {"colorspace": 1}], ids=["yuv444p", "bt709"])
def test_other_videos_take_the_rgb_path(tmp_path: Path, kind: dict[str, Any]) -> None:
    path = tmp_path / "v.mp4"
    F.encode_video(path, F.frames_for(2, 8, 32, 48), 10.0, **kind)
    times, ref = F.reference_decode(path)
    got = _video.decode_at(str(path), times, jpeg_quality=95)
    assert isinstance(got, np.ndarray)
    np.testing.assert_array_equal(got, ref)


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    counts = {"opens": 0, "seeks": 0, "frames": 0}
    F.count_video_opens(monkeypatch, counts)
    return counts


@pytest.mark.parametrize("jpeg", [None, 95])
def test_reader_goes_on_where_the_last_call_stopped(
    tmp_path: Path, counted: dict[str, int], jpeg: int | None
) -> None:
    path = tmp_path / "v.mp4"
    F.encode_video(path, F.frames_for(3, 60, 24, 32), 10.0, gop=4)
    times, ref = F.reference_decode(path)
    reader = _video.VideoReader(str(path))
    try:
        parts = [_video.decode_at(str(path), times[a : a + 10], seek=True, jpeg_quality=jpeg, reader=reader)
                 for a in range(10, 40, 10)]  # fmt: skip
        assert counted == {"opens": 1, "seeks": 1, "frames": counted["frames"]}
        assert counted["frames"] <= 2 + 30 + 1  # from the keyframe at 0.8 s, one frame read ahead
        back = _video.decode_at(str(path), times[5:8], seek=True, jpeg_quality=jpeg, reader=reader)
        assert counted["opens"] == 2  # going back reopens
        far = _video.decode_at(str(path), times[55:60], seek=True, jpeg_quality=jpeg, reader=reader)
        assert counted["seeks"] == 3  # 4.8 s ahead of where it stopped: a seek, not a decode
    finally:
        reader.close()
    own = [
        _video.decode_at(str(path), times[a : a + 10], seek=True, jpeg_quality=jpeg)
        for a in range(10, 40, 10)
    ]
    for got, want in zip(parts, own, strict=True):
        assert type(got) is type(want)
        if jpeg is None:
            np.testing.assert_array_equal(got, want)
        else:
            assert got == want
    if jpeg is None:
        np.testing.assert_array_equal(np.concatenate(parts), ref[10:40])
        np.testing.assert_array_equal(back, ref[5:8])
        np.testing.assert_array_equal(far, ref[55:60])


def test_reader_seeks_over_episodes_it_does_not_convert(tmp_path: Path, counted: dict[str, int]) -> None:
    """An ingest worker converts every other episode of a file: between two of its own it
    seeks to the keyframe at or before the next one's start instead of decoding the
    episode in between (here 1 s of it, which the reader used to decode through); the
    episode that follows its last goes on without a seek."""
    path = tmp_path / "v.mp4"
    F.encode_video(path, F.frames_for(6, 50, 24, 32), 10.0, gop=4)  # a keyframe every 0.4 s
    times, ref = F.reference_decode(path)
    reader = _video.VideoReader(str(path))
    try:
        first = _video.decode_at(str(path), times[0:10], seek=True, reader=reader)
        before = dict(counted)
        third = _video.decode_at(str(path), times[20:30], seek=True, reader=reader)
        assert counted["seeks"] == before["seeks"] + 1
        # From the keyframe at 1.6 s, one frame read ahead: not the frames of 1.1-1.5 s too.
        assert counted["frames"] - before["frames"] <= 4 + 10 + 1
        before = dict(counted)
        fourth = _video.decode_at(str(path), times[30:40], seek=True, reader=reader)
        assert (counted["opens"], counted["seeks"]) == (before["opens"], before["seeks"])
    finally:
        reader.close()
    np.testing.assert_array_equal(first, ref[0:10])
    np.testing.assert_array_equal(third, ref[20:30])
    np.testing.assert_array_equal(fourth, ref[30:40])


def test_reader_reports_a_gap_and_then_reopens(tmp_path: Path, counted: dict[str, int]) -> None:
    path = tmp_path / "v.mp4"
    F.encode_video(path, F.frames_for(4, 20, 24, 32), 10.0, gop=4)
    times, ref = F.reference_decode(path)
    reader = _video.VideoReader(str(path))
    try:
        _video.decode_at(str(path), times[0:5], seek=True, reader=reader)
        with pytest.raises(ConversionError, match=r"no frame within 0\.0001 s of 0\.550000 s"):
            _video.decode_at(str(path), np.array([0.55, 0.6]), seek=True, reader=reader)
        opens = counted["opens"]
        np.testing.assert_array_equal(
            _video.decode_at(str(path), times[6:9], seek=True, reader=reader), ref[6:9]
        )
        assert counted["opens"] == opens + 1  # after an error the reader starts afresh
    finally:
        reader.close()


def test_lerobot_ingest_default_jpeg_from_planes(tmp_path: Path) -> None:
    """The default ingest stores planar JPEGs, the same bytes with 1 or 2 workers, and
    --flip-images (which takes the RGB path) still turns the frames over."""
    import kinodb
    from kinodb.ingest import ingest

    rng = np.random.default_rng(3)
    eps = F.make_episodes(rng, [12, 9, 15], fps=10.0, cameras={F.CAMERA: (32, 48)})
    root = tmp_path / "v3"
    F.write_v3(root, eps, fps=10.0, per_file=2)
    one, two, flipped = tmp_path / "one.kdb", tmp_path / "two.kdb", tmp_path / "flip.kdb"
    ingest(root, one)
    ingest(root, two, workers=2)
    ingest(root, flipped, flip_images=True)
    mp4s = sorted(root.glob("videos/**/*.mp4"))
    ref = np.concatenate([F.reference_decode(p)[1] for p in mp4s])
    exact = np.concatenate([_exact_bt601(p) for p in mp4s])
    with kinodb.open(one) as a, kinodb.open(two) as b, kinodb.open(flipped) as c:
        start = 0
        for i, ep in enumerate(eps):
            T = ep["length"]
            blobs = [a.read_image_bytes(i, "top", t) for t in range(T)]
            assert blobs == [b.read_image_bytes(i, "top", t) for t in range(T)]
            got = a.read_episode(i)["images"]["top"]
            turned = c.read_episode(i)["images"]["top"]
            for t in range(start, start + T):
                # As close to the video's own colours as Pillow's JPEG of PyAV's RGB.
                via_rgb = _jpeg_pixels(F.image_bytes(ref[t], "JPEG", quality=95))
                floor = _psnr(via_rgb, exact[t]) - 1.0
                assert _psnr(got[t - start], exact[t]) > floor
                assert _psnr(turned[t - start], exact[t][::-1, ::-1]) > floor
                assert _psnr(turned[t - start], exact[t]) < floor - 5  # turned over, not by chance close
            start += T


def test_reader_past_the_end_names_a_short_video(tmp_path: Path) -> None:
    path = tmp_path / "v.mp4"
    F.encode_video(path, F.frames_for(5, 10, 24, 32), 10.0, gop=4)
    times, _ = F.reference_decode(path)
    reader = _video.VideoReader(str(path))
    try:
        _video.decode_at(str(path), times[5:], seek=True, reader=reader)  # to the last frame
        with pytest.raises(ConversionError, match=r"short video: it ends at 0\.900000 s"):
            _video.decode_at(str(path), np.array([1.0, 1.1]), seek=True, reader=reader)
    finally:
        reader.close()


class _ReformatterBefore17:
    """PyAV's own reformatter, with the signature of PyAV 12-16 (no ``threads``)."""

    def __init__(self) -> None:
        self._real = av.video.reformatter.VideoReformatter()
        self.calls = 0

    def reformat(self, frame: Any, format: str | None = None) -> Any:
        self.calls += 1
        return self._real.reformat(frame, format=format)


def test_frames_convert_on_pyav_before_17(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "v.mp4"
    F.encode_video(path, F.frames_for(3, 6, 32, 48), 10.0)
    _, ref = F.reference_decode(path)
    old = _ReformatterBefore17()
    with av.open(str(path)) as container:
        frame = next(container.decode(video=0))
    monkeypatch.setattr(_video, "_reformat_threads", True)
    rgb = _video.reformat(old, frame, "rgb24").to_ndarray()
    np.testing.assert_array_equal(rgb, ref[0])
    assert old.calls == 1 and _video._reformat_threads is False  # the next call goes straight there
    np.testing.assert_array_equal(_video.reformat(old, frame, "rgb24").to_ndarray(), ref[0])
    assert old.calls == 2
