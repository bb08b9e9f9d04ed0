"""`validate` names what each check that passed covered, and each check that did not run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import kinodb
from _factories import smooth_frames
from _legacy_encoder import encode, encoded_frames, random_episode
from kinodb.kdb import validate as kdb_validate
from kinodb.kdb.validate import validate


def _two_cameras(path: Path, *, nan: bool = False) -> Path:
    """3 episodes of 4 frames, each with JPEG cameras 'front' and 'wrist'."""
    rng = np.random.default_rng(5)
    with kinodb.Writer(path, image_codec="jpeg") as w:
        for i in range(3):
            actions = rng.normal(size=(4, 2)).astype(np.float32)
            if nan and i == 1:
                actions[2, 0] = np.nan
            images = {cam: smooth_frames(rng, (4, 8, 8, 3)) for cam in ("front", "wrist")}
            w.add_episode(actions=actions, images=images)
    return path


def _arrays_only(path: Path) -> Path:
    with kinodb.Writer(path) as w:
        for _ in range(2):
            w.add_episode(actions=np.zeros((3, 2), np.float32))
    return path


def _float_arrays(path: Path) -> int:
    with kinodb.open(path) as db:
        return sum(
            arr.dtype.kind == "f" for i in range(len(db)) for arr in db.read_episode(i).values()
            if isinstance(arr, np.ndarray)
        )  # fmt: skip


def test_each_check_that_passed_says_what_it_covered(tmp_path: Path) -> None:
    path = _two_cameras(tmp_path / "cams.kdb")
    report = validate(path)
    assert report.ok and report.skipped == []
    assert "3 episode payload checksums match, every section inside its payload" in report.passed
    assert "24 frames of 2 cameras decode to their recorded (H, W, C)" in report.passed
    assert f"no NaN or Inf in {_float_arrays(path)} float arrays" in report.passed


def test_frames_not_decoded_are_named_as_skipped(tmp_path: Path) -> None:
    path = _two_cameras(tmp_path / "cams.kdb")
    decoded, undecoded = validate(path), validate(path, decode_images=False)
    assert undecoded.ok and not any("decode" in line for line in undecoded.passed)
    assert undecoded.skipped == [
        "frame decoding: 24 frames of 2 cameras not decoded (--no-decode, decode_images=False)"
    ]
    assert [p for p in decoded.passed if "decode" not in p] == undecoded.passed


def test_nan_found_is_a_warning_not_a_pass(tmp_path: Path) -> None:
    report = validate(_two_cameras(tmp_path / "nan.kdb", nan=True))
    assert report.ok and any("NaN" in w for w in report.warnings)
    assert not any("NaN" in p for p in report.passed)


def test_a_file_without_cameras_says_there_was_nothing_to_decode(tmp_path: Path) -> None:
    report = validate(_arrays_only(tmp_path / "arrays.kdb"))
    assert report.ok and report.skipped == ["frame decoding: the file holds no camera frames"]
    assert not any("decode" in p for p in report.passed)


def test_a_failed_check_passes_nothing_it_covered(tmp_path: Path) -> None:
    path = _two_cameras(tmp_path / "cams.kdb")
    with kinodb.open(path) as db:
        off = int(db._cols["payload_offset"][1]) + 8
    raw = bytearray(path.read_bytes())
    raw[off] ^= 0xFF
    path.write_bytes(bytes(raw))
    report = validate(path, decode_images=False)
    assert any("payload checksum mismatch" in e for e in report.errors)
    assert not any("payload checksums match" in p or "NaN" in p for p in report.passed)
    assert report.skipped == [
        "frame decoding: 24 frames of 2 cameras not decoded (--no-decode, decode_images=False)"
    ]


def test_a_legacy_file_skips_the_checksums_it_does_not_store(tmp_path: Path) -> None:
    rng = np.random.default_rng(9)
    eps = [random_episode(rng, 3, 2, 2) for _ in range(2)]
    eps[1].images = {"cam": encoded_frames(smooth_frames(rng, (3, 8, 8, 3)), "PNG")}
    path = tmp_path / "legacy.kdb"
    path.write_bytes(encode(eps))
    report = validate(path)
    assert report.ok and report.skipped == ["index and payload checksums: format 0.1 stores none"]
    assert not any("payload checksums" in p for p in report.passed)
    assert "3 frames of 1 camera decode to their recorded (H, W, C)" in report.passed
    assert "no NaN or Inf in 6 float arrays" in report.passed


@pytest.mark.parametrize("decode", [True, False])
def test_the_lines_are_the_same_episode_by_episode(
    tmp_path: Path, decode: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _two_cameras(tmp_path / "cams.kdb")
    at_once = validate(path, decode_images=decode)
    monkeypatch.setattr(kdb_validate, "_sound", lambda db, decode_images: None)
    assert validate(path, decode_images=decode) == at_once


def test_a_damaged_directory_claims_no_counts(tmp_path: Path) -> None:
    path = _two_cameras(tmp_path / "cams.kdb")
    with kinodb.open(path) as db:
        cols = db._decoded.columns
        at = cols.byte_offset("sec_count") + cols["sec_count"].itemsize
        value = (cols["sec_count"][1] + 1).tobytes()
    with path.open("r+b") as f:
        f.seek(at)
        f.write(value)
    report = validate(path, decode_images=False)
    assert not report.ok
    assert report.skipped == ["frame decoding: frames not decoded (--no-decode, decode_images=False)"]


def test_one_episode_reads_in_the_singular(tmp_path: Path) -> None:
    path = tmp_path / "one.kdb"
    with kinodb.Writer(path, mode="x") as w:
        w.add_episode(actions=np.zeros((3, 2), np.float32))
    assert "1 episode payload checksum matches, every section inside its payload" in validate(path).passed
