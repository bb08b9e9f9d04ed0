"""Normalisation statistics: streaming per-feature moments, extremes and exact percentiles.

`compute_stats` reads each floating-point array of a dataset in bounded chunks and returns,
per feature (one entry of the flattened per-frame shape), the mean, the population
standard deviation, the minimum, the maximum and the 1st and 99th percentiles:

* mean and std: Chan's parallel update of (count, mean, M2) in float64, chunk by chunk;
  equal to NumPy over the concatenated array up to float64 rounding.
* min and max: exact.
* q01 and q99: exact, equal to ``np.quantile(x, [0.01, 0.99], axis=0)`` (method
  ``"linear"``) over the finite values, whatever the dataset size. Each percentile needs
  two order statistics; they are found by selection over the bit patterns of the float64
  values (order-preserving unsigned keys): a pass counts the values of each feature in
  ``bins`` equal ranges of keys around the wanted rank and keeps the range holding it,
  until a range holds few enough values to be collected and sorted in memory. Memory
  stays bounded (about ``select_budget`` values), a pass reads the data once, and the
  number of passes is at most ``ceil(64 / log2(bins)) + 1`` (2-3 on typical data; 1 when
  the data is small).

Non-finite values (NaN, +-inf) are counted (``nonfinite``) and left out of every
statistic. Arrays that are not floating point are listed under ``skipped`` with the reason,
and so are ``rewards`` when every episode holds the writer's placeholder
(`placeholder_rewards`: a source without rewards) unless they are asked for by name.
When only some episodes hold it (a merge of files with and without rewards), the
statistics of ``rewards`` leave those episodes out and say how many
(``placeholder_episodes``, ``placeholder_frames``).

`write_stats` stores the result in the file's dataset JSON (key ``"stats"``) through an
append-mode `Writer`, which rewrites only the index and switches the commit record last,
so a crash leaves the previous state. `Database.stats` reads it back. `Normalizer` turns
one array's statistics into an affine map for training code.

Example:
    >>> from kinodb.stats import Normalizer, compute_stats, write_stats
    >>> with kinodb.open("demo.kdb") as db:
    ...     stats = compute_stats(db)
    >>> write_stats("demo.kdb", stats)
    >>> norm = Normalizer.from_stats(kinodb.open("demo.kdb").stats()["arrays"]["actions"], "mean_std")
"""

from __future__ import annotations

import datetime as _dt
import math
import os
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, overload

import numpy as np
from numpy.typing import NDArray

from kinodb._stats_select import Moments as _Moments
from kinodb._stats_select import Selector as _Selector
from kinodb.errors import CorruptFileError, FormatError, KinodbError
from kinodb.kdb.reader import Database, open_database
from kinodb.kdb.writer import Writer

if TYPE_CHECKING:
    import torch

__all__ = [
    "NORMALIZE_MODES",
    "QUANTILES",
    "STATS_VERSION",
    "STD_EPS",
    "FeatureShapeError",
    "Normalizer",
    "check_defined",
    "compute_stats",
    "placeholder_mask",
    "placeholder_rewards",
    "stats_to_json",
    "undefined_features",
    "write_stats",
]

STATS_VERSION = 1
QUANTILES = {"q01": 0.01, "q99": 0.99}
NORMALIZE_MODES = ("mean_std", "min_max")
STD_EPS = 1e-6
"""Smallest divisor `Normalizer` uses: a std (mean_std) or half-range (min_max) below it
counts as constant."""

STAT_KEYS = ("mean", "std", "min", "max", *QUANTILES)
CHUNK_BYTES = 32 << 20  # float64 bytes per chunk when ``chunk_frames`` is not given
SELECT_BUDGET = 1 << 21  # values held at once while selecting percentiles
DTYPE_VARIES = "its dtype varies between episodes"
"""How a skipped array's reason begins when its episodes hold it in different dtypes (the
reason goes on to name a few episodes of each, `dtype_groups`)."""
SHAPE_VARIES = "its per-frame shape varies between episodes"
_BUILTIN = ("actions", "states", "rewards")
_NOT_FEATURES = {"timestamps": "the time axis, not a feature (ask for it with --arrays timestamps)"}
_PLACEHOLDER = (
    "no episode holds rewards from its source (each total_reward is unknown and each reward 0, the "
    "writer's placeholder); ask for them by name to summarise them anyway (--arrays rewards)"
)

F64 = NDArray[np.float64]
I64 = NDArray[np.int64]


# -- public API ---------------------------------------------------------------------------


def compute_stats(
    db: Database | str | os.PathLike[str],
    *,
    arrays: Sequence[str] | None = None,
    chunk_frames: int | None = None,
    select_budget: int = SELECT_BUDGET,
) -> dict[str, Any]:
    """Per-feature statistics of a dataset's floating-point arrays, streamed in chunks.

    Args:
        db: An open database, or a path to open.
        arrays: Array names to summarise; default: actions, states, rewards and every
            extra per-frame array (timestamps only when named).
        chunk_frames: Frames read per chunk; default: as many as fit 32 MiB of float64.
        select_budget: Values held in memory at once while selecting percentiles.

    Returns:
        ``{"version", "computed", "num_frames", "num_episodes", "arrays": {name: {"shape",
        "dtype", "mean", "std", "min", "max", "q01", "q99", "count", "nonfinite"}},
        "skipped": {name: reason}}`` with float64 arrays; ``count`` is the number of frames
        read and ``nonfinite`` the number of NaN/inf values left out. ``rewards`` is
        skipped when every episode holds the writer's placeholder (`placeholder_rewards`)
        and ``arrays`` does not name it; when only some do, its statistics leave them out
        and add ``placeholder_episodes`` and ``placeholder_frames`` (how many left out).

    Example:
        >>> stats = compute_stats(db, arrays=["actions"])
        >>> stats["arrays"]["actions"]["q99"]

    Raises:
        ValueError: an array named in ``arrays`` is not in the dataset, or a size is < 1.
    """
    if not isinstance(db, Database):
        with open_database(db) as opened:
            return compute_stats(
                opened, arrays=arrays, chunk_frames=chunk_frames, select_budget=select_budget
            )
    if chunk_frames is not None and chunk_frames < 1:
        raise ValueError(f"chunk_frames must be at least 1, got {chunk_frames}")
    if select_budget < 1:
        raise ValueError(f"select_budget must be at least 1, got {select_budget}")
    frames = np.asarray(db._int_columns()["num_frames"], np.int64)
    result: dict[str, Any] = {
        "version": STATS_VERSION, "computed": _now(), "num_frames": db.num_frames(),
        "num_episodes": len(db), "arrays": {}, "skipped": {},
    }  # fmt: skip
    every = np.arange(len(db), dtype=np.int64)
    for name, spec in _candidates(db.schema(), arrays, db.path()).items():
        if isinstance(spec, str):
            result["skipped"][name] = _varying_dtype(db, name) if spec == DTYPE_VARIES else spec
            continue
        shape, dtype = spec
        size = math.prod(shape)
        chunk = chunk_frames or max(1, CHUNK_BYTES // (8 * size))
        try:
            placeholder = placeholder_mask(db, every) if name == "rewards" else np.zeros(len(db), bool)
            if len(db) and placeholder.all():  # a source without rewards: summarised only when named
                if arrays is None:
                    result["skipped"][name] = _PLACEHOLDER
                    continue
                placeholder[:] = False
            kept = every[~placeholder]
            entry = _array_stats(db, name, kept, frames[kept], shape, dtype, chunk, select_budget)
        except (KeyError, ValueError) as exc:  # absent from an episode, or laid out differently
            result["skipped"][name] = f"cannot be read as one array: {_one_line(exc)}"
            continue
        if placeholder.any():  # some episodes' rewards are the placeholder: left out, and counted
            entry["placeholder_episodes"] = int(placeholder.sum())
            entry["placeholder_frames"] = int(frames[placeholder].sum())
        result["arrays"][name] = entry
    return result


def write_stats(path: str | os.PathLike[str], stats: Mapping[str, Any]) -> None:
    """Store ``stats`` (from `compute_stats`) in the dataset JSON of the file at ``path``.

    Statistics already stored for other arrays are kept when they describe the file as it
    is (same frames and episodes, not stale), so ``kino stats X --arrays timestamps``
    adds to ``kino stats X``; arrays in ``stats`` replace stored ones of the same name, and
    rewards ``stats`` skips as the writer's placeholder drop stored ones.

    An append-mode `Writer` rewrites only the index and switches the commit record last:
    the episodes are untouched and a crash leaves the previous state.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        FormatError: the file is a legacy 0.x file (convert it with ``kino upgrade``), or
            it changed after ``stats`` were computed (their frame counts disagree).
        WriterError: another writer is writing to the file.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(2, "No such file or directory", path)
    doc = stats_to_json(stats)
    with Writer(path, mode="a") as w:
        held = (w._num_frames, len(w))
        if held != (doc.get("num_frames"), doc.get("num_episodes", held[1])):
            w.abort()
            raise FormatError(
                f"{path} has {held[0]} frames in {held[1]} episodes, but the statistics were computed "
                f"over {doc.get('num_frames')} frames; compute them again: kino stats {path}"
            )
        old = w.stats
        if (
            old is not None
            and not old.get("stale")
            and (old.get("num_frames"), old.get("num_episodes")) == held
        ):
            # Placeholder rewards (a source without them) replace earlier statistics of them.
            kept = {
                k: v
                for k, v in old.get("arrays", {}).items()
                if doc.get("skipped", {}).get(k) != _PLACEHOLDER
            }
            arrays = {**kept, **doc["arrays"]}
            skipped = {**old.get("skipped", {}), **doc.get("skipped", {})}
            doc["arrays"] = arrays
            doc["skipped"] = {k: v for k, v in skipped.items() if k not in arrays}
        w.stats = doc


def placeholder_rewards(db: Database, episodes: Any = None) -> bool:
    """Whether each of ``episodes`` (indices; None: all) holds the writer's placeholder rewards:
    a null ``total_reward`` (given rewards, `Writer.add_episode` stores their sum, null only
    when not finite) and all-0 rewards. Rewards are read only when each total is null."""
    total = np.asarray(db._columns(("total_reward",))["total_reward"], np.float64)
    idx = np.arange(len(total)) if episodes is None else np.asarray(episodes, np.int64).reshape(-1)
    if not len(idx) or not np.isnan(total[idx]).all():
        return False
    return bool(placeholder_mask(db, idx).all())


def placeholder_mask(db: Database, idx: I64) -> NDArray[np.bool_]:
    """Which of the episodes ``idx`` (indices) hold the writer's placeholder rewards, by the
    rule of `placeholder_rewards`; rewards are read only for the episodes whose total is null."""
    table = db._columns(("total_reward", "num_frames"))
    out: NDArray[np.bool_] = np.isnan(np.asarray(table["total_reward"], np.float64)[idx])
    held = np.flatnonzero(out)
    frames = np.asarray(table["num_frames"], np.int64)[idx[held]]
    for a, b in _plan(frames, CHUNK_BYTES // 8):
        n = int(frames[a:b].sum())
        if not n:
            continue
        nonzero = (db.gather("rewards", idx[held[a:b]]).reshape(n, -1) != 0).any(axis=1)
        seen = np.concatenate([[0], np.cumsum(nonzero)])  # nonzero frames before each frame
        ends = np.cumsum(frames[a:b])
        out[held[a:b]] = seen[ends] == seen[ends - frames[a:b]]  # no nonzero reward in the episode
    return out


def stats_to_json(stats: Mapping[str, Any]) -> dict[str, Any]:
    """A JSON-ready copy of ``stats``: arrays become lists, NaN becomes None."""
    out: dict[str, Any] = {k: v for k, v in stats.items() if k not in ("arrays", "stale")}
    out["arrays"] = {}
    for name, entry in stats.get("arrays", {}).items():
        doc = dict(entry)
        for key in STAT_KEYS:
            if key in doc:
                values = np.asarray(doc[key], np.float64).reshape(-1)
                doc[key] = [float(v) if math.isfinite(v) else None for v in values.tolist()]
        out["arrays"][name] = doc
    return out


class FeatureShapeError(KinodbError, ValueError):
    """An array given to a `Normalizer` does not end in the feature shape of its statistics."""


@dataclass(frozen=True, slots=True, eq=False)
class Normalizer:
    """An affine, per-feature map ``y = (x - center) * scale`` and its inverse.

    ``"mean_std"``: ``center = mean``, ``scale = 1 / max(std, eps)``.
    ``"min_max"``: maps ``[min, max]`` to ``[-1, 1]``; features whose half-range is below
    ``eps`` are constant and map to 0 (`invert` returns their constant value).

    Parameters broadcast over leading dimensions: a ``(B, H, D)`` batch of a ``(D,)``
    array works as is. Parameters are float64. NumPy input (or anything array-like) is
    mapped in float64 (a float32 center would cost precision on features with a large
    offset and a small spread) and comes back as float32 NumPy. A torch tensor stays a
    tensor of its floating dtype (float32 for an integer tensor): the map runs as torch
    operations on its device (in at least float32), so it works on a GPU batch and on a
    policy's output inside the autograd graph.

    Example:
        >>> norm = Normalizer.from_stats(db.stats()["arrays"]["actions"], "min_max")
        >>> y = norm.apply(batch["action"])
        >>> x = norm.invert(policy(obs))  # a torch tensor: un-normalised on its device
    """

    mode: str
    center: F64
    scale: F64
    inverse: F64 = field(repr=False)

    @classmethod
    def from_stats(cls, stats: Mapping[str, Any], mode: str, *, eps: float = STD_EPS) -> Normalizer:
        """Build the map from one array's statistics (an entry of ``stats["arrays"]``).

        Raises:
            ValueError: ``mode`` is unknown, a statistic is missing, or a feature had no
                finite value (its statistics are undefined; `undefined_features` lists them).
        """
        a, b = _parameters(stats, mode)
        bad = np.flatnonzero(~(np.isfinite(a) & np.isfinite(b)))
        if len(bad):
            raise ValueError(f"features {bad.tolist()} had no finite value; their statistics are undefined")
        if mode == "mean_std":
            center, scale = a, 1.0 / np.maximum(b, eps)
        else:
            half = (b - a) / 2
            center = a + half
            scale = np.divide(1.0, half, out=np.zeros_like(half), where=half >= eps)
        inverse = np.divide(1.0, scale, out=np.zeros_like(scale), where=scale != 0)
        shape = tuple(int(d) for d in stats.get("shape", (len(a),)))
        if math.prod(shape) != len(a):
            shape = (len(a),)
        return cls(mode, *(v.reshape(shape) for v in (center, scale, inverse)))

    @property
    def shape(self) -> tuple[int, ...]:
        """The per-frame feature shape the statistics describe, ``(7,)`` for 7 actions: the
        trailing axes `apply` and `invert` take."""
        return tuple(self.center.shape)

    @overload
    def apply(self, x: torch.Tensor) -> torch.Tensor: ...
    @overload
    def apply(self, x: Any) -> NDArray[np.float32]: ...
    def apply(self, x: Any) -> Any:
        """Normalise ``x`` (shape ``(..., *feature shape)``): float32 NumPy, or for a torch
        tensor a tensor on its device.

        Raises:
            FeatureShapeError: ``x`` does not end in the feature shape (`shape`), as a batch
                padded to a wider source does: take its rows and features of this source.
        """
        if _is_tensor(x):
            self._check_shape(tuple(x.shape), "apply")
            t = _working(x)
            hi, lo = self._center(t)
            d = t - hi if lo is None else (t - hi) - lo
            return _back(d * self._like(self.scale, t), x)
        arr = np.asarray(x, np.float64)
        self._check_shape(arr.shape, "apply")
        out: NDArray[np.float32] = ((arr - self.center) * self.scale).astype(np.float32)
        return out

    @overload
    def invert(self, y: torch.Tensor) -> torch.Tensor: ...
    @overload
    def invert(self, y: Any) -> NDArray[np.float32]: ...
    def invert(self, y: Any) -> Any:
        """Undo `apply`; a torch tensor (a policy's output, say) stays a tensor on its device,
        in the autograd graph.

        Raises:
            FeatureShapeError: as for `apply`.
        """
        if _is_tensor(y):
            self._check_shape(tuple(y.shape), "invert")
            t = _working(y)
            hi, lo = self._center(t)
            d = t * self._like(self.inverse, t)
            return _back((d if lo is None else d + lo) + hi, y)
        arr = np.asarray(y, np.float64)
        self._check_shape(arr.shape, "invert")
        out: NDArray[np.float32] = (arr * self.inverse + self.center).astype(np.float32)
        return out

    def _check_shape(self, got: tuple[int, ...], op: str) -> None:
        """Refuse an array whose trailing axes are not the feature shape (a single feature
        broadcasts as before).

        Raises:
            FeatureShapeError: naming the shapes, and for a batch padded to the widest of
                several sources, how to take one source's rows and features.
        """
        want = self.shape
        if math.prod(want) <= 1 or (len(got) >= len(want) and got[len(got) - len(want) :] == want):
            return
        n = math.prod(want)
        msg = (
            f"Normalizer.{op}: the statistics describe {n} features (shape {want}), so the array's last "
            f"axis{'es' if len(want) > 1 else ''} must be {want}; got an array of shape {got}"
        )
        if len(want) == 1 and got and got[-1] > want[0]:
            msg += (
                f". A batch padded to the widest of several sources (pad_collate) holds each source's "
                f"features first, zeros after: take the rows of this normaliser's source and its first "
                f"{n} features, x[batch['source'] == s][..., :{n}] (ds.normalizers[s] holds source s's "
                "normalisers)"
            )
        else:
            msg += f"; pass an array of shape (..., {', '.join(map(str, want))})"
        raise FeatureShapeError(msg)

    @staticmethod
    def _like(param: NDArray[Any], t: torch.Tensor) -> torch.Tensor:
        """A parameter as a constant of ``t``'s dtype on ``t``'s device."""
        import torch

        return torch.as_tensor(param, dtype=t.dtype, device=t.device)

    def _center(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The center for ``t``: in float64 as is; in float32 as a sum ``hi + lo`` of two
        float32 constants, so that a feature with a large offset and a small spread keeps
        the precision of the float64 map (``x - hi`` is exact for ``x`` near the center)."""
        import torch

        if t.dtype == torch.float64:
            return self._like(self.center, t), None
        hi = self.center.astype(np.float32)
        lo = (self.center - hi.astype(np.float64)).astype(np.float32)
        return self._like(hi, t), self._like(lo, t)


def undefined_features(stats: Mapping[str, Any], mode: str) -> list[int]:
    """Features (flat positions) whose ``mode`` statistics in one array's entry are not
    finite: no finite value was found for them, so they cannot be normalised.

    Raises:
        ValueError: ``mode`` is unknown or a statistic it needs is missing.
    """
    a, b = _parameters(stats, mode)
    bad: list[int] = np.flatnonzero(~(np.isfinite(a) & np.isfinite(b))).tolist()
    return bad


def check_defined(
    stats: Mapping[str, Any], mode: str, *, name: str, where: str, path: str, schema: Mapping[str, Any]
) -> None:
    """Refuse one array's statistics (``name``'s, in the file ``path``, described as
    ``where``) when ``mode`` cannot use some feature: no finite value was found for it.
    Each is named by position and, from ``schema`` (the array's schema entry), by name
    and component.

    Raises:
        KinodbError: a feature's statistics are undefined, or a statistic is missing.
    """
    try:
        bad = undefined_features(stats, mode)
    except ValueError as exc:
        raise KinodbError(f"{where}: statistics of {name}: {exc}") from None
    if not bad:
        return
    labels = [_feature_label(f, schema) for f in bad[:8]]
    more = f" and {len(bad) - 8} more" if len(bad) > 8 else ""
    raise KinodbError(
        f"{where}: normalize={mode!r} cannot normalise {name}: feature{'s' if len(bad) > 1 else ''} "
        f"{', '.join(labels)}{more} had no finite value when its statistics were computed (every value NaN "
        f"or infinite), so its {'mean and std' if mode == 'mean_std' else 'min and max'} are undefined; "
        f"repair or drop those values (re-ingest without that element, then run: kino stats {path}), or "
        "pass normalize=None and normalise the other features yourself"
    )


def _feature_label(f: int, schema: Mapping[str, Any]) -> str:
    """Feature ``f``: its position, with its name and component when the schema gives them."""
    parts = []
    names = schema.get("names")
    if isinstance(names, list) and f < len(names) and isinstance(names[f], str):
        parts.append(repr(names[f]))
    components = schema.get("components")
    if isinstance(components, Mapping):
        for key, span in components.items():
            if isinstance(span, (list, tuple)) and len(span) == 2 and span[0] <= f < span[1]:
                parts.append(f"{key}[{f - span[0]}]")
                break
    return f"{f} ({', '.join(parts)})" if parts else str(f)


def _parameters(stats: Mapping[str, Any], mode: str) -> tuple[F64, F64]:
    """The two statistics ``mode`` uses (mean and std, or min and max), flat float64, NaN for null."""
    if mode not in NORMALIZE_MODES:
        raise ValueError(f"normalize mode must be one of {NORMALIZE_MODES}, got {mode!r}")
    keys = ("mean", "std") if mode == "mean_std" else ("min", "max")
    missing = [k for k in keys if k not in stats]
    if missing:
        raise ValueError(f"statistics lack {missing}; compute them with: kino stats PATH")
    a, b = (np.array([np.nan if v is None else v for v in np.asarray(stats[k], object).reshape(-1)],
                     np.float64) for k in keys)  # fmt: skip
    return a, b


def _is_tensor(x: Any) -> bool:
    """Whether ``x`` is a torch tensor (torch is not imported for that: a tensor means it is)."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


def _working(t: torch.Tensor) -> torch.Tensor:
    """``t`` in the dtype the map runs in: its own, at least float32 (half precision would
    round the parameters)."""
    import torch

    if not t.is_floating_point():
        return t.to(torch.float32)
    return t.to(torch.promote_types(t.dtype, torch.float32))


def _back(out: torch.Tensor, given: torch.Tensor) -> torch.Tensor:
    """The result in the given tensor's floating dtype (float32 for an integer tensor)."""
    return out.to(given.dtype) if given.is_floating_point() else out


# -- arrays and chunks --------------------------------------------------------------------


def _candidates(
    schema: Mapping[str, Any], wanted: Sequence[str] | None, path: str
) -> dict[str, tuple[tuple[int, ...], np.dtype[Any]] | str]:
    """Per array: its (per-frame shape, dtype), or the reason it is skipped.

    Raises:
        CorruptFileError: the schema gives an array a dtype that is none (names the array).
    """
    entries: dict[str, Any] = {n: schema[n] for n in (*_BUILTIN, "timestamps", "is_terminal") if n in schema}
    entries.update({n: e for n, e in sorted(schema.get("arrays", {}).items()) if n not in entries})
    if wanted is None:
        names = list(entries)
    else:
        names = list(dict.fromkeys(wanted))
        unknown = [n for n in names if n not in entries]
        if unknown:
            raise ValueError(f"no array {unknown[0]!r} in this dataset; it has {sorted(entries)}")
    out: dict[str, tuple[tuple[int, ...], np.dtype[Any]] | str] = {}
    for name in names:
        entry = entries[name]
        if wanted is None and name in _NOT_FEATURES:
            out[name] = _NOT_FEATURES[name]
            continue
        shape = [entry.get("dim")] if name in ("actions", "states") else entry.get("shape")
        if entry.get("dtype") is None:
            out[name] = DTYPE_VARIES
        elif shape is None or None in shape:
            out[name] = SHAPE_VARIES
        elif (dtype := _schema_dtype(entry["dtype"], name, path)).kind != "f":
            out[name] = f"dtype {entry['dtype']} is not floating point"
        elif math.prod(shape) == 0:
            out[name] = f"it has no features (per-frame shape {tuple(shape)})"
        else:
            out[name] = (tuple(int(d) for d in shape), dtype)
    return out


def _schema_dtype(stored: Any, name: str, path: str) -> np.dtype[Any]:
    """The dtype the dataset schema gives array ``name``.

    Raises:
        CorruptFileError: ``stored`` is not a dtype (the index is damaged).
    """
    try:
        dtype: np.dtype[Any] = np.dtype(stored)
        return dtype
    except (TypeError, ValueError, SyntaxError) as exc:  # np.dtype parses some strings as code
        text = repr(stored)
        raise CorruptFileError(
            f"{path}: the dataset schema gives array {name!r} the dtype "
            f"{text if len(text) <= 40 else text[:37] + '...'}, which is not a dtype; the index is damaged: "
            f"run kino validate {path}, or restore the file from a copy"
        ) from exc


def dtype_groups(db: Database, name: str) -> list[tuple[str, I64]]:
    """The positions of the episodes holding array ``name`` in each dtype, dtypes in the order
    first held, from the index alone (none for a format 0.1 file: one dtype per array)."""
    from kinodb._window_checks import _Sections  # deferred: it builds on kql
    from kinodb.kdb._layout import DTYPES, KIND_ARRAY

    sections = _Sections.of(db, np.arange(len(db), dtype=np.int64))
    if sections is None:
        return []
    rows = sections.find(name, KIND_ARRAY)
    held = np.flatnonzero(rows >= 0)
    codes = sections.column("sec.dtype", rows[held])
    out = []
    for code in dict.fromkeys(codes.tolist()):  # in the order first held
        dtype = np.dtype(DTYPES[code]).name if 0 <= code < len(DTYPES) else f"dtype code {code}"
        out.append((dtype, held[codes == code]))
    return out


def episodes_text(episodes: I64, shown: int = 3) -> str:
    """``"4 episodes (0, 1, 2, ...)"``: how many, and the first few positions."""
    head = ", ".join(map(str, episodes[:shown].tolist())) + (", ..." if len(episodes) > shown else "")
    return f"{len(episodes)} episode{'s' if len(episodes) != 1 else ''} ({head})"


def _varying_dtype(db: Database, name: str) -> str:
    """Why ``name`` is skipped when its dtype varies: a few episodes of each dtype."""
    groups = dtype_groups(db, name)
    if len(groups) < 2:
        return DTYPE_VARIES
    return f"{DTYPE_VARIES}: " + ", ".join(f"{dtype} in {episodes_text(eps)}" for dtype, eps in groups)


def _plan(frames: I64, chunk: int) -> list[tuple[int, int]]:
    """Runs ``[a, b)`` of consecutive episodes holding at most ``chunk`` frames (or one longer episode)."""
    runs, start, held = [], 0, 0
    for i, t in enumerate(frames.tolist()):
        if held and held + t > chunk:
            runs.append((start, i))
            start, held = i, 0
        held += t
    if start < len(frames):
        runs.append((start, len(frames)))
    return runs


def _chunks(db: Database, name: str, episodes: I64, frames: I64, runs: list[tuple[int, int]], chunk: int,
            shape: tuple[int, ...], dtype: np.dtype[Any]) -> Iterator[F64]:  # fmt: skip
    """The array of ``episodes`` (positions, holding ``frames`` each) as float64 ``(n, features)``
    chunks of at most ``chunk`` frames, in their order; ``runs`` index ``episodes``."""
    size = math.prod(shape)
    held = [int(frames[a:b].sum()) for a, b in runs]
    buf = np.empty((max((n for n in held if n <= chunk), default=1), *shape), dtype)
    for (a, b), n in zip(runs, held, strict=True):
        if n == 0:
            continue
        if n <= len(buf):
            part = db.gather(name, episodes[a:b], out=buf[:n])
            yield _as_float64(part).reshape(n, size)
            continue
        view = db.read_array(int(episodes[a]), name)  # one episode longer than a chunk: read it in slices
        for s in range(0, n, chunk):
            yield _as_float64(view[s : s + chunk]).reshape(-1, size)


def _as_float64(values: np.ndarray) -> F64:
    """``values`` as a float64 copy, its NaNs quiet: a signalling NaN (a payload a float
    array may hold) flags "invalid" in the cast and in each sum after it, where NumPy
    warned with no array named; the statistics count NaNs as non-finite anyway."""
    with np.errstate(invalid="ignore"):
        out = np.array(values, np.float64)
    nan = np.isnan(out)
    if nan.any():
        out[nan] = np.nan
    return out


def _array_stats(db: Database, name: str, episodes: I64, frames: I64, shape: tuple[int, ...],
                 dtype: np.dtype[Any], chunk: int, budget: int) -> dict[str, Any]:  # fmt: skip
    """One array's statistics over ``episodes`` (positions, holding ``frames`` each)."""
    runs = _plan(frames, chunk)
    moments = _Moments(math.prod(shape))
    for x in _chunks(db, name, episodes, frames, runs, chunk, shape, dtype):
        moments.update(x)
    select = _Selector(moments, tuple(QUANTILES.values()), budget)
    while not select.finished():
        for x in _chunks(db, name, episodes, frames, runs, chunk, shape, dtype):
            select.update(x)
        select.end_pass()
    quantiles = select.values()
    empty = moments.count == 0
    mean, std = moments.values()
    out: dict[str, Any] = {
        "shape": list(shape), "dtype": dtype.name, "mean": mean, "std": std,
        "min": np.where(empty, np.nan, moments.lo), "max": np.where(empty, np.nan, moments.hi),
    }  # fmt: skip
    for k, key in enumerate(QUANTILES):
        out[key] = quantiles[:, k]
    out["count"] = int(frames.sum())
    out["nonfinite"] = moments.nonfinite
    return out


# -- helpers ------------------------------------------------------------------------------


def _now() -> str:
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    t = float(epoch) if epoch else time.time()
    return _dt.datetime.fromtimestamp(t, _dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _one_line(exc: BaseException) -> str:
    text = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
    return " ".join(str(text).split())
