"""Packages of every kinfer generation, built from the reference's description.

A module of its own, not conftest: test files import from it, and ``conftest`` names
another directory's module too when pytest runs several directories at once.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("onnxruntime", reason="the infer extra (onnxruntime) is not installed")
pytest.importorskip("onnx", reason="the infer extra (onnx) is not installed")

from _kinfer_builders import (
    fixed_shapes,
    init_graph,
    metadata_bytes,
    reference_step,
    step_graph,
    with_props,
    write_archive,
)

JOINTS = ("hip", "knee", "ankle", "toe")
COMMANDS = ("vx", "vy", "wz")
CURRENT_INPUTS = (
    "joint_angles", "joint_angular_velocities", "projected_gravity", "accelerometer", "gyroscope", "command",
    "time", "carry",
)  # fmt: skip
# The 0.5-era real K-Bot policy's inputs (walk_jun22.kinfer), with its [2, N] carry.
V05_INPUTS = (
    "joint_angles",
    "joint_angular_velocities",
    "quaternion",
    "initial_heading",
    "command",
    "gyroscope",
    "carry",
)


@dataclass
class Built:
    """A package on disk and what its step computes."""

    path: Path
    weights: dict[str, np.ndarray]
    order: tuple[str, ...]
    joints: tuple[str, ...]
    commands: tuple[str, ...]
    carry: tuple[int, ...]
    initial: np.ndarray

    def reference(self, feed: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
        return reference_step(self.weights, self.order, feed, self.carry)

    def random_obs(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        shapes = shapes_for(len(self.joints), len(self.commands), self.carry)
        return {n: rng.normal(size=shapes[n]).astype(np.float32) for n in self.order if n != "carry"}


def shapes_for(joints: int, commands: int, carry: Sequence[int]) -> dict[str, list[int]]:
    return fixed_shapes(joints, commands, carry)


MakePackage = Callable[..., Built]


def package_maker(tmp_path: Path) -> MakePackage:
    """Build a package of a kinfer generation: "0.6", "0.5", "0.4", "0.4-legacy" or "onnx"."""
    counter = iter(range(1000))

    def make(
        generation: str = "0.6",
        *,
        inputs: Sequence[str] | None = None,
        joints: Sequence[str] = JOINTS,
        commands: Sequence[str] = COMMANDS,
        carry: Sequence[int] = (8,),
        extra_members: Sequence[tuple[str, bytes]] = (),
        seed: int = 0,
    ) -> Built:
        j, c, carry_t = tuple(joints), tuple(commands), tuple(carry)
        order = tuple(inputs or (V05_INPUTS if generation == "0.5" else CURRENT_INPUTS))
        shapes = shapes_for(len(j), len(c), carry_t)
        step, weights = step_graph({n: shapes[n] for n in order}, len(j), carry_t, seed=seed)
        initial = np.random.default_rng(seed + 1).normal(size=carry_t).astype(np.float32)
        n = next(counter)
        if generation == "onnx":
            path = tmp_path / f"plain{n}.onnx"
            meta = {"joint_names": list(j), "command_names": list(c), "carry_size": list(carry_t)}
            path.write_bytes(with_props(step, {"kinfer_metadata": json.dumps(meta)}))
            return Built(path, weights, order, j, c, carry_t, np.zeros(carry_t, np.float32))
        if generation == "0.6":
            meta_member = ("metadata.json", metadata_bytes({"joint_names": list(j), "command_names": list(c),
                                                            "carry_size": list(carry_t)}))  # fmt: skip
        elif generation == "0.5":
            meta_member = ("metadata.json", metadata_bytes({"joint_names": list(j), "num_commands": len(c),
                                                            "carry_size": list(carry_t)}))  # fmt: skip
        elif generation == "0.4":
            meta_member = (
                "metadata.json",
                metadata_bytes({"joint_names": list(j), "num_commands": len(c) or None}),
            )
        elif generation == "0.4-legacy":
            meta_member = ("joint_names.json", json.dumps(list(j)).encode())
        else:
            raise ValueError(generation)
        members = [("init_fn.onnx", init_graph(initial)), ("step_fn.onnx", step), meta_member, *extra_members]
        path = write_archive(tmp_path / f"policy{n}.kinfer", members)
        return Built(path, weights, order, j, c, carry_t, initial)

    return make
