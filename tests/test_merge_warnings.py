"""`kino merge` warnings: dtypes of actions/states/rewards, extra arrays' dtypes and shapes,
and cameras that some inputs lack, each with a fix that helps."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import kinodb
from kinodb._cli.main import main


def _write(
    path: Path,
    *,
    dtype: str = "float32",
    states_dtype: str | None = None,
    episodes: int = 2,
    cameras: dict[str, int] | None = None,
    arrays: dict[str, tuple[str, tuple[int, ...]]] | None = None,
    dtypes: list[str] | None = None,
) -> Path:
    """A small file: ``episodes`` episodes of 4 frames, actions and rewards in ``dtype`` (or,
    per episode, in ``dtypes``), states in ``states_dtype`` (default: ``dtype``), square
    cameras of the given sizes, extra arrays of the given dtype and per-frame shape."""
    rng = np.random.default_rng(0)
    with kinodb.Writer(path) as w:
        for i in range(episodes):
            dt = dtypes[i] if dtypes else dtype
            extra: dict[str, Any] = {
                name: rng.normal(size=(4, *shape)).astype(adt)
                for name, (adt, shape) in (arrays or {}).items()
            }
            w.add_episode(
                actions=rng.normal(size=(4, 3)).astype(dt),
                states=rng.normal(size=(4, 2)).astype(states_dtype or dt),
                rewards=rng.normal(size=4).astype(dt),
                images={cam: np.zeros((4, size, size, 3), np.uint8) for cam, size in (cameras or {}).items()},
                extra_arrays=extra,
            )
    return path


def test_inputs_of_different_dtypes_merge_with_a_warning_that_names_them_and_the_fix(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a = _write(tmp_path / "a.kdb", dtype="float64")
    b = _write(tmp_path / "b.kdb", dtype="float32")
    out = tmp_path / "ab.kdb"
    assert main(["merge", str(a), str(b), "-o", str(out)]) == 0  # a warning, not a refusal
    err = capsys.readouterr().err
    (line,) = [w for w in err.splitlines() if "dtypes differ" in w]
    assert line == (
        "warning: dtypes differ between inputs: actions (a.kdb: float64, b.kdb: float32), "
        "states (a.kdb: float64, b.kdb: float32), rewards (a.kdb: float64, b.kdb: float32); "
        "kino stats, Database.gather and frame windows need one dtype per array in a file: re-ingest "
        "the inputs with one --dtype (such as --dtype float32) and merge them again, or keep them as "
        "separate files and combine them with kinodb.Mixture, whose batches bring every source's "
        "arrays to one dtype"
    )
    with kinodb.open(out) as m:
        assert len(m) == 4 and m.schema()["actions"]["dtype"] is None


def test_only_the_arrays_whose_dtypes_differ_are_named(tmp_path: Path) -> None:
    a = _write(tmp_path / "a.kdb", dtype="float32", states_dtype="float64")
    b = _write(tmp_path / "b.kdb", dtype="float32")
    result = kinodb.merge([a, b], tmp_path / "ab.kdb")
    (line,) = result.warnings
    assert line.startswith("dtypes differ between inputs: states (a.kdb: float64, b.kdb: float32); ")
    assert "actions" not in line and "rewards" not in line
    # Inputs of one dtype: no word about dtypes.
    assert kinodb.merge([b, b], tmp_path / "bb.kdb").warnings == [
        f"{b} is an input 2 times: each of its episodes is written 2 times; give it once unless that is meant"
    ]


def test_dtypes_are_those_of_the_episodes_the_filter_keeps(tmp_path: Path) -> None:
    mixed = _write(tmp_path / "mixed.kdb", episodes=3, dtypes=["float32", "float64", "float32"])
    other = _write(tmp_path / "other.kdb", dtype="float32")
    assert kinodb.merge([mixed, other], tmp_path / "kept.kdb", filter="episode_id != 1").warnings == []
    (line,) = kinodb.merge([mixed, other], tmp_path / "all.kdb").warnings
    assert "actions (mixed.kdb: float32 and float64, other.kdb: float32)" in line


@pytest.mark.parametrize(
    ("first", "second", "hint"),
    [
        (("float64", (4,)), ("float32", (4,)),
         "(a.kdb: float64 (4,), b.kdb: float32 (4,)); readers must handle per-episode dtypes; "
         "re-ingest the inputs with one --dtype (such as --dtype float32) to give it one"),
        (("float64", (4,)), ("float32", (5,)),
         "(a.kdb: float64 (4,), b.kdb: float32 (5,)); readers must handle per-episode dtypes and shapes; "
         "re-ingest the inputs with one --dtype (such as --dtype float32) to give it one"),
        (("int64", (4,)), ("int32", (4,)),
         "(a.kdb: int64 (4,), b.kdb: int32 (4,)); readers must handle per-episode dtypes"),
    ],
    ids=["dtype", "both", "integers"],
)  # fmt: skip
def test_extra_array_hint_says_dtype_when_the_dtype_differs(
    tmp_path: Path, first: tuple[str, tuple[int, ...]], second: tuple[str, tuple[int, ...]], hint: str
) -> None:
    a = _write(tmp_path / "a.kdb", arrays={"lang": first})
    b = _write(tmp_path / "b.kdb", arrays={"lang": second})
    assert kinodb.merge([a, b], tmp_path / "ab.kdb").warnings == [
        f"extra array 'lang' differs between inputs {hint}"
    ]


def test_extra_array_absent_from_an_input(tmp_path: Path) -> None:
    a = _write(tmp_path / "a.kdb", arrays={"lang": ("float32", (4,))})
    b = _write(tmp_path / "b.kdb")
    assert kinodb.merge([a, b], tmp_path / "ab.kdb").warnings == [
        "extra array 'lang' differs between inputs (a.kdb: float32 (4,), b.kdb: absent); "
        "the episodes of b.kdb have none: readers must handle its absence"
    ]


def test_camera_absent_from_an_input_gets_hints_that_can_help(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a = _write(tmp_path / "a.kdb", cameras={"front": 8})
    b = _write(tmp_path / "b.kdb", cameras={"wrist": 16})
    assert main(["merge", str(a), str(b), "-o", str(tmp_path / "ab.kdb")]) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning: ")]
    assert warnings == [
        "warning: camera 'front' differs between inputs (a.kdb: 8x8x3, b.kdb: absent); the episodes of b.kdb "
        "have no 'front': frame windows over the merged file need image_key=False, or a kql_filter that "
        "leaves those episodes out",
        "warning: camera 'wrist' differs between inputs (a.kdb: absent, b.kdb: 16x16x3); the episodes of "
        "a.kdb have no 'wrist': frame windows over the merged file need image_key=False, or a kql_filter "
        "that leaves those episodes out",
        "warning: the inputs hold different cameras: to window each input's own camera, keep the inputs as "
        f"separate files and combine them with kinodb.Mixture({{{str(a)!r}: 1, {str(b)!r}: 1}}) and "
        "image_key={'front': ['front', 'wrist']} (a camera of each source, in order)",
    ]
    assert not any("image_size" in w for w in warnings)


def test_the_mixture_hint_needs_a_camera_in_every_input(tmp_path: Path) -> None:
    a = _write(tmp_path / "a.kdb", cameras={"front": 8})
    b = _write(tmp_path / "b.kdb")
    assert kinodb.merge([a, b], tmp_path / "ab.kdb").warnings == [
        "camera 'front' differs between inputs (a.kdb: 8x8x3, b.kdb: absent); the episodes of b.kdb have no "
        "'front': frame windows over the merged file need image_key=False, or a kql_filter that leaves "
        "those episodes out"
    ]


def test_camera_of_other_sizes_keeps_the_image_size_hint(tmp_path: Path) -> None:
    a = _write(tmp_path / "a.kdb", cameras={"front": 8})
    b = _write(tmp_path / "b.kdb", cameras={"front": 16})
    c = _write(tmp_path / "c.kdb")
    assert kinodb.merge([a, b], tmp_path / "ab.kdb").warnings == [
        "camera 'front' differs between inputs (a.kdb: 8x8x3, b.kdb: 16x16x3); "
        "batches need image_size=(H, W) to resize them alike"
    ]
    (line,) = kinodb.merge([a, b, c], tmp_path / "abc.kdb").warnings
    assert line.endswith(
        "the episodes of c.kdb have no 'front': frame windows over the merged file need image_key=False, "
        "or a kql_filter that leaves those episodes out; batches need image_size=(H, W) to resize them alike"
    )


def test_the_hints_given_are_what_the_frame_datasets_accept(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    from kinodb.torch import KinoFrameDataset

    a = _write(tmp_path / "a.kdb", cameras={"front": 8})
    b = _write(tmp_path / "b.kdb", cameras={"wrist": 8})
    result = kinodb.merge([a, b], tmp_path / "ab.kdb")
    assert "image_key={'front': ['front', 'wrist']}" in result.warnings[-1]
    with pytest.raises(kinodb.KinodbError, match="no camera 'front'"):
        KinoFrameDataset(str(tmp_path / "ab.kdb"), image_key="front")
    assert len(KinoFrameDataset(str(tmp_path / "ab.kdb"), image_key=False)) == 16
    mix = KinoFrameDataset(kinodb.Mixture({str(a): 1, str(b): 1}), image_key={"front": ["front", "wrist"]})
    assert mix[0]["images"]["front"].shape[-2:] == (8, 8)


def test_extra_fields_few_episodes_hold_are_named_when_they_would_swell_the_index(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    merge_module = importlib.import_module("kinodb.merge")

    monkeypatch.setattr(merge_module, "_SPARSE_BYTES", 64 << 10)  # the default needs far larger files
    paths = []
    for f in range(20):
        paths.append(tmp_path / f"f{f}.kdb")
        with kinodb.Writer(paths[-1]) as w:
            for i in range(10):
                w.add_episode(
                    actions=np.zeros((2, 2), np.float32),
                    extra={f"k{f}_{j}": i for j in range(4)} | {"all": i},
                )
    assert main(["merge", *map(str, paths), "-o", str(tmp_path / "out.kdb")]) == 0
    err = capsys.readouterr().err
    assert (
        "80 extra fields are each held by under a tenth of the 200 merged episodes ('k0_0', 'k0_1', " in err
    )
    assert "about 140.6 KiB here (720 bytes an episode)" in err and "'all'" not in err
    with kinodb.open(tmp_path / "out.kdb") as db:
        assert db._commit.index_length > 140_000  # what the warning foretold
    assert main(["merge", *map(str, paths[:1]), "-o", str(tmp_path / "one.kdb")]) == 0  # every field held
    assert "extra fields are each held" not in capsys.readouterr().err
