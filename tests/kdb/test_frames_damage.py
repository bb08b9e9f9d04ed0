"""Encoded frames passed through `Writer.add_episode`: a damaged frame is refused, naming the
camera, the frame and what is wrong; complete frames (padded ones too) keep their bytes."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

import kinodb
from _factories import decode_image, encode_image, smooth_frames
from kinodb import WriterError
from kinodb.kdb import _codecs
from kinodb.kdb.validate import validate

SAMPLES = Path(__file__).resolve().parents[2].parent / "shared" / "samples"
BRIDGE = SAMPLES / "octo_bridge_rlds" / "bridge_dataset" / "1.0.0"
T = 4
ACTIONS = np.zeros((T, 2), np.float32)


@pytest.fixture(scope="module")
def frames() -> np.ndarray:
    return smooth_frames(np.random.default_rng(5), (T, 96, 128, 3))


def encoded(frames: np.ndarray, fmt: str, **options: Any) -> list[bytes]:
    return [encode_image(f, fmt, **options) for f in frames]


def write(path: Path, images: dict[str, Any]) -> None:
    with kinodb.Writer(path, image_codec="raw") as w:
        w.add_episode(actions=ACTIONS, images=images)


def refused(tmp_path: Path, images: list[bytes] | dict[str, Any], match: str) -> str:
    """Add ``images`` (a list: camera ``front``'s frames) and expect a `WriterError`; the
    writer stays usable, the file holds only the good episode added after it, and it validates."""
    path = tmp_path / "w.kdb"
    with kinodb.Writer(path, image_codec="raw") as w:
        with pytest.raises(WriterError, match=match) as info:
            w.add_episode(actions=ACTIONS, images=images if isinstance(images, dict) else {"front": images})
        w.add_episode(actions=ACTIONS)
    with kinodb.open(path) as db:
        assert len(db) == 1 and db.cameras(0) == {}
    assert validate(path).ok
    return str(info.value)


# -- truncated frames are refused ---------------------------------------------------------


@pytest.mark.parametrize(
    "options", [{}, {"progressive": True}, {"optimize": True}], ids=["base", "prog", "opt"]
)
@pytest.mark.parametrize("cut", [0.5, 0.9, 2, 1], ids=["half", "tenth", "no-EOI", "last-byte"])
def test_truncated_jpeg_is_refused(
    tmp_path: Path, frames: np.ndarray, options: dict[str, Any], cut: float
) -> None:
    blobs = encoded(frames, "JPEG", **options)
    good = blobs[2]
    blobs[2] = good[: int(len(good) * cut)] if cut < 1 else good[: len(good) - int(cut)]
    message = refused(tmp_path, blobs, r"images\['front'\]\[2\] is a damaged jpeg frame: truncated")
    assert f"no JPEG end-of-image marker (FF D9) in its {len(blobs[2])} bytes" in message
    with pytest.raises(OSError, match=r"(?i)truncated"):  # what a reader would have met
        decode_image(blobs[2])


@pytest.mark.parametrize("cut", [0.5, 12, 4, 1], ids=["half", "no-IEND", "no-CRC", "last-byte"])
def test_truncated_png_is_refused(tmp_path: Path, frames: np.ndarray, cut: float) -> None:
    blobs = encoded(frames, "PNG")
    good = blobs[3]
    blobs[3] = good[: int(len(good) * cut)] if cut < 1 else good[: len(good) - int(cut)]
    message = refused(tmp_path, blobs, r"images\['front'\]\[3\] is a damaged png frame: truncated")
    assert "IEND chunk" in message and "leave this episode out" in message


def test_truncated_then_zero_padded_jpeg_is_refused(tmp_path: Path, frames: np.ndarray) -> None:
    """A cut frame padded back to its size (a fixed-size buffer): a decoder may read the
    zeros as image data without a word; the missing end-of-image marker gives it away."""
    blobs = encoded(frames, "JPEG")
    good = blobs[1]
    blobs[1] = good[: len(good) // 2] + bytes(len(good) - len(good) // 2)
    refused(
        tmp_path, blobs, r"images\['front'\]\[1\] is a damaged jpeg frame: truncated: no JPEG end-of-image"
    )


def test_a_truncated_frame_behind_a_marker_in_its_header_is_refused(
    tmp_path: Path, frames: np.ndarray
) -> None:
    """FF D9 inside a header segment (here a comment; an EXIF thumbnail ends with one) is not
    the image's end: the bytes after it are decoded, and the decode fails."""
    blobs = encoded(frames, "JPEG", comment=b"thumb \xff\xd9 end")
    good = blobs[0]
    assert good.find(b"\xff\xd9") < len(good) - 2  # the comment's marker
    blobs[0] = good[: len(good) * 2 // 3]
    message = refused(tmp_path, blobs, r"images\['front'\]\[0\] is a damaged jpeg frame: ")
    assert (
        "bytes follow its JPEG end-of-image marker (FF D9), and it does not decode (OSError: image file is truncated"
        in message
    )


def test_encoded_frames_with_channels_are_checked_too(tmp_path: Path, frames: np.ndarray) -> None:
    blobs = encoded(frames, "JPEG")
    blobs[3] = blobs[3][:-2]
    refused(tmp_path, {"front": _codecs.EncodedFrames(blobs, 3)}, r"images\['front'\]\[3\] is a damaged jpeg")


def test_the_first_damaged_frame_is_named_among_several_cameras(tmp_path: Path, frames: np.ndarray) -> None:
    good = encoded(frames, "PNG")
    bad = encoded(frames, "JPEG")
    bad[1], bad[2] = bad[1][: len(bad[1]) * 2 // 3], bad[2][:-5]
    refused(tmp_path, {"front": good, "wrist": bad}, r"images\['wrist'\]\[1\] is a damaged jpeg frame")


# -- complete frames pass byte for byte ---------------------------------------------------


@pytest.mark.parametrize(
    "tail", [b"\x00" * 7, b"\xff" * 3, b"\x00\xff" * 600], ids=["zeros", "ff", "long-mixed"]
)
@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_padding_after_the_end_marker_is_kept_byte_for_byte(
    tmp_path: Path, frames: np.ndarray, fmt: str, tail: bytes
) -> None:
    blobs = [b + tail * (t % 2) for t, b in enumerate(encoded(frames, fmt))]  # odd frames padded
    path = tmp_path / "pad.kdb"
    write(path, {"front": blobs})
    with kinodb.open(path) as db:
        assert [db.read_image_bytes(0, "front", t) for t in range(T)] == blobs
        got = db.read_frames(0, 0, T, cameras=["front"])["images"]["front"]
    np.testing.assert_array_equal(got, np.stack([decode_image(b) for b in blobs]))
    if fmt == "PNG":
        np.testing.assert_array_equal(got, frames)
    assert validate(path).ok


def test_other_bytes_after_the_end_marker_are_kept_when_the_frame_decodes(
    tmp_path: Path, frames: np.ndarray
) -> None:
    """Trailing metadata after EOI, as some cameras append: Pillow reads the image, and so
    does every kinodb reader; the writer keeps it."""
    blobs = encoded(frames, "JPEG")
    blobs = [b + b"trailer: exposure=12ms" for b in blobs]
    path = tmp_path / "trailer.kdb"
    write(path, {"front": blobs})
    with kinodb.open(path) as db:
        assert [db.read_image_bytes(0, "front", t) for t in range(T)] == blobs
        db.read_episode(0)
    assert validate(path).ok


def test_simplejpeg_frames_pass_through(tmp_path: Path, frames: np.ndarray) -> None:
    simplejpeg = pytest.importorskip("simplejpeg", reason="simplejpeg (the lerobot extra) is not installed")
    blobs = [bytes(simplejpeg.encode_jpeg(np.ascontiguousarray(f), quality=90)) for f in frames]
    path = tmp_path / "sj.kdb"
    write(path, {"front": blobs})
    with kinodb.open(path) as db:
        assert [db.read_image_bytes(0, "front", t) for t in range(T)] == blobs


def test_bridge_sample_frames_are_complete() -> None:
    """Every JPEG of the real Bridge sample ends with its end-of-image marker."""
    if not BRIDGE.exists():
        pytest.skip(f"the Bridge sample is not at {BRIDGE}")
    from kinodb.ingest import SourceOptions
    from kinodb.ingest.rlds import RLDSSource

    source = RLDSSource(str(BRIDGE), SourceOptions())
    try:
        count = 0
        for key in source.episodes()[:5]:
            for value in source.read(key)["images"].values():
                for blob in getattr(value, "frames", value):
                    assert _codecs.damage(bytes(blob), "jpeg") is None
                    count += 1
        assert count > 100
    finally:
        source.close()


# -- the check itself ---------------------------------------------------------------------


def test_damage_names_what_is_wrong(frames: np.ndarray) -> None:
    jpeg, png = encode_image(frames[0], "JPEG"), encode_image(frames[0], "PNG")
    assert _codecs.damage(jpeg, "jpeg") is None and _codecs.damage(png, "png") is None
    assert (
        _codecs.damage(jpeg[:-2], "jpeg")
        == f"truncated: no JPEG end-of-image marker (FF D9) in its {len(jpeg) - 2} bytes"
    )
    assert _codecs.damage(png[:-12], "png") == f"truncated: no PNG IEND chunk in its {len(png) - 12} bytes"
    assert _codecs.damage(png[:-2], "png") == "truncated: its PNG IEND chunk is cut short"
    assert _codecs.damage(png + b"\x00\x00", "png") is None
    assert _codecs.damage(png + b"xyz", "png") is None  # Pillow stops at IEND
    buf = io.BytesIO()
    Image.fromarray(frames[0]).save(buf, "JPEG", comment=b"\xff\xd9")
    cut = buf.getvalue()[:-40]
    after = cut.find(b"\xff\xd9") + 2  # the comment's marker
    problem = _codecs.damage(cut, "jpeg")
    assert problem is not None and problem.startswith(
        f"{len(cut) - after} bytes follow its JPEG end-of-image"
    )
    assert _codecs.decode_problem(jpeg) is None
    assert "image file is truncated" in (_codecs.decode_problem(jpeg[:-2]) or "")


def test_the_refusal_reaches_json_metadata_untouched(tmp_path: Path, frames: np.ndarray) -> None:
    """The message is plain text (no object addresses), fit for ingest's skip list."""
    blobs = encoded(frames, "JPEG")
    blobs[0] = blobs[0][: len(blobs[0]) * 2 // 3]
    message = refused(tmp_path, blobs, "damaged jpeg frame")
    assert json.loads(json.dumps(message)) == message and " at 0x" not in message


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_frames_of_one_encoder_are_checked_without_a_parse_per_frame(
    tmp_path: Path, frames: np.ndarray, fmt: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Complete frames that share frame 0's header (one encoder's output, as a converter
    passes them through) are checked in a few passes over the list; a frame that does not
    fit that mould is still checked on its own, and named."""
    calls = {"damage": 0, "probe": 0}
    for name in calls:
        real = getattr(_codecs, name)

        def counted(*args: Any, _real: Any = real, _name: str = name) -> Any:
            calls[_name] += 1
            return _real(*args)

        monkeypatch.setattr(_codecs, name, counted)
    blobs = encoded(frames, fmt)
    path = tmp_path / "alike.kdb"
    write(path, {"front": blobs})
    assert calls == {"damage": 0, "probe": 0}
    with kinodb.open(path) as db:
        assert [db.read_image_bytes(0, "front", t) for t in range(T)] == blobs
        assert db.cameras(0)["front"]["shape"] == (T, 96, 128, 3)
    cut = [*blobs[:2], blobs[2][:-20], blobs[3]]
    assert "front'][2]" in refused(tmp_path, cut, "damaged")
    assert calls["damage"] == 3  # frames 0-2, one by one, up to the damaged one
