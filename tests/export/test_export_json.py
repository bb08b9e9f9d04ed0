"""Export metadata only: valid, escaped, Unicode-safe JSON with one line per episode."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

import kinodb
from kinodb.export import export

TRICKY = 'say "hi" \\ back\nslash\ttab \u2028sep\u2029 \x85 \x00 \U0001f916 café'


def _strict(text: str) -> Any:
    def refuse(name: str) -> None:
        raise ValueError(f"non-standard JSON constant {name}")

    return json.loads(text, parse_constant=refuse)


def test_lines_are_escaped_and_unicode_safe(make_kdb, tmp_path: Path) -> None:
    eps = [
        {"actions": np.zeros((2, 1), np.float32), "task": TRICKY, "embodiment": "robot \"7\"",
         "extra": {"note": TRICKY, "tags": ["a\"b", "ü", None], "n": 3}},
        {"actions": np.zeros((3, 1), np.float32), "task": "plain", "success": True},
    ]  # fmt: skip
    src, _ = make_kdb(eps, image_codec="png")
    out = tmp_path / "meta"
    report = export(src, out, format="json")
    assert (report.files, report.episodes, report.frames) == (2, 2, 5)
    assert sorted(p.name for p in out.iterdir()) == ["dataset.json", "episodes.jsonl"]
    raw = (out / "episodes.jsonl").read_bytes()
    text = raw.decode("utf-8")  # valid UTF-8
    assert "\U0001f916" in text and "café" in text  # kept as characters, not \u escapes
    lines = text.splitlines()  # splits on U+2028, U+0085 too: none may be left raw
    assert len(lines) == 2 and raw.count(b"\n") == 2
    with kinodb.open(src) as db:
        for i, line in enumerate(lines):
            record = _strict(line)
            assert record == {"position": i, "meta": db.read_meta(i), "cameras": {}}
        assert record["meta"]["success"] is True
        assert _strict((out / "dataset.json").read_text("utf-8"))["schema"] == db.schema()


def test_cameras_and_non_finite_rewards(make_kdb, tmp_path: Path) -> None:
    ep = {"actions": np.zeros((2, 1), np.float32), "rewards": np.array([1.0, np.nan], np.float32),
          "images": {"cam": np.zeros((2, 4, 5, 3), np.uint8)}}  # fmt: skip
    src, _ = make_kdb([ep], image_codec="jpeg")
    out = tmp_path / "meta"
    export(src, out, format="json")
    record = _strict((out / "episodes.jsonl").read_text("utf-8"))
    assert record["cameras"] == {"cam": {"codec": "jpeg", "shape": [2, 4, 5, 3]}}
    assert record["meta"]["total_reward"] is None  # a sum over NaN rewards is stored as unknown


def test_filter_keeps_matching_episodes(make_kdb, tmp_path: Path) -> None:
    src, _ = make_kdb(7)  # success cycles True, False, None
    out = tmp_path / "meta"
    report = export(src, out, format="json", filter="success = true")
    positions = [json.loads(x)["position"] for x in (out / "episodes.jsonl").read_text().splitlines()]
    assert positions == [0, 3, 6] and report.episodes == 3
    info = json.loads((out / "dataset.json").read_text())
    assert info["export"]["filter"] == "success = true" and info["export"]["episodes"] == 3
