"""Weighted mixtures: exact apportionment, cycling, determinism, sharding, errors, pickling."""

from __future__ import annotations

import json
import math
import os
import pickle
import re
import subprocess
import sys
from collections import Counter
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import kinodb
from kinodb import mixture
from kinodb.errors import EpisodeNotFoundError, QuerySyntaxError
from kinodb.kdb.reader import Database
from kinodb.mixture import Mixture

# Upper 0.1% points of the chi-square distribution: with fixed seeds the draws never change,
# so these bounds test the sampler's law without being flaky.
CHI2_999 = {2: 13.82, 3: 16.27, 5: 20.52, 8: 26.12}

LENGTHS = {"a": [3, 4, 5, 6, 7, 8], "b": [10, 2, 7, 1], "c": [4] * 9}
EMBODIMENT = {"a": "franka", "b": "widowx", "c": "aloha"}


def write_kdb(path: Path, lengths: Sequence[int], *, embodiment: str = "franka", **extra: Any) -> Path:
    """Small state-only episodes with varied task, success and length."""
    rng = np.random.default_rng(len(lengths) * 1000 + sum(lengths))
    with kinodb.Writer(path, mode="x") as w:
        for i, T in enumerate(lengths):
            w.add_episode(
                actions=rng.normal(size=(T, 2)).astype(np.float32),
                states=rng.normal(size=(T, 3)).astype(np.float32),
                embodiment=embodiment,
                task=f"task {i % 2}",
                success=(True, False, None)[i % 3],
                extra={"k": i},
                **extra,
            )
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Three files: a (6 episodes, 3..8 frames), b (4 episodes, 10/2/7/1), c (9 x 4 frames)."""
    folder = tmp_path_factory.mktemp("mix")
    return {
        name: str(write_kdb(folder / f"{name}.kdb", lengths, embodiment=EMBODIMENT[name]))
        for name, lengths in LENGTHS.items()
    }


@pytest.fixture(params=["sorted", "feistel"])
def permutation_kind(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a test with sorted permutations (small passes) and with Feistel ones (large)."""
    if request.param == "feistel":
        monkeypatch.setattr(mixture, "_SORTED_MAX", 0)
    return str(request.param)


def by_source(pairs: np.ndarray, source: int) -> np.ndarray:
    """Positions drawn from ``source``, in epoch order."""
    out: np.ndarray = pairs[pairs[:, 0] == source, 1]
    return out


def chi2(observed: np.ndarray, expected: np.ndarray) -> float:
    return float(((observed - expected) ** 2 / expected).sum())


# -- apportionment -----------------------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(
    weights=st.lists(st.floats(1e-6, 1e6, allow_nan=False, allow_infinity=False), min_size=1, max_size=5),
    n=st.integers(0, 3000),
)
def test_counts_are_the_largest_remainder_apportionment(
    files: dict[str, str], weights: list[float], n: int
) -> None:
    paths = [files["abc"[i % 3]] for i in range(len(weights))]
    with Mixture(list(zip(paths, weights, strict=True)), seed=1) as mix:
        counts = mix.counts(n)
        assert counts.sum() == n and (counts >= 0).all()
        exact = [Fraction(repr(w)) for w in weights]
        quotas = [n * w / sum(exact) for w in exact]
        for c, q in zip(counts.tolist(), quotas, strict=True):
            assert math.floor(q) <= c <= math.ceil(q)
        rem = [q - math.floor(q) for q in quotas]
        up = [r for r, c, q in zip(rem, counts.tolist(), quotas, strict=True) if c > math.floor(q)]
        down = [r for r, c, q in zip(rem, counts.tolist(), quotas, strict=True) if c == math.floor(q) and r]
        assert not up or not down or min(up) >= max(down)
        pairs = mix.weighted_epoch(n)
        assert pairs.shape == (n, 2) and pairs.dtype == np.int64
        np.testing.assert_array_equal(np.bincount(pairs[:, 0], minlength=len(weights)), counts)


@settings(max_examples=60, deadline=None)
@given(ints=st.lists(st.integers(1, 10_000), min_size=1, max_size=4), n=st.integers(0, 2000))
def test_scaling_the_weights_changes_nothing(files: dict[str, str], ints: list[int], n: int) -> None:
    paths = [files["abc"[i % 3]] for i in range(len(ints))]
    with (
        Mixture(list(zip(paths, ints, strict=True)), seed=3) as a,
        Mixture(list(zip(paths, [k / 100 for k in ints], strict=True)), seed=3) as b,
    ):
        np.testing.assert_array_equal(a.counts(n), b.counts(n))
        np.testing.assert_array_equal(a.weighted_epoch(n), b.weighted_epoch(n))
        assert [s.share for s in a.sources()] == pytest.approx([s.share for s in b.sources()])


def test_weights_are_relative(files: dict[str, str]) -> None:
    a = Mixture({files["a"]: 4, files["b"]: 3, files["c"]: 3}, seed=0)
    b = Mixture({files["a"]: 0.4, files["b"]: 0.3, files["c"]: 0.3}, seed=0)
    assert [s.share for s in a.sources()] == pytest.approx([0.4, 0.3, 0.3])
    assert a.counts(10).tolist() == b.counts(10).tolist() == [4, 3, 3]
    assert a.counts(11).tolist() == [5, 3, 3]  # ties go to the earlier source
    np.testing.assert_array_equal(a.weighted_epoch(101), b.weighted_epoch(101))


def test_tiny_weight_is_not_rounded_up(files: dict[str, str]) -> None:
    mix = Mixture([(files["a"], 1e-6), (files["b"], 1.0)], seed=0)
    assert mix.counts(100).tolist() == [0, 100]
    assert mix.counts(3_000_000).tolist() == [3, 2_999_997]


# -- epochs ------------------------------------------------------------------------------------


def test_epoch_is_shuffled_and_names_kept_episodes(files: dict[str, str]) -> None:
    mix = Mixture({files["a"]: 1, files["b"]: 1, files["c"]: 2}, seed=5)
    pairs = mix.weighted_epoch(400)
    assert (np.diff(pairs[:, 0]) != 0).sum() > 100  # interleaved, not in blocks
    for i, name in enumerate("abc"):
        positions = by_source(pairs, i)
        assert set(positions.tolist()) == set(range(len(LENGTHS[name])))


def test_each_source_cycles_without_replacement(files: dict[str, str], permutation_kind: str) -> None:
    mix = Mixture({files["a"]: 2, files["b"]: 1, files["c"]: 3}, seed=11)
    n = 97  # not a multiple of anything: every source ends an epoch mid-pass
    stream = np.concatenate([mix.weighted_epoch(n, epoch_index=e) for e in range(6)])
    for i, name in enumerate("abc"):
        m, seq = len(LENGTHS[name]), by_source(stream, i)
        passes = [seq[j : j + m] for j in range(0, len(seq), m)]
        for p in passes[:-1]:
            assert sorted(p.tolist()) == list(range(m))
        assert len(set(passes[-1].tolist())) == len(passes[-1])
        # each pass is a fresh permutation, not the same order again
        assert len({tuple(p.tolist()) for p in passes[:-1]}) > 1


def test_sorted_permutations_are_uniform() -> None:
    keys = np.arange(1, 24 * 150 + 1, dtype=np.uint64) * np.uint64(0x2545F4914F6CDD1D)
    perms = mixture._sorted_perms(keys, 4)
    counts = np.array(list(Counter(map(tuple, perms.tolist())).values()))
    assert len(counts) == 24
    assert chi2(counts, np.full(24, 150.0)) < 49.7  # 0.1% point, 23 degrees of freedom


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 300_000), seed=st.integers(0, 2**32))
def test_feistel_permutation_is_a_bijection(n: int, seed: int) -> None:
    keys = mixture._round_keys(seed, 9)
    out = mixture._permute(np.arange(n, dtype=np.uint64), n, keys[None, :], None)
    assert np.array_equal(np.sort(out), np.arange(n, dtype=np.uint64))


def test_epoch_numbers_give_different_orders(files: dict[str, str]) -> None:
    mix = Mixture({files["a"]: 1, files["c"]: 1}, seed=2)
    e0, e1 = mix.weighted_epoch(60), mix.weighted_epoch(60, epoch_index=1)
    assert not np.array_equal(e0, e1)
    np.testing.assert_array_equal(np.bincount(e0[:, 0]), np.bincount(e1[:, 0]))
    np.testing.assert_array_equal(mix.weighted_epoch(60), e0)  # and each is reproducible


@pytest.mark.parametrize("world_size", [1, 2, 3, 4, 7])
def test_rank_slices_are_disjoint_and_cover_the_epoch(files: dict[str, str], world_size: int) -> None:
    mix = Mixture({files["a"]: 1, files["b"]: 2, files["c"]: 1}, seed=8)
    full = mix.weighted_epoch(101, epoch_index=4)
    slices = [mix.epoch(101, epoch_index=4, rank=r, world_size=world_size) for r in range(world_size)]
    assert sum(len(s) for s in slices) == 101
    assert max(len(s) for s in slices) - min(len(s) for s in slices) <= 1
    rebuilt = np.empty_like(full)
    for r, s in enumerate(slices):
        rebuilt[r::world_size] = s  # each global slot belongs to exactly one rank
    np.testing.assert_array_equal(rebuilt, full)


def test_zero_length_epoch(files: dict[str, str]) -> None:
    mix = Mixture({files["a"]: 1}, seed=0)
    assert mix.weighted_epoch(0).shape == (0, 2)
    assert mix.epoch(0, rank=1, world_size=2).shape == (0, 2)


# -- sampling ----------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2024])
def test_sample_follows_the_shares(files: dict[str, str], seed: int) -> None:
    mix = Mixture({files["a"]: 5, files["b"]: 3, files["c"]: 2}, seed=seed)
    draws = [mix.sample() for _ in range(1500)]
    sources = np.bincount([d["source"] for d in draws], minlength=3)
    assert chi2(sources, 1500 * np.array([0.5, 0.3, 0.2])) < CHI2_999[2]
    in_c = np.bincount([d["position"] for d in draws if d["source"] == 2], minlength=9)
    assert chi2(in_c, np.full(9, in_c.sum() / 9)) < CHI2_999[8]


def test_sample_returns_the_episode(files: dict[str, str]) -> None:
    mix = Mixture({files["a"]: 1, files["b"]: 1}, seed=4)
    for _ in range(10):
        ep = mix.sample()
        with kinodb.open(files["ab"[ep["source"]]]) as db:
            want = db.read_episode(ep["position"])
        np.testing.assert_array_equal(ep["actions"], want["actions"])
        assert ep["meta"] == want["meta"]


def test_sample_stream_is_independent_of_epochs(files: dict[str, str]) -> None:
    a = Mixture({files["a"]: 1, files["b"]: 1}, seed=6)
    b = Mixture({files["a"]: 1, files["b"]: 1}, seed=6)
    first = [(d["source"], d["position"]) for d in (a.sample() for _ in range(20))]
    b.weighted_epoch(500)
    assert [(d["source"], d["position"]) for d in (b.sample() for _ in range(20))] == first


def test_seed_zero_is_an_ordinary_seed(files: dict[str, str]) -> None:
    mix = Mixture({files["a"]: 1, files["b"]: 1, files["c"]: 1}, seed=0)
    pairs = mix.weighted_epoch(60)
    assert len({tuple(p) for p in pairs.tolist()}) == 19  # every kept episode appears
    draws = {(d["source"], d["position"]) for d in (mix.sample() for _ in range(60))}
    assert len(draws) > 10
    other = Mixture({files["a"]: 1, files["b"]: 1, files["c"]: 1}, seed=1)
    assert not np.array_equal(other.weighted_epoch(60), pairs)


DETERMINISM_SCRIPT = """
import json, sys
from kinodb.mixture import Mixture
mix = Mixture(json.loads(sys.argv[1]), seed=0, weight_by=sys.argv[2])
draws = [(d["source"], d["position"]) for d in (mix.sample() for _ in range(25))]
print(json.dumps({"epoch": mix.weighted_epoch(80, epoch_index=3).tolist(), "draws": draws}))
"""


@pytest.mark.integration
@pytest.mark.parametrize("weight_by", ["episode", "frame"])
def test_same_seed_same_sequence_in_another_process(files: dict[str, str], weight_by: str) -> None:
    spec = [[files["a"], 2.5], [files["b"], 1], [files["c"], 0.5]]
    mix = Mixture(spec, seed=0, weight_by=weight_by)  # type: ignore[arg-type]
    here = {
        "epoch": mix.weighted_epoch(80, epoch_index=3).tolist(),
        "draws": [[d["source"], d["position"]] for d in (mix.sample() for _ in range(25))],
    }
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    proc = subprocess.run(
        [sys.executable, "-c", DETERMINISM_SCRIPT, json.dumps(spec), weight_by],
        capture_output=True, text=True, check=True, env=env,
    )  # fmt: skip
    assert json.loads(proc.stdout) == here


# -- frame weighting ---------------------------------------------------------------------------


def test_frame_weighting_shares(files: dict[str, str]) -> None:
    by_ep = Mixture({files["a"]: 1, files["b"]: 1}, seed=0).sources()
    by_fr = Mixture({files["a"]: 1, files["b"]: 1}, seed=0, weight_by="frame").sources()
    mean = {"a": 33 / 6, "b": 20 / 4}
    assert [s.episode_share for s in by_ep] == pytest.approx([0.5, 0.5])
    assert by_ep[0].frame_share == pytest.approx(mean["a"] / (mean["a"] + mean["b"]))
    assert [s.frame_share for s in by_fr] == pytest.approx([0.5, 0.5])
    assert by_fr[0].episode_share == pytest.approx((1 / mean["a"]) / (1 / mean["a"] + 1 / mean["b"]))
    assert (by_fr[1].episodes, by_fr[1].frames) == (4, 20)


def test_frame_weighting_full_pass_is_exact(files: dict[str, str], permutation_kind: str) -> None:
    mix = Mixture({files["b"]: 1, files["c"]: 1}, seed=3, weight_by="frame")
    pairs = mix.weighted_epoch(2 * 20 * 2)  # source b: 40 draws = two passes over its 20 frames
    np.testing.assert_array_equal(np.bincount(by_source(pairs, 0), minlength=4), 2 * np.array(LENGTHS["b"]))
    # the next epoch continues the cycle: again exactly two passes
    nxt = mix.weighted_epoch(80, epoch_index=1)
    np.testing.assert_array_equal(np.bincount(by_source(nxt, 0), minlength=4), 2 * np.array(LENGTHS["b"]))


def test_frame_weighting_large_source_uses_frame_passes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lengths = [1000 + 500 * i for i in range(8)]  # 22000 frames, a pass over the lowered sort limit
    path = write_kdb(tmp_path / "long.kdb", lengths)
    monkeypatch.setattr(mixture, "_SORTED_MAX", 1000)
    mix = Mixture({path: 1}, seed=9, weight_by="frame")
    assert mix.sources()[0].frames == sum(lengths)
    pairs = mix.weighted_epoch(sum(lengths) + 5)
    counts = np.bincount(pairs[:, 1], minlength=8)
    assert (counts - np.array(lengths)).sum() == 5 and ((counts - np.array(lengths)) >= 0).all()


def test_frame_weighted_sample_is_proportional_to_length(files: dict[str, str]) -> None:
    mix = Mixture({files["b"]: 1}, seed=21, weight_by="frame")
    got = np.bincount([mix.sample()["position"] for _ in range(1000)], minlength=4)
    assert chi2(got, 1000 * np.array(LENGTHS["b"]) / 20) < CHI2_999[3]


# -- global index, description, protocols ------------------------------------------------------


def test_global_index(files: dict[str, str]) -> None:
    with Mixture([files["b"], (files["a"], 2.0)], seed=0) as mix:
        assert len(mix) == mix.num_episodes() == 10 and mix.num_frames() == 53
        assert [mix.locate(i) for i in (0, 3, 4, 9)] == [(0, 0), (0, 3), (1, 0), (1, 5)]
        ep = mix.read_global(5)
        assert (ep["source"], ep["position"]) == (1, 1) and ep["meta"]["num_frames"] == 4
        assert mix[-1]["position"] == 5
        assert sum(1 for _ in mix) == 10
        with pytest.raises(EpisodeNotFoundError, match=r"global index 10 out of range: the mixture has 10"):
            mix.read_global(10)
        with pytest.raises(IndexError):
            mix.read_global(-1)
        assert mix.database(1).path() == files["a"]


def test_sources_describe_each_source(files: dict[str, str]) -> None:
    mix = Mixture({files["a"]: 3, files["c"]: 1}, seed=0)
    a, c = mix.sources()
    assert (a.index, a.path, a.filter, a.episodes, a.frames, a.weight) == (0, files["a"], None, 6, 33, 3.0)
    assert (c.share, c.episode_share) == (0.25, 0.25)
    assert mix.num_sources() == 2 and mix.seed == 0 and mix.weight_by == "episode"
    assert "2 sources" in repr(mix)


def test_builder_matches_the_constructor(files: dict[str, str]) -> None:
    built = Mixture.builder().add(files["a"], 4).add(Path(files["b"])).seed(0).weight_by("frame").build()
    direct = Mixture([(files["a"], 4), files["b"]], seed=0, weight_by="frame")
    assert built.sources() == direct.sources()
    np.testing.assert_array_equal(built.weighted_epoch(50), direct.weighted_epoch(50))


def test_clashing_extra_array_is_renamed(tmp_path: Path) -> None:
    p = tmp_path / "y.kdb"
    with kinodb.Writer(p) as w:
        w.add_episode(actions=np.zeros((3, 1), np.float32), extra_arrays={"position": np.ones((3, 2))})
    ep = Mixture({p: 1}, seed=0).sample()
    assert ep["position"] == 0 and ep["extra.position"].shape == (3, 2)


def test_pickles_by_spec(files: dict[str, str]) -> None:
    mix = Mixture([(files["a"], 2), (files["b"], 1)], seed=7, weight_by="frame")
    blob = pickle.dumps(mix)
    assert len(blob) < 1000  # the spec, not the arrays
    mix.sample()
    mix.close()
    copy = pickle.loads(blob)
    fresh = Mixture([(files["a"], 2), (files["b"], 1)], seed=7, weight_by="frame")
    assert copy.sources() == fresh.sources()
    np.testing.assert_array_equal(copy.epoch(30, epoch_index=2, rank=1, world_size=2),
                                  fresh.epoch(30, epoch_index=2, rank=1, world_size=2))  # fmt: skip
    assert [copy.sample()["position"] for _ in range(5)] == [fresh.sample()["position"] for _ in range(5)]


def test_pickles_at_the_commits_it_read(tmp_path: Path) -> None:
    """A copy (a DataLoader worker's) reads the episodes the mixture read: one appended
    since is left out; a file replaced since is read as it is now."""
    a = write_kdb(tmp_path / "a.kdb", [3, 5], embodiment="franka")
    b = write_kdb(tmp_path / "b.kdb", [4], embodiment="ur5")
    mix = Mixture({a: 1, b: 1}, seed=3, filters={a: "embodiment = 'franka'"})
    blob = pickle.dumps(mix)
    with kinodb.Writer(a, mode="a") as w:
        w.add_episode(actions=np.zeros((6, 2), np.float32), embodiment="franka")
    copy = pickle.loads(blob)
    assert copy.sources() == mix.sources() and copy.num_episodes() == 3
    np.testing.assert_array_equal(copy.epoch(12, epoch_index=1), mix.epoch(12, epoch_index=1))
    assert Mixture({a: 1, b: 1}, filters={a: "embodiment = 'franka'"}).num_episodes() == 4
    os.remove(b)
    write_kdb(b, [4, 4], embodiment="ur5")  # replaced: its old commit is gone
    assert pickle.loads(blob).num_episodes() == 2 + 2


# -- errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize("weight", [0, -1.5, float("nan"), float("inf"), -float("inf")])
def test_bad_weights_name_the_source(files: dict[str, str], weight: float) -> None:
    with pytest.raises(
        kinodb.MixtureError, match=r"source 1 \(.*b\.kdb\): weight must be a positive finite number"
    ):
        Mixture([(files["a"], 1), (files["b"], weight)])


@pytest.mark.parametrize("weight", ["2", True, None])
def test_non_numeric_weights(files: dict[str, str], weight: Any) -> None:
    with pytest.raises(TypeError, match=r"source 0 .*weight must be a number"):
        Mixture([(files["a"], weight)])


def test_no_sources() -> None:
    empty: dict[str, float] | list[str]
    for empty in ({}, []):
        with pytest.raises(ValueError, match="at least one source"):
            Mixture(empty)
    with pytest.raises(ValueError, match="at least one source"):
        Mixture.builder().build()


def test_missing_file_names_the_source(files: dict[str, str], tmp_path: Path) -> None:
    missing = str(tmp_path / "nope.kdb")
    with pytest.raises(FileNotFoundError, match="mixture source 1") as exc:
        Mixture({files["a"]: 1, missing: 1})
    assert exc.value.filename == missing
    text = tmp_path / "notes.kdb"
    text.write_text("not a dataset")
    with pytest.raises(kinodb.FormatError, match=r"mixture source 1: .*notes\.kdb"):
        Mixture({files["a"]: 1, str(text): 1})


def test_a_folder_source_names_the_source_and_a_file_in_it(files: dict[str, str], tmp_path: Path) -> None:
    folder = tmp_path / "shards"
    folder.mkdir()
    said = "mixture source {}: a folder, not a .kdb file; give the path of a .kdb file"
    with pytest.raises(kinodb.FormatError, match=re.escape(f"{folder}: {said.format(1)}") + "$") as info:
        Mixture({files["a"]: 1, str(folder): 1})
    assert isinstance(info.value, IsADirectoryError) and info.value.filename == str(folder)  # as it was
    write_kdb(folder / "part-1.kdb", [3])
    write_kdb(folder / "part-0.kdb", [3])
    example = f"{folder}: {said.format(0)}, e.g. {folder / 'part-0.kdb'}"
    with pytest.raises(kinodb.FormatError, match=re.escape(example) + "$"):
        Mixture([folder])


def test_other_os_errors_keep_their_type_and_name_the_source(files: dict[str, str]) -> None:
    under_a_file = os.path.join(files["a"], "x.kdb")
    with pytest.raises(NotADirectoryError, match="mixture source 1: Not a directory") as info:
        Mixture({files["b"]: 1, under_a_file: 1})
    assert info.value.filename == under_a_file


@pytest.mark.parametrize("weight", [10**400, Fraction(10**400, 3)], ids=["int", "fraction"])
def test_a_weight_beyond_a_float_names_the_source_and_the_fix(files: dict[str, str], weight: Any) -> None:
    with pytest.raises(kinodb.MixtureError, match=r"source 1 \(.*b\.kdb\): weight is too large for a float .*"
                       r"divide them all by the same number"):  # fmt: skip
        Mixture([(files["a"], 1), (files["b"], weight)])
    assert Mixture([(files["a"], 10**300), (files["b"], 10**300)]).counts(4).tolist() == [2, 2]


def test_source_without_episodes(files: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    # The writer refuses to commit an empty file; an empty (e.g. legacy) file reads as length 0.
    monkeypatch.setattr(Database, "__len__", lambda self: 0)
    with pytest.raises(kinodb.MixtureError, match=r"source 0 \(.*a\.kdb\): it has no episodes"):
        Mixture({files["a"]: 1})


def test_bad_options(files: dict[str, str]) -> None:
    mix = Mixture({files["a"]: 1})
    assert mix.seed == 42
    for bad in (-1, 1.5, True, "3"):
        with pytest.raises(ValueError, match="seed must be a non-negative integer"):
            Mixture({files["a"]: 1}, seed=bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="weight_by must be 'episode' or 'frame'"):
        Mixture({files["a"]: 1}, weight_by="frames")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="n must be"):
        mix.weighted_epoch(-1)
    with pytest.raises(ValueError, match="epoch_index must be"):
        mix.weighted_epoch(5, epoch_index=-1)
    with pytest.raises(ValueError, match=r"rank must be in 0\.\.1"):
        mix.epoch(5, rank=2, world_size=2)
    with pytest.raises(ValueError, match="world_size must be at least 1"):
        mix.epoch(5, world_size=0)
    with pytest.raises(IndexError, match="source 3 out of range"):
        mix.database(3)
    with pytest.raises(TypeError, match="not one path"):
        Mixture(files["a"])
    with pytest.raises(TypeError, match=r"expected a path, \(path, weight\)"):
        Mixture([(files["a"], 1, None, 4)])


# -- filters -----------------------------------------------------------------------------------


@pytest.fixture
def fake_query(monkeypatch: pytest.MonkeyPatch) -> None:
    """Stand in for KQL: 'long' keeps episodes of 5+ frames, 'none' keeps nothing."""

    def query(self: Database, kql: str, *, limit: int | None = None, absent: object = ()) -> np.ndarray:
        if kql == "broken":
            raise QuerySyntaxError("unexpected end of query", position=6)
        frames = self.episodes()["num_frames"]
        keep = frames >= 5 if kql == "long" else np.zeros(len(frames), bool)
        return np.flatnonzero(keep).astype(np.int64)

    monkeypatch.setattr(Database, "query", query)


@pytest.mark.usefixtures("fake_query")
def test_filters_select_episodes(files: dict[str, str]) -> None:
    mix = Mixture([(files["a"], 1, "long"), (files["b"], 1, "long"), (files["c"], 1)], seed=0)
    a, b, c = mix.sources()
    assert (a.episodes, a.frames, a.filter) == (4, 26, "long") and (b.episodes, b.frames) == (2, 17)
    assert c.episodes == 9 and len(mix) == 15
    pairs = mix.weighted_epoch(300)
    assert set(by_source(pairs, 0).tolist()) == {2, 3, 4, 5}
    assert set(by_source(pairs, 1).tolist()) == {0, 2}
    assert [mix.locate(i) for i in (0, 4, 5)] == [(0, 2), (1, 0), (1, 2)]
    by_map = Mixture(
        {files["a"]: 1, files["b"]: 1, files["c"]: 1}, filters={files["a"]: "long", files["b"]: "long"}
    )
    assert by_map.sources()[:2] == [a, b]
    built = Mixture.builder().add(files["b"], 1, filter="long").build()
    assert built.sources()[0].episodes == 2
    assert pickle.loads(pickle.dumps(built)).sources() == built.sources()


@pytest.mark.usefixtures("fake_query")
def test_filter_errors_name_the_source(files: dict[str, str]) -> None:
    with pytest.raises(ValueError, match=r"source 1 \(.*b\.kdb\): its filter 'none' keeps none of its 4"):
        Mixture([(files["a"], 1), (files["b"], 1, "none")])
    with pytest.raises(QuerySyntaxError, match=r"source 0 \(.*a\.kdb\): filter 'broken'") as exc:
        Mixture([(files["a"], 1, "broken")])
    assert exc.value.position == 6
    with pytest.raises(ValueError, match="not sources"):
        Mixture({files["a"]: 1}, filters={files["b"]: "long"})
    with pytest.raises(ValueError, match="in its entry and in filters="):
        Mixture([(files["a"], 1, "long")], filters={files["a"]: "long"})


def test_real_kql_filters(files: dict[str, str]) -> None:
    mix = Mixture(
        [(files["a"], 1, "num_frames > 5"), (files["b"], 1, "success = true"), (files["c"], 1)], seed=0
    )
    a, b, _ = mix.sources()
    assert (a.episodes, a.frames) == (3, 21)
    assert (b.episodes, b.frames) == (2, 11)  # episodes 0 and 3 succeeded
    assert set(by_source(mix.weighted_epoch(200), 1).tolist()) == {0, 3}
    with pytest.raises(ValueError, match=r"source 0 .*keeps none"):
        Mixture([(files["a"], 1, "embodiment = 'widowx'")])
    with pytest.raises(QuerySyntaxError, match=r"source 0 \(.*a\.kdb\): filter"):
        Mixture([(files["a"], 1, "num_frames >")])


def test_a_mixture_or_an_episode_as_sources_is_a_short_type_error(files: dict[str, str]) -> None:
    with Mixture({files["a"]: 1.0, files["b"]: 2.0}) as mix:
        with pytest.raises(TypeError, match=r"not a Mixture; a Mixture is used as it is") as err:
            Mixture(mix)  # type: ignore[arg-type]
        rebuilt = Mixture({s.path: s.weight for s in mix.sources()}, seed=7)  # what the message advises
        assert [s.weight for s in rebuilt.sources()] == [1.0, 2.0]
        rebuilt.close()
        with kinodb.open(files["a"]) as db, pytest.raises(TypeError) as ep_err:
            Mixture([db.read_episode(0)])
    assert len(str(err.value)) < 300 and len(str(ep_err.value)) < 300  # not a whole episode printed
    assert "got {" in str(ep_err.value) and "(dict)" in str(ep_err.value)


def test_one_kql_string_as_filters_is_a_type_error_saying_how(files: dict[str, str]) -> None:
    sources = {files["a"]: 1, files["b"]: 1}
    with pytest.raises(
        TypeError, match=r"filters must be a mapping \{path: kql\}, got one KQL string"
    ) as err:
        Mixture(sources, filters="success = true")  # type: ignore[arg-type]
    assert "filters={path: 'success = true' for path in sources}" in str(err.value)
    assert "(path, weight, 'success = true')" in str(err.value)
    with pytest.raises(TypeError, match=r"filters must be a mapping \{path: kql\}, got \[.*\] \(list\)"):
        Mixture(sources, filters=["success = true"])  # type: ignore[arg-type]
    # Both ways the message gives keep the same episodes.
    every = Mixture(sources, filters={path: "success = true" for path in sources})
    entries = Mixture([(path, 1, "success = true") for path in sources])
    assert [(s.episodes, s.frames) for s in every.sources()] == [
        (s.episodes, s.frames) for s in entries.sources()
    ]
    assert every.sources()[1].episodes == 2  # b.kdb's episodes 0 and 3 succeeded
    every.close()
    entries.close()


def test_from_mixture_refuses_one_kql_string_as_filters_too(files: dict[str, str]) -> None:
    kinodb_torch = pytest.importorskip("kinodb.torch", reason="from_mixture needs torch")
    with pytest.raises(TypeError, match=r"filters must be a mapping \{path: kql\}, got one KQL string"):
        kinodb_torch.from_mixture({files["a"]: 1, files["b"]: 1}, filters="success = true", obs_horizon=1)
