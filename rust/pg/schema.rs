//! The published schema: what Python reads from the upstream catalog (the shard's
//! `published_schema()` SQL function) and what the DDL event trigger emits into the replication
//! stream after every schema change. The replica is created from it and altered by diffing two of
//! them, so this JSON shape is the contract between the upstream SQL, Python and the Rust core.
//!
//! ```json
//! {"tables": [{"oid": 16390, "schema": "public", "name": "file", "replicaIdentity": "f",
//!   "primaryKey": ["id"],
//!   "columns": [{"name": "id", "attnum": 1, "typeOid": 1043, "typeName": "varchar",
//!                "typeKind": "b", "baseTypeOid": 1043, "elemTypeOid": 0, "elemTypeKind": null,
//!                "notNull": true, "hasMissing": false, "missing": null}]}]}
//! ```
//!
//! * Columns are in `attnum` order; dropped columns are absent.
//! * `primaryKey` is the primary key, or the columns of the unique index used as replica identity;
//!   empty when the table has neither (such tables cannot be replicated).
//! * `typeKind` is `pg_type.typtype` of the column's type (`b` base, `e` enum, `d` domain, …);
//!   `baseTypeOid` resolves domains to their base type (equal to `typeOid` otherwise);
//!   `elemTypeOid`/`elemTypeKind` describe the element of an array type (0 / null otherwise).
//! * `hasMissing`/`missing`: the value that rows existing before an `ADD COLUMN … DEFAULT` read
//!   for the column (`pg_attribute.attmissingval`, as JSON); replication never re-sends those rows.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PublishedSchema {
    pub tables: Vec<TableSpec>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TableSpec {
    pub oid: u32,
    pub schema: String,
    pub name: String,
    pub replica_identity: String,
    pub primary_key: Vec<String>,
    pub columns: Vec<ColumnSpec>,
}

impl TableSpec {
    /// The replica's name for the table: `name` for `public`, `schema.name` otherwise (as
    /// zero-cache names them).
    #[must_use]
    pub fn replica_name(&self) -> String {
        if self.schema == "public" {
            self.name.clone()
        } else {
            format!("{}.{}", self.schema, self.name)
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ColumnSpec {
    pub name: String,
    pub attnum: i16,
    pub type_oid: u32,
    pub type_name: String,
    pub type_kind: String,
    pub base_type_oid: u32,
    pub elem_type_oid: u32,
    pub elem_type_kind: Option<String>,
    pub not_null: bool,
    pub has_missing: bool,
    pub missing: Option<serde_json::Value>,
    /// The labels of an enum column's type (of its element type for an enum array), in sort
    /// order; `None` for other columns and in specs recorded before labels were.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enum_labels: Option<Vec<String>>,
}
