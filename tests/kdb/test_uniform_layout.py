"""The table of contents' ``uniform`` entry: a file whose episodes are all laid out alike
records it (under a TOC checksum of its own), and `read_array` reads every episode through
one strided view from the first read, without the O(episodes) checks; a damaged or lying
entry is never trusted beyond what the rows confirm, and `validate` reports it."""

from __future__ import annotations

import json
import shutil
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import kinodb
from _factories import recommit, without_uniform_check
from kinodb import CorruptFileError
from kinodb.kdb._layout import INDEX_HEAD
from kinodb.kdb._sections import uniform_layout
from kinodb.kdb.upgrade import upgrade
from kinodb.kdb.validate import validate

N = 40


def _episodes(n: int = N, frames: Any = 6) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(3)
    out = []
    for i in range(n):
        T = frames(i) if callable(frames) else frames
        out.append({
            "actions": rng.normal(size=(T, 3)).astype(np.float32),
            "states": rng.normal(size=(T, 5)),  # float64
            "rewards": rng.normal(size=T).astype(np.float32),
            "is_terminal": np.arange(T) == T - 1,
        })  # fmt: skip
    return out


def _write(path: Path, episodes: list[dict[str, np.ndarray]], mode: str = "x", **kw: Any) -> Path:
    with kinodb.Writer(path, mode=mode, image_codec="raw") as w:
        for ep in episodes:
            w.add_episode(**ep, **kw)
    return path


def _toc(path: Path) -> tuple[int, dict[str, Any]]:
    """(index offset, TOC) of the newest commit, from the bytes as docs/format.md lays them out."""
    raw = path.read_bytes()
    slot = max((64, 128), key=lambda at: struct.unpack_from("<Q", raw, at)[0])
    offset = struct.unpack_from("<Q", raw, slot + 8)[0]
    _, toc_len, toc_crc, _ = INDEX_HEAD.unpack_from(raw, offset)
    toc = raw[offset + INDEX_HEAD.size : offset + INDEX_HEAD.size + toc_len]
    assert zlib.crc32(toc) == toc_crc  # every writer stores the TOC's checksum
    return offset, json.loads(toc)


def _check(db: kinodb.Database, episodes: list[dict[str, np.ndarray]], order: Any) -> None:
    for i in order:
        for name, want in episodes[i].items():
            got = db.read_array(i, name)
            assert got.dtype == want.dtype and got.shape == want.shape
            np.testing.assert_array_equal(got, want)
            assert np.shares_memory(got, db._map()) and not got.flags.writeable


@pytest.fixture
def alike(tmp_path: Path) -> tuple[Path, list[dict[str, np.ndarray]]]:
    episodes = _episodes()
    return _write(tmp_path / "alike.kdb", episodes), episodes


def test_the_writer_records_a_uniform_layout_only_where_every_episode_is_alike(
    alike: tuple[Path, list[dict[str, np.ndarray]]], tmp_path: Path
) -> None:
    path, _ = alike
    with kinodb.open(path) as db:
        rows = db._cols["sec.offset"]
        entry = _toc(path)[1]["uniform"]
        assert entry == uniform_layout(db._cols)
        assert entry["episodes"] == N and entry["frames"] == 6 and entry["offsets"] == rows[:4].tolist()
        assert entry["step"] == int(rows[4] - rows[0]) >= int(db._cols["payload_length"][0])
    ragged = _write(tmp_path / "ragged.kdb", _episodes(frames=lambda i: 2 + i % 3))
    single = _write(tmp_path / "one.kdb", _episodes(1))
    for other in (ragged, single):
        assert "uniform" not in _toc(other)[1]
    mixed = tmp_path / "mixed.kdb"  # alike arrays, but one episode has a camera more
    with kinodb.Writer(mixed, image_codec="raw") as w:
        for i, ep in enumerate(_episodes(6)):
            w.add_episode(**ep, images={"cam": np.zeros((6, 2, 2, 3), np.uint8)} if i == 3 else None)
    assert "uniform" not in _toc(mixed)[1]


def test_the_first_read_reads_every_episode_through_one_view_without_the_index(
    alike: tuple[Path, list[dict[str, np.ndarray]]],
) -> None:
    path, episodes = alike
    with kinodb.open(path) as db:
        _check(db, episodes, [17])
        assert set(db._tables) == set(episodes[0]) and not db._verified  # no O(episodes) work yet
        for name, table in db._tables.items():
            whole = table.read.__self__  # type: ignore[attr-defined]
            assert whole.shape == (N, *episodes[0][name].shape) and table.strided is not None
        _check(db, episodes, np.random.default_rng(0).permutation(N).tolist())
        assert not db._verified
        db.read_meta(0)  # an O(episodes) use: the index is verified and the entry checked against every row
        assert db._verified and set(db._tables) == set(episodes[0])
        _check(db, episodes, range(N))
        np.testing.assert_array_equal(
            db.gather("states", [3, 0]), np.concatenate([episodes[3]["states"], episodes[0]["states"]])
        )


def test_a_camera_row_among_the_sections_keeps_the_arrays_uniform(tmp_path: Path) -> None:
    episodes = _episodes(8)
    rng = np.random.default_rng(1)
    frames = [rng.integers(0, 256, (6, 3, 2, 3), dtype=np.uint8) for _ in episodes]
    path = tmp_path / "cam.kdb"
    with kinodb.Writer(path, image_codec="raw") as w:
        for ep, cam in zip(episodes, frames, strict=True):
            w.add_episode(**ep, images={"cam": cam})
    assert len(_toc(path)[1]["uniform"]["offsets"]) == 5  # four arrays and the camera's row
    with kinodb.open(path) as db:
        _check(db, episodes, [5, 0, 7])
        assert set(db._tables) == set(episodes[0])
        np.testing.assert_array_equal(db.read_frames(6, 0, 6)["images"]["cam"], frames[6])


def test_an_append_records_the_entry_only_if_the_whole_file_is_alike(
    alike: tuple[Path, list[dict[str, np.ndarray]]],
) -> None:
    path, episodes = alike
    more = _episodes(5)
    _write(path, more, mode="a")
    with kinodb.open(path) as db:
        entry = _toc(path)[1].get("uniform")
        assert entry == uniform_layout(db._cols)  # the old index now lies between: none
        _check(db, episodes + more, range(N + 5))
    assert validate(path).ok


def test_an_entry_without_its_checksum_is_ignored(alike: tuple[Path, list[dict[str, np.ndarray]]]) -> None:
    path, episodes = alike
    without_uniform_check(path)
    with kinodb.open(path) as db:
        _check(db, episodes, [3])
        assert db._decoded.uniform is None and db._tables == {}  # the rows, as before the entry
        _check(db, episodes, range(N))
    report = validate(path)
    assert not report.ok
    assert any("table of contents checksum mismatch" in e and "kino upgrade" in e for e in report.errors)


def _lying(src: Path, dst: Path, change: Any) -> Path:
    """A copy of ``src`` whose TOC ``uniform`` entry ``change`` edited, with every checksum
    recomputed (what a faulty writer would leave); the TOC keeps its length."""
    raw = bytearray(src.read_bytes())
    offset, toc = _toc(src)
    old_len = struct.unpack_from("<I", raw, offset + 4)[0]
    change(toc["uniform"])
    text = json.dumps(toc, separators=(",", ":")).encode()
    assert len(text) <= old_len
    text = text.ljust(old_len)  # JSON allows trailing spaces
    raw[offset + INDEX_HEAD.size : offset + INDEX_HEAD.size + old_len] = text
    struct.pack_into("<I", raw, offset + 8, zlib.crc32(text))
    recommit(raw)
    dst.write_bytes(bytes(raw))
    return dst


@pytest.mark.parametrize(
    "change",
    [
        lambda u: u.update(step=u["step"] - 8),  # another stride: the last episode's row disagrees
        lambda u: u.update(frames=5),  # fewer frames than the rows say
        lambda u: u["offsets"].__setitem__(1, u["offsets"][1] + 8),  # states moved
        lambda u: u.update(step=int("9" * len(str(u["step"])))),  # episodes past the end of the file
    ],
)
@pytest.mark.parametrize("first", [0, 9, N - 1])  # checked against the next episode, or the previous
def test_an_entry_the_rows_contradict_is_not_used_and_validate_names_it(
    alike: tuple[Path, list[dict[str, np.ndarray]]], tmp_path: Path, change: Any, first: int
) -> None:
    path, episodes = alike
    bad = _lying(path, tmp_path / "bad.kdb", change)
    with kinodb.open(bad) as db:
        _check(db, episodes, [first])
        assert "states" not in db._tables  # the entry disagrees with this episode's rows or its neighbour's
        _check(db, episodes, range(N))
    report = validate(bad)
    assert any("laid out alike" in e and f"kino upgrade {bad} NEW.kdb" in e for e in report.errors), (
        report.errors
    )
    fixed = tmp_path / "fixed.kdb"
    upgrade(bad, fixed)
    assert validate(fixed).ok and _toc(fixed)[1]["uniform"] == _toc(path)[1]["uniform"]
    with kinodb.open(fixed) as db:
        _check(db, episodes, range(N))


def _moved_row(src: Path, dst: Path, episode: int, value: int, *, fix: bool) -> Path:
    """A copy of ``src`` whose ``episode``'s states row points at byte ``value``: with the
    index checksum recomputed (``fix``, a faulty writer) or not (damage on disk)."""
    shutil.copy(src, dst)
    raw = bytearray(dst.read_bytes())
    with kinodb.open(src) as db:
        base = db._map().__array_interface__["data"][0]
        col = db._cols["sec.offset"].__array_interface__["data"][0] - base
    struct.pack_into("<Q", raw, col + 8 * (4 * episode + 1), value)
    if fix:
        recommit(raw)
    dst.write_bytes(bytes(raw))
    return dst


def test_a_damaged_row_elsewhere_does_not_change_what_reads_serve(
    alike: tuple[Path, list[dict[str, np.ndarray]]], tmp_path: Path
) -> None:
    path, episodes = alike
    # A faulty writer: the index checksum holds, one row disagrees with the entry.
    bad = _moved_row(path, tmp_path / "faulty.kdb", 20, 10**9, fix=True)
    with kinodb.open(bad) as db:
        _check(db, episodes, range(N))  # the entry, under its own checksum, says where the writer put them
        db.read_meta(0)  # the index is verified: the entry is checked against every row, and dropped
        assert "states" not in db._tables
        with pytest.raises(CorruptFileError, match="byte offset 1000000000"):
            db.read_array(20, "states")
    assert any("laid out alike" in e for e in validate(bad).errors)
    # Damage on disk: the index fails its checksum at its first O(episodes) use, and from
    # then on every read raises, the uniform reads included.
    broken = _moved_row(path, tmp_path / "broken.kdb", 20, 10**9, fix=False)
    with kinodb.open(broken) as db:
        _check(
            db, episodes, [3, 20]
        )  # episode 3's rows and the last one's agree: 20 is served from the entry
        with pytest.raises(CorruptFileError, match="index checksum mismatch"):
            db.episodes()
        with pytest.raises(CorruptFileError, match="index checksum mismatch"):
            db.read_array(3, "states")
    assert not validate(broken).ok
