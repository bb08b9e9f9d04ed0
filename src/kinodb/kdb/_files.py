"""The file side: mapping files to read (`FolderError` for a folder given as a file); locks,
temporary files, publishing and background syncs to write, and `refuse_folder` for an output
path that names a folder."""

from __future__ import annotations

import contextlib
import errno
import mmap
import os
import secrets
import shlex
import stat
import threading
import weakref
from typing import BinaryIO

from kinodb.errors import FormatError, WriterError
from kinodb.kdb._layout import DATA_START, read_preamble

_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
# Opening a FIFO for reading waits for a writer; without blocking, it is found and refused.
# The flag has no effect on a regular file's map.
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)


def lock(fd: int, path: str) -> None:
    """Take the writers' exclusive lock on the open file ``fd``, or raise `WriterError`."""
    try:
        import fcntl  # POSIX only
    except ImportError:  # pragma: no cover - Windows has no advisory locks here
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as exc:
        raise WriterError(
            f"{path}: another writer is writing to this file (in this process or another); retry when it is "
            "done, or close or abort that Writer"
        ) from exc


def hold(path: str) -> int | None:
    """Lock the regular file at ``path`` against appenders until it is replaced; its
    descriptor (None if there is no regular file to lock). Raises `WriterError` while
    another writer appends to it."""
    try:  # non-blocking: opening a FIFO for reading would wait for a writer
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError:  # gone, or no file to lock: creating the new one reports what is wrong
        return None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        return None
    try:
        lock(fd, path)
    except OSError:  # a filesystem without locks: replace as before, unguarded
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise
    return fd


def output_error(path: str, exc: OSError) -> WriterError:
    """``exc``, raised creating the file beside ``path``, said of ``path`` and its folder."""
    folder = os.path.dirname(os.path.abspath(path))
    if isinstance(exc, FileNotFoundError):
        return WriterError(f"{path}: the folder {folder} does not exist; create it first")
    if isinstance(exc, NotADirectoryError):
        return WriterError(f"{path}: {folder} is not a folder; give a path inside a folder")
    if isinstance(exc, PermissionError) or exc.errno == errno.EROFS:
        return WriterError(
            f"{path}: cannot create files in {folder} ({exc.strerror}); choose a writable folder"
        )
    return WriterError(f"{path}: cannot create a file in {folder} ({exc.strerror or exc})")


def fsync_dir(path: str) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class Flusher:
    """Pushes written bytes to disk on a background thread while the writer goes on.

    Every `EVERY` bytes, the writer's buffer is handed to the kernel and one thread runs
    ``fdatasync``, so the disk works while the next episodes are converted and the
    commit's own fsync has little left to wait for. Durability still rests on that
    commit fsync; a failed background sync fails the commit (the kernel reports a
    write-back error once, so it must not be lost here).
    """

    EVERY = 64 << 20

    def __init__(self, pos: int) -> None:
        self._synced = pos
        self._thread: threading.Thread | None = None
        self._error: OSError | None = None

    def after_write(self, fh: BinaryIO, pos: int) -> None:
        if pos - self._synced < self.EVERY or (self._thread is not None and self._thread.is_alive()):
            return
        fh.flush()
        self._synced = pos
        self._thread = threading.Thread(
            target=self._sync, args=(fh.fileno(),), name="kinodb-fdatasync", daemon=True
        )
        self._thread.start()

    def _sync(self, fd: int) -> None:
        try:
            getattr(os, "fdatasync", os.fsync)(fd)
        except OSError as exc:
            self._error = exc

    def wait(self, path: str) -> None:
        """Wait for a sync in flight; raise its error, if it had one."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise WriterError(f"{path}: writing to disk failed ({error}); nothing was committed") from error


def still_at(fd: int, path: str) -> bool:
    """Whether the open file ``fd`` is still the file at ``path`` (not replaced or deleted)."""
    st = os.fstat(fd)
    try:
        now = os.stat(path)
    except FileNotFoundError:
        return False
    return st.st_nlink > 0 and (st.st_dev, st.st_ino) == (now.st_dev, now.st_ino)


def publish_new(tmp: str, path: str) -> None:
    """Move the committed temporary file to ``path``, failing if ``path`` exists.

    Raises:
        FileExistsError: ``path`` exists (another writer created it meanwhile); ``tmp``
            stays, for the caller to keep or delete.
    """
    try:
        os.link(tmp, path)  # atomic, and refuses an existing name
    except FileExistsError:
        raise FileExistsError(
            f"{path} was created by another writer while this one wrote; nothing was written "
            "(write to another path, or append with mode='a')"
        ) from None
    except OSError:
        # No hard links on this filesystem (FAT, some network mounts): a rename is atomic
        # but replaces, so check first; never delete the only copy of the data here.
        if os.path.exists(path):
            raise FileExistsError(f"{path} exists; use mode='w' to replace it or 'a' to append") from None
        os.replace(tmp, path)
    else:
        os.unlink(tmp)


def keep_aside(tmp: str, path: str) -> str:
    """Rename the committed temporary file ``tmp`` of ``path`` to a visible name beside it
    (``NAME.unmerged-PID-TOKEN.kdb``), which no later writer deletes as stale; that name, or
    ``tmp`` when it cannot be renamed."""
    stem = os.path.basename(path)
    stem = stem[: -len(".kdb")] if stem.endswith(".kdb") and len(stem) > len(".kdb") else stem
    kept = os.path.join(
        os.path.dirname(os.path.abspath(path)), f"{stem}.unmerged-{os.getpid()}-{secrets.token_hex(4)}.kdb"
    )
    try:
        publish_new(tmp, kept)
    except OSError:
        return tmp
    fsync_dir(kept)
    return kept


def cleanup(
    owner: int, tmp: str | None, fh: BinaryIO, flusher: Flusher, guard: int | None, base_end: int | None
) -> None:
    """Release what a writer holds that was never closed: its temporary file (deleted), or
    an append's bytes past the committed end (``base_end``, cut off while its lock is held).

    Only in the process that opened it (``owner``): a forked child shares the writer's
    open file, so it closes its own copy of the descriptor and touches nothing else (no
    flush, truncate, unlink or unlock), whatever its copy of the writer says.
    """
    if os.getpid() != owner:
        forget(fh)
        return
    with contextlib.suppress(WriterError):
        flusher.wait(tmp or "")  # never close the descriptor under a running sync
    if base_end is not None:  # an append: nothing past the commit belongs to any state
        with contextlib.suppress(OSError, ValueError):
            os.ftruncate(fh.fileno(), base_end)
        forget(fh)  # the buffer's bytes belong past the cut: never write them back
    with contextlib.suppress(OSError):
        fh.close()
    if tmp:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
    if guard is not None:
        with contextlib.suppress(OSError):
            os.close(guard)


def forget(fh: BinaryIO) -> None:
    """Close ``fh``'s descriptor without writing its buffer out: closing the buffered file
    afterwards writes nothing (its buffer belongs to the process that filled it)."""
    with contextlib.suppress(OSError, AttributeError, ValueError):
        fh.raw.close()  # type: ignore[attr-defined]


# Files that writers of this process write: a forked child closes its copies of them at
# once, so that nothing the child does (nor its exit) writes their buffers into the file.
_WRITING: weakref.WeakSet[BinaryIO] = weakref.WeakSet()


def parent_only(fh: BinaryIO) -> None:
    """Mark ``fh``, a writer's open file, as the opening process's alone: in a child forked
    from it, its descriptor is closed (`forget`) as soon as the child starts."""
    _WRITING.add(fh)


def _forget_in_child() -> None:
    for fh in list(_WRITING):
        forget(fh)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_in_child)


def not_regular(path: str) -> str | None:
    """What ``path`` is when it exists and is neither a regular file nor a folder (``"a
    FIFO"``, ``"a character device"`` ...), following links; None otherwise."""
    try:
        return _kind(os.stat(path).st_mode)
    except (OSError, ValueError):
        return None


_KINDS = {
    stat.S_IFIFO: "a FIFO (named pipe)",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFSOCK: "a socket",
}


def _kind(mode: int) -> str | None:
    """What a file of ``st_mode`` ``mode`` is, unless a regular file or a folder (None)."""
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        return None
    return _KINDS.get(stat.S_IFMT(mode), "not a regular file")


def keep_mode(tmp: str, path: str) -> None:
    """Give the new file ``tmp`` the permission bits of the file it replaces at ``path``."""
    with contextlib.suppress(OSError):
        os.chmod(tmp, stat.S_IMODE(os.stat(path).st_mode) & 0o777)


def map_file(path: str) -> mmap.mmap:
    """Map the whole file read-only: ``os.open`` and ``mmap``, the fewest system calls.

    The map keeps the kernel's default read-ahead, right for sequential reads (``gather``,
    ``validate``, export, merge); readers that read at random advise their map so
    (`Database._advise_random`).

    Where that fails (a missing or empty file, ...), the file is opened as before, which
    raises the usual error (FileNotFoundError, FormatError, ...).

    Raises:
        FolderError: ``path`` is a folder (a `FormatError` and an `IsADirectoryError`); the
            message says what to give instead (`folder_advice`).
        FormatError: ``path`` is a FIFO, a device or a socket, not a regular file (opened
            without blocking: reading a FIFO would wait for a writer forever).
    """
    try:
        fd = os.open(path, _OPEN_FLAGS | _NONBLOCK)
    except OSError:
        fd = -1
    if fd >= 0:
        try:
            mode = os.fstat(fd).st_mode
            kind = _kind(mode)
            if kind is None and not stat.S_ISDIR(mode):
                with contextlib.suppress(OSError, ValueError):
                    return mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
        finally:
            os.close(fd)
        if stat.S_ISDIR(mode):
            raise FolderError.of(path)
        if kind is not None:
            raise FormatError(f"{path} is {kind}, not a regular file; give the path of a .kdb file")
    if os.path.isdir(path):  # a platform whose os.open refuses folders
        raise FolderError.of(path)
    with open(path, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        read_preamble(fh.read(DATA_START), path, size)
        return mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)


class FolderError(IsADirectoryError, FormatError):
    """A folder where a ``.kdb`` file belongs: not a ``.kdb`` file (`FormatError`), and the
    `IsADirectoryError` opening it raises, for callers that catch that.

    ``strerror`` says what to give instead (`folder_advice`); ``str()`` is ``FOLDER: strerror``.
    """

    def __str__(self) -> str:
        return f"{self.filename}: {self.strerror}"

    @classmethod
    def of(cls, path: str, prefix: str = "") -> FolderError:
        """The error for folder ``path``, its message after ``prefix`` (such as ``"mixture source 1: "``)."""
        return cls(errno.EISDIR, f"{prefix}a folder, not a .kdb file; {folder_advice(path)}", path)


def folder_advice(folder: str) -> str:
    """What to give instead of ``folder``: the ``kino ingest`` command when it looks like a
    dataset ingest reads (LeRobot: ``meta/info.json``; RLDS/TFDS: ``dataset_info.json``,
    ``features.json`` or ``*.tfrecord*`` files), else a ``.kdb`` file in it, else the
    command for one of its HDF5 files (ingest reads HDF5 files one by one)."""
    try:
        names = sorted(os.listdir(folder))
    except OSError:
        names = []
    here = os.path.normpath(os.path.abspath(folder))
    name = os.path.basename(here)
    if name.replace(".", "").isdigit():  # a TFDS version folder (1.0.0): name it by its dataset
        name = os.path.basename(os.path.dirname(here))
    out = (name or "out") + ".kdb"
    convert = f"convert it with kino ingest {shlex.quote(folder)} -o {shlex.quote(out)}"
    if os.path.isfile(os.path.join(folder, "meta", "info.json")):
        return f"it looks like a LeRobot dataset: {convert}"
    if any(n in ("dataset_info.json", "features.json") or ".tfrecord" in n for n in names) or _tfds_below(
        folder, names
    ):
        return f"it looks like an RLDS/TFDS dataset: {convert}"
    kdb = [n for n in names if n.endswith(".kdb")]
    if kdb:
        return f"give the path of a .kdb file, e.g. {os.path.join(folder, kdb[0])}"
    hdf5 = [n for n in names if n.endswith((".hdf5", ".h5"))]
    if hdf5:
        first = os.path.join(folder, hdf5[0])
        command = f"kino ingest {shlex.quote(first)} -o {shlex.quote(os.path.splitext(hdf5[0])[0] + '.kdb')}"
        if len(hdf5) == 1:
            return f"give the path of a .kdb file; it holds an HDF5 file: convert it with {command}"
        return f"give the path of a .kdb file; it holds {len(hdf5)} HDF5 files: convert each, e.g. {command}"
    return "give the path of a .kdb file"


def _tfds_below(folder: str, names: list[str]) -> bool:
    """Whether a TFDS version folder (``VERSION/dataset_info.json``, or
    ``NAME/VERSION/dataset_info.json`` in a TFDS data_dir) lies below ``folder``."""
    for name in names:
        sub = os.path.join(folder, name)
        if os.path.isfile(os.path.join(sub, "dataset_info.json")):
            return True
        with contextlib.suppress(OSError):
            if any(os.path.isfile(os.path.join(sub, v, "dataset_info.json")) for v in os.listdir(sub)):
                return True
    return False


def human_bytes(n: int) -> str:
    """``n`` bytes for people: ``512 B``, ``1.5 MiB``."""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def advise_random(mm: mmap.mmap, end: int) -> bool:
    """Advise bytes ``0 .. end`` (rounded down to a page) of ``mm`` ``MADV_RANDOM``.

    A page fault on a cold page then reads that page, not the read-ahead window around it
    (``/sys/block/*/queue/read_ahead_kb``, up to megabytes), which random frame reads would
    mostly discard. Returns whether the advice was given: not where the platform has no
    ``MADV_RANDOM``, nor for less than a page.
    """
    advice = getattr(mmap, "MADV_RANDOM", None)
    end = end // mmap.PAGESIZE * mmap.PAGESIZE
    if advice is None or end <= 0:
        return False
    try:
        mm.madvise(advice, 0, end)
    except OSError:  # advice only: reads are right without it
        return False
    return True


def will_need(mm: mmap.mmap, start: int, stop: int) -> None:
    """Start reading bytes ``start:stop`` of ``mm`` into the page cache without waiting
    (``MADV_WILLNEED``): a run about to be read whole, such as one camera's frames of an
    episode, then comes in large requests where a map advised random would fault it in
    page by page. A no-op where the platform has no ``MADV_WILLNEED``."""
    advice = getattr(mmap, "MADV_WILLNEED", None)
    start = max(start, 0) // mmap.PAGESIZE * mmap.PAGESIZE
    if advice is not None and stop > start:
        with contextlib.suppress(OSError):
            mm.madvise(advice, start, stop - start)


def refuse_folder(path: str | os.PathLike[str]) -> None:
    """Refuse an output path that is a folder, or names one (ends in a path separator).

    Checked before any work: ``out/`` would otherwise fail only at the final rename.

    Raises:
        WriterError: ``path`` is a folder or ends in a separator.
    """
    path = os.fspath(path)
    if not path:
        raise WriterError("the output path is empty; give the path of a .kdb file to write")
    seps = tuple(s for s in (os.sep, os.altsep) if s)
    if path.endswith(seps) or os.path.isdir(path):
        how = "names" if path.endswith(seps) else "is"
        raise WriterError(
            f"{path} {how} a folder; give the path of a .kdb file, e.g. {os.path.join(path, 'data.kdb')}"
        )
