"""Rewrite any readable ``.kdb`` file (format 0.1 or 1.x) as a format v1 file."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from kinodb._version import __version__
from kinodb.errors import ConversionError, WriterError
from kinodb.kdb import _codecs
from kinodb.kdb.reader import META_FIELDS, Database, open_database
from kinodb.kdb.writer import Writer, verify_payload

_BUILTIN_ARRAYS = ("actions", "states", "rewards", "is_terminal", "timestamps")


def upgrade(src: str | os.PathLike[str], dst: str | os.PathLike[str], *, overwrite: bool = False) -> int:
    """Rewrite ``src`` as a format v1 file at ``dst``; return the number of episodes.

    Arrays are copied exactly and JPEG/PNG frames keep their stored bytes; raw frames
    stay raw. A 0.1 camera that mixes raw and encoded frames is stored raw (decoded).
    The dataset's ``source_format`` becomes ``"kinodb-0.1"`` (a v1 source keeps its own)
    and ``metadata["upgraded_from"]`` records the source file. ``dst`` appears only
    once every episode is written. One difference is unavoidable: an episode with an
    unknown ``total_reward`` and nonzero rewards gets the sum of its rewards, as
    `Writer.add_episode` computes it.

    Example:
        >>> kinodb.kdb.upgrade.upgrade("old.kdb", "new.kdb")
        12

    Raises:
        FileExistsError: ``dst`` exists and ``overwrite`` is False.
        FormatError: ``src`` is not a readable ``.kdb`` file or its data is damaged (a v1
            episode whose payload fails its checksum: `CorruptFileError`, nothing written).
        ConversionError: an episode cannot be stored in v1 (e.g. 0 frames or fps <= 0).
    """
    with open_database(src) as db:
        info = db.dataset_info()
        version = db.version()
        metadata = dict(db.metadata())
        metadata["upgraded_from"] = {
            "path": os.path.abspath(os.fspath(src)),
            "format_version": version,
            "created": info.get("created"),
            "writer": info.get("writer"),
            "source_format": info.get("source_format"),
            "tool": f"kinodb {__version__} upgrade",
        }
        schema = {
            part: {k: v for k, v in db.schema().get(part, {}).items() if k in ("components", "names")}
            for part in ("actions", "states")
        }
        with Writer(
            dst,
            mode="w" if overwrite else "x",
            image_codec="raw",
            schema={k: v for k, v in schema.items() if v},
            source_format=info.get("source_format") or f"kinodb-{version}",
            metadata=metadata,
        ) as out:
            checked = not version.startswith("0.")  # v1 payloads carry checksums: never copy damage
            for i in range(len(db)):
                if checked:
                    verify_payload(db, i)
                try:
                    out.add_episode(**episode_args(db, i))
                except (WriterError, ConversionError) as exc:
                    raise ConversionError(
                        f"{os.fspath(src)}: episode {i} cannot be stored as v1: {exc}"
                    ) from exc
        return len(db)


def episode_args(db: Database, i: int) -> dict[str, Any]:
    """Keyword arguments for `Writer.add_episode` that reproduce episode ``i``."""
    ep = db.read_episode_actions_only(i)
    meta = ep.pop("meta")
    if meta["num_frames"] == 0:
        raise ConversionError("it has 0 frames, and v1 files hold no empty episodes")
    rewards = ep.pop("rewards")
    args: dict[str, Any] = {name: ep.pop(name) for name in _BUILTIN_ARRAYS if name in ep}
    if meta["total_reward"] is not None or bool((rewards != 0).any() or np.signbit(rewards).any()):
        args["rewards"] = rewards
    # else rewards are all +0.0: omitting them stores zeros and keeps total_reward None,
    # which the writer would otherwise fill in with the sum of the rewards.
    args["extra_arrays"] = ep
    args["images"] = {name: _camera_frames(db, i, name, cam) for name, cam in db.cameras(i).items()}
    extra = {k: v for k, v in meta.items() if k not in META_FIELDS}
    extra = {
        k.removeprefix("extra.") if k.removeprefix("extra.") in META_FIELDS else k: v
        for k, v in extra.items()
    }
    if meta["episode_id"] != i:
        extra.setdefault("source_episode_id", meta["episode_id"])
    args.update(
        embodiment=meta["embodiment"],
        task=meta["task"],
        fps=meta["fps"],
        success=meta["success"],
        total_reward=meta["total_reward"],
        extra=extra,
    )
    return args


def _camera_frames(db: Database, i: int, name: str, cam: dict[str, Any]) -> np.ndarray | list[bytes]:
    """Stored JPEG/PNG bytes when every frame can pass through unchanged, else uint8 frames."""
    T, h, w, c = cam["shape"]
    if cam["codec"] in ("jpeg", "png"):
        blobs = [db.read_image_bytes(i, name, t) for t in range(T)]
        if all(_probe_matches(b, (h, w, c)) for b in blobs):
            return blobs
    frames: np.ndarray = db.read_frames(i, 0, T, cameras=[name])["images"][name]
    return frames


def _probe_matches(blob: bytes, shape: tuple[int, int, int]) -> bool:
    """Whether a v1 reader would decode ``blob`` to ``shape``, judged from its header."""
    try:
        return _codecs.probe(blob) == shape
    except (OSError, ValueError, SyntaxError, WriterError):
        return False


__all__ = ["upgrade"]
