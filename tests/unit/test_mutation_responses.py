"""How the app server's answers to a push are read (zcache.mutations.responses), the CRUD
rate limiter and the latency histogram: pure logic, no database."""

from __future__ import annotations

import json
from typing import Any

import pytest

from zcache.mutations.rate_limit import MutationLimiter
from zcache.mutations.responses import USER_MISMATCH, interpret
from zcache.mutations.stats import LatencyHistogram

pytestmark = pytest.mark.unit

IDS = [{"id": 1, "clientID": "c1"}, {"id": 2, "clientID": "c1"}, {"id": 7, "clientID": "c2"}]


def answer(body: Any, user_id: str | None = "u1") -> Any:
    return interpret(json.dumps(body).encode(), IDS, user_id)


def test_successful_results_are_counted_and_fail_nobody() -> None:
    outcome = answer(
        {
            "kind": "MutateResponse",
            "userID": "u1",
            "mutations": [
                {"id": {"clientID": "c1", "id": 1}, "result": {}},
                {"id": {"clientID": "c1", "id": 2}, "result": {"error": "app", "message": "no", "details": {"x": 1}}},
                {"id": {"clientID": "c2", "id": 7}, "result": {"error": "alreadyProcessed", "details": "dup"}},
            ],
        }
    )
    assert outcome.failures == {}
    assert outcome.reason is None
    assert (outcome.ok, outcome.app_errors, outcome.already_processed, outcome.out_of_order) == (1, 1, 1, 0)


def test_legacy_success_without_kind_skips_the_user_check() -> None:
    outcome = answer({"mutations": [{"id": {"clientID": "c1", "id": 1}, "result": {"data": 5}}]}, user_id="someone")
    assert outcome.failures == {} and outcome.ok == 1


def test_ooo_mutation_result_fails_that_client_with_all_its_mutations() -> None:
    outcome = answer(
        {
            "kind": "MutateResponse",
            "mutations": [
                {"id": {"clientID": "c1", "id": 1}, "result": {}},
                {"id": {"clientID": "c1", "id": 2}, "result": {"error": "oooMutation", "details": "expected 1"}},
                {"id": {"clientID": "c2", "id": 7}, "result": {}},
            ],
        }
    )
    assert list(outcome.failures) == ["c1"]
    assert outcome.failures["c1"] == {
        "kind": "PushFailed",
        "origin": "server",
        "reason": "oooMutation",
        "message": "mutation was out of order",
        "mutationIDs": [{"clientID": "c1", "id": 1}, {"clientID": "c1", "id": 2}],
        "details": "expected 1",
    }
    assert outcome.out_of_order == 1


def test_app_push_failed_goes_whole_to_every_named_client() -> None:
    body = {
        "kind": "PushFailed",
        "origin": "server",
        "reason": "database",
        "message": "db down",
        "mutationIDs": [{"id": 1, "clientID": "c1"}, {"id": 7, "clientID": "c2"}],
        "details": {"code": "57P01"},
    }
    outcome = answer(body)
    assert outcome.failures == {"c1": body, "c2": body}
    assert outcome.reason == "database"


def test_push_failed_naming_nobody_fails_nobody() -> None:
    outcome = answer({"kind": "PushFailed", "origin": "server", "reason": "internal", "message": "x", "mutationIDs": []})
    assert outcome.failures == {} and outcome.reason == "internal"


@pytest.mark.parametrize(
    ("legacy", "expected"),
    [
        (
            {"error": "http", "status": 502, "details": "bad gateway", "mutationIDs": [{"id": 7, "clientID": "c2"}]},
            {
                "kind": "PushFailed",
                "origin": "zeroCache",
                "reason": "http",
                "status": 502,
                "bodyPreview": "bad gateway",
                "message": "Fetch from API server returned non-OK status 502",
                "mutationIDs": [{"id": 7, "clientID": "c2"}],
            },
        ),
        (
            {"error": "unsupportedPushVersion", "mutationIDs": [{"id": 7, "clientID": "c2"}]},
            {
                "kind": "PushFailed",
                "origin": "server",
                "reason": "unsupportedPushVersion",
                "mutationIDs": [{"id": 7, "clientID": "c2"}],
                "message": "Unsupported push version",
            },
        ),
        (
            {"error": "zeroPusher", "details": "boom", "mutationIDs": [{"id": 7, "clientID": "c2"}]},
            {
                "kind": "PushFailed",
                "origin": "server",
                "reason": "internal",
                "mutationIDs": [{"id": 7, "clientID": "c2"}],
                "message": "boom",
            },
        ),
    ],
)
def test_legacy_error_bodies_become_push_failed(legacy: dict[str, Any], expected: dict[str, Any]) -> None:
    assert answer(legacy).failures == {"c2": expected}


def test_user_id_mismatch_fails_the_push_as_http_401() -> None:
    outcome = answer({"kind": "MutateResponse", "userID": "u2", "mutations": []})
    expected = {
        "kind": "PushFailed",
        "origin": "zeroCache",
        "reason": "http",
        "status": 401,
        "message": USER_MISMATCH,
        "mutationIDs": IDS,
    }
    assert outcome.failures == {"c1": expected, "c2": expected}


def test_null_user_id_matches_a_logged_out_connection() -> None:
    assert answer({"kind": "MutateResponse", "userID": None, "mutations": []}, user_id=None).failures == {}
    assert answer({"kind": "MutateResponse", "userID": None, "mutations": []}, user_id="u1").reason == "http"


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        (b"<html>oops</html>", "Failed to parse response from API server"),
        (b"[1, 2]", "expected a JSON object, got array"),
        (b'{"kind": "Nope"}', "unknown response kind 'Nope'"),
        (b'{"kind": "MutateResponse", "mutations": {}}', "mutations must be an array"),
        (b'{"kind": "MutateResponse", "mutations": [{"id": 1, "result": {}}]}', "mutations[0].id"),
        (b'{"kind": "MutateResponse", "mutations": [{"id": {"clientID": "c1", "id": 1}, "result": {"error": "weird"}}]}', "weird"),
        (b'{"kind": "PushFailed", "origin": "server", "reason": "http", "message": "m", "mutationIDs": []}', "reason 'http'"),
        (b'{"error": "teapot"}', "teapot"),
        (b'{"kind": "MutateResponse", "userID": 5, "mutations": []}', "userID"),
    ],
)
def test_garbage_is_a_parse_failure_for_every_pushed_mutation(raw: bytes, fragment: str) -> None:
    outcome = interpret(raw, IDS, "u1")
    assert outcome.reason == "parse"
    body = outcome.failures["c1"]
    assert body["kind"] == "PushFailed" and body["origin"] == "zeroCache" and body["reason"] == "parse"
    assert body["message"].startswith("Failed to parse response from API server: ")
    assert fragment in body["message"]
    assert body["mutationIDs"] == IDS
    assert set(outcome.failures) == {"c1", "c2"}


def test_limiter_allows_the_budget_then_refuses_without_counting_refusals() -> None:
    now = [100.0]
    limiter = MutationLimiter(3, 10.0, clock=lambda: now[0])
    assert [limiter.try_acquire("u") for _ in range(4)] == [True, True, True, False]
    assert limiter.try_acquire("other")  # per key
    now[0] = 110.0  # the new window starts; the previous one still weighs fully
    assert not limiter.try_acquire("u")
    now[0] = 115.0  # half of the previous window overlaps: 3 * 0.5 = 1.5 < 3
    assert limiter.try_acquire("u")
    now[0] = 140.0  # long idle: a fresh budget
    assert [limiter.try_acquire("u") for _ in range(4)] == [True, True, True, False]


def test_latency_histogram_buckets_and_quantiles() -> None:
    histogram = LatencyHistogram()
    assert histogram.snapshot().quantile_ms(0.5) is None
    for seconds in (0.0005, 0.003, 0.003, 0.040, 90.0):
        histogram.observe(seconds)
    snap = histogram.snapshot()
    assert snap.count == 5
    assert snap.counts[0] == 1 and snap.counts[2] == 2 and snap.counts[-1] == 1
    assert snap.quantile_ms(0.5) == 5
    assert snap.quantile_ms(0.8) == 50
    assert snap.quantile_ms(1.0) == float("inf")
    assert snap.sum_ms == pytest.approx(90046.5)
