//! Postgres `TimestampTz` on the replication wire: Int64 microseconds since 2000-01-01 00:00:00 UTC.

use std::fmt;

/// Microseconds between 1970-01-01 (Unix epoch) and 2000-01-01 (Postgres epoch).
pub const PG_EPOCH_UNIX_MICROS: i64 = 946_684_800_000_000;

/// A wire timestamp; displayed as `2025-11-25T14:55:01.123456Z` for years 1..=9999, else `ts(<µs>)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct PgTimestamp(pub i64);

impl PgTimestamp {
    /// Microseconds since the Unix epoch, `None` on overflow.
    #[must_use]
    pub fn unix_micros(self) -> Option<i64> {
        self.0.checked_add(PG_EPOCH_UNIX_MICROS)
    }
}

/// (year, month, day) of a day count since 1970-01-01, proleptic Gregorian (H. Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097); // [0, 146096]
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // [0, 365]
    let mp = (5 * doy + 2) / 153; // [0, 11]
    let day = doy - (153 * mp + 2) / 5 + 1; // [1, 31]
    let month = if mp < 10 { mp + 3 } else { mp - 9 }; // [1, 12]
    let year = yoe + era * 400 + i64::from(month <= 2);
    // Both are in small ranges by construction.
    (year, u32::try_from(month).unwrap_or(0), u32::try_from(day).unwrap_or(0))
}

impl fmt::Display for PgTimestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.0.div_euclid(1_000_000);
        let micros = self.0.rem_euclid(1_000_000);
        // 10_957 days from 1970-01-01 to 2000-01-01; secs / 86400 is far from overflowing.
        let days = secs.div_euclid(86_400) + 10_957;
        let sod = secs.rem_euclid(86_400);
        let (year, month, day) = civil_from_days(days);
        if !(1..=9999).contains(&year) {
            return write!(f, "ts({})", self.0);
        }
        write!(
            f,
            "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{micros:06}Z",
            sod / 3600,
            sod % 3600 / 60,
            sod % 60
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn displays_iso_utc() {
        assert_eq!(PgTimestamp(0).to_string(), "2000-01-01T00:00:00.000000Z");
        assert_eq!(PgTimestamp(-1).to_string(), "1999-12-31T23:59:59.999999Z");
        // 2024-02-29T12:34:56.789012Z: 8825 days after 2000-01-01.
        let us = ((8825 * 86_400 + 12 * 3600 + 34 * 60 + 56) * 1_000_000) + 789_012;
        assert_eq!(PgTimestamp(us).to_string(), "2024-02-29T12:34:56.789012Z");
        assert_eq!(
            PgTimestamp(-PG_EPOCH_UNIX_MICROS).to_string(),
            "1970-01-01T00:00:00.000000Z"
        );
    }

    #[test]
    fn out_of_range_years_show_raw_micros() {
        assert_eq!(PgTimestamp(i64::MAX).to_string(), format!("ts({})", i64::MAX));
        assert_eq!(PgTimestamp(i64::MIN).to_string(), format!("ts({})", i64::MIN));
        // 0001-01-01 and 9999-12-31T23:59:59.999999 are the edges.
        let first = -730_119 * 86_400 * 1_000_000;
        assert_eq!(PgTimestamp(first).to_string(), "0001-01-01T00:00:00.000000Z");
        assert_eq!(PgTimestamp(first - 1).to_string(), format!("ts({})", first - 1));
        let last = (2_921_940 * 86_400 * 1_000_000) - 1;
        assert_eq!(PgTimestamp(last).to_string(), "9999-12-31T23:59:59.999999Z");
        assert_eq!(PgTimestamp(last + 1).to_string(), format!("ts({})", last + 1));
    }

    #[test]
    fn unix_micros() {
        assert_eq!(PgTimestamp(0).unix_micros(), Some(PG_EPOCH_UNIX_MICROS));
        assert_eq!(PgTimestamp(i64::MAX).unix_micros(), None);
    }
}
