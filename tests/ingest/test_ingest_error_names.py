"""What the ingest framework says of an episode it cannot convert or write: the source's
file and episode, never a traceback; ``on_error="skip"`` drops that episode alone."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest

import kinodb
from kinodb._cli.main import main
from kinodb.errors import ConversionError
from kinodb.ingest import SourceInfo, SourceOptions, _base, ingest
from kinodb.ingest._base import SOURCE_WHERE

KEYS = [f"ep{k}" for k in range(12)]


class OddSource:
    """A source whose ``odd.json`` says how each episode and its metadata go wrong.

    Episodes: ``"ok"``; ``"raises"`` (a reader library's RuntimeError); ``"narrow"`` (2-wide
    actions, where the schema names 3: the writer refuses it); ``"ok-where"`` and
    ``"narrow-where"`` (with the source's `SOURCE_WHERE`). Info: ``"ok"``, ``"keyerror"`` (a parser's
    KeyError), ``"nan"`` (metadata holding NaN).
    """

    format: ClassVar[str] = "odd"

    def __init__(self, path: str, options: SourceOptions) -> None:
        self.path = path
        with open(os.path.join(path, "odd.json")) as fh:
            self.spec = json.load(fh)

    @classmethod
    def detect(cls, path: str) -> bool:
        return os.path.isfile(os.path.join(path, "odd.json"))

    def episodes(self) -> list[str]:
        return list(self.spec["episodes"])

    def info(self) -> SourceInfo:
        how = self.spec.get("info", "ok")
        if how == "keyerror":
            raise KeyError("featuresDict")
        metadata = {"gain": float("nan")} if how == "nan" else {}
        return SourceInfo("odd-1", {"actions": {"names": ["x", "y", "z"]}}, metadata, 10.0)

    def read(self, key: str) -> dict[str, Any]:
        how = self.spec["episodes"][key]
        if how == "raises":
            raise RuntimeError("Can't decode record (bad checksum)")
        width = 2 if how.startswith("narrow") else 3
        args: dict[str, Any] = {"actions": np.zeros((4, width), np.float32)}
        if how.endswith("-where"):
            args[SOURCE_WHERE] = f"{self.path}/shard-00002: record 7"
        return args

    def close(self) -> None:
        pass


@pytest.fixture(autouse=True)
def _register(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(_base._BUILTIN, "odd", "test_ingest_error_names:OddSource")


def odd(tmp_path: Path, bad: dict[str, str], info: str = "ok") -> str:
    folder = tmp_path / "odd"
    folder.mkdir()
    episodes = {key: bad.get(key, "ok") for key in KEYS}
    (folder / "odd.json").write_text(json.dumps({"episodes": episodes, "info": info}))
    return str(folder)


@pytest.mark.parametrize("workers", [1, 2])
def test_an_unexpected_error_of_a_source_names_the_episode_and_can_be_skipped(
    tmp_path: Path, workers: int
) -> None:
    src = odd(tmp_path, {"ep3": "raises"})
    out = tmp_path / "out.kdb"
    with pytest.raises(ConversionError) as err:
        ingest(src, out, workers=workers)
    assert str(err.value) == f"{src}: episode ep3: RuntimeError: Can't decode record (bad checksum)"
    assert not out.exists()
    report = ingest(src, out, workers=workers, on_error="skip")
    assert report.skipped == [
        ("ep3", f"{src}: episode ep3: RuntimeError: Can't decode record (bad checksum)")
    ]
    assert report.episodes == len(KEYS) - 1


def test_a_writer_refusal_names_the_source_episode_before_the_output_position(tmp_path: Path) -> None:
    src = odd(tmp_path, {"ep5": "narrow"})
    out = tmp_path / "out.kdb"
    with pytest.raises(ConversionError) as err:
        ingest(src, out)
    message = str(err.value)
    assert message.startswith(f"{src}: episode ep5: ") and "actions" in message
    assert message.endswith("(it would be episode 5 of the output), or pass on_error='skip'")
    report = ingest(src, out, on_error="skip")
    assert [k for k, _ in report.skipped] == ["ep5"] and report.episodes == len(KEYS) - 1
    with kinodb.open(out) as db:
        assert "ep5" not in [db.read_meta(i)["source_episode"] for i in range(len(db))]


def test_a_writer_refusal_names_where_the_source_says_the_episode_lies(tmp_path: Path) -> None:
    src = odd(tmp_path, {"ep5": "narrow-where"})
    with pytest.raises(ConversionError) as err:
        ingest(src, tmp_path / "out.kdb")
    assert str(err.value).startswith(f"{src}/shard-00002: record 7: ")
    assert str(err.value).endswith("(it would be episode 5 of the output), or pass on_error='skip'")


def test_the_source_where_is_not_stored(tmp_path: Path) -> None:
    src = odd(tmp_path, dict.fromkeys(KEYS, "ok-where"))
    out = tmp_path / "out.kdb"
    assert ingest(src, out).episodes == len(KEYS)
    with kinodb.open(out) as db:
        assert SOURCE_WHERE not in db.read_meta(0) and db.read_meta(0)["source_episode"] == "ep0"


def test_a_sources_unexpected_error_on_its_metadata_names_the_source(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = odd(tmp_path, {}, info="keyerror")
    out = tmp_path / "out.kdb"
    with pytest.raises(
        ConversionError, match=r"cannot read the dataset metadata of the odd source: KeyError: featuresDict\Z"
    ):
        ingest(src, out)
    assert main(["ingest", src, "-o", str(out), "-q"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.startswith(f"error: {src}: cannot read") and not out.exists()


def test_metadata_the_writer_refuses_names_the_source(tmp_path: Path) -> None:
    src = odd(tmp_path, {}, info="nan")
    out = tmp_path / "out.kdb"
    with pytest.raises(ConversionError) as err:
        ingest(src, out)
    assert str(err.value).startswith(f"{src}: the dataset metadata or schema that the odd converter read")
    assert "gain" in str(err.value) and not out.exists()
