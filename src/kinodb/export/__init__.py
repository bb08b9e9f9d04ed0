"""Converters from ``.kdb`` into other formats: `export` to ``numpy``, ``json``, ``hdf5``, ``lerobot``, ``zarr`` or ``rlds``.

- ``numpy``: a folder per episode with ``.npy`` arrays, image files and ``meta.json``.
- ``json``: metadata only, ``dataset.json`` plus ``episodes.jsonl``.
- ``hdf5``: the robomimic layout (``data/demo_N/...``), readable by robomimic and by
  ``kinodb.ingest``.
- ``lerobot``: a LeRobot v3.0 dataset folder (Parquet frames, mp4 videos or JPEG/PNG images,
  ``meta/``), readable by ``LeRobotDataset`` and by ``kinodb.ingest``.
- ``zarr``: a replay buffer in diffusion_policy's layout (``data/`` arrays, ``meta/episode_ends``),
  a folder or a ``.zarr.zip`` archive, readable by diffusion_policy, zarr and ``kinodb.ingest``.
- ``rlds``: an RLDS dataset in TFDS's folder layout (TFRecord shards, ``features.json``),
  readable by ``tfds.load``, Octo's and OpenVLA's loaders and ``kinodb.ingest``.
"""

from __future__ import annotations

from kinodb.export._base import ExportReport
from kinodb.export._run import FORMATS, export

__all__ = ["FORMATS", "ExportReport", "export"]
