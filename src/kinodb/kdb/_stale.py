"""What is stale: temporary files that killed writers left beside their target, and
stored statistics that no longer describe their file."""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Mapping
from typing import Any


def stale_temps(path: str, *, kinds: tuple[str, ...] = ("tmp",)) -> list[str]:
    """Paths of ``.NAME.PID.TOKEN.KIND`` siblings of ``path`` whose process no longer runs.

    ``kinds`` are the suffixes looked for. Writers publish by renaming a ``.tmp`` file;
    one whose writer is gone can never be published, so it is safe to delete. A folder
    export replacing an earlier one also moves that one aside as ``.old`` (restored if
    the new one cannot move in) and renames it ``.del`` to delete it: a ``.del`` is always
    safe to delete, an ``.old`` only once ``path`` exists again (see
    `kinodb.export._base.staged`).
    """
    folder = os.path.dirname(os.path.abspath(path))
    # Exactly ``.NAME.PID.TOKEN.tmp``: ``.a.2024.kdb.PID.TOKEN.tmp`` (a temporary of
    # ``a.2024.kdb``) is not one of ``a``'s, though it starts the same way.
    suffixes = "|".join(re.escape(kind) for kind in kinds)
    pattern = re.compile(re.escape(f".{os.path.basename(path)}.") + rf"(\d+)\.[0-9a-f]+\.(?:{suffixes})")
    found = []
    with contextlib.suppress(OSError):
        for name in sorted(os.listdir(folder)):
            match = pattern.fullmatch(name)
            if match is None:
                continue
            pid = match.group(1)
            try:
                os.kill(int(pid), 0)
            except ProcessLookupError:
                found.append(os.path.join(folder, name))
            except (PermissionError, OverflowError):
                pass  # alive and owned by someone else, or not a pid at all
    return found


def stale_stats(stats: Mapping[str, Any], num_frames: int, num_episodes: int) -> str | None:
    """Why stored statistics ``stats`` no longer describe a file of ``num_frames`` frames in
    ``num_episodes`` episodes (their counts disagree, or a writer marked them stale), or None."""
    frames, episodes = stats.get("num_frames"), stats.get("num_episodes")
    same = frames == num_frames and episodes in (None, num_episodes)
    if same and not stats.get("stale"):
        return None
    if same:  # marked by a writer, yet the counts agree: episodes were replaced
        return "the file's episodes changed after they were computed"
    then = f"{frames} frames" + ("" if episodes is None else f" in {_count(episodes, 'episode')}")
    now = f"{num_frames} frames" + ("" if episodes is None else f" in {_count(num_episodes, 'episode')}")
    return f"the file changed after they were computed ({then} then, {now} now)"


def _count(n: Any, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"
