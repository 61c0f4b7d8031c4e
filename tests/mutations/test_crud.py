"""CRUD mutations applied upstream (zcache.mutations.crud) with the legacy write permissions
(zcache.auth.write_authorizer), against a real PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest
import trio
from psycopg.rows import TupleRow

from tests.mutations.conftest import (
    ALLOW,
    SHARD,
    allow_all,
    connect,
    last_mutation_ids,
    push_body,
    set_permissions,
    start_service,
    zero_config,
)
from zcache.app_server.http import HttpClient
from zcache.mutations.crud import CrudExecutor
from zcache.mutations.errors import PushError

Conn = psycopg.Connection[TupleRow]
CG = "group1"
U1 = {"sub": "u1", "role": "admin"}
U2 = {"sub": "u2", "role": "member"}


def crud(client: str, mid: int, *ops: dict[str, Any]) -> dict[str, Any]:
    return {"type": "crud", "id": mid, "clientID": client, "name": "_zero_crud", "args": [{"ops": list(ops)}], "timestamp": 1}


def op(kind: str, table: str, value: dict[str, Any], pk: tuple[str, ...] = ("id",)) -> dict[str, Any]:
    return {"op": kind, "tableName": table, "primaryKey": list(pk), "value": value}


def files(conn: Conn) -> dict[str, tuple[Any, ...]]:
    return {r[0]: r[1:] for r in conn.execute("SELECT id, name, owner_id FROM file ORDER BY id")}


@pytest.fixture
async def executor(upstream: Conn) -> AsyncIterator[CrudExecutor]:
    dsn = upstream.info.dsn
    ex = CrudExecutor(dsn, SHARD, max_conns=4, custom_mutators=False)
    try:
        yield ex
    finally:
        ex.close()


async def test_ops_apply_in_one_transaction_with_the_last_mutation_id(executor: CrudExecutor, upstream: Conn) -> None:
    set_permissions(upstream, allow_all("file", "user"))
    result = await executor.apply(
        CG,
        crud(
            "c1",
            1,
            op("insert", "file", {"id": "f9", "name": "new", "owner_id": "u1"}),
            op("update", "file", {"id": "f9", "name": "renamed"}),
            op("upsert", "file", {"id": "f1", "name": "alpha2", "owner_id": "u1"}),
            op("upsert", "file", {"id": "f8", "name": "upserted", "owner_id": "u2"}),
            op("delete", "file", {"id": "f2"}),
        ),
        U1,
    )
    assert result.status == "applied"
    assert files(upstream) == {
        "f1": ("alpha2", "u1"),
        "f3": ("gamma", "u2"),
        "f8": ("upserted", "u2"),
        "f9": ("renamed", "u1"),
    }
    assert last_mutation_ids(upstream) == {"c1": 1}
    group = upstream.execute('SELECT DISTINCT "clientGroupID" FROM zero_0.clients').fetchall()
    assert group == [(CG,)]


async def test_replayed_mutation_is_ignored_and_a_gap_is_refused(executor: CrudExecutor, upstream: Conn) -> None:
    set_permissions(upstream, allow_all("file"))
    rename = crud("c1", 1, op("update", "file", {"id": "f1", "name": "once"}))
    assert (await executor.apply(CG, rename, U1)).status == "applied"
    upstream.execute("UPDATE file SET name = 'changed by someone else' WHERE id = 'f1'")
    assert (await executor.apply(CG, rename, U1)).status == "already_processed"
    assert files(upstream)["f1"][0] == "changed by someone else"
    with pytest.raises(PushError) as failure:
        await executor.apply(CG, crud("c1", 3, op("delete", "file", {"id": "f1"})), U1)
    assert failure.value.body == {
        "kind": "InvalidPush",
        "message": "Push contains unexpected mutation id 3 for client c1. Expected mutation id 2.",
        "origin": "zeroCache",
    }
    assert "f1" in files(upstream)
    assert last_mutation_ids(upstream) == {"c1": 1}


async def test_no_permissions_deny_every_write_but_confirm_the_mutation(executor: CrudExecutor, upstream: Conn) -> None:
    result = await executor.apply(CG, crud("c1", 1, op("update", "file", {"id": "f1", "name": "nope"})), U1)
    assert result.status == "denied"
    assert files(upstream)["f1"][0] == "alpha"
    assert last_mutation_ids(upstream) == {"c1": 1}


def owner_is_sub(column: str = "owner_id") -> list[Any]:
    return [
        [
            "allow",
            {
                "type": "simple",
                "op": "=",
                "left": {"type": "column", "name": column},
                "right": {"type": "static", "anchor": "authData", "field": "sub"},
            },
        ]
    ]


async def test_insert_rule_reads_jwt_claims(executor: CrudExecutor, upstream: Conn) -> None:
    set_permissions(upstream, {"tables": {"file": {"row": {"insert": owner_is_sub()}}}})
    mine = op("insert", "file", {"id": "f10", "name": "mine", "owner_id": "u2"})
    theirs = op("insert", "file", {"id": "f11", "name": "theirs", "owner_id": "u1"})
    assert (await executor.apply(CG, crud("c2", 1, mine), U2)).status == "applied"
    assert (await executor.apply(CG, crud("c2", 2, theirs), U2)).status == "denied"
    assert (await executor.apply(CG, crud("c3", 1, theirs), None)).status == "denied"  # logged out: sub is null
    assert "f10" in files(upstream) and "f11" not in files(upstream)
    assert last_mutation_ids(upstream) == {"c2": 2, "c3": 1}


async def test_update_checks_pre_and_post_mutation_rules(executor: CrudExecutor, upstream: Conn) -> None:
    not_forbidden = [
        [
            "allow",
            {"type": "simple", "op": "!=", "left": {"type": "column", "name": "name"}, "right": {"type": "literal", "value": "forbidden"}},
        ]
    ]
    set_permissions(upstream, {"tables": {"file": {"row": {"update": {"preMutation": owner_is_sub(), "postMutation": not_forbidden}}}}})
    assert (await executor.apply(CG, crud("c1", 1, op("update", "file", {"id": "f3", "name": "x"})), U1)).status == "denied"
    assert (await executor.apply(CG, crud("c1", 2, op("update", "file", {"id": "f1", "name": "forbidden"})), U1)).status == "denied"
    assert (await executor.apply(CG, crud("c1", 3, op("update", "file", {"id": "f1", "name": "fine"})), U1)).status == "applied"
    # Ownership is checked before the update: giving the file away is allowed once.
    give = crud("c1", 4, op("update", "file", {"id": "f1", "owner_id": "u2"}))
    assert (await executor.apply(CG, give, U1)).status == "applied"
    assert files(upstream)["f1"] == ("fine", "u2")
    assert files(upstream)["f3"] == ("gamma", "u2")


async def test_delete_rule_with_a_correlated_subquery_and_a_claim_literal(executor: CrudExecutor, upstream: Conn) -> None:
    owner_is_alice = {
        "type": "correlatedSubquery",
        "op": "EXISTS",
        "related": {
            "correlation": {"parentField": ["owner_id"], "childField": ["id"]},
            "subquery": {
                "table": "user",
                "alias": "zsubq_owner",
                "where": {"type": "simple", "op": "LIKE", "left": {"type": "column", "name": "name"}, "right": {"type": "literal", "value": "Ali%"}},
            },
        },
    }
    admin = {
        "type": "simple",
        "op": "=",
        "left": {"type": "static", "anchor": "authData", "field": "role"},
        "right": {"type": "literal", "value": "admin"},
    }
    set_permissions(upstream, {"tables": {"file": {"row": {"delete": [["allow", owner_is_alice], ["allow", admin]]}}}})
    assert (await executor.apply(CG, crud("c2", 1, op("delete", "file", {"id": "f3"})), U2)).status == "denied"
    assert (await executor.apply(CG, crud("c2", 2, op("delete", "file", {"id": "f1"})), U2)).status == "applied"
    assert (await executor.apply(CG, crud("c1", 1, op("delete", "file", {"id": "f3"})), U1)).status == "applied"
    assert set(files(upstream)) == {"f2"}


async def test_cell_policies_apply_to_the_columns_written(executor: CrudExecutor, upstream: Conn) -> None:
    never: list[Any] = [["allow", {"type": "or", "conditions": []}]]
    set_permissions(
        upstream,
        {"tables": {"file": {"row": {"update": {"preMutation": ALLOW, "postMutation": ALLOW}}, "cell": {"owner_id": {"update": {"preMutation": never}}}}}},
    )
    assert (await executor.apply(CG, crud("c1", 1, op("update", "file", {"id": "f1", "name": "ok"})), U1)).status == "applied"
    assert (await executor.apply(CG, crud("c1", 2, op("update", "file", {"id": "f1", "owner_id": "u2"})), U1)).status == "denied"
    assert files(upstream)["f1"] == ("ok", "u1")


@pytest.mark.parametrize(
    ("bad_op", "message"),
    [
        (op("insert", "file", {"id": "f1", "name": "dup", "owner_id": "u1"}), "Error: Row already exists in file"),
        (op("update", "file", {"id": "nope", "name": "x"}), "Error: Pre-mutation row not found in file"),
        (op("delete", "file", {"id": "nope"}), "Error: Pre-mutation row not found in file"),
        (op("insert", "nope", {"id": "x"}), "Error: Table 'nope' is not a valid table."),
        (op("update", "file", {"id": "f1", "colour": "red"}), "Error: column 'colour' does not exist in table file"),
        (op("insert", "file", {"id": "f9", "name": "orphan", "owner_id": "nobody"}), "ForeignKeyViolation: insert or update on table"),
        (op("update", "file", {"id": "f1", "size": "big"}), "InvalidTextRepresentation"),
    ],
)
async def test_failing_ops_confirm_the_mutation_in_error_mode(executor: CrudExecutor, upstream: Conn, bad_op: dict[str, Any], message: str) -> None:
    set_permissions(upstream, allow_all("file"))
    before = files(upstream)
    good = op("update", "file", {"id": "f2", "name": "not kept"})
    result = await executor.apply(CG, crud("c1", 1, good, bad_op), U1)
    assert result.status == "failed"
    assert result.message is not None and result.message.startswith(message)
    assert files(upstream) == before  # the whole mutation rolled back, the good op too
    assert last_mutation_ids(upstream) == {"c1": 1}


async def test_malformed_ops_fail_the_mutation_but_confirm_it(executor: CrudExecutor, upstream: Conn) -> None:
    mutation = {"type": "crud", "id": 1, "clientID": "c1", "name": "_zero_crud", "args": [{"ops": [{"op": "merge"}]}], "timestamp": 1}
    result = await executor.apply(CG, mutation, U1)
    assert result.status == "failed"
    assert result.message == "Error: op 0 must be an object with op insert, upsert, update or delete"
    assert last_mutation_ids(upstream) == {"c1": 1}


async def test_client_values_are_converted_to_column_types(executor: CrudExecutor, upstream: Conn) -> None:
    set_permissions(upstream, allow_all("file"))
    value = {
        "id": "f20",
        "name": "typed",
        "owner_id": "u1",
        "shared": True,
        "meta": {"tags": ["a", "b"], "n": 1},
        "created_at": 1700000000123,
        "size": 2**40,
    }
    assert (await executor.apply(CG, crud("c1", 1, op("insert", "file", value)), U1)).status == "applied"
    row = upstream.execute("SELECT shared, meta, created_at, size FROM file WHERE id = 'f20'").fetchone()
    assert row == (True, {"tags": ["a", "b"], "n": 1}, datetime(2023, 11, 14, 22, 13, 20, 123000, tzinfo=UTC), 2**40)
    string_json = crud("c1", 2, op("update", "file", {"id": "f20", "meta": "just a string"}))
    assert (await executor.apply(CG, string_json, U1)).status == "applied"
    assert upstream.execute("SELECT meta FROM file WHERE id = 'f20'").fetchone() == ("just a string",)


async def test_concurrent_writers_serialize_and_every_mutation_applies_once(executor: CrudExecutor, upstream: Conn) -> None:
    """Two clients increment the same row concurrently: SERIALIZABLE conflicts are retried,
    each client's mutations apply exactly once and in order, the last commit wins."""
    set_permissions(upstream, allow_all("file"))
    per_client = 15

    async def writer(client: str) -> None:
        for mid in range(1, per_client + 1):
            size_sql = crud(client, mid, op("update", "file", {"id": "f1", "name": f"{client}-{mid}"}))
            result = await executor.apply(CG, size_sql, U1)
            assert result.status == "applied"

    async with trio.open_nursery() as nursery:
        nursery.start_soon(writer, "ca")
        nursery.start_soon(writer, "cb")
    assert last_mutation_ids(upstream) == {"ca": per_client, "cb": per_client}
    assert files(upstream)["f1"][0] in (f"ca-{per_client}", f"cb-{per_client}")


# --- through MutationService: what the connection sees -----------------------------------


async def test_crud_push_through_the_service(upstream: Conn, http: HttpClient, nursery: trio.Nursery) -> None:
    set_permissions(upstream, allow_all("file"))
    service = await start_service(nursery, zero_config(upstream.info.dsn, []), http)
    client = connect("c1", token=None, user=None)  # logged out: CRUD is allowed
    rename = crud("c1", 1, op("update", "file", {"id": "f3", "name": "gamma-crud"}))
    await service.push(client.ctx, push_body("group1", rename))
    assert files(upstream)["f3"] == ("gamma-crud", "u2")
    await service.push(client.ctx, push_body("group1", rename))  # a replay changes nothing
    bad = crud("c1", 2, op("insert", "file", {"id": "f1", "name": "dup", "owner_id": "u1"}))
    await service.push(client.ctx, push_body("group1", bad))
    assert client.errors == [
        {"kind": "MutationFailed", "message": client.errors[0]["message"], "origin": "zeroCache"}
    ]
    assert client.errors[0]["message"].startswith("Error: Row already exists in file")
    with pytest.raises(PushError) as gap:
        await service.push(client.ctx, push_body("group1", crud("c1", 5, op("delete", "file", {"id": "f1"}))))
    assert gap.value.body["kind"] == "InvalidPush"
    assert last_mutation_ids(upstream) == {"c1": 2}
    stats = service.statistics()
    assert (stats.crud_applied, stats.crud_failed, stats.already_processed, stats.out_of_order) == (1, 1, 1, 1)
    assert stats.crud_latency.count == 4
    assert client.failures == []


async def test_crud_refused_for_opaque_tokens_and_when_disabled(upstream: Conn, http: HttpClient, nursery: trio.Nursery) -> None:
    set_permissions(upstream, allow_all("file"))
    rename = push_body("group1", crud("c1", 1, op("update", "file", {"id": "f3", "name": "x"})))
    service = await start_service(nursery, zero_config(upstream.info.dsn, []), http)
    with pytest.raises(PushError) as opaque:
        await service.push(connect("c1", token="user:u1", claims=None).ctx, rename)
    assert opaque.value.body == {"kind": "Internal", "message": "Only JWT auth is supported for CRUD mutations", "origin": "zeroCache"}
    await service.push(connect("c1", token="a.jwt.token", claims=U1).ctx, rename)  # a JWT connection may
    assert files(upstream)["f3"][0] == "x"

    disabled = await start_service(nursery, zero_config(upstream.info.dsn, [], enable_crud_mutations="false"), http)
    with pytest.raises(PushError) as off:
        await disabled.push(connect("c2", token=None, user=None).ctx, rename)
    assert off.value.body == {"kind": "InvalidPush", "message": "Support for legacy CRUD mutations is disabled", "origin": "zeroCache"}
    mixed = push_body("group1", crud("c1", 2, op("delete", "file", {"id": "f3"})), {"type": "custom", "id": 3, "clientID": "c1", "name": "x", "args": [], "timestamp": 1})
    with pytest.raises(PushError):
        await service.push(connect("c1", token=None, user=None).ctx, mixed)


async def test_per_user_rate_limit(upstream: Conn, http: HttpClient, nursery: trio.Nursery) -> None:
    set_permissions(upstream, allow_all("file"))
    config = zero_config(upstream.info.dsn, [], per_user_mutation_limit_max="2", per_user_mutation_limit_window_ms="60000")
    service = await start_service(nursery, config, http)
    client = connect("c1", token="jwt", claims=U1)
    for mid in (1, 2, 3):
        await service.push(client.ctx, push_body("group1", crud("c1", mid, op("update", "file", {"id": "f1", "name": f"v{mid}"}))))
    assert client.errors == [{"kind": "MutationRateLimited", "message": "Rate limit exceeded", "origin": "zeroCache"}]
    assert last_mutation_ids(upstream) == {"c1": 2}
    assert files(upstream)["f1"][0] == "v2"
    assert service.statistics().crud_rate_limited == 1
