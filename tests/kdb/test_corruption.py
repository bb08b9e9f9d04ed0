"""Damaged files: truncation and flipped bytes give kinodb errors, never crashes or garbage
from outside the file; what the reader cannot see without checksums, `validate` reports."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import textwrap
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import kinodb
from _factories import encode_image, without_uniform_check
from kinodb import CorruptFileError, FormatError, UnsupportedVersionError
from kinodb.kdb._layout import DATA_START, HEADER_SIZE, INDEX_HEAD, SLOT_OFFSETS, crc32
from kinodb.kdb.validate import validate

# Runs in a child process so that a crash (SIGSEGV, SIGBUS) or a huge allocation fails the
# test instead of killing pytest. For each (offset, xor mask) it damages one byte, opens and
# reads everything, restores the byte, and reports "ok:<digest of all data>",
# "error:<KinodbError subclass>" or "crash:<anything else>".
PROBE = textwrap.dedent(
    """
    import hashlib, json, os, resource, sys
    import kinodb
    from kinodb.kdb.validate import validate

    resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))
    job = json.load(sys.stdin)

    def digest(path):
        h = hashlib.sha256()
        with kinodb.open(path) as db:
            h.update(json.dumps([len(db), db.num_frames(), db.dataset_info()], sort_keys=True).encode())
            table = db.episodes()
            h.update(repr(sorted((k, v.tolist()) for k, v in table.items())).encode())
            for i in range(len(db)):
                ep = db.read_episode(i)
                h.update(repr(sorted(ep.pop("meta").items())).encode())
                images = ep.pop("images")
                for name in sorted(ep):
                    h.update(f"{name}{ep[name].dtype}{ep[name].shape}".encode() + ep[name].tobytes())
                for cam in sorted(images):
                    h.update(cam.encode() + images[cam].tobytes() + db.read_image_bytes(i, cam, 0))
                T = db.read_meta(i)["num_frames"]
                window = db.read_frames(i, T // 2, T)
                h.update(b"".join(v.tobytes() for v in window["images"].values()))
        return h.hexdigest()

    def outcome(path, check):
        try:
            result = "ok:" + digest(path)
        except kinodb.KinodbError as exc:
            return "error:" + type(exc).__name__
        except Exception as exc:
            return f"crash:{type(exc).__name__}: {exc}"[:300]
        if check:
            try:
                if validate(path).ok:
                    result += ":undetected"
            except kinodb.KinodbError:
                pass  # detected, if less politely than with a report
            except Exception as exc:
                return f"crash:validate {type(exc).__name__}: {exc}"[:300]
        return result

    out = []
    with open(job["path"], "r+b") as fh:
        for offset, mask in job["mutations"]:
            old = os.pread(fh.fileno(), 1, offset)
            os.pwrite(fh.fileno(), bytes([old[0] ^ mask]), offset)
            try:
                out.append(outcome(job["path"], job["validate"]))
            finally:
                os.pwrite(fh.fileno(), old, offset)
    out.append(outcome(job["path"], False))
    json.dump(out, sys.stdout)
    """
)


def probe(
    path: Path, mutations: Iterable[tuple[int, int]], *, validate: bool = False
) -> tuple[list[str], str]:
    """Outcomes per mutation, and the outcome of the undamaged file (as a last check)."""
    job = {"path": str(path), "mutations": [[int(o), int(m)] for o, m in mutations], "validate": validate}
    run = subprocess.run(
        [sys.executable, "-c", PROBE], input=json.dumps(job), capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, f"the reader crashed (status {run.returncode}): {run.stderr[-2000:]}"
    *outcomes, pristine = json.loads(run.stdout)
    assert pristine.startswith("ok:")
    return outcomes, pristine


def crashes(outcomes: list[str], mutations: list[tuple[int, int]]) -> list[str]:
    return [
        f"byte {o} ^ {m:#04x}: {r}"
        for (o, m), r in zip(mutations, outcomes, strict=True)
        if r.startswith("crash")
    ]


@pytest.fixture(scope="module")
def damaged_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("damage")


def _episodes() -> list[dict[str, Any]]:
    rng = np.random.default_rng(3)
    eps = []
    for i in range(3):
        T = 4 + i
        frames = rng.integers(0, 256, (T, 6, 5, 3), dtype=np.uint8)
        eps.append({
            "actions": rng.normal(size=(T, 3)).astype(np.float32),
            "states": rng.normal(size=(T, 2)),
            "timestamps": np.arange(T) / 10,
            "extra_arrays": {"lang": rng.normal(size=(T, 4)).astype(np.float16)},
            "images": {"raw_cam": frames, "png_cam": [encode_image(f, "PNG") for f in frames]},
            "embodiment": "franka", "task": f"task {i}", "success": (True, False, None)[i],
            "extra": {"scene": "lab", "attempt": i, "tags": ["a", i]},
        })  # fmt: skip
    return eps


@pytest.fixture(scope="module")
def one_commit(damaged_dir: Path) -> Path:
    """A file with one commit: a raw and a PNG camera, extra arrays and extra fields."""
    path = damaged_dir / "one.kdb"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SOURCE_DATE_EPOCH", "1790000000")  # the same bytes on every run
        with kinodb.Writer(path, image_codec="raw", metadata={"lab": "x"}) as w:
            for ep in _episodes():
                w.add_episode(**ep)
    return path


@pytest.fixture(scope="module")
def two_commits(damaged_dir: Path) -> tuple[Path, int]:
    """Two episodes committed, then one appended; returns (path, old committed end)."""
    path = damaged_dir / "two.kdb"
    eps = _episodes()
    with kinodb.Writer(path, image_codec="raw") as w:
        for ep in eps[:2]:
            w.add_episode(**ep)
    old_end = path.stat().st_size
    with kinodb.Writer(path, mode="a", image_codec="raw") as w:
        w.add_episode(**eps[2])
    return path, old_end


def regions(path: Path) -> dict[str, tuple[int, int]]:
    raw = path.read_bytes()
    with kinodb.open(path) as db:
        commit, slot = db._commit, db._slot
    toc_len = struct.unpack_from("<I", raw, commit.index_offset + 4)[0]
    toc_end = commit.index_offset + INDEX_HEAD.size + toc_len
    return {
        "header": (0, HEADER_SIZE),
        "active slot": (SLOT_OFFSETS[slot], SLOT_OFFSETS[slot] + 64),
        "other slot": (SLOT_OFFSETS[1 - slot], SLOT_OFFSETS[1 - slot] + 64),
        "reserved": (192, DATA_START),
        "index head": (commit.index_offset, commit.index_offset + INDEX_HEAD.size),
        "toc": (commit.index_offset + INDEX_HEAD.size, toc_end),
        "columns": (toc_end, commit.end),
    }


def sample(rng: np.random.Generator, lo: int, hi: int, k: int) -> list[tuple[int, int]]:
    offsets = np.arange(lo, hi) if hi - lo <= k else np.sort(rng.choice(np.arange(lo, hi), k, replace=False))
    masks = rng.choice([0x01, 0x02, 0x10, 0x80, 0xFF], len(offsets))
    return [(int(o), int(m)) for o, m in zip(offsets, masks, strict=True)]


# -- not kdb files, versions ---------------------------------------------------------------


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"K",
        b"KINO",
        b"KINO\x01\x00",
        b"\x89PNG\r\n\x1a\n" + bytes(300),
        b"hello world\n" * 40,
        bytes(4096),
    ],
)
def test_files_that_are_not_kdb(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "not.kdb"
    path.write_bytes(content)
    with pytest.raises(FormatError):
        kinodb.open(path)


def test_error_messages_say_what_is_wrong(tmp_path: Path) -> None:
    path = tmp_path / "x.kdb"
    path.write_bytes(b"")
    with pytest.raises(FormatError, match=r"not a \.kdb file: it has 0 bytes"):
        kinodb.open(path)
    path.write_bytes(b"PK\x03\x04" + bytes(400))
    with pytest.raises(FormatError, match=r"not a .kdb file: starts with b'PK\\x03\\x04', expected b'KINO'"):
        kinodb.open(path)
    with pytest.raises(FileNotFoundError):
        kinodb.open(tmp_path / "missing.kdb")


@pytest.mark.parametrize("major", [2, 7, 0xFFFF])
def test_newer_major_version_names_the_upgrade(one_commit: Path, tmp_path: Path, major: int) -> None:
    raw = bytearray(one_commit.read_bytes())
    struct.pack_into("<H", raw, 4, major)
    struct.pack_into("<I", raw, 60, crc32(bytes(raw[:60])))
    path = tmp_path / "future.kdb"
    path.write_bytes(bytes(raw))
    with pytest.raises(UnsupportedVersionError, match=rf"format {major}\.0.*pip install -U kinodb"):
        kinodb.open(path)


def test_newer_minor_version_is_read(one_commit: Path, tmp_path: Path) -> None:
    raw = bytearray(one_commit.read_bytes())
    struct.pack_into("<H", raw, 6, 9)
    struct.pack_into("<I", raw, 60, crc32(bytes(raw[:60])))
    path = tmp_path / "minor.kdb"
    path.write_bytes(bytes(raw))
    with kinodb.open(path) as db:
        assert len(db) == 3
    before = path.read_bytes()
    with pytest.raises(FormatError, match=r"is a format 1\.9 file \(written by kinodb .*\); this kinodb .* writes "
                       r"format 1\.0 and would drop what the newer format adds"):  # fmt: skip
        kinodb.Writer(path, mode="a")
    assert path.read_bytes() == before


# -- truncation ----------------------------------------------------------------------------


@pytest.mark.parametrize("fixture", ["one_commit", "two_commits"])
def test_truncation_anywhere_is_an_error(
    request: pytest.FixtureRequest, tmp_path: Path, fixture: str
) -> None:
    value = request.getfixturevalue(fixture)
    raw = (value[0] if isinstance(value, tuple) else value).read_bytes()
    path = tmp_path / "cut.kdb"
    cuts = sorted({*range(0, 300), *range(300, len(raw), 7), len(raw) - 1})
    for cut in cuts:
        path.write_bytes(raw[:cut])
        with pytest.raises(FormatError):
            kinodb.open(path)
    path.write_bytes(raw[: len(raw) - 1])
    with pytest.raises(CorruptFileError, match="truncated or damaged"):
        kinodb.open(path)


# -- flipped bytes -------------------------------------------------------------------------


def test_damaged_header_and_active_slot_are_errors(one_commit: Path) -> None:
    r = regions(one_commit)
    mutations = [(o, m) for o in range(*r["header"]) for m in (0x01, 0x80)]
    mutations += [(o, 0x01) for o in range(*r["active slot"])]
    outcomes, _ = probe(one_commit, mutations)
    assert crashes(outcomes, mutations) == []
    bad = [
        (o, m, res) for (o, m), res in zip(mutations, outcomes, strict=True) if not res.startswith("error:")
    ]
    assert bad == []


def test_unused_bytes_change_nothing(one_commit: Path) -> None:
    r = regions(one_commit)
    mutations = [(o, 0xFF) for name in ("other slot", "reserved") for o in range(*r[name])]
    outcomes, pristine = probe(one_commit, mutations)
    assert set(outcomes) == {pristine}


def test_damaged_index_never_crashes_and_is_always_detected(one_commit: Path) -> None:
    rng = np.random.default_rng(11)
    r = regions(one_commit)
    mutations = (
        sample(rng, *r["index head"], 16) + sample(rng, *r["toc"], 250) + sample(rng, *r["columns"], 300)
    )
    outcomes, _ = probe(one_commit, mutations, validate=True)
    assert crashes(outcomes, mutations) == []
    # The index checksum is verified on first use (and by validate), not by open, which
    # stays constant-cost.
    undetected = [
        (o, m) for (o, m), res in zip(mutations, outcomes, strict=True) if res.endswith(":undetected")
    ]
    assert undetected == []
    assert sum(res.startswith("error:") for res in outcomes) > len(outcomes) // 3


def payloads(path: Path) -> list[tuple[int, int]]:
    with kinodb.open(path) as db:
        offsets, lengths = db._cols["payload_offset"].tolist(), db._cols["payload_length"].tolist()
    return [(o, o + n) for o, n in zip(offsets, lengths, strict=True)]


def test_damaged_payload_never_crashes_and_is_always_detected(one_commit: Path) -> None:
    rng = np.random.default_rng(12)
    mutations = [m for lo, hi in payloads(one_commit) for m in sample(rng, lo, hi, 150)]
    outcomes, pristine = probe(one_commit, mutations, validate=True)
    assert crashes(outcomes, mutations) == []
    # Reads do not verify payload checksums (they stay zero-copy); validate does.
    undetected = [
        (o, m) for (o, m), res in zip(mutations, outcomes, strict=True) if res.endswith(":undetected")
    ]
    assert undetected == []
    assert sum(res != pristine for res in outcomes) > len(outcomes) // 2  # most flips change what is read


def test_padding_between_payloads_changes_nothing(one_commit: Path) -> None:
    with kinodb.open(one_commit) as db:
        index_offset = db._commit.index_offset
    ranges = payloads(one_commit)
    gaps = [(a[1], b[0]) for a, b in zip(ranges, [*ranges[1:], (index_offset, 0)], strict=True)]
    mutations = [(o, 0xFF) for lo, hi in gaps for o in range(lo, hi)]
    assert mutations
    outcomes, pristine = probe(one_commit, mutations)
    assert set(outcomes) == {pristine}


def test_damaged_commit_slots_of_an_appended_file(two_commits: tuple[Path, int]) -> None:
    path, _ = two_commits
    r = regions(path)
    newest = [(o, 0x01) for o in range(*r["active slot"])]
    older = [(o, 0x01) for o in range(*r["other slot"])]
    outcomes, pristine = probe(path, newest + older)
    assert crashes(outcomes, newest + older) == []
    # A damaged newest record is indistinguishable from a torn commit: the older state wins.
    states = set(outcomes[: len(newest)])
    assert len(states) == 1 and states != {pristine} and next(iter(states)).startswith("ok:")
    assert set(outcomes[len(newest) :]) == {pristine}


def test_dead_space_of_an_appended_file_is_ignored(two_commits: tuple[Path, int]) -> None:
    path, old_end = two_commits
    with kinodb.open(path) as db:
        old_index_end = old_end
        cols = db.episodes()
        assert len(cols["episode_id"]) == 3
        # the superseded index block lies just before the old committed end
        old_index_start = int(db._cols["payload_offset"][2]) - 1
    rng = np.random.default_rng(13)
    mutations = [
        (o, m) for o, m in sample(rng, old_index_start - 200, old_index_end, 60) if o < old_index_end
    ]
    outcomes, pristine = probe(path, mutations)
    assert set(outcomes) == {pristine}


def test_bad_section_offset_raises_corrupt_file_error_with_the_offset(
    one_commit: Path, tmp_path: Path
) -> None:
    """A structurally wrong index with a valid checksum (as a buggy writer could produce)."""
    raw = bytearray(one_commit.read_bytes())
    with kinodb.open(one_commit) as db:
        commit = db._commit
        col_offset = db._cols["sec.offset"].__array_interface__["data"][0] - _base_address(db)
    struct.pack_into("<Q", raw, col_offset, 10**9)  # first section of episode 0 points past the end
    _recommit(raw, commit.index_offset, commit.index_length)
    path = tmp_path / "bad.kdb"
    path.write_bytes(bytes(raw))
    with kinodb.open(path) as db, pytest.raises(CorruptFileError, match="byte offset 1000000000"):
        db.read_episode(0)


def _base_address(db: kinodb.Database) -> int:
    assert db._mm is not None
    return np.frombuffer(db._mm, np.uint8, 1).__array_interface__["data"][0]  # type: ignore[no-any-return]


def _recommit(raw: bytearray, index_offset: int, index_length: int) -> None:
    """Recompute the index checksum and the commit record's checksum in place."""
    slot = SLOT_OFFSETS[0]
    struct.pack_into("<I", raw, slot + 40, crc32(bytes(raw[index_offset : index_offset + index_length])))
    struct.pack_into("<I", raw, slot + 60, crc32(bytes(raw[slot : slot + 60])))


# -- damage a checksum does not catch (a buggy writer), seen at open or at first use ----------


def _rewritten(src: Path, tmp_path: Path, edit: Any) -> Path:
    """A copy of ``src`` whose bytes ``edit(raw, commit)`` changed, with fresh checksums."""
    raw = bytearray(src.read_bytes())
    with kinodb.open(src) as db:
        commit = db._commit
    edit(raw, commit)
    _recommit(raw, commit.index_offset, commit.index_length)
    path = tmp_path / "edited.kdb"
    path.write_bytes(bytes(raw))
    return path


def test_bad_index_head_is_an_error_at_open(one_commit: Path, tmp_path: Path) -> None:
    def edit(raw: bytearray, commit: Any) -> None:
        raw[commit.index_offset : commit.index_offset + 4] = b"XIDX"

    with pytest.raises(CorruptFileError, match="bad index magic"):
        kinodb.open(_rewritten(one_commit, tmp_path, edit))


def test_damaged_table_of_contents_is_an_error_at_first_use(one_commit: Path, tmp_path: Path) -> None:
    def edit(raw: bytearray, commit: Any) -> None:
        at = commit.index_offset + INDEX_HEAD.size
        raw[at : at + 12] = b'{"columns":['  # no longer a JSON object of the expected shape

    path = _rewritten(one_commit, tmp_path, edit)
    with kinodb.open(path) as db:  # opening reads the header, commit and index head only
        assert len(db) == 3 and db.version() == "1.0"
        for use in (db.schema, db.episodes, lambda: db.read_array(0, "actions"), lambda: db.read_meta(0)):
            with pytest.raises(CorruptFileError, match="table of contents is damaged"):
                use()
    report = validate(path)
    assert not report.ok and any("table of contents is damaged" in e for e in report.errors)


def test_episode_count_disagreeing_with_the_index(one_commit: Path, tmp_path: Path) -> None:
    raw = bytearray(one_commit.read_bytes())
    slot = SLOT_OFFSETS[0]
    struct.pack_into("<Q", raw, slot + 24, 4)  # the commit record says 4 episodes, the index has 3
    struct.pack_into("<I", raw, slot + 60, crc32(bytes(raw[slot : slot + 60])))
    path = tmp_path / "count.kdb"
    path.write_bytes(bytes(raw))
    with kinodb.open(path) as db:
        with pytest.raises(CorruptFileError, match="commit record says 4 episodes, index has 3"):
            db.read_array(0, "actions")
        with pytest.raises(CorruptFileError, match="commit record says 4 episodes"):
            db.episodes()


@pytest.fixture(scope="module")
def many(damaged_dir: Path) -> tuple[Path, list[np.ndarray]]:
    """Enough alike episodes that reads switch to tables; returns the path and each episode's states.

    The file reads as one without a ``uniform`` entry (through the section rows, which the
    tests damage; test_uniform_layout.py covers the entry)."""
    rng = np.random.default_rng(5)
    path = damaged_dir / "many.kdb"
    states = [rng.normal(size=(6, 3)) for _ in range(400)]
    with kinodb.Writer(path) as w:
        for s in states:
            w.add_episode(actions=rng.normal(size=(6, 2)).astype(np.float32), states=s)
    return without_uniform_check(path), states


def _states_offset_column(path: Path) -> tuple[int, int]:
    """(byte offset of the sec.offset column, rows per episode)."""
    with kinodb.open(path) as db:
        at = db._cols["sec.offset"].__array_interface__["data"][0] - _base_address(db)
        return at, int(db._cols["sec_count"][0])


def test_bad_offset_is_caught_before_and_after_reads_switch_to_tables(
    many: tuple[Path, list[np.ndarray]], tmp_path: Path
) -> None:
    src, states = many
    col, width = _states_offset_column(src)

    def edit(raw: bytearray, commit: Any) -> None:
        struct.pack_into("<Q", raw, col + 8 * (200 * width + 1), 10**9)  # episode 200's states

    path = _rewritten(src, tmp_path, edit)
    with kinodb.open(path) as db:
        for _ in range(3):  # the first pass takes the checked path, the later ones the tables
            for i in range(len(states)):
                if i == 200:
                    with pytest.raises(CorruptFileError, match="byte offset 1000000000"):
                        db.read_array(i, "states")
                else:
                    np.testing.assert_array_equal(db.read_array(i, "states"), states[i])
        assert "states" in db._tables
    assert not validate(path).ok


def test_misaligned_offset_is_still_read_where_it_points(
    many: tuple[Path, list[np.ndarray]], tmp_path: Path
) -> None:
    """An offset that is not a multiple of the item size (no writer makes one) still maps."""
    src, states = many
    col, width = _states_offset_column(src)
    row = col + 8 * (7 * width + 1)  # episode 7's float64 states
    with kinodb.open(src) as db:
        old = int(db._cols["sec.offset"][7 * width + 1])

    def edit(raw: bytearray, commit: Any) -> None:
        struct.pack_into("<Q", raw, row, old - 4)

    path = _rewritten(src, tmp_path, edit)
    want = np.frombuffer(path.read_bytes(), "<f8", 18, old - 4).reshape(6, 3)
    with kinodb.open(path) as db:
        for _ in range(3):
            for i in range(len(states)):
                got = db.read_array(i, "states")
                np.testing.assert_array_equal(got, want if i == 7 else states[i])
                assert not got.flags.writeable


def test_upgrade_and_merge_refuse_a_damaged_payload_instead_of_sealing_it(
    one_commit: Path, tmp_path: Path
) -> None:
    from kinodb.kdb.upgrade import upgrade

    damaged = tmp_path / "damaged.kdb"
    raw = bytearray(one_commit.read_bytes())
    with kinodb.open(one_commit) as db:
        at = int(db._cols["payload_offset"][1]) + 8  # inside episode 1's arrays
    raw[at] ^= 0xFF
    damaged.write_bytes(bytes(raw))
    assert not validate(damaged).ok
    for call in (lambda out: upgrade(damaged, out), lambda out: kinodb.merge([damaged], out)):
        out = tmp_path / "out.kdb"
        with pytest.raises(CorruptFileError, match=r"episode 1: payload checksum mismatch.*kino validate"):
            call(out)
        assert not out.exists()  # nothing half-written, and no file that would validate clean
    upgrade(one_commit, tmp_path / "clean.kdb")  # an undamaged file still upgrades
    assert validate(tmp_path / "clean.kdb").ok


def test_export_refuses_a_damaged_payload(one_commit: Path, tmp_path: Path) -> None:
    from kinodb.export import export

    damaged = tmp_path / "damaged.kdb"
    raw = bytearray(one_commit.read_bytes())
    with kinodb.open(one_commit) as db:
        at = int(db._cols["payload_offset"][0]) + 8
    raw[at] ^= 0xFF
    damaged.write_bytes(bytes(raw))
    with pytest.raises(CorruptFileError, match=r"episode 0: payload checksum mismatch"):
        export(damaged, tmp_path / "npy", format="numpy")
    assert not (tmp_path / "npy").exists()


def test_validate_reports_a_damaged_commit_record_that_hides_a_newer_commit(
    two_commits: tuple[Path, int], tmp_path: Path
) -> None:
    path, old_end = two_commits
    r = regions(path)
    for name, flip_at in (("active slot", r["active slot"][0] + 9), ("other slot", r["other slot"][0] + 9)):
        copy = tmp_path / f"{name.replace(' ', '_')}.kdb"
        raw = bytearray(path.read_bytes())
        raw[flip_at] ^= 0x01
        copy.write_bytes(bytes(raw))
        report = validate(copy)
        if name == "active slot":  # the newest record: the file reads at the older commit
            assert not report.ok
            (error,) = report.errors
            assert "fails its checksum, and an index block at byte offset" in error
            assert f"past the committed end ({old_end})" in error and "(2 episodes)" in error
            assert "kinodb refuses to append to it" in error and "--commit newest" in error
        else:  # the older record: nothing is hidden
            assert report.ok
            assert any(
                "fails its checksum (a write torn by a crash, or damage)" in w for w in report.warnings
            )
    assert validate(path).ok and not validate(path).warnings
