"""The writer holds the index rows it adds in about the bytes the index takes, not as a
Python object per value, and its typed row buffers behave as the rows they hold."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import pytest

import kinodb
from kinodb.kdb._builder import AddedStrings, Rows, TableBuilder, first_use, join_strings
from kinodb.kdb._table import EPISODE_COLUMNS, SECTION_COLUMNS


def _episode_row(i: int) -> dict[str, object]:
    return {c: 0 for c in EPISODE_COLUMNS} | {"episode_id": i, "fps": 10.0, "success": -1}


def _section_row() -> dict[str, object]:
    return {c: 0 for c in SECTION_COLUMNS} | {"sec.dims": [7, 0, 0]}


def test_adding_episodes_takes_a_few_hundred_bytes_each(tmp_path: Path) -> None:
    n = 10_000
    actions, states = np.zeros((1, 7), np.float32), np.zeros((1, 14), np.float32)
    rewards = np.zeros(1, np.float32)
    with kinodb.Writer(tmp_path / "many.kdb", mode="w") as w:
        w.add_episode(actions=actions, states=states, rewards=rewards, embodiment="arm", task="pick")
        tracemalloc.start(1)
        try:
            start = tracemalloc.get_traced_memory()[0]
            for i in range(n):
                w.add_episode(
                    actions=actions, states=states, rewards=rewards, embodiment="arm", task="pick",
                    success=bool(i % 3),
                )  # fmt: skip
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    per_episode = (peak - start) / n
    # Its index rows take about 150 bytes per episode on disk; a Python object per value took ~1 KB.
    assert per_episode < 400, f"{per_episode:.0f} bytes per episode"
    with kinodb.open(tmp_path / "many.kdb") as db:
        assert len(db) == n + 1
        assert db.read_meta(n)["success"] == bool((n - 1) % 3)


def test_rows_of_several_values_count_iterate_and_remove_by_row() -> None:
    rows = Rows(np.array([[1, 2, 3]], "<u4"))
    rows.append([4, 5, 6])
    rows.append((7, 8, 9))
    assert len(rows) == 3 and list(rows) == [[1, 2, 3], [4, 5, 6], [7, 8, 9]]
    del rows[2:]
    base, added = rows.parts("<u4")
    assert base.tolist() == [[1, 2, 3]] and added.tolist() == [[4, 5, 6]]
    assert added.dtype == np.dtype("<u4")
    with pytest.raises(ValueError, match="holds 3 values, got 2"):
        rows.append([1, 2])
    with pytest.raises(OverflowError):
        rows.append([1, 2**32, 3])  # refused whole: no value of the row is kept
    assert len(rows) == 2 and rows.added.tolist() == [4, 5, 6]
    rows.append([10, 11, 12])  # `added` (still held) is a copy: the buffer is free to grow
    assert rows.parts("<u4")[1].tolist() == [[4, 5, 6], [10, 11, 12]]


def test_rows_keep_values_exactly_and_refuse_what_the_column_cannot_hold() -> None:
    floats = Rows(np.zeros(0, "<f8"))
    for value in (0.1, -0.0, float("nan"), np.float32(1.5), 3):
        floats.append(value)
    got = floats.parts("<f8")[1]
    want = np.array([0.1, -0.0, float("nan"), 1.5, 3.0], "<f8")
    assert got.tobytes() == want.tobytes()
    with pytest.raises(OverflowError):
        Rows(np.zeros(0, "<u8")).append(-1)
    with pytest.raises(OverflowError):
        Rows(np.zeros(0, "<u2")).append(2**16)
    small = Rows(np.zeros(0, "|i1"))
    small.append(-1)
    assert small.parts("|i1")[1].tolist() == [-1]


def test_a_row_that_does_not_fit_moves_no_queued_row_into_the_columns() -> None:
    # The writer checks each value before it adds a row; the table moves queued rows into
    # its columns all or none, so that the columns never disagree on their length.
    table = TableBuilder()
    table.add_episode(_episode_row(0), {"embodiment": "arm", "task": "pick"}, {})
    table.add_section(_section_row())
    assert {len(r) for r in table.rows.values()} == {1} and {len(r) for r in table.sections.values()} == {1}
    table.add_episode(_episode_row(1), {"embodiment": "arm", "task": "pick"}, {})
    table.add_episode(_episode_row(2) | {"sec_count": 2**16}, {"embodiment": "arm", "task": "pick"}, {})
    table.add_section(_section_row())
    table.add_section(_section_row() | {"sec.offset": -1})
    with pytest.raises(OverflowError):
        table.rows  # noqa: B018
    with pytest.raises(OverflowError):
        table.sections  # noqa: B018
    assert {len(r) for r in table._rows.values()} == {1} and {len(r) for r in table._sections.values()} == {1}
    assert len(table._row_queue) == 2 and len(table._section_queue) == 2


def test_added_strings_join_as_every_value_would() -> None:
    values = ["b", "a", "b", "c", "a", "d"]
    entries = ["a", "x"]
    blob = np.frombuffer("".join(entries).encode(), "|u1")
    offsets = np.array([0, 1, 2], "<u8")
    loaded = first_use(np.array([1, 0, 1], "<i4"), offsets, blob)
    added = AddedStrings(values)
    assert len(added) == 6 and list(added) == values and added.values == ["b", "a", "c", "d"]
    by_value, by_code = join_strings(loaded, values), join_strings(loaded, added)
    for part in ("codes", "dict_offsets", "dict_bytes"):
        a, b = by_value[part], by_code[part]
        assert isinstance(a, tuple) and isinstance(b, tuple)
        np.testing.assert_array_equal(np.concatenate(a), np.concatenate(b), err_msg=part)
        assert np.concatenate(a).dtype == np.concatenate(b).dtype
    added.append("d")
    assert added.values == ["b", "a", "c", "d"] and list(added.codes) == [0, 1, 0, 2, 1, 3, 3]
