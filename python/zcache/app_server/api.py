"""Calling the app's push URL and query URL exactly as zero-cache 1.9 does.

Reproduces zero-cache's `fetchFromAPIServer` (`zero-cache/src/custom/fetch.ts`) and the
header options of its connection context (docs/zero-protocol.md §6.2, §7.3):

* URL: the client's own URL (`userPushURL` / `userQueryURL`) if it matches one of the
  configured URLPatterns (`ZERO_MUTATE_URL` / `ZERO_QUERY_URL`), else the first configured URL.
  A URL that does not match fails with `ApiUrlNotAllowed` (reason `internal`).
* Query parameters `schema=<appID>_<shardNum>` and `appID=<appID>` are appended; a URL that
  already has either is refused (zero-cache's "reserved query param" error).
* Headers, in zero-cache's order, later ones replacing earlier ones of the same name:
  `Content-Type: application/json`; `X-Api-Key` when `*_API_KEY` is set; the client's headers
  (`userPushHeaders` / `userQueryHeaders`) whose names are in `*_ALLOWED_CLIENT_HEADERS`; the
  connection's HTTP request headers whose names are in `*_ALLOWED_REQUEST_HEADERS`;
  `Authorization: Bearer <token>`; `Cookie` when `*_FORWARD_COOKIES`; `Origin`.
* Up to 4 attempts: a 5xx status or a network failure (refused, reset, timed out) is retried
  after min(1000, 100·2^(n-1) + U(0, 100)) ms; other statuses are final. The final failure is
  an `ApiCallFailed` whose `error_body()` is zero-cache's `PushFailed` / `TransformFailed` body
  (`origin: "zeroCache"`, `reason: "http"` with `status` and a ≤512-character `bodyPreview`, or
  `reason: "internal"`; `"parse"` for a 2xx body that is not JSON).

Refinements of the contract in docs: `post` takes an optional per-attempt `timeout_s`
(zero-cache relies on Node's fetch defaults; zcache bounds every attempt), and `post_json`
serialises the payload and parses the JSON answer, as `fetchFromAPIServer` does.
"""

from __future__ import annotations

import json
import logging
import random
import urllib.parse
from collections.abc import Mapping
from typing import Any, Literal

import trio

from zcache.app_server.http import HttpClient, HttpError, HttpResponse
from zcache.app_server.url_pattern import UrlPattern
from zcache.config import ApiServerConfig

log = logging.getLogger("zcache.app_server")

MAX_ATTEMPTS = 4
DEFAULT_ATTEMPT_TIMEOUT_S = 30.0
BODY_PREVIEW_CHARS = 512
_RESERVED_PARAMS = ("schema", "appID")

ApiKind = Literal["mutate", "query"]
FailureReason = Literal["http", "internal", "parse"]


class ApiCallFailed(Exception):
    """A call to the app's API server failed; `error_body` is what zero-cache sends the client.

    `reason` is `http` (final non-2xx status; `status` and `body_preview` set), `parse` (a 2xx
    body that is not JSON) or `internal` (network failure after the retries, URL not allowed,
    reserved query parameter in the URL).
    """

    def __init__(
        self,
        kind: ApiKind,
        reason: FailureReason,
        message: str,
        *,
        status: int | None = None,
        body_preview: str | None = None,
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.reason = reason
        self.message = message
        self.status = status
        self.body_preview = body_preview

    def error_body(self, ids: list[Any] | None = None) -> dict[str, Any]:
        """zero-cache's `PushFailed` (mutate) or `TransformFailed` (query) error body.

        `ids` fills `mutationIDs` / `queryIDs` (zero-cache's fetch leaves them empty and its
        callers fill them in).
        """
        if self.kind == "mutate":
            body: dict[str, Any] = {"kind": "PushFailed", "origin": "zeroCache", "reason": self.reason}
            ids_field = "mutationIDs"
        else:
            body = {"kind": "TransformFailed", "origin": "zeroCache", "reason": self.reason}
            ids_field = "queryIDs"
        if self.reason == "http":
            body["status"] = self.status if self.status is not None else 0
            if self.body_preview is not None:
                body["bodyPreview"] = self.body_preview
        body["message"] = self.message
        body[ids_field] = list(ids or [])
        return body


class ApiUrlNotAllowed(ApiCallFailed):
    """The client's URL matches none of the configured URL patterns (or none is configured)."""


def body_preview(body: bytes) -> str:
    """The first 512 characters of a response body, with `...` when cut (zero-cache's rule)."""
    text = body.decode("utf-8", errors="replace")
    if len(text) > BODY_PREVIEW_CHARS:
        return text[:BODY_PREVIEW_CHARS] + "..."
    return text


def backoff_delay_s(attempt: int) -> float:
    """Delay after failed attempt `attempt` (1-based), as zero-cache's `getBackoffDelayMs`."""
    return min(1000.0, 100.0 * 2 ** (attempt - 1) + random.random() * 100.0) / 1000.0


def _filter_headers(headers: Mapping[str, str], allowed: tuple[str, ...]) -> dict[str, str]:
    names = {name.lower() for name in allowed}
    return {key: value for key, value in headers.items() if key.lower() in names}


class ApiServer:
    """The push URL (`kind="mutate"`) or query URL (`kind="query"`) of the app.

    Built from `config.mutate` or `config.query`; shares the process's `HttpClient`.
    """

    def __init__(
        self,
        config: ApiServerConfig,
        *,
        http: HttpClient,
        app_id: str,
        shard_num: int,
        kind: ApiKind,
    ) -> None:
        self.config = config
        self.kind: ApiKind = kind
        self._http = http
        self._app_id = app_id
        self._schema = f"{app_id}_{shard_num}"
        self._patterns = [UrlPattern(url) for url in config.url]
        self._option = "ZERO_MUTATE_URL" if kind == "mutate" else "ZERO_QUERY_URL"

    @property
    def configured(self) -> bool:
        """Whether at least one URL is configured."""
        return bool(self.config.url)

    def resolve_url(self, user_url: str | None) -> str:
        """The URL to call: the client's if allowed, else the first configured one.

        Raises `ApiUrlNotAllowed` when the client's URL matches no configured pattern, or when
        no URL is configured at all.
        """
        if not self.config.url:
            raise ApiUrlNotAllowed(self.kind, "internal", f"No {self._option} is configured")
        url = user_url or self.config.url[0]
        if not any(pattern.matches(url) for pattern in self._patterns):
            raise ApiUrlNotAllowed(
                self.kind,
                "internal",
                f'URL "{url}" is not allowed by the {self._option} configuration',
            )
        return url

    def _final_url(self, url: str) -> str:
        parts = urllib.parse.urlsplit(url)
        params = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
        for reserved in _RESERVED_PARAMS:
            if any(name == reserved for name, _ in params):
                what = "push" if self.kind == "mutate" else "query"
                raise ApiCallFailed(
                    self.kind,
                    "internal",
                    f'The {what} URL cannot contain the reserved query param "{reserved}"',
                )
        params += [("schema", self._schema), ("appID", self._app_id)]
        return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(params)))

    def headers(
        self,
        *,
        auth_token: str | None,
        client_headers: Mapping[str, str],
        request_headers: Mapping[str, str],
        cookie: str | None,
        origin: str | None,
    ) -> list[tuple[str, str]]:
        """The request headers zero-cache sends (see the module docstring)."""
        merged: dict[str, tuple[str, str]] = {}

        def put(name: str, value: str) -> None:
            merged[name.lower()] = (name, value)

        put("Content-Type", "application/json")
        if self.config.api_key:
            put("X-Api-Key", self.config.api_key)
        for name, value in _filter_headers(client_headers, self.config.allowed_client_headers).items():
            put(name, value)
        for name, value in _filter_headers(request_headers, self.config.allowed_request_headers).items():
            put(name, value)
        if auth_token:
            put("Authorization", f"Bearer {auth_token}")
        if cookie and self.config.forward_cookies:
            put("Cookie", cookie)
        if origin:
            put("Origin", origin)
        return list(merged.values())

    async def post(
        self,
        url: str,
        body: bytes,
        *,
        auth_token: str | None,
        client_headers: Mapping[str, str],
        request_headers: Mapping[str, str],
        cookie: str | None,
        origin: str | None,
        retries: bool,
        timeout_s: float = DEFAULT_ATTEMPT_TIMEOUT_S,
    ) -> HttpResponse:
        """POST `body` to `url` (from `resolve_url`); returns the first 2xx response.

        Raises `ApiCallFailed` as described in the module docstring. With `retries=False` a
        single attempt is made.
        """
        final_url = self._final_url(url)
        headers = self.headers(
            auth_token=auth_token,
            client_headers=client_headers,
            request_headers=request_headers,
            cookie=cookie,
            origin=origin,
        )
        attempts = MAX_ATTEMPTS if retries else 1
        for attempt in range(1, attempts + 1):
            last = attempt == attempts
            try:
                response = await self._http.request(
                    "POST", final_url, headers=headers, body=body, timeout_s=timeout_s
                )
            except HttpError as exc:
                log.warning("%s call failed (attempt %d of %d): %s", self.kind, attempt, attempts, exc)
                if last:
                    raise ApiCallFailed(
                        self.kind, "internal", f"Fetch from API server threw error: {exc}"
                    ) from exc
                await trio.sleep(backoff_delay_s(attempt))
                continue
            if response.ok:
                return response
            preview = body_preview(response.body)
            log.warning(
                "%s call to %s returned HTTP %d (attempt %d of %d): %s",
                self.kind, final_url, response.status, attempt, attempts, preview,
            )
            if 500 <= response.status < 600 and not last:
                await trio.sleep(backoff_delay_s(attempt))
                continue
            raise ApiCallFailed(
                self.kind,
                "http",
                f"Fetch from API server returned non-OK status {response.status}",
                status=response.status,
                body_preview=preview,
            )
        raise AssertionError("unreachable: the last attempt returns or raises")

    async def post_json(
        self,
        url: str,
        payload: Any,
        *,
        auth_token: str | None,
        client_headers: Mapping[str, str],
        request_headers: Mapping[str, str],
        cookie: str | None,
        origin: str | None,
        retries: bool = True,
        timeout_s: float = DEFAULT_ATTEMPT_TIMEOUT_S,
    ) -> Any:
        """`post` with `payload` serialised as compact JSON; returns the parsed JSON answer.

        A 2xx answer that is not JSON raises `ApiCallFailed` with reason `parse`.
        """
        body = json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()
        response = await self.post(
            url,
            body,
            auth_token=auth_token,
            client_headers=client_headers,
            request_headers=request_headers,
            cookie=cookie,
            origin=origin,
            retries=retries,
            timeout_s=timeout_s,
        )
        try:
            return json.loads(response.body)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ApiCallFailed(
                self.kind, "parse", f"Failed to parse response from API server: {exc}"
            ) from None
