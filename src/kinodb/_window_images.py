"""The image side of frame windows: decoding a batch's frames, their bytes, camera checks.

`_ImageWindows`, a base of `kinodb.windows.FrameWindows`, holds `images` (the frames a
batch of windows needs, decoded, resized and stacked; raw frames gathered straight out of
the map by `_gather_raw`), `encoded` (the stored bytes of those frames) and the checks made
when windows are made or asked for: one channel count per camera (`_check_channels`), one
frame size (`check_image_sizes`), both from the index alone.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from kinodb import _images
from kinodb._window_sources import _frame_data, _Source
from kinodb.errors import KinodbError, NameNotFoundError

if TYPE_CHECKING:
    from kinodb._window_spec import Pad, WindowSpec

_RAW_SPLIT_BYTES = 1 << 20  # raw frames gathered on several threads from this much on
_RAW_LOOP_BYTES = 8192  # channels-last raw frames of this size and larger are copied one by one


def _hwc(dims: NDArray[np.int64]) -> tuple[int, ...]:
    return tuple(int(d) for d in dims)


class _ImageWindows:
    """The image windows of a `kinodb.windows.FrameWindows`, and the checks of its cameras.

    The base of `FrameWindows`, whose spec (``spec.images``: each output camera's frame
    offsets), sources (``_starts``: each one's first sample), per-source camera names
    (``_stored``) and sample location (``_indices``, ``_source_of``, ``_groups``,
    ``_episode_frame``, ``_frames``) it reads.
    """

    if TYPE_CHECKING:  # what these methods read of `FrameWindows`
        spec: WindowSpec
        _pad: Pad
        _sources: list[_Source]
        _starts: NDArray[np.int64]
        _stored: list[dict[str, str]]

        def _indices(self, indices: Any) -> NDArray[np.int64]: ...
        def _source_of(self, idx: NDArray[np.int64]) -> NDArray[np.int64]: ...
        def _groups(self, src: NDArray[np.int64]) -> list[tuple[int, NDArray[np.int64]]]: ...
        def _episode_frame(
            self, s: int, local: NDArray[np.int64]
        ) -> tuple[NDArray[np.int64], NDArray[np.int64]]: ...
        def _frames(
            self, source: _Source, j: NDArray[np.int64], t: NDArray[np.int64], offsets: tuple[float, ...], *,
            seconds: bool, last: NDArray[np.int64] | None = None,
        ) -> tuple[NDArray[np.int64], NDArray[np.bool_]]: ...  # fmt: skip

    def images(
        self,
        indices: Any,
        *,
        size: Any = None,
        resize: str = "bilinear",
        threads: int = 1,
        channels_last: bool = False,
    ) -> dict[str, NDArray[np.uint8]]:
        """The image windows of a batch: ``{camera: uint8 (B, To, C, H, W)}``.

        Only the frames the windows need are decoded (JPEG with DCT-domain scaling when
        the target is at most half the stored size), then resized with ``resize``
        (``bilinear`` and ``area`` are antialiased; ``nearest`` is available) into
        ``size`` = ``(H, W)``. Frames outside the episode repeat the edge frame, or are
        zeros with ``pad="zero"``; ``image_is_pad`` in `lowdim` marks them.

        With ``channels_last`` the arrays have the same shape and values over
        channels-last memory: a (B, To, H, W, C) array viewed as (B, To, C, H, W). The
        pixels then keep the layout they are stored and decoded in, with no transpose
        (raw frames are one copy each).

        Raises:
            CorruptFileError: a frame does not decode (names file, episode, camera, frame).
            KinodbError: episodes of the batch differ in a camera's shape and no ``size``
                was given to bring them to one.
        """
        size = _images.check_size(size)
        idx = self._indices(indices)
        src = self._source_of(idx)
        out: dict[str, NDArray[np.uint8]] = {}
        for cam, offsets in self.spec.images.items():
            reads = _CameraReads()
            for s, sel in self._groups(src):
                self._plan_reads(reads, cam, offsets, s, sel, idx, size)
            out[cam] = _stack(reads, len(idx), len(offsets), size, resize, threads, channels_last)
        return out

    def _plan_reads(
        self, reads: _CameraReads, cam: str, offsets: tuple[float, ...], s: int, sel: NDArray[np.int64],
        idx: NDArray[np.int64], size: tuple[int, int] | None,
    ) -> None:  # fmt: skip
        """Add to ``reads`` what the windows ``sel`` (of source ``s``) need of camera ``cam``.

        Checks each episode's camera against the batch's first: it exists, has the same
        channel count, and the same size unless ``size`` brings them to one.
        """
        k = len(offsets)
        source = self._sources[s]
        j, t = self._episode_frame(s, idx[sel] - self._starts[s])
        frames, pad = self._frames(source, j, t, offsets, seconds=self.spec.image_in_seconds(cam))
        slots = sel[:, None] * k + np.arange(k)
        if self._pad == "zero" and pad.any():
            reads.zero_slots.append(slots[pad])
        keep = ~pad if self._pad == "zero" else np.ones_like(pad)
        starts = np.empty(len(j), dtype=np.int64)  # a raw camera's first byte, else -1
        name = self._stored[s][cam]
        jobs, shape = reads.jobs, reads.shape
        for n, jj in enumerate(j.tolist()):
            c = source.cameras(jj).get(name)
            if c is None:
                raise _no_camera(source, jj, name)
            hwc = c.shape[1:]
            if shape is None:
                shape = hwc
            elif hwc[2] != shape[2]:
                raise _mixed_channels(cam, hwc, shape, source, jj)
            elif hwc != shape and size is None:
                raise _mixed_sizes(cam, hwc, shape, source, jj)
            if c.codec == "raw" and hwc == shape and size in (None, hwc[:2]):
                starts[n] = c.data_offset
                continue
            starts[n] = -1
            for f, slot in zip(frames[n][keep[n]].tolist(), slots[n][keep[n]].tolist(), strict=True):
                jobs.append((slot, _frame_data(source, c, f), c.codec, hwc, (source, jj, name, f)))
        reads.shape = shape
        direct = (starts >= 0)[:, None] & keep
        if direct.any():
            assert shape is not None
            step = shape[0] * shape[1] * shape[2]
            byte = (starts[:, None] + frames * step)[direct]
            reads.raw.append((source, shape, slots[direct], byte))

    def encoded(self, indices: Any) -> list[dict[str, list[bytes]]]:
        """The stored bytes of each window's frames: ``[{camera: [frame bytes, ...]}, ...]``.

        Frames outside the episode repeat the edge frame (``image_is_pad`` marks them).
        """
        idx = self._indices(indices)
        src = self._source_of(idx)
        out: list[dict[str, list[bytes]]] = [{} for _ in range(len(idx))]
        for cam, offsets in self.spec.images.items():
            for s, sel in self._groups(src):
                source = self._sources[s]
                j, t = self._episode_frame(s, idx[sel] - self._starts[s])
                frames, _ = self._frames(source, j, t, offsets, seconds=self.spec.image_in_seconds(cam))
                for b, jj, row in zip(sel.tolist(), j.tolist(), frames.tolist(), strict=True):
                    c = source.cameras(jj)[self._stored[s][cam]]
                    out[b][cam] = [bytes(source.db._frame_bytes(c, f)) for f in row]
        return out

    def _check_channels(self) -> None:
        """Each output camera has one channel count over every kept episode of each source
        (a batch cannot stack 1- and 3-channel frames, whatever size they are brought to).

        Sources may differ from each other (`kinodb.torch.SchemaBatchSampler` never puts
        frames of two sizes or channel counts in one batch); a batch that mixes them says so.
        """
        for cam in self.spec.images:
            for source, names in zip(self._sources, self._stored, strict=True):
                shapes = source.camera_shapes(names[cam])
                odd = None if shapes is None else source.odd_ones(shapes[:, 2:])
                if odd is not None:
                    assert shapes is not None
                    raise KinodbError(
                        f"camera {names[cam]!r} has {int(shapes[odd][0, 2])} channel(s) in {source.count(odd)} "
                        f"of {source.where} ({source.named(odd)}) but {int(shapes[~odd][0, 2])} in the others; "
                        f"frames of one camera need one channel count: {source.leave_out(odd)}"
                    )

    def check_image_sizes(self) -> None:
        """Raise unless each camera has one frame size over every kept episode of each
        source, as `images` needs when no ``size`` brings them to one.

        Checked from the index alone (O(episodes), no frame read); a format 0.1 file is
        checked batch by batch instead. Sources may differ from each other
        (`kinodb.torch.SchemaBatchSampler` groups samples by frame size too); a batch that
        mixes them says so.

        Raises:
            KinodbError: a camera's frames differ in size within a source; names the
                episodes, and the filter that leaves them out.
        """
        for cam in self.spec.images:
            for source, names in zip(self._sources, self._stored, strict=True):
                shapes = source.camera_shapes(names[cam])
                odd = None if shapes is None else source.odd_ones(shapes)
                if odd is not None:
                    assert shapes is not None
                    raise KinodbError(
                        f"camera {names[cam]!r} is {_hwc(shapes[odd][0])} in {source.count(odd)} of "
                        f"{source.where} ({source.named(odd)}) but {_hwc(shapes[~odd][0])} in the others; "
                        f"pass image_size=(H, W) to resize them to one, or {source.leave_out(odd)}"
                    )

    def check_image_sizes_across(self, drawn: Collection[int] | None = None) -> None:
        """Raise unless each camera has one frame size over the sources, as a batch that
        mixes them needs when no ``size`` brings them to one (a stream that makes its own
        batches). ``drawn``: the sources (by position among those given) that get draws,
        default all. Each source's frames are of one size already (`check_image_sizes`):
        its first kept episode stands for it.

        Raises:
            KinodbError: a camera's frames differ in size between two of the sources.
        """
        for cam in self.spec.images:
            first: tuple[_Source, tuple[int, ...]] | None = None
            for source, names in zip(self._sources, self._stored, strict=True):
                if not len(source.kept) or (drawn is not None and source.index not in drawn):
                    continue
                hw = _hwc(source.cameras(0)[names[cam]].shape[1:3])
                if first is None:
                    first = (source, hw)
                elif hw != first[1]:
                    raise KinodbError(
                        f"camera {cam!r} is {hw[0]}x{hw[1]} in {source.where} but {first[1][0]}x{first[1][1]} "
                        f"in {first[0].where}; the batches this dataset makes mix the sources, and frames of "
                        "one camera come in several sizes in such a batch: pass image_size=(H, W) to resize "
                        "them to one"
                    )


class _CameraReads:
    """What one camera's frames of a batch need: decode jobs, raw gathers, slots to zero, frame shape.

    ``jobs`` are `_images.decode_into`'s; ``raw`` holds ``(source, shape, slots, first
    bytes)`` per source for `_gather_raw`; ``shape`` is the (H, W, C) of the batch's first
    episode, which the others are checked against.
    """

    __slots__ = ("jobs", "raw", "shape", "zero_slots")

    def __init__(self) -> None:
        self.jobs: list[tuple[int, Any, str, tuple[int, int, int], Any]] = []
        self.raw: list[tuple[_Source, tuple[int, int, int], NDArray[np.int64], NDArray[np.int64]]] = []
        self.shape: tuple[int, int, int] | None = None
        self.zero_slots: list[NDArray[np.int64]] = []


def _stack(
    reads: _CameraReads, batch: int, k: int, size: tuple[int, int] | None, resize: str, threads: int,
    channels_last: bool,
) -> NDArray[np.uint8]:  # fmt: skip
    """One camera's windows, ``(batch, k, C, H, W)``: zeroed pads, gathered raw frames, decoded others."""
    shape = reads.shape
    assert shape is not None
    h, w = size or shape[:2]
    c = shape[2]
    block = np.empty((batch * k, *((h, w, c) if channels_last else (c, h, w))), np.uint8)
    for slots_z in reads.zero_slots:
        block[slots_z] = 0
    for source, hwc, where_to, byte in reads.raw:
        _gather_raw(block, source.frame_rows(hwc), hwc, where_to, byte, threads, channels_last)
    _images.decode_into(block, reads.jobs, size, resize, threads, channels_last=channels_last)
    if channels_last:
        view: NDArray[np.uint8] = block.reshape(batch, k, h, w, c).transpose(0, 1, 4, 2, 3)
        return view
    return block.reshape(batch, k, c, h, w)


def _no_camera(source: _Source, jj: int, name: str) -> NameNotFoundError:
    return NameNotFoundError(
        f"{source.where}: episode {int(source.kept[jj])} has no camera {name!r}; "
        "leave such episodes out with kql_filter, or pass image_key=False for "
        "windows without images"
    )


def _mixed_channels(
    cam: str, hwc: tuple[int, int, int], shape: tuple[int, int, int], source: _Source, jj: int
) -> KinodbError:
    return KinodbError(
        f"camera {cam!r} has {hwc[2]} channel(s) in {source.where} episode "
        f"{int(source.kept[jj])} but {shape[2]} elsewhere in this batch; frames of one "
        "camera need one channel count: map each source to a camera with the same "
        "channels (image_key), or leave the others out with kql_filter"
    )


def _mixed_sizes(
    cam: str, hwc: tuple[int, int, int], shape: tuple[int, int, int], source: _Source, jj: int
) -> KinodbError:
    return KinodbError(
        f"camera {cam!r} is {hwc} in {source.where} episode {int(source.kept[jj])} but "
        f"{shape} elsewhere in this batch; pass image_size=(H, W) to resize them to one"
    )


def _gather_raw(
    block: NDArray[np.uint8],
    rows: NDArray[np.uint8],
    hwc: tuple[int, int, int],
    where_to: NDArray[np.int64],
    byte: NDArray[np.int64],
    threads: int,
    channels_last: bool = False,
) -> None:
    """Raw frames need no decoding: whole frames gathered out of the map (``rows[byte]``)
    and transposed to channels-first into their slots of ``block``, or with
    ``channels_last`` copied into them as they are stored.

    The transpose is a byte-strided copy, the slow part; NumPy runs it without the GIL,
    so a large batch is split over the decode threads.
    """
    if channels_last and rows.shape[1] < _RAW_LOOP_BYTES:
        flat = block.reshape(len(block), -1)

        def part(a: int, b: int) -> None:  # small frames: one gather (a loop costs more)
            flat[where_to[a:b]] = rows[byte[a:b]]

    elif channels_last:
        flat = block.reshape(len(block), -1)

        def part(a: int, b: int) -> None:  # one copy per frame, from the map into its slot
            for slot, at in zip(where_to[a:b].tolist(), byte[a:b].tolist(), strict=True):
                flat[slot] = rows[at]

    else:

        def part(a: int, b: int) -> None:
            block[where_to[a:b]] = rows[byte[a:b]].reshape(b - a, *hwc).transpose(0, 3, 1, 2)

    n = len(byte)
    _images.in_parts(n, threads if n * rows.shape[1] >= _RAW_SPLIT_BYTES else 1, part)
