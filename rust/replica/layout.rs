//! The replica file's layout: one SQLite table per published table plus zcache's metadata tables.
//!
//! * Each published table becomes `"<replica name>"` (`file`, `zero_0.clients`) with one column per
//!   supported upstream column, declared with a plain SQLite affinity (`INTEGER`, `REAL`, `TEXT`)
//!   so SQLite never re-interprets a value, plus `_0_version`: the state version of the
//!   transaction that last wrote the row (row versions feed the CVR). The primary key is a
//!   unique index, `"<replica name>_pkey"`.
//! * `_zcache_replication_config` (one row): the replica version (LexiVersion of the initial
//!   sync's consistent point), slot, publications, app and shard.
//! * `_zcache_replication_state` (one row): `state_version` (LexiVersion of the last applied
//!   commit LSN) and `watermark_lsn` (end LSN of that commit: where replication resumes).
//! * `_zcache_tables`: the published-schema entry of every replicated table, keyed by upstream oid.
//! * `_zcache_changes`: the latest change of every row, keyed by (table, row key), ordered by
//!   (state_version, pos). The query engine reads the rows changed since its version from it.
//!   `op` is `s` (set), `d` (delete), `t` (truncate: the whole table, row_key NULL) or `r`
//!   (reset: the table's schema changed, row_key NULL).

use rusqlite::Connection;

use crate::error::Result;
use crate::pg::schema::TableSpec;
use crate::pg::values::ValueKind;

pub const VERSION_COLUMN: &str = "_0_version";

pub(crate) const METADATA_DDL: &str = r#"
CREATE TABLE IF NOT EXISTS "_zcache_replication_config" (
    "lock" INTEGER PRIMARY KEY CHECK ("lock" = 1),
    "replica_version" TEXT NOT NULL,
    "slot" TEXT NOT NULL,
    "publications" TEXT NOT NULL,
    "app_id" TEXT NOT NULL,
    "shard_num" INTEGER NOT NULL,
    "ddl_detection" INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS "_zcache_replication_state" (
    "lock" INTEGER PRIMARY KEY CHECK ("lock" = 1),
    "state_version" TEXT NOT NULL,
    "watermark_lsn" INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS "_zcache_tables" (
    "oid" INTEGER PRIMARY KEY,
    "replica_name" TEXT NOT NULL UNIQUE,
    "spec" TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS "_zcache_changes" (
    "state_version" TEXT NOT NULL,
    "pos" INTEGER NOT NULL,
    "table" TEXT NOT NULL,
    "row_key" TEXT,
    "op" TEXT NOT NULL,
    PRIMARY KEY ("state_version", "pos"),
    UNIQUE ("table", "row_key")
);
"#;

/// `"name"` with embedded quotes doubled.
#[must_use]
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// One column as the replica stores it.
#[derive(Debug, Clone)]
pub struct ReplicaColumn {
    pub name: String,
    pub kind: ValueKind,
}

impl ReplicaColumn {
    #[must_use]
    pub fn stored(&self) -> bool {
        self.kind.is_supported()
    }
}

/// Creates the table for `spec` (without its primary-key index, see [`create_primary_key`]).
pub(crate) fn create_table(conn: &Connection, spec: &TableSpec, columns: &[ReplicaColumn], default_version: &str) -> Result<()> {
    let mut defs: Vec<String> = columns
        .iter()
        .filter(|c| c.stored())
        .map(|c| format!("{} {}", quote_ident(&c.name), c.kind.affinity()))
        .collect();
    defs.push(format!("{} TEXT NOT NULL DEFAULT '{}'", quote_ident(VERSION_COLUMN), default_version.replace('\'', "''")));
    conn.execute_batch(&format!("CREATE TABLE {} ({});", quote_ident(&spec.replica_name()), defs.join(", ")))?;
    Ok(())
}

pub(crate) fn create_primary_key(conn: &Connection, spec: &TableSpec) -> Result<()> {
    let name = spec.replica_name();
    let cols: Vec<String> = spec.primary_key.iter().map(|c| quote_ident(c)).collect();
    conn.execute_batch(&format!(
        "CREATE UNIQUE INDEX {} ON {} ({});",
        quote_ident(&format!("{name}_pkey")),
        quote_ident(&name),
        cols.join(", ")
    ))?;
    Ok(())
}

pub(crate) fn drop_primary_key(conn: &Connection, replica_name: &str) -> Result<()> {
    conn.execute_batch(&format!("DROP INDEX IF EXISTS {};", quote_ident(&format!("{replica_name}_pkey"))))?;
    Ok(())
}

pub(crate) fn save_table_spec(conn: &Connection, spec: &TableSpec) -> Result<()> {
    conn.execute(
        r#"INSERT INTO "_zcache_tables" ("oid", "replica_name", "spec") VALUES (?1, ?2, ?3)
           ON CONFLICT ("oid") DO UPDATE SET "replica_name" = excluded."replica_name", "spec" = excluded."spec""#,
        rusqlite::params![spec.oid, spec.replica_name(), serde_json::to_string(spec).expect("spec serialises")],
    )?;
    Ok(())
}
