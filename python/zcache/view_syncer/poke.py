"""Pokes: what moves a client from one cookie to the next (`pokeStart`, `pokePart`s, `pokeEnd`).

A poke is built once per client group and its messages encoded once; every connection of the
group is sent the same text. Parts carry at most `MAX_PART_ENTRIES` patch entries (desired and
got query ops, lmid changes, row ops and mutation ops all count), as zero-cache flushes them.
Row ops arrive already encoded (`_native.read_patch`), so a part of a large poke is assembled by
joining strings. Rows of the shard's `clients` table become `lastMutationIDChanges`, rows of its
`mutations` table `mutationsPatch` ops; every other row is a `rowsPatch` op (`put` with the
full row, `del` with its primary key).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from zcache.server.validation import escape_lone_surrogates

MAX_PART_ENTRIES = 100


def encode(message: Any) -> str:
    """A downstream message as JSON text (lone surrogates escaped, as JSON.stringify does)."""
    return escape_lone_surrogates(json.dumps(message, separators=(",", ":"), ensure_ascii=False))


def del_op(table: str, key_text: str) -> str:
    """The encoded `del` row op of a row known by its canonical key."""
    return f'{{"op":"del","tableName":{encode(table)},"id":{key_text}}}'


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
    rows: list[str] = field(default_factory=list)  # encoded rowsPatch ops
    mutations: list[str] = field(default_factory=list)  # encoded mutationsPatch ops

    def empty(self) -> bool:
        return not (self.desired or self.got or self.lmids or self.rows or self.mutations)

    def desire(self, client_id: str, op: str, query_hash: str) -> None:
        self.desired.setdefault(client_id, []).append({"op": op, "hash": query_hash})

    def row(self, tables: ShardTables, table: str, op_json: str, deleted: bool) -> None:
        """A row op (as `read_patch` encodes it), routed by table."""
        if table == tables.clients:
            if not deleted:
                value = json.loads(op_json)["value"]
                self.lmids[str(value["clientID"])] = int(value["lastMutationID"])
        elif table == tables.mutations:
            op = json.loads(op_json)
            if deleted:
                key = op["id"]
                self.mutations.append(encode({"op": "del", "id": {"clientID": key["clientID"], "id": key["mutationID"]}}))
            else:
                value = op["value"]
                mutation_id = {"clientID": value["clientID"], "id": value["mutationID"]}
                self.mutations.append(encode({"op": "put", "mutation": {"id": mutation_id, "result": value["result"]}}))
        else:
            self.rows.append(op_json)


@dataclass
class _Part:
    fields: dict[str, Any] = field(default_factory=dict)
    rows: list[str] = field(default_factory=list)
    mutations: list[str] = field(default_factory=list)
    count: int = 0

    def encode(self, poke_id: str) -> str:
        members = [f'"pokeID":{encode(poke_id)}'] + [f'"{k}":{encode(v)}' for k, v in self.fields.items()]
        if self.rows:
            members.append('"rowsPatch":[' + ",".join(self.rows) + "]")
        if self.mutations:
            members.append('"mutationsPatch":[' + ",".join(self.mutations) + "]")
        return '["pokePart",{' + ",".join(members) + "}]"


def _parts(content: PokeContent) -> Iterator[_Part]:
    """The parts, each with at most MAX_PART_ENTRIES entries."""
    part = _Part()

    def room() -> Iterator[_Part]:
        nonlocal part
        if part.count >= MAX_PART_ENTRIES:
            yield part
            part = _Part()

    for client_id, ops in content.desired.items():
        for op in ops:
            yield from room()
            part.fields.setdefault("desiredQueriesPatches", {}).setdefault(client_id, []).append(op)
            part.count += 1
    for op in content.got:
        yield from room()
        part.fields.setdefault("gotQueriesPatch", []).append(op)
        part.count += 1
    for client_id, lmid in content.lmids.items():
        yield from room()
        part.fields.setdefault("lastMutationIDChanges", {})[client_id] = lmid
        part.count += 1
    rows = content.rows
    i = 0
    while i < len(rows):
        yield from room()
        take = MAX_PART_ENTRIES - part.count
        part.rows.extend(rows[i : i + take])
        part.count += min(take, len(rows) - i)
        i += take
    for op_text in content.mutations:
        yield from room()
        part.mutations.append(op_text)
        part.count += 1
    if part.count:
        yield part


def poke_messages(base_cookie: str | None, cookie: str, content: PokeContent) -> list[str]:
    """The encoded messages of one poke; the poke's id is its cookie, as zero-cache's is."""
    messages = [encode(["pokeStart", {"pokeID": cookie, "baseCookie": base_cookie}])]
    messages.extend(part.encode(cookie) for part in _parts(content))
    messages.append(encode(["pokeEnd", {"pokeID": cookie, "cookie": cookie}]))
    return messages
