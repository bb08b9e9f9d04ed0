"""Laws: a KQL result equals a brute-force filter over ``read_meta``; parse(render(ast)) == ast."""

from __future__ import annotations

import math
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from _oracle import lookup, matches
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import kinodb
from kinodb.kql import And, Between, Compare, Field, In, IsNull, Node, Not, Or, parse, query
from kinodb.kql.ast import COMPARE_OPS, ORDER_OPS

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

WORDS = ["franka", "ur5e", "Franka", "franka_v2", "pick up the cup", "Pick the red block", "place it",
         "", "it's \"quoted\"", "ünïcode cup", "機械", "line\nbreak", "a", "b", "c", "cup"]  # fmt: skip
TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=5)
STRINGS = st.sampled_from(WORDS) | TEXT
INTS = st.integers(-12, 12) | st.sampled_from(
    [2**53, 2**53 + 1, 2**63 - 1, -(2**63), 10**30, -(2**64), 10**400]
)
FLOATS = st.floats(allow_nan=False, allow_infinity=False) | st.sampled_from(
    [2.5, -0.0, 0.5, 3.0, 9007199254740992.0]
)
NUMBERS = INTS | FLOATS
SCALARS = STRINGS | NUMBERS | st.booleans()
LISTS = st.lists(st.sampled_from(["a", "b", "c", 0, 1, 2.0, True, False]) | st.just([1]), max_size=3)
# Extra fields by the kind of values the test writes; the file's actual kind may differ
# (all absent -> null, one type in a "mixed" field -> that type): queries follow the file.
EXTRA_VALUES = {
    "scene": STRINGS, "operator": st.sampled_from(["op1", "op2", "Op1"]), "attempt": INTS,
    "score": FLOATS, "flag": st.booleans(), "tags": LISTS, "mixed": SCALARS | LISTS, "nothing": st.none(),
    "success": STRINGS, "Task": STRINGS, "odd name": INTS, "and": st.booleans(),
}  # fmt: skip
BUILTIN_KINDS = {
    "episode_id": "int", "embodiment": "str", "task": "str", "num_frames": "int", "fps": "float",
    "action_dim": "int", "state_dim": "int", "success": "bool", "total_reward": "float",
}  # fmt: skip
PATTERNS = ["^p", "cup$", "[0-9]", "(?i)pick", "a|b", "^$", "\\n"]


@st.composite
def episodes(draw: st.DrawFn) -> list[dict[str, Any]]:
    """add_episode keyword dicts with random metadata and random extra fields."""
    names = draw(st.lists(st.sampled_from(sorted(EXTRA_VALUES)), unique=True, max_size=6))
    out = []
    for _ in range(draw(st.integers(1, 14))):
        extra = {}
        for name in names:
            state = draw(st.sampled_from(["absent", "null", "value", "value"]))
            if state != "absent":
                extra[name] = None if state == "null" else draw(EXTRA_VALUES[name])
        out.append({
            "actions": np.zeros((draw(st.integers(1, 6)), draw(st.integers(1, 3))), np.float32),
            "embodiment": draw(st.sampled_from([*WORDS[:4], "機械", ""])),
            "task": draw(STRINGS), "fps": draw(st.sampled_from([5.0, 10.0, 29.97, 15.5])),
            "success": draw(st.sampled_from([True, False, None])),
            "total_reward": draw(st.none() | FLOATS), "extra": extra,
        })  # fmt: skip
    return out


def fields_of(db: kinodb.Database) -> list[tuple[Field, str]]:
    """Every field of the file with its kind, spelled in the ways a query may spell it."""
    extras = {name: col.kind for name, col in db._block.extras.items()}
    out = [(Field(name), kind) for name, kind in BUILTIN_KINDS.items()]
    for spelled in ("SUCCESS", "Num_Frames", "TASK"):
        # a bare name is an extra of exactly that name, else the built-in ignoring case
        out.append((Field(spelled), extras.get(spelled, BUILTIN_KINDS[spelled.lower()])))
    for name, kind in extras.items():
        out.append((Field(name, extra=True), kind))
        if name not in BUILTIN_KINDS and name != "and" and name.isidentifier():
            out.append((Field(name), kind))
    return out


def near(values: list[Any]) -> list[Any]:
    """Literals that hit or just miss ``values``: substrings, case changes, numbers +-0.5 and +-1."""
    out: list[Any] = []
    for v in values:
        if isinstance(v, list):
            out += near(v)
        elif isinstance(v, str):
            k = len(v) // 2
            out += [v, v[:k], v[k:], v.upper(), v.swapcase()]
        elif isinstance(v, bool):
            out += [v, int(v)]
        elif isinstance(v, (int, float)):
            out += [v, v + 1, v - 1]
            if abs(v) < 1e300:
                out += [v + 0.5, v - 0.5, float(v)]
            if isinstance(v, float) and v.is_integer():
                out.append(int(v))
    return out


def of_class(kind: str, near_values: list[Any], *, order: bool = False) -> st.SearchStrategy[Any]:
    """Literals a field of ``kind`` accepts: mostly near the file's values, sometimes anything."""
    if kind == "str":
        accept, anything = (lambda v: isinstance(v, str)), STRINGS
    elif kind in ("int", "float"):
        accept, anything = (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)), NUMBERS
    elif kind == "bool":
        accept, anything = (lambda v: isinstance(v, bool)), st.booleans()
    else:
        accept, anything = (
            (lambda v: not (order and isinstance(v, bool))),
            (STRINGS | NUMBERS if order else SCALARS),
        )
    pool = [v for v in near_values if accept(v) and not (isinstance(v, float) and not math.isfinite(v))]
    return st.sampled_from(pool) | anything if pool else anything


@st.composite
def predicate(draw: st.DrawFn, fields: list[tuple[Field, str]], metas: list[dict[str, Any]]) -> Node:
    field, kind = draw(st.sampled_from(fields))
    extras = {k.removeprefix("extra.") for m in metas for k in m if k not in BUILTIN_KINDS}
    values = near([v for m in metas if (v := lookup(m, field, extras)) is not None])
    lit, ordered = of_class(kind, values), of_class(kind, values, order=True)
    choices = ["null", "eq", "eq", "in"]
    if kind != "bool":
        choices += ["order", "order", "between"]
    if kind in ("str", "json", "null"):
        choices += ["contains", "contains", "text"]
    what = draw(st.sampled_from(choices))
    if what == "null":
        return IsNull(field, draw(st.booleans()))
    if what == "eq":
        return Compare(field, draw(st.sampled_from(COMPARE_OPS[:2])), draw(lit))
    if what == "in":
        return In(field, tuple(draw(st.lists(lit, min_size=1, max_size=3))), draw(st.booleans()))
    if what == "order":
        return Compare(field, draw(st.sampled_from(ORDER_OPS)), draw(ordered))
    if what == "between":
        low = draw(ordered)
        return Between(field, low, draw(of_class("str" if isinstance(low, str) else "int", values)))
    if what == "contains":
        return Compare(field, "CONTAINS", draw(lit))
    op = draw(st.sampled_from(["STARTS WITH", "ENDS WITH", "MATCHES"]))
    return Compare(field, op, draw(st.sampled_from(PATTERNS) if op == "MATCHES" else of_class("str", values)))


def trees(leaf: st.SearchStrategy[Node]) -> st.SearchStrategy[Node]:
    def combine(kids: st.SearchStrategy[Node]) -> st.SearchStrategy[Node]:
        group = st.lists(kids, min_size=2, max_size=3).map(tuple)
        return kids.map(Not) | group.map(And) | group.map(Or)

    return st.recursive(leaf, combine, max_leaves=6)


@SETTINGS
@given(eps=episodes(), data=st.data())
def test_query_equals_brute_force_filter_over_read_meta(
    eps: list[dict[str, Any]], data: st.DataObject
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "q.kdb"
        with kinodb.Writer(path, mode="x") as w:
            for ep in eps:
                w.add_episode(**ep)
        with kinodb.open(path) as db:
            metas = [db.read_meta(i) for i in range(len(db))]
            leaf = predicate(fields_of(db), metas)
            for k in range(20):
                node = data.draw(leaf if k % 2 else trees(leaf))
                text = node.render()
                assert parse(text) == node
                got = query(db, text)
                assert got.dtype == np.int64
                assert got.tolist() == matches(metas, node), text
                # NOT is the exact complement: a query and its negation partition the episodes.
                rest = query(db, Not(node)).tolist()
                assert sorted(got.tolist() + rest) == list(range(len(db)))


# -- parse(render(ast)) == ast ------------------------------------------------------------

BARE = st.from_regex(r"[a-z_][a-z0-9_]{0,6}(\.[a-z0-9_]{1,3})?", fullmatch=True).filter(
    lambda s: s not in ("and", "or", "not", "in", "is", "null", "none", "true", "false", "between",
                        "contains", "starts", "ends", "with", "matches") and not s.startswith("extra.")
)  # fmt: skip
ANY_FIELD = BARE.map(Field) | TEXT.map(lambda s: Field(s, extra=True))
ANY_LITERAL = TEXT | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.booleans()


@st.composite
def any_predicate(draw: st.DrawFn) -> Node:
    field = draw(ANY_FIELD)
    kind = draw(st.sampled_from(["cmp", "order", "text", "in", "between", "null"]))
    if kind == "cmp":
        return Compare(field, draw(st.sampled_from(["=", "!=", "CONTAINS"])), draw(ANY_LITERAL))
    if kind == "order":
        return Compare(
            field,
            draw(st.sampled_from(ORDER_OPS)),
            draw(TEXT | st.integers() | st.floats(allow_nan=False, allow_infinity=False)),
        )
    if kind == "text":
        return Compare(field, draw(st.sampled_from(["STARTS WITH", "ENDS WITH"])), draw(TEXT))
    if kind == "in":
        return In(field, tuple(draw(st.lists(ANY_LITERAL, min_size=1, max_size=3))), draw(st.booleans()))
    if kind == "between":
        cls = draw(st.sampled_from([TEXT, st.integers(), st.floats(allow_nan=False, allow_infinity=False)]))
        return Between(field, draw(cls), draw(cls))
    return IsNull(field, draw(st.booleans()))


@settings(max_examples=300, deadline=None)
@given(node=trees(any_predicate()))
def test_parse_of_render_is_identity(node: Node) -> None:
    text = node.render()
    again = parse(text)
    assert again == node
    assert repr(again) == repr(node)  # also tells 1 from 1.0 from True, which == does not
    assert again.render() == text
