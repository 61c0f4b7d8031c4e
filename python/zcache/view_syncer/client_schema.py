"""The client-schema check on connect (§4.1): can the replica serve the tables and columns the
client declares? Every problem is reported, one per line, in zero-cache's words; any problem is a
`SchemaVersionNotSupported` error.

`replica_tables` is `QueryEngine.client_tables()["tables"]`. The shard's own tables
(`<app>_<shard>.*`, `<app>.permissions`) are not the client's business and never listed.
"""

from __future__ import annotations

from typing import Any


def _quoted(names: list[str]) -> str:
    return ",".join(f'"{n}"' for n in sorted(names))


def check_client_schema(
    client_schema: dict[str, Any], replica_tables: dict[str, Any], *, app_id: str, shard_num: int
) -> list[str]:
    """The problems (empty: the replica can serve this schema)."""
    internal = (f"{app_id}_{shard_num}.", f"{app_id}.")
    synced = {name: spec for name, spec in replica_tables.items() if not name.startswith(internal)}
    if not synced:
        return ["No tables have been synced from upstream. Please check that the ZERO_UPSTREAM_DB has been properly set."]
    client_tables: dict[str, Any] = client_schema.get("tables", {})
    problems: list[str] = []
    for table in sorted(client_tables):
        if table not in synced:
            tip = ""
            if "." in table and not any("." in t for t in synced):
                tip = (
                    " Note that zero does not sync tables from non-public schemas by default. Make sure you have"
                    " defined a custom ZERO_APP_PUBLICATION to sync tables from non-public schemas."
                )
            problems.append(f'The "{table}" table does not exist or is not one of the replicated tables: {_quoted(list(synced))}.{tip}')
    for table in sorted(t for t in client_tables if t in synced):
        client = client_tables[table]
        server = synced[table]
        columns: dict[str, str] = server["columns"]
        unsupported: dict[str, str] = server["unsupported"]
        for column in sorted(client.get("columns", {})):
            client_type = client["columns"][column].get("type")
            if column in unsupported:
                problems.append(
                    f'The "{table}"."{column}" column cannot be synced because it is of an unsupported data type "{unsupported[column]}"'
                )
            elif column not in columns:
                problems.append(
                    f'The "{table}"."{column}" column does not exist or is not one of the replicated columns: {_quoted(list(columns))}.'
                )
            elif client_type != columns[column] and client_type != "null":
                problems.append(
                    f'The "{table}"."{column}" column\'s upstream type "{columns[column]}" does not match the client type "{client_type}"'
                )
        primary_key = client.get("primaryKey")
        if not primary_key:
            problems.append(f'The "{table}" table\'s client schema does not specify a primary key.')
        elif sorted(primary_key) != sorted(server["primaryKey"]):
            problems.append(
                f'The "{table}" table\'s primaryKey <{",".join(primary_key)}> is not associated with a non-null unique index.'
            )
    return problems
