"""robomimic's ``next_obs``: ingested without keeping ``obs`` twice, exported back bit for bit.

robomimic's own files hold ``next_obs[t] = obs[t + 1]`` for ``t < T - 1`` and, as
``next_obs[T - 1]``, the observation after the final action (``dataset_states_to_obs``
plays that action to get it), which no row of ``obs`` holds. The files here are written by
h5py in that layout.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import kinodb
from kinodb.export import export
from kinodb.ingest import ingest, verify

h5py = pytest.importorskip("h5py")

LENGTHS = {"demo_0": 4, "demo_1": 6, "demo_2": 1}
KEYS = {"robot0_eef_pos": ((3,), np.float64), "agentview_image": ((8, 6, 3), np.uint8)}


def _values(rng: np.random.Generator, n: int, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    if dtype == np.uint8:
        return rng.integers(0, 256, (n, *shape), dtype=np.uint8)
    values = rng.normal(size=(n, *shape))
    values[0, 0] = -0.0  # bits a comparison by value would not see
    return values


def write_file(path: Path, *, seed: int = 0, problem: bool = False) -> Path:
    """Demos whose next_obs is obs one frame later with a new last row, as robomimic writes it."""
    rng = np.random.default_rng(seed)
    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        data.attrs["env_args"] = json.dumps(
            {"env_name": "Lift", "type": 1, "env_kwargs": {"control_freq": 20}}
        )
        if problem:  # LIBERO: frames stored upside down
            data.attrs["problem_info"] = json.dumps({"language_instruction": "lift"})
        for name, T in LENGTHS.items():
            g = data.create_group(name)
            g.attrs["num_samples"] = T
            g["actions"] = rng.uniform(-1, 1, (T, 7))
            g["rewards"] = np.zeros(T)
            g["dones"] = (np.arange(T) == T - 1).astype(np.int64)
            for key, (shape, dtype) in KEYS.items():
                full = _values(rng, T + 1, shape, dtype)
                g[f"obs/{key}"], g[f"next_obs/{key}"] = full[:-1], full[1:]
    return path


def _demos(path: Path) -> dict[str, dict[str, np.ndarray]]:
    """Every dataset of every demo, by path."""
    out: dict[str, dict[str, np.ndarray]] = {}
    with h5py.File(path, "r") as f:
        for demo, g in f["data"].items():
            names: list[str] = []
            g.visit(names.append)
            out[demo] = {k: g[k][()] for k in names if isinstance(g[k], h5py.Dataset)}
    return out


def _same_next_obs(source: Path, exported: Path) -> None:
    """Every next_obs key of every demo, bit for bit, in the same dtype."""
    src, out = _demos(source), _demos(exported)
    for demo, datasets in src.items():
        for path, want in datasets.items():
            if path.startswith("next_obs/"):
                got = out[demo][path]
                assert got.dtype == want.dtype and got.tobytes() == want.tobytes(), (demo, path)


def test_next_obs_comes_back_bit_for_bit_with_its_last_row(tmp_path: Path) -> None:
    src = write_file(tmp_path / "lift.hdf5")
    kdb = tmp_path / "lift.kdb"
    report = ingest(src, kdb, image_codec="png", verify=True)
    assert report.verification is not None and report.verification.ok, report.verification.problems
    with kinodb.open(kdb) as db, h5py.File(src, "r") as f:
        hdf5 = db.metadata()["hdf5"]
        assert "next_obs" not in hdf5["left_out"]
        assert hdf5["next_obs"] == {key: f"next_obs.{key}" for key in sorted(KEYS)}
        for i, demo in enumerate(LENGTHS):
            ep = db.read_episode(i)
            assert not any(name.startswith("next_obs") for name in ep), "obs is not kept twice"
            rows = {key: rest for key, *rest in ep["meta"]["hdf5.next_obs_last"]}
            assert sorted(rows) == sorted(KEYS)
            for key, (dtype, shape, _) in rows.items():
                last = f[f"data/{demo}/next_obs/{key}"][-1]
                assert (np.dtype(dtype), tuple(shape)) == (last.dtype, last.shape)
    out = tmp_path / "export.hdf5"
    export(kdb, out, format="hdf5")
    _same_next_obs(src, out)
    # and an ingest of the export keeps the same rows again
    back = tmp_path / "back.kdb"
    ingest(out, back, image_codec="png")
    with kinodb.open(kdb) as a, kinodb.open(back) as b:
        for i in range(len(a)):
            assert a.read_meta(i)["hdf5.next_obs_last"] == b.read_meta(i)["hdf5.next_obs_last"]


def test_a_next_obs_that_is_not_obs_one_frame_later_is_kept_whole(tmp_path: Path) -> None:
    def other(f: Any) -> None:
        g = f["data/demo_1"]
        values = g["next_obs/robot0_eef_pos"][()]
        values[2, 1] = np.nextafter(values[2, 1], 5.0)  # one bit off: not obs one frame later
        g["next_obs/robot0_eef_pos"][...] = values
        for demo, T in LENGTHS.items():  # a key that obs does not hold
            f[f"data/{demo}/next_obs/contact"] = np.arange(T, dtype=np.int16)

    src = write_file(tmp_path / "lift.hdf5", seed=1)
    with h5py.File(src, "r+") as f:
        other(f)
    kdb = tmp_path / "lift.kdb"
    report = ingest(src, kdb, image_codec="png", verify=True)
    assert report.verification is not None and report.verification.ok, report.verification.problems
    with kinodb.open(kdb) as db, h5py.File(src, "r") as f:
        assert db.metadata()["hdf5"]["extra_arrays"]["next_obs.robot0_eef_pos"] == "next_obs/robot0_eef_pos"
        kept = db.read_episode(1)
        want = f["data/demo_1/next_obs/robot0_eef_pos"][()]
        assert kept["next_obs.robot0_eef_pos"].tobytes() == want.tobytes()
        assert [k for k, *_ in kept["meta"]["hdf5.next_obs_last"]] == ["agentview_image"]
        assert "next_obs.robot0_eef_pos" not in db.read_episode(0)  # decided per demo
        assert db.read_episode(0)["next_obs.contact"].dtype == np.int16
    out = tmp_path / "export.hdf5"
    assert export(kdb, out, format="hdf5").warnings == ()  # not "only some episodes hold it"
    _same_next_obs(src, out)
    with h5py.File(out, "r") as f:
        assert "next_obs.robot0_eef_pos" not in f["data/demo_1"] and "contact" not in f["data/demo_1/obs"]
    report = export(kdb, tmp_path / "no_next.hdf5", format="hdf5", next_obs=False)
    assert any("next_obs.contact" in w and "--no-next-obs" in w for w in report.warnings)


@pytest.mark.parametrize("where", ["last", "middle"])
def test_verify_compares_next_obs_with_what_the_kdb_holds(tmp_path: Path, where: str) -> None:
    src = write_file(tmp_path / "lift.hdf5", seed=2)
    kdb = tmp_path / "lift.kdb"
    ingest(src, kdb, image_codec="png")
    assert verify(src, kdb).ok
    with h5py.File(src, "r+") as f:
        ds = f["data/demo_1/next_obs/agentview_image"]
        frames = ds[()]
        frames[-1 if where == "last" else 2, 3, 1, 0] ^= 1
        ds[...] = frames
    report = verify(src, kdb)
    assert not report.ok
    said = "\n".join(report.problems)
    if where == "last":
        assert "next_obs/agentview_image's last row differs at element [3, 1, 0]" in said, said
    else:
        assert "array 'next_obs.agentview_image' is missing from the output" in said, said
        assert "no longer obs/agentview_image one frame later" in said, said


def test_flipped_frames_turn_their_next_obs_last_row_too(tmp_path: Path) -> None:
    src = write_file(tmp_path / "libero.hdf5", seed=3, problem=True)
    kdb = tmp_path / "upright.kdb"
    report = ingest(src, kdb, image_codec="png", flip_images=True, verify=True)
    assert report.verification is not None and report.verification.ok, report.verification.problems
    out = tmp_path / "export.hdf5"
    export(kdb, out, format="hdf5")  # turned back to the source's orientation
    _same_next_obs(src, out)
    upright = tmp_path / "upright.hdf5"
    export(kdb, upright, format="hdf5", flip_images=False)
    with h5py.File(src, "r") as a, h5py.File(upright, "r") as b:
        for demo in LENGTHS:
            want = a[f"data/{demo}/next_obs/agentview_image"][()][:, ::-1, ::-1]
            assert np.array_equal(b[f"data/{demo}/next_obs/agentview_image"][()], want), demo


def test_a_dtype_cast_casts_the_last_row_as_it_did_obs(tmp_path: Path) -> None:
    src = write_file(tmp_path / "lift.hdf5", seed=4)
    kdb = tmp_path / "lift.kdb"
    ingest(src, kdb, image_codec="png", dtype="float32")
    out = tmp_path / "export.hdf5"
    export(kdb, out, format="hdf5")
    with h5py.File(src, "r") as a, h5py.File(out, "r") as b:
        for demo in LENGTHS:
            got = b[f"data/{demo}/next_obs/robot0_eef_pos"][()]
            want = a[f"data/{demo}/next_obs/robot0_eef_pos"][()].astype(np.float32)
            assert got.dtype == np.float32 and got.tobytes() == want.tobytes(), demo


def test_a_file_ingested_without_the_record_exports_the_last_observation_again(tmp_path: Path) -> None:
    """A .kdb written before the last row was kept (no ``hdf5.next_obs_last``) exports as it did."""
    src = write_file(tmp_path / "lift.hdf5", seed=5)
    kdb = tmp_path / "lift.kdb"
    ingest(src, kdb, image_codec="png")
    old = tmp_path / "old.kdb"
    with kinodb.open(kdb) as db, kinodb.Writer(old, schema=db.schema(), metadata=db.metadata()) as w:
        for i in range(len(db)):
            ep = db.read_episode(i)
            meta = ep.pop("meta")
            extra = {k: v for k, v in meta.items() if k in ("source_file", "source_episode")}
            w.add_episode(actions=ep["actions"], states=ep["states"], rewards=ep["rewards"],
                          is_terminal=ep["is_terminal"], images=ep["images"], extra=extra)  # fmt: skip
    out = tmp_path / "old.hdf5"
    export(old, out, format="hdf5")
    with h5py.File(out, "r") as f:
        for demo in LENGTHS:
            obs, nxt = f[f"data/{demo}/obs/robot0_eef_pos"][()], f[f"data/{demo}/next_obs/robot0_eef_pos"][()]
            assert np.array_equal(nxt, np.concatenate([obs[1:], obs[-1:]])), demo
