"""KQL, kinodb's query language over episode metadata.

A query is a boolean expression over per-episode fields (built-in ones such as
``embodiment``, ``success`` and ``num_frames``, and every extra field of the file);
it evaluates as NumPy masks over the metadata columns, never per episode. The
language is specified in ``docs/kql.md``.

Example:
    >>> import kinodb, kinodb.kql
    >>> with kinodb.open("demo.kdb") as db:
    ...     hits = kinodb.kql.query(db, "embodiment IN ('franka', 'ur5e') AND NOT success = false")
    >>> kinodb.kql.parse("task CONTAINS 'pick' OR num_frames > 50").render()
    "task CONTAINS 'pick' OR num_frames > 50"
"""

from __future__ import annotations

from kinodb.kql._eval import query
from kinodb.kql._parser import parse
from kinodb.kql.ast import And, Between, Compare, Field, In, IsNull, Node, Not, Or, Value

__all__ = [
    "And",
    "Between",
    "Compare",
    "Field",
    "In",
    "IsNull",
    "Node",
    "Not",
    "Or",
    "Value",
    "parse",
    "query",
]
