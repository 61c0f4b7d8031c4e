"""Test support for the query engine (no tests here): replicas built without Postgres and a
naive oracle.

* :class:`Replica` builds a replica file with ``_native.InitialSync`` from binary COPY data
  encoded here (``PGCOPY`` header, int16 field counts, int32 lengths, binary send formats), then
  applies transactions with ``_native.ReplicaWriter`` fed pgoutput frames encoded here (Begin,
  Relation, Insert/Update/Delete/Truncate, Commit, with increasing LSNs and binary tuple values).
  It keeps a model of every table so that tests can pick existing rows.
* :func:`oracle_rows` evaluates a query AST over all rows read from the SQLite file with a
  deliberately naive interpreter of Zero's semantics (no SQL, no incremental state): the rows a
  query syncs, with their client values and versions.
* :class:`ClientView` applies the engine's patches the way a client group would.
"""

from __future__ import annotations

import functools
import json
import re
import sqlite3
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zcache import _native

TYPE_OIDS = {"varchar": 1043, "int8": 20, "bool": 16, "float8": 701, "jsonb": 3802}
CLIENT_TYPES = {"varchar": "string", "int8": "number", "float8": "number", "bool": "boolean", "jsonb": "json"}


@dataclass(frozen=True)
class Table:
    name: str
    oid: int
    pk: tuple[str, ...]
    columns: tuple[tuple[str, str], ...]  # (name, type)

    def type_of(self, column: str) -> str:
        return CLIENT_TYPES[dict(self.columns)[column]]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(c for c, _ in self.columns)

    def key(self, row: Sequence[Any]) -> tuple[Any, ...]:
        return tuple(row[self.names.index(k)] for k in self.pk)

    def spec(self) -> dict[str, Any]:
        return {
            "oid": self.oid,
            "schema": "public",
            "name": self.name,
            "replicaIdentity": "f",
            "primaryKey": list(self.pk),
            "columns": [
                {
                    "name": name,
                    "attnum": i + 1,
                    "typeOid": TYPE_OIDS[t],
                    "typeName": t,
                    "typeKind": "b",
                    "baseTypeOid": TYPE_OIDS[t],
                    "elemTypeOid": 0,
                    "elemTypeKind": None,
                    "notNull": name in self.pk,
                    "hasMissing": False,
                    "missing": None,
                }
                for i, (name, t) in enumerate(self.columns)
            ],
        }


# The tldraw shape, small: users own files; file states join users and files.
TLDRAW = (
    Table("user", 16401, ("id",), (("id", "varchar"), ("name", "varchar"), ("age", "int8"), ("admin", "bool"), ("prefs", "jsonb"))),
    Table(
        "file",
        16402,
        ("id",),
        (("id", "varchar"), ("name", "varchar"), ("ownerId", "varchar"), ("updatedAt", "int8"), ("shared", "bool"), ("score", "float8")),
    ),
    Table(
        "file_state",
        16403,
        ("userId", "fileId"),
        (("userId", "varchar"), ("fileId", "varchar"), ("lastVisitAt", "int8"), ("isPinned", "bool")),
    ),
)



def _demo_table(name: str, oid: int, pk: tuple[str, ...], columns: Sequence[str]) -> Table:
    ints = {"createdAt", "updatedAt", "animationSpeed", "edgeScrollSpeed", "lastPublished", "firstVisitAt", "lastEditAt", "lastVisitAt"}
    bools = {
        "exportBackground", "exportPadding", "isSnapMode", "isWrapMode", "isDynamicSizeMode", "isPasteAtCursorMode",
        "enhancedA11yMode", "areKeyboardShortcutsEnabled", "showUiLabels", "shared", "published", "isEmpty",
        "isDeleted", "isFileOwner", "isPinned",
    }  # fmt: skip
    return Table(name, oid, pk, tuple((c, "int8" if c in ints else "bool" if c in bools else "varchar") for c in columns))


def demo_tables() -> tuple[Table, ...]:
    """The real tldraw tables (every column of the migrations), as `zcache.demo_data` fills them."""
    from zcache import demo_data

    return (
        _demo_table("user", 16501, ("id",), demo_data.USER_COLUMNS),
        _demo_table("file", 16502, ("id",), demo_data.FILE_COLUMNS),
        _demo_table("file_state", 16503, ("userId", "fileId"), demo_data.FILE_STATE_COLUMNS),
    )


def demo_rows(users: int) -> dict[str, Iterable[tuple[Any, ...]]]:
    from zcache import demo_data

    shape = demo_data.DemoShape(users)
    return {
        "user": demo_data.user_rows(shape),
        "file": demo_data.file_rows(shape, demo_data.shared_files(shape)),
        "file_state": demo_data.file_state_rows(shape),
    }


# --- encoders ---------------------------------------------------------------------------------


def encode_value(type_name: str, value: Any) -> bytes:
    if type_name == "varchar":
        return str(value).encode()
    if type_name == "int8":
        return struct.pack("!q", value)
    if type_name == "bool":
        return b"\x01" if value else b"\x00"
    if type_name == "float8":
        return struct.pack("!d", value)
    if type_name == "jsonb":
        return b"\x01" + json.dumps(value).encode()
    raise AssertionError(type_name)


def copy_data(table: Table, rows: Iterable[Sequence[Any]]) -> bytes:
    """A whole ``COPY … TO STDOUT (FORMAT binary)`` stream."""
    out = bytearray(b"PGCOPY\n\xff\r\n\x00" + struct.pack("!ii", 0, 0))
    for row in rows:
        out += struct.pack("!h", len(table.columns))
        for (_, t), value in zip(table.columns, row, strict=True):
            if value is None:
                out += struct.pack("!i", -1)
            else:
                raw = encode_value(t, value)
                out += struct.pack("!i", len(raw)) + raw
    out += struct.pack("!h", -1)
    return bytes(out)


def _cstr(text: str) -> bytes:
    return text.encode() + b"\x00"


def _tuple(table: Table, row: Sequence[Any]) -> bytes:
    out = bytearray(struct.pack("!h", len(table.columns)))
    for (_, t), value in zip(table.columns, row, strict=True):
        if value is None:
            out += b"n"
        else:
            raw = encode_value(t, value)
            out += b"b" + struct.pack("!i", len(raw)) + raw
    return bytes(out)


def _relation(table: Table) -> bytes:
    out = bytearray(b"R" + struct.pack("!I", table.oid) + _cstr("public") + _cstr(table.name) + b"f")
    out += struct.pack("!h", len(table.columns))
    for name, t in table.columns:
        out += bytes([1 if name in table.pk else 0]) + _cstr(name) + struct.pack("!Ii", TYPE_OIDS[t], -1)
    return bytes(out)


def _frame(lsn: int, message: bytes) -> bytes:
    return b"w" + struct.pack("!QQq", lsn, lsn, 0) + message


# --- replica ----------------------------------------------------------------------------------


@dataclass
class Replica:
    """A replica file plus a model of its rows (table name → key → row tuple)."""

    path: Path
    tables: dict[str, Table]
    rows: dict[str, dict[tuple[Any, ...], tuple[Any, ...]]]
    writer: _native.ReplicaWriter
    lsn: int

    @classmethod
    def create(
        cls,
        directory: Path,
        tables: Sequence[Table],
        rows: dict[str, Iterable[tuple[Any, ...]]],
        *,
        chunk: int = 0,
        keep_model: bool = True,
    ) -> Replica:
        """``keep_model=False`` (large data sets): no model; only ``upsert``/``delete`` ops."""
        path = directory / "replica.db"
        lsn = 0x1_0000_0000
        schema = json.dumps({"tables": [t.spec() for t in tables]})
        sync = _native.InitialSync(
            str(directory / "replica.db.staging"),
            schema,
            consistent_point=lsn,
            slot="zcache_test",
            publications=["zero_data"],
            app_id="zero",
            shard_num=0,
            ddl_detection=False,
        )
        model: dict[str, dict[tuple[Any, ...], tuple[Any, ...]]] = {}
        for t in tables:
            table_rows = list(rows.get(t.name, []))
            data = copy_data(t, table_rows)
            chunks = [data[i : i + chunk] for i in range(0, len(data), chunk)] if chunk else [data]
            sync.copy_chunks(t.oid, chunks)
            sync.finish_table(t.oid)
            model[t.name] = {t.key(r): tuple(r) for r in table_rows} if keep_model else {}
        sync.finish(str(path))
        writer = _native.ReplicaWriter(str(path), "zcache_test")
        return cls(path, {t.name: t for t in tables}, model, writer, lsn)

    def transaction(self, ops: Sequence[tuple[str, str, Any]]) -> str:
        """Applies one upstream transaction. ``ops``: ``("set", table, row)`` (insert or
        update by key), ``("upsert", table, row)`` (an update, not tracked by the model),
        ``("update", table, (old_key, row))`` (possibly changing the key),
        ``("delete", table, key)``, ``("truncate", table, None)``. Returns the state version."""
        self.lsn += 0x100
        commit = self.lsn
        messages = [b"B" + struct.pack("!QqI", commit, 0, 1)]
        messages += [_relation(t) for t in self.tables.values()]
        for kind, name, arg in ops:
            t = self.tables[name]
            model = self.rows[name]
            if kind == "set":
                row = tuple(arg)
                old = model.get(t.key(row))
                if old is None:
                    messages.append(b"I" + struct.pack("!I", t.oid) + b"N" + _tuple(t, row))
                else:
                    messages.append(b"U" + struct.pack("!I", t.oid) + b"O" + _tuple(t, old) + b"N" + _tuple(t, row))
                model[t.key(row)] = row
            elif kind == "upsert":
                # An update without the old row (replica identity default, key unchanged).
                messages.append(b"U" + struct.pack("!I", t.oid) + b"N" + _tuple(t, arg))
            elif kind == "update":
                old_key, row = arg
                row = tuple(row)
                old = model.pop(old_key)
                messages.append(b"U" + struct.pack("!I", t.oid) + b"O" + _tuple(t, old) + b"N" + _tuple(t, row))
                model[t.key(row)] = row
            elif kind == "delete":
                old = model.pop(arg, None)
                if old is None:
                    # Not modelled: a key-only old tuple.
                    keyed = [arg[t.pk.index(c)] if c in t.pk else None for c in t.names]
                    messages.append(b"D" + struct.pack("!I", t.oid) + b"K" + _tuple(t, keyed))
                else:
                    messages.append(b"D" + struct.pack("!I", t.oid) + b"O" + _tuple(t, old))
            elif kind == "truncate":
                model.clear()
                messages.append(b"T" + struct.pack("!iB", 1, 0) + struct.pack("!I", t.oid))
            else:
                raise AssertionError(kind)
        messages.append(b"C" + struct.pack("!BQQq", 0, commit, commit + 8, 0))
        outcome = self.writer.apply_frames([_frame(commit, m) for m in messages])
        assert outcome.transactions == 1, outcome
        return outcome.state_version

    def ddl(self, tables: Sequence[Table], tag: str) -> str:
        """One upstream transaction carrying the shard's DDL event: the whole published schema
        after the change (``tables``) and the command tag. The model follows (rows of dropped
        tables are forgotten; added columns read ``None`` unless the spec says otherwise)."""
        self.lsn += 0x100
        commit = self.lsn
        content = json.dumps({"type": "ddl", "tag": tag, "schema": {"tables": [t.spec() for t in tables]}}).encode()
        message = b"M" + struct.pack("!BQ", 1, commit) + _cstr("zcache_test") + struct.pack("!i", len(content)) + content
        frames = [
            _frame(commit, b"B" + struct.pack("!QqI", commit, 0, 1)),
            _frame(commit, message),
            _frame(commit, b"C" + struct.pack("!BQQq", 0, commit, commit + 8, 0)),
        ]
        outcome = self.writer.apply_frames(frames)
        assert outcome.transactions == 1 and outcome.schema_changed, outcome
        old = self.tables
        self.tables = {t.name: t for t in tables}
        self.rows = {
            t.name: {k: _reshape(old[t.name], t, row) for k, row in self.rows.get(t.name, {}).items()} if t.name in old else {}
            for t in tables
        }
        return outcome.state_version

    def read(self) -> dict[str, list[dict[str, Any]]]:
        """Every row of every table, as the client sees it, plus ``_0_version``: the row's
        version, or the version of the table's last schema change (its newest ``r`` change-log
        entry) if that is newer (Zero's ``minRowVersion``: rows are re-sent in their new shape)."""
        conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True)
        try:
            resets = dict(conn.execute('SELECT "table", max("state_version") FROM "_zcache_changes" WHERE "op" = \'r\' GROUP BY "table"').fetchall())
            out: dict[str, list[dict[str, Any]]] = {}
            for t in self.tables.values():
                cols = ", ".join(f'"{c}"' for c in (*t.names, "_0_version"))
                rows = conn.execute(f'SELECT {cols} FROM "{t.name}"').fetchall()
                out[t.name] = [_client_row(t, r) for r in rows]
                for row in out[t.name]:
                    row["_0_version"] = max(row["_0_version"], resets.get(t.name, ""))
            return out
        finally:
            conn.close()


def _reshape(old: Table, new: Table, row: tuple[Any, ...]) -> tuple[Any, ...]:
    values = dict(zip(old.names, row, strict=True))
    return tuple(values.get(c) for c in new.names)


def _client_row(t: Table, raw: Sequence[Any]) -> dict[str, Any]:
    row: dict[str, Any] = {}
    for (name, type_name), value in zip(t.columns, raw, strict=False):
        if value is not None and type_name == "bool":
            value = bool(value)
        elif value is not None and type_name == "jsonb":
            value = json.loads(value)
        row[name] = value
    row["_0_version"] = raw[-1]
    return row


# --- the oracle -------------------------------------------------------------------------------


def _category(v: Any) -> str:
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, (int, float)):
        return "number"
    if isinstance(v, str):
        return "string"
    return "object"


def strict_eq(a: Any, b: Any) -> bool:
    """JavaScript's ``===`` on client values."""
    if a is None or b is None:
        return a is None and b is None
    if _category(a) != _category(b) or _category(a) == "object":
        return False
    return bool(a == b)


def compare(a: Any, b: Any) -> int:
    """Zero's ``compareValues``: NULL first, strings by UTF-8 bytes."""
    if a is None and b is None:
        return 0
    if a is None:
        return -1
    if b is None:
        return 1
    if isinstance(a, str):
        x, y = a.encode(), b.encode()
    else:
        x, y = a, b
    return (x > y) - (x < y)


def like(value: str, pattern: str, ci: bool) -> bool:
    """``LIKE`` by regular expression, as Zero's ``like.ts`` builds it (``%`` → ``.*``, ``_`` →
    ``.``, ``\\x`` → ``x``, dot matching newlines, anchored); ``ILIKE`` lower-cases both sides."""
    if ci:
        value, pattern = value.lower(), pattern.lower()
    return re.compile(_like_regex(pattern), re.DOTALL).fullmatch(value) is not None


def _like_regex(pattern: str) -> str:
    out = []
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if c == "%":
            out.append(".*")
        elif c == "_":
            out.append(".")
        elif c == "\\":
            i += 1
            out.append(re.escape(pattern[i]))
        else:
            out.append(re.escape(c))
        i += 1
    return "".join(out)


@dataclass
class Oracle:
    db: dict[str, list[dict[str, Any]]]
    tables: dict[str, Table]
    out: dict[tuple[str, str], tuple[dict[str, Any], str]] = field(default_factory=dict)

    def key_of(self, table: str, row: dict[str, Any]) -> str:
        return json.dumps({k: row[k] for k in self.tables[table].pk}, sort_keys=True)

    def ordering(self, ast: dict[str, Any]) -> list[tuple[str, str]]:
        order = [tuple(o) for o in ast.get("orderBy") or []]
        for k in self.tables[ast["table"]].pk:
            if k not in [c for c, _ in order]:
                order.append((k, "asc"))
        return order  # type: ignore[return-value]

    def cmp_rows(self, a: dict[str, Any], b: dict[str, Any], order: list[tuple[str, str]]) -> int:
        for col, direction in order:
            c = compare(a.get(col), b.get(col))
            if c:
                return c if direction == "asc" else -c
        return 0

    def cond(self, cond: dict[str, Any], row: dict[str, Any]) -> bool:
        kind = cond["type"]
        if kind == "and":
            return all(self.cond(c, row) for c in cond["conditions"])
        if kind == "or":
            return any(self.cond(c, row) for c in cond["conditions"])
        if kind == "correlatedSubquery":
            related = cond["related"]
            sub = related["subquery"]
            if sub.get("limit") == 0:
                return cond["op"] == "NOT EXISTS"
            constraint = self.constraint(related, row)
            found = constraint is not None and bool(self.rows(sub, constraint, None))
            return found if cond["op"] == "EXISTS" else not found
        op, left, right = cond["op"], cond["left"], cond["right"]
        lv = row[left["name"]] if left["type"] == "column" else left["value"]
        rv = right["value"]
        if op in ("IS", "IS NOT"):
            return strict_eq(lv, rv) == (op == "IS")
        if lv is None or rv is None:
            return False
        if op == "=":
            return strict_eq(lv, rv)
        if op == "!=":
            return not strict_eq(lv, rv)
        if op in ("IN", "NOT IN"):
            return any(strict_eq(lv, x) for x in rv) == (op == "IN")
        if op in ("<", ">", "<=", ">="):
            c = compare(lv, rv)
            return {"<": c < 0, ">": c > 0, "<=": c <= 0, ">=": c >= 0}[op]
        ci = op in ("ILIKE", "NOT ILIKE")
        matched = like(lv, rv, ci)
        return matched if op in ("LIKE", "ILIKE") else not matched

    def constraint(self, related: dict[str, Any], parent: dict[str, Any]) -> dict[str, Any] | None:
        corr = related["correlation"]
        values = [parent[p] for p in corr["parentField"]]
        if any(v is None for v in values):
            return None
        return dict(zip(corr["childField"], values, strict=True))

    def rows(self, ast: dict[str, Any], constraint: dict[str, Any] | None, limit: int | None) -> list[dict[str, Any]]:
        rows = [
            r
            for r in self.db[ast["table"]]
            if constraint is None or all(r[c] is not None and strict_eq(r[c], v) for c, v in constraint.items())
        ]
        if ast.get("where") is not None:
            rows = [r for r in rows if self.cond(ast["where"], r)]
        order = self.ordering(ast)
        rows.sort(key=functools.cmp_to_key(lambda a, b: self.cmp_rows(a, b, order)))
        start = ast.get("start")
        if start is not None:
            bound = start["row"]
            rows = [r for r in rows if (c := self.cmp_rows(r, bound, order)) > 0 or (c == 0 and not start["exclusive"])]
        if limit is not None:
            rows = rows[:limit]
        return rows

    def collect(self, ast: dict[str, Any], constraint: dict[str, Any] | None, synced: bool, limit: int | None) -> None:
        table = ast["table"]
        for row in self.rows(ast, constraint, limit):
            if synced:
                value = {k: v for k, v in row.items() if k != "_0_version"}
                self.out[(table, self.key_of(table, row))] = (value, row["_0_version"])
            for cond in _exists_conditions(ast.get("where")):
                related = cond["related"]
                child = self.constraint(related, row)
                if child is None:
                    continue
                permissions = related.get("system") == "permissions"
                sub = related["subquery"]
                if cond.get("flip") and cond["op"] == "EXISTS":
                    child_limit = sub.get("limit")
                else:
                    child_limit = 1 if permissions else 3
                self.collect(sub, child, synced and not permissions, child_limit)
            by_alias: dict[str, dict[str, Any]] = {}
            for related in ast.get("related") or []:
                by_alias[related["subquery"].get("alias", "")] = related
            for related in by_alias.values():
                child = self.constraint(related, row)
                if child is None:
                    continue
                permissions = related.get("system") == "permissions"
                self.collect(related["subquery"], child, synced and not permissions, related["subquery"].get("limit"))

    def companions(self, ast: dict[str, Any], synced: bool) -> None:
        """Rows of simple scalar subqueries, once per query, wherever they appear."""
        for cond in _exists_conditions(ast.get("where")):
            related = cond["related"]
            sub = related["subquery"]
            sub_synced = synced and related.get("system") != "permissions"
            if cond.get("scalar") and self.simple_scalar(sub):
                self.collect(sub, None, sub_synced, sub.get("limit"))
                self.companions(sub, sub_synced)
            self.companions(sub, sub_synced)
        for related in ast.get("related") or []:
            self.companions(related["subquery"], synced and related.get("system") != "permissions")

    def simple_scalar(self, ast: dict[str, Any]) -> bool:
        pinned: set[str] = set()

        def walk(c: dict[str, Any]) -> bool:
            if c["type"] == "and":
                return all(walk(x) for x in c["conditions"])
            if c["type"] == "simple":
                if c["op"] == "=" and c["left"]["type"] == "column" and c["right"]["value"] is not None:
                    pinned.add(c["left"]["name"])
                return True
            return False

        where = ast.get("where")
        return where is not None and walk(where) and set(self.tables[ast["table"]].pk) <= pinned


def _exists_conditions(cond: dict[str, Any] | None) -> list[dict[str, Any]]:
    if cond is None:
        return []
    if cond["type"] == "correlatedSubquery":
        return [cond]
    if cond["type"] in ("and", "or"):
        return [c for x in cond["conditions"] for c in _exists_conditions(x)]
    return []


def oracle_rows(ast: dict[str, Any], db: dict[str, list[dict[str, Any]]], tables: dict[str, Table]) -> dict[tuple[str, str], tuple[dict[str, Any], str]]:
    """(table, canonical row key) → (client value, row version) for every row the query syncs."""
    oracle = Oracle(db, tables)
    oracle.collect(ast, None, True, ast.get("limit"))
    oracle.companions(ast, True)
    return oracle.out


# --- the client side ----------------------------------------------------------------------------


@dataclass
class ClientView:
    """The rows a client group has, from the engine's patches; checks every op is needed."""

    rows: dict[tuple[str, str], tuple[dict[str, Any], str]] = field(default_factory=dict)
    version: str | None = None

    def apply(self, patch: bytes, *, errors_allowed: bool = False) -> dict[str, str]:
        p = json.loads(patch)
        if not errors_allowed:
            assert p["queryErrors"] == {}, p["queryErrors"]
        for op in p["ops"]:
            key = (op["table"], json.dumps(op["rowKey"], sort_keys=True))
            if op["op"] == "put":
                old = self.rows.get(key)
                assert old is None or old[1] != op["rowVersion"], f"redundant put of {key}"
                self.rows[key] = (op["value"], op["rowVersion"])
            else:
                assert op["op"] == "del", op
                assert key in self.rows, f"del of {key}, which the client does not have"
                del self.rows[key]
        if self.version is not None:
            assert p["version"] >= self.version
        self.version = p["version"]
        return p["queryErrors"]
