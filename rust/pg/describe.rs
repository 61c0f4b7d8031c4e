//! A stable, one-line, human-readable rendering of replication frames, for golden tests and
//! debugging. Not a hot path; the Python tests recompute it independently, so changing it means
//! changing `tests/native/test_pgoutput.py` and regenerating `tests/golden/pgoutput/stream.txt`.
//!
//! Grammar (one line per frame, fields separated by one space):
//!
//! ```text
//! frame     = "w start=" lsn " end=" lsn " time=" ts " | " message
//!           | "k end=" lsn " time=" ts " reply=" bool
//! message   = "BEGIN final_lsn=" lsn " commit_time=" ts " xid=" u32
//!           | "COMMIT flags=" u8 " commit_lsn=" lsn " end_lsn=" lsn " commit_time=" ts
//!           | "ORIGIN commit_lsn=" lsn " name=" str
//!           | "RELATION oid=" u32 " " str "." str " identity=" ("default"|"nothing"|"full"|"index")
//!             " columns=[" [column {", " column}] "]"
//!           | "TYPE oid=" u32 " " str "." str
//!           | "INSERT oid=" u32 " new=" tuple
//!           | "UPDATE oid=" u32 [" key=" tuple | " old=" tuple] " new=" tuple
//!           | "DELETE oid=" u32 (" key=" tuple | " old=" tuple)
//!           | "TRUNCATE oids=[" [u32 {", " u32}] "] cascade=" bool " restart_identity=" bool
//!             [" options=" u8]                       (only if bits other than 0 and 1 are set)
//!           | "MESSAGE transactional=" bool [" flags=" u8] (only if flags > 1)
//!             " lsn=" lsn " prefix=" str " content=" bytes
//! column    = str " type=" u32 " typmod=" i32 [" key" | " flags=" u8]  (key: flags == 1;
//!                                                                       flags=: other non-zero)
//! tuple     = "(" [value {", " value}] ")"
//! value     = "null" | "unchanged" | "t" bytes | "b" bytes
//! bytes     = quoted, or for more than 96 bytes: quoted(first 64 bytes) "...(" len " bytes)"
//! str       = quoted
//! quoted    = '"' { byte 0x20..=0x7e except '"' and '\' as itself | '\"' | '\\' | '\x' 2 lower hex } '"'
//! lsn       = upper-case hex "/" upper-case hex, no padding (Postgres' %X/%X)
//! ts        = YYYY-MM-DDTHH:MM:SS.ffffffZ (UTC) for years 1..=9999, else "ts(" i64 µs ")"
//! bool      = "true" | "false"
//! ```

use std::fmt::{self, Display, Formatter};

use crate::error::Result;
use crate::pg::pgoutput::{decode_frame, Column, Frame, LogicalMessage, Message, OldTuple, Relation, TupleData, Value};

/// Values longer than this are shortened to [`SHORTENED_TO`] bytes plus their length.
pub const MAX_FULL_VALUE: usize = 96;
/// Bytes shown of a shortened value.
pub const SHORTENED_TO: usize = 64;

/// Decodes `frame` and renders it as one line.
///
/// # Errors
/// As [`decode_frame`].
pub fn describe_frame(frame: &[u8]) -> Result<String> {
    Ok(decode_frame(frame)?.to_string())
}

/// `bytes` quoted and escaped as the module grammar says.
struct Quoted<'a>(&'a [u8]);

impl Display for Quoted<'_> {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        f.write_str("\"")?;
        for &b in self.0 {
            match b {
                b'"' => f.write_str("\\\"")?,
                b'\\' => f.write_str("\\\\")?,
                0x20..=0x7e => write!(f, "{}", char::from(b))?,
                _ => write!(f, "\\x{b:02x}")?,
            }
        }
        f.write_str("\"")
    }
}

/// A value's bytes, shortened when long.
struct Bytes<'a>(&'a [u8]);

impl Display for Bytes<'_> {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        match self.0.get(..SHORTENED_TO) {
            Some(head) if self.0.len() > MAX_FULL_VALUE => write!(f, "{}...({} bytes)", Quoted(head), self.0.len()),
            _ => write!(f, "{}", Quoted(self.0)),
        }
    }
}

impl Display for Value<'_> {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        match self {
            Value::Null => f.write_str("null"),
            Value::UnchangedToast => f.write_str("unchanged"),
            Value::Text(bytes) => write!(f, "t{}", Bytes(bytes)),
            Value::Binary(bytes) => write!(f, "b{}", Bytes(bytes)),
        }
    }
}

impl Display for TupleData<'_> {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        f.write_str("(")?;
        for (i, value) in self.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{value}")?;
        }
        f.write_str(")")
    }
}

impl Display for OldTuple<'_> {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        match self {
            OldTuple::Key(t) => write!(f, "key={t}"),
            OldTuple::Full(t) => write!(f, "old={t}"),
        }
    }
}

impl Display for Column<'_> {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} type={} typmod={}",
            Quoted(self.name.as_bytes()),
            self.type_oid,
            self.type_modifier
        )?;
        match self.flags {
            0 => Ok(()),
            1 => f.write_str(" key"),
            flags => write!(f, " flags={flags}"),
        }
    }
}

impl Display for Relation<'_> {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "RELATION oid={} {}.{} identity={} columns=[",
            self.oid,
            Quoted(self.namespace.as_bytes()),
            Quoted(self.name.as_bytes()),
            self.replica_identity.name()
        )?;
        for (i, column) in self.columns.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{column}")?;
        }
        f.write_str("]")
    }
}

impl Display for LogicalMessage<'_> {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        write!(f, "MESSAGE transactional={}", self.transactional())?;
        if self.flags > 1 {
            write!(f, " flags={}", self.flags)?;
        }
        write!(
            f,
            " lsn={} prefix={} content={}",
            self.lsn,
            Quoted(self.prefix.as_bytes()),
            Bytes(self.content)
        )
    }
}

impl Display for Message<'_> {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        match self {
            Message::Begin(m) => {
                write!(
                    f,
                    "BEGIN final_lsn={} commit_time={} xid={}",
                    m.final_lsn, m.commit_time, m.xid
                )
            }
            Message::Commit(m) => write!(
                f,
                "COMMIT flags={} commit_lsn={} end_lsn={} commit_time={}",
                m.flags, m.commit_lsn, m.end_lsn, m.commit_time
            ),
            Message::Origin(m) => write!(
                f,
                "ORIGIN commit_lsn={} name={}",
                m.commit_lsn,
                Quoted(m.name.as_bytes())
            ),
            Message::Relation(m) => write!(f, "{m}"),
            Message::Type(m) => {
                write!(
                    f,
                    "TYPE oid={} {}.{}",
                    m.oid,
                    Quoted(m.namespace.as_bytes()),
                    Quoted(m.name.as_bytes())
                )
            }
            Message::Insert(m) => write!(f, "INSERT oid={} new={}", m.oid, m.new),
            Message::Update(m) => {
                write!(f, "UPDATE oid={}", m.oid)?;
                if let Some(old) = &m.old {
                    write!(f, " {old}")?;
                }
                write!(f, " new={}", m.new)
            }
            Message::Delete(m) => write!(f, "DELETE oid={} {}", m.oid, m.old),
            Message::Truncate(m) => {
                f.write_str("TRUNCATE oids=[")?;
                for (i, oid) in m.oids.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{oid}")?;
                }
                write!(f, "] cascade={} restart_identity={}", m.cascade(), m.restart_identity())?;
                if m.options & !3 != 0 {
                    write!(f, " options={}", m.options)?;
                }
                Ok(())
            }
            Message::Message(m) => write!(f, "{m}"),
        }
    }
}

impl Display for Frame<'_> {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        match self {
            Frame::XLogData(w) => {
                write!(
                    f,
                    "w start={} end={} time={} | {}",
                    w.wal_start, w.wal_end, w.server_time, w.message
                )
            }
            Frame::Keepalive(k) => {
                write!(
                    f,
                    "k end={} time={} reply={}",
                    k.wal_end, k.server_time, k.reply_requested
                )
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_escapes_everything_outside_printable_ascii() {
        assert_eq!(Quoted(b"a\"b\\c d~").to_string(), r#""a\"b\\c d~""#);
        assert_eq!(Quoted(b"\x00\n\x7f\xc3\xa9").to_string(), r#""\x00\x0a\x7f\xc3\xa9""#);
    }

    #[test]
    fn long_values_are_shortened() {
        let v = vec![b'a'; MAX_FULL_VALUE];
        assert_eq!(
            Value::Text(&v).to_string(),
            format!("t\"{}\"", "a".repeat(MAX_FULL_VALUE))
        );
        let v = vec![b'a'; MAX_FULL_VALUE + 1];
        assert_eq!(
            Value::Binary(&v).to_string(),
            format!("b\"{}\"...(97 bytes)", "a".repeat(SHORTENED_TO))
        );
    }
}

#[cfg(test)]
mod render_tests {
    use super::*;
    use crate::pg::test_encoder::{encode_frame, Col, F, M, V};

    fn line(message: M) -> String {
        describe_frame(&encode_frame(&F::W {
            start: 0x10,
            end: 0x1_0000_0020,
            time: 0,
            message,
        }))
        .unwrap()
    }

    #[test]
    fn renders_every_message_kind() {
        let prefix = "w start=0/10 end=1/20 time=2000-01-01T00:00:00.000000Z | ";
        let cases = [
            (
                M::Begin {
                    final_lsn: 0x0654_E298,
                    time: 1,
                    xid: 7,
                },
                "BEGIN final_lsn=0/654E298 commit_time=2000-01-01T00:00:00.000001Z xid=7",
            ),
            (
                M::Commit {
                    flags: 0,
                    commit_lsn: 1,
                    end_lsn: 2,
                    time: -1,
                },
                "COMMIT flags=0 commit_lsn=0/1 end_lsn=0/2 commit_time=1999-12-31T23:59:59.999999Z",
            ),
            (
                M::Origin {
                    lsn: 3,
                    name: "o\"1".into(),
                },
                r#"ORIGIN commit_lsn=0/3 name="o\"1""#,
            ),
            (
                M::Relation {
                    oid: 5,
                    namespace: "public".into(),
                    name: "é".into(),
                    identity: b'f',
                    columns: vec![
                        Col {
                            flags: 1,
                            name: "id".into(),
                            type_oid: 23,
                            typmod: -1,
                        },
                        Col {
                            flags: 0,
                            name: "v".into(),
                            type_oid: 1043,
                            typmod: 14,
                        },
                        Col {
                            flags: 3,
                            name: "w".into(),
                            type_oid: 1,
                            typmod: 0,
                        },
                    ],
                },
                r#"RELATION oid=5 "public"."\xc3\xa9" identity=full columns=["id" type=23 typmod=-1 key, "v" type=1043 typmod=14, "w" type=1 typmod=0 flags=3]"#,
            ),
            (
                M::Type {
                    oid: 6,
                    namespace: "public".into(),
                    name: "mood".into(),
                },
                r#"TYPE oid=6 "public"."mood""#,
            ),
            (
                M::Insert {
                    oid: 5,
                    new: vec![V::Text(b"1".to_vec()), V::Null, V::Unchanged, V::Binary(vec![0, 1])],
                },
                r#"INSERT oid=5 new=(t"1", null, unchanged, b"\x00\x01")"#,
            ),
            (
                M::Update {
                    oid: 5,
                    old: None,
                    new: vec![],
                },
                "UPDATE oid=5 new=()",
            ),
            (
                M::Update {
                    oid: 5,
                    old: Some((b'K', vec![V::Null])),
                    new: vec![V::Null],
                },
                "UPDATE oid=5 key=(null) new=(null)",
            ),
            (
                M::Update {
                    oid: 5,
                    old: Some((b'O', vec![V::Null])),
                    new: vec![V::Null],
                },
                "UPDATE oid=5 old=(null) new=(null)",
            ),
            (
                M::Delete {
                    oid: 5,
                    kind: b'K',
                    old: vec![V::Text(b"1".to_vec())],
                },
                r#"DELETE oid=5 key=(t"1")"#,
            ),
            (
                M::Delete {
                    oid: 5,
                    kind: b'O',
                    old: vec![],
                },
                "DELETE oid=5 old=()",
            ),
            (
                M::Truncate {
                    options: 1,
                    oids: vec![5, 6],
                },
                "TRUNCATE oids=[5, 6] cascade=true restart_identity=false",
            ),
            (
                M::Truncate {
                    options: 6,
                    oids: vec![],
                },
                "TRUNCATE oids=[] cascade=false restart_identity=true options=6",
            ),
            (
                M::Message {
                    flags: 1,
                    lsn: 9,
                    prefix: "zero/0/ddl".into(),
                    content: b"{\"a\":1}".to_vec(),
                },
                r#"MESSAGE transactional=true lsn=0/9 prefix="zero/0/ddl" content="{\"a\":1}""#,
            ),
            (
                M::Message {
                    flags: 4,
                    lsn: 9,
                    prefix: String::new(),
                    content: vec![],
                },
                r#"MESSAGE transactional=false flags=4 lsn=0/9 prefix="" content="""#,
            ),
        ];
        for (m, expected) in cases {
            assert_eq!(line(m), format!("{prefix}{expected}"));
        }
        let k = describe_frame(&encode_frame(&F::K {
            end: 0x20,
            time: i64::MAX,
            reply: true,
        }))
        .unwrap();
        assert_eq!(k, format!("k end=0/20 time=ts({}) reply=true", i64::MAX));
    }
}
