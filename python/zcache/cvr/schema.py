"""The CVR tables in Postgres: schema ``"<appID>_<shardNum>/cvr"``, the tables and columns of
zero-cache's (so operators recognise them), created at start unless they exist.

zcache's own schema history is recorded in ``versionHistory`` (one row, as zero-cache keeps it);
version 1 is this layout. Creation is serialised by an advisory lock, so a second zcache starting
at the same time, or a restart, changes nothing.
"""

from __future__ import annotations

import psycopg
from psycopg import sql

SCHEMA_VERSION = 1


def cvr_schema(app_id: str, shard_num: int) -> str:
    return f"{app_id}_{shard_num}/cvr"


# One statement (a CREATE SCHEMA with its elements): DDL event triggers of an upstream database
# (zero-cache's and zcache's own) then run once, not once per table and index.
_DDL = """
CREATE SCHEMA {schema}
CREATE TABLE "versionHistory" (
    "dataVersion"    INT NOT NULL,
    "schemaVersion"  INT NOT NULL,
    "minSafeVersion" INT NOT NULL,
    "lock"           BOOL PRIMARY KEY DEFAULT true CHECK ("lock")
)
CREATE TABLE instances (
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
)
CREATE TABLE clients (
    "clientGroupID" TEXT,
    "clientID"      TEXT,
    PRIMARY KEY ("clientGroupID", "clientID")
)
CREATE TABLE queries (
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
)
CREATE INDEX queries_patch_version ON queries ("clientGroupID", "patchVersion")
CREATE TABLE desires (
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
)
CREATE INDEX desires_patch_version ON desires ("clientGroupID", "patchVersion")
CREATE TABLE "rowsVersion" (
    "clientGroupID" TEXT PRIMARY KEY,
    "version"       TEXT NOT NULL
)
CREATE TABLE rows (
    "clientGroupID" TEXT,
    "schema"        TEXT,
    "table"         TEXT,
    "rowKey"        JSONB,
    "rowVersion"    TEXT NOT NULL,
    "patchVersion"  TEXT NOT NULL,
    "refCounts"     JSONB,                   -- NULL for a tombstone
    PRIMARY KEY ("clientGroupID", "schema", "table", "rowKey")
)
CREATE INDEX row_patch_version ON rows ("clientGroupID", "patchVersion")
"""


class CVRSchemaError(Exception):
    """The CVR schema was written by a newer zcache (or another program) this one cannot use."""


def ensure_schema(conn: psycopg.Connection, app_id: str, shard_num: int) -> None:
    """Creates the CVR schema and its tables unless they exist, in one transaction (serialised
    across processes by an advisory lock on the schema name)."""
    schema = cvr_schema(app_id, shard_num)
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", [schema])
        if conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", [schema]).fetchone() is None:
            conn.execute(sql.SQL(_DDL).format(schema=sql.Identifier(schema)))
            conn.execute(
                sql.SQL('INSERT INTO {}."versionHistory" ("dataVersion", "schemaVersion", "minSafeVersion") VALUES (%s, %s, 1)').format(
                    sql.Identifier(schema)
                ),
                [SCHEMA_VERSION, SCHEMA_VERSION],
            )
            return
        history = sql.SQL("{}.{}").format(sql.Identifier(schema), sql.Identifier("versionHistory"))
        exists = conn.execute("SELECT to_regclass(%s) IS NOT NULL", [history.as_string(conn)]).fetchone()
        row = None
        if exists is not None and exists[0]:
            row = conn.execute(sql.SQL('SELECT "minSafeVersion" FROM {}').format(history)).fetchone()
        if row is None:
            raise CVRSchemaError(f"the schema {schema!r} exists but is not a zcache CVR schema (no versionHistory row)")
        if row[0] > SCHEMA_VERSION:
            raise CVRSchemaError(
                f"the CVR schema {schema!r} needs zcache schema version {row[0]} or later; this zcache has {SCHEMA_VERSION}"
            )
