"""RLDS episode-level tensors keep TFDS's shape; tensors TFDS stores as bytes decode exactly.

TFDS writes a tensor of ``encoding='bytes'`` as ``arr.tobytes()`` and of ``encoding='zlib'``
as ``zlib.compress(arr.tobytes())``: one bytes entry per step inside ``steps``, one per
element of a ``Sequence``, else one; a tensor of several unknown dimensions also gets
``KEY/shape`` beside ``KEY/value``. ``tfds.load`` returns episode-level tensors in their
shape (nested lists here). The datasets TFDS itself writes are in
``test_rlds_tfds_written.py``; these cover the other forms.
"""

from __future__ import annotations

import logging
import zlib
from pathlib import Path
from typing import Any

import _rlds_writer as w
import numpy as np
import pytest

import kinodb
from kinodb.errors import ConversionError
from kinodb.ingest import ingest, verify

T = 3


def _encoded(shape: list[int], dtype: str, encoding: str) -> dict[str, Any]:
    node = w.tensor(shape, dtype)
    node["pythonClassName"] = "tensorflow_datasets.core.features.tensor_feature.Tensor"
    node["tensor"]["encoding"] = encoding
    return node


def _sequence(inner: dict[str, Any]) -> dict[str, Any]:
    return {"pythonClassName": "tensorflow_datasets.core.features.sequence_feature.Sequence",
            "sequence": {"feature": inner, "length": "-1"}}  # fmt: skip


def _bytes(arr: np.ndarray, encoding: str) -> bytes:
    raw = arr.astype(arr.dtype.newbyteorder("<")).tobytes()
    return zlib.compress(raw) if encoding == "zlib" else raw


def _steps(**extra_steps: dict[str, Any]) -> dict[str, Any]:
    return {"is_first": w.tensor([], "bool"), "is_last": w.tensor([], "bool"),
            "action": w.tensor([2], "float32"), **extra_steps}  # fmt: skip


def _flags() -> dict[str, Any]:
    return {"steps/is_first": np.arange(T) == 0, "steps/is_last": np.arange(T) == T - 1,
            "steps/action": np.arange(2 * T, dtype=np.float32)}  # fmt: skip


def _write(root: Path, features: dict[str, Any], records: list[dict[str, Any]]) -> Path:
    return w.write_tfds(root, "shapes", {"train": [[w.episode_example(r) for r in records]]}, features)


def test_episode_tensors_of_several_dimensions_keep_their_nesting(tmp_path: Path) -> None:
    """As ``tfds.load`` returns them: a (3, 3) tensor, a Sequence of (2,) tensors, a
    ``(None, 3)`` tensor; NaN nested in one is still left out of the episode."""
    meta = w.features_dict({
        "intrinsics": w.tensor([3, 3], "float32"), "waypoints": _sequence(w.tensor([2], "float32")),
        "boxes": w.tensor([-1, 3], "int64"), "score": w.tensor([2, 2], "float32"),
    })  # fmt: skip
    features = {"steps": w.dataset(_steps()), "episode_metadata": meta}
    records = [
        {**_flags(), "episode_metadata/intrinsics": np.arange(9, dtype=np.float32) + e,
         "episode_metadata/waypoints": np.arange(2 * (e + 1), dtype=np.float32),
         "episode_metadata/boxes": np.arange(3 * e), "episode_metadata/score": np.array([1, 2, np.nan, 4] if e else [1, 2, 3, 4], np.float32)}
        for e in range(2)
    ]  # fmt: skip
    root = _write(tmp_path / "shapes" / "1.0.0", features, records)
    out = tmp_path / "out.kdb"
    ingest(root, out)
    with kinodb.open(out) as db:
        m0, m1 = db.read_meta(0), db.read_meta(1)
    assert m0["intrinsics"] == [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0], [6.0, 7.0, 8.0]]
    assert m1["waypoints"] == [[0.0, 1.0], [2.0, 3.0]] and m0["waypoints"] == [[0.0, 1.0]]
    assert m0["boxes"] == [] and m1["boxes"] == [[0, 1, 2]]
    assert m0["score"] == [[1.0, 2.0], [3.0, 4.0]]
    assert "score" not in m1 and m1["rlds.left_out"] == ["episode_metadata/score"]
    assert verify(root, out).ok


def test_a_value_count_that_makes_no_tensor_of_the_declared_shape_fails_the_episode(tmp_path: Path) -> None:
    features = {
        "steps": w.dataset(_steps()),
        "episode_metadata": w.features_dict({"m": w.tensor([2, 2], "float32")}),
    }
    records = [{**_flags(), "episode_metadata/m": np.zeros(4, np.float32)},
               {**_flags(), "episode_metadata/m": np.zeros(3, np.float32)}]  # fmt: skip
    root = _write(tmp_path / "shapes" / "1.0.0", features, records)
    report = ingest(root, tmp_path / "out.kdb", on_error="skip")
    assert report.episodes == 1
    (reason,) = [r for _, r in report.skipped]
    assert "episode_metadata/m has 3 values, which make no tensor of shape (2, 2)" in reason
    assert "features.json declares the features" in reason


@pytest.mark.parametrize("layout", ["episode", "step"])
@pytest.mark.parametrize("encoding", ["zlib", "bytes"])
def test_tensors_stored_as_bytes_decode_exactly(tmp_path: Path, encoding: str, layout: str) -> None:
    """Per-step float64, uint64 and bool tensors, and episode-level ones: a tensor, a
    Sequence of tensors, a ``(None, 2)`` tensor and a ``(None, None)`` one (with its shape)."""
    rng = np.random.default_rng(5)
    depth = rng.standard_normal((T, 2, 2))  # float64 values a float32 cannot hold
    ids = np.array([[2**63 + t, t] for t in range(T)], np.uint64)
    mask = np.array([[t % 2 == 0, True] for t in range(T)])
    calib = rng.standard_normal((2, 3)).astype(np.float32)
    seq = np.arange(6, dtype=np.int16).reshape(3, 2)
    rows = np.arange(4, dtype=np.int32).reshape(2, 2)
    grid = np.arange(6, dtype=np.int32).reshape(3, 2)
    steps = _steps(depth=_encoded([2, 2], "float64", encoding), ids=_encoded([2], "uint64", encoding),
                   mask=_encoded([2], "bool", encoding))  # fmt: skip
    meta = w.features_dict({"calib": _encoded([2, 3], "float32", encoding), "seq": _sequence(_encoded([2], "int16", encoding)),
                            "rows": _encoded([-1, 2], "int32", encoding), "grid": _encoded([-1, -1], "int32", encoding)})  # fmt: skip
    features: dict[str, Any] = {"steps": w.dataset(steps), "episode_metadata": meta}
    record = {
        **_flags(), "steps/depth": [_bytes(d, encoding) for d in depth], "steps/ids": [_bytes(i, encoding) for i in ids],
        "steps/mask": [_bytes(m, encoding) for m in mask], "episode_metadata/calib": [_bytes(calib, encoding)],
        "episode_metadata/seq": [_bytes(s, encoding) for s in seq], "episode_metadata/rows": [_bytes(rows, encoding)],
        "episode_metadata/grid/value": [_bytes(grid, encoding)], "episode_metadata/grid/shape": np.array([3, 2]),
    }  # fmt: skip
    root = tmp_path / "shapes" / "1.0.0"
    if layout == "step":  # one record per step, top-level features
        features = {**steps, "episode_metadata": meta}
        w.write_tfds(root, "shapes", {"train": [w.step_examples(record, T)]}, features)
    else:
        _write(root, features, [record])
    out = tmp_path / "out.kdb"
    ingest(root, out)
    with kinodb.open(out) as db:
        ep = db.read_episode(0)
        rlds = db.metadata()["rlds"]
    for name, want in (("depth", depth), ("ids", ids), ("mask", mask)):
        assert ep[name].dtype == want.dtype and ep[name].shape == want.shape, name
        assert ep[name].tobytes() == want.tobytes(), name
    meta_out = ep["meta"]
    assert meta_out["calib"] == calib.tolist() and meta_out["seq"] == seq.tolist()
    assert meta_out["rows"] == rows.tolist() and meta_out["grid"] == grid.tolist()
    assert rlds["features"]["steps/depth"] == {
        "kind": "float",
        "shape": [2, 2],
        "dtype": "float64",
        "encoding": encoding,
    }
    assert verify(root, out).ok


def test_a_tensor_stored_as_bytes_that_cannot_be_decoded_is_left_out_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """bfloat16 (no NumPy dtype), a per-step tensor of unknown shape, an unknown encoding:
    left out and listed with the reason; the rest of the dataset converts."""
    steps = _steps(bf=_encoded([2], "bfloat16", "zlib"), cloud=_encoded([-1, 3], "float32", "zlib"),
                   odd=_encoded([2], "float32", "gzip"), state=w.tensor([2], "float32"))  # fmt: skip
    record = {**_flags(), "steps/bf": [b"\x00" * 4] * T, "steps/cloud": [_bytes(np.zeros((t + 1, 3), np.float32), "zlib") for t in range(T)],
              "steps/odd": [b"?"] * T, "steps/state": np.ones(2 * T, np.float32)}  # fmt: skip
    root = _write(tmp_path / "left" / "1.0.0", {"steps": w.dataset(steps)}, [record])
    out = tmp_path / "out.kdb"
    with caplog.at_level(logging.WARNING, logger="kinodb.ingest.rlds"):
        ingest(root, out)
    with kinodb.open(out) as db:
        left = db.metadata()["rlds"]["left_out"]
        assert db.read_array(0, "state").shape == (T, 2)
    assert set(left) == {"steps/bf", "steps/cloud", "steps/odd"}
    assert "a bfloat16 tensor stored as bytes (encoding 'zlib'); this reader decodes" in left["steps/bf"]
    assert (
        "shape (None, 3)" in left["steps/cloud"] and "each step may hold another shape" in left["steps/cloud"]
    )
    assert "encoding 'gzip'" in left["steps/odd"]
    assert all(f"{root}: steps/{k} is left out" in caplog.text for k in ("bf", "cloud", "odd"))
    assert verify(root, out).ok


def test_actions_that_cannot_be_decoded_refuse_the_dataset_naming_it_and_the_fix(tmp_path: Path) -> None:
    steps = _steps(action=_encoded([2], "bfloat16", "bytes"))
    record = {**_flags(), "steps/action": [b"\x00" * 4] * T}
    root = _write(tmp_path / "bf" / "1.0.0", {"steps": w.dataset(steps)}, [record])
    with pytest.raises(ConversionError) as info:
        ingest(root, tmp_path / "out.kdb")
    message = str(info.value)
    assert message.startswith(f"{root}: steps/action is a bfloat16 tensor stored as bytes (encoding 'bytes')")
    assert "write the dataset anew with it as a tensor of fixed shape" in message


def test_bytes_that_do_not_decode_fail_the_episode_naming_the_record_and_the_step(tmp_path: Path) -> None:
    steps = _steps(depth=_encoded([2], "float32", "zlib"))
    good = {**_flags(), "steps/depth": [_bytes(np.zeros(2, np.float32), "zlib")] * T}
    damaged = {**_flags(), "steps/depth": [_bytes(np.zeros(2, np.float32), "zlib"), b"not zlib", b""]}
    short = {**_flags(), "steps/depth": [_bytes(np.zeros(3, np.float32), "zlib")] * T}
    root = _write(tmp_path / "bad" / "1.0.0", {"steps": w.dataset(steps)}, [good, damaged, short])
    report = ingest(root, tmp_path / "out.kdb", on_error="skip")
    assert report.episodes == 1
    reasons = [r for _, r in report.skipped]
    assert "record 1: steps/depth step 1 is not zlib data" in reasons[0]
    assert (
        "record 2: steps/depth step 0 holds 12 bytes, which make no float32 tensor of shape (2,)"
        in reasons[1]
    )


@pytest.mark.parametrize("layout", ["episode", "step"])
def test_step_flags_stored_as_bytes(tmp_path: Path, layout: str) -> None:
    """Decoded in a record per episode; a record per step, whose flags are scanned as plain
    values, is refused naming the dataset and the fix."""
    flags = {"is_first": _encoded([], "bool", "zlib"), "is_last": _encoded([], "bool", "zlib")}
    steps = {**_steps(), **flags}
    record = {**_flags()}
    for name in ("is_first", "is_last"):
        record[f"steps/{name}"] = [_bytes(np.array(v), "zlib") for v in record[f"steps/{name}"]]
    root = tmp_path / "flags" / "1.0.0"
    if layout == "step":
        w.write_tfds(root, "flags", {"train": [w.step_examples(record, T)]}, steps)
        with pytest.raises(
            ConversionError, match=r"steps/is_first is stored as bytes \(encoding 'zlib'\)"
        ) as info:
            ingest(root, tmp_path / "out.kdb")
        assert str(info.value).startswith(f"{root}: ") and "tfds.features.Scalar(dtype=np.bool_)" in str(
            info.value
        )
        return
    _write(root, {"steps": w.dataset(steps)}, [record, record])
    report = ingest(root, tmp_path / "out.kdb")
    assert report.episodes == 2
    with kinodb.open(tmp_path / "out.kdb") as db:
        assert db.read_meta(1)["num_frames"] == T
