"""Remote access to a ``kino-serve`` server: `KinoClient` and `KinoRemoteDataset`.

Importing this module imports grpc (``pip install 'kinodb[serve]'``); torch is imported
only when `KinoRemoteDataset` is first used.

Example:
    >>> from kinodb.remote import KinoClient
    >>> with KinoClient("127.0.0.1:50051") as client:
    ...     episodes = client.get_batch(8, seed=1)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from kinodb.serve import (
    AuthenticationError,
    BatchTooLargeError,
    InvalidRequestError,
    KinoClient,
    RemoteError,
    ServerBusyError,
    ServerTimeoutError,
    ServerUnavailableError,
)

if TYPE_CHECKING:
    from kinodb.serve.dataset import KinoRemoteDataset

__all__ = [
    "AuthenticationError",
    "BatchTooLargeError",
    "InvalidRequestError",
    "KinoClient",
    "KinoRemoteDataset",
    "RemoteError",
    "ServerBusyError",
    "ServerTimeoutError",
    "ServerUnavailableError",
]


def __getattr__(name: str) -> Any:
    if name == "KinoRemoteDataset":
        from kinodb.serve.dataset import KinoRemoteDataset  # deferred: it imports torch

        return KinoRemoteDataset
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
