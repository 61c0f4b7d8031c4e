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

import functools
import logging
import signal
from collections.abc import Awaitable, Callable
from typing import Final

import trio

from zcache.app_server.api import ApiServer
from zcache.app_server.http import HttpClient
from zcache.app_server.queries import QueryTransformer
from zcache.auth import TokenVerifier
from zcache.auth.permissions import Permissions
from zcache.config import ZeroConfig
from zcache.mutations import MutationService
from zcache.replica.replicator import Replicator
from zcache.server.connection import ConnectionRegistry, Edge, EdgeSettings
from zcache.server.listener import Listener
from zcache.view_syncer import ViewSyncerService

log = logging.getLogger("zcache.server")

SHUTDOWN_TIMEOUT_S: Final = 5.0

ShutdownStep = Callable[[], Awaitable[None]]


async def _stop_on_signal(
    scope: trio.CancelScope,
    graceful: list[ShutdownStep],
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        task_status.started()
        async for signum in signals:
            log.info("received %s, shutting down", signal.Signals(signum).name)
            with trio.move_on_after(SHUTDOWN_TIMEOUT_S):
                for step in graceful:
                    await step()
            scope.cancel()
            return


async def serve(config: ZeroConfig, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
    """Runs zcache until SIGINT/SIGTERM; reports the listening port once clients can connect."""
    if config.upstream.db is None:
        raise ValueError("serve() needs an upstream database")
    http = HttpClient()
    graceful: list[ShutdownStep] = []
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(_stop_on_signal, nursery.cancel_scope, graceful)
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
                permissions_loader=functools.partial(Permissions.from_replica, app_id=config.app.id),
            )
            await nursery.start(view_syncers.run)
            edge = Edge(verifier, view_syncers, ConnectionRegistry(), EdgeSettings(), compression=config.websocket_compression)
            listener = Listener(
                edge,
                port=config.port,
                max_message_bytes=config.websocket_max_payload_bytes,
                ready=view_syncers.ready,
            )
            graceful.append(listener.shutdown)
            port = await nursery.start(listener.run)
            log.info(
                "zcache running (replica at version %s); sync clients connect to http://localhost:%d; stop with Ctrl-C",
                replicator.statistics().state_version,
                port,
            )
            task_status.started(port)
    finally:
        with trio.CancelScope(shield=True):
            await http.aclose()
