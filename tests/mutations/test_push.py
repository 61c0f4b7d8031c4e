"""Custom mutations through MutationService to the REAL app server of the conformance harness
(`@rocicorp/zero/server` 1.9.0, `handleMutateRequest` over postgres.js), and to scripted
HTTP servers for the failures a real app does not produce on demand."""

from __future__ import annotations

import json
from typing import Any

import psycopg
import pytest
import trio

from tests.fixtures.app_server import AppServer
from tests.fixtures.http_server import Reply, TestHttpServer
from tests.mutations.conftest import (
    Client,
    connect,
    custom,
    push_body,
    start_service,
    wait_until,
    zero_config,
)
from zcache.app_server.http import HttpClient
from zcache.mutations import MutationService, PushError

GROUP = "group1"


def rows(dsn: str, query: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(query).fetchall()


def lmids(dsn: str) -> dict[str, int]:
    return dict(rows(dsn, 'SELECT "clientID", "lastMutationID" FROM zero_0.clients'))  # type: ignore[arg-type]


def mutate_requests(app: AppServer) -> list[dict[str, Any]]:
    return [e["data"] for e in app.exchanges() if e["dir"] == "http-req" and e["data"]["path"].startswith("/mutate")]


async def push(service: MutationService, client: Client, *mutations: dict[str, Any]) -> None:
    await service.push(client.ctx, push_body(client.ctx.client_group_id, *mutations))


async def test_push_is_forwarded_as_zero_cache_does_and_lands_upstream(
    app: AppServer, http: HttpClient, nursery: trio.Nursery
) -> None:
    service = await start_service(nursery, zero_config(app.upstream_dsn, [app.mutate_url]), http)
    client = connect("client1")
    await push(service, client, custom("client1", 1, "file.rename", {"id": "f2", "name": "beta-renamed"}))
    await wait_until(lambda: lmids(app.upstream_dsn) == {"client1": 1})
    assert rows(app.upstream_dsn, "SELECT name FROM file WHERE id = 'f2'") == [("beta-renamed",)]
    [request] = mutate_requests(app)
    assert request["method"] == "POST" and request["path"] == "/mutate"
    assert request["query"] == {"schema": "zero_0", "appID": "zero"}
    assert request["headers"]["authorization"] == "Bearer user:u1"
    assert request["headers"]["content-type"] == "application/json"
    assert request["body"] == push_body(GROUP, custom("client1", 1, "file.rename", {"id": "f2", "name": "beta-renamed"}))
    await wait_until(lambda: service.statistics().mutations_ok == 1)
    stats = service.statistics()
    assert (stats.pushes_forwarded, stats.mutations_forwarded, stats.push_failures) == (1, 1, {})
    assert stats.push_latency.count == 1
    assert client.failures == [] and client.errors == []


async def test_app_error_result_lands_in_mutations_and_ack_cleans_it_up(
    app: AppServer, http: HttpClient, nursery: trio.Nursery
) -> None:
    service = await start_service(nursery, zero_config(app.upstream_dsn, [app.mutate_url]), http)
    client = connect("client1")
    await push(service, client, custom("client1", 1, "file.forbidden", {"id": "f1"}))
    await wait_until(lambda: lmids(app.upstream_dsn) == {"client1": 1})
    [(mutation_id, result)] = rows(app.upstream_dsn, 'SELECT "mutationID", result FROM zero_0.mutations')
    assert mutation_id == 1
    assert result == {"error": "app", "message": "file.forbidden is refused by the app server", "details": {"args": {"id": "f1"}}}
    assert rows(app.upstream_dsn, "SELECT name FROM file WHERE id = 'f1'") == [("alpha",)]
    await wait_until(lambda: service.statistics().app_errors == 1)
    assert client.failures == []  # app errors reach the client through replication only

    await service.ack_mutation_responses(client.ctx, "client1", 1)
    assert rows(app.upstream_dsn, "SELECT * FROM zero_0.mutations") == []
    cleanup = mutate_requests(app)[-1]
    assert cleanup["query"] == {"schema": "zero_0", "appID": "zero"}
    assert cleanup["body"]["requestID"] == "cleanup-group1-client1-1"
    [mutation] = cleanup["body"]["mutations"]
    assert {k: v for k, v in mutation.items() if k != "timestamp"} == {
        "type": "custom",
        "id": 0,
        "clientID": "client1",
        "name": "_zero_cleanupResults",
        "args": [{"type": "single", "clientGroupID": GROUP, "clientID": "client1", "upToMutationID": 1}],
    }
    assert service.statistics().cleanups_sent == 1 and service.statistics().cleanups_failed == 0


async def test_delete_clients_sends_a_bulk_cleanup(app: AppServer, http: HttpClient, nursery: trio.Nursery) -> None:
    service = await start_service(nursery, zero_config(app.upstream_dsn, [app.mutate_url]), http)
    a, b = connect("ca"), connect("cb")
    await push(service, a, custom("ca", 1, "file.forbidden", {"id": "f1"}))
    await push(service, b, custom("cb", 1, "file.forbidden", {"id": "f2"}))
    await wait_until(lambda: len(rows(app.upstream_dsn, "SELECT * FROM zero_0.mutations")) == 2)
    await service.delete_clients(a.ctx, ["ca", "cb", "never-pushed"])
    assert rows(app.upstream_dsn, "SELECT * FROM zero_0.mutations") == []
    body = mutate_requests(app)[-1]["body"]
    assert body["requestID"].startswith("cleanup-bulk-group1-")
    assert body["mutations"][0]["clientID"] == "ca"
    assert body["mutations"][0]["args"] == [{"type": "bulk", "clientGroupID": GROUP, "clientIDs": ["ca", "cb", "never-pushed"]}]


async def test_mutations_apply_in_order_exactly_once_under_replay_and_gaps(
    app: AppServer, http: HttpClient, nursery: trio.Nursery
) -> None:
    """The client re-sends its pending mutations after a reconnect: those the app already
    applied come back `alreadyProcessed` and change nothing; a gap fails the client."""
    service = await start_service(nursery, zero_config(app.upstream_dsn, [app.mutate_url]), http)
    first = connect("client1")
    for mid in (1, 2, 3):
        await push(service, first, custom("client1", mid, "file.create", {"id": f"n{mid}", "name": f"n{mid}", "ownerId": "u1"}))
    await wait_until(lambda: lmids(app.upstream_dsn) == {"client1": 3})

    again = connect("client1")  # the same client on a new socket replays 2 and 3, then sends 4
    for mid in (2, 3, 4):
        await push(service, again, custom("client1", mid, "file.create", {"id": f"n{mid}", "name": f"n{mid}", "ownerId": "u1"}))
    await wait_until(lambda: lmids(app.upstream_dsn) == {"client1": 4})
    await wait_until(lambda: service.statistics().already_processed == 2)
    assert rows(app.upstream_dsn, "SELECT id FROM file WHERE id LIKE 'n%' ORDER BY id") == [("n1",), ("n2",), ("n3",), ("n4",)]
    assert again.failures == [] and first.failures == []

    await push(service, again, custom("client1", 9, "file.create", {"id": "n9", "name": "n9", "ownerId": "u1"}))
    await wait_until(lambda: again.failures != [])
    assert again.failures == [
        {
            "kind": "PushFailed",
            "origin": "server",
            "reason": "oooMutation",
            "message": "Client client1 sent mutation ID 9 but expected 5",
            "mutationIDs": [{"id": 9, "clientID": "client1"}],
        }
    ]
    assert lmids(app.upstream_dsn) == {"client1": 4}
    assert service.statistics().push_failures == {"oooMutation": 1}


async def test_queued_pushes_of_a_connection_are_concatenated_in_order(
    app: AppServer, http: HttpClient, nursery: trio.Nursery
) -> None:
    service = await start_service(nursery, zero_config(app.upstream_dsn, [app.mutate_url]), http)
    client = connect("client1")
    count = 20
    for mid in range(1, count + 1):  # push() returns once queued: these pile up behind the first request
        await push(service, client, custom("client1", mid, "file.rename", {"id": "f1", "name": f"v{mid}"}))
    await wait_until(lambda: lmids(app.upstream_dsn) == {"client1": count})
    assert rows(app.upstream_dsn, "SELECT name FROM file WHERE id = 'f1'") == [(f"v{count}",)]
    requests = mutate_requests(app)
    sent = [m["id"] for r in requests for m in r["body"]["mutations"]]
    assert sent == list(range(1, count + 1))
    assert len(requests) < count
    assert all(r["body"]["requestID"] == "req-1" for r in requests)  # a batch keeps its first push's envelope
    assert client.failures == []


async def test_user_push_url_must_be_allowed(app: AppServer, http: HttpClient, nursery: trio.Nursery) -> None:
    service = await start_service(nursery, zero_config(app.upstream_dsn, [app.mutate_url]), http)
    client = connect("client1", push_url="http://127.0.0.1:9/evil")
    await push(service, client, custom("client1", 1, "file.rename", {"id": "f1", "name": "x"}))
    await wait_until(lambda: client.failures != [])
    assert client.failures == [
        {
            "kind": "PushFailed",
            "origin": "zeroCache",
            "reason": "internal",
            "message": 'URL "http://127.0.0.1:9/evil" is not allowed by the ZERO_MUTATE_URL configuration',
            "mutationIDs": [{"id": 1, "clientID": "client1"}],
        }
    ]
    assert mutate_requests(app) == []
    assert lmids(app.upstream_dsn) == {}


async def test_http_500_is_retried_four_times_then_push_failed(
    app: AppServer, http: HttpClient, nursery: trio.Nursery
) -> None:
    service = await start_service(nursery, zero_config(app.upstream_dsn, [app.mutate_url, f"{app.url}/mutate-500"]), http)
    client = connect("client1", push_url=f"{app.url}/mutate-500")
    await push(service, client, custom("client1", 1, "file.rename", {"id": "f2", "name": "never-applied"}))
    await wait_until(lambda: client.failures != [])
    assert client.failures == [
        {
            "kind": "PushFailed",
            "origin": "zeroCache",
            "reason": "http",
            "status": 500,
            "bodyPreview": '{"error":"simulated outage"}',
            "message": "Fetch from API server returned non-OK status 500",
            "mutationIDs": [{"id": 1, "clientID": "client1"}],
        }
    ]
    assert [r["path"] for r in mutate_requests(app)] == ["/mutate-500"] * 4
    assert rows(app.upstream_dsn, "SELECT name FROM file WHERE id = 'f2'") == [("beta",)]
    assert service.statistics().push_failures == {"http": 1}


async def test_user_id_other_than_the_connections_fails_the_push(
    app: AppServer, http: HttpClient, nursery: trio.Nursery
) -> None:
    service = await start_service(nursery, zero_config(app.upstream_dsn, [app.mutate_url]), http)
    client = connect("client1", user="u2", token="user:u1")  # the app validates the token as u1
    await push(service, client, custom("client1", 1, "file.rename", {"id": "f2", "name": "x"}))
    await wait_until(lambda: client.failures != [])
    assert client.failures == [
        {
            "kind": "PushFailed",
            "origin": "zeroCache",
            "reason": "http",
            "status": 401,
            "message": "Connection userID does not match validated server userID.",
            "mutationIDs": [{"id": 1, "clientID": "client1"}],
        }
    ]


async def test_unknown_mutator_is_an_app_error_and_malformed_pushes_are_refused(
    app: AppServer, http: HttpClient, nursery: trio.Nursery
) -> None:
    service = await start_service(nursery, zero_config(app.upstream_dsn, [app.mutate_url]), http)
    client = connect("client1")
    await push(service, client, custom("client1", 1, "file.nope", {"id": "f1"}))
    await wait_until(lambda: lmids(app.upstream_dsn) == {"client1": 1})
    [(result,)] = rows(app.upstream_dsn, "SELECT result FROM zero_0.mutations")
    assert result == {"error": "app", "message": "Mutator not found: file.nope"}

    malformed = {"type": "custom", "id": 2, "clientID": "client1", "name": "file.rename", "timestamp": 1, "args": "notalist"}
    with pytest.raises(PushError) as refused:
        await push(service, client, malformed)
    assert refused.value.body == {
        "kind": "InvalidMessage",
        "message": 'Expected array at mutations.0.args. Got "notalist"',
        "origin": "zeroCache",
    }
    backwards = custom("client1", -1, "file.rename", {"id": "f1", "name": "x"})
    with pytest.raises(PushError):
        await push(service, client, backwards)
    assert len(mutate_requests(app)) == 1


async def test_push_errors_detected_before_forwarding(app: AppServer, http: HttpClient, nursery: trio.Nursery) -> None:
    service = await start_service(nursery, zero_config(app.upstream_dsn, [app.mutate_url]), http)
    client = connect("client1")
    with pytest.raises(PushError) as wrong_group:
        await service.push(client.ctx, push_body("other-group", custom("client1", 1, "file.rename", {})))
    assert wrong_group.value.body == {
        "kind": "InvalidPush",
        "message": 'clientGroupID in mutation "other-group" does not match clientGroupID of connection "group1',
        "origin": "zeroCache",
    }
    await service.push(client.ctx, push_body(GROUP))  # an empty push is fine

    no_url = await start_service(nursery, zero_config(app.upstream_dsn, []), http)
    with pytest.raises(PushError) as unconfigured:
        await push(no_url, client, custom("client1", 1, "file.rename", {}))
    assert unconfigured.value.body == {
        "kind": "InvalidPush",
        "message": "A ZERO_MUTATE_URL must be set in order to process custom mutations.",
        "origin": "zeroCache",
    }
    await no_url.ack_mutation_responses(client.ctx, "client1", 1)  # nothing to clean without a push URL
    assert mutate_requests(app) == []


async def test_hanging_app_server_fails_the_push_with_a_timeout(
    http_server: TestHttpServer, http: HttpClient, nursery: trio.Nursery, pg_dsn: str
) -> None:
    http_server.route("/mutate", Reply(200, b'{"kind":"MutateResponse","mutations":[]}', delay_s=2.0))
    config = zero_config(pg_dsn, [http_server.url("/mutate")])
    service = await start_service(nursery, config, http, push_timeout_s=0.5)
    client = connect("client1")
    await push(service, client, custom("client1", 1, "file.rename", {}))
    await wait_until(lambda: client.failures != [])
    assert client.failures == [
        {
            "kind": "PushFailed",
            "origin": "zeroCache",
            "reason": "timeout",
            "message": "Fetch from API server timed out after 0.5 s",
            "mutationIDs": [{"id": 1, "clientID": "client1"}],
        }
    ]
    # Later queued pushes of the failed connection are not forwarded (they would be out of order).
    await push(service, client, custom("client1", 2, "file.rename", {}))
    await trio.sleep(0.3)
    assert len(http_server.recorded("/mutate")) == 1
    assert service.statistics().push_failures == {"timeout": 1}


async def test_garbage_answer_fails_the_push_with_parse(
    http_server: TestHttpServer, http: HttpClient, nursery: trio.Nursery, pg_dsn: str
) -> None:
    http_server.route("/mutate", Reply(200, b"<html>surprise</html>", headers=(("Content-Type", "text/html"),)))
    service = await start_service(nursery, zero_config(pg_dsn, [http_server.url("/mutate")]), http)
    a, b = connect("ca"), connect("cb")
    await push(service, a, custom("ca", 1, "x", {}))
    await push(service, b, custom("cb", 1, "x", {}))
    await wait_until(lambda: a.failures != [] and b.failures != [])
    assert a.failures[0]["reason"] == "parse"
    assert a.failures[0]["message"].startswith("Failed to parse response from API server: ")
    assert a.failures[0]["mutationIDs"] == [{"id": 1, "clientID": "ca"}]
    assert b.failures[0]["mutationIDs"] == [{"id": 1, "clientID": "cb"}]
    # Each connection's pushes go in their own request, one after the other.
    bodies = [json.loads(r.body) for r in http_server.recorded("/mutate")]
    assert [[m["clientID"] for m in body["mutations"]] for body in bodies] == [["ca"], ["cb"]]


async def test_cleanup_failures_are_counted_not_raised(
    http_server: TestHttpServer, http: HttpClient, nursery: trio.Nursery, pg_dsn: str
) -> None:
    http_server.route("/mutate", Reply(503, b"down"))
    service = await start_service(nursery, zero_config(pg_dsn, [http_server.url("/mutate")]), http)
    client = connect("client1")
    await service.ack_mutation_responses(client.ctx, "client1", 3)
    await service.delete_clients(client.ctx, [])  # nothing to clean: no request
    assert len(http_server.recorded("/mutate")) == 4  # retried like any push
    stats = service.statistics()
    assert (stats.cleanups_sent, stats.cleanups_failed) == (1, 1)
    assert client.failures == [] and client.errors == []
