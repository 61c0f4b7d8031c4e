"""`zcache --help` is pinned by `tests/golden/zcache-help.txt`.

A change to the option table shows up as a diff of this file in review. To accept an
intended change, run with `ZCACHE_UPDATE_GOLDEN=1` and commit the rewritten file. The
snapshot is taken with the project's Python (3.11); argparse's layout can differ between
Python minor versions.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from zcache.config import build_arg_parser

pytestmark = pytest.mark.unit

GOLDEN = Path(__file__).parents[1] / "golden" / "zcache-help.txt"


def test_help_matches_golden() -> None:
    actual = build_arg_parser().format_help()
    if os.environ.get("ZCACHE_UPDATE_GOLDEN") == "1":
        GOLDEN.write_text(actual, encoding="utf-8")
    assert actual == GOLDEN.read_text(encoding="utf-8")


def test_help_ignores_terminal_width(monkeypatch: pytest.MonkeyPatch) -> None:
    wide = build_arg_parser().format_help()
    monkeypatch.setenv("COLUMNS", "40")
    assert build_arg_parser().format_help() == wide


def test_help_uses_the_given_program_name() -> None:
    assert build_arg_parser(prog="python -m zcache").format_help().startswith(
        "usage: python -m zcache [options]"
    )
