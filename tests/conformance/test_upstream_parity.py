"""Differential test of upstream parsing: zcache's `parse_upstream` against the real schema and
error wording of `@rocicorp/zero` 1.9.0 (what zero-cache answers `InvalidMessage` with), run by
Node 22 over a few thousand near-valid frames (`upstream_corpus.py`, `upstream_oracle.mjs`).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.conformance.upstream_corpus import corpus
from tests.fixtures.app_server import AppServerInstall
from zcache.server.protocol import ProtocolError, parse_upstream

pytestmark = pytest.mark.e2e

ORACLE = Path(__file__).with_name("upstream_oracle.mjs")


def zero_cache_verdicts(install: AppServerInstall, frames: list[str]) -> list[str | None]:
    result = subprocess.run(
        [str(install.node), str(ORACLE)],
        input="".join(json.dumps(f) + "\n" for f in frames),
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "ZERO_PACKAGE_DIR": str(install.node_modules / "@rocicorp" / "zero")},
    )
    assert result.returncode == 0, result.stderr
    verdicts = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(verdicts) == len(frames)
    return verdicts


def zcache_verdict(frame: str) -> str | None:
    try:
        parse_upstream(frame)
    except ProtocolError as e:
        assert e.kind == "InvalidMessage"
        return e.message
    return None


@pytest.mark.parametrize("seed", [1, 2])
def test_zcache_accepts_and_words_errors_as_zero_cache(app_server_install: AppServerInstall, seed: int) -> None:
    frames = corpus(seed, 2500)
    theirs = zero_cache_verdicts(app_server_install, frames)
    mismatches = [(f, t, zcache_verdict(f)) for f, t in zip(frames, theirs, strict=True) if zcache_verdict(f) != t]
    assert not mismatches, "\n".join(f"{f[:200]}\n  zero-cache: {t}\n  zcache:     {o}" for f, t, o in mismatches[:10])
    assert sum(t is None for t in theirs) > 100  # valid frames are part of the corpus too
