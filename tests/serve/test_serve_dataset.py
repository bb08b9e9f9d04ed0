"""`KinoRemoteDataset` against a real server: the local datasets' keys and values, DataLoader workers."""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from _server_proc import SRC, ServerProcess
from kinodb.errors import QuerySyntaxError

torch = pytest.importorskip("torch", reason="KinoRemoteDataset needs torch")
from torch.utils.data import DataLoader  # noqa: E402

from kinodb.remote import KinoClient, KinoRemoteDataset, ServerUnavailableError  # noqa: E402
from kinodb.torch import KinoFrameDataset, KinoMapDataset  # noqa: E402

# These tests use gRPC in the test process itself (a client, a num_workers=0 epoch), and a
# worker forked within about a second of a channel closing can hang inside gRPC's core
# (docs/serve.md). Their workers therefore start from a fork server, a process that never
# used gRPC; the fork start users get by default is tested on its own below.
FORKSERVER = {"multiprocessing_context": "forkserver", "timeout": 120}
multiprocessing.get_context("forkserver").set_forkserver_preload(["torch", "kinodb.remote"])


def test_episode_samples_match_kino_map_dataset(server: ServerProcess, main_kdb: Path) -> None:
    ds = KinoRemoteDataset(
        server.addr, batch_size=6, mode="sequential", include_images=True, image_key="wrist"
    )
    local = KinoMapDataset(main_kdb, image_key="wrist")
    samples = list(DataLoader(ds, batch_size=None))
    assert [s["episode_index"] for s in samples] == [*range(20), 0, 1, 2, 3]  # 4 batches of 6
    for sample in samples[:20]:
        want = local[sample["episode_index"]]
        assert set(sample) == set(want)
        for key, value in want.items():
            if isinstance(value, torch.Tensor):
                assert sample[key].dtype == value.dtype, key
                torch.testing.assert_close(sample[key], value, rtol=0, atol=0)
            else:
                assert sample[key] == value, key


def test_window_batches_match_kino_frame_dataset(server: ServerProcess, main_kdb: Path) -> None:
    local = KinoFrameDataset(main_kdb, obs_horizon=2, action_horizon=4, image_key="cam")
    ds = KinoRemoteDataset(server.addr, batch_size=32, mode="sequential", include_images=True,
                           windows={"obs_horizon": 2, "action_horizon": 4})  # fmt: skip
    batches = list(DataLoader(ds, batch_size=None, num_workers=2, **FORKSERVER))
    assert len(batches) == math.ceil(len(local) / 32)
    seen = torch.cat([b["index"] for b in batches])
    assert sorted(seen.tolist()) == sorted(np.arange(len(batches) * 32) % len(local))
    for batch in batches[:3]:
        want = local.__getitems__(batch["index"].tolist()).stacked
        assert set(want) <= set(batch)
        for key, value in want.items():
            if isinstance(value, torch.Tensor):
                assert batch[key].dtype == value.dtype, key
                torch.testing.assert_close(batch[key], value, rtol=0, atol=0)
            else:
                assert batch[key] == value, key


def test_seeded_epochs_over_workers(server: ServerProcess) -> None:
    def epoch(seed: int, e: int) -> list[list[int]]:
        ds = KinoRemoteDataset(
            server.addr, batch_size=16, seed=seed, num_batches=6, windows={"action_horizon": 2}
        )
        ds.set_epoch(e)
        return [b["index"].tolist() for b in DataLoader(ds, batch_size=None, num_workers=2, **FORKSERVER)]

    first = epoch(5, 0)
    assert len(first) == 6 and len({tuple(b) for b in first}) == 6  # the two workers draw different batches
    assert epoch(5, 0) == first
    assert epoch(5, 1) != first and epoch(6, 0) != first
    unseeded = KinoRemoteDataset(server.addr, batch_size=4, num_batches=2, to_tensor=False)
    items = list(unseeded)
    assert len(items) == 8 and isinstance(items[0]["action"], np.ndarray)


def test_an_epoch_covers_the_windows_the_filter_keeps(server: ServerProcess, main_kdb: Path) -> None:
    kql = "success = true AND num_frames > 9"
    local = KinoFrameDataset(main_kdb, obs_horizon=2, action_horizon=4, kql_filter=kql)
    with KinoClient(server.addr) as client:
        assert len(local) < client.server_info()["num_frames"] - 8
    ds = KinoRemoteDataset(server.addr, batch_size=8, mode="sequential",
                           windows={"obs_horizon": 2, "action_horizon": 4, "kql_filter": kql})  # fmt: skip
    for workers in (0, 2):
        batches = list(
            DataLoader(ds, batch_size=None, num_workers=workers, **(FORKSERVER if workers else {}))
        )
        assert len(batches) == math.ceil(len(local) / 8)
        seen = torch.cat([b["index"] for b in batches]).tolist()
        assert set(seen) == set(range(len(local)))  # every window the filter keeps, once (and a few again)
        assert len(seen) - len(local) < 8


def test_len_is_what_a_rank_yields_per_epoch(server: ServerProcess) -> None:
    kql = "success = true AND num_frames > 9"
    cases = [
        dict(batch_size=6, mode="sequential"),  # episodes: 4 batches of 6
        dict(batch_size=4, num_batches=3, mode="random"),
        dict(batch_size=32, mode="sequential", windows={"obs_horizon": 2, "action_horizon": 4}),
        dict(batch_size=8, windows={"action_horizon": 2, "kql_filter": kql}),
        dict(batch_size=8, windows={"action_horizon": 2}, rank=1, world_size=3),
        dict(batch_size=8, num_batches=7, windows={"action_horizon": 2}, rank=0, world_size=2),
    ]
    for kw in cases:
        ds = KinoRemoteDataset(server.addr, **kw)
        loader = DataLoader(ds, batch_size=None, num_workers=2, **FORKSERVER)
        assert len(ds) == len(loader) == sum(1 for _ in loader), kw
    assert len(KinoRemoteDataset(server.addr, batch_size=6)) == 24
    halves = KinoRemoteDataset(server.addr, batch_size=8, num_batches=7, windows={}, rank=0, world_size=2)
    assert len(halves) == 4


_LEN_THEN_FORK = """
import os
import sys

from torch.utils.data import DataLoader

from kinodb.remote import KinoRemoteDataset


def tasks():
    return set(os.listdir("/proc/self/task"))  # every native thread, gRPC's included


if __name__ == "__main__":
    addr, epochs = sys.argv[1], int(sys.argv[2])
    for epoch in range(epochs):
        # A new dataset each epoch, so that every len() asks the server.
        ds = KinoRemoteDataset(addr, batch_size=128, seed=1, windows={"obs_horizon": 2, "action_horizon": 4})
        ds.set_epoch(epoch)
        loader = DataLoader(ds, batch_size=None, num_workers=2, timeout=60)  # fork, the Linux default
        before = tasks()
        steps = len(loader)
        started = tasks() - before
        if started:
            sys.exit(f"len() left threads running in the training process: {sorted(started)}")
        got = sum(1 for _ in loader)  # a worker that hangs raises after the DataLoader's timeout
        print(epoch, steps, got, flush=True)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="forked DataLoader workers: Linux only")
def test_len_before_forked_workers_leaves_them_no_grpc_to_hang_on(
    server: ServerProcess, tmp_path: Path
) -> None:
    script = tmp_path / "len_then_fork.py"
    script.write_text(_LEN_THEN_FORK)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.Popen([sys.executable, str(script), server.addr, "10"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)  # fmt: skip
    try:
        out, err = proc.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the script and its DataLoader workers
        out, err = proc.communicate()
        pytest.fail(f"len() then forked DataLoader workers hung: stdout {out!r}, stderr {err[-3000:]}")
    finally:
        leftover = _kill_group(proc.pid)
    assert proc.returncode == 0, err[-3000:]
    assert not leftover, f"processes left behind: {leftover}"
    with KinoClient(server.addr) as client:
        steps = math.ceil(client.server_info()["num_frames"] / 128)
    assert out.splitlines() == [f"{epoch} {steps} {steps}" for epoch in range(10)]


def _kill_group(pgid: int) -> bool:
    """Kill what is left of process group ``pgid``; say whether anything was."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        return False
    return True


def test_len_raises_what_the_server_says(server: ServerProcess) -> None:
    bad = KinoRemoteDataset(server.addr, windows={"kql_filter": "success = = true"})
    with pytest.raises(QuerySyntaxError) as err:
        len(bad)
    assert err.value.position > 0
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        free = probe.getsockname()[1]
    gone = KinoRemoteDataset(f"127.0.0.1:{free}", timeout=5)
    with pytest.raises(ServerUnavailableError, match=f"127.0.0.1:{free}"):
        len(gone)


def _window_count(server: ServerProcess) -> int:
    with KinoClient(server.addr) as client:
        return int(client.server_info()["num_frames"])  # windows without a filter: one per frame


def test_set_epoch_reaches_persistent_workers(server: ServerProcess) -> None:
    def epochs(persistent: bool) -> list[list[list[int]]]:
        ds = KinoRemoteDataset(server.addr, batch_size=8, seed=1, num_batches=4,
                               windows={"obs_horizon": 2, "action_horizon": 4})  # fmt: skip
        loader = DataLoader(ds, batch_size=None, num_workers=2, persistent_workers=persistent, **FORKSERVER)
        out = []
        for epoch in range(3):
            ds.set_epoch(epoch)
            out.append([b["index"].tolist() for b in loader])
        return out

    fresh, kept = epochs(False), epochs(True)
    assert len({repr(e) for e in fresh}) == 3  # every epoch draws its own batches
    assert kept == fresh  # and workers that outlive an epoch draw them too
    ds = KinoRemoteDataset(server.addr)
    ds.set_epoch(7)
    assert ds.epoch == 7
    with pytest.raises(ValueError, match="epoch must be a non-negative int"):
        ds.set_epoch(-1)


def test_ranks_and_workers_share_out_an_epoch(server: ServerProcess) -> None:
    n = _window_count(server)

    def rank_batches(rank: int, world: int, mode: str, seed: int = 0) -> list[list[int]]:
        ds = KinoRemoteDataset(server.addr, batch_size=8, mode=mode, seed=seed, windows={"action_horizon": 2},
                               rank=rank, world_size=world)  # fmt: skip
        return [b["index"].tolist() for b in DataLoader(ds, batch_size=None, num_workers=2, **FORKSERVER)]

    per_rank = [rank_batches(r, 3, "sequential") for r in range(3)]
    steps = -(-math.ceil(n / 8) // 3)
    assert [len(b) for b in per_rank] == [steps] * 3  # every rank takes as many steps
    seen = sorted(i for batches in per_rank for batch in batches for i in batch)
    # Each window once across ranks and workers; the last batches wrap around to the first.
    assert seen == sorted(k % n for k in range(8 * 3 * steps))
    firsts = [batches[0][0] for batches in per_rank]
    assert firsts == [0, 8, 16]  # batch j of the epoch goes to rank j % world_size

    seeded = [rank_batches(r, 2, "random", seed=3) for r in range(2)]
    assert seeded[0] != seeded[1] and seeded[0] == rank_batches(0, 2, "random", seed=3)
    alone = KinoRemoteDataset(server.addr, batch_size=8, mode="random", seed=3, windows={"action_horizon": 2})
    assert rank_batches(0, 1, "random", seed=3) == [
        b["index"].tolist() for b in DataLoader(alone, batch_size=None, num_workers=2, **FORKSERVER)
    ]


def test_rank_arguments_are_checked(server: ServerProcess) -> None:
    with pytest.raises(ValueError, match="give both rank and world_size"):
        KinoRemoteDataset(server.addr, rank=0)
    with pytest.raises(ValueError, match="need 0 <= rank < world_size"):
        KinoRemoteDataset(server.addr, rank=2, world_size=2)


def test_torch_distributed_ranks_read_their_own_share(server: ServerProcess, tmp_path: Path) -> None:
    import socket

    import torch.multiprocessing as tmp
    from _ddp_ranks import rank_main

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        master_port = probe.getsockname()[1]
    tmp.spawn(rank_main, args=(server.addr, master_port, str(tmp_path)), nprocs=2)
    got = [json.loads((tmp_path / f"{rank}.json").read_text()) for rank in range(2)]
    n = _window_count(server)
    steps = -(-math.ceil(n / 8) // 2)
    assert [len(b) for b in got] == [steps, steps]
    assert [got[0][0][0], got[1][0][0]] == [0, 8]
    seen = sorted(i for batches in got for batch in batches for i in batch)
    assert seen == sorted(k % n for k in range(8 * 2 * steps))


_EARLY_EXIT = """
import sys
from torch.utils.data import DataLoader
from kinodb.remote import KinoRemoteDataset
from kinodb.serve import KinoServer

if __name__ == "__main__":
    with KinoServer(sys.argv[1], port=0) as server:
        ds = KinoRemoteDataset(server.address, batch_size=16, num_batches=1000, windows={"obs_horizon": 2},
                               image_key="front")
        for epoch in range(4):
            ds.set_epoch(epoch)
            for batch in DataLoader(ds, batch_size=None, num_workers=2, multiprocessing_context="spawn"):
                break  # leave the epoch at once: the workers exit with batches still being handed over
            print("epoch", epoch, flush=True)
"""


def test_leaving_epochs_early_with_spawned_workers_exits_them_cleanly(tmp_path: Path) -> None:
    import subprocess
    import sys

    import kinodb

    path = tmp_path / "frames.kdb"
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:256, 0:256]
    with kinodb.Writer(path, image_codec="jpeg") as w:
        for k in range(4):  # 16 windows of two 256x256 frames: 25 MB of float32 per batch
            frames = ((yy + xx + 10 * k)[None, :, :, None] + np.arange(12)[:, None, None, None]) % 256
            w.add_episode(actions=rng.standard_normal((12, 7)).astype(np.float32),
                          states=rng.standard_normal((12, 5)).astype(np.float32),
                          images={"front": np.broadcast_to(frames, (12, 256, 256, 3)).astype(np.uint8)})  # fmt: skip
    script = tmp_path / "early.py"
    script.write_text(_EARLY_EXIT)
    run = subprocess.run(
        [sys.executable, str(script), str(path)], capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines() == [f"epoch {k}" for k in range(4)]
    # A worker that ended with SIGABRT ("terminate called without an active exception") is
    # reported by the DataLoader that shut it down.
    assert "terminate called" not in run.stderr and "killed by signal" not in run.stderr, run.stderr
