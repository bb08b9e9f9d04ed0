"""Evaluate a KQL tree over a database's metadata columns with NumPy masks.

Numbers and bools compare as whole columns. String predicates run once per distinct
dictionary value and map to episodes through the dictionary codes; JSON extras (lists,
mixed types) are decoded once per distinct text per query. Nothing is cached across
queries, so a query always sees the file it is given.
"""

from __future__ import annotations

import difflib
import json
import math
import operator
import re
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import numpy.typing as npt
from numpy.lib.stride_tricks import sliding_window_view

from kinodb.errors import CorruptFileError
from kinodb.kdb._table import EXTRA_VALUE, ExtraColumn, StringColumn
from kinodb.kdb.reader import META_FIELDS, Database
from kinodb.kql._lexer import query_error
from kinodb.kql._parser import parse
from kinodb.kql.ast import (
    ORDER_OPS,
    TEXT_OPS,
    And,
    Between,
    Compare,
    Field,
    In,
    IsNull,
    Node,
    Not,
    Or,
    Value,
    render_value,
)

Mask = npt.NDArray[np.bool_]

BUILTIN_KINDS = {
    "episode_id": "int", "embodiment": "str", "task": "str", "num_frames": "int", "fps": "float",
    "action_dim": "int", "state_dim": "int", "success": "bool", "total_reward": "float",
}  # fmt: skip
_HOLDS = {
    "str": "strings", "int": "integers", "float": "numbers", "bool": "true/false",
    "json": "JSON values", "null": "only nulls",
}  # fmt: skip
_CMP: dict[str, Callable[[Any, Any], Any]] = {
    "=": operator.eq, "!=": operator.ne, "<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge,
}  # fmt: skip
_FLOAT32_FIELDS = ("fps", "total_reward")  # stored as float32 by format 0.1


def query(
    db: Database, text: str | Node, *, limit: int | None = None, absent: Collection[str] = ()
) -> npt.NDArray[np.int64]:
    """Positions of the episodes of ``db`` that match a KQL query, ascending.

    ``text`` is query text or a tree from `parse`; ``limit`` keeps the first N positions.
    ``absent`` names extra fields that other files of the same query hold (a mixture, a
    merge): where ``db`` has none of them they are null in every episode, as a merged
    file's missing values are, instead of unknown. One name may be given as a str.
    `fields_of` gives them with each file's kind of each field, so that a type error
    names the files that store the field as different types.

    Example:
        >>> kinodb.kql.query(db, "embodiment = 'franka' AND NOT success = false", limit=10)
        array([0, 2, 3])

    Raises:
        QuerySyntaxError: the query does not parse, names an unknown field, or compares
            a field with a value of another type.
        CorruptFileError: a metadata column of the file is damaged.
    """
    if limit is not None:
        if isinstance(limit, (bool, np.bool_)) or not isinstance(limit, (int, np.integer)) or limit < 0:
            raise ValueError(f"limit must be None or an int >= 0, got {limit!r}")
        limit = int(limit)
    if isinstance(text, Node):
        text = text.render()  # re-parsed below: a hand-built tree gets positions for its errors
    node = parse(text)
    evaluator = _Evaluator(db, text, frozenset([absent] if isinstance(absent, str) else absent))
    if isinstance(absent, Fields):
        evaluator.kinds = absent.kinds
    evaluator.bind(node)  # every field and type error is raised before any evaluation
    mask = evaluator.mask(node)
    positions = np.flatnonzero(mask).astype(np.int64, copy=False)
    return positions if limit is None else positions[:limit]


class Fields(frozenset[str]):
    """Extra field names of several files, with each file's kind of each field (``kinds``:
    name -> ``(path, kind)`` per file holding it), so that a type error can say where the
    files store a field as different types."""

    kinds: dict[str, tuple[tuple[str, str], ...]]

    def __new__(cls, kinds: dict[str, tuple[tuple[str, str], ...]]) -> Fields:
        self = super().__new__(cls, kinds)
        self.kinds = kinds
        return self

    def __reduce__(self) -> tuple[type[Fields], tuple[dict[str, tuple[tuple[str, str], ...]]]]:
        return Fields, (self.kinds,)


def fields_of(dbs: Iterable[Database]) -> Fields:
    """The extra field names of every database: ``absent`` for a query over all of them."""
    kinds: dict[str, list[tuple[str, str]]] = {}
    for db in dbs:
        for name, col in db._block.extras.items():
            kinds.setdefault(name, []).append((db.path(), col.kind))
    return Fields({name: tuple(held) for name, held in kinds.items()})


@dataclass(frozen=True, slots=True)
class Column:
    """One field of one file as arrays: values (or dictionary codes) and a validity mask.

    ``valid`` is None when no episode is null. For ``str`` and ``json`` kinds ``data``
    holds codes into ``domain``, the distinct values.
    """

    name: str
    kind: str
    data: np.ndarray | None
    valid: Mask | None
    domain: list[Any] | None = None
    float32: bool = False


class _Evaluator:
    """Binds one parsed query to one database (`bind`), then computes its mask."""

    def __init__(self, db: Database, text: str, absent: frozenset[str] = frozenset()) -> None:
        self.db, self.text, self.absent = db, text, absent
        self.n = db.num_episodes()
        self.extras: dict[str, ExtraColumn] = db._block.extras
        self.columns: dict[tuple[str, bool], Column] = {}
        self.kinds: dict[str, tuple[tuple[str, str], ...]] = {}  # every file's kinds (`Fields`)

    def bind(self, node: Node) -> None:
        """Resolve and type-check every predicate, left to right."""
        if isinstance(node, (And, Or)):
            for o in node.operands:
                self.bind(o)
        elif isinstance(node, Not):
            self.bind(node.operand)
        elif isinstance(node, (Compare, In, Between)):
            self.check(self.column(node.field), node, self.resolve(node.field))
        elif isinstance(node, IsNull):
            self.column(node.field)
        else:
            raise TypeError(f"not a KQL node: {node!r}")

    def mask(self, node: Node) -> Mask:
        if isinstance(node, And):
            out = self.mask(node.operands[0])
            for o in node.operands[1:]:
                out = out & self.mask(o)
            return out
        if isinstance(node, Or):
            out = self.mask(node.operands[0])
            for o in node.operands[1:]:
                out = out | self.mask(o)
            return out
        if isinstance(node, Not):
            return ~self.mask(node.operand)
        if isinstance(node, (Compare, In, Between, IsNull)):
            return self.predicate(node)
        raise TypeError(f"not a KQL node: {node!r}")

    def predicate(self, node: Compare | In | Between | IsNull) -> Mask:
        col = self.column(node.field)
        if isinstance(node, IsNull):
            if col.valid is None:
                return np.full(self.n, node.negated)
            return col.valid.copy() if node.negated else ~col.valid
        if col.kind == "null":
            return np.zeros(self.n, bool)
        if col.domain is not None and col.data is not None:
            test = value_test(node)
            lut = np.fromiter((test(v) for v in col.domain), bool, len(col.domain))
            out: Mask = lut[col.data]
        elif col.kind == "bool":
            out = _bool_mask(col, node)
        else:
            out = _number_mask(col, node)
        return out if col.valid is None else out & col.valid

    # -- binding --------------------------------------------------------------------------

    def column(self, field: Field) -> Column:
        key = self.resolve(field)
        col = self.columns.get(key)
        if col is None:
            name, is_extra = key
            col = self.columns[key] = self.extra_column(name) if is_extra else self.builtin_column(name)
        return col

    def resolve(self, field: Field) -> tuple[str, bool]:
        """``(name, is_extra)``: exact built-in, exact extra, then built-in ignoring case (0.1)."""
        # An absent field (another file of the query has it) is null here, an extra like any.
        if field.extra:
            if field.name in self.extras or field.name in self.absent:
                return field.name, True
        elif field.name in BUILTIN_KINDS:
            return field.name, False
        elif field.name in self.extras or field.name in self.absent:
            return field.name, True
        elif field.name.lower() in BUILTIN_KINDS:
            return field.name.lower(), False
        # Over several files (``absent`` holds the others' fields) every file's fields count.
        extras = sorted(set(self.extras) | self.absent)
        valid = list(META_FIELDS) + [_spelling(name) for name in extras]
        shown = field.render()
        # Suggest extras in both spellings, so "extra.sceen" finds "extra.scene".
        spellings = valid + [Field(name, extra=True).render() for name in extras]
        lowered: dict[str, str] = {}
        for v in spellings:  # on a tie of case the built-in (listed first) is the one suggested
            lowered.setdefault(v.lower(), v)
        close = [lowered[c] for c in difflib.get_close_matches(shown.lower(), list(lowered), n=1, cutoff=0.6)]
        hints = [f"did you mean {close[0]}?"] if close else []
        these = "these files" if self.absent - set(self.extras) else "this file"
        hints.append(f"fields of {these}: {', '.join(valid)}")
        raise query_error(self.text, field.pos, f"unknown field {shown!r}", hints)

    def builtin_column(self, name: str) -> Column:
        cols = self.db._cols
        if name in ("embodiment", "task"):
            codes, domain = _strings(self.db._block.strings[name], name)
            return Column(name, "str", codes, None, domain)
        if name == "success":
            succ = cols["success"]
            if len(succ) and not -1 <= int(succ.min()) <= int(succ.max()) <= 1:
                raise CorruptFileError(f"{self.db.path()}: success column holds codes other than -1, 0 and 1")
            return Column(name, "bool", succ == 1, succ >= 0)
        legacy = self.db.version().split(".")[0] == "0" and name in _FLOAT32_FIELDS
        valid = cols["total_reward.valid"] != 0 if name == "total_reward" else None
        if valid is not None and legacy:
            # 0.1 writers stored the sum of rewards holding NaN or infinity as it came out;
            # --json, upgrade and merge call it null, and so does KQL.
            valid &= np.isfinite(cols["total_reward"])
        return Column(name, BUILTIN_KINDS[name], cols[name], valid, float32=legacy)

    def extra_column(self, name: str) -> Column:
        shown = _spelling(name)
        if name not in self.extras:  # an absent field: null everywhere
            return Column(shown, "null", None, np.zeros(self.n, bool))
        col = self.extras[name]
        valid: Mask = col.state == EXTRA_VALUE
        parts = col._cols  # the kind's value columns, laid out as in kinodb.kdb._table
        if col.kind == "str" and col._strings is not None:
            codes, domain = _strings(col._strings, shown)
            return Column(shown, "str", codes, valid, domain)
        if col.kind == "json":
            codes, domain = _json_domain(
                parts["offsets"], parts["bytes"], valid, f"{self.db.path()}: {shown}"
            )
            return Column(shown, "json", codes, valid, domain)
        if col.kind == "bool":
            return Column(shown, "bool", parts["values"] != 0, valid)
        if col.kind in ("int", "float"):
            return Column(shown, col.kind, parts["values"], valid)
        return Column(shown, "null", None, np.zeros(self.n, bool))

    # -- type checks ----------------------------------------------------------------------

    def check(self, col: Column, node: Compare | In | Between, key: tuple[str, bool]) -> None:
        """Raise `QuerySyntaxError` when ``node`` cannot apply to ``col``'s kind of values
        (``key`` is the field's `resolve`)."""
        problem = _problem(col, node)
        if problem is None:
            return
        pos, what, hints = problem
        name, is_extra = key
        held = [(path, kind) for path, kind in self.kinds.get(name, ()) if kind != "null"] if is_extra else []
        # Over several files, a value that fits another file's type of the field is the
        # files' difference, not the query's mistake: say so rather than fit the value to
        # this file alone.
        if any(_problem(replace(col, kind=kind), node) is None for _, kind in held):
            hints = _kinds_apart(col.name, held)
        raise query_error(self.text, pos, what, hints)


def _problem(col: Column, node: Compare | In | Between) -> tuple[int, str, list[str]] | None:
    """``(position, message, hints)`` of why ``node`` cannot apply to ``col``'s kind of
    values, or None when it can."""
    if col.kind in ("json", "null"):
        return None  # values of any type: the parser already checked operator and literal
    op = node.op if isinstance(node, Compare) else "BETWEEN" if isinstance(node, Between) else "IN"
    op_pos = node.at[0] if node.at else node.field.pos
    if op in TEXT_OPS and col.kind != "str":
        hint = "CONTAINS, STARTS WITH, ENDS WITH and MATCHES apply to strings; CONTAINS also to lists"
        return op_pos, f"{op} does not apply to {col.name}, which holds {_HOLDS[col.kind]}", [hint]
    if (op in ORDER_OPS or op == "BETWEEN") and col.kind == "bool":
        return op_pos, f"{op} does not apply to {col.name}, which holds true/false", ["use = or !="]
    for k, value in enumerate(_literals(node)):
        if not _fits(col.kind, value):
            pos = node.at[k + 1] if len(node.at) > k + 1 else node.field.pos
            what = f"{col.name} holds {_HOLDS[col.kind]}, but {render_value(value)} is {_describe(value)}"
            return pos, f"type mismatch: {what}", _type_hint(col, value)
    return None


def _kinds_apart(name: str, held: Sequence[tuple[str, str]]) -> list[str]:
    """Hints for a field that the files of one query store as different types."""
    by_kind: dict[str, list[str]] = {}
    for path, kind in held:
        by_kind.setdefault(kind, []).append(path)
    parts = []
    for kind, paths in by_kind.items():
        more = f" and {len(paths) - 3} more files" if len(paths) > 3 else ""
        parts.append(f"{_HOLDS[kind]} in {', '.join(paths[:3])}{more}")
    return [
        f"the files of this query store {name} as different types: {'; '.join(parts)}",
        "merge them first (kino merge stores such a field as JSON, which KQL compares value by "
        "value), or filter each file on its own with a value of its type",
    ]


def _spelling(name: str) -> str:
    """How a query names extra field ``name``: bare when it can be, else ``extra.NAME``."""
    if name not in BUILTIN_KINDS:
        try:
            return Field(name).render()
        except ValueError:
            pass
    return Field(name, extra=True).render()


def _literals(node: Compare | In | Between) -> tuple[Value, ...]:
    if isinstance(node, Compare):
        return (node.value,)
    return node.values if isinstance(node, In) else (node.low, node.high)


def _fits(kind: str, value: Value) -> bool:
    if kind == "str":
        return isinstance(value, str)
    if kind == "bool":
        return isinstance(value, bool)
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _describe(value: Value) -> str:
    if isinstance(value, bool):
        return "a bool"
    return "a string" if isinstance(value, str) else "a number"


def _type_hint(col: Column, value: Value) -> list[str]:
    if col.kind == "str":
        return [f"quote it to compare text: '{render_value(value).strip(chr(39))}'"]
    if col.kind == "bool":
        return [f"compare it with true, false or null, e.g. {col.name} = true"]
    if isinstance(value, str) and _looks_numeric(value):
        return [f"write the number without quotes: {value}"]
    return [f"compare it with a number, e.g. {col.name} > 10"]


def _looks_numeric(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


# -- column decoding -------------------------------------------------------------------------


def _strings(col: StringColumn, name: str) -> tuple[np.ndarray, list[str]]:
    codes, domain = col.codes, col.dictionary
    if len(codes) and (int(codes.min()) < 0 or int(codes.max()) >= len(domain)):
        raise CorruptFileError(f"column {name!r} holds out-of-range string codes")
    return codes, domain


def _json_domain(
    offsets: np.ndarray, blob: np.ndarray, valid: Mask, where: str
) -> tuple[np.ndarray, list[Any]]:
    """Codes into the distinct decoded values of a JSON column (None for null rows)."""
    offs = offsets.astype(np.int64)
    n = len(offs) - 1
    lengths = np.diff(offs)
    if n < 0 or offs[0] != 0 or (lengths < 0).any() or offs[-1] > len(blob):
        raise CorruptFileError(f"{where}: JSON offsets are damaged")
    if (valid & (lengths == 0)).any():
        raise CorruptFileError(f"{where}: an episode with a value has an empty JSON text")
    blob = blob[: offs[-1]]
    width = -(-int(lengths.max(initial=0)) // 8) * 8
    found = _distinct_padded(offs, blob, lengths, width) if 0 < n * width <= _PAD_BUDGET else None
    codes, texts = found if found is not None else _distinct_split(offs, blob, n)
    try:
        return codes, [json.loads(t) if t else None for t in texts]
    except ValueError as exc:
        raise CorruptFileError(f"{where}: bad JSON ({exc})") from None


_PAD_BUDGET = 1 << 26  # bytes of the (episodes, longest text) matrix of `_distinct_padded`
_LOW_BYTES = np.array([(1 << 8 * k) - 1 for k in range(9)], np.uint64)  # keeps a word's first k bytes
_MIX = np.random.default_rng(0x4B514C).integers(1, 2**63, 1 << 12, np.uint64) | np.uint64(1)


def _distinct_padded(
    offs: np.ndarray, blob: np.ndarray, lengths: np.ndarray, width: int
) -> tuple[np.ndarray, list[bytes]] | None:
    """Dense codes and distinct texts by hashing zero-padded rows; None on a hash collision.

    Every row is checked against its group's first row, so the grouping is exact; a
    collision (or a row wider than `_MIX` has words for) returns None for the slow path.
    """
    nwords = width // 8
    if nwords > len(_MIX):
        return None
    padded = np.concatenate([blob, np.zeros(width, np.uint8)])
    words = sliding_window_view(padded, width)[offs[:-1]].view("<u8")  # (n, nwords), a copy
    keys = lengths.astype(np.uint64)
    for j in range(nwords):  # keep each row's own bytes (zero the next rows'), and hash them
        col = words[:, j]
        col &= _LOW_BYTES[np.clip(lengths - 8 * j, 0, 8)]
        keys ^= col * _MIX[j]
    _, first, codes = np.unique(keys, return_index=True, return_inverse=True)
    rep = first[codes]
    if not (np.array_equal(lengths, lengths[rep]) and np.array_equal(words, words[rep])):
        return None
    return codes.reshape(-1), [blob[offs[i] : offs[i + 1]].tobytes() for i in first.tolist()]


def _distinct_split(offs: np.ndarray, blob: np.ndarray, n: int) -> tuple[np.ndarray, list[bytes]]:
    """Dense codes and distinct texts through Python bytes objects (any width, exact)."""
    # One C-level split on a separator the JSON writer never emits, checked by the count;
    # 3x faster than slicing each text in Python.
    texts = np.insert(blob, offs[1:], 10).tobytes().split(b"\n")
    if len(texts) != n + 1:
        raw = blob.tobytes()
        texts = [raw[a:b] for a, b in zip(offs[:-1].tolist(), offs[1:].tolist(), strict=True)]
    first: dict[bytes, int] = {}  # each text's first row, in one C-level pass
    ids = np.fromiter(map(first.setdefault, texts[:n], range(n)), np.int64, n)
    remap = np.zeros(n, np.int64)
    remap[np.fromiter(first.values(), np.int64, len(first))] = np.arange(len(first))
    return remap[ids], list(first)


# -- predicates over one value (strings and JSON, once per distinct value) -------------------


def value_test(node: Compare | In | Between) -> Callable[[Any], bool]:
    """The predicate ``node`` applies to one non-null value, with KQL's typing rules."""
    if isinstance(node, In):
        member = _member(node.values)
        if node.negated:
            return lambda v: not member(v)
        return member
    if isinstance(node, Between):
        low, high = node.low, node.high
        return lambda v: _ordered(v, low, operator.ge) and _ordered(v, high, operator.le)
    op, lit = node.op, node.value
    if op == "=":
        return lambda v: _eq(v, lit)
    if op == "!=":
        return lambda v: not _eq(v, lit)
    if op in _CMP:
        cmp = _CMP[op]
        return lambda v: _ordered(v, lit, cmp)
    if op == "CONTAINS":
        return lambda v: _contains(v, lit)
    text = str(lit)
    if op == "STARTS WITH":
        return lambda v: isinstance(v, str) and v.startswith(text)
    if op == "ENDS WITH":
        return lambda v: isinstance(v, str) and v.endswith(text)
    pattern = re.compile(text)
    return lambda v: isinstance(v, str) and pattern.search(v) is not None


def _member(values: Sequence[Value]) -> Callable[[Any], bool]:
    """``any(_eq(v, x) for x in values)`` in constant time: one set per kind of value, so a
    long ``IN`` list (a split file of episode ids) costs one lookup per distinct value."""
    bools = {x for x in values if isinstance(x, bool)}
    strs = {x for x in values if isinstance(x, str)}
    nums = {x for x in values if isinstance(x, (int, float)) and not isinstance(x, bool) and x == x}

    def member(v: Any) -> bool:
        if isinstance(v, bool):
            return v in bools
        if isinstance(v, str):
            return v in strs
        return isinstance(v, (int, float)) and v in nums

    return member


def _eq(v: Any, lit: Value) -> bool:
    if isinstance(lit, bool) or isinstance(v, bool):
        return isinstance(v, bool) and isinstance(lit, bool) and v == lit
    if isinstance(lit, str):
        return isinstance(v, str) and v == lit
    return isinstance(v, (int, float)) and v == lit


def _ordered(v: Any, lit: Value, cmp: Callable[[Any, Any], Any]) -> bool:
    if isinstance(lit, str):
        return isinstance(v, str) and bool(cmp(v, lit))
    return isinstance(v, (int, float)) and not isinstance(v, bool) and bool(cmp(v, lit))


def _contains(v: Any, lit: Value) -> bool:
    if isinstance(v, str):
        return isinstance(lit, str) and lit in v
    if isinstance(v, list):
        return any(_eq(x, lit) for x in v)
    return False


# -- whole-column predicates ------------------------------------------------------------------


def _bool_mask(col: Column, node: Compare | In | Between) -> Mask:
    x = col.data
    if x is None or isinstance(node, Between):
        raise TypeError("bool columns support =, != and IN only")  # excluded by check()
    if isinstance(node, Compare):
        return np.asarray(_CMP[node.op](x, bool(node.value)))
    hit = np.zeros(len(x), bool)
    for v in set(node.values):
        hit |= x == bool(v)
    return ~hit if node.negated else hit


def _number_mask(col: Column, node: Compare | In | Between) -> Mask:
    if isinstance(node, Compare):
        return _compare_numbers(col, node.op, node.value)
    if isinstance(node, Between):
        return _compare_numbers(col, ">=", node.low) & _compare_numbers(col, "<=", node.high)
    hit = _number_in(col, node.values)
    return ~hit if node.negated else hit


def _number_in(col: Column, values: Sequence[Value]) -> Mask:
    """``column IN values`` in one pass (`np.isin`), equal to OR-ing ``column = v`` for each:
    the values that some stored number can equal, in the column's dtype."""
    x = col.data
    nums = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    if x is None or len(nums) != len(values):
        raise TypeError(f"{col.name}: not a numeric comparison")  # excluded by check()
    if col.kind == "int":
        info = np.iinfo(x.dtype)
        ints = (int(v) for v in nums if not (isinstance(v, float) and not v.is_integer()))
        keys = np.fromiter((k for k in ints if info.min <= k <= info.max), x.dtype)
    else:
        stored = (_as_stored(col, v) for v in nums)
        keys = np.fromiter((f for lit in stored if (f := _to_float(lit)) == lit), np.float64)
    return np.isin(x, keys)


def _as_stored(col: Column, lit: int | float) -> int | float:
    """``lit`` as a float column compares it: as its nearest float32 in a format 0.1 file."""
    if col.float32:
        # Format 0.1 stored these as float32: the literal is compared as its nearest
        # float32, by every operator, so that equality and order agree (fps = 29.97,
        # fps >= 29.97 and fps BETWEEN 29.97 AND 30 all find 29.97 fps episodes, and
        # fps < 29.97 does not). A literal between two float32 values stands for the
        # nearer one: total_reward > 16777215.5 is total_reward > 16777216. A literal
        # beyond float32's range stays as it is (it does not round to infinity).
        with np.errstate(over="ignore"):
            near = float(np.float32(_to_float(lit)))
        if math.isfinite(near) or not math.isfinite(_to_float(lit)):
            return near
    return lit


def _compare_numbers(col: Column, op: str, lit: Value) -> Mask:
    """``column OP lit`` exactly, as Python compares an int or float with ``lit``."""
    x = col.data
    if x is None or isinstance(lit, (str, bool)):
        raise TypeError(f"{col.name}: not a numeric comparison")  # excluded by check()
    if col.kind == "int":
        return _compare_ints(x, op, lit)
    lit = _as_stored(col, lit)
    f = _to_float(lit)
    if f == lit:
        return np.asarray(_CMP[op](x, f))
    # An int no float equals: equal to nothing, ordered through its nearest float.
    if op in ("=", "!="):
        return np.full(len(x), op == "!=")
    out: Mask = (x < f) | ((x == f) & (f < lit)) if op in ("<", "<=") else (x > f) | ((x == f) & (f > lit))
    return out


def _compare_ints(x: np.ndarray, op: str, lit: int | float) -> Mask:
    if isinstance(lit, float) and not lit.is_integer():
        if op in ("=", "!="):
            return np.full(len(x), op == "!=")
        op, lit = ("<=", math.floor(lit)) if op in ("<", "<=") else (">=", math.ceil(lit))
    lit = int(lit)
    info = np.iinfo(x.dtype)
    if lit > info.max:
        return np.full(len(x), op in ("<", "<=", "!="))
    if lit < info.min:
        return np.full(len(x), op in (">", ">=", "!="))
    return np.asarray(_CMP[op](x, x.dtype.type(lit)))


def _to_float(lit: int | float) -> float:
    try:
        return float(lit)
    except OverflowError:
        return math.inf if lit > 0 else -math.inf
