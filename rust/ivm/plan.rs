//! Compiling a parsed AST against the replica's tables into a [`Plan`]: a tree of nodes (the
//! root, `related` subqueries, `EXISTS` subqueries, scalar companions), each with its compiled
//! condition ([`Cond`], evaluated in Rust) and the SQL the engine runs for it (partition
//! hydration, window refill, existence checks, parent lookups).
//!
//! Semantics follow Zero's `zql` (`builder/builder.ts`, `builder/filter.ts`, `ivm/data.ts`):
//!
//! * Every `orderBy` is completed with the table's primary-key columns (ascending) that it does
//!   not name, so orders are total (`completeOrdering`); no `orderBy` means primary-key order.
//! * Comparisons with NULL on either side are false, except `IS` / `IS NOT`, which are
//!   null-safe. A NULL literal on the right of anything but `IS` / `IS NOT` is false.
//! * Zero compares with JavaScript's `===`: a literal of another type than the column never
//!   equals it (`=` is false, `!=` is true for non-NULL values, `IS NOT` is true), and `IN`
//!   lists only match elements of the column's type. Ordering comparisons (`<` …) between
//!   different types throw in Zero; here they are rejected when the query is compiled. Booleans
//!   are stored as 0/1 and compare as such (false < true).
//! * `LIKE` family: see `ivm::like`; only on string columns with a string pattern.
//! * json/jsonb/array columns can only be tested with `IS` / `IS NOT` NULL (Zero compares
//!   parsed JSON by identity) and cannot be ordered by.
//! * `EXISTS` subqueries get `limit 3` (`EXISTS_LIMIT`; `1` for `system: "permissions"`), which
//!   is how many child rows per parent are synced so the client can evaluate the condition
//!   locally; a flipped `EXISTS` (`flip: true`) syncs every matching child (up to the
//!   subquery's own limit), as Zero's `FlippedJoin` does. An `EXISTS` subquery with `limit: 0`
//!   is constant (false; `NOT EXISTS` true). `EXISTS` subqueries must not have `start` or
//!   `related`.
//! * Rows of subqueries with `system: "permissions"` (and everything below them) are never
//!   synced. `hidden` (junction) subqueries are synced like any other.
//! * `related` subqueries with the same alias: the last one wins.
//! * A `scalar` EXISTS whose subquery pins the primary key of its table with `=` literals
//!   (Zero's "simple scalar subquery") also syncs the subquery's own row(s) once per query (its
//!   "companion" rows), as zero-cache does after resolving it to a literal.
//! * Correlated columns must have the same client type (SQLite would otherwise apply column
//!   affinity to the comparison, which Zero's in-memory joins do not).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::pg::schema::TableSpec;
use crate::pg::values::ValueKind;
use crate::replica::layout::{quote_ident, VERSION_COLUMN};
use crate::replica::table::ReplicaTable;

use super::ast::{Ast, Condition, CorrelatedSubquery, Direction, Literal, SimpleOp, System, ValuePos};
use super::interest::Reg;
use super::like::{pattern_problem, LikePattern};
use super::value::{
    write_i64, write_i64_bytes, write_json_bytes, write_json_f64, write_json_str, write_key_json, Row, RowJson, Val,
};

/// Rows of a non-flipped `EXISTS` subquery synced per parent (`EXISTS_LIMIT`).
pub const EXISTS_LIMIT: u64 = 3;
/// The same for `system: "permissions"` subqueries (`PERMISSIONS_EXISTS_LIMIT`).
pub const PERMISSIONS_EXISTS_LIMIT: u64 = 1;

/// Zero's client type of a column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColType {
    String,
    Number,
    Boolean,
    Json,
}

impl ColType {
    fn name(self) -> &'static str {
        match self {
            ColType::String => "string",
            ColType::Number => "number",
            ColType::Boolean => "boolean",
            ColType::Json => "json",
        }
    }
}

#[derive(Debug, Clone)]
pub struct ColInfo {
    pub name: String,
    pub kind: ValueKind,
    pub ty: ColType,
    pub quoted: String,
}

/// A replica table as the engine reads it: its stored columns (the ones the replica keeps, in
/// table order; rows are read as these columns followed by `_0_version`).
#[derive(Debug)]
pub struct TableInfo {
    /// The engine's number for the table (stable for its name while the engine runs).
    pub id: u32,
    pub name: String,
    pub quoted: String,
    pub spec: TableSpec,
    pub cols: Vec<ColInfo>,
    /// Indices into `cols` of the primary-key columns, in key order.
    pub pk: Vec<usize>,
    /// `SELECT <columns> FROM t AS t0 WHERE <pk> = ?…`.
    pub by_key_sql: String,
    /// Per column, `"name":` (with a leading `,` but for the first) for row JSON.
    json_names: Vec<String>,
    /// `{"op":"put","tableName":<name>,"value":`, what a row's client op starts with.
    put_prefix: String,
    /// The same per key column, in key order, for row keys.
    key_names: Vec<String>,
    /// The version of the table's last schema change (its newest `r` change-log entry): rows
    /// older than that count as that version, as Zero's `minRowVersion` does, so that clients
    /// get every row again in its new shape.
    pub min_version: Option<Arc<str>>,
}

impl TableInfo {
    pub fn new(spec: TableSpec) -> Result<TableInfo> {
        let table = ReplicaTable::new(spec.clone())?;
        let cols: Vec<ColInfo> = table
            .stored_columns()
            .map(|(_, c)| ColInfo {
                name: c.name.clone(),
                kind: c.kind.clone(),
                ty: match c.kind.client_type() {
                    Some("boolean") => ColType::Boolean,
                    Some("number") => ColType::Number,
                    Some("json") => ColType::Json,
                    _ => ColType::String,
                },
                quoted: quote_ident(&c.name),
            })
            .collect();
        let pk = spec
            .primary_key
            .iter()
            .map(|k| {
                cols.iter()
                    .position(|c| &c.name == k)
                    .expect("ReplicaTable checked the key")
            })
            .collect::<Vec<_>>();
        let name = table.name.clone();
        let quoted = quote_ident(&name);
        let json_names = cols
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let mut out = String::from(if i > 0 { "," } else { "" });
                write_json_str(&mut out, &c.name);
                out.push(':');
                out
            })
            .collect();
        let mut info = TableInfo {
            id: 0,
            name,
            quoted,
            spec,
            cols,
            pk,
            by_key_sql: String::new(),
            json_names,
            put_prefix: String::new(),
            key_names: Vec::new(),
            min_version: None,
        };
        info.key_names = info
            .pk
            .iter()
            .enumerate()
            .map(|(n, &c)| {
                let mut out = String::from(if n > 0 { "," } else { "" });
                write_json_str(&mut out, &info.cols[c].name);
                out.push(':');
                out
            })
            .collect();
        info.put_prefix.push_str("{\"op\":\"put\",\"tableName\":");
        write_json_str(&mut info.put_prefix, &info.name);
        info.put_prefix.push_str(",\"value\":");
        let predicate: Vec<String> = info
            .pk
            .iter()
            .enumerate()
            .map(|(i, &c)| format!("t0.{} = ?{}", info.cols[c].quoted, i + 1))
            .collect();
        info.by_key_sql = format!(
            "SELECT {} FROM {} AS t0 WHERE {}",
            info.select_list("t0"),
            info.quoted,
            predicate.join(" AND ")
        );
        Ok(info)
    }

    #[must_use]
    pub fn col(&self, name: &str) -> Option<usize> {
        self.cols.iter().position(|c| c.name == name)
    }

    /// `alias."c1", …, alias."_0_version"`.
    #[must_use]
    pub fn select_list(&self, alias: &str) -> String {
        let mut out = String::new();
        for c in &self.cols {
            let _ = write!(out, "{alias}.{}, ", c.quoted);
        }
        let _ = write!(out, "{alias}.{}", quote_ident(VERSION_COLUMN));
        out
    }

    /// Reads a row selected with [`TableInfo::select_list`] (every column).
    pub fn read_row(&self, r: &rusqlite::Row<'_>) -> rusqlite::Result<Row> {
        self.read_row_with(r, None, &mut ReadCache::default(), None)
    }

    /// Reads a row; with `needed`, only those columns become values (the others stay NULL and
    /// go straight into the row's client JSON), which saves most of the allocations of rows
    /// read in bulk (hydration). `known` gives the engine's copy of a key it holds already.
    pub fn read_row_with(
        &self,
        r: &rusqlite::Row<'_>,
        needed: Option<&[bool]>,
        cache: &mut ReadCache,
        known: Option<&dyn Fn(&str) -> Option<Arc<str>>>,
    ) -> rusqlite::Result<Row> {
        let (vals, json) = self.read_parts(r, needed, cache)?;
        let version = self.read_version(r, cache)?;
        let key = known
            .and_then(|known| known(&cache.key))
            .unwrap_or_else(|| Arc::from(cache.key.as_str()));
        Ok(Row {
            key,
            vals,
            version,
            json,
        })
    }

    /// [`TableInfo::read_row_with`] but for the key and the version: the values and client
    /// JSON, the key's text left in `cache.key` (see [`ReadCache::key`]).
    pub fn read_parts(
        &self,
        r: &rusqlite::Row<'_>,
        needed: Option<&[bool]>,
        cache: &mut ReadCache,
    ) -> rusqlite::Result<(Box<[Val]>, Option<RowJson>)> {
        let n = self.cols.len();
        // Values stop after the last column needed (none at all, often).
        let width = needed.map_or(n, |mask| mask.iter().rposition(|&w| w).map_or(0, |i| i + 1));
        let mut vals = Vec::with_capacity(width);
        // Sized for the longest row so far, so that it never grows (nor shrinks) afterwards.
        // Bytes, checked to be UTF-8 once for the whole row.
        let mut json = needed.map(|_| Vec::with_capacity(cache.json_len.max(64)));
        if let Some(out) = json.as_mut() {
            out.extend_from_slice(self.put_prefix.as_bytes());
            out.push(b'{');
        }
        // The key from the stored values (key columns need not be among the `needed` ones); a
        // one-column key as its column is read.
        cache.key.clear();
        cache.key.push('{');
        let single_key = (self.pk.len() == 1).then(|| self.pk[0]);
        for i in 0..n {
            let value = r.get_ref(i)?;
            if let Some(out) = json.as_mut() {
                out.extend_from_slice(self.json_names[i].as_bytes());
                write_value_json_bytes(out, self.cols[i].ty, value);
            }
            if single_key == Some(i) {
                cache.key.push_str(&self.key_names[0]);
                write_key_json(&mut cache.key, value);
            }
            if i < width {
                let wanted = needed.map_or(true, |mask| mask[i]);
                vals.push(if wanted { Val::from_ref(value) } else { Val::Null });
            }
        }
        let json = match json {
            None => None,
            Some(out) => Some(self.finish_op(out, &mut cache.json_len, || self.row_json_lossy(|i| r.get_ref(i)))?),
        };
        if single_key.is_none() {
            for (n, &c) in self.pk.iter().enumerate() {
                cache.key.push_str(&self.key_names[n]);
                write_key_json(&mut cache.key, r.get_ref(c)?);
            }
        }
        cache.key.push('}');
        Ok((vals.into_boxed_slice(), json))
    }

    /// A row's version (the one of consecutive rows shared: see [`ReadCache`]).
    pub fn read_version(&self, r: &rusqlite::Row<'_>, cache: &mut ReadCache) -> rusqlite::Result<Arc<str>> {
        let version: Arc<str> = match r.get_ref(self.cols.len())? {
            rusqlite::types::ValueRef::Text(t) => match &cache.version {
                Some(v) if v.as_bytes() == t => v.clone(),
                _ => {
                    let v: Arc<str> = Arc::from(String::from_utf8_lossy(t).as_ref());
                    cache.version = Some(v.clone());
                    v
                }
            },
            _ => Arc::from(""),
        };
        Ok(match &self.min_version {
            Some(min) if **min > *version => min.clone(),
            _ => version,
        })
    }

    /// A row's client op written from text checked column by column.
    fn row_json_lossy<'v>(&self, mut get: impl FnMut(usize) -> rusqlite::Result<rusqlite::types::ValueRef<'v>>) -> rusqlite::Result<String> {
        let mut out = self.put_prefix.clone();
        out.push('{');
        for (i, c) in self.cols.iter().enumerate() {
            out.push_str(&self.json_names[i]);
            write_value_json(&mut out, c.ty, get(i)?);
        }
        out.push_str("}}");
        Ok(out)
    }

    /// Ends a client op written as bytes (`json_len`: see [`ReadCache`]).
    fn finish_op(&self, mut out: Vec<u8>, json_len: &mut usize, lossy: impl FnOnce() -> rusqlite::Result<String>) -> rusqlite::Result<RowJson> {
        out.extend_from_slice(b"}}");
        *json_len = (*json_len).max(out.len() + out.len() / 4);
        let op = match String::from_utf8(out) {
            Ok(text) => text,
            // Stored text that is not UTF-8: written again, invalid sequences as U+FFFD.
            Err(_) => lossy()?,
        };
        Ok(RowJson {
            op,
            value_start: self.put_prefix.len(),
        })
    }

    /// [`TableInfo::read_parts`] with `needed` but for the client op: each column is appended
    /// to `cells` as stored, for [`TableInfo::op_of_cells`] to write the op from (on another
    /// thread: see `engine::read_chunks`).
    pub fn read_cells(&self, r: &rusqlite::Row<'_>, needed: &[bool], cache: &mut ReadCache, cells: &mut Vec<u8>) -> rusqlite::Result<Box<[Val]>> {
        let width = needed.iter().rposition(|&w| w).map_or(0, |i| i + 1);
        let mut vals = Vec::with_capacity(width);
        cache.key.clear();
        cache.key.push('{');
        let single_key = (self.pk.len() == 1).then(|| self.pk[0]);
        for i in 0..self.cols.len() {
            let value = r.get_ref(i)?;
            push_cell(cells, value);
            if single_key == Some(i) {
                cache.key.push_str(&self.key_names[0]);
                write_key_json(&mut cache.key, value);
            }
            if i < width {
                vals.push(if needed[i] { Val::from_ref(value) } else { Val::Null });
            }
        }
        if single_key.is_none() {
            for (n, &c) in self.pk.iter().enumerate() {
                cache.key.push_str(&self.key_names[n]);
                write_key_json(&mut cache.key, r.get_ref(c)?);
            }
        }
        cache.key.push('}');
        Ok(vals.into_boxed_slice())
    }

    /// The client op of the row whose cells (see [`TableInfo::read_cells`]) start `cells`,
    /// which then starts at the next row's.
    pub fn op_of_cells(&self, cells: &mut &[u8], json_len: &mut usize) -> RowJson {
        let row = *cells;
        let mut out = Vec::with_capacity((*json_len).max(64));
        out.extend_from_slice(self.put_prefix.as_bytes());
        out.push(b'{');
        for i in 0..self.cols.len() {
            out.extend_from_slice(self.json_names[i].as_bytes());
            write_value_json_bytes(&mut out, self.cols[i].ty, next_cell(cells));
        }
        let mut again = row;
        self.finish_op(out, json_len, || self.row_json_lossy(|_| Ok(next_cell(&mut again))))
            .expect("cells decode without errors")
    }

    /// The value in a `put` op of this table's (see [`RowJson`]).
    #[must_use]
    pub fn op_value<'o>(&self, op: &'o str) -> &'o str {
        &op[self.put_prefix.len()..op.len() - 1]
    }

    /// The row's client `put` op (see [`RowJson`]).
    #[must_use]
    pub fn put_op(&self, row: &Row) -> String {
        let value = row.json.as_ref().map_or(256, |j| j.value().len());
        let mut op = String::with_capacity(self.put_prefix.len() + value + 1);
        op.push_str(&self.put_prefix);
        self.write_row_json(&mut op, row);
        op.push('}');
        op
    }

    /// The row key: a JSON object of the primary-key columns in key order (the change log's
    /// and the CVR's format, `ReplicaTable::row_key`).
    #[must_use]
    pub fn row_key(&self, vals: &[Val]) -> String {
        let mut out = String::with_capacity(32);
        self.write_row_key(&mut out, vals);
        out
    }

    fn write_row_key(&self, out: &mut String, vals: &[Val]) {
        out.push('{');
        for (n, &c) in self.pk.iter().enumerate() {
            if n > 0 {
                out.push(',');
            }
            write_json_str(out, &self.cols[c].name);
            out.push(':');
            write_key_json(out, vals[c].as_value_ref());
        }
        out.push('}');
    }

    /// The primary-key values of a row key, to bind to [`TableInfo::by_key_sql`].
    #[must_use]
    pub fn key_values(&self, row_key: &str) -> Option<Vec<Val>> {
        let map: serde_json::Map<String, serde_json::Value> = serde_json::from_str(row_key).ok()?;
        self.pk
            .iter()
            .map(|&c| {
                Some(match map.get(&self.cols[c].name)? {
                    serde_json::Value::String(s) => Val::Text(Arc::from(s.as_str())),
                    serde_json::Value::Number(n) => n
                        .as_i64()
                        .map_or_else(|| Val::Real(n.as_f64().unwrap_or(f64::NAN)), Val::Int),
                    serde_json::Value::Bool(b) => Val::Int(i64::from(*b)),
                    _ => Val::Null,
                })
            })
            .collect()
    }

    /// Appends the row as the client sees it: every stored column but `_0_version`, booleans as
    /// `true`/`false`, json/jsonb/arrays as parsed JSON.
    pub fn write_row_json(&self, out: &mut String, row: &Row) {
        if let Some(json) = &row.json {
            out.push_str(json.value());
            return;
        }
        out.push('{');
        for (i, c) in self.cols.iter().enumerate() {
            out.push_str(&self.json_names[i]);
            write_value_json(out, c.ty, row.vals[i].as_value_ref());
        }
        out.push('}');
    }
}

/// Reuses allocations across the rows of one statement.
#[derive(Default)]
pub struct ReadCache {
    version: Option<Arc<str>>,
    key: String,
    /// Room to reserve for a row's JSON (a little more than the longest so far).
    json_len: usize,
}

impl ReadCache {
    /// The key of the row read last ([`TableInfo::read_parts`]).
    #[must_use]
    pub fn key(&self) -> &str {
        &self.key
    }
}

/// Appends a stored value as a cell: a tag byte, then the number (8 bytes) or the length (4
/// bytes) and bytes of text or blob.
fn push_cell(cells: &mut Vec<u8>, value: rusqlite::types::ValueRef<'_>) {
    use rusqlite::types::ValueRef;
    match value {
        ValueRef::Null => cells.push(0),
        ValueRef::Integer(n) => {
            cells.push(1);
            cells.extend_from_slice(&n.to_le_bytes());
        }
        ValueRef::Real(f) => {
            cells.push(2);
            cells.extend_from_slice(&f.to_le_bytes());
        }
        ValueRef::Text(t) | ValueRef::Blob(t) => {
            cells.push(if matches!(value, ValueRef::Text(_)) { 3 } else { 4 });
            cells.extend_from_slice(&u32::try_from(t.len()).expect("values under 4 GiB").to_le_bytes());
            cells.extend_from_slice(t);
        }
    }
}

/// The value of the cell `cells` starts with (see [`push_cell`]); `cells` moves past it.
fn next_cell<'c>(cells: &mut &'c [u8]) -> rusqlite::types::ValueRef<'c> {
    use rusqlite::types::ValueRef;
    let (&tag, rest) = cells.split_first().expect("a cell per column");
    let (value, rest) = match tag {
        0 => (ValueRef::Null, rest),
        1 | 2 => {
            let (n, rest) = rest.split_at(8);
            let n: [u8; 8] = n.try_into().expect("8 bytes");
            (if tag == 1 { ValueRef::Integer(i64::from_le_bytes(n)) } else { ValueRef::Real(f64::from_le_bytes(n)) }, rest)
        }
        _ => {
            let (len, rest) = rest.split_at(4);
            let len = u32::from_le_bytes(len.try_into().expect("4 bytes")) as usize;
            let (t, rest) = rest.split_at(len);
            (if tag == 3 { ValueRef::Text(t) } else { ValueRef::Blob(t) }, rest)
        }
    };
    *cells = rest;
    value
}

/// Appends one stored value as the client sees it (see [`TableInfo::write_row_json`]).
fn write_value_json(out: &mut String, ty: ColType, value: rusqlite::types::ValueRef<'_>) {
    use rusqlite::types::ValueRef;
    match (ty, value) {
        (_, ValueRef::Null | ValueRef::Blob(_)) => out.push_str("null"),
        (ColType::Boolean, ValueRef::Integer(n)) => out.push_str(if n != 0 { "true" } else { "false" }),
        (ColType::Boolean, ValueRef::Real(f)) => out.push_str(if f != 0.0 { "true" } else { "false" }),
        (_, ValueRef::Integer(n)) => write_i64(out, n),
        (_, ValueRef::Real(f)) => write_json_f64(out, f),
        (ColType::Json, ValueRef::Text(t)) => {
            let text = String::from_utf8_lossy(t);
            if serde_json::from_str::<serde::de::IgnoredAny>(&text).is_ok() {
                out.push_str(&text);
            } else {
                write_json_str(out, &text);
            }
        }
        (_, ValueRef::Text(t)) => match std::str::from_utf8(t) {
            Ok(text) => write_json_str(out, text),
            Err(_) => write_json_str(out, &String::from_utf8_lossy(t)),
        },
    }
}

/// [`write_value_json`] into bytes (text not checked to be UTF-8: the caller checks the whole
/// buffer).
fn write_value_json_bytes(out: &mut Vec<u8>, ty: ColType, value: rusqlite::types::ValueRef<'_>) {
    use rusqlite::types::ValueRef;
    match (ty, value) {
        (_, ValueRef::Null | ValueRef::Blob(_)) => out.extend_from_slice(b"null"),
        (ColType::Boolean, ValueRef::Integer(n)) => out.extend_from_slice(if n != 0 { b"true" } else { b"false" }),
        (ColType::Json, ValueRef::Text(_)) | (_, ValueRef::Real(_)) => {
            let mut text = String::new();
            write_value_json(&mut text, ty, value);
            out.extend_from_slice(text.as_bytes());
        }
        (_, ValueRef::Integer(n)) => write_i64_bytes(out, n),
        (_, ValueRef::Text(t)) => write_json_bytes(out, t),
    }
}

/// Comparison operators that compile to SQL as themselves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmpOp {
    Eq,
    Ne,
    Lt,
    Gt,
    Le,
    Ge,
}

impl CmpOp {
    fn sql(self) -> &'static str {
        match self {
            CmpOp::Eq => "=",
            CmpOp::Ne => "!=",
            CmpOp::Lt => "<",
            CmpOp::Gt => ">",
            CmpOp::Le => "<=",
            CmpOp::Ge => ">=",
        }
    }
}

/// A compiled condition over one node's rows. Column operands are indices into the node's
/// table columns; literal operands are stored values of the column's type.
#[derive(Debug, Clone)]
pub enum Cond {
    Const(bool),
    /// `col op val`; NULL `col` is false.
    Cmp {
        col: usize,
        op: CmpOp,
        val: Val,
    },
    IsNull {
        col: usize,
        not: bool,
    },
    /// Null-safe equality with a non-NULL value.
    Is {
        col: usize,
        val: Val,
        not: bool,
    },
    /// `NOT IN` is false for NULL, true for an empty list otherwise.
    In {
        col: usize,
        vals: Vec<Val>,
        not: bool,
    },
    Like {
        col: usize,
        pattern: Arc<str>,
        compiled: Arc<LikePattern>,
        ci: bool,
        not: bool,
    },
    And(Vec<Cond>),
    Or(Vec<Cond>),
    /// `[NOT] EXISTS` over child node `node`; `constant` when the subquery has `limit: 0`.
    Exists {
        node: usize,
        not: bool,
        constant: Option<bool>,
    },
}

impl Cond {
    /// Evaluates the condition on a row's values; `exists(node)` answers EXISTS atoms.
    pub fn eval(&self, vals: &[Val], exists: &mut dyn FnMut(usize) -> Result<bool>) -> Result<bool> {
        Ok(match self {
            Cond::Const(b) => *b,
            Cond::Cmp { col, op, val } => {
                let v = &vals[*col];
                if v.is_null() {
                    false
                } else {
                    let o = v.sql_cmp(val);
                    match op {
                        CmpOp::Eq => o.is_eq(),
                        CmpOp::Ne => o.is_ne(),
                        CmpOp::Lt => o.is_lt(),
                        CmpOp::Gt => o.is_gt(),
                        CmpOp::Le => o.is_le(),
                        CmpOp::Ge => o.is_ge(),
                    }
                }
            }
            Cond::IsNull { col, not } => vals[*col].is_null() != *not,
            Cond::Is { col, val, not } => vals[*col].sql_is(val) != *not,
            Cond::In { col, vals: list, not } => {
                let v = &vals[*col];
                !v.is_null() && (list.iter().any(|x| v.sql_eq(x)) != *not)
            }
            Cond::Like { col, compiled, not, .. } => match &vals[*col] {
                Val::Text(t) => compiled.matches(t) != *not,
                _ => false,
            },
            Cond::And(cs) => {
                for c in cs {
                    if !c.eval(vals, exists)? {
                        return Ok(false);
                    }
                }
                true
            }
            Cond::Or(cs) => {
                for c in cs {
                    if c.eval(vals, exists)? {
                        return Ok(true);
                    }
                }
                false
            }
            Cond::Exists { node, not, constant } => match constant {
                Some(b) => *b,
                None => exists(*node)? != *not,
            },
        })
    }

    /// Three-valued evaluation with EXISTS atoms unknown: `Some(false)` means the row cannot
    /// satisfy the condition whatever its subqueries hold.
    #[must_use]
    pub fn maybe(&self, vals: &[Val]) -> Option<bool> {
        match self {
            Cond::Exists { constant: Some(b), .. } => Some(*b),
            Cond::Exists { .. } => None,
            Cond::And(cs) => {
                let mut unknown = false;
                for c in cs {
                    match c.maybe(vals) {
                        Some(false) => return Some(false),
                        None => unknown = true,
                        Some(true) => {}
                    }
                }
                if unknown {
                    None
                } else {
                    Some(true)
                }
            }
            Cond::Or(cs) => {
                let mut unknown = false;
                for c in cs {
                    match c.maybe(vals) {
                        Some(true) => return Some(true),
                        None => unknown = true,
                        Some(false) => {}
                    }
                }
                if unknown {
                    None
                } else {
                    Some(false)
                }
            }
            other => Some(other.eval(vals, &mut |_| Ok(false)).unwrap_or(false)),
        }
    }
}

/// Where a statement parameter's value comes from.
#[derive(Debug, Clone)]
pub enum ParamSrc {
    /// The partition's (or the parent row's) correlation value, component `i`.
    Link(usize),
    /// A literal of the query.
    Lit(Val),
    /// Order column `i` of the last row of a window (refills).
    After(usize),
    /// The row count to fetch.
    Limit,
}

/// A statement and its parameters.
#[derive(Debug, Clone)]
pub struct Stmt {
    pub sql: Arc<str>,
    pub params: Vec<ParamSrc>,
}

impl Stmt {
    /// The parameter values, given the sources that vary.
    #[must_use]
    pub fn bind(&self, link: &[Val], after: &[Val], limit: Option<u64>) -> Vec<Val> {
        self.params
            .iter()
            .map(|p| match p {
                ParamSrc::Link(i) => link[*i].clone(),
                ParamSrc::Lit(v) => v.clone(),
                ParamSrc::After(i) => after[*i].clone(),
                ParamSrc::Limit => Val::Int(limit.map_or(-1, |l| i64::try_from(l).unwrap_or(i64::MAX))),
            })
            .collect()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeKind {
    Root,
    /// Rows synced once per query for a simple scalar subquery (see the module docs).
    Companion,
    Related,
    /// The subquery of an `[NOT] EXISTS` condition of the parent.
    Exists {
        not: bool,
    },
}

/// The correlation of a node with its parent: parent row `parent_cols` = child row `child_cols`.
#[derive(Debug, Clone)]
pub struct Link {
    pub parent_cols: Vec<usize>,
    pub child_cols: Vec<usize>,
}

#[derive(Debug)]
pub struct NodePlan {
    pub table: Arc<TableInfo>,
    pub parent: Option<usize>,
    pub link: Option<Link>,
    pub kind: NodeKind,
    /// Its rows are synced to clients (no `system: "permissions"` on the way from the root).
    pub synced: bool,
    pub cond: Cond,
    /// Completed ordering: (column, descending).
    pub order: Vec<(usize, bool)>,
    /// `start`: the bound's value for each order column, and `exclusive`.
    pub start: Option<(Vec<Val>, bool)>,
    pub limit: Option<u64>,
    /// Nodes whose partitions hang off each row of this node (EXISTS and related children).
    pub children: Vec<usize>,
    /// Another synced node of the query reads the same table, so a row may be held by several
    /// entries: the query counts its holders (`QState::rows`). Otherwise the node's own entry
    /// is the query's only hold on the row.
    pub counted: bool,
    /// For EXISTS nodes: some `NOT EXISTS` lies between this node and the first ancestor that
    /// is not an EXISTS node (see `ivm::engine`, "unknown old values").
    pub neg_chain: bool,
    /// The partition's rows in order (link parameters, `LIMIT` when limited).
    pub select: Stmt,
    /// The rows after a given row (`After` parameters), `LIMIT` (limited nodes only).
    pub refill: Option<Stmt>,
    /// EXISTS nodes: `SELECT 1 … LIMIT 1` for a parent's correlation value.
    pub exists: Option<Stmt>,
    /// EXISTS nodes: the parent table's rows with a given correlation value.
    pub parents: Option<Stmt>,
    /// The columns the engine reads from this node's partition rows (order columns of windows,
    /// correlation columns): see [`TableInfo::read_row_with`].
    pub needed: Vec<bool>,
}

impl NodePlan {
    /// The sort key of a row (its order columns' values).
    #[must_use]
    pub fn sort_key(&self, vals: &[Val]) -> Box<[Val]> {
        self.order.iter().map(|&(c, _)| vals[c].clone()).collect()
    }

    /// The sort key an entry keeps: only windows (nodes with a limit) are kept in order.
    #[must_use]
    pub fn kept_sort(&self, sort: Box<[Val]>) -> Box<[Val]> {
        if self.limit.is_some() {
            sort
        } else {
            Box::default()
        }
    }

    #[must_use]
    pub fn cmp_sort(&self, a: &[Val], b: &[Val]) -> std::cmp::Ordering {
        for (i, &(_, desc)) in self.order.iter().enumerate() {
            let o = a[i].sql_cmp(&b[i]);
            if o.is_ne() {
                return if desc { o.reverse() } else { o };
            }
        }
        std::cmp::Ordering::Equal
    }

    /// Whether a sort key is at or after `start`.
    #[must_use]
    pub fn after_start(&self, sort: &[Val]) -> bool {
        match &self.start {
            None => true,
            Some((bound, exclusive)) => match self.cmp_sort(sort, bound) {
                std::cmp::Ordering::Greater => true,
                std::cmp::Ordering::Equal => !exclusive,
                std::cmp::Ordering::Less => false,
            },
        }
    }
}

/// A compiled query.
#[derive(Debug)]
pub struct Plan {
    pub nodes: Vec<NodePlan>,
    /// Node 0 (the query's root) and the companion roots.
    pub roots: Vec<usize>,
    /// What a hydrated state of the plan registers in the engine's `Interest` besides the
    /// partitions of its `related` nodes: pins of roots and `EXISTS` nodes, tables always read.
    pub regs: Vec<Reg>,
    /// Table id → nodes reading it.
    pub by_table: Vec<(u32, Vec<usize>)>,
}

impl Plan {
    /// The nodes reading table `tid`.
    #[must_use]
    pub fn nodes_reading(&self, tid: u32) -> Option<&[usize]> {
        self.by_table.iter().find(|(t, _)| *t == tid).map(|(_, n)| n.as_slice())
    }

    /// Whether every table the plan reads is still `tables`' current one.
    #[must_use]
    pub fn is_current(&self, tables: &HashMap<String, Arc<TableInfo>>) -> bool {
        self.nodes
            .iter()
            .all(|n| tables.get(&n.table.name).is_some_and(|t| Arc::ptr_eq(t, &n.table)))
    }
}

fn invalid(detail: String) -> Error {
    Error::InvalidQuery { detail }
}

fn at(path: &str, field: &str) -> String {
    if path.is_empty() {
        field.to_owned()
    } else {
        format!("{path}.{field}")
    }
}

/// Compiles `ast` against `tables`.
pub fn compile(ast: &Ast, tables: &HashMap<String, Arc<TableInfo>>) -> Result<Plan> {
    let mut c = Compiler {
        tables,
        nodes: Vec::new(),
        roots: vec![0],
    };
    c.node(ast, "", None, NodeKind::Root, true, ast.limit)?;
    let mut plan = Plan {
        nodes: c.nodes,
        roots: c.roots,
        regs: Vec::new(),
        by_table: Vec::new(),
    };
    for i in 0..plan.nodes.len() {
        let neg = {
            let mut neg = false;
            let mut x = i;
            while let NodeKind::Exists { not } = plan.nodes[x].kind {
                neg |= not;
                match plan.nodes[x].parent {
                    Some(p) => x = p,
                    None => break,
                }
            }
            neg
        };
        plan.nodes[i].neg_chain = neg;
        let tid = plan.nodes[i].table.id;
        match plan.by_table.iter_mut().find(|(t, _)| *t == tid) {
            Some((_, nodes)) => nodes.push(i),
            None => plan.by_table.push((tid, vec![i])),
        }
    }
    for i in 0..plan.nodes.len() {
        let node = &plan.nodes[i];
        let counted = node.synced
            && plan
                .nodes
                .iter()
                .enumerate()
                .any(|(j, other)| j != i && other.synced && other.table.id == node.table.id);
        plan.nodes[i].counted = counted;
        build_sql(&mut plan, i);
        // What `Run::acquire`/`refill` use of partition rows: the order of windows, the
        // correlation values of the row and of its children. Conditions are SQL's there.
        let mut needed = vec![false; plan.nodes[i].table.cols.len()];
        let node = &plan.nodes[i];
        if node.limit.is_some() {
            for &(c, _) in &node.order {
                needed[c] = true;
            }
        }
        if let Some(link) = &node.link {
            for &c in &link.child_cols {
                needed[c] = true;
            }
        }
        for &child in &node.children {
            for &c in &plan.nodes[child]
                .link
                .as_ref()
                .expect("children have links")
                .parent_cols
            {
                needed[c] = true;
            }
        }
        plan.nodes[i].needed = needed;
    }
    plan.regs = plan.nodes.iter().flat_map(interest_regs).collect();
    Ok(plan)
}

/// The `Interest` registrations of one node (see `ivm::interest`): `related` nodes register
/// their partitions as they come and go; roots and `EXISTS` nodes pin the values of a
/// top-level equality (`=`, `IS`, `IN`) if they have one, preferring string columns.
fn interest_regs(node: &NodePlan) -> Vec<Reg> {
    let tid = node.table.id;
    if !node.synced || node.neg_chain {
        return vec![Reg::Always(tid)];
    }
    if node.kind == NodeKind::Related {
        return Vec::new();
    }
    let conjuncts: Vec<&Cond> = match &node.cond {
        Cond::And(cs) => cs.iter().collect(),
        other => vec![other],
    };
    let pin = |c: &Cond| -> Option<(usize, Vec<Val>)> {
        match c {
            Cond::Cmp { col, op: CmpOp::Eq, val } | Cond::Is { col, val, not: false } => Some((*col, vec![val.clone()])),
            Cond::In { col, vals, not: false } => Some((*col, vals.clone())),
            _ => None,
        }
    };
    let pins: Vec<(usize, Vec<Val>)> = conjuncts.iter().filter_map(|c| pin(c)).collect();
    let chosen = pins
        .iter()
        .find(|(col, _)| node.table.cols[*col].ty == ColType::String)
        .or_else(|| pins.first());
    match chosen {
        None => vec![Reg::Always(tid)],
        Some((col, vals)) => vals
            .iter()
            .filter_map(super::value::KeyVal::of)
            .map(|k| Reg::Pin(tid, Box::new([*col]), Arc::from(vec![k])))
            .collect(),
    }
}

struct Compiler<'a> {
    tables: &'a HashMap<String, Arc<TableInfo>>,
    nodes: Vec<NodePlan>,
    roots: Vec<usize>,
}

impl Compiler<'_> {
    fn table(&self, ast: &Ast, path: &str) -> Result<Arc<TableInfo>> {
        self.tables
            .get(&ast.table)
            .cloned()
            .ok_or_else(|| invalid(format!("{}: unknown table {:?}", at(path, "table"), ast.table)))
    }

    fn column(table: &TableInfo, name: &str, path: &str) -> Result<usize> {
        table
            .col(name)
            .ok_or_else(|| invalid(format!("{path}: unknown column {name:?} of table {}", table.name)))
    }

    /// Compiles one (sub)query into a node; returns its index.
    fn node(
        &mut self,
        ast: &Ast,
        path: &str,
        parent: Option<(usize, &CorrelatedSubquery, String)>,
        kind: NodeKind,
        synced: bool,
        limit: Option<u64>,
    ) -> Result<usize> {
        let table = self.table(ast, path)?;
        // Completed ordering.
        let mut order: Vec<(usize, bool)> = Vec::new();
        if let Some(order_by) = &ast.order_by {
            for (i, (name, dir)) in order_by.iter().enumerate() {
                let p = format!("{}[{i}][0]", at(path, "orderBy"));
                let col = Self::column(&table, name, &p)?;
                if table.cols[col].ty == ColType::Json {
                    return Err(invalid(format!(
                        "{p}: cannot order by column {name:?}, which has type json"
                    )));
                }
                order.push((col, *dir == Direction::Desc));
            }
        }
        for &k in &table.pk {
            if !order.iter().any(|&(c, _)| c == k) {
                order.push((k, false));
            }
        }
        let start = match &ast.start {
            None => None,
            Some(bound) => {
                let p = at(path, "start.row");
                for name in bound.row.keys() {
                    Self::column(&table, name, &at(&p, name))?;
                }
                let vals = order
                    .iter()
                    .map(|&(c, _)| {
                        let col = &table.cols[c];
                        match bound.row.get(&col.name) {
                            None | Some(serde_json::Value::Null) => Ok(Val::Null),
                            Some(v) => json_to_val(v, col.ty).ok_or_else(|| {
                                invalid(format!(
                                    "{}: expected a {} value for column {:?}",
                                    at(&p, &col.name),
                                    col.ty.name(),
                                    col.name
                                ))
                            }),
                        }
                    })
                    .collect::<Result<Vec<_>>>()?;
                Some((vals, bound.exclusive))
            }
        };
        let link = match &parent {
            None => None,
            Some((p, csq, cpath)) => {
                let parent_table = self.nodes[*p].table.clone();
                let mut link = Link {
                    parent_cols: Vec::new(),
                    child_cols: Vec::new(),
                };
                for (i, (pf, cf)) in csq.parent_field.iter().zip(&csq.child_field).enumerate() {
                    let pc = Self::column(&parent_table, pf, &format!("{cpath}.correlation.parentField[{i}]"))?;
                    let cc = Self::column(&table, cf, &format!("{cpath}.correlation.childField[{i}]"))?;
                    let (pt, ct) = (parent_table.cols[pc].ty, table.cols[cc].ty);
                    if pt != ct || pt == ColType::Json {
                        return Err(invalid(format!(
                            "{cpath}.correlation: {}.{pf} ({}) cannot be correlated with {}.{cf} ({})",
                            parent_table.name,
                            pt.name(),
                            table.name,
                            ct.name()
                        )));
                    }
                    link.parent_cols.push(pc);
                    link.child_cols.push(cc);
                }
                Some(link)
            }
        };
        let index = self.nodes.len();
        let empty = Stmt {
            sql: Arc::from(""),
            params: Vec::new(),
        };
        self.nodes.push(NodePlan {
            table: table.clone(),
            parent: parent.as_ref().map(|(p, _, _)| *p),
            link,
            kind,
            synced,
            cond: Cond::Const(true),
            order,
            start,
            limit,
            children: Vec::new(),
            counted: false,
            neg_chain: false,
            select: empty,
            refill: None,
            exists: None,
            parents: None,
            needed: Vec::new(),
        });
        let cond = match &ast.where_ {
            None => Cond::Const(true),
            Some(w) => self.condition(w, &at(path, "where"), index, synced)?,
        };
        self.nodes[index].cond = cond;
        // Related subqueries: the last of each alias wins, in first-appearance order.
        let mut by_alias: Vec<(&str, &CorrelatedSubquery, usize)> = Vec::new();
        for (i, csq) in ast.related.iter().enumerate() {
            let alias = csq.subquery.alias.as_deref().unwrap_or("");
            match by_alias.iter_mut().find(|(a, _, _)| *a == alias) {
                Some(slot) => {
                    slot.1 = csq;
                    slot.2 = i;
                }
                None => by_alias.push((alias, csq, i)),
            }
        }
        for (_, csq, i) in by_alias {
            let cpath = format!("{}[{i}]", at(path, "related"));
            let child_synced = synced && csq.system != Some(System::Permissions);
            let child = self.node(
                &csq.subquery,
                &at(&cpath, "subquery"),
                Some((index, csq, cpath.clone())),
                NodeKind::Related,
                child_synced,
                csq.subquery.limit,
            )?;
            self.nodes[index].children.push(child);
        }
        Ok(index)
    }

    fn condition(&mut self, cond: &Condition, path: &str, node: usize, synced: bool) -> Result<Cond> {
        Ok(match cond {
            Condition::And(cs) => Cond::And(
                cs.iter()
                    .enumerate()
                    .map(|(i, c)| self.condition(c, &format!("{path}.conditions[{i}]"), node, synced))
                    .collect::<Result<_>>()?,
            ),
            Condition::Or(cs) => Cond::Or(
                cs.iter()
                    .enumerate()
                    .map(|(i, c)| self.condition(c, &format!("{path}.conditions[{i}]"), node, synced))
                    .collect::<Result<_>>()?,
            ),
            Condition::Simple { op, left, right } => {
                let table = self.nodes[node].table.clone();
                simple(&table, *op, left, right, path)?
            }
            Condition::Exists {
                related,
                not,
                flip,
                scalar,
            } => {
                let sub = &related.subquery;
                let rpath = at(path, "related");
                let spath = at(&rpath, "subquery");
                if sub.start.is_some() {
                    return Err(invalid(format!(
                        "{}: EXISTS subqueries must not have start",
                        at(&spath, "start")
                    )));
                }
                if !sub.related.is_empty() {
                    return Err(invalid(format!(
                        "{}: EXISTS subqueries must not have related",
                        at(&spath, "related")
                    )));
                }
                let permissions = related.system == Some(System::Permissions);
                let child_synced = synced && !permissions;
                let limit = if *flip && !*not {
                    sub.limit
                } else if permissions {
                    Some(PERMISSIONS_EXISTS_LIMIT)
                } else {
                    Some(EXISTS_LIMIT)
                };
                let child = self.node(
                    sub,
                    &spath,
                    Some((node, related, rpath.clone())),
                    NodeKind::Exists { not: *not },
                    child_synced,
                    limit,
                )?;
                self.nodes[node].children.push(child);
                if *scalar && is_simple_scalar(sub, &self.nodes[child].table) {
                    let companion = self.node(sub, &spath, None, NodeKind::Companion, child_synced, sub.limit)?;
                    self.roots.push(companion);
                }
                Cond::Exists {
                    node: child,
                    not: *not,
                    constant: (sub.limit == Some(0)).then_some(*not),
                }
            }
        })
    }
}

/// Zero's "simple scalar subquery": its `where` is a conjunction whose `column = literal`
/// conditions cover every primary-key column.
fn is_simple_scalar(ast: &Ast, table: &TableInfo) -> bool {
    fn gather<'a>(c: &'a Condition, out: &mut Vec<&'a str>) -> bool {
        match c {
            Condition::And(cs) => cs.iter().all(|c| gather(c, out)),
            Condition::Simple {
                op: SimpleOp::Eq,
                left: ValuePos::Column(name),
                right: ValuePos::Literal(l),
            } => {
                if *l != Literal::Null {
                    out.push(name);
                }
                true
            }
            Condition::Simple { .. } => true,
            _ => false,
        }
    }
    let mut cols = Vec::new();
    match &ast.where_ {
        Some(w) if gather(w, &mut cols) => table.pk.iter().all(|&k| cols.contains(&table.cols[k].name.as_str())),
        _ => false,
    }
}

fn literal_type(l: &Literal) -> &'static str {
    match l {
        Literal::Null => "null",
        Literal::Bool(_) => "boolean",
        Literal::Number(_) => "number",
        Literal::String(_) => "string",
        Literal::Array(_) => "array",
    }
}

/// A literal as a stored value of a column of type `ty`; `None` when the types differ.
fn literal_val(l: &Literal, ty: ColType) -> Option<Val> {
    match (l, ty) {
        (Literal::String(s), ColType::String) => Some(Val::Text(Arc::from(s.as_str()))),
        (Literal::Number(n), ColType::Number) => Some(number_val(n)),
        (Literal::Bool(b), ColType::Boolean) => Some(Val::Int(i64::from(*b))),
        _ => None,
    }
}

fn number_val(n: &serde_json::Number) -> Val {
    n.as_i64()
        .map_or_else(|| Val::Real(n.as_f64().unwrap_or(f64::NAN)), Val::Int)
}

fn json_to_val(v: &serde_json::Value, ty: ColType) -> Option<Val> {
    match (v, ty) {
        (serde_json::Value::String(s), ColType::String) => Some(Val::Text(Arc::from(s.as_str()))),
        (serde_json::Value::Number(n), ColType::Number) => Some(number_val(n)),
        (serde_json::Value::Bool(b), ColType::Boolean) => Some(Val::Int(i64::from(*b))),
        _ => None,
    }
}

fn simple(table: &TableInfo, op: SimpleOp, left: &ValuePos, right: &ValuePos, path: &str) -> Result<Cond> {
    for (side, v) in [("left", left), ("right", right)] {
        if let ValuePos::Static { anchor, field } = v {
            return Err(invalid(format!(
                "{}: unresolved static parameter {anchor}.{} (static parameters must be bound before the query engine sees the query)",
                at(path, side),
                field.join(".")
            )));
        }
    }
    let ValuePos::Literal(r) = right else {
        return Err(invalid(format!("{}: expected a literal", at(path, "right"))));
    };
    let is_in = matches!(op, SimpleOp::In | SimpleOp::NotIn);
    let rpath = at(path, "right.value");
    if is_in && !matches!(r, Literal::Array(_)) {
        return Err(invalid(format!(
            "{rpath}: {} needs an array, got {}",
            op.as_str(),
            literal_type(r)
        )));
    }
    if !is_in && matches!(r, Literal::Array(_)) {
        return Err(invalid(format!("{rpath}: an array is only allowed with IN and NOT IN")));
    }
    let name = match left {
        ValuePos::Column(name) => name,
        ValuePos::Literal(l) => return constant(op, l, r, path).map(Cond::Const),
        ValuePos::Static { .. } => unreachable!("rejected above"),
    };
    let col = table.col(name).ok_or_else(|| {
        invalid(format!(
            "{}: unknown column {name:?} of table {}",
            at(path, "left.name"),
            table.name
        ))
    })?;
    let ty = table.cols[col].ty;
    let like = matches!(
        op,
        SimpleOp::Like | SimpleOp::NotLike | SimpleOp::ILike | SimpleOp::NotILike
    );
    if ty == ColType::Json && !(matches!(op, SimpleOp::Is | SimpleOp::IsNot) && *r == Literal::Null) {
        return Err(invalid(format!(
            "{path}: column {name:?} has type json; only IS NULL / IS NOT NULL can test it"
        )));
    }
    if like && ty != ColType::String {
        return Err(invalid(format!(
            "{path}: {} needs a string column, {name:?} has type {}",
            op.as_str(),
            ty.name()
        )));
    }
    Ok(match op {
        SimpleOp::In | SimpleOp::NotIn => {
            let Literal::Array(items) = r else {
                unreachable!("checked above")
            };
            let vals = items.iter().filter_map(|l| literal_val(l, ty)).collect();
            Cond::In {
                col,
                vals,
                not: op == SimpleOp::NotIn,
            }
        }
        SimpleOp::Is | SimpleOp::IsNot => {
            let not = op == SimpleOp::IsNot;
            match r {
                Literal::Null => Cond::IsNull { col, not },
                _ => match literal_val(r, ty) {
                    Some(val) => Cond::Is { col, val, not },
                    None => Cond::Const(not),
                },
            }
        }
        _ if *r == Literal::Null => Cond::Const(false),
        SimpleOp::Like | SimpleOp::NotLike | SimpleOp::ILike | SimpleOp::NotILike => {
            let Literal::String(pattern) = r else {
                return Err(invalid(format!(
                    "{rpath}: {} needs a string pattern, got {}",
                    op.as_str(),
                    literal_type(r)
                )));
            };
            if let Some(problem) = pattern_problem(pattern) {
                return Err(invalid(format!("{rpath}: {problem}")));
            }
            let ci = matches!(op, SimpleOp::ILike | SimpleOp::NotILike);
            Cond::Like {
                col,
                pattern: Arc::from(pattern.as_str()),
                compiled: Arc::new(LikePattern::new(pattern, ci)),
                ci,
                not: matches!(op, SimpleOp::NotLike | SimpleOp::NotILike),
            }
        }
        SimpleOp::Eq => literal_val(r, ty).map_or(Cond::Const(false), |val| Cond::Cmp {
            col,
            op: CmpOp::Eq,
            val,
        }),
        SimpleOp::Ne => literal_val(r, ty).map_or(Cond::IsNull { col, not: true }, |val| Cond::Cmp {
            col,
            op: CmpOp::Ne,
            val,
        }),
        SimpleOp::Lt | SimpleOp::Gt | SimpleOp::Le | SimpleOp::Ge => {
            let val = literal_val(r, ty).ok_or_else(|| {
                invalid(format!(
                    "{path}: cannot compare column {name:?} ({}) with a {}",
                    ty.name(),
                    literal_type(r)
                ))
            })?;
            let op = match op {
                SimpleOp::Lt => CmpOp::Lt,
                SimpleOp::Gt => CmpOp::Gt,
                SimpleOp::Le => CmpOp::Le,
                _ => CmpOp::Ge,
            };
            Cond::Cmp { col, op, val }
        }
    })
}

/// A condition between two literals, evaluated as Zero's `createPredicate` does.
fn constant(op: SimpleOp, l: &Literal, r: &Literal, path: &str) -> Result<bool> {
    fn strict_eq(a: &Literal, b: &Literal) -> bool {
        match (a, b) {
            (Literal::Null, Literal::Null) => true,
            (Literal::Bool(x), Literal::Bool(y)) => x == y,
            (Literal::Number(x), Literal::Number(y)) => x.as_f64() == y.as_f64(),
            (Literal::String(x), Literal::String(y)) => x == y,
            _ => false,
        }
    }
    match op {
        SimpleOp::Is => return Ok(strict_eq(l, r)),
        SimpleOp::IsNot => return Ok(!strict_eq(l, r)),
        _ => {}
    }
    if *l == Literal::Null || *r == Literal::Null {
        return Ok(false);
    }
    Ok(match op {
        SimpleOp::Eq => strict_eq(l, r),
        SimpleOp::Ne => !strict_eq(l, r),
        SimpleOp::In | SimpleOp::NotIn => {
            let Literal::Array(items) = r else {
                unreachable!("checked by the caller")
            };
            items.iter().any(|i| strict_eq(l, i)) != (op == SimpleOp::NotIn)
        }
        SimpleOp::Lt | SimpleOp::Gt | SimpleOp::Le | SimpleOp::Ge => {
            let o = match (l, r) {
                (Literal::String(a), Literal::String(b)) => a.as_bytes().cmp(b.as_bytes()),
                (Literal::Number(a), Literal::Number(b)) => {
                    a.as_f64().partial_cmp(&b.as_f64()).unwrap_or(std::cmp::Ordering::Equal)
                }
                (Literal::Bool(a), Literal::Bool(b)) => a.cmp(b),
                _ => {
                    return Err(invalid(format!(
                        "{path}: cannot compare a {} with a {}",
                        literal_type(l),
                        literal_type(r)
                    )))
                }
            };
            match op {
                SimpleOp::Lt => o.is_lt(),
                SimpleOp::Gt => o.is_gt(),
                SimpleOp::Le => o.is_le(),
                _ => o.is_ge(),
            }
        }
        SimpleOp::Like | SimpleOp::NotLike | SimpleOp::ILike | SimpleOp::NotILike => {
            let (Literal::String(v), Literal::String(p)) = (l, r) else {
                return Err(invalid(format!("{path}: {} needs strings", op.as_str())));
            };
            if let Some(problem) = pattern_problem(p) {
                return Err(invalid(format!("{}: {problem}", at(path, "right.value"))));
            }
            let ci = matches!(op, SimpleOp::ILike | SimpleOp::NotILike);
            super::like::like(v, p, ci) != matches!(op, SimpleOp::NotLike | SimpleOp::NotILike)
        }
        SimpleOp::Is | SimpleOp::IsNot => unreachable!("handled above"),
    })
}

// --- SQL ------------------------------------------------------------------------------------

/// How EXISTS atoms become SQL.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Style {
    /// `parent.pf IN (SELECT child.cf …)`: lets SQLite drive from the subquery when hydrating.
    In,
    /// `EXISTS (SELECT 1 … WHERE child.cf = parent.pf …)`: one index probe per row.
    Correlated,
}

struct SqlBuf {
    params: Vec<ParamSrc>,
    aliases: usize,
}

impl SqlBuf {
    fn new() -> Self {
        SqlBuf {
            params: Vec::new(),
            aliases: 1,
        }
    }

    fn param(&mut self, p: ParamSrc) -> String {
        self.params.push(p);
        format!("?{}", self.params.len())
    }

    fn alias(&mut self) -> String {
        let a = format!("t{}", self.aliases);
        self.aliases += 1;
        a
    }
}

fn cond_sql(nodes: &[NodePlan], node: usize, cond: &Cond, alias: &str, buf: &mut SqlBuf, style: Style) -> String {
    let table = &nodes[node].table;
    let c = |col: &usize| format!("{alias}.{}", table.cols[*col].quoted);
    match cond {
        Cond::Const(b) => (if *b { "1" } else { "0" }).to_owned(),
        Cond::Cmp { col, op, val } => format!("{} {} {}", c(col), op.sql(), buf.param(ParamSrc::Lit(val.clone()))),
        Cond::IsNull { col, not } => format!("{} IS {}NULL", c(col), if *not { "NOT " } else { "" }),
        Cond::Is { col, val, not } => {
            format!(
                "{} IS {}{}",
                c(col),
                if *not { "NOT " } else { "" },
                buf.param(ParamSrc::Lit(val.clone()))
            )
        }
        Cond::In { col, vals, not } => {
            if vals.is_empty() {
                return if *not {
                    format!("{} IS NOT NULL", c(col))
                } else {
                    "0".to_owned()
                };
            }
            let list: Vec<String> = vals.iter().map(|v| buf.param(ParamSrc::Lit(v.clone()))).collect();
            if *not {
                format!("({0} IS NOT NULL AND {0} NOT IN ({1}))", c(col), list.join(", "))
            } else {
                format!("{} IN ({})", c(col), list.join(", "))
            }
        }
        Cond::Like {
            col, pattern, ci, not, ..
        } => format!(
            "{}zcache_{}like({}, {})",
            if *not { "NOT " } else { "" },
            if *ci { "i" } else { "" },
            c(col),
            buf.param(ParamSrc::Lit(Val::Text(pattern.clone())))
        ),
        Cond::And(cs) | Cond::Or(cs) => {
            let and = matches!(cond, Cond::And(_));
            if cs.is_empty() {
                return (if and { "1" } else { "0" }).to_owned();
            }
            let parts: Vec<String> = cs.iter().map(|x| cond_sql(nodes, node, x, alias, buf, style)).collect();
            format!("({})", parts.join(if and { " AND " } else { " OR " }))
        }
        Cond::Exists { constant: Some(b), .. } => (if *b { "1" } else { "0" }).to_owned(),
        Cond::Exists {
            node: child,
            not,
            constant: None,
        } => {
            let child_plan = &nodes[*child];
            let link = child_plan.link.as_ref().expect("EXISTS nodes have a link");
            let a2 = buf.alias();
            let sub_cond = cond_sql(nodes, *child, &child_plan.cond, &a2, buf, style);
            let ct = &child_plan.table;
            if style == Style::In && !*not {
                let lhs: Vec<String> = link.parent_cols.iter().map(c).collect();
                let rhs: Vec<String> = link
                    .child_cols
                    .iter()
                    .map(|k| format!("{a2}.{}", ct.cols[*k].quoted))
                    .collect();
                let lhs = if lhs.len() == 1 {
                    lhs[0].clone()
                } else {
                    format!("({})", lhs.join(", "))
                };
                format!(
                    "{lhs} IN (SELECT {} FROM {} AS {a2} WHERE {sub_cond})",
                    rhs.join(", "),
                    ct.quoted
                )
            } else {
                let eqs: Vec<String> = link
                    .parent_cols
                    .iter()
                    .zip(&link.child_cols)
                    .map(|(p, k)| format!("{a2}.{} = {}", ct.cols[*k].quoted, c(p)))
                    .collect();
                format!(
                    "{}EXISTS (SELECT 1 FROM {} AS {a2} WHERE {} AND {sub_cond})",
                    if *not { "NOT " } else { "" },
                    ct.quoted,
                    eqs.join(" AND ")
                )
            }
        }
    }
}

/// `(c0, c1, …) after (v0, v1, …)` in the node's order, for parameters `vals` (which may be
/// NULL at run time); `inclusive` adds equality.
fn after_sql(node: &NodePlan, alias: &str, vals: &[String], inclusive: bool) -> String {
    let col = |i: usize| format!("{alias}.{}", node.table.cols[node.order[i].0].quoted);
    let mut ors = Vec::new();
    for i in 0..node.order.len() {
        let mut ands: Vec<String> = (0..i).map(|j| format!("{} IS {}", col(j), vals[j])).collect();
        let (c, p) = (col(i), &vals[i]);
        ands.push(if node.order[i].1 {
            format!("({p} IS NOT NULL AND ({c} IS NULL OR {c} < {p}))")
        } else {
            format!("({c} > {p} OR ({p} IS NULL AND {c} IS NOT NULL))")
        });
        ors.push(ands.join(" AND "));
    }
    if inclusive {
        ors.push(
            (0..node.order.len())
                .map(|j| format!("{} IS {}", col(j), vals[j]))
                .collect::<Vec<_>>()
                .join(" AND "),
        );
    }
    format!("({})", ors.join(" OR "))
}

fn build_sql(plan: &mut Plan, i: usize) {
    let nodes = &plan.nodes;
    let node = &nodes[i];
    let table = &node.table;
    // The partition query, with an optional "after the last row" bound.
    let partition = |with_after: bool| -> Stmt {
        let mut buf = SqlBuf::new();
        let mut wheres = Vec::new();
        if let Some(link) = &node.link {
            for (k, &c) in link.child_cols.iter().enumerate() {
                wheres.push(format!(
                    "t0.{} = {}",
                    table.cols[c].quoted,
                    buf.param(ParamSrc::Link(k))
                ));
            }
        }
        let cond = cond_sql(nodes, i, &node.cond, "t0", &mut buf, Style::In);
        if cond != "1" {
            wheres.push(cond);
        }
        if let Some((vals, exclusive)) = &node.start {
            let ps: Vec<String> = vals.iter().map(|v| buf.param(ParamSrc::Lit(v.clone()))).collect();
            wheres.push(after_sql(node, "t0", &ps, !exclusive));
        }
        if with_after {
            let ps: Vec<String> = (0..node.order.len()).map(|k| buf.param(ParamSrc::After(k))).collect();
            wheres.push(after_sql(node, "t0", &ps, false));
        }
        let order: Vec<String> = node
            .order
            .iter()
            .map(|&(c, desc)| format!("t0.{} {}", table.cols[c].quoted, if desc { "DESC" } else { "ASC" }))
            .collect();
        let mut sql = format!("SELECT {} FROM {} AS t0", table.select_list("t0"), table.quoted);
        if !wheres.is_empty() {
            let _ = write!(sql, " WHERE {}", wheres.join(" AND "));
        }
        // Without a limit the engine sorts the rows itself (cheaper than SQLite's sorter, and
        // SQLite may then pick any index); with one, SQLite finds the top rows.
        if node.limit.is_some() || with_after {
            let _ = write!(sql, " ORDER BY {}", order.join(", "));
            let _ = write!(sql, " LIMIT {}", buf.param(ParamSrc::Limit));
        }
        Stmt {
            sql: Arc::from(sql),
            params: buf.params,
        }
    };
    let select = partition(false);
    let refill = node.limit.map(|_| partition(true));
    let (exists, parents) = match (node.kind, &node.link, node.parent) {
        (NodeKind::Exists { .. }, Some(link), Some(p)) => {
            let mut buf = SqlBuf::new();
            let mut wheres: Vec<String> = link
                .child_cols
                .iter()
                .enumerate()
                .map(|(k, &c)| format!("t0.{} = {}", table.cols[c].quoted, buf.param(ParamSrc::Link(k))))
                .collect();
            let cond = cond_sql(nodes, i, &node.cond, "t0", &mut buf, Style::Correlated);
            if cond != "1" {
                wheres.push(cond);
            }
            let exists = Stmt {
                sql: Arc::from(format!(
                    "SELECT 1 FROM {} AS t0 WHERE {} LIMIT 1",
                    table.quoted,
                    wheres.join(" AND ")
                )),
                params: buf.params,
            };
            let pt = &nodes[p].table;
            let mut buf = SqlBuf::new();
            let wheres: Vec<String> = link
                .parent_cols
                .iter()
                .enumerate()
                .map(|(k, &c)| format!("t0.{} = {}", pt.cols[c].quoted, buf.param(ParamSrc::Link(k))))
                .collect();
            let parents = Stmt {
                sql: Arc::from(format!(
                    "SELECT {} FROM {} AS t0 WHERE {}",
                    pt.select_list("t0"),
                    pt.quoted,
                    wheres.join(" AND ")
                )),
                params: buf.params,
            };
            (Some(exists), Some(parents))
        }
        _ => (None, None),
    };
    let node = &mut plan.nodes[i];
    node.select = select;
    node.refill = refill;
    node.exists = exists;
    node.parents = parents;
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::ivm::ast::parse_ast_json;
    use crate::pg::schema::ColumnSpec;

    pub(crate) fn column(name: &str, type_oid: u32) -> ColumnSpec {
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

    pub(crate) fn spec(oid: u32, name: &str, pk: &[&str], cols: &[(&str, u32)]) -> TableSpec {
        TableSpec {
            oid,
            schema: "public".into(),
            name: name.into(),
            replica_identity: "d".into(),
            primary_key: pk.iter().map(|s| (*s).to_owned()).collect(),
            columns: cols.iter().map(|(n, t)| column(n, *t)).collect(),
        }
    }

    /// The tldraw-like schema used by the engine's tests.
    pub(crate) fn specs() -> Vec<TableSpec> {
        vec![
            spec(
                1,
                "user",
                &["id"],
                &[
                    ("id", 1043),
                    ("name", 1043),
                    ("age", 20),
                    ("admin", 16),
                    ("prefs", 3802),
                ],
            ),
            spec(
                2,
                "file",
                &["id"],
                &[
                    ("id", 1043),
                    ("name", 1043),
                    ("ownerId", 1043),
                    ("updatedAt", 20),
                    ("shared", 16),
                ],
            ),
            spec(
                3,
                "file_state",
                &["userId", "fileId"],
                &[("userId", 1043), ("fileId", 1043), ("lastVisitAt", 20)],
            ),
        ]
    }

    pub(crate) fn tables() -> HashMap<String, Arc<TableInfo>> {
        specs()
            .into_iter()
            .enumerate()
            .map(|(i, s)| {
                let mut info = TableInfo::new(s).unwrap();
                info.id = i as u32;
                (info.name.clone(), Arc::new(info))
            })
            .collect()
    }

    fn compile_json(text: &str) -> Result<Plan> {
        let ast = parse_ast_json(text).map_err(|detail| Error::InvalidQuery { detail })?;
        compile(&ast, &tables())
    }

    fn error(text: &str) -> String {
        match compile_json(text) {
            Err(Error::InvalidQuery { detail }) => detail,
            other => panic!("expected an invalid query, got {other:?}"),
        }
    }

    fn simple(col: &str, op: &str, value: &str) -> String {
        format!(
            r#"{{"type":"simple","op":"{op}","left":{{"type":"column","name":"{col}"}},"right":{{"type":"literal","value":{value}}}}}"#
        )
    }

    #[test]
    fn ordering_is_completed_with_the_primary_key() {
        let plan =
            compile_json(r#"{"table":"file_state","orderBy":[["lastVisitAt","desc"],["fileId","asc"]]}"#).unwrap();
        assert_eq!(plan.nodes[0].order, vec![(2, true), (1, false), (0, false)]);
        let plan = compile_json(r#"{"table":"file"}"#).unwrap();
        assert_eq!(plan.nodes[0].order, vec![(0, false)]);
        // Unlimited partitions are sorted by the engine; limited ones by SQLite.
        assert!(
            !plan.nodes[0].select.sql.contains("ORDER BY"),
            "{}",
            plan.nodes[0].select.sql
        );
        let plan = compile_json(r#"{"table":"file","limit":3}"#).unwrap();
        assert!(
            plan.nodes[0].select.sql.ends_with(r#"ORDER BY t0."id" ASC LIMIT ?1"#),
            "{}",
            plan.nodes[0].select.sql
        );
    }

    #[test]
    fn validation_names_what_is_wrong() {
        assert_eq!(error(r#"{"table":"nope"}"#), r#"table: unknown table "nope""#);
        assert_eq!(
            error(&format!(
                r#"{{"table":"file","where":{{"type":"and","conditions":[{},{}]}}}}"#,
                simple("id", "=", "\"x\""),
                simple("bogus", "=", "1")
            )),
            r#"where.conditions[1].left.name: unknown column "bogus" of table file"#
        );
        assert_eq!(
            error(r#"{"table":"file","orderBy":[["nope","asc"]]}"#),
            r#"orderBy[0][0]: unknown column "nope" of table file"#
        );
        assert_eq!(
            error(r#"{"table":"file","start":{"row":{"nope":1},"exclusive":false}}"#),
            r#"start.row.nope: unknown column "nope" of table file"#
        );
        assert_eq!(
            error(r#"{"table":"file","start":{"row":{"id":1},"exclusive":false}}"#),
            r#"start.row.id: expected a string value for column "id""#
        );
        assert_eq!(
            error(
                r#"{"table":"file","related":[{"correlation":{"parentField":["ownerId"],"childField":["idd"]},"subquery":{"table":"user","alias":"owner"}}]}"#
            ),
            r#"related[0].correlation.childField[0]: unknown column "idd" of table user"#
        );
        assert_eq!(
            error(
                r#"{"table":"file","related":[{"correlation":{"parentField":["updatedAt"],"childField":["id"]},"subquery":{"table":"user","alias":"owner"}}]}"#
            ),
            "related[0].correlation: file.updatedAt (number) cannot be correlated with user.id (string)"
        );
        assert_eq!(
            error(
                r#"{"table":"file","related":[{"correlation":{"parentField":["ownerId"],"childField":["id"]},"subquery":{"table":"usr","alias":"owner"}}]}"#
            ),
            r#"related[0].subquery.table: unknown table "usr""#
        );
        assert_eq!(
            error(&format!(r#"{{"table":"file","where":{}}}"#, r#"{"type":"simple","op":"=","left":{"type":"column","name":"ownerId"},"right":{"type":"static","anchor":"authData","field":"sub"}}"#)),
            "where.right: unresolved static parameter authData.sub (static parameters must be bound before the query engine sees the query)"
        );
        assert_eq!(
            error(&format!(
                r#"{{"table":"file","where":{}}}"#,
                simple("updatedAt", "<", "\"x\"")
            )),
            r#"where: cannot compare column "updatedAt" (number) with a string"#
        );
        assert_eq!(
            error(&format!(
                r#"{{"table":"file","where":{}}}"#,
                simple("updatedAt", "LIKE", "\"1%\"")
            )),
            r#"where: LIKE needs a string column, "updatedAt" has type number"#
        );
        assert_eq!(
            error(&format!(
                r#"{{"table":"file","where":{}}}"#,
                simple("name", "LIKE", "\"a\\\\\"")
            )),
            "where.right.value: LIKE pattern must not end with escape character"
        );
        assert_eq!(
            error(&format!(
                r#"{{"table":"file","where":{}}}"#,
                simple("name", "IN", "\"a\"")
            )),
            "where.right.value: IN needs an array, got string"
        );
        assert_eq!(
            error(&format!(
                r#"{{"table":"file","where":{}}}"#,
                simple("name", "=", "[\"a\"]")
            )),
            "where.right.value: an array is only allowed with IN and NOT IN"
        );
        assert_eq!(
            error(&format!(
                r#"{{"table":"user","where":{}}}"#,
                simple("prefs", "=", "\"a\"")
            )),
            r#"where: column "prefs" has type json; only IS NULL / IS NOT NULL can test it"#
        );
        assert_eq!(
            error(r#"{"table":"user","orderBy":[["prefs","asc"]]}"#),
            r#"orderBy[0][0]: cannot order by column "prefs", which has type json"#
        );
        assert_eq!(
            error(
                r#"{"table":"file","where":{"type":"correlatedSubquery","op":"EXISTS","related":{"correlation":{"parentField":["ownerId"],"childField":["id"]},"subquery":{"table":"user","start":{"row":{},"exclusive":true}}}}}"#
            ),
            "where.related.subquery.start: EXISTS subqueries must not have start"
        );
    }

    #[test]
    fn typed_semantics() {
        let check = |cond: &str, vals: &[Val], expected: bool| {
            let plan = compile_json(&format!(r#"{{"table":"user","where":{cond}}}"#)).unwrap();
            let got = plan.nodes[0].cond.eval(vals, &mut |_| Ok(false)).unwrap();
            assert_eq!(got, expected, "{cond} on {vals:?}");
        };
        let row = |name: Option<&str>, age: Option<i64>, admin: Option<bool>| {
            vec![
                Val::Text(Arc::from("u1")),
                name.map_or(Val::Null, |n| Val::Text(Arc::from(n))),
                age.map_or(Val::Null, Val::Int),
                admin.map_or(Val::Null, |b| Val::Int(i64::from(b))),
                Val::Null,
            ]
        };
        let bob = row(Some("Bob"), Some(30), Some(true));
        let nobody = row(None, None, None);
        check(&simple("name", "=", "\"Bob\""), &bob, true);
        check(&simple("name", "=", "null"), &bob, false);
        check(&simple("name", "!=", "null"), &bob, false);
        check(&simple("name", "IS", "null"), &nobody, true);
        check(&simple("name", "IS NOT", "null"), &bob, true);
        check(&simple("name", "IS NOT", "\"Bob\""), &nobody, true);
        check(&simple("name", "!=", "\"Bob\""), &nobody, false);
        check(&simple("name", "=", "5"), &bob, false);
        check(&simple("name", "!=", "5"), &bob, true);
        check(&simple("name", "!=", "5"), &nobody, false);
        check(&simple("name", "IS NOT", "5"), &bob, true);
        check(&simple("admin", "=", "true"), &bob, true);
        check(&simple("admin", "=", "1"), &bob, false);
        check(&simple("age", ">=", "30"), &bob, true);
        check(&simple("age", ">", "29.5"), &bob, true);
        check(&simple("age", "<", "30"), &nobody, false);
        check(&simple("age", "IN", "[1, 30, \"30\"]"), &bob, true);
        check(&simple("age", "IN", "[\"30\"]"), &bob, false);
        check(&simple("age", "NOT IN", "[\"30\"]"), &bob, true);
        check(&simple("age", "NOT IN", "[]"), &nobody, false);
        check(&simple("name", "ILIKE", "\"b%\""), &bob, true);
        check(&simple("name", "LIKE", "\"b%\""), &bob, false);
        check(&simple("name", "NOT LIKE", "\"b%\""), &nobody, false);
        check(&simple("prefs", "IS", "null"), &bob, true);
        // Literal on the left.
        check(
            r#"{"type":"simple","op":"=","left":{"type":"literal","value":1},"right":{"type":"literal","value":1}}"#,
            &bob,
            true,
        );
        check(
            r#"{"type":"simple","op":"=","left":{"type":"literal","value":1},"right":{"type":"literal","value":0}}"#,
            &bob,
            false,
        );
        check(
            r#"{"type":"simple","op":"IS","left":{"type":"literal","value":null},"right":{"type":"literal","value":null}}"#,
            &bob,
            true,
        );
        check(
            r#"{"type":"simple","op":"IN","left":{"type":"literal","value":"a"},"right":{"type":"literal","value":["a"]}}"#,
            &bob,
            true,
        );
        check(r#"{"type":"and","conditions":[]}"#, &bob, true);
        check(r#"{"type":"or","conditions":[]}"#, &bob, false);
    }

    #[test]
    fn sql_matches_rust_evaluation() {
        // Every simple condition is run through SQLite and through `Cond::eval` over a small
        // table; the two must agree row for row.
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        super::super::like::register(&conn).unwrap();
        conn.execute_batch(
            r#"CREATE TABLE "user" ("id" TEXT, "name" TEXT, "age" INTEGER, "admin" INTEGER, "prefs" TEXT, "_0_version" TEXT);
               INSERT INTO "user" VALUES ('u1','Bob',30,1,NULL,'01'),('u2','bobby',NULL,0,'{}','01'),('u3',NULL,7,NULL,NULL,'01'),
                 ('u4','Émile',30,0,NULL,'01'),('u5','50%',-2,1,NULL,'01'),('u6','',0,0,NULL,'01');"#,
        )
        .unwrap();
        let conds = [
            simple("name", "=", "\"Bob\""),
            simple("name", "!=", "\"Bob\""),
            simple("name", "<", "\"b\""),
            simple("name", ">=", "\"bob\""),
            simple("name", "IS", "null"),
            simple("name", "IS NOT", "\"Bob\""),
            simple("name", "=", "3"),
            simple("name", "!=", "3"),
            simple("name", "LIKE", "\"b%\""),
            simple("name", "NOT LIKE", "\"b%\""),
            simple("name", "ILIKE", "\"B%\""),
            simple("name", "NOT ILIKE", "\"%É%\""),
            simple("name", "LIKE", "\"50\\\\%\""),
            simple("age", "IN", "[30, 7, \"x\"]"),
            simple("age", "NOT IN", "[30]"),
            simple("age", "NOT IN", "[]"),
            simple("age", "<=", "7.5"),
            simple("admin", "=", "false"),
            simple("admin", "!=", "true"),
            simple("admin", "IS NOT", "true"),
            simple("prefs", "IS NOT", "null"),
            format!(
                r#"{{"type":"or","conditions":[{},{}]}}"#,
                simple("age", ">", "10"),
                simple("name", "IS", "null")
            ),
        ];
        for cond in &conds {
            let plan = compile_json(&format!(r#"{{"table":"user","where":{cond}}}"#)).unwrap();
            let node = &plan.nodes[0];
            let table = &node.table;
            let params = node.select.bind(&[], &[], None);
            let mut stmt = conn.prepare(&node.select.sql).unwrap();
            let mut sql_rows: Vec<String> = stmt
                .query_map(rusqlite::params_from_iter(params), |r| table.read_row(r))
                .unwrap()
                .map(|r| r.unwrap().key.to_string())
                .collect();
            sql_rows.sort();
            let mut all = conn
                .prepare(&format!(
                    "SELECT {} FROM \"user\" AS t0 ORDER BY t0.id",
                    table.select_list("t0")
                ))
                .unwrap();
            let rust_rows: Vec<String> = all
                .query_map([], |r| table.read_row(r))
                .unwrap()
                .map(Result::unwrap)
                .filter(|row| node.cond.eval(&row.vals, &mut |_| Ok(false)).unwrap())
                .map(|row| row.key.to_string())
                .collect();
            assert_eq!(sql_rows, rust_rows, "{cond}");
        }
    }

    #[test]
    fn start_bounds_in_sql_and_rust_agree() {
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        conn.execute_batch(
            r#"CREATE TABLE "file" ("id" TEXT, "name" TEXT, "ownerId" TEXT, "updatedAt" INTEGER, "shared" INTEGER, "_0_version" TEXT);
               INSERT INTO "file" VALUES ('f1','a','u1',5,0,'01'),('f2','b','u1',NULL,0,'01'),('f3','c','u2',5,1,'01'),
                 ('f4','d','u2',9,0,'01'),('f5','e','u3',NULL,1,'01'),('f6','f','u3',1,0,'01');"#,
        )
        .unwrap();
        for dir in ["asc", "desc"] {
            for start in [
                r#"{"updatedAt":5,"id":"f1"}"#,
                r#"{"updatedAt":null,"id":"f2"}"#,
                r#"{"updatedAt":5}"#,
                r#"{}"#,
                r#"{"updatedAt":9,"id":"f9"}"#,
            ] {
                for exclusive in [true, false] {
                    let text = format!(
                        r#"{{"table":"file","orderBy":[["updatedAt","{dir}"]],"start":{{"row":{start},"exclusive":{exclusive}}}}}"#
                    );
                    let plan = compile_json(&text).unwrap();
                    let node = &plan.nodes[0];
                    let table = &node.table;
                    let mut stmt = conn.prepare(&node.select.sql).unwrap();
                    let mut sql_rows: Vec<Row> = stmt
                        .query_map(rusqlite::params_from_iter(node.select.bind(&[], &[], None)), |r| {
                            table.read_row(r)
                        })
                        .unwrap()
                        .map(Result::unwrap)
                        .collect();
                    sql_rows.sort_by(|a, b| node.cmp_sort(&node.sort_key(&a.vals), &node.sort_key(&b.vals)));
                    let sql_rows: Vec<String> = sql_rows.iter().map(|r| r.key.to_string()).collect();
                    let mut all = conn
                        .prepare(&format!("SELECT {} FROM \"file\" AS t0", table.select_list("t0")))
                        .unwrap();
                    let mut rows: Vec<Row> = all
                        .query_map([], |r| table.read_row(r))
                        .unwrap()
                        .map(Result::unwrap)
                        .collect();
                    rows.sort_by(|a, b| node.cmp_sort(&node.sort_key(&a.vals), &node.sort_key(&b.vals)));
                    let rust_rows: Vec<String> = rows
                        .iter()
                        .filter(|r| node.after_start(&node.sort_key(&r.vals)))
                        .map(|r| r.key.to_string())
                        .collect();
                    assert_eq!(sql_rows, rust_rows, "{text}");
                }
            }
        }
    }

    #[test]
    fn exists_nodes_and_limits() {
        let exists = |system: &str, flip: bool, limit: &str| {
            format!(
                r#"{{"table":"file","where":{{"type":"correlatedSubquery","op":"EXISTS","flip":{flip},"related":{{"system":"{system}","correlation":{{"parentField":["id"],"childField":["fileId"]}},"subquery":{{"table":"file_state","alias":"s"{limit}}}}}}}}}"#
            )
        };
        let plan = compile_json(&exists("client", false, "")).unwrap();
        assert_eq!(plan.nodes.len(), 2);
        assert_eq!(plan.nodes[1].kind, NodeKind::Exists { not: false });
        assert_eq!(plan.nodes[1].limit, Some(EXISTS_LIMIT));
        assert!(plan.nodes[1].synced);
        assert!(
            plan.nodes[0]
                .select
                .sql
                .contains(r#"t0."id" IN (SELECT t1."fileId" FROM "file_state" AS t1 WHERE 1)"#),
            "{}",
            plan.nodes[0].select.sql
        );
        let plan = compile_json(&exists("permissions", false, "")).unwrap();
        assert_eq!(plan.nodes[1].limit, Some(PERMISSIONS_EXISTS_LIMIT));
        assert!(!plan.nodes[1].synced);
        let plan = compile_json(&exists("client", true, r#","limit":7"#)).unwrap();
        assert_eq!(plan.nodes[1].limit, Some(7));
        let plan = compile_json(&exists("client", false, r#","limit":0"#)).unwrap();
        assert!(matches!(
            plan.nodes[0].cond,
            Cond::Exists {
                constant: Some(false),
                ..
            }
        ));
    }

    #[test]
    fn scalar_subqueries_get_companions() {
        let text = r#"{"table":"file","where":{"type":"correlatedSubquery","op":"EXISTS","scalar":true,"related":{"correlation":{"parentField":["ownerId"],"childField":["id"]},
            "subquery":{"table":"user","alias":"owner","where":{"type":"simple","op":"=","left":{"type":"column","name":"id"},"right":{"type":"literal","value":"u1"}}}}}}"#;
        let plan = compile_json(text).unwrap();
        assert_eq!(plan.roots, vec![0, 2]);
        assert_eq!(plan.nodes[2].kind, NodeKind::Companion);
        assert!(plan.nodes[2].link.is_none());
    }

    #[test]
    fn related_aliases_last_wins() {
        let text = r#"{"table":"file","related":[
            {"correlation":{"parentField":["ownerId"],"childField":["id"]},"subquery":{"table":"user","alias":"owner","limit":1}},
            {"correlation":{"parentField":["id"],"childField":["fileId"]},"subquery":{"table":"file_state","alias":"states"}},
            {"correlation":{"parentField":["ownerId"],"childField":["id"]},"subquery":{"table":"user","alias":"owner","limit":2}}]}"#;
        let plan = compile_json(text).unwrap();
        assert_eq!(plan.nodes.len(), 3);
        assert_eq!(plan.nodes[1].limit, Some(2));
        assert_eq!(plan.nodes[2].table.name, "file_state");
    }
}
