"""`kino stats` on a file whose arrays vary between episodes (a merge of files of other
dtypes or dims): why nothing could be summarised, which episodes, and what to do."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import kinodb
from kinodb._cli.main import main
from kinodb.stats import compute_stats


def _file(path: Path, dtype: str, episodes: int, *, action_dim: int = 3) -> Path:
    rng = np.random.default_rng(0)
    with kinodb.Writer(path) as w:
        for _ in range(episodes):
            w.add_episode(
                actions=rng.normal(size=(5, action_dim)).astype(dtype),
                states=rng.normal(size=(5, action_dim)).astype(dtype),
                rewards=rng.normal(size=5).astype(dtype),
            )
    return path


@pytest.fixture
def mixed(tmp_path: Path) -> Path:
    """Episodes 0-3 in float64, 4-8 in float32: a merge of two ingests of one source."""
    out = tmp_path / "both.kdb"
    kinodb.merge([_file(tmp_path / "a64.kdb", "float64", 4), _file(tmp_path / "a32.kdb", "float32", 5)], out)
    return out


def test_skipped_reason_names_episodes_of_each_dtype(mixed: Path) -> None:
    stats = compute_stats(mixed)
    assert stats["arrays"] == {}
    assert stats["skipped"]["actions"] == (
        "its dtype varies between episodes: float64 in 4 episodes (0, 1, 2, ...), "
        "float32 in 5 episodes (4, 5, 6, ...)"
    )


def test_error_says_why_and_what_to_do(mixed: Path, capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    assert main(["stats", str(mixed)]) == 1
    err = capsys.readouterr().err
    one = f"{str(mixed)[: -len('.kdb')]}-float64.kdb"
    assert err == (
        f"error: no array of {mixed} could be summarised: actions, states and rewards are held in different "
        "dtypes by different episodes (actions: float64 in 4 episodes (0, 1, 2, ...), float32 in 5 episodes "
        "(4, 5, 6, ...)), as a kino merge of files ingested with different --dtype makes them; re-ingest the "
        "sources with one --dtype (such as --dtype float32) and merge them again, or keep the files apart, "
        "run kino stats on each and combine them with kinodb.Mixture; or write one dtype's episodes to a "
        f'file of their own and summarise that: kino merge {mixed} -o {one} -F "episode_id BETWEEN 0 AND 3"\n'
    )
    # The command it gives works: that file can be summarised.
    assert main(["merge", str(mixed), "-o", one, "-F", "episode_id BETWEEN 0 AND 3"]) == 0
    assert main(["stats", one, "--dry-run"]) == 0
    assert "actions: float64 (3,), 20 frames" in capsys.readouterr().out


def test_json_error_says_why_too(mixed: Path, capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    assert main(["stats", str(mixed), "--json", "--dry-run", "--arrays", "rewards"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(
        f"error: no array of {mixed} could be summarised: rewards is held in different dtypes by "
        "different episodes (rewards: float64 in 4 episodes"
    )


def test_error_for_per_frame_shapes_that_vary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "robots.kdb"
    kinodb.merge(
        [_file(tmp_path / "a.kdb", "float32", 2), _file(tmp_path / "b.kdb", "float32", 2, action_dim=4)], out
    )
    capsys.readouterr()
    assert main(["stats", str(out), "--arrays", "actions,states"]) == 1
    assert capsys.readouterr().err == (
        f"error: no array of {out} could be summarised: actions and states have per-frame shapes that vary "
        "between episodes, as a kino merge of robots with different dims makes them; run kino stats on each "
        "robot's own file and combine the files with kinodb.Mixture (normalize= uses each file's own "
        "statistics)\n"
    )


def test_error_for_other_reasons_points_at_them(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _file(tmp_path / "a.kdb", "float32", 2)
    capsys.readouterr()
    assert main(["stats", str(path), "--arrays", "is_terminal"]) == 1
    assert capsys.readouterr().err == (
        f"error: no array of {path} could be summarised: is_terminal (dtype bool is not floating point); "
        "name floating-point arrays with --arrays, or leave it out to summarise every one\n"
    )
