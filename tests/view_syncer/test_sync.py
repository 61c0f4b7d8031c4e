"""The view syncer end to end: a real upstream replicated by the real Replicator, the
ViewSyncerService, in-memory clients that apply pokes as the Zero client does. Every view is
compared with the same queries run on Postgres."""

from __future__ import annotations

from pathlib import Path

import trio

from tests.view_syncer.harness import FakeClient, files_of, files_with_owner, init_connection, running, user


async def test_new_group_hydrates_and_follows_upstream(pg_dsn: str, tmp_path: Path) -> None:
    async with running(pg_dsn, tmp_path) as h:
        await h.start_service()
        q = files_of("u1")
        c = FakeClient("c1", "g1")
        s = await h.connect(c, init_connection(q.put(0), active_clients=["c1"]))
        await c.wait_for(lambda: q.hash in c.view.got, "hydration")
        # The first poke is the config poke from null to 00:01, as zero-cache's.
        assert c.messages[0] == ["pokeStart", {"pokeID": "00:01", "baseCookie": None}]
        assert c.messages[1] == ["pokePart", {"pokeID": "00:01", "desiredQueriesPatches": {"c1": [{"op": "put", "hash": q.hash}]}}]
        assert c.messages[2] == ["pokeEnd", {"pokeID": "00:01", "cookie": "00:01"}]
        assert c.view.rows == h.expected([q])
        assert len(c.view.rows) == 2

        h.upstream.execute("UPDATE file SET name = 'alpha-v2' WHERE id = 'f1'")
        h.upstream.execute("INSERT INTO file VALUES ('f9', 'zeta', 'u1')")
        h.upstream.execute("UPDATE file SET owner_id = 'u2' WHERE id = 'f2'")
        await h.synced()
        assert c.view.rows == h.expected([q])
        assert not c.broken

        # ttl 0: the del is a config poke, then the query and its rows go in a second poke.
        before = c.pokes
        await s.change(q.delete())
        await c.wait_for(lambda: q.hash not in c.view.got and c.pokes == before + 2, "eviction")
        assert c.view.rows == {}
        assert c.view.desired == {"c1": set()}
        await s.close()
