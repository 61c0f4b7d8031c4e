//! LexiVersion: a string encoding of non-negative integers whose lexicographic order is numeric
//! order. Zero uses it for replica state versions (the commit LSN as a 64-bit integer) and CVR
//! versions.
//!
//! Encoding: the base-36 digits (`0-9a-z`) of the number, prefixed by one base-36 character equal
//! to the digit count minus one: `0` → `00`, `35` → `0z`, `36` → `110`, LSN `0/0654E298` →
//! `51r8src`. A `u64` has at most 13 base-36 digits, so the prefix is at most `c`.
//!
//! Decoding is strict: the prefix must match the digit count, digits must be lower case and carry
//! no leading zero (so each number has exactly one encoding), and the value must fit a `u64`.

use crate::error::{Error, Result};

const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";

/// The LexiVersion of `value`.
#[must_use]
pub fn lexi_version(value: u64) -> String {
    let mut digits = [0u8; 13];
    let mut n = value;
    let mut len = 0;
    loop {
        // `n % 36 < 36`, and a u64 has at most 13 base-36 digits.
        digits[len] = DIGITS[(n % 36) as usize];
        len += 1;
        n /= 36;
        if n == 0 {
            break;
        }
    }
    let mut out = String::with_capacity(len + 1);
    out.push(char::from(DIGITS[len - 1]));
    out.extend(digits[..len].iter().rev().map(|&d| char::from(d)));
    out
}

fn digit_value(b: u8) -> Option<u64> {
    match b {
        b'0'..=b'9' => Some(u64::from(b - b'0')),
        b'a'..=b'z' => Some(u64::from(b - b'a') + 10),
        _ => None,
    }
}

/// The number a LexiVersion encodes.
///
/// # Errors
/// [`Error::Malformed`] (what = "LexiVersion") for anything [`lexi_version`] would not produce.
pub fn parse_lexi_version(text: &str) -> Result<u64> {
    let bad = |why: &str| Error::Malformed {
        what: "LexiVersion",
        detail: format!("{text:?}: {why}"),
    };
    let bytes = text.as_bytes();
    let (&prefix, digits) = bytes.split_first().ok_or_else(|| bad("empty"))?;
    let declared = digit_value(prefix).ok_or_else(|| bad("length prefix is not a base-36 digit"))?;
    if u64::try_from(digits.len()).ok() != Some(declared + 1) {
        return Err(bad("length prefix does not match the digit count"));
    }
    if digits.len() > 1 && digits.first() == Some(&b'0') {
        return Err(bad("leading zero"));
    }
    let mut value: u64 = 0;
    for &d in digits {
        let v = digit_value(d).ok_or_else(|| bad("not a lower-case base-36 digit"))?;
        value = value
            .checked_mul(36)
            .and_then(|x| x.checked_add(v))
            .ok_or_else(|| bad("exceeds 2^64-1"))?;
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn documented_examples() {
        for (n, s) in [
            (0, "00"),
            (1, "01"),
            (10, "0a"),
            (35, "0z"),
            (36, "110"),
            (46_655, "2zzz"),
            (0x0654_E298, "51r8src"),
        ] {
            assert_eq!(lexi_version(n), s);
            assert_eq!(parse_lexi_version(s).unwrap(), n);
        }
        assert_eq!(lexi_version(u64::MAX), "c3w5e11264sgsf");
        assert_eq!(parse_lexi_version("c3w5e11264sgsf").unwrap(), u64::MAX);
    }

    #[test]
    fn rejects_non_canonical_and_out_of_range() {
        // 2^64 is "c3w5e11264sgsg" in Zero's TypeScript (bigint); it does not fit here.
        for bad in [
            "",
            "0",
            "1",
            "000",
            "100",
            "01a",
            "0Z",
            "0-",
            "d3w5e11264sgsfa",
            "c3w5e11264sgsg",
            "czzzzzzzzzzzzz",
            "é",
        ] {
            assert_eq!(parse_lexi_version(bad).unwrap_err().code(), "MalformedError", "{bad:?}");
        }
    }

    proptest! {
        #[test]
        fn round_trips_and_orders(a: u64, b: u64) {
            let (la, lb) = (lexi_version(a), lexi_version(b));
            prop_assert_eq!(parse_lexi_version(&la).unwrap(), a);
            prop_assert_eq!(a.cmp(&b), la.cmp(&lb));
        }
    }
}
