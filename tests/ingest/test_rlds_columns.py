"""RLDS ingest of many episodes at once (`RLDSSource.read_columns`, `Writer._add_columns`):
the file is byte for byte the one the ingest writes episode by episode, on datasets
that take the shortcut and on those that fall back to it in part (a task that changes
within an episode, a bad record, NaN in episode metadata, cameras, a new layout)."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from unittest import mock

import _rlds_writer as w
import numpy as np
import pytest

import kinodb
from _factories import encode_image, smooth_frames
from kinodb.ingest import _run, ingest
from kinodb.kdb.writer import Writer

STEP = {
    "is_first": w.tensor([], "bool"), "is_last": w.tensor([], "bool"), "is_terminal": w.tensor([], "bool"),
    "action": w.tensor([3], "float32"), "reward": w.tensor([], "float32"), "discount": w.tensor([], "float32"),
    "language_instruction": w.text(),
    "observation": w.features_dict({"state": w.tensor([4], "float32"), "count": w.tensor([2], "int64")}),
}  # fmt: skip
META = {"file_path": w.text(), "score": w.tensor([], "float32")}
STEP_OBS = ("state", "count", "image")


def _episode(rng: np.random.Generator, i: int, T: int) -> dict[str, Any]:
    last = (np.arange(T) == T - 1).astype(np.int64)
    return {
        "steps/is_first": (np.arange(T) == 0).astype(np.int64), "steps/is_last": last,
        "steps/is_terminal": last * (i % 3 != 0),
        "steps/action": rng.normal(size=(T, 3)).astype(np.float32),
        "steps/reward": (last * (i % 2)).astype(np.float32), "steps/discount": np.ones(T, np.float32),
        "steps/language_instruction": [f"task {i % 4}".encode()] * T,
        "steps/observation/state": rng.normal(size=(T, 4)).astype(np.float32),
        "steps/observation/count": rng.integers(-5, 5, size=(T, 2)),
        "episode_metadata/file_path": [f"/data/{i}.pkl".encode()],
        "episode_metadata/score": np.array([i / 7], np.float32),
    }  # fmt: skip


def _dataset(root: Path, n: int, *, change: dict[int, dict[str, Any]] | None = None, step: Any = STEP,
             images: bool = False, meta: Any = META) -> Path:  # fmt: skip
    rng = np.random.default_rng(n)
    eps = []
    for i in range(n):
        T = int(rng.integers(1, 8))
        ep = _episode(rng, i, T)
        if images:
            ep["steps/observation/image"] = [
                encode_image(f, "JPEG", quality=90) for f in smooth_frames(rng, (T, 8, 8, 3))
            ]
        ep.update({k: v(T) if callable(v) else v for k, v in (change or {}).get(i, {}).items()})
        declared = (
            {f"steps/{k}" for k in step}
            | {f"steps/observation/{k}" for k in STEP_OBS}
            | {f"episode_metadata/{k}" for k in meta}
        )
        eps.append({k: v for k, v in ep.items() if k in declared})
    cut = n // 2
    features = {"steps": w.dataset(step), **({"episode_metadata": w.features_dict(meta)} if meta else {})}
    records = [w.episode_example(e) for e in eps]
    return w.write_tfds(root, "toy", {"train": [records[:cut], records[cut:]]}, features)


def _both(
    tmp_path: Path, root: Path, monkeypatch: pytest.MonkeyPatch, **options: Any
) -> tuple[bytes, list[bool]]:
    """The ingest's bytes with episodes taken at once and one by one (asserted equal), and
    what each `_add_columns` call returned."""
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    taken: list[bool] = []
    real = Writer._add_columns

    def spy(self: Writer, *args: Any, **kwargs: Any) -> bool:
        taken.append(real(self, *args, **kwargs))
        return taken[-1]

    with mock.patch.object(Writer, "_add_columns", spy):
        ingest(root, tmp_path / "at_once.kdb", **options)
    with mock.patch.object(_run, "COLUMN_EPISODES", 1):
        ingest(root, tmp_path / "one_by_one.kdb", **options)
    at_once = (tmp_path / "at_once.kdb").read_bytes()
    assert at_once == (tmp_path / "one_by_one.kdb").read_bytes()
    return at_once, taken


def test_episodes_taken_at_once_write_the_file_written_one_by_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = _dataset(tmp_path / "toy" / "1.0.0", 150)  # runs of 64: 64, 11 | 64, 11 across the shards
    _, taken = _both(tmp_path, root, monkeypatch, verify=True)
    assert taken and all(taken)
    with kinodb.open(tmp_path / "at_once.kdb") as db:
        assert len(db) == 150
        assert db.read_meta(7)["score"] == pytest.approx(1.0) and db.read_meta(7)["task"] == "task 3"


@pytest.mark.parametrize(
    "options",
    [
        {"dtype": "float64"},
        {"embodiment": "widowx", "task": "stack", "fps": 5.0},
        {"episodes": "3-80,85", "max_episodes": 70},
        {"state_keys": ["count", "state"]},
    ],
    ids=["dtype", "overrides", "selection", "state_keys"],
)
def test_the_ingest_options_apply_to_episodes_taken_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, options: dict[str, Any]
) -> None:
    root = _dataset(tmp_path / "toy" / "1.0.0", 90)
    _, taken = _both(tmp_path, root, monkeypatch, **options)
    assert taken and all(taken)


def test_episodes_without_terminals_rewards_or_metadata_are_taken_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # add_episode's defaults, per episode: the last step terminal, no rewards (total unknown)
    step = {k: STEP[k] for k in ("is_first", "is_last", "action", "observation")}
    root = _dataset(tmp_path / "toy" / "1.0.0", 90, step=step, meta={})
    _, taken = _both(tmp_path, root, monkeypatch)
    assert taken and all(taken)
    with kinodb.open(tmp_path / "at_once.kdb") as db:
        ends = [db.read_episode(i)["is_terminal"] for i in (0, 50)]
        assert all(e[-1] and not e[:-1].any() for e in ends) and db.read_meta(50)["total_reward"] is None


def test_a_run_that_cannot_be_taken_at_once_is_taken_one_by_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 260 episodes in runs of 64: a task that changes within episode 5 (per-frame tasks), NaN
    # in episode 140's metadata (left out, with a warning), and too few actions at 150.
    change = {
        5: {"steps/language_instruction": [b"a", b"b"], "steps/is_first": np.array([1, 0]),
            "steps/is_last": np.array([0, 1]), "steps/is_terminal": np.array([0, 1]),
            "steps/action": np.zeros((2, 3), np.float32), "steps/reward": np.zeros(2, np.float32),
            "steps/discount": np.ones(2, np.float32), "steps/observation/state": np.zeros((2, 4), np.float32),
            "steps/observation/count": np.zeros((2, 2), np.int64)},
        140: {"episode_metadata/score": np.array([np.nan], np.float32)},
        150: {"steps/action": np.zeros(1, np.float32)},
    }  # fmt: skip
    root = _dataset(tmp_path / "toy" / "1.0.0", 260, change=change)
    _, taken = _both(tmp_path, root, monkeypatch, on_error="skip")
    assert taken == [True, True, True]  # episodes 64-127, 192-255 and 256-259 at once; the rest one by one
    with kinodb.open(tmp_path / "at_once.kdb") as db:
        assert len(db) == 259 and db.read_meta(5)["tasks"] == ["a", "b"]
        assert "score" not in db.read_meta(140)
        assert [s["episode"] for s in db.metadata()["ingest"]["skipped"]] == [
            "toy-train.tfrecord-00001-of-00002:20"
        ]


def test_cameras_are_taken_at_once_only_when_left_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    step = {**STEP, "observation": w.features_dict({**STEP["observation"]["featuresDict"]["features"],
                                                     "image": w.image([8, 8, 3], "jpeg")})}  # fmt: skip
    root = _dataset(tmp_path / "toy" / "1.0.0", 70, step=step, images=True)
    (tmp_path / "with").mkdir()
    (tmp_path / "without").mkdir()
    _, taken = _both(tmp_path / "with", root, monkeypatch)
    assert taken == []
    _, taken = _both(tmp_path / "without", root, monkeypatch, images=False)
    assert taken and all(taken)


def test_columns_the_writer_refuses_add_nothing(tmp_path: Path) -> None:
    with kinodb.Writer(tmp_path / "f.kdb") as out:
        actions = np.zeros((5, 2), np.float32)
        common = {"actions": actions, "states": None, "rewards": np.zeros(5, np.float32), "is_terminal": None,
                  "extra_arrays": {}, "embodiment": "arm", "fps": 10.0}  # fmt: skip
        # NaN cannot be stored in an extra field: nothing added, adding each one says why
        bad = [{"x": 1.0}, {"x": float("nan")}]
        pos = out._pos
        assert not out._add_columns([2, 3], **common, tasks=["a", "b"], successes=[None, True], extras=bad)
        assert len(out) == 0 and out._pos == pos
        # steps that are not the arrays' (4 of 5)
        assert not out._add_columns(
            [2, 2], **common, tasks=["a", "b"], successes=[None, None], extras=[{}, {}]
        )
        assert len(out) == 0 and out._pos == pos
        assert out._add_columns(
            [2, 3], **common, tasks=["a", "b"], successes=[None, True], extras=[{}, {"x": 1}]
        )
        assert len(out) == 2
    with kinodb.open(tmp_path / "f.kdb") as db:
        assert [db.read_meta(i)["task"] for i in range(2)] == ["a", "b"]
        assert [len(db.read_episode(i)["actions"]) for i in range(2)] == [2, 3]
        assert db.read_meta(1)["success"] is True and db.read_meta(1)["x"] == 1


def test_columns_sum_each_episodes_rewards_as_add_episode_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each episode's total must be the one its own sum gives, bit for bit (NumPy adds in
    # another order over runs, np.add.reduceat), and not finite (+inf and -inf) is unknown.
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    rng = np.random.default_rng(3)
    lengths = [1, 9000, 3, 20000, 777, 5, 17, 64]
    # of many magnitudes, so that the float64 sums are not exact and the order of adding counts
    rewards = (rng.normal(size=sum(lengths)) * 10.0 ** rng.integers(-3, 7, sum(lengths))).astype(np.float32)
    rewards[9001] = np.inf
    rewards[9002] = -np.inf
    actions = rng.normal(size=(sum(lengths), 2)).astype(np.float32)
    n = len(lengths)
    common = {"embodiment": "arm", "fps": 10.0, "tasks": ["t"] * n, "successes": [None] * n,
              "extras": [{}] * n}  # fmt: skip
    with kinodb.Writer(tmp_path / "at_once.kdb") as out:
        out.add_episode(actions=actions[:1], rewards=rewards[:1], task="t", embodiment="arm")  # the layout
        assert out._add_columns(
            lengths,
            actions=actions,
            states=None,
            rewards=rewards,
            is_terminal=None,
            extra_arrays={},
            **common,
        )
    with kinodb.Writer(tmp_path / "one_by_one.kdb") as out:
        out.add_episode(actions=actions[:1], rewards=rewards[:1], task="t", embodiment="arm")
        start = 0
        for T in lengths:
            out.add_episode(actions=actions[start : start + T], rewards=rewards[start : start + T], task="t",
                            embodiment="arm")  # fmt: skip
            start += T
    with kinodb.open(tmp_path / "at_once.kdb") as a, kinodb.open(tmp_path / "one_by_one.kdb") as b:
        totals = [a.read_meta(i)["total_reward"] for i in range(1, n + 1)]
        assert totals == [b.read_meta(i)["total_reward"] for i in range(1, n + 1)]
        assert totals[2] is None and totals[3] == float(rewards[9004:29004].astype(np.float64).sum())
    assert (tmp_path / "at_once.kdb").read_bytes() == (tmp_path / "one_by_one.kdb").read_bytes()


def test_a_run_whose_reading_fails_is_converted_one_episode_at_a_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kinodb.ingest.rlds import RLDSSource

    root = _dataset(tmp_path / "toy" / "1.0.0", 70)
    calls = []

    def broken(self: RLDSSource, keys: list[str], max_bytes: int) -> Any:
        calls.append(len(keys))
        raise RuntimeError("a bug in the run converter")

    monkeypatch.setattr(RLDSSource, "read_columns", broken)
    _, taken = _both(tmp_path, root, monkeypatch)
    assert calls == [64, 6] and taken == []  # both runs tried, then every episode converted alone
    with kinodb.open(tmp_path / "at_once.kdb") as db:
        assert len(db) == 70


def test_the_callers_task_takes_out_per_frame_tasks_as_one_by_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A list-valued `tasks` field and a `task_index` array are per-frame tasks, which the
    # caller's task replaces (override_task); with no task given they are kept.
    step = {**STEP, "task_index": w.tensor([], "int64")}
    meta = {**META, "tasks": w.tensor([2], "int64")}
    change = {i: {"steps/task_index": lambda T: np.zeros(T, np.int64), "episode_metadata/tasks": np.array([1, 2])}
              for i in range(20)}  # fmt: skip
    root = _dataset(tmp_path / "toy" / "1.0.0", 20, change=change, step=step, meta=meta)
    for name, options in (("given", {"task": "stack"}), ("kept", {})):
        (tmp_path / name).mkdir()
        _, taken = _both(tmp_path / name, root, monkeypatch, **options)
        with kinodb.open(tmp_path / name / "at_once.kdb") as db:
            meta_1, arrays = db.read_meta(1), db.read_episode(1)
        if options:
            assert (
                taken == []
                and meta_1["task"] == "stack"
                and "tasks" not in meta_1
                and "task_index" not in arrays
            )
        else:
            assert taken == [True] and meta_1["tasks"] == [1, 2] and "task_index" in arrays


def test_a_run_holds_as_many_episodes_as_their_records_bytes_allow(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = _dataset(tmp_path / "toy" / "1.0.0", 40)
    sizes = sorted(p.stat().st_size for p in root.glob("*.tfrecord-*"))
    monkeypatch.setattr(_run, "COLUMN_BYTES", sizes[0] // 6)  # some 3 of the 20 records of a shard
    taken: list[int] = []
    real = Writer._add_columns

    def spy(self: Writer, lengths: list[int], **kwargs: Any) -> bool:
        taken.append(len(lengths))
        return real(self, lengths, **kwargs)

    with mock.patch.object(Writer, "_add_columns", spy):
        _both(tmp_path, root, monkeypatch)
    assert len(taken) > 8 and sum(taken) <= 40 and max(taken) < 8
    with kinodb.open(tmp_path / "at_once.kdb") as db:
        assert len(db) == 40


SAMPLES = Path(__file__).resolve().parents[2].parent / "shared" / "samples"
BRIDGE = SAMPLES / "octo_bridge_rlds" / "bridge_dataset" / "1.0.0"


@pytest.mark.skipif(not BRIDGE.is_dir(), reason=f"real Bridge RLDS sample not found at {BRIDGE}")
def test_the_bridge_sample_without_its_cameras_is_taken_in_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, taken = _both(tmp_path, BRIDGE, monkeypatch, images=False, verify=True)
    assert taken and all(taken)  # its records, JPEG frames and all, fit a few to a run
    with kinodb.open(tmp_path / "at_once.kdb") as db:
        assert len(db) == 25 and db.read_meta(0)["embodiment"] == "widowx"
