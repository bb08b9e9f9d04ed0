"""A brute-force KQL evaluator over ``read_meta`` dicts: docs/kql.md's semantics, one episode at a time.

It shares no code with ``kinodb.kql._eval``: it walks the syntax tree per episode in
plain Python, on the values ``Database.read_meta`` decodes one by one.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Sequence
from typing import Any

from kinodb.kql.ast import And, Between, Compare, Field, In, IsNull, Node, Not, Or

BUILTINS = ("episode_id", "embodiment", "task", "num_frames", "fps", "action_dim", "state_dim", "success",
            "total_reward")  # fmt: skip
_ORDER: dict[str, Callable[[Any, Any], bool]] = {
    "<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge,
}  # fmt: skip


def lookup(meta: dict[str, Any], field: Field, extras: set[str]) -> Any:
    """The field's value in one episode's metadata (None when null or absent).

    ``extras`` are the file's extra field names: a bare name means the extra of exactly
    that name before it means a built-in spelled with other case.
    """
    name = field.name
    if field.extra:
        return meta.get(f"extra.{name}" if name in BUILTINS or name.startswith("extra.") else name)
    if name in BUILTINS:
        return meta[name]
    if name in extras:
        return meta.get(name)
    if name.lower() in BUILTINS:
        return meta[name.lower()]
    raise KeyError(name)


def is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def equal(v: Any, lit: Any) -> bool:
    if isinstance(v, bool) or isinstance(lit, bool):
        return isinstance(v, bool) and isinstance(lit, bool) and v == lit
    if isinstance(v, str) or isinstance(lit, str):
        return isinstance(v, str) and isinstance(lit, str) and v == lit
    return is_number(v) and is_number(lit) and v == lit


def ordered(v: Any, op: str, lit: Any) -> bool:
    if isinstance(lit, str):
        return isinstance(v, str) and _ORDER[op](v, lit)
    return is_number(v) and _ORDER[op](v, lit)


def holds(meta: dict[str, Any], node: Node, extras: set[str]) -> bool:
    """Whether one episode matches ``node``."""
    if isinstance(node, And):
        return all(holds(meta, o, extras) for o in node.operands)
    if isinstance(node, Or):
        return any(holds(meta, o, extras) for o in node.operands)
    if isinstance(node, Not):
        return not holds(meta, node.operand, extras)
    assert isinstance(node, (Compare, In, Between, IsNull))
    v = lookup(meta, node.field, extras)
    if isinstance(node, IsNull):
        return (v is None) != node.negated
    if v is None:
        return False  # every comparison with null is false
    if isinstance(node, In):
        return any(equal(v, x) for x in node.values) != node.negated
    if isinstance(node, Between):
        return ordered(v, ">=", node.low) and ordered(v, "<=", node.high)
    return _compare(v, node.op, node.value)


def _compare(v: Any, op: str, lit: Any) -> bool:
    if op == "=":
        return equal(v, lit)
    if op == "!=":
        return not equal(v, lit)
    if op in _ORDER:
        return ordered(v, op, lit)
    if op == "CONTAINS":
        if isinstance(v, list):
            return any(equal(x, lit) for x in v)
        return isinstance(v, str) and isinstance(lit, str) and lit in v
    if not isinstance(v, str):
        return False
    if op == "STARTS WITH":
        return v.startswith(lit)
    if op == "ENDS WITH":
        return v.endswith(lit)
    return re.search(lit, v) is not None


def matches(metas: Sequence[dict[str, Any]], node: Node) -> list[int]:
    """Positions of the episodes that match, ascending."""
    extras = {k.removeprefix("extra.") for m in metas for k in m if k not in BUILTINS}
    return [i for i, m in enumerate(metas) if holds(m, node, extras)]
