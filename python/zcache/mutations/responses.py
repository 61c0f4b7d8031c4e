"""What the app server's answer to a push means (§6.2): sans-IO, bytes in, outcome out.

The push URL answers with a `MutateResponse` (per-mutation results), a `PushFailed` body (the
whole push failed, by the app's account) or one of the legacy forms. zero-cache 1.9 forwards
none of the per-mutation results to clients — successes and app errors reach them through
replication of `clients`/`mutations` — so the only thing a response can cause on the
connection side is a `PushFailed` error for some clients, which closes their sockets:

* a whole-push failure goes to every client named in its `mutationIDs`;
* an `oooMutation` result fails that client, listing all of its mutations in the response;
* a `userID` in a `MutateResponse` that differs from the connection's fails the push as an
  HTTP 401 (zero-cache's wording and shape), which puts the client into needs-auth.

`alreadyProcessed` results are counted and otherwise ignored: the mutation was applied before.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from zcache.mutations.errors import ORIGIN_SERVER, ORIGIN_ZERO_CACHE, push_failed

USER_MISMATCH = "Connection userID does not match validated server userID."
_LEGACY_ERRORS = frozenset({"unsupportedPushVersion", "unsupportedSchemaVersion", "http", "zeroPusher"})
_SERVER_REASONS = frozenset({"database", "parse", "oooMutation", "unsupportedPushVersion", "internal"})
_ZERO_CACHE_REASONS = frozenset({"http", "timeout", "parse", "internal"})


@dataclass(frozen=True)
class PushOutcome:
    """The effect of one forwarded push.

    `failures` maps a clientID to the PushFailed body its connection gets (then it closes);
    `reason` is the whole push's failure reason (None when the push as a whole succeeded).
    The counts classify the per-mutation results of a successful response.
    """

    failures: dict[str, dict[str, Any]] = field(default_factory=dict)
    reason: str | None = None
    ok: int = 0
    app_errors: int = 0
    already_processed: int = 0
    out_of_order: int = 0


class _Malformed(ValueError):
    pass


def failed_push(body: dict[str, Any]) -> PushOutcome:
    """Every client named in a PushFailed body's `mutationIDs` gets the whole body."""
    failures = {m["clientID"]: body for m in body["mutationIDs"]}
    return PushOutcome(failures=failures, reason=str(body["reason"]))


def interpret(body: bytes, ids: list[dict[str, Any]], user_id: str | None) -> PushOutcome:
    """The outcome of a push the app server answered with a 2xx status and `body`.

    `ids` are the pushed mutations' `{id, clientID}` (zcache's own failures name them all);
    `user_id` is the pushing connection's userID (None when logged out).
    """
    try:
        parsed = json.loads(body)
        return _interpret_json(parsed, ids, user_id)
    except (ValueError, _Malformed) as e:
        return failed_push(push_failed("parse", f"Failed to parse response from API server: {e}", ids))


def _interpret_json(parsed: Any, ids: list[dict[str, Any]], user_id: str | None) -> PushOutcome:
    if not isinstance(parsed, dict):
        raise _Malformed(f"expected a JSON object, got {_json_type(parsed)}")
    kind = parsed.get("kind")
    if kind == "PushFailed":
        return failed_push(_checked_push_failed(parsed))
    if "error" in parsed and kind is None:
        return _legacy_error(parsed)
    if kind == "MutateResponse" or (kind is None and "mutations" in parsed):
        results = _checked_results(parsed.get("mutations"))
        if kind == "MutateResponse" and "userID" in parsed:
            validated = parsed["userID"]
            if validated is not None and not isinstance(validated, str):
                raise _Malformed(f"userID must be a string or null, got {_json_type(validated)}")
            if validated != user_id:
                return failed_push(push_failed("http", USER_MISMATCH, ids, status=401))
        return _results_outcome(results)
    raise _Malformed(f"unknown response kind {kind!r}" if kind is not None else "no kind, mutations or error member")


def _checked_push_failed(body: dict[str, Any]) -> dict[str, Any]:
    origin, reason = body.get("origin"), body.get("reason")
    allowed = _SERVER_REASONS if origin == ORIGIN_SERVER else _ZERO_CACHE_REASONS if origin == ORIGIN_ZERO_CACHE else None
    if allowed is None:
        raise _Malformed(f"PushFailed origin must be 'server' or 'zeroCache', got {origin!r}")
    if reason not in allowed:
        raise _Malformed(f"PushFailed reason {reason!r} is not valid for origin {origin!r}")
    if not isinstance(body.get("message"), str):
        raise _Malformed("PushFailed message must be a string")
    if origin == ORIGIN_ZERO_CACHE and reason == "http" and not _is_number(body.get("status")):
        raise _Malformed("PushFailed with reason 'http' needs a numeric status")
    _checked_ids(body.get("mutationIDs"))
    return body


def _legacy_error(body: dict[str, Any]) -> PushOutcome:
    """The pre-`PushFailed` forms, converted to PushFailed bodies as zero-cache does."""
    error = body["error"]
    if error not in _LEGACY_ERRORS:
        raise _Malformed(f"unknown legacy push error {error!r}")
    ids = _checked_ids(body.get("mutationIDs", []))
    if error == "http":
        if not _is_number(body.get("status")) or not isinstance(body.get("details"), str):
            raise _Malformed("legacy 'http' push error needs a numeric status and string details")

    def converted(client_ids: list[dict[str, Any]]) -> dict[str, Any]:
        if error == "http":
            return push_failed(
                "http",
                f"Fetch from API server returned non-OK status {body['status']}",
                client_ids,
                status=body["status"],
                bodyPreview=body["details"],
            )
        if error == "unsupportedPushVersion":
            return _server_failed("unsupportedPushVersion", "Unsupported push version", client_ids)
        if error == "zeroPusher":
            if not isinstance(body.get("details"), str):
                raise _Malformed("legacy 'zeroPusher' push error needs string details")
            return _server_failed("internal", body["details"], client_ids)
        return _server_failed("internal", "Unsupported schema version", client_ids)

    by_client: dict[str, list[dict[str, Any]]] = {}
    for m in ids:
        by_client.setdefault(m["clientID"], []).append(m)
    failures = {client: converted(client_ids) for client, client_ids in by_client.items()}
    reason = "http" if error == "http" else "unsupportedPushVersion" if error == "unsupportedPushVersion" else "internal"
    return PushOutcome(failures=failures, reason=reason)


def _server_failed(reason: str, message: str, ids: list[dict[str, Any]]) -> dict[str, Any]:
    return {"kind": "PushFailed", "origin": ORIGIN_SERVER, "reason": reason, "mutationIDs": ids, "message": message}


def _results_outcome(results: list[tuple[dict[str, Any], Mapping[str, Any]]]) -> PushOutcome:
    ok = app_errors = already = ooo = 0
    by_client: dict[str, list[tuple[dict[str, Any], Mapping[str, Any]]]] = {}
    for mutation_id, result in results:
        by_client.setdefault(mutation_id["clientID"], []).append((mutation_id, result))
        error = result.get("error")
        if error is None:
            ok += 1
        elif error == "app":
            app_errors += 1
        elif error == "alreadyProcessed":
            already += 1
        else:
            ooo += 1
    failures: dict[str, dict[str, Any]] = {}
    for client, client_results in by_client.items():
        ooo_result = next((r for _, r in client_results if r.get("error") == "oooMutation"), None)
        if ooo_result is None:
            continue
        body = {
            "kind": "PushFailed",
            "origin": ORIGIN_SERVER,
            "reason": "oooMutation",
            "message": "mutation was out of order",
            "mutationIDs": [{"clientID": m["clientID"], "id": m["id"]} for m, _ in client_results],
        }
        if "details" in ooo_result:
            body["details"] = ooo_result["details"]
        failures[client] = body
    return PushOutcome(
        failures=failures,
        reason=None,
        ok=ok,
        app_errors=app_errors,
        already_processed=already,
        out_of_order=ooo,
    )


def _checked_results(mutations: Any) -> list[tuple[dict[str, Any], Mapping[str, Any]]]:
    if not isinstance(mutations, list):
        raise _Malformed(f"mutations must be an array, got {_json_type(mutations)}")
    checked = []
    for i, entry in enumerate(mutations):
        if not isinstance(entry, dict) or not isinstance(entry.get("result"), dict):
            raise _Malformed(f"mutations[{i}] must be an object with an object result")
        mutation_id = _checked_id(entry.get("id"), f"mutations[{i}].id")
        result = entry["result"]
        error = result.get("error")
        if error not in (None, "app", "alreadyProcessed", "oooMutation"):
            raise _Malformed(f"mutations[{i}].result.error {error!r} is not a known mutation error")
        if error == "app" and "message" in result and not isinstance(result["message"], str):
            raise _Malformed(f"mutations[{i}].result.message must be a string")
        checked.append((mutation_id, result))
    return checked


def _checked_ids(ids: Any) -> list[dict[str, Any]]:
    if not isinstance(ids, list):
        raise _Malformed(f"mutationIDs must be an array, got {_json_type(ids)}")
    return [_checked_id(m, f"mutationIDs[{i}]") for i, m in enumerate(ids)]


def _checked_id(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict) or not isinstance(value.get("clientID"), str) or not _is_number(value.get("id")):
        raise _Malformed(f"{where} must be an object {{clientID: string, id: number}}")
    return value


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"
