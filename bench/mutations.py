"""Write-path benchmark: custom-mutation latency and throughput, zcache against zero-cache 1.9.0
and against the app server alone, in one run on one machine.

Three ways to get a `file.rename` mutation from a client into Postgres, each against its own
instance of the conformance harness's app server (`@rocicorp/zero/server` 1.9.0 on postgres.js)
and its own upstream database, all in one throwaway cluster (fsync on):

* **direct** (baseline): the client POSTs the push body to the app server's `/mutate` itself, as
  zero-cache would (keep-alive, same body, same query parameters and bearer token);
* **zcache**: `MutationService.push()` in this process, which forwards to the app server;
* **zero-cache**: the real zero-cache 1.9.0 (`node …/zero/src/cli.js`, one sync worker), driven
  over its sync WebSocket by a raw protocol client (connect, `initConnection`, `push`).

A mutation counts as done when its `lastMutationID` commit reaches this process through a
`NOTIFY` from a trigger on `zero_0.clients` (the same path for all three), so the figures are
"push sent → mutation committed upstream". Overhead = latency − direct latency; the target is
zcache's overhead ≤ ⅓ of zero-cache's.

Until the sync server is merged, zcache's mode enters at `MutationService.push()` and skips the
WebSocket hop and message parsing that zero-cache's mode includes; zcache's replicator runs (as
zero-cache's does) but no view syncer consumes its changes yet. Re-run when the edge lands.

Latency is measured in interleaved rounds (one mutation per mode per round, rotating order), and
the overhead is the median of the per-round differences to direct; throughput is closed-loop:
every client sends its next mutation once the previous one is committed.

    .venv/bin/python bench/mutations.py [--latency-n 300] [--clients 100] [--seconds 10] [--json out.json]
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
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
from tests.fixtures.app_server import AppServerInstall, install_app_server, load_seed, run_app_server  # noqa: E402
from tests.fixtures.http_server import free_port  # noqa: E402
from zcache.app_server.http import HttpClient  # noqa: E402
from zcache.auth import AuthData  # noqa: E402
from zcache.change_source.upstream import ShardId, setup_shard  # noqa: E402
from zcache.config import load_config  # noqa: E402
from zcache.embedded_pg import EmbeddedPostgres  # noqa: E402
from zcache.mutations import MutationService, PushContext  # noqa: E402
from zcache.replica.replicator import Replicator  # noqa: E402

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


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


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


class Zcache:
    def __init__(self, service: MutationService) -> None:
        self._service = service

    async def open(self, index: int) -> Pusher:
        client_id, group = f"zcache{index}", f"gzcache{index}"

        async def send_error(body: dict[str, Any]) -> None:
            raise RuntimeError(f"zcache sent an error: {body}")

        ctx = PushContext(
            client_group_id=group,
            client_id=client_id,
            auth=AuthData("user:u1", "u1", None),
            user_push_url=None,
            client_headers={},
            request_headers={},
            cookie=None,
            origin=None,
            send_error=send_error,
            fail=send_error,
        )

        async def push(_: int, mid: int) -> None:
            await self._service.push(ctx, push_body(group, client_id, mid, f"b{index}"))

        return push


class ZeroCache:
    """Raw sync-protocol clients of a running zero-cache."""

    def __init__(self, port: int, nursery: trio.Nursery) -> None:
        self._port = port
        self._nursery = nursery

    async def open(self, index: int) -> Pusher:
        client_id, group = f"zc{index}", f"gzc{index}"
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
            raise RuntimeError(f"zero-cache answered {first}")
        await ws.send_message(json.dumps(["initConnection", {"desiredQueriesPatch": [], "clientSchema": CLIENT_SCHEMA}]))

        async def drain() -> None:  # pokes and pongs; an error message is fatal for the run
            try:
                while True:
                    message = json.loads(await ws.get_message())
                    if message[0] == "error":
                        raise RuntimeError(f"zero-cache sent {message}")
            except trio_websocket.ConnectionClosed:
                return

        self._nursery.start_soon(drain)

        async def push(_: int, mid: int) -> None:
            await ws.send_message(json.dumps(["push", push_body(group, client_id, mid, f"b{index}")]))

        return push


# --- measurements ------------------------------------------------------------------------


@dataclass
class ModeResult:
    latencies_ms: list[float] = field(default_factory=list)
    throughput: float = 0.0
    confirmed: int = 0


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def measure_latency(modes: dict[str, tuple[Any, str]], confirmations: Confirmations, n: int, warmup: int) -> dict[str, list[float]]:
    """`n` rounds; each round sends one mutation per mode, one after the other, in a rotating
    order, so drift on the machine hits every mode alike and rounds pair up."""
    pushers = {name: await mode.open(10_000) for name, (mode, _) in modes.items()}
    latencies: dict[str, list[float]] = {name: [] for name in modes}
    names = list(modes)
    for mid in range(1, n + warmup + 1):
        for name in names[mid % len(names):] + names[: mid % len(names)]:
            done = confirmations.expect(f"{modes[name][1]}10000", mid)
            started = time.perf_counter()
            await pushers[name](10_000, mid)
            with trio.fail_after(30):
                await done.wait()
            if mid > warmup:
                latencies[name].append((time.perf_counter() - started) * 1000)
    return latencies


async def measure_throughput(mode: Any, confirmations: Confirmations, prefix: str, clients: int, seconds: float) -> tuple[float, int]:
    pushers = [await mode.open(i) for i in range(clients)]
    confirmed = 0
    stop_at = time.perf_counter() + seconds + 2.0  # the first 2 s warm up

    async def client(i: int) -> None:
        nonlocal confirmed
        mid = 0
        while time.perf_counter() < stop_at:
            mid += 1
            done = confirmations.expect(f"{prefix}{i}", mid)
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


def start_zero_cache(install: AppServerInstall, upstream: str, cvr: str, change: str, app_url: str, workdir: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    while True:  # zero-cache also uses port+1
        try:
            import socket

            with socket.socket() as s:
                s.bind(("127.0.0.1", port + 1))
            break
        except OSError:
            port = free_port()
    env = {
        **os.environ,
        "ZERO_UPSTREAM_DB": upstream,
        "ZERO_CVR_DB": cvr,
        "ZERO_CHANGE_DB": change,
        "ZERO_REPLICA_FILE": str(workdir / "zero-cache-replica.db"),
        "ZERO_PORT": str(port),
        "ZERO_APP_ID": "zero",
        "ZERO_NUM_SYNC_WORKERS": "1",
        "ZERO_MUTATE_URL": f"{app_url}/mutate",
        "ZERO_QUERY_URL": f"{app_url}/query",
        "ZERO_LOG_LEVEL": "warn",
        "NODE_ENV": "development",
    }
    cli = install.node_modules / "@rocicorp" / "zero" / "out" / "zero" / "src" / "cli.js"
    log = open(workdir / "zero-cache.log", "w")
    process = subprocess.Popen([str(install.node), str(cli)], env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"zero-cache exited:\n{(workdir / 'zero-cache.log').read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1) as response:
                if response.status == 200:
                    return process, port
        except OSError:
            pass
        time.sleep(0.5)
    raise RuntimeError("zero-cache did not become ready within 120 s")


def wait_for_table(dsn: str, table: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    with psycopg.connect(dsn, autocommit=True) as conn:
        while conn.execute("SELECT to_regclass(%s)", [table]).fetchone() == (None,):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{table} did not appear")
            time.sleep(0.2)


def summarize(result: ModeResult, baseline: ModeResult | None) -> dict[str, Any]:
    lat = result.latencies_ms
    out: dict[str, Any] = {
        "p50_ms": round(statistics.median(lat), 3),
        "p99_ms": round(percentile(lat, 0.99), 3),
        "mean_ms": round(statistics.fmean(lat), 3),
        "mutations_per_s": round(result.throughput, 1),
    }
    if baseline is not None:
        paired = [a - b for a, b in zip(lat, baseline.latencies_ms, strict=True)]
        out["overhead_p50_ms"] = round(statistics.median(paired), 3)
        out["overhead_p99_ms"] = round(out["p99_ms"] - percentile(baseline.latencies_ms, 0.99), 3)
    return out


async def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    install = install_app_server()
    say(f"throwaway PostgreSQL cluster (fsync on) in {workdir}")
    cluster = EmbeddedPostgres(workdir / "pgdata", fsync=True)
    cluster.start()
    zero_cache: subprocess.Popen[bytes] | None = None
    try:
        dsn = {name: cluster.create_database(name) for name in ("zapp_direct", "zapp_zcache", "zapp_zc", "zcvr", "zchange")}
        for name in ("zapp_direct", "zapp_zcache", "zapp_zc"):
            load_seed(dsn[name], install.harness)
            seed_bench_files(dsn[name], max(args.clients, 1))
        for name in ("zapp_direct", "zapp_zcache"):
            with psycopg.connect(dsn[name], autocommit=True) as conn:
                setup_shard(conn, ShardId("zero", 0), [])
            add_notify_trigger(dsn[name])
        with (
            run_app_server(install, dsn["zapp_direct"], workdir / "app-direct") as app_direct,
            run_app_server(install, dsn["zapp_zcache"], workdir / "app-zcache") as app_zcache,
            run_app_server(install, dsn["zapp_zc"], workdir / "app-zc") as app_zc,
        ):
            say("starting zero-cache 1.9.0")
            zero_cache, zc_port = start_zero_cache(install, dsn["zapp_zc"], dsn["zcvr"], dsn["zchange"], app_zc.url, workdir)
            wait_for_table(dsn["zapp_zc"], "zero_0.clients")
            add_notify_trigger(dsn["zapp_zc"])
            results: dict[str, ModeResult] = {m: ModeResult() for m in ("direct", "zcache", "zero-cache")}
            http = HttpClient(max_connections_per_origin=max(16, args.clients))
            config = load_config(
                [],
                {
                    "ZERO_UPSTREAM_DB": dsn["zapp_zcache"],
                    "ZERO_MUTATE_URL": app_zcache.mutate_url,
                    "ZERO_REPLICA_FILE": str(workdir / "zcache-replica.db"),
                    "ZERO_LOG_LEVEL": "warn",
                },
            )
            confirmations = Confirmations()
            async with trio.open_nursery() as nursery:
                await nursery.start(confirmations.run, [dsn["zapp_direct"], dsn["zapp_zcache"], dsn["zapp_zc"]])
                # zero-cache replicates every mutation it causes; so does zcache here (its view
                # syncers, which zero-cache also runs, are not merged yet).
                await nursery.start(Replicator(config).run)
                service: MutationService = await nursery.start(MutationService(config, http=http, upstream_dsn=dsn["zapp_zcache"]).run)
                modes = {
                    "direct": (Direct(http, app_direct.mutate_url), "direct"),
                    "zcache": (Zcache(service), "zcache"),
                    "zero-cache": (ZeroCache(zc_port, nursery), "zc"),
                }
                say(f"latency: {args.latency_n} rounds of one sequential mutation per mode")
                for name, samples in (await measure_latency(modes, confirmations, args.latency_n, warmup=20)).items():
                    results[name].latencies_ms = samples
                for name, (mode, prefix) in modes.items():
                    say(f"{name}: throughput, {args.clients} clients for {args.seconds:g} s")
                    results[name].throughput, results[name].confirmed = await measure_throughput(
                        mode, confirmations, prefix, args.clients, args.seconds
                    )
                zcache_stats = service.statistics()
                nursery.cancel_scope.cancel()
            await http.aclose()
    finally:
        if zero_cache is not None:
            os.killpg(zero_cache.pid, 15)
            zero_cache.wait(timeout=20)
        cluster.stop()
    summary = {name: summarize(r, None if name == "direct" else results["direct"]) for name, r in results.items()}
    zc_overhead, z_overhead = summary["zero-cache"]["overhead_p50_ms"], summary["zcache"]["overhead_p50_ms"]
    # An overhead at or below zero is within the noise of the paired samples: no ratio then.
    summary["ratio_overhead_p50"] = round(zc_overhead / z_overhead, 2) if z_overhead > 0 else None
    summary["ratio_throughput"] = round(results["zcache"].throughput / results["zero-cache"].throughput, 2)
    summary["zcache_pushes_forwarded"] = zcache_stats.pushes_forwarded
    summary["zcache_mutations_forwarded"] = zcache_stats.mutations_forwarded
    summary["samples_ms"] = {name: r.latencies_ms for name, r in results.items()}
    return summary


def git_revision() -> str:
    rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    return rev + (" with uncommitted changes" if dirty else "")


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
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    summary["commit"] = git_revision()
    summary["background_cores_before"] = round(before, 2)
    summary["background_cores_after"] = round(background_cores(), 2)
    print(
        f"\ncommit {summary['commit']}; latency: {args.latency_n} rounds; throughput: {args.clients} clients, {args.seconds:g} s;"
        f" cores used by others before/after: {summary['background_cores_before']}/{summary['background_cores_after']}"
    )
    print(f"{'mode':<12}{'p50 ms':>9}{'p99 ms':>9}{'overhead p50':>14}{'overhead p99':>14}{'mutations/s':>13}")
    for name in ("direct", "zcache", "zero-cache"):
        s = summary[name]
        print(f"{name:<12}{s['p50_ms']:>9}{s['p99_ms']:>9}{s.get('overhead_p50_ms', '-'):>14}{s.get('overhead_p99_ms', '-'):>14}{s['mutations_per_s']:>13}")
    print(f"zero-cache overhead / zcache overhead (p50): {summary['ratio_overhead_p50']}  (target >= 3)")
    print(f"zcache / zero-cache throughput: {summary['ratio_throughput']}")
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
