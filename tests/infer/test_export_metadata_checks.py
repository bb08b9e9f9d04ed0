"""export_torch checks the metadata as load_model does, before it exports or writes anything:
it never writes a package that load_model (or ``kino infer inspect``) would refuse."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch", reason="export needs torch")
pytest.importorskip("onnx")

from kinodb.infer import InferError, export_torch  # noqa: E402


class Doubler(torch.nn.Module):  # type: ignore[misc,name-defined]
    """A step that counts its calls: a refused export never runs it."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, joint_angles: Any, carry: Any) -> tuple[Any, Any]:
        self.calls += 1
        return joint_angles * 2, carry


@pytest.mark.parametrize(
    ("joints", "carry", "message"),
    [
        (["a", "a", "b"], (1,), "'joint_names' repeats ['a']"),
        (["a", ""], (1,), "'joint_names' must be a list of non-empty strings, got ['a', '']"),
        (["a", "b"], (-1,), "'carry_size' must be a list of non-negative integers, got [-1]"),
    ],
)
def test_metadata_load_model_would_refuse_is_refused_and_nothing_is_written(
    tmp_path: Path, joints: list[str], carry: tuple[int, ...], message: str
) -> None:
    path = tmp_path / "policy.kinfer"
    path.write_bytes(b"the previous export")
    step = Doubler()
    with pytest.raises(InferError) as err:
        export_torch(step, path, joint_names=joints, carry_shape=carry)
    assert str(err.value) == f"{path}: metadata.json: {message}"  # load_model's words for it
    assert step.calls == 0  # refused before anything was exported
    assert path.read_bytes() == b"the previous export"
    assert [p.name for p in tmp_path.iterdir()] == ["policy.kinfer"]


def test_legacy_metadata_is_checked_too(tmp_path: Path) -> None:
    class Legacy(torch.nn.Module):  # type: ignore[misc,name-defined]
        def forward(self, joint_angles: Any, quaternion: Any, carry: Any) -> tuple[Any, Any]:
            return joint_angles, carry

    path = tmp_path / "legacy.kinfer"
    with pytest.raises(InferError, match=r"metadata\.json: 'joint_names' repeats \['k'\]"):
        export_torch(Legacy(), path, joint_names=["k", "k"], carry_shape=(2,), legacy_inputs=True)
    assert not path.exists()
