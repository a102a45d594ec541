//! ESP in tunnel mode (RFC 4303), sans-IO: bytes in, bytes out, in place in
//! the caller's buffer, no allocation per packet.
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+ ---
//! |               Security Parameters Index (SPI)                 |  ^ AAD (AEAD),
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+  | ICV-covered
//! |                      Sequence Number                          |  v
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+ ---
//! |            IV (8 bytes AEAD, 16 bytes AES-CBC)                |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+ ---
//! |          Payload Data: the inner IPv4/IPv6 packet             |  ^
//! ~                                                               ~  | encrypted
//! +               +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+  |
//! |               |     Padding (0-255 bytes: 1, 2, 3, …)         |  |
//! +-+-+-+-+-+-+-+-+               +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+  |
//! |                               |  Pad Length   | Next Header   |  v
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+ ---
//! |         Integrity Check Value (16 AEAD; 12/16/24/32 HMAC)     |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! ```
//! (RFC 4303 §2, §2.3 for where the IV sits.)
//!
//! - [`OutboundSa::encrypt`] wraps an inner packet that sits in a buffer
//!   with [`OutboundSa::headroom`] bytes free before it and
//!   [`OutboundSa::tailroom`] after it, and returns where the ESP packet is.
//! - [`InboundSa::decrypt`] opens an ESP packet in place and returns where
//!   the inner packet is. Anti-replay ([`replay`]) is checked before the ICV
//!   and updated after it.
//! - [`udp`] is the ESP-in-UDP demultiplexer of RFC 3948; raw ESP (IP
//!   protocol 50) carries the very same bytes.
//! - [`iv`] is how nodes that share a key never share an IV.
//!
//! **Panic contract** (smoltcp's): nothing here panics on any input bytes;
//! malformed or hostile packets come back as an [`EspError`], which is
//! `Copy` and maps to one [`DropReason`].

mod sa;
mod transform;

pub mod iv;
pub mod replay;
pub mod udp;

#[cfg(test)]
mod strongswan_fixtures;

pub use sa::{Decrypted, InboundSa, OutboundSa, SaInfo, SeqLimits};
pub use transform::{Algorithm, SaError};

use crate::counters::DropReason;

/// Length of the SPI and Sequence Number fields (RFC 4303 §2.1, §2.2).
pub const HEADER_LEN: usize = 8;
/// The two trailer bytes: Pad Length and Next Header (RFC 4303 §2.5, §2.6).
pub const TRAILER_LEN: usize = 2;
/// The smallest ESP packet any supported transform accepts: header, an
/// 8-byte AEAD IV, the two trailer bytes and a 16-byte ICV.
pub const MIN_LEN: usize = HEADER_LEN + 8 + TRAILER_LEN + 16;
/// The largest padding we add: one AES block less one (RFC 4303 §2.4).
pub const MAX_PAD: usize = 15;

/// Next Header: IPv4 in tunnel mode (IANA protocol number 4).
pub const NEXT_HEADER_IPV4: u8 = 4;
/// Next Header: IPv6 in tunnel mode (41).
pub const NEXT_HEADER_IPV6: u8 = 41;
/// Next Header: "no next header", a dummy packet (RFC 4303 §2.6).
pub const NEXT_HEADER_DUMMY: u8 = 59;

/// The inner packet's IP version, as Next Header tells it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IpVersion {
    V4,
    V6,
}

impl IpVersion {
    /// The Next Header value of tunnel mode.
    pub fn next_header(self) -> u8 {
        match self {
            IpVersion::V4 => NEXT_HEADER_IPV4,
            IpVersion::V6 => NEXT_HEADER_IPV6,
        }
    }

    /// From the first nibble of an IP packet.
    pub fn of_packet(packet: &[u8]) -> Option<IpVersion> {
        match packet.first()? >> 4 {
            4 => Some(IpVersion::V4),
            6 => Some(IpVersion::V6),
            _ => None,
        }
    }
}

/// Why an ESP packet was not produced or not accepted. `Copy`, no
/// allocation: a flood of garbage costs no heap traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EspError {
    #[error("malformed ESP packet")]
    Malformed,
    #[error("replayed sequence number")]
    Replay,
    #[error("sequence number left of the replay window")]
    TooOld,
    #[error("ICV did not verify")]
    AuthFailed,
    #[error("ciphertext is not a whole number of blocks")]
    BadLength,
    #[error("bad padding")]
    BadPadding,
    #[error("bad next header")]
    BadNextHeader,
    #[error("dummy packet")]
    Dummy,
    #[error("sequence number space exhausted; rekey")]
    SeqExhausted,
    #[error("inner packet is not IPv4 or IPv6")]
    BadInner,
    #[error("buffer lacks headroom or tailroom")]
    NoRoom,
    #[error("crypto backend refused")]
    Backend,
}

impl From<EspError> for DropReason {
    fn from(e: EspError) -> DropReason {
        match e {
            EspError::Malformed => DropReason::EspMalformed,
            EspError::Replay => DropReason::EspReplay,
            EspError::TooOld => DropReason::EspTooOld,
            EspError::AuthFailed => DropReason::EspAuthFailed,
            EspError::BadLength => DropReason::EspBadLength,
            EspError::BadPadding => DropReason::EspBadPadding,
            EspError::BadNextHeader => DropReason::EspBadNextHeader,
            EspError::Dummy => DropReason::EspDummy,
            EspError::SeqExhausted => DropReason::EspSeqExhausted,
            EspError::BadInner => DropReason::EspBadInner,
            EspError::NoRoom => DropReason::NoBufferRoom,
            EspError::Backend => DropReason::CryptoBackend,
        }
    }
}

/// The SPI and low sequence number of an ESP packet, for the SA lookup
/// before anything is decrypted (decode in phases, STYLE.md).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EspHeader {
    pub spi: u32,
    /// The Sequence Number field: the low 32 bits with ESN.
    pub seq_lo: u32,
}

impl EspHeader {
    /// Reads the header of `packet`. Refuses packets shorter than
    /// [`MIN_LEN`] and SPIs 0..=255 (RFC 4303 §2.1: reserved; 0 on the
    /// NAT-T port is the non-ESP marker, RFC 3948 §2.2).
    pub fn parse(packet: &[u8]) -> Result<EspHeader, EspError> {
        if packet.len() < MIN_LEN {
            return Err(EspError::Malformed);
        }
        let spi = u32::from_be_bytes([packet[0], packet[1], packet[2], packet[3]]);
        if spi <= 255 {
            return Err(EspError::Malformed);
        }
        let seq_lo = u32::from_be_bytes([packet[4], packet[5], packet[6], packet[7]]);
        Ok(EspHeader { spi, seq_lo })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_parse() {
        let mut p = [0u8; MIN_LEN];
        p[..8].copy_from_slice(&[0x00, 0x10, 0x00, 0x01, 0, 0, 0, 7]);
        assert_eq!(
            EspHeader::parse(&p),
            Ok(EspHeader {
                spi: 0x0010_0001,
                seq_lo: 7
            })
        );
        assert_eq!(
            EspHeader::parse(&p[..MIN_LEN - 1]),
            Err(EspError::Malformed)
        );
        p[..4].copy_from_slice(&255u32.to_be_bytes());
        assert_eq!(EspHeader::parse(&p), Err(EspError::Malformed));
        p[..4].copy_from_slice(&256u32.to_be_bytes());
        assert!(EspHeader::parse(&p).is_ok());
    }

    #[test]
    fn every_error_has_a_drop_reason() {
        use EspError::*;
        let all = [
            Malformed,
            Replay,
            TooOld,
            AuthFailed,
            BadLength,
            BadPadding,
            BadNextHeader,
            Dummy,
            SeqExhausted,
            BadInner,
            NoRoom,
            Backend,
        ];
        let reasons: std::collections::HashSet<DropReason> =
            all.iter().map(|&e| e.into()).collect();
        assert_eq!(reasons.len(), all.len());
    }

    #[test]
    fn ip_version() {
        assert_eq!(IpVersion::of_packet(&[0x45]), Some(IpVersion::V4));
        assert_eq!(IpVersion::of_packet(&[0x60, 0]), Some(IpVersion::V6));
        assert_eq!(IpVersion::of_packet(&[0x50]), None);
        assert_eq!(IpVersion::of_packet(&[]), None);
        assert_eq!(IpVersion::V6.next_header(), 41);
    }
}
