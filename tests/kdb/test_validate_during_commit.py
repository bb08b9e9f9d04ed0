"""`kino validate` run while another writer commits: it judges the commit records as the
file was opened, not a record being rewritten under it."""

from __future__ import annotations

from pathlib import Path

import numpy as np

import kinodb
from kinodb.kdb._layout import SLOT_OFFSETS, SLOT_SIZE
from kinodb.kdb.validate import Report, _check_slots, hidden_commit


def _append(path: Path, value: float) -> None:
    with kinodb.Writer(path, mode="a") as w:
        w.add_episode(actions=np.full((5, 2), value, np.float32))


def test_a_record_being_rewritten_after_open_is_not_damage(tmp_path: Path) -> None:
    path = tmp_path / "grow.kdb"
    with kinodb.Writer(path, mode="x") as w:
        w.add_episode(actions=np.zeros((5, 2), np.float32))
    _append(path, 1.0)
    with kinodb.open(path) as db:  # generation 2, in one record
        _append(path, 2.0)  # generation 3: its index lies past the end db read, its record in the other slot
        other = SLOT_OFFSETS[1 - db._slot]
        with open(path, "r+b") as f:  # that record as a reader meets it mid-write: half new, half zeros
            f.seek(other + SLOT_SIZE // 2)
            f.write(bytes(SLOT_SIZE - SLOT_SIZE // 2))
        assert hidden_commit(db) is None
        report = Report(str(path))
        _check_slots(db, report)
        assert report.errors == []
        assert len(report.warnings) == 1 and "an append in progress" in report.warnings[0]
