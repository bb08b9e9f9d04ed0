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

A camera whose stored frames are not all images of its codec (a format 0.1 camera that
mixes raw and encoded frames, codec "mixed", or holds raw pixels flagged as compressed) is
written as a raw one, its frames as kinodb's readers decode them: its meta.json entry says
codec "raw" with "file", and "source_codec" is the codec the source file reports.
"""

from __future__ import annotations

import os
import shutil
from typing import Any

import numpy as np

from kinodb.export._base import (
    camera_windows,
    check_case_collisions,
    dataset_record,
    episode_record,
    file_name,
    holds_image,
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
    """Write one camera's frames; return where they are, relative to the episode folder (and,
    for decoded frames, the codec of the files and the one the source stored)."""
    T, codec = cam["shape"][0], cam["codec"]
    if codec in _EXTENSIONS and _copy_frames(db, i, name, cam, os.path.join(folder, rel)):
        # A str.format pattern: frames.format(frame=t) is frame t's file.
        return {"frames": f"{rel}/{{frame:0{index_width(T)}d}}{_EXTENSIONS[codec]}"}
    path = os.path.join(folder, rel + ".npy")
    if codec == "raw":
        frames = db.read_frames(i, 0, T, cameras=[name])["images"][name]  # a view: nothing decoded
        np.save(path, frames, allow_pickle=False)
        return {"file": f"{rel}.npy"}
    _save_decoded(db, i, name, cam["shape"], path)
    return {"codec": "raw", "source_codec": codec, "file": f"{rel}.npy"}


def _copy_frames(db: Database, i: int, name: str, cam: dict[str, Any], folder: str) -> bool:
    """Copy camera ``name``'s stored frames into ``folder``, a file each; False, leaving no
    folder, when a frame is not an image of the camera's codec and size (see `holds_image`)."""
    T, *shape = cam["shape"]
    codec, width = cam["codec"], index_width(T)
    os.mkdir(folder)
    for t in range(T):
        blob = db.read_image_bytes(i, name, t)
        if not holds_image(blob, codec, shape, channels=False):
            shutil.rmtree(folder)
            return False
        with open(os.path.join(folder, f"{t:0{width}d}{_EXTENSIONS[codec]}"), "wb") as fh:
            fh.write(blob)
    return True


def _save_decoded(db: Database, i: int, name: str, shape: list[int], path: str) -> None:
    """Save camera ``name``'s frames, as the reader decodes them, as one uint8 ``.npy`` array,
    a window of frames at a time."""
    header = {"descr": np.dtype(np.uint8).str, "fortran_order": False, "shape": tuple(shape)}
    with open(path, "wb") as fh:
        np.lib.format.write_array_header_1_0(fh, header)
        for _, frames in camera_windows(db, i, name, shape[0]):
            fh.write(np.ascontiguousarray(frames).data)
