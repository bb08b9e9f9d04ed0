"""An episode an upgrade or a merge leaves out (``on_error="skip"``) is named once, by its
position in the input, with the reason alone: not by its position in the output, and not
with the input's path and episode said again."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import kinodb
from _legacy_encoder import encode, random_episode
from kinodb._cli.main import main
from kinodb.kdb.upgrade import upgrade


def _old_with_bad_fps(path: Path) -> Path:
    """A 0.1 file whose episode 2 (the output's episode 1, after an empty episode 1) has fps 0."""
    rng = np.random.default_rng(3)
    episodes = [
        random_episode(rng, T, 4, 3, fps=fps) for T, fps in [(5, 10.0), (0, 10.0), (3, 0.0), (4, 10.0)]
    ]
    path.write_bytes(encode(episodes))
    return path


def _damaged(path: Path, episode: int) -> Path:
    """A v1 file of 3 episodes whose ``episode``'s payload fails its checksum."""
    with kinodb.Writer(path) as w:
        for k in range(3):
            w.add_episode(actions=np.full((4, 2), k, np.float32))
    raw = bytearray(path.read_bytes())
    with kinodb.open(path) as db:
        raw[int(db._cols["payload_offset"][episode]) + 2] ^= 0xFF
    path.write_bytes(bytes(raw))
    return path


def test_an_upgrade_names_a_skipped_episode_by_its_input_position_only(tmp_path: Path) -> None:
    old, new = _old_with_bad_fps(tmp_path / "old.kdb"), tmp_path / "new.kdb"
    with pytest.warns(UserWarning) as caught:
        assert upgrade(old, new, on_error="skip") == 2
    (line,) = [str(w.message) for w in caught if "skipped" in str(w.message)]
    assert line.endswith(
        "episode 1: it has 0 frames, and v1 files hold no empty episodes; "
        "episode 2: fps must be a positive number, got 0.0"
    )
    assert "adding episode" not in line
    with kinodb.open(new) as db:
        assert db.metadata()["upgraded_from"]["skipped"] == [
            {"episode": 1, "reason": "it has 0 frames, and v1 files hold no empty episodes"},
            {"episode": 2, "reason": "fps must be a positive number, got 0.0"},
        ]


def test_the_error_that_stops_an_upgrade_names_the_input_episode_and_the_fix(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    old, new = tmp_path / "old.kdb", tmp_path / "new.kdb"
    rng = np.random.default_rng(4)
    old.write_bytes(encode([random_episode(rng, 3, 2, 2), random_episode(rng, 3, 2, 2, fps=0.0)]))
    with pytest.raises(kinodb.ConversionError) as info:
        upgrade(old, new)
    text = str(info.value)
    assert text.startswith(
        f"{old}: episode 1 cannot be stored as v1: fps must be a positive number, got 0.0; "
    )
    assert "adding episode" not in text and text.endswith(
        "rerun with --on-error skip (Python: on_error='skip')"
    )
    assert '-F "fps > 0"' in text
    assert main(["upgrade", str(old), str(new)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(
        f"error: {old}: episode 1 cannot be stored as v1: fps must be a positive number, got 0.0;"
    )
    assert "adding episode" not in err
    assert not new.exists()


def test_a_skipped_damaged_episode_is_not_named_twice(tmp_path: Path) -> None:
    path = _damaged(tmp_path / "d.kdb", episode=1)
    reason = "payload checksum mismatch at byte offset "
    with pytest.warns(UserWarning) as caught:
        assert upgrade(path, tmp_path / "up.kdb", on_error="skip") == 2
    (line,) = [str(w.message) for w in caught if "skipped" in str(w.message)]
    assert f"upgraded_from.skipped): episode 1: {reason}" in line and line.count(str(path)) == 2
    with kinodb.open(tmp_path / "up.kdb") as db:
        (skipped,) = db.metadata()["upgraded_from"]["skipped"]
    assert skipped["episode"] == 1 and skipped["reason"].startswith(reason)


def test_a_merge_lists_a_skipped_damaged_episode_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _damaged(tmp_path / "d.kdb", episode=0)
    out = tmp_path / "m.kdb"
    with pytest.raises(kinodb.CorruptFileError) as info:
        kinodb.merge([path], out)  # without skip: the input file, its episode and the fix
    assert str(info.value).startswith(f"{path}: episode 0: payload checksum mismatch at byte offset ")
    assert str(info.value).endswith("rerun with --on-error skip (Python: on_error='skip')")
    result = kinodb.merge([path], out, on_error="skip")
    (line,) = [w for w in result.warnings if "skipped" in w]
    assert line.startswith(
        f"{path}: 1 episode skipped (listed in the output's metadata, merged_from[0].skipped): "
        "episode 0: payload checksum mismatch at byte offset "
    )
    assert line.count("episode 0") == 1
    with kinodb.open(out) as m:
        (skipped,) = m.metadata()["merged_from"][0]["skipped"]
    assert skipped["episode"] == 0 and skipped["reason"].startswith(
        "payload checksum mismatch at byte offset "
    )
    assert main(["merge", str(path), "-o", str(tmp_path / "cli.kdb"), "--on-error", "skip"]) == 0
    err = capsys.readouterr().err
    assert "merged_from[0].skipped): episode 0: payload checksum mismatch" in err
    assert err.count("episode 0") == 1
