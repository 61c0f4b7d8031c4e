//! Engine tests over small replicas written directly (layout + change log), and a randomized
//! "incremental == recompute" check: after every transaction, each group's rows must equal
//! those of a fresh engine hydrating the same queries.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use rusqlite::{params, params_from_iter, Connection};

use super::*;
use crate::ivm::plan::tests::specs;
use crate::pg::values::SqlValue;
use crate::replica::layout::{self, METADATA_DDL};
use crate::replica::table::ReplicaTable;
use crate::version::lexi_version;

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A replica file written by hand, as the writer would.
struct TestReplica {
    path: PathBuf,
    conn: Connection,
    tables: HashMap<String, ReplicaTable>,
    lsn: u64,
}

impl Drop for TestReplica {
    fn drop(&mut self) {
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", self.path.display()));
        }
    }
}

enum V {
    S(&'static str),
    O(String),
    I(i64),
    B(bool),
    N,
}

fn sql(v: &V) -> SqlValue {
    match v {
        V::S(s) => SqlValue::Text((*s).to_owned()),
        V::O(s) => SqlValue::Text(s.clone()),
        V::I(i) => SqlValue::Integer(*i),
        V::B(b) => SqlValue::Integer(i64::from(*b)),
        V::N => SqlValue::Null,
    }
}

impl TestReplica {
    fn new() -> TestReplica {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("zcache-ivm-test-{}-{n}.db", std::process::id()));
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
        }
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch("PRAGMA journal_mode = WAL;").unwrap();
        conn.execute_batch(METADATA_DDL).unwrap();
        let mut tables = HashMap::new();
        for spec in specs() {
            let table = ReplicaTable::new(spec.clone()).unwrap();
            layout::create_table(&conn, &spec, &table.columns, "01").unwrap();
            layout::create_primary_key(&conn, &spec).unwrap();
            layout::save_table_spec(&conn, &spec).unwrap();
            tables.insert(table.name.clone(), table);
        }
        conn.execute(
            r#"INSERT INTO "_zcache_replication_config" VALUES (1, '01', 'slot', '[]', 'zero', 0, 0)"#,
            [],
        )
        .unwrap();
        conn.execute(r#"INSERT INTO "_zcache_replication_state" VALUES (1, '01', 1)"#, [])
            .unwrap();
        TestReplica {
            path,
            conn,
            tables,
            lsn: 1,
        }
    }

    /// One upstream transaction.
    fn tx(&mut self, ops: &[Op]) -> String {
        self.lsn += 1;
        let version = lexi_version(self.lsn);
        self.conn.execute_batch("BEGIN").unwrap();
        let mut pos = 0;
        let mut record = |conn: &Connection, table: &str, key: Option<String>, op: &str| {
            pos += 1;
            conn.execute(
                r#"INSERT INTO "_zcache_changes" VALUES (?1, ?2, ?3, ?4, ?5)
                   ON CONFLICT ("table", "row_key") DO UPDATE SET "state_version" = excluded."state_version", "pos" = excluded."pos", "op" = excluded."op""#,
                params![version, pos, table, key, op],
            )
            .unwrap();
        };
        for op in ops {
            match op {
                Op::Set(table, vals) => {
                    let t = &self.tables[*table];
                    let mut values: Vec<SqlValue> = vals.iter().map(sql).collect();
                    values.push(SqlValue::Text(version.clone()));
                    self.conn
                        .execute(&t.upsert_sql(), params_from_iter(values.iter()))
                        .unwrap();
                    let key: Vec<SqlValue> = t.primary_key.iter().map(|&i| sql(&vals[i])).collect();
                    let refs: Vec<&SqlValue> = key.iter().collect();
                    record(&self.conn, table, Some(t.row_key(&refs)), "s");
                }
                Op::Del(table, key) => {
                    let t = &self.tables[*table];
                    let key: Vec<SqlValue> = key.iter().map(sql).collect();
                    self.conn
                        .execute(&t.delete_sql(), params_from_iter(key.iter()))
                        .unwrap();
                    let refs: Vec<&SqlValue> = key.iter().collect();
                    record(&self.conn, table, Some(t.row_key(&refs)), "d");
                }
                Op::Truncate(table) => {
                    self.conn.execute_batch(&format!("DELETE FROM \"{table}\"")).unwrap();
                    self.conn
                        .execute(r#"DELETE FROM "_zcache_changes" WHERE "table" = ?1"#, [table])
                        .unwrap();
                    record(&self.conn, table, None, "t");
                }
            }
        }
        self.conn
            .execute(
                r#"UPDATE "_zcache_replication_state" SET "state_version" = ?1"#,
                [&version],
            )
            .unwrap();
        self.conn.execute_batch("COMMIT").unwrap();
        version
    }
}

enum Op {
    Set(&'static str, Vec<V>),
    Del(&'static str, Vec<V>),
    Truncate(&'static str),
}

fn user(id: &'static str, name: &'static str, age: i64) -> Op {
    Op::Set("user", vec![V::S(id), V::S(name), V::I(age), V::B(false), V::N])
}

fn file(id: &'static str, name: &'static str, owner: &'static str, updated: i64) -> Op {
    Op::Set(
        "file",
        vec![V::S(id), V::S(name), V::S(owner), V::I(updated), V::B(false)],
    )
}

fn state(user: &'static str, file: &'static str, visit: i64) -> Op {
    Op::Set("file_state", vec![V::S(user), V::S(file), V::I(visit)])
}

fn seed(r: &mut TestReplica) {
    r.tx(&[
        user("u1", "Alice", 30),
        user("u2", "Bob", 40),
        user("u3", "Carol", 25),
        file("f1", "alpha", "u1", 10),
        file("f2", "beta", "u1", 20),
        file("f3", "gamma", "u2", 30),
        file("f4", "delta", "u3", 5),
        state("u1", "f1", 100),
        state("u1", "f3", 200),
        state("u2", "f3", 300),
        state("u3", "f2", 50),
    ]);
}

fn simple(col: &str, op: &str, value: &str) -> String {
    format!(
        r#"{{"type":"simple","op":"{op}","left":{{"type":"column","name":"{col}"}},"right":{{"type":"literal","value":{value}}}}}"#
    )
}

fn exists(op: &str, parent: &str, child: &str, table: &str, where_: Option<String>) -> String {
    let w = where_.map(|w| format!(r#","where":{w}"#)).unwrap_or_default();
    format!(
        r#"{{"type":"correlatedSubquery","op":"{op}","related":{{"correlation":{{"parentField":["{parent}"],"childField":["{child}"]}},"subquery":{{"table":"{table}","alias":"zsubq_x"{w}}}}}}}"#
    )
}

fn rows_of(e: &QueryEngine, group: &str) -> Vec<String> {
    e.group_rows(group)
        .into_iter()
        .map(|(t, k, _)| format!("{t} {k}"))
        .collect()
}

/// The group's rows must equal what a fresh engine hydrates for the same queries.
fn assert_matches_fresh(r: &TestReplica, e: &QueryEngine, group: &str, queries: &[(String, String)]) {
    let mut fresh = QueryEngine::open(&r.path).unwrap();
    for (hash, ast) in queries {
        fresh.add_query(group, hash, ast).unwrap();
    }
    assert_eq!(
        e.group_rows(group),
        fresh.group_rows(group),
        "incremental != recompute for {queries:?}"
    );
}

#[test]
fn hydrates_and_patches() {
    let mut r = TestReplica::new();
    seed(&mut r);
    let mut e = QueryEngine::open(&r.path).unwrap();
    let q = format!(r#"{{"table":"file","where":{}}}"#, simple("ownerId", "=", "\"u1\""));
    let patch = e.add_query("g", "q1", &q).unwrap();
    assert_eq!(
        describe_patch(&patch),
        r#"put file {"id":"f1"}; put file {"id":"f2"}; "#
    );
    let v: serde_json::Value = serde_json::from_slice(&patch).unwrap();
    assert_eq!(v["version"], "02");
    assert_eq!(
        v["ops"][0],
        serde_json::json!({"op":"put","table":"file","value":{"id":"f1","name":"alpha","ownerId":"u1","updatedAt":10,"shared":false},"rowKey":{"id":"f1"},"rowVersion":"02"})
    );
    assert_eq!(v["queryErrors"], serde_json::json!({}));
    assert_eq!(e.query_rows("g", "q1").unwrap(), 2);
    assert_eq!(e.group_version("g").unwrap(), "02");

    // Nothing changed: an empty patch.
    let out = e.advance(&["g".to_owned()]).unwrap();
    assert_eq!(describe_patch(&out[0].1), "");

    r.tx(&[
        file("f5", "eps", "u1", 1),
        file("f3", "gamma", "u1", 30),
        file("f1", "alpha", "u2", 10),
        file("f2", "beta2", "u1", 20),
    ]);
    let out = e.advance(&["g".to_owned()]).unwrap();
    assert_eq!(
        describe_patch(&out[0].1),
        r#"put file {"id":"f5"}; put file {"id":"f3"}; del file {"id":"f1"}; put file {"id":"f2"}; "#
    );
    assert_eq!(e.group_version("g").unwrap(), "03");
    r.tx(&[Op::Del("file", vec![V::S("f5")])]);
    let out = e.advance(&["g".to_owned()]).unwrap();
    assert_eq!(describe_patch(&out[0].1), r#"del file {"id":"f5"}; "#);
    assert_matches_fresh(&r, &e, "g", &[("q1".into(), q.clone())]);

    let patch = e.remove_query("g", "q1").unwrap();
    let mut ops: Vec<&str> = describe_patch(&patch)
        .leak()
        .split("; ")
        .filter(|s| !s.is_empty())
        .collect();
    ops.sort_unstable();
    assert_eq!(ops, [r#"del file {"id":"f2"}"#, r#"del file {"id":"f3"}"#]);
    assert!(rows_of(&e, "g").is_empty());
}

#[test]
fn top_n_windows_refill() {
    let mut r = TestReplica::new();
    seed(&mut r);
    let mut e = QueryEngine::open(&r.path).unwrap();
    let q = r#"{"table":"file","orderBy":[["updatedAt","desc"]],"limit":2}"#.to_owned();
    e.add_query("g", "top", &q).unwrap();
    assert_eq!(rows_of(&e, "g"), [r#"file {"id":"f2"}"#, r#"file {"id":"f3"}"#]);
    // A newer file enters, pushing f2 out.
    r.tx(&[file("f9", "new", "u3", 25)]);
    let out = e.advance(&["g".to_owned()]).unwrap();
    assert_eq!(
        describe_patch(&out[0].1),
        r#"put file {"id":"f9"}; del file {"id":"f2"}; "#
    );
    // An older file changes: nothing to do.
    r.tx(&[file("f4", "delta2", "u3", 6)]);
    let out = e.advance(&["g".to_owned()]).unwrap();
    assert_eq!(describe_patch(&out[0].1), "");
    // The top file leaves: refilled from beyond the window.
    r.tx(&[Op::Del("file", vec![V::S("f3")])]);
    let out = e.advance(&["g".to_owned()]).unwrap();
    assert_eq!(
        describe_patch(&out[0].1),
        r#"del file {"id":"f3"}; put file {"id":"f2"}; "#
    );
    // A row moves from inside the window to beyond it, and another inside it.
    r.tx(&[file("f9", "new", "u3", 1), file("f4", "delta2", "u3", 100)]);
    e.advance(&["g".to_owned()]).unwrap();
    assert_eq!(rows_of(&e, "g"), [r#"file {"id":"f2"}"#, r#"file {"id":"f4"}"#]);
    assert_matches_fresh(&r, &e, "g", &[("top".into(), q)]);
}

#[test]
fn related_children_follow_their_parents() {
    let mut r = TestReplica::new();
    seed(&mut r);
    let mut e = QueryEngine::open(&r.path).unwrap();
    let q = format!(
        r#"{{"table":"file","where":{},"related":[{{"correlation":{{"parentField":["ownerId"],"childField":["id"]}},"subquery":{{"table":"user","alias":"owner"}}}},
            {{"correlation":{{"parentField":["id"],"childField":["fileId"]}},"subquery":{{"table":"file_state","alias":"states","orderBy":[["lastVisitAt","desc"]],"limit":1}}}}]}}"#,
        simple("name", "LIKE", "\"%a\"")
    );
    e.add_query("g", "q", &q).unwrap();
    // alpha (f1, owner u1, states u1:100), beta (f2, u1, u3:50), gamma (f3, u2, newest u2:300), delta (f4, u3).
    assert_eq!(
        rows_of(&e, "g"),
        [
            r#"file {"id":"f1"}"#,
            r#"file {"id":"f2"}"#,
            r#"file {"id":"f3"}"#,
            r#"file {"id":"f4"}"#,
            r#"file_state {"userId":"u1","fileId":"f1"}"#,
            r#"file_state {"userId":"u2","fileId":"f3"}"#,
            r#"file_state {"userId":"u3","fileId":"f2"}"#,
            r#"user {"id":"u1"}"#,
            r#"user {"id":"u2"}"#,
            r#"user {"id":"u3"}"#,
        ]
    );
    // The owner's name changes: put; f4 changes owner: u3 stays (no other file) → del u3.
    r.tx(&[
        user("u1", "Alice A.", 30),
        file("f4", "delta", "u1", 5),
        state("u1", "f3", 400),
    ]);
    let out = e.advance(&["g".to_owned()]).unwrap();
    assert_eq!(
        describe_patch(&out[0].1),
        r#"put file {"id":"f4"}; del user {"id":"u3"}; put user {"id":"u1"}; put file_state {"fileId":"f3","userId":"u1"}; del file_state {"fileId":"f3","userId":"u2"}; "#
    );
    assert_matches_fresh(&r, &e, "g", &[("q".into(), q)]);
}

#[test]
fn exists_syncs_up_to_three_children_and_follows_flips() {
    let mut r = TestReplica::new();
    seed(&mut r);
    let mut e = QueryEngine::open(&r.path).unwrap();
    // Files shared with u2: EXISTS file_state where userId = 'u2'.
    let q = format!(
        r#"{{"table":"file","where":{}}}"#,
        exists(
            "EXISTS",
            "id",
            "fileId",
            "file_state",
            Some(simple("userId", "=", "\"u2\""))
        )
    );
    let patch = e.add_query("g", "shared", &q).unwrap();
    assert_eq!(
        describe_patch(&patch),
        r#"put file {"id":"f3"}; put file_state {"fileId":"f3","userId":"u2"}; "#
    );
    r.tx(&[state("u2", "f1", 1)]);
    let out = e.advance(&["g".to_owned()]).unwrap();
    assert_eq!(
        describe_patch(&out[0].1),
        r#"put file {"id":"f1"}; put file_state {"fileId":"f1","userId":"u2"}; "#
    );
    r.tx(&[Op::Del("file_state", vec![V::S("u2"), V::S("f3")])]);
    let out = e.advance(&["g".to_owned()]).unwrap();
    assert_eq!(
        describe_patch(&out[0].1),
        r#"del file {"id":"f3"}; del file_state {"fileId":"f3","userId":"u2"}; "#
    );
    assert_matches_fresh(&r, &e, "g", &[("shared".into(), q)]);

    // Files with any state: at most 3 state rows per file are synced.
    let q2 = format!(
        r#"{{"table":"file","where":{}}}"#,
        exists("EXISTS", "id", "fileId", "file_state", None)
    );
    r.tx(&[state("u3", "f1", 1), state("u4", "f1", 1), state("u5", "f1", 1)]);
    let mut e = QueryEngine::open(&r.path).unwrap();
    e.add_query("h", "any", &q2).unwrap();
    let f1_states = rows_of(&e, "h")
        .iter()
        .filter(|r| r.contains("\"f1\"") && r.starts_with("file_state"))
        .count();
    assert_eq!(f1_states, 3);
    r.tx(&[Op::Del("file_state", vec![V::S("u1"), V::S("f1")])]);
    e.advance(&["h".to_owned()]).unwrap();
    assert_matches_fresh(&r, &e, "h", &[("any".into(), q2)]);
}

#[test]
fn not_exists_rehydrates_on_unknown_old_values() {
    let mut r = TestReplica::new();
    seed(&mut r);
    let mut e = QueryEngine::open(&r.path).unwrap();
    let q = format!(
        r#"{{"table":"file","where":{}}}"#,
        exists("NOT EXISTS", "id", "fileId", "file_state", None)
    );
    e.add_query("g", "q", &q).unwrap();
    assert_eq!(rows_of(&e, "g"), [r#"file {"id":"f4"}"#]);
    r.tx(&[Op::Del("file_state", vec![V::S("u3"), V::S("f2")])]);
    let out = e.advance(&["g".to_owned()]).unwrap();
    assert_eq!(describe_patch(&out[0].1), r#"put file {"id":"f2"}; "#);
    r.tx(&[state("u1", "f4", 1)]);
    let out = e.advance(&["g".to_owned()]).unwrap();
    assert_eq!(describe_patch(&out[0].1), r#"del file {"id":"f4"}; "#);
    assert!(e.statistics().iter().any(|(k, v)| *k == "rehydrations" && *v >= 1));
    assert_matches_fresh(&r, &e, "g", &[("q".into(), q)]);
}

#[test]
fn truncate_rehydrates() {
    let mut r = TestReplica::new();
    seed(&mut r);
    let mut e = QueryEngine::open(&r.path).unwrap();
    let q = r#"{"table":"file_state","related":[{"correlation":{"parentField":["fileId"],"childField":["id"]},"subquery":{"table":"file","alias":"file"}}]}"#;
    e.add_query("g", "q", q).unwrap();
    r.tx(&[Op::Truncate("file"), file("f3", "gamma", "u2", 30)]);
    let out = e.advance(&["g".to_owned()]).unwrap();
    let d = describe_patch(&out[0].1);
    // f3 came back at a new version: put.
    assert_eq!(
        d,
        r#"put file {"id":"f3"}; del file {"id":"f1"}; del file {"id":"f2"}; "#
    );
    assert_matches_fresh(&r, &e, "g", &[("q".into(), q.to_owned())]);
}

#[test]
fn start_cursor_and_paging() {
    let mut r = TestReplica::new();
    seed(&mut r);
    let mut e = QueryEngine::open(&r.path).unwrap();
    let q = r#"{"table":"file","orderBy":[["updatedAt","asc"]],"start":{"row":{"id":"f1","updatedAt":10},"exclusive":true},"limit":2}"#;
    e.add_query("g", "page", q).unwrap();
    assert_eq!(rows_of(&e, "g"), [r#"file {"id":"f2"}"#, r#"file {"id":"f3"}"#]);
    r.tx(&[file("f4", "delta", "u3", 15), file("f1", "alpha", "u1", 11)]);
    e.advance(&["g".to_owned()]).unwrap();
    assert_eq!(rows_of(&e, "g"), [r#"file {"id":"f1"}"#, r#"file {"id":"f4"}"#]);
    assert_matches_fresh(&r, &e, "g", &[("page".into(), q.to_owned())]);
}

#[test]
fn groups_advance_independently_and_share_rows_across_queries() {
    let mut r = TestReplica::new();
    seed(&mut r);
    let mut e = QueryEngine::open(&r.path).unwrap();
    let q1 = format!(r#"{{"table":"file","where":{}}}"#, simple("ownerId", "=", "\"u1\""));
    let q2 = format!(r#"{{"table":"file","where":{}}}"#, simple("name", "=", "\"alpha\""));
    e.add_query("a", "q1", &q1).unwrap();
    let patch = e.add_query("a", "q2", &q2).unwrap();
    assert_eq!(describe_patch(&patch), "", "f1 is already synced by q1");
    e.add_query("b", "q1", &q1).unwrap();
    r.tx(&[file("f1", "alpha", "u1", 99)]);
    let out = e.advance(&["a".to_owned()]).unwrap();
    assert_eq!(
        describe_patch(&out[0].1),
        r#"put file {"id":"f1"}; "#,
        "one put for two queries"
    );
    assert_eq!(e.group_version("b").unwrap(), "02");
    r.tx(&[file("f2", "beta", "u2", 1)]);
    let out = e.advance(&["b".to_owned(), "a".to_owned()]).unwrap();
    assert_eq!(
        describe_patch(&out[0].1),
        r#"put file {"id":"f1"}; del file {"id":"f2"}; "#
    );
    assert_eq!(describe_patch(&out[1].1), r#"del file {"id":"f2"}; "#);
    let patch = e.remove_query("a", "q1").unwrap();
    assert_eq!(describe_patch(&patch), "", "f1 is still held by q2");
    let patch = e.remove_query("a", "q2").unwrap();
    assert_eq!(describe_patch(&patch), r#"del file {"id":"f1"}; "#);
    e.remove_group("a");
    assert!(matches!(e.group_version("a"), Err(Error::UnknownQuery { .. })));
}

#[test]
fn invalid_queries_raise_and_change_nothing() {
    let mut r = TestReplica::new();
    seed(&mut r);
    let mut e = QueryEngine::open(&r.path).unwrap();
    let err = e.add_query("g", "bad", r#"{"table":"file","where":{"type":"simple","op":"LIKEX","left":{"type":"column","name":"name"},"right":{"type":"literal","value":"a"}}}"#).unwrap_err();
    assert_eq!(err.to_string(), r#"invalid query: where.op: unknown operator "LIKEX""#);
    let err = e.add_query("g", "bad", r#"{"table":"nope"}"#).unwrap_err();
    assert_eq!(err.to_string(), r#"invalid query: table: unknown table "nope""#);
    assert!(matches!(e.query_rows("g", "bad"), Err(Error::UnknownQuery { .. })));
}

/// A deterministic pseudo-random sequence (no dev-dependency needed).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        self.0 >> 33
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[(self.next() as usize) % items.len()]
    }
}

#[test]
fn randomized_incremental_equals_recompute() {
    let users = ["u1", "u2", "u3", "u4"];
    let files = ["f1", "f2", "f3", "f4", "f5", "f6"];
    let names = ["alpha", "beta", "Bob", "gamma", "delta"];
    let queries: Vec<(String, String)> = vec![
        format!(r#"{{"table":"file","where":{}}}"#, simple("ownerId", "=", "\"u1\"")),
        r#"{"table":"file","orderBy":[["updatedAt","desc"]],"limit":3}"#.to_owned(),
        format!(r#"{{"table":"file","where":{},"orderBy":[["name","asc"]],"limit":2}}"#, exists("EXISTS", "id", "fileId", "file_state", Some(simple("userId", "IN", "[\"u1\",\"u2\"]")))),
        format!(r#"{{"table":"file","where":{{"type":"or","conditions":[{},{}]}}}}"#, simple("name", "LIKE", "\"b%\""), exists("EXISTS", "ownerId", "id", "user", Some(simple("name", "=", "\"Bob\"")))),
        format!(r#"{{"table":"user","where":{}}}"#, exists("NOT EXISTS", "id", "ownerId", "file", None)),
        r#"{"table":"file_state","where":{"type":"simple","op":"=","left":{"type":"column","name":"userId"},"right":{"type":"literal","value":"u1"}},
            "related":[{"correlation":{"parentField":["fileId"],"childField":["id"]},"subquery":{"table":"file","alias":"file",
              "related":[{"correlation":{"parentField":["ownerId"],"childField":["id"]},"subquery":{"table":"user","alias":"owner"}}]}}]}"#
            .to_owned(),
        r#"{"table":"user","related":[{"correlation":{"parentField":["id"],"childField":["userId"]},"hidden":true,"subquery":{"table":"file_state","alias":"states",
              "related":[{"correlation":{"parentField":["fileId"],"childField":["id"]},"subquery":{"table":"file","alias":"files","orderBy":[["updatedAt","desc"]],"limit":1}}]}}],
            "orderBy":[["name","asc"]],"limit":3,"start":{"row":{"name":"B"},"exclusive":false}}"#
            .to_owned(),
        format!(
            r#"{{"table":"user","where":{}}}"#,
            exists("EXISTS", "id", "ownerId", "file", Some(exists("EXISTS", "id", "fileId", "file_state", Some(simple("lastVisitAt", ">", "50")))))
        ),
    ]
    .into_iter()
    .enumerate()
    .map(|(i, q)| (format!("q{i}"), q))
    .collect();
    for seed_value in 0..6u64 {
        let mut rng = Lcg(seed_value * 7919 + 1);
        let mut r = TestReplica::new();
        seed(&mut r);
        let mut e = QueryEngine::open(&r.path).unwrap();
        // Odd seeds: leaf partitions of one row or more are entered by a second thread.
        if seed_value % 2 == 1 {
            e.db.pipeline_rows = 1;
        }
        // Group "g" has every query; each query also has a group of its own, so that both the
        // queries an advance skips in a group and the groups it skips are checked.
        let mut groups = vec!["g".to_owned()];
        for (hash, ast) in &queries {
            e.add_query("g", hash, ast).unwrap();
            e.add_query(&format!("solo-{hash}"), hash, ast).unwrap();
            groups.push(format!("solo-{hash}"));
        }
        for step in 0..40 {
            let n = 1 + rng.next() % 3;
            let mut ops = Vec::new();
            for _ in 0..n {
                let op = match rng.next() % 10 {
                    0 | 1 => Op::Set(
                        "file",
                        vec![
                            V::S(rng.pick(&files)),
                            V::S(rng.pick(&names)),
                            V::S(rng.pick(&users)),
                            V::I((rng.next() % 50) as i64),
                            V::B(rng.next() % 2 == 0),
                        ],
                    ),
                    2 => Op::Del("file", vec![V::S(rng.pick(&files))]),
                    3 | 4 => Op::Set(
                        "file_state",
                        vec![
                            V::S(rng.pick(&users)),
                            V::S(rng.pick(&files)),
                            V::I((rng.next() % 100) as i64),
                        ],
                    ),
                    5 => Op::Del("file_state", vec![V::S(rng.pick(&users)), V::S(rng.pick(&files))]),
                    6 | 7 => Op::Set(
                        "user",
                        vec![V::S(rng.pick(&users)), V::S(rng.pick(&names)), V::I(20), V::N, V::N],
                    ),
                    8 => Op::Del("user", vec![V::S(rng.pick(&users))]),
                    _ => {
                        if rng.next() % 5 == 0 {
                            Op::Truncate(rng.pick(&["file", "file_state", "user"]))
                        } else {
                            Op::Set(
                                "user",
                                vec![
                                    V::O(format!("u{}", 5 + rng.next() % 3)),
                                    V::S("Bob"),
                                    V::N,
                                    V::B(true),
                                    V::N,
                                ],
                            )
                        }
                    }
                };
                ops.push(op);
            }
            r.tx(&ops);
            e.advance(&groups).unwrap();
            let mut fresh = QueryEngine::open(&r.path).unwrap();
            for (hash, ast) in &queries {
                fresh.add_query("g", hash, ast).unwrap();
                fresh.add_query(&format!("solo-{hash}"), hash, ast).unwrap();
            }
            for name in &groups {
                assert_eq!(
                    e.group_rows(name),
                    fresh.group_rows(name),
                    "seed {seed_value} step {step} group {name}"
                );
            }
            for (hash, _) in &queries {
                assert_eq!(
                    e.query_rows("g", hash).unwrap(),
                    fresh.query_rows("g", hash).unwrap(),
                    "seed {seed_value} step {step} {hash}"
                );
            }
        }
        // Removing queries and groups undoes every registration.
        for (hash, _) in &queries {
            e.remove_query("g", hash).unwrap();
        }
        for name in &groups {
            e.remove_group(name);
        }
        assert!(e.interest.is_empty(), "seed {seed_value}: {:?}", e.interest);
    }
}

#[test]
fn index_suggestions_cover_correlations_and_root_filters() {
    let mut r = TestReplica::new();
    seed(&mut r);
    let mut e = QueryEngine::open(&r.path).unwrap();
    e.add_query(
        "g",
        "owner",
        &format!(r#"{{"table":"file","where":{}}}"#, simple("ownerId", "=", "\"u1\"")),
    )
    .unwrap();
    e.add_query(
        "g",
        "top",
        r#"{"table":"file","orderBy":[["updatedAt","desc"]],"limit":10}"#,
    )
    .unwrap();
    e.add_query(
        "g",
        "shared",
        &format!(
            r#"{{"table":"user","where":{}}}"#,
            exists("EXISTS", "id", "ownerId", "file", None)
        ),
    )
    .unwrap();
    e.add_query(
        "g",
        "states",
        r#"{"table":"file_state","where":{"type":"simple","op":"=","left":{"type":"column","name":"userId"},"right":{"type":"literal","value":"u1"}},
           "related":[{"correlation":{"parentField":["fileId"],"childField":["id"]},"subquery":{"table":"file","alias":"file"}}]}"#,
    )
    .unwrap();
    assert_eq!(
        e.index_suggestions(),
        [
            ("file".to_owned(), vec!["ownerId".to_owned(), "id".to_owned()]),
            ("file".to_owned(), vec!["updatedAt".to_owned(), "id".to_owned()]),
        ]
    );
}

#[test]
fn client_json_escapes_text_and_replaces_invalid_utf8() {
    let mut r = TestReplica::new();
    seed(&mut r);
    r.tx(&[file("f9", "q\"\\\n\u{1}é", "u9", 1)]);
    r.conn
        .execute(r#"UPDATE "file" SET "name" = CAST(x'61ff62' AS TEXT) WHERE "id" = 'f4'"#, [])
        .unwrap();
    let q = r#"{"table":"file"}"#;
    let mut e = QueryEngine::open(&r.path).unwrap();
    let patch = e.add_query("g", "q", q).unwrap();
    let v: serde_json::Value = serde_json::from_slice(&patch).unwrap();
    let names: BTreeMap<String, String> = v["ops"]
        .as_array()
        .unwrap()
        .iter()
        .map(|op| (op["value"]["id"].as_str().unwrap().to_owned(), op["value"]["name"].as_str().unwrap().to_owned()))
        .collect();
    assert_eq!(names["f9"], "q\"\\\n\u{1}é");
    assert_eq!(names["f4"], "a\u{FFFD}b");
    assert_eq!(names["f1"], "alpha");
    // The view syncer's form of the same patch.
    let mut twin = QueryEngine::open(&r.path).unwrap();
    let changes = twin.add_query_changes("g", "q", q).unwrap();
    let mut merged = RowChanges::default();
    merged.merge(&patch).unwrap();
    assert_eq!(changes.rows.rows(), merged.rows());
    assert_eq!(changes.version, v["version"].as_str().unwrap());
}

/// `n` files of three owners (ids `p0000`, …), names `name(i)`, in one transaction.
fn many_files(r: &mut TestReplica, n: usize, name: impl Fn(usize) -> String) {
    let ops: Vec<Op> = (0..n)
        .map(|i| {
            Op::Set(
                "file",
                vec![V::O(format!("p{i:04}")), V::O(name(i)), V::S(["u1", "u2", "u3"][i % 3]), V::I(i as i64), V::B(false)],
            )
        })
        .collect();
    r.tx(&ops);
}

#[test]
fn pipelined_hydration_equals_one_thread() {
    let mut r = TestReplica::new();
    seed(&mut r);
    many_files(&mut r, 700, |i| format!("n{}", i % 37));
    let queries = [
        r#"{"table":"file"}"#.to_owned(),
        format!(r#"{{"table":"file","where":{}}}"#, simple("ownerId", "IN", r#"["u1","u3"]"#)),
        r#"{"table":"file","orderBy":[["name","asc"]],"limit":500}"#.to_owned(),
        r#"{"table":"user","related":[{"correlation":{"parentField":["id"],"childField":["ownerId"]},"subquery":{"table":"file","alias":"files"}}]}"#.to_owned(),
    ];
    let mut one = QueryEngine::open(&r.path).unwrap();
    let mut two = QueryEngine::open(&r.path).unwrap();
    // Partitions of 300 rows and more: a first batch, then chunks, the last one partial.
    two.db.pipeline_rows = 300;
    // Two groups: the second's keys are the engine's already.
    for group in ["g", "h"] {
        for (i, q) in queries.iter().enumerate() {
            let hash = format!("q{i}");
            assert_eq!(one.add_query(group, &hash, q).unwrap(), two.add_query(group, &hash, q).unwrap());
        }
    }
    assert!(two.statistics().iter().any(|&(name, n)| name == "rows_read" && n > 4 * 700));
    r.tx(&[file("p0001", "renamed", "u2", 1), Op::Del("file", vec![V::S("p0002")])]);
    let groups = ["g".to_owned(), "h".to_owned()];
    assert_eq!(one.advance(&groups).unwrap(), two.advance(&groups).unwrap());
    for group in &groups {
        assert_eq!(one.group_rows(group), two.group_rows(group));
    }
}

#[test]
fn pipelined_read_errors_fail_the_query_and_leave_nothing_held() {
    let mut r = TestReplica::new();
    seed(&mut r);
    // The failing row comes after the first rows and a few chunks.
    many_files(&mut r, 1500, |i| if i == 1400 { "boom".to_owned() } else { format!("n{i}") });
    let mut e = QueryEngine::open(&r.path).unwrap();
    e.db.pipeline_rows = 100;
    // A `LIKE` whose function fails at one row, as SQLite may fail while stepping.
    e.db.conn
        .create_scalar_function("zcache_like", 2, rusqlite::functions::FunctionFlags::SQLITE_UTF8, |ctx| {
            match ctx.get_raw(0).as_str() {
                Ok("boom") => Err(rusqlite::Error::UserFunctionError("row 1400".into())),
                _ => Ok(Some(true)),
            }
        })
        .unwrap();
    e.add_query("g", "users", r#"{"table":"user"}"#).unwrap();
    let before = rows_of(&e, "g");
    let patch: serde_json::Value =
        serde_json::from_slice(&e.add_query("g", "files", &format!(r#"{{"table":"file","where":{}}}"#, simple("name", "LIKE", r#""%""#))).unwrap()).unwrap();
    assert_eq!(patch["ops"], serde_json::json!([]), "rows entered before the error leave again");
    assert!(patch["queryErrors"]["files"].as_str().unwrap().contains("row 1400"), "{patch}");
    assert_eq!(rows_of(&e, "g"), before);
    assert!(e.query_error("g", "files").unwrap().is_some());
    e.remove_group("g");
    assert!(e.interest.is_empty());
}

#[test]
fn partition_entries_stay_small() {
    // One per row of every hydrated query: with its key, the largest map of the engine.
    assert!(std::mem::size_of::<Entry>() <= 48);
}
