"""RLDS ``flip_images``: frames decoded, turned and encoded a chunk at a time, with the same bytes."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import _rlds_writer as w
import numpy as np
import pytest

import kinodb
from _factories import encode_image, smooth_frames
from kinodb.ingest import SourceOptions, ingest
from kinodb.ingest._rlds_features import FLIP_CHUNK
from kinodb.ingest.rlds import RLDSSource
from kinodb.kdb import _codecs


def _features(shape: tuple[int, int, int]) -> dict[str, object]:
    return {
        "steps": w.dataset({
            "is_first": w.tensor([], "bool"), "is_last": w.tensor([], "bool"), "action": w.tensor([2], "float32"),
            "observation": w.features_dict({"image": w.image(list(shape), "jpeg"),
                                            "wrist": w.image(list(shape), "png")}),
        }),
    }  # fmt: skip


def _dataset(
    root: Path, lengths: list[int], shape: tuple[int, int, int]
) -> tuple[Path, list[dict[str, list[bytes]]]]:
    """Episodes of ``lengths`` steps with a JPEG and a PNG camera; also each one's frames."""
    rng = np.random.default_rng(11)
    records, cams = [], []
    for T in lengths:
        frames = {
            "image": [encode_image(f, "JPEG", quality=90) for f in smooth_frames(rng, (T, *shape))],
            "wrist": [encode_image(f, "PNG") for f in smooth_frames(rng, (T, *shape))],
        }
        cams.append(frames)
        records.append(w.episode_example({
            "steps/is_first": np.r_[1, np.zeros(T - 1, np.int64)],
            "steps/is_last": np.r_[np.zeros(T - 1, np.int64), 1],
            "steps/action": rng.normal(size=(T, 2)).astype(np.float32),
            "steps/observation/image": frames["image"], "steps/observation/wrist": frames["wrist"],
        }))  # fmt: skip
    return w.write_tfds(root, "flip_ds", {"train": [records]}, _features(shape)), cams


def _turned(blobs: list[bytes], shape: tuple[int, int, int]) -> np.ndarray:
    return np.ascontiguousarray(_codecs.decode(blobs, shape, "test")[:, ::-1, ::-1])


@pytest.mark.parametrize("codec", ["jpeg", "png"])
def test_stored_bytes_are_those_of_encoding_the_whole_turned_episode(tmp_path: Path, codec: str) -> None:
    shape = (16, 12, 3)
    lengths = [2 * FLIP_CHUNK + 5, 3, FLIP_CHUNK]  # chunks with a remainder, one short, one whole
    root, cams = _dataset(tmp_path / "flip_ds" / "1.0.0", lengths, shape)
    out = tmp_path / f"{codec}.kdb"
    report = ingest(root, out, flip_images=True, image_codec=codec, jpeg_quality=80, verify=True)
    assert report.verification is not None and report.verification.ok
    with kinodb.open(out) as db:
        assert db.metadata()["image_orientation"] == "rotated_180"
        for i, frames in enumerate(cams):
            for cam, blobs in frames.items():
                want = _codecs.encode(_turned(blobs, shape), codec, 80)
                got = [db.read_image_bytes(i, cam, t) for t in range(lengths[i])]
                assert got == want, (i, cam)


def test_raw_frames_are_the_turned_pixels_and_verify_compares_them_a_chunk_at_a_time(tmp_path: Path) -> None:
    shape = (16, 12, 3)
    root, cams = _dataset(tmp_path / "flip_ds" / "1.0.0", [FLIP_CHUNK + 7], shape)
    out = tmp_path / "raw.kdb"
    report = ingest(root, out, flip_images=True, image_codec="raw", verify=True)
    assert report.verification is not None and report.verification.ok
    with kinodb.open(out) as db:
        images = db.read_episode(0)["images"]
        for cam, blobs in cams[0].items():
            np.testing.assert_array_equal(images[cam], _turned(blobs, shape))
    source = RLDSSource(str(root), SourceOptions(flip_images=True, frame_chunks=True))
    [key] = source.episodes()
    chunks = source.read(key)["images"]["image"]
    assert len(chunks) == FLIP_CHUNK + 7
    parts = list(chunks)
    assert [a for a, _ in parts] == [0, FLIP_CHUNK] and max(len(p) for _, p in parts) == FLIP_CHUNK
    np.testing.assert_array_equal(np.concatenate([p for _, p in parts]), _turned(cams[0]["image"], shape))


def _peak(source: RLDSSource, key: str) -> int:
    tracemalloc.start()
    try:
        source.read(key)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_a_long_episode_is_never_all_decoded(tmp_path: Path) -> None:
    """Memory holds the episode's encoded frames and a chunk of pixels: below one copy of its pixels
    when the frames are stored encoded, one copy when they are stored raw."""
    shape, T = (64, 64, 3), 1200
    pixels = T * int(np.prod(shape)) * 2  # both cameras
    root, _ = _dataset(tmp_path / "flip_ds" / "1.0.0", [T], shape)
    jpeg = RLDSSource(str(root), SourceOptions(flip_images=True, jpeg_quality=95, image_codec="jpeg"))
    [key] = jpeg.episodes()
    assert _peak(jpeg, key) < pixels * 0.75  # formerly decoded, then copied turned: twice the pixels
    raw = RLDSSource(str(root), SourceOptions(flip_images=True))
    assert _peak(raw, key) < pixels * 1.5  # the pixels themselves, once (formerly twice)
