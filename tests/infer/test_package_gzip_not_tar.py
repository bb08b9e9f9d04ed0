"""A gzip file that holds no tar is refused as such, not with every compression's failure."""

from __future__ import annotations

import gzip
import tarfile
from pathlib import Path

import pytest
from _kinfer_packages import MakePackage

from kinodb.infer import InferError, load_model


def test_gzip_data_that_is_not_a_tar_is_named(make_package: MakePackage, tmp_path: Path) -> None:
    with tarfile.open(make_package().path) as tar:
        handle = tar.extractfile("step_fn.onnx")
        assert handle is not None
        step = handle.read()
    bad = tmp_path / "walk.kinfer"
    bad.write_bytes(gzip.compress(step))  # gzip -c step_fn.onnx > walk.kinfer
    with pytest.raises(InferError) as err:
        load_model(bad)
    text = str(err.value)
    assert text.startswith(f"{bad}: the gzip data is not a tar archive (")
    assert f"decompressed, it starts with {step[:8]!r}" in text
    assert "pack with tar czf NAME.kinfer -C DIR init_fn.onnx step_fn.onnx metadata.json" in text
    assert "bzip2" not in text and "not a gzip file" not in text

    empty = tmp_path / "empty.kinfer"
    empty.write_bytes(gzip.compress(b""))
    with pytest.raises(InferError, match=r"empty\.kinfer: the gzip data is not a tar archive .*it is empty"):
        load_model(empty)
