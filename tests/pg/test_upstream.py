"""The upstream objects of a shard (zcache.change_source.upstream), against a real database."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import threading
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.rows import TupleRow

from tests.fixtures.fix_pg import PgServer, database_name, schema_fingerprint
from zcache._native import describe_replication_frames
from zcache.change_source.upstream import (
    DDL_TAGS,
    ShardId,
    ShardSetup,
    UpstreamError,
    UpstreamSetupError,
    _server_version_problem,
    _wal_level_problem,
    check_upstream,
    ddl_message_prefix,
    drop_shard,
    published_schema,
    record_replica,
    setup_shard,
)
from zcache.embedded_pg import find_pg_binaries
from zcache.migrations import migrate

Conn = psycopg.Connection[TupleRow]
SHARD = ShardId("zero", 0)
PREFIX = "zcache/zero/0/ddl"


def one(conn: Conn, query: str | sql.Composable, params: list[Any] | None = None) -> Any:
    row = conn.execute(query, params).fetchone()
    assert row is not None
    return row[0]


def column(
    name: str,
    attnum: int,
    type_oid: int,
    type_name: str,
    not_null: bool,
    *,
    kind: str = "b",
    base: int | None = None,
    elem: int = 0,
    elem_kind: str | None = None,
    has_missing: bool = False,
    missing: Any = None,
    enum_labels: list[str] | None = None,
) -> dict[str, Any]:
    return {
        "name": name,
        "attnum": attnum,
        "typeOid": type_oid,
        "typeName": type_name,
        "typeKind": kind,
        "baseTypeOid": type_oid if base is None else base,
        "elemTypeOid": elem,
        "elemTypeKind": elem_kind,
        "notNull": not_null,
        "hasMissing": has_missing,
        "missing": missing,
        "enumLabels": enum_labels,
    }


def table_spec(schema: dict[str, Any], qualified: str) -> dict[str, Any]:
    matches = [t for t in schema["tables"] if f"{t['schema']}.{t['name']}" == qualified]
    assert len(matches) == 1, [f"{t['schema']}.{t['name']}" for t in schema["tables"]]
    return matches[0]


def table_names(schema: dict[str, Any]) -> list[str]:
    return [f"{t['schema']}.{t['name']}" for t in schema["tables"]]


def columns_of(conn: Conn, table: str) -> list[tuple[str, str, bool, str | None]]:
    """(name, type, not null, default) of `table` in column order."""
    return conn.execute(
        """
        SELECT a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull, pg_get_expr(d.adbin, d.adrelid)
        FROM pg_attribute a LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
        WHERE a.attrelid = %s::regclass AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum
        """,
        [table],
    ).fetchall()


def constraints_of(conn: Conn, table: str) -> set[str]:
    return {
        definition
        for (definition,) in conn.execute(
            "SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conrelid = %s::regclass", [table]
        )
    }


def publication_tables(conn: Conn, publication: str) -> set[str]:
    return {
        f"{schema}.{table}"
        for schema, table in conn.execute(
            "SELECT schemaname, tablename FROM pg_publication_tables WHERE pubname = %s", [publication]
        )
    }


def event_triggers(conn: Conn) -> dict[str, tuple[str, str, str, list[str]]]:
    return {
        name: (event, function, enabled, tags)
        for name, event, function, enabled, tags in conn.execute(
            "SELECT evtname, evtevent, evtfoid::regproc::text, evtenabled, evttags FROM pg_event_trigger"
        )
    }


@pytest.fixture
def tldraw(pg_dsn: str, pg_conn: Conn) -> Conn:
    """A connection to a database with the tldraw schema."""
    migrate(pg_dsn)
    return pg_conn


@pytest.fixture
def make_role(pg_conn: Conn, pg_dsn: str) -> Iterator[Callable[..., str]]:
    """Creates login roles (cluster-wide, so removed again afterwards); returns their DSN."""
    roles: list[str] = []

    def make(attributes: str = "", *, create_on_database: bool = False) -> str:
        role = f"zt_role_{os.urandom(4).hex()}"
        pg_conn.execute(sql.SQL("CREATE ROLE {} LOGIN " + attributes).format(sql.Identifier(role)))
        roles.append(role)
        if create_on_database:
            pg_conn.execute(
                sql.SQL("GRANT CREATE ON DATABASE {} TO {}").format(
                    sql.Identifier(pg_conn.info.dbname), sql.Identifier(role)
                )
            )
        return make_conninfo(pg_dsn, user=role)

    yield make
    for role in roles:
        # The role may own objects in the test database, which is dropped only after this.
        pg_conn.execute(sql.SQL("REASSIGN OWNED BY {} TO CURRENT_USER").format(sql.Identifier(role)))
        pg_conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
        pg_conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


# -- names and checks -------------------------------------------------------------------------


def test_shard_names_are_zero_caches() -> None:
    assert (SHARD.app_schema, SHARD.shard_schema) == ("zero", "zero_0")
    assert (SHARD.public_publication, SHARD.metadata_publication) == ("_zero_public_0", "_zero_metadata_0")
    assert SHARD.slot_prefix == "zero_0_"
    assert (SHARD.ddl_start_trigger, SHARD.ddl_end_trigger) == ("zcache_zero_0_ddl_start", "zcache_zero_0_ddl_end")
    other = ShardId("my_app2", 13)
    assert (other.shard_schema, other.metadata_publication, other.slot_prefix) == (
        "my_app2_13",
        "_my_app2_metadata_13",
        "my_app2_13_",
    )
    assert ddl_message_prefix(SHARD) == PREFIX
    assert ddl_message_prefix(other) == "zcache/my_app2/13/ddl"


def test_event_trigger_names_of_different_shards_differ() -> None:
    shards = [ShardId(app, num) for app in ("a", "a_1", "a_1_2", "zero", "zero_0") for num in (0, 1, 2, 12)]
    names = [name for s in shards for name in (s.ddl_start_trigger, s.ddl_end_trigger, s.table_rewrite_trigger)]
    assert len(set(names)) == len(names)


@pytest.mark.parametrize(
    ("app_id", "shard_num"), [("Zero", 0), ("ze-ro", 0), ("", 0), ("zero", -1), ("zero", True), ("z" * 50, 0)]
)
def test_invalid_shard_ids_are_refused(app_id: str, shard_num: int) -> None:
    with pytest.raises(ValueError):
        ShardId(app_id, shard_num)


def test_wal_level_must_be_logical() -> None:
    assert _wal_level_problem("logical") is None
    for level in ("replica", "minimal"):
        problem = _wal_level_problem(level)
        assert problem is not None
        assert repr(level) in problem
        assert "ALTER SYSTEM SET wal_level = logical" in problem and "restart" in problem


def test_server_version_must_be_15_or_newer() -> None:
    assert _server_version_problem(150000) is None
    assert _server_version_problem(170002) is None
    problem = _server_version_problem(140011)
    assert problem is not None and "Postgres 14" in problem and "15" in problem


def test_check_upstream_accepts_the_test_cluster(pg_conn: Conn) -> None:
    check_upstream(pg_conn)


def test_check_upstream_accepts_a_replication_role_with_create(pg_conn: Conn, make_role: Callable[..., str]) -> None:
    with psycopg.connect(make_role("REPLICATION", create_on_database=True), autocommit=True) as conn:
        check_upstream(conn)


def test_check_upstream_names_every_missing_privilege(pg_conn: Conn, make_role: Callable[..., str]) -> None:
    with psycopg.connect(make_role(), autocommit=True) as conn:
        with pytest.raises(UpstreamSetupError) as caught:
            check_upstream(conn)
    message = str(caught.value)
    assert "cannot create replication slots" in message and "WITH REPLICATION" in message
    assert "GRANT CREATE ON DATABASE" in message


# -- setup ------------------------------------------------------------------------------------


def test_setup_creates_zero_caches_objects(tldraw: Conn) -> None:
    conn = tldraw
    result = setup_shard(conn, SHARD, [])
    assert result == ShardSetup(SHARD, ("_zero_metadata_0", "_zero_public_0"), True)

    assert columns_of(conn, "zero.permissions") == [
        ("permissions", "jsonb", False, None),
        ("hash", "text", False, None),
        ("lock", "boolean", True, "true"),
    ]
    assert constraints_of(conn, "zero.permissions") == {"PRIMARY KEY (lock)", "CHECK (lock)"}
    assert columns_of(conn, "zero_0.clients") == [
        ("clientGroupID", "text", True, None),
        ("clientID", "text", True, None),
        ("lastMutationID", "bigint", True, None),
        ("userID", "text", False, None),
    ]
    assert constraints_of(conn, "zero_0.clients") == {'PRIMARY KEY ("clientGroupID", "clientID")'}
    assert columns_of(conn, "zero_0.mutations") == [
        ("clientGroupID", "text", True, None),
        ("clientID", "text", True, None),
        ("mutationID", "bigint", True, None),
        ("result", "json", True, None),
    ]
    assert constraints_of(conn, "zero_0.mutations") == {'PRIMARY KEY ("clientGroupID", "clientID", "mutationID")'}
    assert columns_of(conn, 'zero_0."shardConfig"') == [
        ("publications", "text[]", True, None),
        ("ddlDetection", "boolean", True, None),
        ("lock", "boolean", True, "true"),
    ]
    assert constraints_of(conn, 'zero_0."shardConfig"') == {"PRIMARY KEY (lock)", "CHECK (lock)"}
    assert columns_of(conn, "zero_0.replicas") == [
        ("id", "text", True, "replace((gen_random_uuid())::text, '-'::text, ''::text)"),
        ("rank", "bigint", True, "nextval('zero_0.replicas_rank_seq'::regclass)"),
        ("slot", "text", True, None),
        ("version", "text", True, None),
        ("initialSchema", "json", False, None),
        ("initialSyncContext", "json", False, None),
        ("subscriberContext", "json", False, None),
    ]
    assert constraints_of(conn, "zero_0.replicas") == {"PRIMARY KEY (id)"}
    assert conn.execute('SELECT publications, "ddlDetection" FROM zero_0."shardConfig"').fetchall() == [
        (["_zero_metadata_0", "_zero_public_0"], True)
    ]

    # The permissions row exists (empty) and its hash follows the permissions.
    assert conn.execute("SELECT permissions, hash FROM zero.permissions").fetchall() == [(None, None)]
    conn.execute("""UPDATE zero.permissions SET permissions = '{"tables": {}}'""")
    assert one(conn, "SELECT hash = md5(permissions::text) FROM zero.permissions") is True

    assert publication_tables(conn, "_zero_metadata_0") == {"zero.permissions", "zero_0.clients", "zero_0.mutations"}
    assert publication_tables(conn, "_zero_public_0") == {
        "public.asset",
        "public.file",
        "public.file_state",
        "public.user",
        "public.user_mutation_number",
    }
    assert conn.execute(
        """
        SELECT pubname, puballtables, pubinsert AND pubupdate AND pubdelete AND pubtruncate, pubviaroot,
               ARRAY(SELECT pnnspid::regnamespace::text FROM pg_publication_namespace WHERE pnpubid = p.oid)
        FROM pg_publication p WHERE pubname LIKE '\\_zero%%' ORDER BY 1
        """
    ).fetchall() == [
        ("_zero_metadata_0", False, True, False, []),
        ("_zero_public_0", False, True, True, ["public"]),
    ]

    assert event_triggers(conn) == {
        "zcache_zero_0_ddl_start": ("ddl_command_start", "zero_0.zcache_ddl_start", "O", list(DDL_TAGS)),
        "zcache_zero_0_ddl_end": ("ddl_command_end", "zero_0.zcache_ddl_end", "O", list(DDL_TAGS)),
        "zcache_zero_0_table_rewrite": ("table_rewrite", "zero_0.zcache_table_rewrite", "O", None),
    }
    assert conn.execute(
        """
        SELECT p.oid::regprocedure::text, p.prorettype::regtype::text, p.provolatile, p.prosecdef, p.proconfig
        FROM pg_proc p WHERE p.pronamespace IN ('zero'::regnamespace, 'zero_0'::regnamespace) ORDER BY 1
        """
    ).fetchall() == [
        ("zero.set_permissions_hash()", "trigger", "v", False, None),
        ("zero_0.published_schema()", "json", "s", False, ["search_path=pg_catalog, pg_temp", "jit=off"]),
        ("zero_0.zcache_ddl_end()", "event_trigger", "v", True, ["search_path=pg_catalog, pg_temp"]),
        ("zero_0.zcache_ddl_start()", "event_trigger", "v", True, ["search_path=pg_catalog, pg_temp"]),
        ("zero_0.zcache_table_rewrite()", "event_trigger", "v", True, ["search_path=pg_catalog, pg_temp"]),
    ]
    # DDL detection compares with the schema as set up.
    recorded = one(conn, 'SELECT "current"::text FROM zero_0."zcacheLastSchema"')
    assert json.loads(recorded) == published_schema(conn, SHARD)


def catalog_versions(conn: Conn) -> list[tuple[Any, ...]]:
    """The row versions (xmin) of everything setup_shard writes: unchanged means not rewritten."""
    return conn.execute(
        """
        SELECT 'proc', oid::regprocedure::text, xmin::text FROM pg_proc
          WHERE pronamespace IN ('zero'::regnamespace, 'zero_0'::regnamespace)
        UNION ALL SELECT 'event trigger', evtname, xmin::text FROM pg_event_trigger
        UNION ALL SELECT 'publication', pubname, xmin::text FROM pg_publication
        UNION ALL SELECT 'publication rel', prrelid::regclass::text, xmin::text FROM pg_publication_rel
        UNION ALL SELECT 'trigger', tgname, xmin::text FROM pg_trigger WHERE NOT tgisinternal
        UNION ALL SELECT 'class', oid::regclass::text, xmin::text FROM pg_class
          WHERE relnamespace IN ('zero'::regnamespace, 'zero_0'::regnamespace, 'public'::regnamespace)
        UNION ALL SELECT 'shardConfig', '', xmin::text FROM zero_0."shardConfig"
        UNION ALL SELECT 'zcacheLastSchema', '', xmin::text FROM zero_0."zcacheLastSchema"
        UNION ALL SELECT 'permissions', '', xmin::text FROM zero.permissions
        ORDER BY 1, 2
        """
    ).fetchall()


def ddl_messages(conn: Conn, slot: str, publication: str = "_zero_metadata_0") -> list[tuple[bool, str, bytes]]:
    """(transactional, prefix, content) of every logical message in `slot` so far, each checked
    to sit between its transaction's BEGIN and COMMIT when transactional."""
    rows = conn.execute(
        """
        SELECT data FROM pg_logical_slot_peek_binary_changes(
          %s, NULL, NULL, 'proto_version', '1', 'publication_names', %s, 'messages', 'true')
        """,
        [slot, publication],
    ).fetchall()
    messages = []
    in_transaction = False
    for (data,) in rows:
        kind = data[:1]
        if kind == b"B":
            in_transaction = True
        elif kind == b"C":
            in_transaction = False
        elif kind == b"M":
            # 'M', flags (1 = transactional), message LSN, prefix (NUL-terminated), length, content.
            transactional = data[1] == 1
            end = data.index(b"\0", 10)
            prefix = data[10:end].decode()
            (length,) = struct.unpack(">i", data[end + 1 : end + 5])
            content = bytes(data[end + 5 : end + 5 + length])
            assert len(content) == length
            assert in_transaction == transactional
            messages.append((transactional, prefix, content))
    return messages


def test_setup_twice_changes_nothing(tldraw: Conn) -> None:
    conn = tldraw
    first = setup_shard(conn, SHARD, [])
    conn.execute("SELECT pg_create_logical_replication_slot('zt_idempotent', 'pgoutput')")
    # Every DDL command from here on, as event triggers see it (outside the published schema).
    conn.execute("CREATE SCHEMA zt_audit")
    conn.execute("CREATE TABLE zt_audit.ddl_seen (tag text NOT NULL)")
    conn.execute(
        """
        CREATE FUNCTION zt_audit.note_ddl() RETURNS event_trigger LANGUAGE plpgsql AS
        $$ BEGIN INSERT INTO zt_audit.ddl_seen VALUES (TG_TAG); END $$
        """
    )
    conn.execute("CREATE EVENT TRIGGER zt_note_ddl ON ddl_command_end EXECUTE FUNCTION zt_audit.note_ddl()")
    fingerprint, versions = schema_fingerprint(conn), catalog_versions(conn)
    assert setup_shard(conn, SHARD, []) == first
    assert schema_fingerprint(conn) == fingerprint
    assert catalog_versions(conn) == versions
    # No DDL at all (each statement would fire the shard's triggers, which compute the published
    # schema: slow restarts), so nothing was emitted either.
    assert conn.execute("SELECT tag FROM zt_audit.ddl_seen").fetchall() == []
    assert ddl_messages(conn, "zt_idempotent") == []
    conn.execute("DROP EVENT TRIGGER zt_note_ddl")


def test_concurrent_setups_both_succeed(pg_dsn: str, tldraw: Conn) -> None:
    results: list[ShardSetup | BaseException] = []
    barrier = threading.Barrier(2)

    def run() -> None:
        try:
            with psycopg.connect(pg_dsn, autocommit=True) as conn:
                barrier.wait()
                results.append(setup_shard(conn, SHARD, []))
        except BaseException as e:  # reported by the assertion below
            results.append(e)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [ShardSetup(SHARD, ("_zero_metadata_0", "_zero_public_0"), True)] * 2


def test_setup_joins_the_callers_transaction(pg_dsn: str, tldraw: Conn) -> None:
    with psycopg.connect(pg_dsn) as conn:  # not autocommit
        conn.execute("SELECT 1")  # a transaction is open
        setup_shard(conn, SHARD, ["zero_data"])
        conn.rollback()
    assert one(tldraw, "SELECT to_regnamespace('zero_0')") is None


# -- the published schema ---------------------------------------------------------------------

VARCHAR, BOOL, INT8, TEXT = (1043, "varchar"), (16, "bool"), (20, "int8"), (25, "text")


def test_published_schema_of_tldraw(tldraw: Conn) -> None:
    conn = tldraw
    setup_shard(conn, SHARD, [])
    schema = published_schema(conn, SHARD)
    assert table_names(schema) == [
        "public.asset",
        "public.file",
        "public.file_state",
        "public.user",
        "public.user_mutation_number",
        "zero.permissions",
        "zero_0.clients",
        "zero_0.mutations",
    ]
    file_columns = [
        ("id", VARCHAR, True),
        ("name", VARCHAR, True),
        ("ownerId", VARCHAR, True),
        ("thumbnail", VARCHAR, True),
        ("shared", BOOL, True),
        ("sharedLinkType", VARCHAR, True),
        ("published", BOOL, True),
        ("lastPublished", INT8, True),
        ("publishedSlug", VARCHAR, True),
        ("createdAt", INT8, True),
        ("updatedAt", INT8, True),
        ("isEmpty", BOOL, True),
    ]
    expected_columns = [column(name, i + 1, *t, not_null) for i, (name, t, not_null) in enumerate(file_columns)]
    # Migration 006 added "isDeleted" NOT NULL DEFAULT FALSE: Postgres keeps the default as the
    # value rows from before it read (attmissingval), whether or not the table had rows.
    expected_columns.append(column("isDeleted", 13, *BOOL, True, has_missing=True, missing=False))
    expected_columns.append(column("createSource", 14, *VARCHAR, False))
    assert table_spec(schema, "public.file") == {
        "oid": one(conn, "SELECT 'file'::regclass::oid::int8"),
        "schema": "public",
        "name": "file",
        "replicaIdentity": "f",
        "primaryKey": ["id"],
        "columns": expected_columns,
    }
    file_state = table_spec(schema, "public.file_state")
    assert (file_state["replicaIdentity"], file_state["primaryKey"]) == ("f", ["userId", "fileId"])
    user = table_spec(schema, "public.user")
    assert (user["replicaIdentity"], user["primaryKey"], len(user["columns"])) == ("d", ["id"], 23)
    assert [c["attnum"] for c in user["columns"]] == list(range(1, 24))

    clients = table_spec(schema, "zero_0.clients")
    assert clients["primaryKey"] == ["clientGroupID", "clientID"]
    assert clients["columns"] == [
        column("clientGroupID", 1, *TEXT, True),
        column("clientID", 2, *TEXT, True),
        column("lastMutationID", 3, *INT8, True),
        column("userID", 4, *TEXT, False),
    ]
    mutations = table_spec(schema, "zero_0.mutations")
    assert mutations["primaryKey"] == ["clientGroupID", "clientID", "mutationID"]
    assert mutations["columns"][3] == column("result", 4, 114, "json", True)
    permissions = table_spec(schema, "zero.permissions")
    assert permissions["primaryKey"] == ["lock"]
    assert [c["typeName"] for c in permissions["columns"]] == ["jsonb", "text", "bool"]


def test_published_schema_resolves_domains_enums_and_arrays(pg_conn: Conn) -> None:
    conn = pg_conn
    conn.execute(
        """
        CREATE DOMAIN positive AS int4 CHECK (VALUE > 0);
        CREATE DOMAIN small_positive AS positive CHECK (VALUE < 100);
        CREATE TYPE mood AS ENUM ('sad', 'happy');
        CREATE DOMAIN int_list AS int4[];
        CREATE TABLE typed (
          id int8 PRIMARY KEY,
          gone text,
          p positive,
          sp small_positive,
          m mood NOT NULL,
          nums int4[],
          moods mood[],
          il int_list,
          n name,
          pt point,
          g int8 GENERATED ALWAYS AS (id * 2) STORED
        );
        ALTER TABLE typed DROP COLUMN gone;
        ALTER TABLE typed ADD COLUMN label text NOT NULL DEFAULT 'none';
        """
    )
    setup_shard(conn, SHARD, [])
    spec = table_spec(published_schema(conn, SHARD), "public.typed")

    def oid(type_name: str) -> int:
        return int(one(conn, "SELECT %s::regtype::oid::int8", [type_name]))

    mood, mood_array = oid("mood"), oid("mood[]")
    assert spec["columns"] == [
        column("id", 1, *INT8, True),
        # "gone" (2) was dropped; "g" (generated, 11) is never replicated.
        column("p", 3, oid("positive"), "positive", False, kind="d", base=23),
        column("sp", 4, oid("small_positive"), "small_positive", False, kind="d", base=23),
        column("m", 5, mood, "mood", True, kind="e", enum_labels=["sad", "happy"]),
        column("nums", 6, 1007, "_int4", False, elem=23, elem_kind="b"),
        column("moods", 7, mood_array, "_mood", False, elem=mood, elem_kind="e", enum_labels=["sad", "happy"]),
        column("il", 8, oid("int_list"), "int_list", False, kind="d", base=1007, elem=23, elem_kind="b"),
        # name and point have a typelem but are not arrays.
        column("n", 9, 19, "name", False),
        column("pt", 10, 600, "point", False),
        column("label", 12, *TEXT, True, has_missing=True, missing="none"),
    ]


def test_published_schema_follows_column_lists(pg_conn: Conn) -> None:
    conn = pg_conn
    conn.execute(
        """
        CREATE TABLE item (id text PRIMARY KEY, secret text, visible int4);
        CREATE PUBLICATION items FOR TABLE item (id, visible);
        """
    )
    setup_shard(conn, SHARD, ["items"])
    spec = table_spec(published_schema(conn, SHARD), "public.item")
    assert [(c["name"], c["attnum"]) for c in spec["columns"]] == [("id", 1), ("visible", 3)]


def test_published_schema_needs_a_set_up_shard(pg_conn: Conn) -> None:
    with pytest.raises(UpstreamError, match="not set up"):
        published_schema(pg_conn, SHARD)


# -- publications -----------------------------------------------------------------------------


def test_app_publications_replace_the_public_one(tldraw: Conn) -> None:
    conn = tldraw
    result = setup_shard(conn, SHARD, ["zero_data"])
    assert result.publications == ("_zero_metadata_0", "zero_data")
    assert one(conn, "SELECT count(*) FROM pg_publication WHERE pubname = '_zero_public_0'") == 0
    assert one(conn, 'SELECT publications FROM zero_0."shardConfig"') == ["_zero_metadata_0", "zero_data"]
    assert table_names(published_schema(conn, SHARD)) == [
        "public.file",
        "public.file_state",
        "public.user",
        "zero.permissions",
        "zero_0.clients",
        "zero_0.mutations",
    ]


def test_a_missing_publication_is_named(tldraw: Conn) -> None:
    with pytest.raises(UpstreamSetupError) as caught:
        setup_shard(tldraw, SHARD, ["zero_data", "no_such_pub"])
    assert "no_such_pub" in str(caught.value) and "zero_data" in str(caught.value)
    assert one(tldraw, "SELECT to_regnamespace('zero')") is None  # nothing was created


@pytest.mark.parametrize("name", ["_zero_public_0", "_mine"])
def test_publications_starting_with_underscore_are_reserved(tldraw: Conn, name: str) -> None:
    with pytest.raises(UpstreamSetupError, match="reserved") as caught:
        setup_shard(tldraw, SHARD, [name])
    assert name in str(caught.value)


def test_invalid_publication_names_are_refused(tldraw: Conn) -> None:
    with pytest.raises(UpstreamSetupError, match="Invalid publication name"):
        setup_shard(tldraw, SHARD, ["zero data; DROP TABLE file"])


def test_publications_must_publish_every_operation(tldraw: Conn) -> None:
    tldraw.execute("CREATE PUBLICATION inserts_only FOR TABLE file WITH (publish = 'insert')")
    with pytest.raises(UpstreamSetupError, match="inserts_only must publish inserts, updates, deletes and truncates"):
        setup_shard(tldraw, SHARD, ["inserts_only"])


def test_a_changed_shard_publication_is_recreated(tldraw: Conn) -> None:
    conn = tldraw
    setup_shard(conn, SHARD, [])
    conn.execute("ALTER PUBLICATION _zero_metadata_0 DROP TABLE zero_0.mutations")
    conn.execute("ALTER PUBLICATION _zero_public_0 SET (publish = 'insert')")
    setup_shard(conn, SHARD, [])
    assert publication_tables(conn, "_zero_metadata_0") == {"zero.permissions", "zero_0.clients", "zero_0.mutations"}
    assert one(conn, "SELECT pubupdate AND pubdelete FROM pg_publication WHERE pubname = '_zero_public_0'") is True


# -- row keys ---------------------------------------------------------------------------------


def test_a_unique_not_null_index_becomes_the_replica_identity(pg_conn: Conn) -> None:
    conn = pg_conn
    conn.execute(
        """
        CREATE TABLE keyed_by_index (a text NOT NULL, b int4 NOT NULL, c text);
        CREATE UNIQUE INDEX a_nullable ON keyed_by_index (c);
        CREATE UNIQUE INDEX b_partial ON keyed_by_index (b) WHERE b > 0;
        CREATE UNIQUE INDEX c_expression ON keyed_by_index (lower(a));
        ALTER TABLE keyed_by_index ADD CONSTRAINT d_deferrable UNIQUE (a, b) DEFERRABLE;
        CREATE UNIQUE INDEX e_usable ON keyed_by_index (b, a);
        CREATE UNIQUE INDEX f_usable_too ON keyed_by_index (a);
        """
    )
    setup_shard(conn, SHARD, [])
    assert one(conn, "SELECT relreplident FROM pg_class WHERE oid = 'keyed_by_index'::regclass") == "i"
    assert one(conn, "SELECT indexrelid::regclass::text FROM pg_index WHERE indisreplident") == "e_usable"
    spec = table_spec(published_schema(conn, SHARD), "public.keyed_by_index")
    assert (spec["replicaIdentity"], spec["primaryKey"]) == ("i", ["b", "a"])


def test_tables_without_a_key_are_refused_by_name(pg_conn: Conn) -> None:
    conn = pg_conn
    conn.execute(
        """
        CREATE TABLE has_key (id int4 PRIMARY KEY);
        CREATE TABLE no_key (x int4);
        CREATE TABLE nullable_unique (x int4 UNIQUE);
        CREATE TABLE full_with_index (x int4 NOT NULL);
        CREATE UNIQUE INDEX full_with_index_x ON full_with_index (x);
        ALTER TABLE full_with_index REPLICA IDENTITY FULL;
        CREATE TABLE nothing (id int4 PRIMARY KEY);
        ALTER TABLE nothing REPLICA IDENTITY NOTHING;
        """
    )
    with pytest.raises(UpstreamSetupError) as caught:
        setup_shard(conn, SHARD, [])
    message = str(caught.value)
    assert "has_key" not in message
    # Names are quoted so that the suggested statements can be pasted as they are.
    assert '"public"."no_key" has neither a primary key nor a unique index' in message
    assert '"public"."nullable_unique" has neither' in message
    assert 'REPLICA IDENTITY USING INDEX "full_with_index_x"' in message
    assert '"public"."nothing" has REPLICA IDENTITY NOTHING' in message
    assert "ADD PRIMARY KEY" in message
    assert one(conn, "SELECT to_regnamespace('zero_0')") is None  # rolled back


def test_partitioned_tables_are_refused(pg_conn: Conn) -> None:
    pg_conn.execute("CREATE TABLE parted (id int4 PRIMARY KEY) PARTITION BY RANGE (id)")
    pg_conn.execute("CREATE TABLE parted_1 PARTITION OF parted FOR VALUES FROM (0) TO (10)")
    with pytest.raises(UpstreamSetupError, match='"public"."parted" is a partitioned table'):
        setup_shard(pg_conn, SHARD, [])


# -- privileges -------------------------------------------------------------------------------


def test_a_non_superuser_gets_a_shard_without_ddl_detection(tldraw: Conn, make_role: Callable[..., str]) -> None:
    dsn = make_role("REPLICATION", create_on_database=True)
    with psycopg.connect(dsn, autocommit=True) as conn:
        check_upstream(conn)
        result = setup_shard(conn, SHARD, ["zero_data"])
        assert result == ShardSetup(SHARD, ("_zero_metadata_0", "zero_data"), False)
        assert setup_shard(conn, SHARD, ["zero_data"]) == result
        assert "public.file" in table_names(published_schema(conn, SHARD))
    assert one(tldraw, 'SELECT "ddlDetection" FROM zero_0."shardConfig"') is False
    assert event_triggers(tldraw) == {}

    # A superuser can turn detection on later.
    assert setup_shard(tldraw, SHARD, ["zero_data"]).ddl_detection is True
    assert one(tldraw, 'SELECT "ddlDetection" FROM zero_0."shardConfig"') is True


def test_a_non_superuser_cannot_publish_schema_public(tldraw: Conn, make_role: Callable[..., str]) -> None:
    with psycopg.connect(make_role("REPLICATION", create_on_database=True), autocommit=True) as conn:
        with pytest.raises(UpstreamSetupError, match="needs a superuser") as caught:
            setup_shard(conn, SHARD, [])
    assert "ZERO_APP_PUBLICATIONS" in str(caught.value)


# -- DDL detection ----------------------------------------------------------------------------


def test_ddl_emits_the_new_schema_inside_its_transaction(tldraw: Conn) -> None:
    conn = tldraw
    setup_shard(conn, SHARD, [])
    conn.execute("SELECT pg_create_logical_replication_slot('zt_ddl', 'pgoutput')")

    # DDL that leaves the published schema as it is emits nothing.
    conn.execute("CREATE SCHEMA other; CREATE TABLE other.scratch (x int4)")  # unpublished, no key
    conn.execute("""COMMENT ON TABLE "user" IS 'people'""")
    conn.execute("CREATE TEMP TABLE temporary (x int4)")
    # A rolled-back change leaves no message.
    with pytest.raises(psycopg.errors.DivisionByZero):
        with conn.transaction():
            conn.execute('ALTER TABLE "user" ADD COLUMN doomed int4')
            conn.execute("SELECT 1 / 0")
    assert ddl_messages(conn, "zt_ddl") == []

    with conn.transaction():
        conn.execute("""INSERT INTO "user" VALUES ('u1', 'n', 'e', 'a', 'c', 'f', 't', true, true, 1, 1, '')""")
        conn.execute('ALTER TABLE "user" ADD COLUMN x boolean')
    messages = ddl_messages(conn, "zt_ddl")
    assert [(transactional, prefix) for transactional, prefix, _ in messages] == [(True, PREFIX)]
    content = json.loads(messages[0][2])
    assert (content["type"], content["tag"]) == ("ddl", "ALTER TABLE")
    assert content["schema"] == published_schema(conn, SHARD)
    user = table_spec(content["schema"], "public.user")
    assert user["columns"][-1] == column("x", 24, *BOOL, False)

    # The native renderer sees a transactional message with our prefix.
    data = one(
        conn,
        """
        SELECT data FROM pg_logical_slot_peek_binary_changes(
          'zt_ddl', NULL, NULL, 'proto_version', '1', 'publication_names', '_zero_metadata_0', 'messages', 'true')
        WHERE get_byte(data, 0) = ascii('M')
        """,
    )
    (line,) = describe_replication_frames([b"w" + bytes(24) + data])
    assert "MESSAGE transactional=true lsn=" in line and f'prefix="{PREFIX}"' in line


def test_ddl_changing_keys_types_and_publications_is_detected(tldraw: Conn) -> None:
    conn = tldraw
    setup_shard(conn, SHARD, [])
    conn.execute("SELECT pg_create_logical_replication_slot('zt_ddl', 'pgoutput')")
    # Each statement with the tag of the message it must emit, None when the published schema
    # does not change.
    statements: list[tuple[str, str | None]] = [
        ("CREATE TABLE note (id text PRIMARY KEY, body text)", "CREATE TABLE"),
        ("ALTER TABLE note RENAME COLUMN body TO text", "ALTER TABLE"),
        ("CREATE TYPE color AS ENUM ('red')", None),  # CREATE TYPE does not even fire the trigger
        ("ALTER TABLE note ADD COLUMN color color", "ALTER TABLE"),
        ("ALTER TYPE color RENAME TO colour", "ALTER TYPE"),  # the column's typeName
        ("DROP TYPE colour CASCADE", "DROP TYPE"),  # drops the column
        ("DROP TABLE note", "DROP TABLE"),
        ("ALTER PUBLICATION _zero_public_0 SET (publish_via_partition_root = false)", None),  # no partitions
        ("ALTER PUBLICATION _zero_metadata_0 DROP TABLE zero_0.mutations", "ALTER PUBLICATION"),
        ("ALTER TABLE asset REPLICA IDENTITY USING INDEX asset_pkey", "ALTER TABLE"),
        ("ALTER TABLE asset DROP CONSTRAINT asset_pkey", "ALTER TABLE"),  # the identity index goes too
    ]
    for statement, _ in statements:
        conn.execute(statement)
    messages = [json.loads(content) for _, _, content in ddl_messages(conn, "zt_ddl")]
    assert [m["tag"] for m in messages] == [tag for _, tag in statements if tag is not None]
    assert "zero_0.mutations" not in table_names(messages[6]["schema"])
    assert [t["primaryKey"] for t in messages[-1]["schema"]["tables"] if t["name"] == "asset"] == [[]]


def test_ddl_by_a_role_that_cannot_read_the_shard_still_works(tldraw: Conn, make_role: Callable[..., str]) -> None:
    setup_shard(tldraw, SHARD, [])
    tldraw.execute("SELECT pg_create_logical_replication_slot('zt_ddl', 'pgoutput')")
    dsn = make_role()
    role = conninfo_to_dict(dsn)["user"]
    tldraw.execute(sql.SQL("GRANT CREATE ON SCHEMA public TO {}").format(sql.Identifier(str(role))))
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE by_role (id int4 PRIMARY KEY)")
    (message,) = ddl_messages(tldraw, "zt_ddl")
    assert "public.by_role" in table_names(json.loads(message[2])["schema"])


def test_a_half_removed_shard_does_not_break_ddl(tldraw: Conn) -> None:
    conn = tldraw
    setup_shard(conn, SHARD, [])
    warnings: list[str] = []
    conn.add_notice_handler(lambda d: warnings.append(f"{d.severity}: {d.message_primary}"))
    conn.execute('DROP TABLE zero_0."zcacheLastSchema"')
    conn.execute('ALTER TABLE "user" ADD COLUMN y int4')
    assert any(w.startswith("WARNING: zcache shard zero_0: no schema change message for ALTER TABLE") for w in warnings)
    # Dropping the shard schema by hand takes the event triggers with it.
    conn.execute("DROP SCHEMA zero_0 CASCADE")
    assert event_triggers(conn) == {}
    conn.execute('ALTER TABLE "user" ADD COLUMN z int4')


def test_extensions_install_and_drop_with_ddl_detection_on(tldraw: Conn) -> None:
    conn = tldraw
    if one(conn, "SELECT count(*) FROM pg_available_extensions WHERE name = 'citext'") == 0:
        pytest.skip("the citext extension is not installed")
    setup_shard(conn, SHARD, [])
    conn.execute("SELECT pg_create_logical_replication_slot('zt_ddl', 'pgoutput')")
    conn.execute("CREATE EXTENSION citext")  # its script runs COMMENT, which fires the trigger
    conn.execute("CREATE TABLE tag (name citext PRIMARY KEY, note citext)")
    conn.execute("DROP EXTENSION citext CASCADE")  # drops both columns
    messages = [json.loads(content) for _, _, content in ddl_messages(conn, "zt_ddl")]
    assert [m["tag"] for m in messages] == ["CREATE TABLE", "DROP EXTENSION"]
    assert [c["typeName"] for c in table_spec(messages[0]["schema"], "public.tag")["columns"]] == ["citext"] * 2
    assert table_spec(messages[-1]["schema"], "public.tag")["columns"] == []


def test_a_dump_of_a_set_up_database_restores(pg_cluster: PgServer, pg_dsn: str, tldraw: Conn) -> None:
    setup_shard(tldraw, SHARD, [])
    bindir = find_pg_binaries().bindir
    dump = subprocess.run([bindir / "pg_dump", "--dbname", pg_dsn], capture_output=True, check=True).stdout
    name = database_name("restored")
    restored_dsn = pg_cluster.create_database(name)
    try:
        subprocess.run(
            [bindir / "psql", "--quiet", "--set", "ON_ERROR_STOP=1", "--dbname", restored_dsn],
            input=dump,
            capture_output=True,
            check=True,
        )
        with psycopg.connect(restored_dsn, autocommit=True) as conn:
            assert schema_fingerprint(conn) == schema_fingerprint(tldraw)
            assert setup_shard(conn, SHARD, []).ddl_detection is True
            restored, original = published_schema(conn, SHARD), published_schema(tldraw, SHARD)
            assert table_names(restored) == table_names(original)
            # The restore creates "file" with "isDeleted" from the start: no missing value.
            (is_deleted,) = [c for c in table_spec(restored, "public.file")["columns"] if c["name"] == "isDeleted"]
            assert (is_deleted["hasMissing"], is_deleted["missing"]) == (False, None)
    finally:
        pg_cluster.drop_database(name)


def test_two_apps_share_a_database(tldraw: Conn) -> None:
    conn = tldraw
    other = ShardId("other", 0)
    setup_shard(conn, SHARD, ["zero_data"])
    setup_shard(conn, other, ["zero_data"])
    assert set(event_triggers(conn)) == {
        "zcache_zero_0_ddl_start",
        "zcache_zero_0_ddl_end",
        "zcache_zero_0_table_rewrite",
        "zcache_other_0_ddl_start",
        "zcache_other_0_ddl_end",
        "zcache_other_0_table_rewrite",
    }
    conn.execute("SELECT pg_create_logical_replication_slot('zt_ddl', 'pgoutput')")
    conn.execute("ALTER TABLE file ADD COLUMN x int4")
    assert sorted(prefix for _, prefix, _ in ddl_messages(conn, "zt_ddl")) == [
        "zcache/other/0/ddl",
        "zcache/zero/0/ddl",
    ]
    drop_shard(conn, other)
    assert set(event_triggers(conn)) == {"zcache_zero_0_ddl_start", "zcache_zero_0_ddl_end", "zcache_zero_0_table_rewrite"}
    assert table_names(published_schema(conn, SHARD))[-3:] == ["zero.permissions", "zero_0.clients", "zero_0.mutations"]


# -- replicas ---------------------------------------------------------------------------------


def test_record_replica_adds_a_complete_replica_row(tldraw: Conn) -> None:
    conn = tldraw
    setup_shard(conn, SHARD, [])
    schema = published_schema(conn, SHARD)
    first = record_replica(conn, SHARD, slot="zero_0_a", version="51il54o", schema=schema)
    second = record_replica(conn, SHARD, slot="zero_0_b", version="51il5a0", schema=schema)
    rows = conn.execute(
        """
        SELECT id, slot, version, "initialSchema"::text, "initialSyncContext"::text, "subscriberContext"
        FROM zero_0.replicas ORDER BY rank
        """
    ).fetchall()
    assert [(r[0], r[1], r[2], r[4], r[5]) for r in rows] == [
        (first, "zero_0_a", "51il54o", "{}", None),
        (second, "zero_0_b", "51il5a0", "{}", None),
    ]
    assert json.loads(rows[0][3]) == schema
    assert first != second and len(first) == 32


# -- drop -------------------------------------------------------------------------------------


def test_drop_shard_removes_everything_but_the_app_schema(tldraw: Conn) -> None:
    conn = tldraw
    setup_shard(conn, SHARD, [])
    conn.execute("SELECT pg_create_logical_replication_slot('zero_0_a', 'pgoutput')")
    conn.execute("SELECT pg_create_logical_replication_slot('zt_unrelated', 'pgoutput')")
    drop_shard(conn, SHARD)
    assert one(conn, "SELECT to_regnamespace('zero_0')") is None
    assert one(conn, "SELECT count(*) FROM pg_publication WHERE pubname LIKE '\\_zero%%'") == 0
    assert publication_tables(conn, "zero_data") == {"public.file", "public.file_state", "public.user"}
    assert event_triggers(conn) == {}
    assert [name for (name,) in conn.execute("SELECT slot_name FROM pg_replication_slots ORDER BY 1")] == [
        "zt_unrelated"
    ]
    assert one(conn, "SELECT count(*) FROM zero.permissions") == 1

    drop_shard(conn, SHARD)  # nothing left to drop
    assert setup_shard(conn, SHARD, []).ddl_detection is True  # and it can be set up again
