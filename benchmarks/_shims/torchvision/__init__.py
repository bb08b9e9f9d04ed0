"""The part of torchvision's API that LeRobot's and robomimic's dataset code touch, on PyAV.

No torchvision build runs with the CPU-only torch the benchmarks use (the registry wheels
link CUDA libraries), so the peer loaders get this stand-in on ``sys.path``:
``transforms.ToTensor``, ``io.VideoReader`` (the ``"pyav"`` backend, decoding as
torchvision's does: seek to the keyframe before the time asked for, then decode forward,
frames as uint8 CHW tensors) and ``set_video_backend``. kinodb itself never imports it.
"""

from __future__ import annotations

from torchvision import io, transforms

__version__ = "0.0.0+kinodb.shim"
_BACKENDS = ("pyav",)
_video_backend = "pyav"


def set_video_backend(backend: str) -> None:
    """Select the video backend; only ``"pyav"`` exists here, as without torchvision's C++ reader."""
    global _video_backend
    if backend not in _BACKENDS:
        raise ValueError(f"video backend {backend!r} is not available; this torchvision has 'pyav' only")
    _video_backend = backend


def get_video_backend() -> str:
    """The selected video backend."""
    return _video_backend


__all__ = ["get_video_backend", "io", "set_video_backend", "transforms"]
