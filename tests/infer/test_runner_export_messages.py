"""What the runner says when Ctrl-C or an error ends a run, and export_torch's messages on a
step function or a carry_shape it cannot take."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from _kinfer_packages import MakePackage
from test_infer_runner import Served

from kinodb.infer import InferError, Runner, load_model

NOTES = sys.version_info >= (3, 11)  # exception notes (add_note) are Python 3.11+
JOINTS = tuple(f"joint_{i}" for i in range(7))


def _ctrl_c_at(action: int) -> Any:
    def on_action(n: int) -> None:
        if n == action:
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C in the middle of the run

    return on_action


def test_ctrl_c_says_where_the_steps_went(
    make_package: MakePackage, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signal handlers are set on the main thread only")
    built = make_package()
    out, log = tmp_path / "runs.kdb", tmp_path / "runs.ndjson"
    model = load_model(built.path)
    Runner(model, Served(built).provider, rate_hz=1000, max_steps=4, record_to=out, log_path=log).run()
    served = Served(built, 1, on_action=_ctrl_c_at(5))
    with caplog.at_level(logging.WARNING, logger="kinodb.infer.runner"):
        stats = Runner(
            model, served.provider, rate_hz=1000, max_steps=1000, record_to=out, log_path=log
        ).run()
    assert stats["stopped_by"] == "interrupt" and stats["recorded_episode"] == 1
    said = [r.getMessage() for r in caplog.records if "Ctrl-C" in r.getMessage()]
    assert said == [
        f"the run stopped on Ctrl-C after {stats['steps']} steps; "
        f"this run appended {stats['log_lines']} lines to the NDJSON log {log}; {out} episode 1 holds its steps"
    ]
    assert stats["log_lines"] == stats["steps"] == len(served.actions)
    assert len(log.read_text().splitlines()) == 4 + stats["steps"]


def test_ctrl_c_without_log_or_recording_says_the_steps_only(
    make_package: MakePackage, caplog: pytest.LogCaptureFixture
) -> None:
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signal handlers are set on the main thread only")
    built = make_package()
    served = Served(built, on_action=_ctrl_c_at(3))
    with caplog.at_level(logging.WARNING, logger="kinodb.infer.runner"):
        stats = Runner(load_model(built.path), served.provider, rate_hz=1000, max_steps=1000).run()
    assert stats["stopped_by"] == "interrupt"
    said = [r.getMessage() for r in caplog.records if "Ctrl-C" in r.getMessage()]
    assert said == [f"the run stopped on Ctrl-C after {stats['steps']} steps"]


@pytest.mark.skipif(not NOTES, reason="exception notes (add_note) are Python 3.11+")
def test_an_error_note_counts_the_lines_this_run_appended(make_package: MakePackage, tmp_path: Path) -> None:
    built = make_package()
    log = tmp_path / "appended.ndjson"
    model = load_model(built.path)
    Runner(model, Served(built).provider, rate_hz=1000, max_steps=6, log_path=log).run()

    def fail_at_third(n: int) -> None:
        if n == 3:
            raise RuntimeError("the arm went away")

    with pytest.raises(RuntimeError, match="the arm went away") as err:
        Runner(model, Served(built, 1, on_action=fail_at_third).provider, rate_hz=1000, max_steps=50,
               log_path=log).run()  # fmt: skip
    notes = "\n".join(getattr(err.value, "__notes__", ()))
    assert f"this run appended 3 lines to the NDJSON log {log}" in notes
    assert "holds" not in notes.replace("holds its steps", "")
    assert len(log.read_text().splitlines()) == 9


torch = pytest.importorskip("torch", reason="export needs torch")

from kinodb.infer import export_torch  # noqa: E402


class ActionOnly(torch.nn.Module):  # type: ignore[misc,name-defined]
    def forward(self, joint_angles: Any, carry: Any) -> Any:
        return joint_angles * 2


class OneTuple(torch.nn.Module):  # type: ignore[misc,name-defined]
    def forward(self, joint_angles: Any, carry: Any) -> Any:
        return (joint_angles * 2,)


class PassThrough(torch.nn.Module):  # type: ignore[misc,name-defined]
    def forward(self, joint_angles: Any, carry: Any) -> tuple[Any, Any]:
        return joint_angles, carry


@pytest.mark.parametrize(
    ("module", "returned"),
    [(ActionOnly(), r"a tensor of shape \[7\]"), (OneTuple(), r"a tuple of 1 \(tensor \[7\]\)")],
)
def test_a_step_function_without_next_carry_is_named(module: Any, returned: str, tmp_path: Path) -> None:
    path = tmp_path / "p.kinfer"
    with pytest.raises(
        InferError,
        match=rf"the step function returns {returned}; expected a tuple of 2 tensors \(action, next_carry\)",
    ):
        export_torch(module, path, joint_names=JOINTS, carry_shape=(1,))
    assert not path.exists()


def test_a_next_carry_of_another_shape_is_named(tmp_path: Path) -> None:
    with pytest.raises(InferError, match=r"output 1 \(next_carry\) has shape \[1\]; expected \[3\]"):
        export_torch(
            lambda joint_angles, carry: (joint_angles, carry[:1]), tmp_path / "p.kinfer", joint_names=JOINTS,
            carry_shape=(3,),
        )  # fmt: skip


def test_an_unknown_argument_suggests_only_accepted_names(tmp_path: Path) -> None:
    def step(joint_positions: Any, carry: Any) -> tuple[Any, Any]:
        return joint_positions, carry

    with pytest.raises(InferError, match=r"\['joint_positions'\] are not step inputs") as err:
        export_torch(step, tmp_path / "p.kinfer", joint_names=JOINTS, carry_shape=(1,))
    assert "quaternion" not in str(err.value) and "initial_heading" not in str(err.value)
    assert "projected_gravity" in str(err.value)
    with pytest.raises(InferError, match=r"name them after .*quaternion, initial_heading"):
        export_torch(step, tmp_path / "p.kinfer", joint_names=JOINTS, carry_shape=(1,), legacy_inputs=True)


def test_an_int_carry_shape_is_refused_with_the_fix(tmp_path: Path) -> None:
    path = tmp_path / "p.kinfer"
    with pytest.raises(InferError, match=r"carry_shape must be a sequence of ints .* got 1: pass \(n,\)"):
        export_torch(PassThrough(), path, joint_names=JOINTS, carry_shape=1)  # type: ignore[arg-type]
    assert not path.exists()
    assert export_torch(PassThrough(), path, joint_names=JOINTS, carry_shape=(1,)).signature.carry_shape == (
        1,
    )
