"""Map-style datasets: one item per episode, or one frame window per frame."""

from __future__ import annotations

import hashlib
import operator
import os
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import Dataset, get_worker_info

from kinodb import _images
from kinodb._warn import user_stacklevel
from kinodb._window_spec import camera_named, delta_cameras
from kinodb.errors import EpisodeNotFoundError, KinodbError, NameNotFoundError
from kinodb.kdb.reader import pin_of, pinned
from kinodb.mixture import Mixture
from kinodb.torch._collate import Batch, MixedBatch, PadSpec, Sample
from kinodb.torch._workers import settle_at_exit
from kinodb.windows import (
    FrameWindows,
    _frame_data,
    _num_given,
    _open_sources,
    _Source,
    camera_mapping_hint,
    prefetch_frames,
    stack_groups,
)
from kinodb.windows import Normalizers as _Normalizers
from kinodb.windows import normalized_arrays as _used

if TYPE_CHECKING:
    from kinodb.stats import Normalizer

__all__ = ["KinoDataset", "KinoFrameDataset", "KinoMapDataset"]

_NORMALIZE = (None, False, "mean_std", "min_max")


def resolved(source: Any) -> Any:
    """``source`` with its paths made absolute, against the working directory now: a dataset
    re-opens its files by path in each DataLoader worker, whose working directory may differ
    by then (a `Database` or `Mixture` pickles by absolute path itself)."""
    if isinstance(source, (str, os.PathLike)):
        return os.path.abspath(source)
    if isinstance(source, Sequence) and source and all(isinstance(p, (str, os.PathLike)) for p in source):
        return [os.path.abspath(p) for p in source]
    return source


def _int_index(index: Any, length: int) -> int:
    """``index`` as an int, counted from the end when negative: Python and NumPy integers
    and 0-d integer tensors (what ``torch.randperm`` as a sampler yields) are taken."""
    if isinstance(index, bool):
        raise TypeError(f"index must be an int, got {index!r}")
    try:
        index = operator.index(index)
    except TypeError:
        raise TypeError(f"index must be an int, got {index!r}") from None
    return int(index + length if -length <= index < 0 else index)


def threads_for(requested: int | None) -> int:
    """Threads for image decoding: as asked, else 1 inside a DataLoader worker (the
    workers already use the cores), else up to 4."""
    if requested is not None:
        if isinstance(requested, bool) or not isinstance(requested, int) or requested < 1:
            raise ValueError(f"decode_threads must be a positive int or None, got {requested!r}")
        return requested
    if get_worker_info() is not None:
        return 1
    return max(1, min(4, os.cpu_count() or 1))


_SPLIT_PIXELS = 1 << 20  # pixels from which the conversion runs on several threads


def to_unit_float(u8: np.ndarray, threads: int = 1) -> np.ndarray:
    """uint8 pixels as float32 in [0, 1]: ``x / 255`` in float32, in one pass (a cast
    then a division costs about three times as much).

    A large batch is split along its first axis over ``threads`` threads (NumPy divides
    without the GIL); every element goes through the same division either way.
    """
    if u8.ndim == 0 or threads <= 1 or u8.size < _SPLIT_PIXELS:
        out: np.ndarray = np.divide(u8, np.float32(255.0), dtype=np.float32)
        return out
    out = np.empty_like(u8, dtype=np.float32)  # the same memory layout (channels-last stays so)

    def part(a: int, b: int) -> None:
        np.divide(u8[a:b], np.float32(255.0), out=out[a:b], dtype=np.float32)

    _images.in_parts(len(u8), threads, part)
    return out


def check_normalize(normalize: Any) -> None:
    if normalize not in _NORMALIZE:
        raise ValueError(f"normalize must be None, False, 'mean_std' or 'min_max', got {normalize!r}")


def check_image_key(image_key: Any, *, mapping: bool = True) -> None:
    """Refuse an ``image_key`` of the wrong type, naming the forms it takes."""
    if image_key is None or image_key is False or isinstance(image_key, str):
        return
    if isinstance(image_key, Mapping) and mapping:
        return
    if (
        isinstance(image_key, Sequence)
        and not isinstance(image_key, bytes)
        and all(isinstance(cam, str) for cam in image_key)
    ):
        return
    forms = "a camera name, a list of camera names, " + (
        "a mapping {output name: camera or [camera per source]}, " if mapping else ""
    )
    raise TypeError(
        f"image_key must be {forms}None (the first camera) or False (no images), got {image_key!r}"
    )


def check_image_size(size: Any) -> tuple[int, int] | None:
    """``(H, W)`` from ``image_size``: None, a positive int N (``(N, N)``: the aspect ratio is
    not kept, see `warn_squashed`), or a pair of them."""

    def positive(v: Any) -> bool:
        return bool(isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_)) and v > 0)

    if size is None:
        return None
    if positive(size):
        return int(size), int(size)
    if isinstance(size, (tuple, list, np.ndarray)) and len(size) == 2 and all(positive(v) for v in size):
        return int(size[0]), int(size[1])
    numbers = (int, np.integer, tuple, list, np.ndarray)
    kind = ValueError if isinstance(size, numbers) and not isinstance(size, (bool, np.bool_)) else TypeError
    raise kind(
        f"image_size must be None, a positive int or a pair (H, W) of positive ints, such as (96, 96), "
        f"got {size!r}"
    )


def warn_squashed(image_size: Any, frames: Iterable[tuple[str, str, int, int]]) -> None:
    """Warn once when an int ``image_size`` N, which means (N, N), squashes non-square
    frames: ``frames`` are ``(camera, where, H, W)`` as stored."""
    if image_size is None or isinstance(image_size, (tuple, list, np.ndarray)):
        return
    n = int(image_size)
    for cam, where, h, w in frames:
        if h != w:
            keep = (n, int(n * w / h)) if h < w else (int(n * h / w), n)
            warnings.warn(
                f"image_size={n} means ({n}, {n}), which squashes camera {cam!r} ({h}x{w} in {where}) out "
                f"of its aspect ratio; pass image_size={keep} to keep it (or ({n}, {n}) to silence this)",
                UserWarning,
                stacklevel=user_stacklevel(),
            )
            return


def image_keys(
    image_key: Any, cameras: list[str], where: str, hint: Callable[[str], str] | None = None
) -> tuple[list[str], bool]:
    """``(cameras to load, several?)`` from ``image_key``: a name, a list, None (first), False
    (none), or a mapping of output names to each source's cameras (checked by the windows).
    A camera is named as stored or, as in ``delta_timestamps``, ``observation.images.CAM``
    (`camera_named`); the cameras returned, and items' keys, are the stored names.
    ``hint(camera)`` adds what to do about a camera ``where`` lacks (other sources')."""
    check_image_key(image_key)
    if image_key is False:
        return [], False
    if isinstance(image_key, Mapping):
        return list(image_key), True
    if image_key is None:
        return cameras[:1], False
    chosen: list[str] = []
    named: dict[str, str] = {}  # camera -> the name image_key gave it
    for name in [image_key] if isinstance(image_key, str) else list(image_key):
        cam = camera_named(name, cameras)  # LeRobot's observation.images.CAM names CAM
        if cam is None:
            more = f". {hint(name)}" if hint is not None else ""
            if not cameras and hint is None:
                more = "; pass image_key=False for windows without images"
            raise NameNotFoundError(f"{where}: no camera {name!r}; it has {cameras or 'no cameras'}{more}")
        earlier = named.setdefault(cam, name)
        if earlier != name:
            raise ValueError(
                f"image_key names camera {cam!r} twice, as {earlier!r} and as {name!r}; name it once"
            )
        chosen.append(cam)
    return chosen, not isinstance(image_key, str)


def pad_spec(fw: FrameWindows, *, normalized: bool) -> PadSpec | None:
    """How batches of ``fw``'s sources are padded to one layout, or None when the sources
    share one.

    Raises:
        KinodbError: the sources differ in a way no padding mends (the kind of value or
            the rank of an array): said when the dataset is made, not in a worker.
    """
    widest, common = fw._widest()
    dtypes = {
        key: torch.from_numpy(np.empty(0, dtype)).dtype
        for key, dtype in common.items()
        if not (normalized and key in ("state", "action"))  # normalised: float32 from every source
    }
    if not widest and not dtypes:
        return None
    return PadSpec(dict(widest), dtypes)


# True while a streaming dataset makes the map dataset it reads: it warns of the sources
# the filters leave empty itself, where it does not refuse them (`quiet_empty_sources`).
_EMPTY_SAID_BY_CALLER: ContextVar[bool] = ContextVar("kinodb_empty_said_by_caller", default=False)


@contextmanager
def quiet_empty_sources() -> Iterator[None]:
    """Within: datasets made do not warn of empty mixture sources (`warn_empty_sources`);
    the caller warns, or raises, once it knows which."""
    token = _EMPTY_SAID_BY_CALLER.set(True)
    try:
        yield
    finally:
        _EMPTY_SAID_BY_CALLER.reset(token)


def warn_empty_sources(source: Any, counts: np.ndarray, kql_filter: str | None, what: str) -> None:
    """Warn, naming each one, of the sources of mixture ``source`` that the filters leave
    without ``what`` (``counts`` per source, in order): a map dataset holds none of their
    samples, whatever their weight, and would otherwise train without them unawares."""
    if not isinstance(source, Mixture) or _EMPTY_SAID_BY_CALLER.get():
        return
    for i in np.flatnonzero(np.asarray(counts) == 0).tolist():
        info = source.sources()[i]
        filters = [f"kql_filter={kql_filter!r}"] if kql_filter else []
        filters += [f"its own filter {info.filter!r}"] if info.filter else []
        warnings.warn(
            f"mixture source {i} ({info.path}) keeps no {what} after the filters ({', '.join(filters)}): the "
            f"dataset holds none of its samples, whatever its weight; give the source its own filter, "
            f"Mixture(..., filters={{{info.path!r}: ...}}) (kql_filter applies to every source), or leave "
            "it out of the mixture",
            stacklevel=user_stacklevel(),
        )


@dataclass(frozen=True, slots=True)
class FileState:
    """What a dataset relies on in one of its files: the commit it read, a digest of the
    file's episodes (their counts and each one's frames, payload place, size and checksum,
    from the index), and a digest of the positions of those it keeps."""

    path: str
    commit: tuple[int, ...] | None
    episodes: bytes | None  # None where the index has no payload columns (format 0.1)
    kept: bytes
    identity: tuple[int, int] | None = None  # (st_dev, st_ino) of the file when the dataset was made


def pins_of(files: Sequence[FileState] | None) -> dict[str, tuple[tuple[int, int] | None, tuple[int, ...]]]:
    """The commits a re-opening process reads ``files`` at (`kinodb.kdb.reader.pinned`)."""
    return {f.path: (f.identity, f.commit) for f in files or () if f.commit is not None}


def file_identities(sources: Sequence[_Source]) -> list[FileState]:
    """Each source file's absolute path, committed state, episodes and kept episodes."""
    out = []
    for source in sources:
        identity, commit = pin_of(source.db) or (None, None)
        out.append(
            FileState(source.db._abspath(), commit, _episodes_of(source.db), _kept_of(source), identity)
        )
    return out


def _commit_of(db: Any) -> tuple[int, ...] | None:
    pin = pin_of(db)
    return None if pin is None else pin[1]


def _episodes_of(db: Any) -> bytes | None:
    """A digest of ``db``'s episodes from its index columns (O(episodes), no payload read):
    equal for two commits when every episode lies where it did with the same bytes, as
    after a commit that rewrote only the dataset JSON (``kino stats``)."""
    try:
        cols = db._cols
        columns = [cols[k] for k in ("num_frames", "payload_offset", "payload_length", "payload_crc")]
    except (KeyError, AttributeError):
        return None
    h = hashlib.blake2b(digest_size=16)
    h.update(np.array([db.num_episodes(), db.num_frames()], "<i8").tobytes())
    for col in columns:
        h.update(np.ascontiguousarray(col).tobytes())
    return h.digest()


def _kept_of(source: _Source) -> bytes:
    return hashlib.blake2b(np.asarray(source.kept, "<i8").tobytes(), digest_size=16).digest()


def check_unchanged(files: list[FileState], sources: Sequence[_Source] | None) -> list[str]:
    """Raise if a file re-opened (in a DataLoader worker) does not hold the episodes the
    dataset was made from: rewritten or replaced since (a file only appended to is re-opened
    at the commit the dataset read, `pins_of`), or edited so that its filter keeps others. ``sources`` are the re-opened ones, None when the re-open
    failed (then only files whose episodes changed are named); a file among ``files``
    but not among them is opened here to look.

    Returns the paths of files replaced by ones with the same episodes kept (a copy with
    other statistics, say): those are read as before, but a dataset that normalises checks
    that its statistics did not change.
    """
    from kinodb.kdb.reader import open_database  # deferred: only needed on a re-open

    now = {source.db._abspath(): source for source in sources or ()}
    same: list[str] = []
    for state in files:
        source = now.get(state.path)
        if source is not None:
            got, episodes = _commit_of(source.db), _episodes_of(source.db)
        else:
            try:
                with open_database(state.path) as db:
                    got, episodes = _commit_of(db), _episodes_of(db)
            except Exception:  # gone or unreadable: the caller's error says so
                continue
        if got == state.commit:
            continue
        if state.episodes is not None and episodes == state.episodes:
            if sources is None:  # the same episodes: the caller's error is the one to give
                continue
            if source is not None and _kept_of(source) == state.kept:
                same.append(state.path)
                continue
            raise KinodbError(
                f"{state.path} changed since this dataset was made: its episodes are the same, but their "
                "metadata differs and the filter now keeps other episodes than the dataset indexes; make "
                "the dataset (and the DataLoader) again after replacing a file it reads"
            )
        was = state.commit
        what = (
            f"commit {was[0]} with {was[3]} episodes then, commit {got[0]} with {got[3]} now"
            if was is not None and got is not None
            else "another file now"
        )
        raise KinodbError(
            f"{state.path} changed since this dataset was made ({what}); a DataLoader worker re-opens the "
            "files by path, and would read other episodes than the dataset indexes: make the dataset "
            "(and the DataLoader) again after rewriting or replacing a file it reads"
        )
    return same


def checked_normalizers(
    made: _Normalizers, sources: Sequence[_Source], mode: str, used: Sequence[str], paths: list[str]
) -> _Normalizers:
    """``made`` (the dataset's normalisers), once the statistics of files ``paths``, which
    were committed again since, are found to map the same way.

    Raises:
        KinodbError: their statistics changed (or are gone): a worker would otherwise
            normalise with other numbers than the dataset was made with.
    """
    fix = (
        "make the dataset (and the DataLoader) again to normalise with the new statistics, so that every "
        "process uses the same numbers"
    )
    try:
        now = _Normalizers(sources, mode, used)
    except KinodbError as exc:
        raise KinodbError(
            f"the statistics of {', '.join(paths)} changed since this dataset was made, and the dataset's "
            f"normalize={mode!r} cannot use them now ({exc}); {fix}"
        ) from None
    changed = made.differences(now)
    if changed:
        raise KinodbError(
            f"the statistics normalize={mode!r} uses changed since this dataset was made ({'; '.join(changed)}: "
            "kino stats stored new ones); a DataLoader worker would normalise with other numbers than the "
            f"dataset was made with: {fix}"
        )
    return made


class _Base(Dataset[dict[str, Any]]):
    """Shared plumbing: lazy opening (per process), pickling by specification."""

    _to_tensor: bool = True
    _channels_last = False
    _uint8 = False

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_opened"] = None  # re-opened lazily in the worker
        return state

    def _options(
        self,
        image_size: Any,
        normalize: Any,
        resize: str,
        to_tensor: bool,
        threads: int | None,
        channels_last: bool = False,
        image_dtype: str | None = None,
    ) -> None:
        """Check and keep the options every dataset shares (now, not later in a worker)."""
        if image_dtype not in (None, "uint8", "float32"):
            raise ValueError(f"image_dtype must be None, 'uint8' or 'float32', got {image_dtype!r}")
        check_normalize(normalize)
        _images._filter(resize)
        threads_for(threads)
        if not isinstance(channels_last, (bool, np.bool_)):
            raise ValueError(f"channels_last must be True or False, got {channels_last!r}")
        self._size = check_image_size(image_size)
        self._resize, self._normalize, self._to_tensor = resize, normalize, bool(to_tensor)
        self._threads, self._channels_last = threads, bool(channels_last)
        self._uint8 = image_dtype == "uint8" or (image_dtype is None and normalize is False)

    def _tensor(self, value: Any) -> Any:
        return torch.from_numpy(value) if self._to_tensor and isinstance(value, np.ndarray) else value

    def _image(self, u8: np.ndarray) -> Any:
        """Frames as the options ask: uint8 (``image_dtype``, or ``normalize=False``), else
        float in [0, 1]."""
        if self._uint8:
            return self._tensor(u8)
        return self._tensor(to_unit_float(u8, threads_for(self._threads)))


class KinoFrameDataset(_Base):
    """One frame window per frame of the selected episodes.

    Items hold ``state`` (obs_horizon, S) for frames ``t-obs_horizon+1 .. t``, ``action``
    (action_horizon, A) for ``t .. t+action_horizon-1``, ``state_is_pad`` and
    ``action_is_pad`` (True where a frame lies outside the episode: the value there is
    the edge frame's, or zero with ``pad="zero"``), ``image`` (obs_horizon, C, H, W) for
    one camera or ``images`` ``{camera: ...}`` for a list, ``image_is_pad``,
    ``episode_index`` (the episode's position in its file), ``frame_index``, ``source``
    and ``task``. A DataLoader batch is one vectorised gather (``__getitems__``).

    Args:
        source: A path, a `Database`, a list of paths, or a `Mixture`.
        obs_horizon: Frames of observation history.
        action_horizon: Frames of the action chunk.
        kql_filter: Keep only matching episodes.
        image_key: A camera, a list of cameras, None (the first camera) or False (no images);
            a camera may be named ``observation.images.CAM`` as in ``delta_timestamps``
            (items still name it ``CAM``); for a mixture of robots whose cameras are named differently, a mapping from an
            output name to each source's camera, ``{"front": ["image_0", "cam_high"]}``
            (items then hold ``images`` under the output names).
        image_size: ``(H, W)`` to resize frames to (antialiased), or None for stored size.
            An int N means ``(N, N)``: unlike torchvision's ``Resize(N)`` it does not keep
            the aspect ratio, and it warns when a selected camera's frames are not square.
        delta_timestamps: LeRobot's ``{feature: [seconds, ...]}``; overrides the horizons
            for the features it names, converted through each episode's fps (``state``,
            ``action`` and the other cameras keep their horizons). With ``image_key=None``
            the cameras it names are the ones loaded.
        pad: ``"edge"`` or ``"zero"``.
        normalize: None (images float in [0, 1]), False (images uint8, normalise on the
            GPU), ``"mean_std"`` or ``"min_max"`` (states and actions normalised with the
            statistics stored by ``kino stats``; images float).
        resize: ``"bilinear"``, ``"area"``, ``"bicubic"`` or ``"nearest"``.
        to_tensor: Return torch tensors (else NumPy arrays).
        decode_threads: Threads decoding images (None: 1 in DataLoader workers, else up to 4).
        channels_last: Give images channels-last memory: the same (To, C, H, W) shape and
            values, strided over (To, H, W, C) pixels as stored and decoded, so no
            transpose is made (``.contiguous()`` makes one). Saves the loader a byte-strided
            copy per frame, most with uint8 frames converted on the GPU. A batch's
            ``image.flatten(0, 1)`` is a ``torch.channels_last`` (B*To, C, H, W) tensor.
        image_dtype: ``"uint8"`` or ``"float32"`` (in [0, 1]) frames whatever ``normalize``
            says, e.g. normalised states and actions with uint8 frames for the GPU; None:
            uint8 with ``normalize=False``, else float32.

    Example:
        >>> ds = KinoFrameDataset("pick.kdb", obs_horizon=2, action_horizon=16, image_size=(96, 96))
        >>> loader = DataLoader(ds, batch_size=256, shuffle=True, num_workers=2)
    """

    def __init__(
        self,
        source: Any,
        *,
        obs_horizon: int = 1,
        action_horizon: int = 1,
        kql_filter: str | None = None,
        image_key: str | Sequence[str] | Mapping[str, str | Sequence[str]] | bool | None = None,
        image_size: Any = None,
        delta_timestamps: Mapping[str, Sequence[float]] | None = None,
        pad: str = "edge",
        normalize: Any = None,
        resize: str = "bilinear",
        to_tensor: bool = True,
        decode_threads: int | None = None,
        channels_last: bool = False,
        image_dtype: str | None = None,
    ) -> None:
        check_image_key(image_key)
        self._options(image_size, normalize, resize, to_tensor, decode_threads, channels_last, image_dtype)
        window_args: dict[str, Any] = dict(obs_horizon=obs_horizon, action_horizon=action_horizon,
                                           kql_filter=kql_filter, delta_timestamps=delta_timestamps, pad=pad)  # fmt: skip
        chosen: Any
        if isinstance(image_key, Mapping):  # output names: delta_timestamps may name them
            chosen, self._several = dict(image_key), True
            fw = FrameWindows(source, cameras=chosen, **window_args)
        elif image_key is None:
            fw = FrameWindows(source, **window_args)
            named = fw.cameras  # the cameras delta_timestamps names, if any
            if named:  # those cameras, not the first one besides
                chosen, self._several = named, len(named) > 1
            else:
                chosen, self._several = image_keys(None, fw._all_cameras, fw._sources[0].where)
                if chosen:
                    fw = FrameWindows(source, cameras=chosen, **window_args)
        else:
            # The cameras are known before any source is checked for those delta_timestamps
            # names: one it leaves out is the message, not a later source that lacks it.
            opened = _open_sources(source, kql_filter)
            first, cams = opened[0], opened[0].camera_names()
            num_given = _num_given(source)
            hint = (lambda cam: camera_mapping_hint(opened, num_given, cam)) if num_given > 1 else None
            chosen, self._several = image_keys(image_key, cams, first.where, hint)
            named = delta_cameras(delta_timestamps, cams, where=first.where, hint=hint)
            left_out = [cam for cam in named if cam not in chosen]
            if left_out:
                raise KinodbError(
                    f"delta_timestamps names camera {left_out[0]!r}, which image_key={image_key!r} leaves "
                    f"out; add it to image_key (a list of cameras: {[*chosen, *left_out]!r}) or drop it "
                    "from delta_timestamps"
                )
            fw = FrameWindows(source, cameras=chosen or None, **window_args)
        self._args = dict(obs_horizon=obs_horizon, action_horizon=action_horizon, kql_filter=kql_filter,
                          delta_timestamps=delta_timestamps, pad=pad, cameras=chosen or None)  # fmt: skip
        if self._size is None:  # frames stacked as stored: one size per camera, checked now
            fw.check_image_sizes()
        warn_squashed(image_size, [
            (names[cam], source.where, hwc[0], hwc[1])
            for cam in fw.cameras
            for source, names, (_, hwc) in zip(fw._sources, fw._stored, fw.camera_layouts(cam), strict=True)
        ])  # fmt: skip
        self._source = resolved(source)  # re-opened by path in DataLoader workers
        self._len = len(fw)
        warn_empty_sources(source, fw.counts_by_source(), kql_filter, "windows")
        self._files = file_identities(fw._sources)
        norm = _Normalizers(fw._sources, normalize, _used(fw)) if isinstance(normalize, str) else None
        self._norms = norm  # pickled with the dataset: workers normalise with these numbers
        self._pad = pad_spec(fw, normalized=norm is not None)
        self._opened: tuple[FrameWindows, _Normalizers | None] | None = (fw, norm)

    def _open(self) -> tuple[FrameWindows, _Normalizers | None]:
        settle_at_exit()  # in a spawned worker: no SIGABRT when it exits mid-hand-over
        if self._opened is None:
            try:
                with pinned(pins_of(self._files)):  # read at the commits the dataset read
                    fw = FrameWindows(self._source, **self._args)  # type: ignore[arg-type]
            except Exception:
                check_unchanged(self._files, None)  # a file rewritten since: say that instead
                raise
            again = check_unchanged(self._files, fw._sources)
            norm = self._norms
            if norm is not None and again:
                norm = checked_normalizers(norm, fw._sources, self._normalize, _used(fw), again)
            self._opened = (fw, norm)
        return self._opened

    @property
    def normalizers(self) -> dict[int, dict[str, Normalizer]] | None:
        """The normalisers ``normalize`` applies, None without: per source id (the items'
        ``source``), a `kinodb.stats.Normalizer` per key (``"state"``, ``"action"``).
        `Normalizer.invert` takes a policy's output back to the data's units (torch
        tensors stay tensors on their device).

        Example:
            >>> actions = ds.normalizers[0]["action"].invert(policy(batch))
        """
        return None if self._norms is None else self._norms.by_source()

    @property
    def windows(self) -> FrameWindows:
        """The underlying `FrameWindows` (NumPy batches, no torch)."""
        return self._open()[0]

    def __len__(self) -> int:
        return self._len

    def schema_keys(self) -> np.ndarray:
        """``(state_dim, action_dim)`` of every sample, for `SchemaBatchSampler`."""
        fw = self.windows
        parts = []
        for source in fw._sources:
            table = source.db._columns(("state_dim", "action_dim"))
            dims = np.stack([np.asarray(table["state_dim"])[source.kept],
                             np.asarray(table["action_dim"])[source.kept]], axis=1)  # fmt: skip
            parts.append(np.repeat(dims, source.lengths, axis=0))
        return np.concatenate(parts).astype(np.int64)

    def batch_keys(self) -> np.ndarray:
        """What must agree within a batch the default collate stacks, per sample (int64):
        `schema_keys` ``(state_dim, action_dim)``, then for each camera its frames' ``(H, W,
        C)`` (``C`` alone with ``image_size``, which brings every source to one size).
        `SchemaBatchSampler` groups by these rows."""
        keys = self.schema_keys()
        fw = self.windows
        if not fw.cameras:
            return keys
        per_source = np.array(
            [[d for cam in fw.cameras for d in fw.camera_layouts(cam)[s][1][2 if self._size else 0 :]]
             for s in range(fw.num_sources)],
            dtype=np.int64,
        )  # fmt: skip
        return np.concatenate([keys, np.repeat(per_source, fw.sample_counts(), axis=0)], axis=1)

    def __getitem__(self, index: int) -> dict[str, Any]:
        """One window: a `Sample` (a dict) that carries the dataset's widths, so that
        `pad_collate` pads a batch of them to the widest of all sources, and the default
        collate names the fix when their widths differ."""
        index = _int_index(index, self._len)
        sample: Sample = self.__getitems__([index])[0]
        return sample

    def __getitems__(self, indices: Sequence[int]) -> Any:
        """A whole batch, gathered at once; collates to stacked tensors with no per-sample work."""
        fw, norm = self._open()
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        groups = fw.lowdim_groups(idx, tasks=True)
        tasks = groups[0][1]["task"] if len(groups) == 1 else np.empty(len(idx), dtype=object)
        for sel, arrays in groups:
            if len(groups) > 1:
                tasks[sel] = arrays["task"]
            del arrays["task"]
            if norm is not None:
                norm.apply(int(arrays["source"][0]), arrays, zero_pad=fw._pad == "zero")
        try:
            arrays = stack_groups(groups)
        except KinodbError:
            return self._mixed(fw, idx, groups, tasks)
        return Batch(self._finish(fw, idx, arrays, tasks), len(idx), self._pad)

    def _finish(
        self, fw: FrameWindows, idx: np.ndarray, arrays: dict[str, Any], tasks: np.ndarray
    ) -> dict[str, Any]:
        out: dict[str, Any] = {k: self._tensor(v) for k, v in arrays.items()}
        if fw.cameras:
            images = fw.images(idx, size=self._size, resize=self._resize, threads=threads_for(self._threads),
                               channels_last=self._channels_last)  # fmt: skip
            conv = {cam: self._image(v) for cam, v in images.items()}
            if self._several:
                out["images"] = conv
            else:
                out["image"] = next(iter(conv.values()))
        out["task"] = tasks.tolist()
        return out

    def _mixed(
        self,
        fw: FrameWindows,
        idx: np.ndarray,
        groups: list[tuple[np.ndarray, dict[str, Any]]],
        tasks: np.ndarray,
    ) -> MixedBatch:
        """Samples of sources with different schemas, gathered per source: `pad_collate`
        pads them as whole arrays, and the default collate names it."""
        return MixedBatch(
            [(sel, self._finish(fw, idx[sel], arrays, tasks[sel])) for sel, arrays in groups],
            len(idx),
            self._pad,
        )


class KinoMapDataset(_Base):
    """One item per episode: whole arrays and decoded frames.

    Items hold ``action`` (T, A), ``state`` (T, S), ``reward`` (T,), ``image`` (T, C, H,
    W) float in [0, 1] (uint8 with ``normalize=False``) or ``images`` ``{camera: ...}``
    for a list of cameras, ``task``, ``embodiment``, ``success`` (1, 0, or -1 when
    unknown), ``episode_id``, ``episode_index`` (position in its file) and ``source``.
    Episodes differ in length, so batch them with `pad_collate` (or ``batch_size=None``).
    An episode whose source data had no rewards holds zeros as ``reward``, the writer's
    placeholder (`kinodb.stats.placeholder_rewards` tells them apart; frame windows that
    ask for rewards refuse such sources).

    Args:
        source: A path, a `Database`, a list of paths, or a `Mixture`.
        kql_filter: Keep only matching episodes.
        image_key: A camera, a list of cameras, None (the first camera; in an episode without
            it, that episode's first) or False (no images); a camera may be named
            ``observation.images.CAM`` (items still name it ``CAM``).
        image_size: ``(H, W)``, or None for the stored size; an int N means ``(N, N)``
            (as for `KinoFrameDataset`: the aspect ratio is not kept).
        to_tensor: Return torch tensors (else NumPy arrays).
        normalize: As for `KinoFrameDataset`.
        resize: As for `KinoFrameDataset`.
        decode_threads: As for `KinoFrameDataset`.
        channels_last: As for `KinoFrameDataset`.
        image_dtype: As for `KinoFrameDataset`.

    Example:
        >>> ds = KinoMapDataset("pick.kdb", kql_filter="success = true", image_size=(96, 96))
        >>> ep = ds[0]; ep["action"].shape, ep["image"].shape
    """

    def __init__(
        self,
        source: Any,
        *,
        kql_filter: str | None = None,
        image_key: str | Sequence[str] | bool | None = None,
        image_size: Any = None,
        to_tensor: bool = True,
        normalize: Any = None,
        resize: str = "bilinear",
        decode_threads: int | None = None,
        channels_last: bool = False,
        image_dtype: str | None = None,
    ) -> None:
        if isinstance(image_key, Mapping):
            raise ValueError(
                "image_key as a mapping of each source's cameras is for frame windows (KinoFrameDataset, or "
                "horizons on the streaming datasets); give episode datasets a camera or a list of cameras"
            )
        check_image_key(image_key, mapping=False)
        self._options(image_size, normalize, resize, to_tensor, decode_threads, channels_last, image_dtype)
        self._source, self._filter = source, kql_filter
        self._opened: tuple[list[_Source], np.ndarray, _Normalizers | None] | None = None
        self._files: list[FileState] | None = None
        self._norms: _Normalizers | None = None
        sources = self._open()[0]
        self._cams, self._several = image_keys(image_key, sources[0].camera_names(), sources[0].where)
        # None: the first source's first camera, or, in an episode without it, that
        # episode's first camera (robots of a merged file or a mixture name theirs apart).
        self._first = image_key is None and bool(self._cams)
        for src in sources:  # every episode has the cameras asked for, checked now, not mid-epoch
            for cam in [None] if self._first else self._cams:
                src.require_camera(cam, "episodes without images")
        self._len = int(self._open()[1][-1])
        warn_squashed(image_size, [
            (cam, src.where, int(c.shape[1]), int(c.shape[2]))
            for src in sources if len(src.kept)
            for cam in self._cams
            if (c := src.cameras(0).get(cam)) is not None
        ])  # fmt: skip
        warn_empty_sources(source, self.episodes_by_source(), kql_filter, "episodes")
        self._source = resolved(source)  # opened as given above; re-opened by path in DataLoader workers

    def _open(self) -> tuple[list[_Source], np.ndarray, _Normalizers | None]:
        settle_at_exit()  # in a spawned worker: no SIGABRT when it exits mid-hand-over
        if self._opened is None:
            try:
                with pinned(pins_of(self._files)):  # read at the commits the dataset read
                    sources = _open_sources(self._source, self._filter)
            except Exception:
                if self._files is not None:
                    check_unchanged(self._files, None)  # a file rewritten since: say that instead
                raise
            norm = self._norms
            if self._files is None:
                self._files = file_identities(sources)
                if isinstance(self._normalize, str):
                    norm = self._norms = _Normalizers(sources, self._normalize)
            else:
                again = check_unchanged(self._files, sources)
                if norm is not None and again:
                    norm = checked_normalizers(norm, sources, self._normalize, ("states", "actions"), again)
            starts = np.concatenate([[0], np.cumsum([len(s.kept) for s in sources])]).astype(np.int64)
            self._opened = (sources, starts, norm)
        return self._opened

    @property
    def normalizers(self) -> dict[int, dict[str, Normalizer]] | None:
        """As `KinoFrameDataset.normalizers`."""
        return None if self._norms is None else self._norms.by_source()

    def __len__(self) -> int:
        return self._len

    def episodes_by_source(self) -> np.ndarray:
        """Items (episodes) per source given, 0 for those a filter left empty, in index order."""
        out = np.zeros(_num_given(self._source), dtype=np.int64)
        for source in self._open()[0]:
            out[source.index] = len(source.kept)
        return out

    def schema_keys(self) -> np.ndarray:
        """``(state_dim, action_dim)`` of every item, for `SchemaBatchSampler`."""
        parts = []
        for source in self._open()[0]:
            table = source.db._columns(("state_dim", "action_dim"))
            parts.append(np.stack([np.asarray(table["state_dim"])[source.kept],
                                   np.asarray(table["action_dim"])[source.kept]], axis=1))  # fmt: skip
        return np.concatenate(parts).astype(np.int64)

    def __getitem__(self, index: int) -> dict[str, Any]:
        sources, starts, norm = self._open()
        index = _int_index(index, self._len)
        if not 0 <= index < self._len:
            raise EpisodeNotFoundError(f"item {index} out of range: the dataset has {self._len} episodes")
        s = int(np.searchsorted(starts, index, side="right")) - 1
        source = sources[s]
        j = int(index - starts[s])
        ep = int(source.kept[j])
        db = source.db
        meta = db.read_meta(ep)
        arrays: dict[str, Any] = {"action": db.read_array(ep, "actions"), "state": db.read_array(ep, "states"),
                                  "reward": db.read_array(ep, "rewards")}  # fmt: skip
        if norm is not None:
            norm.apply(source.index, arrays)
        out: dict[str, Any] = {k: self._tensor(np.array(v)) for k, v in arrays.items()}
        if self._cams:
            cams = self._cams
            if self._first and cams[0] not in (have := source.cameras(j)):
                if not have:  # a format 0.1 file: only its first episode was checked up front
                    raise KinodbError(
                        f"{source.where}: episode {int(source.kept[j])} has no cameras; leave such episodes "
                        "out with kql_filter, or pass image_key=False for episodes without images"
                    )
                cams = [next(iter(have))]
            images = {cam: self._image(self._decode(source, j, cam)) for cam in cams}
            if self._several:
                out["images"] = images
            else:
                out["image"] = images[cams[0]]
        success = meta["success"]
        out.update(task=meta["task"], embodiment=meta["embodiment"], episode_id=meta["episode_id"],
                   success=-1 if success is None else int(success), episode_index=ep, source=source.index)  # fmt: skip
        return Sample(out)  # a dict; collated with its frames' memory layout kept

    def _decode(self, source: _Source, j: int, cam: str) -> np.ndarray:
        c = source.cameras(j).get(cam)
        ep = int(source.kept[j])
        if c is None:
            raise NameNotFoundError(
                f"{source.where}: episode {ep} has no camera {cam!r}; leave such episodes out with "
                "kql_filter, or pass image_key=False for episodes without images"
            )
        T, h, w, ch = c.shape
        prefetch_frames(source.db, c)  # every frame, from a map advised random: in large requests
        last = self._channels_last
        if c.codec == "raw" and self._size in (None, (h, w)):
            frames = np.ndarray((T, h, w, ch), np.uint8, buffer=source.db._map(), offset=c.data_offset)
            # Always a copy: the items own their memory (one channel transposes without a copy).
            if last:
                return np.array(frames).transpose(0, 3, 1, 2)  # type: ignore[no-any-return]
            return np.array(frames.transpose(0, 3, 1, 2), order="C")
        size = self._size or (h, w)
        out = np.empty((T, *size, ch) if last else (T, ch, *size), np.uint8)
        jobs = [(t, _frame_data(source, c, t), c.codec, (h, w, ch), (source, j, cam, t)) for t in range(T)]
        _images.decode_into(
            out, jobs, self._size, self._resize, threads_for(self._threads), channels_last=last
        )
        return out.transpose(0, 3, 1, 2) if last else out


KinoDataset = KinoMapDataset
