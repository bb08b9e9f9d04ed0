"""Frame windows (kinodb.windows): contents, padding, delta_timestamps, images, errors."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

import kinodb
from _factories import write_episodes, write_field_in_one_file
from kinodb.errors import EpisodeNotFoundError, KinodbError
from kinodb.windows import FrameWindows


def _write(path: Path, lengths: list[int], **options: Any) -> list[dict]:
    options.setdefault("codec", "raw")
    return write_episodes(path, lengths, **options)


def _expected(arr: np.ndarray, t: int, offsets: range, pad: str) -> tuple[np.ndarray, np.ndarray]:
    T = len(arr)
    rows, mask = [], []
    for o in offsets:
        f = t + o
        outside = not 0 <= f < T
        mask.append(outside)
        rows.append(np.zeros_like(arr[0]) if outside and pad == "zero" else arr[min(max(f, 0), T - 1)])
    return np.stack(rows), np.array(mask)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    lengths=st.lists(st.integers(1, 12), min_size=1, max_size=5),
    obs=st.integers(1, 6),  # from 4 frames on, windows inside an episode are copied as blocks
    act=st.integers(1, 8),
    action_dim=st.sampled_from([1, 2]),
    pad=st.sampled_from(["edge", "zero"]),
    lookup=st.booleans(),
    data=st.data(),
)
def test_windows_equal_manual_computation(
    tmp_path: Path, lengths, obs, act, action_dim, pad, lookup, data
) -> None:
    path = tmp_path / f"w{abs(hash((tuple(lengths), action_dim)))}.kdb"
    if not path.exists():
        eps = _write(path, lengths, action_dim=action_dim)
    else:
        with kinodb.open(path) as db:
            eps = [db.read_episode(i) for i in range(len(db))]
    fw = FrameWindows(path, obs_horizon=obs, action_horizon=act, pad=pad)
    if not lookup:  # the binary search that sources over windows.LOOKUP_FRAMES frames take
        for source in fw._sources:
            source.frame_lookup = lambda: None  # type: ignore[method-assign]
    assert len(fw) == sum(lengths)
    idx = data.draw(st.lists(st.integers(0, len(fw) - 1), min_size=1, max_size=20))
    batch = fw.lowdim(idx)
    starts = np.cumsum([0, *lengths])
    for b, i in enumerate(idx):
        e = int(np.searchsorted(starts, i, side="right") - 1)
        t = i - starts[e]
        want_s, mask_s = _expected(eps[e]["states"], t, range(-obs + 1, 1), pad)
        want_a, mask_a = _expected(eps[e]["actions"], t, range(act), pad)
        np.testing.assert_array_equal(batch["state"][b], want_s)
        np.testing.assert_array_equal(batch["action"][b], want_a)
        np.testing.assert_array_equal(batch["state_is_pad"][b], mask_s)
        np.testing.assert_array_equal(batch["action_is_pad"][b], mask_a)
        assert batch["episode_index"][b] == e and batch["frame_index"][b] == t


@pytest.mark.parametrize("larger", [False, True])
def test_action_chunk_longer_than_what_follows_in_the_file(tmp_path: Path, larger: bool) -> None:
    """A chunk of wide actions from the last frames of a short file reaches past the end of
    the file (its frames would take almost the whole file, or more than the file); it is
    padded with the last action like any other."""
    path = tmp_path / "short.kdb"
    eps = _write(path, [3], action_dim=64)
    horizon = path.stat().st_size // (64 * 4) + (1 if larger else -1)
    fw = FrameWindows(path, action_horizon=horizon)
    batch = fw.lowdim([0, 1, 2])
    for t in range(3):
        want, mask = _expected(eps[0]["actions"], t, range(horizon), "edge")
        np.testing.assert_array_equal(batch["action"][t], want)
        np.testing.assert_array_equal(batch["action_is_pad"][t], mask)


def test_long_history_of_wide_states_in_a_small_file(tmp_path: Path) -> None:
    """An observation history that starts far before the first frame of a small file (its
    frames would take more than the whole file) is padded with the first state."""
    path = tmp_path / "small.kdb"
    states = np.arange(7 * 33, dtype=np.float64).reshape(7, 33)
    with kinodb.Writer(path, mode="w") as w:
        w.add_episode(actions=np.zeros((7, 2)), states=states)
    fw = FrameWindows(path, obs_horizon=17)
    batch = fw.lowdim(list(range(7)))
    for t in range(7):
        want, mask = _expected(states, t, range(-16, 1), "edge")
        np.testing.assert_array_equal(batch["state"][t], want)
        np.testing.assert_array_equal(batch["state_is_pad"][t], mask)


def test_windows_pickle_small_after_use(tmp_path: Path) -> None:
    """Used windows pickle without their views of the file's map (which would pickle as
    copies many times the file's size) and give the same windows where unpickled."""
    import pickle

    path = tmp_path / "p.kdb"
    _write(path, [100] * 20, action_dim=7, state_dim=9)
    fw = FrameWindows(path, obs_horizon=2, action_horizon=16)
    fresh = len(pickle.dumps(fw))
    before = fw.lowdim(list(range(0, 2000, 31)))
    blob = pickle.dumps(fw)
    assert len(blob) < 2 * fresh + path.stat().st_size
    after = pickle.loads(blob).lowdim(list(range(0, 2000, 31)))
    for key, value in before.items():
        np.testing.assert_array_equal(after[key], value)


def test_windows_pickle_without_their_lookup_tables(tmp_path: Path) -> None:
    """The per-offsets lookup tables (a megabyte for an action chunk of 255) are rebuilt
    where unpickled, not carried."""
    import pickle

    path = tmp_path / "q.kdb"
    _write(path, [300] * 4, action_dim=7, state_dim=9)
    fw = FrameWindows(path, obs_horizon=2, action_horizon=255)
    fresh = len(pickle.dumps(fw))
    before = fw.lowdim(list(range(0, 1200, 7)))
    blob = pickle.dumps(fw)
    assert len(blob) < fresh + 4096
    after = pickle.loads(blob).lowdim(list(range(0, 1200, 7)))
    for key, value in before.items():
        np.testing.assert_array_equal(after[key], value)


def test_delta_timestamps_match_horizons_in_frames(tmp_path: Path) -> None:
    path = tmp_path / "d.kdb"
    _write(path, [7, 3, 9], fps=20.0)
    by_frames = FrameWindows(path, obs_horizon=2, action_horizon=4)
    by_seconds = FrameWindows(path, delta_timestamps={
        "observation.state": [-0.05, 0.0], "action": [0.0, 0.05, 0.1, 0.15], "next.reward": [0.0, 0.05]})  # fmt: skip
    idx = np.arange(len(by_frames))
    a, b = by_frames.lowdim(idx), by_seconds.lowdim(idx)
    for key in ("state", "action", "state_is_pad", "action_is_pad"):
        np.testing.assert_array_equal(a[key], b[key])
    # Offsets on both sides of the frame, in frames and in seconds: padded on both ends.
    both = FrameWindows(path, delta_timestamps={"action": [-0.1, 0.0, 0.1]})
    with kinodb.open(path) as db:
        eps = [db.read_array(i, "actions").copy() for i in range(3)]
    got = both.lowdim(idx)
    for n, (e, t) in enumerate(zip(*both.locate(idx)[1:], strict=True)):
        want, mask = _expected(eps[e], t, range(-2, 3, 2), "edge")
        np.testing.assert_array_equal(got["action"][n], want)
        np.testing.assert_array_equal(got["action_is_pad"][n], mask)
    db = kinodb.open(path)
    np.testing.assert_array_equal(b["reward"][0], db.read_array(0, "rewards")[:2])


def test_features_delta_timestamps_does_not_name_keep_their_horizons(tmp_path: Path) -> None:
    path, other = tmp_path / "d.kdb", tmp_path / "e.kdb"
    _write(path, [7, 3, 9], fps=20.0, cameras={"front": (4, 6, 3)})
    _write(other, [4], fps=15.0, cameras={"front": (4, 6, 3)}, seed=1)  # off the 1/20 s grid
    by_frames = FrameWindows(path, obs_horizon=2, action_horizon=4, cameras=["front"])
    actions_only = FrameWindows(path, obs_horizon=2, action_horizon=4, cameras=["front"],
                                delta_timestamps={"action": [0.0, 0.05, 0.1, 0.15]})  # fmt: skip
    states_only = FrameWindows(path, obs_horizon=2, action_horizon=4, cameras=["front"],
                               delta_timestamps={"observation.state": [-0.05, 0.0]})  # fmt: skip
    idx = np.arange(len(by_frames))
    want = by_frames.lowdim(idx)
    for fw in (actions_only, states_only):
        got = fw.lowdim(idx)
        assert set(got) == set(want)
        for key in want:
            np.testing.assert_array_equal(got[key], want[key], err_msg=key)
        np.testing.assert_array_equal(fw.images(idx)["front"], by_frames.images(idx)["front"])
    spec = actions_only.spec
    assert spec.image_in_seconds("front") is False and spec.array_in_seconds("action")
    # In frames, unnamed features need no frame grid: a 15 fps source is fine for them.
    both = FrameWindows([str(path), str(other)], obs_horizon=3, cameras=["front"],
                        delta_timestamps={"next.reward": [0.0]})  # fmt: skip
    got = both.lowdim(np.arange(len(both)))
    assert (
        got["state"].shape == (23, 3, 3)
        and got["action"].shape == (23, 1, 2)
        and got["reward"].shape == (23, 1)
    )
    assert got["image_is_pad"].shape == (23, 3)


@pytest.mark.parametrize(
    ("delta", "message"),
    [
        (
            {"action": 0.1},
            r"delta_timestamps\['action'\] must be a list of seconds such as \[-0.1, 0.0\], got 0.1",
        ),
        ({"action": "0.1"}, r"delta_timestamps\['action'\] must be a list of seconds"),
        ({"action": [0.0, "x"]}, r"delta_timestamps\['action'\] must be a list of seconds \(numbers\)"),
        ({3: [0.0]}, r"delta_timestamps keys must be feature names \(str\), got 3"),
    ],
)
def test_delta_timestamps_of_the_wrong_form_name_it(tmp_path: Path, delta: dict, message: str) -> None:
    path = tmp_path / "d.kdb"
    _write(path, [5])
    with pytest.raises(TypeError, match=message):
        FrameWindows(path, delta_timestamps=delta)


def test_delta_timestamps_off_the_frame_grid_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "g.kdb"
    _write(path, [5], fps=10.0)
    with pytest.raises(
        KinodbError, match=r"delta_timestamps of 'action': 0.05 s \(entry 1\) is not a multiple of 1/fps"
    ):
        FrameWindows(path, delta_timestamps={"action": [0.0, 0.05]})
    other = tmp_path / "h.kdb"
    _write(other, [4], fps=15.0)
    with pytest.raises(KinodbError) as err:  # the user's own name, the episodes, and the ways out
        FrameWindows([str(path), str(other)], delta_timestamps={"observation.state": [-1 / 15, 0.0]})
    text = str(err.value)
    assert "delta_timestamps of 'observation.state'" in text and "the 1 episode at 10 fps in" in text
    assert "run at 10, 15 fps" in text and 'kql_filter="fps != 10.0"' in text
    assert len(FrameWindows([str(path), str(other)], kql_filter="fps != 10.0",
                            delta_timestamps={"observation.state": [-1 / 15, 0.0]})) == 4  # fmt: skip
    ntsc = tmp_path / "ntsc.kdb"
    _write(ntsc, [3], fps=30000 / 1001)
    with pytest.raises(KinodbError) as err:  # the suggested filter is exact, and keeps the user's own
        FrameWindows(
            [str(other), str(ntsc)], kql_filter="num_frames > 1", delta_timestamps={"action": [0.0, 2 / 15]}
        )
    query = str(err.value).split('kql_filter="')[1].split('"')[0]
    assert query == "(num_frames > 1) AND fps != 29.97002997002997"
    assert (
        len(
            FrameWindows(
                [str(other), str(ntsc)], kql_filter=query, delta_timestamps={"action": [0.0, 2 / 15]}
            )
        )
        == 4
    )


def test_kql_filter_lists_and_out_of_range(tmp_path: Path) -> None:
    a, b = tmp_path / "a.kdb", tmp_path / "b.kdb"
    eps_a = _write(a, [4, 5, 6])
    eps_b = _write(b, [3], seed=1)
    fw = FrameWindows([a, b], action_horizon=2, kql_filter="num_frames != 5")
    assert len(fw) == 4 + 6 + 3
    src, ep, t = fw.locate([0, 4, 10, 12])
    assert src.tolist() == [0, 0, 1, 1] and ep.tolist() == [0, 2, 0, 0] and t.tolist() == [0, 0, 0, 2]
    batch = fw.lowdim([4, 10])
    np.testing.assert_array_equal(batch["action"][0], eps_a[2]["actions"][:2])
    np.testing.assert_array_equal(batch["action"][1], eps_b[0]["actions"][:2])
    assert fw.tasks([4, 10]) == ["task 2", "task 0"]
    groups = fw.lowdim_groups([12, 4, 10, 0], tasks=True)  # the tasks, found with the windows
    got = {b: t for sel, arrays in groups for b, t in zip(sel.tolist(), arrays["task"].tolist(), strict=True)}
    assert [got[b] for b in range(4)] == fw.tasks([12, 4, 10, 0])
    assert "task" not in fw.lowdim([4, 10])
    with pytest.raises(EpisodeNotFoundError, match="sample 13 out of range: there are 13 samples"):
        fw.lowdim([13])
    with pytest.raises(KinodbError, match="keeps no episode"):
        FrameWindows(a, kql_filter="num_frames > 100")


def test_mixed_schemas_stack_per_group_and_refuse_to_stack(tmp_path: Path) -> None:
    a, b = tmp_path / "a.kdb", tmp_path / "b.kdb"
    _write(a, [4], action_dim=2)
    _write(b, [4], action_dim=14)
    fw = FrameWindows(kinodb.Mixture({a: 1, b: 1}), action_horizon=3)
    groups = fw.lowdim_groups([0, 5, 1])
    assert [sel.tolist() for sel, _ in groups] == [[0, 2], [1]]
    assert groups[1][1]["action"].shape == (1, 3, 14)
    with pytest.raises(KinodbError, match="pad_collate"):
        fw.lowdim([0, 5])


def test_images_raw_png_and_resize(tmp_path: Path) -> None:
    raw, png = tmp_path / "raw.kdb", tmp_path / "png.kdb"
    eps = _write(raw, [5, 4], cameras={"front": (16, 20, 3), "depth": (16, 20, 1)})
    _write(png, [5, 4], cameras={"front": (16, 20, 3), "depth": (16, 20, 1)}, codec="png")
    for path in (raw, png):
        fw = FrameWindows(path, obs_horizon=3, cameras=["front", "depth"])
        out = fw.images([0, 6])
        assert out["front"].shape == (2, 3, 3, 16, 20) and out["depth"].shape == (2, 3, 1, 16, 20)
        np.testing.assert_array_equal(out["front"][1, 2], eps[1]["images"]["front"][1].transpose(2, 0, 1))
        np.testing.assert_array_equal(out["front"][0, 0], eps[0]["images"]["front"][0].transpose(2, 0, 1))
        np.testing.assert_array_equal(fw.lowdim([0])["image_is_pad.front"][0], [True, True, False])
        small = fw.images([6], size=(8, 10), resize="area")["front"][0, 2]
        want = np.asarray(Image.fromarray(eps[1]["images"]["front"][1]).resize((10, 8), Image.Resampling.BOX))
        np.testing.assert_array_equal(small, want.transpose(2, 0, 1))
    zero = FrameWindows(raw, obs_horizon=2, cameras="front", pad="zero").images([0], threads=2)["front"]
    assert not zero[0, 0].any() and zero[0, 1].any()


def test_jpeg_scaled_decode_is_close_to_a_full_decode(tmp_path: Path) -> None:
    path = tmp_path / "j.kdb"
    yy, xx = np.mgrid[0:224, 0:224]
    frames = np.stack([np.stack([(xx + 3 * t) % 256, (yy + t) % 256, (xx + yy) // 2 % 256], -1)
                       for t in range(4)]).astype(np.uint8)  # fmt: skip
    with kinodb.Writer(path, mode="w", image_codec="jpeg") as w:
        w.add_episode(actions=np.zeros((4, 2), np.float32), states=np.zeros((4, 2), np.float32),
                      images={"cam": frames})  # fmt: skip
    fw = FrameWindows(path, cameras="cam")
    got = fw.images([2], size=(96, 96))["cam"][0, 0].transpose(1, 2, 0).astype(np.float64)
    full = Image.open(io.BytesIO(kinodb.open(path).read_image_bytes(0, "cam", 2))).convert("RGB")
    want = np.asarray(full.resize((96, 96), Image.Resampling.BILINEAR), dtype=np.float64)
    psnr = 10 * np.log10(255**2 / np.mean((got - want) ** 2))
    assert psnr > 30, psnr
    assert fw.encoded([2])[0]["cam"][0] == kinodb.open(path).read_image_bytes(0, "cam", 2)


def test_camera_errors_name_the_choices(tmp_path: Path) -> None:
    path = tmp_path / "c.kdb"
    _write(path, [3], cameras={"front": (8, 8, 3)})
    with pytest.raises(KinodbError, match=r"no camera 'back'; it has \['front'\]"):
        FrameWindows(path, cameras="back")


def test_raw_frames_are_gathered_exactly_with_mixed_codecs_and_zero_pad(tmp_path: Path) -> None:
    raw, png = tmp_path / "raw.kdb", tmp_path / "png.kdb"
    eps_raw = _write(raw, [3, 6], cameras={"cam": (10, 14, 3)}, seed=4)
    eps_png = _write(png, [5], cameras={"cam": (10, 14, 3)}, codec="png", seed=5)
    fw = FrameWindows([raw, png], obs_horizon=3, cameras="cam", pad="zero")
    got = fw.images([0, 4, 9, 12])["cam"]  # raw ep0 t0, raw ep1 t1, png t0, png t3
    want = [
        [None, None, eps_raw[0]["images"]["cam"][0]],
        [None, eps_raw[1]["images"]["cam"][0], eps_raw[1]["images"]["cam"][1]],
        [None, None, eps_png[0]["images"]["cam"][0]],
        eps_png[0]["images"]["cam"][1:4],
    ]
    for b, frames in enumerate(want):
        for k, frame in enumerate(frames):
            if frame is None:
                assert not got[b, k].any()
            else:
                np.testing.assert_array_equal(got[b, k], frame.transpose(2, 0, 1))


def test_large_raw_batches_split_over_threads_give_the_same_frames(tmp_path: Path) -> None:
    path = tmp_path / "raw.kdb"
    eps = _write(path, [40, 25], cameras={"cam": (48, 64, 3)}, seed=6)
    fw = FrameWindows(path, obs_horizon=2, cameras="cam")
    idx = np.random.default_rng(0).permutation(len(fw))[:64]  # 64 x 2 frames of 9 KiB: above the split size
    one = fw.images(idx, threads=1)["cam"]
    two = fw.images(idx, threads=3)["cam"]
    np.testing.assert_array_equal(one, two)
    lengths = [40, 25]
    for b, i in enumerate(idx.tolist()):
        ep, t = (0, i) if i < lengths[0] else (1, i - lengths[0])
        for k, f in enumerate((max(t - 1, 0), t)):
            np.testing.assert_array_equal(two[b, k], eps[ep]["images"]["cam"][f].transpose(2, 0, 1))


def test_sources_without_the_cameras_are_named_at_construction(tmp_path: Path) -> None:
    a, b = tmp_path / "a.kdb", tmp_path / "b.kdb"
    _write(a, [4, 5], cameras={"image_0": (6, 8, 3)})
    _write(b, [3], cameras={"cam_high": (6, 8, 3)})
    with pytest.raises(
        KinodbError, match=r"b.kdb\): no camera 'image_0'.*it has \['cam_high'\].*image_key=False"
    ):
        FrameWindows(kinodb.Mixture({str(a): 1, str(b): 1}), cameras="image_0")
    fw = FrameWindows(kinodb.Mixture({str(a): 1, str(b): 1}), cameras=[])
    assert len(fw) == 12 and fw.cameras == []
    c = tmp_path / "c.kdb"  # one file whose later episode lacks the camera: named, with the fix
    with kinodb.Writer(c, image_codec="raw") as w:
        w.add_episode(
            actions=np.zeros((4, 2), np.float32), images={"front": np.zeros((4, 6, 8, 3), np.uint8)}
        )
        w.add_episode(actions=np.zeros((3, 2), np.float32))
    with pytest.raises(
        KinodbError,
        match=r"c.kdb: 1 of 2 episodes have no camera 'front' \(episode 1\); leave it out with "
        r'kql_filter="episode_id != 1", or pass image_key=False for windows without images',
    ):
        FrameWindows(c, cameras="front")
    assert len(FrameWindows(c, cameras="front", kql_filter="episode_id != 1")) == 4  # the advice works
    assert len(FrameWindows(c, cameras="front", kql_filter="num_frames = 4")) == 4


@pytest.mark.parametrize("table", [True, False, "text"])
def test_per_frame_tasks_in_lerobot_numbering_from_older_files(tmp_path: Path, table: object) -> None:
    # Files ingested before per-frame tasks were numbered within the episode kept LeRobot's
    # own task numbers: read through the file's lerobot.tasks table, or refused (also when a
    # user's own metadata holds something else under "lerobot").
    path = tmp_path / "old.kdb"
    metadata: dict[str, object] = {}
    if table is True:
        metadata = {"lerobot": {"tasks": {"0": "open", "1": "close"}}}
    elif table == "text":
        metadata = {"lerobot": "converted with lerobot 0.4"}
    with kinodb.Writer(path, metadata=metadata) as w:
        w.add_episode(actions=np.zeros((4, 2), np.float32), task="close", extra={"tasks": ["close", "open"]},
                      extra_arrays={"task_index": np.array([1, 1, 0, 0])})  # fmt: skip
        w.add_episode(actions=np.zeros((3, 2), np.float32), task="open")
    fw = FrameWindows(path)
    if table is True:
        assert fw.tasks(range(7)) == ["close", "close", "open", "open", "open", "open", "open"]
    else:
        with pytest.raises(
            KinodbError, match=r"episode 0's task_index does not index its 2 tasks.*re-ingest"
        ):
            fw.tasks(range(7))


def test_a_file_whose_episodes_differ_in_dims_is_refused_with_the_fix(tmp_path: Path) -> None:
    a, b, merged = tmp_path / "a.kdb", tmp_path / "b.kdb", tmp_path / "m.kdb"
    write_episodes(a, [4, 5], action_dim=2)
    write_episodes(b, [6], action_dim=14)
    kinodb.merge([a, b], merged)
    with pytest.raises(
        KinodbError,
        match=r"differ in action_dim \(2: 2 episodes, 14: 1 episode\).*kql_filter=\"action_dim = 2\"",
    ):
        FrameWindows(merged, action_horizon=2)
    assert len(FrameWindows(merged, action_horizon=2, kql_filter="action_dim = 14")) == 6


def test_a_mixture_source_whose_episodes_differ_in_dims_gets_a_per_source_filter(tmp_path: Path) -> None:
    a, b, merged, c = tmp_path / "a.kdb", tmp_path / "b.kdb", tmp_path / "m.kdb", tmp_path / "c.kdb"
    write_episodes(a, [4], state_dim=3)
    write_episodes(b, [5], state_dim=5)
    write_episodes(c, [6], state_dim=3)
    kinodb.merge([a, b], merged)
    with pytest.raises(
        KinodbError, match=r"select one with Mixture\(\.\.\., filters=\{'.*m\.kdb': 'state_dim = 3'\}\)"
    ):
        FrameWindows(kinodb.Mixture({str(merged): 1, str(c): 1}))
    fixed = kinodb.Mixture({str(merged): 1, str(c): 1}, filters={str(merged): "state_dim = 3"})
    assert len(FrameWindows(fixed)) == 10


def test_a_filter_field_only_some_sources_hold_is_null_in_the_others(tmp_path: Path) -> None:
    a, b = tmp_path / "a.kdb", tmp_path / "b.kdb"
    write_field_in_one_file(a, b)
    mix = kinodb.Mixture({str(a): 1, str(b): 1})
    assert FrameWindows(mix, kql_filter="has_language = true").counts_by_source().tolist() == [8, 0]
    assert FrameWindows(mix, kql_filter="NOT has_language = true").counts_by_source().tolist() == [4, 11]
    assert FrameWindows([str(a), str(b)], kql_filter="has_language IS NULL").counts_by_source().tolist() == [
        0,
        11,
    ]
    with pytest.raises(
        kinodb.QuerySyntaxError, match=r"(?s)unknown field .has_langauge.*did you mean has_language"
    ):
        FrameWindows(mix, kql_filter="has_langauge = true")  # a field no source holds is still a typo
    merged = tmp_path / "m.kdb"
    kinodb.merge([a, b], merged, filter="NOT has_language = true")
    with kinodb.open(merged) as db:
        assert len(db) == 3


def test_absent_fields_take_precedence_over_case_folded_built_ins_and_reach_mixture_filters(
    tmp_path: Path,
) -> None:
    from kinodb._cli.main import main

    a, b, merged = tmp_path / "a.kdb", tmp_path / "b.kdb", tmp_path / "m.kdb"
    with kinodb.Writer(a) as w:
        for k in range(3):
            w.add_episode(
                actions=np.zeros((4, 2), np.float32), task=f"task {k}", extra={"Task": "x", "lang": k}
            )
    write_episodes(b, [5, 6])
    kinodb.merge([a, b], merged)
    with kinodb.open(merged) as db:
        want = db.query("Task IS NULL").tolist()
    assert want == [3, 4]
    windows = FrameWindows(
        [str(a), str(b)], kql_filter="Task IS NULL"
    )  # b's null Task, not its built-in task
    assert windows.counts_by_source().tolist() == [0, 11]
    assert FrameWindows([str(a), str(b)], kql_filter="extra.lang >= 1").counts_by_source().tolist() == [8, 0]
    mix = kinodb.Mixture({str(a): 1, str(b): 1}, filters={str(b): "lang IS NULL"})
    assert [len(s.kept) for s in mix._src] == [3, 2]
    assert main(["mix", "-s", f"{a}:1", "-s", f"{b}:1", "--filter", "lang IS NULL OR lang >= 1"]) == 0


def test_format_0_1_files_are_sent_to_kino_upgrade(tmp_path: Path) -> None:
    from _legacy_encoder import Episode, encode

    rng = np.random.default_rng(0)
    eps = [Episode(states=rng.normal(size=(5, 3)).astype(np.float32), actions=rng.normal(size=(5, 2)).astype(np.float32),
                   rewards=np.zeros(5, np.float32), is_terminal=np.arange(5) == 4) for _ in range(2)]  # fmt: skip
    path = tmp_path / "old.kdb"
    path.write_bytes(encode(eps))
    with pytest.raises(KinodbError, match=r"old.kdb is a format 0.1 file.*kino upgrade OLD NEW"):
        FrameWindows(path, obs_horizon=2, action_horizon=2).lowdim([0])
