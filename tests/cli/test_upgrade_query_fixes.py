"""`kino query --json` and `kino upgrade`: strict JSON, per-episode failures, warnings."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

import kinodb
from _legacy_encoder import FORMAT_COMPRESSED, encode, encoded_frames, random_episode, raw_frames
from kinodb._cli.main import main


def strict_json(text: str) -> object:
    def refuse(constant: str) -> None:
        raise ValueError(f"non-standard JSON constant {constant}")

    return json.loads(text, parse_constant=refuse)


def test_query_json_writes_null_for_non_finite_numbers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rng = np.random.default_rng(0)
    eps = [random_episode(rng, 2, 1, 1, total_reward=math.nan), random_episode(rng, 2, 1, 1, total_reward=-math.inf),
           random_episode(rng, 2, 1, 1, total_reward=1.5, fps=math.inf)]  # fmt: skip
    path = tmp_path / "old.kdb"
    path.write_bytes(encode(eps))  # 0.1 files can hold them
    assert main(["query", str(path), "num_frames > 0", "--json"]) == 0
    out = strict_json(capsys.readouterr().out)
    assert isinstance(out, dict)
    assert [e["total_reward"] for e in out["episodes"]] == [None, None, 1.5]
    assert [e["fps"] for e in out["episodes"]] == [10.0, 10.0, None]


def _varying_state(path: Path) -> None:
    """Episode 1's state/action section is longer than its index entry says."""

    class Rows:
        def __init__(self, rows: list[np.ndarray]) -> None:
            self.rows, self.shape = rows, (len(rows), len(rows[0]))

        def __getitem__(self, t: int) -> np.ndarray:
            return self.rows[t]

    rng = np.random.default_rng(1)
    eps = [random_episode(rng, 3, 2, 2, task=t) for t in ("a", "b", "c")]
    eps[1].states = Rows([np.zeros(2, np.float32), np.zeros(3, np.float32), np.zeros(3, np.float32)])  # type: ignore[assignment]
    path.write_bytes(encode(eps))


def test_upgrade_on_error_skip(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    old, new = tmp_path / "old.kdb", tmp_path / "new.kdb"
    _varying_state(old)
    assert main(["query", str(old), "task != 'b'", "--count"]) == 0  # the file opens and queries
    assert capsys.readouterr().out.strip() == "2"
    assert main(["upgrade", str(old), str(new)]) == 1
    err = capsys.readouterr().err
    assert "episode 1" in err and "--on-error skip" in err and not new.exists()
    assert main(["upgrade", str(old), str(new), "--on-error", "skip"]) == 0
    captured = capsys.readouterr()
    assert "(2 episodes, format 1.0)" in captured.out
    assert (
        "warning: " in captured.err and "1 episode skipped" in captured.err and "episode 1:" in captured.err
    )
    with kinodb.open(new) as db:
        assert [db.read_meta(i)["task"] for i in range(len(db))] == ["a", "c"]


def test_upgrade_of_an_empty_file_names_the_source(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    old = tmp_path / "old.kdb"
    old.write_bytes(encode([]))
    assert main(["upgrade", str(old), str(tmp_path / "new.kdb")]) == 1
    err = capsys.readouterr().err
    assert f"{old}: the source has 0 episodes" in err and "new.kdb" not in err


def test_upgrade_prints_what_was_stored_raw(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rng = np.random.default_rng(2)
    frames = rng.integers(0, 256, (3, 8, 8, 3), dtype=np.uint8)
    jpeg, raw = encoded_frames(frames, "JPEG", 90), raw_frames(frames)
    ep = random_episode(rng, 3, 1, 1)
    ep.images = {"cam": [jpeg[0], raw[1], jpeg[2]]}
    assert jpeg[0].fmt == FORMAT_COMPRESSED
    old, new = tmp_path / "old.kdb", tmp_path / "new.kdb"
    old.write_bytes(encode([ep]))
    assert main(["upgrade", str(old), str(new)]) == 0
    err = capsys.readouterr().err
    assert "warning: " in err and "camera 'cam' stored raw (decoded, larger)" in err


def test_upgrade_reports_a_bad_source_date_epoch(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = np.random.default_rng(3)
    old = tmp_path / "old.kdb"
    old.write_bytes(encode([random_episode(rng, 2, 1, 1)]))
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "yesterday")
    assert main(["upgrade", str(old), str(tmp_path / "new.kdb")]) == 1  # a kinodb error, not a usage error
    assert "SOURCE_DATE_EPOCH is 'yesterday'" in capsys.readouterr().err


def test_schema_of_a_file_without_episodes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    old = tmp_path / "empty.kdb"
    old.write_bytes(encode([]))
    assert main(["schema", str(old)]) == 0
    out = capsys.readouterr().out
    assert "None" not in out
    assert (
        "actions: no episodes, so no dim; float32" in out and "states: no episodes, so no dim; float32" in out
    )
    assert out.rstrip().endswith("no sections: the file has no episodes")
