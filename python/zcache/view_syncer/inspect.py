"""Answers to the devtools inspector's `inspect` requests (§4.7).

`version` and `queries` are answered; `metrics` and `analyze-query` get `op:"error"`, which
zero-cache's protocol allows. Outside development mode (`NODE_ENV=development`) a client group
must first send `authenticate` with the admin password (`ZERO_ADMIN_PASSWORD`); until then every
other request is answered with the `authenticated: false` challenge.
"""

from __future__ import annotations

import hmac
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from zcache.view_syncer.group import ClientGroup, Connection
    from zcache.view_syncer.service import ViewSyncerService

# The zero-cache release whose protocol zcache serves; the inspector compares it with the client's.
ZERO_CACHE_VERSION = "1.9.0"


async def answer_inspect(
    service: ViewSyncerService, group: ClientGroup, handle: Connection, body: dict[str, Any]
) -> list[list[Any]]:
    request_id = body.get("id")
    op = body.get("op")
    if op == "authenticate":
        password = service.config.admin_password
        value = body.get("value")
        ok = service.development or (
            password is not None and isinstance(value, str) and hmac.compare_digest(value.encode(), password.encode())
        )
        if ok:
            group.inspect_authenticated = True
        return [["inspect", {"op": "authenticated", "id": request_id, "value": ok}]]
    if not (service.development or group.inspect_authenticated):
        return [["inspect", {"op": "authenticated", "id": request_id, "value": False}]]
    if op == "version":
        return [["inspect", {"op": "version", "id": request_id, "value": ZERO_CACHE_VERSION}]]
    if op == "queries":
        return [["inspect", {"op": "queries", "id": request_id, "value": await _queries(service, group, body.get("clientID"))}]]
    return [["inspect", {"op": "error", "id": request_id, "value": f"zcache does not answer inspect op {op!r}"}]]


async def _queries(service: ViewSyncerService, group: ClientGroup, client_id: Any) -> list[dict[str, Any]]:
    desires = sorted(
        (d for d in group.desires.values() if client_id is None or d.client_id == client_id),
        key=lambda d: (d.client_id, d.query_hash),
    )
    counts = await service.query_row_counts(group.id, sorted({d.query_hash for d in desires} & group.engine_queries.keys()))
    out: list[dict[str, Any]] = []
    for d in desires:
        q = group.queries.get(d.query_hash)
        if q is None:
            continue
        out.append(
            {
                "clientID": d.client_id,
                "queryID": d.query_hash,
                "ttl": d.ttl_ms,
                "inactivatedAt": d.inactivated_at_ms,
                "rowCount": counts.get(d.query_hash, 0),
                "ast": q.client_ast,
                "got": q.patch_version is not None and not q.deleted,
                "deleted": d.deleted,
                "name": q.name,
                "args": q.args,
                "metrics": None,
            }
        )
    return out
