//! Builds a new replica from the initial copy of every published table.
//!
//! The copy goes into a staging file next to the replica (`<replica>.staging`), written without a
//! journal (a crash leaves only a staging file, which the next attempt deletes). Each table's
//! primary-key index is built as soon as its last row is in (while the other tables' COPY goes on
//! in Postgres); `finish` records the replication config and state, switches the file to WAL, makes
//! it durable and renames it over the replica in one step, so the replica path holds either the
//! previous replica or a complete new one, never half of one.
//!
//! Rows arrive as `COPY … TO STDOUT (FORMAT binary)` output (any chunking); every row gets the
//! replica version (the slot's consistent point) as its `_0_version`.
//!
//! One writer thread owns the staging file: [`InitialSync::copy_chunks`] decodes the chunks of
//! any table in the calling thread into values ready to bind, queues them on a bounded queue and
//! returns, so the callers keep reading from Postgres while earlier rows are inserted; a full queue
//! makes them wait. Decoding in the callers leaves the writer, the one thread every row goes
//! through, only binding and stepping (bench/README.md, Replication). The callers
//! are normally [`InitialSync::copy_tables`]'s worker threads, which read the COPY output from
//! Postgres themselves ([`crate::pg::upstream`]) and decode each row straight out of their read
//! buffer; Python feeds chunks only when that path cannot connect as psycopg does (TLS). Rows are
//! inserted `ROWS_PER_INSERT` at a time by one multi-row `INSERT`, which costs SQLite far less
//! per row than a statement per row. Meanwhile a flusher thread has the kernel write the staging
//! file out every `FLUSH_INTERVAL`, so the final fsync does not start writing the whole replica
//! only once the copy is over.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use rusqlite::{params, Connection};

use crate::error::{Error, Result};
use crate::pg::copy::CopyDecoder;
use crate::pg::schema::{PublishedSchema, TableSpec};
use crate::pg::upstream::{ConnectParams, SnapshotReader};
use crate::pg::values::{decode_binary_ref, SqlValue, SqlValueRef, ValueKind};
use crate::replica::bulk_insert::{BulkInsert, Cell};
use crate::replica::layout::{self, quote_ident, METADATA_DDL};
use crate::replica::table::ReplicaTable;
use crate::version::lexi_version;

/// Rows per multi-row `INSERT` (fewer for wide tables: SQLite binds at most 32,766 parameters).
const ROWS_PER_INSERT: usize = 64;
const MAX_PARAMETERS: usize = 32_766;
/// Calls to `copy_chunks` queued for the writer before callers wait.
const QUEUED_CALLS: usize = 4;
/// Bytes of COPY output decoded into one queued batch by [`InitialSync::copy_tables`]'s readers:
/// large enough to amortise the hand-over, small enough that the queued batches stay a few MiB.
const BATCH_BYTES: usize = 1 << 20;
const FLUSH_INTERVAL: Duration = Duration::from_secs(1);
/// SQLite's page cache while building an index, in KiB: the index sorter keeps this much in
/// memory before it spills sorted runs to temporary files and merges them. Only while building:
/// during the copy the pages are appended and written out, a large cache only costs memory.
const INDEX_CACHE_KIB: i64 = 32 * 1024;

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

/// Whole rows decoded from a table's COPY output by the caller of `copy_chunks`.
#[derive(Default)]
struct DecodedRows {
    /// The fields of each row, row after row.
    cells: Vec<Cell>,
    text: Vec<u8>,
    rows: u64,
}

impl DecodedRows {
    fn with_capacity(text: usize, cells: usize) -> Self {
        DecodedRows { cells: Vec::with_capacity(cells), text: Vec::with_capacity(text), rows: 0 }
    }

    fn text(&mut self, bytes: &[u8]) -> Result<Cell> {
        let start = self.text.len();
        self.text.extend_from_slice(bytes);
        match (u32::try_from(start), u32::try_from(bytes.len())) {
            (Ok(start), Ok(len)) => Ok(Cell::Text { start, len }),
            _ => Err(Error::Protocol { detail: "a COPY chunk of 4 GiB or more of text".into() }),
        }
    }
}

/// A table's COPY stream as decoded so far, in whichever thread reads it.
struct TableDecoding {
    decoder: CopyDecoder,
    kinds: Vec<ValueKind>,
}

impl TableDecoding {
    fn decode(&mut self, chunk: &[u8]) -> Result<DecodedRows> {
        let mut out = DecodedRows { text: Vec::with_capacity(chunk.len()), ..DecodedRows::default() };
        self.decode_into(chunk, &mut out)?;
        Ok(out)
    }

    /// Appends the complete rows of `chunk` (and of what earlier chunks left incomplete) to `out`.
    fn decode_into(&mut self, chunk: &[u8], out: &mut DecodedRows) -> Result<()> {
        let kinds = &self.kinds;
        self.decoder.feed(chunk, |fields| {
            for (field, kind) in fields.iter().zip(kinds) {
                let cell = match field {
                    None => Cell::Null,
                    Some(bytes) => match decode_binary_ref(kind, bytes)? {
                        SqlValueRef::Borrowed(s) => out.text(s.as_bytes())?,
                        SqlValueRef::Owned(SqlValue::Null) => Cell::Null,
                        SqlValueRef::Owned(SqlValue::Integer(i)) => Cell::Integer(i),
                        SqlValueRef::Owned(SqlValue::Real(f)) => Cell::Real(f),
                        SqlValueRef::Owned(SqlValue::Text(s)) => out.text(s.as_bytes())?,
                    },
                };
                out.cells.push(cell);
            }
            out.rows += 1;
            Ok(())
        })
    }
}

struct TableCopy {
    spec: TableSpec,
    /// Its primary-key index is built (right after its last row, see [`Staging::run`]).
    indexed: bool,
    table: ReplicaTable,
    columns: usize,
    rows: u64,
    rows_per_insert: usize,
    /// The multi-row INSERT of `rows_per_insert` rows, and the one of a single row (for a
    /// batch's last rows).
    insert_sql: String,
    insert_one_sql: String,
}

impl TableCopy {
    fn insert_sql(&self, rows: usize) -> String {
        let names: Vec<String> = self.table.stored_columns().map(|(_, c)| quote_ident(&c.name)).collect();
        let row = format!("({})", vec!["?"; names.len()].join(", "));
        format!("INSERT INTO {} ({}) VALUES {}", quote_ident(&self.table.name), names.join(", "), vec![row; rows].join(", "))
    }
}

/// How the writer thread stopped early: its error, for the first caller to see that it stopped.
#[derive(Default)]
struct Failure {
    stopped: AtomicBool,
    error: Mutex<Option<Error>>,
}

impl Failure {
    fn record(&self, error: Option<Error>) {
        // The error first: whoever sees `stopped` must find it.
        if let (Some(error), Ok(mut slot)) = (error, self.error.lock()) {
            slot.get_or_insert(error);
        }
        self.stopped.store(true, Ordering::SeqCst);
    }

    fn take(&self) -> Error {
        let taken = self.error.lock().ok().and_then(|mut slot| slot.take());
        taken.unwrap_or_else(stopped)
    }
}

fn stopped() -> Error {
    Error::Protocol { detail: "the initial sync's writer stopped after an earlier error".into() }
}

enum Job {
    Rows { oid: u32, rows: DecodedRows },
    FinishTable { oid: u32, reply: SyncSender<Result<u64>> },
}

/// The staging database and the state of every table's copy, owned by the writer thread.
struct Staging {
    conn: Connection,
    copies: HashMap<u32, TableCopy>,
    rows: Arc<AtomicU64>,
}

pub struct InitialSync {
    jobs: SyncSender<Job>,
    writer: JoinHandle<Result<Staging>>,
    /// Dropping it stops the flusher thread.
    stop_flusher: SyncSender<()>,
    flusher: JoinHandle<()>,
    failure: Arc<Failure>,
    copy_statements: HashMap<u32, String>,
    decodings: HashMap<u32, Mutex<TableDecoding>>,
    rows: Arc<AtomicU64>,
    tables_done: AtomicU64,
    staging_path: PathBuf,
    config: ReplicaConfig,
    schema: PublishedSchema,
}

impl InitialSync {
    pub fn create(staging_path: &Path, schema: PublishedSchema, config: ReplicaConfig) -> Result<Self> {
        remove_database_files(staging_path)?;
        let conn = Connection::open(staging_path)?;
        // No `PRAGMA threads` for the index sorter: on two cores it added ~40 MB of peak RSS and
        // no speed (bench/README.md, Replication).
        conn.execute_batch("PRAGMA journal_mode = OFF; PRAGMA synchronous = OFF; PRAGMA locking_mode = EXCLUSIVE;")?;
        conn.execute_batch(METADATA_DDL)?;
        let version = lexi_version(config.consistent_point);
        let mut copies = HashMap::with_capacity(schema.tables.len());
        let mut copy_statements = HashMap::with_capacity(schema.tables.len());
        let mut decodings = HashMap::with_capacity(schema.tables.len());
        for spec in &schema.tables {
            let table = ReplicaTable::new(spec.clone())?;
            layout::create_table(&conn, spec, &table.columns, &version)?;
            layout::save_table_spec(&conn, spec)?;
            let kinds: Vec<ValueKind> = table.stored_columns().map(|(_, c)| c.kind.clone()).collect();
            let rows_per_insert = (MAX_PARAMETERS / kinds.len().max(1)).clamp(1, ROWS_PER_INSERT);
            copy_statements.insert(spec.oid, table.copy_statement());
            let mut copy = TableCopy {
                spec: spec.clone(),
                indexed: false,
                table,
                columns: kinds.len(),
                rows: 0,
                rows_per_insert,
                insert_sql: String::new(),
                insert_one_sql: String::new(),
            };
            copy.insert_sql = copy.insert_sql(rows_per_insert);
            copy.insert_one_sql = copy.insert_sql(1);
            decodings.insert(spec.oid, Mutex::new(TableDecoding { decoder: CopyDecoder::new(kinds.len()), kinds }));
            copies.insert(spec.oid, copy);
        }
        conn.execute_batch("BEGIN")?;
        let rows = Arc::new(AtomicU64::new(0));
        let failure = Arc::new(Failure::default());
        let (jobs, queue) = sync_channel(QUEUED_CALLS);
        let staging = Staging { conn, copies, rows: Arc::clone(&rows) };
        let writer_failure = Arc::clone(&failure);
        let writer = std::thread::Builder::new()
            .name("zcache-initial-sync".into())
            .spawn(move || staging.run(&queue, &writer_failure))?;
        let (stop_flusher, stop) = sync_channel(0);
        let file = fs::File::open(staging_path)?;
        let flusher = std::thread::Builder::new().name("zcache-initial-sync-flush".into()).spawn(move || {
            // Only starts the writing early; the final fsync reports errors.
            while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = stop.recv_timeout(FLUSH_INTERVAL) {
                let _ = file.sync_data();
            }
        })?;
        Ok(InitialSync {
            jobs,
            writer,
            stop_flusher,
            flusher,
            failure,
            copy_statements,
            decodings,
            rows,
            tables_done: AtomicU64::new(0),
            staging_path: staging_path.to_owned(),
            config,
            schema,
        })
    }

    /// The COPY statement whose output [`InitialSync::copy_chunks`] expects for table `oid`.
    pub fn copy_statement(&self, oid: u32) -> Result<String> {
        self.copy_statements.get(&oid).cloned().ok_or_else(|| unknown_table(oid))
    }

    /// Decodes the next bytes of table `oid`'s COPY output (here, in the caller's thread) and
    /// queues the complete rows for insertion; waits while the queue is full. An error is this
    /// chunk's (decoding) or the writer's (inserting earlier rows); either stops the sync.
    pub fn copy_chunks(&self, oid: u32, data: &[u8]) -> Result<()> {
        let decoding = self.decodings.get(&oid).ok_or_else(|| unknown_table(oid))?;
        if self.failure.stopped.load(Ordering::SeqCst) {
            return Err(self.failure.take());
        }
        let rows = self.decoding(decoding, |d| d.decode(data))?;
        self.jobs.send(Job::Rows { oid, rows }).map_err(|_| self.failure.take())
    }

    /// Runs `f` on a table's decoding; its error stops the sync.
    fn decoding<T>(&self, decoding: &Mutex<TableDecoding>, f: impl FnOnce(&mut TableDecoding) -> Result<T>) -> Result<T> {
        let result = match decoding.lock() {
            Ok(mut d) => f(&mut d),
            Err(_) => Err(Error::Protocol { detail: "a thread decoding the initial sync's COPY output panicked".into() }),
        };
        if result.is_err() {
            self.failure.record(None);
        }
        result
    }

    /// Checks that table `oid`'s COPY output ended properly, waits until its queued rows are
    /// inserted; returns its row count.
    pub fn finish_table(&self, oid: u32) -> Result<u64> {
        let decoding = self.decodings.get(&oid).ok_or_else(|| unknown_table(oid))?;
        if self.failure.stopped.load(Ordering::SeqCst) {
            return Err(self.failure.take());
        }
        self.decoding(decoding, |d| d.decoder.finish())?;
        let (reply, answer) = sync_channel(1);
        self.jobs.send(Job::FinishTable { oid, reply }).map_err(|_| self.failure.take())?;
        answer.recv().map_err(|_| self.failure.take())?
    }

    /// Copies the tables `oids` straight from Postgres into the staging file, in this order,
    /// `workers` at a time, each worker on its own connection importing `snapshot` (the one the
    /// slot exported). Returns when every table is in, or with the first error (the other workers
    /// stop at their next chunk).
    pub fn copy_tables(&self, params: &ConnectParams, snapshot: &str, oids: &[u32], workers: usize) -> Result<()> {
        if let Some(&oid) = oids.iter().find(|oid| !self.copy_statements.contains_key(oid)) {
            return Err(unknown_table(oid));
        }
        let next = AtomicUsize::new(0);
        let abort = AtomicBool::new(false);
        let first_error: Mutex<Option<Error>> = Mutex::new(None);
        std::thread::scope(|scope| {
            for _ in 0..workers.clamp(1, oids.len().max(1)) {
                scope.spawn(|| {
                    if let Err(e) = self.copy_worker(params, snapshot, oids, &next, &abort) {
                        if let Ok(mut slot) = first_error.lock() {
                            slot.get_or_insert(e);
                        }
                        abort.store(true, Ordering::SeqCst);
                    }
                });
            }
        });
        match first_error.into_inner() {
            Ok(None) => Ok(()),
            Ok(Some(e)) => Err(e),
            Err(_) => Err(Error::Protocol { detail: "an initial sync copy worker panicked".into() }),
        }
    }

    /// One copy worker: takes the next table until none is left or another worker failed.
    fn copy_worker(&self, params: &ConnectParams, snapshot: &str, oids: &[u32], next: &AtomicUsize, abort: &AtomicBool) -> Result<()> {
        let mut connection: Option<SnapshotReader> = None;
        while !abort.load(Ordering::SeqCst) {
            let Some(&oid) = oids.get(next.fetch_add(1, Ordering::SeqCst)) else { return Ok(()) };
            let reader = match &mut connection {
                Some(reader) => reader,
                None => connection.insert(SnapshotReader::connect(params, snapshot)?),
            };
            self.copy_table(reader, oid, abort)?;
            self.finish_table(oid)?;
            self.tables_done.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Reads table `oid`'s COPY output, row by row as Postgres sends it, straight from the
    /// reader's buffer into decoded batches of about `BATCH_BYTES` of COPY output, and queues them.
    fn copy_table(&self, reader: &mut SnapshotReader, oid: u32, abort: &AtomicBool) -> Result<()> {
        let decoding = self.decodings.get(&oid).ok_or_else(|| unknown_table(oid))?;
        let mut batch = DecodedRows::with_capacity(BATCH_BYTES, 0);
        let mut batch_bytes = 0;
        self.decoding(decoding, |decoding| {
            reader.copy(&self.copy_statements[&oid], |payload| {
                decoding.decode_into(payload, &mut batch)?;
                batch_bytes += payload.len();
                if batch_bytes >= BATCH_BYTES {
                    let cells = batch.cells.len();
                    self.queue(oid, std::mem::replace(&mut batch, DecodedRows::with_capacity(BATCH_BYTES, cells)), abort)?;
                    batch_bytes = 0;
                }
                Ok(())
            })
        })?;
        self.queue(oid, batch, abort)
    }

    fn queue(&self, oid: u32, rows: DecodedRows, abort: &AtomicBool) -> Result<()> {
        if abort.load(Ordering::SeqCst) {
            return Err(Error::Protocol { detail: "stopped: another table's copy failed".into() });
        }
        if self.failure.stopped.load(Ordering::SeqCst) {
            return Err(self.failure.take());
        }
        self.jobs.send(Job::Rows { oid, rows }).map_err(|_| self.failure.take())
    }

    /// Tables completely copied by [`InitialSync::copy_tables`] so far.
    #[must_use]
    pub fn tables_done(&self) -> u64 {
        self.tables_done.load(Ordering::Relaxed)
    }

    /// Rows inserted so far, over all tables.
    #[must_use]
    pub fn rows(&self) -> u64 {
        self.rows.load(Ordering::Relaxed)
    }

    /// Indexes, metadata, durability, then the atomic rename over `replica_path`.
    pub fn finish(self, replica_path: &Path) -> Result<()> {
        let InitialSync { jobs, writer, stop_flusher, flusher, failure, staging_path, config, schema, .. } = self;
        drop(jobs);
        if failure.stopped.load(Ordering::SeqCst) {
            let _ = writer.join();
            return Err(failure.take());
        }
        let staging = match writer.join() {
            Ok(Ok(staging)) => staging,
            Ok(Err(_)) => return Err(failure.take()),
            Err(_) => return Err(Error::Protocol { detail: "the initial sync's writer panicked".into() }),
        };
        let conn = staging.conn;
        for spec in &schema.tables {
            if !staging.copies.get(&spec.oid).is_some_and(|c| c.indexed) {
                layout::create_primary_key(&conn, spec)?;
            }
        }
        let version = lexi_version(config.consistent_point);
        conn.execute(
            r#"INSERT INTO "_zcache_replication_config"
               ("lock", "replica_version", "slot", "publications", "app_id", "shard_num", "ddl_detection")
               VALUES (1, ?1, ?2, ?3, ?4, ?5, ?6)"#,
            params![
                version,
                config.slot,
                serde_json::to_string(&config.publications).expect("strings serialise"),
                config.app_id,
                config.shard_num,
                config.ddl_detection
            ],
        )?;
        conn.execute(
            r#"INSERT INTO "_zcache_replication_state" ("lock", "state_version", "watermark_lsn") VALUES (1, ?1, ?2)"#,
            params![version, config.consistent_point as i64],
        )?;
        // ANALYZE samples each index (analysis_limit) instead of reading all of it: the planner
        // needs the shape of the data, not exact counts.
        conn.execute_batch(
            "COMMIT; PRAGMA analysis_limit = 1000; ANALYZE; PRAGMA cache_size = -2000; \
             PRAGMA locking_mode = NORMAL; PRAGMA journal_mode = WAL;",
        )?;
        drop(conn);
        drop(stop_flusher);
        let _ = flusher.join();
        fs::File::open(&staging_path)?.sync_all()?;
        remove_database_files(replica_path)?;
        fs::rename(&staging_path, replica_path)?;
        if let Some(dir) = replica_path.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    }
}

fn unknown_table(oid: u32) -> Error {
    Error::Schema { detail: format!("no published table with oid {oid}") }
}

/// A table's two INSERT statements (`rows_per_insert` rows, one row), held by the writer for the
/// whole copy: the statement cache would look each up by its (long) text and clear its bindings
/// at every use.
struct Inserts<'c> {
    many: BulkInsert<'c>,
    one: BulkInsert<'c>,
}

impl Staging {
    /// The writer thread: runs the queued jobs until every sender is gone, or until one fails
    /// (its error goes to `failure`, and the dropped queue makes every later call fail).
    fn run(self, queue: &Receiver<Job>, failure: &Failure) -> Result<Staging> {
        let Staging { conn, mut copies, rows } = self;
        run_jobs(&conn, &mut copies, &rows, queue, failure)?;
        Ok(Staging { conn, copies, rows })
    }
}

fn run_jobs(
    conn: &Connection,
    copies: &mut HashMap<u32, TableCopy>,
    rows_inserted: &AtomicU64,
    queue: &Receiver<Job>,
    failure: &Failure,
) -> Result<()> {
    let mut inserts: HashMap<u32, Inserts<'_>> = HashMap::new();
    for job in queue {
        match job {
            Job::Rows { oid, rows } => {
                if let Err(e) = insert(conn, copies, &mut inserts, oid, &rows) {
                    failure.record(Some(e));
                    return Err(stopped());
                }
                rows_inserted.fetch_add(rows.rows, Ordering::Relaxed);
            }
            Job::FinishTable { oid, reply } => {
                let result = copies.get(&oid).map(|c| c.rows).ok_or_else(|| unknown_table(oid));
                let failed = result.is_err();
                if failed {
                    failure.record(None);
                }
                // A caller that stopped waiting learns of an error from its next call.
                let _ = reply.send(result);
                if failed {
                    return Err(stopped());
                }
                inserts.remove(&oid);
                // The table is complete: its index is built now, while the other tables'
                // chunks queue up (their COPY goes on in Postgres meanwhile), not at the end.
                if let Err(e) = index_table(conn, copies, oid) {
                    failure.record(Some(e));
                    return Err(stopped());
                }
            }
        }
    }
    Ok(())
}

/// Inserts `rows` of table `oid`: `rows_per_insert` at a time, the rest one by one.
fn insert<'c>(
    conn: &'c Connection,
    copies: &mut HashMap<u32, TableCopy>,
    inserts: &mut HashMap<u32, Inserts<'c>>,
    oid: u32,
    rows: &DecodedRows,
) -> Result<()> {
    let copy = copies.get_mut(&oid).ok_or_else(|| unknown_table(oid))?;
    let statements = match inserts.entry(oid) {
        std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
        std::collections::hash_map::Entry::Vacant(e) => {
            e.insert(Inserts { many: BulkInsert::prepare(conn, &copy.insert_sql)?, one: BulkInsert::prepare(conn, &copy.insert_one_sql)? })
        }
    };
    let columns = copy.columns.max(1);
    let mut groups = rows.cells.chunks_exact(copy.rows_per_insert * columns);
    for group in &mut groups {
        statements.many.run(group, &rows.text)?;
    }
    for row in groups.remainder().chunks_exact(columns) {
        statements.one.run(row, &rows.text)?;
    }
    copy.rows += rows.rows;
    Ok(())
}

fn index_table(conn: &Connection, copies: &mut HashMap<u32, TableCopy>, oid: u32) -> Result<()> {
    let copy = copies.get_mut(&oid).ok_or_else(|| unknown_table(oid))?;
    if !copy.indexed {
        conn.execute_batch(&format!("PRAGMA cache_size = -{INDEX_CACHE_KIB};"))?;
        layout::create_primary_key(conn, &copy.spec)?;
        conn.execute_batch("PRAGMA cache_size = -2000;")?;
        copy.indexed = true;
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pg::copy::SIGNATURE;
    use crate::pg::schema::{ColumnSpec, TableSpec};
    use std::sync::atomic::AtomicUsize;

    const OID: u32 = 7;

    fn column(name: &str, type_oid: u32) -> ColumnSpec {
        ColumnSpec {
            name: name.into(),
            attnum: 1,
            type_oid,
            type_name: String::new(),
            type_kind: "b".into(),
            base_type_oid: type_oid,
            elem_type_oid: 0,
            elem_type_kind: None,
            not_null: false,
            has_missing: false,
            missing: None,
            enum_labels: None,
        }
    }

    fn schema() -> PublishedSchema {
        PublishedSchema {
            tables: vec![TableSpec {
                oid: OID,
                schema: "public".into(),
                name: "item".into(),
                replica_identity: "d".into(),
                primary_key: vec!["id".into()],
                columns: vec![column("id", 20), column("label", 25)],
            }],
        }
    }

    fn config() -> ReplicaConfig {
        ReplicaConfig {
            consistent_point: 0x1_0000_0000,
            slot: "zero_0_1".into(),
            publications: vec!["p".into()],
            app_id: "zero".into(),
            shard_num: 0,
            ddl_detection: true,
        }
    }

    fn directory() -> PathBuf {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("zcache-initial-sync-test-{}-{n}", std::process::id()));
        fs::create_dir_all(&dir).expect("temp dir");
        dir
    }

    /// The binary COPY stream of rows (i, "row i", or NULL for every third label).
    fn copy_stream(rows: u32) -> Vec<u8> {
        let mut out = SIGNATURE.to_vec();
        out.extend_from_slice(&[0; 8]);
        for i in 0..rows {
            out.extend_from_slice(&2i16.to_be_bytes());
            out.extend_from_slice(&8i32.to_be_bytes());
            out.extend_from_slice(&i64::from(i).to_be_bytes());
            if i % 3 == 0 {
                out.extend_from_slice(&(-1i32).to_be_bytes());
            } else {
                let label = format!("row {i}");
                out.extend_from_slice(&i32::try_from(label.len()).expect("short").to_be_bytes());
                out.extend_from_slice(label.as_bytes());
            }
        }
        out.extend_from_slice(&(-1i16).to_be_bytes());
        out
    }

    fn replica_rows(path: &Path) -> Vec<(i64, Option<String>)> {
        let conn = Connection::open(path).expect("opens");
        let mut stmt = conn.prepare(r#"SELECT "id", "label" FROM "item" ORDER BY "id""#).expect("prepares");
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?))).expect("queries").collect::<rusqlite::Result<_>>().expect("rows")
    }

    #[test]
    fn every_row_arrives_whatever_the_count_and_the_chunking() {
        for rows in [0, 1, 63, 64, 65, 130, 1000] {
            for chunk in [1, 7, 4096] {
                let dir = directory();
                let sync = InitialSync::create(&dir.join("r.staging"), schema(), config()).expect("creates");
                for piece in copy_stream(rows).chunks(chunk) {
                    sync.copy_chunks(OID, piece).expect("queued");
                }
                assert_eq!(sync.finish_table(OID).expect("finished"), u64::from(rows), "{rows} rows in chunks of {chunk}");
                assert_eq!(sync.rows(), u64::from(rows));
                sync.finish(&dir.join("r.db")).expect("finishes");
                let got = replica_rows(&dir.join("r.db"));
                let want: Vec<(i64, Option<String>)> =
                    (0..rows).map(|i| (i64::from(i), (i % 3 != 0).then(|| format!("row {i}")))).collect();
                assert_eq!(got, want, "{rows} rows in chunks of {chunk}");
                fs::remove_dir_all(&dir).expect("cleaned up");
            }
        }
    }

    #[test]
    fn a_decoding_error_reaches_the_caller_and_stops_the_sync() {
        let dir = directory();
        let sync = InitialSync::create(&dir.join("r.staging"), schema(), config()).expect("creates");
        let mut stream = copy_stream(3);
        // The second row's label ("row 1") stops being UTF-8.
        let second_label = SIGNATURE.len() + 8 + (2 + 4 + 8 + 4) + (2 + 4 + 8 + 4);
        assert_eq!(&stream[second_label..second_label + 5], b"row 1");
        stream[second_label] = 0xFF;
        let err = sync.copy_chunks(OID, &stream).expect_err("the bad value is found");
        assert!(matches!(err, Error::InvalidValue { .. }), "{err}");
        // Later calls fail too, and nothing is renamed into place.
        assert!(sync.copy_chunks(OID, &[0]).is_err());
        assert!(sync.finish_table(OID).is_err());
        assert!(sync.finish(&dir.join("r.db")).is_err());
        assert!(!dir.join("r.db").exists());
        fs::remove_dir_all(&dir).expect("cleaned up");
    }

    #[test]
    fn a_framing_error_reaches_the_caller_and_stops_the_sync() {
        let dir = directory();
        let sync = InitialSync::create(&dir.join("r.staging"), schema(), config()).expect("creates");
        let mut stream = copy_stream(2);
        // The first tuple claims 3 fields.
        stream[SIGNATURE.len() + 8..SIGNATURE.len() + 10].copy_from_slice(&3i16.to_be_bytes());
        let err = sync.copy_chunks(OID, &stream).expect_err("the bad tuple is found");
        assert!(matches!(err, Error::Malformed { .. }), "{err}");
        assert!(err.to_string().contains("tuple 1 has 3 fields, expected 2"), "{err}");
        assert!(matches!(sync.finish(&dir.join("r.db")), Err(Error::Protocol { .. })));
        fs::remove_dir_all(&dir).expect("cleaned up");
    }

    #[test]
    fn an_unknown_table_is_refused() {
        let dir = directory();
        let sync = InitialSync::create(&dir.join("r.staging"), schema(), config()).expect("creates");
        assert!(matches!(sync.copy_chunks(OID + 1, &[]), Err(Error::Schema { .. })));
        assert!(matches!(sync.copy_statement(OID + 1), Err(Error::Schema { .. })));
        drop(sync);
        fs::remove_dir_all(&dir).expect("cleaned up");
    }
}
