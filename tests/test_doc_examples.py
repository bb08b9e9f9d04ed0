"""Every Python example in the README and in docs/ runs as written.

Each document's examples run in order in one namespace, as a reader would paste them into
one session, in a folder holding the files they name (made here, shaped as the text says:
``pick.kdb`` by the README's own first example). What a reader brings from their own
setup (a policy, a robot, a server's address) is defined beside the example it serves, and
the few edits an example needs to run here (a 60 s rollout shortened, a remote address
pointed at a real local server) are listed with it: each must match the text exactly
once, so an edit that stops applying fails instead of passing quietly. Data loaders stop
after two batches per pass: the examples' epochs are for training, not for this check.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import kinodb
from _server_proc import ServerProcess, self_signed_certificate
from kinodb.synthetic import episodes as synthetic_episodes

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT.parent / "shared" / "samples"
BRIDGE = SAMPLES / "octo_bridge_rlds" / "bridge_dataset" / "1.0.0"
G1 = SAMPLES / "unitree_g1_lerobot_v21"
TOKEN = "doc-example-token-0123456789"

_BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)
_BASH = re.compile(r"^```bash\n(.*?)^```", re.S | re.M)


def python_blocks(doc: Path) -> list[str]:
    """The ```python blocks of a Markdown file, in order."""
    return _BLOCK.findall(doc.read_text())


def kino_commands(doc: Path) -> list[list[str]]:
    """The ``kino`` command lines of a Markdown file's ```bash blocks, as argument lists
    (comments dropped)."""
    lines = [ln for block in _BASH.findall(doc.read_text()) for ln in block.splitlines()]
    return [shlex.split(ln, comments=True)[1:] for ln in lines if ln.startswith("kino ")]


def run_kino(argv: list[str]) -> None:
    from kinodb._cli.main import main

    assert main(argv) == 0, f"kino {shlex.join(argv)} failed"


@dataclass
class Given:
    """What one example needs around it: ``before`` runs first in the same namespace (the
    reader's own objects), ``edits`` are (text, replacement) pairs each found exactly once."""

    before: str = ""
    edits: list[tuple[str, str]] = field(default_factory=list)


def run_blocks(doc: Path, given: dict[int, Given], namespace: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run every Python block of ``doc`` in order in one namespace; return it."""
    ns: dict[str, Any] = {"__name__": "__main__"} if namespace is None else namespace
    blocks = python_blocks(doc)
    assert blocks, f"{doc} has no Python examples"
    unknown = set(given) - set(range(len(blocks)))
    assert not unknown, f"{doc} has {len(blocks)} Python blocks; no block {sorted(unknown)}"
    for k, code in enumerate(blocks):
        g = given.get(k, Given())
        for old, new in g.edits:
            assert code.count(old) == 1, f"{doc.name} block {k}: {old!r} is no longer in it exactly once"
            code = code.replace(old, new)
        if g.before:
            exec(compile(g.before, f"<given for {doc.name} block {k}>", "exec"), ns)
        exec(compile(code, f"{doc.name} block {k}", "exec"), ns)
    return ns


# -- what the examples run on ---------------------------------------------------------------


@pytest.fixture
def short_loaders(monkeypatch: pytest.MonkeyPatch) -> None:
    """torch's DataLoader, each pass stopped after two batches (the examples' imports get it)."""
    torch_data = pytest.importorskip("torch.utils.data")

    class ShortLoader(torch_data.DataLoader):  # type: ignore[misc, type-arg]
        def __iter__(self) -> Iterator[Any]:
            it = super().__iter__()
            for _, batch in zip(range(2), it, strict=False):
                yield batch
            del it

    monkeypatch.setattr(torch_data, "DataLoader", ShortLoader)


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


def write_synthetic(path: str | Path, n: int, frames: int, *, seed: int, **over: Any) -> None:
    """``n`` synthetic episodes (embodiments, tasks, scenes, splits, success vary)."""
    with kinodb.Writer(path, mode="w") as w:
        for ep in synthetic_episodes(n, frames, seed=seed):
            ep.update(over)
            w.add_episode(**ep)


def write_widths(path: str | Path, n: int, state: int, action: int, *, seed: int) -> None:
    """``n`` episodes of 20-40 frames with ``state``- and ``action``-wide arrays."""
    rng = np.random.default_rng(seed)
    with kinodb.Writer(path, mode="w") as w:
        for _ in range(n):
            T = int(rng.integers(20, 41))
            w.add_episode(actions=rng.normal(size=(T, action)).astype(np.float32),
                          states=rng.normal(size=(T, state)).astype(np.float32), fps=10.0)  # fmt: skip


def pick_kdb() -> None:
    """``pick.kdb`` as the README's first example writes it (that example, run here)."""
    exec(compile(python_blocks(ROOT / "README.md")[0], "README.md block 0", "exec"), {"__name__": "__main__"})


def robomimic_hdf5(path: Path, demos: int = 12) -> None:
    """A robomimic low-dim file: ``data/demo_k`` with actions, states, rewards, dones, obs."""
    h5py = pytest.importorskip("h5py")
    rng = np.random.default_rng(3)
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as fh:
        data = fh.create_group("data")
        data.attrs["env_args"] = '{"env_name": "Lift", "type": 1, "env_kwargs": {}}'
        for k in range(demos):
            T = int(rng.integers(20, 40))
            g = data.create_group(f"demo_{k}")
            g.attrs["num_samples"] = T
            g.create_dataset("actions", data=rng.normal(size=(T, 7)))
            g.create_dataset("states", data=rng.normal(size=(T, 32)))
            rewards = np.zeros(T)
            rewards[-1] = 1.0
            g.create_dataset("rewards", data=rewards)
            g.create_dataset("dones", data=(np.arange(T) == T - 1).astype(np.int64))
            g.create_dataset("obs/robot0_eef_pos", data=rng.normal(size=(T, 3)))
            g.create_dataset("obs/robot0_gripper_qpos", data=rng.normal(size=(T, 2)))


def need_samples() -> None:
    if not (BRIDGE.is_dir() and G1.is_dir()):
        pytest.skip(f"the real samples are not at {SAMPLES} (a clone without ../shared)")


def server(args: list[str]) -> Any:
    """A real ``kino-serve`` on 127.0.0.1 (no token from the environment)."""
    env = {k: v for k, v in os.environ.items() if k != "KINODB_TOKEN"}
    return ServerProcess(args, env=env)


# What a reader's deployment brings: a step policy of the kinfer signature, a robot.
POLICY = """
import numpy as np
import torch
from kinodb import infer

joints = ["shoulder", "elbow", "wrist"]

class _Reach(torch.nn.Module):
    def forward(self, joint_angles, carry):
        return torch.tanh(joint_angles), carry + 1

policy = _Reach()

class _Robot:
    q = np.zeros(3, np.float32)
    dq = np.zeros(3, np.float32)
    def send(self, action):
        self.last = action

_arm = _Robot()
robot = infer.CallableProvider(joint_angles=lambda names: _arm.q, take_action=_arm.send)
"""


# -- the documents ---------------------------------------------------------------------------


@pytest.mark.integration
def test_readme_examples(in_tmp: Path, short_loaders: None) -> None:
    pytest.importorskip("torch")
    need_samples()
    robomimic_hdf5(in_tmp / "lift" / "ph" / "low_dim.hdf5")
    (in_tmp / "bridge_dataset").mkdir()
    (in_tmp / "bridge_dataset" / "1.0.0").symlink_to(BRIDGE)
    (in_tmp / "g1_lerobot").symlink_to(G1)
    example = (
        Path(__file__).resolve().parents[1] / "examples" / "pusht_zarr.py"
    )  # a replay buffer as Push-T's
    subprocess.run([sys.executable, str(example), "pusht_cchi_v7_replay.zarr", "--episodes", "3"], check=True)
    for k, name in enumerate(("franka", "widowx", "aloha")):
        write_synthetic(f"{name}.kdb", 20, 30, seed=k, embodiment=name)
    (in_tmp / "token.txt").write_text(TOKEN + "\n")
    proc = server(["--source", "franka.kdb:3", "--source", "widowx.kdb:1", "--token-file", "token.txt"])
    try:
        ns = run_blocks(ROOT / "README.md", {
            # the sample holds one episode of the G1 dataset, number 29
            1: Given(edits=[('episodes="0-9"', 'episodes="29"')]),
            4: Given(before=POLICY, edits=[
                ('"127.0.0.1:50051"', repr(proc.addr)), ('token="..."', f"token={TOKEN!r}"),
                ("duration_s=60", "duration_s=0.3"),
            ]),
        })  # fmt: skip
    finally:
        assert proc.stop() == 0
    assert len(ns["batch"]) == 32
    assert ns["stats"]["stopped_by"] == "duration"
    with kinodb.open("rollouts.kdb") as db:
        assert len(db) == 1


def _widths_pair() -> None:
    """``bridge.kdb`` (actions 7 wide) and ``g1.kdb`` (26), the widths of the real samples,
    with their statistics stored."""
    from kinodb.stats import compute_stats, write_stats

    write_widths("bridge.kdb", 6, 7, 7, seed=1)
    write_widths("g1.kdb", 6, 26, 26, seed=2)
    for path in ("bridge.kdb", "g1.kdb"):  # what `kino stats PATH` does, as the text asks first
        write_stats(path, compute_stats(path))


@pytest.mark.integration
def test_torch_examples(in_tmp: Path, short_loaders: None) -> None:
    torch = pytest.importorskip("torch")
    pick_kdb()
    write_synthetic("franka.kdb", 12, 30, seed=0, embodiment="franka")
    write_widths("widowx.kdb", 12, 9, 5, seed=1)  # a second robot: other widths
    _widths_pair()
    ns = run_blocks(ROOT / "docs" / "torch.md", {
        5: Given(before="policy = lambda batch: torch.zeros(len(batch['action']), 8, 26)"),
    }, {"__name__": "__main__", "torch": torch})  # fmt: skip
    assert set(ns["actions"]) == {0, 1}
    assert ns["actions"][0].shape[-1] == 7 and ns["actions"][1].shape[-1] == 26


@pytest.mark.integration
def test_mixture_examples(in_tmp: Path) -> None:
    for k, name in enumerate(("franka", "widowx", "aloha", "a", "b", "c", "lab", "sim")):
        write_synthetic(f"{name}.kdb", 14, 60 if name == "a" else 20, seed=k)  # a: for num_frames > 50
    ns = run_blocks(ROOT / "docs" / "mixtures.md", {2: Given(before="n, e, r, w = 1000, 1, 0, 2")})
    assert ns["pairs"].shape == (1000, 2)
    assert np.array_equal(ns["mine"], ns["pairs"][0::2])


def test_stats_examples(in_tmp: Path) -> None:
    torch = pytest.importorskip("torch")
    pick_kdb()
    _widths_pair()
    given = {
        0: Given(before="import numpy as np, torch\n"
                        "batch_actions = np.ones((4, 7), np.float32)\npolicy_output = torch.zeros(4, 7)"),
        1: Given(before="obs = None\npolicy = lambda obs: torch.zeros(3, 16, 7)"),
        2: Given(before=(
            "from torch.utils.data import DataLoader\nfrom kinodb.torch import KinoFrameDataset, pad_collate\n"
            "ds = KinoFrameDataset(kinodb.Mixture({'bridge.kdb': 1, 'g1.kdb': 1}), action_horizon=8,\n"
            "                      image_key=False, normalize='mean_std')\n"
            "batch = next(iter(DataLoader(ds, batch_size=16, shuffle=True, collate_fn=pad_collate)))\n"
            "policy = lambda batch: torch.zeros(len(batch['action']), 8, 26)"
        )),
    }  # fmt: skip
    ns = run_blocks(ROOT / "docs" / "stats.md", given, {"__name__": "__main__", "torch": torch})
    assert isinstance(ns["x"], torch.Tensor) and ns["y"].dtype == np.float32


def test_kql_examples(in_tmp: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with kinodb.Writer("data.kdb", mode="w") as w:
        for frames in (150, 40):
            for k, ep in enumerate(synthetic_episodes(8, frames, seed=frames)):
                ep["extra"]["tags"] = ["night", "clutter"][: k % 3]  # a list field, as the text's
                w.add_episode(**ep)
    ns = run_blocks(ROOT / "docs" / "kql.md", {})
    assert len(ns["hits"]) > 0 and len(ns["long_ones"]) > 0
    assert capsys.readouterr().out.count("\n") == min(5, len(ns["hits"]))
    write_synthetic("franka.kdb", 6, 20, seed=1, embodiment="franka")
    write_synthetic("ur5e.kdb", 6, 20, seed=2, embodiment="ur5e")
    commands = kino_commands(ROOT / "docs" / "kql.md")
    assert len(commands) == 4
    for argv in commands:
        run_kino(argv)


@pytest.mark.integration
def test_serve_examples(in_tmp: Path, short_loaders: None) -> None:
    pytest.importorskip("grpc")
    pytest.importorskip("torch")
    write_synthetic("franka.kdb", 20, 30, seed=0, embodiment="franka")
    (in_tmp / "tls").mkdir()
    cert, key = self_signed_certificate(in_tmp / "tls")
    (in_tmp / "ca.pem").write_bytes(cert.read_bytes())  # the reader's copy of the server's certificate
    (in_tmp / "token.txt").write_text(TOKEN + "\n")
    tls = ["--tls-cert", str(cert), "--tls-key", str(key), "--token-file", "token.txt"]
    secure = server(["franka.kdb", *tls])
    plain = server(["franka.kdb"])
    try:
        ns = run_blocks(ROOT / "docs" / "serve.md", {
            0: Given(edits=[('"10.0.0.5:50051"', repr(secure.addr)), ('token="..."', f"token={TOKEN!r}")]),
            1: Given(edits=[('"10.0.0.5:50051"', repr(plain.addr))]),
        })  # fmt: skip
    finally:
        assert secure.stop() == 0 and plain.stop() == 0
    assert ns["info"]["num_episodes"] == 20 and ns["meta"]["num_frames"] == 30
    assert ns["batch"]["action"].shape == (256, 16, 7)


@pytest.mark.integration
def test_infer_examples(in_tmp: Path) -> None:
    pytest.importorskip("onnxruntime")
    torch = pytest.importorskip("torch")
    from kinodb import infer

    class Walk(torch.nn.Module):
        def forward(self, joint_angles, joint_angular_velocities, projected_gravity, command, carry):  # type: ignore[no-untyped-def]
            drive = joint_angles + 0.1 * joint_angular_velocities + projected_gravity.sum() + command.sum()
            return torch.tanh(drive), carry

    names = ["hip", "knee", "ankle"]
    infer.export_torch(Walk(), "walk.kinfer", joint_names=names, command_names=("vx", "vy", "wz"),
                       carry_shape=(1,))  # fmt: skip
    given = Given(
        before=(
            "import numpy as np\n"
            "class _Robot:\n"
            "    q = np.zeros(3, np.float32)\n    dq = np.zeros(3, np.float32)\n"
            "    def send(self, action): self.last = action\n"
            "class _Imu:\n"
            "    def gravity(self): return np.array([0, 0, -1], np.float32)\n"
            "robot, imu = _Robot(), _Imu()\n"
            "joystick = lambda: np.zeros(3, np.float32)\n"
        ),
        edits=[("duration_s=30", "duration_s=0.3")],
    )
    ns = run_blocks(ROOT / "docs" / "infer.md", {0: given})
    assert ns["stats"]["stopped_by"] == "duration"
    assert ns["robot"].last.shape == (3,)
    with kinodb.open("rollouts.kdb") as db:
        assert len(db) == 1


def test_ingest_plugin_example(in_tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """docs/ingest.md's npz source, installed as its entry point says, ingests through
    `kino ingest --format npz` and by detection."""
    from kinodb._cli.main import main
    from kinodb.ingest import _base

    (code,) = python_blocks(ROOT / "docs" / "ingest.md")
    assert code.startswith("# kinodb_npz.py\n")
    (in_tmp / "kinodb_npz.py").write_text(code)
    dist = in_tmp / "kinodb_npz-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: kinodb-npz\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[kinodb.sources]\nnpz = kinodb_npz:NpzSource\n")
    monkeypatch.syspath_prepend(str(in_tmp))
    monkeypatch.setattr(_base, "_plugins", _base._plugins.__wrapped__)  # see the plugin installed now
    rng = np.random.default_rng(0)
    (in_tmp / "npz").mkdir()
    for k in range(3):
        np.savez(in_tmp / "npz" / f"episode_{k}.npz", actions=rng.normal(size=(5 + k, 2)),
                 states=rng.normal(size=(5 + k, 3)), front=rng.integers(0, 255, (5 + k, 8, 8, 3), np.uint8))  # fmt: skip
    assert main(["ingest", "npz", "-o", "by_name.kdb", "--format", "npz", "--image-codec", "png"]) == 0
    assert main(["ingest", "npz", "-o", "detected.kdb"]) == 0
    for out in ("by_name.kdb", "detected.kdb"):
        with kinodb.open(out) as db:
            assert len(db) == 3
            with np.load(in_tmp / "npz" / "episode_2.npz") as z:
                assert np.array_equal(db.read_array(2, "actions"), z["actions"])
    with kinodb.open("by_name.kdb") as db, np.load(in_tmp / "npz" / "episode_1.npz") as z:
        assert np.array_equal(db.read_frames(1, 0, 6, cameras=["front"])["images"]["front"], z["front"])


def test_lerobot_examples(in_tmp: Path) -> None:
    pytest.importorskip("av")
    pytest.importorskip("pyarrow")
    pick_kdb()
    blocks = python_blocks(ROOT / "docs" / "lerobot.md")
    ns: dict[str, Any] = {"__name__": "__main__"}
    exec(compile(blocks[0], "lerobot.md block 0", "exec"), ns)
    assert (in_tmp / "pick_lerobot" / "meta" / "info.json").is_file()
    commands = kino_commands(ROOT / "docs" / "lerobot.md")
    assert len(commands) == 4
    for argv in commands:  # alternatives, each to a new folder but the last (--force replaces)
        if "--force" not in argv:
            shutil.rmtree(in_tmp / "pick_lerobot")
        run_kino(argv)
        assert (in_tmp / "pick_lerobot" / "meta" / "info.json").is_file()
    for k in (2, 3, 4):  # the torchvision stand-in, one file per block
        first, _, _ = blocks[k].partition("\n")
        assert first.startswith("# torchvision_stub/")
        target = in_tmp / first.removeprefix("# ")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(blocks[k])
    try:
        import lerobot  # noqa: F401
    except Exception as exc:
        pytest.skip(f"block 1 opens the export with LeRobot, not importable here ({type(exc).__name__}); "
                    "see docs/lerobot.md")  # fmt: skip
    sys.path.insert(0, str(in_tmp / "torchvision_stub"))
    try:
        exec(compile(blocks[1], "lerobot.md block 1", "exec"), ns)
    finally:
        sys.path.remove(str(in_tmp / "torchvision_stub"))
    assert ns["item"]["action"].shape == (7,)


def test_every_document_with_examples_is_covered() -> None:
    """A new document with Python examples gets a test here."""
    covered = {"README.md", "torch.md", "mixtures.md", "stats.md", "kql.md", "serve.md", "infer.md",
               "ingest.md", "lerobot.md"}  # fmt: skip
    docs = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    with_examples = {d.name for d in docs if python_blocks(d)}
    assert with_examples == covered
