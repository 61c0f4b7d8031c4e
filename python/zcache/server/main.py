"""The root of the running server: one Trio nursery that owns every service.

Services start in dependency order with `nursery.start` (each reports ready through
`task_status`), and the whole tree stops on SIGINT/SIGTERM by cancelling the root scope, so
every service's cleanup runs. Running now: the replicator (upstream → SQLite replica). Next to
come: the view syncers and the sync endpoint, then the mutation path.
"""

from __future__ import annotations

import logging
import signal

import trio

from zcache.config import ZeroConfig
from zcache.replica.replicator import Replicator

log = logging.getLogger("zcache.server")


async def _cancel_on_signal(scope: trio.CancelScope, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        task_status.started()
        async for signum in signals:
            log.info("received %s, shutting down", signal.Signals(signum).name)
            scope.cancel()
            return


async def serve(config: ZeroConfig) -> None:
    """Runs zcache until SIGINT/SIGTERM."""
    async with trio.open_nursery() as nursery:
        await nursery.start(_cancel_on_signal, nursery.cancel_scope)
        replicator = await nursery.start(Replicator(config).run)
        log.info("zcache running (replica at version %s); stop with Ctrl-C", replicator.statistics().state_version)
