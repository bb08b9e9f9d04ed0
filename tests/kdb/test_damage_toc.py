"""A damaged table of contents or column in the index block: a column's dtype or place that
is not the format's is named as damage by `validate`, the reader and appends; `validate`
never raises past a failed index checksum; and a reader that found the checksum wrong
serves nothing more through the damaged index."""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import kinodb
from kinodb import CorruptFileError, KinodbError
from kinodb._cli.main import main
from kinodb.kdb import validate as validate_mod
from kinodb.kdb._layout import INDEX_HEAD, SLOT_OFFSETS, align, crc32
from kinodb.kdb.reader import Database
from kinodb.kdb.validate import validate

# -- files and the bytes of their index ----------------------------------------------------


def _write(path: Path, *, cameras: bool = False, n: int = 3) -> Path:
    with kinodb.Writer(path, mode="w", image_codec="raw") as w:
        for k in range(n):
            w.add_episode(
                actions=np.full((4, 7), k, np.float32), task=f"task {k}",
                images={"cam": np.zeros((4, 8, 8, 3), np.uint8)} if cameras else None,
                extra={"n": k, "s": f"s{k}", "j": [k]},
            )  # fmt: skip
    return path


def _slot(raw: bytes | bytearray) -> int:
    """Byte offset of the commit record with the highest generation."""
    return max(SLOT_OFFSETS, key=lambda at: struct.unpack_from("<Q", raw, at)[0])


def _toc(raw: bytes | bytearray) -> tuple[int, dict[str, Any], int]:
    """``(TOC byte offset, TOC, body byte offset)`` of the newest commit's index."""
    offset = struct.unpack_from("<Q", raw, _slot(raw) + 8)[0]
    toc_len = struct.unpack_from("<I", raw, offset + 4)[0]
    at = offset + INDEX_HEAD.size
    return at, json.loads(bytes(raw[at : at + toc_len])), offset + align(INDEX_HEAD.size + toc_len)


def _column_at(raw: bytes | bytearray, name: str) -> int:
    _, toc, body = _toc(raw)
    return int(body + toc["columns"][name][1])


def _recommit(raw: bytearray) -> None:
    """Give the newest commit record the index's CRC-32 again (a faulty writer's file)."""
    slot = _slot(raw)
    offset, length = struct.unpack_from("<QQ", raw, slot + 8)
    struct.pack_into("<I", raw, slot + 40, crc32(bytes(raw[offset : offset + length])))
    struct.pack_into("<I", raw, slot + 60, crc32(bytes(raw[slot : slot + 60])))


def _retype(column: str, dtype: str) -> Callable[[bytearray], None]:
    """An edit storing ``dtype`` (as long as the stored one) as ``column``'s dtype in the TOC."""

    def edit(raw: bytearray) -> None:
        at, toc, _ = _toc(raw)
        stored = toc["columns"][column][0]
        assert len(stored) == len(dtype)
        needle = json.dumps({column: [stored]}, separators=(",", ":"))[1:-2].encode()
        pos = raw.index(needle, at)
        raw[pos : pos + len(needle)] = needle.replace(f'"{stored}"'.encode(), f'"{dtype}"'.encode())

    return edit


def _shift(column: str) -> Callable[[bytearray], None]:
    """An edit changing the last digit of ``column``'s offset in the TOC (one byte)."""

    def edit(raw: bytearray) -> None:
        at, toc, _ = _toc(raw)
        dtype, rel, _ = toc["columns"][column]
        needle = f'"{column}":["{dtype}",{rel},'.encode()
        pos = raw.index(needle, at) + len(needle) - 2
        raw[pos] = ord("0") + (raw[pos] - ord("0") + 1) % 10

    return edit


def _damaged(src: Path, dst: Path, edit: Callable[[bytearray], None], *, fix: bool) -> Path:
    raw = bytearray(src.read_bytes())
    edit(raw)
    if fix:
        _recommit(raw)
    dst.write_bytes(bytes(raw))
    return dst


# Column dtypes and places one flipped bit or a faulty writer can leave in the TOC, and the
# column each names.
TOC_DAMAGE = {
    "sec_start <u8 as 8u8 (a sub-array)": (_retype("sec_start", "8u8"), "sec_start"),
    "episode_id <u8 as <U8 (unicode)": (_retype("episode_id", "<U8"), "episode_id"),
    "task.dict_offsets <u8 as 8u8": (_retype("task.dict_offsets", "8u8"), "task.dict_offsets"),
    "sec.dims <u4 as 4u4": (_retype("sec.dims", "4u4"), "sec.dims"),
    "sec.offset <u8 byte-swapped": (_retype("sec.offset", ">u8"), "sec.offset"),
    "success |i1 as |a1": (_retype("success", "|a1"), "success"),
    "fps <f8 as <i8": (_retype("fps", "<i8"), "fps"),
    "an int field's values <i8 as <f8": (_retype("extra.1.values", "<f8"), "extra.1.values"),
    "a JSON field's offsets <u8 as <U8": (_retype("extra.0.offsets", "<U8"), "extra.0.offsets"),
    "a str field's codes <i4 as <u4": (_retype("extra.2.codes", "<u4"), "extra.2.codes"),
    "an extra state |u1 as |b1": (_retype("extra.1.state", "|b1"), "extra.1.state"),
    "sec.dims offset off the 64-byte grid": (_shift("sec.dims"), "sec.dims"),
    "num_frames offset off the 64-byte grid": (_shift("num_frames"), "num_frames"),
}


@pytest.fixture(scope="module")
def raw_cameras(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _write(tmp_path_factory.mktemp("toc") / "clean.kdb", cameras=True)


def test_the_extra_fields_are_where_the_damage_table_puts_them(raw_cameras: Path) -> None:
    _, toc, _ = _toc(raw_cameras.read_bytes())
    assert toc["extras"] == [["j", "json"], ["n", "int"], ["s", "str"]]


# -- 1. validate reports a damaged TOC, never raises --------------------------------------


@pytest.mark.parametrize("fix", [False, True], ids=["checksum fails", "checksum recomputed"])
@pytest.mark.parametrize("case", list(TOC_DAMAGE))
def test_validate_names_a_column_of_the_wrong_dtype_or_place(
    raw_cameras: Path, tmp_path: Path, case: str, fix: bool, capsys: pytest.CaptureFixture[str]
) -> None:
    edit, column = TOC_DAMAGE[case]
    path = _damaged(raw_cameras, tmp_path / "bad.kdb", edit, fix=fix)
    report = validate(path)
    assert not report.ok
    assert any(f"column {column!r}" in e for e in report.errors), report.errors
    assert fix or "index checksum mismatch" in report.errors[0]
    assert main(["validate", str(path)]) == 1  # damage, not a usage error or a traceback
    capsys.readouterr()


@pytest.mark.parametrize("fix", [False, True], ids=["checksum fails", "checksum recomputed"])
@pytest.mark.parametrize("case", list(TOC_DAMAGE))
def test_every_read_of_a_damaged_toc_raises_a_kinodb_error(
    raw_cameras: Path, tmp_path: Path, case: str, fix: bool
) -> None:
    edit, _ = TOC_DAMAGE[case]
    path = _damaged(raw_cameras, tmp_path / "bad.kdb", edit, fix=fix)
    reads: list[Callable[[Database], object]] = [
        lambda db: db.read_array(0, "actions"),  # first, on a fresh handle: no checksum verified yet
        lambda db: db.read_array(1, "actions"),
        lambda db: db.read_meta(0),
        lambda db: db.episodes(),
        lambda db: db.read_episode(2),
        lambda db: db.gather("actions"),
    ]
    failed = 0
    for read in reads:
        with kinodb.open(path) as db:
            try:
                read(db)
            except KinodbError as exc:
                failed += 1
                assert isinstance(exc, CorruptFileError), exc
    assert failed  # at the least, the reads that verify the index raise


@pytest.mark.parametrize("case", [c for c in TOC_DAMAGE if "grid" not in c])
def test_a_read_of_a_column_of_the_wrong_dtype_names_it_and_both_dtypes(
    raw_cameras: Path, tmp_path: Path, case: str
) -> None:
    edit, column = TOC_DAMAGE[case]
    path = _damaged(raw_cameras, tmp_path / "bad.kdb", edit, fix=True)
    with kinodb.open(path) as db, pytest.raises(CorruptFileError) as info:
        db._decoded.columns[column]
    assert f"column {column!r} has dtype" in str(info.value)
    assert "but the format stores it as" in str(info.value)


def test_read_array_on_a_fresh_handle_names_a_dims_column_of_the_wrong_dtype(
    raw_cameras: Path, tmp_path: Path
) -> None:
    path = _damaged(raw_cameras, tmp_path / "bad.kdb", _retype("sec.dims", "4u4"), fix=False)
    with kinodb.open(path) as db, pytest.raises(CorruptFileError, match=r"'sec\.dims' has dtype '4u4'"):
        db.read_array(0, "actions")


def test_read_meta_names_a_json_field_whose_offsets_have_the_wrong_dtype(
    raw_cameras: Path, tmp_path: Path
) -> None:
    path = _damaged(raw_cameras, tmp_path / "bad.kdb", _retype("extra.0.offsets", "<i8"), fix=True)
    with (
        kinodb.open(path) as db,
        pytest.raises(CorruptFileError, match=r"'extra\.0\.offsets' has dtype '<i8'"),
    ):
        db.read_meta(0)


def test_validate_reports_what_a_damaged_index_raises_past_its_failed_checksum(
    raw_cameras: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def flip(raw: bytearray) -> None:
        raw[_column_at(raw, "fps")] ^= 0x01  # the checksum fails; nothing else is in the way

    path = _damaged(raw_cameras, tmp_path / "bad.kdb", flip, fix=False)

    def broken(*args: object) -> None:
        raise TypeError("what no kinodb check foresaw")

    monkeypatch.setattr(validate_mod, "_sound", broken)
    monkeypatch.setattr(Database, "read_meta", broken)
    report = validate(path)
    assert "index checksum mismatch" in report.errors[0]
    assert report.errors[1:] == [
        f"episode {i}: the damaged index cannot be read further (TypeError: what no kinodb check foresaw)"
        for i in range(3)
    ]
    monkeypatch.setattr(validate_mod, "_check_schema", broken)
    assert validate(path).errors[1:] == [
        "index: the damaged index cannot be read further (TypeError: what no kinodb check foresaw)"
    ]


def test_validate_still_raises_what_a_sound_index_raises(
    raw_cameras: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: object) -> None:
        raise TypeError("a bug in kinodb")

    monkeypatch.setattr(validate_mod, "_check_schema", broken)
    with pytest.raises(TypeError, match="a bug in kinodb"):  # never hidden as damage
        validate(raw_cameras)


def test_a_healthy_file_validates_and_reads_as_before(raw_cameras: Path) -> None:
    report = validate(raw_cameras)
    assert report.ok, report.errors
    with kinodb.open(raw_cameras) as db:
        assert db.read_array(2, "actions")[0, 0] == 2
        assert db.read_meta(1)["s"] == "s1"
        assert db.read_meta(1)["j"] == [1]
        assert db.read_episode(0)["images"]["cam"].shape == (4, 8, 8, 3)


# -- 2. huge raw-camera dims ----------------------------------------------------------------


@pytest.mark.parametrize("fix", [False, True], ids=["checksum fails", "checksum recomputed"])
def test_validate_reports_a_raw_camera_whose_dims_overflow_int64(
    raw_cameras: Path, tmp_path: Path, fix: bool
) -> None:
    def huge(raw: bytearray) -> None:  # episode 0's camera (its fifth row): H and W of 2**32 - 1
        struct.pack_into("<3I", raw, _column_at(raw, "sec.dims") + 4 * 12, 0xFFFFFFFF, 0xFFFFFFFF, 3)

    path = _damaged(raw_cameras, tmp_path / "bad.kdb", huge, fix=fix)
    report = validate(path)
    assert not report.ok
    assert any(e.startswith("episode 0:") for e in report.errors), report.errors
    assert not any(e.startswith(("episode 1:", "episode 2:")) for e in report.errors), report.errors


# -- 4. a reader that found the index checksum wrong ----------------------------------------


def _two_episodes(path: Path) -> Path:
    with kinodb.Writer(path, mode="w") as w:
        w.add_episode(actions=np.full((3, 2), 0, np.float32))
        w.add_episode(actions=np.full((3, 2), 1, np.float32))
    raw = bytearray(path.read_bytes())
    struct.pack_into("<Q", raw, _column_at(raw, "sec_start") + 8, 0)  # episode 1's rows are episode 0's
    path.write_bytes(bytes(raw))
    return path


@pytest.mark.parametrize("first", ["episodes", "read_meta", "gather"])
def test_read_array_serves_nothing_after_the_index_failed_its_checksum(tmp_path: Path, first: str) -> None:
    path = _two_episodes(tmp_path / "bad.kdb")
    with kinodb.open(path) as db:
        with pytest.raises(CorruptFileError, match="index checksum mismatch") as found:
            getattr(db, first)(*{"episodes": (), "read_meta": (1,), "gather": ("actions",)}[first])
        for i in (0, 1, -1):
            with pytest.raises(CorruptFileError) as again:
                db.read_array(i, "actions")
            assert str(again.value) == str(found.value)
        with pytest.raises(CorruptFileError, match="index checksum mismatch"):
            db.episodes()


def test_read_array_drops_its_readers_when_the_index_fails_its_checksum_later(tmp_path: Path) -> None:
    path = _two_episodes(tmp_path / "bad.kdb")
    with kinodb.open(path) as db:
        db.read_array(0, "actions")  # the O(1) path, before the checksum: the readers are built
        with pytest.raises(CorruptFileError, match="index checksum mismatch"):
            db.episodes()
        for i in (0, 1):
            with pytest.raises(CorruptFileError, match="index checksum mismatch"):
                db.read_array(i, "actions")


def test_read_array_keeps_serving_a_sound_index_after_many_reads(tmp_path: Path) -> None:
    path = tmp_path / "ok.kdb"
    with kinodb.Writer(path, mode="w") as w:
        for k in range(4):
            w.add_episode(actions=np.full((3, 2), k, np.float32))
    with kinodb.open(path) as db:
        for _ in range(100):  # past the checked O(1) reads: the tables verify the checksum
            for k in range(4):
                assert db.read_array(k, "actions")[0, 0] == k
        db._verify_index()
        assert db._failure is None


# -- 5. an append to an index whose offsets pass 2**63 -------------------------------------


@pytest.mark.parametrize(
    ("column", "entry"),
    [("task.dict_offsets", 0), ("task.dict_offsets", 1), ("extra.0.offsets", 0), ("extra.2.dict_offsets", 0)],
)
def test_an_append_refuses_offsets_past_two_to_the_63(tmp_path: Path, column: str, entry: int) -> None:
    path = _write(tmp_path / "bad.kdb")
    raw = bytearray(path.read_bytes())
    struct.pack_into("<Q", raw, _column_at(raw, column) + 8 * entry, 0xFFFF000000000000)
    _recommit(raw)  # a faulty writer's index: every checksum valid
    path.write_bytes(bytes(raw))
    with pytest.raises(CorruptFileError, match=rf"offsets decrease or pass the end .*\(column {column}\)"):
        kinodb.Writer(path, mode="a")
    assert path.read_bytes() == bytes(raw)  # nothing written


# -- 6. a killed writer's temporary -------------------------------------------------------


def test_an_append_removes_the_temporaries_of_dead_writers_of_the_path(tmp_path: Path) -> None:
    path = _write(tmp_path / "d.kdb")
    dead = tmp_path / ".d.kdb.4194999.0badf00d.tmp"  # above Linux's pid_max: no such process
    alive = tmp_path / f".d.kdb.{os.getpid()}.0badf00d.tmp"
    other = tmp_path / ".e.kdb.4194999.0badf00d.tmp"
    for junk in (dead, alive, other):
        junk.write_bytes(b"half-written")
    with kinodb.Writer(path, mode="a") as w:
        w.add_episode(actions=np.zeros((2, 7), np.float32))
    assert not dead.exists()
    assert alive.exists() and other.exists()  # a live writer's file and other paths' are left alone
    with kinodb.open(path) as db:
        assert len(db) == 4
