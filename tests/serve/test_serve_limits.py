"""Message limits and cameras sized from every served episode, not the first, and requests
refused from the index before anything is decoded (real servers on 127.0.0.1)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import kinodb
from _legacy_encoder import encode, encoded_frames, random_episode
from _server_proc import ServerProcess
from kinodb.remote import BatchTooLargeError, InvalidRequestError, KinoClient
from kinodb.serve import KinoServer
from kinodb.serve._backend import Backend
from kinodb.windows import FrameWindows

BIG = (60, 320, 320, 3)  # 18.4 MB decoded: over the 16 MiB a server sized from a small first episode allows


def _frames(shape: tuple[int, ...], seed: int) -> np.ndarray:
    """Smooth frames (small as JPEG) with a little noise, different per frame."""
    T, H, W, C = shape
    rng = np.random.default_rng(seed)
    ramp = (np.arange(H)[:, None, None] + np.arange(W)[None, :, None] + np.arange(C)) % 256
    return ((ramp[None] + 3 * np.arange(T)[:, None, None, None]) % 256 + rng.integers(0, 3, shape)).astype(
        np.uint8
    )


def _episode(T: int, images: dict[str, tuple[int, ...]], k: int) -> dict[str, Any]:
    rng = np.random.default_rng(k)
    return dict(
        actions=rng.standard_normal((T, 7)).astype(np.float32),
        states=rng.standard_normal((T, 4)).astype(np.float32),
        images={cam: _frames(shape, 10 * k + j) for j, (cam, shape) in enumerate(images.items())},
        embodiment="franka", task=f"task {k}", success=bool(k % 2),
    )  # fmt: skip


@pytest.fixture(scope="module")
def uneven_kdb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A camera-less first episode, a small ``front`` one, then a large ``front`` plus ``side``."""
    path = tmp_path_factory.mktemp("limits") / "uneven.kdb"
    with kinodb.Writer(path, image_codec="jpeg") as w:
        w.add_episode(**_episode(5, {}, 0))
        w.add_episode(**_episode(3, {"front": (3, 8, 8, 3)}, 1))
        w.add_episode(**_episode(BIG[0], {"front": BIG, "side": (BIG[0], 8, 8, 3)}, 2))
    return path


@pytest.fixture(scope="module")
def uneven_server(uneven_kdb: Path) -> Iterator[ServerProcess]:
    proc = ServerProcess([str(uneven_kdb), "--max-batch", "1"])
    yield proc
    assert proc.stop() == 0


def test_the_limit_covers_the_largest_episode(uneven_server: ServerProcess, uneven_kdb: Path) -> None:
    with kinodb.open(uneven_kdb) as db, KinoClient(uneven_server.addr, timeout=60) as client:
        info = client.server_info()
        assert info["max_message_bytes"] > int(np.prod(BIG)) > 16 << 20
        got = client.get_episode(2, include_images=True)
        local = db.read_episode(2)
        for cam, frames in local["images"].items():
            np.testing.assert_array_equal(got["images"][cam], frames)
        batch = client.get_batch(1, mode="sequential", offset=2, include_images=True)
        np.testing.assert_array_equal(batch[0]["images"]["front"], local["images"]["front"])


def test_cameras_are_those_of_every_served_episode(uneven_server: ServerProcess, uneven_kdb: Path) -> None:
    with KinoClient(uneven_server.addr, timeout=60) as client:
        assert client.server_info()["cameras"] == ["front", "side"]
        # the first camera by default, as FrameWindows gives it for the episodes the filter keeps
        got = client.get_windows(
            1, include_images=True, kql_filter="num_frames > 5", seed=1, image_size=(16, 16)
        )
        fw = FrameWindows(uneven_kdb, kql_filter="num_frames > 5", cameras=["front"])
        np.testing.assert_array_equal(got["images"]["front"], fw.images(got["index"], size=(16, 16))["front"])
        with pytest.raises(
            InvalidRequestError, match=r"no camera 'front' \(episode 0\); leave it out with kql_filter="
        ) as err:
            client.get_windows(1, include_images=True, seed=1)  # episode 0 has no camera
        assert "ask for windows without images" in str(err.value) and "image_key" not in str(err.value)
        advised = str(err.value).split('kql_filter="', 1)[1].split('"', 1)[0]
        got = client.get_windows(1, include_images=True, seed=1, kql_filter=advised)  # the advice works
        assert "front" in got["images"]


def test_mixture_cameras_and_limit(uneven_kdb: Path, main_kdb: Path) -> None:
    with kinodb.Mixture([(str(main_kdb), 1.0), (str(uneven_kdb), 1.0, "num_frames < 10")]) as mix:
        backend = Backend(mix, seed=1, max_batch=1)
        # the large episode is left out by the filter: neither its size nor its side camera counts
        assert backend.cameras == ["cam", "wrist", "front"]
        assert backend.max_message == 16 << 20
        assert backend._common_cameras() == []


def test_an_episode_over_the_limit_is_refused_before_decoding(uneven_kdb: Path) -> None:
    with kinodb.open(uneven_kdb) as db:
        stored = sum(len(db.read_image_bytes(2, cam, t)) for cam in ("front", "side") for t in range(BIG[0]))
        server = KinoServer(db, port=0)
        limit = 2 * stored + (1 << 20)
        assert limit < np.prod(BIG)
        server.backend.max_message = limit  # as a server sized for smaller episodes would have it
        decoded: list[Any] = []
        read_frames = db.read_frames
        db.read_frames = lambda *a, **kw: decoded.append(a) or read_frames(*a, **kw)  # type: ignore[method-assign]
        with server, KinoClient(server.address, timeout=60) as client:
            with pytest.raises(BatchTooLargeError, match=r"this episode would be about 17\.6 MiB"):
                client.get_episode(2, include_images=True)
            with pytest.raises(BatchTooLargeError, match=r"a batch of 1 episodes would be about 17\.6 MiB"):
                client.get_batch(1, mode="sequential", offset=2, include_images=True)
            assert decoded == []
            # stored frames are sized from their offset tables, and fit
            got = client.get_episode(2, include_images=True, image_encoding="stored")
            assert got["images"]["front"] == [db.read_image_bytes(2, "front", t) for t in range(BIG[0])]
            batch = client.get_batch(
                1, mode="sequential", offset=2, include_images=True, image_encoding="stored"
            )
            assert batch[0]["images"]["side"] == [db.read_image_bytes(2, "side", t) for t in range(BIG[0])]
            small = client.get_episode(2, include_images=True, cameras=["side"])  # one small camera fits
            np.testing.assert_array_equal(small["images"]["side"], db.read_episode(2)["images"]["side"])


def test_a_format_0_1_file_is_sized_episode_by_episode(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    episodes = [random_episode(rng, 4, 3, 2), random_episode(rng, 6, 3, 2), random_episode(rng, 40, 3, 2)]
    episodes[1].images = {"front": encoded_frames(_frames((6, 8, 8, 3), 1))}
    episodes[2].images = {"front": encoded_frames(_frames((40, 400, 400, 3), 2)),
                          "side": encoded_frames(_frames((40, 4, 4, 3), 3))}  # fmt: skip
    path = tmp_path / "old.kdb"
    path.write_bytes(encode(episodes))
    with kinodb.open(path) as db:
        assert db.version() == "0.1"
        backend = Backend(db, seed=1, max_batch=1)
        assert backend.cameras == ["front", "side"]
        decoded = 40 * (400 * 400 * 3 + 4 * 4 * 3)
        assert backend.max_message >= decoded > 16 << 20
        assert backend._estimate(np.array([2]), None) == 40 * (4 * (3 + 2) + 4 + 1)
    proc = ServerProcess([str(path), "--max-batch", "1"])
    try:
        with kinodb.open(path) as db, KinoClient(proc.addr, timeout=60) as client:
            got = client.get_episode(2, include_images=True)
            np.testing.assert_array_equal(got["images"]["front"], db.read_episode(2)["images"]["front"])
    finally:
        assert proc.stop() == 0


@pytest.fixture(scope="module")
def long_window_kdb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One episode of ten smooth 128x128 JPEG frames: a window of 400 frames (edge-padded)
    is 19.7 MB decoded, far less stored."""
    path = tmp_path_factory.mktemp("limits") / "long-windows.kdb"
    with kinodb.Writer(path, image_codec="jpeg") as w:
        w.add_episode(**_episode(10, {"front": (10, 128, 128, 3)}, 0))
    return path


def test_stored_window_frames_are_sized_by_their_stored_bytes(long_window_kdb: Path) -> None:
    proc = ServerProcess([str(long_window_kdb), "--max-batch", "1"])  # a 16 MiB message limit
    try:
        limit = re.search(r"max message (\S+ MiB)\]", proc.stdout[-1])
        assert limit is not None and limit.group(1) == "16.0 MiB", proc.stdout[-1]
        fw = FrameWindows(long_window_kdb, obs_horizon=400, cameras=["front"])
        with KinoClient(proc.addr, timeout=60) as client:
            got = client.get_windows(1, obs_horizon=400, include_images=True, image_encoding="stored", seed=1)
            assert got["images"]["front"] == fw.encoded(got["index"])[0]["front"]
            assert len(got["images"]["front"]) == 400
            with pytest.raises(BatchTooLargeError) as err:  # decoded, the same window is over the limit
                client.get_windows(1, obs_horizon=400, include_images=True, seed=1)
        # the startup line and the error name the limit alike
        assert f"over this server's message limit of {limit.group(1)}" in str(err.value)
    finally:
        assert proc.stop() == 0
