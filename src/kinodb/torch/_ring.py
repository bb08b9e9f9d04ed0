"""Shared-memory slots through which DataLoader workers hand small batches to the trainer.

torch sends every tensor a worker returns through its own shared-memory segment: the
worker creates a segment, the file descriptor crosses to the main process over a
socket, and the main process maps it. For a batch of low-dimensional windows that
round trip costs more than gathering the batch. A worker instead keeps one `Ring` of a
few fixed slots in ``/dev/shm`` for its whole life, copies a pickled batch's bytes into
a free slot and sends only ``(ring, slot, layout)``. The receiving process maps each
ring once and lends the slot to the batch (`lease_slot`): the batch's tensors are views
of the slot, nothing is copied, and the slot goes back to the worker when the last of
them is freed, as torch's own segments do. The receiver unlinks a ring's name when it
opens it (on the first batch), so the ring never outlives both processes, even when a
worker is killed.

A slot's state byte: 0 free, 1 written and not yet received, 2 lent to a batch in the
receiving process. Anything that does not fit goes the ordinary way, so the ring can
only save time: no ``/dev/shm``, a payload over `MAX_PAYLOAD`, every slot lent to
batches the trainer still holds, or slots still unreceived after `WAIT_S`.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import secrets
import threading
import time
from multiprocessing.util import Finalize
from typing import Any

import numpy as np

__all__ = ["MAX_PAYLOAD", "Ring", "lease_slot", "worker_ring"]

SHM_DIR = "/dev/shm"
MAX_PAYLOAD = 2 << 20  # larger batches (decoded images) gain little and would pin more memory
SLOTS = 8  # prefetch_factor (2 by default) batches in flight, plus those the trainer holds
HEADER = 64  # one state byte per slot (FREE, SENT or LENT), then the slots
FREE, SENT, LENT = 0, 1, 2
ALIGN = 1 << 16
WAIT_S = 0.05


class Ring:
    """A worker's slots in one ``/dev/shm`` file, unlinked when the worker exits.

    Args:
        slot_size: Bytes per slot (a multiple of 64 KiB).
        slots: Number of slots (at most 64; `SLOTS` by default).
    """

    def __init__(self, slot_size: int, slots: int | None = None) -> None:
        slots = SLOTS if slots is None else slots
        self.slot_size, self.slots = slot_size, slots
        self.path = os.path.join(SHM_DIR, f"kinodb-batches-{os.getpid()}-{secrets.token_hex(6)}")
        size = HEADER + slot_size * slots
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            self._finalizer = Finalize(self, _unlink, (self.path,), exitpriority=10)
            # Reserve the memory now: a full /dev/shm is an OSError here, not a SIGBUS later.
            os.posix_fallocate(fd, 0, size)
            self._mm = mmap.mmap(fd, size)
        except BaseException:
            _unlink(self.path)
            raise
        finally:
            os.close(fd)
        self._next = 0
        self._lock = threading.Lock()

    def take(self) -> int | None:
        """A free slot, marked SENT (the receiver frees it); None at once when every slot
        is lent to a batch still held, or when slots stayed unreceived for `WAIT_S`."""
        mm, n = self._mm, self.slots
        with self._lock:
            deadline = None
            while True:
                slot = mm.find(b"\x00", self._next, n)
                if slot < 0:
                    slot = mm.find(b"\x00", 0, self._next)
                if slot >= 0:
                    mm[slot] = SENT
                    self._next = (slot + 1) % n
                    return slot
                if mm.find(b"\x01", 0, n) < 0:  # all lent: the trainer keeps its batches
                    return None
                now = time.monotonic()
                if deadline is None:
                    deadline = now + WAIT_S
                elif now > deadline:
                    return None
                time.sleep(0.0002)

    def view(self, slot: int, nbytes: int) -> np.ndarray:
        """The first ``nbytes`` of ``slot``, writable uint8."""
        return np.frombuffer(self._mm, dtype=np.uint8, count=nbytes, offset=self.offset(slot))

    def offset(self, slot: int) -> int:
        return HEADER + slot * self.slot_size

    def close(self) -> None:
        self._finalizer()


def _unlink(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


class _Map:
    """A ring mapped in the receiving process, and the address of its first byte."""

    __slots__ = ("addr", "mm")

    def __init__(self, fd: int) -> None:
        self.mm = mmap.mmap(fd, 0)
        self.addr = np.frombuffer(self.mm, dtype=np.uint8, count=1).ctypes.data


class _Lease:
    """One slot lent to a batch: NumPy arrays made from it keep it (as their ``base``)
    and the map alive; when the last of them goes, the slot is free again."""

    __slots__ = ("__array_interface__", "_map", "_pid", "_slot")

    def __init__(self, ring: _Map, slot: int, offset: int, nbytes: int) -> None:
        ring.mm[slot] = LENT
        self._map, self._slot, self._pid = ring, slot, os.getpid()
        self.__array_interface__ = {
            "shape": (nbytes,), "typestr": "|u1", "data": (ring.addr + offset, False), "version": 3,
        }  # fmt: skip

    def __del__(self, _getpid: Any = os.getpid) -> None:
        # No module globals: at interpreter exit they may already be gone.
        try:
            if self._pid == _getpid():  # a forked child's copy is not the holder
                self._map.mm[self._slot] = 0  # FREE
        except Exception:  # nothing to free into any more
            pass


_readers: dict[str, _Map] = {}  # ring path -> its map, in the receiving process
_readers_lock = threading.Lock()


def lease_slot(path: str, slot: int, offset: int, nbytes: int) -> np.ndarray:
    """The first ``nbytes`` of ``slot`` of the ring at ``path``, as a writable uint8 array
    that holds the slot until it (and every view of it) is freed."""
    ring = _readers.get(path)
    if ring is None:
        ring = _open_ring(path)
    return np.asarray(_Lease(ring, slot, offset, nbytes))


def _open_ring(path: str) -> _Map:
    """Map a ring on its first batch and unlink its name at once: from then on the ring
    lives only as long as its worker and the batches lent from it, so a killed worker
    leaves nothing in /dev/shm. Rings whose workers have exited are dropped here (their
    maps close with the last batch lent from them)."""
    with _readers_lock:
        ring = _readers.get(path)
        if ring is not None:
            return ring
        try:
            fd = os.open(path, os.O_RDWR)
        except FileNotFoundError:
            raise RuntimeError(
                f"a DataLoader worker's batch buffer {path} is gone (the worker exited before its "
                "batch was read); re-create the DataLoader iterator"
            ) from None
        try:
            ring = _Map(fd)
        finally:
            os.close(fd)
        _unlink(path)
        for old in [p for p in _readers if not _alive(_worker_pid(p))]:
            del _readers[old]
        _readers[path] = ring
        return ring


def _worker_pid(path: str) -> int:
    return int(os.path.basename(path).split("-")[2])


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


_lock = threading.Lock()
_ring: Ring | None = None
_ring_pid = -1


def worker_ring(nbytes: int) -> Ring | None:
    """This process's ring, made on first use with slots sized for ``nbytes``; None where
    no ring can serve a payload of ``nbytes`` (too large, or shared memory unavailable)."""
    global _ring, _ring_pid
    if nbytes > MAX_PAYLOAD:
        return None
    with _lock:
        if _ring_pid != os.getpid():  # first use in this process (a fork copies the parent's)
            _ring, _ring_pid = None, os.getpid()
            if os.path.isdir(SHM_DIR):
                size = min(MAX_PAYLOAD, max(2 * nbytes, ALIGN))
                try:
                    _ring = Ring(-(-size // ALIGN) * ALIGN)
                except OSError:
                    _ring = None
        ring = _ring
    if ring is None or nbytes > ring.slot_size:
        return None
    return ring
