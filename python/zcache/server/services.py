"""The services that serve clients, started once the replica is ready (see `server/main.py`):

1. the token verifier (JWKS refresh, in JWKS mode);
2. the mutation service (custom pushes to the app's push URL, CRUD mutations upstream);
3. the view syncer service (query engine, client groups, CVRs, pokes);
4. the listener on ZERO_PORT: the sync WebSocket, `GET /` and `GET /keepalive`. It opens last,
   so a client (or a health check) never reaches a server that cannot serve it yet.

This module is imported apart from `server/main.py`, in a worker thread while the replicator
starts: these modules are most of the server's import time, which then overlaps the replicator's
round trips to Postgres instead of preceding them.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

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

ShutdownStep = Callable[[], Awaitable[None]]


@dataclass(frozen=True)
class RunningServer:
    """What `serve` reports once clients can connect."""

    port: int
    stop: Callable[[], Awaitable[None]]  # the graceful shutdown that SIGINT/SIGTERM also run
    connections: ConnectionRegistry  # the open client sockets


async def start(
    config: ZeroConfig,
    replicator: Replicator,
    *,
    upstream_dsn: str,
    nursery: trio.Nursery,
    http: HttpClient,
    graceful_steps: list[ShutdownStep],
    stop: Callable[[], Awaitable[None]],
    edge_settings: EdgeSettings | None,
) -> RunningServer:
    """Starts the client-facing services in `nursery`, in dependency order; returns once the
    listener accepts clients. The listener's shutdown joins `graceful_steps`."""
    verifier = TokenVerifier.from_config(config, http=http)
    await nursery.start(verifier.run)
    mutations = None
    if config.mutate.url or config.enable_crud_mutations:
        mutations = await nursery.start(MutationService(config, http=http, upstream_dsn=upstream_dsn).run)
    transformer = None
    if config.query.url:
        api = ApiServer(config.query, http=http, app_id=config.app.id, shard_num=config.shard.num, kind="query")
        transformer = QueryTransformer(api)
    view_syncers = ViewSyncerService(
        config,
        replicator=replicator,
        transformer=transformer,
        mutations=mutations,
        cvr_dsn=config.cvr.db or upstream_dsn,
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
        on_heartbeats_stopped=lambda: nursery.start_soon(stop),
    )
    graceful_steps.append(listener.shutdown)
    port = await nursery.start(listener.run)
    log.info(
        "zcache running (replica at version %s); sync clients connect to http://localhost:%d; stop with Ctrl-C",
        replicator.statistics().state_version,
        port,
    )
    return RunningServer(port, stop, connections)
