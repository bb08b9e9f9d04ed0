"""``torchvision.transforms.ToTensor``: HWC uint8 (PIL or ndarray) to CHW float in [0, 1]."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


class ToTensor:
    """Convert a PIL image or an HWC ndarray to a CHW tensor, uint8 scaled to [0, 1]."""

    def __call__(self, pic: Any) -> torch.Tensor:
        a = np.asarray(pic)
        if a.ndim == 2:
            a = a[:, :, None]
        t = torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1)))
        return t.float().div(255) if t.dtype == torch.uint8 else t

    def __repr__(self) -> str:
        return "ToTensor()"


__all__ = ["ToTensor"]
