"""Train one policy on two robots at once: a weighted mixture of two `.kdb` files whose
action and state widths differ and whose cameras are named differently.

Usage: python examples/cross_robot.py A.kdb CAMERA_A B.kdb CAMERA_B [--steps N]

Both files' windows are drawn 1:1 by `MixtureSampler` (whatever their sizes), the two
cameras become one ``front`` input at 64x64, `pad_collate` pads actions and states to the
wider robot with masks (in every batch, also one of the narrower robot alone), and a small
CNN + MLP takes a few masked-loss steps.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

import kinodb
from kinodb.torch import KinoFrameDataset, MixtureSampler, pad_collate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("a")
    parser.add_argument("camera_a")
    parser.add_argument("b")
    parser.add_argument("camera_b")
    parser.add_argument("--steps", type=int, default=8)
    args = parser.parse_args()
    torch.manual_seed(0)
    mix = kinodb.Mixture({args.a: 1, args.b: 1}, seed=0)
    ds = KinoFrameDataset(mix, obs_horizon=2, action_horizon=8, image_size=(64, 64),
                          image_key={"front": [args.camera_a, args.camera_b]})  # fmt: skip
    sampler = MixtureSampler(ds, num_samples=32 * args.steps, seed=0)
    loader = DataLoader(ds, batch_size=32, sampler=sampler, collate_fn=pad_collate, num_workers=2)
    # pad_collate pads every batch to the widest of all sources (not just of the robots a
    # batch holds), so every batch has these widths, the model's input and output sizes.
    S, A = (int(d) for d in ds.schema_keys().max(axis=0))
    model = nn.Sequential(nn.Conv2d(2 * 3, 16, 5, stride=4), nn.ReLU(), nn.AdaptiveAvgPool2d(4), nn.Flatten())
    head = nn.Linear(16 * 16 + 2 * S, 8 * A)
    opt = torch.optim.Adam([*model.parameters(), *head.parameters()], lr=1e-3)
    seen = np.zeros(2, dtype=np.int64)
    for step, batch in enumerate(loader):
        frames = batch["images"]["front"].flatten(1, 2)  # (B, To*C, H, W)
        state, action, mask = batch["state"].flatten(1), batch["action"], batch["action_mask"]
        pred = head(torch.cat([model(frames), state], dim=1)).view_as(action)
        loss = ((pred - action) ** 2 * mask).sum() / mask.sum()  # padded action entries do not count
        opt.zero_grad()
        loss.backward()
        opt.step()
        seen += np.bincount(batch["source"].numpy(), minlength=2)
        print(f"step {step}: loss {loss.item():.4f}  frames {tuple(batch['images']['front'].shape)}  "
              f"actions {tuple(action.shape)}")  # fmt: skip
    print(f"windows drawn per robot: {seen.tolist()} (weights 1:1; windows held: "
          f"{[s.frames for s in mix.sources()]})")  # fmt: skip


if __name__ == "__main__":
    main()
