"""RLDS ingest reads one split (default ``train``) and says which, and which splits it left out."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import _rlds_writer as w
import numpy as np
import pytest

import kinodb
from kinodb._cli.main import main
from kinodb.ingest import ingest

FEATURES = {
    "steps": w.dataset({
        "is_first": w.tensor([], "bool"), "is_last": w.tensor([], "bool"),
        "action": w.tensor([2], "float32"), "observation": w.features_dict({"state": w.tensor([3], "float32")}),
    }),
}  # fmt: skip


def _episode(rng: np.random.Generator, T: int) -> bytes:
    return w.episode_example({
        "steps/is_first": np.r_[1, np.zeros(T - 1, np.int64)], "steps/is_last": np.r_[np.zeros(T - 1, np.int64), 1],
        "steps/action": rng.normal(size=(T, 2)).astype(np.float32),
        "steps/observation/state": rng.normal(size=(T, 3)).astype(np.float32),
    })  # fmt: skip


def _dataset(root: Path, sizes: dict[str, list[list[int]]], **kw: Any) -> Path:
    """A TFDS folder: ``{split: [episode lengths of shard 0, of shard 1, ...]}``."""
    rng = np.random.default_rng(3)
    shards = {split: [[_episode(rng, T) for T in shard] for shard in lists] for split, lists in sizes.items()}
    return w.write_tfds(root, "split_ds", shards, FEATURES, **kw)


def test_default_split_is_train_and_the_note_names_the_splits_left_out(tmp_path: Path) -> None:
    root = _dataset(tmp_path / "split_ds" / "1.0.0", {"train": [[3, 4], [5]], "val": [[2, 6]], "test": [[4]]})
    report = ingest(root, tmp_path / "train.kdb")
    assert report.episodes == 3
    assert report.notes == [
        "read split 'train' (3 episodes); also present: test (1 episode), val (2 episodes): "
        "pass split='test' or split='val' to ingest one of them"
    ]
    report = ingest(root, tmp_path / "val.kdb", split="val")
    assert report.episodes == 2
    assert report.notes == [
        "read split 'val' (2 episodes); also present: test (1 episode), train (3 episodes): "
        "pass split='test' or split='train' to ingest one of them"
    ]
    with kinodb.open(tmp_path / "val.kdb") as db:
        assert db.metadata()["rlds"]["split"] == "val"


def test_the_command_line_prints_the_note_with_its_option(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = _dataset(tmp_path / "split_ds" / "1.0.0", {"train": [[30, 1, 45], [60]], "val": [[40, 33], [20]]})
    assert main(["ingest", str(root), "-o", str(tmp_path / "out.kdb"), "-q"]) == 0
    out = capsys.readouterr().out
    assert (
        "note: read split 'train' (4 episodes); also present: val (3 episodes): pass --split val to ingest it"
        in out
    )


def test_without_dataset_info_the_note_counts_shards(tmp_path: Path) -> None:
    root = _dataset(tmp_path / "shards", {"train": [[3]], "val": [[2], [4]]}, info=False)
    report = ingest(root, tmp_path / "out.kdb", format="rlds")
    assert report.notes == [
        "read split 'train' (1 episode); also present: val (2 shards): pass split='val' to ingest it"
    ]


def test_a_dataset_of_one_split_or_one_shard_file_has_no_note(tmp_path: Path) -> None:
    root = _dataset(tmp_path / "one" / "1.0.0", {"train": [[3, 2]]})
    assert ingest(root, tmp_path / "one.kdb").notes == []
    both = _dataset(tmp_path / "both" / "1.0.0", {"train": [[3]], "val": [[2]]})
    shard = next(both.glob("*-val.tfrecord-*"))
    assert ingest(shard, tmp_path / "shard.kdb", format="rlds").notes == []  # the file given is the choice


def test_a_split_listed_without_its_shards_here_is_not_offered(tmp_path: Path) -> None:
    """A sample or a partial copy keeps dataset_info.json's list of splits but not all their
    shards: the note offers only what can be ingested from this folder."""
    root = _dataset(tmp_path / "split_ds" / "1.0.0", {"train": [[3, 4]], "val": [[2, 6]], "test": [[4]]})
    for shard in root.glob("*-val.tfrecord*"):
        shard.unlink()
    report = ingest(root, tmp_path / "train.kdb")
    assert report.notes == [
        "read split 'train' (2 episodes); also present: test (1 episode): pass split='test' to ingest it"
    ]
