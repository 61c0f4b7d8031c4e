"""Counters of the write path, ready to be exposed as metrics.

`MutationCounters` is the mutable tally the service updates as pushes happen;
`MutationStatistics` is its frozen snapshot (`MutationService.statistics()`), in the same
spirit as `Replicator.statistics()`. Latencies are fixed-bucket histograms (Prometheus-style
cumulative buckets can be derived from them), so a snapshot is cheap and never grows.
"""

from __future__ import annotations

import bisect
from collections import Counter
from dataclasses import dataclass, field

# Upper bounds of the latency buckets, in milliseconds; a last, unbounded bucket follows.
LATENCY_BUCKETS_MS: tuple[float, ...] = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 30000)


@dataclass(frozen=True)
class LatencySnapshot:
    """`counts[i]` observations fell in (bounds[i-1], bounds[i]]; the last count is above every bound."""

    bounds_ms: tuple[float, ...]
    counts: tuple[int, ...]
    count: int
    sum_ms: float

    def quantile_ms(self, q: float) -> float | None:
        """The upper bound of the bucket holding quantile `q` (None without observations;
        infinity when it falls in the unbounded bucket)."""
        if self.count == 0:
            return None
        rank = q * self.count
        seen = 0
        for bound, n in zip((*self.bounds_ms, float("inf")), self.counts, strict=True):
            seen += n
            if seen >= rank:
                return bound
        return float("inf")


class LatencyHistogram:
    def __init__(self) -> None:
        self._counts = [0] * (len(LATENCY_BUCKETS_MS) + 1)
        self._sum_ms = 0.0

    def observe(self, seconds: float) -> None:
        ms = seconds * 1000
        self._counts[bisect.bisect_left(LATENCY_BUCKETS_MS, ms)] += 1
        self._sum_ms += ms

    def snapshot(self) -> LatencySnapshot:
        return LatencySnapshot(LATENCY_BUCKETS_MS, tuple(self._counts), sum(self._counts), self._sum_ms)


@dataclass(frozen=True)
class MutationStatistics:
    """What the write path has done since the service started.

    Custom mutations: `pushes_forwarded` HTTP requests to push URLs carried
    `mutations_forwarded` mutations; the app answered `mutations_ok` successes, `app_errors`
    application errors. CRUD mutations: `crud_applied` committed with their ops,
    `crud_denied` refused by the write permissions (the last mutation id still advances),
    `crud_failed` failed and were confirmed in error mode (MutationFailed),
    `crud_rate_limited` refused by the per-user limit.

    `already_processed` (replays: a duplicate id, ignored) and `out_of_order` (an id gap:
    the connection fails) are the conflicts. `push_failures` counts PushFailed outcomes by
    reason (`http`, `timeout`, `parse`, `internal`, `oooMutation`, `database`, ...).
    `push_latency` runs from the push's arrival to the app server's handled answer;
    `crud_latency` is the time of the CRUD transaction(s) of one mutation.
    """

    pushes_forwarded: int
    mutations_forwarded: int
    mutations_ok: int
    app_errors: int
    crud_applied: int
    crud_denied: int
    crud_failed: int
    crud_rate_limited: int
    already_processed: int
    out_of_order: int
    serialization_retries: int
    push_failures: dict[str, int]
    cleanups_sent: int
    cleanups_failed: int
    queued_pushes: int
    push_latency: LatencySnapshot
    crud_latency: LatencySnapshot


@dataclass
class MutationCounters:
    pushes_forwarded: int = 0
    mutations_forwarded: int = 0
    mutations_ok: int = 0
    app_errors: int = 0
    crud_applied: int = 0
    crud_denied: int = 0
    crud_failed: int = 0
    crud_rate_limited: int = 0
    already_processed: int = 0
    out_of_order: int = 0
    serialization_retries: int = 0
    push_failures: Counter[str] = field(default_factory=Counter)
    cleanups_sent: int = 0
    cleanups_failed: int = 0
    push_latency: LatencyHistogram = field(default_factory=LatencyHistogram)
    crud_latency: LatencyHistogram = field(default_factory=LatencyHistogram)

    def snapshot(self, queued_pushes: int) -> MutationStatistics:
        return MutationStatistics(
            pushes_forwarded=self.pushes_forwarded,
            mutations_forwarded=self.mutations_forwarded,
            mutations_ok=self.mutations_ok,
            app_errors=self.app_errors,
            crud_applied=self.crud_applied,
            crud_denied=self.crud_denied,
            crud_failed=self.crud_failed,
            crud_rate_limited=self.crud_rate_limited,
            already_processed=self.already_processed,
            out_of_order=self.out_of_order,
            serialization_retries=self.serialization_retries,
            push_failures=dict(self.push_failures),
            cleanups_sent=self.cleanups_sent,
            cleanups_failed=self.cleanups_failed,
            queued_pushes=queued_pushes,
            push_latency=self.push_latency.snapshot(),
            crud_latency=self.crud_latency.snapshot(),
        )
