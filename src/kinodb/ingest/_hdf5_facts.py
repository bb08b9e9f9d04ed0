"""Dataset-level facts of a robomimic/LIBERO HDF5 file, from its ``data`` group's attributes.

``env_args`` (or a raw robosuite file's ``env`` and ``env_info``) gives the environment,
its robots (the embodiment) and its control frequency (the fps); LIBERO's ``problem_info``
gives the language instruction and marks the file as LIBERO's (20 fps by default, 10
otherwise). What the attributes say is kept in the metadata; a JSON attribute that does not
parse is kept as text, with a warning.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from kinodb.ingest._base import SourceOptions

# The HDF5 source's logger: its warnings are filtered by that name.
log = logging.getLogger("kinodb.ingest.hdf5")

LIBERO_FPS = 20.0
DEFAULT_FPS = 10.0


@dataclass(frozen=True, slots=True)
class Facts:
    """Dataset-level facts from the ``data`` group's attributes."""

    libero: bool
    fps: float
    fps_from: str
    embodiment: str | None
    language: str | None
    metadata: dict[str, Any]


def text(value: Any) -> str:
    """An attribute or string-dataset entry as str (h5py gives bytes or str)."""
    if isinstance(value, (bytes, np.bytes_)):
        return bytes(value).decode("utf-8", errors="replace")
    if isinstance(value, np.ndarray) and value.size == 1:
        return text(value.reshape(-1)[0])
    return str(value)


def _json_attr(attrs: Any, name: str, path: str, metadata: dict[str, Any]) -> dict[str, Any] | None:
    """Parse a JSON attribute; a malformed one is kept as text in the metadata, with a warning."""
    if name not in attrs:
        return None
    raw = text(attrs[name])
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
    """Environment, robots, language and fps from the ``data`` group's attributes."""
    metadata: dict[str, Any] = {}
    env_args = _json_attr(attrs, "env_args", path, metadata)
    if env_args is None and "env" in attrs:
        # A raw robosuite demo.hdf5: robomimic's converter builds env_args from these.
        env_info = _json_attr(attrs, "env_info", path, metadata) or {}
        env_args = {"env_name": text(attrs["env"]), "type": 1, "env_kwargs": env_info}
    problem = _json_attr(attrs, "problem_info", path, metadata)
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
        if env_type is not None:
            metadata["env_type"] = env_type
    if "env_name" not in metadata and "env_name" in attrs:
        metadata["env_name"] = text(attrs["env_name"])
    language = None
    if problem is not None:
        metadata["problem_info"] = problem
        raw = problem.get("language_instruction")
        if raw is not None:
            language = (" ".join(map(str, raw)) if isinstance(raw, list) else str(raw)).strip().strip('"')
    for name in ("bddl_file_name", "macros_image_convention"):
        if name in attrs:
            metadata[name] = text(attrs[name])
    fps, fps_from = _fps(options, env_args or {}, kwargs, libero)
    return Facts(libero, fps, fps_from, _robots(kwargs.get("robots")), language or None, metadata)


def _fps(
    options: SourceOptions, env_args: dict[str, Any], kwargs: dict[str, Any], libero: bool
) -> tuple[float, str]:
    if options.fps:
        return float(options.fps), "option"
    for where, source in (("env_args.env_kwargs.control_freq", kwargs), ("env_args.control_freq", env_args)):
        value = source.get("control_freq")
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
            return float(value), where
    return (LIBERO_FPS, "default (LIBERO)") if libero else (DEFAULT_FPS, "default")


def _robots(robots: Any) -> str | None:
    """``"Panda"`` from ``"Panda"`` or ``["Panda"]``; several robots joined with ``+``."""
    if isinstance(robots, str) and robots:
        return robots
    if isinstance(robots, list) and robots and all(isinstance(r, str) and r for r in robots):
        return "+".join(robots)
    return None
