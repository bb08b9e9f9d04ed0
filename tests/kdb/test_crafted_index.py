"""An index whose checksums are valid but whose content no kinodb writer leaves (a faulty
writer, or crafted bytes): copies, `validate` and the reader name the damage with a
`CorruptFileError` instead of copying it, crashing, or serving wrong arrays."""

from __future__ import annotations

import json
import re
import shutil
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from test_damage_index import damaged, index_layout

import kinodb
from _factories import without_uniform_check
from kinodb import CorruptFileError
from kinodb._cli.main import main
from kinodb.kdb._layout import INDEX_HEAD, align
from kinodb.kdb.upgrade import upgrade
from kinodb.kdb.validate import validate
from kinodb.merge import merge


def _write(path: Path, n: int = 4) -> Path:
    with kinodb.Writer(path, image_codec="raw") as w:
        for e in range(n):
            w.add_episode(
                actions=np.full((5, 4), e, np.float32), states=np.zeros((5, 2), np.float32), fps=10.0,
                task=f"pick {e}", images={"cam": np.full((5, 4, 4, 3), e, np.uint8)},
            )  # fmt: skip
    return path


@pytest.fixture
def clean(tmp_path: Path) -> Path:
    return _write(tmp_path / "clean.kdb")


def _column(raw: bytearray, name: str) -> np.ndarray:
    """Index column ``name`` of the newest commit, a writable view of ``raw``."""
    _, _, toc, cols = index_layout(raw)
    dtype, _, shape = toc["columns"][name]
    return np.ndarray(tuple(shape), dtype, buffer=raw, offset=cols[name])


def _row(raw: bytearray, episode: int, name: str) -> int:
    """The section row of ``name`` in ``episode``."""
    names = index_layout(raw)[2]["section_names"]
    start, count = int(_column(raw, "sec_start")[episode]), int(_column(raw, "sec_count")[episode])
    return next(r for r in range(start, start + count) if names[_column(raw, "sec.name")[r]] == name)


def _set(episode: int, name: str, column: str, value: object) -> Callable[[bytearray, dict[str, int]], None]:
    """An edit storing ``value`` in ``column`` of ``episode``'s section row ``name``."""

    def edit(raw: bytearray, cols: dict[str, int]) -> None:
        _column(raw, column)[_row(raw, episode, name)] = value

    return edit


def _payload(raw: bytearray, episode: int) -> int:
    return int(_column(raw, "payload_offset")[episode])


# -- copies check that each section lies inside its payload ---------------------------------


def _moved(name: str, where: str) -> Callable[[bytearray, dict[str, int]], None]:
    """Move episode 2's section ``name`` to the start of the data area, into episode 0's
    payload (before its own) or into episode 3's (after it)."""

    def edit(raw: bytearray, cols: dict[str, int]) -> None:
        at = {"start": 256, "before": _payload(raw, 0), "after": _payload(raw, 3)}[where]
        _column(raw, "sec.offset")[_row(raw, 2, name)] = at

    return edit


@pytest.mark.parametrize("name", ["actions", "cam"])
@pytest.mark.parametrize("where", ["start", "before", "after"])
@pytest.mark.parametrize("how", ["upgrade", "merge"])
def test_copy_refuses_a_section_outside_its_payload(
    clean: Path, tmp_path: Path, name: str, where: str, how: str
) -> None:
    bad = damaged(clean, tmp_path / "bad.kdb", _moved(name, where), fix=True)
    out = tmp_path / "out.kdb"
    run = (
        (lambda **kw: upgrade(bad, out, **kw)) if how == "upgrade" else (lambda **kw: merge([bad], out, **kw))
    )
    with pytest.raises(CorruptFileError, match=f"episode 2: section '{name}' .*lies outside its payload"):
        run()
    assert not out.exists()
    if how == "upgrade":
        with pytest.warns(UserWarning, match="1 episode skipped"):
            upgrade(bad, out, on_error="skip")
    else:
        assert merge([bad], out, on_error="skip").inputs[0].skipped == (2,)
    assert validate(out).ok
    with kinodb.open(out) as db:
        assert len(db) == 3
        assert [int(db.read_array(k, "actions")[0, 0]) for k in range(3)] == [0, 1, 3]


# -- a variable-length column of the wrong rank ---------------------------------------------


def _retoc(change: Callable[[dict[str, Any]], None]) -> Callable[[bytearray, dict[str, int]], None]:
    """An edit applying ``change`` to the TOC (the index body stays in place)."""

    def edit(raw: bytearray, cols: dict[str, int]) -> None:
        offset, toc_at, toc, _ = index_layout(raw)
        old_len = struct.unpack_from("<I", raw, offset + 4)[0]
        change(toc)
        text = json.dumps(toc, separators=(",", ":")).encode().ljust(old_len)
        assert align(INDEX_HEAD.size + len(text)) == align(INDEX_HEAD.size + old_len)  # the body stays put
        raw[toc_at : toc_at + len(text)] = text
        struct.pack_into("<I", raw, offset + 4, len(text))

    return edit


def _reshaped(column: str, shape: list[int]) -> Callable[[bytearray, dict[str, int]], None]:
    """An edit storing ``shape`` as ``column``'s shape in the TOC."""
    return _retoc(lambda toc: toc["columns"][column].__setitem__(2, shape))


def _with_fields(path: Path) -> Path:
    with kinodb.Writer(path) as w:
        for e in range(3):
            w.add_episode(
                actions=np.zeros((3, 2), np.float32), task=f"task {e}", extra={"tags": [e], "s": f"s{e}"}
            )
    return path


@pytest.mark.parametrize(
    ("column", "shape"),
    [("task.dict_offsets", []), ("task.dict_offsets", [2, 2]), ("task.dict_offsets", [0]),
     ("task.dict_bytes", []), ("extra.1.bytes", []), ("extra.1.bytes", [1, 1]), ("extra.0.dict_offsets", [])],
)  # fmt: skip
def test_a_variable_length_column_of_the_wrong_rank_is_damage(
    tmp_path: Path, column: str, shape: list[int]
) -> None:
    clean = _with_fields(tmp_path / "clean.kdb")
    assert index_layout(bytearray(clean.read_bytes()))[2]["extras"] == [["s", "str"], ["tags", "json"]]
    bad = damaged(clean, tmp_path / "bad.kdb", _reshaped(column, shape), fix=True)
    report = validate(bad)
    assert not report.ok
    assert any(f"column {column!r} has shape" in e for e in report.errors), report.errors
    with (
        pytest.raises(CorruptFileError, match=f"column '{re.escape(column)}' has shape"),
        kinodb.open(bad) as db,
    ):
        for e in range(len(db)):
            db.read_meta(e)
    with pytest.raises(CorruptFileError, match="has shape"):
        kinodb.Writer(bad, mode="a").close()
    assert main(["validate", str(bad)]) == 1


# -- arrays unlike the dataset schema -------------------------------------------------------


@pytest.mark.parametrize(
    ("column", "value", "said"),
    [("sec.dtype", 6, "int32 (4,)"), ("sec.dims", [2, 0, 0], "float32 (2,)")],
)
def test_validate_names_an_array_unlike_the_schema(
    clean: Path, tmp_path: Path, column: str, value: object, said: str
) -> None:
    bad = damaged(clean, tmp_path / "bad.kdb", _set(1, "actions", column, value), fix=True)
    with kinodb.open(bad) as db, pytest.raises(CorruptFileError, match="run kino validate"):
        db.gather("actions")
    report = validate(bad)
    assert (
        f"episode 1: array 'actions' is {said} per frame, but the dataset schema says every episode holds it "
        "as float32 (4,); the index is damaged"
    ) in report.errors


def test_validate_names_a_schema_dtype_kinodb_does_not_store(clean: Path, tmp_path: Path) -> None:
    def change(toc: dict[str, Any]) -> None:
        toc["dataset"]["schema"]["actions"]["dtype"] = "nonsens"

    bad = damaged(clean, tmp_path / "bad.kdb", _retoc(change), fix=True)
    assert (
        "schema actions.dtype 'nonsens' is not a dtype kinodb stores; the index is damaged"
        in validate(bad).errors
    )


# -- the first reads of a freshly opened file -----------------------------------------------


def _into_next_payload(raw: bytearray, cols: dict[str, int]) -> None:
    _column(raw, "sec.offset")[_row(raw, 0, "actions")] = _payload(raw, 1)


@pytest.mark.parametrize(
    "edit",
    [_set(0, "actions", "sec.dims", [5, 0, 0]), _set(0, "actions", "sec.dtype", 6), _into_next_payload],
)
@pytest.mark.parametrize("fix", [False, True])
def test_a_first_read_refuses_a_layout_the_index_contradicts(
    clean: Path, tmp_path: Path, edit: Callable[[bytearray, dict[str, int]], None], fix: bool
) -> None:
    rows = without_uniform_check(shutil.copy(clean, tmp_path / "rows.kdb"))  # reads go through the rows
    bad = damaged(rows, tmp_path / "bad.kdb", edit, fix=fix)
    said = "disagrees with itself" if fix else "index checksum mismatch"
    with kinodb.open(bad) as db, pytest.raises(CorruptFileError, match=said):
        db.read_array(0, "actions")
    if edit is _into_next_payload:  # a layout the reads know already: its offset is not checked again
        return
    with kinodb.open(bad) as db:
        assert db.read_array(1, "actions").shape == (5, 4)  # its own rows agree
        with pytest.raises(CorruptFileError, match=said):
            db.read_array(0, "actions")
