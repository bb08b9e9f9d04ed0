"""kinodb.torch: map, frame-window and iterable datasets through real DataLoaders."""

from __future__ import annotations

import pickle
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

import kinodb
from _factories import write_episodes
from kinodb.torch import (
    KinoDataset,
    KinoFrameDataset,
    KinoIterDataset,
    KinoMapDataset,
    SchemaBatchSampler,
    from_mixture,
    pad_collate,
)


def _write(path: Path, lengths: list[int], **options: Any) -> list[dict]:
    options.setdefault("codec", "png")
    return write_episodes(path, lengths, **options)


@pytest.fixture
def lowdim(tmp_path: Path) -> tuple[Path, list[dict]]:
    path = tmp_path / "low.kdb"
    return path, _write(path, [5, 9, 3, 7, 6, 10])


def _key(batch: dict) -> list[tuple[int, int]]:
    return list(zip(batch["episode_index"].tolist(), batch["frame_index"].tolist(), strict=True))


def test_frame_items_and_batches_agree(lowdim) -> None:
    path, eps = lowdim
    ds = KinoFrameDataset(path, obs_horizon=2, action_horizon=4)
    item = ds[5]  # episode 1, frame 0
    assert item["episode_index"] == 1 and item["frame_index"] == 0 and item["task"] == "task 1"
    torch.testing.assert_close(item["state"], torch.from_numpy(eps[1]["states"][[0, 0]]))
    assert item["state_is_pad"].tolist() == [True, False]
    batch = next(iter(DataLoader(ds, batch_size=8)))
    assert batch["state"].shape == (8, 2, 3) and batch["action"].shape == (8, 4, 2)
    assert batch["task"][:6] == ["task 0"] * 5 + ["task 1"]
    torch.testing.assert_close(batch["action"][5], item["action"])
    assert batch["action_is_pad"].dtype == torch.bool


def test_items_take_integer_tensors_as_indices(lowdim) -> None:
    """``sampler=torch.randperm(n)`` with ``batch_size=None`` hands out 0-d tensors."""
    path, eps = lowdim
    frames = KinoFrameDataset(path, obs_horizon=2, action_horizon=4)
    assert frames[torch.tensor(5)]["frame_index"] == 0 and frames[torch.tensor(5)]["episode_index"] == 1
    assert frames[torch.tensor(-1)]["frame_index"] == frames[len(frames) - 1]["frame_index"] == 9
    episodes = KinoMapDataset(path)
    torch.testing.assert_close(episodes[torch.tensor(2)]["action"], torch.from_numpy(eps[2]["actions"]))
    torch.testing.assert_close(episodes[np.int32(-1)]["action"], torch.from_numpy(eps[5]["actions"]))
    order = torch.randperm(len(episodes), generator=torch.Generator().manual_seed(0))
    got = [int(item["episode_id"]) for item in DataLoader(episodes, batch_size=None, sampler=order)]
    assert got == order.tolist()
    for bad in (torch.tensor(1.0), np.float64(1)):
        with pytest.raises(TypeError, match="index must be an int"):
            frames[bad]


def test_dataloader_two_workers_sees_every_window_once(lowdim) -> None:
    path, _ = lowdim
    ds = KinoFrameDataset(path, obs_horizon=2, action_horizon=3)
    loader = DataLoader(
        ds, batch_size=7, shuffle=True, num_workers=2, generator=torch.Generator().manual_seed(0)
    )
    seen = [k for batch in loader for k in _key(batch)]
    assert len(seen) == len(ds) == 40 and len(set(seen)) == 40


def test_datasets_pickle_by_path_and_reopen(lowdim) -> None:
    path, _ = lowdim
    for ds in (KinoFrameDataset(path, action_horizon=2), KinoMapDataset(path)):
        blob = pickle.dumps(ds)
        assert len(blob) < 4096  # a specification, not data or a map
        again = pickle.loads(blob)
        assert len(again) == len(ds)
        a, b = again[3], ds[3]
        torch.testing.assert_close(a["action"], b["action"])


def test_map_dataset_items(tmp_path: Path) -> None:
    path = tmp_path / "img.kdb"
    eps = _write(path, [4, 6], cameras={"front": (12, 16, 3), "wrist": (12, 16, 3)})
    ds = KinoDataset(path)
    ep = ds[1]
    assert set(ep) >= {"action", "state", "reward", "image", "task", "embodiment", "success", "episode_id"}
    assert ep["image"].shape == (6, 3, 12, 16) and ep["image"].dtype == torch.float32
    torch.testing.assert_close(
        ep["image"][2], torch.from_numpy(eps[1]["images"]["front"][2]).permute(2, 0, 1) / 255
    )
    assert ep["success"] == 0 and ds[0]["success"] == 1
    both = KinoMapDataset(path, image_key=["front", "wrist"], image_size=(6, 8), normalize=False)[0]
    assert both["images"]["wrist"].shape == (4, 3, 6, 8) and both["images"]["wrist"].dtype == torch.uint8
    assert "image" not in KinoMapDataset(path, image_key=False)[0]
    with pytest.raises(kinodb.EpisodeNotFoundError):
        ds[2]


def test_frame_images_uint8_and_float(tmp_path: Path) -> None:
    path = tmp_path / "img.kdb"
    eps = _write(path, [4, 6], cameras={"front": (12, 16, 3)})
    u8 = KinoFrameDataset(path, obs_horizon=2, normalize=False, image_size=(12, 16))
    batch = next(iter(DataLoader(u8, batch_size=10)))
    assert batch["image"].dtype == torch.uint8 and batch["image"].shape == (10, 2, 3, 12, 16)
    want = torch.from_numpy(eps[1]["images"]["front"][[0, 1]]).permute(0, 3, 1, 2)
    torch.testing.assert_close(batch["image"][5], want)
    fl = KinoFrameDataset(path, obs_horizon=2)
    torch.testing.assert_close(fl[5]["image"], want.float() / 255)


def test_iterable_split_over_workers_and_ranks_covers_the_epoch_once(lowdim) -> None:
    path, _ = lowdim
    seen = []
    for rank in range(2):
        ds = KinoIterDataset(
            path, obs_horizon=1, action_horizon=2, batch_size=4, seed=3, rank=rank, world_size=2
        )
        ds.set_epoch(1)
        seen += [k for batch in DataLoader(ds, batch_size=None, num_workers=2) for k in _key(batch)]
    assert len(seen) == 40 and len(set(seen)) == 40
    one = KinoIterDataset(path, action_horizon=2, seed=3)
    one.set_epoch(1)
    other = KinoIterDataset(path, action_horizon=2, seed=3)
    other.set_epoch(2)
    assert one.epoch_order().tolist() != other.epoch_order().tolist()
    assert sorted(one.epoch_order().tolist()) == list(range(40))


def test_iterable_episodes_and_unbatched_windows(lowdim) -> None:
    path, eps = lowdim
    episodes = list(KinoIterDataset(path, shuffle=False))
    assert [len(e["action"]) for e in episodes] == [5, 9, 3, 7, 6, 10]
    windows = list(DataLoader(KinoIterDataset(path, action_horizon=2, shuffle=False), batch_size=8))
    assert sum(len(b["action"]) for b in windows) == 40
    torch.testing.assert_close(windows[0]["action"][0], torch.from_numpy(eps[0]["actions"][:2]))


def test_mixture_of_action_dims_2_and_14_through_pad_collate(tmp_path: Path) -> None:
    a, b = tmp_path / "a.kdb", tmp_path / "b.kdb"
    _write(a, [6, 6], action_dim=2, state_dim=2)
    _write(b, [5, 5], action_dim=14, state_dim=9, seed=1)
    ds = KinoFrameDataset(kinodb.Mixture({a: 1, b: 1}), action_horizon=3)
    loader = DataLoader(ds, batch_size=22, collate_fn=pad_collate)
    batch = next(iter(loader))
    assert batch["action"].shape == (22, 3, 14) and batch["state"].shape == (22, 1, 9)
    assert batch["action_mask"][:12, :, 2:].any().item() is False and batch["action_mask"][12:].all()
    assert batch["source"].tolist() == [0] * 12 + [1] * 10
    episodes = pad_collate([KinoMapDataset([a, b], image_key=False)[i] for i in (0, 2)])
    assert episodes["action"].shape == (2, 6, 14) and episodes["action_mask"][1, 5].any().item() is False
    sampler = SchemaBatchSampler(ds, batch_size=4, seed=0)
    keys = ds.schema_keys()
    for idx in sampler:
        assert len({tuple(keys[i]) for i in idx}) == 1
    assert sorted(i for idx in sampler for i in idx) == list(range(len(ds)))
    it = from_mixture({str(a): 3, str(b): 1}, seed=0, action_horizon=2, num_samples=40)
    order = it.epoch_order()
    assert (order < 12).sum() == 30  # 3:1 of 40 draws


def test_import_errors_name_the_extra(tmp_path: Path) -> None:
    code = "import sys; sys.modules['torch'] = None\ntry:\n import kinodb.torch\nexcept ImportError as e: print(e)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "pip install 'kinodb[torch]'" in out


def test_bad_arguments(lowdim) -> None:
    path, _ = lowdim
    with pytest.raises(ValueError, match="normalize must be"):
        KinoFrameDataset(path, normalize="zscore")
    with pytest.raises(ValueError, match="resize must be one of"):
        KinoFrameDataset(path, resize="lanczos")
    with pytest.raises(ValueError, match="obs_horizon must be a positive int"):
        KinoFrameDataset(path, obs_horizon=0)
    with pytest.raises(ValueError, match="image_size"):
        KinoFrameDataset(path, image_size=(0, 4))


def test_normalize_uses_the_stored_statistics(lowdim) -> None:
    from kinodb.stats import compute_stats, write_stats

    path, eps = lowdim
    with pytest.raises(kinodb.FormatError, match="kino stats"):
        KinoFrameDataset(path, normalize="mean_std")
    write_stats(path, compute_stats(path))
    states = np.concatenate([e["states"] for e in eps]).astype(np.float64)
    actions = np.concatenate([e["actions"] for e in eps]).astype(np.float64)
    ds = KinoFrameDataset(path, normalize="mean_std", action_horizon=2)
    batch = next(iter(DataLoader(ds, batch_size=len(ds))))
    z = batch["state"][:, 0].double().numpy()
    np.testing.assert_allclose(z, (states - states.mean(0)) / states.std(0), rtol=1e-5, atol=1e-5)
    mm = KinoMapDataset(path, normalize="min_max", image_key=False)
    a = np.concatenate([mm[i]["action"].numpy() for i in range(len(mm))])
    np.testing.assert_allclose(a.min(0), -1, atol=1e-6)
    np.testing.assert_allclose(a.max(0), 1, atol=1e-6)
    np.testing.assert_allclose(
        a, 2 * (actions - actions.min(0)) / (actions.max(0) - actions.min(0)) - 1, atol=1e-5
    )


def test_worker_batches_travel_as_one_buffer_and_arrive_equal(tmp_path: Path) -> None:
    from kinodb.torch import TensorBatch

    path = tmp_path / "img.kdb"
    _write(path, [5, 7, 4], cameras={"front": (8, 12, 3), "wrist": (8, 12, 3)})
    ds = KinoFrameDataset(
        path, obs_horizon=2, action_horizon=3, image_key=["front", "wrist"], normalize=False
    )
    local = list(DataLoader(ds, batch_size=5))
    remote = list(DataLoader(ds, batch_size=5, num_workers=2, pin_memory=False))
    assert len(local) == len(remote) == 4
    for a, b in zip(local, remote, strict=True):
        assert isinstance(b, TensorBatch) and a.keys() == b.keys() and a["task"] == b["task"]
        for key in ("state", "action", "action_is_pad", "frame_index"):
            assert a[key].dtype == b[key].dtype
            torch.testing.assert_close(a[key], b[key])
        for cam in ("front", "wrist"):
            torch.testing.assert_close(a["images"][cam], b["images"][cam])
    again = pickle.loads(pickle.dumps(local[0]))
    torch.testing.assert_close(again["images"]["wrist"], local[0]["images"]["wrist"])
    assert again["state"].data_ptr() != local[0]["state"].data_ptr()


def test_unit_float_conversion_is_the_same_on_several_threads() -> None:
    from kinodb.torch._datasets import _SPLIT_PIXELS, to_unit_float

    u8 = np.random.default_rng(0).integers(0, 256, (7, 2, 3, 128, 256), dtype=np.uint8)
    assert u8.size >= _SPLIT_PIXELS  # large enough to be split
    one, three = to_unit_float(u8, 1), to_unit_float(u8, 3)
    assert one.dtype == three.dtype == np.float32 and one.shape == three.shape == u8.shape
    assert one.tobytes() == three.tobytes()
    np.testing.assert_array_equal(three, u8.astype(np.float32) / np.float32(255))


def test_a_mixture_of_robots_with_other_cameras_says_how_to_train(tmp_path: Path) -> None:
    a, b = tmp_path / "a.kdb", tmp_path / "b.kdb"
    write_episodes(a, [4, 5], cameras={"image_0": (6, 8, 3)})
    write_episodes(b, [3], action_dim=5, cameras={"cam_high": (6, 8, 3)})
    mix = kinodb.Mixture({str(a): 1, str(b): 1})
    with pytest.raises(kinodb.KinodbError, match=r"no camera 'image_0'.*by default.*image_key=False"):
        KinoFrameDataset(mix, obs_horizon=2, action_horizon=3)  # the default: source 0's first camera
    ds = KinoFrameDataset(mix, obs_horizon=2, action_horizon=3, image_key=False)
    batch = next(iter(DataLoader(ds, batch_size=12, collate_fn=pad_collate)))
    assert batch["action"].shape == (12, 3, 5) and batch["action_mask"][:, :, 2:].sum() == 3 * 3 * 3


def test_a_camera_no_source_has_is_a_key_error_for_every_dataset(tmp_path: Path) -> None:
    # NameNotFoundError (a KeyError), as read_frames and FrameWindows raise for it.
    a, b = tmp_path / "a.kdb", tmp_path / "b.kdb"
    write_episodes(a, [4, 5], cameras={"image_0": (6, 8, 3)})
    write_episodes(b, [3], cameras={"image_0": (6, 8, 3)})
    for make in (
        lambda: KinoFrameDataset(a, image_key="front"),
        lambda: KinoMapDataset(a, image_key="front"),
        lambda: KinoFrameDataset(kinodb.Mixture({str(a): 1, str(b): 1}), image_key="front"),
        lambda: KinoMapDataset([str(a), str(b)], image_key=["image_0", "front"]),
    ):
        with pytest.raises(KeyError, match=r"no camera 'front'; it has \['image_0'\]"):
            make()


def test_robots_with_differently_named_cameras_train_under_one_name(tmp_path: Path) -> None:
    a, b = tmp_path / "a.kdb", tmp_path / "b.kdb"
    ea = write_episodes(a, [4, 5], cameras={"image_0": (6, 8, 3), "wrist": (6, 8, 3)})
    eb = write_episodes(b, [3], action_dim=5, cameras={"cam_high": (12, 16, 3)})
    mix = kinodb.Mixture({str(a): 1, str(b): 1})
    ds = KinoFrameDataset(mix, obs_horizon=1, action_horizon=2, image_key={"front": ["image_0", "cam_high"]},
                          image_size=(6, 8), normalize=False)  # fmt: skip
    assert ds.windows.cameras == ["front"]
    batch = next(iter(DataLoader(ds, batch_size=12, collate_fn=pad_collate)))
    front = batch["images"]["front"]
    assert front.shape == (12, 1, 3, 6, 8) and front.dtype == torch.uint8
    want_a = torch.from_numpy(ea[1]["images"]["image_0"][2]).permute(2, 0, 1)  # window 6 = episode 1, frame 2
    assert torch.equal(front[6, 0], want_a)
    small = KinoFrameDataset(str(b), obs_horizon=1, action_horizon=2, image_key="cam_high", image_size=(6, 8),
                             normalize=False)  # fmt: skip
    assert torch.equal(front[9], small[0]["image"])  # b's first window, resized the same way
    assert len(eb) == 1
    one_name = KinoFrameDataset(kinodb.Mixture({str(a): 1, str(a): 2}), image_key={"wrist": "wrist"})
    assert one_name.windows.cameras == ["wrist"]  # one camera name for every source
    with pytest.raises(
        ValueError, match=r"image_key\['front'\] must be a camera name or a list of 2 camera names"
    ):
        KinoFrameDataset(mix, image_key={"front": ["image_0"]})
    with pytest.raises(kinodb.KinodbError, match=r"no camera 'cam_low'; it has \['cam_high'\]"):
        KinoFrameDataset(mix, image_key={"front": ["image_0", "cam_low"]})
    with pytest.raises(ValueError, match="mapping of each source's cameras is for frame windows"):
        KinoMapDataset(mix, image_key={"front": ["image_0", "cam_high"]})
    again = pickle.loads(pickle.dumps(ds))  # workers re-open it with the same cameras
    assert torch.equal(again[6]["images"]["front"], ds[6]["images"]["front"])


def _is_channels_last(x: torch.Tensor) -> bool:
    """(B, To, C, H, W) or (To, C, H, W) over (..., H, W, C) memory."""
    return (
        x.reshape(-1, *x.shape[-3:]).is_contiguous(memory_format=torch.channels_last)
        and not x.is_contiguous()
    )


@pytest.mark.parametrize("codec", ["raw", "png", "jpeg"])
@pytest.mark.parametrize(
    "options",
    [
        {"normalize": False},
        {},
        {"normalize": False, "image_size": (6, 8)},
        {"normalize": False, "pad": "zero"},
    ],
)
def test_channels_last_frames_equal_channels_first_ones(tmp_path: Path, codec: str, options: dict) -> None:
    path = tmp_path / f"{codec}.kdb"
    eps = _write(path, [4, 7, 3], cameras={"front": (12, 16, 3), "wrist": (12, 16, 3)}, codec=codec)
    kw = dict(obs_horizon=3, action_horizon=2, image_key=["front", "wrist"], **options)
    first, last = KinoFrameDataset(path, **kw), KinoFrameDataset(path, channels_last=True, **kw)
    idx = [0, 1, 3, 4, 10, 13, 5, 12]  # episode starts (padded history), middles, last frames
    a, b = first.__getitems__(idx).stacked, last.__getitems__(idx).stacked
    for cam in ("front", "wrist"):
        x, y = a["images"][cam], b["images"][cam]
        assert y.shape == x.shape and y.dtype == x.dtype and _is_channels_last(y)
        assert torch.equal(x, y)
    if codec != "jpeg" and "image_size" not in options:  # the stored pixels themselves
        want = torch.from_numpy(eps[1]["images"]["wrist"][[0, 0, 1]]).permute(0, 3, 1, 2)
        if options.get("pad") == "zero":
            want[:1] = 0  # frame -1 lies before the episode
        got = b["images"]["wrist"][idx.index(5)]
        assert torch.equal(got if got.dtype == torch.uint8 else (got * 255).round().to(torch.uint8), want)
    assert torch.equal(b["images"]["front"].contiguous(), a["images"]["front"])


def test_channels_last_frames_keep_their_layout_through_workers(tmp_path: Path) -> None:
    from kinodb.torch import TensorBatch

    path = tmp_path / "raw.kdb"
    _write(path, [5, 9, 6], cameras={"front": (12, 16, 3)}, codec="raw")
    kw = dict(obs_horizon=2, action_horizon=3, normalize=False)
    local = list(DataLoader(KinoFrameDataset(path, **kw), batch_size=4))
    remote = list(DataLoader(KinoFrameDataset(path, channels_last=True, **kw), batch_size=4, num_workers=2))
    assert len(local) == len(remote) == 5
    for a, b in zip(local, remote, strict=True):
        assert isinstance(b, TensorBatch) and _is_channels_last(b["image"])
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["state"], b["state"])
    again = pickle.loads(pickle.dumps(TensorBatch(remote[0])))  # packed in memory order, permuted back
    assert _is_channels_last(again["image"]) and torch.equal(again["image"], local[0]["image"])


def test_channels_last_episodes_and_streams(tmp_path: Path) -> None:
    path = tmp_path / "png.kdb"
    eps = _write(path, [4, 6], cameras={"front": (12, 16, 3)})
    for size in (None, (6, 8)):
        a = KinoMapDataset(path, normalize=False, image_size=size)[1]["image"]
        b = KinoMapDataset(path, normalize=False, image_size=size, channels_last=True)[1]["image"]
        assert _is_channels_last(b) and torch.equal(a, b)
    raw = tmp_path / "raw.kdb"
    _write(raw, [4, 6], cameras={"front": (12, 16, 3)}, codec="raw")
    ep = KinoMapDataset(raw, channels_last=True)[1]["image"]
    assert _is_channels_last(ep)
    torch.testing.assert_close(ep, torch.from_numpy(eps[1]["images"]["front"]).permute(0, 3, 1, 2) / 255)
    stream = KinoIterDataset(
        path, obs_horizon=2, batch_size=3, shuffle=False, channels_last=True, normalize=False
    )
    batch = next(iter(DataLoader(stream, batch_size=None)))
    assert _is_channels_last(batch["image"])
    assert torch.equal(
        batch["image"],
        KinoFrameDataset(path, obs_horizon=2, normalize=False).__getitems__([0, 1, 2]).stacked["image"],
    )
    with pytest.raises(ValueError, match="channels_last must be True or False"):
        KinoFrameDataset(path, channels_last="yes")  # type: ignore[arg-type]


@pytest.mark.parametrize("channels_last", [False, True])
def test_pad_collate_pads_every_camera_of_episodes_and_keeps_the_layout(
    tmp_path: Path, channels_last: bool
) -> None:
    path = tmp_path / "eps.kdb"
    eps = _write(path, [4, 6], cameras={"front": (8, 12, 3), "wrist": (8, 12, 3)})
    ds = KinoMapDataset(path, image_key=["front", "wrist"], normalize=False, channels_last=channels_last)
    batch = pad_collate([ds[0], ds[1]])
    for cam in ("front", "wrist"):
        frames = batch["images"][cam]
        assert frames.shape == (2, 6, 3, 8, 12) and _is_channels_last(frames) == channels_last
        assert torch.equal(frames[0, :4], torch.from_numpy(eps[0]["images"][cam]).permute(0, 3, 1, 2))
        assert not frames[0, 4:].any()  # padded frames are zeros, state_mask marks them
        assert torch.equal(frames[1], torch.from_numpy(eps[1]["images"][cam]).permute(0, 3, 1, 2))
    assert batch["state_mask"][0, :, 0].tolist() == [True] * 4 + [False] * 2


def test_pad_collate_keeps_channels_last_windows_of_mixed_schemas(tmp_path: Path) -> None:
    a, b = tmp_path / "a.kdb", tmp_path / "b.kdb"
    write_episodes(a, [4, 5], action_dim=2, cameras={"front": (8, 12, 3)})
    write_episodes(b, [6], action_dim=14, cameras={"front": (8, 12, 3)}, seed=1)
    mix = kinodb.Mixture({str(a): 1, str(b): 1})
    kw = dict(obs_horizon=2, action_horizon=3, normalize=False)
    want = next(iter(DataLoader(KinoFrameDataset(mix, **kw), batch_size=15, collate_fn=pad_collate)))
    loader = DataLoader(KinoFrameDataset(mix, channels_last=True, **kw), batch_size=15, collate_fn=pad_collate,
                        num_workers=2)  # fmt: skip
    got = next(iter(loader))
    assert got["action"].shape == (15, 3, 14) and _is_channels_last(got["image"])
    assert torch.equal(got["image"], want["image"]) and torch.equal(got["action"], want["action"])


def test_channels_last_large_raw_frames_and_items_collated_in_workers(tmp_path: Path) -> None:
    path = tmp_path / "big.kdb"
    _write(path, [5, 7], cameras={"front": (48, 64, 3)}, codec="raw")  # 9 KiB frames: copied one by one
    kw = dict(obs_horizon=2, action_horizon=2, normalize=False)
    idx = list(range(12))
    want = KinoFrameDataset(path, **kw).__getitems__(idx).stacked["image"]
    got = KinoFrameDataset(path, channels_last=True, **kw).__getitems__(idx).stacked["image"]
    assert _is_channels_last(got) and torch.equal(got, want)
    # Items collated by the DataLoader (streamed one by one, episodes) keep the layout in workers too.
    stream = KinoIterDataset(path, shuffle=False, channels_last=True, **kw)
    for workers in (0, 2):
        batch = next(iter(DataLoader(stream, batch_size=4, num_workers=workers)))
        assert _is_channels_last(batch["image"]) and batch["image"].shape == (4, 2, 3, 48, 64)
    episodes = KinoMapDataset(path, image_key=["front"], channels_last=True, normalize=False)
    batch = next(iter(DataLoader(episodes, batch_size=1, num_workers=2)))
    assert _is_channels_last(batch["images"]["front"]) and batch["images"]["front"].shape == (1, 5, 3, 48, 64)
    assert KinoFrameDataset(path, channels_last=np.True_)._channels_last is True


def test_episode_frames_of_one_channel_raw_cameras_are_copies(tmp_path: Path) -> None:
    path = tmp_path / "gray.kdb"
    eps = _write(path, [4], cameras={"depth": (6, 8, 1)}, codec="raw")
    for last in (False, True):
        frames = KinoMapDataset(path, normalize=False, channels_last=last)[0]["image"]
        assert frames.numpy().flags.writeable  # not a view of the read-only map
        frames.add_(1)
        again = KinoMapDataset(path, normalize=False, channels_last=last)[0]["image"]
        assert torch.equal(again, torch.from_numpy(eps[0]["images"]["depth"]).permute(0, 3, 1, 2))


def test_one_camera_with_other_channel_counts_is_refused(tmp_path: Path) -> None:
    rgb, gray = tmp_path / "rgb.kdb", tmp_path / "gray.kdb"
    write_episodes(rgb, [3], cameras={"a": (12, 16, 3)})
    write_episodes(gray, [3], cameras={"b": (12, 16, 1)})
    mix = kinodb.Mixture({str(rgb): 1, str(gray): 1})
    ds = KinoFrameDataset(mix, image_key={"front": ["a", "b"]}, image_size=(6, 8))
    with pytest.raises(kinodb.KinodbError, match=r"camera 'front' has 1 channel\(s\) in .*but 3 elsewhere"):
        ds.__getitems__(list(range(6)))


def test_normalize_without_statistics_of_states_or_actions_is_refused(lowdim) -> None:
    from kinodb.stats import compute_stats, write_stats

    path, _ = lowdim
    write_stats(path, compute_stats(path, arrays=["rewards"]))
    with pytest.raises(
        kinodb.KinodbError,
        match=r"normalize=.mean_std. needs statistics of states and actions, but its stored statistics have none",
    ):
        KinoFrameDataset(path, normalize="mean_std")


def test_a_batch_of_two_schemas_without_pad_collate_says_how_to_collate(tmp_path: Path) -> None:
    a, b = tmp_path / "a.kdb", tmp_path / "b.kdb"
    write_episodes(a, [4], action_dim=2)
    write_episodes(b, [4], action_dim=14)
    ds = KinoFrameDataset(kinodb.Mixture({str(a): 1, str(b): 1}), action_horizon=2)
    with pytest.raises(
        kinodb.KinodbError, match=r"mixes 'action' of shapes .*collate_fn=kinodb\.torch\.pad_collate"
    ):
        next(iter(DataLoader(ds, batch_size=8)))
    assert next(iter(DataLoader(ds, batch_size=8, collate_fn=pad_collate)))["action"].shape == (8, 2, 14)


def test_cameras_of_different_sizes_in_one_batch_need_image_size(tmp_path: Path) -> None:
    a, b = tmp_path / "a.kdb", tmp_path / "b.kdb"
    write_episodes(a, [3], action_dim=2, cameras={"image_0": (12, 16, 3)})
    write_episodes(b, [3], action_dim=14, cameras={"cam_high": (24, 32, 3)})
    mix = kinodb.Mixture({str(a): 1, str(b): 1})
    cams = {"front": ["image_0", "cam_high"]}
    ds = KinoFrameDataset(mix, image_key=cams)  # batches by schema (one size each) are fine
    by_schema = DataLoader(ds, batch_sampler=SchemaBatchSampler(ds, 3, shuffle=False))
    assert sorted(tuple(b["images"]["front"].shape) for b in by_schema) == [
        (3, 1, 3, 12, 16),
        (3, 1, 3, 24, 32),
    ]
    with pytest.raises(kinodb.KinodbError, match=r"several sizes in this batch .*pass image_size=\(H, W\)"):
        next(iter(DataLoader(ds, batch_size=6, collate_fn=pad_collate)))
    batch = next(iter(DataLoader(KinoFrameDataset(mix, image_key=cams, image_size=(12, 16)), batch_size=6,
                                 collate_fn=pad_collate)))  # fmt: skip
    assert batch["images"]["front"].shape == (6, 1, 3, 12, 16)


def test_normalize_needs_statistics_only_of_what_the_dataset_hands_out(tmp_path: Path) -> None:
    from kinodb.stats import compute_stats, write_stats

    path = tmp_path / "no_states.kdb"
    eps = _write(path, [5, 6], state_dim=0)
    write_stats(path, compute_stats(path))  # states have no features: no statistics for them
    actions = np.concatenate([e["actions"] for e in eps]).astype(np.float64)
    episode = KinoMapDataset(path, normalize="mean_std", image_key=False)[0]["action"].double().numpy()
    np.testing.assert_allclose(
        episode, (actions[:5] - actions.mean(0)) / actions.std(0), rtol=1e-5, atol=1e-6
    )
    frames = KinoFrameDataset(path, normalize="mean_std")
    np.testing.assert_allclose(
        frames[0]["action"][0].double().numpy(), (actions[0] - actions.mean(0)) / actions.std(0), rtol=1e-5
    )
    lowdim_only = tmp_path / "a.kdb"
    _write(lowdim_only, [5, 6])
    write_stats(lowdim_only, compute_stats(lowdim_only, arrays=["states", "actions"]))
    delta = {"action": [0.0, 0.1], "next.reward": [0.0]}  # rewards are handed out, never normalised
    ds = KinoFrameDataset(lowdim_only, delta_timestamps=delta, normalize="mean_std")
    assert ds[0]["action"].shape == (2, 2) and ds[0]["reward"].shape == (1,)
    only_actions = tmp_path / "b.kdb"
    _write(only_actions, [5, 6])
    write_stats(only_actions, compute_stats(only_actions, arrays=["actions"]))
    for only in ({}, {"delta_timestamps": {"action": [0.0, 0.1]}}):  # states keep their window
        with pytest.raises(kinodb.KinodbError, match=r"needs statistics of states, but"):
            KinoFrameDataset(only_actions, normalize="mean_std", **only)


def test_episodes_of_different_lengths_without_pad_collate_say_so(tmp_path: Path) -> None:
    path = tmp_path / "eps.kdb"
    _write(path, [5, 6])
    with pytest.raises(
        kinodb.KinodbError, match=r"episodes of different lengths .*pad_collate.*batch_size=None"
    ):
        next(iter(DataLoader(KinoMapDataset(path, image_key=False), batch_size=2)))


def test_delta_timestamps_name_mapped_cameras_and_misspelt_features_are_named(tmp_path: Path) -> None:
    a, b = tmp_path / "a.kdb", tmp_path / "b.kdb"
    write_episodes(a, [6], fps=10.0, cameras={"image_0": (8, 8, 3)})
    write_episodes(b, [7], fps=10.0, cameras={"cam_high": (8, 8, 3)}, seed=1)
    mix = kinodb.Mixture({str(a): 1, str(b): 1})
    delta = {
        "observation.state": [-0.1, 0.0],
        "action": [0.0, 0.1, 0.2],
        "observation.images.front": [-0.1, 0.0],
    }
    ds = KinoFrameDataset(
        mix, image_key={"front": ["image_0", "cam_high"]}, delta_timestamps=delta, normalize=False
    )
    item = ds[3]
    assert item["images"]["front"].shape == (2, 3, 8, 8) and item["action"].shape == (3, 2)
    plural = KinoFrameDataset(
        a, delta_timestamps={"observation.states": [0.0], "actions": [0.0]}, image_key=False
    )
    assert set(plural[0]) >= {"state", "action"}  # kinodb's array names key like LeRobot's
    with pytest.raises(
        kinodb.KinodbError, match=r"windows ask for 'stat' \('observation\.stat'\), but its episodes hold \["
    ):
        KinoFrameDataset(a, delta_timestamps={"observation.stat": [0.0]}, image_key=False)


def test_normalised_states_with_uint8_frames(tmp_path: Path) -> None:
    from kinodb.stats import compute_stats, write_stats

    path = tmp_path / "img.kdb"
    eps = _write(path, [5, 6], cameras={"front": (8, 12, 3)})
    write_stats(path, compute_stats(path))
    states = np.concatenate([e["states"] for e in eps]).astype(np.float64)
    for ds in (
        KinoFrameDataset(path, normalize="mean_std", image_dtype="uint8", channels_last=True),
        KinoIterDataset(path, obs_horizon=1, shuffle=False, normalize="mean_std", image_dtype="uint8"),
    ):
        item = next(iter(ds)) if isinstance(ds, KinoIterDataset) else ds[0]
        assert item["image"].dtype == torch.uint8
        np.testing.assert_allclose(
            item["state"][0].double().numpy(), (states[0] - states.mean(0)) / states.std(0), rtol=1e-5
        )
    episode = KinoMapDataset(path, normalize=False, image_dtype="float32")[0]["image"]
    assert episode.dtype == torch.float32 and float(episode.max()) <= 1.0
    with pytest.raises(ValueError, match="image_dtype must be None, 'uint8' or 'float32'"):
        KinoFrameDataset(path, image_dtype="float16")


def test_zero_padding_stays_zero_after_normalisation(lowdim) -> None:
    from kinodb.stats import compute_stats, write_stats

    path, _ = lowdim
    write_stats(path, compute_stats(path))
    ds = KinoFrameDataset(path, obs_horizon=3, action_horizon=4, pad="zero", normalize="mean_std")
    batch = ds.__getitems__(list(range(len(ds)))).stacked
    assert batch["action_is_pad"].any() and batch["state_is_pad"].any()
    assert (
        not batch["action"][batch["action_is_pad"]].any() and not batch["state"][batch["state_is_pad"]].any()
    )
    assert batch["action"][~batch["action_is_pad"]].abs().sum() > 0


def _two_robots(tmp_path: Path) -> Path:
    """A merged file: 3 'arm' episodes with camera 'front', then 2 'biped' episodes with
    camera 'head' (same dims, so only the cameras tell them apart)."""
    rng = np.random.default_rng(5)
    path = tmp_path / "two.kdb"
    with kinodb.Writer(path, mode="w", image_codec="raw") as w:
        for k, (emb, cam) in enumerate([("arm", "front")] * 3 + [("biped", "head")] * 2):
            T = 4 + k
            w.add_episode(actions=rng.normal(size=(T, 2)).astype(np.float32),
                          states=rng.normal(size=(T, 3)).astype(np.float32), embodiment=emb, fps=10.0,
                          images={cam: rng.integers(0, 256, (T, 6, 8, 3), dtype=np.uint8)})  # fmt: skip
    return path


def test_episode_dataset_takes_each_episodes_first_camera(tmp_path: Path) -> None:
    path = _two_robots(tmp_path)
    ds = KinoMapDataset(path)  # image_key=None: 'front' for the arm, 'head' for the biped
    with kinodb.open(path) as db:
        for i in range(len(db)):
            (cam,) = db.cameras(i)
            want = (
                torch.from_numpy(np.array(db.read_episode(i)["images"][cam])).permute(0, 3, 1, 2).float()
                / 255
            )
            torch.testing.assert_close(ds[i]["image"], want)


def test_episodes_of_one_robot_keep_one_camera_whatever_their_order(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    path = tmp_path / "orders.kdb"
    frames = {c: rng.integers(0, 256, (4, 6, 8, 3), dtype=np.uint8) for c in ("front", "wrist")}
    with kinodb.Writer(path, mode="w", image_codec="raw") as w:
        for order in (("front", "wrist"), ("wrist", "front")):
            w.add_episode(actions=np.zeros((4, 2), np.float32), images={c: frames[c] for c in order})
    ds = KinoMapDataset(path, normalize=False)
    want = torch.from_numpy(frames["front"]).permute(0, 3, 1, 2)
    assert torch.equal(ds[0]["image"], want) and torch.equal(ds[1]["image"], want)


def test_a_camera_some_episodes_lack_is_refused_when_made(tmp_path: Path) -> None:
    path = _two_robots(tmp_path)
    with pytest.raises(kinodb.KinodbError) as exc:
        KinoMapDataset(path, image_key="front")
    msg = str(exc.value)
    assert "2 of 5 episodes have no camera 'front' (episodes 3, 4)" in msg
    assert "kql_filter=\"embodiment != 'biped'\"" in msg and "image_key=False" in msg
    ds = KinoMapDataset(path, image_key="front", kql_filter="embodiment != 'biped'")  # the advice works
    assert len(ds) == 3 and ds[2]["image"].shape == (6, 3, 6, 8)
    with pytest.raises(kinodb.KinodbError, match="2 of 5 episodes have no camera 'front'"):
        KinoFrameDataset(path, image_key="front")
    assert len(KinoFrameDataset(path, image_key="front", kql_filter="embodiment = 'arm'")) == 4 + 5 + 6


def test_a_mixture_source_without_the_camera_is_refused_when_made(tmp_path: Path) -> None:
    a, b = tmp_path / "a.kdb", tmp_path / "b.kdb"
    _write(a, [4, 5], cameras={"front": (6, 8, 3)}, codec="raw")
    _write(b, [3], cameras={"wrist": (6, 8, 3)}, codec="raw")
    with pytest.raises(kinodb.KinodbError, match=r"b\.kdb.*1 of 1 episodes have no camera 'front'"):
        KinoMapDataset(kinodb.Mixture({str(a): 1, str(b): 1}), image_key="front")
    items = KinoMapDataset(kinodb.Mixture({str(a): 1, str(b): 1}))  # each episode's first camera
    assert [items[i]["image"].shape[0] for i in range(len(items))] == [4, 5, 3]


def test_camera_check_reads_format_01_files_too(tmp_path: Path) -> None:
    from _legacy_encoder import Episode, encode, raw_frames

    rng = np.random.default_rng(0)

    def episode(T: int, cams: list[str]) -> Episode:
        return Episode(states=rng.normal(size=(T, 3)).astype(np.float32),
                       actions=rng.normal(size=(T, 2)).astype(np.float32), rewards=np.zeros(T, np.float32),
                       is_terminal=np.arange(T) == T - 1,
                       images={c: raw_frames(rng.integers(0, 256, (T, 6, 8, 3), dtype=np.uint8)) for c in cams})  # fmt: skip

    # A 0.1 file has no section columns: its first kept episode is checked when the
    # dataset is made (walking every frame header of every episode would cost more than
    # the reads), and a later episode without the camera is named when it is read.
    path = tmp_path / "old.kdb"
    path.write_bytes(encode([episode(4, ["front"]), episode(3, ["front"]), episode(5, [])]))
    ds = KinoMapDataset(path, image_key="front")
    assert ds[1]["image"].shape == (3, 3, 6, 8)
    with pytest.raises(
        kinodb.NameNotFoundError, match="episode 2 has no camera 'front'; leave such episodes out"
    ):
        ds[2]
    with pytest.raises(kinodb.NameNotFoundError, match=r"old\.kdb: no camera 'front'; it has no cameras"):
        KinoMapDataset(path, image_key="front", kql_filter="num_frames = 5")
    assert len(KinoMapDataset(path, image_key="front", kql_filter="num_frames < 5")) == 2


def test_schema_batch_sampler_names_what_it_needs(lowdim) -> None:
    path, _ = lowdim
    with pytest.raises(TypeError, match=r"needs a map-style dataset with schema_keys.*got KinoIterDataset"):
        SchemaBatchSampler(KinoIterDataset(path, obs_horizon=2, action_horizon=4), 8)


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("to_tensor", [True, False])
def test_pad_collate_pads_a_mixed_batch_as_whole_arrays(
    tmp_path: Path, channels_last: bool, to_tensor: bool
) -> None:
    # A batch of sources with different widths is gathered per source; pad_collate pads
    # those arrays whole, equal to padding sample by sample.
    narrow, wide = tmp_path / "narrow.kdb", tmp_path / "wide.kdb"
    _write(narrow, [5, 6], action_dim=2, state_dim=3, cameras={"front": (6, 8, 3)})
    _write(wide, [7], action_dim=14, state_dim=9, cameras={"front": (6, 8, 3)}, seed=1)
    with kinodb.Writer(tmp_path / "f64.kdb") as w:  # float64 states: the batch is float64
        w.add_episode(actions=np.ones((4, 2), np.float32), states=np.full((4, 3), 0.5),
                      images={"front": np.zeros((4, 6, 8, 3), np.uint8)})  # fmt: skip
    mix = kinodb.Mixture([(str(narrow), 1.0), (str(wide), 1.0), (str(tmp_path / "f64.kdb"), 1.0)])
    ds = KinoFrameDataset(
        mix, obs_horizon=2, action_horizon=3, channels_last=channels_last, to_tensor=to_tensor
    )
    order = [17, 0, 12, 3, 11, 21, 5, 19]
    batch = ds.__getitems__(order)
    fast = pad_collate(batch)
    slow = pad_collate([dict(s) for s in batch])  # sample by sample
    assert set(fast) == set(slow)
    for key in slow:
        if key == "image":
            flat = fast[key].flatten(0, 1)
            assert flat.is_contiguous(memory_format=torch.channels_last) == channels_last
            assert fast[key].stride() == slow[key].stride()
        if isinstance(slow[key], torch.Tensor):
            assert fast[key].dtype == slow[key].dtype and torch.equal(fast[key], slow[key]), key
        else:
            assert fast[key] == slow[key], key
    assert fast["state"].shape == (8, 2, 9) and fast["state"].dtype == torch.float64
    assert [ds[i]["frame_index"] for i in order] == fast["frame_index"].tolist()
    loader = DataLoader(ds, batch_size=8, sampler=order, collate_fn=pad_collate, num_workers=1)
    (through,) = list(loader)
    assert torch.equal(through["action"], fast["action"]) and torch.equal(
        through["action_mask"], fast["action_mask"]
    )


def test_samples_of_a_mixed_batch_pickle_and_collate_as_they_are(tmp_path: Path) -> None:
    narrow, wide = tmp_path / "narrow.kdb", tmp_path / "wide.kdb"
    _write(narrow, [5, 6], action_dim=2, state_dim=3)
    _write(wide, [7], action_dim=14, state_dim=9, seed=1)
    ds = KinoFrameDataset(
        kinodb.Mixture([(str(narrow), 1.0), (str(wide), 1.0)]), obs_horizon=2, action_horizon=3
    )
    batch = ds.__getitems__([10, 1, 11, 0])
    back = pickle.loads(pickle.dumps(batch))  # plain sample dicts (a worker handing samples on)
    assert [s["frame_index"] for s in back] == [s["frame_index"] for s in batch]
    pickle.dumps(batch[0])
    samples = list(batch)
    samples[0]["state"] = samples[0]["state"] * 0 + 7  # a wrapper's augmentation
    got = pad_collate(samples[::-1])  # the samples as given, in their order
    assert got["frame_index"].tolist() == [int(s["frame_index"]) for s in samples[::-1]] == [0, 0, 1, 5]
    assert (got["state"][3][got["state_mask"][3]] == 7).all()
    from kinodb.torch import collate

    plain = KinoFrameDataset(str(narrow), obs_horizon=2, action_horizon=3).__getitems__([0, 1])
    mine = list(plain)
    mine[0]["action"] = mine[0]["action"] + 1
    assert torch.equal(collate(mine)["action"][0], plain.stacked["action"][0] + 1)
    assert mine[0] is plain[0]  # the batch hands out the same sample, edits and all


@pytest.mark.parametrize(
    ("make", "error", "message"),
    [
        (lambda p: KinoFrameDataset(p)[1.5], TypeError, r"index must be an int, got 1.5"),
        (lambda p: KinoFrameDataset(p)[True], TypeError, r"index must be an int, got True"),
        (lambda p: KinoFrameDataset(p, image_size=True), TypeError, r"image_size must be None, a positive int or a pair"),
        (lambda p: KinoFrameDataset(p, image_size=96.0), TypeError, r"image_size must be .*such as \(96, 96\), got 96.0"),
        (lambda p: KinoMapDataset(p, image_size=(True, 4)), ValueError, r"image_size must be"),
        (lambda p: KinoFrameDataset(p, image_key=True), TypeError, r"image_key must be a camera name, .*got True"),
        (lambda p: KinoFrameDataset(p, image_key=0), TypeError, r"image_key must be a camera name, .*got 0"),
        (lambda p: KinoMapDataset(p, image_key=0), TypeError, r"image_key must be a camera name, a list .*got 0"),
        (lambda p: KinoIterDataset(p, image_key=[0]), TypeError, r"image_key must be"),
        (lambda p: KinoFrameDataset(p, delta_timestamps={"action": 0.1}), TypeError,
         r"delta_timestamps\['action'\] must be a list of seconds such as \[-0.1, 0.0\], got 0.1"),
    ],
)  # fmt: skip
def test_arguments_of_the_wrong_type_are_named(tmp_path: Path, make: Any, error: type, message: str) -> None:
    path = tmp_path / "cams.kdb"
    _write(path, [4, 5], cameras={"front": (6, 8, 3)})
    with pytest.raises(error, match=message):
        make(path)


def test_delta_timestamps_choose_the_cameras_when_image_key_is_not_given(tmp_path: Path) -> None:
    path = tmp_path / "two.kdb"
    eps = _write(path, [6, 5], cameras={"front": (6, 8, 3), "wrist": (4, 4, 3)}, codec="raw")
    delta = {"observation.state": [-0.1, 0.0], "observation.images.wrist": [-0.1, 0.0]}
    ds = KinoFrameDataset(path, delta_timestamps=delta, normalize=False)
    assert ds.windows.cameras == ["wrist"]  # not the first camera besides
    item = ds[7]  # episode 1, frame 1
    assert item["image_is_pad"].tolist() == [False, False] and "image_is_pad.wrist" not in item
    want = torch.from_numpy(eps[1]["images"]["wrist"][[0, 1]]).permute(0, 3, 1, 2)
    assert torch.equal(item["image"], want)
    both = KinoFrameDataset(path, delta_timestamps={**delta, "front": [0.0]}, normalize=False)
    assert set(both[7]["images"]) == {"wrist", "front"} and both[7]["images"]["front"].shape == (1, 3, 6, 8)
    # Unnamed features keep their horizons: the first camera's and the states' history.
    horizon = KinoFrameDataset(path, obs_horizon=2, action_horizon=3, delta_timestamps={"action": [0.0, 0.1]})
    item = horizon[7]
    assert (
        item["state"].shape == (2, 3)
        and item["image"].shape == (2, 3, 6, 8)
        and item["action"].shape == (2, 2)
    )
    for image_key in ("front", False):
        with pytest.raises(kinodb.KinodbError, match=r"names camera 'wrist', which image_key=.* leaves out"):
            KinoFrameDataset(path, delta_timestamps=delta, image_key=image_key)
    listed = KinoFrameDataset(path, delta_timestamps=delta, image_key=["front", "wrist"], normalize=False)
    images = listed[7]["images"]
    assert images["wrist"].shape == (2, 3, 4, 4) and images["front"].shape == (1, 3, 6, 8)


def test_a_camera_left_out_by_image_key_is_named_for_a_mixture_too(tmp_path: Path) -> None:
    a, b = tmp_path / "a.kdb", tmp_path / "b.kdb"
    _write(a, [6, 5], cameras={"front": (6, 8, 3), "wrist": (4, 4, 3)}, codec="raw")
    _write(b, [5], cameras={"front": (6, 8, 3)}, codec="raw", seed=1)  # no "wrist"
    mix = kinodb.Mixture({str(a): 1, str(b): 1})
    delta = {"observation.images.wrist": [0.0], "action": [0.0, 0.1]}
    for image_key, fix in ((False, "['wrist']"), ("front", "['front', 'wrist']")):
        with pytest.raises(kinodb.KinodbError) as err:
            KinoFrameDataset(mix, delta_timestamps=delta, image_key=image_key)
        message = str(err.value)
        assert message.startswith(
            f"delta_timestamps names camera 'wrist', which image_key={image_key!r} leaves out"
        )
        assert f"(a list of cameras: {fix})" in message and "mixture source 1" not in message
    lowdim = KinoFrameDataset(mix, delta_timestamps={"action": [0.0, 0.1]}, image_key=False)
    assert "image" not in lowdim[0] and lowdim[0]["action"].shape == (2, 2)
    front = KinoFrameDataset(mix, delta_timestamps={"front": [0.0]}, image_key="front", normalize=False)
    assert front[len(front) - 1]["image"].shape == (1, 3, 6, 8)


@pytest.mark.integration
def test_a_file_rewritten_under_a_live_dataset_is_named_in_spawned_workers(tmp_path: Path) -> None:
    path = tmp_path / "live.kdb"
    _write(path, [5, 5, 5])
    frames = KinoFrameDataset(path, obs_horizon=1, action_horizon=2, image_key=False)
    _write(path, [4], seed=1)  # replaced by a smaller file
    loader = DataLoader(frames, batch_size=4, num_workers=1, multiprocessing_context="spawn")
    with pytest.raises(kinodb.KinodbError, match=r"live\.kdb changed since this dataset was made"):
        list(loader)


@pytest.mark.integration
def test_spawned_workers_read_on_while_a_recorder_appends_between_epochs(tmp_path: Path) -> None:
    path = tmp_path / "live.kdb"
    _write(path, [5, 5, 5])
    frames = KinoFrameDataset(path, obs_horizon=1, action_horizon=2, image_key=False)
    loader = DataLoader(frames, batch_size=4, num_workers=1, multiprocessing_context="spawn")
    first = [b["action"] for b in loader]
    with kinodb.Writer(path, mode="a") as w:  # a rollout recorded mid-training
        w.add_episode(actions=np.ones((3, 2), np.float32), states=np.ones((3, 3), np.float32), fps=10.0)
    second = [b["action"] for b in loader]  # new workers: the episodes the dataset indexes
    assert len(first) == len(second) == 4
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a, b)


def test_a_file_appended_to_under_a_live_dataset_is_read_as_it_was_when_reopened(tmp_path: Path) -> None:
    a, b = tmp_path / "a.kdb", tmp_path / "b.kdb"
    _write(a, [5, 5])
    _write(b, [6], seed=1)
    made = [KinoFrameDataset([str(a), str(b)], image_key=False), KinoMapDataset([str(a), str(b)], image_key=False),
            KinoIterDataset(kinodb.Mixture({str(a): 1, str(b): 1}), action_horizon=2, image_key=False,
                            shuffle=False),
            KinoFrameDataset(kinodb.Mixture({str(a): 1, str(b): 1}), image_key=False)]  # fmt: skip
    blobs = [pickle.dumps(ds) for ds in made]  # as a spawned worker gets them
    before = [list(ds) if isinstance(ds, KinoIterDataset) else [ds[i] for i in range(len(ds))] for ds in made]
    with kinodb.Writer(a, mode="a") as w:  # one more episode in front of b's samples
        w.add_episode(actions=np.zeros((3, 2), np.float32), states=np.zeros((3, 3), np.float32), fps=10.0)
    assert (
        len(KinoFrameDataset([str(a), str(b)], image_key=False)) == len(made[0]) + 3
    )  # a new dataset sees it
    for blob, was in zip(blobs, before, strict=True):
        again = pickle.loads(blob)  # at the commits the dataset read: the episodes it indexes
        now = list(again) if isinstance(again, KinoIterDataset) else [again[i] for i in range(len(again))]
        assert len(now) == len(was)
        for x, y in zip(now, was, strict=True):
            assert x.keys() == y.keys()
            for key in x:
                if isinstance(x[key], torch.Tensor):
                    assert torch.equal(x[key], y[key]), key
                else:
                    assert x[key] == y[key], key
