"""KQL's answers to everyday mistakes: a name given as a str, a case variant of a built-in, a
caret under wide characters; and the one-pass numeric ``IN`` agreeing with ``=`` per value."""

from __future__ import annotations

import unicodedata
from pathlib import Path

import numpy as np
import pytest

import kinodb
from _legacy_encoder import encode, random_episode
from kinodb import QuerySyntaxError
from kinodb.kql import query


def _file(path: Path, extras: list[dict[str, object]], **meta: object) -> Path:
    with kinodb.Writer(path) as w:
        for extra in extras:
            w.add_episode(actions=np.zeros((2, 1), np.float32), extra=extra, **meta)  # type: ignore[arg-type]
    return path


def test_absent_takes_one_name_as_a_str(tmp_path: Path) -> None:
    with kinodb.open(_file(tmp_path / "a.kdb", [{"scene": "lab"}] * 3)) as db:
        assert db.query("only_b IS NULL", absent="only_b").tolist() == [0, 1, 2]
        assert query(db, "only_b IS NOT NULL", absent="only_b").tolist() == []
        with pytest.raises(QuerySyntaxError, match="unknown field 'o'"):  # not a name of one letter
            db.query("o IS NULL", absent="only_b")
        assert db.query("only_b IS NULL", absent=["only_b"]).tolist() == [0, 1, 2]


def test_a_misspelt_built_in_is_suggested_before_its_case_variant(tmp_path: Path) -> None:
    path = _file(tmp_path / "s.kdb", [{"Success": "yes", "TASK": 1, "Scene": "lab"}], success=True, task="t")
    with kinodb.open(path) as db:
        for text, want in (("sucess = true", "success"), ("tsak = 'x'", "task"), ("scen = 'x'", "Scene")):
            with pytest.raises(QuerySyntaxError) as info:
                db.query(text)
            assert f"did you mean {want}?" in str(info.value), text
        with pytest.raises(QuerySyntaxError, match=r"did you mean extra\.Success\?"):
            db.query("extra.Sucess = 'yes'")


def _columns(text: str) -> int:
    return sum(
        0 if unicodedata.combining(c) else 2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text
    )


@pytest.mark.parametrize(
    "prefix",
    [
        "task = '日本語🤖' AND ",
        "task = 'ｆｕｌｌ' AND ",
        "task = 'e\u0301te\u0301' AND ",
        "task = 'plain' AND ",
    ],
)
def test_the_caret_stands_under_the_error_after_wide_characters(tmp_path: Path, prefix: str) -> None:
    text = prefix + "nope = 1"
    with kinodb.open(_file(tmp_path / "a.kdb", [{}])) as db, pytest.raises(QuerySyntaxError) as info:
        db.query(text)
    exc = info.value
    assert exc.position == len(prefix)
    lines = str(exc).splitlines()
    # the caret's terminal column is the column where "nope" starts on the line above
    assert _columns(lines[2][: lines[2].index("^")]) == _columns(lines[1][: 2 + len(prefix)])


def test_the_caret_keeps_tabs_and_wide_characters_on_a_later_line() -> None:
    from kinodb.kql import parse

    with pytest.raises(QuerySyntaxError) as info:
        parse("task = 'x' AND\n\ttask = '机' = 1")  # the error: the second '='
    lines = str(info.value).splitlines()
    assert lines[1] == "  \ttask = '机' = 1"
    assert lines[2] == "  \t" + " " * len("task = '") + "  " + " " * len("' ") + "^"


# -- numeric IN: one pass over the column, the same answer as = per value ----------------------

INT_LITERALS = [0, 1, -1, 3, 3.0, 2.5, 2**53, 2**53 + 1, 2**63 - 1, 2**63, -(2**63), -(2**63) - 1, 2**64,
                1e19, -1e19, 1e300, 7, 9.0]  # fmt: skip
FLOAT_LITERALS = [0, 0.0, 1, 1.5, 0.1, 2**53, 2**53 + 1, 9007199254740993, 1e308, 5e-324, 3, 25.5, -0.25,
                  2**1100, 29.97, 16777217]  # fmt: skip


def _render(v: int | float) -> str:
    return repr(v) if isinstance(v, float) else str(v)


def _or_of_equals(db: kinodb.Database, field: str, values: list[int | float]) -> list[int]:
    hit = np.zeros(len(db), bool)
    for v in values:
        hit[query(db, f"{field} = {_render(v)}")] = True
    return np.flatnonzero(hit).tolist()


def test_numeric_in_equals_one_equality_per_value(tmp_path: Path) -> None:
    ints = [0, 1, -1, 3, 2**53, 2**53 + 1, 2**63 - 1, -(2**63), 7, 9, None]
    floats = [0.0, -0.0, 1.5, 0.1, 2.0**53, 1e308, 5e-324, 3.0, 25.5, None, -0.25]
    path = tmp_path / "n.kdb"
    with kinodb.Writer(path) as w:
        for k in range(max(len(ints), len(floats))):
            extra = {"i": ints[k % len(ints)], "f": floats[k % len(floats)]}
            w.add_episode(actions=np.zeros((1 + k % 4, 1), np.float32), extra=extra)
    with kinodb.open(path) as db:
        for field, lits in (("i", INT_LITERALS), ("f", FLOAT_LITERALS), ("episode_id", INT_LITERALS),
                            ("num_frames", INT_LITERALS), ("fps", FLOAT_LITERALS)):  # fmt: skip
            for k in range(len(lits)):
                values = lits[k:] + lits[:k][:3]
                listed = ", ".join(_render(v) for v in values)
                want = _or_of_equals(db, field, values)
                assert query(db, f"{field} IN ({listed})").tolist() == want, (field, listed)
                valid = query(db, f"{field} IS NOT NULL").tolist()
                rest = [i for i in valid if i not in want]
                assert query(db, f"{field} NOT IN ({listed})").tolist() == rest, (field, listed)


def test_numeric_in_on_0_1_float32_fields_rounds_each_value(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    eps = [random_episode(rng, 2, 1, 1, fps=fps, total_reward=r)
           for fps, r in ((29.97, 16777216.0), (30.0, float("nan")), (1e-45, None), (15.0, 0.1))]  # fmt: skip
    path = tmp_path / "old.kdb"
    path.write_bytes(encode(eps))
    with kinodb.open(path) as db:
        for field in ("fps", "total_reward"):
            for values in ([29.97, 15], [16777217, 0.1, 1e-45], [1e-50, 30, 1e39], [2**200, 29.9699, 0.1]):
                listed = ", ".join(_render(v) for v in values)
                want = _or_of_equals(db, field, values)
                assert query(db, f"{field} IN ({listed})").tolist() == want, (field, listed)
        assert query(db, "fps IN (29.97, 1e-45)").tolist() == [0, 2]
        assert query(db, "total_reward IN (16777217, 0.1)").tolist() == [0, 3]


@pytest.mark.parametrize(
    "text, hint",
    [
        ("task = put carrot on plate", "a value of several words needs quotes: 'put carrot on plate'"),
        ("task = put carrot and success = true", "a value of several words needs quotes: 'put carrot'"),
        ("task = put carrot)", "a value of several words needs quotes: 'put carrot'"),
    ],
)
def test_an_unquoted_value_of_several_words_is_told_to_quote(text: str, hint: str) -> None:
    with pytest.raises(QuerySyntaxError) as info:
        kinodb.kql.parse(text)
    assert hint in str(info.value)


@pytest.mark.parametrize("text", ["a = 1 b = 2", "success = true carrot", "task = pick not"])
def test_other_stray_words_get_no_quoting_hint(text: str) -> None:
    with pytest.raises(QuerySyntaxError) as info:
        kinodb.kql.parse(text)
    assert "needs quotes" not in str(info.value)
