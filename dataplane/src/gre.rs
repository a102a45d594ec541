//! GRE tunnels (RFC 2784, keys RFC 2890) over IP protocol 47, sans-IO:
//! bytes in, a verdict (and byte ranges) out.
//!
//! GRE is stateless, which is what makes it anycast-friendly: any node
//! that has a tunnel's configuration can decapsulate what arrives for it
//! and encapsulate the return traffic. A tunnel is identified by the outer
//! (source, destination, key): the customer's endpoint, our anycast
//! address, and the optional RFC 2890 key (so several tunnels may share a
//! pair of endpoints).
//!
//! **Keepalives.** Cisco-style GRE keepalives need nothing from the far
//! end but a router: the customer's router sends a GRE packet whose inner
//! packet is addressed *from us back to the router*, and whose payload is
//! again a GRE header (protocol 0). Decapsulating it yields a packet that
//! an ordinary router would route straight back, and the customer's
//! router counts the tunnel up when it returns. We recognise it (inner
//! protocol GRE, inner source our address, inner destination the router)
//! and hand back the inner packet to send as it is: it can only ever go to
//! the tunnel's own configured endpoint, so it cannot be abused to reflect
//! traffic elsewhere.
//!
//! Sequence numbers (RFC 2890 §2.2) are accepted and ignored: with anycast
//! each node sees only part of a tunnel's packets, so in-order delivery
//! cannot be enforced per node, and RFC 2890 makes it optional. Outer
//! fragments are dropped (no reassembly); the MTU and MSS machinery keeps
//! the customer from sending them ([`crate::mss`]).

use std::collections::HashMap;
use std::net::IpAddr;
use std::ops::Range;

use crate::icmp_error::ErrorSource;
use crate::mss::{Encap, MssClamp};
use crate::path::{PathDrop, Selectors, TunnelPath};
use crate::route::{TenantId, TunnelId};
use crate::wire::{gre, ip_version, ipv4, ipv6, EtherType, IpProtocol, WireError};

/// Outer IPv6 header plus the longest GRE header we emit (with key).
pub const MAX_OVERHEAD: usize = ipv6::HEADER_LEN + 8;

/// Default outer TTL / hop limit.
pub const DEFAULT_TTL: u8 = 64;
/// Default outer path MTU.
pub const DEFAULT_PATH_MTU: usize = 1500;

/// One GRE tunnel's configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GreTunnelConfig {
    pub id: TunnelId,
    pub tenant: TenantId,
    /// The customer's endpoint (outer source of what we receive).
    pub remote: IpAddr,
    /// Our (anycast) address (outer destination of what we receive).
    pub local: IpAddr,
    /// RFC 2890 key, both directions.
    pub key: Option<u32>,
    /// Outer path MTU towards the customer.
    pub path_mtu: usize,
    /// Outer TTL / hop limit.
    pub ttl: u8,
}

impl GreTunnelConfig {
    /// The largest inner packet (RFC 2784 §2: 4-byte header; +4 with a key).
    pub fn inner_mtu(&self) -> usize {
        Encap::Gre {
            key: self.key.is_some(),
            outer_v6: self.local.is_ipv6(),
        }
        .inner_mtu(self.path_mtu)
    }

    /// Bytes [`GreTunnels::encapsulate`] puts in front of the inner packet.
    pub fn overhead(&self) -> usize {
        let ip = if self.local.is_ipv6() {
            ipv6::HEADER_LEN
        } else {
            ipv4::HEADER_LEN
        };
        ip + 4 + if self.key.is_some() { 4 } else { 0 }
    }

    /// What the forwarding path needs: MTU, MSS clamp (default from the
    /// real overhead), selectors ([`Selectors::any`] when none are
    /// configured).
    pub fn path(&self, selectors: Selectors, mss: Option<MssClamp>) -> TunnelPath {
        let mtu = self.inner_mtu();
        TunnelPath {
            id: self.id,
            tenant: self.tenant,
            inner_mtu: mtu,
            mss: Some(mss.unwrap_or_else(|| MssClamp::for_inner_mtu(mtu))),
            selectors,
            error_source: ErrorSource::default(),
        }
    }
}

/// Why a set of GRE tunnels was refused; names the tunnel.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum GreConfigError {
    #[error("GRE tunnel {0:?}: local and remote addresses are of different families")]
    MixedFamilies(TunnelId),
    #[error("GRE tunnels {0:?} and {1:?} have the same endpoints and key")]
    Duplicate(TunnelId, TunnelId),
    #[error("GRE tunnel {0:?}: path MTU {1} leaves no room for a packet")]
    PathMtu(TunnelId, usize),
}

type Endpoints = (IpAddr, IpAddr, Option<u32>);

/// A multiply-rotate hasher for the endpoint index. The index is built
/// from configuration only; packets look keys up but never insert, so a
/// peer cannot degrade it by choosing colliding addresses, and SipHash's
/// protection is not needed on this per-packet path (it measured a third
/// of decapsulation time).
#[derive(Clone, Copy, Debug, Default)]
struct FastHasher(u64);

impl std::hash::Hasher for FastHasher {
    fn write(&mut self, bytes: &[u8]) {
        for c in bytes.chunks(8) {
            let mut w = [0u8; 8];
            w[..c.len()].copy_from_slice(c);
            self.write_u64(u64::from_le_bytes(w));
        }
    }

    fn write_u64(&mut self, v: u64) {
        self.0 = (self.0.rotate_left(5) ^ v).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }

    fn write_u32(&mut self, v: u32) {
        self.write_u64(u64::from(v));
    }

    fn write_u8(&mut self, v: u8) {
        self.write_u64(u64::from(v));
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

type FastMap<K, V> = HashMap<K, V, std::hash::BuildHasherDefault<FastHasher>>;

/// Every GRE tunnel of the node; build whole, publish whole.
#[derive(Clone, Debug, Default)]
pub struct GreTunnels {
    tunnels: Vec<GreTunnelConfig>,
    by_endpoints: FastMap<Endpoints, usize>,
    by_id: HashMap<TunnelId, usize>,
}

/// What [`GreTunnels::decapsulate`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decap<'t> {
    /// An inner IPv4/IPv6 packet of `tunnel` at `pkt[range]`.
    Inner {
        tunnel: &'t GreTunnelConfig,
        range: Range<usize>,
    },
    /// A keepalive of `tunnel`: send `pkt[range]` (an IP packet from our
    /// address to the tunnel's remote endpoint) out as it is.
    Keepalive {
        tunnel: &'t GreTunnelConfig,
        range: Range<usize>,
    },
    Drop(PathDrop),
}

/// Why [`GreTunnels::encapsulate`] could not.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EncapError {
    /// Less headroom before the inner packet than the headers need.
    Headroom,
    /// Not an IPv4/IPv6 packet, or the range is outside the buffer.
    BadInner,
    /// The result would exceed the outer family's maximum length.
    TooLong,
}

fn gre_error(e: WireError) -> PathDrop {
    match e {
        WireError::Unsupported => PathDrop::GreUnsupported,
        _ => PathDrop::GreMalformed,
    }
}

impl GreTunnels {
    /// Validates and indexes `configs`; the first problem refuses all.
    pub fn build(configs: Vec<GreTunnelConfig>) -> Result<GreTunnels, GreConfigError> {
        let mut t = GreTunnels {
            by_endpoints: FastMap::with_capacity_and_hasher(configs.len(), Default::default()),
            by_id: HashMap::with_capacity(configs.len()),
            tunnels: Vec::with_capacity(configs.len()),
        };
        for (i, c) in configs.into_iter().enumerate() {
            if c.local.is_ipv4() != c.remote.is_ipv4() {
                return Err(GreConfigError::MixedFamilies(c.id));
            }
            if c.inner_mtu() < 68 {
                return Err(GreConfigError::PathMtu(c.id, c.path_mtu));
            }
            if let Some(&j) = t.by_endpoints.get(&(c.remote, c.local, c.key)) {
                return Err(GreConfigError::Duplicate(t.tunnels[j].id, c.id));
            }
            if let Some(&j) = t.by_id.get(&c.id) {
                return Err(GreConfigError::Duplicate(t.tunnels[j].id, c.id));
            }
            t.by_endpoints.insert((c.remote, c.local, c.key), i);
            t.by_id.insert(c.id, i);
            t.tunnels.push(c);
        }
        Ok(t)
    }

    /// The position of tunnel `id` in [`GreTunnels::iter`]'s order.
    pub fn index_of(&self, id: TunnelId) -> Option<usize> {
        self.by_id.get(&id).copied()
    }

    pub fn get(&self, id: TunnelId) -> Option<&GreTunnelConfig> {
        self.by_id.get(&id).map(|&i| &self.tunnels[i])
    }

    pub fn iter(&self) -> impl Iterator<Item = &GreTunnelConfig> {
        self.tunnels.iter()
    }

    pub fn len(&self) -> usize {
        self.tunnels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tunnels.is_empty()
    }

    /// Decapsulates one outer IP packet (as a raw IP socket for protocol
    /// 47 delivers it: outer header included).
    pub fn decapsulate<'t>(&'t self, pkt: &[u8]) -> Decap<'t> {
        // Outer header: valid, GRE, not a fragment.
        let (src, dst, gre_at, end) = match ip_version(pkt) {
            Some(4) => {
                let Ok(p) = ipv4::Packet::new_checked(pkt) else {
                    return Decap::Drop(PathDrop::GreMalformed);
                };
                if ipv4::Repr::parse(&p).is_err() || p.protocol() != IpProtocol::GRE {
                    return Decap::Drop(PathDrop::GreMalformed);
                }
                if p.more_frags() || p.frag_offset() != 0 {
                    return Decap::Drop(PathDrop::GreFragment);
                }
                (
                    IpAddr::V4(p.src_addr()),
                    IpAddr::V4(p.dst_addr()),
                    p.header_len(),
                    usize::from(p.total_len()),
                )
            }
            Some(6) => {
                let Ok(p) = ipv6::Packet::new_checked(pkt) else {
                    return Decap::Drop(PathDrop::GreMalformed);
                };
                let Ok(u) = p.upper_layer() else {
                    return Decap::Drop(PathDrop::GreMalformed);
                };
                if u.fragment.is_some() {
                    return Decap::Drop(PathDrop::GreFragment);
                }
                if u.protocol != IpProtocol::GRE {
                    return Decap::Drop(PathDrop::GreMalformed);
                }
                (
                    IpAddr::V6(p.src_addr()),
                    IpAddr::V6(p.dst_addr()),
                    u.offset,
                    p.total_len(),
                )
            }
            _ => return Decap::Drop(PathDrop::GreMalformed),
        };
        let g = match gre::Packet::new_checked(&pkt[gre_at..end]) {
            Ok(g) => g,
            Err(e) => return Decap::Drop(gre_error(e)),
        };
        let repr = match gre::Repr::parse(&g) {
            Ok(r) => r,
            Err(e) => return Decap::Drop(gre_error(e)),
        };
        let Some(&i) = self.by_endpoints.get(&(src, dst, repr.key)) else {
            return Decap::Drop(PathDrop::GreUnknownTunnel);
        };
        let tunnel = &self.tunnels[i];
        let inner_at = gre_at + repr.header_len();
        let inner = &pkt[inner_at..end];
        let inner_len = match (repr.protocol, ip_version(inner)) {
            (EtherType::IPV4, Some(4)) => match ipv4::Packet::new_checked(inner) {
                Ok(p) => usize::from(p.total_len()),
                Err(_) => return Decap::Drop(PathDrop::InnerMalformed),
            },
            (EtherType::IPV6, Some(6)) => match ipv6::Packet::new_checked(inner) {
                Ok(p) => p.total_len(),
                Err(_) => return Decap::Drop(PathDrop::InnerMalformed),
            },
            (EtherType::IPV4 | EtherType::IPV6, _) => return Decap::Drop(PathDrop::InnerMalformed),
            _ => return Decap::Drop(PathDrop::GreUnsupported),
        };
        let range = inner_at..inner_at + inner_len;
        if is_keepalive(tunnel, &pkt[range.clone()]) {
            return Decap::Keepalive { tunnel, range };
        }
        Decap::Inner { tunnel, range }
    }

    /// Puts outer IP + GRE headers in front of the inner packet at
    /// `buf[inner]` (the caller leaves [`GreTunnelConfig::overhead`] bytes
    /// of headroom); returns the range of the whole outer packet.
    /// `fragment_outer`: clear DF on an IPv4 outer header (the path said
    /// the inner packet may be fragmented); otherwise DF is set. The outer
    /// TOS / traffic class copies the inner one (RFC 2983's uniform model,
    /// RFC 6040 §4.1's normal mode for ECN). `ident` is the outer IPv4
    /// Identification (callers count up).
    pub fn encapsulate(
        &self,
        tunnel: &GreTunnelConfig,
        buf: &mut [u8],
        inner: Range<usize>,
        fragment_outer: bool,
        ident: u16,
    ) -> Result<Range<usize>, EncapError> {
        let hl = tunnel.overhead();
        if inner.start < hl {
            return Err(EncapError::Headroom);
        }
        let Some(inner_bytes) = buf.get(inner.clone()) else {
            return Err(EncapError::BadInner);
        };
        let (protocol, tos) = match ip_version(inner_bytes) {
            Some(4) if inner_bytes.len() >= ipv4::HEADER_LEN => (EtherType::IPV4, inner_bytes[1]),
            Some(6) if inner_bytes.len() >= ipv6::HEADER_LEN => (
                EtherType::IPV6,
                ipv6::Packet::new_unchecked(inner_bytes).traffic_class(),
            ),
            _ => return Err(EncapError::BadInner),
        };
        let start = inner.start - hl;
        let outer = &mut buf[start..inner.end];
        let g = gre::Repr {
            protocol,
            checksum: false,
            key: tunnel.key,
            sequence: None,
        };
        let ip_len = hl - g.header_len();
        g.emit(&mut gre::Packet::new_unchecked(&mut outer[ip_len..]));
        let payload_len = outer.len() - ip_len;
        match (tunnel.local, tunnel.remote) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                if outer.len() > usize::from(u16::MAX) {
                    return Err(EncapError::TooLong);
                }
                ipv4::Repr {
                    src_addr: s,
                    dst_addr: d,
                    protocol: IpProtocol::GRE,
                    payload_len,
                    ttl: tunnel.ttl,
                    dscp_ecn: tos,
                    ident,
                    dont_frag: !fragment_outer,
                    more_frags: false,
                    frag_offset: 0,
                }
                .emit(&mut ipv4::Packet::new_unchecked(&mut *outer));
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                if payload_len > usize::from(u16::MAX) {
                    return Err(EncapError::TooLong);
                }
                ipv6::Repr {
                    src_addr: s,
                    dst_addr: d,
                    next_header: IpProtocol::GRE,
                    payload_len,
                    hop_limit: tunnel.ttl,
                    traffic_class: tos,
                    flow_label: 0,
                }
                .emit(&mut ipv6::Packet::new_unchecked(&mut *outer));
            }
            // build() refuses mixed families.
            _ => return Err(EncapError::BadInner),
        }
        Ok(start..inner.end)
    }
}

/// A keepalive's inner packet: GRE from our address to the tunnel's remote
/// endpoint, with a valid GRE header after it.
fn is_keepalive(tunnel: &GreTunnelConfig, inner: &[u8]) -> bool {
    let (src, dst, gre_bytes) = match ip_version(inner) {
        Some(4) => {
            let Ok(p) = ipv4::Packet::new_checked(inner) else {
                return false;
            };
            // Cheap tests first: this runs on every decapsulated packet.
            if p.protocol() != IpProtocol::GRE
                || IpAddr::V4(p.src_addr()) != tunnel.local
                || p.is_non_initial_fragment()
                || ipv4::Repr::parse(&p).is_err()
            {
                return false;
            }
            let payload = &inner[p.header_len()..usize::from(p.total_len())];
            (IpAddr::V4(p.src_addr()), IpAddr::V4(p.dst_addr()), payload)
        }
        Some(6) => {
            let Ok(p) = ipv6::Packet::new_checked(inner) else {
                return false;
            };
            match p.upper_layer() {
                Ok(u) if u.protocol == IpProtocol::GRE && u.fragment.is_none() => (
                    IpAddr::V6(p.src_addr()),
                    IpAddr::V6(p.dst_addr()),
                    &inner[u.offset..p.total_len()],
                ),
                _ => return false,
            }
        }
        _ => return false,
    };
    src == tunnel.local
        && dst == tunnel.remote
        && gre::Packet::new_checked(gre_bytes)
            .ok()
            .is_some_and(|g| gre::Repr::parse(&g).is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::fixtures::{
        GRE_KEEPALIVE, GRE_KEY_V4, GRE_KEY_V4_IN_V6, GRE_SEQ_V6_IN_V4, ICMPV4_ECHO, UDPV4,
    };
    use crate::wire::mutate;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// The captures go from the "router" 192.0.2.1 / 2001:db8:1::1 to "us"
    /// 198.51.100.2 / 2001:db8:2::2.
    fn tunnels() -> GreTunnels {
        let t = |id, remote: &str, local: &str, key| GreTunnelConfig {
            id: TunnelId(id),
            tenant: TenantId(0),
            remote: ip(remote),
            local: ip(local),
            key,
            path_mtu: DEFAULT_PATH_MTU,
            ttl: DEFAULT_TTL,
        };
        GreTunnels::build(vec![
            t(1, "192.0.2.1", "198.51.100.2", Some(0x1234)),
            t(2, "192.0.2.1", "198.51.100.2", None),
            t(3, "2001:db8:1::1", "2001:db8:2::2", Some(0xabcd)),
        ])
        .unwrap()
    }

    #[test]
    fn decapsulates_by_endpoints_and_key() {
        let t = tunnels();
        let Decap::Inner { tunnel, range } = t.decapsulate(&GRE_KEY_V4) else {
            panic!()
        };
        assert_eq!((tunnel.id, range.clone()), (TunnelId(1), 28..66));
        let inner = ipv4::Packet::new_checked(&GRE_KEY_V4[range]).unwrap();
        assert_eq!(
            inner.dst_addr(),
            "10.2.0.1".parse::<std::net::Ipv4Addr>().unwrap()
        );
        // Same endpoints, no key: the other tunnel; IPv6 inside, seq ignored.
        let Decap::Inner { tunnel, range } = t.decapsulate(&GRE_SEQ_V6_IN_V4) else {
            panic!()
        };
        assert_eq!((tunnel.id, range), (TunnelId(2), 28..87));
        // IPv6 outer.
        let Decap::Inner { tunnel, range } = t.decapsulate(&GRE_KEY_V4_IN_V6) else {
            panic!()
        };
        assert_eq!((tunnel.id, range), (TunnelId(3), 48..76));
    }

    #[test]
    fn unknown_tunnels_and_bad_packets() {
        let t = tunnels();
        // Wrong key.
        let mut p = GRE_KEY_V4;
        p[27] = 0x35;
        assert_eq!(t.decapsulate(&p), Decap::Drop(PathDrop::GreUnknownTunnel));
        // Unknown source (checksum fixed up).
        let mut p = GRE_KEY_V4;
        {
            let mut ip = ipv4::Packet::new_unchecked(&mut p[..]);
            ip.set_src_addr("192.0.2.99".parse().unwrap());
            ip.fill_checksum();
        }
        assert_eq!(t.decapsulate(&p), Decap::Drop(PathDrop::GreUnknownTunnel));
        // Not GRE at all, and a broken outer checksum.
        assert_eq!(t.decapsulate(&UDPV4), Decap::Drop(PathDrop::GreMalformed));
        let mut p = GRE_KEY_V4;
        p[10] ^= 1;
        assert_eq!(t.decapsulate(&p), Decap::Drop(PathDrop::GreMalformed));
        // GRE version 1 (PPTP).
        let mut p = GRE_KEY_V4;
        p[21] |= 1;
        assert_eq!(t.decapsulate(&p), Decap::Drop(PathDrop::GreUnsupported));
        // An outer fragment.
        let mut p = GRE_KEY_V4;
        {
            let mut ip = ipv4::Packet::new_unchecked(&mut p[..]);
            ip.set_flags_frag(false, true, 0);
            ip.fill_checksum();
        }
        assert_eq!(t.decapsulate(&p), Decap::Drop(PathDrop::GreFragment));
        // Protocol type we do not carry (Ethernet bridging).
        let mut p = GRE_KEY_V4;
        p[22..24].copy_from_slice(&EtherType::TEB.0.to_be_bytes());
        assert_eq!(t.decapsulate(&p), Decap::Drop(PathDrop::GreUnsupported));
        // Says IPv4 inside, carries garbage.
        let mut p = GRE_KEY_V4;
        p[28] = 0x60;
        assert_eq!(t.decapsulate(&p), Decap::Drop(PathDrop::InnerMalformed));
        // Inner length longer than what is there.
        let mut p = GRE_KEY_V4;
        p[31] = 0xff;
        assert_eq!(t.decapsulate(&p), Decap::Drop(PathDrop::InnerMalformed));
    }

    #[test]
    fn keepalive_is_reflected() {
        let t = tunnels();
        let Decap::Keepalive { tunnel, range } = t.decapsulate(&GRE_KEEPALIVE) else {
            panic!("{:?}", t.decapsulate(&GRE_KEEPALIVE))
        };
        assert_eq!((tunnel.id, range.clone()), (TunnelId(2), 24..48));
        // What goes back: GRE from us to the router, sent as it is.
        let back = ipv4::Packet::new_checked(&GRE_KEEPALIVE[range]).unwrap();
        assert_eq!(
            back.src_addr(),
            "198.51.100.2".parse::<std::net::Ipv4Addr>().unwrap()
        );
        assert_eq!(
            back.dst_addr(),
            "192.0.2.1".parse::<std::net::Ipv4Addr>().unwrap()
        );
        assert_eq!(back.protocol(), IpProtocol::GRE);
        // Decapsulated again by the router (its view: remote = us), the
        // reflected packet is a plain GRE packet with protocol 0.
        let g = gre::Packet::new_checked(back.payload()).unwrap();
        assert_eq!(g.protocol_type(), EtherType::NONE);
        // An inner GRE packet addressed elsewhere is ordinary traffic,
        // never reflected.
        let mut p = GRE_KEEPALIVE;
        {
            let mut inner = ipv4::Packet::new_unchecked(&mut p[24..]);
            inner.set_dst_addr("203.0.113.7".parse().unwrap());
            inner.fill_checksum();
        }
        assert!(matches!(t.decapsulate(&p), Decap::Inner { .. }));
    }

    /// Encapsulating the capture's inner packet as the router did (its
    /// view: local 192.0.2.1, remote 198.51.100.2) gives scapy's bytes.
    #[test]
    fn encapsulation_equals_scapy() {
        let t = GreTunnels::build(vec![
            GreTunnelConfig {
                id: TunnelId(9),
                tenant: TenantId(0),
                remote: ip("198.51.100.2"),
                local: ip("192.0.2.1"),
                key: Some(0x1234),
                path_mtu: 1500,
                ttl: 64,
            },
            GreTunnelConfig {
                id: TunnelId(10),
                tenant: TenantId(0),
                remote: ip("2001:db8:2::2"),
                local: ip("2001:db8:1::1"),
                key: Some(0xabcd),
                path_mtu: 1500,
                ttl: 64,
            },
        ])
        .unwrap();
        let tun = t.get(TunnelId(9)).unwrap();
        let mut buf = [0u8; 66];
        buf[28..].copy_from_slice(&GRE_KEY_V4[28..]);
        // scapy: id 1, no DF.
        let r = t.encapsulate(tun, &mut buf, 28..66, true, 1).unwrap();
        assert_eq!(r, 0..66);
        assert_eq!(buf, GRE_KEY_V4);
        let tun6 = t.get(TunnelId(10)).unwrap();
        let mut buf = [0u8; 76];
        buf[48..].copy_from_slice(&GRE_KEY_V4_IN_V6[48..]);
        t.encapsulate(tun6, &mut buf, 48..76, false, 0).unwrap();
        assert_eq!(buf, GRE_KEY_V4_IN_V6);
        // And the round trip through our own decapsulation.
        let ours = GreTunnels::build(vec![GreTunnelConfig {
            remote: ip("192.0.2.1"),
            local: ip("198.51.100.2"),
            ..tun.clone()
        }])
        .unwrap();
        let mut buf = vec![0u8; 64 + ICMPV4_ECHO.len()];
        buf[64..].copy_from_slice(&ICMPV4_ECHO);
        let o = ours.get(TunnelId(9)).unwrap();
        let r = ours
            .encapsulate(o, &mut buf, 64..64 + ICMPV4_ECHO.len(), false, 7)
            .unwrap();
        assert_eq!(r.start, 64 - 28);
        let outer = ipv4::Packet::new_checked(&buf[r.clone()]).unwrap();
        assert!(outer.dont_frag());
        assert_eq!(
            outer.dst_addr(),
            "192.0.2.1".parse::<std::net::Ipv4Addr>().unwrap()
        );
        // Seen from the router, our packet decapsulates to the same inner.
        let router = GreTunnels::build(vec![tun.clone()]).unwrap();
        let Decap::Inner { range, .. } = router.decapsulate(&buf[r.clone()]) else {
            panic!()
        };
        assert_eq!(&buf[r][range], &ICMPV4_ECHO[..]);
    }

    #[test]
    fn encapsulation_errors() {
        let t = tunnels();
        let tun = t.get(TunnelId(1)).unwrap();
        let mut buf = [0u8; 100];
        buf[20..72].copy_from_slice(&ICMPV4_ECHO);
        assert_eq!(
            t.encapsulate(tun, &mut buf, 20..72, false, 0),
            Err(EncapError::Headroom)
        );
        assert_eq!(
            t.encapsulate(tun, &mut buf, 40..200, false, 0),
            Err(EncapError::BadInner)
        );
        assert_eq!(
            t.encapsulate(tun, &mut buf, 40..44, false, 0),
            Err(EncapError::BadInner)
        );
    }

    #[test]
    fn config_validation() {
        let base = GreTunnelConfig {
            id: TunnelId(1),
            tenant: TenantId(0),
            remote: ip("192.0.2.1"),
            local: ip("198.51.100.2"),
            key: None,
            path_mtu: 1500,
            ttl: 64,
        };
        let mixed = GreTunnelConfig {
            local: ip("2001:db8::1"),
            ..base.clone()
        };
        assert_eq!(
            GreTunnels::build(vec![mixed]).unwrap_err(),
            GreConfigError::MixedFamilies(TunnelId(1))
        );
        let dup = GreTunnelConfig {
            id: TunnelId(2),
            ..base.clone()
        };
        assert_eq!(
            GreTunnels::build(vec![base.clone(), dup]).unwrap_err(),
            GreConfigError::Duplicate(TunnelId(1), TunnelId(2))
        );
        let tiny = GreTunnelConfig {
            path_mtu: 60,
            ..base.clone()
        };
        assert!(matches!(
            GreTunnels::build(vec![tiny]),
            Err(GreConfigError::PathMtu(..))
        ));
        // The path facts: MTU 1476, Cisco's MSS 1436.
        let p = base.path(Selectors::any(), None);
        assert_eq!((p.inner_mtu, p.mss.unwrap().v4), (1476, 1436));
    }

    #[test]
    fn garbage_never_panics() {
        let t = tunnels();
        for seed in [&GRE_KEY_V4[..], &GRE_KEEPALIVE[..], &GRE_KEY_V4_IN_V6[..]] {
            mutate::variants(seed, 5000, |b| {
                let _ = t.decapsulate(b);
            });
        }
    }
}
