"""Write-path benchmark: custom-mutation latency and throughput, zcache against zero-cache 1.9.0
and against the app server alone, in one run on one machine.

Three ways to get a `file.rename` mutation from a client into Postgres, each against its own
instance of the conformance harness's app server (`@rocicorp/zero/server` 1.9.0 on postgres.js)
and its own upstream database, all in one throwaway cluster (fsync on):

* **direct** (baseline): the client POSTs the push body to the app server's `/mutate` itself, as
  a sync server would (keep-alive, same body, same query parameters and bearer token);
* **zcache**: `python -m zcache` as its own process, driven over its sync WebSocket;
* **zero-cache**: the real zero-cache 1.9.0 (`node …/zero/src/cli.js`, one sync worker), driven
  the same way.

The sync-server clients are raw protocol clients (connect with an auth token, `initConnection`
with a client schema, then `push`). Two moments are timed from the push: **commit**, when the
mutation's `lastMutationID` commit reaches this process as a `NOTIFY` from a trigger on
`zero_0.clients` (the same path for all three modes), and **poke** (sync servers only), when the
client receives the poke whose `lastMutationIDChanges` confirms the mutation: the end-to-end
latency a Zero client sees. Overhead = latency − direct's commit latency, i.e. what the server
adds on top of the app server; the target is zcache's overhead ≤ ⅓ of zero-cache's.

Latency is measured in interleaved rounds (one mutation per mode per round, rotating order) and
overheads are medians of per-round differences; throughput is closed-loop: each client sends its
next mutation once the previous one is confirmed (poked; committed for direct).

    .venv/bin/python bench/mutations.py [--latency-n 300] [--clients 100] [--seconds 10] [--json out.json]
"""

from __future__ import annotations

import argparse
import base64
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import trio
import trio_websocket

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.replication import background_cores, wait_for_quiet  # noqa: E402
from bench.servers import git_revision, percentile, say, server_commands, start_server, stop_server, wait_for_table  # noqa: E402
from tests.fixtures.app_server import install_app_server, load_seed, run_app_server  # noqa: E402
from zcache.app_server.http import HttpClient  # noqa: E402
from zcache.change_source.upstream import ShardId, setup_shard  # noqa: E402
from zcache.embedded_pg import EmbeddedPostgres  # noqa: E402

CLIENT_SCHEMA = {
    "tables": {
        "file": {"columns": {"id": {"type": "string"}, "name": {"type": "string"}, "owner_id": {"type": "string"}}, "primaryKey": ["id"]},
        "user": {"columns": {"id": {"type": "string"}, "name": {"type": "string"}}, "primaryKey": ["id"]},
    }
}
NOTIFY_TRIGGER = """
CREATE OR REPLACE FUNCTION bench_notify_lmid() RETURNS trigger AS $$
BEGIN
  PERFORM pg_notify('bench_lmid', NEW."clientID" || ' ' || NEW."lastMutationID");
  RETURN NEW;
END $$ LANGUAGE plpgsql;
CREATE TRIGGER bench_notify_lmid AFTER INSERT OR UPDATE ON zero_0.clients
FOR EACH ROW EXECUTE FUNCTION bench_notify_lmid();
"""


def seed_bench_files(dsn: str, clients: int) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO file (id, name, owner_id) SELECT 'b' || i, 'bench', 'u1'"
            " FROM (SELECT generate_series(0, %s) UNION SELECT 10000) AS s(i)",
            [clients],
        )


def add_notify_trigger(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(NOTIFY_TRIGGER)


class Confirmations:
    """`(clientID, id)` commits, delivered from a LISTEN thread into Trio."""

    def __init__(self) -> None:
        self._waiting: dict[tuple[str, int], trio.Event] = {}
        self._seen: set[tuple[str, int]] = set()
        self._stop = threading.Event()

    def expect(self, client_id: str, mid: int) -> trio.Event:
        key = (client_id, mid)
        event = self._waiting[key] = trio.Event()
        if key in self._seen:
            event.set()
        return event

    def _deliver(self, payload: str) -> None:
        client_id, _, mid = payload.rpartition(" ")
        key = (client_id, int(mid))
        event = self._waiting.pop(key, None)
        if event is None:
            self._seen.add(key)
        else:
            event.set()

    async def run(self, dsns: list[str], *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        token = trio.lowlevel.current_trio_token()
        ready = threading.Barrier(len(dsns) + 1)

        def listen(dsn: str) -> None:
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute("LISTEN bench_lmid")
                ready.wait()
                while not self._stop.is_set():
                    for notify in conn.notifies(timeout=0.2):
                        trio.from_thread.run_sync(self._deliver, notify.payload, trio_token=token)

        threads = [threading.Thread(target=listen, args=(dsn,), daemon=True) for dsn in dsns]
        for t in threads:
            t.start()
        await trio.to_thread.run_sync(ready.wait)
        task_status.started()
        try:
            await trio.sleep_forever()
        finally:
            self._stop.set()


# --- the three ways to push -------------------------------------------------------------


def push_body(group: str, client_id: str, mid: int, file_id: str) -> dict[str, Any]:
    now = int(time.time() * 1000)
    return {
        "timestamp": now,
        "clientGroupID": group,
        "mutations": [
            {"type": "custom", "timestamp": now, "id": mid, "clientID": client_id, "name": "file.rename", "args": [{"id": file_id, "name": f"{client_id}-{mid}"}]}
        ],
        "pushVersion": 1,
        "requestID": f"{client_id}-{mid}",
    }


Pusher = Callable[[int, int], Awaitable[None]]  # (client index, mutation id) -> sends one push


class Direct:
    def __init__(self, http: HttpClient, mutate_url: str) -> None:
        self._http = http
        self._url = f"{mutate_url}?schema=zero_0&appID=zero"

    async def open(self, index: int) -> Pusher:
        client_id, group = f"direct{index}", f"gdirect{index}"

        async def push(_: int, mid: int) -> None:
            body = json.dumps(push_body(group, client_id, mid, f"b{index}")).encode()
            headers = [("Content-Type", "application/json"), ("Authorization", "Bearer user:u1")]
            response = await self._http.request("POST", self._url, headers=headers, body=body, timeout_s=30)
            if response.status != 200:
                raise RuntimeError(f"app server answered {response.status}: {response.body[:200]!r}")

        return push


class SyncServer:
    """Raw sync-protocol clients of a running zero-cache or zcache; tracks the pokes' lmids."""

    def __init__(self, port: int, nursery: trio.Nursery, prefix: str) -> None:
        self._port = port
        self._nursery = nursery
        self._prefix = prefix
        self._confirmed: dict[str, int] = {}
        self._waiting: dict[tuple[str, int], trio.Event] = {}

    def expect_poke(self, client_id: str, mid: int) -> trio.Event:
        event = trio.Event()
        if self._confirmed.get(client_id, 0) >= mid:
            event.set()
        else:
            self._waiting[(client_id, mid)] = event
        return event

    def _poked(self, changes: dict[str, int]) -> None:
        for client_id, lmid in changes.items():
            self._confirmed[client_id] = max(lmid, self._confirmed.get(client_id, 0))
            for key in [k for k in self._waiting if k[0] == client_id and k[1] <= lmid]:
                self._waiting.pop(key).set()

    async def open(self, index: int) -> Pusher:
        client_id, group = f"{self._prefix}{index}", f"g{self._prefix}{index}"
        header = {"authToken": "user:u1"}
        protocol = urllib.parse.quote(base64.b64encode(json.dumps(header).encode()).decode(), safe="")
        query = urllib.parse.urlencode(
            {"clientID": client_id, "clientGroupID": group, "userID": "u1", "baseCookie": "", "ts": "1", "lmid": "0", "wsid": f"w{index}"}
        )
        ws = await trio_websocket.connect_websocket_url(
            self._nursery, f"ws://127.0.0.1:{self._port}/sync/v51/connect?{query}", subprotocols=[protocol], max_message_size=2**24
        )
        first = json.loads(await ws.get_message())
        if first[0] != "connected":
            raise RuntimeError(f"{self._prefix} answered {first}")
        await ws.send_message(json.dumps(["initConnection", {"desiredQueriesPatch": [], "clientSchema": CLIENT_SCHEMA}]))

        async def receive() -> None:  # pokes and pongs; an error message is fatal for the run
            try:
                while True:
                    message = json.loads(await ws.get_message())
                    if message[0] == "error":
                        raise RuntimeError(f"{self._prefix} sent {message}")
                    if message[0] == "pokePart" and "lastMutationIDChanges" in message[1]:
                        self._poked(message[1]["lastMutationIDChanges"])
            except trio_websocket.ConnectionClosed:
                return

        self._nursery.start_soon(receive)

        async def push(_: int, mid: int) -> None:
            await ws.send_message(json.dumps(["push", push_body(group, client_id, mid, f"b{index}")]))

        return push


# --- measurements ------------------------------------------------------------------------


@dataclass
class ModeResult:
    commit_ms: list[float] = field(default_factory=list)
    poke_ms: list[float] = field(default_factory=list)
    throughput: float = 0.0
    confirmed: int = 0


@dataclass(frozen=True)
class Mode:
    name: str
    prefix: str
    driver: Direct | SyncServer


async def measure_latency(modes: list[Mode], confirmations: Confirmations, n: int, warmup: int) -> dict[str, ModeResult]:
    """`n` rounds; each round sends one mutation per mode, one after the other, in a rotating
    order, so drift on the machine hits every mode alike and rounds pair up."""
    pushers = {m.name: await m.driver.open(10_000) for m in modes}
    results = {m.name: ModeResult() for m in modes}
    for mid in range(1, n + warmup + 1):
        for mode in modes[mid % len(modes):] + modes[: mid % len(modes)]:
            client_id = f"{mode.prefix}10000"
            committed = confirmations.expect(client_id, mid)
            poked = mode.driver.expect_poke(client_id, mid) if isinstance(mode.driver, SyncServer) else None
            started = time.perf_counter()
            await pushers[mode.name](10_000, mid)
            with trio.fail_after(30):
                await committed.wait()
                commit_ms = (time.perf_counter() - started) * 1000
                if poked is not None:
                    await poked.wait()
                poke_ms = (time.perf_counter() - started) * 1000
            if mid > warmup:
                results[mode.name].commit_ms.append(commit_ms)
                if poked is not None:
                    results[mode.name].poke_ms.append(poke_ms)
    return results


async def measure_throughput(mode: Mode, confirmations: Confirmations, clients: int, seconds: float) -> tuple[float, int]:
    pushers = [await mode.driver.open(i) for i in range(clients)]
    confirmed = 0
    stop_at = time.perf_counter() + seconds + 2.0  # the first 2 s warm up

    async def client(i: int) -> None:
        nonlocal confirmed
        mid = 0
        client_id = f"{mode.prefix}{i}"
        while time.perf_counter() < stop_at:
            mid += 1
            if isinstance(mode.driver, SyncServer):
                done = mode.driver.expect_poke(client_id, mid)
            else:
                done = confirmations.expect(client_id, mid)
            await pushers[i](i, mid)
            with trio.fail_after(60):
                await done.wait()
            if time.perf_counter() > stop_at - seconds:
                confirmed += 1

    async with trio.open_nursery() as nursery:
        for i in range(clients):
            nursery.start_soon(client, i)
    return confirmed / seconds, confirmed


# --- setup -------------------------------------------------------------------------------


def summarize(result: ModeResult, baseline: ModeResult) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for what, samples in (("commit", result.commit_ms), ("poke", result.poke_ms)):
        if not samples:
            continue
        out[f"{what}_p50_ms"] = round(statistics.median(samples), 3)
        out[f"{what}_p99_ms"] = round(percentile(samples, 0.99), 3)
        if result is not baseline:
            paired = [a - b for a, b in zip(samples, baseline.commit_ms, strict=True)]
            out[f"{what}_overhead_p50_ms"] = round(statistics.median(paired), 3)
    out["mutations_per_s"] = round(result.throughput, 1)
    return out


async def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    install = install_app_server()
    say(f"throwaway PostgreSQL cluster (fsync on) in {workdir}")
    cluster = EmbeddedPostgres(workdir / "pgdata", fsync=True)
    cluster.start()
    servers: list[subprocess.Popen[bytes]] = []
    try:
        names = ("app_direct", "app_zcache", "app_zc", "cvr_zcache", "cvr_zc", "change_zcache", "change_zc")
        dsn = {name: cluster.create_database(name) for name in names}
        for name in ("app_direct", "app_zcache", "app_zc"):
            load_seed(dsn[name], install.harness)
            seed_bench_files(dsn[name], max(args.clients, 1))
        with psycopg.connect(dsn["app_direct"], autocommit=True) as conn:
            setup_shard(conn, ShardId("zero", 0), [])
        add_notify_trigger(dsn["app_direct"])
        with (
            run_app_server(install, dsn["app_direct"], workdir / "app-direct") as app_direct,
            run_app_server(install, dsn["app_zcache"], workdir / "app-zcache") as app_zcache,
            run_app_server(install, dsn["app_zc"], workdir / "app-zc") as app_zc,
        ):
            say("starting zcache and zero-cache 1.9.0")
            commands = server_commands(install)
            started = (
                ("zcache", "app_zcache", "cvr_zcache", "change_zcache", app_zcache.url),
                ("zero-cache", "app_zc", "cvr_zc", "change_zc", app_zc.url),
            )
            ports = {}
            for name, upstream, cvr, change, url in started:
                app_env = {"ZERO_NUM_SYNC_WORKERS": "1", "ZERO_MUTATE_URL": f"{url}/mutate", "ZERO_QUERY_URL": f"{url}/query"}
                process, ports[name] = start_server(name, commands[name], dsn[upstream], dsn[cvr], dsn[change], workdir, app_env)
                servers.append(process)
            for name in ("app_zcache", "app_zc"):
                wait_for_table(dsn[name], "zero_0.clients")
                add_notify_trigger(dsn[name])
            http = HttpClient(max_connections_per_origin=max(16, args.clients))
            confirmations = Confirmations()
            async with trio.open_nursery() as nursery:
                await nursery.start(confirmations.run, [dsn["app_direct"], dsn["app_zcache"], dsn["app_zc"]])
                modes = [
                    Mode("direct", "direct", Direct(http, app_direct.mutate_url)),
                    Mode("zcache", "zcache", SyncServer(ports["zcache"], nursery, "zcache")),
                    Mode("zero-cache", "zc", SyncServer(ports["zero-cache"], nursery, "zc")),
                ]
                say(f"latency: {args.latency_n} rounds of one sequential mutation per mode")
                results = await measure_latency(modes, confirmations, args.latency_n, warmup=20)
                for mode in modes:
                    say(f"{mode.name}: throughput, {args.clients} clients for {args.seconds:g} s")
                    results[mode.name].throughput, results[mode.name].confirmed = await measure_throughput(
                        mode, confirmations, args.clients, args.seconds
                    )
                nursery.cancel_scope.cancel()
            await http.aclose()
    finally:
        for process in servers:
            stop_server(process)
        cluster.stop()
    summary: dict[str, Any] = {name: summarize(r, results["direct"]) for name, r in results.items()}
    for what in ("commit", "poke"):
        ours, theirs = summary["zcache"][f"{what}_overhead_p50_ms"], summary["zero-cache"][f"{what}_overhead_p50_ms"]
        # An overhead at or below zero is within the noise of the paired samples: no ratio then.
        summary[f"ratio_{what}_overhead_p50"] = round(theirs / ours, 2) if ours > 0 else None
    summary["ratio_throughput"] = round(results["zcache"].throughput / results["zero-cache"].throughput, 2)
    summary["samples_ms"] = {name: {"commit": r.commit_ms, "poke": r.poke_ms} for name, r in results.items()}
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--latency-n", type=int, default=300)
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    parser.add_argument("--wait-quiet", type=float, default=0.0, metavar="SECONDS", help="wait up to this long for other work on the machine to stop")
    args = parser.parse_args(argv)
    before = wait_for_quiet(args.wait_quiet) if args.wait_quiet else background_cores()
    workdir = Path(tempfile.mkdtemp(prefix="zcache-bench-mut-"))
    workdir.chmod(0o755)  # the postgres account must reach the data directory when we are root
    try:
        summary = trio.run(run, args, workdir)
    finally:
        if args.keep:
            say(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    summary["commit"] = git_revision()
    summary["background_cores_before"] = round(before, 2)
    summary["background_cores_after"] = round(background_cores(), 2)
    print(
        f"\ncommit {summary['commit']}; latency: {args.latency_n} rounds; throughput: {args.clients} clients, {args.seconds:g} s;"
        f" cores used by others before/after: {summary['background_cores_before']}/{summary['background_cores_after']}"
    )
    print(f"{'mode':<12}{'commit p50':>11}{'p99':>9}{'overhead':>10}{'poke p50':>10}{'p99':>9}{'overhead':>10}{'mutations/s':>13}")
    for name in ("direct", "zcache", "zero-cache"):
        r = summary[name]
        keys = ("commit_p50_ms", "commit_p99_ms", "commit_overhead_p50_ms", "poke_p50_ms", "poke_p99_ms", "poke_overhead_p50_ms")
        cells = [r.get(k, "-") for k in keys]
        print(f"{name:<12}{cells[0]:>11}{cells[1]:>9}{cells[2]:>10}{cells[3]:>10}{cells[4]:>9}{cells[5]:>10}{r['mutations_per_s']:>13}")
    print(f"zero-cache overhead / zcache overhead, p50: commit {summary['ratio_commit_overhead_p50']}, poke {summary['ratio_poke_overhead_p50']}  (target >= 3)")
    print(f"zcache / zero-cache throughput ({args.clients} clients, closed loop on the poke): {summary['ratio_throughput']}")
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
