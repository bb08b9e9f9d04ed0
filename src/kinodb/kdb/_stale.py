"""Find temporary files that killed writers left beside their target."""

from __future__ import annotations

import contextlib
import os


def stale_temps(path: str) -> list[str]:
    """Paths of ``.NAME.PID.*.tmp`` siblings of ``path`` whose process no longer runs.

    Writers publish by renaming such a temporary file; one whose writer is gone can
    never be published, so it is safe to delete.
    """
    folder = os.path.dirname(os.path.abspath(path))
    prefix = f".{os.path.basename(path)}."
    found = []
    with contextlib.suppress(OSError):
        for name in os.listdir(folder):
            pid = name[len(prefix) :].split(".")[0]
            if not (name.startswith(prefix) and name.endswith(".tmp") and pid.isdigit()):
                continue
            try:
                os.kill(int(pid), 0)
            except ProcessLookupError:
                found.append(os.path.join(folder, name))
            except (PermissionError, OverflowError):
                pass  # alive and owned by someone else, or not a pid at all
    return found
