"""The gRPC server: `KinoServer` over a file or a mixture, with TLS and bearer-token auth.

A thread pool serves calls concurrently; see `kinodb.serve._backend` for why reads need
no lock. Every exception a handler raises goes through the one table in
`kinodb.serve._errors`, so a bad request gets a status code and never takes the server
down. The service is registered under ``kinodb.v1.KinoService`` and, for clients of the
earlier server, under ``kinodb.KinoService`` (same messages; episodes in the per-frame form).
"""

from __future__ import annotations

import errno
import hmac
import ipaddress
import logging
import os
import ssl
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent import futures
from typing import Any

import grpc

from kinodb.errors import FormatError
from kinodb.kdb.reader import Database, open_database
from kinodb.mixture import DEFAULT_SEED, Mixture
from kinodb.serve._backend import Backend
from kinodb.serve._errors import AddressError, ServerBusyError, status_for
from kinodb.serve._proto import kinodb_pb2 as pb

__all__ = ["DEFAULT_PORT", "LEGACY_SERVICE", "SERVICE", "KinoServer"]

log = logging.getLogger(__name__)

SERVICE = "kinodb.v1.KinoService"
LEGACY_SERVICE = "kinodb.KinoService"  # the earlier server's name: its clients keep working
DEFAULT_PORT = 50051
_REQUEST_LIMIT = 4 << 20  # requests are small: indices, seeds, a KQL string
KEEPALIVE_OPTIONS: tuple[tuple[str, int], ...] = (
    # Ping clients with open calls, so a client that vanished frees its stream's thread.
    ("grpc.keepalive_time_ms", 60_000),
    ("grpc.keepalive_timeout_ms", 20_000),
    # Take clients' keepalive pings (kinodb's every 310 s; other clients' as often as every
    # 5 s), with calls or without, instead of answering them with GOAWAY ("too many pings").
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
)


class KinoServer:
    """Serve a ``.kdb`` file or a weighted mixture over gRPC.

    Args:
        source: A path, a `Database`, a `Mixture`, or mixture sources (``{path: weight}``
            or a list of ``(path, weight)``). Paths are opened here and closed on `stop`.
        bind: Address to listen on (default loopback only).
        port: Port; 0 picks a free one (see `port` after `start`).
        seed: Seed of the stream that requests with seed 0 draw from (and of a mixture
            built here).
        workers: Streams served at once: each open stream holds a thread, and one more
            thread serves the other calls; a stream beyond them is refused at once
            (`ServerBusyError` on the client).
        max_batch: Largest batch a request may ask for; message size limits follow it.
        tls_cert, tls_key: PEM files; give both to serve TLS.
        token: Bearer token every call must carry (None: no authentication).

    Raises:
        FormatError: ``tls_cert`` and ``tls_key`` do not load as a certificate chain and its key.

    Example:
        >>> with KinoServer("demo.kdb", port=0) as server:
        ...     with KinoClient(server.address) as client:
        ...         client.server_info()["num_episodes"]
    """

    def __init__(
        self,
        source: Any,
        *,
        bind: str = "127.0.0.1",
        port: int = DEFAULT_PORT,
        seed: int = DEFAULT_SEED,
        workers: int = 16,
        max_batch: int = 1024,
        tls_cert: str | os.PathLike[str] | None = None,
        tls_key: str | os.PathLike[str] | None = None,
        token: str | None = None,
    ) -> None:
        for name, value in (("workers", workers), ("max_batch", max_batch)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
            raise ValueError(f"port must be an int in 0..65535, got {port!r}")
        if (tls_cert is None) != (tls_key is None):
            raise ValueError("give both tls_cert and tls_key to serve TLS, or neither")
        if token is not None and not token:
            raise ValueError("the token is empty")
        self._credentials = None
        if tls_cert is not None and tls_key is not None:
            _check_tls(tls_cert, tls_key)
            with open(tls_key, "rb") as fh_key, open(tls_cert, "rb") as fh_cert:
                self._credentials = grpc.ssl_server_credentials([(fh_key.read(), fh_cert.read())])
        self._owned, self._source = _open(source, seed)
        try:
            self.backend = Backend(self._source, seed=seed, max_batch=max_batch)
        except BaseException:
            self._close_owned()
            raise
        self._bind, self._port, self._workers, self._token = bind, port, workers, token
        self._server: grpc.Server | None = None
        self.port = port

    @property
    def address(self) -> str:
        """``host:port`` a client on this machine connects to (after `start`)."""
        host = self._bind
        if host in ("0.0.0.0", ""):
            host = "127.0.0.1"
        elif host == "::":
            host = "::1"
        return f"[{host}]:{self.port}" if ":" in host else f"{host}:{self.port}"

    @property
    def tls(self) -> bool:
        """Whether the server speaks TLS."""
        return self._credentials is not None

    @property
    def authenticated(self) -> bool:
        """Whether calls must carry the bearer token."""
        return self._token is not None

    @property
    def token_in_clear_text(self) -> bool:
        """Whether calls carry the token off loopback without TLS (`start` warns of it)."""
        return self._token is not None and self._credentials is None and not _loopback(self._bind)

    def start(self) -> KinoServer:
        """Bind and start serving; returns self.

        Raises:
            AddressError: the address cannot be bound (port in use, or not a local address);
                an `OSError` with ``errno`` EADDRINUSE.
        """
        limit = self.backend.max_message + (1 << 20)
        options = [
            ("grpc.max_send_message_length", limit),
            ("grpc.max_receive_message_length", _REQUEST_LIMIT),
            ("grpc.so_reuseport", 0),  # a second server on a busy port fails instead of sharing it
            *KEEPALIVE_OPTIONS,
        ]
        interceptors = [_TokenInterceptor(self._token)] if self._token is not None else []
        slots = _StreamSlots(self._workers)
        server = grpc.server(
            # One thread more than the streams it serves: other calls, and the refusal of a
            # stream too many, never wait behind open streams.
            futures.ThreadPoolExecutor(max_workers=self._workers + 1, thread_name_prefix="kino-serve"),
            handlers=[
                _handlers(self.backend, slots, legacy=False),
                _handlers(self.backend, slots, legacy=True),
            ],
            interceptors=interceptors,
            options=options,
        )
        where = f"[{self._bind}]:{self._port}" if ":" in self._bind else f"{self._bind}:{self._port}"
        try:
            if self._credentials is not None:
                port = server.add_secure_port(where, self._credentials)
            else:
                port = server.add_insecure_port(where)
        except RuntimeError:
            port = 0
        if port == 0:
            raise AddressError(
                errno.EADDRINUSE,
                f"cannot listen on {where}: the port is in use or the address is not one of this "
                "machine's; choose another --port or --bind",
            )
        if self.token_in_clear_text:
            log.warning(
                "the bearer token travels in clear text: serve TLS (--tls-cert/--tls-key) off loopback"
            )
        self.port = port
        server.start()
        self._server = server
        return self

    def stop(self, grace: float | None = 5.0, *, hurry: threading.Event | None = None) -> None:
        """Refuse new calls, let calls in flight finish for up to ``grace`` seconds, then close.

        Args:
            grace: Seconds calls in flight may take (None or 0: cancel them now).
            hurry: When set (say, by a second Ctrl-C) while calls are finishing, cancel
                the calls still running and return.
        """
        server, self._server = self._server, None
        if server is not None:
            done = server.stop(grace)
            if hurry is not None:
                while not done.wait(0.1):
                    if hurry.is_set():
                        server.stop(None)  # a shorter grace than before ends the wait now
                        break
            done.wait()
        self._close_owned()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the server stops (or ``timeout`` passes); True if it stopped."""
        if self._server is None:
            return True
        return bool(self._server.wait_for_termination(timeout))

    def describe(self) -> str:
        """One line: what is served, where, and how."""
        b = self.backend
        src = self._source
        what = src.path() if isinstance(src, Database) else f"a mixture of {src.num_sources()} sources"
        how = ", ".join(
            ["TLS" if self.tls else "plaintext", "token auth" if self.authenticated else "no auth"]
        )
        listen = f"[{self._bind}]:{self.port}" if ":" in self._bind else f"{self._bind}:{self.port}"
        where = listen if listen == self.address else f"{listen} (local clients: {self.address})"
        return (
            f"serving {what} ({len(b)} episodes, {b.num_frames()} frames) on {where} "
            f"[{how}; max batch {b.max_batch}, max message {b.max_message >> 20} MiB]"
        )

    def _close_owned(self) -> None:
        if self._owned:
            self._source.close()
            self._owned = False

    def __enter__(self) -> KinoServer:
        return self.start() if self._server is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _check_tls(cert: str | os.PathLike[str], key: str | os.PathLike[str]) -> None:
    """Load the pair as TLS would, so a wrong file is named now rather than logged by gRPC at bind.

    Raises:
        OSError: a file cannot be read (named in the error).
        FormatError: the files are no PEM certificate chain and its unencrypted key.
    """
    for path in (cert, key):
        with open(path, "rb"):  # a missing or unreadable file, with its name
            pass

    class _Encrypted(Exception):
        pass

    def refuse() -> str:
        raise _Encrypted

    shown = f"TLS certificate {os.fspath(cert)} and key {os.fspath(key)}"
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert, key, password=refuse)
    except _Encrypted:
        raise FormatError(
            f"the TLS key {os.fspath(key)} is encrypted, and gRPC cannot ask for its passphrase; decrypt it "
            f"first: openssl pkey -in {os.fspath(key)} -out KEY.pem (keep KEY.pem private)"
        ) from None
    except ssl.SSLError as exc:
        raise FormatError(
            f"{shown} do not load as a PEM certificate chain and its private key ({exc.reason or exc}); "
            "give the PEM files of one certificate and its key"
        ) from None


def _open(source: Any, seed: int) -> tuple[bool, Database | Mixture]:
    if isinstance(source, (Database, Mixture)):
        return False, source
    if isinstance(source, (str, os.PathLike)):
        return True, open_database(source)
    if isinstance(source, (Mapping, list, tuple)):
        return True, Mixture(source, seed=seed)
    raise TypeError(f"source must be a path, a Database, a Mixture or mixture sources, got {source!r}")


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


# -- handlers -----------------------------------------------------------------------------------


def _abort(context: grpc.ServicerContext, exc: Exception) -> None:
    code, message, trailer = status_for(exc)
    if code is grpc.StatusCode.INTERNAL:
        log.exception("internal error while serving a call")
    if trailer:
        context.set_trailing_metadata(trailer)
    context.abort(code, message)


def _unary(fn: Callable[[Any], Any]) -> Callable[[Any, grpc.ServicerContext], Any]:
    def handle(request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return fn(request)
        except Exception as exc:
            _abort(context, exc)

    return handle


class _StreamSlots:
    """How many streams are open, and the refusal of one more than ``limit``."""

    def __init__(self, limit: int) -> None:
        self.limit, self.open = limit, 0
        self._lock = threading.Lock()

    def take(self, context: grpc.ServicerContext) -> None:
        """Count a new stream until it ends.

        Raises:
            ServerBusyError: ``limit`` streams are open already.
        """
        with self._lock:
            if self.open >= self.limit:
                raise ServerBusyError(
                    f"the server is busy: {self.open} streams are open, as many as it serves at once "
                    f"(kino-serve --workers {self.limit}: each open stream holds a thread); close "
                    "streams, or restart it with --workers at least the streams open at once (DataLoader "
                    "workers x training processes)"
                )
            self.open += 1
        once = threading.Lock()

        def give() -> None:
            if once.acquire(blocking=False):
                with self._lock:
                    self.open -= 1

        if not context.add_callback(give):  # the call has ended already
            give()


def _streaming(
    fn: Callable[[Any], Iterable[Any]], slots: _StreamSlots
) -> Callable[[Any, grpc.ServicerContext], Iterator[Any]]:
    def handle(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        try:
            slots.take(context)
            for response in fn(request):
                yield response
                if not context.is_active():  # the client cancelled or went away
                    return
        except Exception as exc:
            _abort(context, exc)

    return handle


def _serialize(response: Any) -> bytes:
    """Window batches come as wire bytes already (`kinodb.serve._wire`); messages are serialised."""
    return response if isinstance(response, bytes) else response.SerializeToString()  # type: ignore[no-any-return]


def _handlers(backend: Backend, slots: _StreamSlots, *, legacy: bool) -> grpc.GenericRpcHandler:
    def rpc(fn: Callable[[Any], Any], req: Any) -> grpc.RpcMethodHandler:
        return grpc.unary_unary_rpc_method_handler(
            _unary(fn), request_deserializer=req.FromString, response_serializer=_serialize
        )

    methods = {
        "GetEpisode": rpc(lambda r: backend.episode(r, legacy=legacy), pb.EpisodeRequest),
        "GetMeta": rpc(lambda r: backend.meta(r.position), pb.MetaRequest),
        "GetBatch": rpc(lambda r: backend.batch(r, legacy=legacy), pb.BatchRequest),
        "Query": rpc(lambda r: backend.query(r, legacy=legacy), pb.QueryRequest),
        "ServerInfo": rpc(lambda r: backend.info(), pb.InfoRequest),
    }
    if not legacy:
        methods["StreamBatches"] = grpc.unary_stream_rpc_method_handler(
            _streaming(backend.stream, slots),
            request_deserializer=pb.StreamRequest.FromString,
            response_serializer=_serialize,
        )
    return grpc.method_handlers_generic_handler(LEGACY_SERVICE if legacy else SERVICE, methods)


class _TokenInterceptor(grpc.ServerInterceptor):  # type: ignore[misc]
    """Refuse every call whose ``authorization`` metadata is not ``Bearer <token>``."""

    def __init__(self, token: str) -> None:
        self._expected = f"Bearer {token}".encode()

    def intercept_service(self, continuation: Callable[[Any], Any], details: grpc.HandlerCallDetails) -> Any:
        got = next((v for k, v in details.invocation_metadata or () if k == "authorization"), None)
        if got is not None and hmac.compare_digest(str(got).encode(), self._expected):
            return continuation(details)
        why = "no bearer token sent" if got is None else "wrong bearer token"
        return _deny(f"{why}; pass the server's token (KinoClient(token=...) or KINODB_TOKEN)")


def _deny(message: str) -> grpc.RpcMethodHandler:
    def refuse(request: Any, context: grpc.ServicerContext) -> Any:
        context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    return grpc.unary_unary_rpc_method_handler(refuse)
