"""What a kinodb export keeps in a zarr replay buffer's root attributes, given back on ingest.

``kino export --format zarr`` (`kinodb.export.zarr`) records in the root group's
attributes which array holds what (``kinodb_export``'s ``layout``: the state components in
column order, the extra arrays' and cameras' names) and the file's dataset block
(``kinodb_dataset``), and each episode's metadata in ``kinodb_episodes.jsonl`` beside the
groups, none of which the replay buffer layout has a place for. The zarr ingest gives them back where they still
describe the store: a store edited since (other episodes or rows, an array gone) is read
as any replay buffer, and the report's notes say so.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from kinodb.ingest._base import user_metadata
from kinodb.ingest._restore import restore_meta

ATTRS = ("kinodb_export", "kinodb_dataset")
"""The root attributes a kinodb export writes; not copied into the dataset metadata."""
EPISODES = "kinodb_episodes.jsonl"
"""The store's file of episode metadata (`kinodb.export.zarr.EPISODES`)."""


def exported(
    attrs: dict[str, Any], lines: bytes | None, ends: np.ndarray, keys: set[str], notes: list[str]
) -> dict[str, Any] | None:
    """The export's record (``layout``, ``dataset``, ``episodes``) where ``attrs`` (the root
    group's) and ``lines`` (the store's `EPISODES`) hold one that describes the store: as
    many episodes and rows as ``ends`` says, and every array it names among ``keys``
    (``data/``'s); else None, with a note when the record is there but no longer fits."""
    facts = attrs.get("kinodb_export")
    if not isinstance(facts, dict) or not str(facts.get("exporter", "")).startswith("kinodb "):
        return None
    layout, dataset = facts.get("layout"), attrs.get("kinodb_dataset")
    episodes: Any = None
    if lines is not None:
        try:
            episodes = [json.loads(line) for line in lines.decode("utf-8").splitlines() if line.strip()]
        except ValueError:  # UnicodeDecodeError too
            episodes = None
    rows = int(ends[-1]) if len(ends) else 0
    named: set[str] = set()
    if isinstance(layout, dict):
        for key in ("actions", "timestamps", "rewards", "is_terminal"):
            if isinstance(layout.get(key), str):
                named.add(layout[key])
        for key in ("states", "cameras", "extra_arrays"):
            named.update(k for k in layout.get(key) or () if isinstance(k, str))
    fits = (
        isinstance(layout, dict)
        and isinstance(dataset, dict)
        and isinstance(episodes, list)
        and all(isinstance(e, dict) for e in episodes)
        and facts.get("episodes") == len(ends) == len(episodes)
        and facts.get("frames") == rows
        and named <= keys
    )
    if not fits:
        notes.append(
            "the store was written by kinodb's export and changed since (its episodes, rows or arrays are not "
            f"what the export recorded in the root attributes and {EPISODES}): read as a replay buffer, without "
            "the names, state components and episode metadata the export recorded"
        )
        return None
    return {"layout": layout, "dataset": dataset, "episodes": episodes}


def restore_dataset(
    record: dict[str, Any] | None, schema: dict[str, Any], metadata: dict[str, Any], actions: str,
    states: list[str],
) -> tuple[dict[str, Any], dict[str, Any]]:  # fmt: skip
    """The ingest's ``schema`` and ``metadata`` with the exported file's given back: its
    dataset metadata (less the record of the ingest that made it) under the ingest's own
    keys, and the names and components of its ``actions`` and ``states`` where the ingest
    read them from the arrays the export wrote them to (``actions``, ``states``: the keys
    it read; the caller's ``action_key`` or ``state_keys`` may choose others)."""
    if record is None:
        return schema, metadata
    dataset, layout = record["dataset"], record["layout"]
    metadata = {**user_metadata(dataset.get("metadata")), **metadata}
    parts = dataset.get("schema") if isinstance(dataset.get("schema"), dict) else {}
    same = {"actions": actions == layout.get("actions"), "states": states == layout.get("states")}
    schema = dict(schema)
    for name in ("actions", "states"):
        part = parts.get(name)
        if not isinstance(part, dict) or not same[name]:
            continue
        kept = {key: part[key] for key in ("names", "components") if part.get(key)}
        schema.pop(name, None)
        if kept:
            schema[name] = kept
    return schema, metadata


def component_names(record: dict[str, Any] | None, states: list[str]) -> dict[str, str]:
    """The state components' names by the keys that hold them, where the export had to
    rename a key (a component named ``reward`` written as ``data/reward_``) and the ingest
    read the recorded keys; else empty."""
    if record is None or states != record["layout"].get("states"):
        return {}
    names = record["layout"].get("state_components")
    return {k: str(v) for k, v in names.items() if isinstance(k, str)} if isinstance(names, dict) else {}


def restore_episode(args: dict[str, Any], record: dict[str, Any], index: int, fps_given: bool) -> None:
    """Give episode ``index`` back what its export record holds (`restore_meta`)."""
    restore_meta(args, record["episodes"][index], fps_given)
