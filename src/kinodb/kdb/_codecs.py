"""Image codecs for camera sections: raw, JPEG and PNG (through Pillow)."""

from __future__ import annotations

import io
import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from kinodb.errors import CorruptFileError, WriterError

_JPEG_MAGIC = b"\xff\xd8\xff"
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_MODE_CHANNELS = {"L": 1, "LA": 2, "RGB": 3, "RGBA": 4, "P": 3, "1": 1}


@dataclass(frozen=True, slots=True)
class EncodedFrames:
    """JPEG or PNG frames to store unchanged, read back with ``channels`` channels.

    A reader converts every decoded frame to its section's channel count (as Pillow's
    ``convert`` does: grey becomes RGB by repeating it). `kino upgrade` passes a 0.1
    camera's frames this way, so that greyscale JPEGs under a 3-channel header keep their
    bytes and still read as the 0.1 reader returned them.
    """

    frames: Sequence[bytes]
    channels: int


_ADDRESS = re.compile(r"<[^<>]*? at 0x[0-9a-fA-F]+>")


def describe(exc: BaseException) -> str:
    """A decoder's exception as text for a message, without object addresses."""
    if type(exc).__name__ == "UnidentifiedImageError":
        return "not a JPEG or PNG image"
    text = " ".join(_ADDRESS.sub("the data", str(exc)).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


VALIDATE_ADVICE = "run kino validate on the file to list every damaged frame"
DAMAGED_ADVICE = f"the stored frame is damaged; {VALIDATE_ADVICE}"


def _pil() -> object:
    from PIL import Image  # deferred: importing kinodb stays light

    return Image


def sniff(data: bytes) -> str | None:
    """The codec of already-encoded bytes, from their magic number."""
    if data[:3] == _JPEG_MAGIC:
        return "jpeg"
    if data[:8] == _PNG_MAGIC:
        return "png"
    return None


_PNG_CHANNELS = {0: 1, 2: 3, 4: 2, 6: 4}  # 8-bit colour types: grey, RGB, grey+alpha, RGBA
_JPEG_SOF = {*range(0xC0, 0xD0)} - {0xC4, 0xC8, 0xCC}  # start-of-frame markers (not DHT, JPG, DAC)


def header_shape(data: bytes) -> tuple[int, int, int] | None:
    """``(H, W, C)`` from a JPEG SOF or 8-bit PNG IHDR header, without Pillow (fast).

    None when the header is anything else (palette PNGs, CMYK JPEGs, damaged
    headers): `probe` then asks Pillow.
    """
    found = header(data)
    return None if found is None else found[0]


def header(data: bytes) -> tuple[tuple[int, int, int], int] | None:
    """`header_shape`, and the length of the prefix that determines it (through the PNG
    IHDR chunk or the JPEG SOF segment): frames that share that prefix share the shape."""
    if data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR" and len(data) >= 26 and data[24] == 8:
        w, h = struct.unpack_from(">II", data, 16)
        c = _PNG_CHANNELS.get(data[25])
        return ((h, w, c), 26) if c else None
    if data[:2] != b"\xff\xd8":
        return None
    pos, n = 2, len(data)
    while pos + 10 <= n and data[pos] == 0xFF:
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
        elif marker in _JPEG_SOF:
            h, w = struct.unpack_from(">HH", data, pos + 5)
            c = data[pos + 9]
            return ((h, w, c), pos + 2 + struct.unpack_from(">H", data, pos + 2)[0]) if c in (1, 3) else None
        else:
            pos += 2 + struct.unpack_from(">H", data, pos + 2)[0]
    return None


def sixteen_bit(data: bytes) -> bool:
    """Whether ``data`` is a PNG of 16 bits per sample (its IHDR bit depth), such as a depth frame."""
    return data[:8] == _PNG_MAGIC and data[12:16] == b"IHDR" and len(data) >= 26 and data[24] == 16


_JPEG_EOI = b"\xff\xd9"
_PNG_IEND = b"\x00\x00\x00\x00IEND"  # a zero length, then the chunk type (its CRC follows)
_PADDING = b"\x00\xff"  # what some encoders and cameras write after the end marker


def damage(data: bytes, codec: str) -> str | None:
    """What makes one encoded frame incomplete, or None when it ends as a whole image does.

    A JPEG must end with its end-of-image marker (FF D9) and a PNG with its IEND chunk,
    either optionally followed by 00 or FF padding bytes: a look at the last bytes, no
    decode, for every frame that does. A frame without its end marker is truncated (the
    readers' decoder, Pillow, refuses such a JPEG: "image file is truncated"; a PNG cut
    inside its image data too). A frame with other bytes after its marker (metadata some
    cameras append) is decoded in full, and is damaged only when that decode fails, as it
    would on every read.
    """
    if codec == "jpeg":
        if data.endswith(_JPEG_EOI):
            return None
        end, marker = data.rfind(_JPEG_EOI), "JPEG end-of-image marker (FF D9)"
        after = end + len(_JPEG_EOI)
    else:
        if data[-12:-4] == _PNG_IEND:
            return None
        end, marker = data.rfind(_PNG_IEND), "PNG IEND chunk"
        after = end + len(_PNG_IEND) + 4  # the chunk's CRC
    if end < 0:
        return f"truncated: no {marker} in its {len(data)} bytes"
    if after > len(data):
        return f"truncated: its {marker} is cut short"
    if not data[after:].strip(_PADDING):
        return None
    problem = decode_problem(data)
    if problem is None:
        return None
    return f"{len(data) - after} bytes follow its {marker}, and it does not decode ({problem})"


def decode_problem(data: bytes | memoryview) -> str | None:
    """The decoder's message for an encoded image that does not decode in full (None: it does)."""
    Image = _pil()
    try:
        with Image.open(io.BytesIO(data)) as im:  # type: ignore[attr-defined]
            im.load()
    except Exception as exc:  # Pillow raises many types on damaged bytes (OSError, SyntaxError, bomb errors)
        return describe(exc)
    return None


def probe(data: bytes) -> tuple[int, int, int]:
    """``(H, W, C)`` of an encoded image, reading only its header."""
    shape = header_shape(data)
    if shape is not None:
        return shape
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


def decode(
    data: Sequence[memoryview | bytes], shape: tuple[int, int, int], where: str, *, first: int = 0
) -> np.ndarray:
    """Decode encoded frames into a new ``(T, H, W, C)`` uint8 array.

    The output is allocated only once frame 0's header agrees with ``shape``, so a damaged
    index cannot make it allocate more than the frames hold.

    Raises:
        CorruptFileError: a frame fails to decode or has another shape; ``where`` plus the
            frame number (counted from ``first``) name it.
    """
    if data:
        _open(data[0], shape, f"{where}, frame {first}").close()
    out = np.empty((len(data), *shape), np.uint8)
    decode_into(out, data, where, first=first)
    return out


def _open(blob: memoryview | bytes, shape: tuple[int, int, int], where: str) -> Any:
    """Open an image lazily (header only) and check its size against ``(H, W, C)``."""
    Image = _pil()
    h, w, _ = shape
    try:
        im = Image.open(io.BytesIO(blob))  # type: ignore[attr-defined]
    except Exception as exc:  # Pillow raises many types on damaged bytes (OSError, SyntaxError, bomb errors)
        raise CorruptFileError(f"{where}: image does not decode ({describe(exc)}); {DAMAGED_ADVICE}") from exc
    if im.size != (w, h):
        im.close()
        raise CorruptFileError(
            f"{where}: image is {im.size[1]}x{im.size[0]} (HxW), the index says {h}x{w}; {DAMAGED_ADVICE}"
        )
    return im


def decode_into(out: np.ndarray, data: Sequence[memoryview | bytes], where: str, *, first: int = 0) -> None:
    """Decode encoded frames into ``out`` (T, H, W, C) uint8, checking every frame's shape.

    Raises:
        CorruptFileError: a frame fails to decode or decodes to another shape; ``where``
            plus the frame number (counted from ``first``) name it.
    """
    _t, h, w, c = out.shape
    mode = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}[c]
    for t, blob in enumerate(data):
        frame = f"{where}, frame {first + t}"
        with _open(blob, (h, w, c), frame) as im:
            try:
                arr = np.asarray(im if im.mode == mode else im.convert(mode))
            except Exception as exc:  # as in _open: any decoder failure means damaged bytes
                raise CorruptFileError(
                    f"{frame}: image does not decode ({describe(exc)}); {DAMAGED_ADVICE}"
                ) from exc
        arr = arr.reshape(arr.shape[0], arr.shape[1], -1) if arr.ndim == 2 else arr
        if arr.shape != (h, w, c):
            raise CorruptFileError(
                f"{frame}: decoded to shape {arr.shape}, the index says {(h, w, c)}; {DAMAGED_ADVICE}"
            )
        out[t] = arr
