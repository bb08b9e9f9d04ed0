"""``prefetch_s=0`` pre-fetches every step with no wait, as kinfer does with a zero pre-fetch time."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pytest
from _kinfer_packages import MakePackage

from kinodb.infer import CallableProvider, InferError, Runner, load_model


class KinferStyle:
    """A kinfer 0.6.1 provider that notes when it pre-fetches and when its inputs are read."""

    def __init__(self) -> None:
        self.prefetched: list[float] = []
        self.read: list[float] = []

    def pre_fetch_inputs(self, input_types: list[str], metadata: Any) -> None:
        self.prefetched.append(time.perf_counter())

    def get_inputs(self, input_types: list[str], metadata: Any) -> dict[str, Any]:
        self.read.append(time.perf_counter())
        return {"joint_angles": np.ones(4, np.float32)}

    def take_action(self, action: np.ndarray, metadata: Any) -> None: ...


def test_zero_prefetch_calls_pre_fetch_inputs_every_step(make_package: MakePackage) -> None:
    model = load_model(make_package(inputs=("joint_angles", "carry"), commands=()).path)
    zero = KinferStyle()
    assert Runner(model, zero, rate_hz=200, max_steps=6, prefetch_s=0.0).run()["steps"] == 6
    assert len(zero.prefetched) == 6 and len(zero.read) == 6
    assert all(p <= r for p, r in zip(zero.prefetched, zero.read, strict=True))  # before each read
    off = KinferStyle()
    Runner(model, off, rate_hz=200, max_steps=6).run()  # prefetch_s=None: no pre-fetch
    assert off.prefetched == [] and len(off.read) == 6


def test_zero_prefetch_needs_pre_fetch_inputs(make_package: MakePackage) -> None:
    model = load_model(make_package(inputs=("joint_angles", "carry"), commands=()).path)
    with pytest.raises(InferError, match=r"prefetch_s is set but CallableProvider has no pre_fetch_inputs"):
        Runner(model, CallableProvider(joint_angles=lambda names: np.zeros(4)), rate_hz=50, prefetch_s=0.0)
