"""The app-schema migration runner behind `zcache migrate` (the tldraw runner's contract, made safe).

Migrations are the top-level `NNN_description.sql` files of a directory, applied in the order
of their number. Sub-directories are reserved for zcache's own internal schemas and are not
read here. Each applied file is recorded in `migrations.applied_migrations` with the SHA-256
of its bytes.

`migrate()` runs as ONE transaction:

1. `pg_advisory_xact_lock(MIGRATION_LOCK_KEY)` first, so concurrent runners queue up; the
   loser then sees the winner's committed rows (READ COMMITTED: every statement takes a new
   snapshot) and finds nothing left to do.
2. Create the `migrations` schema and table if absent (not in a dry run, which only checks
   whether they exist).
3. Compare the record with the directory. A recorded file that was edited since (checksum
   mismatch) or has disappeared is refused, with nothing applied: the database no longer
   matches what the files say, and silently carrying on would hide that.
4. Run each pending file and record it. The first failure rolls everything back, so the
   database is exactly as before, and the error names the file and the Postgres SQLSTATE.

A dry run does steps 1 and 3 in a read-only transaction and reports what would run.
`status()` is the read-only view for `zcache migrate --status`.

Where the files come from when no directory is given: `zcache/_migrations` next to this
module (how a wheel ships them, see `default_directory`), else `migrations/` at the root of
the source checkout this module sits in.
"""

from __future__ import annotations

import hashlib
import itertools
import re
from dataclasses import dataclass
from datetime import datetime
from enum import Enum
from pathlib import Path

import psycopg
from psycopg import IsolationLevel, pq
from psycopg.rows import TupleRow

# Any fixed 64-bit key works as long as every runner uses the same one; this one is "zcache" in
# ASCII followed by 0x0001 (the app-schema runner).
MIGRATION_LOCK_KEY = 0x7A63_6163_6865_0001

_FILENAME = re.compile(r"(?P<number>\d+)_[A-Za-z0-9][A-Za-z0-9_.-]*\.sql")
_PACKAGED_DIR = Path(__file__).with_name("_migrations")
_CHECKOUT_ROOT = Path(__file__).resolve().parents[2]


class MigrationError(Exception):
    """A migration run was refused or failed; the database was left unchanged.

    The one exception is a file that ends the transaction itself (COMMIT): what ran before it
    is then committed, and the error says so.
    """


@dataclass(frozen=True)
class MigrationFile:
    """One migration on disk."""

    number: int
    filename: str
    path: Path
    checksum: str  # hex SHA-256 of the file's bytes

    def read_sql(self) -> bytes:
        return self.path.read_bytes()


def default_directory() -> Path:
    """The app migrations shipped with zcache.

    An installed wheel carries them as `zcache/_migrations/` (put there by the
    `[tool.maturin] include` entry); a source checkout has them at `<repo>/migrations/`, which
    an editable install also reaches through a `python/zcache/_migrations` symlink if present.
    """
    if _PACKAGED_DIR.is_dir():
        return _PACKAGED_DIR
    checkout = _CHECKOUT_ROOT / "migrations"
    if checkout.is_dir() and (_CHECKOUT_ROOT / "pyproject.toml").is_file():
        return checkout
    raise MigrationError(
        f"No migrations directory found (looked for {_PACKAGED_DIR} and {checkout}); pass one explicitly."
    )


def read_migrations(directory: Path) -> list[MigrationFile]:
    """The top-level `*.sql` files of `directory`, ordered by number; refuses ambiguous names."""
    if not directory.is_dir():
        raise MigrationError(f"{directory} is not a directory")
    files: list[MigrationFile] = []
    for path in directory.glob("*.sql"):
        if not path.is_file():
            continue
        match = _FILENAME.fullmatch(path.name)
        if match is None:
            raise MigrationError(f"{path} is not named NNN_description.sql, so it has no place in the order")
        data = path.read_bytes()
        files.append(MigrationFile(int(match["number"]), path.name, path, hashlib.sha256(data).hexdigest()))
    files.sort(key=lambda f: (f.number, f.filename))
    for earlier, later in itertools.pairwise(files):
        if earlier.number == later.number:
            raise MigrationError(f"{earlier.filename} and {later.filename} share the number {earlier.number}")
    return files


class AppliedState(Enum):
    OK = "ok"
    MODIFIED = "modified"  # the file changed after it was applied
    MISSING = "missing"  # the file is no longer in the directory


@dataclass(frozen=True)
class AppliedMigration:
    filename: str
    checksum: str  # as recorded when applied
    applied_at: datetime
    disk_checksum: str | None  # None when the file is gone

    @property
    def state(self) -> AppliedState:
        if self.disk_checksum is None:
            return AppliedState.MISSING
        return AppliedState.OK if self.disk_checksum == self.checksum else AppliedState.MODIFIED


@dataclass(frozen=True)
class MigrationStatus:
    directory: Path
    applied: tuple[AppliedMigration, ...]  # in the order they were applied
    pending: tuple[str, ...]  # in the order they would run

    @property
    def consistent(self) -> bool:
        """True when every recorded migration is still on disk, unchanged."""
        return all(m.state is AppliedState.OK for m in self.applied)


@dataclass(frozen=True)
class MigrationReport:
    directory: Path
    dry_run: bool
    applied: tuple[str, ...]  # applied by this run, or that a dry run would apply
    already_applied: tuple[str, ...]


def migrate(dsn: str, *, directory: Path | None = None, dry_run: bool = False) -> MigrationReport:
    """Apply every pending migration in one transaction (see the module docstring)."""
    directory = directory or default_directory()
    files = read_migrations(directory)
    with _connect(dsn) as conn:
        conn.read_only = dry_run
        try:
            conn.execute("SELECT pg_advisory_xact_lock(%s)", [MIGRATION_LOCK_KEY])
            if not dry_run:
                _create_record_table(conn)
            applied = _read_applied(conn, files)
            _refuse_inconsistent(applied, directory)
            done = {m.filename for m in applied}
            pending = [f for f in files if f.filename not in done]
            if not dry_run:
                for migration in pending:
                    _apply(conn, migration)
        except BaseException:
            conn.rollback()
            raise
        if dry_run:
            conn.rollback()
        else:
            conn.commit()
    return MigrationReport(
        directory=directory,
        dry_run=dry_run,
        applied=tuple(f.filename for f in pending),
        already_applied=tuple(m.filename for m in applied),
    )


def status(dsn: str, *, directory: Path | None = None) -> MigrationStatus:
    """What has been applied (and whether it still matches the files) and what is pending."""
    directory = directory or default_directory()
    files = read_migrations(directory)
    with _connect(dsn) as conn:
        conn.read_only = True
        applied = _read_applied(conn, files)
        conn.rollback()
    done = {m.filename for m in applied}
    return MigrationStatus(
        directory=directory,
        applied=tuple(applied),
        pending=tuple(f.filename for f in files if f.filename not in done),
    )


def format_report(report: MigrationReport) -> str:
    """Human-readable summary of a `migrate()` run, for the CLI."""
    if not report.applied:
        return f"Up to date: all {len(report.already_applied)} migrations from {report.directory} are applied."
    verb = "Would apply" if report.dry_run else "Applied"
    lines = [f"{verb} {len(report.applied)} migration(s) from {report.directory}:"]
    lines += [f"  {name}" for name in report.applied]
    lines.append(f"({len(report.already_applied)} already applied before this run.)")
    if report.dry_run:
        lines.append("Dry run: nothing was changed.")
    return "\n".join(lines)


def format_status(st: MigrationStatus) -> str:
    """Human-readable table of applied and pending migrations, for the CLI."""
    lines = [f"Migrations in {st.directory}:"]
    width = max((len(name) for name in [*(m.filename for m in st.applied), *st.pending]), default=0)
    for m in st.applied:
        when = m.applied_at.strftime("%Y-%m-%d %H:%M:%S%z")
        match m.state:
            case AppliedState.OK:
                note = ""
            case AppliedState.MODIFIED:
                note = f"  MODIFIED since applied (applied sha256 {m.checksum}, on disk {m.disk_checksum})"
            case AppliedState.MISSING:
                note = "  MISSING from the directory"
        lines.append(f"  applied  {m.filename:<{width}}  {when}{note}")
    lines += [f"  pending  {name}" for name in st.pending]
    if not st.applied and not st.pending:
        lines.append("  (no migrations)")
    lines.append(f"{len(st.applied)} applied, {len(st.pending)} pending.")
    if not st.consistent:
        lines.append("The database does not match the migration files; `zcache migrate` will refuse to run.")
    return "\n".join(lines)


# -- internals -------------------------------------------------------------------------------


def _connect(dsn: str) -> psycopg.Connection[TupleRow]:
    # The files are read as bytes and sent as they are, so the session must speak UTF-8.
    # READ COMMITTED is required for the lock protocol: after waiting for the lock, the next
    # statement must see what the previous holder committed.
    conn = psycopg.connect(dsn, client_encoding="UTF8")
    conn.isolation_level = IsolationLevel.READ_COMMITTED
    return conn


def _create_record_table(conn: psycopg.Connection[TupleRow]) -> None:
    conn.execute("CREATE SCHEMA IF NOT EXISTS migrations")
    conn.execute(
        """
        CREATE TABLE IF NOT EXISTS migrations.applied_migrations (
            filename text PRIMARY KEY,
            checksum text NOT NULL,
            applied_at timestamptz NOT NULL DEFAULT now()
        )
        """
    )


def _read_applied(conn: psycopg.Connection[TupleRow], files: list[MigrationFile]) -> list[AppliedMigration]:
    exists = conn.execute("SELECT to_regclass('migrations.applied_migrations') IS NOT NULL").fetchone()
    if not exists or not exists[0]:
        return []
    on_disk = {f.filename: f.checksum for f in files}
    rows = conn.execute("SELECT filename, checksum, applied_at FROM migrations.applied_migrations").fetchall()
    applied = [AppliedMigration(name, checksum, applied_at, on_disk.get(name)) for name, checksum, applied_at in rows]
    # One run stamps all its files with the same transaction time, so within a run the
    # order comes from the file numbers (numerically: 100 after 99).
    applied.sort(key=lambda m: (m.applied_at, _number(m.filename), m.filename))
    return applied


def _number(filename: str) -> int:
    match = _FILENAME.fullmatch(filename)
    return int(match["number"]) if match else -1


def _refuse_inconsistent(applied: list[AppliedMigration], directory: Path) -> None:
    problems = []
    for m in applied:
        match m.state:
            case AppliedState.MODIFIED:
                problems.append(
                    f"{m.filename} was edited after it was applied "
                    f"(applied sha256 {m.checksum}, on disk sha256 {m.disk_checksum})"
                )
            case AppliedState.MISSING:
                problems.append(f"{m.filename} was applied but is no longer in {directory}")
            case AppliedState.OK:
                pass
    if problems:
        raise MigrationError(
            "The database's migration record does not match the files; nothing was applied.\n  "
            + "\n  ".join(problems)
            + "\nWrite a new migration instead of editing or removing an applied one."
        )


def _apply(conn: psycopg.Connection[TupleRow], migration: MigrationFile) -> None:
    body = migration.read_sql()
    try:
        # No parameters, so psycopg uses the simple query protocol, which allows a file to
        # hold many statements (and `%` needs no escaping).
        conn.execute(body)
    except psycopg.Error as e:
        raise MigrationError(f"{migration.filename} failed: {_describe_pg_error(e, body)}; nothing was applied") from e
    # A COMMIT or ROLLBACK inside a file would end our transaction (and release the lock) midway.
    if conn.info.transaction_status != pq.TransactionStatus.INTRANS:
        raise MigrationError(
            f"{migration.filename} ended the transaction, so the migrations before it (and its own "
            "statements up to that point) are committed; migrations must not contain COMMIT or ROLLBACK"
        )
    conn.execute(
        "INSERT INTO migrations.applied_migrations (filename, checksum) VALUES (%s, %s)",
        [migration.filename, migration.checksum],
    )


def _describe_pg_error(e: psycopg.Error, body: bytes) -> str:
    diag = e.diag
    text = f"[{e.sqlstate}] {diag.message_primary or str(e).strip()}"
    if diag.statement_position:
        # The position counts characters of the whole file from 1.
        line = body.decode(errors="replace")[: int(diag.statement_position) - 1].count("\n") + 1
        text += f" (line {line})"
    if diag.message_detail:
        text += f"; {diag.message_detail}"
    if diag.context:
        text += f"; context: {diag.context.strip()}"
    return text
