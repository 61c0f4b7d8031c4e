"""`ApiServer(kind="mutate")` against the real app server of the conformance harness
(`handleMutateRequest` + `zeroPostgresJS` under Node 22): a custom mutation is applied upstream,
and `/mutate-500` fails exactly as captured in transcript 09."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import psycopg
import pytest

from tests.fixtures.app_server import AppServer
from zcache.app_server.api import ApiCallFailed, ApiServer
from zcache.app_server.http import HttpClient
from zcache.change_source.upstream import ShardId, setup_shard
from zcache.config import ApiServerConfig


@pytest.fixture
async def http() -> AsyncIterator[HttpClient]:
    client = HttpClient()
    try:
        yield client
    finally:
        await client.aclose()


def _push_api(http: HttpClient, *urls: str) -> ApiServer:
    config = ApiServerConfig(
        url=urls, api_key=None, forward_cookies=False, allowed_client_headers=(), allowed_request_headers=()
    )
    return ApiServer(config, http=http, app_id="zero", shard_num=0, kind="mutate")


async def test_custom_mutation_is_applied_upstream(app_server: AppServer, http: HttpClient) -> None:
    with psycopg.connect(app_server.upstream_dsn, autocommit=True) as conn:
        setup_shard(conn, ShardId("zero", 0), ())
    api = _push_api(http, app_server.mutate_url)
    push = {
        "clientGroupID": "g1",
        "timestamp": 1,
        "pushVersion": 1,
        "requestID": "r1",
        "mutations": [
            {"type": "custom", "id": 1, "clientID": "c1", "name": "file.rename", "timestamp": 1, "args": [{"id": "f2", "name": "beta-renamed"}]}
        ],
    }
    answer = await api.post_json(
        api.resolve_url(None), push,
        auth_token="user:u1", client_headers={}, request_headers={}, cookie=None, origin=None,
    )
    assert answer == {"kind": "MutateResponse", "mutations": [{"id": {"clientID": "c1", "id": 1}, "result": {}}], "userID": "u1"}
    with psycopg.connect(app_server.upstream_dsn) as conn:
        assert conn.execute("SELECT name FROM file WHERE id = 'f2'").fetchone() == ("beta-renamed",)
        assert conn.execute('SELECT "lastMutationID" FROM zero_0.clients WHERE "clientID" = %s', ["c1"]).fetchone() == (1,)


async def test_http_500_is_retried_then_push_failed_as_captured(shared_app_server: AppServer, http: HttpClient) -> None:
    failing = f"{shared_app_server.url}/mutate-500"
    api = _push_api(http, shared_app_server.mutate_url, failing)
    already = len(shared_app_server.exchanges())
    with pytest.raises(ApiCallFailed) as caught:
        await api.post(
            api.resolve_url(failing), b"{}",
            auth_token="user:u1", client_headers={}, request_headers={}, cookie=None, origin=None, retries=True,
        )
    calls = [e for e in shared_app_server.exchanges()[already:] if e["dir"] == "http-req"]
    assert len(calls) == 4
    assert caught.value.error_body([{"id": 1, "clientID": "c1"}]) == {
        "kind": "PushFailed",
        "origin": "zeroCache",
        "reason": "http",
        "status": 500,
        "bodyPreview": json.dumps({"error": "simulated outage"}, separators=(",", ":")),
        "message": "Fetch from API server returned non-OK status 500",
        "mutationIDs": [{"id": 1, "clientID": "c1"}],
    }
