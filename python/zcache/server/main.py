"""The root of the running server: one Trio nursery that owns every service.

Services start in dependency order with `nursery.start` (each reports ready through
`task_status`): first the replicator (upstream → SQLite replica; ready once a replica exists:
after the initial sync on a first start), then the client-facing services of
`server/services.py`, the listener last. That module is imported in a worker thread while the
replicator starts: the imports overlap the replicator's round trips to Postgres.

SIGINT/SIGTERM stop it in two steps: the listener stops accepting and closes every client socket
with 1001 (going away: clients reconnect elsewhere or later), bounded by `SHUTDOWN_TIMEOUT_S`;
then the root scope is cancelled, so every service's cleanup runs.
"""

from __future__ import annotations

import importlib
import logging
import signal
from types import ModuleType
from typing import TYPE_CHECKING, Final

import trio

from zcache.config import ZeroConfig
from zcache.replica.replicator import Replicator

if TYPE_CHECKING:
    from zcache.app_server.http import HttpClient
    from zcache.server.connection import EdgeSettings
    from zcache.server.services import RunningServer, ShutdownStep

log = logging.getLogger("zcache.server")

SHUTDOWN_TIMEOUT_S: Final = 5.0
SERVICES_MODULE: Final = "zcache.server.services"


class Shutdown:
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
    upstream_dsn = config.upstream.db
    if upstream_dsn is None:
        raise ValueError("serve() needs an upstream database")
    http: HttpClient | None = None
    try:
        async with trio.open_nursery() as nursery:
            shutdown = Shutdown(nursery.cancel_scope)
            await nursery.start(shutdown.on_signal)
            services_imported: trio.MemorySendChannel[ModuleType]
            services_imported, services_arrival = trio.open_memory_channel[ModuleType](1)

            async def import_services() -> None:
                async with services_imported:
                    await services_imported.send(await trio.to_thread.run_sync(importlib.import_module, SERVICES_MODULE))

            nursery.start_soon(import_services)
            replicator = await nursery.start(Replicator(config).run)
            async with services_arrival:
                services = await services_arrival.receive()
            http = services.HttpClient()
            running = await services.start(
                config,
                replicator,
                upstream_dsn=upstream_dsn,
                nursery=nursery,
                http=http,
                graceful_steps=shutdown.graceful,
                stop=shutdown.stop,
                edge_settings=edge_settings,
            )
            task_status.started(running)
    finally:
        if http is not None:
            with trio.CancelScope(shield=True):
                await http.aclose()
