//! The query engine: per client group, the materialised partitions of every query, advanced
//! from the replica's change log. See `ivm` (mod.rs) for the design.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Arc;

use rusqlite::{params_from_iter, Connection, OpenFlags, OptionalExtension};

use crate::error::{Error, Result};
use crate::pg::schema::TableSpec;

use super::ast::{parse_ast_json, Ast};
use super::interest::{group_of, query_key, Interest, Reg};
use super::plan::{compile, NodeKind, Plan, ReadCache, Stmt, TableInfo};
use super::value::{part_key, write_json_str, FastMap, FastSet, KeyVal, PartKey, Row, Val};

/// A row of one table, across the engine: (table id, row key).
type RowId = (u32, Arc<str>);

/// Cumulative counters, reported by [`QueryEngine::statistics`].
#[derive(Debug, Default, Clone)]
struct Counters {
    hydrations: u64,
    partition_queries: u64,
    refills: u64,
    exists_checks: u64,
    parent_lookups: u64,
    row_reads: u64,
    /// Rows returned by partition statements (hydrations, refills, parent lookups).
    rows_read: u64,
    changes_read: u64,
    advances: u64,
    rehydrations: u64,
    query_errors: u64,
}

/// A node's rows for one correlation value.
#[derive(Debug)]
struct Partition {
    /// Parent rows (or 1 for roots) referencing this partition.
    refs: u32,
    /// Row keys: in the node's order for nodes with a limit (a window: its end matters), in no
    /// particular order otherwise (a set; `Entry::slot` indexes it).
    keys: Vec<Arc<str>>,
}

/// A row in a node's partition (one per row of every hydrated query: kept small).
#[derive(Debug)]
struct Entry {
    part: PartKey,
    version: Arc<str>,
    /// The sort key (nodes with a limit) and child links (nodes with children), boxed together:
    /// most entries have neither.
    more: Option<Box<EntryMore>>,
    /// Unlimited nodes: the entry's index in its partition's (unordered) key list.
    slot: u32,
}

#[derive(Debug, Default)]
struct EntryMore {
    sort: Box<[Val]>,
    /// Per child node: the child partition this row holds (`None`: a NULL correlation value).
    links: Box<[Option<PartKey>]>,
}

fn entry_slot(slot: usize) -> u32 {
    u32::try_from(slot).expect("fewer than 2^32 rows in a partition")
}

impl Entry {
    fn sort(&self) -> &[Val] {
        self.more.as_ref().map_or(&[], |m| &m.sort)
    }

    fn links(&self) -> &[Option<PartKey>] {
        self.more.as_ref().map_or(&[], |m| &m.links)
    }

    fn more(&mut self) -> &mut EntryMore {
        self.more.get_or_insert_with(Box::default)
    }
}

#[derive(Debug, Default)]
struct NodeState {
    parts: FastMap<PartKey, Partition>,
    rows: FastMap<Arc<str>, Entry>,
}

/// A hydrated query's state.
#[derive(Debug)]
struct QState {
    /// The query's key in the engine's `Interest`.
    key: u64,
    nodes: Vec<NodeState>,
    /// Table id of each node.
    tids: Vec<u32>,
    /// Rows of `counted` nodes (see `NodePlan::counted`) this query holds, with how many
    /// partition entries hold each.
    rows: FastMap<RowId, u32>,
    /// Synced nodes that are not counted: each of their entries is a row the query holds.
    direct: Vec<usize>,
    /// The plan's registrations in the engine's `Interest` (see `Plan::regs`), and the
    /// `related` nodes, whose partitions are registered as pins on their correlation columns.
    regs: Vec<Reg>,
    related: Vec<(usize, Box<[usize]>)>,
}

impl QState {
    /// How many distinct rows the query syncs.
    fn synced_rows(&self) -> usize {
        self.rows.len() + self.direct.iter().map(|&n| self.nodes[n].rows.len()).sum::<usize>()
    }
}

struct Query {
    /// The query's key in the engine's `Interest` (`interest::query_key`).
    key: u64,
    ast: Ast,
    plan: Option<Arc<Plan>>,
    state: Option<QState>,
    error: Option<String>,
}

/// What a client group has been sent, row by row: how many of its queries hold the row and at
/// which version.
struct GroupRow {
    refs: u32,
    /// The row's index in `Acc::list` if call number `call` of the group touched it (marks of
    /// earlier calls are stale, so a call's end need not clear them).
    touched: u32,
    call: u64,
    version: Arc<str>,
}

impl Group {
    fn new(next_id: &mut u32, version: &str, specs_gen: u64) -> Group {
        let id = *next_id;
        *next_id = next_id.wrapping_add(1);
        Group {
            id,
            next_query: 0,
            version: version.to_owned(),
            specs_gen,
            queries: BTreeMap::new(),
            rows: FastMap::default(),
            calls: 0,
        }
    }

    /// The number of a new call accumulating a patch for the group (see `GroupRow::call`).
    fn begin_call(&mut self) -> u64 {
        self.calls += 1;
        self.calls
    }
}

struct Group {
    /// The group's number in the engine's `Interest`, and the number its next query gets.
    id: u32,
    next_query: u32,
    version: String,
    specs_gen: u64,
    queries: BTreeMap<String, Query>,
    rows: FastMap<RowId, GroupRow>,
    calls: u64,
}

/// The replica connection and what the engine knows of its tables.
struct Db {
    conn: Connection,
    tables: HashMap<String, Arc<TableInfo>>,
    table_ids: HashMap<String, u32>,
    table_names: Vec<Arc<str>>,
    schema_cookie: i64,
    specs_gen: u64,
    /// An emptied row buffer of the largest partition read so far, so that hydrations of large
    /// partitions do not grow one again (each doubling copies every row read so far).
    spare_rows: RefCell<Vec<Row>>,
    /// See [`PIPELINE_ROWS`] (tests lower it).
    pipeline_rows: usize,
}

/// Shared by every client group of the process (see the module docs).
pub struct QueryEngine {
    db: Db,
    groups: FastMap<String, Group>,
    interest: Interest,
    next_group_id: u32,
    counters: Counters,
}

/// One change-log entry.
struct Change {
    version: String,
    table: String,
    key: Option<Arc<str>>,
    op: String,
}

/// A changed row: its table and key, and its value at the call's version (read at most once,
/// for the first group that needs it, and shared by all).
struct RowChange {
    tid: u32,
    key: Arc<str>,
    /// `Some(None)`: read, and the row does not exist.
    row: std::cell::OnceCell<Option<Arc<Row>>>,
}

/// The change-log entries after some version, read once by a call and prepared for all the
/// groups it advances.
struct ChangeSet {
    /// The version the entries follow, and the replica's version they lead to.
    since: String,
    version: String,
    changes: Vec<Change>,
    /// Row entries: (index in `changes`, the change).
    rows: Vec<(usize, RowChange)>,
    /// Whole-table entries (`t`, `r`): (index in `changes`, table).
    whole: Vec<(usize, String)>,
}

impl ChangeSet {
    fn empty(version: &str) -> Self {
        ChangeSet {
            since: version.to_owned(),
            version: version.to_owned(),
            changes: Vec::new(),
            rows: Vec::new(),
            whole: Vec::new(),
        }
    }

    /// The entries after `since`, up to `version` (the read transaction's).
    fn read(db: &Db, since: &str, version: &str) -> Result<Self> {
        let changes = db.changes_since(since)?;
        let mut rows = Vec::with_capacity(changes.len());
        let mut whole = Vec::new();
        for (i, c) in changes.iter().enumerate() {
            match (&c.key, c.op.as_str()) {
                (Some(key), "s" | "d") => {
                    if let Some(&tid) = db.table_ids.get(&c.table) {
                        rows.push((
                            i,
                            RowChange {
                                tid,
                                key: key.clone(),
                                row: std::cell::OnceCell::new(),
                            },
                        ));
                    }
                }
                _ => whole.push((i, c.table.clone())),
            }
        }
        Ok(ChangeSet {
            since: since.to_owned(),
            version: version.to_owned(),
            changes,
            rows,
            whole,
        })
    }

    /// The groups the row changes may concern (see `ivm::interest`).
    fn candidates(&self, ctx: &Ctx<'_>, interest: &Interest) -> Result<FastSet<u64>> {
        let mut out = FastSet::default();
        for (_, change) in &self.rows {
            let row = if interest.has_pins(change.tid) {
                ctx.changed_row(change)?
            } else {
                None
            };
            interest.candidates(change.tid, &change.key, row.map(|r| &**r), &mut out);
        }
        Ok(out)
    }

    /// The index of the first entry after `version`.
    fn first_after(&self, version: &str) -> usize {
        self.changes.partition_point(|c| c.version.as_str() <= version)
    }
}

/// A row touched by a call: its version before the call and now (`None`: not in the group),
/// and the newest content seen in the call.
struct Touched {
    rid: RowId,
    before: Option<Arc<str>>,
    after: Option<Arc<str>>,
    row: Option<Content>,
}

/// A row's content for its put op.
enum Content {
    /// A row read once for the call (shared by the groups it advances).
    Shared(Arc<Row>),
    /// The client op of a row read for one query alone (see [`RowIn::Fresh`]).
    Op(String),
}

/// A row entering a node's partition.
enum RowIn<'r> {
    /// Read by the query's own statement (hydration, refill): its client op moves into the
    /// patch, and the row itself needs no shared allocation.
    Fresh(Row),
    Shared(&'r Arc<Row>),
}

impl RowIn<'_> {
    fn row(&self) -> &Row {
        match self {
            RowIn::Fresh(row) => row,
            RowIn::Shared(row) => row,
        }
    }

    /// The row's key, version and content, moved out of a fresh row (each reference count
    /// change is an atomic operation, and hydration makes several per row).
    fn split(self) -> (Arc<str>, Arc<str>, Content) {
        match self {
            RowIn::Fresh(Row {
                key,
                version,
                json: Some(json),
                ..
            }) => (key, version, Content::Op(json.op)),
            RowIn::Fresh(row) => (row.key.clone(), row.version.clone(), Content::Shared(Arc::new(row))),
            RowIn::Shared(row) => (row.key.clone(), row.version.clone(), Content::Shared(row.clone())),
        }
    }
}

/// What a patch says of a touched row.
enum PatchOp {
    Put,
    Del,
}

impl Touched {
    fn patch_op(&self) -> Option<PatchOp> {
        match (&self.before, &self.after) {
            (None, Some(_)) => Some(PatchOp::Put),
            (Some(b), Some(a)) => (b != a).then_some(PatchOp::Put),
            (Some(_), None) => Some(PatchOp::Del),
            (None, None) => None,
        }
    }
}

/// A group's patch as the view syncer takes it: its version, its rows (client ops encoded) and
/// the errors of the queries that failed.
pub struct Changes {
    pub version: String,
    pub rows: RowChanges,
    pub errors: Vec<(String, String)>,
}

/// Where the patches of a call go: JSON patches ([`Patches`]) or [`Changes`].
trait PatchSink {
    /// The patch of a group the call moved to `version` without any change.
    fn quiet(&mut self, version: &str);
    fn push(&mut self, acc: Acc<'_>, version: &str, db: &Db) -> Result<()>;
}

impl PatchSink for Patches {
    fn quiet(&mut self, version: &str) {
        Acc::write_empty(version, &mut self.buf);
        self.ends.push(self.buf.len());
    }

    fn push(&mut self, acc: Acc<'_>, version: &str, db: &Db) -> Result<()> {
        acc.finish_into(version, db, &mut self.buf);
        self.ends.push(self.buf.len());
        Ok(())
    }
}

impl PatchSink for Vec<Changes> {
    fn quiet(&mut self, version: &str) {
        self.push(Changes {
            version: version.to_owned(),
            rows: RowChanges::default(),
            errors: Vec::new(),
        });
    }

    fn push(&mut self, acc: Acc<'_>, version: &str, db: &Db) -> Result<()> {
        let changes = acc.finish_changes(version, db)?;
        Vec::push(self, changes);
        Ok(())
    }
}

/// Parent rows by (lookup statement, correlation value).
type ParentCache = FastMap<(Arc<str>, PartKey), Arc<Vec<Arc<Row>>>>;

/// A patch being accumulated for one group in one call.
struct Acc<'g> {
    rows: &'g mut FastMap<RowId, GroupRow>,
    /// The engine's record of which queries hold or pin what.
    interest: &'g mut Interest,
    /// Rows that left the group during this call, with their index in `list` (they may come
    /// back before the call ends). Rows still in the group carry their index themselves.
    left: FastMap<RowId, usize>,
    list: Vec<Touched>,
    errors: Vec<(String, String)>,
    /// The group's number for this call (`GroupRow::call`).
    call: u64,
}

/// Records a row still in the group as touched by the call (its version before the call, on
/// the first touch); returns its index in `list`.
fn touch_held(list: &mut Vec<Touched>, call: u64, rid: &RowId, r: &mut GroupRow) -> usize {
    if r.call != call {
        r.call = call;
        r.touched = u32::try_from(list.len()).expect("fewer than 2^32 rows in one patch");
        list.push(Touched {
            rid: rid.clone(),
            before: Some(r.version.clone()),
            after: Some(r.version.clone()),
            row: None,
        });
    }
    r.touched as usize
}

impl<'g> Acc<'g> {
    fn new(rows: &'g mut FastMap<RowId, GroupRow>, interest: &'g mut Interest, call: u64) -> Self {
        Acc {
            rows,
            interest,
            left: FastMap::default(),
            list: Vec::new(),
            errors: Vec::new(),
            call,
        }
    }

    fn reserve(&mut self, additional: usize) {
        self.rows.reserve(additional);
        self.list.reserve(additional);
    }

    /// A query starts holding the row (at `version`, its newest content `row`).
    fn add_ref(&mut self, rid: RowId, version: Arc<str>, row: Content) {
        use std::collections::hash_map::Entry as E;
        let Acc { rows, list, left, call, .. } = self;
        match rows.entry(rid) {
            E::Occupied(mut o) => {
                let r = o.get_mut();
                r.refs += 1;
                if r.version != version {
                    let rid = o.key().clone();
                    let r = o.get_mut();
                    let i = touch_held(list, *call, &rid, r);
                    r.version = version.clone();
                    list[i].after = Some(version);
                    list[i].row = Some(row);
                }
            }
            E::Vacant(v) => {
                let back = if left.is_empty() { None } else { left.remove(v.key()) };
                let i = back.unwrap_or_else(|| {
                    list.push(Touched {
                        rid: v.key().clone(),
                        before: None,
                        after: None,
                        row: None,
                    });
                    list.len() - 1
                });
                list[i].after = Some(version.clone());
                list[i].row = Some(row);
                v.insert(GroupRow {
                    refs: 1,
                    touched: u32::try_from(i).expect("fewer than 2^32 rows in one patch"),
                    call: *call,
                    version,
                });
            }
        }
    }

    /// A query stops holding the row.
    fn drop_ref(&mut self, rid: &RowId) {
        let Some(r) = self.rows.get_mut(rid) else { return };
        r.refs -= 1;
        if r.refs == 0 {
            let i = touch_held(&mut self.list, self.call, rid, r);
            self.list[i].after = None;
            self.rows.remove(rid);
            self.left.insert(rid.clone(), i);
        }
    }

    /// A held row was read again (at the call's version).
    fn update(&mut self, rid: &RowId, version: Arc<str>, row: Content) {
        if let Some(r) = self.rows.get_mut(rid) {
            if r.version != version {
                let i = touch_held(&mut self.list, self.call, rid, r);
                self.list[i].after = Some(version.clone());
                self.list[i].row = Some(row);
                r.version = version;
            }
        }
    }

    /// The patch as [`Changes`]: each put's client op written from the row's JSON, keys made
    /// canonical (see `fetch::canonical_key`).
    fn finish_changes(mut self, version: &str, db: &Db) -> Result<Changes> {
        let list = std::mem::take(&mut self.list);
        let mut rows = Vec::with_capacity(list.len());
        // Per table id (looked up once, not per row).
        let tables: Vec<Option<&Arc<TableInfo>>> = if list.is_empty() {
            Vec::new()
        } else {
            db.table_names.iter().map(|n| db.tables.get(n.as_ref())).collect()
        };
        for t in list {
            let op = t.patch_op();
            let Touched { rid: (tid, key), after, row, .. } = t;
            let name = &db.table_names[tid as usize];
            let table = tables[tid as usize];
            // The engine writes the key of a one-column primary key as `{"<column>":<value>}`,
            // compact: canonical already.
            let key = match table {
                Some(table) if table.pk.len() == 1 => key,
                _ => canonical_key_of(&key)?,
            };
            match op {
                Some(PatchOp::Put) => {
                    let (Some(row), Some(table), Some(version)) = (row, table, after) else {
                        continue;
                    };
                    let op = match row {
                        Content::Op(op) => op,
                        // A row read for this call alone gives its op away.
                        Content::Shared(row) => match Arc::try_unwrap(row) {
                            Ok(Row { json: Some(json), .. }) => json.op,
                            Ok(row) => table.put_op(&row),
                            Err(row) => table.put_op(&row),
                        },
                    };
                    rows.push(RowOp {
                        table: name.clone(),
                        key,
                        row_version: Some(version),
                        op,
                    });
                }
                Some(PatchOp::Del) => rows.push(RowOp::deleted(name.clone(), key)),
                None => {}
            }
        }
        Ok(Changes {
            version: version.to_owned(),
            rows: RowChanges::of_unique(rows),
            errors: std::mem::take(&mut self.errors),
        })
    }

    /// Appends the patch of a call that changed nothing.
    fn write_empty(version: &str, out: &mut String) {
        out.push_str("{\"version\":");
        write_json_str(out, version);
        out.push_str(",\"ops\":[],\"queryErrors\":{}}");
    }

    /// Appends the patch to `out` (several groups' patches may share one buffer).
    fn finish_into(mut self, version: &str, db: &Db, out: &mut String) {
        let list = std::mem::take(&mut self.list);
        // Per table id: its info and `,"table":"<name>"` (written once, not per op).
        let tables: Vec<(Option<&Arc<TableInfo>>, String)> = if list.is_empty() {
            Vec::new()
        } else {
            db.table_names
                .iter()
                .map(|n| {
                    let mut quoted = String::from(",\"table\":");
                    write_json_str(&mut quoted, n);
                    (db.tables.get(n.as_ref()), quoted)
                })
                .collect()
        };
        // One allocation for the whole patch (large hydrations are megabytes).
        let capacity: usize = list
            .iter()
            .map(|t| {
                let content = match &t.row {
                    None => 0,
                    Some(Content::Op(op)) => op.len(),
                    Some(Content::Shared(r)) => r.json.as_ref().map_or(256, |j| j.op.len()),
                };
                96 + t.rid.1.len() + content + t.after.as_ref().map_or(0, |v| v.len())
            })
            .sum();
        out.reserve(64 + capacity + self.errors.iter().map(|(h, m)| h.len() + m.len() + 8).sum::<usize>());
        out.push_str("{\"version\":");
        write_json_str(out, version);
        out.push_str(",\"ops\":[");
        let mut first = true;
        for t in &list {
            let (table, table_name) = &tables[t.rid.0 as usize];
            match t.patch_op() {
                Some(PatchOp::Put) => {
                    let (Some(row), Some(table), Some(version)) = (&t.row, table, &t.after) else {
                        continue;
                    };
                    if !first {
                        out.push(',');
                    }
                    first = false;
                    out.push_str("{\"op\":\"put\"");
                    out.push_str(table_name);
                    out.push_str(",\"value\":");
                    match row {
                        Content::Op(op) => out.push_str(table.op_value(op)),
                        Content::Shared(row) => table.write_row_json(out, row),
                    }
                    out.push_str(",\"rowKey\":");
                    out.push_str(&t.rid.1);
                    out.push_str(",\"rowVersion\":");
                    write_json_str(out, version);
                    out.push('}');
                }
                Some(PatchOp::Del) => {
                    if !first {
                        out.push(',');
                    }
                    first = false;
                    out.push_str("{\"op\":\"del\"");
                    out.push_str(table_name);
                    out.push_str(",\"rowKey\":");
                    out.push_str(&t.rid.1);
                    out.push('}');
                }
                None => {}
            }
        }
        out.push_str("],\"queryErrors\":{");
        for (i, (hash, message)) in self.errors.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            write_json_str(out, hash);
            out.push(':');
            write_json_str(out, message);
        }
        out.push_str("}}");
    }
}

/// What one call reads at the replica's current version, shared by every group it advances.
struct Ctx<'a> {
    db: &'a Db,
    /// Rows at the call's version by (table id, key); `None`: the row does not exist.
    rows: RefCell<FastMap<RowId, Option<Arc<Row>>>>,
    parents: RefCell<ParentCache>,
    counters: RefCell<Counters>,
    /// The (empty) partition key of roots.
    root_key: PartKey,
}

impl<'a> Ctx<'a> {
    fn new(db: &'a Db) -> Self {
        Ctx {
            db,
            rows: RefCell::default(),
            parents: RefCell::default(),
            counters: RefCell::default(),
            root_key: Arc::from(Vec::new()),
        }
    }

    /// Rows read from the replica so far in this call (the work measure of `advance_within`).
    fn rows_read(&self) -> u64 {
        let c = self.counters.borrow();
        c.rows_read + c.row_reads
    }

    /// Runs a statement returning rows of `table`; `needed`, `known`: see
    /// `TableInfo::read_row_with`.
    fn query_rows(
        &self,
        table: &TableInfo,
        stmt: &Stmt,
        params: Vec<Val>,
        needed: Option<&[bool]>,
        known: Option<&dyn Fn(&str) -> Option<Arc<str>>>,
    ) -> Result<Vec<Row>> {
        let mut s = self.db.conn.prepare_cached(&stmt.sql)?;
        let mut cache = ReadCache::default();
        let mut rows = s.query(params_from_iter(params))?;
        let mut out = std::mem::take(&mut *self.db.spare_rows.borrow_mut());
        while let Some(r) = rows.next()? {
            out.push(table.read_row_with(r, needed, &mut cache, known)?);
        }
        self.counters.borrow_mut().rows_read += out.len() as u64;
        Ok(out)
    }

    /// Gives back a buffer of `query_rows`, emptied.
    fn recycle(&self, mut rows: Vec<Row>) {
        rows.clear();
        let mut spare = self.db.spare_rows.borrow_mut();
        if rows.capacity() > spare.capacity() {
            *spare = rows;
        }
    }

    /// A changed row at the call's version.
    fn changed_row<'r>(&self, change: &'r RowChange) -> Result<Option<&'r Arc<Row>>> {
        if change.row.get().is_none() {
            let row = self.row(change.tid, &change.key)?;
            let _ = change.row.set(row);
        }
        Ok(change.row.get().expect("set above").as_ref())
    }

    /// The row `key` of table `tid` at the call's version.
    fn row(&self, tid: u32, key: &Arc<str>) -> Result<Option<Arc<Row>>> {
        let rid = (tid, key.clone());
        if let Some(r) = self.rows.borrow().get(&rid) {
            return Ok(r.clone());
        }
        let name = &self.db.table_names[tid as usize];
        let row = match self.db.tables.get(name.as_ref()) {
            None => None,
            Some(table) => match table.key_values(key) {
                None => None,
                Some(params) => {
                    self.counters.borrow_mut().row_reads += 1;
                    let mut s = self.db.conn.prepare_cached(&table.by_key_sql)?;
                    s.query_row(params_from_iter(params), |r| table.read_row(r).map(Arc::new))
                        .optional()?
                }
            },
        };
        self.rows.borrow_mut().insert(rid, row.clone());
        Ok(row)
    }

    /// Whether the EXISTS node `child` of `plan` has a row for parent values `parent_vals`.
    fn exists(&self, plan: &Plan, child: usize, parent_vals: &[Val]) -> Result<bool> {
        let node = &plan.nodes[child];
        let link = node.link.as_ref().expect("EXISTS nodes have a link");
        let Some(key) = part_key(parent_vals, &link.parent_cols) else {
            return Ok(false);
        };
        let stmt = node.exists.as_ref().expect("EXISTS nodes have an existence check");
        let link_vals: Vec<Val> = key.iter().map(KeyVal::to_val).collect();
        self.counters.borrow_mut().exists_checks += 1;
        let mut s = self.db.conn.prepare_cached(&stmt.sql)?;
        Ok(s.exists(params_from_iter(stmt.bind(&link_vals, &[], None)))?)
    }

    /// The parent table's rows whose correlation columns equal `key` (EXISTS node `child`).
    fn parents(&self, plan: &Plan, child: usize, key: &PartKey, parent_tid: u32) -> Result<Arc<Vec<Arc<Row>>>> {
        let node = &plan.nodes[child];
        let stmt = node.parents.as_ref().expect("EXISTS nodes have a parent lookup");
        let cache_key = (stmt.sql.clone(), key.clone());
        if let Some(rows) = self.parents.borrow().get(&cache_key) {
            return Ok(rows.clone());
        }
        let parent = &plan.nodes[node.parent.expect("EXISTS nodes have a parent")];
        let link_vals: Vec<Val> = key.iter().map(KeyVal::to_val).collect();
        self.counters.borrow_mut().parent_lookups += 1;
        let rows = self.query_rows(&parent.table, stmt, stmt.bind(&link_vals, &[], None), None, None)?;
        let rows: Arc<Vec<Arc<Row>>> = Arc::new(rows.into_iter().map(Arc::new).collect());
        let mut cache = self.rows.borrow_mut();
        for r in rows.iter() {
            cache
                .entry((parent_tid, r.key.clone()))
                .or_insert_with(|| Some(r.clone()));
        }
        drop(cache);
        self.parents.borrow_mut().insert(cache_key, rows.clone());
        Ok(rows)
    }
}

/// Rows to re-examine per node, in first-seen order.
#[derive(Default)]
struct Dirty {
    keys: Vec<Arc<str>>,
    seen: FastSet<Arc<str>>,
}

impl Dirty {
    fn add(&mut self, key: &Arc<str>) {
        if self.seen.insert(key.clone()) {
            self.keys.push(key.clone());
        }
    }
}

/// Per-partition bookkeeping while a node is advanced.
struct PartWork {
    key: PartKey,
    /// The window was full (`limit` rows) before the call touched it.
    full_before: bool,
    /// Its last row's sort key then.
    bound: Option<Box<[Val]>>,
    candidates: Vec<Arc<Row>>,
}

/// The index of partition `pk` in `work`, recording its state before the call on first touch.
fn touch_part(
    st: &QState,
    np: &super::plan::NodePlan,
    node: usize,
    pk: &PartKey,
    work: &mut Vec<PartWork>,
    index: &mut FastMap<PartKey, usize>,
) -> usize {
    *index.entry(pk.clone()).or_insert_with(|| {
        let keys = &st.nodes[node].parts[pk].keys;
        let full_before = np.limit.is_some_and(|l| keys.len() as u64 >= l);
        let bound = if full_before {
            keys.last().map(|k| Box::from(st.nodes[node].rows[k].sort()))
        } else {
            None
        };
        work.push(PartWork {
            key: pk.clone(),
            full_before,
            bound,
            candidates: Vec::new(),
        });
        work.len() - 1
    })
}

/// Entering rows into a query's state: what [`Run`] does without the call's reader (a `Ctx` is
/// one thread's), so that a second thread may do it while the reader reads (see
/// `Run::acquire_pipelined`).
struct Entering<'r, 'g> {
    plan: &'r Plan,
    st: &'r mut QState,
    acc: &'r mut Acc<'g>,
}

impl Entering<'_, '_> {
    /// The query holds `row` once more (an entry of `node`); returns the key for the entry to
    /// keep (see `Interest::hold`).
    fn inc_row(&mut self, node: usize, key: Arc<str>, version: Arc<str>, row: Content) -> Arc<str> {
        let tid = self.st.tids[node];
        let counted = self.plan.nodes[node].counted;
        if counted {
            let rid = (tid, key);
            if let Some(count) = self.st.rows.get_mut(&rid) {
                *count += 1;
                self.acc.update(&rid, version, row);
                return rid.1;
            }
            let key = self.acc.interest.hold(tid, rid.1, self.st.key);
            self.st.rows.insert((tid, key.clone()), 1);
            self.acc.add_ref((tid, key.clone()), version, row);
            return key;
        }
        let key = self.acc.interest.hold(tid, key, self.st.key);
        self.acc.add_ref((tid, key.clone()), version, row);
        key
    }

    /// Room for `additional` more rows of `node`.
    fn reserve(&mut self, node: usize, additional: usize) {
        let np = &self.plan.nodes[node];
        self.st.nodes[node].rows.reserve(additional);
        if np.synced {
            if np.counted {
                self.st.rows.reserve(additional);
            }
            self.acc.reserve(additional);
            self.acc.interest.reserve_holders(self.st.tids[node], additional);
        }
    }

    /// Records `row` as an entry of `node` with child partitions `links` (the caller holds
    /// them); returns the key the entry is recorded under.
    fn record(&mut self, node: usize, part: &PartKey, row: RowIn<'_>, sort: Box<[Val]>, slot: usize, links: Box<[Option<PartKey>]>) -> Arc<str> {
        let np = &self.plan.nodes[node];
        let (key, version, content) = row.split();
        let sort = np.kept_sort(sort);
        let entry = Entry {
            part: part.clone(),
            version: version.clone(),
            more: (!sort.is_empty() || !links.is_empty()).then(|| Box::new(EntryMore { sort, links })),
            slot: entry_slot(slot),
        };
        let key = if np.synced { self.inc_row(node, key, version, content) } else { key };
        self.st.nodes[node].rows.insert(key.clone(), entry);
        key
    }

    /// Enters the rows of partition `part` of leaf `node`: `first`, then those of `chunks` as
    /// they come (see `Run::acquire_pipelined`). `check`: the node has entries already (the
    /// rows it holds elsewhere are skipped, as in `Run::acquire`). Returns the partition's keys
    /// and `first`, emptied.
    fn enter_leaf(&mut self, node: usize, part: &PartKey, check: bool, mut first: Vec<Row>, chunks: &Receiver<ReadChunk>) -> (Vec<Arc<str>>, Vec<Row>) {
        let plan = self.plan;
        let np = &plan.nodes[node];
        let tid = self.st.tids[node];
        let mut keys = Vec::with_capacity(first.len() * 2);
        let mut enter = |this: &mut Self, row: Row| {
            if check && this.st.nodes[node].rows.contains_key(&row.key) {
                return;
            }
            let sort = if np.limit.is_some() { np.sort_key(&row.vals) } else { Box::default() };
            let slot = keys.len();
            keys.push(this.record(node, part, RowIn::Fresh(row), sort, slot, Box::default()));
        };
        self.reserve(node, first.len());
        for row in first.drain(..) {
            enter(self, row);
        }
        // This thread's own copy of the version rows share (see `ReadChunk`).
        let mut version: Arc<str> = Arc::from("");
        let mut json_len = 0;
        for chunk in chunks {
            self.reserve(node, chunk.rows.len());
            let (mut start, mut cells) = (0, &chunk.cells[..]);
            for ((vals, v), end) in chunk.rows.into_iter().zip(chunk.key_ends) {
                let text = &chunk.keys[start..end];
                start = end;
                let key = np
                    .synced
                    .then(|| self.acc.interest.held_key(tid, text))
                    .flatten()
                    .unwrap_or_else(|| Arc::from(text));
                let read = &chunk.versions[v as usize];
                if **read != *version {
                    version = Arc::from(&**read);
                }
                let json = np.table.op_of_cells(&mut cells, &mut json_len);
                let row = Row {
                    key,
                    vals,
                    version: version.clone(),
                    json: Some(json),
                };
                enter(self, row);
            }
        }
        (keys, first)
    }
}

/// Rows of a partition read by the calling thread for the thread entering them: their values,
/// their columns as stored (`TableInfo::read_cells`: the entering thread writes the client
/// ops, which balances the two threads' work), the keys' texts in one buffer and versions by
/// index, so that each becomes the entering thread's own `Arc` (one shared by both threads
/// would bounce its count between their caches at every row).
#[derive(Default)]
struct ReadChunk {
    rows: Vec<(Box<[Val]>, u32)>,
    cells: Vec<u8>,
    keys: String,
    key_ends: Vec<usize>,
    versions: Vec<Arc<str>>,
}

/// Rows of a leaf partition read by one thread before a second one enters them as the first
/// reads the rest (below this, a thread's start, ~0.05 ms, would cost more than it saves).
const PIPELINE_ROWS: usize = 1024;
/// Rows per chunk handed over, and chunks read ahead at most.
const CHUNK_ROWS: usize = 256;
const CHUNKS_AHEAD: usize = 8;

/// Reads the rest of a partition (after its first rows) into chunks sent to `out`; returns
/// the number of rows read. Stops early if the receiving thread is gone (its join says why).
fn read_chunks(table: &TableInfo, needed: &[bool], mut cursor: rusqlite::Rows<'_>, mut cache: ReadCache, out: &SyncSender<ReadChunk>) -> Result<u64> {
    let mut read = 0;
    let mut chunk = ReadChunk::default();
    while let Some(r) = cursor.next()? {
        let vals = table.read_cells(r, needed, &mut cache, &mut chunk.cells)?;
        let version = table.read_version(r, &mut cache)?;
        if !chunk.versions.last().is_some_and(|v| Arc::ptr_eq(v, &version)) {
            chunk.versions.push(version);
        }
        let v = u32::try_from(chunk.versions.len() - 1).expect("fewer than 2^32 versions in a chunk");
        chunk.rows.push((vals, v));
        chunk.keys.push_str(cache.key());
        chunk.key_ends.push(chunk.keys.len());
        read += 1;
        if chunk.rows.len() == CHUNK_ROWS {
            let cells = chunk.cells.len();
            let full = std::mem::replace(
                &mut chunk,
                ReadChunk {
                    rows: Vec::with_capacity(CHUNK_ROWS),
                    cells: Vec::with_capacity(cells),
                    keys: String::with_capacity(CHUNK_ROWS * cache.key().len().max(16)),
                    key_ends: Vec::with_capacity(CHUNK_ROWS),
                    versions: Vec::new(),
                },
            );
            if out.send(full).is_err() {
                return Ok(read);
            }
        }
    }
    if !chunk.rows.is_empty() {
        let _ = out.send(chunk);
    }
    Ok(read)
}

/// One query's state being worked on.
struct Run<'r, 'a, 'g> {
    ctx: &'r Ctx<'a>,
    plan: &'r Plan,
    st: &'r mut QState,
    acc: &'r mut Acc<'g>,
}

impl<'g> Run<'_, '_, 'g> {
    fn entering(&mut self) -> Entering<'_, 'g> {
        Entering {
            plan: self.plan,
            st: self.st,
            acc: self.acc,
        }
    }

    fn partition_of(&self, node: usize, row: &Row) -> Option<PartKey> {
        match &self.plan.nodes[node].link {
            None => Some(self.ctx.root_key.clone()),
            Some(link) => part_key(&row.vals, &link.child_cols),
        }
    }

    fn dec_row(&mut self, node: usize, key: &Arc<str>) {
        let rid = (self.st.tids[node], key.clone());
        if self.plan.nodes[node].counted {
            let Some(count) = self.st.rows.get_mut(&rid) else { return };
            *count -= 1;
            if *count > 0 {
                return;
            }
            self.st.rows.remove(&rid);
        }
        self.acc.interest.release(&rid, self.st.key);
        self.acc.drop_ref(&rid);
    }

    /// The `Interest` pin of partition `key` of `node`, if it is a `related` node.
    fn partition_reg(&self, node: usize, key: &PartKey) -> Option<Reg> {
        self.st
            .related
            .iter()
            .find(|(n, _)| *n == node)
            .map(|(_, cols)| Reg::Pin(self.st.tids[node], cols.clone(), key.clone()))
    }

    /// Holds (hydrating if needed) the partition `key` of `node`.
    fn acquire(&mut self, node: usize, key: PartKey) -> Result<()> {
        if let Some(p) = self.st.nodes[node].parts.get_mut(&key) {
            p.refs += 1;
            return Ok(());
        }
        let (ctx, plan) = (self.ctx, self.plan);
        let np = &plan.nodes[node];
        let link_vals: Vec<Val> = key.iter().map(KeyVal::to_val).collect();
        ctx.counters.borrow_mut().partition_queries += 1;
        let tid = self.st.tids[node];
        let mut rows = std::mem::take(&mut *ctx.db.spare_rows.borrow_mut());
        if np.limit != Some(0) {
            let mut s = ctx.db.conn.prepare_cached(&np.select.sql)?;
            let mut cursor = s.query(params_from_iter(np.select.bind(&link_vals, &[], np.limit)))?;
            let mut cache = ReadCache::default();
            // Rows of leaves (entering them reads nothing more) past a size are entered by a
            // second thread while the rest is read.
            let first = if np.children.is_empty() { ctx.db.pipeline_rows } else { usize::MAX };
            let interest: &Interest = self.acc.interest;
            let known = |key: &str| interest.held_key(tid, key);
            let known = np.synced.then_some(&known as &dyn Fn(&str) -> Option<Arc<str>>);
            while rows.len() < first {
                let Some(r) = cursor.next()? else { break };
                rows.push(np.table.read_row_with(r, Some(&np.needed), &mut cache, known)?);
            }
            ctx.counters.borrow_mut().rows_read += rows.len() as u64;
            if rows.len() == first {
                return self.acquire_pipelined(node, key, rows, cursor, cache);
            }
        }
        // A row the node already holds in another partition moved there in this advance (its
        // correlation value changed); it is dirty in this node, which is processed after this
        // parent, and will move then.
        let held = &self.st.nodes[node].rows;
        if !held.is_empty() {
            rows.retain(|r| !held.contains_key(&r.key));
        }
        self.entering().reserve(node, rows.len());
        self.st.nodes[node]
            .parts
            .insert(key.clone(), Partition { refs: 1, keys: Vec::new() });
        if let Some(reg) = self.partition_reg(node, &key) {
            self.acc.interest.register(&reg, self.st.key);
        }
        // Limited partitions come in order from SQLite; unlimited ones are sets (see
        // `plan::build_sql`). The partition lists the keys its entries keep (see
        // `Interest::hold`), once they are all in (a failure drops the query's whole state).
        let mut keys = Vec::with_capacity(rows.len());
        for (slot, row) in rows.drain(..).enumerate() {
            let sort = if np.limit.is_some() { np.sort_key(&row.vals) } else { Box::default() };
            keys.push(self.add_entry(node, &key, RowIn::Fresh(row), sort, slot)?);
        }
        ctx.recycle(rows);
        self.st.nodes[node].parts.get_mut(&key).expect("inserted above").keys = keys;
        Ok(())
    }

    /// [`Run::acquire`] of a large leaf partition, `first` its rows read so far: this thread
    /// reads the rest (SQLite's stepping and the rows' client ops) in chunks, a second one
    /// enters them into the query's state as they come. One connection, so one snapshot; the
    /// order rows are entered in is SQLite's, as in `acquire`, so the state and patch are the
    /// same. A read error stops the reading; the rows entered by then are in the query's state,
    /// which the caller drops.
    fn acquire_pipelined(&mut self, node: usize, key: PartKey, first: Vec<Row>, cursor: rusqlite::Rows<'_>, cache: ReadCache) -> Result<()> {
        let (ctx, plan) = (self.ctx, self.plan);
        let np = &plan.nodes[node];
        let check = !self.st.nodes[node].rows.is_empty();
        self.st.nodes[node]
            .parts
            .insert(key.clone(), Partition { refs: 1, keys: Vec::new() });
        if let Some(reg) = self.partition_reg(node, &key) {
            self.acc.interest.register(&reg, self.st.key);
        }
        let mut entering = self.entering();
        let part = &key;
        let (read, (keys, first)) = std::thread::scope(|scope| {
            let (chunks, received) = sync_channel(CHUNKS_AHEAD);
            let worker = scope.spawn(move || entering.enter_leaf(node, part, check, first, &received));
            let read = read_chunks(&np.table, &np.needed, cursor, cache, &chunks);
            drop(chunks);
            (read, worker.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)))
        });
        ctx.recycle(first);
        self.st.nodes[node].parts.get_mut(&key).expect("inserted above").keys = keys;
        ctx.counters.borrow_mut().rows_read += read?;
        Ok(())
    }

    /// Releases one hold of partition `key` of `node`, dropping it with its rows at zero.
    fn release(&mut self, node: usize, key: &PartKey) {
        let Some(p) = self.st.nodes[node].parts.get_mut(key) else {
            return;
        };
        p.refs -= 1;
        if p.refs > 0 {
            return;
        }
        let p = self.st.nodes[node].parts.remove(key).expect("present above");
        if let Some(reg) = self.partition_reg(node, key) {
            self.acc.interest.unregister(&reg, self.st.key);
        }
        for k in &p.keys {
            self.remove_entry(node, k);
        }
    }

    /// Records `row` as an entry of `node` (its position in the partition is the caller's) and
    /// holds its child partitions; returns the key the entry is recorded under.
    fn add_entry(&mut self, node: usize, part: &PartKey, row: RowIn<'_>, sort: Box<[Val]>, slot: usize) -> Result<Arc<str>> {
        let plan = self.plan;
        let np = &plan.nodes[node];
        let links: Box<[Option<PartKey>]> = np
            .children
            .iter()
            .map(|&c| {
                part_key(
                    &row.row().vals,
                    &plan.nodes[c].link.as_ref().expect("children have links").parent_cols,
                )
            })
            .collect();
        let key = self.entering().record(node, part, row, sort, slot, links.clone());
        for (i, &child) in np.children.iter().enumerate() {
            if let Some(k) = &links[i] {
                self.acquire(child, k.clone())?;
            }
        }
        Ok(key)
    }

    /// Forgets the entry `key` of `node` (not its place in the partition's list) and releases
    /// its child partitions.
    fn remove_entry(&mut self, node: usize, key: &Arc<str>) {
        let Some(entry) = self.st.nodes[node].rows.remove(key) else {
            return;
        };
        let plan = self.plan;
        let np = &plan.nodes[node];
        if np.synced {
            self.dec_row(node, key);
        }
        for (i, &child) in np.children.iter().enumerate() {
            if let Some(k) = &entry.links()[i] {
                self.release(child, k);
            }
        }
    }

    /// Where a sort key is (`Ok`) or belongs (`Err`) in a partition's list.
    fn position(&self, node: usize, part: &PartKey, sort: &[Val]) -> std::result::Result<usize, usize> {
        let ns = &self.st.nodes[node];
        let np = &self.plan.nodes[node];
        let keys = &ns.parts[part].keys;
        keys.binary_search_by(|k| np.cmp_sort(ns.rows[k].sort(), sort))
    }

    /// Removes `key` from its partition's list and forgets its entry.
    fn remove_row(&mut self, node: usize, key: &Arc<str>) {
        let Some(entry) = self.st.nodes[node].rows.get(key) else {
            return;
        };
        let part = entry.part.clone();
        if self.st.nodes[node].parts.contains_key(&part) {
            if self.plan.nodes[node].limit.is_some() {
                let sort: Box<[Val]> = Box::from(entry.sort());
                let pos = match self.position(node, &part, &sort) {
                    Ok(i) => Some(i),
                    Err(_) => self.st.nodes[node].parts[&part].keys.iter().position(|k| k == key),
                };
                if let Some(i) = pos {
                    self.st.nodes[node].parts.get_mut(&part).expect("present").keys.remove(i);
                }
            } else {
                let slot = entry.slot as usize;
                let ns = &mut self.st.nodes[node];
                let keys = &mut ns.parts.get_mut(&part).expect("present").keys;
                if keys.get(slot) == Some(key) {
                    keys.swap_remove(slot);
                    if let Some(moved) = keys.get(slot).cloned() {
                        ns.rows.get_mut(&moved).expect("listed keys have entries").slot = entry_slot(slot);
                    }
                }
            }
        }
        self.remove_entry(node, key);
    }

    fn insert_row(&mut self, node: usize, part: &PartKey, row: &Arc<Row>, sort: &[Val]) -> Result<()> {
        let pos = if self.plan.nodes[node].limit.is_some() {
            match self.position(node, part, sort) {
                Ok(i) | Err(i) => i,
            }
        } else {
            self.st.nodes[node].parts[part].keys.len()
        };
        self.st.nodes[node]
            .parts
            .get_mut(part)
            .expect("present")
            .keys
            .insert(pos, row.key.clone());
        self.add_entry(node, part, RowIn::Shared(row), sort.into(), pos).map(drop)
    }

    /// A row that stays in its partition: new position, version, child partitions.
    fn update_row(&mut self, node: usize, part: &PartKey, row: &Arc<Row>, sort: Box<[Val]>) -> Result<()> {
        let plan = self.plan;
        let np = &plan.nodes[node];
        // Unlimited nodes keep no order (see `NodePlan::kept_sort`).
        let old_sort: Box<[Val]> = Box::from(self.st.nodes[node].rows[&row.key].sort());
        if np.limit.is_some() && np.cmp_sort(&old_sort, &sort).is_ne() {
            if let Ok(i) = self.position(node, part, &old_sort) {
                self.st.nodes[node].parts.get_mut(part).expect("present").keys.remove(i);
            }
            self.st.nodes[node].rows.get_mut(&row.key).expect("present").more().sort = sort.clone();
            let pos = match self.position(node, part, &sort) {
                Ok(i) | Err(i) => i,
            };
            self.st.nodes[node]
                .parts
                .get_mut(part)
                .expect("present")
                .keys
                .insert(pos, row.key.clone());
        }
        let entry = self.st.nodes[node].rows.get_mut(&row.key).expect("present");
        if entry.version != row.version {
            entry.version = row.version.clone();
            if np.synced {
                let rid = (self.st.tids[node], row.key.clone());
                self.acc.update(&rid, row.version.clone(), Content::Shared(row.clone()));
            }
        }
        let new_links: Vec<Option<PartKey>> = np
            .children
            .iter()
            .map(|&c| {
                part_key(
                    &row.vals,
                    &plan.nodes[c].link.as_ref().expect("children have links").parent_cols,
                )
            })
            .collect();
        for (i, &child) in np.children.iter().enumerate() {
            let old = self.st.nodes[node].rows[&row.key].links()[i].clone();
            if old != new_links[i] {
                self.st.nodes[node].rows.get_mut(&row.key).expect("present").more().links[i] = new_links[i].clone();
                if let Some(k) = &new_links[i] {
                    self.acquire(child, k.clone())?;
                }
                if let Some(k) = &old {
                    self.release(child, k);
                }
            }
        }
        Ok(())
    }

    /// Whether `row` (in one of `node`'s partitions by correlation) passes `start` and `where`.
    fn member(&self, node: usize, row: &Row, sort: &[Val]) -> Result<bool> {
        let np = &self.plan.nodes[node];
        if !np.after_start(sort) {
            return Ok(false);
        }
        let (ctx, plan) = (self.ctx, self.plan);
        np.cond.eval(&row.vals, &mut |child| ctx.exists(plan, child, &row.vals))
    }

    // --- advancing ---------------------------------------------------------------------------

    /// Marks `key` dirty in `node` if the node holds it or its current value falls into one of
    /// the node's partitions.
    fn mark(&self, node: usize, key: &Arc<str>, row: Option<&Arc<Row>>, dirty: &mut Vec<Dirty>) {
        let ns = &self.st.nodes[node];
        let relevant = ns.rows.contains_key(key)
            || row.is_some_and(|r| {
                // Not held: only a row that may enter one of the node's partitions matters.
                let np = &self.plan.nodes[node];
                let in_partition = match &np.link {
                    None => !ns.parts.is_empty(),
                    Some(link) => part_key(&r.vals, &link.child_cols).is_some_and(|pk| ns.parts.contains_key(&pk)),
                };
                in_partition
                    && (np.start.is_none() || np.after_start(&np.sort_key(&r.vals)))
                    && np.cond.maybe(&r.vals) != Some(false)
            });
        if relevant {
            if dirty.is_empty() {
                dirty.resize_with(self.plan.nodes.len(), Dirty::default);
            }
            dirty[node].add(key);
        }
    }

    /// Collects the rows to re-examine for these changed rows; `false` when the query must be
    /// re-hydrated instead (an unknown old value under a `NOT EXISTS`).
    fn collect(&mut self, changes: &[(usize, RowChange)], dirty: &mut Vec<Dirty>) -> Result<bool> {
        let plan = self.plan;
        for (_, change) in changes {
            let Some(nodes) = plan.nodes_reading(change.tid) else {
                continue;
            };
            let key = &change.key;
            let row = self.ctx.changed_row(change)?;
            for &x in nodes {
                self.mark(x, key, row, dirty);
                if let NodeKind::Exists { .. } = plan.nodes[x].kind {
                    let mut values: Vec<PartKey> = Vec::new();
                    match self.st.nodes[x].rows.get(key) {
                        Some(e) => values.push(e.part.clone()),
                        None if plan.nodes[x].neg_chain => return Ok(false),
                        None => {}
                    }
                    if let Some(r) = row {
                        if let Some(pk) = self.partition_of(x, r) {
                            if plan.nodes[x].cond.maybe(&r.vals) != Some(false) && !values.contains(&pk) {
                                values.push(pk);
                            }
                        }
                    }
                    for v in &values {
                        self.propagate(x, v, dirty)?;
                    }
                }
            }
        }
        Ok(true)
    }

    /// The existence of EXISTS node `x`'s rows for correlation value `value` may have changed:
    /// the parent rows with that value must be re-examined, and so on up the EXISTS chain.
    fn propagate(&self, x: usize, value: &PartKey, dirty: &mut Vec<Dirty>) -> Result<()> {
        let plan = self.plan;
        let p = plan.nodes[x].parent.expect("EXISTS nodes have a parent");
        let parents = self.ctx.parents(plan, x, value, self.st.tids[p])?;
        for row in parents.iter() {
            self.mark(p, &row.key, Some(row), dirty);
            if let NodeKind::Exists { .. } = plan.nodes[p].kind {
                if let Some(pk) = self.partition_of(p, row) {
                    self.propagate(p, &pk, dirty)?;
                }
            }
        }
        Ok(())
    }

    /// Re-examines the dirty rows of `node` (all of its ancestors are done).
    fn process(&mut self, node: usize, keys: &[Arc<str>]) -> Result<()> {
        let plan = self.plan;
        let np = &plan.nodes[node];
        let tid = self.st.tids[node];
        let mut work: Vec<PartWork> = Vec::new();
        let mut index: FastMap<PartKey, usize> = FastMap::default();
        for key in keys {
            let row = self.ctx.row(tid, key)?;
            let old = self.st.nodes[node].rows.get(key).map(|e| e.part.clone());
            let new = row
                .as_ref()
                .and_then(|r| self.partition_of(node, r))
                .filter(|pk| self.st.nodes[node].parts.contains_key(pk));
            if let Some(pk) = &old {
                touch_part(self.st, np, node, pk, &mut work, &mut index);
            }
            if let Some(pk) = &new {
                let i = touch_part(self.st, np, node, pk, &mut work, &mut index);
                work[i].candidates.push(row.clone().expect("a partition implies a row"));
            }
            if old.is_some() && old != new {
                self.remove_row(node, key);
            }
        }
        for w in work {
            if !self.st.nodes[node].parts.contains_key(&w.key) {
                continue;
            }
            for row in &w.candidates {
                let sort = np.sort_key(&row.vals);
                let beyond = w.full_before && w.bound.as_ref().map_or(true, |b| np.cmp_sort(&sort, b).is_gt());
                let member = !beyond && self.member(node, row, &sort)?;
                let present = self.st.nodes[node].rows.contains_key(&row.key);
                match (present, member) {
                    (true, true) => self.update_row(node, &w.key, row, sort)?,
                    (true, false) => self.remove_row(node, &row.key),
                    (false, true) => self.insert_row(node, &w.key, row, &sort)?,
                    (false, false) => {}
                }
            }
            if let Some(limit) = np.limit {
                let len = self.st.nodes[node].parts[&w.key].keys.len() as u64;
                if len > limit {
                    let tail: Vec<Arc<str>> = self.st.nodes[node]
                        .parts
                        .get_mut(&w.key)
                        .expect("present")
                        .keys
                        .split_off(limit as usize);
                    for k in &tail {
                        self.remove_entry(node, k);
                    }
                } else if len < limit && w.full_before {
                    self.refill(node, &w.key, limit - len)?;
                }
            }
        }
        Ok(())
    }

    /// Appends up to `count` rows after the partition's last row.
    fn refill(&mut self, node: usize, part: &PartKey, count: u64) -> Result<()> {
        let np = &self.plan.nodes[node];
        let link_vals: Vec<Val> = part.iter().map(KeyVal::to_val).collect();
        let last = self.st.nodes[node].parts[part]
            .keys
            .last()
            .map(|k| Box::<[Val]>::from(self.st.nodes[node].rows[k].sort()));
        self.ctx.counters.borrow_mut().refills += 1;
        let rows = match &last {
            Some(after) => {
                let stmt = np.refill.as_ref().expect("limited nodes have a refill");
                self.ctx.query_rows(
                    &np.table,
                    stmt,
                    stmt.bind(&link_vals, after, Some(count)),
                    Some(&np.needed),
                    None,
                )?
            }
            None => self.ctx.query_rows(
                &np.table,
                &np.select,
                np.select.bind(&link_vals, &[], Some(count)),
                Some(&np.needed),
                None,
            )?,
        };
        for row in rows {
            if self.st.nodes[node].rows.contains_key(&row.key) {
                continue;
            }
            let sort = np.sort_key(&row.vals);
            let key = self.add_entry(node, part, RowIn::Fresh(row), sort, 0)?;
            self.st.nodes[node].parts.get_mut(part).expect("present").keys.push(key);
        }
        Ok(())
    }
}

impl QState {
    fn new(plan: &Plan, key: u64) -> QState {
        QState {
            key,
            nodes: plan.nodes.iter().map(|_| NodeState::default()).collect(),
            tids: plan.nodes.iter().map(|n| n.table.id).collect(),
            rows: FastMap::default(),
            direct: (0..plan.nodes.len())
                .filter(|&n| plan.nodes[n].synced && !plan.nodes[n].counted)
                .collect(),
            regs: plan.regs.clone(),
            related: plan
                .nodes
                .iter()
                .enumerate()
                .filter(|(_, n)| n.kind == NodeKind::Related && n.synced)
                .map(|(i, n)| (i, n.link.as_ref().expect("related nodes have links").child_cols.clone().into()))
                .collect(),
        }
    }
}

/// Hydrates `plan` from scratch.
fn hydrate(ctx: &Ctx<'_>, plan: &Plan, acc: &mut Acc<'_>, key: u64) -> Result<QState> {
    let mut st = QState::new(plan, key);
    ctx.counters.borrow_mut().hydrations += 1;
    for reg in &st.regs {
        acc.interest.register(reg, key);
    }
    let mut run = Run {
        ctx,
        plan,
        st: &mut st,
        acc,
    };
    let result = plan
        .roots
        .iter()
        .try_for_each(|&root| run.acquire(root, ctx.root_key.clone()));
    match result {
        Ok(()) => Ok(st),
        Err(e) => {
            // What the partial state holds goes back (its rows leave the group).
            drop_state(st, acc);
            Err(e)
        }
    }
}

/// Drops a query's rows from the group.
fn drop_state(st: QState, acc: &mut Acc<'_>) {
    unregister_state(&st, acc.interest);
    // Sorted, so that patches do not depend on hash order.
    let mut rids: Vec<RowId> = st.rows.into_keys().collect();
    for &n in &st.direct {
        rids.extend(st.nodes[n].rows.keys().map(|k| (st.tids[n], k.clone())));
    }
    rids.sort_unstable();
    for rid in &rids {
        acc.interest.release(rid, st.key);
        acc.drop_ref(rid);
    }
}

/// Undoes what a query's state registered in the engine's `Interest` (its held rows are the
/// group's: see `Acc`).
fn unregister_state(st: &QState, interest: &mut Interest) {
    for reg in &st.regs {
        interest.unregister(reg, st.key);
    }
    for (node, cols) in &st.related {
        for key in st.nodes[*node].parts.keys() {
            interest.unregister(&Reg::Pin(st.tids[*node], cols.clone(), key.clone()), st.key);
        }
    }
}

/// Undoes everything a query's state registered, held rows included (its group is dropped).
fn forget_state(st: &QState, interest: &mut Interest) {
    unregister_state(st, interest);
    for rid in st.rows.keys() {
        interest.release(rid, st.key);
    }
    for &n in &st.direct {
        for k in st.nodes[n].rows.keys() {
            interest.release(&(st.tids[n], k.clone()), st.key);
        }
    }
}

/// Advances one hydrated query by the changed rows (or re-hydrates it).
fn advance_query(
    ctx: &Ctx<'_>,
    plan: &Plan,
    st: &mut QState,
    acc: &mut Acc<'_>,
    changes: &[(usize, RowChange)],
) -> Result<bool> {
    if !changes.iter().any(|(_, c)| plan.nodes_reading(c.tid).is_some()) {
        return Ok(true);
    }
    // Allocated by the first row marked dirty.
    let mut dirty: Vec<Dirty> = Vec::new();
    let mut run = Run { ctx, plan, st, acc };
    if !run.collect(changes, &mut dirty)? {
        return Ok(false);
    }
    for (node, d) in dirty.iter().enumerate() {
        if !d.keys.is_empty() {
            run.process(node, &d.keys)?;
        }
    }
    Ok(true)
}

fn open(path: &Path) -> Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.execute_batch(
        "PRAGMA query_only = 1; PRAGMA busy_timeout = 5000; PRAGMA mmap_size = 4294967296; PRAGMA cache_size = -32768;",
    )?;
    conn.set_prepared_statement_cache_capacity(1024);
    super::like::register(&conn)?;
    let exists: Option<i64> = conn
        .query_row(
            "SELECT 1 FROM sqlite_master WHERE name = '_zcache_replication_state'",
            [],
            |r| r.get(0),
        )
        .optional()?;
    if exists.is_none() {
        return Err(Error::Schema {
            detail: format!("{} is not a zcache replica", path.display()),
        });
    }
    Ok(conn)
}

impl Db {
    /// Reloads the table specs if the file's schema changed; keeps unchanged tables' infos.
    fn refresh(&mut self) -> Result<()> {
        let cookie: i64 = self.conn.query_row("PRAGMA schema_version", [], |r| r.get(0))?;
        if cookie == self.schema_cookie {
            return Ok(());
        }
        let specs: Vec<String> = {
            let mut s = self.conn.prepare_cached(r#"SELECT "spec" FROM "_zcache_tables""#)?;
            let rows = s.query_map([], |r| r.get::<_, String>(0))?;
            rows.collect::<rusqlite::Result<_>>()?
        };
        let mut tables = HashMap::with_capacity(specs.len());
        for text in specs {
            let spec: TableSpec = serde_json::from_str(&text).map_err(|e| Error::Schema {
                detail: format!("unreadable table spec in the replica: {e}"),
            })?;
            let name = spec.replica_name();
            let min_version: Option<Arc<str>> = self
                .conn
                .prepare_cached(
                    r#"SELECT max("state_version") FROM "_zcache_changes" WHERE "table" = ?1 AND "row_key" IS NULL AND "op" = 'r'"#,
                )?
                .query_row([&name], |r| r.get::<_, Option<String>>(0))?
                .map(|v| Arc::from(v.as_str()));
            let info = match self.tables.get(&name) {
                Some(old) if old.spec == spec && old.min_version == min_version => old.clone(),
                _ => match TableInfo::new(spec) {
                    Ok(mut info) => {
                        info.min_version = min_version;
                        info.id = match self.table_ids.get(&name) {
                            Some(&id) => id,
                            None => {
                                let id = u32::try_from(self.table_names.len()).expect("fewer than 2^32 tables");
                                self.table_ids.insert(name.clone(), id);
                                self.table_names.push(Arc::from(name.as_str()));
                                id
                            }
                        };
                        Arc::new(info)
                    }
                    Err(_) => continue, // No usable key: not queryable (and not replicated).
                },
            };
            tables.insert(name, info);
        }
        let changed = tables.len() != self.tables.len()
            || tables
                .iter()
                .any(|(n, t)| self.tables.get(n).map_or(true, |o| !Arc::ptr_eq(o, t)));
        self.tables = tables;
        self.schema_cookie = cookie;
        if changed {
            self.specs_gen += 1;
        }
        Ok(())
    }

    fn state_version(&self) -> Result<String> {
        Ok(self
            .conn
            .query_row(r#"SELECT "state_version" FROM "_zcache_replication_state""#, [], |r| {
                r.get(0)
            })?)
    }

    /// Runs `f` in one read transaction at the replica's current version.
    fn read<T>(&mut self, f: impl FnOnce(&mut Db, &str) -> Result<T>) -> Result<T> {
        self.conn.execute_batch("BEGIN")?;
        let result = (|| {
            let version = self.state_version()?;
            self.refresh()?;
            f(self, &version)
        })();
        let end = self
            .conn
            .execute_batch(if result.is_ok() { "COMMIT" } else { "ROLLBACK" });
        let value = result?;
        end?;
        Ok(value)
    }

    fn changes_since(&self, version: &str) -> Result<Vec<Change>> {
        let mut s = self.conn.prepare_cached(
            r#"SELECT "state_version", "table", "row_key", "op" FROM "_zcache_changes"
               WHERE "state_version" > ?1 ORDER BY "state_version", "pos""#,
        )?;
        let rows = s.query_map([version], |r| {
            Ok(Change {
                version: r.get(0)?,
                table: r.get(1)?,
                key: r.get::<_, Option<String>>(2)?.map(|k| Arc::from(k.as_str())),
                op: r.get(3)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }
}

/// The patches of one `advance_within` call, one per group advanced, in one buffer.
#[derive(Default)]
pub struct Patches {
    buf: String,
    /// Where each patch ends in `buf`.
    ends: Vec<usize>,
}

impl Patches {
    #[must_use]
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// Each patch's JSON, in group order.
    pub fn iter(&self) -> impl Iterator<Item = &[u8]> + '_ {
        let starts = std::iter::once(0).chain(self.ends.iter().copied());
        starts.zip(&self.ends).map(|(start, &end)| &self.buf.as_bytes()[start..end])
    }
}

/// Statistics of the engine, by name.
pub type Statistics = Vec<(&'static str, u64)>;

impl QueryEngine {
    /// Opens the replica at `path` (read-only use: `PRAGMA query_only`).
    pub fn open(path: &Path) -> Result<QueryEngine> {
        let conn = open(path)?;
        let mut db = Db {
            conn,
            tables: HashMap::new(),
            table_ids: HashMap::new(),
            table_names: Vec::new(),
            schema_cookie: -1,
            specs_gen: 0,
            spare_rows: RefCell::default(),
            pipeline_rows: PIPELINE_ROWS,
        };
        db.read(|_, _| Ok(()))?;
        Ok(QueryEngine {
            db,
            groups: FastMap::default(),
            interest: Interest::default(),
            next_group_id: 0,
            counters: Counters::default(),
        })
    }

    fn merge(&mut self, c: &Counters) {
        let t = &mut self.counters;
        t.hydrations += c.hydrations;
        t.partition_queries += c.partition_queries;
        t.refills += c.refills;
        t.exists_checks += c.exists_checks;
        t.parent_lookups += c.parent_lookups;
        t.row_reads += c.row_reads;
        t.rows_read += c.rows_read;
        t.changes_read += c.changes_read;
        t.advances += c.advances;
        t.rehydrations += c.rehydrations;
        t.query_errors += c.query_errors;
    }

    /// Adds (or replaces) query `hash` of `group`, hydrated at the replica's current version;
    /// the group's other queries are advanced to that version first. Returns the group's patch.
    /// An AST that does not parse or compile raises [`Error::InvalidQuery`] and changes nothing.
    pub fn add_query(&mut self, group: &str, hash: &str, ast_json: &str) -> Result<Vec<u8>> {
        let mut patches = Patches::default();
        self.add_query_into(group, hash, ast_json, &mut patches)?;
        Ok(patches.buf.into_bytes())
    }

    /// [`QueryEngine::add_query`], the patch as [`Changes`].
    pub fn add_query_changes(&mut self, group: &str, hash: &str, ast_json: &str) -> Result<Changes> {
        let mut out = Vec::with_capacity(1);
        self.add_query_into(group, hash, ast_json, &mut out)?;
        Ok(out.pop().expect("one patch"))
    }

    fn add_query_into(&mut self, group: &str, hash: &str, ast_json: &str, sink: &mut impl PatchSink) -> Result<()> {
        let ast = parse_ast_json(ast_json).map_err(|detail| Error::InvalidQuery { detail })?;
        let QueryEngine {
            db,
            groups,
            interest,
            next_group_id,
            ..
        } = self;
        let ((), counters) = db.read(|db, version| {
            let plan = Arc::new(compile(&ast, &db.tables)?);
            let ctx = Ctx::new(db);
            let g = groups
                .entry(group.to_owned())
                .or_insert_with(|| Group::new(next_group_id, version, db.specs_gen));
            let set = if g.version.as_str() < version {
                ChangeSet::read(db, &g.version, version)?
            } else {
                ChangeSet::empty(version)
            };
            let call = g.begin_call();
            let mut acc = Acc::new(&mut g.rows, interest, call);
            advance_group(
                &ctx,
                &mut g.queries,
                &mut g.version,
                &mut g.specs_gen,
                &mut acc,
                &set,
                Examine::All,
            )?;
            if let Some(old) = g.queries.remove(hash) {
                if let Some(st) = old.state {
                    drop_state(st, &mut acc);
                }
            }
            let key = query_key(g.id, g.next_query);
            g.next_query = g.next_query.wrapping_add(1);
            let mut query = Query {
                key,
                ast,
                plan: Some(plan.clone()),
                state: None,
                error: None,
            };
            match hydrate(&ctx, &plan, &mut acc, key) {
                Ok(st) => query.state = Some(st),
                Err(e) => fail(&mut query, hash, &e, &mut acc, &ctx),
            }
            g.queries.insert(hash.to_owned(), query);
            sink.push(acc, &g.version, db)?;
            Ok(((), ctx.counters.into_inner()))
        })?;
        self.merge(&counters);
        Ok(())
    }

    /// Removes query `hash` of `group`; returns the group's patch (the rows only it held are
    /// deleted). The group stays at its version.
    pub fn remove_query(&mut self, group: &str, hash: &str) -> Result<Vec<u8>> {
        let mut patches = Patches::default();
        self.remove_query_into(group, hash, &mut patches)?;
        Ok(patches.buf.into_bytes())
    }

    /// [`QueryEngine::remove_query`], the patch as [`Changes`].
    pub fn remove_query_changes(&mut self, group: &str, hash: &str) -> Result<Changes> {
        let mut out = Vec::with_capacity(1);
        self.remove_query_into(group, hash, &mut out)?;
        Ok(out.pop().expect("one patch"))
    }

    fn remove_query_into(&mut self, group: &str, hash: &str, sink: &mut impl PatchSink) -> Result<()> {
        let g = self.groups.get_mut(group).ok_or_else(|| unknown_group(group))?;
        let call = g.begin_call();
        let mut acc = Acc::new(&mut g.rows, &mut self.interest, call);
        if let Some(q) = g.queries.remove(hash) {
            if let Some(st) = q.state {
                drop_state(st, &mut acc);
            }
        }
        sink.push(acc, &g.version, &self.db)
    }

    /// Advances each group to the replica's current version; one patch per group, in order.
    /// Unknown groups are created empty at that version.
    pub fn advance(&mut self, group_names: &[String]) -> Result<Vec<(String, Vec<u8>)>> {
        let names: Vec<&str> = group_names.iter().map(String::as_str).collect();
        let patches = self.advance_within(&names, u64::MAX)?;
        Ok(group_names.iter().cloned().zip(patches.iter().map(<[u8]>::to_vec)).collect())
    }

    /// Advances groups in order, as [`QueryEngine::advance`] does, until `budget` units of work
    /// are spent: one per group, plus one per row read from the replica and per row put or
    /// deleted in its patch. The group that reaches the budget finishes; the first group always
    /// advances. Returns the patches of the groups advanced, a prefix of `group_names`; the
    /// others keep their version, for a later call (so one caller can interleave other work,
    /// or other groups, between slices).
    pub fn advance_within(&mut self, group_names: &[&str], budget: u64) -> Result<Patches> {
        let mut patches = Patches::default();
        patches.ends.reserve(group_names.len());
        self.advance_into(group_names, budget, &mut patches)?;
        Ok(patches)
    }

    /// [`QueryEngine::advance`], each group's patch as [`Changes`].
    pub fn advance_changes(&mut self, group_names: &[&str]) -> Result<Vec<Changes>> {
        let mut out = Vec::with_capacity(group_names.len());
        self.advance_into(group_names, u64::MAX, &mut out)?;
        Ok(out)
    }

    /// Advances groups into `sink`; see [`QueryEngine::advance_within`].
    fn advance_into(&mut self, group_names: &[&str], budget: u64, sink: &mut impl PatchSink) -> Result<()> {
        let QueryEngine {
            db,
            groups,
            interest,
            next_group_id,
            ..
        } = self;
        let ((), counters) = db.read(|db, version| {
            let ctx = Ctx::new(db);
            // The change log is read when the first group behind needs it, from that group's
            // version (groups usually share one); a group further behind makes it read once
            // more, from the oldest version among the groups left.
            let mut set = ChangeSet::empty(version);
            let mut candidates = FastSet::default();
            let mut candidate_groups: FastSet<u32> = FastSet::default();
            let mut spent: u64 = 0;
            for (i, &name) in group_names.iter().enumerate() {
                if spent >= budget {
                    break;
                }
                let mut g = match groups.get_mut(name) {
                    Some(g) => g,
                    None => groups
                        .entry(name.to_owned())
                        .or_insert_with(|| Group::new(next_group_id, version, db.specs_gen)),
                };
                if g.version.as_str() < set.since.as_str() {
                    let since = if set.since == version {
                        g.version.clone()
                    } else {
                        let oldest = group_names[i..]
                            .iter()
                            .filter_map(|n| groups.get(*n))
                            .map(|g| g.version.as_str())
                            .min()
                            .unwrap_or(version)
                            .to_owned();
                        g = groups.get_mut(name).expect("present above");
                        oldest
                    };
                    set = ChangeSet::read(db, &since, version)?;
                    ctx.counters.borrow_mut().changes_read += set.changes.len() as u64;
                    candidates = set.candidates(&ctx, interest)?;
                    candidate_groups = candidates.iter().map(|&k| group_of(k)).collect();
                }
                let read_before = ctx.rows_read();
                let examine = candidate_groups.contains(&g.id).then_some(&candidates);
                let call = g.begin_call();
                let mut acc = Acc::new(&mut g.rows, interest, call);
                advance_group(
                    &ctx,
                    &mut g.queries,
                    &mut g.version,
                    &mut g.specs_gen,
                    &mut acc,
                    &set,
                    Examine::Candidates(examine),
                )?;
                spent = spent
                    .saturating_add(1 + ctx.rows_read() - read_before)
                    .saturating_add(acc.list.len() as u64);
                if acc.list.is_empty() && acc.errors.is_empty() && g.version == version {
                    sink.quiet(version);
                } else {
                    sink.push(acc, &g.version, db)?;
                }
            }
            Ok(((), ctx.counters.into_inner()))
        })?;
        self.merge(&counters);
        Ok(())
    }

    /// For benchmarks: runs a read-only `SELECT` through the engine's connection in its own
    /// read transaction and reads every column of every row, as the engine's own statements
    /// do, without building anything from them. Returns the row count.
    pub fn select_baseline(&mut self, sql: &str, params: &[Val]) -> Result<u64> {
        self.db.read(|db, _| {
            let mut s = db.conn.prepare_cached(sql)?;
            let columns = s.column_count();
            let mut rows = s.query(params_from_iter(params))?;
            let mut count = 0;
            let mut bytes = 0usize;
            while let Some(r) = rows.next()? {
                for i in 0..columns {
                    bytes += match r.get_ref(i)? {
                        rusqlite::types::ValueRef::Text(t) | rusqlite::types::ValueRef::Blob(t) => t.len(),
                        _ => 1,
                    };
                }
                count += 1;
            }
            std::hint::black_box(bytes);
            Ok(count)
        })
    }

    pub fn remove_group(&mut self, group: &str) {
        let Some(g) = self.groups.remove(group) else { return };
        for q in g.queries.values() {
            if let Some(st) = &q.state {
                forget_state(st, &mut self.interest);
            }
        }
    }

    pub fn group_version(&self, group: &str) -> Result<String> {
        Ok(self
            .groups
            .get(group)
            .ok_or_else(|| unknown_group(group))?
            .version
            .clone())
    }

    fn query(&self, group: &str, hash: &str) -> Result<&Query> {
        self.groups
            .get(group)
            .ok_or_else(|| unknown_group(group))?
            .queries
            .get(hash)
            .ok_or_else(|| Error::UnknownQuery {
                detail: format!("client group {group:?} has no query {hash:?}"),
            })
    }

    /// How many distinct rows query `hash` syncs (0 when it failed).
    pub fn query_rows(&self, group: &str, hash: &str) -> Result<u64> {
        Ok(self
            .query(group, hash)?
            .state
            .as_ref()
            .map_or(0, |st| st.synced_rows() as u64))
    }

    /// Why query `hash` failed, if it did.
    pub fn query_error(&self, group: &str, hash: &str) -> Result<Option<String>> {
        Ok(self.query(group, hash)?.error.clone())
    }

    /// `(table, columns)` of the indexes that would let the statements of the registered queries seek
    /// instead of scanning (see "Indexes" in the module docs): per correlated node, its
    /// correlation columns then its order columns; per `EXISTS` node, the parent's correlation
    /// columns (parent lookups); per root, the columns of top-level `=`/`IN`/`IS` conditions,
    /// then its order columns when it has a limit. Indexes the primary key already provides are
    /// left out. The engine does not create them: the replica's writer builds them on request
    /// (`ReplicaWriter::add_indexes`), since it must know about every index (SQLite cannot drop a
    /// column an index uses).
    #[must_use]
    pub fn index_suggestions(&self) -> Vec<(String, Vec<String>)> {
        let mut out: Vec<(String, Vec<String>)> = Vec::new();
        let mut add = |table: &TableInfo, cols: Vec<usize>| {
            let mut names: Vec<String> = Vec::new();
            for c in cols {
                let name = table.cols[c].name.clone();
                if !names.contains(&name) {
                    names.push(name);
                }
            }
            let pk: Vec<&String> = table.pk.iter().map(|&k| &table.cols[k].name).collect();
            let covered = names.iter().zip(&pk).all(|(a, b)| a == *b) && names.len() <= pk.len();
            if !names.is_empty() && !covered && !out.iter().any(|(t, n)| *t == table.name && *n == names) {
                out.push((table.name.clone(), names));
            }
        };
        for g in self.groups.values() {
            for q in g.queries.values() {
                let Some(plan) = &q.plan else { continue };
                for node in &plan.nodes {
                    let order: Vec<usize> = node.order.iter().map(|&(c, _)| c).collect();
                    match &node.link {
                        Some(link) => {
                            let mut cols = link.child_cols.clone();
                            if node.limit.is_some() {
                                cols.extend(&order);
                            }
                            add(&node.table, cols);
                            if let (NodeKind::Exists { .. }, Some(p)) = (node.kind, node.parent) {
                                add(&plan.nodes[p].table, link.parent_cols.clone());
                            }
                        }
                        None => {
                            let mut cols = Vec::new();
                            let conjuncts: Vec<&super::plan::Cond> = match &node.cond {
                                super::plan::Cond::And(cs) => cs.iter().collect(),
                                other => vec![other],
                            };
                            for c in conjuncts {
                                match c {
                                    super::plan::Cond::Cmp {
                                        col,
                                        op: super::plan::CmpOp::Eq,
                                        ..
                                    }
                                    | super::plan::Cond::In { col, not: false, .. }
                                    | super::plan::Cond::Is { col, not: false, .. } => cols.push(*col),
                                    _ => {}
                                }
                            }
                            if node.limit.is_some() {
                                cols.extend(&order);
                            }
                            add(&node.table, cols);
                        }
                    }
                }
            }
        }
        out.sort();
        // An index whose columns start another one's is redundant.
        let all = out.clone();
        out.retain(|(t, cols)| {
            !all.iter()
                .any(|(t2, c2)| t2 == t && c2.len() > cols.len() && c2.starts_with(cols))
        });
        out
    }

    #[must_use]
    pub fn statistics(&self) -> Statistics {
        let mut queries = 0;
        let mut hydrated = 0;
        let mut errored = 0;
        let mut partitions = 0;
        let mut entries = 0;
        let mut query_rows = 0;
        let mut group_rows = 0;
        for g in self.groups.values() {
            group_rows += g.rows.len() as u64;
            for q in g.queries.values() {
                queries += 1;
                if q.error.is_some() {
                    errored += 1;
                }
                if let Some(st) = &q.state {
                    hydrated += 1;
                    query_rows += st.synced_rows() as u64;
                    for n in &st.nodes {
                        partitions += n.parts.len() as u64;
                        entries += n.rows.len() as u64;
                    }
                }
            }
        }
        let c = &self.counters;
        vec![
            ("groups", self.groups.len() as u64),
            ("queries", queries),
            ("hydrated_queries", hydrated),
            ("errored_queries", errored),
            ("partitions", partitions),
            ("entries", entries),
            ("query_rows", query_rows),
            ("group_rows", group_rows),
            ("tables", self.db.tables.len() as u64),
            ("hydrations", c.hydrations),
            ("partition_queries", c.partition_queries),
            ("refills", c.refills),
            ("exists_checks", c.exists_checks),
            ("parent_lookups", c.parent_lookups),
            ("row_reads", c.row_reads),
            ("rows_read", c.rows_read),
            ("changes_read", c.changes_read),
            ("advances", c.advances),
            ("rehydrations", c.rehydrations),
            ("query_errors", c.query_errors),
        ]
    }
}

fn unknown_group(group: &str) -> Error {
    Error::UnknownQuery {
        detail: format!("no client group {group:?}"),
    }
}

/// Marks a query failed: its rows leave the group, the error goes into the patch.
fn fail(query: &mut Query, hash: &str, err: &Error, acc: &mut Acc<'_>, ctx: &Ctx<'_>) {
    if let Some(st) = query.state.take() {
        drop_state(st, acc);
    }
    let message = match err {
        Error::InvalidQuery { detail } => detail.clone(),
        other => other.to_string(),
    };
    ctx.counters.borrow_mut().query_errors += 1;
    query.error = Some(message.clone());
    acc.errors.push((hash.to_owned(), message));
}

/// Which queries of a group an advance examines: all, or the candidates for the changed rows
/// (`None`: no query of the group is one); see `ivm::interest`. Schema changes, whole-table
/// entries and a new replica make every query examined anyway.
#[derive(Clone, Copy)]
enum Examine<'a> {
    All,
    Candidates(Option<&'a FastSet<u64>>),
}

/// Advances a group's queries by the change-log entries of `set` after the group's version, to
/// the set's version.
fn advance_group(
    ctx: &Ctx<'_>,
    queries: &mut BTreeMap<String, Query>,
    group_version: &mut String,
    group_specs: &mut u64,
    acc: &mut Acc<'_>,
    set: &ChangeSet,
    examine: Examine<'_>,
) -> Result<()> {
    let db = ctx.db;
    let version = set.version.as_str();
    let stale_specs = *group_specs != db.specs_gen;
    let replica_reset = group_version.as_str() > version;
    let first = set.first_after(group_version);
    // Nothing the group's queries read changed: only its version moves.
    let whole_after = set.whole.iter().any(|(i, _)| *i >= first);
    let quiet = first == set.changes.len() || (matches!(examine, Examine::Candidates(None)) && !whole_after);
    if quiet && !stale_specs && !replica_reset {
        group_version.clear();
        group_version.push_str(version);
        return Ok(());
    }
    ctx.counters.borrow_mut().advances += 1;
    let rows = &set.rows[set.rows.partition_point(|(i, _)| *i < first)..];
    let whole_tables: Vec<&str> = set
        .whole
        .iter()
        .filter(|(i, _)| *i >= first)
        .map(|(_, t)| t.as_str())
        .collect();
    for (hash, query) in queries.iter_mut() {
        if query.error.is_some() {
            if stale_specs {
                // The schema changed: maybe the query fits now.
                query.error = None;
                match compile(&query.ast, &db.tables).and_then(|plan| {
                    let plan = Arc::new(plan);
                    hydrate(ctx, &plan, acc, query.key).map(|st| (plan, st))
                }) {
                    Ok((plan, st)) => {
                        query.plan = Some(plan);
                        query.state = Some(st);
                    }
                    Err(e) => fail(query, hash, &e, acc, ctx),
                }
            }
            continue;
        }
        let skip = match examine {
            Examine::All => false,
            Examine::Candidates(c) => !stale_specs && !replica_reset && !whole_after && c.map_or(true, |c| !c.contains(&query.key)),
        };
        if skip {
            continue;
        }
        let Some(plan) = query.plan.clone() else { continue };
        let rehydrate = replica_reset
            || (stale_specs && !plan.is_current(&db.tables))
            || whole_tables.iter().any(|t| plan.nodes.iter().any(|n| n.table.name == *t));
        let result = if rehydrate {
            rehydrate_query(ctx, query, acc)
        } else {
            let st = query.state.as_mut().expect("hydrated queries have state");
            match advance_query(ctx, &plan, st, acc, rows) {
                Ok(true) => Ok(()),
                Ok(false) => rehydrate_query(ctx, query, acc),
                Err(e) => Err(e),
            }
        };
        if let Err(e) = result {
            fail(query, hash, &e, acc, ctx);
        }
    }
    group_version.clear();
    group_version.push_str(version);
    *group_specs = db.specs_gen;
    Ok(())
}

/// Recompiles (if the tables changed) and hydrates a query again; the patch gets the difference.
fn rehydrate_query(ctx: &Ctx<'_>, query: &mut Query, acc: &mut Acc<'_>) -> Result<()> {
    ctx.counters.borrow_mut().rehydrations += 1;
    let plan = match &query.plan {
        Some(p) if p.is_current(&ctx.db.tables) => p.clone(),
        _ => Arc::new(compile(&query.ast, &ctx.db.tables)?),
    };
    let old = query.state.take();
    let st = hydrate(ctx, &plan, acc, query.key)?;
    if let Some(old) = old {
        drop_state(old, acc);
    }
    query.plan = Some(plan);
    query.state = Some(st);
    Ok(())
}

/// For tests and diagnostics: the rows of each query, as (table, key) pairs.
#[cfg(test)]
impl QueryEngine {
    fn group_rows(&self, group: &str) -> Vec<(String, String, String)> {
        let mut out: Vec<(String, String, String)> = self.groups[group]
            .rows
            .iter()
            .map(|((tid, key), r)| {
                (
                    self.db.table_names[*tid as usize].to_string(),
                    key.to_string(),
                    r.version.to_string(),
                )
            })
            .collect();
        out.sort();
        out
    }
}

#[allow(dead_code)]
fn _assert_send() {
    fn is_send<T: Send>() {}
    is_send::<QueryEngine>();
}

mod fetch;
use fetch::canonical_key_of;
pub use fetch::{canonical_json, read_patch, PatchView, RecordArrays, RowChanges, RowOp};

#[cfg(test)]
mod tests;

/// Writes a patch's ops in a compact human form (tests).
#[cfg(test)]
fn describe_patch(patch: &[u8]) -> String {
    use std::fmt::Write as _;
    let v: serde_json::Value = serde_json::from_slice(patch).unwrap();
    let mut out = String::new();
    for op in v["ops"].as_array().unwrap() {
        let key = op["rowKey"].to_string();
        let _ = write!(
            out,
            "{} {} {key}; ",
            op["op"].as_str().unwrap(),
            op["table"].as_str().unwrap()
        );
    }
    out
}
