"""`QueryTransformer` against the real app server of the conformance harness
(`@rocicorp/zero/server`'s `handleQueryRequest` under Node 22, see tests/fixtures/app_server.py):
the answers must be the ones captured from zero-cache in transcripts 01, 02, 06 and 11."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.app_server import AppServer, capture_dir
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


def _captured(scenario: str) -> list[dict[str, Any]]:
    """The /query request/response pairs zero-cache exchanged in a captured scenario."""
    transcripts = capture_dir().parent / "transcripts"
    (path,) = Path(transcripts).glob(f"{scenario}-*.jsonl")
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    return [
        line["data"]
        for line in lines
        if line["dir"] in ("http-req", "http-res") and line["data"].get("path") == "/query"
    ]


@pytest.fixture
async def transformer(shared_app_server: AppServer) -> AsyncIterator[QueryTransformer]:
    http = HttpClient()
    config = ApiServerConfig(
        url=(shared_app_server.query_url,),
        api_key=None,
        forward_cookies=False,
        allowed_client_headers=(),
        allowed_request_headers=(),
    )
    try:
        yield QueryTransformer(ApiServer(config, http=http, app_id="zero", shard_num=0, kind="query"))
    finally:
        await http.aclose()


def _connection(token: str | None) -> dict[str, Any]:
    return {
        "auth_token": token,
        "user_url": None,
        "client_headers": {},
        "request_headers": {},
        "cookie": None,
        "origin": None,
    }


@pytest.mark.parametrize("scenario", ["01", "02", "06", "11"])
async def test_same_answers_as_in_the_capture(scenario: str, transformer: QueryTransformer, shared_app_server: AppServer) -> None:
    """Replay each captured /query request; the real app server must answer what it answered
    zero-cache, and our parse of it must be what zero-cache made of it."""
    already = len(shared_app_server.exchanges())
    exchanges = _captured(scenario)
    pairs = list(zip(exchanges[::2], exchanges[1::2], strict=True))
    assert pairs
    for request, response in pairs:
        token = request["headers"]["authorization"].removeprefix("Bearer ")
        kind, queries = request["body"]
        assert kind == "transform"
        user_id = response["body"]["userID"]
        if not queries:
            validation = await transformer.validate_connection(**_connection(token))
            assert validation == Validation(user_id)
            continue
        named = [NamedQuery(q["id"], q["name"], q["args"]) for q in queries]
        results, validation = await transformer.transform(named, user_id=user_id, **_connection(token))
        expected = [
            ErroredQuery(entry) if "error" in entry else TransformedQuery(entry["id"], entry["name"], entry["ast"])
            for entry in response["body"]["queries"]
        ]
        assert results == expected
        assert validation in (Validation(user_id), None)  # None: served from the 5 s cache
    seen = [e["data"] for e in shared_app_server.exchanges()[already:] if e["dir"] == "http-req"]
    assert seen, "the app server recorded no request"
    for request in seen:
        assert request["query"] == {"schema": "zero_0", "appID": "zero"}
        assert request["headers"]["content-type"] == "application/json"
        assert request["headers"]["authorization"].startswith("Bearer user:")


async def test_mixed_batch_and_logged_out_user(transformer: QueryTransformer) -> None:
    queries = [
        NamedQuery("a", "fileWithOwner", [{"id": "f1"}]),
        NamedQuery("b", "brokenQuery", [{"id": "f1"}]),
        NamedQuery("c", "filesNamedLike", [{"pattern": "b%"}]),
    ]
    results, validation = await transformer.transform(queries, user_id=None, **_connection(None))
    assert validation == Validation(None)
    assert [type(r).__name__ for r in results] == ["TransformedQuery", "ErroredQuery", "TransformedQuery"]
    assert isinstance(results[0], TransformedQuery) and results[0].ast["limit"] == 1
    assert isinstance(results[1], ErroredQuery) and results[1].body["error"] == "app"


async def test_unknown_query_name_is_a_per_query_error(transformer: QueryTransformer) -> None:
    results, _ = await transformer.transform(
        [NamedQuery("x", "noSuchQuery", [])], user_id="u1", **_connection("user:u1")
    )
    (result,) = results
    assert isinstance(result, ErroredQuery)
    assert result.id == "x"
    assert result.body["error"] in ("app", "parse")


async def test_cache_saves_the_second_call(transformer: QueryTransformer, shared_app_server: AppServer) -> None:
    already = len(shared_app_server.exchanges())
    query = [NamedQuery("paocmaxcpvto", "filesByOwner", [{"ownerId": "u1"}])]
    first, _ = await transformer.transform(query, user_id="u1", **_connection("user:u1"))
    second, validation = await transformer.transform(query, user_id="u1", **_connection("user:u1"))
    assert first == second and validation is None
    assert len([e for e in shared_app_server.exchanges()[already:] if e["dir"] == "http-req"]) == 1


async def test_user_url_outside_the_allow_list_never_reaches_the_app(
    transformer: QueryTransformer, shared_app_server: AppServer
) -> None:
    already = len(shared_app_server.exchanges())
    connection = _connection("user:u1") | {"user_url": shared_app_server.mutate_url}
    with pytest.raises(TransformFailed) as caught:
        await transformer.validate_connection(**connection)
    assert caught.value.body["reason"] == "internal"
    assert shared_app_server.exchanges()[already:] == []
