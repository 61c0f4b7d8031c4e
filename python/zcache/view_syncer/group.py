"""One client group: its CVR in memory, its queries in the engine, its connections, its pokes.

Everything that changes the group (a connection, desired-query changes, a replica advance, a
TTL eviction) runs under the group's lock and ends in one *commit*:

1. the change's records get the new CVR version — `CVRVersion.next(state)`, where `state` is
   the replica version the change reflects (row changes) or the group's own (config changes);
2. the poke's `pokeStart` and `pokePart`s go out (the same encoded messages to every connection
   of the group), so that sending them overlaps the flush;
3. the change is flushed to the CVR store (one transaction, possibly shared with other groups);
4. only then is `pokeEnd` sent — or, if the flush failed, `pokeEnd` with `cancel` (the client
   discards the poke) before the connection's error.

A client applies a poke at its `pokeEnd`, so a cookie it holds is always durable: a client reconnecting with it, to this process
or after a restart, gets exactly the changes recorded after it (rows with a later
`patchVersion` from the store, with their current values from the replica; desires and got
queries from memory). A change with nothing a client sees (an internal query, the TTL clock) is
flushed at the current version without a poke.

A group that cannot write its CVR any more (another process owns it, or the database failed)
fails its connections (`Rehome` / `ServerOverloaded`) and forgets its state; the next
connection loads it again from the store, hydrates its queries and records the differences.

Connections never block the group: each has a small queue of whole pokes drained by its own
sender task (`ViewSyncerService.serve_client`); a connection whose queue is full is dropped (the
client reconnects and catches up from its cookie).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import trio

from zcache import _native
from zcache.app_server.queries import (
    ErroredQuery,
    NamedQuery,
    TransformedQuery,
    TransformFailed,
)
from zcache.cvr import (
    NEW_GROUP_STATE,
    CVRFlush,
    CVRRowsBehind,
    CVRSnapshot,
    CVRStoreUnavailable,
    CVRVersion,
    DesireRecord,
    InstanceRecord,
    QueryRecord,
)
from zcache.cvr.store import now_ms
from zcache.server.protocol import InitConnection, QueryClear, QueryDel, QueryPatchOp, QueryPut
from zcache.view_syncer.client_schema import check_client_schema
from zcache.view_syncer.poke import PokeContent, del_op, encode, poke_messages

if TYPE_CHECKING:
    from zcache.mutations import PushContext
    from zcache.server.connection import ClientConnection
    from zcache.view_syncer.service import ViewSyncerService

log = logging.getLogger("zcache.view_syncer")

# zero-cache's TTL rules: the client's default, and the server's cap.
DEFAULT_TTL_MS = 5 * 60 * 1000
MAX_TTL_MS = 10 * 60 * 1000
# Whole pokes (or single messages) queued per connection before it counts as hopelessly slow.
CONNECTION_QUEUE = 32
LMIDS_QUERY = "lmids"
MUTATION_RESULTS_QUERY = "mutationResults"

_UNSET: Any = object()


class ConnectRefused(Exception):
    """The connection cannot be served: answered with `["error", {kind, message, …}]` and a close."""

    def __init__(self, kind: str, message: str, **extra: Any) -> None:
        super().__init__(f"{kind}: {message}")
        self.kind = kind
        self.message = message
        self.extra = extra


class GroupRetired(Exception):
    """The group object was dropped from the service meanwhile: look it up again."""


@dataclass(frozen=True)
class Failure:
    """The last item of a connection's queue: send this error, then close."""

    kind: str
    message: str
    extra: dict[str, Any] = field(default_factory=dict)


Outgoing = list[str] | Failure


@dataclass(eq=False)
class Connection:
    """One socket of the group, as the group sees it."""

    conn: ClientConnection
    init: InitConnection
    outbox: trio.MemorySendChannel[Outgoing]
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    push: PushContext | None = None

    @property
    def client_id(self) -> str:
        return self.conn.params.client_id

    def offer(self, item: Outgoing) -> bool:
        """Queues without waiting; a full queue drops the connection (False)."""
        try:
            self.outbox.send_nowait(item)
            return True
        except trio.WouldBlock:
            log.warning("dropping client %s: %d pokes queued and not sent", self.client_id, CONNECTION_QUEUE)
            self.scope.cancel()
            return False
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return False


# An engine patch as the view syncer reads it: (replica version, its row changes, {query hash:
# error}).
Patch = tuple[str, _native.RowChanges, dict[str, str]]


@dataclass
class GroupChange:
    """What one operation changed, before it has a version."""

    state_version: str | None = None  # the replica version its row changes reflect
    # (table, canonical key) → (row version or None for a delete, encoded client op), in Rust
    rows: _native.RowChanges = field(default_factory=_native.RowChanges)
    got: dict[str, str] = field(default_factory=dict)  # query hash → "put" | "del"
    desired: dict[tuple[str, str], str] = field(default_factory=dict)  # (client, hash) → "put" | "del"
    queries: set[str] = field(default_factory=set)  # query records to write
    desires: set[tuple[str, str]] = field(default_factory=set)  # desire records to write
    clients_added: set[str] = field(default_factory=set)
    clients_removed: set[str] = field(default_factory=set)
    instance_changed: bool = False
    transform_errors: list[dict[str, Any]] = field(default_factory=list)

    def visible(self) -> bool:
        return bool(self.rows or self.got or self.desired)

    def merge_patch(self, patch: Patch) -> None:
        """An engine patch's row ops; later ops of a row replace earlier ones."""
        version, rows, _ = patch
        self.state_version = version
        self.rows.absorb(rows)


@dataclass
class Prepared:
    """A change with its version: the flush to write and the messages to send around it."""

    flush: CVRFlush
    version: CVRVersion
    head: list[str]  # before the flush: transform errors, pokeStart, pokeParts
    end: str | None  # after it: pokeEnd (None: nothing visible)
    state_version: str | None  # the replica version the change reflects


def transformation_hash(ast: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(ast, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]


def _ttl(value: float | None) -> float:
    if value is None or value < 0 or math.isnan(value):
        return float(DEFAULT_TTL_MS)
    return float(min(value, MAX_TTL_MS))


class ClientGroup:
    def __init__(self, service: ViewSyncerService, group_id: str) -> None:
        self._svc = service
        self.id = group_id
        self._lock = trio.Lock()
        self.retired = False
        self.loaded = False
        self.advance_pending = False  # a deferred advance is queued for the lock
        self.connections: dict[str, Connection] = {}
        self.idle_since: float | None = trio.current_time()
        self.inspect_authenticated = False
        self._reset_state()

    def _reset_state(self) -> None:
        self.version = CVRVersion(NEW_GROUP_STATE)
        self.stored_version: CVRVersion | None = None
        # Whether the store may hold row records of the group (False only for a group the
        # store has never seen and that flushed no rows since: its row records are inserted
        # without looking for existing ones, and its first catch-up reads none).
        self.rows_recorded = True
        self.purged = False
        self.replica_version: str | None = None
        self.client_schema: dict[str, Any] | None = None
        self.profile_id: str | None = None
        self.granted_at_ms = now_ms()
        self.clients: set[str] = set()
        self.queries: dict[str, QueryRecord] = {}
        self.desires: dict[tuple[str, str], DesireRecord] = {}
        self.engine_queries: dict[str, str] = {}  # hash → transformation hash of what the engine runs
        self.errored: set[str] = set()  # named queries whose transform failed
        self.pinned_user: Any = _UNSET
        self.advanced_to = ""  # see mark_advanced
        self.engine_generation: int | None = None  # the engine the group is loaded on (service)
        self._ttl_base_ms = 0.0
        self._ttl_anchor: float | None = None
        if self.connections:
            self._ttl_anchor = trio.current_time()

    # --- locking ------------------------------------------------------------------------------

    @asynccontextmanager
    async def locked(self) -> AsyncIterator[None]:
        """The group's lock.

        The body is shielded from cancellation: the engine's state, the CVR in memory and the
        store move together, and a body cancelled between an engine call and its flush would
        leave them apart. Bodies wait only on bounded things (threads, HTTP with timeouts)."""
        async with self._lock:
            if self.retired:
                raise GroupRetired
            with trio.CancelScope(shield=True):
                yield

    @property
    def busy(self) -> bool:
        """Something holds the group's lock (a connection being loaded, a query change, …)."""
        return self._lock.locked()

    def try_lock(self) -> bool:
        try:
            self._lock.acquire_nowait()
        except trio.WouldBlock:
            return False
        if self.retired:
            self._lock.release()
            return False
        return True

    def unlock(self) -> None:
        self._lock.release()

    # --- TTL clock ----------------------------------------------------------------------------

    def ttl_now(self) -> float:
        """Milliseconds the group has had a connection (zero-cache's TTL clock)."""
        if self._ttl_anchor is None:
            return self._ttl_base_ms
        return self._ttl_base_ms + (trio.current_time() - self._ttl_anchor) * 1000.0

    def _instance(self, version: CVRVersion) -> InstanceRecord:
        return InstanceRecord(
            group_id=self.id,
            version=version,
            last_active_ms=now_ms(),
            ttl_clock_ms=self.ttl_now(),
            replica_version=self.replica_version,
            granted_at_ms=self.granted_at_ms,
            client_schema=self.client_schema,
            profile_id=self.profile_id,
        )

    # --- commits ------------------------------------------------------------------------------

    def prepare(self, change: GroupChange, *, force: bool = False) -> Prepared | None:
        """Assigns the change its version; None when there is nothing to write."""
        visible = change.visible()
        if not (
            visible
            or force
            or change.queries
            or change.desires
            or change.clients_added
            or change.clients_removed
            or change.instance_changed
        ):
            self.mark_advanced(change.state_version)
            return None
        old = self.version
        new = old.next(change.state_version or old.state) if visible else old
        content = PokeContent()
        for (client_id, query_hash), op in change.desired.items():
            self.desires[(client_id, query_hash)].patch_version = new
            change.desires.add((client_id, query_hash))
            content.desire(client_id, op, query_hash)
        for query_hash, op in change.got.items():
            q = self.queries[query_hash]
            q.patch_version = new
            q.deleted = op == "del"
            change.queries.add(query_hash)
            content.got.append({"op": op, "hash": query_hash})
        for query_hash in change.queries:
            q = self.queries[query_hash]
            if q.transformation_hash is not None and q.transformation_version is None:
                q.transformation_version = new
        tables = self._svc.shard_tables
        content.rows, shard_rows = change.rows.poke_ops(tables.clients, tables.mutations)
        for table, op, deleted in shard_rows:
            content.row(tables, table, op, deleted)
        if self.replica_version is None or visible:
            self.replica_version = self._svc.replica_version
        flush = CVRFlush(
            self._instance(new),
            self.stored_version,
            clients_added=sorted(change.clients_added),
            clients_removed=sorted(change.clients_removed),
            queries=[self.queries[h] for h in sorted(change.queries)],
            desires=[self.desires[k] for k in sorted(change.desires)],
            rows=change.rows,
            rows_new=not self.rows_recorded,
            write_client_schema=self.stored_version is None or change.instance_changed,
        )
        head: list[str] = []
        if change.transform_errors:
            head.append(encode(["transformError", change.transform_errors]))
        end = None
        if visible:
            *poke, end = poke_messages(old.cookie, new.cookie, content)
            head.extend(poke)
        return Prepared(flush, new, head, end, change.state_version)

    def send_head(self, prepared: Prepared) -> None:
        if prepared.head:
            self.deliver(prepared.head)

    def mark_advanced(self, state_version: str | None) -> None:
        """The group's clients have been sent everything up to this replica version."""
        if state_version is not None and state_version > self.advanced_to:
            self.advanced_to = state_version
            self._svc.group_advanced()

    def finish(self, prepared: Prepared, *, rejected: bool) -> None:
        """After the flush: end the poke, or give the group up if another process has it."""
        if rejected:
            self.cancel_poke(prepared)
            self.fail_all("Rehome", "The client group's CVR was taken over by another zcache", maxBackoffMs=0)
            return
        self.version = prepared.version
        self.stored_version = prepared.version
        self.purged = False
        if prepared.flush.rows:
            self.rows_recorded = True
        if prepared.end is not None:
            self.deliver([prepared.end])
        self.mark_advanced(prepared.state_version)

    def cancel_poke(self, prepared: Prepared) -> None:
        """The flush failed: clients discard the poke they were sent the start of."""
        if prepared.end is not None:
            self.deliver([encode(["pokeEnd", {"pokeID": prepared.version.cookie, "cookie": "", "cancel": True}])])

    async def commit(self, change: GroupChange, *, force: bool = False) -> None:
        prepared = self.prepare(change, force=force)
        if prepared is None:
            return
        self.send_head(prepared)
        try:
            rejected = await self._svc.store.flush_one(prepared.flush)
        except CVRStoreUnavailable as e:
            self.cancel_poke(prepared)
            self.store_failed(e)
            raise
        self.finish(prepared, rejected=rejected)
        if rejected:
            raise ConnectRefused("Rehome", "The client group's CVR was taken over by another zcache", maxBackoffMs=0)

    def store_failed(self, error: Exception) -> None:
        log.warning("client group %s: CVR flush failed (%s); its clients must reconnect", self.id, error)
        self.fail_all("ServerOverloaded", f"The CVR database is unavailable: {error}", minBackoffMs=1000, maxBackoffMs=10000)

    def deliver(self, messages: list[str]) -> None:
        # A connection that cannot take the poke is dropped by `offer`; its serve_client task
        # removes it from the group.
        for handle in list(self.connections.values()):
            handle.offer(messages)

    def fail_all(self, kind: str, message: str, **extra: Any) -> None:
        """Every connection gets the error and closes; the group forgets its state."""
        for handle in self.connections.values():
            if not handle.offer(Failure(kind, message, extra)):
                handle.scope.cancel()
        self.connections.clear()
        self.forget()

    def forget(self) -> None:
        """Drops the in-memory CVR and the engine's copy; the store keeps the truth."""
        if self.loaded:
            self._svc.forget_engine_group(self.id)
        self.loaded = False
        self._reset_state()

    async def advance_alone(self) -> None:
        """Advances this group by itself (caller holds the lock)."""
        patch = await self._svc.engine_advance_group(self.id)
        change = GroupChange()
        self.absorb(change, patch)
        try:
            await self.commit(change)
        except (CVRStoreUnavailable, ConnectRefused):
            pass  # connections were failed already

    def absorb(self, change: GroupChange, patch: Patch) -> None:
        """An engine patch into a change; queries the engine failed leave the got set."""
        change.merge_patch(patch)
        for query_hash, message in patch[2].items():
            log.warning("client group %s: query %s failed: %s", self.id, query_hash, message)
            self.engine_queries.pop(query_hash, None)
            q = self.queries.get(query_hash)
            if q is not None and not q.internal and q.patch_version is not None and not q.deleted:
                change.got[query_hash] = "del"

    # --- connecting ---------------------------------------------------------------------------

    async def connect(self, handle: Connection) -> list[str]:
        """Loads (if needed), checks and registers the connection; sends its first poke.
        Returns the `deleted.clientIDs` that the caller acknowledges."""
        params = handle.conn.params
        try:
            base = None if params.base_cookie is None else CVRVersion.parse(params.base_cookie)
        except ValueError as e:
            raise ConnectRefused("InvalidConnectionRequestBaseCookie", str(e)) from None
        await self.validate(handle)
        async with self.locked():
            if not self.loaded:
                try:
                    snapshot = await self._svc.store.load(self.id, granted_at_ms=now_ms())
                except CVRRowsBehind as e:
                    raise ConnectRefused("ClientNotFound", str(e)) from None
                self._adopt(snapshot)
                self.engine_generation = self._svc.engine_generation
                try:
                    self._check(handle, base)
                    # Rows read before the replica reaches the CVR's version would take the
                    # clients back to older values.
                    if not await self._svc.wait_replica(self.version.state):
                        raise ConnectRefused(
                            "ServerOverloaded",
                            f"The replica is behind the client group's CVR (at {self.version.cookie}); it is catching up",
                            minBackoffMs=1000,
                            maxBackoffMs=10000,
                        )
                    await self._hydrate_recorded(handle)
                except BaseException:
                    self.forget()
                    raise
                self.loaded = True
            else:
                self._check(handle, base)
            if self.pinned_user is _UNSET:
                self.pinned_user = params.user_id
            change = GroupChange()
            deleted = self._apply_init(change, handle)
            await self.commit(change)
            catchup = await self._catchup(base)
            if not handle.offer(catchup):
                return []
            older = self.connections.get(handle.client_id)
            if older is not None and older is not handle:
                older.scope.cancel()
            if not self.connections:
                self._ttl_anchor = trio.current_time()
            self.connections[handle.client_id] = handle
            self.idle_since = None
        return deleted

    async def validate(self, handle: Connection) -> None:
        """The query URL's word on the connection's user (`["transform",[]]`), if there is one."""
        transformer = self._svc.transformer
        if transformer is None:
            return
        conn, init = handle.conn, handle.init
        try:
            validation = await transformer.validate_connection(
                auth_token=conn.auth.token,
                user_url=init.user_query_url,
                client_headers=init.user_query_headers,
                request_headers=conn.request_headers,
                cookie=conn.cookie,
                origin=conn.origin,
            )
        except TransformFailed as e:
            raise ConnectRefused(e.body["kind"], e.body.get("message", ""), **_extra(e.body)) from None
        if validation is not None and validation.user_id != conn.params.user_id:
            raise ConnectRefused("Unauthorized", "Connection userID does not match validated server userID.")

    def _adopt(self, snapshot: CVRSnapshot) -> None:
        self._reset_state()
        self.granted_at_ms = now_ms()
        inst = snapshot.instance
        if inst is None:
            self.rows_recorded = False
            return
        self.stored_version = inst.version
        if inst.deleted:
            self.purged = True
            return
        self.version = inst.version
        self.replica_version = inst.replica_version
        self.client_schema = inst.client_schema
        self.profile_id = inst.profile_id
        self._ttl_base_ms = inst.ttl_clock_ms
        self.clients = set(snapshot.clients)
        self.queries = dict(snapshot.queries)
        self.desires = dict(snapshot.desires)

    def _check(self, handle: Connection, base: CVRVersion | None) -> None:
        """zero-cache's connection checks (§7.2, §4.1, §8), in its order."""
        params, init = handle.conn.params, handle.init
        if base is not None:
            if self.purged:
                raise ConnectRefused("ClientNotFound", "Client has been purged due to inactivity")
            if self.version == CVRVersion(NEW_GROUP_STATE):
                raise ConnectRefused("ClientNotFound", "Client not found")
            if base > self.version:
                raise ConnectRefused("InvalidConnectionRequestBaseCookie", f"CVR is at version {self.version.cookie}")
        if (
            self.replica_version is not None
            and self.version.state != NEW_GROUP_STATE
            and self.replica_version > self._svc.replica_version
        ):
            raise ConnectRefused(
                "ClientNotFound", f"Cannot sync from older replica: CVR={self.replica_version}, DB={self._svc.replica_version}"
            )
        if self.client_schema is None and init.client_schema is None:
            raise ConnectRefused(
                "InvalidConnectionRequest", "The initConnection message for a new client group must include client schema."
            )
        if init.client_schema is not None and self.client_schema is not None and init.client_schema != self.client_schema:
            raise ConnectRefused("InvalidConnectionRequest", "Provided schema does not match previous schema")
        schema = init.client_schema if init.client_schema is not None else self.client_schema
        assert schema is not None
        problems = check_client_schema(
            schema, self._svc.replica_tables, app_id=self._svc.app_id, shard_num=self._svc.shard_num
        )
        if problems:
            raise ConnectRefused("SchemaVersionNotSupported", "\n".join(problems))
        if self.pinned_user is not _UNSET and self.pinned_user != params.user_id:
            raise ConnectRefused(
                "Unauthorized",
                "Client groups are pinned to a single userID. Connection userID does not match existing client group userID.",
            )

    def _apply_init(self, change: GroupChange, handle: Connection) -> list[str]:
        params, init = handle.conn.params, handle.init
        client_id = params.client_id
        if client_id not in self.clients:
            self.clients.add(client_id)
            change.clients_added.add(client_id)
        if self.client_schema is None and init.client_schema is not None:
            self.client_schema = init.client_schema
            change.instance_changed = True
        if params.profile_id is not None and params.profile_id != self.profile_id:
            self.profile_id = params.profile_id
            change.instance_changed = True
        gone = set(init.deleted_client_ids)
        if init.active_clients is not None:
            gone |= {c for c in self.clients if c not in init.active_clients and c != client_id}
        for other in sorted(gone - {client_id}):
            self._delete_client(change, other)
        self._apply_desired(change, client_id, init.desired_queries_patch)
        return [c for c in init.deleted_client_ids if c != client_id]

    def _delete_client(self, change: GroupChange, client_id: str) -> None:
        if client_id in self.clients:
            self.clients.discard(client_id)
            change.clients_added.discard(client_id)
            change.clients_removed.add(client_id)
        now = self.ttl_now()
        for (c, query_hash), d in self.desires.items():
            if c == client_id and not d.deleted:
                d.deleted = True
                d.inactivated_at_ms = now
                change.desired[(c, query_hash)] = "del"

    def _apply_desired(self, change: GroupChange, client_id: str, patch: Sequence[QueryPatchOp]) -> None:
        now = self.ttl_now()
        for op in patch:
            if isinstance(op, QueryPut):
                q = self.queries.get(op.hash)
                if q is None:
                    q = QueryRecord(op.hash, client_ast=op.ast, name=op.name, args=op.args)
                    self.queries[op.hash] = q
                    change.queries.add(op.hash)
                d = self.desires.get((client_id, op.hash))
                ttl = _ttl(op.ttl_ms)
                if d is None or d.deleted:
                    self.desires[(client_id, op.hash)] = DesireRecord(client_id, op.hash, self.version, ttl_ms=ttl)
                    change.desired[(client_id, op.hash)] = "put"
                elif d.ttl_ms != ttl:
                    d.ttl_ms = ttl
                    change.desires.add((client_id, op.hash))
            elif isinstance(op, QueryDel):
                d = self.desires.get((client_id, op.hash))
                if d is not None and not d.deleted:
                    d.deleted = True
                    d.inactivated_at_ms = now
                    change.desired[(client_id, op.hash)] = "del"
            elif isinstance(op, QueryClear):
                for (c, query_hash), d in self.desires.items():
                    if c == client_id and not d.deleted:
                        d.deleted = True
                        d.inactivated_at_ms = now
                        change.desired[(c, query_hash)] = "del"

    async def _catchup(self, base: CVRVersion | None) -> list[str]:
        """The first poke of a connection: everything recorded after its cookie."""
        content = PokeContent()
        for (client_id, query_hash), d in sorted(self.desires.items()):
            if base is None:
                if not d.deleted:
                    content.desire(client_id, "put", query_hash)
            elif d.patch_version > base:
                content.desire(client_id, "del" if d.deleted else "put", query_hash)
        for query_hash, q in sorted(self.queries.items()):
            if q.internal or q.patch_version is None:
                continue
            if base is None:
                if not q.deleted:
                    content.got.append({"op": "put", "hash": query_hash})
            elif q.patch_version > base:
                content.got.append({"op": "del" if q.deleted else "put", "hash": query_hash})
        if self.rows_recorded and (base is None or base < self.version):
            rows = await self._svc.store.catchup_rows(self.id, base)
            puts = [(r.table, r.row_key) for r in rows if r.row_version is not None]
            current = await self._svc.fetch_rows(puts) if puts else {}
            tables = self._svc.shard_tables
            for r in rows:
                if r.row_version is None:
                    content.row(tables, r.table, del_op(r.table, r.row_key), True)
                else:
                    # A row deleted from the replica since is not sent: the next advance deletes it.
                    op = current.get((r.table, r.row_key))
                    if op is not None:
                        content.row(tables, r.table, op, False)
        return poke_messages(None if base is None else base.cookie, self.version.cookie, content)

    # --- queries ------------------------------------------------------------------------------

    def _expiry(self, query_hash: str) -> float | None:
        """When a query's last inactive desire runs out on the TTL clock; None while a client
        desires it (a query nobody desires at all expires at once)."""
        end = 0.0
        for (_, h), d in self.desires.items():
            if h != query_hash:
                continue
            if not d.deleted:
                return None
            end = max(end, (d.inactivated_at_ms or 0.0) + (d.ttl_ms if d.ttl_ms is not None else DEFAULT_TTL_MS))
        return end

    def _wanted(self, query_hash: str, ttl_now: float) -> bool:
        expiry = self._expiry(query_hash)
        return expiry is None or expiry > ttl_now

    def next_expiry(self) -> float | None:
        """The TTL-clock time at which the next query the engine runs expires."""
        ends = [
            e
            for h in self.engine_queries
            if not self.queries[h].internal and (e := self._expiry(h)) is not None
        ]
        return min(ends, default=None)

    async def _hydrate_recorded(self, handle: Connection) -> None:
        """A group loaded from the store: runs its got queries and records what differs from
        the rows its clients were sent (a restart, a replica rebuilt meanwhile, …)."""
        self._svc.forget_engine_group(self.id)
        got = [h for h, q in sorted(self.queries.items()) if q.patch_version is not None and not q.deleted]
        named = [self.queries[h] for h in got if self.queries[h].name is not None]
        results = await self._transform(handle, named) if named else {}
        change = GroupChange()
        await self._add_queries(change, handle, got, results)
        # The group's version in the engine: the replica version every row below reflects.
        self.absorb(change, await self._svc.engine_advance_group(self.id))
        recorded = await self._svc.store.row_versions(self.id) if self.stored_version is not None else {}
        change.rows.diff_recorded(recorded)
        await self.commit(change)

    async def sync_queries(self, handle: Connection, *, retransform: bool = False) -> None:
        """Puts into the engine what the clients desire and it does not run yet (transforming
        named queries first); with `retransform`, every named query is transformed again (and
        every legacy query bound to the permissions again) and re-run if its AST changed."""
        async with self.locked():
            if not self.loaded:
                return
            wanted = self._unsynced(retransform=retransform)
            internal_missing = not self._has_internal_queries()
        if not wanted and not internal_missing:
            return
        named = [self.queries[h] for h in wanted if self.queries[h].name is not None]
        results = await self._transform(handle, named) if named else {}
        async with self.locked():
            if not self.loaded:
                return
            change = GroupChange()
            await self._add_queries_and_commit(change, handle, [h for h in wanted if h in self.queries], results)

    def _unsynced(self, *, retransform: bool) -> list[str]:
        """The desired queries the engine does not run yet (with `retransform`: every desired one)."""
        now = self.ttl_now()
        return [
            h
            for h, q in sorted(self.queries.items())
            if not q.internal
            and self._wanted(h, now)
            and (h not in self.engine_queries or retransform)
            and (retransform or h not in self.errored)
        ]

    async def _add_queries_and_commit(
        self, change: GroupChange, handle: Connection, hashes: Sequence[str], results: dict[str, TransformedQuery | ErroredQuery]
    ) -> None:
        """Adds the queries into `change` and commits it, also when one of them is refused: the
        others are in the engine then, and the CVR must say so. Caller holds the lock."""
        try:
            await self._add_queries(change, handle, hashes, results, internal=not self._has_internal_queries())
        except ConnectRefused:
            await self.commit(change)
            raise
        await self.commit(change)

    def _has_internal_queries(self) -> bool:
        return LMIDS_QUERY in self.engine_queries and MUTATION_RESULTS_QUERY in self.engine_queries

    async def _transform(
        self, handle: Connection, queries: Sequence[QueryRecord]
    ) -> dict[str, TransformedQuery | ErroredQuery]:
        transformer = self._svc.transformer
        if transformer is None:
            return {
                q.hash: ErroredQuery(
                    {"error": "app", "id": q.hash, "name": q.name, "message": "A ZERO_QUERY_URL must be set to use named queries."}
                )
                for q in queries
            }
        conn, init = handle.conn, handle.init
        try:
            results, validation = await transformer.transform(
                [NamedQuery(q.hash, q.name or "", list(q.args or [])) for q in queries],
                auth_token=conn.auth.token,
                user_id=conn.params.user_id,
                user_url=init.user_query_url,
                client_headers=init.user_query_headers,
                request_headers=conn.request_headers,
                cookie=conn.cookie,
                origin=conn.origin,
            )
        except TransformFailed as e:
            raise ConnectRefused(e.body["kind"], e.body.get("message", ""), **_extra(e.body)) from None
        if validation is not None and validation.user_id != conn.params.user_id:
            raise ConnectRefused("Unauthorized", "Connection userID does not match validated server userID.")
        return {r.id: r for r in results}

    async def _add_queries(
        self,
        change: GroupChange,
        handle: Connection,
        hashes: Sequence[str],
        results: dict[str, TransformedQuery | ErroredQuery],
        *,
        internal: bool = False,
    ) -> None:
        """Adds (or re-adds, when their AST changed) queries to the engine: got puts for the new
        ones, transform errors and got dels for the refused ones; with `internal`, the group's
        internal queries too, in the same engine call (each call waits its turn behind every
        other group's). Caller holds the lock."""
        adds: list[tuple[str, str]] = []
        for h in hashes:
            q = self.queries[h]
            if q.internal:
                ast = q.client_ast
            elif q.name is not None:
                result = results.get(h)
                if isinstance(result, ErroredQuery):
                    if h not in self.errored:
                        change.transform_errors.append(result.body)
                    self.errored.add(h)
                    if h in self.engine_queries:
                        change.merge_patch(await self._svc.engine_remove(self.id, h))
                        del self.engine_queries[h]
                    if not q.deleted or q.patch_version is None:
                        change.got[h] = "del"
                    continue
                if result is None:
                    continue
                self.errored.discard(h)
                ast = result.ast
            else:
                ast = await self._svc.bind_legacy(q.client_ast or {}, handle.conn.auth)
            assert ast is not None
            th = transformation_hash(ast)
            if self.engine_queries.get(h) == th:
                continue
            if q.name is not None and q.transformation_hash != th:
                q.transformation_hash = th
                q.transformation_version = None
                change.queries.add(h)
            adds.append((h, json.dumps(ast)))
        internal_adds = self._internal_adds() if internal else []
        if not adds and not internal_adds:
            return
        outcomes = await self._svc.engine_add(self.id, adds + [(h, json.dumps(ast)) for h, ast in internal_adds])
        # The engine runs every query that did not fail, whatever became of the others: the
        # group must know them all before a refusal goes out.
        refusal = None
        for (h, ast_json), outcome in zip(adds, outcomes[: len(adds)], strict=True):
            q = self.queries[h]
            if isinstance(outcome, str):
                # The AST does not fit the replica (zero-cache fails the client the same way).
                refusal = refusal or ConnectRefused("SchemaVersionNotSupported", outcome)
                continue
            self.absorb(change, outcome)
            self.engine_queries[h] = transformation_hash(json.loads(ast_json))
            if not q.internal and (q.patch_version is None or q.deleted):
                change.got[h] = "put"
        self._absorb_internal(change, internal_adds, outcomes[len(adds) :])
        if refusal is not None:
            raise refusal

    def _internal_adds(self) -> list[tuple[str, dict[str, Any]]]:
        """The internal queries (last mutation ids, mutation results) the engine lacks."""
        clients, mutations = self._svc.shard_tables.clients, self._svc.shard_tables.mutations
        adds: list[tuple[str, dict[str, Any]]] = []
        for query_hash, table in ((LMIDS_QUERY, clients), (MUTATION_RESULTS_QUERY, mutations)):
            if query_hash in self.engine_queries:
                continue
            ast = {
                "table": table,
                "where": {
                    "type": "simple",
                    "op": "=",
                    "left": {"type": "column", "name": "clientGroupID"},
                    "right": {"type": "literal", "value": self.id},
                },
            }
            adds.append((query_hash, ast))
        return adds

    def _absorb_internal(
        self, change: GroupChange, adds: list[tuple[str, dict[str, Any]]], outcomes: Sequence[Patch | str]
    ) -> None:
        for (query_hash, ast), outcome in zip(adds, outcomes, strict=True):
            q = self.queries.get(query_hash)
            if q is None:
                q = QueryRecord(query_hash, client_ast=ast, internal=True)
                self.queries[query_hash] = q
            if isinstance(outcome, str):
                log.warning("client group %s: internal query %s cannot run: %s", self.id, query_hash, outcome)
                continue
            self.absorb(change, outcome)
            self.engine_queries[query_hash] = transformation_hash(ast)
            q.patch_version = q.patch_version or self.version
            change.queries.add(query_hash)

    async def change_desired(self, handle: Connection, patch: Sequence[QueryPatchOp]) -> None:
        async with self.locked():
            if not self.loaded:
                return
            change = GroupChange()
            self._apply_desired(change, handle.client_id, patch)
            await self._evict(self.ttl_now(), change)
            wanted = self._unsynced(retransform=False)
            if not any(self.queries[h].name is not None for h in wanted):
                # Nothing to transform: the queries' rows go into the same flush and poke as
                # the desire (one CVR round trip less before the client has its rows).
                await self._add_queries_and_commit(change, handle, wanted, {})
                return
            await self.commit(change)
        await self.sync_queries(handle)

    async def evict_expired(self) -> None:
        if self._lock.locked():
            return  # busy: the next tick evicts
        async with self.locked():
            if self.loaded:
                await self._evict(self.ttl_now())

    async def _evict(self, now: float, into: GroupChange | None = None) -> None:
        """Removes the queries no client wants any more; their changes go `into` a change the
        caller commits, or are committed here."""
        expired = [
            h
            for h in sorted(self.engine_queries)
            if not self.queries[h].internal and not self._wanted(h, now)
        ]
        if not expired:
            return
        change = into if into is not None else GroupChange()
        for h in expired:
            change.merge_patch(await self._svc.engine_remove(self.id, h))
            del self.engine_queries[h]
            if not self.queries[h].deleted:
                change.got[h] = "del"
        if into is None:
            await self.commit(change)

    async def delete_clients(self, handle: Connection, client_ids: Sequence[str]) -> None:
        async with self.locked():
            if not self.loaded:
                return
            change = GroupChange()
            for client_id in client_ids:
                if client_id != handle.client_id:
                    self._delete_client(change, client_id)
            await self.commit(change)
            await self._evict(self.ttl_now())

    async def disconnect(self, handle: Connection) -> None:
        async with self.locked():
            if self.connections.get(handle.client_id) is not handle:
                return
            del self.connections[handle.client_id]
            if self.connections:
                return
            self._ttl_base_ms = self.ttl_now()
            self._ttl_anchor = None
            self.idle_since = trio.current_time()
            if self.loaded:
                try:
                    await self.commit(GroupChange(), force=True)
                except (CVRStoreUnavailable, ConnectRefused):
                    pass  # the group was given up; the store has its last good state

    def retire(self) -> None:
        self.retired = True
        self.forget()


def _extra(body: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if k not in ("kind", "message")}


