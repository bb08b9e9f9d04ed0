"""gRPC serving of ``.kdb`` files and mixtures: `KinoServer`, `KinoClient`, `KinoRemoteDataset`.

Needs ``pip install 'kinodb[serve]'`` (grpcio, protobuf); `KinoRemoteDataset` also needs
torch and lives in `kinodb.serve.dataset` (``kinodb.remote`` re-exports it lazily).
``docs/serve.md`` is the guide.
"""

from kinodb._optional import require

require("grpc", extra="serve")
require("google.protobuf", extra="serve")

from kinodb.serve._errors import (  # noqa: E402
    AuthenticationError,
    BatchTooLargeError,
    InvalidRequestError,
    RemoteError,
    ServerUnavailableError,
)
from kinodb.serve.client import KinoClient  # noqa: E402
from kinodb.serve.server import KinoServer  # noqa: E402

__all__ = [
    "AuthenticationError",
    "BatchTooLargeError",
    "InvalidRequestError",
    "KinoClient",
    "KinoServer",
    "RemoteError",
    "ServerUnavailableError",
]
