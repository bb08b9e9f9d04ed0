"""The behaviour-cloning policies of the training benchmark, in plain PyTorch (no torchvision).

Each policy maps a batch of frame windows to an action chunk:

- ``state``: float32 ``(B, Ho, S)``, already normalised;
- ``images``: ``{camera: float32 (B, Ho, 3, H, W) in [0, 1]}``;

and returns ``(B, Ha, A)`` in normalised action units. None of them has dropout or any
other randomness after initialisation, so two runs that see the same tensors in the same
order compute the same losses bit for bit (on CPU with a fixed thread count; on CUDA with
``torch.use_deterministic_algorithms``).

- `MLPPolicy`: each frame average-pooled to ``8x8``, flattened with the states, three
  linear layers. Almost no compute: the loader is the whole story.
- `CNNPolicy`: a small strided conv encoder per camera (shared over time), global
  average pooling, an MLP head.
- `ViTPolicy`: ``16x16`` patches of every frame and camera plus one state token, a
  pre-norm transformer encoder, the action chunk read from a class token.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

POLICIES = ("mlp", "cnn", "vit")


@dataclass(frozen=True)
class PolicyShape:
    """What a policy sees and predicts.

    Attributes:
        state_dim: width of a state.
        action_dim: width of an action.
        obs_horizon: observations per window (``Ho``).
        action_horizon: actions per window (``Ha``).
        cameras: camera names, in the order the batch's ``images`` are read.
        image_size: square frame side in pixels.
    """

    state_dim: int
    action_dim: int
    obs_horizon: int
    action_horizon: int
    cameras: tuple[str, ...]
    image_size: int


def _frames(images: dict[str, torch.Tensor], cam: str) -> tuple[torch.Tensor, int, int]:
    """``(B*Ho, 3, H, W)`` frames of one camera, and ``B``, ``Ho``."""
    x = images[cam]
    b, ho = x.shape[:2]
    return x.reshape(b * ho, *x.shape[2:]), b, ho


class MLPPolicy(nn.Module):
    """Pooled pixels and states through an MLP."""

    def __init__(self, shape: PolicyShape, *, pooled: int = 8, hidden: int = 512) -> None:
        super().__init__()
        self.shape, self.pooled = shape, pooled
        width = shape.obs_horizon * (shape.state_dim + len(shape.cameras) * 3 * pooled * pooled)
        self.net = nn.Sequential(
            nn.Linear(width, hidden), nn.ReLU(),
            nn.Linear(hidden, hidden), nn.ReLU(),
            nn.Linear(hidden, shape.action_horizon * shape.action_dim),
        )  # fmt: skip

    def forward(self, state: torch.Tensor, images: dict[str, torch.Tensor]) -> torch.Tensor:
        parts = [state.flatten(1)]
        for cam in self.shape.cameras:
            x, b, _ = _frames(images, cam)
            parts.append(F.adaptive_avg_pool2d(x, self.pooled).reshape(b, -1))
        out: torch.Tensor = self.net(torch.cat(parts, dim=1))
        return out.view(-1, self.shape.action_horizon, self.shape.action_dim)


def _encoder(channels: tuple[int, ...]) -> nn.Sequential:
    layers: list[nn.Module] = []
    c_in = 3
    for k, c in enumerate(channels):
        kernel = 5 if k == 0 else 3
        layers += [nn.Conv2d(c_in, c, kernel, stride=2, padding=kernel // 2), nn.ReLU()]
        c_in = c
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    return nn.Sequential(*layers)


class CNNPolicy(nn.Module):
    """A strided conv encoder per camera, pooled features and states through an MLP head."""

    def __init__(
        self, shape: PolicyShape, *, channels: tuple[int, ...] = (16, 32, 64, 64), hidden: int = 256
    ) -> None:
        super().__init__()
        self.shape = shape
        self.encoders = nn.ModuleDict({cam: _encoder(channels) for cam in shape.cameras})
        width = shape.obs_horizon * (shape.state_dim + len(shape.cameras) * channels[-1])
        self.head = nn.Sequential(
            nn.Linear(width, hidden), nn.ReLU(), nn.Linear(hidden, shape.action_horizon * shape.action_dim)
        )

    def forward(self, state: torch.Tensor, images: dict[str, torch.Tensor]) -> torch.Tensor:
        parts = [state.flatten(1)]
        for cam in self.shape.cameras:
            x, b, _ = _frames(images, cam)
            parts.append(self.encoders[cam](x).reshape(b, -1))
        out: torch.Tensor = self.head(torch.cat(parts, dim=1))
        return out.view(-1, self.shape.action_horizon, self.shape.action_dim)


class ViTPolicy(nn.Module):
    """Patch tokens of every frame and camera, a state token and a class token, a transformer."""

    def __init__(
        self, shape: PolicyShape, *, patch: int = 16, dim: int = 64, depth: int = 3, heads: int = 4
    ) -> None:
        super().__init__()
        if shape.image_size % patch:
            raise ValueError(f"image size {shape.image_size} is not a multiple of the patch size {patch}")
        self.shape, self.patch = shape, patch
        per_frame = (shape.image_size // patch) ** 2
        tokens = 1 + shape.obs_horizon * (1 + len(shape.cameras) * per_frame)
        self.embed = nn.Linear(3 * patch * patch, dim)
        self.state_embed = nn.Linear(shape.state_dim, dim)
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos = nn.Parameter(torch.randn(1, tokens, dim) * 0.02)
        layer = nn.TransformerEncoderLayer(
            dim,
            heads,
            dim_feedforward=2 * dim,
            dropout=0.0,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        self.blocks = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.out = nn.Linear(dim, shape.action_horizon * shape.action_dim)

    def _patches(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, 3, H, W)`` to ``(N, H/p * W/p, 3*p*p)``."""
        n, c, h, w = x.shape
        p = self.patch
        x = x.reshape(n, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5)
        return x.reshape(n, (h // p) * (w // p), c * p * p)

    def forward(self, state: torch.Tensor, images: dict[str, torch.Tensor]) -> torch.Tensor:
        b = state.shape[0]
        tokens = [self.cls.expand(b, -1, -1), self.state_embed(state)]
        for cam in self.shape.cameras:
            x, _, ho = _frames(images, cam)
            emb = self.embed(self._patches(x))  # (B*Ho, P, dim)
            tokens.append(emb.reshape(b, ho * emb.shape[1], -1))
        z = self.blocks(torch.cat(tokens, dim=1) + self.pos)
        out: torch.Tensor = self.out(self.norm(z[:, 0]))
        return out.view(-1, self.shape.action_horizon, self.shape.action_dim)


def make_policy(name: str, shape: PolicyShape) -> nn.Module:
    """A fresh policy by name (``mlp``, ``cnn``, ``vit``); seed torch first for a fixed init."""
    if name == "mlp":
        return MLPPolicy(shape)
    if name == "cnn":
        return CNNPolicy(shape)
    if name == "vit":
        return ViTPolicy(shape)
    raise ValueError(f"unknown policy {name!r}; expected one of {', '.join(POLICIES)}")


def chunk_loss(pred: torch.Tensor, target: torch.Tensor, is_pad: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the action chunk, ignoring padded steps (LeRobot's convention)."""
    keep = (~is_pad).unsqueeze(-1).to(pred.dtype)
    return ((pred - target) ** 2 * keep).sum() / (keep.sum() * pred.shape[-1]).clamp_min(1.0)
