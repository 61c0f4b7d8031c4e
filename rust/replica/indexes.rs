//! Secondary indexes owned by the replica's writer (the query engine's connection is
//! `query_only`, and SQLite refuses `ALTER TABLE … DROP COLUMN` on an indexed column, so only
//! the writer may hold them and it must drop them first).
//!
//! Requests (a table and its columns, e.g. from `QueryEngine::index_suggestions`) are recorded
//! in `_zcache_indexes`, so they survive restarts; the writer re-creates missing ones when it
//! opens the replica. An index is named `_zcache_idx_<table>_<columns>` when built, but is
//! recognised by its prefix and read columns (renames leave stale names, which is harmless).

use std::collections::HashMap;

use rusqlite::{params, Connection, OptionalExtension};

use crate::error::{Error, Result};
use crate::replica::layout::quote_ident;
use crate::replica::table::ReplicaTable;

const PREFIX: &str = "_zcache_idx_";

pub(crate) const INDEXES_DDL: &str = r#"CREATE TABLE IF NOT EXISTS "_zcache_indexes" (
    "table" TEXT NOT NULL,
    "columns" TEXT NOT NULL,
    PRIMARY KEY ("table", "columns")
)"#;

/// The writer's indexes of `table`: (name, columns in order).
fn existing(conn: &Connection, table: &str) -> Result<Vec<(String, Vec<String>)>> {
    let names: Vec<String> = {
        let mut s = conn.prepare_cached(
            "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = ?1 AND substr(name, 1, ?2) = ?3",
        )?;
        let rows = s.query_map(params![table, PREFIX.len() as i64, PREFIX], |r| r.get(0))?;
        rows.collect::<rusqlite::Result<_>>()?
    };
    let mut out = Vec::with_capacity(names.len());
    for name in names {
        let mut s = conn.prepare_cached("SELECT name FROM pragma_index_info(?1) ORDER BY seqno")?;
        let cols = s.query_map([&name], |r| r.get(0))?.collect::<rusqlite::Result<Vec<String>>>()?;
        out.push((name, cols));
    }
    Ok(out)
}

/// Builds the index unless one with these columns exists; whether it was built.
fn build(conn: &Connection, table: &str, columns: &[String]) -> Result<bool> {
    if existing(conn, table)?.iter().any(|(_, cols)| cols == columns) {
        return Ok(false);
    }
    let base = format!("{PREFIX}{table}_{}", columns.join("_"));
    let mut name = base.clone();
    for n in 2.. {
        let taken: Option<i64> = conn
            .query_row("SELECT 1 FROM sqlite_master WHERE name = ?1", [&name], |r| r.get(0))
            .optional()?;
        if taken.is_none() {
            break;
        }
        name = format!("{base}_{n}");
    }
    let cols: Vec<String> = columns.iter().map(|c| quote_ident(c)).collect();
    conn.execute_batch(&format!("CREATE INDEX {} ON {} ({})", quote_ident(&name), quote_ident(table), cols.join(", ")))?;
    Ok(true)
}

/// Records and builds an index of `table` on `columns`; whether it was built now.
pub(crate) fn add(conn: &Connection, table: &ReplicaTable, columns: &[String]) -> Result<bool> {
    if columns.is_empty() {
        return Err(Error::Schema {
            detail: format!("an index of {} needs at least one column", table.name),
        });
    }
    for c in columns {
        if !table.columns.iter().any(|rc| &rc.name == c && rc.stored()) {
            return Err(Error::Schema {
                detail: format!("table {} has no stored column {c:?} to index", table.name),
            });
        }
    }
    let pk: Vec<&String> = table.primary_key.iter().map(|&k| &table.columns[k].name).collect();
    if columns.len() <= pk.len() && columns.iter().zip(&pk).all(|(a, b)| a == *b) {
        return Ok(false); // The primary key's index serves it.
    }
    conn.execute(
        r#"INSERT OR IGNORE INTO "_zcache_indexes" ("table", "columns") VALUES (?1, ?2)"#,
        params![table.name, serde_json::to_string(columns).expect("strings serialise")],
    )?;
    build(conn, &table.name, columns)
}

/// The recorded requests: (table, columns).
pub(crate) fn recorded(conn: &Connection) -> Result<Vec<(String, Vec<String>)>> {
    let mut s = conn.prepare_cached(r#"SELECT "table", "columns" FROM "_zcache_indexes" ORDER BY 1, 2"#)?;
    let rows = s.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
    let mut out = Vec::new();
    for row in rows {
        let (table, columns) = row?;
        let columns: Vec<String> = serde_json::from_str(&columns).map_err(|e| Error::Schema {
            detail: format!("unreadable index columns in _zcache_indexes: {e}"),
        })?;
        out.push((table, columns));
    }
    Ok(out)
}

/// Re-creates the recorded indexes that are missing (a new file, an interrupted build).
pub(crate) fn restore(conn: &Connection, tables: &HashMap<u32, ReplicaTable>) -> Result<()> {
    conn.execute_batch(INDEXES_DDL)?;
    for (table, columns) in recorded(conn)? {
        if let Some(t) = tables.values().find(|t| t.name == table) {
            add(conn, t, &columns)?;
        }
    }
    Ok(())
}

/// Before `columns` of `table` are dropped: drops the indexes using them and forgets their
/// requests (SQLite refuses to drop an indexed column).
pub(crate) fn drop_for_columns(conn: &Connection, table: &str, columns: &[&str]) -> Result<()> {
    for (name, cols) in existing(conn, table)? {
        if cols.iter().any(|c| columns.contains(&c.as_str())) {
            conn.execute_batch(&format!("DROP INDEX {}", quote_ident(&name)))?;
        }
    }
    for (t, cols) in recorded(conn)? {
        if t == table && cols.iter().any(|c| columns.contains(&c.as_str())) {
            conn.execute(
                r#"DELETE FROM "_zcache_indexes" WHERE "table" = ?1 AND "columns" = ?2"#,
                params![t, serde_json::to_string(&cols).expect("strings serialise")],
            )?;
        }
    }
    Ok(())
}

/// After `ALTER TABLE … RENAME` (table or column): the requests follow (SQLite's indexes do).
pub(crate) fn renamed(conn: &Connection, old_table: &str, new_table: &str, columns: &HashMap<String, String>) -> Result<()> {
    for (t, cols) in recorded(conn)? {
        if t != old_table {
            continue;
        }
        let new_cols: Vec<String> = cols.iter().map(|c| columns.get(c).cloned().unwrap_or_else(|| c.clone())).collect();
        conn.execute(
            r#"UPDATE "_zcache_indexes" SET "table" = ?1, "columns" = ?2 WHERE "table" = ?3 AND "columns" = ?4"#,
            params![
                new_table,
                serde_json::to_string(&new_cols).expect("strings serialise"),
                t,
                serde_json::to_string(&cols).expect("strings serialise")
            ],
        )?;
    }
    Ok(())
}

/// A dropped table's requests (SQLite dropped its indexes with it).
pub(crate) fn forget_table(conn: &Connection, table: &str) -> Result<()> {
    conn.execute(r#"DELETE FROM "_zcache_indexes" WHERE "table" = ?1"#, [table])?;
    Ok(())
}
