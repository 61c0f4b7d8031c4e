//! What the view syncer needs besides query maintenance:
//!
//! * current row values by key ([`QueryEngine::fetch_rows`]): a client catching up from its
//!   cookie gets the rows its CVR says changed since, by key;
//! * the replica's tables as clients may declare them ([`QueryEngine::client_tables`]), for the
//!   client-schema check on connect;
//! * [`read_patch`]: a patch turned into what a poke and a CVR flush need, row by row: the
//!   row's canonical key (the one text per key that the CVR, the engine and Postgres `jsonb`
//!   agree on, see [`canonical_json`]), its version, and its client op already encoded, so that
//!   pokes of thousands of rows are assembled by joining strings.

use std::collections::BTreeMap;

use rusqlite::{params_from_iter, OptionalExtension};
use serde::Deserialize;
use serde_json::Value;

use super::QueryEngine;
use crate::error::{Error, Result};
use crate::ivm::value::write_json_str;

impl QueryEngine {
    /// The current value of each `(table, row key)` (row keys as in patches), read in one read
    /// transaction, as a patch of puts: `{"version": …, "ops": [{"op": "put", "table", "value",
    /// "rowKey", "rowVersion"}, …], "queryErrors": {}}` in request order; keys whose row (or
    /// table) no longer exists are left out, as are keys that do not name the table's primary
    /// key.
    pub fn fetch_rows(&mut self, keys: &[(String, String)]) -> Result<Vec<u8>> {
        self.db.read(|db, version| {
            let mut out = String::with_capacity(64 + keys.len() * 160);
            out.push_str("{\"version\":");
            write_json_str(&mut out, version);
            out.push_str(",\"ops\":[");
            let mut first = true;
            for (table, key) in keys {
                let Some(info) = db.tables.get(table) else { continue };
                let Some(params) = info.key_values(key) else { continue };
                let mut stmt = db.conn.prepare_cached(&info.by_key_sql)?;
                let Some(row) = stmt
                    .query_row(params_from_iter(params), |r| info.read_row(r))
                    .optional()?
                else {
                    continue;
                };
                if !first {
                    out.push(',');
                }
                first = false;
                out.push_str("{\"op\":\"put\",\"table\":");
                write_json_str(&mut out, table);
                out.push_str(",\"rowKey\":");
                out.push_str(&row.key);
                out.push_str(",\"value\":");
                info.write_row_json(&mut out, &row);
                out.push_str(",\"rowVersion\":");
                write_json_str(&mut out, &row.version);
                out.push('}');
            }
            out.push_str("],\"queryErrors\":{}}");
            Ok(out.into_bytes())
        })
    }

    /// The replica's tables as a client schema sees them: `{"version": …, "replicaVersion": …,
    /// "tables": {"<name>": {"columns": {"<col>": "string"|"number"|"boolean"|"json"},
    /// "unsupported": {"<col>": "<upstream type>"}, "primaryKey": [...]}}}`.
    pub fn client_tables(&mut self) -> Result<Vec<u8>> {
        self.db.read(|db, version| {
            let replica_version: String = db.conn.query_row(
                r#"SELECT "replica_version" FROM "_zcache_replication_config""#,
                [],
                |r| r.get(0),
            )?;
            let mut names: Vec<&String> = db.tables.keys().collect();
            names.sort();
            let mut out = String::new();
            out.push_str("{\"version\":");
            write_json_str(&mut out, version);
            out.push_str(",\"replicaVersion\":");
            write_json_str(&mut out, &replica_version);
            out.push_str(",\"tables\":{");
            for (i, name) in names.into_iter().enumerate() {
                let info = &db.tables[name];
                if i > 0 {
                    out.push(',');
                }
                write_json_str(&mut out, name);
                out.push_str(":{\"columns\":{");
                for (j, c) in info.cols.iter().enumerate() {
                    if j > 0 {
                        out.push(',');
                    }
                    write_json_str(&mut out, &c.name);
                    out.push(':');
                    write_json_str(&mut out, c.kind.client_type().unwrap_or("string"));
                }
                out.push_str("},\"unsupported\":{");
                let mut first = true;
                for c in &info.spec.columns {
                    if info.col(&c.name).is_some() {
                        continue;
                    }
                    if !first {
                        out.push(',');
                    }
                    first = false;
                    write_json_str(&mut out, &c.name);
                    out.push(':');
                    write_json_str(&mut out, &c.type_name);
                }
                out.push_str("},\"primaryKey\":[");
                for (j, &k) in info.pk.iter().enumerate() {
                    if j > 0 {
                        out.push(',');
                    }
                    write_json_str(&mut out, &info.cols[k].name);
                }
                out.push_str("]}");
            }
            out.push_str("}}");
            Ok(out.into_bytes())
        })
    }
}

#[derive(Deserialize)]
struct PatchIn {
    version: String,
    ops: Vec<OpIn>,
    #[serde(rename = "queryErrors")]
    query_errors: BTreeMap<String, String>,
}

#[derive(Deserialize)]
struct OpIn {
    op: String,
    table: String,
    #[serde(rename = "rowKey")]
    row_key: Value,
    value: Option<Value>,
    #[serde(rename = "rowVersion")]
    row_version: Option<String>,
}

/// One row of a patch: its table, canonical key, version (`None`: deleted) and client op
/// (`{"op":"put","tableName","value"}` or `{"op":"del","tableName","id"}`).
pub struct RowOp {
    pub table: String,
    pub key: String,
    pub row_version: Option<String>,
    pub op: String,
}

/// A patch (engine patch or [`QueryEngine::fetch_rows`] result) read for a poke and a flush.
pub struct PatchView {
    pub version: String,
    pub rows: Vec<RowOp>,
    pub query_errors: Vec<(String, String)>,
}

fn malformed(what: &'static str, detail: String) -> Error {
    Error::Malformed { what, detail }
}

/// Reads a patch; see [`PatchView`].
pub fn read_patch(patch: &[u8]) -> Result<PatchView> {
    let patch: PatchIn = serde_json::from_slice(patch).map_err(|e| malformed("query engine patch", e.to_string()))?;
    let mut rows = Vec::with_capacity(patch.ops.len());
    for op in patch.ops {
        let key = serde_json::to_string(&op.row_key).expect("a JSON value serialises");
        let mut text = String::with_capacity(64 + key.len());
        let row_version = match (op.op.as_str(), op.value, op.row_version) {
            ("put", Some(value), Some(version)) => {
                text.push_str("{\"op\":\"put\",\"tableName\":");
                write_json_str(&mut text, &op.table);
                text.push_str(",\"value\":");
                text.push_str(&serde_json::to_string(&value).expect("a JSON value serialises"));
                text.push('}');
                Some(version)
            }
            ("del", _, _) => {
                text.push_str("{\"op\":\"del\",\"tableName\":");
                write_json_str(&mut text, &op.table);
                text.push_str(",\"id\":");
                text.push_str(&key);
                text.push('}');
                None
            }
            (other, _, _) => return Err(malformed("query engine patch", format!("unusable op {other:?}"))),
        };
        rows.push(RowOp {
            table: op.table,
            key,
            row_version,
            op: text,
        });
    }
    Ok(PatchView {
        version: patch.version,
        rows,
        query_errors: patch.query_errors.into_iter().collect(),
    })
}

/// The canonical text of a JSON value: compact, object keys sorted by their bytes. Row keys
/// from the engine and from Postgres `jsonb` become the same text this way.
pub fn canonical_json(text: &str) -> Result<String> {
    let value: Value = serde_json::from_str(text).map_err(|e| malformed("JSON text", e.to_string()))?;
    Ok(serde_json::to_string(&value).expect("a JSON value serialises"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patches_become_row_ops_with_canonical_keys() {
        let patch = br#"{"version":"5a","ops":[
            {"op":"put","table":"file_state","value":{"userId":"u1","fileId":"f1","n":1.5},"rowKey":{"userId":"u1","fileId":"f1"},"rowVersion":"4z"},
            {"op":"del","table":"file","rowKey":{"id":"f\"2"}}],
            "queryErrors":{"q1":"boom"}}"#;
        let view = read_patch(patch).unwrap();
        assert_eq!(view.version, "5a");
        assert_eq!(view.rows[0].key, r#"{"fileId":"f1","userId":"u1"}"#);
        assert_eq!(view.rows[0].row_version.as_deref(), Some("4z"));
        assert_eq!(
            view.rows[0].op,
            r#"{"op":"put","tableName":"file_state","value":{"fileId":"f1","n":1.5,"userId":"u1"}}"#
        );
        assert_eq!(view.rows[1].row_version, None);
        assert_eq!(view.rows[1].op, r#"{"op":"del","tableName":"file","id":{"id":"f\"2"}}"#);
        assert_eq!(view.query_errors, vec![("q1".to_owned(), "boom".to_owned())]);
        assert!(read_patch(b"{}").is_err());
    }

    #[test]
    fn canonical_json_sorts_and_compacts() {
        assert_eq!(canonical_json(r#"{"id": "f1", "a": 2}"#).unwrap(), r#"{"a":2,"id":"f1"}"#);
        assert!(canonical_json("{").is_err());
    }
}
