"""Fixtures of the write-path tests: an upstream database with a small app schema and the
shard objects zcache creates (`zero_0.clients`, `zero_0.mutations`, `zero.permissions`,
publications), as the replicator would leave it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg.rows import TupleRow

from zcache.change_source.upstream import ShardId, setup_shard

SHARD = ShardId("zero", 0)

APP_SCHEMA = """
CREATE TABLE "user" (id TEXT PRIMARY KEY, name TEXT NOT NULL, role TEXT NOT NULL DEFAULT 'member');
CREATE TABLE file (
  id TEXT PRIMARY KEY,
  name TEXT NOT NULL,
  owner_id TEXT NOT NULL REFERENCES "user" ON DELETE CASCADE,
  shared BOOLEAN NOT NULL DEFAULT false,
  meta JSONB,
  created_at TIMESTAMPTZ,
  size BIGINT
);
INSERT INTO "user" VALUES ('u1', 'Alice', 'admin'), ('u2', 'Bob', 'member');
INSERT INTO file (id, name, owner_id) VALUES ('f1', 'alpha', 'u1'), ('f2', 'beta', 'u1'), ('f3', 'gamma', 'u2');
"""

ALLOW: list[Any] = [["allow", {"type": "and", "conditions": []}]]


def allow_all(*tables: str) -> dict[str, Any]:
    """Permissions that allow every write on `tables` (what scenario 05 deploys)."""
    row = {"select": ALLOW, "insert": ALLOW, "update": {"preMutation": ALLOW, "postMutation": ALLOW}, "delete": ALLOW}
    return {"tables": {t: {"row": row} for t in tables}}


def set_permissions(conn: psycopg.Connection[TupleRow], permissions: dict[str, Any] | None) -> None:
    conn.execute("UPDATE zero.permissions SET permissions = %s", [None if permissions is None else json.dumps(permissions)])


def last_mutation_ids(conn: psycopg.Connection[TupleRow]) -> dict[str, int]:
    rows = conn.execute('SELECT "clientID", "lastMutationID" FROM zero_0.clients ORDER BY 1').fetchall()
    return {r[0]: r[1] for r in rows}


@pytest.fixture
def upstream(pg_dsn: str) -> Iterator[psycopg.Connection[TupleRow]]:
    """An autocommit connection to a database with the app schema and the shard set up."""
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(APP_SCHEMA)
        setup_shard(conn, SHARD, [])
        yield conn
