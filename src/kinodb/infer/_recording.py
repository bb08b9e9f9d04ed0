"""A run's steps kept for its ``.kdb`` episode: fixed-size chunks, joined once after the loop.

The control thread copies each step's observations and action into one row of the
current chunk (one ``np.concatenate`` into a preallocated row) and its times into
another; a full chunk is followed by a new one, and nothing recorded is ever copied
while the loop runs, so no tick pays for the length of the history. `Recording.write`
joins the chunks once, after the loop, and appends the episode.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import numpy.typing as npt

from kinodb.infer._errors import InferError
from kinodb.infer._package import output_folder
from kinodb.infer.model import Model

STATE_INPUTS = (
    "joint_angles",
    "joint_angular_velocities",
)  # recorded as ``states``; the rest as extra arrays
CHUNK_ROWS = 4096  # steps per chunk: about 1.2 MB for a 20-joint policy


class Recording:
    """Rows of observations, actions and tick times, in chunks of `CHUNK_ROWS` steps."""

    def __init__(self, model: Model, rate_hz: float) -> None:
        sig = model.signature
        self._model = model
        self._names = list(sig.observation_names)
        views = model.inputs()
        # the input buffers as 1-D views, then the action: one row is their concatenation
        self._sources: list[Any] = [views[n].reshape(-1) for n in self._names] + [None]
        self._spans: dict[str, tuple[int, int]] = {}
        pos = 0
        for n in self._names:
            size = int(np.prod(sig.shape(n), dtype=np.int64))
            self._spans[n] = (pos, pos + size)
            pos += size
        self._width = pos + sig.num_joints
        self._rows: list[npt.NDArray[np.float32]] = []  # full chunks and the current one
        self._times: list[npt.NDArray[np.float64]] = []  # tick time, lateness, step latency (s)
        self._k = CHUNK_ROWS  # the next row in the current chunk: none yet
        self.steps = 0
        self.rate_hz = rate_hz

    def add(self, action: npt.NDArray[np.float32], t: float, lateness: float, latency: float) -> None:
        """Keep one step: the inputs as the step read them, its action, and its times (s)."""
        k = self._k
        if k == CHUNK_ROWS:
            self._new_chunk()
            k = 0
        sources = self._sources
        sources[-1] = action
        np.concatenate(sources, out=self._rows[-1][k])
        times = self._times[-1]
        times[k, 0] = t
        times[k, 1] = lateness
        times[k, 2] = latency
        self._k = k + 1
        self.steps += 1

    def _new_chunk(self) -> None:
        # np.empty: no copy and no fill; pages are touched row by row as steps arrive
        self._rows.append(np.empty((CHUNK_ROWS, self._width), np.float32))
        self._times.append(np.empty((CHUNK_ROWS, 3), np.float64))
        self._k = 0

    def _joined(self) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float64]]:
        """All rows and times, joined once (after the loop)."""
        if not self._rows:
            return np.empty((0, self._width), np.float32), np.empty((0, 3), np.float64)
        rows = np.concatenate(self._rows)[: self.steps]
        times = np.concatenate(self._times)[: self.steps]
        return rows, times

    def schema(self) -> dict[str, Any]:
        """The schema the episode is written with: joint names, and the state components."""
        sig = self._model.signature
        comps, names, pos = {}, [], 0
        for n in [n for n in STATE_INPUTS if n in self._names]:
            comps[n] = [pos, pos + sig.num_joints]
            names += [f"{n}.{j}" for j in sig.joint_names]
            pos += sig.num_joints
        schema: dict[str, Any] = {"actions": {"names": list(sig.joint_names)}}
        if comps:
            schema["states"] = {"components": comps, "names": names}
        return schema

    def check_target(self, path: str | os.PathLike[str]) -> None:
        """Refuse, before the run, a ``record_to`` that cannot take this run's episode: a
        folder, a missing or read-only folder, or a file whose episodes have other dims,
        joint names, state components or extra arrays."""
        where = os.fspath(path)
        folder = output_folder(where, "record_to ", "a .kdb file")
        if not os.access(folder, os.W_OK):
            raise InferError(f"record_to {where}: cannot write in {folder} (permission denied)")
        if not os.path.exists(where):
            return
        from kinodb.kdb.reader import open_database  # deferred: recording is optional

        with open_database(where) as db:
            version, stored, table = db.version(), db.schema(), db.episodes()
        if version != "1.0":
            raise InferError(
                f"record_to {where} is a format {version} file and cannot be appended to; record to a new "
                f"file, or convert it first: kino upgrade {where} NEW.kdb"
            )
        sig = self._model.signature
        states = sum(n in self._names for n in STATE_INPUTS) * sig.num_joints
        for part, column, dim in (("actions", "action_dim", sig.num_joints), ("states", "state_dim", states)):
            dims = sorted(set(table[column].tolist()))
            if dims and dims != [dim]:
                raise InferError(
                    f"record_to {where} holds episodes whose {part} have dim {', '.join(map(str, dims))}, "
                    f"not this policy's {dim}: record this policy to a new file"
                )
        for part, spec in self.schema().items():
            for key, value in spec.items():
                have = stored.get(part, {}).get(key)
                if have is not None and have != value:
                    raise InferError(
                        f"record_to {where} holds episodes whose {part} {key} are {have!r}, not this "
                        f"policy's {value!r}: record this policy to a new file"
                    )
        arrays = {n: list(sig.shape(n)) for n in self._names if n not in STATE_INPUTS}
        arrays.update(step_latency_us=[], tick_lateness_us=[])
        for name, shape in arrays.items():
            have = stored.get("arrays", {}).get(name, {}).get("shape")
            if have is not None and list(have) != shape:
                raise InferError(
                    f"record_to {where} holds episodes whose {name} array has shape {tuple(have)} per step, "
                    f"not this policy's {tuple(shape)}: record this policy to a new file"
                )

    def write(
        self, path: str | os.PathLike[str], stats: dict[str, Any], *, embodiment: str, task: str,
    ) -> int:  # fmt: skip
        """Append the recorded steps as one episode; return its index in the file."""
        from kinodb.kdb.writer import Writer  # deferred: recording is optional

        rows, times = self._joined()
        T = len(rows)
        sig = self._model.signature
        obs = {n: rows[:, a:b].reshape(T, *sig.shape(n)) for n, (a, b) in self._spans.items()}
        state_parts = [n for n in STATE_INPUTS if n in self._names]
        states = np.concatenate([obs[n] for n in state_parts], axis=1) if state_parts else None
        extra_arrays = {n: np.ascontiguousarray(obs[n]) for n in self._names if n not in state_parts}
        extra_arrays["step_latency_us"] = (times[:, 2] * 1e6).astype(np.float32)
        extra_arrays["tick_lateness_us"] = (times[:, 1] * 1e6).astype(np.float32)
        extra = {
            "source": "kinodb.infer", "policy": os.path.basename(self._model.path),
            "kinfer_generation": sig.generation, "rate_hz": self.rate_hz, "overruns": stats["overruns"],
            "skipped_ticks": stats["skipped_ticks"], "dropped_log_lines": stats["dropped_log_lines"],
            "command_names": list(sig.command_names),
        }  # fmt: skip
        with Writer(path, mode="a", image_codec="raw", schema=self.schema()) as w:
            return w.add_episode(
                actions=np.ascontiguousarray(rows[:, self._width - sig.num_joints :]), states=states,
                timestamps=times[:, 0].copy(), extra_arrays=extra_arrays,
                embodiment=embodiment, task=task, fps=self.rate_hz, extra=extra,
            )  # fmt: skip
