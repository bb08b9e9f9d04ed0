"""Damage that kinodb refuses with a `CorruptFileError` saying what is damaged, where, and
what to do: index-wide damage in a copy, an exhausted commit generation, a schema dtype
that is none, and a damaged header, preamble, commit record or raw camera."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from test_crafted_index import _column, _payload, _retoc, _set, _write
from test_damage_index import damaged, newest_slot

import kinodb
from kinodb import ConversionError, CorruptFileError
from kinodb._cli.main import main
from kinodb.kdb._layout import LAST_GENERATION, Commit, pack_slot, parse_slot
from kinodb.kdb.upgrade import SKIP_ADVICE, upgrade
from kinodb.merge import merge
from kinodb.stats import compute_stats


@pytest.fixture
def clean(tmp_path: Path) -> Path:
    return _write(tmp_path / "clean.kdb")


# -- a copy names damage every episode shares, without advising to skip episodes -----------


def _column_dtype(toc: dict[str, Any]) -> None:
    toc["columns"]["payload_offset"][0] = "<f8"


@pytest.mark.parametrize("on_error", ["raise", "skip"])
@pytest.mark.parametrize("how", ["upgrade", "merge"])
def test_index_wide_damage_stops_a_copy_without_skip_advice(
    clean: Path, tmp_path: Path, how: str, on_error: str
) -> None:
    bad = damaged(clean, tmp_path / "bad.kdb", _retoc(_column_dtype), fix=True)
    out = tmp_path / "out.kdb"
    with pytest.raises(CorruptFileError) as caught:
        if how == "upgrade":
            upgrade(bad, out, on_error=on_error)
        else:
            merge([bad], out, on_error=on_error)
    text = str(caught.value)
    assert "column 'payload_offset' has dtype '<f8'" in text
    assert SKIP_ADVICE not in text and "every one of" not in text
    assert f"restore {bad} from a copy" in text
    assert not out.exists()


def _every_payload(raw: bytearray, cols: dict[str, int]) -> None:
    for e in range(len(_column(raw, "payload_offset"))):
        raw[_payload(raw, e) + 8] ^= 0xFF  # the payload checksums no longer match


def test_an_upgrade_that_skips_every_episode_says_why(clean: Path, tmp_path: Path) -> None:
    bad = damaged(clean, tmp_path / "bad.kdb", _every_payload, fix=True)
    with pytest.raises(CorruptFileError, match="episode 0") as first:
        upgrade(bad, tmp_path / "out.kdb")
    assert SKIP_ADVICE in str(first.value)  # damage of one episode: skipping it helps
    with pytest.raises(ConversionError, match="every one of its 4 episodes was skipped") as caught:
        upgrade(bad, tmp_path / "out.kdb", on_error="skip")
    assert "the first, episode 0: " in str(caught.value)
    assert str(first.value).split("; to leave it out")[0].split("episode 0: ")[-1] in str(caught.value)


# -- a commit generation that cannot advance ------------------------------------------------


def _last_generation(raw: bytearray, cols: dict[str, int]) -> None:
    at = newest_slot(raw)
    commit = parse_slot(bytes(raw[at : at + 64]))
    assert commit is not None
    raw[at : at + 64] = pack_slot(Commit(LAST_GENERATION, *(
        commit.index_offset, commit.index_length, commit.num_episodes, commit.num_frames, commit.index_crc
    )))  # fmt: skip


def test_a_generation_that_cannot_advance_is_damage(
    clean: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = damaged(clean, tmp_path / "bad.kdb", _last_generation)
    said = (
        re.escape(str(bad))
        + f": the commit record at byte offset (64|128) has generation {LAST_GENERATION}.*restore it from a copy"
    )
    with pytest.raises(CorruptFileError, match=said):
        kinodb.Writer(bad, mode="a").close()
    with pytest.raises(CorruptFileError, match=said):
        kinodb.open(bad)
    assert main(["stats", str(bad)]) == 1
    assert "generation cannot advance" in capsys.readouterr().err
    with pytest.raises(CorruptFileError, match="does not fit a commit record"):
        pack_slot(Commit(LAST_GENERATION + 1, 256, 64, 1, 1, 0))


# -- a schema dtype that is none ------------------------------------------------------------


def _nonsense_dtype(toc: dict[str, Any]) -> None:
    toc["dataset"]["schema"]["actions"]["dtype"] = "nonsense"


def test_stats_refuse_a_schema_dtype_that_is_none(
    clean: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = damaged(clean, tmp_path / "bad.kdb", _retoc(_nonsense_dtype), fix=True)
    said = "the dataset schema gives array 'actions' the dtype 'nonsense', which is not a dtype"
    with kinodb.open(bad) as db, pytest.raises(CorruptFileError, match=said):
        compute_stats(db)
    assert main(["stats", str(bad), "--dry-run"]) == 1
    err = capsys.readouterr().err
    assert said in err and f"run kino validate {bad}" in err


# -- the header, the preamble and the commit records ----------------------------------------


def test_a_damaged_header_says_what_to_do(clean: Path, tmp_path: Path) -> None:
    raw = bytearray(clean.read_bytes())
    raw[20] ^= 0xFF
    (bad := tmp_path / "bad.kdb").write_bytes(bytes(raw))
    with pytest.raises(
        CorruptFileError, match="header checksum mismatch at byte offset 0; run kino validate"
    ):
        kinodb.open(bad)


def test_a_truncated_preamble_says_what_to_do(clean: Path, tmp_path: Path) -> None:
    (bad := tmp_path / "bad.kdb").write_bytes(clean.read_bytes()[:100])
    with pytest.raises(
        CorruptFileError, match=r"truncated preamble: 100 of 256 bytes; .*restore it from a copy"
    ):
        kinodb.open(bad)


def test_an_index_past_the_end_says_what_to_do(clean: Path, tmp_path: Path) -> None:
    raw = clean.read_bytes()
    (bad := tmp_path / "bad.kdb").write_bytes(raw[: len(raw) - 64])
    with pytest.raises(
        CorruptFileError, match=r"lies outside the file \(\d+ bytes\); .*restore it from a copy"
    ):
        kinodb.open(bad)


def test_raw_frames_of_the_wrong_size_say_where_and_what_to_do(clean: Path, tmp_path: Path) -> None:
    bad = damaged(clean, tmp_path / "bad.kdb", _set(1, "cam", "sec.dims", [4, 2, 3]), fix=True)
    with kinodb.open(bad) as db, pytest.raises(CorruptFileError) as caught:
        db.read_frames(1, 0, 2, cameras="cam")
    assert re.search(
        r"episode 1, camera 'cam' at byte offset \d+: raw frames take 240 bytes, not 5 frames of 24; "
        "the index is damaged; run kino validate",
        str(caught.value),
    )
