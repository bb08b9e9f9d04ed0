"""`kino info` says whether normalisation statistics are stored, for which arrays, and
whether they still describe the file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import kinodb
from _legacy_encoder import encode, random_episode
from kinodb._cli.main import main


def _add(path: Path, n: int, mode: str = "w") -> None:
    with kinodb.Writer(path, mode=mode) as w:
        for _ in range(n):
            w.add_episode(
                actions=np.ones((5, 2), np.float32), states=np.zeros((5, 3), np.float32),
                rewards=np.ones(5, np.float32), fps=10.0,
            )  # fmt: skip


def _info(path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[str, dict]:
    capsys.readouterr()
    assert main(["info", str(path)]) == 0
    text = capsys.readouterr().out
    assert main(["info", str(path), "--json"]) == 0
    return text, json.loads(capsys.readouterr().out)["statistics"]


def test_info_without_statistics(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "d.kdb"
    _add(path, 1)
    text, st = _info(path, capsys)
    assert f"  statistics: none stored (datasets' normalize= needs them); run: kino stats {path}\n" in text
    assert st == {"stored": False, "arrays": [], "computed": None, "stale": False, "why_stale": None,
                  "refresh": f"kino stats {path}"}  # fmt: skip


def test_info_names_the_arrays_and_says_when_they_are_up_to_date_or_stale(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1800000000")
    path = tmp_path / "d.kdb"
    _add(path, 1)
    assert main(["stats", str(path)]) == 0
    text, st = _info(path, capsys)
    assert "  statistics: actions, states, rewards, computed 2027-01-15T08:00:00Z, up to date\n" in text
    assert st == {"stored": True, "arrays": ["actions", "states", "rewards"], "computed": "2027-01-15T08:00:00Z",
                  "stale": False, "why_stale": None, "refresh": None}  # fmt: skip
    _add(path, 1, mode="a")  # an append leaves them describing the first episode only
    text, st = _info(path, capsys)
    why = (
        "the file changed after they were computed (5 frames in 1 episode then, 10 frames in 2 episodes now)"
    )
    assert (
        f"  statistics: actions, states, rewards, computed 2027-01-15T08:00:00Z; stale: {why}; "
        f"run: kino stats {path}\n"
    ) in text
    assert st["stored"] and st["stale"] and st["why_stale"] == why and st["refresh"] == f"kino stats {path}"
    assert main(["stats", str(path)]) == 0  # the command it gives clears it
    assert _info(path, capsys)[1]["stale"] is False


def test_info_of_a_legacy_file_gives_the_upgrade_first(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "old.kdb"
    path.write_bytes(encode([random_episode(np.random.default_rng(0), 5, 2, 3)]))
    text, st = _info(path, capsys)
    assert not st["stored"] and st["refresh"] == f"kino upgrade {path} NEW.kdb, then: kino stats NEW.kdb"
    assert f"run: kino upgrade {path} NEW.kdb, then: kino stats NEW.kdb" in text
