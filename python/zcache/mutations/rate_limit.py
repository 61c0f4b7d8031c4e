"""The per-user CRUD mutation limit (`ZERO_PER_USER_MUTATION_LIMIT_MAX` within
`ZERO_PER_USER_MUTATION_LIMIT_WINDOW_MS`).

A sliding window approximated from two fixed windows, as zero-cache's limiter does: the
current window's count plus the previous window's count weighted by the share of the sliding
window that still overlaps it. A refused attempt is not counted, so a client that keeps
retrying is not locked out for longer than its budget says.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class _Windows:
    index: int  # number of the current fixed window: floor(now / window)
    previous: int
    current: int


class MutationLimiter:
    """At most `limit` mutations per key (a user, or a client group when logged out) in any
    `window_s` seconds. Keys idle for two windows are forgotten, so memory follows the
    active users."""

    def __init__(self, limit: int, window_s: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._limit = limit
        self._window_s = window_s
        self._clock = clock
        self._windows: dict[str, _Windows] = {}
        self._next_prune = 0.0

    def try_acquire(self, key: str) -> bool:
        now = self._clock()
        self._prune(now)
        index = math.floor(now / self._window_s)
        windows = self._windows.get(key)
        if windows is None:
            windows = self._windows[key] = _Windows(index, 0, 0)
        elif windows.index != index:
            windows.previous = windows.current if windows.index == index - 1 else 0
            windows.current = 0
            windows.index = index
        overlap = 1 - (now / self._window_s - index)
        if windows.previous * overlap + windows.current >= self._limit:
            return False
        windows.current += 1
        return True

    def _prune(self, now: float) -> None:
        if now < self._next_prune:
            return
        self._next_prune = now + self._window_s
        oldest = math.floor(now / self._window_s) - 1
        for key in [k for k, w in self._windows.items() if w.index < oldest]:
            del self._windows[key]
