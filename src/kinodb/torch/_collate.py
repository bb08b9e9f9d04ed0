"""Batches: the pre-stacked fast path, padding for mixed schemas, and schema-pure batching.

`KinoFrameDataset.__getitems__` gathers a whole batch at once and returns a `Batch`: a
sequence of samples that already holds the stacked tensors. torch's ``default_collate``
is extended (through its documented ``default_collate_fn_map``) to hand those tensors
back as they are, so a plain ``DataLoader(ds, batch_size=256)`` gets the vectorised batch
without a per-sample Python loop; any other collate still sees ordinary sample dicts.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from multiprocessing.reduction import ForkingPickler
from typing import Any

import numpy as np
import torch
from torch.utils.data import Sampler, default_collate, get_worker_info
from torch.utils.data._utils.collate import default_collate_fn_map

from kinodb.errors import KinodbError
from kinodb.torch._ring import read_slot, worker_ring

__all__ = ["Batch", "MixedBatch", "PadSpec", "SchemaBatchSampler", "TensorBatch", "collate", "pad_collate"]


class _Noted(dict):  # type: ignore[type-arg]
    """A dict that notes when it is changed (``_changed``): a key set, deleted or popped,
    an update, a clear. Values changed in place (``sample["state"] += 1`` on a tensor) are
    not noted, and need not be: they are views of the batch's arrays. Copied or pickled,
    a plain dict."""

    __slots__ = ("_changed",)

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self._changed = False

    def _note(self) -> None:
        self._changed = True

    def __reduce__(self) -> tuple[Any, ...]:
        return dict, (dict(self),)

    def __setitem__(self, key: Any, value: Any) -> None:
        super().__setitem__(key, value)
        self._note()

    def __delitem__(self, key: Any) -> None:
        super().__delitem__(key)
        self._note()

    def __ior__(self, other: Any) -> _Noted:  # type: ignore[override,misc]
        super().__ior__(other)
        self._note()
        return self

    def pop(self, key: Any, *default: Any) -> Any:
        out = super().pop(key, *default)
        self._note()
        return out

    def popitem(self) -> Any:
        out = super().popitem()
        self._note()
        return out

    def setdefault(self, key: Any, default: Any = None) -> Any:
        if key in self:
            return self[key]
        self[key] = default
        return default

    def update(self, *args: Any, **kwargs: Any) -> None:
        super().update(*args, **kwargs)
        self._note()

    def clear(self) -> None:
        super().clear()
        self._note()


class Sample(_Noted):
    """One sample of a `Batch` (a plain dict to everything but the collate functions).

    ``pad`` is the `PadSpec` of the dataset it came from when that dataset's sources
    differ in schema (else None): `pad_collate` pads samples to it, the widest of all
    the dataset's sources, whichever sources a batch holds. ``changed`` says whether a
    key of it (or of its ``images``) was set, deleted or popped since it was made: the
    collate functions then collate the batch's samples one by one, as changed, instead
    of handing on the arrays the batch was gathered into.
    """

    __slots__ = ("pad",)

    def __init__(self, *args: Any, pad: PadSpec | None = None) -> None:
        super().__init__(*args)
        self.pad = pad

    def __reduce__(self) -> tuple[Any, ...]:
        return _sample, (dict(self), self.pad)

    @property
    def changed(self) -> bool:
        """Whether a key of this sample, or of a dict in it (``images``), was set, deleted
        or popped since it was made."""
        return self._changed or any(type(v) is _Noted and v._changed for v in self.values())


def _sample(items: dict[str, Any], pad: PadSpec | None) -> Sample:
    return Sample(items, pad=pad)


class _Samples(Sequence[Sample]):
    """Per-sample dicts, made on demand, of arrays gathered for a whole batch.

    A sample is made once: indexing again hands out the same dict, so that changes made
    to it are kept, and collated (`edited`).
    """

    _size: int
    pad: PadSpec | None
    _made: dict[int, Sample]

    def _row(self, k: int) -> tuple[dict[str, Any], int]:
        """The arrays that hold sample ``k``, and its row in them."""
        raise NotImplementedError

    def __len__(self) -> int:
        return self._size

    def __getitem__(self, k: Any) -> Any:
        if isinstance(k, slice):
            return [self[i] for i in range(*k.indices(self._size))]
        if not -self._size <= k < self._size:
            raise IndexError(f"sample {k} out of range for a batch of {self._size}")
        k = int(k) % self._size
        sample = self._made.get(k)
        if sample is None:
            arrays, n = self._row(k)
            sample = self._made[k] = Sample(((key, _item(v, n)) for key, v in arrays.items()), pad=self.pad)
            for key, value in sample.items():
                if type(value) is dict:  # ``images``: a change to it is one to the sample
                    dict.__setitem__(sample, key, _Noted(value))
        return sample

    def __iter__(self) -> Iterator[Sample]:
        return (self[k] for k in range(self._size))

    @property
    def edited(self) -> bool:
        """Whether a sample handed out (by indexing) was changed since: then the batch
        is collated from its samples, not from the arrays it was gathered into."""
        return bool(self._made) and any(s.changed for s in self._made.values())


@dataclass(frozen=True, slots=True)
class PadSpec:
    """How batches of a dataset whose sources differ in schema are padded: to the same
    widths and dtypes in every batch, whichever sources a batch holds.

    ``widths`` maps a windowed key to its widest per-frame shape over all sources (where
    the sources differ); ``dtypes`` maps a key to the dtype every source's values are
    brought to (where the sources' dtypes differ).
    """

    widths: dict[str, tuple[int, ...]]
    dtypes: dict[str, torch.dtype]


class Batch(_Samples):
    """A batch gathered in one go: stacked tensors, viewable as per-sample dicts.

    ``stacked`` maps each key to a tensor with the batch as its first axis, or to a
    list (strings, per-sample values). Indexing yields `Sample` dicts (made on demand).
    ``pad`` is the dataset's `PadSpec` when its sources differ in schema (`pad_collate`
    pads to it).
    """

    def __init__(self, stacked: dict[str, Any], size: int, pad: PadSpec | None = None) -> None:
        self.stacked, self._size, self.pad = stacked, size, pad
        self._made = {}

    def _row(self, k: int) -> tuple[dict[str, Any], int]:
        return self.stacked, k

    def padded(self, widths: Mapping[str, tuple[int, ...]] | None = None) -> TensorBatch | None:
        """What `pad_collate` gives for these samples, as whole arrays; None when a key is
        of a form only the per-sample path handles."""
        return _pad_groups([(np.arange(self._size), self.stacked)], self._size, self.pad, widths)


class MixedBatch(_Samples):
    """A batch gathered in one go from sources whose schemas differ (say, state widths).

    ``groups`` holds per source ``(positions in the batch, stacked arrays)``. Indexing
    yields `Sample` dicts (made on demand); `pad_collate` pads the groups as whole arrays
    instead of sample by sample, to the widths of ``pad`` (the dataset's `PadSpec`).
    """

    def __init__(
        self, groups: list[tuple[np.ndarray, dict[str, Any]]], size: int, pad: PadSpec | None = None
    ) -> None:
        self.groups, self._size, self.pad = groups, size, pad
        self._made = {}
        self._group = np.empty(size, dtype=np.int64)
        self._rows = np.empty(size, dtype=np.int64)
        for g, (sel, _) in enumerate(groups):
            self._group[sel], self._rows[sel] = g, np.arange(len(sel))

    def _row(self, k: int) -> tuple[dict[str, Any], int]:
        return self.groups[int(self._group[k])][1], int(self._rows[k])

    def __reduce__(self) -> tuple[Any, ...]:
        return list, ([dict(s) for s in self],)  # crosses processes as plain sample dicts

    def padded(self, widths: Mapping[str, tuple[int, ...]] | None = None) -> TensorBatch | None:
        """What `pad_collate` gives for these samples, group by group; None when a key is
        of a form only the per-sample path handles."""
        return _pad_groups(self.groups, self._size, self.pad, widths)


def _pad_groups(
    groups: list[tuple[np.ndarray, dict[str, Any]]],
    n: int,
    pad: PadSpec | None,
    more: Mapping[str, tuple[int, ...]] | None = None,
) -> TensorBatch | None:
    """One batch from per-source parts: ``state`` and ``action`` zero-padded (to the widest
    in the batch, of ``pad`` and of ``more``) with ``*_mask``, other keys of ``pad.widths``
    likewise, dtypes promoted; None when a key is of a form only the per-sample path
    handles."""
    first = groups[0][1]
    single = len(groups) == 1  # its positions are then 0..n-1, in order
    widths = pad.widths if pad is not None else {}
    dtypes = pad.dtypes if pad is not None else {}
    out: dict[str, Any] = {}
    for key in first:
        parts = [(sel, arrays[key]) for sel, arrays in groups]
        if key in ("image", "images"):
            if isinstance(first[key], dict):
                out[key] = {cam: _frames_of([(i, v[cam]) for i, v in parts]) for cam in first[key]}
            else:
                out[key] = _frames_of(parts)
            continue
        if isinstance(first[key], list):
            if single:
                out[key] = list(first[key])
                continue
            merged: list[Any] = [None] * n
            for sel, values in parts:
                for b, v in zip(sel.tolist(), values, strict=True):
                    merged[b] = v
            out[key] = merged
            continue
        tensors = [(i, torch.as_tensor(v)) for i, v in parts]
        if len({v.dim() for _, v in tensors}) > 1:
            return None
        dtype = dtypes.get(key, tensors[0][1].dtype)
        for _, v in tensors:
            dtype = torch.promote_types(dtype, v.dtype)
        shape = [max(v.shape[d] for _, v in tensors) for d in range(1, tensors[0][1].dim())]
        wide = widths.get(key)
        shape = _widen(_widen(shape, wide), (more or {}).get(key))
        if key in ("state", "action") or wide is not None:
            padded = torch.zeros((n, *shape), dtype=dtype)
            mask = torch.zeros((n, *shape), dtype=torch.bool)
            for i, v in tensors:
                region: Any = (torch.as_tensor(i), *[slice(0, d) for d in v.shape[1:]])
                padded[region] = v.to(dtype)
                mask[region] = True
            out[key], out[f"{key}_mask"] = padded, mask
        elif any(list(v.shape[1:]) != shape for _, v in tensors):
            return None  # the per-sample path names it
        elif single:
            out[key] = tensors[0][1].to(dtype)
        else:
            whole = torch.empty((n, *shape), dtype=dtype)
            for i, v in tensors:
                whole[torch.as_tensor(i)] = v.to(dtype)
            out[key] = whole
    if "source" not in first:
        out["source"] = torch.zeros(n, dtype=torch.int64)
    return TensorBatch(out)


def _frames_of(parts: list[tuple[Any, Any]]) -> torch.Tensor:
    """Frames ``(B_g, T, C, H, W)`` of each group, as one batch in batch order; channels-last
    frames stay channels-last."""
    tensors = [(i, torch.as_tensor(v)) for i, v in parts]
    if len(tensors) == 1:  # the whole batch, in order: as gathered (channels-last stays so)
        return tensors[0][1]
    sizes = sorted({tuple(v.shape[-3:]) for _, v in tensors})
    if len(sizes) > 1:
        raise KinodbError(
            f"frames of one camera come in several sizes in this batch ({', '.join(map(str, sizes))}, as "
            "(C, H, W)); pass image_size=(H, W) to the dataset to resize them to one size"
        )
    last = all(_is_channels_last(v) for _, v in tensors)
    n = sum(len(i) for i, _ in tensors)
    first = tensors[0][1]
    if last:
        out = torch.empty((n, *first.shape[1:-3], *first.shape[-2:], first.shape[-3]), dtype=first.dtype)
        for i, v in tensors:
            out[i] = v.movedim(-3, -1)
        return out.movedim(-1, -3)
    out = torch.empty((n, *first.shape[1:]), dtype=first.dtype)
    for i, v in tensors:
        out[i] = v
    return out


def _item(value: Any, k: int) -> Any:
    if isinstance(value, dict):
        return {key: _item(v, k) for key, v in value.items()}
    return value[k]


class TensorBatch(dict):  # type: ignore[type-arg]
    """A collated batch: a plain dict of tensors that crosses processes as one buffer.

    A DataLoader worker sends each tensor of a batch through its own shared-memory
    segment, which costs more than gathering a batch of low-dimensional windows. Sent to
    another process (pickled by multiprocessing's ``ForkingPickler``, as a DataLoader's
    queues do), this dict packs its CPU tensors into one contiguous buffer. In a
    DataLoader worker that buffer is a slot of the worker's long-lived shared-memory ring
    (`kinodb.torch._ring`), so only the slot's address is pickled; the receiver reads the
    slot into memory of its own, one buffer per tensor, so that a tensor kept from a batch
    holds only its own bytes. Pickled any other way (``pickle``, ``torch.save``, a
    deepcopy), it is a plain dict of tensors, by value. In the process that made it, it
    is an ordinary dict.
    """

    __slots__ = ()

    def __copy__(self) -> TensorBatch:
        return TensorBatch(self)

    def __reduce__(self) -> tuple[Any, ...]:
        return (TensorBatch, (dict(self),))

    def _for_process(self) -> tuple[Any, ...]:
        try:
            return self._pack()
        except Exception as exc:  # a worker's queue would drop the batch silently
            return _plain(self, exc)

    def _pack(self) -> tuple[Any, ...]:
        # layout: (path, dtype, shape, offset, bytes, axes); dtype is NumPy's type string
        # when NumPy has the dtype (cheaper to pickle and to rebuild), else the torch dtype.
        # A permuted tensor (channels-last frames) travels in its memory order, ``shape``,
        # and ``axes`` (else None) permutes it back on the receiving side.
        layout: list[tuple[tuple[str, ...], Any, tuple[int, ...], int, int, Any]] = []
        others: list[tuple[tuple[str, ...], Any]] = []
        parts: list[tuple[int, Any]] = []
        size = 0
        for path, value in _flatten(self, ()):
            if type(value) is torch.Tensor and value.is_cpu and not value.requires_grad:
                if value.is_conj() or value.is_neg():  # lazy conjugation or negation: apply it
                    value = value.resolve_conj().resolve_neg()
                size += -size % 16  # aligned for every dtype's view
                try:
                    arr: Any = value.numpy()
                    axes = None
                    if not arr.flags.c_contiguous:
                        arr, axes = _memory_order(arr)
                    layout.append((path, arr.dtype.str, arr.shape, size, arr.nbytes, axes))
                except (TypeError, RuntimeError):  # bfloat16 and other torch-only dtypes
                    arr = value
                    nbytes = value.numel() * value.element_size()
                    layout.append((path, value.dtype, tuple(value.shape), size, nbytes, None))
                parts.append((size, arr))
                size += layout[-1][4]
            else:
                others.append((path, value))
        in_worker = get_worker_info() is not None
        if in_worker and others:  # pickled now: an error is then raised here, not in the queue's thread
            others = bytes(ForkingPickler.dumps(others))  # type: ignore[assignment]
        # Leaving a DataLoader worker: through the worker's shared-memory ring if it can.
        ring = worker_ring(size) if size and in_worker else None
        slot = ring.take() if ring is not None else None
        where: tuple[int, ...] | None = None
        if ring is not None and slot is not None:
            flat, where = ring.view(slot, size), (*ring.key, slot, ring.offset(slot))
        else:
            flat = np.empty(size, dtype=np.uint8)
        try:
            buffer = torch.from_numpy(flat)
            for offset, value in parts:
                if isinstance(value, np.ndarray):  # NumPy copies with far less per-call overhead
                    flat[offset : offset + value.nbytes] = (
                        np.ascontiguousarray(value).reshape(-1).view(np.uint8)
                    )
                else:
                    raw = value.contiguous().reshape(-1).view(torch.uint8)
                    buffer[offset : offset + raw.numel()] = raw
        except BaseException:
            if ring is not None and slot is not None:
                ring.release(slot)
            raise
        if where is not None:
            return (_from_ring, (where, size, layout, others))
        return (_unpack, (buffer, layout, others))


def _plain(batch: TensorBatch, exc: Exception) -> tuple[Any, ...]:
    """A batch that could not be packed, pickled as a plain dict of tensors instead (the
    tensors copied by value); if that fails too, a stand-in that raises the error where
    the batch is unpickled, so a DataLoader names it instead of waiting for the batch."""
    try:
        blob = pickle.dumps(dict(batch), protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as again:
        return (
            _unsendable,
            (f"{type(exc).__name__}: {exc}; pickled as a plain dict: {type(again).__name__}: {again}",),
        )
    return (_from_plain, (blob,))


def _from_plain(blob: bytes) -> TensorBatch:
    return TensorBatch(pickle.loads(blob))


def _unsendable(reason: str) -> TensorBatch:
    raise KinodbError(
        f"a batch (TensorBatch) could not be pickled to leave the process that made it ({reason}); "
        "return tensors, NumPy arrays, numbers and strings from the dataset or collate_fn"
    )


def _memory_order(arr: np.ndarray) -> tuple[np.ndarray, tuple[int, ...] | None]:
    """``(array in memory order, axes back)`` for a permuted view of contiguous memory
    (``arr == memory.transpose(axes)``), else ``(arr, None)`` (copied when packed)."""
    order = np.argsort([-abs(st) for st in arr.strides], kind="stable")
    memory = arr.transpose(order)
    if not memory.flags.c_contiguous:
        return arr, None
    return memory, tuple(np.argsort(order).tolist())


def _flatten(value: Any, path: tuple[str, ...]) -> Iterator[tuple[tuple[str, ...], Any]]:
    for key, item in value.items():
        if type(item) is dict:
            yield from _flatten(item, (*path, key))
        else:
            yield (*path, key), item


_DTYPES: dict[str, np.dtype[Any]] = {}  # NumPy type strings seen in layouts, parsed once


def _unpack(buffer: torch.Tensor, layout: list[Any], others: list[Any] | bytes) -> TensorBatch:
    """The batch from one shared-memory buffer (torch's transport, for a batch too large
    for the ring): the large tensors are views of it; each small one is copied out, so
    that keeping it (an index, a mask) does not keep the whole segment."""
    total = max(buffer.numel(), 1)
    return _rebuild(
        [(buffer, offset) if n * 16 >= total else (buffer[offset : offset + n].clone(), 0)
         for _, _, _, offset, n, _ in layout],
        layout, others,
    )  # fmt: skip


def _rebuild(
    buffers: list[tuple[torch.Tensor, int]], layout: list[Any], others: list[Any] | bytes
) -> TensorBatch:
    """The batch whose tensor ``k`` lies at byte ``buffers[k][1]`` of the uint8 tensor ``buffers[k][0]``."""
    rest: list[Any] = ForkingPickler.loads(others) if isinstance(others, bytes) else others
    out = TensorBatch()
    for (buffer, offset), (path, dtype, shape, _, n, axes) in zip(buffers, layout, strict=True):
        if isinstance(dtype, str):  # a view made in one call
            dt = _DTYPES.get(dtype) or _DTYPES.setdefault(dtype, np.dtype(dtype))
            arr = np.ndarray(shape, dt, buffer.numpy(), offset)
            value = torch.from_numpy(arr if axes is None else arr.transpose(axes))
        else:  # a dtype NumPy lacks
            value = buffer[offset : offset + n].view(dtype).view(shape)
        if len(path) == 1:
            out[path[0]] = value
        else:
            _place(out, path, value)
    for path, value in rest:
        _place(out, path, value)
    return out


_SCRATCH = np.empty(16, np.uint8)  # where the alignment gaps between a slot's tensors are read to
_MAX_PARTS = 1024  # IOV_MAX on Linux: the most buffers one preadv fills


def _from_ring(
    where: tuple[int, ...], size: int, layout: list[Any], others: list[Any] | bytes
) -> TensorBatch:
    """Read a batch out of a worker's ring slot: one buffer of its own per tensor, filled by
    one ``preadv``."""
    pid, fd, ino, slot, offset = where
    if 2 * len(layout) + 1 > _MAX_PARTS:  # more buffers than one preadv takes: one, then copies
        flat = np.empty(size, dtype=np.uint8)
        read_slot((pid, fd, ino), slot, offset, [flat])
        whole = torch.from_numpy(flat)
        return _rebuild(
            [(whole[start : start + n].clone(), 0) for _, _, _, start, n, _ in layout], layout, others
        )
    parts: list[Any] = []
    buffers: list[tuple[torch.Tensor, int]] = []
    at = 0
    for _, _, _, start, n, _ in layout:
        if start > at:
            parts.append(_SCRATCH[: start - at])
        own = np.empty(n, dtype=np.uint8)
        parts.append(own)
        buffers.append((torch.from_numpy(own), 0))
        at = start + n
    if size > at:
        parts.append(_SCRATCH[: size - at])
    read_slot((pid, fd, ino), slot, offset, parts)
    return _rebuild(buffers, layout, others)


def _reduce_for_process(batch: TensorBatch) -> tuple[Any, ...]:
    return batch._for_process()


ForkingPickler.register(TensorBatch, _reduce_for_process)


def _place(out: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    for key in path[:-1]:
        out = out.setdefault(key, {})
    out[path[-1]] = value


def _collate_samples(batch: Sequence[Any], *, collate_fn_map: Any = None) -> Any:
    if isinstance(batch, Batch) and not batch.edited:  # as gathered: no per-sample work
        return TensorBatch(batch.stacked)
    samples = [dict(s) for s in batch]
    for key in ("state", "action"):
        if key not in samples[0] or all(tuple(s[key].shape) == tuple(samples[0][key].shape) for s in samples):
            continue
        shapes = ", ".join(map(str, sorted({tuple(s[key].shape) for s in samples})))
        if len({tuple(s[key].shape[1:]) for s in samples}) > 1:
            raise KinodbError(
                f"this batch mixes {key!r} of shapes {shapes} (sources with different schemas); pass "
                "collate_fn=kinodb.torch.pad_collate to the DataLoader (it pads them to the widest source and "
                "adds masks); a map-style dataset may instead batch by schema with "
                "batch_sampler=kinodb.torch.SchemaBatchSampler(ds, batch_size), and a KinoIterDataset pads "
                "the batches it makes itself with batch_size=... and DataLoader(ds, batch_size=None)"
            )
        raise KinodbError(
            f"this batch holds episodes of different lengths ({key!r} of shapes {shapes}); pass "
            "collate_fn=kinodb.torch.pad_collate to the DataLoader (it pads them along time and adds masks), "
            "or batch_size=None for one episode per step"
        )
    frames = _pop_frames(samples, pad=False)
    out = default_collate(samples)
    out.update(frames)
    return out


default_collate_fn_map[Sample] = _collate_samples


def collate(batch: Sequence[Any]) -> Any:
    """``default_collate`` with kinodb's pre-stacked batches passed through untouched."""
    if isinstance(batch, Batch) and not batch.edited:  # the common case, without building a sample
        return TensorBatch(batch.stacked)
    return default_collate(batch)  # type: ignore[arg-type]  # any sequence of samples


def pad_collate(
    batch: Sequence[Any], *, widths: Mapping[str, int | Sequence[int]] | None = None
) -> TensorBatch:
    """Collate samples whose ``state``/``action`` widths (and episode lengths) differ.

    Pads ``state`` and ``action`` with zeros and adds ``state_mask``/``action_mask``
    (True on real entries) and ``source`` (the source id of each sample, 0 when it has
    none); everything else is collated as ``default_collate`` would. Frame windows of a
    dataset over sources of several schemas (a batch `KinoFrameDataset` gathers, or its
    items taken one by one, as a wrapper dataset or `KinoIterDataset` without
    ``batch_size`` hands them on) are padded to the widest of all its sources, with one
    dtype, so every batch has the same shapes; other samples (episode items, dicts made
    anew) are padded to the widest in the batch (and along time to the longest, for
    episode items).

    Args:
        batch: The samples, or a batch a kinodb dataset gathered at once.
        widths: Pad ``state``/``action`` to at least these per-frame widths, e.g.
            ``{"state": 14, "action": 7}``, for the same shapes in every batch (bind it with
            ``functools.partial``; ``KinoMapDataset.schema_keys().max(0)`` gives the widest).

    Example:
        >>> loader = DataLoader(KinoFrameDataset(mix, action_horizon=8), batch_size=64,
        ...                     collate_fn=kinodb.torch.pad_collate)
    """
    wide = _check_widths(widths)
    if isinstance(batch, (Batch, MixedBatch)) and not batch.edited:  # as gathered: padded as whole arrays
        done = batch.padded(wide)
        if done is not None:
            return done
    spec = _common_pad(batch)
    samples = [dict(s) for s in batch]
    if not samples:
        raise ValueError("pad_collate got an empty batch")
    out: dict[str, Any] = {}
    widths = spec.widths if spec is not None else {}
    dtypes = spec.dtypes if spec is not None else {}
    for key in ("state", "action", *[k for k in widths if k not in ("state", "action")]):
        if key not in samples[0]:
            continue
        values = [torch.as_tensor(s.pop(key)) for s in samples]
        ndim = values[0].dim()
        if any(v.dim() != ndim for v in values):
            raise ValueError(f"pad_collate: {key!r} has different ranks in one batch")
        shape = [max(v.shape[d] for v in values) for d in range(ndim)]
        shape = _widen(_widen(shape, widths.get(key)), wide.get(key))
        dtype = dtypes.get(key, values[0].dtype)
        for v in values:  # float32 and float64 sources: float64, whichever comes first
            dtype = torch.promote_types(dtype, v.dtype)
        padded = torch.zeros((len(values), *shape), dtype=dtype)
        mask = torch.zeros((len(values), *shape), dtype=torch.bool)
        for n, v in enumerate(values):
            region: Any = (n, *[slice(0, d) for d in v.shape])
            padded[region] = v.to(dtype)
            mask[region] = True
        out[key], out[f"{key}_mask"] = padded, mask
    for key, dtype in dtypes.items():  # one dtype in every batch, whichever sources it holds
        if key not in out and key in samples[0]:
            for s in samples:
                s[key] = torch.as_tensor(s[key]).to(dtype)
    if "source" not in samples[0]:
        out["source"] = torch.zeros(len(samples), dtype=torch.int64)
    out.update(_pop_frames(samples, pad=True))
    time_keys = [k for k, v in samples[0].items() if _needs_time_pad(samples, k)]
    for key in time_keys:
        out[key] = _pad_time([torch.as_tensor(s.pop(key)) for s in samples])
    rest = default_collate(samples)
    out.update(rest)
    return TensorBatch(out)


def _common_pad(batch: Sequence[Any]) -> PadSpec | None:
    """The `PadSpec` every sample of ``batch`` carries (samples of one dataset whose sources
    differ in schema), else None."""
    first = getattr(batch[0], "pad", None) if len(batch) else None
    if first is None or not all(getattr(s, "pad", None) == first for s in batch):
        return None
    return first  # type: ignore[no-any-return]


def _check_widths(widths: Mapping[str, int | Sequence[int]] | None) -> dict[str, tuple[int, ...]]:
    if widths is None:
        return {}
    out: dict[str, tuple[int, ...]] = {}
    if isinstance(widths, Mapping):
        for key, value in widths.items():
            dims = (value,) if isinstance(value, (int, np.integer)) else value
            if (
                key in ("state", "action")
                and isinstance(dims, Sequence)
                and dims
                and all(isinstance(d, (int, np.integer)) and not isinstance(d, bool) and d > 0 for d in dims)
            ):
                out[key] = tuple(int(d) for d in dims)
                continue
            break
        else:
            return out
    raise ValueError(
        f"widths must map 'state' and/or 'action' to a positive per-frame width (or shape), such as "
        f"{{'state': 14, 'action': 7}}, got {widths!r}"
    )


def _widen(shape: list[int], wide: tuple[int, ...] | None) -> list[int]:
    """``shape`` with its trailing dims at least ``wide``'s."""
    if wide is None or len(wide) > len(shape):
        return shape
    k = len(shape) - len(wide)
    return shape[:k] + [max(a, b) for a, b in zip(shape[k:], wide, strict=True)]


def _pop_frames(samples: list[dict[str, Any]], *, pad: bool) -> dict[str, Any]:
    """The samples' ``image`` or ``images`` ``{camera: frames}``, taken out of them and
    stacked by `_stack_frames`."""
    out: dict[str, Any] = {}
    for key in ("image", "images"):
        if key in samples[0]:
            values = [s.pop(key) for s in samples]
            if isinstance(values[0], dict):
                out[key] = {cam: _stack_frames([v[cam] for v in values], pad=pad) for cam in values[0]}
            else:
                out[key] = _stack_frames(values, pad=pad)
    return out


def _stack_frames(values: list[Any], *, pad: bool) -> torch.Tensor:
    """Each sample's frames stacked (with ``pad``, zero-padded along time to the longest
    when episode lengths differ); channels-last frames stay channels-last."""
    tensors = [torch.as_tensor(v) for v in values]
    sizes = sorted({tuple(v.shape[-3:]) for v in tensors})
    if len(sizes) > 1:
        raise KinodbError(
            f"frames of one camera come in several sizes in this batch ({', '.join(map(str, sizes))}, as "
            "(C, H, W)); pass image_size=(H, W) to the dataset to resize them to one size"
        )
    last = all(_is_channels_last(v) for v in tensors)
    if last:
        tensors = [v.movedim(-3, -1) for v in tensors]  # the (..., H, W, C) memory, contiguous
    ragged = pad and any(v.shape != tensors[0].shape for v in tensors)
    out = _pad_time(tensors) if ragged else torch.stack(tensors)
    return out.movedim(-1, -3) if last else out


def _is_channels_last(v: torch.Tensor) -> bool:
    return v.dim() >= 3 and not v.is_contiguous() and v.movedim(-3, -1).is_contiguous()


def _needs_time_pad(samples: list[dict[str, Any]], key: str) -> bool:
    first = samples[0][key]
    if not isinstance(first, (torch.Tensor, np.ndarray)) or first.ndim == 0:
        return False
    return any(tuple(s[key].shape) != tuple(first.shape) for s in samples)


def _pad_time(values: list[torch.Tensor]) -> torch.Tensor:
    longest = max(v.shape[0] for v in values)
    out = torch.zeros((len(values), longest, *values[0].shape[1:]), dtype=values[0].dtype)
    for n, v in enumerate(values):
        if v.shape[1:] != values[0].shape[1:]:
            raise ValueError(f"pad_collate: per-frame shapes differ ({tuple(v.shape[1:])} vs "
                             f"{tuple(values[0].shape[1:])}) beyond state/action")  # fmt: skip
        out[n, : v.shape[0]] = v
    return out


class SchemaBatchSampler(Sampler[list[int]]):
    """Batches of indices whose samples share one schema: one ``(state_dim, action_dim)``,
    and for frame windows one frame size per camera, so the default collate stacks them.

    Works with any kinodb dataset exposing ``schema_keys()`` (one key per index); where the
    dataset has ``batch_keys()`` (`KinoFrameDataset`: the dims and each camera's frame
    size) it groups by those instead, so two robots with the same dims but frames of
    different sizes never share a batch (``image_size`` brings them to one size, and
    then they may). Indices are shuffled within each group (seeded by ``seed`` and
    `set_epoch`), cut into batches, and the batches of all groups interleaved in a
    seeded order.

    With several ranks (``torch.distributed`` when initialised, or ``rank=`` and
    ``world_size=``) every rank builds the same epoch of batches and takes every
    ``world_size``-th batch from its rank, so the ranks read disjoint batches and each
    takes ``len(sampler)`` of them: when the number of batches does not divide by the
    world size, the epoch's first batches are repeated up to the next multiple (as
    ``DistributedSampler`` pads), or with ``drop_last`` its last ones are left out.

    Args:
        dataset: A `KinoFrameDataset` or `KinoMapDataset`.
        batch_size: Indices per batch (a group's last batch may be shorter).
        shuffle: Shuffle within groups and the order of the batches.
        drop_last: Leave out each group's short last batch, and the epoch's last batches
            that do not divide among the ranks.
        seed: Seed of every epoch's order.
        rank: This reader's rank (default: from ``torch.distributed``, else 0).
        world_size: Number of ranks (default: from ``torch.distributed``, else 1).

    Example:
        >>> sampler = SchemaBatchSampler(ds, batch_size=64, seed=0)
        >>> for epoch in range(10):
        ...     sampler.set_epoch(epoch)
        ...     for batch in DataLoader(ds, batch_sampler=sampler): ...
    """

    def __init__(
        self,
        dataset: Any,
        batch_size: int,
        *,
        shuffle: bool = True,
        drop_last: bool = False,
        seed: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
    ) -> None:
        if not _is_int(batch_size) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"seed must be a non-negative int, got {seed!r}")
        schema_keys = getattr(dataset, "batch_keys", None) or getattr(dataset, "schema_keys", None)
        if schema_keys is None:
            raise TypeError(
                f"SchemaBatchSampler needs a map-style dataset with schema_keys() (KinoFrameDataset or "
                f"KinoMapDataset), got {type(dataset).__name__}; a streaming dataset batches itself: give "
                "it batch_size (batches of mixed widths come padded), or collate with pad_collate"
            )
        self.rank, self.world_size = _rank_and_world(rank, world_size)
        keys = np.asarray(schema_keys())
        self._groups = [np.flatnonzero((keys == k).all(axis=1)) for k in np.unique(keys, axis=0)]
        self.batch_size, self.shuffle, self.drop_last = int(batch_size), shuffle, drop_last
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Reshuffle deterministically for epoch ``epoch`` (the same on every rank)."""
        self.epoch = int(epoch)

    def _batches(self) -> list[np.ndarray]:
        """Every batch of the epoch, over all ranks, in order."""
        rng = np.random.default_rng([self.seed, self.epoch])
        out: list[np.ndarray] = []
        for group in self._groups:
            idx = rng.permutation(group) if self.shuffle else group
            stop = len(idx) - len(idx) % self.batch_size if self.drop_last else len(idx)
            out.extend(idx[i : i + self.batch_size] for i in range(0, stop, self.batch_size))
        if self.shuffle:
            out = [out[i] for i in rng.permutation(len(out))]
        return out

    def __iter__(self) -> Iterator[list[int]]:
        batches = self._batches()
        mine = len(self)
        if not mine:
            return iter(())
        picks = (np.arange(mine) * self.world_size + self.rank) % len(batches)  # the padding repeats
        return (batches[i].tolist() for i in picks.tolist())

    def __len__(self) -> int:
        """Batches this rank takes per epoch: the same on every rank."""
        n = self._num_batches()
        return n // self.world_size if self.drop_last else -(-n // self.world_size)

    def _num_batches(self) -> int:
        if self.drop_last:
            return sum(len(g) // self.batch_size for g in self._groups)
        return sum(-(-len(g) // self.batch_size) for g in self._groups)


def _rank_and_world(rank: int | None, world_size: int | None) -> tuple[int, int]:
    """``(rank, world size)`` as given, else torch.distributed's where it is initialised,
    else ``(0, 1)``."""
    if (rank is None) != (world_size is None):
        raise ValueError("give both rank and world_size, or neither")
    if rank is None or world_size is None:
        dist = torch.distributed
        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
        return 0, 1
    for name, value in (("rank", rank), ("world_size", world_size)):
        if not _is_int(value):
            raise ValueError(f"{name} must be an int, got {value!r} ({type(value).__name__})")
    if not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank={int(rank)}, world_size={int(world_size)}")
    return int(rank), int(world_size)


def _is_int(value: Any) -> bool:
    """Whether ``value`` is a Python or NumPy int (not a bool)."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


CollateFn = Callable[[Sequence[Any]], Any]
