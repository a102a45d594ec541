//! The IKE header, RFC 7296 §3.1.

use super::codec::{MalformedError, Reader, What, Writer};
use super::registry::{ExchangeType, PayloadType};

/// The fixed IKE header, RFC 7296 §3.1.
///
/// ```text
///                      1                   2                   3
///  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// |                       IKE SA Initiator's SPI                  |
/// |                                                               |
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// |                       IKE SA Responder's SPI                  |
/// |                                                               |
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// |  Next Payload | MjVer | MnVer | Exchange Type |     Flags     |
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// |                          Message ID                           |
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// |                            Length                             |
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// ```
///
/// This is the first decode phase: enough to find the IKE SA (by SPI) and to
/// answer INVALID_MAJOR_VERSION before anything else is parsed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// IKE SA Initiator's SPI.
    pub spi_i: u64,
    /// IKE SA Responder's SPI; zero in the first IKE_SA_INIT request.
    pub spi_r: u64,
    /// Type of the first payload.
    pub next_payload: PayloadType,
    /// Major version: 2 for IKEv2. Not checked by [`Header::parse`]: the
    /// caller answers any other value with INVALID_MAJOR_VERSION (§2.5).
    pub major_version: u8,
    /// Minor version: 0; ignored on receipt (§3.1).
    pub minor_version: u8,
    /// Exchange type.
    pub exchange: ExchangeType,
    /// Initiator/Version/Response flags.
    pub flags: Flags,
    /// Message ID.
    pub message_id: u32,
    /// Length of the whole message, header included.
    pub length: u32,
}

impl Header {
    /// Length of the header on the wire.
    pub const LEN: usize = 28;

    /// Parses the first [`Header::LEN`] bytes of `buf`; bytes after them are
    /// not looked at, and `length` is not compared with `buf.len()` (that is
    /// [`Message::parse`](super::Message::parse)'s job).
    pub fn parse(buf: &[u8]) -> Result<Header, MalformedError> {
        let mut r = Reader::new(buf);
        let mut r = r.sub(Header::LEN).what("IKE header")?;
        let spi_i = r.u64()?;
        let spi_r = r.u64()?;
        let next_payload = PayloadType(r.u8()?);
        let version = r.u8()?;
        let exchange = ExchangeType(r.u8()?);
        let flags = Flags(r.u8()?);
        let message_id = r.u32()?;
        let length = r.u32()?;
        Ok(Header {
            spi_i,
            spi_r,
            next_payload,
            major_version: version >> 4,
            minor_version: version & 0x0f,
            exchange,
            flags,
            message_id,
            length,
        })
    }

    /// Appends the header, exactly as the fields say (versions are truncated
    /// to their 4 bits).
    pub fn emit(&self, out: &mut Vec<u8>) {
        out.put_u64(self.spi_i);
        out.put_u64(self.spi_r);
        out.put_u8(self.next_payload.0);
        out.put_u8((self.major_version << 4) | (self.minor_version & 0x0f));
        out.put_u8(self.exchange.0);
        out.put_u8(self.flags.0);
        out.put_u32(self.message_id);
        out.put_u32(self.length);
    }
}

/// The header's Flags octet, RFC 7296 §3.1. Bits we do not know are kept as
/// they came (they "MUST be ignored on receipt").
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default, Hash)]
pub struct Flags(pub u8);

impl Flags {
    /// (I)nitiator: set in messages sent by the original initiator of the
    /// IKE SA.
    pub const INITIATOR: Flags = Flags(0x08);
    /// (V)ersion: the sender can speak a higher major version. We never set it.
    pub const VERSION: Flags = Flags(0x10);
    /// (R)esponse: this message is a response to one with the same ID.
    pub const RESPONSE: Flags = Flags(0x20);

    /// Whether the Initiator bit is set.
    pub fn initiator(self) -> bool {
        self.contains(Flags::INITIATOR)
    }

    /// Whether the Response bit is set.
    pub fn response(self) -> bool {
        self.contains(Flags::RESPONSE)
    }

    /// Whether every bit of `other` is set in `self`.
    pub fn contains(self, other: Flags) -> bool {
        self.0 & other.0 == other.0
    }
}

impl core::ops::BitOr for Flags {
    type Output = Flags;
    fn bitor(self, rhs: Flags) -> Flags {
        Flags(self.0 | rhs.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // IKE_SA_INIT request header: SPIi 0x0102030405060708, SPIr 0, next SA,
    // version 2.0, exchange 34, flags I, message ID 0, length 0x000000d0.
    const BYTES: [u8; 28] = [
        0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, //
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, //
        0x21, 0x20, 0x22, 0x08, //
        0x00, 0x00, 0x00, 0x00, //
        0x00, 0x00, 0x00, 0xd0,
    ];

    fn repr() -> Header {
        Header {
            spi_i: 0x0102_0304_0506_0708,
            spi_r: 0,
            next_payload: PayloadType::SA,
            major_version: 2,
            minor_version: 0,
            exchange: ExchangeType::IKE_SA_INIT,
            flags: Flags::INITIATOR,
            message_id: 0,
            length: 0xd0,
        }
    }

    #[test]
    fn parse() {
        assert_eq!(Header::parse(&BYTES), Ok(repr()));
        // Trailing bytes are not the header's business.
        let mut longer = BYTES.to_vec();
        longer.extend_from_slice(&[1, 2, 3]);
        assert_eq!(Header::parse(&longer), Ok(repr()));
    }

    #[test]
    fn emit() {
        let mut out = Vec::new();
        repr().emit(&mut out);
        assert_eq!(out, BYTES);
        assert_eq!(out.len(), Header::LEN);
    }

    #[test]
    fn check_len() {
        for n in 0..Header::LEN {
            assert_eq!(
                Header::parse(&BYTES[..n]),
                Err(MalformedError::new("IKE header"))
            );
        }
    }

    #[test]
    fn other_major_version_parses() {
        let mut bytes = BYTES;
        bytes[17] = 0x31;
        let h = Header::parse(&bytes).unwrap();
        assert_eq!((h.major_version, h.minor_version), (3, 1));
        let mut out = Vec::new();
        h.emit(&mut out);
        assert_eq!(out, bytes);
    }

    #[test]
    fn flags() {
        let f = Flags::INITIATOR | Flags::RESPONSE;
        assert!(f.initiator() && f.response());
        assert!(!Flags::default().initiator());
        assert!(!Flags(0x08).response());
        assert!(Flags(0xff).contains(Flags::VERSION));
    }
}
