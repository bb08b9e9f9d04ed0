"""Frame windows over ``.kdb`` files: observation history and action chunks, batched.

A window is what diffusion policy, ACT and VLA training consume per sample: for frame t,
the states (and images) of frames ``t-h+1 .. t`` and the actions of ``t .. t+k-1``, with
masks where a frame falls outside the episode. `FrameWindows` serves any batch of them as
one vectorised gather over the memory map per array: each window row is located by byte
offset and copied straight out of the map, with no per-sample Python loop. Images are
decoded only for the frames a window needs. Windows are read at random, so each file's map
is advised so (`Database._advise_random`): on a cold page cache a window reads the pages it
needs, not the read-ahead around them. This module needs NumPy only (Pillow for images);
`kinodb.torch` and the gRPC server build on it. `stack_groups` stacks per-source parts of a
batch into one.

Where the pieces live: `kinodb._window_spec` (which frames a window takes per feature),
`kinodb._window_sources` (one file's kept episodes and where its arrays lie),
`kinodb._window_checks` (what the index says about those episodes, and the messages naming
the ones that differ), `kinodb._window_images` (`_ImageWindows`, the base of
`FrameWindows` that decodes a batch's frames and checks its cameras) and
`kinodb._window_normalizers` (`Normalizers`, per-source normalisation from stored
statistics). The names other modules import from here stay importable here
(`frame_tasks`, `prefetch_frames`, `_Source`, `_open_sources`, `_frame_data`, `_num_given`,
`LOOKUP_FRAMES`, `camera_mapping_hint`, `Normalizers`, `normalized_arrays`).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from kinodb._warn import user_stacklevel
from kinodb._window_checks import camera_mapping_hint as camera_mapping_hint
from kinodb._window_checks import off_grid_fix
from kinodb._window_images import _ImageWindows
from kinodb._window_normalizers import Normalizers as Normalizers
from kinodb._window_normalizers import normalized_arrays as normalized_arrays
from kinodb._window_sources import LOOKUP_FRAMES as LOOKUP_FRAMES
from kinodb._window_sources import _frame_data as _frame_data
from kinodb._window_sources import _num_given as _num_given
from kinodb._window_sources import _open_sources as _open_sources
from kinodb._window_sources import _Source as _Source
from kinodb._window_sources import frame_tasks as frame_tasks
from kinodb._window_sources import prefetch_frames as prefetch_frames
from kinodb._window_spec import _ALIASES, Pad, WindowSpec, _build_spec, _camera_map
from kinodb.errors import EpisodeNotFoundError, KinodbError, NameNotFoundError
from kinodb.kdb._layout import KIND_ARRAY
from kinodb.kdb.reader import Database
from kinodb.mixture import Mixture
from kinodb.stats import placeholder_mask

__all__ = ["FrameWindows", "WindowSpec", "stack_groups"]

_TOLERANCE_S = 1e-4  # LeRobot's tolerance for timestamps that must sit on the frame grid


class FrameWindows(_ImageWindows):
    """One sample per frame of the selected episodes; batches of windows by index.

    Args:
        source: A path, a `Database`, a list of paths, or a `Mixture` (its sources and
            per-source filters; samples run over every kept frame, sources in order).
        obs_horizon: Frames of observation history: states and images of frames
            ``t-obs_horizon+1 .. t``.
        action_horizon: Actions of frames ``t .. t+action_horizon-1``.
        kql_filter: Keep only the episodes matching this query (in every file).
        delta_timestamps: LeRobot's form, ``{feature: [seconds, ...]}``; features are
            ``observation.state``/``state``, ``action``, ``next.reward``/``reward``,
            ``observation.images.CAM``/``CAM``/``image``, or an extra array's name.
            Overrides the horizons for the features it names; ``state``, ``action`` and
            the cameras it does not name keep their horizons (in frames).
        pad: ``"edge"`` repeats the first/last frame outside the episode, ``"zero"``
            fills zeros; either way ``KEY_is_pad`` marks those entries.
        cameras: Camera names for images (None: the first camera of the first episode
            when images are asked for), or a mapping ``{name: camera}`` or ``{name:
            [camera of source 0, camera of source 1, ...]}`` that gives each source's own
            camera one output name (robots whose cameras are named differently).

    `images`, `encoded` and the camera checks come from `_ImageWindows`
    (`kinodb._window_images`).

    Example:
        >>> fw = FrameWindows("pick.kdb", obs_horizon=2, action_horizon=16)
        >>> batch = fw.lowdim(np.arange(256))
        >>> batch["state"].shape, batch["action"].shape, batch["action_is_pad"].shape
    """

    def __init__(
        self,
        source: Any,
        *,
        obs_horizon: int = 1,
        action_horizon: int = 1,
        kql_filter: str | None = None,
        delta_timestamps: Mapping[str, Sequence[float]] | None = None,
        pad: Pad = "edge",
        cameras: str | Sequence[str] | Mapping[str, str | Sequence[str]] | None = None,
    ) -> None:
        for name, value in (("obs_horizon", obs_horizon), ("action_horizon", action_horizon)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if pad not in ("edge", "zero"):
            raise ValueError(f"pad must be 'edge' or 'zero', got {pad!r}")
        self._pad: Pad = pad
        self._step_rows: dict[tuple[float, ...], tuple[NDArray[np.int64], bool, bool]] = {}
        self._reaches: dict[tuple[float, ...], _Reach | None] = {}
        self._shifts: dict[tuple[tuple[float, ...], int], NDArray[np.int64]] = {}
        self._widest_cache: tuple[dict[str, tuple[int, ...]], dict[str, np.dtype[Any]]] | None = None
        self._source_arg = source
        if delta_timestamps is not None and not isinstance(delta_timestamps, Mapping):
            raise TypeError(
                f"delta_timestamps must map a feature to its offsets in seconds, as LeRobot's does, e.g. "
                f"{{'observation.state': [-0.1, 0.0], 'action': [0.0, 0.1]}}; got {type(delta_timestamps).__name__} "
                f"{delta_timestamps!r:.60}"
            )
        self._delta_given = dict(delta_timestamps or {})  # the user's names, for messages
        self._filter_given = kql_filter
        self._sources = _open_sources(source, kql_filter)
        self._starts = np.concatenate([[0], np.cumsum([s.starts[-1] for s in self._sources])]).astype(
            np.int64
        )
        first = self._sources[0]
        all_cams = first.camera_names()  # over every kept episode, not the first one alone
        self._all_cameras = all_cams
        if isinstance(cameras, Mapping):  # output name -> each source's own camera
            given = _camera_map(cameras, _num_given(source))
            stored = [given[src.index] for src in self._sources]
            where = "the image_key mapping (by its output names)"
            self.spec = _build_spec(int(obs_horizon), int(action_horizon), delta_timestamps, list(cameras),
                                    list(cameras), where=where, mapped=given)  # fmt: skip
        else:
            chosen = (
                [cameras] if isinstance(cameras, str) else (list(cameras) if cameras is not None else None)
            )
            several = _num_given(source) > 1
            if chosen is not None:
                for cam in chosen:
                    if cam not in all_cams:
                        more = f". {self._mapping_hint(cam)}" if several else ""
                        raise NameNotFoundError(
                            f"{first.where}: no camera {cam!r}; it has {all_cams or 'no cameras'}{more}"
                        )
            hint = self._mapping_hint if several else None
            self.spec = _build_spec(int(obs_horizon), int(action_horizon), delta_timestamps, chosen, all_cams,
                                    where=first.where, hint=hint)  # fmt: skip
            stored = [{cam: cam for cam in self.spec.images} for _ in self._sources]
        self._stored = stored  # per source: output camera -> the camera as that source names it
        self._check_dims()
        self._check_rewards()
        num_given = _num_given(source)
        for source, names in zip(self._sources, stored, strict=True):  # every source has its cameras
            have = source.camera_names()
            missing = [cam for cam in self.spec.images if names[cam] not in have]
            if missing:
                cam = names[missing[0]]
                fix = camera_mapping_hint(self._sources, num_given, cam, output=missing[0], default=True)
                raise NameNotFoundError(
                    f"{source.where}: no camera {cam!r}; it has {have or 'no cameras'}. {fix}"
                )
            for cam in self.spec.images:  # and every episode of it (a merged file of several robots)
                source.require_camera(names[cam], "windows without images")
        self._check_channels()
        self._check_grid()

    def _mapping_hint(self, camera: str) -> str:
        return camera_mapping_hint(self._sources, _num_given(self._source_arg), camera)

    # -- description ------------------------------------------------------------------------

    def __len__(self) -> int:
        return int(self._starts[-1])

    @property
    def num_sources(self) -> int:
        """Number of files the samples come from."""
        return len(self._sources)

    @property
    def cameras(self) -> list[str]:
        """The cameras whose frames `images` returns."""
        return list(self.spec.images)

    def camera_layouts(self, cam: str) -> list[tuple[str, tuple[int, int, int]]]:
        """``(codec, (H, W, C))`` of output camera ``cam`` in each source (its first kept
        episode), in source order."""
        out = []
        for source, names in zip(self._sources, self._stored, strict=True):
            c = source.cameras(0)[names[cam]]
            out.append((c.codec, tuple(int(d) for d in c.shape[1:])))
        return out  # type: ignore[return-value]

    def database(self, source: int = 0) -> Database:
        """The open `Database` of source ``source``."""
        return self._sources[source].db

    def sample_counts(self) -> NDArray[np.int64]:
        """Samples (frames) per source with samples, in order."""
        return np.diff(self._starts)

    def counts_by_source(self) -> NDArray[np.int64]:
        """Samples per source given (a mixture's sources, or the list's files), 0 for those
        a filter left empty: sample indices run over the given sources in this order."""
        out = np.zeros(_num_given(self._source_arg), dtype=np.int64)
        for src, n in zip(self._sources, self.sample_counts().tolist(), strict=True):
            out[src.index] = n
        return out

    def locate(self, indices: Any) -> tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.int64]]:
        """``(source, episode position in its file, frame)`` of each sample index.

        Raises:
            EpisodeNotFoundError: an index is out of range (the message names it).
        """
        idx = self._indices(indices)
        src = self._source_of(idx)
        ep, t = np.empty_like(idx), np.empty_like(idx)
        for s, sel in self._groups(src):
            j, tt = self._episode_frame(s, idx[sel] - self._starts[s])
            ep[sel], t[sel] = self._sources[s].kept[j], tt
        return src, ep, t

    @property
    def tasks_vary(self) -> bool:
        """Whether some selected episode's task changes from frame to frame."""
        return any(source._any_varying for source in self._sources)

    def tasks(self, indices: Any) -> list[str]:
        """The task text of each sample: its episode's, or its frame's where it changes."""
        idx = self._indices(indices)
        src = self._source_of(idx)
        out = np.empty(len(idx), dtype=object)
        for s, sel in self._groups(src):
            j, t = self._episode_frame(s, idx[sel] - self._starts[s])
            out[sel] = self._sources[s].task_texts(j, t)
        tasks: list[str] = out.tolist()
        return tasks

    # -- batches ----------------------------------------------------------------------------

    def lowdim(self, indices: Any) -> dict[str, NDArray[Any]]:
        """The low-dimensional windows of a batch, stacked: one gather per array.

        Returns ``state`` (B, To, S), ``action`` (B, Ta, A), their ``*_is_pad`` masks
        (B, T) bool, any other windowed arrays, ``episode_index`` (the episode's position
        in its file), ``frame_index`` and ``source`` (B,) int64.

        Raises:
            EpisodeNotFoundError: an index is out of range.
            KinodbError: the batch mixes sources whose arrays differ in shape or dtype;
                use `lowdim_groups` (or batches from one schema).
        """
        return stack_groups(self.lowdim_groups(indices))

    def lowdim_padded(
        self, indices: Any, *, normalizers: Normalizers | None = None
    ) -> dict[str, NDArray[Any]]:
        """`lowdim`, with sources of different widths zero-padded to the widest of all sources.

        When the sources' ``state`` (or ``action``, or another windowed array) differ in
        per-frame shape, every batch holds it padded with zeros to the widest over all
        sources (one shape for every batch). Whenever the sources differ at all (a width,
        or a dtype brought to one), every batch holds ``state_mask`` and ``action_mask``
        (True on real entries), and a mask for each other array padded, as
        `kinodb.torch.pad_collate` gives for a dataset over these sources: the same keys
        whichever sources a batch draws from. With one layout it is `lowdim`.

        ``normalizers`` (`Normalizers`) normalises each source's states and actions with
        its own statistics before padding (the padding stays zero).

        Raises:
            KinodbError: the sources' arrays differ in the kind of value (bool, number) or in
                their number of dimensions.
        """
        widest, common = self._widest()
        groups = self.lowdim_groups(indices)
        if normalizers is not None:
            for _, arrays in groups:
                normalizers.apply(int(arrays["source"][0]), arrays, zero_pad=self._pad == "zero")
        normalised = ("state", "action") if normalizers is not None else ()  # float32 from every source
        cast = {key: dtype for key, dtype in common.items() if key not in normalised}
        for key, dtype in cast.items():  # e.g. float32 and float64 states: float64 (exact)
            for _, arrays in groups:
                arrays[key] = arrays[key].astype(dtype, copy=False)
        if not widest and not cast:
            return stack_groups(groups)
        n = sum(len(sel) for sel, _ in groups)
        first = groups[0][1]
        # The keys pad_collate masks for a dataset whose sources differ (kinodb.torch._datasets.pad_spec).
        masked = {key for key in first if key in ("state", "action") or key in widest}
        out: dict[str, NDArray[Any]] = {}
        for key, value in first.items():
            shape = (n, value.shape[1], *widest[key]) if key in widest else (n, *value.shape[1:])
            out[key] = np.zeros(shape, value.dtype)
            if key in masked:
                out[f"{key}_mask"] = np.zeros(shape, bool)
        for sel, arrays in groups:
            for key, value in arrays.items():
                if key in masked:
                    region: tuple[Any, ...] = (sel, slice(None), *(slice(0, d) for d in value.shape[2:]))
                    out[key][region] = value
                    out[f"{key}_mask"][region] = True
                else:
                    out[key][sel] = value
        return out

    def _widest(self) -> tuple[dict[str, tuple[int, ...]], dict[str, np.dtype[Any]]]:
        """Windowed arrays whose sources differ: ``(key -> widest per-frame shape, where the
        shapes differ; key -> common dtype, where numeric dtypes differ)``."""
        if self._widest_cache is None:
            widest: dict[str, tuple[int, ...]] = {}
            common: dict[str, np.dtype[Any]] = {}
            for key, (name, _) in self.spec.arrays.items():
                layouts = {(source.rows(name)[2], source.rows(name)[3]) for source in self._sources}
                if len(layouts) == 1:
                    continue
                dtypes = {np.dtype(dt) for dt, _ in layouts}
                ranks = {len(trail) for _, trail in layouts}
                if len(ranks) > 1 or (len(dtypes) > 1 and not all(dt.kind in "iuf" for dt in dtypes)):
                    raise KinodbError(
                        f"the sources hold {name!r} as {sorted(f'{dt} {trail}' for dt, trail in layouts)}; "
                        "only widths and numeric precision may differ between sources (padded, and "
                        "brought to one dtype), not the kind of value or the rank: serve or load such "
                        "sources apart"
                    )
                if len(dtypes) > 1:
                    common[key] = np.result_type(*dtypes)
                trails = {trail for _, trail in layouts}
                if len(trails) > 1:
                    widest[key] = tuple(max(dims) for dims in zip(*trails, strict=True))
            self._widest_cache = (widest, common)
        return self._widest_cache

    def __getstate__(self) -> dict[str, Any]:
        """Pickled without the lookup tables built per set of offsets (`_reach`), which the
        unpickled object rebuilds on first use: up to a megabyte each for long reaches."""
        state = self.__dict__.copy()
        state.update(_step_rows={}, _reaches={}, _shifts={})
        return state

    def lowdim_groups(
        self, indices: Any, *, tasks: bool = False
    ) -> list[tuple[NDArray[np.int64], dict[str, NDArray[Any]]]]:
        """`lowdim` per source: ``[(positions in the batch, arrays), ...]``, sources ascending.

        With ``tasks=True`` each part also holds ``task``, an object array of the samples'
        task texts (what `tasks` returns, without locating the samples twice).
        """
        idx = self._indices(indices)
        if len(self._sources) == 1:  # sample numbers are the source's own
            return [(np.arange(len(idx), dtype=np.int64), self._lowdim_one(0, idx, tasks=tasks))]
        src = self._source_of(idx)
        return [
            (sel, self._lowdim_one(s, idx[sel] - self._starts[s], tasks=tasks))
            for s, sel in self._groups(src)
        ]

    # -- internals --------------------------------------------------------------------------

    def _indices(self, indices: Any) -> NDArray[np.int64]:
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        n = len(self)
        # Read as unsigned, a negative index is above any count: one max checks both ends.
        if len(idx) and idx.view(np.uint64).max() >= n:
            bad = int(idx[(idx < 0) | (idx >= n)][0])
            raise EpisodeNotFoundError(f"sample {bad} out of range: there are {n} samples (0..{n - 1})")
        return idx

    def _source_of(self, idx: NDArray[np.int64]) -> NDArray[np.int64]:
        if len(self._sources) == 1:
            return np.zeros(len(idx), dtype=np.int64)
        return np.searchsorted(self._starts, idx, side="right").astype(np.int64) - 1

    def _groups(self, src: NDArray[np.int64]) -> list[tuple[int, NDArray[np.int64]]]:
        if len(self._sources) == 1:
            return [(0, np.arange(len(src), dtype=np.int64))]
        return [(int(s), np.flatnonzero(src == s)) for s in np.unique(src)]

    def _episode_frame(self, s: int, local: NDArray[np.int64]) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
        source = self._sources[s]
        lookup = source.frame_lookup()
        if lookup is not None:  # two small gathers instead of a binary search per sample
            j = lookup[0][local].astype(np.int64)
            return j, lookup[1][local].astype(np.int64)
        starts = source.starts
        j = np.searchsorted(starts, local, side="right") - 1
        return j, local - starts[j]

    def _frames(
        self, source: _Source, j: NDArray[np.int64], t: NDArray[np.int64], offsets: tuple[float, ...], *,
        seconds: bool, last: NDArray[np.int64] | None = None,
    ) -> tuple[NDArray[np.int64], NDArray[np.bool_]]:  # fmt: skip
        """Clipped frame numbers (B, K) and the mask of those outside the episode
        (``last``: each sample's last frame, when the caller has it)."""
        if seconds:
            off = np.asarray(offsets, dtype=np.float64)
            steps = np.rint(off[None, :] * source.fps[j][:, None]).astype(np.int64)
            back, ahead = True, True
        else:
            steps, back, ahead = self._steps(offsets)
        frames = t[:, None] + steps
        end = (source.lengths[j] - 1 if last is None else last)[:, None]
        # Offsets of one sign can only leave the episode on that side: skip the other test.
        if back and ahead:
            pad = (frames < 0) | (frames > end)
        elif ahead:
            pad = frames > end
        else:
            pad = frames < 0
        if back:
            np.maximum(frames, 0, out=frames)
        if ahead:
            np.minimum(frames, end, out=frames)
        return frames, pad

    def _steps(self, offsets: tuple[float, ...]) -> tuple[NDArray[np.int64], bool, bool]:
        """Offsets in frames as a ``(1, K)`` row, and whether any is negative / positive (cached)."""
        found = self._step_rows.get(offsets)
        if found is None:
            steps = np.asarray(offsets, dtype=np.float64).astype(np.int64)[None, :]
            found = self._step_rows[offsets] = (steps, bool((steps < 0).any()), bool((steps > 0).any()))
        return found

    def _reach(self, offsets: tuple[float, ...]) -> _Reach | None:
        """`_Reach` tables of frame offsets of one sign (cached); None for offsets of both
        signs, or offsets reaching so far that the tables would be large, which `_frames`
        serves."""
        if offsets not in self._reaches:
            steps, back, ahead = self._steps(offsets)
            cells = (int(np.abs(steps).max()) + 1) * steps.shape[1]  # of each table
            one_sign = not (back and ahead)
            self._reaches[offsets] = (
                _Reach.of(steps[0], ahead=ahead) if one_sign and cells <= _REACH_CELLS else None
            )
        return self._reaches[offsets]

    def _shift_rows(self, offsets: tuple[float, ...], reach: _Reach, width: int) -> NDArray[np.int64]:
        """``reach.clipped`` in elements of an array of ``width`` elements per frame (cached)."""
        key = (offsets, width)
        found = self._shifts.get(key)
        if found is None:
            found = self._shifts[key] = reach.clipped * width
        return found

    def _gather_reach(
        self, source: _Source, name: str, j: NDArray[np.int64], t: NDArray[np.int64], room: NDArray[np.int64],
        offsets: tuple[float, ...], reach: _Reach,
    ) -> tuple[NDArray[Any], NDArray[np.bool_]]:  # fmt: skip
        """Windows of ``name`` at frame offsets of one sign: ``(values (B, K, ...), pad (B, K))``.

        ``room`` is each window's frames on the side its offsets point to (`_Reach`). A
        window of consecutive offsets that stays inside its episode is one row of
        ``blocks`` (`_Source.blocks`, one copy); the windows that leave it, and every window
        of other offsets, are gathered frame by frame, with the offsets clipped to the room.
        """
        starts, view, dtype, trail = source.rows(name)
        width = math.prod(trail)
        r = np.minimum(room, reach.reach)
        pad = reach.pad.take(r, 0)
        at = starts[j] + (t * width if width != 1 else t)  # each window's frame t, as an element of the map
        shifts = self._shift_rows(offsets, reach, width)
        blocks = source.blocks(name, len(offsets)) if reach.run and len(offsets) >= _RUN_MIN else None
        if blocks is None:
            rows = at[:, None] + shifts.take(r, 0)
            return view[rows].view(dtype).reshape(*rows.shape, *trail), pad
        edge = (r < reach.reach).nonzero()[0]  # the windows that leave their episode
        first = at + reach.first * width if reach.first else at  # each window's first frame
        # An edge window's block is replaced below, but must lie inside the map; only such a
        # block can leave it, and only on the side the offsets point to.
        first = np.minimum(first, len(blocks) - 1) if reach.ahead else np.maximum(first, 0)
        values = blocks[first].view(dtype).reshape(len(first), len(offsets), *trail)
        if len(edge):
            rows = at[edge][:, None] + shifts.take(r[edge], 0)
            values[edge] = view[rows].view(dtype).reshape(*rows.shape, *trail)
        return values, pad

    def _lowdim_one(
        self, s: int, local: NDArray[np.int64], *, tasks: bool = False
    ) -> dict[str, NDArray[Any]]:
        source = self._sources[s]
        j, t = self._episode_frame(s, local)
        last = source.last[j]
        rooms = (t, last - t)  # frames before and after each window's frame t in its episode
        out: dict[str, NDArray[Any]] = {}
        for key, (name, offsets) in self.spec.arrays.items():
            seconds = self.spec.array_in_seconds(key)
            reach = None if seconds else self._reach(offsets)
            if reach is not None:
                values, pad = self._gather_reach(source, name, j, t, rooms[reach.ahead], offsets, reach)
            else:
                frames, pad = self._frames(source, j, t, offsets, seconds=seconds, last=last)
                starts, view, dtype, trail = source.rows(name)
                width = math.prod(trail)
                if width != 1:
                    frames *= width
                frames += starts[j][:, None]
                values = view[frames].view(dtype).reshape(*frames.shape, *trail)  # (B, K) rows: one gather
            if self._pad == "zero" and pad.any():
                values[pad] = 0
            out[key] = values
            out[f"{key}_is_pad"] = pad
        for cam, offsets in self.spec.images.items():
            key = "image_is_pad" if len(self.spec.images) == 1 else f"image_is_pad.{cam}"
            seconds = self.spec.image_in_seconds(cam)
            reach = None if seconds else self._reach(offsets)
            if reach is not None:
                out[key] = reach.pad.take(np.minimum(rooms[reach.ahead], reach.reach), 0)
            else:
                out[key] = self._frames(source, j, t, offsets, seconds=seconds, last=last)[1]
        out["episode_index"] = source.kept[j]
        out["frame_index"] = t
        out["source"] = np.full(len(t), source.index, dtype=np.int64)
        if tasks:
            out["task"] = source.task_texts(j, t)
        return out

    def _check_dims(self) -> None:
        """Each source holds the windowed arrays (a misspelt delta_timestamps feature is named
        now), and its states and actions have one width (a merged file of several robots does
        not): refused now, with the fix, rather than on every batch."""
        names = {name for name, _ in self.spec.arrays.values()}
        for source in self._sources:
            sec = source.sections()
            have = source.db._episode_arrays(int(source.kept[0]))
            for key, (name, _) in self.spec.arrays.items():
                # Held by no kept episode (the first, in a file without section columns): a
                # misspelt name. Held by some only: `array_layout` below names the others.
                held = name in have if sec is None else bool((sec.find(name, KIND_ARRAY) >= 0).any())
                if not held:
                    asked = self._delta_key(key)
                    raise KinodbError(
                        f"{source.where}: windows ask for {name!r} ({asked!r}), but its episodes hold "
                        f"{sorted(have)}; name one of those (delta_timestamps takes kinodb's names or "
                        "LeRobot's, e.g. 'observation.state', 'action', 'next.reward')"
                    )
            table = source.db.episodes()
            for name, column in (("states", "state_dim"), ("actions", "action_dim")):
                if name not in names:
                    continue
                dims, counts = np.unique(np.asarray(table[column])[source.kept], return_counts=True)
                if len(dims) > 1:
                    tally = ", ".join(
                        f"{d}: {n} episode{'' if n == 1 else 's'}"
                        for d, n in zip(dims.tolist(), counts.tolist(), strict=True)
                    )
                    pick = (
                        f"Mixture(..., filters={{{source.db.path()!r}: '{column} = {dims[0]}'}})"
                        if isinstance(self._source_arg, Mixture)
                        else f'kql_filter="{column} = {dims[0]}"'
                    )
                    raise KinodbError(
                        f"{source.where}: its episodes differ in {column} ({tally}); windows need one layout "
                        f"per file: select one with {pick}, or keep each robot's data in its own file and "
                        "combine the files with kinodb.Mixture (pad_collate pads them)"
                    )
            for name in sorted(names):  # every kept episode holds it, with one dtype and shape
                source.array_layout(name)

    def _delta_key(self, key: str) -> str:
        """The ``delta_timestamps`` feature that windows ``key``, as the user named it; else
        ``key`` (the horizons window ``state`` and ``action``)."""
        for feature in self._delta_given:
            bare = feature.removeprefix("observation.")
            if _ALIASES.get(feature, _ALIASES.get(bare, (bare, bare)))[1] == key:
                return feature
        return key

    def _check_rewards(self) -> None:
        """Refuse windows of rewards from a source whose selected episodes all hold the
        writer's placeholder (zeros stored for a source without rewards): served, they
        would pass for real rewards. Where only some do (a merge of files with and without
        rewards), warn, naming them and the filter that leaves them out."""
        if not any(name == "rewards" for name, _ in self.spec.arrays.values()):
            return
        for source in self._sources:
            held = placeholder_mask(source.db, source.kept)
            if not held.any():
                continue
            key = next(
                (
                    k
                    for k in self._delta_given
                    if _ALIASES.get(k.removeprefix("observation."), ("",))[0] == "rewards"
                ),
                "next.reward",
            )
            fix = (
                f"leave this source out of the Mixture or list (or filter its episodes out), or leave {key!r} "
                "out of delta_timestamps"
                if _num_given(self._source_arg) > 1
                else f"leave {key!r} out of delta_timestamps"
            )
            if not held.all():
                named = ", ".join(str(int(e)) for e in source.kept[held][:5]) + (
                    ", ..." if held.sum() > 5 else ""
                )
                warnings.warn(
                    f"{source.where}: windows ask for rewards ({key!r}), but {int(held.sum())} of its "
                    f"{len(held)} selected episodes hold none (episodes {named}, positions in the file): they were "
                    "written without rewards (appended, or merged from a file without them), and the zeros "
                    "stored for them are a placeholder, served as rewards; leave them out with the KQL filter "
                    '"total_reward IS NOT NULL" (which also leaves out episodes whose rewards sum to NaN or '
                    f"infinity), or leave {key!r} out of delta_timestamps",
                    UserWarning,
                    stacklevel=user_stacklevel(),
                )
                continue
            raise KinodbError(
                f"{source.where}: windows ask for rewards ({key!r}), but it holds none: its source data had "
                "no rewards, and the zeros stored for them are a placeholder (each selected episode's "
                f"total_reward is unknown and each reward 0); {fix}"
            )

    def _check_grid(self) -> None:
        """With offsets in seconds, every one must land on each source's frame grid."""
        if not self.spec.seconds:
            return
        for source in self._sources:
            for fps in np.unique(source.fps).tolist():
                if not fps > 0:
                    raise KinodbError(
                        f"{source.where}: episodes without fps; delta_timestamps needs it (re-ingest "
                        f"with --fps, or give obs_horizon/action_horizon in frames)"
                    )
                named = [(k, o) for k, (_, o) in self.spec.arrays.items() if self.spec.array_in_seconds(k)]
                named += [(c, o) for c, o in self.spec.images.items() if self.spec.image_in_seconds(c)]
                for key, offsets in named:
                    for n, dt in enumerate(offsets):
                        if abs(dt * fps - round(dt * fps)) / fps > _TOLERANCE_S:
                            rates = sorted(
                                {float(f) for s in self._sources for f in np.unique(s.fps).tolist()}
                            )
                            key = next(
                                (k for k, v in self._delta_given.items() if tuple(map(float, v)) == offsets),
                                key,
                            )
                            count = int((source.fps == fps).sum())
                            fix = off_grid_fix(source, self._sources, fps, count, self._filter_given)
                            raise KinodbError(
                                f"delta_timestamps of {key!r}: {dt} s (entry {n}) is not a multiple of 1/fps "
                                f"within {_TOLERANCE_S} s for the {count} episode{'' if count == 1 else 's'} "
                                f"at {fps:g} fps in {source.where} (the selected episodes run at "
                                f"{', '.join(f'{r:g}' for r in rates)} fps): give offsets on that grid "
                                f"(multiples of {1 / fps:.6g} s), {fix}or give obs_horizon/action_horizon in "
                                "frames"
                            )


@dataclass(frozen=True, slots=True)
class _Reach:
    """Frame offsets of one sign as lookup tables over a window's room.

    A window at frame t whose offsets share a sign can leave its episode on one side only:
    after its last frame (``ahead``: offsets >= 0, an action chunk) or before its first (an
    observation history). Its room is how many frames the episode holds on that side of t
    (``last - t``, or ``t``); the offsets beyond it are clipped to it (the edge frame
    repeated) and padded. A room of ``reach`` (the largest offset's size) or more clips
    nothing, so each table has one row per room up to ``reach``, and a batch takes each
    window's row with one small ``take`` instead of comparing, clipping and masking
    (B, K) arrays.
    """

    ahead: bool
    reach: int
    first: int  # the first offset
    run: bool  # consecutive offsets: a window inside its episode is one block of the map
    pad: NDArray[np.bool_]  # (reach + 1, K): row r, the pad mask of a window with room r
    clipped: NDArray[np.int64]  # (reach + 1, K): row r, the offsets clipped to room r

    @classmethod
    def of(cls, steps: NDArray[np.int64], *, ahead: bool) -> _Reach:
        """Tables for offsets ``steps`` (K,) in frames, of one sign (``ahead``: none negative)."""
        size = np.abs(steps)
        reach = int(size.max())
        room = np.arange(reach + 1, dtype=np.int64)[:, None]
        run = bool((np.diff(steps) == 1).all())
        clipped = np.minimum(steps, room) if ahead else np.maximum(steps, -room)
        return cls(ahead, reach, int(steps[0]), run, size > room, clipped)


def stack_groups(groups: list[tuple[NDArray[np.int64], dict[str, NDArray[Any]]]]) -> dict[str, NDArray[Any]]:
    """One batch from `FrameWindows.lowdim_groups`' per-source parts, in batch order.

    Raises:
        KinodbError: the sources' arrays differ in shape or dtype (mixed schemas).
    """
    if len(groups) == 1:
        return groups[0][1]
    first = groups[0][1]
    for _, arrays in groups[1:]:
        for key, value in arrays.items():
            if value.shape[1:] != first[key].shape[1:] or value.dtype != first[key].dtype:
                raise KinodbError(
                    f"this batch mixes {key!r} of {first[key].dtype} {first[key].shape[1:]} and "
                    f"{value.dtype} {value.shape[1:]} (sources with different schemas), which cannot "
                    f"be stacked: batch by schema (SchemaBatchSampler, or a kql_filter per source), use "
                    f"FrameWindows.lowdim_padded, or read them through kinodb.torch.KinoFrameDataset with "
                    f"collate_fn=pad_collate (or from_mixture(batch_size=...)); those pad them and add masks"
                )
    n = sum(len(sel) for sel, _ in groups)
    out = {k: np.empty((n, *v.shape[1:]), v.dtype) for k, v in first.items()}
    for sel, arrays in groups:
        for key, value in arrays.items():
            out[key][sel] = value
    return out


_RUN_MIN = 4  # windows of this many consecutive frames and more are gathered as blocks
_REACH_CELLS = 1 << 16  # the largest `_Reach` table (cells): offsets reaching further take `_frames`
