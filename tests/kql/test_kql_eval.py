"""KQL semantics on a known file: operators, null rules, 0.1 queries, type errors, legacy files."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from _oracle import matches

import kinodb
from _legacy_encoder import encode, random_episode
from kinodb import QuerySyntaxError
from kinodb.kql import Compare, Field, Not, _eval, parse, query

# position: embodiment, task, success, frames, action_dim, fps, total_reward, extra
ROWS: list[tuple[str, str, bool | None, int, int, float, float | None, dict[str, Any]]] = [
    ("franka", "pick up the cup", True, 30, 7, 10.0, 1.0,
     {"scene": "kitchen", "operator": "op1", "tags": ["occluded", "night"], "attempt": 1, "score": 0.5,
      "verified": True, "mixed": 1}),
    ("ur5e", "Pick the red block", False, 20, 6, 15.0, 0.0,
     {"scene": "lab", "tags": [], "attempt": 2, "score": None, "verified": False, "mixed": True}),
    ("widowx", "place it in the bin", None, 50, 7, 29.97, None,
     {"scene": "kitchen", "tags": ["night"], "attempt": 3, "mixed": "1"}),
    ("franka", "open the drawer", True, 26, 7, 10.0, 2.5,
     {"tags": None, "score": 1.5, "attempt": 2**53 + 1, "mixed": [1, "a"], "success": "clash"}),
    ("aloha", "pick 'quoted' \"thing\"", None, 10, 14, 50.0, None,
     {"scene": "sim", "operator": "op2", "tags": ["clutter", 3, True], "score": 9007199254740992.0,
      "odd name": 5, "Task": "x"}),
    ("franka", "機械 pick ü", False, 25, 7, 10.0, -1.0,
     {"scene": "Kitchen", "operator": None, "attempt": -(2**63), "mixed": 1.0}),
]  # fmt: skip
N = len(ROWS)


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> Iterator[kinodb.Database]:
    path = tmp_path_factory.mktemp("kql") / "known.kdb"
    with kinodb.Writer(path, mode="x") as w:
        for emb, task, succ, frames, adim, fps, reward, extra in ROWS:
            w.add_episode(actions=np.zeros((frames, adim), np.float32), embodiment=emb, task=task,
                          success=succ, fps=fps, total_reward=reward, extra=extra)  # fmt: skip
    with kinodb.open(path) as database:
        yield database


def q(db: kinodb.Database, text: str) -> list[int]:
    got = query(db, text)
    assert got.dtype == np.int64 and list(got) == sorted(got)
    # every expectation below is also what a brute-force Python filter gives
    assert got.tolist() == matches([db.read_meta(i) for i in range(len(db))], parse(text)), text
    return got.tolist()  # type: ignore[no-any-return]


def err(db: kinodb.Database, text: str) -> QuerySyntaxError:
    with pytest.raises(QuerySyntaxError) as info:
        query(db, text)
    return info.value


# -- kinodb 0.1 queries --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("success = true", [0, 3]),
        ("embodiment = 'franka' AND num_frames > 25", [0, 3]),
        ("embodiment = franka AND success = true", [0, 3]),
        ("task CONTAINS 'pick' AND fps >= 10.0", [0, 4, 5]),
        ("task CONTAINS 'drawer'", [3]),
        ("num_frames > 25", [0, 2, 3]),
        ("num_frames >= 26", [0, 2, 3]),
        ("action_dim = 7", [0, 2, 3, 5]),
        ("fps >= 10.0", list(range(N))),
        ("fps = 29.97", [2]),
        ("total_reward > 0.5", [0, 3]),
        ("total_reward != null", [0, 1, 3, 5]),
        ("total_reward = null", [2, 4]),
        ("total_reward = none", [2, 4]),
        ("success = null", [2, 4]),
        ("success != null", [0, 1, 3, 5]),
        ("success = false", [1, 5]),
        ("embodiment != 'franka'", [1, 2, 4]),
        ('SUCCESS = TRUE and Embodiment = "franka"', [0, 3]),
    ],
)
def test_0_1_queries_return_what_0_1_documented(db: kinodb.Database, text: str, expected: list[int]) -> None:
    assert q(db, text) == expected


def test_0_1_behaviours_that_changed(db: kinodb.Database) -> None:
    # != follows the null rule: unknown success is not "!= true" (0.1 matched it) ...
    assert q(db, "success != true") == [1, 5]
    # ... and NOT is the exact complement, which is 0.1's answer.
    assert q(db, "NOT success = true") == [1, 2, 4, 5]
    # CONTAINS is case-sensitive (0.1 lower-cased both sides); MATCHES '(?i)...' ignores case.
    assert q(db, "task CONTAINS 'pick'") == [0, 4, 5]
    assert q(db, "task MATCHES '(?i)pick'") == [0, 1, 4, 5]


# -- every operator ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("task STARTS WITH 'pick'", [0, 4]),
        ("task ENDS WITH 'ü'", [5]),
        ("task MATCHES 'p[a-z]+ (up|it)'", [0, 2]),
        ("task CONTAINS \"'quoted'\"", [4]),
        ("task CONTAINS 'thing\"'", [4]),
        ("task < 'p'", [1, 3]),
        ("embodiment IN ('franka', 'aloha')", [0, 3, 4, 5]),
        ("embodiment NOT IN ('franka', 'aloha')", [1, 2]),
        ("embodiment BETWEEN 'b' AND 'v'", [0, 3, 5, 1]),
        ("num_frames BETWEEN 20 AND 26", [1, 3, 5]),
        ("num_frames IN (10, 50, 51)", [2, 4]),
        ("num_frames NOT IN (10, 50)", [0, 1, 3, 5]),
        ("num_frames < 25.5", [1, 4, 5]),
        ("num_frames <= 25.5", [1, 4, 5]),
        ("num_frames > 25.5", [0, 2, 3]),
        ("num_frames = 25.0", [5]),
        ("num_frames = 25.5", []),
        ("num_frames != 25.5", list(range(N))),
        ("num_frames > -1", list(range(N))),
        ("num_frames < 18446744073709551616", list(range(N))),
        ("episode_id >= 4", [4, 5]),
        ("state_dim = 0", list(range(N))),
        ("fps BETWEEN 10 AND 15", [0, 1, 3, 5]),
        ("total_reward < 0", [5]),
        ("total_reward IN (0, 2.5)", [1, 3]),
        ("success IN (true, false)", [0, 1, 3, 5]),
        ("success NOT IN (true)", [1, 5]),
        ("success IS NULL", [2, 4]),
        ("success IS NOT NULL", [0, 1, 3, 5]),
    ],
)
def test_operators_on_builtin_fields(db: kinodb.Database, text: str, expected: list[int]) -> None:
    assert q(db, text) == sorted(expected)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("scene = 'kitchen'", [0, 2]),
        ("scene = kitchen OR scene = Kitchen", [0, 2, 5]),
        ("scene IS NULL", [3]),
        ("operator IS NULL", [1, 2, 3, 5]),
        ("operator != 'op1'", [4]),
        ("tags CONTAINS 'night'", [0, 2]),
        ("tags CONTAINS 3", [4]),
        ("tags CONTAINS true", [4]),
        ("tags CONTAINS 'nigh'", []),
        ("tags IS NULL", [3, 5]),
        ("tags = 'night'", []),
        ("tags != 'night'", [0, 1, 2, 4]),
        ("attempt > 2", [2, 3]),
        ("attempt = 9007199254740993", [3]),
        ("attempt = 9007199254740992", []),
        ("attempt < -9223372036854775807", [5]),
        ("attempt < -9223372036854775808.5", []),
        ("score >= 0.5", [0, 3, 4]),
        ("score = 9007199254740993", []),
        ("score < 9007199254740993", [0, 3, 4]),
        ("score <= 9007199254740992", [0, 3, 4]),
        ("score > 9007199254740991", [4]),
        ("verified = true", [0]),
        ("verified != true", [1]),
        ("mixed = 1", [0, 5]),
        ("mixed = true", [1]),
        ("mixed = '1'", [2]),
        ("mixed CONTAINS 'a'", [3]),
        ("mixed CONTAINS 1", [3]),
        ("mixed > 0", [0, 5]),
        ("mixed STARTS WITH '1'", [2]),
        ("mixed IN (true, '1')", [1, 2]),
        ("mixed IN (1.0, 'a', false)", [0, 5]),  # 1.0 is 1; true is not; a list holding 'a' is not 'a'
        ("extra.success = 'clash'", [3]),
        ("extra.'odd name' = 5", [4]),
        ("Task = 'x'", [4]),
        ("extra.Task IS NOT NULL", [4]),
        ("TASK CONTAINS 'drawer'", [3]),
        ("extra.scene = 'lab'", [1]),
    ],
)
def test_operators_on_extra_fields(db: kinodb.Database, text: str, expected: list[int]) -> None:
    assert q(db, text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("v > 9007199254740995", [1]),  # rounds up to 2**53 + 4: only the larger value is greater
        ("v >= 9007199254740995", [1]),
        ("v < 9007199254740993", [0]),  # rounds down to 2**53
        ("v <= 9007199254740993", [0]),
        ("v = 9007199254740993", []),
        ("v != 9007199254740993", [0, 1]),
        (f"v < {10**400}", [0, 1]),
        (f"v > -{10**400}", [0, 1]),
        (f"v > {10**400}", []),
        ("v = 9007199254740992", [0]),
    ],
)
def test_floats_compare_exactly_with_ints_no_float_can_hold(
    tmp_path: Path, text: str, expected: list[int]
) -> None:
    path = tmp_path / "f.kdb"
    with kinodb.Writer(path) as w:
        for v in (2.0**53, 2.0**53 + 4):
            w.add_episode(actions=np.zeros((1, 1), np.float32), extra={"v": v})
    with kinodb.open(path) as db:
        assert q(db, text) == expected


# -- null rules and two-valued NOT ------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    ["success = true", "success != true", "total_reward > 0", "scene = 'kitchen'", "scene != 'kitchen'",
     "tags CONTAINS 'night'", "operator NOT IN ('op1')", "score BETWEEN 0 AND 1", "scene MATCHES 'it'",
     "mixed = 1 OR scene IS NULL", "extra.success = 'clash' AND NOT verified = false"],
)  # fmt: skip
def test_not_partitions_the_episodes(db: kinodb.Database, text: str) -> None:
    yes, no = set(q(db, text)), set(q(db, f"NOT ({text})"))
    assert yes.isdisjoint(no) and yes | no == set(range(N))


def test_comparisons_with_null_are_false(db: kinodb.Database) -> None:
    # episode 3 has no scene, episode 2 and 4 have unknown success
    for text in ("scene = 'kitchen'", "scene != 'kitchen'", "scene < 'zzz'", "scene >= ''",
                 "scene IN ('kitchen', 'lab', 'sim')", "scene NOT IN ('x')", "scene CONTAINS ''",
                 "scene MATCHES ''", "scene BETWEEN '' AND '~'"):  # fmt: skip
        assert 3 not in q(db, text), text
        assert 3 in q(db, f"NOT {text}" if " IN " not in text else f"NOT ({text})"), text
    assert q(db, "success != true OR success = true") == [0, 1, 3, 5]
    assert q(db, "NOT operator NOT IN ('op1')") == [0, 1, 2, 3, 5]  # NOT x NOT IN: the nulls come back


def test_an_all_null_extra_field(tmp_path: Path) -> None:
    path = tmp_path / "n.kdb"
    with kinodb.Writer(path) as w:
        w.add_episode(actions=np.zeros((2, 1), np.float32), extra={"note": None})
        w.add_episode(actions=np.zeros((2, 1), np.float32))
    with kinodb.open(path) as db:
        assert db._block.extras["note"].kind == "null"
        assert q(db, "note IS NULL") == [0, 1]
        assert q(db, "note = 'x' OR note > 3 OR note CONTAINS true") == []


# -- precedence --------------------------------------------------------------------------------


def test_precedence_not_and_or(db: kinodb.Database) -> None:
    assert q(db, "embodiment = ur5e OR embodiment = franka AND success = true") == [0, 1, 3]
    assert q(db, "(embodiment = ur5e OR embodiment = franka) AND success = true") == [0, 3]
    assert q(db, "NOT embodiment = franka AND success = false") == [1]
    assert q(db, "NOT (embodiment = franka AND success = false)") == [0, 1, 2, 3, 4]


# -- type errors and unknown fields ---------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "pos", "words"),
    [
        ("task > 3", 7, "type mismatch: task holds strings, but 3 is a number"),
        ("num_frames CONTAINS 'x'", 11, "CONTAINS does not apply to num_frames, which holds integers"),
        ("success = 'yes'", 10, "type mismatch: success holds true/false, but 'yes' is a string"),
        ("success = yes", 10, "but 'yes' is a string"),
        ("success = 1", 10, "but 1 is a number"),
        ("success BETWEEN 0 AND 1", 8, "BETWEEN does not apply to success"),
        ("num_frames = '50'", 13, "write the number without quotes: 50"),
        ("fps > 'fast'", 6, "fps holds numbers"),
        ("embodiment IN ('franka', 7)", 25, "but 7 is a number"),
        ("embodiment = true", 13, "but true is a bool"),
        ("scene = 3", 8, "scene holds strings"),
        ("verified MATCHES 'x'", 9, "MATCHES does not apply to verified"),
        ("attempt STARTS WITH '1'", 8, "STARTS WITH does not apply to attempt"),
        ("num_frames > 1 AND score = 'x'", 27, "score holds numbers"),
    ],
)
def test_type_mismatch_is_an_error(db: kinodb.Database, text: str, pos: int, words: str) -> None:
    exc = err(db, text)
    assert exc.position == pos and words in str(exc)
    assert str(exc).splitlines()[2].index("^") - 2 == pos


def test_unknown_field_suggests_and_lists_fields(db: kinodb.Database) -> None:
    exc = err(db, "num_frames > 3 AND sucess = true")
    assert exc.position == 19
    text = str(exc)
    assert "unknown field 'sucess'" in text and "did you mean success?" in text
    fields = text.splitlines()[-1]
    for name in ("episode_id", "total_reward", "scene", "tags", "extra.success", "extra.'odd name'", "Task"):
        assert name in fields
    assert "did you mean scene?" in str(err(db, "sceen = 'lab'"))
    assert "did you mean extra.scene?" in str(err(db, "extra.sceen = 'lab'"))
    assert "did you mean" not in str(err(db, "zzzzzz = 1"))


def test_unknown_field_over_several_files_suggests_and_lists_every_files_fields(tmp_path: Path) -> None:
    # a query over several files (a list, a mixture) knows the fields of all of them, whichever
    # file it is evaluated on first
    a, b = tmp_path / "a.kdb", tmp_path / "b.kdb"
    for path, extra in ((a, {"scene": "lab"}), (b, {"tags": ["night"], "operator": "op1"})):
        with kinodb.Writer(path) as w:
            w.add_episode(actions=np.zeros((2, 1), np.float32), extra=extra)
    with kinodb.open(a) as da, kinodb.open(b) as dbb:
        absent = _eval.fields_of([da, dbb])
        text = str(err_with(da, "tagz CONTAINS 'night'", absent))
        assert "did you mean tags?" in text
        assert text.splitlines()[-1].endswith("fields of these files: " + ", ".join(
            [*_eval.META_FIELDS, "operator", "scene", "tags"]))  # fmt: skip
        assert "fields of this file: " in str(err(da, "tagz = 1"))  # one file alone


def err_with(db: kinodb.Database, text: str, absent: frozenset[str]) -> QuerySyntaxError:
    with pytest.raises(QuerySyntaxError) as info:
        db.query(text, absent=absent)
    return info.value


def test_type_errors_come_before_any_result(db: kinodb.Database) -> None:
    # the second operand is checked even though the first already excludes everything
    with pytest.raises(QuerySyntaxError, match="type mismatch"):
        query(db, "num_frames < 0 AND task > 3")


# -- API -------------------------------------------------------------------------------------


def test_limit_and_database_query(db: kinodb.Database) -> None:
    assert query(db, "fps > 0", limit=2).tolist() == [0, 1]
    assert query(db, "fps > 0", limit=0).tolist() == []
    assert query(db, "fps > 0", limit=100).tolist() == list(range(N))
    assert db.query("embodiment = franka", limit=2).tolist() == [0, 3]
    assert query(db, "fps < 0").shape == (0,)
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="limit"):
            query(db, "fps > 0", limit=bad)  # type: ignore[arg-type]


def test_query_takes_a_tree(db: kinodb.Database) -> None:
    node = Not(Compare(Field("embodiment"), "=", "franka"))
    assert query(db, node).tolist() == [1, 2, 4]
    exc = err(db, Compare(Field("task"), ">", 3))  # type: ignore[arg-type]
    assert "task > 3" in str(exc) and exc.position == 7  # the caret is under the rendered tree


def test_closed_database(db: kinodb.Database, tmp_path: Path) -> None:
    path = tmp_path / "c.kdb"
    with kinodb.Writer(path) as w:
        w.add_episode(actions=np.zeros((2, 1), np.float32))
    closed = kinodb.open(path)
    closed.close()
    with pytest.raises(ValueError, match="closed"):
        query(closed, "num_frames > 1")


# -- legacy 0.1 files -------------------------------------------------------------------------


def test_queries_on_a_legacy_0_1_file(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    specs = [("franka", "pick up the cup", True, 29.97, 0.1), ("ur5e", "Pick block", None, 10.0, None),
             ("franka", "place", False, 15.0, 2.5), ("widowx", "pick ü", True, 29.97, None)]  # fmt: skip
    eps = [
        random_episode(rng, 3 + i, 2, 7 - i % 2, embodiment=e, task=t, success=s, fps=f, total_reward=r)
        for i, (e, t, s, f, r) in enumerate(specs)
    ]
    path = tmp_path / "old.kdb"
    path.write_bytes(encode(eps))
    with kinodb.open(path) as db:
        assert db.version() == "0.1"
        assert q(db, "embodiment = franka AND success = true") == [0]
        assert q(db, "task CONTAINS 'pick' AND num_frames > 3") == [3]
        assert q(db, "success != true") == [2]
        assert q(db, "NOT success = true") == [1, 2]
        assert q(db, "total_reward != null") == [0, 2]
        assert q(db, "action_dim = 6 OR state_dim != 2") == [1, 3]
        # 0.1 stored fps and total_reward as float32: literals compare as their nearest
        # float32, so equality and order agree (29.97 stored is 29.9699993...)
        assert query(db, "fps = 29.97").tolist() == [0, 3]
        assert query(db, "fps != 29.97").tolist() == [1, 2]
        assert query(db, "fps IN (29.97, 15)").tolist() == [0, 2, 3]
        assert query(db, "fps < 29.97").tolist() == [1, 2]
        assert query(db, "fps >= 29.97").tolist() == [0, 3]
        assert query(db, "fps > 29.97").tolist() == []
        assert query(db, "total_reward = 0.1").tolist() == [0]
        assert query(db, "total_reward BETWEEN 0.1 AND 2.5").tolist() == [0, 2]
        assert "did you mean success?" in str(err(db, "sucess = true"))


def test_order_on_0_1_float32_fields_agrees_with_equality(tmp_path: Path) -> None:
    """Every operator compares the literal as its nearest float32, as the stored value is."""
    rng = np.random.default_rng(6)
    eps = [random_episode(rng, 3, 2, 2, fps=29.97, total_reward=16777216.0),
           random_episode(rng, 3, 2, 2, fps=30.0, total_reward=0.0),
           random_episode(rng, 3, 2, 2, fps=1e-45, total_reward=None)]  # fmt: skip
    path = tmp_path / "old.kdb"
    path.write_bytes(encode(eps))
    stored = {"fps": np.float32([29.97, 30.0, 1e-45]), "total_reward": np.float32([16777216.0, 0.0, np.nan])}
    ops = {"=": np.equal, "!=": np.not_equal, "<": np.less, "<=": np.less_equal, ">": np.greater,
           ">=": np.greater_equal}  # fmt: skip
    with kinodb.open(path) as db:
        for field, values in stored.items():
            for lit in ("29.97", "30", "29.9699", "16777215.5", "16777217", "0", "1e-45", "1e-50"):
                f32 = np.float32(float(lit))
                for op, fn in ops.items():
                    want = [i for i, v in enumerate(values) if not np.isnan(v) and fn(v, f32)]
                    assert query(db, f"{field} {op} {lit}").tolist() == want, (field, op, lit)
        assert query(db, "fps BETWEEN 29.97 AND 30").tolist() == [0, 1]
        assert query(db, "fps BETWEEN 29.9699 AND 29.97").tolist() == [0]
        assert query(db, "total_reward IN (16777217, 1)").tolist() == [0]


# -- JSON fields: both ways of finding the distinct texts agree ------------------------------

JSON_QUERIES = ["tags CONTAINS 'night'", "tags IS NULL", "mixed = 1", "mixed CONTAINS 'a'", "tags != 'x'"]


@pytest.mark.parametrize("patch", [{"_PAD_BUDGET": 0}, {"_MIX": np.zeros(4096, np.uint64)}])
def test_json_fallback_paths_agree(
    db: kinodb.Database, monkeypatch: pytest.MonkeyPatch, patch: dict[str, Any]
) -> None:
    want = [q(db, text) for text in JSON_QUERIES]
    for name, value in patch.items():  # no matrix at all / every row's hash is its length
        monkeypatch.setattr(_eval, name, value)
    assert [q(db, text) for text in JSON_QUERIES] == want


def test_distinct_texts_with_a_newline_inside() -> None:
    texts = [b'"a\nb"', b"[1]", b"", b'"a\nb"', b"[1]"]
    offs = np.cumsum([0] + [len(t) for t in texts]).astype(np.int64)
    blob = np.frombuffer(b"".join(texts), np.uint8)
    for codes, distinct in (
        _eval._distinct_split(offs, blob, 5),
        _eval._distinct_padded(offs, blob, np.diff(offs), 8),
    ):
        assert [distinct[c] for c in codes.tolist()] == texts


def test_damaged_json_column_raises(db: kinodb.Database) -> None:
    valid = np.array([True, True])
    with pytest.raises(kinodb.CorruptFileError, match="offsets"):
        _eval._json_domain(np.array([0, 5, 3], np.uint64), np.zeros(5, np.uint8), valid, "f")
    with pytest.raises(kinodb.CorruptFileError, match="bad JSON"):
        _eval._json_domain(np.array([0, 2, 4], np.uint64), np.frombuffer(b"[1[2", np.uint8), valid, "f")
    with pytest.raises(kinodb.CorruptFileError, match="empty JSON"):
        _eval._json_domain(np.array([0, 0, 3], np.uint64), np.frombuffer(b"[1]", np.uint8), valid, "f")


def test_literals_beyond_float32_on_0_1_files_do_not_round_to_infinity(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    eps = [random_episode(rng, 3, 2, 2, fps=float("inf"), total_reward=float("inf")),
           random_episode(rng, 3, 2, 2, fps=3e38, total_reward=3e38)]  # fmt: skip
    path = tmp_path / "old.kdb"
    path.write_bytes(encode(eps))
    with kinodb.open(path) as db:
        assert query(db, "fps > 1e39").tolist() == [0]
        assert query(db, "fps <= 1e39").tolist() == [1]
        assert query(db, "fps = 1e39").tolist() == []
        # An infinite total_reward is null (as --json, upgrade and merge read it).
        assert query(db, "total_reward > 1e39").tolist() == []
        assert query(db, "total_reward <= 1e39").tolist() == [1]


def test_limit_takes_python_and_numpy_ints_only(db: kinodb.Database) -> None:
    everything = db.query("num_frames >= 0")
    assert db.query("num_frames >= 0", limit=np.int64(2)).tolist() == everything[:2].tolist()
    assert len(db.query("num_frames >= 0", limit=0)) == 0
    for bad in (True, -1, 1.5, np.float64(2.0), "2"):
        with pytest.raises(ValueError, match="limit must be None or an int >= 0"):
            db.query("num_frames >= 0", limit=bad)
