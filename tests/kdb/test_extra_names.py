"""Extra field names and the ``extra.`` prefix: the writer refuses it, old files keep every value."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import kinodb
import kinodb.kdb._checks as checks_module
from kinodb import WriterError
from kinodb.kdb.reader import META_FIELDS
from kinodb.kdb.upgrade import upgrade

# What a file written before the writer refused ``extra.`` names can hold: a name that is
# the prefix plus another extra's name, and one that is the prefix plus a built-in's name.
OLD_EXTRAS = {"extra.x": 1, "x": 2, "success": "s", "extra.success": "e"}


@pytest.fixture
def old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A file holding extra fields named ``extra.*``, written as earlier writers did."""
    path = tmp_path / "old.kdb"
    with monkeypatch.context() as m:
        m.setattr(checks_module, "check_extra_name", lambda key: None)  # `episode_meta` checks names
        with kinodb.Writer(path, image_codec="raw") as w:
            w.add_episode(actions=np.zeros((3, 2), np.float32), extra=OLD_EXTRAS)
            w.add_episode(actions=np.ones((2, 2), np.float32), extra={"x": 3})
    return path


def stored(db: kinodb.Database, i: int) -> dict[str, object]:
    """Episode ``i``'s extra fields by the names they are stored under."""
    return db._extra_fields(i)


@pytest.mark.parametrize("name", ["extra.x", "extra.success", "extra."])
def test_writer_refuses_extra_names_with_the_prefix(tmp_path: Path, name: str) -> None:
    with kinodb.Writer(tmp_path / "w.kdb", image_codec="raw") as w:
        with pytest.raises(WriterError, match=rf"extra field name '{name}' starts with 'extra\.'.*rename it"):
            w.add_episode(actions=np.zeros((1, 1)), extra={name: 1})
        w.add_episode(actions=np.zeros((1, 1)), extra={"x": 1, "success": "s"})  # still usable
    with kinodb.open(tmp_path / "w.kdb") as db:
        assert len(db) == 1


def test_the_refusal_suggests_the_bare_name(tmp_path: Path) -> None:
    with kinodb.Writer(tmp_path / "w.kdb") as w:
        with pytest.raises(WriterError, match=r"e\.g\. to 'x'"):
            w.add_episode(actions=np.zeros((1, 1)), extra={"extra.x": 1})
        w.abort()


def test_copy_episode_refuses_prefixed_extra_names(tmp_path: Path) -> None:
    src = tmp_path / "src.kdb"
    with kinodb.Writer(src) as w:
        w.add_episode(actions=np.zeros((1, 1)))
    with kinodb.open(src) as db, kinodb.Writer(tmp_path / "out.kdb") as w:
        with pytest.raises(WriterError, match=r"'extra\.origin'"):
            w.copy_episode(db, 0, extra={"extra.origin": "a"})
        w.copy_episode(db, 0, extra={"origin": "a"})


def test_old_files_read_every_value_under_its_own_key(old_file: Path) -> None:
    with kinodb.open(old_file) as db:
        assert stored(db, 0) == OLD_EXTRAS
        meta = db.read_meta(0)
        extras = {k: v for k, v in meta.items() if k not in META_FIELDS}
        assert extras == {"extra.extra.x": 1, "x": 2, "extra.success": "s", "extra.extra.success": "e"}
        table = db.episodes()
        assert table["extra.extra.success"].tolist() == ["e", None]
        assert table["extra.success"].tolist() == ["s", None]
        assert table["x"].tolist() == [2, 3]


def test_old_files_answer_queries_for_every_name(old_file: Path) -> None:
    with kinodb.open(old_file) as db:
        # every key of read_meta names its value in a query
        for key, value in db.read_meta(0).items():
            if key not in META_FIELDS:
                literal = f"'{value}'" if isinstance(value, str) else str(value)
                assert db.query(f"{key} = {literal}").tolist() == [0], key
        assert db.query("extra.x = 3").tolist() == [1]  # extra.NAME is always the field NAME
        assert db.query("extra.'extra.x' = 1").tolist() == [0]


def test_old_files_upgrade_keeping_every_value(old_file: Path, tmp_path: Path) -> None:
    new = tmp_path / "new.kdb"
    assert upgrade(old_file, new) == 2
    with kinodb.open(old_file) as old, kinodb.open(new) as db:
        for i in range(2):
            assert stored(db, i) == stored(old, i)
            assert db.read_meta(i) == old.read_meta(i)
