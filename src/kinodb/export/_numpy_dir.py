"""Export to a folder of ``.npy`` arrays, image files and JSON metadata.

Layout::

    dataset.json                    the dataset JSON (schema, metadata, source format) + "export"
    episodes.json                   index: one entry per episode folder, in order
    episode_000000/
        meta.json                   {"position", "meta" (read_meta), "arrays", "cameras"}: each
                                    array's file, dtype and shape; each camera's codec, shape
                                    and "file" (raw) or "frames", a pattern: .format(frame=t)
        actions.npy states.npy rewards.npy is_terminal.npy [timestamps.npy] <extra>.npy
        images/<camera>/000000.jpg  encoded frames (JPEG or PNG), stored bytes unchanged
        images/<camera>.npy         raw frames as one uint8 (T, H, W, C) array
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from kinodb.export._base import (
    check_case_collisions,
    dataset_record,
    episode_record,
    file_name,
    index_width,
    write_json,
)
from kinodb.kdb.reader import Database

_EXTENSIONS = {"jpeg": ".jpg", "png": ".png"}


def write(db: Database, positions: list[int], out: str, facts: dict[str, Any]) -> None:
    """Write episodes ``positions`` of ``db`` into the empty folder ``out``."""
    write_json(os.path.join(out, "dataset.json"), dataset_record(db, positions, facts), indent=1)
    width = index_width(len(positions))
    index = []
    for k, i in enumerate(positions):
        folder = f"episode_{k:0{width}d}"
        os.mkdir(os.path.join(out, folder))
        record = write_episode(db, i, os.path.join(out, folder))
        meta = record["meta"]
        index.append({
            "dir": folder, "position": i, "episode_id": meta["episode_id"], "num_frames": meta["num_frames"],
            "embodiment": meta["embodiment"], "task": meta["task"], "success": meta["success"],
        })  # fmt: skip
    total = sum(e["num_frames"] for e in index)
    write_json(
        os.path.join(out, "episodes.json"),
        {"num_episodes": len(index), "num_frames": total, "episodes": index},
    )


def write_episode(db: Database, i: int, folder: str) -> dict[str, Any]:
    """Write episode ``i`` into ``folder``; return the record written to its ``meta.json``.

    Raises:
        ConversionError: an array or camera name cannot be a file name.
    """
    record = episode_record(db, i)
    arrays = {k: v for k, v in db.read_episode_actions_only(i).items() if k != "meta"}
    array_files = {name: file_name(name, "array") + ".npy" for name in arrays}
    camera_files = {name: file_name(name, "camera") for name in record["cameras"]}
    check_case_collisions(array_files, "array")
    check_case_collisions(camera_files, "camera")
    record["arrays"] = {}
    for name, arr in arrays.items():
        np.save(os.path.join(folder, array_files[name]), arr, allow_pickle=False)
        record["arrays"][name] = {
            "file": array_files[name],
            "dtype": arr.dtype.name,
            "shape": list(arr.shape),
        }
    if camera_files:
        os.mkdir(os.path.join(folder, "images"))
    for name, cam in record["cameras"].items():
        cam.update(_write_camera(db, i, name, cam, f"images/{camera_files[name]}", folder))
    write_json(os.path.join(folder, "meta.json"), record)
    return record


def _write_camera(
    db: Database, i: int, name: str, cam: dict[str, Any], rel: str, folder: str
) -> dict[str, str]:
    """Write one camera's frames; return where they are, relative to the episode folder."""
    T = cam["shape"][0]
    if cam["codec"] == "raw":
        frames = db.read_frames(i, 0, T, cameras=[name])["images"][name]  # a view: nothing decoded
        np.save(os.path.join(folder, rel + ".npy"), frames, allow_pickle=False)
        return {"file": f"{rel}.npy"}
    ext = _EXTENSIONS[cam["codec"]]
    width = index_width(T)
    os.mkdir(os.path.join(folder, rel))
    for t in range(T):
        with open(os.path.join(folder, rel, f"{t:0{width}d}{ext}"), "wb") as fh:
            fh.write(db.read_image_bytes(i, name, t))
    # A str.format pattern: frames.format(frame=t) is frame t's file.
    return {"frames": f"{rel}/{{frame:0{width}d}}{ext}"}
