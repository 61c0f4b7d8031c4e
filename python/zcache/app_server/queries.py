"""Named ("custom", synced) queries turned into ASTs by the app's query URL.

Reproduces zero-cache 1.9's `CustomQueryTransformer` (`zero-cache/src/custom-queries/
transform-query.ts`; docs/zero-protocol.md §5.4, §7.3):

* Request: `POST <query URL>?schema=…&appID=…` with body
  `["transform",[{"id","name","args"},…]]` and the header rules of `ApiServer`.
* Answer `{"kind":"QueryResponse","userID"?,"queries":[…]}`: each entry is either
  `{"id","name","ast"}` (→ `TransformedQuery`) or `{"error":"app"|"parse","id","name",
  "message"?,"details"?}` (→ `ErroredQuery`, whose `body` is what zero-cache sends in
  `["transformError",[…]]`). The legacy `["transformed",[…]]` form is accepted too.
* Whole-request failure: the app's `{"kind":"TransformFailed",…}` (or legacy
  `["transformFailed",{…}]`) is raised as `TransformFailed` with that body unchanged. HTTP and
  network failures after `ApiServer`'s retries become zero-cache's own body
  (`origin:"zeroCache"`, `reason:"http"` with `status`/`bodyPreview`, or `"internal"`), and a
  2xx answer that is not a valid response becomes `reason:"parse"`; those carry the
  `queryIDs` of the request.
* Successful transformations are cached for 5 s, keyed by query id and everything that
  identifies the request (token, userID, URL, and the headers actually sent: forwarded client
  and request headers, cookie, origin). Errors are never cached. A call whose queries are all
  cached makes no request.
* Connection validation is the empty `["transform",[]]` request (always sent).

Refinements of the contract (docs/contracts.md): both calls take the connection's `user_id`
(part of zero-cache's cache key) and report the app's verdict on the user as a `Validation`
rather than a bare userID: `Validation(user_id)` when the answer carried `userID` (a string,
or null for logged out), `None` when it did not say (no `userID` field, the legacy form, or
every query came from the cache). zero-cache then trusts the connection's own userID
("client fallback"); with a `Validation` the caller must check `user_id` against the
connection's (zero-cache's "Connection userID does not match validated server userID.").
Results come back in request order; a query the app left out of its answer is left out.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import trio

from zcache.app_server.api import ApiCallFailed, ApiServer

CACHE_TTL_S = 5.0
CACHE_MAX_ENTRIES = 10_000


@dataclass(frozen=True)
class NamedQuery:
    id: str  # the query hash the client chose (opaque)
    name: str
    args: list[Any]


@dataclass(frozen=True)
class TransformedQuery:
    id: str
    name: str
    ast: dict[str, Any]


@dataclass(frozen=True)
class ErroredQuery:
    """One query the app refused; `body` is the object to send in `["transformError",[…]]`."""

    body: dict[str, Any]

    @property
    def id(self) -> str:
        return str(self.body["id"])


@dataclass(frozen=True)
class Validation:
    """The app server's word on who the connection's user is (None: logged out)."""

    user_id: str | None


class TransformFailed(Exception):
    """The whole transform failed; `body` is the `error` message body for the client."""

    def __init__(self, body: dict[str, Any]) -> None:
        super().__init__(body.get("message", "TransformFailed"))
        self.body = body


@dataclass
class _CacheEntry:
    expires_at: float
    result: TransformedQuery


@dataclass
class _Cache:
    """Time-bounded and size-bounded; entries are kept in insertion (hence expiry) order."""

    entries: dict[str, _CacheEntry] = field(default_factory=dict)

    def get(self, key: str, now: float) -> TransformedQuery | None:
        entry = self.entries.get(key)
        if entry is None:
            return None
        if entry.expires_at <= now:
            del self.entries[key]
            return None
        return entry.result

    def put(self, key: str, result: TransformedQuery, now: float) -> None:
        self.entries.pop(key, None)
        self.entries[key] = _CacheEntry(now + CACHE_TTL_S, result)
        for old_key, entry in list(self.entries.items()):
            if entry.expires_at > now and len(self.entries) <= CACHE_MAX_ENTRIES:
                break
            del self.entries[old_key]


def _parse_failure(message: str, query_ids: list[str]) -> TransformFailed:
    return TransformFailed(
        {
            "kind": "TransformFailed",
            "origin": "zeroCache",
            "reason": "parse",
            "message": f"Failed to parse response from API server: {message}",
            "queryIDs": query_ids,
        }
    )


def _query_result(entry: Any, query_ids: list[str]) -> TransformedQuery | ErroredQuery:
    if not isinstance(entry, dict) or not isinstance(entry.get("id"), str):
        raise _parse_failure(f"invalid query result {json.dumps(entry)[:200]}", query_ids)
    if "error" in entry:
        if entry["error"] not in ("app", "parse"):
            raise _parse_failure(f"unknown query error kind {entry['error']!r}", query_ids)
        return ErroredQuery(dict(entry))
    ast = entry.get("ast")
    if not isinstance(ast, dict) or not isinstance(entry.get("name"), str):
        raise _parse_failure(f"query result {entry['id']!r} has no name or AST", query_ids)
    return TransformedQuery(id=entry["id"], name=entry["name"], ast=ast)


def _read_response(
    answer: Any, query_ids: list[str]
) -> tuple[list[TransformedQuery | ErroredQuery], Validation | None]:
    """The results and validation of a query-URL answer; raises `TransformFailed`."""
    validation: Validation | None = None
    if isinstance(answer, dict):
        kind = answer.get("kind")
        if kind == "TransformFailed":
            raise TransformFailed(dict(answer))
        if kind != "QueryResponse" or not isinstance(answer.get("queries"), list):
            raise _parse_failure("expected a QueryResponse or TransformFailed body", query_ids)
        if "userID" in answer:
            user_id = answer["userID"]
            if user_id is not None and not isinstance(user_id, str):
                raise _parse_failure("userID must be a string or null", query_ids)
            validation = Validation(user_id)
        entries = answer["queries"]
    elif isinstance(answer, list) and len(answer) == 2 and answer[0] == "transformed":
        if not isinstance(answer[1], list):
            raise _parse_failure("transformed must carry a list", query_ids)
        entries = answer[1]
    elif isinstance(answer, list) and len(answer) == 2 and answer[0] == "transformFailed":
        if not isinstance(answer[1], dict):
            raise _parse_failure("transformFailed must carry an object", query_ids)
        raise TransformFailed(dict(answer[1]))
    else:
        raise _parse_failure("expected a QueryResponse or TransformFailed body", query_ids)
    return [_query_result(entry, query_ids) for entry in entries], validation


class QueryTransformer:
    """Transforms named queries through the query URL; one per view syncer or process.

    The cache is shared by every caller of this instance.
    """

    def __init__(self, api: ApiServer) -> None:
        self._api = api
        self._cache = _Cache()

    async def transform(
        self,
        queries: Sequence[NamedQuery],
        *,
        auth_token: str | None,
        user_id: str | None,
        user_url: str | None,
        client_headers: Mapping[str, str],
        request_headers: Mapping[str, str],
        cookie: str | None,
        origin: str | None,
    ) -> tuple[list[TransformedQuery | ErroredQuery], Validation | None]:
        """Each query's AST or error, in request order, and the app's user validation.

        Raises `TransformFailed` when the whole request failed.
        """
        ids = [query.id for query in queries]
        try:
            url = self._api.resolve_url(user_url)
        except ApiCallFailed as exc:
            raise TransformFailed(exc.error_body(ids)) from None
        identity = self._identity(
            url, auth_token, user_id, client_headers, request_headers, cookie, origin
        )
        now = trio.current_time()
        results: dict[str, TransformedQuery | ErroredQuery] = {}
        missing: list[NamedQuery] = []
        for query in queries:
            cached = self._cache.get(_cache_key(identity, query.id), now)
            if cached is None:
                missing.append(query)
            else:
                results[query.id] = cached
        validation: Validation | None = None
        if missing:
            answered, validation = await self._request(
                url, missing, auth_token, client_headers, request_headers, cookie, origin
            )
            now = trio.current_time()
            for result in answered:
                results[result.id] = result
                if isinstance(result, TransformedQuery):
                    self._cache.put(_cache_key(identity, result.id), result, now)
        return [results[query_id] for query_id in dict.fromkeys(ids) if query_id in results], validation

    async def validate_connection(
        self,
        *,
        auth_token: str | None,
        user_url: str | None,
        client_headers: Mapping[str, str],
        request_headers: Mapping[str, str],
        cookie: str | None,
        origin: str | None,
    ) -> Validation | None:
        """Send `["transform",[]]` (never cached); the app's user validation.

        Raises `TransformFailed` (e.g. HTTP 401 → `reason:"http"`, `status:401`).
        """
        try:
            url = self._api.resolve_url(user_url)
        except ApiCallFailed as exc:
            raise TransformFailed(exc.error_body([])) from None
        _, validation = await self._request(
            url, [], auth_token, client_headers, request_headers, cookie, origin
        )
        return validation

    async def _request(
        self,
        url: str,
        queries: Sequence[NamedQuery],
        auth_token: str | None,
        client_headers: Mapping[str, str],
        request_headers: Mapping[str, str],
        cookie: str | None,
        origin: str | None,
    ) -> tuple[list[TransformedQuery | ErroredQuery], Validation | None]:
        ids = [query.id for query in queries]
        payload = ["transform", [{"id": q.id, "name": q.name, "args": q.args} for q in queries]]
        try:
            answer = await self._api.post_json(
                url,
                payload,
                auth_token=auth_token,
                client_headers=client_headers,
                request_headers=request_headers,
                cookie=cookie,
                origin=origin,
            )
        except ApiCallFailed as exc:
            raise TransformFailed(exc.error_body(ids)) from None
        return _read_response(answer, ids)

    def _identity(
        self,
        url: str,
        auth_token: str | None,
        user_id: str | None,
        client_headers: Mapping[str, str],
        request_headers: Mapping[str, str],
        cookie: str | None,
        origin: str | None,
    ) -> str:
        headers = self._api.headers(
            auth_token=auth_token,
            client_headers=client_headers,
            request_headers=request_headers,
            cookie=cookie,
            origin=origin,
        )
        normalized = sorted((name.lower(), value) for name, value in headers)
        return json.dumps([url, user_id, normalized])

    def cache_size(self) -> int:
        """Cached transformations, expired ones included until they are next looked at."""
        return len(self._cache.entries)


def _cache_key(identity: str, query_id: str) -> str:
    return f"{query_id}\x00{identity}"
