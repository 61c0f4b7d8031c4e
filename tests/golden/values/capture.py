"""Capture golden Postgres values for `rust/pg/values.rs` and `rust/pg/copy.rs`.

For every case below (a type and an SQL expression of that type), a real PostgreSQL 15 server
gives:

* ``binary``: the value's binary send format, taken from ``COPY (SELECT …) TO STDOUT (FORMAT
  binary)`` (hex, ``null`` for SQL NULL);
* ``text``: the value's text output (what pgoutput sends for a ``t`` column), read through a
  text-format result;
* ``expected``: the replica (SQLite) value zcache must store, computed by Postgres itself where
  possible (``extract(epoch …)*1000`` for dates and timestamps, the text output of numbers parsed
  as a correctly rounded double, …) under the rules documented in ``rust/pg/values.rs``;
* ``spec``: the column's published-schema ``ColumnSpec`` (``rust/pg/schema.rs``), read from
  ``pg_type``.

``missing`` cases add a column with a ``DEFAULT`` to a table that has a row and record
``array_to_json(attmissingval)->0``, the JSON form ``ColumnSpec.missing`` carries.

``copy.bin`` is the raw output of ``COPY copy_fixture TO STDOUT (FORMAT binary)``, and
``copy.json`` its columns and rows (each field as hex or ``null``), parsed by the independent
Python parser below.

Run (from the repository root; starts a throwaway cluster unless ``--dsn`` names a server where
the database ``zcache_values_golden`` may be dropped and re-created)::

    .venv/bin/python tests/golden/values/capture.py
    cargo test pg::values pg::copy     # then review `git diff tests/golden/values`
"""

from __future__ import annotations

import argparse
import json
import math
import struct
from pathlib import Path
from typing import Any

import psycopg
from psycopg import pq

HERE = Path(__file__).resolve().parent
DATABASE = "zcache_values_golden"
COPY_SIGNATURE = b"PGCOPY\n\xff\r\n\x00"

SCHEMA = """
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy', 'très content');
CREATE DOMAIN posint AS int4 CHECK (VALUE > 0);
CREATE DOMAIN int_list AS int4[];
CREATE DOMAIN mood_domain AS mood;
CREATE TYPE pair AS (a int, b text);
"""

# (type, [SQL expressions]); each expression is cast to the type.
CASES: list[tuple[str, list[str]]] = [
    ("bool", ["true", "false", "NULL"]),
    ("int2", ["0", "32767", "-32768"]),
    ("int4", ["42", "2147483647", "-2147483648", "NULL"]),
    ("int8", ["9223372036854775807", "-9223372036854775808", "9007199254740993", "-1"]),
    (
        "float4",
        ["1.5", "3.14", "'NaN'", "'Infinity'", "'-Infinity'", "1e38", "'1.17549435e-38'", "'-0'", "'1e-45'",
         "16777217", "0.1"],
    ),
    (
        "float8",
        ["0.1", "'NaN'", "'Infinity'", "'-Infinity'", "'1.7976931348623157e308'", "'5e-324'", "'-0'",
         "123456789012.345", "1e22", "1e-7"],
    ),
    (
        "numeric",
        ["0", "0.1", "-12.345", "1e30", "'12345678901234567890.123456789'", "'NaN'", "'Infinity'",
         "'-Infinity'", "0.000001", "'-0.00001230'", "100", "10000", "1.10", "9999.9999", "1e-20",
         "'3.1415926535897932384626433832795028841971693993751058209749445923078164062862089986280348'",
         "123456789", "-1e-6", "'1e100'", "0.00"],
    ),
    ("numeric(10,2)", ["5.5", "-0.01"]),
    ("text", ["''", "'hello'", "'héllo wörld 🎉 日本'", "E'a\"b\\\\c\\nd\\te'", "NULL"]),
    ("varchar(5)", ["'abc'"]),
    ("varchar", ["'unbounded'"]),
    ("char(5)", ["'ab'", "'abcde'"]),
    ("name", ["'pg_class'"]),
    ('"char"', ["'x'", "''", "chr(233)", "' '"]),
    ("uuid", ["'A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11'", "'00000000-0000-0000-0000-000000000000'"]),
    ("json", ["'{\"b\": 1,  \"a\": [1, 2.50]}'", "'null'", "'\"str\"'", "'12345678901234567890'", "' [1, {}] '"]),
    ("jsonb", ["'{\"b\": {\"c\": [1, 2.50, {\"d\": null}]}, \"a\": \"x\"}'", "'[]'", "'null'", "'\"é\"'", "'1e3'",
               "'{\"aa\": 1, \"b\": 2, \"a\": 3}'"]),
    ("mood", ["'happy'", "'très content'"]),
    ("posint", ["5"]),
    (
        "date",
        ["'2024-01-02'", "'1970-01-01'", "'0044-03-15 BC'", "'0001-01-01 BC'", "'4714-11-24 BC'",
         "'5874897-12-31'", "'infinity'", "'-infinity'", "'2000-01-01'", "'1999-12-31'", "'10000-01-01'"],
    ),
    ("time", ["'00:00:00'", "'03:04:05.123456'", "'23:59:59.999999'", "'24:00:00'", "'12:00:00.0005'"]),
    ("time(3)", ["'01:02:03.4567'"]),
    (
        "timetz",
        ["'03:04:05+05:30'", "'03:04:05-08'", "'23:00:00-02'", "'00:00:00+00'", "'24:00:00+00'",
         "'01:00:00+05:53:28'", "'12:34:56.789123+14'", "'24:00:00-15:59'", "'00:00:00.5+00'"],
    ),
    (
        "timestamp",
        ["'2024-01-02 03:04:05.123456'", "'1970-01-01 00:00:00'", "'1969-12-31 23:59:59.999999'",
         "'0044-03-15 12:00:00.5 BC'", "'infinity'", "'-infinity'", "'294276-12-31 23:59:59.999999'",
         "'4714-11-24 00:00:00 BC'", "'2000-01-01'", "'2262-04-11 23:47:16.854776'"],
    ),
    (
        "timestamptz",
        ["'2024-01-02 03:04:05.123456+05:30'", "'1970-01-01 00:00:00+00'", "'0044-03-15 12:00:00 BC'",
         "'infinity'", "'-infinity'", "'1800-01-01 00:00:00'", "'2024-07-01 12:00:00.001'"],
    ),
    (
        "inet",
        ["'192.168.0.1/24'", "'192.168.0.1'", "'::1'", "'::'", "'::ffff:1.2.3.4'", "'::1.2.3.4'",
         "'1:0:0:1:0:0:0:1'", "'2001:db8::/32'", "'::ffff:0:1.2.3.4'", "'1::'", "'::1/64'",
         "'0.0.0.0/0'", "'1:0:0:0:1:0:0:0'", "'fe80::abcd:0:0:1'", "'1:2:3:4:5:6:7:8'", "'::0.0.0.1'",
         "'::ffff:0.0.0.0'", "'0:0:0:0:0:1:0:0'", "'::2'", "'::1:2'", "'::ffff:1:2'", "'::ffff:0'", "'0:0:1::'",
         "'1:0:0:0:0:0:0:0/128'"],
    ),
    ("cidr", ["'192.168.0.0/24'", "'10.1.2.3'", "'::/0'", "'2001:db8::/32'", "'1:2:3:4:5:6:7:8'", "'10/8'"]),
    ("macaddr", ["'08:00:2b:01:02:03'", "'FF-FF-FF-FF-FF-FF'"]),
    ("macaddr8", ["'08:00:2b:01:02:03:04:05'"]),
    ("pg_lsn", ["'16/B374D848'", "'0/0'", "'FFFFFFFF/FFFFFFFF'"]),
    # Arrays.
    ("int4[]", ["'{1,2,3}'", "'{}'", "'{{1,2},{3,4}}'", "'{1,NULL,3}'", "'[0:1]={5,6}'",
                "'{{{1},{2}},{{3},{4}}}'", "NULL"]),
    ("int8[]", ["'{9223372036854775807,-9223372036854775808}'"]),
    ("int2[]", ["'{1,-2}'"]),
    ("text[]", ["ARRAY['a', 'b c', '\"q\"', NULL, 'é', '', 'back\\slash']", "ARRAY[E'line\\nbreak', E'tab\\t', E'\\x01']",
                "'{{a,NULL},{c,d}}'", "'{NULL}'"]),
    ("bool[]", ["'{t,f,NULL}'"]),
    ("float4[]", ["'{1.5,3.14,NaN}'"]),
    ("float8[]", ["'{1.5,NaN,Infinity,-Infinity,0.1,1e22,1e-7,-0}'"]),
    ("numeric[]", ["'{1.10,-2.5,NaN,1e30}'"]),
    ("jsonb[]", ["ARRAY['{\"a\": 1}'::jsonb, '[1, 2]', 'null', NULL, '\"s\"']"]),
    ("json[]", ["ARRAY['{\"a\" :  1}'::json, '[]']"]),
    ("timestamp[]", ["'{\"2024-01-02 03:04:05.123\",infinity,NULL}'"]),
    ("timestamptz[]", ["'{\"2024-01-02 03:04:05.123456+05:30\",-infinity}'"]),
    ("date[]", ["'{2024-01-02,NULL,infinity}'"]),
    ("time[]", ["'{03:04:05.5,24:00:00}'"]),
    ("timetz[]", ["'{03:04:05+05:30}'"]),
    ("uuid[]", ["'{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11}'"]),
    ("mood[]", ["'{happy,sad,NULL}'", "'{}'"]),
    ("varchar(3)[]", ["'{abc,d}'"]),
    ("char(3)[]", ["'{a,bc}'"]),
    ('"char"[]', ["'{a,b}'"]),
    ("inet[]", ["'{1.2.3.4/8,::1}'"]),
    ("int_list", ["'{7,8}'"]),
    # Unsupported.
    ("bytea", ["'\\x00ff'"]),
    ("interval", ["'1 day'"]),
    ("money", ["12.5"]),
    ("point", ["'(1,2)'"]),
    ("int4range", ["'[1,5)'"]),
    ("oid", ["42"]),
    ("xml", ["'<a/>'"]),
    ("bit(3)", ["B'101'"]),
    ("tsvector", ["'a b'"]),
    ("pair", ["ROW(1, 'x')"]),
    ("bytea[]", ["'{\"\\\\x00\"}'"]),
    ("posint[]", ["'{1}'"]),
    ("mood_domain", ["'ok'"]),
]

# Column defaults whose `attmissingval` JSON form `from_json` must read: (type, default, timezone).
MISSING: list[tuple[str, str, str]] = [
    ("bool", "true", "UTC"),
    ("int2", "-7", "UTC"),
    ("int4", "2147483647", "UTC"),
    ("int8", "9223372036854775807", "UTC"),
    ("int8", "-9007199254740993", "UTC"),
    ("float4", "3.14", "UTC"),
    ("float4", "'NaN'", "UTC"),
    ("float8", "0.1", "UTC"),
    ("float8", "'-Infinity'", "UTC"),
    ("float8", "1e22", "UTC"),
    ("numeric", "12.50", "UTC"),
    ("numeric", "'NaN'", "UTC"),
    ("numeric", "'Infinity'", "UTC"),
    ("numeric", "1e30", "UTC"),
    ("text", "'héllo \"q\"'", "UTC"),
    ("varchar(10)", "'v'", "UTC"),
    ("char(3)", "'a'", "UTC"),
    ('"char"', "chr(233)", "UTC"),
    ("name", "'nm'", "UTC"),
    ("uuid", "'A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11'", "UTC"),
    ("json", "'{\"b\": 1, \"a\": [1, 2]}'", "UTC"),
    ("jsonb", "'{\"b\": 1, \"a\": [1, 2]}'", "UTC"),
    ("jsonb", "'\"s\"'", "UTC"),
    ("mood", "'happy'", "UTC"),
    ("int_list", "'{1,2}'", "UTC"),
    ("date", "'2024-01-02'", "UTC"),
    ("date", "'0044-03-15 BC'", "UTC"),
    ("date", "'infinity'", "UTC"),
    ("date", "'10000-01-01'", "UTC"),
    ("time", "'03:04:05.123456'", "UTC"),
    ("time", "'24:00:00'", "UTC"),
    ("timetz", "'03:04:05+05:30'", "UTC"),
    ("timetz", "'23:00:00-02'", "UTC"),
    ("timestamp", "'2024-01-02 03:04:05.123456'", "UTC"),
    ("timestamp", "'2024-01-02 03:04:05'", "UTC"),
    ("timestamp", "'0044-03-15 12:00:00.5 BC'", "UTC"),
    ("timestamp", "'-infinity'", "UTC"),
    ("timestamptz", "'2024-01-02 03:04:05.123+00'", "UTC"),
    ("timestamptz", "'2024-01-02 03:04:05.123456+02'", "Asia/Kolkata"),
    ("timestamptz", "'1800-01-01 00:00:00+00'", "Asia/Kolkata"),
    ("timestamptz", "'0044-03-15 12:00:00+00 BC'", "America/New_York"),
    ("timestamptz", "'infinity'", "UTC"),
    ("inet", "'::ffff:1.2.3.4'", "UTC"),
    ("cidr", "'10/8'", "UTC"),
    ("macaddr", "'08:00:2b:01:02:03'", "UTC"),
    ("pg_lsn", "'16/B374D848'", "UTC"),
    ("int4[]", "'{1,NULL,3}'", "UTC"),
    ("int4[]", "'{{1,2},{3,4}}'", "UTC"),
    ("int4[]", "'{}'", "UTC"),
    ("text[]", "'{a,\"b c\"}'", "UTC"),
    ("bool[]", "'{t,f}'", "UTC"),
    ("timestamptz[]", "'{\"2024-01-01 00:00+00\",infinity}'", "Asia/Kolkata"),
    ("date[]", "'{2024-01-02}'", "UTC"),
    ("jsonb[]", "ARRAY['{\"a\": 1}'::jsonb]", "UTC"),
    ("float8[]", "'{NaN,1.5}'", "UTC"),
    ("mood[]", "'{ok}'", "UTC"),
]

# Session time zone per timestamptz case index (the text form and JSON offsets depend on it).
TIMESTAMPTZ_ZONES = ["UTC", "Asia/Kolkata", "America/New_York"]

SPEC_SQL = """
SELECT t.oid, t.typname, t.typtype, b.oid AS base_oid,
       CASE WHEN b.typsubscript = 'array_subscript_handler'::regproc THEN b.typelem ELSE 0 END AS elem_oid,
       e.typtype AS elem_kind
FROM pg_type t
JOIN pg_type b ON b.oid = CASE WHEN t.typtype = 'd' THEN t.typbasetype ELSE t.oid END
LEFT JOIN pg_type e ON e.oid = b.typelem AND b.typsubscript = 'array_subscript_handler'::regproc
WHERE t.oid = %s::regtype
"""

TEXT_LIKE = {"text", "varchar", "bpchar", "name", "char", "uuid", "json", "jsonb", "inet", "cidr", "macaddr",
             "macaddr8", "pg_lsn"}
SUPPORTED = TEXT_LIKE | {"bool", "int2", "int4", "int8", "float4", "float8", "numeric", "date", "time", "timetz",
                         "timestamp", "timestamptz"}


def column_spec(conn: psycopg.Connection, type_sql: str, name: str = "c", missing: Any = None) -> dict[str, Any]:
    row = conn.execute(SPEC_SQL, (type_sql,)).fetchone()
    assert row is not None, type_sql
    oid, typname, typtype, base_oid, elem_oid, elem_kind = row
    return {
        "name": name, "attnum": 1, "typeOid": oid, "typeName": typname, "typeKind": typtype,
        "baseTypeOid": base_oid, "elemTypeOid": elem_oid, "elemTypeKind": elem_kind, "notNull": False,
        "hasMissing": missing is not None, "missing": missing,
    }


def category(conn: psycopg.Connection, oid: int) -> tuple[str, str]:
    """(base type name, kind) of a scalar type oid: kind is the typname or 'enum'/'unsupported'."""
    typname, typtype, typbase = conn.execute(
        "SELECT typname, typtype, typbasetype FROM pg_type WHERE oid = %s", (oid,)
    ).fetchone()
    if typtype == "e":
        return typname, "enum"
    if typtype == "d":
        return typname, "unsupported"  # domains as array elements (or over enums): base unknown
    return typname, typname if typname in SUPPORTED else "unsupported"


def raw_query(conn: psycopg.Connection, query: str) -> list[list[bytes | None]]:
    """Rows of a text-format result, each value exactly as the type's output function wrote it."""
    res = conn.pgconn.exec_(query.encode())
    if res.status != pq.ExecStatus.TUPLES_OK:
        raise RuntimeError(f"{query}: {res.error_message.decode()}")
    return [[res.get_value(r, f) for f in range(res.nfields)] for r in range(res.ntuples)]


def copy_binary(conn: psycopg.Connection, query: str) -> bytes:
    out = bytearray()
    with conn.cursor() as cur, cur.copy(f"COPY ({query}) TO STDOUT (FORMAT binary)") as copy:
        for chunk in copy:
            out += chunk
    return bytes(out)


def parse_copy(stream: bytes) -> list[list[bytes | None]]:
    """An independent parser of the binary COPY format, for the fixture's expectations."""
    assert stream[:11] == COPY_SIGNATURE
    flags, ext = struct.unpack_from("!ii", stream, 11)
    assert flags == 0
    pos = 19 + ext
    rows: list[list[bytes | None]] = []
    while True:
        (count,) = struct.unpack_from("!h", stream, pos)
        pos += 2
        if count == -1:
            assert pos == len(stream)
            return rows
        row: list[bytes | None] = []
        for _ in range(count):
            (length,) = struct.unpack_from("!i", stream, pos)
            pos += 4
            if length == -1:
                row.append(None)
            else:
                row.append(stream[pos : pos + length])
                pos += length
        rows.append(row)


def real(text: str) -> dict[str, str]:
    value = float(text)
    if math.isnan(value):
        return {"t": "null"}
    return {"t": "real", "v": repr(value)}


def scalar_expected(conn: psycopg.Connection, kind: str, expr: str, text: bytes | None) -> dict[str, str]:
    """The replica value of `expr` (an SQL expression of a scalar type of `kind`)."""
    if text is None:
        return {"t": "null"}
    if kind == "bool":
        return {"t": "integer", "v": "1" if text == b"t" else "0"}
    if kind in ("int2", "int4", "int8"):
        return {"t": "integer", "v": text.decode()}
    if kind in ("float4", "float8", "numeric"):
        return real(text.decode())
    if kind in ("date", "timestamp", "timestamptz"):
        [[ms]] = raw_query(conn, f"SELECT extract(epoch FROM {expr}) * 1000")
        return real(ms.decode())
    if kind in ("time", "timetz"):
        # Whole milliseconds (truncated), UTC-normalized for timetz, wrapped into [0, 86400000]
        # only when outside it -- zero-cache's postgresTimeToMilliseconds.
        [[ms]] = raw_query(conn, f"SELECT floor(extract(epoch FROM {expr}) * 1000)")
        value = int(ms.decode())
        if value < 0 or value > 86_400_000:
            value %= 86_400_000
        return {"t": "real", "v": repr(float(value))}
    # Text-likes, enums, uuid, json(b), network types: the output function's text.
    return {"t": "text", "v": text.decode()}


def json_element(kind: str, text: bytes | None, expected: dict[str, str]) -> Any:
    if text is None or expected["t"] == "null":
        return None
    if kind == "bool":
        return expected["v"] == "1"
    if kind in ("json", "jsonb"):
        return json.loads(text)
    if expected["t"] == "integer":
        return int(expected["v"])
    if expected["t"] == "real":
        value = float(expected["v"])
        return value if math.isfinite(value) else None
    return expected["v"]


def array_expected(conn: psycopg.Connection, elem_kind: str, expr: str) -> dict[str, str]:
    [[ndims]] = raw_query(conn, f"SELECT array_ndims({expr})")
    if ndims is None:
        return {"t": "json", "v": "[]"}
    ndims_i = int(ndims)
    lengths = [int(raw_query(conn, f"SELECT array_length({expr}, {d})")[0][0]) for d in range(1, ndims_i + 1)]
    elements = raw_query(conn, f"SELECT e, i FROM unnest({expr}) WITH ORDINALITY AS u(e, i) ORDER BY i")
    flat = []
    for i, (text, _) in enumerate(elements):
        elem_expr = f"(SELECT e FROM unnest({expr}) WITH ORDINALITY AS u(e, i) WHERE i = {i + 1})"
        flat.append(json_element(elem_kind, text, scalar_expected(conn, elem_kind, elem_expr, text)))

    def nest(level: int, items: list[Any]) -> list[Any]:
        if level == len(lengths) - 1:
            return items
        step = len(items) // lengths[level]
        return [nest(level + 1, items[k * step : (k + 1) * step]) for k in range(lengths[level])]

    return {"t": "json", "v": json.dumps(nest(0, flat), ensure_ascii=False)}


def value_kind(conn: psycopg.Connection, spec: dict[str, Any]) -> tuple[str, str | None]:
    """(kind, element kind) the way ValueKind::for_column derives it."""
    if spec["typeKind"] == "e":
        return "enum", None
    base_name, base_kind = category(conn, spec["baseTypeOid"])
    if spec["elemTypeOid"]:
        _, elem_kind = category(conn, spec["elemTypeOid"])
        return ("array", elem_kind) if elem_kind != "unsupported" else ("unsupported", None)
    if spec["typeKind"] == "d" and base_kind == "enum":
        return "unsupported", None
    return base_kind, None


def capture_values(conn: psycopg.Connection) -> list[dict[str, Any]]:
    out = []
    for type_sql, exprs in CASES:
        spec = column_spec(conn, type_sql)
        kind, elem_kind = value_kind(conn, spec)
        for n, raw_expr in enumerate(exprs):
            zone = TIMESTAMPTZ_ZONES[n % len(TIMESTAMPTZ_ZONES)] if "timestamptz" in type_sql else "UTC"
            conn.execute(f"SET TimeZone = '{zone}'")
            expr = f"({raw_expr})::{type_sql}"
            stream = copy_binary(conn, f"SELECT {expr}")
            [[binary]] = parse_copy(stream)
            [[text]] = raw_query(conn, f"SELECT {expr}")
            if kind == "unsupported":
                expected = {"t": "unsupported"}
            elif kind == "array":
                expected = {"t": "null"} if text is None else array_expected(conn, elem_kind or "", expr)
            else:
                expected = scalar_expected(conn, kind, expr, text)
            out.append({
                "type": type_sql, "expr": raw_expr, "timezone": zone, "spec": spec,
                "binary": None if binary is None else binary.hex(),
                "text": None if text is None else text.decode(),
                "expected": expected,
            })
    conn.execute("SET TimeZone = 'UTC'")
    return out


def capture_missing(conn: psycopg.Connection) -> list[dict[str, Any]]:
    out = []
    for n, (type_sql, default, zone) in enumerate(MISSING):
        table = f"missing_{n}"
        conn.execute(f"CREATE TABLE {table} (id int)")
        conn.execute(f"INSERT INTO {table} VALUES (1)")
        conn.execute(f"ALTER TABLE {table} ADD COLUMN c {type_sql} DEFAULT ({default})::{type_sql}")
        conn.execute(f"SET TimeZone = '{zone}'")
        rows = raw_query(
            conn,
            f"SELECT array_to_json(attmissingval)->0 FROM pg_attribute "
            f"WHERE attrelid = '{table}'::regclass AND attname = 'c' AND atthasmissing",
        )
        assert rows, f"no attmissingval for {type_sql} DEFAULT {default}"
        [[missing]] = rows
        assert missing is not None, (type_sql, default)
        # The value every pre-existing row reads, through the same path as the decode cases.
        expr = f"(SELECT c FROM {table})"
        [[text]] = raw_query(conn, f"SELECT {expr}")
        spec = column_spec(conn, type_sql, missing=json.loads(missing))
        kind, elem_kind = value_kind(conn, spec)
        if kind == "array":
            expected = array_expected(conn, elem_kind or "", expr)
        else:
            expected = scalar_expected(conn, kind, expr, text)
        out.append({
            "type": type_sql, "default": default, "timezone": zone, "spec": spec,
            "json": missing.decode(), "expected": expected,
        })
        conn.execute("SET TimeZone = 'UTC'")
    return out


COPY_FIXTURE = """
CREATE TABLE copy_fixture (id int4, label text, amount numeric, at timestamptz, ok bool, doc jsonb, tags int4[]);
INSERT INTO copy_fixture VALUES
  (1, 'one', 1.5, '2024-01-02 03:04:05.123456+00', true, '{"a": 1}', '{1,2}'),
  (2, NULL, NULL, NULL, NULL, NULL, NULL),
  (3, repeat('long é ', 300), '-123456789.000001', 'infinity', false, '[1, "two", null]', '{}'),
  (4, '', 0, '1970-01-01 00:00:00+00', true, 'null', '{{1,NULL},{3,4}}'),
  (5, 'five', 'NaN', '-infinity', NULL, '{}', '{5}');
"""


def capture_copy(conn: psycopg.Connection) -> tuple[bytes, dict[str, Any]]:
    for statement in COPY_FIXTURE.split(";"):
        if statement.strip():
            conn.execute(statement)
    stream = copy_binary(conn, "SELECT * FROM copy_fixture ORDER BY id")
    rows = parse_copy(stream)
    columns = [
        column_spec(conn, type_sql, name)
        for name, type_sql in conn.execute(
            "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute "
            "WHERE attrelid = 'copy_fixture'::regclass AND attnum > 0 ORDER BY attnum"
        ).fetchall()
    ]
    for n, column in enumerate(columns):
        column["attnum"] = n + 1
    return stream, {
        "columns": columns,
        "rows": [[None if f is None else f.hex() for f in row] for row in rows],
    }


def capture(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as admin:
        admin.execute(f"DROP DATABASE IF EXISTS {DATABASE}")
        admin.execute(f"CREATE DATABASE {DATABASE} TEMPLATE template0 ENCODING 'UTF8'")
    try:
        with psycopg.connect(dsn, dbname=DATABASE, autocommit=True) as conn:
            conn.execute("SET DateStyle = 'ISO, MDY'")
            conn.execute("SET extra_float_digits = 1")
            conn.execute(SCHEMA)
            [[version]] = raw_query(conn, "SHOW server_version")
            values = capture_values(conn)
            missing = capture_missing(conn)
            stream, copy_rows = capture_copy(conn)
        server = (version or b"").decode()
        (HERE / "values.json").write_text(
            json.dumps({"server_version": server, "values": values, "missing": missing}, indent=1,
                       ensure_ascii=False) + "\n",
            encoding="utf-8",
        )
        (HERE / "copy.bin").write_bytes(stream)
        (HERE / "copy.json").write_text(
            json.dumps({"server_version": server, **copy_rows}, indent=1, ensure_ascii=False) + "\n",
            encoding="utf-8",
        )
        print(f"{len(values)} values, {len(missing)} missing, {len(copy_rows['rows'])} COPY rows from {server}")
    finally:
        with psycopg.connect(dsn, autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {DATABASE}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dsn", help="an existing server (default: a throwaway embedded cluster)")
    args = parser.parse_args()
    if args.dsn:
        capture(args.dsn)
        return
    from zcache.embedded_pg import EmbeddedPostgres

    with EmbeddedPostgres.throwaway() as pg:
        capture(pg.dsn())


if __name__ == "__main__":
    main()
