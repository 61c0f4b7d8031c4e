//! A bounds-checked, big-endian cursor over a byte slice.
//!
//! Every read returns a [`Result`]; nothing here indexes out of bounds or panics. The only error is
//! `Error::MalformedMessage`, carrying the absolute byte offset (from the start of the slice the
//! reader was created over) at which the failed read began and the name of the message being
//! decoded (`context`), so a bad frame can be located with a hex dump. A failed read consumes
//! nothing. Slices returned by the reader borrow from the input (`'a`), never copy.

use crate::error::{DecodeProblem, Error, Result};

/// Cursor over `buf`; `pos` only moves forward.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    context: &'static str,
}

impl<'a> Reader<'a> {
    /// A reader at offset 0 of `buf`; errors name `context` until [`Reader::set_context`] changes it.
    #[must_use]
    pub fn new(buf: &'a [u8], context: &'static str) -> Self {
        Reader { buf, pos: 0, context }
    }

    /// Names the structure being decoded, for error messages.
    pub fn set_context(&mut self, context: &'static str) {
        self.context = context;
    }

    /// The current context name.
    #[must_use]
    pub fn context(&self) -> &'static str {
        self.context
    }

    /// Offset of the next byte to read.
    #[must_use]
    pub fn position(&self) -> usize {
        self.pos
    }

    /// Bytes not read yet.
    #[must_use]
    pub fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }

    /// An error of the current context at byte `offset`.
    #[must_use]
    pub fn error_at(&self, offset: usize, problem: DecodeProblem) -> Error {
        Error::MalformedMessage {
            what: self.context,
            offset,
            problem,
        }
    }

    /// Takes the next `n` bytes without copying.
    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8]> {
        let start = self.pos;
        let end = start.checked_add(n).filter(|&end| end <= self.buf.len());
        match end.and_then(|end| self.buf.get(start..end).map(|s| (s, end))) {
            Some((slice, end)) => {
                self.pos = end;
                Ok(slice)
            }
            None => Err(self.error_at(
                start,
                DecodeProblem::Truncated {
                    needed: n,
                    available: self.remaining(),
                },
            )),
        }
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let slice = self.bytes(N)?;
        let mut out = [0u8; N];
        out.copy_from_slice(slice);
        Ok(out)
    }

    /// The bytes read since offset `start` (empty if `start` is ahead of the position).
    #[must_use]
    pub fn read_since(&self, start: usize) -> &'a [u8] {
        self.buf.get(start..self.pos).unwrap_or_default()
    }

    /// Int8 / Byte1.
    pub fn u8(&mut self) -> Result<u8> {
        Ok(self.array::<1>()?[0])
    }

    /// Int16, signed.
    pub fn i16(&mut self) -> Result<i16> {
        Ok(i16::from_be_bytes(self.array()?))
    }

    /// Int32, signed.
    pub fn i32(&mut self) -> Result<i32> {
        Ok(i32::from_be_bytes(self.array()?))
    }

    /// Int32 read as unsigned (OIDs, xids).
    pub fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    /// Int64, signed (timestamps).
    pub fn i64(&mut self) -> Result<i64> {
        Ok(i64::from_be_bytes(self.array()?))
    }

    /// Int64 read as unsigned (LSNs).
    pub fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    /// An Int16 count that must not be negative.
    pub fn count16(&mut self) -> Result<usize> {
        let at = self.pos;
        let n = self.i16()?;
        usize::try_from(n).map_err(|_| self.error_at(at, DecodeProblem::NegativeLength { value: n.into() }))
    }

    /// An Int32 count or length that must not be negative.
    pub fn count32(&mut self) -> Result<usize> {
        let at = self.pos;
        let n = self.i32()?;
        usize::try_from(n).map_err(|_| self.error_at(at, DecodeProblem::NegativeLength { value: n.into() }))
    }

    /// An Int32 length followed by that many bytes.
    pub fn length_prefixed(&mut self) -> Result<&'a [u8]> {
        let n = self.count32()?;
        self.bytes(n)
    }

    /// A NUL-terminated UTF-8 string (the protocol's `String`); the NUL is consumed, not returned.
    pub fn cstr(&mut self) -> Result<&'a str> {
        let start = self.pos;
        let rest = self.buf.get(start..).unwrap_or_default();
        let Some(len) = rest.iter().position(|&b| b == 0) else {
            return Err(self.error_at(start, DecodeProblem::UnterminatedString));
        };
        let raw = self.bytes(len)?;
        self.pos += 1; // the NUL found above
        std::str::from_utf8(raw).map_err(|e| {
            self.error_at(
                start,
                DecodeProblem::InvalidUtf8 {
                    valid_up_to: e.valid_up_to(),
                },
            )
        })
    }

    /// Succeeds only when every byte has been read.
    pub fn finish(&self) -> Result<()> {
        match self.remaining() {
            0 => Ok(()),
            count => Err(self.error_at(self.pos, DecodeProblem::TrailingBytes { count })),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problem(err: Error) -> (usize, DecodeProblem) {
        match err {
            Error::MalformedMessage { offset, problem, .. } => (offset, problem),
            other => panic!("unexpected error {other:?}"),
        }
    }

    #[test]
    fn reads_big_endian_integers() {
        let buf = [0x01, 0xff, 0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
        let mut r = Reader::new(&buf, "test");
        assert_eq!(r.u8().unwrap(), 1);
        assert_eq!(r.i16().unwrap(), -2);
        assert_eq!(r.i32().unwrap(), i32::MIN);
        assert_eq!(r.position(), 7);
        assert_eq!(r.remaining(), 9);
        assert_eq!(r.bytes(1).unwrap(), &[0]);
        assert_eq!(r.u64().unwrap(), 1);
        r.finish().unwrap();
    }

    #[test]
    fn truncated_read_reports_offset_and_sizes() {
        let mut r = Reader::new(&[1, 2, 3], "test");
        r.u8().unwrap();
        let (offset, p) = problem(r.u32().unwrap_err());
        assert_eq!(offset, 1);
        assert_eq!(
            p,
            DecodeProblem::Truncated {
                needed: 4,
                available: 2
            }
        );
        // A failed read consumes nothing.
        assert_eq!(r.position(), 1);
        assert_eq!(
            problem(r.bytes(usize::MAX).unwrap_err()).1,
            DecodeProblem::Truncated {
                needed: usize::MAX,
                available: 2
            }
        );
    }

    #[test]
    fn negative_counts_are_errors() {
        let mut r = Reader::new(&[0xff, 0xff], "test");
        assert_eq!(
            problem(r.count16().unwrap_err()),
            (0, DecodeProblem::NegativeLength { value: -1 })
        );
        let mut r = Reader::new(&[0x80, 0, 0, 0], "test");
        assert_eq!(
            problem(r.length_prefixed().unwrap_err()).1,
            DecodeProblem::NegativeLength {
                value: i64::from(i32::MIN)
            }
        );
    }

    #[test]
    fn cstr_requires_nul_and_utf8() {
        let mut r = Reader::new(b"ab\0\0x", "test");
        assert_eq!(r.cstr().unwrap(), "ab");
        assert_eq!(r.cstr().unwrap(), "");
        assert_eq!(problem(r.cstr().unwrap_err()), (4, DecodeProblem::UnterminatedString));
        let mut r = Reader::new(b"a\xff\0", "test");
        assert_eq!(
            problem(r.cstr().unwrap_err()),
            (0, DecodeProblem::InvalidUtf8 { valid_up_to: 1 })
        );
    }

    #[test]
    fn finish_reports_trailing_bytes() {
        let mut r = Reader::new(&[1, 2, 3], "test");
        r.u8().unwrap();
        assert_eq!(
            problem(r.finish().unwrap_err()),
            (1, DecodeProblem::TrailingBytes { count: 2 })
        );
    }
}
