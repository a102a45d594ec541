//! Inner-packet policy: does a packet belong to the traffic selectors of
//! the SA (or GRE tunnel) it travels on? RFC 4301 §5.2 (inbound: a packet
//! that arrives on an SA but does not match its selectors is dropped and
//! audited) and §5.1 (outbound).
//!
//! Selectors are `anyhub_ike::wire::TrafficSelector` as the IKE core
//! negotiated them (address range, IP protocol, port range). An SA covers
//! every combination of one of its local and one of its remote selectors
//! (RFC 7296 §2.9), so each side is checked on its own:
//!
//! - inbound (from the peer): source in a remote selector, destination in a
//!   local one;
//! - outbound (to the peer): source in a local selector, destination in a
//!   remote one.
//!
//! Ports: TCP, UDP, SCTP, UDP-Lite, DCCP carry ports. For ICMP and ICMPv6
//! the selector's ports hold `type << 8 | code` (RFC 7296 §3.13.1, RFC 4301
//! §4.4.1.1); the packet's type/code must lie in the range of both sides.
//! A non-initial fragment has no transport header (ports OPAQUE, RFC 4301
//! §4.4.1): it matches only selectors that allow any port.

use std::net::IpAddr;

use anyhub_ike::wire::registry::TsType;
use anyhub_ike::wire::TrafficSelector;

use crate::wire::{ipv4, ipv6, IpProtocol, WireError};

/// What selectors look at in a packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Flow {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub protocol: IpProtocol,
    /// Source and destination ports (TCP/UDP…), or `(type << 8 | code, same)`
    /// for ICMP; `None` when the packet has no readable transport header
    /// (non-initial fragment, protocol without ports).
    pub ports: Option<(u16, u16)>,
    /// Whether the protocol has ports/type-code at all (then `ports: None`
    /// means "opaque": a fragment).
    pub has_ports: bool,
}

fn protocol_has_ports(p: IpProtocol) -> bool {
    // TCP, UDP, DCCP, SCTP, UDP-Lite; ICMP/ICMPv6 use type/code.
    matches!(p.0, 6 | 17 | 33 | 132 | 136) || p == IpProtocol::ICMP || p == IpProtocol::ICMPV6
}

fn read_ports(proto: IpProtocol, l4: &[u8]) -> Option<(u16, u16)> {
    if proto == IpProtocol::ICMP || proto == IpProtocol::ICMPV6 {
        let tc = u16::from_be_bytes([*l4.first()?, *l4.get(1)?]);
        return Some((tc, tc));
    }
    if l4.len() < 4 {
        return None;
    }
    Some((
        u16::from_be_bytes([l4[0], l4[1]]),
        u16::from_be_bytes([l4[2], l4[3]]),
    ))
}

impl Flow {
    /// Reads the flow of an IP packet (checked views: no panic on garbage).
    /// A protocol with ports whose first fragment is too short to hold them
    /// is Malformed: such a "tiny fragment" would dodge port selectors
    /// (RFC 1858 §3).
    pub fn parse(pkt: &[u8]) -> Result<Flow, WireError> {
        match pkt.first().map(|b| b >> 4) {
            Some(4) => {
                let p = ipv4::Packet::new_checked(pkt)?;
                if p.version() != 4 {
                    return Err(WireError::Malformed);
                }
                let proto = p.protocol();
                let has_ports = protocol_has_ports(proto);
                let ports = if has_ports && !p.is_non_initial_fragment() {
                    Some(read_ports(proto, p.payload()).ok_or(WireError::Malformed)?)
                } else {
                    None
                };
                Ok(Flow {
                    src: IpAddr::V4(p.src_addr()),
                    dst: IpAddr::V4(p.dst_addr()),
                    protocol: proto,
                    ports,
                    has_ports,
                })
            }
            Some(6) => {
                let p = ipv6::Packet::new_checked(pkt)?;
                let u = p.upper_layer()?;
                let has_ports = protocol_has_ports(u.protocol);
                let ports = if has_ports && u.has_header() {
                    let l4 = &pkt[u.offset..p.total_len()];
                    Some(read_ports(u.protocol, l4).ok_or(WireError::Malformed)?)
                } else {
                    None
                };
                Ok(Flow {
                    src: IpAddr::V6(p.src_addr()),
                    dst: IpAddr::V6(p.dst_addr()),
                    protocol: u.protocol,
                    ports,
                    has_ports,
                })
            }
            Some(_) => Err(WireError::Malformed),
            None => Err(WireError::Truncated),
        }
    }
}

fn addr_in(ts: &TrafficSelector, a: IpAddr) -> bool {
    match (a, ts.start_addr, ts.end_addr) {
        (IpAddr::V4(a), IpAddr::V4(s), IpAddr::V4(e)) => {
            ts.ty == TsType::IPV4_ADDR_RANGE && s <= a && a <= e
        }
        (IpAddr::V6(a), IpAddr::V6(s), IpAddr::V6(e)) => {
            ts.ty == TsType::IPV6_ADDR_RANGE && s <= a && a <= e
        }
        _ => false,
    }
}

fn any_port(ts: &TrafficSelector) -> bool {
    ts.start_port == 0 && ts.end_port == 0xffff
}

/// Whether `ts` admits the flow's address `a` and port `port` (the port of
/// this side, or the ICMP type/code).
fn side_matches(ts: &TrafficSelector, flow: &Flow, a: IpAddr, port: Option<u16>) -> bool {
    if !addr_in(ts, a) {
        return false;
    }
    if ts.ip_protocol != 0 && ts.ip_protocol != flow.protocol.0 {
        return false;
    }
    if any_port(ts) {
        return true;
    }
    // A port range only ever admits packets that have (readable) ports.
    match port {
        Some(p) if flow.has_ports => ts.start_port <= p && p <= ts.end_port,
        _ => false,
    }
}

/// Which way a packet crosses the SA.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// From the peer, after decryption / decapsulation.
    Inbound,
    /// To the peer, before encryption / encapsulation.
    Outbound,
}

/// Whether `flow` belongs to an SA with selectors `local_ts` (our side)
/// and `remote_ts` (the peer's side), crossing it in `dir`.
pub fn flow_allowed(
    flow: &Flow,
    dir: Direction,
    local_ts: &[TrafficSelector],
    remote_ts: &[TrafficSelector],
) -> bool {
    let (src_ts, dst_ts) = match dir {
        Direction::Inbound => (remote_ts, local_ts),
        Direction::Outbound => (local_ts, remote_ts),
    };
    let (sp, dp) = match flow.ports {
        Some((s, d)) => (Some(s), Some(d)),
        None => (None, None),
    };
    src_ts.iter().any(|t| side_matches(t, flow, flow.src, sp))
        && dst_ts.iter().any(|t| side_matches(t, flow, flow.dst, dp))
}

/// Why [`check`] refused a packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PolicyDrop {
    /// Not a valid IPv4/IPv6 packet.
    Malformed,
    /// Outside the traffic selectors.
    SelectorMismatch,
}

/// Parses `pkt` and checks it against the selectors; returns the flow.
pub fn check(
    pkt: &[u8],
    dir: Direction,
    local_ts: &[TrafficSelector],
    remote_ts: &[TrafficSelector],
) -> Result<Flow, PolicyDrop> {
    let flow = Flow::parse(pkt).map_err(|_| PolicyDrop::Malformed)?;
    if flow_allowed(&flow, dir, local_ts, remote_ts) {
        Ok(flow)
    } else {
        Err(PolicyDrop::SelectorMismatch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::fixtures::{
        ICMPV4_ECHO, ICMPV6_ECHO, IPV6_EXT_SYN, IPV6_FRAG_FIRST, IPV6_FRAG_SECOND, TCPV4_SYN,
        TCPV4_SYN_ACK, UDPV4, UDPV6,
    };
    use crate::wire::mutate;
    use anyhub_ike::ts::parse as ts;

    fn sel(list: &[&str]) -> Vec<TrafficSelector> {
        list.iter().map(|s| ts(s).unwrap()).collect()
    }

    #[test]
    fn flows_from_captures() {
        let f = Flow::parse(&TCPV4_SYN).unwrap();
        assert_eq!(f.src, "192.0.2.1".parse::<IpAddr>().unwrap());
        assert_eq!(
            (f.protocol, f.ports),
            (IpProtocol::TCP, Some((52396, 8080)))
        );
        let f = Flow::parse(&ICMPV4_ECHO).unwrap();
        assert_eq!(
            f.ports,
            Some((0x0800, 0x0800)),
            "echo request: type 8 code 0"
        );
        let f = Flow::parse(&IPV6_EXT_SYN).unwrap();
        assert_eq!((f.protocol, f.ports), (IpProtocol::TCP, Some((40000, 443))));
        let f = Flow::parse(&IPV6_FRAG_FIRST).unwrap();
        assert_eq!(
            (f.protocol, f.ports),
            (IpProtocol::ICMPV6, Some((0x8000, 0x8000)))
        );
        let f = Flow::parse(&IPV6_FRAG_SECOND).unwrap();
        assert_eq!(
            (f.protocol, f.ports, f.has_ports),
            (IpProtocol::ICMPV6, None, true)
        );
        assert!(Flow::parse(&[]).is_err());
        assert!(Flow::parse(&[0x70; 40]).is_err());
    }

    #[test]
    fn inbound_and_outbound_sides() {
        // Our side 198.51.100.0/24, the peer's 192.0.2.0/24.
        let local = sel(&["198.51.100.0/24"]);
        let remote = sel(&["192.0.2.0/24"]);
        // The SYN goes 192.0.2.1 -> 198.51.100.2: from the peer.
        assert!(check(&TCPV4_SYN, Direction::Inbound, &local, &remote).is_ok());
        assert_eq!(
            check(&TCPV4_SYN, Direction::Outbound, &local, &remote),
            Err(PolicyDrop::SelectorMismatch)
        );
        // The SYN-ACK goes back: to the peer.
        assert!(check(&TCPV4_SYN_ACK, Direction::Outbound, &local, &remote).is_ok());
        // Outside either range.
        let narrow = sel(&["198.51.100.128/25"]);
        assert_eq!(
            check(&TCPV4_SYN, Direction::Inbound, &narrow, &remote),
            Err(PolicyDrop::SelectorMismatch)
        );
        // Several selectors: any one per side.
        let locals = sel(&["10.0.0.0/8", "198.51.100.2/32"]);
        assert!(check(&TCPV4_SYN, Direction::Inbound, &locals, &remote).is_ok());
        // IPv6 packet against IPv4-only selectors.
        assert_eq!(
            check(&UDPV6, Direction::Inbound, &local, &remote),
            Err(PolicyDrop::SelectorMismatch)
        );
        let l6 = sel(&["2001:db8:2::/48"]);
        let r6 = sel(&["2001:db8:1::/48"]);
        assert!(check(&UDPV6, Direction::Inbound, &l6, &r6).is_ok());
        assert!(check(&ICMPV6_ECHO, Direction::Inbound, &l6, &r6).is_ok());
        assert_eq!(
            check(&[0x45], Direction::Inbound, &l6, &r6),
            Err(PolicyDrop::Malformed)
        );
    }

    #[test]
    fn protocols_and_ports() {
        let remote = sel(&["192.0.2.0/24"]);
        // Only TCP to port 8080 on our side.
        let web = sel(&["198.51.100.0/24[tcp/8080]"]);
        assert!(check(&TCPV4_SYN, Direction::Inbound, &web, &remote).is_ok());
        let other_port = sel(&["198.51.100.0/24[tcp/80]"]);
        assert!(check(&TCPV4_SYN, Direction::Inbound, &other_port, &remote).is_err());
        let udp_only = sel(&["198.51.100.0/24[udp]"]);
        assert!(check(&TCPV4_SYN, Direction::Inbound, &udp_only, &remote).is_err());
        assert!(check(&UDPV4, Direction::Inbound, &udp_only, &remote).is_ok());
        // ICMP: type/code in the port range; echo request is 8/0 = 0x0800.
        let mut echo_only = sel(&["198.51.100.0/24[icmp]"]);
        echo_only[0].start_port = 0x0800;
        echo_only[0].end_port = 0x08ff;
        assert!(check(&ICMPV4_ECHO, Direction::Inbound, &echo_only, &remote).is_ok());
        echo_only[0].start_port = 0x0000;
        echo_only[0].end_port = 0x00ff; // echo replies only
        assert!(check(&ICMPV4_ECHO, Direction::Inbound, &echo_only, &remote).is_err());
    }

    #[test]
    fn fragments_are_opaque() {
        let l6 = sel(&["2001:db8:2::/48"]);
        let r6 = sel(&["2001:db8:1::/48"]);
        // Any-port selectors admit the second fragment…
        assert!(check(&IPV6_FRAG_SECOND, Direction::Inbound, &l6, &r6).is_ok());
        // …a port-restricted one does not (its ports cannot be read).
        let mut icmp_echo = sel(&["2001:db8:2::/48[icmp6]"]);
        icmp_echo[0].start_port = 0x8000;
        icmp_echo[0].end_port = 0x80ff;
        assert!(check(&IPV6_FRAG_FIRST, Direction::Inbound, &icmp_echo, &r6).is_ok());
        assert!(check(&IPV6_FRAG_SECOND, Direction::Inbound, &icmp_echo, &r6).is_err());
        // A protocol-only selector still applies to fragments.
        let tcp_only = sel(&["2001:db8:2::/48[tcp]"]);
        assert!(check(&IPV6_FRAG_SECOND, Direction::Inbound, &tcp_only, &r6).is_err());
    }

    #[test]
    fn tiny_first_fragment_is_malformed() {
        // A TCP "first fragment" with 2 bytes of payload: ports unreadable.
        let mut b = vec![0u8; 22];
        let mut p = ipv4::Packet::new_unchecked(&mut b[..]);
        ipv4::Repr {
            src_addr: "192.0.2.1".parse().unwrap(),
            dst_addr: "198.51.100.2".parse().unwrap(),
            protocol: IpProtocol::TCP,
            payload_len: 2,
            ttl: 64,
            dscp_ecn: 0,
            ident: 1,
            dont_frag: false,
            more_frags: true,
            frag_offset: 0,
        }
        .emit(&mut p);
        assert_eq!(Flow::parse(&b), Err(WireError::Malformed));
    }

    #[test]
    fn garbage_never_panics() {
        let any = sel(&["0.0.0.0/0", "::/0"]);
        for seed in [&TCPV4_SYN[..], &IPV6_EXT_SYN[..], &IPV6_FRAG_SECOND[..]] {
            mutate::variants(seed, 5000, |b| {
                let _ = check(b, Direction::Inbound, &any, &any);
            });
        }
    }
}
