"""A run's steps kept for its ``.kdb`` episode: fixed-size chunks, joined once after the loop.

The control thread copies each step's observations and action into one row of the
current chunk (one ``np.concatenate`` into a preallocated row) and its times into
another; a full chunk is followed by a new one, and nothing recorded is ever copied
while the loop runs, so no tick pays for the length of the history. `Recording.write`
joins the chunks once, after the loop, and appends the episode: it waits for another
writer of the file (two Runners recording to one file), and when the append fails all
the same, the steps are kept in a spill ``.npz`` beside the file (`append_spill` appends
it later), so that a rollout the robot executed is never dropped.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import logging
import os
import random
import secrets
import tempfile
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt

from kinodb.errors import WriterError
from kinodb.infer._errors import InferError
from kinodb.infer._package import output_folder
from kinodb.infer.model import Model

STATE_INPUTS = (
    "joint_angles",
    "joint_angular_velocities",
)  # recorded as ``states``; the rest as extra arrays
CHUNK_ROWS = 4096  # steps per chunk: about 1.2 MB for a 20-joint policy
APPEND_WAIT_S = 60.0  # how long a recording waits for another writer of its file
RETRY_FIRST_S = 0.02  # the first wait between tries; doubled up to RETRY_MAX_S
RETRY_MAX_S = 1.0

log = logging.getLogger(__name__)


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
        try:  # a file made and removed: os.access says yes to root on a folder that takes no file (/sys)
            fd, probe = tempfile.mkstemp(dir=folder, prefix=".kinodb-probe-")
            os.close(fd)
            os.unlink(probe)
        except OSError as exc:
            raise InferError(
                f"record_to {where}: cannot write in {folder} ({exc.strerror or exc}); record to a .kdb file in a "
                "folder you can write"
            ) from None
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

    def episode(self, stats: dict[str, Any], *, embodiment: str, task: str) -> dict[str, Any]:
        """The recorded steps as `Writer.add_episode`'s arguments (the chunks joined once)."""
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
        return {
            "actions": np.ascontiguousarray(rows[:, self._width - sig.num_joints :]), "states": states,
            "timestamps": times[:, 0].copy(), "extra_arrays": extra_arrays,
            "embodiment": embodiment, "task": task, "fps": self.rate_hz, "extra": extra,
        }  # fmt: skip

    def write(
        self, path: str | os.PathLike[str], stats: dict[str, Any], *, embodiment: str, task: str,
        give_up: Callable[[], bool] | None = None,
    ) -> int:  # fmt: skip
        """Append the recorded steps as one episode; return its index in the file.

        Waits for another writer of the file (`append_episode`). When the append fails, the
        steps are kept in a spill file beside ``path`` (`spill`) and the error says where.
        """
        episode = self.episode(stats, embodiment=embodiment, task=task)
        schema = self.schema()
        try:
            return append_episode(path, schema, episode, give_up=give_up)
        except BaseException as exc:
            keep_steps(path, schema, episode, exc)
            raise


def append_episode(
    path: str | os.PathLike[str], schema: dict[str, Any], episode: dict[str, Any], *,
    wait_s: float | None = None, give_up: Callable[[], bool] | None = None,
) -> int:  # fmt: skip
    """Append ``episode`` (`Writer.add_episode`'s arguments) to ``path``, created if missing.

    Another writer of the file (a second Runner recording to it, ``kino`` appending) is
    waited for, retrying with backoff for up to ``wait_s`` (default `APPEND_WAIT_S`); a
    file another writer created meanwhile is appended to. ``give_up`` is asked between
    tries and ends the wait early (a Ctrl-C, a SIGTERM).

    Raises:
        InferError: another writer held the file for the whole wait.
        WriterError, FormatError, OSError: the append failed otherwise.
    """
    from kinodb.kdb.writer import Writer  # deferred: recording is optional

    where = os.fspath(path)
    wait = APPEND_WAIT_S if wait_s is None else float(wait_s)
    start = time.monotonic()
    delay = RETRY_FIRST_S
    while True:
        # A new file is created in mode "x": when another writer creates it first, the
        # episode is appended on the next try, and its index is its index there (in mode
        # "a", `close` would append it after the other writer's, its index returned too soon).
        mode = "a" if os.path.lexists(where) else "x"
        try:
            with Writer(where, mode=mode, image_codec="raw", schema=schema) as w:
                return w.add_episode(**episode)
        except (WriterError, FileExistsError) as exc:
            if not _busy(exc):
                raise
            waited = time.monotonic() - start
            cut = give_up is not None and give_up()
            if cut or waited + delay > wait:
                why = "the wait was cut short (a Ctrl-C or a SIGTERM)" if cut else "the longest it waits"
                raise InferError(
                    f"record_to {where}: another writer kept the file busy for {waited:.1f} s ({why}); "
                    "the episode was not appended"
                ) from exc
            time.sleep(
                delay * random.uniform(0.5, 1.0)
            )  # jitter, so that waiting writers do not retry in step
            delay = min(2 * delay, RETRY_MAX_S)


def _busy(exc: BaseException) -> bool:
    """Whether ``exc`` is another writer's doing: its lock held, or the file created meanwhile."""
    return isinstance(exc, FileExistsError) or isinstance(exc.__cause__, BlockingIOError)


def keep_steps(
    path: str | os.PathLike[str], schema: dict[str, Any], episode: dict[str, Any], exc: BaseException
) -> str | None:
    """After a failed append, write the episode to a spill file beside ``path`` (else in the
    temporary folder, which may lie on another disk) and say where in a note on ``exc``, or
    that it could not be written either; its path, or None."""
    steps = len(episode["actions"])
    failed: list[str] = []
    for folder in (None, tempfile.gettempdir()):
        try:
            spilled = spill(path, schema, episode, folder=folder)
        except BaseException as spill_exc:  # a full disk fails this too: keep the first error
            failed.append(f"{folder or 'beside it'}: {spill_exc}")
            if not isinstance(spill_exc, OSError):
                break
            continue
        _note(
            exc,
            f"the {steps} recorded steps were kept in {spilled}: append them with "
            f"kinodb.infer.append_spill({spilled!r}, {os.fspath(path)!r})",
        )
        log.warning(
            "%s: the recording was not appended; its %d steps are kept in %s", os.fspath(path), steps, spilled
        )
        return spilled
    _note(
        exc,
        f"the {steps} recorded steps could not be kept in a spill file either ({'; '.join(failed)}): they are lost",
    )
    return None


def spill(
    path: str | os.PathLike[str],
    schema: dict[str, Any],
    episode: dict[str, Any],
    *,
    folder: str | None = None,
) -> str:
    """Write ``episode`` to a new ``.npz`` beside ``path`` (or in ``folder``); return its path.

    The file holds ``actions``, ``states`` (when recorded), ``timestamps``, one
    ``array.<name>`` per extra array and ``episode.json`` (the schema and the episode's
    metadata); `append_spill` appends it. A file that could not be written whole is removed.
    """
    where = os.fspath(path)
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    out = f"{where}.unsaved-{stamp}-{os.getpid()}-{secrets.token_hex(3)}.npz"
    if folder is not None:
        out = os.path.join(folder, os.path.basename(out))
    arrays: dict[str, Any] = {"actions": episode["actions"], "timestamps": episode["timestamps"]}
    if episode.get("states") is not None:
        arrays["states"] = episode["states"]
    for name, value in episode.get("extra_arrays", {}).items():
        arrays[f"array.{name}"] = value
    meta = {k: episode[k] for k in ("embodiment", "task", "fps", "extra") if k in episode}
    arrays["episode.json"] = np.array(json.dumps({"schema": schema, **meta}))
    try:
        with open(out, "xb") as fh:
            np.savez(fh, **arrays)
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(out)
        raise
    return out


def append_spill(spill_path: str | os.PathLike[str], record_to: str | os.PathLike[str]) -> int:
    """Append the steps a run kept in a spill file (its recording could not be written) to
    ``record_to`` as one episode; return its index. The spill file is left in place.

    Example:
        >>> append_spill("rollouts.kdb.unsaved-20250101-120000-4242-a1b2c3.npz", "rollouts.kdb")

    Raises:
        InferError: ``spill_path`` is no spill file.
    """
    where = os.fspath(spill_path)
    try:
        with np.load(where, allow_pickle=False) as npz:
            data = {k: npz[k] for k in npz.files}
        meta = json.loads(str(data.pop("episode.json")))
    except (OSError, ValueError, KeyError) as exc:
        raise InferError(f"{where}: not a recording spill file ({exc})") from None
    episode: dict[str, Any] = {
        "actions": data.pop("actions"), "timestamps": data.pop("timestamps"), "states": data.pop("states", None),
        "extra_arrays": {k.removeprefix("array."): v for k, v in data.items() if k.startswith("array.")},
        **{k: meta[k] for k in ("embodiment", "task", "fps", "extra") if k in meta},
    }  # fmt: skip
    return append_episode(record_to, meta["schema"], episode)


def _note(exc: BaseException, note: str) -> None:
    add = getattr(exc, "add_note", None)  # Python 3.11+
    if add is not None:
        add(note)
