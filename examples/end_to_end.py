"""The whole loop at small scale: record -> ingest -> query -> mix -> train -> deploy -> record.

1. write a robomimic-style HDF5 file (h5py) and a LeRobot v3 dataset (parquet + mp4),
2. ingest both into ``.kdb``, validate them, query them,
3. build a weighted mixture and train a small behaviour-cloning policy on it through
   ``KinoFrameDataset`` (data loading inside the loop),
4. export the policy to a kinfer ``.kinfer`` package and check it against PyTorch,
5. run it in the real-time runtime against a provider replaying a recorded episode,
   with NDJSON telemetry, and record the rollout into a ``.kdb`` file,
6. read the rollout back as training data.

Usage: python examples/end_to_end.py [OUT_DIR] [--episodes N] [--epochs E]
"""

from __future__ import annotations

import argparse
import os
import shutil
import time
from pathlib import Path

import numpy as np

import kinodb
import kinodb.export
import kinodb.ingest
import kinodb.kdb.validate

JOINTS = [f"joint_{k}" for k in range(7)]
RATE_HZ = 50.0


def step(title: str) -> float:
    print(f"\n== {title}", flush=True)
    return time.perf_counter()


def done(t0: float, *paths: Path) -> None:
    files = ", ".join(f"{p} ({_size(p)})" for p in paths)
    print(f"   ok in {time.perf_counter() - t0:.2f} s" + (f"; wrote {files}" if files else ""))


def _size(p: Path) -> str:
    n = sum(f.stat().st_size for f in p.rglob("*") if f.is_file()) if p.is_dir() else p.stat().st_size
    return f"{n / 1e6:.2f} MB" if n >= 1e5 else f"{n / 1e3:.1f} KB"


def arm_episode(rng: np.random.Generator, T: int) -> dict[str, np.ndarray]:
    """A 7-joint arm tracking a smooth target: state = (positions, velocities), action = next target."""
    phase = rng.uniform(0, 2 * np.pi, 7)
    freq = rng.uniform(0.3, 0.8, 7)
    t = np.arange(T + 1) / RATE_HZ * 5
    target = (0.6 * np.sin(freq * t[:, None] + phase)).astype(np.float32)
    pos = target[:-1]
    vel = np.gradient(target, axis=0)[:-1].astype(np.float32) * RATE_HZ
    return {"pos": pos, "vel": vel, "action": target[1:], "image": _frames(rng, T)}


def _frames(rng: np.random.Generator, T: int, size: int = 32) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size]
    start, speed = rng.uniform(4, size - 12, 2), rng.uniform(-0.3, 0.3, 2)
    out = np.empty((T, size, size, 3), np.uint8)
    for k in range(T):
        y, x = (start + speed * k) % (size - 8)
        out[k] = 40
        inside = (yy >= y) & (yy < y + 8) & (xx >= x) & (xx < x + 8)
        out[k][inside] = (220, 90, 30)
    return out


def write_robomimic_hdf5(path: Path, n: int, rng: np.random.Generator) -> None:
    import h5py

    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        total = 0
        for k in range(n):
            ep = arm_episode(rng, int(rng.integers(40, 60)))
            g = data.create_group(f"demo_{k}")
            T = len(ep["action"])
            g.create_dataset("actions", data=ep["action"])
            g.create_dataset("rewards", data=np.r_[np.zeros(T - 1), 1.0])
            g.create_dataset("dones", data=np.r_[np.zeros(T - 1), 1].astype(np.int64))
            g.create_dataset("obs/robot0_joint_pos", data=ep["pos"])
            g.create_dataset("obs/robot0_joint_vel", data=ep["vel"])
            g.create_dataset("obs/agentview_image", data=ep["image"])
            g.attrs["num_samples"] = T
            total += T
        data.attrs["total"] = total
        data.attrs["env_args"] = '{"env_name": "Reach", "type": 1, "env_kwargs": {}}'


def write_lerobot(out: Path, tmp: Path, n: int, rng: np.random.Generator) -> None:
    """A LeRobot v3.0 dataset (parquet + mp4), written by kinodb's LeRobot exporter."""
    staging = tmp / "staging.kdb"
    names = [f"{j}.pos" for j in JOINTS] + [f"{j}.vel" for j in JOINTS]
    schema = {"states": {"components": {"joint_pos": [0, 7], "joint_vel": [7, 14]}, "names": names},
              "actions": {"names": JOINTS}}  # fmt: skip
    with kinodb.Writer(staging, mode="w", image_codec="png", schema=schema) as w:
        for _ in range(n):
            ep = arm_episode(rng, int(rng.integers(40, 60)))
            w.add_episode(actions=ep["action"], states=np.concatenate([ep["pos"], ep["vel"]], axis=1),
                          images={"front": ep["image"]}, embodiment="arm7", task="reach the target",
                          fps=RATE_HZ, success=True)  # fmt: skip
    kinodb.export.export(staging, out, format="lerobot", overwrite=True)
    staging.unlink()


def train(mix: kinodb.Mixture, epochs: int) -> tuple[object, list[float]]:
    import torch
    from torch.utils.data import DataLoader

    from kinodb.torch import KinoFrameDataset

    torch.manual_seed(0)
    ds = KinoFrameDataset(mix, obs_horizon=1, action_horizon=1, image_key=False)
    loader = DataLoader(ds, batch_size=64, shuffle=True, generator=torch.Generator().manual_seed(0))

    class Policy(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = torch.nn.Sequential(torch.nn.Linear(14, 128), torch.nn.ReLU(), torch.nn.Linear(128, 7))

        def forward(self, joint_angles: torch.Tensor, joint_angular_velocities: torch.Tensor,
                    carry: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
            x = torch.cat([joint_angles, joint_angular_velocities], dim=-1)
            return self.net(x), carry

    policy = Policy()
    opt = torch.optim.Adam(policy.parameters(), lr=3e-3)
    losses = []
    carry = torch.zeros(1)
    for epoch in range(epochs):
        total, count, data_s, t_end = 0.0, 0, 0.0, time.perf_counter()
        for batch in loader:
            data_s += time.perf_counter() - t_end
            state, target = batch["state"][:, -1], batch["action"][:, 0]
            pred, _ = policy(state[:, :7], state[:, 7:], carry)
            loss = torch.nn.functional.mse_loss(pred, target)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total, count = total + loss.item() * len(target), count + len(target)
            t_end = time.perf_counter()
        losses.append(total / count)
        print(
            f"   epoch {epoch}: loss {losses[-1]:.5f} over {count} windows (waiting for data: {data_s * 1e3:.1f} ms)"
        )
    return policy, losses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", default="demo/e2e")
    parser.add_argument("--episodes", type=int, default=24)
    parser.add_argument("--epochs", type=int, default=6)
    args = parser.parse_args()
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    rng = np.random.default_rng(7)

    t0 = step("1. record: a robomimic-style HDF5 file and a LeRobot v3 dataset")
    hdf5, lerobot = out / "reach_robomimic.hdf5", out / "reach_lerobot"
    write_robomimic_hdf5(hdf5, args.episodes, rng)
    write_lerobot(lerobot, out, args.episodes, rng)
    done(t0, hdf5, lerobot)

    t0 = step("2. ingest both into .kdb (exact arrays; frames checked) and validate")
    a, b = out / "reach_robomimic.kdb", out / "reach_lerobot.kdb"
    kinodb.ingest.ingest(
        hdf5, a, embodiment="arm7", task="reach the target", fps=RATE_HZ, image_codec="png", verify=True
    )
    kinodb.ingest.ingest(lerobot, b, image_codec="png", verify=True)
    for path in (a, b):
        report = kinodb.kdb.validate.validate(path)
        with kinodb.open(path) as db:
            print(f"   {path.name}: {db.num_episodes()} episodes, {db.num_frames()} frames, "
                  f"state {db.schema()['states']['dim']}, action {db.schema()['actions']['dim']}, "
                  f"valid: {report.ok}")  # fmt: skip
    done(t0, a, b)

    t0 = step("3. query: the long episodes")
    with kinodb.open(a) as db:
        hits = db.query("num_frames >= 50 AND success = true")
        print(
            f"   'num_frames >= 50 AND success = true' -> {len(hits)} of {len(db)} episodes: {hits[:8].tolist()} ..."
        )
    done(t0)

    t0 = step("4. a weighted mixture: 3 parts robomimic to 1 part LeRobot")
    mix = kinodb.Mixture({a: 3, b: 1}, seed=0)
    for s in mix.sources():
        print(f"   source {s.index}: {Path(s.path).name}: {s.episodes} episodes, share {s.share:.2f}")
    done(t0)

    t0 = step("5. train a BC policy through KinoFrameDataset (loading inside the loop)")
    policy, losses = train(mix, args.epochs)
    if not losses[-1] < losses[0]:
        raise SystemExit(f"training did not reduce the loss: {losses}")
    done(t0)

    from kinodb import infer

    t0 = step("6. export to a kinfer package; ONNX Runtime checked against PyTorch")
    package = out / "reach.kinfer"
    rep = infer.export_torch(policy, package, joint_names=JOINTS, carry_shape=(1,))
    print(
        f"   {package.name}: opset {rep.opset}, IR {rep.ir_version}, max |onnx - torch| = {rep.max_abs_diff:.2e}"
    )
    done(t0, package)

    t0 = step("7. run it at 50 Hz against a replay of recorded episode 0; log and record the rollout")
    model = infer.load_model(package)
    provider = infer.KdbReplayProvider(a, 0, state_map={"joint_angles": "states.robot0_joint_pos",
                                                        "joint_angular_velocities": "states.robot0_joint_vel"})  # fmt: skip
    rollouts, log = out / "rollouts.kdb", out / "telemetry.ndjson"
    stats = infer.Runner(model, provider, rate_hz=RATE_HZ, max_steps=provider.num_frames, log_path=log,
                         record_to=rollouts, embodiment="arm7", task="reach the target").run()  # fmt: skip
    err = np.abs(provider.predicted - provider.recorded_actions).mean()
    print(f"   {stats['steps']} steps, step latency p50 {stats['step_latency_us']['p50']:.0f} us, "
          f"tick lateness p99 {stats['tick_lateness_us']['p99']:.0f} us, dropped log lines "
          f"{stats['dropped_log_lines']}; mean |predicted - recorded action| = {err:.4f}")  # fmt: skip
    done(t0, rollouts, log)

    t0 = step("8. the rollout is training data")
    with kinodb.open(rollouts) as db:
        ep = db.read_episode_actions_only(len(db) - 1)
        arrays = {k: v.shape for k, v in ep.items() if hasattr(v, "shape")}
        print(f"   {rollouts.name}: {len(db)} episode(s); last one: {arrays}")
    again = out / "from_log.kdb"
    kinodb.ingest.ingest(log, again, format="kinfer-ndjson")
    with kinodb.open(again) as db:
        print(f"   {log.name} ingested again with --format kinfer-ndjson: {db.num_frames()} frames")
    done(t0, again)

    print(f"\nfiles left in {out}{os.sep}:")
    for p in sorted(out.iterdir()):
        print(f"   {p.name:<24} {_size(p)}")


if __name__ == "__main__":
    main()
