"""`kino infer replay --episodes`: indices from 0, as every `kino` episode selection takes them."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from _kinfer_packages import MakePackage
from test_infer_runner import Served

from kinodb.infer import Runner, load_model

Run = Callable[..., int]


def test_an_episode_out_of_range_is_named_in_the_options_terms(
    kino: Run, make_package: MakePackage, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    built = make_package()
    data = tmp_path / "three.kdb"
    for seed in range(3):
        Runner(
            load_model(built.path), Served(built, seed).provider, rate_hz=2000, max_steps=4, record_to=data
        ).run()
    assert kino("infer", "replay", built.path, data, "--episodes", "1,7") == 1
    err = capsys.readouterr().err
    assert (
        f"--episodes 1,7: episode 7 out of range: {data} has 3 episodes (0..2); use indices from that range"
        in err
    )
    assert "counting from the end" not in err  # the option takes no negative index ...
    assert kino("infer", "replay", built.path, data, "--episodes=-1") == 2
    assert "(indices count from 0)" in capsys.readouterr().err  # ... and says so, as kino ingest does
    assert kino("infer", "replay", built.path, data, "--episodes", "0-2", "--json") == 0
