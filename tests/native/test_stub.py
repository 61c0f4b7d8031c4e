"""The typed stub `zcache/_native.pyi` is the Python↔Rust contract: it must name exactly what the
built module exports, with the same members on every class."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import zcache._native as native

pytestmark = pytest.mark.unit

STUB = Path(native.__file__).with_name("_native.pyi")


def _stub_definitions() -> dict[str, set[str]]:
    tree = ast.parse(STUB.read_text())
    found: dict[str, set[str]] = {}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef):
            found[node.name] = set()
        elif isinstance(node, ast.ClassDef):
            members = {
                item.name if isinstance(item, ast.FunctionDef) else item.target.id  # type: ignore[union-attr]
                for item in node.body
                if isinstance(item, ast.FunctionDef) or (isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name))
            }
            found[node.name] = {m for m in members if not m.startswith("__")}
    return found


def test_stub_names_exactly_the_module_exports() -> None:
    exported = {name for name in dir(native) if not name.startswith("_")}
    assert set(_stub_definitions()) == exported


def test_stub_classes_list_the_public_members() -> None:
    for name, members in _stub_definitions().items():
        obj = getattr(native, name)
        if isinstance(obj, type) and not issubclass(obj, BaseException):
            public = {m for m in dir(obj) if not m.startswith("_")}
            assert members == public, name
