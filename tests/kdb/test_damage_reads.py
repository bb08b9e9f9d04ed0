"""Reads of an index whose checksum is valid but whose contents contradict the file (a faulty
writer), and of damaged frames: `CorruptFileError` naming the file and the place, never a
bare NumPy error, a huge allocation, or a resized wrong frame."""

from __future__ import annotations

import io
import json
import re
import struct
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

import kinodb
from _factories import encode_image, smooth_frames
from kinodb import CorruptFileError, FrameRangeError, _images
from kinodb.kdb._layout import DTYPE_CODE, INDEX_HEAD, SLOT_OFFSETS, align, crc32
from kinodb.kdb.validate import validate
from kinodb.windows import FrameWindows

ROWS = 4  # section rows per episode: actions, states, rewards, is_terminal


def columns(raw: bytes | bytearray) -> dict[str, int]:
    """Absolute byte offset of each index column of the (only) commit, from the bytes."""
    offset = struct.unpack_from("<Q", raw, SLOT_OFFSETS[0] + 8)[0]
    toc_len = struct.unpack_from("<I", raw, offset + 4)[0]
    toc = json.loads(bytes(raw[offset + INDEX_HEAD.size : offset + INDEX_HEAD.size + toc_len]))
    body = offset + align(INDEX_HEAD.size + toc_len)
    return {name: body + rel for name, (_, rel, _) in toc["columns"].items()}


def rewritten(src: Path, dst: Path, edit: Callable[[bytearray, dict[str, int]], None]) -> Path:
    """A copy of ``src`` edited by ``edit(raw, columns)`` with the commit record made to
    agree (its frame count, the index checksum, its own checksum), as a faulty writer would
    leave it; slot 0 holds the only commit."""
    raw = bytearray(src.read_bytes())
    cols = columns(raw)
    edit(raw, cols)
    slot = SLOT_OFFSETS[0]
    offset, length, episodes = struct.unpack_from("<QQQ", raw, slot + 8)
    frames = sum(struct.unpack_from(f"<{episodes}Q", raw, cols["num_frames"])) % (1 << 64)
    struct.pack_into("<Q", raw, slot + 32, frames)
    struct.pack_into("<I", raw, slot + 40, crc32(bytes(raw[offset : offset + length])))
    struct.pack_into("<I", raw, slot + 60, crc32(bytes(raw[slot : slot + 60])))
    dst.write_bytes(bytes(raw))
    return dst


@pytest.fixture
def lowdim(tmp_path: Path) -> Path:
    path = tmp_path / "lowdim.kdb"
    with kinodb.Writer(path) as w:
        for e in range(3):
            w.add_episode(actions=np.full((5, 256), e, np.float32), states=np.zeros((5, 2), np.float32))
    return path


# -- frame counts, row ranges and dtypes the file cannot back ---------------------------------


@pytest.mark.parametrize("episodes", [None, [0, 1], [1, 0, 1]])
def test_gather_checks_extents_before_sizing_its_output(lowdim: Path, tmp_path: Path, episodes: Any) -> None:
    def edit(raw: bytearray, cols: dict[str, int]) -> None:
        raw[cols["num_frames"] + 8 + 1] ^= 0x20  # episode 1: 8192 frames more (fewer than the file's bytes)

    path = rewritten(lowdim, tmp_path / "frames.kdb", edit)
    with kinodb.open(path) as db:
        assert db.read_meta(1)["num_frames"] == 8197 < db._size  # a count the file could hold
        tracemalloc.start()
        try:
            with pytest.raises(
                CorruptFileError, match=rf"^{re.escape(str(path))}: episode 1.*(does|do) not fit"
            ):
                db.gather("actions", episodes)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert peak < 1 << 20  # nothing sized from the damaged count (8197 frames of 1 KiB)


@pytest.mark.parametrize(("byte", "mask"), [(3, 0x80), (7, 0x80)])
def test_a_frame_count_the_file_cannot_hold_is_refused_at_open(
    lowdim: Path, tmp_path: Path, byte: int, mask: int
) -> None:
    def edit(raw: bytearray, cols: dict[str, int]) -> None:
        raw[cols["num_frames"] + 8 + byte] ^= mask  # episode 1: 2**31 or 2**63 frames more

    path = rewritten(lowdim, tmp_path / "frames.kdb", edit)
    for use in (kinodb.open, lambda p: FrameWindows(p, action_horizon=4)):
        with pytest.raises(
            CorruptFileError, match=r"the commit record says \d+ frames, more than the file's"
        ):
            use(path)


def test_frame_counts_that_wrap_around_to_the_recorded_total_are_refused(
    lowdim: Path, tmp_path: Path
) -> None:
    def edit(raw: bytearray, cols: dict[str, int]) -> None:
        struct.pack_into(
            "<QQ", raw, cols["num_frames"], 5 + 8, (1 << 64) - 8 + 5
        )  # the sum is unchanged, mod 2**64

    path = rewritten(lowdim, tmp_path / "wrap.kdb", edit)
    with kinodb.open(path) as db:
        assert db.num_frames() == 15
        with pytest.raises(
            CorruptFileError, match=rf"^{re.escape(str(path))}: episode 1: num_frames is {(1 << 64) - 3}"
        ):
            db.read_meta(0)
    with pytest.raises(CorruptFileError, match="episode 1: num_frames is"):
        FrameWindows(path, action_horizon=4)


@pytest.mark.parametrize("high", [0x80, 0x01])
def test_windows_name_a_section_row_range_that_does_not_exist(
    lowdim: Path, tmp_path: Path, high: int
) -> None:
    def edit(raw: bytearray, cols: dict[str, int]) -> None:
        raw[cols["sec_start"] + 8 + 7] ^= high  # episode 1: rows 4.. -> 2**63 + 4.. or 2**56 + 4..

    path = rewritten(lowdim, tmp_path / "rows.kdb", edit)
    first = 4 + (1 << (63 if high == 0x80 else 56))
    message = rf"^{re.escape(str(path))}: episode 1: section rows {first}\.\.{first + ROWS} do not exist \(the section directory has 12 rows\)"
    with pytest.raises(CorruptFileError, match=message):
        FrameWindows(path, action_horizon=4)


def test_gather_names_an_episode_that_contradicts_the_schema(lowdim: Path, tmp_path: Path) -> None:
    def edit(raw: bytearray, cols: dict[str, int]) -> None:
        at = cols["sec.dtype"] + ROWS * 1  # episode 1's actions row: float32 -> float64
        assert raw[at] == DTYPE_CODE[np.dtype("<f4")]
        raw[at] = DTYPE_CODE[np.dtype("<f8")]

    path = rewritten(lowdim, tmp_path / "dtype.kdb", edit)
    schema_says = (
        rf"^{re.escape(str(path))}: episode 1: array 'actions' is float64 \(256,\) per frame, but the dataset "
        r"schema says every episode holds it as float32 \(256,\): the index disagrees with itself"
    )
    with kinodb.open(path) as db, pytest.raises(CorruptFileError, match=schema_says):
        db.gather("actions")
    mixed = tmp_path / "mixed.kdb"  # really mixed dtypes: the schema says so, and it stays a ValueError
    with kinodb.Writer(mixed) as w:
        w.add_episode(actions=np.zeros((3, 2), np.float32))
        w.add_episode(actions=np.zeros((3, 2), np.float64))
    with (
        kinodb.open(mixed) as db,
        pytest.raises(ValueError, match="gather stacks them and needs them alike") as info,
    ):
        db.gather("actions")
    assert not isinstance(info.value, CorruptFileError)


def test_frame_range_errors_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "cam.kdb"
    with kinodb.Writer(path, image_codec="png") as w:
        w.add_episode(actions=np.zeros((3, 2), np.float32), images={"cam": np.zeros((3, 4, 4, 3), np.uint8)})
    with kinodb.open(path) as db:
        with pytest.raises(
            FrameRangeError,
            match=rf"^{re.escape(str(path))}: frames 2:5 outside episode 0, which has frames 0:3",
        ):
            db.read_frames(0, 2, 5)
        with pytest.raises(
            FrameRangeError,
            match=rf"^{re.escape(str(path))}: frame 3 outside episode 0, which has frames 0:3",
        ):
            db.read_image_bytes(0, "cam", 3)


# -- damaged frames -----------------------------------------------------------------------


def _sof_height(jpeg: bytes) -> int:
    """Byte offset of the low byte of the height in a baseline JPEG's SOF0 segment, found by
    walking the marker segments."""
    pos = 2
    while jpeg[pos] == 0xFF and jpeg[pos + 1] != 0xC0:
        pos += 2 + struct.unpack_from(">H", jpeg, pos + 2)[0]
    assert jpeg[pos + 1] == 0xC0
    return pos + 6  # FF C0, length (2), precision (1), height (2, big-endian)


@pytest.fixture
def jpeg_file(tmp_path: Path) -> tuple[Path, int]:
    """A file of one 48x48 JPEG camera; returns it and the byte offset of frame 0."""
    path = tmp_path / "jpeg.kdb"
    frames = smooth_frames(np.random.default_rng(0), (4, 48, 48, 3))
    with kinodb.Writer(path, image_codec="jpeg") as w:
        w.add_episode(actions=np.zeros((4, 2), np.float32), images={"cam": frames})
    with kinodb.open(path) as db:
        at = db._episode_cameras(0)["cam"].data_offset
        assert path.read_bytes()[at : at + 3] == b"\xff\xd8\xff"
    return path, at


@pytest.mark.parametrize("size", [None, (24, 24), (12, 20), (48, 48)])
def test_a_frame_whose_header_contradicts_the_index_is_refused_also_when_resized(
    jpeg_file: tuple[Path, int], tmp_path: Path, size: tuple[int, int] | None
) -> None:
    src, at = jpeg_file
    raw = bytearray(src.read_bytes())
    raw[at + _sof_height(bytes(raw[at:]))] ^= 0x20  # height 48 -> 16
    path = tmp_path / "sof.kdb"
    path.write_bytes(bytes(raw))
    fw = FrameWindows(path, cameras=["cam"])
    with pytest.raises(
        CorruptFileError,
        match=rf"^{re.escape(str(path))}: episode 0, camera 'cam', frame 0: image is 16x48 \(HxW\), the index says 48x48; .*kino validate",
    ):
        fw.images(np.array([0]), size=size)
    blob = bytes(raw[at : at + 2000])
    with pytest.raises(CorruptFileError, match="image is 16x48"):
        _images.decode_one(blob, "jpeg", (48, 48, 3), size, "bilinear", "frame 0")


def test_an_unreadable_frame_names_no_object_and_says_what_to_do(jpeg_file: tuple[Path, int]) -> None:
    garbage = bytes(64)
    for size in (None, (24, 24)):
        with pytest.raises(CorruptFileError) as info:
            _images.decode_one(garbage, "jpeg", (48, 48, 3), size, "bilinear", "x.kdb: episode 0, frame 0")
        text = str(info.value)
        assert "object at 0x" not in text and "<_io" not in text, text
        assert text.startswith(
            "x.kdb: episode 0, frame 0: cannot decode jpeg frame (not a JPEG or PNG image)"
        )
        assert "run kino validate" in text
    path, at = jpeg_file
    raw = bytearray(path.read_bytes())
    raw[at : at + 16] = bytes(16)
    path.write_bytes(bytes(raw))
    with pytest.raises(
        CorruptFileError, match=r"cannot decode jpeg frame \(not a JPEG or PNG image\)"
    ) as info:
        FrameWindows(path, cameras=["cam"]).images(np.array([0]), size=(24, 24))
    assert "object at 0x" not in str(info.value)
    assert not validate(path).ok


def test_a_png_frame_of_another_size_is_refused_when_resized(tmp_path: Path) -> None:
    frames = smooth_frames(np.random.default_rng(1), (2, 20, 30, 3))
    small = encode_image(frames[0][:10], "PNG")  # a frame of the wrong size, stored as it is
    blob = encode_image(frames[1], "PNG")
    assert Image.open(io.BytesIO(small)).size == (30, 10)
    with pytest.raises(CorruptFileError, match="image is 10x30 \\(HxW\\), the index says 20x30"):
        _images.decode_one(small, "png", (20, 30, 3), (8, 8), "area", "f")
    out: Any = _images.decode_one(blob, "png", (20, 30, 3), (8, 8), "area", "f")
    assert out.shape == (8, 8, 3)
