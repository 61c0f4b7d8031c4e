"""The replicator's backlog of received frames: bounded, taken whole, with backpressure."""

from __future__ import annotations

import trio
import trio.testing

from zcache.replica.replicator import _Backlog


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
