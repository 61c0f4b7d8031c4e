"""Fixtures of the write-path tests.

* `upstream`: a database with a small app schema and the shard objects zcache creates
  (`zero_0.clients`, `zero_0.mutations`, `zero.permissions`, publications), as the
  replicator would leave it.
* `app`: the conformance harness's real app server (`@rocicorp/zero/server` under Node 22) on
  a database seeded like the capture's, with the shard objects.
* `tldraw`: tldraw's schema (zcache's migrations) with three users, and tldraw's app server
  (`tests/apps/tldraw/`: its mutators on `@rocicorp/zero/server`).
* `connect()` builds a `PushContext` that records what the write path sends the connection.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest
import trio
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import TupleRow

from tests.fixtures.app_server import AppServer, AppServerInstall, load_seed, run_app_server
from tests.fixtures.http_server import free_port
from zcache.app_server.http import HttpClient
from zcache.auth import AuthData
from zcache.change_source.upstream import ShardId, setup_shard
from zcache.config import ZeroConfig, load_config
from zcache.migrations import migrate
from zcache.mutations import MutationService, PushContext

SHARD = ShardId("zero", 0)

APP_SCHEMA = """
CREATE TABLE "user" (id TEXT PRIMARY KEY, name TEXT NOT NULL, role TEXT NOT NULL DEFAULT 'member');
CREATE TABLE file (
  id TEXT PRIMARY KEY,
  name TEXT NOT NULL,
  owner_id TEXT NOT NULL REFERENCES "user" ON DELETE CASCADE,
  shared BOOLEAN NOT NULL DEFAULT false,
  meta JSONB,
  created_at TIMESTAMPTZ,
  size BIGINT
);
INSERT INTO "user" VALUES ('u1', 'Alice', 'admin'), ('u2', 'Bob', 'member');
INSERT INTO file (id, name, owner_id) VALUES ('f1', 'alpha', 'u1'), ('f2', 'beta', 'u1'), ('f3', 'gamma', 'u2');
"""

ALLOW: list[Any] = [["allow", {"type": "and", "conditions": []}]]


def allow_all(*tables: str) -> dict[str, Any]:
    """Permissions that allow every write on `tables` (what scenario 05 deploys)."""
    row = {"select": ALLOW, "insert": ALLOW, "update": {"preMutation": ALLOW, "postMutation": ALLOW}, "delete": ALLOW}
    return {"tables": {t: {"row": row} for t in tables}}


def set_permissions(conn: psycopg.Connection[TupleRow], permissions: dict[str, Any] | None) -> None:
    conn.execute("UPDATE zero.permissions SET permissions = %s", [None if permissions is None else json.dumps(permissions)])


def last_mutation_ids(conn: psycopg.Connection[TupleRow]) -> dict[str, int]:
    rows = conn.execute('SELECT "clientID", "lastMutationID" FROM zero_0.clients ORDER BY 1').fetchall()
    return {r[0]: r[1] for r in rows}


@pytest.fixture
def upstream(pg_dsn: str) -> Iterator[psycopg.Connection[TupleRow]]:
    """An autocommit connection to a database with the app schema and the shard set up."""
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(APP_SCHEMA)
        setup_shard(conn, SHARD, [])
        yield conn


@dataclass
class Client:
    """One connection as the write path sees it, with what it was sent."""

    ctx: PushContext
    errors: list[dict[str, Any]] = field(default_factory=list)  # non-fatal `error` messages
    failures: list[dict[str, Any]] = field(default_factory=list)  # `error` + close

    @property
    def client_id(self) -> str:
        return self.ctx.client_id


def connect(
    client_id: str,
    *,
    group: str = "group1",
    user: str | None = "u1",
    token: str | None = "user:u1",
    claims: dict[str, Any] | None = None,
    push_url: str | None = None,
) -> Client:
    errors: list[dict[str, Any]] = []
    failures: list[dict[str, Any]] = []

    async def send_error(body: dict[str, Any]) -> None:
        errors.append(body)

    async def fail(body: dict[str, Any]) -> None:
        failures.append(body)

    ctx = PushContext(
        client_group_id=group,
        client_id=client_id,
        auth=AuthData(token, user, claims),
        user_push_url=push_url,
        client_headers={},
        request_headers={},
        cookie=None,
        origin=None,
        send_error=send_error,
        fail=fail,
    )
    return Client(ctx, errors, failures)


def custom(client_id: str, mid: int, name: str, arg: Any) -> dict[str, Any]:
    return {"type": "custom", "id": mid, "clientID": client_id, "name": name, "timestamp": 1795610186710, "args": [arg]}


def push_body(group: str, *mutations: dict[str, Any], request_id: str = "req-1") -> dict[str, Any]:
    return {
        "timestamp": 1795610186712,
        "clientGroupID": group,
        "mutations": list(mutations),
        "pushVersion": 1,
        "requestID": request_id,
    }


def zero_config(upstream_dsn: str, mutate_urls: Sequence[str], **env: str) -> ZeroConfig:
    environ = {"ZERO_UPSTREAM_DB": upstream_dsn, **{f"ZERO_{k.upper()}": v for k, v in env.items()}}
    if mutate_urls:
        environ["ZERO_MUTATE_URL"] = ",".join(mutate_urls)
    return load_config([], environ)


@pytest.fixture
def app(app_server_install: AppServerInstall, pg_dsn: str, tmp_path: Path) -> Iterator[AppServer]:
    """The harness's real app server (`@rocicorp/zero/server`) on a seeded database whose
    shard objects (`zero_0.clients`, `zero_0.mutations`) zcache set up."""
    load_seed(pg_dsn, app_server_install.harness)
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        setup_shard(conn, SHARD, [])
    with run_app_server(app_server_install, pg_dsn, tmp_path / "app-server") as server:
        yield server


@pytest.fixture
async def http() -> AsyncIterator[HttpClient]:
    client = HttpClient()
    try:
        yield client
    finally:
        await client.aclose()


async def start_service(nursery: trio.Nursery, config: ZeroConfig, http: HttpClient, **kwargs: Any) -> MutationService:
    service = MutationService(config, http=http, upstream_dsn=config.upstream.db or "", **kwargs)
    started: MutationService = await nursery.start(service.run)
    return started


async def wait_until(predicate: Callable[[], bool], timeout_s: float = 20.0) -> None:
    with trio.fail_after(timeout_s):
        while not predicate():
            await trio.sleep(0.02)


TLDRAW_APP = Path(__file__).resolve().parents[1] / "apps" / "tldraw"
TLDRAW_USERS = ("alice", "bob", "carol")


@dataclass(frozen=True)
class TldrawApp:
    url: str
    upstream_dsn: str

    @property
    def mutate_url(self) -> str:
        return f"{self.url}/mutate"


@contextmanager
def run_tldraw_app(install: AppServerInstall, upstream_dsn: str, workdir: Path) -> Iterator[TldrawApp]:
    """`tests/apps/tldraw/server.mjs` (tldraw's mutators on `@rocicorp/zero/server`) under
    Node 22 against `upstream_dsn`, until the block ends."""
    workdir.mkdir(parents=True, exist_ok=True)
    for script in TLDRAW_APP.glob("*.mjs"):
        shutil.copy(script, workdir / script.name)
    (workdir / "node_modules").symlink_to(install.node_modules, target_is_directory=True)
    port = free_port()
    env = {**os.environ, "APP_PORT": str(port), "UPSTREAM_DB": _postgres_url(upstream_dsn)}
    log_path = workdir / "server.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen([str(install.node), "server.mjs"], cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while "listening" not in log_path.read_text():
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the tldraw app server did not start:\n{log_path.read_text()}")
            time.sleep(0.05)
        yield TldrawApp(f"http://127.0.0.1:{port}", upstream_dsn)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _postgres_url(dsn: str) -> str:
    """postgres.js wants a URL; the pg fixtures hand out key=value connection strings."""
    params = conninfo_to_dict(dsn)
    password = f":{params['password']}" if params.get("password") else ""
    return f"postgres://{params.get('user', 'postgres')}{password}@{params.get('host', '127.0.0.1')}:{params.get('port', 5432)}/{params['dbname']}"


@pytest.fixture
def tldraw(app_server_install: AppServerInstall, pg_dsn: str, tmp_path: Path) -> Iterator[TldrawApp]:
    """The tldraw schema (zcache's migrations), users alice, bob and carol, the shard objects
    (publishing `zero_data` as tldraw does), and the tldraw app server."""
    migrate(pg_dsn)
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        for name in TLDRAW_USERS:
            conn.execute(
                """INSERT INTO "user" (id, name, email, avatar, color, "exportFormat", "exportTheme",
                                       "exportBackground", "exportPadding", "createdAt", "updatedAt", flags)
                   VALUES (%s, %s, %s, '', 'red', 'png', 'auto', true, true, 0, 0, '')""",
                [name, name.title(), f"{name}@example.com"],
            )
        setup_shard(conn, SHARD, ["zero_data"])
    with run_tldraw_app(app_server_install, pg_dsn, tmp_path / "tldraw") as server:
        yield server
