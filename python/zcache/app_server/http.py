"""Outbound HTTP/1.1 for zcache: h11 over Trio streams, with a bounded keep-alive pool.

zcache calls out over HTTP for three things: the app's push URL, the app's query URL and a
JWKS URL. This module is the one client they share (one `HttpClient` per process).

Mechanism
---------
* A connection is a Trio stream (`trio.SocketStream`, wrapped in `trio.SSLStream` for https
  with `ssl.create_default_context()`) plus an `h11.Connection` that frames requests and
  parses responses (content-length, chunked or close-delimited bodies).
* Connections are pooled per origin (scheme, host, port). At most `max_connections_per_origin`
  exist per origin at a time; a request that finds none free waits for one (within its
  timeout). A finished response whose connection h11 says can be reused goes back to the pool;
  every other connection (error, timeout, cancellation, `Connection: close`) is closed.
* An idle connection the server has closed in the meantime is detected before it is reused
  (its socket reads as ready: EOF or stray bytes), as urllib3 does. If a reused connection
  still breaks before any response byte arrives (the server closed it while the request was
  being written), the request is sent once more on a fresh connection; Node's fetch, which
  zero-cache uses, retries such requests too.
* `timeout_s` bounds the whole request (waiting for a pooled connection, connecting, TLS,
  sending, and receiving the entire body): `trio.fail_after`, then `HttpTimeout`.
* Response bodies larger than `max_response_bytes` fail with `HttpError` (the app server or a
  JWKS endpoint cannot make zcache buffer without bound).

Every error message names the method and URL (without any user:password part).
"""

from __future__ import annotations

import select
import ssl
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass, field

import h11
import trio

DEFAULT_MAX_RESPONSE_BYTES = 16 * 1024 * 1024
DEFAULT_MAX_CONNECTIONS_PER_ORIGIN = 16
_READ_CHUNK = 64 * 1024
_USER_AGENT = "zcache"


@dataclass(frozen=True)
class HttpResponse:
    """A complete response: status, headers (names lower-case, in order) and the whole body."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes

    @property
    def ok(self) -> bool:
        """2xx, as `fetch`'s `Response.ok`."""
        return 200 <= self.status < 300

    def header(self, name: str) -> str | None:
        """The first value of header `name` (case-insensitive), or None."""
        wanted = name.lower()
        for key, value in self.headers:
            if key == wanted:
                return value
        return None


class HttpError(Exception):
    """The request failed without a usable response: refused, reset, malformed, too large.

    The message names the method and URL; the request may or may not have reached the server.
    """


class HttpTimeout(HttpError):
    """The request did not complete within its `timeout_s`."""


@dataclass(frozen=True)
class _Origin:
    scheme: str  # "http" | "https"
    host: str
    port: int

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        default_port = 443 if self.scheme == "https" else 80
        return host if self.port == default_port else f"{host}:{self.port}"


@dataclass(frozen=True)
class _Target:
    origin: _Origin
    path: str  # path and query, what goes on the request line
    display: str  # the URL for messages, without credentials


def _parse_url(url: str) -> _Target:
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise HttpError(f"invalid URL {url!r}: {exc}") from None
    if parts.scheme not in ("http", "https"):
        raise HttpError(f"unsupported URL scheme in {url!r}: only http and https are supported")
    if not parts.hostname:
        raise HttpError(f"URL {url!r} has no host")
    if port is None:
        port = 443 if parts.scheme == "https" else 80
    origin = _Origin(parts.scheme, parts.hostname, port)
    path = parts.path or "/"
    if parts.query:
        path = f"{path}?{parts.query}"
    netloc = parts.netloc.rpartition("@")[2]
    display = urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, parts.query, ""))
    return _Target(origin, path, display)


@dataclass(eq=False)
class _Connection:
    stream: trio.abc.Stream
    socket: trio.socket.SocketType
    protocol: h11.Connection = field(default_factory=lambda: h11.Connection(h11.CLIENT))
    reused: bool = False

    def looks_dropped(self) -> bool:
        """Whether an idle connection has something to read (EOF or stray bytes): unusable."""
        try:
            readable, _, _ = select.select([self.socket.fileno()], [], [], 0)
        except (OSError, ValueError):
            return True
        return bool(readable)


class _Pool:
    """Idle connections and the connection bound of one origin."""

    def __init__(self, limit: int) -> None:
        self.slots = trio.Semaphore(limit)
        self.idle: list[_Connection] = []


class _Retry(Exception):
    """A reused connection broke before any response byte: send again on a fresh one."""


class HttpClient:
    """HTTP/1.1 client with a bounded keep-alive pool per origin; see the module docstring.

    One per process. `aclose()` closes the idle connections; requests afterwards fail.
    """

    def __init__(
        self,
        *,
        max_connections_per_origin: int = DEFAULT_MAX_CONNECTIONS_PER_ORIGIN,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        if max_connections_per_origin < 1:
            raise ValueError("max_connections_per_origin must be at least 1")
        self._limit = max_connections_per_origin
        self._max_response_bytes = max_response_bytes
        self._ssl_context = ssl_context
        self._pools: dict[_Origin, _Pool] = {}
        self._closed = False

    async def request(
        self,
        method: str,
        url: str,
        *,
        headers: Sequence[tuple[str, str]] = (),
        body: bytes = b"",
        timeout_s: float,
    ) -> HttpResponse:
        """Send one request and read the whole response.

        Adds `Host`, `Content-Length` (when there is a body or the method is POST/PUT/PATCH),
        and `User-Agent`/`Accept` unless given. Raises `HttpTimeout` after `timeout_s`,
        `HttpError` for every other failure; any status code is a response, not an error.
        """
        if self._closed:
            raise HttpError(f"{method} {url}: the HTTP client is closed")
        target = _parse_url(url)
        request = self._build_request(method, target, headers, body)
        try:
            with trio.fail_after(timeout_s):
                return await self._send_with_pool(target, request, body, method)
        except trio.TooSlowError:
            raise HttpTimeout(f"{method} {target.display} timed out after {timeout_s:g} s") from None

    async def aclose(self) -> None:
        """Close every idle connection; requests in flight close theirs when they end."""
        self._closed = True
        pools, self._pools = self._pools, {}
        for pool in pools.values():
            idle, pool.idle = pool.idle, []
            for connection in idle:
                await trio.aclose_forcefully(connection.stream)

    def statistics(self) -> dict[str, int]:
        """Idle connections per origin (`scheme://host:port`), for tests and diagnostics."""
        return {
            f"{o.scheme}://{o.host_header}": len(p.idle) for o, p in self._pools.items()
        }

    def _build_request(
        self, method: str, target: _Target, headers: Sequence[tuple[str, str]], body: bytes
    ) -> h11.Request:
        names = {name.lower() for name, _ in headers}
        all_headers: list[tuple[str, str]] = []
        if "host" not in names:
            all_headers.append(("Host", target.origin.host_header))
        if "user-agent" not in names:
            all_headers.append(("User-Agent", _USER_AGENT))
        if "accept" not in names:
            all_headers.append(("Accept", "*/*"))
        if body or method.upper() in ("POST", "PUT", "PATCH"):
            all_headers.append(("Content-Length", str(len(body))))
        all_headers.extend(headers)
        try:
            return h11.Request(method=method, target=target.path, headers=all_headers)
        except h11.LocalProtocolError as exc:
            raise HttpError(f"{method} {target.display}: invalid request: {exc}") from None

    async def _send_with_pool(
        self, target: _Target, request: h11.Request, body: bytes, method: str
    ) -> HttpResponse:
        pool = self._pools.get(target.origin)
        if pool is None:
            pool = self._pools[target.origin] = _Pool(self._limit)
        async with pool.slots:
            while True:
                connection = self._take_idle(pool)
                if connection is None:
                    connection = await self._connect(target, method)
                try:
                    response = await self._exchange(connection, target, request, body, method)
                except _Retry:
                    await trio.aclose_forcefully(connection.stream)
                    continue
                except BaseException:
                    await trio.aclose_forcefully(connection.stream)
                    raise
                await self._release(pool, connection)
                return response

    def _take_idle(self, pool: _Pool) -> _Connection | None:
        while pool.idle:
            connection = pool.idle.pop()
            if not connection.looks_dropped():
                connection.reused = True
                return connection
            # Closing a dropped socket needs no I/O; do it without a checkpoint.
            connection.socket.close()
        return None

    async def _release(self, pool: _Pool, connection: _Connection) -> None:
        conn = connection.protocol
        if (
            not self._closed
            and conn.our_state is h11.DONE
            and conn.their_state is h11.DONE
        ):
            conn.start_next_cycle()
            pool.idle.append(connection)
        else:
            await trio.aclose_forcefully(connection.stream)

    async def _connect(self, target: _Target, method: str) -> _Connection:
        origin = target.origin
        try:
            tcp = await trio.open_tcp_stream(origin.host, origin.port)
        except OSError as exc:
            raise HttpError(f"{method} {target.display}: cannot connect: {exc}") from None
        stream: trio.abc.Stream = tcp
        if origin.scheme == "https":
            context = self._ssl_context or ssl.create_default_context()
            tls = trio.SSLStream(tcp, context, server_hostname=origin.host, https_compatible=True)
            try:
                await tls.do_handshake()
            except (trio.BrokenResourceError, ssl.SSLError, OSError) as exc:
                await trio.aclose_forcefully(tcp)
                # trio wraps the ssl error (the useful part) as the cause of BrokenResourceError.
                detail = exc.__cause__ if isinstance(exc, trio.BrokenResourceError) and exc.__cause__ else exc
                raise HttpError(f"{method} {target.display}: TLS handshake failed: {detail}") from None
            except BaseException:
                await trio.aclose_forcefully(tcp)
                raise
            stream = tls
        return _Connection(stream=stream, socket=tcp.socket)

    async def _exchange(
        self,
        connection: _Connection,
        target: _Target,
        request: h11.Request,
        body: bytes,
        method: str,
    ) -> HttpResponse:
        conn = connection.protocol
        where = f"{method} {target.display}"
        received_any = False
        try:
            data = conn.send(request) or b""
            if body:
                data += conn.send(h11.Data(data=body)) or b""
            data += conn.send(h11.EndOfMessage()) or b""
            await connection.stream.send_all(data)

            status = 0
            headers: list[tuple[str, str]] = []
            chunks: list[bytes] = []
            size = 0
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    incoming = await connection.stream.receive_some(_READ_CHUNK)
                    if incoming:
                        received_any = True
                    conn.receive_data(incoming)
                    continue
                if isinstance(event, h11.InformationalResponse):
                    continue
                if isinstance(event, h11.Response):
                    status = event.status_code
                    headers = [
                        (name.decode("latin-1"), value.decode("latin-1"))
                        for name, value in event.headers
                    ]
                    continue
                if isinstance(event, h11.Data):
                    size += len(event.data)
                    if size > self._max_response_bytes:
                        raise HttpError(
                            f"{where}: response body exceeds {self._max_response_bytes} bytes"
                        )
                    chunks.append(bytes(event.data))
                    continue
                if isinstance(event, h11.EndOfMessage):
                    return HttpResponse(status, headers, b"".join(chunks))
                if isinstance(event, h11.ConnectionClosed):
                    raise HttpError(f"{where}: connection closed before the response ended")
                if event is h11.PAUSED:
                    raise HttpError(f"{where}: unexpected pause in the HTTP exchange")
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            if connection.reused and not received_any:
                raise _Retry from None
            raise HttpError(f"{where}: connection failed: {exc}") from None
        except h11.RemoteProtocolError as exc:
            if connection.reused and not received_any:
                raise _Retry from None
            raise HttpError(f"{where}: malformed response: {exc}") from None
        except h11.LocalProtocolError as exc:
            raise HttpError(f"{where}: invalid request: {exc}") from None
