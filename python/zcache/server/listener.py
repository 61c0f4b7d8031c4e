"""The one listening port (ZERO_PORT): plain HTTP and the sync WebSocket, like zero-cache's.

Each TCP connection's request head is read with h11 (at most `MAX_HEAD_BYTES`, within
`HEAD_TIMEOUT_S`), then:

* `GET /` → 200 `OK` (liveness; the port only opens once the replica is ready);
* `GET /keepalive` → 200 `OK` while `ready()` holds, else 503. With ZERO_KEEPALIVE_TIMEOUT_MS set,
  these are heartbeats (as zero-cache's HeartbeatMonitor counts them): from the first one on, a
  gap of that long calls `on_heartbeats_stopped` (a graceful shutdown, for load balancers that
  stop health-checking an instance they drain);
* a WebSocket upgrade → the same bytes go to wsproto (`websocket.upgrade`) and the socket to
  `connection.serve_socket`, which accepts it (echoing the client's subprotocol) whatever its path:
  a wrong path is closed with 1002 and the reason, as zero-cache does;
* anything else → 404.

Connections run in a nursery of their own (with one more task, the idle pongs of every registered
socket: `connection.send_idle_pongs`), so `shutdown` can stop accepting, close every open
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
from zcache.server.connection import GOING_AWAY_CLOSE_CODE, Edge, send_idle_pongs, serve_socket
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
        keepalive_timeout_s: float | None = None,
        on_heartbeats_stopped: Callable[[], None] | None = None,
    ) -> None:
        self._edge = edge
        self._port = port
        self._host = host
        self._max_message_bytes = max_message_bytes
        self._ready = ready
        self._keepalive_timeout_s = keepalive_timeout_s
        self._on_heartbeats_stopped = on_heartbeats_stopped
        self._last_heartbeat: float | None = None
        self._accepting: trio.CancelScope | None = None
        self._nursery: trio.Nursery | None = None
        self._stopped = trio.Event()
        self._idle_pongs = trio.CancelScope()

    async def run(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        """Serves until `shutdown`; reports the bound port (useful with port 0)."""
        try:
            async with trio.open_nursery() as connections:
                self._nursery = connections
                connections.start_soon(self._send_idle_pongs)
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

    async def _send_idle_pongs(self) -> None:
        with self._idle_pongs:
            await send_idle_pongs(self._edge.registry, self._edge.settings)

    async def _close_connections(self, connections: trio.Nursery) -> None:
        self._idle_pongs.cancel()  # the closing sockets' tasks are what the grace period waits for
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

    def _heartbeat(self) -> None:
        first = self._last_heartbeat is None
        self._last_heartbeat = trio.current_time()
        if first and self._keepalive_timeout_s is not None and self._nursery is not None:
            log.info("starting the heartbeat monitor (%.1f s)", self._keepalive_timeout_s)
            self._nursery.start_soon(self._monitor_heartbeats, self._keepalive_timeout_s)

    async def _monitor_heartbeats(self, timeout_s: float) -> None:
        while True:
            await trio.sleep(timeout_s / 4)
            assert self._last_heartbeat is not None
            silence = trio.current_time() - self._last_heartbeat
            if silence >= timeout_s:
                log.info("last heartbeat received %.1f s ago; draining", silence)
                if self._on_heartbeats_stopped is not None:
                    self._on_heartbeats_stopped()
                return

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
        head_only = request.method == b"HEAD"
        if request.method in (b"GET", b"HEAD") and path == b"/":
            await _respond(http, stream, 200, "OK", head_only=head_only)
        elif request.method in (b"GET", b"HEAD") and path == b"/keepalive":
            self._heartbeat()
            if self._ready():
                await _respond(http, stream, 200, "OK", head_only=head_only)
            else:
                await _respond(http, stream, 503, "not ready\n", head_only=head_only)
        else:
            await _respond(http, stream, 404, "not found\n", head_only=head_only)


async def _respond(
    http: h11.Connection, stream: trio.SocketStream, status: int, body: str, *, head_only: bool = False
) -> None:
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
    out = http.send(h11.Response(status_code=status, headers=headers)) or b""
    if not head_only:
        out += http.send(h11.Data(data=data)) or b""
    out += http.send(h11.EndOfMessage()) or b""
    await stream.send_all(out)
