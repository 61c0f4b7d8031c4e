"""Property: for any sequence of upstream transactions, the replica equals upstream row for row.

Three tables share one set of value columns covering every type the replica maps (ints with the
±2^53 edges, numeric with scale, NaN and ±Infinity, floats with NaN and ±Infinity, bool, text
with unicode and '', varchar, char(n), json, jsonb, timestamp(tz) and date with ±infinity and
the far edges, time, timetz, uuid, an enum, a domain, 1-D and 2-D arrays with NULL elements),
NULL wherever nullable:

* `t_full`: a composite primary key (int4, text) and REPLICA IDENTITY FULL;
* `t_text`: a text primary key;
* `t_toast`: an int primary key and two large text columns that are sometimes filled with more
  than 4 kB of incompressible text, while other columns are updated, so that the TOASTed values
  arrive as "unchanged" (`u`) and the replica must keep them (`t.t` can be large too, in every
  table, so the same happens under REPLICA IDENTITY FULL and with key changes).

Each hypothesis example TRUNCATEs the tables (a replicated operation itself, so examples are
independent), then commits a few random transactions — inserts, upserts, updates of some
columns, primary-key changes, deletes, delete-all, TRUNCATE of one or two tables, bulk
`generate_series` inserts/updates/deletes of a few hundred rows, big values then updates that
leave them unchanged, savepoints rolled back or released, whole transactions rolled back.

One `Replicator` per test function runs in its own Trio loop on a background thread
(`ReplicatorHost`), so the transactions are committed while it streams and batches split them.
A quarter of the examples stop it, commit some transactions while it is down (they wait in the
slot) and start a new `Replicator` on the same file (a restart from the watermark), and a
half of those delete the replica first (a fresh initial sync: the binary COPY path). A
restart per example would be simpler, but starting costs ~1.2 s here (setup_shard's no-op DDL
each fires the DDL event trigger, which recomputes the published schema), far over the budget.
The oracle is `tests/fixtures/replica_oracle.py` (its docstring documents the mapping).

`test_unchanged_toast_values_really_arrive_as_unchanged` checks with a test_decoding slot that
the TOAST case really happens; `test_the_oracle_notices_a_wrong_value` that the comparison is
exact enough to fail on one ulp.
"""

from __future__ import annotations

import gc
import json
import math
import random
import sqlite3
import string
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime, time as dtime
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from tests.fixtures.replica_oracle import ReplicatorHost, assert_replica_matches, open_replica
from tests.pg.test_replication import _config
from zcache.replica.replicator import Replicator

CATCH_UP_TIMEOUT_S = 30

MOODS = ("sad", "ok", "happy", "très content", "with space", "quote'\"")

SCHEMA_SQL = """
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy', 'très content', 'with space', 'quote''"');
CREATE DOMAIN posint AS int4 CHECK (VALUE > 0);
"""

# (column, type) of the value columns every table has.
VALUE_COLUMNS: tuple[tuple[str, str], ...] = (
    ("i2", "int2"),
    ("i4", "int4"),
    ("i8", "int8"),
    ("num", "numeric"),
    ("num_s", "numeric(12,4)"),
    ("f4", "float4"),
    ("f8", "float8"),
    ("b", "bool"),
    ("t", "text"),
    ("vc", "varchar(16)"),
    ("ch", "char(5)"),
    ("j", "json"),
    ("jb", "jsonb"),
    ("ts", "timestamp"),
    ("tstz", "timestamptz"),
    ("d", "date"),
    ("tm", "time"),
    ("tmtz", "timetz"),
    ("u", "uuid"),
    ("m", "mood"),
    ("dom", "posint"),
    ("a_i4", "int4[]"),
    ("a_t", "text[]"),
    ("a_f8", "float8[]"),
    ("a_b", "bool[]"),
    ("a_num", "numeric[]"),
    ("a_jb", "jsonb[]"),
    ("a_m", "mood[]"),
)
COLUMN_TYPES = dict(VALUE_COLUMNS) | {
    "k_int": "int4",
    "k_text": "text",
    "id": "text",
    "tid": "int4",
    "doc": "text",
    "doc2": "text",
    "note": "text",
    "n": "int8",
}


@dataclass(frozen=True)
class TableDef:
    name: str
    key: tuple[str, ...]
    columns: tuple[str, ...]  # non-key columns
    ddl: str


def _value_ddl() -> str:
    return ", ".join(f"{c} {t}" for c, t in VALUE_COLUMNS)


TABLES = {
    "t_full": TableDef(
        "t_full",
        ("k_int", "k_text"),
        tuple(c for c, _ in VALUE_COLUMNS),
        f"CREATE TABLE t_full (k_int int4, k_text text, {_value_ddl()}, PRIMARY KEY (k_int, k_text));"
        "ALTER TABLE t_full REPLICA IDENTITY FULL;",
    ),
    "t_text": TableDef(
        "t_text",
        ("id",),
        tuple(c for c, _ in VALUE_COLUMNS),
        f"CREATE TABLE t_text (id text PRIMARY KEY, {_value_ddl()});",
    ),
    "t_toast": TableDef(
        "t_toast",
        ("tid",),
        ("doc", "doc2", "note", "n", "jb", "ts"),
        "CREATE TABLE t_toast (tid int4 PRIMARY KEY, doc text, doc2 text, note text, n int8, jb jsonb, ts timestamptz);",
    ),
}
TABLE_NAMES = tuple(TABLES)

# -- value strategies: each yields a Postgres input literal (str) or None (SQL NULL) ------------------

_chars = st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00")
_small_text = st.text(_chars, max_size=12)


def big_text(seed: int, size: int) -> str:
    """`size` characters of random (incompressible for pglz) text, so it is TOASTed out of line."""
    rng = random.Random(seed)
    return "".join(rng.choices(string.ascii_letters + string.digits + "äöü€😀", k=size))


_big_text = st.builds(big_text, st.integers(0, 2**32), st.integers(4200, 9000))
_text = st.one_of(_small_text, _small_text, _small_text, _big_text)

INT8_EDGES = [
    0, 1, -1, 2**53 - 1, 2**53, 2**53 + 1, -(2**53 - 1), -(2**53), -(2**53 + 1), 2**63 - 1, -(2**63),
]
_int8 = st.one_of(st.sampled_from(INT8_EDGES), st.integers(-(2**63), 2**63 - 1)).map(str)
_int4 = st.one_of(st.sampled_from([0, 2**31 - 1, -(2**31)]), st.integers(-(2**31), 2**31 - 1)).map(str)
_int2 = st.integers(-(2**15), 2**15 - 1).map(str)

NUMERIC_EDGES = [
    "NaN", "Infinity", "-Infinity", "0", "-0.000", "0.1", "-0.1", "1e400", "-1e400", "1e-400",
    "12345678901234567890.123456789012345678901", "9007199254740993", "-9007199254740993",
    "1.7976931348623157e308", "1.7976931348623159e308", "2.4703282292062328e-324", "123.4500",
    "0.30000000000000000000000000000000001", "99999999999999999999999999999999999999999",
]
_numeric = st.one_of(
    st.sampled_from(NUMERIC_EDGES),
    st.decimals(min_value=Decimal("-1e20"), max_value=Decimal("1e20"), allow_nan=False, allow_infinity=False).map(str),
    st.builds(lambda m, e: f"{m}e{e}", st.integers(-(10**20), 10**20), st.integers(-420, 420)),
)
_numeric_scaled = st.one_of(
    st.just("NaN"),
    st.decimals(min_value=Decimal("-99999999.9999"), max_value=Decimal("99999999.9999"), places=6).map(str),
)


def _float_literal(x: float) -> str:
    if x != x:
        return "NaN"
    if x in (float("inf"), float("-inf")):
        return "Infinity" if x > 0 else "-Infinity"
    return repr(x)


_float8 = st.floats().map(_float_literal)
_float4 = st.floats(width=32).map(_float_literal)

def _json_containers(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.lists(inner, max_size=3) | st.dictionaries(st.text(_chars, max_size=4), inner, max_size=3)


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(10**20), 10**20) | st.floats(allow_nan=False, allow_infinity=False) | _small_text,
    _json_containers,
    max_leaves=6,
)
_json = st.one_of(
    st.builds(
        lambda v, indent, ascii_: json.dumps(v, indent=indent, ensure_ascii=ascii_),
        _json_values,
        st.sampled_from([None, None, 1]),
        st.booleans(),
    ),
    st.sampled_from(['{"a": 1, "a": 2}', ' [1 , 2.50 , 1e2] ', '"\\u00e9"', "1e400", "{}", "[]"]),
    _big_text.map(json.dumps),
)
_jsonb = st.one_of(
    st.builds(lambda v, ascii_: json.dumps(v, ensure_ascii=ascii_), _json_values, st.booleans()),
    st.sampled_from(['{"b": 1, "a": [1.50, 1e2], "a ": null}', '"\\u00e9"', "-0", "1.0e-5"]),
    _big_text.map(json.dumps),
)

# 2^53 µs after the Unix epoch (beyond it the replica converts µs → ms with exact decimal arithmetic).
TIMESTAMP_EDGES = [
    "infinity", "-infinity", "4713-01-01 00:00:00 BC", "294276-12-31 23:59:59.999999",
    "1970-01-01 00:00:00", "2000-01-01 00:00:00", "1969-12-31 23:59:59.999999",
    "2255-06-05 23:47:34.740992", "2255-06-05 23:47:34.740993", "1684-07-28 00:12:25.259008",
    "1684-07-28 00:12:25.259007", "0001-01-01 00:00:00.000001",
]
_datetime = st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31, 23, 59, 59, 999999))
_timestamp = st.one_of(st.sampled_from(TIMESTAMP_EDGES), _datetime.map(lambda d: d.isoformat(sep=" ")))
_zone = st.one_of(
    st.sampled_from(["+00", "Z", "-00:30", "+05:45", "+14:00", "-12:00", " America/New_York", " Asia/Kolkata", " UTC"]),
    st.builds(lambda s, h, m: f"{s}{h:02d}:{m:02d}", st.sampled_from("+-"), st.integers(0, 14), st.integers(0, 59)),
)
_timestamptz = st.one_of(
    st.sampled_from(TIMESTAMP_EDGES[:2] + ["294276-12-31 23:59:59.999999+00", "4713-01-01 12:00:00+00 BC"]),
    st.builds(lambda d, z: d.isoformat(sep=" ") + z, _datetime, _zone),
)
_date = st.one_of(
    st.sampled_from(["infinity", "-infinity", "4713-11-24 BC", "5874897-12-31", "0001-01-01 BC", "1970-01-01"]),
    st.dates(min_value=date(1, 1, 1)).map(date.isoformat),
)
_time = st.one_of(st.sampled_from(["24:00:00", "00:00:00", "23:59:59.999999"]), st.times().map(dtime.isoformat))
_tz_offset = st.builds(
    lambda s, h, m, sec: f"{s}{h:02d}:{m:02d}" + (f":{sec:02d}" if sec else ""),
    st.sampled_from("+-"),
    st.integers(0, 15),
    st.integers(0, 59),
    st.sampled_from([0, 0, 0, 30]),
)
_timetz = st.one_of(
    st.sampled_from(["24:00:00+00", "00:00:00+15:59", "00:00:00-15:59", "23:59:59.999999-15:59", "12:00:00+00"]),
    st.builds(lambda t, z: t.isoformat() + z, st.times(), _tz_offset),
)
_uuid = st.builds(
    lambda u, style: {0: str(u), 1: str(u).upper(), 2: "{" + str(u) + "}", 3: u.hex}[style], st.uuids(), st.integers(0, 3)
)
_mood = st.sampled_from(MOODS)


def _array_literal(value: Any) -> str:
    """A nested list as a Postgres array literal, every element quoted (NULL for None)."""
    if isinstance(value, list):
        return "{" + ",".join(_array_literal(v) for v in value) + "}"
    if value is None:
        return "NULL"
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def _arrays(element: st.SearchStrategy[str], extra: list[str] | None = None) -> st.SearchStrategy[str]:
    elements = st.none() | element
    two_d = st.integers(1, 3).flatmap(lambda width: st.lists(st.lists(elements, min_size=width, max_size=width), min_size=1, max_size=3))
    options = [st.lists(elements, max_size=4).map(_array_literal), two_d.map(_array_literal)]
    if extra:
        options.append(st.sampled_from(extra))
    return st.one_of(*options)


VALUE_STRATEGIES: dict[str, st.SearchStrategy[str]] = {
    "i2": _int2,
    "i4": _int4,
    "i8": _int8,
    "num": _numeric,
    "num_s": _numeric_scaled,
    "f4": _float4,
    "f8": _float8,
    "b": st.sampled_from(["true", "false"]),
    "t": _text,
    "vc": st.text(_chars, max_size=16),
    "ch": st.text(_chars, max_size=5),
    "j": _json,
    "jb": _jsonb,
    "ts": _timestamp,
    "tstz": _timestamptz,
    "d": _date,
    "tm": _time,
    "tmtz": _timetz,
    "u": _uuid,
    "m": _mood,
    "dom": st.integers(1, 2**31 - 1).map(str),
    "a_i4": _arrays(_int4, ["[0:1]={1,2}", "{}", "[2:3][1:1]={{5},{NULL}}", "{NULL}"]),
    "a_t": _arrays(st.one_of(_small_text, st.sampled_from(["NULL", '"', "\\", ",", "{}", " ", ""]))),
    "a_f8": _arrays(_float8),
    "a_b": _arrays(st.sampled_from(["t", "f"])),
    "a_num": _arrays(_numeric),
    "a_jb": _arrays(_jsonb),
    "a_m": _arrays(_mood),
    "doc": _text,
    "doc2": _text,
    "note": _small_text,
    "n": _int8,
}
# t_toast's jb and ts columns reuse the strategies above; its ts is a timestamptz.
TOAST_STRATEGIES = VALUE_STRATEGIES | {"ts": _timestamptz}

KEY_STRATEGIES: dict[str, st.SearchStrategy[str]] = {
    "k_int": st.integers(0, 5).map(str),
    "k_text": st.sampled_from(["", "a", "ü", "key with space"]),
    "id": st.sampled_from(["", "a", "A", "ä", "key with space", "😀", "quote'", "x" * 70]),
    "tid": st.integers(0, 7).map(str),
}


def _strategy(table: str, column: str) -> st.SearchStrategy[str | None]:
    strategies = TOAST_STRATEGIES if table == "t_toast" else VALUE_STRATEGIES
    return st.none() | strategies[column]


def _values(table: str, columns: tuple[str, ...]) -> st.SearchStrategy[dict[str, str | None]]:
    return st.fixed_dictionaries({c: _strategy(table, c) for c in columns})


def _key(table: str) -> st.SearchStrategy[dict[str, str]]:
    return st.fixed_dictionaries({c: KEY_STRATEGIES[c] for c in TABLES[table].key})


# -- operations ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Op:
    """One SQL statement with its parameters (a description for hypothesis' output)."""

    sql: str
    params: tuple[str | None, ...] = ()
    label: str = ""  # shown instead of a long statement

    def __repr__(self) -> str:
        shown = [p if p is None or len(p) <= 40 else f"<{len(p)} chars {p[:12]!r}…>" for p in self.params]
        return f"Op({self.label or self.sql!r}, {shown!r})"


def _cast(table: str, column: str) -> str:
    if table == "t_toast" and column == "ts":
        return "timestamptz"
    return COLUMN_TYPES[column]


def _ident(name: str) -> str:
    return '"' + name + '"'


def _insert(table: str, key: dict[str, str], values: dict[str, str | None], upsert: bool) -> Op:
    columns = list(key) + list(values)
    placeholders = ", ".join(f"%s::{_cast(table, c)}" for c in columns)
    conflict = ", ".join(TABLES[table].key)
    if upsert and values:
        action = "DO UPDATE SET " + ", ".join(f"{c} = excluded.{c}" for c in values)
    else:
        action = "DO NOTHING"
    return Op(
        f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({placeholders}) ON CONFLICT ({conflict}) {action}",
        tuple(key.values()) + tuple(values.values()),
        label=f"{'upsert' if upsert and values else 'insert'} {table} ({', '.join(columns)})",
    )


def _where_key(table: str, key: dict[str, str]) -> tuple[str, tuple[str, ...]]:
    return " AND ".join(f"{c} = %s::{_cast(table, c)}" for c in key), tuple(key.values())


@st.composite
def insert_op(draw: st.DrawFn, table: str) -> Op:
    key = draw(_key(table))
    columns = TABLES[table].columns
    chosen = draw(st.lists(st.sampled_from(columns), unique=True, min_size=0, max_size=len(columns)))
    # Usually every column (explicit NULLs included); sometimes only some (the rest default NULL).
    if draw(st.booleans()):
        chosen = list(columns)
    values = draw(_values(table, tuple(c for c in columns if c in chosen)))
    return _insert(table, key, values, upsert=draw(st.booleans()))


@st.composite
def update_op(draw: st.DrawFn, table: str) -> Op:
    key = draw(_key(table))
    columns = TABLES[table].columns
    if table == "t_toast":
        # Mostly leave the big columns alone so their TOASTed values arrive unchanged.
        columns = draw(st.sampled_from([("note",), ("n",), ("note", "n", "ts"), ("jb",), columns]))
    chosen = draw(st.lists(st.sampled_from(columns), unique=True, min_size=1, max_size=min(4, len(columns))))
    values = draw(_values(table, tuple(chosen)))
    where, params = _where_key(table, key)
    sets = ", ".join(f"{c} = %s::{_cast(table, c)}" for c in values)
    return Op(f"UPDATE {table} SET {sets} WHERE {where}", tuple(values.values()) + params)


@st.composite
def update_key_op(draw: st.DrawFn, table: str) -> Op:
    old = draw(_key(table))
    new = draw(_key(table))
    where, params = _where_key(table, old)
    new_where, new_params = _where_key(table, new)
    sets = ", ".join(f"{c} = %s::{_cast(table, c)}" for c in new)
    # Touching another column too (or not) changes whether TOASTed values arrive unchanged.
    extra = ""
    if draw(st.booleans()):
        extra = ", " + ("note = note || '!'" if table == "t_toast" else "i4 = coalesce(i4, 0) / 2")
    return Op(
        f"UPDATE {table} SET {sets}{extra} WHERE {where} AND NOT EXISTS (SELECT FROM {table} WHERE {new_where})",
        tuple(new.values()) + params + new_params,
    )


@st.composite
def delete_op(draw: st.DrawFn, table: str) -> Op:
    where, params = _where_key(table, draw(_key(table)))
    return Op(f"DELETE FROM {table} WHERE {where}", params)


# Bulk rows from generate_series: keys outside the single-row key ranges, values derived from g.
_BULK_VALUES = {
    "i2": "(g % 32767)::int2",
    "i4": "g * 7919",
    "i8": "g::int8 * 1000000007 * 1000",
    "num": "(g / 7.0)::numeric",
    "num_s": "(g / 3.0)::numeric(12,4)",
    "f4": "(g / 3.0)::float4",
    "f8": "CASE WHEN g % 10 = 0 THEN 'NaN'::float8 ELSE g / 3.0 END",
    "b": "g % 2 = 0",
    "t": "CASE WHEN g % 4 = 0 THEN NULL ELSE repeat(md5(g::text), g % 3) END",
    "vc": "left(md5(g::text), 16)",
    "ch": "left(md5(g::text), g % 6)",
    "j": "json_build_object('g', g, 'half', g / 2.0)",
    "jb": "jsonb_build_object('g', g, 's', md5(g::text))",
    "ts": "timestamp '2000-01-01' + g * interval '1 day 1 microsecond'",
    "tstz": "timestamptz '1600-01-01 00:00:00+00' + g * interval '1 year 1 microsecond'",
    "d": "date '1970-01-01' + g * 97",
    "tm": "time '00:00' + g * interval '1 minute 1.001 second'",
    "tmtz": "(time '00:00' + g * interval '1 minute 1.001 second')::timetz",
    "u": "md5(g::text)::uuid",
    "m": "(enum_range(NULL::mood))[1 + g % 6]",
    "dom": "1 + g",
    "a_i4": "ARRAY[g, NULL, -g]",
    "a_t": "ARRAY[md5(g::text), NULL]",
    "a_f8": "ARRAY[g / 3.0, 'Infinity']::float8[]",
    "a_b": "ARRAY[g % 3 = 0]",
    "a_num": "ARRAY[g / 7.0]",
    "a_jb": "ARRAY[jsonb_build_object('g', g)]",
    "a_m": "ARRAY[(enum_range(NULL::mood))[1 + g % 6]]",
}
_BULK_KEYS = {
    "t_full": {"k_int": "1000 + g % 50", "k_text": "'bulk' || (g / 50)"},
    "t_text": {"id": "'bulk' || g"},
    "t_toast": {"tid": "1000 + g"},
}
_BULK_WHERE = {"t_full": "k_int >= 1000", "t_text": "id LIKE 'bulk%'", "t_toast": "tid >= 1000"}


@st.composite
def bulk_op(draw: st.DrawFn, table: str) -> Op:
    kind = draw(st.sampled_from(["insert", "insert", "update", "delete"]))
    if kind == "insert":
        start = draw(st.integers(0, 300))
        count = draw(st.integers(50, 300))
        columns = TABLES[table].columns
        values = {c: _BULK_VALUES[c] for c in columns if c in _BULK_VALUES}
        if table == "t_toast":
            values = {"doc": "repeat(md5(g::text), 2)", "note": "g::text", "n": "g", "jb": "jsonb_build_object('g', g)"}
            values["ts"] = _BULK_VALUES["tstz"]
        keys = _BULK_KEYS[table]
        names = list(keys) + list(values)
        exprs = list(keys.values()) + list(values.values())
        conflict = ", ".join(TABLES[table].key)
        return Op(
            f"INSERT INTO {table} ({', '.join(names)}) SELECT {', '.join(exprs)} "
            f"FROM generate_series({start}, {start + count}) g ON CONFLICT ({conflict}) DO NOTHING",
            label=f"<bulk insert into {table}, g = {start}..{start + count}>",
        )
    where = _BULK_WHERE[table]
    if kind == "update":
        column = "n" if table == "t_toast" else "i8"
        return Op(f"UPDATE {table} SET {column} = coalesce({column}, 0) + 1 WHERE {where}")
    modulus = draw(st.integers(2, 5))
    key = TABLES[table].key[0]
    return Op(f"DELETE FROM {table} WHERE {where} AND hashtext({key}::text) % {modulus} = 0")


def _table_op(table: str) -> st.SearchStrategy[Op]:
    return st.one_of(
        insert_op(table),
        insert_op(table),
        update_op(table),
        update_op(table),
        update_key_op(table),
        delete_op(table),
        st.just(Op(f"DELETE FROM {table}")),
        bulk_op(table),
    )


_single_op = st.sampled_from(TABLE_NAMES).flatmap(_table_op)
_truncate = st.one_of(
    st.sampled_from(TABLE_NAMES).map(lambda t: Op(f"TRUNCATE {t}")),
    st.lists(st.sampled_from(TABLE_NAMES), min_size=2, max_size=2, unique=True).map(lambda ts: Op(f"TRUNCATE {', '.join(ts)}")),
)
_op = st.one_of(_single_op, _single_op, _single_op, _single_op, _single_op, _truncate)


@dataclass(frozen=True)
class Savepoint:
    ops: tuple[Op, ...]
    rollback: bool


@dataclass(frozen=True)
class Txn:
    steps: tuple[Op | Savepoint, ...]
    commit: bool


@st.composite
def toast_cycle(draw: st.DrawFn) -> tuple[Op, ...]:
    """A big value written, then the row updated without it (the value arrives unchanged), maybe
    with a key change too, in one table of the three."""
    table = draw(st.sampled_from(TABLE_NAMES))
    key = draw(_key(table))
    big = "doc" if table == "t_toast" else "t"
    other = "note" if table == "t_toast" else "i4"
    ops = [_insert(table, key, {big: draw(_big_text), other: None}, upsert=True)]
    where, params = _where_key(table, key)
    ops.append(Op(f"UPDATE {table} SET {other} = %s::{_cast(table, other)} WHERE {where}", (draw(_int4),) + params))
    if draw(st.booleans()):
        ops.append(draw(update_key_op(table)))
    if draw(st.booleans()):
        ops.append(draw(update_op(table)))
    return tuple(ops)


def _flatten(steps: list[Op | Savepoint | tuple[Op, ...]]) -> tuple[Op | Savepoint, ...]:
    out: list[Op | Savepoint] = []
    for step in steps:
        out.extend(step if isinstance(step, tuple) else (step,))
    return tuple(out)


_savepoint = st.builds(Savepoint, st.lists(_op, min_size=1, max_size=3).map(tuple), st.booleans())
_txn = st.builds(
    Txn,
    st.lists(st.one_of(_op, _op, _op, _savepoint, toast_cycle()), min_size=1, max_size=5).map(_flatten),
    st.sampled_from([True, True, True, False]),
)


@dataclass
class Scenario:
    txns: list[Txn]
    # The replicator keeps running from one example to the next, except:
    restart: bool  # stop it, commit the first `while_down` transactions, start it again
    fresh_replica: bool  # … and delete the replica first: the replicator runs an initial sync
    while_down: int


scenarios = st.builds(
    Scenario,
    st.lists(_txn, min_size=1, max_size=5),
    st.sampled_from([False, False, False, True]),
    st.booleans(),
    st.integers(0, 5),
)


def run_txn(conn: psycopg.Connection[Any], txn: Txn) -> None:
    conn.execute("BEGIN")
    try:
        for n, step in enumerate(txn.steps):
            if isinstance(step, Op):
                conn.execute(step.sql, step.params or None)
                continue
            conn.execute(f"SAVEPOINT s{n}")
            for op in step.ops:
                conn.execute(op.sql, op.params or None)
            conn.execute(f"ROLLBACK TO SAVEPOINT s{n}" if step.rollback else f"RELEASE SAVEPOINT s{n}")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT" if txn.commit else "ROLLBACK")


def create_tables(conn: psycopg.Connection[Any]) -> None:
    conn.execute(SCHEMA_SQL)
    for table in TABLES.values():
        conn.execute(table.ddl)


def remove_replica(replica: Path) -> None:
    gc.collect()  # drop a previous writer's connection
    for suffix in ("", "-wal", "-shm"):
        Path(f"{replica}{suffix}").unlink(missing_ok=True)


def run_scenario(host: ReplicatorHost, conn: psycopg.Connection[Any], replica: Path, scenario: Scenario) -> None:
    # Independent examples: empty tables first (replicated like anything else).
    conn.execute(f"TRUNCATE {', '.join(TABLE_NAMES)}")
    txns = scenario.txns
    if scenario.restart:
        host.stop()
        split = min(scenario.while_down, len(txns))
        for txn in txns[:split]:
            run_txn(conn, txn)
        txns = txns[split:]
        if scenario.fresh_replica:
            remove_replica(replica)
        host.start()
    # Committed while the replicator streams (it runs in another thread).
    for txn in txns:
        run_txn(conn, txn)
    host.wait_caught_up(conn, timeout_s=CATCH_UP_TIMEOUT_S)


@pytest.fixture
def property_db(
    pg_dsn: str, pg_conn: psycopg.Connection[Any], tmp_path: Path
) -> Iterator[tuple[psycopg.Connection[Any], Path, ReplicatorHost]]:
    create_tables(pg_conn)
    replica = tmp_path / "replica.db"
    # The first start runs the initial sync of the empty tables.
    with ReplicatorHost(lambda: Replicator(_config(pg_dsn, replica))) as host:
        yield pg_conn, replica, host


# About a second per example: the `slow` profile (1000 examples) needs more than the default timeout.
@pytest.mark.timeout(max(300, 3 * (settings.default.max_examples or 0)))
def test_random_transactions_replicate_exactly(property_db: tuple[psycopg.Connection[Any], Path, ReplicatorHost]) -> None:
    conn, replica, host = property_db
    durations: list[float] = []

    @settings(suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example])
    @given(scenarios)
    def check(scenario: Scenario) -> None:
        started = time.monotonic()
        run_scenario(host, conn, replica, scenario)
        stats = host.replicator.statistics()
        note(f"statistics: {stats}")
        assert stats.resyncs == 0
        assert_replica_matches(conn, replica, [("public", t) for t in TABLE_NAMES])
        durations.append(time.monotonic() - started)

    check()
    print(f"{len(durations)} examples, {sum(durations):.1f}s, slowest {max(durations, default=0):.2f}s")


def test_unchanged_toast_values_really_arrive_as_unchanged(
    property_db: tuple[psycopg.Connection[Any], Path, ReplicatorHost],
) -> None:
    """The TOAST scenario of the property is real: a test_decoding slot shows the updates' new
    tuples without the big value (`unchanged-toast-datum`), and the replica keeps that value."""
    conn, replica, host = property_db
    host.stop()
    doc = big_text(1, 6000)
    conn.execute("INSERT INTO t_toast (tid, doc, note) VALUES (1, %s, 'a')", [doc])
    conn.execute("INSERT INTO t_full (k_int, k_text, t, i4) VALUES (1, 'x', %s, 1)", [doc])
    size = conn.execute("SELECT pg_column_size(doc) FROM t_toast WHERE tid = 1").fetchone()
    assert size is not None and size[0] > 4000, "the value should be stored uncompressed"
    conn.execute("SELECT pg_create_logical_replication_slot('toast_probe', 'test_decoding')")
    try:
        conn.execute("UPDATE t_toast SET note = 'b' WHERE tid = 1")
        conn.execute("UPDATE t_full SET i4 = 2 WHERE k_int = 1")
        conn.execute("UPDATE t_full SET k_int = 2 WHERE k_int = 1")  # a key change under REPLICA IDENTITY FULL
        changes = [r[0] for r in conn.execute("SELECT data FROM pg_logical_slot_get_changes('toast_probe', NULL, NULL)")]
    finally:
        conn.execute("SELECT pg_drop_replication_slot('toast_probe')")
    updates = [c for c in changes if c.startswith("table public.t_")]
    assert len(updates) == 3
    assert all("unchanged-toast-datum" in c for c in updates), updates
    host.start()
    host.wait_caught_up(conn, timeout_s=CATCH_UP_TIMEOUT_S)
    assert_replica_matches(conn, replica, [("public", t) for t in TABLE_NAMES])
    db = open_replica(replica)
    try:
        assert db.execute("SELECT doc FROM t_toast WHERE tid = 1").fetchone() == (doc,)
        assert db.execute("SELECT t FROM t_full WHERE k_int = 2").fetchone() == (doc,)
    finally:
        db.close()


def test_the_oracle_notices_a_wrong_value(
    property_db: tuple[psycopg.Connection[Any], Path, ReplicatorHost], tmp_path: Path
) -> None:
    """The comparison is exact: a replica off by one ulp, one pad character or one array element fails it."""
    conn, replica, host = property_db
    conn.execute(
        "INSERT INTO t_text (id, f8, num, ts, tmtz, ch, t, a_i4, jb, i8) VALUES "
        "('k', 0.1, 0.3, '2255-06-05 23:47:34.740993', '12:00:00.5+05:30', 'ab', 'text', '{1,2}', '{\"a\": 1}', 9007199254740993)"
    )
    host.wait_caught_up(conn, timeout_s=CATCH_UP_TIMEOUT_S)
    host.stop()
    tables = [("public", t) for t in TABLE_NAMES]
    assert_replica_matches(conn, replica, tables)
    mutations = {
        "f8": "nextafter",
        "num": "nextafter",
        "ts": "nextafter",
        "tmtz": "nextafter",
        "ch": "'ab'",
        "t": "'tex'",
        "a_i4": "'[1,2,null]'",
        "jb": "'{\"a\":1}'",
        "i8": "9007199254740992",
    }
    for column, change in mutations.items():
        copy = tmp_path / f"mutated-{column}.db"
        source = open_replica(replica)
        target = sqlite3.connect(copy)
        try:
            source.backup(target)
            if change == "nextafter":
                (value,) = target.execute(f"SELECT {column} FROM t_text WHERE id = 'k'").fetchone()
                target.execute(f"UPDATE t_text SET {column} = ? WHERE id = 'k'", [math.nextafter(value, math.inf)])
            else:
                target.execute(f"UPDATE t_text SET {column} = {change} WHERE id = 'k'")
            target.commit()
        finally:
            source.close()
            target.close()
        with pytest.raises(AssertionError, match=f"column {column}: upstream"):
            assert_replica_matches(conn, copy, tables)
