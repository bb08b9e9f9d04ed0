"""``episodes``: the spec as the command line takes it, and what Python callers pass."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from _fake_source import write_fake

import kinodb
from kinodb._cli.main import main
from kinodb.ingest import _base, ingest, parse_episodes


@pytest.fixture(autouse=True)
def _register(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(_base._BUILTIN, "fake", "_fake_source:FakeSource")


@pytest.fixture
def src(tmp_path: Path) -> str:
    return write_fake(tmp_path / "src", [{"key": f"ep{k}", "frames": 3, "seed": k} for k in range(12)])


def _selected(out: Path) -> tuple[list[str], object]:
    with kinodb.open(out) as db:
        keys = [db.read_meta(i)["source_episode"] for i in range(len(db))]
        return keys, db.metadata()["ingest"]["options"]["episodes"]


@pytest.mark.parametrize("spec", ["1_0", "+3", "\uff13", "\u0663", "1-1_0", "0x1", "1e1", "3.0"])
def test_only_ascii_digits_make_an_index(spec: str) -> None:
    # int() takes all of these (or would read them as another number): none is an index here.
    with pytest.raises(
        ValueError,
        match=re.escape(f"{spec!r} is not an index or a range; use indices and ranges like 0-9,29"),
    ):
        parse_episodes(spec)


def test_spaces_around_indices_and_dashes_are_fine() -> None:
    assert parse_episodes(" 1 - 3 , 7 ") == [1, 2, 3, 7]


@pytest.mark.parametrize("spec", ["1--3", "-3-1", "-1", "0,-2"])
def test_a_negative_index_is_refused_with_advice_that_parses(spec: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_episodes(spec)
    message = str(caught.value)
    assert "(indices count from 0); use indices and ranges like 0-9,29" in message, message
    assert "write -" not in message  # no advice to write what is refused in turn
    assert parse_episodes("0-9,29")[-1] == 29


def test_the_advice_for_a_reversed_range_parses() -> None:
    with pytest.raises(ValueError, match=r"the range '9-2' is reversed; write 2-9$"):
        parse_episodes("0,9-2")
    assert parse_episodes("0,2-9") == [0, *range(2, 10)]


def test_the_command_line_refuses_an_underscore_in_an_index(
    src: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "a.kdb"
    assert main(["ingest", src, "-o", str(out), "--episodes", "1_0", "-q"]) == 2
    assert capsys.readouterr().err.endswith(
        "kino ingest: error: bad episode selection --episodes 1_0: '1_0' is not an index or a range; use indices "
        "and ranges like 0-9,29\n"
    )
    assert not out.exists()


def test_an_embodiment_of_other_digits_is_not_an_episode_selection(src: str, tmp_path: Path) -> None:
    out = tmp_path / "a.kdb"
    assert main(["ingest", src, "-o", str(out), "-e", "\uff11-\uff12", "--episodes", "0", "-q"]) == 0
    with kinodb.open(out) as db:
        assert db.read_meta(0)["embodiment"] == "\uff11-\uff12"


def _generated() -> Iterator[int]:
    yield from (4, 1)


@pytest.mark.parametrize(
    ("episodes", "keys", "recorded"),
    [
        (5, ["ep5"], [5]),
        (np.int64(5), ["ep5"], [5]),
        ([np.int64(2), 0], ["ep2", "ep0"], [2, 0]),
        (np.arange(3), ["ep0", "ep1", "ep2"], [0, 1, 2]),
        (range(7, 9), ["ep7", "ep8"], [7, 8]),
        ((3, 4), ["ep3", "ep4"], [3, 4]),
        ("3,4", ["ep3", "ep4"], "3,4"),
    ],
)
def test_python_callers_pass_one_index_or_indices(
    src: str, tmp_path: Path, episodes: object, keys: list[str], recorded: object
) -> None:
    out = tmp_path / "a.kdb"
    ingest(src, out, episodes=episodes)  # type: ignore[arg-type]
    assert _selected(out) == (keys, recorded)


def test_an_iterator_is_read_once(src: str, tmp_path: Path) -> None:
    out = tmp_path / "a.kdb"
    report = ingest(src, out, episodes=_generated())
    assert report.episodes == 2
    assert _selected(out) == (["ep4", "ep1"], [4, 1])


@pytest.mark.parametrize(
    ("episodes", "message"),
    [
        ([3.0], r"episodes must hold episode indices \(int\), got float 3.0"),
        ([2.7], r"episodes must hold episode indices \(int\), got float 2.7"),
        (["3"], r"episodes must hold episode indices \(int\), got str '3'"),
        ([True, False], r"episodes must hold episode indices \(int\), got bool True"),
        ([np.float32(1)], r"episodes must hold episode indices \(int\), got float32 "),
        (
            2.0,
            r"episodes must be a str of indices and ranges \('0-9,29'\), an index \(int\) or a sequence of "
            r"indices, got float",
        ),
        (True, r"episodes must be a str .* got bool"),
        (b"0-2", r"episodes must be a str .* got bytes"),
        ({0: 1}, r"episodes must be a str .* got dict"),
    ],
)
def test_what_is_no_selection_is_a_type_error_naming_episodes(
    src: str, tmp_path: Path, episodes: object, message: str
) -> None:
    out = tmp_path / "a.kdb"
    with pytest.raises(TypeError, match=message):
        ingest(src, out, episodes=episodes)  # type: ignore[arg-type]
    assert not out.exists()


def test_a_negative_python_index_is_still_refused(src: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"bad episode selection episodes=-1: indices count from 0, got -1"):
        ingest(src, tmp_path / "a.kdb", episodes=-1)


def test_a_selection_of_more_episodes_than_any_source_holds_is_refused_before_it_is_listed() -> None:
    from kinodb.ingest._selection import parse_episodes

    with pytest.raises(
        ValueError, match=r"it selects 100,000,000,000 episodes, more than one selection takes"
    ):
        parse_episodes("0-99999999999")  # refused at once, not after listing them
