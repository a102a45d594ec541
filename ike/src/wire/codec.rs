//! Bounds-checked reading and length-patching writing for IKEv2's TLV
//! structures (after rustls' `msgs::codec`).
//!
//! Parsing is fed attacker bytes: every read goes through [`Reader`], which
//! never indexes out of bounds and fails with a [`MalformedError`] instead.
//! Writing appends to a plain `Vec<u8>` through [`Writer`]; a 16-bit length
//! that covers a structure's own header is reserved with [`begin_len16`] and
//! filled in by [`end_len16`] once the body is written.

/// The peer sent bytes that do not parse. `Copy` and allocation-free, so a
/// flood of garbage costs nothing but the parse attempt.
///
/// `what` names the field or limit that failed ("payload length", "too many
/// proposals", …). It is for counters and debug logs; the peer is told
/// INVALID_SYNTAX (or nothing, for an unauthenticated message) by the caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, thiserror::Error)]
#[error("malformed IKEv2 message: {what}")]
pub struct MalformedError {
    /// The field or limit that failed.
    pub what: &'static str,
}

impl MalformedError {
    /// The generic error of a [`Reader`] that ran out of bytes.
    pub const TRUNCATED: MalformedError = MalformedError::new("truncated");

    /// An error naming `what` failed.
    pub const fn new(what: &'static str) -> Self {
        MalformedError { what }
    }
}

/// Renames the error of a failed read after the field being read, so that
/// `r.u16().what("transform length")?` reports which field was cut short.
pub trait What<T> {
    /// Replaces the error's `what` with `what`.
    fn what(self, what: &'static str) -> Result<T, MalformedError>;
}

impl<T> What<T> for Result<T, MalformedError> {
    fn what(self, what: &'static str) -> Result<T, MalformedError> {
        self.map_err(|_| MalformedError::new(what))
    }
}

/// A cursor over borrowed bytes. Every read is checked; a failed read leaves
/// the cursor where it was.
#[derive(Clone, Debug)]
pub struct Reader<'a> {
    buf: &'a [u8],
    offset: usize,
}

impl<'a> Reader<'a> {
    /// A reader positioned at the start of `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf, offset: 0 }
    }

    /// Consumes the next `n` bytes.
    pub fn take(&mut self, n: usize) -> Result<&'a [u8], MalformedError> {
        let rest = self.buf.get(self.offset..).unwrap_or_default();
        let taken = rest.get(..n).ok_or(MalformedError::TRUNCATED)?;
        self.offset += n;
        Ok(taken)
    }

    /// Consumes the next `N` bytes as an array.
    pub fn array<const N: usize>(&mut self) -> Result<[u8; N], MalformedError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    /// Consumes one byte.
    pub fn u8(&mut self) -> Result<u8, MalformedError> {
        Ok(u8::from_be_bytes(self.array()?))
    }

    /// Consumes a big-endian `u16`.
    pub fn u16(&mut self) -> Result<u16, MalformedError> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    /// Consumes a big-endian `u32`.
    pub fn u32(&mut self) -> Result<u32, MalformedError> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    /// Consumes a big-endian `u64`.
    pub fn u64(&mut self) -> Result<u64, MalformedError> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    /// Consumes the next `n` bytes as a reader of their own (a length-framed
    /// substructure); its offsets start at 0.
    pub fn sub(&mut self, n: usize) -> Result<Reader<'a>, MalformedError> {
        self.take(n).map(Reader::new)
    }

    /// Consumes everything left.
    pub fn rest(&mut self) -> &'a [u8] {
        let rest = self.buf.get(self.offset..).unwrap_or_default();
        self.offset = self.buf.len();
        rest
    }

    /// How many bytes are left.
    pub fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.offset)
    }

    /// Whether every byte has been consumed.
    pub fn is_empty(&self) -> bool {
        self.remaining() == 0
    }

    /// How many bytes have been consumed since [`Reader::new`].
    pub fn offset(&self) -> usize {
        self.offset
    }

    /// Fails with `what` unless every byte has been consumed: a structure
    /// whose length promises more than its fields use is malformed.
    pub fn expect_empty(&self, what: &'static str) -> Result<(), MalformedError> {
        if self.is_empty() {
            Ok(())
        } else {
            Err(MalformedError::new(what))
        }
    }
}

/// Big-endian appends to a byte buffer.
pub trait Writer {
    /// Appends one byte.
    fn put_u8(&mut self, v: u8);
    /// Appends a big-endian `u16`.
    fn put_u16(&mut self, v: u16);
    /// Appends a big-endian `u32`.
    fn put_u32(&mut self, v: u32);
    /// Appends a big-endian `u64`.
    fn put_u64(&mut self, v: u64);
    /// Appends `v` as is.
    fn put_bytes(&mut self, v: &[u8]);
}

impl Writer for Vec<u8> {
    fn put_u8(&mut self, v: u8) {
        self.push(v);
    }
    fn put_u16(&mut self, v: u16) {
        self.extend_from_slice(&v.to_be_bytes());
    }
    fn put_u32(&mut self, v: u32) {
        self.extend_from_slice(&v.to_be_bytes());
    }
    fn put_u64(&mut self, v: u64) {
        self.extend_from_slice(&v.to_be_bytes());
    }
    fn put_bytes(&mut self, v: &[u8]) {
        self.extend_from_slice(v);
    }
}

/// A reserved 16-bit length field: where it sits, and where the structure it
/// measures begins.
#[derive(Clone, Copy, Debug)]
#[must_use = "the reserved length stays 0 until end_len16 is called"]
pub struct LenMark {
    start: usize,
    field: usize,
}

/// Reserves a 16-bit length field at the end of `out`, for a structure that
/// began at `out[start]` (its header, which usually holds the field itself).
///
/// ```
/// use anyhub_ike::wire::codec::{begin_len16, end_len16, Writer};
/// let mut out = Vec::new();
/// let start = out.len();
/// out.put_u8(0); // next payload
/// out.put_u8(0); // critical + reserved
/// let len = begin_len16(&mut out, start);
/// out.put_bytes(b"body");
/// end_len16(&mut out, len);
/// assert_eq!(out, [0, 0, 0, 8, b'b', b'o', b'd', b'y']);
/// ```
pub fn begin_len16(out: &mut Vec<u8>, start: usize) -> LenMark {
    let field = out.len();
    out.put_u16(0);
    LenMark { start, field }
}

/// Writes into the field reserved by `mark` the length of everything from the
/// structure's start to the end of `out`.
///
/// A structure over 65535 bytes cannot be represented: the length saturates
/// at 65535 and the peer rejects the message. Builders keep messages within
/// [`limits::MAX_MESSAGE_LEN`](super::limits::MAX_MESSAGE_LEN), which makes
/// that unreachable.
pub fn end_len16(out: &mut [u8], mark: LenMark) {
    let len = out.len().saturating_sub(mark.start);
    let len = u16::try_from(len).unwrap_or(u16::MAX);
    if let Some(field) = out.get_mut(mark.field..mark.field.saturating_add(2)) {
        field.copy_from_slice(&len.to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_big_endian() {
        let bytes = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15];
        let mut r = Reader::new(&bytes);
        assert_eq!(r.u8(), Ok(1));
        assert_eq!(r.u16(), Ok(0x0203));
        assert_eq!(r.u32(), Ok(0x0405_0607));
        assert_eq!(r.u64(), Ok(0x0809_0a0b_0c0d_0e0f));
        assert!(r.is_empty());
        assert_eq!(r.offset(), 15);
    }

    #[test]
    fn failed_read_does_not_move() {
        let mut r = Reader::new(&[1, 2, 3]);
        assert_eq!(r.u32(), Err(MalformedError::TRUNCATED));
        assert_eq!(r.offset(), 0);
        assert_eq!(r.take(4), Err(MalformedError::TRUNCATED));
        assert_eq!(r.take(usize::MAX), Err(MalformedError::TRUNCATED));
        assert_eq!(r.remaining(), 3);
        assert_eq!(r.u16().what("x"), Ok(0x0102));
        assert_eq!(r.u16().what("x"), Err(MalformedError::new("x")));
    }

    #[test]
    fn sub_and_rest() {
        let mut r = Reader::new(&[1, 2, 3, 4, 5]);
        let mut s = r.sub(3).unwrap();
        assert_eq!(s.offset(), 0);
        assert_eq!(s.u8(), Ok(1));
        assert_eq!(s.rest(), &[2, 3]);
        assert!(s.is_empty());
        assert_eq!(s.rest(), &[] as &[u8]);
        assert!(r.sub(3).is_err());
        assert_eq!(r.offset(), 3);
        assert!(r.expect_empty("trailing").is_err());
        assert_eq!(r.rest(), &[4, 5]);
        assert!(r.expect_empty("trailing").is_ok());
    }

    #[test]
    fn writes_and_patches_length() {
        let mut out = vec![0xff];
        let start = out.len();
        out.put_u8(1);
        let mark = begin_len16(&mut out, start);
        out.put_u16(0x0203);
        out.put_u32(0x0405_0607);
        out.put_u64(1);
        out.put_bytes(&[9]);
        end_len16(&mut out, mark);
        assert_eq!(
            out,
            [0xff, 1, 0, 18, 2, 3, 4, 5, 6, 7, 0, 0, 0, 0, 0, 0, 0, 1, 9]
        );
    }

    #[test]
    fn oversize_length_saturates() {
        let mut out = Vec::new();
        let mark = begin_len16(&mut out, 0);
        out.resize(70_000, 0);
        end_len16(&mut out, mark);
        assert_eq!(out[..2], [0xff, 0xff]);
        // A mark beyond a truncated buffer is ignored rather than panicking.
        let mut short = vec![0u8; 1];
        end_len16(&mut short, mark);
        let mut empty: Vec<u8> = Vec::new();
        end_len16(
            &mut empty,
            LenMark {
                start: 10,
                field: 5,
            },
        );
    }
}
