"""The sync edge over real sockets: HTTP routes, the WebSocket handshake, liveness, bad input,
slow clients, replacement and shutdown — with a scripted view syncer (tests/fixtures/edge.py).

Expected frames and close codes are those of zero-cache 1.9 in the golden transcripts
(07 raw errors, 10 ping/pong, 11 initConnection as a message, 12 raw session).
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import trio
import trio_websocket

from tests.fixtures.edge import open_ws as fixture_open_ws
from tests.fixtures.edge import (
    INIT,
    EdgeUnderTest,
    connect_query,
    drain_until_dropped,
    raw_upgrade,
    receive_json,
    receive_until_closed,
    run_edge,
    subprotocol,
)
from zcache.server.connection import EdgeSettings
from zcache.server.protocol import ChangeDesiredQueries, UpdateAuth

pytestmark = pytest.mark.unit


async def http_get(port: int, path: str, method: str = "GET") -> tuple[int, bytes]:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(f"{method} {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        data = b""
        with trio.fail_after(5):
            while chunk := await stream.receive_some(65536):
                data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


def open_ws(edge: EdgeUnderTest, query: str, proto: str | None = None, **kwargs: Any) -> Any:
    return fixture_open_ws(edge.ws_url(query, **kwargs), proto or subprotocol())


async def handshake(ws: trio_websocket.WebSocketConnection) -> list[Any]:
    """connected + the first (empty) poke."""
    return [await receive_json(ws) for _ in range(3)]


async def test_http_routes(nursery: trio.Nursery) -> None:
    edge = await run_edge(nursery)
    assert await http_get(edge.port, "/") == (200, b"OK")
    assert await http_get(edge.port, "/keepalive") == (200, b"OK")
    assert (await http_get(edge.port, "/statz"))[0] == 404
    assert await http_get(edge.port, "/", "HEAD") == (200, b"")
    assert (await http_get(edge.port, "/", "POST"))[0] == 404
    stream = await trio.open_tcp_stream("127.0.0.1", edge.port)
    async with stream:  # not HTTP at all
        await stream.send_all(b"\x16\x03\x01garbage\r\n\r\n")
        assert (await stream.receive_some(1000)).startswith(b"HTTP/1.1 400")
    edge.view_syncers.is_ready = False
    assert (await http_get(edge.port, "/keepalive"))[0] == 503


async def test_keepalive_heartbeats_stop_the_server_once_they_stop(nursery: trio.Nursery) -> None:
    stopped = trio.Event()
    edge = await run_edge(nursery, keepalive_timeout_s=0.4, on_heartbeats_stopped=stopped.set)
    await trio.sleep(0.6)
    assert not stopped.is_set()  # opt-in: nothing before the first heartbeat
    for _ in range(4):
        assert (await http_get(edge.port, "/keepalive"))[0] == 200
        await trio.sleep(0.15)
    assert not stopped.is_set()
    with trio.fail_after(3):
        await stopped.wait()


async def test_handshake_echoes_the_subprotocol_and_serves_the_piggy_backed_init(nursery: trio.Nursery) -> None:
    edge = await run_edge(nursery)
    proto = subprotocol(INIT, "user:u1")
    async with open_ws(edge, connect_query(user_id="u1", wsid="wsA"), proto) as ws:
        assert ws.subprotocol == proto
        connected, poke_start, poke_end = await handshake(ws)
        assert connected[0] == "connected" and connected[1]["wsid"] == "wsA"
        assert isinstance(connected[1]["timestamp"], int)
        assert poke_start == ["pokeStart", {"pokeID": "00:01", "baseCookie": None}]
        assert poke_end == ["pokeEnd", {"pokeID": "00:01", "cookie": "00:01"}]
    client_id, init = edge.view_syncers.inits[0]
    assert client_id == "c1" and init.client_schema == {"tables": {}}


async def test_init_connection_as_first_message_and_a_base_path(nursery: trio.Nursery) -> None:
    """Transcript 11: a header too long for the client keeps only the token; init follows."""
    edge = await run_edge(nursery)
    async with open_ws(edge, connect_query(), subprotocol(None, None), base="/zero") as ws:
        assert (await receive_json(ws))[0] == "connected"
        await ws.send_message(json.dumps(INIT))
        assert (await receive_json(ws))[0] == "pokeStart"
        assert (await receive_json(ws))[0] == "pokeEnd"
        await ws.send_message(json.dumps(["changeDesiredQueries", {"desiredQueriesPatch": [{"op": "del", "hash": "h"}]}]))
        await ws.send_message(json.dumps(["ping", {}]))
        assert await receive_json(ws) == ["pong", {}]
    assert [type(m) for _, m in edge.view_syncers.received] == [ChangeDesiredQueries]


async def test_ping_pong_and_ignored_pull_and_close_connection(nursery: trio.Nursery) -> None:
    edge = await run_edge(nursery)
    async with open_ws(edge, connect_query(), subprotocol(INIT)) as ws:
        await handshake(ws)
        await ws.send_message(json.dumps(["pull", {"clientGroupID": "other", "cookie": None, "requestID": "pull-1"}]))
        await ws.send_message(json.dumps(["closeConnection", []]))
        await ws.send_message(json.dumps(["ping", {}]))
        assert await receive_json(ws) == ["pong", {}]  # nothing answered pull or closeConnection
    assert edge.view_syncers.received == []


async def test_unsolicited_pong_after_downstream_silence(nursery: trio.Nursery) -> None:
    edge = await run_edge(nursery, settings=EdgeSettings(idle_pong_after_s=0.3, idle_check_interval_s=0.1))
    async with open_ws(edge, connect_query(), subprotocol(INIT)) as ws:
        await handshake(ws)
        start = trio.current_time()
        assert await receive_json(ws) == ["pong", {}]
        assert trio.current_time() - start >= 0.25


@pytest.mark.parametrize(
    ("frame", "message"),
    [
        ('{"not":"a message"}', "TypeError: Expected array. Got object"),  # transcript 07
        ('["bogus",{}]', 'TypeError: Invalid union value: ["bogus",{}]'),
        ("not json", None),
    ],
)
async def test_malformed_messages_get_invalid_message_and_a_close_without_status(
    nursery: trio.Nursery, frame: str, message: str | None
) -> None:
    edge = await run_edge(nursery)
    async with open_ws(edge, connect_query("bystander", "g2"), subprotocol(INIT)) as bystander:
        await handshake(bystander)
        async with open_ws(edge, connect_query(), subprotocol(INIT)) as ws:
            await handshake(ws)
            await ws.send_message(frame)
            messages, code, _ = await receive_until_closed(ws)
        assert code == 1005
        [error] = messages
        assert error[0] == "error" and error[1]["kind"] == "InvalidMessage" and error[1]["origin"] == "zeroCache"
        if message is not None:
            assert error[1]["message"] == message
        else:
            assert error[1]["message"].startswith("SyntaxError: ")
        # The other client is untouched.
        await bystander.send_message('["ping",{}]')
        assert await receive_json(bystander) == ["pong", {}]


async def test_missing_client_id_is_closed_with_1002_and_no_error_message(nursery: trio.Nursery) -> None:
    edge = await run_edge(nursery)
    async with open_ws(edge, "clientGroupID=g&ts=1&lmid=0") as ws:
        messages, code, reason = await receive_until_closed(ws)
    assert (messages, code, reason) == ([], 1002, "Error: invalid querystring - missing clientID")


async def test_unsupported_protocol_version(nursery: trio.Nursery) -> None:
    edge = await run_edge(nursery)
    async with open_ws(edge, connect_query(), version=99) as ws:
        messages, code, _ = await receive_until_closed(ws)
    assert code == 1005
    assert messages == [
        [
            "error",
            {
                "kind": "VersionNotSupported",
                "message": "server is at sync protocol v51 and does not support v99. The server must be updated to a newer release.",
                "origin": "zeroCache",
            },
        ]
    ]


async def test_oversized_message_closes_with_1009(nursery: trio.Nursery) -> None:
    edge = await run_edge(nursery, max_message_bytes=100_000)
    async with open_ws(edge, connect_query(), subprotocol(INIT)) as ws:
        await handshake(ws)
        await ws.send_message(json.dumps(["ping", {"pad": "x" * 200_000}]))
        messages, code, _ = await receive_until_closed(ws)
    assert messages == [] and code == 1009


async def test_auth_failures_at_connect_send_the_error_and_close_3000(nursery: trio.Nursery) -> None:
    edge = await run_edge(nursery)
    async with open_ws(edge, connect_query(user_id="u1"), subprotocol(INIT, "bad-token")) as ws:
        messages, code, reason = await receive_until_closed(ws)
    assert code == 3000 and reason == "Failed to decode JWT"
    assert messages == [["error", {"kind": "AuthInvalidated", "message": "Failed to decode auth token: bad-token", "origin": "zeroCache"}]]
    async with open_ws(edge, connect_query(), subprotocol(INIT, "user:u1")) as ws:
        messages, code, _ = await receive_until_closed(ws)
    assert code == 3000 and messages[0][1]["kind"] == "Unauthorized"
    assert edge.view_syncers.served == 0


async def test_update_auth_is_reauthenticated_before_reaching_the_view_syncer(nursery: trio.Nursery) -> None:
    edge = await run_edge(nursery)
    async with open_ws(edge, connect_query(user_id="u1"), subprotocol(INIT, "user:u1")) as ws:
        await handshake(ws)
        await ws.send_message(json.dumps(["updateAuth", {"auth": "user:u1:rotated"}]))
        await ws.send_message(json.dumps(["ping", {}]))
        assert await receive_json(ws) == ["pong", {}]
        assert edge.view_syncers.received[-1][1] == UpdateAuth("user:u1:rotated")
        assert edge.view_syncers.auth_seen[-1].token == "user:u1:rotated"
        await ws.send_message(json.dumps(["updateAuth", {"auth": "bad-rotation"}]))
        messages, code, _ = await receive_until_closed(ws)
    assert code == 1005 and messages[-1][1]["kind"] == "AuthInvalidated"


async def test_a_second_socket_of_the_same_client_replaces_the_first(nursery: trio.Nursery) -> None:
    edge = await run_edge(nursery)
    async with open_ws(edge, connect_query(wsid="old"), subprotocol(INIT)) as old:
        await handshake(old)
        async with open_ws(edge, connect_query(wsid="new"), subprotocol(INIT)) as new:
            connected = await receive_json(new)
            assert connected[1]["wsid"] == "new"
            messages, code, _ = await receive_until_closed(old)
            assert (messages, code) == ([], 1005)
            await receive_json(new)
            await receive_json(new)
            await new.send_message('["ping",{}]')
            assert await receive_json(new) == ["pong", {}]
            assert len(edge.registry) == 1


async def test_view_syncer_errors_reach_the_client_with_their_kind(nursery: trio.Nursery) -> None:
    edge = await run_edge(nursery)
    failing = ["initConnection", {"desiredQueriesPatch": [{"op": "put", "hash": "fail:ClientNotFound"}]}]
    async with open_ws(edge, connect_query(), subprotocol(failing)) as ws:
        messages, code, _ = await receive_until_closed(ws)
    assert code == 1005
    assert messages[-1] == ["error", {"kind": "ClientNotFound", "message": "scripted", "origin": "zeroCache"}]
    crashing = ["initConnection", {"desiredQueriesPatch": [{"op": "put", "hash": "crash"}]}]
    async with open_ws(edge, connect_query("c2"), subprotocol(crashing)) as ws:
        messages, code, _ = await receive_until_closed(ws)
    assert messages[-1][1]["kind"] == "Internal" and "scripted crash" in messages[-1][1]["message"]
    assert (await http_get(edge.port, "/"))[0] == 200  # the server lives on


async def test_queued_pokes_reach_the_client_whole_and_in_order_before_the_error(nursery: trio.Nursery) -> None:
    """The writer joins what is queued into one socket write: every frame still arrives, in order,
    and a close queued behind them comes last."""
    edge = await run_edge(nursery, settings=EdgeSettings(outbox_capacity=64))
    burst = ["initConnection", {"desiredQueriesPatch": [{"op": "put", "hash": "burst-then-fail:200"}]}]
    async with open_ws(edge, connect_query(), subprotocol(burst)) as ws:
        messages, code, _ = await receive_until_closed(ws, timeout_s=10)
    assert code == 1005
    assert messages[-1] == ["error", {"kind": "Internal", "message": "after the burst", "origin": "zeroCache"}]
    pokes = messages[messages.index(["pokeEnd", {"pokeID": "00:01", "cookie": "00:01"}]) + 1 : -1]
    expected = [
        frame
        for i in range(200)
        for frame in (
            ["pokeStart", {"pokeID": f"b{i}", "baseCookie": None}],
            ["pokePart", {"pokeID": f"b{i}", "n": i}],
            ["pokeEnd", {"pokeID": f"b{i}", "cookie": f"b{i}"}],
        )
    ]
    assert pokes == expected


async def test_a_failure_while_the_inbox_is_full_reaches_the_client(nursery: trio.Nursery) -> None:
    """The reader is blocked on the full inbox when the view syncer fails and stays busy: the
    error and the close still go out, and the connection ends once the view syncer returns."""
    edge = await run_edge(nursery)
    stalling = ["initConnection", {"desiredQueriesPatch": [{"op": "put", "hash": "stall-then-fail"}]}]
    async with open_ws(edge, connect_query(), subprotocol(stalling)) as ws:
        assert (await receive_json(ws))[0] == "connected"
        for _ in range(40):
            await ws.send_message('["changeDesiredQueries",{"desiredQueriesPatch":[]}]')
        messages, code, _ = await receive_until_closed(ws)
        assert code == 1005 and messages[-1][1]["message"] == "stalled"
    with trio.fail_after(10):
        while len(edge.registry):
            await trio.sleep(0.05)
    assert edge.view_syncers.finished == 1


async def test_shutdown_closes_sockets_with_1001(nursery: trio.Nursery) -> None:
    edge = await run_edge(nursery)
    async with open_ws(edge, connect_query(), subprotocol(INIT)) as ws:
        await handshake(ws)
        nursery.start_soon(edge.listener.shutdown)
        messages, code, _ = await receive_until_closed(ws)
    assert (messages, code) == ([], 1001)
    with trio.fail_after(5):
        await edge.listener.shutdown()
    assert edge.view_syncers.finished == 1
    with pytest.raises(OSError):
        await trio.open_tcp_stream("127.0.0.1", edge.port)


async def test_a_client_that_does_not_read_is_dropped_and_others_are_unaffected(nursery: trio.Nursery) -> None:
    settings = EdgeSettings(slow_client_timeout_s=1.0, outbox_capacity=8)
    edge = await run_edge(nursery, settings=settings)
    flood = ["initConnection", {"desiredQueriesPatch": [{"op": "put", "hash": "flood:2000"}]}]
    stream = await raw_upgrade(edge.port, connect_query("slow", "gs"), subprotocol(flood))
    async with open_ws(edge, connect_query("fast", "gf"), subprotocol(INIT)) as fast:
        await handshake(fast)
        with trio.fail_after(20):
            while edge.view_syncers.finished < 1:  # the slow client's view syncer was released
                await fast.send_message('["ping",{}]')
                assert await receive_json(fast) == ["pong", {}]
                await trio.sleep(0.2)
        assert [c.params.client_id for c in edge.registry.connections()] == ["fast"]
    # The slow client's socket was dropped: reading it ends after what the kernel had buffered.
    assert await drain_until_dropped(stream) < 2000 * 65536
