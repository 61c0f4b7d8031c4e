"""Convergence of concurrent clients that drop and re-open their connections at random while
mutating, through MutationService and the real app server.

Each simulated client behaves as the Zero client does: mutation ids count up from 1, a
mutation stays pending until the client learns its confirmation (here by reading
`zero_0.clients`, which replication would poke to it), and every new connection first re-sends
all pending mutations in order. At the end every mutation was applied exactly once (each
creates a file with a unique id, and the last mutation ids equal the counts), and the file all
clients rename concurrently holds the last rename of one of them (last write wins).
"""

from __future__ import annotations

import random
from typing import Any

import psycopg
import pytest
import trio

from tests.fixtures.app_server import AppServer
from tests.mutations.conftest import Client, connect, custom, push_body, start_service, wait_until, zero_config
from zcache.app_server.http import HttpClient
from zcache.mutations import MutationService

MUTATIONS_PER_CLIENT = 12


def confirmed(dsn: str) -> dict[str, int]:
    with psycopg.connect(dsn) as conn:
        return dict(conn.execute('SELECT "clientID", "lastMutationID" FROM zero_0.clients').fetchall())  # type: ignore[arg-type]


class SimulatedClient:
    def __init__(self, service: MutationService, client_id: str, group: str, rng: random.Random) -> None:
        self.service = service
        self.client_id = client_id
        self.group = group
        self.rng = rng
        self.pending: list[dict[str, Any]] = []
        self.next_id = 1
        self.connections: list[Client] = []
        self.reconnect()

    @property
    def conn(self) -> Client:
        return self.connections[-1]

    def reconnect(self) -> None:
        self.connections.append(connect(self.client_id, group=self.group))

    def new_mutation(self) -> dict[str, Any]:
        mid = self.next_id
        self.next_id += 1
        if mid % 3 == 0:
            return custom(self.client_id, mid, "file.rename", {"id": "f1", "name": f"{self.client_id}-{mid}"})
        return custom(self.client_id, mid, "file.create", {"id": f"{self.client_id}-{mid}", "name": "x", "ownerId": "u1"})

    async def send(self, mutation: dict[str, Any]) -> None:
        await self.service.push(self.conn.ctx, push_body(self.group, mutation, request_id=f"{self.client_id}-{mutation['id']}"))

    async def run(self, dsn: str) -> None:
        while self.next_id <= MUTATIONS_PER_CLIENT or self.pending:
            lmid = (await trio.to_thread.run_sync(confirmed, dsn)).get(self.client_id, 0)
            self.pending = [m for m in self.pending if m["id"] > lmid]
            if self.conn.failures or self.rng.random() < 0.15:
                self.reconnect()
                for mutation in self.pending:
                    await self.send(mutation)
            elif self.next_id <= MUTATIONS_PER_CLIENT:
                mutation = self.new_mutation()
                self.pending.append(mutation)
                await self.send(mutation)
            await trio.sleep(self.rng.random() * 0.02)


@pytest.mark.parametrize("seed", [1, 2])
async def test_clients_reconnecting_at_random_converge(
    app: AppServer, http: HttpClient, nursery: trio.Nursery, seed: int
) -> None:
    rng = random.Random(seed)
    service = await start_service(nursery, zero_config(app.upstream_dsn, [app.mutate_url]), http)
    clients = [
        SimulatedClient(service, f"c{i}", f"g{i % 2}", random.Random(rng.random()))
        for i in range(4)
    ]
    async with trio.open_nursery() as simulation:
        for client in clients:
            simulation.start_soon(client.run, app.upstream_dsn)

    await wait_until(lambda: confirmed(app.upstream_dsn) == {c.client_id: MUTATIONS_PER_CLIENT for c in clients})
    with psycopg.connect(app.upstream_dsn) as conn:
        created = {r[0] for r in conn.execute("SELECT id FROM file WHERE id LIKE 'c%'")}
        [(final_name,)] = conn.execute("SELECT name FROM file WHERE id = 'f1'").fetchall()
        results = conn.execute("SELECT count(*) FROM zero_0.mutations").fetchone()
    expected = {f"{c.client_id}-{mid}" for c in clients for mid in range(1, MUTATIONS_PER_CLIENT + 1) if mid % 3}
    assert created == expected
    last_renames = {f"{c.client_id}-{max(m for m in range(1, MUTATIONS_PER_CLIENT + 1) if m % 3 == 0)}" for c in clients}
    assert final_name in last_renames
    assert results == (0,)  # no mutation failed (a second create of the same file would have)
    assert all(conn.failures == [] for c in clients for conn in c.connections)

    def answered() -> bool:  # the last re-sends may still be on their way
        s = service.statistics()
        return s.queued_pushes == 0 and s.mutations_forwarded == s.mutations_ok + s.already_processed

    await wait_until(answered)
    stats = service.statistics()
    assert stats.mutations_ok == len(clients) * MUTATIONS_PER_CLIENT
    assert stats.already_processed > 0  # the reconnects did replay mutations
    assert stats.push_failures == {}
