"""What a kinodb export keeps beside a LeRobot dataset's files, given back on ingest.

``kino export --format lerobot`` writes ``meta/kinodb.json`` (array names, whether the
source had timestamps, the source's dataset block: schema and metadata) and
``meta/kinodb_episodes.jsonl`` (each episode's metadata: success, total reward,
embodiment, extra fields), which LeRobot has no place for. An ingest of such a dataset
gives them back, except where the data says otherwise: LeRobot's own tools edit a dataset
in place (``modify_tasks``, deleting episodes) and leave these files as they were.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

import numpy as np

from kinodb._provenance import carried_on_ingest
from kinodb.errors import ConversionError
from kinodb.export._lerobot_tables import element_names
from kinodb.ingest._base import TOTAL_UNKNOWN, exported_extra
from kinodb.ingest._lerobot_data import read_jsonl
from kinodb.ingest._options import skip_advice

log = logging.getLogger(__name__)

_BUILTIN_META = frozenset(
    ("episode_id", "embodiment", "task", "num_frames", "fps", "action_dim", "state_dim", "success",
     "total_reward", "source_file", "source_episode")
)  # fmt: skip


_DROP = (
    "or remove meta/kinodb.json and meta/kinodb_episodes.jsonl to ingest the dataset without what kinodb's "
    "export recorded beside it"
)


def kinodb_export(root: str) -> dict[str, Any] | None:
    """What a kinodb export keeps beside LeRobot's files (``meta/kinodb*.json``), or None.

    Raises:
        ConversionError: ``meta/kinodb.json`` is damaged, or a line of
            ``meta/kinodb_episodes.jsonl`` is not a JSON object with a whole ``episode_index``;
            names the file (and line). A record whose ``meta`` is no object fails only its
            episode, when it is read (`restore`).
    """
    path = os.path.join(root, "meta", "kinodb.json")
    episodes = os.path.join(root, "meta", "kinodb_episodes.jsonl")
    if not (os.path.isfile(path) and os.path.isfile(episodes)):
        return None
    try:
        with open(path, encoding="utf-8") as fh:
            facts = json.load(fh)
        if not isinstance(facts, dict):
            raise TypeError("not a JSON object")
        arrays = {key: str(v["array"]) for key, v in facts.get("arrays", {}).items()}
        shapes = {
            key: tuple(int(d) for d in v["shape"])
            for key, v in facts.get("arrays", {}).items()
            if isinstance(v.get("shape"), list)
        }
        dataset, export = facts.get("dataset", {}), facts.get("export", {})
        if not isinstance(dataset, dict) or not isinstance(export, dict):
            raise TypeError("'dataset' and 'export' must be JSON objects")
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ConversionError(f"{path}: damaged ({exc}): {_DROP.removeprefix('or ')}") from None
    return {"arrays": arrays, "shapes": shapes, "timestamps": facts.get("timestamps"),
            "episodes": _records(episodes), "records": episodes, "dataset": dataset,
            "export": export}  # fmt: skip


def _records(path: str) -> dict[int, tuple[int, dict[str, Any]]]:
    """``meta/kinodb_episodes.jsonl``: episode_index -> (line number, record)."""
    records: dict[int, tuple[int, dict[str, Any]]] = {}
    for number, record in read_jsonl(path, f": fix it, {_DROP}"):
        e = record.get("episode_index")
        if not isinstance(e, int) or isinstance(e, bool) or e < 0:
            got = json.dumps(e) if "episode_index" in record else "missing"
            raise ConversionError(
                f"{path}: line {number}: episode_index is {got}; expected the episode's index, a whole number "
                f">= 0: fix it, {_DROP}"
            )
        records[e] = (number, record)
    return records


def restore_dataset(
    facts: dict[str, Any] | None, schema: dict[str, Any], metadata: dict[str, Any], info: dict[str, Any],
    root: str,
) -> tuple[dict[str, Any], dict[str, Any]]:  # fmt: skip
    """The ingest's ``schema`` and ``metadata`` with what a kinodb export recorded given back.

    ``facts`` is `kinodb_export`'s (None: not a kinodb export), ``info`` the dataset's
    ``meta/info.json``. The source's dataset metadata comes back (less the record of the
    ingest that made the source: this ingest writes its own), under the ingest's own keys.
    The schema of ``actions`` and ``states`` comes back as the source had it (element
    names the export made up from components go again) where the ingested part is what
    the export wrote of it. Nothing comes back when the dataset holds other episodes or
    frames than the export wrote (it was edited since), which is warned about once.
    """
    if facts is None:
        return schema, metadata
    export, dataset = facts["export"], facts["dataset"]
    said = (export.get("episodes"), export.get("frames"))
    held = (info.get("total_episodes"), info.get("total_frames"))
    if said != held:
        _warn_once(root, "dataset", "%s: meta/kinodb.json (written by kinodb's export) describes %s episodes of "
                   "%s frames, the dataset has %s of %s: it was changed after the export, so the source's "
                   "schema names and dataset metadata are not given back", root, *said, *held)  # fmt: skip
        return schema, metadata
    recorded = dataset.get("metadata")
    if isinstance(recorded, dict):
        metadata = {**{k: v for k, v in recorded.items() if k != "ingest"}, **metadata}
    parts = dataset.get("schema") if isinstance(dataset.get("schema"), dict) else {}
    schema = dict(schema)
    for name in ("actions", "states"):
        part = parts.get(name)
        if isinstance(part, dict) and schema.get(name, {}) == as_exported(part):
            kept = {key: part[key] for key in ("names", "components") if part.get(key)}
            schema.pop(name, None)
            if kept:
                schema[name] = kept
    return schema, metadata


def as_exported(part: dict[str, Any]) -> dict[str, Any]:
    """The schema part that an ingest reads back from a LeRobot export of the schema part
    ``part`` (of ``actions`` or ``states``): the feature's ``names`` are the part's names,
    else made up from its components (``eef_0``, ``eef_1``, ...), kept per component when
    these tile the values, as `kinodb.export.lerobot` writes them."""
    dim = part.get("dim")
    if not isinstance(dim, int) or dim <= 0:
        return {}
    spelt = element_names(part, dim)
    if spelt is None:
        return {}
    names, comps, tiles = spelt
    return (
        {"names": names, "components": {name: [a, b] for a, b, name in comps}} if tiles else {"names": names}
    )


def restore(args: dict[str, Any], facts: dict[str, Any], index: int, root: str) -> None:
    """Give a kinodb export's episode back what LeRobot has no place for.

    Array names, the source's timestamps (or their absence), success, total reward,
    embodiment and extra fields come from ``meta/kinodb*.json``; the episode's
    ``source_file``/``source_episode`` become ``origin_file``/``origin_episode`` unless
    it has those (the ingest names this dataset as the source). What the data itself
    says wins: the tasks come from its ``task_index`` (the export's record of them is only
    compared, and a difference warned about: the dataset was edited after the export),
    and an episode record whose frame count or dims differ from the episode's data (the
    episodes were changed or renumbered since) is not used at all, with a warning.
    """
    extra_arrays = args.get("extra_arrays", {})
    for key, name in facts["arrays"].items():
        if key in extra_arrays and name not in ("actions", "states", "rewards", "is_terminal"):
            value = extra_arrays.pop(key)
            shape = facts["shapes"].get(key)  # LeRobot writes a (1,) feature as a scalar column
            if shape is not None and value.shape[1:] != shape and value[:1].size == int(np.prod(shape)):
                value = value.reshape(len(value), *shape)
            if name == "timestamps":
                args["timestamps"] = value
            else:
                extra_arrays[name] = value
    if facts["timestamps"] is None:
        args.pop("timestamps", None)  # the source had none; LeRobot's grid was made up on export
    meta = _record_meta(facts, index)
    if meta is None:
        return
    stale = _record_differs(meta, args)
    if stale is not None:
        _warn_once(root, "record", "%s: meta/kinodb_episodes.jsonl (written by kinodb's export) does not "
                   "describe episode %d of the data (%s): the dataset was changed after the export; its "
                   "records are not used for the episodes they do not fit", root, index, stale)  # fmt: skip
        return
    _check_tasks(meta, args, index, root)
    args["success"] = meta.get("success")
    if "total_reward" in meta:
        args["total_reward"] = meta["total_reward"]
        if meta["total_reward"] is None:
            args[TOTAL_UNKNOWN] = True  # unknown stays unknown, whatever the rewards
    if isinstance(meta.get("embodiment"), str):  # "" too: the episode's own, as it was written
        args["embodiment"] = meta["embodiment"]
    extra = args.setdefault("extra", {})
    extra.pop("episode_index", None)
    restored = exported_extra(meta, _BUILTIN_META)
    restored.pop("tasks", None)  # the data's task_index says what the tasks are (`_check_tasks`)
    kept = carried_on_ingest(
        {**restored, **{k: meta[k] for k in ("source_file", "source_episode") if k in meta}}
    )
    restored.update(kept)  # as kinodb.merge moves provenance
    extra.update(restored)


_META_TYPES = (
    ("success", (bool,), "true, false or null"),
    ("total_reward", (int, float), "a number or null"),
    ("embodiment", (str,), "a string or null"),
)  # the record's fields that `restore` hands to the writer as they are


def _record_meta(facts: dict[str, Any], index: int) -> dict[str, Any] | None:
    """Episode ``index``'s ``meta`` in ``meta/kinodb_episodes.jsonl`` (None: no record).

    Raises:
        ConversionError: ``meta`` is no JSON object, or a field `restore` hands to the
            writer is of another type; names the file, line, episode and field.
    """
    entry = facts["episodes"].get(index)
    if entry is None:
        return None
    number, record = entry
    meta = record.get("meta", {})
    where = f"{facts['records']}: line {number} (episode {index})"
    if not isinstance(meta, dict):
        raise ConversionError(
            f"{where}: meta is {json.dumps(meta)[:60]}; expected a JSON object of the episode's metadata: fix "
            f"this line, {_DROP}{skip_advice()}"
        )
    for name, types, expected in _META_TYPES:
        value = meta.get(name)
        if value is not None and (isinstance(value, bool) != (bool in types) or not isinstance(value, types)):
            raise ConversionError(
                f"{where}: meta.{name} is {json.dumps(value)[:60]}; expected {expected}: fix this line, "
                f"{_DROP}{skip_advice()}"
            )
    return meta


_WARNED_EXPORTS: set[tuple[str, str]] = set()  # (dataset root, what) already warned about


def _warn_once(root: str, what: str, message: str, *values: Any) -> None:
    """One warning per dataset and kind: an edited dataset would warn for every episode."""
    if (root, what) not in _WARNED_EXPORTS:
        _WARNED_EXPORTS.add((root, what))
        log.warning(message, *values)


def _record_differs(meta: dict[str, Any], args: dict[str, Any]) -> str | None:
    """How an export's episode record contradicts the episode's data (None: it fits)."""
    T, A = args["actions"].shape
    states = args.get("states")
    S = 0 if states is None else int(np.prod(states.shape[1:]))
    for name, have in (("num_frames", T), ("action_dim", A), ("state_dim", S)):
        said = meta.get(name)
        if isinstance(said, int) and said != have:
            return f"it says {name} {said}, the data has {have}"
    return None


def _check_tasks(meta: dict[str, Any], args: dict[str, Any], index: int, root: str) -> None:
    """Warn when an export's record of an episode's tasks is not what its data says now."""
    recorded = meta.get("tasks")
    if not isinstance(recorded, list):
        if "task" not in meta:
            return
        recorded = [meta["task"]]
    listed: list[Any] = recorded
    data: list[Any] = args.get("extra", {}).get("tasks") or [args.get("task")]
    if set(map(str, listed)) != set(map(str, data)):  # as sets: the list's order is not data
        _warn_once(root, "tasks", "%s: episode %d has the tasks %r by its task_index, but "
                   "meta/kinodb_episodes.jsonl (written by kinodb's export) lists %r: the tasks were "
                   "edited after the export, and the data's are kept", root, index, data, listed)  # fmt: skip
