//! Per-session relation state of a pgoutput stream.
//!
//! pgoutput sends a Relation message before the first change to a relation in a replication
//! session, and again whenever the relation's schema changes (DDL invalidates the walsender's
//! cache). Row changes then name the relation only by OID. [`RelationCache`] keeps an owned copy of
//! the latest Relation message per OID (and of Type messages, for non-built-in column types) and
//! checks that every row change and truncate refers to a described relation with the same column
//! count.
//!
//! Invariants:
//! * the cache is only valid for one replication session: after reconnecting, start a new one
//!   (Postgres resends Relation messages in each session);
//! * a Relation message replaces the previous entry for its OID wholesale.

use std::collections::HashMap;

use crate::error::{Error, Result};
use crate::pg::pgoutput::{Message, OldTuple, ReplicaIdentity, TupleData};

/// An owned copy of a Relation message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelationInfo {
    pub oid: u32,
    pub namespace: String,
    pub name: String,
    pub replica_identity: ReplicaIdentity,
    pub columns: Vec<ColumnInfo>,
}

/// An owned copy of one Relation column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnInfo {
    pub name: String,
    pub type_oid: u32,
    pub type_modifier: i32,
    /// Part of the replica identity key.
    pub key: bool,
}

impl RelationInfo {
    /// Names of the replica identity columns, in column order.
    pub fn key_columns(&self) -> impl Iterator<Item = &str> {
        self.columns.iter().filter(|c| c.key).map(|c| c.name.as_str())
    }
}

/// An owned copy of a Type message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypeInfo {
    pub oid: u32,
    pub namespace: String,
    pub name: String,
}

/// OID → latest Relation (and Type) message of the current replication session.
#[derive(Debug, Default, Clone)]
pub struct RelationCache {
    relations: HashMap<u32, RelationInfo>,
    types: HashMap<u32, TypeInfo>,
}

impl RelationCache {
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Records Relation and Type messages; checks Insert, Update, Delete and Truncate against the
    /// recorded relations. Other messages pass through.
    ///
    /// # Errors
    /// [`Error::UnknownRelation`] for a change to an OID never described in this session;
    /// [`Error::ColumnCountMismatch`] for a tuple whose column count differs from its relation's.
    pub fn observe(&mut self, message: &Message<'_>) -> Result<()> {
        match message {
            Message::Relation(r) => {
                let info = RelationInfo {
                    oid: r.oid,
                    namespace: r.namespace.to_owned(),
                    name: r.name.to_owned(),
                    replica_identity: r.replica_identity,
                    columns: r
                        .columns
                        .iter()
                        .map(|c| ColumnInfo {
                            name: c.name.to_owned(),
                            type_oid: c.type_oid,
                            type_modifier: c.type_modifier,
                            key: c.is_key(),
                        })
                        .collect(),
                };
                self.relations.insert(r.oid, info);
            }
            Message::Type(t) => {
                let info = TypeInfo {
                    oid: t.oid,
                    namespace: t.namespace.to_owned(),
                    name: t.name.to_owned(),
                };
                self.types.insert(t.oid, info);
            }
            Message::Insert(m) => self.check(message.name(), m.oid, [Some(&m.new)])?,
            Message::Update(m) => self.check(
                message.name(),
                m.oid,
                [m.old.as_ref().map(OldTuple::tuple), Some(&m.new)],
            )?,
            Message::Delete(m) => self.check(message.name(), m.oid, [Some(m.old.tuple())])?,
            Message::Truncate(m) => {
                for &oid in &m.oids {
                    self.relation(message.name(), oid)?;
                }
            }
            Message::Begin(_) | Message::Commit(_) | Message::Origin(_) | Message::Message(_) => {}
        }
        Ok(())
    }

    fn check<const N: usize>(
        &self,
        message: &'static str,
        oid: u32,
        tuples: [Option<&TupleData<'_>>; N],
    ) -> Result<()> {
        let relation = self.relation(message, oid)?;
        for tuple in tuples.into_iter().flatten() {
            if tuple.len() != relation.columns.len() {
                return Err(Error::ColumnCountMismatch {
                    message,
                    oid,
                    relation: relation.columns.len(),
                    tuple: tuple.len(),
                });
            }
        }
        Ok(())
    }

    /// The relation `oid`.
    ///
    /// # Errors
    /// [`Error::UnknownRelation`] naming `message` (the kind of message asking) if not described.
    pub fn relation(&self, message: &'static str, oid: u32) -> Result<&RelationInfo> {
        self.relations.get(&oid).ok_or(Error::UnknownRelation { message, oid })
    }

    /// The relation `oid`, if described.
    #[must_use]
    pub fn get(&self, oid: u32) -> Option<&RelationInfo> {
        self.relations.get(&oid)
    }

    /// The non-built-in type `oid`, if a Type message described it.
    #[must_use]
    pub fn type_info(&self, oid: u32) -> Option<&TypeInfo> {
        self.types.get(&oid)
    }

    /// Number of relations described.
    #[must_use]
    pub fn len(&self) -> usize {
        self.relations.len()
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.relations.is_empty()
    }

    /// Forgets everything (a new replication session).
    pub fn clear(&mut self) {
        self.relations.clear();
        self.types.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pg::pgoutput::decode_message;
    use crate::pg::test_encoder::{encode_message, Col, M, V};

    fn relation(oid: u32, columns: &[(&str, bool)]) -> Vec<u8> {
        encode_message(&M::Relation {
            oid,
            namespace: "public".into(),
            name: format!("t{oid}"),
            identity: b'd',
            columns: columns
                .iter()
                .map(|&(name, key)| Col {
                    flags: u8::from(key),
                    name: name.into(),
                    type_oid: 23,
                    typmod: -1,
                })
                .collect(),
        })
    }

    fn observe(cache: &mut RelationCache, m: &M) -> Result<()> {
        cache.observe(&decode_message(&encode_message(m))?)
    }

    #[test]
    fn relation_messages_are_cached_and_replaced() {
        let mut cache = RelationCache::new();
        assert!(cache.is_empty());
        cache
            .observe(&decode_message(&relation(1, &[("id", true), ("a", false)])).unwrap())
            .unwrap();
        let r = cache.get(1).unwrap();
        assert_eq!(
            (r.namespace.as_str(), r.name.as_str(), r.replica_identity),
            ("public", "t1", ReplicaIdentity::Default)
        );
        assert_eq!(r.key_columns().collect::<Vec<_>>(), vec!["id"]);
        observe(
            &mut cache,
            &M::Insert {
                oid: 1,
                new: vec![V::Null, V::Null],
            },
        )
        .unwrap();

        // ALTER TABLE ADD COLUMN: a new Relation message for the same OID.
        cache
            .observe(&decode_message(&relation(1, &[("id", true), ("a", false), ("b", false)])).unwrap())
            .unwrap();
        assert_eq!(cache.len(), 1);
        assert_eq!(cache.get(1).unwrap().columns.len(), 3);
        observe(
            &mut cache,
            &M::Insert {
                oid: 1,
                new: vec![V::Null, V::Null, V::Unchanged],
            },
        )
        .unwrap();
        let err = observe(
            &mut cache,
            &M::Insert {
                oid: 1,
                new: vec![V::Null, V::Null],
            },
        )
        .unwrap_err();
        assert!(
            matches!(
                err,
                Error::ColumnCountMismatch {
                    message: "Insert",
                    oid: 1,
                    relation: 3,
                    tuple: 2
                }
            ),
            "{err:?}"
        );
        assert_eq!(err.code(), "ColumnCountMismatchError");
    }

    #[test]
    fn changes_to_unknown_relations_are_errors() {
        let mut cache = RelationCache::new();
        cache
            .observe(&decode_message(&relation(1, &[("id", true)])).unwrap())
            .unwrap();
        for (m, name) in [
            (
                M::Insert {
                    oid: 2,
                    new: vec![V::Null],
                },
                "Insert",
            ),
            (
                M::Update {
                    oid: 2,
                    old: None,
                    new: vec![V::Null],
                },
                "Update",
            ),
            (
                M::Delete {
                    oid: 2,
                    kind: b'K',
                    old: vec![V::Null],
                },
                "Delete",
            ),
            (
                M::Truncate {
                    options: 0,
                    oids: vec![1, 2],
                },
                "Truncate",
            ),
        ] {
            let err = observe(&mut cache, &m).unwrap_err();
            assert!(
                matches!(err, Error::UnknownRelation { message, oid: 2 } if message == name),
                "{err:?}"
            );
            assert_eq!(err.code(), "UnknownRelationError");
        }
        assert!(cache.relation("Insert", 1).is_ok());
        cache.clear();
        assert!(observe(
            &mut cache,
            &M::Insert {
                oid: 1,
                new: vec![V::Null]
            }
        )
        .is_err());
    }

    #[test]
    fn old_and_new_tuples_are_both_checked() {
        let mut cache = RelationCache::new();
        cache
            .observe(&decode_message(&relation(1, &[("id", true), ("a", false)])).unwrap())
            .unwrap();
        let two = vec![V::Null, V::Text(b"x".to_vec())];
        observe(
            &mut cache,
            &M::Update {
                oid: 1,
                old: Some((b'O', two.clone())),
                new: two.clone(),
            },
        )
        .unwrap();
        observe(
            &mut cache,
            &M::Delete {
                oid: 1,
                kind: b'K',
                old: two.clone(),
            },
        )
        .unwrap();
        assert!(observe(
            &mut cache,
            &M::Update {
                oid: 1,
                old: Some((b'K', vec![V::Null])),
                new: two.clone()
            }
        )
        .is_err());
        assert!(observe(
            &mut cache,
            &M::Update {
                oid: 1,
                old: None,
                new: vec![V::Null]
            }
        )
        .is_err());
        assert!(observe(
            &mut cache,
            &M::Delete {
                oid: 1,
                kind: b'O',
                old: vec![]
            }
        )
        .is_err());
        observe(
            &mut cache,
            &M::Begin {
                final_lsn: 0,
                time: 0,
                xid: 0,
            },
        )
        .unwrap();
    }

    #[test]
    fn type_messages_are_cached() {
        let mut cache = RelationCache::new();
        observe(
            &mut cache,
            &M::Type {
                oid: 9,
                namespace: "public".into(),
                name: "mood".into(),
            },
        )
        .unwrap();
        assert_eq!(cache.type_info(9).unwrap().name, "mood");
        assert!(cache.type_info(10).is_none());
    }
}
