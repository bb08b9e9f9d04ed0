"""``torchvision.io.VideoReader`` with the ``"pyav"`` backend, as torchvision implements it.

Seeking goes to the keyframe at or before the time (PyAV has no accurate seek, so
``keyframes_only`` makes no difference, as in torchvision); iterating decodes forward and
yields ``{"data": uint8 (C, H, W) tensor, "pts": seconds}``.
"""

from __future__ import annotations

import os
from typing import Any

import av
import torch


class VideoReader:
    """Decode one stream of a video file frame by frame."""

    def __init__(self, src: str | os.PathLike[str], stream: str = "video", num_threads: int = 0) -> None:
        if not stream.startswith("video"):
            raise ValueError(f"only video streams are supported here, got {stream!r}")
        self.container = av.open(os.fspath(src), metadata_errors="ignore")
        self._stream = self.container.streams.video[0]
        self._frames: Any = self.container.decode(self._stream)

    def seek(self, time_s: float, keyframes_only: bool = False) -> VideoReader:
        """Go to the keyframe at or before ``time_s`` seconds."""
        offset = round(time_s / self._stream.time_base)
        self.container.seek(offset, backward=True, any_frame=False, stream=self._stream)
        self._frames = self.container.decode(self._stream)
        return self

    def __iter__(self) -> VideoReader:
        return self

    def __next__(self) -> dict[str, Any]:
        frame = next(self._frames)
        data = torch.from_numpy(frame.to_rgb().to_ndarray()).permute(2, 0, 1)
        return {"data": data, "pts": float(frame.pts * frame.time_base)}

    def get_metadata(self) -> dict[str, Any]:
        """Duration and fps of the video stream."""
        s = self._stream
        duration = float(s.duration * s.time_base) if s.duration is not None else 0.0
        return {"video": {"duration": [duration], "fps": [float(s.average_rate or 0)]}}


__all__ = ["VideoReader"]
