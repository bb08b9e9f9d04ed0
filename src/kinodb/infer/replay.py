"""Open-loop evaluation: step a policy through recorded episodes and compare its actions."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from kinodb.infer._errors import InferError
from kinodb.infer.model import Model
from kinodb.infer.providers import KdbReplayProvider, bind_provider
from kinodb.kdb.reader import Database


@dataclass
class ReplayReport:
    """Per-joint error of predicted against recorded actions.

    Attributes:
        joint_names: the action order.
        episodes: the episodes replayed.
        frames: frames compared.
        mae: mean |predicted - recorded| per joint.
        rmse: root-mean-square error per joint.
        max_abs: largest |predicted - recorded| per joint.
        per_episode: ``{"episode", "frames", "mae", "rmse"}`` (over all joints) per episode.
    """

    joint_names: tuple[str, ...]
    episodes: list[int]
    frames: int
    mae: npt.NDArray[np.float64]
    rmse: npt.NDArray[np.float64]
    max_abs: npt.NDArray[np.float64]
    per_episode: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "episodes": self.episodes, "frames": self.frames,
            "joints": [
                {"joint": j, "mae": float(a), "rmse": float(r), "max_abs": float(m)}
                for j, a, r, m in zip(self.joint_names, self.mae, self.rmse, self.max_abs, strict=True)
            ],
            "mae": float(self.mae.mean()), "rmse": float(np.sqrt((self.rmse**2).mean())),
            "per_episode": self.per_episode,
        }  # fmt: skip


def replay(
    model: Model,
    data: Database | str | os.PathLike[str],
    *,
    episodes: Sequence[int] | None = None,
    state_map: Sequence[str] | Mapping[str, str] | None = None,
    by_name: bool = True,
) -> ReplayReport:
    """Step ``model`` through each episode's recorded observations, as fast as it runs.

    The carry is reset at the start of every episode. Inputs are found as
    `KdbReplayProvider` finds them. Where the file names its joints (a recording does),
    the joint inputs and the recorded actions are matched to the policy's joints by name:
    the same joints in another order are reordered, other joints are refused.
    ``by_name=False`` feeds and compares the columns by position.

    Example:
        >>> report = replay(load_model("walk.kinfer"), "rollouts.kdb", episodes=[0, 1])
        >>> report.mae

    Raises:
        InferError: an input cannot be found, the recorded actions' width is not the
            model's joint count, or the file names other joints than the policy's.
        EpisodeNotFoundError: an episode index is out of range.
    """
    db = data if isinstance(data, Database) else Database(data)
    try:
        picked = list(range(len(db))) if episodes is None else [int(i) for i in episodes]
        sig = model.signature
        J = sig.num_joints
        err_sum, sq_sum, worst = np.zeros(J), np.zeros(J), np.zeros(J)
        frames, rows = 0, []
        for i in picked:
            provider = KdbReplayProvider(db, i, state_map=state_map, by_name=by_name)
            shape = provider.recorded_actions.shape
            if len(shape) != 2 or shape[1] != J:
                raise InferError(
                    f"{db.path()}: episode {i}: recorded actions are {list(shape)}; the model "
                    f"outputs {J} joints ({', '.join(sig.joint_names[:4])}{', ...' if J > 4 else ''})"
                )
            recorded = np.asarray(provider.actions_in_order(sig), np.float64)
            bound = bind_provider(sig, provider)
            fetch, take = bound.fetch, bound.take_action
            model.reset()
            for _ in range(provider.num_frames):
                take(model.step(fetch()))
            diff = provider.predicted.astype(np.float64) - recorded
            err_sum += np.abs(diff).sum(axis=0)
            sq_sum += (diff**2).sum(axis=0)
            worst = np.maximum(worst, np.abs(diff).max(axis=0))
            frames += len(diff)
            rows.append({"episode": i, "frames": len(diff), "mae": float(np.abs(diff).mean()),
                         "rmse": float(np.sqrt((diff**2).mean()))})  # fmt: skip
        model.reset()
    finally:
        if not isinstance(data, Database):
            db.close()
    if not frames:
        raise InferError("no frames to replay: the episode selection is empty")
    return ReplayReport(
        sig.joint_names, picked, frames, err_sum / frames, np.sqrt(sq_sum / frames), worst, rows
    )
