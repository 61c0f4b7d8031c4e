"""The root of the running server: one Trio nursery that owns every service.

Services start in dependency order with `nursery.start` (each reports ready through
`task_status`):

1. the replicator (upstream → SQLite replica; ready once a replica exists: after the initial
   sync on a first start);
2. the token verifier (JWKS refresh, in JWKS mode);
3. the mutation service (custom pushes to the app's push URL, CRUD mutations upstream);
4. the view syncer service (query engine, client groups, CVRs, pokes);
5. the listener on ZERO_PORT: the sync WebSocket, `GET /` and `GET /keepalive`. It opens last,
   so a client (or a health check) never reaches a server that cannot serve it yet.

SIGINT/SIGTERM stop it in two steps: the listener stops accepting and closes every client socket
with 1001 (going away: clients reconnect elsewhere or later), bounded by `SHUTDOWN_TIMEOUT_S`;
then the root scope is cancelled, so every service's cleanup runs.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final

import trio

from zcache.app_server.api import ApiServer
from zcache.app_server.http import HttpClient
from zcache.app_server.queries import QueryTransformer
from zcache.auth import TokenVerifier
from zcache.config import ZeroConfig
from zcache.mutations import MutationService
from zcache.replica.replicator import Replicator
from zcache.server.connection import ConnectionRegistry, Edge, EdgeSettings
from zcache.server.listener import Listener
from zcache.view_syncer import ViewSyncerService

log = logging.getLogger("zcache.server")

SHUTDOWN_TIMEOUT_S: Final = 5.0

ShutdownStep = Callable[[], Awaitable[None]]


@dataclass(frozen=True)
class RunningServer:
    """What `serve` reports once clients can connect."""

    port: int
    stop: Callable[[], Awaitable[None]]  # the graceful shutdown that SIGINT/SIGTERM also run
    connections: ConnectionRegistry  # the open client sockets


class _Shutdown:
    """Graceful first (client sockets closed with 1001 while every service still runs), bounded
    by SHUTDOWN_TIMEOUT_S; then the root scope is cancelled."""

    def __init__(self, scope: trio.CancelScope) -> None:
        self._scope = scope
        self.graceful: list[ShutdownStep] = []

    async def stop(self) -> None:
        with trio.move_on_after(SHUTDOWN_TIMEOUT_S):
            for step in self.graceful:
                await step()
        self._scope.cancel()

    async def on_signal(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            task_status.started()
            async for signum in signals:
                log.info("received %s, shutting down", signal.Signals(signum).name)
                await self.stop()
                return


async def serve(
    config: ZeroConfig,
    *,
    edge_settings: EdgeSettings | None = None,
    task_status: trio.TaskStatus[RunningServer] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Runs zcache until SIGINT/SIGTERM (or `RunningServer.stop`); reports the listening port
    once clients can connect.

    `edge_settings` (queue sizes and deadlines of client sockets) defaults to the documented
    constants of `connection.py`; tests shorten them."""
    if config.upstream.db is None:
        raise ValueError("serve() needs an upstream database")
    http = HttpClient()
    try:
        async with trio.open_nursery() as nursery:
            shutdown = _Shutdown(nursery.cancel_scope)
            await nursery.start(shutdown.on_signal)
            replicator = await nursery.start(Replicator(config).run)
            verifier = TokenVerifier.from_config(config, http=http)
            await nursery.start(verifier.run)
            mutations = None
            if config.mutate.url or config.enable_crud_mutations:
                mutations = await nursery.start(MutationService(config, http=http, upstream_dsn=config.upstream.db).run)
            transformer = None
            if config.query.url:
                api = ApiServer(config.query, http=http, app_id=config.app.id, shard_num=config.shard.num, kind="query")
                transformer = QueryTransformer(api)
            view_syncers = ViewSyncerService(
                config,
                replicator=replicator,
                transformer=transformer,
                mutations=mutations,
                cvr_dsn=config.cvr.db or config.upstream.db,
            )
            await nursery.start(view_syncers.run)
            connections = ConnectionRegistry()
            edge = Edge(
                verifier,
                view_syncers,
                connections,
                edge_settings or EdgeSettings(),
                compression=config.websocket_compression,
            )
            listener = Listener(
                edge,
                port=config.port,
                max_message_bytes=config.websocket_max_payload_bytes,
                ready=view_syncers.ready,
                keepalive_timeout_s=None if config.keepalive_timeout_ms is None else config.keepalive_timeout_ms / 1000,
                on_heartbeats_stopped=lambda: nursery.start_soon(shutdown.stop),
            )
            shutdown.graceful.append(listener.shutdown)
            port = await nursery.start(listener.run)
            log.info(
                "zcache running (replica at version %s); sync clients connect to http://localhost:%d; stop with Ctrl-C",
                replicator.statistics().state_version,
                port,
            )
            task_status.started(RunningServer(port, shutdown.stop, connections))
    finally:
        with trio.CancelScope(shield=True):
            await http.aclose()
