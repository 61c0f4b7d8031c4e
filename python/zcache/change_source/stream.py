"""The logical replication stream, read under Trio without blocking the event loop.

psycopg 3 has no replication API, but its libpq wrapper (`psycopg.pq.PGconn`) has everything the
protocol needs. A `replication="database"` connection sends `START_REPLICATION … LOGICAL`; the
server answers with CopyBoth and then streams CopyData frames (XLogData with a pgoutput message,
or a primary keepalive). The socket is non-blocking: `read_batch` takes every frame that has
arrived, reading the socket again until it would block (bounded by a frame count and a byte
budget), and waits with `trio.lowlevel.wait_readable` only when nothing has arrived. So a backlog
comes in large batches, and a live stream in whatever arrived together. Frames go to Rust as they
are; the only thing this module reads in them is a keepalive's "reply requested" flag, so that
the caller can answer at once (`wants_reply`).

Standby status updates (write/flush/apply LSN) are encoded by Rust and written with
`put_copy_data`; a full socket buffer is waited out with `wait_writable`. Status updates may come
from more than one task (a prompt keepalive reply, the status after a batch), so they take turns.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import psycopg
import trio
from psycopg import pq, sql

from zcache import _native

# Postgres timestamps count from 2000-01-01.
_PG_EPOCH_OFFSET_S = 946_684_800


class ReplicationStreamError(Exception):
    """The replication connection failed or the server ended the stream; reconnecting may help."""

    def __init__(self, message: str, *, sqlstate: str | None = None) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate


class SlotUnusableError(ReplicationStreamError):
    """The replication slot is gone or can no longer stream (invalidated): only a resync helps."""


# SQLSTATEs with which START_REPLICATION refuses a slot that is missing or invalidated.
_SLOT_GONE_STATES = {"42704", "55000"}

# Primary keepalive message: Byte1('k'), Int64 WAL end, Int64 send time, Byte1 reply requested.
_KEEPALIVE = ord("k")
_KEEPALIVE_LENGTH = 18


def wants_reply(frame: bytes) -> bool:
    """Whether `frame` is a keepalive with which the server asks for a status update now."""
    return len(frame) == _KEEPALIVE_LENGTH and frame[0] == _KEEPALIVE and frame[17] != 0


@dataclass(frozen=True)
class StreamStart:
    slot: str
    start_lsn: int
    publications: tuple[str, ...]


def _start_command(start: StreamStart) -> bytes:
    publication_names = ",".join(sql.Identifier(p).as_string() for p in start.publications)
    options = sql.SQL(
        "START_REPLICATION SLOT {slot} LOGICAL {lsn} "
        "(proto_version '1', publication_names {pubs}, messages 'true', binary 'true')"
    ).format(
        slot=sql.Identifier(start.slot),
        lsn=sql.SQL(_native.format_lsn(start.start_lsn)),
        pubs=sql.Literal(publication_names),
    )
    return options.as_string().encode()


class ReplicationStream:
    """One START_REPLICATION session. Use `open()`; close with `aclose()`."""

    def __init__(self, conn: psycopg.Connection[tuple[object, ...]]) -> None:
        self._conn = conn
        self._pg = conn.pgconn
        self._sending = trio.Lock()
        self._sent_lsn = 0

    @classmethod
    async def open(cls, dsn: str, start: StreamStart) -> ReplicationStream:
        try:
            conn = await trio.to_thread.run_sync(
                lambda: psycopg.connect(dsn, replication="database", autocommit=True, connect_timeout=10)
            )
        except psycopg.OperationalError as e:
            raise ReplicationStreamError(f"cannot open the replication connection: {e}") from e
        stream = cls(conn)
        try:
            await stream._start(start)
        except BaseException:
            conn.close()
            raise
        return stream

    async def _start(self, start: StreamStart) -> None:
        pg = self._pg
        pg.nonblocking = 1
        pg.send_query(_start_command(start))
        await self._flush_output()
        while True:
            pg.consume_input()
            if not pg.is_busy():
                break
            await trio.lowlevel.wait_readable(pg.socket)
        result = pg.get_result()
        if result is None or result.status != pq.ExecStatus.COPY_BOTH:
            message = (result.error_message.decode(errors="replace") if result is not None else pg.error_message.decode())
            sqlstate = result.error_field(pq.DiagnosticField.SQLSTATE) if result is not None else None
            state = sqlstate.decode() if sqlstate else None
            error = SlotUnusableError if state in _SLOT_GONE_STATES else ReplicationStreamError
            raise error(f"START_REPLICATION on slot {start.slot} failed: {message.strip()}", sqlstate=state)

    async def read_batch(self, *, max_frames: int, max_bytes: int, timeout_s: float) -> list[bytes]:
        """The frames that have arrived, read until the socket would block (waiting up to
        `timeout_s` for the first one). Stops early at `max_frames` frames or `max_bytes` bytes,
        and after a keepalive that wants a reply (`wants_reply`)."""
        pg = self._pg
        get_copy_data = pg.get_copy_data
        frames: list[bytes] = []
        append = frames.append
        size = 0
        read_since_frame = False  # the socket was read since the last complete frame
        while len(frames) < max_frames and size < max_bytes:
            n, buffer = get_copy_data(1)
            if n > 0:
                frame = bytes(buffer)
                append(frame)
                size += n
                read_since_frame = False
                if n == _KEEPALIVE_LENGTH and wants_reply(frame):
                    break
                continue
            if n < 0:
                self._raise_end()
            if read_since_frame:
                break  # reading the socket brought no complete frame: it would block
            if not frames:
                with trio.move_on_after(timeout_s):
                    await trio.lowlevel.wait_readable(pg.socket)
            self._consume()
            read_since_frame = True
        # Let other tasks run even when frames keep arriving.
        await trio.lowlevel.checkpoint()
        return frames

    async def send_status(self, lsn: int, *, reply: bool = False) -> None:
        """Reports `lsn` as written, flushed and applied (never less than an earlier report)."""
        pg = self._pg
        async with self._sending:
            lsn = max(lsn, self._sent_lsn)
            self._sent_lsn = lsn
            now_us = int((time.time() - _PG_EPOCH_OFFSET_S) * 1_000_000)
            message = _native.encode_standby_status(lsn, lsn, lsn, now_us, reply)
            while True:
                sent = pg.put_copy_data(message)
                if sent == 1:
                    break
                if sent < 0:
                    self._raise_end()
                await trio.lowlevel.wait_writable(pg.socket)
            await self._flush_output()

    async def _flush_output(self) -> None:
        pg = self._pg
        while True:
            pending = pg.flush()
            if pending == 0:
                return
            if pending < 0:
                self._raise_end()
            await trio.lowlevel.wait_writable(pg.socket)

    def _consume(self) -> None:
        try:
            self._pg.consume_input()
        except psycopg.OperationalError as e:
            raise ReplicationStreamError(f"replication connection lost: {e}") from e

    def _raise_end(self) -> None:
        result = self._pg.get_result()
        message = self._pg.error_message.decode(errors="replace").strip()
        if result is not None and result.error_message:
            message = result.error_message.decode(errors="replace").strip()
        raise ReplicationStreamError(f"the replication stream ended: {message or 'closed by the server'}")

    async def aclose(self) -> None:
        conn = self._conn
        # Closing sends a Terminate message; libpq does it quickly, but keep it off the loop.
        await trio.to_thread.run_sync(conn.close)
