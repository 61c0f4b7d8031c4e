"""Legacy write permissions for CRUD mutations (§6.5): the `insert`, `update` (preMutation,
postMutation) and `delete` rules of the `<app>.permissions` row, row and cell policies.

zero-cache's rules, evaluated the same way (its `WriteAuthorizer`):

* A policy is a list of `["allow", condition]` rules; it passes when the op's row (found by its
  primary key) matches at least one condition. A missing or empty policy denies.
* Before an op is applied: `update` uses `update.preMutation`, `delete` uses `delete`;
  `insert` is not checked. After every op of the mutation has been applied: `insert` uses
  `insert`, `update` uses `update.postMutation`; `delete` is not checked. (zero-cache runs
  the pre-mutation checks of a multi-op mutation concurrently with the application of its
  ops, so which state they see is a matter of timing; zcache checks each op against the
  state just before it, so a mutation may insert a row and then update it.)
* Cell policies of the columns an op writes apply on top of the row policy (an `update` only
  checks the cells it sets); every applicable policy must pass.
* `{type:"static", anchor:"authData", field}` reads the JWT claims (a missing claim, or a
  logged-out connection, is null); `preMutationRow` references are null, as in zero-cache.

Where zero-cache evaluates the rules with its query engine over the SQLite replica (pushing
the mutation's changes into an overlay to see the post-mutation state), zcache compiles each
policy to one SQL `EXISTS`-style query and runs it upstream, inside the CRUD transaction,
before and after applying the ops: the post-mutation state is the real one, and the check
cannot be fooled by replication lag. Conditions keep ZQL's comparison semantics: a comparison
with null is false (except IS / IS NOT); comparisons that involve no column are decided here.

The rules are read from `<app>.permissions` in the same transaction and parsed again only
when the row's `hash` changes.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import psycopg
from psycopg import sql

Action = Literal["insert", "update", "delete"]
Phase = Literal["preMutation", "postMutation"]


class WriteRulesError(ValueError):
    """The permissions row or a condition in it is malformed; the message says where."""


@dataclass(frozen=True)
class WriteOp:
    """One normalized CRUD op (an upsert has already become insert or update).

    `value` holds the columns the client sent; `key` the primary-key columns and their values.
    """

    action: Action
    table: str
    value: Mapping[str, Any]
    key: Mapping[str, Any]


def split_table(table: str) -> tuple[str, str]:
    """A replica table name as (schema, table): `schema.table`, or `table` in `public`."""
    schema, dot, name = table.partition(".")
    return (schema, name) if dot else ("public", table)


def table_identifier(table: str) -> sql.Identifier:
    return sql.Identifier(*split_table(table))


class WriteRules:
    """One version of the rules (immutable: shared by concurrent transactions)."""

    def __init__(self, tables: Mapping[str, Any]) -> None:
        self._tables = tables

    def allowed_before(self, conn: psycopg.Connection[Any], op: WriteOp, claims: Mapping[str, Any] | None) -> bool:
        """The pre-mutation check of `op`; run just before it is applied."""
        return op.action == "insert" or self._can(conn, "preMutation", op, claims)

    def allowed_after(self, conn: psycopg.Connection[Any], ops: Sequence[WriteOp], claims: Mapping[str, Any] | None) -> bool:
        """The post-mutation checks; run after every op of the mutation is applied."""
        return all(self._can(conn, "postMutation", op, claims) for op in ops if op.action != "delete")

    def _can(self, conn: psycopg.Connection[Any], phase: Phase, op: WriteOp, claims: Mapping[str, Any] | None) -> bool:
        rules = self._tables.get(op.table)
        rules = rules if isinstance(rules, Mapping) else {}
        policies = [_policy_for(rules.get("row"), op.action, phase)]
        cells = rules.get("cell")
        if isinstance(cells, Mapping):
            for column, cell in cells.items():
                if op.action == "update" and column not in op.value:
                    continue
                policy = _policy_for(cell, op.action, phase)
                if policy is not None:
                    policies.append(policy)
        return all(self._passes(conn, policy, op, claims) for policy in policies)

    def _passes(self, conn: psycopg.Connection[Any], policy: Any, op: WriteOp, claims: Mapping[str, Any] | None) -> bool:
        if not isinstance(policy, list) or not policy:
            return False
        compiler = _Compiler(claims)
        row = compiler.alias()
        where = [
            sql.SQL("{} = {}").format(sql.Identifier(row, column), compiler.param(value))
            for column, value in op.key.items()
        ]
        rules = []
        for i, rule in enumerate(policy):
            if not isinstance(rule, list) or len(rule) != 2:
                raise WriteRulesError(f"rule {i} of a {op.table} policy is not an [action, condition] pair")
            rules.append(compiler.condition(rule[1], row))
        where.append(sql.SQL("({})").format(sql.SQL(" OR ").join(rules)))
        query = sql.SQL("SELECT EXISTS (SELECT 1 FROM {} AS {} WHERE {})").format(
            table_identifier(op.table), sql.Identifier(row), sql.SQL(" AND ").join(where)
        )
        found = conn.execute(query, compiler.params).fetchone()
        return bool(found and found[0])


class WriteAuthorizer:
    """Loads the rules of `<app_schema>.permissions` through the caller's connection."""

    def __init__(self, app_schema: str) -> None:
        self._table = sql.Identifier(app_schema, "permissions")
        self._lock = threading.Lock()
        self._hash: str | None = None
        self._rules = WriteRules({})

    def rules(self, conn: psycopg.Connection[Any]) -> WriteRules:
        """The current rules, read in the caller's transaction (no row: no rules, deny all)."""
        row = conn.execute(sql.SQL("SELECT hash, permissions::text FROM {}").format(self._table)).fetchone()
        digest = None if row is None else row[0]
        with self._lock:
            if digest is not None and digest == self._hash:
                return self._rules
        rules = WriteRules(_parse_tables(None if row is None else row[1]))
        with self._lock:
            self._hash, self._rules = digest, rules
        return rules


def _parse_tables(text: str | None) -> Mapping[str, Any]:
    if text is None:
        return {}
    try:
        permissions = json.loads(text)
    except ValueError as e:
        raise WriteRulesError(f"the permissions row is not JSON: {e}") from e
    if permissions is None:
        return {}
    tables = permissions.get("tables") if isinstance(permissions, dict) else None
    if not isinstance(tables, dict):
        raise WriteRulesError("the permissions row has no `tables` object")
    return tables


def _policy_for(rules: Any, action: Action, phase: Phase) -> Any:
    if not isinstance(rules, Mapping):
        return None
    if action == "update":
        update = rules.get("update")
        return update.get(phase) if isinstance(update, Mapping) else None
    if (action == "insert" and phase == "postMutation") or (action == "delete" and phase == "preMutation"):
        return rules.get(action)
    return None


_COMPARISONS = {"=": "=", "!=": "<>", "<": "<", ">": ">", "<=": "<=", ">=": ">=", "LIKE": "LIKE", "NOT LIKE": "NOT LIKE", "ILIKE": "ILIKE", "NOT ILIKE": "NOT ILIKE"}
_TRUE = sql.SQL("TRUE")
_FALSE = sql.SQL("FALSE")


class _Compiler:
    """Turns one policy's conditions into SQL with parameters, table aliases t0, t1, …"""

    def __init__(self, claims: Mapping[str, Any] | None) -> None:
        self._claims = claims
        self._aliases = 0
        self.params: list[Any] = []

    def alias(self) -> str:
        name = f"t{self._aliases}"
        self._aliases += 1
        return name

    def param(self, value: Any) -> sql.Composable:
        self.params.append(value)
        return sql.SQL("%s")

    def condition(self, cond: Any, row: str) -> sql.Composable:
        if not isinstance(cond, Mapping):
            raise WriteRulesError(f"a condition must be an object, got {cond!r}")
        kind = cond.get("type")
        if kind in ("and", "or"):
            parts = cond.get("conditions")
            if not isinstance(parts, list):
                raise WriteRulesError(f"an {kind!r} condition needs a conditions array")
            if not parts:
                return _TRUE if kind == "and" else _FALSE
            joined = sql.SQL(" AND " if kind == "and" else " OR ").join(self.condition(c, row) for c in parts)
            return sql.SQL("({})").format(joined)
        if kind == "simple":
            return self._simple(cond, row)
        if kind == "correlatedSubquery":
            return self._exists(cond, row)
        raise WriteRulesError(f"unknown condition type {kind!r}")

    def _simple(self, cond: Mapping[str, Any], row: str) -> sql.Composable:
        op = cond.get("op")
        left, right = cond.get("left"), cond.get("right")
        if not isinstance(left, Mapping) or not isinstance(right, Mapping):
            raise WriteRulesError(f"a simple condition needs left and right operands: {cond!r}")
        if left.get("type") != "column" and right.get("type") != "column":
            return _TRUE if _compare(self._value(left), op, self._value(right)) else _FALSE
        if right.get("type") == "column":
            raise WriteRulesError(f"the right operand of a condition cannot be a column: {cond!r}")
        column = sql.Identifier(row, _column_name(left))
        value = self._value(right)
        if op in ("IS", "IS NOT"):
            if value is None:
                return sql.SQL("{} IS NULL" if op == "IS" else "{} IS NOT NULL").format(column)
            template = "{} IS NOT DISTINCT FROM {}" if op == "IS" else "{} IS DISTINCT FROM {}"
            return sql.SQL(template).format(column, self.param(value))
        if value is None:
            return _FALSE  # ZQL: any other comparison with null is false
        if op in ("IN", "NOT IN"):
            if not isinstance(value, list):
                raise WriteRulesError(f"{op} needs an array literal: {cond!r}")
            values = [v for v in value if v is not None]
            if op == "IN":
                return sql.SQL("{} = ANY({})").format(column, self.param(values)) if values else _FALSE
            return sql.SQL("{} <> ALL({})").format(column, self.param(values)) if values else sql.SQL("{} IS NOT NULL").format(column)
        if op not in _COMPARISONS:
            raise WriteRulesError(f"unknown operator {op!r}")
        return sql.SQL("{} {} {}").format(column, sql.SQL(_COMPARISONS[op]), self.param(value))

    def _value(self, operand: Mapping[str, Any]) -> Any:
        kind = operand.get("type")
        if kind == "literal":
            return operand.get("value")
        if kind == "static":
            if operand.get("anchor") != "authData":
                return None
            field = operand.get("field")
            path = field if isinstance(field, list) else [field]
            value: Any = self._claims
            for step in path:
                value = value.get(step) if isinstance(value, Mapping) else None
            return value
        raise WriteRulesError(f"unknown operand type {kind!r}")

    def _exists(self, cond: Mapping[str, Any], row: str) -> sql.Composable:
        op = cond.get("op")
        related = cond.get("related")
        if op not in ("EXISTS", "NOT EXISTS") or not isinstance(related, Mapping):
            raise WriteRulesError(f"a correlated subquery needs op EXISTS/NOT EXISTS and related: {cond!r}")
        correlation, subquery = related.get("correlation"), related.get("subquery")
        if not isinstance(correlation, Mapping) or not isinstance(subquery, Mapping):
            raise WriteRulesError(f"a correlated subquery needs correlation and subquery: {cond!r}")
        parent_fields, child_fields = correlation.get("parentField"), correlation.get("childField")
        if not isinstance(parent_fields, list) or not isinstance(child_fields, list) or len(parent_fields) != len(child_fields):
            raise WriteRulesError(f"parentField and childField must be arrays of equal length: {cond!r}")
        table = subquery.get("table")
        if not isinstance(table, str):
            raise WriteRulesError(f"a subquery needs a table: {cond!r}")
        child = self.alias()
        where = [
            sql.SQL("{} = {}").format(sql.Identifier(child, str(c)), sql.Identifier(row, str(p)))
            for p, c in zip(parent_fields, child_fields, strict=True)
        ]
        if subquery.get("where") is not None:
            where.append(self.condition(subquery["where"], child))
        if subquery.get("limit") == 0:
            where.append(_FALSE)
        inner = sql.SQL("EXISTS (SELECT 1 FROM {} AS {} WHERE {})").format(
            table_identifier(table), sql.Identifier(child), sql.SQL(" AND ").join(where) if where else _TRUE
        )
        return inner if op == "EXISTS" else sql.SQL("NOT {}").format(inner)


def _column_name(operand: Mapping[str, Any]) -> str:
    name = operand.get("name")
    if not isinstance(name, str):
        raise WriteRulesError(f"a column operand needs a name: {operand!r}")
    return name


def _compare(left: Any, op: Any, right: Any) -> bool:
    """ZQL's semantics for a comparison that involves no column (e.g. an authData claim
    against a literal): null compares false except with IS / IS NOT."""
    if op == "IS":
        return bool(left == right)
    if op == "IS NOT":
        return bool(left != right)
    if left is None or right is None:
        return False
    if op in ("IN", "NOT IN"):
        if not isinstance(right, list):
            raise WriteRulesError(f"{op} needs an array literal")
        return (left in right) == (op == "IN")
    if op in ("LIKE", "NOT LIKE", "ILIKE", "NOT ILIKE"):
        if not isinstance(left, str) or not isinstance(right, str):
            return False
        flags = re.IGNORECASE | re.DOTALL if "ILIKE" in op else re.DOTALL
        matched = re.fullmatch(_like_regex(right), left, flags) is not None
        return matched != op.startswith("NOT")
    try:
        if op == "=":
            return bool(left == right)
        if op == "!=":
            return bool(left != right)
        if op == "<":
            return bool(left < right)
        if op == ">":
            return bool(left > right)
        if op == "<=":
            return bool(left <= right)
        if op == ">=":
            return bool(left >= right)
    except TypeError:
        return False
    raise WriteRulesError(f"unknown operator {op!r}")


def _like_regex(pattern: str) -> str:
    out = []
    chars = iter(pattern)
    for ch in chars:
        if ch == "\\":
            out.append(re.escape(next(chars, "\\")))
        elif ch == "%":
            out.append(".*")
        elif ch == "_":
            out.append(".")
        else:
            out.append(re.escape(ch))
    return "".join(out)
