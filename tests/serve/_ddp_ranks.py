"""One rank of a real two-process ``torch.distributed`` (gloo) run reading a `KinoRemoteDataset`.

Imported by the spawned rank processes of ``test_serve_dataset``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path


def rank_main(rank: int, addr: str, master_port: int, out_dir: str) -> None:
    """Join the process group, read one sequential epoch with two spawned DataLoader workers
    (which have no process group of their own), and write the batches' indices as JSON."""
    import torch.distributed as dist
    from torch.utils.data import DataLoader

    from kinodb.remote import KinoRemoteDataset

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(master_port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        ds = KinoRemoteDataset(addr, batch_size=8, mode="sequential", windows={"action_horizon": 2})
        loader = DataLoader(ds, batch_size=None, num_workers=2, multiprocessing_context="spawn")
        batches = [batch["index"].tolist() for batch in loader]
        Path(out_dir, f"{rank}.json").write_text(json.dumps(batches))
    finally:
        dist.destroy_process_group()
