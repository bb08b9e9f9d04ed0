"""The training benchmark's loop and loaders: one timed run, the same order and tensors for all.

- `loaders_for` names the loaders of a set: the native peer (LeRobot's `LeRobotDataset`
  on the LeRobot v3.0 form, or robomimic's `SequenceDataset` on the HDF5 form) and
  `kinodb.torch.KinoFrameDataset` on the ``.kdb`` ingested with PNG and with JPEG frames.
  Every one of them returns the same item: ``state`` float32 (Ho, S), ``action`` float32
  (Ha, A), ``action_is_pad`` bool (Ha,), ``images`` {camera: float32 (Ho, 3, H, W) in
  [0, 1]} at the stored size.
- `FixedOrder` is the sampler all of them are given: each epoch, the first ``samples``
  indices of a permutation seeded by ``(seed, epoch)``.
- `train_run` builds a loader (timed as ``init_s``) and trains a policy for a few
  epochs, timing the wait for each batch (``data_s``) apart from forward, backward and
  the optimiser step (``compute_s``).
- `compare_loaders` checks, before anything is timed, that two loaders yield
  bit-identical batches in that order.
"""

from __future__ import annotations

import gc
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler

import _peers
import kinodb
from _policies import PolicyShape, chunk_loss, make_policy
from kinodb.torch import KinoFrameDataset

LR = 1e-3
WEIGHT_DECAY = 1e-4


# -- order -------------------------------------------------------------------------------------


class FixedOrder(Sampler[int]):
    """Each epoch: the first ``samples`` indices of a permutation of ``range(n)`` seeded by ``(seed, epoch)``."""

    def __init__(self, n: int, samples: int, seed: int) -> None:
        self.n, self.samples, self.seed, self.epoch = n, min(samples, n), seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def order(self) -> list[int]:
        rng = np.random.default_rng([self.seed, self.epoch])
        return rng.permutation(self.n)[: self.samples].tolist()  # type: ignore[no-any-return]

    def __iter__(self) -> Iterator[int]:
        return iter(self.order())

    def __len__(self) -> int:
        return self.samples


# -- loaders -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class LoaderSpec:
    """One loader of a set.

    Attributes:
        name: ``lerobot``, ``robomimic``, ``kinodb-png`` or ``kinodb-jpeg``.
        native: whether it is the peer reading the set's native form.
        form: what it reads (for the record).
        path: the file or folder it reads.
        make: builds the dataset (this is what ``init_s`` times).
        exact: whether its tensors must equal the native loader's bit for bit.
        frames: how its batches hold frames: ``"float"`` (CHW in [0, 1]), or uint8 as
            ``"uint8-hwc"`` (robomimic's own) or ``"uint8-cl"`` (kinodb, ``normalize=False,
            channels_last=True``: CHW-shaped over the same HWC memory), which the training
            step turns into float CHW (see `step_frames`).
    """

    name: str
    native: bool
    form: str
    path: Path
    make: Callable[[], Any]
    exact: bool
    frames: str = "float"


def loaders_for(
    paths: Any,
    windows: _peers.Windows,
    *,
    peers: bool,
    robomimic_cache: str | None,
    decode_threads: int | None,
    raw: Path | None = None,
    uint8: bool = False,
) -> list[LoaderSpec]:
    """The native peer (when ``peers``) and the kinodb loaders of a training set: PNG, JPEG,
    and raw frames when ``raw`` names a raw-frame ``.kdb``.

    ``uint8``: every loader whose library can hand frames over as uint8 does, in the layout it
    stores them in, and the training step makes them float (robomimic's own way: its
    `SequenceDataset` returns uint8 HWC and its training step converts them on the device;
    kinodb's frames are channels-last, the same memory). LeRobot's decoder returns float only.
    """
    out: list[LoaderSpec] = []
    native = Path(paths.native)
    if peers and paths.lerobot is not None:
        out.append(LoaderSpec("lerobot", True, f"LeRobot v3.0, mp4 ({paths.video_codec}), pyav backend", native,
                              lambda: _peers.LeRobotWindows(native, windows, video_backend="pyav"), True))  # fmt: skip
    elif peers and paths.hdf5 is not None:
        out.append(LoaderSpec("robomimic", True, f"robomimic HDF5, raw uint8, hdf5_cache_mode={robomimic_cache}",
                              native, lambda: _peers.RobomimicWindows(native, windows, cache_mode=robomimic_cache,
                                                                      uint8=uint8),
                              True, "uint8-hwc" if uint8 else "float"))  # fmt: skip
    kdbs = [("png", paths.kdb_png), *([("raw", raw)] if raw is not None else []), ("jpeg", paths.kdb_jpeg)]
    for codec, kdb in kdbs:

        def make(kdb: Path = Path(kdb)) -> KinoFrameDataset:
            return KinoFrameDataset(kdb, obs_horizon=windows.obs_horizon, action_horizon=windows.action_horizon,
                                    image_key=list(windows.cameras), decode_threads=decode_threads,
                                    normalize=False if uint8 else None, channels_last=uint8)  # fmt: skip

        out.append(LoaderSpec(f"kinodb-{codec}", False, f".kdb, {codec} frames", Path(kdb), make, codec != "jpeg",
                              "uint8-cl" if uint8 else "float"))  # fmt: skip
    return out


def step_frames(x: torch.Tensor, frames: str) -> torch.Tensor:
    """A batch's frames as the policy takes them: float32 (B, T, C, H, W) in [0, 1], contiguous.

    uint8 frames are divided by 255 in float32 exactly as the loaders that return float do
    it (``x.float() / 255``, correctly rounded), so every form gives the same values.
    """
    if frames == "float":
        return x
    if frames in ("uint8-hwc", "uint8-cl"):  # the same transpose for both (see `batch_tensors`)
        x = x.permute(0, 1, 4, 2, 3).contiguous()
    return x.float().div_(255)


def raw_kdb(paths: Any, data_dir: Path) -> Path:
    """The set's native form ingested with raw frames (lossless, no decoding), built once
    beside the set's cache folder."""
    out = Path(data_dir) / f"{Path(paths.root).name}-ingested-raw.kdb"
    if not out.exists():  # ingest writes a temporary file and renames it when complete
        kinodb.ingest.ingest(paths.native, out, image_codec="raw")
    return out


def close(dataset: Any) -> None:
    """Release a dataset's files (robomimic keeps its HDF5 handle open until told)."""
    if hasattr(dataset, "close"):
        dataset.close()


def make_loader(
    dataset: Any, order: FixedOrder, batch_size: int, workers: int, device: torch.device
) -> DataLoader[Any]:
    """The DataLoader every loader gets: same order, batch size, workers and pinning."""
    return DataLoader(dataset, batch_size=batch_size, sampler=order, num_workers=workers, drop_last=True,
                      persistent_workers=workers > 0, pin_memory=device.type == "cuda")  # fmt: skip


def warm_files(paths: list[Path]) -> int:
    """Read every file under ``paths`` once, so every loader starts from a warm page cache; bytes read."""
    total = 0
    for root in paths:
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for f in files:
            with open(f, "rb", buffering=0) as fh:
                while chunk := fh.read(1 << 24):
                    total += len(chunk)
    return total


# -- normalisation -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Normalization:
    """Mean and std of states and actions over the whole set, applied on the device."""

    state_mean: torch.Tensor
    state_std: torch.Tensor
    action_mean: torch.Tensor
    action_std: torch.Tensor

    def to(self, device: torch.device) -> Normalization:
        return Normalization(*(t.to(device) for t in (self.state_mean, self.state_std, self.action_mean,
                                                        self.action_std)))  # fmt: skip


def normalization(kdb: Path) -> Normalization:
    """Statistics of ``states`` and ``actions`` over every frame of ``kdb``, computed once."""
    with kinodb.open(kdb) as db:
        states = np.concatenate([db.read_array(i, "states") for i in range(len(db))]).astype(np.float64)
        actions = np.concatenate([db.read_array(i, "actions") for i in range(len(db))]).astype(np.float64)

    def t(x: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(x.astype(np.float32))

    return Normalization(t(states.mean(0)), t(np.maximum(states.std(0), 1e-6)), t(actions.mean(0)),
                         t(np.maximum(actions.std(0), 1e-6)))  # fmt: skip


# -- checks ------------------------------------------------------------------------------------


def batch_tensors(
    batch: Any, cameras: tuple[str, ...], device: torch.device, frames: str = "float"
) -> dict[str, torch.Tensor]:
    """The tensors a policy consumes, by a flat name, contiguous and on ``device``.

    ``contiguous()`` is the one transform applied to every loader's batches: it costs
    nothing for tensors that already are, and it gives every policy the same memory
    layout (robomimic's frames are permuted HWC arrays, which collate into a
    channels-last batch, and oneDNN convolutions round differently on that layout).
    Channels-last uint8 frames (``frames="uint8-cl"``) are taken as the HWC tensor
    their memory holds, a view, as robomimic's uint8 frames are: `step_frames` then
    transposes both the same way.
    """
    out = {k: batch[k] for k in ("state", "action", "action_is_pad")}
    for cam in cameras:
        x = batch["images"][cam]
        out[f"images.{cam}"] = x.permute(0, 1, 3, 4, 2) if frames == "uint8-cl" else x
    return {k: v.contiguous().to(device) for k, v in out.items()}


def compare_loaders(
    want: LoaderSpec,
    got: LoaderSpec,
    cameras: tuple[str, ...],
    order: FixedOrder,
    batch_size: int,
    batches: int,
) -> tuple[list[str], float]:
    """Problems where ``got``'s first ``batches`` batches differ from ``want``'s, and the largest
    absolute difference seen (0.0 when bit-identical)."""
    problems: list[str] = []
    worst = 0.0
    ds_a, ds_b = want.make(), got.make()
    try:
        cpu = torch.device("cpu")
        it_a = iter(make_loader(ds_a, order, batch_size, 0, cpu))
        it_b = iter(make_loader(ds_b, order, batch_size, 0, cpu))
        for n in range(batches):
            a = batch_tensors(next(it_a), cameras, cpu, want.frames)
            b = batch_tensors(next(it_b), cameras, cpu, got.frames)
            for cam in cameras:
                key = f"images.{cam}"
                a[key], b[key] = step_frames(a[key], want.frames), step_frames(b[key], got.frames)
            for key, x in a.items():
                y = b[key]
                if x.dtype != y.dtype or x.shape != y.shape:
                    problems.append(f"batch {n} {key}: {got.name} {y.dtype} {tuple(y.shape)}, "
                                    f"{want.name} {x.dtype} {tuple(x.shape)}")  # fmt: skip
                    continue
                diff = float((x.double() - y.double()).abs().max()) if x.numel() else 0.0
                worst = max(worst, diff)
                if not torch.equal(x, y):
                    problems.append(
                        f"batch {n} {key}: {got.name} differs from {want.name} (max abs {diff:.3g})"
                    )
    finally:
        close(ds_a)
        close(ds_b)
    return problems, worst


# -- one run -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunConfig:
    """What every run of a benchmark shares."""

    epochs: int
    samples: int
    batch_size: int
    workers: int
    device: torch.device


def warm_up(policy: str, shape: PolicyShape, batch_size: int, device: torch.device) -> None:
    """One untimed step on random tensors, so no run pays for first-call kernel setup."""
    torch.manual_seed(0)
    model = make_policy(policy, shape).to(device)
    state = torch.randn(batch_size, shape.obs_horizon, shape.state_dim, device=device)
    size = (batch_size, shape.obs_horizon, 3, shape.image_size, shape.image_size)
    images = {cam: torch.rand(size, device=device) for cam in shape.cameras}
    action = torch.randn(batch_size, shape.action_horizon, shape.action_dim, device=device)
    pad = torch.zeros(batch_size, shape.action_horizon, dtype=torch.bool, device=device)
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    for _ in range(3):
        opt.zero_grad(set_to_none=True)
        chunk_loss(model(state, images), action, pad).backward()  # type: ignore[no-untyped-call]
        opt.step()
    _sync(device)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_run(
    spec: LoaderSpec, shape: PolicyShape, policy: str, seed: int, norm: Normalization, n: int, cfg: RunConfig
) -> dict[str, Any]:
    """Build ``spec``'s loader and train ``policy`` on it; the timings and losses of the run.

    The policy and optimiser are created (seeded) before the clock starts. ``init_s``
    covers the dataset and DataLoader construction; ``data_s`` every wait for the next
    batch, including its copy to the device and the first batch of each epoch (workers
    starting); ``compute_s`` turning uint8 frames into float (when the loader hands over
    uint8), forward, loss, backward, optimiser step and reading the loss.
    The ``*_cpu_s`` twins hold the process CPU time of the same spans (less sensitive to
    other jobs on a shared machine; DataLoader workers are other processes, not counted).
    """
    torch.manual_seed(seed)
    model = make_policy(policy, shape).to(cfg.device)
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    nm = norm.to(cfg.device)
    order = FixedOrder(n, cfg.samples, seed)
    gc.collect()
    t0 = _now()
    dataset = spec.make()
    loader = make_loader(dataset, order, cfg.batch_size, cfg.workers, cfg.device)
    init = _now() - t0
    data, compute = np.zeros(2), np.zeros(2)  # (wall, process CPU) seconds
    step_losses: list[float] = []
    epoch_losses: list[float] = []
    for epoch in range(cfg.epochs):
        order.set_epoch(epoch)
        first = len(step_losses)
        t = _now()
        for batch in loader:
            b = batch_tensors(batch, shape.cameras, cfg.device, spec.frames)
            _sync(cfg.device)
            t1 = _now()
            data += t1 - t
            images = {cam: step_frames(b[f"images.{cam}"], spec.frames) for cam in shape.cameras}
            pred = model((b["state"] - nm.state_mean) / nm.state_std, images)
            loss = chunk_loss(pred, (b["action"] - nm.action_mean) / nm.action_std, b["action_is_pad"])
            opt.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            opt.step()
            step_losses.append(float(loss.item()))
            t = _now()
            compute += t - t1
        data += _now() - t  # the wait that ended the epoch (StopIteration)
        epoch_losses.append(float(np.mean(step_losses[first:])))
    total = _now() - t0
    del loader
    close(dataset)
    return {"init_s": init[0], "data_s": data[0], "compute_s": compute[0], "total_s": total[0],
            "epoch_losses": epoch_losses, "step_losses": step_losses, "steps": len(step_losses),
            "init_cpu_s": init[1], "data_cpu_s": data[1], "compute_cpu_s": compute[1],
            "total_cpu_s": total[1]}  # fmt: skip


def _now() -> np.ndarray:
    """Wall-clock and process CPU time (all threads of this process), in seconds."""
    return np.array([time.perf_counter(), time.process_time()])


def configure_determinism(device: torch.device, threads: int) -> None:
    """Fixed intra-op threads for every loader; deterministic kernels on CUDA."""
    torch.set_num_threads(threads)
    if device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        torch.use_deterministic_algorithms(True)
