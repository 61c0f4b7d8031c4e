"""tldraw's writes through MutationService to a tldraw app server built on
`@rocicorp/zero/server` (tests/apps/tldraw), landing in the tldraw schema upstream: create,
rename, share and unshare (the `delete_file_states` trigger), open, pin, soft delete, user
preferences, and the app's refusals arriving as results in `zero_0.mutations`."""

from __future__ import annotations

from typing import Any

import psycopg
import trio

from tests.mutations.conftest import Client, TldrawApp, connect, custom, push_body, start_service, wait_until, zero_config
from zcache.app_server.http import HttpClient
from zcache.mutations import MutationService


class User:
    """One tldraw user's client: its own client group, mutation ids counted as the client does."""

    def __init__(self, service: MutationService, name: str) -> None:
        self.service = service
        self.client: Client = connect(f"{name}-client", group=f"{name}-group", user=name, token=f"user:{name}")
        self.next_id = 1

    async def mutate(self, name: str, arg: dict[str, Any]) -> int:
        mid = self.next_id
        self.next_id += 1
        ctx = self.client.ctx
        await self.service.push(ctx, push_body(ctx.client_group_id, custom(ctx.client_id, mid, name, arg)))
        return mid


def query(dsn: str, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(sql, params).fetchall()  # type: ignore[arg-type]


async def settled(app: TldrawApp, *users: User) -> None:
    """Every mutation each user pushed has been confirmed upstream (lastMutationID)."""

    def done() -> bool:
        lmids = dict(query(app.upstream_dsn, 'SELECT "clientID", "lastMutationID" FROM zero_0.clients'))
        return all(lmids.get(u.client.client_id) == u.next_id - 1 for u in users)

    await wait_until(done)


def app_errors(app: TldrawApp, user: User) -> dict[int, str]:
    rows = query(app.upstream_dsn, 'SELECT "mutationID", result FROM zero_0.mutations WHERE "clientID" = %s', user.client.client_id)
    return {mid: result["message"] for mid, result in rows}


def file_states(app: TldrawApp, file_id: str) -> dict[str, tuple[Any, ...]]:
    rows = query(app.upstream_dsn, 'SELECT "userId", "isFileOwner", "isPinned" FROM file_state WHERE "fileId" = %s', file_id)
    return {r[0]: r[1:] for r in rows}


async def test_tldraw_file_lifecycle(tldraw: TldrawApp, http: HttpClient, nursery: trio.Nursery) -> None:
    service = await start_service(nursery, zero_config(tldraw.upstream_dsn, [tldraw.mutate_url]), http)
    alice, bob, carol = User(service, "alice"), User(service, "bob"), User(service, "carol")

    await alice.mutate("file.create", {"id": "doc1", "name": "Untitled", "time": 1000})
    await alice.mutate("file.rename", {"id": "doc1", "name": "Roadmap", "time": 2000})
    await settled(tldraw, alice)  # client groups push concurrently: bob's rename must come after
    refused_rename = await bob.mutate("file.rename", {"id": "doc1", "name": "mine now"})
    await settled(tldraw, alice, bob)
    [(name, owner, shared, created, updated)] = query(
        tldraw.upstream_dsn, 'SELECT name, "ownerId", shared, "createdAt", "updatedAt" FROM file WHERE id = %s', "doc1"
    )
    assert (name, owner, shared, created, updated) == ("Roadmap", "alice", True, 1000, 2000)
    assert file_states(tldraw, "doc1") == {"alice": (True, None)}
    assert app_errors(tldraw, bob) == {refused_rename: "Only the owner may change file doc1"}

    # Guests open the shared file and pin it; unsharing removes their file states (the
    # delete_file_states trigger), not the owner's.
    await bob.mutate("fileState.visit", {"fileId": "doc1", "time": 3000})
    await carol.mutate("fileState.visit", {"fileId": "doc1", "time": 3000})
    await bob.mutate("fileState.setPinned", {"fileId": "doc1", "isPinned": True})
    await settled(tldraw, bob, carol)
    assert file_states(tldraw, "doc1") == {"alice": (True, None), "bob": (False, True), "carol": (False, None)}

    await alice.mutate("file.setShared", {"id": "doc1", "shared": False})
    await settled(tldraw, alice)
    assert file_states(tldraw, "doc1") == {"alice": (True, None)}
    refused_visit = await carol.mutate("fileState.visit", {"fileId": "doc1"})
    await settled(tldraw, carol)
    assert app_errors(tldraw, carol) == {refused_visit: "File doc1 is not shared"}
    assert "carol" not in file_states(tldraw, "doc1")

    # Shared again: bob comes back; then the owner deletes (soft) and the guest forgets.
    await alice.mutate("file.setShared", {"id": "doc1", "shared": True, "sharedLinkType": "view"})
    await settled(tldraw, alice)
    await bob.mutate("fileState.visit", {"fileId": "doc1"})
    await settled(tldraw, bob)
    await alice.mutate("file.deleteOrForget", {"id": "doc1"})
    await bob.mutate("file.deleteOrForget", {"id": "doc1"})
    await settled(tldraw, alice, bob)
    assert query(tldraw.upstream_dsn, 'SELECT "isDeleted", "sharedLinkType" FROM file WHERE id = %s', "doc1") == [(True, "view")]
    assert file_states(tldraw, "doc1") == {}

    assert all(c.failures == [] and c.errors == [] for c in (alice.client, bob.client, carol.client))
    stats = service.statistics()
    assert stats.mutations_forwarded == alice.next_id + bob.next_id + carol.next_id - 3
    assert stats.app_errors == 2 and stats.push_failures == {}


async def test_tldraw_user_preferences(tldraw: TldrawApp, http: HttpClient, nursery: trio.Nursery) -> None:
    service = await start_service(nursery, zero_config(tldraw.upstream_dsn, [tldraw.mutate_url]), http)
    alice = User(service, "alice")
    prefs = {"locale": "fr", "colorScheme": "dark", "isSnapMode": True, "animationSpeed": 0, "enhancedA11yMode": True}
    await alice.mutate("user.updatePreferences", {"id": "alice", **prefs, "updatedAt": 5000})
    refused = await alice.mutate("user.updatePreferences", {"id": "bob", "locale": "de"})
    await settled(tldraw, alice)
    rows = query(
        tldraw.upstream_dsn,
        'SELECT id, locale, "colorScheme", "isSnapMode", "animationSpeed", "enhancedA11yMode", "updatedAt" FROM "user" ORDER BY id',
    )
    assert rows == [
        ("alice", "fr", "dark", True, 0, True, 5000),
        ("bob", None, None, None, None, None, 0),
        ("carol", None, None, None, None, None, 0),
    ]
    assert app_errors(tldraw, alice) == {refused: "Users may only change their own preferences"}
