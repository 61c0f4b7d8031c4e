"""`QueryEngine.fetch_rows` (current rows by key, for a client's catch-up) and
`QueryEngine.client_tables` (the replica's tables as a client schema declares them)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.native.test_ivm_support import TLDRAW, Replica
from zcache import _native

pytestmark = pytest.mark.unit


@pytest.fixture
def replica(tmp_path: Path) -> Replica:
    return Replica.create(
        tmp_path,
        TLDRAW,
        {
            "user": [("u1", "Alice", 30, True, {"theme": "dark"}), ("u2", "Bob", None, False, None)],
            "file": [("f1", "alpha", "u1", 10, False, 1.5)],
            "file_state": [("u1", "f1", 5, True)],
        },
    )


def test_fetch_rows_returns_current_values_in_request_order(replica: Replica) -> None:
    engine = _native.QueryEngine(str(replica.path))
    version = replica.transaction([("set", "user", ("u2", "Bobby", 41, False, None))])
    result = json.loads(
        engine.fetch_rows(
            [
                ("user", '{"id":"u2"}'),
                ("file_state", '{"fileId":"f1","userId":"u1"}'),  # any key order
                ("user", '{"id":"nobody"}'),  # gone: left out
                ("no_table", '{"id":"x"}'),
                ("user", '{"name":"Alice"}'),  # not the key
                ("user", '{"id":"u1"}'),
            ]
        )
    )
    assert result["version"] == version
    assert [(r["table"], r["rowKey"]) for r in result["rows"]] == [
        ("user", {"id": "u2"}),
        ("file_state", {"userId": "u1", "fileId": "f1"}),
        ("user", {"id": "u1"}),
    ]
    assert result["rows"][0]["value"] == {"id": "u2", "name": "Bobby", "age": 41, "admin": False, "prefs": None}
    assert result["rows"][0]["rowVersion"] == version
    assert result["rows"][2]["value"] == {"id": "u1", "name": "Alice", "age": 30, "admin": True, "prefs": {"theme": "dark"}}
    assert result["rows"][2]["rowVersion"] < version
    assert json.loads(engine.fetch_rows([])) == {"version": version, "rows": []}


def test_client_tables(replica: Replica) -> None:
    engine = _native.QueryEngine(str(replica.path))
    tables = json.loads(engine.client_tables())
    assert tables["replicaVersion"] == tables["version"]
    assert tables["tables"]["file_state"] == {
        "columns": {"userId": "string", "fileId": "string", "lastVisitAt": "number", "isPinned": "boolean"},
        "unsupported": {},
        "primaryKey": ["userId", "fileId"],
    }
    assert tables["tables"]["user"]["columns"]["prefs"] == "json"
    assert set(tables["tables"]) == {"user", "file", "file_state"}
