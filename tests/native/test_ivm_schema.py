"""The query engine across schema changes (the writer's `r` change-log entries and the file's
`schema_version`): queries over a changed table are re-hydrated with the new columns, queries
over a dropped table fail (reported in `queryErrors`, their rows deleted) without disturbing
the others, and failed queries are retried after the next schema change."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from tests.native.test_ivm_support import TLDRAW, ClientView, Replica, oracle_rows
from zcache import _native

pytestmark = pytest.mark.unit

USER, FILE, FILE_STATE = TLDRAW
BOBS = {"table": "user", "where": {"type": "simple", "op": "ILIKE", "left": {"type": "column", "name": "name"}, "right": {"type": "literal", "value": "bob"}}}
FILES = {"table": "file", "orderBy": [["updatedAt", "desc"]], "limit": 2}


def rows() -> dict[str, list[tuple[Any, ...]]]:
    return {
        "user": [("u1", "Alice", 30, True, None), ("u2", "Bob", 40, False, {"a": 1}), ("u3", "bob", None, None, None)],
        "file": [("f1", "alpha", "u1", 10, False, 0.5), ("f2", "beta", "u2", 20, True, None), ("f3", "gamma", "u2", 30, False, 1.5)],
        "file_state": [],
    }


def expected(replica: Replica, *asts: dict[str, Any]) -> dict[tuple[str, str], tuple[dict[str, Any], str]]:
    db = replica.read()
    out: dict[tuple[str, str], tuple[dict[str, Any], str]] = {}
    for ast in asts:
        out.update(oracle_rows(ast, db, replica.tables))
    return out


def test_schema_changes(tmp_path: Path) -> None:
    replica = Replica.create(tmp_path, TLDRAW, rows())
    engine = _native.QueryEngine(str(replica.path))
    view = ClientView()
    view.apply(engine.add_query("g", "bobs", json.dumps(BOBS)))
    view.apply(engine.add_query("g", "files", json.dumps(FILES)))
    assert view.rows == expected(replica, BOBS, FILES)

    # ADD COLUMN: every user row is sent again in its new shape (at the version of the change,
    # Zero's minRowVersion), the file rows are not.
    user2 = dataclasses.replace(USER, columns=(*USER.columns, ("nickname", "varchar")))
    version = replica.ddl([user2, FILE, FILE_STATE], "ALTER TABLE")
    [(_, patch)] = engine.advance(["g"])
    ops = json.loads(patch)["ops"]
    assert sorted((o["op"], o["rowKey"]["id"], o["rowVersion"], o["value"]["nickname"]) for o in ops) == [
        ("put", "u2", version, None),
        ("put", "u3", version, None),
    ]
    view.apply(patch)
    assert engine.group_version("g") == version
    assert view.rows == expected(replica, BOBS, FILES)

    # DROP TABLE file: the files query fails, its rows go; the users query is untouched.
    replica.ddl([user2, FILE_STATE], "DROP TABLE")
    [(_, patch)] = engine.advance(["g"])
    errors = view.apply(patch, errors_allowed=True)
    assert errors == {"files": 'table: unknown table "file"'}
    assert engine.query_error("g", "files") == 'table: unknown table "file"'
    assert engine.query_rows("g", "files") == 0
    assert view.rows == expected(replica, BOBS)
    # Failed queries stay failed while the schema stays the same.
    replica.transaction([("set", "user", ("u4", "BOB", 1, None, None, "x"))])
    [(_, patch)] = engine.advance(["g"])
    assert view.apply(patch) == {}
    assert view.rows == expected(replica, BOBS)

    # CREATE TABLE file (empty): the failed query is retried and hydrates.
    file2 = dataclasses.replace(FILE, oid=17000)
    replica.ddl([user2, file2, FILE_STATE], "CREATE TABLE")
    replica.transaction([("set", "file", ("f9", "new", "u1", 99, True, None))])
    [(_, patch)] = engine.advance(["g"])
    assert view.apply(patch) == {}
    assert engine.query_error("g", "files") is None
    assert view.rows == expected(replica, BOBS, FILES)
    assert ("file", '{"id": "f9"}') in view.rows
