"""The convergence oracle: 50 clients in 15 client groups change their queries at random,
disconnect and reconnect with their cookies, while upstream writes keep coming. Afterwards every
client's view must equal its group's queries run directly on Postgres, and no poke may have
broken the client's rules on the way."""

from __future__ import annotations

import os
import random
from pathlib import Path

import trio

from tests.view_syncer.harness import (
    FakeClient,
    Query,
    Session,
    files_of,
    files_with_owner,
    init_connection,
    running,
    user,
)

CLIENTS = 50
GROUPS = 15
DURATION_S = 8.0
CHURNERS = 5  # concurrent drivers of client actions, each with its own clients
USERS = ("u1", "u2", "u3")


def query_pool() -> list[Query]:
    return [files_of(u) for u in USERS] + [files_with_owner(u) for u in USERS] + [user(u) for u in USERS]


async def test_fifty_clients_converge(pg_dsn: str, tmp_path: Path) -> None:
    seed = int(os.environ.get("ZCACHE_TEST_SEED", random.randrange(1 << 30)))
    rng = random.Random(seed)
    pool = query_pool()
    async with running(pg_dsn, tmp_path) as h:
        await h.start_service()
        group_of = {f"c{i}": f"g{i % GROUPS}" for i in range(CLIENTS)}
        members = {g: [c for c, gg in group_of.items() if gg == g] for g in set(group_of.values())}
        desired: dict[str, set[str]] = {c: set() for c in group_of}
        by_hash = {q.hash: q for q in pool}
        sessions: dict[str, Session] = {}

        async def connect(client_id: str, base: FakeClient | None) -> None:
            group = group_of[client_id]
            first = rng.sample(pool, 2) if base is None else []
            desired[client_id] |= {q.hash for q in first}
            c = FakeClient(client_id, group, base_cookie=None if base is None else base.view.cookie, view=None if base is None else base.view)
            init = init_connection(*(q.put(0) for q in first), active_clients=members[group], client_schema=None if base else init_connection().client_schema)
            sessions[client_id] = await h.connect(c, init)

        for client_id in group_of:
            await connect(client_id, None)

        stop = trio.Event()
        activity = {"writes": 0, "query changes": 0, "reconnects": 0}

        async def writer() -> None:
            n = 0
            while not stop.is_set():
                n += 1
                action = rng.random()
                if action < 0.4:
                    h.upstream.execute("INSERT INTO file VALUES (%s, %s, %s)", [f"w{n}", f"file {n}", rng.choice(USERS)])
                elif action < 0.7:
                    h.upstream.execute(
                        "UPDATE file SET name = %s, owner_id = %s WHERE id = (SELECT id FROM file ORDER BY random() LIMIT 1)",
                        [f"renamed {n}", rng.choice(USERS)],
                    )
                elif action < 0.85:
                    h.upstream.execute("DELETE FROM file WHERE id = (SELECT id FROM file ORDER BY random() LIMIT 1)")
                else:
                    h.upstream.execute('UPDATE "user" SET name = %s WHERE id = %s', [f"name {n}", rng.choice(USERS)])
                activity["writes"] += 1
                await trio.sleep(rng.uniform(0.002, 0.02))

        async def client_churn(mine: list[str]) -> None:
            # Stopped between steps (not cancelled), so that no reconnect is left half done.
            while not stop.is_set():
                client_id = rng.choice(mine)
                session = sessions[client_id]
                action = rng.random()
                if session.client.closed or session.client.errors:
                    raise AssertionError(f"{client_id} was closed: {session.client.errors} {session.client.broken}")
                if action < 0.6:
                    q = rng.choice(pool)
                    if q.hash in desired[client_id]:
                        desired[client_id].discard(q.hash)
                        await session.change(q.delete())
                    else:
                        desired[client_id].add(q.hash)
                        await session.change(q.put(0))
                    activity["query changes"] += 1
                else:
                    # Reconnect from the last complete poke, as a client whose socket dropped.
                    await session.close()
                    await connect(client_id, session.client)
                    activity["reconnects"] += 1
                await trio.sleep(rng.uniform(0.005, 0.05))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(writer)
            for k in range(CHURNERS):
                nursery.start_soon(client_churn, [c for i, c in enumerate(group_of) if i % CHURNERS == k])
            await trio.sleep(DURATION_S)
            stop.set()

        await h.synced()
        # Enough happened for the check below to mean something.
        assert activity["writes"] > 150 and activity["query changes"] > 60 and activity["reconnects"] > 40, activity
        for client_id, session in sorted(sessions.items()):
            c = session.client
            group = group_of[client_id]
            queries = [by_hash[hsh] for m in members[group] for hsh in desired[m]]
            wanted = {hsh for m in members[group] for hsh in desired[m]}
            wanted_desires = {m: desired[m] for m in members[group] if desired[m]}

            def settled(c: FakeClient = c, wanted: set[str] = wanted, wanted_desires: dict[str, set[str]] = wanted_desires) -> bool:
                # The last query changes may still be on their way when the churn stops.
                return c.view.got == wanted and {k: v for k, v in c.view.desired.items() if v} == wanted_desires

            await c.wait_for(settled, f"{client_id}'s queries (seed {seed})")
            await h.synced()
            assert not c.broken, (seed, c.broken)
            assert not c.errors, (seed, c.errors)
            assert c.view.rows == h.expected(queries), (seed, client_id)
        for session in sessions.values():
            await session.close()
