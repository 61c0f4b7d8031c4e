"""The CVR store: client view records in Postgres (``ZERO_CVR_DB``), schema ``<app>_<shard>/cvr``.

Access is through a small pool of synchronous psycopg connections, each call running in a
worker thread (``trio.to_thread.run_sync``) under one CapacityLimiter sized by
``ZERO_CVR_MAX_CONNS``: at most that many connections exist and work at once.

Ownership: loading a group makes this process its owner (``owner`` = task id, ``grantedAt`` =
the load time) unless another process was granted it later. A flush is one statement (one
round trip, one transaction) for all its groups: it locks their instance rows (``SELECT … FOR
UPDATE``); a group that another process owns now, or whose stored version is not the one this
process expects, is not written and is returned as rejected (its clients get ``Rehome``).
Everything else — the instances, clients, queries, desires and rows of every group — is
written by data-modifying CTEs over ``unnest`` arrays, never a statement per row.

``rows.refCounts``: zero-cache counts a row's references per query; zcache's query engine
counts them per client group, so a live row holds ``{"group": 1}``. ``NULL`` marks a tombstone,
as in zero-cache. Rows are stored with ``schema`` ``''`` and ``table`` the replica's table name
(``file``, ``zero_0.clients``), as zero-cache names them.

Row records written after the poke: a flush with more than ``defer_rows_above`` row records
(100, as zero-cache's) writes its instance, clients, queries and desires at once, and leaves
its rows to the row writer (`write_deferred_rows`, a task of the view syncer), so a client does
not wait for the ~100 ms Postgres takes to record a 10k-row hydration. Until a group's deferred
records are written, its later flushes defer theirs too (they are written in version order),
and reading its rows (`row_versions`, `catchup_rows`) waits for them. ``rowsVersion`` holds the
instance version up to which the row records are complete: the writer sets it with the rows it
writes (in one transaction), a flush that writes its rows sets it with them. A load takes a
group (ownership) only when its rows are complete; otherwise it looks again for a few seconds
(another process's writer finishing), then refuses the group, as zero-cache does
(:class:`CVRRowsBehind`, ``ClientNotFound`` for the client): records lost to a crash or a failed
write leave no way to tell its clients what they must delete. Since a group is taken only with
its rows complete, the previous owner has nothing left to write for it.

Loads, and flushes of one group (`flush_one`), asked for while others run go out together
(`Coalescer`, a few batches at once): 1,000 groups connecting at once cost a few statements.
If such a shared statement fails on one group's data, each of its groups is retried alone, so
that only that group's caller gets the error; a database that fails fails them all.

Errors: a database that cannot be reached or fails mid-call raises :class:`CVRStoreUnavailable`;
a flush that fails leaves the database as it was (one transaction).
"""

from __future__ import annotations

import json
import logging
import queue
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import psycopg
import trio
from psycopg import sql
from psycopg.types.json import Jsonb

from zcache import _native
from zcache.cvr.model import (
    CatchupRow,
    CVRFlush,
    CVRSnapshot,
    CVRVersion,
    DesireRecord,
    InstanceRecord,
    QueryRecord,
)
from zcache.cvr.schema import cvr_schema, ensure_schema
from zcache.coalesce import Coalescer

log = logging.getLogger("zcache.cvr")

T = TypeVar("T")

CONNECT_TIMEOUT_S = 5
# A statement that waits longer than this (a lock held by a stuck process, a stalled server)
# fails instead of holding a pooled connection and the group's clients forever.
STATEMENT_TIMEOUT_MS = 30_000
LIVE_REF_COUNTS = Jsonb({"group": 1})
# Loads and single-group flushes: batches running at once, and groups per batch.
COALESCED_CALLS = 2
COALESCED_MAX = 256
# Row records of a flush with more rows than this are written by the row writer, after the poke.
DEFER_ROWS_ABOVE = 100
# Deferred row records held at most: past this a group's flush waits for its earlier ones to be
# written, then writes its own at once.
MAX_DEFERRED_ROWS = 250_000
# A writer that cannot reach the database tries again after this long.
DEFERRED_RETRY_S = 1.0
# On shutdown the writer keeps writing what is deferred for at most this long.
DEFERRED_DRAIN_S = 5.0
# A load finding another process's row records behind looks again this often, this many times.
ROWS_BEHIND_RETRY_S = 0.25
ROWS_BEHIND_ATTEMPTS = 20


class CVRStoreUnavailable(Exception):
    """The CVR database could not be reached or failed during a call."""


class CVRRowsBehind(Exception):
    """A group's row records never caught up with its instance: its clients must start over."""


def _ms(value: Any) -> float | None:
    return None if value is None else float(value)


def _version(text: str | None) -> CVRVersion | None:
    return None if text is None else CVRVersion.parse(text)


@dataclass
class _DeferredRows:
    """One group's row records waiting for the row writer, in version order."""

    entries: list[tuple[str, _native.RowChanges, bool]] = field(default_factory=list)  # (version, rows, rows_new)
    rows: int = 0
    through: str = ""  # the group's latest version flushed meanwhile: its rowsVersion once written
    written: trio.Event = field(default_factory=trio.Event)


class CVRStore:
    def __init__(self, dsn: str, *, app_id: str, shard_num: int, owner: str, max_conns: int) -> None:
        self._dsn = dsn
        self._app_id = app_id
        self._shard_num = shard_num
        self.owner = owner
        self._schema = sql.Identifier(cvr_schema(app_id, shard_num))
        self._limiter = trio.CapacityLimiter(max_conns)
        self._idle: queue.SimpleQueue[psycopg.Connection] = queue.SimpleQueue()
        self._closed = False
        self._flush_sql: dict[str, sql.Composed] = {}
        # A few batches at once, each as large as what waits: a burst of connecting groups
        # becomes a few statements, a lone group's call goes out at once.
        self._loads: Coalescer[tuple[str, float], CVRSnapshot] = Coalescer(
            self._load_batch, concurrency=COALESCED_CALLS, max_batch=COALESCED_MAX, key=lambda r: r[0]
        )
        self._flushes: Coalescer[CVRFlush, bool] = Coalescer(
            self._flush_batch, concurrency=COALESCED_CALLS, max_batch=COALESCED_MAX, key=lambda f: f.instance.group_id
        )
        self.defer_rows_above = DEFER_ROWS_ABOVE
        # Deferred row records by group, in the order the writer takes them.
        self._deferred: dict[str, _DeferredRows] = {}
        self._deferred_rows = 0
        self._rows_deferred = trio.Event()
        self._writer_running = False
        self.deferred_flushes = 0  # flushes whose row records were deferred (statistics)
        self.rows_behind_attempts = ROWS_BEHIND_ATTEMPTS
        self._lost: set[str] = set()  # groups whose deferred records could not be written
        # Told when a group's deferred row records could not be written: its clients must start
        # over (the group's next load is refused).
        self.on_rows_lost: Callable[[str, Exception], None] | None = None

    # --- plumbing ---------------------------------------------------------------------------

    def _q(self, text: str) -> sql.Composed:
        return sql.SQL(text).format(s=self._schema)

    def _connect(self) -> psycopg.Connection:
        return psycopg.connect(
            self._dsn,
            autocommit=True,
            connect_timeout=CONNECT_TIMEOUT_S,
            # A poke waits for its flush. Without waiting for the WAL to reach the disk, a crash
            # of Postgres itself (not of zcache) may lose the last flushes; clients whose cookie
            # is then ahead of their CVR are told so (InvalidConnectionRequestBaseCookie) and
            # sync again from scratch, which is correct, only slower. A lost ownership grant
            # (`load`) makes this process's next flush of the group fail its check (Rehome).
            options=f"-c statement_timeout={STATEMENT_TIMEOUT_MS} -c synchronous_commit=off",
            application_name="zcache-cvr",
        )

    def _call(self, fn: Callable[[psycopg.Connection], T], retry_stale: bool) -> T:
        """Runs in a worker thread: checks a connection out of the pool (or opens one)."""
        try:
            conn = self._idle.get_nowait()
            pooled = True
        except queue.Empty:
            conn, pooled = None, False
        try:
            if conn is None:
                conn = self._connect()
            result = fn(conn)
        except psycopg.OperationalError as e:
            if conn is not None:
                conn.close()
            if pooled and retry_stale:
                # An idle connection the server dropped meanwhile: one fresh attempt.
                return self._call(fn, retry_stale=False)
            raise CVRStoreUnavailable(f"CVR database unavailable: {e}".strip()) from e
        except BaseException:
            if conn is not None:
                conn.close()
            raise
        if conn.broken or conn.closed or self._closed:
            conn.close()
        else:
            self._idle.put(conn)
        return result

    async def _run(self, fn: Callable[[psycopg.Connection], T], *, retry_stale: bool = False) -> T:
        return await trio.to_thread.run_sync(self._call, fn, retry_stale, limiter=self._limiter)

    def close(self) -> None:
        """Closes the idle connections; those in use close when their call ends."""
        self._closed = True
        while True:
            try:
                self._idle.get_nowait().close()
            except queue.Empty:
                return

    # --- schema -------------------------------------------------------------------------------

    async def ensure_schema(self) -> None:
        await self._run(lambda conn: ensure_schema(conn, self._app_id, self._shard_num), retry_stale=True)

    # --- reads --------------------------------------------------------------------------------

    async def load(self, group_id: str, *, granted_at_ms: float) -> CVRSnapshot:
        """The group's CVR (without rows), taking ownership of it for this process. Loads asked
        for while others run go out together (one round trip for all of them). Raises
        :class:`CVRRowsBehind` when its row records do not catch up with it."""
        for attempt in range(self.rows_behind_attempts):
            await self.rows_written(group_id)
            snapshot = await self._loads((group_id, granted_at_ms))
            if not snapshot.rows_behind:
                return snapshot
            if group_id in self._lost:
                break
            if attempt + 1 < self.rows_behind_attempts:
                await trio.sleep(ROWS_BEHIND_RETRY_S)
        assert snapshot.instance is not None
        raise CVRRowsBehind(
            f"max attempts exceeded waiting for CVR@{snapshot.instance.version.cookie} to catch up from {snapshot.rows_version}"
        )

    async def _load_batch(self, requests: list[tuple[str, float]]) -> list[CVRSnapshot | BaseException]:
        try:
            snapshots = await self._run(lambda conn: self._load(conn, requests), retry_stale=True)
        except CVRStoreUnavailable:
            raise
        except Exception:
            if len(requests) == 1:
                raise
            # Something in one group's CVR: each load alone, so that only its caller fails.
            return [await _outcome(self._run(lambda conn, r=r: self._load(conn, [r]), retry_stale=True)) for r in requests]
        return [snapshots[g] for g, _ in requests]

    def _load(self, conn: psycopg.Connection, requests: list[tuple[str, float]]) -> dict[str, CVRSnapshot]:
        ids = [g for g, _ in requests]
        granted = [t for _, t in requests]
        # One pipeline, one round trip: the statements go out together and run up to the Sync
        # of the first fetch as one transaction. No BEGIN/COMMIT of our own: it cost a second
        # round trip (0.99 → 0.61 ms per load here) and bought nothing, each statement takes
        # its own snapshot at READ COMMITTED either way.
        with conn.pipeline():
            conn.execute(
                self._q(
                    """UPDATE {s}.instances AS i SET "owner" = %s, "grantedAt" = to_timestamp(r.t / 1000.0)
                       FROM unnest(%s::text[], %s::float8[]) AS r(g, t)
                       WHERE i."clientGroupID" = r.g AND (i."grantedAt" IS NULL OR i."grantedAt" <= to_timestamp(r.t / 1000.0))
                         AND coalesce((SELECT v."version" FROM {s}."rowsVersion" v WHERE v."clientGroupID" = r.g), i."version")
                             = i."version" """
                ),
                [self.owner, _array_literal(ids), _array_literal(granted)],
            )
            group_ids = _array_literal(ids)
            instance_cur = conn.cursor().execute(
                self._q(
                    """SELECT i."clientGroupID", i."version", extract(epoch FROM i."lastActive") * 1000, i."ttlClock",
                              i."replicaVersion", i."owner", extract(epoch FROM i."grantedAt") * 1000, i."clientSchema",
                              i."profileID", i."deleted", r."version"
                       FROM {s}.instances i LEFT JOIN {s}."rowsVersion" r USING ("clientGroupID")
                       WHERE i."clientGroupID" = ANY(%s::text[])"""
                ),
                [group_ids],
            )
            clients_cur = conn.cursor().execute(
                self._q('SELECT "clientGroupID", "clientID" FROM {s}.clients WHERE "clientGroupID" = ANY(%s::text[])'),
                [group_ids],
            )
            queries_cur = conn.cursor().execute(
                self._q(
                    """SELECT "clientGroupID", "queryHash", "clientAST", "queryName", "queryArgs", "internal",
                              "patchVersion", "transformationHash", "transformationVersion", "deleted"
                       FROM {s}.queries WHERE "clientGroupID" = ANY(%s::text[])"""
                ),
                [group_ids],
            )
            desires_cur = conn.cursor().execute(
                self._q(
                    """SELECT "clientGroupID", "clientID", "queryHash", "patchVersion", "deleted", "ttlMs",
                              "inactivatedAtMs"
                       FROM {s}.desires WHERE "clientGroupID" = ANY(%s::text[])"""
                ),
                [group_ids],
            )
            instance_rows = instance_cur.fetchall()
            clients_rows = clients_cur.fetchall()
            queries_rows = queries_cur.fetchall()
            desires_rows = desires_cur.fetchall()
        snapshots = {g: CVRSnapshot(None) for g in ids}
        for row in instance_rows:
            snapshots[row[0]] = CVRSnapshot(
                InstanceRecord(
                    group_id=row[0],
                    version=CVRVersion.parse(row[1]),
                    last_active_ms=float(row[2]),
                    ttl_clock_ms=float(row[3]),
                    replica_version=row[4],
                    owner=row[5],
                    granted_at_ms=_ms(row[6]),
                    client_schema=row[7],
                    profile_id=row[8],
                    deleted=bool(row[9]),
                ),
                rows_version=row[10],
            )
        for r in clients_rows:
            s = snapshots[r[0]]
            if s.instance is not None:
                s.clients.add(r[1])
        for r in queries_rows:
            s = snapshots[r[0]]
            if s.instance is not None:
                s.queries[r[1]] = QueryRecord(
                    hash=r[1],
                    client_ast=r[2],
                    name=r[3],
                    args=r[4],
                    internal=bool(r[5]),
                    patch_version=_version(r[6]),
                    transformation_hash=r[7],
                    transformation_version=_version(r[8]),
                    deleted=bool(r[9]),
                )
        for r in desires_rows:
            s = snapshots[r[0]]
            if s.instance is not None:
                s.desires[(r[1], r[2])] = DesireRecord(
                    client_id=r[1],
                    query_hash=r[2],
                    patch_version=CVRVersion.parse(r[3]),
                    deleted=bool(r[4]),
                    ttl_ms=_ms(r[5]),
                    inactivated_at_ms=_ms(r[6]),
                )
        return snapshots

    async def row_versions(self, group_id: str) -> dict[tuple[str, str], str]:
        """Every row the group's clients have: (table, row key text) → row version."""
        await self.rows_written(group_id)

        def read(conn: psycopg.Connection) -> dict[tuple[str, str], str]:
            rows = conn.execute(
                self._q(
                    """SELECT "table", "rowKey"::text, "rowVersion" FROM {s}.rows
                       WHERE "clientGroupID" = %s AND "refCounts" IS NOT NULL"""
                ),
                [group_id],
            ).fetchall()
            keys = _native.canonical_json([k for _, k, _ in rows])
            return {(t, k): v for (t, _, v), k in zip(rows, keys, strict=True)}

        return await self._run(read, retry_stale=True)

    async def catchup_rows(self, group_id: str, since: CVRVersion | None) -> list[CatchupRow]:
        """Rows recorded after `since` (every live row when None), tombstones included."""
        await self.rows_written(group_id)

        def read(conn: psycopg.Connection) -> list[CatchupRow]:
            if since is None:
                rows = conn.execute(
                    self._q(
                        """SELECT "table", "rowKey"::text, "rowVersion" FROM {s}.rows
                           WHERE "clientGroupID" = %s AND "refCounts" IS NOT NULL"""
                    ),
                    [group_id],
                ).fetchall()
            else:
                rows = conn.execute(
                    self._q(
                        """SELECT "table", "rowKey"::text, CASE WHEN "refCounts" IS NULL THEN NULL ELSE "rowVersion" END
                           FROM {s}.rows WHERE "clientGroupID" = %s AND "patchVersion" > %s"""
                    ),
                    [group_id, since.cookie],
                ).fetchall()
            keys = _native.canonical_json([k for _, k, _ in rows])
            return [CatchupRow(t, k, v) for (t, _, v), k in zip(rows, keys, strict=True)]

        return await self._run(read, retry_stale=True)

    # --- writes -------------------------------------------------------------------------------

    async def flush(self, flushes: Sequence[CVRFlush]) -> set[str]:
        """Writes the flushes in one transaction; returns the ids of the groups not written
        because another process owns or changed them."""
        if not flushes:
            return set()
        deferred = await self._deferrals(flushes)
        rejected = await self._run(lambda conn: self._flush(conn, flushes, deferred))
        for f in flushes:
            gid = f.instance.group_id
            if gid in deferred and gid not in rejected:
                self._defer(gid, f)
        return rejected

    async def _deferrals(self, flushes: Sequence[CVRFlush]) -> set[str]:
        """The groups of `flushes` whose row records the row writer is to write: those with
        records deferred already (versions stay in order), and large ones while there is room."""
        if not self._writer_running:
            return set()
        deferred = set()
        for f in flushes:
            gid = f.instance.group_id
            waiting = self._deferred.get(gid)
            if waiting is not None and self._deferred_rows + len(f.rows) > MAX_DEFERRED_ROWS:
                await waiting.written.wait()
                waiting = self._deferred.get(gid)
            if waiting is not None:
                deferred.add(gid)
            elif len(f.rows) > self.defer_rows_above and self._deferred_rows + len(f.rows) <= MAX_DEFERRED_ROWS:
                deferred.add(gid)
        return deferred

    def _defer(self, group_id: str, flush: CVRFlush) -> None:
        waiting = self._deferred.setdefault(group_id, _DeferredRows())
        version = flush.instance.version.cookie
        if flush.rows:
            waiting.entries.append((version, flush.rows, flush.rows_new))
            waiting.rows += len(flush.rows)
            self._deferred_rows += len(flush.rows)
            self.deferred_flushes += 1
        waiting.through = version
        self._rows_deferred.set()

    async def rows_written(self, group_id: str) -> None:
        """Returns once the group's deferred row records (if any) are written or given up."""
        waiting = self._deferred.get(group_id)
        if waiting is not None:
            await waiting.written.wait()

    async def write_deferred_rows(self) -> None:
        """The row writer: writes deferred row records, a group's in one transaction, groups in
        the order they were deferred. Runs until cancelled, then goes on with what is left for
        a few seconds (a group whose records a crash loses is refused at its next load)."""
        self._writer_running = True
        try:
            while True:
                while not self._deferred:
                    await self._rows_deferred.wait()
                    self._rows_deferred = trio.Event()
                await self._write_next()
        finally:
            self._writer_running = False
            with trio.move_on_after(DEFERRED_DRAIN_S) as drain:
                drain.shield = True
                while self._deferred:
                    await self._write_next()
            for group_id in list(self._deferred):
                self._drop_deferred(group_id)

    async def _write_next(self) -> None:
        group_id, waiting = next(iter(self._deferred.items()))
        entries, through = list(waiting.entries), waiting.through
        try:
            await self._run(lambda conn: self._write_rows(conn, group_id, entries, through), retry_stale=True)
        except CVRStoreUnavailable as e:
            # Kept: the group's flushes fail too meanwhile, and reading its rows waits.
            log.warning("client group %s: deferred row records not written yet (%s); retrying", group_id, e)
            await trio.sleep(DEFERRED_RETRY_S)
            return
        except Exception as e:
            log.error("client group %s: deferred row records could not be written: %s", group_id, e)
            self._lost.add(group_id)
            self._drop_deferred(group_id)
            if self.on_rows_lost is not None:
                self.on_rows_lost(group_id, e)
            return
        n = sum(len(rows) for _, rows, _ in entries)
        del waiting.entries[: len(entries)]
        waiting.rows -= n
        self._deferred_rows -= n
        if waiting.entries or waiting.through != through:
            self._deferred[group_id] = self._deferred.pop(group_id)  # to the back: others' turn
        else:
            del self._deferred[group_id]
            waiting.written.set()

    def _drop_deferred(self, group_id: str) -> None:
        waiting = self._deferred.pop(group_id, None)
        if waiting is not None:
            self._deferred_rows -= waiting.rows
            waiting.written.set()

    def _write_rows(
        self, conn: psycopg.Connection, group_id: str, entries: list[tuple[str, _native.RowChanges, bool]], through: str
    ) -> None:
        # Not conditioned on ownership: the instance flushes of these versions were accepted, so
        # this process owes their rows, and no other takes the group before they are written.
        with conn.transaction():
            live = conn.execute(
                self._q('SELECT 1 FROM {s}.instances WHERE "clientGroupID" = %s AND NOT coalesce("deleted", false)'),
                [group_id],
            ).fetchone()
            if live is None:
                log.info("client group %s: purged; its deferred row records are not written", group_id)
                return
            for version, rows, rows_new in entries:
                entry = [(group_id, version, rows)]
                params = _row_params(entry if rows_new else [], [] if rows_new else entry)
                params["live"] = LIVE_REF_COUNTS
                params["g"] = _array_literal([group_id])
                text = _rows_text(params)
                statement = self._flush_sql.get(text)
                if statement is None:
                    statement = self._flush_sql[text] = self._q(text)
                conn.execute(statement, params)
            conn.execute(
                self._q('UPDATE {s}."rowsVersion" SET "version" = %s WHERE "clientGroupID" = %s'), [through, group_id]
            )

    async def flush_one(self, flush: CVRFlush) -> bool:
        """Writes one group's flush; True if it was rejected (see `flush`). Flushes asked for
        while others run go out together, one statement and one transaction for all of them."""
        return await self._flushes(flush)

    async def _flush_batch(self, flushes: list[CVRFlush]) -> list[bool | BaseException]:
        try:
            rejected = await self.flush(flushes)
        except CVRStoreUnavailable:
            raise
        except Exception:
            if len(flushes) == 1:
                raise
            # A statement failed on something in one group's flush (the transaction wrote
            # nothing): each alone, so that only that group's caller gets the error.
            return [await _outcome(self._flush_alone(f)) for f in flushes]
        return [f.instance.group_id in rejected for f in flushes]

    async def _flush_alone(self, flush: CVRFlush) -> bool:
        return bool(await self.flush([flush]))

    def _flush(self, conn: psycopg.Connection, flushes: Sequence[CVRFlush], deferred: set[str]) -> set[str]:
        # One statement, one round trip, its own (implicit) transaction: the instance rows are
        # locked (one lock order for every process) and checked, and every write is filtered
        # on the groups that passed (data-modifying CTEs all run, on one snapshot; the lock
        # makes a concurrent writer's newer row the one checked). The session runs with
        # synchronous_commit off (see `_connect`).
        ids = [f.instance.group_id for f in flushes]
        assert len(set(ids)) == len(ids), "one flush per client group"
        params = _flush_params(self.owner, flushes, deferred)
        text = _flush_text(params)
        statement = self._flush_sql.get(text)
        if statement is None:
            statement = self._flush_sql[text] = self._q(text)
        stored = conn.execute(statement, params).fetchall()
        rejected = {r[0] for r in stored}
        for gid, version, owner, expected in stored:
            log.info(
                "CVR of client group %s changed elsewhere (stored %s owned by %s, expected %s): not written",
                gid,
                version,
                owner,
                expected,
            )
        return rejected

    async def touch(self, group_ids: Sequence[str]) -> None:
        """Marks groups this process serves as active now (garbage collection spares them)."""
        if not group_ids:
            return
        await self._run(
            lambda conn: conn.execute(
                self._q(
                    """UPDATE {s}.instances SET "lastActive" = now()
                       WHERE "clientGroupID" = ANY(%s) AND "owner" = %s"""
                ),
                [list(group_ids), self.owner],
            ),
            retry_stale=True,
        )

    # --- garbage collection -------------------------------------------------------------------

    async def collect_garbage(self, *, inactive_before_ms: float, limit: int) -> list[str]:
        """Purges up to `limit` groups inactive since before `inactive_before_ms` (epoch ms):
        their clients, queries, desires and rows go, the instance stays marked ``deleted`` so
        that a returning client learns why (``ClientNotFound``). Returns the purged ids."""

        def purge(conn: psycopg.Connection) -> list[str]:
            with conn.transaction():
                ids = [
                    r[0]
                    for r in conn.execute(
                        self._q(
                            """SELECT "clientGroupID" FROM {s}.instances
                               WHERE "lastActive" < to_timestamp(%s / 1000.0) AND NOT coalesce("deleted", false)
                               ORDER BY "lastActive" LIMIT %s FOR UPDATE SKIP LOCKED"""
                        ),
                        [inactive_before_ms, limit],
                    )
                ]
                if not ids:
                    return []
                for table in ("rows", "desires", "queries", "clients", "rowsVersion"):
                    conn.execute(
                        sql.SQL('DELETE FROM {s}.{t} WHERE "clientGroupID" = ANY(%s)').format(
                            s=self._schema, t=sql.Identifier(table)
                        ),
                        [ids],
                    )
                conn.execute(
                    self._q('UPDATE {s}.instances SET "deleted" = true, "owner" = NULL WHERE "clientGroupID" = ANY(%s)'),
                    [ids],
                )
                return ids

        return await self._run(purge, retry_stale=True)


async def _outcome(call: Awaitable[T]) -> T | BaseException:
    try:
        return await call
    except Exception as e:
        return e


def now_ms() -> float:
    return time.time() * 1000.0


# The whole flush of many client groups as one statement; every list is one column of
# `unnest`. `accepted` holds the groups whose stored instance is the one the flush expects
# (none for a new group) and that no other process owns; ownership (owner, grantedAt) is
# written by the insert of a new group and by `load` only. Returns the rejected groups.
# A flush carries only the writes it has data for (`_FLUSH_WRITES`, keyed by the column that
# is empty when there is nothing to write): the instance-and-rows flush of an advance then
# runs half the statement (~0.3 ms less per flush here), and each shape is prepared once.
_FLUSH_HEAD = """
WITH f AS (
  SELECT * FROM unnest(%(g)s::text[], %(expected)s::text[], %(version)s::text[], %(last_active)s::float8[],
                       %(ttl_clock)s::float8[], %(replica_version)s::text[], %(granted_at)s::float8[],
                       %(client_schema)s::text[], %(profile_id)s::text[], %(deleted)s::bool[], %(rows_now)s::bool[])
    AS f(g, expected, version, last_active, ttl_clock, replica_version, granted_at, client_schema, profile_id, deleted, rows_now)
),
stored AS (
  SELECT "clientGroupID" AS g, "version", "owner" FROM {s}.instances
  WHERE "clientGroupID" = ANY(%(g)s::text[]) ORDER BY "clientGroupID" FOR UPDATE
),
checked AS (
  SELECT f.*, s."version" AS stored_version, s."owner" AS stored_owner,
         CASE WHEN f.expected IS NULL THEN s.g IS NULL
              ELSE s.g IS NOT NULL AND s."version" = f.expected AND (s."owner" IS NULL OR s."owner" = %(owner)s) END AS ok
  FROM f LEFT JOIN stored s ON s.g = f.g
),
accepted AS (SELECT * FROM checked WHERE ok),
w_instances AS (
  INSERT INTO {s}.instances AS i ("clientGroupID", "version", "lastActive", "ttlClock", "replicaVersion",
                                  "owner", "grantedAt", "clientSchema", "profileID", "deleted")
  SELECT g, version, to_timestamp(last_active / 1000.0), ttl_clock, replica_version,
         %(owner)s, to_timestamp(granted_at / 1000.0), client_schema::jsonb, profile_id, deleted
  FROM accepted
  ON CONFLICT ("clientGroupID") DO UPDATE SET
    "version" = excluded."version", "lastActive" = excluded."lastActive",
    "ttlClock" = excluded."ttlClock", "replicaVersion" = excluded."replicaVersion",
    "clientSchema" = COALESCE(excluded."clientSchema", i."clientSchema"), "profileID" = excluded."profileID",
    "deleted" = excluded."deleted"
),
w_rows_version AS (
  INSERT INTO {s}."rowsVersion" ("clientGroupID", "version")
  SELECT g, CASE WHEN rows_now THEN version ELSE '' END FROM accepted WHERE rows_now OR expected IS NULL
  ON CONFLICT ("clientGroupID") DO UPDATE SET "version" = excluded."version"
)
"""

_FLUSH_WRITES = {
    "added_g": """
w_clients_added AS (
  INSERT INTO {s}.clients ("clientGroupID", "clientID")
  SELECT u.g, u.c FROM unnest(%(added_g)s::text[], %(added_c)s::text[]) AS u(g, c) JOIN accepted USING (g)
  ON CONFLICT DO NOTHING
)
""",
    "removed_g": """
w_clients_removed AS (
  DELETE FROM {s}.clients AS x USING unnest(%(removed_g)s::text[], %(removed_c)s::text[]) AS u(g, c), accepted a
  WHERE a.g = u.g AND x."clientGroupID" = u.g AND x."clientID" = u.c
)
""",
    "q_g": """
w_queries AS (
  INSERT INTO {s}.queries ("clientGroupID", "queryHash", "clientAST", "queryName", "queryArgs", "patchVersion",
                           "transformationHash", "transformationVersion", "internal", "deleted")
  SELECT u.g, u.h, u.ast::jsonb, u.name, u.args::jsonb, u.pv, u.th, u.tv, u.internal, u.deleted
  FROM unnest(%(q_g)s::text[], %(q_hash)s::text[], %(q_ast)s::text[], %(q_name)s::text[], %(q_args)s::text[],
              %(q_patch)s::text[], %(q_th)s::text[], %(q_tv)s::text[], %(q_internal)s::bool[], %(q_deleted)s::bool[])
    AS u(g, h, ast, name, args, pv, th, tv, internal, deleted)
  JOIN accepted USING (g)
  ON CONFLICT ("clientGroupID", "queryHash") DO UPDATE SET
    "clientAST" = excluded."clientAST", "queryName" = excluded."queryName",
    "queryArgs" = excluded."queryArgs", "patchVersion" = excluded."patchVersion",
    "transformationHash" = excluded."transformationHash",
    "transformationVersion" = excluded."transformationVersion",
    "internal" = excluded."internal", "deleted" = excluded."deleted"
)
""",
    "d_g": """
w_desires AS (
  INSERT INTO {s}.desires ("clientGroupID", "clientID", "queryHash", "patchVersion", "deleted",
                           "ttl", "ttlMs", "inactivatedAt", "inactivatedAtMs")
  SELECT u.g, u.c, u.h, u.pv, u.deleted, make_interval(secs => u.ttl / 1000.0), u.ttl,
         to_timestamp(u.inactivated / 1000.0), u.inactivated
  FROM unnest(%(d_g)s::text[], %(d_client)s::text[], %(d_hash)s::text[], %(d_patch)s::text[],
              %(d_deleted)s::bool[], %(d_ttl)s::float8[], %(d_inactivated)s::float8[])
    AS u(g, c, h, pv, deleted, ttl, inactivated)
  JOIN accepted USING (g)
  ON CONFLICT ("clientGroupID", "clientID", "queryHash") DO UPDATE SET
    "patchVersion" = excluded."patchVersion", "deleted" = excluded."deleted",
    "ttl" = excluded."ttl", "ttlMs" = excluded."ttlMs",
    "inactivatedAt" = excluded."inactivatedAt", "inactivatedAtMs" = excluded."inactivatedAtMs"
)
""",
    "new_g": """
w_rows_new AS (
  INSERT INTO {s}.rows ("clientGroupID", "schema", "table", "rowKey", "rowVersion", "patchVersion", "refCounts")
  SELECT u.g, '', u.t, u.k::jsonb, u.v, u.p, %(live)s
  FROM unnest(%(new_g)s::text[], %(new_t)s::text[], %(new_k)s::text[], %(new_v)s::text[], %(new_p)s::text[])
    AS u(g, t, k, v, p)
  JOIN accepted USING (g)
)
""",
    "put_g": """
w_rows_put AS (
  INSERT INTO {s}.rows ("clientGroupID", "schema", "table", "rowKey", "rowVersion", "patchVersion", "refCounts")
  SELECT u.g, '', u.t, u.k::jsonb, u.v, u.p, %(live)s
  FROM unnest(%(put_g)s::text[], %(put_t)s::text[], %(put_k)s::text[], %(put_v)s::text[], %(put_p)s::text[])
    AS u(g, t, k, v, p)
  JOIN accepted USING (g)
  ON CONFLICT ("clientGroupID", "schema", "table", "rowKey") DO UPDATE SET
    "rowVersion" = excluded."rowVersion", "patchVersion" = excluded."patchVersion",
    "refCounts" = excluded."refCounts"
)
""",
    "del_g": """
w_rows_del AS (
  UPDATE {s}.rows AS r SET "patchVersion" = u.p, "refCounts" = NULL
  FROM unnest(%(del_g)s::text[], %(del_t)s::text[], %(del_k)s::text[], %(del_p)s::text[]) AS u(g, t, k, p), accepted a
  WHERE a.g = u.g AND r."clientGroupID" = u.g AND r."schema" = '' AND r."table" = u.t AND r."rowKey" = u.k::jsonb
)
""",
}

_FLUSH_TAIL = """
SELECT g, stored_version, stored_owner, expected FROM checked WHERE NOT ok
"""


_ROW_WRITES = ("new_g", "put_g", "del_g")


def _flush_text(params: dict[str, Any]) -> str:
    """The flush statement for these parameters: the head, the writes that have rows, the tail."""
    writes = [text.strip("\n") for key, text in _FLUSH_WRITES.items() if params[key] != "{}"]
    return ",\n".join([_FLUSH_HEAD.strip("\n"), *writes]) + "\n" + _FLUSH_TAIL.strip("\n")


def _rows_text(params: dict[str, Any]) -> str:
    """The row writer's statement for one group's deferred records at one version: the row
    writes of the flush statement, for that group alone."""
    writes = [_FLUSH_WRITES[key].strip("\n") for key in _ROW_WRITES if params[key] != "{}"]
    return ",\n".join(["WITH accepted AS (SELECT unnest(%(g)s::text[]) AS g)", *writes]) + "\nSELECT 1"


def _json_text(value: Any) -> str | None:
    return None if value is None else json.dumps(value)


def _flush_params(owner: str, flushes: Sequence[CVRFlush], deferred: set[str]) -> dict[str, Any]:
    """The flush statement's columns: one list per column, built in one pass (the row records
    of the `deferred` groups left out: the row writer writes them)."""
    instances = [f.instance for f in flushes]
    p: dict[str, Any] = {
        "owner": owner,
        "live": LIVE_REF_COUNTS,
        "g": [i.group_id for i in instances],
        "expected": [None if f.expected_version is None else f.expected_version.cookie for f in flushes],
        "version": [i.version.cookie for i in instances],
        "last_active": [i.last_active_ms for i in instances],
        "ttl_clock": [i.ttl_clock_ms for i in instances],
        "replica_version": [i.replica_version for i in instances],
        "granted_at": [i.granted_at_ms for i in instances],
        "client_schema": [_json_text(f.instance.client_schema) if f.write_client_schema else None for f in flushes],
        "profile_id": [i.profile_id for i in instances],
        "deleted": [i.deleted for i in instances],
        "rows_now": [i.group_id not in deferred for i in instances],
    }
    for key in ("added_g", "added_c", "removed_g", "removed_c", "q_g", "q_hash", "q_ast", "q_name", "q_args",
                "q_patch", "q_th", "q_tv", "q_internal", "q_deleted", "d_g", "d_client", "d_hash", "d_patch",
                "d_deleted", "d_ttl", "d_inactivated"):
        p[key] = []
    for f in flushes:
        gid = f.instance.group_id
        for c in f.clients_added:
            p["added_g"].append(gid)
            p["added_c"].append(c)
        for c in f.clients_removed:
            p["removed_g"].append(gid)
            p["removed_c"].append(c)
        for q in f.queries:
            p["q_g"].append(gid)
            p["q_hash"].append(q.hash)
            p["q_ast"].append(_json_text(q.client_ast))
            p["q_name"].append(q.name)
            p["q_args"].append(_json_text(q.args))
            p["q_patch"].append(None if q.patch_version is None else q.patch_version.cookie)
            p["q_th"].append(q.transformation_hash)
            p["q_tv"].append(None if q.transformation_version is None else q.transformation_version.cookie)
            p["q_internal"].append(q.internal)
            p["q_deleted"].append(q.deleted)
        for d in f.desires:
            p["d_g"].append(gid)
            p["d_client"].append(d.client_id)
            p["d_hash"].append(d.query_hash)
            p["d_patch"].append(d.patch_version.cookie)
            p["d_deleted"].append(d.deleted)
            p["d_ttl"].append(d.ttl_ms)
            p["d_inactivated"].append(d.inactivated_at_ms)
    # The row records cross as one text-array literal per column, built in Rust (no Python
    # object per row). Groups with no row record yet (`rows_new`) are inserted without conflict
    # handling, which costs Postgres about half of an upsert's work per row; they have nothing
    # to delete.
    now = [f for f in flushes if f.rows and f.instance.group_id not in deferred]
    new = [(f.instance.group_id, f.instance.version.cookie, f.rows) for f in now if f.rows_new]
    old = [(f.instance.group_id, f.instance.version.cookie, f.rows) for f in now if not f.rows_new]
    p.update(_row_params(new, old))
    for key, value in p.items():
        if isinstance(value, list):
            p[key] = _array_literal(value)
    return p


def _row_params(new: list[tuple[str, str, _native.RowChanges]], old: list[tuple[str, str, _native.RowChanges]]) -> dict[str, Any]:
    """The row-record columns: inserts for groups with no record yet (`new`), upserts and
    tombstones for the others (`old`), each entry (group, patch version, rows)."""
    p: dict[str, Any] = {}
    (p["new_g"], p["new_t"], p["new_k"], p["new_v"], p["new_p"]), _, _, _ = _native.cvr_row_arrays(new)
    put, dels, _, _ = _native.cvr_row_arrays(old)
    p["put_g"], p["put_t"], p["put_k"], p["put_v"], p["put_p"] = put
    p["del_g"], p["del_t"], p["del_k"], p["del_p"] = dels
    return p


def _array_literal(values: list[str | int | float | bool | None]) -> str:
    """A Postgres array literal (the statement casts it): psycopg's list adaptation escapes each
    element with regular expressions, which was a quarter of the server's CPU in a fan-out."""
    return "{" + ",".join(map(_array_element, values)) + "}"


def _array_element(value: str | int | float | bool | None) -> str:
    if value is None:
        return "NULL"
    if value is True:
        return "t"
    if value is False:
        return "f"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return repr(value)
