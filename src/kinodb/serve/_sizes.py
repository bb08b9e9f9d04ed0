"""What each served episode weighs in a reply, and which cameras the served episodes hold.

Read from the index's section columns in a few NumPy passes (no episode is read), so
that the server sizes its message limit from every episode it serves at open, and
refuses a request before decoding anything. A file without section columns (format
0.1) is walked episode by episode, as its reader does at open anyway.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from kinodb.kdb._layout import DTYPES, KIND_CAMERA
from kinodb.kdb.reader import Database

__all__ = ["EpisodeSizes", "episode_sizes", "mib"]

_ITEMSIZE = np.array([np.dtype(d).itemsize for d in DTYPES], dtype=np.int64)
_SECTION_COLUMNS = ("sec_start", "sec_count", "sec.name", "sec.kind", "sec.dtype", "sec.ndim", "sec.dims")


@dataclass(frozen=True, slots=True)
class EpisodeSizes:
    """Per kept episode of one file: bytes of its arrays, and of each camera's decoded frames.

    Attributes:
        arrays: (n,) bytes of the episode's low-dimensional arrays.
        images: camera -> (n,) bytes of its decoded uint8 frames, 0 where the episode lacks it.
        cameras: The cameras of the kept episodes, in order of first appearance.
    """

    arrays: NDArray[np.int64]
    images: dict[str, NDArray[np.int64]]
    cameras: list[str]


def episode_sizes(db: Database, kept: NDArray[np.int64]) -> EpisodeSizes:
    """The sizes of episodes ``kept`` (positions in ``db``)."""
    cols = db._cols
    if isinstance(cols, Mapping) and all(name in cols for name in _SECTION_COLUMNS):
        return _from_columns(db, cols, kept)
    return _by_episode(db, kept)


def _from_columns(db: Database, cols: Mapping[str, np.ndarray], kept: NDArray[np.int64]) -> EpisodeSizes:
    kind = np.asarray(cols["sec.kind"]).reshape(-1)
    rows = len(kind)
    ndim = np.asarray(cols["sec.ndim"], dtype=np.int64).reshape(-1)
    dims = np.asarray(cols["sec.dims"], dtype=np.int64).reshape(rows, 3)
    code = np.clip(np.asarray(cols["sec.dtype"], dtype=np.int64).reshape(-1), 0, len(_ITEMSIZE) - 1)
    # Elements per frame: the dims below the rank (the rest are 0 in a sound index).
    per_frame = np.where(np.arange(3) < (ndim - 1)[:, None], dims, 1).prod(axis=1)
    camera = kind == KIND_CAMERA
    # A damaged row may point past the rows; reading that episode names the damage.
    start = np.minimum(np.asarray(cols["sec_start"], dtype=np.int64)[kept], rows)
    end = np.minimum(start + np.asarray(cols["sec_count"], dtype=np.int64)[kept], rows)
    frames = np.asarray(cols["num_frames"], dtype=np.int64)[kept]

    def per_episode(values: NDArray[np.int64]) -> NDArray[np.int64]:
        total = np.concatenate([[0], np.cumsum(values, dtype=np.int64)])
        return (total[end] - total[start]) * frames  # type: ignore[no-any-return]

    arrays = per_episode(np.where(camera, 0, per_frame * _ITEMSIZE[code]))
    names = np.asarray(cols["sec.name"], dtype=np.int64).reshape(-1)
    every = db._names
    images: dict[str, NDArray[np.int64]] = {}
    first: dict[str, tuple[int, int]] = {}  # camera -> (first kept episode holding it, its row)
    for text in sorted({every[c] for c in np.unique(names[camera]).tolist() if 0 <= c < len(every)}):
        rows_of = camera & np.isin(names, [c for c, n in enumerate(every) if n == text])
        counts = np.concatenate([[0], np.cumsum(rows_of, dtype=np.int64)])
        held = np.flatnonzero(counts[end] > counts[start])
        if not len(held):
            continue
        images[text] = per_episode(np.where(rows_of, per_frame, 0))
        j = int(held[0])
        row = int(start[j] + np.flatnonzero(rows_of[start[j] : end[j]])[0])
        first[text] = (j, row)
    return EpisodeSizes(arrays, images, sorted(images, key=first.__getitem__))


def _by_episode(db: Database, kept: NDArray[np.int64]) -> EpisodeSizes:
    """Episode by episode: a file without section columns (format 0.1)."""
    n = len(kept)
    arrays = np.zeros(n, dtype=np.int64)
    images: dict[str, NDArray[np.int64]] = {}
    frames = np.asarray(db.episodes()["num_frames"], dtype=np.int64)[kept]
    # The 0.1 reader reads camera shapes from each episode's first frame without walking
    # the others; any other reader gives them whole.
    first_frame = getattr(db, "_first_frame_cameras", None)
    for j, i in enumerate(kept.tolist()):
        arrays[j] = sum(a.nbytes for a in db._episode_arrays(i).values())
        if first_frame is not None:
            cams = {k: (c["height"], c["width"], c["channels"]) for k, c in first_frame(i).items()}
        else:
            cams = {k: tuple(c["shape"][1:]) for k, c in db.cameras(i).items()}
        for name, hwc in cams.items():
            per = images.setdefault(name, np.zeros(n, dtype=np.int64))
            per[j] = int(np.prod(hwc, dtype=np.int64)) * int(frames[j])
    return EpisodeSizes(arrays, images, list(images))


def mib(n: int) -> str:
    """Bytes as MiB with one decimal, as the startup line and every size error write them."""
    return f"{n / (1 << 20):.1f} MiB"
