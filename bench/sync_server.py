"""Sync-server benchmark: zcache and zero-cache 1.9.0 side by side in one run, driven by real
`@rocicorp/zero` 1.9.0 clients under Node 22.

One throwaway cluster (fsync on) holds an upstream database per server with the reference data
set (`zcache.demo_data`: 10k users, 100k files, 200k file states; publication `zero_data`) and
each server's CVR and change databases. Both servers run as processes with zero-cache's
environment (`python -m zcache`; zero-cache's CLI from npm, default workers). The clients are
Zero instances (`kvStore: 'mem'`, each its own userID, hence its own client group) in a few Node
processes (`tests/apps/tldraw/clients.mjs`), asking legacy AST queries that the deployed read
permissions (`zero.permissions`, allow-all `select`) let through; no auth token.

Measures (each for both servers, one server at a time):

* `hydrate`: `new Zero()` → first complete result of one new client, p50/p90, for a user's 10
  files, a user's 20 file states with their files, the newest 100 files, the files of 1,000
  owners (10k rows); a different user (or block of owners) for each sample;
* `commit`: 200 single-row UPDATEs 20 ms apart, one subscribed client: UPDATE's commit returned
  → the client's view shows the new value, p50/p99;
* `sustained`: pgbench writers (`-R` paced, synchronous_commit off) updating the files watched
  by 20 and 100 subscribed clients, for a ladder of rates; "kept up" as in the reference: the
  clients' lag p90 < 1 s and, once the writers stop, the slot's confirmed_flush_lsn (and a last
  marker UPDATE at the client) catches up within 3 s;
* `concurrent`: N clients start at once, each its own client group and query (a user's files)
  → all complete; RSS of the server's process tree after hydration and 10 s after they left;
  then `fanout`: one transaction touching one watched row of each of the N clients → all N
  see it (median of a few rounds).

    .venv/bin/python bench/sync_server.py [--only hydrate,commit,sustained,concurrent] [--clients 50,200,500]
        [--servers zcache,zero-cache] [--smoke] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.replication import background_cores, parse_lsn, pg_bin, wait_for_quiet  # noqa: E402
from bench.servers import (  # noqa: E402
    git_revision,
    percentile,
    say,
    server_commands,
    start_server,
    stop_server,
    main_thread_cpu_s,
    tree_cpu_s,
    tree_memory,
    wait_for_table,
)
from tests.fixtures.app_server import AppServerInstall, install_app_server  # noqa: E402
from zcache import demo_data  # noqa: E402
from zcache.embedded_pg import EmbeddedPostgres  # noqa: E402
from zcache.migrations import migrate  # noqa: E402

TLDRAW_APP = REPO / "tests" / "apps" / "tldraw"
PHASES = ("hydrate", "commit", "sustained", "concurrent")
SERVERS = ("zcache", "zero-cache")
ALLOW = [["allow", {"type": "and", "conditions": []}]]
READ_PERMISSIONS = {"tables": {t: {"row": {"select": ALLOW}} for t in ("user", "file", "file_state")}}
MB = 1024 * 1024
WARMUP = 3  # hydration samples per query that warm the server up, not counted

# zero-cache 1.9.0 on this kind of machine (/work/shared/docs/reference-figures.md).
REFERENCE = {
    "hydrate_files": (42, 52),
    "hydrate_states": (27, 36),
    "hydrate_newest": (78, 97),
    "hydrate_owners": (353, 450),
    "commit": (7.9, 18.5),
    "sustained_20": 500,
    "sustained_100": 200,
    "concurrent_s": {50: 2.0, 200: 12.6, 500: 35.1},
    "concurrent_rss_gb": {50: 1.7, 200: 4.2, 500: 9.4},
    "fanout_ms": {50: 306, 200: 1800, 500: 8100},
}
QUERIES = {
    "files": "a user's 10 files",
    "states": "a user's 20 file states with their files",
    "newest": "the newest 100 files",
    "owners": "the files of 1,000 owners",
}


# --- the Node clients --------------------------------------------------------------------


class NodeClients:
    """One Node process holding many Zero clients (`clients.mjs`), one command at a time."""

    def __init__(self, install: AppServerInstall, workdir: Path, index: int) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        for name in ("schema.mjs", "clients.mjs"):
            shutil.copy(TLDRAW_APP / name, workdir / name)
        if not (workdir / "node_modules").exists():
            (workdir / "node_modules").symlink_to(install.node_modules, target_is_directory=True)
        self._log = open(workdir / f"node-{index}.log", "w")
        self.process = subprocess.Popen(
            [str(install.node), "--max-old-space-size=8192", "clients.mjs"],
            cwd=workdir, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log,
        )

    def send(self, command: dict[str, Any]) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(command).encode() + b"\n")
        self.process.stdin.flush()

    def receive(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"a Node client process exited ({self.process.poll()}); see {self._log.name}")
        answer: dict[str, Any] = json.loads(line)
        if "error" in answer:
            raise RuntimeError(f"Node clients: {answer['error']}")
        return answer

    def call(self, command: dict[str, Any]) -> dict[str, Any]:
        self.send(command)
        return self.receive()

    def stop(self) -> None:
        if self.process.poll() is None:
            try:
                self.call({"op": "exit"})
                self.process.wait(timeout=20)
            except (RuntimeError, OSError, subprocess.TimeoutExpired):
                self.process.kill()
                self.process.wait()
        self._log.close()


class Pool:
    """Several Node processes; commands go to all of them at once, answers are gathered."""

    def __init__(self, install: AppServerInstall, workdir: Path, processes: int) -> None:
        self.nodes = [NodeClients(install, workdir, i) for i in range(processes)]

    def all(self, command: dict[str, Any]) -> list[dict[str, Any]]:
        for node in self.nodes:
            node.send(command)
        return [node.receive() for node in self.nodes]

    def open(self, url: str, specs: list[dict[str, Any]], timeout_s: float) -> dict[str, Any]:
        """Opens `specs` spread over the processes, all at once; merges the answers."""
        shares = [specs[i :: len(self.nodes)] for i in range(len(self.nodes))]
        for node, share in zip(self.nodes, shares, strict=True):
            node.send({"op": "open", "url": url, "clients": share, "timeoutMs": int(timeout_s * 1000)})
        merged: dict[str, Any] = {"started": {}, "complete": {}, "missing": []}
        for node in self.nodes:
            answer = node.receive()
            for k in merged:
                merged[k].update(answer[k]) if isinstance(merged[k], dict) else merged[k].extend(answer[k])
        return merged

    def changes(self) -> list[list[Any]]:
        return [c for answer in self.all({"op": "changes"}) for c in answer["changes"]]

    def close(self) -> None:
        self.all({"op": "close"})

    def stats(self) -> dict[str, float]:
        answers = self.all({"op": "stats"})
        return {"cpu_s": sum(a["cpuS"] for a in answers), "rss_bytes": sum(a["rssBytes"] for a in answers)}

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


# --- the servers and the data ------------------------------------------------------------


@dataclass
class Server:
    name: str
    process: subprocess.Popen[bytes]
    port: int
    upstream: str

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def deploy_read_permissions(server: Server, pool: Pool, probe_user: str) -> None:
    """Allow-all `select` rules, then wait until a fresh client gets a user's 10 files (the
    rules must have replicated)."""
    wait_for_table(server.upstream, "zero.permissions")
    with psycopg.connect(server.upstream, autocommit=True) as conn:
        conn.execute("UPDATE zero.permissions SET permissions = %s", [json.dumps(READ_PERMISSIONS)])
    deadline = time.monotonic() + 60
    for attempt in range(1000):
        key = f"probe-{server.name}-{attempt}"
        pool.nodes[0].call({"op": "open", "url": server.url, "clients": [{"key": key, "query": {"kind": "files", "user": probe_user}}], "timeoutMs": 20000})
        rows = pool.nodes[0].call({"op": "rows", "keys": [key]})["rows"][key]["rows"]
        pool.nodes[0].call({"op": "close", "keys": [key]})
        if len(rows) == 10:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{server.name}: the read permissions did not take effect ({len(rows)} rows)")
        time.sleep(0.5)


def file_of(shape: demo_data.DemoShape, user: int, k: int = 0) -> str:
    return demo_data.file_id(demo_data.owned_files(shape, user)[k])


# --- measurements ------------------------------------------------------------------------


def measure_hydration(server: Server, pool: Pool, shape: demo_data.DemoShape, samples: int, kinds: list[str]) -> dict[str, list[float]]:
    """One new client at a time: `new Zero()` → first complete result, ms; and under
    `<kind>_server`, the server's turn within it as the client's socket saw it (clients.mjs:
    socket open → `connected`, plus the query sent → the last `pokeEnd` before complete)."""
    node = pool.nodes[0]
    out: dict[str, list[float]] = {}
    for kind in kinds:
        times = []
        server_turns = []
        for i in range(samples + WARMUP):
            user = (i * 97 + 13) % shape.users
            query: dict[str, Any] = {"kind": kind}
            if kind in ("files", "states"):
                query["user"] = demo_data.user_id(user)
            elif kind == "owners":
                query["users"] = [demo_data.user_id((user + j) % shape.users) for j in range(min(1000, shape.users))]
            key = f"h-{server.name}-{kind}-{i}"
            answer = node.call({"op": "open", "url": server.url, "clients": [{"key": key, "query": query}], "timeoutMs": 60000})
            node.call({"op": "close", "keys": [key]})
            if answer["missing"]:
                raise RuntimeError(f"{server.name}: {kind} did not complete within 60 s")
            if i >= WARMUP:
                times.append(answer["complete"][key] - answer["started"][key])
                if answer["server"].get(key) is not None:
                    server_turns.append(answer["server"][key])
        out[kind] = times
        out[f"{kind}_server"] = server_turns
    return out


def measure_commit(server: Server, pool: Pool, shape: demo_data.DemoShape, n: int, gap_ms: float) -> dict[str, Any]:
    """`n` single-row UPDATEs `gap_ms` apart; commit returned → the client sees the value."""
    node = pool.nodes[0]
    target = file_of(shape, 7)
    key = f"c-{server.name}"
    node.call({"op": "open", "url": server.url, "clients": [{"key": key, "query": {"kind": "ids", "ids": [target]}}], "timeoutMs": 60000})
    committed: dict[int, float] = {}
    with psycopg.connect(server.upstream, autocommit=True) as conn:
        for _ in range(n):
            value = int(time.time() * 1e6)
            conn.execute('UPDATE file SET "lastPublished" = %s WHERE id = %s', [value, target])
            committed[value] = time.time() * 1e6
            time.sleep(gap_ms / 1000)
    seen: dict[int, float] = {}
    last = max(committed)
    deadline = time.monotonic() + 30
    # A server may coalesce updates into one poke: the client then sees only the newest value.
    while last not in seen and time.monotonic() < deadline:
        for _, _, value, at in node.call({"op": "changes"})["changes"]:
            seen.setdefault(value, at)
        time.sleep(0.1)
    node.call({"op": "close", "keys": [key]})
    latencies = [(seen[v] - committed[v]) / 1000 for v in committed if v in seen]
    return {"latency_ms": latencies, "sent": n, "seen": len(latencies)}


PGBENCH_SCRIPT = """\\set j random(0, {last})
\\set k random(0, 9)
UPDATE file SET "lastPublished" = (extract(epoch from clock_timestamp()) * 1000000)::bigint
 WHERE id = 'f' || lpad((:j + :k * {users})::text, 7, '0');
"""


def pgbench(dsn_params: dict[str, str], script: Path, rate: float | None, seconds: float) -> float:
    """Runs the writers; returns the transactions/s pgbench achieved."""
    command = [pg_bin("pgbench"), "-n", "-M", "prepared", "-c", "4", "-j", "2", "-T", str(max(1, round(seconds))), "-f", str(script)]
    if rate is not None:
        command += ["-R", str(rate)]
    env = {**os.environ, "PGOPTIONS": "-c synchronous_commit=off", "PGHOST": dsn_params["host"], "PGPORT": dsn_params["port"], "PGUSER": dsn_params["user"]}
    result = subprocess.run([*command, dsn_params["dbname"]], env=env, capture_output=True, text=True, timeout=seconds + 120)
    if result.returncode != 0:
        raise RuntimeError(f"pgbench failed:\n{result.stdout}\n{result.stderr}")
    match = re.search(r"tps = ([0-9.]+)", result.stdout)
    assert match, result.stdout
    return float(match.group(1))


def slot_flush_lsn(conn: psycopg.Connection[Any]) -> int:
    rows = conn.execute(
        "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE database = current_database() AND active AND confirmed_flush_lsn IS NOT NULL"
    ).fetchall()
    return min((parse_lsn(r[0]) for r in rows), default=0)


def measure_sustained(
    server: Server, pool: Pool, shape: demo_data.DemoShape, workdir: Path, clients: int, rates: list[float], seconds: float
) -> list[dict[str, Any]]:
    """Climbs the ladder of rates while the server keeps up; one entry per rate tried."""
    specs = [{"key": f"s-{server.name}-{j}", "query": {"kind": "files", "user": demo_data.user_id(j)}} for j in range(clients)]
    opened = pool.open(server.url, specs, timeout_s=120)
    if opened["missing"]:
        raise RuntimeError(f"{server.name}: {len(opened['missing'])} sustained-load clients did not hydrate")
    script = workdir / f"pgbench-{clients}.sql"
    script.write_text(PGBENCH_SCRIPT.format(last=clients - 1, users=shape.users))
    params = psycopg.conninfo.conninfo_to_dict(server.upstream)
    marker_file = file_of(shape, 0)
    results = []
    try:
        for rate in rates:
            pool.changes()  # forget what came before
            cpu_before, wall_start = tree_cpu_s(server.process.pid), time.perf_counter()
            achieved = pgbench({k: str(v) for k, v in params.items()}, script, rate, seconds)
            wall = time.perf_counter() - wall_start
            server_cores = (tree_cpu_s(server.process.pid) - cpu_before) / wall
            with psycopg.connect(server.upstream, autocommit=True) as conn:
                marker = int(time.time() * 1e6)
                with conn.transaction():
                    row = conn.execute("SELECT pg_current_wal_insert_lsn()::text").fetchone()
                    assert row is not None
                    marker_lsn = parse_lsn(row[0])
                    conn.execute('UPDATE file SET "lastPublished" = %s WHERE id = %s', [marker, marker_file])
                ended = time.perf_counter()
                slot_s = marker_s = None
                lags: list[float] = []
                while time.perf_counter() - ended < 10 and (slot_s is None or marker_s is None):
                    if slot_s is None and slot_flush_lsn(conn) >= marker_lsn:
                        slot_s = time.perf_counter() - ended
                    for _, _, value, at in pool.changes():
                        if value == marker:
                            marker_s = time.perf_counter() - ended
                        else:
                            lags.append((at - value) / 1000)
                    time.sleep(0.05)
            lags += [(at - value) / 1000 for _, _, value, at in pool.changes() if value != marker]
            lag_p90 = percentile(lags, 0.9) if lags else math.inf
            kept_up = lag_p90 < 1000 and slot_s is not None and slot_s < 3 and marker_s is not None and marker_s < 3
            entry = {
                "rate": rate, "achieved_tps": achieved, "changes_seen": len(lags), "lag_p50_ms": statistics.median(lags) if lags else None,
                "lag_p90_ms": lag_p90 if lags else None, "slot_catch_up_s": slot_s, "marker_s": marker_s, "kept_up": kept_up,
                "server_cores": round(server_cores, 2), "lag_ms": lags,
            }
            results.append(entry)
            say(f"  {server.name} {clients} clients @ {rate:g} tx/s: achieved {achieved:.0f}, lag p90 {entry['lag_p90_ms']} ms, slot {slot_s}, kept up {kept_up}")
            if not kept_up:
                break
    finally:
        pool.close()
    return results


def measure_concurrent(server: Server, pool: Pool, shape: demo_data.DemoShape, n: int, fanout_rounds: int, settle_s: float) -> dict[str, Any]:
    """N clients at once → all complete; memory; fan-out rounds; memory after they leave."""
    before = tree_memory(server.process.pid)
    cpu_before = tree_cpu_s(server.process.pid)
    main_before = main_thread_cpu_s(server.process.pid)
    driver_before = pool.stats()
    specs = [{"key": f"n-{server.name}-{n}-{j}", "query": {"kind": "files", "user": demo_data.user_id(j % shape.users)}} for j in range(n)]
    opened = pool.open(server.url, specs, timeout_s=max(120, n * 0.3))
    if not opened["complete"]:
        raise RuntimeError(f"{server.name}: none of {n} clients completed")
    all_complete_s = (max(opened["complete"].values()) - min(opened["started"].values())) / 1000
    hydrated = tree_memory(server.process.pid)
    cpu_hydrated = tree_cpu_s(server.process.pid)
    main_hydrated = main_thread_cpu_s(server.process.pid)
    driver_hydrated = pool.stats()
    watched = sorted({file_of(shape, j % shape.users) for j in range(n)})
    rounds = []
    pool.changes()
    with psycopg.connect(server.upstream, autocommit=True) as conn:
        for _ in range(fanout_rounds):
            value = int(time.time() * 1e6)
            round_cpu = tree_cpu_s(server.process.pid), pool.stats()["cpu_s"]
            conn.execute('UPDATE file SET "lastPublished" = %s WHERE id = ANY(%s)', [value, watched])
            committed = time.time() * 1e6
            seen: list[float] = []
            deadline = time.monotonic() + 60
            while len(seen) < n - len(opened["missing"]) and time.monotonic() < deadline:
                seen += [at for _, _, v, at in pool.changes() if v == value]
                time.sleep(0.02)
            # CPU seconds of the round (to the last client seen, plus up to one 20 ms poll): what the
            # server and the Node clients each spent, since they share the machine's cores.
            rounds.append({
                "all_ms": (max(seen) - committed) / 1000 if seen else None, "p50_ms": (statistics.median(seen) - committed) / 1000 if seen else None, "seen": len(seen),
                "server_cpu_s": round(tree_cpu_s(server.process.pid) - round_cpu[0], 3), "driver_cpu_s": round(pool.stats()["cpu_s"] - round_cpu[1], 3),
            })
            time.sleep(0.2)
    driver_after = pool.stats()
    pool.close()
    time.sleep(settle_s)
    left = tree_memory(server.process.pid)
    return {
        "server": server.name, "clients": n, "complete": len(opened["complete"]), "server_cpu_s_hydration": round(cpu_hydrated - cpu_before, 2),
        "server_main_thread_cpu_s_hydration": round(main_hydrated - main_before, 2), "missing": len(opened["missing"]), "all_complete_s": all_complete_s,
        "hydration_ms": [opened["complete"][k] - opened["started"][k] for k in opened["complete"]],
        "memory_before": before, "memory_hydrated": hydrated, "memory_after_leave": left, "settle_s": settle_s,
        "per_client_group_bytes": (hydrated["rss_bytes"] - before["rss_bytes"]) / n,
        "fanout": rounds,
        "driver": {
            "rss_bytes_hydrated": driver_hydrated["rss_bytes"], "rss_bytes_before": driver_before["rss_bytes"],
            "cpu_s_hydration": driver_hydrated["cpu_s"] - driver_before["cpu_s"], "cpu_s_fanout": driver_after["cpu_s"] - driver_hydrated["cpu_s"],
        },
    }


# --- the run -----------------------------------------------------------------------------


def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    install = install_app_server()
    shape = demo_data.DemoShape(args.users)
    say(f"throwaway PostgreSQL cluster (fsync on) in {workdir}")
    cluster = EmbeddedPostgres(workdir / "pgdata", fsync=True)
    cluster.start()
    with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
        # The writers commit asynchronously; the walsender only sends flushed WAL, so the WAL
        # writer's default 200 ms delay would be part of every lag measured.
        conn.execute("ALTER SYSTEM SET wal_writer_delay = '10ms'")
        conn.execute("SELECT pg_reload_conf()")
    servers: list[Server] = []
    pool: Pool | None = None
    out: dict[str, Any] = {"servers": args.servers, "users": args.users, "phases": {}}
    try:
        first = cluster.create_database("up_zcache")
        migrate(first)
        say(f"loading the demo data set: {shape.users} users, {shape.files} files, {shape.file_states} file states")
        demo_data.load_demo_data(first, args.users)
        with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
            conn.execute("CREATE DATABASE up_zc TEMPLATE up_zcache")
        dsn = {"zcache": first, "zero-cache": cluster.dsn("up_zc")}
        commands = server_commands(install)
        pool = Pool(install, workdir / "clients", args.node_processes)
        for name in args.servers:
            suffix = "zcache" if name == "zcache" else "zc"
            say(f"starting {name} (initial sync)")
            started = time.perf_counter()
            process, port = start_server(
                name, commands[name], dsn[name], cluster.create_database(f"cvr_{suffix}"), cluster.create_database(f"change_{suffix}"),
                workdir, {"ZERO_APP_PUBLICATIONS": "zero_data"},
            )
            server = Server(name, process, port, dsn[name])
            servers.append(server)
            deploy_read_permissions(server, pool, demo_data.user_id(1))
            out.setdefault("ready_s", {})[name] = round(time.perf_counter() - started, 2)
            out.setdefault("memory_idle", {})[name] = tree_memory(process.pid)
        time.sleep(args.settle_s)  # let the servers finish what follows their start
        phases = out["phases"]
        if "hydrate" in args.only:
            say(f"hydration: {args.samples} new clients per query")
            phases["hydrate"] = {s.name: measure_hydration(s, pool, shape, args.samples, list(QUERIES)) for s in servers}
        if "commit" in args.only:
            say(f"commit → client: {args.commit_n} UPDATEs {args.commit_gap_ms:g} ms apart")
            phases["commit"] = {s.name: measure_commit(s, pool, shape, args.commit_n, args.commit_gap_ms) for s in servers}
        if "sustained" in args.only:
            phases["sustained"] = {}
            for clients in args.sustained_clients:
                say(f"sustained: {clients} subscribed clients, rates {args.rates}, {args.sustained_seconds:g} s each")
                phases["sustained"][str(clients)] = {
                    s.name: measure_sustained(s, pool, shape, workdir, clients, args.rates, args.sustained_seconds) for s in servers
                }
            # The upstream ceiling: the same writers unpaced, no client watching (first server's db).
            script = workdir / "pgbench-ceiling.sql"
            script.write_text(PGBENCH_SCRIPT.format(last=19, users=shape.users))
            params = {k: str(v) for k, v in psycopg.conninfo.conninfo_to_dict(dsn[args.servers[0]]).items()}
            phases["sustained"]["upstream_ceiling_tps"] = pgbench(params, script, None, 5)
        if "concurrent" in args.only:
            phases["concurrent"] = {s.name: [] for s in servers}
            for n in sorted(set(args.clients + args.zcache_clients)):
                for s in servers:
                    if n not in args.clients and s.name != "zcache":
                        continue
                    say(f"concurrent: {n} clients at once on {s.name}, then fan-out")
                    result = measure_concurrent(s, pool, shape, n, args.fanout_rounds, args.settle_s)
                    phases["concurrent"][s.name].append(result)
                    say(
                        f"  all complete {result['all_complete_s']:.2f} s ({result['missing']} missing); RSS {result['memory_hydrated']['rss_bytes'] / MB:.0f} MB;"
                        f" fan-out {[r['all_ms'] for r in result['fanout']]} ms; after leaving {result['memory_after_leave']['rss_bytes'] / MB:.0f} MB"
                    )
        out["driver_idle"] = pool.stats()
    finally:
        if pool is not None:
            pool.stop()
        for s in servers:
            stop_server(s.process)
        cluster.stop()
    return out


# --- the table ---------------------------------------------------------------------------


def fmt(value: float | None, unit: str, digits: int = 1) -> str:
    return "—" if value is None else f"{value:,.{digits}f} {unit}".strip()


def table(out: dict[str, Any]) -> list[tuple[str, ...]]:
    """(measure, zcache, zero-cache, zcache's advantage, reference, target, verdict)."""
    rows: list[tuple[str, ...]] = []
    phases = out["phases"]

    def add(what: str, ours: float | None, theirs: float | None, unit: str, ref: str, target: float | None, better: str = "lower", digits: int = 1, target_text: str = "") -> None:
        # zcache's advantage: how many times faster, smaller or more throughput.
        ratio = (f"{theirs / ours:.2f}×" if better == "lower" else f"{ours / theirs:.2f}×") if ours and theirs else "—"
        if target is None:
            verdict = ""
        elif ours is None:
            verdict = "MISSED"
        else:
            verdict = "met" if (ours <= target if better == "lower" else ours >= target) else "MISSED"
        rows.append((what, fmt(ours, unit, digits), fmt(theirs, unit, digits), ratio, ref, target_text or (fmt(target, unit, digits) if target is not None else ""), verdict))

    def both(phase: dict[str, Any], fn: Any) -> tuple[Any, Any]:
        return (fn(phase["zcache"]) if "zcache" in phase else None, fn(phase["zero-cache"]) if "zero-cache" in phase else None)

    if "hydrate" in phases:
        for kind, label in QUERIES.items():
            for q, qname, idx in ((0.5, "p50", 0), (0.9, "p90", 1)):
                ours, theirs = both(phases["hydrate"], lambda r: percentile(r[kind], q) if q != 0.5 else statistics.median(r[kind]))
                ref = REFERENCE[f"hydrate_{kind}"][idx]
                target = (theirs if theirs is not None else ref) / 4
                add(f"connect → complete, {label}, {qname}", ours, theirs, "ms", f"{ref} ms", target, target_text=f"≤ ¼ zero-cache ({target:.1f} ms)")
            ours, theirs = both(phases["hydrate"], lambda r: statistics.median(r[f"{kind}_server"]) if r.get(f"{kind}_server") else None)
            add("&nbsp;&nbsp;of which the server's turn (as the client's socket saw it), p50", ours, theirs, "ms", "", None)
    if "commit" in phases:
        for q, qname, idx in ((0.5, "p50", 0), (0.99, "p99", 1)):
            ours, theirs = both(phases["commit"], lambda r: (statistics.median(r["latency_ms"]) if q == 0.5 else percentile(r["latency_ms"], q)) if r["latency_ms"] else None)
            ref = REFERENCE["commit"][idx]
            target = (theirs if theirs is not None else ref) / 4
            add(f"commit → client, {qname}", ours, theirs, "ms", f"{ref} ms", target, digits=2, target_text=f"≤ ¼ zero-cache ({target:.2f} ms)")
    if "sustained" in phases:
        ceiling = phases["sustained"].get("upstream_ceiling_tps")
        for clients, by_server in phases["sustained"].items():
            if clients == "upstream_ceiling_tps":
                continue

            def best(entries: list[dict[str, Any]]) -> float | None:
                kept = [e["rate"] for e in entries if e["kept_up"]]
                return max(kept) if kept else None

            ours, theirs = both(by_server, best)
            ref = REFERENCE.get(f"sustained_{clients}")
            base = theirs if theirs is not None else ref
            target = min(5 * base, ceiling) if base and ceiling else None
            ladder_top = max(e["rate"] for e in by_server.get("zcache", [{"rate": 0}]))
            note = " (top of the ladder)" if ours and by_server["zcache"][-1]["kept_up"] and by_server["zcache"][-1]["rate"] == ladder_top else ""
            add(
                f"sustained single-row tx/s (offered rate) kept up, {clients} clients{note}", ours, theirs, "tx/s", f"{ref} tx/s" if ref else "", target,
                better="higher", digits=0, target_text=f"≥ min(5× zero-cache, upstream {ceiling:,.0f}) = {target:,.0f} tx/s" if target else "",
            )
    if "concurrent" in phases:
        by_n: dict[int, dict[str, dict[str, Any]]] = {}
        for name, results in phases["concurrent"].items():
            for r in results:
                by_n.setdefault(r["clients"], {})[name] = r
        for n, by_server in sorted(by_n.items()):
            ours, theirs = both(by_server, lambda r: r["all_complete_s"] if not r["missing"] else None)
            ref = REFERENCE["concurrent_s"].get(n)
            add(f"{n} clients at once → all complete", ours, theirs, "s", f"{ref} s" if ref else "", 5.0 if n == 1000 else None, digits=2, target_text="< 5 s" if n == 1000 else "")
            ours, theirs = both(by_server, lambda r: r["server_cpu_s_hydration"] * 1000 / n)
            add("  server CPU per client, connect → all complete", ours, theirs, "ms", "", None, digits=2)
            ours, theirs = both(by_server, lambda r: r["server_main_thread_cpu_s_hydration"] * 1000 / n if "server_main_thread_cpu_s_hydration" in r else None)
            add("    of which its main thread (zcache: the event loop)", ours, theirs, "ms", "", None, digits=2)
            ours, theirs = both(by_server, lambda r: r["driver"]["cpu_s_hydration"] * 1000 / n)
            add("  the Node clients' CPU per client, same span (same cores)", ours, theirs, "ms", "", None, digits=2)
            ours, theirs = both(by_server, lambda r: r["memory_hydrated"]["rss_bytes"] / MB)
            ref_gb = REFERENCE["concurrent_rss_gb"].get(n)
            add(f"  RSS of the server's process tree, {n} hydrated", ours, theirs, "MB", f"{ref_gb} GB" if ref_gb else "", None, digits=0)
            ours, theirs = both(by_server, lambda r: r["per_client_group_bytes"] / MB)
            add(f"  RSS per client group (growth in this phase ÷ {n})", ours, theirs, "MB", "~17.5 MB" if n == 500 else "", 1.0, digits=2, target_text="< 1 MB")
            # Growth over the idle server right after its start, ÷ N: an upper bound, since it
            # also holds what earlier phases left behind (zero-cache does not return memory).
            idle = out["memory_idle"]
            ours, theirs = both(by_server, lambda r: (r["memory_hydrated"]["rss_bytes"] - idle[r["server"]]["rss_bytes"]) / n / MB)
            add(f"  upper bound: (RSS hydrated − idle at start) ÷ {n}", ours, theirs, "MB", "", None, digits=2)
            ours, theirs = both(by_server, lambda r: r["memory_after_leave"]["rss_bytes"] / MB)
            add(f"  RSS {by_server[next(iter(by_server))]['settle_s']:g} s after the {n} clients left", ours, theirs, "MB", "not returned" if n == 500 else "", None, digits=0)
            ours, theirs = both(by_server, lambda r: statistics.median([x["all_ms"] for x in r["fanout"]]) if r["fanout"] and all(x["all_ms"] is not None and x["seen"] >= r["complete"] for x in r["fanout"]) else None)
            ref_ms = REFERENCE["fanout_ms"].get(n)
            add(f"  fan-out: one tx touching all {n} → all see it", ours, theirs, "ms", f"{ref_ms:,} ms" if ref_ms else "", 200.0 if n == 500 else None, digits=0, target_text="< 200 ms" if n == 500 else "")
            ours, theirs = both(by_server, lambda r: statistics.median([x["server_cpu_s"] * 1000 for x in r["fanout"]]) if r["fanout"] else None)
            add("    server CPU per fan-out round", ours, theirs, "ms", "", None, digits=0)
            ours, theirs = both(by_server, lambda r: statistics.median([x["driver_cpu_s"] * 1000 for x in r["fanout"]]) if r["fanout"] else None)
            add("    the Node clients' CPU per fan-out round (same cores)", ours, theirs, "ms", "", None, digits=0)
    return rows


def print_table(rows: list[tuple[str, ...]]) -> None:
    header = ("measure", "zcache", "zero-cache 1.9.0", "zcache's advantage", "zero-cache (reference doc)", "target", "")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(row) + " |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    csv_ints = lambda s: [int(x) for x in s.split(",") if x]  # noqa: E731
    parser.add_argument("--only", type=lambda s: s.split(","), default=list(PHASES), help=f"phases, comma-separated: {','.join(PHASES)}")
    parser.add_argument("--servers", type=lambda s: s.split(","), default=list(SERVERS))
    parser.add_argument("--users", type=int, default=10_000, help="data set size (demo_data users; 10 files and 20 file states each)")
    parser.add_argument("--samples", type=int, default=30, help="hydration samples per query")
    parser.add_argument("--commit-n", type=int, default=200)
    parser.add_argument("--commit-gap-ms", type=float, default=20)
    parser.add_argument("--sustained-clients", type=csv_ints, default=[20, 100])
    parser.add_argument("--rates", type=lambda s: [float(x) for x in s.split(",")], default=[100, 200, 500, 1000, 2500, 5000])
    parser.add_argument("--sustained-seconds", type=float, default=10)
    parser.add_argument("--clients", type=csv_ints, default=[50, 200, 500], help="concurrent-client counts for both servers")
    parser.add_argument("--zcache-clients", type=csv_ints, default=[1000], help="further counts for zcache only")
    parser.add_argument("--fanout-rounds", type=int, default=5)
    parser.add_argument("--settle-s", type=float, default=10, help="wait after the clients leave before measuring memory")
    parser.add_argument("--node-processes", type=int, default=0, help="Node processes for the clients (0: one per 125 clients)")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: a run of seconds")
    parser.add_argument("--report", type=Path, metavar="JSON", help="print the table of an earlier run's --json and exit")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    parser.add_argument("--wait-quiet", type=float, default=0.0, metavar="SECONDS")
    args = parser.parse_args(argv)
    if args.report:
        print_table(table(json.loads(args.report.read_text())))
        return 0
    if args.smoke:
        args.users, args.samples, args.commit_n, args.sustained_clients = 200, 3, 10, [5]
        args.rates, args.sustained_seconds, args.clients, args.zcache_clients = [100], 2, [10], []
        args.fanout_rounds, args.settle_s = 2, 1
    unknown = set(args.only) - set(PHASES) | set(args.servers) - set(SERVERS)
    if unknown:
        parser.error(f"unknown phases or servers: {sorted(unknown)}")
    if not args.node_processes:
        args.node_processes = max(1, math.ceil(max([1, *args.clients, *args.zcache_clients]) / 125))
    before = wait_for_quiet(args.wait_quiet) if args.wait_quiet else background_cores()
    load_before = os.getloadavg()
    workdir = Path(tempfile.mkdtemp(prefix="zcache-bench-sync-"))
    workdir.chmod(0o755)  # the postgres account must reach the data directory when we are root
    started = time.time()
    try:
        out = run(args, workdir)
    finally:
        if args.keep:
            say(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    out.update(
        commit=git_revision(), date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(started)), duration_s=round(time.time() - started),
        background_cores_before=round(before, 2), background_cores_after=round(background_cores(), 2),
        loadavg_before=load_before, loadavg_after=os.getloadavg(), args={k: v for k, v in vars(args).items() if k != "json"},
    )
    print(
        f"\n{out['date']}, commit {out['commit']}, {args.users} users; {out['duration_s']} s;"
        f" cores used by others before/after: {out['background_cores_before']}/{out['background_cores_after']};"
        f" load average before {load_before[0]:.2f}, after {out['loadavg_after'][0]:.2f}"
    )
    print_table(table(out))
    if args.json:
        args.json.write_text(json.dumps(out, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
