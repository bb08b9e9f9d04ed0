"""The preamble: the one-unpack path of `read_preamble` agrees with the step-by-step checks;
the CRC-32 every checksum uses is zlib's."""

from __future__ import annotations

import sys
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import kinodb
from kinodb.kdb import _layout
from kinodb.kdb._layout import DATA_START, latest_commit, parse_header, read_preamble, read_version


def reference(head: bytes, path: str, size: int) -> Any:
    """What the header and slot functions say, one check after the other."""
    parse_header(head[:64], path)
    return read_version(head, path), *latest_commit(head, path, size)


def outcome(fn: Any, *args: Any) -> Any:
    try:
        return ("ok", fn(*args))
    except kinodb.KinodbError as exc:
        return (type(exc).__name__, str(exc))


@pytest.fixture(scope="module")
def appended(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two commits, so both slots hold a valid record."""
    path = tmp_path_factory.mktemp("layout") / "two.kdb"
    for mode in ("x", "a"):
        with kinodb.Writer(path, mode=mode) as w:
            w.add_episode(actions=np.zeros((3, 2), np.float32))
    return path


def test_valid_preambles(appended: Path) -> None:
    raw = appended.read_bytes()
    head, size = raw[:DATA_START], len(raw)
    version, slot, commit = read_preamble(head, str(appended), size)
    assert (version, slot, commit) == reference(head, str(appended), size)
    assert version == (1, 0) and slot == 1 and commit.generation == 2 and commit.num_episodes == 2


def test_every_damaged_preamble_byte_gives_the_same_answer(appended: Path) -> None:
    raw = appended.read_bytes()
    path, size = str(appended), len(raw)
    rng = np.random.default_rng(4)
    seen = set()
    for offset in range(DATA_START):
        for mask in (0x01, 0x80, int(rng.integers(1, 256))):
            head = bytearray(raw[:DATA_START])
            head[offset] ^= mask
            got, want = (
                outcome(read_preamble, bytes(head), path, size),
                outcome(reference, bytes(head), path, size),
            )
            assert got == want, (offset, mask)
            seen.add(got[0])
    assert seen == {"ok", "FormatError", "LegacyFormat", "UnsupportedVersionError", "CorruptFileError"}


@pytest.mark.parametrize("cut", [0, 7, 63, 64, 200, DATA_START - 1])
def test_short_preambles(appended: Path, cut: int) -> None:
    raw = appended.read_bytes()
    with pytest.raises(kinodb.FormatError):
        read_preamble(raw[:cut], str(appended), len(raw))


def test_a_commit_beyond_the_file_is_not_skipped(appended: Path) -> None:
    raw = appended.read_bytes()
    with pytest.raises(kinodb.CorruptFileError, match="truncated or damaged"):
        read_preamble(raw[:DATA_START], str(appended), len(raw) - 1)


@pytest.mark.parametrize("size", [0, 1, 63, 64, 4097, 1 << 20])
def test_crc32_is_zlibs_crc32_whichever_implementation_runs(size: int) -> None:
    data = np.random.default_rng(size).integers(0, 256, size, dtype=np.uint8)
    view = memoryview(data)
    assert _layout.crc32(view) == zlib.crc32(view)
    half = size // 2  # continued from a running value, as the writer streams a payload
    assert _layout.crc32(view[half:], _layout.crc32(view[:half])) == zlib.crc32(view)
    assert _layout.crc32(view, 12345) == zlib.crc32(view, 12345)


def test_crc32_uses_isal_where_it_is_installed() -> None:
    isal_zlib = pytest.importorskip(
        "isal.isal_zlib", reason="isal is not installed (it has no wheel for this machine)"
    )
    assert _layout._crc32 is isal_zlib.crc32


def test_crc32_falls_back_to_zlib_without_isal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "isal.isal_zlib", None)  # import fails as where it is absent
    assert _layout._crc32_impl() is zlib.crc32
