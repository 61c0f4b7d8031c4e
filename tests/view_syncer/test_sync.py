"""The view syncer end to end: a real upstream replicated by the real Replicator, the
ViewSyncerService, in-memory clients that apply pokes as the Zero client does. Every view is
compared with the same queries run on Postgres."""

from __future__ import annotations

from pathlib import Path

import trio

from tests.view_syncer.harness import CLIENT_SCHEMA, FakeClient, Query, files_of, files_with_owner, init_connection, running, user
from zcache.server.protocol import InitConnection


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

        # ttl 0: the desire's del, the got del and the rows' dels go in one flush and one poke
        # (zero-cache sends a config poke first, then a second one: clients take either).
        before = c.pokes
        await s.change(q.delete())
        await c.wait_for(lambda: q.hash not in c.view.got, "eviction")
        assert c.pokes == before + 1
        assert c.view.rows == {}
        assert c.view.desired == {"c1": set()}

        # A put through changeDesiredQueries: desire, got query and rows in one poke too.
        before = c.pokes
        await s.change(q.put(0))
        await c.wait_for(lambda: q.hash in c.view.got, "re-hydration")
        assert c.pokes == before + 1
        part = [m for m in c.messages if m[0] == "pokePart"][-1][1]
        assert part["desiredQueriesPatches"] == {"c1": [{"op": "put", "hash": q.hash}]}
        assert part["gotQueriesPatch"] == [{"op": "put", "hash": q.hash}]
        assert c.view.rows == h.expected([q])
        await s.close()


async def test_reconnect_gets_exactly_the_diff_in_process_and_after_restart(pg_dsn: str, tmp_path: Path) -> None:
    async with running(pg_dsn, tmp_path) as h:
        await h.start_service()
        q1, q2 = files_with_owner("u1"), user("u3")
        c = FakeClient("c1", "g1")
        s = await h.connect(c, init_connection(q1.put(300_000), q2.put(300_000), active_clients=["c1"]))
        await c.wait_for(lambda: {q1.hash, q2.hash} <= c.view.got, "hydration")
        await h.synced()
        assert c.view.rows == h.expected([q1, q2])
        await s.close()
        cookie = c.view.cookie
        assert cookie is not None

        # Offline: an update, an insert, a delete and a row leaving the query.
        h.upstream.execute("UPDATE file SET name = 'alpha-offline' WHERE id = 'f1'")
        h.upstream.execute("INSERT INTO file VALUES ('f7', 'eta', 'u1')")
        h.upstream.execute("DELETE FROM file WHERE id = 'f2'")
        h.upstream.execute("UPDATE \"user\" SET name = 'Carol C.' WHERE id = 'u3'")
        await h.synced()

        # Same process: one catch-up poke from the cookie carrying exactly those changes.
        c2 = FakeClient("c1", "g1", base_cookie=cookie, view=c.view)
        s2 = await h.connect(c2, init_connection(active_clients=["c1"], client_schema=None))
        await c2.wait_for(lambda: c2.pokes >= 1, "catch-up")
        assert c2.messages[0][0] == "pokeStart" and c2.messages[0][1]["baseCookie"] == cookie
        rows_sent = [op for k, b in c2.messages if k == "pokePart" for op in b.get("rowsPatch", [])]
        assert sorted((op["op"], op.get("value", op.get("id"))["id"]) for op in rows_sent) == [
            ("del", "f2"),
            ("put", "f1"),
            ("put", "f7"),
            ("put", "u3"),
        ]
        assert c2.view.rows == h.expected([q1, q2])
        await s2.close()
        cookie = c2.view.cookie

        # A restart: a new service over the same replica and CVR database. The group is loaded,
        # hydrated and compared with the CVR's rows; the client gets only what changed.
        h.stop_service()
        h.upstream.execute("UPDATE file SET name = 'alpha-restart' WHERE id = 'f1'")
        await h.caught_up()
        await h.start_service()
        c3 = FakeClient("c1", "g1", base_cookie=cookie, view=c2.view)
        s3 = await h.connect(c3, init_connection(active_clients=["c1"], client_schema=None))
        await c3.wait_for(lambda: c3.pokes >= 1, "catch-up after restart")
        rows_sent = [op for k, b in c3.messages if k == "pokePart" for op in b.get("rowsPatch", [])]
        assert rows_sent == [{"op": "put", "tableName": "file", "value": {"id": "f1", "name": "alpha-restart", "owner_id": "u1"}}]
        assert c3.view.rows == h.expected([q1, q2])
        assert c3.view.got == {q1.hash, q2.hash}
        await s3.close()

        # An up-to-date client gets an empty first poke.
        c4 = FakeClient("c1", "g1", base_cookie=c3.view.cookie, view=c3.view)
        s4 = await h.connect(c4, init_connection(active_clients=["c1"], client_schema=None))
        await c4.wait_for(lambda: c4.pokes >= 1, "empty poke")
        assert [k for k, _ in c4.messages] == ["pokeStart", "pokeEnd"]
        await s4.close()


async def test_connection_checks(pg_dsn: str, tmp_path: Path) -> None:
    async with running(pg_dsn, tmp_path) as h:
        await h.start_service()
        q = files_of("u1")
        c = FakeClient("c1", "g1")
        s = await h.connect(c, init_connection(q.put(), active_clients=["c1"]))
        await c.wait_for(lambda: q.hash in c.view.got, "hydration")
        cookie = c.view.cookie
        assert cookie is not None
        await s.close()

        async def refused(client: FakeClient, init: InitConnection) -> dict[str, object]:
            session = await h.connect(client, init)
            await client.wait_for(lambda: bool(client.errors), "an error")
            await session.close()
            assert not [m for m in client.messages if m[0].startswith("poke")]
            return client.errors[0]

        future = cookie + ":05"
        error = await refused(FakeClient("c1", "g1", base_cookie=future), init_connection(client_schema=None))
        assert error == {"kind": "InvalidConnectionRequestBaseCookie", "message": f"CVR is at version {cookie}"}
        error = await refused(FakeClient("c9", "nope", base_cookie=cookie), init_connection(client_schema=None))
        assert error == {"kind": "ClientNotFound", "message": "Client not found"}
        error = await refused(FakeClient("c9", "new-group"), init_connection(client_schema=None))
        assert error["kind"] == "InvalidConnectionRequest"
        assert error["message"] == "The initConnection message for a new client group must include client schema."
        other_schema = {"tables": {"file": CLIENT_SCHEMA["tables"]["file"]}}
        error = await refused(FakeClient("c2", "g1"), init_connection(client_schema=other_schema))
        assert error == {"kind": "InvalidConnectionRequest", "message": "Provided schema does not match previous schema"}
        bad = {
            "tables": {
                "file": {"columns": {"id": {"type": "string"}, "name": {"type": "number"}, "zz": {"type": "string"}}, "primaryKey": ["id"]},
                "nope": {"columns": {"id": {"type": "string"}}, "primaryKey": ["id"]},
            }
        }
        error = await refused(FakeClient("c9", "g-bad"), init_connection(client_schema=bad))
        assert error["kind"] == "SchemaVersionNotSupported"
        assert error["message"].split("\n") == [
            'The "nope" table does not exist or is not one of the replicated tables: "file","user".',
            'The "file"."name" column\'s upstream type "string" does not match the client type "number"',
            'The "file"."zz" column does not exist or is not one of the replicated columns: "id","name","owner_id".',
        ]
        # A client group is pinned to its first user.
        error = await refused(FakeClient("c3", "g1", user_id="someone-else"), init_connection(client_schema=None))
        assert error["kind"] == "Unauthorized"


async def test_a_refused_query_does_not_lose_the_others_of_the_same_change(pg_dsn: str, tmp_path: Path) -> None:
    async with running(pg_dsn, tmp_path) as h:
        await h.start_service()
        # The refused query sorts first, so the engine's other outcomes come after the refusal.
        bad = Query("a-missing-table", {"table": "nope"}, ())
        q = files_of("u1")
        c = FakeClient("c1", "g1")
        s = await h.connect(c, init_connection(active_clients=["c1"]))
        await c.wait_for(lambda: c.pokes >= 1, "the first poke")
        await s.change(bad.put(0), q.put(300_000))
        await c.wait_for(lambda: bool(c.errors), "the refusal")
        assert c.errors[0]["kind"] == "SchemaVersionNotSupported"
        assert "nope" in c.errors[0]["message"]
        # The good query was recorded and poked before the refusal went out.
        assert c.view.got == {q.hash}
        assert c.view.rows == h.expected([q])
        assert not c.broken

        # The client drops the refused query and reconnects: the CVR knew the good one, so the
        # diff since its cookie is just the desire's del, and its rows stay as they were.
        h.upstream.execute("UPDATE file SET name = 'alpha-v3' WHERE id = 'f1'")
        await h.synced()
        again = FakeClient("c1", "g1", base_cookie=c.view.cookie, view=c.view)
        s2 = await h.connect(again, init_connection(bad.delete(), client_schema=None, active_clients=["c1"]))
        await h.synced()
        await again.wait_for(lambda: again.view.desired == {"c1": {q.hash}}, "the catch-up")
        assert not again.errors
        assert again.view.got == {q.hash}
        assert again.view.rows == h.expected([q])
        assert not again.broken
        await s2.close()


async def test_lmids_mutation_results_and_several_clients(pg_dsn: str, tmp_path: Path) -> None:
    async with running(pg_dsn, tmp_path) as h:
        await h.start_service(development=True)
        q = files_of("u2")
        a, b = FakeClient("ca", "g1"), FakeClient("cb", "g1")
        sa = await h.connect(a, init_connection(q.put(300_000), active_clients=["ca"]))
        await a.wait_for(lambda: q.hash in a.view.got, "hydration")
        sb = await h.connect(b, init_connection(active_clients=["ca", "cb"]))
        await b.wait_for(lambda: q.hash in b.view.got, "catch-up of the second client")
        assert b.view.desired == {"ca": {q.hash}}

        # What an app server's push handler writes: lmids of the group's clients, an app error.
        h.upstream.execute(
            'INSERT INTO zero_0.clients ("clientGroupID", "clientID", "lastMutationID") VALUES (%s, %s, 1), (%s, %s, 4), (%s, %s, 9)',
            ["g1", "ca", "g1", "cb", "other-group", "cx"],
        )
        h.upstream.execute(
            'INSERT INTO zero_0.mutations ("clientGroupID", "clientID", "mutationID", result) VALUES (%s, %s, 4, %s)',
            ["g1", "cb", '{"error": "app", "message": "nope"}'],
        )
        h.upstream.execute("UPDATE file SET name = 'gamma-2' WHERE id = 'f3'")
        await h.synced()
        for c in (a, b):
            assert c.view.lmids == {"ca": 1, "cb": 4}
            assert c.view.mutations == {("cb", 4): {"error": "app", "message": "nope"}}
            assert c.view.rows == h.expected([q])
            assert c.view.cookie == a.view.cookie
            assert q.hash in c.view.got and "lmids" not in c.view.got
        h.upstream.execute('DELETE FROM zero_0.mutations WHERE "clientGroupID" = %s', ["g1"])
        await h.synced()
        assert a.view.mutations == {} and b.view.mutations == {}

        # Inspector (development mode answers without the admin password) and deleteClients.
        from zcache.server.protocol import DeleteClients, Inspect

        await sb.send(Inspect({"id": "i1", "op": "version"}))
        await sb.send(Inspect({"id": "i2", "op": "queries"}))
        await sb.send(Inspect({"id": "i3", "op": "metrics"}))
        await b.wait_for(lambda: len(b.of_kind("inspect")) == 3, "inspect answers")
        version, queries, metrics = b.of_kind("inspect")
        assert version == {"op": "version", "id": "i1", "value": "1.9.0"}
        assert [(x["clientID"], x["queryID"], x["got"], x["rowCount"]) for x in queries["value"]] == [("ca", q.hash, True, 1)]
        assert metrics["op"] == "error"
        await sb.send(DeleteClients(client_ids=["ca"], client_group_ids=[]))
        await b.wait_for(lambda: b.view.desired.get("ca") == set(), "the deleted client's desires")
        assert b.of_kind("deleteClients") == [{"clientIDs": ["ca"]}]
        await sa.close()
        await sb.close()


async def test_inspect_needs_the_admin_password_outside_development(pg_dsn: str, tmp_path: Path) -> None:
    async with running(pg_dsn, tmp_path, ZERO_ADMIN_PASSWORD="s3cret") as h:
        await h.start_service(development=False)
        from zcache.server.protocol import Inspect

        c = FakeClient("c1", "g1")
        s = await h.connect(c, init_connection(active_clients=["c1"]))
        for body in ({"id": "1", "op": "version"}, {"id": "2", "op": "authenticate", "value": "wrong"},
                     {"id": "3", "op": "authenticate", "value": "s3cret"}, {"id": "4", "op": "version"}):
            await s.send(Inspect(body))
        await c.wait_for(lambda: len(c.of_kind("inspect")) == 4, "answers")
        assert c.of_kind("inspect") == [
            {"op": "authenticated", "id": "1", "value": False},
            {"op": "authenticated", "id": "2", "value": False},
            {"op": "authenticated", "id": "3", "value": True},
            {"op": "version", "id": "4", "value": "1.9.0"},
        ]
        await s.close()


async def test_ttl_eviction_on_the_ttl_clock(pg_dsn: str, tmp_path: Path) -> None:
    async with running(pg_dsn, tmp_path) as h:
        await h.start_service()
        q1, q2 = files_of("u1"), files_of("u2")
        c = FakeClient("c1", "g1")
        s = await h.connect(c, init_connection(q1.put(1500), q2.put(300_000), active_clients=["c1"]))
        await c.wait_for(lambda: {q1.hash, q2.hash} <= c.view.got, "hydration")
        await s.change(q1.delete())
        await c.wait_for(lambda: c.view.desired["c1"] == {q2.hash}, "the desired del")
        # Inactive but within its TTL: still got, rows still there.
        assert q1.hash in c.view.got
        await c.wait_for(lambda: q1.hash not in c.view.got, "eviction after 1.5 s", timeout=10)
        assert c.view.rows == h.expected([q2])
        await s.close()


async def test_many_groups_connecting_at_once(pg_dsn: str, tmp_path: Path) -> None:
    """Groups arriving together share CVR loads, flushes and engine calls; each still gets its
    own rows, and its CVR loads back on its own after a restart, with everyone reconnecting at
    once from their cookies."""
    n = 60
    queries = [files_of("u1"), files_with_owner("u2"), user("u3"), files_with_owner("u1")]
    async with running(pg_dsn, tmp_path) as h:
        service = await h.start_service()
        clients = [FakeClient(f"c{i}", f"g{i}") for i in range(n)]
        sessions = [await h.connect(c, init_connection(queries[i % 4].put(300_000), active_clients=[f"c{i}"])) for i, c in enumerate(clients)]
        for i, c in enumerate(clients):
            await c.wait_for(lambda c=c, i=i: queries[i % 4].hash in c.view.got, "hydration")
        assert service.store._loads.batches < n // 2
        assert service.store._flushes.batches < n
        assert service._group_calls.batches < n
        h.upstream.execute("UPDATE file SET name = 'together' WHERE id IN ('f1', 'f3')")
        await h.synced()
        for i, c in enumerate(clients):
            assert c.view.rows == h.expected([queries[i % 4]]), c.params.client_id
            assert not c.broken and not c.errors
        for s in sessions:
            await s.close()
        cookies = [c.view.cookie for c in clients]

        h.stop_service()
        h.upstream.execute("UPDATE \"user\" SET name = 'Bob B.' WHERE id = 'u2'")
        h.upstream.execute("INSERT INTO file VALUES ('f8', 'theta', 'u1')")
        await h.caught_up()
        await h.start_service()
        again = [FakeClient(c.params.client_id, c.params.client_group_id, base_cookie=cookie, view=c.view) for c, cookie in zip(clients, cookies, strict=True)]
        for r in again:
            await h.connect(r, init_connection(active_clients=[r.params.client_id], client_schema=None))
        for r in again:
            await r.wait_for(lambda r=r: r.pokes >= 1, "catch-up after restart")
        await h.synced()
        for i, r in enumerate(again):
            assert r.view.rows == h.expected([queries[i % 4]]), r.params.client_id
            assert r.view.got == {queries[i % 4].hash}
            assert r.view.desired == {r.params.client_id: {queries[i % 4].hash}}
            assert not r.broken and not r.errors
