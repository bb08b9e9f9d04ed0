"""Windows of sources whose schemas differ in one array only: the server gives the same
keys (``state_mask`` and ``action_mask``) as the local datasets over the same files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import kinodb
from _factories import write_episodes
from _server_proc import ServerProcess

torch = pytest.importorskip("torch")
WINDOWS = {"obs_horizon": 2, "action_horizon": 3}


def _write_float64_states(path: Path) -> None:
    """Two episodes whose states are float64 (as an HDF5 source keeps them), 3 wide."""
    rng = np.random.default_rng(7)
    with kinodb.Writer(path) as w:
        for T in (6, 7):
            w.add_episode(actions=rng.normal(size=(T, 2)).astype(np.float32), states=rng.normal(size=(T, 3)))


def _masks(batch: dict[str, object]) -> list[str]:
    return sorted(key for key in batch if key.endswith("_mask"))


@pytest.mark.parametrize("differs", ["state width", "state dtype"])
def test_remote_windows_carry_both_masks_when_one_array_differs(tmp_path: Path, differs: str) -> None:
    from torch.utils.data import DataLoader

    from kinodb.remote import KinoClient, KinoRemoteDataset
    from kinodb.torch import KinoFrameDataset, KinoIterDataset, pad_collate

    a, b = tmp_path / "a.kdb", tmp_path / "b.kdb"
    write_episodes(a, [5, 6], action_dim=2, state_dim=3)
    if differs == "state width":
        write_episodes(b, [7], action_dim=2, state_dim=9, seed=1)  # the same action width
    else:
        _write_float64_states(b)  # the same widths, float64 states
    mix = kinodb.Mixture([(str(a), 1.0), (str(b), 1.0)], seed=3)
    local = KinoFrameDataset(mix, **WINDOWS, image_key=False)
    collated = next(iter(DataLoader(local, batch_size=8, shuffle=True, collate_fn=pad_collate)))
    iterated = next(
        iter(DataLoader(KinoIterDataset(mix, **WINDOWS, batch_size=8, image_key=False), batch_size=None))
    )
    assert _masks(collated) == _masks(iterated) == ["action_mask", "state_mask"]
    proc = ServerProcess(["--source", f"{a}:1", "--source", f"{b}:1"])
    try:
        with KinoClient(proc.addr) as client:
            batch = client.get_windows(16, **WINDOWS, mode="sequential", offset=0)
            assert _masks(batch) == ["action_mask", "state_mask"]
            assert batch["action_mask"].shape == batch["action"].shape == (16, 3, 2)
            assert batch["action_mask"].all()  # no action is padded: every entry is real
            widths = batch["state_mask"][:, 0, :].sum(axis=1)  # each window's own state width
            want = 3 if differs == "state dtype" else np.where(batch["source"] == 0, 3, 9)
            np.testing.assert_array_equal(widths, np.broadcast_to(want, (16,)))
            one_source = client.get_windows(4, **WINDOWS, mode="sequential", offset=0)  # source 0 alone
            assert set(one_source["source"].tolist()) == {0}
            assert _masks(one_source) == ["action_mask", "state_mask"]  # the same keys in every batch
        remote = KinoRemoteDataset(proc.addr, batch_size=8, seed=1, num_batches=1, windows=WINDOWS)
        got = next(iter(DataLoader(remote, batch_size=None)))
        assert _masks(got) == _masks(collated)
        for key in ("state", "action", "state_mask", "action_mask"):
            assert got[key].shape == collated[key].shape and got[key].dtype == collated[key].dtype, key
    finally:
        assert proc.stop() == 0


def test_windows_of_one_schema_carry_no_masks(server: ServerProcess, main_kdb: Path) -> None:
    from kinodb.remote import KinoClient
    from kinodb.windows import FrameWindows

    with KinoClient(server.addr) as client:
        batch = client.get_windows(4, **WINDOWS, seed=1)
    assert _masks(batch) == []
    assert _masks(FrameWindows(str(main_kdb), **WINDOWS).lowdim_padded(np.arange(4))) == []
