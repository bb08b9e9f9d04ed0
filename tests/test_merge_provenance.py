"""What a merge records about each episode's origin without losing a field the episode held,
and the messages that name the filter or the input episode the user gave."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

import kinodb
from _legacy_encoder import encode, random_episode
from kinodb._cli.main import main

PROVENANCE = ("source_file", "source_episode", "origin_file", "origin_episode")


def _file(path: Path, extras: list[dict[str, Any]]) -> Path:
    with kinodb.Writer(path) as w:
        for extra in extras:
            w.add_episode(actions=np.zeros((2, 2), np.float32), task="t", extra=extra)
    return path


def _fields(path: Path) -> list[dict[str, Any]]:
    """Each episode's extra fields that name a source or an origin."""
    with kinodb.open(path) as db:
        return [
            {k: v for k, v in db.read_meta(i).items() if "source" in k or "origin" in k}
            for i in range(len(db))
        ]


def test_an_episodes_own_source_episode_is_never_lost(tmp_path: Path) -> None:
    src = _file(
        tmp_path / "runs.kdb",
        [
            {"source_episode": "run_17", "origin_episode": "keep"},  # origin taken: kept under another name
            {"source_episode": "run_18", "origin_episode": "keep"},
            {"source_episode": "run_19"},  # origin free: moves there
            {"source_file": "/raw/a.h5"},  # one of the pair only: the other is not invented
        ],
    )
    out = tmp_path / "m.kdb"
    result = kinodb.merge([src], out)
    here = str(src)
    assert _fields(out) == [
        {
            "source_file": here,
            "source_episode": 0,
            "origin_episode": "keep",
            "pre_merge_source_episode": "run_17",
        },
        {
            "source_file": here,
            "source_episode": 1,
            "origin_episode": "keep",
            "pre_merge_source_episode": "run_18",
        },
        {"source_file": here, "source_episode": 2, "origin_episode": "run_19"},
        {"source_file": here, "source_episode": 3, "origin_file": "/raw/a.h5"},
    ]
    assert result.warnings == [
        f"{here}: 2 episodes held source_episode, and an origin_file or origin_episode too: source_episode "
        "now holds each one's position in this input, and the value each held is kept as pre_merge_source_episode"
    ]
    # A merge of the merge replaces only what the merge wrote: no field is added or renamed again.
    again = tmp_path / "again.kdb"
    assert kinodb.merge([out], again).warnings == []
    # (an origin set in part is not completed from the merge's pair: it would join two sources)
    assert _fields(again) == [{**f, "source_file": str(out)} for f in _fields(out)]
    third = tmp_path / "third.kdb"
    assert kinodb.merge([again], third).warnings == []
    assert _fields(third) == [{**f, "source_file": str(again)} for f in _fields(out)]


def test_a_source_file_of_its_own_with_origin_file_taken_is_kept(tmp_path: Path) -> None:
    src = _file(
        tmp_path / "ingested.kdb",
        [
            {
                "source_file": "/raw/b.h5",
                "source_episode": "demo_3",
                "origin_file": "/raw/a.h5",
                "origin_episode": 9,
            }
        ],
    )
    out = tmp_path / "m.kdb"
    result = kinodb.merge([src], out)
    assert _fields(out) == [
        {
            "source_file": str(src), "source_episode": 0, "origin_file": "/raw/a.h5", "origin_episode": 9,
            "pre_merge_source_file": "/raw/b.h5", "pre_merge_source_episode": "demo_3",
        }
    ]  # fmt: skip
    assert len(result.warnings) == 2
    assert result.warnings[0].startswith(f"{src}: 1 episode held source_file, and an origin_file or ")
    assert result.warnings[0].endswith("kept as pre_merge_source_file")
    assert result.warnings[1].endswith("kept as pre_merge_source_episode")


def test_an_origin_is_never_half_one_source_and_half_another(tmp_path: Path) -> None:
    src = _file(
        tmp_path / "a.kdb",
        [{"source_file": "/raw/b.h5", "source_episode": 4, "origin_file": "/raw/a.h5"},
         {"source_file": "/raw/b.h5", "origin_episode": "demo_1"}],
    )  # fmt: skip
    out = tmp_path / "m.kdb"
    kinodb.merge([src], out)
    first, second = _fields(out)
    assert "origin_episode" not in first and first["origin_file"] == "/raw/a.h5"
    assert (first["pre_merge_source_file"], first["pre_merge_source_episode"]) == ("/raw/b.h5", 4)
    assert "origin_file" not in second and second["pre_merge_source_file"] == "/raw/b.h5"


def test_a_taken_pre_merge_name_is_numbered(tmp_path: Path) -> None:
    src = _file(
        tmp_path / "a.kdb",
        [{"source_episode": "new", "origin_episode": "first", "pre_merge_source_episode": "older",
          "pre_merge_source_episode_2": "oldest"}],
    )  # fmt: skip
    out = tmp_path / "m.kdb"
    result = kinodb.merge([src], out)
    (fields,) = _fields(out)
    assert fields["pre_merge_source_episode"] == "older" and fields["pre_merge_source_episode_2"] == "oldest"
    assert fields["pre_merge_source_episode_3"] == "new" and fields["source_episode"] == 0
    assert result.warnings[0].endswith("kept as pre_merge_source_episode_3")


def test_merging_two_merges_keeps_the_first_origins(tmp_path: Path) -> None:
    raw = [
        _file(tmp_path / f"{n}.kdb", [{"source_file": f"/raw/{n}.h5", "source_episode": "demo_0"}])
        for n in "ab"
    ]
    ab = tmp_path / "ab.kdb"
    kinodb.merge(raw, ab)
    both = tmp_path / "both.kdb"
    result = kinodb.merge([ab, ab], both)
    assert not any("pre_merge" in w for w in result.warnings)
    assert [(f["origin_file"], f["origin_episode"]) for f in _fields(both)] == [
        ("/raw/a.h5", "demo_0"), ("/raw/b.h5", "demo_0")
    ] * 2  # fmt: skip
    assert all(set(f) == set(PROVENANCE) for f in _fields(both))


# -- messages: the filter named as the filter, an episode named as the input's -----------------


def test_a_filter_that_does_not_parse_is_named_before_any_input_is_opened(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = _file(tmp_path / "a.kdb", [{}])
    missing, out = tmp_path / "missing.kdb", tmp_path / "m.kdb"
    with pytest.raises(kinodb.QuerySyntaxError) as info:
        kinodb.merge([missing, src], out, filter="num_frames >")
    assert str(info.value).startswith("filter: expected a value, got the end of the query at position 12")
    assert info.value.position == 12
    assert main(["merge", str(src), str(src), "-o", str(out), "-F", "num_frames >"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: filter: expected a value") and str(src) not in err
    assert err.splitlines()[1:3] == ["  num_frames >", "              ^"]
    # a field or type error is one input's: that one is named
    with pytest.raises(kinodb.QuerySyntaxError, match=rf"^{src}: type mismatch"):
        kinodb.merge([src], out, filter="task > 3")
    assert not out.exists()


def test_a_filter_that_is_not_valid_unicode_is_refused_up_front(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = _file(tmp_path / "a.kdb", [{}, {}])
    out = tmp_path / "m.kdb"
    bad = "task != '\udcff'"  # how a command-line byte that is not UTF-8 arrives
    with pytest.raises(kinodb.QuerySyntaxError) as info:
        kinodb.merge([src], out, filter=bad)
    text = str(info.value)
    assert text.startswith("filter: not valid Unicode text") and "metadata['filter']" not in text
    assert info.value.position == 9
    assert main(["merge", str(src), "-o", str(out), "-F", bad]) == 1
    assert capsys.readouterr().err.startswith("error: filter: not valid Unicode text")
    assert not out.exists()


def test_a_failing_episode_is_named_by_its_input_only(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = _file(tmp_path / "good.kdb", [{}] * 4)
    rng = np.random.default_rng(2)
    old = tmp_path / "old.kdb"
    old.write_bytes(encode([random_episode(rng, 2, 1, 1), random_episode(rng, 2, 1, 1, fps=float("nan"))]))
    out = tmp_path / "m.kdb"
    with pytest.raises(kinodb.ConversionError) as info:
        kinodb.merge([good, old], out)  # input episode 1 would be the output's episode 5
    text = str(info.value)
    assert text.startswith(
        f"{old}: episode 1 cannot be stored as v1: fps must be a positive number, got nan; "
    )
    assert "adding episode" not in text and "episode 5" not in text
    result = kinodb.merge([good, old], out, on_error="skip")
    (warning,) = [w for w in result.warnings if "skipped" in w]
    assert "episode 1: fps must be a positive number, got nan" in warning and "adding episode" not in warning
    with kinodb.open(out) as m:
        (skipped,) = m.metadata()["merged_from"][1]["skipped"]
        assert skipped == {"episode": 1, "reason": "fps must be a positive number, got nan"}
    assert main(["merge", str(good), str(old), "-o", str(tmp_path / "cli.kdb")]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: {old}: episode 1 cannot be stored") and "adding episode" not in err
