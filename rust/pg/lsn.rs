//! Log sequence numbers (`XLogRecPtr`): a 64-bit byte position in the WAL.
//!
//! On the wire an LSN is an Int64; in text Postgres writes it as two upper-case hex numbers, the high
//! and low 32 bits, separated by `/` and without zero padding (`0/16B3748`). [`Lsn::from_str`] also
//! accepts lower case and zero padding (`0/0654e298`), as `pg_lsn` input does.

use std::fmt;
use std::str::FromStr;

use crate::error::{Error, Result};

/// A WAL position. Ordered like the integer it wraps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Lsn(pub u64);

impl Lsn {
    /// `0/0`, "no position" in the protocol.
    pub const ZERO: Lsn = Lsn(0);
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xffff_ffff)
    }
}

impl From<u64> for Lsn {
    fn from(value: u64) -> Self {
        Lsn(value)
    }
}

impl From<Lsn> for u64 {
    fn from(value: Lsn) -> Self {
        value.0
    }
}

fn half(text: &str, whole: &str) -> Result<u64> {
    let valid = (1..=8).contains(&text.len()) && text.bytes().all(|b| b.is_ascii_hexdigit());
    let value = if valid {
        u64::from_str_radix(text, 16).ok()
    } else {
        None
    };
    value.ok_or_else(|| Error::Malformed {
        what: "LSN",
        detail: format!("{whole:?} is not two 1-8 digit hex numbers separated by '/'"),
    })
}

impl FromStr for Lsn {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self> {
        let (hi, lo) = text.split_once('/').unwrap_or((text, ""));
        Ok(Lsn((half(hi, text)? << 32) | half(lo, text)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_like_postgres() {
        assert_eq!(Lsn(0).to_string(), "0/0");
        assert_eq!(Lsn(0x0654_E298).to_string(), "0/654E298");
        assert_eq!(Lsn(0x1_0000_0000).to_string(), "1/0");
        assert_eq!(Lsn(u64::MAX).to_string(), "FFFFFFFF/FFFFFFFF");
    }

    #[test]
    fn parses_padded_and_lower_case() {
        assert_eq!("0/0654E298".parse::<Lsn>().unwrap(), Lsn(0x0654_E298));
        assert_eq!("0/0654e298".parse::<Lsn>().unwrap(), Lsn(0x0654_E298));
        assert_eq!("16/B374D848".parse::<Lsn>().unwrap(), Lsn(0x16_B374_D848));
        assert_eq!("FFFFFFFF/FFFFFFFF".parse::<Lsn>().unwrap(), Lsn(u64::MAX));
    }

    #[test]
    fn rejects_garbage() {
        for bad in [
            "",
            "/",
            "0",
            "0/",
            "/0",
            "0/0/0",
            "x/0",
            "0/+1",
            "-0/1",
            "123456789/0",
            "0/ 1",
            " 0/1",
        ] {
            let err = bad.parse::<Lsn>().unwrap_err();
            assert_eq!(err.code(), "MalformedError", "{bad:?}");
        }
    }

    #[test]
    fn round_trips() {
        for v in [0, 1, 0xffff_ffff, 0x1_0000_0000, 0x0123_4567_89ab_cdef, u64::MAX] {
            assert_eq!(Lsn(v).to_string().parse::<Lsn>().unwrap(), Lsn(v));
        }
    }
}
