"""The CVR store: client view records in Postgres (``ZERO_CVR_DB``), schema ``<app>_<shard>/cvr``.

Access is through a small pool of synchronous psycopg connections, each call running in a
worker thread (``trio.to_thread.run_sync``) under one CapacityLimiter sized by
``ZERO_CVR_MAX_CONNS``: at most that many connections exist and work at once.

Ownership: loading a group makes this process its owner (``owner`` = task id, ``grantedAt`` =
the load time) unless another process was granted it later. A flush first locks the instance
rows of its groups (``SELECT … FOR UPDATE``); a group that another process owns now, or whose
stored version is not the one this process expects, is not written and is returned as
rejected (its clients get ``Rehome``). Everything else is written in the same transaction: the
instances, clients, queries, desires and rows of all the flush's groups in a handful of
statements (rows through ``unnest`` arrays, never a statement per row).

``rows.refCounts``: zero-cache counts a row's references per query; zcache's query engine
counts them per client group, so a live row holds ``{"group": 1}``. ``NULL`` marks a tombstone,
as in zero-cache. Rows are stored with ``schema`` ``''`` and ``table`` the replica's table name
(``file``, ``zero_0.clients``), as zero-cache names them.

Errors: a database that cannot be reached or fails mid-call raises :class:`CVRStoreUnavailable`;
a flush that fails leaves the database as it was (one transaction).
"""

from __future__ import annotations

import logging
import queue
import time
from collections.abc import Callable, Sequence
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

log = logging.getLogger("zcache.cvr")

T = TypeVar("T")

CONNECT_TIMEOUT_S = 5
# A statement that waits longer than this (a lock held by a stuck process, a stalled server)
# fails instead of holding a pooled connection and the group's clients forever.
STATEMENT_TIMEOUT_MS = 30_000
LIVE_REF_COUNTS = Jsonb({"group": 1})


class CVRStoreUnavailable(Exception):
    """The CVR database could not be reached or failed during a call."""


def _ms(value: Any) -> float | None:
    return None if value is None else float(value)


def _version(text: str | None) -> CVRVersion | None:
    return None if text is None else CVRVersion.parse(text)


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

    # --- plumbing ---------------------------------------------------------------------------

    def _q(self, text: str) -> sql.Composed:
        return sql.SQL(text).format(s=self._schema)

    def _connect(self) -> psycopg.Connection:
        return psycopg.connect(
            self._dsn,
            autocommit=True,
            connect_timeout=CONNECT_TIMEOUT_S,
            options=f"-c statement_timeout={STATEMENT_TIMEOUT_MS}",
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
        """The group's CVR (without rows), taking ownership of it for this process."""
        return await self._run(lambda conn: self._load(conn, group_id, granted_at_ms), retry_stale=True)

    def _load(self, conn: psycopg.Connection, group_id: str, granted_at_ms: float) -> CVRSnapshot:
        # One pipeline: the statements go out together, the first fetch waits for all of them.
        with conn.pipeline(), conn.transaction():
            conn.execute(
                self._q(
                    """UPDATE {s}.instances SET "owner" = %s, "grantedAt" = to_timestamp(%s / 1000.0)
                       WHERE "clientGroupID" = %s AND ("grantedAt" IS NULL OR "grantedAt" <= to_timestamp(%s / 1000.0))"""
                ),
                [self.owner, granted_at_ms, group_id, granted_at_ms],
            )
            instance_cur = conn.cursor().execute(
                self._q(
                    """SELECT "version", extract(epoch FROM "lastActive") * 1000, "ttlClock", "replicaVersion",
                              "owner", extract(epoch FROM "grantedAt") * 1000, "clientSchema", "profileID", "deleted"
                       FROM {s}.instances WHERE "clientGroupID" = %s"""
                ),
                [group_id],
            )
            clients_cur = conn.cursor().execute(
                self._q('SELECT "clientID" FROM {s}.clients WHERE "clientGroupID" = %s'), [group_id]
            )
            queries_cur = conn.cursor().execute(
                self._q(
                    """SELECT "queryHash", "clientAST", "queryName", "queryArgs", "internal", "patchVersion",
                              "transformationHash", "transformationVersion", "deleted"
                       FROM {s}.queries WHERE "clientGroupID" = %s"""
                ),
                [group_id],
            )
            desires_cur = conn.cursor().execute(
                self._q(
                    """SELECT "clientID", "queryHash", "patchVersion", "deleted", "ttlMs", "inactivatedAtMs"
                       FROM {s}.desires WHERE "clientGroupID" = %s"""
                ),
                [group_id],
            )
            row = instance_cur.fetchone()
            clients_rows = clients_cur.fetchall()
            queries_rows = queries_cur.fetchall()
            desires_rows = desires_cur.fetchall()
        if row is None:
            return CVRSnapshot(None)
        instance = InstanceRecord(
            group_id=group_id,
            version=CVRVersion.parse(row[0]),
            last_active_ms=float(row[1]),
            ttl_clock_ms=float(row[2]),
            replica_version=row[3],
            owner=row[4],
            granted_at_ms=_ms(row[5]),
            client_schema=row[6],
            profile_id=row[7],
            deleted=bool(row[8]),
        )
        queries = {
            r[0]: QueryRecord(
                hash=r[0],
                client_ast=r[1],
                name=r[2],
                args=r[3],
                internal=bool(r[4]),
                patch_version=_version(r[5]),
                transformation_hash=r[6],
                transformation_version=_version(r[7]),
                deleted=bool(r[8]),
            )
            for r in queries_rows
        }
        desires = {
            (r[0], r[1]): DesireRecord(
                client_id=r[0],
                query_hash=r[1],
                patch_version=CVRVersion.parse(r[2]),
                deleted=bool(r[3]),
                ttl_ms=_ms(r[4]),
                inactivated_at_ms=_ms(r[5]),
            )
            for r in desires_rows
        }
        return CVRSnapshot(instance, {r[0] for r in clients_rows}, queries, desires)

    async def row_versions(self, group_id: str) -> dict[tuple[str, str], str]:
        """Every row the group's clients have: (table, row key text) → row version."""

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
        return await self._run(lambda conn: self._flush(conn, flushes))

    def _flush(self, conn: psycopg.Connection, flushes: Sequence[CVRFlush]) -> set[str]:
        rejected: set[str] = set()
        # Two round trips: the instance rows locked and read, then every write and the commit,
        # sent together (pipeline mode).
        with conn.pipeline(), conn.transaction():
            # A poke waits for its flush. Without waiting for the WAL to reach the disk, a crash
            # of Postgres itself (not of zcache) may lose the last flushes; clients whose cookie
            # is then ahead of their CVR are told so (InvalidConnectionRequestBaseCookie) and
            # sync again from scratch, which is correct, only slower.
            conn.execute("SET LOCAL synchronous_commit = off")
            ids = sorted({f.instance.group_id for f in flushes})  # one lock order for every process
            stored = {
                r[0]: (r[1], r[2])
                for r in conn.execute(
                    self._q(
                        """SELECT "clientGroupID", "version", "owner" FROM {s}.instances
                           WHERE "clientGroupID" = ANY(%s) ORDER BY "clientGroupID" FOR UPDATE"""
                    ),
                    [ids],
                )
            }
            accepted: list[CVRFlush] = []
            for f in flushes:
                gid = f.instance.group_id
                current = stored.get(gid)
                if f.expected_version is None:
                    ok = current is None
                else:
                    ok = (
                        current is not None
                        and current[0] == f.expected_version.cookie
                        and current[1] in (None, self.owner)
                    )
                if ok:
                    accepted.append(f)
                else:
                    rejected.add(gid)
                    log.info(
                        "CVR of client group %s changed elsewhere (stored %s owned by %s, expected %s): not written",
                        gid,
                        current[0] if current else None,
                        current[1] if current else None,
                        f.expected_version,
                    )
            if accepted:
                self._write(conn, accepted)
        return rejected

    def _write(self, conn: psycopg.Connection, flushes: list[CVRFlush]) -> None:
        # Ownership (owner, grantedAt) is written by the insert of a new group and by `load`
        # only: a flush never moves it.
        with conn.cursor() as cur:
            cur.executemany(
                self._q(
                    """INSERT INTO {s}.instances ("clientGroupID", "version", "lastActive", "ttlClock", "replicaVersion",
                                                  "owner", "grantedAt", "clientSchema", "profileID", "deleted")
                       VALUES (%s, %s, to_timestamp(%s / 1000.0), %s, %s, %s, to_timestamp(%s / 1000.0), %s, %s, %s)
                       ON CONFLICT ("clientGroupID") DO UPDATE SET
                         "version" = excluded."version", "lastActive" = excluded."lastActive",
                         "ttlClock" = excluded."ttlClock", "replicaVersion" = excluded."replicaVersion",
                         "clientSchema" = excluded."clientSchema", "profileID" = excluded."profileID",
                         "deleted" = excluded."deleted\""""
                ),
                [
                    (
                        i.group_id,
                        i.version.cookie,
                        i.last_active_ms,
                        i.ttl_clock_ms,
                        i.replica_version,
                        self.owner,
                        i.granted_at_ms,
                        None if i.client_schema is None else Jsonb(i.client_schema),
                        i.profile_id,
                        i.deleted,
                    )
                    for i in (f.instance for f in flushes)
                ],
            )
            cur.executemany(
                self._q(
                    """INSERT INTO {s}."rowsVersion" ("clientGroupID", "version") VALUES (%s, %s)
                       ON CONFLICT ("clientGroupID") DO UPDATE SET "version" = excluded."version\""""
                ),
                [(f.instance.group_id, f.instance.version.cookie) for f in flushes],
            )
            added = [(f.instance.group_id, c) for f in flushes for c in f.clients_added]
            if added:
                cur.executemany(
                    self._q('INSERT INTO {s}.clients ("clientGroupID", "clientID") VALUES (%s, %s) ON CONFLICT DO NOTHING'),
                    added,
                )
            removed = [(f.instance.group_id, c) for f in flushes for c in f.clients_removed]
            if removed:
                cur.executemany(
                    self._q('DELETE FROM {s}.clients WHERE "clientGroupID" = %s AND "clientID" = %s'),
                    removed,
                )
            queries = [(f.instance.group_id, q) for f in flushes for q in f.queries]
            if queries:
                cur.executemany(
                    self._q(
                        """INSERT INTO {s}.queries ("clientGroupID", "queryHash", "clientAST", "queryName", "queryArgs",
                                                    "patchVersion", "transformationHash", "transformationVersion",
                                                    "internal", "deleted")
                           VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
                           ON CONFLICT ("clientGroupID", "queryHash") DO UPDATE SET
                             "clientAST" = excluded."clientAST", "queryName" = excluded."queryName",
                             "queryArgs" = excluded."queryArgs", "patchVersion" = excluded."patchVersion",
                             "transformationHash" = excluded."transformationHash",
                             "transformationVersion" = excluded."transformationVersion",
                             "internal" = excluded."internal", "deleted" = excluded."deleted\""""
                    ),
                    [_query_params(gid, q) for gid, q in queries],
                )
            desires = [(f.instance.group_id, d) for f in flushes for d in f.desires]
            if desires:
                cur.executemany(
                    self._q(
                        """INSERT INTO {s}.desires ("clientGroupID", "clientID", "queryHash", "patchVersion", "deleted",
                                                    "ttl", "ttlMs", "inactivatedAt", "inactivatedAtMs")
                           VALUES (%s, %s, %s, %s, %s, make_interval(secs => %s / 1000.0), %s,
                                   to_timestamp(%s / 1000.0), %s)
                           ON CONFLICT ("clientGroupID", "clientID", "queryHash") DO UPDATE SET
                             "patchVersion" = excluded."patchVersion", "deleted" = excluded."deleted",
                             "ttl" = excluded."ttl", "ttlMs" = excluded."ttlMs",
                             "inactivatedAt" = excluded."inactivatedAt", "inactivatedAtMs" = excluded."inactivatedAtMs\""""
                    ),
                    [
                        (
                            gid,
                            d.client_id,
                            d.query_hash,
                            d.patch_version.cookie,
                            d.deleted,
                            d.ttl_ms,
                            d.ttl_ms,
                            d.inactivated_at_ms,
                            d.inactivated_at_ms,
                        )
                        for gid, d in desires
                    ],
                )
            self._write_rows(cur, flushes)

    def _write_rows(self, cur: psycopg.Cursor, flushes: list[CVRFlush]) -> None:
        # The records cross as one array literal per column, built in Rust (no Python object
        # per row). Groups with no row record yet are inserted without conflict handling, which
        # costs Postgres about half of an upsert's work per row.
        for new in (True, False):
            part = [(f.instance.group_id, f.instance.version.cookie, f.rows) for f in flushes if f.rows and f.rows_new == new]
            if not part:
                continue
            put, dels, n_puts, n_dels = _native.cvr_row_arrays(part)
            if n_puts:
                cur.execute(
                    self._q(
                        """INSERT INTO {s}.rows ("clientGroupID", "schema", "table", "rowKey", "rowVersion", "patchVersion", "refCounts")
                           SELECT g, '', t, k::jsonb, v, p, %s
                           FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[], %s::text[]) AS u(g, t, k, v, p)"""
                        + (
                            ""
                            if new
                            else """ ON CONFLICT ("clientGroupID", "schema", "table", "rowKey") DO UPDATE SET
                                     "rowVersion" = excluded."rowVersion", "patchVersion" = excluded."patchVersion",
                                     "refCounts" = excluded."refCounts\""""
                        )
                    ),
                    [LIVE_REF_COUNTS, *put],
                )
            if n_dels and not new:
                # A group without row records has nothing to delete.
                cur.execute(
                    self._q(
                        """UPDATE {s}.rows AS r SET "patchVersion" = u.p, "refCounts" = NULL
                           FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[]) AS u(g, t, k, p)
                           WHERE r."clientGroupID" = u.g AND r."schema" = '' AND r."table" = u.t AND r."rowKey" = u.k::jsonb"""
                    ),
                    list(dels),
                )

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


def _query_params(group_id: str, q: QueryRecord) -> tuple[Any, ...]:
    return (
        group_id,
        q.hash,
        None if q.client_ast is None else Jsonb(q.client_ast),
        q.name,
        None if q.args is None else Jsonb(q.args),
        None if q.patch_version is None else q.patch_version.cookie,
        q.transformation_hash,
        None if q.transformation_version is None else q.transformation_version.cookie,
        q.internal,
        q.deleted,
    )


def now_ms() -> float:
    return time.time() * 1000.0
