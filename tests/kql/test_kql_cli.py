"""``kino query``: table, count, JSON, limit, and query errors with a caret."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest

import kinodb
from kinodb._cli import query as query_cli


@pytest.fixture
def path(tmp_path: Path) -> Path:
    out = tmp_path / "d.kdb"
    rows = [
        ("franka", "pick up the cup", True, 30),
        (
            "機械腕ロボットアーム型式",
            "拾う 赤いカップ and place it carefully on the shelf near the window",
            False,
            20,
        ),
        ("ur5e", "line\nbreak\ttask", None, 25),
        ("franka", "open the drawer", True, 12),
    ]
    with kinodb.Writer(out) as w:
        for emb, task, succ, frames in rows:
            w.add_episode(actions=np.zeros((frames, 7), np.float32), embodiment=emb, task=task, success=succ,
                          extra={"tags": ["a"] if succ else []})  # fmt: skip
    return out


def kino_query(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="kino")
    query_cli.register(parser.add_subparsers())
    args = parser.parse_args(["query", *argv])
    return args.run(args)  # type: ignore[no-any-return]


def test_table(path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert kino_query([str(path), "num_frames > 15"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "3 matching episodes"
    assert out[1].split() == ["POS", "EMBODIMENT", "FRAMES", "ACT", "SUCCESS", "TASK"]
    assert out[2].split() == ["0", "franka", "30", "7", "yes", "pick", "up", "the", "cup"]
    # wide characters are clipped whole, by display width, with an ellipsis
    assert out[3].split()[:5] == ["1", "機械腕ロボッ…", "20", "7", "no"]
    assert out[3].endswith("…") and "拾う 赤いカップ" in out[3]
    assert out[4].split()[:5] == ["2", "ur5e", "25", "7", "-"]
    assert out[4].endswith("line break task")  # control characters never break the table
    columns = [line.index("FRAMES") + len("FRAMES") for line in out[1:2]]
    assert all(line.index(" 30") + 3 == columns[0] for line in out[2:3])
    assert len(out) == 5


def test_one_match_and_no_match(path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert kino_query([str(path), "embodiment = ur5e"]) == 0
    assert capsys.readouterr().out.splitlines()[0] == "1 matching episode"
    assert kino_query([str(path), "embodiment = nobody"]) == 0
    assert capsys.readouterr().out == "0 matching episodes\n"


def test_limit_and_count(path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert kino_query([str(path), "num_frames > 0", "--limit", "2"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "4 matching episodes (showing the first 2)" and len(out) == 4
    assert kino_query([str(path), "tags CONTAINS 'a'", "--count"]) == 0
    assert capsys.readouterr().out == "2\n"
    assert kino_query([str(path), "num_frames > 0", "--count", "-l", "1"]) == 0
    assert capsys.readouterr().out == "4\n"  # the count is always the total


def test_json(path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert kino_query([str(path), "success = true", "--json", "--limit", "1"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["matches"] == 2 and out["positions"] == [0] and out["query"] == "success = true"
    assert out["episodes"] == [
        {"position": 0, "episode_id": 0, "embodiment": "franka", "task": "pick up the cup", "num_frames": 30,
         "fps": 10.0, "action_dim": 7, "state_dim": 0, "success": True, "total_reward": None, "tags": ["a"]}
    ]  # fmt: skip


def test_query_error_shows_the_caret(path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert kino_query([str(path), "sucess = true"]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "error: unknown field 'sucess' at position 0"
    assert err[1:4] == ["  sucess = true", "  ^", "did you mean success?"]


def test_run_with_a_namespace(path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = argparse.Namespace(
        path=str(path), kql="task CONTAINS 'drawer'", limit=None, count=True, json=False
    )
    assert query_cli.run(args) == 0
    assert capsys.readouterr().out == "1\n"


def test_bad_limit_is_a_usage_error(path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for bad in ("-1", "x"):
        with pytest.raises(SystemExit) as info:
            kino_query([str(path), "x = 1", "--limit", bad])
        assert info.value.code == 2
    assert "--limit" in capsys.readouterr().err
