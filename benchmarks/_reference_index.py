"""The earlier index builder, kept to check that the current one writes identical bytes and
to measure it against.

`ReferenceTableBuilder` is what kinodb's writer used before appends kept the stored rows
encoded: it decodes every stored row to Python lists on load and encodes every value again
on commit, with the earlier encoders below (`encode_strings`, `encode_extra`,
`encode_index`). ``benchmarks/bench_append.py`` times it against `TableBuilder`, and
``tests/kdb/test_append_scale.py`` checks that both write the same file.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from kinodb.kdb._layout import INDEX_HEAD, INDEX_MAGIC, align, crc32
from kinodb.kdb._sections import uniform_layout
from kinodb.kdb._table import (
    ABSENT,
    EPISODE_COLUMNS,
    EXTRA_ABSENT,
    EXTRA_NULL,
    EXTRA_VALUE,
    SECTION_COLUMNS,
    STRING_COLUMNS,
    IndexBlock,
)


def encode_strings(values: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A string column as codes into a dictionary of its values in first-use order."""
    lookup: dict[str, int] = {}
    codes = np.fromiter((lookup.setdefault(v, len(lookup)) for v in values), "<i4", len(values))
    encoded = [k.encode() for k in lookup]
    offsets = np.zeros(len(encoded) + 1, "<u8")
    np.cumsum([len(b) for b in encoded], out=offsets[1:])
    return codes, offsets, np.frombuffer(b"".join(encoded), "|u1")


def extra_kind(values: Iterable[Any]) -> str:
    """The stored kind of an extra field: its values' one kind, else "json" ("null" if none)."""
    kinds = set()
    for v in values:
        if v is ABSENT or v is None:
            continue
        if isinstance(v, bool):
            kinds.add("bool")
        elif isinstance(v, int):
            kinds.add("int" if -(2**63) <= v < 2**63 else "json")
        elif isinstance(v, float):
            kinds.add("float")
        elif isinstance(v, str):
            kinds.add("str")
        else:
            kinds.add("json")
    return kinds.pop() if len(kinds) == 1 else ("json" if kinds else "null")


def encode_extra(values: Sequence[Any]) -> tuple[str, dict[str, np.ndarray]]:
    """An extra field's kind and columns, from one value (or `ABSENT`) per episode."""
    state = np.array(
        [EXTRA_ABSENT if v is ABSENT else EXTRA_NULL if v is None else EXTRA_VALUE for v in values], "|u1"
    )
    kind = extra_kind(values)
    present = [v if state[i] == EXTRA_VALUE else None for i, v in enumerate(values)]
    cols: dict[str, np.ndarray] = {"state": state}
    if kind == "bool":
        cols["values"] = np.array([bool(v) for v in present], "|u1")
    elif kind == "int":
        cols["values"] = np.array([v or 0 for v in present], "<i8")
    elif kind == "float":
        cols["values"] = np.array([math.nan if v is None else v for v in present], "<f8")
    elif kind == "str":
        cols["codes"], cols["dict_offsets"], cols["dict_bytes"] = encode_strings([v or "" for v in present])
    elif kind == "json":
        texts = [b"" if v is None else json.dumps(v).encode() for v in present]
        offsets = np.zeros(len(texts) + 1, "<u8")
        np.cumsum([len(t) for t in texts], out=offsets[1:])
        cols["offsets"], cols["bytes"] = offsets, np.frombuffer(b"".join(texts), "|u1")
    return kind, cols


def encode_index(
    dataset: dict[str, Any], columns: dict[str, np.ndarray], section_names: list[str], kinds: list[list[str]]
) -> bytes:
    """The index block: its head, its JSON table of contents, then each column aligned."""
    layout: dict[str, list[Any]] = {}
    pos = 0
    for name, arr in columns.items():
        arr = np.ascontiguousarray(arr)
        layout[name] = [arr.dtype.str, pos, list(arr.shape)]
        pos = align(pos + arr.nbytes)
    contents = {"dataset": dataset, "columns": layout, "section_names": section_names, "extras": kinds}
    uniform = uniform_layout(columns)  # where every episode is laid out alike: later writers add it
    if uniform is not None:
        contents["uniform"] = uniform
    toc = json.dumps(contents, separators=(",", ":")).encode()
    body_start = align(INDEX_HEAD.size + len(toc))
    out = bytearray(body_start + pos)
    INDEX_HEAD.pack_into(out, 0, INDEX_MAGIC, len(toc), crc32(toc), 0)
    out[INDEX_HEAD.size : INDEX_HEAD.size + len(toc)] = toc
    for name, arr in columns.items():
        start = body_start + layout[name][1]
        raw = np.ascontiguousarray(arr).tobytes()
        out[start : start + len(raw)] = raw
    return bytes(out)


class ReferenceTableBuilder:
    """The earlier index builder: every stored row decoded to Python lists on load, every value
    encoded again."""

    def __init__(self) -> None:
        self.rows: dict[str, list[Any]] = {c: [] for c in EPISODE_COLUMNS}
        self.strings: dict[str, list[str]] = {s: [] for s in STRING_COLUMNS}
        self.extras: dict[str, list[Any]] = {}
        self.sections: dict[str, list[Any]] = {c: [] for c in SECTION_COLUMNS}
        self.section_names: list[str] = []
        self._name_codes: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self.rows["episode_id"])

    def name_code(self, name: str) -> int:
        code = self._name_codes.get(name)
        if code is None:
            code = self._name_codes[name] = len(self.section_names)
            self.section_names.append(name)
        return code

    def new_names(self, names: Iterable[str]) -> int:
        return len(set(names).difference(self._name_codes))

    def add_episode(self, row: dict[str, Any], strings: dict[str, str], extra: Mapping[str, Any]) -> None:
        n = len(self)
        for c in EPISODE_COLUMNS:
            self.rows[c].append(row[c])
        for s in STRING_COLUMNS:
            self.strings[s].append(strings[s])
        for key in extra:
            if key not in self.extras:
                self.extras[key] = [ABSENT] * n
        for key, values in self.extras.items():
            values.append(extra.get(key, ABSENT))

    def add_section(self, row: dict[str, Any]) -> None:
        for c in SECTION_COLUMNS:
            self.sections[c].append(row[c])

    # The writer's calls in the shapes it makes them now (a row as its values in column order).
    def add_episode_values(
        self, values: tuple[Any, ...], strings: dict[str, str], extra: Mapping[str, Any]
    ) -> None:
        self.add_episode(dict(zip(EPISODE_COLUMNS, values, strict=True)), strings, extra)

    def add_sections(self, rows: Iterable[tuple[Any, ...]]) -> None:
        for row in rows:
            self.add_section(dict(zip(SECTION_COLUMNS, row, strict=True)))

    def section_count(self) -> int:
        return len(self.sections["sec.name"])

    def drop_sections(self, start: int) -> None:
        for col in self.sections.values():
            del col[start:]

    def load(self, block: IndexBlock, where: str = "") -> None:
        cols = block.columns
        for c in EPISODE_COLUMNS:
            self.rows[c] = cols[c].tolist()
        for s in STRING_COLUMNS:
            self.strings[s] = block.strings[s].to_numpy().tolist()
        for name, col in block.extras.items():
            self.extras[name] = [col.get(i) for i in range(len(col.state))]
        for c in SECTION_COLUMNS:
            self.sections[c] = cols[c].tolist()
        for name in block.section_names:
            self.name_code(name)

    def encode(self, dataset: dict[str, Any]) -> bytes:
        columns = {c: np.array(self.rows[c], dtype=dt) for c, dt in EPISODE_COLUMNS.items()}
        for s in STRING_COLUMNS:
            codes, offs, blob = encode_strings(self.strings[s])
            columns.update({f"{s}.codes": codes, f"{s}.dict_offsets": offs, f"{s}.dict_bytes": blob})
        for c, dt in SECTION_COLUMNS.items():
            arr = np.array(self.sections[c], dtype=dt)
            columns[c] = arr.reshape(-1, 3) if c == "sec.dims" else arr
        kinds = []
        for j, (name, values) in enumerate(sorted(self.extras.items())):
            kind, cols = encode_extra(values)
            kinds.append([name, kind])
            columns.update({f"extra.{j}.{k}": v for k, v in cols.items()})
        return encode_index(dataset, columns, self.section_names, kinds)
