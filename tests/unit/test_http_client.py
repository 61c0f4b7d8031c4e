"""`HttpClient` against a real HTTP/1.1 server (`http.server` in a thread)."""

from __future__ import annotations

import threading
import time

import pytest
import trio

from tests.fixtures.http_server import Reply, Request, TestHttpServer, TlsCertificate, free_port
from zcache.app_server.http import HttpClient, HttpError, HttpTimeout

pytestmark = pytest.mark.unit


async def test_post_roundtrip_sends_body_and_default_headers(http_server: TestHttpServer) -> None:
    http_server.route("/echo", lambda r: Reply(body=r.body[::-1], headers=(("X-Seen", r.headers["content-type"]),)))
    client = HttpClient()
    try:
        response = await client.request(
            "POST", http_server.url("/echo?a=1"), headers=[("Content-Type", "text/plain")], body=b"hello", timeout_s=5
        )
    finally:
        await client.aclose()
    assert (response.status, response.body, response.header("x-seen")) == (200, b"olleh", "text/plain")
    (request,) = http_server.requests
    assert request.path == "/echo?a=1"
    assert request.headers["host"] == f"127.0.0.1:{http_server.port}"
    assert request.headers["content-length"] == "5"
    assert request.headers["accept"] == "*/*"


async def test_keep_alive_reuses_one_connection(http_server: TestHttpServer) -> None:
    http_server.route("/q", Reply(body=b"{}"))
    client = HttpClient()
    try:
        for _ in range(3):
            assert (await client.request("POST", http_server.url("/q"), body=b"x", timeout_s=5)).body == b"{}"
        assert client.statistics() == {f"http://127.0.0.1:{http_server.port}": 1}
    finally:
        await client.aclose()
    assert len({r.peer_port for r in http_server.requests}) == 1


async def test_connection_close_is_not_pooled(http_server: TestHttpServer) -> None:
    http_server.route("/q", Reply(body=b"bye", close=True))
    client = HttpClient()
    try:
        for _ in range(2):
            assert (await client.request("GET", http_server.url("/q"), timeout_s=5)).body == b"bye"
        assert client.statistics() == {f"http://127.0.0.1:{http_server.port}": 0}
    finally:
        await client.aclose()
    assert len({r.peer_port for r in http_server.requests}) == 2


async def test_chunked_response_is_reassembled(http_server: TestHttpServer) -> None:
    http_server.route("/chunked", Reply(chunks=(b'{"kind":', b'"QueryResponse",', b'"queries":[]}')))
    client = HttpClient()
    try:
        response = await client.request("POST", http_server.url("/chunked"), body=b"[]", timeout_s=5)
        again = await client.request("POST", http_server.url("/chunked"), body=b"[]", timeout_s=5)
    finally:
        await client.aclose()
    assert response.body == again.body == b'{"kind":"QueryResponse","queries":[]}'
    assert len({r.peer_port for r in http_server.requests}) == 1


async def test_response_size_cap(http_server: TestHttpServer) -> None:
    http_server.route("/big", Reply(chunks=(b"a" * 600, b"b" * 600)))
    client = HttpClient(max_response_bytes=1000)
    try:
        with pytest.raises(HttpError, match=r"POST http://127\.0\.0\.1:\d+/big: response body exceeds 1000 bytes"):
            await client.request("POST", http_server.url("/big"), timeout_s=5)
        assert client.statistics() == {f"http://127.0.0.1:{http_server.port}": 0}
    finally:
        await client.aclose()


async def test_timeout_names_the_url_and_drops_the_connection(http_server: TestHttpServer) -> None:
    http_server.route("/slow", Reply(body=b"late", delay_s=1.0))
    http_server.route("/fast", Reply(body=b"ok"))
    client = HttpClient()
    try:
        with pytest.raises(HttpTimeout, match=r"POST http://127\.0\.0\.1:\d+/slow timed out after 0\.2 s"):
            await client.request("POST", http_server.url("/slow"), timeout_s=0.2)
        # The timed-out connection is never reused: a late answer must not be read as the
        # answer to the next request.
        assert (await client.request("GET", http_server.url("/fast"), timeout_s=5)).body == b"ok"
    finally:
        await client.aclose()
    slow, fast = http_server.requests
    assert slow.peer_port != fast.peer_port


async def test_connection_refused_names_the_url() -> None:
    url = f"http://127.0.0.1:{free_port()}/query"
    client = HttpClient()
    try:
        with pytest.raises(HttpError, match=rf"POST {url}: cannot connect"):
            await client.request("POST", url, body=b"[]", timeout_s=5)
    finally:
        await client.aclose()


async def test_server_closing_without_answer_is_an_error(http_server: TestHttpServer) -> None:
    http_server.route("/drop", Reply(drop=True))
    client = HttpClient()
    try:
        with pytest.raises(HttpError, match=r"/drop"):
            await client.request("POST", http_server.url("/drop"), body=b"x", timeout_s=5)
    finally:
        await client.aclose()


async def test_idle_connection_closed_by_server_is_replaced(http_server: TestHttpServer) -> None:
    """A keep-alive connection the server closed while idle is detected, not reused."""
    http_server.idle_timeout_s = 0.1
    http_server.route("/q", Reply(body=b"ok"))
    client = HttpClient()
    try:
        await client.request("POST", http_server.url("/q"), body=b"1", timeout_s=5)
        await trio.sleep(0.4)  # the server drops the idle connection after 0.1 s
        assert (await client.request("POST", http_server.url("/q"), body=b"2", timeout_s=5)).body == b"ok"
    finally:
        await client.aclose()
    assert len({r.peer_port for r in http_server.requests}) == 2


async def test_pool_bound_serialises_requests(http_server: TestHttpServer) -> None:
    active = 0
    peak = 0
    lock = threading.Lock()

    def handler(_request: Request) -> Reply:
        nonlocal active, peak
        with lock:
            active += 1
            peak = max(peak, active)
        try:
            time.sleep(0.05)
        finally:
            with lock:
                active -= 1
        return Reply(body=b"ok")

    http_server.route("/q", handler)
    client = HttpClient(max_connections_per_origin=2)
    try:
        async with trio.open_nursery() as nursery:
            for _ in range(6):
                nursery.start_soon(lambda: client.request("POST", http_server.url("/q"), body=b"x", timeout_s=5))
    finally:
        await client.aclose()
    assert peak <= 2
    assert len({r.peer_port for r in http_server.requests}) <= 2


async def test_https_to_a_plain_http_port_fails_the_handshake(http_server: TestHttpServer) -> None:
    client = HttpClient()
    try:
        with pytest.raises(HttpError, match="TLS handshake failed"):
            await client.request("GET", f"https://127.0.0.1:{http_server.port}/", timeout_s=5)
    finally:
        await client.aclose()


async def test_https_keep_alive_with_a_trusted_certificate(https_server: TestHttpServer, tls_certificate: TlsCertificate) -> None:
    https_server.route("/q", Reply(chunks=(b"secure", b"-body")))
    client = HttpClient(ssl_context=tls_certificate.client_context)
    try:
        for _ in range(2):
            response = await client.request("POST", https_server.url("/q"), body=b"x", timeout_s=5)
            assert (response.status, response.body) == (200, b"secure-body")
    finally:
        await client.aclose()
    assert len({r.peer_port for r in https_server.requests}) == 1


async def test_https_refuses_an_untrusted_certificate(https_server: TestHttpServer) -> None:
    client = HttpClient()  # the system's trust store does not know the test certificate
    try:
        with pytest.raises(HttpError, match="TLS handshake failed.*CERTIFICATE_VERIFY_FAILED"):
            await client.request("GET", https_server.url("/"), timeout_s=5)
    finally:
        await client.aclose()


async def test_bad_urls_are_refused() -> None:
    client = HttpClient()
    try:
        with pytest.raises(HttpError, match="unsupported URL scheme"):
            await client.request("GET", "ftp://example.com/x", timeout_s=1)
        with pytest.raises(HttpError, match="has no host"):
            await client.request("GET", "http:///x", timeout_s=1)
    finally:
        await client.aclose()
    with pytest.raises(HttpError, match="closed"):
        await client.request("GET", "http://127.0.0.1:1/", timeout_s=1)
