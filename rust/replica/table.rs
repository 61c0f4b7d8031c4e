//! A replicated table as the writers see it: its published-schema entry, how each column is stored
//! and where its primary key is.

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
        Ok(ReplicaTable { spec, name, columns, primary_key })
    }

    pub fn stored_columns(&self) -> impl Iterator<Item = (usize, &ReplicaColumn)> {
        self.columns.iter().enumerate().filter(|(_, c)| c.stored())
    }

    /// `INSERT OR REPLACE INTO t (stored columns…, _0_version) VALUES (?…)`.
    pub fn upsert_sql(&self) -> String {
        let mut names: Vec<String> = self.stored_columns().map(|(_, c)| quote_ident(&c.name)).collect();
        names.push(quote_ident(VERSION_COLUMN));
        let params = vec!["?"; names.len()].join(", ");
        format!("INSERT OR REPLACE INTO {} ({}) VALUES ({params})", quote_ident(&self.name), names.join(", "))
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
        let mut out = String::from("{");
        for (n, (&index, value)) in self.primary_key.iter().zip(key_values).enumerate() {
            if n > 0 {
                out.push(',');
            }
            out.push_str(&serde_json::to_string(&self.columns[index].name).expect("strings serialise"));
            out.push(':');
            out.push_str(&key_json(value));
        }
        out.push('}');
        out
    }
}

/// A key value as JSON: numbers as numbers, text as strings (NaN and infinities, which JSON lacks,
/// as null; they cannot be primary-key values of a row Zero can sync anyway).
fn key_json(value: &SqlValue) -> String {
    match value {
        SqlValue::Null => "null".to_owned(),
        SqlValue::Integer(i) => i.to_string(),
        SqlValue::Real(f) => serde_json::Number::from_f64(*f).map_or_else(|| "null".to_owned(), |n| n.to_string()),
        SqlValue::Text(s) => serde_json::to_string(s).expect("strings serialise"),
    }
}
