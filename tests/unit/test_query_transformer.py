"""`QueryTransformer` against a scripted local HTTP server: the answer forms of §7.3 that the
real app server does not produce (legacy forms, failures, garbage), and the 5 s cache.
The real app server is exercised in tests/pg/test_query_transform_app.py."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
import trio
import trio.testing

from tests.fixtures.http_server import Reply, Request, TestHttpServer
from zcache.app_server.api import ApiServer
from zcache.app_server.http import HttpClient
from zcache.app_server.queries import (
    ErroredQuery,
    NamedQuery,
    QueryTransformer,
    TransformedQuery,
    TransformFailed,
    Validation,
)
from zcache.config import ApiServerConfig

pytestmark = pytest.mark.unit

AST = {"table": "file", "where": {"type": "simple", "left": {"type": "column", "name": "id"}, "right": {"type": "literal", "value": "f1"}, "op": "="}}
Q1 = NamedQuery("q1", "fileByID", [{"id": "f1"}])
Q2 = NamedQuery("q2", "brokenQuery", [{"id": "f2"}])


@pytest.fixture
async def http() -> AsyncIterator[HttpClient]:
    client = HttpClient()
    try:
        yield client
    finally:
        await client.aclose()


def _transformer(http_server: TestHttpServer, http: HttpClient, **config: Any) -> QueryTransformer:
    values: dict[str, Any] = {
        "url": (http_server.url("/query"),),
        "api_key": None,
        "forward_cookies": False,
        "allowed_client_headers": (),
        "allowed_request_headers": (),
    }
    values.update(config)
    api = ApiServer(ApiServerConfig(**values), http=http, app_id="zero", shard_num=0, kind="query")
    return QueryTransformer(api)


def _answer(body: Any, status: int = 200) -> Reply:
    return Reply(status=status, body=json.dumps(body).encode())


def _echo_queries(request: Request) -> Reply:
    """Answer every query with AST, except `brokenQuery` with an app error."""
    _, queries = json.loads(request.body)
    results: list[dict[str, Any]] = []
    for q in queries:
        if q["name"] == "brokenQuery":
            results.append({"error": "app", "id": q["id"], "name": q["name"], "message": "no", "details": {"why": 1}})
        else:
            results.append({"id": q["id"], "name": q["name"], "ast": AST})
    return _answer({"kind": "QueryResponse", "userID": "u1", "queries": results})


async def _transform(t: QueryTransformer, queries: list[NamedQuery], **overrides: Any) -> tuple[list[Any], Validation | None]:
    options: dict[str, Any] = {
        "auth_token": "user:u1",
        "user_id": "u1",
        "user_url": None,
        "client_headers": {},
        "request_headers": {},
        "cookie": None,
        "origin": None,
    }
    options.update(overrides)
    return await t.transform(queries, **options)


async def test_results_in_request_order_with_errors(http_server: TestHttpServer, http: HttpClient) -> None:
    http_server.route("/query", _echo_queries)
    results, validation = await _transform(_transformer(http_server, http), [Q2, Q1])
    assert results == [
        ErroredQuery({"error": "app", "id": "q2", "name": "brokenQuery", "message": "no", "details": {"why": 1}}),
        TransformedQuery("q1", "fileByID", AST),
    ]
    assert validation == Validation("u1")
    (request,) = http_server.requests
    assert json.loads(request.body) == ["transform", [{"id": "q2", "name": "brokenQuery", "args": [{"id": "f2"}]}, {"id": "q1", "name": "fileByID", "args": [{"id": "f1"}]}]]
    assert request.path == "/query?schema=zero_0&appID=zero"
    assert request.headers["authorization"] == "Bearer user:u1"


async def test_user_id_null_and_absent(http_server: TestHttpServer, http: HttpClient) -> None:
    answers = [
        _answer({"kind": "QueryResponse", "userID": None, "queries": []}),
        _answer({"kind": "QueryResponse", "queries": []}),
    ]
    http_server.route("/query", lambda _r: answers.pop(0))
    t = _transformer(http_server, http)
    kwargs: dict[str, Any] = {"auth_token": None, "user_url": None, "client_headers": {}, "request_headers": {}, "cookie": None, "origin": None}
    assert await t.validate_connection(**kwargs) == Validation(None)
    assert await t.validate_connection(**kwargs) is None
    assert [json.loads(r.body) for r in http_server.requests] == [["transform", []], ["transform", []]]


async def test_legacy_answer_forms(http_server: TestHttpServer, http: HttpClient) -> None:
    answers = [
        _answer(["transformed", [{"id": "q1", "name": "fileByID", "ast": AST}]]),
        _answer(["transformFailed", {"kind": "TransformFailed", "origin": "server", "reason": "database", "message": "db down", "queryIDs": ["q9"]}]),
    ]
    http_server.route("/query", lambda _r: answers.pop(0))
    t = _transformer(http_server, http)
    assert await _transform(t, [Q1]) == ([TransformedQuery("q1", "fileByID", AST)], None)
    with pytest.raises(TransformFailed) as caught:
        await _transform(t, [Q2])
    assert caught.value.body == {"kind": "TransformFailed", "origin": "server", "reason": "database", "message": "db down", "queryIDs": ["q9"]}


async def test_app_transform_failed_passes_through(http_server: TestHttpServer, http: HttpClient) -> None:
    failed = {"kind": "TransformFailed", "origin": "server", "reason": "internal", "message": "boom", "queryIDs": ["q1"], "details": {"x": 1}}
    http_server.route("/query", _answer(failed))
    with pytest.raises(TransformFailed) as caught:
        await _transform(_transformer(http_server, http), [Q1])
    assert caught.value.body == failed


@pytest.mark.parametrize(
    "body",
    [b"not json", b'{"kind":"Other"}', b'{"kind":"QueryResponse","queries":[{"id":"q1"}]}', b'{"kind":"QueryResponse","queries":[],"userID":7}'],
)
async def test_unusable_answers_are_parse_failures(body: bytes, http_server: TestHttpServer, http: HttpClient) -> None:
    http_server.route("/query", Reply(body=body))
    with pytest.raises(TransformFailed) as caught:
        await _transform(_transformer(http_server, http), [Q1, Q2])
    assert caught.value.body["kind"] == "TransformFailed"
    assert caught.value.body["origin"] == "zeroCache"
    assert caught.value.body["reason"] == "parse"
    assert caught.value.body["message"].startswith("Failed to parse response from API server: ")
    assert caught.value.body["queryIDs"] == ["q1", "q2"]


async def test_http_failure_becomes_transform_failed(http_server: TestHttpServer, http: HttpClient) -> None:
    http_server.route("/query", Reply(status=401, body=b'{"error":"expired"}'))
    with pytest.raises(TransformFailed) as caught:
        await _transform(_transformer(http_server, http), [Q1])
    assert caught.value.body == {
        "kind": "TransformFailed",
        "origin": "zeroCache",
        "reason": "http",
        "status": 401,
        "bodyPreview": '{"error":"expired"}',
        "message": "Fetch from API server returned non-OK status 401",
        "queryIDs": ["q1"],
    }


async def test_client_url_outside_the_allow_list(http_server: TestHttpServer, http: HttpClient) -> None:
    with pytest.raises(TransformFailed) as caught:
        await _transform(_transformer(http_server, http), [Q1], user_url="http://evil.example/query")
    assert caught.value.body == {
        "kind": "TransformFailed",
        "origin": "zeroCache",
        "reason": "internal",
        "message": 'URL "http://evil.example/query" is not allowed by the ZERO_QUERY_URL configuration',
        "queryIDs": ["q1"],
    }
    assert http_server.requests == []


async def test_empty_transform_makes_no_request(http_server: TestHttpServer, http: HttpClient) -> None:
    assert await _transform(_transformer(http_server, http), []) == ([], None)
    assert http_server.requests == []


async def test_cache_for_five_seconds_keyed_by_request_identity(
    http_server: TestHttpServer, http: HttpClient, mock_clock: trio.testing.MockClock
) -> None:
    http_server.route("/query", _echo_queries)
    t = _transformer(http_server, http, forward_cookies=True, allowed_client_headers=("x-tenant",))

    first, validation = await _transform(t, [Q1, Q2])
    assert validation == Validation("u1")
    assert len(http_server.requests) == 1

    # Q1 cached; Q2 was an error, so it is asked again (alone); the call validates again.
    again, validation = await _transform(t, [Q1, Q2])
    assert again == first and validation == Validation("u1")
    assert [q["id"] for q in json.loads(http_server.requests[-1].body)[1]] == ["q2"]

    # Everything cached: no request, and no validation from this call.
    assert await _transform(t, [Q1]) == ([TransformedQuery("q1", "fileByID", AST)], None)
    assert len(http_server.requests) == 2

    # Anything that changes the request misses the cache.
    for change in (
        {"auth_token": "user:u1:rotated"},
        {"user_id": "u2"},
        {"cookie": "sid=2"},
        {"origin": "https://other.example"},
        {"client_headers": {"X-Tenant": "t2"}},
        {"user_url": http_server.url("/query")},  # the same URL as the default: still a hit
    ):
        await _transform(t, [Q1], **change)
    assert len(http_server.requests) == 7
    # A client header that is not forwarded does not change the request, so it still hits.
    await _transform(t, [Q1], client_headers={"X-Ignored": "1"})
    assert len(http_server.requests) == 7

    mock_clock.jump(5.01)
    await _transform(t, [Q1])
    assert len(http_server.requests) == 8
