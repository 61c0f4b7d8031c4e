"""`MutationService`: the write path of every connection (issue 6). See the package docstring."""

from __future__ import annotations

import json
import logging
import time
import weakref
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import trio

from zcache.app_server.api import ApiCallFailed, ApiServer, ApiUrlNotAllowed
from zcache.app_server.http import HttpClient
from zcache.auth import AuthData
from zcache.change_source.upstream import ShardId
from zcache.config import ZeroConfig
from zcache.mutations.crud import CrudExecutor
from zcache.mutations.errors import PushError, basic_error, invalid_push, mutation_ids, push_failed
from zcache.mutations.rate_limit import MutationLimiter
from zcache.mutations.responses import PushOutcome, failed_push, interpret
from zcache.mutations.stats import MutationCounters, MutationStatistics

log = logging.getLogger("zcache.mutations")

CLEANUP_MUTATION = "_zero_cleanupResults"
# Pushes waiting per client group; a connection that pushes faster than its app server
# answers waits in `push()` (and so stops reading its socket) once this many are queued.
QUEUE_CAPACITY = 256
# A client group's pusher task ends after this long without pushes (it starts again on demand).
IDLE_PUSHER_S = 60.0
# The whole of one push request, retries included; the app server's answer after that is ignored
# and the push fails with reason "timeout". zero-cache relies on Node fetch's defaults here.
PUSH_TIMEOUT_S = 30.0


@dataclass(eq=False)
class PushContext:
    """What the write path needs of one client connection (built by the view syncer).

    Identity matters: pushes of the same PushContext (and auth) are concatenated into one
    request; a context that failed gets no more of its queued pushes forwarded.
    """

    client_group_id: str
    client_id: str
    auth: AuthData
    user_push_url: str | None
    client_headers: Mapping[str, str]
    request_headers: Mapping[str, str]
    cookie: str | None
    origin: str | None
    send_error: Callable[[dict[str, Any]], Awaitable[None]]  # a non-fatal `error` message
    fail: Callable[[dict[str, Any]], Awaitable[None]]  # `error` message, then close the socket


@dataclass(frozen=True)
class _Sender:
    """A connection as it was when it pushed (auth may change later with updateAuth)."""

    conn: PushContext
    token: str | None
    user_id: str | None
    url: str | ApiUrlNotAllowed

    @property
    def key(self) -> tuple[object, ...]:
        return (id(self.conn), self.token, self.user_id, self.url if isinstance(self.url, str) else None)


@dataclass(frozen=True)
class _Entry:
    sender: _Sender
    body: dict[str, Any]
    enqueued_at: float


@dataclass
class _Batch:
    sender: _Sender
    body: dict[str, Any]
    entries: list[_Entry] = field(default_factory=list)


class MutationService:
    """One per process. Runs one pusher task per client group with queued custom pushes."""

    def __init__(
        self,
        config: ZeroConfig,
        *,
        http: HttpClient,
        upstream_dsn: str,
        push_timeout_s: float = PUSH_TIMEOUT_S,
    ) -> None:
        self._config = config
        self._push_timeout_s = push_timeout_s
        self._api = (
            ApiServer(config.mutate, http=http, app_id=config.app.id, shard_num=config.shard.num, kind="mutate")
            if config.mutate.url
            else None
        )
        self._crud = (
            CrudExecutor(
                upstream_dsn,
                ShardId(config.app.id, config.shard.num),
                max_conns=config.upstream.max_conns,
                custom_mutators=self._api is not None,
            )
            if config.enable_crud_mutations
            else None
        )
        limit = config.per_user_mutation_limit
        self._limiter = MutationLimiter(limit.max, limit.window_ms / 1000) if limit.max is not None else None
        self._counters = MutationCounters()
        self._pushers: dict[str, _GroupPusher] = {}
        self._nursery: trio.Nursery | None = None

    async def run(self, *, task_status: trio.TaskStatus[MutationService] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                task_status.started(self)
                await trio.sleep_forever()
        finally:
            self._nursery = None
            if self._crud is not None:
                self._crud.close()

    def statistics(self) -> MutationStatistics:
        queued = sum(p.queued() for p in self._pushers.values())
        return self._counters.snapshot(queued)

    async def push(self, conn: PushContext, body: dict[str, Any]) -> None:
        """Forwards custom mutations (queued; returns once queued) or applies CRUD ones
        (returns once applied). Raises PushError for a push that must close the connection."""
        if body.get("clientGroupID") != conn.client_group_id:
            raise PushError(
                invalid_push(
                    f'clientGroupID in mutation "{body.get("clientGroupID")}" does not match '
                    f'clientGroupID of connection "{conn.client_group_id}'
                )
            )
        mutations = _checked_mutations(body)
        if not mutations:
            return
        if mutations[0]["type"] == "custom":
            await self._enqueue(conn, body)
        else:
            await self._apply_crud(conn, mutations)

    async def ack_mutation_responses(self, conn: PushContext, client_id: str, up_to_id: int) -> None:
        """The client has read the results up to `up_to_id`: the app may delete them."""
        now = _epoch_ms()
        await self._cleanup(
            conn,
            {
                "clientGroupID": conn.client_group_id,
                "mutations": [
                    {
                        "type": "custom",
                        "id": 0,
                        "clientID": client_id,
                        "name": CLEANUP_MUTATION,
                        "args": [
                            {
                                "type": "single",
                                "clientGroupID": conn.client_group_id,
                                "clientID": client_id,
                                "upToMutationID": up_to_id,
                            }
                        ],
                        "timestamp": now,
                    }
                ],
                "pushVersion": 1,
                "timestamp": now,
                "requestID": f"cleanup-{conn.client_group_id}-{client_id}-{up_to_id}",
            },
        )

    async def delete_clients(self, conn: PushContext, client_ids: list[str]) -> None:
        """Clients were deleted from the group: the app may delete all their results."""
        if not client_ids:
            return
        now = _epoch_ms()
        await self._cleanup(
            conn,
            {
                "clientGroupID": conn.client_group_id,
                "mutations": [
                    {
                        "type": "custom",
                        "id": 0,
                        # zero-cache sends the bulk cleanup "from" the first deleted client.
                        "clientID": client_ids[0],
                        "name": CLEANUP_MUTATION,
                        "args": [{"type": "bulk", "clientGroupID": conn.client_group_id, "clientIDs": client_ids}],
                        "timestamp": now,
                    }
                ],
                "pushVersion": 1,
                "timestamp": now,
                "requestID": f"cleanup-bulk-{conn.client_group_id}-{now}",
            },
        )

    # --- custom mutations ---------------------------------------------------------------

    async def _enqueue(self, conn: PushContext, body: dict[str, Any]) -> None:
        if self._api is None:
            raise PushError(invalid_push("A ZERO_MUTATE_URL must be set in order to process custom mutations."))
        if any(m["type"] != "custom" for m in body["mutations"]):
            raise PushError(invalid_push("A push must not mix custom and CRUD mutations."))
        try:
            url: str | ApiUrlNotAllowed = self._api.resolve_url(conn.user_push_url)
        except ApiUrlNotAllowed as e:
            url = e  # fails in order, in the pusher, as zero-cache's fetch does
        entry = _Entry(_Sender(conn, conn.auth.token, conn.auth.user_id, url), body, trio.current_time())
        while True:
            pusher = self._pusher(conn.client_group_id)
            pusher.clients[conn.client_id] = conn
            try:
                pusher.send.send_nowait(entry)
                return
            except trio.WouldBlock:
                try:
                    await pusher.send.send(entry)
                    return
                except trio.ClosedResourceError:
                    continue  # the pusher ended while we waited; a new one takes the push
            except trio.ClosedResourceError:
                continue

    def _pusher(self, client_group_id: str) -> _GroupPusher:
        pusher = self._pushers.get(client_group_id)
        if pusher is None:
            if self._nursery is None:
                raise RuntimeError("MutationService.push() called while the service is not running")
            pusher = self._pushers[client_group_id] = _GroupPusher(self, client_group_id)
            self._nursery.start_soon(pusher.run, name=f"pusher {client_group_id}")
        return pusher

    async def _forward(self, batch: _Batch) -> PushOutcome:
        """One request to the push URL for a batch of one connection's pushes."""
        assert self._api is not None
        ids = mutation_ids(batch.body["mutations"])
        sender = batch.sender
        if isinstance(sender.url, ApiUrlNotAllowed):
            return failed_push(sender.url.error_body(ids))
        self._counters.pushes_forwarded += 1
        self._counters.mutations_forwarded += len(ids)
        payload = json.dumps(batch.body, separators=(",", ":"), ensure_ascii=False).encode()
        conn = sender.conn
        try:
            with trio.move_on_after(self._push_timeout_s) as deadline:
                response = await self._api.post(
                    sender.url,
                    payload,
                    auth_token=sender.token,
                    client_headers=conn.client_headers,
                    request_headers=conn.request_headers,
                    cookie=conn.cookie,
                    origin=conn.origin,
                    retries=True,
                    timeout_s=self._push_timeout_s,
                )
        except ApiCallFailed as e:
            return failed_push(e.error_body(ids))
        if deadline.cancelled_caught:
            message = f"Fetch from API server timed out after {self._push_timeout_s:g} s"
            return failed_push(push_failed("timeout", message, ids))
        return interpret(response.body, ids, sender.user_id)

    def _count(self, outcome: PushOutcome) -> None:
        c = self._counters
        c.mutations_ok += outcome.ok
        c.app_errors += outcome.app_errors
        c.already_processed += outcome.already_processed
        c.out_of_order += outcome.out_of_order
        if outcome.reason is not None:
            c.push_failures[outcome.reason] += 1
        elif outcome.failures:
            c.push_failures["oooMutation"] += 1

    async def _cleanup(self, conn: PushContext, body: dict[str, Any]) -> None:
        if self._api is None:
            return
        try:
            url = self._api.resolve_url(conn.user_push_url)
        except ApiUrlNotAllowed as e:
            log.warning("not sending %s for client group %s: %s", CLEANUP_MUTATION, conn.client_group_id, e)
            return
        payload = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()
        self._counters.cleanups_sent += 1
        problem: str | None = None
        try:
            with trio.move_on_after(self._push_timeout_s) as deadline:
                response = await self._api.post(
                    url,
                    payload,
                    auth_token=conn.auth.token,
                    client_headers=conn.client_headers,
                    request_headers=conn.request_headers,
                    cookie=conn.cookie,
                    origin=conn.origin,
                    retries=True,
                    timeout_s=self._push_timeout_s,
                )
            if deadline.cancelled_caught:
                problem = f"timed out after {self._push_timeout_s:g} s"
            else:
                outcome = interpret(response.body, [], conn.auth.user_id)
                if outcome.reason is not None:
                    problem = f"the app server answered PushFailed ({outcome.reason})"
        except ApiCallFailed as e:
            problem = str(e)
        if problem is not None:
            self._counters.cleanups_failed += 1
            log.warning("%s for client group %s failed: %s", CLEANUP_MUTATION, conn.client_group_id, problem)

    # --- CRUD mutations -----------------------------------------------------------------

    async def _apply_crud(self, conn: PushContext, mutations: list[dict[str, Any]]) -> None:
        if self._crud is None:
            raise PushError(invalid_push("Support for legacy CRUD mutations is disabled"))
        auth = conn.auth
        if auth.token is not None and auth.claims is None:
            raise PushError(basic_error("Internal", "Only JWT auth is supported for CRUD mutations"))
        errors: list[dict[str, Any]] = []
        for mutation in mutations:
            if mutation["type"] != "crud":
                raise PushError(basic_error("Internal", "Only CRUD mutations are supported"))
            if self._limiter is not None and not self._limiter.try_acquire(auth.user_id or conn.client_group_id):
                self._counters.crud_rate_limited += 1
                errors.append(basic_error("MutationRateLimited", "Rate limit exceeded"))
                continue
            started = trio.current_time()
            try:
                result = await self._crud.apply(conn.client_group_id, mutation, auth.claims)
            except PushError as e:
                if e.body["kind"] == "InvalidPush":
                    self._counters.out_of_order += 1
                raise
            finally:
                self._counters.crud_latency.observe(trio.current_time() - started)
            self._counters.serialization_retries += result.serialization_retries
            if result.status == "applied":
                self._counters.crud_applied += 1
            elif result.status == "denied":
                self._counters.crud_denied += 1
            elif result.status == "already_processed":
                self._counters.already_processed += 1
            else:
                self._counters.crud_failed += 1
                errors.append(basic_error("MutationFailed", result.message or "mutation failed"))
        for error in errors:
            await _deliver(conn.send_error, error, conn)


class _GroupPusher:
    """The pushes of one client group, forwarded in arrival order, one request at a time.

    Mutations of one client are therefore sent in order; queued pushes of one connection are
    concatenated into a single request (zero-cache's `combinePushes`), so a slow app server
    sees fewer, larger requests instead of a growing backlog.
    """

    def __init__(self, service: MutationService, client_group_id: str) -> None:
        self._service = service
        self._client_group_id = client_group_id
        self.send, self._receive = trio.open_memory_channel[_Entry](QUEUE_CAPACITY)
        # The latest connection of each client: where a PushFailed naming that client goes.
        self.clients: dict[str, PushContext] = {}
        self._failed: weakref.WeakSet[PushContext] = weakref.WeakSet()

    def queued(self) -> int:
        return self._receive.statistics().current_buffer_used

    async def run(self) -> None:
        async with self._receive:
            while True:
                entries: list[_Entry] = []
                with trio.move_on_after(IDLE_PUSHER_S):
                    entries.append(await self._receive.receive())
                if not entries:
                    # Idle: leave with no checkpoint between the check and the removal, so that
                    # a concurrent push() finds either this pusher's open channel or a new pusher.
                    if self.queued() == 0:
                        del self._service._pushers[self._client_group_id]
                        self.send.close()
                        return
                    continue
                while True:
                    try:
                        entries.append(self._receive.receive_nowait())
                    except trio.WouldBlock:
                        break
                for batch in _combine(entries):
                    await self._process(batch)

    async def _process(self, batch: _Batch) -> None:
        conn = batch.sender.conn
        if conn in self._failed:
            # The connection was failed by an earlier push: its later mutations would arrive
            # out of order. The client resends them after reconnecting.
            return
        service = self._service
        outcome = await service._forward(batch)
        now = trio.current_time()
        for entry in batch.entries:
            service._counters.push_latency.observe(now - entry.enqueued_at)
        service._count(outcome)
        if outcome.failures:
            log.warning(
                "push of client group %s failed for client(s) %s: %s",
                self._client_group_id,
                ", ".join(outcome.failures),
                next(iter(outcome.failures.values()))["message"],
            )
        for client_id, body in outcome.failures.items():
            target = self.clients.get(client_id)
            if target is None or target in self._failed:
                continue
            self._failed.add(target)
            await _deliver(target.fail, body, target)


_MUTATION_FIELDS: tuple[tuple[str, str, Callable[[Any], bool]], ...] = (
    ("id", "integer", lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0),
    ("clientID", "string", lambda v: isinstance(v, str)),
    ("name", "string", lambda v: isinstance(v, str)),
    ("args", "array", lambda v: isinstance(v, list)),
    ("timestamp", "number", lambda v: isinstance(v, int | float) and not isinstance(v, bool)),
)


def _checked_mutations(body: dict[str, Any]) -> list[dict[str, Any]]:
    """The push's mutations, checked against §6.1 (zero-cache rejects a push that does not
    parse as an `InvalidMessage`; the app server would answer one with a PushFailed naming no
    mutation, which would leave the client waiting)."""

    def invalid(path: str, expected: str, value: Any) -> PushError:
        got = json.dumps(value) if not isinstance(value, dict | list) else type(value).__name__
        return PushError(basic_error("InvalidMessage", f"Expected {expected} at {path}. Got {got}"))

    mutations = body.get("mutations")
    if not isinstance(mutations, list):
        raise invalid("mutations", "array", mutations)
    for i, m in enumerate(mutations):
        if not isinstance(m, dict):
            raise invalid(f"mutations.{i}", "object", m)
        if m.get("type") not in ("custom", "crud"):
            raise invalid(f"mutations.{i}.type", '"custom" or "crud"', m.get("type"))
        for name, expected, ok in _MUTATION_FIELDS:
            if not ok(m.get(name)):
                raise invalid(f"mutations.{i}.{name}", expected, m.get(name))
    return mutations


def _combine(entries: list[_Entry]) -> list[_Batch]:
    batches: dict[tuple[object, ...], _Batch] = {}
    for entry in entries:
        batch = batches.get(entry.sender.key)
        if batch is None:
            batch = batches[entry.sender.key] = _Batch(entry.sender, {**entry.body, "mutations": []})
        batch.body["mutations"].extend(entry.body["mutations"])
        batch.entries.append(entry)
    return list(batches.values())


async def _deliver(send: Callable[[dict[str, Any]], Awaitable[None]], body: dict[str, Any], conn: PushContext) -> None:
    try:
        await send(body)
    except Exception:  # the socket may be gone; the error is then nobody's to read
        log.info("could not deliver %s to client %s", body.get("kind"), conn.client_id, exc_info=True)


def _epoch_ms() -> int:
    return int(time.time() * 1000)
