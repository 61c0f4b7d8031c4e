"""The parts of the legacy write-permission evaluation that need no database
(zcache.auth.write_authorizer): ZQL comparison semantics for conditions without a column,
LIKE patterns, and how conditions compile to SQL."""

from __future__ import annotations

from typing import Any

import pytest
from psycopg import sql

from zcache.auth.write_authorizer import WriteRulesError, _compare, _Compiler

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("left", "op", "right", "expected"),
    [
        ("admin", "=", "admin", True),
        ("admin", "!=", "admin", False),
        (None, "=", None, False),  # null compares false...
        (None, "!=", "x", False),
        (None, "IS", None, True),  # ...except with IS / IS NOT
        ("x", "IS NOT", None, True),
        (3, "<", 5, True),
        ("a", "<", 5, False),  # incomparable types: false, not an exception
        ("b", "IN", ["a", "b"], True),
        ("c", "NOT IN", ["a", "b"], True),
        ("Alice", "LIKE", "Ali%", True),
        ("alice", "LIKE", "Ali%", False),
        ("alice", "ILIKE", "ALI_E", True),
        ("50%", "LIKE", "50\\%", True),
        ("500", "LIKE", "50\\%", False),
        ("a.c", "LIKE", "a.c", True),
        ("abc", "LIKE", "a.c", False),  # regex characters are literal
        ("abc", "NOT LIKE", "a%", False),
    ],
)
def test_comparisons_without_a_column_follow_zql(left: Any, op: str, right: Any, expected: bool) -> None:
    assert _compare(left, op, right) is expected


def test_unknown_operator_is_refused() -> None:
    with pytest.raises(WriteRulesError):
        _compare(1, "~", 1)


def render(condition: dict[str, Any], claims: dict[str, Any] | None = None) -> tuple[str, list[Any]]:
    compiler = _Compiler(claims)
    row = compiler.alias()
    composed = compiler.condition(condition, row)
    return composed.as_string(None), compiler.params


def column(name: str) -> dict[str, Any]:
    return {"type": "column", "name": name}


def test_conditions_compile_to_parameterized_sql() -> None:
    text, params = render(
        {
            "type": "and",
            "conditions": [
                {"type": "simple", "op": "=", "left": column("owner_id"), "right": {"type": "static", "anchor": "authData", "field": "sub"}},
                {"type": "simple", "op": "IN", "left": column("kind"), "right": {"type": "literal", "value": ["a", None, "b"]}},
                {"type": "simple", "op": "IS NOT", "left": column("deleted_at"), "right": {"type": "literal", "value": None}},
                {"type": "or", "conditions": []},
            ],
        },
        {"sub": "u1"},
    )
    assert text == '("t0"."owner_id" = %s AND "t0"."kind" = ANY(%s) AND "t0"."deleted_at" IS NOT NULL AND FALSE)'
    assert params == ["u1", ["a", "b"]]


def test_null_claims_and_nested_claim_paths() -> None:
    eq_null, params = render({"type": "simple", "op": "=", "left": column("owner_id"), "right": {"type": "static", "anchor": "authData", "field": "sub"}})
    assert (eq_null, params) == ("FALSE", [])  # logged out: sub is null, `=` null is false
    nested, params = render(
        {"type": "simple", "op": "=", "left": column("org"), "right": {"type": "static", "anchor": "authData", "field": ["org", "id"]}},
        {"org": {"id": "o1"}},
    )
    assert (nested, params) == ('"t0"."org" = %s', ["o1"])


def test_correlated_subqueries_get_their_own_alias() -> None:
    text, params = render(
        {
            "type": "correlatedSubquery",
            "op": "NOT EXISTS",
            "related": {
                "correlation": {"parentField": ["owner_id"], "childField": ["id"]},
                "subquery": {"table": "admin.user", "where": {"type": "simple", "op": "=", "left": column("banned"), "right": {"type": "literal", "value": True}}},
            },
        }
    )
    assert text == 'NOT EXISTS (SELECT 1 FROM "admin"."user" AS "t1" WHERE "t1"."id" = "t0"."owner_id" AND "t1"."banned" = %s)'
    assert params == [True]


@pytest.mark.parametrize(
    "bad",
    [
        {"type": "nope"},
        {"type": "simple", "op": "=", "left": {"type": "literal", "value": 1}, "right": column("x")},
        {"type": "simple", "op": "IN", "left": column("x"), "right": {"type": "literal", "value": "a"}},
        {"type": "correlatedSubquery", "op": "EXISTS", "related": {"correlation": {"parentField": ["a"], "childField": []}, "subquery": {"table": "t"}}},
        "not an object",
    ],
)
def test_malformed_conditions_are_refused_with_a_message(bad: Any) -> None:
    with pytest.raises(WriteRulesError):
        render(bad)
