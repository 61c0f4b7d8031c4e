"""A deterministic corpus of upstream frames, valid and subtly broken, for differential tests of
`zcache.server.protocol.parse_upstream` against zero-cache's own validation (`upstream_oracle.mjs`).

Every valid message kind of §4 is a seed (shapes from the golden transcripts); each corpus frame
is a seed with a few random mutations at random places: a property removed, added (known names
included, and integer-like ones that JavaScript orders first), a value replaced by another type
or another literal of the protocol's vocabulary, an array grown or shrunk, the message type
swapped. Near-valid frames are what exercise the order in which issues are reported.
"""

from __future__ import annotations

import copy
import json
import random
from collections.abc import Iterator
from typing import Any

_AST: dict[str, Any] = {
    "table": "file",
    "where": {
        "type": "or",
        "conditions": [
            {"type": "simple", "left": {"type": "column", "name": "name"}, "right": {"type": "literal", "value": "b%"}, "op": "LIKE"},
            {
                "type": "correlatedSubquery",
                "related": {
                    "system": "client",
                    "correlation": {"parentField": ["owner_id"], "childField": ["id"]},
                    "subquery": {
                        "table": "user",
                        "alias": "zsubq_owner",
                        "where": {"type": "simple", "left": {"type": "column", "name": "name"}, "right": {"type": "literal", "value": "Bob"}, "op": "="},
                    },
                },
                "op": "EXISTS",
            },
        ],
    },
    "related": [{"correlation": {"parentField": ["owner_id"], "childField": ["id"]}, "subquery": {"table": "user", "alias": "owner"}, "system": "client"}],
    "start": {"row": {"id": "f1"}, "exclusive": True},
    "limit": 10,
    "orderBy": [["id", "desc"]],
}

_CLIENT_SCHEMA = {
    "tables": {
        "file": {"columns": {"id": {"type": "string"}, "name": {"type": "string"}, "owner_id": {"type": "string"}}, "primaryKey": ["id"]},
        "user": {"columns": {"id": {"type": "string"}, "name": {"type": "string"}}, "primaryKey": ["id"]},
    }
}

SEEDS: list[list[Any]] = [
    [
        "initConnection",
        {
            "desiredQueriesPatch": [
                {"op": "put", "hash": "paocmaxcpvto", "name": "filesByOwner", "args": [{"ownerId": "u1"}], "ttl": 300000},
                {"op": "put", "hash": "rawq1", "ast": _AST, "ttl": 0},
                {"op": "del", "hash": "x"},
                {"op": "clear"},
            ],
            "clientSchema": _CLIENT_SCHEMA,
            "deleted": {"clientIDs": ["c0"], "clientGroupIDs": []},
            "userPushURL": "http://app/mutate",
            "userPushHeaders": {"x-a": "1"},
            "userQueryURL": "http://app/query",
            "userQueryHeaders": {},
            "activeClients": ["i47nej9l2cafl522ko"],
            "traceparent": "00-abc-def-01",
        },
    ],
    ["changeDesiredQueries", {"desiredQueriesPatch": [{"op": "del", "hash": "paocmaxcpvto"}, {"op": "put", "hash": "h", "ast": _AST}]}],
    [
        "push",
        {
            "timestamp": 1795610186712,
            "clientGroupID": "3jha4hfqr3e04nuku5",
            "mutations": [
                {"type": "custom", "timestamp": 1795610186710, "id": 1, "clientID": "rth7", "name": "file.rename", "args": [{"id": "f2"}]},
                {
                    "type": "crud",
                    "timestamp": 1,
                    "id": 2,
                    "clientID": "et08",
                    "name": "_zero_crud",
                    "args": [
                        {
                            "ops": [
                                {"op": "update", "tableName": "file", "primaryKey": ["id"], "value": {"id": "f3", "name": "gamma"}},
                                {"op": "delete", "tableName": "file", "primaryKey": ["id"], "value": {"id": "f3"}},
                            ]
                        }
                    ],
                },
            ],
            "pushVersion": 1,
            "requestID": "rth7-978d59ee-2",
        },
    ],
    ["ackMutationResponses", {"clientID": "rth7g1ec35sob356j4", "id": 3}],
    ["updateAuth", {"auth": "user:u1:rotated"}],
    ["deleteClients", {"clientIDs": ["some-old-client"]}],
    ["inspect", {"id": "i1", "op": "version"}],
    ["inspect", {"id": "i2", "op": "authenticate", "value": ""}],
    ["inspect", {"id": "i4", "op": "queries", "clientID": "c"}],
    ["inspect", {"id": "i5", "op": "analyze-query", "ast": _AST, "options": {"vendedRows": True}}],
    ["ping", {}],
    ["pull", {"clientGroupID": "someOtherGroup", "cookie": None, "requestID": "pull-1"}],
    ["closeConnection", []],
]

_VOCABULARY: list[Any] = [
    "initConnection", "changeDesiredQueries", "push", "ping", "pull", "updateAuth", "deleteClients",
    "inspect", "ackMutationResponses", "closeConnection", "put", "del", "clear", "simple", "and", "or",
    "correlatedSubquery", "column", "literal", "static", "authData", "=", "LIKE", "IN", "EXISTS",
    "asc", "desc", "custom", "crud", "_zero_crud", "insert", "update", "delete", "upsert", "version",
    "queries", "string", "json", "client", "permissions",
]
_KEYS = [
    "op", "hash", "ttl", "ast", "name", "args", "type", "table", "where", "conditions", "left", "right",
    "related", "subquery", "correlation", "parentField", "childField", "id", "clientID", "auth", "value",
    "desiredQueriesPatch", "clientSchema", "mutations", "tables", "columns", "primaryKey", "0", "7", "zz",
]


def _random_value(rng: random.Random, depth: int = 0) -> Any:
    roll = rng.randrange(10)
    if roll == 0:
        return None
    if roll == 1:
        return rng.choice([True, False])
    if roll == 2:
        return rng.choice([0, 1, -3, 2.5, 1e-7, 1e21, 12345678901234567890])
    if roll in (3, 4):
        return rng.choice(_VOCABULARY)
    if roll == 5:
        return rng.choice(["", "x", "é", "a b"])
    if roll == 6 and depth < 2:
        return [_random_value(rng, depth + 1) for _ in range(rng.randrange(3))]
    if roll == 7 and depth < 2:
        return {rng.choice(_KEYS): _random_value(rng, depth + 1) for _ in range(rng.randrange(3))}
    return rng.choice([[], {}])


def _containers(value: Any) -> Iterator[Any]:
    if isinstance(value, (dict, list)):
        yield value
        for child in value.values() if isinstance(value, dict) else value:
            yield from _containers(child)


def _mutate(rng: random.Random, message: Any) -> Any:
    containers = list(_containers(message))
    if not containers:
        return _random_value(rng)
    target = rng.choice(containers)
    roll = rng.randrange(6)
    if isinstance(target, dict):
        keys = list(target)
        if roll == 0 and keys:
            del target[rng.choice(keys)]
        elif roll == 1 or not keys:
            target[rng.choice(_KEYS)] = _random_value(rng)
        else:
            target[rng.choice(keys)] = _random_value(rng)
    else:
        if roll == 0 and target:
            target.pop(rng.randrange(len(target)))
        elif roll == 1:
            target.append(_random_value(rng))
        elif target:
            target[rng.randrange(len(target))] = _random_value(rng)
    return message


def corpus(seed: int, size: int) -> list[str]:
    """`size` frames (JSON texts): every seed as is, then mutants."""
    rng = random.Random(seed)
    frames = [json.dumps(s) for s in SEEDS]
    while len(frames) < size:
        message = copy.deepcopy(rng.choice(SEEDS))
        for _ in range(rng.choice([1, 1, 2, 3])):
            message = _mutate(rng, message)
        frames.append(json.dumps(message))
    return frames
