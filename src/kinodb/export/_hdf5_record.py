"""What the HDF5 export reads of the record an HDF5 ingest left in a file's metadata.

The metadata's ``hdf5`` block (and, for a merge that keeps it with its inputs only, each
input's): the source's ``data`` attrs (``hdf5.data_attrs``) and those lifted to the top
level, where each extra array came from (``hdf5.extra_arrays``), each state key's dtype
and shape (``hdf5.state_layout``), the dtypes of rewards and dones
(``hdf5.source_dtypes``), the filter keys the source held empty (``hdf5.filter_keys``),
and whether the ingest left out the demos' ``model_file`` (``hdf5.left_out``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from kinodb.export._hdf5_turns import MergeInput
from kinodb.kdb.reader import Database

MODEL_FILE = "model_file"  # the demo attr of the simulator model (MJCF XML) robomimic replays demos with
# data attrs the HDF5 ingest reads into the top-level metadata as text: written back from there.
_LIFTED = ("bddl_file_name", "macros_image_convention")
# data attrs the export writes itself, over those of the source of the same names.
_OWN_DATA_ATTRS = frozenset(
    ("total", "env_args", "problem_info", "kinodb_dataset", "kinodb_export", *_LIFTED)
)
# The demo groups an extra array ingested from HDF5 goes back to, under its key there.
_GROUPS = frozenset(("obs", "next_obs", "action_dict"))


def _hdf5_records(db: Database, merge: dict[str, MergeInput] | None) -> list[dict[str, Any]]:
    """The ``hdf5`` metadata of the HDF5 ingest that made ``db``, or of each input of a merge
    that keeps it with its inputs only."""
    meta = db.metadata()
    given = [meta] if merge is None or isinstance(meta.get("hdf5"), dict) else [
        m.metadata for m in merge.values() if m.metadata is not None
    ]  # fmt: skip
    return [m["hdf5"] for m in given if isinstance(m.get("hdf5"), dict)]


def had_model_file(db: Database, merge: dict[str, MergeInput] | None) -> bool:
    """Whether the HDF5 ingest of ``db`` (of an input, for a merge) left out its demos'
    ``model_file`` (the metadata's ``hdf5.left_out`` names ``attrs/model_file``)."""
    return any(
        isinstance(r.get("left_out"), dict) and f"attrs/{MODEL_FILE}" in r["left_out"]
        for r in _hdf5_records(db, merge)
    )


def no_model_file(db: Database, lacking: int, demos: int) -> str:
    """The warning for an export whose demos lack the ``model_file`` their source's had."""
    ingest = db.metadata().get("ingest")
    source = ingest.get("source") if isinstance(ingest, dict) else None
    source = source if isinstance(source, str) else "the source HDF5 file"
    which = "the exported demos have" if lacking == demos else f"{lacking} of the {demos} exported demos have"
    return (
        f"{which} no {MODEL_FILE} attribute (the simulator model, MJCF XML, which robomimic's playback_dataset.py "
        f"and dataset_states_to_obs.py need): the ingest of {db.path()} left it out (its metadata's "
        f"hdf5.left_out names attrs/{MODEL_FILE}). To have it, ingest {source} again with --keep-model-file "
        f"(keep_model_file=True) and export that file, or copy each demo's {MODEL_FILE} from the source file"
    )


def empty_filter_keys(db: Database, merge: dict[str, MergeInput] | None) -> list[str]:
    """The filter keys the HDF5 source of ``db`` held empty: its metadata's ``hdf5.filter_keys``
    counts them 0 (robomimic's split_train_val writes ``mask/valid`` so for fewer than 10
    demos). For a merge, a key that every input recording it counts 0."""
    counts: dict[str, int] = {}
    for record in _hdf5_records(db, merge):
        keys = record.get("filter_keys")
        for key, n in (keys if isinstance(keys, dict) else {}).items():
            if isinstance(n, int) and not isinstance(n, bool):
                counts[str(key)] = counts.get(str(key), 0) + n
    return [key for key, n in counts.items() if n == 0]


def source_data_attrs(db: Database) -> dict[str, Any]:
    """The ``data`` attrs of the HDF5 source the metadata records (``hdf5.data_attrs``), less
    those this export writes itself and names HDF5 cannot hold."""
    hdf5 = db.metadata().get("hdf5")
    kept = hdf5.get("data_attrs") if isinstance(hdf5, dict) else None
    if not isinstance(kept, dict):
        return {}
    return {
        str(k): v
        for k, v in kept.items()
        if str(k) not in _OWN_DATA_ATTRS and str(k) and "\x00" not in str(k)
    }


def lifted_data_attrs(db: Database) -> dict[str, str]:
    """The ``data`` attrs the HDF5 ingest lifted into the top-level metadata as text
    (LIBERO's ``bddl_file_name`` and ``macros_image_convention``; ``env_name`` where the
    source had no ``env_args``), to write back by their names."""
    meta = db.metadata()
    if not isinstance(meta.get("hdf5"), dict):
        return {}  # not ingested from HDF5: a metadata field of these names is not a data attr
    names = [*_LIFTED, *(["env_name"] if "env_args" not in meta else [])]
    return {n: meta[n] for n in names if isinstance(meta.get(n), str) and "\x00" not in meta[n]}


def array_paths(db: Database, merge: dict[str, MergeInput] | None) -> dict[str, str]:
    """Where extra arrays ingested from HDF5 came from (``obs/agentview_depth``,
    ``action_dict/abs_pos``, ``next_obs/KEY``), so they go back there: robomimic reads every
    observation key under ``obs/``, and ``action_dict/KEY`` by that path.

    A merge whose inputs' ``hdf5`` metadata differ keeps it with each input only: there the
    paths the inputs record are taken, but not a name that two inputs record differently.
    """
    meta = db.metadata()
    given = [meta] if merge is None or isinstance(meta.get("hdf5"), dict) else [
        m.metadata for m in merge.values() if m.metadata is not None
    ]  # fmt: skip
    out: dict[str, str] = {}
    clash: set[str] = set()
    for m in given:
        hdf5 = m.get("hdf5")
        recorded = hdf5.get("extra_arrays") if isinstance(hdf5, dict) else None
        for name, path in (recorded if isinstance(recorded, dict) else {}).items():
            if _group_path(path) and out.setdefault(str(name), path) != path:
                clash.add(str(name))
    return {name: path for name, path in out.items() if name not in clash}


def _group_path(path: Any) -> bool:
    """Whether ``path`` is ``GROUP/KEY``, ``GROUP`` one of `_GROUPS` and ``KEY`` one HDF5 name."""
    parts = path.split("/") if isinstance(path, str) else []
    return (
        len(parts) == 2
        and parts[0] in _GROUPS
        and bool(parts[1])
        and "\x00" not in parts[1]
        and parts[1] != "."
    )


def state_layout(db: Database) -> dict[str, tuple[np.dtype[Any] | None, tuple[int, ...]]]:
    """Each state key's dtype and per-frame shape in the HDF5 file it was ingested from
    (the dtype None where the ingest cast the states to a dtype the user chose)."""
    meta = db.metadata()
    recorded = (meta.get("hdf5") or {}).get("state_layout")
    options = (meta.get("ingest") or {}).get("options") or {}
    cast = isinstance(options, dict) and options.get("dtype") is not None  # --dtype: keep the chosen one
    out: dict[str, tuple[np.dtype[Any] | None, tuple[int, ...]]] = {}
    for name, spec in (recorded if isinstance(recorded, dict) else {}).items():
        try:
            out[str(name)] = (None if cast else np.dtype(spec["dtype"]), tuple(int(d) for d in spec["shape"]))
        except (KeyError, TypeError, ValueError):
            continue  # not a layout this version wrote: the component keeps the states' form
    return out


def source_dtypes(db: Database) -> dict[str, np.dtype[Any]]:
    """The dtypes rewards and dones had in the HDF5 file ``db`` was ingested from (LIBERO's
    uint8, robomimic's float64 and int64), where the ingest recorded them; rewards only when
    the ingest kept their values' dtype (no ``--dtype``)."""
    meta = db.metadata()
    recorded = (meta.get("hdf5") or {}).get("source_dtypes")
    options = (meta.get("ingest") or {}).get("options") or {}
    cast = isinstance(options, dict) and options.get("dtype") is not None
    out: dict[str, np.dtype[Any]] = {}
    for name, text in (recorded if isinstance(recorded, dict) else {}).items():
        if name not in ("rewards", "dones") or (cast and name == "rewards"):
            continue
        try:
            dtype = np.dtype(str(text))
        except TypeError:
            continue  # not a dtype this version wrote
        if dtype.kind in "biuf":
            out[name] = dtype
    return out
