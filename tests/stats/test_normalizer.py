"""`Normalizer`: the affine maps built from stored statistics, and their inverses."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

import kinodb
from kinodb.stats import STD_EPS, FeatureShapeError, Normalizer, compute_stats, write_stats


@pytest.fixture
def stored(tmp_path: Path) -> tuple[dict[str, Any], np.ndarray]:
    rng = np.random.default_rng(11)
    path = tmp_path / "d.kdb"
    acts = [
        rng.normal([1.0, -3.0, 0.0, 5.0], [0.5, 2.0, 1.0, 1e-3], (T, 4)).astype(np.float32)
        for T in (30, 17, 50)
    ]
    for a in acts:
        a[:, 2] = 0.75  # a constant feature
    with kinodb.Writer(path) as w:
        for a in acts:
            w.add_episode(actions=a, rewards=rng.random(len(a)).astype(np.float32))
    write_stats(path, compute_stats(path))
    with kinodb.open(path) as db:
        return db.stats(), np.concatenate(acts)


def test_mean_std_gives_zero_mean_and_unit_std(stored: tuple[dict[str, Any], np.ndarray]) -> None:
    stats, x = stored
    norm = Normalizer.from_stats(stats["arrays"]["actions"], "mean_std")
    y = norm.apply(x)
    assert y.dtype == np.float32 and y.shape == x.shape
    live = [0, 1, 3]
    np.testing.assert_allclose(y[:, live].mean(axis=0), 0, atol=1e-4)
    np.testing.assert_allclose(y[:, live].std(axis=0), 1, rtol=1e-3)
    np.testing.assert_array_equal(y[:, 2], 0)  # constant: (x - mean) / eps is exactly 0
    assert norm.scale[2] == 1 / STD_EPS


def test_min_max_maps_the_range_to_minus_one_one(stored: tuple[dict[str, Any], np.ndarray]) -> None:
    stats, x = stored
    norm = Normalizer.from_stats(stats["arrays"]["actions"], "min_max")
    y = norm.apply(x)
    live = [0, 1, 3]
    np.testing.assert_allclose(y[:, live].min(axis=0), -1, atol=1e-5)
    np.testing.assert_allclose(y[:, live].max(axis=0), 1, atol=1e-5)
    np.testing.assert_array_equal(y[:, 2], 0)  # constant features map to 0
    np.testing.assert_array_equal(norm.invert(y)[:, 2], 0.75)  # and back to their value


@pytest.mark.parametrize("mode", ["mean_std", "min_max"])
def test_invert_undoes_apply(stored: tuple[dict[str, Any], np.ndarray], mode: str) -> None:
    stats, x = stored
    norm = Normalizer.from_stats(stats["arrays"]["actions"], mode)
    back = norm.invert(norm.apply(x))
    assert back.dtype == np.float32
    np.testing.assert_allclose(back, x, rtol=1e-5, atol=1e-5)


def test_parameters_broadcast_over_leading_dimensions(stored: tuple[dict[str, Any], np.ndarray]) -> None:
    stats, x = stored
    norm = Normalizer.from_stats(stats["arrays"]["actions"], "mean_std")
    batch = x[:96].reshape(8, 12, 4)
    np.testing.assert_array_equal(norm.apply(batch), norm.apply(x[:96]).reshape(8, 12, 4))
    np.testing.assert_array_equal(norm.apply(x[5]), norm.apply(x)[5])


def test_a_scalar_array_uses_its_per_frame_shape(stored: tuple[dict[str, Any], np.ndarray]) -> None:
    stats, _ = stored
    entry = stats["arrays"]["rewards"]
    norm = Normalizer.from_stats(entry, "min_max")
    assert norm.center.shape == () and entry["shape"] == []
    r = np.array([[entry["min"][0], entry["max"][0]]])
    np.testing.assert_allclose(norm.apply(r), [[-1, 1]], atol=1e-6)


def test_list_statistics_and_errors() -> None:
    norm = Normalizer.from_stats({"mean": [1.0, 2.0], "std": [2.0, 0.0]}, "mean_std", eps=0.5)
    np.testing.assert_array_equal(norm.apply([3.0, 2.5]), np.float32([1.0, 1.0]))
    with pytest.raises(ValueError, match="mean_std"):
        Normalizer.from_stats({"mean": [0.0], "std": [1.0]}, "zscore")
    with pytest.raises(ValueError, match="lack"):
        Normalizer.from_stats({"mean": [0.0], "std": [1.0]}, "min_max")
    with pytest.raises(ValueError, match=r"features \[1\] had no finite value"):
        Normalizer.from_stats({"min": [0.0, None], "max": [1.0, None]}, "min_max")


def test_an_array_of_other_features_is_refused_with_the_fix(
    stored: tuple[dict[str, Any], np.ndarray],
) -> None:
    stats, _ = stored
    norm = Normalizer.from_stats(stats["arrays"]["actions"], "mean_std")  # 4 features
    padded = np.zeros((3, 8, 26), np.float32)  # a batch padded to a wider source's 26
    for op in (norm.apply, norm.invert):
        with pytest.raises(FeatureShapeError) as err:
            op(padded)
        message = str(err.value)
        assert "4 features (shape (4,))" in message and "shape (3, 8, 26)" in message
        assert "x[batch['source'] == s][..., :4]" in message
        assert isinstance(err.value, ValueError) and isinstance(err.value, kinodb.KinodbError)
    with pytest.raises(FeatureShapeError, match=r"shape \(8, 3\); pass an array of shape \(\.\.\., 4\)"):
        norm.invert(np.zeros((8, 3)))
    with pytest.raises(FeatureShapeError, match=r"shape \(8, 1\)"):  # would broadcast to (8, 4)
        norm.apply(np.zeros((8, 1)))
    np.testing.assert_array_equal(norm.invert(padded[..., :4]), norm.invert(np.zeros((3, 8, 4))))
    torch = pytest.importorskip("torch")
    with pytest.raises(FeatureShapeError, match=r"got an array of shape \(3, 8, 26\)"):
        norm.invert(torch.zeros(3, 8, 26))


# -- torch tensors ------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["mean_std", "min_max"])
def test_tensors_stay_tensors_and_match_the_numpy_map(
    stored: tuple[dict[str, Any], np.ndarray], mode: str
) -> None:
    torch = pytest.importorskip("torch")
    stats, x = stored
    norm = Normalizer.from_stats(stats["arrays"]["actions"], mode)
    batch = x[:48].reshape(4, 12, 4)
    y = norm.apply(torch.from_numpy(batch))
    assert isinstance(y, torch.Tensor) and y.dtype == torch.float32 and y.shape == (4, 12, 4)
    # float32 on the tensor's device, yet as close to the float64 map as float32 rounding allows
    # (the center is split in two float32 parts: feature 3 has mean 5 and std 1e-3)
    np.testing.assert_allclose(y.numpy(), norm.apply(batch), rtol=0, atol=1e-6)
    back = norm.invert(y)
    assert isinstance(back, torch.Tensor) and back.dtype == torch.float32
    np.testing.assert_allclose(back.numpy(), norm.invert(y.numpy()), rtol=0, atol=1e-6)
    assert isinstance(norm.apply(batch), np.ndarray) and isinstance(norm.invert(batch), np.ndarray)
    wide = norm.invert(torch.from_numpy(batch.astype(np.float64)))  # float64 stays float64
    assert wide.dtype == torch.float64
    np.testing.assert_allclose(wide.numpy(), batch * norm.inverse + norm.center, rtol=1e-12)
    assert norm.apply(torch.ones(2, 4, dtype=torch.int64)).dtype == torch.float32
    assert norm.invert(torch.zeros(3, 4, dtype=torch.bfloat16)).dtype == torch.bfloat16


def test_a_policy_output_is_inverted_inside_the_autograd_graph(
    stored: tuple[dict[str, Any], np.ndarray],
) -> None:
    torch = pytest.importorskip("torch")
    stats, _ = stored
    norm = Normalizer.from_stats(stats["arrays"]["actions"], "mean_std")
    policy = torch.nn.Linear(4, 4)
    out = policy(torch.randn(8, 4))  # requires grad: no NumPy round trip could take it
    actions = norm.invert(out)
    assert actions.requires_grad and actions.grad_fn is not None and actions.dtype == torch.float32
    actions.sum().backward()
    assert policy.bias.grad is not None
    torch.testing.assert_close(policy.bias.grad, torch.from_numpy(8 * norm.inverse).float())
    wide = out.detach().double().requires_grad_()  # float64: the round trip is exact to rounding
    torch.testing.assert_close(norm.apply(norm.invert(wide))[:, [0, 1, 3]], wide[:, [0, 1, 3]])


def test_tensors_on_another_device_are_mapped_there(stored: tuple[dict[str, Any], np.ndarray]) -> None:
    torch = pytest.importorskip("torch")
    stats, _ = stored
    norm = Normalizer.from_stats(stats["arrays"]["actions"], "min_max")
    y = norm.invert(torch.empty(5, 4, device="meta"))  # no data: only where and how it would run
    assert y.device.type == "meta" and y.shape == (5, 4) and y.dtype == torch.float32


@pytest.mark.gpu
def test_cuda_tensors_are_mapped_on_the_gpu(stored: tuple[dict[str, Any], np.ndarray]) -> None:
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    stats, x = stored
    norm = Normalizer.from_stats(stats["arrays"]["actions"], "mean_std")
    y = norm.apply(torch.from_numpy(x).cuda())
    assert y.is_cuda
    np.testing.assert_allclose(y.cpu().numpy(), norm.apply(x), rtol=1e-5, atol=1e-5)
