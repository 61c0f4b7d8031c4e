//! A streaming decoder for `COPY … TO STDOUT (FORMAT binary)` output.
//!
//! Format (PostgreSQL docs, "COPY — Binary Format"), all integers big-endian:
//!
//! ```text
//! header:  "PGCOPY\n\xff\r\n\0" (11 bytes), i32 flags, i32 extension length, extension bytes
//! tuple:   i16 field count, then per field: i32 length (-1 = NULL) and that many bytes
//! trailer: i16 -1
//! ```
//!
//! Flags bit 16 means every tuple carries an OID (only `WITH OIDS`, gone since Postgres 12; not
//! supported); other bits in 16..=31 are critical and unknown, so they are errors; bits 0..=15 are
//! ignored. Field values are in each type's binary send format (see [`crate::pg::values`]).
//!
//! The data arrives in chunks with no alignment promise (psycopg yields one CopyData message per
//! row, but a chunk may hold part of a row or several rows): [`CopyDecoder::feed`] decodes every
//! complete tuple and keeps an incomplete tail until the next chunk. When nothing is pending, rows
//! are decoded straight from the caller's chunk; the only allocation reused across rows is the
//! vector of field slices. After an error the decoder refuses further input.

use crate::error::{Error, Result};
use crate::pg::reader::Reader;

/// The 11-byte signature that starts every binary COPY stream.
pub const SIGNATURE: &[u8; 11] = b"PGCOPY\n\xff\r\n\0";
/// Signature, flags and header-extension length.
const HEADER_LEN: usize = 19;
const FLAG_OIDS: i32 = 1 << 16;
const CRITICAL_FLAGS: i32 = !0xFFFF;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Header,
    Tuples,
    Done,
    Failed,
}

/// Decodes one binary COPY stream of tuples with a known field count.
#[derive(Debug)]
pub struct CopyDecoder {
    /// Bytes received but not yet decoded (an incomplete header or tuple).
    pending: Vec<u8>,
    parser: Parser,
}

#[derive(Debug)]
struct Parser {
    columns: usize,
    state: State,
    /// Stream offset of the first byte not yet consumed.
    offset: u64,
    rows: u64,
    /// Always empty: kept only for its allocation (see [`recycle`]).
    fields: Vec<Option<&'static [u8]>>,
}

/// What the bytes at the front of the input hold.
enum Step {
    /// More bytes are needed.
    Incomplete,
    /// A header or tuple of this many bytes was consumed.
    Consumed(usize),
    /// The trailer (2 bytes).
    Trailer,
}

/// An empty vector with `v`'s allocation, for slices of another lifetime. (`into_iter().map()
/// .collect()` between same-layout element types reuses the allocation in place.)
fn recycle<'b>(mut v: Vec<Option<&[u8]>>) -> Vec<Option<&'b [u8]>> {
    v.clear();
    v.into_iter().map(|_| None).collect()
}

impl CopyDecoder {
    /// A decoder for tuples of `column_count` fields.
    #[must_use]
    pub fn new(column_count: usize) -> Self {
        CopyDecoder {
            pending: Vec::new(),
            parser: Parser {
                columns: column_count,
                state: State::Header,
                offset: 0,
                rows: 0,
                fields: Vec::with_capacity(column_count),
            },
        }
    }

    /// Decodes the complete tuples now available, calling `on_row` with each tuple's fields
    /// (`None` for NULL); an error from `on_row` stops decoding and is returned.
    pub fn feed(&mut self, chunk: &[u8], mut on_row: impl FnMut(&[Option<&[u8]>]) -> Result<()>) -> Result<()> {
        let result = if self.pending.is_empty() {
            self.parser.run(chunk, &mut on_row).map(|used| {
                self.pending.extend_from_slice(chunk.get(used..).unwrap_or_default());
            })
        } else {
            self.pending.extend_from_slice(chunk);
            self.parser.run(&self.pending, &mut on_row).map(|used| {
                self.pending.drain(..used);
            })
        };
        if result.is_err() {
            self.parser.state = State::Failed;
        }
        result
    }

    /// Succeeds when the stream ended properly: the trailer was read and nothing follows it.
    pub fn finish(&self) -> Result<()> {
        let p = &self.parser;
        let pending = self.pending.len();
        match p.state {
            State::Done => Ok(()),
            State::Failed => Err(p.error(p.offset, "the stream failed to decode earlier".to_owned())),
            State::Header => Err(p.error(
                p.offset,
                format!("the stream ended inside the header ({pending} bytes of at least {HEADER_LEN})"),
            )),
            State::Tuples if pending == 0 => Err(p.error(
                p.offset,
                format!("the stream ended after {} tuples without the trailer", p.rows),
            )),
            State::Tuples => Err(p.error(
                p.offset,
                format!("the stream ended inside tuple {} ({pending} bytes of it)", p.rows + 1),
            )),
        }
    }

    /// Tuples decoded so far.
    #[must_use]
    pub fn rows(&self) -> u64 {
        self.parser.rows
    }

    /// Whether the trailer has been read.
    #[must_use]
    pub fn is_done(&self) -> bool {
        self.parser.state == State::Done
    }
}

impl Parser {
    fn error(&self, offset: u64, detail: String) -> Error {
        Error::Malformed {
            what: "binary COPY stream",
            detail: format!("at byte {offset}: {detail}"),
        }
    }

    /// Consumes the complete items at the front of `data`; returns how many bytes were used.
    fn run(&mut self, data: &[u8], on_row: &mut impl FnMut(&[Option<&[u8]>]) -> Result<()>) -> Result<usize> {
        let mut fields = recycle(std::mem::take(&mut self.fields));
        let result = self.run_with(data, &mut fields, on_row);
        self.fields = recycle(fields);
        result
    }

    fn run_with<'a>(
        &mut self,
        data: &'a [u8],
        fields: &mut Vec<Option<&'a [u8]>>,
        on_row: &mut impl FnMut(&[Option<&[u8]>]) -> Result<()>,
    ) -> Result<usize> {
        let mut pos = 0;
        loop {
            let rest = data.get(pos..).unwrap_or_default();
            let step = match self.state {
                State::Failed => return Err(self.error(self.offset, "the stream failed to decode earlier".to_owned())),
                State::Done if rest.is_empty() => return Ok(pos),
                State::Done => {
                    return Err(self.error(self.offset, format!("{} bytes after the trailer", rest.len())));
                }
                State::Header => self.header(rest)?,
                State::Tuples => {
                    fields.clear();
                    self.tuple(rest, fields)?
                }
            };
            match step {
                Step::Incomplete => return Ok(pos),
                Step::Consumed(n) => {
                    if self.state == State::Header {
                        self.state = State::Tuples;
                    } else {
                        on_row(fields)?;
                        self.rows += 1;
                    }
                    pos += n;
                    self.offset += n as u64;
                }
                Step::Trailer => {
                    self.state = State::Done;
                    pos += 2;
                    self.offset += 2;
                }
            }
        }
    }

    fn header(&self, data: &[u8]) -> Result<Step> {
        let sig_len = data.len().min(SIGNATURE.len());
        if data[..sig_len] != SIGNATURE[..sig_len] {
            return Err(self.error(
                self.offset,
                "missing the PGCOPY signature (not a binary COPY stream)".to_owned(),
            ));
        }
        let mut r = Reader::new(data, "binary COPY header");
        let (Ok(_), Ok(flags), Ok(extension)) = (r.bytes(SIGNATURE.len()), r.i32(), r.i32()) else {
            return Ok(Step::Incomplete);
        };
        if flags & FLAG_OIDS != 0 {
            return Err(self.error(self.offset + 11, "tuples with OIDs are not supported".to_owned()));
        }
        if flags & CRITICAL_FLAGS != 0 {
            return Err(self.error(self.offset + 11, format!("unknown critical flags {flags:#010x}")));
        }
        let Ok(extension) = usize::try_from(extension) else {
            return Err(self.error(
                self.offset + 15,
                format!("negative header extension length {extension}"),
            ));
        };
        Ok(match r.bytes(extension) {
            Ok(_) => Step::Consumed(r.position()),
            Err(_) => Step::Incomplete,
        })
    }

    fn tuple<'a>(&self, data: &'a [u8], fields: &mut Vec<Option<&'a [u8]>>) -> Result<Step> {
        let mut r = Reader::new(data, "binary COPY tuple");
        let Ok(count) = r.i16() else {
            return Ok(Step::Incomplete);
        };
        if count == -1 {
            return Ok(Step::Trailer);
        }
        if usize::try_from(count).ok() != Some(self.columns) {
            return Err(self.error(
                self.offset,
                format!("tuple {} has {count} fields, expected {}", self.rows + 1, self.columns),
            ));
        }
        for _ in 0..self.columns {
            let at = r.position();
            let Ok(len) = r.i32() else {
                return Ok(Step::Incomplete);
            };
            if len == -1 {
                fields.push(None);
                continue;
            }
            let Ok(len) = usize::try_from(len) else {
                return Err(self.error(
                    self.offset + at as u64,
                    format!("field {} of tuple {} has length {len}", fields.len() + 1, self.rows + 1),
                ));
            };
            match r.bytes(len) {
                Ok(bytes) => fields.push(Some(bytes)),
                Err(_) => return Ok(Step::Incomplete),
            }
        }
        Ok(Step::Consumed(r.position()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pg::schema::ColumnSpec;
    use crate::pg::values::{decode_binary, SqlValue, ValueKind};
    use proptest::prelude::*;
    use serde::Deserialize;

    const GOLDEN: &[u8] = include_bytes!("../../tests/golden/values/copy.bin");

    #[derive(Deserialize)]
    struct Fixture {
        columns: Vec<ColumnSpec>,
        rows: Vec<Vec<Option<String>>>,
    }

    fn fixture() -> Fixture {
        serde_json::from_str(include_str!("../../tests/golden/values/copy.json")).expect("copy.json parses")
    }

    type Rows = Vec<Vec<Option<Vec<u8>>>>;

    fn unhex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
            .collect()
    }

    fn expected_rows() -> Rows {
        fixture()
            .rows
            .iter()
            .map(|row| row.iter().map(|f| f.as_deref().map(unhex)).collect())
            .collect()
    }

    /// Feeds `chunks` to a fresh decoder; the rows, and the result of `finish`.
    fn decode<'a>(columns: usize, chunks: impl IntoIterator<Item = &'a [u8]>) -> Result<(Rows, Result<()>)> {
        let mut decoder = CopyDecoder::new(columns);
        let mut rows = Rows::new();
        for chunk in chunks {
            decoder.feed(chunk, |fields| {
                rows.push(fields.iter().map(|f| f.map(<[u8]>::to_vec)).collect());
                Ok(())
            })?;
        }
        assert_eq!(decoder.rows(), rows.len() as u64);
        Ok((rows, decoder.finish()))
    }

    fn stream(flags: i32, extension: &[u8], rows: &[Vec<Option<&[u8]>>], trailer: bool) -> Vec<u8> {
        let mut out = SIGNATURE.to_vec();
        out.extend_from_slice(&flags.to_be_bytes());
        out.extend_from_slice(&i32::try_from(extension.len()).expect("small").to_be_bytes());
        out.extend_from_slice(extension);
        for row in rows {
            out.extend_from_slice(&i16::try_from(row.len()).expect("small").to_be_bytes());
            for field in row {
                match field {
                    None => out.extend_from_slice(&(-1i32).to_be_bytes()),
                    Some(b) => {
                        out.extend_from_slice(&i32::try_from(b.len()).expect("small").to_be_bytes());
                        out.extend_from_slice(b);
                    }
                }
            }
        }
        if trailer {
            out.extend_from_slice(&(-1i16).to_be_bytes());
        }
        out
    }

    fn err_text(result: Result<impl std::fmt::Debug>) -> String {
        match result {
            Err(e @ Error::Malformed { .. }) => e.to_string(),
            other => panic!("expected a Malformed error, got {other:?}"),
        }
    }

    #[test]
    fn golden_stream_in_one_chunk() {
        let (rows, finish) = decode(7, [GOLDEN]).expect("decodes");
        finish.expect("finished");
        assert_eq!(rows, expected_rows());
        assert_eq!(rows.len(), 5);
    }

    #[test]
    fn golden_stream_in_chunks_of_every_size() {
        let want = expected_rows();
        for size in 1..=GOLDEN.len() {
            let (rows, finish) = decode(7, GOLDEN.chunks(size)).expect("decodes");
            finish.unwrap_or_else(|e| panic!("chunk size {size}: {e}"));
            assert_eq!(rows, want, "chunk size {size}");
        }
    }

    #[test]
    fn golden_fields_decode_with_their_column_kinds() {
        let fixture = fixture();
        let kinds: Vec<ValueKind> = fixture.columns.iter().map(ValueKind::for_column).collect();
        assert_eq!(kinds[0], ValueKind::Int4);
        assert_eq!(kinds[6], ValueKind::Array(Box::new(ValueKind::Int4)));
        let mut decoded = Vec::new();
        let mut decoder = CopyDecoder::new(kinds.len());
        decoder
            .feed(GOLDEN, |fields| {
                let row = fields
                    .iter()
                    .zip(&kinds)
                    .map(|(f, k)| f.map_or(Ok(SqlValue::Null), |b| decode_binary(k, b)))
                    .collect::<Result<Vec<_>>>()?;
                decoded.push(row);
                Ok(())
            })
            .expect("decodes");
        decoder.finish().expect("finished");
        assert_eq!(
            decoded[0],
            vec![
                SqlValue::Integer(1),
                SqlValue::Text("one".into()),
                SqlValue::Real(1.5),
                SqlValue::Real(1_704_164_645_123.456),
                SqlValue::Integer(1),
                SqlValue::Text("{\"a\": 1}".into()),
                SqlValue::Text("[1,2]".into()),
            ]
        );
        assert!(decoded[1][1..].iter().all(|v| *v == SqlValue::Null));
        assert_eq!(decoded[2][3], SqlValue::Real(f64::INFINITY));
        assert_eq!(decoded[3][6], SqlValue::Text("[[1,null],[3,4]]".into()));
        assert_eq!(decoded[4][2], SqlValue::Null); // NaN
    }

    #[test]
    fn every_truncation_is_caught_by_finish() {
        for len in 0..GOLDEN.len() {
            let (_, finish) = decode(7, [&GOLDEN[..len]]).expect("a prefix is not an error yet");
            let err = err_text(finish);
            assert!(err.starts_with("malformed binary COPY stream: at byte "), "{err}");
            let want = if len < HEADER_LEN {
                "inside the header"
            } else if len == GOLDEN.len() - 2 {
                "after 5 tuples without the trailer"
            } else {
                "the stream ended"
            };
            assert!(err.contains(want), "prefix {len}: {err}");
        }
        let (_, finish) = decode(7, [&GOLDEN[..25]]).expect("prefix");
        assert!(err_text(finish).contains("inside tuple 1 ("), "mid-tuple");
    }

    #[test]
    fn wrong_field_counts_are_errors() {
        let err = err_text(decode(6, [GOLDEN]));
        assert_eq!(
            err,
            "malformed binary COPY stream: at byte 19: tuple 1 has 7 fields, expected 6"
        );
        let one: &[u8] = b"x";
        let s = stream(0, &[], &[vec![Some(one)], vec![Some(one), None]], true);
        assert!(err_text(decode(1, [&s[..]])).contains("tuple 2 has 2 fields, expected 1"));
    }

    #[test]
    fn header_problems() {
        let e = err_text(decode(1, [&b"PGCOPX\n\xff\r\n\0"[..]]));
        assert!(e.contains("at byte 0: missing the PGCOPY signature"), "{e}");
        // Detected as soon as the first wrong byte arrives.
        let e = err_text(decode(1, [&b"COPY"[..]]));
        assert!(e.contains("missing the PGCOPY signature"), "{e}");
        let e = err_text(decode(1, [&stream(1 << 16, &[], &[], true)[..]]));
        assert!(e.contains("at byte 11: tuples with OIDs are not supported"), "{e}");
        let e = err_text(decode(1, [&stream(1 << 20, &[], &[], true)[..]]));
        assert!(e.contains("unknown critical flags 0x00100000"), "{e}");
        let mut negative = SIGNATURE.to_vec();
        negative.extend_from_slice(&0i32.to_be_bytes());
        negative.extend_from_slice(&(-1i32).to_be_bytes());
        let e = err_text(decode(1, [&negative[..]]));
        assert!(e.contains("at byte 15: negative header extension length -1"), "{e}");
        // Non-critical flag bits and a header extension are skipped, byte by byte too.
        let one: &[u8] = b"x";
        let s = stream(0x0000_0001, b"ext", &[vec![Some(one)]], true);
        for size in 1..=s.len() {
            let (rows, finish) = decode(1, s.chunks(size)).expect("decodes");
            finish.expect("finished");
            assert_eq!(rows, vec![vec![Some(b"x".to_vec())]]);
        }
    }

    #[test]
    fn field_and_trailer_problems() {
        let mut s = stream(0, &[], &[], false);
        s.extend_from_slice(&1i16.to_be_bytes());
        s.extend_from_slice(&(-2i32).to_be_bytes());
        let e = err_text(decode(1, [&s[..]]));
        assert!(e.contains("at byte 21: field 1 of tuple 1 has length -2"), "{e}");

        let mut s = stream(0, &[], &[vec![None]], true);
        s.push(0);
        assert!(err_text(decode(1, [&s[..]])).contains("1 bytes after the trailer"));
        // ... also when the extra bytes arrive later; an empty chunk after the trailer is fine.
        let s = stream(0, &[], &[vec![None]], true);
        let (rows, finish) = decode(1, [&s[..], &[][..]]).expect("decodes");
        finish.expect("finished");
        assert_eq!(rows, vec![vec![None]]);
        assert!(err_text(decode(1, [&s[..], &[0u8][..]])).contains("after the trailer"));

        let empty = stream(0, &[], &[], true);
        let (rows, finish) = decode(3, [&empty[..]]).expect("decodes");
        finish.expect("an empty table");
        assert!(rows.is_empty());
        let zero_columns = stream(0, &[], &[vec![], vec![]], true);
        let (rows, finish) = decode(0, [&zero_columns[..]]).expect("decodes");
        finish.expect("finished");
        assert_eq!(rows.len(), 2);
    }

    #[test]
    fn callback_errors_stop_and_poison_the_decoder() {
        let mut decoder = CopyDecoder::new(7);
        let mut seen = 0;
        let err = decoder
            .feed(GOLDEN, |_| {
                seen += 1;
                if seen == 2 {
                    Err(Error::Malformed {
                        what: "test",
                        detail: "stop".into(),
                    })
                } else {
                    Ok(())
                }
            })
            .expect_err("callback error");
        assert_eq!(err.to_string(), "malformed test: stop");
        assert_eq!((seen, decoder.rows()), (2, 1));
        assert!(decoder.feed(&[], |_| Ok(())).is_err());
        assert!(err_text(decoder.finish()).contains("failed to decode earlier"));
        assert!(!decoder.is_done());
    }

    #[test]
    fn the_field_vector_keeps_its_allocation() {
        let mut v: Vec<Option<&[u8]>> = Vec::with_capacity(32);
        v.push(Some(b"x"));
        let ptr = v.as_ptr() as usize;
        let w: Vec<Option<&'static [u8]>> = recycle(v);
        assert!(w.is_empty() && w.capacity() >= 32);
        assert_eq!(w.as_ptr() as usize, ptr);
    }

    proptest! {
        #[test]
        fn arbitrary_chunk_boundaries(mut cuts in proptest::collection::vec(0..GOLDEN.len(), 0..40)) {
            cuts.sort_unstable();
            let mut chunks = Vec::new();
            let mut start = 0;
            for cut in cuts.into_iter().chain([GOLDEN.len()]) {
                chunks.push(&GOLDEN[start..cut]);
                start = cut;
            }
            let (rows, finish) = decode(7, chunks).expect("decodes");
            prop_assert!(finish.is_ok());
            prop_assert_eq!(rows, expected_rows());
        }

        #[test]
        fn arbitrary_bytes_never_panic(
            body in proptest::collection::vec(any::<u8>(), 0..200),
            with_header in any::<bool>(),
            columns in 0usize..4,
            chunk in 1usize..16,
        ) {
            let mut s = if with_header { stream(0, &[], &[], false) } else { Vec::new() };
            s.extend_from_slice(&body);
            if let Ok((_, finish)) = decode(columns, s.chunks(chunk)) {
                let _ = finish;
            }
        }

        #[test]
        fn arbitrary_rows_round_trip(
            rows in proptest::collection::vec(
                proptest::collection::vec(proptest::option::of(proptest::collection::vec(any::<u8>(), 0..20)), 3),
                0..10),
            chunk in 1usize..64,
        ) {
            let borrowed: Vec<Vec<Option<&[u8]>>> =
                rows.iter().map(|r| r.iter().map(Option::as_deref).collect()).collect();
            let s = stream(0, &[], &borrowed, true);
            let (decoded, finish) = decode(3, s.chunks(chunk)).expect("decodes");
            prop_assert!(finish.is_ok());
            prop_assert_eq!(decoded, rows);
        }
    }
}
