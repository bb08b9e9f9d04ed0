"""`KinoClient`: the local read API over a kino-serve server.

Episodes come back shaped like `Database.read_episode` (``meta`` plus NumPy arrays),
window batches like `FrameWindows.lowdim` (plus ``task`` and images), and server errors
as the exceptions the local API raises (`EpisodeNotFoundError`, `QuerySyntaxError`, ...).
Arrays are read-only views over the received bytes.
"""

from __future__ import annotations

import os
import ssl
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import grpc
import numpy as np
from google.protobuf.message import DecodeError  # type: ignore[import-untyped]
from numpy.typing import NDArray

from kinodb.errors import FormatError, KinodbError
from kinodb.serve._errors import (
    REQUEST_LIMIT,
    RemoteError,
    ServerTimeoutError,
    timeout_message,
    to_exception,
)
from kinodb.serve._messages import meta_from_pb
from kinodb.serve._proto import kinodb_pb2 as pb
from kinodb.serve._proto import kinodb_pb2_grpc as pb_grpc
from kinodb.serve._sizes import mib
from kinodb.serve._wire import (
    DecodedEpisode,
    DecodedWindows,
    WireError,
    decode_episode,
    decode_episodes,
    decode_windows,
)

__all__ = ["KinoClient"]

TOKEN_ENV = "KINODB_TOKEN"
_SERVICE = "/kinodb.v1.KinoService/"
KEEPALIVE_OPTIONS: tuple[tuple[str, int], ...] = (
    # Ping the server while a call is open, so that a server that vanished ends even a call
    # without a timeout (UNAVAILABLE). Every 310 s and only with calls open: a server before
    # kinodb's keepalive settings answers pings more frequent than 5 min while it sends
    # nothing (a paused reader), or pings without calls, with GOAWAY "too_many_pings",
    # ending the stream. A stalled server within the timeout is `_Watch`'s to find.
    ("grpc.keepalive_time_ms", 310_000),
    ("grpc.keepalive_timeout_ms", 20_000),
    ("grpc.keepalive_permit_without_calls", 0),
    ("grpc.http2.max_pings_without_data", 0),
)
# After losing its server, a channel retries the connection with a backoff that doubles up
# to 2 minutes (gRPC's default), failing every call meanwhile: a server restarted after
# a minute's outage would be found only a minute or two later. Capped, a client finds it
# within about 2 s.
RECONNECT_OPTIONS: tuple[tuple[str, int], ...] = (("grpc.max_reconnect_backoff_ms", 2_000),)
BATCHES_PER_MESSAGE = 8  # stream_windows' default; the server caps a message at about 1 MiB
_ENCODINGS: dict[str, pb.ImageEncoding] = {
    "decoded": pb.IMAGE_ENCODING_DECODED,
    "stored": pb.IMAGE_ENCODING_STORED,
}


class KinoClient:
    """A connection to a kino-serve server.

    Args:
        addr: ``host:port`` (an IPv6 address in brackets: ``[::1]:50051``), or a gRPC
            target name (``dns:///host:port``, ``unix:/path``).
        token: Bearer token (None: the ``KINODB_TOKEN`` environment variable, if set);
            surrounding whitespace, such as a token file's newline, is stripped.
        tls_ca: PEM file (or bytes) of the CA that signed the server's certificate (for a
            self-signed certificate, the certificate itself), to connect over TLS; None for
            plaintext.
        timeout: Seconds each call may take, and a stream's wait for each message (the
            time the caller spends between messages does not count); None: no limit.
            A call that runs out of it raises `ServerTimeoutError` (a `TimeoutError`).
        tls_server_name: Name to check the certificate against, when it differs from
            the host in ``addr``.

    Raises:
        ValueError: a malformed ``addr`` (no port, a port out of range, a URL scheme).
        FormatError: ``tls_ca`` holds no PEM certificate.
        OSError: ``tls_ca`` cannot be read.

    Example:
        >>> with KinoClient("127.0.0.1:50051") as client:
        ...     batch = client.get_batch(32, mode="random", seed=7)
        ...     batch[0]["actions"].shape
    """

    def __init__(
        self,
        addr: str = "127.0.0.1:50051",
        *,
        token: str | None = None,
        tls_ca: str | os.PathLike[str] | bytes | None = None,
        timeout: float | None = 30.0,
        tls_server_name: str | None = None,
    ) -> None:
        self.addr, self.timeout = _address(addr), _timeout(timeout)
        self._closed = False
        self._tls = tls_ca is not None
        self._metadata: tuple[tuple[str, str], ...] = _auth(token)
        options: list[tuple[str, Any]] = [
            ("grpc.max_receive_message_length", -1),
            *KEEPALIVE_OPTIONS,
            *RECONNECT_OPTIONS,
        ]
        if tls_ca is None:
            self._channel = grpc.insecure_channel(addr, options=options)
        else:
            ca = _read_ca(tls_ca)
            if tls_server_name:
                options.append(("grpc.ssl_target_name_override", tls_server_name))
            self._channel = grpc.secure_channel(
                addr, grpc.ssl_channel_credentials(root_certificates=ca), options
            )
        self._stub = pb_grpc.KinoServiceStub(self._channel)  # type: ignore[no-untyped-call]
        self._features: frozenset[str] | None = None  # the server's, asked for once when needed
        # Episodes and window batches arrive as the reply's bytes, read by kinodb.serve._wire
        # without copies.
        self._raw_episode = self._channel.unary_unary(
            _SERVICE + "GetEpisode", request_serializer=pb.EpisodeRequest.SerializeToString
        )
        self._raw_batch = self._channel.unary_unary(
            _SERVICE + "GetBatch", request_serializer=pb.BatchRequest.SerializeToString
        )
        self._raw_stream = self._channel.unary_stream(
            _SERVICE + "StreamBatches", request_serializer=pb.StreamRequest.SerializeToString
        )

    # -- plumbing -----------------------------------------------------------------------------

    def _open(self) -> None:
        if self._closed:
            raise ValueError(f"KinoClient for server {self.addr}: the client is closed; open a new one")

    def _error(self, err: grpc.RpcError, *, received: bool = False) -> Exception:
        """The local exception for ``err`` (``received``: the call had already received messages)."""
        return to_exception(err, f"server {self.addr}", self.timeout, tls=self._tls, received=received)

    def _call(self, method: str, request: Any) -> Any:
        self._open()
        try:
            return getattr(self._stub, method)(request, timeout=self.timeout, metadata=self._metadata)
        except grpc.RpcError as err:
            raise self._error(err) from None

    def _messages(self, call: Any) -> Iterator[Any]:
        """A stream's messages, each awaited for at most ``timeout`` seconds.

        The time the caller spends between messages does not count: only the wait for
        the server's next one. A stalled server cancels the call and raises
        `ServerTimeoutError`.
        """
        watch = _Watch(call, self.timeout)
        received = False  # a stream that failed after a message had its connection up: it was lost
        try:
            while True:
                watch.waiting()
                try:
                    reply = next(call)
                except StopIteration:
                    return
                except grpc.RpcError as err:
                    if watch.fired:
                        raise ServerTimeoutError(
                            timeout_message(f"server {self.addr}", self.timeout, "sent no stream message"),
                            "DEADLINE_EXCEEDED",
                        ) from None
                    raise self._error(err, received=received) from None
                watch.received()
                received = True
                yield reply
        finally:
            watch.done()
            call.cancel()  # a no-op when the stream ended; stops the server's loop when abandoned

    def _raw_call(self, method: Any, request: Any) -> bytes:
        """The reply's bytes of a unary call made with ``method`` (a callable without deserialiser)."""
        self._open()
        try:
            return method(request, timeout=self.timeout, metadata=self._metadata)  # type: ignore[no-any-return]
        except grpc.RpcError as err:
            raise self._error(err) from None

    def _decode(self, reply: bytes, batch_size: int) -> list[DecodedWindows]:
        """The window batches of a reply: one, or the ``batch_size`` batches a stream message stacks."""
        try:
            return _split(decode_windows(reply), batch_size)
        except WireError as err:
            raise RemoteError(f"server {self.addr}: a malformed window batch: {err}", "DATA_LOSS") from None

    def _window_call(self, request: pb.BatchRequest) -> DecodedWindows:
        return self._decode(self._raw_call(self._raw_batch, request), request.batch_size)[0]

    def _window_stream(self, request: pb.StreamRequest) -> Iterator[DecodedWindows]:
        self._open()
        for reply in self._messages(self._raw_stream(request, metadata=self._metadata)):
            yield from self._decode(reply, request.batch.batch_size)

    def _episodes(self, reply: bytes, include_images: bool) -> list[dict[str, Any]]:
        """The episodes of a `BatchResponse`'s bytes, as `get_episode` returns them."""
        try:
            return [_episode(ep, include_images) for ep in decode_episodes(reply)[0]]
        except (WireError, DecodeError) as err:
            raise RemoteError(
                f"server {self.addr}: a malformed batch of episodes: {err}", "DATA_LOSS"
            ) from None

    # -- RPCs -----------------------------------------------------------------------------

    def server_info(self) -> dict[str, Any]:
        """What the server serves: ``num_episodes``, ``num_frames``, ``num_sources``,
        ``version``, ``sources``, ``shares``, ``max_batch``, ``max_message_bytes``, ``cameras``,
        ``features`` (requests beyond the first protocol it understands)."""
        r = self._call("ServerInfo", pb.InfoRequest())
        return {
            "num_episodes": int(r.num_episodes), "num_frames": int(r.num_frames), "num_sources": int(r.num_sources),
            "version": r.version, "sources": list(r.sources), "shares": list(r.shares),
            "source_episodes": [int(n) for n in r.source_episodes], "max_batch": int(r.max_batch),
            "max_message_bytes": int(r.max_message_bytes), "cameras": list(r.cameras),
            "features": list(r.features),
        }  # fmt: skip

    def _check_features(self, normalize: str | None, cameras: Any) -> None:
        """Refuse what an older server would silently ignore (it advertises no such feature)."""
        wanted = [(f, what) for f, what, on in (
            ("window_normalize", f"normalize={normalize!r}", normalize is not None),
            ("camera_mapping", "a camera mapping", isinstance(cameras, Mapping)),
        ) if on]  # fmt: skip
        if not wanted:
            return
        if self._features is None:
            self._features = frozenset(self.server_info()["features"])
        for feature, what in wanted:
            if feature not in self._features:
                raise KinodbError(
                    f"server {self.addr}: it predates {what} and would ignore it; update kinodb where "
                    "kino-serve runs"
                )

    def get_meta(self, i: int) -> dict[str, Any]:
        """Metadata of episode ``i`` (global index), as `Database.read_meta` gives it.

        Raises:
            EpisodeNotFoundError: ``i`` is out of range.
        """
        return meta_from_pb(self._call("GetMeta", pb.MetaRequest(position=_uint(i, "episode index i"))).meta)

    def get_episode(
        self, i: int, *, include_images: bool = False, image_encoding: str = "decoded",
        cameras: Sequence[str] | None = None,
    ) -> dict[str, Any]:  # fmt: skip
        """Episode ``i`` shaped like `Database.read_episode` (without ``images`` unless asked).

        With ``image_encoding="stored"``, ``images`` maps each camera to its frames' stored
        bytes and ``image_codecs`` names their codec; decoded frames are uint8 (T, H, W, C).

        Raises:
            EpisodeNotFoundError: ``i`` is out of range.
        """
        _frames_asked(include_images, cameras, None)
        req = pb.EpisodeRequest(position=_uint(i, "episode index i"), include_images=include_images,
                                image_encoding=_encoding(image_encoding), cameras=_names(cameras))  # fmt: skip
        reply = self._raw_call(self._raw_episode, req)
        try:
            return _episode(decode_episode(reply), include_images)
        except (WireError, DecodeError) as err:
            raise RemoteError(f"server {self.addr}: a malformed episode: {err}", "DATA_LOSS") from None

    def get_batch(
        self,
        batch_size: int,
        *,
        mode: str = "random",
        offset: int = 0,
        seed: int = 0,
        include_images: bool = False,
        image_encoding: str = "decoded",
        cameras: Sequence[str] | None = None,
    ) -> list[dict[str, Any]]:
        """A batch of episodes, each shaped like `get_episode`'s.

        ``mode`` is ``"sequential"`` (from ``offset``, wrapping at the end), ``"random"``
        (uniform, with replacement) or ``"weighted"`` (source by the mixture's weights).
        A non-zero ``seed`` makes the batch a function of the seed.

        Raises:
            BatchTooLargeError: over the server's ``max_batch`` or message limit.
            InvalidRequestError: a bad mode or argument.
        """
        req = _batch(batch_size, mode, offset, seed, include_images, image_encoding, cameras, None, None)
        return self._episodes(self._raw_call(self._raw_batch, req), include_images)

    def get_windows(
        self,
        batch_size: int,
        *,
        obs_horizon: int = 1,
        action_horizon: int = 1,
        pad: str = "edge",
        kql_filter: str | None = None,
        normalize: str | None = None,
        mode: str = "random",
        offset: int = 0,
        seed: int = 0,
        include_images: bool = False,
        image_encoding: str = "decoded",
        cameras: Sequence[str] | Mapping[str, str | Sequence[str]] | None = None,
        image_size: tuple[int, int] | None = None,
    ) -> dict[str, Any]:
        """A batch of frame windows, as `KinoFrameDataset` forms them, stacked.

        Returns ``state`` (B, obs_horizon, S), ``action`` (B, action_horizon, A), their
        ``*_is_pad`` masks, ``episode_index``, ``frame_index``, ``source``, ``index`` (the
        window's sample index), ``task`` (list of str) and, with images, ``images``
        {camera: uint8 (B, obs_horizon, C, H, W)} (the first camera unless ``cameras``
        names them; with ``image_encoding="stored"``, the stored bytes, sample-major).
        For a mixture of robots that name their cameras differently, ``cameras`` maps an
        output name to each served source's camera, in order: ``{"front": ["image_0",
        "cam_high"]}`` (decoded frames; give ``image_size`` when their sizes differ).
        Windows of sources with different state/action widths come zero-padded to the
        widest, with both ``state_mask`` and ``action_mask`` whichever of them differs.
        ``normalize`` (``"mean_std"`` or ``"min_max"``) has the server normalise states and
        actions with each source's statistics stored by ``kino stats``, as
        `KinoFrameDataset` does locally.
        """
        spec = _spec(obs_horizon, action_horizon, pad, kql_filter, normalize)
        self._check_features(normalize, cameras)
        req = _batch(
            batch_size, mode, offset, seed, include_images, image_encoding, cameras, spec, image_size
        )
        return _windows(self._window_call(req))

    def stream_batches(
        self,
        batch_size: int,
        *,
        num_batches: int = 0,
        mode: str = "random",
        offset: int = 0,
        stride: int = 0,
        seed: int = 0,
        include_images: bool = False,
        image_encoding: str = "decoded",
        cameras: Sequence[str] | None = None,
    ) -> Iterator[list[dict[str, Any]]]:
        """Batches of episodes from one server stream (``num_batches=0``: until closed).

        Sequential batches advance by ``stride`` (default ``batch_size``); a seeded random
        stream continues one generator, so the whole stream is a function of the seed.
        """
        req = pb.StreamRequest(
            batch=_batch(batch_size, mode, offset, seed, include_images, image_encoding, cameras, None, None),
            num_batches=_uint(num_batches, "num_batches"), stride=_uint(stride, "stride"),
        )  # fmt: skip
        self._open()
        for reply in self._messages(self._raw_stream(req, metadata=self._metadata)):
            yield self._episodes(reply, include_images)

    def stream_windows(
        self,
        batch_size: int,
        *,
        num_batches: int = 0,
        obs_horizon: int = 1,
        action_horizon: int = 1,
        pad: str = "edge",
        kql_filter: str | None = None,
        normalize: str | None = None,
        mode: str = "random",
        offset: int = 0,
        stride: int = 0,
        seed: int = 0,
        include_images: bool = False,
        image_encoding: str = "decoded",
        cameras: Sequence[str] | Mapping[str, str | Sequence[str]] | None = None,
        image_size: tuple[int, int] | None = None,
        batches_per_message: int = BATCHES_PER_MESSAGE,
    ) -> Iterator[dict[str, Any]]:
        """Window batches (as `get_windows` returns them) from one server stream.

        Without images, the server stacks up to ``batches_per_message`` batches in one
        message, which saves per-message work on both sides; the batches are the same
        either way, and come one at a time (views of the message they arrived in). A
        server that predates the option sends one per message.
        """
        spec = _spec(obs_horizon, action_horizon, pad, kql_filter, normalize)
        self._check_features(normalize, cameras)
        per_message = batches_per_message
        if isinstance(per_message, bool) or not isinstance(per_message, int) or not 1 <= per_message < 2**32:
            raise ValueError(f"batches_per_message must be a positive int, got {per_message!r}")
        req = pb.StreamRequest(
            batch=_batch(batch_size, mode, offset, seed, include_images, image_encoding, cameras, spec, image_size),
            num_batches=_uint(num_batches, "num_batches"), stride=_uint(stride, "stride"),
            batches_per_message=per_message,
        )  # fmt: skip
        for decoded in self._window_stream(req):
            yield _windows(decoded)

    def query(self, kql: str, *, limit: int | None = None) -> NDArray[np.int64]:
        """Global indices of the episodes matching ``kql``, ascending, as `Database.query` gives.

        Args:
            kql: the query.
            limit: keep the first ``limit`` matches; None keeps all (0 keeps none, the
                query still being checked by the server).

        Raises:
            QuerySyntaxError: the query does not parse (the server's parser message).
        """
        # On the wire 0 means "no limit"; a limit of 0 asks for one match and keeps none.
        keep = None if limit is None else _uint(limit, "limit", bits=32)
        _request_text(kql, "kql")
        resp = self._call("Query", pb.QueryRequest(kql=kql, limit=0 if keep is None else max(keep, 1)))
        positions = np.array(resp.positions, dtype=np.int64)
        return positions if keep is None else positions[:keep]

    def _matching_frames(self, kql: str) -> int:
        """Frames of the served episodes matching ``kql``: the windows that filter keeps.

        From the matches' metadata; a reply too large for the server's message limit
        falls back to the matches' share of the episodes times the frames.
        """
        try:
            resp = self._call("Query", pb.QueryRequest(kql=kql, include_metas=True))
            return sum(int(m.num_frames) for m in resp.metas)
        except RemoteError as err:
            if err.code != "RESOURCE_EXHAUSTED":
                raise
        info = self.server_info()
        hits = len(self.query(kql))
        return round(hits / max(int(info["num_episodes"]), 1) * int(info["num_frames"]))

    # -- lifetime -------------------------------------------------------------------------

    def close(self) -> None:
        """Close the channel; later calls raise ValueError."""
        self._closed = True
        self._channel.close()

    def __enter__(self) -> KinoClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<kinodb.KinoClient {self.addr!r}>"


def _uint(value: Any, name: str, *, bits: int = 64, minimum: int = 0) -> int:
    """``value`` as the unsigned integer a request field of ``bits`` bits carries, checked."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not minimum <= value < 2**bits:
        low = "a non-negative" if minimum == 0 else "a positive"
        raise ValueError(f"{name} must be {low} int below 2**{bits}, got {value!r}")
    return int(value)


_TARGET_SCHEMES = ("dns:", "unix:", "unix-abstract:", "ipv4:", "ipv6:", "vsock:")


def _address(addr: Any) -> str:
    """``addr`` checked as ``host:port`` (gRPC target names pass as they are).

    Raises:
        ValueError: no port, a port out of range, a URL scheme, an IPv6 address without brackets.
    """
    if not isinstance(addr, str) or not addr.strip():
        raise ValueError(f"the server address must be 'host:port', got {addr!r}")
    if addr.startswith(_TARGET_SCHEMES):
        return addr
    if "://" in addr:
        rest = addr.split("://", 1)[1].rstrip("/")
        raise ValueError(f"the server address {addr!r} has a URL scheme; give host:port: {rest!r}")
    if addr.startswith("["):
        close = addr.find("]")
        host, port = (addr[1:close], addr[close + 1 :]) if close > 0 else (addr, "")
        if port and not port.startswith(":"):
            raise ValueError(f"the server address {addr!r} is not [IPv6]:port")
        port = port[1:]
    elif addr.count(":") > 1:
        raise ValueError(
            f"the server address {addr!r} looks like an IPv6 address without brackets; write it as "
            "[address]:port, such as [::1]:50051"
        )
    else:
        host, _, port = addr.partition(":")
    if not port:
        raise ValueError(
            f"the server address {addr!r} has no port; give host:port, such as {host or 'HOST'}:50051 "
            "(kino-serve's default port)"
        )
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"the server address {addr!r}: the port {port!r} is not a number in 1..65535")
    if not host:
        raise ValueError(f"the server address {addr!r} has no host; give host:port, such as 127.0.0.1:{port}")
    return addr


def _read_ca(tls_ca: str | os.PathLike[str] | bytes) -> bytes:
    """The PEM bytes of ``tls_ca``, checked to hold a certificate that loads.

    Raises:
        OSError: the file cannot be read.
        FormatError: it holds no PEM certificate, or one that does not load.
    """
    if isinstance(tls_ca, bytes):
        data, name = tls_ca, "tls_ca (bytes)"
    else:
        try:
            with open(tls_ca, "rb") as fh:
                data = fh.read()
        except OSError as exc:
            raise OSError(
                exc.errno, f"{exc.strerror}; tls_ca names the PEM file of the CA that signed the server's "
                "certificate (for a self-signed certificate, the certificate itself)", exc.filename,
            ) from None  # fmt: skip
        name = f"tls_ca {os.fspath(tls_ca)}"
    advice = (
        "give the PEM file of the CA that signed the server's certificate (for a self-signed "
        "certificate, the certificate itself)"
    )
    if b"-----BEGIN CERTIFICATE-----" not in data:
        held = ""
        if b"PRIVATE KEY-----" in data:
            held = " (it holds a private key, which stays with the server)"
        raise FormatError(f"{name} holds no PEM certificate{held}; {advice}")
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cadata=data.decode("latin-1"))
    except ssl.SSLError as exc:
        raise FormatError(f"{name}: its certificate does not load ({exc.reason or exc}); {advice}") from None
    return data


def _request_text(text: Any, name: str, *, optional: bool = False) -> None:
    """Refuse a text that is no str (None too, unless ``optional``), or that would make a
    request over a server's limit, before sending it.

    Raises:
        ValueError: ``text`` is no str, or is over `REQUEST_LIMIT` less room for the rest
            of the request.
    """
    if text is None and optional:
        return
    if not isinstance(text, str):
        kind = "a str or None" if optional else "a str"
        shown = repr(text) if len(repr(text)) <= 80 else f"{repr(text)[:77]}..."
        raise ValueError(f"{name} must be {kind} (KQL text), got {type(text).__name__} {shown}")
    if len(text) > REQUEST_LIMIT // 8:
        size = len(text.encode("utf-8"))
        if size > REQUEST_LIMIT - (64 << 10):
            raise ValueError(
                f"{name} is {mib(size)}, over the {mib(REQUEST_LIMIT)} a server takes for a request; "
                "shorten it (a filter listing many ids: match on fields instead, or split the ids "
                "into several queries)"
            )


def _timeout(timeout: Any) -> float | None:
    ok = isinstance(timeout, (int, float)) and not isinstance(timeout, bool) and 0 < timeout < float("inf")
    if timeout is not None and not ok:
        raise ValueError(f"timeout must be a positive number of seconds or None, got {timeout!r}")
    return timeout  # type: ignore[no-any-return]


def _auth(token: str | None) -> tuple[tuple[str, str], ...]:
    """The call metadata carrying ``token`` (None: ``$KINODB_TOKEN``), stripped as the server strips it."""
    given = token is not None
    text = (token if token is not None else os.environ.get(TOKEN_ENV, "")).strip()
    if not text:
        return ()
    if not all(" " <= ch <= "~" for ch in text):
        where = "the token" if given else f"${TOKEN_ENV}"
        raise ValueError(
            f"{where} holds characters a gRPC header cannot carry (control or non-ASCII characters); "
            "give the token's printable ASCII text"
        )
    return (("authorization", f"Bearer {text}"),)


class _Watch:
    """Cancels a stream whose next message is awaited longer than ``timeout`` seconds.

    One thread per stream, started on the first wait, checks a timestamp a few times a
    second: the stream's reads pay two attribute writes, not a timer each.
    """

    def __init__(self, call: Any, timeout: float | None) -> None:
        self._call, self._timeout = call, timeout
        self._since: float | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.fired = False

    def waiting(self) -> None:
        if self._timeout is None:
            return
        self._since = time.monotonic()
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="kinodb-stream-watch", daemon=True)
            self._thread.start()

    def received(self) -> None:
        self._since = None

    def done(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        timeout = float(self._timeout or 0)
        while not self._stop.wait(min(1.0, max(0.02, timeout / 20))):
            since = self._since
            if since is not None and time.monotonic() - since > timeout:
                self.fired = True
                self._call.cancel()
                return


def _encoding(name: str) -> pb.ImageEncoding:
    if name not in _ENCODINGS:
        raise ValueError(f"image_encoding must be 'decoded' or 'stored', got {name!r}")
    return _ENCODINGS[name]


def _spec(obs: int, act: int, pad: str, kql: str | None, normalize: str | None = None) -> pb.WindowSpec:
    _request_text(kql, "kql_filter", optional=True)
    if pad not in ("edge", "zero"):
        raise ValueError(f"pad must be 'edge' or 'zero', got {pad!r}")
    if normalize not in (None, "mean_std", "min_max"):
        raise ValueError(f"normalize must be None, 'mean_std' or 'min_max', got {normalize!r}")
    for name, value in (("obs_horizon", obs), ("action_horizon", act)):
        _uint(value, name, bits=32, minimum=1)
    return pb.WindowSpec(
        obs_horizon=int(obs),
        action_horizon=int(act),
        pad=pad,
        kql_filter=kql or "",
        normalize=normalize or "",
    )


def _batch(
    size: int, mode: str, offset: int, seed: int, images: bool, encoding: str, cameras: Any,
    windows: pb.WindowSpec | None, image_size: tuple[int, int] | None,
) -> pb.BatchRequest:  # fmt: skip
    size = _uint(size, "batch_size", bits=32, minimum=1)
    _frames_asked(images, cameras, image_size)
    if image_size is not None and encoding == "stored":
        raise ValueError(
            "image_size resizes decoded frames, but image_encoding='stored' sends each frame's stored bytes "
            "as they are: pass image_encoding='decoded', or leave image_size out and resize after decoding"
        )
    h, w = _image_size(image_size) if image_size is not None else (0, 0)
    return pb.BatchRequest(
        batch_size=size, mode=mode, offset=_uint(offset, "offset"), seed=_uint(seed, "seed"), include_images=images,
        windows=windows, image_encoding=_encoding(encoding), image_height=h, image_width=w,
        cameras=camera_request(cameras) if windows is not None else _names(cameras),
    )  # fmt: skip


def _frames_asked(images: bool, cameras: Any, image_size: Any) -> None:
    """Refuse ``cameras`` or ``image_size`` without ``include_images``: they choose frames
    that would not be sent."""
    asked = [name for name, value in (("cameras", cameras), ("image_size", image_size)) if value is not None]
    if asked and not images:
        raise ValueError(f"{' and '.join(asked)} choose{'s' * (len(asked) == 1)} frames, but include_images is "
                         "False: pass include_images=True, or leave them out")  # fmt: skip


def _image_size(size: Any) -> tuple[int, int]:
    """``image_size`` as ``(H, W)``, checked."""
    try:
        h, w = size
        return _uint(h, "image height", bits=32, minimum=1), _uint(w, "image width", bits=32, minimum=1)
    except (TypeError, ValueError):
        raise ValueError(f"image_size must be (H, W), two positive ints, got {size!r}") from None


def _names(cameras: Any) -> list[str]:
    """Camera names of an episode request (a mapping of each source's cameras is for windows)."""
    if isinstance(cameras, Mapping):
        raise ValueError("a camera mapping applies to windows; ask episodes for camera names")
    return camera_request(cameras)


def camera_request(cameras: Sequence[str] | Mapping[str, str | Sequence[str]] | None) -> list[str]:
    """The request's camera entries: names, or for a mapping of an output name to each served
    source's camera (windows of robots that name their cameras differently) ``"out=a,b"``."""
    if cameras is None:
        return []
    if isinstance(cameras, str):
        return [cameras]
    if isinstance(cameras, Mapping):
        out = []
        for name, per in cameras.items():
            names = [per] if isinstance(per, str) else list(per)
            if "=" in name or any("=" in n or "," in n for n in names):
                raise ValueError(f"camera names in a mapping may not hold '=' or ',': {name!r}: {names!r}")
            out.append(f"{name}={','.join(names)}")
        return out
    return list(cameras)


def _episode(decoded: DecodedEpisode, include_images: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"meta": meta_from_pb(pb.EpisodeMeta.FromString(decoded.meta))}
    out.update(decoded.arrays)
    if include_images:
        out["images"] = decoded.images
        codecs = {cam: decoded.codecs[cam] for cam in decoded.images if cam in decoded.codecs}
        if codecs:
            out["image_codecs"] = codecs
    for key in ("source", "position", "index"):
        if key in out:  # an extra array of that name keeps it, renamed as read_meta does
            out[f"extra.{key}"] = out.pop(key)
    out["source"], out["position"], out["index"] = decoded.source, decoded.position, decoded.index
    return out


def _windows(decoded: DecodedWindows) -> dict[str, Any]:
    out: dict[str, Any] = decoded.arrays
    names = np.empty(len(decoded.tasks), dtype=object)
    names[:] = decoded.tasks
    out["task"] = names[out.pop("task_index")].tolist() if "task_index" in out else []
    if decoded.images:
        out["images"] = decoded.images
    return out


def _split(decoded: DecodedWindows, batch_size: int) -> list[DecodedWindows]:
    """The batches a reply stacks (``decoded.batches``; 0 is one), as views of it.

    Raises:
        WireError: the arrays do not split into that many batches of ``batch_size``.
    """
    k = max(decoded.batches, 1)
    if k == 1:
        return [decoded]
    for name, arr in decoded.arrays.items():
        if arr.shape[:1] != (k * batch_size,):
            raise WireError(f"{name!r} has shape {arr.shape}, not {k} batches of {batch_size}")
    for name, frames in decoded.images.items():
        if len(frames) % k:
            raise WireError(f"camera {name!r} has {len(frames)} entries, not {k} equal batches")
    out = []
    for i in range(k):
        arrays = {name: arr[i * batch_size : (i + 1) * batch_size] for name, arr in decoded.arrays.items()}
        images: dict[str, Any] = {}
        for name, frames in decoded.images.items():
            per = len(frames) // k
            images[name] = frames[i * per : (i + 1) * per]
        out.append(DecodedWindows(arrays, decoded.tasks, images, decoded.next_offset, 1))
    return out
