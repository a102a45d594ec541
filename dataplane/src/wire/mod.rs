//! Zero-copy views of the packets the dataplane touches around ESP.
//!
//! Each header has the same shape (smoltcp's `wire`):
//!
//! - `Packet<T: AsRef<[u8]>>`: a view over a buffer, with one accessor per
//!   field read straight from the bytes (the byte ranges live in a private
//!   `mod field`), setters when `T: AsMut<[u8]>`, and `check_len` /
//!   `new_checked`.
//! - `Repr`: the header's meaning, validated by `Repr::parse`, written back
//!   by `Repr::emit` into a buffer of at least `Repr::buffer_len` bytes.
//!
//! # The panic contract
//!
//! Nothing here panics on what a peer sent. `Packet::new_checked` (or
//! `check_len`) validates every length the header claims against the buffer;
//! after that every accessor and `Repr::parse` stays in bounds whatever the
//! bytes say. `Packet::new_unchecked` skips that check, and its accessors
//! may then panic on a short buffer: it is for buffers we just sized
//! ourselves (`emit` paths). `Repr::emit` into a buffer shorter than
//! `buffer_len` panics: that is a caller bug, not peer input. Every parser
//! has a garbage/mutation loop in its tests proving the first half.
//!
//! Modules: [`ipv4`] (RFC 791), [`ipv6`] (RFC 8200, fixed header and the
//! walk past extension headers), [`udp`] (RFC 768), [`tcp`] (RFC 9293, the
//! parts MSS clamping needs), [`icmpv4`] (RFC 792), [`icmpv6`] (RFC 4443),
//! [`gre`] (RFC 2784, RFC 2890), [`checksum`] (RFC 1071, RFC 1624).

pub mod checksum;
pub mod gre;
pub mod icmpv4;
pub mod icmpv6;
pub mod ipv4;
pub mod ipv6;
pub mod tcp;
pub mod udp;

#[cfg(test)]
pub(crate) mod fixtures;

use std::fmt;

/// Why bytes could not be read as the header they claim to be.
///
/// `Copy` and allocation-free: a peer sending garbage costs a counter
/// increment, never a `String`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// The buffer is shorter than the header, or than a length it carries.
    #[error("truncated packet")]
    Truncated,
    /// A field has a value the RFC forbids (bad version, header length
    /// smaller than the fixed header, reserved bits set, bad checksum…).
    #[error("malformed packet")]
    Malformed,
    /// Well formed, but nothing we handle (unknown ICMP type, GRE version 1…).
    #[error("unsupported packet")]
    Unsupported,
}

pub type Result<T> = core::result::Result<T, WireError>;

/// An IP protocol number (IANA "Assigned Internet Protocol Numbers"): the
/// IPv4 Protocol and IPv6 Next Header field. Unknown values survive.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IpProtocol(pub u8);

impl IpProtocol {
    /// IPv6 Hop-by-Hop Options (RFC 8200 §4.3).
    pub const HOP_BY_HOP: IpProtocol = IpProtocol(0);
    pub const ICMP: IpProtocol = IpProtocol(1);
    /// IPv4 encapsulation (IP-in-IP).
    pub const IPV4: IpProtocol = IpProtocol(4);
    pub const TCP: IpProtocol = IpProtocol(6);
    pub const UDP: IpProtocol = IpProtocol(17);
    /// IPv6 encapsulation.
    pub const IPV6: IpProtocol = IpProtocol(41);
    /// IPv6 Routing header (RFC 8200 §4.4).
    pub const IPV6_ROUTE: IpProtocol = IpProtocol(43);
    /// IPv6 Fragment header (RFC 8200 §4.5).
    pub const IPV6_FRAG: IpProtocol = IpProtocol(44);
    pub const GRE: IpProtocol = IpProtocol(47);
    pub const ESP: IpProtocol = IpProtocol(50);
    /// Authentication Header (RFC 4302).
    pub const AH: IpProtocol = IpProtocol(51);
    pub const ICMPV6: IpProtocol = IpProtocol(58);
    /// IPv6 No Next Header (RFC 8200 §4.7).
    pub const IPV6_NO_NEXT: IpProtocol = IpProtocol(59);
    /// IPv6 Destination Options (RFC 8200 §4.6).
    pub const IPV6_OPTS: IpProtocol = IpProtocol(60);
}

impl fmt::Debug for IpProtocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match *self {
            IpProtocol::HOP_BY_HOP => "HopByHop",
            IpProtocol::ICMP => "Icmp",
            IpProtocol::IPV4 => "Ipv4",
            IpProtocol::TCP => "Tcp",
            IpProtocol::UDP => "Udp",
            IpProtocol::IPV6 => "Ipv6",
            IpProtocol::IPV6_ROUTE => "Ipv6Route",
            IpProtocol::IPV6_FRAG => "Ipv6Frag",
            IpProtocol::GRE => "Gre",
            IpProtocol::ESP => "Esp",
            IpProtocol::AH => "Ah",
            IpProtocol::ICMPV6 => "Icmpv6",
            IpProtocol::IPV6_NO_NEXT => "Ipv6NoNext",
            IpProtocol::IPV6_OPTS => "Ipv6Opts",
            IpProtocol(n) => return write!(f, "IpProtocol({n})"),
        };
        f.write_str(name)
    }
}

impl From<u8> for IpProtocol {
    fn from(v: u8) -> Self {
        IpProtocol(v)
    }
}

/// An EtherType (IEEE 802 numbers), as GRE's Protocol Type carries it
/// (RFC 2784 §2.4). Unknown values survive.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EtherType(pub u16);

impl EtherType {
    /// Protocol 0: what the inner GRE header of a Cisco keepalive carries.
    pub const NONE: EtherType = EtherType(0);
    pub const IPV4: EtherType = EtherType(0x0800);
    /// Transparent Ethernet Bridging (not carried by anyhub).
    pub const TEB: EtherType = EtherType(0x6558);
    pub const IPV6: EtherType = EtherType(0x86dd);
}

impl fmt::Debug for EtherType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            EtherType::NONE => f.write_str("None"),
            EtherType::IPV4 => f.write_str("Ipv4"),
            EtherType::TEB => f.write_str("Teb"),
            EtherType::IPV6 => f.write_str("Ipv6"),
            EtherType(n) => write!(f, "EtherType({n:#06x})"),
        }
    }
}

/// The IP version of a packet from its first nibble, without parsing more.
pub fn ip_version(buf: &[u8]) -> Option<u8> {
    buf.first().map(|b| b >> 4)
}

#[inline]
pub(crate) fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

#[inline]
pub(crate) fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

#[inline]
pub(crate) fn put16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_be_bytes());
}

#[inline]
pub(crate) fn put32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_be_bytes());
}

/// A deterministic byte mutator for the "garbage never panics" loops: a
/// xorshift generator, so a failing case is reproducible from its seed.
#[cfg(test)]
pub(crate) mod mutate {
    pub struct Rng(u64);

    impl Rng {
        pub fn new(seed: u64) -> Rng {
            Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
        }

        pub fn next(&mut self) -> u64 {
            let mut x = self.0;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.0 = x;
            x
        }

        pub fn below(&mut self, n: usize) -> usize {
            (self.next() % n.max(1) as u64) as usize
        }
    }

    /// Yields `rounds` variants of `seed`: bytes flipped, set to edge values,
    /// the buffer truncated or extended, plus pure random buffers.
    pub fn variants(seed: &[u8], rounds: usize, mut f: impl FnMut(&[u8])) {
        let mut rng = Rng::new(seed.len() as u64 + 1);
        let mut buf = Vec::with_capacity(seed.len() + 64);
        for round in 0..rounds {
            buf.clear();
            buf.extend_from_slice(seed);
            match round % 4 {
                0 => {
                    for _ in 0..1 + rng.below(4) {
                        if !buf.is_empty() {
                            let i = rng.below(buf.len());
                            buf[i] = rng.next() as u8;
                        }
                    }
                }
                1 => {
                    if !buf.is_empty() {
                        let i = rng.below(buf.len());
                        buf[i] = [0x00, 0xff, 0x7f, 0x80, 0x01][rng.below(5)];
                    }
                }
                2 => {
                    let n = rng.below(buf.len() + 1);
                    buf.truncate(n);
                }
                _ => {
                    buf.clear();
                    for _ in 0..rng.below(seed.len() + 64) {
                        buf.push(rng.next() as u8);
                    }
                    // Keep the version nibble often, to get past the first check.
                    if let (Some(b), Some(s)) = (buf.first_mut(), seed.first()) {
                        if rng.below(2) == 0 {
                            *b = (*b & 0x0f) | (s & 0xf0);
                        }
                    }
                }
            }
            f(&buf);
        }
    }
}
