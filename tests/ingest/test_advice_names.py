"""The ingest's advice names options as the caller gives them: keyword arguments
(``on_error='skip'``, ``split='val'``) to a Python caller, ``--options`` on the command line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import _lerobot_fixtures as F
import _rlds_writer as w
import numpy as np
import pytest

from kinodb._cli.main import main
from kinodb.errors import ConversionError
from kinodb.ingest import ingest

STEPS = {
    "is_first": w.tensor([], "bool"), "is_last": w.tensor([], "bool"), "action": w.tensor([2], "float32"),
    "observation": w.features_dict({"state": w.tensor([3], "float32")}),
}  # fmt: skip


def _rlds_episode(rng: np.random.Generator, T: int) -> dict[str, Any]:
    return {
        "steps/is_first": (np.arange(T) == 0).astype(np.int64),
        "steps/is_last": (np.arange(T) == T - 1).astype(np.int64),
        "steps/action": rng.normal(size=(T, 2)).astype(np.float32),
        "steps/observation/state": rng.normal(size=(T, 3)).astype(np.float32),
    }


def _rlds(root: Path, splits: dict[str, list[int]], **kwargs: Any) -> Path:
    """An RLDS dataset of one shard per split, its episodes of the given lengths."""
    rng = np.random.default_rng(3)
    records = {
        split: [[w.episode_example(_rlds_episode(rng, T)) for T in lengths]]
        for split, lengths in splits.items()
    }
    return w.write_tfds(root, "toy", records, {"steps": w.dataset(STEPS)}, **kwargs)


def _kino(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    """What ``kino ingest ARGV -q`` prints on stderr, when it fails with 1."""
    capsys.readouterr()
    assert main(["ingest", *argv, "-q"]) == 1
    return capsys.readouterr().err


def _lerobot_missing_one(tmp_path: Path) -> Path:
    """A LeRobot v2.1 dataset of 3 episodes whose episode 1 has no data file."""
    eps = F.make_episodes(np.random.default_rng(5), [4, 5, 3], cameras={})
    root = F.write_v2(tmp_path / "lerobot", eps)
    (root / "data" / "chunk-000" / "episode_000001.parquet").unlink()
    return root


def test_a_missing_lerobot_episode_names_the_keyword_arguments_to_a_python_caller(tmp_path: Path) -> None:
    root = _lerobot_missing_one(tmp_path)
    with pytest.raises(ConversionError) as err:
        ingest(root, tmp_path / "o.kdb")
    message = str(err.value)
    assert message.endswith(
        "holds the data of 2 of its 3 episodes (0,2): select them with episodes='0,2' (positions in "
        "meta/episodes), or pass on_error='skip'"
    )
    assert "--" not in message
    report = ingest(root, tmp_path / "o.kdb", episodes="0,2")  # the advice works as given
    assert report.episodes == 2


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_missing_lerobot_episode_names_the_options_on_the_command_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], workers: str
) -> None:
    root = _lerobot_missing_one(tmp_path)
    err = _kino(capsys, str(root), "-o", str(tmp_path / "o.kdb"), "--workers", workers)
    assert err.rstrip().endswith(
        "select them with --episodes 0,2 (positions in meta/episodes), or pass --on-error skip"
    )
    assert "on_error" not in err and "episodes=" not in err


def test_an_rlds_episode_of_no_steps_names_on_error_as_the_caller_gives_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = _rlds(tmp_path / "toy" / "1.0.0", {"train": [0, 3]})
    with pytest.raises(ConversionError) as err:
        ingest(root, tmp_path / "o.kdb")
    message = str(err.value)
    assert message.endswith("select the others with episodes, or pass on_error='skip'")
    assert "--" not in message
    err_text = _kino(capsys, str(root), "-o", str(tmp_path / "o.kdb"))
    assert err_text.rstrip().endswith("select the others with --episodes, or pass --on-error skip")


def test_an_absent_rlds_split_names_split_as_the_caller_gives_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = _rlds(tmp_path / "toy" / "1.0.0", {"train": [3], "val": [2]})
    with pytest.raises(ConversionError) as err:
        ingest(root, tmp_path / "o.kdb", split="test")
    assert str(err.value).endswith(
        "no split 'test'; dataset_info.json lists train, val: pass split='train' or split='val'"
    )
    err_text = _kino(capsys, str(root), "-o", str(tmp_path / "o.kdb"), "--split", "test")
    assert err_text.rstrip().endswith(
        "no split 'test'; dataset_info.json lists train, val: pass --split train or --split val"
    )


def test_rlds_shards_found_by_name_name_split_as_the_caller_gives_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    named = _rlds(tmp_path / "named", {"train": [3]}, info=False)  # toy-train.tfrecord-00000-of-00001
    with pytest.raises(ConversionError) as err:
        ingest(named, tmp_path / "o.kdb", split="val")
    assert str(err.value).endswith("no shards of split 'val'; found splits train: pass split='train'")
    err_text = _kino(capsys, str(named), "-o", str(tmp_path / "o.kdb"), "--split", "val")
    assert err_text.rstrip().endswith("no shards of split 'val'; found splits train: pass --split train")

    plain = _rlds(
        tmp_path / "plain", {"train": [3]}, template="{DATASET}.{FILEFORMAT}-{SHARD_X_OF_Y}", info=False
    )
    with pytest.raises(ConversionError) as err:
        ingest(plain, tmp_path / "o.kdb", split="train")
    assert str(err.value).endswith(
        "shard names carry no split (expected NAME-SPLIT.tfrecord-NNNNN); leave split out"
    )
    err_text = _kino(capsys, str(plain), "-o", str(tmp_path / "o.kdb"), "--split", "train")
    assert err_text.rstrip().endswith("(expected NAME-SPLIT.tfrecord-NNNNN); leave --split out")
