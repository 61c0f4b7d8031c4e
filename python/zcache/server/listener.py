"""The one listening port (ZERO_PORT): plain HTTP and the sync WebSocket, like zero-cache's.

Each TCP connection's request head is read with h11 (at most `MAX_HEAD_BYTES`, within
`HEAD_TIMEOUT_S`), then:

* `GET /` → 200 `OK` (liveness; the port only opens once the replica is ready);
* `GET /keepalive` → 200 `OK` while `ready()` holds, else 503;
* a WebSocket upgrade → the same bytes go to wsproto (`websocket.upgrade`) and the socket to
  `connection.serve_socket`, which accepts it (echoing the client's subprotocol) whatever its path:
  a wrong path is closed with 1002 and the reason, as zero-cache does;
* anything else → 404.

Connections run in a nursery of their own, so `shutdown` can stop accepting, close every open
socket with 1001 (going away) and give them `SHUTDOWN_GRACE_S` to finish before cancelling them.
A failure inside one connection is logged and ends that connection only.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Final

import h11
import trio

from zcache.server import protocol
from zcache.server.connection import GOING_AWAY_CLOSE_CODE, Edge, serve_socket
from zcache.server.websocket import upgrade

log = logging.getLogger("zcache.listener")

MAX_HEAD_BYTES: Final = 64 * 1024  # the client keeps its Sec-WebSocket-Protocol under 8 KiB by default
HEAD_TIMEOUT_S: Final = 10.0
SHUTDOWN_GRACE_S: Final = 3.0


class Listener:
    def __init__(
        self,
        edge: Edge,
        *,
        port: int,
        host: str | None = None,
        max_message_bytes: int,
        ready: Callable[[], bool],
    ) -> None:
        self._edge = edge
        self._port = port
        self._host = host
        self._max_message_bytes = max_message_bytes
        self._ready = ready
        self._accepting: trio.CancelScope | None = None
        self._stopped = trio.Event()

    async def run(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        """Serves until `shutdown`; reports the bound port (useful with port 0)."""
        try:
            async with trio.open_nursery() as connections:
                with trio.CancelScope() as accepting:
                    self._accepting = accepting
                    async with trio.open_nursery() as acceptor:
                        serve = functools.partial(
                            trio.serve_tcp, self._handle, self._port, host=self._host, handler_nursery=connections
                        )
                        listeners = await acceptor.start(serve)
                        port = listeners[0].socket.getsockname()[1]
                        log.info("sync endpoint and HTTP listening on port %d", port)
                        task_status.started(port)
                await self._close_connections(connections)
        finally:
            self._stopped.set()

    async def _close_connections(self, connections: trio.Nursery) -> None:
        open_connections = self._edge.registry.connections()
        if open_connections:
            log.info("closing %d client connections", len(open_connections))
        for conn in open_connections:
            connections.start_soon(conn.close, GOING_AWAY_CLOSE_CODE, "")
        with trio.move_on_after(SHUTDOWN_GRACE_S):
            while connections.child_tasks:
                await trio.sleep(0.05)
        connections.cancel_scope.cancel()

    async def shutdown(self) -> None:
        """Stops accepting, closes open sockets with 1001 and returns once they are gone."""
        if self._accepting is not None:
            self._accepting.cancel()
        await self._stopped.wait()

    async def _handle(self, stream: trio.SocketStream) -> None:
        try:
            await self._handle_stream(stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        except Exception:
            log.exception("connection failed")
        finally:
            with trio.CancelScope(shield=True):
                await stream.aclose()

    async def _handle_stream(self, stream: trio.SocketStream) -> None:
        http = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD_BYTES)
        head = bytearray()
        request: h11.Request | None = None
        with trio.move_on_after(HEAD_TIMEOUT_S):
            while request is None:
                try:
                    event = http.next_event()
                except h11.RemoteProtocolError as e:
                    await _respond(http, stream, e.error_status_hint, f"{e}\n")
                    return
                if isinstance(event, h11.Request):
                    request = event
                elif event is h11.NEED_DATA:
                    data = await stream.receive_some(MAX_HEAD_BYTES)
                    if not data:
                        return
                    head += data
                    http.receive_data(data)
                else:
                    return
        if request is None:
            return
        headers = protocol.lower_headers(request.headers)
        if "websocket" in headers.get("upgrade", "").lower():
            pending = await upgrade(stream, bytes(head), max_message_bytes=self._max_message_bytes)
            if pending is not None:
                await serve_socket(pending, headers, self._edge)
            return
        path = request.target.split(b"?", 1)[0]
        if request.method in (b"GET", b"HEAD") and path == b"/":
            await _respond(http, stream, 200, "OK")
        elif request.method in (b"GET", b"HEAD") and path == b"/keepalive":
            if self._ready():
                await _respond(http, stream, 200, "OK")
            else:
                await _respond(http, stream, 503, "not ready\n")
        else:
            await _respond(http, stream, 404, "not found\n")


async def _respond(http: h11.Connection, stream: trio.SocketStream, status: int, body: str) -> None:
    data = body.encode("utf-8")
    if http.their_state is h11.ERROR or http.our_state is not h11.SEND_RESPONSE:
        http = h11.Connection(h11.SERVER)  # answer even a request h11 refused to parse
        http.receive_data(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        http.next_event()
    headers = [
        ("content-type", "text/plain; charset=utf-8"),
        ("content-length", str(len(data))),
        ("connection", "close"),
    ]
    out = http.send(h11.Response(status_code=status, headers=headers))
    out += http.send(h11.Data(data=data)) or b""
    out += http.send(h11.EndOfMessage()) or b""
    await stream.send_all(out)
