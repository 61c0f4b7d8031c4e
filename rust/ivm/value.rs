//! Values as the query engine handles them: what SQLite stores ([`Val`]), their order (SQLite's,
//! which is also Zero's `compareValues`), hashable correlation keys ([`KeyVal`], [`PartKey`]),
//! rows read from the replica ([`Row`]) and their client JSON.

use std::cmp::Ordering;
use std::fmt::Write as _;
use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;

use rusqlite::types::{ToSql, ToSqlOutput, ValueRef};

use crate::pg::values::SqlValue;

/// The engine's hash maps (row keys, partition keys: millions of small keys, hashed on every
/// row change) use a fast multiply-rotate hash (FxHash's mixing plus a final avalanche) seeded
/// once per process from the standard library's random keys, instead of SipHash.
#[derive(Debug, Clone, Copy)]
pub struct FastHasher(u64);

impl FastHasher {
    #[inline]
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(0x517c_c1b7_2722_0a95);
    }
}

impl Hasher for FastHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            self.add(u64::from_le_bytes(chunk.try_into().expect("8 bytes")));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut buf = [0u8; 8];
            buf[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(buf) ^ ((rest.len() as u64) << 56));
        }
    }

    #[inline]
    fn write_u8(&mut self, i: u8) {
        self.add(u64::from(i));
    }

    #[inline]
    fn write_u32(&mut self, i: u32) {
        self.add(u64::from(i));
    }

    #[inline]
    fn write_u64(&mut self, i: u64) {
        self.add(i);
    }

    #[inline]
    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }

    #[inline]
    fn finish(&self) -> u64 {
        // murmur3's fmix64: every input bit reaches the top bits hashbrown uses.
        let mut h = self.0;
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
        h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        h ^ (h >> 33)
    }
}

/// Builds [`FastHasher`]s with the process's seed.
#[derive(Debug, Clone, Copy)]
pub struct FastState(u64);

impl Default for FastState {
    fn default() -> Self {
        static SEED: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
        FastState(*SEED.get_or_init(|| std::collections::hash_map::RandomState::new().hash_one(0x5eed_u64)))
    }
}

impl BuildHasher for FastState {
    type Hasher = FastHasher;

    #[inline]
    fn build_hasher(&self) -> FastHasher {
        FastHasher(self.0)
    }
}

pub type FastMap<K, V> = std::collections::HashMap<K, V, FastState>;
pub type FastSet<K> = std::collections::HashSet<K, FastState>;

/// One stored value. Text is reference-counted so that sort keys and partition keys share it.
#[derive(Debug, Clone)]
pub enum Val {
    Null,
    Int(i64),
    Real(f64),
    Text(Arc<str>),
}

impl Val {
    #[must_use]
    pub fn from_ref(value: ValueRef<'_>) -> Val {
        match value {
            ValueRef::Null => Val::Null,
            ValueRef::Integer(i) => Val::Int(i),
            ValueRef::Real(f) => Val::Real(f),
            ValueRef::Text(t) => Val::Text(Arc::from(utf8(t).as_ref())),
            // The replica never stores blobs in columns the engine reads.
            ValueRef::Blob(_) => Val::Null,
        }
    }

    #[must_use]
    pub fn is_null(&self) -> bool {
        matches!(self, Val::Null)
    }

    /// SQLite's order of values (and so `ORDER BY` with the BINARY collation): NULL first, then
    /// numbers (integers and reals compared exactly), then text by UTF-8 bytes.
    #[must_use]
    pub fn sql_cmp(&self, other: &Val) -> Ordering {
        match (self, other) {
            (Val::Null, Val::Null) => Ordering::Equal,
            (Val::Null, _) => Ordering::Less,
            (_, Val::Null) => Ordering::Greater,
            (Val::Int(a), Val::Int(b)) => a.cmp(b),
            (Val::Int(a), Val::Real(b)) => int_real_cmp(*a, *b),
            (Val::Real(a), Val::Int(b)) => int_real_cmp(*b, *a).reverse(),
            (Val::Real(a), Val::Real(b)) => a.partial_cmp(b).unwrap_or(Ordering::Equal),
            (Val::Int(_) | Val::Real(_), Val::Text(_)) => Ordering::Less,
            (Val::Text(_), Val::Int(_) | Val::Real(_)) => Ordering::Greater,
            (Val::Text(a), Val::Text(b)) => a.as_bytes().cmp(b.as_bytes()),
        }
    }

    /// SQL `=` on two values: false when either is NULL.
    #[must_use]
    pub fn sql_eq(&self, other: &Val) -> bool {
        !self.is_null() && !other.is_null() && self.sql_cmp(other) == Ordering::Equal
    }

    /// `IS`: equality where NULL equals NULL.
    #[must_use]
    pub fn sql_is(&self, other: &Val) -> bool {
        self.sql_cmp(other) == Ordering::Equal
    }

    #[must_use]
    pub fn as_sql_value(&self) -> SqlValue {
        match self {
            Val::Null => SqlValue::Null,
            Val::Int(i) => SqlValue::Integer(*i),
            Val::Real(f) => SqlValue::Real(*f),
            Val::Text(t) => SqlValue::Text(t.to_string()),
        }
    }
}

/// Compares an integer with a real the way SQLite does: exactly, without rounding the integer.
fn int_real_cmp(i: i64, r: f64) -> Ordering {
    if r.is_nan() {
        return Ordering::Greater;
    }
    if r < -9_223_372_036_854_775_808.0 {
        return Ordering::Greater;
    }
    if r >= 9_223_372_036_854_775_808.0 {
        return Ordering::Less;
    }
    let t = r.trunc();
    // `t` is integral and within i64's range here.
    match i.cmp(&(t as i64)) {
        Ordering::Equal => 0.0f64.partial_cmp(&(r - t)).unwrap_or(Ordering::Equal),
        other => other,
    }
}

impl Val {
    #[must_use]
    pub fn as_value_ref(&self) -> ValueRef<'_> {
        match self {
            Val::Null => ValueRef::Null,
            Val::Int(i) => ValueRef::Integer(*i),
            Val::Real(f) => ValueRef::Real(*f),
            Val::Text(s) => ValueRef::Text(s.as_bytes()),
        }
    }
}

impl ToSql for Val {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(match self {
            Val::Null => ToSqlOutput::Borrowed(ValueRef::Null),
            Val::Int(i) => ToSqlOutput::Borrowed(ValueRef::Integer(*i)),
            Val::Real(f) => ToSqlOutput::Borrowed(ValueRef::Real(*f)),
            Val::Text(s) => ToSqlOutput::Borrowed(ValueRef::Text(s.as_bytes())),
        })
    }
}

/// A hashable value: a component of a correlation (partition) key. Reals with an integral value
/// are normalised to integers so that `1` and `1.0` (equal in SQL) are the same key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum KeyVal {
    Int(i64),
    Real(u64),
    Text(Arc<str>),
}

impl KeyVal {
    /// `None` for NULL, which never correlates (SQL `=`).
    #[must_use]
    pub fn of(value: &Val) -> Option<KeyVal> {
        Some(match value {
            Val::Null => return None,
            Val::Int(i) => KeyVal::Int(*i),
            Val::Real(f) => {
                if f.fract() == 0.0 && *f >= -9_223_372_036_854_775_808.0 && *f < 9_223_372_036_854_775_808.0 {
                    KeyVal::Int(*f as i64)
                } else {
                    KeyVal::Real(f.to_bits())
                }
            }
            Val::Text(t) => KeyVal::Text(t.clone()),
        })
    }

    #[must_use]
    pub fn to_val(&self) -> Val {
        match self {
            KeyVal::Int(i) => Val::Int(*i),
            KeyVal::Real(bits) => Val::Real(f64::from_bits(*bits)),
            KeyVal::Text(t) => Val::Text(t.clone()),
        }
    }
}

/// The correlation value of a partition: the parent's `parentField` values, equal to the child
/// rows' `childField` values. The root's partition has the empty key.
pub type PartKey = Arc<[KeyVal]>;

/// The key of `row`'s values at `columns`; `None` when one of them is NULL.
#[must_use]
pub fn part_key(vals: &[Val], columns: &[usize]) -> Option<PartKey> {
    columns
        .iter()
        .map(|&c| KeyVal::of(&vals[c]))
        .collect::<Option<Vec<_>>>()
        .map(Arc::from)
}

/// One row of a replica table as read at the current version: every stored column (in the
/// table's stored-column order), its `_0_version` and its row key (JSON, as the change log and
/// the CVR spell it).
#[derive(Debug)]
pub struct Row {
    pub key: Arc<str>,
    /// Every stored column, or (rows read for a partition) only the columns the engine looks
    /// at, the others NULL and those after the last one looked at left out; then `json` holds
    /// the client value.
    pub vals: Box<[Val]>,
    pub version: Arc<str>,
    pub json: Option<RowJson>,
}

/// A row's client `put` op, `{"op":"put","tableName":…,"value":{…}}`, written when the row is
/// read: a patch copies the value out of it, a view syncer's `RowChanges` takes it whole.
#[derive(Debug)]
pub struct RowJson {
    pub op: String,
    /// Where the value starts in `op` (it ends before the last `}`).
    pub value_start: usize,
}

impl RowJson {
    #[must_use]
    pub fn value(&self) -> &str {
        &self.op[self.value_start..self.op.len() - 1]
    }
}

/// Two decimal digits per entry, "00" to "99".
const DIGIT_PAIRS: &[u8; 200] = b"0001020304050607080910111213141516171819\
2021222324252627282930313233343536373839\
4041424344454647484950515253545556575859\
6061626364656667686970717273747576777879\
8081828384858687888990919293949596979899";

/// Appends an integer in decimal (two digits at a time, without the formatting machinery).
pub fn write_i64(out: &mut String, n: i64) {
    let mut buf = [0u8; 20];
    let digits = i64_digits(n, &mut buf);
    if n < 0 {
        out.push('-');
    }
    out.push_str(std::str::from_utf8(digits).expect("ASCII digits"));
}

/// [`write_i64`] into bytes.
pub fn write_i64_bytes(out: &mut Vec<u8>, n: i64) {
    let mut buf = [0u8; 20];
    let digits = i64_digits(n, &mut buf);
    if n < 0 {
        out.push(b'-');
    }
    out.extend_from_slice(digits);
}

/// The decimal digits of `|n|`, at the end of `buf`.
fn i64_digits(n: i64, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = buf.len();
    let mut m = n.unsigned_abs();
    while m >= 100 {
        let d = (m % 100) as usize * 2;
        m /= 100;
        i -= 2;
        buf[i..i + 2].copy_from_slice(&DIGIT_PAIRS[d..d + 2]);
    }
    if m >= 10 {
        let d = m as usize * 2;
        i -= 2;
        buf[i..i + 2].copy_from_slice(&DIGIT_PAIRS[d..d + 2]);
    } else {
        i -= 1;
        buf[i] = b'0' + m as u8;
    }
    &buf[i..]
}

/// Whether `s` has a byte JSON strings must escape (`"`, `\`, control characters), eight
/// bytes at a time.
fn needs_escape(s: &[u8]) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    // A byte of `x` is zero iff the high bit of the same byte of `zero(x)` is set (no false
    // positives once restricted to bytes whose own high bit is clear, as below).
    let zero = |x: u64| x.wrapping_sub(ONES) & !x & HIGH;
    let mut chunks = s.chunks_exact(8);
    for chunk in &mut chunks {
        let w = u64::from_le_bytes(chunk.try_into().expect("8 bytes"));
        // Control characters: bytes below 0x20 (high bit clear, and w - 0x20 borrows).
        let control = w.wrapping_sub(ONES * 0x20) & !w & HIGH;
        if control | zero(w ^ (ONES * u64::from(b'"'))) | zero(w ^ (ONES * u64::from(b'\\'))) != 0 {
            return true;
        }
    }
    chunks.remainder().iter().any(|&b| b < 0x20 || b == b'"' || b == b'\\')
}

/// Appends `s` as a JSON string.
pub fn write_json_str(out: &mut String, s: &str) {
    if !needs_escape(s.as_bytes()) {
        out.reserve(s.len() + 2);
        out.push('"');
        out.push_str(s);
        out.push('"');
        return;
    }
    out.push('"');
    let mut start = 0;
    for (i, b) in s.bytes().enumerate() {
        let escape: Option<&str> = match b {
            b'"' => Some("\\\""),
            b'\\' => Some("\\\\"),
            b'\n' => Some("\\n"),
            b'\r' => Some("\\r"),
            b'\t' => Some("\\t"),
            0x08 => Some("\\b"),
            0x0c => Some("\\f"),
            0..=0x1f => None,
            _ => continue,
        };
        out.push_str(&s[start..i]);
        match escape {
            Some(e) => out.push_str(e),
            None => {
                let _ = write!(out, "\\u{b:04x}");
            }
        }
        start = i + 1;
    }
    out.push_str(&s[start..]);
    out.push('"');
}

/// [`write_json_str`] of stored text into bytes, without checking that it is UTF-8 (the caller
/// checks the whole buffer once): the same bytes as `write_json_str` for UTF-8 text.
pub fn write_json_bytes(out: &mut Vec<u8>, s: &[u8]) {
    out.reserve(s.len() + 2);
    out.push(b'"');
    if !needs_escape(s) {
        out.extend_from_slice(s);
        out.push(b'"');
        return;
    }
    let mut start = 0;
    for (i, &b) in s.iter().enumerate() {
        let escape: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0c => b"\\f",
            0..=0x1f => b"",
            _ => continue,
        };
        out.extend_from_slice(&s[start..i]);
        if escape.is_empty() {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            out.extend_from_slice(b"\\u00");
            out.push(HEX[usize::from(b >> 4)]);
            out.push(HEX[usize::from(b & 0xf)]);
        } else {
            out.extend_from_slice(escape);
        }
        start = i + 1;
    }
    out.extend_from_slice(&s[start..]);
    out.push(b'"');
}

/// Appends a number as JavaScript's `JSON.stringify` would write it for integral values (no
/// `.0`), and as the shortest round-trip decimal otherwise; non-finite numbers become `null`.
pub fn write_json_f64(out: &mut String, f: f64) {
    if !f.is_finite() {
        out.push_str("null");
    } else if f.fract() == 0.0 && f.abs() < 9_007_199_254_740_992.0 {
        let _ = write!(out, "{}", f as i64);
    } else {
        match serde_json::Number::from_f64(f) {
            Some(n) => {
                let _ = write!(out, "{n}");
            }
            None => out.push_str("null"),
        }
    }
}

/// A key value as `ReplicaTable::row_key` writes it (must stay byte-identical: the engine finds
/// changed rows by the change log's row-key strings).
pub fn write_key_json(out: &mut String, value: ValueRef<'_>) {
    match value {
        ValueRef::Null | ValueRef::Blob(_) => out.push_str("null"),
        ValueRef::Integer(i) => write_i64(out, i),
        ValueRef::Real(f) => match serde_json::Number::from_f64(f) {
            Some(n) => {
                let _ = write!(out, "{n}");
            }
            None => out.push_str("null"),
        },
        ValueRef::Text(t) => write_json_str(out, &utf8(t)),
    }
}

/// Text as stored: UTF-8 (checked; invalid sequences become U+FFFD).
#[must_use]
pub fn utf8(t: &[u8]) -> std::borrow::Cow<'_, str> {
    match std::str::from_utf8(t) {
        Ok(s) => std::borrow::Cow::Borrowed(s),
        Err(_) => String::from_utf8_lossy(t),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Val {
        Val::Text(Arc::from(s))
    }

    #[test]
    fn order_is_sqlite_order() {
        let mut vals = [
            t("b"),
            Val::Int(3),
            Val::Null,
            Val::Real(2.5),
            t("a"),
            Val::Int(-1),
            t("é"),
            t("z"),
        ];
        vals.sort_by(Val::sql_cmp);
        let shown: Vec<String> = vals.iter().map(|v| format!("{v:?}")).collect();
        assert_eq!(
            shown,
            [
                "Null",
                "Int(-1)",
                "Real(2.5)",
                "Int(3)",
                "Text(\"a\")",
                "Text(\"b\")",
                "Text(\"z\")",
                "Text(\"é\")"
            ]
        );
    }

    #[test]
    fn integers_and_reals_compare_exactly() {
        assert_eq!(Val::Int(1).sql_cmp(&Val::Real(1.0)), Ordering::Equal);
        assert_eq!(Val::Int(1).sql_cmp(&Val::Real(1.5)), Ordering::Less);
        assert_eq!(Val::Int(2).sql_cmp(&Val::Real(1.5)), Ordering::Greater);
        assert_eq!(Val::Int(-2).sql_cmp(&Val::Real(-1.5)), Ordering::Less);
        // 2^53 + 1 is not representable as f64; it is still greater than 2^53.
        assert_eq!(
            Val::Int(9_007_199_254_740_993).sql_cmp(&Val::Real(9_007_199_254_740_992.0)),
            Ordering::Greater
        );
        assert_eq!(Val::Int(i64::MAX).sql_cmp(&Val::Real(1e300)), Ordering::Less);
    }

    #[test]
    fn utf8_byte_order_differs_from_utf16_for_astral_characters() {
        // U+FF5E (UTF-16 0xFF5E) vs U+1F600 (UTF-16 surrogate 0xD83D): JS orders the emoji first,
        // UTF-8 bytes (and Zero's compareUTF8, and SQLite) order it last.
        assert_eq!(t("\u{FF5E}").sql_cmp(&t("\u{1F600}")), Ordering::Less);
    }

    #[test]
    fn null_never_equals() {
        assert!(!Val::Null.sql_eq(&Val::Null));
        assert!(Val::Null.sql_is(&Val::Null));
        assert!(!Val::Int(1).sql_is(&Val::Null));
    }

    #[test]
    fn keys_normalise_integral_reals() {
        assert_eq!(KeyVal::of(&Val::Real(3.0)), Some(KeyVal::Int(3)));
        assert_eq!(KeyVal::of(&Val::Real(-0.0)), Some(KeyVal::Int(0)));
        assert_eq!(KeyVal::of(&Val::Null), None);
        assert_ne!(KeyVal::of(&Val::Real(3.5)), KeyVal::of(&Val::Int(3)));
        assert_eq!(part_key(&[Val::Int(1), Val::Null], &[0]).unwrap().len(), 1);
        assert!(part_key(&[Val::Int(1), Val::Null], &[0, 1]).is_none());
    }

    #[test]
    fn json_strings_and_numbers() {
        let mut out = String::new();
        write_json_str(&mut out, "a\"b\\c\nd\u{1}é");
        assert_eq!(out, r#""a\"b\\c\nd\u0001é""#);
        assert_eq!(serde_json::from_str::<String>(&out).unwrap(), "a\"b\\c\nd\u{1}é");
        let mut out = String::new();
        for f in [1.0, -0.0, 1.5, 1e21, f64::NAN, 1_700_000_000_000.0] {
            write_json_f64(&mut out, f);
            out.push(' ');
        }
        assert_eq!(out, "1 0 1.5 1e+21 null 1700000000000 ");
        let mut out = String::new();
        for n in [0, 7, -7, 1234567890123, i64::MIN, i64::MAX] {
            write_i64(&mut out, n);
            out.push(' ');
        }
        assert_eq!(out, format!("0 7 -7 1234567890123 {} {} ", i64::MIN, i64::MAX));
    }

    #[test]
    fn json_bytes_are_json_strings() {
        for s in ["", "plain", "a\"b\\c\nd\u{1}\u{1f}é\u{8}\u{c}\r\t", "long enough to take the eight-byte path \u{7}!"] {
            let (mut text, mut bytes) = (String::new(), Vec::new());
            write_json_str(&mut text, s);
            write_json_bytes(&mut bytes, s.as_bytes());
            assert_eq!(String::from_utf8(bytes).unwrap(), text);
        }
        for n in [0, 9, 10, -99, 100, i64::MIN, i64::MAX] {
            let mut bytes = Vec::new();
            write_i64_bytes(&mut bytes, n);
            assert_eq!(String::from_utf8(bytes).unwrap(), n.to_string());
        }
    }

    #[test]
    fn key_json_matches_the_replica_writer() {
        use crate::pg::schema::{ColumnSpec, TableSpec};
        use crate::replica::table::ReplicaTable;
        let col = |name: &str, oid: u32| ColumnSpec {
            name: name.into(),
            attnum: 1,
            type_oid: oid,
            type_name: String::new(),
            type_kind: "b".into(),
            base_type_oid: oid,
            elem_type_oid: 0,
            elem_type_kind: None,
            not_null: true,
            has_missing: false,
            missing: None,
            enum_labels: None,
        };
        let table = ReplicaTable::new(TableSpec {
            oid: 1,
            schema: "public".into(),
            name: "t".into(),
            replica_identity: "d".into(),
            primary_key: vec!["a".into(), "b".into(), "c".into()],
            columns: vec![col("a", 25), col("b", 20), col("c", 701)],
        })
        .unwrap();
        for (a, b, c) in [("x\"y", 5, 1.0), ("é\n", -3, 2.5), ("", 0, 1e300)] {
            let vals = [Val::Text(Arc::from(a)), Val::Int(b), Val::Real(c)];
            let sql: Vec<SqlValue> = vals.iter().map(Val::as_sql_value).collect();
            let refs: Vec<&SqlValue> = sql.iter().collect();
            let mut ours = String::from("{\"a\":");
            write_key_json(&mut ours, vals[0].as_value_ref());
            ours.push_str(",\"b\":");
            write_key_json(&mut ours, vals[1].as_value_ref());
            ours.push_str(",\"c\":");
            write_key_json(&mut ours, vals[2].as_value_ref());
            ours.push('}');
            assert_eq!(ours, table.row_key(&refs));
        }
    }
}
