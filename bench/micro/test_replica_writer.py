"""The Rust replica writer alone: pgoutput frames in, SQLite rows out, no network, no Postgres.

Frames are encoded here from the protocol documentation ("Logical Replication Message Formats",
PostgreSQL 15; the same encoding as tests/native/test_pgoutput.py), with binary tuple values as
zcache asks for them (`binary 'true'`). Each round applies one batch to a fresh copy of a replica
built by `_native.InitialSync` (one table shaped like tldraw's `file`, 10k rows), through
`ReplicaWriter.apply_frames`: decoding, the row writes, the change log, the commit with
`synchronous = FULL` (so a round includes the replica's fsyncs, as in production).

    make bench PYTEST_ARGS="-k replica_writer"
    .venv/bin/python -m pytest bench/micro/test_replica_writer.py --benchmark-enable

Without `--benchmark-enable` each benchmark runs once on a small batch, as a smoke test.
"""

from __future__ import annotations

import json
import shutil
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from zcache import _native

OID = 16_390
CONSISTENT_POINT = 0x1_0000_0000
EXISTING_ROWS = 10_000
# Batches when benchmarking, and when only smoke-testing (benchmarks disabled).
LARGE_TX_ROWS = (10_000, 500)
SINGLE_TXS = (1_000, 50)

# (name, type oid, type name, pg_type.typtype) of a table shaped like tldraw's `file`.
COLUMNS = (
    ("id", 1043, "varchar"),
    ("name", 1043, "varchar"),
    ("ownerId", 1043, "varchar"),
    ("shared", 16, "bool"),
    ("createdAt", 20, "int8"),
    ("updatedAt", 20, "int8"),
    ("isDeleted", 16, "bool"),
    ("createSource", 1043, "varchar"),
)


def schema_json() -> str:
    columns = [
        {
            "name": name, "attnum": i + 1, "typeOid": oid, "typeName": type_name, "typeKind": "b",
            "baseTypeOid": oid, "elemTypeOid": 0, "elemTypeKind": None, "notNull": name != "createSource",
            "hasMissing": False, "missing": None,
        }
        for i, (name, oid, type_name) in enumerate(COLUMNS)
    ]
    table = {"oid": OID, "schema": "public", "name": "file", "replicaIdentity": "f", "primaryKey": ["id"],
             "columns": columns}
    return json.dumps({"tables": [table]})


def row(i: int, updated: int = 0) -> tuple[Any, ...]:
    return (f"f{i:07d}", f"Untitled {i}", f"u{i % 1000:06d}", i % 3 == 0, 1_704_067_200_000 + i,
            1_704_067_200_000 + i + updated, False, None if i % 8 else "duplicate")


def binary_value(value: Any) -> bytes | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return b"\x01" if value else b"\x00"
    if isinstance(value, int):
        return struct.pack("!q", value)
    return str(value).encode()


# -- binary COPY (the initial sync's input) -----------------------------------------------------------


COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack("!ii", 0, 0)
COPY_TRAILER = struct.pack("!h", -1)


def copy_tuple(r: tuple[Any, ...]) -> bytes:
    out = bytearray(struct.pack("!h", len(r)))
    for value in r:
        raw = binary_value(value)
        out += struct.pack("!i", -1) if raw is None else struct.pack("!i", len(raw)) + raw
    return bytes(out)


def copy_stream(rows: list[tuple[Any, ...]]) -> bytes:
    return COPY_HEADER + b"".join(map(copy_tuple, rows)) + COPY_TRAILER


def copy_messages(rows: list[tuple[Any, ...]]) -> list[bytes]:
    """The COPY stream as Postgres sends it: a CopyData message per row (the header with the
    first), the trailer alone."""
    tuples = [copy_tuple(r) for r in rows] or [b""]
    return [COPY_HEADER + tuples[0], *tuples[1:], COPY_TRAILER]


# -- pgoutput v1 frames ----------------------------------------------------------------------------


def cstr(text: str) -> bytes:
    return text.encode() + b"\x00"


def xlogdata(lsn: int, message: bytes) -> bytes:
    return b"w" + struct.pack("!QQq", lsn, lsn, 0) + message


def tuple_data(values: tuple[Any, ...]) -> bytes:
    out = bytearray(struct.pack("!h", len(values)))
    for value in values:
        raw = binary_value(value)
        out += b"n" if raw is None else b"b" + struct.pack("!i", len(raw)) + raw
    return bytes(out)


def relation() -> bytes:
    body = bytearray(b"R" + struct.pack("!I", OID) + cstr("public") + cstr("file") + b"f")
    body += struct.pack("!h", len(COLUMNS))
    for name, type_oid, _ in COLUMNS:
        body += struct.pack("!b", 1 if name == "id" else 0) + cstr(name) + struct.pack("!Ii", type_oid, -1)
    return bytes(body)


@dataclass
class Stream:
    """Frames of consecutive transactions, LSNs increasing from just above the consistent point."""

    lsn: int = CONSISTENT_POINT + 0x100
    xid: int = 1000

    def transaction(self, changes: list[bytes]) -> list[bytes]:
        commit_lsn = self.lsn + 0x40 * (len(changes) + 1)
        end_lsn = commit_lsn + 0x30
        frames = [xlogdata(self.lsn, b"B" + struct.pack("!QqI", commit_lsn, 0, self.xid))]
        for k, change in enumerate(changes):
            frames.append(xlogdata(self.lsn + 0x40 * (k + 1), change))
        frames.append(xlogdata(commit_lsn, b"C" + struct.pack("!BQQq", 0, commit_lsn, end_lsn, 0)))
        self.lsn = end_lsn + 0x10
        self.xid += 1
        return frames


def insert(values: tuple[Any, ...]) -> bytes:
    return b"I" + struct.pack("!I", OID) + b"N" + tuple_data(values)


def update_full(old: tuple[Any, ...], new: tuple[Any, ...]) -> bytes:
    """An UPDATE under REPLICA IDENTITY FULL: the whole old row, then the new one."""
    return b"U" + struct.pack("!I", OID) + b"O" + tuple_data(old) + b"N" + tuple_data(new)


def large_insert(n: int) -> tuple[list[bytes], int, int]:
    stream = Stream()
    frames = [xlogdata(stream.lsn, relation())]
    frames += stream.transaction([insert(row(EXISTING_ROWS + i)) for i in range(n)])
    return frames, n, 1


def large_update(n: int) -> tuple[list[bytes], int, int]:
    stream = Stream()
    frames = [xlogdata(stream.lsn, relation())]
    frames += stream.transaction([update_full(row(i % EXISTING_ROWS), row(i % EXISTING_ROWS, 1)) for i in range(n)])
    return frames, n, 1


def single_row_updates(n: int) -> tuple[list[bytes], int, int]:
    stream = Stream()
    frames = [xlogdata(stream.lsn, relation())]
    for t in range(n):
        i = (t * 7919) % EXISTING_ROWS
        frames += stream.transaction([update_full(row(i, t), row(i, t + 1))])
    return frames, n, n


# -- the replica ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def template_replica(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A replica with EXISTING_ROWS rows, made once; every round writes to a copy of it."""
    directory = tmp_path_factory.mktemp("replica")
    path = directory / "template.db"
    sync = _native.InitialSync(
        str(directory / "template.db.staging"), schema_json(), consistent_point=CONSISTENT_POINT, slot="bench_slot",
        publications=["bench"], app_id="zero", shard_num=0, ddl_detection=False,
    )
    data = copy_stream([row(i) for i in range(EXISTING_ROWS)])
    sync.copy_chunks(OID, [data[k:k + 65_536] for k in range(0, len(data), 65_536)])
    assert sync.finish_table(OID) == EXISTING_ROWS
    sync.finish(str(path))
    return path


WORKLOADS: dict[str, tuple[Callable[[int], tuple[list[bytes], int, int]], tuple[int, int]]] = {
    "large_insert": (large_insert, LARGE_TX_ROWS),
    "large_update_full": (large_update, LARGE_TX_ROWS),
    "single_row_update_txs": (single_row_updates, SINGLE_TXS),
}


@pytest.mark.parametrize("workload", list(WORKLOADS))
def test_apply_frames(benchmark: Any, template_replica: Path, tmp_path: Path, workload: str) -> None:
    make, (full, smoke) = WORKLOADS[workload]
    frames, rows, transactions = make(smoke if benchmark.disabled else full)
    outcomes: list[Any] = []
    counter = iter(range(1_000_000))

    def fresh_writer() -> tuple[tuple[Any, ...], dict[str, Any]]:
        path = tmp_path / f"replica-{next(counter)}.db"
        shutil.copyfile(template_replica, path)
        return (_native.ReplicaWriter(str(path), "zero_0/ddl"),), {}

    def apply(writer: Any) -> None:
        outcomes.append(writer.apply_frames(frames))

    benchmark.extra_info.update({"rows": rows, "transactions": transactions, "frames": len(frames)})
    benchmark.pedantic(apply, setup=fresh_writer, rounds=1 if benchmark.disabled else 10, iterations=1)

    outcome = outcomes[-1]
    assert (outcome.rows, outcome.transactions, outcome.in_transaction) == (rows, transactions, False)
    if benchmark.stats is not None:
        seconds = benchmark.stats.stats.median
        benchmark.extra_info["rows_per_s"] = round(rows / seconds)
        benchmark.extra_info["transactions_per_s"] = round(transactions / seconds)


COPY_ROWS = (100_000, 500)
CHUNKS_PER_CALL = 4096  # as change_source/initial_sync.py hands them over


def test_initial_copy(benchmark: Any, tmp_path: Path) -> None:
    """The initial sync's Rust side for one `file`-shaped table: queueing COPY messages, decoding,
    multi-row inserts, then `finish` (primary-key index, ANALYZE, durable rename)."""
    rows = COPY_ROWS[1] if benchmark.disabled else COPY_ROWS[0]
    messages = copy_messages([row(i) for i in range(rows)])
    counter = iter(range(1_000_000))
    counts: list[int] = []

    def fresh_sync() -> tuple[tuple[Any, ...], dict[str, Any]]:
        directory = tmp_path / f"sync-{next(counter)}"
        directory.mkdir()
        sync = _native.InitialSync(
            str(directory / "replica.db.staging"), schema_json(), consistent_point=CONSISTENT_POINT, slot="bench_slot",
            publications=["bench"], app_id="zero", shard_num=0, ddl_detection=False,
        )
        return (sync, directory / "replica.db"), {}

    def copy(sync: Any, replica: Path) -> None:
        for k in range(0, len(messages), CHUNKS_PER_CALL):
            sync.copy_chunks(OID, messages[k:k + CHUNKS_PER_CALL])
        counts.append(sync.finish_table(OID))
        sync.finish(str(replica))

    benchmark.extra_info.update({"rows": rows})
    benchmark.pedantic(copy, setup=fresh_sync, rounds=1 if benchmark.disabled else 5, iterations=1)
    assert counts[-1] == rows
    if benchmark.stats is not None:
        benchmark.extra_info["rows_per_s"] = round(rows / benchmark.stats.stats.median)
