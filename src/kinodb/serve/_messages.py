"""Conversions between NumPy arrays, metadata dicts and the service's messages.

Arrays travel as packed tensors: one ``bytes`` field of C-order little-endian data with
its dtype string and shape (`fill_tensor` fills a message's with a single
``ndarray.tobytes()``). Replies of episodes and window batches skip message objects
altogether, which would copy their arrays again: see `kinodb.serve._wire`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import numpy as np
from numpy.typing import NDArray

from kinodb.serve._proto import kinodb_pb2 as pb

__all__ = [
    "fill_tensor",
    "legacy_frames",
    "meta_from_pb",
    "meta_to_pb",
    "sendable",
    "tensor_dtype",
]

_BUILTIN_META = (
    "episode_id", "embodiment", "task", "num_frames", "fps", "action_dim", "state_dim", "success", "total_reward",
)  # fmt: skip


def sendable(arr: NDArray[Any]) -> NDArray[Any]:
    """``arr`` as C-order little-endian data (itself when it is already).

    Raises:
        TypeError: ``arr`` holds Python objects.
    """
    a = np.asarray(arr)
    if a.dtype.hasobject:
        raise TypeError(f"cannot send an array of {a.dtype}")
    if a.dtype.byteorder == ">":
        a = a.astype(a.dtype.newbyteorder("<"))
    return a if a.flags.c_contiguous else np.ascontiguousarray(a)  # 0-d arrays stay 0-d


def fill_tensor(msg: pb.Tensor, arr: NDArray[Any]) -> int:
    """Pack ``arr`` into ``msg``; return the number of data bytes.

    Raises:
        TypeError: ``arr`` holds Python objects.
    """
    a = sendable(arr)
    msg.dtype = a.dtype.str
    msg.shape[:] = a.shape
    msg.data = a.tobytes()
    return a.nbytes


_DTYPES: dict[str, np.dtype[Any]] = {}


def tensor_dtype(text: str, where: str = "tensor") -> np.dtype[Any]:
    """The NumPy dtype a `Tensor`'s dtype string names (looked up once per string).

    Raises:
        ValueError: the dtype is not a plain NumPy dtype.
    """
    dtype = _DTYPES.get(text)
    if dtype is not None:
        return dtype
    try:
        dtype = np.dtype(text)
    except TypeError:
        raise ValueError(f"{where}: unknown dtype {text!r}") from None
    if dtype.hasobject:
        raise ValueError(f"{where}: dtype {text!r} holds Python objects")
    if len(_DTYPES) < 256:  # a peer cannot grow it without bound
        _DTYPES[text] = dtype
    return dtype


def meta_to_pb(meta: Mapping[str, Any], msg: pb.EpisodeMeta) -> None:
    """Fill ``msg`` from a `Database.read_meta` dict (extras as one JSON object)."""
    msg.episode_id = int(meta["episode_id"])
    msg.embodiment = str(meta["embodiment"])
    msg.task = str(meta["task"])
    msg.num_frames = int(meta["num_frames"])
    msg.fps = msg.fps_double = float(meta["fps"])
    msg.action_dim = int(meta["action_dim"])
    msg.state_dim = int(meta.get("state_dim", 0))
    success = meta["success"]
    msg.has_success = success is not None
    msg.success = bool(success)
    reward = meta["total_reward"]
    msg.has_reward = reward is not None
    msg.total_reward = msg.total_reward_double = 0.0 if reward is None else float(reward)
    extras = {k: v for k, v in meta.items() if k not in _BUILTIN_META}
    if extras:
        msg.extra_json = json.dumps(extras, default=_jsonable, separators=(",", ":"))


def meta_from_pb(msg: pb.EpisodeMeta) -> dict[str, Any]:
    """A dict shaped like `Database.read_meta` from ``msg``."""
    meta: dict[str, Any] = {
        "episode_id": int(msg.episode_id),
        "embodiment": msg.embodiment,
        "task": msg.task,
        "num_frames": int(msg.num_frames),
        "fps": float(msg.fps_double),
        "action_dim": int(msg.action_dim),
        "state_dim": int(msg.state_dim),
        "success": bool(msg.success) if msg.has_success else None,
        "total_reward": float(msg.total_reward_double) if msg.has_reward else None,
    }
    if msg.extra_json:
        meta.update(json.loads(msg.extra_json))
    return meta


def legacy_frames(
    episode: pb.Episode, arrays: Mapping[str, NDArray[Any]], images: Mapping[str, NDArray[np.uint8]]
) -> None:
    """Fill the earlier server's per-frame form: one `Frame` per time step, floats one by one.

    Only the earlier service name uses it; it is as slow as that format makes it.
    """
    T = int(episode.meta.num_frames)
    states = _rows(arrays.get("states"), T)
    actions = _rows(arrays.get("actions"), T)
    rewards = np.asarray(arrays.get("rewards", np.zeros(T)), np.float32).reshape(-1).tolist()
    terminal = np.asarray(arrays.get("is_terminal", np.zeros(T, bool)), bool).reshape(-1).tolist()
    for t in range(T):
        frame = episode.frames.add(timestep=t, state=states[t], action=actions[t], reward=rewards[t],
                                   is_terminal=terminal[t])  # fmt: skip
        for camera, pixels in images.items():
            _, h, w, c = pixels.shape
            frame.images.add(camera=camera, width=w, height=h, channels=c, data=pixels[t].tobytes())


def _rows(arr: NDArray[Any] | None, T: int) -> list[list[float]]:
    if arr is None:
        return [[] for _ in range(T)]
    return np.asarray(arr, np.float32).reshape(T, -1).tolist()  # type: ignore[no-any-return]


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (bytes, bytearray)):
        return value.decode("utf-8", "replace")
    return str(value)
