//! GRE header, RFC 2784 §2 with the Key and Sequence Number extensions of
//! RFC 2890 §2.
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |C| |K|S| Reserved0       | Ver |         Protocol Type         |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |      Checksum (optional)      |       Reserved1 (Optional)    |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                         Key (optional)                        |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                 Sequence Number (Optional)                    |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! ```
//!
//! Receive rules: a packet with bits 1, 4 or 5 set is discarded (RFC 2784
//! §2.3: those are RFC 1701's routing/strict-route/recursion bits, which we
//! do not implement); bits 6–12 and Reserved1 are ignored; Version must be
//! 0 (§2.3.1; version 1 is PPTP's enhanced GRE).

use super::checksum;
use super::{be16, be32, put16, put32, EtherType, Result, WireError};

mod field {
    use std::ops::Range;
    pub const FLAGS_VER: Range<usize> = 0..2;
    pub const PROTOCOL: Range<usize> = 2..4;
}

/// Length of the header without optional fields.
pub const BASE_LEN: usize = field::PROTOCOL.end;
/// Longest header: base, checksum + reserved1, key, sequence number.
pub const MAX_HEADER_LEN: usize = 16;

const FLAG_C: u16 = 0x8000;
const FLAG_K: u16 = 0x2000;
const FLAG_S: u16 = 0x1000;
/// Bits 1, 4 and 5 (RFC 1701 routing present, strict source route,
/// recursion control high bit).
const FLAGS_DISCARD: u16 = 0x4000 | 0x0800 | 0x0400;
const VERSION_MASK: u16 = 0x0007;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    pub const fn new_unchecked(buffer: T) -> Packet<T> {
        Packet { buffer }
    }

    pub fn new_checked(buffer: T) -> Result<Packet<T>> {
        let p = Packet::new_unchecked(buffer);
        p.check_len()?;
        Ok(p)
    }

    /// Checks the base header and the optional fields its flags announce
    /// are in the buffer.
    pub fn check_len(&self) -> Result<()> {
        let len = self.buffer.as_ref().len();
        if len < BASE_LEN || len < self.header_len() {
            return Err(WireError::Truncated);
        }
        Ok(())
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    fn flags_ver(&self) -> u16 {
        be16(self.buffer.as_ref(), field::FLAGS_VER.start)
    }

    pub fn checksum_present(&self) -> bool {
        self.flags_ver() & FLAG_C != 0
    }

    pub fn key_present(&self) -> bool {
        self.flags_ver() & FLAG_K != 0
    }

    pub fn seq_present(&self) -> bool {
        self.flags_ver() & FLAG_S != 0
    }

    /// Whether bits that make RFC 2784 §2.3 receivers discard are set.
    pub fn has_discard_bits(&self) -> bool {
        self.flags_ver() & FLAGS_DISCARD != 0
    }

    pub fn version(&self) -> u8 {
        (self.flags_ver() & VERSION_MASK) as u8
    }

    pub fn protocol_type(&self) -> EtherType {
        EtherType(be16(self.buffer.as_ref(), field::PROTOCOL.start))
    }

    pub fn header_len(&self) -> usize {
        BASE_LEN
            + 4 * usize::from(self.checksum_present())
            + 4 * usize::from(self.key_present())
            + 4 * usize::from(self.seq_present())
    }

    fn key_at(&self) -> usize {
        BASE_LEN + 4 * usize::from(self.checksum_present())
    }

    fn seq_at(&self) -> usize {
        self.key_at() + 4 * usize::from(self.key_present())
    }

    pub fn checksum(&self) -> Option<u16> {
        self.checksum_present()
            .then(|| be16(self.buffer.as_ref(), BASE_LEN))
    }

    pub fn key(&self) -> Option<u32> {
        self.key_present()
            .then(|| be32(self.buffer.as_ref(), self.key_at()))
    }

    pub fn sequence(&self) -> Option<u32> {
        self.seq_present()
            .then(|| be32(self.buffer.as_ref(), self.seq_at()))
    }

    /// Whether the checksum (over header and payload, RFC 2784 §2.5) is
    /// right; true when there is none.
    pub fn verify_checksum(&self) -> bool {
        !self.checksum_present() || checksum::fold(checksum::sum(self.buffer.as_ref())) == 0xffff
    }

    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[self.header_len()..]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// Sets C/K/S, Reserved0 and Version to zero, and the Protocol Type.
    pub fn set_flags_protocol(&mut self, c: bool, k: bool, s: bool, protocol: EtherType) {
        let mut v = 0;
        if c {
            v |= FLAG_C;
        }
        if k {
            v |= FLAG_K;
        }
        if s {
            v |= FLAG_S;
        }
        let b = self.buffer.as_mut();
        put16(b, field::FLAGS_VER.start, v);
        put16(b, field::PROTOCOL.start, protocol.0);
    }

    /// Writes the key; the K flag must be set.
    pub fn set_key(&mut self, key: u32) {
        let at = self.key_at();
        put32(self.buffer.as_mut(), at, key);
    }

    /// Writes the sequence number; the S flag must be set.
    pub fn set_sequence(&mut self, seq: u32) {
        let at = self.seq_at();
        put32(self.buffer.as_mut(), at, seq);
    }

    /// Computes the checksum over the whole buffer (header and payload);
    /// the C flag must be set.
    pub fn fill_checksum(&mut self) {
        let b = self.buffer.as_mut();
        put32(b, BASE_LEN, 0);
        let c = checksum::checksum(b);
        put16(b, BASE_LEN, c);
    }

    pub fn payload_mut(&mut self) -> &mut [u8] {
        let hl = self.header_len();
        &mut self.buffer.as_mut()[hl..]
    }
}

/// The meaning of a GRE header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Repr {
    pub protocol: EtherType,
    /// Whether a checksum is (to be) present.
    pub checksum: bool,
    pub key: Option<u32>,
    pub sequence: Option<u32>,
}

impl Repr {
    /// Validates lengths, the discard bits, Version 0 and the checksum.
    pub fn parse<T: AsRef<[u8]>>(packet: &Packet<T>) -> Result<Repr> {
        packet.check_len()?;
        if packet.has_discard_bits() {
            return Err(WireError::Malformed);
        }
        if packet.version() != 0 {
            return Err(WireError::Unsupported);
        }
        if !packet.verify_checksum() {
            return Err(WireError::Malformed);
        }
        Ok(Repr {
            protocol: packet.protocol_type(),
            checksum: packet.checksum_present(),
            key: packet.key(),
            sequence: packet.sequence(),
        })
    }

    /// The header length this representation emits.
    pub const fn header_len(&self) -> usize {
        BASE_LEN
            + if self.checksum { 4 } else { 0 }
            + if self.key.is_some() { 4 } else { 0 }
            + if self.sequence.is_some() { 4 } else { 0 }
    }

    pub const fn buffer_len(&self) -> usize {
        self.header_len()
    }

    /// Writes the header into the front of `packet`, whose payload must
    /// already be in place after it when a checksum is wanted (it covers
    /// the payload). `packet` holds header and payload.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut Packet<T>) {
        packet.set_flags_protocol(
            self.checksum,
            self.key.is_some(),
            self.sequence.is_some(),
            self.protocol,
        );
        if let Some(k) = self.key {
            packet.set_key(k);
        }
        if let Some(s) = self.sequence {
            packet.set_sequence(s);
        }
        if self.checksum {
            packet.fill_checksum();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::fixtures::{GRE_KEEPALIVE, GRE_KEY_V4, GRE_KEY_V4_IN_V6, GRE_SEQ_V6_IN_V4};
    use crate::wire::mutate;

    #[test]
    fn deconstruct() {
        let p = Packet::new_checked(&GRE_KEY_V4[20..]).unwrap();
        assert!(!p.checksum_present() && p.key_present() && !p.seq_present());
        assert_eq!(p.version(), 0);
        assert_eq!(p.protocol_type(), EtherType::IPV4);
        assert_eq!(p.header_len(), 8);
        assert_eq!(p.key(), Some(0x1234));
        assert_eq!(p.sequence(), None);
        assert_eq!(p.payload(), &GRE_KEY_V4[28..]);
        let p = Packet::new_checked(&GRE_SEQ_V6_IN_V4[20..]).unwrap();
        assert_eq!(
            (p.key(), p.sequence(), p.protocol_type()),
            (None, Some(5), EtherType::IPV6)
        );
        let p = Packet::new_checked(&GRE_KEY_V4_IN_V6[40..]).unwrap();
        assert_eq!(p.key(), Some(0xabcd));
        // The keepalive: outer GRE without options, inner IPv4 whose payload
        // is a bare GRE header with protocol 0.
        let p = Packet::new_checked(&GRE_KEEPALIVE[20..]).unwrap();
        assert_eq!((p.header_len(), p.protocol_type()), (4, EtherType::IPV4));
        let inner = Packet::new_checked(&GRE_KEEPALIVE[44..]).unwrap();
        assert_eq!(inner.protocol_type(), EtherType::NONE);
    }

    #[test]
    fn construct() {
        let mut buf = GRE_KEY_V4[20..].to_vec();
        buf[..8].fill(0);
        let mut p = Packet::new_unchecked(&mut buf[..]);
        p.set_flags_protocol(false, true, false, EtherType::IPV4);
        p.set_key(0x1234);
        assert_eq!(buf, GRE_KEY_V4[20..]);
    }

    #[test]
    fn check_len() {
        assert_eq!(
            Packet::new_checked(&GRE_KEY_V4[20..23]).unwrap_err(),
            WireError::Truncated
        );
        assert_eq!(
            Packet::new_checked(&GRE_KEY_V4[20..27]).unwrap_err(),
            WireError::Truncated,
            "key announced, not there"
        );
        assert!(Packet::new_checked(&GRE_KEY_V4[20..28]).is_ok());
    }

    #[test]
    fn parse() {
        let r = Repr::parse(&Packet::new_checked(&GRE_KEY_V4[20..]).unwrap()).unwrap();
        assert_eq!(
            r,
            Repr {
                protocol: EtherType::IPV4,
                checksum: false,
                key: Some(0x1234),
                sequence: None
            }
        );
        let mut v1 = GRE_KEY_V4;
        v1[21] |= 1;
        assert_eq!(
            Repr::parse(&Packet::new_checked(&v1[20..]).unwrap()).unwrap_err(),
            WireError::Unsupported
        );
        let mut routing = GRE_KEY_V4;
        routing[20] |= 0x40;
        assert_eq!(
            Repr::parse(&Packet::new_checked(&routing[20..]).unwrap()).unwrap_err(),
            WireError::Malformed
        );
        // Bits 6–12 are ignored on receipt.
        let mut future = GRE_KEY_V4;
        future[21] |= 0x08;
        assert!(Repr::parse(&Packet::new_checked(&future[20..]).unwrap()).is_ok());
    }

    #[test]
    fn emit() {
        let r = Repr {
            protocol: EtherType::IPV6,
            checksum: false,
            key: None,
            sequence: Some(5),
        };
        let mut buf = GRE_SEQ_V6_IN_V4[20..].to_vec();
        buf[..8].fill(0xee);
        r.emit(&mut Packet::new_unchecked(&mut buf[..]));
        assert_eq!(buf, GRE_SEQ_V6_IN_V4[20..]);
        // With a checksum: it verifies, over header and payload.
        let r = Repr {
            protocol: EtherType::IPV4,
            checksum: true,
            key: Some(7),
            sequence: Some(1),
        };
        let mut buf = vec![0u8; r.header_len() + 38];
        buf[r.header_len()..].copy_from_slice(&GRE_KEY_V4[28..]);
        r.emit(&mut Packet::new_unchecked(&mut buf[..]));
        let p = Packet::new_checked(&buf[..]).unwrap();
        assert!(p.verify_checksum());
        assert_eq!(Repr::parse(&p).unwrap(), r);
        buf[30] ^= 1;
        assert!(!Packet::new_checked(&buf[..]).unwrap().verify_checksum());
    }

    #[test]
    fn buffer_len() {
        let r = Repr {
            protocol: EtherType::IPV4,
            checksum: true,
            key: Some(1),
            sequence: Some(2),
        };
        assert_eq!(r.buffer_len(), MAX_HEADER_LEN);
        let r = Repr {
            checksum: false,
            key: None,
            sequence: None,
            ..r
        };
        assert_eq!(r.buffer_len(), 4);
    }

    #[test]
    fn garbage_never_panics() {
        mutate::variants(&GRE_KEY_V4[20..], 5000, |b| {
            if let Ok(p) = Packet::new_checked(b) {
                let _ = (p.payload(), p.key(), p.sequence());
                let _ = Repr::parse(&p);
            }
        });
    }
}
