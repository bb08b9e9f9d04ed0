"""Frame windows gathered by table (kinodb.windows): every value and mask equals a plain
per-sample computation, for histories and chunks that cross either edge of episodes of any
length, both pads, one source and several of different schemas."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import kinodb
from kinodb.errors import EpisodeNotFoundError
from kinodb.windows import FrameWindows

# Episodes shorter than, as long as and longer than the windows; a 1-frame one last in the file.
LENGTHS = [1, 2, 3, 4, 15, 16, 17, 5, 40, 1]


def _write(path: Path, lengths: list[int], *, state_dim: int, action_dim: int, states: Any, seed: int,
           camera: bool = False) -> list[dict[str, np.ndarray]]:  # fmt: skip
    """One episode per length, with random states (dtype ``states``) and float32 actions."""
    rng = np.random.default_rng(seed)
    eps = []
    with kinodb.Writer(path, mode="w") as w:
        for k, T in enumerate(lengths):
            ep = {
                "states": rng.normal(size=(T, state_dim)).astype(states),
                "actions": rng.normal(size=(T, action_dim)).astype(np.float32),
            }
            images = {"cam": rng.integers(0, 256, (T, 4, 4, 3), dtype=np.uint8)} if camera else None
            w.add_episode(**ep, images=images, task=f"task {k}", fps=10.0)
            eps.append(ep)
    return eps


def _reference(arrays: list[np.ndarray], offsets: list[int], pad: str) -> tuple[np.ndarray, np.ndarray]:
    """Every sample's window, one frame at a time: ``(values (N, K, ...), pad mask (N, K))``.

    A frame outside its episode is the nearest edge frame (``pad="edge"``) or zeros, and
    is marked in the mask.
    """
    values, masks = [], []
    for arr in arrays:
        T = len(arr)
        for t in range(T):
            rows, mask = [], []
            for o in offsets:
                f = t + o
                outside = not 0 <= f < T
                mask.append(outside)
                if outside and pad == "zero":
                    rows.append(np.zeros_like(arr[0]))
                else:
                    rows.append(arr[min(max(f, 0), T - 1)])
            values.append(np.stack(rows))
            masks.append(mask)
    return np.stack(values), np.array(masks, dtype=bool)


def _assert_same(got: np.ndarray, want: np.ndarray) -> None:
    assert got.dtype == want.dtype and got.shape == want.shape
    assert got.tobytes() == want.tobytes()  # bit for bit: -0.0 and NaN payloads count


def _batches(n: int, seed: int) -> list[np.ndarray]:
    """Every sample in a shuffled order, in batches of uneven sizes, plus one that repeats."""
    order = np.random.default_rng(seed).permutation(n)
    cuts = [0, 1, 8, 37, n]
    out = [order[a:b] for a, b in itertools.pairwise(cuts) if a < b]
    return [*out, np.array([n - 1, 0, n - 1, 0], dtype=np.int64)]


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, list[dict[str, np.ndarray]]]]:
    root = tmp_path_factory.mktemp("gather")
    made = {}
    layouts = {
        "wide": dict(state_dim=3, action_dim=2, states=np.float32, seed=0),
        "narrow": dict(state_dim=1, action_dim=1, states=np.float64, seed=1),  # one element per frame
        "other": dict(state_dim=5, action_dim=7, states=np.float64, seed=2),
    }
    for name, layout in layouts.items():
        path = root / f"{name}.kdb"
        made[name] = (path, _write(path, LENGTHS, **layout))  # type: ignore[arg-type]
    path = root / "camera.kdb"
    made["camera"] = (path, _write(path, [3, 1, 6], state_dim=2, action_dim=2, states=np.float32,
                                   seed=3, camera=True))  # fmt: skip
    return made


@pytest.mark.parametrize("pad", ["edge", "zero"])
@pytest.mark.parametrize("obs, act", [(1, 1), (2, 16), (3, 2), (4, 5), (6, 17), (2, 45)])
@pytest.mark.parametrize("name", ["wide", "narrow"])
@pytest.mark.parametrize("lookup", [True, False])
def test_windows_equal_per_sample_reference(
    files, name: str, obs: int, act: int, pad: str, lookup: bool
) -> None:
    path, eps = files[name]
    fw = FrameWindows(path, obs_horizon=obs, action_horizon=act, pad=pad)
    if not lookup:  # the binary search that sources over windows.LOOKUP_FRAMES frames take
        fw._sources[0].frame_lookup = lambda: None  # type: ignore[method-assign]
    state, state_pad = _reference([ep["states"] for ep in eps], list(range(-obs + 1, 1)), pad)
    action, action_pad = _reference([ep["actions"] for ep in eps], list(range(act)), pad)
    frames = [(e, t) for e, ep in enumerate(eps) for t in range(len(ep["states"]))]
    for idx in _batches(len(frames), seed=obs * 31 + act):
        got = fw.lowdim(idx)
        _assert_same(got["state"], state[idx])
        _assert_same(got["state_is_pad"], state_pad[idx])
        _assert_same(got["action"], action[idx])
        _assert_same(got["action_is_pad"], action_pad[idx])
        _assert_same(got["episode_index"], np.array([frames[i][0] for i in idx], dtype=np.int64))
        _assert_same(got["frame_index"], np.array([frames[i][1] for i in idx], dtype=np.int64))
        _assert_same(got["source"], np.zeros(len(idx), dtype=np.int64))


@pytest.mark.parametrize("pad", ["edge", "zero"])
def test_sources_of_different_schemas_equal_reference(files, pad: str) -> None:
    paths = [files[name][0] for name in ("wide", "other", "narrow", "wide")]
    fw = FrameWindows(
        kinodb.Mixture({str(p): 1 for p in paths[:3]}), obs_horizon=3, action_horizon=16, pad=pad
    )
    same = FrameWindows([paths[0], paths[3]], obs_horizon=3, action_horizon=16, pad=pad)
    expected = {}
    for name in ("wide", "other", "narrow"):
        eps = files[name][1]
        expected[name] = (
            *_reference([ep["states"] for ep in eps], [-2, -1, 0], pad),
            *_reference([ep["actions"] for ep in eps], list(range(16)), pad),
        )
    n = sum(LENGTHS)
    for idx in _batches(3 * n, seed=5):
        for sel, got in fw.lowdim_groups(idx):
            s = int(got["source"][0])
            local = idx[sel] - s * n
            want = expected[("wide", "other", "narrow")[s]]
            for key, value in zip(("state", "state_is_pad", "action", "action_is_pad"), want, strict=True):
                _assert_same(got[key], value[local])
    for idx in _batches(2 * n, seed=6):  # one schema: stacked in batch order
        got = same.lowdim(idx)
        state, state_pad, action, action_pad = expected["wide"]
        _assert_same(got["state"], state[idx % n])
        _assert_same(got["state_is_pad"], state_pad[idx % n])
        _assert_same(got["action_is_pad"], action_pad[idx % n])
        _assert_same(got["action"], action[idx % n])
        _assert_same(got["source"], (idx >= n).astype(np.int64))


def test_offsets_in_seconds_of_both_signs_equal_reference(files) -> None:
    path, eps = files["wide"]
    delta = {"action": [-0.2, 0.0, 0.1, 0.3], "observation.state": [-0.1, 0.0, 0.1]}  # at 10 fps
    fw = FrameWindows(path, delta_timestamps=delta, pad="edge")
    action, action_pad = _reference([ep["actions"] for ep in eps], [-2, 0, 1, 3], "edge")
    state, state_pad = _reference([ep["states"] for ep in eps], [-1, 0, 1], "edge")
    idx = np.arange(sum(LENGTHS))
    got = fw.lowdim(idx)
    _assert_same(got["action"], action[idx])
    _assert_same(got["action_is_pad"], action_pad[idx])
    _assert_same(got["state"], state[idx])
    _assert_same(got["state_is_pad"], state_pad[idx])


@pytest.mark.parametrize("obs", [1, 2, 5])
def test_image_pad_masks_equal_reference(files, obs: int) -> None:
    path, eps = files["camera"]
    fw = FrameWindows(path, obs_horizon=obs, action_horizon=4, cameras="cam")
    _, want = _reference([ep["states"] for ep in eps], list(range(-obs + 1, 1)), "edge")
    idx = np.array([9, 0, 4, 3, 1, 2, 5, 8, 6, 7])
    _assert_same(fw.lowdim(idx)["image_is_pad"], want[idx])


@pytest.mark.parametrize("pad", ["edge", "zero"])
@pytest.mark.parametrize(
    "offsets",
    [(0, 2, 5), (-6, -3, 0), (1, 2, 3, 4, 5), (-5, -4, -3, -2), (3,), (0, 0, 0, 0), (-1, 0, 1)],
)
def test_offsets_of_any_shape_equal_reference(files, offsets: tuple[int, ...], pad: str) -> None:
    """Offsets the horizons never make (gaps, runs that skip frame t, repeats, both signs)
    are gathered alike."""
    path, eps = files["wide"]
    fw = FrameWindows(path, pad=pad)
    key = tuple(float(o) for o in offsets)
    fw.spec.arrays["action"] = ("actions", key)
    want, want_pad = _reference([ep["actions"] for ep in eps], list(offsets), pad)
    idx = np.random.default_rng(7).permutation(sum(LENGTHS))
    got = fw.lowdim(idx)
    _assert_same(got["action"], want[idx])
    _assert_same(got["action_is_pad"], want_pad[idx])
    assert (fw._reach(key) is None) == (min(offsets) < 0 < max(offsets))


@pytest.mark.parametrize("pad", ["edge", "zero"])
def test_offsets_reaching_far_skip_the_tables_and_equal_reference(files, pad: str) -> None:
    """An action chunk so long that its lookup tables would be large is gathered without
    them, alike."""
    path, eps = files["wide"]
    act = 300  # tables of 301 x 300 cells: above the limit
    fw = FrameWindows(path, obs_horizon=2, action_horizon=act, pad=pad)
    want, want_pad = _reference([ep["actions"] for ep in eps], list(range(act)), pad)
    idx = np.random.default_rng(11).permutation(sum(LENGTHS))
    got = fw.lowdim(idx)
    _assert_same(got["action"], want[idx])
    _assert_same(got["action_is_pad"], want_pad[idx])
    assert fw._reach(fw.spec.arrays["action"][1]) is None
    assert fw._reach(fw.spec.arrays["state"][1]) is not None


def test_indices_out_of_range_are_named(files) -> None:
    fw = FrameWindows(files["wide"][0], action_horizon=4)
    n = sum(LENGTHS)
    for bad in (-1, n, -(2**62)):
        with pytest.raises(EpisodeNotFoundError, match=f"sample {bad} out of range: there are {n} samples"):
            fw.lowdim([0, bad, 1])


def test_dataset_batches_equal_reference(files) -> None:
    pytest.importorskip("torch")
    from kinodb.torch import KinoFrameDataset

    path, eps = files["wide"]
    ds = KinoFrameDataset(
        path, obs_horizon=2, action_horizon=16, image_key=False, pad="edge", to_tensor=False
    )
    state, state_pad = _reference([ep["states"] for ep in eps], [-1, 0], "edge")
    action, action_pad = _reference([ep["actions"] for ep in eps], list(range(16)), "edge")
    idx = np.random.default_rng(8).permutation(sum(LENGTHS))
    batch = ds.__getitems__(idx.tolist())
    for n, i in enumerate(idx.tolist()):
        sample = batch[n]
        _assert_same(np.asarray(sample["state"]), state[i])
        _assert_same(np.asarray(sample["state_is_pad"]), state_pad[i])
        _assert_same(np.asarray(sample["action"]), action[i])
        _assert_same(np.asarray(sample["action_is_pad"]), action_pad[i])
