"""Initial sync: a new replica from a consistent snapshot of every published table.

1. A replication connection creates the slot with `CREATE_REPLICATION_SLOT … LOGICAL pgoutput
   (SNAPSHOT 'export')`. The server returns the slot's consistent point (where streaming will
   start) and the name of a snapshot exactly at that point, valid while the replication connection
   stays open and idle.
2. The published schema is read inside that snapshot, so the replica's tables match the data.
3. Tables are copied in parallel (`ZERO_INITIAL_SYNC_TABLE_COPY_WORKERS` connections, each in a
   REPEATABLE READ transaction on the exported snapshot), largest first, with
   `COPY … TO STDOUT (FORMAT binary)`, in one Rust call (`_native.InitialSync.copy_tables`, GIL
   released): Rust's worker threads connect with the parameters psycopg resolved for the schema
   connection (host, port, user, password, database), decode the COPY output in 1 MiB chunks
   and queue the decoded rows for Rust's writer thread, which inserts them into a staging SQLite
   file while the workers go on reading (a bounded queue: they wait when the writer falls
   behind). The Rust
   client speaks no TLS: when the upstream connection uses TLS, Python's worker threads read the
   COPY output with libpq instead and hand the same chunks over (`copy_chunks`).
4. Rust builds the indexes, records the replication config and state, and renames the staging file
   over the replica atomically. Only then is the sync recorded upstream (`<shard>.replicas`) and
   older slots of the shard dropped.

A crash at any point leaves the previous replica (or none) and a stale staging file that the next
attempt removes; the new slot is dropped on failure, or found and dropped as stale next time.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import trio
from psycopg import pq, sql

from zcache import _native
from zcache.change_source import upstream

log = logging.getLogger("zcache.initial_sync")

# Bytes of COPY output handed to Rust per call: large enough to amortise the call, small enough to
# keep the worker's memory flat. Postgres sends a CopyData message per row, so the messages are
# appended to one buffer (no object per row survives the loop).
_BYTES_PER_CALL = 1 << 20
_PROGRESS_INTERVAL_S = 2.0


class InitialSyncError(Exception):
    """The initial sync failed; the previous replica (if any) is untouched."""


@dataclass
class _Progress:
    sync: _native.InitialSync
    tables_total: int
    rows_estimate: int
    # Tables copied through psycopg (the TLS fallback); Rust counts its own.
    python_tables_done: int = 0
    started: float = field(default_factory=time.monotonic)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def tables_done(self) -> int:
        return self.python_tables_done + self.sync.tables_done

    def line(self) -> str:
        rows = self.sync.rows
        elapsed = time.monotonic() - self.started
        rate = rows / elapsed if elapsed > 0 else 0.0
        remaining = max(self.rows_estimate - rows, 0)
        eta = f"{remaining / rate:.1f}s" if rate > 0 and self.rows_estimate else "?"
        return (
            f"initial sync: {self.tables_done}/{self.tables_total} tables, {rows} rows, "
            f"{rate:,.0f} rows/s, ETA {eta}"
        )


@dataclass(frozen=True)
class InitialSyncReport:
    slot: str
    consistent_point: int
    tables: int
    rows: int
    seconds: float


def _slot_name(setup: upstream.ShardSetup) -> str:
    return f"{setup.shard.slot_prefix}{time.time_ns() // 1_000_000}"


def _create_slot(dsn: str, slot: str) -> tuple[psycopg.Connection[tuple[object, ...]], int, str]:
    conn = psycopg.connect(dsn, replication="database", autocommit=True, connect_timeout=10)
    try:
        row = conn.execute(
            sql.SQL("CREATE_REPLICATION_SLOT {} LOGICAL pgoutput (SNAPSHOT 'export')").format(sql.Identifier(slot))
        ).fetchone()
    except BaseException:
        conn.close()
        raise
    assert row is not None
    _, consistent_point, snapshot, _ = row
    return conn, _native.parse_lsn(str(consistent_point)), str(snapshot)


def _snapshot_connection(dsn: str, snapshot: str) -> psycopg.Connection[tuple[object, ...]]:
    conn = psycopg.connect(dsn, autocommit=True, connect_timeout=10)
    conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
    conn.execute(sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(snapshot)))
    return conn


def _rust_connect_params(conn: psycopg.Connection[tuple[object, ...]]) -> dict[str, object] | None:
    """What Rust's copy workers need to connect as `conn` did (libpq has already applied the DSN,
    the PG* environment and the passfile), or None when `conn` uses TLS, which they do not speak."""
    if conn.pgconn.ssl_in_use:
        return None
    info = conn.info
    return {"host": info.host, "port": info.port, "user": info.user, "password": info.password or None, "dbname": info.dbname}


def _row_estimates(conn: psycopg.Connection[tuple[object, ...]], oids: list[int]) -> dict[int, int]:
    rows = conn.execute("SELECT oid::int8, greatest(reltuples, 0)::int8 FROM pg_class WHERE oid = ANY(%s)", [oids])
    return {int(oid): int(n) for oid, n in rows.fetchall()}


def _copy_table(dsn: str, snapshot: str, sync: _native.InitialSync, oid: int, progress: _Progress) -> int:
    """Runs in a worker thread: one table's COPY into the staging replica."""
    statement = sync.copy_statement(oid)
    with _snapshot_connection(dsn, snapshot) as conn:
        pg = conn.pgconn
        pg.send_query(statement.encode())
        result = pg.get_result()
        if result is None or result.status != pq.ExecStatus.COPY_OUT:
            message = result.error_message.decode(errors="replace") if result is not None else "no result"
            raise InitialSyncError(f"{statement} failed: {message.strip()}")
        data = bytearray()
        get_copy_data = pg.get_copy_data
        while True:
            n, message = get_copy_data(0)
            if n < 0:
                break
            data += message
            if len(data) >= _BYTES_PER_CALL:
                sync.copy_chunks(oid, [data])
                data = bytearray()
        if data:
            sync.copy_chunks(oid, [data])
        while (result := pg.get_result()) is not None:
            if result.status != pq.ExecStatus.COMMAND_OK:
                raise InitialSyncError(f"{statement} failed: {result.error_message.decode(errors='replace').strip()}")
        conn.execute("COMMIT")
    rows = sync.finish_table(oid)
    with progress.lock:
        progress.python_tables_done += 1
    return rows


async def _report_progress(progress: _Progress) -> None:
    while True:
        await trio.sleep(_PROGRESS_INTERVAL_S)
        log.info("%s", progress.line())


async def run_initial_sync(
    dsn: str,
    setup: upstream.ShardSetup,
    replica_path: Path,
    *,
    copy_workers: int,
) -> InitialSyncReport:
    """Builds a new replica at `replica_path` (see the module docstring)."""
    started = time.monotonic()
    slot = _slot_name(setup)
    replication_conn, consistent_point, snapshot = await trio.to_thread.run_sync(_create_slot, dsn, slot)
    log.info("created replication slot %s at %s", slot, _native.format_lsn(consistent_point))
    try:
        with await trio.to_thread.run_sync(_snapshot_connection, dsn, snapshot) as conn:
            schema = upstream.published_schema(conn, setup.shard)
            oids = [int(t["oid"]) for t in schema["tables"]]
            estimates = _row_estimates(conn, oids)
            rust_params = _rust_connect_params(conn)
        staging = replica_path.with_name(replica_path.name + ".staging")
        sync = await trio.to_thread.run_sync(
            lambda: _native.InitialSync(
                str(staging),
                json.dumps(schema),
                consistent_point=consistent_point,
                slot=slot,
                publications=list(setup.publications),
                app_id=setup.shard.app_id,
                shard_num=setup.shard.shard_num,
                ddl_detection=setup.ddl_detection,
            )
        )
        progress = _Progress(sync, tables_total=len(oids), rows_estimate=sum(estimates.values()))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_report_progress, progress)
            largest_first = sorted(oids, key=lambda o: estimates.get(o, 0), reverse=True)
            if rust_params is not None:
                await trio.to_thread.run_sync(
                    lambda: sync.copy_tables(largest_first, snapshot=snapshot, workers=max(1, copy_workers), **rust_params)
                )
            else:
                log.info("initial sync: upstream uses TLS, which the Rust copier does not speak; copying through psycopg")
                limiter = trio.CapacityLimiter(max(1, copy_workers))
                async with trio.open_nursery() as copies:
                    for oid in largest_first:
                        copies.start_soon(
                            lambda o=oid: trio.to_thread.run_sync(_copy_table, dsn, snapshot, sync, o, progress, limiter=limiter)
                        )
            nursery.cancel_scope.cancel()
        rows = sync.rows
        log.info("%s; building indexes", progress.line())
        await trio.to_thread.run_sync(sync.finish, str(replica_path))
    except BaseException:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(replication_conn.close)
            await trio.to_thread.run_sync(_drop_slot_quietly, dsn, slot)
        raise
    await trio.to_thread.run_sync(replication_conn.close)
    await trio.to_thread.run_sync(_record_sync, dsn, setup, slot, consistent_point, schema)
    seconds = time.monotonic() - started
    log.info("initial sync done in %.2fs", seconds)
    return InitialSyncReport(slot, consistent_point, len(oids), rows, seconds)


def _drop_slot_quietly(dsn: str, slot: str) -> None:
    try:
        with psycopg.connect(dsn, autocommit=True, connect_timeout=10) as conn:
            conn.execute(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = %s AND NOT active",
                [slot],
            )
    except psycopg.Error as e:
        log.warning("could not drop replication slot %s after a failed sync: %s", slot, e)


def _record_sync(dsn: str, setup: upstream.ShardSetup, slot: str, consistent_point: int, schema: dict[str, object]) -> None:
    """Records the sync in `<shard>.replicas` and drops the shard's older, inactive slots."""
    with psycopg.connect(dsn, autocommit=True, connect_timeout=10) as conn:
        upstream.record_replica(conn, setup.shard, slot=slot, version=_native.lexi_version(consistent_point), schema=schema)
    drop_stale_slots(dsn, setup.shard, keep=slot)


def drop_stale_slots(dsn: str, shard: upstream.ShardId, *, keep: str) -> None:
    """Drops the shard's inactive slots other than `keep`: leftovers of syncs that were replaced
    or interrupted, which would otherwise pin upstream WAL forever."""
    with psycopg.connect(dsn, autocommit=True, connect_timeout=10) as conn:
        stale = conn.execute(
            "SELECT slot_name FROM pg_replication_slots WHERE slot_name LIKE %s AND slot_name <> %s AND NOT active",
            [shard.slot_prefix.replace("_", r"\_") + "%", keep],
        ).fetchall()
        for (name,) in stale:
            conn.execute("SELECT pg_drop_replication_slot(%s)", [name])
            log.info("dropped stale replication slot %s", name)
