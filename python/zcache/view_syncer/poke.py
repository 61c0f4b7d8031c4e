"""Pokes: what moves a client from one cookie to the next (`pokeStart`, `pokePart`s, `pokeEnd`).

A poke is built once per client group and its messages encoded once; every connection of the
group is sent the same bytes. Parts carry at most `MAX_PART_ENTRIES` patch entries (desired and
got query ops, lmid changes, row ops and mutation ops all count), as zero-cache flushes them.
Rows of the shard's `clients` table become `lastMutationIDChanges`, rows of its `mutations`
table `mutationsPatch` ops; every other row is a `rowsPatch` op (`put` with the full row, `del`
with its primary key).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from zcache.server.validation import escape_lone_surrogates

MAX_PART_ENTRIES = 100


@dataclass(frozen=True)
class ShardTables:
    """The replica names of the shard's tables that pokes report specially."""

    clients: str  # "<app>_<shard>.clients"
    mutations: str  # "<app>_<shard>.mutations"

    @classmethod
    def of(cls, app_id: str, shard_num: int) -> ShardTables:
        return cls(f"{app_id}_{shard_num}.clients", f"{app_id}_{shard_num}.mutations")


@dataclass
class PokeContent:
    desired: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    got: list[dict[str, Any]] = field(default_factory=list)
    lmids: dict[str, int] = field(default_factory=dict)
    rows: list[dict[str, Any]] = field(default_factory=list)
    mutations: list[dict[str, Any]] = field(default_factory=list)

    def empty(self) -> bool:
        return not (self.desired or self.got or self.lmids or self.rows or self.mutations)

    def desire(self, client_id: str, op: str, query_hash: str) -> None:
        self.desired.setdefault(client_id, []).append({"op": op, "hash": query_hash})

    def row(self, tables: ShardTables, op: str, table: str, key: dict[str, Any], value: dict[str, Any] | None) -> None:
        """A row put (`value` given) or deleted, routed by table."""
        if table == tables.clients:
            if value is not None:
                self.lmids[str(value["clientID"])] = int(value["lastMutationID"])
        elif table == tables.mutations:
            mutation_id = {"clientID": key["clientID"], "id": key["mutationID"]}
            if value is not None:
                self.mutations.append({"op": "put", "mutation": {"id": mutation_id, "result": value["result"]}})
            else:
                self.mutations.append({"op": "del", "id": mutation_id})
        elif op == "put":
            self.rows.append({"op": "put", "tableName": table, "value": value})
        else:
            self.rows.append({"op": "del", "tableName": table, "id": key})


def encode(message: list[Any]) -> str:
    """A downstream message as JSON text (lone surrogates escaped, as JSON.stringify does)."""
    return escape_lone_surrogates(json.dumps(message, separators=(",", ":"), ensure_ascii=False))


def _parts(content: PokeContent) -> Iterator[dict[str, Any]]:
    """The part bodies (without pokeID), each with at most MAX_PART_ENTRIES entries."""
    part: dict[str, Any] = {}
    count = 0

    def room() -> Iterator[dict[str, Any]]:
        nonlocal part, count
        if count >= MAX_PART_ENTRIES:
            yield part
            part, count = {}, 0

    for client_id, ops in content.desired.items():
        for op in ops:
            yield from room()
            part.setdefault("desiredQueriesPatches", {}).setdefault(client_id, []).append(op)
            count += 1
    for op in content.got:
        yield from room()
        part.setdefault("gotQueriesPatch", []).append(op)
        count += 1
    for client_id, lmid in content.lmids.items():
        yield from room()
        part.setdefault("lastMutationIDChanges", {})[client_id] = lmid
        count += 1
    for op in content.rows:
        yield from room()
        part.setdefault("rowsPatch", []).append(op)
        count += 1
    for op in content.mutations:
        yield from room()
        part.setdefault("mutationsPatch", []).append(op)
        count += 1
    if count:
        yield part


def poke_messages(base_cookie: str | None, cookie: str, content: PokeContent) -> list[str]:
    """The encoded messages of one poke; the poke's id is its cookie, as zero-cache's is."""
    messages = [encode(["pokeStart", {"pokeID": cookie, "baseCookie": base_cookie}])]
    for part in _parts(content):
        messages.append(encode(["pokePart", {"pokeID": cookie, **part}]))
    messages.append(encode(["pokeEnd", {"pokeID": cookie, "cookie": cookie}]))
    return messages
