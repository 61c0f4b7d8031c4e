//! Golden test: replication frames captured from a real PostgreSQL 15
//! (`tests/golden/pgoutput/capture.py`, container format documented there: `ZCPGFRM1`, then
//! big-endian u32 length + frame bytes per frame) must decode, pass the relation cache, and render
//! exactly as `tests/golden/pgoutput/stream.txt` (one line per frame).
//!
//! Regenerate the rendering after an intended change, then read the diff:
//! `ZCACHE_UPDATE_GOLDEN=1 cargo test --test pgoutput_golden`.

use std::collections::BTreeSet;
use std::path::PathBuf;

use _native::pg::describe::describe_frame;
use _native::pg::pgoutput::{decode_frame, Frame, Message, OldTuple, TupleData, Value};
use _native::pg::RelationCache;

const MAGIC: &[u8] = b"ZCPGFRM1";

fn golden_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden/pgoutput")
}

fn read_frames() -> Vec<Vec<u8>> {
    let bytes = std::fs::read(golden_dir().join("stream.bin")).expect("stream.bin (run capture.py)");
    let mut rest = bytes.strip_prefix(MAGIC).expect("stream.bin starts with ZCPGFRM1");
    let mut frames = Vec::new();
    while !rest.is_empty() {
        let (len, tail) = rest.split_at(4);
        let len = u32::from_be_bytes(len.try_into().unwrap()) as usize;
        let (frame, tail) = tail.split_at(len);
        frames.push(frame.to_vec());
        rest = tail;
    }
    frames
}

#[test]
fn captured_stream_matches_golden_rendering() {
    let frames = read_frames();
    let rendered: String = frames.iter().map(|f| describe_frame(f).unwrap() + "\n").collect();
    let path = golden_dir().join("stream.txt");
    if std::env::var_os("ZCACHE_UPDATE_GOLDEN").is_some_and(|v| v == "1") {
        std::fs::write(&path, &rendered).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path).expect("stream.txt (regenerate with ZCACHE_UPDATE_GOLDEN=1)");
    for (i, (got, want)) in rendered.lines().zip(expected.lines()).enumerate() {
        assert_eq!(got, want, "frame {i} differs from stream.txt line {}", i + 1);
    }
    assert_eq!(
        rendered.lines().count(),
        expected.lines().count(),
        "frame count differs from stream.txt"
    );
}

#[test]
fn captured_stream_is_consistent_and_covers_the_protocol() {
    let mut cache = RelationCache::new();
    let mut seen = BTreeSet::new();
    let mut open_xact = false;
    for frame in read_frames() {
        match decode_frame(&frame).unwrap() {
            Frame::Keepalive(k) => {
                seen.insert(if k.reply_requested {
                    "keepalive reply"
                } else {
                    "keepalive"
                });
            }
            Frame::XLogData(w) => {
                let m = &w.message;
                cache.observe(m).unwrap();
                seen.insert(m.name());
                match m {
                    Message::Begin(_) => {
                        assert!(!open_xact, "nested Begin");
                        open_xact = true;
                    }
                    Message::Commit(c) => {
                        assert!(open_xact, "Commit without Begin");
                        assert!(c.end_lsn > c.commit_lsn);
                        open_xact = false;
                    }
                    Message::Message(lm) => {
                        assert_eq!(lm.transactional(), open_xact, "transactional flag vs Begin/Commit");
                        seen.insert(if lm.transactional() {
                            "Message transactional"
                        } else {
                            "Message plain"
                        });
                    }
                    Message::Update(u) => {
                        seen.insert(match u.old {
                            None => "Update N",
                            Some(OldTuple::Key(_)) => "Update K",
                            Some(OldTuple::Full(_)) => "Update O",
                        });
                    }
                    Message::Delete(d) => {
                        seen.insert(if matches!(d.old, OldTuple::Key(_)) {
                            "Delete K"
                        } else {
                            "Delete O"
                        });
                    }
                    Message::Truncate(t) if t.oids.len() == 2 => {
                        seen.insert("Truncate of two");
                    }
                    _ => {}
                }
                let tuples = match m {
                    Message::Insert(i) => vec![i.new],
                    Message::Update(u) => u.old.iter().map(|o| *o.tuple()).chain([u.new]).collect(),
                    Message::Delete(d) => vec![*d.old.tuple()],
                    _ => vec![],
                };
                for value in tuples.iter().flat_map(TupleData::iter) {
                    seen.insert(match value {
                        Value::Null => "value n",
                        Value::UnchangedToast => "value u",
                        Value::Text(_) => "value t",
                        Value::Binary(_) => "value b",
                    });
                }
            }
        }
    }
    assert!(!open_xact, "stream ends inside a transaction");
    let required = [
        "Begin",
        "Commit",
        "Origin",
        "Relation",
        "Type",
        "Insert",
        "Update",
        "Delete",
        "Truncate",
        "Message",
        "Update N",
        "Update K",
        "Update O",
        "Delete K",
        "Delete O",
        "Truncate of two",
        "Message transactional",
        "Message plain",
        "value n",
        "value u",
        "value t",
        "value b",
        "keepalive",
        "keepalive reply",
    ];
    let missing: Vec<_> = required.iter().filter(|r| !seen.contains(*r)).collect();
    assert!(missing.is_empty(), "the capture no longer covers {missing:?}");
}
