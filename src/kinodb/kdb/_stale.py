"""What is stale: temporary files that killed writers left beside their target, and
stored statistics that no longer describe their file.

A writer holds an exclusive ``flock`` on its temporary file for as long as it lives
(`hold_temp`): a temporary that can be locked has no writer, wherever that writer ran. A
process id alone cannot say so: writers in other PID namespaces (containers sharing a
volume) have ids that mean nothing here.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Mapping
from typing import Any, BinaryIO

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no advisory locks, process ids alone decide
    fcntl = None  # type: ignore[assignment]

_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)


def stale_temps(path: str, *, kinds: tuple[str, ...] = ("tmp",)) -> list[str]:
    """Paths of ``.NAME.PID.TOKEN.KIND`` siblings of ``path`` whose process no longer runs.

    ``kinds`` are the suffixes looked for. Writers publish by renaming a ``.tmp`` file;
    one whose writer is gone can never be published, so it is safe to delete. A folder
    export replacing an earlier one also moves that one aside as ``.old`` (restored if
    the new one cannot move in) and renames it ``.del`` to delete it: a ``.del`` is always
    safe to delete, an ``.old`` only once ``path`` exists again (see
    `kinodb.export._base.staged`). A file that another process holds locked (a writer's
    temporary, see `hold_temp`) is never one of them, whatever its process id.
    """
    return [tmp for tmp in _unclaimed(path, kinds) if _lockable(tmp)]


def remove_stale_temps(path: str) -> list[str]:
    """Delete the ``.NAME.PID.TOKEN.tmp`` temporaries of ``path`` that no writer holds; the
    paths deleted.

    One is deleted only while this process holds its lock, so that no writer can hold it
    meanwhile; one whose process id runs here is kept, locked or not. Where files cannot
    be locked (no ``fcntl``, a filesystem without locks), the process id alone decides.
    """
    removed = []
    for tmp in _unclaimed(path, ("tmp",)):
        try:
            fd = os.open(tmp, _OPEN_FLAGS)
        except OSError:  # gone, or not this user's to open: left alone
            continue
        try:
            if _try_lock(fd) is False or not _same_file(fd, tmp):
                continue
            os.unlink(tmp)
            removed.append(tmp)
        except OSError:
            pass
        finally:
            os.close(fd)
    return removed


def hold_temp(fh: BinaryIO, path: str) -> bool:
    """Lock ``fh``, the open temporary file at ``path`` that a writer has just created, so
    that no other writer's sweep (`remove_stale_temps`) deletes it; whether it is still
    this writer's: False when another process's sweep locked or deleted it first (the
    writer then creates another). The lock lasts as long as ``fh`` is open."""
    if _try_lock(fh.fileno()) is False:
        return False
    return _same_file(fh.fileno(), path)


def release_temp(owner: int, held: BinaryIO | None) -> None:
    """Close ``held`` (`hold_temp`), releasing the lock on a writer's temporary file: in the
    process ``owner`` that opened the writer only (a forked child's copy is closed at the
    fork, `kinodb.kdb._files.parent_only`)."""
    if held is not None and os.getpid() == owner:
        with contextlib.suppress(OSError, ValueError):
            held.close()


def _unclaimed(path: str, kinds: tuple[str, ...]) -> list[str]:
    """The ``.NAME.PID.TOKEN.KIND`` siblings of ``path`` whose process id runs no process here."""
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


def _try_lock(fd: int) -> bool | None:
    """Take an exclusive lock on ``fd`` without waiting: True if taken, False if another
    open file holds one, None where locks are unavailable (released when ``fd`` closes)."""
    if fcntl is None:  # pragma: no cover - Windows
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError:  # a filesystem without locks
        return None
    return True


def _lockable(path: str) -> bool:
    """Whether no other process holds a lock on the file or folder at ``path``."""
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except OSError:
        return True  # cannot look: the process id decides, as it did before locks
    try:
        return _try_lock(fd) is not False
    finally:
        os.close(fd)


def _same_file(fd: int, path: str) -> bool:
    """Whether the open file ``fd`` is still the file at ``path`` (not deleted or replaced)."""
    try:
        st, now = os.fstat(fd), os.stat(path)
    except OSError:
        return False
    return st.st_nlink > 0 and (st.st_dev, st.st_ino) == (now.st_dev, now.st_ino)


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
