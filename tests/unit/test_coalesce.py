"""The Coalescer: a lone call goes out at once, calls arriving meanwhile go together (oldest
first, bounded), one caller's error stays its own, cancelled callers leave the queue."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
import trio
import trio.testing

from zcache.coalesce import Coalescer


class Recorder:
    """A batch call that takes `delay` seconds and records the batches it was given."""

    def __init__(self, delay: float = 0.01) -> None:
        self.delay = delay
        self.batches: list[list[int]] = []
        self.running = 0
        self.most_running = 0

    async def __call__(self, items: list[int]) -> Sequence[int | BaseException]:
        self.batches.append(list(items))
        self.running += 1
        self.most_running = max(self.most_running, self.running)
        await trio.sleep(self.delay)
        self.running -= 1
        return [ValueError(f"bad {i}") if i < 0 else i * 10 for i in items]


async def test_a_lone_call_runs_at_once() -> None:
    rec = Recorder(delay=0)
    c: Coalescer[int, int] = Coalescer(rec, concurrency=1, max_batch=8)
    with trio.fail_after(1):
        assert await c(3) == 30
    assert rec.batches == [[3]]


async def test_callers_arriving_meanwhile_go_together_oldest_first_and_bounded() -> None:
    rec = Recorder()
    c: Coalescer[int, int] = Coalescer(rec, concurrency=1, max_batch=4)
    results: dict[int, int] = {}

    async def call(i: int) -> None:
        results[i] = await c(i)

    async with trio.open_nursery() as nursery:
        for i in range(10):
            nursery.start_soon(call, i)
            await trio.testing.wait_all_tasks_blocked()
    assert results == {i: i * 10 for i in range(10)}
    # The first alone (nothing waited), then what waited, four at a time, in arrival order.
    assert rec.batches == [[0], [1, 2, 3, 4], [5, 6, 7, 8], [9]]
    assert rec.most_running == 1
    assert c.batches == 4


async def test_concurrency_bounds_the_batches_running_at_once() -> None:
    rec = Recorder()
    c: Coalescer[int, int] = Coalescer(rec, concurrency=2, max_batch=100)
    async with trio.open_nursery() as nursery:
        for i in range(20):
            nursery.start_soon(c, i)
            await trio.testing.wait_all_tasks_blocked()
    assert rec.most_running == 2
    assert sorted(i for b in rec.batches for i in b) == list(range(20))
    assert len(rec.batches) < 20


async def test_items_with_the_same_key_never_share_a_batch() -> None:
    rec = Recorder()
    c: Coalescer[int, int] = Coalescer(rec, concurrency=1, max_batch=100, key=lambda i: i % 3)
    async with trio.open_nursery() as nursery:
        for i in range(9):
            nursery.start_soon(c, i)
            await trio.testing.wait_all_tasks_blocked()
    for b in rec.batches:
        assert len({i % 3 for i in b}) == len(b)
    # Same-key items keep their order across batches.
    order = [i for b in rec.batches for i in b]
    for k in range(3):
        assert [i for i in order if i % 3 == k] == sorted(i for i in range(9) if i % 3 == k)


async def test_an_items_error_goes_to_its_caller_only() -> None:
    rec = Recorder()
    c: Coalescer[int, int] = Coalescer(rec, concurrency=1, max_batch=100)
    outcomes: dict[int, object] = {}

    async def call(i: int) -> None:
        try:
            outcomes[i] = await c(i)
        except ValueError as e:
            outcomes[i] = str(e)

    async with trio.open_nursery() as nursery:
        for i in (1, 2, -3, 4):
            nursery.start_soon(call, i)
            await trio.testing.wait_all_tasks_blocked()
    assert outcomes == {1: 10, 2: 20, -3: "bad -3", 4: 40}
    assert rec.batches == [[1], [2, -3, 4]]


async def test_a_failed_batch_fails_every_caller_in_it_and_the_next_batch_runs() -> None:
    calls: list[list[int]] = []

    async def run(items: list[int]) -> list[int]:
        calls.append(items)
        await trio.sleep(0.01)
        if 2 in items:
            raise OSError("down")
        return items

    c: Coalescer[int, int] = Coalescer(run, concurrency=1, max_batch=2)
    outcomes: dict[int, object] = {}

    async def call(i: int) -> None:
        try:
            outcomes[i] = await c(i)
        except OSError as e:
            outcomes[i] = str(e)

    async with trio.open_nursery() as nursery:
        for i in range(1, 6):
            nursery.start_soon(call, i)
            await trio.testing.wait_all_tasks_blocked()
    assert calls == [[1], [2, 3], [4, 5]]
    assert outcomes == {1: 1, 2: "down", 3: "down", 4: 4, 5: 5}


async def test_a_caller_cancelled_while_waiting_leaves_the_queue() -> None:
    rec = Recorder(delay=0.05)
    c: Coalescer[int, int] = Coalescer(rec, concurrency=1, max_batch=100)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(c, 1)
        await trio.testing.wait_all_tasks_blocked()
        with trio.move_on_after(0.01):
            await c(2)  # waits behind the first batch, then is cancelled
        nursery.start_soon(c, 4)
    assert rec.batches == [[1], [4]]


async def test_a_batch_is_not_cut_short_by_a_callers_cancellation() -> None:
    rec = Recorder(delay=0.05)
    c: Coalescer[int, int] = Coalescer(rec, concurrency=1, max_batch=100)
    outcomes: dict[int, object] = {}

    async def call(i: int, timeout: float) -> None:
        with trio.move_on_after(timeout):
            outcomes[i] = await c(i)
            return
        outcomes[i] = "cancelled"

    async with trio.open_nursery() as nursery:
        nursery.start_soon(call, 1, 0.01)  # runs the first batch itself
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(call, 2, 10)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(call, 3, 0.06)  # taken into the second batch, cancelled during it
        await trio.testing.wait_all_tasks_blocked()
    assert rec.batches == [[1], [2, 3]]
    assert rec.running == 0
    # The runner gets its result (the cancellation reaches it at its next checkpoint); a
    # caller whose item another ran waits for the batch's end, then sees its cancellation.
    assert outcomes == {1: 10, 2: 20, 3: "cancelled"}


@pytest.mark.parametrize("concurrency", [1, 3])
async def test_every_caller_is_served_under_a_steady_stream(concurrency: int) -> None:
    rec = Recorder(delay=0.001)
    c: Coalescer[int, int] = Coalescer(rec, concurrency=concurrency, max_batch=5)
    results: list[int] = []

    async def call(i: int) -> None:
        results.append(await c(i))

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            for i in range(200):
                nursery.start_soon(call, i)
                if i % 7 == 0:
                    await trio.sleep(0)
    assert sorted(results) == [i * 10 for i in range(200)]
    assert all(len(b) <= 5 for b in rec.batches)
