"""What one epoch of `KinoRemoteDataset` covers, and its count taken in a child interpreter.

``len(dataset)`` runs in the training process, just before a DataLoader forks its workers.
A worker forked while gRPC is shutting down in its parent (the parent closed its last
channel a moment before) can hang for ever creating its own channel, on a lock that the
parent's gRPC threads held at the fork. So `count_units` asks the server from a
short-lived ``python -c`` process: the training process never starts gRPC for a length.
"""

from __future__ import annotations

import pickle
import subprocess
import sys
from collections.abc import Mapping
from typing import Any

from kinodb.errors import KinodbError
from kinodb.serve.client import KinoClient

__all__ = ["count_units", "epoch_units"]

# The child takes the parent's import path, so it imports this same kinodb.
_CHILD = (
    "import pickle, sys\n"
    "job = pickle.load(sys.stdin.buffer)\n"
    "sys.path[:0] = job['path']\n"
    "from kinodb.serve._epoch_units import child_main\n"
    "child_main(job)\n"
)


def epoch_units(client: KinoClient, info: Mapping[str, Any], windows: Mapping[str, Any] | None) -> int:
    """The episodes an epoch covers once, or with ``windows`` the windows (frames) its
    ``kql_filter`` keeps, from ``info`` (the server's `server_info`) and one query."""
    if windows is None:
        return int(info["num_episodes"])
    kql = windows.get("kql_filter")
    if not kql:
        return int(info["num_frames"])
    return client._matching_frames(kql)


def count_units(addr: str, client_kw: Mapping[str, Any], windows: Mapping[str, Any] | None) -> int:
    """`epoch_units` for the server at ``addr``, asked from a child interpreter.

    Raises:
        KinodbError: the child could not be started, or ended without an answer.
        ServerUnavailableError: as `KinoClient` raises it in the child; so for the other
            errors of its calls (`AuthenticationError`, `QuerySyntaxError`, ...).
    """
    job = {"path": list(sys.path), "addr": addr, "client_kw": dict(client_kw), "windows": windows}
    try:
        run = subprocess.run(
            [sys.executable, "-I", "-c", _CHILD], input=pickle.dumps(job), capture_output=True, check=False
        )
    except OSError as exc:
        raise KinodbError(
            f"len() of the remote dataset for {addr} counts the epoch in a Python subprocess, which "
            f"could not start ({sys.executable!r}: {exc}); pass num_batches= to give the epoch's length"
        ) from exc
    try:
        status, value = pickle.loads(run.stdout)
    except Exception:
        err = run.stderr.decode(errors="replace").strip().splitlines()
        raise KinodbError(
            f"len() of the remote dataset for {addr}: the subprocess counting the epoch ended with "
            f"exit code {run.returncode} and no count ({err[-1] if err else 'nothing on stderr'}); "
            "pass num_batches= to give the epoch's length"
        ) from None
    if status == "error":
        raise value
    return int(value)


def child_main(job: Mapping[str, Any]) -> None:
    """The child's side of `count_units`: the count, or the error met, pickled to stdout."""
    try:
        with KinoClient(job["addr"], **job["client_kw"]) as client:
            result: tuple[str, Any] = ("ok", epoch_units(client, client.server_info(), job["windows"]))
    except Exception as exc:
        result = ("error", exc)
        try:
            pickle.loads(pickle.dumps(exc))
        except Exception:  # an error that does not survive pickling is raised by its text
            result = ("error", KinodbError(f"{type(exc).__name__}: {exc}"))
    sys.stdout.buffer.write(pickle.dumps(result))
    sys.stdout.buffer.flush()
