"""A damaged index: its checksum is verified on first use, writers never store it again under
a valid checksum, and what a checksum cannot catch (a faulty writer) is named, not crashed on."""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import kinodb
from _factories import without_uniform_check
from kinodb import CorruptFileError
from kinodb.kdb._layout import INDEX_HEAD, SLOT_OFFSETS, align, crc32
from kinodb.kdb.upgrade import upgrade
from kinodb.kdb.validate import validate
from kinodb.stats import compute_stats, write_stats
from kinodb.windows import FrameWindows


def _write(path: Path, n: int = 3) -> Path:
    with kinodb.Writer(path, metadata={"robot": "franka"}) as w:
        for e in range(n):
            w.add_episode(
                actions=np.full((5, 4), e, np.float32), states=np.zeros((5, 2), np.float32), fps=10.0,
                success=True, task=f"pick {e}", embodiment="franka",
                extra={"scene": "kitchen", "tags": ["a", e]},
            )  # fmt: skip
    return path


def newest_slot(raw: bytes | bytearray) -> int:
    """Byte offset of the commit record with the highest generation (an undamaged file)."""
    return max(SLOT_OFFSETS, key=lambda at: struct.unpack_from("<Q", raw, at)[0])


def index_layout(raw: bytes | bytearray) -> tuple[int, int, dict[str, Any], dict[str, int]]:
    """``(index offset, TOC offset, TOC, {column: absolute byte offset})`` of the newest
    commit, parsed from the bytes as docs/format.md lays them out."""
    slot = newest_slot(raw)
    offset = struct.unpack_from("<Q", raw, slot + 8)[0]
    toc_len = struct.unpack_from("<I", raw, offset + 4)[0]
    toc_at = offset + INDEX_HEAD.size
    toc = json.loads(bytes(raw[toc_at : toc_at + toc_len]))
    body = offset + align(INDEX_HEAD.size + toc_len)
    return offset, toc_at, toc, {name: body + rel for name, (_, rel, _) in toc["columns"].items()}


def recommit(raw: bytearray) -> None:
    """Recompute the newest commit record's index CRC-32 and its own checksum (what a faulty
    writer that wrote a wrong index would leave: every checksum valid)."""
    slot = newest_slot(raw)
    offset, length = struct.unpack_from("<QQ", raw, slot + 8)
    struct.pack_into("<I", raw, slot + 40, crc32(bytes(raw[offset : offset + length])))
    struct.pack_into("<I", raw, slot + 60, crc32(bytes(raw[slot : slot + 60])))


def damaged(
    src: Path, dst: Path, edit: Callable[[bytearray, dict[str, int]], None], *, fix: bool = False
) -> Path:
    raw = bytearray(src.read_bytes())
    edit(raw, index_layout(raw)[3])
    if fix:
        recommit(raw)
    dst.write_bytes(bytes(raw))
    return dst


@pytest.fixture
def clean(tmp_path: Path) -> Path:
    return _write(tmp_path / "clean.kdb")


def flip_success(raw: bytearray, cols: dict[str, int]) -> None:
    raw[cols["success"] + 1] ^= 0x01  # episode 1: success true -> false


MISMATCH = r"index checksum mismatch at byte offset (\d+) \((\d+) bytes\): stored ([0-9a-f]{8}), computed ([0-9a-f]{8})"


# -- the reader verifies the index checksum on first use -------------------------------------


USES: dict[str, Callable[[kinodb.Database], object]] = {
    "metadata": lambda db: db.metadata(),
    "schema": lambda db: db.schema(),
    "dataset_info": lambda db: db.dataset_info(),
    "summary": lambda db: db.summary(),
    "episodes": lambda db: db.episodes(),
    "read_meta": lambda db: db.read_meta(1),
    "read_episode": lambda db: db.read_episode(1),
    "read_frames": lambda db: db.read_frames(1, 0, 2),
    "cameras": lambda db: db.cameras(1),
    "query": lambda db: db.query("success = true"),
    "gather": lambda db: db.gather("actions"),
    "stats": lambda db: db.stats(),
    "windows": lambda db: FrameWindows(db, action_horizon=2),
}


@pytest.mark.parametrize("use", sorted(USES))
def test_every_use_of_the_index_verifies_its_checksum(clean: Path, tmp_path: Path, use: str) -> None:
    path = damaged(clean, tmp_path / "bad.kdb", flip_success)
    with kinodb.open(clean) as db:
        commit = db._commit
    with kinodb.open(path) as db:  # opening stays O(1): it reads no more than the index head
        assert len(db) == 3
        with pytest.raises(CorruptFileError, match=MISMATCH) as info:
            USES[use](db)
    text = str(info.value)
    offset, length, stored, computed = re.search(MISMATCH, text).groups()  # type: ignore[union-attr]
    assert (int(offset), int(length), int(stored, 16)) == (
        commit.index_offset,
        commit.index_length,
        commit.index_crc,
    )
    assert computed != stored
    assert (
        text.startswith(str(path))
        and f"kino validate {path}" in text
        and "restore the file from a copy" in text
    )


def test_the_first_reads_of_an_array_come_before_the_check_and_the_bulk_check_verifies(
    clean: Path, tmp_path: Path
) -> None:
    # A file without the uniform entry's check: its reads go through the rows (a file with
    # it reads without the index, see test_uniform_layout.py).
    path = damaged(without_uniform_check(clean), tmp_path / "bad.kdb", flip_success)
    with kinodb.open(path) as db:
        budget = 64 + len(db) // 256
        for k in range(budget - 1):  # the checked O(1) reads of a freshly opened file
            np.testing.assert_array_equal(db.read_array(k % 3, "actions"), np.full((5, 4), k % 3))
        with pytest.raises(CorruptFileError, match=MISMATCH):
            for k in range(budget):  # the switch to checking every episode's rows at once
                db.read_array(k % 3, "actions")
        with pytest.raises(CorruptFileError, match=MISMATCH):
            db.read_meta(0)  # still damaged: every later use raises too


def test_a_clean_file_verifies_once_and_reads_as_before(clean: Path) -> None:
    with kinodb.open(clean) as db:
        assert not db._verified
        db.read_array(0, "actions")
        assert not db._verified  # an O(1) read does not pay for the checksum
        assert db.read_meta(2)["task"] == "pick 2"
        assert db._verified
        assert db.query("success = true").tolist() == [0, 1, 2]


def test_validate_names_the_mismatch_and_reads_on(clean: Path, tmp_path: Path) -> None:
    def edit(raw: bytearray, cols: dict[str, int]) -> None:
        flip_success(raw, cols)
        raw[cols["sec.offset"] + 8 * 4 + 1] ^= 0x40  # episode 1's actions: far past its payload

    report = validate(damaged(clean, tmp_path / "bad.kdb", edit))
    assert any(re.search(MISMATCH, e) for e in report.errors)
    assert any(e.startswith("episode 1:") for e in report.errors)  # read on past the checksum


# -- writers refuse to store a damaged index again ------------------------------------------


def test_append_refuses_a_damaged_index_and_leaves_the_file_as_it_was(clean: Path, tmp_path: Path) -> None:
    path = damaged(clean, tmp_path / "bad.kdb", flip_success)
    before = path.read_bytes()
    with pytest.raises(CorruptFileError, match=MISMATCH), kinodb.Writer(path, mode="a") as w:
        w.add_episode(actions=np.zeros((5, 4), np.float32))
    assert path.read_bytes() == before
    assert not validate(path).ok  # the damage is still there to see


def test_stats_merge_and_upgrade_refuse_a_damaged_index(clean: Path, tmp_path: Path) -> None:
    stats = compute_stats(clean)
    path = damaged(clean, tmp_path / "bad.kdb", flip_success)
    before = path.read_bytes()
    with pytest.raises(CorruptFileError, match=MISMATCH):
        write_stats(path, stats)
    with pytest.raises(CorruptFileError, match=MISMATCH):
        compute_stats(path)
    for name, call in (
        ("merged", lambda out: kinodb.merge([clean, path], out)),
        ("upgraded", lambda out: upgrade(path, out)),
    ):
        out = tmp_path / f"{name}.kdb"
        with pytest.raises(CorruptFileError, match=MISMATCH):
            call(out)
        assert not out.exists()
    assert path.read_bytes() == before
    kinodb.merge([clean], tmp_path / "fine.kdb")  # an undamaged input still merges
    assert validate(tmp_path / "fine.kdb").ok


@pytest.mark.parametrize("key", ["metadata", "schema"])
def test_append_to_a_dataset_json_without_its_parts_is_a_corrupt_file_error(
    clean: Path, tmp_path: Path, key: str
) -> None:
    """A faulty writer's index (checksums valid) whose dataset JSON lacks ``key``."""

    def edit(raw: bytearray, cols: dict[str, int]) -> None:
        _, toc_at, _, _ = index_layout(raw)
        at = raw.find(f'"{key}":'.encode(), toc_at)
        raw[at + 1] ^= 0x01  # "metadata" -> "letadata", "schema" -> "rchema": the same length

    path = damaged(clean, tmp_path / "odd.kdb", edit, fix=True)
    before = path.read_bytes()
    with kinodb.open(path) as db:
        offset = db._commit.index_offset
    with pytest.raises(CorruptFileError) as info, kinodb.Writer(path, mode="a") as w:
        w.add_episode(actions=np.zeros((5, 4), np.float32))
    text = str(info.value)
    assert (
        f"{path}: index at byte offset {offset}" in text
        and f"'{key}" in text
        and "nothing was appended" in text
    )
    assert path.read_bytes() == before


# -- a commit record's episode count ------------------------------------------------------


def _with_count(src: Path, dst: Path, count: int) -> Path:
    raw = bytearray(src.read_bytes())
    slot = newest_slot(raw)
    struct.pack_into("<Q", raw, slot + 24, count)
    struct.pack_into("<I", raw, slot + 60, crc32(bytes(raw[slot : slot + 60])))
    dst.write_bytes(bytes(raw))
    return dst


@pytest.mark.parametrize("count", [100, 2**63, 2**64 - 1])
def test_an_episode_count_the_index_cannot_hold_is_refused_at_open(
    clean: Path, tmp_path: Path, count: int
) -> None:
    path = _with_count(clean, tmp_path / "count.kdb", count)
    with kinodb.open(clean) as db:
        length = db._commit.index_length
    with pytest.raises(
        CorruptFileError, match=rf"says {count} episodes, but its index .*\({length} bytes\) holds at most"
    ):
        kinodb.open(path)
    assert not validate(path).ok


def test_an_episode_count_that_disagrees_with_the_index_fails_its_first_use(
    clean: Path, tmp_path: Path
) -> None:
    path = _with_count(clean, tmp_path / "count.kdb", 5)  # the index holds 3
    for use in (lambda p: FrameWindows(p), lambda p: kinodb.open(p).read_array(0, "actions")):
        with pytest.raises(CorruptFileError, match="commit record says 5 episodes, index has 3"):
            use(path)


# -- string and extra-field columns name the file and the byte offset ------------------------


@pytest.mark.parametrize(
    ("column", "at", "mask", "message"),
    [
        ("task.dict_offsets", 8, 0x80, r"string dictionary of column 'task' is damaged: its entry offsets \(task\.dict_offsets at byte offset {}\)"),
        ("task.dict_bytes", 0, 0x80, r"column 'task' holds invalid UTF-8 \(task\.dict_bytes at byte offset {}\)"),
        ("embodiment.codes", 0, 0x01, r"column 'embodiment', episode 0: bad string code 1 \(embodiment\.codes at byte offset {}\)"),
        ("extra.1.offsets", 8, 0x40, r"extra field 'tags', episode 0: bad JSON \(extra\.1\.bytes at byte offset \d+\)"),
        ("extra.0.codes", 4, 0x02, r"extra field 'scene', episode 1: bad string code 2 \(extra\.0\.codes at byte offset {}\)"),
    ],
)  # fmt: skip
def test_damaged_string_and_json_columns_name_the_file_and_the_byte_offset(
    clean: Path, tmp_path: Path, column: str, at: int, mask: int, message: str
) -> None:
    with kinodb.open(clean) as db:
        kinds = dict(db._block.extra_kinds)
    assert list(kinds) == ["scene", "tags"] and kinds == {"scene": "str", "tags": "json"}
    where: list[int] = []

    def edit(raw: bytearray, cols: dict[str, int]) -> None:
        where.append(cols[column] + at)
        raw[cols[column] + at] ^= mask

    path = damaged(clean, tmp_path / "bad.kdb", edit, fix=True)
    with kinodb.open(path) as db, pytest.raises(CorruptFileError) as info:
        for i in range(3):
            db.read_meta(i)
    text = str(info.value)
    assert text.startswith(f"{path}: index at byte offset ")
    assert re.search(message.format(where[0] - at + (at if column.endswith("codes") else 0)), text), text


@pytest.mark.parametrize(("at", "mask"), [(8, 0x40), (0, 0x01)])
def test_a_damaged_json_column_read_whole_names_the_episode_as_read_meta_does(
    clean: Path, tmp_path: Path, at: int, mask: int
) -> None:
    """`episodes()` decodes a JSON field's texts in one go, and one by one where they are
    damaged: its error is `read_meta`'s."""

    def edit(raw: bytearray, cols: dict[str, int]) -> None:
        raw[cols["extra.1.offsets"] + at] ^= mask

    path = damaged(clean, tmp_path / "bad.kdb", edit, fix=True)
    with kinodb.open(path) as db:
        with pytest.raises(CorruptFileError) as whole:
            db.episodes()
        with pytest.raises(CorruptFileError) as one:
            for i in range(len(db)):
                db.read_meta(i)
    assert str(whole.value) == str(one.value)
    assert re.search(r"extra field 'tags', episode \d: bad JSON", str(whole.value))


def test_json_fields_read_whole_equal_read_meta(clean: Path) -> None:
    with kinodb.open(clean) as db:
        table = db.episodes()
        assert [table["tags"][i] for i in range(len(db))] == [
            db.read_meta(i).get("tags") for i in range(len(db))
        ]


def test_the_columns_asked_for_equal_the_whole_table_s(clean: Path) -> None:
    with kinodb.open(clean) as db:
        whole = db.episodes()
        for names in (("num_frames",), ("task", "tags", "fps"), ("success", "scene", "nosuch")):
            part = db._columns(names)
            assert list(part) == [k for k in whole if k in names]
            for key, column in part.items():
                assert column.tolist() == whole[key].tolist(), key
