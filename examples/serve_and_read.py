"""Serve a .kdb file over gRPC and read it from a client, as a training worker elsewhere would.

Starts ``kino serve FILE --port 0`` (a free port, named on its startup line), reads
metadata, a KQL query, a weighted batch of episodes and a stream of frame-window
batches with `KinoClient`, one epoch slice through `KinoRemoteDataset` in a DataLoader,
then stops the server with SIGTERM (it drains and exits 0).

Usage: python examples/serve_and_read.py PATH
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time

from kinodb.remote import KinoClient, KinoRemoteDataset


def main(path: str) -> None:
    server = subprocess.Popen(
        [sys.executable, "-m", "kinodb._cli.serve", path, "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        assert server.stdout is not None
        line = server.stdout.readline().strip()
        print(line)
        found = re.search(r" on (\S+:\d+)", line)
        if found is None:
            raise SystemExit(f"the server did not start: {line or server.stdout.read()}")
        addr = found.group(1)
        with KinoClient(addr) as client:
            info = client.server_info()
            print(
                f"server_info: {info['num_episodes']} episodes, {info['num_frames']} frames, version {info['version']}"
            )
            hits = client.query("success = true AND num_frames >= 40", limit=5)
            print(f"query 'success = true AND num_frames >= 40' (limit 5): {hits.tolist()}")
            batch = client.get_batch(4, mode="random", seed=7)
            print("get_batch(4, seed=7):", [(ep["meta"]["embodiment"], ep["actions"].shape) for ep in batch])
            t0, n = time.perf_counter(), 0
            for windows in client.stream_windows(
                256, num_batches=20, obs_horizon=2, action_horizon=16, seed=1
            ):
                n += len(windows["state"])
            rate = n / (time.perf_counter() - t0)
            print(f"stream_windows: {n} windows (state {windows['state'].shape[1:]}, action "
                  f"{windows['action'].shape[1:]}) at {rate:,.0f} windows/s")  # fmt: skip
        from torch.utils.data import DataLoader

        ds = KinoRemoteDataset(addr, batch_size=128, seed=3, num_batches=4,
                               windows={"obs_horizon": 2, "action_horizon": 8})  # fmt: skip
        shapes = [tuple(b["action"].shape) for b in DataLoader(ds, batch_size=None)]
        print(f"KinoRemoteDataset through a DataLoader: {len(shapes)} batches of {shapes[0]}")
    finally:
        server.send_signal(signal.SIGTERM)
        code = server.wait(timeout=30)
        print(f"server stopped with SIGTERM, exit code {code}")
    if code != 0:
        raise SystemExit(code)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "demo/train.kdb")
