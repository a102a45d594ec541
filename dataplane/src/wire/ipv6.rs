//! IPv6 fixed header, RFC 8200 §3, and the walk past extension headers to
//! the upper layer (§4).
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |Version| Traffic Class |           Flow Label                  |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |         Payload Length        |  Next Header  |   Hop Limit   |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                                                               |
//! +                         Source Address (128)                  +
//! |                                                               |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                                                               |
//! +                      Destination Address (128)                +
//! |                                                               |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! ```
//!
//! Payload Length 0 with a Hop-by-Hop jumbo option (RFC 2675) is not
//! supported: tunnels carry nothing that large; such packets are Malformed.

use std::net::Ipv6Addr;

use super::{be16, be32, put16, IpProtocol, Result, WireError};

mod field {
    use std::ops::Range;
    pub const VER_TC_FLOW: Range<usize> = 0..4;
    pub const LENGTH: Range<usize> = 4..6;
    pub const NXT_HDR: usize = 6;
    pub const HOP_LIMIT: usize = 7;
    pub const SRC_ADDR: Range<usize> = 8..24;
    pub const DST_ADDR: Range<usize> = 24..40;
}

/// Length of the fixed header.
pub const HEADER_LEN: usize = field::DST_ADDR.end;

/// How many extension headers [`Packet::upper_layer`] walks before giving
/// up: RFC 8200 §4.1 recommends each appear at most once (twice for
/// Destination Options) and RFC 7112 wants the header chain in the first
/// fragment; a longer chain is an attack, not traffic.
pub const MAX_EXT_HEADERS: usize = 8;

/// A view of an IPv6 packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

/// Where the upper-layer header of an IPv6 packet starts, past the
/// extension headers (RFC 8200 §4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpperLayer {
    /// The protocol of the upper-layer header (or ESP, No Next Header, or
    /// an extension header we do not walk, e.g. AH).
    pub protocol: IpProtocol,
    /// Offset of that header from the start of the packet.
    pub offset: usize,
    /// The Fragment header, if there is one.
    pub fragment: Option<Fragment>,
}

impl UpperLayer {
    /// Whether the upper-layer header is really at `offset`: not in a
    /// fragment other than the first (RFC 8200 §4.5).
    pub fn has_header(&self) -> bool {
        self.fragment.is_none_or(|f| f.offset == 0)
    }
}

/// The Fragment header's fields (RFC 8200 §4.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fragment {
    /// Offset in bytes.
    pub offset: u16,
    pub more: bool,
    pub ident: u32,
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

    /// Checks that the buffer holds the fixed header and Payload Length
    /// bytes after it (more is allowed: [`Packet::payload`] ends there).
    pub fn check_len(&self) -> Result<()> {
        let len = self.buffer.as_ref().len();
        if len < HEADER_LEN {
            return Err(WireError::Truncated);
        }
        if len < HEADER_LEN + usize::from(self.payload_len()) {
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

    fn ver_tc_flow(&self) -> u32 {
        be32(self.buffer.as_ref(), field::VER_TC_FLOW.start)
    }

    pub fn version(&self) -> u8 {
        (self.ver_tc_flow() >> 28) as u8
    }

    pub fn traffic_class(&self) -> u8 {
        (self.ver_tc_flow() >> 20) as u8
    }

    pub fn flow_label(&self) -> u32 {
        self.ver_tc_flow() & 0x000f_ffff
    }

    pub fn payload_len(&self) -> u16 {
        be16(self.buffer.as_ref(), field::LENGTH.start)
    }

    /// Header length plus payload length.
    pub fn total_len(&self) -> usize {
        HEADER_LEN + usize::from(self.payload_len())
    }

    pub fn next_header(&self) -> IpProtocol {
        IpProtocol(self.buffer.as_ref()[field::NXT_HDR])
    }

    pub fn hop_limit(&self) -> u8 {
        self.buffer.as_ref()[field::HOP_LIMIT]
    }

    pub fn src_addr(&self) -> Ipv6Addr {
        let mut a = [0u8; 16];
        a.copy_from_slice(&self.buffer.as_ref()[field::SRC_ADDR]);
        Ipv6Addr::from(a)
    }

    pub fn dst_addr(&self) -> Ipv6Addr {
        let mut a = [0u8; 16];
        a.copy_from_slice(&self.buffer.as_ref()[field::DST_ADDR]);
        Ipv6Addr::from(a)
    }

    /// Everything after the fixed header, up to Payload Length.
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..self.total_len()]
    }

    /// Walks Hop-by-Hop Options, Routing, Fragment and Destination Options
    /// headers (RFC 8200 §4.3–4.6) to the first other header, at most
    /// [`MAX_EXT_HEADERS`] of them. Every length is checked against Payload
    /// Length. A Fragment header with a non-zero offset ends the walk
    /// (there is no upper-layer header in that fragment:
    /// [`UpperLayer::has_header`]).
    ///
    /// Needs a checked view.
    pub fn upper_layer(&self) -> Result<UpperLayer> {
        let b = &self.buffer.as_ref()[..self.total_len()];
        let mut proto = self.next_header();
        let mut at = HEADER_LEN;
        let mut fragment = None;
        for _ in 0..=MAX_EXT_HEADERS {
            let len = match proto {
                IpProtocol::HOP_BY_HOP | IpProtocol::IPV6_ROUTE | IpProtocol::IPV6_OPTS => {
                    // Hdr Ext Len: 8-octet units, not counting the first 8.
                    let l = *b.get(at + 1).ok_or(WireError::Truncated)?;
                    (usize::from(l) + 1) * 8
                }
                IpProtocol::IPV6_FRAG => 8,
                _ => {
                    return Ok(UpperLayer {
                        protocol: proto,
                        offset: at,
                        fragment,
                    })
                }
            };
            if proto == IpProtocol::HOP_BY_HOP && at != HEADER_LEN {
                // RFC 8200 §4.1: Hop-by-Hop only right after the IPv6 header.
                return Err(WireError::Malformed);
            }
            if b.len() < at + len {
                return Err(WireError::Truncated);
            }
            let next = IpProtocol(b[at]);
            if proto == IpProtocol::IPV6_FRAG {
                if fragment.is_some() {
                    return Err(WireError::Malformed);
                }
                let off_m = be16(b, at + 2);
                let f = Fragment {
                    offset: off_m & 0xfff8,
                    more: off_m & 1 != 0,
                    ident: be32(b, at + 4),
                };
                fragment = Some(f);
                if f.offset != 0 {
                    return Ok(UpperLayer {
                        protocol: next,
                        offset: at + len,
                        fragment,
                    });
                }
            }
            proto = next;
            at += len;
        }
        Err(WireError::Malformed)
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// Writes version 6, traffic class and flow label.
    pub fn set_ver_tc_flow(&mut self, traffic_class: u8, flow_label: u32) {
        let v = (6u32 << 28) | (u32::from(traffic_class) << 20) | (flow_label & 0x000f_ffff);
        self.buffer.as_mut()[field::VER_TC_FLOW].copy_from_slice(&v.to_be_bytes());
    }

    pub fn set_payload_len(&mut self, v: u16) {
        put16(self.buffer.as_mut(), field::LENGTH.start, v);
    }

    pub fn set_next_header(&mut self, v: IpProtocol) {
        self.buffer.as_mut()[field::NXT_HDR] = v.0;
    }

    pub fn set_hop_limit(&mut self, v: u8) {
        self.buffer.as_mut()[field::HOP_LIMIT] = v;
    }

    pub fn set_src_addr(&mut self, a: Ipv6Addr) {
        self.buffer.as_mut()[field::SRC_ADDR].copy_from_slice(&a.octets());
    }

    pub fn set_dst_addr(&mut self, a: Ipv6Addr) {
        self.buffer.as_mut()[field::DST_ADDR].copy_from_slice(&a.octets());
    }

    /// Decrements the hop limit (IPv6 has no header checksum). Returns the
    /// new value; 0 stays 0.
    pub fn decrement_hop_limit(&mut self) -> u8 {
        let h = self.hop_limit().saturating_sub(1);
        self.set_hop_limit(h);
        h
    }

    pub fn payload_mut(&mut self) -> &mut [u8] {
        let total = self.total_len();
        &mut self.buffer.as_mut()[HEADER_LEN..total]
    }
}

/// The meaning of an IPv6 fixed header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Repr {
    pub src_addr: Ipv6Addr,
    pub dst_addr: Ipv6Addr,
    /// The fixed header's Next Header (may be an extension header).
    pub next_header: IpProtocol,
    pub payload_len: usize,
    pub hop_limit: u8,
    pub traffic_class: u8,
    pub flow_label: u32,
}

impl Repr {
    /// Validates version 6 and the lengths.
    pub fn parse<T: AsRef<[u8]>>(packet: &Packet<T>) -> Result<Repr> {
        packet.check_len()?;
        if packet.version() != 6 {
            return Err(WireError::Malformed);
        }
        if packet.payload_len() == 0 && packet.next_header() == IpProtocol::HOP_BY_HOP {
            // A jumbogram (RFC 2675): not carried.
            return Err(WireError::Unsupported);
        }
        Ok(Repr {
            src_addr: packet.src_addr(),
            dst_addr: packet.dst_addr(),
            next_header: packet.next_header(),
            payload_len: usize::from(packet.payload_len()),
            hop_limit: packet.hop_limit(),
            traffic_class: packet.traffic_class(),
            flow_label: packet.flow_label(),
        })
    }

    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN
    }

    /// Writes the fixed header. Panics if `payload_len` > 65535 (a caller
    /// bug).
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut Packet<T>) {
        packet.set_ver_tc_flow(self.traffic_class, self.flow_label);
        packet.set_payload_len(u16::try_from(self.payload_len).expect("IPv6 payload > 65535"));
        packet.set_next_header(self.next_header);
        packet.set_hop_limit(self.hop_limit);
        packet.set_src_addr(self.src_addr);
        packet.set_dst_addr(self.dst_addr);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::fixtures::{
        ICMPV6_ECHO, IPV6_EXT_SYN, IPV6_FRAG_FIRST, IPV6_FRAG_SECOND, TCPV6_SYN, UDPV6,
    };
    use crate::wire::mutate;

    fn a1() -> Ipv6Addr {
        "2001:db8:1::1".parse().unwrap()
    }
    fn b2() -> Ipv6Addr {
        "2001:db8:2::2".parse().unwrap()
    }

    fn echo_repr() -> Repr {
        Repr {
            src_addr: a1(),
            dst_addr: b2(),
            next_header: IpProtocol::ICMPV6,
            payload_len: 32,
            hop_limit: 64,
            traffic_class: 0,
            flow_label: 0x8b917,
        }
    }

    #[test]
    fn deconstruct() {
        let p = Packet::new_checked(&ICMPV6_ECHO[..]).unwrap();
        assert_eq!(p.version(), 6);
        assert_eq!(p.traffic_class(), 0);
        assert_eq!(p.flow_label(), 0x8b917);
        assert_eq!(p.payload_len(), 32);
        assert_eq!(p.next_header(), IpProtocol::ICMPV6);
        assert_eq!(p.hop_limit(), 64);
        assert_eq!(p.src_addr(), a1());
        assert_eq!(p.dst_addr(), b2());
        assert_eq!(p.payload(), &ICMPV6_ECHO[40..]);
        let u = p.upper_layer().unwrap();
        assert_eq!(
            (u.protocol, u.offset, u.fragment),
            (IpProtocol::ICMPV6, 40, None)
        );
    }

    #[test]
    fn walk_extension_headers() {
        // scapy: hop-by-hop (8) + destination options (8) + TCP.
        let p = Packet::new_checked(&IPV6_EXT_SYN[..]).unwrap();
        assert_eq!(p.next_header(), IpProtocol::HOP_BY_HOP);
        let u = p.upper_layer().unwrap();
        assert_eq!((u.protocol, u.offset), (IpProtocol::TCP, 56));
        assert!(u.has_header());
        // Fragment header, first fragment: the ICMPv6 header is there.
        let p = Packet::new_checked(&IPV6_FRAG_FIRST[..]).unwrap();
        let u = p.upper_layer().unwrap();
        assert_eq!((u.protocol, u.offset), (IpProtocol::ICMPV6, 48));
        assert_eq!(
            u.fragment,
            Some(Fragment {
                offset: 0,
                more: true,
                ident: 0x0d17_9fac
            })
        );
        assert!(u.has_header());
        // Second fragment: offset 1232, no upper-layer header in it.
        let p = Packet::new_checked(&IPV6_FRAG_SECOND[..]).unwrap();
        let u = p.upper_layer().unwrap();
        assert_eq!(u.fragment.unwrap().offset, 1232);
        assert!(!u.fragment.unwrap().more);
        assert!(!u.has_header());
        for (pkt, proto) in [
            (&TCPV6_SYN[..], IpProtocol::TCP),
            (&UDPV6[..], IpProtocol::UDP),
        ] {
            let u = Packet::new_checked(pkt).unwrap().upper_layer().unwrap();
            assert_eq!((u.protocol, u.offset), (proto, 40));
        }
    }

    #[test]
    fn walk_is_bounded_and_checked() {
        // A chain of destination options headers longer than the limit.
        let n = MAX_EXT_HEADERS + 1;
        let mut buf = vec![0u8; 40 + 8 * n + 8];
        let mut p = Packet::new_unchecked(&mut buf[..]);
        p.set_ver_tc_flow(0, 0);
        p.set_payload_len((8 * n + 8) as u16);
        p.set_next_header(IpProtocol::IPV6_OPTS);
        for i in 0..n {
            buf[40 + 8 * i] = IpProtocol::IPV6_OPTS.0;
        }
        let p = Packet::new_checked(&buf[..]).unwrap();
        assert_eq!(p.upper_layer().unwrap_err(), WireError::Malformed);
        // An extension header longer than the payload.
        let mut bad = IPV6_EXT_SYN;
        bad[41] = 200;
        let p = Packet::new_checked(&bad[..]).unwrap();
        assert_eq!(p.upper_layer().unwrap_err(), WireError::Truncated);
        // Hop-by-hop anywhere but first.
        let mut bad = IPV6_EXT_SYN;
        bad[48] = 0;
        let p = Packet::new_checked(&bad[..]).unwrap();
        assert_eq!(p.upper_layer().unwrap_err(), WireError::Malformed);
    }

    #[test]
    fn construct() {
        let mut buf = [0u8; 72];
        buf[40..].copy_from_slice(&ICMPV6_ECHO[40..]);
        let mut p = Packet::new_unchecked(&mut buf[..]);
        p.set_ver_tc_flow(0, 0x8b917);
        p.set_payload_len(32);
        p.set_next_header(IpProtocol::ICMPV6);
        p.set_hop_limit(64);
        p.set_src_addr(a1());
        p.set_dst_addr(b2());
        assert_eq!(buf, ICMPV6_ECHO);
    }

    #[test]
    fn check_len() {
        assert_eq!(
            Packet::new_checked(&ICMPV6_ECHO[..39]).unwrap_err(),
            WireError::Truncated
        );
        assert_eq!(
            Packet::new_checked(&ICMPV6_ECHO[..71]).unwrap_err(),
            WireError::Truncated
        );
        assert!(Packet::new_checked(&ICMPV6_ECHO[..]).is_ok());
    }

    #[test]
    fn parse() {
        let p = Packet::new_checked(&ICMPV6_ECHO[..]).unwrap();
        assert_eq!(Repr::parse(&p).unwrap(), echo_repr());
        let mut bad = ICMPV6_ECHO;
        bad[0] = 0x40;
        assert_eq!(
            Repr::parse(&Packet::new_unchecked(&bad[..])).unwrap_err(),
            WireError::Malformed
        );
    }

    #[test]
    fn emit() {
        let mut buf = [0u8; 72];
        buf[40..].copy_from_slice(&ICMPV6_ECHO[40..]);
        echo_repr().emit(&mut Packet::new_unchecked(&mut buf[..]));
        assert_eq!(buf, ICMPV6_ECHO);
    }

    #[test]
    fn buffer_len() {
        assert_eq!(echo_repr().buffer_len(), 40);
    }

    #[test]
    fn garbage_never_panics() {
        for seed in [&ICMPV6_ECHO[..], &IPV6_EXT_SYN[..], &IPV6_FRAG_SECOND[..]] {
            mutate::variants(seed, 5000, |b| {
                if let Ok(p) = Packet::new_checked(b) {
                    let _ = (p.payload(), p.upper_layer());
                    let _ = Repr::parse(&p);
                }
            });
        }
    }
}
