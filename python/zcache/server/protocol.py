"""The sync protocol v51 at the edge: connect URLs, the subprotocol header, upstream messages
parsed strictly into typed values, and downstream encoding (docs/zero-protocol.md §2–§4, §7).

Parsing follows zero-cache 1.9 exactly where a client can tell the difference:

* the connect URL `[/<base>]/sync/v<N>/connect?…` and its query parameters (§2.1); a bad URL or a
  missing/invalid required parameter is a `ConnectRejected` whose `reason` is the close reason of
  the 1002 close (`Error: invalid querystring - missing clientID`);
* a protocol version outside 30..51 is a `ProtocolError` of kind `VersionNotSupported` (§2.3);
* `Sec-WebSocket-Protocol` = `encodeURIComponent(base64(UTF-8(JSON)))` of
  `{initConnectionMessage?, authToken?}` (§2.2);
* upstream frames are validated against the same schemas as zero-cache's (`up.ts` and friends,
  in `validation.py`'s terms); any failure is a `ProtocolError` of kind `InvalidMessage` whose
  message is zero-cache's text (`TypeError: Expected array. Got object`). Where zcache's text
  differs: JSON syntax errors carry Python's description after `SyntaxError: `.

Refinements of the contract in briefs/contracts.md: `parse_upstream` also returns the
edge-only messages (`InitConnection`, `Ping`, `Pull`, `CloseConnection`); `QueryPut.ttl_ms` keeps
the client's number (an int for every real client); `ConnectParams.ts` is `parseInt` of the
client's float timestamp, like zero-cache's.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from zcache.server import validation as v

PROTOCOL_VERSION: Final = 51
MIN_SUPPORTED_PROTOCOL_VERSION: Final = 30
# WebSocket close reasons are at most 123 bytes of UTF-8.
MAX_CLOSE_REASON_BYTES: Final = 123


class ProtocolError(Exception):
    """A protocol violation answered with `["error", {kind, message, origin: "zeroCache"}]` and a close."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(f"{kind}: {message}")
        self.kind = kind
        self.message = message

    def body(self) -> dict[str, Any]:
        return {"kind": self.kind, "message": self.message, "origin": "zeroCache"}


class ConnectRejected(Exception):
    """The connect request is unusable: the socket is closed with 1002 and `reason`, no `error` message."""

    def __init__(self, message: str) -> None:
        self.reason = elide(f"Error: {message}", MAX_CLOSE_REASON_BYTES)
        super().__init__(self.reason)


def elide(text: str, max_bytes: int) -> str:
    """`text` cut to `max_bytes` of UTF-8, ending in `...` when cut (zero-cache's `elide`)."""
    if len(text.encode("utf-8", "surrogatepass")) <= max_bytes:
        return text
    text = text[: max_bytes - 3]
    while len((text + "...").encode("utf-8", "surrogatepass")) > max_bytes:
        text = text[:-1]
    return text + "..."


# --- typed upstream messages --------------------------------------------------------------


@dataclass(frozen=True)
class QueryPut:
    hash: str
    name: str | None  # named ("custom") query: name + args
    args: list[Any] | None
    ast: dict[str, Any] | None  # legacy ad-hoc query, in server names
    ttl_ms: int | float | None


@dataclass(frozen=True)
class QueryDel:
    hash: str


@dataclass(frozen=True)
class QueryClear:
    pass


QueryPatchOp = QueryPut | QueryDel | QueryClear


@dataclass(frozen=True)
class InitConnection:
    desired_queries_patch: list[QueryPatchOp]
    client_schema: dict[str, Any] | None
    deleted_client_ids: list[str]
    deleted_client_group_ids: list[str]
    user_push_url: str | None
    user_push_headers: dict[str, str]
    user_query_url: str | None
    user_query_headers: dict[str, str]
    active_clients: list[str] | None


@dataclass(frozen=True)
class ChangeDesiredQueries:
    desired_queries_patch: list[QueryPatchOp]


@dataclass(frozen=True)
class Push:
    body: dict[str, Any]  # the validated push body of §6.1


@dataclass(frozen=True)
class AckMutationResponses:
    client_id: str
    id: int | float


@dataclass(frozen=True)
class UpdateAuth:
    auth: str


@dataclass(frozen=True)
class DeleteClients:
    client_ids: list[str]
    client_group_ids: list[str]


@dataclass(frozen=True)
class Inspect:
    body: dict[str, Any]


@dataclass(frozen=True)
class Ping:
    pass


@dataclass(frozen=True)
class Pull:
    """Mutation-recovery pull: ignored by zero-cache 1.9 (no reply)."""

    body: dict[str, Any]


@dataclass(frozen=True)
class CloseConnection:
    """Deprecated; ignored."""


UpstreamMessage = ChangeDesiredQueries | Push | AckMutationResponses | UpdateAuth | DeleteClients | Inspect
AnyUpstream = UpstreamMessage | InitConnection | Ping | Pull | CloseConnection


# --- the upstream schemas of @rocicorp/zero 1.9.0 (zero-protocol/src/*.ts) ------------------

_S, _N, _B = v.STRING, v.NUMBER, v.BOOLEAN
_JSON = v.UNKNOWN  # JSON.parse only yields JSON values, which is all `jsonSchema` checks

_literal_ref = v.Object(
    {
        "type": v.Literal("literal"),
        "value": v.Union(_S, _N, _B, v.NULL, v.array(v.Union(_S, _N, _B))),
    }
)
_column_ref = v.Object({"type": v.Literal("column"), "name": _S})
_static_ref = v.Object(
    {
        "type": v.Literal("static"),
        "anchor": v.literal_union("authData", "preMutationRow"),
        "field": v.Union(_S, v.array(_S)),
    }
)
_simple_operator = v.Union(
    v.literal_union("=", "!=", "IS", "IS NOT"),
    v.literal_union("<", ">", "<=", ">="),
    v.literal_union("LIKE", "NOT LIKE", "ILIKE", "NOT ILIKE"),
    v.literal_union("IN", "NOT IN"),
)
_simple_condition = v.Object(
    {
        "type": v.Literal("simple"),
        "op": _simple_operator,
        "left": v.Union(_literal_ref, _column_ref, _static_ref),
        "right": v.Union(_static_ref, _literal_ref),
    }
)
_compound_key = v.Array((_S,), _S)
_correlated_subquery: v.Schema = v.Object(
    {
        "correlation": v.Object({"parentField": _compound_key, "childField": _compound_key}),
        "hidden": _B.optional(),
        "system": v.literal_union("permissions", "client", "test").optional(),
    }
).extend({"subquery": v.Lazy(lambda: AST_SCHEMA)})
_correlated_subquery_condition = v.Object(
    {
        "type": v.Literal("correlatedSubquery"),
        "related": v.Lazy(lambda: _correlated_subquery),
        "op": v.literal_union("EXISTS", "NOT EXISTS"),
        "flip": _B.optional(),
        "scalar": _B.optional(),
    }
)
_condition: v.Schema = v.Union(
    _simple_condition,
    v.Lazy(lambda: _conjunction),
    v.Lazy(lambda: _disjunction),
    _correlated_subquery_condition,
)
_conjunction = v.Object({"type": v.Literal("and"), "conditions": v.array(_condition)})
_disjunction = v.Object({"type": v.Literal("or"), "conditions": v.array(_condition)})
_row = v.record(v.Union(_JSON, v.UNDEFINED))
AST_SCHEMA: Final[v.Schema] = v.Object(
    {
        "schema": _S.optional(),
        "table": _S,
        "alias": _S.optional(),
        "where": _condition.optional(),
        "related": v.array(_correlated_subquery).optional(),
        "limit": _N.optional(),
        "orderBy": v.array(v.tuple_(_S, v.literal_union("asc", "desc"))).optional(),
        "start": v.Object({"row": _row, "exclusive": _B}).optional(),
    }
)

_put_op = v.Object({"op": v.Literal("put"), "hash": _S, "ttl": _N.optional()})
_up_put_op = _put_op.extend({"ast": AST_SCHEMA.optional(), "name": _S.optional(), "args": v.array(_JSON).optional()})
_del_op = v.Object({"op": v.Literal("del"), "hash": _S})
_clear_op = v.Object({"op": v.Literal("clear")})
_up_queries_patch = v.array(v.Union(_up_put_op, _del_op, _clear_op))

_client_schema = v.Object(
    {
        "tables": v.record(
            v.Object(
                {
                    "columns": v.record(v.Object({"type": v.literal_union("string", "number", "boolean", "null", "json")})),
                    "primaryKey": v.array(_S),
                }
            )
        )
    }
)
_delete_clients_body = v.Union(v.Object({"clientIDs": v.array(_S).optional(), "clientGroupIDs": v.array(_S).optional()}))
_init_connection_body = v.Object(
    {
        "desiredQueriesPatch": _up_queries_patch,
        "clientSchema": _client_schema.optional(),
        "deleted": _delete_clients_body.optional(),
        "userPushURL": _S.optional(),
        "userPushHeaders": v.record(_S).optional(),
        "userQueryURL": _S.optional(),
        "userQueryHeaders": v.record(_S).optional(),
        "activeClients": v.array(_S).optional(),
        "traceparent": _S.optional(),
    }
)

_primary_key = v.Array((_S,), _S)
_crud_op_fields = {"tableName": _S, "primaryKey": _primary_key, "value": _row}
_crud_op = v.Union(
    v.Object({"op": v.Literal("insert"), **_crud_op_fields}),
    v.Object({"op": v.Literal("upsert"), **_crud_op_fields}),
    v.Object({"op": v.Literal("update"), **_crud_op_fields}),
    v.Object({"op": v.Literal("delete"), **_crud_op_fields, "value": v.record(v.Union(_S, _N, _B))}),
)
_mutation = v.Union(
    v.Object(
        {
            "type": v.Literal("crud"),
            "id": _N,
            "clientID": _S,
            "name": v.Literal("_zero_crud"),
            "args": v.tuple_(v.Object({"ops": v.array(_crud_op)})),
            "timestamp": _N,
        }
    ),
    v.Object(
        {
            "type": v.Literal("custom"),
            "id": _N,
            "clientID": _S,
            "name": _S,
            "args": v.array(_JSON),
            "timestamp": _N,
        }
    ),
)
_push_body = v.Object(
    {
        "clientGroupID": _S,
        "mutations": v.array(_mutation),
        "pushVersion": _N,
        "schemaVersion": _N.optional(),
        "timestamp": _N,
        "requestID": _S,
        "auth": _S.optional(),
        "traceparent": _S.optional(),
    }
)
_inspect_base = v.Object({"id": _S})
_inspect_body = v.Union(
    _inspect_base.extend({"op": v.Literal("queries"), "clientID": _S.optional()}),
    _inspect_base.extend({"op": v.Literal("metrics")}),
    _inspect_base.extend({"op": v.Literal("version")}),
    _inspect_base.extend({"op": v.Literal("authenticate"), "value": _S}),
    _inspect_base.extend(
        {
            "op": v.Literal("analyze-query"),
            "value": AST_SCHEMA.optional(),
            "options": v.Object(
                {"vendedRows": _B.optional(), "syncedRows": _B.optional(), "joinPlans": _B.optional()}
            ).optional(),
            "ast": AST_SCHEMA.optional(),
            "name": _S.optional(),
            "args": v.array(_JSON).optional(),
        }
    ),
)


def _message(kind: str, body: v.Schema) -> v.Array:
    return v.tuple_(v.Literal(kind), body)


UPSTREAM_SCHEMA: Final = v.Union(
    _message("initConnection", _init_connection_body),
    _message("ping", v.Object({})),
    _message("deleteClients", _delete_clients_body),
    _message("changeDesiredQueries", v.Object({"desiredQueriesPatch": _up_queries_patch, "traceparent": _S.optional()})),
    _message("pull", v.Object({"clientGroupID": _S, "cookie": v.Union(_S, v.NULL), "requestID": _S})),
    _message("updateAuth", v.Object({"auth": _S})),
    _message("push", _push_body),
    _message("closeConnection", v.array(v.UNKNOWN)),
    _message("inspect", _inspect_body),
    _message("ackMutationResponses", v.Object({"id": _N, "clientID": _S})),
)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def parse_json(text: str) -> Any:
    """JSON.parse: NaN/Infinity literals are errors; nesting too deep for Python is an error too."""
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except RecursionError:
        raise ProtocolError("InvalidMessage", "RangeError: Maximum call stack size exceeded") from None
    except ValueError as e:
        raise ProtocolError("InvalidMessage", f"SyntaxError: {e}") from None


def parse_upstream(data: str | bytes) -> AnyUpstream:
    """One upstream frame → its typed message. Raises only ProtocolError (kind InvalidMessage)."""
    text = data.decode("utf-8", "replace") if isinstance(data, (bytes, bytearray)) else data
    return parse_upstream_value(parse_json(text))


def parse_upstream_value(value: Any) -> AnyUpstream:
    """An already-decoded upstream message (e.g. the `initConnection` piggy-backed in the header)."""
    try:
        problem = v.validate(value, UPSTREAM_SCHEMA)
    except RecursionError:
        raise ProtocolError("InvalidMessage", "RangeError: Maximum call stack size exceeded") from None
    if problem is not None:
        raise ProtocolError("InvalidMessage", f"TypeError: {problem}")
    kind, body = value
    match kind:
        case "initConnection":
            deleted = body.get("deleted", {})
            return InitConnection(
                desired_queries_patch=_patch(body["desiredQueriesPatch"]),
                client_schema=body.get("clientSchema"),
                deleted_client_ids=list(deleted.get("clientIDs", [])),
                deleted_client_group_ids=list(deleted.get("clientGroupIDs", [])),
                user_push_url=body.get("userPushURL"),
                user_push_headers=dict(body.get("userPushHeaders", {})),
                user_query_url=body.get("userQueryURL"),
                user_query_headers=dict(body.get("userQueryHeaders", {})),
                active_clients=body.get("activeClients"),
            )
        case "changeDesiredQueries":
            return ChangeDesiredQueries(_patch(body["desiredQueriesPatch"]))
        case "push":
            return Push(body)
        case "ackMutationResponses":
            return AckMutationResponses(client_id=body["clientID"], id=body["id"])
        case "updateAuth":
            return UpdateAuth(body["auth"])
        case "deleteClients":
            return DeleteClients(list(body.get("clientIDs", [])), list(body.get("clientGroupIDs", [])))
        case "inspect":
            return Inspect(body)
        case "ping":
            return Ping()
        case "pull":
            return Pull(body)
        case "closeConnection":
            return CloseConnection()
    raise AssertionError(f"validated message of unknown type {kind!r}")


def _patch(ops: list[dict[str, Any]]) -> list[QueryPatchOp]:
    patch: list[QueryPatchOp] = []
    for op in ops:
        if op["op"] == "put":
            patch.append(QueryPut(op["hash"], op.get("name"), op.get("args"), op.get("ast"), op.get("ttl")))
        elif op["op"] == "del":
            patch.append(QueryDel(op["hash"]))
        else:
            patch.append(QueryClear())
    return patch


# --- the connect request (§2.1, §2.2) -------------------------------------------------------


@dataclass(frozen=True)
class ConnectParams:
    client_id: str
    client_group_id: str
    user_id: str | None
    base_cookie: str | None  # "" on the URL means null: no snapshot
    ts: int
    lmid: int
    wsid: str
    profile_id: str | None
    debug_perf: bool
    protocol_version: int
    extra: dict[str, str] = field(default_factory=dict)  # e.g. reconnectParams after a backoff error


@dataclass(frozen=True)
class SecProtocol:
    """The decoded `Sec-WebSocket-Protocol` value."""

    init_connection: Any | None  # the raw piggy-backed message; validated like any upstream message
    auth_token: str | None


@dataclass(frozen=True)
class ConnectRequest:
    params: ConnectParams
    sec_protocol: SecProtocol


# url-pattern's default segment charset, as zero-cache's `(/:base)/:worker/v:version/:action`.
_SEGMENT = "[a-zA-Z0-9\\-_~ %]+"
_CONNECT_PATH = re.compile(f"(?:/({_SEGMENT}))?/({_SEGMENT})/v({_SEGMENT})/({_SEGMENT})")
_KNOWN_PARAMS = frozenset(
    {"clientID", "clientGroupID", "userID", "baseCookie", "ts", "lmid", "wsid", "profileID", "debugPerf"}
)
_PARSE_INT = re.compile(r"[ \t\n\r\f\v]*([+-]?)(?:(0[xX])([0-9a-fA-F]+)|([0-9]+))")


def parse_js_int(text: str) -> int | None:
    """JavaScript's `parseInt(text)` (None for NaN): a leading integer, decimal or 0x hex."""
    m = _PARSE_INT.match(text)
    if m is None:
        return None
    sign, _, hex_digits, dec_digits = m.groups()
    n = int(hex_digits, 16) if hex_digits else int(dec_digits)
    return -n if sign == "-" else n


def _version_number(text: str) -> int | None:
    """JavaScript's `Number(text)` of the version segment when it is an integer (None otherwise:
    zcache refuses fractional versions that zero-cache would range-check)."""
    s = text.strip()
    if re.fullmatch(r"[+-]?[0-9]+", s):
        return int(s)
    if re.fullmatch(r"0[xX][0-9a-fA-F]+|0[oO][0-7]+|0[bB][01]+", s):
        return int(s, 0)
    return 0 if s == "" else None


class _UrlParams:
    def __init__(self, target: str, query: str) -> None:
        self.url = f"http://unused{target}"
        self.values: dict[str, str] = {}
        for name, value in urllib.parse.parse_qsl(query, keep_blank_values=True, errors="replace"):
            self.values.setdefault(name, value)

    def get(self, name: str, required: bool) -> str | None:
        value = self.values.get(name)
        if not value:
            if required:
                raise ConnectRejected(f"invalid querystring - missing {name}")
            return None
        return value

    def get_int(self, name: str) -> int:
        value = self.get(name, True)
        assert value is not None
        n = parse_js_int(value)
        if n is None:
            raise ConnectRejected(f"invalid querystring parameter {name}, got: {value}, url: {self.url}")
        return n


def parse_connect_target(target: str) -> int:
    """`[/<base>]/sync/v<N>/<action>` → N. Raises ConnectRejected for any other path.

    Like zero-cache, the action segment is not checked (clients always send `connect`); the
    internal `replication` and `mutate` workers of multi-node zero-cache do not exist here."""
    path = target.split("?", 1)[0].split("#", 1)[0]
    m = _CONNECT_PATH.fullmatch(path)
    if m is None or urllib.parse.unquote(m.group(2)) != "sync":
        raise ConnectRejected(f"Invalid URL: {target}")
    version = _version_number(urllib.parse.unquote(m.group(3)))
    if version is None:
        raise ConnectRejected(f"Invalid version: {target}")
    return version


def parse_connect_request(target: str, sec_websocket_protocol: str | None) -> ConnectRequest:
    """The upgrade request's target and subprotocol header → ConnectRequest, or ConnectRejected."""
    version = parse_connect_target(target)
    query = target.split("?", 1)[1].split("#", 1)[0] if "?" in target else ""
    url = _UrlParams(target, query)
    client_id = url.get("clientID", True)
    client_group_id = url.get("clientGroupID", True)
    assert client_id is not None and client_group_id is not None
    profile_id = url.get("profileID", False)
    base_cookie = url.get("baseCookie", False)
    ts = url.get_int("ts")
    lmid = url.get_int("lmid")
    params = ConnectParams(
        client_id=client_id,
        client_group_id=client_group_id,
        user_id=url.get("userID", False),
        base_cookie=base_cookie,
        ts=ts,
        lmid=lmid,
        wsid=url.get("wsid", False) or "",
        profile_id=profile_id,
        debug_perf=url.get("debugPerf", False) == "true",
        protocol_version=version,
        extra={k: val for k, val in url.values.items() if k not in _KNOWN_PARAMS},
    )
    if sec_websocket_protocol is None:
        raise ConnectRejected("Unexpected undefined value")
    return ConnectRequest(params, decode_sec_protocol(sec_websocket_protocol))


def check_protocol_version(version: int) -> None:
    """Raises ProtocolError(VersionNotSupported) outside 30..51, worded as zero-cache words it."""
    if MIN_SUPPORTED_PROTOCOL_VERSION <= version <= PROTOCOL_VERSION:
        return
    side = "server" if version > PROTOCOL_VERSION else "client"
    raise ProtocolError(
        "VersionNotSupported",
        f"server is at sync protocol v{PROTOCOL_VERSION} and does not support v{version}. "
        f"The {side} must be updated to a newer release.",
    )


_PERCENT = re.compile(r"%(?![0-9a-fA-F]{2})")
_BASE64_WHITESPACE = re.compile(r"[\t\n\f\r ]")


def _forgiving_base64(text: str) -> bytes:
    """`atob`: whitespace ignored, padding optional, anything else outside the alphabet an error."""
    s = _BASE64_WHITESPACE.sub("", text)
    if len(s) % 4 == 0 and s.endswith("="):
        s = s[:-2] if s.endswith("==") else s[:-1]
    if len(s) % 4 == 1 or not re.fullmatch(r"[A-Za-z0-9+/]*", s):
        raise ConnectRejected("Invalid character")
    try:
        return base64.b64decode(s + "=" * (-len(s) % 4), validate=True)
    except binascii.Error:
        raise ConnectRejected("Invalid character") from None


def encode_sec_protocol(init_connection: Sequence[Any] | None, auth_token: str | None) -> str:
    """The client's encoding (for tests and tools)."""
    body: dict[str, Any] = {}
    if init_connection is not None:
        body["initConnectionMessage"] = init_connection
    if auth_token is not None:
        body["authToken"] = auth_token
    encoded = base64.b64encode(json.dumps(body, separators=(",", ":")).encode("utf-8")).decode("ascii")
    return urllib.parse.quote(encoded, safe="")


def decode_sec_protocol(header: str) -> SecProtocol:
    """Decodes the client's single subprotocol. Errors are ConnectRejected (1002), as in zero-cache."""
    if _PERCENT.search(header):
        raise ConnectRejected("URI malformed")
    try:
        unquoted = urllib.parse.unquote(header, errors="strict")
    except UnicodeDecodeError:
        raise ConnectRejected("URI malformed") from None
    raw = _forgiving_base64(unquoted)
    try:
        decoded = json.loads(raw.decode("utf-8", "replace"), parse_constant=_reject_constant)
    except (ValueError, RecursionError) as e:
        raise ConnectRejected(f"{e}") from None
    if decoded is None:
        raise ConnectRejected("Cannot destructure property 'initConnectionMessage' of 'JSON.parse(...)' as it is null.")
    if not isinstance(decoded, dict):
        return SecProtocol(None, None)
    token = decoded.get("authToken")
    if token is not None and not isinstance(token, str):
        raise ConnectRejected(f"authToken must be a string, got {v.js_type(token)}")
    return SecProtocol(decoded.get("initConnectionMessage"), token or None)


# --- downstream ---------------------------------------------------------------------------


def encode_downstream(message: Sequence[Any]) -> str:
    """One downstream message as a compact JSON text frame (valid UTF-8 even for lone surrogates)."""
    return v.escape_lone_surrogates(json.dumps(message, separators=(",", ":"), ensure_ascii=False, allow_nan=False))


def connected_message(wsid: str, timestamp_ms: int) -> list[Any]:
    return ["connected", {"wsid": wsid, "timestamp": timestamp_ms}]


def error_message(kind: str, message: str, *, origin: str = "zeroCache", **extra: Any) -> list[Any]:
    return ["error", {"kind": kind, "message": message, "origin": origin, **extra}]


PONG: Final = ("pong", {})


def lower_headers(headers: Sequence[tuple[bytes, bytes]]) -> Mapping[str, str]:
    """HTTP headers as Node presents them: lower-case names, repeated values joined with `, `."""
    out: dict[str, str] = {}
    for name, value in headers:
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        out[key] = f"{out[key]}, {text}" if key in out else text
    return out
