"""Shared-memory slots through which DataLoader workers hand small batches to the trainer.

torch sends every tensor a worker returns through its own shared-memory segment: the
worker creates a segment, the file descriptor crosses to the main process over a
socket, and the main process maps it. For a batch of low-dimensional windows that
round trip costs more than gathering the batch. A worker instead keeps one `Ring` of a
few fixed slots for its whole life, copies a pickled batch's bytes into a free slot and
sends only ``(ring, slot, layout)``. The receiving process reads the slot into memory
of its own with one ``preadv`` and marks the slot free with one ``pwrite``: the batch it
gets owns its memory, as with torch's own transport.

The ring is an anonymous memory file (``memfd_create``): it has no name in ``/dev/shm``
or anywhere else, so nothing can be left behind, whatever kills the worker or the
trainer and whenever. The kernel frees it when the last descriptor and map of it close.
The worker keeps its descriptor open, and the receiving process opens the same file
once, on the first batch of that ring, through ``/proc/<worker pid>/fd/<descriptor>``
(the ring's inode number, sent along, makes sure it is that file); it closes its
descriptors of rings whose workers have exited.

Anything that does not fit (no ``memfd_create`` or ``/proc``, a payload over
`MAX_PAYLOAD`, every slot still unread after `WAIT_S`) goes the ordinary way, so the
ring can only save time.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import threading
import time
from collections.abc import Sequence
from multiprocessing.util import Finalize
from typing import Any

import numpy as np

__all__ = ["MAX_PAYLOAD", "Ring", "RingKey", "read_slot", "worker_ring"]

MAX_PAYLOAD = 2 << 20  # larger batches (decoded images) gain little and would pin more memory
SLOTS = 6  # a worker has at most prefetch_factor (2 by default) batches unread at a time
HEADER = 64  # one state byte per slot (0 free, 1 holds a batch), then the slots
ALIGN = 1 << 16
WAIT_S = 0.05

RingKey = tuple[int, int, int]  # (worker pid, its descriptor of the ring, the ring's inode)


def available() -> bool:
    """Whether rings can be made here: anonymous memory files and ``/proc`` (Linux)."""
    return hasattr(os, "memfd_create") and os.path.isdir("/proc/self/fd")


class Ring:
    """A worker's slots in one anonymous memory file, freed with the last process using it.

    Args:
        slot_size: Bytes per slot (a multiple of 64 KiB).
        slots: Number of slots (at most 64; `SLOTS` by default).
    """

    def __init__(self, slot_size: int, slots: int | None = None) -> None:
        slots = SLOTS if slots is None else slots
        self.slot_size, self.slots = slot_size, slots
        size = HEADER + slot_size * slots
        fd = os.memfd_create("kinodb-batches", os.MFD_CLOEXEC)
        try:
            # Reserve the memory now: running out is an OSError here, not a SIGBUS later.
            os.posix_fallocate(fd, 0, size)
            self._mm = mmap.mmap(fd, size)
            self.key: RingKey = (os.getpid(), fd, os.fstat(fd).st_ino)
        except BaseException:
            os.close(fd)
            raise
        self._finalizer = Finalize(self, _close_quietly, (fd,), exitpriority=10)
        self._next = 0
        self._lock = threading.Lock()

    def take(self) -> int | None:
        """A free slot, marked taken (the reader frees it); None when every slot stayed
        taken for `WAIT_S`."""
        mm, n = self._mm, self.slots
        with self._lock:
            deadline = None
            while True:
                slot = mm.find(b"\x00", self._next, n)
                if slot < 0:
                    slot = mm.find(b"\x00", 0, self._next)
                if slot >= 0:
                    mm[slot] = 1
                    self._next = (slot + 1) % n
                    return slot
                now = time.monotonic()
                if deadline is None:
                    deadline = now + WAIT_S
                elif now > deadline:
                    return None
                time.sleep(0.0002)

    def release(self, slot: int) -> None:
        """Free ``slot`` unread (its batch was not sent)."""
        self._mm[slot] = 0

    def view(self, slot: int, nbytes: int) -> np.ndarray:
        """The first ``nbytes`` of ``slot``, writable uint8."""
        return np.frombuffer(self._mm, dtype=np.uint8, count=nbytes, offset=self.offset(slot))

    def offset(self, slot: int) -> int:
        return HEADER + slot * self.slot_size

    def close(self) -> None:
        """Close the worker's descriptor (readers holding theirs keep the file)."""
        self._finalizer()


def _close_quietly(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.close(fd)


_readers: dict[tuple[int, int], int] = {}  # (worker pid, ring inode) -> descriptor, in the reader
_readers_lock = threading.Lock()


def read_slot(key: RingKey, slot: int, offset: int, out: Sequence[Any]) -> None:
    """Fill the writable uint8 arrays ``out``, one after the other, from ``slot`` of the
    ring ``key``, then free the slot.

    A batch read back in the worker that packed it (one sent to a process of its own)
    comes straight from the worker's own map.
    """
    n = sum(len(part) for part in out)
    own = _ring if _ring is not None and _ring.key == key and _ring_pid == os.getpid() else None
    if own is not None:
        data, at = own.view(slot, n), 0
        for part in out:
            part[:] = data[at : at + len(part)]
            at += len(part)
        own.release(slot)
        return
    fd = _readers.get((key[0], key[2]))
    if fd is None:
        fd = _open_ring(key)
    got = os.preadv(fd, list(out), offset)
    if got != n:
        raise RuntimeError(f"short read of a batch from the ring of worker {key[0]}: {got} bytes")
    os.pwrite(fd, b"\x00", slot)


def _open_ring(key: RingKey) -> int:
    """Open a worker's ring on its first batch, through the worker's own descriptor.
    Descriptors of rings whose workers have exited are closed here (the batches they
    held have been read)."""
    pid, worker_fd, ino = key
    with _readers_lock:
        fd = _readers.get((pid, ino))
        if fd is not None:
            return fd
        gone = RuntimeError(
            f"the batch buffer of DataLoader worker {pid} is gone (the worker exited before its batch "
            "was read); re-create the DataLoader iterator"
        )
        try:
            fd = os.open(f"/proc/{pid}/fd/{worker_fd}", os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            raise gone from None
        except PermissionError:
            raise RuntimeError(
                f"cannot open the batch buffer of DataLoader worker {pid} through /proc/{pid}/fd: this "
                "system does not let a process open another's descriptors"
            ) from None
        if os.fstat(fd).st_ino != ino:  # the worker is gone and its pid and descriptor reused
            os.close(fd)
            raise gone
        for old in [k for k in _readers if not _alive(k[0])]:
            os.close(_readers.pop(old))
        _readers[(pid, ino)] = fd
        return fd


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
    no ring can serve a payload of ``nbytes`` (too large, or rings unavailable here)."""
    global _ring, _ring_pid
    if nbytes > MAX_PAYLOAD:
        return None
    with _lock:
        if _ring_pid != os.getpid():  # first use in this process (a fork copies the parent's)
            _ring, _ring_pid = None, os.getpid()
            if available() and _parent_readable():
                size = min(MAX_PAYLOAD, max(2 * nbytes, ALIGN))
                try:
                    _ring = Ring(-(-size // ALIGN) * ALIGN)
                except OSError:
                    _ring = None
        ring = _ring
    if ring is None or nbytes > ring.slot_size:
        return None
    return ring


def _parent_readable() -> bool:
    """Whether this process may open its parent's descriptors, as a stand-in for the
    parent opening ours (the same test, the other way round): where a security policy
    forbids it, batches take torch's own path."""
    try:
        os.listdir(f"/proc/{os.getppid()}/fd")
    except OSError:
        return False
    return True
