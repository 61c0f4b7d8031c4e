//! Arbitrary bytes through the replication-frame and pgoutput decoders, the rendering and the
//! relation cache: any input must decode or return an error, never panic or read out of bounds.
//! Whatever decodes must render. Inputs starting with `w` exercise the XLogData → pgoutput path.

#![no_main]

use _native::pg::pgoutput::{decode_frame, decode_message, Frame};
use _native::pg::RelationCache;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut cache = RelationCache::new();
    if let Ok(frame) = decode_frame(data) {
        let _ = frame.to_string();
        if let Frame::XLogData(w) = &frame {
            let _ = cache.observe(&w.message);
        }
    }
    if let Ok(message) = decode_message(data) {
        let _ = message.to_string();
        let _ = cache.observe(&message);
    }
});
