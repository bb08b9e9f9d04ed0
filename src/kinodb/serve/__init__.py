"""gRPC serving of ``.kdb`` files and mixtures: `KinoServer`, `KinoClient`, `KinoRemoteDataset`.

Needs ``pip install 'kinodb[serve]'`` (grpcio, protobuf); `KinoRemoteDataset` also needs
torch and lives in `kinodb.serve.dataset` (``kinodb.remote`` re-exports it lazily).
``docs/serve.md`` is the guide.
"""

import os
import sys

from kinodb._optional import require
from kinodb.errors import MissingExtraError

if "grpc" not in sys.modules:
    # gRPC's core logs connection and TLS failures on stderr on its own, read from this
    # variable once, at import; kinodb raises them, with what to change, as exceptions.
    # GRPC_VERBOSITY=ERROR (or importing grpc first) shows the core's lines again.
    os.environ.setdefault("GRPC_VERBOSITY", "NONE")
_grpc = require("grpc", extra="serve")
_protobuf = require("google.protobuf", extra="serve")
try:  # the generated code checks the versions it was generated for
    from kinodb.serve._proto import kinodb_pb2, kinodb_pb2_grpc  # noqa: F401
except Exception as exc:  # RuntimeError (grpcio), protobuf's VersionError, ImportError
    raise MissingExtraError(
        f"kinodb's gRPC code needs grpcio>=1.85.1 and protobuf>=7.35.1,<8, but grpcio "
        f"{getattr(_grpc, '__version__', '?')} and protobuf {getattr(_protobuf, '__version__', '?')} are "
        f"installed ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}); upgrade them with: "
        "pip install -U 'kinodb[serve]'"
    ) from exc

from kinodb.serve._errors import (  # noqa: E402
    AddressError,
    AuthenticationError,
    BatchTooLargeError,
    InvalidRequestError,
    RemoteError,
    ServerBusyError,
    ServerTimeoutError,
    ServerUnavailableError,
)
from kinodb.serve.client import KinoClient  # noqa: E402
from kinodb.serve.server import KinoServer  # noqa: E402

__all__ = [
    "AddressError",
    "AuthenticationError",
    "BatchTooLargeError",
    "InvalidRequestError",
    "KinoClient",
    "KinoServer",
    "RemoteError",
    "ServerBusyError",
    "ServerTimeoutError",
    "ServerUnavailableError",
]
