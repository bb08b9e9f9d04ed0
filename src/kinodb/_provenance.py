"""Where an episode came from, carried through merges and re-ingests without losing a value.

A merge (and the ingest of a kinodb export) names its input in ``source_file`` and
``source_episode``. What the episode already held under those names moves to
``origin_file``/``origin_episode`` when neither is taken, so the first origin survives any
number of steps; the two move together, so an origin is never half one source and half
another. When an origin is taken, each value is kept as ``pre_merge_NAME`` (or
``pre_merge_NAME_2``, ...).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

PROVENANCE = (("source_file", "origin_file"), ("source_episode", "origin_episode"))


def carried(meta: Mapping[str, Any]) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    """The fields that keep what ``meta`` held under ``source_file``/``source_episode``, and
    the ``(field, kept as)`` pairs of values that could not move to an ``origin_*`` name."""
    held = [(name, origin) for name, origin in PROVENANCE if name in meta]
    if not any(origin in meta for _, origin in PROVENANCE):
        return {origin: meta[name] for name, origin in held}, []
    out: dict[str, Any] = {}
    moved = []
    for name, _ in held:
        kept, k = f"pre_merge_{name}", 1
        while kept in meta or kept in out:
            k += 1
            kept = f"pre_merge_{name}_{k}"
        out[kept] = meta[name]
        moved.append((name, kept))
    return out, moved


def carried_on_ingest(meta: Mapping[str, Any]) -> dict[str, Any]:
    """`carried` for the ingest of a kinodb export: a ``source_file``/``source_episode`` pair
    beside an origin is the one an earlier kinodb ingest or merge wrote (a path and a
    position), which the origin already outlives, and is replaced; anything else is kept."""
    ours = isinstance(meta.get("source_file"), str) and type(meta.get("source_episode")) is int
    if ours and any(origin in meta for _, origin in PROVENANCE):
        return {}
    return carried(meta)[0]
