"""What a DataLoader worker reading kinodb data does before its process exits.

A worker that stops early (the training loop left the epoch, or deleted the DataLoader)
exits while its queue's feeder thread may still be pickling a batch, inside torch's C++
code that moves each tensor's memory into shared memory. A spawned worker then
finalises Python, which ends such a daemon thread as it takes the GIL back by unwinding
it through C++ frames that do not allow it: ``terminate called without an active
exception``, SIGABRT, the DataLoader reports ``worker ... is killed by signal: Aborted``,
and a shared-memory file torch had made for the batch may stay in ``/dev/shm``. Batches
of decoded frames take long to hand over, which makes that likely. Joining the feeder
first, from a finaliser that multiprocessing runs at the worker's exit before Python
finalises, avoids it. Forked workers leave through ``os._exit`` and never finalise.

Every kinodb dataset (local or `KinoRemoteDataset`) calls `settle_at_exit` when it
starts reading in a process.
"""

from __future__ import annotations

import os
import threading
import time
from multiprocessing.util import Finalize

from torch.utils.data import get_worker_info

__all__ = ["SETTLE_S", "settle_at_exit"]

SETTLE_S = 2.0  # at most this long; torch stops a worker that takes 5 s to exit
_settled_pid = -1


def settle_at_exit() -> None:
    """In a DataLoader worker, make the process wait at exit (up to `SETTLE_S`) for its
    queue to hand over its last batches; once per process, nothing elsewhere."""
    global _settled_pid
    if _settled_pid == os.getpid() or get_worker_info() is None:
        return
    _settled_pid = os.getpid()
    # Priority 0: after the queue's own finaliser (10) has told the feeder to finish.
    Finalize(None, _join_queue_feeders, exitpriority=0)


def _join_queue_feeders() -> None:
    deadline = time.monotonic() + SETTLE_S
    for thread in threading.enumerate():
        if thread.name == "QueueFeederThread" and thread is not threading.current_thread():
            thread.join(max(0.0, deadline - time.monotonic()))
