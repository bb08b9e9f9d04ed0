"""Timing an ingest against a read-only peer of the same source, alternating, in one process."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def measure(
    ingest: Callable[[], object], read: Callable[[], object], out: Path, *, peer: str, repeats: int, frames: int,
    nbytes: int, options: dict[str, Any],
) -> dict[str, Any]:  # fmt: skip
    """Time ``ingest()`` (which writes ``out``) and ``read()`` (the peer, timed as ``peer``),
    alternating which goes first; return the row with medians and the throughput ratio.

    The previous run's ``out`` is deleted off the clock: a user's ingest writes a new file.
    """
    times: dict[str, list[float]] = {"ingest": [], peer: []}
    for r in range(repeats):
        for name in ("ingest", peer) if r % 2 == 0 else (peer, "ingest"):
            if name == "ingest" and out.exists():
                out.unlink()
            t0 = time.perf_counter()
            ingest() if name == "ingest" else read()
            times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        "options": options, "frames": frames, "source_bytes": nbytes, "output_bytes": out.stat().st_size,
        "seconds": times, "median_seconds": med,
        "ingest_frames_per_s": frames / med["ingest"], "read_frames_per_s": frames / med[peer],
        "ingest_MBps": nbytes / med["ingest"] / 1e6, "read_MBps": nbytes / med[peer] / 1e6,
        "throughput_ratio_ingest_over_read": med[peer] / med["ingest"],
    }  # fmt: skip


def print_rows(rows: dict[str, dict[str, Any]], peer: str) -> None:
    """The rows as a table: ingest and the peer's frames/s and MB/s, and their ratio."""
    print(f"{'row':<12} {'ingest':>22} {peer + ' read-only':>24} {'ratio':>7}")
    for name, row in rows.items():
        print(
            f"{name:<12} {row['ingest_frames_per_s']:>9,.0f} fr/s {row['ingest_MBps']:>6.0f} MB/s "
            f"{row['read_frames_per_s']:>10,.0f} fr/s {row['read_MBps']:>6.0f} MB/s "
            f"{row['throughput_ratio_ingest_over_read']:>6.2f}x"
        )
