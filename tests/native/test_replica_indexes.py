"""Indexes owned by the replica's writer (`ReplicaWriter.add_indexes`, `rust/replica/indexes.rs`):
built on request from the engine's suggestions, used by SQLite, recorded so a restarted writer
re-creates them, following renames, and dropped before a DDL drops one of their columns (which
SQLite would refuse)."""

from __future__ import annotations

import dataclasses
import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from tests.native.test_ivm_support import TLDRAW, Replica
from zcache import _native

pytestmark = pytest.mark.unit

USER, FILE, FILE_STATE = TLDRAW


def rows() -> dict[str, list[tuple[Any, ...]]]:
    return {
        "user": [("u1", "Alice", 30, True, None), ("u2", "Bob", 40, False, None)],
        "file": [("f1", "alpha", "u1", 10, False, 0.5), ("f2", "beta", "u2", 20, True, None), ("f3", "gamma", "u2", 30, False, 1.5)],
        "file_state": [],
    }


def writer_indexes(path: Path) -> dict[str, tuple[str, list[str]]]:
    """The writer's SQLite indexes: name → (table, columns)."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        names = conn.execute("SELECT name, tbl_name FROM sqlite_master WHERE type = 'index' AND name LIKE '\\_zcache\\_idx\\_%' ESCAPE '\\'").fetchall()
        return {n: (t, [c for (c,) in conn.execute("SELECT name FROM pragma_index_info(?) ORDER BY seqno", [n])]) for n, t in names}
    finally:
        conn.close()


def plan(path: Path, sql: str, params: list[Any]) -> str:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return " / ".join(row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}", params))
    finally:
        conn.close()


OWNER = {
    "table": "file",
    "where": {"type": "simple", "op": "=", "left": {"type": "column", "name": "ownerId"}, "right": {"type": "literal", "value": "u2"}},
}


def test_suggested_index_built_used_and_restored(tmp_path: Path) -> None:
    replica = Replica.create(tmp_path, TLDRAW, rows())
    engine = _native.QueryEngine(str(replica.path))
    first = json.loads(engine.add_query("g", "owner", json.dumps(OWNER)))
    suggestions = engine.index_suggestions()
    assert suggestions == [("file", ["ownerId"])]
    sql = 'SELECT * FROM "file" WHERE "ownerId" = ?'
    assert "USING INDEX" not in plan(replica.path, sql, ["u2"])

    assert replica.writer.add_indexes(suggestions) == [True]
    assert replica.writer.add_indexes(suggestions) == [False], "deduplicated"
    assert replica.writer.add_indexes([("file", ["id"])]) == [False], "the primary key serves it"
    assert list(writer_indexes(replica.path).values()) == [("file", ["ownerId"])]
    assert "USING INDEX" in plan(replica.path, sql, ["u2"]) and "ownerId" in plan(replica.path, sql, ["u2"])

    # The open engine's cached statements are re-prepared against the new schema.
    replica.transaction([("set", "file", ("f4", "delta", "u2", 40, False, None))])
    (_, patch), = engine.advance(["g"])
    assert [op["value"]["id"] for op in json.loads(patch)["ops"]] == ["f4"]
    again = json.loads(engine.add_query("g2", "owner", json.dumps(OWNER)))
    assert sorted(op["value"]["id"] for op in again["ops"]) == ["f2", "f3", "f4"]
    assert len(first["ops"]) == 2

    # Recorded: a restarted writer re-creates a missing index.
    conn = sqlite3.connect(replica.path)
    (name,) = writer_indexes(replica.path)
    conn.execute(f'DROP INDEX "{name}"')
    conn.commit()
    conn.close()
    assert writer_indexes(replica.path) == {}
    restarted = _native.ReplicaWriter(str(replica.path), "zcache_test")
    assert restarted.indexes() == [("file", ["ownerId"])]
    assert list(writer_indexes(replica.path).values()) == [("file", ["ownerId"])]


def test_unknown_table_or_column_refused(tmp_path: Path) -> None:
    replica = Replica.create(tmp_path, TLDRAW, rows())
    with pytest.raises(_native.SchemaError, match="no table"):
        replica.writer.add_indexes([("nope", ["id"])])
    with pytest.raises(_native.SchemaError, match="no stored column"):
        replica.writer.add_indexes([("file", ["nope"])])
    assert replica.writer.indexes() == []


def test_indexes_follow_renames_and_are_dropped_with_their_columns(tmp_path: Path) -> None:
    replica = Replica.create(tmp_path, TLDRAW, rows())
    replica.writer.add_indexes([("file", ["updatedAt", "score"]), ("file", ["ownerId"])])

    # Renames (same attnums): SQLite's indexes follow, and so do the recorded requests.
    renamed_cols = tuple(("rating", t) if c == "score" else (c, t) for c, t in FILE.columns)
    files = dataclasses.replace(FILE, name="files", columns=renamed_cols)
    replica.ddl([USER, files, FILE_STATE], "ALTER TABLE")
    assert sorted(replica.writer.indexes()) == [("files", ["ownerId"]), ("files", ["updatedAt", "rating"])]
    assert sorted(writer_indexes(replica.path).values()) == [("files", ["ownerId"]), ("files", ["updatedAt", "rating"])]

    # Dropping an indexed column (the last one, so attnums stay) drops its index first.
    dropped = dataclasses.replace(files, columns=files.columns[:-1])
    replica.ddl([USER, dropped, FILE_STATE], "ALTER TABLE")
    assert replica.writer.indexes() == [("files", ["ownerId"])]
    assert list(writer_indexes(replica.path).values()) == [("files", ["ownerId"])]

    # A dropped table takes its indexes and requests with it.
    replica.ddl([USER, FILE_STATE], "DROP TABLE")
    assert replica.writer.indexes() == []
    assert writer_indexes(replica.path) == {}
