"""A served mixture whose camera differs in size between its sources: decoded window frames
at their stored size are refused on the first call, before any batch is drawn."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import kinodb
from _factories import numbered_episode
from _server_proc import ServerProcess
from kinodb.remote import InvalidRequestError, KinoClient

_SIZES = r"\(16x16 in mixture source 0 \(.*main\.kdb\), 24x20 in mixture source 1 \(.*large\.kdb\)\)"


@pytest.fixture(scope="module")
def large_kdb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four episodes whose camera ``cam`` is 24x20 (``main.kdb``'s is 16x16), embodiment ``aloha``."""
    path = tmp_path_factory.mktemp("sizes") / "large.kdb"
    with kinodb.Writer(path, image_codec="raw") as w:
        for k in range(4):
            ep = numbered_episode(200 + k)
            T = len(ep["actions"])
            ep["images"] = {"cam": np.random.default_rng(k).integers(0, 256, (T, 24, 20, 3), dtype=np.uint8)}
            ep["embodiment"] = "aloha"
            w.add_episode(**ep)
    return path


@pytest.fixture(scope="module")
def client(main_kdb: Path, large_kdb: Path) -> Iterator[KinoClient]:
    """A server over the mixture ``main.kdb`` (mostly) and ``large.kdb``."""
    proc = ServerProcess(["--source", f"{main_kdb}:50", "--source", f"{large_kdb}:1"])
    with KinoClient(proc.addr) as c:
        yield c
    assert proc.stop() == 0


@pytest.mark.parametrize("cameras", [["cam"], {"front": ["cam", "cam"]}])
def test_decoded_frames_of_several_sizes_are_refused_on_the_first_call(
    client: KinoClient, cameras: Any
) -> None:
    # Sequential from 0: the first batches hold main.kdb's windows only, which would have
    # gone through before the first batch that reaches large.kdb failed.
    name = "cam" if isinstance(cameras, list) else "front"
    with pytest.raises(
        InvalidRequestError, match=rf"camera '{name}' differs in size between the served sources {_SIZES}"
    ):
        client.get_windows(4, mode="sequential", include_images=True, cameras=cameras)
    with pytest.raises(
        InvalidRequestError, match=r"pass image_size=\(H, W\) to resize its frames to one size"
    ):
        next(
            client.stream_windows(4, num_batches=50, mode="sequential", include_images=True, cameras=cameras)
        )


def test_a_size_or_a_filter_that_leaves_one_size_is_served(client: KinoClient) -> None:
    resized = client.get_windows(
        64, mode="random", seed=3, include_images=True, cameras=["cam"], image_size=(12, 10)
    )
    assert set(resized["source"].tolist()) == {0, 1} and resized["images"]["cam"].shape == (64, 1, 3, 12, 10)
    one_size = client.get_windows(
        8, mode="random", seed=3, include_images=True, cameras=["cam"], kql_filter='embodiment = "aloha"'
    )
    assert set(one_size["source"].tolist()) == {1} and one_size["images"]["cam"].shape == (8, 1, 3, 24, 20)
    assert client.get_windows(8, mode="random", seed=3)["state"].shape[0] == 8  # no images: nothing to refuse
