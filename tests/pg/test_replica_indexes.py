"""Indexes the view syncer asks for, built by the real replicator's writer between batches:
used by SQLite, kept across a restart, dropped before upstream DDL drops one of their columns,
and built again in the new replica after a resync."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import psycopg
import trio

from tests.pg.test_replication import (
    CATCH_UP_TIMEOUT_S,
    _config,
    assert_replica_equals_upstream,
    tldraw_db,  # noqa: F401 - fixture
    wait_caught_up,
)
from zcache.replica.replicator import Replicator


def replica_indexes(replica: Path) -> list[tuple[str, list[str]]]:
    with sqlite3.connect(f"file:{replica}?mode=ro", uri=True) as db:
        names = db.execute(
            "SELECT name, tbl_name FROM sqlite_master WHERE type = 'index' AND name LIKE '\\_zcache\\_idx\\_%' ESCAPE '\\' ORDER BY 1"
        ).fetchall()
        return [(t, [c for (c,) in db.execute("SELECT name FROM pragma_index_info(?) ORDER BY seqno", [n])]) for n, t in names]


def plan(replica: Path, sql: str) -> str:
    with sqlite3.connect(f"file:{replica}?mode=ro", uri=True) as db:
        return " / ".join(r[3] for r in db.execute(f"EXPLAIN QUERY PLAN {sql}", ["u000001"]))


async def wait_for(predicate, what: str) -> None:
    with trio.fail_after(CATCH_UP_TIMEOUT_S):
        while not predicate():
            await trio.sleep(0.05)


async def run_replicator(dsn: str, replica: Path, body) -> None:
    async with trio.open_nursery() as nursery:
        replicator = await nursery.start(Replicator(_config(dsn, replica, ZERO_AUTO_RESET="true")).run)
        await body(replicator)
        nursery.cancel_scope.cancel()


async def test_requested_indexes_through_ddl_restart_and_resync(tldraw_db: str, pg_conn: psycopg.Connection, tmp_path: Path) -> None:  # noqa: F811
    replica = tmp_path / "replica.db"
    by_owner = 'SELECT * FROM "file" WHERE "ownerId" = ?'

    async def build(replicator: Replicator) -> None:
        assert "ownerId" not in plan(replica, by_owner)
        replicator.request_indexes([("file", ["ownerId"]), ("file", ["name", "id"]), ("no_such_table", ["x"])])
        replicator.request_indexes([("file", ["ownerId"])])  # deduplicated
        await wait_for(lambda: len(replica_indexes(replica)) == 2, "indexes built")
        assert replica_indexes(replica) == [("file", ["name", "id"]), ("file", ["ownerId"])]
        assert "USING INDEX" in plan(replica, by_owner) and "ownerId" in plan(replica, by_owner)

        # Upstream drops an indexed column: the writer drops the index first, no resync.
        pg_conn.execute('ALTER TABLE file DROP COLUMN name')
        pg_conn.execute("UPDATE file SET \"updatedAt\" = 7 WHERE id = 'f0000001'")
        await wait_caught_up(replicator, pg_conn)
        assert replicator.statistics().resyncs == 0
        assert replica_indexes(replica) == [("file", ["ownerId"])]
        assert_replica_equals_upstream(pg_conn, replica, tables=("file",))

    await run_replicator(tldraw_db, replica, build)

    async def restart_then_resync(replicator: Replicator) -> None:
        # Recorded in the replica: still there after a restart.
        assert replica_indexes(replica) == [("file", ["ownerId"])]
        # A table rewrite upstream needs a resync: the new replica gets the index again.
        pg_conn.execute("ALTER TABLE asset ADD COLUMN rewritten float8 DEFAULT random()")
        await wait_for(lambda: replicator.statistics().resyncs == 1, "resync")
        pg_conn.execute("UPDATE file SET \"updatedAt\" = 8 WHERE id = 'f0000002'")
        await wait_caught_up(replicator, pg_conn)
        await wait_for(lambda: replica_indexes(replica) == [("file", ["ownerId"])], "index rebuilt after the resync")
        assert "ownerId" in plan(replica, by_owner)

    await run_replicator(tldraw_db, replica, restart_then_resync)
