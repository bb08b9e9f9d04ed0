"""The shared-memory ring DataLoader workers hand batches through (kinodb.torch._ring)."""

from __future__ import annotations

import contextlib
import gc
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

import kinodb.torch._collate as collate_mod
from _factories import write_episodes
from kinodb.torch import KinoFrameDataset, TensorBatch, _ring

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux") or not os.path.isdir(_ring.SHM_DIR),
    reason="the batch ring lives in /dev/shm (Linux); elsewhere batches take torch's own path",
)


def _rings_of(pid: int) -> list[str]:
    return [n for n in os.listdir(_ring.SHM_DIR) if n.startswith(f"kinodb-batches-{pid}-")]


def test_slots_fill_free_and_time_out(monkeypatch) -> None:
    monkeypatch.setattr(_ring, "WAIT_S", 0.01)
    ring = _ring.Ring(1 << 16, slots=3)
    try:
        data = [np.full(100, k, dtype=np.uint8) for k in range(3)]
        slots = []
        for d in data:
            slot = ring.take()
            assert slot is not None
            ring.view(slot, d.size)[:] = d
            slots.append(slot)
        assert sorted(slots) == [0, 1, 2]
        assert ring.take() is None  # every slot unread: the caller falls back
        out = np.empty(100, dtype=np.uint8)
        _ring.read_slot(ring.path, slots[1], ring.offset(slots[1]), out)
        np.testing.assert_array_equal(out, data[1])
        again = ring.take()
        assert again == slots[1]  # the freed slot is the one handed out next
        assert not os.path.exists(ring.path)  # the reader unlinked the name on first use
        _ring.read_slot(ring.path, slots[2], ring.offset(slots[2]), out)  # through its descriptor
        np.testing.assert_array_equal(out, data[2])
    finally:
        ring.close()
    gone = _ring.Ring(1 << 16, slots=1)
    gone.close()
    assert not os.path.exists(gone.path)
    with pytest.raises(RuntimeError, match="is gone"):
        _ring.read_slot(gone.path, 0, gone.offset(0), np.empty(4, dtype=np.uint8))


def test_oversized_payloads_get_no_ring() -> None:
    assert _ring.worker_ring(_ring.MAX_PAYLOAD + 1) is None


def _lowdim(tmp_path: Path) -> Path:
    path = tmp_path / "low.kdb"
    write_episodes(path, [40, 55, 31, 60, 47], action_dim=7, state_dim=14)
    return path


def test_worker_batches_come_through_the_ring_equal_and_owned(tmp_path: Path, monkeypatch) -> None:
    reads: list[str] = []
    real = collate_mod.read_slot

    def counting(path: str, *args: object) -> None:
        reads.append(path)
        real(path, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(collate_mod, "read_slot", counting)
    ds = KinoFrameDataset(_lowdim(tmp_path), obs_horizon=2, action_horizon=8)
    local = list(DataLoader(ds, batch_size=16))
    loader = DataLoader(ds, batch_size=16, num_workers=2, persistent_workers=True)
    first = list(loader)  # every batch held at once: slots are reused under them
    live = {int(os.path.basename(p).split("-")[2]) for p in reads}
    assert all(_rings_of(pid) == [] for pid in live)  # names gone while the workers live
    second = list(loader)
    assert len(reads) == 2 * len(local)  # every batch of both epochs, none the fallback way
    assert len({os.path.basename(p).split("-")[2] for p in reads}) == 2  # one ring per worker
    for got in (first, second):
        assert len(got) == len(local)
        for a, b in zip(local, got, strict=True):
            assert isinstance(b, TensorBatch) and a["task"] == b["task"]
            for key in ("state", "action", "action_is_pad", "state_is_pad", "episode_index", "frame_index"):
                assert a[key].dtype == b[key].dtype
                torch.testing.assert_close(a[key], b[key])
    first[0]["state"].zero_()  # a batch owns its memory
    torch.testing.assert_close(second[0]["state"], local[0]["state"])
    pids = {int(os.path.basename(p).split("-")[2]) for p in reads}
    del loader, first, second
    gc.collect()
    for pid in pids:  # the workers are gone and so are their rings
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)
        assert _rings_of(pid) == []


def test_batches_too_large_for_a_slot_take_torchs_path(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(_ring, "MAX_PAYLOAD", 256)  # forked workers inherit it
    reads: list[str] = []
    monkeypatch.setattr(collate_mod, "read_slot", lambda *a: reads.append(a[0]))
    ds = KinoFrameDataset(_lowdim(tmp_path), obs_horizon=2, action_horizon=8)
    local = list(DataLoader(ds, batch_size=16))
    remote = list(DataLoader(ds, batch_size=16, num_workers=2))
    assert reads == []
    for a, b in zip(local, remote, strict=True):
        torch.testing.assert_close(a["action"], b["action"])


def test_a_full_ring_falls_back_instead_of_waiting(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(_ring, "SLOTS", 1)
    monkeypatch.setattr(_ring, "WAIT_S", 0.0)
    ds = KinoFrameDataset(_lowdim(tmp_path), obs_horizon=2, action_horizon=8)
    local = list(DataLoader(ds, batch_size=8))
    remote = list(DataLoader(ds, batch_size=8, num_workers=2, prefetch_factor=4))
    assert len(remote) == len(local)
    for a, b in zip(local, remote, strict=True):
        torch.testing.assert_close(a["state"], b["state"])
        torch.testing.assert_close(a["frame_index"], b["frame_index"])


@pytest.mark.parametrize("in_worker", [False, True])
def test_every_dtype_and_nesting_round_trips(monkeypatch, in_worker: bool) -> None:
    import pickle

    if in_worker:  # the worker's path, read back in this process
        monkeypatch.setattr(collate_mod, "get_worker_info", lambda: object())
    batch = TensorBatch(
        state=torch.randn(4, 2, 3),
        half=torch.randn(4, 5).to(torch.bfloat16),  # no NumPy dtype: the torch path
        pad=torch.tensor([True, False, True, True]),
        index=torch.arange(4, dtype=torch.int64),
        strided=torch.arange(24, dtype=torch.int16).reshape(4, 6)[:, ::2],
        images={"front": torch.randint(0, 255, (4, 3, 2, 2), dtype=torch.uint8)},
        task=["a", "b", "a", "c"],
    )
    again = pickle.loads(pickle.dumps(batch))
    assert isinstance(again, TensorBatch) and again.keys() == batch.keys() and again["task"] == batch["task"]
    for key in ("state", "half", "pad", "index", "strided"):
        assert again[key].dtype == batch[key].dtype and again[key].shape == batch[key].shape
        assert torch.equal(again[key], batch[key])
    assert torch.equal(again["images"]["front"], batch["images"]["front"])


class _CopiesInTheWorker(torch.utils.data.Dataset):  # type: ignore[type-arg]
    """Items that a worker deep-copies (through pickling) before handing them over."""

    def __len__(self) -> int:
        return 12

    def __getitem__(self, i: int) -> TensorBatch:
        import copy

        return copy.deepcopy(TensorBatch(a=torch.full((4,), i), b=torch.arange(3) * i))


def test_a_batch_copied_inside_its_worker_reads_back() -> None:
    got = list(DataLoader(_CopiesInTheWorker(), batch_size=None, num_workers=2))
    assert [int(b["a"][0]) for b in got] == list(range(12))
    assert all(torch.equal(b["b"], torch.arange(3) * k) for k, b in enumerate(got))


def test_rings_left_by_killed_workers_are_removed_by_the_next_worker(monkeypatch) -> None:
    import subprocess as sp
    import time

    dead = sp.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a pid that no longer runs
    old = os.path.join(_ring.SHM_DIR, f"kinodb-batches-{dead.pid}-0123456789ab")
    young = os.path.join(_ring.SHM_DIR, f"kinodb-batches-{dead.pid}-ba9876543210")
    for path in (old, young):
        with open(path, "wb") as fh:
            fh.write(b"\0" * 64)
    os.utime(old, (time.time() - 2 * _ring.STALE_S,) * 2)
    monkeypatch.setattr(_ring, "_ring_pid", -1)  # as in a fresh worker
    monkeypatch.setattr(_ring, "_ring", None)
    try:
        ring = _ring.worker_ring(1000)
        assert ring is not None
        assert not os.path.exists(old)  # a leftover: its worker is gone and it was never read
        assert os.path.exists(young)  # too recent to judge
        ring.close()
    finally:
        for path in (old, young):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
