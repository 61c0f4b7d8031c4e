"""Legacy CRUD mutations applied upstream by zcache itself (§6.5; zero-cache's mutagen).

One mutation is one SERIALIZABLE transaction on the upstream database that

1. advances `<shard>."clients"."lastMutationID"` of the client by one (a new client starts at
   1) and compares the result with the mutation id: a smaller id was processed before (the
   transaction rolls back and the mutation is ignored), a larger one means a gap (fatal
   `InvalidPush`, nothing is written);
2. reads the write permissions of `<app>.permissions`;
3. applies the ops in order, each after its pre-mutation rule (`insert` of an existing row,
   `update`/`delete` of a missing one are errors, as in zero-cache), then checks the
   post-mutation rules;
4. commits. Ops refused by a rule are rolled back to a savepoint while the last mutation id
   still advances: a refusal is the mutation's correct outcome, not an error.

Any other failure (a constraint, a bad value, an unknown table or column) is retried once in
"error mode", a transaction that only advances the last mutation id, and reported to the
client as a non-fatal `MutationFailed`. Serialization failures are retried (up to 10 attempts).

The transaction runs in a worker thread with synchronous psycopg (one `trio.to_thread` call
per mutation, bounded by a CapacityLimiter of `ZERO_UPSTREAM_MAX_CONNS`); connections are
kept open between mutations in a small pool of that size.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import psycopg
import trio
from psycopg import sql
from psycopg.types.json import Json, Jsonb

from zcache.auth.write_authorizer import WriteAuthorizer, WriteOp, WriteRulesError, split_table, table_identifier
from zcache.change_source.upstream import ShardId
from zcache.mutations.errors import PushError, basic_error, invalid_push

log = logging.getLogger("zcache.mutations.crud")

MAX_SERIALIZATION_ATTEMPTS = 10
# zero-cache retries a CRUD id gap twice, 100 ms apart, when custom mutators are enabled too:
# the app server may not have committed the client's previous (custom) mutation yet.
GAP_RETRIES_WITH_CUSTOM = 2
GAP_RETRY_DELAY_S = 0.1
# Two writers of the same rows that retry at once conflict again; a jittered, growing pause
# breaks the lockstep (seen: ten immediate retries in a row all failing under two writers).
SERIALIZATION_BACKOFF_S = 0.002

CrudStatus = Literal["applied", "denied", "already_processed", "failed"]


@dataclass(frozen=True)
class CrudResult:
    status: CrudStatus
    message: str | None = None  # the MutationFailed message when status is "failed"
    serialization_retries: int = 0


class CrudOpError(Exception):
    """An op that cannot be applied as sent (the mutation fails, confirmed in error mode)."""


class _AlreadyProcessed(Exception):
    pass


class _IdGap(Exception):
    pass


class _Denied(Exception):
    pass


@dataclass(frozen=True)
class _Column:
    name: str
    sql_type: str  # format_type(): safe to splice after `::`
    type_name: str  # pg_type.typname, e.g. "jsonb", "timestamptz", "_text"


@dataclass(frozen=True)
class _Table:
    name: str
    identifier: sql.Identifier
    columns: Mapping[str, _Column]
    key: tuple[str, ...]


@dataclass(frozen=True)
class _Op:
    kind: Literal["insert", "upsert", "update", "delete"]
    table: str
    primary_key: tuple[str, ...]
    value: Mapping[str, Any]


class CrudExecutor:
    """Applies CRUD mutations upstream; safe to call from many Trio tasks at once."""

    def __init__(self, dsn: str, shard: ShardId, *, max_conns: int, custom_mutators: bool) -> None:
        self._dsn = dsn
        self._shard = shard
        self._custom_mutators = custom_mutators
        self._limiter = trio.CapacityLimiter(max_conns)
        self._authorizer = WriteAuthorizer(shard.app_schema)
        self._idle: list[psycopg.Connection[Any]] = []
        self._idle_lock = threading.Lock()
        self._closed = False
        self._bump = sql.SQL(
            """
            INSERT INTO {} AS current ("clientGroupID", "clientID", "lastMutationID")
            VALUES (%s, %s, 1)
            ON CONFLICT ("clientGroupID", "clientID")
            DO UPDATE SET "lastMutationID" = current."lastMutationID" + 1
            RETURNING "lastMutationID"
            """
        ).format(sql.Identifier(shard.shard_schema, "clients"))

    async def apply(self, client_group_id: str, mutation: Mapping[str, Any], claims: Mapping[str, Any] | None) -> CrudResult:
        """Applies one CRUD mutation; raises PushError for an id gap or an internal failure."""
        ops = parse_ops(mutation)
        return await trio.to_thread.run_sync(self._apply_sync, client_group_id, mutation, ops, claims, limiter=self._limiter)

    def close(self) -> None:
        """Closes the pooled connections; those in use close when their mutation ends."""
        with self._idle_lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    def _apply_sync(
        self,
        client_group_id: str,
        mutation: Mapping[str, Any],
        ops: list[_Op] | CrudOpError,
        claims: Mapping[str, Any] | None,
    ) -> CrudResult:
        client_id, mutation_id = mutation["clientID"], mutation["id"]
        error_mode = False
        failure: str | None = None
        retries = gap_retries = attempts = 0
        conn = self._take()
        try:
            while True:
                attempts += 1
                try:
                    with conn.transaction():
                        outcome = self._transaction(conn, client_group_id, client_id, mutation_id, ops, claims, error_mode)
                    if error_mode:
                        return CrudResult("failed", failure, retries)
                    return CrudResult(outcome, None, retries)
                except _AlreadyProcessed:
                    return CrudResult("already_processed", None, retries)
                except _IdGap as e:
                    if not error_mode and self._custom_mutators and gap_retries < GAP_RETRIES_WITH_CUSTOM:
                        gap_retries += 1
                        time.sleep(GAP_RETRY_DELAY_S)
                        continue
                    raise PushError(invalid_push(str(e))) from e
                except psycopg.errors.SerializationFailure:
                    retries += 1
                    if retries >= MAX_SERIALIZATION_ATTEMPTS:
                        raise PushError(basic_error("Internal", f"mutation {mutation_id} of {client_id} could not be serialized after {retries} attempts")) from None
                    time.sleep(random.uniform(0, SERIALIZATION_BACKOFF_S * 2**retries))
                    continue
                except (psycopg.Error, CrudOpError, WriteRulesError) as e:
                    if conn.broken and attempts == 1:
                        # A pooled connection the server closed meanwhile: once more on a fresh one.
                        conn = self._replace(conn)
                        continue
                    if error_mode:
                        raise PushError(basic_error("Internal", _describe(e))) from e
                    failure = _describe(e)
                    log.warning("CRUD mutation %s of client %s failed, confirming it in error mode: %s", mutation_id, client_id, failure)
                    error_mode = True
                    if conn.broken:
                        conn = self._replace(conn)
        finally:
            self._give(conn)

    def _transaction(
        self,
        conn: psycopg.Connection[Any],
        client_group_id: str,
        client_id: str,
        mutation_id: int,
        ops: list[_Op] | CrudOpError,
        claims: Mapping[str, Any] | None,
        error_mode: bool,
    ) -> CrudStatus:
        row = conn.execute(self._bump, [client_group_id, client_id]).fetchone()
        assert row is not None
        last_mutation_id = int(row[0])
        if mutation_id < last_mutation_id:
            raise _AlreadyProcessed()
        if mutation_id > last_mutation_id:
            raise _IdGap(
                f"Push contains unexpected mutation id {mutation_id} for client {client_id}. "
                f"Expected mutation id {last_mutation_id}."
            )
        if error_mode:
            return "failed"
        if isinstance(ops, CrudOpError):
            raise ops
        tables = {name: self._describe_table(conn, name) for name in dict.fromkeys(op.table for op in ops)}
        rules = self._authorizer.rules(conn)
        try:
            with conn.transaction():
                allowed = True
                normalized = []
                for op in ops:
                    table = tables[op.table]
                    write = _normalize(conn, op, table)
                    normalized.append(write)
                    allowed = allowed and rules.allowed_before(conn, write, claims)
                    _execute(conn, op, table)
                if not (allowed and rules.allowed_after(conn, normalized, claims)):
                    raise _Denied()
        except _Denied:
            return "denied"
        return "applied"

    def _describe_table(self, conn: psycopg.Connection[Any], name: str) -> _Table:
        schema, table = split_table(name)
        rows = conn.execute(
            sql.SQL(
                """
                SELECT a.attname, format_type(a.atttypid, a.atttypmod), t.typname,
                       coalesce(a.attnum = ANY(k.indkey), false)
                FROM pg_class c
                JOIN pg_namespace n ON n.oid = c.relnamespace
                JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
                JOIN pg_type t ON t.oid = a.atttypid
                LEFT JOIN LATERAL (
                    SELECT i.indkey FROM pg_index i WHERE i.indrelid = c.oid AND (i.indisprimary OR i.indisreplident)
                    ORDER BY i.indisprimary DESC LIMIT 1
                ) k ON true
                WHERE n.nspname = %s AND c.relname = %s
                  AND EXISTS (SELECT 1 FROM pg_publication_tables p
                              WHERE p.schemaname = n.nspname AND p.tablename = c.relname
                                AND p.pubname = ANY(SELECT unnest(publications) FROM {}))
                ORDER BY a.attnum
                """
            ).format(sql.Identifier(self._shard.shard_schema, "shardConfig")),
            [schema, table],
        ).fetchall()
        if not rows:
            raise CrudOpError(f"Table '{name}' is not a valid table.")
        columns = {r[0]: _Column(r[0], r[1], r[2]) for r in rows}
        return _Table(name, table_identifier(name), columns, tuple(r[0] for r in rows if r[3]))

    def _take(self) -> psycopg.Connection[Any]:
        with self._idle_lock:
            if self._idle:
                return self._idle.pop()
        return self._connect()

    def _connect(self) -> psycopg.Connection[Any]:
        conn = psycopg.connect(self._dsn, autocommit=True, connect_timeout=10)
        conn.isolation_level = psycopg.IsolationLevel.SERIALIZABLE
        return conn

    def _replace(self, conn: psycopg.Connection[Any]) -> psycopg.Connection[Any]:
        conn.close()
        return self._connect()

    def _give(self, conn: psycopg.Connection[Any]) -> None:
        if conn.broken or conn.closed or conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            conn.close()
            return
        with self._idle_lock:
            if not self._closed:
                self._idle.append(conn)
                return
        conn.close()


def parse_ops(mutation: Mapping[str, Any]) -> list[_Op] | CrudOpError:
    """The ops of a `_zero_crud` mutation, checked for shape. A malformed op does not stop
    the mutation from being confirmed: the error is returned and fails it in error mode."""
    args = mutation.get("args")
    if not isinstance(args, list) or len(args) != 1 or not isinstance(args[0], dict) or not isinstance(args[0].get("ops"), list):
        return CrudOpError("CRUD mutation args must be [{ops: [...]}]")
    ops = []
    for i, op in enumerate(args[0]["ops"]):
        if not isinstance(op, dict) or op.get("op") not in ("insert", "upsert", "update", "delete"):
            return CrudOpError(f"op {i} must be an object with op insert, upsert, update or delete")
        table, primary_key, value = op.get("tableName"), op.get("primaryKey"), op.get("value")
        if not isinstance(table, str) or not isinstance(value, dict):
            return CrudOpError(f"op {i} needs a tableName string and a value object")
        if not isinstance(primary_key, list) or not primary_key or not all(isinstance(c, str) for c in primary_key):
            return CrudOpError(f"op {i} needs a non-empty primaryKey array of column names")
        missing = [c for c in primary_key if value.get(c) is None]
        if missing:
            return CrudOpError(f"op {i} on {table}: primary key column(s) {', '.join(missing)} missing from its value")
        ops.append(_Op(op["op"], table, tuple(primary_key), value))
    return ops


def _normalize(conn: psycopg.Connection[Any], op: _Op, table: _Table) -> WriteOp:
    key = {column: op.value.get(column) for column in (table.key or op.primary_key)}
    if None in key.values():
        raise CrudOpError(f"Primary key column(s) missing from operation value for table {table.name}")
    kind = op.kind
    if kind == "upsert":
        kind = "update" if _exists(conn, op, table) else "insert"
    return WriteOp(kind, op.table, op.value, key)


def _exists(conn: psycopg.Connection[Any], op: _Op, table: _Table) -> bool:
    where, params = _key_condition(op, table)
    found = conn.execute(sql.SQL("SELECT EXISTS (SELECT 1 FROM {} WHERE {})").format(table.identifier, where), params).fetchone()
    return bool(found and found[0])


def _execute(conn: psycopg.Connection[Any], op: _Op, table: _Table) -> None:
    if op.kind == "insert" and _exists(conn, op, table):
        raise CrudOpError(f"Row already exists in {table.name}: {dict(op.value)!r}")
    if op.kind in ("update", "delete") and not _exists(conn, op, table):
        raise CrudOpError(f"Pre-mutation row not found in {table.name} for {dict(op.value)!r}")
    target = sql.SQL(", ").join(sql.Identifier(c) for c in op.primary_key)
    if op.kind == "delete":
        where, params = _key_condition(op, table)
        conn.execute(sql.SQL("DELETE FROM {} WHERE {}").format(table.identifier, where), params)
        return
    columns = [_column(table, name) for name in op.value]
    values = [_adapt(op.value[c.name], c) for c in columns]
    placeholders = [sql.SQL("%s::{}").format(sql.SQL(c.sql_type)) for c in columns]
    names = [sql.Identifier(c.name) for c in columns]
    if op.kind == "update":
        where, key_params = _key_condition(op, table)
        assignments = sql.SQL(", ").join(sql.SQL("{} = {}").format(n, p) for n, p in zip(names, placeholders, strict=True))
        conn.execute(sql.SQL("UPDATE {} SET {} WHERE {}").format(table.identifier, assignments, where), [*values, *key_params])
        return
    insert = sql.SQL("INSERT INTO {} ({}) VALUES ({}) ON CONFLICT ({}) ").format(
        table.identifier, sql.SQL(", ").join(names), sql.SQL(", ").join(placeholders), target
    )
    if op.kind == "insert":
        conn.execute(insert + sql.SQL("DO NOTHING"), values)
    else:
        updates = sql.SQL(", ").join(sql.SQL("{} = EXCLUDED.{}").format(n, n) for n in names)
        conn.execute(insert + sql.SQL("DO UPDATE SET {}").format(updates), values)


def _key_condition(op: _Op, table: _Table) -> tuple[sql.Composable, list[Any]]:
    columns = [_column(table, name) for name in op.primary_key]
    where = sql.SQL(" AND ").join(
        sql.SQL("{} = %s::{}").format(sql.Identifier(c.name), sql.SQL(c.sql_type)) for c in columns
    )
    return where, [_adapt(op.value[c.name], c) for c in columns]


def _column(table: _Table, name: str) -> _Column:
    column = table.columns.get(name)
    if column is None:
        raise CrudOpError(f"column {name!r} does not exist in table {table.name}")
    return column


def _adapt(value: Any, column: _Column) -> Any:
    """A client value (ZQL's JSON types) as psycopg should send it for `column`'s type.

    Timestamps, dates and times travel as epoch / midnight milliseconds (§12); JSON columns
    take any JSON value, strings included."""
    if value is None:
        return None
    kind = column.type_name
    if kind == "jsonb":
        return Jsonb(value)
    if kind == "json":
        return Json(value)
    if isinstance(value, int | float) and not isinstance(value, bool):
        if kind in ("timestamptz", "timestamp", "date"):
            moment = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=value)
            if kind == "date":
                return moment.date()
            return moment if kind == "timestamptz" else moment.replace(tzinfo=None)
        if kind in ("time", "timetz"):
            if value < 0:
                raise CrudOpError(f"time value for {column.name} cannot be negative: {value}")
            midnight = datetime(1970, 1, 1) + timedelta(milliseconds=value)
            return midnight.time().isoformat() + ("+00" if kind == "timetz" else "")
    return value


def _describe(error: BaseException) -> str:
    """`<ErrorClass>: <message>`, as zero-cache's `String(e)` reads for its errors."""
    text = str(error).strip() or repr(error)
    name = "Error" if isinstance(error, CrudOpError | WriteRulesError) else type(error).__name__
    return f"{name}: {text}"
