//! Follows upstream DDL: the shard's event trigger puts the whole published schema into the
//! stream after every DDL command; diffing it against the replica's tables (matched by oid and
//! columns by attnum) gives the replica's own DDL.
//!
//! What can be followed in place: new empty tables (`CREATE TABLE`), dropped tables, table and
//! column renames, added columns (rows that existed before read the column's "missing" value,
//! which Postgres stores for `ADD COLUMN … DEFAULT`), dropped columns, primary-key changes.
//! What cannot, because upstream data changed without row changes in the stream: a table added to
//! the publications with its existing rows, a column whose type changed (the table was
//! rewritten; the shard's table_rewrite trigger reports every rewrite), a dropped primary-key
//! column, an enum label renamed or dropped (rows read the new label without a row change).
//! Those fail with [`Error::ResyncRequired`]. A published table without a usable key is not
//! replicated (its rows are skipped) until it gains one; if it was created empty in the
//! stream and no rows were seen, it is then created in place, otherwise a resync copies it.

use std::collections::HashMap;

use rusqlite::{params, Connection};

use crate::error::{Error, Result};
use crate::pg::schema::{ColumnSpec, PublishedSchema, TableSpec};
use crate::pg::values::{from_json, SqlValue, ValueKind};
use crate::replica::indexes;
use crate::replica::layout::{self, quote_ident, VERSION_COLUMN};
use crate::replica::table::ReplicaTable;

/// What a schema change touched.
#[derive(Debug, Default)]
pub struct SchemaChange {
    /// Upstream oids whose replica table was created, altered or dropped.
    pub changed_oids: Vec<u32>,
    /// Replica table names whose query results must be recomputed (change-log `r` entries).
    pub reset_tables: Vec<String>,
}

pub(crate) fn apply_schema_change(
    conn: &Connection,
    tables: &mut HashMap<u32, ReplicaTable>,
    unreplicated: &mut HashMap<u32, bool>,
    schema: &PublishedSchema,
    tag: &str,
    version: &str,
) -> Result<SchemaChange> {
    let mut change = SchemaChange::default();
    let mut replacement: HashMap<u32, ReplicaTable> = HashMap::with_capacity(schema.tables.len());
    for spec in &schema.tables {
        if !has_usable_key(spec) {
            if let Some(old) = tables.get(&spec.oid) {
                return Err(Error::ResyncRequired {
                    reason: format!("table {} lost its primary key (or replica identity index) through {tag}", old.name),
                });
            }
            // Published but not replicable (yet): its rows are skipped until it gains a key.
            // Known empty only when it was just created.
            let empty = tag == "CREATE TABLE" || unreplicated.get(&spec.oid).copied().unwrap_or(false);
            unreplicated.insert(spec.oid, empty);
            continue;
        }
        match tables.get(&spec.oid) {
            None => {
                let known_empty = unreplicated.remove(&spec.oid).unwrap_or(false);
                if tag != "CREATE TABLE" && !known_empty {
                    return Err(Error::ResyncRequired {
                        reason: format!(
                            "table {} became replicated by {tag}; its existing rows are not in the replication stream",
                            spec.replica_name()
                        ),
                    });
                }
                let table = ReplicaTable::new(spec.clone())?;
                layout::create_table(conn, spec, &table.columns, version)?;
                layout::create_primary_key(conn, spec)?;
                layout::save_table_spec(conn, spec)?;
                change.changed_oids.push(spec.oid);
                replacement.insert(spec.oid, table);
            }
            Some(old) if old.spec == *spec => {
                replacement.insert(spec.oid, old.clone());
            }
            Some(old) => {
                let table = alter_table(conn, old, spec, version)?;
                layout::save_table_spec(conn, spec)?;
                change.changed_oids.push(spec.oid);
                change.reset_tables.push(table.name.clone());
                replacement.insert(spec.oid, table);
            }
        }
    }
    for (oid, old) in tables.iter() {
        if !replacement.contains_key(oid) {
            layout::drop_primary_key(conn, &old.name)?;
            conn.execute_batch(&format!("DROP TABLE {}", quote_ident(&old.name)))?;
            conn.execute(r#"DELETE FROM "_zcache_tables" WHERE "oid" = ?1"#, params![oid])?;
            indexes::forget_table(conn, &old.name)?;
            conn.execute(r#"DELETE FROM "_zcache_changes" WHERE "table" = ?1"#, params![old.name])?;
            change.changed_oids.push(*oid);
            change.reset_tables.push(old.name.clone());
        }
    }
    unreplicated.retain(|oid, _| schema.tables.iter().any(|t| t.oid == *oid));
    *tables = replacement;
    Ok(change)
}

/// Whether the replica can hold the table: a key whose columns all have replicable types.
fn has_usable_key(spec: &TableSpec) -> bool {
    !spec.primary_key.is_empty()
        && spec.primary_key.iter().all(|key| {
            spec.columns.iter().any(|c| &c.name == key && ValueKind::for_column(c).is_supported())
        })
}

fn alter_table(conn: &Connection, old: &ReplicaTable, new: &TableSpec, version: &str) -> Result<ReplicaTable> {
    let new_name = new.replica_name();
    let key_changed = old.spec.primary_key != new.primary_key;
    let renamed = old.name != new_name;
    if key_changed || renamed {
        layout::drop_primary_key(conn, &old.name)?;
    }
    if renamed {
        conn.execute_batch(&format!("ALTER TABLE {} RENAME TO {}", quote_ident(&old.name), quote_ident(&new_name)))?;
        conn.execute(r#"UPDATE "_zcache_changes" SET "table" = ?1 WHERE "table" = ?2"#, params![new_name, old.name])?;
        indexes::renamed(conn, &old.name, &new_name, &HashMap::new())?;
    }
    let old_by_attnum: HashMap<i16, &ColumnSpec> = old.spec.columns.iter().map(|c| (c.attnum, c)).collect();
    let new_by_attnum: HashMap<i16, &ColumnSpec> = new.columns.iter().map(|c| (c.attnum, c)).collect();
    for column in &old.spec.columns {
        if !new_by_attnum.contains_key(&column.attnum) {
            if old.spec.primary_key.contains(&column.name) {
                return Err(Error::ResyncRequired {
                    reason: format!("primary key column {} of {} was dropped", column.name, old.name),
                });
            }
            if ValueKind::for_column(column).is_supported() {
                indexes::drop_for_columns(conn, &new_name, &[column.name.as_str()])?;
                conn.execute_batch(&format!(
                    "ALTER TABLE {} DROP COLUMN {}",
                    quote_ident(&new_name),
                    quote_ident(&column.name)
                ))?;
            }
        }
    }
    for column in &new.columns {
        match old_by_attnum.get(&column.attnum) {
            Some(previous) => {
                if (previous.type_oid, previous.base_type_oid, previous.elem_type_oid)
                    != (column.type_oid, column.base_type_oid, column.elem_type_oid)
                {
                    return Err(Error::ResyncRequired {
                        reason: format!(
                            "column {} of {} changed type from {} to {}; upstream rewrote its values",
                            column.name, new_name, previous.type_name, column.type_name
                        ),
                    });
                }
                if let Some(gone) = lost_enum_label(previous, column) {
                    return Err(Error::ResyncRequired {
                        reason: format!(
                            "enum value {gone:?} of column {} of {} was renamed or dropped; upstream rows read differently",
                            column.name, new_name
                        ),
                    });
                }
                if previous.name != column.name && ValueKind::for_column(column).is_supported() {
                    conn.execute_batch(&format!(
                        "ALTER TABLE {} RENAME COLUMN {} TO {}",
                        quote_ident(&new_name),
                        quote_ident(&previous.name),
                        quote_ident(&column.name)
                    ))?;
                    let renames = HashMap::from([(previous.name.clone(), column.name.clone())]);
                    indexes::renamed(conn, &new_name, &new_name, &renames)?;
                }
            }
            None => add_column(conn, &new_name, column, version)?,
        }
    }
    if key_changed || renamed {
        layout::create_primary_key(conn, new)?;
    }
    ReplicaTable::new(new.clone())
}

/// A label of the column's enum that the new schema no longer has (`ALTER TYPE … RENAME VALUE`):
/// replica rows may hold it. Added labels change no row.
fn lost_enum_label<'a>(previous: &'a ColumnSpec, column: &ColumnSpec) -> Option<&'a str> {
    let (Some(old), Some(new)) = (&previous.enum_labels, &column.enum_labels) else { return None };
    old.iter().find(|label| !new.contains(label)).map(String::as_str)
}

fn add_column(conn: &Connection, table: &str, column: &ColumnSpec, version: &str) -> Result<()> {
    let kind = ValueKind::for_column(column);
    if !kind.is_supported() {
        return Ok(());
    }
    conn.execute_batch(&format!(
        "ALTER TABLE {} ADD COLUMN {} {}",
        quote_ident(table),
        quote_ident(&column.name),
        kind.affinity()
    ))?;
    let missing = match (&column.missing, column.has_missing) {
        (Some(value), true) => from_json(&kind, value)?,
        _ => SqlValue::Null,
    };
    if missing != SqlValue::Null {
        // Existing rows changed (they read the default now): they get this version, so clients
        // that have them receive them again.
        conn.execute(
            &format!(
                "UPDATE {} SET {} = ?1, {} = ?2",
                quote_ident(table),
                quote_ident(&column.name),
                quote_ident(VERSION_COLUMN)
            ),
            params![missing, version],
        )?;
    }
    Ok(())
}
