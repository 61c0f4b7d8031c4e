//! Builds a new replica from the initial copy of every published table.
//!
//! The copy goes into a staging file next to the replica (`<replica>.staging`), written without a
//! journal (a crash leaves only a staging file, which the next attempt deletes). `finish` builds the
//! primary-key indexes, records the replication config and state, switches the file to WAL, makes
//! it durable and renames it over the replica in one step, so the replica path holds either the
//! previous replica or a complete new one, never half of one.
//!
//! Rows arrive as `COPY … TO STDOUT (FORMAT binary)` output (any chunking); every row gets the
//! replica version (the slot's consistent point) as its `_0_version`.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

use rusqlite::{params, params_from_iter, Connection};

use crate::error::{Error, Result};
use crate::pg::copy::CopyDecoder;
use crate::pg::schema::PublishedSchema;
use crate::pg::values::{decode_binary, SqlValue};
use crate::replica::layout::{self, METADATA_DDL};
use crate::replica::table::ReplicaTable;
use crate::version::lexi_version;

/// Identity of the replica being built, recorded in `_zcache_replication_config`.
#[derive(Debug, Clone)]
pub struct ReplicaConfig {
    /// The slot's consistent point: rows copied under its snapshot are at this version, and
    /// streaming starts from it.
    pub consistent_point: u64,
    pub slot: String,
    pub publications: Vec<String>,
    pub app_id: String,
    pub shard_num: u32,
    pub ddl_detection: bool,
}

struct TableCopy {
    table: ReplicaTable,
    decoder: CopyDecoder,
    rows: u64,
    insert_sql: String,
}

pub struct InitialSync {
    conn: Connection,
    staging_path: PathBuf,
    config: ReplicaConfig,
    schema: PublishedSchema,
    copies: HashMap<u32, TableCopy>,
}

impl InitialSync {
    pub fn create(staging_path: &Path, schema: PublishedSchema, config: ReplicaConfig) -> Result<Self> {
        remove_database_files(staging_path)?;
        let conn = Connection::open(staging_path)?;
        conn.execute_batch("PRAGMA journal_mode = OFF; PRAGMA synchronous = OFF; PRAGMA locking_mode = EXCLUSIVE;")?;
        conn.set_prepared_statement_cache_capacity(256);
        conn.execute_batch(METADATA_DDL)?;
        let version = lexi_version(config.consistent_point);
        let mut copies = HashMap::with_capacity(schema.tables.len());
        for spec in &schema.tables {
            let table = ReplicaTable::new(spec.clone())?;
            layout::create_table(&conn, spec, &table.columns, &version)?;
            layout::save_table_spec(&conn, spec)?;
            let decoder = CopyDecoder::new(table.stored_columns().count());
            let insert_sql = table.insert_sql();
            copies.insert(spec.oid, TableCopy { table, decoder, rows: 0, insert_sql });
        }
        conn.execute_batch("BEGIN")?;
        Ok(InitialSync { conn, staging_path: staging_path.to_owned(), config, schema, copies })
    }

    /// The COPY statement whose output [`InitialSync::copy_chunks`] expects for table `oid`.
    pub fn copy_statement(&self, oid: u32) -> Result<String> {
        Ok(self.copy(oid)?.table.copy_statement())
    }

    fn copy(&self, oid: u32) -> Result<&TableCopy> {
        self.copies.get(&oid).ok_or_else(|| Error::Schema { detail: format!("no published table with oid {oid}") })
    }

    /// Inserts the rows contained in `chunks` of table `oid`'s COPY output; returns how many.
    pub fn copy_chunks<B: AsRef<[u8]>>(&mut self, oid: u32, chunks: &[B]) -> Result<u64> {
        let copy = self
            .copies
            .get_mut(&oid)
            .ok_or_else(|| Error::Schema { detail: format!("no published table with oid {oid}") })?;
        let mut stmt = self.conn.prepare_cached(&copy.insert_sql)?;
        let kinds: Vec<_> = copy.table.stored_columns().map(|(_, c)| c.kind.clone()).collect();
        let mut values: Vec<SqlValue> = Vec::with_capacity(kinds.len());
        let before = copy.rows;
        let rows = &mut copy.rows;
        for chunk in chunks {
            copy.decoder.feed(chunk.as_ref(), |fields| {
                values.clear();
                for (field, kind) in fields.iter().zip(&kinds) {
                    values.push(match field {
                        None => SqlValue::Null,
                        Some(bytes) => decode_binary(kind, bytes)?,
                    });
                }
                stmt.execute(params_from_iter(values.iter()))?;
                *rows += 1;
                Ok(())
            })?;
        }
        Ok(copy.rows - before)
    }

    /// Checks that table `oid`'s COPY output ended properly; returns its row count.
    pub fn finish_table(&mut self, oid: u32) -> Result<u64> {
        let copy = self.copy(oid)?;
        copy.decoder.finish()?;
        Ok(copy.rows)
    }

    /// Indexes, metadata, durability, then the atomic rename over `replica_path`.
    pub fn finish(self, replica_path: &Path) -> Result<()> {
        for spec in &self.schema.tables {
            layout::create_primary_key(&self.conn, spec)?;
        }
        let version = lexi_version(self.config.consistent_point);
        self.conn.execute(
            r#"INSERT INTO "_zcache_replication_config"
               ("lock", "replica_version", "slot", "publications", "app_id", "shard_num", "ddl_detection")
               VALUES (1, ?1, ?2, ?3, ?4, ?5, ?6)"#,
            params![
                version,
                self.config.slot,
                serde_json::to_string(&self.config.publications).expect("strings serialise"),
                self.config.app_id,
                self.config.shard_num,
                self.config.ddl_detection
            ],
        )?;
        self.conn.execute(
            r#"INSERT INTO "_zcache_replication_state" ("lock", "state_version", "watermark_lsn") VALUES (1, ?1, ?2)"#,
            params![version, self.config.consistent_point as i64],
        )?;
        self.conn.execute_batch("COMMIT; ANALYZE; PRAGMA locking_mode = NORMAL; PRAGMA journal_mode = WAL;")?;
        drop(self.conn);
        fs::File::open(&self.staging_path)?.sync_all()?;
        remove_database_files(replica_path)?;
        fs::rename(&self.staging_path, replica_path)?;
        if let Some(dir) = replica_path.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    }
}

/// Removes a SQLite database and its `-wal`/`-shm` companions, if present.
fn remove_database_files(path: &Path) -> Result<()> {
    for suffix in ["", "-wal", "-shm", "-journal"] {
        let mut name = path.as_os_str().to_owned();
        name.push(suffix);
        match fs::remove_file(PathBuf::from(name)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}
