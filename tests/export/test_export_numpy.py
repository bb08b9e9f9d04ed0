"""Export to a folder of .npy files: contents equal the source, names are safe and ordered."""

from __future__ import annotations

import json
import os
import urllib.parse
from pathlib import Path

import numpy as np
import pytest

import kinodb
from kinodb.errors import ConversionError
from kinodb.export import export
from kinodb.export._base import file_name, index_width


def _load(folder: Path, name: str) -> dict:
    return json.loads((folder / name).read_text(encoding="utf-8"))


@pytest.mark.parametrize("codec", ["jpeg", "png", "raw"])
def test_files_equal_the_source(make_kdb, tmp_path: Path, codec: str) -> None:
    src, _ = make_kdb(
        3, image_codec=codec, cameras={"front": (6, 5, 3), "depth": (6, 5, 1)} if codec != "jpeg" else
        {"front": (6, 5, 3)}, timestamps=True, extra_arrays={"lang": (4,), "grid": (2, 3)},
        metadata={"robot": "arm"},
    )  # fmt: skip
    out = tmp_path / "out"
    report = export(src, out, format="numpy")
    assert (report.episodes, report.format, report.output) == (3, "numpy", str(out))
    files = [p for p in out.rglob("*") if p.is_file()]
    assert report.files == len(files) and report.bytes == sum(p.stat().st_size for p in files)
    with kinodb.open(src) as db:
        info = _load(out, "dataset.json")
        assert info.pop("export")["episodes"] == 3 and info == db.dataset_info()
        index = _load(out, "episodes.json")
        assert index["num_episodes"] == 3 and index["num_frames"] == db.num_frames()
        for k, entry in enumerate(index["episodes"]):
            folder = out / entry["dir"]
            record = _load(folder, "meta.json")
            assert record["position"] == entry["position"] == k
            assert record["meta"] == db.read_meta(k)
            arrays = db.read_episode_actions_only(k)
            arrays.pop("meta")
            assert set(record["arrays"]) == set(arrays) >= {"actions", "timestamps", "lang", "grid"}
            for name, want in arrays.items():
                got = np.load(folder / record["arrays"][name]["file"])
                assert got.dtype == want.dtype and got.shape == want.shape
                assert got.tobytes() == want.tobytes(), name  # bit for bit
            cams = db.cameras(k)
            assert set(record["cameras"]) == set(cams)
            for name, cam in record["cameras"].items():
                T = cam["shape"][0]
                assert cam["codec"] == cams[name]["codec"] == codec
                assert tuple(cam["shape"]) == cams[name]["shape"]
                if codec == "raw":
                    frames = np.load(folder / cam["file"])
                    assert np.array_equal(frames, db.read_episode(k)["images"][name])
                else:
                    for t in range(T):
                        blob = (folder / cam["frames"].format(frame=t)).read_bytes()
                        assert blob == db.read_image_bytes(k, name, t)
                    assert len(list((folder / cam["frames"]).parent.iterdir())) == T


def test_more_than_1000_episodes_sort_numerically(make_kdb, tmp_path: Path) -> None:
    n = 1003
    eps = [{"actions": np.full((1, 1), i, np.float32)} for i in range(n)]
    src, _ = make_kdb(eps)
    out = tmp_path / "out"
    export(src, out)
    dirs = sorted(p.name for p in out.iterdir() if p.is_dir())
    index = _load(out, "episodes.json")["episodes"]
    assert dirs == [e["dir"] for e in index] and len(dirs) == n
    assert dirs[999:1001] == ["episode_000999", "episode_001000"]
    for k in (0, 7, 999, 1000, n - 1):
        assert np.load(out / dirs[k] / "actions.npy")[0, 0] == k


def test_index_width_grows_with_the_count() -> None:
    assert index_width(1) == 6 and index_width(1_000_000) == 6
    assert index_width(1_000_001) == 7
    names = [f"{k:0{index_width(1_000_001)}d}" for k in (999_999, 1_000_000)]
    assert names == sorted(names)


@pytest.mark.parametrize(
    "name", ["a/b", "..", ".", "x y", "café", "%41", "back\\slash", "new\nline", "{frame}"]
)
def test_camera_names_become_safe_file_names(make_kdb, tmp_path: Path, name: str) -> None:
    src, _ = make_kdb(1, image_codec="png", cameras={name: (4, 4, 3)})
    out = tmp_path / "out"
    export(src, out)
    folder = out / "episode_000000"
    record = _load(folder, "meta.json")
    cam = record["cameras"][name]  # meta keeps the real name ...
    rel = cam["frames"].format(frame=0)
    path = folder / rel
    assert path.is_file() and path.resolve().is_relative_to(folder.resolve())  # ... files stay inside
    escaped = rel.split("/")[1]
    assert escaped not in (".", "..") and "/" not in escaped and "\\" not in escaped
    assert urllib.parse.unquote(escaped) == name  # reversible
    assert sorted(os.listdir(folder / "images")) == [escaped]


def test_extra_array_names_are_escaped_too(make_kdb, tmp_path: Path) -> None:
    ep = {"actions": np.zeros((2, 1), np.float32), "extra_arrays": {"../up": np.arange(2.0)}}
    src, _ = make_kdb([ep])
    out = tmp_path / "out"
    export(src, out)
    record = _load(out / "episode_000000", "meta.json")
    assert record["arrays"]["../up"]["file"] == "..%2Fup.npy"
    assert np.array_equal(np.load(out / "episode_000000" / "..%2Fup.npy"), np.arange(2.0))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["f0.kdb", "out"])


def test_names_differing_only_in_case_are_refused(make_kdb, tmp_path: Path) -> None:
    src, _ = make_kdb(1, image_codec="png", cameras={"Front": (4, 4, 3), "front": (4, 4, 3)})
    with pytest.raises(ConversionError, match="differ only in letter case"):
        export(src, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_overlong_names_are_refused() -> None:
    assert file_name("ok-name_1.x", "camera") == "ok-name_1.x"
    with pytest.raises(ConversionError, match="cannot be a file name"):
        file_name("é" * 40, "camera")


@pytest.mark.parametrize("fmt", ["numpy", "json"])
def test_statistics_are_kept_only_when_they_describe_the_export(tmp_path: Path, fmt: str) -> None:
    from kinodb.stats import compute_stats, write_stats
    from kinodb.synthetic import create_test

    src = tmp_path / "src.kdb"
    create_test(src, 6, 5)
    write_stats(src, compute_stats(src))

    def exported(name: str, **options: object) -> dict:
        export(src, tmp_path / name, format=fmt, **options)
        return json.loads((tmp_path / name / "dataset.json").read_text())

    whole = exported("whole")
    assert whole["stats"]["num_episodes"] == 6 and "stats_left_out" not in whole["export"]
    counts_left_out = {k: v for k, v in compute_stats(src).items() if k != "num_episodes"}
    write_stats(src, counts_left_out)  # counts are optional: not stale, as Database.stats() judges
    assert exported("no_counts")["stats"]["num_frames"] == 30
    write_stats(src, compute_stats(src))
    some = exported("some", filter="episode_id < 2")
    assert "stats" not in some
    assert "cover all 6 episodes and this export holds 2" in some["export"]["stats_left_out"]
    with kinodb.Writer(src, mode="a") as w:  # the stored statistics are now stale
        w.add_episode(actions=np.zeros((3, 7), np.float32), states=np.zeros((3, 14), np.float32))
    stale = exported("stale")
    assert "stats" not in stale and "stale" in stale["export"]["stats_left_out"]
