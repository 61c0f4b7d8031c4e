"""The replicator: keeps the SQLite replica equal to upstream.

`Replicator.run` owns the whole path and its failures:

1. check upstream (`wal_level`, rights) and set up the shard (schemas, publications, DDL trigger);
2. open the replica, or build one with an initial sync when there is none, or when it no longer
   matches upstream (another app/shard or publications, or its slot is gone or invalidated);
3. stream from the replica's watermark. One task receives frames into a bounded backlog while
   another applies what has arrived (the whole backlog as one batch, by Rust in a worker thread)
   and publishes the new state version at once; a third makes what was applied durable (one sync
   of the replica's WAL for however many commits came meanwhile, in a worker thread) and then
   confirms it upstream. So Postgres keeps decoding and sending while a batch is applied, a
   backlog is applied in large batches, and no change waits for the disk on its way to clients.
   While a batch is applied and the next one has started filling, the receiver reads the socket
   at most every RECEIVE_PAUSE_S. The applying task never waits for that pause: coming back for
   more, it ends the pause and takes what the socket holds by then too (e.g. the rest of a
   transaction whose Commit had not been read yet).

Invariants:
- Upstream is told `flush = ack_lsn` only once those transactions are on the disk (committed,
  then the WAL synced), so no crash loses what upstream dropped: the next start resumes from the
  replica's watermark and Rust skips any transaction it already has. A kill -9 loses nothing
  committed; a power loss may take the replica back to an earlier commit, never before what was
  confirmed. A keepalive that asks for a reply is answered at once by the receiving task, with
  the last durable LSN (not after the batches before it).
- A dropped connection is retried with exponential backoff from the durable watermark.
- `ResyncRequiredError` (a schema change the stream cannot express, a missing or invalidated slot)
  leads to a fresh initial sync when `ZERO_AUTO_RESET` is on, and stops the replicator otherwise.
- Version notifications are latest-only: a slow reader sees the newest version, not a backlog.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import psycopg
import trio

from zcache import _native
from zcache.change_source import upstream
from zcache.change_source.initial_sync import drop_stale_slots, run_initial_sync
from zcache.change_source.stream import (
    ReplicationStream,
    ReplicationStreamError,
    SlotUnusableError,
    StreamStart,
    wants_reply,
)
from zcache.config import ZeroConfig

log = logging.getLogger("zcache.replicator")

# The backlog of received frames (and so a batch) is capped: memory stays bounded and one batch is
# applied in well under a second.
MAX_BATCH_FRAMES = 20_000
MAX_BATCH_BYTES = 8 * 1024 * 1024
# While a batch is being applied and the next one has started, the receiver reads the socket at
# most this often: the walsender sends a few frames at a time, and waking for each few costs more
# than reading them.
RECEIVE_PAUSE_S = 0.005
# Status updates well inside wal_sender_timeout (60 s by default), and while idle.
STATUS_INTERVAL_S = 10.0
# How long the confirming task lets commits gather before it syncs them to the disk.
CONFIRM_DELAY_S = 0.01
# An idle applying task still looks for requested indexes this often.
IDLE_WAIT_S = 1.0
# Secondary indexes the view syncer may ask the writer for (QueryEngine.index_suggestions).
MAX_INDEXES = 64
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
    receive_pauses: int
    receive_pauses_ended_by_apply: int


@dataclass
class _ReceiveCounts:
    """The receive pause's counters, across reconnections."""

    pauses: int = 0  # the receiving task paused while a batch was applied
    ended_by_apply: int = 0  # the applying task came back during the pause and ended it


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


class _Backlog:
    """Frames received but not applied yet. The receiving task adds what arrives; the applying
    task takes all of it as its next batch. Bounded: when full, the receiver waits until the
    backlog is taken, so the socket is not read and the walsender is held back (backpressure)."""

    def __init__(self, max_frames: int, max_bytes: int, counts: _ReceiveCounts | None = None) -> None:
        self._max_frames = max_frames
        self._max_bytes = max_bytes
        self._frames: list[bytes] = []
        self._bytes = 0
        self._arrived = trio.Event()
        self._taken = trio.Event()
        # The applying task took frames and has not come back for more yet.
        self.applying = False
        # The receiver's pause, ended by the applying task coming back; that task then waits for
        # the receiver's next `put` (`_handed_over`), which brings what the socket held by then.
        self._pausing = False
        self._back = trio.Event()
        self._handed_over: trio.Event | None = None
        self.counts = counts if counts is not None else _ReceiveCounts()

    def room(self) -> tuple[int, int]:
        """How many more frames, and bytes, the backlog takes."""
        return self._max_frames - len(self._frames), self._max_bytes - self._bytes

    async def put(self, frames: list[bytes]) -> None:
        """Adds `frames` (at most `room()`), then waits while the backlog is full."""
        if frames:
            self._frames.extend(frames)
            self._bytes += sum(map(len, frames))
            self._arrived.set()
        if self._handed_over is not None:
            self._handed_over.set()
            self._handed_over = None
        while min(self.room()) <= 0:
            await self._taken.wait()

    def pause_helps(self) -> bool:
        """Whether the receiver should pause before reading more: only while a batch is applied
        and the next one has started. While the next one is empty, what arrives is what the
        applying task needs as soon as it is back (the rest of a transaction whose Commit has not
        been read, or the next transaction): it is read at once."""
        return self.applying and bool(self._frames)

    async def pause(self, timeout_s: float) -> bool:
        """Waits up to `timeout_s`, or until the applying task comes back for more. Returns
        whether it came back: it then waits for the receiver's next `put`, which must bring what
        the socket holds without waiting for more."""
        self.counts.pauses += 1
        self._back = trio.Event()
        self._pausing = True
        try:
            with trio.move_on_after(timeout_s):
                await self._back.wait()
        finally:
            self._pausing = False
        if self._back.is_set():
            self.counts.ended_by_apply += 1
        return self._back.is_set()

    async def take(self, timeout_s: float) -> list[bytes]:
        """Every frame in the backlog, waiting up to `timeout_s` for one (else []). During a
        receive pause, also what the receiver reads from the socket then (one read, no waiting)."""
        self.applying = False
        if self._pausing:
            self._handed_over = trio.Event()
            self._back.set()
            await self._handed_over.wait()
        with trio.move_on_after(timeout_s):
            await self._arrived.wait()
        frames, self._frames, self._bytes = self._frames, [], 0
        self.applying = bool(frames)
        self._arrived = trio.Event()
        self._taken.set()
        self._taken = trio.Event()
        return frames


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
        # What may be confirmed upstream: everything up to it is on the replica's disk.
        self._durable_lsn = 0
        # What the next WAL sync makes durable: the writer's `ack_lsn` after its last batch.
        self._committed_lsn = 0
        self._committed = trio.Event()  # set when there is something new to confirm
        self._setup: upstream.ShardSetup | None = None
        self._transactions = 0
        self._rows = 0
        self._reconnects = 0
        self._resyncs = 0
        self._receive_counts = _ReceiveCounts()
        # Index requests (table, columns): all that were made (carried into a resynced replica)
        # and those the writer has yet to build, between two batches.
        self._indexes: list[tuple[str, list[str]]] = []
        self._pending_indexes: list[tuple[str, list[str]]] = []

    def request_indexes(self, requests: list[tuple[str, list[str]]]) -> None:
        """Asks the writer to build these indexes between two batches (deduplicated, at most
        MAX_INDEXES in all); they are recorded in the replica and survive restarts and resyncs."""
        for table, columns in requests:
            request = (table, list(columns))
            if request not in self._indexes and len(self._indexes) < MAX_INDEXES:
                self._indexes.append(request)
                self._pending_indexes.append(request)

    async def _build_indexes(self, writer: _native.ReplicaWriter) -> None:
        pending, self._pending_indexes = self._pending_indexes, []
        for request in pending:
            try:
                (built,) = await trio.to_thread.run_sync(writer.add_indexes, [request])
            except _native.SchemaError as e:
                log.warning("index on %s %s not built: %s", request[0], request[1], e)
                continue
            if built:
                log.info("built an index on %s %s", request[0], request[1])

    def statistics(self) -> ReplicatorStatistics:
        return ReplicatorStatistics(
            state_version=self._state_version,
            watermark_lsn=self._watermark_lsn,
            transactions=self._transactions,
            rows=self._rows,
            reconnects=self._reconnects,
            resyncs=self._resyncs,
            receive_pauses=self._receive_counts.pauses,
            receive_pauses_ended_by_apply=self._receive_counts.ended_by_apply,
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
        recorded = writer.indexes()
        # A new replica (resync) lacks the indexes asked for before: build them again.
        self._pending_indexes = [i for i in self._indexes if i not in recorded]
        self._indexes += [i for i in recorded if i not in self._indexes]
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
        wal = writer.wal_sync()
        # The watermark may be a commit not synced yet (before a reconnect, or a restart that
        # was not a power loss): on the disk before it can be confirmed.
        await trio.to_thread.run_sync(wal.sync)
        stream = await ReplicationStream.open(self._dsn, start)
        log.info("streaming from slot %s at %s", start.slot, _native.format_lsn(start.start_lsn))
        self._durable_lsn = self._committed_lsn = start.start_lsn
        backlog = _Backlog(MAX_BATCH_FRAMES, MAX_BATCH_BYTES, self._receive_counts)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._receive, stream, backlog)
                nursery.start_soon(self._confirm, stream, wal)
                await self._apply(writer, backlog)
        except BaseExceptionGroup as group:
            # One task fails and the other is cancelled: raise that failure as itself, for run().
            if len(group.exceptions) == 1:
                raise group.exceptions[0] from None
            raise
        finally:
            with trio.CancelScope(shield=True):
                await stream.aclose()

    async def _receive(self, stream: ReplicationStream, backlog: _Backlog) -> None:
        while True:
            wait_s = math.inf
            if backlog.pause_helps() and await backlog.pause(RECEIVE_PAUSE_S):
                # The applying task ended the pause and waits for this read: what has arrived, now.
                wait_s = 0.0
            max_frames, max_bytes = backlog.room()
            frames = await stream.read_batch(max_frames=max_frames, max_bytes=max_bytes, timeout_s=wait_s)
            if frames and wants_reply(frames[-1]):
                await stream.send_status(self._durable_lsn)
            await backlog.put(frames)

    async def _apply(self, writer: _native.ReplicaWriter, backlog: _Backlog) -> None:
        while True:
            frames = await backlog.take(IDLE_WAIT_S)
            if frames:
                outcome = await trio.to_thread.run_sync(writer.apply_frames, frames)
                del frames  # not kept while the next batch arrives
                self._transactions += outcome.transactions
                self._rows += outcome.rows
                if outcome.schema_changed:
                    log.info("schema change applied at version %s", outcome.state_version)
                self._note_progress(writer)
                self._committed_lsn = max(self._committed_lsn, outcome.ack_lsn)
                if outcome.reply_requested or self._committed_lsn > self._durable_lsn:
                    self._committed.set()
            if self._pending_indexes:
                await self._build_indexes(writer)

    async def _confirm(self, stream: ReplicationStream, wal: _native.ReplicaWalSync) -> None:
        """Syncs what the applying task committed and confirms it upstream: as soon as there is
        something new (one sync covers every commit made before it starts), and at least every
        STATUS_INTERVAL_S."""
        while True:
            with trio.move_on_after(STATUS_INTERVAL_S):
                await self._committed.wait()
            self._committed = trio.Event()
            # The sync waits a moment: its disk write then does not compete with the commit's way
            # to the clients (the engine's advance, the CVR flush), and it covers more commits.
            await trio.sleep(CONFIRM_DELAY_S)
            committed = self._committed_lsn
            if committed > self._durable_lsn:
                await trio.to_thread.run_sync(wal.sync)
                self._durable_lsn = committed
            await stream.send_status(self._durable_lsn)
