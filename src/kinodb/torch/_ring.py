"""Shared-memory slots through which DataLoader workers hand small batches to the trainer.

torch sends every tensor a worker returns through its own shared-memory segment: the
worker creates a segment, the file descriptor crosses to the main process over a
socket, and the main process maps it. For a batch of low-dimensional windows that
round trip costs more than gathering the batch. A worker instead keeps one `Ring` of a
few fixed slots in ``/dev/shm`` for its whole life, copies a pickled batch's bytes into
a free slot and sends only ``(ring, slot, layout)``. The receiving process reads the
slot into memory of its own with one ``preadv`` and marks the slot free with one
``pwrite``: the batch it gets owns its memory, as with torch's own transport. The
receiver unlinks a ring's name when it opens it (on the first batch), so the ring
never outlives both processes, even when a worker is killed.

Anything that does not fit (no ``/dev/shm``, a payload over `MAX_PAYLOAD`, every slot
still unread after `WAIT_S`) goes the ordinary way, so the ring can only save time.
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

__all__ = ["MAX_PAYLOAD", "Ring", "read_slot", "worker_ring"]

SHM_DIR = "/dev/shm"
MAX_PAYLOAD = 2 << 20  # larger batches (decoded images) gain little and would pin more memory
SLOTS = 6  # a worker has at most prefetch_factor (2 by default) batches unread at a time
HEADER = 64  # one state byte per slot (0 free, 1 holds a batch), then the slots
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


_readers: dict[str, int] = {}  # ring path -> descriptor, in the reading process
_readers_lock = threading.Lock()


def read_slot(path: str, slot: int, offset: int, out: Any) -> None:
    """Fill ``out`` (a writable buffer) from ``slot`` of the ring at ``path``, then free the slot.

    A batch read back in the worker that packed it (a copy or pickle made there) comes
    straight from the worker's own map, which stays linked for the main process.
    """
    own = _ring if _ring is not None and _ring.path == path and _ring_pid == os.getpid() else None
    if own is not None:
        n = len(memoryview(out).cast("B"))
        np.frombuffer(out, dtype=np.uint8)[:] = own.view(slot, n)
        own._mm[slot] = 0
        return
    fd = _readers.get(path)
    if fd is None:
        fd = _open_ring(path)
    got = os.preadv(fd, [out], offset)
    if got != len(memoryview(out).cast("B")):
        raise RuntimeError(f"short read of a batch from {path}: {got} bytes")
    os.pwrite(fd, b"\x00", slot)


def _open_ring(path: str) -> int:
    """Open a ring on its first batch and unlink its name at once: from then on the ring
    lives only as long as its worker and this descriptor, so a killed worker leaves
    nothing in /dev/shm. Descriptors of rings whose workers have exited are closed here."""
    with _readers_lock:
        fd = _readers.get(path)
        if fd is not None:
            return fd
        try:
            fd = os.open(path, os.O_RDWR)
        except FileNotFoundError:
            raise RuntimeError(
                f"a DataLoader worker's batch buffer {path} is gone (the worker exited before its "
                "batch was read); re-create the DataLoader iterator"
            ) from None
        _unlink(path)
        for old in [p for p in _readers if not _alive(_worker_pid(p))]:
            os.close(_readers.pop(old))
        _readers[path] = fd
        return fd


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


STALE_S = 600.0  # a ring's name lives until its first batch is read: older names are leftovers


def _remove_stale_rings() -> None:
    """Unlink rings left in /dev/shm by workers killed before their first batch was read
    (the name is unlinked on that read, so an old name whose worker is gone is a leftover)."""
    now = time.time()
    with contextlib.suppress(OSError):
        for name in os.listdir(SHM_DIR):
            if not name.startswith("kinodb-batches-"):
                continue
            path = os.path.join(SHM_DIR, name)
            with contextlib.suppress(OSError, ValueError, IndexError):
                if now - os.stat(path).st_mtime > STALE_S and not _alive(_worker_pid(path)):
                    os.unlink(path)


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
                _remove_stale_rings()
                size = min(MAX_PAYLOAD, max(2 * nbytes, ALIGN))
                try:
                    _ring = Ring(-(-size // ALIGN) * ALIGN)
                except OSError:
                    _ring = None
        ring = _ring
    if ring is None or nbytes > ring.slot_size:
        return None
    return ring
