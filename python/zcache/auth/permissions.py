"""Legacy read permissions: the `select` rules of the replicated `<app>.permissions` row
applied to ad-hoc (legacy AST) queries.

Reproduces zero-cache 1.9's read authorizer (`zero-cache/src/auth/read-authorizer.ts`
`transformQuery`, `zql/src/builder/builder.ts` `bindStaticParameters`,
`zql/src/query/expression.ts` `simplifyCondition`, `auth/load-permissions.ts`; format of
`zero-schema/src/compiled-permissions.ts`; docs/zero-protocol.md §5.1):

* The row holds `{"tables": {<table>: {"row": {"select": Policy, "insert": …, "update":
  {"preMutation", "postMutation"}, "delete": …}, "cell": {<column>: {…}}}}}`, where a Policy
  is a list of `["allow", Condition]` rules (what `zero-deploy-permissions` writes).
* `bind_read(ast, auth)`: the root query and every `related` subquery, and every subquery of
  an `EXISTS` condition in their `where` (so that a query cannot probe rows it may not read),
  get `where := (where AND (rule₁ OR rule₂ …))`, simplified as zero-cache simplifies it. A
  table without `select` rules gets the always-false `{"type":"or","conditions":[]}`: no
  rows (zero-cache logs "No permission rules found for table …"). Then every
  `{"type":"static","anchor":"authData","field":f}` becomes a literal from the JWT claims
  (a missing field, an opaque token or no token give null; a list `field` is a path), and
  `preMutationRow` references become null, as in zero-cache.
* Subqueries of `EXISTS` conditions that come from rules are marked `system: "permissions"`
  (the compiled rules already carry it; hand-written ones may not): the query engine then
  never syncs their rows to the client.
* A missing permissions row, or NULL permissions, means no rules: every table yields no
  rows. Permissions that do not parse raise `PermissionsError` with zero-cache's message.

Write rules (CRUD `insert`/`update`/`delete`) are evaluated upstream inside the CRUD
transaction by `zcache.auth.write_authorizer` (written with the CRUD executor); they use the
same row format.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Mapping
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zcache.auth.tokens import AuthData

log = logging.getLogger("zcache.auth")

Condition = dict[str, Any]
Ast = dict[str, Any]

TRUE: Condition = {"type": "and", "conditions": []}
FALSE: Condition = {"type": "or", "conditions": []}
_CONDITION_TYPES = ("simple", "and", "or", "correlatedSubquery")


class PermissionsError(ValueError):
    """The permissions row cannot be used (zero-cache refuses it the same way)."""


def _is_always_true(condition: Condition) -> bool:
    return condition["type"] == "and" and not condition["conditions"]


def _is_always_false(condition: Condition) -> bool:
    return condition["type"] == "or" and not condition["conditions"]


def simplify(condition: Condition) -> Condition:
    """zero-cache's `simplifyCondition`: unwrap singletons, flatten nested and/or of the same
    type, and short-circuit `and` containing false / `or` containing true."""
    kind = condition["type"]
    if kind in ("simple", "correlatedSubquery"):
        return condition
    children = condition["conditions"]
    if len(children) == 1:
        return simplify(children[0])
    flattened: list[Condition] = []
    for child in map(simplify, children):
        if child["type"] == kind:
            flattened.extend(child["conditions"])
        else:
            flattened.append(child)
    if kind == "and" and any(map(_is_always_false, flattened)):
        return dict(FALSE, conditions=[])
    if kind == "or" and any(map(_is_always_true, flattened)):
        return dict(TRUE, conditions=[])
    return {"type": kind, "conditions": flattened}


def _resolve(anchor: Mapping[str, Any] | None, path: str | list[str]) -> Any:
    """zero-cache's `resolveField`: the value at `path`, null when absent."""
    value: Any = anchor
    for step in [path] if isinstance(path, str) else path:
        if not isinstance(value, Mapping):
            return None
        value = value.get(step)
    return value


def _bind_value(value: dict[str, Any], auth_data: Mapping[str, Any]) -> dict[str, Any]:
    if value.get("type") != "static":
        return value
    anchor = auth_data if value.get("anchor") == "authData" else None
    return {"type": "literal", "value": _resolve(anchor, value["field"])}


def _bind_condition(condition: Condition, auth_data: Mapping[str, Any]) -> Condition:
    kind = condition["type"]
    if kind == "simple":
        return {
            **condition,
            "left": _bind_value(condition["left"], auth_data),
            "right": _bind_value(condition["right"], auth_data),
        }
    if kind == "correlatedSubquery":
        related = condition["related"]
        return {**condition, "related": {**related, "subquery": bind_static(related["subquery"], auth_data)}}
    return {**condition, "conditions": [_bind_condition(c, auth_data) for c in condition["conditions"]]}


def bind_static(ast: Ast, auth_data: Mapping[str, Any]) -> Ast:
    """zero-cache's `bindStaticParameters` with `preMutationRow` unset."""
    bound = dict(ast)
    if "where" in ast:
        bound["where"] = _bind_condition(ast["where"], auth_data)
    if "related" in ast:
        bound["related"] = [{**sq, "subquery": bind_static(sq["subquery"], auth_data)} for sq in ast["related"]]
    return bound


def _mark_permissions(condition: Condition) -> Condition:
    """A rule condition whose EXISTS subqueries (at any depth) are `system: "permissions"`."""
    kind = condition["type"]
    if kind == "correlatedSubquery":
        related = condition["related"]
        subquery = related["subquery"]
        if "where" in subquery:
            subquery = {**subquery, "where": _mark_permissions(subquery["where"])}
        return {**condition, "related": {**related, "subquery": subquery, "system": "permissions"}}
    if kind in ("and", "or"):
        return {**condition, "conditions": [_mark_permissions(c) for c in condition["conditions"]]}
    return condition


def _check_policy(policy: Any, where: str) -> None:
    if not isinstance(policy, list):
        raise PermissionsError(f"{where} must be a list of rules")
    for index, rule in enumerate(policy):
        if (
            not isinstance(rule, list)
            or len(rule) != 2
            or rule[0] != "allow"
            or not isinstance(rule[1], dict)
            or rule[1].get("type") not in _CONDITION_TYPES
        ):
            raise PermissionsError(f'{where}[{index}] must be ["allow", <condition>]')


def _check_asset(asset: Any, where: str) -> None:
    if not isinstance(asset, dict):
        raise PermissionsError(f"{where} must be an object")
    for action in ("select", "insert", "delete"):
        if asset.get(action) is not None:
            _check_policy(asset[action], f"{where}.{action}")
    update = asset.get("update")
    if update is not None:
        if not isinstance(update, dict):
            raise PermissionsError(f"{where}.update must be an object")
        for phase in ("preMutation", "postMutation"):
            if update.get(phase) is not None:
                _check_policy(update[phase], f"{where}.update.{phase}")


def parse_permissions(text: str | None) -> dict[str, Any] | None:
    """The `tables` map of a permissions document, or None for NULL permissions."""
    if text is None:
        return None
    try:
        document = json.loads(text)
        if not isinstance(document, dict):
            raise PermissionsError("the document must be an object")
        tables = document.get("tables")
        if tables is None:
            tables = {}
        if not isinstance(tables, dict):
            raise PermissionsError("tables must be an object")
        for table, rules in tables.items():
            if not isinstance(rules, dict):
                raise PermissionsError(f"tables.{table} must be an object")
            if rules.get("row") is not None:
                _check_asset(rules["row"], f"tables.{table}.row")
            cells = rules.get("cell")
            if cells is not None:
                if not isinstance(cells, dict):
                    raise PermissionsError(f"tables.{table}.cell must be an object")
                for column, asset in cells.items():
                    _check_asset(asset, f"tables.{table}.cell.{column}")
    except (json.JSONDecodeError, PermissionsError) as exc:
        elided = text if len(text) <= 100 else text[:99] + "…"
        raise PermissionsError(
            f"Could not parse upstream permissions: '{elided}'.\nThis may happen if Permissions"
            " with a new internal format are deployed before the supporting server has been"
            f" fully rolled out. ({exc})"
        ) from None
    return tables


def _read_permissions_row(replica_path: str, app_id: str) -> tuple[str | None, str | None] | None:
    uri = f"{Path(replica_path).resolve().as_uri()}?mode=ro"
    with closing(sqlite3.connect(uri, uri=True)) as conn:
        try:
            row = conn.execute(f'SELECT permissions, hash FROM "{app_id}.permissions"').fetchone()
        except sqlite3.OperationalError as exc:
            if "no such table" not in str(exc):
                raise
            return None
    return None if row is None else (row[0], row[1])


@dataclass
class Permissions:
    """One version of the legacy rules; `hash` is the row's (md5 of the JSON), None if unset."""

    tables: dict[str, Any] | None
    hash: str | None
    _warned: set[str] = field(default_factory=set, repr=False, compare=False)

    @classmethod
    def from_json(cls, text: str | None, digest: str | None = None) -> Permissions:
        """From the row's `permissions` JSON (None: NULL) and its `hash`."""
        return cls(parse_permissions(text), digest if text is not None else None)

    @classmethod
    def from_replica(cls, replica_path: str, *, app_id: str = "zero") -> Permissions:
        """Read `<app_id>.permissions` from the replica (read-only). No table or no row: no rules."""
        row = _read_permissions_row(replica_path, app_id)
        return cls(None, None) if row is None else cls.from_json(row[0], row[1])

    @staticmethod
    def replica_hash(replica_path: str, *, app_id: str = "zero") -> str | None:
        """The current hash in the replica: reload when it differs from `Permissions.hash`."""
        row = _read_permissions_row(replica_path, app_id)
        return None if row is None else row[1]

    def select_rules(self, table: str) -> list[Condition]:
        """The `select` conditions of `table` (with permission subqueries marked); [] if none."""
        policy = ((self.tables or {}).get(table) or {}).get("row", {}) or {}
        return [_mark_permissions(condition) for _, condition in policy.get("select") or []]

    def bind_read(self, ast: Ast, auth: AuthData) -> Ast:
        """`ast` with the read rules applied and static parameters bound; see the docstring."""
        return bind_static(self._with_read_rules(ast), auth.claims or {})

    def _with_read_rules(self, query: Ast) -> Ast:
        rules = self.select_rules(query["table"])
        if not rules:
            if query["table"] not in self._warned:
                self._warned.add(query["table"])
                log.warning(
                    "No permission rules found for table '%s'. No rows will be returned. Use"
                    " ANYONE_CAN to allow all users to access all rows.",
                    query["table"],
                )
            rules = [dict(FALSE, conditions=[])]
        conditions: list[Condition] = []
        if "where" in query:
            conditions.append(self._guard_subqueries(query["where"]))
        conditions.append({"type": "or", "conditions": rules})
        transformed = dict(query)
        transformed["where"] = simplify({"type": "and", "conditions": conditions})
        if "related" in query:
            transformed["related"] = [
                {**sq, "subquery": self._with_read_rules(sq["subquery"])} for sq in query["related"]
            ]
        return transformed

    def _guard_subqueries(self, condition: Condition) -> Condition:
        """Read rules on the subqueries of the query's own EXISTS conditions (no oracle)."""
        kind = condition["type"]
        if kind == "correlatedSubquery":
            related = condition["related"]
            return {**condition, "related": {**related, "subquery": self._with_read_rules(related["subquery"])}}
        if kind in ("and", "or"):
            return {**condition, "conditions": [self._guard_subqueries(c) for c in condition["conditions"]]}
        return condition
