"""Capture a real PostgreSQL pgoutput (protocol v1) replication stream as golden test bytes.

Runs a fixed workload against a PostgreSQL 15 server with ``wal_level = logical`` and records
every CopyData frame the walsender sends, byte for byte, to ``stream.bin`` next to this file.
``tests/rust/pgoutput_golden.rs`` decodes those frames and compares the rendering with
``stream.txt``; after re-capturing, regenerate and review it::

    ZCACHE_UPDATE_GOLDEN=1 cargo test --test pgoutput_golden
    git diff tests/golden/pgoutput/stream.txt     # read it: it must be right

Re-running (needs a superuser and a server it may create a database on; nothing is left behind
but that database, which is dropped and re-created on each run)::

    mkdir -p /tmp/pgcap && chown postgres /tmp/pgcap
    runuser -u postgres -- /usr/lib/postgresql/15/bin/initdb -D /tmp/pgcap/data \\
        --auth=trust -U postgres -E UTF8 --locale=C.UTF-8
    printf "wal_level=logical\\nport=6600\\nlisten_addresses='127.0.0.1'\\n\\
    unix_socket_directories='/tmp/pgcap'\\n" >> /tmp/pgcap/data/postgresql.conf
    runuser -u postgres -- /usr/lib/postgresql/15/bin/pg_ctl -D /tmp/pgcap/data -l /tmp/pgcap/log start
    .venv/bin/python tests/golden/pgoutput/capture.py --dsn postgresql://postgres@127.0.0.1:6600/postgres
    runuser -u postgres -- /usr/lib/postgresql/15/bin/pg_ctl -D /tmp/pgcap/data stop

Container format of ``stream.bin``: the 8 ASCII bytes ``ZCPGFRM1``, then one record per
CopyData frame in arrival order: a big-endian u32 byte length followed by the frame's bytes
(first byte ``w`` for XLogData or ``k`` for a primary keepalive). Nothing else.

Two replication sessions are recorded, one after the other:

1. ``proto_version '1', messages 'true'`` on a publication of every table: text-format values.
2. The same plus ``binary 'true'``, on a publication of only the ``everything`` table: the
   ``b`` (binary) tuple column kind.

Workload (one transaction per step unless said otherwise):

* ``items`` (primary key): insert two rows (one NULL), update a non-key column (``U … N``),
  update the primary key (``U … K … N``), delete (``D … K``);
* ``everything``: a row with every common type (int2/4/8, numeric, float4/8, bool, text, varchar,
  json, jsonb, timestamp, timestamptz, date, time, uuid, bytea, int4[], an enum — the enum
  triggers a ``Y`` Type message), a row of NULLs, a row of edge values (limits, NaN, Infinity,
  infinity timestamps, empty strings), then an update;
* ``full_ident`` (``REPLICA IDENTITY FULL``): insert, update and delete (``O`` old tuples);
* ``docs``: a 4000-character random (incompressible, ``STORAGE EXTERNAL``) text, then an update of
  another column, which sends that value as ``u`` (unchanged TOAST);
* a transaction replicated "from" a replication origin (``O`` Origin message);
* a transactional ``pg_logical_emit_message(true, 'zero/0/ddl', '{…}')`` next to an insert, and a
  non-transactional one (sent outside any Begin/Commit);
* ``ALTER TABLE items ADD COLUMN`` then an insert: a second ``R`` Relation message for ``items``;
* ``TRUNCATE items, full_ident RESTART IDENTITY``: one ``T`` message naming two relations;
* keepalives: the walsender runs with ``wal_sender_timeout = 2s``; the capture sends no status
  update until the walsender sends a keepalive requesting one (after 1 s), answers it, and stops at
  the first such keepalive after the ``zcache/capture`` end-marker message.
"""

from __future__ import annotations

import argparse
import random
import select
import struct
import sys
import time
from pathlib import Path

import psycopg
from psycopg import pq
from psycopg.conninfo import make_conninfo

HERE = Path(__file__).resolve().parent
MAGIC = b"ZCPGFRM1"
DATABASE = "zcache_pgoutput_capture"
PG_EPOCH_UNIX_S = 946_684_800

SCHEMA = """
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
CREATE TABLE items (id int PRIMARY KEY, name text);
CREATE TABLE everything (
    id bigint PRIMARY KEY,
    c_int2 int2, c_int4 int4, c_int8 int8, c_numeric numeric(12, 3),
    c_float4 float4, c_float8 float8, c_bool bool, c_text text, c_varchar varchar(20),
    c_json json, c_jsonb jsonb, c_timestamp timestamp, c_timestamptz timestamptz,
    c_date date, c_time time, c_uuid uuid, c_bytea bytea, c_int4_array int4[], c_mood mood
);
CREATE TABLE full_ident (id int PRIMARY KEY, v text);
ALTER TABLE full_ident REPLICA IDENTITY FULL;
CREATE TABLE docs (id int PRIMARY KEY, body text, n int);
ALTER TABLE docs ALTER COLUMN body SET STORAGE EXTERNAL;
CREATE PUBLICATION zcache_capture FOR ALL TABLES;
CREATE PUBLICATION zcache_capture_binary FOR TABLE everything;
SELECT pg_replication_origin_create('capture_origin');
"""


def workload(dsn: str) -> None:
    """The fixed sequence of transactions; each `with conn.transaction()` is one commit."""
    big = "".join(random.Random(20240229).choices("abcdefghijklmnopqrstuvwxyz0123456789", k=4000))
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SET TimeZone = 'UTC'")
        with conn.transaction():
            conn.execute("INSERT INTO items VALUES (1, 'one'), (2, NULL)")
        with conn.transaction():
            conn.execute("UPDATE items SET name = 'uno' WHERE id = 1")
        with conn.transaction():
            conn.execute("UPDATE items SET id = 10 WHERE id = 1")
        with conn.transaction():
            conn.execute("DELETE FROM items WHERE id = 2")
        with conn.transaction():
            conn.execute(
                """INSERT INTO everything VALUES
                (1, 12, 123456, 1234567890123, 12345.678, 1.5, -2.25e-10, true,
                 'héllo "quoted" \\ back', 'abc', '{"a": [1, 2.5, null]}', '{"b": true}',
                 '2024-02-29 12:34:56.789012', '2024-02-29 12:34:56.789012+02', '2024-02-29',
                 '23:59:59.5', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '\\xdeadbeef00',
                 '{1,2,NULL,4}', 'happy'),
                (2, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
                 NULL, NULL, NULL, NULL, NULL, NULL, NULL),
                (3, -32768, -2147483648, 9223372036854775807, 'NaN', '-Infinity', 'NaN', false,
                 '', '', 'null', '[]', 'infinity', '-infinity', '4713-01-01 BC', '00:00',
                 '00000000-0000-0000-0000-000000000000', '', '{}', 'sad')"""
            )
        with conn.transaction():
            conn.execute("UPDATE everything SET c_int4 = c_int4 + 1, c_mood = 'ok' WHERE id = 1")
        with conn.transaction():
            conn.execute("INSERT INTO full_ident VALUES (1, 'first')")
        with conn.transaction():
            conn.execute("UPDATE full_ident SET v = 'second' WHERE id = 1")
        with conn.transaction():
            conn.execute("DELETE FROM full_ident WHERE id = 1")
        with conn.transaction():
            conn.execute("INSERT INTO docs VALUES (1, %s, 1)", (big,))
        with conn.transaction():
            conn.execute("UPDATE docs SET n = 2 WHERE id = 1")
        with conn.transaction():
            conn.execute("SELECT pg_replication_origin_session_setup('capture_origin')")
            conn.execute("SELECT pg_replication_origin_xact_setup('0/ABCDEF', '2024-01-01 00:00:00+00')")
            conn.execute("INSERT INTO items VALUES (3, 'from origin')")
        conn.execute("SELECT pg_replication_origin_session_reset()")
        with conn.transaction():
            conn.execute(
                "SELECT pg_logical_emit_message(true, 'zero/0/ddl', %s)",
                ('{"type":"ddlUpdate","version":1,"event":{"tag":"ALTER TABLE"}}',),
            )
            conn.execute("INSERT INTO items VALUES (4, 'with ddl message')")
        conn.execute("SELECT pg_logical_emit_message(false, 'zero/0/ping', 'non-transactional')")
        conn.execute("ALTER TABLE items ADD COLUMN note text DEFAULT 'n/a'")
        with conn.transaction():
            conn.execute("INSERT INTO items VALUES (5, 'five', 'has a note')")
        with conn.transaction():
            conn.execute("TRUNCATE items, full_ident RESTART IDENTITY")
        conn.execute("SELECT pg_logical_emit_message(true, 'zcache/capture', 'end')")


def standby_status(lsn: int, reply: bool = False) -> bytes:
    now_us = int((time.time() - PG_EPOCH_UNIX_S) * 1_000_000)
    return b"r" + struct.pack("!QQQqB", lsn, lsn, lsn, now_us, int(reply))


def read_stream(conn: psycopg.Connection, command: bytes, *, deadline: float) -> list[bytes]:
    """START_REPLICATION on `conn` and collect frames until the end marker and a reply-requested
    keepalive have both been seen."""
    pg = conn.pgconn
    pg.send_query(command)
    while True:
        pg.consume_input()
        if not pg.is_busy():
            break
        select.select([pg.socket], [], [], 1.0)
    result = pg.get_result()
    if result is None or result.status != pq.ExecStatus.COPY_BOTH:
        raise RuntimeError(f"START_REPLICATION failed: {pg.error_message.decode()}")
    pg.nonblocking = 1

    frames: list[bytes] = []
    seen_end = False
    while time.monotonic() < deadline:
        n, buf = pg.get_copy_data(1)
        if n == 0:
            select.select([pg.socket], [], [], 0.5)
            pg.consume_input()
            continue
        if n < 0:
            raise RuntimeError(f"replication stream ended: {pg.error_message.decode()}")
        frame = bytes(buf)
        frames.append(frame)
        if frame[:1] == b"w" and b"zcache/capture\x00" in frame:
            seen_end = True
        if frame[:1] == b"k" and frame[-1] == 1:
            # Reply at once, as production must (else the walsender times out after 2 s).
            (wal_end,) = struct.unpack_from("!Q", frame, 1)
            pg.put_copy_data(standby_status(wal_end))
            pg.flush()
            if seen_end:
                return frames
    raise TimeoutError(f"no end marker and reply-requested keepalive after {len(frames)} frames")


def replication_connection(dsn: str) -> psycopg.Connection:
    return psycopg.connect(
        dsn,
        dbname=DATABASE,
        replication="database",
        autocommit=True,
        options="-c wal_sender_timeout=2s -c TimeZone=UTC -c DateStyle=ISO -c extra_float_digits=1",
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dsn", default="postgresql://postgres@127.0.0.1:6600/postgres")
    parser.add_argument("--out", type=Path, default=HERE / "stream.bin")
    args = parser.parse_args()

    with psycopg.connect(args.dsn, autocommit=True) as admin:
        admin.execute(f"DROP DATABASE IF EXISTS {DATABASE}")
        admin.execute(f"CREATE DATABASE {DATABASE} ENCODING 'UTF8' TEMPLATE template0")
    dsn = make_conninfo(args.dsn, dbname=DATABASE)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(SCHEMA)

    # Slots are created before the workload so that both streams start before it.
    text_conn = replication_connection(args.dsn)
    binary_conn = replication_connection(args.dsn)
    for conn, slot in ((text_conn, "zcache_capture_text"), (binary_conn, "zcache_capture_binary")):
        conn.execute(f"CREATE_REPLICATION_SLOT {slot} TEMPORARY LOGICAL pgoutput (SNAPSHOT 'nothing')")

    workload(dsn)

    deadline = time.monotonic() + 60
    frames = read_stream(
        text_conn,
        b"START_REPLICATION SLOT zcache_capture_text LOGICAL 0/0 "
        b"(proto_version '1', publication_names 'zcache_capture', messages 'true')",
        deadline=deadline,
    )
    frames += read_stream(
        binary_conn,
        b"START_REPLICATION SLOT zcache_capture_binary LOGICAL 0/0 "
        b"(proto_version '1', publication_names 'zcache_capture_binary', messages 'true', binary 'true')",
        deadline=deadline,
    )
    text_conn.close()
    binary_conn.close()

    with psycopg.connect(args.dsn, autocommit=True) as admin:
        admin.execute(f"DROP DATABASE {DATABASE}")

    out = bytearray(MAGIC)
    for frame in frames:
        out += struct.pack("!I", len(frame)) + frame
    args.out.write_bytes(bytes(out))
    kinds = {k: sum(1 for f in frames if f[:1] == k) for k in (b"w", b"k")}
    print(f"wrote {len(frames)} frames ({kinds[b'w']} XLogData, {kinds[b'k']} keepalives) to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
