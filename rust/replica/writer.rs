//! Applies the replication stream to the replica.
//!
//! Python hands over batches of CopyData frames exactly as the walsender sent them; this module
//! decodes them (`pg::pgoutput`) and applies them:
//!
//! * Every upstream transaction is applied inside one SQLite transaction, together with the
//!   replication state (`state_version` = LexiVersion of its commit LSN, `watermark_lsn` = its end
//!   LSN) and the change-log entries of its rows. Several upstream transactions of one batch share
//!   a SQLite transaction; a transaction that does not finish within its batch gets a SQLite
//!   transaction of its own, which stays open until its Commit arrives in a later batch. So a
//!   reader never sees part of an upstream transaction, and a crash loses nothing that was
//!   acknowledged.
//! * Commits are visible to readers (and survive a crash of the process) when `apply_frames`
//!   returns, but reach the disk later (`synchronous = NORMAL`): [`ApplyOutcome::ack_lsn`] may be
//!   confirmed upstream once a [`crate::replica::WalSync::sync`] started after that call returned.
//! * A transaction whose commit LSN is not above the replica's state version was applied before
//!   (a restart resumed slightly behind); it is skipped, so nothing is applied twice.
//! * Schema changes arrive as the shard's DDL messages (see `upstream.py`) and are applied by
//!   diffing published schemas (`replica::schema_change`). A change the replica cannot follow
//!   without re-reading upstream data fails with [`Error::ResyncRequired`].
//! * On any error the open SQLite transaction is rolled back and the in-memory state reloaded
//!   from the file, so the writer stays consistent with what is committed.

use std::collections::HashMap;
use std::path::Path;

use rusqlite::types::{ToSqlOutput, ValueRef};
use rusqlite::{params, params_from_iter, Connection, OptionalExtension};

use crate::error::{Error, Result};
use crate::pg::pgoutput::{Frame, Message, OldTuple, TupleData, Value};
use crate::pg::schema::{PublishedSchema, TableSpec};
use crate::pg::values::{decode_binary_ref, decode_text, SqlValueRef, ValueKind};
use crate::pg::{decode_frame, Lsn, RelationCache};
use crate::replica::layout::quote_ident;
use crate::replica::schema_change::apply_schema_change;
use crate::replica::table::ReplicaTable;
use crate::version::{lexi_version, parse_lexi_version};

/// What one [`ReplicaWriter::apply_frames`] call did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ApplyOutcome {
    /// Upstream transactions committed by this call.
    pub transactions: u64,
    /// Row changes (insert, update, delete) applied by this call, committed or not yet.
    pub rows: u64,
    /// Upstream transactions skipped because the replica already had them.
    pub skipped_transactions: u64,
    /// The replica's state version after this call (committed).
    pub state_version: String,
    /// The LSN that may be confirmed upstream as flushed once the replica's WAL is synced (see
    /// [`crate::replica::WalSync`]): the end of the last committed transaction, or, while no
    /// transaction is open, the WAL end the server last reported.
    pub ack_lsn: u64,
    /// An upstream transaction is open (its Commit has not arrived yet).
    pub in_transaction: bool,
    /// A keepalive asked for an immediate status update.
    pub reply_requested: bool,
    /// The schema of a replicated table changed in this call.
    pub schema_changed: bool,
}

/// The replication state of the last finished upstream transaction in the open SQLite transaction.
struct PendingState {
    version: String,
    commit_lsn: u64,
    end_lsn: Lsn,
}

struct OpenTransaction {
    version: String,
    commit_lsn: u64,
    /// The replica already has this transaction: ignore its messages.
    skip: bool,
    pos: i64,
}

/// `_zcache_replication_config`: which initial sync made the replica.
#[derive(Debug, Clone, Default)]
pub struct ReplicaIdentity {
    pub replica_version: String,
    pub slot: String,
    pub publications: Vec<String>,
    pub app_id: String,
    pub shard_num: u32,
    pub ddl_detection: bool,
}

pub struct ReplicaWriter {
    conn: Connection,
    identity: ReplicaIdentity,
    ddl_message_prefix: String,
    tables: HashMap<u32, ReplicaTable>,
    /// oid → for each column of the last Relation message, the index of that column in the table.
    relation_columns: HashMap<u32, Vec<usize>>,
    relations: RelationCache,
    /// Published tables the replica does not hold (no usable key yet), by oid; `true` while the
    /// table is known to be empty since its CREATE TABLE, so gaining a key needs no copy.
    unreplicated: HashMap<u32, bool>,
    state_version: String,
    committed_lsn: u64,
    watermark_lsn: Lsn,
    transaction: Option<OpenTransaction>,
    /// A SQLite transaction is open (it may hold finished upstream transactions not yet committed).
    sqlite_open: bool,
    /// Finished upstream transactions inside the open SQLite transaction.
    pending_commits: u64,
    pending_state: Option<PendingState>,
    idle_wal_end: Lsn,
    /// Reused for every row key written to the change log.
    row_key: String,
}

impl ReplicaWriter {
    /// Opens an existing replica (made by `replica::initial_sync`).
    pub fn open(path: &Path, ddl_message_prefix: &str) -> Result<Self> {
        let conn = open_connection(path)?;
        let mut writer = ReplicaWriter {
            conn,
            identity: ReplicaIdentity::default(),
            ddl_message_prefix: ddl_message_prefix.to_owned(),
            tables: HashMap::new(),
            relation_columns: HashMap::new(),
            relations: RelationCache::new(),
            unreplicated: HashMap::new(),
            state_version: String::new(),
            committed_lsn: 0,
            watermark_lsn: Lsn(0),
            transaction: None,
            sqlite_open: false,
            pending_commits: 0,
            pending_state: None,
            idle_wal_end: Lsn(0),
            row_key: String::new(),
        };
        writer.reload()?;
        crate::replica::indexes::restore(&writer.conn, &writer.tables)?;
        Ok(writer)
    }

    /// Builds (and records, see `replica::indexes`) an index per `(table, columns)`; per request,
    /// whether it was built now (false: it existed, or the primary key serves it). Inside the
    /// open SQLite transaction if an upstream transaction spans batches, else in its own.
    pub fn add_indexes(&mut self, requests: &[(String, Vec<String>)]) -> Result<Vec<bool>> {
        let own = !self.sqlite_open;
        if own {
            self.conn.execute_batch("BEGIN IMMEDIATE")?;
        }
        let result = requests
            .iter()
            .map(|(table, columns)| {
                let t = self.tables.values().find(|t| &t.name == table).ok_or_else(|| Error::Schema {
                    detail: format!("the replica has no table {table:?} to index"),
                })?;
                crate::replica::indexes::add(&self.conn, t, columns)
            })
            .collect::<Result<Vec<bool>>>();
        if own {
            self.conn.execute_batch(if result.is_ok() { "COMMIT" } else { "ROLLBACK" })?;
        }
        result
    }

    /// The recorded index requests (to carry them into a new replica after a resync).
    pub fn indexes(&self) -> Result<Vec<(String, Vec<String>)>> {
        crate::replica::indexes::recorded(&self.conn)
    }

    #[must_use]
    pub fn identity(&self) -> &ReplicaIdentity {
        &self.identity
    }

    #[must_use]
    pub fn state_version(&self) -> &str {
        &self.state_version
    }

    #[must_use]
    pub fn watermark_lsn(&self) -> Lsn {
        self.watermark_lsn
    }

    fn reload(&mut self) -> Result<()> {
        self.identity = self.conn.query_row(
            r#"SELECT "replica_version", "slot", "publications", "app_id", "shard_num", "ddl_detection"
               FROM "_zcache_replication_config""#,
            [],
            |row| {
                let publications: String = row.get(2)?;
                Ok(ReplicaIdentity {
                    replica_version: row.get(0)?,
                    slot: row.get(1)?,
                    publications: serde_json::from_str(&publications).unwrap_or_default(),
                    app_id: row.get(3)?,
                    shard_num: row.get(4)?,
                    ddl_detection: row.get(5)?,
                })
            },
        )?;
        let (state_version, watermark): (String, i64) = self.conn.query_row(
            r#"SELECT "state_version", "watermark_lsn" FROM "_zcache_replication_state""#,
            [],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )?;
        self.committed_lsn = parse_lexi_version(&state_version)?;
        self.state_version = state_version;
        self.watermark_lsn = Lsn(watermark as u64);
        self.tables.clear();
        let mut stmt = self.conn.prepare(r#"SELECT "spec" FROM "_zcache_tables""#)?;
        let specs = stmt
            .query_map([], |row| row.get::<_, String>(0))?
            .collect::<rusqlite::Result<Vec<String>>>()?;
        drop(stmt);
        for spec in specs {
            let spec: TableSpec = serde_json::from_str(&spec).map_err(|e| Error::Schema {
                detail: format!("unreadable table spec in the replica: {e}"),
            })?;
            self.tables.insert(spec.oid, ReplicaTable::new(spec)?);
        }
        self.relation_columns.clear();
        self.relations.clear();
        self.unreplicated.clear();
        self.transaction = None;
        self.sqlite_open = false;
        self.pending_commits = 0;
        self.pending_state = None;
        Ok(())
    }

    /// Forgets the replication session: rolls back an upstream transaction still open (its frames
    /// will be sent again from its Begin by the next session) and the Relation messages seen.
    pub fn reset_session(&mut self) -> Result<()> {
        if self.sqlite_open {
            self.conn.execute_batch("ROLLBACK")?;
        }
        self.reload()
    }

    /// Decodes and applies a batch of replication CopyData frames (see the module docs).
    pub fn apply_frames<B: AsRef<[u8]>>(&mut self, frames: &[B]) -> Result<ApplyOutcome> {
        match self.apply_frames_inner(frames) {
            Ok(outcome) => Ok(outcome),
            Err(err) => {
                if self.sqlite_open {
                    // The connection is ours; a failed rollback leaves nothing we could repair.
                    let _ = self.conn.execute_batch("ROLLBACK");
                }
                self.reload()?;
                Err(err)
            }
        }
    }

    fn apply_frames_inner<B: AsRef<[u8]>>(&mut self, frames: &[B]) -> Result<ApplyOutcome> {
        let decoded = frames.iter().map(|f| decode_frame(f.as_ref())).collect::<Result<Vec<_>>>()?;
        let last_commit = decoded
            .iter()
            .rposition(|f| matches!(f, Frame::XLogData(x) if matches!(x.message, Message::Commit(_))));
        let mut outcome = ApplyOutcome::default();
        for (index, frame) in decoded.iter().enumerate() {
            match frame {
                Frame::Keepalive(k) => {
                    outcome.reply_requested |= k.reply_requested;
                    if self.transaction.is_none() {
                        self.idle_wal_end = self.idle_wal_end.max(k.wal_end);
                    }
                }
                Frame::XLogData(x) => {
                    let finishes_here = last_commit.is_some_and(|last| index < last);
                    self.apply_message(&x.message, finishes_here, &mut outcome)?;
                }
            }
        }
        if self.sqlite_open && self.transaction.is_none() {
            outcome.transactions += self.pending_commits;
            self.commit_sqlite()?;
        }
        outcome.state_version = self.state_version.clone();
        outcome.in_transaction = self.transaction.is_some();
        outcome.ack_lsn = if outcome.in_transaction || self.sqlite_open {
            self.watermark_lsn.0
        } else {
            self.watermark_lsn.0.max(self.idle_wal_end.0)
        };
        Ok(outcome)
    }

    fn begin_sqlite(&mut self) -> Result<()> {
        if !self.sqlite_open {
            self.conn.execute_batch("BEGIN IMMEDIATE")?;
            self.sqlite_open = true;
        }
        Ok(())
    }

    fn commit_sqlite(&mut self) -> Result<()> {
        if let Some(state) = self.pending_state.take() {
            self.conn.execute(
                r#"UPDATE "_zcache_replication_state" SET "state_version" = ?1, "watermark_lsn" = ?2"#,
                params![state.version, state.end_lsn.0 as i64],
            )?;
            self.conn.execute_batch("COMMIT")?;
            self.committed_lsn = state.commit_lsn;
            self.state_version = state.version;
            self.watermark_lsn = state.end_lsn;
        } else {
            self.conn.execute_batch("COMMIT")?;
        }
        self.sqlite_open = false;
        self.pending_commits = 0;
        Ok(())
    }

    fn apply_message(&mut self, message: &Message<'_>, finishes_in_batch: bool, outcome: &mut ApplyOutcome) -> Result<()> {
        match message {
            Message::Begin(begin) => {
                if self.transaction.is_some() {
                    return Err(Error::Protocol { detail: "Begin inside an open transaction".into() });
                }
                // A transaction that will not finish in this batch keeps its SQLite transaction
                // open across calls; earlier finished ones must not wait for it.
                if !finishes_in_batch && self.sqlite_open {
                    outcome.transactions += self.pending_commits;
                    self.commit_sqlite()?;
                }
                let skip = begin.final_lsn.0 <= self.pending_lsn();
                if skip {
                    outcome.skipped_transactions += 1;
                } else {
                    self.begin_sqlite()?;
                }
                self.transaction =
                    Some(OpenTransaction { version: lexi_version(begin.final_lsn.0), commit_lsn: begin.final_lsn.0, skip, pos: 0 });
            }
            Message::Commit(commit) => {
                let tx = self.transaction.take().ok_or_else(|| Error::Protocol { detail: "Commit without Begin".into() })?;
                if !tx.skip {
                    self.pending_state =
                        Some(PendingState { version: tx.version, commit_lsn: tx.commit_lsn, end_lsn: commit.end_lsn });
                    self.pending_commits += 1;
                }
            }
            Message::Relation(_) | Message::Type(_) => {
                self.relations.observe(message)?;
                if let Message::Relation(relation) = message {
                    self.map_relation(relation.oid)?;
                }
            }
            Message::Origin(_) => {}
            Message::Message(m) => {
                if m.prefix == self.ddl_message_prefix && m.transactional() {
                    let tx = self.open_transaction()?;
                    if !tx.skip {
                        let version = tx.version.clone();
                        match parse_ddl_message(m.content)? {
                            DdlMessage::Ddl { tag, schema } => {
                                let change = apply_schema_change(
                                    &self.conn,
                                    &mut self.tables,
                                    &mut self.unreplicated,
                                    &schema,
                                    &tag,
                                    &version,
                                )?;
                                for oid in &change.changed_oids {
                                    self.relation_columns.remove(oid);
                                }
                                for table in &change.reset_tables {
                                    self.record_change(table, None, "r")?;
                                }
                                outcome.schema_changed |= !change.changed_oids.is_empty();
                            }
                            DdlMessage::Rewrite { tag, table } => {
                                if let Some(rewritten) = self.tables.get(&table) {
                                    return Err(Error::ResyncRequired {
                                        reason: format!(
                                            "{tag} rewrote every row of {} upstream; rewritten rows are not in the replication stream",
                                            rewritten.name
                                        ),
                                    });
                                }
                                self.unreplicated.insert(table, false);
                            }
                        }
                    }
                }
            }
            Message::Insert(insert) => {
                if self.open_transaction()?.skip || self.skip_unreplicated(insert.oid) {
                    return Ok(());
                }
                let (row, _) = self.decode_tuple("Insert", insert.oid, &insert.new)?;
                self.upsert(insert.oid, &row)?;
                outcome.rows += 1;
            }
            Message::Update(update) => {
                if self.open_transaction()?.skip || self.skip_unreplicated(update.oid) {
                    return Ok(());
                }
                let (row, complete) = self.decode_tuple("Update", update.oid, &update.new)?;
                let old_key = match &update.old {
                    Some(OldTuple::Key(t) | OldTuple::Full(t)) => Some(self.decode_key("Update", update.oid, t)?),
                    None => None,
                };
                self.update(update.oid, old_key, &row, complete)?;
                outcome.rows += 1;
            }
            Message::Delete(delete) => {
                if self.open_transaction()?.skip || self.skip_unreplicated(delete.oid) {
                    return Ok(());
                }
                let key = self.decode_key("Delete", delete.oid, delete.old.tuple())?;
                self.delete(delete.oid, &key)?;
                outcome.rows += 1;
            }
            Message::Truncate(truncate) => {
                if self.open_transaction()?.skip {
                    return Ok(());
                }
                for oid in &truncate.oids {
                    if !self.skip_unreplicated(*oid) {
                        self.truncate(*oid)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// The commit LSN of the newest transaction applied, committed or pending.
    fn pending_lsn(&self) -> u64 {
        self.pending_state.as_ref().map_or(self.committed_lsn, |p| p.commit_lsn)
    }

    fn open_transaction(&self) -> Result<&OpenTransaction> {
        self.transaction.as_ref().ok_or_else(outside_transaction)
    }

    fn table(&self, oid: u32) -> Result<&ReplicaTable> {
        self.tables.get(&oid).ok_or_else(|| not_replicated(oid))
    }

    /// Row changes of a published table the replica does not hold are skipped; the table is no
    /// longer known to be empty.
    fn skip_unreplicated(&mut self, oid: u32) -> bool {
        match self.unreplicated.get_mut(&oid) {
            Some(empty) => {
                *empty = false;
                true
            }
            None => false,
        }
    }

    fn map_relation(&mut self, oid: u32) -> Result<()> {
        if self.unreplicated.contains_key(&oid) {
            return Ok(());
        }
        let relation = self.relations.relation("Relation", oid)?;
        let table = self.table(oid)?;
        let mut mapping = Vec::with_capacity(relation.columns.len());
        for column in &relation.columns {
            let index = table.columns.iter().position(|c| c.name == column.name).ok_or_else(|| Error::ResyncRequired {
                reason: format!(
                    "upstream table {} has a column {} that the replica does not know (a schema change without a DDL event)",
                    table.name, column.name
                ),
            })?;
            mapping.push(index);
        }
        if mapping.len() != table.columns.len() {
            return Err(Error::ResyncRequired {
                reason: format!(
                    "upstream table {} sends {} columns, the replica has {} (a schema change without a DDL event)",
                    table.name,
                    mapping.len(),
                    table.columns.len()
                ),
            });
        }
        self.relation_columns.insert(oid, mapping);
        Ok(())
    }

    /// The tuple's values by table column; `None` for unchanged TOAST values. The flag says
    /// whether every stored column is present.
    fn decode_tuple<'t>(
        &self,
        message: &'static str,
        oid: u32,
        tuple: &TupleData<'t>,
    ) -> Result<(Vec<Option<SqlValueRef<'t>>>, bool)> {
        let table = self.table(oid)?;
        let mapping = self.relation_mapping(message, oid, tuple)?;
        let mut row: Vec<Option<SqlValueRef<'t>>> = vec![Some(SqlValueRef::NULL); table.columns.len()];
        let mut complete = true;
        for (position, value) in tuple.iter().enumerate() {
            let index = mapping[position];
            let column = &table.columns[index];
            if !column.stored() {
                continue;
            }
            row[index] = match value {
                Value::UnchangedToast => {
                    complete = false;
                    None
                }
                value => Some(decode_value(&column.kind, value)?),
            };
        }
        Ok((row, complete))
    }

    /// The primary-key values of an old tuple (the key, or the whole row under REPLICA IDENTITY
    /// FULL, of which only the key columns are decoded), in key order.
    fn decode_key<'t>(&self, message: &'static str, oid: u32, tuple: &TupleData<'t>) -> Result<Vec<SqlValueRef<'t>>> {
        let table = self.table(oid)?;
        let mapping = self.relation_mapping(message, oid, tuple)?;
        let mut key: Vec<Option<SqlValueRef<'t>>> = vec![None; table.primary_key.len()];
        for (position, value) in tuple.iter().enumerate() {
            let Some(k) = table.primary_key.iter().position(|&i| i == mapping[position]) else {
                continue;
            };
            if !matches!(value, Value::UnchangedToast) {
                key[k] = Some(decode_value(&table.columns[mapping[position]].kind, value)?);
            }
        }
        key.into_iter()
            .zip(&table.primary_key)
            .map(|(value, &i)| {
                value.ok_or_else(|| Error::Protocol {
                    detail: format!("{message} on {} carries no value for key column {}", table.name, table.columns[i].name),
                })
            })
            .collect()
    }

    fn relation_mapping(&self, message: &'static str, oid: u32, tuple: &TupleData<'_>) -> Result<&[usize]> {
        let mapping = self.relation_columns.get(&oid).ok_or(Error::UnknownRelation { message, oid })?;
        if tuple.len() != mapping.len() {
            return Err(Error::ColumnCountMismatch { message, oid, relation: mapping.len(), tuple: tuple.len() });
        }
        Ok(mapping)
    }

    /// A change-log entry outside the row paths (truncate, schema change).
    fn record_change(&mut self, table: &str, row_key: Option<&str>, op: &str) -> Result<()> {
        let tx = self.transaction.as_mut().ok_or_else(outside_transaction)?;
        record_change(&self.conn, tx, table, row_key, op)
    }

    fn upsert(&mut self, oid: u32, row: &[Option<SqlValueRef<'_>>]) -> Result<()> {
        let tx = self.transaction.as_mut().ok_or_else(outside_transaction)?;
        let table = self.tables.get(&oid).ok_or_else(|| not_replicated(oid))?;
        let values = table
            .stored_columns()
            .map(|(i, _)| bind(row[i].as_ref()))
            .chain([ToSqlOutput::Borrowed(ValueRef::Text(tx.version.as_bytes()))]);
        self.conn.prepare_cached(table.upsert_statement())?.execute(params_from_iter(values))?;
        table.write_row_key(&mut self.row_key, table.primary_key.iter().map(|&i| value_ref(row[i].as_ref())));
        record_change(&self.conn, tx, &table.name, Some(&self.row_key), "s")
    }

    fn update(
        &mut self,
        oid: u32,
        old_key: Option<Vec<SqlValueRef<'_>>>,
        row: &[Option<SqlValueRef<'_>>],
        complete: bool,
    ) -> Result<()> {
        let table = self.tables.get(&oid).ok_or_else(|| not_replicated(oid))?;
        let key_changed = old_key.as_ref().is_some_and(|old| {
            old.iter().zip(&table.primary_key).any(|(old, &i)| old.value_ref() != value_ref(row[i].as_ref()))
        });
        if complete {
            if let Some(old) = old_key.filter(|_| key_changed) {
                self.delete(oid, &old)?;
            }
            return self.upsert(oid, row);
        }
        // Some TOASTed values were not sent: update the columns that were, in place.
        let tx = self.transaction.as_mut().ok_or_else(outside_transaction)?;
        let present: Vec<bool> = row.iter().map(Option::is_some).collect();
        let new_key = || table.primary_key.iter().map(|&i| value_ref(row[i].as_ref()));
        let where_key: Vec<ValueRef<'_>> = match &old_key {
            Some(old) => old.iter().map(SqlValueRef::value_ref).collect(),
            None => new_key().collect(),
        };
        let values = table
            .stored_columns()
            .filter_map(|(i, _)| row[i].as_ref().map(SqlValueRef::value_ref))
            .chain([ValueRef::Text(tx.version.as_bytes())])
            .chain(where_key.iter().copied())
            .map(ToSqlOutput::Borrowed);
        let updated = self.conn.prepare_cached(&table.partial_update_sql(&present))?.execute(params_from_iter(values))?;
        if updated != 1 {
            return Err(Error::ResyncRequired {
                reason: format!("an upstream update of {} names a row the replica does not have", table.name),
            });
        }
        if key_changed {
            table.write_row_key(&mut self.row_key, where_key.iter().copied());
            record_change(&self.conn, tx, &table.name, Some(&self.row_key), "d")?;
        }
        table.write_row_key(&mut self.row_key, new_key());
        record_change(&self.conn, tx, &table.name, Some(&self.row_key), "s")
    }

    fn delete(&mut self, oid: u32, key: &[SqlValueRef<'_>]) -> Result<()> {
        let tx = self.transaction.as_mut().ok_or_else(outside_transaction)?;
        let table = self.tables.get(&oid).ok_or_else(|| not_replicated(oid))?;
        self.conn.prepare_cached(table.delete_statement())?.execute(params_from_iter(key))?;
        table.write_row_key(&mut self.row_key, key.iter().map(SqlValueRef::value_ref));
        record_change(&self.conn, tx, &table.name, Some(&self.row_key), "d")
    }

    fn truncate(&mut self, oid: u32) -> Result<()> {
        let name = self.table(oid)?.name.clone();
        self.conn.execute_batch(&format!("DELETE FROM {}", quote_ident(&name)))?;
        self.conn.execute(r#"DELETE FROM "_zcache_changes" WHERE "table" = ?1"#, params![name])?;
        self.record_change(&name, None, "t")
    }
}

fn outside_transaction() -> Error {
    Error::Protocol { detail: "row change outside a transaction".into() }
}

fn not_replicated(oid: u32) -> Error {
    Error::ResyncRequired { reason: format!("upstream relation oid {oid} is not a replicated table of this replica") }
}

fn decode_value<'t>(kind: &ValueKind, value: Value<'t>) -> Result<SqlValueRef<'t>> {
    Ok(match value {
        Value::Null | Value::UnchangedToast => SqlValueRef::NULL,
        Value::Text(bytes) => SqlValueRef::Owned(decode_text(kind, bytes)?),
        Value::Binary(bytes) => decode_binary_ref(kind, bytes)?,
    })
}

/// A column of a decoded row as SQLite binds it (an unchanged TOAST value is never bound).
fn value_ref<'v>(value: Option<&'v SqlValueRef<'_>>) -> ValueRef<'v> {
    value.map_or(ValueRef::Null, SqlValueRef::value_ref)
}

fn bind<'v>(value: Option<&'v SqlValueRef<'_>>) -> ToSqlOutput<'v> {
    ToSqlOutput::Borrowed(value_ref(value))
}

/// The latest change of a row (or of a whole table when `row_key` is None) in the change log, at
/// the transaction's next position.
fn record_change(conn: &Connection, tx: &mut OpenTransaction, table: &str, row_key: Option<&str>, op: &str) -> Result<()> {
    tx.pos += 1;
    conn.prepare_cached(
        r#"INSERT INTO "_zcache_changes" ("state_version", "pos", "table", "row_key", "op") VALUES (?1, ?2, ?3, ?4, ?5)
           ON CONFLICT ("table", "row_key") DO UPDATE
           SET "state_version" = excluded."state_version", "pos" = excluded."pos", "op" = excluded."op""#,
    )?
    .execute(params![tx.version, tx.pos, table, row_key, op])?;
    Ok(())
}

/// The writer's page cache, in KiB. A batch of many small transactions touches pages all over the
/// tables and the change log; with SQLite's default 2 MiB those pages spill to the WAL (and are
/// read back) several times within one SQLite transaction, which made such batches 2–3× slower.
const WRITER_CACHE_KIB: i64 = 64 * 1024;

/// Opens the replica for writing: WAL (readers never block the writer); commits are synced to the
/// disk by [`crate::replica::WalSync`], not by each commit.
pub(crate) fn open_connection(path: &Path) -> Result<Connection> {
    let conn = Connection::open(path)?;
    conn.execute_batch(&format!(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA busy_timeout = 5000; PRAGMA foreign_keys = OFF; \
         PRAGMA cache_size = -{WRITER_CACHE_KIB};"
    ))?;
    conn.set_prepared_statement_cache_capacity(512);
    let exists: Option<i64> = conn
        .query_row(r#"SELECT 1 FROM sqlite_master WHERE name = '_zcache_replication_state'"#, [], |r| r.get(0))
        .optional()?;
    if exists.is_none() {
        return Err(Error::Schema { detail: format!("{} is not a zcache replica", path.display()) });
    }
    Ok(conn)
}

/// The shard's event-trigger messages (see `change_source/upstream.py`).
#[derive(serde::Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
enum DdlMessage {
    /// After a DDL command that changed the published schema: the whole new schema.
    Ddl { tag: String, schema: PublishedSchema },
    /// A DDL command rewrote every row of a table (no row changes are streamed for that).
    Rewrite { tag: String, table: u32 },
}

fn parse_ddl_message(content: &[u8]) -> Result<DdlMessage> {
    serde_json::from_slice(content).map_err(|e| Error::Protocol { detail: format!("unreadable DDL message: {e}") })
}
