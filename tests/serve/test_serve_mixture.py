"""A real server over a weighted mixture: global indices, weighted batches, queries, windows."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from _server_proc import ServerProcess

import kinodb
from kinodb.errors import EpisodeNotFoundError
from kinodb.remote import KinoClient
from kinodb.windows import FrameWindows


@pytest.fixture(scope="module")
def client(mixture_server: ServerProcess) -> Iterator[KinoClient]:
    with KinoClient(mixture_server.addr) as c:
        yield c


@pytest.fixture(scope="module")
def mix(main_kdb: Path, other_kdb: Path) -> Iterator[kinodb.Mixture]:
    with kinodb.Mixture([(str(main_kdb), 3.0), (str(other_kdb), 1.0)]) as m:
        yield m


def test_info_and_global_indices(client: KinoClient, mix: kinodb.Mixture) -> None:
    info = client.server_info()
    assert info["num_sources"] == 2 and info["num_episodes"] == len(mix) == 26
    assert info["num_frames"] == mix.num_frames()
    assert info["shares"] == pytest.approx([0.75, 0.25])
    assert info["source_episodes"] == [20, 6]
    for index in (0, 19, 20, 25):
        source, position = mix.locate(index)
        ep = client.get_episode(index)
        assert (ep["source"], ep["position"], ep["index"]) == (source, position, index)
        local = mix.database(source).read_episode_actions_only(position)
        assert ep["meta"] == local["meta"] == client.get_meta(index)
        np.testing.assert_array_equal(ep["actions"], local["actions"])
    with pytest.raises(EpisodeNotFoundError, match="the server has 26 episodes"):
        client.get_meta(26)


def test_weighted_batches_follow_the_weights(client: KinoClient) -> None:
    batch = client.get_batch(1000, mode="weighted", seed=4)
    sources = np.bincount([ep["source"] for ep in batch], minlength=2)
    assert 0.70 < sources[0] / 1000 < 0.80  # share 0.75; seeded, so the same every run
    uniform = client.get_batch(1000, mode="random", seed=4)
    assert 0.18 < np.mean([ep["source"] == 1 for ep in uniform]) < 0.28  # 6 of 26 episodes
    sequential = client.get_batch(4, mode="sequential", offset=18)
    assert [(ep["source"], ep["position"]) for ep in sequential] == [(0, 18), (0, 19), (1, 0), (1, 1)]


def test_query_returns_global_indices(client: KinoClient, mix: kinodb.Mixture) -> None:
    kql = "success = true AND num_frames >= 10"
    want = [
        i for i in range(len(mix)) if (m := client.get_meta(i))["success"] is True and m["num_frames"] >= 10
    ]
    np.testing.assert_array_equal(client.query(kql), want)
    assert any(i >= 20 for i in want) and any(i < 20 for i in want)


def test_weighted_windows_equal_frame_windows(client: KinoClient, mix: kinodb.Mixture) -> None:
    fw = FrameWindows(mix, obs_horizon=3, action_horizon=2)
    got = client.get_windows(512, obs_horizon=3, action_horizon=2, mode="weighted", seed=9)
    want = fw.lowdim(got["index"])
    for key, value in want.items():
        np.testing.assert_array_equal(got[key], value, err_msg=key)
    assert 0.68 < np.mean(got["source"] == 0) < 0.82
