"""Faults: another process taking a client group over, the CVR database going away for a
while, the view syncer killed while pokes are in flight. In every case the clients get an error
or a closed socket, the CVR stays consistent, and after reconnecting with their cookies their
views equal the queries run on Postgres."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import trio

from tests.fixtures.fix_pg import PgServer, database_name
from tests.view_syncer.harness import CLIENT_SCHEMA, FakeClient, files_of, files_with_owner, init_connection, running
from zcache import _native


@pytest.fixture
def cvr_db(pg_cluster: PgServer, request: pytest.FixtureRequest) -> Iterator[str]:
    """A CVR database of its own, so that it can be made unreachable without the upstream."""
    name = database_name(request.node.name + "_cvr")
    dsn = pg_cluster.create_database(name)
    try:
        yield dsn
    finally:
        block(pg_cluster, name, False)
        pg_cluster.drop_database(name)


def block(pg_cluster: PgServer, dbname: str, blocked: bool) -> None:
    """Refuses (or allows again) every connection to `dbname`, dropping the open ones."""
    with psycopg.connect(pg_cluster.admin_dsn, autocommit=True) as conn:
        conn.execute(f'ALTER DATABASE "{dbname}" WITH ALLOW_CONNECTIONS {str(not blocked).lower()}')  # type: ignore[arg-type]
        if blocked:
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", [dbname])


async def test_a_second_owner_takes_the_group_and_the_first_rehomes(pg_dsn: str, tmp_path: Path) -> None:
    async with running(pg_dsn, tmp_path) as h:
        first = await h.start_service()
        second = await h.start_service()
        q = files_of("u1")
        a = FakeClient("ca", "g1")
        await h.connect(a, init_connection(q.put(300_000), active_clients=["ca"]), service=first)
        await a.wait_for(lambda: q.hash in a.view.got, "hydration")
        b = FakeClient("cb", "g1")
        sb = await h.connect(b, init_connection(active_clients=["ca", "cb"]), service=second)
        await b.wait_for(lambda: q.hash in b.view.got, "the second process's catch-up")

        h.upstream.execute("UPDATE file SET name = 'renamed' WHERE id = 'f1'")
        await a.wait_for(lambda: bool(a.errors), "Rehome")
        assert a.errors[0]["kind"] == "Rehome"
        await b.wait_for(lambda: b.view.rows == h.expected([q]), "the owner's poke")

        # The client comes back (to the owner) from its cookie and converges.
        a2 = FakeClient("ca", "g1", base_cookie=a.view.cookie, view=a.view)
        await h.connect(a2, init_connection(active_clients=["ca", "cb"], client_schema=None), service=second)
        await a2.wait_for(lambda: a2.pokes >= 1, "catch-up")
        assert a2.view.rows == h.expected([q])
        await sb.close()


async def test_cvr_database_unavailable_for_a_while(pg_dsn: str, cvr_db: str, pg_cluster: PgServer, tmp_path: Path) -> None:
    cvr_name = psycopg.conninfo.conninfo_to_dict(cvr_db)["dbname"]
    assert isinstance(cvr_name, str)
    async with running(pg_dsn, tmp_path, cvr_dsn=cvr_db) as h:
        await h.start_service()
        q = files_with_owner("u1")
        c = FakeClient("c1", "g1")
        await h.connect(c, init_connection(q.put(300_000), active_clients=["c1"]))
        await c.wait_for(lambda: q.hash in c.view.got, "hydration")
        await h.synced()
        with psycopg.connect(cvr_db) as conn:
            before = conn.execute('SELECT "version" FROM "zero_0/cvr".instances').fetchall()
        assert before == [(c.view.cookie,)]

        block(pg_cluster, cvr_name, True)
        h.upstream.execute("UPDATE file SET name = 'during-outage' WHERE id = 'f1'")
        await c.wait_for(lambda: bool(c.errors), "an error")
        assert c.errors[0]["kind"] == "ServerOverloaded"
        assert "CVR database is unavailable" in c.errors[0]["message"]
        # The poke's start went out before its flush failed: it was cancelled, nothing applied.
        assert c.cancelled == 1
        assert c.view.table("file")[("f1",)]["name"] == "alpha"
        # Connecting meanwhile fails the same way; the service keeps running.
        d = FakeClient("c1", "g1", base_cookie=c.view.cookie, view=c.view)
        await h.connect(d, init_connection(active_clients=["c1"], client_schema=None))
        await d.wait_for(lambda: bool(d.errors), "an error on connect")
        assert d.errors[0]["kind"] == "ServerOverloaded"

        block(pg_cluster, cvr_name, False)
        with psycopg.connect(cvr_db) as conn:
            assert conn.execute('SELECT "version" FROM "zero_0/cvr".instances').fetchall() == before
        h.upstream.execute("UPDATE file SET name = 'after-outage' WHERE id = 'f2'")
        await h.caught_up()
        e = FakeClient("c1", "g1", base_cookie=c.view.cookie, view=c.view)
        se = await h.connect(e, init_connection(active_clients=["c1"], client_schema=None))
        await e.wait_for(lambda: e.pokes >= 1, "catch-up after the outage")
        await h.synced()
        assert e.view.rows == h.expected([q])
        assert not e.errors
        await se.close()


async def test_killed_while_poking_then_restarted(pg_dsn: str, tmp_path: Path) -> None:
    """Writes keep coming while the view syncer is killed (its tasks cancelled wherever they
    are: a flush done but its poke unsent, a poke half sent); a new one serves the clients from
    their cookies."""
    async with running(pg_dsn, tmp_path) as h:
        await h.start_service()
        queries = [files_with_owner("u1"), files_of("u2")]
        clients = [FakeClient(f"c{i}", f"g{i % 3}") for i in range(6)]
        for i, c in enumerate(clients):
            await h.connect(c, init_connection(queries[i % 2].put(300_000), active_clients=[x.params.client_id for x in clients if x.params.client_group_id == c.params.client_group_id]))
        for c in clients:
            await c.wait_for(lambda c=c: c.pokes >= 2, "hydration")

        async def writes(n: int) -> None:
            for i in range(n):
                h.upstream.execute("UPDATE file SET name = %s WHERE id = %s", [f"name-{n}-{i}", ("f1", "f2", "f3")[i % 3]])
                h.upstream.execute("INSERT INTO file VALUES (%s, 'new', %s)", [f"n{n}-{i}", ("u1", "u2")[i % 2]])
                await trio.sleep(0.005)

        await writes(30)
        h.stop_service()
        await writes(10)
        await h.caught_up()
        await h.start_service()
        again = []
        for i, c in enumerate(clients):
            c.pokes = 0
            r = FakeClient(c.params.client_id, c.params.client_group_id, base_cookie=c.view.cookie, view=c.view)
            await h.connect(r, init_connection(active_clients=[x.params.client_id for x in clients if x.params.client_group_id == c.params.client_group_id], client_schema=None))
            again.append(r)
        for r in again:
            await r.wait_for(lambda r=r: r.pokes >= 1, "catch-up")
        await h.synced()
        for i, r in enumerate(again):
            group = [queries[j % 2] for j, x in enumerate(clients) if x.params.client_group_id == r.params.client_group_id]
            assert r.view.rows == h.expected(group), r.params.client_id
            assert not r.broken and not r.errors


async def test_a_group_whose_cvr_is_ahead_of_the_replica_waits_for_it(pg_dsn: str, tmp_path: Path) -> None:
    """A CVR written by a process whose replica was further on (or by this one before a power
    loss took the replica's last commits, not yet synced, back): the group loads only once the
    replica has caught up, so its clients are never taken back to older rows."""
    async with running(pg_dsn, tmp_path) as h:
        await h.start_service()
        q = files_of("u1")
        a = FakeClient("ca", "g1")
        await h.connect(a, init_connection(q.put(300_000), active_clients=["ca"]))
        await a.wait_for(lambda: q.hash in a.view.got, "hydration")
        await h.synced()
        h.stop_service()
        # The next commit upstream is past this version; until then the replica is behind it.
        row = h.upstream.execute("SELECT pg_current_wal_lsn()::text").fetchone()
        assert row is not None
        ahead = _native.lexi_version(_native.parse_lsn(row[0]) + 1)
        for table in ("instances", "rowsVersion"):
            h.upstream.execute(f'UPDATE "zero_0/cvr"."{table}" SET "version" = %s WHERE "clientGroupID" = \'g1\'', [ahead])  # type: ignore[arg-type]

        await h.start_service()
        b = FakeClient("ca", "g1", base_cookie=a.view.cookie, view=a.view)
        await h.connect(b, init_connection(active_clients=["ca"], client_schema=None))
        await trio.sleep(0.5)
        assert b.pokes == 0 and not b.errors, "the group loaded before the replica reached its CVR"
        h.upstream.execute("UPDATE file SET name = 'renamed' WHERE id = 'f1'")
        await b.wait_for(lambda: b.pokes >= 1, "the catch-up once the replica passed the CVR")
        await h.synced()
        assert b.view.rows == h.expected([q])
        assert b.view.cookie > ahead
        assert not b.broken and not b.errors


class StalledClient(FakeClient):
    """A client that stops reading after its first poke (its socket's buffers are full)."""

    async def send_many(self, messages: object) -> None:
        if self.pokes:
            await trio.sleep_forever()
        await super().send_many(messages)


async def test_a_stalled_client_is_dropped_and_holds_nobody_up(pg_dsn: str, tmp_path: Path) -> None:
    async with running(pg_dsn, tmp_path) as h:
        service = await h.start_service()
        q1, q2 = files_of("u1"), files_of("u2")
        stalled = StalledClient("cs", "g-stalled")
        await h.connect(stalled, init_connection(q1.put(300_000), active_clients=["cs"]))
        healthy = FakeClient("ch", "g-healthy")
        sh = await h.connect(healthy, init_connection(q2.put(300_000), active_clients=["ch"]))
        await healthy.wait_for(lambda: q2.hash in healthy.view.got, "hydration")
        with trio.fail_after(20):
            while not service.groups["g-stalled"].connections:
                await trio.sleep(0.01)
        # More pokes than a connection may have queued (one per synced write), each for both groups.
        from zcache.view_syncer.group import CONNECTION_QUEUE

        for i in range(CONNECTION_QUEUE + 8):
            h.upstream.execute("UPDATE file SET name = %s WHERE id IN ('f1', 'f3')", [f"n{i}"])
            await h.synced()
        assert healthy.view.rows == h.expected([q2])
        with trio.fail_after(20):
            while not stalled.closed:
                await trio.sleep(0.01)
        assert "cs" not in service.groups["g-stalled"].connections
        await sh.close()


async def test_groups_are_unloaded_when_their_clients_leave(pg_dsn: str, tmp_path: Path) -> None:
    async with running(pg_dsn, tmp_path) as h:
        service = await h.start_service(idle_unload_s=0.5)
        q = files_with_owner("u1")
        sessions = []
        for i in range(5):
            c = FakeClient(f"c{i}", f"g{i}")
            sessions.append(await h.connect(c, init_connection(q.put(300_000), active_clients=[f"c{i}"])))
            await c.wait_for(lambda c=c: q.hash in c.view.got, "hydration")
        stats = dict(await trio.to_thread.run_sync(service._engine.statistics))  # type: ignore[union-attr]
        assert stats["groups"] == 5 and stats["group_rows"] > 0
        for s in sessions:
            await s.close()
        with trio.fail_after(10):
            while service.groups:
                await trio.sleep(0.1)
        # The engine lets go of them too, without waiting for an upstream write to call it.
        with trio.fail_after(10):
            while (stats := dict(await trio.to_thread.run_sync(service._engine.statistics)))["groups"]:  # type: ignore[union-attr]
                await trio.sleep(0.1)
        assert stats["group_rows"] == 0
        # A returning client is served from the CVR.
        back = FakeClient("c0", "g0", base_cookie=sessions[0].client.view.cookie, view=sessions[0].client.view)
        sb = await h.connect(back, init_connection(active_clients=["c0"], client_schema=None))
        await back.wait_for(lambda: back.pokes >= 1, "catch-up")
        assert back.view.rows == h.expected([q])
        await sb.close()


async def test_a_group_back_before_its_engine_state_was_released(pg_dsn: str, tmp_path: Path) -> None:
    """A retired group's engine state is dropped lazily (by the ticker, a few groups per engine
    call); a client coming back first gets a new group whose own first engine call drops it."""
    async with running(pg_dsn, tmp_path) as h:
        service = await h.start_service()
        q = files_with_owner("u1")
        c = FakeClient("c0", "g0")
        s = await h.connect(c, init_connection(q.put(300_000), active_clients=["c0"]))
        await c.wait_for(lambda: q.hash in c.view.got, "hydration")
        await s.close()
        group = service.groups["g0"]
        async with group.locked():
            group.retire()  # what the ticker does to an idle group, short of the release
        del service.groups["g0"]
        assert "g0" in service._forgotten

        back = FakeClient("c0", "g0", base_cookie=c.view.cookie, view=c.view)
        sb = await h.connect(back, init_connection(q.put(300_000), active_clients=["c0"], client_schema=None))
        await back.wait_for(lambda: back.pokes >= 1, "catch-up")
        assert "g0" not in service._forgotten
        h.upstream.execute("UPDATE file SET name = 'after-return' WHERE id = 'f1'")
        await h.synced()
        await back.wait_for(lambda: back.view.rows == h.expected([q]), "the update")
        stats = dict(await trio.to_thread.run_sync(service._engine.statistics))  # type: ignore[union-attr]
        assert stats["groups"] == 1
        assert stats["group_rows"] == len(h.expected([q]))
        await sb.close()


async def test_replica_rebuilt_clients_rehome_and_converge(pg_dsn: str, tmp_path: Path) -> None:
    """A change the stream cannot express (a column's type) makes the replicator build a new
    replica: the view syncer reopens the engine, clients are sent Rehome and come back from
    their cookies."""
    async with running(pg_dsn, tmp_path) as h:
        await h.start_service()
        q = files_with_owner("u1")
        c = FakeClient("c1", "g1")
        await h.connect(c, init_connection(q.put(300_000), active_clients=["c1"]))
        await c.wait_for(lambda: q.hash in c.view.got, "hydration")
        with h.upstream.transaction():
            h.upstream.execute("UPDATE file SET name = 'during' WHERE id = 'f1'")
            h.upstream.execute('ALTER TABLE "user" ALTER COLUMN name TYPE varchar(200)')
        await c.wait_for(lambda: bool(c.errors), "Rehome")
        assert c.errors[0]["kind"] == "Rehome"
        assert h.replicator.statistics().resyncs == 1
        h.upstream.execute("UPDATE file SET name = 'after' WHERE id = 'f2'")
        await h.caught_up()
        back = FakeClient("c1", "g1", base_cookie=c.view.cookie, view=c.view)
        s = await h.connect(back, init_connection(active_clients=["c1"], client_schema=None))
        await back.wait_for(lambda: back.pokes >= 1, "catch-up")
        await h.synced()
        assert back.view.rows == h.expected([q])
        assert not back.errors and not back.broken
        await s.close()


async def test_replica_rebuilt_skips_groups_retired_meanwhile(pg_dsn: str, tmp_path: Path) -> None:
    """While the rebuild waits for a busy group's lock, the ticker retires an idle group: the
    rebuild skips it and still rehomes the others."""
    async with running(pg_dsn, tmp_path) as h:
        service = await h.start_service()
        q = files_of("u1")
        busy = FakeClient("cb", "g-busy")
        await h.connect(busy, init_connection(q.put(300_000), active_clients=["cb"]))
        await busy.wait_for(lambda: q.hash in busy.view.got, "hydration")
        idle = FakeClient("ci", "g-idle")
        si = await h.connect(idle, init_connection(q.put(300_000), active_clients=["ci"]))
        await idle.wait_for(lambda: q.hash in idle.view.got, "hydration")
        await si.close()
        g_busy, g_idle = service.groups["g-busy"], service.groups["g-idle"]
        with trio.fail_after(10):
            while g_idle.connections:
                await trio.sleep(0.01)
        assert g_busy.try_lock()
        rebuilt = trio.Event()

        async def rebuild() -> None:
            await service._replica_rebuilt()
            rebuilt.set()

        h.nursery.start_soon(rebuild)
        await trio.testing.wait_all_tasks_blocked(0.05)
        assert not rebuilt.is_set()
        # What the ticker does to an idle group.
        assert g_idle.try_lock()
        g_idle.retire()
        del service.groups["g-idle"]
        g_idle.unlock()
        g_busy.unlock()
        with trio.fail_after(10):
            await rebuilt.wait()
        await busy.wait_for(lambda: bool(busy.errors), "Rehome")
        assert busy.errors[0]["kind"] == "Rehome"
        assert not service.groups
        # A client connecting after the rebuild is served on the new engine.
        back = FakeClient("cb", "g-busy", base_cookie=busy.view.cookie, view=busy.view)
        s = await h.connect(back, init_connection(active_clients=["cb"], client_schema=None))
        await back.wait_for(lambda: back.pokes >= 1, "catch-up")
        h.upstream.execute("UPDATE file SET name = 'after the rebuild' WHERE id = 'f1'")
        await h.synced()
        assert back.view.rows == h.expected([q]) and not back.errors
        await s.close()


async def test_many_groups_connecting_while_the_cvr_database_is_unavailable(
    pg_dsn: str, cvr_db: str, pg_cluster: PgServer, tmp_path: Path
) -> None:
    """Batched loads and flushes that fail give every group in them the error; none is half
    written, and all converge once the database is back."""
    cvr_name = psycopg.conninfo.conninfo_to_dict(cvr_db)["dbname"]
    assert isinstance(cvr_name, str)
    n = 30
    queries = [files_of("u1"), files_with_owner("u2")]
    async with running(pg_dsn, tmp_path, cvr_dsn=cvr_db) as h:
        await h.start_service()
        # Half of them exist already (flushed, then disconnected).
        first = [FakeClient(f"c{i}", f"g{i}") for i in range(0, n, 2)]
        sessions = [await h.connect(c, init_connection(queries[0].put(300_000), active_clients=[c.params.client_id])) for c in first]
        for c in first:
            await c.wait_for(lambda c=c: queries[0].hash in c.view.got, "hydration")
        for s in sessions:
            await s.close()
        with psycopg.connect(cvr_db) as conn:
            before = conn.execute('SELECT "clientGroupID", "version" FROM "zero_0/cvr".instances ORDER BY 1').fetchall()
        assert len(before) == len(first)
        # A new process: every group must be loaded from the store.
        h.stop_service()
        await h.start_service()

        block(pg_cluster, cvr_name, True)
        views = {c.params.client_group_id: c.view for c in first}
        failing = [
            FakeClient(f"c{i}", f"g{i}", base_cookie=views[f"g{i}"].cookie if f"g{i}" in views else None, view=views.get(f"g{i}"))
            for i in range(n)
        ]
        for i, c in enumerate(failing):
            init = init_connection(queries[i % 2].put(300_000), active_clients=[c.params.client_id], client_schema=None if i % 2 == 0 else CLIENT_SCHEMA)
            await h.connect(c, init)
        for c in failing:
            await c.wait_for(lambda c=c: bool(c.errors), "an error")
            assert c.errors[0]["kind"] == "ServerOverloaded", c.errors

        block(pg_cluster, cvr_name, False)
        with psycopg.connect(cvr_db) as conn:
            assert conn.execute('SELECT "clientGroupID", "version" FROM "zero_0/cvr".instances ORDER BY 1').fetchall() == before
        h.upstream.execute("UPDATE file SET name = 'after-outage' WHERE id IN ('f1', 'f3')")
        await h.caught_up()
        again = [FakeClient(c.params.client_id, c.params.client_group_id, base_cookie=c.params.base_cookie, view=c.view) for c in failing]
        for i, c in enumerate(again):
            init = init_connection(queries[i % 2].put(300_000), active_clients=[c.params.client_id], client_schema=None if i % 2 == 0 else CLIENT_SCHEMA)
            await h.connect(c, init)
        for i, c in enumerate(again):
            await c.wait_for(lambda c=c, i=i: queries[i % 2].hash in c.view.got, "hydration after the outage")
        await h.synced()
        for i, c in enumerate(again):
            assert c.view.rows == h.expected([queries[i % 2]]), c.params.client_id
            assert not c.errors and not c.broken
