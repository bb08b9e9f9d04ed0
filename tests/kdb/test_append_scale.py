"""Appends keep the stored rows encoded, and write the index that encoding every value again
would: the same bytes as the reference builder (benchmarks/_reference_index.py, which decoded
every stored row to Python objects: the writer's builder before appends kept them encoded)."""

from __future__ import annotations

import json
import shutil
import struct
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import kinodb
from kinodb.kdb import writer as writer_module
from kinodb.kdb._builder import Rows, TableBuilder, first_use, join_strings
from kinodb.kdb._layout import INDEX_HEAD, SLOT_OFFSETS, align, crc32

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
from _reference_index import ReferenceTableBuilder  # noqa: E402
from _reference_index import encode_strings as ref_encode_strings  # noqa: E402

# -- helpers ------------------------------------------------------------------------------

Episode = dict[str, Any]


def ep(extra: Mapping[str, Any] | None = None, *, T: int = 3, **kw: Any) -> Episode:
    """A small episode with the given extra fields (actions encode the frame count)."""
    out: Episode = {"actions": np.arange(T * 2, dtype=np.float32).reshape(T, 2), "extra": dict(extra or {})}
    out.update(kw)
    return out


def write(path: Path, episodes: Sequence[Episode], mode: str = "w", **writer_kw: Any) -> None:
    with kinodb.Writer(path, mode=mode, image_codec="raw", **writer_kw) as w:
        for e in episodes:
            w.add_episode(**e)


def with_reference(fn: Any, *args: Any, **kw: Any) -> Any:
    with mock.patch.object(writer_module, "TableBuilder", ReferenceTableBuilder):
        return fn(*args, **kw)


def append_both(
    base: Path, work: Path, rounds: Sequence[Sequence[Episode]], **writer_kw: Any
) -> tuple[bytes, bytes]:
    """Append ``rounds`` (one writer each) to copies of ``base`` with the current builder and
    the reference one; the two files' bytes."""
    out = []
    for name in ("current", "reference"):
        path = work / f"{name}.kdb"
        shutil.copyfile(base, path)
        for episodes in rounds:
            if name == "current":
                write(path, episodes, mode="a", **writer_kw)
            else:
                with_reference(write, path, episodes, mode="a", **writer_kw)
        out.append(path.read_bytes())
    return out[0], out[1]


def run_both(base: Path, work: Path, fn: Any) -> tuple[bytes, bytes]:
    """``fn(path)`` on copies of ``base`` with the current builder and the reference one; the
    two files' bytes."""
    out = []
    for name in ("current", "reference"):
        path = work / f"{name}.kdb"
        shutil.copyfile(base, path)
        fn(path) if name == "current" else with_reference(fn, path)
        out.append(path.read_bytes())
    return out[0], out[1]


@pytest.fixture(autouse=True)
def _fixed_time(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")  # "created"/"modified": the same bytes


def extras_of(path: Path) -> list[dict[str, Any]]:
    with kinodb.open(path) as db:
        return [db._extra_fields(i) for i in range(len(db))]


# -- byte identity --------------------------------------------------------------------------

KINDS = {
    "flag": [True, False, None],
    "count": [3, -7, 2**62],
    "score": [0.5, -0.0, 1e300],
    "nothing": [None, None, None],
    "label": ["lab", "", "ü 杯"],
    "mixed": [1, "two", 3.0],
    "tags": [["a", 1], [], [[True], None]],
}

SCENARIOS: dict[str, tuple[list[Episode], list[Episode]]] = {
    "every kind, same kinds appended": (
        [ep({k: v[i] for k, v in KINDS.items()}, task=f"t{i % 2}", embodiment="franka") for i in range(3)],
        [ep({k: v[2 - i] for k, v in KINDS.items()}, task=t, embodiment=e)
         for i, (t, e) in enumerate([("t1", "franka"), ("new task", "ur5"), ("", "franka")])],
    ),
    "fields only in old or only in new episodes": (
        [ep({"old_str": "a", "old_int": 1, "both": "x"}), ep({"old_list": [1], "both": None})],
        [ep({"new_str": "b", "new_float": 2.5}), ep({"new_json": [None], "both": "y", "new_null": None}), ep()],
    ),
    "kinds that change": (
        [ep({"i2f": 1, "s2i": "a", "b2i": True, "f2s": 1.5, "n2i": None, "j2i": [1], "i2n": 4, "s2n": "q"}),
         ep({"i2f": 7, "s2i": None, "b2i": False, "f2s": -0.0, "j2i": 2})],
        [ep({"i2f": 2.5, "s2i": 3, "b2i": 2, "f2s": "x", "n2i": 5, "j2i": 9, "i2n": None, "s2n": None})],
    ),
    "a str field without nulls gains one": (
        [ep({"scene": "lab"}), ep({"scene": "sim"})],
        [ep({"scene": None}), ep({"scene": "kitchen"}), ep({"scene": "lab"})],
    ),
    "a str field with nulls first": (
        [ep({"scene": None}), ep({"scene": "lab"}), ep({})],
        [ep({"scene": ""}), ep({"scene": "sim"})],
    ),
    "ints past int64 and floats by their bits": (
        [ep({"big": 2**70, "f": 0.1, "g": 1, "z": 0.0}), ep({"big": 1, "f": 5e-324, "g": -1, "z": -0.0})],
        [ep({"big": -(2**80), "f": 0.30000000000000004, "g": 0.0, "z": "zero"}), ep({"f": -0.0, "g": -0.0})],
    ),
    "many new distinct task strings": (
        [ep(task=f"task {i}", embodiment=("a", "b")[i % 2]) for i in range(50)],
        # 40 new values first, then old ones: found once the dictionary is read whole
        [ep(task=f"task {i}", embodiment=f"robot {i % 45}") for i in [*range(60, 100), *range(0, 50, 3)]],
    ),
}  # fmt: skip


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_an_append_writes_the_bytes_of_the_reference_builder(tmp_path: Path, scenario: str) -> None:
    old, new = SCENARIOS[scenario]
    base = tmp_path / "base.kdb"
    write(base, old)
    current, reference = append_both(base, tmp_path, [new])
    assert current == reference
    got = extras_of(tmp_path / "current.kdb")
    assert got == [e["extra"] for e in old + new]  # the values themselves read back too


def test_a_new_file_is_the_reference_builders_too(tmp_path: Path) -> None:
    old, new = SCENARIOS["every kind, same kinds appended"]
    write(tmp_path / "a.kdb", old + new)
    with_reference(write, tmp_path / "b.kdb", old + new)
    assert (tmp_path / "a.kdb").read_bytes() == (tmp_path / "b.kdb").read_bytes()


def test_repeated_appends_with_cameras_arrays_and_stats_match_the_reference(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)

    def cam_ep(i: int, cams: tuple[str, ...], arrays: tuple[str, ...]) -> Episode:
        return ep(
            {"round": i, "tag": f"r{i % 2}"}, T=4, task=f"task {i % 3}",
            images={c: rng.integers(0, 255, (4, 3, 5, 3), dtype=np.uint8) for c in cams},
            extra_arrays={a: rng.normal(size=(4, 2)).astype(np.float32) for a in arrays},
        )  # fmt: skip

    base = tmp_path / "base.kdb"
    with kinodb.Writer(base, mode="w", image_codec="raw") as w:
        for i in range(3):
            w.add_episode(**cam_ep(i, ("front",), ("force",)))
        w.stats = {"actions": {"mean": [0.0, 1.0]}}
    rounds = [
        [cam_ep(3, ("front", "wrist"), ())],  # a new camera name: the section names grow
        [],  # no episodes: the index is written again all the same
        [cam_ep(4, (), ("force", "torque")), cam_ep(5, ("wrist",), ())],
    ]
    current, reference = append_both(base, tmp_path, rounds)
    assert current == reference
    with kinodb.open(tmp_path / "current.kdb") as db:
        assert len(db) == 6 and db.dataset_info()["stats"]["stale"] is True
        assert db._names == [
            "actions",
            "states",
            "rewards",
            "is_terminal",
            "force",
            "front",
            "wrist",
            "torque",
        ]
        assert db.read_episode(4)["torque"].shape == (4, 2)


def test_copied_episodes_appended_match_the_reference(tmp_path: Path) -> None:
    src = tmp_path / "src.kdb"
    write(src, [ep({"scene": "a", "n": i}, task=f"copied {i}") for i in range(3)])
    base = tmp_path / "base.kdb"
    write(base, [ep({"scene": "b", "x": [1]}, task="copied 1")])

    def copy_all(path: Path) -> None:
        with kinodb.open(src) as db, kinodb.Writer(path, mode="a") as w:
            for i in range(len(db)):
                w.copy_episode(db, i, extra={"from": "src"})

    current, reference = run_both(base, tmp_path, copy_all)
    assert current == reference


def test_an_episode_taken_back_during_an_append_leaves_the_reference_bytes(tmp_path: Path) -> None:
    base = tmp_path / "base.kdb"
    write(base, [ep({"a": 1}, extra_arrays={"force": np.zeros((3, 2), np.float32)})])
    fail = ep({"a": 2}, extra_arrays={"force": np.ones((3, 2), np.float32)})
    keep = ep({"a": 3, "b": "new"})

    def append(path: Path) -> None:
        with kinodb.Writer(path, mode="a") as w:
            real = w._table.add_sections

            def flaky(*args: Any, **kw: Any) -> Any:
                real(*args, **kw)  # the episode's bytes written and its section rows in the table
                raise RuntimeError("interrupted")

            with mock.patch.object(w._table, "add_sections", flaky), pytest.raises(RuntimeError):
                w.add_episode(**fail)
            assert len(w._table.sections["sec.name"]) == 5  # the loaded episode's rows only
            w.add_episode(**keep)

    current, reference = run_both(base, tmp_path, append)
    assert current == reference
    assert extras_of(tmp_path / "current.kdb") == [{"a": 1}, {"a": 3, "b": "new"}]


# Values of every kind an extra field takes, and episodes drawing fields from a few names.
_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=4),
    st.lists(st.one_of(st.integers(-5, 5), st.text(max_size=2), st.none()), max_size=3),
)
_episodes = st.lists(
    st.tuples(
        st.dictionaries(st.sampled_from(["a", "b", "c", "d"]), _values, max_size=4),
        st.sampled_from(["", "pick", "place", "ü 杯"]),
    ),
    max_size=5,
)


@settings(max_examples=60, deadline=None)
@given(old=_episodes.filter(bool), new=_episodes)
def test_any_append_writes_the_reference_bytes(
    old: list[tuple[dict[str, Any], str]], new: list[tuple[dict[str, Any], str]]
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        write(work / "base.kdb", [ep(x, task=t) for x, t in old])
        current, reference = append_both(work / "base.kdb", work, [[ep(x, task=t) for x, t in new]])
        assert current == reference
        assert extras_of(work / "current.kdb") == [x for x, _ in old + new]


# -- files kinodb does not write: the reference's normal form --------------------------------


def _recommit(raw: bytearray) -> None:
    """Give the newest commit record the index's CRC-32 again (a foreign writer's file)."""
    slot = max(SLOT_OFFSETS, key=lambda at: struct.unpack_from("<Q", raw, at)[0])
    offset, length = struct.unpack_from("<QQ", raw, slot + 8)
    struct.pack_into("<I", raw, slot + 40, crc32(bytes(raw[offset : offset + length])))
    struct.pack_into("<I", raw, slot + 60, crc32(bytes(raw[slot : slot + 60])))


def _columns(raw: bytes) -> dict[str, int]:
    slot = max(SLOT_OFFSETS, key=lambda at: struct.unpack_from("<Q", raw, at)[0])
    offset = struct.unpack_from("<Q", raw, slot + 8)[0]
    toc_len = struct.unpack_from("<I", raw, offset + 4)[0]
    toc = json.loads(raw[offset + INDEX_HEAD.size : offset + INDEX_HEAD.size + toc_len])
    body = offset + align(INDEX_HEAD.size + toc_len)
    return {name: body + rel for name, (_, rel, _) in toc["columns"].items()}


def _poke(raw: bytearray, at: int, fmt: str, *values: Any) -> None:
    struct.pack_into(fmt, raw, at, *values)


@pytest.mark.parametrize(
    "edit",
    [
        "dictionary out of first-use order",
        "an unused dictionary entry",
        "a null row coded as a value",
        "a null row with JSON text",
    ],
)
def test_an_append_to_an_index_in_another_order_writes_the_reference_bytes(tmp_path: Path, edit: str) -> None:
    base = tmp_path / "base.kdb"
    write(base, [ep({"s": "x", "j": [i]}, task="abc"[i]) for i in range(3)])  # extra.0: "j", extra.1: "s"
    raw = bytearray(base.read_bytes())
    cols = _columns(bytes(raw))
    if edit == "dictionary out of first-use order":  # entries "a", "b" swapped, codes to match
        raw[cols["task.dict_bytes"] : cols["task.dict_bytes"] + 2] = b"ba"
        _poke(raw, cols["task.codes"], "<ii", 1, 0)
    elif edit == "an unused dictionary entry":  # episode 1's task becomes "a": "b" is unused
        _poke(raw, cols["task.codes"] + 4, "<i", 0)
    elif edit == "a null row coded as a value":  # episode 1's "s" null, its code left as it was
        _poke(raw, cols["extra.1.state"] + 1, "<B", 1)
        _poke(raw, cols["extra.1.codes"] + 4, "<i", 0)
    else:  # episode 1's "j" null, its text left in place
        _poke(raw, cols["extra.0.state"] + 1, "<B", 1)
    _recommit(raw)
    base.write_bytes(bytes(raw))
    current, reference = append_both(base, tmp_path, [[ep({"s": "z"}, task="b"), ep({"s": None}, task="d")]])
    assert current == reference


# -- the parts ------------------------------------------------------------------------------


def test_first_use_order_and_joined_strings_match_encoding_every_value() -> None:
    rng = np.random.default_rng(3)
    words = ["", "a", "bb", "ü", "杯", "a" * 40, "x1", "x2"]
    for _ in range(50):
        k = int(rng.integers(1, len(words) + 1))
        entries = [words[i] for i in rng.permutation(len(words))[:k]]
        codes = rng.integers(0, k, int(rng.integers(0, 12))).astype("<i4")
        blob = np.frombuffer("".join(entries).encode(), "|u1")
        offsets = np.zeros(k + 1, "<u8")
        np.cumsum([len(e.encode()) for e in entries], out=offsets[1:])
        added = [words[i] for i in rng.integers(0, len(words), int(rng.integers(0, 6)))] + ["fresh"]
        joined = join_strings(first_use(codes, offsets, blob), added)
        want = ref_encode_strings([entries[c] for c in codes.tolist()] + added)
        for part, expected in zip(("codes", "dict_offsets", "dict_bytes"), want, strict=True):
            got = joined[part]
            assert isinstance(got, tuple)
            np.testing.assert_array_equal(np.concatenate(got), expected, err_msg=part)


def test_rows_remove_only_added_rows() -> None:
    rows = Rows(np.array([1, 2], "<u8"))
    rows.append(3)
    rows.append(4)
    assert len(rows) == 4 and list(rows) == [1, 2, 3, 4]
    del rows[3:]
    assert list(rows) == [1, 2, 3]
    with pytest.raises(ValueError, match="only added rows"):
        del rows[1:]
    base, added = rows.parts("<u8")
    assert base.tolist() == [1, 2] and added.tolist() == [3] and added.dtype == np.dtype("<u8")


def test_the_builder_holds_no_object_per_loaded_episode(tmp_path: Path) -> None:
    path = tmp_path / "big.kdb"
    write(path, [ep({"s": f"v{i % 5}", "l": [i], "f": i / 3}, T=1) for i in range(300)])
    table = TableBuilder()
    with kinodb.open(path) as db:
        table.load(db._block)
    assert all(not r.added for r in [*table.rows.values(), *table.sections.values()])
    assert table.extras == {} and all(not v for v in table.strings.values())
    assert len(table) == 300


# -- damage a checksum cannot catch (a faulty writer): refused, the file left as it was -----


@pytest.mark.parametrize(
    ("column", "at", "value", "message"),
    [
        ("task.dict_offsets", 8, 99, r"the string dictionary of column 'task' is damaged: its offsets"),
        ("embodiment.codes", 4, 7, r"column 'embodiment' holds out-of-range string codes \(first: episode 1, code 7"),
        ("task.dict_bytes", 1, 0x80, r"column 'task' holds invalid UTF-8"),
        ("extra.0.offsets", 8, 9, r"extra field 'j' is damaged: its offsets decrease"),
        ("extra.1.codes", 0, -1, r"extra field 's' holds out-of-range string codes \(first: episode 0, code -1"),
    ],
)  # fmt: skip
def test_an_append_refuses_damaged_stored_columns(
    tmp_path: Path, column: str, at: int, value: int, message: str
) -> None:
    path = tmp_path / "bad.kdb"
    write(path, [ep({"s": "x", "j": [10 * i]}, task=f"task {i}", embodiment="abc"[i]) for i in range(3)])
    raw = bytearray(path.read_bytes())
    fmt = {"codes": "<i", "dict_offsets": "<Q", "offsets": "<Q", "dict_bytes": "<B"}[column.rsplit(".", 1)[1]]
    _poke(raw, _columns(bytes(raw))[column] + at, fmt, value)
    _recommit(raw)
    path.write_bytes(bytes(raw))
    with pytest.raises(kinodb.CorruptFileError, match=message) as info:
        kinodb.Writer(path, mode="a")
    assert str(info.value).startswith(f"{path}: index at byte offset ")
    assert path.read_bytes() == raw
