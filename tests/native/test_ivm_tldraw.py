"""The tldraw queries that matter, over a demo-like replica (`zcache.demo_data`, every column of
the real tables): a user's files, files shared with a user (EXISTS through file_state), a
user's file states with their files (related), the newest files (top N), paging with `start`.
Expected results come from the demo data's own definitions (who owns and visits what), and
after each change from the oracle of `test_ivm_support`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.native.test_ivm_support import ClientView, Replica, demo_rows, demo_tables, oracle_rows
from zcache import _native, demo_data

pytestmark = pytest.mark.unit

USERS = 30
SHAPE = demo_data.DemoShape(USERS)


def eq(column: str, value: Any) -> dict[str, Any]:
    return {"type": "simple", "op": "=", "left": {"type": "column", "name": column}, "right": {"type": "literal", "value": value}}


def files_of(user: str) -> dict[str, Any]:
    return {"table": "file", "where": {"type": "and", "conditions": [eq("ownerId", user), eq("isDeleted", False)]}, "orderBy": [["updatedAt", "desc"]]}


def shared_with(user: str) -> dict[str, Any]:
    return {
        "table": "file",
        "where": {
            "type": "correlatedSubquery",
            "op": "EXISTS",
            "related": {
                "system": "client",
                "correlation": {"parentField": ["id"], "childField": ["fileId"]},
                "subquery": {"table": "file_state", "alias": "zsubq_states", "where": {"type": "and", "conditions": [eq("userId", user), eq("isFileOwner", False)]}},
            },
        },
    }


def states_with_files(user: str) -> dict[str, Any]:
    return {
        "table": "file_state",
        "where": eq("userId", user),
        "orderBy": [["lastVisitAt", "desc"]],
        "related": [{"system": "client", "correlation": {"parentField": ["fileId"], "childField": ["id"]}, "subquery": {"table": "file", "alias": "file", "limit": 1}}],
    }


def newest(limit: int, start: dict[str, Any] | None = None) -> dict[str, Any]:
    ast: dict[str, Any] = {"table": "file", "orderBy": [["updatedAt", "desc"]], "limit": limit}
    if start is not None:
        ast["start"] = start
    return ast


@pytest.fixture
def demo(tmp_path: Path) -> tuple[Replica, _native.QueryEngine]:
    replica = Replica.create(tmp_path, demo_tables(), demo_rows(USERS))
    return replica, _native.QueryEngine(str(replica.path))


def puts(patch: bytes, table: str) -> list[str]:
    """The primary keys put for `table`, in patch order (single-column keys)."""
    return [next(iter(op["rowKey"].values())) for op in json.loads(patch)["ops"] if op["op"] == "put" and op["table"] == table]


def all_files() -> list[tuple[Any, ...]]:
    return list(demo_data.file_rows(SHAPE, demo_data.shared_files(SHAPE)))


def by_newest(files: list[tuple[Any, ...]]) -> list[str]:
    # (updatedAt desc, id asc): the completed ordering.
    updated = demo_data.FILE_COLUMNS.index("updatedAt")
    return [f[0] for f in sorted(files, key=lambda f: (-f[updated], f[0]))]


def check_oracle(replica: Replica, view: ClientView, asts: list[dict[str, Any]]) -> None:
    db = replica.read()
    expected: dict[tuple[str, str], tuple[dict[str, Any], str]] = {}
    for ast in asts:
        expected.update(oracle_rows(ast, db, replica.tables))
    assert view.rows == expected


def test_a_users_files(demo: tuple[Replica, _native.QueryEngine]) -> None:
    replica, engine = demo
    user = 7
    patch = engine.add_query("g", "files", json.dumps(files_of(demo_data.user_id(user))))
    files = [f for f in all_files() if f[2] == demo_data.user_id(user) and not f[demo_data.FILE_COLUMNS.index("isDeleted")]]
    # Without a limit the order of a result does not matter (the client sorts): compare sets.
    assert sorted(puts(patch, "file")) == sorted(by_newest(files))
    assert {demo_data.file_id(f) for f in demo_data.owned_files(SHAPE, user)} >= set(puts(patch, "file"))
    assert engine.query_rows("g", "files") == len(files)
    view = ClientView()
    view.apply(patch)
    # The user renames one of their files, and another user's file changes.
    mine, theirs = files[0], next(f for f in all_files() if f[2] != demo_data.user_id(user))
    replica.transaction([("set", "file", (mine[0], "Renamed", *mine[2:])), ("set", "file", (theirs[0], "Other", *theirs[2:]))])
    [(_, patch)] = engine.advance(["g"])
    assert [(o["op"], o["rowKey"], o["value"]["name"]) for o in json.loads(patch)["ops"]] == [("put", {"id": mine[0]}, "Renamed")]
    view.apply(patch)
    # Soft-deleting a file removes it.
    deleted = demo_data.FILE_COLUMNS.index("isDeleted")
    replica.transaction([("set", "file", tuple(True if i == deleted else v for i, v in enumerate(replica.rows["file"][(files[1][0],)])))])
    [(_, patch)] = engine.advance(["g"])
    assert [(o["op"], o["rowKey"]) for o in json.loads(patch)["ops"]] == [("del", {"id": files[1][0]})]
    view.apply(patch)
    check_oracle(replica, view, [files_of(demo_data.user_id(user))])


def test_files_shared_with_a_user(demo: tuple[Replica, _native.QueryEngine]) -> None:
    replica, engine = demo
    user = 3
    uid = demo_data.user_id(user)
    patch = engine.add_query("g", "shared", json.dumps(shared_with(uid)))
    guests = sorted(demo_data.file_id(f) for f in demo_data.guest_files(SHAPE, user))
    assert sorted(puts(patch, "file")) == guests
    # Each shared file comes with the user's file state (the EXISTS child row).
    states = [op["rowKey"] for op in json.loads(patch)["ops"] if op["table"] == "file_state"]
    assert sorted(s["fileId"] for s in states) == guests
    assert {s["userId"] for s in states} == {uid}
    view = ClientView()
    view.apply(patch)
    # Another user shares a file with them; then unshares another one.
    new_file = next(
        demo_data.file_id(f) for f in range(SHAPE.files) if f % USERS != user and demo_data.file_id(f) not in guests
    )
    replica.transaction([("set", "file_state", (uid, new_file, 1, None, None, 1, False, None))])
    [(_, patch)] = engine.advance(["g"])
    assert [(o["op"], o["table"]) for o in json.loads(patch)["ops"]] == [("put", "file"), ("put", "file_state")]
    view.apply(patch)
    replica.transaction([("delete", "file_state", (uid, guests[0]))])
    [(_, patch)] = engine.advance(["g"])
    assert sorted((o["op"], o["table"]) for o in json.loads(patch)["ops"]) == [("del", "file"), ("del", "file_state")]
    view.apply(patch)
    check_oracle(replica, view, [shared_with(uid)])


def test_a_users_file_states_with_their_files(demo: tuple[Replica, _native.QueryEngine]) -> None:
    replica, engine = demo
    user = 11
    uid = demo_data.user_id(user)
    patch = engine.add_query("g", "states", json.dumps(states_with_files(uid)))
    expected = sorted(demo_data.file_id(f) for f in demo_data.owned_files(SHAPE, user) + demo_data.guest_files(SHAPE, user))
    ops = json.loads(patch)["ops"]
    assert sorted(o["rowKey"]["fileId"] for o in ops if o["table"] == "file_state") == expected
    assert sorted(o["rowKey"]["id"] for o in ops if o["table"] == "file") == expected
    assert engine.query_rows("g", "states") == 2 * len(expected)
    view = ClientView()
    view.apply(patch)
    # A file of the list is renamed (its row is put), a visit bumps a state (put).
    file_key = (expected[0],)
    row = replica.rows["file"][file_key]
    replica.transaction([("set", "file", (row[0], "Renamed", *row[2:]))])
    state = replica.rows["file_state"][(uid, expected[1])]
    replica.transaction([("set", "file_state", (*state[:5], 10**13, *state[6:]))])
    [(_, patch)] = engine.advance(["g"])
    assert sorted((o["op"], o["table"]) for o in json.loads(patch)["ops"]) == [("put", "file"), ("put", "file_state")]
    view.apply(patch)
    check_oracle(replica, view, [states_with_files(uid)])


def test_newest_files_and_paging(demo: tuple[Replica, _native.QueryEngine]) -> None:
    replica, engine = demo
    top = by_newest(all_files())
    patch = engine.add_query("top", "top10", json.dumps(newest(10)))
    assert puts(patch, "file") == top[:10]
    view = ClientView()
    view.apply(patch)
    # Paging: page 2 starts after page 1's last row; "at" includes it.
    page1 = engine.add_query("pages", "p1", json.dumps(newest(5)))
    assert puts(page1, "file") == top[:5]
    last = replica.rows["file"][(top[4],)]
    updated = demo_data.FILE_COLUMNS.index("updatedAt")
    cursor = {"row": {"id": last[0], "updatedAt": last[updated]}, "exclusive": True}
    page2 = engine.add_query("pages", "p2", json.dumps(newest(5, cursor)))
    assert puts(page2, "file") == top[5:10]
    at = engine.add_query("at", "p2", json.dumps(newest(5, {**cursor, "exclusive": False})))
    assert puts(at, "file") == top[4:9]
    # A file is edited: it becomes the newest and enters the top 10, the 10th leaves.
    edited = replica.rows["file"][(top[50],)]
    replica.transaction([("set", "file", tuple(10**13 if i == updated else v for i, v in enumerate(edited)))])
    [(_, patch)] = engine.advance(["top"])
    assert [(o["op"], o["rowKey"]["id"]) for o in json.loads(patch)["ops"]] == [("put", top[50]), ("del", top[9])]
    view.apply(patch)
    # The newest file is deleted: the 11th comes back.
    replica.transaction([("delete", "file", (top[50],))])
    [(_, patch)] = engine.advance(["top"])
    assert [(o["op"], o["rowKey"]["id"]) for o in json.loads(patch)["ops"]] == [("del", top[50]), ("put", top[9])]
    view.apply(patch)
    check_oracle(replica, view, [newest(10)])
    # Page 2 follows: the edited file went to page 1 then left; page 2 is back to top[5:10].
    [(_, patch)] = engine.advance(["pages"])
    assert engine.query_rows("pages", "p2") == 5
