"""`kino mix`: the source table, the --sample table, JSON, PATH:WEIGHT parsing and exit codes."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

import kinodb
from kinodb._cli import main as cli
from kinodb._cli import mix as mix_cli
from kinodb.mixture import Mixture

Run = Callable[..., int]


@pytest.fixture
def kino(monkeypatch: pytest.MonkeyPatch) -> Run:
    """``main`` with the mix subcommand registered (whether or not main lists it yet)."""
    if mix_cli not in cli.COMMANDS:
        monkeypatch.setattr(cli, "COMMANDS", (*cli.COMMANDS, mix_cli))
    return lambda *argv: cli.main([str(a) for a in argv])


@pytest.fixture
def sources(tmp_path: Path) -> tuple[Path, Path]:
    """a: 4 episodes of 5 frames (franka); b: 2 episodes of 20 frames (widowx)."""
    paths = []
    for name, n, T, emb in (("a", 4, 5, "franka"), ("b", 2, 20, "widowx")):
        path = tmp_path / f"{name}.kdb"
        with kinodb.Writer(path) as w:
            for i in range(n):
                w.add_episode(actions=np.zeros((T, 2), np.float32), embodiment=emb, success=i % 2 == 0)
        paths.append(path)
    return paths[0], paths[1]


def test_table_shows_episode_and_frame_shares(
    kino: Run, sources: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    a, b = sources
    assert kino("mix", "-s", f"{a}:3", "--source", f"{b}:1") == 0
    out = capsys.readouterr().out
    assert "mixture of 2 sources, weighted by episode, seed 42: 6 episodes, 60 frames kept" in out
    assert "EPISODE SHARE" in out and "FRAME SHARE" in out
    rows = [line.split() for line in out.splitlines() if line.endswith(".kdb")]
    # episode shares 75/25; frames 3*5 : 1*20 -> 15/35 and 20/35
    assert rows[0][:6] == ["0", "4", "20", "3", "75.0%", "42.9%"]
    assert rows[1][:6] == ["1", "2", "40", "1", "25.0%", "57.1%"]


def test_frame_weighting_swaps_the_exact_column(
    kino: Run, sources: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    a, b = sources
    assert kino("mix", "-s", f"{a}:1", "-s", f"{b}:1", "--weight-by", "frame", "--sample", "40") == 0
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines() if line.endswith(".kdb")]
    assert rows[0][4:6] == ["80.0%", "50.0%"] and rows[1][4:6] == ["20.0%", "50.0%"]
    # the sample table: 20 draws each, which is 50%
    assert rows[2][1:3] == ["20", "50.0%"] and rows[3][1:3] == ["20", "50.0%"]


def test_sample_reports_the_epoch(
    kino: Run, sources: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    a, b = sources
    assert kino("mix", "-s", f"{a}:3", "-s", str(b), "--sample", "10", "--seed", "0", "--json") == 0
    out = json.loads(capsys.readouterr().out)
    assert [s["weight"] for s in out["sources"]] == [3.0, 1.0]
    assert out["sources"][0]["share"] == 0.75
    sample = out["sample"]
    assert sample["method"] == "weighted_epoch" and sample["n"] == 10
    a_row, b_row = sample["by_source"]
    assert (a_row["draws"], b_row["draws"]) == (8, 2)  # 7.5 and 2.5: the tie goes to the first source
    assert a_row["distinct_episodes"] == 4 and b_row["distinct_episodes"] == 2
    assert (a_row["frames"], b_row["frames"]) == (40, 40)
    mix = Mixture({a: 3, b: 1}, seed=0)
    assert np.bincount(mix.weighted_epoch(10)[:, 0]).tolist() == [8, 2]


def test_text_sample_table(kino: Run, sources: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    a, b = sources
    assert kino("mix", "-s", str(a), "-s", str(b), "--sample", "100", "--epoch", "3") == 0
    out = capsys.readouterr().out
    assert "weighted_epoch(100), epoch 3" in out and "DISTINCT" in out
    rows = [line.split() for line in out.splitlines() if line.endswith(".kdb")][2:]
    assert rows[0][1:4] == ["50", "50.0%", "4"] and rows[1][1:4] == ["50", "50.0%", "2"]


def test_path_with_a_colon(kino: Run, tmp_path: Path, sources: tuple[Path, Path]) -> None:
    odd = tmp_path / "run:2.kdb"
    odd.write_bytes(sources[0].read_bytes())
    assert kino("mix", "-s", str(odd)) == 0
    assert kino("mix", "-s", f"{odd}:2.5") == 0
    assert mix_cli.parse_source(f"{odd}:2.5") == (str(odd), 2.5)
    assert mix_cli.parse_source("x.kdb") == ("x.kdb", 1.0)


@pytest.mark.parametrize("weight", ["0", "-1", "nan", "inf", "abc", ""])
def test_bad_weight_is_a_usage_error(
    kino: Run, sources: tuple[Path, Path], weight: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert kino("mix", "-s", f"{sources[0]}:{weight}") == 2
    err = capsys.readouterr().err
    assert err.startswith("kino mix: error: --source") and err.count("\n") == 1


def test_missing_file_exits_1(kino: Run, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert kino("mix", "-s", f"{tmp_path / 'nope.kdb'}:2") == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "nope.kdb" in err and "mixture source 0" in err


def test_usage_errors_from_argparse(kino: Run, sources: tuple[Path, Path]) -> None:
    for argv in (
        ["mix"],
        ["mix", "-s", str(sources[0]), "--seed", "-1"],
        ["mix", "-s", "x", "--weight-by", "x"],
    ):
        with pytest.raises(SystemExit) as exc:
            kino(*argv)
        assert exc.value.code == 2


def test_filter_applies_to_every_source(
    kino: Run, sources: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    a, b = sources
    assert kino("mix", "-s", str(a), "-s", str(b), "--filter", "success = true", "--json") == 0
    out = json.loads(capsys.readouterr().out)
    assert out["filter"] == "success = true"
    assert [s["episodes"] for s in out["sources"]] == [2, 1]
    assert kino("mix", "-s", str(a), "--filter", "embodiment = 'ur5'") != 0
    assert "keeps none of its 4 episodes" in capsys.readouterr().err


def test_a_folder_source_exits_1_naming_it(
    kino: Run, tmp_path: Path, sources: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    assert kino("mix", "-s", sources[0], "-s", f"{tmp_path}:2") == 1
    err = capsys.readouterr().err
    assert err == (
        f"error: {tmp_path}: mixture source 1: a folder, not a .kdb file; give the path of a .kdb file, "
        f"e.g. {sources[0]}\n"
    )
