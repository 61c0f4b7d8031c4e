"""The CVR store against real Postgres: schema creation, round trips of every record, catch-up
reads, ownership and concurrent modification (→ rejected groups), garbage collection, and a
database that cannot be reached."""

from __future__ import annotations

import json

import psycopg
import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from zcache.cvr import (
    CatchupRow,
    CVRFlush,
    CVRRowsBehind,
    CVRSnapshot,
    CVRStore,
    CVRStoreUnavailable,
    CVRVersion,
    DesireRecord,
    InstanceRecord,
    QueryRecord,
    cvr_schema,
)
from zcache import _native
from zcache.cvr.store import _array_literal, now_ms


def store(dsn: str, owner: str = "task-a") -> CVRStore:
    return CVRStore(dsn, app_id="zero", shard_num=0, owner=owner, max_conns=3)


def instance(group: str, version: CVRVersion, **kw: object) -> InstanceRecord:
    return InstanceRecord(group_id=group, version=version, last_active_ms=now_ms(), **kw)  # type: ignore[arg-type]


def key(**k: object) -> str:
    (text,) = _native.canonical_json([json.dumps(k)])
    return text


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    texts=st.lists(st.none() | st.text(), max_size=8),
    floats=st.lists(st.none() | st.floats() | st.integers(min_value=-(2**53), max_value=2**53), max_size=8),
    bools=st.lists(st.none() | st.booleans(), max_size=8),
)
def test_array_literals_read_back_as_the_values(
    pg_conn: psycopg.Connection, texts: list[str | None], floats: list[float | None], bools: list[bool | None]
) -> None:
    """The flush statement's array parameters are literals we write: any text (quotes, backslashes,
    braces, "NULL", empty), any float (infinities, NaN) and NULLs read back unchanged."""
    texts = [t.replace("\x00", "") if t is not None else None for t in texts]  # Postgres text has no NUL
    row = pg_conn.execute(
        "SELECT %s::text[], %s::float8[], %s::bool[]", [_array_literal(texts), _array_literal(floats), _array_literal(bools)]
    ).fetchone()
    assert row is not None
    got_texts, got_floats, got_bools = row
    assert got_texts == texts and got_bools == bools
    assert [None if f is None else repr(float(f)) for f in got_floats] == [None if f is None else repr(float(f)) for f in floats]


def test_versions_order_as_cookies() -> None:
    v0 = CVRVersion("00")
    assert v0.cookie == "00"
    v1 = v0.next("00")
    assert v1.cookie == "00:01"
    v2 = v1.next("527vbqo")
    assert v2.cookie == "527vbqo"
    v3 = v2.next("527vbqo").next("527vbqo")
    assert v3.cookie == "527vbqo:02"
    assert CVRVersion.parse("527vbqo:02") == v3
    assert sorted([v3, v0, v2, v1]) == [v0, v1, v2, v3]
    assert [v.cookie for v in sorted([v3, v0, v2, v1])] == sorted(v.cookie for v in (v0, v1, v2, v3))
    with pytest.raises(ValueError, match="malformed cookie"):
        CVRVersion.parse("zz:nope")


async def test_round_trip_and_catchup(pg_dsn: str, pg_conn: psycopg.Connection) -> None:
    s = store(pg_dsn)
    await s.ensure_schema()
    await s.ensure_schema()  # idempotent
    tables = {r[0] for r in pg_conn.execute("SELECT table_name FROM information_schema.tables WHERE table_schema = %s", [cvr_schema("zero", 0)])}
    assert tables == {"instances", "clients", "queries", "desires", "rows", "rowsVersion", "versionHistory"}
    assert pg_conn.execute('SELECT count(*) FROM "zero_0/cvr"."versionHistory"').fetchone() == (1,)

    assert (await s.load("g1", granted_at_ms=now_ms())).instance is None
    v1 = CVRVersion("00", 1)
    schema = {"tables": {"file": {"columns": {"id": {"type": "string"}}, "primaryKey": ["id"]}}}
    first = CVRFlush(
        instance(
            "g1",
            v1,
            client_schema=schema,
            profile_id="p1",
            granted_at_ms=now_ms(),
            ttl_clock_ms=12.5,
        ),
        expected_version=None,
        clients_added=["c1", "c2"],
        queries=[QueryRecord("q1", name="filesByOwner", args=[{"ownerId": "u1"}])],
        desires=[DesireRecord("c1", "q1", v1, ttl_ms=300000.0)],
    )
    assert await s.flush([first]) == set()

    v2 = CVRVersion("527vbqo")
    second = CVRFlush(
        # The schema was written by the first flush: later ones leave it as it is.
        instance("g1", v2, client_schema=None, profile_id="p1", replica_version="4abc", ttl_clock_ms=99.0),
        expected_version=v1,
        write_client_schema=False,
        clients_removed=["c2"],
        queries=[
            QueryRecord("q1", name="filesByOwner", args=[{"ownerId": "u1"}], patch_version=v2, transformation_hash="t1", transformation_version=v2),
            QueryRecord("lmids", client_ast={"table": "zero_0.clients"}, internal=True, patch_version=v2),
        ],
        rows=_native.RowChanges.of_records(
            [
                ("file", key(id="f1"), "4abc"),
                ("file", key(id="f2"), "4abd"),
                ("file_state", key(userId="u1", fileId="f1"), "4abc"),
            ]
        ),
        rows_new=True,  # g1 has no row records yet: inserted without conflict handling
    )
    assert await s.flush([second]) == set()

    v3 = CVRVersion("527vbqo", 1)
    third = CVRFlush(
        instance("g1", v3, client_schema=None, profile_id="p1", replica_version="4abc", ttl_clock_ms=120.0),
        expected_version=v2,
        write_client_schema=False,
        desires=[DesireRecord("c1", "q1", v3, deleted=True, ttl_ms=0.0, inactivated_at_ms=120.0)],
        rows=_native.RowChanges.of_records([("file", key(id="f2"), None), ("file", key(id="f1"), "5aaa")]),
    )
    assert await s.flush([third]) == set()

    snap = await s.load("g1", granted_at_ms=now_ms())
    assert snap.instance is not None
    assert snap.instance.version == v3
    assert snap.instance.client_schema == schema
    assert snap.instance.profile_id == "p1"
    assert snap.instance.replica_version == "4abc"
    assert snap.instance.ttl_clock_ms == 120.0
    assert snap.instance.owner == "task-a"
    assert snap.clients == {"c1"}
    assert snap.queries["q1"].patch_version == v2
    assert snap.queries["q1"].transformation_hash == "t1"
    assert snap.queries["q1"].args == [{"ownerId": "u1"}]
    assert snap.queries["lmids"].internal and snap.queries["lmids"].client_ast == {"table": "zero_0.clients"}
    assert snap.desires[("c1", "q1")] == DesireRecord("c1", "q1", v3, deleted=True, ttl_ms=0.0, inactivated_at_ms=120.0)

    assert await s.row_versions("g1") == {
        ("file", key(id="f1")): "5aaa",
        ("file_state", key(fileId="f1", userId="u1")): "4abc",
    }
    everything = await s.catchup_rows("g1", None)
    assert sorted((r.table, r.row_key) for r in everything) == [("file", key(id="f1")), ("file_state", key(fileId="f1", userId="u1"))]
    since_v2 = await s.catchup_rows("g1", v2)
    assert sorted(since_v2, key=lambda r: r.row_key) == [
        CatchupRow("file", key(id="f1"), "5aaa"),
        CatchupRow("file", key(id="f2"), None),
    ]
    assert await s.catchup_rows("g1", v3) == []
    assert pg_conn.execute('SELECT "version" FROM "zero_0/cvr"."rowsVersion" WHERE "clientGroupID" = %s', ["g1"]).fetchone() == (v3.cookie,)
    s.close()


async def test_a_later_owner_takes_the_group(pg_dsn: str) -> None:
    a, b = store(pg_dsn, "task-a"), store(pg_dsn, "task-b")
    await a.ensure_schema()
    v1 = CVRVersion("00", 1)
    assert await a.flush([CVRFlush(instance("g", v1, granted_at_ms=now_ms()), expected_version=None)]) == set()
    # Both start a new group "n" at once: the second flush finds the first one's row.
    assert await b.flush([CVRFlush(instance("n", v1), expected_version=None)]) == set()
    assert await a.flush([CVRFlush(instance("n", v1), expected_version=None)]) == {"n"}

    await a.load("g", granted_at_ms=now_ms())
    await trio.sleep(0.01)
    snap = await b.load("g", granted_at_ms=now_ms())
    assert snap.instance is not None and snap.instance.owner == "task-b"
    # a's flush is refused (b owns it now); b's goes through; in a batch only "g" is refused.
    v2 = CVRVersion("00", 2)
    other = CVRFlush(instance("h", v1), expected_version=None)
    assert await a.flush([CVRFlush(instance("g", v2), expected_version=v1), other]) == {"g"}
    assert await b.flush([CVRFlush(instance("g", v2), expected_version=v1)]) == set()
    # A stale expected version is refused too (a concurrent modification).
    assert await b.flush([CVRFlush(instance("g", CVRVersion("00", 3)), expected_version=v1)]) == {"g"}
    # An older grant does not take the group back.
    await a.load("g", granted_at_ms=now_ms() - 60_000)
    snap = await a.load("g", granted_at_ms=0)
    assert snap.instance is not None and snap.instance.owner == "task-b" and snap.instance.version == v2
    a.close()
    b.close()


async def test_groups_arriving_together_share_statements_and_keep_their_own_outcomes(pg_dsn: str) -> None:
    """Flushes and loads of many groups at once go out in a few statements; each group gets
    its own result: its records, its rejection, or the error its own data caused."""
    a, b = store(pg_dsn, "task-a"), store(pg_dsn, "task-b")
    await a.ensure_schema()
    v1 = CVRVersion("00", 1)
    assert await b.flush([CVRFlush(instance("taken", v1, granted_at_ms=now_ms()), expected_version=None)]) == set()
    n = 40

    def flush_of(i: int) -> CVRFlush:
        gid = f"g{i}"
        return CVRFlush(
            # A NUL cannot be sent in a text value: this group's part of the statement fails.
            instance(gid, v1, granted_at_ms=now_ms(), profile_id="bad\x00" if i == 7 else f"p{i}"),
            expected_version=None,
            clients_added=[f"c{i}"],
            queries=[QueryRecord(f"q{i}", client_ast={"table": "file", "i": i}, patch_version=v1)],
            desires=[DesireRecord(f"c{i}", f"q{i}", v1, ttl_ms=1000.0 + i)],
            rows=_native.RowChanges.of_records([("file", key(id=f"f{i}-{k}"), f"v{k}") for k in range(i % 4)]),
            rows_new=True,
        )

    outcomes: dict[str, object] = {}

    async def flush(f: CVRFlush) -> None:
        try:
            outcomes[f.instance.group_id] = await a.flush_one(f)
        except psycopg.DataError:
            outcomes[f.instance.group_id] = "error"

    async with trio.open_nursery() as nursery:
        for i in range(n):
            nursery.start_soon(flush, flush_of(i))
        nursery.start_soon(flush, CVRFlush(instance("taken", CVRVersion("00", 2)), expected_version=v1))
    assert outcomes == {**{f"g{i}": False for i in range(n) if i != 7}, "g7": "error", "taken": True}
    assert a._flushes.batches < n // 4

    snapshots: dict[str, object] = {}

    async def load(gid: str) -> None:
        snapshots[gid] = await a.load(gid, granted_at_ms=now_ms())

    async with trio.open_nursery() as nursery:
        for i in range(n):
            nursery.start_soon(load, f"g{i}")
        nursery.start_soon(load, "nobody")
    assert a._loads.batches < n // 4
    for i in range(n):
        snap = snapshots[f"g{i}"]
        if i == 7:
            assert snap.instance is None  # type: ignore[attr-defined]
            continue
        assert snap.instance.version == v1 and snap.instance.profile_id == f"p{i}"  # type: ignore[attr-defined]
        assert snap.instance.owner == "task-a"  # type: ignore[attr-defined]
        assert snap.clients == {f"c{i}"}  # type: ignore[attr-defined]
        assert snap.queries == {f"q{i}": QueryRecord(f"q{i}", client_ast={"table": "file", "i": i}, patch_version=v1)}  # type: ignore[attr-defined]
        assert snap.desires == {(f"c{i}", f"q{i}"): DesireRecord(f"c{i}", f"q{i}", v1, ttl_ms=1000.0 + i)}  # type: ignore[attr-defined]
        assert await a.row_versions(f"g{i}") == {("file", key(id=f"f{i}-{k}")): f"v{k}" for k in range(i % 4)}
    assert snapshots["nobody"].instance is None  # type: ignore[attr-defined]
    a.close()
    b.close()


async def test_garbage_collection(pg_dsn: str, pg_conn: psycopg.Connection) -> None:
    s = store(pg_dsn)
    await s.ensure_schema()
    v1 = CVRVersion("00", 1)
    old = InstanceRecord(group_id="old", version=v1, last_active_ms=now_ms() - 3_600_000)
    fresh = InstanceRecord(group_id="fresh", version=v1, last_active_ms=now_ms())
    await s.flush(
        [
            CVRFlush(old, None, clients_added=["c"], queries=[QueryRecord("q")], desires=[DesireRecord("c", "q", v1)], rows=_native.RowChanges.of_records([("file", key(id="x"), "1")]), rows_new=True),
            CVRFlush(fresh, None, clients_added=["c"]),
        ]
    )
    assert await s.collect_garbage(inactive_before_ms=now_ms() - 60_000, limit=10) == ["old"]
    assert await s.collect_garbage(inactive_before_ms=now_ms() - 60_000, limit=10) == []
    snap = await s.load("old", granted_at_ms=now_ms())
    assert snap.instance is not None and snap.instance.deleted
    assert not snap.clients and not snap.queries and not snap.desires
    assert await s.row_versions("old") == {}
    assert (await s.load("fresh", granted_at_ms=now_ms())).clients == {"c"}
    s.close()


async def test_unreachable_database(pg_cluster) -> None:  # type: ignore[no-untyped-def]
    s = CVRStore(pg_cluster.dsn("no_such_database_zcache"), app_id="zero", shard_num=0, owner="t", max_conns=1)
    with pytest.raises(CVRStoreUnavailable, match="CVR database unavailable"):
        await s.ensure_schema()
    with pytest.raises(CVRStoreUnavailable):
        await s.load("g", granted_at_ms=now_ms())


def rows_of(n: int, version: str, start: int = 0) -> _native.RowChanges:
    return _native.RowChanges.of_records([("file", key(id=f"f{i}"), version) for i in range(start, start + n)])


async def test_large_row_records_are_written_by_the_row_writer_in_version_order(pg_dsn: str, pg_conn: psycopg.Connection) -> None:
    s = store(pg_dsn)
    s.defer_rows_above = 2
    await s.ensure_schema()
    v1, v2, v3 = CVRVersion("00", 1), CVRVersion("527vbqo"), CVRVersion("527vbqo", 1)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(s.write_deferred_rows)
        await trio.testing.wait_all_tasks_blocked()
        first = CVRFlush(instance("g1", v1), expected_version=None, rows=rows_of(5, "4abc"), rows_new=True)
        assert await s.flush([first]) == set()
        # A small change after a deferred one is deferred too, so the two are written in order.
        second = CVRFlush(
            instance("g1", v2),
            expected_version=v1,
            rows=_native.RowChanges.of_records([("file", key(id="f0"), None), ("file", key(id="f1"), "5aaa")]),
        )
        assert await s.flush([second]) == set()
        assert s.deferred_flushes == 2
        # Reading the rows waits for the writer.
        assert await s.row_versions("g1") == {("file", key(id=f"f{i}")): ("5aaa" if i == 1 else "4abc") for i in range(1, 5)}
        assert pg_conn.execute('SELECT "version" FROM "zero_0/cvr"."rowsVersion" WHERE "clientGroupID" = %s', ["g1"]).fetchone() == (v2.cookie,)
        # Once written, a small change goes with its flush again.
        third = CVRFlush(instance("g1", v3), expected_version=v2, rows=rows_of(1, "6aaa", start=7))
        assert await s.flush([third]) == set()
        assert s.deferred_flushes == 2
        assert pg_conn.execute('SELECT "version" FROM "zero_0/cvr"."rowsVersion" WHERE "clientGroupID" = %s', ["g1"]).fetchone() == (v3.cookie,)
        assert [r.row_key for r in await s.catchup_rows("g1", v2)] == [key(id="f7")]
        nursery.cancel_scope.cancel()
    s.close()


async def test_a_group_is_taken_over_only_once_its_row_records_are_written(pg_dsn: str) -> None:
    a, b = store(pg_dsn, "task-a"), store(pg_dsn, "task-b")
    a.defer_rows_above = 0
    await a.ensure_schema()
    v1, v2 = CVRVersion("00", 1), CVRVersion("527vbqo")
    assert await a.flush([CVRFlush(instance("g", v1, granted_at_ms=now_ms()), expected_version=None)]) == set()
    # The writer is taken as running but its task does not run yet: the records wait.
    a._writer_running = True
    assert await a.flush([CVRFlush(instance("g", v2), expected_version=v1, rows=rows_of(3, "4abc"), rows_new=True)]) == set()
    assert a.deferred_flushes == 1
    await trio.sleep(0.01)
    b.rows_behind_attempts = 2
    with pytest.raises(CVRRowsBehind, match=r"waiting for CVR@527vbqo to catch up from 00:01"):
        await b.load("g", granted_at_ms=now_ms())
    # Not taken meanwhile: the owner's next flush is still accepted, and deferred after the first.
    v3 = CVRVersion("527vbqo", 1)
    assert await a.flush([CVRFlush(instance("g", v3), expected_version=v2, rows=rows_of(1, "5aaa", start=3))]) == set()

    b.rows_behind_attempts = 40
    loaded: list[CVRSnapshot] = []

    async def load() -> None:
        loaded.append(await b.load("g", granted_at_ms=now_ms()))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(load)
        await trio.sleep(0.3)
        assert not loaded  # looking again until the rows are complete
        await a._write_next()
    assert loaded[0].instance is not None and loaded[0].instance.owner == "task-b"
    assert loaded[0].rows_version == v3.cookie
    assert await b.row_versions("g") == {("file", key(id=f"f{i}")): ("5aaa" if i == 3 else "4abc") for i in range(4)}
    a.close()
    b.close()
