"""The sync edge's per-message CPU cost: strict upstream parsing and downstream encoding.

Every upstream frame goes through `protocol.parse_upstream` (JSON, then zero-cache's strict
schema with its first-issue error semantics); every downstream message the edge builds goes
through `protocol.encode_downstream`. The baselines, measured in the same run, are the bare
`json.loads` / `json.dumps` of the same messages, so the ratio is the price of strictness.

Frames are the real client's: the `initConnection` of golden transcript 01 (named query and client
schema, ~1 KB), an `initConnection` with a legacy AST of ~10 conditions, a `changeDesiredQueries`,
and a custom `push`.

    make bench PYTEST_ARGS="-k edge_protocol"
    .venv/bin/python -m pytest bench/micro/test_edge_protocol.py --benchmark-enable
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from zcache.server import protocol

_SCHEMA = {
    "tables": {
        "file": {"columns": {"id": {"type": "string"}, "name": {"type": "string"}, "owner_id": {"type": "string"}}, "primaryKey": ["id"]},
        "user": {"columns": {"id": {"type": "string"}, "name": {"type": "string"}}, "primaryKey": ["id"]},
    }
}
_CONDITION = {"type": "simple", "left": {"type": "column", "name": "owner_id"}, "right": {"type": "literal", "value": "u2"}, "op": "="}
_AST = {
    "table": "file",
    "where": {"type": "and", "conditions": [_CONDITION] * 5 + [{"type": "or", "conditions": [_CONDITION] * 5}]},
    "related": [{"correlation": {"parentField": ["owner_id"], "childField": ["id"]}, "subquery": {"table": "user", "alias": "owner"}, "system": "client"}],
    "orderBy": [["id", "asc"]],
}
FRAMES: dict[str, list[Any]] = {
    "init-named": [
        "initConnection",
        {
            "desiredQueriesPatch": [{"op": "put", "hash": "paocmaxcpvto", "name": "filesByOwner", "args": [{"ownerId": "u1"}], "ttl": 300000}],
            "clientSchema": _SCHEMA,
            "activeClients": ["i47nej9l2cafl522ko"],
        },
    ],
    "init-ast": ["initConnection", {"desiredQueriesPatch": [{"op": "put", "hash": "rawq1", "ast": _AST, "ttl": 0}], "clientSchema": _SCHEMA}],
    "changeDesiredQueries": ["changeDesiredQueries", {"desiredQueriesPatch": [{"op": "put", "hash": "h1", "name": "q", "args": [{"id": "f1"}], "ttl": 300000}]}],
    "push": [
        "push",
        {
            "timestamp": 1795610186712,
            "clientGroupID": "3jha4hfqr3e04nuku5",
            "mutations": [{"type": "custom", "timestamp": 1795610186710, "id": 1, "clientID": "rth7g1ec35sob356j4", "name": "file.rename", "args": [{"id": "f2", "name": "beta-renamed"}]}],
            "pushVersion": 1,
            "requestID": "rth7g1ec35sob356j4-978d59ee-2",
        },
    ],
}
DOWNSTREAM = [protocol.error_message("InvalidMessage", "TypeError: Expected array. Got object"), protocol.connected_message("wsid", 1795610715264), ["pong", {}]]


@pytest.mark.parametrize("name", list(FRAMES))
@pytest.mark.parametrize("kind", ["parse_upstream", "baseline_json_loads"])
def test_parse(benchmark: BenchmarkFixture, name: str, kind: str) -> None:
    frame = json.dumps(FRAMES[name], separators=(",", ":"))
    fn = protocol.parse_upstream if kind == "parse_upstream" else json.loads
    benchmark.group = f"upstream {name} ({len(frame)} B)"
    result = benchmark(fn, frame)
    assert result is not None


@pytest.mark.parametrize("kind", ["encode_downstream", "baseline_json_dumps"])
def test_encode(benchmark: BenchmarkFixture, kind: str) -> None:
    benchmark.group = "downstream edge messages"
    if kind == "encode_downstream":
        benchmark(lambda: [protocol.encode_downstream(m) for m in DOWNSTREAM])
    else:
        benchmark(lambda: [json.dumps(m, separators=(",", ":"), ensure_ascii=False) for m in DOWNSTREAM])
