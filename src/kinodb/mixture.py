"""Weighted mixtures of ``.kdb`` files: exact stratified epochs, sampling, one global index.

A mixture draws ``(source, position)`` pairs from several files by relative weight.
Epochs are stratified: the per-source counts are the largest-remainder apportionment of
``n``, and each source is cycled without replacement. Every random choice comes from a
stream derived from the seed with ``numpy.random.SeedSequence`` and an explicit spawn key,
so the same seed gives the same pairs in every process. ``docs/mixtures.md`` is the guide.
"""

from __future__ import annotations

import bisect
import errno
import math
import numbers
import os
import reprlib
import sys
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Literal, TypeAlias

import numpy as np
from numpy.typing import NDArray

from kinodb.errors import EpisodeNotFoundError, FormatError, MixtureError, QuerySyntaxError
from kinodb.kdb._files import FolderError
from kinodb.kdb.reader import Database, Pins, _open_as, open_database, pin_of, pinned

__all__ = ["DEFAULT_SEED", "Mixture", "MixtureBuilder", "MixtureSource", "WeightBy"]

WeightBy: TypeAlias = Literal["episode", "frame"]
PathArg: TypeAlias = "str | os.PathLike[str]"
#: ``{path: weight}``, or entries ``path``, ``(path, weight)`` or ``(path, weight, filter)``.
SourcesArg: TypeAlias = "Mapping[PathArg, float] | Iterable[PathArg | tuple[Any, ...]]"

DEFAULT_SEED = 42  # the earlier kinodb's default, kept so its commands mean the same
_ROUNDS = 6  # Feistel rounds of a large pass's permutation
# Passes of at most this many units are sorted permutations (uniform); larger ones use a
# Feistel permutation evaluated only where drawn, so a pass over 10^9 frames costs O(draws).
_SORTED_MAX = 1 << 16
# Spawn-key tags: each kind of randomness has its own SeedSequence stream.
_TAG_ORDER, _TAG_SOURCE, _TAG_SAMPLE = 0, 1, 2
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1, _M2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)
_S27, _S30, _S31 = np.uint64(27), np.uint64(30), np.uint64(31)


@dataclass(frozen=True, slots=True)
class MixtureSource:
    """One source of a mixture, as `Mixture.sources` describes it.

    ``episodes`` and ``frames`` count what the filter keeps. ``share`` is the normalised
    weight: the expected fraction of drawn pairs from this source. ``episode_share`` and
    ``frame_share`` are the source's share of the mixture counted in episodes and in
    frames: the one named by ``weight_by`` equals ``share``, the other converts it with
    the source's mean episode length.
    """

    index: int
    path: str
    filter: str | None
    episodes: int
    frames: int
    weight: float
    share: float
    episode_share: float
    frame_share: float


@dataclass(frozen=True, slots=True)
class _Spec:
    path: str  # as given
    weight: float
    filter: str | None
    file: str  # the absolute path, resolved when the mixture was made (pickled: `Mixture.__reduce__`)


@dataclass(frozen=True, slots=True)
class _Source:
    db: Database
    kept: NDArray[np.int64]  # positions in the file, ascending
    starts: NDArray[np.int64]  # first frame of each kept episode, then the kept frame total
    units: int  # what one pass cycles through: kept episodes, or kept frames
    keys: NDArray[np.uint64]  # base Feistel round keys of this source's passes

    def episodes_of(self, units: NDArray[np.int64], frame: bool) -> NDArray[np.int64]:
        """Map units of a pass (episodes or frames) to indices into ``kept``."""
        return np.searchsorted(self.starts, units, side="right") - 1 if frame else units


class Mixture:
    """Several ``.kdb`` files drawn from by relative weight.

    Weights are relative (4:3:3 is 0.4:0.3:0.3). With ``weight_by="episode"`` the
    shares count episodes; with ``"frame"`` they count frames: each draw is a frame
    drawn uniformly from the source's kept frames, and the pair names the episode that
    holds it, so episodes are drawn in proportion to their length. A per-source KQL
    filter selects the episodes a source keeps. The mixture is sized and indexable over
    the kept episodes (sources in order), a context manager, and it pickles by its spec
    (paths, weights, filters, seed, weight_by) so DataLoader workers re-open the files.

    Args:
        sources: ``{path: weight}``, or a list of ``path``, ``(path, weight)`` or
            ``(path, weight, filter)``; a list may name one file twice.
        seed: Non-negative integer; 0 is as good as any other.
        weight_by: ``"episode"`` or ``"frame"``.
        filters: ``{path: kql}``, a filter for every source with that path (for one filter
            on every source, ``{path: kql for path in sources}``).

    Example:
        >>> mix = kinodb.Mixture({"franka.kdb": 3, "widowx.kdb": 1}, seed=0)
        >>> for source, position in mix.weighted_epoch(1000):
        ...     ep = mix.database(source).read_episode(position)

    Raises:
        MixtureError: no sources, or a weight that is zero, negative, NaN, infinite or too
            large for a float, or a source that keeps no episodes; the message names the source.
        FileNotFoundError: a source file does not exist.
        FormatError: a source is not a readable ``.kdb`` file (or is a folder).
        QuerySyntaxError: a filter does not parse (the message names the source).
        TypeError: a source entry, weight or filter of the wrong type, or ``filters`` not a
            mapping (one KQL string for every source is refused: the message says how).
    """

    def __init__(
        self,
        sources: SourcesArg,
        *,
        seed: int = DEFAULT_SEED,
        weight_by: WeightBy = "episode",
        filters: Mapping[PathArg, str] | None = None,
    ) -> None:
        self._build(_specs(sources, filters), seed, weight_by)

    def _build(self, specs: tuple[_Spec, ...], seed: int, weight_by: WeightBy) -> None:
        self._specs = specs
        self._seed = _seed(seed)
        if weight_by not in ("episode", "frame"):
            raise ValueError(f"weight_by must be 'episode' or 'frame', got {weight_by!r}")
        self._weight_by: WeightBy = weight_by
        self._open: dict[str, Database] = {}
        try:
            self._absent: frozenset[str] = frozenset()
            if any(spec.filter is not None for spec in self._specs):
                from kinodb.kql._eval import fields_of  # deferred: kql builds on kdb

                # A filter field some sources lack is null there (as in a merged file).
                self._absent = fields_of(self._database(i, spec) for i, spec in enumerate(self._specs))
            self._src = [self._load(i, spec) for i, spec in enumerate(self._specs)]
        except BaseException:
            self.close()
            raise
        self._exact = [Fraction(repr(s.weight)) for s in self._specs]
        total = sum(self._exact)
        self._shares = np.array([float(w / total) for w in self._exact])
        self._cum_shares = np.cumsum(self._shares)
        self._global_starts: list[int] = [0, *np.cumsum([len(s.kept) for s in self._src]).tolist()]
        self._rng = _generator(self._seed, _TAG_SAMPLE)

    @staticmethod
    def builder() -> MixtureBuilder:
        """Start a builder: ``Mixture.builder().add(path, weight).seed(s).build()``.

        Example:
            >>> mix = kinodb.Mixture.builder().add("a.kdb", 4).add("b.kdb", 1).seed(7).build()
        """
        return MixtureBuilder()

    def _database(self, i: int, spec: _Spec) -> Database:
        key = os.path.realpath(spec.file)
        db = self._open.get(key)
        if db is None:
            try:
                # By the path given while it still names the file (messages then name it as
                # given); from another working directory, by the absolute path.
                same = os.path.abspath(spec.path) == spec.file
                db = self._open[key] = open_database(spec.path) if same else _open_as(spec.file, spec.path)
            except FileNotFoundError:
                msg = f"mixture source {i}: no such file"
                raise FileNotFoundError(errno.ENOENT, msg, spec.path) from None
            except IsADirectoryError:  # the reader's FolderError, said of the source
                raise FolderError.of(spec.path, f"mixture source {i}: ") from None
            except FormatError as exc:  # not a .kdb file, damaged, a newer format: say which source
                raise type(exc)(f"mixture source {i}: {exc}") from exc
            except OSError as exc:  # no permission, an I/O error: the same error, naming the source
                if exc.errno is None:
                    raise
                why = exc.strerror or os.strerror(exc.errno)
                raise type(exc)(exc.errno, f"mixture source {i}: {why}", spec.path) from exc
        return db

    def _load(self, i: int, spec: _Spec) -> _Source:
        where = f"source {i} ({spec.path})"
        db = self._database(i, spec)
        if spec.filter is None:
            kept = np.arange(len(db), dtype=np.int64)
        else:
            try:  # our own copy: made read-only below
                kept = np.array(db.query(spec.filter, absent=self._absent), dtype=np.int64)
            except QuerySyntaxError as exc:
                raise QuerySyntaxError(f"{where}: filter {spec.filter!r}: {exc}", exc.position) from exc
        if len(kept) == 0:
            why = (
                "it has no"
                if spec.filter is None
                else f"its filter {spec.filter!r} keeps none of its {len(db)}"
            )
            raise MixtureError(
                f"{where}: {why} episodes; a source must keep at least one (change or drop it)"
            )
        lengths = np.asarray(db._int_columns()["num_frames"], dtype=np.int64)[kept]
        starts = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        units = int(starts[-1]) if self._weight_by == "frame" else len(kept)
        if units == 0:
            raise MixtureError(
                f"{where}: its kept episodes have no frames; weight_by='frame' cannot draw from it"
            )
        kept.setflags(write=False)
        starts.setflags(write=False)
        return _Source(db, kept, starts, units, _round_keys(self._seed, _TAG_SOURCE, i))

    # -- description ------------------------------------------------------------------------

    @property
    def seed(self) -> int:
        """The seed every stream derives from."""
        return self._seed

    @property
    def weight_by(self) -> WeightBy:
        """``"episode"`` or ``"frame"``: what the shares count."""
        return self._weight_by

    def num_sources(self) -> int:
        """Number of sources."""
        return len(self._src)

    def num_episodes(self) -> int:
        """Kept episodes over all sources (``len(mix)``)."""
        return self._global_starts[-1]

    def num_frames(self) -> int:
        """Frames of the kept episodes over all sources."""
        return sum(int(s.starts[-1]) for s in self._src)

    def sources(self) -> list[MixtureSource]:
        """Describe each source: path, filter, kept episodes and frames, weight, shares."""
        eps = np.array([len(s.kept) for s in self._src], dtype=np.float64)
        frames = np.array([s.starts[-1] for s in self._src], dtype=np.float64)
        # Convert the weighted unit to the other one with each source's mean length.
        other = self._shares * (frames / eps if self._weight_by == "episode" else eps / frames)
        other /= other.sum()
        ep_share, fr_share = (self._shares, other) if self._weight_by == "episode" else (other, self._shares)
        return [
            MixtureSource(i, spec.path, spec.filter, int(eps[i]), int(frames[i]), spec.weight,
                          float(self._shares[i]), float(ep_share[i]), float(fr_share[i]))
            for i, spec in enumerate(self._specs)
        ]  # fmt: skip

    def database(self, source: int) -> Database:
        """The open `Database` of source ``source`` (read frames, metadata, images from it)."""
        return self._src[_check_source(source, len(self._src))].db

    # -- epochs -----------------------------------------------------------------------------

    def counts(self, n: int) -> NDArray[np.int64]:
        """Pairs per source in an epoch of ``n``: the largest-remainder apportionment.

        Each count is the floor or the ceiling of ``n * share``; the leftover seats go to
        the largest remainders (ties to the earlier source). Computed with exact
        fractions of the weights' decimal forms, so 4:3:3 and 0.4:0.3:0.3 agree exactly.
        A tiny weight gets what rounding gives it, which may be zero.
        """
        n = _non_negative(n, "n")
        total = sum(self._exact)
        quotas = [n * w / total for w in self._exact]
        floors = [math.floor(q) for q in quotas]
        order = sorted(range(len(quotas)), key=lambda i: (floors[i] - quotas[i], i))
        for i in order[: n - sum(floors)]:
            floors[i] += 1
        return np.array(floors, dtype=np.int64)

    def weighted_epoch(self, n: int, *, epoch_index: int = 0) -> NDArray[np.int64]:
        """``n`` ``(source, position)`` pairs in a seeded, shuffled, stratified order.

        Per-source counts are `counts` (exact up to rounding, not i.i.d.). Each source
        is cycled without replacement: its pairs, in the order they appear, walk through
        a fresh seeded permutation of its episodes (of its frames with
        ``weight_by="frame"``) per pass. Epoch ``e`` takes each source's draws
        ``e*k .. (e+1)*k - 1`` of that endless cycle, so with the same ``n`` every epoch
        no episode (frame) of a source repeats before all of that source has been drawn.

        Returns:
            int64 array of shape ``(n, 2)``: column 0 the source, column 1 the
            position of the episode in that source's file.

        Example:
            >>> pairs = mix.weighted_epoch(10_000, epoch_index=3)
            >>> np.bincount(pairs[:, 0])  # == mix.counts(10_000)
        """
        counts = self.counts(n)
        e = _non_negative(epoch_index, "epoch_index")
        n = int(counts.sum())
        order = _sorted_perms(_round_keys(self._seed, _TAG_ORDER, e)[:1], n)[0]
        out = np.empty((n, 2), dtype=np.int64)
        begin = 0
        for i, (src, k) in enumerate(zip(self._src, counts.tolist(), strict=True)):
            slots = np.sort(order[begin : begin + k])
            begin += k
            out[slots, 0] = i
            out[slots, 1] = src.kept[src.episodes_of(self._units(src, e * k, k), self._weight_by == "frame")]
        return out

    def epoch(self, n: int, *, epoch_index: int = 0, rank: int = 0, world_size: int = 1) -> NDArray[np.int64]:
        """This worker's slice of `weighted_epoch`: every ``world_size``-th pair from ``rank``.

        The slices of ranks ``0 .. world_size - 1`` are disjoint and together hold the
        epoch exactly; their lengths differ by at most one (pick ``n`` divisible by
        ``world_size`` when every rank must take the same number of steps).

        Example:
            >>> mine = mix.epoch(8192, epoch_index=epoch, rank=rank, world_size=world_size)
        """
        world_size = _non_negative(world_size, "world_size")
        rank = _non_negative(rank, "rank")
        if world_size == 0:
            raise ValueError("world_size must be at least 1")
        if not rank < world_size:
            raise ValueError(f"rank must be in 0..{world_size - 1} for world_size {world_size}, got {rank}")
        return np.ascontiguousarray(self.weighted_epoch(n, epoch_index=epoch_index)[rank::world_size])

    def _units(self, src: _Source, start: int, count: int) -> NDArray[np.int64]:
        """Draws ``start .. start + count - 1`` of a source's endless cycle of passes."""
        if count == 0:
            return np.empty(0, dtype=np.int64)
        first, last = start // src.units, (start + count - 1) // src.units
        passes = np.arange(first, last + 1, dtype=np.uint64)
        # Pass p's keys: mix64(base ^ mix64((p + 1) * golden)), one row per pass.
        with np.errstate(over="ignore"):
            table = _mix64(src.keys[None, :] ^ _mix64((passes + np.uint64(1)) * _GOLDEN)[:, None])
        if src.units <= _SORTED_MAX:
            flat = _sorted_perms(table[:, 0], src.units).reshape(-1)
            return flat[start - first * src.units : start - first * src.units + count]
        draws = np.arange(start, start + count, dtype=np.int64)
        which = draws // src.units - first
        offsets = (draws % src.units).astype(np.uint64)
        return _permute(offsets, src.units, table, which).astype(np.int64)

    # -- sampling and reading ---------------------------------------------------------------

    def sample(self) -> dict[str, Any]:
        """Draw one episode i.i.d. from the mixture's own seeded sampling stream.

        The source is drawn by share; within it an episode uniformly, or with
        ``weight_by="frame"`` a frame uniformly (so episodes in proportion to length).
        An unpickled copy restarts the stream from the seed.

        Returns:
            The episode as `Database.read_episode` gives it, plus ``source`` and
            ``position``; an extra array already called so moves to ``extra.NAME``.

        Example:
            >>> ep = mix.sample()
            >>> ep["source"], ep["position"], ep["actions"].shape
        """
        i = min(int(np.searchsorted(self._cum_shares, self._rng.random() * self._cum_shares[-1], "right")),
                len(self._src) - 1)  # fmt: skip
        src = self._src[i]
        unit = np.array([self._rng.integers(src.units)], dtype=np.int64)
        return self._read(i, int(src.kept[src.episodes_of(unit, self._weight_by == "frame")[0]]))

    def locate(self, index: int) -> tuple[int, int]:
        """``(source, position)`` of global index ``index`` (kept episodes, sources in order).

        Raises:
            EpisodeNotFoundError: ``index`` is out of range.
        """
        n = self.num_episodes()
        if isinstance(index, bool) or not isinstance(index, numbers.Integral) or not 0 <= index < n:
            raise EpisodeNotFoundError(
                f"global index {index!r} out of range: the mixture has {n} episodes (0..{n - 1})"
            )
        i = bisect.bisect_right(self._global_starts, int(index)) - 1
        return i, int(self._src[i].kept[int(index) - self._global_starts[i]])

    def read_global(self, index: int) -> dict[str, Any]:
        """Episode at global index ``index``, with ``source`` and ``position`` added.

        Example:
            >>> ep = mix.read_global(len(mix) - 1)  # the last kept episode of the last source

        Raises:
            EpisodeNotFoundError: ``index`` is out of range.
        """
        return self._read(*self.locate(index))

    def _read(self, source: int, position: int) -> dict[str, Any]:
        ep = self._src[source].db.read_episode(position)
        for key in ("source", "position"):
            if key in ep:  # an extra array of that name: keep it, as read_meta does for fields
                ep[f"extra.{key}"] = ep.pop(key)
        ep["source"], ep["position"] = source, position
        return ep

    # -- protocols --------------------------------------------------------------------------

    def __len__(self) -> int:
        return self.num_episodes()

    def __getitem__(self, index: int) -> dict[str, Any]:
        n = self.num_episodes()
        if isinstance(index, numbers.Integral) and not isinstance(index, bool) and -n <= index < 0:
            index += n
        return self.read_global(index)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for i in range(self.num_episodes()):
            yield self.read_global(i)

    def __enter__(self) -> Mixture:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close every source file."""
        opened, self._open = self._open, {}
        for db in opened.values():
            db.close()

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        # Each file by the absolute path resolved when the mixture was made: a relative one
        # would name another file in a process whose working directory differs; and at the
        # commit read here, as a `Database` pickles: a file appended to since shows the copy
        # the episodes it held then.
        specs = tuple((s.path, s.weight, s.filter) for s in self._specs)
        files = tuple(s.file for s in self._specs)
        pins = {db._abspath(): pin for db in self._open.values() if (pin := pin_of(db)) is not None}
        return (_restore, (specs, self._seed, self._weight_by, files, pins))

    def __repr__(self) -> str:
        return (
            f"<kinodb.Mixture {len(self._src)} sources, {self.num_episodes()} episodes, "
            f"weight_by={self._weight_by!r}, seed {self._seed}>"
        )


class MixtureBuilder:
    """Collect sources, then `build` a `Mixture` (the earlier Rust API's shape).

    Example:
        >>> mix = (kinodb.Mixture.builder()
        ...        .add("franka.kdb", 3, filter="success = true")
        ...        .add("widowx.kdb", 1)
        ...        .seed(0).weight_by("frame").build())
    """

    def __init__(self) -> None:
        self._entries: list[tuple[PathArg, float, str | None]] = []
        self._seed = DEFAULT_SEED
        self._weight_by: WeightBy = "episode"

    def add(self, path: PathArg, weight: float = 1.0, *, filter: str | None = None) -> MixtureBuilder:
        """Add a source with a relative weight and an optional KQL filter."""
        self._entries.append((path, weight, filter))
        return self

    def seed(self, seed: int) -> MixtureBuilder:
        """Set the seed (default 42)."""
        self._seed = seed
        return self

    def weight_by(self, mode: WeightBy) -> MixtureBuilder:
        """Count shares in ``"episode"`` (default) or ``"frame"`` units."""
        self._weight_by = mode
        return self

    def build(self) -> Mixture:
        """Open the sources and build the mixture (raises as `Mixture` does)."""
        return Mixture(self._entries, seed=self._seed, weight_by=self._weight_by)


def _restore(
    specs: tuple[tuple[str, float, str | None], ...],
    seed: int,
    weight_by: WeightBy,
    files: tuple[str, ...] | None = None,
    pins: Pins | None = None,
) -> Mixture:
    """Unpickle a `Mixture`: its sources as given, each opened from ``files`` (absolute
    paths; absent from a mixture pickled by an earlier kinodb) at the commit in ``pins``
    the original read (absent likewise)."""
    if files is None:
        return Mixture(list(specs), seed=seed, weight_by=weight_by)
    mixture = Mixture.__new__(Mixture)
    given = tuple(_Spec(p, w, kql, file) for (p, w, kql), file in zip(specs, files, strict=True))
    with pinned(pins or {}):
        mixture._build(given, seed, weight_by)
    return mixture


# -- spec checking ------------------------------------------------------------------------------


def _specs(sources: SourcesArg, filters: Mapping[PathArg, str] | None) -> tuple[_Spec, ...]:
    if isinstance(sources, (str, os.PathLike)):
        raise TypeError("sources must be a mapping {path: weight} or a list of entries, not one path")
    if isinstance(sources, (Mixture, Database)):
        raise TypeError(
            f"sources must be a mapping {{path: weight}} or a list of entries, not a {type(sources).__name__}; "
            "a Mixture is used as it is (KinoFrameDataset(mixture), KinoIterDataset(mixture)), and "
            "Mixture({s.path: s.weight for s in mixture.sources()}) rebuilds one with other options"
        )
    entries = list(sources.items()) if isinstance(sources, Mapping) else list(sources)
    if not entries:
        raise MixtureError("a mixture needs at least one source")
    by_path = {os.fspath(k): v for k, v in _filters(filters).items()}
    specs = []
    for i, entry in enumerate(entries):
        path, weight, kql = _entry(i, entry)
        if path in by_path:
            if kql is not None:
                raise MixtureError(f"source {i} ({path}) has a filter in its entry and in filters=; give one")
            kql = by_path[path]
        if kql is not None and not isinstance(kql, str):
            raise TypeError(f"source {i} ({path}): a filter must be a KQL string, got {kql!r}")
        specs.append(_Spec(path, _weight(weight, f"source {i} ({path})"), kql, os.path.abspath(path)))
    unknown = sorted(set(by_path) - {s.path for s in specs})
    if unknown:
        paths = [s.path for s in specs]
        raise MixtureError(f"filters= names {unknown}, which are not sources; the sources are {paths}")
    return tuple(specs)


def _filters(filters: Any) -> Mapping[PathArg, str]:
    """``filters=`` as given, checked to be ``{path: kql}``: one KQL string is not applied to
    every source, as ``kino mix --filter`` is, but refused with the way to say that."""
    if filters is None:
        return {}
    if isinstance(filters, Mapping):
        return filters
    if isinstance(filters, str):
        raise TypeError(
            f"filters must be a mapping {{path: kql}}, got one KQL string {filters!r}; for one filter "
            f"on every source give it to each: filters={{path: {filters!r} for path in sources}}, or "
            f"entries (path, weight, {filters!r}) in a list of sources"
        )
    raise TypeError(
        f"filters must be a mapping {{path: kql}}, got {reprlib.repr(filters)} ({type(filters).__name__})"
    )


def _entry(i: int, entry: Any) -> tuple[str, Any, Any]:
    if isinstance(entry, (str, os.PathLike)):
        return os.fspath(entry), 1.0, None
    if isinstance(entry, (tuple, list)) and 2 <= len(entry) <= 3 and isinstance(entry[0], (str, os.PathLike)):
        return os.fspath(entry[0]), entry[1], entry[2] if len(entry) == 3 else None
    raise TypeError(
        f"source {i}: expected a path, (path, weight) or (path, weight, filter), "
        f"got {reprlib.repr(entry)} ({type(entry).__name__})"
    )


def _weight(weight: Any, where: str) -> float:
    if isinstance(weight, bool) or not isinstance(weight, numbers.Real):
        raise TypeError(f"{where}: weight must be a number, got {weight!r}")
    try:
        w = float(weight)
    except OverflowError:  # an int or Fraction beyond a float's range
        raise MixtureError(
            f"{where}: weight is too large for a float (at most {sys.float_info.max:.4g}); weights are "
            "relative, so divide them all by the same number (4:3:3 is 0.4:0.3:0.3)"
        ) from None
    if not math.isfinite(w) or w <= 0:
        raise MixtureError(f"{where}: weight must be a positive finite number, got {w!r}")
    return w


def _seed(seed: Any) -> int:
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    return int(seed)


def _non_negative(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    return int(value)


def _check_source(source: Any, n: int) -> int:
    if isinstance(source, bool) or not isinstance(source, numbers.Integral) or not 0 <= int(source) < n:
        raise IndexError(f"source {source!r} out of range: the mixture has {n} sources (0..{n - 1})")
    return int(source)


# -- randomness -----------------------------------------------------------------------------


def _round_keys(seed: int, *spawn_key: int) -> NDArray[np.uint64]:
    """``_ROUNDS`` 64-bit keys from the SeedSequence stream ``(seed, spawn_key)``."""
    keys: NDArray[np.uint64] = np.random.SeedSequence(seed, spawn_key=spawn_key).generate_state(
        _ROUNDS, np.uint64
    )  # type: ignore[assignment]
    return keys


def _generator(seed: int, tag: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(seed, spawn_key=(tag,))))


def _mix64(z: NDArray[np.uint64]) -> NDArray[np.uint64]:
    """SplitMix64's finaliser: a bijective 64-bit mixer (arithmetic wraps)."""
    with np.errstate(over="ignore"):
        z = (z ^ (z >> _S30)) * _M1
        z = (z ^ (z >> _S27)) * _M2
    out: NDArray[np.uint64] = z ^ (z >> _S31)
    return out


def _sorted_perms(keys: NDArray[np.uint64], n: int) -> NDArray[np.int64]:
    """One uniform permutation of ``range(n)`` per key: rows of ``(len(keys), n)``.

    Sorts SplitMix64 outputs ``mix64(key + (j + 1) * golden)``; a stable sort makes the
    (vanishingly rare) ties deterministic. Independent of the NumPy version.
    """
    with np.errstate(over="ignore"):
        counter = (np.arange(1, n + 1, dtype=np.uint64) * _GOLDEN)[None, :]
        values = _mix64(keys[:, None] + counter)
    return np.argsort(values, axis=1, kind="stable").astype(np.int64)


def _permute(
    x: NDArray[np.uint64], n: int, table: NDArray[np.uint64], which: NDArray[np.int64] | None
) -> NDArray[np.uint64]:
    """Apply keyed pseudo-random permutations of ``range(n)`` to ``x`` (values below ``n``).

    A balanced Feistel network over the smallest even bit width covering ``n``, cycling
    back into ``range(n)`` (the walk ends: the permutation's cycle through ``x``
    returns to ``x``). Element ``j`` uses the round keys ``table[which[j]]``
    (``table[0]`` for all when ``which`` is None). Vectorised; memory O(len(x)). Meant for
    large ``n``: in tiny domains a Feistel network reaches only some permutations.
    """
    if n <= 1:
        return np.zeros_like(x)
    half = ((n - 1).bit_length() + 1) // 2
    shift, mask = np.uint64(half), np.uint64((1 << half) - 1)
    y: NDArray[np.uint64] = x.copy()
    todo = np.arange(len(y))
    while len(todo):
        z = y[todo]
        rows = None if which is None else which[todo]
        for r in range(_ROUNDS):
            key = table[0, r] if rows is None else table[rows, r]
            left, right = z >> shift, z & mask
            z = (right << shift) | (left ^ (_mix64(right ^ key) & mask))
        y[todo] = z
        todo = todo[z >= n]
    return y
