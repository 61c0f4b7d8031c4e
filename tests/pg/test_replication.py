"""Replication end to end against real Postgres: initial sync, streaming, restart, DDL, resync.

The oracle is Postgres itself: after every step the replica's rows must equal upstream's, row for
row, with values mapped as zero-cache maps them (booleans as 0/1, bigints as integers).
"""

from __future__ import annotations

import shutil
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import psycopg
import pytest
import trio

from zcache import demo_data, migrations
from zcache.config import load_config
from zcache.replica.replicator import Replicator

TLDRAW_TABLES = ("user", "file", "file_state", "asset", "user_mutation_number")
CATCH_UP_TIMEOUT_S = 20


def _config(dsn: str, replica: Path, **env: str):
    return load_config([], {"ZERO_UPSTREAM_DB": dsn, "ZERO_REPLICA_FILE": str(replica), **env})


@asynccontextmanager
async def running_replicator(dsn: str, replica: Path) -> AsyncIterator[Replicator]:
    async with trio.open_nursery() as nursery:
        replicator = await nursery.start(Replicator(_config(dsn, replica)).run)
        yield replicator
        nursery.cancel_scope.cancel()


async def wait_caught_up(replicator: Replicator, conn: psycopg.Connection) -> None:
    """Waits until the replica has everything upstream committed before this call.

    A transactional logical message is a transaction of its own in the stream; once the
    replica's watermark passes its LSN, every earlier commit has been applied.
    """
    row = conn.execute("SELECT pg_logical_emit_message(true, 'zcache-test', 'marker')").fetchone()
    assert row is not None
    marker = int(str(row[0]).split("/")[0], 16) << 32 | int(str(row[0]).split("/")[1], 16)
    with trio.fail_after(CATCH_UP_TIMEOUT_S):
        while replicator.statistics().watermark_lsn < marker:
            await trio.sleep(0.02)


def upstream_rows(conn: psycopg.Connection, table: str) -> list[tuple[object, ...]]:
    columns = conn.execute(
        "SELECT attname, atttypid::regtype::text FROM pg_attribute "
        "WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
        [f'public."{table}"'],
    ).fetchall()
    select = ", ".join(
        f'"{name}"::int' if type_name == "boolean" else f'"{name}"' for name, type_name in columns
    )
    return sorted(conn.execute(f'SELECT {select} FROM public."{table}"').fetchall(), key=repr)


def replica_rows(replica: Path, table: str, columns: int) -> list[tuple[object, ...]]:
    with sqlite3.connect(f"file:{replica}?mode=ro", uri=True) as db:
        names = [r[1] for r in db.execute(f'PRAGMA table_info("{table}")') if r[1] != "_0_version"]
        assert len(names) == columns, f"{table}: replica columns {names}"
        select = ", ".join(f'"{n}"' for n in names)
        return sorted(db.execute(f'SELECT {select} FROM "{table}"').fetchall(), key=repr)


def assert_replica_equals_upstream(conn: psycopg.Connection, replica: Path, tables=TLDRAW_TABLES) -> None:
    for table in tables:
        expected = upstream_rows(conn, table)
        width = len(expected[0]) if expected else len(
            conn.execute(f'SELECT * FROM public."{table}" LIMIT 0').description or []
        )
        assert replica_rows(replica, table, width) == expected, table


@pytest.fixture
def tldraw_db(pg_dsn: str) -> str:
    migrations.migrate(pg_dsn)
    demo_data.load_demo_data(pg_dsn, users=20)
    return pg_dsn


async def test_initial_sync_then_streamed_changes(tldraw_db: str, pg_conn: psycopg.Connection, tmp_path: Path) -> None:
    replica = tmp_path / "replica.db"
    async with running_replicator(tldraw_db, replica) as replicator:
        assert_replica_equals_upstream(pg_conn, replica)

        pg_conn.execute("UPDATE file SET name = 'renamed', \"updatedAt\" = 42 WHERE id = 'f0000001'")
        pg_conn.execute("DELETE FROM file_state WHERE \"fileId\" = 'f0000002'")
        pg_conn.execute(
            "INSERT INTO \"user\" (id, name, email, avatar, color, \"exportFormat\", \"exportTheme\", "
            "\"exportBackground\", \"exportPadding\", \"createdAt\", \"updatedAt\", flags) "
            "VALUES ('u_new', 'New', 'n@example.com', '', 'red', 'png', 'light', true, false, 1, 2, '')"
        )
        # A primary-key change: file_state's key is (userId, fileId).
        pg_conn.execute("UPDATE file_state SET \"userId\" = 'u_new' WHERE \"userId\" = 'u000003' AND \"fileId\" = 'f0000003'")
        with pg_conn.transaction():
            pg_conn.execute("INSERT INTO asset (\"objectName\", \"fileId\", \"userId\") VALUES ('a1', 'f0000004', 'u000004')")
            pg_conn.execute("UPDATE \"user\" SET \"isSnapMode\" = true, locale = NULL WHERE id = 'u000005'")
        pg_conn.execute("TRUNCATE asset")
        pg_conn.execute("INSERT INTO asset (\"objectName\", \"fileId\", \"userId\") VALUES ('a2', 'f0000005', NULL)")
        await wait_caught_up(replicator, pg_conn)
        assert_replica_equals_upstream(pg_conn, replica)
        stats = replicator.statistics()
        assert stats.transactions >= 7
        assert stats.resyncs == 0

        # Lag and retained WAL are measurable; once caught up and acknowledged, the replica is
        # at most the marker transaction behind.
        with trio.fail_after(CATCH_UP_TIMEOUT_S):
            while (health := await replicator.slot_health()).unconfirmed_bytes > 1024:
                await trio.sleep(0.05)
        assert health.wal_status in ("reserved", "extended")
        assert health.retained_wal_bytes >= health.unconfirmed_bytes >= 0
        assert health.replica_lag_bytes >= 0


async def test_restart_resumes_from_the_watermark_without_a_new_sync(
    tldraw_db: str, pg_conn: psycopg.Connection, tmp_path: Path
) -> None:
    replica = tmp_path / "replica.db"
    async with running_replicator(tldraw_db, replica) as replicator:
        pg_conn.execute("UPDATE file SET name = 'before restart' WHERE id = 'f0000010'")
        await wait_caught_up(replicator, pg_conn)
    slot_before = pg_conn.execute("SELECT array_agg(slot_name) FROM pg_replication_slots").fetchone()

    # Changes made while zcache is down arrive after the restart.
    pg_conn.execute("UPDATE file SET name = 'while down' WHERE id = 'f0000011'")
    pg_conn.execute("DELETE FROM file_state WHERE \"userId\" = 'u000012'")

    async with running_replicator(tldraw_db, replica) as replicator:
        await wait_caught_up(replicator, pg_conn)
        assert_replica_equals_upstream(pg_conn, replica)
        assert replicator.statistics().resyncs == 0
    assert pg_conn.execute("SELECT array_agg(slot_name) FROM pg_replication_slots").fetchone() == slot_before


async def test_tldraw_migrations_019_020_while_streaming(pg_dsn: str, pg_conn: psycopg.Connection, tmp_path: Path) -> None:
    early = tmp_path / "early-migrations"
    early.mkdir()
    for f in migrations.read_migrations(migrations.default_directory()):
        if f.number < 19:
            shutil.copy(f.path, early / f.filename)
    migrations.migrate(pg_dsn, directory=early)
    for n in (1, 2):
        pg_conn.execute(
            "INSERT INTO \"user\" (id, name, email, avatar, color, \"exportFormat\", \"exportTheme\", "
            "\"exportBackground\", \"exportPadding\", \"createdAt\", \"updatedAt\", flags) "
            "VALUES (%s, 'U', 'u@example.com', '', 'red', 'png', 'light', true, false, 1, 2, '')",
            [f"u00000{n}"],
        )
    replica = tmp_path / "replica.db"
    async with running_replicator(pg_dsn, replica) as replicator:
        pg_conn.execute("UPDATE \"user\" SET name = 'before ddl' WHERE id = 'u000001'")
        migrations.migrate(pg_dsn)  # 019 and 020: ALTER TABLE "user" ADD COLUMN …
        pg_conn.execute("UPDATE \"user\" SET \"areKeyboardShortcutsEnabled\" = true, \"showUiLabels\" = false WHERE id = 'u000002'")
        await wait_caught_up(replicator, pg_conn)
        assert_replica_equals_upstream(pg_conn, replica)
        assert replicator.statistics().resyncs == 0


async def test_a_dropped_slot_leads_to_a_fresh_initial_sync(tldraw_db: str, pg_conn: psycopg.Connection, tmp_path: Path) -> None:
    replica = tmp_path / "replica.db"
    async with running_replicator(tldraw_db, replica) as replicator:
        await wait_caught_up(replicator, pg_conn)
        old_slot = replicator.statistics()
    # The walsender exits shortly after our Terminate message, not with it: wait until the slot is
    # released before dropping it (a busy machine can take a while).
    with trio.fail_after(CATCH_UP_TIMEOUT_S):
        while pg_conn.execute("SELECT count(*) FROM pg_replication_slots WHERE active").fetchone() != (0,):
            await trio.sleep(0.05)
    pg_conn.execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots")
    pg_conn.execute("UPDATE file SET name = 'after slot loss' WHERE id = 'f0000001'")
    async with running_replicator(tldraw_db, replica) as replicator:
        await wait_caught_up(replicator, pg_conn)
        assert_replica_equals_upstream(pg_conn, replica)
    assert old_slot.state_version
    slots = pg_conn.execute("SELECT count(*) FROM pg_replication_slots").fetchone()
    assert slots == (1,)
