"""Test-suite wiring: fixture plugins, hypothesis profiles and the `--run-slow` switch.

`tests/` is a package (it has an `__init__.py`), so pytest's default `prepend` import mode puts
the repository root on `sys.path` and the fixture plugins import as `tests.fixtures.<name>`,
whether pytest is run as `pytest` or `python -m pytest`, from any directory. Keep an
`__init__.py` in every test directory too: modules are then named by their full path
(`tests.pg.test_migrations`), so two directories may each have a `test_migrations.py`.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import settings

pytest_plugins = ["tests.fixtures.fix_pg", "tests.fixtures.http_server", "tests.fixtures.app_server"]

# HYPOTHESIS_PROFILE picks one: `ci` (the default) is quick, `dev` digs a little deeper,
# `slow` is for a nightly or a hunt. No deadline anywhere: shared CI machines stall.
settings.register_profile("ci", max_examples=30, deadline=None, derandomize=False, print_blob=True)
settings.register_profile("dev", parent=settings.get_profile("ci"), max_examples=100)
settings.register_profile("slow", parent=settings.get_profile("ci"), max_examples=1000)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--run-slow", action="store_true", default=False, help="also run tests marked slow")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--run-slow"):
        return
    skip_slow = pytest.mark.skip(reason="slow; run with --run-slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip_slow)
