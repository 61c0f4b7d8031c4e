"""The replicator: keeps the SQLite replica equal to upstream.

`Replicator.run` owns the whole path and its failures:

1. check upstream (`wal_level`, rights) and set up the shard (schemas, publications, DDL trigger);
2. open the replica, or build one with an initial sync when there is none, or when it no longer
   matches upstream (another app/shard or publications, or its slot is gone or invalidated);
3. stream from the replica's watermark: each batch of frames is applied by Rust in a worker thread,
   then the durable LSN is confirmed upstream, then the new state version is published.

Invariants:
- Upstream is told `flush = ack_lsn` only after Rust has committed those transactions durably, so
  a crash (even kill -9) loses nothing: the next start resumes from the replica's watermark and
  Rust skips any transaction it already has.
- A dropped connection is retried with exponential backoff from the durable watermark.
- `ResyncRequiredError` (a schema change the stream cannot express, a missing or invalidated slot)
  leads to a fresh initial sync when `ZERO_AUTO_RESET` is on, and stops the replicator otherwise.
- Version notifications are latest-only: a slow reader sees the newest version, not a backlog.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import psycopg
import trio

from zcache import _native
from zcache.change_source import upstream
from zcache.change_source.initial_sync import drop_stale_slots, run_initial_sync
from zcache.change_source.stream import ReplicationStream, ReplicationStreamError, SlotUnusableError, StreamStart
from zcache.config import ZeroConfig

log = logging.getLogger("zcache.replicator")

# A batch is what arrived together, capped so a keepalive waiting for a reply is not held up long.
MAX_BATCH_FRAMES = 20_000
MAX_BATCH_BYTES = 16 * 1024 * 1024
# Status updates well inside wal_sender_timeout (60 s by default), and while idle.
STATUS_INTERVAL_S = 10.0
IDLE_WAIT_S = 1.0
RECONNECT_MIN_S = 0.25
RECONNECT_MAX_S = 30.0


class ReplicatorError(Exception):
    """Replication cannot continue without an operator (e.g. a resync is needed but ZERO_AUTO_RESET is off)."""


@dataclass(frozen=True)
class ReplicatorStatistics:
    state_version: str
    watermark_lsn: int
    transactions: int
    rows: int
    reconnects: int
    resyncs: int


@dataclass(frozen=True)
class SlotHealth:
    """How far the slot holds Postgres back, in bytes of WAL (zero-cache's slot metrics)."""

    slot: str
    wal_status: str
    retained_wal_bytes: int  # WAL Postgres keeps for the slot (current LSN - restart_lsn)
    unconfirmed_bytes: int  # WAL zcache has not confirmed as flushed (current LSN - confirmed_flush_lsn)
    replica_lag_bytes: int  # WAL written upstream since the replica's watermark


class VersionNotifier:
    """Latest-only broadcast of the replica's state version."""

    def __init__(self, version: str = "") -> None:
        self._version = version
        self._changed = trio.Event()

    @property
    def version(self) -> str:
        return self._version

    def publish(self, version: str) -> None:
        if version != self._version:
            self._version = version
            self._changed.set()
            self._changed = trio.Event()

    async def wait_newer_than(self, version: str) -> str:
        """Returns the current version as soon as it differs from `version` (LexiVersions order as strings)."""
        while self._version <= version:
            await self._changed.wait()
        return self._version


class Replicator:
    def __init__(self, config: ZeroConfig) -> None:
        if config.upstream.db is None:
            raise ValueError("the replicator needs an upstream database")
        self._dsn = config.upstream.db
        self._replica_path = Path(config.replica.file)
        self._shard = upstream.ShardId(config.app.id, config.shard.num)
        self._app_publications = tuple(config.app.publications)
        self._copy_workers = config.initial_sync.table_copy_workers
        self._auto_reset = config.auto_reset
        self._ddl_prefix = upstream.ddl_message_prefix(self._shard)
        self.versions = VersionNotifier()
        self._writer: _native.ReplicaWriter | None = None
        # Read from the writer only between batches: its getters take the lock that a batch holds
        # while it is applied in a worker thread, and statistics() must never wait for that.
        self._state_version = ""
        self._watermark_lsn = 0
        self._slot = ""
        self._setup: upstream.ShardSetup | None = None
        self._transactions = 0
        self._rows = 0
        self._reconnects = 0
        self._resyncs = 0

    def statistics(self) -> ReplicatorStatistics:
        return ReplicatorStatistics(
            state_version=self._state_version,
            watermark_lsn=self._watermark_lsn,
            transactions=self._transactions,
            rows=self._rows,
            reconnects=self._reconnects,
            resyncs=self._resyncs,
        )

    async def slot_health(self) -> SlotHealth:
        """Reads the slot's position upstream; raises ReplicatorError before the replica exists."""
        if self._writer is None:
            raise ReplicatorError("the replica is not ready yet")
        slot, watermark = self._slot, self._watermark_lsn

        def query() -> SlotHealth:
            with psycopg.connect(self._dsn, autocommit=True, connect_timeout=10) as conn:
                row = conn.execute(
                    """SELECT wal_status,
                              pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::int8,
                              pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::int8,
                              pg_wal_lsn_diff(pg_current_wal_lsn(), %s::pg_lsn)::int8
                       FROM pg_replication_slots WHERE slot_name = %s""",
                    [_native.format_lsn(watermark), slot],
                ).fetchone()
            if row is None:
                raise ReplicatorError(f"replication slot {slot} does not exist upstream")
            return SlotHealth(slot, str(row[0]), int(row[1]), int(row[2]), int(row[3]))

        return await trio.to_thread.run_sync(query)

    async def run(self, *, task_status: trio.TaskStatus[Replicator] = trio.TASK_STATUS_IGNORED) -> None:
        self._setup = await trio.to_thread.run_sync(self._set_up_upstream)
        writer = await self._open_or_sync()
        task_status.started(self)
        backoff = RECONNECT_MIN_S
        while True:
            try:
                await self._stream(writer)
            except SlotUnusableError as e:
                writer = await self._resync(str(e))
            except _native.ResyncRequiredError as e:
                writer = await self._resync(str(e))
            except (ReplicationStreamError, psycopg.OperationalError) as e:
                self._reconnects += 1
                log.warning("replication interrupted (%s); reconnecting in %.2fs", e, backoff)
                await trio.to_thread.run_sync(writer.reset_session)
                await trio.sleep(backoff)
                backoff = min(backoff * 2, RECONNECT_MAX_S)
                continue
            backoff = RECONNECT_MIN_S

    def _set_up_upstream(self) -> upstream.ShardSetup:
        with psycopg.connect(self._dsn, autocommit=True, connect_timeout=10) as conn:
            upstream.check_upstream(conn)
            return upstream.setup_shard(conn, self._shard, self._app_publications)

    async def _open_or_sync(self) -> _native.ReplicaWriter:
        problem = await trio.to_thread.run_sync(self._replica_problem)
        if problem is None:
            writer = await trio.to_thread.run_sync(_native.ReplicaWriter, str(self._replica_path), self._ddl_prefix)
            # A sync interrupted after its replica was in place but before it cleaned up upstream
            # leaves the previous slot behind.
            await trio.to_thread.run_sync(lambda: drop_stale_slots(self._dsn, self._shard, keep=writer.slot))
            log.info("replica %s at version %s, resuming at %s", self._replica_path, writer.state_version, _native.format_lsn(writer.watermark_lsn))
            return self._use(writer)
        log.info("initial sync needed: %s", problem)
        return await self._initial_sync()

    def _replica_problem(self) -> str | None:
        """Why the replica file cannot be resumed, or None if it can."""
        if not self._replica_path.exists():
            return f"no replica at {self._replica_path}"
        try:
            writer = _native.ReplicaWriter(str(self._replica_path), self._ddl_prefix)
        except _native.NativeError as e:
            return f"the replica at {self._replica_path} is unusable ({e})"
        assert self._setup is not None
        if sorted(writer.publications) != sorted(self._setup.publications):
            return f"the replica follows publications {writer.publications}, upstream now has {list(self._setup.publications)}"
        if not writer.slot.startswith(self._shard.slot_prefix):
            return f"the replica's slot {writer.slot} belongs to another app or shard"
        with psycopg.connect(self._dsn, autocommit=True, connect_timeout=10) as conn:
            row = conn.execute(
                "SELECT wal_status FROM pg_replication_slots WHERE slot_name = %s", [writer.slot]
            ).fetchone()
        if row is None:
            return f"replication slot {writer.slot} no longer exists upstream"
        if row[0] == "lost":
            return f"replication slot {writer.slot} was invalidated (its WAL is gone)"
        return None

    async def _initial_sync(self) -> _native.ReplicaWriter:
        assert self._setup is not None
        report = await run_initial_sync(self._dsn, self._setup, self._replica_path, copy_workers=self._copy_workers)
        log.info(
            "replica ready: %d tables, %d rows in %.2fs (%.0f rows/s)",
            report.tables,
            report.rows,
            report.seconds,
            report.rows / report.seconds if report.seconds > 0 else math.inf,
        )
        writer = await trio.to_thread.run_sync(_native.ReplicaWriter, str(self._replica_path), self._ddl_prefix)
        return self._use(writer)

    async def _resync(self, reason: str) -> _native.ReplicaWriter:
        if not self._auto_reset:
            raise ReplicatorError(f"{reason}; a resync is needed and ZERO_AUTO_RESET is off")
        self._resyncs += 1
        log.warning("resyncing the replica: %s", reason)
        self._setup = await trio.to_thread.run_sync(self._set_up_upstream)
        return await self._initial_sync()

    def _use(self, writer: _native.ReplicaWriter) -> _native.ReplicaWriter:
        self._writer = writer
        self._note_progress(writer)
        return writer

    def _note_progress(self, writer: _native.ReplicaWriter) -> None:
        self._state_version = writer.state_version
        self._watermark_lsn = writer.watermark_lsn
        self._slot = writer.slot
        self.versions.publish(self._state_version)

    async def _stream(self, writer: _native.ReplicaWriter) -> None:
        assert self._setup is not None
        start = StreamStart(writer.slot, writer.watermark_lsn, tuple(writer.publications))
        stream = await ReplicationStream.open(self._dsn, start)
        log.info("streaming from slot %s at %s", start.slot, _native.format_lsn(start.start_lsn))
        try:
            acked = writer.watermark_lsn
            last_status = time.monotonic()
            while True:
                frames = await stream.read_batch(max_frames=MAX_BATCH_FRAMES, max_bytes=MAX_BATCH_BYTES, timeout_s=IDLE_WAIT_S)
                reply = False
                if frames:
                    outcome = await trio.to_thread.run_sync(writer.apply_frames, frames)
                    self._transactions += outcome.transactions
                    self._rows += outcome.rows
                    if outcome.schema_changed:
                        log.info("schema change applied at version %s", outcome.state_version)
                    self._note_progress(writer)
                    reply = outcome.reply_requested
                    ack = outcome.ack_lsn
                else:
                    ack = writer.watermark_lsn
                if reply or ack > acked or time.monotonic() - last_status >= STATUS_INTERVAL_S:
                    await stream.send_status(write_lsn=ack, flush_lsn=ack, apply_lsn=ack)
                    acked = max(acked, ack)
                    last_status = time.monotonic()
        finally:
            with trio.CancelScope(shield=True):
                await stream.aclose()
