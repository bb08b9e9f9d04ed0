"""Find temporary files that killed writers left beside their target."""

from __future__ import annotations

import contextlib
import os
import re


def stale_temps(path: str) -> list[str]:
    """Paths of ``.NAME.PID.*.tmp`` siblings of ``path`` whose process no longer runs.

    Writers publish by renaming such a temporary file; one whose writer is gone can
    never be published, so it is safe to delete.
    """
    folder = os.path.dirname(os.path.abspath(path))
    # Exactly ``.NAME.PID.TOKEN.tmp``: ``.a.2024.kdb.PID.TOKEN.tmp`` (a temporary of
    # ``a.2024.kdb``) is not one of ``a``'s, though it starts the same way.
    pattern = re.compile(re.escape(f".{os.path.basename(path)}.") + r"(\d+)\.[0-9a-f]+\.tmp")
    found = []
    with contextlib.suppress(OSError):
        for name in os.listdir(folder):
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
