"""Deterministic tldraw demo data, for the dev default (small) and for benchmarks (large).

The shape is the benchmark data set's (see the reference figures), scaled by the number of
users N, with F files per user (10) and G guest file states per user (10):

* users `u000000` … : N rows;
* files `f0000000` … : N·F rows; file i belongs to user `i % N`, so user u owns files
  u, u + N, u + 2N, …;
* file states: each user has one for each of their own F files, plus G for files of other
  users (at most (N-1)·F exist): N·(F + G) rows. The k-th guest file of user u is owned by
  user `u + 1 + k mod (N-1)` (modulo N), the user's next neighbours. Each owner's guests
  land on three of its slots, so about 30% of files have guests (about three each), like an
  app where most files stay private; the `lap` term keeps pairs distinct when N is small.
* a file with at least one guest is `shared`, as the app would have it (unsharing deletes
  the guests' states through the `file_shared_update` trigger).

Every value is a pure function of (N, row index): names from small word lists, epoch-ms
timestamps from a fixed origin, booleans and NULLs on fixed cycles. So two loads of the same
size are identical, and a benchmark run can name the rows it touches.

`load_demo_data` COPYs the three tables in one transaction (10k users / 100k files / 200k
file states take about three seconds), then ANALYZEs them so the first benchmark queries are
planned on real statistics. It does nothing if any of the tables already has rows; the
table locks taken first make concurrent loaders queue up and all but one find rows.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import psycopg
from psycopg import sql
from psycopg.rows import TupleRow

# 2024-01-01T00:00:00Z: the origin of every timestamp.
ORIGIN_MS = 1_704_067_200_000
_HOUR_MS = 3_600_000
_DAY_MS = 24 * _HOUR_MS

_FIRST_NAMES = (
    "Ada", "Alan", "Barbara", "Claude", "Donald", "Edsger", "Frances", "Grace", "Hedy", "Ivan",
    "John", "Katherine", "Leslie", "Margaret", "Niklaus", "Radia", "Shafi", "Tim", "Whitfield", "Yukihiro",
)  # fmt: skip
_LAST_NAMES = (
    "Lovelace", "Turing", "Liskov", "Shannon", "Knuth", "Dijkstra", "Allen", "Hopper", "Lamarr",
    "Sutherland", "Backus", "Johnson", "Lamport", "Hamilton", "Wirth", "Perlman", "Goldwasser",
    "Berners-Lee", "Diffie", "Matsumoto",
)  # fmt: skip
_FILE_NAMES = (
    "Untitled", "Wireframes", "Roadmap", "Team retro", "Architecture sketch", "Onboarding flow",
    "Mood board", "Sprint planning", "User journey", "Whiteboard", "Org chart", "Brainstorm",
)  # fmt: skip
# tldraw's user colours.
_COLORS = (
    "#FF802B", "#EC5E41", "#F2555A", "#F04F88", "#E34BA9", "#BD54C6",
    "#9D5BD2", "#7B66DC", "#02B1CC", "#11B3A3", "#39B178", "#55B467",
)  # fmt: skip
_EXPORT_FORMATS = ("svg", "png", "jpeg", "webp")
_EXPORT_THEMES = ("auto", "light", "dark")
_LOCALES = ("en", None, "en", "de", "fr", "es", "ja", "pt-br")
_COLOR_SCHEMES = (None, "light", "dark", "system")
_SESSION_STATE = '{"version":0,"pageId":"page:page","camera":{"x":0,"y":0,"z":1},"isGridMode":false}'

USER_COLUMNS = (
    "id", "name", "email", "avatar", "color", "exportFormat", "exportTheme", "exportBackground",
    "exportPadding", "createdAt", "updatedAt", "flags", "locale", "animationSpeed", "edgeScrollSpeed",
    "colorScheme", "isSnapMode", "isWrapMode", "isDynamicSizeMode", "isPasteAtCursorMode",
    "enhancedA11yMode", "areKeyboardShortcutsEnabled", "showUiLabels",
)  # fmt: skip
FILE_COLUMNS = (
    "id", "name", "ownerId", "thumbnail", "shared", "sharedLinkType", "published", "lastPublished",
    "publishedSlug", "createdAt", "updatedAt", "isEmpty", "isDeleted", "createSource",
)  # fmt: skip
FILE_STATE_COLUMNS = (
    "userId", "fileId", "firstVisitAt", "lastEditAt", "lastSessionState", "lastVisitAt", "isFileOwner", "isPinned",
)  # fmt: skip

Row = tuple[object, ...]


class DemoDataError(Exception):
    """The demo data could not be loaded (for instance, the schema is missing)."""


@dataclass(frozen=True)
class DemoShape:
    """How much data: N users, F files each, G guest file states each."""

    users: int
    files_per_user: int = 10
    guest_files_per_user: int = 10

    def __post_init__(self) -> None:
        if self.users < 1 or self.files_per_user < 1 or self.guest_files_per_user < 0:
            raise ValueError(f"invalid demo data shape {self}")

    @property
    def files(self) -> int:
        return self.users * self.files_per_user

    @property
    def guests_per_user(self) -> int:
        """G, capped by how many files other users own."""
        return min(self.guest_files_per_user, (self.users - 1) * self.files_per_user)

    @property
    def file_states(self) -> int:
        return self.users * (self.files_per_user + self.guests_per_user)


def user_id(user: int) -> str:
    return f"u{user:06d}"


def file_id(file: int) -> str:
    return f"f{file:07d}"


def owner_of(shape: DemoShape, file: int) -> int:
    return file % shape.users


def owned_files(shape: DemoShape, user: int) -> list[int]:
    return [user + slot * shape.users for slot in range(shape.files_per_user)]


def guest_files(shape: DemoShape, user: int) -> list[int]:
    """The other users' files that `user` has a file state for (see the module docstring)."""
    n, f = shape.users, shape.files_per_user
    others = n - 1
    files = []
    for k in range(shape.guests_per_user):
        distance, lap = 1 + k % others, k // others  # lap < F because k < (N-1)·F
        owner = (user + distance) % n
        slot = (owner + distance % 3 + lap) % f
        files.append(owner + slot * n)
    return files


def user_rows(shape: DemoShape) -> Iterator[Row]:
    for u in range(shape.users):
        first = _FIRST_NAMES[u % len(_FIRST_NAMES)]
        last = _LAST_NAMES[(u // len(_FIRST_NAMES) + 3 * u) % len(_LAST_NAMES)]
        created = _user_created_ms(u)
        yield (
            user_id(u),
            f"{first} {last}",
            f"{first.lower()}.{last.lower()}.{u}@example.com",
            "" if u % 4 == 0 else f"https://avatars.example.com/{user_id(u)}.png",
            _COLORS[u % len(_COLORS)],
            _EXPORT_FORMATS[u % len(_EXPORT_FORMATS)],
            _EXPORT_THEMES[u % len(_EXPORT_THEMES)],
            u % 2 == 0,
            u % 3 != 0,
            created,
            created + (u % 30) * _DAY_MS,
            "",
            _LOCALES[u % len(_LOCALES)],
            None if u % 5 else 1,
            None if u % 7 else 1,
            _COLOR_SCHEMES[u % len(_COLOR_SCHEMES)],
            _tristate(u, 2),
            _tristate(u, 3),
            _tristate(u, 5),
            _tristate(u, 7),
            _tristate(u, 11),
            _tristate(u, 13),
            _tristate(u, 17),
        )


def file_rows(shape: DemoShape, shared: Sequence[bool]) -> Iterator[Row]:
    """`shared[i]` says whether file i has guests."""
    n = shape.users
    for i in range(shape.files):
        created, updated = _file_times(shape, i)
        published = i % 10 == 3
        yield (
            file_id(i),
            f"{_FILE_NAMES[i % len(_FILE_NAMES)]} {i // n + 1}",
            user_id(i % n),
            "",
            shared[i],
            "edit" if i % 3 == 0 else "view",
            published,
            updated if published else 0,
            f"p{i:07d}" if published else "",
            created,
            updated,
            i % 11 == 0,
            i % 50 == 49,
            None if i % 8 else "duplicate",
        )


def file_state_rows(shape: DemoShape) -> Iterator[Row]:
    for u in range(shape.users):
        for slot, f in enumerate(owned_files(shape, u)):
            created, updated = _file_times(shape, f)
            yield (user_id(u), file_id(f), created, updated, _session_state(f), updated, True, slot == 0 or None)
        for k, f in enumerate(guest_files(shape, u)):
            created, updated = _file_times(shape, f)
            first_visit = created + (k + 1) * _HOUR_MS
            last_visit = max(first_visit, updated) + (u % 24) * _HOUR_MS
            yield (
                user_id(u),
                file_id(f),
                first_visit,
                last_visit if k % 3 == 0 else None,
                _session_state(f + u),
                last_visit,
                False,
                k == 0 or None,
            )


def shared_files(shape: DemoShape) -> list[bool]:
    """For each file, whether some other user has a file state for it."""
    shared = [False] * shape.files
    for u in range(shape.users):
        for f in guest_files(shape, u):
            shared[f] = True
    return shared


@dataclass(frozen=True)
class DemoDataReport:
    loaded: bool  # False: the tables already had rows, nothing was written
    users: int
    files: int
    file_states: int

    def summary(self) -> str:
        counts = f"{self.users} users, {self.files} files, {self.file_states} file states"
        if self.loaded:
            return f"Loaded demo data: {counts}."
        return f"Demo data not loaded: the tables already hold rows ({counts})."


def load_demo_data(
    dsn: str, users: int = 20, *, files_per_user: int = 10, guest_files_per_user: int = 10
) -> DemoDataReport:
    """Load the demo data set into the migrated tldraw schema, unless it already has rows."""
    shape = DemoShape(users, files_per_user, guest_files_per_user)
    with psycopg.connect(dsn) as conn:
        missing = [
            table
            for table in ("user", "file", "file_state")
            if conn.execute("SELECT to_regclass(%s)", [f'public."{table}"']).fetchone() == (None,)
        ]
        if missing:
            raise DemoDataError(f"tables {', '.join(missing)} do not exist; run `zcache migrate` first")
        # SHARE ROW EXCLUSIVE conflicts with itself and with writers: a second loader waits
        # here, then sees our rows.
        conn.execute('LOCK TABLE "user", file, file_state IN SHARE ROW EXCLUSIVE MODE')
        # Foreign-key checks run as a trigger per row and take most of the load time (about
        # 4 s of 5 at 10k users). The rows are consistent by construction, so a superuser
        # skips them; anyone else loads with the checks on.
        with contextlib.suppress(psycopg.errors.InsufficientPrivilege), conn.transaction():
            conn.execute("SET LOCAL session_replication_role = replica")
        existing = _row_counts(conn)
        if any(existing):
            conn.rollback()
            return DemoDataReport(False, *existing)
        shared = shared_files(shape)
        with conn.cursor() as cur:
            _copy(cur, "user", USER_COLUMNS, user_rows(shape))
            _copy(cur, "file", FILE_COLUMNS, file_rows(shape, shared))
            _copy(cur, "file_state", FILE_STATE_COLUMNS, file_state_rows(shape))
        conn.execute('ANALYZE "user", file, file_state')
        counts = _row_counts(conn)
        conn.commit()
    return DemoDataReport(True, *counts)


def _copy(cur: psycopg.Cursor[TupleRow], table: str, columns: Sequence[str], rows: Iterator[Row]) -> None:
    statement = sql.SQL("COPY {} ({}) FROM STDIN").format(
        sql.Identifier(table), sql.SQL(", ").join(map(sql.Identifier, columns))
    )
    with cur.copy(statement) as copy:
        for row in rows:
            copy.write_row(row)


def _row_counts(conn: psycopg.Connection[TupleRow]) -> tuple[int, int, int]:
    row = conn.execute(
        'SELECT (SELECT count(*) FROM "user"), (SELECT count(*) FROM file), (SELECT count(*) FROM file_state)'
    ).fetchone()
    assert row is not None
    return row[0], row[1], row[2]


def _user_created_ms(user: int) -> int:
    return ORIGIN_MS + user * _HOUR_MS


def _file_times(shape: DemoShape, file: int) -> tuple[int, int]:
    """(createdAt, updatedAt) of a file: after its owner signed up, edited within 30 days."""
    slot = file // shape.users
    created = _user_created_ms(file % shape.users) + slot * _DAY_MS + (file % 1000) * 1000
    return created, created + (file * 7919) % (30 * _DAY_MS)


def _tristate(n: int, modulus: int) -> bool | None:
    """A preference that is unset for most users, and on or off for the rest."""
    r = n % modulus
    return None if r > 1 else r == 0


def _session_state(n: int) -> str | None:
    return _SESSION_STATE if n % 4 == 0 else None
