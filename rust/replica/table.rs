//! A replicated table as the writers see it: its published-schema entry, how each column is stored
//! and where its primary key is.

use std::fmt::Write;

use rusqlite::types::ValueRef;

use crate::error::{Error, Result};
use crate::pg::schema::TableSpec;
use crate::pg::values::{SqlValue, ValueKind};
use crate::replica::layout::{quote_ident, ReplicaColumn, VERSION_COLUMN};

#[derive(Debug, Clone)]
pub struct ReplicaTable {
    pub spec: TableSpec,
    pub name: String,
    pub columns: Vec<ReplicaColumn>,
    /// Indices into `columns` of the primary-key columns, in key order.
    pub primary_key: Vec<usize>,
    /// The statements the stream writer runs for every row, built once (see the methods).
    upsert_sql: String,
    delete_sql: String,
    /// `{"k1":`, `,"k2":`: what precedes each key value in a row key.
    row_key_prefixes: Vec<String>,
}

impl ReplicaTable {
    pub fn new(spec: TableSpec) -> Result<Self> {
        let name = spec.replica_name();
        let columns: Vec<ReplicaColumn> = spec
            .columns
            .iter()
            .map(|c| ReplicaColumn { name: c.name.clone(), kind: ValueKind::for_column(c) })
            .collect();
        if spec.primary_key.is_empty() {
            return Err(Error::Schema {
                detail: format!("table {name} has neither a primary key nor a unique index usable as replica identity"),
            });
        }
        let mut primary_key = Vec::with_capacity(spec.primary_key.len());
        for key in &spec.primary_key {
            let index = columns.iter().position(|c| &c.name == key).ok_or_else(|| Error::Schema {
                detail: format!("primary key column {key} of table {name} is not among its columns"),
            })?;
            if !columns[index].stored() {
                return Err(Error::Schema {
                    detail: format!("primary key column {key} of table {name} has a type zcache cannot replicate"),
                });
            }
            primary_key.push(index);
        }
        let row_key_prefixes = primary_key
            .iter()
            .enumerate()
            .map(|(n, &i)| {
                let name = serde_json::to_string(&columns[i].name).expect("strings serialise");
                format!("{}{name}:", if n == 0 { "{" } else { "," })
            })
            .collect();
        let mut table = ReplicaTable {
            spec,
            name,
            columns,
            primary_key,
            upsert_sql: String::new(),
            delete_sql: String::new(),
            row_key_prefixes,
        };
        table.upsert_sql = table.upsert_sql();
        table.delete_sql = table.delete_sql();
        Ok(table)
    }

    pub fn stored_columns(&self) -> impl Iterator<Item = (usize, &ReplicaColumn)> {
        self.columns.iter().enumerate().filter(|(_, c)| c.stored())
    }

    /// [`ReplicaTable::upsert_sql`], built once.
    #[must_use]
    pub fn upsert_statement(&self) -> &str {
        &self.upsert_sql
    }

    /// [`ReplicaTable::delete_sql`], built once.
    #[must_use]
    pub fn delete_statement(&self) -> &str {
        &self.delete_sql
    }

    /// `INSERT INTO t (stored columns…, _0_version) VALUES (?…) ON CONFLICT (key) DO UPDATE SET
    /// <the other columns> = excluded.…`: the row is updated in place when it exists, so the
    /// primary-key index is left alone (a REPLACE would delete the row and insert it again).
    pub fn upsert_sql(&self) -> String {
        let mut names: Vec<String> = self.stored_columns().map(|(_, c)| quote_ident(&c.name)).collect();
        names.push(quote_ident(VERSION_COLUMN));
        let params = vec!["?"; names.len()].join(", ");
        let key: Vec<String> = self.primary_key.iter().map(|&i| quote_ident(&self.columns[i].name)).collect();
        let sets: Vec<String> = self
            .stored_columns()
            .filter(|(i, _)| !self.primary_key.contains(i))
            .map(|(_, c)| quote_ident(&c.name))
            .chain([quote_ident(VERSION_COLUMN)])
            .map(|name| format!("{name} = excluded.{name}"))
            .collect();
        format!(
            "INSERT INTO {} ({}) VALUES ({params}) ON CONFLICT ({}) DO UPDATE SET {}",
            quote_ident(&self.name),
            names.join(", "),
            key.join(", "),
            sets.join(", ")
        )
    }

    /// `INSERT INTO t (stored columns…) VALUES (?…)`: the initial copy, rows carry the default version.
    pub fn insert_sql(&self) -> String {
        let names: Vec<String> = self.stored_columns().map(|(_, c)| quote_ident(&c.name)).collect();
        let params = vec!["?"; names.len()].join(", ");
        format!("INSERT INTO {} ({}) VALUES ({params})", quote_ident(&self.name), names.join(", "))
    }

    /// `WHERE "k1" = ? AND …` over the primary key.
    pub fn key_predicate(&self) -> String {
        self.primary_key
            .iter()
            .map(|&i| format!("{} = ?", quote_ident(&self.columns[i].name)))
            .collect::<Vec<_>>()
            .join(" AND ")
    }

    pub fn delete_sql(&self) -> String {
        format!("DELETE FROM {} WHERE {}", quote_ident(&self.name), self.key_predicate())
    }

    /// `UPDATE t SET <present columns>, _0_version = ? WHERE <key>`: an update whose new tuple left
    /// TOASTed values out (`present[i]` is false for those).
    pub fn partial_update_sql(&self, present: &[bool]) -> String {
        let mut sets: Vec<String> = self
            .stored_columns()
            .filter(|(i, _)| present[*i])
            .map(|(_, c)| format!("{} = ?", quote_ident(&c.name)))
            .collect();
        sets.push(format!("{} = ?", quote_ident(VERSION_COLUMN)));
        format!("UPDATE {} SET {} WHERE {}", quote_ident(&self.name), sets.join(", "), self.key_predicate())
    }

    /// `COPY "schema"."table" (stored columns…) TO STDOUT (FORMAT binary)` for the initial sync.
    pub fn copy_statement(&self) -> String {
        let names: Vec<String> = self.stored_columns().map(|(_, c)| quote_ident(&c.name)).collect();
        format!(
            "COPY {}.{} ({}) TO STDOUT (FORMAT binary)",
            quote_ident(&self.spec.schema),
            quote_ident(&self.spec.name),
            names.join(", ")
        )
    }

    /// The row key as the change log and the CVR name it: a JSON object of the primary-key
    /// columns in key order.
    pub fn row_key(&self, key_values: &[&SqlValue]) -> String {
        let mut out = String::new();
        self.write_row_key(&mut out, key_values.iter().map(|v| match v {
            SqlValue::Null => ValueRef::Null,
            SqlValue::Integer(i) => ValueRef::Integer(*i),
            SqlValue::Real(f) => ValueRef::Real(*f),
            SqlValue::Text(s) => ValueRef::Text(s.as_bytes()),
        }));
        out
    }

    /// [`ReplicaTable::row_key`] into `out` (cleared first), for values as SQLite binds them.
    pub fn write_row_key<'v>(&self, out: &mut String, key_values: impl IntoIterator<Item = ValueRef<'v>>) {
        out.clear();
        for (prefix, value) in self.row_key_prefixes.iter().zip(key_values) {
            out.push_str(prefix);
            write_key_json(out, value);
        }
        out.push('}');
    }
}

/// A key value as JSON: numbers as numbers, text as strings (NaN and infinities, which JSON lacks,
/// as null; they cannot be primary-key values of a row Zero can sync anyway). Byte for byte what
/// `serde_json` writes (the query engine and the CVR compare row keys as strings).
fn write_key_json(out: &mut String, value: ValueRef<'_>) {
    match value {
        ValueRef::Null | ValueRef::Blob(_) => out.push_str("null"),
        ValueRef::Integer(i) => {
            let _ = write!(out, "{i}");
        }
        ValueRef::Real(f) => match serde_json::Number::from_f64(f) {
            Some(n) => out.push_str(&n.to_string()),
            None => out.push_str("null"),
        },
        ValueRef::Text(bytes) => {
            let s = String::from_utf8_lossy(bytes);
            if s.bytes().any(|b| b < 0x20 || b == b'"' || b == b'\\') {
                out.push_str(&serde_json::to_string(&s).expect("strings serialise"));
            } else {
                out.push('"');
                out.push_str(&s);
                out.push('"');
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pg::schema::ColumnSpec;
    use proptest::prelude::*;

    fn table() -> ReplicaTable {
        let column = |name: &str, oid: u32| ColumnSpec {
            name: name.into(),
            attnum: 1,
            type_oid: oid,
            type_name: String::new(),
            type_kind: "b".into(),
            base_type_oid: oid,
            elem_type_oid: 0,
            elem_type_kind: None,
            not_null: true,
            has_missing: false,
            missing: None,
            enum_labels: None,
        };
        ReplicaTable::new(TableSpec {
            oid: 1,
            schema: "public".into(),
            name: "t".into(),
            replica_identity: "d".into(),
            primary_key: vec!["k\"1".into(), "k2".into(), "k3".into()],
            columns: vec![column("v", 25), column("k2", 20), column("k\"1", 25), column("k3", 701)],
        })
        .expect("a valid table")
    }

    #[test]
    fn statements() {
        let t = table();
        assert_eq!(
            t.upsert_statement(),
            r#"INSERT INTO "t" ("v", "k2", "k""1", "k3", "_0_version") VALUES (?, ?, ?, ?, ?) ON CONFLICT ("k""1", "k2", "k3") DO UPDATE SET "v" = excluded."v", "_0_version" = excluded."_0_version""#
        );
        assert_eq!(t.delete_statement(), r#"DELETE FROM "t" WHERE "k""1" = ? AND "k2" = ? AND "k3" = ?"#);
    }

    proptest! {
        /// Row keys are what serde_json writes for the key object (the query engine and the CVR
        /// compare them as strings).
        #[test]
        fn row_keys_are_serde_json(text in any::<String>(), int in any::<i64>(), real in any::<f64>()) {
            let t = table();
            let values = [SqlValue::Text(text.clone()), SqlValue::Integer(int), SqlValue::Real(real)];
            let refs: Vec<&SqlValue> = values.iter().collect();
            let real_json = serde_json::Number::from_f64(real).map_or_else(|| "null".to_owned(), |n| n.to_string());
            let want = format!(
                "{{\"k\\\"1\":{},\"k2\":{int},\"k3\":{real_json}}}",
                serde_json::to_string(&text).expect("serialises")
            );
            prop_assert_eq!(t.row_key(&refs), want);
        }
    }
}
