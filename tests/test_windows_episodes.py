"""Frame windows check every kept episode when they are made, from the index alone: arrays,
dtypes, widths, cameras and channels, with a filter that leaves the odd episodes out."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

import kinodb
from _factories import kql_advice, varied_episode, write_raw
from kinodb.errors import KinodbError
from kinodb.windows import FrameWindows

RGB, GRAY = {"front": (8, 8, 3)}, {"front": (8, 8, 1)}
LATE = {  # a problem in a later episode, what the windows ask for, and what the message says
    "array missing": (
        [varied_episode(5, 0, force=2), varied_episode(6, 1, force=2), varied_episode(4, 2)],
        dict(delta_timestamps={"force": [0.0, 0.1]}),
        r"1 of 3 episodes have no array 'force' \(episode 2\); leave it out with "
        r'kql_filter="episode_id != 2", or drop \'force\' from the window',
    ),
    "timestamps missing": (
        [varied_episode(3, 0, timestamps=True), varied_episode(5, 1, timestamps=True), varied_episode(4, 2)],
        dict(delta_timestamps={"timestamp": [0.0]}),
        r"1 of 3 episodes have no array 'timestamps' \(episode 2\)",
    ),
    "states dtype": (
        [varied_episode(5, 0), varied_episode(6, 1, states=np.float64), varied_episode(4, 2)],
        dict(obs_horizon=2),
        r"array 'states' is float64 \(5,\) per frame in 1 of 3 episodes \(episode 1\) but float32 \(5,\) in "
        r'the others; windows need one layout per file: leave it out with kql_filter="episode_id != 1"',
    ),
    "extra array width": (
        [varied_episode(5, 0, force=2), varied_episode(6, 1, force=3), varied_episode(4, 2, force=2)],
        dict(delta_timestamps={"force": [0.0]}),
        r"array 'force' is float32 \(3,\) per frame in 1 of 3 episodes \(episode 1\) but float32 \(2,\)",
    ),
    "camera channels": (
        [
            varied_episode(5, 0, cameras=RGB),
            varied_episode(6, 1, cameras=GRAY),
            varied_episode(4, 2, cameras=RGB),
        ],
        dict(cameras="front"),
        r"camera 'front' has 1 channel\(s\) in 1 of 3 episodes of .*e\.kdb \(episode 1\) but 3 in the others; "
        r'frames of one camera need one channel count: leave it out with kql_filter="episode_id != 1"',
    ),
}


@pytest.mark.parametrize("case", list(LATE))
def test_a_later_episode_unlike_the_first_is_refused_when_made(tmp_path: Path, case: str) -> None:
    episodes, options, message = LATE[case]
    path = write_raw(tmp_path / "e.kdb", episodes)
    with pytest.raises(KinodbError, match=message) as exc:
        FrameWindows(path, **options)
    fw = FrameWindows(path, **options, kql_filter=kql_advice(str(exc.value)))  # the advice works
    eps = [e for e in range(len(episodes)) if e != int(re.findall(r"\(episode (\d+)\)", str(exc.value))[0])]
    assert len(fw) == sum(len(episodes[e]["actions"]) for e in eps)
    batch = fw.lowdim(np.arange(len(fw)))
    assert sorted(set(batch["episode_index"].tolist())) == eps


def test_cameras_are_those_of_every_kept_episode_not_the_first(tmp_path: Path) -> None:
    both = {"front": (8, 8, 3), "wrist": (4, 4, 3)}
    episodes = [varied_episode(4, 0), varied_episode(5, 1, cameras=both), varied_episode(6, 2, cameras=both)]
    path = write_raw(tmp_path / "late.kdb", episodes)  # episode 0 has no camera
    for options in ({"cameras": "front"}, {"delta_timestamps": {"observation.images.front": [0.0]}}):
        with pytest.raises(
            KinodbError,
            match=r"late\.kdb: 1 of 3 episodes have no camera 'front' \(episode 0\); leave it out with "
            r'kql_filter="episode_id != 0", or pass image_key=False',
        ):
            FrameWindows(path, **options)  # type: ignore[arg-type]
    with pytest.raises(KinodbError, match=r"no camera 'back'; it has \['front', 'wrist'\]"):
        FrameWindows(path, cameras="back")
    fw = FrameWindows(path, cameras=["front", "wrist"], kql_filter="episode_id != 0")
    assert fw.cameras == ["front", "wrist"] and len(fw) == 11
    got = fw.images(np.arange(len(fw)))
    for cam in ("front", "wrist"):
        want = np.concatenate([episodes[e]["images"][cam] for e in (1, 2)]).transpose(0, 3, 1, 2)
        np.testing.assert_array_equal(got[cam][:, 0], want)


def test_the_advice_names_embodiments_ranges_or_how_many(tmp_path: Path) -> None:
    cam = {"front": (4, 4, 3)}
    # Episodes 2..5 lack the camera: one range of episode_ids (with the filter given kept).
    eps = [varied_episode(3, k, cameras=None if 2 <= k <= 5 else cam) for k in range(9)]
    path = write_raw(tmp_path / "range.kdb", eps)
    with pytest.raises(KinodbError) as exc:
        FrameWindows(path, cameras="front", kql_filter="num_frames > 0")
    assert "4 of 9 episodes have no camera 'front' (episodes 2, 3, 4, 5)" in str(exc.value)
    query = kql_advice(str(exc.value))
    assert query == "(num_frames > 0) AND NOT episode_id BETWEEN 2 AND 5"
    assert len(FrameWindows(path, cameras="front", kql_filter=query)) == 5 * 3
    # Their embodiment tells them apart: that filter, not their ids.
    eps = [
        varied_episode(3, k, cameras=cam if k % 2 else None, embodiment="arm" if k % 2 else "biped")
        for k in range(6)
    ]
    path = write_raw(tmp_path / "robots.kdb", eps)
    with pytest.raises(KinodbError, match="they are the 'biped' episodes: leave them out with") as exc:
        FrameWindows(path, cameras="front")
    assert kql_advice(str(exc.value)) == "embodiment != 'biped'"
    # Scattered over many runs: no short filter, said with how many.
    eps = [varied_episode(2, k, cameras=None if k % 2 else cam) for k in range(30)]
    path = write_raw(tmp_path / "scattered.kdb", eps)
    with pytest.raises(
        KinodbError,
        match=r"15 of 30 episodes have no camera 'front' \(episodes 1, 3, 5, 7, 9 and 10 more\); no short "
        r"filter names them: leave them out with a filter listing all 15 of their episode_ids",
    ):
        FrameWindows(path, cameras="front")


def test_a_mixture_source_is_told_its_own_filter_not_kql_filter(tmp_path: Path) -> None:
    a = write_raw(tmp_path / "a.kdb", [varied_episode(4, 0, cameras=RGB), varied_episode(5, 1, cameras=RGB)])
    b = write_raw(
        tmp_path / "b.kdb", [varied_episode(3, k, cameras=RGB if k != 2 else None) for k in range(4)]
    )
    mix = kinodb.Mixture({str(a): 1, str(b): 1}, filters={str(b): "num_frames > 0"})
    with pytest.raises(KinodbError) as exc:
        FrameWindows(mix, cameras="front")
    msg = str(exc.value)
    own = "(num_frames > 0) AND episode_id != 2"
    assert f"mixture source 1 ({b}): 1 of 4 episodes have no camera 'front' (episode 2)" in msg
    assert (
        f"leave it out with Mixture(..., filters={{{str(b)!r}: {own!r}}})" in msg and "kql_filter" not in msg
    )
    fixed = kinodb.Mixture({str(a): 1, str(b): 1}, filters={str(b): own})  # the advice works
    assert FrameWindows(fixed, cameras="front").counts_by_source().tolist() == [9, 9]
    with pytest.raises(
        KinodbError, match=r"a kinodb\.Mixture of the files with filters=.*applies to every file"
    ):
        FrameWindows([a, b], cameras="front")  # a list: kql_filter would apply to both files


def test_the_index_locates_arrays_as_reads_do(tmp_path: Path) -> None:
    # Episodes of other lengths and layouts (cameras in some), filtered: the windows take
    # each array's place from the index; reading every episode finds the same.
    eps = [varied_episode(3 + k, k, force=2, cameras=RGB if k % 2 else None) for k in range(7)]
    path = write_raw(tmp_path / "mixed.kdb", eps)
    fw = FrameWindows(path, delta_timestamps={"force": [-0.1, 0.0]}, kql_filter="episode_id != 3")
    source = fw._sources[0]
    base = source.db._map()
    for name in ("states", "actions", "force"):
        from_index = source._index_starts(name, len(base))
        assert from_index is not None
        read = source._read_starts(name, base)
        np.testing.assert_array_equal(from_index[0], read[0])
        assert from_index[1:] == read[1:]
    batch = fw.lowdim(np.arange(len(fw)))
    kept = [k for k in range(7) if k != 3]
    np.testing.assert_array_equal(
        batch["force"][:, 1], np.concatenate([eps[k]["extra_arrays"]["force"] for k in kept])
    )


def test_frame_sizes_must_agree_within_a_source_not_between_sources(tmp_path: Path) -> None:
    big = {"front": (12, 10, 3)}
    path = write_raw(
        tmp_path / "sizes.kdb", [varied_episode(4, 0, cameras=RGB), varied_episode(5, 1, cameras=big)]
    )
    fw = FrameWindows(path, cameras="front")  # image_size is the loader's to give
    with pytest.raises(
        KinodbError,
        match=r"camera 'front' is \(12, 10, 3\) in 1 of 2 episodes of .*sizes\.kdb \(episode 1\) but "
        r"\(8, 8, 3\) in the others; pass image_size=\(H, W\) to resize them to one",
    ):
        fw.check_image_sizes()
    assert fw.images([0, 6], size=(8, 8))["front"].shape == (2, 1, 3, 8, 8)
    a = write_raw(tmp_path / "a.kdb", [varied_episode(4, 0, cameras=RGB)])
    b = write_raw(tmp_path / "b.kdb", [varied_episode(5, 1, cameras=big)])
    FrameWindows([a, b], cameras="front").check_image_sizes()  # batches by source may differ
