//! The SQLite replica: built by the initial sync, then kept up to date by the replication stream.
//!
//! * [`layout`]: the file's tables (one per published table, plus zcache's metadata and change log).
//! * [`initial_sync`]: a new replica from binary COPY output, built in a staging file and renamed
//!   into place atomically; its rows go in through [`bulk_insert`], a multi-row `INSERT` bound
//!   through SQLite's C API.
//! * [`writer`]: applies batches of replication frames, one SQLite transaction per upstream
//!   transaction, with the watermark and change log.
//! * [`wal_sync`]: makes the writer's commits durable from another thread, before upstream is told.
//! * [`schema_change`]: follows upstream DDL by diffing published schemas.
//! * [`indexes`]: secondary indexes the writer builds on request, recorded so they survive
//!   restarts, dropped before DDL that would fail because of them.

mod bulk_insert;
pub mod indexes;
pub mod initial_sync;
pub mod layout;
pub mod schema_change;
pub mod table;
pub mod wal_sync;
pub mod writer;

pub use initial_sync::{InitialSync, ReplicaConfig};
pub use wal_sync::WalSync;
pub use writer::{ApplyOutcome, ReplicaWriter};
