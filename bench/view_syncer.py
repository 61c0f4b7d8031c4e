"""Sync-server benchmarks: hydration, commit → client, many clients, fan-out, memory.

    .venv/bin/python bench/view_syncer.py [--users 10000] [--clients 1000] [--fanout 500] [--unloading 20] [--json out.json]
                                         [--only hydrate,commit,unload,clients] [--phases]

A throwaway PostgreSQL cluster (system binaries, fsync ON, as in the reference figures) gets the
tldraw schema and the reference data set (`zcache.demo_data`: 10k users, 100k files, 200k file
states), published as `zero_data`, with read permissions that allow every row. The Replicator and
the ViewSyncerService run in this process; clients are in-process `ClientConnection`s (no
WebSocket, no Zero client: the edge's cost is not in these figures) that timestamp each poke.

Baselines measured in the same run:

* hydration: the same query run directly on Postgres (`SELECT` over the same rows), and the
  query engine's `add_query_changes` alone (what the view syncer calls) on the same replica.
  The 10-row query is timed twice: in `initConnection` (connect → got), and as the real Zero
  client asks for it, in a `changeDesiredQueries` once connected (that message → got);
* commit → client: commit → the replica's watermark (replication alone); and the same while
  twenty 10k-row groups their clients just left are unloaded (commit → client alone, above);
* many clients, fan-out: zero-cache's figures from reference-figures.md (not measurable here).

Each figure is printed with its ratio to zero-cache's. See bench/README.md.

`--only` runs some of the steps (`clients` is the many-clients step, the fan-out and the memory
after all left). `--phases` splits each commit → client sample at the points where the path
changes hands: the replicator publishes the new version, the advance batch calls the engine, the
engine returns, the CVR flush starts and returns, the client has `pokeEnd`. The timestamps come
from wrappers this script puts around those public calls (`VersionNotifier.publish`,
`ViewSyncerService.engine_advance`, `CVRStore.flush`): nothing changes in a run without it.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg
import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from zcache import _native, demo_data, migrations  # noqa: E402
from zcache.auth import AuthData  # noqa: E402
from zcache.config import load_config  # noqa: E402
from zcache.embedded_pg import EmbeddedPostgres  # noqa: E402
from zcache.replica.replicator import Replicator  # noqa: E402
from zcache.server.connection import ClientGone  # noqa: E402
from zcache.server.protocol import ChangeDesiredQueries, ConnectParams, InitConnection, QueryPut, UpstreamMessage  # noqa: E402
from zcache.view_syncer import ViewSyncerService  # noqa: E402

ALLOW_ALL = json.dumps(
    {"tables": {t: {"row": {"select": [["allow", {"type": "and", "conditions": []}]]}} for t in ("user", "file", "file_state")}}
)
REFERENCE = {"hydrate_10": 0.042, "hydrate_10k": 0.353, "commit_p50": 0.0079, "clients_500": 35.1, "fanout_500": 8.1}


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def eq(column: str, value: Any) -> dict[str, Any]:
    return {"type": "simple", "op": "=", "left": {"type": "column", "name": column}, "right": {"type": "literal", "value": value}}


def files_of(owner: str) -> dict[str, Any]:
    return {"table": "file", "where": eq("ownerId", owner), "orderBy": [["id", "asc"]]}


def files_of_many(owners: list[str]) -> dict[str, Any]:
    return {
        "table": "file",
        "where": {"type": "simple", "op": "IN", "left": {"type": "column", "name": "ownerId"}, "right": {"type": "literal", "value": owners}},
    }


def user_id(i: int) -> str:
    return f"u{i:06d}"


class BenchClient:
    """A ClientConnection that timestamps pokes and notices its query becoming got."""

    def __init__(self, client_id: str, group_id: str, query_hash: str) -> None:
        self.params = ConnectParams(
            client_id=client_id, client_group_id=group_id, user_id=None, base_cookie=None, ts=0, lmid=0,
            wsid=client_id, profile_id=None, debug_perf=False, protocol_version=51,
        )
        self.auth = AuthData(token=None, user_id=None, claims=None)
        self.request_headers: dict[str, str] = {}
        self.origin: str | None = None
        self.cookie: str | None = None
        self.hash = query_hash
        self.got_at: float | None = None
        self._got_pending = False
        self.pokes: list[float] = []
        self.got = trio.Event()
        self.poked = trio.Event()
        self.errors: list[Any] = []

    async def send(self, message: Any) -> None:
        await self.send_many([message])

    async def send_many(self, messages: Any) -> None:
        now = time.perf_counter()
        for m in messages:
            if not isinstance(m, str):
                continue
            if m.startswith('["pokeEnd"'):
                # A poke counts when the client would apply it: at its end.
                self.pokes.append(now)
                self.poked.set()
                self.poked = trio.Event()
                if self._got_pending and self.got_at is None:
                    self.got_at = now
                    self.got.set()
            elif '"gotQueriesPatch"' in m and self.hash in m:
                self._got_pending = True

    async def fail(self, kind: str, message: str, **extra: Any) -> None:
        self.errors.append((kind, message))
        raise ClientGone

    async def set_auth(self, auth: AuthData) -> None:
        self.auth = auth


SCHEMA = {
    "tables": {
        "file": {"columns": {"id": {"type": "string"}, "ownerId": {"type": "string"}}, "primaryKey": ["id"]},
    }
}


def init(query_hash: str | None, ast: dict[str, Any] | None) -> InitConnection:
    """`initConnection` with one query, or with none (`query_hash` None)."""
    return InitConnection(
        desired_queries_patch=[] if query_hash is None else [QueryPut(hash=query_hash, name=None, args=None, ast=ast, ttl_ms=300_000)],
        client_schema=SCHEMA, deleted_client_ids=[], deleted_client_group_ids=[], user_push_url=None,
        user_push_headers={}, user_query_url=None, user_query_headers={}, active_clients=None,
    )


class Run:
    def __init__(self, nursery: trio.Nursery, service: ViewSyncerService, replicator: Replicator, dsn: str) -> None:
        self.nursery = nursery
        self.service = service
        self.replicator = replicator
        self.upstream = psycopg.connect(dsn, autocommit=True)
        self.inboxes: list[trio.MemorySendChannel[UpstreamMessage]] = []
        self.phases: PhaseClock | None = None
        self.phase_samples: list[dict[str, float]] = []
        self.phases_missed = 0

    async def connect(self, client: BenchClient, ast: dict[str, Any] | None) -> trio.MemorySendChannel[UpstreamMessage]:
        """Serves `client`, asking for `ast` in its `initConnection` (None: no query); returns its inbox."""
        send, receive = trio.open_memory_channel[UpstreamMessage](4)
        self.inboxes.append(send)
        self.nursery.start_soon(self.service.serve_client, client, init(client.hash if ast is not None else None, ast), receive)
        return send

    async def disconnect_all(self) -> None:
        for inbox in self.inboxes:
            await inbox.aclose()
        self.inboxes.clear()

    def update(self, name: str, file_id: str) -> tuple[int, float]:
        """Commits one single-row UPDATE; returns the WAL position after it and the commit time."""
        self.upstream.execute("UPDATE file SET name = %s WHERE id = %s", [name, file_id])
        committed = time.perf_counter()
        row = self.upstream.execute("SELECT pg_current_wal_insert_lsn()").fetchone()
        return int(_native.parse_lsn(str(row[0]))), committed  # type: ignore[index]


async def hydration(run: Run, users: int, samples: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for label, make, n in (("10", lambda i: files_of(user_id(i)), samples), ("10k", lambda i: files_of_many([user_id((i * 1000 + k) % users) for k in range(1000)]), max(3, samples // 6))):
        latencies = []
        for i in range(n):
            ast = make(i * 7 + 1)
            client = BenchClient(f"h{label}-{i}", f"gh{label}-{i}", f"q{label}-{i}")
            start = time.perf_counter()
            await run.connect(client, ast)
            with trio.fail_after(60):
                await client.got.wait()
            assert client.got_at is not None
            latencies.append(client.got_at - start)
        out[f"hydrate_{label}"] = latencies
    # As the real client: connected with no query (its first poke received), then the query.
    latencies = []
    for i in range(samples):
        client = BenchClient(f"hc-{i}", f"ghc-{i}", f"qc-{i}")
        inbox = await run.connect(client, None)
        with trio.fail_after(60):
            while not client.pokes:
                await client.poked.wait()
        start = time.perf_counter()
        put = QueryPut(hash=client.hash, name=None, args=None, ast=files_of(user_id(i * 7 + 3)), ttl_ms=300_000)
        await inbox.send(ChangeDesiredQueries([put]))
        with trio.fail_after(60):
            await client.got.wait()
        assert client.got_at is not None
        latencies.append(client.got_at - start)
    out["hydrate_10_change"] = latencies
    # Baselines: the rows straight from Postgres; the engine alone on the replica.
    for label, sql, n in (
        ("10", 'SELECT * FROM file WHERE "ownerId" = %s', samples),
        ("10k", 'SELECT * FROM file WHERE "ownerId" = ANY(%s)', max(3, samples // 6)),
    ):
        times = []
        for i in range(n):
            arg: Any = user_id(i * 7 + 1) if label == "10" else [user_id((i * 1000 + k) % users) for k in range(1000)]
            start = time.perf_counter()
            run.upstream.execute(sql, [arg]).fetchall()  # type: ignore[arg-type]
            times.append(time.perf_counter() - start)
        out[f"postgres_{label}"] = times
    engine = _native.QueryEngine(str(run.service.config.replica.file))
    for label, make, n in (("10", lambda i: files_of(user_id(i)), samples), ("10k", lambda i: files_of_many([user_id((i * 1000 + k) % users) for k in range(1000)]), max(3, samples // 6))):
        times = []
        for i in range(n):
            ast = json.dumps(make(i * 7 + 1))
            start = time.perf_counter()
            await trio.to_thread.run_sync(engine.add_query_changes, f"e{label}-{i}", "q", ast)
            times.append(time.perf_counter() - start)
        out[f"engine_{label}"] = times
    return out


# The commit → client path, in order: where each phase ends (`PhaseClock`), and its name.
PHASES = (
    ("replica", "commit → replica applied"),
    ("advance_start", "replica → advance start"),
    ("advance_end", "advance (engine, thread hop)"),
    ("flush_start", "poke build"),
    ("flush_end", "CVR flush"),
    ("poke_end", "delivery to the client"),
)


class PhaseClock:
    """Timestamps where a commit's path changes hands, from wrappers around the calls that hand
    it on (installed on these instances only, by `--phases`)."""

    def __init__(self, replicator: Replicator, service: ViewSyncerService) -> None:
        self.events: list[tuple[str, float]] = []
        stamp = self.events.append
        versions = replicator.versions
        publish = versions.publish
        engine_advance = service.engine_advance
        flush = service.store.flush

        def timed_publish(version: str) -> None:
            if version != versions.version:
                stamp(("replica", time.perf_counter()))
            publish(version)

        async def timed_engine_advance(group_ids: list[str]) -> Any:
            stamp(("advance_start", time.perf_counter()))
            try:
                return await engine_advance(group_ids)
            finally:
                stamp(("advance_end", time.perf_counter()))

        async def timed_flush(flushes: Any) -> set[str]:
            stamp(("flush_start", time.perf_counter()))
            try:
                return await flush(flushes)
            finally:
                stamp(("flush_end", time.perf_counter()))

        versions.publish = timed_publish  # type: ignore[method-assign]
        service.engine_advance = timed_engine_advance  # type: ignore[method-assign]
        service.store.flush = timed_flush  # type: ignore[method-assign]

    def split(self, since: int, committed: float, poke_end: float) -> dict[str, float] | None:
        """One sample's phases (seconds), from the first of each timestamp after the commit in
        path order; None when one is missing (a deferred advance of a busy group has no
        `engine_advance`) or came before the commit's own: `committed` is read in the thread
        that ran the UPDATE once it has the GIL back, which under load can be after the
        replicator, even the client, had the change."""
        ends: dict[str, float] = {}
        events = iter(self.events[since:])
        for name, _ in PHASES[:-1]:
            ends[name] = next((t for n, t in events if n == name and t >= committed), math.nan)
        ends["poke_end"] = poke_end
        if any(math.isnan(t) or t > poke_end for t in ends.values()):
            return None
        out, start = {}, committed
        for name, _ in PHASES:
            out[name] = ends[name] - start
            start = ends[name]
        return out


async def one_commit(run: Run, client: BenchClient, file_id: str, name: str) -> tuple[float, float | None]:
    """Commits one single-row UPDATE of a row `client` watches; returns commit → the client's
    `pokeEnd` and commit → the replica's watermark (None if the poke came first). With a
    `PhaseClock`, the sample's phases go to `run.phase_samples`."""
    poked = client.poked
    since = len(run.phases.events) if run.phases is not None else 0
    # In a thread: a blocking commit would stall the loop that delivers the poke.
    lsn, committed = await trio.to_thread.run_sync(run.update, name, file_id)
    replicated: float | None = None

    async def replica_reached() -> None:
        nonlocal replicated
        seen = run.replicator.versions.version
        while run.replicator.statistics().watermark_lsn < lsn:
            seen = await run.replicator.versions.wait_newer_than(seen)
        replicated = time.perf_counter()

    # Woken by the version notifier and the poke, never by polling: a task spinning on
    # the loop would hold the GIL against the engine's and the CVR store's threads (each
    # of their returns then waits up to the 5 ms switch interval) and inflate the figure.
    with trio.fail_after(10):
        async with trio.open_nursery() as watchers:
            watchers.start_soon(replica_reached)
            await poked.wait()
            watchers.cancel_scope.cancel()
    if run.phases is not None:
        split = run.phases.split(since, committed, client.pokes[-1])
        if split is None:
            run.phases_missed += 1
        else:
            run.phase_samples.append(split)
    return client.pokes[-1] - committed, None if replicated is None else replicated - committed


async def watching_client(run: Run, name: str, owner: str) -> tuple[BenchClient, str]:
    """A hydrated client of `owner`'s files, and one of those files."""
    client = BenchClient(name, f"g{name}", f"q{name}")
    await run.connect(client, files_of(owner))
    with trio.fail_after(60):
        await client.got.wait()
    file_id = run.upstream.execute('SELECT id FROM file WHERE "ownerId" = %s LIMIT 1', [owner]).fetchone()[0]  # type: ignore[index]
    return client, file_id


async def commit_to_client(run: Run, updates: int, phases: bool) -> dict[str, Any]:
    client, file_id = await watching_client(run, "cc", user_id(3))
    if phases:
        run.phases = PhaseClock(run.replicator, run.service)
    receiving = run.replicator.statistics()
    to_client, to_replica = [], []
    for i in range(updates):
        latency, replicated = await one_commit(run, client, file_id, f"bench {i}")
        to_client.append(latency)
        if replicated is not None:
            to_replica.append(replicated)
        await trio.sleep(0.02)
    out: dict[str, Any] = {"commit_to_client": to_client, "commit_to_replica": to_replica}
    if phases:
        out["commit_phases"] = run.phase_samples
        out["commit_phases_missed"] = run.phases_missed
        # The replicator's receive pauses over these updates (absent from builds before they were counted).
        after = run.replicator.statistics()
        for counter in ("receive_pauses", "receive_pauses_ended_by_apply"):
            if hasattr(after, counter):
                out[counter] = getattr(after, counter) - getattr(receiving, counter)
        run.phases = None
    return out


async def commit_while_groups_unload(run: Run, users: int, big_groups: int, seconds: float) -> dict[str, Any]:
    """commit → client while `big_groups` groups of 10k rows each, just left by their clients,
    are unloaded (idle after the service's `idle_unload_s`) and their engine state released."""
    client, file_id = await watching_client(run, "cu", user_id(5))
    big = [BenchClient(f"u{i}", f"gu{i}", f"qu{i}") for i in range(big_groups)]
    inboxes = []
    for i, c in enumerate(big):
        inboxes.append(await run.connect(c, files_of_many([user_id((i * 1000 + k) % users) for k in range(1000)])))
        with trio.fail_after(60):
            await c.got.wait()
    for inbox in inboxes:
        await inbox.aclose()
    to_client = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        latency, _ = await one_commit(run, client, file_id, f"unload {len(to_client)}")
        to_client.append(latency)
        await trio.sleep(0.02)
    return {"commit_while_unloading": to_client, "unloading_groups": big_groups, "groups_left": len(run.service.groups)}


async def many_clients(run: Run, clients: list[BenchClient], users: int) -> dict[str, Any]:
    gc.collect()
    before = rss_mb()
    n = len(clients)
    start = time.perf_counter()
    for i, c in enumerate(clients):
        await run.connect(c, files_of(user_id((i * 13 + 5) % users)))
    with trio.fail_after(300):
        for c in clients:
            await c.got.wait()
    elapsed = time.perf_counter() - start
    gc.collect()
    after = rss_mb()
    return {"clients": n, "all_hydrated_s": elapsed, "rss_before_mb": before, "rss_after_mb": after, "mb_per_group": (after - before) / n}


async def fanout(run: Run, clients: list[BenchClient], n: int, users: int) -> dict[str, Any]:
    """The clients of the many-clients step stay connected; one transaction touches one watched
    row of each of the first `n` of them."""
    clients = clients[:n]
    owners = [user_id((i * 13 + 5) % users) for i in range(n)]
    marks = [len(c.pokes) for c in clients]
    with run.upstream.transaction():
        run.upstream.execute(
            'UPDATE file SET name = name || \'!\' WHERE id IN (SELECT DISTINCT ON ("ownerId") id FROM file WHERE "ownerId" = ANY(%s) ORDER BY "ownerId", id)',
            [owners],
        )
    committed = time.perf_counter()
    with trio.move_on_after(120):
        while any(len(c.pokes) <= m for c, m in zip(clients, marks, strict=True)):
            await trio.sleep(0.001)
    waiting = sum(1 for c, m in zip(clients, marks, strict=True) if len(c.pokes) <= m)
    assert waiting == 0, f"{waiting} of {n} clients were not poked"
    last = max(c.pokes[m] for c, m in zip(clients, marks, strict=True))
    return {"fanout_clients": n, "fanout_s": last - committed}


async def main_async(args: argparse.Namespace, dsn: str, workdir: Path) -> dict[str, Any]:
    config = load_config(
        [],
        {
            "ZERO_UPSTREAM_DB": dsn,
            "ZERO_REPLICA_FILE": str(workdir / "replica.db"),
            "ZERO_APP_PUBLICATIONS": "zero_data",
        },
    )
    results: dict[str, Any] = {}
    async with trio.open_nursery() as nursery:
        start = time.perf_counter()
        replicator = await nursery.start(Replicator(config).run)
        say(f"replica ready in {time.perf_counter() - start:.1f} s")
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("UPDATE zero.permissions SET permissions = %s", [ALLOW_ALL])
        service = ViewSyncerService(config, replicator=replicator, transformer=None, mutations=None, cvr_dsn=dsn, idle_unload_s=2.0)
        await nursery.start(service.run)
        run = Run(nursery, service, replicator, dsn)
        await trio.sleep(1)
        if "hydrate" in args.only:
            say("hydration")
            results.update(await hydration(run, args.users, args.samples))
            await run.disconnect_all()
        if "commit" in args.only:
            say("commit → client" + (", in phases" if args.phases else ""))
            results.update(await commit_to_client(run, args.updates, args.phases))
            await run.disconnect_all()
        if "unload" in args.only:
            say(f"commit → client while {args.unloading} groups of 10k rows unload")
            results.update(await commit_while_groups_unload(run, args.users, args.unloading, args.unloading_s))
            await run.disconnect_all()
            await trio.sleep(3)
        if "clients" in args.only:
            say(f"{args.clients} clients at once")
            clients = [BenchClient(f"m{i}", f"gm{i}", f"qm{i}") for i in range(args.clients)]
            results.update(await many_clients(run, clients, args.users))
            say(f"fan-out to {args.fanout}")
            results.update(await fanout(run, clients, args.fanout, args.users))
            await run.disconnect_all()
            await trio.sleep(4)
            gc.collect()
            results["rss_after_leave_mb"] = rss_mb()
            results["groups_after_leave"] = len(service.groups)
            results["engine_after_leave"] = await trio.to_thread.run_sync(lambda: dict(_native.QueryEngine.statistics(service._engine)))  # type: ignore[arg-type]
        run.upstream.close()
        nursery.cancel_scope.cancel()
    return results


def p(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def report(r: dict[str, Any]) -> None:
    ms = lambda s: f"{s * 1000:.1f} ms"  # noqa: E731
    rows: list[tuple[str, str, str, str]] = []
    if "hydrate_10" in r:
        rows += hydration_rows(r, ms)
    if "commit_to_client" in r:
        rows.append(
            ("commit → client (p50 / p99)", f"{ms(p(r['commit_to_client'], .5))} / {ms(p(r['commit_to_client'], .99))}",
             f"commit → replica {ms(p(r['commit_to_replica'], .5))}" if r["commit_to_replica"] else "-", f"{p(r['commit_to_client'], .5) / REFERENCE['commit_p50']:.2f}"))
    if "commit_while_unloading" in r:
        rows.append(
            (f"commit → client while {r['unloading_groups']} 10k-row groups unload (p50 / p99 / max)",
             f"{ms(p(r['commit_while_unloading'], .5))} / {ms(p(r['commit_while_unloading'], .99))} / {ms(max(r['commit_while_unloading']))}",
             f"the commit → client row above; {r['groups_left']} groups still loaded at the end", f"{p(r['commit_while_unloading'], .5) / REFERENCE['commit_p50']:.2f}"))
    if "all_hydrated_s" in r:
        rows += [
            (f"{r['clients']} clients hydrated", f"{r['all_hydrated_s']:.2f} s, {r['mb_per_group']:.2f} MB/group", "zero-cache 500: 35.1 s, 17.5 MB/group", "-"),
            (f"fan-out to {r['fanout_clients']}", f"{r['fanout_s'] * 1000:.0f} ms", "zero-cache 500: 8.1 s", f"{r['fanout_s'] / REFERENCE['fanout_500']:.3f}"),
            ("memory after all left", f"{r['rss_after_leave_mb']:.0f} MB RSS, {r['groups_after_leave']} groups", f"before clients {r['rss_before_mb']:.0f} MB, with them {r['rss_after_mb']:.0f} MB", "-"),
        ]
    width = max(len(x[0]) for x in rows)
    print(f"\n{'what':<{width}}  zcache  |  baseline (same run)  |  ratio to zero-cache")
    for what, value, baseline, ratio in rows:
        print(f"{what:<{width}}  {value}  |  {baseline}  |  {ratio}")
    if "commit_phases" in r:
        report_phases(r, ms)


def report_phases(r: dict[str, Any], ms: Any) -> None:
    samples = r["commit_phases"]
    print(f"\ncommit → client in phases ({len(samples)} samples, {r['commit_phases_missed']} not split: a timestamp missing, or the commit's read late; p50 and p99 of each phase, they do not add up)")
    if not samples:
        return
    width = max(len(label) for _, label in PHASES)
    for name, label in PHASES:
        values = [s[name] for s in samples]
        print(f"  {label:<{width}}  {ms(p(values, .5)):>9}  {ms(p(values, .99)):>9}")
    total = [sum(s.values()) for s in samples]
    print(f"  {'commit → client':<{width}}  {ms(p(total, .5)):>9}  {ms(p(total, .99)):>9}")
    if "receive_pauses" in r:
        print(f"  replicator receive pauses: {r['receive_pauses']}, of which ended by the applying task coming back: {r['receive_pauses_ended_by_apply']}")


def hydration_rows(r: dict[str, Any], ms: Any) -> list[tuple[str, str, str, str]]:
    return [
        ("hydration, 10 rows (p50 / p90)", f"{ms(p(r['hydrate_10'], .5))} / {ms(p(r['hydrate_10'], .9))}",
         f"Postgres {ms(p(r['postgres_10'], .5))}, engine {ms(p(r['engine_10'], .5))}", f"{p(r['hydrate_10'], .5) / REFERENCE['hydrate_10']:.2f}"),
        ("hydration, 10 rows, query after connect (p50 / p90)", f"{ms(p(r['hydrate_10_change'], .5))} / {ms(p(r['hydrate_10_change'], .9))}",
         "changeDesiredQueries → got (the real client's way)", f"{p(r['hydrate_10_change'], .5) / REFERENCE['hydrate_10']:.2f}"),
        ("hydration, 10k rows (p50)", ms(p(r["hydrate_10k"], .5)),
         f"Postgres {ms(p(r['postgres_10k'], .5))}, engine {ms(p(r['engine_10k'], .5))}", f"{p(r['hydrate_10k'], .5) / REFERENCE['hydrate_10k']:.2f}"),
    ]


STEPS = ("hydrate", "commit", "unload", "clients")


def steps(text: str) -> tuple[str, ...]:
    chosen = tuple(s.strip() for s in text.split(",") if s.strip())
    unknown = [s for s in chosen if s not in STEPS]
    if unknown or not chosen:
        raise argparse.ArgumentTypeError(f"steps are {','.join(STEPS)}; got {text!r}")
    return chosen


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--samples", type=int, default=30)
    parser.add_argument("--updates", type=int, default=200)
    parser.add_argument("--unloading", type=int, default=20, help="10k-row groups left idle during the second commit → client phase")
    parser.add_argument("--unloading-s", type=float, default=6.0, help="length of that phase")
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--fanout", type=int, default=500)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--only", type=steps, default=STEPS, help=f"comma-separated steps to run, of {','.join(STEPS)} (default: all)")
    parser.add_argument("--phases", action="store_true", help="split each commit → client sample into its phases (p50 / p99 of each)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="zcache-bench-vs-") as tmp:
        workdir = Path(tmp)
        workdir.chmod(0o755)
        say("starting a throwaway PostgreSQL cluster (fsync on)")
        with EmbeddedPostgres(workdir / "pgdata", fsync=True, settings={"wal_level": "logical"}) as cluster:
            dsn = cluster.create_database("bench")
            migrations.migrate(dsn)
            report_ = demo_data.load_demo_data(dsn, users=args.users)
            say(f"data set loaded: {report_}")
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute("VACUUM (FREEZE, ANALYZE)")
            resource.setrlimit(resource.RLIMIT_NOFILE, (4096, 4096))
            results = trio.run(main_async, args, dsn, workdir)
    results["commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    report(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
