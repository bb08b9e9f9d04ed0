"""KQL over a 0.1 file's NaN or infinite total_reward (null, as everywhere else), and a type
error over several files that store an extra field as different types."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest

import kinodb
from _legacy_encoder import encode, random_episode
from kinodb._cli.main import main
from kinodb.kdb.upgrade import upgrade
from kinodb.kql._eval import fields_of

REWARDS = [float("inf"), float("-inf"), float("nan"), 1.0, None]


@pytest.fixture
def legacy(tmp_path: Path) -> Path:
    """A format 0.1 file whose total_reward is inf, -inf, NaN, 1.0 and absent."""
    rng = np.random.default_rng(0)
    path = tmp_path / "legacy.kdb"
    path.write_bytes(encode([random_episode(rng, 2, 1, 1, total_reward=r) for r in REWARDS]))
    return path


def test_a_legacy_non_finite_total_reward_is_null(legacy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with kinodb.open(legacy) as db:
        assert db.query("total_reward IS NULL").tolist() == [0, 1, 2, 4]
        assert db.query("total_reward IS NOT NULL").tolist() == [3]
        assert db.query("total_reward != 1").tolist() == []
        assert db.query("total_reward > 0").tolist() == [3]
        assert db.query("total_reward < 0 OR total_reward = null").tolist() == [0, 1, 2, 4]
        assert db.query("NOT total_reward = 1").tolist() == [0, 1, 2, 4]
        assert db.query("total_reward IN (1, 2)").tolist() == [3]
    assert main(["query", str(legacy), "episode_id >= 0", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)["episodes"]
    assert [e["position"] for e in shown if e["total_reward"] is None] == [0, 1, 2, 4]


def test_a_legacy_file_answers_as_its_upgrade_and_merge_do(legacy: Path, tmp_path: Path) -> None:
    up, merged = tmp_path / "up.kdb", tmp_path / "merged.kdb"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # upgrade warns that v1 stores the non-finite rewards as null
        upgrade(legacy, up)
        kinodb.merge([legacy], merged)
    for q in ("total_reward IS NULL", "total_reward != 1", "total_reward >= -1e30", "total_reward = 1"):
        with kinodb.open(legacy) as old, kinodb.open(up) as new, kinodb.open(merged) as m:
            assert old.query(q).tolist() == new.query(q).tolist() == m.query(q).tolist(), q


def _scene(path: Path, values: list[object]) -> str:
    with kinodb.Writer(path, mode="w") as w:
        for v in values:
            w.add_episode(actions=np.zeros((3, 2), np.float32), extra={"scene": v})
    return str(path)


@pytest.fixture
def apart(tmp_path: Path) -> tuple[str, str]:
    """``a.kdb`` stores scene as strings, ``b.kdb`` as integers."""
    return _scene(tmp_path / "a.kdb", ["kitchen", "lab", "kitchen"]), _scene(tmp_path / "b.kdb", [0, 1])


def test_a_type_error_over_files_that_store_a_field_apart_names_each_files_type(
    apart: tuple[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    a, b = apart
    assert main(["query", a, b, "scene = 'kitchen'", "--count"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: {b}: type mismatch: scene holds integers, but 'kitchen' is a string")
    assert f"the files of this query store scene as different types: strings in {a}; integers in {b}" in err
    assert "merge them first (kino merge stores such a field as JSON" in err
    assert "compare it with a number" not in err  # the hint that fits b.kdb alone
    with pytest.raises(kinodb.QuerySyntaxError, match=r"strings in .*; integers in ") as info:
        kinodb.merge([a, b], Path(a).with_name("out.kdb"), filter="scene = 'kitchen'")
    assert info.value.position == 8
    with pytest.raises(kinodb.QuerySyntaxError, match="store scene as different types"):
        kinodb.Mixture([(a, 1, "scene > 0"), (b, 1, "scene > 0")])  # fits b.kdb, not a.kdb


def test_the_merged_file_answers_what_the_inputs_refuse(apart: tuple[str, str], tmp_path: Path) -> None:
    a, b = apart
    kinodb.merge([a, b], tmp_path / "m.kdb")
    with kinodb.open(tmp_path / "m.kdb") as m:
        assert m.query("scene = 'kitchen'").tolist() == [0, 2]
        assert m.query("scene > 0").tolist() == [4]


def test_a_value_that_fits_no_files_type_keeps_its_own_hint(apart: tuple[str, str]) -> None:
    a, b = apart
    with kinodb.open(a) as da, kinodb.open(b) as db_:
        absent = fields_of([da, db_])
    assert set(absent) == {"scene"} and absent.kinds["scene"] == ((a, "str"), (b, "int"))
    with kinodb.open(b) as db, pytest.raises(kinodb.QuerySyntaxError) as info:
        db.query("scene = true", absent=absent)
    assert "different types" not in str(info.value)
    assert str(info.value).endswith("compare it with a number, e.g. scene > 10")
    with kinodb.open(b) as db, pytest.raises(kinodb.QuerySyntaxError) as info:
        db.query("scene = 'kitchen'", absent=["scene"])  # names alone: no kinds to compare
    assert str(info.value).endswith("compare it with a number, e.g. scene > 10")


def test_files_that_agree_on_a_fields_type_keep_the_hint(tmp_path: Path) -> None:
    a, b = _scene(tmp_path / "a.kdb", [1]), _scene(tmp_path / "b.kdb", [2.5])
    with pytest.raises(kinodb.QuerySyntaxError) as info:
        kinodb.Mixture([(a, 1, "scene = 'x'"), (b, 1, "scene = 'x'")])
    assert "different types" not in str(info.value)
    assert "compare it with a number, e.g. scene > 10" in str(info.value)


def test_an_operator_another_file_takes_names_the_types(tmp_path: Path) -> None:
    a, b = _scene(tmp_path / "a.kdb", [["x", "y"]]), _scene(tmp_path / "b.kdb", [True])
    with kinodb.open(a) as da, kinodb.open(b) as db_:
        absent = fields_of([da, db_])
        with pytest.raises(kinodb.QuerySyntaxError) as info:
            db_.query("scene CONTAINS 'x'", absent=absent)
        assert f"store scene as different types: JSON values in {a}; true/false in {b}" in str(info.value)
        assert da.query("scene CONTAINS 'x'", absent=absent).tolist() == [0]
