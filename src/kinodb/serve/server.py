"""The gRPC server: `KinoServer` over a file or a mixture, with TLS and bearer-token auth.

A thread pool serves calls concurrently; see `kinodb.serve._backend` for why reads need
no lock. Every exception a handler raises goes through the one table in
`kinodb.serve._errors`, so a bad request gets a status code and never takes the server
down. The service is registered under ``kinodb.v1.KinoService`` and, for clients of the
earlier server, under ``kinodb.KinoService`` (same messages; episodes in the per-frame form).
"""

from __future__ import annotations

import base64
import datetime as dt
import errno
import hmac
import ipaddress
import itertools
import logging
import os
import re
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent import futures
from typing import Any

import grpc

from kinodb.errors import FormatError
from kinodb.kdb.reader import Database, open_database
from kinodb.mixture import DEFAULT_SEED, Mixture
from kinodb.serve._backend import Backend
from kinodb.serve._errors import REQUEST_LIMIT, AddressError, ServerBusyError, status_for
from kinodb.serve._proto import kinodb_pb2 as pb
from kinodb.serve._sizes import mib

__all__ = ["DEFAULT_PORT", "LEGACY_SERVICE", "SERVICE", "KinoServer", "token_problem"]

log = logging.getLogger(__name__)

SERVICE = "kinodb.v1.KinoService"
LEGACY_SERVICE = "kinodb.KinoService"  # the earlier server's name: its clients keep working
DEFAULT_PORT = 50051
_BIND_TRIES = 3  # an address taken between the check of it and gRPC's bind: check and bind again
# How long `KinoServer.stop` waits for gRPC to report the server stopped once the calls in
# flight are cancelled. gRPC's Python server can miss the end of a call cancelled under it
# (a stream whose client went away while the server was paused, say) and would then never
# report the stop; the wait is bounded so that stopping always ends.
STOP_WAIT_AFTER_CANCEL = 5.0
_THREAD_PREFIX = "kino-serve"
_servers = itertools.count(1)
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
        bind: Address to listen on (default loopback only): an IP address (IPv6 with or
            without brackets), or a name, which must be free on every address it stands
            for (``localhost``: 127.0.0.1 and, where this machine has IPv6, ::1).
        port: Port; 0 picks a free one (see `port` after `start`).
        seed: Seed of the stream that requests with seed 0 draw from (and of a mixture
            built here).
        workers: Streams served at once: each open stream holds a thread, and one more
            thread serves the other calls; a stream beyond them is refused at once
            (`ServerBusyError` on the client).
        max_batch: Largest batch a request may ask for; message size limits follow it.
        tls_cert, tls_key: PEM files; give both to serve TLS.
        token: Bearer token every call must carry (None: no authentication); surrounding
            whitespace is stripped, and the rest must be printable ASCII (a gRPC header).

    Raises:
        FormatError: ``tls_cert`` and ``tls_key`` do not load as a certificate chain and its key.
        ValueError: a bad argument: ``bind`` with a port, a token a header cannot carry.

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
        if token is not None:
            token = token.strip()
            problem = token_problem(token)
            if problem:
                raise ValueError(
                    f"the token {problem}; give one line of printable ASCII (letters, digits, "
                    "punctuation, spaces)"
                )
        host = _bind_host(bind)
        self._credentials = None
        self._cert_warning: str | None = None
        if tls_cert is not None and tls_key is not None:
            _check_tls(tls_cert, tls_key)
            with open(tls_key, "rb") as fh_key, open(tls_cert, "rb") as fh_cert:
                cert = fh_cert.read()
                self._credentials = grpc.ssl_server_credentials([(fh_key.read(), cert)])
            self._cert_warning = _validity_warning(os.fspath(tls_cert), cert)
        self._owned, self._source = _open(source, seed)
        try:
            self.backend = Backend(self._source, seed=seed, max_batch=max_batch)
        except BaseException:
            self._close_owned()
            raise
        self._bind, self._port, self._workers, self._token = host, port, workers, token
        self._server: grpc.Server | None = None
        #: True after a `stop` that gave up waiting for gRPC (see `STOP_WAIT_AFTER_CANCEL`):
        #: handler threads may still be running, and a process exit would wait for them.
        self.stop_incomplete = False
        self._pool: futures.ThreadPoolExecutor | None = None
        self._threads = f"{_THREAD_PREFIX}-{next(_servers)}"  # this server's handler thread names
        self.port = port

    @property
    def address(self) -> str:
        """``host:port`` a client on this machine connects to (after `start`)."""
        host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(self._bind, self._bind)
        return _join(host, self.port)

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
        """Bind every address ``bind`` stands for, and start serving; returns self.

        Raises:
            AddressError: an address cannot be bound, named in the message (an `OSError`
                with ``errno`` EADDRINUSE for a port in use, EADDRNOTAVAIL for an address
                that is not this machine's or a name that does not resolve).
        """
        hosts = _listen_hosts(self._bind)
        for attempt in range(_BIND_TRIES):
            port = _free_port(self._bind, hosts, self._port)
            server = self._grpc_server()
            failed, bound = self._add_ports(server, hosts, port)
            if failed is None:
                break
            if bound:  # the addresses bound so far are released only by a server that ran
                server.start()
                server.stop(None).wait()
            code = _bind_errno(*failed)
            if code is not None or attempt + 1 == _BIND_TRIES:  # else taken between check and bind
                raise _address_error(self._bind, hosts, *failed, code)
        if self.token_in_clear_text:
            log.warning(
                "the bearer token travels in clear text: serve TLS (--tls-cert/--tls-key) off loopback"
            )
        if self._cert_warning:
            log.warning("%s", self._cert_warning)
        server.start()
        self._server = server
        return self

    def _grpc_server(self) -> grpc.Server:
        # One thread more than the streams it serves: other calls, and the refusal of a
        # stream too many, never wait behind open streams.
        self._pool = futures.ThreadPoolExecutor(
            max_workers=self._workers + 1, thread_name_prefix=self._threads
        )
        options = [
            ("grpc.max_send_message_length", self.backend.max_message + (1 << 20)),
            ("grpc.max_receive_message_length", REQUEST_LIMIT),
            ("grpc.so_reuseport", 0),  # a second server on a busy port fails instead of sharing it
            *KEEPALIVE_OPTIONS,
        ]
        interceptors = [_TokenInterceptor(self._token)] if self._token is not None else []
        slots = _StreamSlots(self._workers)
        return grpc.server(
            self._pool,
            handlers=[
                _handlers(self.backend, slots, legacy=False),
                _handlers(self.backend, slots, legacy=True),
            ],
            interceptors=interceptors,
            options=options,
        )

    def _add_ports(
        self, server: grpc.Server, hosts: list[str], port: int
    ) -> tuple[tuple[str, int] | None, bool]:
        """Listen on each of ``hosts`` at ``port`` (0: the port the first gets); sets `port`.

        Returns ``(host, port)`` of the first address that could not be bound (None if
        all were), and whether any was.
        """
        for k, host in enumerate(hosts):
            where = _join(host, port)
            try:
                if self._credentials is not None:
                    got = server.add_secure_port(where, self._credentials)
                else:
                    got = server.add_insecure_port(where)
            except RuntimeError:
                got = 0
            if got == 0:
                return (host, port), k > 0
            port = got
        self.port = port
        return None, True

    def stop(self, grace: float | None = 5.0, *, hurry: threading.Event | None = None) -> None:
        """Refuse new calls, let calls in flight finish for up to ``grace`` seconds, then close.

        Args:
            grace: Seconds calls in flight may take (None or 0: cancel them now); more than
                ``threading.TIMEOUT_MAX`` (some 292 years), the longest wait Python's
                threads take, counts as that.
            hurry: When set (say, by a second Ctrl-C) while calls are finishing, cancel
                the calls still running and return.
        """
        if grace is not None and not 0 <= grace <= threading.TIMEOUT_MAX:
            # gRPC waits out the grace on a thread, which a longer wait would end with an OverflowError.
            grace = threading.TIMEOUT_MAX if grace > 0 else 0.0  # NaN or negative: no grace
        server, self._server = self._server, None
        if server is None:
            self._close_owned()
            return
        # gRPC's stop(None) blocks until every call has ended, without a limit; a grace of 0
        # cancels the calls just the same and returns at once, so the waits below stay bounded.
        done = server.stop(grace or 0)
        deadline = time.monotonic() + (grace or 0.0) + STOP_WAIT_AFTER_CANCEL
        while not done.wait(0.1) and time.monotonic() < deadline:
            if hurry is not None and hurry.is_set():
                server.stop(0)  # a shorter grace than before ends the wait now
                hurry = None
                deadline = min(deadline, time.monotonic() + STOP_WAIT_AFTER_CANCEL)
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
        running = _handler_threads(self._threads, deadline if done.is_set() else time.monotonic())
        if done.is_set() and not running:
            self._close_owned()
            return
        log.warning(
            "calls in flight had not ended %g s after they were cancelled; stopped waiting "
            "(handler threads still running: %s)",
            STOP_WAIT_AFTER_CANCEL, ", ".join(running) or "none",
        )  # fmt: skip
        self.stop_incomplete = True  # the source stays open: a handler still running may read it

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
        listen = _join(self._bind, self.port)
        where = listen if listen == self.address else f"{listen} (local clients: {self.address})"
        return (
            f"serving {what} ({len(b)} episodes, {b.num_frames()} frames) on {where} "
            f"[{how}; max batch {b.max_batch}, max message {mib(b.max_message)}]"
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
    for path, name, what in (
        (cert, "tls_cert", "the certificate chain to serve"),
        (key, "tls_key", "its private key"),
    ):
        try:
            with open(path, "rb"):  # a missing or unreadable file, with its name
                pass
        except OSError as exc:
            raise OSError(
                exc.errno, f"{exc.strerror}; {name} names the PEM file of {what}", exc.filename
            ) from None

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


def _validity_warning(path: str, pem: bytes) -> str | None:
    """Why clients will refuse the certificate now (expired, or not yet valid), or None."""
    dates = _validity(pem)
    if dates is None:
        return None
    now = dt.datetime.now(dt.timezone.utc)
    start, end = dates
    if now > end:
        return (
            f"the TLS certificate {path} expired on {end:%Y-%m-%d %H:%M} UTC: clients refuse it "
            "(CERTIFICATE_VERIFY_FAILED); serve a renewed certificate"
        )
    if now < start:
        return (
            f"the TLS certificate {path} is not valid before {start:%Y-%m-%d %H:%M} UTC: clients "
            "refuse it until then; check this machine's clock, or the certificate's dates"
        )
    return None


def _validity(pem: bytes) -> tuple[dt.datetime, dt.datetime] | None:
    """``(notBefore, notAfter)`` of the first certificate of a PEM chain, None where it does
    not parse (TLS itself then says what is wrong)."""
    found = re.search(rb"-----BEGIN CERTIFICATE-----(.*?)-----END CERTIFICATE-----", pem, re.S)
    if found is None:
        return None
    try:
        der = base64.b64decode(b"".join(found.group(1).split()), validate=True)
        _, cert, _ = _der(der, 0)  # Certificate ::= SEQUENCE { tbsCertificate, ... }
        _, at, _ = _der(der, cert)  # TBSCertificate ::= SEQUENCE { [0] version?, serial, ...
        tag, _, end = _der(der, at)
        if tag == 0xA0:  # the explicit version; a version 1 certificate has none
            at = end
        for _ in range(3):  # serialNumber, signature, issuer
            at = _der(der, at)[2]
        tag, at, _ = _der(der, at)  # validity ::= SEQUENCE { notBefore, notAfter }
        times = []
        for _ in range(2):
            tag, start, end = _der(der, at)
            times.append(_asn1_time(tag, der[start:end].decode("ascii")))
            at = end
        return times[0], times[1]
    except (ValueError, IndexError):
        return None


def _der(buf: bytes, at: int) -> tuple[int, int, int]:
    """One DER element at ``at``: ``(tag, where its value starts, where it ends)``."""
    tag, size = buf[at], buf[at + 1]
    at += 2
    if size & 0x80:
        count = size & 0x7F
        size = int.from_bytes(buf[at : at + count], "big")
        at += count
    if at + size > len(buf):
        raise IndexError("a DER element runs past the end")
    return tag, at, at + size


def _asn1_time(tag: int, text: str) -> dt.datetime:
    if tag == 0x17:  # UTCTime YYMMDDHHMMSSZ: years 50-99 are 19xx
        when = dt.datetime.strptime(text, "%y%m%d%H%M%SZ")
        if when.year >= 2050:
            when = when.replace(year=when.year - 100)
    elif tag == 0x18:  # GeneralizedTime YYYYMMDDHHMMSSZ
        when = dt.datetime.strptime(text, "%Y%m%d%H%M%SZ")
    else:
        raise ValueError(f"not an ASN.1 time (tag {tag:#x})")
    return when.replace(tzinfo=dt.timezone.utc)


def token_problem(token: str) -> str | None:
    """What keeps ``token`` (stripped) from travelling in a gRPC header, or None.

    It follows the token's source in a message: "is empty", "holds a tab at position 3,
    which a gRPC header cannot carry".
    """
    if not token:
        return "is empty"
    for i, ch in enumerate(token):
        if " " <= ch <= "~":
            continue
        if ch in "\r\n":
            what = f"a line break (it has {len(token.splitlines())} lines)"
        elif ch == "\t":
            what = "a tab"
        elif ord(ch) < 128:
            what = f"a control character ({ch!r})"
        else:
            what = f"the non-ASCII character {ch!r}"
        return f"holds {what} at position {i}, which a gRPC header cannot carry"
    return None


def _bind_host(bind: str) -> str:
    """``bind`` as the host to listen on: an IPv6 address's brackets taken off.

    Raises:
        ValueError: empty, holding a port, or neither an IP address nor a host name.
        TypeError: not a str.
    """
    if not isinstance(bind, str):
        raise TypeError(f"bind must be an address (a str), got {bind!r}")
    if not bind.strip():
        raise ValueError(
            f"the bind address is empty ({bind!r}): give 127.0.0.1 (this machine only), 0.0.0.0 "
            "(every IPv4 interface) or :: (every interface)"
        )
    text = bind.strip()
    host, rest = text, ""
    if text.startswith("["):
        close = text.find("]")
        host, rest = (text[1:close], text[close + 1 :]) if close > 0 else (text[1:], "?")
    elif text.count(":") == 1:
        host, rest = text.split(":")
        rest = ":" + rest
    if rest.startswith(":") and rest[1:].isdigit():
        raise ValueError(
            f"the bind address {bind!r} holds a port: give the address alone and the port apart "
            f"(kino-serve --bind {host} --port {rest[1:]}; KinoServer(bind={host!r}, port={rest[1:]}))"
        )
    ip = _ip(host)
    if (
        rest
        or (":" in host and ip is None)
        or (text.startswith("[") and not isinstance(ip, ipaddress.IPv6Address))
    ):
        raise ValueError(
            f"the bind address {bind!r} is not an IP address or a host name: give one such as "
            "127.0.0.1, 0.0.0.0, ::1 (or [::1]), :: or localhost"
        )
    return host


def _ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def _join(host: str, port: int) -> str:
    """``host:port``, an IPv6 address in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _listen_hosts(host: str) -> list[str]:
    """Every address ``host`` stands for, each of which the server must listen on.

    An IP address stands for itself; ``localhost`` for 127.0.0.1 and, where this machine
    has IPv6, ::1 (gRPC's own binding of the name); another name for what it resolves to.

    Raises:
        AddressError: a name that does not resolve (EADDRNOTAVAIL).
    """
    if _ip(host) is not None:
        return [host]
    found = ["127.0.0.1", *(["::1"] if _has_ipv6_loopback() else [])] if host.lower() == "localhost" else []
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        if found:
            return found
        raise AddressError(
            errno.EADDRNOTAVAIL,
            f"cannot listen on {host}: the name does not resolve ({getattr(exc, 'strerror', None) or exc}); "
            "give --bind an address of this machine",
        ) from None
    return list(dict.fromkeys([*found, *(str(info[4][0]) for info in infos)]))


def _has_ipv6_loopback() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
        return True
    except OSError:
        return False


def _free_port(bind: str, hosts: list[str], port: int) -> int:
    """The port to ask gRPC for on every one of ``hosts``, each checked to bind now.

    Each address is bound as gRPC binds it (SO_REUSEADDR), all at once, so a port picked
    for 0 on the first address is free on the others too; the sockets close before
    gRPC binds, which then listens on all of them or, where one is taken meanwhile, on
    none (`KinoServer.start` checks again).

    Raises:
        AddressError: an address cannot be bound, with why.
    """
    if port == 0 and len(hosts) == 1:
        return 0  # gRPC picks it
    probes: list[socket.socket] = []
    try:
        for host in hosts:
            probe = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
            probes.append(probe)
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((host, port))
                probe.listen(1)
            except OSError as exc:
                raise _address_error(bind, hosts, host, port, exc.errno) from None
            port = port or int(probe.getsockname()[1])
    finally:
        for probe in probes:
            probe.close()
    return port


def _address_error(bind: str, hosts: list[str], host: str, port: int, code: int | None) -> AddressError:
    """The error of ``host:port`` failing to bind with ``code`` (an errno, None if unknown)."""
    where = _join(host, port)
    if host != bind:
        where += f" (one of the addresses {bind} stands for: {', '.join(hosts)})"
    if code == errno.EADDRINUSE:
        return AddressError(code, f"cannot listen on {where}: the port is in use (another server or program "
                                  "listens there); choose another --port")  # fmt: skip
    if code == errno.EADDRNOTAVAIL:
        return AddressError(code, f"cannot listen on {where}: {host} is not an address of this machine; give "
                                  "--bind one of its addresses (127.0.0.1, 0.0.0.0 for every IPv4 interface, "
                                  ":: for every interface)")  # fmt: skip
    if code == errno.EACCES:
        return AddressError(code, f"cannot listen on {where}: ports below 1024 need privileges; choose a "
                                  "--port of 1024 or more")  # fmt: skip
    return AddressError(
        errno.EADDRINUSE,
        f"cannot listen on {where}: the port is in use or the address is not one of this machine's; "
        "choose another --port or --bind",
    )


def _bind_errno(host: str, port: int) -> int | None:
    """The errno of binding ``host:port`` as gRPC does (SO_REUSEADDR), None if it binds now."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
            probe.listen(1)
    except OSError as exc:
        return exc.errno
    return None


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


def _abort(context: grpc.ServicerContext, exc: Exception, method: str) -> None:
    code, message, trailer = status_for(exc)
    if code is grpc.StatusCode.INTERNAL:
        log.exception("internal error while serving %s", method)
    else:  # the client gets the error; the server's log has it too, at INFO (kino-serve --debug)
        log.info("%s from %s failed: %s: %s", method, context.peer(), code.name, message)
    if trailer:
        context.set_trailing_metadata(trailer)
    context.abort(code, message)


def _unary(fn: Callable[[Any], Any], method: str) -> Callable[[Any, grpc.ServicerContext], Any]:
    def handle(request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return fn(request)
        except Exception as exc:
            _abort(context, exc, method)

    return handle


def _handler_threads(prefix: str, deadline: float) -> list[str]:
    """The names of a server's handler threads still alive at ``deadline`` (joined until then)."""
    threads = [t for t in threading.enumerate() if t.name.startswith(prefix + "_")]
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    return [t.name for t in threads if t.is_alive()]


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
    fn: Callable[[Any], Iterable[Any]], slots: _StreamSlots, method: str
) -> Callable[[Any, grpc.ServicerContext], Iterator[Any]]:
    def handle(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        try:
            slots.take(context)
            for response in fn(request):
                yield response
                if not context.is_active():  # the client cancelled or went away
                    return
        except Exception as exc:
            _abort(context, exc, method)

    return handle


def _serialize(response: Any) -> bytes:
    """Window batches come as wire bytes already (`kinodb.serve._wire`); messages are serialised."""
    return response if isinstance(response, bytes) else response.SerializeToString()  # type: ignore[no-any-return]


def _handlers(backend: Backend, slots: _StreamSlots, *, legacy: bool) -> grpc.GenericRpcHandler:
    service = LEGACY_SERVICE if legacy else SERVICE

    def rpc(name: str, fn: Callable[[Any], Any], req: Any) -> grpc.RpcMethodHandler:
        return grpc.unary_unary_rpc_method_handler(
            _unary(fn, f"{service}/{name}"), request_deserializer=req.FromString,
            response_serializer=_serialize,
        )  # fmt: skip

    methods = {
        "GetEpisode": rpc("GetEpisode", lambda r: backend.episode(r, legacy=legacy), pb.EpisodeRequest),
        "GetMeta": rpc("GetMeta", lambda r: backend.meta(r.position), pb.MetaRequest),
        "GetBatch": rpc("GetBatch", lambda r: backend.batch(r, legacy=legacy), pb.BatchRequest),
        "Query": rpc("Query", lambda r: backend.query(r, legacy=legacy), pb.QueryRequest),
        "ServerInfo": rpc("ServerInfo", lambda r: backend.info(), pb.InfoRequest),
    }
    if not legacy:
        methods["StreamBatches"] = grpc.unary_stream_rpc_method_handler(
            _streaming(backend.stream, slots, f"{service}/StreamBatches"),
            request_deserializer=pb.StreamRequest.FromString,
            response_serializer=_serialize,
        )
    return grpc.method_handlers_generic_handler(service, methods)


class _TokenInterceptor(grpc.ServerInterceptor):  # type: ignore[misc]
    """Refuse every call whose ``authorization`` metadata is not ``Bearer <token>``."""

    def __init__(self, token: str) -> None:
        self._expected = f"Bearer {token}".encode()

    def intercept_service(self, continuation: Callable[[Any], Any], details: grpc.HandlerCallDetails) -> Any:
        got = next((v for k, v in details.invocation_metadata or () if k == "authorization"), None)
        if got is not None and hmac.compare_digest(str(got).encode(), self._expected):
            return continuation(details)
        why = "no bearer token sent" if got is None else "wrong bearer token"
        method = str(details.method).lstrip("/")
        return _deny(f"{why}; pass the server's token (KinoClient(token=...) or KINODB_TOKEN)", method)


def _deny(message: str, method: str) -> grpc.RpcMethodHandler:
    def refuse(request: Any, context: grpc.ServicerContext) -> Any:
        log.info("%s from %s refused: UNAUTHENTICATED: %s", method, context.peer(), message)
        context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    return grpc.unary_unary_rpc_method_handler(refuse)
