"""A test-only writer of ``.kdb`` format 0.1 files (the Rust kinodb's layout).

Written from the byte layout in the reference notes, with `struct`: a 64-byte header,
then per episode [metadata blob][state/action section][image section], then one
64-byte index entry per episode at the end of the file. Everything little-endian, no
padding. Images are given per camera as a list of `Image` (one per frame).
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass, field

import numpy as np

HEADER = struct.Struct("<4sHHQQQQQ16s")
ENTRY = struct.Struct("<QIHHQQQQQQ")
FORMAT_RAW, FORMAT_COMPRESSED = 0, 1


@dataclass
class Image:
    """One stored frame of one camera, exactly as it goes on disk."""

    data: bytes
    width: int
    height: int
    channels: int
    fmt: int


@dataclass
class Episode:
    """One episode: (T, S) states, (T, A) actions, (T,) rewards and terminal flags."""

    states: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    is_terminal: np.ndarray
    embodiment: str = "franka"
    task: str = ""
    fps: float = 10.0
    success: bool | None = None
    total_reward: float | None = None
    images: dict[str, list[Image]] = field(default_factory=dict)


def raw_frames(frames: np.ndarray) -> list[Image]:
    """(T, H, W, C) uint8 frames stored raw (format 0)."""
    _, h, w, c = frames.shape
    return [Image(np.ascontiguousarray(f).tobytes(), w, h, c, FORMAT_RAW) for f in frames]


def encoded_frames(frames: np.ndarray, codec: str = "JPEG", quality: int = 90) -> list[Image]:
    """(T, H, W, C) uint8 frames encoded with Pillow (format 1)."""
    from PIL import Image as PILImage

    out = []
    for f in frames:
        buf = io.BytesIO()
        img = PILImage.fromarray(f[..., 0] if f.shape[-1] == 1 else f)
        img.save(buf, codec, **({"quality": quality} if codec == "JPEG" else {}))
        out.append(Image(buf.getvalue(), f.shape[1], f.shape[0], f.shape[2], FORMAT_COMPRESSED))
    return out


def random_episode(
    rng: np.random.Generator, num_frames: int, state_dim: int, action_dim: int, **meta: object
) -> Episode:
    """An episode of random float32 arrays; ``meta`` sets the metadata fields."""
    term = np.zeros(num_frames, bool)
    if num_frames:
        term[-1] = True
    return Episode(
        states=rng.standard_normal((num_frames, state_dim)).astype(np.float32),
        actions=rng.standard_normal((num_frames, action_dim)).astype(np.float32),
        rewards=rng.random(num_frames).astype(np.float32),
        is_terminal=term,
        **meta,  # type: ignore[arg-type]
    )


def _string(s: str) -> bytes:
    raw = s.encode()
    return struct.pack("<H", len(raw)) + raw


def _meta_blob(ep: Episode) -> bytes:
    success = 0 if ep.success is None else 2 if ep.success else 1
    out = _string(ep.embodiment) + _string(ep.task) + struct.pack("<fB", ep.fps, success)
    if ep.total_reward is None:
        return out + b"\x00"
    return out + b"\x01" + struct.pack("<f", ep.total_reward)


def _state_action(ep: Episode) -> bytes:
    out = bytearray()
    for t in range(len(ep.actions)):
        out += ep.states[t].astype("<f4").tobytes()
        out += ep.actions[t].astype("<f4").tobytes()
        out += struct.pack("<f", float(ep.rewards[t]))
        out += struct.pack("<B", 1 if ep.is_terminal[t] else 0)
    return bytes(out)


def _image_section(ep: Episode) -> bytes:
    out = bytearray()
    for t in range(len(ep.actions)):
        out += struct.pack("<H", len(ep.images))
        for name, frames in ep.images.items():
            im = frames[t]
            out += _string(name)
            out += struct.pack("<IIBBI", im.width, im.height, im.channels, im.fmt, len(im.data))
            out += im.data
    return bytes(out)


def encode(episodes: list[Episode], *, created: int = 1_700_000_000) -> bytes:
    """The bytes of a format 0.1 file holding ``episodes``."""
    body = bytearray(HEADER.size)  # the real header goes in last, as the 0.1 writer does
    entries = []
    for i, ep in enumerate(episodes):
        meta, sa, img = _meta_blob(ep), _state_action(ep), _image_section(ep)
        meta_off = len(body)
        sa_off = meta_off + len(meta)
        img_off = sa_off + len(sa)
        body += meta + sa + img
        t = len(ep.actions)
        state_dim = ep.states.shape[1] if t else 0
        entries.append(
            ENTRY.pack(
                i, t, ep.actions.shape[1], state_dim, sa_off, len(sa), img_off, len(img), meta_off, len(meta)
            )
        )
    index_off = len(body)
    body += b"".join(entries)
    frames = sum(len(ep.actions) for ep in episodes)
    body[: HEADER.size] = HEADER.pack(
        b"KINO", 0, 1, len(episodes), frames, index_off, len(entries) * ENTRY.size, created, b""
    )
    return bytes(body)


def index_entries(data: bytes) -> list[dict[str, int]]:
    """The index entries of an encoded file, by field name (to aim corruptions)."""
    _, _, _, n, _, off, _, _, _ = HEADER.unpack_from(data, 0)
    names = ("episode_id", "num_frames", "action_dim", "state_dim", "actions_offset", "actions_length",
             "images_offset", "images_length", "meta_offset", "meta_length")  # fmt: skip
    return [dict(zip(names, ENTRY.unpack_from(data, off + 64 * i), strict=True)) for i in range(n)]
