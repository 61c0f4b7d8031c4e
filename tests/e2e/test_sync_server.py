"""Bad input against the whole running server (`serve`: replicator, token verifier, view syncer,
listener on a real port, a real upstream Postgres), with raw WebSockets from trio-websocket.

Each case gets zero-cache's documented answer (docs/zero-protocol.md §2, §3, §7.4, §8) and must
leave the server and its other clients alone: a bystander client stays connected through every
case and still gets its `pong`, and `GET /` still answers.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
import psycopg
import pytest
import trio
import trio_websocket

from tests.fixtures.edge import connect_query, drain_until_dropped, open_ws, raw_upgrade, receive_json, receive_until_closed
from zcache.config import load_config
from zcache.embedded_pg import free_loopback_port
from zcache.server import protocol
from zcache.server.connection import EdgeSettings
from zcache.server.main import serve

pytestmark = pytest.mark.e2e

SECRET = "a-test-secret-of-at-least-32-bytes!!"
SCHEMA = """
CREATE TABLE "user" (id TEXT PRIMARY KEY, name TEXT NOT NULL);
CREATE TABLE blob (id TEXT PRIMARY KEY, data TEXT NOT NULL);
INSERT INTO "user" VALUES ('u1', 'Alice'), ('u2', 'Bob');
"""
CLIENT_SCHEMA = {
    "tables": {
        "user": {"columns": {"id": {"type": "string"}, "name": {"type": "string"}}, "primaryKey": ["id"]},
        "blob": {"columns": {"id": {"type": "string"}, "data": {"type": "string"}}, "primaryKey": ["id"]},
    }
}
INIT = ["initConnection", {"desiredQueriesPatch": [], "clientSchema": CLIENT_SCHEMA}]


@dataclass
class Server:
    port: int
    dsn: str
    stop: Callable[[], Awaitable[None]]

    def url(self, query: str, *, version: int = 51) -> str:
        return f"ws://127.0.0.1:{self.port}/sync/v{version}/connect?{query}"


@pytest.fixture
def upstream(pg_dsn: str) -> str:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(SCHEMA)  # type: ignore[arg-type]
    return pg_dsn


async def start(nursery: trio.Nursery, dsn: str, tmp_path: Path, env: Mapping[str, str] = {}, **settings: Any) -> Server:
    config = load_config(
        [],
        {
            "ZERO_UPSTREAM_DB": dsn,
            "ZERO_REPLICA_FILE": str(tmp_path / "replica.db"),
            "ZERO_PORT": str(free_loopback_port()),
            "ZERO_LOG_LEVEL": "warn",
            **env,
        },
    )
    running = await nursery.start(lambda task_status: serve(config, edge_settings=EdgeSettings(**settings), task_status=task_status))
    return Server(running.port, dsn, running.stop)


@asynccontextmanager
async def bystander_client(server: Server) -> AsyncIterator[trio_websocket.WebSocketConnection]:
    """A well-behaved client connected through a whole test."""
    async with open_ws(server.url(connect_query("bystander", "bg")), protocol.encode_sec_protocol(INIT, None)) as ws:
        messages = [await receive_json(ws) for _ in range(3)]
        assert [m[0] for m in messages] == ["connected", "pokeStart", "pokeEnd"]
        yield ws


async def assert_alive(server: Server, bystander: trio_websocket.WebSocketConnection) -> None:
    await bystander.send_message('["ping",{}]')
    while (await receive_json(bystander)) != ["pong", {}]:
        pass
    stream = await trio.open_tcp_stream("127.0.0.1", server.port)
    async with stream:
        await stream.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await stream.receive_some(1000)).startswith(b"HTTP/1.1 200")


async def exchange(server: Server, query: str, proto: str, frames: list[str] = (), *, version: int = 51) -> tuple[list[Any], int, str]:  # type: ignore[assignment]
    async with open_ws(server.url(query, version=version), proto) as ws:
        for frame in frames:
            await ws.send_message(frame)
        return await receive_until_closed(ws, timeout_s=15)


async def test_bad_frames_and_connect_requests(nursery: trio.Nursery, upstream: str, tmp_path: Path) -> None:
    server = await start(nursery, upstream, tmp_path, {"ZERO_WEBSOCKET_MAX_PAYLOAD_BYTES": "50000"})
    async with bystander_client(server) as bystander:
        proto = protocol.encode_sec_protocol(INIT, None)

        messages, code, _ = await exchange(server, connect_query("c1", "g1"), proto, ["{not json"])
        assert code == 1005 and messages[-1][1]["kind"] == "InvalidMessage"
        assert messages[-1][1]["message"].startswith("SyntaxError: ")

        messages, code, _ = await exchange(server, connect_query("c2", "g2"), proto, ['["teleport",{}]'])
        assert code == 1005
        assert messages[-1] == ["error", {"kind": "InvalidMessage", "message": 'TypeError: Invalid union value: ["teleport",{}]', "origin": "zeroCache"}]

        messages, code, _ = await exchange(server, connect_query("c3", "g3"), proto, [json.dumps(["ping", {"pad": "x" * 60000}])])
        assert code == 1009

        messages, code, _ = await exchange(server, connect_query("c4", "g4"), proto, version=52)
        assert code == 1005 and messages == [
            ["error", {"kind": "VersionNotSupported", "message": "server is at sync protocol v51 and does not support v52. The server must be updated to a newer release.", "origin": "zeroCache"}]
        ]

        messages, code, reason = await exchange(server, "clientGroupID=g&ts=1&lmid=0", proto)
        assert (messages, code, reason) == ([], 1002, "Error: invalid querystring - missing clientID")

        await assert_alive(server, bystander)
    await server.stop()


async def test_a_token_without_any_auth_configured_is_refused_for_that_connection_only(
    nursery: trio.Nursery, upstream: str, tmp_path: Path
) -> None:
    # No JWT key and no push/query URLs: zero-cache 1.9 crashes on such a token; zcache refuses it.
    server = await start(nursery, upstream, tmp_path)
    async with bystander_client(server) as bystander:
        messages, code, _ = await exchange(server, connect_query("c1", "g1", user_id="u1"), protocol.encode_sec_protocol(INIT, "some-token"))
        assert code == 3000
        [error] = messages
        assert error[1]["kind"] == "Internal" and "Exactly one of jwk, secret, or jwksUrl" in error[1]["message"]
        await assert_alive(server, bystander)
    await server.stop()


def _token(claims: dict[str, Any], *, key: str = SECRET, algorithm: str = "HS256", headers: dict[str, Any] | None = None) -> str:
    return jwt.encode(claims, key, algorithm=algorithm, headers=headers)


async def test_jwt_failures_get_auth_invalidated_and_close_3000(nursery: trio.Nursery, upstream: str, tmp_path: Path) -> None:
    server = await start(nursery, upstream, tmp_path, {"ZERO_AUTH_SECRET": SECRET})
    async with bystander_client(server) as bystander:
        now = int(time.time())
        none_token = jwt.encode({"sub": "u1"}, None, algorithm="none")  # type: ignore[arg-type]
        header, payload, _ = _token({"sub": "u1"}).split(".")
        rs256 = jwt.api_jws.base64url_encode(json.dumps({"alg": "RS256", "typ": "JWT"}).encode()).decode()
        cases = {
            "expired": (_token({"sub": "u1", "exp": now - 60}), 'JWTExpired: "exp" claim timestamp check failed'),
            "forged": (_token({"sub": "u1"}, key="another-secret-of-at-least-32-bytes"), "JWSSignatureVerificationFailed"),
            "alg none": (none_token, "JOSEAlgNotAllowed"),
            "wrong alg": (f"{rs256}.{payload}.{_token({'sub': 'u1'}).split('.')[2]}", "JOSEAlgNotAllowed"),
            "other user": (_token({"sub": "u2"}), 'unexpected "sub" claim value'),
        }
        for name, (token, expected) in cases.items():
            messages, code, reason = await exchange(server, connect_query(f"c-{name.replace(' ', '-')}", f"g-{name.replace(' ', '-')}", user_id="u1"), protocol.encode_sec_protocol(INIT, token))
            assert (code, reason) == (3000, "Failed to decode JWT"), name
            [error] = messages
            assert error[1]["kind"] == "AuthInvalidated" and error[1]["message"].startswith("Failed to decode auth token: "), name
            assert expected in error[1]["message"], (name, error)
        # A valid token connects.
        async with open_ws(server.url(connect_query("good", "gg", user_id="u1")), protocol.encode_sec_protocol(INIT, _token({"sub": "u1", "exp": now + 600}))) as ws:
            assert (await receive_json(ws))[0] == "connected"
        await assert_alive(server, bystander)
    await server.stop()


async def test_base_cookies_the_server_cannot_serve(nursery: trio.Nursery, upstream: str, tmp_path: Path) -> None:
    server = await start(nursery, upstream, tmp_path)
    proto = protocol.encode_sec_protocol(INIT, None)
    # A client with a snapshot of a group the server never saw: its state is gone.
    messages, code, _ = await exchange(server, connect_query("c1", "new-group", base_cookie="00:01"), proto)
    assert code == 1005 and messages[-1][1]["kind"] == "ClientNotFound"
    # A cookie from the future of an existing group.
    async with open_ws(server.url(connect_query("c2", "known")), proto) as ws:
        assert [(await receive_json(ws))[0] for _ in range(3)] == ["connected", "pokeStart", "pokeEnd"]
    no_schema = protocol.encode_sec_protocol(["initConnection", {"desiredQueriesPatch": []}], None)
    messages, code, _ = await exchange(server, connect_query("c2", "known", base_cookie="zzzzzzzz"), no_schema)
    assert code == 1005 and messages[-1][1]["kind"] == "InvalidConnectionRequestBaseCookie"
    await server.stop()


ALLOW_SELECT = {"tables": {t: {"row": {"select": [["allow", {"type": "and", "conditions": []}]]}} for t in ("user", "blob")}}


async def test_a_client_that_stops_reading_is_dropped_and_others_are_unaffected(
    nursery: trio.Nursery, upstream: str, tmp_path: Path
) -> None:
    with psycopg.connect(upstream, autocommit=True) as conn:
        conn.execute("INSERT INTO blob SELECT 'b' || i, repeat(md5(i::text), 1600) FROM generate_series(1, 600) i")
    # The deadline leaves the reading client, which shares this process with the server, room
    # for a loaded machine: at 1 s it was itself dropped at times.
    server = await start(nursery, upstream, tmp_path, slow_client_timeout_s=3.0, outbox_capacity=4)
    with psycopg.connect(upstream, autocommit=True) as conn:
        conn.execute("UPDATE zero.permissions SET permissions = %s", [json.dumps(ALLOW_SELECT)])
    blobs = {"op": "put", "hash": "blobs", "ast": {"table": "blob", "orderBy": [["id", "asc"]]}, "ttl": 0}
    with_blobs = protocol.encode_sec_protocol(["initConnection", {"desiredQueriesPatch": [blobs], "clientSchema": CLIENT_SCHEMA}], None)
    # A reading client gets all ~30 MB (and proves the permissions replicated).
    async with open_ws(server.url(connect_query("reader", "gr")), with_blobs) as reader:
        rows = 0
        with trio.fail_after(60):
            while rows < 600:
                message = await receive_json(reader, timeout_s=60)
                if message[0] == "pokePart":
                    rows += len(message[1].get("rowsPatch", []))
        slow = await raw_upgrade(server.port, connect_query("slow", "gs"), with_blobs)
        await trio.sleep(8)  # the slow client's queue fills, then its deadline passes
        await reader.send_message('["ping",{}]')
        while (await receive_json(reader)) != ["pong", {}]:
            pass
    received = await drain_until_dropped(slow)
    assert received < 600 * 51200
    await server.stop()
