"""A damaged commit record that hides a newer commit: appends refuse rather than truncate it
away, and `validate` says so; the leftovers of a crash are still discarded as before."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

import kinodb
from kinodb import CorruptFileError
from kinodb.kdb._layout import SLOT_OFFSETS, SLOT_SIZE, parse_slot
from kinodb.kdb.validate import hidden_commit, validate


@pytest.fixture(autouse=True)
def _same_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1790000000")  # the same records (and checksums) every run


def _episode(k: int) -> dict[str, object]:
    return {
        "actions": np.full((5, 4), k, np.float32),
        "states": np.ones((5, 2), np.float32),
        "task": f"task {k}",
    }


def committed(path: Path, generations: int) -> list[bytes]:
    """Write ``path`` over ``generations`` commits (2 episodes, then 1 per append); return
    the file's bytes after each commit."""
    states = []
    with kinodb.Writer(path, mode="w") as w:
        w.add_episode(**_episode(0))
        w.add_episode(**_episode(1))
    states.append(path.read_bytes())
    for g in range(2, generations + 1):
        with kinodb.Writer(path, mode="a") as w:
            w.add_episode(**_episode(g))
        states.append(path.read_bytes())
    return states


def slots(raw: bytes) -> list[tuple[int, int]]:
    """``(generation, byte offset)`` of each valid commit record, newest first."""
    found = [(c.generation, at) for at in SLOT_OFFSETS if (c := parse_slot(raw[at : at + SLOT_SIZE]))]
    return sorted(found, reverse=True)


def append_one(path: Path) -> None:
    with kinodb.Writer(path, mode="a") as w:
        w.add_episode(**_episode(99))


def test_a_flipped_bit_in_the_newest_record_refuses_the_append(tmp_path: Path) -> None:
    path = tmp_path / "f.kdb"
    states = committed(path, 2)
    (gen, newest), (_, older) = slots(states[-1])
    old_end, new_index = len(states[0]), struct.unpack_from("<Q", states[-1], newest + 8)[0]
    raw = bytearray(states[-1])
    raw[newest + 8] ^= 0x01  # index_offset, one bit: the record fails its checksum
    path.write_bytes(bytes(raw))
    with kinodb.open(path) as db:  # the reader falls back to the older commit
        assert len(db) == 2 and db._commit.generation == gen - 1
    with pytest.raises(CorruptFileError) as info:
        append_one(path)
    text = str(info.value)
    for part in (
        f"commit record {SLOT_OFFSETS.index(newest)} (byte offset {newest}) fails its checksum",
        f"a complete index of 3 episodes (generation {gen}) lies at byte offset {new_index}",
        f"past the committed end ({old_end})",
        f"the file reads as generation {gen - 1} (2 episodes)",
        "Nothing was appended",
        f"kino upgrade {path} NEW.kdb --commit newest",
        "--commit committed",
    ):
        assert part in text, (part, text)
    assert path.read_bytes() == bytes(raw)  # nothing truncated: the newer commit can be repaired
    assert older != newest


@pytest.mark.parametrize("damage", ["generation", "crc", "reserved", "whole byte"])
def test_any_small_damage_of_the_newest_record_is_seen(tmp_path: Path, damage: str) -> None:
    path = tmp_path / "f.kdb"
    states = committed(path, 3)
    _, newest = slots(states[-1])[0]
    raw = bytearray(states[-1])
    at, mask = {"generation": (0, 0x03), "crc": (61, 0x10), "reserved": (50, 0x20), "whole byte": (30, 0xFF)}[
        damage
    ]
    raw[newest + at] ^= mask
    path.write_bytes(bytes(raw))
    with kinodb.open(path) as db:
        found = hidden_commit(db)
    assert found is not None and found.generation == 3 and found.num_episodes == 4
    with pytest.raises(CorruptFileError, match="a newer commit is probably hidden"):
        append_one(path)
    assert path.read_bytes() == bytes(raw)


def test_a_zeroed_newest_record_refuses_the_append_and_fails_validate(tmp_path: Path) -> None:
    path = tmp_path / "z.kdb"
    states = committed(path, 3)  # generations 3 and 2 in the two records
    (gen, newest), _ = slots(states[-1])
    raw = bytearray(states[-1])
    raw[newest : newest + SLOT_SIZE] = bytes(SLOT_SIZE)
    path.write_bytes(bytes(raw))
    report = validate(path)
    assert not report.ok
    (error,) = report.errors
    assert f"commit record {SLOT_OFFSETS.index(newest)} (byte offset {newest}) is zeroed" in error
    assert f"generation {gen}, 4 episodes" in error and "kinodb refuses to append to it" in error
    assert f"kino upgrade {path} NEW.kdb --commit newest" in error
    with pytest.raises(CorruptFileError, match=rf"byte offset {newest}\) is zeroed.*Nothing was appended"):
        append_one(path)
    assert path.read_bytes() == bytes(raw)


def test_a_newest_record_overwritten_by_the_older_one_refuses_the_append(tmp_path: Path) -> None:
    path = tmp_path / "dup.kdb"
    states = committed(path, 3)
    (gen, newest), (_, older) = slots(states[-1])
    raw = bytearray(states[-1])
    raw[newest : newest + SLOT_SIZE] = raw[older : older + SLOT_SIZE]  # both records valid, one generation
    path.write_bytes(bytes(raw))
    with pytest.raises(
        CorruptFileError, match=rf"repeats the other record's generation {gen - 1}.*Nothing was appended"
    ):
        append_one(path)
    assert path.read_bytes() == bytes(raw)
    assert not validate(path).ok


def test_an_interrupted_append_is_still_discarded(tmp_path: Path) -> None:
    """The protocol's own leftovers: a complete index past the end that no record points at
    (killed before the record was written), with both records valid, or with the second
    record of a file committed once still empty."""
    for generations in (1, 3):
        path = tmp_path / f"g{generations}.kdb"
        states = committed(path, generations + 1)
        (_, newest), *_ = slots(states[-1])
        raw = bytearray(states[-1])
        raw[newest : newest + SLOT_SIZE] = states[-2][
            newest : newest + SLOT_SIZE
        ]  # the record not yet written
        path.write_bytes(bytes(raw))
        report = validate(path)
        assert report.ok and not report.warnings
        assert any("left by an interrupted append" in p for p in report.passed)
        append_one(path)
        with kinodb.open(path) as db:
            assert [db.read_meta(i)["task"] for i in range(len(db))][-2:] == [
                f"task {generations}",
                "task 99",
            ]
            assert len(db) == generations + 2
        assert validate(path).ok


@pytest.mark.parametrize("cut", [8, 24, 40, 60])
def test_a_torn_record_over_an_older_one_is_discarded(tmp_path: Path, cut: int) -> None:
    """A slot write torn by a crash keeps the old record's bytes from where it stopped."""
    path = tmp_path / "t.kdb"
    states = committed(path, 3)
    (_, newest), _ = slots(states[-1])
    raw = bytearray(states[-1])
    raw[newest + cut : newest + SLOT_SIZE] = states[0][
        newest + cut : newest + SLOT_SIZE
    ]  # generation 1's record
    path.write_bytes(bytes(raw))
    with kinodb.open(path) as db:
        assert hidden_commit(db) is None and len(db) == 3
    assert validate(path).ok
    assert any("torn by a crash" in w for w in validate(path).warnings)
    append_one(path)
    with kinodb.open(path) as db:
        assert len(db) == 4 and db.read_meta(3)["task"] == "task 99"


def test_damage_of_the_older_record_hides_nothing(tmp_path: Path) -> None:
    path = tmp_path / "o.kdb"
    states = committed(path, 3)
    _, (_, older) = slots(states[-1])
    raw = bytearray(states[-1])
    raw[older + 9] ^= 0x01
    path.write_bytes(bytes(raw))
    with kinodb.open(path) as db:
        assert hidden_commit(db) is None
    append_one(path)
    with kinodb.open(path) as db:
        assert len(db) == 5


def test_upgrade_asks_which_commit_to_keep_and_copies_the_hidden_one(tmp_path: Path) -> None:
    """`kino upgrade` of such a file refuses to pick the older commit silently; ``--commit
    newest`` recovers the hidden commit's episodes into a new file, ``committed`` keeps what
    readers see. The damaged file is never changed."""
    import subprocess
    import sys

    from kinodb.kdb.upgrade import upgrade

    path = tmp_path / "f.kdb"
    states = committed(path, 3)
    _, newest = slots(states[-1])[0]
    raw = bytearray(states[-1])
    raw[newest + 30] ^= 0x04
    path.write_bytes(bytes(raw))
    with pytest.raises(CorruptFileError) as info:
        upgrade(path, tmp_path / "new.kdb")
    assert "a newer commit is probably hidden" in str(info.value) and "Nothing was written" in str(info.value)
    assert not (tmp_path / "new.kdb").exists()
    assert upgrade(path, tmp_path / "newest.kdb", commit="newest") == 4
    assert upgrade(path, tmp_path / "committed.kdb", commit="committed") == 3
    assert path.read_bytes() == bytes(raw)
    with kinodb.open(tmp_path / "newest.kdb") as db:
        assert [db.read_meta(i)["task"] for i in range(len(db))] == ["task 0", "task 1", "task 2", "task 3"]
        np.testing.assert_array_equal(db.read_episode(3)["actions"], np.full((5, 4), 3, np.float32))
    assert validate(tmp_path / "newest.kdb").ok
    with kinodb.open(tmp_path / "committed.kdb") as db:
        assert len(db) == 3
    kino = [sys.executable, "-m", "kinodb"]
    run = subprocess.run([*kino, "info", str(path)], capture_output=True, text=True)
    assert run.returncode == 0
    assert run.stderr.startswith(f"warning: {path}: commit record ") and "--commit newest" in run.stderr
    assert "episodes: 3," in run.stdout
    run = subprocess.run(
        [*kino, "upgrade", str(path), str(tmp_path / "cli.kdb")], capture_output=True, text=True
    )
    assert run.returncode == 1 and "--commit newest" in run.stderr
    run = subprocess.run(
        [*kino, "upgrade", str(path), str(tmp_path / "cli.kdb"), "--commit", "newest"],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0 and "(4 episodes" in run.stdout, run.stderr
