"""Calls that arrive while others run go out together: bounded, fair batching.

A `Coalescer` serves callers that each await the outcome of one item. A caller that finds a
free slot (fewer than `concurrency` batches running) runs a batch at once with every item
waiting, its own included: a lone caller waits for nothing. Callers that arrive while every
slot is busy wait, and the next free slot takes them together, oldest first, up to
`max_batch` items; so a burst (1,000 client groups connecting at once) costs a few large calls
instead of one per caller, and no caller is passed over. Items with the same `key` never share
a batch (a client group's flushes stay one statement each, in their order).

Batches run in the callers' own tasks (no task, no channel of its own), shielded from
cancellation: an item taken into a batch is part of a call other callers wait on. A caller
cancelled before its item was taken leaves the queue.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Awaitable, Callable, Hashable, Sequence
from typing import Generic, TypeVar

import trio

I = TypeVar("I")  # noqa: E741
R = TypeVar("R")


class _Request(Generic[I, R]):
    __slots__ = ("item", "outcome", "error", "done", "taken", "wake")

    def __init__(self, item: I) -> None:
        self.item = item
        self.outcome: R | None = None
        self.error: BaseException | None = None
        self.done = False
        self.taken = False
        self.wake = trio.Event()


class Coalescer(Generic[I, R]):
    def __init__(
        self,
        run_batch: Callable[[list[I]], Awaitable[Sequence[R | BaseException]]],
        *,
        concurrency: int,
        max_batch: int,
        key: Callable[[I], Hashable] | None = None,
    ) -> None:
        """`run_batch` returns one outcome per item, in order: its result, or the exception
        its caller gets. If `run_batch` raises, every caller of the batch gets that error."""
        assert concurrency >= 1 and max_batch >= 1
        self._run_batch = run_batch
        self._concurrency = concurrency
        self._max_batch = max_batch
        self._key = key
        self._pending: deque[_Request[I, R]] = deque()
        self._running = 0
        self.batches = 0  # batches run so far (statistics, tests)

    async def __call__(self, item: I) -> R:
        req: _Request[I, R] = _Request(item)
        self._pending.append(req)
        try:
            while not req.done:
                if not req.taken and self._running < self._concurrency:
                    await self._run_next()
                else:
                    await req.wake.wait()
                    req.wake = trio.Event()
        except BaseException:
            if not req.taken:
                self._pending.remove(req)
                self._wake_head()
                raise
            with trio.CancelScope(shield=True):
                while not req.done:
                    await req.wake.wait()
                    req.wake = trio.Event()
            raise
        if req.error is not None:
            raise req.error
        return req.outcome  # type: ignore[return-value]

    def _take(self) -> list[_Request[I, R]]:
        batch: list[_Request[I, R]] = []
        skipped: list[_Request[I, R]] = []
        keys: set[Hashable] = set()
        while self._pending and len(batch) < self._max_batch:
            r = self._pending.popleft()
            if self._key is not None:
                k = self._key(r.item)
                if k in keys:
                    skipped.append(r)
                    continue
                keys.add(k)
            r.taken = True
            batch.append(r)
        self._pending.extendleft(reversed(skipped))
        return batch

    def _wake_head(self) -> None:
        """The oldest waiting caller takes a free slot."""
        if self._pending and self._running < self._concurrency:
            self._pending[0].wake.set()

    async def _run_next(self) -> None:
        batch = self._take()
        if not batch:
            return
        self._running += 1
        self.batches += 1
        self._wake_head()
        try:
            with trio.CancelScope(shield=True):
                try:
                    outcomes = await self._run_batch([r.item for r in batch])
                    assert len(outcomes) == len(batch), "one outcome per item"
                except Exception as e:
                    outcomes = [e] * len(batch)
            for r, outcome in zip(batch, outcomes, strict=True):
                if isinstance(outcome, BaseException):
                    r.error = outcome
                else:
                    r.outcome = outcome
        finally:
            self._running -= 1
            for r in batch:
                r.done = True
                r.wake.set()
            self._wake_head()
