//! ICMPv6, RFC 4443: enough to answer with errors (Destination
//! Unreachable, Packet Too Big with its MTU for RFC 8201 path MTU
//! discovery, Time Exceeded) and to read echo messages.
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |     Type      |     Code      |          Checksum             |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |   Packet Too Big: MTU (32) · Parameter Problem: Pointer (32)  |
//! |   Echo: Identifier / Sequence Number · others: unused         |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |   As much of the invoking packet as fits in 1280 bytes        |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! ```
//!
//! The checksum covers the IPv6 pseudo-header (RFC 4443 §2.3).

use std::net::IpAddr;

use super::checksum;
use super::{be16, be32, put16, put32, IpProtocol, Result, WireError};

mod field {
    use std::ops::Range;
    pub const TYPE: usize = 0;
    pub const CODE: usize = 1;
    pub const CHECKSUM: Range<usize> = 2..4;
    pub const REST: Range<usize> = 4..8;
    pub const ECHO_IDENT: Range<usize> = 4..6;
    pub const ECHO_SEQNO: Range<usize> = 6..8;
}

pub const HEADER_LEN: usize = field::REST.end;

/// ICMPv6 types (RFC 4443 §2.1).
pub mod msg {
    pub const DST_UNREACHABLE: u8 = 1;
    pub const PACKET_TOO_BIG: u8 = 2;
    pub const TIME_EXCEEDED: u8 = 3;
    pub const PARAM_PROBLEM: u8 = 4;
    pub const ECHO_REQUEST: u8 = 128;
    pub const ECHO_REPLY: u8 = 129;

    /// Error messages have types 0–127 (RFC 4443 §2.1): never answer one
    /// with another (§2.4 (e)).
    pub fn is_error(t: u8) -> bool {
        t < 128
    }
}

/// Destination Unreachable codes (RFC 4443 §3.1).
pub mod unreachable {
    pub const NO_ROUTE: u8 = 0;
    pub const ADMIN_PROHIBITED: u8 = 1;
    pub const BEYOND_SCOPE: u8 = 2;
    pub const ADDRESS: u8 = 3;
    pub const PORT: u8 = 4;
}

/// Time Exceeded codes (RFC 4443 §3.3).
pub mod time_exceeded {
    pub const HOP_LIMIT: u8 = 0;
    pub const REASSEMBLY: u8 = 1;
}

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

    /// Checks the 8-byte header is there; the message is the whole buffer.
    pub fn check_len(&self) -> Result<()> {
        if self.buffer.as_ref().len() < HEADER_LEN {
            return Err(WireError::Truncated);
        }
        Ok(())
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    pub fn msg_type(&self) -> u8 {
        self.buffer.as_ref()[field::TYPE]
    }

    pub fn msg_code(&self) -> u8 {
        self.buffer.as_ref()[field::CODE]
    }

    pub fn checksum(&self) -> u16 {
        be16(self.buffer.as_ref(), field::CHECKSUM.start)
    }

    /// MTU (Packet Too Big), Pointer (Parameter Problem), or the echo
    /// identifier and sequence number.
    pub fn rest_of_header(&self) -> u32 {
        be32(self.buffer.as_ref(), field::REST.start)
    }

    pub fn echo_ident(&self) -> u16 {
        be16(self.buffer.as_ref(), field::ECHO_IDENT.start)
    }

    pub fn echo_seq_no(&self) -> u16 {
        be16(self.buffer.as_ref(), field::ECHO_SEQNO.start)
    }

    pub fn data(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..]
    }

    pub fn verify_checksum(&self, src: &IpAddr, dst: &IpAddr) -> bool {
        let b = self.buffer.as_ref();
        let Ok(len) = u32::try_from(b.len()) else {
            return false;
        };
        let ph = checksum::pseudo_header(src, dst, IpProtocol::ICMPV6, len);
        checksum::fold(ph + checksum::sum(b)) == 0xffff
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    pub fn set_msg_type(&mut self, v: u8) {
        self.buffer.as_mut()[field::TYPE] = v;
    }

    pub fn set_msg_code(&mut self, v: u8) {
        self.buffer.as_mut()[field::CODE] = v;
    }

    pub fn set_checksum(&mut self, v: u16) {
        put16(self.buffer.as_mut(), field::CHECKSUM.start, v);
    }

    pub fn set_rest_of_header(&mut self, v: u32) {
        put32(self.buffer.as_mut(), field::REST.start, v);
    }

    pub fn data_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[HEADER_LEN..]
    }

    pub fn fill_checksum(&mut self, src: &IpAddr, dst: &IpAddr) {
        self.set_checksum(0);
        let b = self.buffer.as_ref();
        let ph = checksum::pseudo_header(src, dst, IpProtocol::ICMPV6, b.len() as u32);
        let c = !checksum::fold(ph + checksum::sum(b));
        self.set_checksum(c);
    }
}

/// The meaning of an ICMPv6 message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Repr<'a> {
    EchoRequest {
        ident: u16,
        seq_no: u16,
        data: &'a [u8],
    },
    EchoReply {
        ident: u16,
        seq_no: u16,
        data: &'a [u8],
    },
    DstUnreachable {
        code: u8,
        invoking: &'a [u8],
    },
    PacketTooBig {
        mtu: u32,
        invoking: &'a [u8],
    },
    TimeExceeded {
        code: u8,
        invoking: &'a [u8],
    },
    ParamProblem {
        code: u8,
        pointer: u32,
        invoking: &'a [u8],
    },
    /// Any other type (neighbour discovery, MLD…), kept as it is.
    Other {
        msg_type: u8,
        code: u8,
        rest: u32,
        data: &'a [u8],
    },
}

impl<'a> Repr<'a> {
    /// Validates the length and the checksum (over the pseudo-header of
    /// `src`, `dst`).
    pub fn parse<T: AsRef<[u8]> + ?Sized>(
        packet: &Packet<&'a T>,
        src: &IpAddr,
        dst: &IpAddr,
    ) -> Result<Repr<'a>> {
        packet.check_len()?;
        if !packet.verify_checksum(src, dst) {
            return Err(WireError::Malformed);
        }
        let data = &packet.buffer.as_ref()[HEADER_LEN..];
        let code = packet.msg_code();
        let rest = packet.rest_of_header();
        Ok(match packet.msg_type() {
            msg::ECHO_REQUEST if code == 0 => Repr::EchoRequest {
                ident: packet.echo_ident(),
                seq_no: packet.echo_seq_no(),
                data,
            },
            msg::ECHO_REPLY if code == 0 => Repr::EchoReply {
                ident: packet.echo_ident(),
                seq_no: packet.echo_seq_no(),
                data,
            },
            msg::DST_UNREACHABLE if rest == 0 => Repr::DstUnreachable {
                code,
                invoking: data,
            },
            msg::PACKET_TOO_BIG if code == 0 => Repr::PacketTooBig {
                mtu: rest,
                invoking: data,
            },
            msg::TIME_EXCEEDED if rest == 0 => Repr::TimeExceeded {
                code,
                invoking: data,
            },
            msg::PARAM_PROBLEM => Repr::ParamProblem {
                code,
                pointer: rest,
                invoking: data,
            },
            t => Repr::Other {
                msg_type: t,
                code,
                rest,
                data,
            },
        })
    }

    fn parts(&self) -> (u8, u8, u32, &'a [u8]) {
        match *self {
            Repr::EchoRequest {
                ident,
                seq_no,
                data,
            } => (
                msg::ECHO_REQUEST,
                0,
                u32::from(ident) << 16 | u32::from(seq_no),
                data,
            ),
            Repr::EchoReply {
                ident,
                seq_no,
                data,
            } => (
                msg::ECHO_REPLY,
                0,
                u32::from(ident) << 16 | u32::from(seq_no),
                data,
            ),
            Repr::DstUnreachable { code, invoking } => (msg::DST_UNREACHABLE, code, 0, invoking),
            Repr::PacketTooBig { mtu, invoking } => (msg::PACKET_TOO_BIG, 0, mtu, invoking),
            Repr::TimeExceeded { code, invoking } => (msg::TIME_EXCEEDED, code, 0, invoking),
            Repr::ParamProblem {
                code,
                pointer,
                invoking,
            } => (msg::PARAM_PROBLEM, code, pointer, invoking),
            Repr::Other {
                msg_type,
                code,
                rest,
                data,
            } => (msg_type, code, rest, data),
        }
    }

    pub fn buffer_len(&self) -> usize {
        HEADER_LEN + self.parts().3.len()
    }

    /// Writes the message and checksum; `packet` must be exactly
    /// [`Repr::buffer_len`] bytes.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(
        &self,
        packet: &mut Packet<T>,
        src: &IpAddr,
        dst: &IpAddr,
    ) {
        let (t, c, rest, data) = self.parts();
        packet.set_msg_type(t);
        packet.set_msg_code(c);
        packet.set_rest_of_header(rest);
        packet.data_mut()[..data.len()].copy_from_slice(data);
        packet.fill_checksum(src, dst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::fixtures::{
        ICMPV6_ECHO, ICMPV6_PACKET_TOO_BIG, ICMPV6_PORT_UNREACHABLE, ICMPV6_TIME_EXCEEDED,
        IPV6_1448, IPV6_HLIM1, UDPV6,
    };
    use crate::wire::mutate;

    fn router_to_a() -> (IpAddr, IpAddr) {
        (
            "2001:db8:1::fe".parse().unwrap(),
            "2001:db8:1::1".parse().unwrap(),
        )
    }

    #[test]
    fn deconstruct() {
        let (s, d) = router_to_a();
        let p = Packet::new_checked(&ICMPV6_PACKET_TOO_BIG[40..]).unwrap();
        assert_eq!(p.msg_type(), msg::PACKET_TOO_BIG);
        assert_eq!(p.msg_code(), 0);
        assert_eq!(p.checksum(), 0x1d99);
        assert_eq!(p.rest_of_header(), 1280);
        assert!(p.verify_checksum(&s, &d));
        // Linux quotes as much as keeps the error within 1280 bytes
        // (RFC 4443 §2.4 (c)).
        assert_eq!(p.data(), &IPV6_1448[..1232]);
        let p = Packet::new_checked(&ICMPV6_ECHO[40..]).unwrap();
        assert_eq!(
            (p.msg_type(), p.echo_ident(), p.echo_seq_no()),
            (msg::ECHO_REQUEST, 0x4deb, 1)
        );
    }

    #[test]
    fn construct() {
        let (s, d) = router_to_a();
        let mut buf = [0u8; 1240];
        let mut p = Packet::new_unchecked(&mut buf[..]);
        p.set_msg_type(msg::PACKET_TOO_BIG);
        p.set_msg_code(0);
        p.set_rest_of_header(1280);
        p.data_mut().copy_from_slice(&IPV6_1448[..1232]);
        p.fill_checksum(&s, &d);
        assert_eq!(buf, ICMPV6_PACKET_TOO_BIG[40..]);
    }

    #[test]
    fn check_len() {
        assert_eq!(
            Packet::new_checked(&ICMPV6_ECHO[40..47]).unwrap_err(),
            WireError::Truncated
        );
    }

    #[test]
    fn parse() {
        let (s, d) = router_to_a();
        let p = Packet::new_checked(&ICMPV6_TIME_EXCEEDED[40..]).unwrap();
        assert_eq!(
            Repr::parse(&p, &s, &d).unwrap(),
            Repr::TimeExceeded {
                code: time_exceeded::HOP_LIMIT,
                invoking: &IPV6_HLIM1
            }
        );
        let (b, a): (IpAddr, IpAddr) = (
            "2001:db8:2::2".parse().unwrap(),
            "2001:db8:1::1".parse().unwrap(),
        );
        let p = Packet::new_checked(&ICMPV6_PORT_UNREACHABLE[40..]).unwrap();
        // The quoted datagram is ours as b received it: hop limit 63.
        let mut quoted = UDPV6;
        quoted[7] = 63;
        assert_eq!(
            Repr::parse(&p, &b, &a).unwrap(),
            Repr::DstUnreachable {
                code: unreachable::PORT,
                invoking: &quoted
            }
        );
        assert_eq!(
            Repr::parse(&p, &s, &d).unwrap_err(),
            WireError::Malformed,
            "checksum covers the pseudo-header"
        );
    }

    #[test]
    fn emit() {
        let (s, d) = router_to_a();
        let r = Repr::TimeExceeded {
            code: time_exceeded::HOP_LIMIT,
            invoking: &IPV6_HLIM1,
        };
        let mut buf = vec![0u8; r.buffer_len()];
        r.emit(&mut Packet::new_unchecked(&mut buf[..]), &s, &d);
        assert_eq!(buf, ICMPV6_TIME_EXCEEDED[40..]);
    }

    #[test]
    fn buffer_len() {
        let r = Repr::PacketTooBig {
            mtu: 1280,
            invoking: &IPV6_1448[..1232],
        };
        assert_eq!(r.buffer_len(), 1240);
    }

    #[test]
    fn garbage_never_panics() {
        let (s, d) = router_to_a();
        mutate::variants(&ICMPV6_TIME_EXCEEDED[40..], 5000, |b| {
            if let Ok(p) = Packet::new_checked(b) {
                let _ = Repr::parse(&p, &s, &d);
            }
        });
    }
}
