"""Image codecs for camera sections: raw, JPEG and PNG (through Pillow)."""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np

from kinodb.errors import CorruptFileError, WriterError

_JPEG_MAGIC = b"\xff\xd8\xff"
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_MODE_CHANNELS = {"L": 1, "LA": 2, "RGB": 3, "RGBA": 4, "P": 3, "1": 1}


def _pil() -> object:
    from PIL import Image  # noqa: PLC0415  (deferred: importing kinodb stays light)

    return Image


def sniff(data: bytes) -> str | None:
    """The codec of already-encoded bytes, from their magic number."""
    if data[:3] == _JPEG_MAGIC:
        return "jpeg"
    if data[:8] == _PNG_MAGIC:
        return "png"
    return None


def probe(data: bytes) -> tuple[int, int, int]:
    """``(H, W, C)`` of an encoded image, reading only its header."""
    Image = _pil()
    with Image.open(io.BytesIO(data)) as im:  # type: ignore[attr-defined]
        if im.mode not in _MODE_CHANNELS:
            raise WriterError(
                f"image mode {im.mode!r} is not supported; kinodb stores 8-bit L, LA, RGB or RGBA"
            )
        channels = 4 if im.mode == "P" and "transparency" in im.info else _MODE_CHANNELS[im.mode]
        return im.height, im.width, channels


def encode(frames: np.ndarray, codec: str, quality: int) -> list[bytes]:
    """Encode ``(T, H, W, C)`` uint8 frames as JPEG or PNG bytes, one per frame."""
    Image = _pil()
    out = []
    for frame in frames:
        img = Image.fromarray(frame[..., 0] if frame.shape[-1] == 1 else frame)  # type: ignore[attr-defined]
        buf = io.BytesIO()
        if codec == "jpeg":
            img.save(buf, "JPEG", quality=quality)
        else:
            img.save(buf, "PNG", compress_level=1)
        out.append(buf.getvalue())
    return out


def decode_into(out: np.ndarray, data: Sequence[memoryview | bytes], where: str) -> None:
    """Decode encoded frames into ``out`` (T, H, W, C) uint8, checking every frame's shape.

    Raises:
        CorruptFileError: a frame fails to decode or decodes to another shape; ``where``
            plus the frame number name it.
    """
    Image = _pil()
    _t, h, w, c = out.shape
    mode = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}[c]
    for t, blob in enumerate(data):
        try:
            with Image.open(io.BytesIO(blob)) as im:  # type: ignore[attr-defined]
                if im.mode != mode:
                    im = im.convert(mode)
                arr = np.asarray(im)
        except (OSError, ValueError, SyntaxError) as exc:
            raise CorruptFileError(f"{where}, frame {t}: image does not decode ({exc})") from exc
        arr = arr.reshape(arr.shape[0], arr.shape[1], -1) if arr.ndim == 2 else arr
        if arr.shape != (h, w, c):
            raise CorruptFileError(
                f"{where}, frame {t}: decoded to shape {arr.shape}, the index says {(h, w, c)}"
            )
        out[t] = arr
