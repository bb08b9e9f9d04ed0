"""What a kinodb export keeps beside an RLDS dataset's files, given back on ingest.

``kino export --format rlds`` (`kinodb.export.rlds`) records in ``kinodb_export.json``
which feature holds what (the ``layout``: the timestamps, the cameras' and extra arrays'
names) and the file's dataset block (schema, metadata), and in each episode's
``episode_metadata/kinodb`` its metadata as JSON, none of which RLDS has a place for. The
RLDS ingest gives them back where they still describe the dataset: a record naming
features the dataset lacks is not used (the report's notes say so), and an episode whose
metadata counts other steps than its record holds keeps what its features say, with a
warning.
"""

from __future__ import annotations

import json
import os
from typing import Any

from kinodb.ingest import _zarr_kinodb
from kinodb.ingest._restore import restore_meta

RECORD = "kinodb_export.json"
"""The file a kinodb export writes beside ``dataset_info.json`` (`kinodb.export.rlds.RECORD`)."""


def exported(root: str, specs: set[str], notes: list[str]) -> dict[str, Any] | None:
    """The export's record (``layout``, ``dataset``) in the folder ``root``, where it names
    only features among ``specs`` (the dataset's flattened keys); else None, with a note
    when the record is there but no longer fits."""
    path = os.path.join(root, RECORD)
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as fh:
            record = json.load(fh)
    except (OSError, ValueError):
        record = None
    facts = record.get("kinodb_export") if isinstance(record, dict) else None
    if not isinstance(facts, dict) or not str(facts.get("exporter", "")).startswith("kinodb "):
        return None
    layout, dataset = facts.get("layout"), record.get("kinodb_dataset")  # type: ignore[union-attr]
    named: set[Any] = set()
    if isinstance(layout, dict):
        named = {layout.get(k) for k in ("actions", "states", "rewards", "is_terminal", "timestamps", "task",
                                         "episodes")} - {None}  # fmt: skip
        for key in ("cameras", "extra_arrays"):
            part = layout.get(key)
            named.update(part if isinstance(part, dict) else {None: None})
    if not (isinstance(layout, dict) and isinstance(dataset, dict) and named <= specs):
        notes.append(
            f"the dataset was written by kinodb's export and changed since ({RECORD} names features it does not "
            "hold): read as any RLDS dataset, without the names, state components and episode metadata the "
            "export recorded"
        )
        return None
    return {"layout": layout, "dataset": dataset}


def restore_dataset(
    record: dict[str, Any] | None, schema: dict[str, Any], metadata: dict[str, Any], actions: list[str],
    states: list[str],
) -> tuple[dict[str, Any], dict[str, Any]]:  # fmt: skip
    """The ingest's ``schema`` and ``metadata`` with the exported file's given back (see
    `kinodb.ingest._zarr_kinodb.restore_dataset`); ``actions`` and ``states`` are the
    feature keys the ingest read them from."""
    if record is None:
        return schema, metadata
    layout = record["layout"]
    recorded = {
        "actions": layout.get("actions"),
        "states": [layout["states"]] if layout.get("states") else [],
    }
    action = actions[0] if len(actions) == 1 else None
    return _zarr_kinodb.restore_dataset(
        {"dataset": record["dataset"], "layout": recorded}, schema, metadata, action or "", states
    )


def restore(
    args: dict[str, Any], record: dict[str, Any], arrays: dict[str, str], cameras: dict[str, str],
    fields: dict[str, str], fps_given: bool,
) -> bool:  # fmt: skip
    """Give an exported episode back its names, timestamps and metadata.

    ``arrays``, ``cameras`` and ``fields`` are the ingest's plan (name -> feature key). The
    extra arrays and cameras the export renamed get their names back, its timestamp
    feature becomes the timestamps, and the metadata of ``episode_metadata/kinodb``
    replaces the extra fields the ingest made of the export's own features (the per-step
    tasks, the fields it copied into ``episode_metadata/``). Returns False, changing
    nothing, where the episode's ``episode_metadata/kinodb`` no longer describes it (the
    dataset was changed after the export): see `edited`.
    """
    layout = record["layout"]
    names = {key: name for name, key in fields.items()}
    text = args.get("extra", {}).get(names.get(layout["episodes"], ""))
    try:
        meta = json.loads(text) if isinstance(text, str) else None
    except ValueError:
        meta = None
    if not isinstance(meta, dict) or meta.get("num_frames") != len(args["actions"]):
        return False
    stamps = layout.get("timestamps")  # first: an extra array may get back the name it had
    by_key = {key: name for name, key in arrays.items()}
    if isinstance(stamps, str) and by_key.get(stamps) in args.get("extra_arrays", {}):
        args["timestamps"] = args["extra_arrays"].pop(by_key[stamps])
    _rename(args.get("extra_arrays", {}), arrays, layout.get("extra_arrays"))
    if "images" in args:
        _rename(args["images"], cameras, layout.get("cameras"))
    args["extra"] = {}
    return restore_meta(args, meta, fps_given)


def edited(root: str, record: dict[str, Any], where: str) -> str:
    """The warning for an episode `restore` could not give back (said once per ingest)."""
    return (
        f"{root}: {record['layout']['episodes']} (written by kinodb's export) does not describe the episode "
        f"({where}): the dataset was changed after the export; such episodes keep what their features say"
    )


def _rename(values: dict[str, Any], plan: dict[str, str], recorded: Any) -> None:
    """Rename ``values`` (by the ingest's names, ``plan``: name -> key) to the names ``recorded``
    (key -> exported name)."""
    if not isinstance(recorded, dict):
        return
    by_key = {key: name for name, key in plan.items()}
    moved = {str(recorded[key]): values.pop(by_key[key]) for key in recorded if by_key.get(key) in values}
    values.update(moved)
