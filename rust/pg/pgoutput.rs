//! Decoder for replication CopyData frames and the pgoutput logical decoding protocol, version 1.
//!
//! # Format
//!
//! After `START_REPLICATION SLOT s LOGICAL … (proto_version '1', …)` the server sends CopyData
//! messages whose first byte tags a replication frame (all integers big-endian):
//!
//! * `w` XLogData: Int64 WAL start, Int64 current WAL end, Int64 server time (µs since
//!   2000-01-01), then exactly one pgoutput message filling the rest of the frame;
//! * `k` primary keepalive: Int64 WAL end, Int64 server time, Byte1 reply-requested.
//!
//! The pgoutput messages of protocol v1 are `B`egin, `C`ommit, `O`rigin, `R`elation, t`Y`pe,
//! `I`nsert, `U`pdate, `D`elete, `T`runcate and `M`essage (`pg_logical_emit_message`). Row changes
//! carry *TupleData*: an Int16 column count, then per column a kind byte, `n` (NULL), `u` (unchanged
//! TOASTed value, not sent), `t` (text) or `b` (binary), the last two followed by an Int32 length and
//! that many bytes. `String`s are NUL-terminated and must be UTF-8 (Zero requires a UTF8 database).
//! See <https://www.postgresql.org/docs/15/protocol-logicalrep-message-formats.html> and
//! <https://www.postgresql.org/docs/15/protocol-replication.html>.
//!
//! # Invariants
//!
//! * Decoding never panics and never reads out of bounds: any byte string either decodes or returns
//!   [`crate::error::Error::MalformedMessage`] naming the message, the byte offset from the start of the buffer
//!   handed in, and the problem (truncation, trailing bytes, an unknown tag and its value, …).
//! * A message must fill its buffer exactly; trailing bytes are an error.
//! * Zero copy: strings, values and message content borrow from the input buffer (`Message<'a>`).
//!   A [`TupleData`] keeps its validated raw bytes and yields [`Value`]s when iterated.
//! * Decoding is stateless. Whether a row change matches a known relation is checked by
//!   [`crate::pg::relations::RelationCache`].
//! * Protocol v2+ tags (streaming, two-phase commit) are rejected with
//!   [`DecodeProblem::UnsupportedTag`]; zcache asks for v1, so they indicate a misconfigured stream.

use crate::error::{DecodeProblem, Result};
use crate::pg::lsn::Lsn;
use crate::pg::reader::Reader;
use crate::pg::time::PgTimestamp;

/// Size of an encoded standby status update.
pub const STANDBY_STATUS_LEN: usize = 34;

/// One replication CopyData frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame<'a> {
    XLogData(XLogData<'a>),
    Keepalive(Keepalive),
}

/// `w`: WAL data carrying one pgoutput message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XLogData<'a> {
    /// Start of the WAL data in this message (0 for messages that are not tied to a record).
    pub wal_start: Lsn,
    /// The server's current end of WAL.
    pub wal_end: Lsn,
    /// Server clock when the frame was sent.
    pub server_time: PgTimestamp,
    /// The decoded payload.
    pub message: Message<'a>,
}

/// `k`: primary keepalive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keepalive {
    /// The server's current end of WAL.
    pub wal_end: Lsn,
    /// Server clock when the frame was sent.
    pub server_time: PgTimestamp,
    /// The server wants a standby status update now (else it may time the connection out).
    pub reply_requested: bool,
}

/// One pgoutput v1 message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message<'a> {
    Begin(Begin),
    Commit(Commit),
    Origin(Origin<'a>),
    Relation(Relation<'a>),
    Type(Type<'a>),
    Insert(Insert<'a>),
    Update(Update<'a>),
    Delete(Delete<'a>),
    Truncate(Truncate),
    Message(LogicalMessage<'a>),
}

impl Message<'_> {
    /// The message's name as used in errors and renderings ("Begin", "Insert", …).
    #[must_use]
    pub fn name(&self) -> &'static str {
        match self {
            Message::Begin(_) => "Begin",
            Message::Commit(_) => "Commit",
            Message::Origin(_) => "Origin",
            Message::Relation(_) => "Relation",
            Message::Type(_) => "Type",
            Message::Insert(_) => "Insert",
            Message::Update(_) => "Update",
            Message::Delete(_) => "Delete",
            Message::Truncate(_) => "Truncate",
            Message::Message(_) => "Message",
        }
    }
}

/// `B`: start of a transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Begin {
    /// LSN of the transaction's commit record (equals the Commit message's `commit_lsn`).
    pub final_lsn: Lsn,
    pub commit_time: PgTimestamp,
    pub xid: u32,
}

/// `C`: end of a transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Commit {
    /// Currently unused by Postgres (0); kept so nothing is silently dropped.
    pub flags: u8,
    pub commit_lsn: Lsn,
    /// End of the commit record: the position to confirm as flushed once applied.
    pub end_lsn: Lsn,
    pub commit_time: PgTimestamp,
}

/// `O`: the transaction was replicated from another origin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Origin<'a> {
    /// Commit LSN on the origin server.
    pub commit_lsn: Lsn,
    pub name: &'a str,
}

/// `relreplident` of a relation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReplicaIdentity {
    /// `d`: primary key.
    Default,
    /// `n`: nothing; updates and deletes carry no old values.
    Nothing,
    /// `f`: full; updates and deletes carry the whole old row (`O` tuple).
    Full,
    /// `i`: a chosen unique index.
    Index,
}

impl ReplicaIdentity {
    /// From the wire byte.
    #[must_use]
    pub fn from_byte(b: u8) -> Option<Self> {
        match b {
            b'd' => Some(ReplicaIdentity::Default),
            b'n' => Some(ReplicaIdentity::Nothing),
            b'f' => Some(ReplicaIdentity::Full),
            b'i' => Some(ReplicaIdentity::Index),
            _ => None,
        }
    }

    /// The wire byte.
    #[must_use]
    pub fn as_byte(self) -> u8 {
        match self {
            ReplicaIdentity::Default => b'd',
            ReplicaIdentity::Nothing => b'n',
            ReplicaIdentity::Full => b'f',
            ReplicaIdentity::Index => b'i',
        }
    }

    /// Lower-case name (`default`, `nothing`, `full`, `index`).
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            ReplicaIdentity::Default => "default",
            ReplicaIdentity::Nothing => "nothing",
            ReplicaIdentity::Full => "full",
            ReplicaIdentity::Index => "index",
        }
    }
}

/// `R`: the schema of a relation, sent before its first change in a session and again after DDL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relation<'a> {
    pub oid: u32,
    /// Schema name; empty for `pg_catalog`.
    pub namespace: &'a str,
    pub name: &'a str,
    pub replica_identity: ReplicaIdentity,
    /// Published columns in tuple order (generated and dropped columns are not sent).
    pub columns: Vec<Column<'a>>,
}

/// One column of a [`Relation`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Column<'a> {
    /// Bit 0: part of the replica identity key. Other bits are unused by Postgres 15.
    pub flags: u8,
    pub name: &'a str,
    pub type_oid: u32,
    /// `atttypmod`; -1 when the type has none.
    pub type_modifier: i32,
}

impl Column<'_> {
    /// Part of the replica identity (the primary key for `REPLICA IDENTITY DEFAULT`).
    #[must_use]
    pub fn is_key(&self) -> bool {
        self.flags & 1 != 0
    }
}

/// `Y`: a non-built-in data type referenced by a following Relation message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Type<'a> {
    pub oid: u32,
    /// Schema name; empty for `pg_catalog`.
    pub namespace: &'a str,
    pub name: &'a str,
}

/// `I`: a new row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Insert<'a> {
    pub oid: u32,
    pub new: TupleData<'a>,
}

/// The old-row part of an Update or Delete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OldTuple<'a> {
    /// `K`: the replica identity columns; other columns are `n`.
    Key(TupleData<'a>),
    /// `O`: the whole old row (`REPLICA IDENTITY FULL`).
    Full(TupleData<'a>),
}

impl<'a> OldTuple<'a> {
    /// The tuple, whichever kind.
    #[must_use]
    pub fn tuple(&self) -> &TupleData<'a> {
        match self {
            OldTuple::Key(t) | OldTuple::Full(t) => t,
        }
    }
}

/// `U`: a changed row. `old` is absent when the key did not change and identity is not `full`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Update<'a> {
    pub oid: u32,
    pub old: Option<OldTuple<'a>>,
    /// The new row; TOASTed columns that did not change are [`Value::UnchangedToast`].
    pub new: TupleData<'a>,
}

/// `D`: a removed row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delete<'a> {
    pub oid: u32,
    pub old: OldTuple<'a>,
}

/// `T`: one `TRUNCATE` statement, possibly of several relations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Truncate {
    /// Bit 0: `CASCADE`; bit 1: `RESTART IDENTITY`.
    pub options: u8,
    pub oids: Vec<u32>,
}

impl Truncate {
    #[must_use]
    pub fn cascade(&self) -> bool {
        self.options & 1 != 0
    }

    #[must_use]
    pub fn restart_identity(&self) -> bool {
        self.options & 2 != 0
    }
}

/// `M`: a message from `pg_logical_emit_message` (Zero's DDL events use prefix `zero/…`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogicalMessage<'a> {
    /// Bit 0: transactional (sent inside Begin/Commit).
    pub flags: u8,
    pub lsn: Lsn,
    pub prefix: &'a str,
    pub content: &'a [u8],
}

impl LogicalMessage<'_> {
    #[must_use]
    pub fn transactional(&self) -> bool {
        self.flags & 1 != 0
    }
}

/// One column value of a tuple.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Value<'a> {
    /// `n`.
    Null,
    /// `u`: a TOASTed value that the update did not change; its bytes are not sent.
    UnchangedToast,
    /// `t`: the type's text output, in the database encoding (not validated here).
    Text(&'a [u8]),
    /// `b`: the type's binary send format (only with the `binary` option).
    Binary(&'a [u8]),
}

/// Validated TupleData, kept as the raw column entries; iterate for [`Value`]s.
///
/// Only the decoder builds one, after checking every entry, so iteration cannot fail. Two tuples
/// are equal exactly when their values are.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct TupleData<'a> {
    columns: usize,
    raw: &'a [u8],
}

impl<'a> TupleData<'a> {
    /// Number of columns.
    #[must_use]
    pub fn len(&self) -> usize {
        self.columns
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.columns == 0
    }

    /// The column values in order.
    #[must_use]
    pub fn iter(&self) -> TupleIter<'a> {
        TupleIter {
            reader: Reader::new(self.raw, "TupleData"),
            left: self.columns,
        }
    }

    fn read(r: &mut Reader<'a>) -> Result<Self> {
        let columns = r.count16()?;
        let start = r.position();
        for _ in 0..columns {
            read_value(r)?;
        }
        Ok(TupleData {
            columns,
            raw: r.read_since(start),
        })
    }
}

impl std::fmt::Debug for TupleData<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl<'a> IntoIterator for &TupleData<'a> {
    type Item = Value<'a>;
    type IntoIter = TupleIter<'a>;

    fn into_iter(self) -> TupleIter<'a> {
        self.iter()
    }
}

/// Iterator over the values of a [`TupleData`].
#[derive(Debug, Clone)]
pub struct TupleIter<'a> {
    reader: Reader<'a>,
    left: usize,
}

impl<'a> Iterator for TupleIter<'a> {
    type Item = Value<'a>;

    fn next(&mut self) -> Option<Value<'a>> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        // Validated at decode time; an error here is impossible, and would end the iteration.
        read_value(&mut self.reader).ok()
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.left, Some(self.left))
    }
}

impl ExactSizeIterator for TupleIter<'_> {}

fn read_value<'a>(r: &mut Reader<'a>) -> Result<Value<'a>> {
    let at = r.position();
    match r.u8()? {
        b'n' => Ok(Value::Null),
        b'u' => Ok(Value::UnchangedToast),
        b't' => Ok(Value::Text(r.length_prefixed()?)),
        b'b' => Ok(Value::Binary(r.length_prefixed()?)),
        kind => Err(r.error_at(at, DecodeProblem::UnknownTupleKind { kind })),
    }
}

/// Decodes one replication CopyData frame (`w` with its pgoutput message, or `k`).
///
/// # Errors
/// [`crate::error::Error::MalformedMessage`] if `frame` is not exactly one valid frame; offsets
/// count from the frame's first byte.
pub fn decode_frame(frame: &[u8]) -> Result<Frame<'_>> {
    let mut r = Reader::new(frame, "replication frame");
    match r.u8()? {
        b'w' => {
            r.set_context("XLogData frame");
            let wal_start = Lsn(r.u64()?);
            let wal_end = Lsn(r.u64()?);
            let server_time = PgTimestamp(r.i64()?);
            let message = read_message(&mut r)?;
            Ok(Frame::XLogData(XLogData {
                wal_start,
                wal_end,
                server_time,
                message,
            }))
        }
        b'k' => {
            r.set_context("primary keepalive frame");
            let wal_end = Lsn(r.u64()?);
            let server_time = PgTimestamp(r.i64()?);
            let reply_requested = r.u8()? != 0;
            r.finish()?;
            Ok(Frame::Keepalive(Keepalive {
                wal_end,
                server_time,
                reply_requested,
            }))
        }
        tag => Err(r.error_at(0, DecodeProblem::UnknownTag { tag })),
    }
}

/// Decodes one pgoutput message that fills `payload` exactly (the body of an XLogData frame).
///
/// # Errors
/// [`crate::error::Error::MalformedMessage`] if `payload` is not exactly one valid v1 message.
pub fn decode_message(payload: &[u8]) -> Result<Message<'_>> {
    let mut r = Reader::new(payload, "pgoutput message");
    read_message(&mut r)
}

/// Name of a pgoutput tag that exists only in protocol v2 and later.
fn later_protocol_tag(tag: u8) -> Option<&'static str> {
    Some(match tag {
        b'S' => "Stream Start",
        b'E' => "Stream Stop",
        b'c' => "Stream Commit",
        b'A' => "Stream Abort",
        b'b' => "Begin Prepare",
        b'P' => "Prepare",
        b'K' => "Commit Prepared",
        b'r' => "Rollback Prepared",
        b'p' => "Stream Prepare",
        _ => return None,
    })
}

/// Reads one pgoutput message from the reader's position to its end.
fn read_message<'a>(r: &mut Reader<'a>) -> Result<Message<'a>> {
    let tag_at = r.position();
    r.set_context("pgoutput message");
    let tag = r.u8()?;
    let message = match tag {
        b'B' => {
            r.set_context("pgoutput Begin");
            Message::Begin(Begin {
                final_lsn: Lsn(r.u64()?),
                commit_time: PgTimestamp(r.i64()?),
                xid: r.u32()?,
            })
        }
        b'C' => {
            r.set_context("pgoutput Commit");
            Message::Commit(Commit {
                flags: r.u8()?,
                commit_lsn: Lsn(r.u64()?),
                end_lsn: Lsn(r.u64()?),
                commit_time: PgTimestamp(r.i64()?),
            })
        }
        b'O' => {
            r.set_context("pgoutput Origin");
            Message::Origin(Origin {
                commit_lsn: Lsn(r.u64()?),
                name: r.cstr()?,
            })
        }
        b'R' => {
            r.set_context("pgoutput Relation");
            Message::Relation(read_relation(r)?)
        }
        b'Y' => {
            r.set_context("pgoutput Type");
            Message::Type(Type {
                oid: r.u32()?,
                namespace: r.cstr()?,
                name: r.cstr()?,
            })
        }
        b'I' => {
            r.set_context("pgoutput Insert");
            let oid = r.u32()?;
            expect_tag(r, b'N', "'N' (new tuple)")?;
            Message::Insert(Insert {
                oid,
                new: TupleData::read(r)?,
            })
        }
        b'U' => {
            r.set_context("pgoutput Update");
            Message::Update(read_update(r)?)
        }
        b'D' => {
            r.set_context("pgoutput Delete");
            let oid = r.u32()?;
            let at = r.position();
            let old = match r.u8()? {
                b'K' => OldTuple::Key(TupleData::read(r)?),
                b'O' => OldTuple::Full(TupleData::read(r)?),
                found => {
                    return Err(r.error_at(
                        at,
                        DecodeProblem::UnexpectedTag {
                            expected: "'K' or 'O'",
                            found,
                        },
                    ));
                }
            };
            Message::Delete(Delete { oid, old })
        }
        b'T' => {
            r.set_context("pgoutput Truncate");
            Message::Truncate(read_truncate(r)?)
        }
        b'M' => {
            r.set_context("pgoutput Message");
            Message::Message(LogicalMessage {
                flags: r.u8()?,
                lsn: Lsn(r.u64()?),
                prefix: r.cstr()?,
                content: r.length_prefixed()?,
            })
        }
        tag => {
            let problem = match later_protocol_tag(tag) {
                Some(name) => DecodeProblem::UnsupportedTag { tag, name },
                None => DecodeProblem::UnknownTag { tag },
            };
            return Err(r.error_at(tag_at, problem));
        }
    };
    r.finish()?;
    Ok(message)
}

fn expect_tag(r: &mut Reader<'_>, want: u8, expected: &'static str) -> Result<()> {
    let at = r.position();
    match r.u8()? {
        found if found == want => Ok(()),
        found => Err(r.error_at(at, DecodeProblem::UnexpectedTag { expected, found })),
    }
}

fn read_relation<'a>(r: &mut Reader<'a>) -> Result<Relation<'a>> {
    let oid = r.u32()?;
    let namespace = r.cstr()?;
    let name = r.cstr()?;
    let at = r.position();
    let value = r.u8()?;
    let replica_identity = ReplicaIdentity::from_byte(value)
        .ok_or_else(|| r.error_at(at, DecodeProblem::UnknownReplicaIdentity { value }))?;
    let count = r.count16()?;
    // A column takes at least 10 bytes, which bounds the allocation by the input size.
    let mut columns = Vec::with_capacity(count.min(r.remaining() / 10));
    for _ in 0..count {
        columns.push(Column {
            flags: r.u8()?,
            name: r.cstr()?,
            type_oid: r.u32()?,
            type_modifier: r.i32()?,
        });
    }
    Ok(Relation {
        oid,
        namespace,
        name,
        replica_identity,
        columns,
    })
}

fn read_update<'a>(r: &mut Reader<'a>) -> Result<Update<'a>> {
    let oid = r.u32()?;
    let at = r.position();
    let old = match r.u8()? {
        b'N' => None,
        kind @ (b'K' | b'O') => {
            let tuple = TupleData::read(r)?;
            expect_tag(r, b'N', "'N' (new tuple)")?;
            Some(if kind == b'K' {
                OldTuple::Key(tuple)
            } else {
                OldTuple::Full(tuple)
            })
        }
        found => {
            return Err(r.error_at(
                at,
                DecodeProblem::UnexpectedTag {
                    expected: "'K', 'O' or 'N'",
                    found,
                },
            ));
        }
    };
    Ok(Update {
        oid,
        old,
        new: TupleData::read(r)?,
    })
}

fn read_truncate(r: &mut Reader<'_>) -> Result<Truncate> {
    let count = r.count32()?;
    let options = r.u8()?;
    // Check the whole array is there before allocating for it.
    let at = r.position();
    let needed = count.saturating_mul(4);
    if needed > r.remaining() {
        return Err(r.error_at(
            at,
            DecodeProblem::Truncated {
                needed,
                available: r.remaining(),
            },
        ));
    }
    let mut oids = Vec::with_capacity(count);
    for _ in 0..count {
        oids.push(r.u32()?);
    }
    Ok(Truncate { options, oids })
}

/// Encodes a standby status update (`r`), the frame a client sends with `put_copy_data`.
///
/// `write`/`flush`/`apply` are the last WAL positions received, durably stored and applied;
/// `client_time_us` is microseconds since 2000-01-01 UTC; `reply_requested` asks the server to
/// answer with a keepalive at once.
#[must_use]
pub fn encode_standby_status(
    write: Lsn,
    flush: Lsn,
    apply: Lsn,
    client_time_us: i64,
    reply_requested: bool,
) -> [u8; STANDBY_STATUS_LEN] {
    let mut out = [0u8; STANDBY_STATUS_LEN];
    out[0] = b'r';
    out[1..9].copy_from_slice(&write.0.to_be_bytes());
    out[9..17].copy_from_slice(&flush.0.to_be_bytes());
    out[17..25].copy_from_slice(&apply.0.to_be_bytes());
    out[25..33].copy_from_slice(&client_time_us.to_be_bytes());
    out[33] = u8::from(reply_requested);
    out
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::error::Error;
    use crate::pg::test_encoder::{
        arb_frame, arb_message, encode_frame, encode_message, model_frame, model_message, Col, F, M, V,
    };

    fn malformed(err: Error) -> (&'static str, usize, DecodeProblem) {
        match err {
            Error::MalformedMessage { what, offset, problem } => (what, offset, problem),
            other => panic!("expected MalformedMessage, got {other:?}"),
        }
    }

    fn relation() -> M {
        M::Relation {
            oid: 16385,
            namespace: "public".into(),
            name: "items".into(),
            identity: b'd',
            columns: vec![
                Col {
                    flags: 1,
                    name: "id".into(),
                    type_oid: 23,
                    typmod: -1,
                },
                Col {
                    flags: 0,
                    name: "name".into(),
                    type_oid: 1043,
                    typmod: 36,
                },
            ],
        }
    }

    /// One example of every message kind, every tuple kind and every old-tuple variant.
    fn examples() -> Vec<M> {
        let row = vec![
            V::Text(b"1".to_vec()),
            V::Null,
            V::Unchanged,
            V::Binary(vec![0, 0, 0, 7]),
        ];
        vec![
            M::Begin {
                final_lsn: 0x0654_E298,
                time: 817_000_000_000_000,
                xid: 745,
            },
            M::Commit {
                flags: 0,
                commit_lsn: 0x0654_E298,
                end_lsn: 0x0654_E2C8,
                time: 817_000_000_000_000,
            },
            M::Origin {
                lsn: 7,
                name: "upstream".into(),
            },
            relation(),
            M::Type {
                oid: 16390,
                namespace: "public".into(),
                name: "mood".into(),
            },
            M::Insert {
                oid: 16385,
                new: row.clone(),
            },
            M::Update {
                oid: 16385,
                old: None,
                new: row.clone(),
            },
            M::Update {
                oid: 16385,
                old: Some((b'K', vec![V::Text(b"1".to_vec()), V::Null])),
                new: row.clone(),
            },
            M::Update {
                oid: 16385,
                old: Some((b'O', row.clone())),
                new: row.clone(),
            },
            M::Delete {
                oid: 16385,
                kind: b'K',
                old: vec![V::Text(b"1".to_vec()), V::Null],
            },
            M::Delete {
                oid: 16385,
                kind: b'O',
                old: row.clone(),
            },
            M::Insert {
                oid: 16385,
                new: vec![],
            },
            M::Truncate {
                options: 3,
                oids: vec![16385, 16390],
            },
            M::Truncate {
                options: 0,
                oids: vec![],
            },
            M::Message {
                flags: 1,
                lsn: 0x0654_E200,
                prefix: "zero/0/ddl".into(),
                content: b"{\"type\":\"ddl\"}".to_vec(),
            },
            M::Message {
                flags: 0,
                lsn: 1,
                prefix: String::new(),
                content: vec![],
            },
        ]
    }

    #[test]
    fn begin_wire_layout() {
        let bytes = [
            b'B', 0, 0, 0, 0, 0x06, 0x54, 0xE2, 0x98, // final LSN
            0, 0, 0, 0, 0, 0, 0, 42, // commit time
            0, 0, 0x02, 0xE9, // xid 745
        ];
        let m = decode_message(&bytes).unwrap();
        assert_eq!(
            m,
            Message::Begin(Begin {
                final_lsn: Lsn(0x0654_E298),
                commit_time: PgTimestamp(42),
                xid: 745
            })
        );
        assert_eq!(m.name(), "Begin");
    }

    #[test]
    fn relation_and_insert_wire_layout() {
        let mut rel = vec![b'R', 0, 0, 0x40, 0x01];
        rel.extend_from_slice(b"public\0t\0f");
        rel.extend_from_slice(&[0, 1, 1]);
        rel.extend_from_slice(b"id\0");
        rel.extend_from_slice(&[0, 0, 0, 23, 0xff, 0xff, 0xff, 0xff]);
        let Message::Relation(r) = decode_message(&rel).unwrap() else {
            panic!()
        };
        assert_eq!(
            (r.oid, r.namespace, r.name, r.replica_identity),
            (16385, "public", "t", ReplicaIdentity::Full)
        );
        assert_eq!(
            r.columns,
            vec![Column {
                flags: 1,
                name: "id",
                type_oid: 23,
                type_modifier: -1
            }]
        );
        assert!(r.columns[0].is_key());

        let ins = [
            b'I', 0, 0, 0x40, 0x01, b'N', 0, 4, b'n', b'u', b't', 0, 0, 0, 2, b'h', b'i', b'b', 0, 0, 0, 0,
        ];
        let Message::Insert(i) = decode_message(&ins).unwrap() else {
            panic!()
        };
        assert_eq!(i.oid, 16385);
        assert_eq!(i.new.len(), 4);
        let values: Vec<Value<'_>> = i.new.iter().collect();
        assert_eq!(
            values,
            vec![
                Value::Null,
                Value::UnchangedToast,
                Value::Text(b"hi"),
                Value::Binary(b"")
            ]
        );
        // Zero copy: the text value points into the input.
        let Value::Text(hi) = values[2] else { panic!() };
        assert_eq!(hi.as_ptr(), ins[15..].as_ptr());
    }

    #[test]
    fn frames_wire_layout() {
        let mut w = vec![b'w'];
        w.extend_from_slice(&1u64.to_be_bytes());
        w.extend_from_slice(&2u64.to_be_bytes());
        w.extend_from_slice(&3i64.to_be_bytes());
        w.extend_from_slice(&encode_message(&M::Begin {
            final_lsn: 4,
            time: 5,
            xid: 6,
        }));
        let Frame::XLogData(x) = decode_frame(&w).unwrap() else {
            panic!()
        };
        assert_eq!(
            (x.wal_start, x.wal_end, x.server_time),
            (Lsn(1), Lsn(2), PgTimestamp(3))
        );
        assert_eq!(
            x.message,
            Message::Begin(Begin {
                final_lsn: Lsn(4),
                commit_time: PgTimestamp(5),
                xid: 6
            })
        );

        let mut k = vec![b'k'];
        k.extend_from_slice(&0x0654_E298u64.to_be_bytes());
        k.extend_from_slice(&(-1i64).to_be_bytes());
        k.push(1);
        let expected = Keepalive {
            wal_end: Lsn(0x0654_E298),
            server_time: PgTimestamp(-1),
            reply_requested: true,
        };
        assert_eq!(decode_frame(&k).unwrap(), Frame::Keepalive(expected));
        *k.last_mut().unwrap() = 0;
        assert_eq!(
            decode_frame(&k).unwrap(),
            Frame::Keepalive(Keepalive {
                reply_requested: false,
                ..expected
            })
        );
    }

    #[test]
    fn every_example_round_trips() {
        for m in examples() {
            let bytes = encode_message(&m);
            assert_eq!(model_message(&decode_message(&bytes).unwrap()), m);
            let frame = F::W {
                start: 1,
                end: 2,
                time: 3,
                message: m,
            };
            assert_eq!(model_frame(&decode_frame(&encode_frame(&frame)).unwrap()), frame);
        }
    }

    #[test]
    fn every_strict_prefix_is_an_error() {
        let mut frames: Vec<Vec<u8>> = examples()
            .into_iter()
            .map(|m| {
                encode_frame(&F::W {
                    start: 1,
                    end: 2,
                    time: 3,
                    message: m,
                })
            })
            .collect();
        frames.push(encode_frame(&F::K {
            end: 1,
            time: 2,
            reply: true,
        }));
        for frame in &frames {
            for cut in 0..frame.len() {
                let err = decode_frame(&frame[..cut]).expect_err("a strict prefix decoded");
                let (_, offset, _) = malformed(err);
                assert!(offset <= cut, "offset {offset} beyond the {cut} bytes given");
            }
            // And payload-only decoding of every prefix of the message.
            if frame[0] == b'w' {
                let payload = &frame[25..];
                for cut in 0..payload.len() {
                    assert!(decode_message(&payload[..cut]).is_err());
                }
            }
        }
    }

    #[test]
    fn truncation_reports_where_and_how_much() {
        let bytes = encode_message(&M::Begin {
            final_lsn: 1,
            time: 2,
            xid: 3,
        });
        let (what, offset, problem) = malformed(decode_message(&bytes[..19]).unwrap_err());
        assert_eq!((what, offset), ("pgoutput Begin", 17));
        assert_eq!(
            problem,
            DecodeProblem::Truncated {
                needed: 4,
                available: 2
            }
        );
        let (what, offset, _) = malformed(decode_frame(&[]).unwrap_err());
        assert_eq!((what, offset), ("replication frame", 0));
    }

    #[test]
    fn trailing_bytes_are_an_error() {
        for m in examples() {
            let mut bytes = encode_message(&m);
            let end = bytes.len();
            bytes.push(0);
            let (_, offset, problem) = malformed(decode_message(&bytes).unwrap_err());
            assert_eq!((offset, problem), (end, DecodeProblem::TrailingBytes { count: 1 }));
        }
        let mut k = encode_frame(&F::K {
            end: 1,
            time: 2,
            reply: false,
        });
        k.extend_from_slice(b"xy");
        let (what, offset, problem) = malformed(decode_frame(&k).unwrap_err());
        assert_eq!(
            (what, offset, problem),
            ("primary keepalive frame", 18, DecodeProblem::TrailingBytes { count: 2 })
        );
    }

    #[test]
    fn unknown_tags_name_the_byte() {
        let (what, offset, problem) = malformed(decode_frame(b"r0000").unwrap_err());
        assert_eq!(
            (what, offset, problem),
            ("replication frame", 0, DecodeProblem::UnknownTag { tag: b'r' })
        );
        let (what, offset, problem) = malformed(decode_message(&[0xff]).unwrap_err());
        assert_eq!(
            (what, offset, problem),
            ("pgoutput message", 0, DecodeProblem::UnknownTag { tag: 0xff })
        );
        let err = decode_message(b"Sxxxx").unwrap_err();
        assert_eq!(err.to_string(), "malformed pgoutput message at byte 0: tag 'S' (0x53) is Stream Start, which needs a protocol version above 1");
        // Inside an XLogData frame the offset counts from the frame's first byte.
        let mut w = encode_frame(&F::W {
            start: 0,
            end: 0,
            time: 0,
            message: M::Begin {
                final_lsn: 0,
                time: 0,
                xid: 0,
            },
        });
        w.truncate(25);
        w.push(b'Z');
        let err = decode_frame(&w).unwrap_err();
        assert_eq!(
            err.to_string(),
            "malformed pgoutput message at byte 25: unknown tag 'Z' (0x5a)"
        );
        assert_eq!(err.code(), "MalformedError");
    }

    #[test]
    fn bad_sub_tags_tuple_kinds_and_identities() {
        let insert = encode_message(&M::Insert {
            oid: 1,
            new: vec![V::Null],
        });
        let mut bad = insert.clone();
        bad[5] = b'X';
        assert_eq!(
            malformed(decode_message(&bad).unwrap_err()),
            (
                "pgoutput Insert",
                5,
                DecodeProblem::UnexpectedTag {
                    expected: "'N' (new tuple)",
                    found: b'X'
                }
            )
        );
        let mut bad = insert.clone();
        bad[8] = b'x';
        assert_eq!(
            malformed(decode_message(&bad).unwrap_err()).2,
            DecodeProblem::UnknownTupleKind { kind: b'x' }
        );

        let update = encode_message(&M::Update {
            oid: 1,
            old: Some((b'K', vec![V::Null])),
            new: vec![V::Null],
        });
        let mut bad = update.clone();
        bad[5] = b'X';
        assert_eq!(
            malformed(decode_message(&bad).unwrap_err()).2,
            DecodeProblem::UnexpectedTag {
                expected: "'K', 'O' or 'N'",
                found: b'X'
            }
        );
        let mut bad = update.clone();
        bad[9] = b'K';
        assert_eq!(
            malformed(decode_message(&bad).unwrap_err()),
            (
                "pgoutput Update",
                9,
                DecodeProblem::UnexpectedTag {
                    expected: "'N' (new tuple)",
                    found: b'K'
                }
            )
        );

        let mut delete = encode_message(&M::Delete {
            oid: 1,
            kind: b'K',
            old: vec![V::Null],
        });
        delete[5] = b'N';
        assert_eq!(
            malformed(decode_message(&delete).unwrap_err()).2,
            DecodeProblem::UnexpectedTag {
                expected: "'K' or 'O'",
                found: b'N'
            }
        );

        let mut rel = encode_message(&relation());
        let at = 1 + 4 + "public\0items\0".len();
        assert_eq!(rel[at], b'd');
        rel[at] = b'x';
        assert_eq!(
            malformed(decode_message(&rel).unwrap_err()),
            (
                "pgoutput Relation",
                at,
                DecodeProblem::UnknownReplicaIdentity { value: b'x' }
            )
        );
    }

    #[test]
    fn negative_lengths_and_counts() {
        // Tuple column count.
        let mut bad = encode_message(&M::Insert { oid: 1, new: vec![] });
        bad[6..8].copy_from_slice(&(-1i16).to_be_bytes());
        assert_eq!(
            malformed(decode_message(&bad).unwrap_err()).2,
            DecodeProblem::NegativeLength { value: -1 }
        );
        // Text value length (-1 is NULL in COPY, but pgoutput uses 'n' for NULL).
        let mut bad = encode_message(&M::Insert {
            oid: 1,
            new: vec![V::Text(vec![])],
        });
        bad[9..13].copy_from_slice(&(-1i32).to_be_bytes());
        assert_eq!(
            malformed(decode_message(&bad).unwrap_err()),
            ("pgoutput Insert", 9, DecodeProblem::NegativeLength { value: -1 })
        );
        // Relation column count.
        let mut bad = encode_message(&M::Relation {
            oid: 1,
            namespace: String::new(),
            name: String::new(),
            identity: b'n',
            columns: vec![],
        });
        let n = bad.len();
        bad[n - 2..].copy_from_slice(&i16::MIN.to_be_bytes());
        assert_eq!(
            malformed(decode_message(&bad).unwrap_err()).2,
            DecodeProblem::NegativeLength { value: i16::MIN.into() }
        );
        // Truncate relation count.
        let mut bad = encode_message(&M::Truncate {
            options: 0,
            oids: vec![],
        });
        bad[1..5].copy_from_slice(&(-5i32).to_be_bytes());
        assert_eq!(
            malformed(decode_message(&bad).unwrap_err()).2,
            DecodeProblem::NegativeLength { value: -5 }
        );
        // Message content length.
        let mut bad = encode_message(&M::Message {
            flags: 1,
            lsn: 0,
            prefix: "p".into(),
            content: vec![],
        });
        let n = bad.len();
        bad[n - 4..].copy_from_slice(&(-2i32).to_be_bytes());
        assert_eq!(
            malformed(decode_message(&bad).unwrap_err()).2,
            DecodeProblem::NegativeLength { value: -2 }
        );
    }

    #[test]
    fn huge_counts_fail_without_allocating() {
        let mut bad = encode_message(&M::Truncate {
            options: 0,
            oids: vec![],
        });
        bad[1..5].copy_from_slice(&i32::MAX.to_be_bytes());
        let (_, offset, problem) = malformed(decode_message(&bad).unwrap_err());
        assert_eq!(
            (offset, problem),
            (
                6,
                DecodeProblem::Truncated {
                    needed: 4 * i32::MAX as usize,
                    available: 0
                }
            )
        );
        let mut bad = encode_message(&M::Relation {
            oid: 1,
            namespace: String::new(),
            name: String::new(),
            identity: b'n',
            columns: vec![],
        });
        let n = bad.len();
        bad[n - 2..].copy_from_slice(&i16::MAX.to_be_bytes());
        assert!(decode_message(&bad).is_err());
        let mut bad = encode_message(&M::Insert {
            oid: 1,
            new: vec![V::Text(vec![])],
        });
        bad[9..13].copy_from_slice(&i32::MAX.to_be_bytes());
        assert_eq!(
            malformed(decode_message(&bad).unwrap_err()).2,
            DecodeProblem::Truncated {
                needed: i32::MAX as usize,
                available: 0
            }
        );
    }

    #[test]
    fn strings_must_be_terminated_utf8() {
        let mut bad = encode_message(&M::Origin {
            lsn: 0,
            name: "abc".into(),
        });
        bad.pop();
        assert_eq!(
            malformed(decode_message(&bad).unwrap_err()),
            ("pgoutput Origin", 9, DecodeProblem::UnterminatedString)
        );
        let mut bad = encode_message(&M::Type {
            oid: 0,
            namespace: "ab".into(),
            name: "cd".into(),
        });
        bad[8] = 0xc3; // "cd" → "\xc3d": a lead byte without its continuation
        assert_eq!(
            malformed(decode_message(&bad).unwrap_err()),
            ("pgoutput Type", 8, DecodeProblem::InvalidUtf8 { valid_up_to: 0 })
        );
        let mut bad = encode_message(&M::Message {
            flags: 0,
            lsn: 0,
            prefix: "zero".into(),
            content: vec![],
        });
        bad[12] = 0xff;
        let err = decode_message(&bad).unwrap_err();
        assert_eq!(
            err.to_string(),
            "malformed pgoutput Message at byte 10: string is not UTF-8 (valid up to byte 2 of it)"
        );
        let mut bad = encode_message(&relation());
        let at = bad.len() - 4 - 4 - 1; // the NUL after the last column name
        assert_eq!(bad[at], 0);
        bad[at] = b'!';
        assert!(matches!(
            malformed(decode_message(&bad).unwrap_err()).2,
            DecodeProblem::UnterminatedString | DecodeProblem::Truncated { .. }
        ));
    }

    #[test]
    fn flags_and_options_accessors() {
        let Message::Truncate(t) = decode_message(&encode_message(&M::Truncate {
            options: 2,
            oids: vec![1],
        }))
        .unwrap() else {
            panic!()
        };
        assert!(!t.cascade() && t.restart_identity());
        let msg = M::Message {
            flags: 1,
            lsn: 0,
            prefix: "p".into(),
            content: b"c".to_vec(),
        };
        let bytes = encode_message(&msg);
        let Message::Message(m) = decode_message(&bytes).unwrap() else {
            panic!()
        };
        assert!(m.transactional());
        assert_eq!((m.prefix, m.content), ("p", &b"c"[..]));
        for b in [b'd', b'n', b'f', b'i'] {
            assert_eq!(ReplicaIdentity::from_byte(b).unwrap().as_byte(), b);
        }
    }

    #[test]
    fn standby_status_layout() {
        let bytes = encode_standby_status(Lsn(1), Lsn(0x0654_E298), Lsn(u64::MAX), -2, true);
        assert_eq!(bytes.len(), 34);
        let mut expected = vec![b'r'];
        expected.extend_from_slice(&1u64.to_be_bytes());
        expected.extend_from_slice(&0x0654_E298u64.to_be_bytes());
        expected.extend_from_slice(&u64::MAX.to_be_bytes());
        expected.extend_from_slice(&(-2i64).to_be_bytes());
        expected.push(1);
        assert_eq!(bytes.to_vec(), expected);
        assert_eq!(encode_standby_status(Lsn(0), Lsn(0), Lsn(0), 0, false)[33], 0);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = decode_frame(&bytes);
            let _ = decode_message(&bytes);
        }

        #[test]
        fn arbitrary_tagged_bytes_never_panic(
            tag in prop_oneof![Just(b'B'), Just(b'C'), Just(b'O'), Just(b'R'), Just(b'Y'), Just(b'I'), Just(b'U'), Just(b'D'), Just(b'T'), Just(b'M')],
            rest in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let mut bytes = vec![tag];
            bytes.extend_from_slice(&rest);
            if let Ok(m) = decode_message(&bytes) {
                // Whatever decodes must re-encode to the same bytes.
                prop_assert_eq!(encode_message(&model_message(&m)), bytes);
            }
        }

        #[test]
        fn encode_decode_round_trip(frame in arb_frame()) {
            let bytes = encode_frame(&frame);
            let decoded = decode_frame(&bytes).unwrap();
            prop_assert_eq!(model_frame(&decoded), frame);
        }

        #[test]
        fn mutated_messages_never_panic(message in arb_message(), at in any::<prop::sample::Index>(), byte: u8) {
            let mut bytes = encode_message(&message);
            let i = at.index(bytes.len());
            bytes[i] = byte;
            if let Ok(m) = decode_message(&bytes) {
                prop_assert_eq!(encode_message(&model_message(&m)), bytes);
            }
        }
    }
}
