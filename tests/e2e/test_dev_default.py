"""README's first command: `zcache` with no ZERO_UPSTREAM_DB runs the development default."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from zcache.embedded_pg import free_loopback_port

pytestmark = pytest.mark.e2e


def _wait_for_line(process: subprocess.Popen[str], needle: str, timeout_s: float) -> list[str]:
    assert process.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        lines.append(line)
        if needle in line:
            return lines
    pytest.fail(f"{needle!r} not seen; output so far:\n{''.join(lines)}")


def _run_dev_default(dev_dir: Path) -> tuple[int, list[str], str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ZERO_")}
    env["ZCACHE_DEV_DIR"] = str(dev_dir)
    port = free_loopback_port()  # not 4848: other servers may run on this machine
    env["ZERO_PORT"] = str(port)
    process = subprocess.Popen(
        [sys.executable, "-m", "zcache"],
        env=env,
        cwd=dev_dir,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        lines = _wait_for_line(process, "zcache running", timeout_s=120)
        dsn = next(line.split()[2] for line in lines if "PostgreSQL (embedded)" in line)
        with psycopg.connect(dsn) as conn:
            counts = conn.execute('SELECT (SELECT count(*) FROM "user"), (SELECT count(*) FROM file)').fetchone()
            wal_level = conn.execute("SHOW wal_level").fetchone()
        assert counts is not None and counts[0] > 0 and counts[1] > 0
        assert wal_level == ("logical",)
        # The sync server answers on the printed endpoint.
        assert any(f"ws://localhost:{port}/sync/v51/connect" in line for line in lines)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/keepalive", timeout=10) as response:
            assert (response.status, response.read()) == (200, b"OK")
        process.send_signal(signal.SIGINT)
        rest, _ = process.communicate(timeout=60)
        return process.returncode, lines + rest.splitlines(keepends=True), dsn
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()


@pytest.fixture
def dev_dir() -> Iterator[Path]:
    # Not pytest's tmp_path: as root, the embedded server runs as `postgres`, which cannot enter
    # pytest's private 0700 base directory.
    path = Path(tempfile.mkdtemp(prefix="zcache-dev-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_dev_default_starts_embedded_postgres_with_tldraw_data_and_stops_cleanly(dev_dir: Path) -> None:
    returncode, lines, dsn = _run_dev_default(dev_dir)
    output = "".join(lines)
    assert returncode == 0, output
    assert "Loaded demo data" in output
    assert "received SIGINT, shutting down" in output
    # The embedded server is stopped with zcache.
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(dsn, connect_timeout=2)

    # A second run reuses the cluster: nothing to migrate, demo data left as it is.
    returncode, lines, _ = _run_dev_default(dev_dir)
    output = "".join(lines)
    assert returncode == 0, output
    assert "Up to date" in output
    assert "Demo data not loaded" in output
