"""The root of the running server: one Trio nursery that owns every service.

Services start in dependency order with `nursery.start` (each reports ready through
`task_status`), and the whole tree stops on SIGINT/SIGTERM by cancelling the root scope, so
every service's cleanup runs. Services arrive with their issues: replication (change source →
replica), then the view syncers and the sync endpoint, then the mutation path.
"""

from __future__ import annotations

import logging
import signal

import trio

from zcache.config import ZeroConfig

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
        log.info("zcache running; stop with Ctrl-C")
        await trio.sleep_forever()
