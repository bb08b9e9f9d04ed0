"""`kino stats`' table keeps its columns apart: a value of the longest text a column shows
("-1.2346e-100") still has a space before it, and each header ends where its values end."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import kinodb
from kinodb._cli.main import main


def _table(tmp_path: Path, capsys: pytest.CaptureFixture[str], actions: np.ndarray) -> list[str]:
    path = tmp_path / "a.kdb"
    with kinodb.Writer(path) as w:
        w.add_episode(actions=actions)
    capsys.readouterr()
    assert main(["stats", str(path), "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    start = lines.index("actions: float64 (2,), 3 frames") + 1
    return lines[start : start + 3]


def test_the_longest_values_stay_apart_and_under_their_headers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    actions = np.array([[-1.23456e-100, -1.5e300], [0.5, -2.5e300], [1.0, -3.5e-300]])
    header, *rows = _table(tmp_path, capsys, actions)
    headers = header.split()
    assert headers == ["FEATURE", "MEAN", "STD", "MIN", "Q01", "Q99", "MAX"]
    assert rows[0].split() == ["[0]", "0.5", "0.40825", "-1.2346e-100", "0.01", "0.99", "1"]
    assert rows[1].split()[1] == "-1.3333e+300"
    for row in rows:
        assert len(row) == len(header)
        cells = row.split()
        assert len(cells) == len(headers), row
        # each value's text ends in the column of its header
        ends = [header.index(h) + len(h) for h in headers[1:]]
        at = 0
        for cell, end in zip(cells[1:], ends, strict=True):
            at = row.index(cell, at) + len(cell)
            assert at == end, (row, cell)
