//! The query engine: Zero query ASTs hydrated from the SQLite replica and maintained
//! incrementally from its change log, producing row patches per client group.
//!
//! * [`ast`]: the wire AST, parsed strictly with path-naming errors.
//! * [`plan`]: compilation against the replica's tables: validation, Zero's semantics (completed
//!   orderings, typed comparisons, NULL rules, `EXISTS` limits, …), the conditions evaluated in
//!   Rust and the SQL run for each node.
//! * [`like`]: `LIKE`/`ILIKE` (also registered as SQL functions).
//! * [`value`]: stored values, their order, correlation keys, rows, JSON.
//! * [`engine`]: [`QueryEngine`], the state and the algorithms below.
//!
//! # Model
//!
//! A query compiles to a tree of *nodes*: the root, one node per `related` subquery, one per
//! `EXISTS`/`NOT EXISTS` condition (its subquery), plus "companion" roots for simple scalar
//! subqueries. A *partition* is the set of rows of one node for one correlation value (the
//! parent rows' `parentField` values = the child rows' `childField` values); a root has one
//! partition. A partition is materialised as the list of its row keys, filtered by `where` and
//! `start`: for a node with a `limit` the list is the window, sorted in the node's order (completed
//! with the primary key, so it is total) and cut at `limit`; without a limit order does not change
//! the row set, so the list is an unordered set (each entry knows its slot). Each row of a partition holds the partitions of its children (one per child node)
//! for its correlation values; partitions are refcounted by the parent rows holding them and
//! dropped at zero. `EXISTS` nodes are partitions like any other, cut at 3 rows (Zero's
//! `EXISTS_LIMIT`: those are the child rows synced so the client can evaluate the condition).
//! Rows are refcounted per query (partition entries holding the row) and per client group
//! (queries holding it); the group's patch puts a row when its group count goes 0→n or its
//! version (`_0_version`) changes while held, and deletes it when the count drops to 0.
//!
//! The set of rows a query syncs is therefore: the root's window; for every row of a node, the
//! windows of its child partitions, recursively (`hidden` junction rows included; nothing
//! below a `system: "permissions"` subquery); the companion rows.
//!
//! # Hydration
//!
//! One SQL statement per partition, compiled from the node: correlation equality, `where`
//! (simple conditions as plain comparisons, `LIKE` through `zcache_like`, `EXISTS` as
//! `parent.pf IN (SELECT child.cf FROM … WHERE …)` so SQLite may drive from the subquery, `NOT
//! EXISTS` as a correlated `NOT EXISTS (…)`), `start`, and for limited nodes `ORDER BY` the
//! completed order and `LIMIT` (unlimited nodes are not ordered at all, which leaves SQLite free to
//! use any index and skips its sorter). Literals are bound parameters, so queries of the same shape
//! share prepared statements. Rows are read once; their client `put` op is written while reading
//! (as bytes, checked to be UTF-8 once per row) and only the columns the engine needs (order,
//! correlation) become values. A row key the engine holds already (another group hydrated the
//! row) is looked up while reading and shared, not copied; the row's op, key and version then
//! move into the engine's records and the patch without further copies. A call's patch is either JSON (`add_query`, `advance`: the value
//! copied out of each op) or, for the view syncer, a `RowChanges` (`add_query_changes`,
//! `advance_changes`) that takes each op as it was written, with the engine's own table names,
//! keys and versions, so nothing is encoded or parsed again between the engine and the poke.
//! A leaf partition (no child partitions to hydrate per row) of more than 1,024 rows is entered by
//! a second thread as it is read: the calling thread steps SQLite and hands the rows' stored
//! columns, keys and versions over in bounded chunks; the other writes the client ops and enters
//! the rows, in SQLite's order (same state, same patch; one connection, so one snapshot).
//!
//! # Advancing from version A to B
//!
//! Every call runs in one read transaction (never held between calls: the WAL could not be
//! checkpointed past it). It reads the change-log entries after the oldest version among the
//! groups it advances (`_zcache_changes` keeps the latest change per row, so each changed row
//! appears once), and each changed row's current value at B once, shared by all groups. Per
//! query, changed rows of the tables it reads are examined:
//!
//! 1. *Collect.* For each node reading the changed row's table: the row is dirty in the node if
//!    the node holds it (its old partition, from the materialised state: old values are never
//!    needed) or if its new value falls into a materialised partition. If the node is an
//!    `EXISTS` node, parents may flip: the correlation values to re-examine are the old one
//!    (if the node held the row) and the new one (unless the new row cannot match the
//!    subquery's `where`); the parent rows with those values are read with SQL and marked
//!    dirty in the parent node, and if the parent is itself an `EXISTS` node the same goes on
//!    up the chain.
//! 2. *Process*, nodes in tree order (parents first, since re-examining a parent row may drop
//!    or hydrate child partitions). Rows whose correlation value changed leave their old
//!    partition. Each dirty row is evaluated in Rust against its new partition (`start`,
//!    `where`; `EXISTS` atoms by one indexed `SELECT 1 … LIMIT 1` each) and inserted,
//!    repositioned, updated (version, child partitions) or removed. For a partition with a
//!    `limit` that was full before the call, rows sorting after its old last row are not
//!    inserted; afterwards the window is cut back to `limit`, or, if it shrank, refilled with
//!    one `… AFTER <last row> LIMIT n` statement. So the cost of a change is independent of the
//!    partition's size: a few indexed lookups, plus one small refill when a window shrinks.
//!    Rows entering a partition hydrate their child partitions; rows leaving release them.
//!
//! Why old values are only needed in one case: an `EXISTS` condition can only lose parents
//! when a child row leaves, and a child row that mattered for a parent in the result is in the
//! parent's materialised `EXISTS` partition (or at least 3 others are, and existence holds). A
//! `NOT EXISTS` condition gains parents when a child row leaves, and the parents it gains are
//! not in the result, so the child row is not materialised and its old correlation value is
//! unknown (the change log has keys only; `s` does not even say whether the row existed).
//! When that happens (a change to the subquery table of a `NOT EXISTS` chain that the node
//! does not hold) the query is re-hydrated instead, and the patch carries the difference.
//! Likewise for `t` (truncate) and `r` (reset) entries of a table a query reads, for queries
//! whose tables' schemas changed (the engine reloads table specs when the file's
//! `schema_version` changes; a query that no longer compiles fails), and when a group's
//! version is ahead of the replica (a new replica). A query that fails (compile error, SQL
//! error) releases its rows and is reported in the patch's `queryErrors`; other queries and
//! groups are unaffected. Failed queries are retried after the next schema change.
//!
//! # Where Zero differs (or may)
//!
//! * Which 3 `EXISTS` child rows are synced: Zero's `Cap` takes them in SQLite's (unordered)
//!   scan order; here they are the first 3 in the subquery's completed order (primary key by
//!   default). Either way the client sees at least one when the condition holds.
//! * Zero's planner may flip `EXISTS` joins, which then sync every matching child row; here
//!   only an explicit `flip: true` in the AST does.
//! * Strings compare by UTF-8 bytes, as Zero's `compareUTF8` and SQLite do (JavaScript's `<`
//!   on strings uses UTF-16 code units, which orders characters above U+FFFF before U+E000–
//!   U+FFFF); `LIKE`'s `_` matches one Unicode scalar value (see `like`).
//! * Ordering comparisons of a column with a literal of another type are rejected when the
//!   query is compiled (Zero throws when it evaluates them); `LIKE` on non-string columns
//!   likewise.
//!
//! # Indexes
//!
//! Without more, the replica has primary-key indexes only. Statements that scan: a partition of a
//! `related`/`EXISTS` node correlated on a non-key column (`file.ownerId = ?`, `file_state
//! .fileId = ?`), parent lookups for `EXISTS` chains on non-key columns, root filters and
//! orderings on non-key columns (`file where ownerId = ?`, `orderBy updatedAt`). Indexes on
//! correlation `childField`s (followed by the order columns for limited nodes), on `parentField`s
//! of `EXISTS` conditions, and on equality/order columns of roots remove those scans;
//! [`QueryEngine::index_suggestions`] lists them, as `(table, columns)`, for the registered
//! queries. The engine does not create them (its connection is `query_only`, and the replica's
//! writer must own every index: SQLite refuses `ALTER TABLE … DROP COLUMN` on an indexed column,
//! so the writer drops them first): the view syncer passes new suggestions to the replicator,
//! whose writer builds them between batches (`crate::replica::indexes`). SQLite re-prepares the
//! engine's cached statements on the schema change, so they use an index once it exists.
//! `bench/micro/test_ivm.py` measures hydration with and without an index on `file.ownerId`.
//!
//! # Costs (bench/micro/test_ivm.py, reference data shape, instructions counted by callgrind)
//!
//! * Hydrating "files of 1,000 owners" (10k rows, 3.6 MB of patch) with an index on
//!   `file.ownerId`: ~129 M instructions on one thread, or ~100 M on the calling thread + ~47 M on
//!   the second with the pipelined read above (was ~152 M before the row-reading and bookkeeping
//!   changes of issue 4), of which SQLite's stepping is ~46 M and rusqlite's column reads ~25 M;
//!   linear in the rows (see bench/README.md for the times). What is left of the engine's own
//!   time is mostly memory latency: per row, the shared map of held rows (looked up while
//!   reading and again when the query holds the row) and fresh memory for the group's records.
//! * One single-row change advanced through 1,000 groups of one `file where ownerId = ?` query
//!   each: ~2.8 M instructions (~2,700 per group: version bookkeeping, one row lookup shared by
//!   all groups, a Rust evaluation of each query's condition, an empty patch); independent of
//!   the table's size.

pub mod ast;
pub mod engine;
pub mod interest;
pub mod like;
pub mod plan;
pub mod value;

pub use engine::QueryEngine;
