"""Server-side WebSockets over Trio streams, driven directly by wsproto.

The listener has already read the upgrade request's head (h11 front door); `upgrade` feeds those
bytes to wsproto and returns a `PendingUpgrade` to accept (101, echoing the chosen subprotocol)
or that already answered 400 when the request is no valid WebSocket handshake.

`ServerWebSocket` is used by two tasks at most: one reader (`receive_message`) and any number of
writers (`send_text`/`send_texts`, serialised by a lock). Closing follows RFC 6455 from the server side: send
the close frame (a `None` code sends none, which the peer reports as 1005, as zero-cache does after
an `error` message), wait a bounded time for the peer's close frame (the reader sees it), then
close the TCP stream.

Incoming messages are capped at `max_message_bytes` of payload (ZERO_WEBSOCKET_MAX_PAYLOAD_BYTES):
the socket is closed with 1009 as soon as a message grows past it, before it is buffered whole.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import trio
import wsproto
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    Pong,
    RejectConnection,
    Request,
    TextMessage,
)
from wsproto.extensions import PerMessageDeflate
from wsproto.frame_protocol import CloseReason
from wsproto.utilities import RemoteProtocolError

log = logging.getLogger("zcache.websocket")

RECEIVE_CHUNK_BYTES: Final = 64 * 1024
# How long a closing socket waits for the peer's close frame before dropping the TCP stream.
CLOSE_HANDSHAKE_TIMEOUT_S: Final = 2.0
MESSAGE_TOO_BIG: Final = 1009


class WebSocketClosed(Exception):
    """The socket is closed or closing; `code` is what the peer sent (1005: no status, 1006: dropped)."""

    def __init__(self, code: int, reason: str = "") -> None:
        super().__init__(f"WebSocket closed ({code}{': ' + reason if reason else ''})")
        self.code = code
        self.reason = reason


@dataclass
class PendingUpgrade:
    """A valid WebSocket upgrade request, not answered yet."""

    stream: trio.abc.Stream
    connection: wsproto.WSConnection
    request: Request
    max_message_bytes: int

    async def accept(self, subprotocol: str | None, *, compression: bool = False) -> ServerWebSocket:
        """Answers 101; with `compression`, permessage-deflate is used when the client offers it."""
        extensions = [PerMessageDeflate()] if compression else []
        data = self.connection.send(AcceptConnection(subprotocol=subprotocol, extensions=extensions))
        await self.stream.send_all(data)
        offered = any(str(e).split(";")[0].strip() == PerMessageDeflate.name for e in self.request.extensions)
        return ServerWebSocket(self.stream, self.connection, self.max_message_bytes, compressed=compression and offered)


async def upgrade(stream: trio.abc.Stream, head: bytes, *, max_message_bytes: int) -> PendingUpgrade | None:
    """Hand the already-read request bytes to wsproto. On a bad handshake, answers 400 and returns None."""
    connection = wsproto.WSConnection(wsproto.ConnectionType.SERVER)
    try:
        connection.receive_data(head)
        for event in connection.events():
            if isinstance(event, Request):
                return PendingUpgrade(stream, connection, event, max_message_bytes)
    except RemoteProtocolError as e:
        log.info("refusing a WebSocket upgrade: %s", e)
        hint = e.event_hint if isinstance(e.event_hint, RejectConnection) else RejectConnection(status_code=400)
        try:
            await stream.send_all(connection.send(hint))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        return None
    raise AssertionError("the listener hands over only complete request heads")


class ServerWebSocket:
    def __init__(self, stream: trio.abc.Stream, connection: wsproto.WSConnection, max_message_bytes: int, *, compressed: bool = False) -> None:
        self.compressed = compressed  # permessage-deflate was negotiated
        self._stream = stream
        self._ws = connection
        self._max_message_bytes = max_message_bytes
        self._send_lock = trio.Lock()
        self._closed: WebSocketClosed | None = None  # set once closing, by either side
        self._close_deadline = math.inf  # when a closing socket stops waiting for the peer
        self._peer_closed = trio.Event()  # the peer's close frame arrived, or the stream ended
        self._reader_attached = False
        self._parts: list[str | bytes] = []
        self._size = 0

    @property
    def closed(self) -> WebSocketClosed | None:
        return self._closed

    def attach_reader(self) -> None:
        """A task will call `receive_message` until the socket is closed: `close` then leaves
        reading to it (two readers of one stream would collide)."""
        self._reader_attached = True

    async def send_text(self, text: str) -> None:
        """Raises WebSocketClosed once the socket is closing."""
        await self._send(TextMessage(data=text))

    async def send_texts(self, texts: Sequence[str]) -> None:
        """Several messages in one write to the stream (one system call, not one per frame: a poke
        is three messages or more). Raises WebSocketClosed once the socket is closing."""
        await self._send(*(TextMessage(data=text) for text in texts))

    async def _send(self, *events: TextMessage | Pong | CloseConnection) -> None:
        async with self._send_lock:
            if self._closed is not None and not isinstance(events[0], CloseConnection):
                raise self._closed
            if self._ws.state not in (ConnectionState.OPEN, ConnectionState.REMOTE_CLOSING):
                raise self._closed or WebSocketClosed(1006)
            data = b"".join(self._ws.send(event) for event in events)
            try:
                await self._stream.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self._peer_closed.set()
                raise self._mark_closed(WebSocketClosed(1006, "connection lost")) from None

    async def _send_quietly(self, event: Pong | CloseConnection) -> None:
        try:
            await self._send(event)
        except WebSocketClosed:
            pass

    def _mark_closed(self, closed: WebSocketClosed) -> WebSocketClosed:
        if self._closed is None:
            self._closed = closed
            self._close_deadline = trio.current_time() + CLOSE_HANDSHAKE_TIMEOUT_S
        return self._closed

    async def receive_message(self) -> str | bytes:
        """The next complete message. Answers pings; raises WebSocketClosed once the socket is closed.

        After a close frame went out, this keeps reading (and dropping data) until the peer's close
        frame arrives, for at most CLOSE_HANDSHAKE_TIMEOUT_S: closing a TCP stream with unread
        data resets it, and the peer could lose our close frame."""
        while True:
            for event in self._ws.events():
                if isinstance(event, (TextMessage, BytesMessage)):
                    message = await self._on_data(event)
                    if message is not None:
                        return message
                elif isinstance(event, Ping):
                    await self._send_quietly(event.response())
                elif isinstance(event, CloseConnection):
                    await self._on_close_frame(event)
            if self._peer_closed.is_set():
                assert self._closed is not None
                raise self._closed
            data = b""
            with trio.move_on_at(self._close_deadline):
                try:
                    data = await self._stream.receive_some(RECEIVE_CHUNK_BYTES)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass
            if not data:
                self._peer_closed.set()
                raise self._mark_closed(WebSocketClosed(1006, "connection lost"))
            if self._ws.state is not ConnectionState.CLOSED:
                self._ws.receive_data(data)

    async def _on_data(self, event: TextMessage | BytesMessage) -> str | bytes | None:
        if self._closed is not None:
            return None  # data after our close frame is dropped, as RFC 6455 allows
        chunk = event.data
        self._size += len(chunk.encode("utf-8", "surrogatepass")) if isinstance(chunk, str) else len(chunk)
        if self._size > self._max_message_bytes:
            self._parts.clear()
            await self._start_close(MESSAGE_TOO_BIG, f"Max payload size exceeded ({self._max_message_bytes} bytes)")
            return None
        self._parts.append(chunk)
        if not event.message_finished:
            return None
        parts, self._parts, self._size = self._parts, [], 0
        if isinstance(chunk, str):
            return "".join(parts)  # type: ignore[arg-type]
        return b"".join(parts)  # type: ignore[arg-type]

    async def _on_close_frame(self, event: CloseConnection) -> None:
        code = int(event.code) if event.code is not None else 1005
        if self._ws.state is ConnectionState.OPEN:
            # Not the peer's frame: wsproto found a framing error and tells us to close with this code.
            await self._start_close(code, event.reason or "")
            self._peer_closed.set()
            return
        self._mark_closed(WebSocketClosed(code, event.reason or ""))
        if self._ws.state is ConnectionState.REMOTE_CLOSING:
            await self._send_quietly(event.response())
        self._peer_closed.set()

    async def _start_close(self, code: int | None, reason: str) -> None:
        if self._closed is not None:
            return
        self._mark_closed(WebSocketClosed(code or 1005, reason))
        status = CloseReason.NO_STATUS_RCVD if code is None else code
        # A peer that reads nothing would block the close frame forever.
        with trio.move_on_at(self._close_deadline):
            await self._send_quietly(CloseConnection(code=status, reason=reason or None))

    async def close(self, code: int | None, reason: str = "") -> None:
        """Send a close frame (`None`: without status code), wait a bounded time for the peer's
        close frame (read by the attached reader, else here), then close the TCP stream."""
        await self._start_close(code, reason)
        with trio.move_on_at(self._close_deadline):
            if self._reader_attached:
                await self._peer_closed.wait()
            else:
                try:
                    while True:
                        await self.receive_message()
                except WebSocketClosed:
                    pass
        await self.abort()

    async def abort(self) -> None:
        """Close the TCP stream now."""
        self._mark_closed(WebSocketClosed(1006, "connection dropped"))
        self._peer_closed.set()
        with trio.CancelScope(shield=True):
            await self._stream.aclose()
