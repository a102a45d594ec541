//! UDP header, RFC 768.
//!
//! ```text
//!  0      7 8     15 16    23 24    31
//! +--------+--------+--------+--------+
//! |     Source      |   Destination   |
//! |      Port       |      Port       |
//! +--------+--------+--------+--------+
//! |                 |                 |
//! |     Length      |    Checksum     |
//! +--------+--------+--------+--------+
//! ```
//!
//! The checksum covers a pseudo-header (RFC 768 for IPv4, RFC 8200 §8.1 for
//! IPv6). Zero means "no checksum" over IPv4; over IPv6 it is invalid
//! (RFC 8200 §8.1; RFC 6935's tunnel exception does not apply to inner
//! packets).

use std::net::IpAddr;

use super::checksum;
use super::{be16, put16, IpProtocol, Result, WireError};

mod field {
    use std::ops::Range;
    pub const SRC_PORT: Range<usize> = 0..2;
    pub const DST_PORT: Range<usize> = 2..4;
    pub const LENGTH: Range<usize> = 4..6;
    pub const CHECKSUM: Range<usize> = 6..8;
}

pub const HEADER_LEN: usize = field::CHECKSUM.end;

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

    /// Checks the header is there, Length is at least 8 and the buffer
    /// holds Length bytes.
    pub fn check_len(&self) -> Result<()> {
        let len = self.buffer.as_ref().len();
        if len < HEADER_LEN {
            return Err(WireError::Truncated);
        }
        let l = usize::from(self.len());
        if l < HEADER_LEN {
            return Err(WireError::Malformed);
        }
        if len < l {
            return Err(WireError::Truncated);
        }
        Ok(())
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    pub fn src_port(&self) -> u16 {
        be16(self.buffer.as_ref(), field::SRC_PORT.start)
    }

    pub fn dst_port(&self) -> u16 {
        be16(self.buffer.as_ref(), field::DST_PORT.start)
    }

    /// Length of header and data.
    pub fn len(&self) -> u16 {
        be16(self.buffer.as_ref(), field::LENGTH.start)
    }

    pub fn is_empty(&self) -> bool {
        usize::from(self.len()) <= HEADER_LEN
    }

    pub fn checksum(&self) -> u16 {
        be16(self.buffer.as_ref(), field::CHECKSUM.start)
    }

    /// Whether the checksum is right; a zero checksum is "none" over IPv4
    /// and wrong over IPv6. Needs a checked view.
    pub fn verify_checksum(&self, src: &IpAddr, dst: &IpAddr) -> bool {
        if self.checksum() == 0 {
            return src.is_ipv4();
        }
        let b = &self.buffer.as_ref()[..usize::from(self.len())];
        let ph = checksum::pseudo_header(src, dst, IpProtocol::UDP, u32::from(self.len()));
        checksum::fold(ph + checksum::sum(b)) == 0xffff
    }

    /// The data, up to Length.
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..usize::from(self.len())]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    pub fn set_src_port(&mut self, v: u16) {
        put16(self.buffer.as_mut(), field::SRC_PORT.start, v);
    }

    pub fn set_dst_port(&mut self, v: u16) {
        put16(self.buffer.as_mut(), field::DST_PORT.start, v);
    }

    pub fn set_len(&mut self, v: u16) {
        put16(self.buffer.as_mut(), field::LENGTH.start, v);
    }

    pub fn set_checksum(&mut self, v: u16) {
        put16(self.buffer.as_mut(), field::CHECKSUM.start, v);
    }

    /// Computes the checksum over the pseudo-header, header and data
    /// (Length must be set); a result of zero is sent as 0xffff (RFC 768).
    pub fn fill_checksum(&mut self, src: &IpAddr, dst: &IpAddr) {
        self.set_checksum(0);
        let l = self.len();
        let ph = checksum::pseudo_header(src, dst, IpProtocol::UDP, u32::from(l));
        let c = !checksum::fold(ph + checksum::sum(&self.buffer.as_ref()[..usize::from(l)]));
        self.set_checksum(if c == 0 { 0xffff } else { c });
    }

    pub fn payload_mut(&mut self) -> &mut [u8] {
        let l = usize::from(self.len());
        &mut self.buffer.as_mut()[HEADER_LEN..l]
    }
}

/// The meaning of a UDP header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Repr {
    pub src_port: u16,
    pub dst_port: u16,
    pub payload_len: usize,
}

impl Repr {
    /// Validates the lengths and the checksum, and refuses port 0 as a
    /// destination (RFC 768: no such port).
    pub fn parse<T: AsRef<[u8]>>(packet: &Packet<T>, src: &IpAddr, dst: &IpAddr) -> Result<Repr> {
        packet.check_len()?;
        if packet.dst_port() == 0 || !packet.verify_checksum(src, dst) {
            return Err(WireError::Malformed);
        }
        Ok(Repr {
            src_port: packet.src_port(),
            dst_port: packet.dst_port(),
            payload_len: usize::from(packet.len()) - HEADER_LEN,
        })
    }

    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN + self.payload_len
    }

    /// Writes the header, lets `emit_payload` fill the data, then the
    /// checksum. `packet` must hold [`Repr::buffer_len`] bytes.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(
        &self,
        packet: &mut Packet<T>,
        src: &IpAddr,
        dst: &IpAddr,
        emit_payload: impl FnOnce(&mut [u8]),
    ) {
        packet.set_src_port(self.src_port);
        packet.set_dst_port(self.dst_port);
        packet.set_len(u16::try_from(self.buffer_len()).expect("UDP datagram > 65535"));
        emit_payload(packet.payload_mut());
        packet.fill_checksum(src, dst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::fixtures::{UDPV4, UDPV6};
    use crate::wire::mutate;

    fn v4() -> (IpAddr, IpAddr) {
        (
            "192.0.2.1".parse().unwrap(),
            "198.51.100.2".parse().unwrap(),
        )
    }
    fn v6() -> (IpAddr, IpAddr) {
        (
            "2001:db8:1::1".parse().unwrap(),
            "2001:db8:2::2".parse().unwrap(),
        )
    }

    #[test]
    fn deconstruct() {
        let p = Packet::new_checked(&UDPV4[20..]).unwrap();
        assert_eq!(p.src_port(), 40637);
        assert_eq!(p.dst_port(), 5353);
        assert_eq!(p.len(), 14);
        assert_eq!(p.checksum(), 0x1c18);
        assert_eq!(p.payload(), b"hello\n");
        let (s, d) = v4();
        assert!(p.verify_checksum(&s, &d));
        let p = Packet::new_checked(&UDPV6[40..]).unwrap();
        let (s, d) = v6();
        assert!(p.verify_checksum(&s, &d));
        assert!(!p.verify_checksum(&d, &"2001:db8:2::3".parse().unwrap()));
    }

    #[test]
    fn construct() {
        let mut buf = [0u8; 14];
        let mut p = Packet::new_unchecked(&mut buf[..]);
        p.set_src_port(40654);
        p.set_dst_port(5353);
        p.set_len(14);
        p.payload_mut().copy_from_slice(b"hello\n");
        let (s, d) = v6();
        p.fill_checksum(&s, &d);
        assert_eq!(buf, UDPV6[40..]);
    }

    #[test]
    fn check_len() {
        assert_eq!(
            Packet::new_checked(&UDPV4[20..27]).unwrap_err(),
            WireError::Truncated
        );
        assert_eq!(
            Packet::new_checked(&UDPV4[20..33]).unwrap_err(),
            WireError::Truncated
        );
        let mut bad = UDPV4;
        bad[25] = 7;
        assert_eq!(
            Packet::new_checked(&bad[20..]).unwrap_err(),
            WireError::Malformed
        );
    }

    #[test]
    fn parse() {
        let (s, d) = v4();
        let r = Repr::parse(&Packet::new_checked(&UDPV4[20..]).unwrap(), &s, &d).unwrap();
        assert_eq!(
            r,
            Repr {
                src_port: 40637,
                dst_port: 5353,
                payload_len: 6
            }
        );
        let mut bad = UDPV4;
        bad[33] ^= 0x20;
        assert_eq!(
            Repr::parse(&Packet::new_checked(&bad[20..]).unwrap(), &s, &d).unwrap_err(),
            WireError::Malformed
        );
        // Zero checksum: fine over IPv4, refused over IPv6.
        let mut none = UDPV4;
        none[26] = 0;
        none[27] = 0;
        assert!(Repr::parse(&Packet::new_checked(&none[20..]).unwrap(), &s, &d).is_ok());
        let mut none6 = UDPV6;
        none6[46] = 0;
        none6[47] = 0;
        let (s6, d6) = v6();
        assert!(Repr::parse(&Packet::new_checked(&none6[40..]).unwrap(), &s6, &d6).is_err());
    }

    #[test]
    fn emit() {
        let r = Repr {
            src_port: 40637,
            dst_port: 5353,
            payload_len: 6,
        };
        let mut buf = [0u8; 14];
        let (s, d) = v4();
        r.emit(&mut Packet::new_unchecked(&mut buf[..]), &s, &d, |p| {
            p.copy_from_slice(b"hello\n")
        });
        assert_eq!(buf, UDPV4[20..]);
    }

    #[test]
    fn buffer_len() {
        let r = Repr {
            src_port: 1,
            dst_port: 2,
            payload_len: 6,
        };
        assert_eq!(r.buffer_len(), 14);
    }

    #[test]
    fn garbage_never_panics() {
        let (s, d) = v4();
        mutate::variants(&UDPV4[20..], 5000, |b| {
            if let Ok(p) = Packet::new_checked(b) {
                let _ = p.payload();
                let _ = Repr::parse(&p, &s, &d);
            }
        });
    }
}
