//! What the view syncer needs besides query maintenance:
//!
//! * current row values by key ([`QueryEngine::fetch_rows`]): a client catching up from its
//!   cookie gets the rows its CVR says changed since, by key;
//! * the replica's tables as clients may declare them ([`QueryEngine::client_tables`]), for the
//!   client-schema check on connect;
//! * [`read_patch`]: a patch turned into what a poke and a CVR flush need, row by row: the
//!   row's canonical key (the one text per key that the CVR, the engine and Postgres `jsonb`
//!   agree on, see [`canonical_json`]), its version, and its client op already encoded, so that
//!   pokes of thousands of rows are assembled by joining strings.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use rusqlite::{params_from_iter, OptionalExtension};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;

use super::QueryEngine;
use crate::error::{Error, Result};
use crate::ivm::value::{write_json_str, FastMap};

impl QueryEngine {
    /// The current value of each `(table, row key)` (row keys as in patches), read in one read
    /// transaction, as a patch of puts: `{"version": …, "ops": [{"op": "put", "table", "value",
    /// "rowKey", "rowVersion"}, …], "queryErrors": {}}` in request order; keys whose row (or
    /// table) no longer exists are left out, as are keys that do not name the table's primary
    /// key.
    pub fn fetch_rows(&mut self, keys: &[(String, String)]) -> Result<Vec<u8>> {
        self.db.read(|db, version| {
            let mut out = String::with_capacity(64 + keys.len() * 160);
            out.push_str("{\"version\":");
            write_json_str(&mut out, version);
            out.push_str(",\"ops\":[");
            let mut first = true;
            for (table, key) in keys {
                let Some(info) = db.tables.get(table) else { continue };
                let Some(params) = info.key_values(key) else { continue };
                let mut stmt = db.conn.prepare_cached(&info.by_key_sql)?;
                let Some(row) = stmt
                    .query_row(params_from_iter(params), |r| info.read_row(r))
                    .optional()?
                else {
                    continue;
                };
                if !first {
                    out.push(',');
                }
                first = false;
                out.push_str("{\"op\":\"put\",\"table\":");
                write_json_str(&mut out, table);
                out.push_str(",\"rowKey\":");
                out.push_str(&row.key);
                out.push_str(",\"value\":");
                info.write_row_json(&mut out, &row);
                out.push_str(",\"rowVersion\":");
                write_json_str(&mut out, &row.version);
                out.push('}');
            }
            out.push_str("],\"queryErrors\":{}}");
            Ok(out.into_bytes())
        })
    }

    /// The replica's tables as a client schema sees them: `{"version": …, "replicaVersion": …,
    /// "tables": {"<name>": {"columns": {"<col>": "string"|"number"|"boolean"|"json"},
    /// "unsupported": {"<col>": "<upstream type>"}, "primaryKey": [...]}}}`.
    pub fn client_tables(&mut self) -> Result<Vec<u8>> {
        self.db.read(|db, version| {
            let replica_version: String = db.conn.query_row(
                r#"SELECT "replica_version" FROM "_zcache_replication_config""#,
                [],
                |r| r.get(0),
            )?;
            let mut names: Vec<&String> = db.tables.keys().collect();
            names.sort();
            let mut out = String::new();
            out.push_str("{\"version\":");
            write_json_str(&mut out, version);
            out.push_str(",\"replicaVersion\":");
            write_json_str(&mut out, &replica_version);
            out.push_str(",\"tables\":{");
            for (i, name) in names.into_iter().enumerate() {
                let info = &db.tables[name];
                if i > 0 {
                    out.push(',');
                }
                write_json_str(&mut out, name);
                out.push_str(":{\"columns\":{");
                for (j, c) in info.cols.iter().enumerate() {
                    if j > 0 {
                        out.push(',');
                    }
                    write_json_str(&mut out, &c.name);
                    out.push(':');
                    write_json_str(&mut out, c.kind.client_type().unwrap_or("string"));
                }
                out.push_str("},\"unsupported\":{");
                let mut first = true;
                for c in &info.spec.columns {
                    if info.col(&c.name).is_some() {
                        continue;
                    }
                    if !first {
                        out.push(',');
                    }
                    first = false;
                    write_json_str(&mut out, &c.name);
                    out.push(':');
                    write_json_str(&mut out, &c.type_name);
                }
                out.push_str("},\"primaryKey\":[");
                for (j, &k) in info.pk.iter().enumerate() {
                    if j > 0 {
                        out.push(',');
                    }
                    write_json_str(&mut out, &info.cols[k].name);
                }
                out.push_str("]}");
            }
            out.push_str("}}");
            Ok(out.into_bytes())
        })
    }
}

#[derive(Deserialize)]
struct PatchIn<'a> {
    #[serde(borrow)]
    version: Cow<'a, str>,
    #[serde(borrow)]
    ops: Vec<OpIn<'a>>,
    #[serde(rename = "queryErrors")]
    query_errors: BTreeMap<String, String>,
}

/// An op as the engine writes it; the row's value is kept as its text (the engine wrote it as
/// the client gets it), never parsed.
#[derive(Deserialize)]
struct OpIn<'a> {
    #[serde(borrow)]
    op: Cow<'a, str>,
    #[serde(borrow)]
    table: Cow<'a, str>,
    #[serde(rename = "rowKey", borrow)]
    row_key: &'a RawValue,
    #[serde(default, borrow)]
    value: Option<&'a RawValue>,
    #[serde(rename = "rowVersion", default, borrow)]
    row_version: Option<Cow<'a, str>>,
}

/// One row of a patch: its table, canonical key, version (`None`: deleted) and client op
/// (`{"op":"put","tableName","value"}` or `{"op":"del","tableName","id"}`). Table names, keys
/// and versions are shared with the engine's own (no copy per row).
#[derive(Debug, Clone, PartialEq)]
pub struct RowOp {
    pub table: Arc<str>,
    pub key: Arc<str>,
    pub row_version: Option<Arc<str>>,
    pub op: String,
}

impl RowOp {
    /// The `del` op of a row known by its table and canonical key.
    #[must_use]
    pub fn deleted(table: Arc<str>, key: Arc<str>) -> RowOp {
        let mut op = String::with_capacity(40 + table.len() + key.len());
        op.push_str("{\"op\":\"del\",\"tableName\":");
        write_json_str(&mut op, &table);
        op.push_str(",\"id\":");
        op.push_str(&key);
        op.push('}');
        RowOp {
            table,
            key,
            row_version: None,
            op,
        }
    }
}

/// A patch (engine patch or [`QueryEngine::fetch_rows`] result) read for a poke and a flush.
pub struct PatchView {
    pub version: String,
    pub rows: Vec<RowOp>,
    pub query_errors: Vec<(String, String)>,
}

fn malformed(what: &'static str, detail: String) -> Error {
    Error::Malformed { what, detail }
}

/// A row key in canonical form. A compact key of one column (`{"id":…}`, as the engine writes
/// keys, with `serde_json`'s number and string forms) is canonical already; others are sorted.
fn canonical_key(raw: &str) -> Result<String> {
    if is_compact_single_member(raw.as_bytes()) {
        Ok(raw.to_owned())
    } else {
        canonical_json(raw)
    }
}

/// [`canonical_key`] of a key the engine holds: the same text when it is canonical already.
pub(crate) fn canonical_key_of(raw: &Arc<str>) -> Result<Arc<str>> {
    if is_compact_single_member(raw.as_bytes()) {
        Ok(raw.clone())
    } else {
        canonical_json(raw).map(Arc::from)
    }
}

fn is_compact_single_member(b: &[u8]) -> bool {
    if b.len() < 2 || b[0] != b'{' || b[b.len() - 1] != b'}' {
        return false;
    }
    let (mut in_str, mut escaped) = (false, false);
    for &c in &b[1..b.len() - 1] {
        if in_str {
            if escaped {
                escaped = false;
            } else if c == b'\\' {
                escaped = true;
            } else if c == b'"' {
                in_str = false;
            }
        } else {
            match c {
                b'"' => in_str = true,
                b',' | b'{' | b'[' | b' ' | b'\n' | b'\t' | b'\r' => return false,
                _ => {}
            }
        }
    }
    true
}

/// Reads a patch; see [`PatchView`].
pub fn read_patch(patch: &[u8]) -> Result<PatchView> {
    let patch: PatchIn<'_> = serde_json::from_slice(patch).map_err(|e| malformed("query engine patch", e.to_string()))?;
    let mut rows = Vec::with_capacity(patch.ops.len());
    let mut table: Arc<str> = Arc::from("");
    for op in patch.ops {
        let key: Arc<str> = Arc::from(canonical_key(op.row_key.get())?);
        // Consecutive ops mostly name the same table: one name for all of them.
        if *table != *op.table {
            table = Arc::from(op.table.as_ref());
        }
        let row = match (op.op.as_ref(), op.value, op.row_version) {
            ("put", Some(value), Some(version)) => {
                let value = value.get();
                let mut text = String::with_capacity(40 + op.table.len() + value.len());
                text.push_str("{\"op\":\"put\",\"tableName\":");
                write_json_str(&mut text, &op.table);
                text.push_str(",\"value\":");
                text.push_str(value);
                text.push('}');
                RowOp {
                    table: table.clone(),
                    key,
                    row_version: Some(Arc::from(version.as_ref())),
                    op: text,
                }
            }
            ("del", _, _) => RowOp::deleted(table.clone(), key),
            (other, _, _) => return Err(malformed("query engine patch", format!("unusable op {other:?}"))),
        };
        rows.push(row);
    }
    Ok(PatchView {
        version: patch.version.into_owned(),
        rows,
        query_errors: patch.query_errors.into_iter().collect(),
    })
}

/// The row changes of one view-syncer change, merged from its patches in order: a later op of a
/// row replaces an earlier one (keeping the row's first position). What the poke's `rowsPatch`
/// and the CVR flush's row records are built from, without a Python object per row.
#[derive(Default)]
pub struct RowChanges {
    /// Each row's index in `rows`, by (table, key), once `indexed` (see [`RowChanges::of_unique`]).
    slots: FastMap<(Arc<str>, Arc<str>), usize>,
    indexed: bool,
    rows: Vec<RowOp>,
}

impl RowChanges {
    /// Rows known to name each (table, key) once (an engine call's patch): nothing is indexed
    /// until more rows come in.
    #[must_use]
    pub fn of_unique(rows: Vec<RowOp>) -> RowChanges {
        RowChanges {
            slots: FastMap::default(),
            indexed: false,
            rows,
        }
    }

    #[must_use]
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    pub fn rows(&self) -> &[RowOp] {
        &self.rows
    }

    fn index(&mut self) {
        if !self.indexed {
            self.slots.clear();
            self.slots.reserve(self.rows.len());
            for (i, r) in self.rows.iter().enumerate() {
                self.slots.insert((r.table.clone(), r.key.clone()), i);
            }
            self.indexed = true;
        }
    }

    pub fn insert(&mut self, row: RowOp) {
        use std::collections::hash_map::Entry;
        self.index();
        match self.slots.entry((row.table.clone(), row.key.clone())) {
            Entry::Occupied(o) => self.rows[*o.get()] = row,
            Entry::Vacant(v) => {
                v.insert(self.rows.len());
                self.rows.push(row);
            }
        }
    }

    /// Merges a patch's rows; returns its version and query errors.
    pub fn merge(&mut self, patch: &[u8]) -> Result<(String, Vec<(String, String)>)> {
        let view = read_patch(patch)?;
        if self.rows.is_empty() {
            self.rows.reserve(view.rows.len());
            self.slots.reserve(view.rows.len());
        }
        for row in view.rows {
            self.insert(row);
        }
        Ok((view.version, view.query_errors))
    }

    /// Moves `other`'s rows in after this one's.
    pub fn absorb(&mut self, other: &mut RowChanges) {
        let theirs = std::mem::take(other);
        if self.rows.is_empty() {
            *self = theirs;
            return;
        }
        self.index();
        self.slots.reserve(theirs.rows.len());
        for row in theirs.rows {
            self.insert(row);
        }
    }

    /// Against what the CVR records (`(table, key)` → row version): keeps the puts of rows not
    /// recorded at that version and the deletes of recorded rows, and deletes the recorded rows
    /// the change does not put.
    pub fn diff_recorded(&mut self, recorded: &HashMap<(String, String), String>) {
        let held: std::collections::HashSet<(String, String)> = self
            .rows
            .iter()
            .filter(|r| r.row_version.is_some())
            .map(|r| (r.table.to_string(), r.key.to_string()))
            .collect();
        let rows = std::mem::take(self).rows;
        for r in rows {
            let slot = (r.table.to_string(), r.key.to_string());
            let keep = match &r.row_version {
                Some(v) => recorded.get(&slot).map(String::as_str) != Some(&**v),
                None => recorded.contains_key(&slot),
            };
            if keep {
                self.insert(r);
            }
        }
        let mut gone: Vec<&(String, String)> = recorded.keys().filter(|k| !held.contains(*k)).collect();
        gone.sort();
        for (table, key) in gone {
            self.insert(RowOp::deleted(Arc::from(table.as_str()), Arc::from(key.as_str())));
        }
    }

    /// Appends the CVR row records of this change, made at `patch_version` by `group`, sorted
    /// by table and key (neighbouring index entries).
    pub fn write_records(&self, group: &str, patch_version: &str, out: &mut RecordArrays) {
        let mut order: Vec<&RowOp> = self.rows.iter().collect();
        order.sort_unstable_by(|a, b| (&a.table, &a.key).cmp(&(&b.table, &b.key)));
        for r in order {
            let cols: &mut [String] = match &r.row_version {
                Some(v) => {
                    out.puts += 1;
                    push_array_item(&mut out.put[3], v);
                    &mut out.put
                }
                None => {
                    out.dels += 1;
                    &mut out.del
                }
            };
            push_array_item(&mut cols[0], group);
            push_array_item(&mut cols[1], &r.table);
            push_array_item(&mut cols[2], &r.key);
            let last = cols.len() - 1;
            push_array_item(&mut cols[last], patch_version);
        }
    }
}

/// CVR row records as Postgres text-array literals (`{"…","…"}`), column by column: puts as
/// (group, table, key, row version, patch version), deletes as (group, table, key, patch
/// version). One statement parameter per column, whatever the number of rows.
pub struct RecordArrays {
    pub put: [String; 5],
    pub del: [String; 4],
    pub puts: usize,
    pub dels: usize,
}

impl Default for RecordArrays {
    fn default() -> Self {
        RecordArrays {
            put: std::array::from_fn(|_| String::from("{")),
            del: std::array::from_fn(|_| String::from("{")),
            puts: 0,
            dels: 0,
        }
    }
}

impl RecordArrays {
    #[must_use]
    pub fn finish(mut self) -> ([String; 5], [String; 4]) {
        for s in self.put.iter_mut().chain(self.del.iter_mut()) {
            s.push('}');
        }
        (self.put, self.del)
    }
}

/// Appends one element to a Postgres text-array literal being built (quoted, `"` and `\`
/// escaped, so any text round-trips).
fn push_array_item(out: &mut String, item: &str) {
    if out.len() > 1 {
        out.push(',');
    }
    out.push('"');
    if item.bytes().any(|b| b == b'"' || b == b'\\') {
        for c in item.chars() {
            if c == '"' || c == '\\' {
                out.push('\\');
            }
            out.push(c);
        }
    } else {
        out.push_str(item);
    }
    out.push('"');
}

/// The canonical text of a JSON value: compact, object keys sorted by their bytes. Row keys
/// from the engine and from Postgres `jsonb` become the same text this way.
pub fn canonical_json(text: &str) -> Result<String> {
    let value: Value = serde_json::from_str(text).map_err(|e| malformed("JSON text", e.to_string()))?;
    Ok(serde_json::to_string(&value).expect("a JSON value serialises"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patches_become_row_ops_with_canonical_keys() {
        let patch = br#"{"version":"5a","ops":[
            {"op":"put","table":"file_state","value":{"userId":"u1","fileId":"f1","n":1.5},"rowKey":{"userId":"u1","fileId":"f1"},"rowVersion":"4z"},
            {"op":"del","table":"file","rowKey":{"id":"f\"2"}}],
            "queryErrors":{"q1":"boom"}}"#;
        let view = read_patch(patch).unwrap();
        assert_eq!(view.version, "5a");
        assert_eq!(&*view.rows[0].key, r#"{"fileId":"f1","userId":"u1"}"#);
        assert_eq!(view.rows[0].row_version.as_deref(), Some("4z"));
        assert_eq!(
            view.rows[0].op,
            r#"{"op":"put","tableName":"file_state","value":{"userId":"u1","fileId":"f1","n":1.5}}"#
        );
        assert_eq!(view.rows[1].row_version, None);
        assert_eq!(view.rows[1].op, r#"{"op":"del","tableName":"file","id":{"id":"f\"2"}}"#);
        assert_eq!(view.query_errors, vec![("q1".to_owned(), "boom".to_owned())]);
        assert!(read_patch(b"{}").is_err());
    }

    #[test]
    fn single_member_keys_pass_through_and_others_are_canonicalised() {
        assert_eq!(canonical_key(r#"{"id":"a,b"}"#).unwrap(), r#"{"id":"a,b"}"#);
        assert_eq!(canonical_key(r#"{"id":"a\"{,"}"#).unwrap(), r#"{"id":"a\"{,"}"#);
        assert_eq!(canonical_key(r#"{"b":1,"a":2}"#).unwrap(), r#"{"a":2,"b":1}"#);
        assert_eq!(canonical_key(r#"{ "id": 1 }"#).unwrap(), r#"{"id":1}"#);
    }

    fn put(table: &str, key: &str, version: &str) -> String {
        format!(r#"{{"op":"put","table":"{table}","value":{{"v":"{version}"}},"rowKey":{key},"rowVersion":"{version}"}}"#)
    }

    #[test]
    fn row_changes_merge_in_order_later_ops_replacing_earlier_ones() {
        let mut rows = RowChanges::default();
        let first = format!(r#"{{"version":"1","ops":[{},{}],"queryErrors":{{}}}}"#, put("t", r#"{"id":"a"}"#, "1"), put("t", r#"{"id":"b"}"#, "1"));
        let second = format!(
            r#"{{"version":"2","ops":[{{"op":"del","table":"t","rowKey":{{"id":"a"}}}},{}],"queryErrors":{{"q":"x"}}}}"#,
            put("u", r#"{"id":"a"}"#, "2")
        );
        assert_eq!(rows.merge(first.as_bytes()).unwrap(), ("1".to_owned(), vec![]));
        assert_eq!(rows.merge(second.as_bytes()).unwrap(), ("2".to_owned(), vec![("q".to_owned(), "x".to_owned())]));
        let got: Vec<(&str, &str, Option<&str>)> =
            rows.rows().iter().map(|r| (&*r.table, &*r.key, r.row_version.as_deref())).collect();
        assert_eq!(
            got,
            vec![("t", r#"{"id":"a"}"#, None), ("t", r#"{"id":"b"}"#, Some("1")), ("u", r#"{"id":"a"}"#, Some("2"))]
        );
        assert_eq!(rows.rows()[0].op, r#"{"op":"del","tableName":"t","id":{"id":"a"}}"#);
        let mut more = RowChanges::default();
        more.insert(RowOp::deleted("t".into(), r#"{"id":"b"}"#.into()));
        rows.absorb(&mut more);
        assert!(more.is_empty());
        assert_eq!(rows.len(), 3);
        assert_eq!(rows.rows()[1].row_version, None);
    }

    #[test]
    fn unique_rows_are_indexed_once_more_rows_come_in() {
        let op = |key: &str, version: &str| RowOp {
            table: "t".into(),
            key: key.into(),
            row_version: Some(version.into()),
            op: String::new(),
        };
        let mut rows = RowChanges::of_unique(vec![op("a", "1"), op("b", "1")]);
        rows.insert(op("a", "2"));
        let mut more = RowChanges::of_unique(vec![op("b", "3"), op("c", "3")]);
        rows.absorb(&mut more);
        assert!(more.is_empty());
        let got: Vec<(&str, Option<&str>)> = rows.rows().iter().map(|r| (&*r.key, r.row_version.as_deref())).collect();
        assert_eq!(got, vec![("a", Some("2")), ("b", Some("3")), ("c", Some("3"))]);
        // Absorbed into an empty set, unique rows stay unindexed until another insert.
        let mut empty = RowChanges::default();
        let mut unique = RowChanges::of_unique(vec![op("a", "1")]);
        empty.absorb(&mut unique);
        empty.insert(op("a", "4"));
        assert_eq!(empty.len(), 1);
        assert_eq!(empty.rows()[0].row_version.as_deref(), Some("4"));
    }

    #[test]
    fn diff_recorded_keeps_what_differs_and_deletes_what_is_gone() {
        let mut rows = RowChanges::default();
        let patch = format!(
            r#"{{"version":"1","ops":[{},{},{{"op":"del","table":"t","rowKey":{{"id":"d"}}}},{{"op":"del","table":"t","rowKey":{{"id":"e"}}}}],"queryErrors":{{}}}}"#,
            put("t", r#"{"id":"same"}"#, "1"),
            put("t", r#"{"id":"newer"}"#, "2")
        );
        rows.merge(patch.as_bytes()).unwrap();
        let recorded: HashMap<(String, String), String> = [
            (("t", r#"{"id":"same"}"#), "1"),
            (("t", r#"{"id":"newer"}"#), "1"),
            (("t", r#"{"id":"d"}"#), "1"),
            (("t", r#"{"id":"gone"}"#), "1"),
        ]
        .into_iter()
        .map(|((t, k), v)| ((t.to_owned(), k.to_owned()), v.to_owned()))
        .collect();
        rows.diff_recorded(&recorded);
        let got: Vec<(&str, Option<&str>)> = rows.rows().iter().map(|r| (&*r.key, r.row_version.as_deref())).collect();
        assert_eq!(got, vec![(r#"{"id":"newer"}"#, Some("2")), (r#"{"id":"d"}"#, None), (r#"{"id":"gone"}"#, None)]);
    }

    #[test]
    fn record_arrays_are_sorted_escaped_literals() {
        let mut rows = RowChanges::default();
        rows.insert(RowOp { table: "t".into(), key: r#"{"id":"b\\"}"#.into(), row_version: Some("2".into()), op: String::new() });
        rows.insert(RowOp::deleted("t".into(), r#"{"id":"c"}"#.into()));
        rows.insert(RowOp { table: "t".into(), key: r#"{"id":"a"}"#.into(), row_version: Some("1".into()), op: String::new() });
        let mut arrays = RecordArrays::default();
        rows.write_records("g", "9", &mut arrays);
        RowChanges::default().write_records("h", "9", &mut arrays);
        assert_eq!((arrays.puts, arrays.dels), (2, 1));
        let (put, del) = arrays.finish();
        assert_eq!(put[0], r#"{"g","g"}"#);
        assert_eq!(put[1], r#"{"t","t"}"#);
        assert_eq!(put[2], r#"{"{\"id\":\"a\"}","{\"id\":\"b\\\\\"}"}"#);
        assert_eq!(put[3], r#"{"1","2"}"#);
        assert_eq!(put[4], r#"{"9","9"}"#);
        assert_eq!(del, [r#"{"g"}"#, r#"{"t"}"#, r#"{"{\"id\":\"c\"}"}"#, r#"{"9"}"#].map(String::from));
        assert_eq!(RecordArrays::default().finish().1, ["{}", "{}", "{}", "{}"].map(String::from));
    }

    #[test]
    fn canonical_json_sorts_and_compacts() {
        assert_eq!(canonical_json(r#"{"id": "f1", "a": 2}"#).unwrap(), r#"{"a":2,"id":"f1"}"#);
        assert!(canonical_json("{").is_err());
    }
}
