"""Replication under upstream faults and schema changes, against real Postgres.

(a) the walsender is terminated while streaming (also in the middle of a large transaction):
    the replicator reconnects and loses nothing;
(b) DDL the stream cannot express (a column type change; a table with rows added to an explicit
    app publication): with ZERO_AUTO_RESET on (the default) the replicator resyncs once and the
    replica equals upstream; with ZERO_AUTO_RESET=false it stops with a `ReplicatorError` that
    says why;
(c) a published table without a usable row key: setup refuses, naming the table;
(d) column rename, table rename, column drop, column add, a primary-key change, a dropped table,
    and new tables in the default publication (`_zero_public_0`), while streaming: followed in
    place (no resync); a new table that gets its key from a second statement (xfail); DDL that
    rewrites existing rows without streaming them — volatile or identity defaults, type changes
    with USING or of the typmod only, enum value renames (resynced), and a stable default (followed);
(e) TRUNCATE while streaming (one table, two tables, CASCADE, TRUNCATE then INSERT in one
    transaction).

A malformed frame is a unit-level concern (the Rust decoders and their fuzz targets) and is not
repeated here.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest
import trio

from tests.fixtures.replica_oracle import assert_replica_matches, emit_marker, open_replica
from tests.pg.test_replication import _config
from zcache.change_source.upstream import UpstreamSetupError
from zcache.replica.replicator import Replicator, ReplicatorError

CATCH_UP_TIMEOUT_S = 30


@asynccontextmanager
async def running(dsn: str, replica: Path, **env: str) -> AsyncIterator[Replicator]:
    async with trio.open_nursery() as nursery:
        replicator: Replicator = await nursery.start(Replicator(_config(dsn, replica, **env)).run)
        yield replicator
        nursery.cancel_scope.cancel()


async def caught_up(replicator: Replicator, conn: psycopg.Connection[Any]) -> None:
    marker = emit_marker(conn)
    with trio.fail_after(CATCH_UP_TIMEOUT_S):
        while replicator.statistics().watermark_lsn < marker:
            await trio.sleep(0.01)


def public(*tables: str) -> list[tuple[str, str]]:
    return [("public", t) for t in tables]


def replica_tables(replica: Path) -> set[str]:
    db = open_replica(replica)
    try:
        return {r[0] for r in db.execute("SELECT replica_name FROM _zcache_tables")}
    finally:
        db.close()


def _terminate_walsender(conn: psycopg.Connection[Any]) -> int:
    rows = conn.execute(
        "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots "
        "WHERE slot_name LIKE 'zero\\_0\\_%' AND active_pid IS NOT NULL"
    ).fetchall()
    return len(rows)


async def _wait_walsender(conn: psycopg.Connection[Any]) -> None:
    with trio.fail_after(CATCH_UP_TIMEOUT_S):
        while not conn.execute(
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name LIKE 'zero\\_0\\_%' AND active"
        ).fetchone()[0]:
            await trio.sleep(0.02)


# -- (a) ---------------------------------------------------------------------------------------------


async def test_a_terminated_walsender_is_reconnected_without_loss(
    pg_dsn: str, pg_conn: psycopg.Connection[Any], tmp_path: Path
) -> None:
    pg_conn.execute("CREATE TABLE t (id int4 PRIMARY KEY, v text, n int8)")
    pg_conn.execute("INSERT INTO t SELECT g, md5(g::text), g FROM generate_series(1, 100) g")
    replica = tmp_path / "replica.db"
    async with running(pg_dsn, replica) as replicator:
        await _wait_walsender(pg_conn)
        pg_conn.execute("UPDATE t SET v = 'before' WHERE id <= 10")
        await caught_up(replicator, pg_conn)

        # While idle.
        assert _terminate_walsender(pg_conn) == 1
        pg_conn.execute("UPDATE t SET v = 'while reconnecting' WHERE id BETWEEN 11 AND 20")
        pg_conn.execute("DELETE FROM t WHERE id BETWEEN 21 AND 25")
        await caught_up(replicator, pg_conn)
        assert replicator.statistics().reconnects >= 1

        # In the middle of a large transaction's stream: it is applied once, completely.
        await _wait_walsender(pg_conn)
        reconnects = replicator.statistics().reconnects
        rows = replicator.statistics().rows
        pg_conn.execute("INSERT INTO t SELECT g, repeat(md5(g::text), 4), g FROM generate_series(1000, 60000) g")
        with trio.fail_after(CATCH_UP_TIMEOUT_S):
            while replicator.statistics().rows == rows:  # the first batch of the transaction is applied
                await trio.sleep(0)
        assert _terminate_walsender(pg_conn) == 1
        pg_conn.execute("UPDATE t SET n = -n WHERE id % 1000 = 0")
        await caught_up(replicator, pg_conn)
        stats = replicator.statistics()
        assert stats.reconnects > reconnects
        assert stats.resyncs == 0
    assert_replica_matches(pg_conn, replica, public("t"))


# -- (b) ---------------------------------------------------------------------------------------------

_UNFOLLOWABLE = {
    # varchar → text: the column's type changes (Postgres rewrote its values, no row changes streamed).
    "type change": ("", "ALTER TABLE file ALTER COLUMN name TYPE text", "changed type"),
    # A table with rows joins an explicit app publication: its rows are not in the stream.
    "table added to the publication": ("app_pub", "ALTER PUBLICATION app_pub ADD TABLE other", "became replicated"),
}


def _create_unfollowable_schema(conn: psycopg.Connection[Any]) -> None:
    conn.execute("CREATE TABLE file (id text PRIMARY KEY, name varchar(40), size int8)")
    conn.execute("CREATE TABLE other (id int4 PRIMARY KEY, label text)")
    conn.execute("INSERT INTO file SELECT 'f' || g, 'name ' || g, g FROM generate_series(1, 50) g")
    conn.execute("INSERT INTO other SELECT g, 'label ' || g FROM generate_series(1, 30) g")
    conn.execute("CREATE PUBLICATION app_pub FOR TABLE file")


@pytest.mark.parametrize("case", list(_UNFOLLOWABLE))
async def test_unfollowable_ddl_resyncs_with_auto_reset(
    case: str, pg_dsn: str, pg_conn: psycopg.Connection[Any], tmp_path: Path
) -> None:
    publications, ddl, _ = _UNFOLLOWABLE[case]
    _create_unfollowable_schema(pg_conn)
    env = {"ZERO_APP_PUBLICATIONS": publications} if publications else {}
    replica = tmp_path / "replica.db"
    async with running(pg_dsn, replica, **env) as replicator:
        pg_conn.execute("UPDATE file SET size = -size WHERE id = 'f1'")
        await caught_up(replicator, pg_conn)
        with pg_conn.transaction():
            pg_conn.execute("UPDATE file SET name = 'in the ddl transaction' WHERE id = 'f2'")
            pg_conn.execute(ddl)
        pg_conn.execute("UPDATE file SET name = 'after the ddl' WHERE id = 'f3'")
        pg_conn.execute("UPDATE other SET label = 'after the ddl' WHERE id = 3")
        await caught_up(replicator, pg_conn)
        stats = replicator.statistics()
        assert stats.resyncs == 1
    tables = ["file", "other"] if case == "table added to the publication" or not publications else ["file"]
    assert_replica_matches(pg_conn, replica, public(*tables))
    assert set(tables) <= replica_tables(replica)
    slots = pg_conn.execute("SELECT count(*) FROM pg_replication_slots WHERE slot_name LIKE 'zero\\_0\\_%'").fetchone()
    assert slots == (1,)


@pytest.mark.parametrize("case", list(_UNFOLLOWABLE))
async def test_unfollowable_ddl_stops_without_auto_reset(
    case: str, pg_dsn: str, pg_conn: psycopg.Connection[Any], tmp_path: Path
) -> None:
    publications, ddl, reason = _UNFOLLOWABLE[case]
    _create_unfollowable_schema(pg_conn)
    env = {"ZERO_AUTO_RESET": "false"} | ({"ZERO_APP_PUBLICATIONS": publications} if publications else {})
    replica = tmp_path / "replica.db"
    with pytest.RaisesGroup(ReplicatorError, flatten_subgroups=True) as raised:
        async with running(pg_dsn, replica, **env) as replicator:
            await caught_up(replicator, pg_conn)
            before = replicator.statistics()
            pg_conn.execute(ddl)
            pg_conn.execute("UPDATE file SET name = 'after the ddl' WHERE id = 'f3'")
            with trio.fail_after(CATCH_UP_TIMEOUT_S):
                await trio.sleep_forever()  # until the replicator fails and cancels this
    message = str(raised.value.exceptions[0])
    assert reason in message and "ZERO_AUTO_RESET" in message, message
    assert replicator.statistics().resyncs == 0
    # The replica stays as it was before the DDL, for an operator to look at.
    assert replicator.statistics().watermark_lsn == before.watermark_lsn


# -- (c) ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "ddl",
    [
        "CREATE TABLE nokey (a int4, b text)",
        "CREATE TABLE nokey (a int4 UNIQUE, b text)",  # unique but nullable
        "CREATE TABLE nokey (a int4 NOT NULL, b text); CREATE UNIQUE INDEX ON nokey (a) WHERE a > 0",
        "CREATE TABLE nokey (a int4 NOT NULL UNIQUE, b text); ALTER TABLE nokey REPLICA IDENTITY FULL",
    ],
)
async def test_a_table_without_a_row_key_is_refused_by_name(
    ddl: str, pg_dsn: str, pg_conn: psycopg.Connection[Any], tmp_path: Path
) -> None:
    pg_conn.execute("CREATE TABLE good (id int4 PRIMARY KEY)")
    pg_conn.execute(ddl)
    replica = tmp_path / "replica.db"
    with pytest.raises(UpstreamSetupError, match="nokey"):
        await Replicator(_config(pg_dsn, replica)).run()
    assert not replica.exists()
    assert pg_conn.execute("SELECT count(*) FROM pg_replication_slots").fetchone() == (0,)


# -- (d) ---------------------------------------------------------------------------------------------


async def test_followable_ddl_while_streaming_needs_no_resync(
    pg_dsn: str, pg_conn: psycopg.Connection[Any], tmp_path: Path
) -> None:
    pg_conn.execute("CREATE TABLE doc (id int4 PRIMARY KEY, title text, body text, n int4)")
    pg_conn.execute("INSERT INTO doc SELECT g, 'title ' || g, 'body ' || g, g FROM generate_series(1, 40) g")
    replica = tmp_path / "replica.db"
    async with running(pg_dsn, replica) as replicator:
        pg_conn.execute("UPDATE doc SET n = -n WHERE id = 1")
        # Column rename, with writes before and after in the same transaction.
        with pg_conn.transaction():
            pg_conn.execute("UPDATE doc SET title = 'pre-rename' WHERE id = 2")
            pg_conn.execute("ALTER TABLE doc RENAME COLUMN title TO heading")
            pg_conn.execute("UPDATE doc SET heading = 'post-rename' WHERE id = 3")
        # Table rename.
        pg_conn.execute("ALTER TABLE doc RENAME TO document")
        pg_conn.execute("UPDATE document SET body = 'after the table rename' WHERE id = 4")
        # Column drop.
        pg_conn.execute("ALTER TABLE document DROP COLUMN body")
        pg_conn.execute("INSERT INTO document (id, heading, n) VALUES (100, 'after the drop', 100)")
        # Column add, with a default existing rows read.
        pg_conn.execute("ALTER TABLE document ADD COLUMN flag bool NOT NULL DEFAULT true, ADD COLUMN note text")
        pg_conn.execute("UPDATE document SET flag = false, note = 'added' WHERE id = 5")
        # A new table in the public schema (the default publication), filled in its creating
        # transaction and afterwards.
        with pg_conn.transaction():
            pg_conn.execute("CREATE TABLE fresh (id text PRIMARY KEY, v jsonb, at timestamptz)")
            pg_conn.execute("INSERT INTO fresh VALUES ('a', '{\"x\": 1}', now())")
        pg_conn.execute("INSERT INTO fresh VALUES ('b', '[1, 2]', '2001-02-03 04:05:06+07')")
        pg_conn.execute("UPDATE fresh SET v = 'null' WHERE id = 'a'")
        # A primary-key change, then writes by the new key.
        pg_conn.execute("ALTER TABLE document ADD COLUMN code int4")
        pg_conn.execute("UPDATE document SET code = id * 10")
        pg_conn.execute("ALTER TABLE document ALTER COLUMN code SET NOT NULL, DROP CONSTRAINT doc_pkey, ADD PRIMARY KEY (code)")
        pg_conn.execute("UPDATE document SET heading = 'by the new key' WHERE code = 60")
        pg_conn.execute("DELETE FROM document WHERE code = 70")
        # A dropped table.
        pg_conn.execute("CREATE TABLE doomed (id int4 PRIMARY KEY)")
        pg_conn.execute("INSERT INTO doomed VALUES (1)")
        pg_conn.execute("DROP TABLE doomed")
        await caught_up(replicator, pg_conn)
        stats = replicator.statistics()
        assert stats.resyncs == 0
    assert_replica_matches(pg_conn, replica, public("document", "fresh"))
    assert replica_tables(replica) == {"document", "fresh", "zero.permissions", "zero_0.clients", "zero_0.mutations"}




@pytest.mark.parametrize(
    ("setup", "ddl"),
    [
        pytest.param(
            "CREATE TABLE doc (id int4 PRIMARY KEY, v text)",
            "ALTER TABLE doc ADD COLUMN r float8 DEFAULT random()",
            id="add column, volatile default",
        ),
        pytest.param(
            "CREATE TABLE doc (id int4 PRIMARY KEY, v text)",
            "ALTER TABLE doc ADD COLUMN u uuid NOT NULL DEFAULT gen_random_uuid()",
            id="add column, gen_random_uuid default",
        ),
        pytest.param(
            "CREATE TABLE doc (id int4 PRIMARY KEY, v text)",
            "ALTER TABLE doc ADD COLUMN n int8 GENERATED ALWAYS AS IDENTITY",
            id="add identity column",
        ),
        pytest.param(
            "CREATE TABLE doc (id int4 PRIMARY KEY, v text)",
            "ALTER TABLE doc ALTER COLUMN v TYPE text USING upper(v)",
            id="same type, USING",
        ),
        pytest.param(
            "CREATE TABLE doc (id int4 PRIMARY KEY, v numeric(10,4))",
            "ALTER TABLE doc ALTER COLUMN v TYPE numeric(10,2)",
            id="numeric scale",
        ),
        pytest.param(
            "CREATE TABLE doc (id int4 PRIMARY KEY, v timestamp(6))",
            "ALTER TABLE doc ALTER COLUMN v TYPE timestamp(0)",
            id="timestamp precision",
        ),
        pytest.param(
            "CREATE TABLE doc (id int4 PRIMARY KEY, v char(3))",
            "ALTER TABLE doc ALTER COLUMN v TYPE char(6)",
            id="char(n) length",
        ),
        pytest.param(
            "CREATE TYPE mood AS ENUM ('sad', 'ok'); CREATE TABLE doc (id int4 PRIMARY KEY, v mood)",
            "ALTER TYPE mood RENAME VALUE 'sad' TO 'blue'",
            id="enum value rename",  # the labels are in the published schema: a lost label resyncs
        ),
        pytest.param(
            "CREATE TABLE doc (id int4 PRIMARY KEY, v text)",
            "ALTER TABLE doc ADD COLUMN at timestamptz NOT NULL DEFAULT now()",
            id="add column, stable default",  # evaluated once: attmissingval, followed in place
        ),
    ],
)
async def test_ddl_that_rewrites_rows(
    setup: str, ddl: str, pg_dsn: str, pg_conn: psycopg.Connection[Any], tmp_path: Path
) -> None:
    """DDL after which upstream rows read differently although no row change is streamed: the replica
    must follow it (a resync is fine) rather than keep stale values."""
    pg_conn.execute(setup)
    value = "'sad'" if "mood" in setup else "'2020-01-01 00:00:00.7'" if "timestamp" in setup else "'1.23456'" if "numeric" in setup else "'ab'"
    pg_conn.execute(f"INSERT INTO doc SELECT g, {value} FROM generate_series(1, 5) g")
    replica = tmp_path / "replica.db"
    async with running(pg_dsn, replica) as replicator:
        pg_conn.execute(ddl)
        pg_conn.execute("INSERT INTO doc (id) VALUES (100)")
        await caught_up(replicator, pg_conn)
    assert_replica_matches(pg_conn, replica, public("doc"))




@pytest.mark.parametrize(
    "ddl",
    [
        # A key added by a second statement, as many migration tools write it.
        ["CREATE TABLE later (id int4 NOT NULL, v text)", "ALTER TABLE later ADD PRIMARY KEY (id)"],
        ["CREATE TABLE later (id int4 NOT NULL, v text)", "ALTER TABLE later ADD CONSTRAINT later_pkey PRIMARY KEY (id)"],
    ],
    ids=["add primary key", "add constraint"],
)
async def test_a_table_created_then_given_a_key_in_one_transaction(
    ddl: list[str], pg_dsn: str, pg_conn: psycopg.Connection[Any], tmp_path: Path
) -> None:
    pg_conn.execute("CREATE TABLE doc (id int4 PRIMARY KEY)")
    replica = tmp_path / "replica.db"
    async with running(pg_dsn, replica) as replicator:
        with pg_conn.transaction():
            for statement in ddl:
                pg_conn.execute(statement)
            pg_conn.execute("INSERT INTO later VALUES (1, 'one')")
        pg_conn.execute("INSERT INTO later VALUES (2, 'two')")
        await caught_up(replicator, pg_conn)
        assert replicator.statistics().resyncs == 0
    assert_replica_matches(pg_conn, replica, public("doc", "later"))


async def test_a_keyless_table_created_while_streaming_is_skipped_until_it_has_a_key(
    pg_dsn: str, pg_conn: psycopg.Connection[Any], tmp_path: Path
) -> None:
    """A keyless table in the publication cannot be replicated; replication of the others goes on
    and its rows are skipped. Once the operator gives it a key, its rows (already upstream, never
    streamed as replicable changes) arrive through a resync."""
    pg_conn.execute("CREATE TABLE doc (id int4 PRIMARY KEY)")
    replica = tmp_path / "replica.db"
    async with running(pg_dsn, replica) as replicator:
        pg_conn.execute("CREATE TABLE later (id int4 NOT NULL, v text)")
        pg_conn.execute("INSERT INTO later VALUES (1, 'one')")
        pg_conn.execute("INSERT INTO doc VALUES (1)")
        await caught_up(replicator, pg_conn)
        assert replicator.statistics().resyncs == 0
        assert_replica_matches(pg_conn, replica, public("doc"))
        pg_conn.execute("ALTER TABLE later ADD PRIMARY KEY (id)")
        pg_conn.execute("INSERT INTO later VALUES (2, 'two')")
        await caught_up(replicator, pg_conn)
        assert replicator.statistics().resyncs == 1
    assert_replica_matches(pg_conn, replica, public("doc", "later"))


# -- (e) ---------------------------------------------------------------------------------------------


async def test_truncate_while_streaming(pg_dsn: str, pg_conn: psycopg.Connection[Any], tmp_path: Path) -> None:
    pg_conn.execute("CREATE TABLE a (id int4 PRIMARY KEY, v text)")
    pg_conn.execute("CREATE TABLE b (id int4 PRIMARY KEY, v text)")
    pg_conn.execute("CREATE TABLE parent (id int4 PRIMARY KEY)")
    pg_conn.execute("CREATE TABLE child (id int4 PRIMARY KEY, parent int4 REFERENCES parent)")
    fill = [
        "INSERT INTO a SELECT g, 'a' || g FROM generate_series(1, 200) g ON CONFLICT DO NOTHING",
        "INSERT INTO b SELECT g, 'b' || g FROM generate_series(1, 200) g ON CONFLICT DO NOTHING",
        "INSERT INTO parent SELECT g FROM generate_series(1, 20) g ON CONFLICT DO NOTHING",
        "INSERT INTO child SELECT g, g % 20 + 1 FROM generate_series(1, 50) g ON CONFLICT DO NOTHING",
    ]
    for statement in fill:
        pg_conn.execute(statement)
    replica = tmp_path / "replica.db"
    tables = public("a", "b", "parent", "child")
    async with running(pg_dsn, replica) as replicator:
        pg_conn.execute("TRUNCATE a")
        await caught_up(replicator, pg_conn)
        assert_replica_matches(pg_conn, replica, tables)

        pg_conn.execute(fill[0])
        pg_conn.execute("TRUNCATE a, b")
        pg_conn.execute("INSERT INTO b VALUES (1, 'after')")
        await caught_up(replicator, pg_conn)
        assert_replica_matches(pg_conn, replica, tables)

        with pg_conn.transaction():
            pg_conn.execute(fill[0])
            pg_conn.execute("UPDATE a SET v = 'updated' WHERE id < 10")
            pg_conn.execute("TRUNCATE a")
            pg_conn.execute("INSERT INTO a VALUES (7, 'after the truncate, same transaction')")
        pg_conn.execute("TRUNCATE parent CASCADE")
        await caught_up(replicator, pg_conn)
        assert_replica_matches(pg_conn, replica, tables)

        # A rolled-back TRUNCATE leaves nothing.
        for statement in fill:
            pg_conn.execute(statement)
        with pg_conn.transaction(force_rollback=True):
            pg_conn.execute("TRUNCATE a, b, parent, child")
        await caught_up(replicator, pg_conn)
        assert replicator.statistics().resyncs == 0
    assert_replica_matches(pg_conn, replica, tables)
