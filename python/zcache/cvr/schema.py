"""The CVR tables in Postgres: schema ``"<appID>_<shardNum>/cvr"``, the tables and columns of
zero-cache's (so operators recognise them), created idempotently at start.

zcache's own schema history is recorded in ``versionHistory`` (one row, as zero-cache keeps it);
version 1 is this layout. Every statement is ``IF NOT EXISTS``, so a second zcache starting at
the same time, or a restart, changes nothing.
"""

from __future__ import annotations

import psycopg
from psycopg import sql

SCHEMA_VERSION = 1


def cvr_schema(app_id: str, shard_num: int) -> str:
    return f"{app_id}_{shard_num}/cvr"


_DDL = """
CREATE SCHEMA IF NOT EXISTS {schema};

CREATE TABLE IF NOT EXISTS {schema}."versionHistory" (
    "dataVersion"    INT NOT NULL,
    "schemaVersion"  INT NOT NULL,
    "minSafeVersion" INT NOT NULL,
    "lock"           BOOL PRIMARY KEY DEFAULT true CHECK ("lock")
);

CREATE TABLE IF NOT EXISTS {schema}.instances (
    "clientGroupID"  TEXT PRIMARY KEY,
    "version"        TEXT NOT NULL,          -- the CVR version: the cookie of the last poke
    "lastActive"     TIMESTAMPTZ NOT NULL,   -- for garbage collection
    "ttlClock"       DOUBLE PRECISION NOT NULL DEFAULT 0,  -- ms the group has been connected
    "replicaVersion" TEXT,                   -- the replica (initial sync) the rows come from
    "owner"          TEXT,                   -- the zcache task that serves the group
    "grantedAt"      TIMESTAMPTZ,            -- when that owner took it (its latest connection)
    "clientSchema"   JSONB,
    "profileID"      TEXT,
    "deleted"        BOOL DEFAULT false      -- purged for inactivity
);

CREATE TABLE IF NOT EXISTS {schema}.clients (
    "clientGroupID" TEXT,
    "clientID"      TEXT,
    PRIMARY KEY ("clientGroupID", "clientID")
);

CREATE TABLE IF NOT EXISTS {schema}.queries (
    "clientGroupID"         TEXT,
    "queryHash"             TEXT,
    "clientAST"             JSONB,           -- legacy and internal queries
    "queryName"             TEXT,            -- named queries
    "queryArgs"             JSONB,
    "patchVersion"          TEXT,            -- when it became "got"; NULL while only desired
    "transformationHash"    TEXT,
    "transformationVersion" TEXT,
    "internal"              BOOL,
    "deleted"               BOOL,            -- a got-query del, kept for catch-up
    "rowSetSignature"       TEXT,
    PRIMARY KEY ("clientGroupID", "queryHash")
);
CREATE INDEX IF NOT EXISTS queries_patch_version ON {schema}.queries ("clientGroupID", "patchVersion");

CREATE TABLE IF NOT EXISTS {schema}.desires (
    "clientGroupID"   TEXT,
    "clientID"        TEXT,
    "queryHash"       TEXT,
    "patchVersion"    TEXT NOT NULL,
    "deleted"         BOOL,                  -- a desired-query del, kept for catch-up
    "ttl"             INTERVAL,
    "ttlMs"           DOUBLE PRECISION,
    "inactivatedAt"   TIMESTAMPTZ,           -- on the TTL clock, as a timestamp
    "inactivatedAtMs" DOUBLE PRECISION,
    PRIMARY KEY ("clientGroupID", "clientID", "queryHash")
);
CREATE INDEX IF NOT EXISTS desires_patch_version ON {schema}.desires ("clientGroupID", "patchVersion");

CREATE TABLE IF NOT EXISTS {schema}."rowsVersion" (
    "clientGroupID" TEXT PRIMARY KEY,
    "version"       TEXT NOT NULL
);

CREATE TABLE IF NOT EXISTS {schema}.rows (
    "clientGroupID" TEXT,
    "schema"        TEXT,
    "table"         TEXT,
    "rowKey"        JSONB,
    "rowVersion"    TEXT NOT NULL,
    "patchVersion"  TEXT NOT NULL,
    "refCounts"     JSONB,                   -- NULL for a tombstone
    PRIMARY KEY ("clientGroupID", "schema", "table", "rowKey")
);
CREATE INDEX IF NOT EXISTS row_patch_version ON {schema}.rows ("clientGroupID", "patchVersion");

INSERT INTO {schema}."versionHistory" ("dataVersion", "schemaVersion", "minSafeVersion")
    VALUES ({version}, {version}, 1) ON CONFLICT ("lock") DO NOTHING;
"""


class CVRSchemaError(Exception):
    """The CVR schema was written by a newer zcache (or another program) this one cannot use."""


def ensure_schema(conn: psycopg.Connection, app_id: str, shard_num: int) -> None:
    """Creates the CVR schema and tables if absent, in one transaction (serialised across
    processes by an advisory lock on the schema name)."""
    schema = cvr_schema(app_id, shard_num)
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", [schema])
        conn.execute(sql.SQL(_DDL).format(schema=sql.Identifier(schema), version=sql.Literal(SCHEMA_VERSION)))
        row = conn.execute(
            sql.SQL('SELECT "minSafeVersion" FROM {}."versionHistory"').format(sql.Identifier(schema))
        ).fetchone()
        if row is not None and row[0] > SCHEMA_VERSION:
            raise CVRSchemaError(
                f"the CVR schema {schema!r} needs zcache schema version {row[0]} or later; this zcache has {SCHEMA_VERSION}"
            )
