"""Running the shared capture harness (`../shared/conformance/capture/run.sh`) against zcache, and
comparing what it records with the golden transcripts that the real zero-cache 1.9 produced.

`run.sh` re-creates its databases (`zapp`, `zcvr`, `zchange`) on the test cluster, starts the
server command (`ZERO_CACHE_CMD`, here `python -m zcache`) with zero-cache's `ZERO_*` environment,
waits for `GET /`, and runs `capture.mjs`: a real `@rocicorp/zero` 1.9.0 client behind a logging
proxy, and the harness's app server, recording one JSONL transcript per scenario.

The harness folder is read-only: it is copied to a scratch folder next to a link to the npm
install of `tests/fixtures/app_server.py` (once per machine and package.json).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from psycopg.conninfo import conninfo_to_dict

from tests.fixtures.app_server import AppServerInstall
from zcache.embedded_pg import find_pg_binaries, free_loopback_port

SCENARIOS = {
    "01": "01-connect-query-upstream-changes",
    "02": "02-related-and-complex-queries",
    "03": "03-custom-mutations",
    "04": "04-reconnect-basecookie",
    "05": "05-legacy-ast-and-crud",
    "06": "06-transform-error",
    "07": "07-raw-errors",
    "08": "08-restart-persisted-client-group",
    "09": "09-push-http-500",
    "10": "10-idle-ping-pong",
    "11": "11-initconnection-message-and-update-auth",
    "12": "12-raw-session",
}
# Scenario 12 reads through the legacy permissions that scenario 05 deploys first.
PREREQUISITES = {"12": ["05"]}
RUN_TIMEOUT_S = 240.0


@dataclass(frozen=True)
class CaptureRun:
    returncode: int
    stdout: str
    transcripts: Path
    server_log: Path

    def transcript(self, scenario: str) -> list[dict[str, Any]]:
        path = self.transcripts / f"{SCENARIOS[scenario]}.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def outcome(self, scenario: str) -> str:
        """`ok`, or the driver's failure text."""
        name = SCENARIOS[scenario]
        # The app server and the client may log lines (e.g. an app error) before the verdict.
        match = re.search(rf"== {re.escape(name)} -> [^\n]*\n(?:(?!== )[^\n]*\n)*?   (ok|FAILED: [^\n]*)", self.stdout)
        return match.group(1) if match else "not run"

    def explain(self) -> str:
        log = self.server_log.read_text(errors="replace") if self.server_log.exists() else "(no server log)"
        return f"--- capture.mjs\n{self.stdout[-6000:]}\n--- zcache log (tail)\n{log[-8000:]}"


def prepare_workspace(install: AppServerInstall, workspace: Path) -> Path:
    """A writable copy of the harness with the npm install linked in."""
    harness = workspace / "capture"
    shutil.copytree(install.harness, harness, ignore=shutil.ignore_patterns("node_modules"))
    for path in harness.iterdir():
        path.chmod(0o755 if path.suffix == ".sh" else 0o644)
    (harness / "node_modules").symlink_to(install.node_modules, target_is_directory=True)
    return harness


def run_capture(install: AppServerInstall, harness: Path, admin_dsn: str, scenarios: list[str], workdir: Path) -> CaptureRun:
    """One `run.sh` with ONLY=<scenarios>, zcache as the server, on free loopback ports."""
    pg = conninfo_to_dict(admin_dsn)
    transcripts = workdir / "transcripts"
    server_dir = workdir / "server"
    server_dir.mkdir(parents=True)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("ZERO_")},
        "PATH": f"{find_pg_binaries().bindir}{os.pathsep}{os.environ.get('PATH', '')}",
        "PGHOST": str(pg.get("host", "127.0.0.1")),
        "PGPORT": str(pg.get("port", 5432)),
        "PGUSER": str(pg.get("user", "postgres")),
        "ZERO_PORT": str(free_loopback_port()),
        "PROXY_PORT": str(free_loopback_port()),
        "APP_PORT": str(free_loopback_port()),
        "WORKDIR": str(server_dir),
        "TRANSCRIPTS_DIR": str(transcripts),
        "NODE_MODULES_DIR": str(install.node_modules),
        "NODE": str(install.node),
        "ZERO_CACHE_CMD": f"exec '{sys.executable}' -m zcache",
        "ZERO_LOG_LEVEL": "debug",
        "ONLY": ",".join(scenarios),
    }
    result = subprocess.run(
        ["bash", str(harness / "run.sh")],
        cwd=harness,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=RUN_TIMEOUT_S,
    )
    return CaptureRun(result.returncode, result.stdout, transcripts, server_dir / "zero-cache.log")


# --- comparing transcripts ------------------------------------------------------------------


def frames(transcript: list[dict[str, Any]], direction: str) -> list[Any]:
    return [r["data"] for r in transcript if r["dir"] == direction and "event" not in r]


def message_kinds(transcript: list[dict[str, Any]], direction: str) -> set[str]:
    """Message types, with the kind for `error` messages (`error:InvalidMessage`)."""
    kinds = set()
    for data in frames(transcript, direction):
        if isinstance(data, list) and data:
            kinds.add(f"error:{data[1].get('kind')}" if data[0] == "error" else str(data[0]))
    return kinds


def server_close_codes(transcript: list[dict[str, Any]]) -> list[int]:
    """Close codes the client side saw from the server, per connection, in order."""
    return [r["data"]["code"] for r in transcript if r["dir"] == "s2c" and r.get("event") == "ws-close"]


def app_calls(transcript: list[dict[str, Any]]) -> Counter[str]:
    """`/query` and `/mutate` calls zcache made to the app server, by path and body kind."""
    calls: Counter[str] = Counter()
    for r in transcript:
        if r["dir"] == "http-req" and "event" not in r:
            body = r["data"].get("body")
            kind = body[0] if isinstance(body, list) and body else "push"
            calls[f"{r['data']['path']}:{kind}"] += 1
    return calls


def notes(transcript: list[dict[str, Any]]) -> dict[str, Any]:
    return {r["note"]: r["data"] for r in transcript if r["dir"] == "note"}


def without_timestamps(value: Any) -> Any:
    """`connected` timestamps and the like differ on every run."""
    if isinstance(value, dict):
        return {k: ("<t>" if k == "timestamp" else without_timestamps(v)) for k, v in value.items()}
    if isinstance(value, list):
        return [without_timestamps(v) for v in value]
    return value
