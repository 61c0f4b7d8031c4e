"""The CVR store's statements alone, against a throwaway PostgreSQL (fsync on), in the calling
thread: an advance's flush (the instance and rows of one group), the load of a group the store
has never seen, and `SELECT 1` on the same connection as the round-trip baseline.

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

from zcache import _native
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


def _instance(version: int) -> InstanceRecord:
    now = time.time() * 1000
    return InstanceRecord(
        group_id="g", version=CVRVersion(_native.lexi_version(version)), last_active_ms=now, owner="bench", granted_at_ms=now
    )


def test_flush_of_an_advance(benchmark: Any, store: tuple[CVRStore, psycopg.Connection]) -> None:
    cvr, conn = store
    cvr._flush(conn, [CVRFlush(_instance(1), None)])
    versions = itertools.count(1)

    def flush() -> None:
        v = next(versions)
        assert not cvr._flush(conn, [CVRFlush(_instance(v + 1), CVRVersion(_native.lexi_version(v)))])

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
