"""The capture scenarios of the shared harness, run against zcache, one test per scenario.

Each test runs `run.sh` with `ONLY=<scenario>` (fresh databases, a fresh zcache, the real
`@rocicorp/zero` 1.9.0 client and app server) and requires that

1. the scenario's driver succeeded (its views reached the expected contents, promises resolved);
2. zcache sent the same kinds of messages as zero-cache did in the golden transcript
   (`error` messages by kind), closed the sockets with the same codes, and called the app server's
   URLs the same ways;
3. what the scenario is about matches in detail (raw errors byte for byte, pongs for pings, …).

Timings, ids and cookies differ between runs; they are not compared (ids are replaced by
placeholders where bodies are compared).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conformance.capture import (
    PREREQUISITES,
    SCENARIOS,
    CaptureRun,
    app_calls,
    frames,
    message_kinds,
    notes,
    prepare_workspace,
    run_capture,
    server_close_codes,
    without_timestamps,
)
from tests.fixtures.app_server import AppServerInstall
from tests.fixtures.fix_pg import PgServer

pytestmark = pytest.mark.e2e

GOLDEN = Path(__file__).resolve().parents[2].parent / "shared" / "conformance" / "transcripts"


def _cases() -> Iterator[object]:
    for scenario in SCENARIOS:
        yield pytest.param(scenario, id=SCENARIOS[scenario])


@pytest.fixture(scope="session")
def capture_harness(app_server_install: AppServerInstall, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return prepare_workspace(app_server_install, tmp_path_factory.mktemp("capture"))


def golden(scenario: str) -> list[dict[str, object]]:
    path = GOLDEN / f"{SCENARIOS[scenario]}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.mark.parametrize("scenario", list(_cases()))
def test_capture_scenario(
    scenario: str,
    app_server_install: AppServerInstall,
    capture_harness: Path,
    pg_cluster: PgServer,
    tmp_path: Path,
) -> None:
    if pg_cluster.cluster is None:
        pytest.skip("run.sh drops and re-creates databases: only on the throwaway test cluster")
    run = run_capture(app_server_install, capture_harness, pg_cluster.admin_dsn, PREREQUISITES.get(scenario, []) + [scenario], tmp_path)
    assert run.outcome(scenario) == "ok", run.explain()
    ours, theirs = run.transcript(scenario), golden(scenario)
    assert message_kinds(ours, "s2c") == message_kinds(theirs, "s2c"), run.explain()
    # The client decides these by timing: a duplicate `put` right after connecting, pings after silence.
    timing = {"changeDesiredQueries", "ping"}
    assert message_kinds(ours, "c2s") - timing == message_kinds(theirs, "c2s") - timing, run.explain()
    assert server_close_codes(ours) == server_close_codes(theirs), run.explain()
    assert set(app_calls(ours)) == set(app_calls(theirs)), run.explain()
    CHECKS.get(scenario, lambda _r, _o, _t: None)(run, ours, theirs)


def _raw_errors(run: CaptureRun, ours: list[dict[str, object]], theirs: list[dict[str, object]]) -> None:
    """07: VersionNotSupported, InvalidMessage and the 1002 close, exactly as zero-cache sent them."""
    for note in ("raw: protocol v99", "raw: protocol v51, malformed upstream message", "raw: missing clientID"):
        assert without_timestamps(notes(ours)[note]) == without_timestamps(notes(theirs)[note]), note


def _ping_pong(run: CaptureRun, ours: list[dict[str, object]], theirs: list[dict[str, object]]) -> None:
    """10: every ping answered by a pong."""
    pings = sum(1 for f in frames(ours, "c2s") if f == ["ping", {}])
    pongs = sum(1 for f in frames(ours, "s2c") if f == ["pong", {}])
    assert pings >= 2 and pongs >= pings


def _init_message_and_update_auth(run: CaptureRun, ours: list[dict[str, object]], theirs: list[dict[str, object]]) -> None:
    """11: one socket; initConnection as a message; after updateAuth, /query calls carry the new token."""
    upgrades = [r for r in ours if r["dir"] == "http-req" and r.get("event") == "ws-upgrade"]
    assert len(upgrades) == 1
    assert upgrades[0]["data"]["secProtocolDecoded"] == {"authToken": "user:u1"}  # type: ignore[index]
    assert [f[0] for f in frames(ours, "c2s")][:1] == ["initConnection"]
    rotated = [
        r for r in ours if r["dir"] == "http-req" and "event" not in r
        and r["data"]["headers"].get("authorization") == "Bearer user:u1:rotated"  # type: ignore[index]
    ]
    assert rotated, "no /query call with the rotated token"


def _raw_session(run: CaptureRun, ours: list[dict[str, object]], theirs: list[dict[str, object]]) -> None:
    """12: the hand-written client got every reply zero-cache gave, and nothing for `pull`."""
    inspect_ops = [f[1]["op"] for f in frames(ours, "s2c") if f[0] == "inspect"]  # type: ignore[index]
    assert inspect_ops == [f[1]["op"] for f in frames(theirs, "s2c") if f[0] == "inspect"]  # type: ignore[index]
    assert ["deleteClients", {"clientIDs": ["some-old-client"]}] in frames(ours, "s2c")
    unread = notes(ours)["no reply to pull expected; unread messages"]
    assert not [m for m in unread if m[0] == "pull"]  # type: ignore[index]
    got = [f for f in frames(ours, "s2c") if f[0] == "pokePart" and "gotQueriesPatch" in f[1]]  # type: ignore[index]
    assert [p[1]["gotQueriesPatch"] for p in got] == [[{"op": "put", "hash": "rawq1"}], [{"op": "del", "hash": "rawq1"}]]  # type: ignore[index]

    def bulk_cleanups(transcript: list[dict[str, object]]) -> list[object]:
        bodies = [without_timestamps(r["body"]) for r in _mutate_requests(transcript)]
        return [{**b, "requestID": re.sub(r"\d+$", "<t>", b["requestID"])} for b in bodies]  # type: ignore[index]

    assert bulk_cleanups(ours) == bulk_cleanups(theirs) != []


def _anonymized(transcript: list[dict[str, object]]) -> Callable[[object], object]:
    """Replaces the run's clientID and clientGroupID (taken from its pushes) by placeholders,
    also inside requestIDs, and drops timestamps."""
    pushes = [f[1] for f in frames(transcript, "c2s") if f[0] == "push"]  # type: ignore[index]
    ids = {pushes[0]["clientGroupID"]: "<group>", pushes[0]["mutations"][0]["clientID"]: "<client>"}  # type: ignore[index]

    def replace(value: object) -> object:
        if isinstance(value, str):
            for real, placeholder in ids.items():
                value = value.replace(real, placeholder)
            return value
        if isinstance(value, dict):
            return {replace(k): replace(v) for k, v in value.items()}  # type: ignore[misc]
        if isinstance(value, list):
            return [replace(v) for v in value]
        return value

    return lambda value: replace(without_timestamps(value))


def _mutate_requests(transcript: list[dict[str, object]]) -> list[dict[str, object]]:
    return [
        r["data"] for r in transcript  # type: ignore[misc]
        if r["dir"] == "http-req" and "event" not in r and str(r["data"]["path"]).startswith("/mutate")  # type: ignore[index]
    ]


def _mutation_pokes(transcript: list[dict[str, object]]) -> list[object]:
    """What pokes told the client about mutations, in order."""
    keys = ("lastMutationIDChanges", "mutationsPatch")
    return [
        {k: f[1][k] for k in keys if k in f[1]}  # type: ignore[index]
        for f in frames(transcript, "s2c")
        if f[0] == "pokePart" and any(k in f[1] for k in keys)  # type: ignore[index]
    ]


def _custom_mutations(run: CaptureRun, ours: list[dict[str, object]], theirs: list[dict[str, object]]) -> None:
    """03: the /mutate requests (params, bearer token, bodies incl. the cleanup) and the
    mutation outcomes poked back (lastMutationIDChanges, mutationsPatch put then del)."""
    mine, golden_ = _anonymized(ours), _anonymized(theirs)

    def requests(transcript: list[dict[str, object]], anon: Callable[[object], object]) -> list[object]:
        out = []
        for r in _mutate_requests(transcript):
            body = dict(r["body"])  # type: ignore[call-overload]
            if not str(body["requestID"]).startswith("cleanup-"):
                body.pop("requestID")  # the client's own request counter
            out.append(anon({"path": r["path"], "query": r["query"], "auth": r["headers"]["authorization"], "body": body}))  # type: ignore[index]
        return out

    assert requests(ours, mine) == requests(theirs, golden_)
    assert mine(_mutation_pokes(ours)) == golden_(_mutation_pokes(theirs))


def _crud(run: CaptureRun, ours: list[dict[str, object]], theirs: list[dict[str, object]]) -> None:
    """05: the CRUD mutation was applied by zcache (no /mutate call) and poked back with its row."""
    assert _mutate_requests(ours) == []
    mine, golden_ = _anonymized(ours), _anonymized(theirs)
    crud_poke = [
        mine({k: f[1][k] for k in ("lastMutationIDChanges", "rowsPatch") if k in f[1]})  # type: ignore[index]
        for f in frames(ours, "s2c") if f[0] == "pokePart" and "lastMutationIDChanges" in f[1]  # type: ignore[index]
    ]
    golden_poke = [
        golden_({k: f[1][k] for k in ("lastMutationIDChanges", "rowsPatch") if k in f[1]})  # type: ignore[index]
        for f in frames(theirs, "s2c") if f[0] == "pokePart" and "lastMutationIDChanges" in f[1]  # type: ignore[index]
    ]
    assert crud_poke == golden_poke


def _push_http_500(run: CaptureRun, ours: list[dict[str, object]], theirs: list[dict[str, object]]) -> None:
    """09: four attempts at the failing URL, then the PushFailed error exactly as zero-cache sent it."""
    assert [r["path"] for r in _mutate_requests(ours)] == ["/mutate-500"] * 4
    errors = [f for f in frames(ours, "s2c") if f[0] == "error"]
    assert _anonymized(ours)(errors) == _anonymized(theirs)([f for f in frames(theirs, "s2c") if f[0] == "error"])


CHECKS = {
    "03": _custom_mutations,
    "05": _crud,
    "07": _raw_errors,
    "09": _push_http_500,
    "10": _ping_pong,
    "11": _init_message_and_update_auth,
    "12": _raw_session,
}
