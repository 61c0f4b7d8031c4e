"""kill -9 of zcache while it pokes real clients, several times, then convergence.

zcache runs as its own process (`python -m zcache`) on a tldraw database with the demo data
(20 users). Real `@rocicorp/zero` 1.9.0 clients under Node 22 (`tests/apps/tldraw/clients.mjs`,
one client group each) hold legacy queries of different shapes: the files of a few owners, a
user's file states with their files, the newest 20 files (orderBy + limit), a fixed set of ids.
A writer thread streams upstream transactions the whole time: renames, `updatedAt` bumps (rows
move in and out of the top 20), inserts and deletes of files of the watched owners (a delete
cascades to file states), file-state updates, and now and then one transaction touching a
hundred rows, so pokes are large.

Eight times, once the clients are receiving pokes again, zcache is killed with SIGKILL at a
random moment and restarted on the same replica file and CVR database (same port). The clients
reconnect by themselves, with the baseCookie of what they hold. At the end, with the writer
stopped, every client's view must equal its query run on Postgres, row for row (no row missed,
none duplicated, none left over, every value current), and every client must still be in the
client group it started in (no reset behind our back).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.fixtures.app_server import AppServerInstall
from tests.fixtures.fix_pg import PgServer
from zcache import demo_data
from zcache.embedded_pg import free_loopback_port
from zcache.migrations import migrate

pytestmark = pytest.mark.e2e

TLDRAW_APP = Path(__file__).resolve().parents[1] / "apps" / "tldraw"
USERS = 20
KILLS = 8
ALLOW = [["allow", {"type": "and", "conditions": []}]]
READ_PERMISSIONS = {"tables": {t: {"row": {"select": ALLOW}} for t in ("user", "file", "file_state")}}
OWNERS_A = [demo_data.user_id(u) for u in range(0, 4)]
OWNERS_B = [demo_data.user_id(u) for u in range(4, 8)]
STATES_USER = demo_data.user_id(3)
IDS = [demo_data.file_id(f) for f in range(0, 200, 7)] + [f"x{i}" for i in range(0, 60, 3)]  # some come and go
FILE_COLUMNS = ("id", "name", "ownerId", "lastPublished", "updatedAt", "isDeleted")

CLIENTS: dict[str, dict[str, Any]] = {
    "owners-a": {"kind": "owners", "users": OWNERS_A},
    "owners-b": {"kind": "owners", "users": OWNERS_B},
    "states": {"kind": "states", "user": STATES_USER},
    "newest": {"kind": "newest", "limit": 20},
    "ids": {"kind": "ids", "ids": IDS},
    "files": {"kind": "files", "user": demo_data.user_id(1)},
}
_FILES = 'SELECT id, name, "ownerId", "lastPublished", "updatedAt", "isDeleted" FROM file'
ORACLE = {
    "owners": _FILES + ' WHERE "ownerId" = ANY(%(users)s)',
    "files": _FILES + ' WHERE "ownerId" = %(user)s',
    "newest": _FILES + ' ORDER BY "updatedAt" DESC, id LIMIT %(limit)s',
    "ids": _FILES + " WHERE id = ANY(%(ids)s)",
}
STATES_ORACLE = """
    SELECT s."fileId", s."lastVisitAt", f.id, f.name, f."lastPublished"
    FROM file_state s LEFT JOIN file f ON f.id = s."fileId" WHERE s."userId" = %(user)s"""


def expected(conn: psycopg.Connection[Any], query: dict[str, Any]) -> list[tuple[Any, ...]]:
    if query["kind"] == "states":
        return sorted(conn.execute(STATES_ORACLE, query).fetchall(), key=repr)
    return sorted(conn.execute(ORACLE[query["kind"]], query).fetchall(), key=repr)


def seen(query: dict[str, Any], rows: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    """A client's view in the oracle's shape (duplicates kept, so they show)."""
    if query["kind"] == "states":
        out = []
        for r in rows:
            f = r.get("file") or {}
            out.append((r["fileId"], r.get("lastVisitAt"), f.get("id"), f.get("name"), f.get("lastPublished")))
        return sorted(out, key=repr)
    return sorted((tuple(r[c] for c in FILE_COLUMNS) for r in rows), key=repr)


class Clients:
    """The Node process with the Zero clients; one JSON command and answer per line."""

    def __init__(self, install: AppServerInstall, workdir: Path, url: str) -> None:
        workdir.mkdir(parents=True)
        for name in ("schema.mjs", "clients.mjs"):
            shutil.copy(TLDRAW_APP / name, workdir / name)
        (workdir / "node_modules").symlink_to(install.node_modules, target_is_directory=True)
        self.log = workdir / "node.log"
        with open(self.log, "w") as log:
            self.process = subprocess.Popen(
                [str(install.node), "clients.mjs"], cwd=workdir, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log,
                env={**os.environ, "ZERO_URL": url},
            )

    def call(self, command: dict[str, Any]) -> dict[str, Any]:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(json.dumps(command).encode() + b"\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        assert line, f"the client process exited: {self.log.read_text()[-2000:]}"
        answer: dict[str, Any] = json.loads(line)
        assert "error" not in answer, answer
        return answer

    def stop(self) -> None:
        with contextlib.suppress(OSError, AssertionError):
            self.call({"op": "exit"})
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        for pipe in (self.process.stdin, self.process.stdout):
            if pipe is not None:
                pipe.close()


class Zcache:
    """`python -m zcache` in its own session, killed and restarted on the same files."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.env, self.log, self.port = env, log, int(env["ZERO_PORT"])
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log, "a") as log:
            self.process = subprocess.Popen([sys.executable, "-m", "zcache"], env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"zcache exited: {self.log.read_text()[-3000:]}"
            with contextlib.suppress(OSError), urllib.request.urlopen(f"http://127.0.0.1:{self.port}/", timeout=1) as response:
                if response.status == 200:
                    return
            time.sleep(0.1)
        raise AssertionError(f"zcache did not become ready: {self.log.read_text()[-3000:]}")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        assert self.process is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, sig)
        self.process.wait(timeout=30)


class HoldingProxy:
    """A TCP front for zcache that, like a deployment's proxy, keeps accepting while zcache is
    down and connects each client through once zcache listens again (Zero 1.9's client waits
    10 s, then 5 s more, after a refused connection). When zcache dies, its clients' sockets
    close at once, as they would without the proxy."""

    def __init__(self, backend_port: int) -> None:
        self.backend_port = backend_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.closed = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closed.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        deadline = time.monotonic() + 30
        while True:
            try:
                backend = socket.create_connection(("127.0.0.1", self.backend_port))
                break
            except OSError:
                if time.monotonic() > deadline or self.closed.is_set():
                    client.close()
                    return
                time.sleep(0.05)

        def pump(source: socket.socket, sink: socket.socket) -> None:
            with contextlib.suppress(OSError):
                while data := source.recv(1 << 16):
                    sink.sendall(data)
            for s in (source, sink):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

        with client, backend:
            downstream = threading.Thread(target=pump, args=(backend, client), daemon=True)
            downstream.start()
            pump(client, backend)
            downstream.join()

    def close(self) -> None:
        self.closed.set()
        self.listener.close()


class Writer(threading.Thread):
    """Streams random upstream transactions until stopped; a failure is re-raised by `stop`."""

    def __init__(self, dsn: str, seed: int) -> None:
        super().__init__(daemon=True)
        self.dsn, self.seed, self.rng, self.halt = dsn, seed, random.Random(seed), threading.Event()
        self.transactions, self.error = 0, None
        self.inserted: list[str] = []

    def run(self) -> None:
        try:
            with psycopg.connect(self.dsn, autocommit=True) as conn:
                seq = 0
                while not self.halt.is_set():
                    with conn.transaction():
                        for _ in range(self.rng.choice((1, 1, 1, 3, 8))):
                            seq += 1
                            self.step(conn, seq)
                    self.transactions += 1
                    time.sleep(self.rng.uniform(0.002, 0.02))
        except BaseException as e:  # noqa: BLE001 - handed to the test thread
            self.error = e

    def step(self, conn: psycopg.Connection[Any], seq: int) -> None:
        rng = self.rng
        watched_file = demo_data.file_id(rng.randrange(0, 8) + USERS * rng.randrange(10))
        op = rng.random()
        if op < 0.3:
            conn.execute('UPDATE file SET name = %s, "lastPublished" = %s WHERE id = %s', [f"n{seq}", seq, watched_file])
        elif op < 0.45:
            # Unique, growing values: rows enter the newest 20 and push others out.
            conn.execute('UPDATE file SET "updatedAt" = %s WHERE id = %s', [demo_data.ORIGIN_MS * 2 + seq, demo_data.file_id(rng.randrange(USERS * 10))])
        elif op < 0.65:
            new = f"x{seq % 60}"
            if new in self.inserted:
                return
            owner = rng.choice(OWNERS_A + OWNERS_B)
            conn.execute(
                """INSERT INTO file (id, name, "ownerId", thumbnail, shared, "sharedLinkType", published, "lastPublished",
                                     "publishedSlug", "createdAt", "updatedAt", "isEmpty", "isDeleted")
                   VALUES (%s, %s, %s, '', true, 'edit', false, %s, %s, 0, %s, true, false)""",
                [new, f"new{seq}", owner, seq, new, demo_data.ORIGIN_MS * 2 + seq],
            )
            if rng.random() < 0.5:
                conn.execute(
                    """INSERT INTO file_state ("userId", "fileId", "firstVisitAt", "lastVisitAt", "isFileOwner")
                       VALUES (%s, %s, %s, %s, false)""",
                    [STATES_USER, new, seq, seq],
                )
            self.inserted.append(new)
        elif op < 0.8:
            if self.inserted:
                gone = self.inserted.pop(rng.randrange(len(self.inserted)))
                conn.execute("DELETE FROM file WHERE id = %s", [gone])  # cascades to file_state
        elif op < 0.97:
            conn.execute('UPDATE file_state SET "lastVisitAt" = %s WHERE "userId" = %s AND "fileId" = %s', [seq, STATES_USER, watched_file])
            conn.execute('UPDATE file_state SET "lastVisitAt" = %s WHERE "userId" = %s AND "fileId" LIKE %s', [seq, STATES_USER, f"%{seq % 10}"])
        else:
            conn.execute('UPDATE file SET "lastPublished" = %s WHERE "ownerId" = ANY(%s)', [seq, OWNERS_A + OWNERS_B])

    def stop(self) -> None:
        self.halt.set()
        self.join(timeout=30)
        if self.error is not None:
            raise self.error


@pytest.fixture
def cvr_dsn(pg_cluster: PgServer, pg_dsn: str) -> Iterator[str]:
    name = psycopg.conninfo.conninfo_to_dict(pg_dsn)["dbname"] + "_cvr"
    dsn = pg_cluster.create_database(name)
    yield dsn
    pg_cluster.drop_database(name)


def wait_for(predicate: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_clients_converge_after_repeated_kill_9_mid_poke(
    app_server_install: AppServerInstall, pg_dsn: str, cvr_dsn: str, tmp_path: Path
) -> None:
    migrate(pg_dsn)
    demo_data.load_demo_data(pg_dsn, USERS)
    port = free_loopback_port()
    env = {
        **os.environ,
        "ZERO_UPSTREAM_DB": pg_dsn,
        "ZERO_CVR_DB": cvr_dsn,
        "ZERO_REPLICA_FILE": str(tmp_path / "replica.db"),
        "ZERO_PORT": str(port),
        "ZERO_APP_PUBLICATIONS": "zero_data",
        "ZERO_LOG_LEVEL": "warn",
    }
    server = Zcache(env, tmp_path / "zcache.log")
    server.start()
    proxy = HoldingProxy(port)
    clients = Clients(app_server_install, tmp_path / "clients", f"http://127.0.0.1:{proxy.port}")
    writer = Writer(pg_dsn, seed=int(os.environ.get("ZCACHE_CRASH_SEED", random.randrange(1 << 30))))
    rng = random.Random(writer.rng.random())
    try:
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            conn.execute("UPDATE zero.permissions SET permissions = %s", [json.dumps(READ_PERMISSIONS)])
            # The rules replicate like any row: wait until a client sees the files they allow.
            def permitted() -> bool:
                key = f"probe-{time.monotonic()}"
                clients.call({"op": "open", "clients": [{"key": key, "query": CLIENTS["files"]}], "timeoutMs": 20000})
                rows = clients.call({"op": "rows", "keys": [key]})["rows"][key]["rows"]
                clients.call({"op": "close", "keys": [key]})
                return len(rows) == 10

            wait_for(permitted, 30, "the read permissions to replicate")
            opened = clients.call({"op": "open", "clients": [{"key": k, "query": q} for k, q in CLIENTS.items()], "timeoutMs": 30000})
            assert opened["ok"], opened
            groups = {k: v["clientGroupID"] for k, v in clients.call({"op": "rows", "keys": list(CLIENTS)})["rows"].items()}
            assert len(set(groups.values())) == len(CLIENTS) and None not in groups.values(), groups

            writer.start()
            for _ in range(KILLS):
                # Kill only once pokes flow to the clients again, at a random moment among them.
                clients.call({"op": "changes"})
                wait_for(lambda: bool(clients.call({"op": "changes"})["changes"]), 30, "pokes after a restart")
                time.sleep(rng.uniform(0, 0.5))
                server.kill()
                time.sleep(rng.uniform(0, 0.5))  # upstream writes go on while zcache is down
                server.start()
            clients.call({"op": "changes"})
            wait_for(lambda: bool(clients.call({"op": "changes"})["changes"]), 30, "pokes after the last restart")
            time.sleep(0.5)
            writer.stop()
            assert writer.transactions > 50, writer.transactions

            want = {k: expected(conn, q) for k, q in CLIENTS.items()}
            last: dict[str, Any] = {}

            def converged() -> bool:
                views = clients.call({"op": "rows", "keys": list(CLIENTS)})["rows"]
                last.update({k: seen(CLIENTS[k], v["rows"]) for k, v in views.items()})
                last["groups"] = {k: v["clientGroupID"] for k, v in views.items()}
                return all(last[k] == want[k] for k in CLIENTS)

            try:
                wait_for(converged, 30, "every view to equal its query on Postgres")
            except AssertionError:
                diffs = {k: {"missing": sorted(set(want[k]) - set(last[k]), key=repr), "extra": sorted(set(last[k]) - set(want[k]), key=repr), "rows": (len(last[k]), len(want[k]))} for k in CLIENTS if last[k] != want[k]}
                raise AssertionError(f"views differ from Postgres after {KILLS} kills (ZCACHE_CRASH_SEED={writer.seed}): {diffs}") from None
            assert last["groups"] == groups
            assert all(want[k] for k in CLIENTS), "every query must have rows to compare"
            clients.call({"op": "close"})
    finally:
        if writer.is_alive():
            writer.halt.set()
            writer.join(timeout=30)
        clients.stop()
        proxy.close()
        with contextlib.suppress(Exception):
            server.kill(signal.SIGTERM)
