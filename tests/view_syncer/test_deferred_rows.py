"""Row records written after the poke (the CVR store's row writer): clients do not wait for
them and reconnecting clients read them in order; a group whose records never reached the
store (a crash, a failed write) is refused with ClientNotFound, as zero-cache does, since what
its clients must delete is unknown; a new group then syncs as usual."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio

from tests.view_syncer.harness import FakeClient, Harness, files_with_owner, init_connection, running
from zcache.cvr import CVRStore
from zcache.view_syncer import ViewSyncerService


def recorded(h: Harness, group_id: str) -> set[tuple[str, str]]:
    """The live rows the CVR records for the group: (table, id)."""
    rows = h.upstream.execute(
        """SELECT "table", "rowKey"->>'id' FROM "zero_0/cvr".rows WHERE "clientGroupID" = %s AND "refCounts" IS NOT NULL""",
        [group_id],
    ).fetchall()
    return {(t, k) for t, k in rows}


def expected_keys(h: Harness, queries: list[Any]) -> set[tuple[str, str]]:
    return {(t, pk[0]) for t, pk in h.expected(queries)}


def patch_writer(monkeypatch: pytest.MonkeyPatch, before: Callable[[], object]) -> None:
    """Runs `before` in the store's worker thread ahead of each write of deferred row records."""
    write = CVRStore._write_rows

    def run(self: CVRStore, *args: Any) -> None:
        before()
        write(self, *args)

    monkeypatch.setattr(CVRStore, "_write_rows", run)


async def deferring_service(h: Harness) -> ViewSyncerService:
    service = await h.start_service()
    service.store.defer_rows_above = 0
    return service


async def test_clients_do_not_wait_for_the_row_records(pg_dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    release = threading.Event()
    patch_writer(monkeypatch, lambda: release.wait(30))
    async with running(pg_dsn, tmp_path) as h:
        service = await deferring_service(h)
        q = files_with_owner("u1")
        c = FakeClient("c1", "g1")
        s = await h.connect(c, init_connection(q.put(300_000), active_clients=["c1"]))
        # Hydrated while the row writer is held: the poke did not wait for the records.
        await c.wait_for(lambda: q.hash in c.view.got, "hydration")
        assert c.view.rows == h.expected([q])
        h.upstream.execute("UPDATE file SET name = 'alpha-2' WHERE id = 'f1'")
        await h.synced()
        assert c.view.rows == h.expected([q])
        assert service.store.deferred_flushes >= 2
        assert recorded(h, "g1") == set()
        release.set()
        await service.store.rows_written("g1")
        assert recorded(h, "g1") == expected_keys(h, [q])
        await s.close()

        # Offline changes; the client comes back from its cookie: exactly what changed.
        h.upstream.execute("UPDATE file SET name = 'alpha-3' WHERE id = 'f1'")
        h.upstream.execute("INSERT INTO file VALUES ('f8', 'theta', 'u1')")
        await h.synced()
        again = FakeClient("c1", "g1", base_cookie=c.view.cookie, view=c.view)
        s2 = await h.connect(again, init_connection(active_clients=["c1"], client_schema=None))
        await again.wait_for(lambda: again.pokes >= 1, "catch-up")
        assert again.view.rows == h.expected([q])
        assert not again.broken and not again.errors
        await s2.close()


async def test_a_group_whose_row_records_never_reached_the_store_is_refused(pg_dsn: str, tmp_path: Path) -> None:
    async with running(pg_dsn, tmp_path) as h:
        service = await deferring_service(h)
        q = files_with_owner("u1")
        c = FakeClient("c1", "g1")
        s = await h.connect(c, init_connection(q.put(300_000), active_clients=["c1"]))
        await c.wait_for(lambda: q.hash in c.view.got, "hydration")
        await service.store.rows_written("g1")
        await s.close()
        h.stop_service()
        # What a crash between the hydration's poke and its row write leaves: the instance at
        # the poke's version, no row record, rowsVersion still at the connection's first flush.
        h.upstream.execute("""DELETE FROM "zero_0/cvr".rows WHERE "clientGroupID" = 'g1'""")
        h.upstream.execute("""UPDATE "zero_0/cvr"."rowsVersion" SET "version" = '00:01' WHERE "clientGroupID" = 'g1'""")

        # The client missing this delete is why the group cannot be served from its records.
        h.upstream.execute("DELETE FROM file WHERE id = 'f2'")
        await h.caught_up()
        service = await h.start_service()
        service.store.rows_behind_attempts = 2
        again = FakeClient("c1", "g1", base_cookie=c.view.cookie, view=c.view)
        await h.connect(again, init_connection(active_clients=["c1"], client_schema=None))
        await again.wait_for(lambda: bool(again.errors), "the refusal")
        assert again.errors[0]["kind"] == "ClientNotFound"
        assert "to catch up" in again.errors[0]["message"]
        assert not [m for m in again.messages if m[0].startswith("poke")]

        # The client starts over in a new group, as the Zero client does.
        fresh = FakeClient("c2", "g2")
        s2 = await h.connect(fresh, init_connection(q.put(300_000), active_clients=["c2"]))
        await fresh.wait_for(lambda: q.hash in fresh.view.got, "hydration")
        await h.synced()
        assert fresh.view.rows == h.expected([q])
        await service.store.rows_written("g2")
        assert recorded(h, "g2") == expected_keys(h, [q])
        await s2.close()


async def test_a_failed_row_write_makes_the_clients_start_over(pg_dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    failures = [RuntimeError("the row records could not be written")]

    def fail_once() -> None:
        if failures:
            raise failures.pop()

    patch_writer(monkeypatch, fail_once)
    async with running(pg_dsn, tmp_path) as h:
        service = await deferring_service(h)
        q = files_with_owner("u1")
        c = FakeClient("c1", "g1")
        await h.connect(c, init_connection(q.put(300_000), active_clients=["c1"]))
        await c.wait_for(lambda: bool(c.errors), "the error")
        assert c.errors[0]["kind"] == "ServerOverloaded"
        assert "could not be written" in c.errors[0]["message"]

        # Back from its cookie: refused at once (this process knows the records are lost).
        again = FakeClient("c1", "g1", base_cookie=c.view.cookie, view=c.view)
        with trio.fail_after(5):
            await h.connect(again, init_connection(active_clients=["c1"], client_schema=None))
            await again.wait_for(lambda: bool(again.errors), "the refusal")
        assert again.errors[0]["kind"] == "ClientNotFound"

        fresh = FakeClient("c2", "g2")
        s2 = await h.connect(fresh, init_connection(q.put(300_000), active_clients=["c2"]))
        await fresh.wait_for(lambda: q.hash in fresh.view.got, "hydration")
        h.upstream.execute("UPDATE file SET name = 'alpha-2' WHERE id = 'f1'")
        await h.synced()
        assert fresh.view.rows == h.expected([q])
        await service.store.rows_written("g2")
        assert recorded(h, "g2") == expected_keys(h, [q])
        await s2.close()
