"""Named queries through the real app server of the capture harness (`@rocicorp/zero/server`
under Node 22): connection validation and userID checks, the transform request, per-query
errors (`transformError` and a got-query del), and the re-transform after `updateAuth`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio

from tests.fixtures.app_server import AppServer
from tests.view_syncer.harness import FakeClient, Harness, Query, init_connection, running
from zcache.app_server.api import ApiServer
from zcache.app_server.http import HttpClient
from zcache.app_server.queries import QueryTransformer
from zcache.auth import AuthData
from zcache.server.protocol import QueryPut, UpdateAuth

FILES_OF_U1 = Query(
    "paocmaxcpvto", {}, (("file", "SELECT id, name, owner_id FROM file WHERE owner_id = 'u1'"),)
)


def named(hash_: str, name: str, args: list[Any]) -> QueryPut:
    return QueryPut(hash=hash_, name=name, args=args, ast=None, ttl_ms=300_000)


@asynccontextmanager
async def with_transformer(pg_dsn: str, tmp_path: Path, app: AppServer, **env: str) -> AsyncIterator[Harness]:
    async with running(pg_dsn, tmp_path, ZERO_QUERY_URL=app.query_url, **env) as h:
        http = HttpClient()
        try:
            api = ApiServer(h.config.query, http=http, app_id="zero", shard_num=0, kind="query")
            await h.start_service(transformer=QueryTransformer(api))
            yield h
        finally:
            with trio.CancelScope(shield=True):
                await http.aclose()


def transforms(app: AppServer) -> list[dict[str, Any]]:
    return [e["data"] for e in app.exchanges() if e["dir"] == "http-req" and e["data"]["path"] == "/query"]


async def test_named_queries_transform_errors_and_update_auth(pg_dsn: str, tmp_path: Path, shared_app_server: AppServer) -> None:
    app = shared_app_server
    async with with_transformer(pg_dsn, tmp_path, app) as h:
        seen = len(transforms(app))
        c = FakeClient("c1", "g1", user_id="u1", token="user:u1")
        s = await h.connect(
            c,
            init_connection(
                named("paocmaxcpvto", "filesByOwner", [{"ownerId": "u1"}]),
                named("lgiqt2plbk4h", "brokenQuery", [{"id": "f1"}]),
                active_clients=["c1"],
            ),
        )
        await c.wait_for(lambda: "paocmaxcpvto" in c.view.got and bool(c.of_kind("transformError")), "hydration")
        await h.synced()
        assert c.view.rows == h.expected([FILES_OF_U1])
        (errors,) = c.of_kind("transformError")
        assert [(e["error"], e["id"], e["name"]) for e in errors] == [("app", "lgiqt2plbk4h", "brokenQuery")]
        got_ops = [op for k, b in c.messages if k == "pokePart" for op in b.get("gotQueriesPatch", [])]
        assert {"op": "del", "hash": "lgiqt2plbk4h"} in got_ops
        assert "lgiqt2plbk4h" not in c.view.got
        requests = transforms(app)[seen:]
        # The empty validation first, then the queries, with the client's token.
        assert requests[0]["body"] == ["transform", []]
        bodies = [r["body"] for r in requests[1:]]
        assert bodies[0][0] == "transform"
        assert sorted(q["id"] for q in bodies[0][1]) == ["lgiqt2plbk4h", "paocmaxcpvto"], bodies
        assert {"id": "paocmaxcpvto", "name": "filesByOwner", "args": [{"ownerId": "u1"}]} in bodies[0][1]
        assert {r["headers"].get("authorization") for r in requests} == {"Bearer user:u1"}

        # updateAuth: the edge re-authenticated the token; queries are transformed with it.
        seen = len(transforms(app))
        await c.set_auth(AuthData(token="user:u1:rotated", user_id="u1", claims=None))
        await s.send(UpdateAuth("user:u1:rotated"))
        with trio.fail_after(10):
            while not any(r["headers"].get("authorization") == "Bearer user:u1:rotated" for r in transforms(app)[seen:]):
                await trio.sleep(0.05)
        await s.close()


async def test_validated_user_must_match(pg_dsn: str, tmp_path: Path, shared_app_server: AppServer) -> None:
    async with with_transformer(pg_dsn, tmp_path, shared_app_server) as h:
        c = FakeClient("c1", "g1", user_id="u2", token="user:u1")
        await h.connect(c, init_connection(active_clients=["c1"]))
        await c.wait_for(lambda: bool(c.errors), "an error")
        assert c.errors[0] == {"kind": "Unauthorized", "message": "Connection userID does not match validated server userID."}
        assert not c.messages


async def test_connections_are_revalidated(pg_dsn: str, tmp_path: Path, shared_app_server: AppServer) -> None:
    app = shared_app_server
    async with with_transformer(pg_dsn, tmp_path, app, ZERO_AUTH_REVALIDATE_INTERVAL_SECONDS="0.3") as h:
        c = FakeClient("c1", "g1", user_id="u1", token="user:u1:reval")
        s = await h.connect(c, init_connection(active_clients=["c1"]))
        await c.wait_for(lambda: c.pokes >= 1, "the first poke")

        def validations() -> int:
            return sum(1 for r in transforms(app) if r["body"] == ["transform", []] and r["headers"].get("authorization") == "Bearer user:u1:reval")

        with trio.fail_after(10):
            while validations() < 3:
                await trio.sleep(0.05)
        # The app now says the token belongs to someone else: the connection is refused.
        await c.set_auth(AuthData(token="user:u2", user_id="u1", claims=None))
        await c.wait_for(lambda: bool(c.errors), "Unauthorized")
        assert c.errors[0]["message"] == "Connection userID does not match validated server userID."
        await s.close()
