"""One table between kinodb errors and gRPC status codes, used in both directions.

The server turns an exception into a status code, a one-line message and the error's
class name (trailing metadata ``kinodb-error``); the client turns them back into the
exception the local API raises, so ``except EpisodeNotFoundError`` works the same against
a file and against a server.
"""

from __future__ import annotations

from typing import Any

import grpc

from kinodb.errors import (
    CorruptFileError,
    EpisodeNotFoundError,
    FormatError,
    FrameRangeError,
    KinodbError,
    MissingExtraError,
    MixtureError,
    NameNotFoundError,
    QuerySyntaxError,
    UnsupportedVersionError,
)

__all__ = [
    "AddressError",
    "AuthenticationError",
    "BatchTooLargeError",
    "InvalidRequestError",
    "RemoteError",
    "ServerBusyError",
    "ServerTimeoutError",
    "ServerUnavailableError",
    "status_for",
    "to_exception",
]


class AddressError(OSError):
    """A server cannot listen on its address (``errno`` EADDRINUSE); prints as its message alone."""

    def __str__(self) -> str:
        return str(self.strerror)


ERROR_KEY = "kinodb-error"  # trailing metadata: the class name of the server-side error
POSITION_KEY = "kinodb-position"  # trailing metadata: QuerySyntaxError.position


class BatchTooLargeError(KinodbError, ValueError):
    """A batch request exceeds the server's ``--max-batch`` or its message size limit."""


class RemoteError(KinodbError, RuntimeError):
    """A server call failed for a reason with no local counterpart.

    Attributes:
        code: The gRPC status code's name, e.g. ``"INTERNAL"``.
    """

    def __init__(self, message: str, code: str = "UNKNOWN") -> None:
        super().__init__(message)
        self.code = code


class InvalidRequestError(RemoteError, ValueError):
    """The server rejected a request's arguments (INVALID_ARGUMENT)."""


class AuthenticationError(RemoteError, PermissionError):
    """The server refused the call: its bearer token is missing or wrong (UNAUTHENTICATED)."""


class ServerUnavailableError(RemoteError, ConnectionError):
    """The server cannot be reached, or it is shutting down (UNAVAILABLE)."""


class ServerTimeoutError(RemoteError, TimeoutError):
    """A call, or the wait for a stream's next message, took longer than the client's
    ``timeout`` (DEADLINE_EXCEEDED): the server is stalled, overloaded, or busy with streams."""


class ServerBusyError(RemoteError):
    """The server refused a stream: it has as many open as its ``--workers`` serve at once
    (RESOURCE_EXHAUSTED)."""


# Most specific first: the first class an exception is an instance of decides its code.
_TABLE: tuple[tuple[type[BaseException], grpc.StatusCode], ...] = (
    (ServerBusyError, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (EpisodeNotFoundError, grpc.StatusCode.OUT_OF_RANGE),
    (FrameRangeError, grpc.StatusCode.OUT_OF_RANGE),
    (QuerySyntaxError, grpc.StatusCode.INVALID_ARGUMENT),
    (BatchTooLargeError, grpc.StatusCode.INVALID_ARGUMENT),
    (MixtureError, grpc.StatusCode.INVALID_ARGUMENT),
    (UnsupportedVersionError, grpc.StatusCode.FAILED_PRECONDITION),
    (CorruptFileError, grpc.StatusCode.DATA_LOSS),
    (FormatError, grpc.StatusCode.DATA_LOSS),
    (MissingExtraError, grpc.StatusCode.FAILED_PRECONDITION),
    (NameNotFoundError, grpc.StatusCode.INVALID_ARGUMENT),  # the client's InvalidRequestError, as before
    (KinodbError, grpc.StatusCode.FAILED_PRECONDITION),
    (IndexError, grpc.StatusCode.OUT_OF_RANGE),
    (KeyError, grpc.StatusCode.INVALID_ARGUMENT),
    (ValueError, grpc.StatusCode.INVALID_ARGUMENT),
    (TypeError, grpc.StatusCode.INVALID_ARGUMENT),
)

# Errors the client re-raises as the same class (constructed from the message alone).
_BY_NAME: dict[str, type[KinodbError]] = {
    cls.__name__: cls
    for cls in (
        EpisodeNotFoundError, FrameRangeError, QuerySyntaxError, MixtureError, UnsupportedVersionError,
        CorruptFileError, FormatError, KinodbError, BatchTooLargeError,
    )
}  # fmt: skip

# Codes with no kinodb class named: the client's fallback per code.
_BY_CODE: dict[grpc.StatusCode, type[RemoteError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidRequestError,
    grpc.StatusCode.UNAUTHENTICATED: AuthenticationError,
    grpc.StatusCode.UNAVAILABLE: ServerUnavailableError,
}


def status_for(exc: BaseException) -> tuple[grpc.StatusCode, str, tuple[tuple[str, str], ...]]:
    """``(status code, one-line message, trailing metadata)`` for an exception a handler raised."""
    code = next((c for cls, c in _TABLE if isinstance(exc, cls)), grpc.StatusCode.INTERNAL)
    text = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
    message = str(text).strip() or type(exc).__name__  # kept multi-line: a KQL error points with a caret
    if code is grpc.StatusCode.INTERNAL:
        message = f"internal server error ({type(exc).__name__}: {message}); the server log has the traceback"
    trailer: list[tuple[str, str]] = []
    name = next((n for n, cls in _BY_NAME.items() if type(exc) is cls), None)
    if type(exc) is ServerBusyError:
        name = ServerBusyError.__name__
    if name is not None:
        trailer.append((ERROR_KEY, name))
        if isinstance(exc, QuerySyntaxError):
            trailer.append((POSITION_KEY, str(exc.position)))
    return code, message, tuple(trailer)


def to_exception(err: grpc.RpcError, where: str, timeout: float | None = None) -> Exception:
    """The local exception for a failed call (``where`` names the server in the message;
    ``timeout`` is the client's, named when the call ran out of it)."""
    code: grpc.StatusCode = err.code() if hasattr(err, "code") else grpc.StatusCode.UNKNOWN
    details: str = (err.details() if hasattr(err, "details") else None) or str(err)
    trailer: dict[str, Any] = dict(getattr(err, "trailing_metadata", lambda: None)() or ())
    message = f"{where}: {details}"
    if code is grpc.StatusCode.UNAUTHENTICATED:
        return AuthenticationError(f"{where}: authentication failed: {details}", code.name)
    if code is grpc.StatusCode.DEADLINE_EXCEEDED:
        return ServerTimeoutError(timeout_message(where, timeout, "did not answer"), code.name)
    if trailer.get(ERROR_KEY) == ServerBusyError.__name__:
        return ServerBusyError(message, code.name)
    cls = _BY_NAME.get(str(trailer.get(ERROR_KEY, "")))
    if cls is QuerySyntaxError:
        return QuerySyntaxError(message, _int(trailer.get(POSITION_KEY)))
    if cls is not None:
        return cls(message)
    if code is grpc.StatusCode.OUT_OF_RANGE:
        return EpisodeNotFoundError(message)
    if code is grpc.StatusCode.UNAVAILABLE:
        return ServerUnavailableError(f"{where}: server unavailable: {details}", code.name)
    return _BY_CODE.get(code, RemoteError)(message, code.name)


def timeout_message(where: str, timeout: float | None, what: str) -> str:
    """Why a call ran out of time, and what to do about it."""
    within = f"within {timeout:g} s (the client's timeout)" if timeout is not None else "in time"
    return (
        f"{where}: {what} {within}; the server may be stalled or overloaded (an earlier kino-serve "
        "also stalls while as many streams are open as its --workers): check it, or raise the "
        "client's timeout"
    )


def _int(text: Any) -> int:
    try:
        return int(text)
    except (TypeError, ValueError):
        return 0
