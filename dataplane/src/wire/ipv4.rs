//! IPv4 header, RFC 791 §3.1.
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |Version|  IHL  |    DSCP   |ECN|          Total Length         |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |         Identification        |Flags|      Fragment Offset    |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |  Time to Live |    Protocol   |         Header Checksum       |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                       Source Address                          |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                    Destination Address                        |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                    Options                    |    Padding    |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! ```
//!
//! Flags: bit 0 reserved (must be zero), bit 1 DF, bit 2 MF.

use std::net::Ipv4Addr;

use super::checksum;
use super::{be16, put16, IpProtocol, Result, WireError};

mod field {
    use std::ops::Range;
    pub const VER_IHL: usize = 0;
    pub const DSCP_ECN: usize = 1;
    pub const LENGTH: Range<usize> = 2..4;
    pub const IDENT: Range<usize> = 4..6;
    pub const FLG_OFF: Range<usize> = 6..8;
    pub const TTL: usize = 8;
    pub const PROTOCOL: usize = 9;
    pub const CHECKSUM: Range<usize> = 10..12;
    pub const SRC_ADDR: Range<usize> = 12..16;
    pub const DST_ADDR: Range<usize> = 16..20;
}

/// Length of the header without options.
pub const HEADER_LEN: usize = field::DST_ADDR.end;

const FLAG_RESERVED: u16 = 0x8000;
const FLAG_DF: u16 = 0x4000;
const FLAG_MF: u16 = 0x2000;

/// A view of an IPv4 packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// A view without length checks: accessors may panic on a short buffer.
    pub const fn new_unchecked(buffer: T) -> Packet<T> {
        Packet { buffer }
    }

    /// A view whose accessors stay in bounds: see [`Packet::check_len`].
    pub fn new_checked(buffer: T) -> Result<Packet<T>> {
        let p = Packet::new_unchecked(buffer);
        p.check_len()?;
        Ok(p)
    }

    /// Checks that the buffer holds the fixed header, that IHL is at least
    /// 5 words and the buffer holds all of them, and that Total Length
    /// covers the header and fits in the buffer (a longer buffer, e.g. with
    /// link padding, is fine: [`Packet::payload`] ends at Total Length).
    pub fn check_len(&self) -> Result<()> {
        let len = self.buffer.as_ref().len();
        if len < HEADER_LEN {
            return Err(WireError::Truncated);
        }
        let hl = self.header_len();
        if hl < HEADER_LEN {
            return Err(WireError::Malformed);
        }
        if len < hl {
            return Err(WireError::Truncated);
        }
        let total = usize::from(self.total_len());
        if total < hl {
            return Err(WireError::Malformed);
        }
        if len < total {
            return Err(WireError::Truncated);
        }
        Ok(())
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    pub fn as_bytes(&self) -> &[u8] {
        self.buffer.as_ref()
    }

    pub fn version(&self) -> u8 {
        self.buffer.as_ref()[field::VER_IHL] >> 4
    }

    /// Header length in bytes (IHL × 4).
    pub fn header_len(&self) -> usize {
        usize::from(self.buffer.as_ref()[field::VER_IHL] & 0x0f) * 4
    }

    /// The former TOS byte: DSCP (6 bits) and ECN (2 bits), RFC 2474/3168.
    pub fn dscp_ecn(&self) -> u8 {
        self.buffer.as_ref()[field::DSCP_ECN]
    }

    pub fn total_len(&self) -> u16 {
        be16(self.buffer.as_ref(), field::LENGTH.start)
    }

    pub fn ident(&self) -> u16 {
        be16(self.buffer.as_ref(), field::IDENT.start)
    }

    fn flags_offset(&self) -> u16 {
        be16(self.buffer.as_ref(), field::FLG_OFF.start)
    }

    pub fn reserved_flag(&self) -> bool {
        self.flags_offset() & FLAG_RESERVED != 0
    }

    /// Don't Fragment: the sender wants Fragmentation Needed instead of
    /// fragmentation (RFC 1191 path MTU discovery).
    pub fn dont_frag(&self) -> bool {
        self.flags_offset() & FLAG_DF != 0
    }

    pub fn more_frags(&self) -> bool {
        self.flags_offset() & FLAG_MF != 0
    }

    /// Fragment offset in bytes.
    pub fn frag_offset(&self) -> u16 {
        (self.flags_offset() & 0x1fff) << 3
    }

    /// Whether this is a fragment other than the first (its payload starts
    /// mid-datagram: no transport header to read).
    pub fn is_non_initial_fragment(&self) -> bool {
        self.flags_offset() & 0x1fff != 0
    }

    pub fn ttl(&self) -> u8 {
        self.buffer.as_ref()[field::TTL]
    }

    pub fn protocol(&self) -> IpProtocol {
        IpProtocol(self.buffer.as_ref()[field::PROTOCOL])
    }

    pub fn checksum(&self) -> u16 {
        be16(self.buffer.as_ref(), field::CHECKSUM.start)
    }

    pub fn src_addr(&self) -> Ipv4Addr {
        let b = &self.buffer.as_ref()[field::SRC_ADDR];
        Ipv4Addr::new(b[0], b[1], b[2], b[3])
    }

    pub fn dst_addr(&self) -> Ipv4Addr {
        let b = &self.buffer.as_ref()[field::DST_ADDR];
        Ipv4Addr::new(b[0], b[1], b[2], b[3])
    }

    /// Whether the header checksum is right (RFC 791 §3.1). Needs a
    /// checked view.
    pub fn verify_checksum(&self) -> bool {
        let hl = self.header_len();
        checksum::fold(checksum::sum(&self.buffer.as_ref()[..hl])) == 0xffff
    }

    /// The options bytes (empty without options).
    pub fn options(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..self.header_len()]
    }

    /// The payload, up to Total Length.
    pub fn payload(&self) -> &[u8] {
        let b = self.buffer.as_ref();
        &b[self.header_len()..usize::from(self.total_len())]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    pub fn set_version_ihl(&mut self, version: u8, header_len: usize) {
        self.buffer.as_mut()[field::VER_IHL] = (version << 4) | ((header_len / 4) as u8 & 0x0f);
    }

    pub fn set_dscp_ecn(&mut self, v: u8) {
        self.buffer.as_mut()[field::DSCP_ECN] = v;
    }

    pub fn set_total_len(&mut self, v: u16) {
        put16(self.buffer.as_mut(), field::LENGTH.start, v);
    }

    pub fn set_ident(&mut self, v: u16) {
        put16(self.buffer.as_mut(), field::IDENT.start, v);
    }

    /// Sets the flags and fragment offset (in bytes, a multiple of 8).
    pub fn set_flags_frag(&mut self, dont_frag: bool, more_frags: bool, offset: u16) {
        let mut v = (offset >> 3) & 0x1fff;
        if dont_frag {
            v |= FLAG_DF;
        }
        if more_frags {
            v |= FLAG_MF;
        }
        put16(self.buffer.as_mut(), field::FLG_OFF.start, v);
    }

    pub fn set_ttl(&mut self, v: u8) {
        self.buffer.as_mut()[field::TTL] = v;
    }

    pub fn set_protocol(&mut self, v: IpProtocol) {
        self.buffer.as_mut()[field::PROTOCOL] = v.0;
    }

    pub fn set_checksum(&mut self, v: u16) {
        put16(self.buffer.as_mut(), field::CHECKSUM.start, v);
    }

    pub fn set_src_addr(&mut self, a: Ipv4Addr) {
        self.buffer.as_mut()[field::SRC_ADDR].copy_from_slice(&a.octets());
    }

    pub fn set_dst_addr(&mut self, a: Ipv4Addr) {
        self.buffer.as_mut()[field::DST_ADDR].copy_from_slice(&a.octets());
    }

    /// Computes and writes the header checksum.
    pub fn fill_checksum(&mut self) {
        self.set_checksum(0);
        let hl = self.header_len();
        let c = checksum::checksum(&self.buffer.as_ref()[..hl]);
        self.set_checksum(c);
    }

    /// Decrements the TTL by one and patches the checksum incrementally
    /// (RFC 1624 §3; TTL is the high byte of the word it shares with
    /// Protocol). Returns the new TTL; a TTL already 0 stays 0.
    pub fn decrement_ttl(&mut self) -> u8 {
        let ttl = self.ttl();
        if ttl == 0 {
            return 0;
        }
        let proto = self.buffer.as_ref()[field::PROTOCOL];
        let old = u16::from_be_bytes([ttl, proto]);
        let new = u16::from_be_bytes([ttl - 1, proto]);
        self.set_ttl(ttl - 1);
        let c = checksum::update16(self.checksum(), old, new);
        self.set_checksum(c);
        ttl - 1
    }

    pub fn payload_mut(&mut self) -> &mut [u8] {
        let (hl, total) = (self.header_len(), usize::from(self.total_len()));
        &mut self.buffer.as_mut()[hl..total]
    }
}

/// The meaning of an IPv4 header (options are not represented: [`Repr::emit`]
/// writes a 20-byte header).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Repr {
    pub src_addr: Ipv4Addr,
    pub dst_addr: Ipv4Addr,
    pub protocol: IpProtocol,
    /// Payload length (Total Length minus header length).
    pub payload_len: usize,
    pub ttl: u8,
    pub dscp_ecn: u8,
    pub ident: u16,
    pub dont_frag: bool,
    pub more_frags: bool,
    /// Fragment offset in bytes.
    pub frag_offset: u16,
}

impl Repr {
    /// Validates version 4, the lengths ([`Packet::check_len`]), the
    /// reserved flag (must be zero, RFC 791 §3.1) and the header checksum.
    pub fn parse<T: AsRef<[u8]>>(packet: &Packet<T>) -> Result<Repr> {
        packet.check_len()?;
        if packet.version() != 4 || packet.reserved_flag() {
            return Err(WireError::Malformed);
        }
        if !packet.verify_checksum() {
            return Err(WireError::Malformed);
        }
        Ok(Repr {
            src_addr: packet.src_addr(),
            dst_addr: packet.dst_addr(),
            protocol: packet.protocol(),
            payload_len: usize::from(packet.total_len()) - packet.header_len(),
            ttl: packet.ttl(),
            dscp_ecn: packet.dscp_ecn(),
            ident: packet.ident(),
            dont_frag: packet.dont_frag(),
            more_frags: packet.more_frags(),
            frag_offset: packet.frag_offset(),
        })
    }

    /// Header length [`Repr::emit`] writes.
    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN
    }

    /// Writes the header (with checksum) into the first [`HEADER_LEN`]
    /// bytes of `packet`. Panics if `payload_len` does not fit Total Length
    /// (a caller bug: IPv4 datagrams are at most 65535 bytes).
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut Packet<T>) {
        let total = u16::try_from(HEADER_LEN + self.payload_len).expect("IPv4 datagram > 65535");
        packet.set_version_ihl(4, HEADER_LEN);
        packet.set_dscp_ecn(self.dscp_ecn);
        packet.set_total_len(total);
        packet.set_ident(self.ident);
        packet.set_flags_frag(self.dont_frag, self.more_frags, self.frag_offset);
        packet.set_ttl(self.ttl);
        packet.set_protocol(self.protocol);
        packet.set_src_addr(self.src_addr);
        packet.set_dst_addr(self.dst_addr);
        packet.fill_checksum();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::fixtures::{ICMPV4_ECHO, IPV4_DF_1428, IPV4_RECORD_ROUTE, IPV4_TTL1};
    use crate::wire::mutate;

    fn echo_repr() -> Repr {
        Repr {
            src_addr: Ipv4Addr::new(192, 0, 2, 1),
            dst_addr: Ipv4Addr::new(198, 51, 100, 2),
            protocol: IpProtocol::ICMP,
            payload_len: 32,
            ttl: 64,
            dscp_ecn: 0,
            ident: 0x4900,
            dont_frag: true,
            more_frags: false,
            frag_offset: 0,
        }
    }

    #[test]
    fn deconstruct() {
        let p = Packet::new_checked(&ICMPV4_ECHO[..]).unwrap();
        assert_eq!(p.version(), 4);
        assert_eq!(p.header_len(), 20);
        assert_eq!(p.dscp_ecn(), 0);
        assert_eq!(p.total_len(), 52);
        assert_eq!(p.ident(), 0x4900);
        assert!(p.dont_frag());
        assert!(!p.more_frags());
        assert_eq!(p.frag_offset(), 0);
        assert_eq!(p.ttl(), 64);
        assert_eq!(p.protocol(), IpProtocol::ICMP);
        assert_eq!(p.checksum(), 0x0592);
        assert_eq!(p.src_addr(), Ipv4Addr::new(192, 0, 2, 1));
        assert_eq!(p.dst_addr(), Ipv4Addr::new(198, 51, 100, 2));
        assert!(p.verify_checksum());
        assert_eq!(p.payload(), &ICMPV4_ECHO[20..]);
        assert!(p.options().is_empty());

        // Record Route (ping -R): IHL 15, 40 bytes of options.
        let p = Packet::new_checked(&IPV4_RECORD_ROUTE[..]).unwrap();
        assert_eq!(p.header_len(), 60);
        assert_eq!(
            p.options()[..4],
            [0x01, 0x07, 0x27, 0x08],
            "NOP, RR len 39 ptr 8"
        );
        assert!(p.verify_checksum());
        assert_eq!(p.payload()[0], 8, "ICMP echo request after the options");
    }

    #[test]
    fn construct() {
        let mut buf = [0u8; 52];
        buf[20..].copy_from_slice(&ICMPV4_ECHO[20..]);
        let mut p = Packet::new_unchecked(&mut buf[..]);
        p.set_version_ihl(4, 20);
        p.set_dscp_ecn(0);
        p.set_total_len(52);
        p.set_ident(0x4900);
        p.set_flags_frag(true, false, 0);
        p.set_ttl(64);
        p.set_protocol(IpProtocol::ICMP);
        p.set_src_addr(Ipv4Addr::new(192, 0, 2, 1));
        p.set_dst_addr(Ipv4Addr::new(198, 51, 100, 2));
        p.fill_checksum();
        assert_eq!(buf, ICMPV4_ECHO);
    }

    #[test]
    fn check_len() {
        assert_eq!(
            Packet::new_checked(&ICMPV4_ECHO[..19]).unwrap_err(),
            WireError::Truncated
        );
        // Total Length says 52: a buffer cut at 51 is truncated.
        assert_eq!(
            Packet::new_checked(&ICMPV4_ECHO[..51]).unwrap_err(),
            WireError::Truncated
        );
        // Options claimed (IHL 15) but the buffer holds only 40 bytes.
        assert_eq!(
            Packet::new_checked(&IPV4_RECORD_ROUTE[..40]).unwrap_err(),
            WireError::Truncated
        );
        let mut bad = ICMPV4_ECHO;
        bad[0] = 0x44; // IHL 4 < 5
        assert_eq!(
            Packet::new_checked(&bad[..]).unwrap_err(),
            WireError::Malformed
        );
        let mut bad = ICMPV4_ECHO;
        bad[2..4].copy_from_slice(&10u16.to_be_bytes()); // Total Length < IHL
        assert_eq!(
            Packet::new_checked(&bad[..]).unwrap_err(),
            WireError::Malformed
        );
        // Link padding after Total Length is allowed and not payload.
        let mut padded = ICMPV4_ECHO.to_vec();
        padded.extend_from_slice(&[0; 6]);
        let p = Packet::new_checked(&padded[..]).unwrap();
        assert_eq!(p.payload().len(), 32);
    }

    #[test]
    fn parse() {
        let p = Packet::new_checked(&ICMPV4_ECHO[..]).unwrap();
        assert_eq!(Repr::parse(&p).unwrap(), echo_repr());
        let mut bad = ICMPV4_ECHO;
        bad[10] ^= 1;
        assert_eq!(
            Repr::parse(&Packet::new_unchecked(&bad[..])).unwrap_err(),
            WireError::Malformed,
            "bad checksum"
        );
        let mut bad = ICMPV4_ECHO;
        bad[0] = 0x65;
        assert_eq!(
            Repr::parse(&Packet::new_unchecked(&bad[..])).unwrap_err(),
            WireError::Malformed,
            "version 6"
        );
        let r = Repr::parse(&Packet::new_checked(&IPV4_DF_1428[..]).unwrap()).unwrap();
        assert_eq!(r.payload_len, 1408);
        assert!(r.dont_frag);
    }

    #[test]
    fn emit() {
        let mut buf = [0u8; 52];
        buf[20..].copy_from_slice(&ICMPV4_ECHO[20..]);
        echo_repr().emit(&mut Packet::new_unchecked(&mut buf[..]));
        assert_eq!(buf, ICMPV4_ECHO);
    }

    #[test]
    fn buffer_len() {
        assert_eq!(echo_repr().buffer_len(), 20);
    }

    #[test]
    fn decrement_ttl_keeps_checksum_valid() {
        let mut buf = ICMPV4_ECHO;
        let mut p = Packet::new_checked(&mut buf[..]).unwrap();
        assert_eq!(p.decrement_ttl(), 63);
        assert!(p.verify_checksum());
        let mut again = buf;
        let mut q = Packet::new_unchecked(&mut again[..]);
        q.fill_checksum();
        assert_eq!(again, buf, "incremental == recomputed");
        let mut one = IPV4_TTL1;
        let mut p = Packet::new_checked(&mut one[..]).unwrap();
        assert_eq!(p.decrement_ttl(), 0);
        assert!(p.verify_checksum());
        assert_eq!(p.decrement_ttl(), 0, "stays 0");
    }

    #[test]
    fn garbage_never_panics() {
        for seed in [&ICMPV4_ECHO[..], &IPV4_RECORD_ROUTE[..], &IPV4_TTL1[..]] {
            mutate::variants(seed, 5000, |b| {
                if let Ok(p) = Packet::new_checked(b) {
                    let _ = (
                        p.payload(),
                        p.options(),
                        p.verify_checksum(),
                        p.frag_offset(),
                    );
                    let _ = Repr::parse(&p);
                }
            });
        }
    }
}
