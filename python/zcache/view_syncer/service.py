"""The view syncer: every client group of the process, one query engine, one CVR store.

`ViewSyncerService` (contract: briefs/contracts.md, branch `view-syncer`) owns

* the `QueryEngine` over the replica file, opened once the replicator has a replica and
  reopened after a resync (every group's clients are then sent `Rehome` and reload);
* the client groups (`group.ClientGroup`), created on their first connection and dropped
  `idle_unload_s` after their last one left (memory goes back; the CVR stays in Postgres);
* the advance loop: on each new replica version, every loaded group is advanced by the engine
  in batches of `ADVANCE_BATCH` groups per call (the engine reads each changed row once for the
  whole batch), their CVR changes are flushed in one transaction per batch (overlapping the
  next batch's engine advance), then each group's poke goes to its connections. A group busy with something else (a connection, a transform)
  is skipped, and a deferred advance queues for its lock (one at a time per group): every
  version reaches every group, and a busy group never holds up the others. Batches start at a
  rotating offset, so no group is always last;
* the index loop: after queries are added, the engine's index suggestions not asked for yet go
  to the replicator, whose writer builds them between batches (`ReplicaWriter.add_indexes`);
* a ticker for TTL evictions (on each group's TTL clock) and idle groups, the periodic
  re-transform of named queries (`ZERO_AUTH_RETRANSFORM_INTERVAL_SECONDS`) and re-validation
  of connections (`ZERO_AUTH_REVALIDATE_INTERVAL_SECONDS`) through the query URL, and CVR
  garbage collection (`ZERO_CVR_GARBAGE_COLLECTION_*`).

Engine calls run in worker threads (the engine releases the GIL) one at a time, in the order
they were asked for (a CapacityLimiter of 1 is FIFO): queueing happens in Trio, fairly. A client
group's own calls (adding or removing its queries, advancing it alone) that arrive while one
runs go together into the next call (`Coalescer`): a burst of groups hydrating costs a few
thread hand-offs, not one per call.

Legacy queries are bound to the read rules of the replicated `<app>.permissions` row, read
through the engine (never with Python's `sqlite3`: a second SQLite library in the process
releases the engine's and the writer's POSIX locks on the file when it closes its own
descriptor, and the writer may then truncate what the engine has mapped). After each advance
the row's version is checked; when it changed, every group's legacy queries are bound again and
re-run if their AST changed.

Refinements of the contract: `__init__` also takes `development` (`NODE_ENV=
development`: inspector requests need no admin password; default from the environment) and
`idle_unload_s`.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import itertools
import json
import logging
import os
import secrets
import time
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

import trio

from zcache import _native
from zcache.app_server.queries import QueryTransformer
from zcache.auth.permissions import Permissions
from zcache.coalesce import Coalescer
from zcache.config import ZeroConfig
from zcache.cvr import CVRStore, CVRStoreUnavailable
from zcache.cvr.schema import CVRSchemaError
from zcache.cvr.store import now_ms
from zcache.mutations import MutationService, PushContext, PushError
from zcache.server.connection import ClientGone
from zcache.server.protocol import (
    AckMutationResponses,
    ChangeDesiredQueries,
    DeleteClients,
    InitConnection,
    Inspect,
    Push,
    UpdateAuth,
    UpstreamMessage,
)
from zcache.view_syncer.group import (
    CONNECTION_QUEUE,
    ClientGroup,
    Connection,
    ConnectRefused,
    Failure,
    GroupChange,
    GroupRetired,
    Outgoing,
    Patch,
    Prepared,
)
from zcache.view_syncer.inspect import answer_inspect
from zcache.view_syncer.poke import ShardTables, encode

if TYPE_CHECKING:
    from zcache.auth import AuthData
    from zcache.replica.replicator import Replicator
    from zcache.server.connection import ClientConnection

log = logging.getLogger("zcache.view_syncer")

T = TypeVar("T")
_KEEP = object()  # `dict.pop`'s default: the group was not forgotten

ADVANCE_BATCH = 256
# Client groups' own engine calls (adds, removes, one group's advance) per worker-thread call:
# few enough that an advance queued behind a batch of 10k-row hydrations waits for 16, not 64.
ENGINE_BATCH = 16
TICK_S = 0.5
# Dropping a client group's engine state costs ~0.5 µs a row (~5 ms for 10k rows): groups are
# dropped a few at a time, as many as take about this long, so that an advance queued behind
# them waits for that, not for every group that went idle in a tick.
RELEASE_CALL_S = 0.002
IDLE_UNLOAD_S = 30.0
# How long a loading group waits for the replica to reach its CVR's version (see wait_replica).
REPLICA_CATCH_UP_S = 30.0
STORE_RETRY_MAX_S = 10.0
RETRANSFORM_CONCURRENCY = 8
INDEX_CHECK_DELAY_S = 0.5



class ViewSyncerService:
    def __init__(
        self,
        config: ZeroConfig,
        *,
        replicator: Replicator,
        transformer: QueryTransformer | None,
        mutations: MutationService | None,
        cvr_dsn: str,
        development: bool | None = None,
        idle_unload_s: float = IDLE_UNLOAD_S,
    ) -> None:
        self.config = config
        self.app_id = config.app.id
        self.shard_num = config.shard.num
        self.shard_tables = ShardTables.of(self.app_id, self.shard_num)
        self.transformer = transformer
        self.mutations = mutations
        self.development = os.environ.get("NODE_ENV") == "development" if development is None else development
        self.store = CVRStore(
            cvr_dsn,
            app_id=self.app_id,
            shard_num=self.shard_num,
            owner=config.task_id or f"zcache-{secrets.token_hex(6)}",
            max_conns=config.cvr.max_conns,
        )
        self.store.on_rows_lost = self._rows_lost
        self._replicator = replicator
        self._replica_path = config.replica.file
        self._permissions = Permissions(None, None)
        self._permissions_version: str | None = None  # the row's _0_version
        self._idle_unload_s = idle_unload_s
        self._engine: _native.QueryEngine | None = None
        self._engine_generation = 0  # bumped for each engine opened (a replica rebuilt)
        self._engine_limiter = trio.CapacityLimiter(1)
        self._group_calls: Coalescer[tuple[str, Callable[[_native.QueryEngine], Any]], Any] = Coalescer(
            self._group_engine_batch, concurrency=1, max_batch=ENGINE_BATCH
        )
        # Groups whose engine state is to be dropped (insertion-ordered): by the ticker, a few
        # per engine call, or before the group's own next engine call.
        self._forgotten: dict[str, None] = {}
        self._resyncs = 0
        self.replica_version = ""
        self.replica_tables: dict[str, Any] = {}
        self._tables_seen: str | None = None  # the replicator's version when they were read
        self.groups: dict[str, ClientGroup] = {}
        self._ready = trio.Event()
        self._rotation = 0
        self._retransforms = trio.CapacityLimiter(RETRANSFORM_CONCURRENCY)
        self._nursery: trio.Nursery | None = None
        self._advanced = trio.Event()
        # Index suggestions already passed to the replicator, and a nudge to look for new ones.
        self._requested_indexes: set[tuple[str, tuple[str, ...]]] = set()
        self._index_check = trio.Event()

    def ready(self) -> bool:
        return self._ready.is_set()

    # --- the engine ---------------------------------------------------------------------------

    async def _in_engine(self, fn: Callable[[_native.QueryEngine], T], groups: Iterable[str] = ()) -> T:
        """Runs `fn` on the engine in a worker thread, after dropping the forgotten state of
        `groups` (the groups `fn` works on). Calls run in the order they were made (the limiter
        is FIFO), so a drop decided here never overtakes an earlier call, nor follows a later one."""
        engine = self._engine
        assert engine is not None, "the view syncer is not running"
        drop = [g for g in groups if self._forgotten.pop(g, _KEEP) is not _KEEP] if self._forgotten else []

        def call() -> T:
            for group_id in drop:
                engine.remove_group(group_id)
            return fn(engine)

        return await trio.to_thread.run_sync(call, limiter=self._engine_limiter)

    async def _group_engine_call(self, group_id: str, fn: Callable[[_native.QueryEngine], T]) -> T:
        """One client group's engine call: those of groups asking at the same time (a burst of
        connections hydrating) run in one worker-thread call, in the order they were asked."""
        return await self._group_calls((group_id, fn))

    async def _group_engine_batch(self, calls: list[tuple[str, Callable[[_native.QueryEngine], Any]]]) -> list[Any]:
        def run(engine: _native.QueryEngine) -> list[Any]:
            out: list[Any] = []
            for _, fn in calls:
                try:
                    out.append(fn(engine))
                except Exception as e:  # that caller's error, not its neighbours'
                    out.append(e)
            return out

        return await self._in_engine(run, [group_id for group_id, _ in calls])

    @property
    def engine_generation(self) -> int:
        """Which engine is open: a group records it when it loads."""
        return self._engine_generation

    def forget_engine_group(self, group_id: str) -> None:
        """The engine drops the group's state: before the group's next engine call, or when the
        ticker releases forgotten groups, whichever comes first."""
        self._forgotten[group_id] = None

    async def engine_add(self, group_id: str, adds: list[tuple[str, str]]) -> list[Patch | str]:
        """Adds queries; per query its patch, or why the engine refused its AST."""

        def call(engine: _native.QueryEngine) -> list[Patch | str]:
            out: list[Patch | str] = []
            for query_hash, ast_json in adds:
                try:
                    out.append(engine.add_query_changes(group_id, query_hash, ast_json))
                except _native.InvalidQueryError as e:
                    out.append(str(e))
            return out

        patches = await self._group_engine_call(group_id, call)
        self._index_check.set()
        return patches

    async def engine_remove(self, group_id: str, query_hash: str) -> Patch:
        return await self._group_engine_call(group_id, lambda e: e.remove_query_changes(group_id, query_hash))

    async def engine_advance(self, group_ids: list[str]) -> dict[str, Patch]:
        return await self._in_engine(lambda e: dict(e.advance_changes(group_ids)), group_ids)

    async def engine_advance_group(self, group_id: str) -> Patch:
        """One group's advance (a group loading, or one skipped by the advance loop)."""
        return await self._group_engine_call(group_id, lambda e: dict(e.advance_changes([group_id]))[group_id])

    async def fetch_rows(self, keys: list[tuple[str, str]]) -> dict[tuple[str, str], str]:
        """The current rows, by (table, canonical key): their encoded `put` ops."""
        _, ops, _ = await self._in_engine(lambda e: _native.read_patch(e.fetch_rows(keys)))
        return {(table, key): op for table, key, _, op in ops}

    async def query_row_counts(self, group_id: str, hashes: list[str]) -> dict[str, int]:
        return await self._in_engine(lambda e: {h: e.query_rows(group_id, h) for h in hashes}, [group_id])

    async def refresh_replica_tables(self) -> None:
        self._tables_seen = self._replicator.versions.version
        tables = await self._in_engine(lambda e: json.loads(e.client_tables()))
        self.replica_version = tables["replicaVersion"]
        self.replica_tables = tables["tables"]

    async def bind_legacy(self, ast: dict[str, Any], auth: AuthData) -> dict[str, Any]:
        """A legacy (client AST) query with the replica's read permissions applied."""
        return self._permissions.bind_read(ast, auth)

    async def _refresh_permissions(self) -> bool:
        """Reads the permissions row if it changed; True if it did."""
        table = f"{self.app_id}.permissions"
        result = await self._in_engine(lambda e: json.loads(e.fetch_rows([(table, '{"lock":true}')])))
        row = result["ops"][0] if result["ops"] else None
        version = None if row is None else row["rowVersion"]
        if version == self._permissions_version:
            return False
        value = None if row is None else row["value"]
        permissions = None if value is None else value.get("permissions")
        self._permissions = Permissions.from_json(
            None if permissions is None else json.dumps(permissions), None if value is None else value.get("hash")
        )
        self._permissions_version = version
        return True

    async def _open_engine(self) -> None:
        self._resyncs = self._replicator.statistics().resyncs
        self._engine = await trio.to_thread.run_sync(_native.QueryEngine, self._replica_path)
        self._engine_generation += 1
        self._forgotten = {}
        await self.refresh_replica_tables()
        self._permissions_version = None
        await self._refresh_permissions()

    # --- running ------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[ViewSyncerService] = trio.TASK_STATUS_IGNORED) -> None:
        await self._prepare_store()
        await self._replicator.versions.wait_newer_than("")
        await self._open_engine()
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._advance_loop)
                nursery.start_soon(self._ticker)
                nursery.start_soon(self._retransform_loop)
                nursery.start_soon(self._revalidate_loop)
                nursery.start_soon(self._gc_loop)
                nursery.start_soon(self._index_loop)
                nursery.start_soon(self.store.write_deferred_rows)
                self._ready.set()
                task_status.started(self)
        finally:
            self.store.close()

    async def _prepare_store(self) -> None:
        delay = 0.25
        while True:
            try:
                await self.store.ensure_schema()
                return
            except CVRSchemaError:
                raise
            except CVRStoreUnavailable as e:
                log.warning("CVR database not ready (%s); retrying in %.1fs", e, delay)
                await trio.sleep(delay)
                delay = min(delay * 2, STORE_RETRY_MAX_S)

    def _rows_lost(self, group_id: str, error: Exception) -> None:
        """A group's deferred row records could not be written: what the store says its clients
        have is behind, so they are sent away (and the group's next load is refused)."""
        group = self.groups.get(group_id)
        if group is not None and self._nursery is not None:
            self._nursery.start_soon(self._fail_group, group, error)

    async def _fail_group(self, group: ClientGroup, error: Exception) -> None:
        try:
            async with group.locked():
                if group.loaded:
                    group.store_failed(error)
        except GroupRetired:
            pass

    async def _advance_loop(self) -> None:
        seen = self._replicator.versions.version
        while True:
            seen = await self._replicator.versions.wait_newer_than(seen)
            if self._replicator.statistics().resyncs != self._resyncs:
                await self._replica_rebuilt()
                continue
            await self.advance_all()
            if await self._refresh_permissions():
                await self._rebind_legacy_queries()

    async def _rebind_legacy_queries(self) -> None:
        async with trio.open_nursery() as nursery:
            for g in list(self.groups.values()):
                handles = list(g.connections.values())
                if g.loaded and handles and any(q.client_ast is not None and not q.internal for q in g.queries.values()):
                    nursery.start_soon(self._retransform, g, handles[0], self._retransforms)

    def group_advanced(self) -> None:
        self._advanced.set()
        self._advanced = trio.Event()

    async def wait_replica(self, state_version: str) -> bool:
        """Waits (at most REPLICA_CATCH_UP_S) until the replica is at `state_version` or later;
        False if it is not by then. A CVR can be ahead of this process's replica: written by a
        process whose replica was further on, or by this one before a power loss took the
        replica's last, not yet synced, commits back (they are streamed again)."""
        versions = self._replicator.versions
        with trio.move_on_after(REPLICA_CATCH_UP_S):
            while versions.version < state_version:
                await versions.wait_newer_than(versions.version)
            return True
        return False

    async def wait_advanced(self, version: str) -> None:
        """Returns once every loaded group's engine state is at `version` or later."""
        while any(g.loaded and g.advanced_to < version for g in self.groups.values()):
            await self._advanced.wait()

    async def advance_all(self) -> None:
        """Advances every loaded group to the replica's current version."""
        # A group still loading (busy, not loaded yet) may have been hydrated before this
        # version reached the engine: it gets a deferred advance, which runs once it is loaded.
        groups = [g for g in self.groups.values() if g.loaded or g.busy]
        if not groups:
            return
        self._rotation = (self._rotation + 1) % len(groups)
        groups = groups[self._rotation :] + groups[: self._rotation]
        # One task per batch: the engine takes their advances in order (its limiter is FIFO),
        # so a batch's flush runs while the next batch is in the engine. Each group stays
        # locked from its engine advance to its pokeEnd, so its pokes keep their order.
        with trio.CancelScope(shield=True):
            async with trio.open_nursery() as batches:
                for start in range(0, len(groups), ADVANCE_BATCH):
                    batches.start_soon(self._advance_batch, groups[start : start + ADVANCE_BATCH])

    async def _advance_batch(self, batch: list[ClientGroup]) -> None:
        held: list[ClientGroup] = []
        for g in batch:
            if g.try_lock():
                held.append(g)
            else:
                self._defer_advance(g)
        try:
            groups = [g for g in held if g.loaded]
            if not groups:
                return
            patches = await self.engine_advance([g.id for g in groups])
            prepared: list[tuple[ClientGroup, Prepared]] = []
            for g in groups:
                change = GroupChange()
                g.absorb(change, patches[g.id])
                p = g.prepare(change)
                if p is not None:
                    prepared.append((g, p))
            if not prepared:
                return
            for g, p in prepared:
                g.send_head(p)
            try:
                rejected = await self.store.flush([p.flush for _, p in prepared])
            except CVRStoreUnavailable as e:
                for g, p in prepared:
                    g.cancel_poke(p)
                    g.store_failed(e)
                return
            for g, p in prepared:
                g.finish(p, rejected=g.id in rejected)
        finally:
            for g in held:
                g.unlock()

    def _defer_advance(self, group: ClientGroup) -> None:
        if group.advance_pending or self._nursery is None:
            return
        group.advance_pending = True
        self._nursery.start_soon(self._deferred_advance, group)

    async def _deferred_advance(self, group: ClientGroup) -> None:
        try:
            async with group.locked():
                # Cleared first: an advance skipped while this one runs queues the next one.
                group.advance_pending = False
                if group.loaded:
                    await group.advance_alone()
        except GroupRetired:
            pass

    async def _index_loop(self) -> None:
        """Passes the engine's index suggestions for newly added queries to the replicator,
        whose writer builds them between batches (off every client's path); once built, the
        engine's statements use them (SQLite re-prepares them on the schema change)."""
        while True:
            await self._index_check.wait()
            # Queries usually arrive in bursts (a connection's desired queries): look once.
            await trio.sleep(INDEX_CHECK_DELAY_S)
            self._index_check = trio.Event()
            suggestions = await self._in_engine(lambda e: e.index_suggestions())
            new = [(t, cols) for t, cols in suggestions if (t, tuple(cols)) not in self._requested_indexes]
            if new:
                self._requested_indexes.update((t, tuple(cols)) for t, cols in new)
                self._replicator.request_indexes(new)

    async def _replica_rebuilt(self) -> None:
        """Every group loaded over the old replica is told to reload (Rehome) and dropped.

        The new engine is opened first, so that a group loading from then on runs on it and is
        kept; a group loaded (or loading) on the old one is retired once its lock is free. Groups
        retired meanwhile (idle ones, by the ticker) are skipped."""
        log.warning("the replica was rebuilt; every client group reloads")
        await self._open_engine()
        generation = self._engine_generation

        def stale() -> list[ClientGroup]:
            return [
                g for g in self.groups.values()
                if not g.retired and g.engine_generation is not None and g.engine_generation != generation
            ]

        while groups := stale():
            for g in groups:
                try:
                    async with g.locked():
                        if g.engine_generation is not None and g.engine_generation != generation:
                            g.fail_all("Rehome", "The replica was rebuilt; reconnect", maxBackoffMs=0)
                            g.retire()
                except GroupRetired:
                    pass
                if g.retired and self.groups.get(g.id) is g:
                    del self.groups[g.id]

    async def _ticker(self) -> None:
        """TTL evictions and idle groups."""
        while True:
            await trio.sleep(TICK_S)
            now = trio.current_time()
            for g in list(self.groups.values()):
                if g.connections and g.loaded:
                    expiry = g.next_expiry()
                    if expiry is not None and expiry <= g.ttl_now():
                        await g.evict_expired()
                elif not g.connections and g.idle_since is not None and now - g.idle_since >= self._idle_unload_s:
                    if g.try_lock():
                        try:
                            if not g.connections:
                                g.retire()
                                if self.groups.get(g.id) is g:
                                    del self.groups[g.id]
                        finally:
                            g.unlock()
            if self._forgotten:
                await self._release_forgotten_groups()

    async def _release_forgotten_groups(self) -> None:
        """Drops the engine state of forgotten groups (retired, failed), a few groups per engine
        call (as many as take about RELEASE_CALL_S), then gives the freed heap back to the OS."""
        per_call = 1
        while self._forgotten and self._engine is not None:
            drop = list(itertools.islice(self._forgotten, per_call))
            for group_id in drop:
                del self._forgotten[group_id]

            def release(engine: _native.QueryEngine, drop: list[str] = drop) -> float:
                start = time.perf_counter()
                for group_id in drop:
                    engine.remove_group(group_id)
                return time.perf_counter() - start

            took = await self._in_engine(release)
            if took < RELEASE_CALL_S / 2:
                per_call = min(per_call * 2, ADVANCE_BATCH)
            elif took > RELEASE_CALL_S * 2:
                per_call = max(per_call // 2, 1)
        await trio.to_thread.run_sync(_release_free_heap)

    async def _retransform_loop(self) -> None:
        interval = self.config.auth.retransform_interval_seconds
        if self.transformer is None or interval <= 0:
            return
        while True:
            await trio.sleep(interval)
            async with trio.open_nursery() as nursery:
                for g in list(self.groups.values()):
                    handles = list(g.connections.values())
                    if g.loaded and handles and any(q.name is not None for q in g.queries.values()):
                        nursery.start_soon(self._retransform, g, handles[0], self._retransforms)

    async def _revalidate_loop(self) -> None:
        """Every connection's user is confirmed again with the query URL's empty transform."""
        interval = self.config.auth.revalidate_interval_seconds
        if self.transformer is None or interval <= 0:
            return
        while True:
            await trio.sleep(interval)
            async with trio.open_nursery() as nursery:
                for g in list(self.groups.values()):
                    for handle in list(g.connections.values()):
                        nursery.start_soon(self._revalidate, g, handle)

    async def _revalidate(self, group: ClientGroup, handle: Connection) -> None:
        async with self._retransforms:
            try:
                await group.validate(handle)
            except ConnectRefused as e:
                handle.offer(Failure(e.kind, e.message, e.extra))

    async def _retransform(self, group: ClientGroup, handle: Connection, limiter: trio.CapacityLimiter) -> None:
        async with limiter:
            try:
                await group.sync_queries(handle, retransform=True)
            except ConnectRefused as e:
                handle.offer(Failure(e.kind, e.message, e.extra))
            except (CVRStoreUnavailable, GroupRetired):
                pass

    async def _gc_loop(self) -> None:
        cvr = self.config.cvr
        if cvr.garbage_collection_initial_batch_size <= 0:
            return
        interval = max(cvr.garbage_collection_initial_interval_seconds, 1.0)
        while True:
            await trio.sleep(interval)
            try:
                connected = [g.id for g in self.groups.values() if g.connections and g.loaded]
                await self.store.touch(connected)
                threshold = cvr.garbage_collection_inactivity_threshold_hours * 3_600_000
                purged = await self.store.collect_garbage(
                    inactive_before_ms=now_ms() - threshold, limit=cvr.garbage_collection_initial_batch_size
                )
                if purged:
                    log.info("purged %d inactive client groups", len(purged))
            except CVRStoreUnavailable as e:
                log.warning("CVR garbage collection skipped: %s", e)
            # Up to 16 minutes between passes, as zero-cache does.
            interval = min(interval * 2, 16 * 60.0)

    # --- clients ------------------------------------------------------------------------------

    def _group(self, group_id: str) -> ClientGroup:
        group = self.groups.get(group_id)
        if group is None or group.retired:
            group = ClientGroup(self, group_id)
            self.groups[group_id] = group
        return group

    async def serve_client(
        self, conn: ClientConnection, init: InitConnection, inbox: trio.MemoryReceiveChannel[UpstreamMessage]
    ) -> None:
        """Serves one connection until its inbox closes (the socket closed) or the group drops it."""
        await self._ready.wait()
        send, receive = trio.open_memory_channel[Outgoing](CONNECTION_QUEUE)
        handle = Connection(conn, init, send)
        handle.push = self._push_context(handle)
        group: ClientGroup | None = None
        try:
            async with trio.open_nursery() as nursery:
                handle.scope = nursery.cancel_scope
                nursery.start_soon(_send_loop, handle, receive)
                try:
                    # The tables change only with the replica: read again once it moved (not
                    # once per connection, which queues an engine call behind every other).
                    if self._replicator.versions.version != self._tables_seen:
                        await self.refresh_replica_tables()
                    while True:
                        group = self._group(conn.params.client_group_id)
                        try:
                            deleted = await group.connect(handle)
                            break
                        except GroupRetired:
                            continue
                    if deleted:
                        await self._deleted_clients(handle, deleted)
                    await group.sync_queries(handle, retransform=True)
                    async for message in inbox:
                        await self._dispatch(group, handle, message)
                except ConnectRefused as e:
                    handle.offer(Failure(e.kind, e.message, e.extra))
                    await trio.sleep_forever()
                except CVRStoreUnavailable as e:
                    handle.offer(
                        Failure("ServerOverloaded", f"The CVR database is unavailable: {e}", {"minBackoffMs": 1000, "maxBackoffMs": 10000})
                    )
                    await trio.sleep_forever()
                except GroupRetired:
                    handle.offer(Failure("Rehome", "The client group was reloaded; reconnect", {"maxBackoffMs": 0}))
                    await trio.sleep_forever()
                nursery.cancel_scope.cancel()
        finally:
            if group is not None:
                with trio.CancelScope(shield=True):
                    try:
                        await group.disconnect(handle)
                    except GroupRetired:
                        pass

    async def _dispatch(self, group: ClientGroup, handle: Connection, message: UpstreamMessage) -> None:
        match message:
            case ChangeDesiredQueries(desired_queries_patch=patch):
                await group.change_desired(handle, patch)
            case UpdateAuth():
                # The edge re-authenticated the token (conn.auth is the new one): pushes and
                # named queries go on with it.
                handle.push = self._push_context(handle)
                await group.sync_queries(handle, retransform=True)
            case Push(body=body):
                await self._push(handle, body)
            case AckMutationResponses(client_id=client_id, id=up_to):
                if self.mutations is not None and handle.push is not None:
                    await self.mutations.ack_mutation_responses(handle.push, client_id, int(up_to))
            case DeleteClients(client_ids=client_ids):
                await self._deleted_clients(handle, client_ids)
                await group.delete_clients(handle, client_ids)
            case Inspect(body=body):
                handle.offer([encode(m) for m in await answer_inspect(self, group, handle, body)])

    async def _deleted_clients(self, handle: Connection, client_ids: list[str]) -> None:
        handle.offer([encode(["deleteClients", {"clientIDs": client_ids}])])
        if self.mutations is not None and handle.push is not None:
            await self.mutations.delete_clients(handle.push, client_ids)

    async def _push(self, handle: Connection, body: dict[str, Any]) -> None:
        if self.mutations is None or handle.push is None:
            raise ConnectRefused(
                "InvalidPush", "A ZERO_MUTATE_URL must be set in order to process custom mutations."
            )
        try:
            await self.mutations.push(handle.push, body)
        except PushError as e:
            raise ConnectRefused(e.body["kind"], e.body.get("message", ""), **{k: v for k, v in e.body.items() if k not in ("kind", "message")}) from None

    def _push_context(self, handle: Connection) -> PushContext | None:
        if self.mutations is None:
            return None
        conn, init = handle.conn, handle.init

        async def send_error(body: dict[str, Any]) -> None:
            handle.offer([encode(["error", body])])

        async def fail(body: dict[str, Any]) -> None:
            extra = {k: v for k, v in body.items() if k not in ("kind", "message")}
            handle.offer(Failure(body["kind"], body.get("message", ""), extra))

        return PushContext(
            client_group_id=conn.params.client_group_id,
            client_id=conn.params.client_id,
            auth=conn.auth,
            user_push_url=init.user_push_url,
            client_headers=init.user_push_headers,
            request_headers=conn.request_headers,
            cookie=conn.cookie,
            origin=conn.origin,
            send_error=send_error,
            fail=fail,
        )

    def statistics(self) -> Mapping[str, int]:
        return {
            "client_groups": len(self.groups),
            "loaded_client_groups": sum(1 for g in self.groups.values() if g.loaded),
            "connections": sum(len(g.connections) for g in self.groups.values()),
        }


def _release_free_heap() -> None:
    """glibc keeps freed memory in its arenas for reuse; `malloc_trim` returns their free pages
    (after 1,000 client groups left, about 45 MB of 190). Other C libraries: nothing to do."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def _load_glibc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "malloc_trim") else None


_LIBC = _load_glibc()


async def _send_loop(handle: Connection, receive: trio.MemoryReceiveChannel[Outgoing]) -> None:
    """Drains one connection's queue onto its socket; an error ends the connection."""
    async with receive:
        async for item in receive:
            try:
                if isinstance(item, Failure):
                    await handle.conn.fail(item.kind, item.message, **item.extra)
                    handle.scope.cancel()
                    return
                await handle.conn.send_many(item)
            except ClientGone:
                handle.scope.cancel()
                return

