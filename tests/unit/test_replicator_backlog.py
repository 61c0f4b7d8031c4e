"""The replicator's backlog of received frames: bounded, taken whole, with backpressure; the
receive loop's pause, which must never keep the applying task waiting; and the confirming task,
which tells upstream only what the replica's disk holds."""

from __future__ import annotations

import threading
from collections.abc import Callable
import time
from dataclasses import dataclass
from pathlib import Path

import trio
import trio.lowlevel
import trio.testing

from zcache.config import load_config
from zcache.replica.replicator import Replicator, _Backlog


async def test_take_returns_everything_received_since_the_last_take() -> None:
    backlog = _Backlog(max_frames=10, max_bytes=1_000)
    await backlog.put([b"a", b"bb"])
    await backlog.put([b"ccc"])
    assert backlog.room() == (7, 994)
    assert await backlog.take(1.0) == [b"a", b"bb", b"ccc"]
    assert backlog.applying
    assert backlog.room() == (10, 1_000)


async def test_take_waits_for_frames_then_gives_up() -> None:
    backlog = _Backlog(max_frames=10, max_bytes=1_000)
    start = trio.current_time()
    assert await backlog.take(0.05) == []
    assert trio.current_time() - start >= 0.05
    assert not backlog.applying

    async def later() -> None:
        await trio.sleep(0.01)
        await backlog.put([b"x"])

    async with trio.open_nursery() as nursery:
        nursery.start_soon(later)
        assert await backlog.take(5.0) == [b"x"]


async def test_a_full_backlog_holds_the_receiver_until_it_is_taken() -> None:
    backlog = _Backlog(max_frames=2, max_bytes=1_000)
    put_done = trio.Event()

    async def receiver() -> None:
        await backlog.put([b"a", b"b"])  # full: waits
        put_done.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(receiver)
        await trio.testing.wait_all_tasks_blocked()
        assert not put_done.is_set()
        assert await backlog.take(1.0) == [b"a", b"b"]
        await put_done.wait()
    # The byte budget counts too.
    backlog = _Backlog(max_frames=100, max_bytes=4)
    with trio.move_on_after(0.05) as waited:
        await backlog.put([b"12345"])
    assert waited.cancelled_caught


# --- the receive loop against a scripted stream and writer ------------------------------------


class _ScriptedStream:
    """Hands out `frames` a few at a time (as the walsender sends them), then nothing more.
    Counts the reads made while the applying task was busy with a batch."""

    def __init__(self, frames: list[bytes], per_read: int, backlog: _Backlog) -> None:
        self._frames = list(frames)
        self._per_read = per_read
        self._backlog = backlog
        self.reads_while_applying = 0
        self.handed_out = 0
        self.reads_without_waiting: list[int] = []  # frames handed out before each such read
        self.statuses: list[int] = []  # LSNs confirmed upstream, in order

    async def read_batch(self, *, max_frames: int, max_bytes: int, timeout_s: float) -> list[bytes]:
        if not self._frames:
            with trio.move_on_after(timeout_s):
                await trio.sleep_forever()
            return []
        if self._backlog.applying:
            self.reads_while_applying += 1
        if timeout_s == 0:
            self.reads_without_waiting.append(self.handed_out)
        n = min(self._per_read, max_frames)
        batch, self._frames = self._frames[:n], self._frames[n:]
        self.handed_out += len(batch)
        await trio.lowlevel.checkpoint()
        return batch

    async def send_status(self, lsn: int, *, reply: bool = False) -> None:
        self.statuses.append(lsn)


@dataclass
class _Outcome:
    transactions: int
    rows: int
    state_version: str
    ack_lsn: int
    reply_requested: bool = False
    schema_changed: bool = False


class _RecordingWriter:
    """Stands in for the replica writer: records each batch; `b"commit"` finishes the transaction.
    While `hold` is cleared, a batch waits for it (in the worker thread) before it is applied."""

    def __init__(self) -> None:
        self.batches: list[list[bytes]] = []
        self.state_version = "00"
        self.watermark_lsn = 0
        self.slot = "slot"
        self.hold = threading.Event()
        self.hold.set()

    def apply_frames(self, frames: list[bytes]) -> _Outcome:
        self.hold.wait()
        self.batches.append(frames)
        committed = b"commit" in frames
        if committed:
            self.state_version = "01"
            self.watermark_lsn = 1
        return _Outcome(transactions=int(committed), rows=len(frames), state_version=self.state_version, ack_lsn=self.watermark_lsn)


async def _settled(condition: Callable[[], bool]) -> None:
    """Lets the other tasks run (and the worker thread finish) until `condition` holds."""
    for _ in range(1_000):
        if condition():
            return
        await trio.testing.wait_all_tasks_blocked()
        await trio.to_thread.run_sync(lambda: None)
    raise AssertionError("the receive and apply loops stopped before the condition held")


def _replicator(tmp_path: Path) -> Replicator:
    return Replicator(load_config([], {"ZERO_UPSTREAM_DB": "postgresql://unused/db", "ZERO_REPLICA_FILE": str(tmp_path / "replica.db")}))


async def test_a_transaction_spanning_several_batches_never_waits_on_a_receive_pause(
    tmp_path: Path, mock_clock: trio.testing.MockClock
) -> None:
    # A large transaction: its Commit comes after several backlogs' worth of frames. Each batch
    # ends inside the transaction; the applying task, back for more, must get what arrived
    # meanwhile instead of waiting out the receiver's pause (before: one pause per batch). With
    # the clock stopped (`mock_clock`: no time passes) a pause ends only when the applying task
    # ends it, so a loop that waits one out never gets the transaction applied.
    frames = [b"begin", *(f"insert {i}".encode() for i in range(300)), b"commit"]
    replicator = _replicator(tmp_path)
    backlog = _Backlog(max_frames=20, max_bytes=1 << 20, counts=replicator._receive_counts)
    stream = _ScriptedStream(frames, per_read=3, backlog=backlog)
    writer = _RecordingWriter()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(replicator._receive, stream, backlog)
        nursery.start_soon(replicator._apply, writer, backlog)

        async def applied() -> None:
            await replicator.versions.wait_newer_than("00")
            nursery.cancel_scope.cancel()

        nursery.start_soon(applied)
        # Real time, as the stopped clock never reaches a deadline: only a failing loop waits this out.
        await trio.to_thread.run_sync(time.sleep, 20, abandon_on_cancel=True)
        nursery.cancel_scope.cancel()
    assert writer.state_version == "01", "the transaction was not applied: a receive pause held it"
    assert [f for batch in writer.batches for f in batch] == frames
    assert len(writer.batches) >= 15  # the backlog holds 20 frames: the transaction spans batches
    stats = replicator.statistics()
    assert stats.transactions == 1
    assert stats.receive_pauses == stats.receive_pauses_ended_by_apply


async def test_while_a_batch_is_applied_the_receiver_reads_once_then_once_per_pause(tmp_path: Path) -> None:
    # The pause still spares the receiver a wake-up for every few frames while a batch is applied:
    # the first read goes into the empty next batch at once, every later one comes after a pause.
    replicator = _replicator(tmp_path)
    backlog = _Backlog(max_frames=10_000, max_bytes=1 << 20, counts=replicator._receive_counts)
    stream = _ScriptedStream([b"begin", *(f"insert {i}".encode() for i in range(1_000)), b"commit"], per_read=1, backlog=backlog)
    writer = _RecordingWriter()
    writer.hold.clear()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(replicator._receive, stream, backlog)
        nursery.start_soon(replicator._apply, writer, backlog)
        with trio.fail_after(30):
            while replicator.statistics().receive_pauses < 3:
                await trio.sleep(0.001)
        writer.hold.set()
        nursery.cancel_scope.cancel()
    pauses = replicator.statistics().receive_pauses
    assert 1 <= stream.reads_while_applying <= pauses + 1


async def test_the_applying_task_ending_a_pause_also_takes_what_the_socket_holds(
    tmp_path: Path, mock_clock: trio.testing.MockClock
) -> None:
    # The receiver pauses with the next batch started; the frames that reach the socket meanwhile
    # (here: the scripted stream's next one) join that batch when the applying task comes back,
    # read at once without waiting for more. The clock is stopped: no pause ends by itself.
    frames = [f"frame {i}".encode() for i in range(50)]
    replicator = _replicator(tmp_path)
    backlog = _Backlog(max_frames=1_000, max_bytes=1 << 20, counts=replicator._receive_counts)
    stream = _ScriptedStream(frames, per_read=1, backlog=backlog)
    writer = _RecordingWriter()
    writer.hold.clear()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(replicator._receive, stream, backlog)
        nursery.start_soon(replicator._apply, writer, backlog)
        await _settled(lambda: replicator.statistics().receive_pauses >= 1)
        handed_out = stream.handed_out  # the first batch, being applied, and the next one so far
        writer.hold.set()
        await _settled(lambda: len(writer.batches) >= 2)
        nursery.cancel_scope.cancel()
    first, second = writer.batches[:2]
    assert stream.reads_without_waiting[0] == handed_out
    assert first + second == frames[: len(first) + len(second)]
    assert len(first) + len(second) > handed_out  # with the frame read when the applying task came back
    stats = replicator.statistics()
    assert stats.receive_pauses_ended_by_apply >= 1


class _HeldWalSync:
    """Stands in for the replica's WAL sync: while `hold` is cleared, a sync waits for it (in the
    worker thread), as a slow disk would."""

    def __init__(self) -> None:
        self.hold = threading.Event()
        self.syncs = 0

    def sync(self) -> None:
        self.hold.wait()
        self.syncs += 1


async def test_a_commit_reaches_readers_at_once_and_upstream_only_once_on_the_disk(tmp_path: Path) -> None:
    replicator = _replicator(tmp_path)
    backlog = _Backlog(max_frames=1_000, max_bytes=1 << 20, counts=replicator._receive_counts)
    stream = _ScriptedStream([b"begin", b"insert", b"commit"], per_read=3, backlog=backlog)
    writer = _RecordingWriter()
    wal = _HeldWalSync()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(replicator._receive, stream, backlog)
        nursery.start_soon(replicator._confirm, stream, wal)
        nursery.start_soon(replicator._apply, writer, backlog)
        with trio.fail_after(10):
            # Published for the view syncer while the sync still waits for the disk.
            assert await replicator.versions.wait_newer_than("00") == "01"
        await trio.testing.wait_all_tasks_blocked()
        assert wal.syncs == 0
        assert all(lsn < 1 for lsn in stream.statuses), stream.statuses
        wal.hold.set()
        await _settled(lambda: 1 in stream.statuses)
        nursery.cancel_scope.cancel()
    assert wal.syncs == 1
    assert stream.statuses[-1] == 1
