//! Arbitrary bytes through the binary COPY decoder and the value decoders: the first byte picks a
//! built-in type (and whether it is an array of it), the rest is decoded in both binary and text
//! form and as a COPY stream; anything must decode or return an error, never panic.

#![no_main]

use _native::pg::copy::CopyDecoder;
use _native::pg::values::{decode_binary, decode_text, ValueKind};
use libfuzzer_sys::fuzz_target;

// Built-in type oids the replica maps (bool, int2/4/8, float4/8, numeric, text, varchar, bpchar,
// "char", name, uuid, json, jsonb, date, time, timetz, timestamp, timestamptz, inet, cidr,
// macaddr, macaddr8, pg_lsn).
const OIDS: [u32; 25] = [
    16, 21, 23, 20, 700, 701, 1700, 25, 1043, 1042, 18, 19, 2950, 114, 3802, 1082, 1083, 1266, 1114, 1184, 869, 650,
    829, 774, 3220,
];

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else { return };
    if let Some(kind) = ValueKind::for_builtin_oid(OIDS[usize::from(selector) % OIDS.len()]) {
        let kind = if selector & 0x80 != 0 { ValueKind::Array(Box::new(kind)) } else { kind };
        let _ = decode_binary(&kind, rest);
        let _ = decode_text(&kind, rest);
    }
    let mut decoder = CopyDecoder::new(usize::from(selector % 8));
    let split = rest.len() / 2;
    let mut rows = 0u64;
    let ok = decoder.feed(&rest[..split], |_| {
        rows += 1;
        Ok(())
    });
    if ok.is_ok() {
        let _ = decoder.feed(&rest[split..], |_| Ok(()));
        let _ = decoder.finish();
    }
});
