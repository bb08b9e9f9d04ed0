"""Access advice on the map: kinodb's random readers (frame windows, the datasets, the server)
advise the payloads of the files they read random; a database opened directly, and every
index block, keep the kernel's default read-ahead. Reads stay bit-exact either way.

The advice is read back from the kernel: ``/proc/self/smaps`` lists ``rr`` among the flags
of a mapping advised ``MADV_RANDOM``.
"""

from __future__ import annotations

import mmap
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import kinodb
from _factories import smooth_frames
from _legacy_encoder import encode, random_episode, raw_frames
from kinodb.kdb.legacy import LegacyDatabase
from kinodb.kdb.reader import Database
from kinodb.mixture import Mixture
from kinodb.windows import FrameWindows

SMAPS = Path("/proc/self/smaps")
pytestmark = pytest.mark.skipif(
    not SMAPS.exists() or not hasattr(mmap, "MADV_RANDOM"),
    reason="reads a mapping's advice back from /proc/self/smaps (Linux, with MADV_RANDOM)",
)


def vm_flags(addr: int) -> set[str]:
    """The flags of this process's mapping that holds address ``addr``."""
    current = None
    for line in SMAPS.read_text().splitlines():
        head = line.split(maxsplit=1)[0]
        if "-" in head and ":" not in head:
            lo, hi = (int(x, 16) for x in head.split("-"))
            current = lo <= addr < hi
        elif head == "VmFlags:" and current:
            return set(line.split()[1:])
    raise AssertionError(f"no mapping holds address {addr:#x}")


def advice(db: Database) -> tuple[bool, bool]:
    """Whether the first payload page and the index block's first page are advised random."""
    base = int(db._map().__array_interface__["data"][0])
    index = db._commit.index_offset // mmap.PAGESIZE * mmap.PAGESIZE
    return "rr" in vm_flags(base), "rr" in vm_flags(base + index)


def _episode(rng: np.random.Generator, k: int, T: int = 12) -> dict[str, Any]:
    return {
        "actions": rng.normal(size=(T, 4)).astype(np.float32),
        "states": rng.normal(size=(T, 3)).astype(np.float32),
        "images": {"cam": smooth_frames(rng, (T, 24, 32, 3))},
        "task": f"task {k % 2}",
        "embodiment": "franka",
    }


def write(path: Path, episodes: int, *, seed: int = 0, codec: str = "jpeg") -> Path:
    """Episodes whose payloads span several pages (advice covers whole pages only)."""
    rng = np.random.default_rng(seed)
    with kinodb.Writer(path, image_codec=codec) as w:
        for k in range(episodes):
            w.add_episode(**_episode(rng, k))
    return path


@pytest.fixture
def kdb(tmp_path: Path) -> Path:
    return write(tmp_path / "a.kdb", 6)


@pytest.fixture
def other(tmp_path: Path) -> Path:
    return write(tmp_path / "b.kdb", 4, seed=1, codec="raw")


# -- the reader ----------------------------------------------------------------------------------


def test_a_database_opened_directly_keeps_the_default_read_ahead(kdb: Path) -> None:
    with kinodb.open(kdb) as db:
        assert advice(db) == (False, False)
        db.read_episode(2)
        db.gather("actions")
        db.read_frames(1, 0, 3)
        assert advice(db) == (False, False)


def test_advising_covers_the_payloads_and_leaves_the_index_block(kdb: Path) -> None:
    with kinodb.open(kdb) as db:
        want = [db.read_episode(i) for i in range(len(db))]
        assert db._advise_random() is True
        assert advice(db) == (True, False)
        for i, ep in enumerate(want):
            got = db.read_episode(i)
            for name in ("actions", "states"):
                np.testing.assert_array_equal(got[name], ep[name])
            np.testing.assert_array_equal(got["images"]["cam"], ep["images"]["cam"])
        assert db._advise_random() is True  # idempotent


def test_the_advice_is_per_map_not_per_file(kdb: Path) -> None:
    with kinodb.open(kdb) as advised, kinodb.open(kdb) as plain:
        advised._advise_random()
        assert advice(advised) == (True, False)
        assert advice(plain) == (False, False)


def test_a_file_whose_payloads_fit_in_one_page_is_left_alone(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    with kinodb.Writer(tmp_path / "tiny.kdb") as w:
        w.add_episode(actions=rng.normal(size=(2, 2)).astype(np.float32))
    with kinodb.open(tmp_path / "tiny.kdb") as db:
        assert db._commit.index_offset < mmap.PAGESIZE
        assert db._advise_random() is False
        assert advice(db) == (False, False)


def test_a_closed_database_is_not_advised(kdb: Path) -> None:
    db = kinodb.open(kdb)
    db.close()
    assert db._advise_random() is False
    db._will_need(0, 1 << 20)  # nothing to advise, nothing raised


def test_without_madvise_nothing_is_advised_and_reads_are_the_same(
    kdb: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with kinodb.open(kdb) as db:
        want = FrameWindows(db, obs_horizon=2, action_horizon=3, cameras="cam").images(np.arange(10))
    monkeypatch.delattr(mmap, "MADV_RANDOM")
    monkeypatch.delattr(mmap, "MADV_WILLNEED")
    with kinodb.open(kdb) as db:
        assert db._advise_random() is False
        db._will_need(0, db._size)
        fw = FrameWindows(db, obs_horizon=2, action_horizon=3, cameras="cam")
        assert advice(db) == (False, False)
        np.testing.assert_array_equal(fw.images(np.arange(10))["cam"], want["cam"])


def test_a_format_0_1_file_is_advised_over_its_payloads(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    eps = []
    for k in range(4):
        ep = random_episode(rng, 16, 3, 2, task=f"t{k}")
        ep.images = {"cam": raw_frames(smooth_frames(rng, (16, 16, 16, 3)))}
        eps.append(ep)
    path = tmp_path / "old.kdb"
    path.write_bytes(encode(eps))
    with kinodb.open(path) as db:
        assert isinstance(db, LegacyDatabase)
        want = [db.read_episode(i) for i in range(len(db))]
        assert db._advise_random() is True
        assert advice(db) == (True, False)
        for i, ep in enumerate(want):
            got = db.read_episode(i)
            np.testing.assert_array_equal(got["actions"], ep["actions"])
            np.testing.assert_array_equal(got["images"]["cam"], ep["images"]["cam"])


# -- frame windows -------------------------------------------------------------------------------


def test_frame_windows_advise_every_file_they_open(kdb: Path, other: Path) -> None:
    fw = FrameWindows(kdb)
    assert advice(fw.database(0)) == (True, False)
    fw = FrameWindows([kdb, other], cameras="cam")
    assert [advice(fw.database(s)) for s in range(fw.num_sources)] == [(True, False)] * 2


def test_a_database_or_mixture_given_to_windows_is_advised(kdb: Path, other: Path) -> None:
    with kinodb.open(kdb) as db:
        FrameWindows(db)
        assert advice(db) == (True, False)
    with Mixture([(str(kdb), 1.0), (str(other), 1.0)], seed=1) as mix:
        assert [advice(mix.database(i)) for i in range(2)] == [(False, False)] * 2
        FrameWindows(mix, cameras="cam")
        assert [advice(mix.database(i)) for i in range(2)] == [(True, False)] * 2


def windows(path: Path) -> dict[str, np.ndarray]:
    fw = FrameWindows(path, obs_horizon=3, action_horizon=4, cameras="cam")
    idx = np.random.default_rng(7).permutation(len(fw))
    out = fw.lowdim(idx)
    out.update({f"image.{k}": v for k, v in fw.images(idx).items()})
    out.update({f"sized.{k}": v for k, v in fw.images(idx, size=(12, 16)).items()})
    return out


@pytest.mark.parametrize("name", ["kdb", "other"])
def test_windows_read_the_same_bits_advised_or_not(
    name: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    path: Path = request.getfixturevalue(name)
    advised = windows(path)
    with monkeypatch.context() as m:
        m.setattr(Database, "_advise_random", lambda self: False)
        plain = windows(path)
        assert advice(FrameWindows(path).database(0)) == (False, False)  # the patch held
    assert advised.keys() == plain.keys()
    for key, value in plain.items():
        np.testing.assert_array_equal(advised[key], value, err_msg=key)
    with kinodb.open(path) as db:  # and both are what the file holds
        ep, t = advised["episode_index"], advised["frame_index"]
        want = np.stack([db.read_array(int(e), "states")[int(f)] for e, f in zip(ep, t, strict=True)])
        np.testing.assert_array_equal(advised["state"][:, -1], want)


# -- the datasets ----------------------------------------------------------------------------------


def test_the_datasets_advise_their_maps_in_every_process(kdb: Path, other: Path) -> None:
    pytest.importorskip("torch", reason="kinodb.torch needs torch (the torch extra)")
    from kinodb.torch import KinoFrameDataset, KinoMapDataset

    frames = KinoFrameDataset([kdb, other], obs_horizon=2, action_horizon=3, image_key="cam")
    episodes = KinoMapDataset(kdb, image_key="cam")
    assert [advice(frames.windows.database(s)) for s in range(2)] == [(True, False)] * 2
    assert advice(episodes._open()[0][0].db) == (True, False)
    # A DataLoader worker gets the dataset pickled and re-opens the files itself.
    frames2, episodes2 = pickle.loads(pickle.dumps(frames)), pickle.loads(pickle.dumps(episodes))
    assert [advice(frames2.windows.database(s)) for s in range(2)] == [(True, False)] * 2
    assert advice(episodes2._open()[0][0].db) == (True, False)
    idx = list(range(0, len(frames), 5))
    a, b = frames.__getitems__(idx).stacked, frames2.__getitems__(idx).stacked
    for key in ("state", "action", "image"):
        assert (a[key] == b[key]).all(), key
    with kinodb.open(kdb) as db:
        assert (episodes[3]["image"] == episodes2[3]["image"]).all()
        np.testing.assert_array_equal(episodes2[3]["action"].numpy(), db.read_array(3, "actions"))


# -- the server ------------------------------------------------------------------------------------


@pytest.fixture
def serve() -> Any:
    pytest.importorskip("grpc", reason="kinodb.serve needs grpcio (the serve extra)")
    from kinodb.serve import KinoClient, KinoServer

    return KinoServer, KinoClient


def test_the_server_advises_the_maps_it_serves(kdb: Path, other: Path, serve: Any) -> None:
    KinoServer = serve[0]
    with KinoServer(kdb, port=0, bind="127.0.0.1") as server:
        assert [advice(db) for db in server.backend._dbs] == [(True, False)]
    with (
        Mixture([(str(kdb), 1.0), (str(other), 1.0)], seed=1) as mix,
        KinoServer(mix, port=0, bind="127.0.0.1") as server,
    ):
        assert [advice(db) for db in server.backend._dbs] == [(True, False)] * 2


def test_served_episodes_prefetch_their_frames_and_read_the_same_bits(
    kdb: Path, serve: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    KinoServer, KinoClient = serve
    asked: list[tuple[int, int]] = []
    will_need = Database._will_need

    def spy(self: Database, start: int, stop: int) -> None:
        asked.append((start, stop))
        will_need(self, start, stop)

    monkeypatch.setattr(Database, "_will_need", spy)
    with kinodb.open(kdb) as db, KinoServer(kdb, port=0, bind="127.0.0.1") as server:
        with KinoClient(server.address, timeout=30) as client:
            for i in (4, 0, 2):
                got = client.get_episode(i, include_images=True)
                want = db.read_episode(i)
                np.testing.assert_array_equal(got["actions"], want["actions"])
                np.testing.assert_array_equal(got["states"], want["states"])
                np.testing.assert_array_equal(got["images"]["cam"], want["images"]["cam"])
                stored = client.get_episode(i, include_images=True, image_encoding="stored")
                cam = db._episode_cameras(i)["cam"]
                assert stored["images"]["cam"] == [bytes(db._frame_bytes(cam, t)) for t in range(12)]
                span = (cam.data_offset, cam.data_offset + int(cam.frame_offsets[-1]))
                assert asked == [span, span]  # the camera's frames, once per reply
                asked.clear()
            client.get_episode(1)  # no images: nothing to prefetch
            assert asked == []
            got = client.get_windows(8, obs_horizon=2, action_horizon=3, seed=3, include_images=True)
        fw = FrameWindows(kdb, obs_horizon=2, action_horizon=3, cameras="cam")
        want = fw.lowdim(got["index"])
        np.testing.assert_array_equal(got["state"], want["state"])
        np.testing.assert_array_equal(got["images"]["cam"], fw.images(got["index"])["cam"])
