"""The initial sync's Rust copy path (`_native.InitialSync.copy_tables`) against real Postgres:
it reads in the slot's exported snapshot, and its failures are typed and name what to check.
The rows it copies are compared with upstream by test_replication.py (which goes through
`run_initial_sync`, hence this path, as the throwaway cluster has no TLS)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from zcache import _native
from zcache.change_source import initial_sync, upstream
from tests.fixtures.fix_pg import PgServer

SHARD = upstream.ShardId("zero", 0)


@pytest.fixture
def items(pg_conn: psycopg.Connection[Any]) -> upstream.ShardSetup:
    pg_conn.execute("CREATE TABLE item (id int PRIMARY KEY, label text)")
    pg_conn.execute("INSERT INTO item SELECT i, 'row ' || i FROM generate_series(1, 5000) i")
    return upstream.setup_shard(pg_conn, SHARD, [])


@pytest.fixture
def slot(pg_dsn: str, items: upstream.ShardSetup) -> Iterator[tuple[str, str]]:
    """A slot with its exported snapshot (valid while the replication connection is open)."""
    name = f"{SHARD.slot_prefix}copytest"
    conn, _, snapshot = initial_sync._create_slot(pg_dsn, name)
    try:
        yield name, snapshot
    finally:
        conn.close()
        initial_sync._drop_slot_quietly(pg_dsn, name)


def _sync(pg_conn: psycopg.Connection[Any], setup: upstream.ShardSetup, staging: Path) -> tuple[_native.InitialSync, int]:
    schema = upstream.published_schema(pg_conn, setup.shard)
    sync = _native.InitialSync(
        str(staging),
        json.dumps(schema),
        consistent_point=1 << 32,
        slot="zero_0_copytest",
        publications=list(setup.publications),
        app_id=SHARD.app_id,
        shard_num=SHARD.shard_num,
        ddl_detection=setup.ddl_detection,
    )
    (oid,) = [int(t["oid"]) for t in schema["tables"] if t["name"] == "item"]
    return sync, oid


def _params(pg_conn: psycopg.Connection[Any], **override: object) -> dict[str, object]:
    params = initial_sync._rust_connect_params(pg_conn)
    assert params is not None, "the throwaway cluster has no TLS"
    return {**params, **override}


def test_the_copy_reads_the_exported_snapshot(
    pg_conn: psycopg.Connection[Any], items: upstream.ShardSetup, slot: tuple[str, str], tmp_path: Path
) -> None:
    _, snapshot = slot
    # Committed after the slot's consistent point: the stream delivers these, so the copy must not.
    pg_conn.execute("INSERT INTO item VALUES (5001, 'after the slot')")
    pg_conn.execute("UPDATE item SET label = 'changed' WHERE id = 1")
    pg_conn.execute("DELETE FROM item WHERE id = 2")
    sync, oid = _sync(pg_conn, items, tmp_path / "r.staging")
    sync.copy_tables([oid], snapshot=snapshot, workers=2, **_params(pg_conn))
    assert sync.tables_done == 1
    assert sync.rows == 5000
    sync.finish(str(tmp_path / "r.db"))
    with sqlite3.connect(tmp_path / "r.db") as db:
        rows = dict(db.execute('SELECT "id", "label" FROM "item"').fetchall())
    assert rows == {i: f"row {i}" for i in range(1, 5001)}


def test_a_refused_connection_is_an_upstream_error(
    pg_conn: psycopg.Connection[Any], items: upstream.ShardSetup, slot: tuple[str, str], tmp_path: Path
) -> None:
    with socket_that_refuses() as port:
        sync, oid = _sync(pg_conn, items, tmp_path / "r.staging")
        with pytest.raises(_native.UpstreamError, match=rf"connecting on .*:{port}/.* failed.*reachable"):
            sync.copy_tables([oid], snapshot=slot[1], workers=1, **_params(pg_conn, host="127.0.0.1", port=port))


def test_an_unknown_role_is_an_authentication_failure(
    pg_conn: psycopg.Connection[Any], items: upstream.ShardSetup, slot: tuple[str, str], tmp_path: Path
) -> None:
    sync, oid = _sync(pg_conn, items, tmp_path / "r.staging")
    with pytest.raises(_native.UpstreamError, match=r"authentication failed for zt_no_such_role@.*ZERO_UPSTREAM_DB"):
        sync.copy_tables([oid], snapshot=slot[1], workers=1, **_params(pg_conn, user="zt_no_such_role"))


def test_a_gone_snapshot_says_the_sync_must_start_over(
    pg_dsn: str, pg_conn: psycopg.Connection[Any], items: upstream.ShardSetup, tmp_path: Path
) -> None:
    name = f"{SHARD.slot_prefix}gone"
    conn, _, snapshot = initial_sync._create_slot(pg_dsn, name)
    conn.close()  # the exported snapshot goes with its connection
    try:
        sync, oid = _sync(pg_conn, items, tmp_path / "r.staging")
        with pytest.raises(_native.UpstreamError, match=rf"snapshot {snapshot} cannot be imported.*start over"):
            sync.copy_tables([oid], snapshot=snapshot, workers=1, **_params(pg_conn))
    finally:
        initial_sync._drop_slot_quietly(pg_dsn, name)


@contextlib.contextmanager
def password_role(pg_cluster: PgServer, pg_conn: psycopg.Connection[Any], method: str) -> Iterator[tuple[str, str]]:
    """A login role whose password is stored for `method`, which pg_hba.conf then demands of it
    (over TCP and the Unix socket); removed afterwards. Only the throwaway cluster's pg_hba.conf
    can be changed."""
    if pg_cluster.cluster is None:
        pytest.skip("needs the throwaway cluster (its pg_hba.conf)")
    role, password = f"zt_{method.replace('-', '_')}_{os.urandom(3).hex()}", "pass wörd"
    hba = pg_cluster.cluster.data_dir / "pg_hba.conf"
    original = hba.read_text()
    encryption = "md5" if method == "md5" else "scram-sha-256"
    pg_conn.execute(sql.SQL("SET password_encryption = {}").format(sql.Literal(encryption)))
    pg_conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(role), sql.Literal(password)))
    pg_conn.execute(sql.SQL("GRANT SELECT ON item TO {}").format(sql.Identifier(role)))
    try:
        hba.write_text(f"local all {role} {method}\nhost all {role} 127.0.0.1/32 {method}\n{original}")
        pg_conn.execute("SELECT pg_reload_conf()")
        wait_until_refused(pg_conn, role)
        yield role, password
    finally:
        hba.write_text(original)
        pg_conn.execute("SELECT pg_reload_conf()")
        pg_conn.execute(sql.SQL("REVOKE ALL ON item FROM {}").format(sql.Identifier(role)))
        pg_conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def wait_until_refused(pg_conn: psycopg.Connection[Any], role: str) -> None:
    """The postmaster reloads pg_hba.conf on its own time: wait until the role needs its password."""
    for _ in range(200):
        try:
            psycopg.connect(pg_conn.info.dsn, user=role, password="not it", connect_timeout=5).close()
        except psycopg.OperationalError:
            return
        time.sleep(0.01)
    raise AssertionError(f"pg_hba.conf still lets {role} in without its password")


@pytest.mark.parametrize("method", ["password", "md5", "scram-sha-256"])
@pytest.mark.parametrize("over", ["tcp", "unix socket"])
def test_a_password_role_is_copied_for_with_every_method(
    pg_cluster: PgServer,
    pg_conn: psycopg.Connection[Any],
    items: upstream.ShardSetup,
    slot: tuple[str, str],
    tmp_path: Path,
    method: str,
    over: str,
) -> None:
    with password_role(pg_cluster, pg_conn, method) as (role, password):
        host = "127.0.0.1" if over == "tcp" else str(pg_cluster.cluster.socket_dir)  # type: ignore[union-attr]
        sync, oid = _sync(pg_conn, items, tmp_path / "r.staging")
        with pytest.raises(_native.UpstreamError, match=rf"authentication failed for {role}@"):
            sync.copy_tables([oid], snapshot=slot[1], workers=1, **_params(pg_conn, host=host, user=role, password="not it"))
        with pytest.raises(_native.UpstreamError, match=rf"authentication failed for {role}@.*none was given"):
            sync.copy_tables([oid], snapshot=slot[1], workers=1, **_params(pg_conn, host=host, user=role, password=None))
        sync, oid = _sync(pg_conn, items, tmp_path / "r2.staging")
        sync.copy_tables([oid], snapshot=slot[1], workers=1, **_params(pg_conn, host=host, user=role, password=password))
    assert sync.rows == 5000
    sync.finish(str(tmp_path / "r.db"))
    with sqlite3.connect(tmp_path / "r.db") as db:
        assert db.execute('SELECT count(*), sum("id") FROM "item"').fetchone() == (5000, 5000 * 5001 // 2)


def test_a_failing_copy_carries_the_server_message(
    pg_conn: psycopg.Connection[Any], items: upstream.ShardSetup, slot: tuple[str, str], tmp_path: Path
) -> None:
    sync, oid = _sync(pg_conn, items, tmp_path / "r.staging")
    role = f"zt_no_rights_{os.urandom(3).hex()}"
    pg_conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
    try:
        with pytest.raises(_native.UpstreamError, match=r"COPY .* failed: permission denied for table item \(SQLSTATE 42501\)"):
            sync.copy_tables([oid], snapshot=slot[1], workers=1, **_params(pg_conn, user=role))
    finally:
        pg_conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


@contextlib.contextmanager
def socket_that_refuses() -> Iterator[int]:
    """A loopback port nothing listens on (bound, never listening, so no one else gets it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield int(sock.getsockname()[1])


@pytest.mark.parametrize("path", ["rust", "psycopg"])
async def test_run_initial_sync_copies_through_either_path(
    pg_dsn: str,
    pg_conn: psycopg.Connection[Any],
    items: upstream.ShardSetup,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    path: str,
) -> None:
    if path == "psycopg":
        # As for an upstream connection with TLS, which the Rust copier does not speak.
        monkeypatch.setattr(initial_sync, "_rust_connect_params", lambda conn: None)
    caplog.set_level(logging.INFO, "zcache.initial_sync")
    report = await initial_sync.run_initial_sync(pg_dsn, items, tmp_path / "r.db", copy_workers=2)
    assert report.rows == 5000 + 1  # plus the one row of the shard's metadata tables
    fell_back = [r for r in caplog.records if "copying through psycopg" in r.getMessage()]
    assert len(fell_back) == (1 if path == "psycopg" else 0)
    with sqlite3.connect(tmp_path / "r.db") as db:
        rows = dict(db.execute('SELECT "id", "label" FROM "item"').fetchall())
    assert rows == {i: f"row {i}" for i in range(1, 5001)}
