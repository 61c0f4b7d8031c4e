//! Reads for the view syncer that are not query maintenance: current row values by key (a
//! client catching up from its cookie gets the rows its CVR says changed since, by key) and the
//! replica's tables as clients may declare them (the client-schema check on connect).

use rusqlite::{params_from_iter, OptionalExtension};

use super::QueryEngine;
use crate::error::Result;
use crate::ivm::value::write_json_str;

impl QueryEngine {
    /// The current value of each `(table, row key)` (row keys as in patches), read in one read
    /// transaction. Returns `{"version": …, "rows": [{"table", "rowKey", "value",
    /// "rowVersion"}, …]}` in request order; keys whose row (or table) no longer exists are left
    /// out, as are keys that do not name the table's primary key.
    pub fn fetch_rows(&mut self, keys: &[(String, String)]) -> Result<Vec<u8>> {
        self.db.read(|db, version| {
            let mut out = String::with_capacity(64 + keys.len() * 160);
            out.push_str("{\"version\":");
            write_json_str(&mut out, version);
            out.push_str(",\"rows\":[");
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
                out.push_str("{\"table\":");
                write_json_str(&mut out, table);
                out.push_str(",\"rowKey\":");
                out.push_str(&row.key);
                out.push_str(",\"value\":");
                info.write_row_json(&mut out, &row);
                out.push_str(",\"rowVersion\":");
                write_json_str(&mut out, &row.version);
                out.push('}');
            }
            out.push_str("]}");
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
