"""Read kinfer NDJSON step logs (``KINFER_LOG_PATH``) as an ingest `Source`.

What goes where:

- A path is one ``.ndjson`` file or a folder of them (sorted by name). kinfer opens its
  log in append mode, so a file may hold several runs: a run starts where ``step_id``
  goes back, and each run is one episode (keys ``NAME.ndjson`` or ``NAME.ndjson#K``).
- ``actions``: the ``output`` field.
- A null element inside an array (kinfer writes NaN and Inf as null) becomes NaN.
- ``states``: ``joint_angles`` then the joint velocities (kinfer's ``joint_vels``), as
  the schema components ``joint_angles`` and ``joint_angular_velocities``; the layout
  `kinodb.infer.Runner` records, so replay finds the inputs either way.
- Extra arrays, by input name: ``projected_gravity`` (``projected_g``),
  ``accelerometer`` (``accel``), ``gyroscope`` (``gyro``), ``command``, and
  ``quaternion``, ``initial_heading``, ``time``, ``step_latency_us`` when logged; and
  ``step_id`` (int64: gaps show dropped lines). Fields null throughout are left out.
- ``timestamps``: ``t_us`` in seconds since the run's first line (kinfer's wall clock);
  the first ``t_us`` is the extra field ``t0_us``.
- ``fps``: the option, else the median step interval rounded to 0.1 Hz.

The log names no joints, so the schema names states and actions by index (``joint_0``, ...);
replay uses such columns by position unless they are the policy's own joint names.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any, ClassVar

import numpy as np

from kinodb.errors import ConversionError
from kinodb.ingest._base import SOURCE_PARTS, SourceInfo, SourceOptions

log = logging.getLogger(__name__)

STATE_PARTS = ("joint_angles", "joint_angular_velocities")
EXTRA_FIELDS = (
    "projected_gravity", "accelerometer", "gyroscope", "command", "quaternion", "initial_heading", "time",
    "step_latency_us",
)  # fmt: skip
DEFAULT_FPS = 50.0  # kinfer-kbot's default rate, for logs of a single line


class KinferNdjsonSource:
    """kinfer NDJSON logs: one episode per run.

    Example:
        >>> from kinodb.ingest import ingest
        >>> ingest("~/robot_logs/2025-06-22_10-00-00.ndjson", "rollouts.kdb", format="kinfer-ndjson")

    Raises:
        ConversionError: a file is not a kinfer log; the message names the file and line.
    """

    format: ClassVar[str] = "kinfer-ndjson"

    def __init__(self, path: str | os.PathLike[str], options: SourceOptions | None = None) -> None:
        self._path = os.fspath(path)
        self._options = options or SourceOptions()
        if not os.path.exists(self._path):
            raise FileNotFoundError(2, "No such file or directory", self._path)
        if os.path.isdir(self._path):
            self._files = sorted(
                os.path.join(self._path, n) for n in os.listdir(self._path) if n.endswith(_SUFFIXES)
            )
            if not self._files:
                raise ConversionError(f"{self._path}: the folder holds no .ndjson (or .jsonl) files")
        else:
            self._files = [self._path]
        self._runs: dict[str, dict[str, np.ndarray]] | None = None

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self._path, self._options))

    @classmethod
    def detect(cls, path: str) -> bool:
        """Whether ``path`` is a log file (`_is_log`), or a folder whose files all are."""
        try:
            if os.path.isfile(path):
                return _is_log(path)
            if os.path.isdir(path):
                names = [n for n in os.listdir(path) if not n.startswith(".")]
                files = [os.path.join(path, n) for n in names if os.path.isfile(os.path.join(path, n))]
                return bool(files) and len(files) == len(names) and all(_is_log(f) for f in files)
        except OSError:
            return False
        return False

    def _load(self) -> dict[str, dict[str, np.ndarray]]:
        if self._runs is None:
            from kinodb.infer._errors import InferError  # deferred: reading logs needs no onnxruntime
            from kinodb.infer.telemetry import read_log

            runs: dict[str, dict[str, np.ndarray]] = {}
            for f in self._files:
                try:
                    parts = read_log(f)
                except InferError as exc:
                    raise ConversionError(str(exc)) from None
                name = os.path.basename(f)
                for k, cols in enumerate(parts):
                    if "output" not in cols:  # read_log refuses such logs; never ingest a run without actions
                        raise ConversionError(f"{f}: run {k} has no 'output' (the actions)")
                    runs[name if len(parts) == 1 else f"{name}#{k}"] = cols
            self._runs = runs
        return self._runs

    def episodes(self) -> list[str]:
        """One key per run, files in name order."""
        return list(self._load())

    def info(self) -> SourceInfo:
        """Schema from the first run: state components and index names."""
        runs = self._load()
        first = next(iter(runs.values()))
        joints = first["output"].shape[1] if first["output"].ndim == 2 else 1
        comps, pos = {}, 0
        for part in STATE_PARTS:
            if part in first:
                comps[part] = [pos, pos + first[part].shape[1]]
                pos += first[part].shape[1]
        schema: dict[str, Any] = {"actions": {"names": [f"joint_{i}" for i in range(joints)]}}
        if comps:
            schema["states"] = {"components": comps}
        return SourceInfo(source_format="kinfer-ndjson", schema=schema,
                          metadata={"kinfer_log": {"files": [os.path.basename(f) for f in self._files]}},
                          fps=self._options.fps)  # fmt: skip

    def read(self, key: str) -> dict[str, Any]:
        """`Writer.add_episode` arguments for one run."""
        runs = self._load()
        if key not in runs:
            raise ConversionError(f"{self._path}: no run {key!r}; runs are {list(runs)}")
        cols = runs[key]
        actions = cols["output"].reshape(len(cols["output"]), -1)
        parts = [cols[p].reshape(len(actions), -1) for p in STATE_PARTS if p in cols]
        args: dict[str, Any] = {"actions": actions}
        if parts:
            args["states"] = np.concatenate(parts, axis=1)
            args[SOURCE_PARTS] = {"states": {p: cols[p] for p in STATE_PARTS if p in cols}}  # for verify
        extra_arrays = {n: cols[n] for n in EXTRA_FIELDS if n in cols}
        extra_arrays["step_id"] = cols["step_id"]
        args["extra_arrays"] = extra_arrays
        extra: dict[str, Any] = {"kinfer_log": key}
        fps = self._options.fps
        if "t_us" in cols:
            t_us = cols["t_us"]
            args["timestamps"] = (t_us - t_us[0]).astype(np.float64) / 1e6
            extra["t0_us"] = int(t_us[0])
            if fps is None and len(t_us) > 1:
                dt = float(np.median(np.diff(t_us)))
                fps = round(1e6 / dt, 1) if dt > 0 else None
        args["fps"] = fps or DEFAULT_FPS
        args["extra"] = extra
        return args

    def close(self) -> None:
        """Drop the parsed runs."""
        self._runs = None


_SUFFIXES = (".ndjson", ".jsonl")  # what the runtime writes a log as (`kinodb.infer.telemetry.LOG_SUFFIXES`)


def _is_log(path: str) -> bool:
    """Whether ``path`` is a log: named ``.ndjson``, or ``.jsonl`` (a common name for any JSON
    lines) with a log line first."""
    if path.endswith(".ndjson"):
        return True
    if not path.endswith(_SUFFIXES):
        return False
    with open(path, "rb") as fh:
        first = fh.readline(1 << 20)
    try:
        line = json.loads(first)
    except ValueError:
        return False
    return isinstance(line, dict) and "step_id" in line and "t_us" in line
