"""The replication stream's batching against a real walsender (`change_source/stream.py`).

* a backlog the walsender has already sent arrives as one batch, not one socket read at a time;
* the frame cap bounds a batch;
* a keepalive that asks for a reply ends its batch, so the caller can answer at once.
"""

from __future__ import annotations

import struct
from typing import Any

import psycopg
import pytest
import trio
from psycopg.conninfo import make_conninfo

from tests.fixtures.replica_oracle import emit_marker, parse_lsn
from zcache.change_source.stream import ReplicationStream, StreamStart, wants_reply

SLOT = "stream_test"
PUBLICATION = "stream_test"
TRANSACTIONS = 300
TIMEOUT_S = 20


def _message_type(frame: bytes) -> bytes:
    """The pgoutput message type of an XLogData frame ('w', then 3 × 8 bytes of LSNs and time)."""
    return frame[25:26] if frame[:1] == b"w" else b""


@pytest.fixture
def backlog(pg_conn: psycopg.Connection[Any]) -> int:
    """A slot with TRANSACTIONS single-row transactions and then a marker; the marker's LSN."""
    pg_conn.execute("CREATE TABLE item (id int PRIMARY KEY, n int NOT NULL)")
    pg_conn.execute(f"CREATE PUBLICATION {PUBLICATION} FOR TABLE item")
    pg_conn.execute(f"SELECT pg_create_logical_replication_slot('{SLOT}', 'pgoutput')")
    for i in range(TRANSACTIONS):
        pg_conn.execute("INSERT INTO item VALUES (%s, %s)", [i, i])
    return emit_marker(pg_conn)


async def _open(dsn: str) -> ReplicationStream:
    return await ReplicationStream.open(dsn, StreamStart(SLOT, 0, (PUBLICATION,)))


async def _wait_sent(conn: psycopg.Connection[Any], lsn: int) -> None:
    """Until the walsender has sent everything up to `lsn` (it waits in our socket)."""
    with trio.fail_after(TIMEOUT_S):
        while True:
            row = conn.execute("SELECT sent_lsn FROM pg_stat_replication WHERE sent_lsn IS NOT NULL").fetchone()
            if row is not None and parse_lsn(row[0]) >= lsn:
                return
            await trio.sleep(0.02)


async def test_a_sent_backlog_arrives_as_one_batch(pg_dsn: str, pg_conn: psycopg.Connection[Any], backlog: int) -> None:
    stream = await _open(pg_dsn)
    try:
        await _wait_sent(pg_conn, backlog)
        frames = await stream.read_batch(max_frames=100_000, max_bytes=16 << 20, timeout_s=TIMEOUT_S)
    finally:
        await stream.aclose()
    types = [_message_type(f) for f in frames]
    # Every insert and commit, and the marker (a transaction of its own), in one batch: far more
    # than libpq's first socket read (16 KB) holds.
    assert types.count(b"I") == TRANSACTIONS
    assert types.count(b"C") == TRANSACTIONS + 1
    assert any(b"zcache-test" in f for f in frames)
    assert sum(map(len, frames)) > 32_768


async def test_the_frame_cap_bounds_a_batch(pg_dsn: str, pg_conn: psycopg.Connection[Any], backlog: int) -> None:
    stream = await _open(pg_dsn)
    try:
        await _wait_sent(pg_conn, backlog)
        first = await stream.read_batch(max_frames=7, max_bytes=16 << 20, timeout_s=TIMEOUT_S)
        rest = await stream.read_batch(max_frames=100_000, max_bytes=1_000, timeout_s=TIMEOUT_S)
    finally:
        await stream.aclose()
    assert len(first) == 7
    # The byte budget stops the batch at the first frame that reaches it.
    assert sum(map(len, rest[:-1])) < 1_000 <= sum(map(len, rest))


async def test_a_keepalive_that_wants_a_reply_ends_its_batch(pg_dsn: str, pg_conn: psycopg.Connection[Any]) -> None:
    pg_conn.execute("CREATE TABLE item (id int PRIMARY KEY)")
    pg_conn.execute(f"CREATE PUBLICATION {PUBLICATION} FOR TABLE item")
    pg_conn.execute(f"SELECT pg_create_logical_replication_slot('{SLOT}', 'pgoutput')")
    # The walsender asks for a reply once half of its timeout has passed without one; this
    # stream never sends one.
    stream = await _open(make_conninfo(pg_dsn, options="-c wal_sender_timeout=2s"))
    try:
        with trio.fail_after(TIMEOUT_S):
            while True:
                frames = await stream.read_batch(max_frames=100_000, max_bytes=16 << 20, timeout_s=0.2)
                asking = [i for i, f in enumerate(frames) if wants_reply(f)]
                if asking:
                    break
        assert asking == [len(frames) - 1]
        await stream.send_status(0, reply=False)
    finally:
        await stream.aclose()


def test_wants_reply_reads_the_keepalive_flag() -> None:
    keepalive = b"k" + struct.pack("!QQ", 0x1_0000_0000, 123)
    assert wants_reply(keepalive + b"\x01")
    assert not wants_reply(keepalive + b"\x00")
    # An XLogData frame of the same length is not a keepalive, whatever its last byte.
    assert not wants_reply(b"w" + bytes(16) + b"\x01")
