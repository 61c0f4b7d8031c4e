//! Test-only: an owned model of frames and pgoutput messages, an encoder for it written straight
//! from the protocol documentation, the inverse mapping from decoded messages, and proptest
//! strategies. Shared by the unit tests of `pgoutput`, `relations` and `describe`.

use proptest::prelude::*;

use crate::pg::pgoutput::{Frame, Message, OldTuple, TupleData, Value};

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum V {
    Null,
    Unchanged,
    Text(Vec<u8>),
    Binary(Vec<u8>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Col {
    pub flags: u8,
    pub name: String,
    pub type_oid: u32,
    pub typmod: i32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum M {
    Begin {
        final_lsn: u64,
        time: i64,
        xid: u32,
    },
    Commit {
        flags: u8,
        commit_lsn: u64,
        end_lsn: u64,
        time: i64,
    },
    Origin {
        lsn: u64,
        name: String,
    },
    Relation {
        oid: u32,
        namespace: String,
        name: String,
        identity: u8,
        columns: Vec<Col>,
    },
    Type {
        oid: u32,
        namespace: String,
        name: String,
    },
    Insert {
        oid: u32,
        new: Vec<V>,
    },
    /// `old`: (b'K' or b'O', tuple).
    Update {
        oid: u32,
        old: Option<(u8, Vec<V>)>,
        new: Vec<V>,
    },
    /// `kind`: b'K' or b'O'.
    Delete {
        oid: u32,
        kind: u8,
        old: Vec<V>,
    },
    Truncate {
        options: u8,
        oids: Vec<u32>,
    },
    Message {
        flags: u8,
        lsn: u64,
        prefix: String,
        content: Vec<u8>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum F {
    W {
        start: u64,
        end: u64,
        time: i64,
        message: M,
    },
    K {
        end: u64,
        time: i64,
        reply: bool,
    },
}

fn cstr(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(s.as_bytes());
    out.push(0);
}

fn len16(n: usize) -> [u8; 2] {
    i16::try_from(n).expect("test tuple too wide").to_be_bytes()
}

fn len32(n: usize) -> [u8; 4] {
    i32::try_from(n).expect("test value too long").to_be_bytes()
}

pub(crate) fn encode_tuple(out: &mut Vec<u8>, values: &[V]) {
    out.extend_from_slice(&len16(values.len()));
    for v in values {
        match v {
            V::Null => out.push(b'n'),
            V::Unchanged => out.push(b'u'),
            V::Text(b) | V::Binary(b) => {
                out.push(if matches!(v, V::Text(_)) { b't' } else { b'b' });
                out.extend_from_slice(&len32(b.len()));
                out.extend_from_slice(b);
            }
        }
    }
}

pub(crate) fn encode_message(m: &M) -> Vec<u8> {
    let mut out = Vec::new();
    match m {
        M::Begin { final_lsn, time, xid } => {
            out.push(b'B');
            out.extend_from_slice(&final_lsn.to_be_bytes());
            out.extend_from_slice(&time.to_be_bytes());
            out.extend_from_slice(&xid.to_be_bytes());
        }
        M::Commit {
            flags,
            commit_lsn,
            end_lsn,
            time,
        } => {
            out.push(b'C');
            out.push(*flags);
            out.extend_from_slice(&commit_lsn.to_be_bytes());
            out.extend_from_slice(&end_lsn.to_be_bytes());
            out.extend_from_slice(&time.to_be_bytes());
        }
        M::Origin { lsn, name } => {
            out.push(b'O');
            out.extend_from_slice(&lsn.to_be_bytes());
            cstr(&mut out, name);
        }
        M::Relation {
            oid,
            namespace,
            name,
            identity,
            columns,
        } => {
            out.push(b'R');
            out.extend_from_slice(&oid.to_be_bytes());
            cstr(&mut out, namespace);
            cstr(&mut out, name);
            out.push(*identity);
            out.extend_from_slice(&len16(columns.len()));
            for c in columns {
                out.push(c.flags);
                cstr(&mut out, &c.name);
                out.extend_from_slice(&c.type_oid.to_be_bytes());
                out.extend_from_slice(&c.typmod.to_be_bytes());
            }
        }
        M::Type { oid, namespace, name } => {
            out.push(b'Y');
            out.extend_from_slice(&oid.to_be_bytes());
            cstr(&mut out, namespace);
            cstr(&mut out, name);
        }
        M::Insert { oid, new } => {
            out.push(b'I');
            out.extend_from_slice(&oid.to_be_bytes());
            out.push(b'N');
            encode_tuple(&mut out, new);
        }
        M::Update { oid, old, new } => {
            out.push(b'U');
            out.extend_from_slice(&oid.to_be_bytes());
            if let Some((kind, tuple)) = old {
                out.push(*kind);
                encode_tuple(&mut out, tuple);
            }
            out.push(b'N');
            encode_tuple(&mut out, new);
        }
        M::Delete { oid, kind, old } => {
            out.push(b'D');
            out.extend_from_slice(&oid.to_be_bytes());
            out.push(*kind);
            encode_tuple(&mut out, old);
        }
        M::Truncate { options, oids } => {
            out.push(b'T');
            out.extend_from_slice(&len32(oids.len()));
            out.push(*options);
            for oid in oids {
                out.extend_from_slice(&oid.to_be_bytes());
            }
        }
        M::Message {
            flags,
            lsn,
            prefix,
            content,
        } => {
            out.push(b'M');
            out.push(*flags);
            out.extend_from_slice(&lsn.to_be_bytes());
            cstr(&mut out, prefix);
            out.extend_from_slice(&len32(content.len()));
            out.extend_from_slice(content);
        }
    }
    out
}

pub(crate) fn encode_frame(f: &F) -> Vec<u8> {
    let mut out = Vec::new();
    match f {
        F::W {
            start,
            end,
            time,
            message,
        } => {
            out.push(b'w');
            out.extend_from_slice(&start.to_be_bytes());
            out.extend_from_slice(&end.to_be_bytes());
            out.extend_from_slice(&time.to_be_bytes());
            out.extend_from_slice(&encode_message(message));
        }
        F::K { end, time, reply } => {
            out.push(b'k');
            out.extend_from_slice(&end.to_be_bytes());
            out.extend_from_slice(&time.to_be_bytes());
            out.push(u8::from(*reply));
        }
    }
    out
}

fn model_tuple(t: &TupleData<'_>) -> Vec<V> {
    t.iter()
        .map(|v| match v {
            Value::Null => V::Null,
            Value::UnchangedToast => V::Unchanged,
            Value::Text(b) => V::Text(b.to_vec()),
            Value::Binary(b) => V::Binary(b.to_vec()),
        })
        .collect()
}

fn model_old(old: &OldTuple<'_>) -> (u8, Vec<V>) {
    match old {
        OldTuple::Key(t) => (b'K', model_tuple(t)),
        OldTuple::Full(t) => (b'O', model_tuple(t)),
    }
}

/// The model of a decoded message (inverse of [`encode_message`]).
pub(crate) fn model_message(m: &Message<'_>) -> M {
    match m {
        Message::Begin(b) => M::Begin {
            final_lsn: b.final_lsn.0,
            time: b.commit_time.0,
            xid: b.xid,
        },
        Message::Commit(c) => M::Commit {
            flags: c.flags,
            commit_lsn: c.commit_lsn.0,
            end_lsn: c.end_lsn.0,
            time: c.commit_time.0,
        },
        Message::Origin(o) => M::Origin {
            lsn: o.commit_lsn.0,
            name: o.name.to_owned(),
        },
        Message::Relation(r) => M::Relation {
            oid: r.oid,
            namespace: r.namespace.to_owned(),
            name: r.name.to_owned(),
            identity: r.replica_identity.as_byte(),
            columns: r
                .columns
                .iter()
                .map(|c| Col {
                    flags: c.flags,
                    name: c.name.to_owned(),
                    type_oid: c.type_oid,
                    typmod: c.type_modifier,
                })
                .collect(),
        },
        Message::Type(t) => M::Type {
            oid: t.oid,
            namespace: t.namespace.to_owned(),
            name: t.name.to_owned(),
        },
        Message::Insert(i) => M::Insert {
            oid: i.oid,
            new: model_tuple(&i.new),
        },
        Message::Update(u) => M::Update {
            oid: u.oid,
            old: u.old.as_ref().map(model_old),
            new: model_tuple(&u.new),
        },
        Message::Delete(d) => {
            let (kind, old) = model_old(&d.old);
            M::Delete { oid: d.oid, kind, old }
        }
        Message::Truncate(t) => M::Truncate {
            options: t.options,
            oids: t.oids.clone(),
        },
        Message::Message(m) => M::Message {
            flags: m.flags,
            lsn: m.lsn.0,
            prefix: m.prefix.to_owned(),
            content: m.content.to_vec(),
        },
    }
}

pub(crate) fn model_frame(f: &Frame<'_>) -> F {
    match f {
        Frame::XLogData(w) => F::W {
            start: w.wal_start.0,
            end: w.wal_end.0,
            time: w.server_time.0,
            message: model_message(&w.message),
        },
        Frame::Keepalive(k) => F::K {
            end: k.wal_end.0,
            time: k.server_time.0,
            reply: k.reply_requested,
        },
    }
}

fn arb_string() -> impl Strategy<Value = String> {
    // Any Unicode except NUL, which terminates protocol strings.
    "[^\u{0}]{0,12}"
}

fn arb_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        4 => proptest::collection::vec(any::<u8>(), 0..16),
        1 => proptest::collection::vec(any::<u8>(), 90..130),
    ]
}

fn arb_value() -> impl Strategy<Value = V> {
    prop_oneof![
        Just(V::Null),
        Just(V::Unchanged),
        arb_bytes().prop_map(V::Text),
        arb_bytes().prop_map(V::Binary),
    ]
}

fn arb_tuple() -> impl Strategy<Value = Vec<V>> {
    proptest::collection::vec(arb_value(), 0..6)
}

fn arb_kind() -> impl Strategy<Value = u8> {
    prop_oneof![Just(b'K'), Just(b'O')]
}

pub(crate) fn arb_message() -> impl Strategy<Value = M> {
    let col = (any::<u8>(), arb_string(), any::<u32>(), any::<i32>()).prop_map(|(flags, name, type_oid, typmod)| Col {
        flags,
        name,
        type_oid,
        typmod,
    });
    prop_oneof![
        (any::<u64>(), any::<i64>(), any::<u32>()).prop_map(|(final_lsn, time, xid)| M::Begin { final_lsn, time, xid }),
        (any::<u8>(), any::<u64>(), any::<u64>(), any::<i64>()).prop_map(|(flags, commit_lsn, end_lsn, time)| {
            M::Commit {
                flags,
                commit_lsn,
                end_lsn,
                time,
            }
        }),
        (any::<u64>(), arb_string()).prop_map(|(lsn, name)| M::Origin { lsn, name }),
        (
            any::<u32>(),
            arb_string(),
            arb_string(),
            prop_oneof![Just(b'd'), Just(b'n'), Just(b'f'), Just(b'i')],
            proptest::collection::vec(col, 0..6)
        )
            .prop_map(|(oid, namespace, name, identity, columns)| M::Relation {
                oid,
                namespace,
                name,
                identity,
                columns
            }),
        (any::<u32>(), arb_string(), arb_string()).prop_map(|(oid, namespace, name)| M::Type { oid, namespace, name }),
        (any::<u32>(), arb_tuple()).prop_map(|(oid, new)| M::Insert { oid, new }),
        (
            any::<u32>(),
            proptest::option::of((arb_kind(), arb_tuple())),
            arb_tuple()
        )
            .prop_map(|(oid, old, new)| M::Update { oid, old, new }),
        (any::<u32>(), arb_kind(), arb_tuple()).prop_map(|(oid, kind, old)| M::Delete { oid, kind, old }),
        (any::<u8>(), proptest::collection::vec(any::<u32>(), 0..5))
            .prop_map(|(options, oids)| M::Truncate { options, oids }),
        (any::<u8>(), any::<u64>(), arb_string(), arb_bytes()).prop_map(|(flags, lsn, prefix, content)| M::Message {
            flags,
            lsn,
            prefix,
            content
        }),
    ]
}

pub(crate) fn arb_frame() -> impl Strategy<Value = F> {
    prop_oneof![
        4 => (any::<u64>(), any::<u64>(), any::<i64>(), arb_message())
            .prop_map(|(start, end, time, message)| F::W { start, end, time, message }),
        1 => (any::<u64>(), any::<i64>(), any::<bool>()).prop_map(|(end, time, reply)| F::K { end, time, reply }),
    ]
}
