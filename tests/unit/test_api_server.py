"""`ApiServer` (push/query URL calls as zero-cache makes them) and its URLPattern subset,
against a real HTTP server."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest
import trio

from tests.fixtures.http_server import Reply, Request, TestHttpServer, free_port
from zcache.app_server.api import ApiCallFailed, ApiServer, ApiUrlNotAllowed, backoff_delay_s, body_preview
from zcache.app_server.http import HttpClient
from zcache.app_server.url_pattern import UrlPattern, UrlPatternError
from zcache.config import ApiServerConfig

pytestmark = pytest.mark.unit


def _config(*urls: str, **overrides: object) -> ApiServerConfig:
    values: dict[str, object] = {
        "url": urls,
        "api_key": None,
        "forward_cookies": False,
        "allowed_client_headers": (),
        "allowed_request_headers": (),
    }
    values.update(overrides)
    return ApiServerConfig(**values)  # type: ignore[arg-type]


@pytest.fixture
async def http() -> AsyncIterator[HttpClient]:
    client = HttpClient()
    try:
        yield client
    finally:
        await client.aclose()


_NO_HEADERS: dict[str, str] = {}


async def _post(api: ApiServer, url: str, *, retries: bool = True, **kwargs: object) -> object:
    options: dict[str, object] = {
        "auth_token": None,
        "client_headers": _NO_HEADERS,
        "request_headers": _NO_HEADERS,
        "cookie": None,
        "origin": None,
        "retries": retries,
    }
    options.update(kwargs)
    return await api.post(url, b'["transform",[]]', **options)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("pattern", "url", "matches"),
    [
        ("https://api.example.com/endpoint", "https://api.example.com/endpoint", True),
        ("https://api.example.com/endpoint", "https://api.example.com/endpoint?x=1#f", True),
        ("https://api.example.com/endpoint", "https://API.example.com/endpoint", True),
        ("https://api.example.com/endpoint", "https://api.example.com:443/endpoint", True),
        ("https://api.example.com/endpoint", "https://api.example.com:8443/endpoint", False),
        ("https://api.example.com/endpoint", "http://api.example.com/endpoint", False),
        ("https://api.example.com/endpoint", "https://api.example.com/endpoint/x", False),
        ("https://api.example.com/endpoint", "https://api.example.com/Endpoint", False),
        ("https://api.example.com/endpoint", "https://evil.com/endpoint", False),
        ("https://api.example.com/endpoint", "https://api.example.com.evil.com/endpoint", False),
        ("https://*.example.com/endpoint", "https://api.example.com/endpoint", True),
        ("https://*.example.com/endpoint", "https://api.v1.example.com/endpoint", True),
        ("https://*.example.com/endpoint", "https://example.com/endpoint", False),
        ("https://*.example.com/endpoint", "https://evil.com/x.example.com/endpoint", False),
        ("https://api.example.com/*", "https://api.example.com/a/b/c", True),
        ("https://api.example.com/*", "https://api.example.com", True),
        ("https://api.example.com/:version/endpoint", "https://api.example.com/v1/endpoint", True),
        ("https://api.example.com/:version/endpoint", "https://api.example.com/v1/v2/endpoint", False),
        ("https://:sub.example.com/q", "https://a.example.com/q", True),
        ("https://:sub.example.com/q", "https://a.b.example.com/q", False),
        ("http://localhost:3000/api/*", "http://localhost:3000/api/mutate", True),
        ("http://localhost:3000/api/*", "http://localhost:3001/api/mutate", False),
        ("http://localhost:*/api", "http://localhost:5173/api", True),
        ("http://localhost/api", "http://localhost:3000/api", False),
        ("http://localhost/api?route=q", "http://localhost/api?route=q", True),
        ("http://localhost/api?route=q", "http://localhost/api?route=m", False),
        ("http://localhost/api", "not a url", False),
    ],
)
def test_url_pattern_subset(pattern: str, url: str, matches: bool) -> None:
    assert UrlPattern(pattern).matches(url) is matches


@pytest.mark.parametrize("pattern", ["/relative", "https://api.example.com/(v1|v2)", "https://x.com/{a}?", "https://x.com/:"])
def test_url_pattern_refuses_what_it_does_not_implement(pattern: str) -> None:
    with pytest.raises(UrlPatternError, match="URL pattern"):
        UrlPattern(pattern)


async def test_resolve_url_default_and_allow_list(http: HttpClient) -> None:
    api = ApiServer(
        _config("http://app.local/query", "http://*.preview.local/query"),
        http=http, app_id="zero", shard_num=0, kind="query",
    )
    assert api.resolve_url(None) == "http://app.local/query"
    assert api.resolve_url("http://pr-7.preview.local/query") == "http://pr-7.preview.local/query"
    with pytest.raises(ApiUrlNotAllowed) as caught:
        api.resolve_url("http://evil.local/query")
    assert caught.value.error_body(["q1"]) == {
        "kind": "TransformFailed",
        "origin": "zeroCache",
        "reason": "internal",
        "message": 'URL "http://evil.local/query" is not allowed by the ZERO_QUERY_URL configuration',
        "queryIDs": ["q1"],
    }
    unconfigured = ApiServer(_config(), http=http, app_id="zero", shard_num=0, kind="mutate")
    assert not unconfigured.configured
    with pytest.raises(ApiUrlNotAllowed, match="No ZERO_MUTATE_URL is configured"):
        unconfigured.resolve_url(None)


async def test_query_params_and_headers(http_server: TestHttpServer, http: HttpClient) -> None:
    http_server.route("/mutate", Reply(body=b'{"kind":"MutateResponse","mutations":[]}'))
    api = ApiServer(
        _config(
            http_server.url("/mutate?tenant=a"),
            api_key="secret-key",
            forward_cookies=True,
            allowed_client_headers=("X-Tenant",),
            allowed_request_headers=("x-forwarded-for",),
        ),
        http=http, app_id="myapp", shard_num=3, kind="mutate",
    )
    await _post(
        api,
        api.resolve_url(None),
        auth_token="tok",
        client_headers={"x-tenant": "t1", "X-Evil": "no", "Authorization": "Bearer forged"},
        request_headers={"X-Forwarded-For": "1.2.3.4", "X-Internal": "no"},
        cookie="sid=1",
        origin="https://app.example",
    )
    (request,) = http_server.requests
    assert request.path == "/mutate?tenant=a&schema=myapp_3&appID=myapp"
    headers = request.headers
    assert headers["content-type"] == "application/json"
    assert headers["x-api-key"] == "secret-key"
    assert headers["x-tenant"] == "t1"
    assert headers["x-forwarded-for"] == "1.2.3.4"
    assert headers["authorization"] == "Bearer tok"
    assert headers["cookie"] == "sid=1"
    assert headers["origin"] == "https://app.example"
    assert "x-evil" not in headers and "x-internal" not in headers
    assert request.body == b'["transform",[]]'


async def test_cookie_needs_forward_cookies_and_no_token_no_authorization(
    http_server: TestHttpServer, http: HttpClient
) -> None:
    http_server.route("/query", Reply(body=b"{}"))
    api = ApiServer(_config(http_server.url("/query")), http=http, app_id="zero", shard_num=0, kind="query")
    await _post(api, api.resolve_url(None), cookie="sid=1", client_headers={"X-Tenant": "t1"})
    (request,) = http_server.requests
    assert request.path == "/query?schema=zero_0&appID=zero"
    assert "cookie" not in request.headers
    assert "authorization" not in request.headers
    assert "x-api-key" not in request.headers
    assert "x-tenant" not in request.headers


@pytest.mark.parametrize("reserved", ["schema", "appID"])
async def test_reserved_query_params_are_refused(reserved: str, http_server: TestHttpServer, http: HttpClient) -> None:
    url = http_server.url(f"/mutate?{reserved}=x")
    api = ApiServer(_config(url), http=http, app_id="zero", shard_num=0, kind="mutate")
    with pytest.raises(ApiCallFailed, match=f'The push URL cannot contain the reserved query param "{reserved}"'):
        await _post(api, api.resolve_url(None))
    assert http_server.requests == []


async def test_5xx_is_retried_four_times_then_push_failed(http_server: TestHttpServer, http: HttpClient) -> None:
    http_server.route("/mutate", Reply(status=500, body=b"x" * 600, headers=(("Content-Type", "text/plain"),)))
    api = ApiServer(_config(http_server.url("/mutate")), http=http, app_id="zero", shard_num=0, kind="mutate")
    started = trio.current_time()
    with pytest.raises(ApiCallFailed) as caught:
        await _post(api, api.resolve_url(None))
    elapsed = trio.current_time() - started
    assert len(http_server.requests) == 4
    assert 0.7 <= elapsed < 5  # 100 + 200 + 400 ms of backoff, plus jitter
    assert caught.value.error_body([{"id": 1, "clientID": "c"}]) == {
        "kind": "PushFailed",
        "origin": "zeroCache",
        "reason": "http",
        "status": 500,
        "bodyPreview": "x" * 512 + "...",
        "message": "Fetch from API server returned non-OK status 500",
        "mutationIDs": [{"id": 1, "clientID": "c"}],
    }


async def test_5xx_then_success(http_server: TestHttpServer, http: HttpClient) -> None:
    answers = [Reply(status=503, body=b"busy"), Reply(status=502), Reply(body=b'{"ok":true}')]
    http_server.route("/query", lambda _r: answers.pop(0))
    api = ApiServer(_config(http_server.url("/query")), http=http, app_id="zero", shard_num=0, kind="query")
    assert await api.post_json(
        api.resolve_url(None), ["transform", []],
        auth_token=None, client_headers={}, request_headers={}, cookie=None, origin=None,
    ) == {"ok": True}
    assert len(http_server.requests) == 3


async def test_4xx_is_final(http_server: TestHttpServer, http: HttpClient) -> None:
    http_server.route("/query", Reply(status=401, body=b"who are you"))
    api = ApiServer(_config(http_server.url("/query")), http=http, app_id="zero", shard_num=0, kind="query")
    with pytest.raises(ApiCallFailed) as caught:
        await _post(api, api.resolve_url(None))
    assert len(http_server.requests) == 1
    assert caught.value.error_body() == {
        "kind": "TransformFailed",
        "origin": "zeroCache",
        "reason": "http",
        "status": 401,
        "bodyPreview": "who are you",
        "message": "Fetch from API server returned non-OK status 401",
        "queryIDs": [],
    }


async def test_no_retries_when_asked(http_server: TestHttpServer, http: HttpClient) -> None:
    http_server.route("/mutate", Reply(status=500))
    api = ApiServer(_config(http_server.url("/mutate")), http=http, app_id="zero", shard_num=0, kind="mutate")
    with pytest.raises(ApiCallFailed):
        await _post(api, api.resolve_url(None), retries=False)
    assert len(http_server.requests) == 1


async def test_connection_refused_is_retried_then_internal(http: HttpClient) -> None:
    url = f"http://127.0.0.1:{free_port()}/query"
    api = ApiServer(_config(url), http=http, app_id="zero", shard_num=0, kind="query")
    started = trio.current_time()
    with pytest.raises(ApiCallFailed) as caught:
        await _post(api, url)
    assert trio.current_time() - started >= 0.7  # three backoffs: four attempts
    body = caught.value.error_body()
    assert (body["kind"], body["reason"]) == ("TransformFailed", "internal")
    assert body["message"].startswith("Fetch from API server threw error: POST http://127.0.0.1:")
    assert "cannot connect" in body["message"]


async def test_timeout_is_retried(http_server: TestHttpServer, http: HttpClient) -> None:
    delays = [Reply(body=b"{}", delay_s=0.5), Reply(body=b'{"late":false}')]
    http_server.route("/query", lambda _r: delays.pop(0))
    api = ApiServer(_config(http_server.url("/query")), http=http, app_id="zero", shard_num=0, kind="query")
    result = await api.post_json(
        api.resolve_url(None), ["transform", []], timeout_s=0.2,
        auth_token=None, client_headers={}, request_headers={}, cookie=None, origin=None,
    )
    assert result == {"late": False}


async def test_unparseable_answer_is_a_parse_failure(http_server: TestHttpServer, http: HttpClient) -> None:
    http_server.route("/query", Reply(body=b"<html>oops</html>"))
    api = ApiServer(_config(http_server.url("/query")), http=http, app_id="zero", shard_num=0, kind="query")
    with pytest.raises(ApiCallFailed) as caught:
        await api.post_json(
            api.resolve_url(None), ["transform", []],
            auth_token=None, client_headers={}, request_headers={}, cookie=None, origin=None,
        )
    assert caught.value.reason == "parse"
    assert caught.value.message.startswith("Failed to parse response from API server:")


async def test_body_is_compact_json(http_server: TestHttpServer, http: HttpClient) -> None:
    seen: list[Request] = []
    http_server.route("/query", lambda r: (seen.append(r), Reply(body=b"[]"))[1])
    api = ApiServer(_config(http_server.url("/query")), http=http, app_id="zero", shard_num=0, kind="query")
    payload = ["transform", [{"id": "q", "name": "n", "args": [{"s": "é"}]}]]
    await api.post_json(
        api.resolve_url(None), payload,
        auth_token=None, client_headers={}, request_headers={}, cookie=None, origin=None,
    )
    assert seen[0].body == json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()


def test_backoff_and_preview_rules() -> None:
    for attempt, low in ((1, 0.1), (2, 0.2), (3, 0.4), (4, 0.8), (5, 1.0)):
        delay = backoff_delay_s(attempt)
        assert low <= delay <= min(1.0, low + 0.1)
    assert body_preview(b"short") == "short"
    assert body_preview("é".encode() * 600) == "é" * 512 + "..."
