"""The ingest's progress on stderr: a tqdm bar, else a plain counter, sparse in log files.

`kinodb.ingest._run` re-exports the names other modules import from it.
"""

from __future__ import annotations

import sys
import time
from typing import Any

QUIET_REFRESH_S = 30.0
"""How often the progress is written where stderr is no terminal (a batch job's log file)."""


class _Progress:
    """Episodes done, on stderr: a tqdm bar, else a plain counter; nothing when not ``enabled``.

    Where stderr is no terminal (Slurm's and other batch jobs' log files), it is written
    at most every `QUIET_REFRESH_S` seconds, not at every refresh. `close` ends the line;
    the ingest calls it before an error or an interruption is reported, so that no bar is
    written after the message.
    """

    def __init__(self, total: int, enabled: bool) -> None:
        self.total, self.n = total, 0
        self._bar: Any = None
        self._enabled = enabled
        self._terminal = enabled and _is_terminal(sys.stderr)
        self._pending = False  # the counter's line has no newline yet
        self._t0 = self._shown = time.perf_counter()
        if not enabled:
            return
        try:
            from tqdm import tqdm  # optional: a plain counter without it
        except ImportError:
            return
        every = {} if self._terminal else {"mininterval": QUIET_REFRESH_S, "maxinterval": QUIET_REFRESH_S}
        self._bar = tqdm(total=total, unit="episode", file=sys.stderr, dynamic_ncols=True, **every)

    def __call__(self, key: str) -> None:
        """One more episode done (``key``)."""
        self.n += 1
        if self._bar is not None:
            self._bar.update(1)
            if self.n == self.total:
                self.close()
        elif self._enabled:
            self._count()

    def _count(self) -> None:
        now = time.perf_counter()
        last = self.n == self.total
        if self._terminal:
            if not (last or self.n % 100 == 0):
                return
            end = "\n" if last else ""
        elif last or now - self._shown >= QUIET_REFRESH_S:
            end = "\n"
        else:
            return
        self._shown = now
        rate = self.n / max(now - self._t0, 1e-9)
        start = "\r" if self._terminal else ""
        print(f"{start}{self.n}/{self.total} episodes ({rate:.1f} episodes/s)", end=end, file=sys.stderr)
        self._pending = not end

    def close(self) -> None:
        """End the bar's line (again: no-op)."""
        if self._bar is not None:
            self._bar.close()
        elif self._pending:
            print(file=sys.stderr)
            self._pending = False


def _is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # None, or closed
        return False
