"""What the side-by-side system benchmarks share: starting zcache and zero-cache 1.9.0 as
processes with zero-cache's environment, stopping them, measuring their process trees, and the
small reporting helpers.

Used by `bench/mutations.py`, `bench/sync_server.py` and `bench/replication.py --zero-cache`.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping
from pathlib import Path

import psycopg

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.fixtures.app_server import AppServerInstall  # noqa: E402
from tests.fixtures.http_server import free_port  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def git_revision() -> str:
    rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    return rev + (" with uncommitted changes" if dirty else "")


def free_port_pair() -> int:
    """A free port whose successor is free too (zero-cache also listens on port + 1)."""
    while True:
        port = free_port()
        try:
            with socket.socket() as s:
                s.bind(("127.0.0.1", port + 1))
            return port
        except OSError:
            continue


def server_commands(install: AppServerInstall) -> dict[str, list[str]]:
    """How to start each server: zcache from this checkout, zero-cache from the npm install."""
    zero_cli = install.node_modules / "@rocicorp" / "zero" / "out" / "zero" / "src" / "cli.js"
    return {"zcache": [sys.executable, "-m", "zcache"], "zero-cache": [str(install.node), str(zero_cli)]}


def server_env(name: str, upstream: str, cvr: str, change: str, workdir: Path, port: int, extra: Mapping[str, str] = {}) -> dict[str, str]:
    return {
        **os.environ,
        "ZERO_UPSTREAM_DB": upstream,
        "ZERO_CVR_DB": cvr,
        "ZERO_CHANGE_DB": change,
        "ZERO_REPLICA_FILE": str(workdir / f"{name}-replica.db"),
        "ZERO_PORT": str(port),
        "ZERO_APP_ID": "zero",
        "ZERO_LOG_LEVEL": "warn",
        "NODE_ENV": "development",
        # zero-cache would otherwise start sending anonymous usage telemetry to Rocicorp a minute
        # after its start; a benchmark's traffic stays on loopback.
        "DO_NOT_TRACK": "1",
        **extra,
    }


def start_server(
    name: str,
    command: list[str],
    upstream: str,
    cvr: str,
    change: str,
    workdir: Path,
    extra_env: Mapping[str, str] = {},
    ready_timeout_s: float = 180,
    poll_s: float = 0.2,
) -> tuple[subprocess.Popen[bytes], int]:
    """Starts a sync server with zero-cache's environment (plus `extra_env`) in its own session;
    returns it once `GET /` answers 200 (asked every `poll_s`: a start timed from outside is
    known to that much)."""
    port = free_port_pair()
    env = server_env(name, upstream, cvr, change, workdir, port, extra_env)
    log_path = workdir / f"{name}.log"
    with open(log_path, "a") as log:
        process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + ready_timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited:\n{log_path.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1) as response:
                if response.status == 200:
                    return process, port
        except OSError:
            pass
        time.sleep(poll_s)
    stop_server(process)
    raise RuntimeError(f"{name} did not become ready within {ready_timeout_s:g} s:\n{log_path.read_text()[-3000:]}")


def stop_server(process: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, 15)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, 9)
        process.wait()


def wait_for_table(dsn: str, table: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    with psycopg.connect(dsn, autocommit=True) as conn:
        while conn.execute("SELECT to_regclass(%s)", [table]).fetchone() == (None,):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{table} did not appear")
            time.sleep(0.2)


# --- process trees -----------------------------------------------------------------------


def process_tree(pid: int) -> list[int]:
    """`pid` and all its live descendants (zero-cache forks its workers)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    tree, todo = [], [pid]
    while todo:
        p = todo.pop()
        tree.append(p)
        todo.extend(children.get(p, []))
    return tree


def _kb(path: Path, key: str) -> int:
    with contextlib.suppress(OSError):
        for line in path.read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def tree_memory(pid: int) -> dict[str, int]:
    """RSS and PSS (bytes) summed over the process tree, and how many processes it has. RSS
    counts shared pages once per process (as `ps` and the reference figures do); PSS splits them."""
    pids = process_tree(pid)
    rss = sum(_kb(Path(f"/proc/{p}/status"), "VmRSS") for p in pids)
    pss = sum(_kb(Path(f"/proc/{p}/smaps_rollup"), "Pss") for p in pids)
    return {"rss_bytes": rss * 1024, "pss_bytes": pss * 1024, "processes": len(pids)}


def tree_cpu_s(pid: int) -> float:
    """utime + stime of the live process tree, in seconds."""
    total = 0
    for p in process_tree(pid):
        with contextlib.suppress(OSError, IndexError):
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
    return total / CLK_TCK


def main_thread_cpu_s(pid: int) -> float:
    """utime + stime of the process's main thread (for zcache: the Trio event loop, where the edge
    and the view syncer's Python run; worker threads do the engine's and the CVR's calls)."""
    with contextlib.suppress(OSError, IndexError):
        fields = Path(f"/proc/{pid}/task/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK
    return 0.0
