"""The upstream Postgres objects zcache needs, named and shaped as zero-cache 1.9 makes them.

zero-cache keeps a little state in the upstream database, and app servers built with
`@rocicorp/zero/server` write into part of it, so zcache must create the same objects for the
same app id and shard number (for app `zero`, shard `0`):

* **App schema `zero`** (shared by every shard of the app): `zero.permissions`, the single-row
  table `zero-deploy-permissions` writes the legacy permissions into, with the trigger
  `on_set_permissions` (function `zero.set_permissions_hash()`) keeping `hash` equal to
  `md5(permissions::text)`. Like zero-cache, setup inserts the row with NULL permissions if
  there is none, so every replica starts with it.
* **Shard schema `zero_0`**: `clients` (last mutation id per client, bumped by the app server's
  push handler or by CRUD mutations), `mutations` (app-error results until the client acks
  them), `"shardConfig"` (the shard's publications and whether DDL detection is on), `replicas`
  (one row per initial sync, written by `record_replica`: the slot and replica version it
  produced and the schema it copied); the table definitions
  are zero-cache 1.9's. zcache adds `"zcacheLastSchema"` (the published schema last emitted or
  recorded, see below) and the functions described below.
* **Publications**: the app's tables are published either by the publications the operator
  names (`ZERO_APP_PUBLICATIONS`; they must exist and must not start with `_`, which is
  reserved) or, when none are named, by `_zero_public_0 FOR TABLES IN SCHEMA public WITH
  (publish_via_partition_root)`. `_zero_metadata_0` always publishes `zero.permissions`,
  `zero_0.clients` and `zero_0.mutations`. Every shard publication must publish inserts,
  updates, deletes and truncates.
* **Row keys**: replication needs a key for every published table. A primary key is enough. A
  table without one but with REPLICA IDENTITY DEFAULT and a usable unique index (immediate, not
  partial, no expressions, key columns all NOT NULL and published) gets `REPLICA IDENTITY USING
  INDEX` on it, as zero-cache does, so its updates and deletes carry that key. Any other table
  is refused with an error naming it and what to add (zero-cache only warns and leaves such a
  table unsynced).
* **`zero_0.published_schema()`**: returns the published schema, the JSON contract of
  `rust/pg/schema.rs`, for the tables of the publications recorded in `"shardConfig"`. Only
  plain tables are supported: a published partitioned table is refused at setup, because with
  `publish_via_partition_root` its changes stream under the root whose catalog entries do not
  describe its partitions' missing values.
* **DDL detection**: the event trigger `zcache_zero_0_ddl_end` (`ddl_command_end`, function
  `zero_0.zcache_ddl_end()`) computes the published schema after every DDL command that can
  change it (`DDL_TAGS`) and, when it differs from `"zcacheLastSchema"`, records it there and
  emits it with `pg_logical_emit_message(true, 'zcache/zero/0/ddl', {"type":"ddl","tag":…,
  "schema":…})`. The message is transactional, so it is decoded inside its transaction, at the
  position of the DDL, and vanishes if the transaction rolls back. Comparing with the last
  emitted schema keeps irrelevant DDL (temporary tables, other schemas, REFRESH MATERIALIZED
  VIEW CONCURRENTLY's internal commands) out of the WAL; the consumer diffs each message
  against its own schema, so a skipped no-op message loses nothing. `COMMENT` is among the tags
  so that `COMMENT ON …` can be used to force a check where a platform does not fire event
  triggers for a change (e.g. ALTER PUBLICATION on Supabase), as with zero-cache.
  The event trigger `zcache_zero_0_ddl_start` (`ddl_command_start`) takes a transaction-level
  advisory lock so that DDL transactions run one at a time: a READ COMMITTED transaction then
  computes its schema after any earlier DDL transaction has committed, so its message includes
  that transaction's changes (as zero-cache does; a REPEATABLE READ transaction can still miss
  them, and DDL that waits on the lock while holding a lock another DDL transaction needs ends
  in a deadlock error instead of a wait).
  Both functions are SECURITY DEFINER with a fixed search_path, so DDL by roles that cannot
  read `zero_0` still works, and the end function catches its own errors (with a WARNING) so a
  half-removed shard never breaks anyone's DDL; a schema change without its message is caught
  downstream as an unexpected schema change. Event trigger names live in one namespace per
  database, so they carry the app id and the shard number; they cannot collide with another
  app's, nor with zero-cache's own `zero_ddl_end_0` triggers.
  Creating event triggers needs a superuser. Without one, setup still succeeds with
  `"ddlDetection" = false` (logged as a warning): the replicator then treats any schema change
  as requiring a resync.

Everything is created by `setup_shard` in one transaction, under an advisory lock, and only
what is missing or different is (re)created, so running it again changes nothing. The calls
are synchronous psycopg; callers run them in a thread.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql
from psycopg.abc import Params, Query
from psycopg.rows import tuple_row
from psycopg.types.json import Json

log = logging.getLogger("zcache.change_source")

Conn = psycopg.Connection[Any]

DDL_MESSAGE_PREFIX = "zcache/{app_id}/{shard_num}/ddl"

# Postgres 15 brought FOR TABLES IN SCHEMA publications and publication column lists, both used
# here; zero-cache 1.9 refuses older servers too.
MIN_SERVER_VERSION = 150000

# The DDL commands after which the published schema can have changed: tables and their columns,
# keys and replica identity (ALTER TABLE covers RENAME, SET SCHEMA, REPLICA IDENTITY, ADD/DROP
# CONSTRAINT), indexes (a dropped replica identity index), publications, schemas, types whose
# names or existence columns depend on, and what can drop them by cascade.
DDL_TAGS = (
    "CREATE TABLE",
    "CREATE TABLE AS",
    "SELECT INTO",
    "ALTER TABLE",
    "DROP TABLE",
    "CREATE INDEX",
    "DROP INDEX",
    "CREATE PUBLICATION",
    "ALTER PUBLICATION",
    "DROP PUBLICATION",
    "CREATE SCHEMA",
    "ALTER SCHEMA",
    "DROP SCHEMA",
    "ALTER TYPE",
    "DROP TYPE",
    "ALTER DOMAIN",
    "DROP DOMAIN",
    "ALTER EXTENSION",
    "DROP EXTENSION",
    "DROP OWNED",
    "DROP COLLATION",
    "COMMENT",
)

# Advisory lock keys: "zcache" in ASCII followed by a 16-bit purpose number (0x0001 is the app
# migration runner's). Setup serialises all shard setups and drops in a database: two shards of
# one app share the app schema, and CREATE … IF NOT EXISTS is not safe against a concurrent
# create. The DDL key serialises DDL transactions (see the module docstring).
SETUP_LOCK_KEY = 0x7A63_6163_6865_0002
DDL_LOCK_KEY = 0x7A63_6163_6865_0003

_APP_ID = re.compile(r"[a-z0-9_]+")
_PUBLICATION_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_MAX_IDENTIFIER = 63  # NAMEDATALEN - 1
# Functions zcache defines run with this search_path, so that neither the caller's path nor a
# schema created by a less trusted role can change what their unqualified names resolve to.
_SEARCH_PATH = "pg_catalog, pg_temp"


class UpstreamError(Exception):
    """The upstream database cannot be used as it is; the message says why."""


class UpstreamSetupError(UpstreamError):
    """The upstream database or its user does not meet zcache's requirements, or the shard
    cannot be set up; the message says what to change."""


@dataclass(frozen=True)
class ShardId:
    """An app id and shard number, and the names zero-cache derives from them."""

    app_id: str
    shard_num: int

    def __post_init__(self) -> None:
        # zero-cache's rule: the names end up in replication slot names.
        if not _APP_ID.fullmatch(self.app_id):
            raise ValueError(
                f"invalid app id {self.app_id!r}: only lower-case letters, digits and the underscore are allowed"
            )
        if isinstance(self.shard_num, bool) or not isinstance(self.shard_num, int) or self.shard_num < 0:
            raise ValueError(f"invalid shard number {self.shard_num!r}: must be a non-negative integer")
        longest = max((self.ddl_start_trigger, self.table_rewrite_trigger, self.metadata_publication), key=len)
        if len(longest) > _MAX_IDENTIFIER:
            raise ValueError(
                f"app id {self.app_id!r} is too long: the name {longest!r} exceeds Postgres' "
                f"{_MAX_IDENTIFIER}-character identifier limit"
            )

    @property
    def app_schema(self) -> str:
        return self.app_id

    @property
    def shard_schema(self) -> str:
        return f"{self.app_id}_{self.shard_num}"

    @property
    def public_publication(self) -> str:
        return f"_{self.app_id}_public_{self.shard_num}"

    @property
    def metadata_publication(self) -> str:
        return f"_{self.app_id}_metadata_{self.shard_num}"

    @property
    def slot_prefix(self) -> str:
        return f"{self.app_id}_{self.shard_num}_"

    # Event trigger names are per database, not per schema. The shard schema name is unique per
    # (app id, shard number): the number has no underscore, so it is whatever follows the last
    # one. And unlike zero-cache's (`zero_ddl_end_0`), these names never end in a digit, so they
    # cannot collide with zero-cache's either.
    @property
    def ddl_start_trigger(self) -> str:
        return f"zcache_{self.shard_schema}_ddl_start"

    @property
    def ddl_end_trigger(self) -> str:
        return f"zcache_{self.shard_schema}_ddl_end"

    @property
    def table_rewrite_trigger(self) -> str:
        return f"zcache_{self.shard_schema}_table_rewrite"


@dataclass(frozen=True)
class ShardSetup:
    """What `setup_shard` set up: every publication of the shard (sorted, the metadata
    publication included) and whether DDL is detected by event triggers."""

    shard: ShardId
    publications: tuple[str, ...]
    ddl_detection: bool


def ddl_message_prefix(shard: ShardId) -> str:
    """The prefix of the shard's DDL messages in the replication stream."""
    return DDL_MESSAGE_PREFIX.format(app_id=shard.app_id, shard_num=shard.shard_num)


# -- checks -----------------------------------------------------------------------------------


def _wal_level_problem(value: str) -> str | None:
    if value == "logical":
        return None
    return (
        f"wal_level is {value!r}, but logical replication needs 'logical'. "
        "Run `ALTER SYSTEM SET wal_level = logical` as a superuser (or change the setting in your "
        "provider's console) and restart Postgres."
    )


def _server_version_problem(version_num: int) -> str | None:
    if version_num >= MIN_SERVER_VERSION:
        return None
    return (
        f"Postgres {version_num // 10000} is too old: zcache needs Postgres 15 or newer "
        "(FOR TABLES IN SCHEMA publications, publication column lists, binary pgoutput)."
    )


def check_upstream(conn: Conn) -> None:
    """Raise `UpstreamSetupError` listing every problem that stops zcache from replicating
    from this database as this user: wal_level, server version, the right to create a
    replication slot (REPLICATION or superuser), the right to create schemas and publications
    (CREATE on the database)."""
    wal_level, version_num, user, database, superuser, replication, can_create = _one(
        conn,
        """
        SELECT current_setting('wal_level'), current_setting('server_version_num')::int,
               current_user, current_database(), r.rolsuper, r.rolreplication,
               has_database_privilege(current_database(), 'CREATE')
        FROM pg_catalog.pg_roles r WHERE r.rolname = current_user
        """,
    )
    problems = [p for p in (_wal_level_problem(wal_level), _server_version_problem(version_num)) if p]
    if not (superuser or replication):
        problems.append(
            f"Role {user!r} cannot create replication slots: "
            f"`ALTER ROLE {_render(conn, user)} WITH REPLICATION` (or use a superuser)."
        )
    if not can_create:
        problems.append(
            f"Role {user!r} cannot create schemas or publications in database {database!r}: "
            f"`GRANT CREATE ON DATABASE {_render(conn, database)} TO {_render(conn, user)}`."
        )
    if problems:
        raise UpstreamSetupError("The upstream database is not ready for zcache:\n  - " + "\n  - ".join(problems))


# -- setup ------------------------------------------------------------------------------------


def setup_shard(conn: Conn, shard: ShardId, app_publications: Sequence[str]) -> ShardSetup:
    """Create or complete the upstream objects of `shard` (see the module docstring), in one
    transaction (a savepoint if the caller has one open) under `SETUP_LOCK_KEY`.

    `app_publications` are the operator's publications (`ZERO_APP_PUBLICATIONS`); empty means
    "publish schema public" through the shard's own publication. Raises `UpstreamSetupError`
    when a publication is missing or reserved, a published table has no usable key, or the user
    lacks a privilege; nothing is changed then.
    """
    requested = _validate_app_publications(app_publications)
    try:
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", [SETUP_LOCK_KEY])
            previous_detection = _previous_ddl_detection(conn, shard)
            _ensure_app_objects(conn, shard)
            _ensure_shard_tables(conn, shard)
            publications = _ensure_publications(conn, shard, requested)
            _check_publication_options(conn, publications)
            _ensure_row_keys(conn, publications)
            _write_shard_config(conn, shard, publications, previous_detection or False)
            for function in _shard_functions(conn, shard):
                _ensure_function(conn, function)
            ddl_detection = _ensure_event_triggers(conn, shard)
            if ddl_detection != bool(previous_detection):
                conn.execute(
                    sql.SQL('UPDATE {} SET "ddlDetection" = %s').format(_shard_table(shard, "shardConfig")),
                    [ddl_detection],
                )
            _record_published_schema(conn, shard)
    except psycopg.errors.InsufficientPrivilege as e:
        raise UpstreamSetupError(
            f"Setting up shard {shard.shard_schema} failed: {e.diag.message_primary}. "
            "Run zcache once as a superuser or as the owner of the objects involved, "
            "or grant the missing privilege."
        ) from e
    return ShardSetup(shard, tuple(publications), ddl_detection)


def published_schema(conn: Conn, shard: ShardId) -> dict[str, Any]:
    """The published schema of `shard` (the JSON of `rust/pg/schema.rs`), as seen by the
    connection's current snapshot (the initial sync calls it under the slot's snapshot)."""
    try:
        (schema,) = _one(conn, sql.SQL("SELECT {}.published_schema()").format(sql.Identifier(shard.shard_schema)))
    except (psycopg.errors.UndefinedFunction, psycopg.errors.InvalidSchemaName) as e:
        raise UpstreamError(f"Shard {shard.shard_schema} is not set up upstream (run setup_shard first)") from e
    if not isinstance(schema, dict):
        raise UpstreamError(f"{shard.shard_schema}.published_schema() returned {type(schema).__name__}, not an object")
    return schema


def record_replica(conn: Conn, shard: ShardId, *, slot: str, version: str, schema: dict[str, Any]) -> str:
    """Record a finished initial sync in `<shard>.replicas`: the slot it created, the replica
    version (LexiVersion of the slot's consistent point) and the published schema it copied.
    Returns the row's id. As in zero-cache, a non-NULL `"initialSyncContext"` marks the sync as
    complete (zcache records nothing in it)."""
    (replica_id,) = _one(
        conn,
        sql.SQL(
            """
            INSERT INTO {} ("slot", "version", "initialSchema", "initialSyncContext")
            VALUES (%s, %s, %s, '{{}}') RETURNING "id"
            """
        ).format(_shard_table(shard, "replicas")),
        [slot, version, Json(schema)],
    )
    return str(replica_id)


def drop_shard(conn: Conn, shard: ShardId) -> None:
    """Remove what `setup_shard` created for `shard`: its event triggers, its own publications,
    the shard schema (with its tables and functions), then its inactive replication slots.
    The app schema is kept (other shards of the app share `zero.permissions`), and so are the
    operator's publications. Active slots are left alone, with a warning.

    Dropping a slot cannot be rolled back, so the slots go after the rest has committed.
    """
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", [SETUP_LOCK_KEY])
        for trigger in (shard.ddl_start_trigger, shard.ddl_end_trigger, shard.table_rewrite_trigger):
            conn.execute(sql.SQL("DROP EVENT TRIGGER IF EXISTS {}").format(sql.Identifier(trigger)))
        # DROP SCHEMA … CASCADE does not drop publications whose tables it drops.
        for publication in (shard.public_publication, shard.metadata_publication):
            conn.execute(sql.SQL("DROP PUBLICATION IF EXISTS {}").format(sql.Identifier(publication)))
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(shard.shard_schema)))
    slots = _all(
        conn,
        """
        SELECT slot_name, active FROM pg_catalog.pg_replication_slots
        WHERE database = current_database() AND starts_with(slot_name, %s)
        ORDER BY slot_name
        """,
        [shard.slot_prefix],
    )
    active = [name for name, is_active in slots if is_active]
    if active:
        log.warning("not dropping active replication slots %s of shard %s", ", ".join(active), shard.shard_schema)
    for name, is_active in slots:
        if not is_active:
            conn.execute("SELECT pg_drop_replication_slot(%s)", [name])


# -- setup steps ------------------------------------------------------------------------------


def _validate_app_publications(app_publications: Sequence[str]) -> list[str]:
    names = sorted(set(app_publications))
    for name in names:
        if not _PUBLICATION_NAME.fullmatch(name) or len(name) > _MAX_IDENTIFIER:
            raise UpstreamSetupError(
                f"Invalid publication name {name!r}: publication names must start with a letter or an "
                f"underscore, contain only letters, digits and underscores, and have at most "
                f"{_MAX_IDENTIFIER} characters."
            )
        if name.startswith("_"):
            raise UpstreamSetupError(
                f'Publication names starting with "_" are reserved for internal use; '
                f"rename publication {name!r} (and ZERO_APP_PUBLICATIONS)."
            )
    return names


def _previous_ddl_detection(conn: Conn, shard: ShardId) -> bool | None:
    """`"ddlDetection"` of an earlier setup, None when there was none."""
    config = _shard_table(shard, "shardConfig")
    (exists,) = _one(conn, "SELECT to_regclass(%s) IS NOT NULL", [config.as_string(conn)])
    if not exists:
        return None
    row = _one_or_none(conn, sql.SQL('SELECT "ddlDetection" FROM {}').format(config))
    return None if row is None else bool(row[0])


def _ensure_app_objects(conn: Conn, shard: ShardId) -> None:
    app = sql.Identifier(shard.app_schema)
    permissions = sql.Identifier(shard.app_schema, "permissions")
    _create_missing(conn, shard.app_schema, None, sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(app))
    _create_missing(
        conn,
        shard.app_schema,
        "permissions",
        sql.SQL(
            """
            CREATE TABLE IF NOT EXISTS {} (
              "permissions" JSONB,
              "hash"        TEXT,
              -- A single row: the key can only be true.
              "lock" BOOL PRIMARY KEY DEFAULT true CHECK (lock)
            )
            """
        ).format(permissions),
    )
    _ensure_function(
        conn,
        _Function(
            schema=shard.app_schema,
            name="set_permissions_hash",
            returns="trigger",
            language="plpgsql",
            stable=False,
            security_definer=False,
            search_path=None,  # as zero-cache defines it
            body="""
BEGIN
  NEW.hash = md5(NEW.permissions::text);
  RETURN NEW;
END
""",
        ),
    )
    (has_trigger,) = _one(
        conn,
        """
        SELECT EXISTS (SELECT FROM pg_catalog.pg_trigger
                       WHERE tgrelid = to_regclass(%s) AND tgname = 'on_set_permissions')
        """,
        [permissions.as_string(conn)],
    )
    if not has_trigger:
        conn.execute(
            sql.SQL(
                """
                CREATE TRIGGER on_set_permissions BEFORE INSERT OR UPDATE ON {}
                FOR EACH ROW EXECUTE FUNCTION {}()
                """
            ).format(permissions, sql.Identifier(shard.app_schema, "set_permissions_hash"))
        )
    # zero-cache starts every app with the (empty) row, so replicas always have it.
    conn.execute(sql.SQL("INSERT INTO {} (permissions) VALUES (NULL) ON CONFLICT DO NOTHING").format(permissions))


def _ensure_shard_tables(conn: Conn, shard: ShardId) -> None:
    # zero-cache 1.9's definitions, column for column, by the table they create.
    statements = [
        (None, "CREATE SCHEMA IF NOT EXISTS {schema}"),
        # Written by the app server's push handler (`@rocicorp/zero/server`) and by CRUD mutations.
        ("clients", """
        CREATE TABLE IF NOT EXISTS {schema}."clients" (
          "clientGroupID"  TEXT NOT NULL,
          "clientID"       TEXT NOT NULL,
          "lastMutationID" BIGINT NOT NULL,
          "userID"         TEXT,
          PRIMARY KEY ("clientGroupID", "clientID")
        )
        """),
        # Results of mutations that failed with an app error, until the client acks them.
        ("mutations", """
        CREATE TABLE IF NOT EXISTS {schema}."mutations" (
          "clientGroupID"  TEXT NOT NULL,
          "clientID"       TEXT NOT NULL,
          "mutationID"     BIGINT NOT NULL,
          "result"         JSON NOT NULL,
          PRIMARY KEY ("clientGroupID", "clientID", "mutationID")
        )
        """),
        ("shardConfig", """
        CREATE TABLE IF NOT EXISTS {schema}."shardConfig" (
          "publications"  TEXT[] NOT NULL,
          "ddlDetection"  BOOL NOT NULL,
          "lock" BOOL PRIMARY KEY DEFAULT true CHECK (lock)
        )
        """),
        # One row per initial sync: the slot it created and the replica version it produced.
        ("replicas", """
        CREATE TABLE IF NOT EXISTS {schema}."replicas" (
          "id"                 TEXT PRIMARY KEY DEFAULT replace(gen_random_uuid()::text, '-', ''),
          "rank"               BIGSERIAL,
          "slot"               TEXT NOT NULL,
          "version"            TEXT NOT NULL,
          "initialSchema"      JSON,
          "initialSyncContext" JSON,
          "subscriberContext"  JSON
        )
        """),
        # zcache's own: the published schema last emitted by the DDL trigger (or recorded by setup).
        ("zcacheLastSchema", """
        CREATE TABLE IF NOT EXISTS {schema}."zcacheLastSchema" (
          "current" JSON NOT NULL,
          "lock" BOOL PRIMARY KEY DEFAULT true CHECK (lock)
        )
        """),
    ]
    schema = sql.Identifier(shard.shard_schema)
    for table, statement in statements:
        _create_missing(conn, shard.shard_schema, table, sql.SQL(statement).format(schema=schema))


def _create_missing(conn: Conn, schema: str, table: str | None, create: sql.Composable) -> None:
    """Runs `create` unless the schema (`table` None) or table exists. Even a CREATE … IF NOT
    EXISTS that creates nothing fires the DDL event triggers, and the shard's end trigger computes
    the whole published schema: a restart would pay that once per statement."""
    name = sql.Identifier(schema) if table is None else sql.Identifier(schema, table)
    check = "SELECT to_regnamespace(%s) IS NOT NULL" if table is None else "SELECT to_regclass(%s) IS NOT NULL"
    (exists,) = _one(conn, check, [name.as_string(conn)])
    if not exists:
        conn.execute(create)


@dataclass(frozen=True)
class _PublicationShape:
    """What a publication publishes, as far as zcache cares."""

    all_tables: bool
    all_operations: bool  # insert, update, delete and truncate
    via_root: bool
    schemas: frozenset[str]
    # (schema, table, whole): whole is false for a table published with a column list or a
    # row filter.
    tables: frozenset[tuple[str, str, bool]]


def _ensure_publications(conn: Conn, shard: ShardId, requested: list[str]) -> list[str]:
    """The shard's publications, sorted: the operator's (checked to exist) or the public one
    (created if absent or different), plus the metadata publication (likewise)."""
    if requested:
        existing = _existing_publications(conn)
        missing = [name for name in requested if name not in existing]
        if missing:
            raise UpstreamSetupError(
                f"Unknown publications {', '.join(missing)} (from ZERO_APP_PUBLICATIONS); create them "
                "(CREATE PUBLICATION … FOR TABLE …) or fix the setting. Existing publications: "
                + (", ".join(existing) or "none")
                + "."
            )
        app_publications = requested
    else:
        public = _PublicationShape(
            all_tables=False, all_operations=True, via_root=True, schemas=frozenset({"public"}), tables=frozenset()
        )
        create_public = sql.SQL(
            "CREATE PUBLICATION {} FOR TABLES IN SCHEMA public WITH (publish_via_partition_root = true)"
        ).format(sql.Identifier(shard.public_publication))
        try:
            _ensure_publication(conn, shard.public_publication, public, create_public)
        except psycopg.errors.InsufficientPrivilege as e:
            raise UpstreamSetupError(
                f"Cannot create publication {shard.public_publication} ({e.diag.message_primary}): "
                "a FOR TABLES IN SCHEMA publication needs a superuser. Either run zcache once as a "
                "superuser, or publish your tables yourself (CREATE PUBLICATION zero_data FOR TABLE …) "
                "and set ZERO_APP_PUBLICATIONS=zero_data."
            ) from e
        app_publications = [shard.public_publication]

    metadata_tables = [
        (shard.app_schema, "permissions"),
        (shard.shard_schema, "clients"),
        (shard.shard_schema, "mutations"),
    ]
    metadata = _PublicationShape(
        all_tables=False,
        all_operations=True,
        via_root=False,
        schemas=frozenset(),
        tables=frozenset((schema, table, True) for schema, table in metadata_tables),
    )
    create_metadata = sql.SQL("CREATE PUBLICATION {} FOR TABLE {}").format(
        sql.Identifier(shard.metadata_publication),
        sql.SQL(", ").join(sql.Identifier(schema, table) for schema, table in metadata_tables),
    )
    _ensure_publication(conn, shard.metadata_publication, metadata, create_metadata)
    return sorted([*app_publications, shard.metadata_publication])


def _existing_publications(conn: Conn) -> list[str]:
    return [name for (name,) in _all(conn, "SELECT pubname FROM pg_catalog.pg_publication ORDER BY 1")]


def _ensure_publication(conn: Conn, name: str, shape: _PublicationShape, create: sql.Composable) -> None:
    current = _publication_shape(conn, name)
    if current == shape:
        return
    if current is not None:
        # Someone changed it; recreate it rather than patch it (zero-cache always recreates).
        log.warning("publication %s does not publish what zcache expects; recreating it", name)
        conn.execute(sql.SQL("DROP PUBLICATION {}").format(sql.Identifier(name)))
    conn.execute(create)


def _publication_shape(conn: Conn, name: str) -> _PublicationShape | None:
    row = _one_or_none(
        conn,
        """
        SELECT p.puballtables, p.pubinsert AND p.pubupdate AND p.pubdelete AND p.pubtruncate, p.pubviaroot,
               ARRAY(SELECT n.nspname FROM pg_catalog.pg_publication_namespace pn
                     JOIN pg_catalog.pg_namespace n ON n.oid = pn.pnnspid
                     WHERE pn.pnpubid = p.oid),
               ARRAY(SELECT json_build_array(n.nspname, c.relname,
                                             r.prattrs IS NULL AND r.prqual IS NULL)
                     FROM pg_catalog.pg_publication_rel r
                     JOIN pg_catalog.pg_class c ON c.oid = r.prrelid
                     JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
                     WHERE r.prpubid = p.oid)
        FROM pg_catalog.pg_publication p WHERE p.pubname = %s
        """,
        [name],
    )
    if row is None:
        return None
    all_tables, all_operations, via_root, schemas, tables = row
    return _PublicationShape(
        all_tables, all_operations, via_root, frozenset(schemas), frozenset(tuple(table) for table in tables)
    )


def _check_publication_options(conn: Conn, publications: list[str]) -> None:
    partial = [
        name
        for name, complete in _all(
            conn,
            """
            SELECT pubname, pubinsert AND pubupdate AND pubdelete AND pubtruncate
            FROM pg_catalog.pg_publication WHERE pubname = ANY (%s) ORDER BY pubname
            """,
            [publications],
        )
        if not complete
    ]
    if partial:
        raise UpstreamSetupError(
            f"Publications {', '.join(partial)} must publish inserts, updates, deletes and truncates: "
            + "; ".join(
                f"ALTER PUBLICATION {_render(conn, name)} SET (publish = 'insert, update, delete, truncate')"
                for name in partial
            )
            + "."
        )


# The published tables with what decides whether and how they can be keyed. `published` has one
# row per (publication, table) with the columns that publication publishes of the table.
_TABLE_KEYS_QUERY = """
WITH published AS (
  SELECT c.oid AS relid, pt.attnames
  FROM pg_catalog.pg_publication_tables pt
  JOIN pg_catalog.pg_namespace n ON n.nspname = pt.schemaname
  JOIN pg_catalog.pg_class c ON c.relnamespace = n.oid AND c.relname = pt.tablename
  WHERE pt.pubname = ANY (%(publications)s)
)
SELECT n.nspname, c.relname, c.relkind, c.relreplident,
  EXISTS (SELECT FROM pg_catalog.pg_constraint WHERE conrelid = c.oid AND contype = 'p'),
  EXISTS (SELECT FROM pg_catalog.pg_index WHERE indrelid = c.oid AND indisreplident),
  (SELECT count(DISTINCT attnames) FROM published WHERE relid = c.oid) > 1,
  -- The first index (by name) that REPLICA IDENTITY USING INDEX accepts and whose key columns
  -- are all published (else the publication would reject updates of the table).
  (SELECT ic.relname
   FROM pg_catalog.pg_index i JOIN pg_catalog.pg_class ic ON ic.oid = i.indexrelid
   WHERE i.indrelid = c.oid AND i.indisunique AND i.indimmediate AND i.indisvalid
     AND i.indpred IS NULL AND i.indexprs IS NULL
     AND NOT EXISTS (
       SELECT FROM unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord)
       JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum = k.attnum
       WHERE k.ord <= i.indnkeyatts
         AND (NOT a.attnotnull
              OR NOT EXISTS (SELECT FROM published p WHERE p.relid = c.oid AND a.attname = ANY (p.attnames))))
   ORDER BY ic.relname LIMIT 1)
FROM (SELECT DISTINCT relid FROM published) t
JOIN pg_catalog.pg_class c ON c.oid = t.relid
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
ORDER BY 1, 2
"""


def _ensure_row_keys(conn: Conn, publications: list[str]) -> None:
    """Give key-less tables a replica identity index where one fits; refuse the rest."""
    problems: list[str] = []
    for schema, table, kind, identity, has_pk, has_identity_index, mixed_lists, candidate in _all(
        conn, _TABLE_KEYS_QUERY, {"publications": publications}
    ):
        name = _render(conn, schema, table)
        if kind == "p":
            problems.append(
                f"{name} is a partitioned table, which zcache does not replicate yet; "
                "leave it out of the published tables."
            )
        elif mixed_lists:
            problems.append(f"{name} is published with different column lists by different publications.")
        elif identity == "n":
            problems.append(
                f"{name} has REPLICA IDENTITY NOTHING, so its updates and deletes carry no key: "
                f"ALTER TABLE {name} REPLICA IDENTITY DEFAULT (with a primary key)."
            )
        elif has_pk:
            continue
        elif identity == "i" and not has_identity_index:
            problems.append(
                f"{name} has REPLICA IDENTITY USING INDEX but that index is gone: "
                f"ALTER TABLE {name} ADD PRIMARY KEY (…), or REPLICA IDENTITY USING INDEX another unique index."
            )
        elif identity == "i":
            continue
        elif identity == "d" and candidate is not None:
            log.info("setting %s as the REPLICA IDENTITY of %s", candidate, name)
            conn.execute(
                sql.SQL("ALTER TABLE {} REPLICA IDENTITY USING INDEX {}").format(
                    sql.Identifier(schema, table), sql.Identifier(candidate)
                )
            )
        elif candidate is not None:  # REPLICA IDENTITY FULL with a usable unique index
            problems.append(
                f"{name} has no primary key: ALTER TABLE {name} ADD PRIMARY KEY (…), or "
                f"ALTER TABLE {name} REPLICA IDENTITY USING INDEX {_render(conn, candidate)}."
            )
        else:
            problems.append(
                f"{name} has neither a primary key nor a unique index on NOT NULL columns: "
                f"ALTER TABLE {name} ADD PRIMARY KEY (…)."
            )
    if problems:
        raise UpstreamSetupError(
            "Every published table needs a row key so that its updates and deletes can be replicated:\n  - "
            + "\n  - ".join(problems)
            + "\nOr leave these tables out: set ZERO_APP_PUBLICATIONS to publications that do not include them."
        )


def _write_shard_config(conn: Conn, shard: ShardId, publications: list[str], ddl_detection: bool) -> None:
    conn.execute(
        sql.SQL(
            """
            INSERT INTO {config} AS config ("publications", "ddlDetection") VALUES (%s, %s)
            ON CONFLICT ("lock") DO UPDATE SET "publications" = excluded."publications"
            WHERE config."publications" IS DISTINCT FROM excluded."publications"
            """
        ).format(config=_shard_table(shard, "shardConfig")),
        [publications, ddl_detection],
    )


@dataclass(frozen=True)
class _Function:
    """A function zcache defines; `_ensure_function` compares it with the catalog."""

    schema: str
    name: str
    returns: str  # a type name as regtype prints it: json, trigger, event_trigger
    language: str
    stable: bool
    security_definer: bool
    search_path: str | None
    body: str
    # False: the function runs with jit = off. The published-schema query is costed high enough
    # for Postgres to JIT-compile it, which takes ~10 times longer than running it.
    jit: bool = True

    @property
    def settings(self) -> list[str]:
        """The function's SET clauses, as pg_proc.proconfig lists them."""
        search_path = [] if self.search_path is None else [f"search_path={self.search_path}"]
        return search_path + ([] if self.jit else ["jit=off"])


def _ensure_function(conn: Conn, function: _Function) -> None:
    """CREATE OR REPLACE the function unless the catalog already holds exactly it: replacing
    needs ownership, and an unchanged setup must not need more than the first one did."""
    name = sql.Identifier(function.schema, function.name)
    expected = (
        function.body,
        function.returns,
        function.language,
        "s" if function.stable else "v",
        function.security_definer,
        function.settings or None,
    )
    current = _one_or_none(
        conn,
        """
        SELECT p.prosrc, p.prorettype::regtype::text, l.lanname, p.provolatile, p.prosecdef, p.proconfig
        FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_language l ON l.oid = p.prolang
        WHERE p.oid = to_regprocedure(%s)
        """,
        [name.as_string(conn) + "()"],
    )
    if current == expected:
        return
    settings = sql.SQL("").join(
        sql.SQL(" SET {} = {}").format(sql.Identifier(name), sql.SQL(value))
        for name, _, value in (setting.partition("=") for setting in function.settings)
    )
    conn.execute(
        sql.SQL(
            "CREATE OR REPLACE FUNCTION {name}() RETURNS {returns} LANGUAGE {language} {volatility} {security}"
            "{settings} AS {body}"
        ).format(
            name=name,
            returns=sql.SQL(function.returns),
            language=sql.SQL(function.language),
            volatility=sql.SQL("STABLE" if function.stable else "VOLATILE"),
            security=sql.SQL("SECURITY DEFINER" if function.security_definer else "SECURITY INVOKER"),
            settings=settings,
            body=sql.Literal(function.body),
        )
    )


# The published schema (rust/pg/schema.rs) of the publications in "shardConfig". `published` has
# one row per (publication, table) with the columns that publication publishes; a column is in
# the schema when any of them publishes it. Postgres 15 wrongly lists generated columns in
# `attnames` although pgoutput never sends them, hence the attgenerated test before 16.
_PUBLISHED_SCHEMA_SQL = """
WITH published AS (
  SELECT c.oid AS relid, pt.attnames
  FROM pg_publication_tables pt
  JOIN pg_namespace n ON n.nspname = pt.schemaname
  JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = pt.tablename
  WHERE pt.pubname IN (SELECT unnest(publications) FROM {config})
)
SELECT json_build_object('tables', COALESCE(json_agg(t.spec ORDER BY t.nspname, t.relname), '[]'::json))
FROM (
  SELECT n.nspname, c.relname, json_build_object(
      'oid', c.oid::int8,
      'schema', n.nspname,
      'name', c.relname,
      'replicaIdentity', c.relreplident::text,
      'primaryKey', COALESCE(pk.columns, identity_index.columns, '[]'::json),
      'columns', cols.columns) AS spec
  FROM (SELECT DISTINCT relid FROM published) p
  JOIN pg_class c ON c.oid = p.relid
  JOIN pg_namespace n ON n.oid = c.relnamespace
  LEFT JOIN LATERAL (
    SELECT json_agg(a.attname ORDER BY k.ord) AS columns
    FROM pg_constraint con
    CROSS JOIN LATERAL unnest(con.conkey) WITH ORDINALITY AS k(attnum, ord)
    JOIN pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = k.attnum
    WHERE con.conrelid = c.oid AND con.contype = 'p'
  ) pk ON true
  LEFT JOIN LATERAL (
    SELECT json_agg(a.attname ORDER BY k.ord) AS columns
    FROM pg_index i
    CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord)
    JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
    WHERE i.indrelid = c.oid AND i.indisreplident AND k.ord <= i.indnkeyatts
  ) identity_index ON true
  CROSS JOIN LATERAL (
    SELECT COALESCE(json_agg(json_build_object(
        'name', a.attname,
        'attnum', a.attnum,
        'typeOid', a.atttypid::int8,
        'typeName', ty.typname,
        'typeKind', ty.typtype::text,
        'baseTypeOid', base.typid::int8,
        'elemTypeOid', COALESCE(elem.oid::int8, 0),
        'elemTypeKind', elem.typtype::text,
        'notNull', a.attnotnull,
        'hasMissing', a.atthasmissing,
        'missing', CASE WHEN a.atthasmissing THEN array_to_json(a.attmissingval) -> 0 END,
        -- An enum's labels (of the element for an enum array): RENAME VALUE changes what every
        -- row reads without a row change, and only shows in the schema through them.
        'enumLabels', (SELECT json_agg(e.enumlabel ORDER BY e.enumsortorder) FROM pg_enum e
                       WHERE e.enumtypid = COALESCE(elem.oid, bt.oid))
      ) ORDER BY a.attnum), '[]'::json) AS columns
    FROM pg_attribute a
    JOIN pg_type ty ON ty.oid = a.atttypid
    -- Domains (over domains) resolved to their ultimate base type.
    CROSS JOIN LATERAL (
      WITH RECURSIVE chain(typid, basetype) AS (
        SELECT ty.oid, ty.typbasetype
        UNION ALL
        SELECT d.oid, d.typbasetype FROM pg_type d JOIN chain ON d.oid = chain.basetype
      )
      SELECT typid FROM chain WHERE basetype = 0
    ) base
    JOIN pg_type bt ON bt.oid = base.typid
    -- True arrays only: fixed-length types such as name and point have a typelem too.
    LEFT JOIN pg_type elem ON elem.oid = bt.typelem AND bt.typlen = -1
      AND bt.typsubscript = 'pg_catalog.array_subscript_handler'::regproc
    WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
      AND EXISTS (SELECT FROM published pc WHERE pc.relid = c.oid AND a.attname = ANY (pc.attnames))
      AND (current_setting('server_version_num')::int >= 160000 OR a.attgenerated = '')
  ) cols
) t
"""

# ddl_command_end: emit the published schema when the command changed it. Errors are reported
# as a WARNING rather than failing the user's DDL (the message is then missing, which the
# replicator treats like any unannounced schema change).
_DDL_END_SQL = """
DECLARE
  published json;
BEGIN
  published := {schema}.published_schema();
  INSERT INTO {last} AS last ("current") VALUES (published)
    ON CONFLICT ("lock") DO UPDATE SET "current" = excluded."current"
    WHERE last."current"::text IS DISTINCT FROM excluded."current"::text;
  IF FOUND THEN
    PERFORM pg_logical_emit_message(
      true, {prefix}, json_build_object('type', 'ddl', 'tag', TG_TAG, 'schema', published)::text);
  END IF;
EXCEPTION WHEN OTHERS THEN
  RAISE WARNING {warning}, TG_TAG, SQLERRM, SQLSTATE;
END
"""

# table_rewrite: Postgres rewrites every row (ALTER COLUMN TYPE, ADD COLUMN with a volatile
# default or identity, typmod changes) without streaming row changes, so the replica cannot follow
# in place; the message tells the replicator to resync if the table is replicated.
_TABLE_REWRITE_SQL = """
BEGIN
  PERFORM pg_logical_emit_message(
    true, {prefix},
    json_build_object('type', 'rewrite', 'tag', TG_TAG, 'table', pg_event_trigger_table_rewrite_oid()::int8)::text);
EXCEPTION WHEN OTHERS THEN
  RAISE WARNING {warning}, TG_TAG, SQLERRM, SQLSTATE;
END
"""

# ddl_command_start: one DDL transaction at a time (see the module docstring).
_DDL_START_SQL = """
BEGIN
  PERFORM pg_advisory_xact_lock({key});
END
"""


def _shard_functions(conn: Conn, shard: ShardId) -> list[_Function]:
    schema = sql.Identifier(shard.shard_schema)

    def render(template: str, **values: sql.Composable) -> str:
        return sql.SQL(template).format(**values).as_string(conn)

    return [
        _Function(
            schema=shard.shard_schema,
            name="published_schema",
            returns="json",
            language="sql",
            stable=True,
            security_definer=False,
            search_path=_SEARCH_PATH,
            body=render(_PUBLISHED_SCHEMA_SQL, config=_shard_table(shard, "shardConfig")),
            jit=False,
        ),
        _Function(
            schema=shard.shard_schema,
            name="zcache_ddl_start",
            returns="event_trigger",
            language="plpgsql",
            stable=False,
            security_definer=True,
            search_path=_SEARCH_PATH,
            body=render(_DDL_START_SQL, key=sql.Literal(DDL_LOCK_KEY)),
        ),
        _Function(
            schema=shard.shard_schema,
            name="zcache_ddl_end",
            returns="event_trigger",
            language="plpgsql",
            stable=False,
            security_definer=True,
            search_path=_SEARCH_PATH,
            body=render(
                _DDL_END_SQL,
                schema=schema,
                last=_shard_table(shard, "zcacheLastSchema"),
                prefix=sql.Literal(ddl_message_prefix(shard)),
                warning=sql.Literal(
                    f"zcache shard {shard.shard_schema}: no schema change message for %: % (SQLSTATE %)"
                ),
            ),
        ),
        _Function(
            schema=shard.shard_schema,
            name="zcache_table_rewrite",
            returns="event_trigger",
            language="plpgsql",
            stable=False,
            security_definer=True,
            search_path=_SEARCH_PATH,
            body=render(
                _TABLE_REWRITE_SQL,
                prefix=sql.Literal(ddl_message_prefix(shard)),
                warning=sql.Literal(f"zcache shard {shard.shard_schema}: no table rewrite message for %: % (SQLSTATE %)"),
            ),
        ),
    ]


def _ensure_event_triggers(conn: Conn, shard: ShardId) -> bool:
    """Install the DDL event triggers unless they are in place; False (DDL detection off) when
    the user may not create event triggers and none exist yet."""
    # The rewrite trigger fires for every table rewrite; it takes no tag filter.
    wanted = {
        shard.ddl_start_trigger: ("ddl_command_start", "zcache_ddl_start", DDL_TAGS),
        shard.ddl_end_trigger: ("ddl_command_end", "zcache_ddl_end", DDL_TAGS),
        shard.table_rewrite_trigger: ("table_rewrite", "zcache_table_rewrite", ()),
    }
    current = {
        name: (event, function, enabled, tuple(tags or ()))
        for name, event, function, enabled, tags in _all(
            conn,
            """
            SELECT e.evtname, e.evtevent, p.proname, e.evtenabled, e.evttags
            FROM pg_catalog.pg_event_trigger e
            JOIN pg_catalog.pg_proc p ON p.oid = e.evtfoid
            JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
            WHERE e.evtname = ANY (%s) AND n.nspname = %s
            """,
            [list(wanted), shard.shard_schema],
        )
    }
    expected = {name: (event, function, "O", tags) for name, (event, function, tags) in wanted.items()}
    if current == expected:
        return True
    try:
        with conn.transaction():
            for name, (event, function, tags) in wanted.items():
                conn.execute(sql.SQL("DROP EVENT TRIGGER IF EXISTS {}").format(sql.Identifier(name)))
                when = (
                    sql.SQL("WHEN TAG IN ({})").format(sql.SQL(", ").join(map(sql.Literal, tags)))
                    if tags
                    else sql.SQL("")
                )
                conn.execute(
                    sql.SQL("CREATE EVENT TRIGGER {} ON {} {} EXECUTE FUNCTION {}()").format(
                        sql.Identifier(name),
                        sql.Identifier(event),
                        when,
                        sql.Identifier(shard.shard_schema, function),
                    )
                )
    except psycopg.errors.InsufficientPrivilege as e:
        if _existing_event_triggers(conn, list(wanted)):
            raise UpstreamSetupError(
                f"The DDL event triggers of shard {shard.shard_schema} need updating, which only a "
                f"superuser can do ({e.diag.message_primary}): run zcache once as a superuser."
            ) from e
        log.warning(
            "Cannot create event triggers for schema change detection (%s). Proceeding without "
            "DDL detection: a schema change upstream will require the replica to be resynced.",
            e.diag.message_primary,
        )
        return False
    return True


def _existing_event_triggers(conn: Conn, names: list[str]) -> list[str]:
    query = "SELECT evtname FROM pg_catalog.pg_event_trigger WHERE evtname = ANY (%s)"
    return [name for (name,) in _all(conn, query, [names])]


def _record_published_schema(conn: Conn, shard: ShardId) -> None:
    """Start DDL detection's comparisons from the schema as it is now."""
    conn.execute(
        sql.SQL(
            """
            INSERT INTO {last} AS last ("current") VALUES ({schema}.published_schema())
            ON CONFLICT ("lock") DO UPDATE SET "current" = excluded."current"
            WHERE last."current"::text IS DISTINCT FROM excluded."current"::text
            """
        ).format(last=_shard_table(shard, "zcacheLastSchema"), schema=sql.Identifier(shard.shard_schema))
    )


# -- helpers ----------------------------------------------------------------------------------


def _shard_table(shard: ShardId, table: str) -> sql.Identifier:
    return sql.Identifier(shard.shard_schema, table)


def _render(conn: Conn, *names: str) -> str:
    """A (qualified) identifier as SQL, for the statements error messages suggest."""
    return sql.Identifier(*names).as_string(conn)


def _all(conn: Conn, query: Query, params: Params | None = None) -> list[tuple[Any, ...]]:
    # A tuple-row cursor whatever row factory the caller's connection has.
    with conn.cursor(row_factory=tuple_row) as cur:
        cur.execute(query, params)
        return cur.fetchall()


def _one_or_none(conn: Conn, query: Query, params: Params | None = None) -> tuple[Any, ...] | None:
    rows = _all(conn, query, params)
    return rows[0] if rows else None


def _one(conn: Conn, query: Query, params: Params | None = None) -> tuple[Any, ...]:
    row = _one_or_none(conn, query, params)
    if row is None:
        raise UpstreamError(f"query returned no row: {query!r}")
    return row
