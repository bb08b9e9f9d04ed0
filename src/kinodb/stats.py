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

from kinodb.errors import FormatError, KinodbError
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
MAX_BINS = 4096
_BUILTIN = ("actions", "states", "rewards")
_NOT_FEATURES = {"timestamps": "the time axis, not a feature (ask for it with --arrays timestamps)"}
_PLACEHOLDER = (
    "no episode holds rewards from its source (each total_reward is unknown and each reward 0, the "
    "writer's placeholder); ask for them by name to summarise them anyway (--arrays rewards)"
)
_SIGN = np.uint64(1 << 63)

F64 = NDArray[np.float64]
I64 = NDArray[np.int64]
U64 = NDArray[np.uint64]


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
        and ``arrays`` does not name it.

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
    frames = np.asarray(db.episodes()["num_frames"], np.int64)
    result: dict[str, Any] = {
        "version": STATS_VERSION, "computed": _now(), "num_frames": db.num_frames(),
        "num_episodes": len(db), "arrays": {}, "skipped": {},
    }  # fmt: skip
    for name, spec in _candidates(db.schema(), arrays).items():
        if isinstance(spec, str):
            result["skipped"][name] = spec
            continue
        if name == "rewards" and arrays is None and len(db) and placeholder_rewards(db):
            result["skipped"][name] = _PLACEHOLDER
            continue
        shape, dtype = spec
        size = math.prod(shape)
        chunk = chunk_frames or max(1, CHUNK_BYTES // (8 * size))
        try:
            result["arrays"][name] = _array_stats(db, name, frames, shape, dtype, chunk, select_budget)
        except (KeyError, ValueError) as exc:  # absent from an episode, or laid out differently
            result["skipped"][name] = f"cannot be read as one array: {_one_line(exc)}"
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
    table = db.episodes()
    total = np.asarray(table["total_reward"], np.float64)
    idx = np.arange(len(total)) if episodes is None else np.asarray(episodes, np.int64).reshape(-1)
    if not len(idx) or not np.isnan(total[idx]).all():
        return False
    frames = np.asarray(table["num_frames"], np.int64)[idx]
    for a, b in _plan(frames, CHUNK_BYTES // 8):
        if int(frames[a:b].sum()) and np.any(db.gather("rewards", idx[a:b]) != 0):
            return False
    return True


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
    schema: Mapping[str, Any], wanted: Sequence[str] | None
) -> dict[str, tuple[tuple[int, ...], np.dtype[Any]] | str]:
    """Per array: its (per-frame shape, dtype), or the reason it is skipped."""
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
            out[name] = "its dtype varies between episodes"
        elif shape is None or None in shape:
            out[name] = "its per-frame shape varies between episodes"
        elif np.dtype(entry["dtype"]).kind != "f":
            out[name] = f"dtype {entry['dtype']} is not floating point"
        elif math.prod(shape) == 0:
            out[name] = f"it has no features (per-frame shape {tuple(shape)})"
        else:
            out[name] = (tuple(int(d) for d in shape), np.dtype(entry["dtype"]))
    return out


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


def _chunks(db: Database, name: str, frames: I64, runs: list[tuple[int, int]], chunk: int,
            shape: tuple[int, ...], dtype: np.dtype[Any]) -> Iterator[F64]:  # fmt: skip
    """The array as float64 ``(n, features)`` chunks of at most ``chunk`` frames, in episode order."""
    size = math.prod(shape)
    held = [int(frames[a:b].sum()) for a, b in runs]
    buf = np.empty((max((n for n in held if n <= chunk), default=1), *shape), dtype)
    for (a, b), n in zip(runs, held, strict=True):
        if n == 0:
            continue
        if n <= len(buf):
            part = db.gather(name, np.arange(a, b), out=buf[:n])
            yield part.reshape(n, size).astype(np.float64)
            continue
        view = db.read_array(a, name)  # one episode longer than a chunk: read it in slices
        for s in range(0, n, chunk):
            yield np.asarray(view[s : s + chunk], np.float64).reshape(-1, size)


def _array_stats(db: Database, name: str, frames: I64, shape: tuple[int, ...], dtype: np.dtype[Any],
                 chunk: int, budget: int) -> dict[str, Any]:  # fmt: skip
    runs = _plan(frames, chunk)
    moments = _Moments(math.prod(shape))
    for x in _chunks(db, name, frames, runs, chunk, shape, dtype):
        moments.update(x)
    select = _Selector(moments, tuple(QUANTILES.values()), budget)
    while not select.finished():
        for x in _chunks(db, name, frames, runs, chunk, shape, dtype):
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


# -- moments ------------------------------------------------------------------------------


_BIG_EXP = 480  # values scaled below 2**480: squares summed over 2**60 frames stay finite
_BIG = 2.0**_BIG_EXP


class _Moments:
    """Per-feature count, mean, M2, min and max of the finite values seen so far."""

    def __init__(self, features: int) -> None:
        self.count: I64 = np.zeros(features, np.int64)
        self.mean: F64 = np.zeros(features)
        self.m2: F64 = np.zeros(features)
        self.lo: F64 = np.full(features, np.inf)
        self.hi: F64 = np.full(features, -np.inf)
        self.exp: I64 = np.zeros(features, np.int64)  # mean and M2 are held scaled by 2**-exp
        self.nonfinite = 0

    def values(self) -> tuple[F64, F64]:
        """Per-feature mean and (population) std of the finite values; NaN where there were none."""
        empty = self.count == 0
        mean = np.where(empty, np.nan, np.ldexp(self.mean, self.exp))
        var = np.divide(self.m2, self.count, out=np.full_like(self.m2, np.nan), where=~empty)
        return mean, np.ldexp(np.sqrt(var), self.exp)

    def update(self, x: F64) -> None:
        """Merge the chunk ``x`` (``(n, features)``) into the running moments (Chan et al.)."""
        finite = np.isfinite(x)
        n_b = finite.sum(axis=0)
        clean = n_b.sum() == x.size
        if clean:
            lo_b, hi_b = x.min(axis=0), x.max(axis=0)
        else:
            self.nonfinite += int(x.size - n_b.sum())
            lo_b, hi_b = np.where(finite, x, np.inf).min(axis=0), np.where(finite, x, -np.inf).max(axis=0)
        self.lo, self.hi = np.minimum(self.lo, lo_b), np.maximum(self.hi, hi_b)
        exp = self._rescale(np.maximum(np.abs(lo_b), np.abs(hi_b)))
        if exp is not None:  # sums of these values would overflow: work on them scaled by 2**-exp
            x = np.ldexp(x, -exp)
        if clean:
            mean_b = x.mean(axis=0)
            dev = x - mean_b
        else:
            mean_b = np.divide(
                np.where(finite, x, 0.0).sum(axis=0), n_b, out=np.zeros(x.shape[1]), where=n_b > 0
            )
            dev = np.where(finite, x - mean_b, 0.0)
        m2_b = np.einsum("ij,ij->j", dev, dev)
        n = self.count + n_b
        w = np.divide(n_b, n, out=np.zeros(len(n)), where=n > 0)
        delta = mean_b - self.mean
        self.mean = self.mean + delta * w
        self.m2 = self.m2 + m2_b + delta * delta * self.count * w
        self.count = n

    def _rescale(self, magnitude: F64) -> I64 | None:
        """The scale exponents for a chunk whose finite values reach ``magnitude`` per feature
        (inf where a feature had none), the running moments brought to them; None while no
        value comes near overflowing a sum of squares (every feature then stays unscaled,
        so ordinary data gets exactly NumPy's moments)."""
        big = np.isfinite(magnitude) & (magnitude >= _BIG)
        if not big.any() and not self.exp.any():
            return None
        need = np.where(big, np.frexp(np.where(big, magnitude, 1.0))[1] - _BIG_EXP, 0)
        exp = np.maximum(self.exp, need)
        shift = self.exp - exp  # <= 0: earlier moments scaled down to the new exponents
        self.mean, self.m2, self.exp = np.ldexp(self.mean, shift), np.ldexp(self.m2, 2 * shift), exp
        return exp


# -- exact percentiles by selection -------------------------------------------------------


def _to_keys(x: F64) -> U64:
    """Unsigned keys that sort like the float64 values (negative: all bits flipped)."""
    u = np.ascontiguousarray(x, np.float64).view(np.uint64)
    out: U64 = np.where((u & _SIGN) != 0, ~u, u | _SIGN)
    return out


def _from_keys(k: U64) -> F64:
    u = np.where((k & _SIGN) != 0, k & ~_SIGN, ~k).astype(np.uint64)
    return u.view(np.float64)


def _lerp(a: F64, b: F64, t: F64) -> F64:
    """Linear interpolation exactly as ``np.quantile(method="linear")`` computes it."""
    d = b - a
    out: F64 = np.where(t >= 0.5, b - d * (1 - t), a + d * t)
    return out


class _Selector:
    """Find given order statistics of every feature in a few passes with bounded memory.

    Each target (a feature and a rank) keeps a half-open range of keys ``[lo, hi)`` known to
    hold it, how many finite values lie below ``lo`` and how many inside. A pass either
    counts the values of a wide range into ``bins`` sub-ranges (then keeps the one holding
    the rank) or, once a range holds at most ``limit`` values, collects and sorts them.
    """

    def __init__(self, moments: _Moments, quantiles: tuple[float, ...], budget: int) -> None:
        n = moments.count
        F, Q = len(n), len(quantiles)
        h = np.asarray(quantiles, np.float64)[None, :] * (n[:, None] - 1).astype(np.float64)
        k = np.floor(h)
        self.frac: F64 = h - k
        k = np.maximum(k, 0).astype(np.int64)
        # Targets: for each quantile, the order statistics floor(h) and the next (clipped).
        self.rank: I64 = np.stack([k, np.minimum(k + 1, np.maximum(n[:, None] - 1, 0))], axis=2).reshape(
            F, 2 * Q
        )
        R = 2 * Q
        lo_key = _to_keys(np.where(n > 0, moments.lo, 0.0))
        hi_key = _to_keys(np.where(n > 0, moments.hi, 0.0)) + np.uint64(1)
        self.lo: U64 = np.repeat(lo_key[:, None], R, axis=1)
        self.hi: U64 = np.repeat(hi_key[:, None], R, axis=1)
        self.below: I64 = np.zeros((F, R), np.int64)
        self.inside: I64 = np.repeat(n[:, None], R, axis=1)
        self.done = (n[:, None] == 0) | (self.hi - self.lo == 1)
        self.key: U64 = self.lo.copy()
        self.empty = n == 0
        self.limit = max(1, budget // (F * R))
        self.bins = int(min(MAX_BINS, max(16, budget // (F * R))))
        self.passes = 0
        self._begin()

    def finished(self) -> bool:
        return bool(self.done.all())

    def _begin(self) -> None:
        self.counting = ~self.done & (self.inside > self.limit)
        self.collecting = ~self.done & ~self.counting
        B = np.uint64(self.bins)
        self.width: U64 = (self.hi - self.lo + B - np.uint64(1)) // B
        self.hist = np.zeros((self.lo.shape[1], self.lo.shape[0] * self.bins), np.int64)
        self.found: list[list[tuple[NDArray[np.int32], U64]]] = [[] for _ in range(self.lo.shape[1])]
        # Targets whose ranges match an earlier target's for every feature share its pass work
        # (all do on the first pass; the two order statistics of one quantile usually do).
        self.same = list(range(self.lo.shape[1]))
        for r in range(1, len(self.same)):
            for s in range(r):
                if all(
                    np.array_equal(a[:, r], a[:, s])
                    for a in (self.lo, self.hi, self.counting, self.collecting)
                ):
                    self.same[r] = s
                    break

    def update(self, x: F64) -> None:
        """Count or collect the chunk's values in every open range."""
        keys = _to_keys(x)
        F = x.shape[1]
        for r in range(self.lo.shape[1]):
            counting, collecting = self.counting[:, r], self.collecting[:, r]
            if self.same[r] != r or not (counting.any() or collecting.any()):
                continue
            # Non-finite keys sort outside every range (ranges lie within [min, max] of the
            # finite values), so one unsigned comparison tests lo <= key < hi.
            offset = keys - self.lo[:, r]
            inside = offset < self.hi[:, r] - self.lo[:, r]
            if counting.any():
                rows, cols = np.nonzero(inside & counting)
                b = offset[rows, cols] // self.width[cols, r]
                flat = cols * self.bins + b.astype(np.int64)
                self.hist[r] += np.bincount(flat, minlength=F * self.bins)
            if collecting.any():
                rows, cols = np.nonzero(inside & collecting)
                self.found[r].append((cols.astype(np.int32), keys[rows, cols]))

    def end_pass(self) -> None:
        """Narrow the counted ranges, settle the collected ones, and prepare the next pass."""
        F = self.lo.shape[0]
        for r in range(self.lo.shape[1]):
            f = np.flatnonzero(self.counting[:, r])
            if len(f):
                self._narrow(r, f, self.hist[self.same[r]].reshape(F, self.bins)[f])
            f = np.flatnonzero(self.collecting[:, r])
            if len(f):
                self._settle(r, f, self.found[self.same[r]])
        self.passes += 1
        self._begin()

    def _narrow(self, r: int, f: I64, hist: I64) -> None:
        cum = np.cumsum(hist, axis=1)
        need = self.rank[f, r] - self.below[f, r]
        j = (cum <= need[:, None]).sum(axis=1)
        rows = np.arange(len(f))
        before = np.where(j > 0, cum[rows, np.maximum(j - 1, 0)], 0)
        lo = self.lo[f, r] + j.astype(np.uint64) * self.width[f, r]
        self.hi[f, r] = np.minimum(lo + self.width[f, r], self.hi[f, r])
        self.lo[f, r] = lo
        self.below[f, r] += before
        self.inside[f, r] = hist[rows, j]
        single = self.hi[f, r] - lo == 1  # one key left: that value is the answer
        self.key[f[single], r] = lo[single]
        self.done[f[single], r] = True

    def _settle(self, r: int, f: I64, found: list[tuple[NDArray[np.int32], U64]]) -> None:
        cols = np.concatenate([c for c, _ in found]) if found else np.zeros(0, np.int32)
        keys = np.concatenate([k for _, k in found]) if found else np.zeros(0, np.uint64)
        order = np.lexsort((keys, cols))
        cols, keys = cols[order], keys[order]
        start = np.searchsorted(cols, f)
        self.key[f, r] = keys[start + self.rank[f, r] - self.below[f, r]]
        self.done[f, r] = True

    def values(self) -> F64:
        """The quantiles, ``(features, len(quantiles))``; NaN for features without finite values."""
        v = _from_keys(self.key)
        a, b = v[:, 0::2], v[:, 1::2]
        out = _lerp(a, b, self.frac)
        out[self.empty] = np.nan
        return out


# -- helpers ------------------------------------------------------------------------------


def _now() -> str:
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    t = float(epoch) if epoch else time.time()
    return _dt.datetime.fromtimestamp(t, _dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _one_line(exc: BaseException) -> str:
    text = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
    return " ".join(str(text).split())
