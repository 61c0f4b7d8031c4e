"""One client socket, from the accepted upgrade to the close (docs/zero-protocol.md §2, §3, §7.4, §8).

Each socket runs in its own nursery, owned by `serve_socket`:

* a **reader** task reads frames (one reader for the socket's life, so the close handshake is
  always seen), parses them strictly (`protocol.parse_upstream`) and dispatches: `ping` → `pong`,
  `pull` and `closeConnection` ignored, `initConnection` starts the view syncer, `updateAuth` is
  re-authenticated and passed on, everything else goes into the bounded **inbox** of the view
  syncer. A malformed frame is answered with `InvalidMessage` and a close;
* a **writer** task drains the bounded **outbox** (`OUTBOX_CAPACITY` messages) onto the socket.
  `ClientConnection.send` waits while the outbox is full. When the outbox stays full, or one
  frame cannot be written, for `SLOW_CLIENT_TIMEOUT_S`, the client is not reading: nothing more
  can reach it (not even an `error` message, which would queue behind what it does not read), so
  its TCP stream is dropped (the client sees 1006 and reconnects from its cookie) rather than
  memory growing on its behalf;
* **idle pongs**: `pong` when nothing was sent for `IDLE_PONG_AFTER_S`, checked every
  `IDLE_CHECK_INTERVAL_S` (zero-cache's 6 s / 3 s) by one task of the listener for every
  registered socket (`send_idle_pongs`), from `connected` on;
* the **view syncer** task, `view_syncers.serve_client(conn, init, inbox)`, once `initConnection`
  arrived (piggy-backed in the subprotocol header or as a message). When the socket closes the
  inbox is closed; `serve_client` gets `SERVE_CLIENT_GRACE_S` to return before it is cancelled.

The handshake, in zero-cache's order: connect URL (bad → close 1002 with the error as reason, no
`error` message), token authentication (failure → `error` Unauthorized/AuthInvalidated and close
3000), protocol version (out of range → `error` VersionNotSupported and a close without status),
then `connected`, replacing (closing) an older socket of the same clientID. Errors after that are
an `error` message and a close without status code (§2.6).

Contract refinements (briefs/contracts.md): `ClientConnection.close` (a close without error, used
for replacement and shutdown) is public; exceptions raised out of `serve_client` are answered too:
`ProtocolError` with its kind, anything else with `Internal`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol

import trio

from zcache.auth import AuthData, AuthError
from zcache.server import protocol
from zcache.server.protocol import (
    ConnectParams,
    ConnectRejected,
    InitConnection,
    ProtocolError,
    UpdateAuth,
    UpstreamMessage,
)
from zcache.server.websocket import PendingUpgrade, ServerWebSocket, WebSocketClosed

log = logging.getLogger("zcache.connection")

# Downstream messages queued per client (a poke part, ≤ 100 rows, counts one): a few MB at most.
OUTBOX_CAPACITY: Final = 64
# A client whose outbox stays full this long, or that takes this long to accept one frame, is dropped.
SLOW_CLIENT_TIMEOUT_S: Final = 30.0
# Queued downstream frames joined into one socket write, up to about this many characters.
WRITE_COALESCE_BYTES: Final = 256 * 1024
# Upstream messages queued for the view syncer before the reader stops reading (backpressure).
INBOX_CAPACITY: Final = 16
IDLE_PONG_AFTER_S: Final = 6.0
IDLE_CHECK_INTERVAL_S: Final = 3.0
# Time serve_client has to return after its socket closed, before it is cancelled.
SERVE_CLIENT_GRACE_S: Final = 10.0
AUTH_FAILURE_CLOSE_CODE: Final = 3000
PROTOCOL_ERROR_CLOSE_CODE: Final = 1002
GOING_AWAY_CLOSE_CODE: Final = 1001


class ClientGone(Exception):
    """The socket is closing or closed: nothing more can be sent to this client."""


class Authenticator(Protocol):
    """`TokenVerifier.authenticate`: `previous` is the connection's auth when `updateAuth` rotates it."""

    async def authenticate(self, token: str | None, user_id: str | None, *, previous: AuthData | None = None) -> AuthData: ...


class ViewSyncers(Protocol):
    async def serve_client(
        self, conn: ClientConnection, init: InitConnection, inbox: trio.MemoryReceiveChannel[UpstreamMessage]
    ) -> None: ...


@dataclass(frozen=True)
class EdgeSettings:
    outbox_capacity: int = OUTBOX_CAPACITY
    slow_client_timeout_s: float = SLOW_CLIENT_TIMEOUT_S
    inbox_capacity: int = INBOX_CAPACITY
    idle_pong_after_s: float = IDLE_PONG_AFTER_S
    idle_check_interval_s: float = IDLE_CHECK_INTERVAL_S
    serve_client_grace_s: float = SERVE_CLIENT_GRACE_S


@dataclass(frozen=True)
class _Close:
    error: str | None  # an encoded `error` message to send first
    code: int | None  # None: a close frame without status code
    reason: str


_Outgoing = tuple[str, ...] | _Close


class ClientConnection:
    """What the view syncer sees of one socket."""

    def __init__(
        self,
        ws: ServerWebSocket,
        settings: EdgeSettings,
        *,
        request_headers: Mapping[str, str],
    ) -> None:
        self._ws = ws
        self._settings = settings
        self.request_headers = request_headers
        self.origin: str | None = request_headers.get("origin")
        self.cookie: str | None = request_headers.get("cookie")
        # Set by the handshake, before the view syncer sees the connection.
        self.params: ConnectParams
        self.auth: AuthData
        self._outbox_send, self._outbox_receive = trio.open_memory_channel[_Outgoing](settings.outbox_capacity)
        self._closing = False
        self._last_sent = trio.current_time()
        self._idle_pongs = False  # from `connected` on

    @property
    def compressed(self) -> bool:
        """Whether frames to and from this client are compressed (permessage-deflate)."""
        return self._ws.compressed

    @property
    def closing(self) -> bool:
        return self._closing

    async def send(self, message: Sequence[Any] | bytes | str) -> None:
        """Queues one downstream message (a JSON array, or pre-encoded JSON). Waits while the
        outbox is full; raises ClientGone once the socket is closing."""
        await self._enqueue((_encode(message),))

    async def send_many(self, messages: Sequence[Sequence[Any] | bytes | str]) -> None:
        """Queues a poke's messages as one unit, so nothing else is written between them."""
        await self._enqueue(tuple(_encode(m) for m in messages))

    async def fail(self, kind: str, message: str, **extra: Any) -> None:
        """Sends `["error", {kind, message, origin: "zeroCache", …}]` and closes without status code."""
        error = protocol.encode_downstream(protocol.error_message(kind, message, **extra))
        log.info("closing %s with error %s: %s", self._describe(), kind, message)
        await self._begin_close(_Close(error, None, ""))

    async def close(self, code: int | None, reason: str = "") -> None:
        """Closes the socket after what is already queued (`None`: without status code)."""
        await self._begin_close(_Close(None, code, reason))

    async def set_auth(self, auth: AuthData) -> None:
        self.auth = auth

    def _describe(self) -> str:
        params = getattr(self, "params", None)
        return f"client {params.client_id} of group {params.client_group_id}" if params else "a client"

    async def _enqueue(self, frames: tuple[str, ...]) -> None:
        if self._closing:
            raise ClientGone
        with trio.move_on_after(self._settings.slow_client_timeout_s) as waited:
            try:
                await self._outbox_send.send(frames)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                raise ClientGone from None
            return
        assert waited.cancelled_caught
        await self._drop_slow_client()
        raise ClientGone

    async def _begin_close(self, close: _Close) -> None:
        if self._closing:
            return
        self._closing = True
        try:
            self._outbox_send.send_nowait(close)
        except trio.WouldBlock:
            with trio.move_on_after(self._settings.slow_client_timeout_s):
                try:
                    await self._outbox_send.send(close)
                    return
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    return
            await self._drop_slow_client()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    async def _drop_slow_client(self) -> None:
        log.warning(
            "dropping %s: it has not read for %.0f s with %d messages queued",
            self._describe(),
            self._settings.slow_client_timeout_s,
            self._settings.outbox_capacity,
        )
        self._closing = True
        await self._ws.abort()

    def _pong_if_idle(self, now: float) -> None:
        """zero-cache's liveness signal: a `pong` whenever nothing was sent for a while."""
        if not self._idle_pongs or self._closing or now - self._last_sent <= self._settings.idle_pong_after_s:
            return
        try:
            self._outbox_send.send_nowait((_PONG,))
            self._last_sent = now
        except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # a full outbox means traffic is pending anyway


async def send_idle_pongs(registry: ConnectionRegistry, settings: EdgeSettings) -> None:
    """The idle pongs of every registered socket, every `idle_check_interval_s`: one task for all
    of them (a timer task per socket woke the event loop ~330 times a second at 1,000 sockets)."""
    while True:
        await trio.sleep(settings.idle_check_interval_s)
        now = trio.current_time()
        for conn in registry.connections():
            conn._pong_if_idle(now)


_PONG: Final = protocol.encode_downstream(protocol.PONG)


def _encode(message: Sequence[Any] | bytes | str) -> str:
    if isinstance(message, str):
        return message
    if isinstance(message, (bytes, bytearray, memoryview)):
        return bytes(message).decode("utf-8")
    return protocol.encode_downstream(message)


class ConnectionRegistry:
    """The open connections by clientID: a new socket of a client replaces (closes) the older one."""

    def __init__(self) -> None:
        self._by_client: dict[str, ClientConnection] = {}

    def __len__(self) -> int:
        return len(self._by_client)

    def connections(self) -> list[ClientConnection]:
        return list(self._by_client.values())

    def add(self, conn: ClientConnection) -> ClientConnection | None:
        """Registers `conn`; returns the connection it replaces, if any."""
        older = self._by_client.get(conn.params.client_id)
        self._by_client[conn.params.client_id] = conn
        return older

    def remove(self, conn: ClientConnection) -> None:
        if self._by_client.get(conn.params.client_id) is conn:
            del self._by_client[conn.params.client_id]


@dataclass
class Edge:
    """What every socket needs: its collaborators and settings."""

    authenticator: Authenticator
    view_syncers: ViewSyncers
    registry: ConnectionRegistry
    settings: EdgeSettings
    compression: bool = False
    now_ms: Callable[[], int] = lambda: int(time.time() * 1000)


async def serve_socket(pending: PendingUpgrade, request_headers: Mapping[str, str], edge: Edge) -> None:
    """Runs one accepted-to-be WebSocket until it is closed. Never raises for client misbehaviour."""
    target = pending.request.target
    proposed = list(pending.request.subprotocols)
    ws = await pending.accept(proposed[0] if proposed else None, compression=edge.compression)
    ws.attach_reader()
    conn = ClientConnection(ws, edge.settings, request_headers=request_headers)
    session = _Session(conn, ws, edge)
    try:
        async with trio.open_nursery() as nursery:
            session.nursery = nursery
            nursery.start_soon(session.read)
            nursery.start_soon(session.write)
            await session.handshake(target, request_headers.get("sec-websocket-protocol"))
            await session.finished.wait()
            nursery.cancel_scope.cancel()
    finally:
        if session.registered:
            edge.registry.remove(conn)
        await ws.abort()


class _Session:
    """The per-socket state machine shared by the handshake, the reader and the view syncer task."""

    def __init__(self, conn: ClientConnection, ws: ServerWebSocket, edge: Edge) -> None:
        self.conn = conn
        self.ws = ws
        self.edge = edge
        self.nursery: trio.Nursery
        self.registered = False
        self.handshake_done = trio.Event()  # also set when the handshake fails: the reader goes on
        self.finished = trio.Event()  # the socket is closed and the view syncer is done
        self.inbox_send, self.inbox_receive = trio.open_memory_channel[UpstreamMessage](edge.settings.inbox_capacity)
        self.view_syncer_started = False
        self.view_syncer_done = trio.Event()

    async def handshake(self, target: str, sec_websocket_protocol: str | None) -> None:
        conn = self.conn
        try:
            request = protocol.parse_connect_request(target, sec_websocket_protocol)
        except ConnectRejected as e:
            log.info("refusing connection %s: %s", target[:200], e.reason)
            await conn.close(PROTOCOL_ERROR_CLOSE_CODE, e.reason)
            self.handshake_done.set()
            return
        conn.params = request.params
        token = request.sec_protocol.auth_token
        try:
            conn.auth = await self.edge.authenticator.authenticate(token, request.params.user_id)
        except AuthError as e:
            await self._refuse(e.kind, e.message)
            return
        except Exception as e:  # e.g. a JWKS endpoint that cannot be reached: this socket only
            log.exception("authenticating %s failed", conn._describe())
            await self._refuse("Internal", f"{type(e).__name__}: {e}")
            return
        try:
            protocol.check_protocol_version(request.params.protocol_version)
        except ProtocolError as e:
            await conn.fail(e.kind, e.message)
            self.handshake_done.set()
            return
        older = self.edge.registry.add(conn)
        self.registered = True
        if older is not None:
            log.debug("client %s reconnected; closing its older socket", request.params.client_id)
            await older.close(None, "")
        try:
            await conn.send(protocol.connected_message(request.params.wsid, self.edge.now_ms()))
        except ClientGone:
            self.handshake_done.set()
            return
        conn._idle_pongs = True
        init = request.sec_protocol.init_connection
        try:
            if init is not None:
                await self.dispatch(protocol.parse_upstream_value(init))
        except ProtocolError as e:
            await conn.fail(e.kind, e.message)
        except ClientGone:
            pass
        finally:
            self.handshake_done.set()

    async def _refuse(self, kind: str, message: str) -> None:
        """Auth failure at connect: `error`, then close 3000 with zero-cache's reason; no `connected`."""
        error = protocol.encode_downstream(protocol.error_message(kind, message))
        reason = "Failed to decode JWT" if kind == "AuthInvalidated" else protocol.elide(message, protocol.MAX_CLOSE_REASON_BYTES)
        log.info("refusing %s: %s %s", self.conn._describe(), kind, message)
        await self.conn._begin_close(_Close(error, AUTH_FAILURE_CLOSE_CODE, reason))
        self.handshake_done.set()

    async def write(self) -> None:
        """The writer task: the outbox onto the socket, then the close."""
        conn = self.conn
        try:
            async for item in conn._outbox_receive:
                if isinstance(item, _Close):
                    close: _Close | None = item
                else:
                    frames, close = self._take_ready(list(item))
                    if not await self._write_frames(frames):
                        return
                    conn._last_sent = trio.current_time()
                if close is not None:
                    # Nothing more goes to the view syncer; a reader blocked on a full inbox reads
                    # on, and so sees the peer's close frame.
                    self.inbox_send.close()
                    if close.error is not None and not await self._write_frames([close.error]):
                        return
                    await self.ws.close(close.code, close.reason)
                    return
        except WebSocketClosed:
            pass
        finally:
            conn._closing = True
            conn._outbox_receive.close()
            # Unblocks a reader waiting for room in the inbox, so that it reads on to the close.
            self.inbox_send.close()

    def _take_ready(self, frames: list[str]) -> tuple[list[str], _Close | None]:
        """Adds what else is already queued (up to WRITE_COALESCE_BYTES) to one write: under a
        fan-out each socket has several pokes waiting, and one system call per frame dominated."""
        size = sum(len(f) for f in frames)
        while size < WRITE_COALESCE_BYTES:
            try:
                item = self.conn._outbox_receive.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel):
                break
            if isinstance(item, _Close):
                return frames, item
            frames.extend(item)
            size += sum(len(f) for f in item)
        return frames, None

    async def _write_frames(self, frames: list[str]) -> bool:
        """Writes frames in one go; False when the client took longer than the slow-client
        deadline to accept them (it is then dropped: a frame cut in the middle leaves nothing else
        to do)."""
        with trio.move_on_after(self.edge.settings.slow_client_timeout_s):
            await self.ws.send_texts(frames)
            return True
        await self.conn._drop_slow_client()
        return False

    async def read(self) -> None:
        """The reader task: every frame of the socket, until it is closed."""
        try:
            while True:
                data = await self.ws.receive_message()
                await self.handshake_done.wait()
                if self.conn.closing:
                    continue  # read on to the peer's close frame
                try:
                    message = protocol.parse_upstream(data)
                    await self.dispatch(message)
                except ProtocolError as e:
                    await self.conn.fail(e.kind, e.message)
                except ClientGone:
                    pass
        except WebSocketClosed as e:
            log.debug("%s closed (%d %s)", self.conn._describe(), e.code, e.reason)
        finally:
            self.inbox_send.close()
            self.conn._closing = True
            self.conn._outbox_send.close()
            self.handshake_done.set()
            self.nursery.start_soon(self._finish)

    async def _finish(self) -> None:
        if self.view_syncer_started:
            with trio.move_on_after(self.edge.settings.serve_client_grace_s):
                await self.view_syncer_done.wait()
            if not self.view_syncer_done.is_set():
                log.warning("%s: the view syncer did not stop within %.0f s of the close; cancelling it",
                            self.conn._describe(), self.edge.settings.serve_client_grace_s)
        self.finished.set()

    async def dispatch(self, message: protocol.AnyUpstream) -> None:
        match message:
            case protocol.Ping():
                await self.conn.send(protocol.PONG)
            case protocol.Pull() | protocol.CloseConnection():
                pass  # zero-cache 1.9 ignores both (no reply)
            case InitConnection():
                if self.view_syncer_started:
                    raise ProtocolError("InvalidMessage", "Duplicate initConnection message")
                self.view_syncer_started = True
                self.nursery.start_soon(self._serve_view_syncer, message)
            case UpdateAuth(auth=token):
                try:
                    auth = await self.edge.authenticator.authenticate(
                        token, self.conn.params.user_id, previous=self.conn.auth
                    )
                except AuthError as e:
                    await self.conn.fail(e.kind, e.message)
                    return
                await self.conn.set_auth(auth)
                await self._to_inbox(message)
            case _:
                await self._to_inbox(message)

    async def _to_inbox(self, message: UpstreamMessage) -> None:
        try:
            await self.inbox_send.send(message)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise ClientGone from None

    async def _serve_view_syncer(self, init: InitConnection) -> None:
        conn = self.conn
        try:
            await self.edge.view_syncers.serve_client(conn, init, self.inbox_receive)
        except Exception as e:  # one client's failure must not take the server down
            leaves = _leaf_exceptions(e)
            protocol_error = next((x for x in leaves if isinstance(x, ProtocolError)), None)
            if protocol_error is not None:
                await conn.fail(protocol_error.kind, protocol_error.message)
            elif not all(isinstance(x, ClientGone) for x in leaves):
                log.exception("view syncer failed for %s", conn._describe())
                first = next(x for x in leaves if not isinstance(x, ClientGone))
                await conn.fail("Internal", f"{type(first).__name__}: {first}")
        finally:
            self.view_syncer_done.set()
            # Unblocks a reader waiting for room in the inbox nobody reads any more.
            self.inbox_receive.close()
        await conn.close(None)


def _leaf_exceptions(error: BaseException) -> list[BaseException]:
    """The exceptions inside (nested) exception groups, or the error itself."""
    if isinstance(error, BaseExceptionGroup):
        return [leaf for inner in error.exceptions for leaf in _leaf_exceptions(inner)]
    return [error]


__all__ = [
    "Authenticator",
    "ClientConnection",
    "ClientGone",
    "ConnectionRegistry",
    "Edge",
    "EdgeSettings",
    "ViewSyncers",
    "send_idle_pongs",
    "serve_socket",
]
