//! Traffic selectors (RFC 7296 §2.9, §3.13.1): configuration syntax, display
//! and the responder's narrowing.

use crate::wire::registry::TsType;
use crate::wire::TrafficSelector;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Why a traffic selector string was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct TsError(pub String);

/// Parses `10.0.0.0/24`, `10.0.0.5` (a /32), `2001:db8::/32`, with an optional
/// `[proto]` or `[proto/port]` suffix (`tcp`, `udp`, `icmp`, `icmp6` or a
/// number), as strongSwan writes them.
pub fn parse(s: &str) -> Result<TrafficSelector, TsError> {
    let s = s.trim();
    let (net, proto_port) = match s.split_once('[') {
        Some((net, rest)) => {
            let inner = rest
                .strip_suffix(']')
                .ok_or_else(|| TsError(format!("'{s}': missing ']'")))?;
            (net, Some(inner))
        }
        None => (s, None),
    };
    let (addr, prefix) = match net.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (net, None),
    };
    let addr: IpAddr = addr
        .parse()
        .map_err(|_| TsError(format!("'{s}': '{addr}' is not an IP address")))?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let prefix: u32 = match prefix {
        Some(p) => p
            .parse()
            .ok()
            .filter(|&p| p <= max)
            .ok_or_else(|| TsError(format!("'{s}': bad prefix length '{p}'")))?,
        None => max,
    };
    let (start_addr, end_addr) = cidr_range(addr, prefix);
    if start_addr != addr {
        return Err(TsError(format!(
            "'{s}': host bits are set (did you mean {start_addr}/{prefix}?)"
        )));
    }
    let (ip_protocol, start_port, end_port) = match proto_port {
        None => (0, 0, 0xffff),
        Some(pp) => {
            let (proto, port) = match pp.split_once('/') {
                Some((a, b)) => (a, Some(b)),
                None => (pp, None),
            };
            let proto: u8 = match proto {
                "tcp" => 6,
                "udp" => 17,
                "icmp" => 1,
                "icmp6" | "ipv6-icmp" => 58,
                "sctp" => 132,
                n => n
                    .parse()
                    .map_err(|_| TsError(format!("'{s}': unknown protocol '{n}'")))?,
            };
            match port {
                None => (proto, 0, 0xffff),
                Some(p) => {
                    let p: u16 = p
                        .parse()
                        .map_err(|_| TsError(format!("'{s}': bad port '{p}'")))?;
                    (proto, p, p)
                }
            }
        }
    };
    let ty = if addr.is_ipv4() {
        TsType::IPV4_ADDR_RANGE
    } else {
        TsType::IPV6_ADDR_RANGE
    };
    Ok(TrafficSelector {
        ty,
        ip_protocol,
        start_port,
        end_port,
        start_addr,
        end_addr,
    })
}

fn cidr_range(addr: IpAddr, prefix: u32) -> (IpAddr, IpAddr) {
    match addr {
        IpAddr::V4(a) => {
            let mask = if prefix == 0 {
                0
            } else {
                u32::MAX << (32 - prefix)
            };
            let v = u32::from(a);
            (
                IpAddr::V4(Ipv4Addr::from(v & mask)),
                IpAddr::V4(Ipv4Addr::from(v | !mask)),
            )
        }
        IpAddr::V6(a) => {
            let mask = if prefix == 0 {
                0
            } else {
                u128::MAX << (128 - prefix)
            };
            let v = u128::from(a);
            (
                IpAddr::V6(Ipv6Addr::from(v & mask)),
                IpAddr::V6(Ipv6Addr::from(v | !mask)),
            )
        }
    }
}

fn to_u128(a: IpAddr) -> u128 {
    match a {
        IpAddr::V4(a) => u32::from(a) as u128,
        IpAddr::V6(a) => u128::from(a),
    }
}

fn from_u128(v: u128, v4: bool) -> IpAddr {
    if v4 {
        IpAddr::V4(Ipv4Addr::from(v as u32))
    } else {
        IpAddr::V6(Ipv6Addr::from(v))
    }
}

/// Text form: `10.0.0.0/24` when the range is a prefix, `a..b` otherwise,
/// then `[proto/port]` when the selector is narrower than "any".
pub fn display(ts: &TrafficSelector) -> String {
    let v4 = ts.ty == TsType::IPV4_ADDR_RANGE;
    let bits = if v4 { 32 } else { 128 };
    let (s, e) = (to_u128(ts.start_addr), to_u128(ts.end_addr));
    let span = e.wrapping_sub(s);
    let mut out = if s <= e && (span == u128::MAX || (span.wrapping_add(1)).is_power_of_two()) {
        let host_bits = if span == u128::MAX {
            128
        } else {
            (span + 1).trailing_zeros()
        };
        let prefix = bits - host_bits.min(bits);
        if s & span == 0 {
            format!("{}/{}", ts.start_addr, prefix)
        } else {
            format!("{}..{}", ts.start_addr, ts.end_addr)
        }
    } else {
        format!("{}..{}", ts.start_addr, ts.end_addr)
    };
    let any_port = ts.start_port == 0 && ts.end_port == 0xffff;
    if ts.ip_protocol != 0 || !any_port {
        let proto = match ts.ip_protocol {
            6 => "tcp".to_string(),
            17 => "udp".to_string(),
            1 => "icmp".to_string(),
            58 => "icmp6".to_string(),
            n => n.to_string(),
        };
        if any_port {
            out.push_str(&format!("[{proto}]"));
        } else if ts.start_port == ts.end_port {
            out.push_str(&format!("[{proto}/{}]", ts.start_port));
        } else {
            out.push_str(&format!("[{proto}/{}-{}]", ts.start_port, ts.end_port));
        }
    }
    out
}

/// The intersection of two selectors, if not empty.
pub fn intersect(a: &TrafficSelector, b: &TrafficSelector) -> Option<TrafficSelector> {
    if a.ty != b.ty {
        return None;
    }
    let ip_protocol = match (a.ip_protocol, b.ip_protocol) {
        (0, p) | (p, 0) => p,
        (p, q) if p == q => p,
        _ => return None,
    };
    let start_port = a.start_port.max(b.start_port);
    let end_port = a.end_port.min(b.end_port);
    if start_port > end_port {
        return None;
    }
    let start = to_u128(a.start_addr).max(to_u128(b.start_addr));
    let end = to_u128(a.end_addr).min(to_u128(b.end_addr));
    if start > end {
        return None;
    }
    let v4 = a.ty == TsType::IPV4_ADDR_RANGE;
    Some(TrafficSelector {
        ty: a.ty,
        ip_protocol,
        start_port,
        end_port,
        start_addr: from_u128(start, v4),
        end_addr: from_u128(end, v4),
    })
}

/// Narrowing (RFC 7296 §2.9): the part of what the peer offered that our
/// configuration allows, as the list of non-empty pairwise intersections, in
/// the peer's order, without duplicates. Empty means TS_UNACCEPTABLE.
pub fn narrow(offered: &[TrafficSelector], configured: &[TrafficSelector]) -> Vec<TrafficSelector> {
    let mut out: Vec<TrafficSelector> = Vec::new();
    for o in offered {
        for c in configured {
            if let Some(i) = intersect(o, c) {
                if !out.contains(&i) {
                    out.push(i);
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_display() {
        for s in [
            "10.10.0.0/24",
            "10.0.0.5/32",
            "0.0.0.0/0",
            "2001:db8::/32",
            "10.0.0.0/8[tcp/443]",
            "10.0.0.0/8[udp]",
        ] {
            assert_eq!(display(&parse(s).unwrap()), s);
        }
        assert_eq!(display(&parse("10.0.0.5").unwrap()), "10.0.0.5/32");
        let t = parse("10.1.0.0/16").unwrap();
        assert_eq!(t.end_addr, "10.1.255.255".parse::<IpAddr>().unwrap());
        for bad in [
            "10.0.0.1/24",
            "10.0.0.0/33",
            "x/8",
            "10.0.0.0/8[tcp",
            "10.0.0.0/8[foo]",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn narrowing() {
        let offered = [parse("10.10.0.0/16").unwrap()];
        let ours = [
            parse("10.10.1.0/24").unwrap(),
            parse("192.168.0.0/16").unwrap(),
        ];
        assert_eq!(
            narrow(&offered, &ours),
            vec![parse("10.10.1.0/24").unwrap()]
        );
        // Narrowing a specific packet's selector to ours keeps the packet's.
        let pkt = [
            parse("10.10.1.7/32[tcp/80]").unwrap(),
            parse("10.10.0.0/16").unwrap(),
        ];
        let n = narrow(&pkt, &ours);
        assert_eq!(n[0], parse("10.10.1.7/32[tcp/80]").unwrap());
        assert!(narrow(&[parse("172.16.0.0/12").unwrap()], &ours).is_empty());
        assert!(
            narrow(&[parse("2001:db8::/32").unwrap()], &ours).is_empty(),
            "families differ"
        );
        let a = parse("10.0.0.0/8[tcp]").unwrap();
        let b = parse("10.0.0.0/8[udp]").unwrap();
        assert!(intersect(&a, &b).is_none());
    }
}
