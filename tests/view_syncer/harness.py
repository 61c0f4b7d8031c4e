"""A real upstream, the real Replicator and a ViewSyncerService, and in-memory clients.

`FakeClient` implements what the view syncer sees of a socket (`ClientConnection`): it records
every message and applies pokes to a local view the way the Zero client does, checking its
rules (pokes never interleave, each poke's `baseCookie` is the client's cookie, cookies only
grow, `pokePart`/`pokeEnd` name the open poke). `Harness.expected_view` runs a client group's
queries directly on Postgres: the oracle the view must equal.

The queries are legacy ASTs over the capture harness's tables (`user`, `file`), each mapped to
the SQL that computes the rows it syncs. They run under the real legacy permissions: the harness
deploys rules that let every row be read (`ALLOW_ALL`, as transcript 05's driver does).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import trio
import trio.testing

from zcache.auth import AuthData
from zcache.config import ZeroConfig, load_config
from zcache.replica.replicator import Replicator
from zcache.server.connection import ClientGone
from zcache.server.protocol import (
    ConnectParams,
    InitConnection,
    QueryDel,
    QueryPatchOp,
    QueryPut,
    UpstreamMessage,
)
from zcache.view_syncer import ViewSyncerService

WAIT_S = 20.0

SEED = """
CREATE TABLE "user" (id TEXT PRIMARY KEY, name TEXT NOT NULL);
CREATE TABLE file (id TEXT PRIMARY KEY, name TEXT NOT NULL, owner_id TEXT NOT NULL REFERENCES "user"(id));
INSERT INTO "user" (id, name) VALUES ('u1', 'Alice'), ('u2', 'Bob'), ('u3', 'Carol');
INSERT INTO file (id, name, owner_id) VALUES ('f1', 'alpha', 'u1'), ('f2', 'beta', 'u1'), ('f3', 'gamma', 'u2');
"""

CLIENT_SCHEMA: dict[str, Any] = {
    "tables": {
        "file": {
            "columns": {"id": {"type": "string"}, "name": {"type": "string"}, "owner_id": {"type": "string"}},
            "primaryKey": ["id"],
        },
        "user": {"columns": {"id": {"type": "string"}, "name": {"type": "string"}}, "primaryKey": ["id"]},
    }
}

PRIMARY_KEYS = {"file": ("id",), "user": ("id",)}


def eq(column: str, value: Any) -> dict[str, Any]:
    return {"type": "simple", "op": "=", "left": {"type": "column", "name": column}, "right": {"type": "literal", "value": value}}


@dataclass(frozen=True)
class Query:
    """A legacy query and the SQL of the rows it syncs: (table, SQL returning id, name[, owner_id])."""

    hash: str
    ast: dict[str, Any]
    sql: tuple[tuple[str, str], ...]

    def put(self, ttl_ms: int = 0) -> QueryPut:
        return QueryPut(hash=self.hash, name=None, args=None, ast=self.ast, ttl_ms=ttl_ms)

    def delete(self) -> QueryDel:
        return QueryDel(hash=self.hash)


def files_of(owner: str) -> Query:
    return Query(
        f"files-{owner}",
        {"table": "file", "where": eq("owner_id", owner), "orderBy": [["id", "asc"]]},
        (("file", f"SELECT id, name, owner_id FROM file WHERE owner_id = '{owner}'"),),
    )


def files_with_owner(owner: str) -> Query:
    return Query(
        f"files-with-owner-{owner}",
        {
            "table": "file",
            "where": eq("owner_id", owner),
            "related": [
                {
                    "system": "client",
                    "correlation": {"parentField": ["owner_id"], "childField": ["id"]},
                    "subquery": {"table": "user", "alias": "owner"},
                }
            ],
        },
        (
            ("file", f"SELECT id, name, owner_id FROM file WHERE owner_id = '{owner}'"),
            ("user", f"SELECT u.id, u.name FROM \"user\" u WHERE u.id = '{owner}' AND EXISTS (SELECT 1 FROM file WHERE owner_id = u.id)"),
        ),
    )


def user(uid: str) -> Query:
    return Query(f"user-{uid}", {"table": "user", "where": eq("id", uid)}, (("user", f"SELECT id, name FROM \"user\" WHERE id = '{uid}'"),))


_ANYONE = [["allow", {"type": "and", "conditions": []}]]
ALLOW_ALL = {"tables": {t: {"row": {"select": _ANYONE}} for t in ("file", "user")}}


class PokeRuleBroken(AssertionError):
    pass


@dataclass
class View:
    """What a Zero client holds: rows, desired and got queries, lmids, mutation results, cookie."""

    cookie: str | None
    rows: dict[tuple[str, tuple[Any, ...]], dict[str, Any]] = field(default_factory=dict)
    desired: dict[str, set[str]] = field(default_factory=dict)
    got: set[str] = field(default_factory=set)
    lmids: dict[str, int] = field(default_factory=dict)
    mutations: dict[tuple[str, int], Any] = field(default_factory=dict)

    def apply_part(self, part: dict[str, Any]) -> None:
        for client_id, ops in part.get("desiredQueriesPatches", {}).items():
            for op in ops:
                self._query_op(self.desired.setdefault(client_id, set()), op)
        for op in part.get("gotQueriesPatch", []):
            self._query_op(self.got, op)
        self.lmids.update(part.get("lastMutationIDChanges", {}))
        for op in part.get("rowsPatch", []):
            table = op["tableName"]
            pk = PRIMARY_KEYS[table]
            if op["op"] == "put":
                self.rows[(table, tuple(op["value"][c] for c in pk))] = op["value"]
            elif op["op"] == "del":
                assert set(op["id"]) == set(pk), f"del must carry the primary key only: {op}"
                self.rows.pop((table, tuple(op["id"][c] for c in pk)), None)
            else:
                raise PokeRuleBroken(f"zero-cache 1.9 sends only put/del row ops: {op}")
        for op in part.get("mutationsPatch", []):
            if op["op"] == "put":
                m = op["mutation"]
                self.mutations[(m["id"]["clientID"], m["id"]["id"])] = m["result"]
            else:
                self.mutations.pop((op["id"]["clientID"], op["id"]["id"]), None)

    @staticmethod
    def _query_op(target: set[str], op: dict[str, Any]) -> None:
        if op["op"] == "put":
            target.add(op["hash"])
        elif op["op"] == "del":
            target.discard(op["hash"])
        else:
            target.clear()

    def table(self, table: str) -> dict[tuple[Any, ...], dict[str, Any]]:
        return {k[1]: v for k, v in self.rows.items() if k[0] == table}


class FakeClient:
    """An in-memory ClientConnection: records messages, applies pokes, checks the poke rules."""

    def __init__(
        self,
        client_id: str,
        group_id: str,
        *,
        base_cookie: str | None = None,
        user_id: str | None = None,
        token: str | None = None,
        view: View | None = None,
    ) -> None:
        self.params = ConnectParams(
            client_id=client_id,
            client_group_id=group_id,
            user_id=user_id,
            base_cookie=base_cookie,
            ts=0,
            lmid=0,
            wsid=f"ws-{client_id}",
            profile_id="p-test",
            debug_perf=False,
            protocol_version=51,
        )
        self.auth = AuthData(token=token, user_id=user_id, claims=None)
        self.request_headers: dict[str, str] = {}
        self.origin: str | None = None
        self.cookie: str | None = None
        self.messages: list[list[Any]] = []
        self.errors: list[dict[str, Any]] = []
        self.closed = False
        self.view = view if view is not None else View(cookie=base_cookie)
        if view is not None:
            assert view.cookie == base_cookie
        self.pokes = 0
        self.broken: list[str] = []  # poke rules the server broke
        self.cancelled = 0  # pokes the server cancelled
        self._open: dict[str, Any] | None = None
        self._parts: list[dict[str, Any]] = []
        self._changed = trio.Event()

    # --- ClientConnection ---------------------------------------------------------------------

    async def send(self, message: Any) -> None:
        await self.send_many([message])

    async def send_many(self, messages: Any) -> None:
        if self.closed:
            raise ClientGone
        for raw in messages:
            message = json.loads(raw) if isinstance(raw, (str, bytes)) else list(raw)
            self.messages.append(message)
            try:
                self._receive(message)
            except (PokeRuleBroken, KeyError, AssertionError) as e:
                self.broken.append(f"{type(e).__name__}: {e}")
        self._changed.set()
        self._changed = trio.Event()

    async def fail(self, kind: str, message: str, **extra: Any) -> None:
        self.errors.append({"kind": kind, "message": message, **extra})
        self.closed = True
        self._changed.set()
        self._changed = trio.Event()

    async def set_auth(self, auth: AuthData) -> None:
        self.auth = auth

    # --- the Zero client's poke handling ------------------------------------------------------

    def _receive(self, message: list[Any]) -> None:
        kind, body = message
        if kind == "pokeStart":
            if self._open is not None:
                raise PokeRuleBroken(f"pokeStart {body} inside poke {self._open}")
            if body["baseCookie"] != self.view.cookie:
                raise PokeRuleBroken(f"unexpected base cookie for poke: {body['baseCookie']!r}, client is at {self.view.cookie!r}")
            self._open = body
            self._parts = []
        elif kind == "pokePart":
            if self._open is None or body["pokeID"] != self._open["pokeID"]:
                raise PokeRuleBroken(f"pokePart outside its poke: {body}")
            entries = sum(
                len(body.get(k, [])) for k in ("gotQueriesPatch", "rowsPatch", "mutationsPatch", "lastMutationIDChanges")
            ) + sum(len(v) for v in body.get("desiredQueriesPatches", {}).values())
            if entries > 100:
                raise PokeRuleBroken(f"pokePart with {entries} entries")
            self._parts.append(body)
        elif kind == "pokeEnd":
            if self._open is None or body["pokeID"] != self._open["pokeID"]:
                raise PokeRuleBroken(f"pokeEnd outside its poke: {body}")
            if body.get("cancel"):
                self._open = None
                self.cancelled += 1
                return
            cookie = body["cookie"]
            base = self._open["baseCookie"]
            if base is not None and cookie < base:
                raise PokeRuleBroken(f"cookie went back: {base} → {cookie}")
            if base is not None and cookie == base and self._parts:
                raise PokeRuleBroken(f"a poke with content must advance the cookie ({cookie})")
            for part in self._parts:
                self.view.apply_part(part)
            self.view.cookie = cookie
            self._open = None
            self.pokes += 1

    def of_kind(self, kind: str) -> list[Any]:
        return [body for k, body in self.messages if k == kind]

    async def wait_for(self, predicate: Callable[[], bool], what: str = "condition", timeout: float = WAIT_S) -> None:
        with trio.move_on_after(timeout):
            while not predicate():
                assert not self.broken, self.broken
                await self._changed.wait()
            assert not self.broken, self.broken
            return
        raise AssertionError(f"timed out waiting for {what}; messages: {json.dumps(self.messages)[-3000:]}; errors {self.errors}")


@dataclass
class Session:
    """One connection served by `serve_client`: its inbox, and the task running it."""

    client: FakeClient
    inbox: trio.MemorySendChannel[UpstreamMessage]
    done: trio.Event

    async def send(self, message: UpstreamMessage) -> None:
        await self.inbox.send(message)

    async def close(self) -> None:
        await self.inbox.aclose()
        with trio.fail_after(WAIT_S):
            await self.done.wait()

    async def change(self, *ops: QueryPatchOp) -> None:
        from zcache.server.protocol import ChangeDesiredQueries

        await self.send(ChangeDesiredQueries(list(ops)))


def init_connection(
    *ops: QueryPatchOp,
    client_schema: dict[str, Any] | None = CLIENT_SCHEMA,
    active_clients: list[str] | None = None,
    deleted_client_ids: list[str] | None = None,
) -> InitConnection:
    return InitConnection(
        desired_queries_patch=list(ops),
        client_schema=client_schema,
        deleted_client_ids=deleted_client_ids or [],
        deleted_client_group_ids=[],
        user_push_url=None,
        user_push_headers={},
        user_query_url=None,
        user_query_headers={},
        active_clients=active_clients,
    )


def config(upstream: str, replica: Path, **env: str) -> ZeroConfig:
    return load_config([], {"ZERO_UPSTREAM_DB": upstream, "ZERO_REPLICA_FILE": str(replica), **env})


class Harness:
    def __init__(self, nursery: trio.Nursery, upstream: psycopg.Connection, replicator: Replicator, cfg: ZeroConfig, cvr_dsn: str) -> None:
        self.nursery = nursery
        self.upstream = upstream
        self.replicator = replicator
        self.config = cfg
        self.cvr_dsn = cvr_dsn
        self.service: ViewSyncerService | None = None
        self._nurseries: dict[int, trio.Nursery] = {}

    async def start_service(self, **kw: Any) -> ViewSyncerService:
        """Starts a ViewSyncerService (another process, as far as the CVR store can tell) in a
        nursery of its own that its client sessions share; the latest one is where `connect`
        goes by default."""
        kw.setdefault("transformer", None)
        kw.setdefault("mutations", None)
        kw.setdefault("cvr_dsn", self.cvr_dsn)
        service = ViewSyncerService(self.config, replicator=self.replicator, **kw)

        async def run(task_status: trio.TaskStatus[trio.Nursery] = trio.TASK_STATUS_IGNORED) -> None:
            async with trio.open_nursery() as nursery:
                await nursery.start(service.run)
                task_status.started(nursery)

        self._nurseries[id(service)] = await self.nursery.start(run)
        self.service = service
        return service

    def stop_service(self, service: ViewSyncerService | None = None) -> None:
        """As a crash: the service and its connections are cancelled where they are."""
        service = service or self.service
        assert service is not None
        self._nurseries.pop(id(service)).cancel_scope.cancel()
        if service is self.service:
            self.service = None

    async def connect(self, client: FakeClient, init: InitConnection, service: ViewSyncerService | None = None) -> Session:
        service = service or self.service
        assert service is not None
        send, receive = trio.open_memory_channel[UpstreamMessage](16)
        done = trio.Event()

        async def serve() -> None:
            try:
                await service.serve_client(client, init, receive)  # type: ignore[arg-type]
            finally:
                client.closed = True
                done.set()

        self._nurseries[id(service)].start_soon(serve)
        return Session(client, send, done)

    async def caught_up(self) -> str:
        """Waits until the replica has every upstream commit made so far; returns its version."""
        row = self.upstream.execute("SELECT pg_logical_emit_message(true, 'zcache-test', 'marker')").fetchone()
        assert row is not None
        hi, lo = str(row[0]).split("/")
        marker = int(hi, 16) << 32 | int(lo, 16)
        with trio.fail_after(WAIT_S):
            while self.replicator.statistics().watermark_lsn < marker:
                await trio.sleep(0.01)
        return self.replicator.statistics().state_version

    async def synced(self) -> str:
        """Waits until every upstream commit so far reached the replica and every client group."""
        version = await self.caught_up()
        assert self.service is not None
        with trio.fail_after(WAIT_S):
            await self.service.wait_advanced(version)
        # The pokes are queued per connection: let the senders deliver them.
        await trio.testing.wait_all_tasks_blocked(0.01)
        return version

    def expected(self, queries: list[Query]) -> dict[tuple[str, tuple[Any, ...]], dict[str, Any]]:
        """The rows a client group with these queries must hold, computed by Postgres."""
        out: dict[tuple[str, tuple[Any, ...]], dict[str, Any]] = {}
        for q in queries:
            for table, sql in q.sql:
                cur = self.upstream.execute(sql)  # type: ignore[arg-type]
                names = [d.name for d in cur.description or []]
                for row in cur.fetchall():
                    value = dict(zip(names, row, strict=True))
                    out[(table, tuple(value[c] for c in PRIMARY_KEYS[table]))] = value
        return out


@asynccontextmanager
async def running(upstream_dsn: str, tmp_path: Path, *, cvr_dsn: str | None = None, **env: str) -> AsyncIterator[Harness]:
    with psycopg.connect(upstream_dsn, autocommit=True) as conn:
        conn.execute(SEED)  # type: ignore[arg-type]
        cfg = config(upstream_dsn, tmp_path / "replica.db", **env)
        async with trio.open_nursery() as nursery:
            replicator = await nursery.start(Replicator(cfg).run)
            conn.execute("UPDATE zero.permissions SET permissions = %s", [json.dumps(ALLOW_ALL)])
            harness = Harness(nursery, conn, replicator, cfg, cvr_dsn or upstream_dsn)
            yield harness
            nursery.cancel_scope.cancel()

