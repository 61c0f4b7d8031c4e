"""The query engine alone: hydration and advance over a replica of the reference data shape.

The replica is built without Postgres (`_native.InitialSync` from binary COPY data of
`zcache.demo_data`: 10k users, 100k files, 200k file states when benchmarking; 300 users when
only smoke-testing), changes go through `_native.ReplicaWriter` as pgoutput frames (see
tests/native/test_ivm_support.py).

* hydration of "the files of N owners" (`file where ownerId IN [...]`), N = 100 and 1,000
  (1k and 10k rows) without an index on `file.ownerId` (the replica has primary-key indexes
  only), N = 10, 100 and 1,000 (100, 1k, 10k rows: linear?) with one, against
  `select_baseline`: SQLite alone running the same `SELECT * … WHERE ownerId IN (…)` through
  the engine's connection and reading every column. `add_query` returns the JSON patch;
  `_changes` is `add_query_changes`, the `RowChanges` the view syncer takes, and `_merged` the
  JSON patch merged into a `RowChanges` (what the view syncer did before `add_query_changes`);
* one single-row change (a file renamed) advanced through 1,000 registered tldraw queries
  (`file where ownerId = ?`): 1,000 groups x 1 query, and 1 group with 1,000 queries;
* the same advance over a 10x smaller replica (is advance independent of table size?).

    make bench PYTEST_ARGS="-k ivm"
    .venv/bin/python -m pytest bench/micro/test_ivm.py --benchmark-enable

Without `--benchmark-enable` each benchmark runs once on a small replica, as a smoke test.
"""

from __future__ import annotations

import itertools
import json
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.native.test_ivm_support import Replica, demo_rows, demo_tables
from zcache import _native, demo_data

# Users in the replica (files = 10x, file states = 20x): benchmarking / smoke test.
BIG_USERS = (10_000, 300)
SMALL_USERS = (1_000, 100)
QUERIES = (1_000, 50)


def enabled(config: pytest.Config) -> bool:
    return not config.getoption("benchmark_disable", default=False)


@dataclass
class Demo:
    replica: Replica
    users: int
    counter: itertools.count[int]

    def engine(self) -> _native.QueryEngine:
        return _native.QueryEngine(str(self.replica.path))

    def rename_a_file(self, owner: int) -> None:
        """One upstream transaction: a file of `owner` gets a new name (and version)."""
        n = next(self.counter)
        shape = demo_data.DemoShape(self.users)
        file = demo_data.owned_files(shape, owner)[n % 10]
        conn = sqlite3.connect(f"file:{self.replica.path}?mode=ro", uri=True)
        try:
            columns = ", ".join(f'"{c}"' for c in demo_data.FILE_COLUMNS)
            row = conn.execute(f'SELECT {columns} FROM "file" WHERE "id" = ?', [demo_data.file_id(file)]).fetchone()
        finally:
            conn.close()
        table = self.replica.tables["file"]
        values = [bool(v) if t == "bool" and v is not None else v for (_, t), v in zip(table.columns, row, strict=True)]
        values[1] = f"Renamed {n}"
        self.replica.transaction([("upsert", "file", tuple(values))])


def build(directory: Path, users: int) -> Demo:
    directory.mkdir(parents=True, exist_ok=True)
    replica = Replica.create(directory, demo_tables(), demo_rows(users), keep_model=False)
    return Demo(replica, users, itertools.count())


@pytest.fixture(scope="module")
def big(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Demo:
    return build(tmp_path_factory.mktemp("ivm-big"), BIG_USERS[0 if enabled(request.config) else 1])


@pytest.fixture(scope="module")
def small(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Demo:
    return build(tmp_path_factory.mktemp("ivm-small"), SMALL_USERS[0 if enabled(request.config) else 1])


@pytest.fixture(scope="module")
def indexed(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Demo:
    demo = build(tmp_path_factory.mktemp("ivm-indexed"), BIG_USERS[0 if enabled(request.config) else 1])
    conn = sqlite3.connect(demo.replica.path)
    try:
        conn.execute('CREATE INDEX "file_ownerId" ON "file" ("ownerId")')
        conn.execute("ANALYZE")
        conn.commit()
    finally:
        conn.close()
    return demo


def owners_query(owners: list[int]) -> str:
    ids = [demo_data.user_id(u) for u in owners]
    return json.dumps(
        {"table": "file", "where": {"type": "simple", "op": "IN", "left": {"type": "column", "name": "ownerId"}, "right": {"type": "literal", "value": ids}}}
    )


def owner_query(owner: int) -> str:
    return json.dumps(
        {
            "table": "file",
            "where": {"type": "simple", "op": "=", "left": {"type": "column", "name": "ownerId"}, "right": {"type": "literal", "value": demo_data.user_id(owner)}},
            "orderBy": [["updatedAt", "desc"]],
        }
    )


def rows_of(result: Any) -> int:
    if isinstance(result, bytes):
        return len(json.loads(result)["ops"])
    if isinstance(result, _native.RowChanges):
        return len(result)
    return len(result[1])


def hydrate(benchmark: Any, demo: Demo, owners: int, form: str = "patch") -> None:
    engine = demo.engine()
    owners = min(owners, demo.users)
    query = owners_query(list(range(owners)))
    groups = itertools.count()

    def setup() -> tuple[tuple[str], dict[str, Any]]:
        return (f"g{next(groups)}",), {}

    def run(group: str) -> Any:
        if form == "changes":
            return engine.add_query_changes(group, "q", query)
        patch = engine.add_query(group, "q", query)
        if form == "merged":
            rows = _native.RowChanges()
            rows.merge(patch)
            return rows
        return patch

    result = benchmark.pedantic(run, setup=setup, rounds=10, warmup_rounds=1)
    assert rows_of(result) == owners * 10
    benchmark.extra_info["rows"] = owners * 10


@pytest.mark.parametrize("owners", [100, 1_000])
def test_hydrate_files_of_owners(benchmark: Any, big: Demo, owners: int) -> None:
    hydrate(benchmark, big, owners)


@pytest.mark.parametrize("owners", [10, 100, 1_000])
def test_hydrate_files_of_owners_indexed(benchmark: Any, indexed: Demo, owners: int) -> None:
    hydrate(benchmark, indexed, owners)


@pytest.mark.parametrize("owners", [1_000])
def test_hydrate_changes_files_of_owners_indexed(benchmark: Any, indexed: Demo, owners: int) -> None:
    hydrate(benchmark, indexed, owners, "changes")


@pytest.mark.parametrize("owners", [1_000])
def test_hydrate_merged_files_of_owners_indexed(benchmark: Any, indexed: Demo, owners: int) -> None:
    hydrate(benchmark, indexed, owners, "merged")


def select_baseline(benchmark: Any, demo: Demo, owners: int) -> None:
    """SQLite alone: the hydration's statement, every column of every row read, nothing built."""
    engine = demo.engine()
    owners = min(owners, demo.users)
    ids = [demo_data.user_id(u) for u in range(owners)]
    sql = f'SELECT * FROM "file" WHERE "ownerId" IN ({", ".join("?" * len(ids))})'
    rows = benchmark.pedantic(lambda: engine.select_baseline(sql, ids), rounds=10, warmup_rounds=1)
    assert rows == owners * 10


@pytest.mark.parametrize("owners", [1_000])
def test_select_baseline_files_of_owners(benchmark: Any, big: Demo, owners: int) -> None:
    select_baseline(benchmark, big, owners)


@pytest.mark.parametrize("owners", [1_000])
def test_select_baseline_files_of_owners_indexed(benchmark: Any, indexed: Demo, owners: int) -> None:
    select_baseline(benchmark, indexed, owners)


def advance(benchmark: Any, demo: Demo, register: Callable[[_native.QueryEngine, int], list[str]], queries: int) -> None:
    engine = demo.engine()
    queries = min(queries, demo.users)
    groups = register(engine, queries)
    engine.advance(groups)

    def setup() -> tuple[tuple[()], dict[str, Any]]:
        demo.rename_a_file(next(demo.counter) % queries)
        return (), {}

    def run() -> list[tuple[str, bytes]]:
        return engine.advance(groups)

    patches = benchmark.pedantic(run, setup=setup, rounds=30, warmup_rounds=2)
    puts = sum(len(json.loads(p)["ops"]) for _, p in patches)
    assert puts == 1, "the renamed file is in exactly one query"
    benchmark.extra_info["queries"] = queries


def many_groups(engine: _native.QueryEngine, queries: int) -> list[str]:
    groups = [f"g{u}" for u in range(queries)]
    for u, g in enumerate(groups):
        engine.add_query(g, "files", owner_query(u))
    return groups


def one_group(engine: _native.QueryEngine, queries: int) -> list[str]:
    for u in range(queries):
        engine.add_query("g", f"files{u}", owner_query(u))
    return ["g"]


def test_advance_one_change_1000_groups(benchmark: Any, big: Demo, request: pytest.FixtureRequest) -> None:
    advance(benchmark, big, many_groups, QUERIES[0 if enabled(request.config) else 1])


def test_advance_one_change_1000_queries_one_group(benchmark: Any, big: Demo, request: pytest.FixtureRequest) -> None:
    advance(benchmark, big, one_group, QUERIES[0 if enabled(request.config) else 1])


def test_advance_one_change_1000_groups_small_tables(benchmark: Any, small: Demo, request: pytest.FixtureRequest) -> None:
    advance(benchmark, small, many_groups, QUERIES[0 if enabled(request.config) else 1])
