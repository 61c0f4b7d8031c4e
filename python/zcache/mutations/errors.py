"""Error message bodies of the write path (§7.4 of the protocol doc) and the exception that
carries a fatal one to the connection.

Every body here is exactly the JSON object sent as `["error", body]`: `kind`, `message`,
`origin` and, for `PushFailed`, `reason`, `mutationIDs` and the reason's extra fields.
"""

from __future__ import annotations

from typing import Any

ORIGIN_ZERO_CACHE = "zeroCache"
ORIGIN_SERVER = "server"


class PushError(Exception):
    """A push that must end the connection: send `["error", body]`, then close the socket."""

    def __init__(self, body: dict[str, Any]) -> None:
        super().__init__(f"{body['kind']}: {body['message']}")
        self.body = body


def basic_error(kind: str, message: str) -> dict[str, Any]:
    return {"kind": kind, "message": message, "origin": ORIGIN_ZERO_CACHE}


def invalid_push(message: str) -> dict[str, Any]:
    return basic_error("InvalidPush", message)


def mutation_ids(mutations: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The `mutationIDs` of a PushFailed body, in push order."""
    return [{"id": m["id"], "clientID": m["clientID"]} for m in mutations]


def push_failed(reason: str, message: str, ids: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    """A PushFailed raised by zcache itself (origin zeroCache), as zero-cache words it."""
    return {"kind": "PushFailed", "origin": ORIGIN_ZERO_CACHE, "reason": reason, **extra, "message": message, "mutationIDs": ids}
