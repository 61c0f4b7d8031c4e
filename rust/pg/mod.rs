//! PostgreSQL wire formats used by replication: the replication-protocol CopyData frames and the
//! pgoutput (v1) logical decoding messages inside them, LSNs and wire timestamps.
//!
//! Sans-IO except [`upstream`]: everything else consumes byte slices and returns values; the
//! replication socket belongs to Python (`psycopg.pq.PGconn` driven by Trio), which hands frames
//! over in batches.
//!
//! * [`reader`]: bounds-checked big-endian cursor; all decoding goes through it.
//! * [`pgoutput`]: frame and message types, [`pgoutput::decode_frame`], the standby status encoder.
//! * [`relations`]: per-session OID → Relation cache that validates row changes.
//! * [`describe`]: the stable one-line rendering used by golden tests and debugging.
//! * [`copy`]: the binary COPY decoder; [`upstream`]: the initial sync's snapshot COPY connections.
//! * [`lsn`], [`time`]: `X/Y` LSNs and µs-since-2000 timestamps.

pub mod copy;
pub mod describe;
pub mod lsn;
pub mod pgoutput;
pub mod reader;
pub mod schema;
pub mod relations;
pub mod time;
pub mod upstream;
pub mod values;

#[cfg(test)]
pub(crate) mod test_encoder;

pub use lsn::Lsn;
pub use pgoutput::{decode_frame, decode_message, encode_standby_status, Frame, Message};
pub use relations::RelationCache;
pub use time::PgTimestamp;
