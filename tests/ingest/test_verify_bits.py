"""``verify`` compares float arrays stored without a cast bit for bit: a NaN's payload or the
sign of a zero that changed shows, though the values compare equal."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from kinodb.ingest import ingest, verify
from kinodb.ingest._verify import other_bits

h5py = pytest.importorskip("h5py")

PAYLOAD = np.array([0x7FF8DEADBEEF0001], np.uint64).view(np.float64)[0]


def _file(path: Path) -> Path:
    """Two demos whose actions and obs hold -0.0 and a NaN with a payload."""
    rng = np.random.default_rng(7)
    with h5py.File(path, "w") as f:
        for name, T in (("demo_0", 3), ("demo_1", 4)):
            g = f.create_group(f"data/{name}")
            actions = rng.uniform(-1, 1, (T, 4))
            actions[0, 1], actions[1, 2] = -0.0, PAYLOAD
            g["actions"] = actions
            g["obs/eef_pos"] = rng.normal(size=(T, 3)).astype(np.float32)
    return path


def _change(path: Path, dataset: str, index: tuple[int, ...], bits: int) -> None:
    with h5py.File(path, "r+") as f:
        values = f[dataset][()]
        unsigned = values.view(np.uint64 if values.dtype.itemsize == 8 else np.uint32)
        unsigned[index] = bits
        f[dataset][...] = values


@pytest.mark.parametrize(
    ("dataset", "index", "bits", "said"),
    [
        ("data/demo_0/actions", (1, 2), 0x7FF8DEADBEEF0002, "actions differs in its bits at 1 place"),
        ("data/demo_0/actions", (0, 1), 0x0, "element [0, 1] (frame 0) holds 0x8000000000000000 (-0.0), "
                                             "the source 0x0000000000000000 (0.0)"),
        ("data/demo_1/obs/eef_pos", (2, 0), 0x7FC00123, "states differs in its bits"),
    ],
)  # fmt: skip
def test_bits_that_change_where_the_values_compare_equal_are_a_mismatch(
    tmp_path: Path, dataset: str, index: tuple[int, ...], bits: int, said: str
) -> None:
    src = _file(tmp_path / "x.hdf5")
    out = tmp_path / "x.kdb"
    ingest(src, out)
    if dataset.endswith("eef_pos"):  # a NaN first, so that the change is one of payload only
        _change(src, dataset, index, 0x7FC00001)
        ingest(src, out, overwrite=True)
    assert verify(src, out).ok
    _change(src, dataset, index, bits)
    report = verify(src, out)
    assert not report.ok and report.mismatches == {"arrays": 1}
    assert said in report.problems[0], report.problems


def test_a_recorded_cast_compares_values_only(tmp_path: Path) -> None:
    src = _file(tmp_path / "x.hdf5")
    out = tmp_path / "x.kdb"
    ingest(src, out, dtype="float32")  # a NaN's payload does not survive a cast to float32 whole
    assert verify(src, out).ok


def test_other_bits_names_the_first_element_and_passes_what_it_cannot_compare() -> None:
    a = np.array([[0.0, 1.0], [np.nan, -0.0]])
    b = a.copy()
    assert other_bits(a, b) is None
    b[1, 1] = 0.0
    assert "element [1, 1] (frame 1)" in (other_bits(a, b) or "")
    assert other_bits(a.astype(np.float32), b) is None  # another dtype: a cast, compared by value
    assert other_bits(np.zeros(2, np.int64), np.zeros(2, np.int64)) is None
