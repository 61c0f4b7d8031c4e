"""Benchmark wiring: pytest-benchmark is off unless `--benchmark-enable` is given.

`make bench` runs `pytest bench --benchmark-enable`. Without that flag (e.g. `pytest bench`), every
benchmark runs once on a small input, as a smoke test that the code under measurement still works.
The whole-system replication benchmark is a script, not a pytest module: `bench/replication.py`.
"""

from __future__ import annotations

import pytest


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    # pytest-benchmark reads these in its own (trylast) pytest_configure.
    if not config.getoption("benchmark_enable", default=False):
        config.option.benchmark_disable = True
