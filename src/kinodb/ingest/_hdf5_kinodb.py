"""What a kinodb export keeps in a robomimic HDF5 file, given back on ingest.

``kino export --format hdf5`` records its source in the ``data`` group's attributes:
``kinodb_export`` (how many demos and frames it wrote) and ``kinodb_dataset`` (the
source's dataset block: schema and metadata), and each episode's extra fields and total
reward in the demo's ``ep_meta``. An ingest of such a file gives back the dataset
metadata (less the record of the ingest that made the source), the names and components
of ``actions`` and ``states`` where they fit the data, the state keys in their original
order (the low-dim keys the export wrote from extra arrays stay extra arrays), and each
demo's extra fields; not the dataset block when the file holds other
demos or frames than the export wrote (it was changed since; a warning says so). Each
episode's earlier ``source_file``/``source_episode`` become its ``origin_file``/
``origin_episode`` (unless it has those), and its ``filter_keys`` keep their order.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from itertools import pairwise
from typing import Any

from kinodb._provenance import carried_on_ingest
from kinodb.ingest._base import TOTAL_UNKNOWN, exported_extra, fitting_part
from kinodb.ingest._hdf5_facts import text
from kinodb.ingest._hdf5_layout import Field, Layout

# The HDF5 source's logger: its warnings are filtered by that name.
log = logging.getLogger("kinodb.ingest.hdf5")
_WARNED_CHANGED: set[str] = set()  # kinodb exports changed since, already warned about

_PROVENANCE = ("source_file", "source_episode")  # the ingest sets these anew
_FILTER_KEYS = "filter_keys"
_BUILTIN_META = frozenset(
    ("lang", "task", "embodiment", "fps", "success", "total_reward", "episode_id", "num_frames",
     "action_dim", "state_dim")
)  # fmt: skip


def exported_upright(attrs: Any) -> bool:
    """Whether ``attrs`` (of the ``data`` group) are a kinodb export's of frames already
    turned upright on ingest."""
    try:
        info = json.loads(text(attrs["kinodb_dataset"]))
        return bool(info["metadata"]["image_orientation"] == "rotated_180")
    except (KeyError, ValueError, TypeError):
        return False


def recorded_dataset(path: str, attrs: Any, held: Callable[[], tuple[int, int]]) -> dict[str, Any] | None:
    """The dataset block a kinodb export recorded (``data`` attr ``kinodb_dataset``), or None.

    None also when it no longer describes the file: its export facts (``kinodb_export``)
    count other demos or frames than the file holds (``held()``: demos were added or
    removed since), which is warned about once.
    """
    if "kinodb_dataset" not in attrs or "kinodb_export" not in attrs:
        return None
    try:
        dataset, facts = (
            json.loads(text(attrs["kinodb_dataset"])),
            json.loads(text(attrs["kinodb_export"])),
        )
    except ValueError:
        return None
    if not isinstance(dataset, dict) or not isinstance(facts, dict):
        return None
    holds = held()
    said = (facts.get("episodes"), facts.get("frames"))
    if said != holds:
        if path not in _WARNED_CHANGED:
            _WARNED_CHANGED.add(path)
            log.warning(
                "%s: the kinodb export that wrote this file recorded %s demos of %s frames, and the file "
                "holds %d of %d: it was changed since, so the export's schema names and dataset metadata "
                "(data attr kinodb_dataset) are not given back", path, *said, *holds
            )  # fmt: skip
        return None
    return dataset


def exported_state_order(attrs: Any, fields: list[Field]) -> tuple[str, ...] | None:
    """A kinodb export's state components in their original order (else sorted order).

    The low-dim obs keys must be those components, or those and keys the export wrote
    from extra arrays ingested from ``obs/`` (the low-dim keys an ingest with
    ``state_keys`` kept out of the states): those stay extra arrays.
    """
    if "kinodb_dataset" not in attrs:
        return None
    try:
        recorded = json.loads(text(attrs["kinodb_dataset"]))
        components = recorded["schema"]["states"]["components"]
        order = tuple(f"obs/{name}" for name, _ in sorted(components.items(), key=lambda kv: kv[1][0]))
    except (ValueError, KeyError, TypeError, IndexError, AttributeError):
        return None
    have = {f.path for f in fields if f.kind == "state"}
    if not order or not set(order) <= have:
        return None
    return order if have - set(order) <= _exported_obs_arrays(recorded) else None


def _exported_obs_arrays(recorded: Any) -> set[str]:
    """The ``obs/`` paths of the extra arrays a kinodb export's source ingested from HDF5."""
    try:
        paths = recorded["metadata"]["hdf5"]["extra_arrays"].values()
    except (KeyError, TypeError, AttributeError):
        return set()
    return {p for p in paths if isinstance(p, str) and p.startswith("obs/")}


def exported_schema(
    recorded: Any, schema: dict[str, Any], layout: Layout, action_widths: set[int]
) -> dict[str, Any]:
    """``schema`` with what a kinodb export recorded of its schema given back where it fits
    the data: the names and components of ``actions``, and of ``states`` when the state
    keys are the components the export wrote; states the export wrote whole (``obs/state``:
    no components, or components that do not tile them) get back their recorded names and
    components, or none, instead of the one component ``state``."""
    recorded = recorded if isinstance(recorded, dict) else {}
    out = dict(schema)
    if len(action_widths) == 1:
        part = fitting_part(recorded.get("actions"), next(iter(action_widths)))
        if part:
            out["actions"] = part
    width = layout.components[layout.states[-1].name][1] if layout.states else 0
    states = recorded.get("states")
    part = fitting_part(states, width) if width else None
    if part is None:
        return out
    comps = part.get("components", {})
    if _tiles(comps, width):
        same = comps == layout.components  # the export wrote these components as obs keys
    else:
        same = [f.name for f in layout.states] == ["state"]  # the export wrote states whole
    if same:
        out.pop("states", None)
        if part:
            out["states"] = part
    return out


def _tiles(comps: dict[str, list[int]], dim: int) -> bool:
    """Whether components cover ``[0, dim)`` exactly, end to end (as the export splits them)."""
    spans = sorted(comps.values())
    return bool(spans) and spans[0][0] == 0 and spans[-1][1] == dim and all(
        a[1] == b[0] for a, b in pairwise(spans)
    )  # fmt: skip


def restore_fields(args: dict[str, Any], ep_meta: dict[str, Any]) -> None:
    """Bring back what a kinodb export keeps in ``ep_meta``: extra fields and a null total.

    The episode's provenance moves on as `kinodb.merge` moves it (`kinodb._provenance`):
    the ingest names this file in ``source_file``/``source_episode``, and what the episode
    held under those names goes to ``origin_file``/``origin_episode`` unless those are set,
    so the first origin survives, else to ``pre_merge_*``.
    ``filter_keys`` keep the episode's order where they are the keys ``mask/`` lists for
    the demo (``args``' ``filter_keys``, sorted); where ``mask/`` says otherwise (the file
    was edited after the export), ``mask/`` wins.
    """
    extra = exported_extra(ep_meta, _BUILTIN_META)
    listed = args.get("extra", {})
    kept = carried_on_ingest(extra)
    for key in _PROVENANCE:
        extra.pop(key, None)
    extra.update(kept)
    recorded = extra.pop(_FILTER_KEYS, None)
    keys = listed.get(_FILTER_KEYS, [])
    fits = (
        isinstance(recorded, list)
        and all(isinstance(k, str) for k in recorded)
        and set(recorded) == set(keys)
    )
    if fits and (_FILTER_KEYS in listed or not recorded):  # with no mask/ at all, only an empty list fits
        listed = {**listed, _FILTER_KEYS: recorded}
    args["extra"] = {**extra, **listed}
    if "total_reward" in ep_meta:
        total = ep_meta["total_reward"]
        if total is None:
            args[TOTAL_UNKNOWN] = True  # unknown stays unknown, whatever the rewards
        else:
            args["total_reward"] = float(total)
