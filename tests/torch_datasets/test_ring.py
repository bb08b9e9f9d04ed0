"""The shared-memory ring DataLoader workers hand batches through (kinodb.torch._ring)."""

from __future__ import annotations

import contextlib
import gc
import os
import sys
from multiprocessing.reduction import ForkingPickler
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

import kinodb
import kinodb.torch._collate as collate_mod
from _factories import write_episodes
from kinodb.torch import KinoFrameDataset, TensorBatch, _ring

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux") or not _ring.available(),
    reason="the batch ring is an anonymous memory file opened through /proc (Linux); elsewhere batches "
    "take torch's own path",
)


def _named_rings() -> list[str]:
    return [n for n in os.listdir("/dev/shm") if n.startswith("kinodb-")] if os.path.isdir("/dev/shm") else []


def test_slots_fill_free_and_time_out(monkeypatch) -> None:
    monkeypatch.setattr(_ring, "WAIT_S", 0.01)
    ring = _ring.Ring(1 << 16, slots=3)
    try:
        pid, fd, _ = ring.key
        assert os.readlink(f"/proc/{pid}/fd/{fd}").startswith("/memfd:kinodb-batches")  # no name anywhere
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
        _ring.read_slot(ring.key, slots[1], ring.offset(slots[1]), [out[:30], out[30:]])
        np.testing.assert_array_equal(out, data[1])
        again = ring.take()
        assert again == slots[1]  # the freed slot is the one handed out next
        _ring.read_slot(ring.key, slots[2], ring.offset(slots[2]), [out])  # through the descriptor kept
        np.testing.assert_array_equal(out, data[2])
    finally:
        ring.close()
    gone = _ring.Ring(1 << 16, slots=1)
    gone.close()
    with pytest.raises(RuntimeError, match="is gone"):
        _ring.read_slot(gone.key, 0, gone.offset(0), [np.empty(4, dtype=np.uint8)])


def test_a_reused_pid_and_descriptor_are_not_taken_for_the_ring() -> None:
    ring = _ring.Ring(1 << 16, slots=1)
    try:
        pid, fd, ino = ring.key
        with pytest.raises(RuntimeError, match="is gone"):  # the same descriptor, another file
            _ring.read_slot((pid, fd, ino + 1), 0, ring.offset(0), [np.empty(4, dtype=np.uint8)])
    finally:
        ring.close()


def test_oversized_payloads_get_no_ring() -> None:
    assert _ring.worker_ring(_ring.MAX_PAYLOAD + 1) is None


def _lowdim(tmp_path: Path) -> Path:
    path = tmp_path / "low.kdb"
    write_episodes(path, [40, 55, 31, 60, 47], action_dim=7, state_dim=14)
    return path


def test_worker_batches_come_through_the_ring_equal_and_owned(tmp_path: Path, monkeypatch) -> None:
    reads: list[tuple[int, int, int]] = []
    real = collate_mod.read_slot

    def counting(key: tuple[int, int, int], *args: object) -> None:
        reads.append(key)
        real(key, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(collate_mod, "read_slot", counting)
    ds = KinoFrameDataset(_lowdim(tmp_path), obs_horizon=2, action_horizon=8)
    local = list(DataLoader(ds, batch_size=16))
    before = set(_named_rings())  # another job's rings may be there
    loader = DataLoader(ds, batch_size=16, num_workers=2, persistent_workers=True)
    first = list(loader)  # every batch held at once: slots are reused under them
    assert set(_named_rings()) == before  # the rings have no names
    second = list(loader)
    assert len(reads) == 2 * len(local)  # every batch of both epochs, none the fallback way
    assert len({key[0] for key in reads}) == 2 and len(set(reads)) == 2  # one ring per worker
    for got in (first, second):
        assert len(got) == len(local)
        for a, b in zip(local, got, strict=True):
            assert isinstance(b, TensorBatch) and a["task"] == b["task"]
            for key in ("state", "action", "action_is_pad", "state_is_pad", "episode_index", "frame_index"):
                assert a[key].dtype == b[key].dtype
                torch.testing.assert_close(a[key], b[key])
    first[0]["state"].zero_()  # a batch owns its memory
    torch.testing.assert_close(second[0]["state"], local[0]["state"])
    pids = {key[0] for key in reads}
    assert all((key[0], key[2]) in _ring._readers for key in reads)  # this process holds both rings
    del loader, first, second
    gc.collect()
    for pid in pids:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)
    _ring._readers_lock.acquire()
    try:  # the next ring opened closes the descriptors of rings whose workers are gone
        assert not any(_ring._alive(pid) for pid in pids)
    finally:
        _ring._readers_lock.release()
    list(DataLoader(ds, batch_size=16, num_workers=1))
    assert not any(key[0] in pids for key in _ring._readers)


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
    again = pickle.loads(ForkingPickler.dumps(batch))  # as a DataLoader's queue sends it
    assert isinstance(again, TensorBatch) and again.keys() == batch.keys() and again["task"] == batch["task"]
    for key in ("state", "half", "pad", "index", "strided"):
        assert again[key].dtype == batch[key].dtype and again[key].shape == batch[key].shape
        assert torch.equal(again[key], batch[key])
    assert torch.equal(again["images"]["front"], batch["images"]["front"])


def test_a_batch_pickled_in_a_worker_for_anything_but_a_queue_is_by_value(monkeypatch) -> None:
    """``torch.save`` or ``pickle`` of a batch inside a worker (a cache, a debug dump)
    takes no ring slot and loads anywhere, also after the worker has gone."""
    import io
    import pickle

    monkeypatch.setattr(collate_mod, "get_worker_info", lambda: object())
    monkeypatch.setattr(collate_mod, "worker_ring", lambda n: pytest.fail("a ring slot was taken"))
    batch = TensorBatch(state=torch.randn(4, 3), task=["a", "b", "c", "d"])
    buf = io.BytesIO()
    torch.save(batch, buf)
    buf.seek(0)
    for again in (torch.load(buf, weights_only=False), pickle.loads(pickle.dumps(batch))):
        assert isinstance(again, TensorBatch) and again["task"] == batch["task"]
        assert torch.equal(again["state"], batch["state"])


def test_a_tensor_kept_from_a_ring_batch_holds_only_its_own_bytes(monkeypatch) -> None:
    """A training loop that keeps ``batch["episode_index"]`` each step must not keep each
    batch's whole buffer alive."""
    import pickle
    import tracemalloc

    monkeypatch.setattr(collate_mod, "get_worker_info", lambda: object())
    batch = TensorBatch(state=torch.randn(256, 16, 64), index=torch.arange(256))
    tracemalloc.start()
    try:
        kept = []
        for _ in range(8):
            again = pickle.loads(ForkingPickler.dumps(batch))
            assert torch.equal(again["index"], torch.arange(256))
            kept.append(again["index"])
            del again
        gc.collect()
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert held < 256 * 16 * 64 * 4  # less than one batch's states, for eight batches kept


class _ManyTensors(torch.utils.data.Dataset):  # type: ignore[type-arg]
    """Batches of more tensors (and alignment gaps) than one ``preadv`` fills (IOV_MAX)."""

    def __len__(self) -> int:
        return 2

    def __getitem__(self, i: int) -> TensorBatch:
        return TensorBatch({f"t{k}": torch.full((3,), k + i, dtype=torch.int16) for k in range(700)})


def test_a_ring_batch_of_more_tensors_than_one_preadv_fills_arrives(tmp_path: Path, monkeypatch) -> None:
    reads: list[int] = []
    real = collate_mod.read_slot
    monkeypatch.setattr(collate_mod, "read_slot", lambda *a: (reads.append(len(a[3])), real(*a)))
    got = list(DataLoader(_ManyTensors(), batch_size=None, num_workers=1))
    assert reads == [1, 1]  # through the ring, into one buffer
    for i, batch in enumerate(got):
        assert all(
            torch.equal(batch[f"t{k}"], torch.full((3,), k + i, dtype=torch.int16)) for k in range(700)
        )


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


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # torch on the killed worker
def test_a_worker_killed_before_its_batches_are_read_leaves_nothing(tmp_path: Path) -> None:
    import signal
    import time

    ds = KinoFrameDataset(_lowdim(tmp_path), obs_horizon=2, action_horizon=4, image_key=False)
    before = set(_named_rings())
    it = iter(DataLoader(ds, batch_size=2, num_workers=2))
    next(it)  # a batch of worker 0; worker 1 packs its first batches into its ring meanwhile
    time.sleep(0.5)
    victim = it._workers[1].pid  # type: ignore[attr-defined]
    fds = os.listdir(f"/proc/{victim}/fd")
    links = [os.readlink(f"/proc/{victim}/fd/{fd}") for fd in fds]
    assert any(link.startswith("/memfd:kinodb-batches") for link in links)  # its ring: no name
    os.kill(victim, signal.SIGKILL)
    with pytest.raises(RuntimeError, match=r"killed by signal|exited unexpectedly|is gone"):
        while True:
            next(it)
    del it
    gc.collect()
    assert set(_named_rings()) == before


def test_a_killed_process_group_leaves_nothing(tmp_path: Path) -> None:
    # SIGTERM to the whole job (what `timeout`, `kill -- -PGID` and schedulers send) right
    # after the first batch, while the other worker's batches wait unread.
    import subprocess as sp

    path = _lowdim(tmp_path)
    code = (
        "import os, signal, time\n"
        "from torch.utils.data import DataLoader\n"
        "from kinodb.torch import KinoFrameDataset\n"
        f"ds = KinoFrameDataset({str(path)!r}, obs_horizon=2, action_horizon=4, image_key=False)\n"
        "it = iter(DataLoader(ds, batch_size=2, num_workers=2))\n"
        "next(it); time.sleep(0.5)\n"
        "print('read', flush=True)\n"
        "os.killpg(0, signal.SIGTERM)\n"
    )
    before = set(_named_rings())
    proc = sp.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, start_new_session=True
    )
    assert "read" in proc.stdout, proc.stderr
    assert proc.returncode == -15
    assert set(_named_rings()) == before


def test_a_conjugated_tensor_in_a_worker_batch_arrives() -> None:
    def conj(batch: list[TensorBatch]) -> TensorBatch:
        out = collate_mod.collate(batch)
        out["phase"] = torch.complex(out["a"].double(), out["a"].double()).conj()  # lazy: a conj bit
        out["neg_view"] = torch.complex(torch.ones(3), torch.ones(3)).conj().imag  # a neg bit
        return out

    got = list(DataLoader(_CopiesInTheWorker(), batch_size=3, num_workers=1, collate_fn=conj, timeout=60))
    assert len(got) == 4
    for k, b in enumerate(got):
        a = torch.arange(3 * k, 3 * k + 3, dtype=torch.float64)[:, None].expand(3, 4)
        assert not b["phase"].is_conj()
        torch.testing.assert_close(b["phase"], torch.complex(a, -a))
        torch.testing.assert_close(b["neg_view"], -torch.ones(3))


def test_a_batch_that_cannot_be_packed_arrives_as_a_plain_dict() -> None:
    def sparse(batch: list[TensorBatch]) -> TensorBatch:
        out = collate_mod.collate(batch)
        out["eye"] = torch.eye(3).to_sparse() * len(out["a"])  # no dense buffer to pack
        return out

    got = list(DataLoader(_CopiesInTheWorker(), batch_size=4, num_workers=1, collate_fn=sparse, timeout=60))
    assert len(got) == 3 and all(isinstance(b, TensorBatch) for b in got)
    for k, b in enumerate(got):
        assert torch.equal(b["eye"].to_dense(), torch.eye(3) * 4)
        assert b["a"][:, 0].tolist() == list(range(4 * k, 4 * k + 4))


def test_a_batch_that_cannot_be_pickled_is_an_error_not_a_hang() -> None:
    def unpicklable(batch: list[TensorBatch]) -> TensorBatch:
        out = collate_mod.collate(batch)
        out["fn"] = lambda: None
        return out

    loader = DataLoader(_CopiesInTheWorker(), batch_size=3, num_workers=1, collate_fn=unpicklable, timeout=60)
    with pytest.raises(kinodb.KinodbError, match=r"could not be pickled to leave the process"):
        next(iter(loader))
