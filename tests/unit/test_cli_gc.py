"""The server process's collector settings (`zcache.cli.tune_gc`), checked in a child interpreter
so the test process keeps its own."""

from __future__ import annotations

import subprocess
import sys

PROBE = """
import gc
from zcache.cli import GC_THRESHOLDS, tune_gc
before = gc.get_freeze_count()
tune_gc()
assert gc.get_threshold() == GC_THRESHOLDS, gc.get_threshold()
assert gc.get_freeze_count() > before, "nothing was frozen"
"""


def test_tune_gc_sets_the_thresholds_and_freezes_what_is_loaded() -> None:
    result = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def test_the_server_path_tunes_the_collector() -> None:
    # `_serve` is what `zcache` runs once its configuration is read; it must tune before serving.
    probe = """
import gc, trio
from zcache import cli
seen = []
trio.run = lambda *a, **k: seen.append(gc.get_threshold())
cli._serve(cli.zconfig.load_config([], {"ZERO_UPSTREAM_DB": "postgres://u@h/db"}))
assert seen == [cli.GC_THRESHOLDS], seen
"""
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
