"""kill -9: the real server process, killed at random moments while upstream keeps committing.

A writer thread commits thousands of small transactions upstream (inserts, upserts, updates and
deletes over a few hundred keys of `kv`, multi-row transactions, some rolled back, a few that
touch 40 rows at once, and updates of the 200k-row `big` table). Meanwhile `python -m zcache`
runs as a subprocess and is SIGKILLed five times: once during the initial sync of `big` (the
test checks that the staging file exists and the replica does not at that moment), once at a
random moment after a start (setup, a repeated initial sync or streaming), and three times at
random moments of streaming. A final run catches up (a logical-message marker vs the replica
file's `watermark_lsn`), is stopped with SIGTERM, and then:

1. the replica equals upstream row for row (`tests/fixtures/replica_oracle.py`);
2. the staging file is gone, the replica's slot exists and any other slot of the shard is
   inactive (a kill between the rename of a new replica and the drop of stale slots leaves one
   behind until the next start drops it: `test_a_stale_slot_is_dropped_after_an_interrupted_sync`);
3. the replica's `(state_version, watermark_lsn)`, sampled from the file every few ms by a
   monitor thread across every kill and restart (and read right before each kill), never goes
   backwards;
4. every row's `_0_version` is the LexiVersion of the commit LSN of the upstream transaction that
   last wrote it, or the replica version for rows the final initial sync copied. The writer stores
   its transaction id in each row it writes (`xid`); a second logical slot (pgoutput through the SQL
   interface, created before the writer starts) maps each transaction id to its commit LSN
   (`Begin.final_lsn`, which is what the replica's versions encode);
5. the change log `_zcache_changes` agrees with the rows: every row written since the initial sync
   has an `s` entry at exactly its `_0_version`, every `s` entry names a present row at that
   version, every `d` entry an absent row, and no entry is newer than the replica's state.

What this can detect: a lost or partially applied transaction; a transaction applied again *out
of order* after a restart (a row left at an older value or version); a row stamped with another
transaction's version; a watermark or state version that goes back (a replay that rewinds the
state, if it lasts longer than the sampling interval, or persists); a change log that disagrees
with the rows; a leftover staging file or slot. What it cannot detect: a committed transaction
re-applied *in order* right after itself (the skip rule failing for a transaction the replica
already had) leaves exactly the same rows, versions and change log — the replica file keeps no
trace of how often a transaction was applied, and the subprocess exposes no statistics, so that
case is only covered by the Rust unit tests of the skip rule; and anything that happens and is
undone between two samples of the monitor.

Reproduce a failure with the seed printed in the output: `ZCACHE_CRASH_SEED=<seed>`.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.fixtures.replica_oracle import assert_replica_matches, emit_marker, open_replica, replica_watermark
from tests.pg.test_replication import _config, running_replicator, wait_caught_up
from zcache import _native
from zcache.change_source import initial_sync
from zcache.replica.replicator import Replicator

# Copied in ~0.45 s on the fastest host seen (1.1M rows/s): the first kill, at most
# FIRST_KILL_MAX_S after the staging file appears, always hits the initial sync.
BIG_ROWS = 500_000
FIRST_KILL_MAX_S = 0.15
KEYS = 300
MIN_TRANSACTIONS = 3000
STREAMING_KILLS = 3  # plus one during the initial sync and one at a random moment after a start
CATCH_UP_TIMEOUT_S = 60
SLOT_PREFIX = "zero_0_"

XID = "(pg_current_xact_id()::text::int8 %% 4294967296)"


class Writer(threading.Thread):
    """Commits small random transactions upstream until stopped."""

    def __init__(self, dsn: str, seed: int) -> None:
        super().__init__(name="upstream-writer", daemon=True)
        self._dsn = dsn
        self._rng = random.Random(seed)
        self._halt = threading.Event()
        self.committed = 0
        self.rolled_back = 0
        self.error: BaseException | None = None

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=30)
        if self.error is not None:
            raise AssertionError(f"the upstream writer failed: {self.error!r}") from self.error

    def _kv_op(self, conn: psycopg.Connection[Any]) -> None:
        rng = self._rng
        k = rng.randrange(KEYS)
        r = rng.random()
        if r < 0.35:
            conn.execute(
                f"INSERT INTO kv (k, v, s, xid) VALUES (%s, %s, %s, {XID}) "
                f"ON CONFLICT (k) DO UPDATE SET v = excluded.v, s = excluded.s, xid = excluded.xid",
                [k, rng.randrange(-(2**62), 2**62), "s" * rng.randrange(0, 20)],
            )
        elif r < 0.75:
            conn.execute(f"UPDATE kv SET v = v + 1, s = s || 'u', xid = {XID} WHERE k = %s", [k])
        else:
            conn.execute("DELETE FROM kv WHERE k = %s", [k])

    def run(self) -> None:
        rng = self._rng
        try:
            with psycopg.connect(self._dsn, autocommit=True) as conn:
                while not self._halt.is_set():
                    r = rng.random()
                    if r < 0.75:
                        self._kv_op(conn)
                        self.committed += 1
                    elif r < 0.93:
                        rollback = rng.random() < 0.15
                        try:
                            with conn.transaction():
                                for _ in range(rng.randrange(2, 8)):
                                    self._kv_op(conn)
                                if rollback:
                                    raise psycopg.Rollback()
                        finally:
                            if rollback:
                                self.rolled_back += 1
                            else:
                                self.committed += 1
                    elif r < 0.97:
                        ids = [rng.randrange(1, BIG_ROWS + 1) for _ in range(rng.randrange(1, 20))]
                        with conn.transaction():
                            conn.execute(f"UPDATE big SET n = n + 1, xid = {XID} WHERE id = ANY(%s)", [ids])
                            self._kv_op(conn)
                        self.committed += 1
                    else:
                        conn.execute(
                            f"UPDATE kv SET v = v * 2 %% 1000003, xid = {XID} WHERE k %% 7 = %s", [rng.randrange(7)]
                        )
                        self.committed += 1
        except BaseException as e:  # noqa: BLE001 - reported by stop()
            self.error = e


class Monitor(threading.Thread):
    """Samples the replica file's (state_version, watermark_lsn) and records any step back."""

    def __init__(self, replica: Path) -> None:
        super().__init__(name="replica-monitor", daemon=True)
        self._replica = replica
        self._halt = threading.Event()
        self.samples = 0
        self.last: tuple[int, int] | None = None
        self.regressions: list[str] = []

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=10)

    def run(self) -> None:
        while not self._halt.is_set():
            try:
                version, watermark = replica_watermark(self._replica)
            except (sqlite3.Error, AssertionError):
                time.sleep(0.002)  # no replica yet, or it is being replaced
                continue
            state = (_native.parse_lexi_version(version), watermark)
            if self.last is not None and (state[0] < self.last[0] or state[1] < self.last[1]):
                self.regressions.append(f"{self.last} -> {state}")
            self.last = state if self.last is None else max(self.last, state)
            self.samples += 1
            time.sleep(0.003)


class Zcache:
    """`python -m zcache` as a subprocess, its output appended to one log file."""

    def __init__(self, dsn: str, replica: Path, log: Path, cwd: Path) -> None:
        self._env = os.environ | {
            "ZERO_UPSTREAM_DB": dsn,
            "ZERO_REPLICA_FILE": str(replica),
            "ZERO_LOG_LEVEL": "debug",
        }
        self._log = log
        self._cwd = cwd
        self.process: subprocess.Popen[bytes] | None = None
        self.offset = 0

    def start(self) -> None:
        assert self.process is None
        self.offset = self._log.stat().st_size if self._log.exists() else 0
        with self._log.open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "zcache"], env=self._env, cwd=self._cwd, stdout=out, stderr=subprocess.STDOUT
            )

    def output(self) -> str:
        with self._log.open("rb") as f:
            f.seek(self.offset)
            return f.read().decode(errors="replace")

    def wait_for(self, pattern: str, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while not re.search(pattern, self.output()):
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(f"zcache exited ({self.process.returncode}) before {pattern!r}:\n{self.output()[-4000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no {pattern!r} within {timeout_s}s:\n{self.output()[-4000:]}")
            time.sleep(0.005)

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)
        self.process = None

    def terminate(self) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout=30)
        self.process = None
        return code

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None


def _xid_commit_lsns(conn: psycopg.Connection[Any]) -> dict[int, int]:
    """Transaction id → commit LSN (`Begin.final_lsn`) of every transaction the oracle slot saw."""
    rows = conn.execute(
        "SELECT data FROM pg_logical_slot_peek_binary_changes("
        "'crash_oracle', NULL, NULL, 'proto_version', '1', 'publication_names', 'crash_oracle')"
    ).fetchall()
    commits: dict[int, int] = {}
    for (data,) in rows:
        data = bytes(data)
        if data[:1] == b"B":  # Begin: final_lsn int64, commit timestamp int64, xid int32
            commits[int.from_bytes(data[17:21], "big")] = int.from_bytes(data[1:9], "big")
    return commits


def _replica_slot(replica: Path) -> str:
    db = open_replica(replica)
    try:
        row = db.execute('SELECT "slot" FROM "_zcache_replication_config"').fetchone()
    finally:
        db.close()
    assert row is not None
    return str(row[0])


def _check_versions(conn: psycopg.Connection[Any], replica: Path) -> int:
    """Checks 4 and 5 of the module docstring; returns how many rows were written since the sync."""
    commits = _xid_commit_lsns(conn)
    db = open_replica(replica)
    try:
        replica_version, state_version = db.execute(
            'SELECT c."replica_version", s."state_version" FROM "_zcache_replication_config" c, "_zcache_replication_state" s'
        ).fetchone()
        consistent_point = _native.parse_lexi_version(replica_version)
        state = _native.parse_lexi_version(state_version)
        changes = {
            (table, row_key): (version, op)
            for version, table, row_key, op in db.execute('SELECT "state_version", "table", "row_key", "op" FROM "_zcache_changes"')
        }
        problems: list[str] = []
        streamed = 0
        rows: dict[tuple[str, str], str] = {}
        for table, key in (("kv", "k"), ("big", "id")):
            for k, xid, version in db.execute(f'SELECT "{key}", "xid", "_0_version" FROM "{table}"'):
                row_key = json.dumps({key: k}, separators=(",", ":"))
                rows[(table, row_key)] = version
                if xid is None:
                    expected = consistent_point
                else:
                    if xid not in commits:
                        problems.append(f"{table} {row_key}: transaction {xid} unknown to the oracle slot")
                        continue
                    expected = max(consistent_point, commits[xid])
                if version != _native.lexi_version(expected):
                    problems.append(
                        f"{table} {row_key}: _0_version {version} ({_native.parse_lexi_version(version):#x}), "
                        f"expected {_native.lexi_version(expected)} ({expected:#x}, xid {xid})"
                    )
                if expected > consistent_point:
                    streamed += 1
                    if changes.get((table, row_key)) != (version, "s"):
                        problems.append(f"{table} {row_key}: at {version} but its change-log entry is {changes.get((table, row_key))}")
        for (table, row_key), (version, op) in changes.items():
            if _native.parse_lexi_version(version) > state:
                problems.append(f"change-log entry {table} {row_key} at {version} is newer than the state {state_version}")
            if op == "s" and rows.get((table, row_key)) != version:
                problems.append(f"change-log entry {table} {row_key} 's' at {version}, row at {rows.get((table, row_key))}")
            elif op == "d" and (table, row_key) in rows:
                problems.append(f"change-log entry {table} {row_key} 'd' at {version}, but the row exists")
            elif op not in ("s", "d"):
                problems.append(f"unexpected change-log entry {table} {row_key} {op!r} at {version}")
        assert not problems, "version/change-log problems:\n  " + "\n  ".join(problems[:20])
        return streamed
    finally:
        db.close()


def test_kill_9_at_random_moments_loses_nothing(pg_dsn: str, pg_conn: psycopg.Connection[Any], tmp_path: Path) -> None:
    seed = int(os.environ.get("ZCACHE_CRASH_SEED") or random.randrange(2**32))
    print(f"ZCACHE_CRASH_SEED={seed}")
    rng = random.Random(seed)
    replica = tmp_path / "replica.db"
    staging = tmp_path / "replica.db.staging"
    log = tmp_path / "zcache.log"

    pg_conn.execute("CREATE TABLE kv (k int4 PRIMARY KEY, v int8, s text, xid int8)")
    pg_conn.execute("CREATE TABLE big (id int8 PRIMARY KEY, payload text, n int4, xid int8)")
    pg_conn.execute(f"INSERT INTO big SELECT g, md5(g::text), g % 1000, NULL FROM generate_series(1, {BIG_ROWS}) g")
    pg_conn.execute("CREATE PUBLICATION crash_oracle FOR TABLE kv, big")
    pg_conn.execute("SELECT pg_create_logical_replication_slot('crash_oracle', 'pgoutput')")

    writer = Writer(pg_dsn, seed)
    monitor = Monitor(replica)
    zcache = Zcache(pg_dsn, replica, log, tmp_path)
    before_kill: list[tuple[str, int]] = []
    try:
        writer.start()
        monitor.start()

        # 1. A kill during the initial sync of `big`.
        zcache.start()
        zcache.wait_for(r"created replication slot", timeout_s=30)
        deadline = time.monotonic() + 30
        while not staging.exists():
            assert time.monotonic() < deadline and zcache.alive(), f"no staging file:\n{zcache.output()[-4000:]}"
            time.sleep(0.002)
        time.sleep(rng.uniform(0.0, FIRST_KILL_MAX_S))
        in_sync = staging.exists() and not replica.exists()
        zcache.kill()
        assert in_sync, "the first kill should hit the initial sync (make `big` bigger if the copy got faster)"

        # 2. A kill at a random moment after a start (setup, a repeated initial sync, or streaming),
        #    then kills at random moments while streaming.
        for n in range(1 + STREAMING_KILLS):
            zcache.start()
            if n == 0:
                time.sleep(rng.uniform(0.2, 3.0))
            else:
                zcache.wait_for(r"streaming from slot", timeout_s=60)
                time.sleep(rng.uniform(0.05, 1.5))
            if replica.exists():
                before_kill.append(replica_watermark(replica))
            zcache.kill()

        # 3. The last run catches up with what the writer committed, then stops cleanly.
        zcache.start()
        zcache.wait_for(r"streaming from slot", timeout_s=60)
        deadline = time.monotonic() + 120
        while writer.committed < MIN_TRANSACTIONS:
            assert writer.is_alive(), f"the upstream writer stopped: {writer.error!r}"
            assert time.monotonic() < deadline, f"the writer committed only {writer.committed} transactions"
            time.sleep(0.05)
        time.sleep(rng.uniform(0.0, 1.0))
        writer.stop()
        marker = emit_marker(pg_conn)
        deadline = time.monotonic() + CATCH_UP_TIMEOUT_S
        while not (replica.exists() and replica_watermark(replica)[1] >= marker):
            assert zcache.alive(), f"zcache exited:\n{zcache.output()[-4000:]}"
            assert time.monotonic() < deadline, f"no catch-up within {CATCH_UP_TIMEOUT_S}s:\n{zcache.output()[-4000:]}"
            time.sleep(0.02)
        assert zcache.terminate() == 0, zcache.output()[-4000:]
        monitor.stop()

        print(
            f"writer: {writer.committed} committed, {writer.rolled_back} rolled back; "
            f"monitor: {monitor.samples} samples; state before kills: {before_kill}"
        )
        assert writer.committed >= MIN_TRANSACTIONS
        assert_replica_matches(pg_conn, replica, [("public", "kv"), ("public", "big")])
        assert not staging.exists(), "the staging file is left behind"
        # The replica's slot is there. Other slots of the shard can be left behind when a kill hits
        # between the rename of a new replica and the drop of stale slots (a bug, see
        # test_a_stale_slot_is_dropped_after_an_interrupted_sync); they must at least be inactive.
        slots = dict(
            pg_conn.execute(
                "SELECT slot_name, active FROM pg_replication_slots WHERE slot_name LIKE 'zero\\_0\\_%'"
            ).fetchall()
        )
        own_slot = _replica_slot(replica)
        assert own_slot in slots, f"the replica's slot {own_slot} is gone: {slots}"
        assert not any(active for name, active in slots.items() if name != own_slot), slots
        if len(slots) > 1:
            print(f"stale replication slots left behind: {sorted(set(slots) - {own_slot})}")
        assert not monitor.regressions, f"the replica's state went backwards: {monitor.regressions[:10]}"
        final = replica_watermark(replica)
        for version, watermark in before_kill:
            assert _native.parse_lexi_version(version) <= _native.parse_lexi_version(final[0]) and watermark <= final[1]
        streamed = _check_versions(pg_conn, replica)
        assert streamed > 0, "no row was written after the last initial sync: the kills did not test streaming"
    finally:
        if zcache.process is not None:  # first, so that nothing below can leave it running
            zcache.kill()
        monitor.stop()
        if writer.is_alive():
            writer.stop()
        pg_conn.execute("SELECT pg_drop_replication_slot('crash_oracle') FROM pg_replication_slots WHERE slot_name = 'crash_oracle'")


class _SimulatedCrash(BaseException):
    """Stands for a SIGKILL (or a SIGTERM's cancellation) at one point of the initial sync."""


async def test_a_stale_slot_is_dropped_after_an_interrupted_sync(
    pg_dsn: str, pg_conn: psycopg.Connection[Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pg_conn.execute("CREATE TABLE t (id int4 PRIMARY KEY, v text)")
    pg_conn.execute("INSERT INTO t VALUES (1, 'a')")
    replica = tmp_path / "replica.db"
    async with running_replicator(pg_dsn, replica):
        pass  # the first sync: slot A
    for suffix in ("", "-wal", "-shm"):
        Path(f"{replica}{suffix}").unlink(missing_ok=True)

    # The second sync (slot B) dies right after renaming its replica into place: slot A is stale.
    def crash(*args: object) -> None:
        raise _SimulatedCrash()

    monkeypatch.setattr(initial_sync, "_record_sync", crash)
    with pytest.raises(_SimulatedCrash):
        await Replicator(_config(pg_dsn, replica)).run()
    monkeypatch.undo()
    assert replica.exists()

    pg_conn.execute("INSERT INTO t VALUES (2, 'b')")
    async with running_replicator(pg_dsn, replica) as replicator:
        await wait_caught_up(replicator, pg_conn)
    slot = _replica_slot(replica)
    slots = [r[0] for r in pg_conn.execute("SELECT slot_name FROM pg_replication_slots WHERE slot_name LIKE 'zero\\_0\\_%'")]
    assert slots == [slot], f"stale slots pin upstream WAL: {sorted(set(slots) - {slot})}"
