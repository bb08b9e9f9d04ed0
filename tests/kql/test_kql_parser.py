"""KQL syntax: tokens, escapes, numbers, precedence, rendering and parse errors with carets."""

from __future__ import annotations

import pytest

from kinodb import QuerySyntaxError
from kinodb.kql import And, Between, Compare, Field, In, IsNull, Node, Not, Or, parse
from kinodb.kql._parser import MAX_DEPTH

F = Field


def error(text: str) -> QuerySyntaxError:
    with pytest.raises(QuerySyntaxError) as info:
        parse(text)
    return info.value


def caret_at(exc: QuerySyntaxError) -> int:
    """The column of the caret in the message, relative to the query line."""
    lines = str(exc).splitlines()
    return lines[2].index("^") - 2


# -- every operator ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "node"),
    [
        ("x = 1", Compare(F("x"), "=", 1)),
        ("x != 'a'", Compare(F("x"), "!=", "a")),
        ("x < 1.5", Compare(F("x"), "<", 1.5)),
        ("x <= -2", Compare(F("x"), "<=", -2)),
        ("x > .5", Compare(F("x"), ">", 0.5)),
        ("x >= 1e3", Compare(F("x"), ">=", 1000.0)),
        ("x CONTAINS 'pick'", Compare(F("x"), "CONTAINS", "pick")),
        ("x STARTS WITH 'a'", Compare(F("x"), "STARTS WITH", "a")),
        ("x ENDS WITH 'z'", Compare(F("x"), "ENDS WITH", "z")),
        ("x MATCHES '^a.*z$'", Compare(F("x"), "MATCHES", "^a.*z$")),
        ("x IN (1, 'a', true)", In(F("x"), (1, "a", True))),
        ("x NOT IN ('a')", In(F("x"), ("a",), negated=True)),
        ("x BETWEEN 1 AND 2.5", Between(F("x"), 1, 2.5)),
        ("x BETWEEN 'a' AND 'm'", Between(F("x"), "a", "m")),
        ("x IS NULL", IsNull(F("x"))),
        ("x IS NOT NULL", IsNull(F("x"), negated=True)),
        ("x = null", IsNull(F("x"))),
        ("x != null", IsNull(F("x"), negated=True)),
        ("x = none", IsNull(F("x"))),
        ("x = true", Compare(F("x"), "=", True)),
        ("x = FALSE", Compare(F("x"), "=", False)),
    ],
)
def test_every_operator_parses(text: str, node: object) -> None:
    assert parse(text) == node
    assert repr(parse(text)) == repr(node)


def test_keywords_are_case_insensitive_and_values_are_not() -> None:
    lower = parse("not a = 'Franka' and b contains 'X' or c starts with 'y' or d is not null or e in (True)")
    upper = parse("NOT a = 'Franka' AND b CONTAINS 'X' OR c STARTS WITH 'y' OR d IS NOT NULL OR e IN (TRUE)")
    assert lower == upper
    assert parse("x = Franka") == Compare(F("x"), "=", "Franka")  # a bare word keeps its case


def test_bare_words_are_strings_as_in_0_1() -> None:
    assert parse("embodiment = franka") == Compare(F("embodiment"), "=", "franka")
    assert parse("x IN (a, b_2)") == In(F("x"), ("a", "b_2"))
    assert parse("x = franka.v2") == Compare(F("x"), "=", "franka.v2")
    assert parse("x = 'null'") == Compare(F("x"), "=", "null")  # quoted keywords are strings


def test_no_spaces_needed() -> None:
    assert parse("num_frames>25") == Compare(F("num_frames"), ">", 25)
    assert parse("x IN(1,2)") == In(F("x"), (1, 2))
    assert parse("(a=1)OR(b!=2)") == Or((Compare(F("a"), "=", 1), Compare(F("b"), "!=", 2)))


# -- literals ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("literal", "value"),
    [
        (r"'it\'s'", "it's"),
        (r'"say \"hi\""', 'say "hi"'),
        (r"'a\\b'", "a\\b"),
        (r"'line\nbreak'", "line\nbreak"),
        (r"'tab\there'", "tab\there"),
        ("'double \" inside single'", 'double " inside single'),
        ('"single \' inside double"', "single ' inside double"),
        ("''", ""),
        ("'機械 ü'", "機械 ü"),
    ],
)
def test_string_escapes(literal: str, value: str) -> None:
    assert parse(f"x = {literal}") == Compare(F("x"), "=", value)


@pytest.mark.parametrize(
    ("literal", "value"),
    [("0", 0), ("-2", -2), (".5", 0.5), ("-.5", -0.5), ("2.", 2.0), ("1e3", 1000.0), ("1E-3", 0.001),
     ("2.5e+2", 250.0), ("18446744073709551616", 2**64), ("-0", 0)],
)  # fmt: skip
def test_numbers(literal: str, value: float) -> None:
    node = parse(f"x = {literal}")
    assert isinstance(node, Compare)
    assert node.value == value and type(node.value) is type(value)


# -- precedence: NOT > AND > OR ---------------------------------------------------------------

A, B, C = (Compare(F(n), "=", 1) for n in "abc")


@pytest.mark.parametrize(
    ("text", "node"),
    [
        ("a = 1 OR b = 1 AND c = 1", Or((A, And((B, C))))),
        ("a = 1 AND b = 1 OR c = 1", Or((And((A, B)), C))),
        ("NOT a = 1 AND b = 1", And((Not(A), B))),
        ("NOT a = 1 OR b = 1", Or((Not(A), B))),
        ("NOT (a = 1 OR b = 1)", Not(Or((A, B)))),
        ("(a = 1 OR b = 1) AND c = 1", And((Or((A, B)), C))),
        ("a = 1 AND b = 1 AND c = 1", And((A, B, C))),
        ("(a = 1 AND b = 1) AND c = 1", And((And((A, B)), C))),
        ("NOT NOT a = 1", Not(Not(A))),
        ("((a = 1))", A),
    ],
)
def test_precedence(text: str, node: object) -> None:
    assert parse(text) == node
    assert parse(parse(text).render()) == node


def test_render_is_canonical_text() -> None:
    text = "embodiment = franka and (task contains \"it's\" or num_frames >= .5) and not extra.'odd name' is null"
    assert parse(text).render() == (
        "embodiment = 'franka' AND (task CONTAINS 'it\\'s' OR num_frames >= 0.5) AND NOT extra.'odd name' IS NULL"
    )
    assert str(parse("x != null")) == "x IS NOT NULL"


def test_extra_field_spellings() -> None:
    assert parse("extra.scene = 1").field == F("scene", extra=True)  # type: ignore[attr-defined]
    assert parse("extra.a.b = 1").field == F("a.b", extra=True)  # type: ignore[attr-defined]
    assert parse("extra.2d = 1").field == F("2d", extra=True)  # type: ignore[attr-defined]
    assert parse("extra.and = 1").field == F("and", extra=True)  # type: ignore[attr-defined]
    assert parse("extra.'odd name' = 1").field == F("odd name", extra=True)  # type: ignore[attr-defined]
    assert parse("sensor.cam = 1").field == F("sensor.cam")  # type: ignore[attr-defined]


def test_hand_built_nodes_are_checked() -> None:
    with pytest.raises(ValueError, match="extra=True"):
        Field("and")
    with pytest.raises(ValueError, match="extra=True"):
        Field("odd name")
    with pytest.raises(ValueError, match="unknown operator"):
        Compare(F("x"), "LIKE", "a")
    with pytest.raises(ValueError, match="needs a string"):
        Compare(F("x"), "MATCHES", 3)
    with pytest.raises(ValueError, match="finite"):
        Compare(F("x"), ">", float("inf"))
    for pattern in ("(", "\\", "a{4294967296}", "[z-a]"):  # query text could not hold them either
        with pytest.raises(ValueError, match="MATCHES: invalid regular expression"):
            Compare(F("x"), "MATCHES", pattern)
    assert parse(Compare(F("x"), "MATCHES", "^a.*b$").render()) == Compare(F("x"), "MATCHES", "^a.*b$")
    with pytest.raises(ValueError, match="two or more"):
        And((A,))
    with pytest.raises(ValueError, match="non-empty"):
        In(F("x"), ())
    with pytest.raises(TypeError):
        parse(b"x = 1")  # type: ignore[arg-type]


# -- errors: position, caret, message -------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "pos", "words"),
    [
        ("", 0, "empty query"),
        ("   ", 0, "empty query"),
        ("x = 'abc", 4, "unterminated string"),
        ("x = 'a\\qb'", 6, "unknown escape \\q"),
        ("x = 5x", 4, "invalid number '5x'"),
        ("x = 1.2.3", 4, "invalid number '1.2.3'"),
        ("x = 1e", 4, "invalid number '1e'"),
        ("x = 1e999", 4, "out of range"),
        ("x = - 2", 4, "unexpected character '-'"),
        ("x == 1", 2, "'==' is not a KQL operator; write ="),
        ("x <> 1", 2, "write !="),
        ("a = 1 && b = 2", 6, "write AND"),
        ("a = 1 || b = 2", 6, "write OR"),
        ("!a = 1", 0, "write NOT"),
        ("a = 1; b = 2", 5, "unexpected character ';'"),
        ("a = $1", 4, "unexpected character '$'"),
        ("(a = 1", 6, "expected ')'"),
        ("a = 1)", 5, "expected AND, OR or the end of the query"),
        ("a = 1 b = 2", 6, "expected AND, OR or the end of the query, got 'b'"),
        ("a 1", 2, "expected an operator after a"),
        ("a NOT 1", 2, "expected IN after a NOT, got '1'"),
        ("a NOT BETWEEN 1 AND 2", 2, "put NOT before it: NOT a ..."),
        ("a =", 3, "expected a value, got the end of the query"),
        ("= 1", 0, "expected a field name, got '='"),
        ("and = 1", 0, "got the keyword AND"),
        ("a = 1 AND", 9, "expected a field name, got the end of the query"),
        ("a < null", 2, "null cannot be compared with <"),
        ("a CONTAINS null", 11, "null cannot be used with CONTAINS"),
        ("a IN (1, null)", 9, "null never matches in an IN list"),
        ("a BETWEEN null AND 1", 10, "null cannot be a bound"),
        ("a BETWEEN 1 AND 'z'", 16, "both be numbers or both be strings"),
        ("a BETWEEN 1 OR 2", 12, "expected AND between the bounds"),
        ("a < true", 4, "true and false have no order"),
        ("a STARTS 'x'", 9, "expected WITH after STARTS"),
        ("a STARTS WITH 3", 14, "STARTS WITH needs a string, got 3"),
        ("a MATCHES '('", 10, "invalid regular expression"),
        ("a MATCHES 'x{99999999999}'", 10, "invalid regular expression 'x{99999999999}'"),
        ("a IN 1", 5, "expected '(' after IN"),
        ("a IN (1 2)", 8, "expected ',' or ')'"),
        ("a IN ()", 6, "expected a value"),
        ("a IS 3", 5, "expected NULL or NOT NULL after IS"),
        ("foo.'x' = 1", 0, "only extra. may be followed by a quoted name"),
    ],
)
def test_parse_errors_point_at_the_problem(text: str, pos: int, words: str) -> None:
    exc = error(text)
    assert isinstance(exc, ValueError)
    assert exc.position == pos
    assert words in str(exc)
    assert f"at position {pos}" in str(exc).splitlines()[0]
    lines = str(exc).splitlines()
    assert lines[1] == f"  {text}" and caret_at(exc) == pos


def test_caret_on_multi_line_and_tabbed_queries() -> None:
    exc = error("success = true\n\tAND task ~ 'x'")
    assert exc.position == 25
    lines = str(exc).splitlines()
    assert "line 2, column 11" in lines[0]
    assert lines[1] == "  \tAND task ~ 'x'"
    assert lines[2] == "  \t         ^"


def test_deep_nesting_is_an_error_not_a_crash() -> None:
    ok = "(" * (MAX_DEPTH - 1) + "a = 1" + ")" * (MAX_DEPTH - 1)
    assert parse(ok) == A
    for text in ("(" * 5000 + "a = 1" + ")" * 5000, "NOT " * 5000 + "a = 1"):
        assert "nests deeper" in str(error(text))


def test_no_stray_character_is_ignored() -> None:
    # 0.1 skipped any character it did not know; every one of these is now an error.
    for ch in "&|!~;$#@%^`?{}[]\\:+*/":
        with pytest.raises(QuerySyntaxError):
            parse(f"a = 1 {ch} b = 2")


# -- trees built by hand must be writable as query text ---------------------------------------


def _nots(node: Node, n: int) -> Node:
    for _ in range(n):
        node = Not(node)
    return node


def test_integer_literals_are_limited_to_what_text_can_hold() -> None:
    import sys

    digits = sys.get_int_max_str_digits()
    biggest = 10**digits - 1
    for value in (biggest, -biggest):
        node = Compare(F("x"), "=", value)
        assert parse(node.render()) == node
    for make in (
        lambda v: Compare(F("x"), "<", v),
        lambda v: In(F("x"), (1, v)),
        lambda v: Between(F("x"), 0, v),
    ):
        for value in (10**digits, -(10**digits), 10**5000):
            with pytest.raises(
                ValueError, match=f"more than {digits} digits cannot be written as query text"
            ):
                make(value)


def test_hand_built_nesting_is_limited_as_the_parser_limits_text() -> None:
    a, b = Compare(F("a"), "=", 1), Compare(F("b"), "=", 2)
    deepest = _nots(a, MAX_DEPTH)
    assert parse(deepest.render()) == deepest
    with pytest.raises(ValueError, match=f"nests {MAX_DEPTH + 1} levels .* at most {MAX_DEPTH}"):
        Not(deepest)
    with pytest.raises(QuerySyntaxError, match="nests deeper"):
        parse("NOT " + deepest.render())  # the text the refused tree would render to
    # NOT before AND/OR renders parentheses: two levels
    grouped = _nots(And((a, b)), MAX_DEPTH - 1)
    assert parse(grouped.render()) == grouped
    with pytest.raises(ValueError, match="nests"):
        Not(_nots(And((a, b)), MAX_DEPTH - 1))
    # And inside And, and Or inside Or, keep their parentheses; And inside Or needs none
    chain: Node = a
    for _ in range(MAX_DEPTH + 1):  # the first And needs no parentheses
        chain = And((chain, b))
    assert parse(chain.render()) == chain
    with pytest.raises(ValueError, match="nests"):
        And((chain, b))
    wide = Or(tuple(And((a, b)) for _ in range(5000)))  # no parentheses: no depth
    assert parse(_nots(wide, MAX_DEPTH - 1).render()) == _nots(wide, MAX_DEPTH - 1)
    with pytest.raises(ValueError, match="Not needs a KQL node"):
        Not("a = 1")  # type: ignore[arg-type]


def test_every_tree_the_parser_accepts_can_be_rebuilt() -> None:
    text = "NOT (" * 49 + "a = 1 AND (b = 2 OR NOT c = 3)" + ")" * 49
    node = parse(text)
    assert parse(node.render()) == node


def test_fields_of_query_lists_the_fields_in_order() -> None:
    from kinodb.kql.ast import fields_of_query

    node = parse("success = true AND NOT (extra.scene = 'a' OR fps BETWEEN 1 AND 2) AND scene IS NULL")
    assert [(f.name, f.extra) for f in fields_of_query(node)] == [
        ("success", False), ("scene", True), ("fps", False), ("scene", False)
    ]  # fmt: skip
