"""The query engine against a naive oracle: for random tldraw-shaped data, random queries from
the whole AST grammar and random transactions, every client group's accumulated patches must
equal the union of its queries' row sets computed from scratch by the oracle
(``test_ivm_support.oracle_rows``), row values and versions included, with no redundant op.

The replica is built without Postgres: ``InitialSync`` from binary COPY data, then
``ReplicaWriter`` fed pgoutput frames (see ``test_ivm_support``).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests.native.test_ivm_support import TLDRAW, ClientView, Replica, oracle_rows
from zcache import _native

pytestmark = pytest.mark.unit

TABLES = {t.name: t for t in TLDRAW}
USERS = ["u1", "u2", "u3", "u4", "u5"]
FILES = ["f1", "f2", "f3", "f4", "f5", "f6", "f7"]
NAMES = ["alpha", "beta", "Bob", "bob", "Émile", "b%x", "gamma", "", "a\nb"]
PATTERNS = ["b%", "%a", "_ob", "%", "B%", "%É%", "al_ha", "b\\%x", "a_b", "%mil%"]

# Relationships: (source table, target table, parentField, childField).
RELATIONSHIPS = [
    ("user", "file", "id", "ownerId"),
    ("user", "file_state", "id", "userId"),
    ("file", "user", "ownerId", "id"),
    ("file", "file_state", "id", "fileId"),
    ("file_state", "file", "fileId", "id"),
    ("file_state", "user", "userId", "id"),
]

# --- data ------------------------------------------------------------------------------------


def user_row(i: int, name: str, age: int | None, admin: bool | None, prefs: Any) -> tuple[Any, ...]:
    return (USERS[i % len(USERS)], name, age, admin, prefs)


def initial_rows() -> dict[str, list[tuple[Any, ...]]]:
    return {
        "user": [
            ("u1", "Alice", 30, True, {"theme": "dark"}),
            ("u2", "Bob", 40, False, None),
            ("u3", "bob", None, None, [1, 2]),
            ("u4", "Émile", 25, True, None),
        ],
        "file": [
            ("f1", "alpha", "u1", 10, False, 0.5),
            ("f2", "beta", "u1", 20, True, None),
            ("f3", "gamma", "u2", 30, False, -2.25),
            ("f4", "b%x", "u3", 5, True, 1.0),
            ("f5", "Bob", "u9", None, False, 3.5),
            ("f6", "alpha", "u1", 20, None, 10.0),
        ],
        "file_state": [
            ("u1", "f1", 100, True),
            ("u1", "f3", 200, None),
            ("u2", "f3", 300, False),
            ("u3", "f2", 50, True),
            ("u4", "f3", 10, None),
            ("u4", "f1", None, False),
            ("u5", "f3", 20, True),
            ("u3", "f1", 70, None),
            ("u1", "f6", 5, False),
            ("u2", "f6", 6, True),
        ],
    }


# A transaction: ops drawn as plain values (so that failing cases can be pasted into @example),
# interpreted against the replica's model when applied.
op_specs = st.tuples(
    st.sampled_from(["insert", "update", "rekey", "delete", "truncate"]),
    st.sampled_from(["user", "file", "file_state"]),
    st.integers(0, 50),
    st.integers(0, 50),
    st.integers(0, 50),
)
transactions = st.lists(op_specs, min_size=1, max_size=4)


def value_for(table: str, column: str, n: int) -> Any:
    t = TABLES[table]
    kind = dict(t.columns)[column]
    if column in ("ownerId", "userId") or (table == "user" and column == "id"):
        return USERS[n % len(USERS)] if n % 11 else "u9"
    if column == "fileId" or (table == "file" and column == "id"):
        return FILES[n % len(FILES)]
    if kind == "varchar":
        return NAMES[n % len(NAMES)]
    if kind == "int8":
        return None if n % 7 == 0 else (n * 13) % 60 - 5
    if kind == "float8":
        return None if n % 5 == 0 else [0.5, 1.0, -2.25, 3.5, 10.0][n % 5]
    if kind == "bool":
        return None if n % 6 == 0 else n % 2 == 0
    if kind == "jsonb":
        return [None, {"a": n}, [n, "x"], "s", 1.5][n % 5]
    raise AssertionError(kind)


def interpret(replica: Replica, specs: list[tuple[str, str, int, int, int]]) -> list[tuple[str, str, Any]]:
    """Turns drawn op specs into valid operations on the replica's current rows (keys as they
    will be when each op runs, so several ops of one transaction compose)."""
    model = {name: dict(rows) for name, rows in replica.rows.items()}
    ops: list[tuple[str, str, Any]] = []
    for kind, table, a, b, c in specs:
        t = TABLES[table]
        rows = model[table]
        keys = sorted(rows)
        if kind == "truncate":
            if a % 4:  # Truncates are rare.
                continue
            rows.clear()
            ops.append(("truncate", table, None))
            continue
        if kind == "insert" or not keys:
            row = tuple(value_for(table, col, a + 3 * i + b * (i + 1)) for i, col in enumerate(t.names))
            if t.key(row) in rows:
                row = rows[t.key(row)][: len(t.pk)] + row[len(t.pk) :]
            rows[t.key(row)] = row
            ops.append(("set", table, row))
            continue
        key = keys[a % len(keys)]
        old = rows[key]
        if kind == "delete":
            del rows[key]
            ops.append(("delete", table, key))
        elif kind == "update":
            col = b % len(t.names)
            if t.names[col] in t.pk:
                col = len(t.pk) + (b % (len(t.names) - len(t.pk)))
            row = list(old)
            row[col] = value_for(table, t.names[col], c)
            rows[key] = tuple(row)
            ops.append(("set", table, tuple(row)))
        else:  # rekey: change a key column
            col = b % len(t.pk)
            row = list(old)
            row[col] = value_for(table, t.names[col], c)
            new_key = t.key(row)
            if new_key in rows:
                continue
            del rows[key]
            rows[new_key] = tuple(row)
            ops.append(("update", table, (key, tuple(row))))
    return ops


# --- queries ---------------------------------------------------------------------------------


def literal_for(type_name: str, draw: st.DrawFn, *, like: bool = False) -> Any:
    if like:
        return draw(st.sampled_from(PATTERNS))
    if type_name == "string":
        return draw(st.sampled_from(NAMES + USERS[:3] + FILES[:3]))
    if type_name == "number":
        return draw(st.one_of(st.integers(-5, 60), st.sampled_from([0.5, -2.25, 29.5])))
    if type_name == "boolean":
        return draw(st.booleans())
    raise AssertionError(type_name)


@st.composite
def simple_conditions(draw: st.DrawFn, table: str) -> dict[str, Any]:
    t = TABLES[table]
    column = draw(st.sampled_from(t.names))
    ty = t.type_of(column)
    left = {"type": "column", "name": column}
    if ty == "json":
        return {"type": "simple", "op": draw(st.sampled_from(["IS", "IS NOT"])), "left": left, "right": {"type": "literal", "value": None}}
    ops = ["=", "!=", "IS", "IS NOT", "<", ">", "<=", ">=", "IN", "NOT IN"]
    if ty == "string":
        ops += ["LIKE", "NOT LIKE", "ILIKE", "NOT ILIKE"]
    op = draw(st.sampled_from(ops))
    other = draw(st.sampled_from([x for x in ("string", "number", "boolean") if x != ty]))
    if op in ("IN", "NOT IN"):
        items = draw(st.lists(st.one_of(st.just(ty), st.just(ty), st.just(other)), max_size=3))
        value: Any = [literal_for(x, draw) for x in items]
    elif op in ("LIKE", "NOT LIKE", "ILIKE", "NOT ILIKE"):
        value = literal_for(ty, draw, like=True)
    elif op in ("<", ">", "<=", ">="):
        value = literal_for(ty, draw)
    else:
        choice = draw(st.integers(0, 19))
        value = None if choice < 3 else literal_for(other if choice == 3 else ty, draw)
    if draw(st.integers(0, 24)) == 0:
        # A literal on the left.
        return {"type": "simple", "op": draw(st.sampled_from(["=", "!=", "IS"])), "left": {"type": "literal", "value": 1}, "right": {"type": "literal", "value": draw(st.sampled_from([0, 1]))}}
    return {"type": "simple", "op": op, "left": left, "right": {"type": "literal", "value": value}}


def relationship(draw: st.DrawFn, table: str) -> tuple[str, str, str]:
    source, target, parent, child = draw(st.sampled_from([r for r in RELATIONSHIPS if r[0] == table]))
    del source
    return target, parent, child


@st.composite
def conditions(draw: st.DrawFn, table: str, depth: int) -> dict[str, Any]:
    kinds = ["simple", "simple"]
    if depth > 0:
        kinds += ["and", "or", "exists", "exists"]
    kind = draw(st.sampled_from(kinds))
    if kind == "simple":
        return draw(simple_conditions(table))
    if kind in ("and", "or"):
        return {"type": kind, "conditions": draw(st.lists(conditions(table, depth - 1), max_size=3))}
    target, parent, child = relationship(draw, table)
    op = draw(st.sampled_from(["EXISTS", "EXISTS", "NOT EXISTS"]))
    sub: dict[str, Any] = {"table": target, "alias": f"zsubq_{target}"}
    scalar = False
    if child == "id" and draw(st.integers(0, 4)) == 0:
        # A simple scalar subquery: the subquery pins its primary key.
        pinned = USERS[draw(st.integers(0, 5)) % len(USERS)] if target == "user" else FILES[draw(st.integers(0, 7)) % len(FILES)]
        sub["where"] = {"type": "simple", "op": "=", "left": {"type": "column", "name": "id"}, "right": {"type": "literal", "value": pinned}}
        scalar = True
    elif draw(st.booleans()):
        sub["where"] = draw(conditions(target, depth - 1))
    if draw(st.integers(0, 9)) == 0:
        sub["limit"] = draw(st.sampled_from([0, 1, 5]))
    if draw(st.integers(0, 3)) == 0:
        sub["orderBy"] = [[draw(st.sampled_from([c for c, k in TABLES[target].columns if k != "jsonb"])), draw(st.sampled_from(["asc", "desc"]))]]
    related: dict[str, Any] = {"correlation": {"parentField": [parent], "childField": [child]}, "subquery": sub}
    system = draw(st.sampled_from(["client", "client", "client", "permissions", None]))
    if system is not None:
        related["system"] = system
    cond: dict[str, Any] = {"type": "correlatedSubquery", "op": op, "related": related}
    if op == "EXISTS" and draw(st.integers(0, 4)) == 0:
        cond["flip"] = True
    if scalar:
        cond["scalar"] = True
    return cond


def start_row(draw: st.DrawFn, table: str, order: list[list[str]]) -> dict[str, Any]:
    t = TABLES[table]
    columns = [c for c, _ in order] + list(t.pk)
    row: dict[str, Any] = {}
    for column in columns:
        if draw(st.integers(0, 3)) == 0:
            continue
        ty = t.type_of(column)
        if column in ("id", "ownerId", "userId", "fileId"):
            row[column] = draw(st.sampled_from(USERS + FILES))
        else:
            row[column] = None if draw(st.integers(0, 5)) == 0 else literal_for(ty, draw)
    return row


@st.composite
def queries(draw: st.DrawFn, table: str | None = None, depth: int = 2, alias: str | None = None) -> dict[str, Any]:
    table = table or draw(st.sampled_from(list(TABLES)))
    ast: dict[str, Any] = {"table": table}
    if alias:
        ast["alias"] = alias
    if draw(st.integers(0, 3)):
        ast["where"] = draw(conditions(table, 2))
    columns = [c for c, k in TABLES[table].columns if k != "jsonb"]
    if draw(st.booleans()):
        ast["orderBy"] = [[c, draw(st.sampled_from(["asc", "desc"]))] for c in draw(st.lists(st.sampled_from(columns), max_size=2, unique=True))]
    if draw(st.booleans()):
        ast["limit"] = draw(st.sampled_from([0, 1, 1, 2, 2, 3, 4, 6]))
    if draw(st.integers(0, 4)) == 0:
        ast["start"] = {"row": start_row(draw, table, ast.get("orderBy", [])), "exclusive": draw(st.booleans())}
    if depth > 0 and draw(st.booleans()):
        related = []
        for i in range(draw(st.integers(1, 2))):
            target, parent, child = relationship(draw, table)
            sub = draw(queries(target, depth - 1, f"r{i}_{target}"))
            entry: dict[str, Any] = {"correlation": {"parentField": [parent], "childField": [child]}, "subquery": sub, "system": "client"}
            if draw(st.integers(0, 3)) == 0:
                entry["hidden"] = True
            if draw(st.integers(0, 9)) == 0:
                entry["system"] = "permissions"
            related.append(entry)
        ast["related"] = related
    return ast


# --- the property ----------------------------------------------------------------------------


def expected_rows(replica: Replica, asts: list[dict[str, Any]]) -> dict[tuple[str, str], tuple[dict[str, Any], str]]:
    db = replica.read()
    out: dict[tuple[str, str], tuple[dict[str, Any], str]] = {}
    for ast in asts:
        out.update(oracle_rows(ast, db, replica.tables))
    return out


def check(engine: _native.QueryEngine, replica: Replica, group: str, view: ClientView, asts: dict[str, dict[str, Any]], where: str) -> None:
    expected = expected_rows(replica, list(asts.values()))
    assert view.rows.keys() == expected.keys(), f"{where}: rows differ\nmissing {sorted(expected.keys() - view.rows.keys())}\nextra {sorted(view.rows.keys() - expected.keys())}"
    for key, (value, version) in expected.items():
        assert view.rows[key] == (value, version), f"{where}: {key} differs"
    db = replica.read()
    for hash_, ast in asts.items():
        assert engine.query_rows(group, hash_) == len(oracle_rows(ast, db, replica.tables)), f"{where}: row count of {hash_}"


EXAMPLE_QUERY = {
    "table": "file",
    "where": {
        "type": "or",
        "conditions": [
            {"type": "simple", "op": "LIKE", "left": {"type": "column", "name": "name"}, "right": {"type": "literal", "value": "b%"}},
            {
                "type": "correlatedSubquery",
                "op": "EXISTS",
                "related": {
                    "system": "client",
                    "correlation": {"parentField": ["ownerId"], "childField": ["id"]},
                    "subquery": {"table": "user", "alias": "zsubq_owner", "where": {"type": "simple", "op": "=", "left": {"type": "column", "name": "name"}, "right": {"type": "literal", "value": "Bob"}}},
                },
            },
        ],
    },
    "limit": 10,
    "orderBy": [["id", "desc"]],
}
NOT_EXISTS_QUERY = {
    "table": "user",
    "where": {"type": "correlatedSubquery", "op": "NOT EXISTS", "related": {"correlation": {"parentField": ["id"], "childField": ["userId"]}, "subquery": {"table": "file_state", "alias": "s"}}},
    "related": [
        {"correlation": {"parentField": ["id"], "childField": ["userId"]}, "hidden": True, "subquery": {"table": "file_state", "alias": "states", "related": [{"correlation": {"parentField": ["fileId"], "childField": ["id"]}, "subquery": {"table": "file", "alias": "file", "limit": 1}}]}}
    ],
}


def same_changes(patch: bytes, changes: tuple[str, _native.RowChanges, dict[str, str]]) -> None:
    """The view syncer's form of a patch (`*_changes` methods) says what the JSON patch says."""
    expected = _native.RowChanges()
    version, errors = expected.merge(patch)
    assert (changes[0], changes[2]) == (version, errors)
    assert changes[1].records() == expected.records()
    assert changes[1].poke_ops("", "") == expected.poke_ops("", "")


@settings(suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large], max_examples=settings().max_examples)
@given(
    asts=st.lists(queries(), min_size=1, max_size=4),
    txns=st.lists(transactions, max_size=8),
    lagging=st.integers(0, 3),
)
# Regression cases (shrunk failures of mutated engines, kept so that CI catches them at once).
# A window that shrinks must be refilled from beyond its old bound:
@example(asts=[{"table": "user", "limit": 1}], txns=[[("rekey", "user", 0, 0, 0)]], lagging=0)
@example(
    asts=[{"table": "file", "orderBy": [["updatedAt", "desc"]], "limit": 2}],
    txns=[[("delete", "file", 2, 0, 0)], [("update", "file", 0, 2, 9)], [("insert", "file", 5, 5, 5)]],
    lagging=0,
)
# EXISTS children: a child entering or leaving flips its parent; at most 3 children synced.
@example(
    asts=[
        {
            "table": "file",
            "where": {"type": "correlatedSubquery", "op": "EXISTS", "related": {"correlation": {"parentField": ["id"], "childField": ["fileId"]}, "subquery": {"table": "file_state", "alias": "s", "where": {"type": "simple", "op": "=", "left": {"type": "column", "name": "userId"}, "right": {"type": "literal", "value": "u4"}}}}},
            "related": [{"correlation": {"parentField": ["ownerId"], "childField": ["id"]}, "subquery": {"table": "user", "alias": "owner"}}],
        }
    ],
    txns=[[("delete", "file_state", 4, 0, 0)], [("insert", "file_state", 3, 1, 1)], [("rekey", "file_state", 1, 1, 3)], [("update", "file", 0, 2, 4)]],
    lagging=0,
)
@example(
    asts=[{"table": "user", "where": {"type": "correlatedSubquery", "op": "EXISTS", "related": {"correlation": {"parentField": ["id"], "childField": ["userId"]}, "subquery": {"table": "file_state", "alias": "s"}}}},
          {"table": "file", "where": {"type": "correlatedSubquery", "op": "EXISTS", "related": {"correlation": {"parentField": ["id"], "childField": ["fileId"]}, "subquery": {"table": "file_state", "alias": "s", "orderBy": [["lastVisitAt", "desc"]]}}}}],
    txns=[[("delete", "file_state", 2, 0, 0)], [("insert", "file_state", 1, 2, 3)]],
    lagging=0,
)
@example(
    asts=[EXAMPLE_QUERY, NOT_EXISTS_QUERY],
    txns=[[("update", "user", 1, 1, 2)], [("delete", "file_state", 0, 0, 0), ("rekey", "file", 2, 0, 3)], [("truncate", "file_state", 0, 0, 0)], [("insert", "file_state", 4, 1, 1)]],
    lagging=1,
)
def test_incremental_patches_equal_the_oracle(asts: list[dict[str, Any]], txns: list[list[tuple[str, str, int, int, int]]], lagging: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        replica = Replica.create(Path(tmp), TLDRAW, initial_rows(), chunk=37)
        engine = _native.QueryEngine(str(replica.path))
        # A twin engine gets the same calls, answered as `RowChanges`.
        twin = _native.QueryEngine(str(replica.path))

        def add(group: str, hash_: str, ast: dict[str, Any]) -> bytes:
            patch = engine.add_query(group, hash_, json.dumps(ast))
            same_changes(patch, twin.add_query_changes(group, hash_, json.dumps(ast)))
            return patch

        def advance(names: list[str]) -> list[tuple[str, bytes]]:
            patches = engine.advance(names)
            changes = twin.advance_changes(names)
            assert [name for name, _ in changes] == [name for name, _ in patches]
            for (_, patch), (_, c) in zip(patches, changes, strict=True):
                same_changes(patch, c)
            return patches

        # Group "a" has every query but the last, group "b" the last one and the first (shared
        # rows across groups); group "b" is advanced only every `lagging`-th transaction, and
        # gets the last query of "a" added midway (hydration at a newer version).
        groups: dict[str, dict[str, dict[str, Any]]] = {"a": {}, "b": {}}
        views = {"a": ClientView(), "b": ClientView()}
        for i, ast in enumerate(asts[:-1] or asts):
            groups["a"][f"q{i}"] = ast
            views["a"].apply(add("a", f"q{i}", ast))
        groups["b"]["last"] = asts[-1]
        views["b"].apply(add("b", "last", asts[-1]))
        check(engine, replica, "a", views["a"], groups["a"], "after hydration (a)")
        check(engine, replica, "b", views["b"], groups["b"], "after hydration (b)")
        for step, specs in enumerate(txns):
            version = replica.transaction(interpret(replica, specs))
            names = ["a"] if lagging and step % (lagging + 1) else ["a", "b"]
            for name, patch in advance(names):
                views[name].apply(patch)
                assert engine.group_version(name) == version
                check(engine, replica, name, views[name], groups[name], f"step {step} ({name})")
            if step == len(txns) // 2:
                groups["b"]["first"] = asts[0]
                views["b"].apply(add("b", "first", asts[0]))
                check(engine, replica, "b", views["b"], groups["b"], f"step {step} add (b)")
        for name, patch in advance(["a", "b"]):
            views[name].apply(patch)
            check(engine, replica, name, views[name], groups[name], f"end ({name})")
        # Removing every query deletes every row.
        for name in ("a", "b"):
            for hash_ in list(groups[name]):
                patch = engine.remove_query(name, hash_)
                same_changes(patch, twin.remove_query_changes(name, hash_))
                views[name].apply(patch)
            assert views[name].rows == {}
        stats = engine.statistics()
        assert stats["queries"] == 0 and stats["group_rows"] == 0


def test_invalid_queries_name_the_offending_path(tmp_path: Path) -> None:
    replica = Replica.create(tmp_path, TLDRAW, initial_rows())
    engine = _native.QueryEngine(str(replica.path))
    cases = {
        '{"table":"file","where":{"type":"and","conditions":[{"type":"simple","op":"LIKEX","left":{"type":"column","name":"name"},"right":{"type":"literal","value":"a"}}]}}': 'where.conditions[0].op: unknown operator "LIKEX"',
        '{"table":"nope"}': 'table: unknown table "nope"',
        '{"table":"file","orderBy":[["nope","asc"]]}': 'orderBy[0][0]: unknown column "nope" of table file',
        '{"table":"file","limit":-1}': "limit: expected a non-negative integer, got -1",
        '{"table":"file","extra":true}': "extra: unknown field",
        '{"table":"file","where":{"type":"simple","op":"=","left":{"type":"column","name":"ownerId"},"right":{"type":"static","anchor":"authData","field":"sub"}}}': "where.right: unresolved static parameter authData.sub",
        '{"table":"file","related":[{"correlation":{"parentField":["ownerId"],"childField":["idx"]},"subquery":{"table":"user"}}]}': 'related[0].correlation.childField[0]: unknown column "idx" of table user',
        '{"table":"file","start":{"row":{"nope":1},"exclusive":true}}': 'start.row.nope: unknown column "nope" of table file',
    }
    for text, message in cases.items():
        with pytest.raises(_native.InvalidQueryError) as info:
            engine.add_query("g", "q", text)
        assert message in str(info.value)
        assert isinstance(info.value, _native.NativeError)
    with pytest.raises(_native.UnknownQueryError):
        engine.query_rows("g", "q")
    with pytest.raises(_native.UnknownQueryError):
        engine.group_version("nobody")


def test_patch_values_are_client_json(tmp_path: Path) -> None:
    replica = Replica.create(tmp_path, TLDRAW, initial_rows())
    engine = _native.QueryEngine(str(replica.path))
    patch = json.loads(engine.add_query("g", "q", '{"table":"user","where":{"type":"simple","op":"=","left":{"type":"column","name":"id"},"right":{"type":"literal","value":"u1"}}}'))
    assert patch["ops"] == [
        {
            "op": "put",
            "table": "user",
            "value": {"id": "u1", "name": "Alice", "age": 30, "admin": True, "prefs": {"theme": "dark"}},
            "rowKey": {"id": "u1"},
            "rowVersion": patch["version"],
        }
    ]
    assert patch["queryErrors"] == {}
    assert engine.group_version("g") == patch["version"]
    assert engine.query_rows("g", "q") == 1
    assert engine.query_error("g", "q") is None


def test_conformance_transcript_02(tmp_path: Path) -> None:
    """Transcript 02: ``filesNamedLike`` syncs f3 (owner Bob, via EXISTS), Bob himself as the
    EXISTS child row, and f2 (name b%); then renaming u1 puts u1 (held by ``fileWithOwner``)."""
    tables = (
        TABLES["user"].__class__("user", 1, ("id",), (("id", "varchar"), ("name", "varchar"))),
        TABLES["file"].__class__("file", 2, ("id",), (("id", "varchar"), ("name", "varchar"), ("owner_id", "varchar"))),
    )
    replica = Replica.create(
        tmp_path,
        tables,
        {"user": [("u1", "Alice"), ("u2", "Bob")], "file": [("f1", "alpha-v2", "u1"), ("f2", "beta", "u1"), ("f3", "gamma", "u2")]},
    )
    engine = _native.QueryEngine(str(replica.path))
    with_owner = {
        "table": "file",
        "where": {"type": "simple", "left": {"type": "column", "name": "id"}, "right": {"type": "literal", "value": "f1"}, "op": "="},
        "related": [{"correlation": {"parentField": ["owner_id"], "childField": ["id"]}, "subquery": {"table": "user", "alias": "owner"}, "system": "client"}],
        "limit": 1,
    }
    named_like = json.loads(json.dumps(EXAMPLE_QUERY).replace("ownerId", "owner_id"))

    def ops(patch: bytes) -> list[tuple[str, str, dict[str, Any]]]:
        return [(o["op"], o["table"], o.get("value")) for o in json.loads(patch)["ops"]]

    assert ops(engine.add_query("g", "1kxuenne3el8x", json.dumps(with_owner))) == [
        ("put", "file", {"id": "f1", "name": "alpha-v2", "owner_id": "u1"}),
        ("put", "user", {"id": "u1", "name": "Alice"}),
    ]
    assert ops(engine.add_query("g", "s9exmcp57vdw", json.dumps(named_like))) == [
        ("put", "file", {"id": "f3", "name": "gamma", "owner_id": "u2"}),
        ("put", "user", {"id": "u2", "name": "Bob"}),
        ("put", "file", {"id": "f2", "name": "beta", "owner_id": "u1"}),
    ]
    replica.transaction([("set", "user", ("u1", "Alice A."))])
    [(_, patch)] = engine.advance(["g"])
    assert ops(patch) == [("put", "user", {"id": "u1", "name": "Alice A."})]
