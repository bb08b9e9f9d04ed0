"""`KinoRemoteDataset`: a torch IterableDataset fed by a kino-serve server's batch streams."""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from multiprocessing.util import Finalize
from typing import Any

import numpy as np

from kinodb._optional import require
from kinodb.serve._epoch_units import count_units, epoch_units
from kinodb.serve.client import KinoClient, _address, _image_size

require("torch", extra="torch")

import torch  # noqa: E402
from torch.utils.data import IterableDataset, get_worker_info  # noqa: E402

from kinodb.torch._collate import TensorBatch  # noqa: E402
from kinodb.torch._epochs import EpochsAndRanks  # noqa: E402
from kinodb.torch._workers import settle_at_exit  # noqa: E402

__all__ = ["KinoRemoteDataset"]

_WINDOW_KEYS = ("obs_horizon", "action_horizon", "pad", "kql_filter", "normalize")


class KinoRemoteDataset(EpochsAndRanks, IterableDataset[Any]):
    """Episodes, or batches of frame windows, streamed from a server.

    Episode samples carry `KinoMapDataset`'s keys: ``action`` (T, A), ``state`` (T, S),
    ``reward`` (T,), ``image`` (T, C, H, W) float in [0, 1] for one camera or ``images``
    {camera: ...} for a list, ``task``, ``embodiment``, ``success`` (1, 0, or -1 when
    unknown), ``episode_id``, ``episode_index`` (position in its file) and ``source``.
    With ``windows`` set, each item is a whole batch of windows with `KinoFrameDataset`'s
    keys, stacked: ``state`` (B, To, S), ``action`` (B, Ta, A), ``*_is_pad``, ``image``
    (B, To, C, H, W), ``episode_index``, ``frame_index``, ``source``, ``task`` (list).
    Use ``DataLoader(ds, batch_size=None)``; ``len(ds)`` is what this rank yields per epoch.
    Window batches, and episodes without frames, are `kinodb.torch.TensorBatch` dicts: they
    leave a DataLoader worker in one copy, not one shared-memory segment per tensor.

    An epoch is ``num_batches`` server batches (default: enough to cover the episodes, or
    for windows the frames of the episodes ``kql_filter`` keeps, once on average), rounded
    up to a multiple of the world size. They are dealt to the distributed ranks in turn
    (``torch.distributed`` when initialised, read in the rank's process also for spawned
    workers, or ``rank=``/``world_size=``), so every rank takes the same number of
    steps, and a rank's DataLoader workers deal out its share in turn. In
    ``"sequential"`` mode each sample of an epoch is read once across all ranks and
    workers (the last batch wraps around to the first samples); in the random modes each
    rank and worker draws its own batches. Each DataLoader worker opens its own channel
    when it starts iterating and reads its share over one server stream; a server serves
    ``kino-serve --workers`` streams at once and refuses more (`ServerBusyError`), so give
    it at least the workers of every training process. With a non-zero ``seed`` every
    epoch's batches are a function of the seed, the epoch (`set_epoch`, which reaches
    persistent workers too), the rank and the worker; with seed 0 they come from the
    server's own seeded stream.

    Args:
        addr: ``host:port`` of the server.
        batch_size: Episodes or windows per server batch.
        include_images: Fetch decoded frames of ``image_key``'s cameras (default: when
            ``image_key`` is given).
        to_tensor: Torch tensors (else NumPy arrays).
        windows: None (episodes), or ``{"obs_horizon": .., "action_horizon": .., "pad": ..,
            "kql_filter": .., "normalize": ..}`` for frame windows (``"normalize": "mean_std"``
            normalises states and actions on the server with each source's statistics).
        mode: ``"random"``, ``"weighted"`` or ``"sequential"``.
        seed: See above.
        num_batches: Server batches per epoch over all workers and ranks.
        image_key: A camera, a list of cameras, or None (the first camera); for windows of
            robots that name their cameras differently, a mapping from an output name to
            each served source's camera, ``{"front": ["image_0", "cam_high"]}``.
        image_size: ``(H, W)`` to resize window frames to on the server: an argument of
            its own, not a key of ``windows``; it needs frames (``include_images`` or
            ``image_key``).
        token, tls_ca, tls_server_name: As for `KinoClient`.
        timeout: As for `KinoClient`, but 60 s by default (`KinoClient`'s is 30 s): a
            server feeding every worker of a training job can be slow to send the next
            batch of images.
        rank, world_size: This process's share (default: from ``torch.distributed``).

    Example:
        >>> ds = KinoRemoteDataset("10.0.0.5:50051", batch_size=256,
        ...                        windows={"obs_horizon": 2, "action_horizon": 16})
        >>> for batch in DataLoader(ds, batch_size=None, num_workers=2): ...
    """

    def __init__(
        self,
        addr: str,
        *,
        batch_size: int = 32,
        include_images: bool | None = None,
        to_tensor: bool = True,
        windows: Mapping[str, Any] | None = None,
        mode: str = "random",
        seed: int = 0,
        num_batches: int | None = None,
        image_key: str | Sequence[str] | Mapping[str, str | Sequence[str]] | None = None,
        image_size: tuple[int, int] | None = None,
        token: str | None = None,
        tls_ca: str | os.PathLike[str] | bytes | None = None,
        timeout: float | None = 60.0,
        tls_server_name: str | None = None,
        rank: int | None = None,
        world_size: int | None = None,
    ) -> None:
        _address(addr)  # now, not at len() or in a DataLoader worker
        if (rank is None) != (world_size is None):
            raise ValueError("give both rank and world_size, or neither")
        if world_size is not None and not (
            isinstance(rank, int) and isinstance(world_size, int) and 0 <= rank < world_size
        ):
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank!r}, world_size={world_size!r}")
        for name, value in (("batch_size", batch_size), ("num_batches", num_batches)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed must be a non-negative int, got {seed!r}")
        if mode not in ("random", "weighted", "sequential"):
            raise ValueError(f"mode must be 'random', 'weighted' or 'sequential', got {mode!r}")
        if windows is not None:
            unknown = sorted(set(windows) - set(_WINDOW_KEYS))
            if unknown:
                raise ValueError(f"windows has unknown keys {unknown}; it takes {list(_WINDOW_KEYS)}")
        elif image_size is not None:
            raise ValueError("image_size applies to windows; episodes come at their stored size")
        if include_images is False and image_key is not None:
            raise ValueError("image_key names cameras, but include_images=False: leave include_images unset")
        images = include_images if include_images is not None else image_key is not None
        if image_size is not None:
            if not images:  # refused now, not at the first batch inside a DataLoader worker
                raise ValueError(
                    "image_size resizes window frames, but images are off: pass include_images=True "
                    "(the first camera) or image_key=... (the cameras), or leave image_size out"
                )
            _image_size(image_size)
        if windows is None and isinstance(image_key, Mapping):
            raise ValueError(
                "image_key as a mapping of each source's cameras applies to windows; give episodes names"
            )
        self._addr, self._batch, self._images, self._to_tensor = addr, batch_size, images, to_tensor
        self._windows = dict(windows) if windows is not None else None
        self._mode, self._seed, self._num_batches = mode, seed, num_batches
        self._image_key, self._image_size = image_key, image_size
        self._client_kw: dict[str, Any] = {
            "token": token, "tls_ca": tls_ca, "timeout": timeout, "tls_server_name": tls_server_name,
        }  # fmt: skip
        self._init_epochs(rank, world_size)
        self._counted: tuple[Any, int] | None = None  # windows the filter keeps, once asked
        self._len_units: int | None = None  # what an epoch covers, once len() asked

    def __len__(self) -> int:
        """Items this rank yields per epoch over all its DataLoader workers: window batches,
        or episodes (``batch_size`` per server batch). Without ``num_batches`` the first call
        asks the server for its counts (one call, and one count of ``kql_filter``'s windows)
        from a short-lived Python subprocess, so that this process starts no gRPC that
        forked DataLoader workers would inherit mid-shutdown; the dataset keeps the count."""
        world = self._rank_world()[1]
        total = self._num_batches
        if total is None:
            if self._len_units is None:
                self._len_units = count_units(self._addr, self._client_kw, self._windows)
            total = max(1, math.ceil(self._len_units / self._batch))
        per_rank = -(-total // world)
        return per_rank if self._windows is not None else per_rank * self._batch

    def __iter__(self) -> Iterator[Any]:
        worker = get_worker_info()
        wid, workers = (worker.id, worker.num_workers) if worker is not None else (0, 1)
        settle_at_exit()  # in a worker: its last batches handed over before it exits
        rank, world = self._rank_world()
        epoch = self.epoch
        client = KinoClient(self._addr, **self._client_kw)
        # Closes the channel when the process exits with this iterator never finished nor
        # collected; finishing it closes the channel at once and drops this.
        closer = Finalize(client, _close_quietly, (client,), exitpriority=20)
        try:
            info = client.server_info()
            total = self._num_batches or max(1, math.ceil(self._units(client, info) / self._batch))
            # The epoch's batches go to the ranks in turn, then to each rank's workers in turn:
            # shard (rank, worker) reads every (world * workers)-th batch from its first.
            per_rank = -(-total // world)
            shard, shards = rank + world * wid, world * workers
            mine = len(range(wid, per_rank, workers))
            if mine == 0:
                return
            cams = self._cameras(info["cameras"]) if self._images else None
            kw: dict[str, Any] = dict(
                num_batches=mine, mode=self._mode, seed=self._worker_seed(epoch, shard),
                offset=(epoch * per_rank * world + shard) * self._batch, stride=shards * self._batch,
                include_images=self._images, cameras=cams,
            )  # fmt: skip
            if self._windows is not None:
                for batch in client.stream_windows(
                    self._batch, image_size=self._image_size, **self._windows, **kw
                ):
                    yield self._window_batch(batch)
            else:
                for episodes in client.stream_batches(self._batch, **kw):
                    for ep in episodes:
                        yield self._sample(ep)
        finally:
            closer()

    def _units(self, client: KinoClient, info: dict[str, Any]) -> int:
        """What an epoch covers once: the episodes, or the windows (frames) the filter keeps."""
        kql = self._windows.get("kql_filter") if self._windows is not None else None
        if not kql:
            return epoch_units(client, info, self._windows)
        key = (self._addr, kql, info["num_frames"])
        if self._counted is None or self._counted[0] != key:  # counted once per worker
            self._counted = (key, epoch_units(client, info, self._windows))
        return self._counted[1]

    # -- conversion ---------------------------------------------------------------------------

    def _cameras(self, available: list[str]) -> Any:
        if isinstance(self._image_key, Mapping):  # output name -> each served source's camera
            return dict(self._image_key)
        if self._image_key is None and self._windows is None:
            return None  # every camera of each episode, whose first is its image (sources differ)
        if self._image_key is None:
            if not available:
                raise ValueError(
                    f"include_images was asked for, but the server at {self._addr} has no cameras"
                )
            return available[:1]
        return [self._image_key] if isinstance(self._image_key, str) else list(self._image_key)

    def _worker_seed(self, epoch: int, shard: int) -> int:
        if not self._seed:
            return 0
        state = np.random.SeedSequence([self._seed, epoch, shard]).generate_state(1, np.uint64)
        return int(state[0]) or 1

    def _tensor(self, value: Any) -> Any:
        arr = np.array(value)  # a writable copy of the received bytes
        return torch.from_numpy(arr) if self._to_tensor else arr

    def _image(self, u8: np.ndarray) -> Any:
        if self._to_tensor:
            return torch.from_numpy(np.array(u8)).to(torch.float32).div_(255.0)
        return u8.astype(np.float32) / np.float32(255.0)

    def _put_images(self, out: dict[str, Any], images: dict[str, Any]) -> None:
        if isinstance(self._image_key, str) or self._image_key is None:
            out["image"] = next(iter(images.values()))
        else:
            out["images"] = images

    def _sample(self, ep: dict[str, Any]) -> dict[str, Any]:
        """One episode; without frames a `TensorBatch`, which leaves a DataLoader worker in one
        copy. Frames are large enough that a shared-memory segment per tensor costs little,
        and packing them would copy them once more: those samples stay plain dicts."""
        out: dict[str, Any] = (dict if self._images else TensorBatch)(
            action=self._tensor(ep["actions"]), state=self._tensor(ep["states"]),
            reward=self._tensor(ep["rewards"]),
        )  # fmt: skip
        if self._images:
            self._put_images(
                out, {cam: self._image(px.transpose(0, 3, 1, 2)) for cam, px in ep["images"].items()}
            )
        meta = ep["meta"]
        success = meta["success"]
        out.update(task=meta["task"], embodiment=meta["embodiment"], episode_id=meta["episode_id"],
                   success=-1 if success is None else int(success), episode_index=ep["position"],
                   source=ep["source"])  # fmt: skip
        return out

    def _window_batch(self, batch: dict[str, Any]) -> dict[str, Any]:
        """A batch of windows: a `TensorBatch`, which leaves a DataLoader worker in one copy
        instead of one shared-memory segment per tensor."""
        images = batch.pop("images", None)
        tasks = batch.pop("task")
        out = TensorBatch((key, self._tensor(value)) for key, value in batch.items())
        if images:
            self._put_images(out, {cam: self._image(px) for cam, px in images.items()})
        out["task"] = tasks
        return out


def _close_quietly(client: KinoClient) -> None:
    with contextlib.suppress(Exception):  # at exit, gRPC may have torn the channel down already
        client.close()
