"""RLDS ingest: TFDS shard lengths count records, episodes without steps, one-value reward
tensors, the is_first/is_last check of a per-episode record, messages that say what to do,
NaN in episode metadata, and per-step string tensors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import _rlds_writer as w
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import kinodb
from _factories import encode_image, smooth_frames
from kinodb.errors import ConversionError
from kinodb.ingest import ingest

SKIP = ", or pass on_error='skip'"  # as Python callers are told
STEPS = {
    "is_first": w.tensor([], "bool"), "is_last": w.tensor([], "bool"), "action": w.tensor([2], "float32"),
    "reward": w.tensor([], "float32"),
    "observation": w.features_dict({"state": w.tensor([3], "float32"), "image": w.image([16, 12, 3], "jpeg")}),
}  # fmt: skip
FEATURES = {"steps": w.dataset(STEPS)}


def _episode(rng: np.random.Generator, T: int, **extra: Any) -> dict[str, Any]:
    return {
        "steps/is_first": (np.arange(T) == 0).astype(np.int64), "steps/is_last": (np.arange(T) == T - 1).astype(np.int64),
        "steps/action": rng.normal(size=(T, 2)).astype(np.float32),
        "steps/reward": (np.arange(T) == T - 1).astype(np.float32),
        "steps/observation/state": rng.normal(size=(T, 3)).astype(np.float32),
        "steps/observation/image": [encode_image(f, "JPEG", quality=90) for f in smooth_frames(rng, (T, 16, 12, 3))],
        **extra,
    }  # fmt: skip


def _episodes(lengths: list[int], **extra: Any) -> list[dict[str, Any]]:
    rng = np.random.default_rng(9)
    return [_episode(rng, T, **extra) for T in lengths]


def _write(root: Path, eps: list[dict[str, Any]], features: dict[str, Any] | None = FEATURES) -> Path:
    return w.write_tfds(root, "toy", {"train": [[w.episode_example(e) for e in eps]]}, features)


def _check(db: kinodb.Database, i: int, ep: dict[str, Any]) -> None:
    got = db.read_episode(i)
    np.testing.assert_array_equal(got["actions"], ep["steps/action"])
    np.testing.assert_array_equal(got["states"], ep["steps/observation/state"])
    np.testing.assert_array_equal(got["rewards"], ep["steps/reward"])
    T = len(ep["steps/action"])
    assert [db.read_image_bytes(i, "image", t) for t in range(T)] == ep["steps/observation/image"]


# -- TFDS shard lengths count records: steps in the per-step layout ----------------------


def _step_dataset(root: Path, eps: list[dict[str, Any]], val: list[dict[str, Any]]) -> Path:
    records = [r for e in eps for r in w.step_examples(e, len(e["steps/action"]))]
    val_records = [r for e in val for r in w.step_examples(e, len(e["steps/action"]))]
    cut = len(w.step_examples(eps[0], len(eps[0]["steps/action"]))) + 2  # episode 1 runs on in shard 1
    splits = {"train": [records[:cut], records[cut:]], **({"val": [val_records]} if val else {})}
    return w.write_tfds(root, "toy", splits, dict(STEPS))


def test_per_step_dataset_with_dataset_info_is_read_and_its_other_split_counted_in_steps(
    tmp_path: Path,
) -> None:
    eps, val = _episodes([3, 4, 2]), _episodes([5])
    root = _step_dataset(tmp_path / "toy" / "1.0.0", eps, val)
    lengths = json.loads((root / "dataset_info.json").read_text())["splits"][0]["shardLengths"]
    assert lengths == ["5", "4"]  # records (steps), as TFDS writes them; not episodes
    report = ingest(root, tmp_path / "o.kdb", verify=True)
    assert report.episodes == 3 and not report.skipped
    assert report.notes == [
        "read split 'train' (3 episodes); also present: val (5 steps): pass split='val' to ingest it"
    ]
    with kinodb.open(tmp_path / "o.kdb") as db:
        for i, ep in enumerate(eps):
            _check(db, i, ep)


def test_per_step_shard_shorter_than_dataset_info_says_is_reported(tmp_path: Path) -> None:
    eps = _episodes([3, 4])
    root = _step_dataset(tmp_path / "toy" / "1.0.0", eps, [])
    shard = root / "toy-train.tfrecord-00001-of-00002"
    data = w.read_records(shard)
    w.write_shard(shard, data[:-1])  # loses the last step of episode 1
    report = ingest(root, tmp_path / "o.kdb", on_error="skip")
    assert report.episodes == 1
    reasons = dict(report.skipped)
    assert (
        "is not is_last: the episode is cut off"
        in reasons["toy-train.tfrecord-00000-of-00002:3-4+toy-train.tfrecord-00001-of-00002:0-0"]
    )
    why = reasons["toy-train.tfrecord-00001-of-00002:missing"]
    assert "missing records: the shard holds 1 records (steps), dataset_info.json lists 2" in why
    assert "copy the shard again from the dataset's source" in why


# -- an episode of no steps ----------------------------------------------------------------


def test_an_empty_first_episode_does_not_set_the_features_without_features_json(tmp_path: Path) -> None:
    eps = _episodes([0, 3, 2])
    root = _write(tmp_path / "toy" / "1.0.0", eps, features=None)
    with pytest.raises(
        ConversionError, match=r"record 0: the episode has no steps .*with episodes, or pass on_error='skip'$"
    ):
        ingest(root, tmp_path / "o.kdb")
    report = ingest(root, tmp_path / "o.kdb", on_error="skip", verify=True)
    assert report.episodes == 2 and [k for k, _ in report.skipped] == ["toy-train.tfrecord-00000-of-00001:0"]
    assert not report.skipped[0][1].endswith(SKIP)  # the advice taken is dropped
    with kinodb.open(tmp_path / "o.kdb") as db:
        assert set(db.schema()["cameras"]) == {"image"}
        for i, ep in enumerate(eps[1:]):
            _check(db, i, ep)


# -- a reward tensor of one value per step ------------------------------------------------


def test_a_reward_of_shape_one_is_the_rewards(tmp_path: Path) -> None:
    steps = {**STEPS, "reward": w.tensor([1], "float32")}
    eps = _episodes([4, 3])
    root = _write(tmp_path / "toy" / "1.0.0", eps, {"steps": w.dataset(steps)})
    ingest(root, tmp_path / "o.kdb", verify=True)
    with kinodb.open(tmp_path / "o.kdb") as db:
        for i, ep in enumerate(eps):
            _check(db, i, ep)
            assert db.read_meta(i)["total_reward"] == 1.0 and db.read_meta(i)["success"] is True
            assert "reward" not in db.read_episode(i)
        assert db.metadata()["rlds"]["roles"]["reward"] == "steps/reward"


# -- is_first / is_last of a per-episode record ---------------------------------------------


@pytest.mark.parametrize(
    ("first", "last", "message"),
    [
        (
            [1, 0, 1, 0],
            [0, 1, 0, 1],
            r"record 0: step 2 of its 4 is is_first: the record holds more than one episode",
        ),
        ([1, 0, 0, 0], [0, 1, 0, 1], r"record 0: step 1 of its 4 is is_last"),
        ([0, 0, 0, 0], [0, 0, 0, 1], r"record 0: step 0 is not is_first: the episode's start is missing"),
    ],
)
def test_flags_that_do_not_make_one_episode_are_refused(
    tmp_path: Path, first: list[int], last: list[int], message: str
) -> None:
    bad, good = _episodes([4, 3])
    bad.update({"steps/is_first": np.array(first), "steps/is_last": np.array(last)})
    root = _write(tmp_path / "toy" / "1.0.0", [bad, good])
    with pytest.raises(ConversionError, match=message) as info:
        ingest(root, tmp_path / "o.kdb")
    assert str(info.value).endswith(
        f"one episode per record, is_first at its first step and is_last at its last{SKIP}"
    )
    report = ingest(root, tmp_path / "o.kdb", on_error="skip", verify=True)
    assert report.episodes == 1 and report.skipped[0][0] == "toy-train.tfrecord-00000-of-00001:0"
    with kinodb.open(tmp_path / "o.kdb") as db:
        _check(db, 0, good)


def test_an_episode_cut_off_without_is_last_still_converts(tmp_path: Path) -> None:
    (ep,) = _episodes([3])
    ep["steps/is_last"] = np.zeros(3, np.int64)
    ep["steps/reward"] = np.zeros(3, np.float32)
    root = _write(tmp_path / "toy" / "1.0.0", [ep])
    ingest(root, tmp_path / "o.kdb")
    with kinodb.open(tmp_path / "o.kdb") as db:
        assert db.read_meta(0)["num_frames"] == 3 and db.read_meta(0)["success"] is None


# -- messages that say what to do -----------------------------------------------------------


def _flip(path: Path, at: int) -> None:
    buf = bytearray(path.read_bytes())
    buf[at] ^= 0x40
    path.write_bytes(bytes(buf))


def test_damaged_truncated_and_missing_records_say_to_copy_the_shard_or_skip(tmp_path: Path) -> None:
    eps = _episodes([3, 4, 2])
    root = _write(tmp_path / "crc" / "1.0.0", eps)
    shard = root / "toy-train.tfrecord-00000-of-00001"
    _flip(shard, 40)
    with pytest.raises(ConversionError, match=r"record 0: data CRC mismatch") as info:
        ingest(root, tmp_path / "o.kdb")
    assert str(info.value).endswith(f"are damaged; copy the shard again from the dataset's source{SKIP}")

    root = _write(tmp_path / "cut" / "1.0.0", eps)
    shard = root / "toy-train.tfrecord-00000-of-00001"
    shard.write_bytes(shard.read_bytes()[:-30])
    report = ingest(root, tmp_path / "o.kdb", on_error="skip")
    with pytest.raises(
        ConversionError, match=r"record 2: truncated: .*; copy the shard again from the dataset's"
    ):
        ingest(root, tmp_path / "o2.kdb")
    assert report.episodes == 2

    root = _write(tmp_path / "short" / "1.0.0", eps)
    shard = root / "toy-train.tfrecord-00000-of-00001"
    w.write_shard(shard, w.read_records(shard)[:1])
    with pytest.raises(ConversionError) as info:
        ingest(root, tmp_path / "o3.kdb")
    assert str(info.value).endswith(
        "record 1: missing: the shard holds 1 records, dataset_info.json lists 3 (a truncated or replaced shard); "
        f"copy the shard again from the dataset's source{SKIP}"
    )


def _declared(change: Any) -> dict[str, Any]:
    steps = json.loads(json.dumps(STEPS))
    change(steps)
    return {"steps": w.dataset(steps)}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda s: s.update(action=w.tensor([2], "int32")), r"steps/action holds float values; expected int"),
        (
            lambda s: s.update(action=w.tensor([3], "float32")),
            r"steps/action has 6 values; 3 steps of shape \(3,\)",
        ),
        (lambda s: s.update(extra_obs=w.tensor([4], "float32")), r"missing feature steps/extra_obs"),
        (
            lambda s: s["observation"]["featuresDict"]["features"].pop("state"),
            r"not declared in features\.json",
        ),
    ],
)
def test_records_unlike_features_json_say_where_the_expectation_came_from(
    tmp_path: Path, change: Any, message: str
) -> None:
    root = _write(tmp_path / "toy" / "1.0.0", _episodes([3]), _declared(change))
    with pytest.raises(ConversionError, match=message) as info:
        ingest(root, tmp_path / "o.kdb")
    assert str(info.value).endswith(
        "; features.json declares the features: if it does not describe this dataset, copy it again from the "
        "dataset's source, or write it anew with TFDS (tfds.folder_dataset.write_metadata), or remove it (the "
        f"features are then read from the first record){SKIP}"
    )


def test_a_record_unlike_the_first_one_says_the_features_came_from_it(tmp_path: Path) -> None:
    first, other = _episodes([3, 2])
    other["steps/action"] = np.zeros((2, 3), np.float32)
    root = _write(tmp_path / "toy" / "1.0.0", [first, other], features=None)
    with pytest.raises(ConversionError, match=r"record 1: steps/action has 6 values") as info:
        ingest(root, tmp_path / "o.kdb")
    assert str(info.value).endswith(
        f"; without features.json, the first readable record declares the features: place the dataset's "
        f"features.json beside the shards{SKIP}"
    )


def test_a_partial_download_says_how_to_ingest_the_shards_present(tmp_path: Path) -> None:
    eps = _episodes([2, 3, 2])
    shards = {"train": [[w.episode_example(e)] for e in eps]}
    root = w.write_tfds(tmp_path / "toy" / "1.0.0", "toy", shards, FEATURES)
    (root / "toy-train.tfrecord-00002-of-00003").unlink()
    with pytest.raises(ConversionError) as info:
        ingest(root, tmp_path / "o.kdb")
    assert str(info.value).endswith(
        "split 'train' lists 3 shards but 1 is missing: toy-train.tfrecord-00002-of-00003 (a partial download?); "
        "copy them from the dataset's source; or ingest the 2 shards here: pass one shard file, or move "
        "dataset_info.json out of the folder (the shards are then found by their names, NAME-SPLIT.tfrecord-NNNNN)"
    )
    (root / "dataset_info.json").unlink()  # as the message says
    assert ingest(root, tmp_path / "o.kdb").episodes == 2


# -- NaN in episode metadata ----------------------------------------------------------------


def test_a_nan_in_episode_metadata_is_left_out_of_its_episode_and_named(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    features = {**FEATURES, "episode_metadata": w.features_dict({"score": w.tensor([], "float32"),
                                                                 "vec": w.tensor([2], "float32")})}  # fmt: skip
    a, b, c = _episodes([3, 2, 2])
    a.update({"episode_metadata/score": np.array([np.nan]), "episode_metadata/vec": np.array([np.inf, 1.0])})
    b.update({"episode_metadata/score": np.array([0.5]), "episode_metadata/vec": np.array([1.0, 2.0])})
    c.update({"episode_metadata/score": np.array([-np.inf]), "episode_metadata/vec": np.array([3.0, 4.0])})
    root = _write(tmp_path / "toy" / "1.0.0", [a, b, c], features)
    with caplog.at_level("WARNING"):
        report = ingest(root, tmp_path / "o.kdb", verify=True)
    assert report.episodes == 3
    with kinodb.open(tmp_path / "o.kdb") as db:
        m0, m1, m2 = (db.read_meta(i) for i in range(3))
        assert "score" not in m0 and "vec" not in m0
        assert m0["rlds.left_out"] == ["episode_metadata/score", "episode_metadata/vec"]
        assert m1["score"] == 0.5 and m1["vec"] == [1.0, 2.0] and "rlds.left_out" not in m1
        assert (
            "score" not in m2
            and m2["vec"] == [3.0, 4.0]
            and m2["rlds.left_out"] == ["episode_metadata/score"]
        )
        _check(db, 0, a)
    warned = [r.getMessage() for r in caplog.records if "episode_metadata/score holds NaN" in r.getMessage()]
    assert len(warned) == 1 and "record 0" in warned[0]  # once, not again for episode 2 or by verify


# -- per-step string tensors ----------------------------------------------------------------


@pytest.mark.parametrize("declared", [True, False])
def test_a_per_step_string_tensor_with_dimensions_is_left_out(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, declared: bool
) -> None:
    eps = [{**ep, "steps/tags": [b"a", b"b"] * len(ep["steps/action"])} for ep in _episodes([3, 2])]
    features = {"steps": w.dataset({**STEPS, "tags": w.tensor([2], "string")})} if declared else None
    root = _write(tmp_path / "toy" / "1.0.0", eps, features)
    with caplog.at_level("WARNING"):
        report = ingest(root, tmp_path / "o.kdb", verify=True)
    assert report.episodes == 2
    with kinodb.open(tmp_path / "o.kdb") as db:
        left = db.metadata()["rlds"]["left_out"]
        assert "a string tensor of shape (2,) at every step, several texts per step" in left["steps/tags"]
        assert "tags" not in db.read_meta(0)
        for i, ep in enumerate(eps):
            _check(db, i, ep)
    assert "steps/tags is left out" in caplog.text


def test_a_per_step_string_tensor_of_one_value_is_text(tmp_path: Path) -> None:
    eps = [{**ep, "steps/note": [b"x"] * len(ep["steps/action"])} for ep in _episodes([3])]
    root = _write(
        tmp_path / "toy" / "1.0.0", eps, {"steps": w.dataset({**STEPS, "note": w.tensor([1], "string")})}
    )
    ingest(root, tmp_path / "o.kdb")
    with kinodb.open(tmp_path / "o.kdb") as db:
        assert db.read_meta(0)["note"] == "x"


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.integers(-2, 2), min_size=1, max_size=6),
    st.sampled_from(["steps/is_first", "steps/is_last"]),
    st.sampled_from([np.int64, np.int32, np.bool_]),
)
def test_the_flag_check_refuses_exactly_what_makes_no_single_episode(
    values: list[int], key: str, dtype: type
) -> None:
    # The check's shortcut (the usual flags' bytes, at once) must keep the rule it shortens:
    # is_first set at step 0 and nowhere else; is_last set nowhere but at the last step.
    from kinodb.ingest._rlds_features import _check_flags
    from kinodb.ingest._rlds_specs import Spec

    flags = np.array(values).astype(dtype)
    set_ = flags != 0
    first = key.endswith("is_first")
    whole = bool(set_[0]) and not set_[1:].any() if first else not set_[:-1].any()
    kind = "bool" if dtype is np.bool_ else "int"
    plan = type("P", (), {"specs": {key: Spec(key, kind, shape=())}})()
    feats = {key: flags.astype(np.int64)}  # as a record holds flags: an Int64List
    if whole:
        _check_flags(feats, plan, len(values), "f: record 0")  # type: ignore[arg-type]
    else:
        with pytest.raises(ConversionError, match="f: record 0"):
            _check_flags(feats, plan, len(values), "f: record 0")  # type: ignore[arg-type]
