"""One table between kinodb errors and gRPC status codes, used in both directions.

The server turns an exception into a status code, a one-line message and the error's
class name (trailing metadata ``kinodb-error``); the client turns them back into the
exception the local API raises, so ``except EpisodeNotFoundError`` works the same against
a file and against a server.
"""

from __future__ import annotations

import re
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
from kinodb.serve._sizes import mib

__all__ = [
    "REQUEST_LIMIT",
    "AddressError",
    "AuthenticationError",
    "BatchTooLargeError",
    "InvalidRequestError",
    "RemoteError",
    "ServerBusyError",
    "ServerTimeoutError",
    "ServerUnavailableError",
    "connection_hint",
    "connection_lost",
    "fit_message",
    "status_for",
    "to_exception",
    "unreachable_hint",
]

REQUEST_LIMIT = 64 << 20
"""The largest request a server takes: indices, seeds, camera names and KQL text (a
filter that lists thousands of ids runs to megabytes; a client checks before sending)."""


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
    message = fit_message(message)
    trailer: list[tuple[str, str]] = []
    name = next((n for n, cls in _BY_NAME.items() if type(exc) is cls), None)
    if type(exc) is ServerBusyError:
        name = ServerBusyError.__name__
    if name is not None:
        trailer.append((ERROR_KEY, name))
        if isinstance(exc, QuerySyntaxError):
            trailer.append((POSITION_KEY, str(exc.position)))
    return code, message, tuple(trailer)


_MESSAGE_BYTES = 8 << 10  # a status message travels in a header; gRPC drops a call whose headers pass 16 KiB


def fit_message(message: str) -> str:
    """``message`` short enough to travel as a status message.

    A KQL error quotes the query with a caret under the offending token: a long query is
    shown around the caret. Anything still too long is cut, saying how much was.
    """
    if _header_bytes(message) <= _MESSAGE_BYTES:
        return message
    lines = message.split("\n")
    for k in range(1, len(lines)):
        if lines[k].strip() == "^" and len(lines[k - 1]) > 240:
            col = lines[k].index("^")
            start = max(0, col - 120)
            end = start + 240
            query = lines[k - 1]
            lines[k - 1] = ("..." if start else "") + query[start:end] + ("..." if end < len(query) else "")
            lines[k] = " " * (col - start + (3 if start else 0)) + "^"
    message = "\n".join(lines)
    if _header_bytes(message) <= _MESSAGE_BYTES:
        return message
    keep = len(message)
    while keep and _header_bytes(message[:keep]) > _MESSAGE_BYTES - 64:
        keep = keep * 3 // 4
    return f"{message[:keep]}... ({len(message) - keep} more characters cut)"


def _header_bytes(text: str) -> int:
    """Bytes of ``text`` as a grpc-message header (percent-encoded outside printable ASCII)."""
    raw = text.encode("utf-8", "replace")
    plain = sum(1 for b in raw if 32 <= b < 127 and b != 37) if len(raw) < 4 * _MESSAGE_BYTES else 0
    return plain + 3 * (len(raw) - plain)


def to_exception(
    err: grpc.RpcError,
    where: str,
    timeout: float | None = None,
    *,
    tls: bool | None = None,
    received: bool = False,
) -> Exception:
    """The local exception for a failed call (``where`` names the server in the message;
    ``timeout`` is the client's, named when the call ran out of it; ``tls`` whether the
    client spoke TLS, for the hint on a connection that failed; ``received`` whether the
    call had already received messages: its connection was up)."""
    code: grpc.StatusCode = err.code() if hasattr(err, "code") else grpc.StatusCode.UNKNOWN
    details: str = (err.details() if hasattr(err, "details") else None) or str(err)
    trailer: dict[str, Any] = dict(getattr(err, "trailing_metadata", lambda: None)() or ())
    message = f"{where}: {details}"
    if code is grpc.StatusCode.UNAVAILABLE and _SHUTDOWN in details:
        return ServerUnavailableError(
            f"{where}: the server stopped during the call ({details}): it is shutting down and "
            "cancelled the calls still running (its --grace ran out, or it was told to stop at "
            "once); rerun once it serves again",
            code.name,
        )
    if code is grpc.StatusCode.UNAVAILABLE and connection_lost(details, received=received):
        return ServerUnavailableError(
            f"{where}: the connection to the server was lost during the call ({details}): the "
            "server crashed, was killed or restarted; check the server's log, and rerun once it "
            "serves again",
            code.name,
        )
    hint = connection_hint(details, tls, received=received)
    if hint and code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.UNAVAILABLE):
        # A TLS handshake that failed (a certificate for other names reads UNAUTHENTICATED):
        # the connection, not the token.
        return ServerUnavailableError(f"{where}: cannot connect: {details}; {hint}", code.name)
    if code is grpc.StatusCode.UNAUTHENTICATED:
        return AuthenticationError(f"{where}: authentication failed: {details}", code.name)
    too_large = _TOO_LARGE.search(details)
    if code is grpc.StatusCode.RESOURCE_EXHAUSTED and too_large:
        got, limit = (int(n) for n in too_large.groups())
        return InvalidRequestError(
            f"{where}: the request is {mib(got)}, over the {mib(limit)} the server takes for a request; "
            "shorten it (a KQL filter listing many ids: match on fields instead, or split the ids "
            "into several queries)",
            code.name,
        )
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
        fix = unreachable_hint(details)
        return ServerUnavailableError(
            f"{where}: server unavailable: {details}{'; ' * bool(fix)}{fix}", code.name
        )
    return _BY_CODE.get(code, RemoteError)(message, code.name)


_TOO_LARGE = re.compile(r"Received message larger than max \((\d+) vs\. (\d+)\)")
_NAME_MISMATCH = ("does not match SSL server name", "Hostname Verification", "No match found for server name")


_SHUTDOWN = "Cancelling all calls"  # gRPC's server, stopping, cancels the calls in flight
_LOST = "Stream removed"  # gRPC's client: the transport of a call under way went away


def connection_lost(details: str, *, received: bool = False) -> bool:
    """Whether an UNAVAILABLE call had its connection up and lost it (the server died or
    restarted), rather than failing to connect: gRPC's ``details`` say a stream under way
    was removed, or the call (``received``) had already received messages."""
    return _SHUTDOWN not in details and (received or _LOST in details)


def connection_hint(details: str, tls: bool | None, *, received: bool = False) -> str:
    """What to change when a connection failed as gRPC's ``details`` say ("" if nothing
    points at TLS, or the connection was up and then lost: see `connection_lost`);
    ``tls``: whether the client spoke TLS (None: unknown)."""
    if connection_lost(details, received=received):
        return ""
    if any(text in details for text in _NAME_MISMATCH):
        return (
            "the server's TLS certificate does not name the host this client dials: connect with a "
            "name or IP address the certificate lists (its subjectAltName), or pass tls_server_name= "
            "one of them"
        )
    if "WRONG_VERSION_NUMBER" in details:
        return (
            "the server does not speak TLS: connect without tls_ca, or serve TLS (kino-serve "
            "--tls-cert/--tls-key)"
        )
    if "CERTIFICATE_VERIFY_FAILED" in details:
        if "expired" in details:
            return "the server's TLS certificate has expired: serve a renewed one"
        return (
            "the server's TLS certificate is not signed by the CA in tls_ca (or is not valid now): "
            "give tls_ca the CA that signed it, or for a self-signed certificate the certificate itself"
        )
    if any(text in details for text in ("handshake", "Handshake", "SSL_ERROR", "TSI_")):
        return "the TLS handshake failed: check tls_ca, tls_server_name and the server's --tls-cert"
    if tls is False and any(text in details for text in ("Socket closed", "Connection reset")):
        return (
            "the server closed the connection as it opened: if it serves TLS, connect with "
            "tls_ca= (the CA that signed its certificate)"
        )
    return ""


_NO_NAME = ("errors resolving", "DNS resolution failed", "lookup error", "Domain name not found",
            "Name or service not known", "nodename nor servname", "No address associated")  # fmt: skip
_REFUSED = ("Connection refused", "connection refused")


def unreachable_hint(details: str) -> str:
    """What to do when a connection could not be made as gRPC's ``details`` say: the host
    name did not resolve, or nothing listens at the address ("" if neither)."""
    if any(text in details for text in _NO_NAME):
        return (
            "the host name does not resolve: check the host name in the address (a typo, or a name "
            "this machine cannot look up: give the server's IP address)"
        )
    if any(text in details for text in _REFUSED):
        return (
            "nothing listens at that address: start kino-serve there (its startup line, "
            "'kino-serve: serving ... on HOST:PORT', names the address to connect to), or check "
            "the host and port (a server on another machine takes connections from others only "
            "when started with --bind 0.0.0.0)"
        )
    return ""


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
