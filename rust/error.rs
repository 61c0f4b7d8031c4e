//! The one error type of the Rust core. Every variant has a stable code, which the binding maps to a
//! Python exception class of the same name (see `py/errors.rs`).

/// Result alias used throughout the core.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bytes that do not form a valid message of the protocol they claim to be.
    #[error("malformed {what}: {detail}")]
    Malformed { what: &'static str, detail: String },
    /// A replication frame or pgoutput message that does not decode (`pg::pgoutput`). `what` names
    /// the message being decoded, `offset` is the byte (from the start of the frame) where the
    /// problem was found.
    #[error("malformed {what} at byte {offset}: {problem}")]
    MalformedMessage { what: &'static str, offset: usize, problem: DecodeProblem },
    /// A row change or truncate names a relation OID that no Relation message of this replication
    /// session has described (`pg::relations::RelationCache`).
    #[error("pgoutput {message} names relation oid {oid}, which no Relation message has described")]
    UnknownRelation { message: &'static str, oid: u32 },
    /// A tuple's column count differs from the column count of its relation's Relation message.
    #[error("pgoutput {message} for relation oid {oid} has {tuple} columns, its Relation message has {relation}")]
    ColumnCountMismatch { message: &'static str, oid: u32, relation: usize, tuple: usize },
    /// A column value that does not decode as its type (`pg::values`). `type_name` names the
    /// value kind (`int4`, `text`, `int4[]`, …), `format` is `binary`, `text` or `json`.
    #[error("invalid {type_name} value in {format} format: {detail}")]
    InvalidValue { type_name: String, format: &'static str, detail: String },
    /// A value of a type the replica does not store (bytea, interval, ranges, …) was given to a
    /// decoder (`pg::values`).
    #[error("type {type_name} is not supported for replication")]
    UnsupportedType { type_name: String },
    /// The replication stream is valid but breaks its own rules (a Commit without a Begin, …).
    #[error("replication protocol violation: {detail}")]
    Protocol { detail: String },
    /// A published schema the replica cannot be built from (no usable key, unreadable spec, …).
    #[error("schema problem: {detail}")]
    Schema { detail: String },
    /// Upstream changed in a way the replica cannot follow from the stream alone; a new initial
    /// sync (a resync) is needed.
    #[error("the replica must be resynced: {reason}")]
    ResyncRequired { reason: String },
    /// Talking to upstream Postgres failed (connecting, authenticating, importing the snapshot,
    /// copying); `detail` names the server and what to check.
    #[error("upstream error: {detail}")]
    Upstream { detail: String },
    /// The replica's SQLite file failed.
    #[error("replica database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A file operation on the replica failed.
    #[error("replica file error: {0}")]
    Io(#[from] std::io::Error),
    /// A query AST that does not parse, or does not fit the replica's tables (`ivm`). `detail`
    /// starts with the path of the offending part, e.g. `where.conditions[1].op: …`.
    #[error("invalid query: {detail}")]
    InvalidQuery { detail: String },
    /// A client group or query the query engine does not have (`ivm`).
    #[error("{detail}")]
    UnknownQuery { detail: String },
}

/// Why bytes failed to decode as a replication frame or pgoutput message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeProblem {
    /// A read needed more bytes than were left.
    Truncated { needed: usize, available: usize },
    /// The message ended before the buffer did.
    TrailingBytes { count: usize },
    /// A message or frame tag byte that no supported message has.
    UnknownTag { tag: u8 },
    /// A message tag of a later protocol version (streaming, two-phase); zcache speaks v1.
    UnsupportedTag { tag: u8, name: &'static str },
    /// A sub-message tag (`N`, `K`, `O`) other than the ones allowed at this point.
    UnexpectedTag { expected: &'static str, found: u8 },
    /// A tuple column kind other than `n`, `u`, `t`, `b`.
    UnknownTupleKind { kind: u8 },
    /// A replica identity other than `d`, `n`, `f`, `i`.
    UnknownReplicaIdentity { value: u8 },
    /// A negative count or length.
    NegativeLength { value: i64 },
    /// A `String` with no NUL terminator before the end of the buffer.
    UnterminatedString,
    /// A `String` that is not UTF-8.
    InvalidUtf8 { valid_up_to: usize },
}

/// `'x' (0x78)` for printable ASCII, `0x07` otherwise.
struct TagByte(u8);

impl std::fmt::Display for TagByte {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0.is_ascii_graphic() {
            write!(f, "'{}' ({:#04x})", char::from(self.0), self.0)
        } else {
            write!(f, "{:#04x}", self.0)
        }
    }
}

impl std::fmt::Display for DecodeProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecodeProblem::Truncated { needed, available } => {
                write!(f, "truncated: needs {needed} more bytes, {available} left")
            }
            DecodeProblem::TrailingBytes { count } => write!(f, "{count} trailing bytes after the message"),
            DecodeProblem::UnknownTag { tag } => write!(f, "unknown tag {}", TagByte(*tag)),
            DecodeProblem::UnsupportedTag { tag, name } => {
                write!(f, "tag {} is {name}, which needs a protocol version above 1", TagByte(*tag))
            }
            DecodeProblem::UnexpectedTag { expected, found } => {
                write!(f, "expected {expected}, found {}", TagByte(*found))
            }
            DecodeProblem::UnknownTupleKind { kind } => write!(f, "unknown tuple column kind {}", TagByte(*kind)),
            DecodeProblem::UnknownReplicaIdentity { value } => {
                write!(f, "unknown replica identity {}", TagByte(*value))
            }
            DecodeProblem::NegativeLength { value } => write!(f, "negative count or length {value}"),
            DecodeProblem::UnterminatedString => f.write_str("string has no NUL terminator"),
            DecodeProblem::InvalidUtf8 { valid_up_to } => {
                write!(f, "string is not UTF-8 (valid up to byte {valid_up_to} of it)")
            }
        }
    }
}

impl Error {
    /// Stable machine-readable code; also the name of the Python exception class.
    #[must_use]
    pub fn code(&self) -> &'static str {
        match self {
            Error::Malformed { .. } | Error::MalformedMessage { .. } => "MalformedError",
            Error::UnknownRelation { .. } => "UnknownRelationError",
            Error::ColumnCountMismatch { .. } => "ColumnCountMismatchError",
            Error::InvalidValue { .. } => "InvalidValueError",
            Error::UnsupportedType { .. } => "UnsupportedTypeError",
            Error::Protocol { .. } => "ReplicationProtocolError",
            Error::Schema { .. } => "SchemaError",
            Error::ResyncRequired { .. } => "ResyncRequiredError",
            Error::Upstream { .. } => "UpstreamError",
            Error::Sqlite(_) | Error::Io(_) => "ReplicaStorageError",
            Error::InvalidQuery { .. } => "InvalidQueryError",
            Error::UnknownQuery { .. } => "UnknownQueryError",
        }
    }
}
