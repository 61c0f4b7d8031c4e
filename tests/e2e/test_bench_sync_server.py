"""`bench/sync_server.py --smoke` against zcache alone: the benchmark keeps working (its own
cluster, the zcache process, real Zero clients in Node) and every phase yields samples. No
speed is asserted here; the figures live in bench/README.md."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures.app_server import AppServerInstall

pytestmark = pytest.mark.e2e

BENCH = Path(__file__).resolve().parents[2] / "bench" / "sync_server.py"


def test_the_sync_server_benchmark_runs_in_smoke_mode(app_server_install: AppServerInstall, tmp_path: Path) -> None:
    out = tmp_path / "smoke.json"
    result = subprocess.run(
        [sys.executable, str(BENCH), "--smoke", "--servers", "zcache", "--json", str(out)], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    phases = json.loads(out.read_text())["phases"]
    hydrate = phases["hydrate"]["zcache"]
    kinds = ("files", "states", "newest", "owners")
    assert set(hydrate) == {*kinds, *(f"{k}_server" for k in kinds)}
    assert all(len(hydrate[k]) == 3 for k in kinds)
    # The server's turn, as the clients' sockets saw it, is part of each connect → complete.
    assert all(len(hydrate[f"{k}_server"]) == 3 for k in kinds)
    assert all(0 < turn < total for k in kinds for turn, total in zip(hydrate[f"{k}_server"], hydrate[k], strict=True))
    commit = phases["commit"]["zcache"]
    assert commit["seen"] > 0 and len(commit["latency_ms"]) == commit["seen"]
    [sustained] = phases["sustained"]["5"]["zcache"]
    assert sustained["changes_seen"] > 0 and sustained["marker_s"] is not None, {k: v for k, v in sustained.items() if k != "lag_ms"}
    [concurrent] = phases["concurrent"]["zcache"]
    assert concurrent["complete"] == 10 and concurrent["missing"] == 0
    assert all(r["seen"] == 10 for r in concurrent["fanout"])
    assert "| commit → client, p50 |" in result.stdout
