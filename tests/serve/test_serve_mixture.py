"""A real server over a weighted mixture: global indices, weighted batches, queries, windows."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import kinodb
from _server_proc import ServerProcess
from kinodb.errors import EpisodeNotFoundError
from kinodb.remote import InvalidRequestError, KinoClient
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


def test_windows_of_robots_with_different_widths_come_padded_with_masks(tmp_path: Path) -> None:
    from _factories import write_episodes
    from kinodb.remote import KinoRemoteDataset

    narrow, wide = tmp_path / "narrow.kdb", tmp_path / "wide.kdb"
    write_episodes(narrow, [5, 6], action_dim=2, state_dim=3)
    write_episodes(wide, [7], action_dim=14, state_dim=9, seed=1)
    mix = kinodb.Mixture([(str(narrow), 1.0), (str(wide), 1.0)])
    local = FrameWindows(mix, obs_horizon=2, action_horizon=3)
    proc = ServerProcess(["--source", f"{narrow}:1", "--source", f"{wide}:1"])
    try:
        with KinoClient(proc.addr) as client:
            batch = client.get_windows(18, obs_horizon=2, action_horizon=3, mode="sequential", offset=0)
            assert batch["state"].shape == (18, 2, 9) and batch["action"].shape == (18, 3, 14)
            for n in range(18):  # each window equals the source's own, zero-padded, mask on its width
                source = int(batch["source"][n])
                mine = FrameWindows(str((narrow, wide)[source]), obs_horizon=2, action_horizon=3)
                own = mine.lowdim([int(batch["index"][n]) - (0 if source == 0 else 11)])
                for key in ("state", "action"):
                    width = own[key].shape[-1]
                    np.testing.assert_array_equal(batch[key][n, :, :width], own[key][0])
                    assert not batch[key][n, :, width:].any()
                    assert (
                        batch[f"{key}_mask"][n, :, :width].all()
                        and not batch[f"{key}_mask"][n, :, width:].any()
                    )
            narrow_only = client.get_windows(4, obs_horizon=2, action_horizon=3, mode="sequential", offset=0)
            assert narrow_only["action"].shape == (4, 3, 14)  # one shape for every batch
        np.testing.assert_array_equal(local.lowdim_padded(np.arange(18))["action"], batch["action"])
        ds = KinoRemoteDataset(proc.addr, batch_size=8, windows={"obs_horizon": 2, "action_horizon": 3},
                               mode="weighted", seed=3, num_batches=2)  # fmt: skip
        shapes = [(tuple(b["state"].shape), tuple(b["action_mask"].shape)) for b in ds]
        assert shapes == [((8, 2, 9), (8, 3, 14))] * 2
    finally:
        assert proc.stop() == 0


def test_window_cameras_one_served_source_lacks_are_refused_with_the_ones_all_have(tmp_path: Path) -> None:
    from _factories import write_episodes

    one, two = tmp_path / "one.kdb", tmp_path / "two.kdb"
    write_episodes(one, [4], cameras={"front": (8, 8, 3)})
    write_episodes(two, [5], cameras={"front": (8, 8, 3), "wrist": (8, 8, 3)})
    proc = ServerProcess(["--source", f"{one}:1", "--source", f"{two}:1"])
    try:
        with KinoClient(proc.addr) as client:
            with pytest.raises(
                InvalidRequestError, match=r"no camera 'wrist'.*every served source has \(front\)"
            ):
                client.get_windows(4, obs_horizon=1, action_horizon=1, include_images=True, cameras=["wrist"])
            batch = client.get_windows(
                4, obs_horizon=1, action_horizon=1, include_images=True, cameras=["front"]
            )
            assert batch["images"]["front"].shape == (4, 1, 3, 8, 8)
    finally:
        assert proc.stop() == 0


def test_windows_of_robots_whose_cameras_differ_in_name_and_size(tmp_path: Path) -> None:
    from torch.utils.data import DataLoader

    from _factories import write_episodes
    from kinodb.remote import KinoRemoteDataset
    from kinodb.torch import KinoFrameDataset, pad_collate

    bridge, g1 = tmp_path / "bridge.kdb", tmp_path / "g1.kdb"
    write_episodes(bridge, [4, 5], action_dim=7, cameras={"image_0": (12, 16, 3)}, codec="png")
    write_episodes(g1, [6], action_dim=26, cameras={"cam_high": (24, 32, 3)}, codec="raw", seed=1)
    front = {"front": ["image_0", "cam_high"]}
    proc = ServerProcess(["--source", f"{bridge}:1", "--source", f"{g1}:1"])
    try:
        with KinoClient(proc.addr) as client:
            batch = client.get_windows(15, obs_horizon=2, action_horizon=3, mode="sequential", offset=0,
                                       include_images=True, cameras=front, image_size=(12, 16))  # fmt: skip
            local = KinoFrameDataset(kinodb.Mixture({str(bridge): 1, str(g1): 1}), obs_horizon=2,
                                     action_horizon=3, image_key=front, image_size=(12, 16), normalize=False)  # fmt: skip
            want = next(iter(DataLoader(local, batch_size=15, collate_fn=pad_collate)))
            np.testing.assert_array_equal(batch["images"]["front"], want["images"]["front"].numpy())
            np.testing.assert_array_equal(batch["action"], want["action"].numpy())
            with pytest.raises(
                ValueError, match=r"stored frames of camera 'front' differ between the served"
            ):
                client.get_windows(4, include_images=True, image_encoding="stored", cameras=front)
            with pytest.raises(ValueError, match=r"a camera mapping applies to windows"):
                client.get_batch(2, include_images=True, cameras=front)
        ds = KinoRemoteDataset(proc.addr, batch_size=8, windows={"obs_horizon": 2, "action_horizon": 3},
                               include_images=True, image_key=front, image_size=(12, 16), seed=5, num_batches=2)  # fmt: skip
        for b in DataLoader(ds, batch_size=None):
            assert b["images"]["front"].shape == (8, 2, 3, 12, 16) and b["action"].shape == (8, 3, 26)
    finally:
        assert proc.stop() == 0


def test_a_camera_mapping_to_one_name_means_that_camera_in_every_source(client: KinoClient) -> None:
    kw = dict(obs_horizon=1, action_horizon=1, mode="sequential", offset=0, include_images=True)
    mapped = client.get_windows(6, cameras={"out": "cam"}, **kw)
    plain = client.get_windows(6, cameras=["cam"], **kw)
    np.testing.assert_array_equal(mapped["images"]["out"], plain["images"]["cam"])
    with pytest.raises(ValueError, match="a camera mapping applies to windows"):
        client.get_batch(2, include_images=True, cameras={"out": "cam"})
    with pytest.raises(InvalidRequestError, match=r"no camera 'nope'"):
        client.get_windows(2, cameras={"out": ["cam", "nope"]}, **kw)


def test_remote_episodes_of_robots_with_other_cameras_and_image_key_alone(tmp_path: Path) -> None:
    from torch.utils.data import DataLoader

    from _factories import write_episodes
    from kinodb.remote import KinoRemoteDataset

    a, b = tmp_path / "a.kdb", tmp_path / "b.kdb"
    write_episodes(a, [3, 4], cameras={"image_0": (8, 8, 3)})
    write_episodes(b, [5], cameras={"cam_high": (6, 10, 3)}, seed=1)
    proc = ServerProcess(["--source", f"{a}:1", "--source", f"{b}:1"])
    try:
        episodes = KinoRemoteDataset(
            proc.addr, batch_size=3, include_images=True, mode="sequential", num_batches=1
        )
        items = list(DataLoader(episodes, batch_size=None))
        assert [tuple(x["image"].shape[1:]) for x in items] == [(3, 8, 8), (3, 8, 8), (3, 6, 10)]
        windows = KinoRemoteDataset(proc.addr, batch_size=4, windows={"obs_horizon": 1}, image_key="image_0",
                                    mode="sequential", num_batches=1)  # fmt: skip
        with pytest.raises(
            kinodb.KinodbError, match=r"no camera 'image_0'"
        ):  # image_key alone asks for images
            list(DataLoader(windows, batch_size=None))
        with pytest.raises(ValueError, match="include_images=False"):
            KinoRemoteDataset(proc.addr, include_images=False, image_key="image_0")
        with pytest.raises(ValueError, match="applies to windows"):
            KinoRemoteDataset(proc.addr, image_key={"front": ["image_0", "cam_high"]})
    finally:
        assert proc.stop() == 0


def test_windows_normalised_on_the_server_with_each_sources_statistics(tmp_path: Path) -> None:
    from torch.utils.data import DataLoader

    from _factories import write_episodes
    from kinodb.remote import KinoRemoteDataset
    from kinodb.stats import compute_stats, write_stats
    from kinodb.torch import KinoFrameDataset, pad_collate

    a, b = tmp_path / "a.kdb", tmp_path / "b.kdb"
    write_episodes(a, [5, 6], action_dim=2, state_dim=3)
    write_episodes(b, [7], action_dim=4, state_dim=5, seed=1)
    proc = ServerProcess(["--source", f"{a}:1", "--source", f"{b}:1"])
    try:
        stats_needed = pytest.raises(
            kinodb.KinodbError, match=r"no statistics stored in .*a\.kdb; run: kino stats.*restart kino-serve"
        )
        with KinoClient(proc.addr) as client, stats_needed:
            client.get_windows(4, obs_horizon=2, action_horizon=3, normalize="mean_std")
        for path in (a, b):
            write_stats(path, compute_stats(path))
    finally:
        assert proc.stop() == 0
    proc = ServerProcess(["--source", f"{a}:1", "--source", f"{b}:1"])  # statistics are read when served
    try:
        local = KinoFrameDataset(kinodb.Mixture({str(a): 1, str(b): 1}), obs_horizon=2, action_horizon=3,
                                 normalize="mean_std")  # fmt: skip
        want = next(iter(DataLoader(local, batch_size=18, collate_fn=pad_collate)))
        with KinoClient(proc.addr) as client:
            assert "window_normalize" in client.server_info()["features"]
            got = client.get_windows(18, obs_horizon=2, action_horizon=3, mode="sequential", offset=0,
                                     normalize="mean_std")  # fmt: skip
            zero = client.get_windows(18, obs_horizon=2, action_horizon=3, mode="sequential", offset=0,
                                      normalize="mean_std", pad="zero")  # fmt: skip
            assert zero["action_is_pad"].any() and not zero["action"][zero["action_is_pad"]].any()
            client._features = frozenset()  # as an older server answers: no such feature
            with pytest.raises(
                kinodb.KinodbError, match=r"predates normalize='mean_std' and would ignore it"
            ):
                client.get_windows(4, normalize="mean_std")
            raw = client.get_windows(18, obs_horizon=2, action_horizon=3, mode="sequential", offset=0)
        for key in ("state", "action"):
            np.testing.assert_array_equal(got[key], want[key].numpy())
            np.testing.assert_array_equal(got[f"{key}_mask"], want[f"{key}_mask"].numpy())
        assert not np.array_equal(got["action"], raw["action"])
        ds = KinoRemoteDataset(proc.addr, batch_size=6, windows={"obs_horizon": 2, "normalize": "min_max"},
                               seed=2, num_batches=1)  # fmt: skip
        (batch,) = list(DataLoader(ds, batch_size=None))
        assert float(batch["state"][batch["state_mask"]].abs().max()) <= 1.0 + 1e-6
    finally:
        assert proc.stop() == 0


def test_a_query_field_only_some_served_sources_hold_is_null_in_the_others(tmp_path: Path) -> None:
    from _factories import write_field_in_one_file

    a, b = tmp_path / "a.kdb", tmp_path / "b.kdb"
    write_field_in_one_file(a, b)
    proc = ServerProcess(["--source", f"{a}:1", "--source", f"{b}:1"])
    try:
        with KinoClient(proc.addr) as client:
            assert client.query("has_language = true").tolist() == [0, 2]
            assert client.query("NOT has_language = true").tolist() == [1, 3, 4]
    finally:
        assert proc.stop() == 0


def test_windows_carry_each_frames_task_where_it_changes(tmp_path: Path) -> None:
    # kinodb's per-frame task convention: extra field `tasks`, extra array `task_index`.
    path = tmp_path / "tasks.kdb"
    with kinodb.Writer(path) as w:
        w.add_episode(actions=np.zeros((5, 2), np.float32), task="wipe",
                      extra={"tasks": ["wipe", "put down"]},
                      extra_arrays={"task_index": np.array([0, 0, 1, 1, 0], np.int64)})  # fmt: skip
        w.add_episode(actions=np.zeros((3, 2), np.float32), task="stack")
    local = FrameWindows(str(path), obs_horizon=1, action_horizon=1)
    assert local.tasks(np.arange(8)) == [
        "wipe",
        "wipe",
        "put down",
        "put down",
        "wipe",
        "stack",
        "stack",
        "stack",
    ]
    proc = ServerProcess(["--source", f"{path}:1"])
    try:
        with KinoClient(proc.addr) as client:
            got = client.get_windows(8, obs_horizon=1, action_horizon=1, mode="sequential", offset=0)
            assert got["task"] == local.tasks(got["index"])
    finally:
        assert proc.stop() == 0


def test_float32_and_float64_sources_serve_together(tmp_path: Path) -> None:
    from _factories import write_episodes
    from kinodb.stats import compute_stats, write_stats

    f32, f64 = tmp_path / "f32.kdb", tmp_path / "f64.kdb"
    write_episodes(f32, [5, 6], action_dim=2, state_dim=3)
    rng = np.random.default_rng(4)
    with kinodb.Writer(f64) as w:  # float64 states, exact from an HDF5 source
        w.add_episode(actions=rng.normal(size=(7, 2)).astype(np.float32), states=rng.normal(size=(7, 5)))
    for path in (f32, f64):
        write_stats(path, compute_stats(path))
    mix = kinodb.Mixture([(str(f32), 1.0), (str(f64), 1.0)])
    local = FrameWindows(mix, obs_horizon=2, action_horizon=3)
    proc = ServerProcess(["--source", f"{f32}:1", "--source", f"{f64}:1"])
    try:
        with KinoClient(proc.addr) as client:
            raw = client.get_windows(18, obs_horizon=2, action_horizon=3, mode="sequential", offset=0)
            assert raw["state"].dtype == np.float64 and raw["state"].shape == (18, 2, 5)
            np.testing.assert_array_equal(raw["state"], local.lowdim_padded(np.arange(18))["state"])
            own = FrameWindows(str(f64), obs_horizon=2, action_horizon=3).lowdim(np.arange(7))["state"]
            np.testing.assert_array_equal(raw["state"][11:], own)  # float64 values exact
            norm = client.get_windows(18, obs_horizon=2, action_horizon=3, mode="sequential", offset=0,
                                      normalize="mean_std")  # fmt: skip
            assert norm["state"].dtype == np.float32
    finally:
        assert proc.stop() == 0
