"""Open-loop evaluation: step a policy through recorded episodes and compare its actions."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from kinodb.infer._errors import InferError
from kinodb.infer._replay_provider import KdbReplayProvider
from kinodb.infer.model import Model
from kinodb.infer.providers import bind_provider
from kinodb.kdb.reader import Database


@dataclass
class ReplayReport:
    """Per-joint error of predicted against recorded actions.

    Errors cover the values where both the prediction and the recording are finite; the
    others are counted, never averaged in (a single NaN would hide every other error).

    Attributes:
        joint_names: the action order.
        episodes: the episodes replayed.
        frames: frames compared.
        mae: mean |predicted - recorded| per joint (NaN where no value compared).
        rmse: root-mean-square error per joint (NaN where no value compared).
        max_abs: largest |predicted - recorded| per joint (NaN where no value compared).
        per_episode: ``{"episode", "frames", "mae", "rmse"}`` (over all joints) per episode.
        nonfinite_predicted: per joint, frames where the policy gave NaN or Inf.
        nonfinite_recorded: per joint, frames whose recorded action is NaN or Inf (a
            logged null, say), not compared.
        first_nonfinite: ``{"episode", "frame", "joint"}`` of the first NaN or Inf the
            policy gave, or None.
    """

    joint_names: tuple[str, ...]
    episodes: list[int]
    frames: int
    mae: npt.NDArray[np.float64]
    rmse: npt.NDArray[np.float64]
    max_abs: npt.NDArray[np.float64]
    per_episode: list[dict[str, Any]] = field(default_factory=list)
    nonfinite_predicted: npt.NDArray[np.int64] | None = None
    nonfinite_recorded: npt.NDArray[np.int64] | None = None
    first_nonfinite: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (strict JSON: an error over no values is null)."""
        J = len(self.joint_names)
        bad_pred = np.zeros(J, np.int64) if self.nonfinite_predicted is None else self.nonfinite_predicted
        bad_rec = np.zeros(J, np.int64) if self.nonfinite_recorded is None else self.nonfinite_recorded
        joints = [
            {"joint": j, "mae": _num(a), "rmse": _num(r), "max_abs": _num(m),
             "nonfinite_predicted": int(p), "nonfinite_recorded": int(q)}
            for j, a, r, m, p, q in zip(self.joint_names, self.mae, self.rmse, self.max_abs, bad_pred, bad_rec,
                                        strict=True)
        ]  # fmt: skip
        seen = np.isfinite(self.mae)
        return {
            "episodes": self.episodes, "frames": self.frames, "joints": joints,
            "mae": _num(self.mae[seen].mean()) if seen.any() else None,
            "rmse": _num(np.sqrt((self.rmse[seen] ** 2).mean())) if seen.any() else None,
            "nonfinite_predicted": int(bad_pred.sum()), "nonfinite_recorded": int(bad_rec.sum()),
            "first_nonfinite": self.first_nonfinite,
            "per_episode": self.per_episode,
        }  # fmt: skip


def _num(value: Any) -> float | None:
    """``value`` as a JSON number, None where it is NaN or infinite."""
    value = float(value)
    return value if np.isfinite(value) else None


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
    `KdbReplayProvider` finds them. Where the file names its joints (a recording does, as
    ``joint_angles.<joint>``; a LeRobot ingest does plainly), the joint inputs and the
    recorded actions are both matched to the policy's joints by name: the same joints in
    another order are reordered, other joints are refused. Where it names none, both are
    used by position; where only one side names them, in another order than the policy's,
    the replay is refused rather than compare one joint with another. ``by_name=False``
    feeds and compares the columns by position.

    Example:
        >>> report = replay(load_model("walk.kinfer"), "rollouts.kdb", episodes=[0, 1])
        >>> report.mae

    Raises:
        InferError: an input cannot be found, the recorded actions' width is not the
            model's joint count, the file names other joints than the policy's, or only
            one side (the joint inputs or the actions) names its joints, in another order.
        EpisodeNotFoundError: an episode index is out of range.
    """
    db = data if isinstance(data, Database) else Database(data)
    try:
        picked = list(range(len(db))) if episodes is None else [int(i) for i in episodes]
        sig = model.signature
        J = sig.num_joints
        err_sum, sq_sum, worst, counted = np.zeros(J), np.zeros(J), np.full(J, -np.inf), np.zeros(J, np.int64)
        bad_pred, bad_rec = np.zeros(J, np.int64), np.zeros(J, np.int64)
        first: dict[str, Any] | None = None
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
            predicted = provider.predicted.astype(np.float64)
            pred_ok, rec_ok = np.isfinite(predicted), np.isfinite(recorded)
            bad_pred += (~pred_ok).sum(axis=0)
            bad_rec += (~rec_ok).sum(axis=0)
            if first is None and not pred_ok.all():
                t, j = np.argwhere(~pred_ok)[0]
                first = {"episode": i, "frame": int(t), "joint": sig.joint_names[j]}
            both = pred_ok & rec_ok
            err = np.where(both, np.abs(predicted - recorded), 0.0)
            err_sum += err.sum(axis=0)
            sq_sum += (err**2).sum(axis=0)
            counted += both.sum(axis=0)
            worst = np.maximum(worst, np.where(both, err, -np.inf).max(axis=0, initial=-np.inf))
            frames += len(err)
            n = int(both.sum())
            rows.append({"episode": i, "frames": len(err), "mae": float(err.sum()) / n if n else None,
                         "rmse": float(np.sqrt((err**2).sum() / n)) if n else None})  # fmt: skip
        model.reset()
    finally:
        if not isinstance(data, Database):
            db.close()
    if not frames:
        raise InferError("no frames to replay: the episode selection is empty")
    with np.errstate(invalid="ignore", divide="ignore"):  # NaN for a joint never compared
        mae, rmse = err_sum / counted, np.sqrt(sq_sum / counted)
    worst[counted == 0] = np.nan
    return ReplayReport(sig.joint_names, picked, frames, mae, rmse, worst, rows, bad_pred, bad_rec, first)
