//! Column values: Postgres's binary (and text) formats decoded into the values the SQLite replica
//! stores.
//!
//! zcache replicates with pgoutput `binary 'true'` and runs the initial sync with `COPY … TO STDOUT
//! (FORMAT binary)`, so values arrive in each type's binary *send* format. [`ValueKind`] says what
//! a column holds (derived from its published-schema [`ColumnSpec`]); [`decode_binary`] turns one
//! non-NULL value into a [`SqlValue`]; [`decode_text`] does the same for text output (pgoutput's
//! `t` columns, a fallback for types without a binary send function); [`from_json`] reads the
//! `ColumnSpec.missing` value (`array_to_json(attmissingval)->0`). SQL NULL never reaches these
//! functions: the caller maps it to [`SqlValue::Null`].
//!
//! | Postgres (oid) | binary format | replica value | affinity | client type |
//! |---|---|---|---|---|
//! | bool (16) | 1 byte, non-zero = true | INTEGER 0/1 | INTEGER | boolean |
//! | int2/int4/int8 (21/23/20) | 2/4/8 bytes big-endian | INTEGER | INTEGER | number |
//! | float4/float8 (700/701) | IEEE 754 big-endian | REAL; NaN → NULL | REAL | number |
//! | numeric (1700) | i16 ndigits, i16 weight, u16 sign, i16 dscale, ndigits × i16 base-10000 digits | REAL (nearest double); NaN → NULL | REAL | number |
//! | text, varchar, bpchar, name (25/1043/1042/19) | UTF-8 bytes | TEXT (bpchar keeps its padding) | TEXT | string |
//! | "char" (18) | 1 byte | TEXT as `charout` writes it (`""` for 0, `\ooo` above 127) | TEXT | string |
//! | enums | label bytes | TEXT | TEXT | string |
//! | uuid (2950) | 16 bytes | TEXT, lower-case hyphenated | TEXT | string |
//! | json (114) / jsonb (3802) | JSON text / version byte 1 + JSON text | TEXT as is | TEXT | json |
//! | date (1082) | i32 days since 2000-01-01 | REAL epoch ms of UTC midnight | REAL | number |
//! | timestamp, timestamptz (1114/1184) | i64 µs since 2000-01-01 | REAL epoch ms (fractional) | REAL | number |
//! | time (1083) | i64 µs since midnight | REAL whole ms (truncated) | REAL | number |
//! | timetz (1266) | i64 µs + i32 zone (seconds *west* of UTC) | REAL whole ms, UTC-normalized | REAL | number |
//! | inet, cidr (869/650) | family, bits, is_cidr, length, address bytes | TEXT as `inet_out`/`cidr_out` | TEXT | string |
//! | macaddr, macaddr8 (829/774) | 6 / 8 bytes | TEXT `08:00:2b:…` | TEXT | string |
//! | pg_lsn (3220) | u64 | TEXT `16/B374D848` | TEXT | string |
//! | arrays of the above | i32 ndim, i32 has-null, u32 element oid, ndim × (i32 size, i32 lower bound), elements (i32 length, −1 = NULL) | TEXT: a compact JSON array, nested per dimension, lower bounds dropped | TEXT | json |
//!
//! Everything else (bytea, interval, money, geometric types, ranges, composites, bit strings,
//! tsvector, xml, oid, domains over enums, arrays of domains, extension types such as citext) is
//! [`ValueKind::Unsupported`]: the replica does not store such columns, and decoding one is an
//! [`Error::UnsupportedType`].
//!
//! Decisions (zero-cache compatibility first; its `pg.ts` type parsers are the reference):
//!
//! * **NaN** (float4, float8, numeric) is stored as NULL: SQLite turns a bound NaN into NULL anyway
//!   (checked in the tests), so we make it explicit. Inside a JSON array it is `null`.
//! * **±Infinity** (floats, numeric, and the `infinity`/`-infinity` of date, timestamp and
//!   timestamptz) is stored as REAL ±Inf, which SQLite keeps (zero-cache maps infinite dates and
//!   timestamps to ±`Infinity` too). Inside a JSON array, where JSON has no infinity, it is `null`.
//! * **int8** outside ±(2^53−1) is stored exactly as INTEGER; refusing it is the wire layer's job
//!   (protocol §12), since the replica can hold it.
//! * **float4** is widened through its shortest decimal form (what `float4out` prints, which is
//!   what zero-cache parses): `3.14::float4` is stored as `3.14`, not `3.140000104904175`.
//! * **numeric** becomes the double nearest to its exact decimal value (digits hidden by `dscale`
//!   are dropped, as `numeric_recv` does); values beyond the double range become ±Inf.
//! * **time/timetz** follow zero-cache's `postgresTimeToMilliseconds`: whole milliseconds (the
//!   microseconds truncated), the zone subtracted for timetz, and the result wrapped modulo one
//!   day only when it falls outside `[0, 86400000]`, so `24:00:00` is `86400000`.
//! * **Timestamps** are `µs / 1000` rounded once to the nearest double (exact decimal arithmetic
//!   beyond ±2^53 µs).
//! * **Arrays** render elements like the scalar mapping, except that booleans are `true`/`false`
//!   and json/jsonb elements are embedded as JSON (whitespace outside strings removed). Text-format
//!   arrays are not parsed: pgoutput sends arrays of supported types in binary.

use std::borrow::Cow;
use std::fmt::Write as _;

use rusqlite::types::{ToSql, ToSqlOutput, Value, ValueRef};

use crate::error::{Error, Result};
use crate::pg::reader::Reader;
use crate::pg::schema::ColumnSpec;
use crate::pg::time::PG_EPOCH_UNIX_MICROS;

/// Postgres's first OID for user-defined objects (`FirstNormalObjectId`); lower ones are built in.
const FIRST_NORMAL_OID: u32 = 16_384;

/// Milliseconds in a day.
const DAY_MS: i64 = 86_400_000;
/// Microseconds in a day.
const DAY_US: i64 = 86_400_000_000;
/// Days from 1970-01-01 to 2000-01-01.
const UNIX_TO_PG_EPOCH_DAYS: i64 = 10_957;
/// Valid `date` values (days since 2000-01-01): Julian day 0 up to `DATE_END_JULIAN`.
const DATE_MIN_DAYS: i32 = -2_451_545;
const DATE_END_DAYS: i32 = 2_147_483_494 - 2_451_545;
/// Valid `timestamp` values (µs since 2000-01-01): `MIN_TIMESTAMP`..`END_TIMESTAMP`.
const MIN_TIMESTAMP: i64 = -211_813_488_000_000_000;
const END_TIMESTAMP: i64 = 9_223_371_331_200_000_000;
/// A time zone displacement must be smaller than this many seconds (`TZDISP_LIMIT`).
const TZDISP_LIMIT: i32 = 16 * 3600;
/// Postgres's `MAXDIM`.
const MAX_ARRAY_DIMS: usize = 6;

const BINARY: &str = "binary";
const TEXT: &str = "text";
const JSON: &str = "json";

/// What a column holds, as far as decoding and the replica are concerned.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ValueKind {
    Bool,
    Int2,
    Int4,
    Int8,
    Float4,
    Float8,
    Numeric,
    /// text, varchar, bpchar, name.
    Text,
    /// `"char"` (oid 18), a single byte.
    Char,
    /// A user-defined enum; values are labels.
    Enum,
    Uuid,
    Json,
    Jsonb,
    Date,
    Time,
    TimeTz,
    Timestamp,
    TimestampTz,
    Inet,
    Cidr,
    MacAddr,
    MacAddr8,
    PgLsn,
    /// An array (any number of dimensions) of a supported scalar kind.
    Array(Box<ValueKind>),
    /// A type the replica does not store.
    Unsupported {
        type_name: String,
    },
}

/// Built-in scalar types by OID.
fn builtin_scalar(oid: u32) -> Option<ValueKind> {
    Some(match oid {
        16 => ValueKind::Bool,
        21 => ValueKind::Int2,
        23 => ValueKind::Int4,
        20 => ValueKind::Int8,
        700 => ValueKind::Float4,
        701 => ValueKind::Float8,
        1700 => ValueKind::Numeric,
        25 | 1043 | 1042 | 19 => ValueKind::Text,
        18 => ValueKind::Char,
        2950 => ValueKind::Uuid,
        114 => ValueKind::Json,
        3802 => ValueKind::Jsonb,
        1082 => ValueKind::Date,
        1083 => ValueKind::Time,
        1266 => ValueKind::TimeTz,
        1114 => ValueKind::Timestamp,
        1184 => ValueKind::TimestampTz,
        869 => ValueKind::Inet,
        650 => ValueKind::Cidr,
        829 => ValueKind::MacAddr,
        774 => ValueKind::MacAddr8,
        3220 => ValueKind::PgLsn,
        _ => return None,
    })
}

/// Element OID of the built-in array types whose element is a supported scalar.
fn builtin_array_element(oid: u32) -> Option<u32> {
    Some(match oid {
        1000 => 16,
        1005 => 21,
        1007 => 23,
        1016 => 20,
        1021 => 700,
        1022 => 701,
        1231 => 1700,
        1009 => 25,
        1015 => 1043,
        1014 => 1042,
        1003 => 19,
        1002 => 18,
        2951 => 2950,
        199 => 114,
        3807 => 3802,
        1182 => 1082,
        1183 => 1083,
        1270 => 1266,
        1115 => 1114,
        1185 => 1184,
        1041 => 869,
        651 => 650,
        1040 => 829,
        775 => 774,
        3221 => 3220,
        _ => return None,
    })
}

impl ValueKind {
    /// The kind of a published column.
    ///
    /// * `typeKind == "e"`: an enum.
    /// * Otherwise `baseTypeOid` (domains resolved) decides: a built-in supported scalar, or a
    ///   built-in array of one.
    /// * A user-defined type (OID ≥ 16384) with an `elemTypeOid` is an array of that element: a
    ///   built-in supported scalar, or an enum when `elemTypeKind == "e"`.
    /// * Everything else is [`ValueKind::Unsupported`], named by `typeName`. That includes domains
    ///   over enums and arrays of domains, whose base types the spec does not carry.
    #[must_use]
    pub fn for_column(spec: &ColumnSpec) -> ValueKind {
        if spec.type_kind == "e" {
            return ValueKind::Enum;
        }
        let base = if spec.base_type_oid == 0 {
            spec.type_oid
        } else {
            spec.base_type_oid
        };
        if let Some(kind) = builtin_scalar(base) {
            return kind;
        }
        if let Some(elem) = builtin_array_element(base).and_then(builtin_scalar) {
            return ValueKind::Array(Box::new(elem));
        }
        if base >= FIRST_NORMAL_OID && spec.elem_type_oid != 0 {
            let elem = if spec.elem_type_kind.as_deref() == Some("e") {
                Some(ValueKind::Enum)
            } else if spec.elem_type_oid < FIRST_NORMAL_OID {
                builtin_scalar(spec.elem_type_oid)
            } else {
                None
            };
            if let Some(elem) = elem {
                return ValueKind::Array(Box::new(elem));
            }
        }
        ValueKind::Unsupported {
            type_name: spec.type_name.clone(),
        }
    }

    /// The kind of a built-in type OID (scalar or array), if supported.
    #[must_use]
    pub fn for_builtin_oid(oid: u32) -> Option<ValueKind> {
        builtin_scalar(oid).or_else(|| {
            builtin_array_element(oid)
                .and_then(builtin_scalar)
                .map(|elem| ValueKind::Array(Box::new(elem)))
        })
    }

    /// Whether the replica stores columns of this kind.
    #[must_use]
    pub fn is_supported(&self) -> bool {
        !matches!(self, ValueKind::Unsupported { .. })
    }

    /// The element kind of an array.
    #[must_use]
    pub fn element(&self) -> Option<&ValueKind> {
        match self {
            ValueKind::Array(elem) => Some(elem),
            _ => None,
        }
    }

    /// The SQLite column type to declare so that SQLite never converts a stored value: `INTEGER`,
    /// `REAL` or `TEXT` (`BLOB`, i.e. no affinity, for unsupported kinds).
    #[must_use]
    pub fn affinity(&self) -> &'static str {
        match self {
            ValueKind::Bool | ValueKind::Int2 | ValueKind::Int4 | ValueKind::Int8 => "INTEGER",
            ValueKind::Float4
            | ValueKind::Float8
            | ValueKind::Numeric
            | ValueKind::Date
            | ValueKind::Time
            | ValueKind::TimeTz
            | ValueKind::Timestamp
            | ValueKind::TimestampTz => "REAL",
            ValueKind::Text
            | ValueKind::Char
            | ValueKind::Enum
            | ValueKind::Uuid
            | ValueKind::Json
            | ValueKind::Jsonb
            | ValueKind::Inet
            | ValueKind::Cidr
            | ValueKind::MacAddr
            | ValueKind::MacAddr8
            | ValueKind::PgLsn
            | ValueKind::Array(_) => "TEXT",
            ValueKind::Unsupported { .. } => "BLOB",
        }
    }

    /// Zero's client schema type (`string`, `number`, `boolean`, `json`); `None` for unsupported
    /// kinds, which clients never see.
    #[must_use]
    pub fn client_type(&self) -> Option<&'static str> {
        Some(match self {
            ValueKind::Bool => "boolean",
            ValueKind::Int2
            | ValueKind::Int4
            | ValueKind::Int8
            | ValueKind::Float4
            | ValueKind::Float8
            | ValueKind::Numeric
            | ValueKind::Date
            | ValueKind::Time
            | ValueKind::TimeTz
            | ValueKind::Timestamp
            | ValueKind::TimestampTz => "number",
            ValueKind::Text
            | ValueKind::Char
            | ValueKind::Enum
            | ValueKind::Uuid
            | ValueKind::Inet
            | ValueKind::Cidr
            | ValueKind::MacAddr
            | ValueKind::MacAddr8
            | ValueKind::PgLsn => "string",
            ValueKind::Json | ValueKind::Jsonb | ValueKind::Array(_) => "json",
            ValueKind::Unsupported { .. } => return None,
        })
    }

    /// A name for messages: the Postgres type name (`text` for every text-like, `enum` for enums,
    /// `int4[]` for arrays).
    #[must_use]
    pub fn type_name(&self) -> Cow<'static, str> {
        Cow::Borrowed(match self {
            ValueKind::Bool => "bool",
            ValueKind::Int2 => "int2",
            ValueKind::Int4 => "int4",
            ValueKind::Int8 => "int8",
            ValueKind::Float4 => "float4",
            ValueKind::Float8 => "float8",
            ValueKind::Numeric => "numeric",
            ValueKind::Text => "text",
            ValueKind::Char => "\"char\"",
            ValueKind::Enum => "enum",
            ValueKind::Uuid => "uuid",
            ValueKind::Json => "json",
            ValueKind::Jsonb => "jsonb",
            ValueKind::Date => "date",
            ValueKind::Time => "time",
            ValueKind::TimeTz => "timetz",
            ValueKind::Timestamp => "timestamp",
            ValueKind::TimestampTz => "timestamptz",
            ValueKind::Inet => "inet",
            ValueKind::Cidr => "cidr",
            ValueKind::MacAddr => "macaddr",
            ValueKind::MacAddr8 => "macaddr8",
            ValueKind::PgLsn => "pg_lsn",
            ValueKind::Array(elem) => return Cow::Owned(format!("{}[]", elem.type_name())),
            ValueKind::Unsupported { type_name } => return Cow::Owned(type_name.clone()),
        })
    }

    /// Whether an array of this element kind may carry `oid` as its element type.
    fn accepts_element_oid(&self, oid: u32) -> bool {
        match self {
            ValueKind::Enum => oid >= FIRST_NORMAL_OID,
            kind => builtin_scalar(oid).as_ref() == Some(kind),
        }
    }
}

/// A value as the SQLite replica stores it.
#[derive(Debug, Clone, PartialEq)]
pub enum SqlValue {
    Null,
    Integer(i64),
    Real(f64),
    Text(String),
}

impl ToSql for SqlValue {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(match self {
            SqlValue::Null => ToSqlOutput::Borrowed(ValueRef::Null),
            SqlValue::Integer(i) => ToSqlOutput::Borrowed(ValueRef::Integer(*i)),
            SqlValue::Real(f) => ToSqlOutput::Borrowed(ValueRef::Real(*f)),
            SqlValue::Text(s) => ToSqlOutput::Borrowed(ValueRef::Text(s.as_bytes())),
        })
    }
}

impl From<SqlValue> for Value {
    fn from(value: SqlValue) -> Value {
        match value {
            SqlValue::Null => Value::Null,
            SqlValue::Integer(i) => Value::Integer(i),
            SqlValue::Real(f) => Value::Real(f),
            SqlValue::Text(s) => Value::Text(s),
        }
    }
}

/// A value as the SQLite replica stores it, with text borrowed from the input where the wire
/// format already is the stored text (text, varchar, enums, json, jsonb): the hot paths (initial
/// copy, streaming) then bind it without copying it.
#[derive(Debug, Clone, PartialEq)]
pub enum SqlValueRef<'a> {
    Borrowed(&'a str),
    Owned(SqlValue),
}

impl SqlValueRef<'_> {
    pub const NULL: SqlValueRef<'static> = SqlValueRef::Owned(SqlValue::Null);

    #[must_use]
    pub fn value_ref(&self) -> ValueRef<'_> {
        match self {
            SqlValueRef::Borrowed(s) => ValueRef::Text(s.as_bytes()),
            SqlValueRef::Owned(SqlValue::Null) => ValueRef::Null,
            SqlValueRef::Owned(SqlValue::Integer(i)) => ValueRef::Integer(*i),
            SqlValueRef::Owned(SqlValue::Real(f)) => ValueRef::Real(*f),
            SqlValueRef::Owned(SqlValue::Text(s)) => ValueRef::Text(s.as_bytes()),
        }
    }
}

impl ToSql for SqlValueRef<'_> {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::Borrowed(self.value_ref()))
    }
}

fn invalid(kind: &ValueKind, format: &'static str, detail: impl Into<String>) -> Error {
    Error::InvalidValue {
        type_name: kind.type_name().into_owned(),
        format,
        detail: detail.into(),
    }
}

fn unsupported(kind: &ValueKind) -> Error {
    Error::UnsupportedType {
        type_name: kind.type_name().into_owned(),
    }
}

/// A reader error (always a `MalformedMessage`) as an `InvalidValue` of `kind`.
fn reader_error(kind: &ValueKind, err: Error) -> Error {
    match err {
        Error::MalformedMessage { offset, problem, .. } => {
            invalid(kind, BINARY, format!("at byte {offset}: {problem}"))
        }
        other => other,
    }
}

fn fixed<const N: usize>(kind: &ValueKind, bytes: &[u8]) -> Result<[u8; N]> {
    bytes
        .try_into()
        .map_err(|_| invalid(kind, BINARY, format!("expected {N} bytes, got {}", bytes.len())))
}

fn utf8<'a>(kind: &ValueKind, format: &'static str, bytes: &'a [u8]) -> Result<&'a str> {
    std::str::from_utf8(bytes).map_err(|e| {
        invalid(
            kind,
            format,
            format!("not UTF-8 (invalid byte at offset {})", e.valid_up_to()),
        )
    })
}

/// [`decode_binary`], borrowing the text of kinds whose send format is their stored text.
pub fn decode_binary_ref<'a>(kind: &ValueKind, bytes: &'a [u8]) -> Result<SqlValueRef<'a>> {
    Ok(match kind {
        ValueKind::Text | ValueKind::Enum | ValueKind::Json => SqlValueRef::Borrowed(utf8(kind, BINARY, bytes)?),
        ValueKind::Jsonb => match bytes.split_first() {
            Some((1, json)) => SqlValueRef::Borrowed(utf8(kind, BINARY, json)?),
            _ => SqlValueRef::Owned(decode_binary(kind, bytes)?),
        },
        _ => SqlValueRef::Owned(decode_binary(kind, bytes)?),
    })
}

/// Decodes one non-NULL value in its binary send format.
pub fn decode_binary(kind: &ValueKind, bytes: &[u8]) -> Result<SqlValue> {
    Ok(match kind {
        ValueKind::Bool => SqlValue::Integer(i64::from(fixed::<1>(kind, bytes)?[0] != 0)),
        ValueKind::Int2 => SqlValue::Integer(i16::from_be_bytes(fixed(kind, bytes)?).into()),
        ValueKind::Int4 => SqlValue::Integer(i32::from_be_bytes(fixed(kind, bytes)?).into()),
        ValueKind::Int8 => SqlValue::Integer(i64::from_be_bytes(fixed(kind, bytes)?)),
        ValueKind::Float4 => float4(f32::from_be_bytes(fixed(kind, bytes)?)),
        ValueKind::Float8 => float8(f64::from_be_bytes(fixed(kind, bytes)?)),
        ValueKind::Numeric => decode_numeric(kind, bytes)?,
        ValueKind::Text | ValueKind::Enum | ValueKind::Json => SqlValue::Text(utf8(kind, BINARY, bytes)?.to_owned()),
        ValueKind::Jsonb => match bytes.split_first() {
            Some((1, json)) => SqlValue::Text(utf8(kind, BINARY, json)?.to_owned()),
            Some((version, _)) => return Err(invalid(kind, BINARY, format!("unsupported jsonb version {version}"))),
            None => return Err(invalid(kind, BINARY, "empty (no version byte)")),
        },
        ValueKind::Char => SqlValue::Text(char_text(fixed::<1>(kind, bytes)?[0])),
        ValueKind::Uuid => SqlValue::Text(uuid_text(&fixed::<16>(kind, bytes)?)),
        ValueKind::Date => {
            let days = i32::from_be_bytes(fixed(kind, bytes)?);
            SqlValue::Real(pg_date_ms(kind, BINARY, days)?)
        }
        ValueKind::Time => {
            let us = i64::from_be_bytes(fixed(kind, bytes)?);
            SqlValue::Real(time_ms(kind, BINARY, us, 0)?)
        }
        ValueKind::TimeTz => {
            let [a, b, c, d, e, f, g, h, z0, z1, z2, z3] = fixed::<12>(kind, bytes)?;
            let us = i64::from_be_bytes([a, b, c, d, e, f, g, h]);
            let zone = i32::from_be_bytes([z0, z1, z2, z3]);
            SqlValue::Real(time_ms(kind, BINARY, us, zone)?)
        }
        ValueKind::Timestamp | ValueKind::TimestampTz => {
            let us = i64::from_be_bytes(fixed(kind, bytes)?);
            SqlValue::Real(pg_timestamp_ms(kind, us)?)
        }
        ValueKind::Inet | ValueKind::Cidr => SqlValue::Text(inet_text(kind, bytes)?),
        ValueKind::MacAddr => SqlValue::Text(mac_text(&fixed::<6>(kind, bytes)?)),
        ValueKind::MacAddr8 => SqlValue::Text(mac_text(&fixed::<8>(kind, bytes)?)),
        ValueKind::PgLsn => {
            let lsn = u64::from_be_bytes(fixed(kind, bytes)?);
            SqlValue::Text(format!("{:X}/{:X}", lsn >> 32, lsn & 0xFFFF_FFFF))
        }
        ValueKind::Array(elem) => SqlValue::Text(decode_array(kind, elem, bytes)?),
        ValueKind::Unsupported { .. } => return Err(unsupported(kind)),
    })
}

fn float8(v: f64) -> SqlValue {
    if v.is_nan() {
        SqlValue::Null
    } else {
        SqlValue::Real(v)
    }
}

/// A float4 as the double nearest to its shortest round-trip decimal (what `float4out` prints).
fn float4(v: f32) -> SqlValue {
    if v.is_nan() {
        SqlValue::Null
    } else if v.is_infinite() {
        SqlValue::Real(f64::from(v))
    } else {
        // `Display` writes the shortest decimal that reads back as `v`.
        SqlValue::Real(v.to_string().parse().unwrap_or_else(|_| f64::from(v)))
    }
}

const NUMERIC_POS: u16 = 0x0000;
const NUMERIC_NEG: u16 = 0x4000;
const NUMERIC_NAN: u16 = 0xC000;
const NUMERIC_PINF: u16 = 0xD000;
const NUMERIC_NINF: u16 = 0xF000;
const NUMERIC_DSCALE_MASK: i16 = 0x3FFF;

fn decode_numeric(kind: &ValueKind, bytes: &[u8]) -> Result<SqlValue> {
    let Some((header, digits)) = bytes.split_first_chunk::<8>() else {
        return Err(invalid(
            kind,
            BINARY,
            format!("{} bytes, shorter than the 8-byte header", bytes.len()),
        ));
    };
    let field = |i: usize| i16::from_be_bytes([header[i], header[i + 1]]);
    let (ndigits, weight, sign, dscale) = (field(0), field(2), field(4) as u16, field(6));
    let Ok(ndigits_len) = usize::try_from(ndigits) else {
        return Err(invalid(kind, BINARY, format!("negative digit count {ndigits}")));
    };
    if digits.len() != 2 * ndigits_len {
        return Err(invalid(
            kind,
            BINARY,
            format!(
                "{ndigits} digits need {} bytes after the header, got {}",
                2 * ndigits_len,
                digits.len()
            ),
        ));
    }
    if dscale & NUMERIC_DSCALE_MASK != dscale {
        return Err(invalid(kind, BINARY, format!("invalid display scale {dscale}")));
    }
    let negative = match sign {
        NUMERIC_POS => false,
        NUMERIC_NEG => true,
        NUMERIC_NAN => return Ok(SqlValue::Null),
        NUMERIC_PINF => return Ok(SqlValue::Real(f64::INFINITY)),
        NUMERIC_NINF => return Ok(SqlValue::Real(f64::NEG_INFINITY)),
        other => return Err(invalid(kind, BINARY, format!("invalid sign {other:#06x}"))),
    };
    // value = digits (as one decimal integer) × 10^exponent
    let mut text = String::with_capacity(4 * ndigits_len + 12);
    if negative {
        text.push('-');
    }
    let start = text.len();
    for (i, pair) in digits.chunks_exact(2).enumerate() {
        let digit = i16::from_be_bytes([pair[0], pair[1]]);
        if !(0..10_000).contains(&digit) {
            return Err(invalid(kind, BINARY, format!("digit {i} is {digit}, outside 0..=9999")));
        }
        let _ = write!(text, "{digit:04}");
    }
    let mut exponent = 4 * (i64::from(weight) + 1 - i64::from(ndigits));
    // Digits below the display scale are not part of the value (numeric_recv truncates them).
    let min_exponent = -i64::from(dscale);
    if exponent < min_exponent {
        let hidden = usize::try_from(min_exponent - exponent).unwrap_or(usize::MAX);
        let kept = (text.len() - start).saturating_sub(hidden);
        text.truncate(start + kept);
        exponent = min_exponent;
    }
    if text.len() == start {
        return Ok(SqlValue::Real(0.0));
    }
    let _ = write!(text, "e{exponent}");
    let value: f64 = text
        .parse()
        .map_err(|_| invalid(kind, BINARY, format!("cannot read {text} as a number")))?;
    // Numeric has no negative zero.
    Ok(SqlValue::Real(if value == 0.0 { 0.0 } else { value }))
}

/// `"char"` the way `charout` writes it.
fn char_text(byte: u8) -> String {
    match byte {
        0 => String::new(),
        b if b.is_ascii() => char::from(b).to_string(),
        b => format!("\\{:03o}", b),
    }
}

fn uuid_text(bytes: &[u8; 16]) -> String {
    let mut out = String::with_capacity(36);
    for (i, b) in bytes.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            out.push('-');
        }
        let _ = write!(out, "{b:02x}");
    }
    out
}

fn mac_text(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 3);
    for (i, b) in bytes.iter().enumerate() {
        if i > 0 {
            out.push(':');
        }
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// `PGSQL_AF_INET` / `PGSQL_AF_INET6` in inet's binary format.
const PGSQL_AF_INET: u8 = 2;
const PGSQL_AF_INET6: u8 = 3;

/// inet/cidr the way `inet_out`/`cidr_out` write them: IPv4 as four octets, IPv6 with the longest
/// run (≥ 2) of zero groups shortened to `::` and an embedded IPv4 tail where Postgres writes one;
/// `/bits` when not a full-length inet (always for cidr).
fn inet_text(kind: &ValueKind, bytes: &[u8]) -> Result<String> {
    let Some((&[family, bits, _is_cidr, nb], addr)) = bytes.split_first_chunk::<4>() else {
        return Err(invalid(
            kind,
            BINARY,
            format!("{} bytes, shorter than the 4-byte header", bytes.len()),
        ));
    };
    let max_bits = match (family, nb) {
        (PGSQL_AF_INET, 4) => 32,
        (PGSQL_AF_INET6, 16) => 128,
        _ => {
            return Err(invalid(
                kind,
                BINARY,
                format!("invalid address family {family} with length {nb}"),
            ))
        }
    };
    if addr.len() != usize::from(nb) {
        return Err(invalid(
            kind,
            BINARY,
            format!("address length {nb}, but {} bytes follow", addr.len()),
        ));
    }
    if bits > max_bits {
        return Err(invalid(
            kind,
            BINARY,
            format!("{bits} bits for a {max_bits}-bit address"),
        ));
    }
    let mut out = String::with_capacity(48);
    if family == PGSQL_AF_INET {
        push_ipv4(&mut out, addr);
    } else {
        push_ipv6(&mut out, addr);
    }
    if bits != max_bits || *kind == ValueKind::Cidr {
        let _ = write!(out, "/{bits}");
    }
    Ok(out)
}

fn push_ipv4(out: &mut String, addr: &[u8]) {
    for (i, b) in addr.iter().enumerate() {
        if i > 0 {
            out.push('.');
        }
        let _ = write!(out, "{b}");
    }
}

fn push_ipv6(out: &mut String, addr: &[u8]) {
    let mut words = [0u16; 8];
    for (word, pair) in words.iter_mut().zip(addr.chunks_exact(2)) {
        *word = u16::from_be_bytes([pair[0], pair[1]]);
    }
    // The first longest run of zero words, if at least two long.
    let (mut best_start, mut best_len) = (0usize, 0usize);
    let mut i = 0;
    while i < 8 {
        if words[i] == 0 {
            let start = i;
            while i < 8 && words[i] == 0 {
                i += 1;
            }
            if i - start > best_len {
                (best_start, best_len) = (start, i - start);
            }
        } else {
            i += 1;
        }
    }
    let run = if best_len >= 2 {
        Some(best_start..best_start + best_len)
    } else {
        None
    };
    for (i, word) in words.iter().enumerate() {
        if let Some(run) = &run {
            if run.contains(&i) {
                if i == run.start {
                    out.push(':');
                }
                continue;
            }
        }
        if i != 0 {
            out.push(':');
        }
        // IPv4-compatible (`::a.b.c.d`) and IPv4-mapped (`::ffff:a.b.c.d`) tails.
        // (`::0.0.0.1` is `::1`: with seven zero words, word 6 is inside the run.)
        let embedded_v4 = i == 6 && best_start == 0 && (best_len == 6 || (best_len == 5 && words[5] == 0xffff));
        if embedded_v4 {
            push_ipv4(out, &addr[12..16]);
            return;
        }
        let _ = write!(out, "{word:x}");
    }
    if run.is_some_and(|run| run.end == 8) {
        out.push(':');
    }
}

/// Epoch milliseconds of a `date` (days since 2000-01-01).
fn pg_date_ms(kind: &ValueKind, format: &'static str, days: i32) -> Result<f64> {
    match days {
        i32::MAX => Ok(f64::INFINITY),
        i32::MIN => Ok(f64::NEG_INFINITY),
        d if (DATE_MIN_DAYS..DATE_END_DAYS).contains(&d) => {
            // |days × 86400000| < 2^63, and it is a multiple of 2^10 below 2^63, so exact in f64.
            Ok(((i64::from(d) + UNIX_TO_PG_EPOCH_DAYS) * DAY_MS) as f64)
        }
        d => Err(invalid(
            kind,
            format,
            format!("date {d} days from 2000-01-01 is out of range"),
        )),
    }
}

/// Epoch milliseconds of a timestamp (µs since 2000-01-01).
fn pg_timestamp_ms(kind: &ValueKind, us: i64) -> Result<f64> {
    match us {
        i64::MAX => Ok(f64::INFINITY),
        i64::MIN => Ok(f64::NEG_INFINITY),
        us if (MIN_TIMESTAMP..END_TIMESTAMP).contains(&us) => {
            Ok(unix_us_to_ms(i128::from(us) + i128::from(PG_EPOCH_UNIX_MICROS)))
        }
        us => Err(invalid(
            kind,
            BINARY,
            format!("timestamp {us} µs from 2000-01-01 is out of range"),
        )),
    }
}

/// `us / 1000`, rounded once to the nearest double.
fn unix_us_to_ms(us: i128) -> f64 {
    const EXACT: i128 = 1 << 53;
    if (-EXACT..=EXACT).contains(&us) {
        // Both operands are exact doubles, so the one division rounds once.
        us as f64 / 1000.0
    } else {
        format!("{us}e-3").parse().unwrap_or(us as f64 / 1000.0)
    }
}

/// zero-cache's time mapping: whole ms of the local time, minus the zone's offset (`zone_west`
/// seconds west of UTC are added), wrapped modulo a day only when outside `[0, 86400000]`.
fn time_ms(kind: &ValueKind, format: &'static str, us: i64, zone_west: i32) -> Result<f64> {
    if !(0..=DAY_US).contains(&us) {
        return Err(invalid(
            kind,
            format,
            format!("time {us} µs is outside 00:00:00..24:00:00"),
        ));
    }
    if zone_west <= -TZDISP_LIMIT || zone_west >= TZDISP_LIMIT {
        return Err(invalid(
            kind,
            format,
            format!("time zone offset {zone_west} s is out of range"),
        ));
    }
    let ms = us / 1000 + i64::from(zone_west) * 1000;
    let ms = if (0..=DAY_MS).contains(&ms) {
        ms
    } else {
        ms.rem_euclid(DAY_MS)
    };
    Ok(ms as f64)
}

fn decode_array(kind: &ValueKind, elem: &ValueKind, bytes: &[u8]) -> Result<String> {
    let mut r = Reader::new(bytes, "array");
    let header =
        (|| -> Result<(i32, i32, u32)> { Ok((r.i32()?, r.i32()?, r.u32()?)) })().map_err(|e| reader_error(kind, e))?;
    let (ndim, flags, elem_oid) = header;
    let ndim = usize::try_from(ndim)
        .ok()
        .filter(|&n| n <= MAX_ARRAY_DIMS)
        .ok_or_else(|| invalid(kind, BINARY, format!("invalid number of dimensions {ndim}")))?;
    if flags != 0 && flags != 1 {
        return Err(invalid(kind, BINARY, format!("invalid flags {flags}")));
    }
    if !elem.accepts_element_oid(elem_oid) {
        return Err(invalid(
            kind,
            BINARY,
            format!("element type oid {elem_oid} is not {}", elem.type_name()),
        ));
    }
    let mut dims = [0usize; MAX_ARRAY_DIMS];
    let mut count = 1usize;
    for dim in dims.iter_mut().take(ndim) {
        let size = r.i32().map_err(|e| reader_error(kind, e))?;
        let _lower_bound = r.i32().map_err(|e| reader_error(kind, e))?;
        *dim = usize::try_from(size).map_err(|_| invalid(kind, BINARY, format!("negative dimension {size}")))?;
        count = count.saturating_mul(*dim);
    }
    // A zero-length dimension makes the whole array empty, as array_recv reads it; rendering its
    // other dimensions would let a header of a few bytes ask for gigabytes of `[]`.
    if ndim == 0 || count == 0 {
        r.finish().map_err(|e| reader_error(kind, e))?;
        return Ok("[]".to_owned());
    }
    // Every element takes at least its 4-byte length.
    if count > r.remaining() / 4 {
        return Err(invalid(
            kind,
            BINARY,
            format!("{count} elements cannot fit in the {} bytes left", r.remaining()),
        ));
    }
    let mut out = String::with_capacity(bytes.len() + 2 * count);
    let mut index = 0usize;
    write_array_dims(kind, elem, &dims[..ndim], &mut r, &mut index, &mut out)?;
    r.finish().map_err(|e| reader_error(kind, e))?;
    Ok(out)
}

fn write_array_dims(
    kind: &ValueKind,
    elem: &ValueKind,
    dims: &[usize],
    r: &mut Reader<'_>,
    index: &mut usize,
    out: &mut String,
) -> Result<()> {
    let Some((&size, inner)) = dims.split_first() else {
        return Ok(());
    };
    out.push('[');
    for i in 0..size {
        if i > 0 {
            out.push(',');
        }
        if !inner.is_empty() {
            write_array_dims(kind, elem, inner, r, index, out)?;
            continue;
        }
        let at = r.position();
        let len = r.i32().map_err(|e| reader_error(kind, e))?;
        if len == -1 {
            out.push_str("null");
        } else {
            let len =
                usize::try_from(len).map_err(|_| invalid(kind, BINARY, format!("element {index} has length {len}")))?;
            let bytes = r.bytes(len).map_err(|e| reader_error(kind, e))?;
            let value = decode_binary(elem, bytes).map_err(|e| element_error(kind, *index, at, e))?;
            push_json_element(elem, &value, out).map_err(|e| element_error(kind, *index, at, e))?;
        }
        *index += 1;
    }
    out.push(']');
    Ok(())
}

fn element_error(kind: &ValueKind, index: usize, at: usize, err: Error) -> Error {
    invalid(kind, BINARY, format!("element {index} (at byte {at}): {err}"))
}

/// Appends a decoded scalar as a JSON array element.
fn push_json_element(elem: &ValueKind, value: &SqlValue, out: &mut String) -> Result<()> {
    match value {
        SqlValue::Null => out.push_str("null"),
        SqlValue::Integer(i) if *elem == ValueKind::Bool => out.push_str(if *i != 0 { "true" } else { "false" }),
        SqlValue::Integer(i) => {
            let _ = write!(out, "{i}");
        }
        SqlValue::Real(f) => push_json_number(out, *f),
        SqlValue::Text(s) if matches!(elem, ValueKind::Json | ValueKind::Jsonb | ValueKind::Array(_)) => {
            serde_json::from_str::<serde::de::IgnoredAny>(s)
                .map_err(|e| invalid(elem, BINARY, format!("not valid JSON: {e}")))?;
            push_minified_json(out, s);
        }
        SqlValue::Text(s) => push_json_string(out, s),
    }
    Ok(())
}

/// Appends valid JSON text without the whitespace outside its strings.
fn push_minified_json(out: &mut String, json: &str) {
    let (mut in_string, mut escaped) = (false, false);
    for c in json.chars() {
        if in_string {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
        } else if c == '"' {
            in_string = true;
        } else if matches!(c, ' ' | '\t' | '\n' | '\r') {
            continue;
        }
        out.push(c);
    }
}

/// Appends `s` as a JSON string, escaped the way `JSON.stringify` escapes it.
fn push_json_string(out: &mut String, s: &str) {
    out.reserve(s.len() + 2);
    out.push('"');
    let mut plain_from = 0;
    for (i, c) in s.char_indices() {
        let escape = match c {
            '"' => "\\\"",
            '\\' => "\\\\",
            '\n' => "\\n",
            '\r' => "\\r",
            '\t' => "\\t",
            '\u{8}' => "\\b",
            '\u{c}' => "\\f",
            c if u32::from(c) < 0x20 => "",
            _ => continue,
        };
        out.push_str(&s[plain_from..i]);
        if escape.is_empty() {
            let _ = write!(out, "\\u{:04x}", u32::from(c));
        } else {
            out.push_str(escape);
        }
        plain_from = i + c.len_utf8();
    }
    out.push_str(&s[plain_from..]);
    out.push('"');
}

/// Appends a double as JavaScript's `Number.prototype.toString` writes it (shortest round-trip
/// digits; exponent form below 1e-6 and from 1e21); non-finite values as `null`.
fn push_json_number(out: &mut String, v: f64) {
    if !v.is_finite() {
        out.push_str("null");
        return;
    }
    if v == 0.0 {
        out.push('0');
        return;
    }
    // `{:e}` gives the shortest round-trip digits: `-1.2345e-7`.
    let sci = format!("{v:e}");
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let (negative, mantissa) = match mantissa.strip_prefix('-') {
        Some(m) => (true, m),
        None => (false, mantissa),
    };
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    let k = i32::try_from(digits.len()).unwrap_or(i32::MAX);
    let n = exp + 1; // v = 0.<digits> × 10^n
    if negative {
        out.push('-');
    }
    if k <= n && n <= 21 {
        out.push_str(&digits);
        out.extend(std::iter::repeat('0').take((n - k) as usize));
    } else if 0 < n && n <= 21 {
        let (int, frac) = digits.split_at(n as usize);
        out.push_str(int);
        out.push('.');
        out.push_str(frac);
    } else if -6 < n && n <= 0 {
        out.push_str("0.");
        out.extend(std::iter::repeat('0').take((-n) as usize));
        out.push_str(&digits);
    } else {
        let (first, rest) = digits.split_at(1);
        out.push_str(first);
        if !rest.is_empty() {
            out.push('.');
            out.push_str(rest);
        }
        let _ = write!(out, "e{}{}", if n > 0 { "+" } else { "-" }, (n - 1).abs());
    }
}

/// Decodes one non-NULL value in its text output format (DateStyle ISO for dates and times).
/// Arrays are not supported in text form.
pub fn decode_text(kind: &ValueKind, bytes: &[u8]) -> Result<SqlValue> {
    if !kind.is_supported() {
        return Err(unsupported(kind));
    }
    let s = utf8(kind, TEXT, bytes)?;
    let bad = |detail: &str| invalid(kind, TEXT, format!("{s:?}: {detail}"));
    Ok(match kind {
        ValueKind::Bool => match s {
            "t" | "true" => SqlValue::Integer(1),
            "f" | "false" => SqlValue::Integer(0),
            _ => return Err(bad("expected t or f")),
        },
        ValueKind::Int2 => SqlValue::Integer(s.parse::<i16>().map_err(|e| bad(&e.to_string()))?.into()),
        ValueKind::Int4 => SqlValue::Integer(s.parse::<i32>().map_err(|e| bad(&e.to_string()))?.into()),
        ValueKind::Int8 => SqlValue::Integer(s.parse::<i64>().map_err(|e| bad(&e.to_string()))?),
        ValueKind::Float4 => match special_float(s) {
            Some(v) => float8(v),
            None => float4(parse_decimal::<f32>(s).ok_or_else(|| bad("not a number"))?),
        },
        ValueKind::Float8 => match special_float(s) {
            Some(v) => float8(v),
            None => float8(parse_decimal::<f64>(s).ok_or_else(|| bad("not a number"))?),
        },
        ValueKind::Numeric => match special_float(s) {
            Some(v) => float8(v),
            None => {
                let v = parse_decimal::<f64>(s).ok_or_else(|| bad("not a number"))?;
                SqlValue::Real(if v == 0.0 { 0.0 } else { v })
            }
        },
        ValueKind::Text
        | ValueKind::Char
        | ValueKind::Enum
        | ValueKind::Json
        | ValueKind::Jsonb
        | ValueKind::Inet
        | ValueKind::Cidr
        | ValueKind::MacAddr
        | ValueKind::MacAddr8
        | ValueKind::PgLsn => SqlValue::Text(s.to_owned()),
        ValueKind::Uuid => SqlValue::Text(uuid_from_text(s).ok_or_else(|| bad("not a UUID"))?),
        ValueKind::Date | ValueKind::Time | ValueKind::TimeTz | ValueKind::Timestamp | ValueKind::TimestampTz => {
            SqlValue::Real(datetime_ms(kind, TEXT, s)?)
        }
        ValueKind::Array(_) => {
            return Err(invalid(
                kind,
                TEXT,
                "text-format arrays are not supported (pgoutput sends arrays of supported types in binary)",
            ))
        }
        ValueKind::Unsupported { .. } => return Err(unsupported(kind)),
    })
}

/// `NaN`, `Infinity`, `-Infinity` as Postgres writes them.
fn special_float(s: &str) -> Option<f64> {
    match s {
        "NaN" => Some(f64::NAN),
        "Infinity" => Some(f64::INFINITY),
        "-Infinity" => Some(f64::NEG_INFINITY),
        _ => None,
    }
}

/// A finite decimal number (`-1.5e+07`); unlike `str::parse`, no `inf`/`nan` words.
fn parse_decimal<T: std::str::FromStr>(s: &str) -> Option<T> {
    let digits = s.strip_prefix(['-', '+']).unwrap_or(s);
    if !digits.starts_with(|c: char| c.is_ascii_digit() || c == '.') {
        return None;
    }
    s.parse().ok()
}

/// A canonical lower-case hyphenated UUID from its text form (any case).
fn uuid_from_text(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    if bytes.len() != 36 {
        return None;
    }
    for (i, b) in bytes.iter().enumerate() {
        let ok = if matches!(i, 8 | 13 | 18 | 23) {
            *b == b'-'
        } else {
            b.is_ascii_hexdigit()
        };
        if !ok {
            return None;
        }
    }
    Some(s.to_ascii_lowercase())
}

/// Days since 1970-01-01 of a proleptic Gregorian date (astronomical year numbering).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400; // [0, 399]
    let mp = i64::from((month + 9) % 12); // March = 0
    let doy = (153 * mp + 2) / 5 + i64::from(day) - 1; // [0, 365]
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy; // [0, 146096]
    era * 146_097 + doe - 719_468
}

fn days_in_month(year: i64, month: u32) -> u32 {
    match month {
        4 | 6 | 9 | 11 => 30,
        2 if year.rem_euclid(4) == 0 && (year.rem_euclid(100) != 0 || year.rem_euclid(400) == 0) => 29,
        2 => 28,
        _ => 31,
    }
}

/// A cursor over the ASCII text of a date/time value.
struct Cursor<'a> {
    s: &'a [u8],
    pos: usize,
}

impl Cursor<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.pos).copied()
    }

    fn eat(&mut self, b: u8) -> bool {
        if self.peek() == Some(b) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn expect(&mut self, b: u8) -> Option<()> {
        self.eat(b).then_some(())
    }

    /// `min..=max` decimal digits as a number.
    fn digits(&mut self, min: usize, max: usize) -> Option<(i64, usize)> {
        let start = self.pos;
        let mut value: i64 = 0;
        while self.pos - start < max {
            match self.peek() {
                Some(b @ b'0'..=b'9') => {
                    value = value * 10 + i64::from(b - b'0');
                    self.pos += 1;
                }
                _ => break,
            }
        }
        let n = self.pos - start;
        (n >= min).then_some((value, n))
    }

    fn two(&mut self) -> Option<u32> {
        self.digits(2, 2).and_then(|(v, _)| u32::try_from(v).ok())
    }

    fn at_end(&self) -> bool {
        self.pos == self.s.len()
    }
}

/// `YYYY-MM-DD` (year of at least one digit, at most 7) → (astronomical-less year, month, day);
/// the BC flag is applied by the caller.
fn parse_date(c: &mut Cursor<'_>) -> Option<(i64, u32, u32)> {
    let (year, _) = c.digits(1, 7)?;
    c.expect(b'-')?;
    let month = c.two()?;
    c.expect(b'-')?;
    let day = c.two()?;
    Some((year, month, day))
}

/// `HH:MM:SS[.ffffff]` → µs since midnight (hour ≤ `max_hour`; 24 only as 24:00:00).
fn parse_time(c: &mut Cursor<'_>, max_hour: u32) -> Option<i64> {
    let hour = c.two()?;
    c.expect(b':')?;
    let minute = c.two()?;
    c.expect(b':')?;
    let second = c.two()?;
    let mut micros = 0;
    if c.eat(b'.') {
        let (frac, n) = c.digits(1, 6)?;
        micros = frac * 10_i64.pow(u32::try_from(6 - n).ok()?);
    }
    if hour > max_hour || minute > 59 || second > 59 || (hour == 24 && (minute, second, micros) != (0, 0, 0)) {
        return None;
    }
    Some(((i64::from(hour) * 60 + i64::from(minute)) * 60 + i64::from(second)) * 1_000_000 + micros)
}

/// `±HH[:MM[:SS]]` → seconds east of UTC, if present.
fn parse_offset(c: &mut Cursor<'_>) -> Option<Option<i32>> {
    let sign = match c.peek() {
        Some(b'+') => 1,
        Some(b'-') => -1,
        _ => return Some(None),
    };
    c.pos += 1;
    let hours = c.two()?;
    let mut minutes = 0;
    let mut seconds = 0;
    if c.eat(b':') {
        minutes = c.two()?;
        if c.eat(b':') {
            seconds = c.two()?;
        }
    }
    if hours > 15 || minutes > 59 || seconds > 59 {
        return None;
    }
    let secs = i32::try_from((hours * 60 + minutes) * 60 + seconds).ok()?;
    Some(Some(sign * secs))
}

/// Epoch ms (or ms since midnight for times) of a date/time kind's ISO text: pgoutput's text
/// output (`2024-01-02 03:04:05.123456+05:30`, `0044-03-15 BC`, `infinity`) or the JSON form
/// (`2024-01-02T03:04:05.123+00:00`).
fn datetime_ms(kind: &ValueKind, format: &'static str, s: &str) -> Result<f64> {
    let bad = || invalid(kind, format, format!("{s:?} is not an ISO {}", kind.type_name()));
    if matches!(kind, ValueKind::Date | ValueKind::Timestamp | ValueKind::TimestampTz) {
        match s {
            "infinity" => return Ok(f64::INFINITY),
            "-infinity" => return Ok(f64::NEG_INFINITY),
            _ => {}
        }
    }
    let (body, bc) = match s.strip_suffix(" BC") {
        Some(body) => (body, true),
        None => (s, false),
    };
    let mut c = Cursor {
        s: body.as_bytes(),
        pos: 0,
    };
    let needs_offset = matches!(kind, ValueKind::TimeTz | ValueKind::TimestampTz);
    if matches!(kind, ValueKind::Time | ValueKind::TimeTz) {
        if bc {
            return Err(bad());
        }
        let us = parse_time(&mut c, 24).ok_or_else(bad)?;
        let offset = parse_offset(&mut c).ok_or_else(bad)?;
        if !c.at_end() || offset.is_some() != needs_offset {
            return Err(bad());
        }
        return time_ms(kind, format, us, -offset.unwrap_or(0));
    }
    let (year, month, day) = parse_date(&mut c).ok_or_else(bad)?;
    if year == 0 {
        return Err(bad());
    }
    let year = if bc { 1 - year } else { year };
    if !(1..=12).contains(&month) || day == 0 || day > days_in_month(year, month) {
        return Err(bad());
    }
    let days = days_from_civil(year, month, day);
    if *kind == ValueKind::Date {
        let pg_days = i32::try_from(days - UNIX_TO_PG_EPOCH_DAYS)
            .ok()
            .filter(|d| (DATE_MIN_DAYS..DATE_END_DAYS).contains(d));
        return match pg_days {
            Some(d) if c.at_end() => pg_date_ms(kind, format, d),
            _ => Err(bad()),
        };
    }
    if !(c.eat(b' ') || c.eat(b'T')) {
        return Err(bad());
    }
    let time_us = parse_time(&mut c, 23).ok_or_else(bad)?;
    let offset = parse_offset(&mut c).ok_or_else(bad)?;
    if !c.at_end() || offset.is_some() != needs_offset {
        return Err(bad());
    }
    let unix_us =
        i128::from(days) * i128::from(DAY_US) + i128::from(time_us) - i128::from(offset.unwrap_or(0)) * 1_000_000;
    let pg_us = unix_us - i128::from(PG_EPOCH_UNIX_MICROS);
    if !(i128::from(MIN_TIMESTAMP)..i128::from(END_TIMESTAMP)).contains(&pg_us) {
        return Err(invalid(kind, format, format!("{s:?} is out of range")));
    }
    Ok(unix_us_to_ms(unix_us))
}

/// Reads the JSON form of a value (`array_to_json(attmissingval)->0`, i.e. `to_json` of the value):
/// booleans and numbers as JSON (non-finite floats and numerics as the strings `"NaN"`,
/// `"Infinity"`, `"-Infinity"`), dates and timestamps as ISO strings
/// (`"2024-01-02T03:04:05.123+05:30"`, `"0044-03-15 BC"`, `"infinity"`), json/jsonb embedded,
/// arrays as JSON arrays (nested per dimension), everything else as its text output.
///
/// json/jsonb values are re-serialized by `serde_json` (object keys sorted, numbers as `f64` or
/// 64-bit integers) — unlike the binary path, which keeps Postgres's text. JSON `null` is SQL NULL,
/// so a json/jsonb default of `'null'` cannot be told from no value. Numbers are only as exact as
/// `serde_json` parsed them (without its `float_roundtrip` feature, long decimals may be off by an
/// ulp).
pub fn from_json(kind: &ValueKind, value: &serde_json::Value) -> Result<SqlValue> {
    use serde_json::Value as J;
    if !kind.is_supported() {
        return Err(unsupported(kind));
    }
    let bad = || invalid(kind, JSON, format!("unexpected {value}"));
    Ok(match (kind, value) {
        (_, J::Null) => SqlValue::Null,
        (ValueKind::Bool, J::Bool(b)) => SqlValue::Integer(i64::from(*b)),
        (ValueKind::Int2 | ValueKind::Int4 | ValueKind::Int8, J::Number(n)) => {
            let i = n.as_i64().ok_or_else(bad)?;
            let fits = match kind {
                ValueKind::Int2 => i16::try_from(i).is_ok(),
                ValueKind::Int4 => i32::try_from(i).is_ok(),
                _ => true,
            };
            if !fits {
                return Err(bad());
            }
            SqlValue::Integer(i)
        }
        (ValueKind::Float4, J::Number(n)) => float4(n.as_f64().ok_or_else(bad)? as f32),
        (ValueKind::Float8, J::Number(n)) => float8(n.as_f64().ok_or_else(bad)?),
        (ValueKind::Numeric, J::Number(n)) => {
            let v = n.as_f64().ok_or_else(bad)?;
            SqlValue::Real(if v == 0.0 { 0.0 } else { v })
        }
        (ValueKind::Float4 | ValueKind::Float8 | ValueKind::Numeric, J::String(s)) => {
            float8(special_float(s).ok_or_else(bad)?)
        }
        (
            ValueKind::Text
            | ValueKind::Char
            | ValueKind::Enum
            | ValueKind::Inet
            | ValueKind::Cidr
            | ValueKind::MacAddr
            | ValueKind::MacAddr8
            | ValueKind::PgLsn,
            J::String(s),
        ) => SqlValue::Text(s.clone()),
        (ValueKind::Uuid, J::String(s)) => SqlValue::Text(uuid_from_text(s).ok_or_else(bad)?),
        (ValueKind::Json | ValueKind::Jsonb, v) => SqlValue::Text(v.to_string()),
        (
            ValueKind::Date | ValueKind::Time | ValueKind::TimeTz | ValueKind::Timestamp | ValueKind::TimestampTz,
            J::String(s),
        ) => SqlValue::Real(datetime_ms(kind, JSON, s)?),
        (ValueKind::Array(elem), J::Array(_)) => {
            let mut out = String::new();
            push_json_array(kind, elem, value, &mut out)?;
            SqlValue::Text(out)
        }
        _ => return Err(bad()),
    })
}

fn push_json_array(kind: &ValueKind, elem: &ValueKind, value: &serde_json::Value, out: &mut String) -> Result<()> {
    match value {
        serde_json::Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                push_json_array(kind, elem, item, out)?;
            }
            out.push(']');
        }
        item => {
            let value = from_json(elem, item).map_err(|e| invalid(kind, JSON, format!("element {item}: {e}")))?;
            push_json_element(elem, &value, out)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde::Deserialize;

    #[derive(Deserialize)]
    struct Golden {
        values: Vec<ValueCase>,
        missing: Vec<MissingCase>,
    }

    #[derive(Deserialize)]
    struct ValueCase {
        #[serde(rename = "type")]
        type_sql: String,
        expr: String,
        spec: ColumnSpec,
        binary: Option<String>,
        text: Option<String>,
        expected: Expected,
    }

    #[derive(Deserialize)]
    struct MissingCase {
        #[serde(rename = "type")]
        type_sql: String,
        default: String,
        spec: ColumnSpec,
        json: String,
        expected: Expected,
    }

    #[derive(Deserialize)]
    struct Expected {
        t: String,
        v: Option<String>,
    }

    fn golden() -> Golden {
        serde_json::from_str(include_str!("../../tests/golden/values/values.json")).expect("values.json parses")
    }

    fn unhex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
            .collect()
    }

    /// JSON equality with numbers compared by value (`1` equals `1.0`).
    fn json_eq(a: &serde_json::Value, b: &serde_json::Value) -> bool {
        use serde_json::Value as J;
        match (a, b) {
            (J::Number(x), J::Number(y)) => match (x.as_i64(), y.as_i64()) {
                (Some(x), Some(y)) => x == y,
                _ => x.as_f64() == y.as_f64(),
            },
            (J::Array(x), J::Array(y)) => x.len() == y.len() && x.iter().zip(y).all(|(x, y)| json_eq(x, y)),
            (J::Object(x), J::Object(y)) => {
                x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| json_eq(v, w)))
            }
            _ => a == b,
        }
    }

    fn check(what: &str, expected: &Expected, actual: Result<SqlValue>) {
        let actual = actual.unwrap_or_else(|e| panic!("{what}: unexpected error {e}"));
        let v = expected.v.as_deref().unwrap_or_default();
        match expected.t.as_str() {
            "null" => assert_eq!(actual, SqlValue::Null, "{what}"),
            "integer" => assert_eq!(actual, SqlValue::Integer(v.parse().expect("i64")), "{what}"),
            "real" => {
                let want: f64 = v.parse().expect("f64");
                match actual {
                    SqlValue::Real(got) => assert_eq!(got.to_bits(), want.to_bits(), "{what}: {got} != {want}"),
                    other => panic!("{what}: expected REAL {want}, got {other:?}"),
                }
            }
            "text" => assert_eq!(actual, SqlValue::Text(v.to_owned()), "{what}"),
            "json" => {
                let SqlValue::Text(got) = actual else {
                    panic!("{what}: expected JSON text, got {actual:?}");
                };
                let got_json: serde_json::Value =
                    serde_json::from_str(&got).unwrap_or_else(|e| panic!("{what}: {got}: {e}"));
                let want: serde_json::Value = serde_json::from_str(v).expect("expected JSON");
                assert!(json_eq(&got_json, &want), "{what}: {got} != {v}");
            }
            other => panic!("{what}: unknown expectation {other}"),
        }
    }

    #[test]
    fn golden_values_decode_like_postgres_says() {
        let golden = golden();
        assert!(golden.values.len() > 200);
        let mut decoded = 0;
        for case in &golden.values {
            let what = format!("{} {}", case.type_sql, case.expr);
            let kind = ValueKind::for_column(&case.spec);
            if case.expected.t == "unsupported" {
                assert!(!kind.is_supported(), "{what}: {kind:?} should be unsupported");
                let binary = unhex(case.binary.as_deref().unwrap_or_default());
                assert!(
                    matches!(decode_binary(&kind, &binary), Err(Error::UnsupportedType { .. })),
                    "{what}"
                );
                assert!(
                    matches!(decode_text(&kind, b"x"), Err(Error::UnsupportedType { .. })),
                    "{what}"
                );
                continue;
            }
            assert!(kind.is_supported(), "{what}: {kind:?}");
            let (Some(binary), Some(text)) = (&case.binary, &case.text) else {
                assert_eq!(case.expected.t, "null", "{what}");
                continue;
            };
            let bytes = unhex(binary);
            check(&format!("{what} (binary)"), &case.expected, decode_binary(&kind, &bytes));
            let borrowed = decode_binary_ref(&kind, &bytes).expect("decodes like decode_binary");
            let owned = decode_binary(&kind, &bytes).expect("decodes");
            assert_eq!(borrowed.value_ref(), SqlValueRef::Owned(owned).value_ref(), "{what} (borrowed)");
            if let ValueKind::Array(_) = kind {
                assert!(
                    matches!(decode_text(&kind, text.as_bytes()), Err(Error::InvalidValue { .. })),
                    "{what}"
                );
            } else {
                check(
                    &format!("{what} (text {text:?})"),
                    &case.expected,
                    decode_text(&kind, text.as_bytes()),
                );
            }
            decoded += 1;
        }
        assert!(decoded > 150, "{decoded}");
    }

    #[test]
    fn golden_array_output_is_compact_json() {
        for case in golden().values {
            let kind = ValueKind::for_column(&case.spec);
            if let (ValueKind::Array(_), Some(binary)) = (&kind, &case.binary) {
                let Ok(SqlValue::Text(json)) = decode_binary(&kind, &unhex(binary)) else {
                    panic!("{}: not text", case.expr);
                };
                let reserialized = serde_json::from_str::<serde_json::Value>(&json)
                    .expect("valid")
                    .to_string();
                // serde_json writes floats as `1.0`; otherwise the rendering is the same compact form.
                if !json.contains('.') && !json.contains('e') {
                    assert_eq!(json, reserialized, "{}", case.expr);
                }
                assert!(
                    !json.contains(", ") || json.contains("\", ") || case.type_sql.starts_with("text"),
                    "{json}"
                );
            }
        }
    }

    #[test]
    fn golden_missing_values_read_like_postgres_says() {
        let golden = golden();
        assert!(golden.missing.len() > 40);
        for case in &golden.missing {
            let what = format!("{} DEFAULT {} ({})", case.type_sql, case.default, case.json);
            let kind = ValueKind::for_column(&case.spec);
            assert!(case.spec.has_missing, "{what}");
            // json/jsonb come back re-serialized by serde_json: compare them as JSON.
            let structural;
            let expected = if matches!(kind, ValueKind::Json | ValueKind::Jsonb) {
                structural = Expected {
                    t: "json".into(),
                    v: case.expected.v.clone(),
                };
                &structural
            } else {
                &case.expected
            };
            let from_spec = case.spec.missing.as_ref().expect("missing");
            check(&what, expected, from_json(&kind, from_spec));
            let raw: serde_json::Value = serde_json::from_str(&case.json).expect("raw JSON");
            check(&what, expected, from_json(&kind, &raw));
        }
    }

    fn spec(type_oid: u32, type_kind: &str, base: u32, elem: u32, elem_kind: Option<&str>) -> ColumnSpec {
        ColumnSpec {
            name: "c".into(),
            attnum: 1,
            type_oid,
            type_name: format!("type{type_oid}"),
            type_kind: type_kind.into(),
            base_type_oid: base,
            elem_type_oid: elem,
            elem_type_kind: elem_kind.map(str::to_owned),
            not_null: false,
            has_missing: false,
            missing: None,
            enum_labels: None,
        }
    }

    #[test]
    fn kinds_from_column_specs() {
        use ValueKind as K;
        let arr = |k: K| K::Array(Box::new(k));
        let cases = [
            (spec(23, "b", 23, 0, None), K::Int4),
            (spec(1043, "b", 1043, 0, None), K::Text),
            (spec(19, "b", 19, 18, Some("b")), K::Text), // name has typelem "char", but is no array
            (spec(18, "b", 18, 0, None), K::Char),
            (spec(16_400, "e", 16_400, 0, None), K::Enum),
            (spec(16_401, "d", 23, 0, None), K::Int4), // domain over int4
            (spec(16_402, "d", 1007, 23, Some("b")), arr(K::Int4)), // domain over int4[]
            (spec(16_403, "d", 1007, 0, None), arr(K::Int4)), // ... spec without elem
            (spec(1007, "b", 1007, 23, Some("b")), arr(K::Int4)),
            (spec(1185, "b", 1185, 1184, Some("b")), arr(K::TimestampTz)),
            (spec(16_404, "b", 16_404, 16_400, Some("e")), arr(K::Enum)), // enum[]
            (spec(16_405, "b", 16_405, 23, Some("b")), arr(K::Int4)),     // user array of a builtin
            (
                spec(1001, "b", 1001, 17, Some("b")),
                K::Unsupported {
                    type_name: "type1001".into(),
                },
            ), // bytea[]
            (
                spec(16_406, "b", 16_406, 16_401, Some("d")),
                K::Unsupported {
                    type_name: "type16406".into(),
                },
            ), // domain[]
            (
                spec(16_407, "d", 16_400, 0, None),
                K::Unsupported {
                    type_name: "type16407".into(),
                },
            ), // domain over enum
            (
                spec(17, "b", 17, 0, None),
                K::Unsupported {
                    type_name: "type17".into(),
                },
            ),
            (
                spec(600, "b", 600, 701, Some("b")),
                K::Unsupported {
                    type_name: "type600".into(),
                },
            ), // point
            (
                spec(26, "b", 26, 0, None),
                K::Unsupported {
                    type_name: "type26".into(),
                },
            ), // oid
            (
                spec(16_408, "b", 16_408, 0, None),
                K::Unsupported {
                    type_name: "type16408".into(),
                },
            ), // citext
            (spec(1114, "b", 0, 0, None), K::Timestamp), // no base oid: the type itself
        ];
        for (spec, want) in cases {
            assert_eq!(ValueKind::for_column(&spec), want, "{spec:?}");
        }
        assert_eq!(ValueKind::for_builtin_oid(1016), Some(arr(K::Int8)));
        assert_eq!(ValueKind::for_builtin_oid(17), None);
    }

    #[test]
    fn affinity_and_client_type() {
        use ValueKind as K;
        let table = [
            (K::Bool, "INTEGER", Some("boolean")),
            (K::Int8, "INTEGER", Some("number")),
            (K::Float4, "REAL", Some("number")),
            (K::Numeric, "REAL", Some("number")),
            (K::Date, "REAL", Some("number")),
            (K::TimeTz, "REAL", Some("number")),
            (K::TimestampTz, "REAL", Some("number")),
            (K::Text, "TEXT", Some("string")),
            (K::Char, "TEXT", Some("string")),
            (K::Enum, "TEXT", Some("string")),
            (K::Uuid, "TEXT", Some("string")),
            (K::Inet, "TEXT", Some("string")),
            (K::PgLsn, "TEXT", Some("string")),
            (K::Json, "TEXT", Some("json")),
            (K::Jsonb, "TEXT", Some("json")),
            (K::Array(Box::new(K::Int4)), "TEXT", Some("json")),
            (
                K::Unsupported {
                    type_name: "bytea".into(),
                },
                "BLOB",
                None,
            ),
        ];
        for (kind, affinity, client) in table {
            assert_eq!(kind.affinity(), affinity, "{kind:?}");
            assert_eq!(kind.client_type(), client, "{kind:?}");
        }
        assert_eq!(K::Array(Box::new(K::Enum)).type_name(), "enum[]");
    }

    /// What SQLite does with the REAL values we bind: NaN becomes NULL, ±Inf survive, -0.0 does not.
    #[test]
    fn sqlite_keeps_infinities_and_turns_nan_into_null() {
        let conn = rusqlite::Connection::open_in_memory().expect("sqlite");
        conn.execute_batch("CREATE TABLE t (n INTEGER PRIMARY KEY, r REAL, i INTEGER, s TEXT)")
            .expect("ddl");
        let rows = [
            SqlValue::Real(f64::NAN),
            SqlValue::Real(f64::INFINITY),
            SqlValue::Real(f64::NEG_INFINITY),
            SqlValue::Real(-0.0),
            SqlValue::Real(1704164645123.456),
        ];
        for (n, value) in (0i64..).zip(&rows) {
            conn.execute("INSERT INTO t (n, r) VALUES (?1, ?2)", rusqlite::params![n, value])
                .expect("insert");
        }
        let read = |n: i64| -> Option<f64> {
            conn.query_row("SELECT r FROM t WHERE n = ?1", [n], |row| row.get(0))
                .expect("select")
        };
        assert_eq!(read(0), None);
        assert_eq!(read(1), Some(f64::INFINITY));
        assert_eq!(read(2), Some(f64::NEG_INFINITY));
        // SQLite stores an integral REAL as an integer in the record, so -0.0 reads back as 0.0.
        assert_eq!(read(3).map(f64::to_bits), Some(0.0f64.to_bits()));
        assert_eq!(read(4), Some(1704164645123.456));
        let big = SqlValue::Integer(i64::MAX);
        let text = SqlValue::Text("héllo".into());
        conn.execute(
            "INSERT INTO t (n, i, s) VALUES (9, ?1, ?2)",
            rusqlite::params![big, text],
        )
        .expect("insert");
        let (i, s): (i64, String) = conn
            .query_row("SELECT i, s FROM t WHERE n = 9", [], |row| {
                Ok((row.get(0)?, row.get(1)?))
            })
            .expect("row");
        assert_eq!((i, s.as_str()), (i64::MAX, "héllo"));
        assert_eq!(Value::from(SqlValue::Integer(3)), Value::Integer(3));
    }

    fn binary_err(kind: &ValueKind, bytes: &[u8]) -> String {
        match decode_binary(kind, bytes) {
            Err(e @ Error::InvalidValue { .. }) => e.to_string(),
            other => panic!("{kind:?} {bytes:02x?}: expected an InvalidValue error, got {other:?}"),
        }
    }

    fn numeric(ndigits: i16, weight: i16, sign: u16, dscale: i16, digits: &[i16]) -> Vec<u8> {
        let mut out = Vec::new();
        for v in [ndigits, weight, sign as i16, dscale] {
            out.extend_from_slice(&v.to_be_bytes());
        }
        for d in digits {
            out.extend_from_slice(&d.to_be_bytes());
        }
        out
    }

    #[test]
    fn malformed_scalars_are_errors() {
        use ValueKind as K;
        let cases: &[(K, &[u8], &str)] = &[
            (K::Bool, b"", "expected 1 bytes, got 0"),
            (K::Int2, &[0, 0, 0], "expected 2 bytes, got 3"),
            (
                K::Int4,
                &[0; 8],
                "invalid int4 value in binary format: expected 4 bytes, got 8",
            ),
            (K::Int8, &[0; 4], "expected 8 bytes"),
            (K::Float4, &[0; 8], "expected 4 bytes"),
            (K::Float8, &[0; 4], "expected 8 bytes"),
            (K::Text, b"a\xffb", "not UTF-8 (invalid byte at offset 1)"),
            (K::Enum, b"\xc3", "not UTF-8"),
            (K::Json, b"\x80", "not UTF-8"),
            (K::Jsonb, b"", "empty (no version byte)"),
            (K::Jsonb, b"\x02{}", "unsupported jsonb version 2"),
            (K::Jsonb, b"\x01\xff", "not UTF-8"),
            (K::Char, b"ab", "expected 1 bytes"),
            (K::Uuid, &[0; 15], "expected 16 bytes"),
            (K::Date, &[0; 8], "expected 4 bytes"),
            (K::Date, &0x7FFF_FFFEi32.to_be_bytes(), "out of range"),
            (K::Date, &(-2_451_546i32).to_be_bytes(), "out of range"),
            (K::Time, &(-1i64).to_be_bytes(), "outside 00:00:00..24:00:00"),
            (K::Time, &(86_400_000_001i64).to_be_bytes(), "outside"),
            (K::TimeTz, &[0; 8], "expected 12 bytes"),
            (K::Timestamp, &(i64::MAX - 1).to_be_bytes(), "out of range"),
            (K::TimestampTz, &(MIN_TIMESTAMP - 1).to_be_bytes(), "out of range"),
            (K::Inet, &[2, 32, 0], "shorter than the 4-byte header"),
            (K::Inet, &[2, 33, 0, 4, 1, 2, 3, 4], "33 bits for a 32-bit address"),
            (
                K::Inet,
                &[2, 32, 0, 16, 1, 2, 3, 4],
                "invalid address family 2 with length 16",
            ),
            (K::Cidr, &[4, 32, 1, 4, 1, 2, 3, 4], "invalid address family 4"),
            (K::Inet, &[2, 32, 0, 4, 1, 2, 3], "address length 4, but 3 bytes follow"),
            (K::MacAddr, &[0; 8], "expected 6 bytes"),
            (K::MacAddr8, &[0; 6], "expected 8 bytes"),
            (K::PgLsn, &[0; 4], "expected 8 bytes"),
        ];
        for (kind, bytes, want) in cases {
            let err = binary_err(kind, bytes);
            assert!(err.contains(want), "{kind:?}: {err:?} lacks {want:?}");
        }
        // timetz: zone beyond ±15:59:59.
        let mut tz = 0i64.to_be_bytes().to_vec();
        tz.extend_from_slice(&57_600i32.to_be_bytes());
        assert!(binary_err(&K::TimeTz, &tz).contains("time zone offset 57600 s is out of range"));
    }

    #[test]
    fn malformed_numerics_are_errors() {
        let k = ValueKind::Numeric;
        assert!(binary_err(&k, &[0; 7]).contains("shorter than the 8-byte header"));
        assert!(binary_err(&k, &numeric(-1, 0, 0, 0, &[])).contains("negative digit count -1"));
        assert!(binary_err(&k, &numeric(2, 0, 0, 0, &[1])).contains("2 digits need 4 bytes after the header, got 2"));
        assert!(binary_err(&k, &numeric(1, 0, 0x8000, 0, &[1])).contains("invalid sign 0x8000"));
        assert!(binary_err(&k, &numeric(1, 0, 0, 0x4000, &[1])).contains("invalid display scale 16384"));
        assert!(binary_err(&k, &numeric(1, 0, 0, 0, &[10_000])).contains("digit 0 is 10000"));
        assert!(binary_err(&k, &numeric(2, 0, 0, 0, &[1, -1])).contains("digit 1 is -1"));
    }

    #[test]
    fn numeric_edges() {
        let k = ValueKind::Numeric;
        let real = |bytes: Vec<u8>| match decode_binary(&k, &bytes).expect("decodes") {
            SqlValue::Real(v) => v,
            other => panic!("{other:?}"),
        };
        // Digits below the display scale are not part of the value (1.5000 with dscale 0 is 1).
        assert_eq!(real(numeric(2, 0, 0, 0, &[1, 5000])), 1.0);
        assert_eq!(real(numeric(2, 0, 0, 1, &[1, 5678])), 1.5);
        assert_eq!(real(numeric(1, -1, 0x4000, 3, &[1])), -0.0);
        assert_eq!(real(numeric(1, -1, 0x4000, 3, &[1])).to_bits(), 0.0f64.to_bits());
        assert_eq!(real(numeric(1, 32_767, 0, 0, &[1])), f64::INFINITY);
        assert_eq!(real(numeric(1, -32_768, 0, 0x3FFF, &[1])), 0.0);
        assert_eq!(real(numeric(1, 76, 0x4000, 0, &[1])), -1e304);
        // Specials ignore the rest of the header (Postgres sends dscale 32 with Infinity).
        assert_eq!(
            decode_binary(&k, &numeric(0, 0, 0xC000, 0, &[])).expect("NaN"),
            SqlValue::Null
        );
        assert_eq!(real(numeric(0, 0, 0xF000, 32, &[])), f64::NEG_INFINITY);
    }

    #[test]
    fn floats() {
        let f4 = |v: f32| decode_binary(&ValueKind::Float4, &v.to_be_bytes()).expect("float4");
        assert_eq!(f4(1.1), SqlValue::Real(1.1));
        assert_eq!(f4(0.1), SqlValue::Real(0.1));
        assert_eq!(f4(f32::MAX), SqlValue::Real(3.4028235e38));
        assert_eq!(f4(f32::NAN), SqlValue::Null);
        assert_eq!(f4(f32::NEG_INFINITY), SqlValue::Real(f64::NEG_INFINITY));
        let f8 = |v: f64| decode_binary(&ValueKind::Float8, &v.to_be_bytes()).expect("float8");
        assert_eq!(f8(-f64::NAN), SqlValue::Null);
        assert_eq!(f8(f64::MIN_POSITIVE), SqlValue::Real(f64::MIN_POSITIVE));
    }

    #[test]
    fn char_renders_like_charout() {
        let c = |b: u8| decode_binary(&ValueKind::Char, &[b]).expect("char");
        assert_eq!(c(0), SqlValue::Text(String::new()));
        assert_eq!(c(b'A'), SqlValue::Text("A".into()));
        assert_eq!(c(0x7f), SqlValue::Text("\u{7f}".into()));
        assert_eq!(c(0x80), SqlValue::Text("\\200".into()));
        assert_eq!(c(0xff), SqlValue::Text("\\377".into()));
    }

    #[test]
    fn time_mapping_follows_zero_cache() {
        let tz = |us: i64, zone: i32| {
            let mut b = us.to_be_bytes().to_vec();
            b.extend_from_slice(&zone.to_be_bytes());
            decode_binary(&ValueKind::TimeTz, &b).expect("timetz")
        };
        // 23:59:59.9999 at UTC-00:00:01 is 24:00:00.999 UTC, past the day: wraps to 0.999 s.
        assert_eq!(tz(86_399_999_900, 1), SqlValue::Real(999.0));
        // Exactly 24:00 UTC stays 86400000.
        assert_eq!(tz(86_399_000_000, 1), SqlValue::Real(86_400_000.0));
        // Before midnight UTC wraps up.
        assert_eq!(tz(0, -1), SqlValue::Real(86_399_000.0));
        // Sub-millisecond parts are truncated, not rounded.
        let t = |us: i64| decode_binary(&ValueKind::Time, &us.to_be_bytes()).expect("time");
        assert_eq!(t(1_999), SqlValue::Real(1.0));
        assert_eq!(t(86_400_000_000), SqlValue::Real(86_400_000.0));
    }

    fn array(ndim: i32, flags: i32, oid: u32, dims: &[(i32, i32)], elems: &[Option<&[u8]>]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&ndim.to_be_bytes());
        out.extend_from_slice(&flags.to_be_bytes());
        out.extend_from_slice(&oid.to_be_bytes());
        for (size, lb) in dims {
            out.extend_from_slice(&size.to_be_bytes());
            out.extend_from_slice(&lb.to_be_bytes());
        }
        for e in elems {
            match e {
                None => out.extend_from_slice(&(-1i32).to_be_bytes()),
                Some(b) => {
                    out.extend_from_slice(&i32::try_from(b.len()).expect("len").to_be_bytes());
                    out.extend_from_slice(b);
                }
            }
        }
        out
    }

    #[test]
    fn malformed_arrays_are_errors() {
        let k = ValueKind::Array(Box::new(ValueKind::Int4));
        let one: &[u8] = &1i32.to_be_bytes();
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (vec![0, 0, 0], "at byte 0: truncated"),
            (array(7, 0, 23, &[], &[]), "invalid number of dimensions 7"),
            (array(-1, 0, 23, &[], &[]), "invalid number of dimensions -1"),
            (array(1, 2, 23, &[(1, 1)], &[Some(one)]), "invalid flags 2"),
            (
                array(1, 0, 20, &[(1, 1)], &[Some(one)]),
                "element type oid 20 is not int4",
            ),
            (array(1, 0, 23, &[(-1, 1)], &[]), "negative dimension -1"),
            (
                array(2, 0, 23, &[(65_536, 1), (65_536, 1)], &[]),
                "4294967296 elements cannot fit",
            ),
            (
                array(1, 0, 23, &[(3, 1)], &[Some(one)]),
                "3 elements cannot fit in the 8 bytes left",
            ),
            (array(1, 0, 23, &[(2, 1)], &[Some(one)]), "at byte 28: truncated"),
            (
                array(1, 0, 23, &[(1, 1)], &[Some(&[0, 0])]),
                "element 0 (at byte 20): invalid int4 value",
            ),
            (array(0, 0, 23, &[], &[Some(one)]), "trailing bytes"),
            (array(1, 0, 23, &[(1, 1)], &[Some(one), Some(one)]), "trailing bytes"),
            (array(1, 0, 23, &[], &[]), "truncated"),
        ];
        for (bytes, want) in cases {
            let err = binary_err(&k, &bytes);
            assert!(err.contains(want), "{err:?} lacks {want:?}");
            assert!(err.starts_with("invalid int4[] value in binary format"), "{err}");
        }
        // Negative element lengths other than -1.
        let mut bad = array(1, 0, 23, &[(1, 1)], &[]);
        bad.extend_from_slice(&(-2i32).to_be_bytes());
        assert!(binary_err(&k, &bad).contains("element 0 has length -2"));
        // A json element that is not JSON cannot be embedded.
        let kj = ValueKind::Array(Box::new(ValueKind::Json));
        assert!(binary_err(&kj, &array(1, 0, 114, &[(1, 1)], &[Some(b"{")])).contains("not valid JSON"));
        // Enum arrays accept any user-type element oid, not a builtin one.
        let ke = ValueKind::Array(Box::new(ValueKind::Enum));
        assert!(binary_err(&ke, &array(1, 0, 25, &[(1, 1)], &[Some(b"a")])).contains("element type oid 25"));
        let ok = decode_binary(&ke, &array(1, 0, 16_500, &[(1, 1)], &[Some(b"a")])).expect("enum[]");
        assert_eq!(ok, SqlValue::Text("[\"a\"]".into()));
    }

    #[test]
    fn array_shapes() {
        let k = ValueKind::Array(Box::new(ValueKind::Text));
        let text = |b: Vec<u8>| match decode_binary(&k, &b).expect("decodes") {
            SqlValue::Text(s) => s,
            other => panic!("{other:?}"),
        };
        assert_eq!(text(array(0, 0, 25, &[], &[])), "[]");
        // A zero-length dimension is an empty array (as array_recv reads it), whatever the others.
        assert_eq!(text(array(2, 0, 25, &[(2, 1), (0, 1)], &[])), "[]");
        assert_eq!(text(array(2, 0, 25, &[(i32::MAX, 1), (0, 1)], &[])), "[]");
        assert_eq!(text(array(1, 1, 1043, &[(2, 5)], &[None, Some(b"x")])), "[null,\"x\"]");
        let elems: Vec<Option<&[u8]>> = vec![Some(b"a"), Some(b"b"), Some(b"c"), Some(b"d"), Some(b"e"), Some(b"f")];
        assert_eq!(
            text(array(3, 0, 25, &[(1, 1), (2, 1), (3, 1)], &elems)),
            r#"[[["a","b","c"],["d","e","f"]]]"#
        );
        let kb = ValueKind::Array(Box::new(ValueKind::Jsonb));
        let jsonb = decode_binary(
            &kb,
            &array(
                1,
                0,
                3802,
                &[(1, 1)],
                &[Some(b"\x01{\"a b\": [1, 2], \"c\": \" \\\" \"}")],
            ),
        );
        assert_eq!(
            jsonb.expect("jsonb[]"),
            SqlValue::Text(r#"[{"a b":[1,2],"c":" \" "}]"#.into())
        );
    }

    #[test]
    fn json_strings_escape_like_json_stringify() {
        let mut out = String::new();
        push_json_string(&mut out, "a\"b\\c\nd\re\tf\u{8}\u{c}\u{1}\u{1f} é 🎉 \u{7f}");
        assert_eq!(
            out,
            r#""a\"b\\c\nd\re\tf\b\f\u0001\u001f é 🎉 "#.to_owned() + "\u{7f}\""
        );
    }

    #[test]
    fn json_numbers_print_like_javascript() {
        let cases: &[(f64, &str)] = &[
            (0.0, "0"),
            (-0.0, "0"),
            (1.0, "1"),
            (-1.5, "-1.5"),
            (0.1, "0.1"),
            (1e20, "100000000000000000000"),
            (1e21, "1e+21"),
            (1.5e22, "1.5e+22"),
            (123_456_789_012.345, "123456789012.345"),
            (1_704_164_645_123.456, "1704164645123.456"),
            (0.000001, "0.000001"),
            (0.000001234, "0.000001234"),
            (1e-7, "1e-7"),
            (-1.25e-300, "-1.25e-300"),
            (5e-324, "5e-324"),
            (f64::MAX, "1.7976931348623157e+308"),
            (9_007_199_254_740_993.0, "9007199254740992"),
            (f64::NAN, "null"),
            (f64::INFINITY, "null"),
        ];
        for (v, want) in cases {
            let mut out = String::new();
            push_json_number(&mut out, *v);
            assert_eq!(&out, want, "{v}");
            if v.is_finite() {
                assert_eq!(out.parse::<f64>().expect("parses"), *v);
            }
        }
    }

    #[test]
    fn text_datetimes() {
        use ValueKind as K;
        let ms = |kind: &K, s: &str| match decode_text(kind, s.as_bytes()) {
            Ok(SqlValue::Real(v)) => v,
            other => panic!("{kind:?} {s:?}: {other:?}"),
        };
        assert_eq!(
            ms(&K::TimestampTz, "2024-01-02 03:04:05.123456+05:30"),
            1_704_144_845_123.456
        );
        assert_eq!(
            ms(&K::TimestampTz, "2024-01-02T03:04:05.123456+05:30"),
            1_704_144_845_123.456
        );
        assert_eq!(
            ms(&K::TimestampTz, "2024-01-01 22:04:05.123456+00"),
            1_704_146_645_123.456
        );
        assert_eq!(
            ms(&K::TimestampTz, "1800-01-01 05:53:28+05:53:28"),
            -5_364_662_400_000.0
        );
        assert_eq!(ms(&K::TimestampTz, "1969-12-31 19:00:00-05"), 0.0);
        assert_eq!(ms(&K::Timestamp, "1970-01-01 00:00:00.1"), 100.0);
        assert_eq!(ms(&K::Timestamp, "0001-01-01 00:00:00 BC"), -62_167_219_200_000.0);
        assert_eq!(ms(&K::Timestamp, "2024-02-29 00:00:00"), 1_709_164_800_000.0);
        assert_eq!(ms(&K::Date, "2000-02-29"), 951_782_400_000.0);
        assert_eq!(ms(&K::Date, "0001-01-01"), -62_135_596_800_000.0);
        assert_eq!(ms(&K::Date, "0001-12-31 BC"), -62_135_683_200_000.0);
        assert_eq!(ms(&K::Date, "-infinity"), f64::NEG_INFINITY);
        assert_eq!(ms(&K::Time, "24:00:00"), 86_400_000.0);
        assert_eq!(ms(&K::Time, "00:00:00.000999"), 0.0);
        assert_eq!(ms(&K::TimeTz, "00:30:00+01"), 84_600_000.0);
        assert_eq!(ms(&K::TimeTz, "12:00:00-00:00:01"), 43_201_000.0);
        let bad = [
            (K::Date, "2023-02-29"),
            (K::Date, "2024-13-01"),
            (K::Date, "2024-00-10"),
            (K::Date, "2024-01-00"),
            (K::Date, "0000-01-01"),
            (K::Date, "2024-01-02 BC BC"),
            (K::Date, "2024-1-02"),
            (K::Date, "2024-01-02 "),
            (K::Date, "9999999-01-01"),
            (K::Date, "Infinity"),
            (K::Date, ""),
            (K::Time, "25:00:00"),
            (K::Time, "24:00:00.000001"),
            (K::Time, "12:60:00"),
            (K::Time, "12:00:60"),
            (K::Time, "12:00"),
            (K::Time, "12:00:00+00"),
            (K::Time, "infinity"),
            (K::Time, "12:00:00.1234567"),
            (K::TimeTz, "12:00:00"),
            (K::TimeTz, "12:00:00+16"),
            (K::TimeTz, "12:00:00+05:60"),
            (K::Timestamp, "2024-01-02 03:04:05+00"),
            (K::Timestamp, "2024-01-02"),
            (K::Timestamp, "2024-01-02 24:00:00"),
            (K::Timestamp, "2024-01-02_03:04:05"),
            (K::TimestampTz, "2024-01-02 03:04:05"),
            (K::TimestampTz, "2024-01-02 03:04:05+0530"),
            (K::TimestampTz, "294277-01-01 00:00:00+00"),
            (K::TimestampTz, "4714-11-23 23:59:59+00 BC"),
        ];
        for (kind, s) in bad {
            assert!(
                matches!(decode_text(&kind, s.as_bytes()), Err(Error::InvalidValue { .. })),
                "{kind:?} {s:?} should be an error"
            );
        }
    }

    #[test]
    fn text_scalars() {
        use ValueKind as K;
        let t = |kind: K, s: &str| decode_text(&kind, s.as_bytes());
        assert_eq!(t(K::Bool, "true").expect("bool"), SqlValue::Integer(1));
        assert_eq!(t(K::Float4, "1.10000002").expect("float4"), SqlValue::Real(1.1));
        assert_eq!(t(K::Float8, "1e+22").expect("float8"), SqlValue::Real(1e22));
        assert_eq!(t(K::Numeric, "-0.00").expect("numeric").clone(), SqlValue::Real(0.0));
        assert_eq!(
            t(K::Uuid, "A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11").expect("uuid"),
            SqlValue::Text("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11".into())
        );
        for (kind, s) in [
            (K::Bool, "yes"),
            (K::Int2, "32768"),
            (K::Int4, "1.0"),
            (K::Int8, ""),
            (K::Float8, "inf"),
            (K::Float8, "nan"),
            (K::Float4, "infinity"),
            (K::Numeric, "1,5"),
            (K::Numeric, "e5"),
            (K::Uuid, "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a1"),
            (K::Uuid, "a0eebc99x9c0b-4ef8-bb6d-6bb9bd380a11"),
            (K::Text, "\u{0}\u{ff}"),
        ] {
            if kind == K::Text {
                continue;
            }
            assert!(
                matches!(t(kind.clone(), s), Err(Error::InvalidValue { .. })),
                "{kind:?} {s:?}"
            );
        }
        assert!(matches!(
            decode_text(&K::Text, b"\xff"),
            Err(Error::InvalidValue { .. })
        ));
    }

    #[test]
    fn json_values_of_the_wrong_shape_are_errors() {
        use serde_json::json;
        use ValueKind as K;
        let cases = [
            (K::Bool, json!(1)),
            (K::Int2, json!(40_000)),
            (K::Int4, json!(1.5)),
            (K::Int8, json!("1")),
            (K::Float8, json!("nan")),
            (K::Text, json!(1)),
            (K::Uuid, json!("not a uuid")),
            (K::Date, json!(1)),
            (K::Timestamp, json!("2024-01-02T03:04:05+00:00")),
            (K::Array(Box::new(K::Int4)), json!(1)),
            (K::Array(Box::new(K::Int4)), json!([1, "x"])),
        ];
        for (kind, value) in cases {
            assert!(
                matches!(from_json(&kind, &value), Err(Error::InvalidValue { .. })),
                "{kind:?} {value}"
            );
        }
        let unsupported = K::Unsupported {
            type_name: "bytea".into(),
        };
        let err = from_json(&unsupported, &json!("\\x00")).expect_err("unsupported");
        assert_eq!(err.to_string(), "type bytea is not supported for replication");
        assert_eq!(err.code(), "UnsupportedTypeError");
        assert_eq!(
            from_json(&K::Jsonb, &json!({"b": [1, {"a": null}]})).expect("jsonb"),
            SqlValue::Text(r#"{"b":[1,{"a":null}]}"#.into())
        );
        assert_eq!(
            from_json(&K::Int8, &serde_json::Value::Null).expect("null"),
            SqlValue::Null
        );
    }

    fn all_kinds() -> Vec<ValueKind> {
        use ValueKind as K;
        let scalars = vec![
            K::Bool,
            K::Int2,
            K::Int4,
            K::Int8,
            K::Float4,
            K::Float8,
            K::Numeric,
            K::Text,
            K::Char,
            K::Enum,
            K::Uuid,
            K::Json,
            K::Jsonb,
            K::Date,
            K::Time,
            K::TimeTz,
            K::Timestamp,
            K::TimestampTz,
            K::Inet,
            K::Cidr,
            K::MacAddr,
            K::MacAddr8,
            K::PgLsn,
        ];
        let mut all = scalars.clone();
        all.extend(scalars.into_iter().map(|k| K::Array(Box::new(k))));
        all.push(K::Unsupported {
            type_name: "bytea".into(),
        });
        all
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            for kind in all_kinds() {
                let _ = decode_binary(&kind, &bytes);
                let _ = decode_text(&kind, &bytes);
            }
        }

        #[test]
        fn arbitrary_array_headers_never_panic(
            ndim in -1i32..8, flags in -1i32..3, dims in proptest::collection::vec((-2i32..5, any::<i32>()), 0..8),
            lens in proptest::collection::vec(prop_oneof![Just(-1i32), 0i32..12, Just(i32::MAX)], 0..12),
            tail in proptest::collection::vec(any::<u8>(), 0..40),
        ) {
            let mut bytes = Vec::new();
            bytes.extend_from_slice(&ndim.to_be_bytes());
            bytes.extend_from_slice(&flags.to_be_bytes());
            bytes.extend_from_slice(&23u32.to_be_bytes());
            for (size, lb) in &dims {
                bytes.extend_from_slice(&size.to_be_bytes());
                bytes.extend_from_slice(&lb.to_be_bytes());
            }
            for len in &lens {
                bytes.extend_from_slice(&len.to_be_bytes());
                bytes.extend_from_slice(&tail[..tail.len().min(usize::try_from(*len).unwrap_or(0))]);
            }
            for elem in [ValueKind::Int4, ValueKind::Text, ValueKind::Numeric] {
                let _ = decode_binary(&ValueKind::Array(Box::new(elem)), &bytes);
            }
        }

        #[test]
        fn arbitrary_text_datetimes_never_panic(s in "[0-9 :.+TBC-]{0,40}") {
            for kind in [ValueKind::Date, ValueKind::Time, ValueKind::TimeTz, ValueKind::Timestamp, ValueKind::TimestampTz] {
                let _ = decode_text(&kind, s.as_bytes());
                let _ = from_json(&kind, &serde_json::Value::String(s.clone()));
            }
        }

        /// Numerics decode to the double nearest their decimal value, written out independently.
        #[test]
        fn numerics_match_their_decimal_text(
            digits in proptest::collection::vec(0i16..10_000, 0..12), weight in -20i16..20,
            negative in any::<bool>(), extra_scale in 0i16..8,
        ) {
            let ndigits = i16::try_from(digits.len()).expect("small");
            let frac_groups = (ndigits - weight - 1).max(0);
            let dscale = frac_groups * 4 + extra_scale;
            let bytes = numeric(ndigits, weight, if negative { 0x4000 } else { 0 }, dscale, &digits);
            // The decimal text: integer groups (weights weight..=0), a point, fraction groups
            // (weights -1..=lowest); group of weight w is digits[weight - w].
            let group = |w: i16| {
                let idx = usize::try_from(i32::from(weight) - i32::from(w)).ok();
                format!("{:04}", idx.and_then(|i| digits.get(i)).copied().unwrap_or(0))
            };
            let mut int_part = String::from("0");
            for w in (0..=weight).rev() {
                int_part.push_str(&group(w));
            }
            let mut frac_part = String::new();
            for w in 1..=frac_groups {
                frac_part.push_str(&group(-w));
            }
            let text = format!("{}{}.{}0", if negative { "-" } else { "" }, int_part, frac_part);
            let mut want: f64 = text.parse().expect("decimal");
            if want == 0.0 {
                want = 0.0;
            }
            let got = decode_binary(&ValueKind::Numeric, &bytes).expect("decodes");
            prop_assert_eq!(got, SqlValue::Real(want), "{}", text);
        }

        /// Timestamps: epoch ms is the exact µs / 1000, rounded once.
        #[test]
        fn timestamps_round_once(us in MIN_TIMESTAMP..END_TIMESTAMP) {
            let got = decode_binary(&ValueKind::TimestampTz, &us.to_be_bytes()).expect("decodes");
            let unix = i128::from(us) + i128::from(PG_EPOCH_UNIX_MICROS);
            let want: f64 = format!("{unix}e-3").parse().expect("decimal");
            prop_assert_eq!(got, SqlValue::Real(want));
        }

        /// The text and binary forms of a timestamptz agree (text rendered by `PgTimestamp`).
        #[test]
        fn text_and_binary_timestamps_agree(us in -30_000_000_000_000_000i64..200_000_000_000_000_000i64) {
            let text = crate::pg::time::PgTimestamp(us).to_string();
            let text = text.trim_end_matches('Z').replace('T', " ") + "+00";
            let from_text = decode_text(&ValueKind::TimestampTz, text.as_bytes()).expect("text");
            let from_binary = decode_binary(&ValueKind::TimestampTz, &us.to_be_bytes()).expect("binary");
            prop_assert_eq!(from_text, from_binary, "{}", text);
        }

        /// int4 arrays of any shape decode to the nested JSON of their elements.
        #[test]
        fn int4_arrays_nest_per_dimension(
            dims in proptest::collection::vec(1usize..4, 1..4),
            values in proptest::collection::vec(proptest::option::of(any::<i32>()), 27),
        ) {
            let count: usize = dims.iter().product();
            let elems: Vec<Option<[u8; 4]>> = values[..count].iter().map(|v| v.map(i32::to_be_bytes)).collect();
            let refs: Vec<Option<&[u8]>> = elems.iter().map(|e| e.as_ref().map(|b| &b[..])).collect();
            let shape: Vec<(i32, i32)> = dims.iter().map(|&d| (i32::try_from(d).expect("small"), 1)).collect();
            let bytes = array(i32::try_from(dims.len()).expect("small"), 1, 23, &shape, &refs);
            let SqlValue::Text(got) = decode_binary(&ValueKind::Array(Box::new(ValueKind::Int4)), &bytes).expect("decodes") else {
                panic!("not text");
            };
            fn nest(dims: &[usize], flat: &[Option<i32>]) -> serde_json::Value {
                match dims.split_first() {
                    Some((&n, rest)) if !rest.is_empty() => {
                        let step = flat.len() / n;
                        serde_json::Value::Array((0..n).map(|i| nest(rest, &flat[i * step..(i + 1) * step])).collect())
                    }
                    _ => serde_json::Value::Array(flat.iter().map(|v| serde_json::json!(v)).collect()),
                }
            }
            let want = nest(&dims, &values[..count]);
            prop_assert_eq!(got, want.to_string());
        }
    }
}
