//! ICMP for IPv4, RFC 792: enough to answer with errors (Destination
//! Unreachable incl. Fragmentation Needed with the next-hop MTU of
//! RFC 1191 §4, Time Exceeded) and to read echo messages.
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |     Type      |     Code      |          Checksum             |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |   Echo: Identifier / Sequence Number                          |
//! |   Frag. Needed: unused (16) / Next-Hop MTU (16)  (RFC 1191)   |
//! |   Time Exceeded: unused                                       |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |   Data: echo payload, or the invoking datagram's header + ... |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! ```
//!
//! The checksum covers the whole ICMP message (no pseudo-header).

use super::checksum;
use super::{be16, be32, put16, put32, Result, WireError};

mod field {
    use std::ops::Range;
    pub const TYPE: usize = 0;
    pub const CODE: usize = 1;
    pub const CHECKSUM: Range<usize> = 2..4;
    pub const REST: Range<usize> = 4..8;
    pub const ECHO_IDENT: Range<usize> = 4..6;
    pub const ECHO_SEQNO: Range<usize> = 6..8;
    pub const MTU: Range<usize> = 6..8;
}

pub const HEADER_LEN: usize = field::REST.end;

/// ICMP types (IANA "ICMP Type Numbers").
pub mod msg {
    pub const ECHO_REPLY: u8 = 0;
    pub const DST_UNREACHABLE: u8 = 3;
    pub const REDIRECT: u8 = 5;
    pub const ECHO_REQUEST: u8 = 8;
    pub const TIME_EXCEEDED: u8 = 11;
    pub const PARAM_PROBLEM: u8 = 12;
}

/// Destination Unreachable codes (RFC 792, RFC 1812 §5.2.7.1).
pub mod unreachable {
    pub const NET: u8 = 0;
    pub const HOST: u8 = 1;
    pub const PROTOCOL: u8 = 2;
    pub const PORT: u8 = 3;
    /// Fragmentation needed and DF set (RFC 1191 §4: carries the MTU).
    pub const FRAG_NEEDED: u8 = 4;
    pub const ADMIN_PROHIBITED: u8 = 13;
}

/// Time Exceeded codes.
pub mod time_exceeded {
    /// TTL exceeded in transit.
    pub const TTL: u8 = 0;
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

    /// The 32 bits after the checksum, whatever the type makes of them.
    pub fn rest_of_header(&self) -> u32 {
        be32(self.buffer.as_ref(), field::REST.start)
    }

    pub fn echo_ident(&self) -> u16 {
        be16(self.buffer.as_ref(), field::ECHO_IDENT.start)
    }

    pub fn echo_seq_no(&self) -> u16 {
        be16(self.buffer.as_ref(), field::ECHO_SEQNO.start)
    }

    /// Next-Hop MTU of a Fragmentation Needed message (RFC 1191 §4; zero
    /// from routers that predate it).
    pub fn next_hop_mtu(&self) -> u16 {
        be16(self.buffer.as_ref(), field::MTU.start)
    }

    pub fn data(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..]
    }

    pub fn verify_checksum(&self) -> bool {
        checksum::fold(checksum::sum(self.buffer.as_ref())) == 0xffff
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

    pub fn fill_checksum(&mut self) {
        self.set_checksum(0);
        let c = checksum::checksum(self.buffer.as_ref());
        self.set_checksum(c);
    }
}

/// The meaning of an ICMP message.
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
    /// `next_hop_mtu` is meaningful with [`unreachable::FRAG_NEEDED`] and
    /// zero otherwise; `invoking` is the quoted start of the datagram.
    DstUnreachable {
        code: u8,
        next_hop_mtu: u16,
        invoking: &'a [u8],
    },
    TimeExceeded {
        code: u8,
        invoking: &'a [u8],
    },
    /// Any other type, kept as it is.
    Other {
        msg_type: u8,
        code: u8,
        rest: u32,
        data: &'a [u8],
    },
}

impl<'a> Repr<'a> {
    /// Validates the length and the checksum.
    pub fn parse<T: AsRef<[u8]> + ?Sized>(packet: &Packet<&'a T>) -> Result<Repr<'a>> {
        packet.check_len()?;
        if !packet.verify_checksum() {
            return Err(WireError::Malformed);
        }
        let data = &packet.buffer.as_ref()[HEADER_LEN..];
        let code = packet.msg_code();
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
            msg::DST_UNREACHABLE if packet.rest_of_header() >> 16 == 0 => Repr::DstUnreachable {
                code,
                next_hop_mtu: packet.next_hop_mtu(),
                invoking: data,
            },
            msg::TIME_EXCEEDED if packet.rest_of_header() == 0 => Repr::TimeExceeded {
                code,
                invoking: data,
            },
            t => Repr::Other {
                msg_type: t,
                code,
                rest: packet.rest_of_header(),
                data,
            },
        })
    }

    fn data(&self) -> &'a [u8] {
        match *self {
            Repr::EchoRequest { data, .. } | Repr::EchoReply { data, .. } => data,
            Repr::DstUnreachable { invoking, .. } | Repr::TimeExceeded { invoking, .. } => invoking,
            Repr::Other { data, .. } => data,
        }
    }

    pub fn buffer_len(&self) -> usize {
        HEADER_LEN + self.data().len()
    }

    /// Writes the message, data and checksum; `packet` must be exactly
    /// [`Repr::buffer_len`] bytes (the checksum covers all of it).
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut Packet<T>) {
        let (t, c, rest) = match *self {
            Repr::EchoRequest { ident, seq_no, .. } => (
                msg::ECHO_REQUEST,
                0,
                u32::from(ident) << 16 | u32::from(seq_no),
            ),
            Repr::EchoReply { ident, seq_no, .. } => (
                msg::ECHO_REPLY,
                0,
                u32::from(ident) << 16 | u32::from(seq_no),
            ),
            Repr::DstUnreachable {
                code, next_hop_mtu, ..
            } => (msg::DST_UNREACHABLE, code, u32::from(next_hop_mtu)),
            Repr::TimeExceeded { code, .. } => (msg::TIME_EXCEEDED, code, 0),
            Repr::Other {
                msg_type,
                code,
                rest,
                ..
            } => (msg_type, code, rest),
        };
        packet.set_msg_type(t);
        packet.set_msg_code(c);
        packet.set_rest_of_header(rest);
        let data = self.data();
        packet.data_mut()[..data.len()].copy_from_slice(data);
        packet.fill_checksum();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::fixtures::{
        ICMPV4_ECHO, ICMPV4_FRAG_NEEDED, ICMPV4_PROTO_UNREACHABLE, ICMPV4_TIME_EXCEEDED,
        IPV4_DF_1428, IPV4_TTL1,
    };
    use crate::wire::mutate;

    #[test]
    fn deconstruct() {
        let p = Packet::new_checked(&ICMPV4_FRAG_NEEDED[20..]).unwrap();
        assert_eq!(p.msg_type(), msg::DST_UNREACHABLE);
        assert_eq!(p.msg_code(), unreachable::FRAG_NEEDED);
        assert_eq!(p.checksum(), 0x0ec9);
        assert_eq!(p.next_hop_mtu(), 1280);
        assert!(p.verify_checksum());
        // Linux quotes as much as fits in 576 bytes (RFC 1812 §4.3.2.3).
        assert_eq!(p.data(), &IPV4_DF_1428[..548]);
        let p = Packet::new_checked(&ICMPV4_ECHO[20..]).unwrap();
        assert_eq!(
            (p.msg_type(), p.echo_ident(), p.echo_seq_no()),
            (msg::ECHO_REQUEST, 0x4de3, 1)
        );
        let p = Packet::new_checked(&ICMPV4_TIME_EXCEEDED[20..]).unwrap();
        assert_eq!(
            (p.msg_type(), p.msg_code()),
            (msg::TIME_EXCEEDED, time_exceeded::TTL)
        );
        assert_eq!(p.data(), &IPV4_TTL1[..]);
    }

    #[test]
    fn construct() {
        let mut buf = [0u8; 556];
        let mut p = Packet::new_unchecked(&mut buf[..]);
        p.set_msg_type(msg::DST_UNREACHABLE);
        p.set_msg_code(unreachable::FRAG_NEEDED);
        p.set_rest_of_header(1280);
        p.data_mut().copy_from_slice(&IPV4_DF_1428[..548]);
        p.fill_checksum();
        assert_eq!(buf, ICMPV4_FRAG_NEEDED[20..]);
    }

    #[test]
    fn check_len() {
        assert_eq!(
            Packet::new_checked(&ICMPV4_ECHO[20..27]).unwrap_err(),
            WireError::Truncated
        );
        assert!(Packet::new_checked(&ICMPV4_ECHO[20..28]).is_ok());
    }

    #[test]
    fn parse() {
        let p = Packet::new_checked(&ICMPV4_FRAG_NEEDED[20..]).unwrap();
        assert_eq!(
            Repr::parse(&p).unwrap(),
            Repr::DstUnreachable {
                code: unreachable::FRAG_NEEDED,
                next_hop_mtu: 1280,
                invoking: &IPV4_DF_1428[..548],
            }
        );
        let p = Packet::new_checked(&ICMPV4_PROTO_UNREACHABLE[20..]).unwrap();
        assert!(matches!(
            Repr::parse(&p).unwrap(),
            Repr::DstUnreachable {
                code: unreachable::PROTOCOL,
                next_hop_mtu: 0,
                ..
            }
        ));
        let p = Packet::new_checked(&ICMPV4_ECHO[20..]).unwrap();
        assert_eq!(
            Repr::parse(&p).unwrap(),
            Repr::EchoRequest {
                ident: 0x4de3,
                seq_no: 1,
                data: &ICMPV4_ECHO[28..]
            }
        );
        let mut bad = ICMPV4_ECHO;
        bad[40] ^= 1;
        let p = Packet::new_checked(&bad[20..]).unwrap();
        assert_eq!(Repr::parse(&p).unwrap_err(), WireError::Malformed);
    }

    #[test]
    fn emit() {
        let r = Repr::TimeExceeded {
            code: time_exceeded::TTL,
            invoking: &IPV4_TTL1,
        };
        let mut buf = vec![0u8; r.buffer_len()];
        r.emit(&mut Packet::new_unchecked(&mut buf[..]));
        assert_eq!(buf, ICMPV4_TIME_EXCEEDED[20..]);
    }

    #[test]
    fn buffer_len() {
        let r = Repr::DstUnreachable {
            code: unreachable::FRAG_NEEDED,
            next_hop_mtu: 1280,
            invoking: &IPV4_DF_1428[..548],
        };
        assert_eq!(r.buffer_len(), 556);
    }

    #[test]
    fn garbage_never_panics() {
        mutate::variants(&ICMPV4_FRAG_NEEDED[20..100], 5000, |b| {
            if let Ok(p) = Packet::new_checked(b) {
                let _ = Repr::parse(&p);
            }
        });
    }
}
