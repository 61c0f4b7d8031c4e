"""The tldraw migrations and the `zcache migrate` runner, against a real database."""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

import psycopg
import pytest
from psycopg.rows import TupleRow

from tests.fixtures.fix_pg import schema_fingerprint
from zcache.migrations import (
    MIGRATION_LOCK_KEY,
    AppliedState,
    MigrationError,
    MigrationReport,
    default_directory,
    format_report,
    format_status,
    migrate,
    read_migrations,
    status,
)

Conn = psycopg.Connection[TupleRow]

REAL_FILES = [f.filename for f in read_migrations(default_directory())]

VARCHAR, BIGINT, BOOLEAN = "character varying", "bigint", "boolean"
# (column, type, nullable, default) in column order: the seed's final schema.
FINAL_COLUMNS: dict[str, list[tuple[str, str, str, str | None]]] = {
    "user": [
        ("id", VARCHAR, "NO", None),
        ("name", VARCHAR, "NO", None),
        ("email", VARCHAR, "NO", None),
        ("avatar", VARCHAR, "NO", None),
        ("color", VARCHAR, "NO", None),
        ("exportFormat", VARCHAR, "NO", None),
        ("exportTheme", VARCHAR, "NO", None),
        ("exportBackground", BOOLEAN, "NO", None),
        ("exportPadding", BOOLEAN, "NO", None),
        ("createdAt", BIGINT, "NO", None),
        ("updatedAt", BIGINT, "NO", None),
        ("flags", VARCHAR, "NO", None),
        ("locale", VARCHAR, "YES", None),
        ("animationSpeed", BIGINT, "YES", None),
        ("edgeScrollSpeed", BIGINT, "YES", None),
        ("colorScheme", VARCHAR, "YES", None),
        ("isSnapMode", BOOLEAN, "YES", None),
        ("isWrapMode", BOOLEAN, "YES", None),
        ("isDynamicSizeMode", BOOLEAN, "YES", None),
        ("isPasteAtCursorMode", BOOLEAN, "YES", None),
        ("enhancedA11yMode", BOOLEAN, "YES", None),
        ("areKeyboardShortcutsEnabled", BOOLEAN, "YES", None),
        ("showUiLabels", BOOLEAN, "YES", None),
    ],
    "file": [
        ("id", VARCHAR, "NO", None),
        ("name", VARCHAR, "NO", None),
        ("ownerId", VARCHAR, "NO", None),
        ("thumbnail", VARCHAR, "NO", None),
        ("shared", BOOLEAN, "NO", None),
        ("sharedLinkType", VARCHAR, "NO", None),
        ("published", BOOLEAN, "NO", None),
        ("lastPublished", BIGINT, "NO", None),
        ("publishedSlug", VARCHAR, "NO", None),
        ("createdAt", BIGINT, "NO", None),
        ("updatedAt", BIGINT, "NO", None),
        ("isEmpty", BOOLEAN, "NO", None),
        ("isDeleted", BOOLEAN, "NO", "false"),
        ("createSource", VARCHAR, "YES", None),
    ],
    "file_state": [
        ("userId", VARCHAR, "NO", None),
        ("fileId", VARCHAR, "NO", None),
        ("firstVisitAt", BIGINT, "YES", None),
        ("lastEditAt", BIGINT, "YES", None),
        ("lastSessionState", VARCHAR, "YES", None),
        ("lastVisitAt", BIGINT, "YES", None),
        ("isFileOwner", BOOLEAN, "YES", None),
        ("isPinned", BOOLEAN, "YES", None),
    ],
    "asset": [
        ("objectName", VARCHAR, "NO", None),
        ("fileId", VARCHAR, "NO", None),
        ("userId", VARCHAR, "YES", None),
    ],
    "user_mutation_number": [
        ("userId", VARCHAR, "NO", None),
        ("mutationNumber", BIGINT, "NO", "0"),
    ],
}
# (table, columns, referenced table, ON DELETE action code: c = cascade, n = set null)
FINAL_FOREIGN_KEYS = {
    ("asset", "{fileId}", "file", "c"),
    ("asset", "{userId}", '"user"', "n"),
    ("file", "{ownerId}", '"user"', "c"),
    ("file_state", "{fileId}", "file", "c"),
    ("file_state", "{userId}", '"user"', "c"),
    ("user_mutation_number", "{userId}", '"user"', "c"),
}
FINAL_PRIMARY_KEYS = {
    ("asset", "{objectName}"),
    ("file", "{id}"),
    ("file_state", "{userId,fileId}"),
    ("user", "{id}"),
    ("user_mutation_number", "{userId}"),
}


def columns(conn: Conn) -> dict[str, list[tuple[str, str, str, str | None]]]:
    result: dict[str, list[tuple[str, str, str, str | None]]] = {}
    for table, column, data_type, nullable, default in conn.execute(
        """
        SELECT table_name, column_name, data_type, is_nullable, column_default
        FROM information_schema.columns WHERE table_schema = 'public'
        ORDER BY table_name, ordinal_position
        """
    ):
        result.setdefault(table, []).append((column, data_type, nullable, default))
    return result


def copy_migrations(target: Path, names: list[str] | None = None) -> Path:
    target.mkdir(exist_ok=True)
    for name in names if names is not None else REAL_FILES:
        shutil.copy(default_directory() / name, target / name)
    return target


def test_fresh_database_ends_with_the_seed_schema(pg_dsn: str, pg_conn: Conn) -> None:
    report = migrate(pg_dsn)

    assert report.applied == tuple(REAL_FILES)
    assert REAL_FILES[0].startswith("001_") and REAL_FILES[-1].startswith("020_")
    assert columns(pg_conn) == FINAL_COLUMNS
    foreign_keys = pg_conn.execute(
        """
        SELECT conrelid::regclass::text,
               (SELECT array_agg(attname ORDER BY attnum)::text FROM pg_attribute
                WHERE attrelid = conrelid AND attnum = ANY (conkey)),
               confrelid::regclass::text, confdeltype::text
        FROM pg_constraint WHERE contype = 'f' AND connamespace = 'public'::regnamespace
        """
    ).fetchall()
    assert set(foreign_keys) == FINAL_FOREIGN_KEYS
    primary_keys = pg_conn.execute(
        """
        SELECT relname, (SELECT array_agg(attname ORDER BY array_position(conkey, attnum))::text
                         FROM pg_attribute WHERE attrelid = conrelid AND attnum = ANY (conkey))
        FROM pg_constraint JOIN pg_class ON pg_class.oid = conrelid
        WHERE contype = 'p' AND connamespace = 'public'::regnamespace
        """
    ).fetchall()
    assert set(primary_keys) == FINAL_PRIMARY_KEYS
    trigger = pg_conn.execute(
        """
        SELECT tgrelid::regclass::text, tgfoid::regproc::text, pg_get_triggerdef(oid)
        FROM pg_trigger WHERE tgname = 'file_shared_update' AND NOT tgisinternal
        """
    ).fetchall()
    assert trigger == [
        (
            "file",
            "delete_file_states",
            "CREATE TRIGGER file_shared_update AFTER UPDATE OF shared ON public.file "
            "FOR EACH ROW EXECUTE FUNCTION delete_file_states()",
        )
    ]
    published = pg_conn.execute(
        "SELECT schemaname, tablename FROM pg_publication_tables WHERE pubname = 'zero_data'"
    ).fetchall()
    assert set(published) == {("public", "file"), ("public", "file_state"), ("public", "user")}
    assert pg_conn.execute("SELECT puballtables FROM pg_publication WHERE pubname = 'zero_data'").fetchone() == (False,)
    identities = pg_conn.execute(
        """
        SELECT relname, relreplident::text FROM pg_class
        WHERE relnamespace = 'public'::regnamespace AND relkind = 'r' ORDER BY relname
        """
    ).fetchall()
    # f = FULL (whole old row in UPDATE/DELETE records), d = default (primary key).
    assert identities == [
        ("asset", "d"),
        ("file", "f"),
        ("file_state", "f"),
        ("user", "d"),
        ("user_mutation_number", "d"),
    ]
    recorded = pg_conn.execute(
        "SELECT filename, checksum FROM migrations.applied_migrations ORDER BY filename"
    ).fetchall()
    assert recorded == [(f.filename, f.checksum) for f in read_migrations(default_directory())]


def test_migrating_twice_is_a_no_op(pg_dsn: str, pg_conn: Conn) -> None:
    migrate(pg_dsn)
    before = schema_fingerprint(pg_conn)
    applied_at = pg_conn.execute("SELECT filename, applied_at FROM migrations.applied_migrations").fetchall()

    report = migrate(pg_dsn)

    assert report.applied == ()
    assert report.already_applied == tuple(REAL_FILES)
    assert schema_fingerprint(pg_conn) == before
    assert pg_conn.execute("SELECT filename, applied_at FROM migrations.applied_migrations").fetchall() == applied_at
    assert format_report(report).startswith(f"Up to date: all {len(REAL_FILES)} migrations")


def test_unsharing_a_file_deletes_its_guests_file_states_only(pg_dsn: str, pg_conn: Conn) -> None:
    migrate(pg_dsn)
    for user in ("owner", "guest1", "guest2"):
        pg_conn.execute(
            """
            INSERT INTO "user" (id, name, email, avatar, color, "exportFormat", "exportTheme",
                                "exportBackground", "exportPadding", "createdAt", "updatedAt", flags)
            VALUES (%s, %s, '', '', '', 'svg', 'auto', true, true, 0, 0, '')
            """,
            [user, user],
        )
    for file in ("shared-file", "other-file"):
        pg_conn.execute(
            """
            INSERT INTO file (id, name, "ownerId", thumbnail, shared, "sharedLinkType", published,
                              "lastPublished", "publishedSlug", "createdAt", "updatedAt", "isEmpty")
            VALUES (%s, %s, 'owner', '', true, 'edit', false, 0, '', 0, 0, false)
            """,
            [file, file],
        )
    for user in ("owner", "guest1", "guest2"):
        for file in ("shared-file", "other-file"):
            pg_conn.execute(
                'INSERT INTO file_state ("userId", "fileId", "isFileOwner") VALUES (%s, %s, %s)',
                [user, file, user == "owner"],
            )

    def states() -> set[tuple[str, str]]:
        return set(pg_conn.execute('SELECT "userId", "fileId" FROM file_state').fetchall())

    everyone = {(u, f) for u in ("owner", "guest1", "guest2") for f in ("shared-file", "other-file")}
    # Updates that do not turn sharing off leave the states alone.
    pg_conn.execute("UPDATE file SET shared = true WHERE id = 'shared-file'")
    pg_conn.execute("UPDATE file SET name = 'renamed' WHERE id = 'shared-file'")
    assert states() == everyone

    pg_conn.execute("UPDATE file SET shared = false WHERE id = 'shared-file'")

    assert states() == everyone - {("guest1", "shared-file"), ("guest2", "shared-file")}
    pg_conn.execute("UPDATE file SET shared = true WHERE id = 'shared-file'")
    pg_conn.execute("UPDATE file SET shared = false WHERE id = 'shared-file'")
    assert ("owner", "shared-file") in states()


def test_dry_run_changes_nothing(pg_dsn: str, pg_conn: Conn) -> None:
    before = schema_fingerprint(pg_conn)

    report = migrate(pg_dsn, dry_run=True)

    assert report.dry_run and report.applied == tuple(REAL_FILES) and report.already_applied == ()
    assert schema_fingerprint(pg_conn) == before
    assert pg_conn.execute("SELECT to_regnamespace('migrations')").fetchone() == (None,)
    assert "Would apply" in format_report(report) and "nothing was changed" in format_report(report)


def test_dry_run_after_a_partial_migration_reports_the_rest(pg_dsn: str, pg_conn: Conn, tmp_path: Path) -> None:
    migrate(pg_dsn, directory=copy_migrations(tmp_path / "first", REAL_FILES[:3]))
    before = schema_fingerprint(pg_conn)

    report = migrate(pg_dsn, dry_run=True)

    assert report.already_applied == tuple(REAL_FILES[:3])
    assert report.applied == tuple(REAL_FILES[3:])
    assert schema_fingerprint(pg_conn) == before


def test_a_failing_migration_rolls_back_everything(pg_dsn: str, pg_conn: Conn, tmp_path: Path) -> None:
    directory = copy_migrations(tmp_path)
    (directory / "021_broken.sql").write_text(
        "-- 021: the first statement works, the second names a column that does not exist.\n"
        'CREATE TABLE "scratch" ("id" BIGINT PRIMARY KEY);\n'
        'SELECT "missing" FROM "scratch";\n'
    )
    before = schema_fingerprint(pg_conn)

    with pytest.raises(MigrationError) as failure:
        migrate(pg_dsn, directory=directory)

    message = str(failure.value)
    assert "021_broken.sql" in message
    assert "[42703]" in message  # undefined_column
    assert 'column "missing" does not exist' in message
    assert "(line 3)" in message
    assert isinstance(failure.value.__cause__, psycopg.errors.UndefinedColumn)
    assert schema_fingerprint(pg_conn) == before


def test_a_failure_after_earlier_runs_leaves_their_state(pg_dsn: str, pg_conn: Conn, tmp_path: Path) -> None:
    directory = copy_migrations(tmp_path)
    migrate(pg_dsn, directory=directory)
    before = schema_fingerprint(pg_conn)
    (directory / "021_ok.sql").write_text('ALTER TABLE "user" ADD COLUMN "nickname" VARCHAR;\n')
    (directory / "022_broken.sql").write_text("SELECT 1 / 0;\n")

    with pytest.raises(MigrationError, match=r"022_broken\.sql failed: \[22012\] division by zero"):
        migrate(pg_dsn, directory=directory)

    assert schema_fingerprint(pg_conn) == before


def test_a_migration_that_commits_is_reported(pg_dsn: str, tmp_path: Path) -> None:
    directory = copy_migrations(tmp_path, REAL_FILES[:2])
    (directory / "003_commits.sql").write_text("SELECT 1;\nCOMMIT;\n")

    with pytest.raises(MigrationError, match=r"003_commits\.sql ended the transaction"):
        migrate(pg_dsn, directory=directory)


def test_an_edited_applied_migration_is_refused(pg_dsn: str, pg_conn: Conn, tmp_path: Path) -> None:
    directory = copy_migrations(tmp_path)
    migrate(pg_dsn, directory=directory)
    edited = directory / REAL_FILES[4]
    applied_checksum = read_migrations(directory)[4].checksum
    edited.write_text(edited.read_text() + "-- an afterthought\n")
    (directory / "021_new.sql").write_text('ALTER TABLE "user" ADD COLUMN "nickname" VARCHAR;\n')
    disk_checksum = next(f.checksum for f in read_migrations(directory) if f.filename == edited.name)
    before = schema_fingerprint(pg_conn)

    with pytest.raises(MigrationError) as refusal:
        migrate(pg_dsn, directory=directory)

    message = str(refusal.value)
    assert edited.name in message and applied_checksum in message and disk_checksum in message
    assert "nothing was applied" in message
    assert schema_fingerprint(pg_conn) == before
    # A dry run refuses the same way.
    with pytest.raises(MigrationError, match=edited.name):
        migrate(pg_dsn, directory=directory, dry_run=True)


def test_an_applied_migration_missing_from_disk_is_refused(pg_dsn: str, pg_conn: Conn, tmp_path: Path) -> None:
    directory = copy_migrations(tmp_path)
    migrate(pg_dsn, directory=directory)
    (directory / REAL_FILES[-1]).unlink()
    before = schema_fingerprint(pg_conn)

    with pytest.raises(MigrationError, match=rf"{REAL_FILES[-1]} was applied but is no longer in"):
        migrate(pg_dsn, directory=directory)

    assert schema_fingerprint(pg_conn) == before


def test_concurrent_runners_apply_each_migration_once(pg_dsn: str, pg_conn: Conn) -> None:
    # Hold the runners' lock so that both are demonstrably waiting on it before either runs.
    pg_conn.execute("SELECT pg_advisory_lock(%s)", [MIGRATION_LOCK_KEY])
    reports: list[MigrationReport] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            reports.append(migrate(pg_dsn))
        except BaseException as e:  # reported by the assertions below
            errors.append(e)

    runners = [threading.Thread(target=run) for _ in range(2)]
    for runner in runners:
        runner.start()
    deadline = time.monotonic() + 10
    while pg_conn.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted").fetchone() != (
        2,
    ):
        assert time.monotonic() < deadline, "the runners never queued on the migration lock"
        time.sleep(0.01)
    pg_conn.execute("SELECT pg_advisory_unlock(%s)", [MIGRATION_LOCK_KEY])
    for runner in runners:
        runner.join(timeout=30)

    assert errors == []
    first, second = sorted(reports, key=lambda r: len(r.already_applied))
    assert (first.applied, first.already_applied) == (tuple(REAL_FILES), ())
    assert (second.applied, second.already_applied) == ((), tuple(REAL_FILES))
    assert pg_conn.execute("SELECT count(*) FROM migrations.applied_migrations").fetchone() == (len(REAL_FILES),)


def test_status_lists_applied_and_pending(pg_dsn: str, tmp_path: Path) -> None:
    directory = copy_migrations(tmp_path, REAL_FILES[:5])
    assert status(pg_dsn, directory=directory).applied == ()
    migrate(pg_dsn, directory=directory)
    copy_migrations(directory, REAL_FILES[5:])

    st = status(pg_dsn, directory=directory)

    assert [m.filename for m in st.applied] == REAL_FILES[:5]
    assert all(m.state is AppliedState.OK for m in st.applied) and st.consistent
    assert st.pending == tuple(REAL_FILES[5:])
    text = format_status(st)
    assert f"applied  {REAL_FILES[0]}" in text and f"pending  {REAL_FILES[-1]}" in text
    assert "5 applied, 7 pending." in text

    edited = directory / REAL_FILES[1]
    edited.write_text(edited.read_text() + "\n")
    (directory / REAL_FILES[2]).unlink()
    st = status(pg_dsn, directory=directory)
    assert [m.state for m in st.applied] == [
        AppliedState.OK,
        AppliedState.MODIFIED,
        AppliedState.MISSING,
        AppliedState.OK,
        AppliedState.OK,
    ]
    assert not st.consistent
    assert "MODIFIED since applied" in format_status(st) and "MISSING from the directory" in format_status(st)


# -- reading the directory (no database) --------------------------------------------------------


def test_files_are_ordered_by_number_and_subdirectories_ignored(tmp_path: Path) -> None:
    for name in ("10_later.sql", "9_earlier.sql", "100_last.sql", "README.md"):
        (tmp_path / name).write_text("SELECT 1;\n")
    (tmp_path / "cvr").mkdir()
    (tmp_path / "cvr" / "001_internal.sql").write_text("SELECT 1;\n")

    assert [f.filename for f in read_migrations(tmp_path)] == ["9_earlier.sql", "10_later.sql", "100_last.sql"]


@pytest.mark.parametrize(
    ("names", "complaint"),
    [
        (["001_a.sql", "01_b.sql"], "share the number 1"),
        (["001_a.sql", "latest.sql"], "is not named NNN_description.sql"),
    ],
)
def test_ambiguous_directories_are_refused(tmp_path: Path, names: list[str], complaint: str) -> None:
    for name in names:
        (tmp_path / name).write_text("SELECT 1;\n")
    with pytest.raises(MigrationError, match=complaint):
        read_migrations(tmp_path)


def test_the_checkout_supplies_the_default_directory() -> None:
    directory = default_directory()
    assert directory.name in ("migrations", "_migrations")
    assert (directory / "001_create_user_file_file_state.sql").is_file()
