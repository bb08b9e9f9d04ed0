"""Dataset-level facts of a robomimic/LIBERO HDF5 file, from its ``data`` group's attributes.

``env_args`` (or a raw robosuite file's ``env`` and ``env_info``) gives the environment,
its robots (the embodiment) and its control frequency (the fps); LIBERO's ``problem_info``
gives the language instruction and marks the file as LIBERO's. Without a ``control_freq``,
the fps is 20 for LIBERO files and for robosuite envs (``env_args`` ``type`` 1: robosuite's
default control frequency, which the env then runs at), else kinodb's default of 10. What
the attributes say is kept in the metadata; a JSON attribute that does not parse is kept
as text, with a warning. So is one that parses but holds NaN or infinity
(Python's ``json.dumps`` writes them; robosuite's ``env_args`` may hold them), which the
metadata's JSON cannot store as numbers: the metadata keeps the text the file holds,
exactly; the environment, robots and fps are still read from its values; ``Facts.as_text``
names it with the paths of those values, and a warning says so. The other attributes of
``data`` (LIBERO's ``bddl_file_content`` and ``num_demos``, robomimic's ``total``, anything
else) are kept as they are, by name, in ``Facts.kept`` (`attr_value` says how), and those
that cannot be are named in ``Facts.left_out`` with the reason.

`attr_problem` and `attr_value` also decide which attributes of each demo are kept;
`recorded_data_attrs` and `exported_attrs` read what a kinodb export wrote of them.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from kinodb._optional import require
from kinodb.ingest._base import SourceOptions

# The HDF5 source's logger: its warnings are filtered by that name.
log = logging.getLogger("kinodb.ingest.hdf5")

LIBERO_FPS = 20.0
DEFAULT_FPS = 10.0
ROBOSUITE_FPS = 20.0
"""robosuite's default ``control_freq`` (``robosuite.environments.base``, 1.4 and 1.5): the rate of
a robosuite env whose ``env_args`` give none."""
ROBOSUITE_TYPE = 1  # robomimic's EnvType.ROBOSUITE_TYPE, env_args' "type"
ROBOSUITE_FPS_FROM = "robosuite default control_freq (20)"
ATTR_VALUES = 1024
"""The most values an array attribute may hold to be kept (in the metadata or an extra field)."""
# data attributes kinodb's own export writes as records of its source (`_hdf5_kinodb` reads them).
_KINODB_ATTRS = ("kinodb_dataset", "kinodb_export")
_WARNED_AS_TEXT: set[str] = set()  # files whose JSON attributes kept as text were warned about


@dataclass(frozen=True, slots=True)
class Facts:
    """Dataset-level facts from the ``data`` group's attributes."""

    libero: bool
    fps: float
    fps_from: str
    embodiment: str | None
    language: str | None
    metadata: dict[str, Any]
    kept: dict[str, Any]  # the other data attributes, by name, as `attr_value` gives them
    left_out: dict[str, str]  # "data/attrs/NAME" -> why that attribute is not kept
    as_text: dict[str, str]  # "data/attrs/NAME" -> why that JSON attribute is kept as its text


def text(value: Any) -> str:
    """An attribute or string-dataset entry as str (h5py gives bytes or str)."""
    if isinstance(value, (bytes, np.bytes_)):
        return bytes(value).decode("utf-8", errors="replace")
    if isinstance(value, np.ndarray) and value.size == 1:
        return text(value.reshape(-1)[0])
    return str(value)


def _json_attr(
    attrs: Any, name: str, path: str, metadata: dict[str, Any], texts: dict[str, str]
) -> dict[str, Any] | None:
    """Parse a JSON attribute (its text goes in ``texts``); a malformed one is kept as text in
    the metadata, with a warning."""
    if name not in attrs:
        return None
    raw = texts[name] = text(attrs[name])
    try:
        value = json.loads(raw)
    except ValueError as exc:
        log.warning("%s: data attribute %s is not JSON (%s); kept as text in the metadata", path, name, exc)
        metadata[name] = raw
        return None
    if not isinstance(value, dict):
        metadata[name] = value
        return None
    return value


def read_facts(path: str, attrs: Any, options: SourceOptions) -> Facts:
    """Environment, robots, language and fps from the ``data`` group's attributes; the
    attributes that say none of these are kept as they are (`kept_attrs`)."""
    metadata: dict[str, Any] = {}
    texts: dict[str, str] = {}  # JSON attribute -> the text the file holds
    read = {"env_args", "problem_info", *_KINODB_ATTRS}  # the attributes the metadata records
    env_args = _json_attr(attrs, "env_args", path, metadata, texts)
    if env_args is None and "env" in attrs:
        # A raw robosuite demo.hdf5: robomimic's converter builds env_args from these.
        env_info = _json_attr(attrs, "env_info", path, metadata, texts) or {}
        env_args = {"env_name": text(attrs["env"]), "type": 1, "env_kwargs": env_info}
        read |= {"env", "env_info"}
    problem = _json_attr(attrs, "problem_info", path, metadata, texts)
    libero = problem is not None or "bddl_file_name" in attrs
    kwargs: dict[str, Any] = {}
    if env_args is not None:
        metadata["env_args"] = env_args
        raw_kwargs = env_args.get("env_kwargs")
        kwargs = raw_kwargs if isinstance(raw_kwargs, dict) else {}
        name = env_args.get("env_name")
        if name is not None:
            metadata["env_name"] = str(name)
        env_type = env_args.get("type", env_args.get("env_type"))  # robomimic writes "type"
        if env_type is not None and not non_finite(env_type):  # else env_args' text keeps it
            metadata["env_type"] = env_type
    if "env_name" not in metadata and "env_name" in attrs:
        metadata["env_name"] = text(attrs["env_name"])
        read.add("env_name")
    language = None
    if problem is not None:
        metadata["problem_info"] = problem
        raw = problem.get("language_instruction")
        if raw is not None:
            language = (" ".join(map(str, raw)) if isinstance(raw, list) else str(raw)).strip().strip('"')
    for name in ("bddl_file_name", "macros_image_convention"):
        if name in attrs:
            metadata[name] = text(attrs[name])
            read.add(name)
    fps, fps_from = _fps(options, env_args or {}, kwargs, libero)
    kept, left_out = kept_attrs(attrs, read)
    robots = _robots(kwargs.get("robots"))
    as_text = _keep_as_text(path, metadata, texts)
    return Facts(libero, fps, fps_from, robots, language or None, metadata, kept, left_out, as_text)


def _keep_as_text(path: str, metadata: dict[str, Any], texts: dict[str, str]) -> dict[str, str]:
    """Replace each metadata value holding NaN or infinity (`non_finite`) by its JSON text:
    the attribute's as the file holds it, or (``env_args`` built from a raw robosuite file's
    ``env_info``) Python's ``json.dumps``, which spells them ``NaN``, ``Infinity``. Returns
    ``data/attrs/NAME`` -> why, and warns once per file."""
    as_text: dict[str, str] = {}
    for name, value in list(metadata.items()):
        found = non_finite(value)
        if not found:
            continue
        own = name in texts
        metadata[name] = texts[name] if own else json.dumps(value)
        at = ", ".join(f"{where or 'the value itself'} ({what})" for where, what in found[:3])
        more = f" and {len(found) - 3} more" if len(found) > 3 else ""
        source = "" if own else " (built from data/attrs/env and env_info)"
        as_text[f"data/attrs/{name}"] = (
            f"holds NaN or infinity at {at}{more}{source}, which the metadata's JSON cannot store as numbers: "
            f"the metadata's {name} is the text {'the file holds' if own else 'of its JSON'}, exactly"
        )
    if as_text and path not in _WARNED_AS_TEXT:
        _WARNED_AS_TEXT.add(path)  # verify and every worker read the facts again
        for where, why in as_text.items():
            log.warning("%s: %s %s", path, where, why)
    return as_text


def non_finite(value: Any, where: str = "") -> list[tuple[str, str]]:
    """Where a JSON value holds NaN or infinity: ``(path, "NaN")`` pairs, the path written
    ``env_kwargs.reward_scale``, ``robots[1]`` ("" for the value itself)."""
    if isinstance(value, float):
        return [] if math.isfinite(value) else [(where, json.dumps(value))]  # NaN, Infinity, -Infinity
    if isinstance(value, dict):
        return [hit for k, v in value.items() for hit in non_finite(v, f"{where}.{k}" if where else str(k))]
    if isinstance(value, list):
        return [hit for i, v in enumerate(value) for hit in non_finite(v, f"{where}[{i}]")]
    return []


def kept_attrs(attrs: Any, read: set[str]) -> tuple[dict[str, Any], dict[str, str]]:
    """The ``data`` attributes other than those ``read`` names, by name, as `attr_value`
    gives them; and ``data/attrs/NAME`` -> why, for those that cannot be kept."""
    kept: dict[str, Any] = {}
    left_out: dict[str, str] = {}
    for name in sorted(set(attrs.keys()) - read):
        aid = attrs.get_id(name)
        why = attr_problem(aid.dtype, aid.shape)
        if not why:
            value, why = attr_value(attrs[name])
            if not why:
                kept[name] = value
        if why:
            left_out[f"data/attrs/{name}"] = f"{why}: not stored; the source file keeps it"
    return kept, left_out


def attr_problem(dtype: np.dtype[Any], shape: tuple[int, ...] | None) -> str:
    """Why an attribute of ``dtype`` and ``shape`` cannot be kept ("" when it can), from
    h5py's metadata alone: no value is read.

    Kept are text, numbers and bools, one value or an array of at most `ATTR_VALUES`
    (`attr_value` then refuses floats that are not finite).
    """
    if shape is None:
        return "an empty attribute (HDF5 null dataspace), which holds no value"
    if dtype.kind not in "biufS" and require("h5py", extra="hdf5").check_string_dtype(dtype) is None:
        return f"an attribute of dtype {dtype}, which is neither text, numbers nor bools"
    size = math.prod(shape)
    if size > ATTR_VALUES:
        return f"an array of {size} values {list(shape)}, more than the {ATTR_VALUES} kept"
    if len(shape) > 1 and size == 0:
        return f"an empty array of shape {list(shape)}"
    return ""


def attr_value(value: Any) -> tuple[Any, str]:
    """An attribute's value as JSON can hold it, and "", or None and why it cannot be.

    Text as str (bytes decoded as UTF-8), numbers and bools as Python's, arrays as
    (nested) lists of those: the values exactly, not their HDF5 dtype.
    """
    if isinstance(value, (str, bytes, np.bytes_)):
        return text(value), ""
    arr = np.asarray(value)
    if arr.dtype.kind in "SUO":
        return _texts(arr.tolist()), ""
    if arr.dtype.kind not in "biuf":
        return None, f"an attribute of type {type(value).__name__}, which is neither text, numbers nor bools"
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        return None, "holds NaN or infinity, which JSON cannot store"
    return (arr.item() if arr.ndim == 0 else arr.tolist()), ""


def _texts(value: Any) -> Any:
    """Every entry of a (nested) list of bytes and str as str."""
    return [_texts(v) for v in value] if isinstance(value, list) else text(value)


def _fps(
    options: SourceOptions, env_args: dict[str, Any], kwargs: dict[str, Any], libero: bool
) -> tuple[float, str]:
    if options.fps:
        return float(options.fps), "option"
    for where, source in (("env_args.env_kwargs.control_freq", kwargs), ("env_args.control_freq", env_args)):
        value = source.get("control_freq")
        if isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value < math.inf:
            return float(value), where
    if libero:
        return LIBERO_FPS, "default (LIBERO)"
    env_type = env_args.get("type", env_args.get("env_type"))
    if type(env_type) is int and env_type == ROBOSUITE_TYPE and "control_freq" not in kwargs:
        # robosuite builds the env with its default control_freq when env_kwargs names none,
        # as robomimic's convert_robosuite.py leaves them.
        return ROBOSUITE_FPS, ROBOSUITE_FPS_FROM
    return DEFAULT_FPS, "default"


def _robots(robots: Any) -> str | None:
    """``"Panda"`` from ``"Panda"`` or ``["Panda"]``; several robots joined with ``+``."""
    if isinstance(robots, str) and robots:
        return robots
    if isinstance(robots, list) and robots and all(isinstance(r, str) and r for r in robots):
        return "+".join(robots)
    return None


def recorded_data_attrs(dataset: dict[str, Any]) -> dict[str, Any]:
    """The ``data`` attrs of its HDF5 source that a kinodb export's dataset block records."""
    metadata = dataset.get("metadata")
    hdf5 = metadata.get("hdf5") if isinstance(metadata, dict) else None
    kept = hdf5.get("data_attrs") if isinstance(hdf5, dict) else None
    return kept if isinstance(kept, dict) else {}


def exported_attrs(record: dict[str, Any]) -> frozenset[str]:
    """The demo attributes a kinodb export wrote from its record of the episode (``ep_meta``):
    one per field, under its own name, ``extra.NAME``, or for a source attribute kept as
    ``attrs.NAME`` under ``NAME``."""
    names = {"num_samples", "ep_meta", "kinodb_ep_meta", "task"}
    for key in record:
        bare = key.removeprefix("extra.")
        names |= {key, bare, f"extra.{bare}", bare.removeprefix("attrs.")}
    return frozenset(names)
