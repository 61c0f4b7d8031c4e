"""The CVR store's statements alone, against a throwaway PostgreSQL (fsync on), in the calling
thread: an advance's flush (the instance and rows of one group), the load of a group the store
has never seen, and `SELECT 1` on the same connection as the round-trip baseline. The flush of
an advance of a group with tldraw's client schema (~2 kB of JSON) is measured as it is now (the
stored schema left alone) and as it was (the schema written again by every flush).

    .venv/bin/python -m pytest bench/micro/test_cvr_store.py --benchmark-enable

Without `--benchmark-enable` each benchmark runs once, as a smoke test.
"""

from __future__ import annotations

import itertools
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from zcache import _native, demo_data
from zcache.cvr.model import CVRFlush, CVRVersion, InstanceRecord
from zcache.cvr.schema import ensure_schema
from zcache.cvr.store import CVRStore
from zcache.embedded_pg import EmbeddedPostgres


@pytest.fixture(scope="module")
def store() -> Iterator[tuple[CVRStore, psycopg.Connection]]:
    # Not under pytest's tmp_path: a system server running as `postgres` must be able to enter it.
    with tempfile.TemporaryDirectory(prefix="zcache-bench-cvr-") as tmp:
        yield from _store(Path(tmp))


def _store(workdir: Path) -> Iterator[tuple[CVRStore, psycopg.Connection]]:
    workdir.chmod(0o755)
    with EmbeddedPostgres(workdir / "pgdata", fsync=True, settings={"wal_level": "logical"}) as cluster:
        dsn = cluster.create_database("bench")
        cvr = CVRStore(dsn, app_id="zero", shard_num=0, owner="bench", max_conns=1)
        conn = cvr._connect()
        ensure_schema(conn, "zero", 0)
        yield cvr, conn
        conn.close()


# The shape of the client schema a tldraw client sends (every column a string: the size is
# what matters here).
TLDRAW_CLIENT_SCHEMA = {
    "tables": {
        table: {"columns": {c: {"type": "string"} for c in columns}, "primaryKey": key}
        for table, columns, key in (
            ("user", demo_data.USER_COLUMNS, ["id"]),
            ("file", demo_data.FILE_COLUMNS, ["id"]),
            ("file_state", demo_data.FILE_STATE_COLUMNS, ["userId", "fileId"]),
        )
    }
}


def _instance(group: str, version: int, client_schema: dict[str, Any] | None = None) -> InstanceRecord:
    now = time.time() * 1000
    return InstanceRecord(
        group_id=group,
        version=CVRVersion(_native.lexi_version(version)),
        last_active_ms=now,
        owner="bench",
        granted_at_ms=now,
        client_schema=client_schema,
    )


def test_flush_of_an_advance(benchmark: Any, store: tuple[CVRStore, psycopg.Connection]) -> None:
    cvr, conn = store
    cvr._flush(conn, [CVRFlush(_instance("g", 1), None)], deferred=set())
    versions = itertools.count(1)

    def flush() -> None:
        v = next(versions)
        assert not cvr._flush(conn, [CVRFlush(_instance("g", v + 1), CVRVersion(_native.lexi_version(v)))], deferred=set())

    benchmark.pedantic(flush, rounds=300, warmup_rounds=10)


@pytest.mark.parametrize("schema_written", [False, True], ids=["schema-kept", "schema-rewritten"])
def test_flush_of_an_advance_with_a_client_schema(
    benchmark: Any, store: tuple[CVRStore, psycopg.Connection], schema_written: bool
) -> None:
    cvr, conn = store
    group = f"schema-{schema_written}"
    cvr._flush(conn, [CVRFlush(_instance(group, 1, TLDRAW_CLIENT_SCHEMA), None)], deferred=set())
    versions = itertools.count(1)

    def flush() -> None:
        v = next(versions)
        advance = CVRFlush(
            _instance(group, v + 1, TLDRAW_CLIENT_SCHEMA), CVRVersion(_native.lexi_version(v)), write_client_schema=schema_written
        )
        assert not cvr._flush(conn, [advance], deferred=set())

    benchmark.pedantic(flush, rounds=300, warmup_rounds=10)


def test_load_of_a_new_group(benchmark: Any, store: tuple[CVRStore, psycopg.Connection]) -> None:
    cvr, conn = store
    groups = itertools.count()

    def load() -> None:
        snapshot = cvr._load(conn, [(f"new-{next(groups)}", time.time() * 1000)])
        assert snapshot

    benchmark.pedantic(load, rounds=300, warmup_rounds=10)


def test_select_1_baseline(benchmark: Any, store: tuple[CVRStore, psycopg.Connection]) -> None:
    _, conn = store
    benchmark.pedantic(lambda: conn.execute("SELECT 1").fetchall(), rounds=300, warmup_rounds=10)
