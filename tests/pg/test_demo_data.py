"""The deterministic tldraw demo data: its shape, its load into Postgres, idempotence."""

from __future__ import annotations

import time

import psycopg
import pytest
from hypothesis import given
from hypothesis import strategies as st
from psycopg import sql
from psycopg.conninfo import make_conninfo
from psycopg.rows import TupleRow

from tests.fixtures.fix_pg import PgServer, database_name
from zcache.demo_data import DemoDataError, DemoShape, file_id, guest_files, load_demo_data, owned_files, user_id
from zcache.migrations import migrate

Conn = psycopg.Connection[TupleRow]


def one(conn: Conn, query: str) -> object:
    row = conn.execute(query).fetchone()
    assert row is not None
    return row[0]


@given(users=st.integers(1, 40), files_per_user=st.integers(1, 12), guests=st.integers(0, 15))
def test_guest_files_are_distinct_files_of_other_users(users: int, files_per_user: int, guests: int) -> None:
    shape = DemoShape(users, files_per_user, guests)
    for user in range(users):
        chosen = guest_files(shape, user)
        assert len(chosen) == len(set(chosen)) == min(guests, (users - 1) * files_per_user)
        assert all(0 <= f < shape.files and f % users != user for f in chosen)
        assert all(f % users == user for f in owned_files(shape, user))


def test_small_load_has_the_benchmark_shape(pg_dsn: str, pg_conn: Conn) -> None:
    migrate(pg_dsn)

    report = load_demo_data(pg_dsn, users=20)

    assert (report.loaded, report.users, report.files, report.file_states) == (True, 20, 200, 400)
    assert report.summary() == "Loaded demo data: 20 users, 200 files, 400 file states."
    ids = [r[0] for r in pg_conn.execute('SELECT id FROM "user" ORDER BY id')]
    assert ids == [user_id(u) for u in range(20)] and ids[7] == "u000007"
    # File i belongs to user i % 20; each user owns 10.
    assert (
        one(
            pg_conn,
            """SELECT count(*) FROM file WHERE "ownerId" <> 'u' || lpad((substr(id, 2)::int % 20)::text, 6, '0')""",
        )
        == 0
    )
    assert one(pg_conn, "SELECT min(id) || max(id) FROM file") == file_id(0) + file_id(199) == "f0000000f0000199"
    assert pg_conn.execute('SELECT DISTINCT count(*) FROM file GROUP BY "ownerId"').fetchall() == [(10,)]
    # Each user: 10 states for their own files (flagged as owner), 10 for files of others.
    per_user = pg_conn.execute(
        """
        SELECT DISTINCT count(*) FILTER (WHERE f."ownerId" = s."userId" AND s."isFileOwner"),
                        count(*) FILTER (WHERE f."ownerId" <> s."userId" AND NOT s."isFileOwner")
        FROM file_state s JOIN file f ON f.id = s."fileId" GROUP BY s."userId"
        """
    ).fetchall()
    assert per_user == [(10, 10)]
    # Files with guests are shared; the others are not.
    assert (
        one(
            pg_conn,
            """
            SELECT count(*) FROM file f WHERE f.shared <> EXISTS (
                SELECT 1 FROM file_state s WHERE s."fileId" = f.id AND s."userId" <> f."ownerId")
            """,
        )
        == 0
    )
    assert 0 < one(pg_conn, "SELECT count(*) FROM file WHERE shared") < 200  # type: ignore[operator]
    # Realistic values: timestamps are epoch ms in 2024 or later, and files change after creation.
    assert one(pg_conn, 'SELECT min("createdAt") >= 1704067200000 FROM file') is True
    assert one(pg_conn, 'SELECT bool_and("updatedAt" >= "createdAt") FROM file') is True
    assert one(pg_conn, """SELECT bool_and(email LIKE '%@example.com' AND name <> '') FROM "user" """) is True


def test_loading_twice_changes_nothing(pg_dsn: str, pg_conn: Conn) -> None:
    migrate(pg_dsn)
    load_demo_data(pg_dsn, users=20)
    before = table_digests(pg_conn)

    report = load_demo_data(pg_dsn, users=50)

    assert (report.loaded, report.users, report.files, report.file_states) == (False, 20, 200, 400)
    assert "already hold rows" in report.summary()
    assert table_digests(pg_conn) == before


def test_any_existing_row_prevents_loading(pg_dsn: str, pg_conn: Conn) -> None:
    migrate(pg_dsn)
    pg_conn.execute(
        """
        INSERT INTO "user" (id, name, email, avatar, color, "exportFormat", "exportTheme",
                            "exportBackground", "exportPadding", "createdAt", "updatedAt", flags)
        VALUES ('someone', 'Someone', '', '', '', 'svg', 'auto', true, true, 0, 0, '')
        """
    )

    assert not load_demo_data(pg_dsn, users=20).loaded
    assert one(pg_conn, 'SELECT count(*) FROM "user"') == 1


def test_the_same_size_loads_the_same_rows(pg_cluster: PgServer, pg_dsn: str, pg_conn: Conn) -> None:
    migrate(pg_dsn)
    load_demo_data(pg_dsn, users=30)
    other = database_name("demo_data_twin")
    other_dsn = pg_cluster.create_database(other)
    try:
        migrate(other_dsn)
        load_demo_data(other_dsn, users=30)
        with psycopg.connect(other_dsn) as other_conn:
            assert table_digests(other_conn) == table_digests(pg_conn)
    finally:
        pg_cluster.drop_database(other)


def test_a_non_superuser_owner_can_migrate_and_load(pg_dsn: str, pg_conn: Conn) -> None:
    # Without superuser rights the foreign-key checks stay on; the result must be the same.
    role = database_name("app_owner")
    pg_conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
    try:
        pg_conn.execute(sql.SQL("GRANT CREATE ON DATABASE {} TO {}").format(
            sql.Identifier(pg_conn.info.dbname), sql.Identifier(role)))  # fmt: skip
        pg_conn.execute(sql.SQL("GRANT CREATE ON SCHEMA public TO {}").format(sql.Identifier(role)))
        owner_dsn = make_conninfo(pg_dsn, user=role)
        migrate(owner_dsn)

        report = load_demo_data(owner_dsn, users=20)

        assert (report.loaded, report.file_states) == (True, 400)
        assert one(pg_conn, """SELECT tableowner FROM pg_tables WHERE tablename = 'file_state'""") == role
    finally:
        pg_conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
        pg_conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def test_missing_schema_is_reported(pg_dsn: str) -> None:
    with pytest.raises(DemoDataError, match=r"run `zcache migrate` first"):
        load_demo_data(pg_dsn)


@pytest.mark.slow
def test_the_benchmark_size_loads_in_seconds(pg_dsn: str) -> None:
    migrate(pg_dsn)
    started = time.monotonic()

    report = load_demo_data(pg_dsn, users=10_000)

    assert (report.users, report.files, report.file_states) == (10_000, 100_000, 200_000)
    assert time.monotonic() - started < 15


def table_digests(conn: Conn) -> dict[str, object]:
    """An md5 of each table's full contents in key order."""
    return {
        table: one(conn, f"SELECT md5(string_agg(t::text, E'\\n' ORDER BY {key})) FROM \"{table}\" t")
        for table, key in (("user", "id"), ("file", "id"), ("file_state", '"userId", "fileId"'))
    }
