"""Legacy read permissions: `Permissions.bind_read` on the capture harness's allow-all rules
(scenario 05) and on tldraw-style rules with `authData` and a permission subquery, with the
bound ASTs run by the real query engine over a replica, so the rules are shown to filter rows."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.native.test_ivm_support import TLDRAW, Replica, Table
from zcache import _native
from zcache.auth import AuthData
from zcache.auth.permissions import Permissions, PermissionsError, simplify

pytestmark = pytest.mark.unit

ALLOW_ALL = [["allow", {"type": "and", "conditions": []}]]


def col(name: str) -> dict[str, Any]:
    return {"type": "column", "name": name}


def lit(value: Any) -> dict[str, Any]:
    return {"type": "literal", "value": value}


def auth_data(*field: str) -> dict[str, Any]:
    return {"type": "static", "anchor": "authData", "field": field[0] if len(field) == 1 else list(field)}


def cmp(left: dict[str, Any], op: str, right: dict[str, Any]) -> dict[str, Any]:
    return {"type": "simple", "op": op, "left": left, "right": right}


def exists(parent: str, child: str, table: str, where: dict[str, Any], system: str | None = None, alias: str = "zsubq") -> dict[str, Any]:
    related: dict[str, Any] = {
        "correlation": {"parentField": [parent], "childField": [child]},
        "subquery": {"table": table, "alias": alias, "where": where},
    }
    if system:
        related["system"] = system
    return {"type": "correlatedSubquery", "op": "EXISTS", "related": related}


# What zero-deploy-permissions compiles for tldraw-like rules: users see themselves (admins
# everyone); files are visible to their owner, when shared, or when the user has a file state
# for them (a permission subquery, left unmarked here: bind_read must mark it); file states
# are visible to their user.
TLDRAW_PERMISSIONS = {
    "tables": {
        "user": {"row": {"select": [
            ["allow", cmp(col("id"), "=", auth_data("sub"))],
            ["allow", cmp(auth_data("role"), "=", lit("admin"))],
        ]}},
        "file": {"row": {"select": [
            ["allow", cmp(col("ownerId"), "=", auth_data("sub"))],
            ["allow", cmp(col("shared"), "=", lit(True))],
            ["allow", exists("id", "fileId", "file_state", cmp(col("userId"), "=", auth_data("sub")))],
        ]}},
        "file_state": {"row": {"select": [["allow", cmp(col("userId"), "=", auth_data("sub"))]]}},
    }
}

USERS = [("u1", "Alice", 30, False, {}), ("u2", "Bob", 40, False, {}), ("u3", "Carol", 50, True, {})]
FILES = [
    ("f1", "alpha", "u1", 1, False, 1.0),
    ("f2", "beta", "u1", 2, True, 2.0),
    ("f3", "gamma", "u2", 3, False, 3.0),
    ("f4", "delta", "u3", 4, False, 4.0),
]
FILE_STATES = [("u2", "f1", 10, False), ("u1", "f1", 11, True), ("u3", "f3", 12, False)]


@pytest.fixture(scope="module")
def tldraw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[_native.QueryEngine]:
    replica = Replica.create(tmp_path_factory.mktemp("perm"), TLDRAW, {"user": USERS, "file": FILES, "file_state": FILE_STATES})
    yield _native.QueryEngine(str(replica.path))


_counter = iter(range(1_000_000))


def synced(engine: _native.QueryEngine, ast: dict[str, Any]) -> dict[str, set[str]]:
    """Run `ast` as a fresh group's only query: the row keys the client would receive, per table."""
    group = f"g{next(_counter)}"
    patch = json.loads(engine.add_query(group, "q", json.dumps(ast)))
    engine.remove_group(group)
    assert patch["queryErrors"] == {}
    rows: dict[str, set[str]] = {}
    for op in patch["ops"]:
        assert op["op"] == "put"
        rows.setdefault(op["table"], set()).add("/".join(str(v) for v in op["rowKey"].values()))
    return rows


def jwt_user(sub: str, **claims: Any) -> AuthData:
    return AuthData(token="t", user_id=sub, claims={"sub": sub, **claims})


ANONYMOUS = AuthData(token=None, user_id=None, claims=None)
OPAQUE = AuthData(token="user:u1", user_id="u1", claims=None)
ALL_FILES = {"table": "file", "orderBy": [["id", "asc"]]}


@pytest.mark.parametrize(
    ("auth", "files"),
    [
        (jwt_user("u1"), {"f1", "f2"}),  # owner of f1, f2
        (jwt_user("u2"), {"f1", "f2", "f3"}),  # owns f3, f2 is shared, has a state for f1
        (jwt_user("u3"), {"f2", "f3", "f4"}),
        (ANONYMOUS, {"f2"}),  # authData.sub is null: only the shared file
        (OPAQUE, {"f2"}),  # opaque tokens carry no claims
    ],
)
def test_read_rules_filter_rows(tldraw: _native.QueryEngine, auth: AuthData, files: set[str]) -> None:
    perms = Permissions.from_json(json.dumps(TLDRAW_PERMISSIONS), "h1")
    rows = synced(tldraw, perms.bind_read(ALL_FILES, auth))
    assert rows.get("file", set()) == files
    # The file states that granted access came through a permission subquery: never synced.
    assert "file_state" not in rows


def test_bound_ast_shape() -> None:
    perms = Permissions.from_json(json.dumps(TLDRAW_PERMISSIONS))
    bound = perms.bind_read({"table": "file", "where": cmp(col("name"), "=", lit("alpha"))}, jwt_user("u2"))
    assert bound == {
        "table": "file",
        "where": {
            "type": "and",
            "conditions": [
                cmp(col("name"), "=", lit("alpha")),
                {
                    "type": "or",
                    "conditions": [
                        cmp(col("ownerId"), "=", lit("u2")),
                        cmp(col("shared"), "=", lit(True)),
                        {
                            "type": "correlatedSubquery",
                            "op": "EXISTS",
                            "related": {
                                "correlation": {"parentField": ["id"], "childField": ["fileId"]},
                                "subquery": {"table": "file_state", "alias": "zsubq", "where": cmp(col("userId"), "=", lit("u2"))},
                                "system": "permissions",
                            },
                        },
                    ],
                },
            ],
        },
    }


def test_related_subqueries_get_their_tables_rules(tldraw: _native.QueryEngine) -> None:
    perms = Permissions.from_json(json.dumps(TLDRAW_PERMISSIONS))
    with_owner = {
        "table": "file",
        "related": [{"system": "client", "correlation": {"parentField": ["ownerId"], "childField": ["id"]}, "subquery": {"table": "user", "alias": "owner", "limit": 1}}],
    }
    # u2 sees f1, f2 (owner u1) and f3 (owner u2), but may read only their own user row.
    assert synced(tldraw, perms.bind_read(with_owner, jwt_user("u2"))) == {"file": {"f1", "f2", "f3"}, "user": {"u2"}}
    # u3 sees f2, f3 and f4; as an admin, also the owners u1 and u2.
    assert synced(tldraw, perms.bind_read(with_owner, jwt_user("u3")))["user"] == {"u3"}
    assert synced(tldraw, perms.bind_read(with_owner, jwt_user("u3", role="admin")))["user"] == {"u1", "u2", "u3"}


def test_exists_in_the_query_cannot_probe_unreadable_rows(tldraw: _native.QueryEngine) -> None:
    """u1 asks for files that u2 has visited: the file_state rows are not readable by u1, so
    the EXISTS finds nothing (zero-cache applies read rules to where-subqueries too)."""
    perms = Permissions.from_json(json.dumps(TLDRAW_PERMISSIONS))
    probe = {"table": "file", "where": exists("id", "fileId", "file_state", cmp(col("userId"), "=", lit("u2")), system="client")}
    assert synced(tldraw, perms.bind_read(probe, jwt_user("u1"))) == {}
    # u2 asking the same question about themselves gets f1 and, through the client EXISTS, its state.
    assert synced(tldraw, perms.bind_read(probe, jwt_user("u2"))) == {"file": {"f1"}, "file_state": {"u2/f1"}}


def test_tables_without_rules_and_no_permissions_yield_nothing(tldraw: _native.QueryEngine, caplog: pytest.LogCaptureFixture) -> None:
    only_files = Permissions.from_json(json.dumps({"tables": {"file": {"row": {"select": ALLOW_ALL}}}}))
    assert synced(tldraw, only_files.bind_read(ALL_FILES, ANONYMOUS)) == {"file": {"f1", "f2", "f3", "f4"}}
    assert synced(tldraw, only_files.bind_read({"table": "user"}, ANONYMOUS)) == {}
    assert "No permission rules found for table 'user'" in caplog.text
    for nothing in (Permissions(None, None), Permissions.from_json(None)):
        bound = nothing.bind_read(ALL_FILES, jwt_user("u1"))
        assert bound["where"] == {"type": "or", "conditions": []}
        assert synced(tldraw, bound) == {}


def test_capture_scenario_05_allow_all(tmp_path: Path) -> None:
    """The rules capture.mjs deploys before scenario 05, the AST its client sent, over the
    harness's seed data: the same rows zero-cache synced (f3 and its owner u2)."""
    user = Table("user", 16601, ("id",), (("id", "varchar"), ("name", "varchar")))
    file = Table("file", 16602, ("id",), (("id", "varchar"), ("name", "varchar"), ("owner_id", "varchar")))
    replica = Replica.create(
        tmp_path, (user, file),
        {"user": [("u1", "Alice"), ("u2", "Bob")], "file": [("f1", "alpha", "u1"), ("f2", "beta", "u1"), ("f3", "gamma", "u2")]},
    )
    engine = _native.QueryEngine(str(replica.path))
    rules = {"row": {"select": ALLOW_ALL, "insert": ALLOW_ALL, "update": {"preMutation": ALLOW_ALL, "postMutation": ALLOW_ALL}, "delete": ALLOW_ALL}}
    perms = Permissions.from_json(json.dumps({"tables": {"file": rules, "user": rules}}))
    ast = {
        "table": "file",
        "where": cmp(col("owner_id"), "=", lit("u2")),
        "related": [{"correlation": {"parentField": ["owner_id"], "childField": ["id"]}, "subquery": {"table": "user", "alias": "owner"}, "system": "client"}],
        "orderBy": [["id", "asc"]],
    }
    bound = perms.bind_read(ast, ANONYMOUS)
    assert bound["related"][0]["subquery"]["where"] == {"type": "and", "conditions": []}
    assert synced(engine, bound) == {"file": {"f3"}, "user": {"u2"}}


def test_static_parameters() -> None:
    rule = [["allow", {"type": "and", "conditions": [
        cmp(col("a"), "=", auth_data("org", "id")),
        cmp(col("b"), "IN", auth_data("groups")),
        cmp(col("c"), "=", {"type": "static", "anchor": "preMutationRow", "field": "x"}),
        cmp(col("d"), "=", auth_data("missing")),
    ]}]]
    perms = Permissions.from_json(json.dumps({"tables": {"t": {"row": {"select": rule}}}}))
    bound = perms.bind_read({"table": "t"}, jwt_user("u1", org={"id": 7}, groups=["x", "y"]))
    assert [c["right"] for c in bound["where"]["conditions"]] == [lit(7), lit(["x", "y"]), lit(None), lit(None)]


def test_simplify_matches_zero() -> None:
    a, b, c = (cmp(col(n), "=", lit(1)) for n in "abc")
    assert simplify({"type": "and", "conditions": [a]}) == a
    assert simplify({"type": "and", "conditions": [a, {"type": "and", "conditions": [b, c]}]}) == {"type": "and", "conditions": [a, b, c]}
    assert simplify({"type": "and", "conditions": [a, {"type": "or", "conditions": []}]}) == {"type": "or", "conditions": []}
    assert simplify({"type": "or", "conditions": [a, {"type": "and", "conditions": []}]}) == {"type": "and", "conditions": []}
    assert simplify({"type": "or", "conditions": [a, {"type": "or", "conditions": [b]}]}) == {"type": "or", "conditions": [a, b]}


def _replica_with_permissions(path: Path, permissions: str | None, digest: str | None) -> str:
    file = path / "replica.db"
    with sqlite3.connect(file) as conn:
        conn.execute('CREATE TABLE "zero.permissions" (permissions TEXT, hash TEXT, lock INTEGER)')
        conn.execute('INSERT INTO "zero.permissions" VALUES (?, ?, 1)', (permissions, digest))
    conn.close()
    return str(file)


def test_from_replica(tmp_path: Path) -> None:
    document = json.dumps(TLDRAW_PERMISSIONS)
    loaded = Permissions.from_replica(_replica_with_permissions(tmp_path, document, "abc"))
    assert loaded.hash == "abc" and loaded.tables == TLDRAW_PERMISSIONS["tables"]
    assert Permissions.replica_hash(str(tmp_path / "replica.db")) == "abc"
    (tmp_path / "null").mkdir()
    assert Permissions.from_replica(_replica_with_permissions(tmp_path / "null", None, None)) == Permissions(None, None)
    (tmp_path / "empty").mkdir()
    empty = tmp_path / "empty" / "replica.db"
    sqlite3.connect(empty).close()
    assert Permissions.from_replica(str(empty)) == Permissions(None, None)
    assert Permissions.from_replica(str(empty), app_id="other").tables is None


@pytest.mark.parametrize(
    "document",
    ["not json", "[]", '{"tables": []}', '{"tables": {"t": {"row": {"select": [["deny", {"type": "and", "conditions": []}]]}}}}', '{"tables": {"t": {"row": {"select": [["allow", {"type": "xor"}]]}}}}'],
)
def test_unparseable_permissions_are_refused(document: str) -> None:
    with pytest.raises(PermissionsError, match="Could not parse upstream permissions"):
        Permissions.from_json(document)
