"""The KQL syntax tree: frozen dataclasses that render back to equivalent query text.

``parse(node.render()) == node`` for every node. Source positions (``pos``, ``at``)
are kept for error messages and take no part in equality.

Example:
    >>> from kinodb.kql import parse
    >>> node = parse("success = true AND (task CONTAINS 'pick' OR num_frames > 50)")
    >>> node.render()
    "success = true AND (task CONTAINS 'pick' OR num_frames > 50)"
"""

from __future__ import annotations

import dataclasses
import math
import re
import sys
from dataclasses import dataclass

from kinodb.kql._lexer import KEYWORDS, WORD_RE

Value = str | int | float | bool
"""A literal: a string, an integer, a finite float or a bool (null is `IsNull`)."""

COMPARE_OPS = ("=", "!=", "<", "<=", ">", ">=")
ORDER_OPS = ("<", "<=", ">", ">=")
TEXT_OPS = ("CONTAINS", "STARTS WITH", "ENDS WITH", "MATCHES")
_EXTRA_NAME = re.compile(r"\w+(?:\.\w+)*")
MAX_DEPTH = 100  # nested parentheses and NOTs the parser accepts; trees are held to it too


class Node:
    """Base class of every KQL expression."""

    __slots__ = ()

    def render(self) -> str:
        """Query text that parses back to this node."""
        raise NotImplementedError

    def __str__(self) -> str:
        return self.render()


def render_value(value: Value) -> str:
    """A literal as query text: quoted strings with escapes, ``true``/``false``, numbers."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        escaped = value.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n").replace("\t", "\\t")
        return f"'{escaped}'"
    return repr(float(value)) if isinstance(value, float) else str(int(value))


def _check_value(value: object, what: str) -> None:
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{what}: {value} is not a finite number")
    if not isinstance(value, (str, int, float)):  # bool is an int
        raise ValueError(f"{what}: {value!r} is not a str, int, float or bool literal")
    if isinstance(value, int) and not isinstance(value, bool):
        # What int() parses and str() renders (0: no limit; Python 3.10 before 3.10.7 has none).
        digits = getattr(sys, "get_int_max_str_digits", lambda: 0)()
        if digits and abs(value) >= _power_of_ten(digits):
            raise ValueError(
                f"{what}: an integer of more than {digits} digits cannot be written as query text "
                "(Python's limit for converting integers to text, sys.set_int_max_str_digits)"
            )


_POWERS: dict[int, int] = {}


def _power_of_ten(digits: int) -> int:
    power = _POWERS.get(digits)
    if power is None:
        power = _POWERS[digits] = 10**digits
    return power


def _nesting(node: Node, grouped: tuple[type[Node], ...] = ()) -> int:
    """Levels of NOT and parentheses the parser meets in ``node.render()``, plus one for
    the parentheses its parent puts around it when it is one of ``grouped``."""
    depth = node._depth if isinstance(node, (Not, And, Or)) else 0
    return depth + 1 if isinstance(node, grouped) else depth


def _set_depth(node: Not | And | Or, depth: int) -> None:
    if depth > MAX_DEPTH:
        raise ValueError(
            f"{type(node).__name__}: the tree nests {depth} levels of NOT and parentheses; query text "
            f"nests at most {MAX_DEPTH}: put the operands of one AND (or OR) in one node, "
            "And((a, b, c)) rather than And((And((a, b)), c)), and cancel double NOTs"
        )
    object.__setattr__(node, "_depth", depth)


def regex_problem(pattern: str) -> str | None:
    """Why ``pattern`` is not a regular expression MATCHES can use, or None when it is."""
    try:
        re.compile(pattern)
    except re.error as exc:
        return f"invalid regular expression {pattern!r}: {exc.msg}"
    except (OverflowError, RecursionError) as exc:  # a huge repeat count, or nesting too deep
        return f"invalid regular expression {pattern!r}: {exc}"
    return None


@dataclass(frozen=True, slots=True)
class Field:
    """A field reference: a built-in field or an extra field (``extra=True`` for ``extra.NAME``)."""

    name: str
    extra: bool = False
    pos: int = dataclasses.field(default=0, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str):
            raise ValueError(f"field name must be a str, got {self.name!r}")
        if not self.extra and (
            WORD_RE.fullmatch(self.name) is None or self.name.lower() in KEYWORDS
            or self.name.startswith("extra.")
        ):  # fmt: skip
            raise ValueError(f"{self.name!r} cannot be written bare; use Field({self.name!r}, extra=True)")

    def render(self) -> str:
        """The field as query text."""
        if not self.extra:
            return self.name
        return "extra." + (self.name if _EXTRA_NAME.fullmatch(self.name) else render_value(self.name))


@dataclass(frozen=True, slots=True)
class Compare(Node):
    """``field OP value`` for OP in `COMPARE_OPS` or `TEXT_OPS`.

    ``at`` holds the positions of the operator and of the value.
    """

    field: Field
    op: str
    value: Value
    at: tuple[int, ...] = dataclasses.field(default=(), compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.op not in COMPARE_OPS and self.op not in TEXT_OPS:
            raise ValueError(f"unknown operator {self.op!r}; use one of {COMPARE_OPS + TEXT_OPS}")
        _check_value(self.value, self.op)
        if self.op in TEXT_OPS[1:] and not isinstance(self.value, str):
            raise ValueError(f"{self.op} needs a string, got {self.value!r}")
        if self.op in ORDER_OPS and isinstance(self.value, bool):
            raise ValueError(f"{self.op} does not order true and false")
        if self.op == "MATCHES" and (problem := regex_problem(str(self.value))) is not None:
            raise ValueError(f"MATCHES: {problem}")

    def render(self) -> str:
        """The comparison as query text."""
        return f"{self.field.render()} {self.op} {render_value(self.value)}"


@dataclass(frozen=True, slots=True)
class In(Node):
    """``field IN (v, ...)``, or ``field NOT IN (v, ...)`` when ``negated``.

    ``at`` holds the positions of the operator and of each value.
    """

    field: Field
    values: tuple[Value, ...]
    negated: bool = False
    at: tuple[int, ...] = dataclasses.field(default=(), compare=False, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.values, tuple) or not self.values:
            raise ValueError("IN needs a non-empty tuple of values")
        for v in self.values:
            _check_value(v, "IN")

    def render(self) -> str:
        """The membership test as query text."""
        items = ", ".join(render_value(v) for v in self.values)
        return f"{self.field.render()} {'NOT IN' if self.negated else 'IN'} ({items})"


@dataclass(frozen=True, slots=True)
class Between(Node):
    """``field BETWEEN low AND high``, both ends included.

    ``at`` holds the positions of BETWEEN, of ``low`` and of ``high``.
    """

    field: Field
    low: Value
    high: Value
    at: tuple[int, ...] = dataclasses.field(default=(), compare=False, repr=False)

    def __post_init__(self) -> None:
        for v in (self.low, self.high):
            _check_value(v, "BETWEEN")
            if isinstance(v, bool):
                raise ValueError("BETWEEN does not order true and false")
        if isinstance(self.low, str) != isinstance(self.high, str):
            raise ValueError("BETWEEN bounds must both be numbers or both be strings")

    def render(self) -> str:
        """The range test as query text."""
        return f"{self.field.render()} BETWEEN {render_value(self.low)} AND {render_value(self.high)}"


@dataclass(frozen=True, slots=True)
class IsNull(Node):
    """``field IS NULL``, or ``field IS NOT NULL`` when ``negated``."""

    field: Field
    negated: bool = False
    at: tuple[int, ...] = dataclasses.field(default=(), compare=False, repr=False)

    def render(self) -> str:
        """The null test as query text."""
        return f"{self.field.render()} IS {'NOT NULL' if self.negated else 'NULL'}"


@dataclass(frozen=True, slots=True)
class Not(Node):
    """``NOT operand``: exactly the episodes that ``operand`` does not match."""

    operand: Node
    _depth: int = dataclasses.field(default=0, init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.operand, Node):
            raise ValueError(f"Not needs a KQL node, got {self.operand!r}")
        _set_depth(self, 1 + _nesting(self.operand, (And, Or)))

    def render(self) -> str:
        """The negation as query text."""
        inner = self.operand.render()
        return f"NOT ({inner})" if isinstance(self.operand, (And, Or)) else f"NOT {inner}"


@dataclass(frozen=True, slots=True)
class And(Node):
    """All ``operands`` match (two or more)."""

    operands: tuple[Node, ...]
    _depth: int = dataclasses.field(default=0, init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        _check_operands(self.operands, "And")
        _set_depth(self, max(_nesting(o, (And, Or)) for o in self.operands))

    def render(self) -> str:
        """The conjunction as query text (nested And/Or operands in parentheses)."""
        return " AND ".join(_group(o, (And, Or)) for o in self.operands)


@dataclass(frozen=True, slots=True)
class Or(Node):
    """Any of ``operands`` matches (two or more)."""

    operands: tuple[Node, ...]
    _depth: int = dataclasses.field(default=0, init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        _check_operands(self.operands, "Or")
        _set_depth(self, max(_nesting(o, (Or,)) for o in self.operands))

    def render(self) -> str:
        """The disjunction as query text (nested Or operands in parentheses)."""
        return " OR ".join(_group(o, (Or,)) for o in self.operands)


def fields_of_query(node: Node) -> list[Field]:
    """The fields a query names, in the order they appear (with repeats)."""
    out: list[Field] = []
    todo = [node]
    while todo:
        n = todo.pop()
        if isinstance(n, (And, Or)):
            todo.extend(reversed(n.operands))
        elif isinstance(n, Not):
            todo.append(n.operand)
        elif isinstance(n, (Compare, In, Between, IsNull)):
            out.append(n.field)
    return out


def _check_operands(operands: object, what: str) -> None:
    if not isinstance(operands, tuple) or len(operands) < 2:
        raise ValueError(f"{what} needs a tuple of two or more operands")
    if not all(isinstance(o, Node) for o in operands):
        raise ValueError(f"{what} operands must be KQL nodes")


def _group(node: Node, kinds: tuple[type[Node], ...]) -> str:
    return f"({node.render()})" if isinstance(node, kinds) else node.render()


Predicate = Compare | In | Between | IsNull

__all__ = [
    "COMPARE_OPS",
    "MAX_DEPTH",
    "ORDER_OPS",
    "TEXT_OPS",
    "And",
    "Between",
    "Compare",
    "Field",
    "In",
    "IsNull",
    "Node",
    "Not",
    "Or",
    "Predicate",
    "Value",
    "fields_of_query",
    "render_value",
]
