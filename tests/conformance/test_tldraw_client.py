"""tldraw's queries through zcache, seen by a real `@rocicorp/zero` 1.9.0 client under Node 22.

The tldraw schema (zcache's migrations, publication `zero_data`), tldraw's app server
(`tests/apps/tldraw/server.mjs`: `/query` with `handleQueryRequest`, `/mutate` with
`handleMutateRequest`), zcache with `ZERO_QUERY_URL`/`ZERO_MUTATE_URL` pointing at it, and the
client driver `tldraw_client.mjs` subscribed, as alice, to her files (`ownedFiles`), the files
shared with her (`sharedWithMe`) and her file states with their files (`myFiles`).

After every upstream change the client's three views must converge to the same queries run by
Postgres itself (the oracle below).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import psycopg
import pytest
import trio

from tests.fixtures.app_server import AppServerInstall
from tests.mutations.conftest import TLDRAW_APP, TLDRAW_USERS, run_tldraw_app
from zcache.config import load_config
from zcache.embedded_pg import free_loopback_port
from zcache.migrations import migrate
from zcache.server.main import serve

pytestmark = pytest.mark.e2e

DRIVER = Path(__file__).with_name("tldraw_client.mjs")
FILES = [  # id, name, owner, shared, deleted
    ("f1", "Alice plan", "alice", False, False),
    ("f2", "Alice shared", "alice", True, False),
    ("f3", "Bob board", "bob", True, False),
    ("f4", "Bob private", "bob", False, False),
    ("f5", "Carol gone", "carol", True, True),
]
VISITS = [("alice", "f1"), ("alice", "f2"), ("bob", "f2"), ("bob", "f3"), ("alice", "f3"), ("bob", "f4"), ("carol", "f5"), ("alice", "f5")]

ORACLE = {
    "ownedFiles": """SELECT id FROM file WHERE "ownerId" = %(user)s AND NOT "isDeleted" """,
    "sharedWithMe": """
        SELECT f.id FROM file f WHERE f."ownerId" <> %(user)s AND f.shared AND NOT f."isDeleted"
          AND EXISTS (SELECT 1 FROM file_state s WHERE s."fileId" = f.id AND s."userId" = %(user)s)""",
    "myFiles": """
        SELECT s."fileId" FROM file_state s JOIN file f ON f.id = s."fileId"
        WHERE s."userId" = %(user)s AND NOT f."isDeleted" """,
}


def expected(conn: psycopg.Connection[Any], user: str) -> dict[str, list[str]]:
    return {name: sorted(r[0] for r in conn.execute(sql, {"user": user}).fetchall()) for name, sql in ORACLE.items()}  # type: ignore[arg-type]


def seed(dsn: str) -> None:
    migrate(dsn)
    with psycopg.connect(dsn, autocommit=True) as conn:
        for name in TLDRAW_USERS:
            conn.execute(
                """INSERT INTO "user" (id, name, email, avatar, color, "exportFormat", "exportTheme",
                                       "exportBackground", "exportPadding", "createdAt", "updatedAt", flags)
                   VALUES (%s, %s, %s, '', 'red', 'png', 'auto', true, true, 0, 0, '')""",
                [name, name.title(), f"{name}@example.com"],
            )
        for i, (file_id, name, owner, shared, deleted) in enumerate(FILES):
            conn.execute(
                """INSERT INTO file (id, name, "ownerId", thumbnail, shared, "sharedLinkType", published,
                                     "lastPublished", "publishedSlug", "createdAt", "updatedAt", "isEmpty", "isDeleted")
                   VALUES (%s, %s, %s, '', %s, 'edit', false, 0, %s, %s, %s, false, %s)""",
                [file_id, name, owner, shared, file_id, i, i, deleted],
            )
        for user, file_id in VISITS:
            owner = next(f[2] for f in FILES if f[0] == file_id)
            conn.execute(
                """INSERT INTO file_state ("userId", "fileId", "firstVisitAt", "lastVisitAt", "isFileOwner")
                   VALUES (%s, %s, 0, 0, %s)""",
                [user, file_id, user == owner],
            )


class Driver:
    """The Node client, one JSON command and one JSON answer per line."""

    def __init__(self, process: trio.Process) -> None:
        self.process = process
        self._buffer = b""

    async def call(self, command: dict[str, Any], timeout_s: float = 40.0) -> dict[str, Any]:
        assert self.process.stdin is not None and self.process.stdout is not None
        await self.process.stdin.send_all(json.dumps(command).encode() + b"\n")
        with trio.fail_after(timeout_s):
            while b"\n" not in self._buffer:
                chunk = await self.process.stdout.receive_some(1 << 16)
                assert chunk, "the client driver exited"
                self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        answer: dict[str, Any] = json.loads(line)
        return answer


def _workdir(install: AppServerInstall, path: Path) -> Path:
    path.mkdir(parents=True)
    shutil.copy(TLDRAW_APP / "schema.mjs", path / "schema.mjs")
    shutil.copy(DRIVER, path / DRIVER.name)
    (path / "node_modules").symlink_to(install.node_modules, target_is_directory=True)
    return path


@pytest.mark.parametrize("compression", [False, True], ids=["plain", "permessage-deflate"])
async def test_tldraw_views_of_a_real_client_follow_upstream(
    nursery: trio.Nursery, app_server_install: AppServerInstall, pg_dsn: str, tmp_path: Path, compression: bool
) -> None:
    """With ZERO_WEBSOCKET_COMPRESSION too: Node's WebSocket offers permessage-deflate."""
    seed(pg_dsn)
    with run_tldraw_app(app_server_install, pg_dsn, tmp_path / "app") as app, psycopg.connect(pg_dsn, autocommit=True) as conn:
        config = load_config(
            [],
            {
                "ZERO_UPSTREAM_DB": pg_dsn,
                "ZERO_REPLICA_FILE": str(tmp_path / "replica.db"),
                "ZERO_PORT": str(free_loopback_port()),
                "ZERO_APP_PUBLICATIONS": "zero_data",
                "ZERO_QUERY_URL": f"{app.url}/query",
                "ZERO_MUTATE_URL": app.mutate_url,
                "ZERO_LOG_LEVEL": "warn",
                "ZERO_WEBSOCKET_COMPRESSION": str(compression).lower(),
            },
        )
        server = await nursery.start(lambda task_status: serve(config, task_status=task_status))
        workdir = _workdir(app_server_install, tmp_path / "client")
        process = await trio.lowlevel.open_process(
            [str(app_server_install.node), DRIVER.name],
            cwd=workdir,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env={**os.environ, "ZERO_URL": f"http://127.0.0.1:{server.port}", "USER_ID": "alice"},
        )
        driver = Driver(process)
        try:
            first = await driver.call({"expect": expected(conn, "alice")})
            assert first["ok"], first
            assert [c.compressed for c in server.connections.connections()] == [compression]
            assert expected(conn, "alice") == {"ownedFiles": ["f1", "f2"], "sharedWithMe": ["f3"], "myFiles": ["f1", "f2", "f3"]}
            shared = first["views"]["sharedWithMe"]["rows"]
            assert shared[0]["name"] == "Bob board" and shared[0]["owner"]["name"] == "Bob"
            owned = first["views"]["ownedFiles"]["rows"]
            assert [r["id"] for r in owned] == ["f2", "f1"]  # updatedAt desc

            # Bob renames his shared board: alice sees the new name.
            conn.execute("UPDATE file SET name = 'Bob board v2', \"updatedAt\" = 100 WHERE id = 'f3'")
            while True:
                answer = await driver.call({"expect": expected(conn, "alice")})
                assert answer["ok"], answer
                if answer["views"]["sharedWithMe"]["rows"][0]["name"] == "Bob board v2":
                    break
                await trio.sleep(0.1)

            # Bob unshares it: the trigger deletes alice's file_state; the file leaves both lists.
            conn.execute("UPDATE file SET shared = false WHERE id = 'f3'")
            answer = await driver.call({"expect": expected(conn, "alice")})
            assert answer["ok"], answer
            assert expected(conn, "alice")["sharedWithMe"] == [] and "f3" not in expected(conn, "alice")["myFiles"]

            # Carol restores her deleted file and alice had visited it: it comes back.
            conn.execute("UPDATE file SET \"isDeleted\" = false WHERE id = 'f5'")
            answer = await driver.call({"expect": expected(conn, "alice")})
            assert answer["ok"], answer
            assert expected(conn, "alice")["sharedWithMe"] == ["f5"]

            # Alice renames her file through the app's mutator: push → app server → replication → poke.
            renamed = await driver.call({"mutate": {"name": "file.rename", "args": {"id": "f1", "name": "Alice plan v2", "time": 200}}})
            assert renamed["ok"], renamed
            assert conn.execute("SELECT name FROM file WHERE id = 'f1'").fetchone() == ("Alice plan v2",)
            answer = await driver.call({"expect": expected(conn, "alice")})
            assert answer["ok"] and answer["views"]["ownedFiles"]["rows"][0]["name"] == "Alice plan v2", answer

            assert (await driver.call({"close": True}))["ok"]
        finally:
            with trio.move_on_after(10):
                await process.wait()
            if process.returncode is None:
                process.kill()
                await process.wait()
            await server.stop()
