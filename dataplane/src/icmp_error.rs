//! ICMP errors the dataplane sends about inner packets: Fragmentation
//! Needed (RFC 792, RFC 1191 §4) / Packet Too Big (RFC 4443 §3.2, RFC 8201)
//! so path MTU discovery works through a tunnel, and Time Exceeded
//! (RFC 792, RFC 4443 §3.3) for an expired TTL / hop limit.
//!
//! Sans-IO: [`build`] writes the whole error packet (IP header + ICMP) into
//! the caller's buffer; [`TokenBucket`] rate-limits them with `now` passed
//! in (RFC 1812 §4.3.2.8, RFC 4443 §2.4 (f)).
//!
//! Which source address? A router answers from its own interface address,
//! but an error sent back into an IPsec tunnel must match that SA's traffic
//! selectors or the customer's router drops it (RFC 4301 §6 discusses the
//! problem). The invoking packet's destination is, by construction, inside
//! the selectors of the SA it arrived on, so that is the default source
//! ([`ErrorSource::InvokingDestination`]); a tenant may configure a fixed
//! gateway address instead.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::{Duration, Instant};

use crate::wire::{icmpv4, icmpv6, ipv4, ipv6, IpProtocol};

/// RFC 1812 §4.3.2.3: an ICMPv4 error carries as much of the invoking
/// datagram as fits in 576 bytes (Linux does the same).
pub const MAX_ICMPV4_ERROR: usize = 576;
/// RFC 4443 §2.4 (c): an ICMPv6 error must not exceed the minimum IPv6 MTU.
pub const MAX_ICMPV6_ERROR: usize = 1280;
/// The smallest MTU IPv6 links have (RFC 8200 §5); Packet Too Big never
/// reports less.
pub const IPV6_MIN_MTU: u32 = 1280;
/// TTL / hop limit of the errors we originate.
pub const ERROR_TTL: u8 = 64;

/// Which error to send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// The packet is larger than `mtu` (IPv4: Fragmentation Needed, only
    /// meaningful with DF set; IPv6: Packet Too Big).
    TooBig { mtu: u32 },
    /// TTL / hop limit reached zero in transit.
    TimeExceeded,
}

/// The source address of the errors of one tenant.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ErrorSource {
    /// The invoking packet's destination (passes the SA's selectors).
    #[default]
    InvokingDestination,
    /// Fixed addresses per family (a family without one falls back to the
    /// invoking destination).
    Fixed {
        v4: Option<Ipv4Addr>,
        v6: Option<Ipv6Addr>,
    },
}

/// Why no error was built.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NoError {
    /// The invoking packet does not get errors: it is itself an ICMP error,
    /// a non-initial fragment, addressed to multicast/broadcast, or from a
    /// source that is not a unicast host (RFC 1812 §4.3.2.7, RFC 4443
    /// §2.4 (e)).
    NotEligible,
    /// The invoking packet is not a valid IPv4/IPv6 packet.
    Malformed,
    /// `out` is smaller than the error.
    BufferTooSmall,
}

fn v4_source_is_host(a: Ipv4Addr) -> bool {
    !(a.is_unspecified()
        || a.is_loopback()
        || a.is_multicast()
        || a.is_broadcast()
        || a.octets()[0] >= 240)
}

/// Whether an ICMPv4 message type is an error (not a query), RFC 1812
/// §4.3.2.7 / RFC 1122 §3.2.2.
fn icmpv4_is_error(t: u8) -> bool {
    matches!(
        t,
        icmpv4::msg::DST_UNREACHABLE
            | 4
            | icmpv4::msg::REDIRECT
            | icmpv4::msg::TIME_EXCEEDED
            | icmpv4::msg::PARAM_PROBLEM
    )
}

/// Builds the error about `invoking` (a whole IP packet as received) into
/// `out`; returns its length. `ident` is the IPv4 Identification to use
/// (callers count up); `flow_label` the IPv6 flow label (0 is fine).
pub fn build(
    invoking: &[u8],
    kind: ErrorKind,
    source: ErrorSource,
    ident: u16,
    flow_label: u32,
    out: &mut [u8],
) -> Result<usize, NoError> {
    match invoking.first().map(|b| b >> 4) {
        Some(4) => build_v4(invoking, kind, source, ident, out),
        Some(6) => build_v6(invoking, kind, source, flow_label, out),
        _ => Err(NoError::Malformed),
    }
}

fn build_v4(
    invoking: &[u8],
    kind: ErrorKind,
    source: ErrorSource,
    ident: u16,
    out: &mut [u8],
) -> Result<usize, NoError> {
    let p = ipv4::Packet::new_checked(invoking).map_err(|_| NoError::Malformed)?;
    let orig = &invoking[..usize::from(p.total_len())];
    let (src, dst) = (p.src_addr(), p.dst_addr());
    if !v4_source_is_host(src)
        || dst.is_multicast()
        || dst.is_broadcast()
        || p.is_non_initial_fragment()
    {
        return Err(NoError::NotEligible);
    }
    if p.protocol() == IpProtocol::ICMP {
        match p.payload().first() {
            Some(&t) if !icmpv4_is_error(t) => {}
            _ => return Err(NoError::NotEligible),
        }
    }
    let quoted = &orig[..orig
        .len()
        .min(MAX_ICMPV4_ERROR - ipv4::HEADER_LEN - icmpv4::HEADER_LEN)];
    let icmp = match kind {
        ErrorKind::TooBig { mtu } => icmpv4::Repr::DstUnreachable {
            code: icmpv4::unreachable::FRAG_NEEDED,
            next_hop_mtu: mtu.min(65535) as u16,
            invoking: quoted,
        },
        ErrorKind::TimeExceeded => icmpv4::Repr::TimeExceeded {
            code: icmpv4::time_exceeded::TTL,
            invoking: quoted,
        },
    };
    let our_src = match source {
        ErrorSource::Fixed { v4: Some(a), .. } => a,
        _ => dst,
    };
    let ip = ipv4::Repr {
        src_addr: our_src,
        dst_addr: src,
        protocol: IpProtocol::ICMP,
        payload_len: icmp.buffer_len(),
        ttl: ERROR_TTL,
        // Precedence "internetwork control", as Linux sends its errors.
        dscp_ecn: 0xc0,
        ident,
        dont_frag: false,
        more_frags: false,
        frag_offset: 0,
    };
    let total = ip.buffer_len() + icmp.buffer_len();
    let out = out.get_mut(..total).ok_or(NoError::BufferTooSmall)?;
    ip.emit(&mut ipv4::Packet::new_unchecked(&mut *out));
    icmp.emit(&mut icmpv4::Packet::new_unchecked(
        &mut out[ipv4::HEADER_LEN..],
    ));
    Ok(total)
}

fn build_v6(
    invoking: &[u8],
    kind: ErrorKind,
    source: ErrorSource,
    flow_label: u32,
    out: &mut [u8],
) -> Result<usize, NoError> {
    let p = ipv6::Packet::new_checked(invoking).map_err(|_| NoError::Malformed)?;
    let orig = &invoking[..p.total_len()];
    let (src, dst) = (p.src_addr(), p.dst_addr());
    if src.is_unspecified() || src.is_multicast() || src.is_loopback() {
        return Err(NoError::NotEligible);
    }
    // RFC 4443 §2.4 (e.3): Packet Too Big may answer a multicast packet,
    // Time Exceeded may not.
    if dst.is_multicast() && kind == ErrorKind::TimeExceeded {
        return Err(NoError::NotEligible);
    }
    let upper = p.upper_layer().map_err(|_| NoError::Malformed)?;
    if !upper.has_header() {
        return Err(NoError::NotEligible);
    }
    if upper.protocol == IpProtocol::ICMPV6 {
        match orig.get(upper.offset) {
            Some(&t) if !icmpv6::msg::is_error(t) => {}
            _ => return Err(NoError::NotEligible),
        }
    }
    let quoted = &orig[..orig
        .len()
        .min(MAX_ICMPV6_ERROR - ipv6::HEADER_LEN - icmpv6::HEADER_LEN)];
    let icmp = match kind {
        ErrorKind::TooBig { mtu } => icmpv6::Repr::PacketTooBig {
            mtu: mtu.max(IPV6_MIN_MTU),
            invoking: quoted,
        },
        ErrorKind::TimeExceeded => icmpv6::Repr::TimeExceeded {
            code: icmpv6::time_exceeded::HOP_LIMIT,
            invoking: quoted,
        },
    };
    let our_src = match source {
        ErrorSource::Fixed { v6: Some(a), .. } => a,
        // A multicast destination cannot be a source; Packet Too Big for
        // multicast then needs a configured address.
        _ if dst.is_multicast() => return Err(NoError::NotEligible),
        _ => dst,
    };
    let ip = ipv6::Repr {
        src_addr: our_src,
        dst_addr: src,
        next_header: IpProtocol::ICMPV6,
        payload_len: icmp.buffer_len(),
        hop_limit: ERROR_TTL,
        traffic_class: 0,
        flow_label,
    };
    let total = ip.buffer_len() + icmp.buffer_len();
    let out = out.get_mut(..total).ok_or(NoError::BufferTooSmall)?;
    ip.emit(&mut ipv6::Packet::new_unchecked(&mut *out));
    icmp.emit(
        &mut icmpv6::Packet::new_unchecked(&mut out[ipv6::HEADER_LEN..]),
        &IpAddr::V6(our_src),
        &IpAddr::V6(src),
    );
    Ok(total)
}

/// A token bucket: `rate` tokens per second, at most `burst` saved up.
/// Time is passed in; no clock is read.
#[derive(Clone, Debug)]
pub struct TokenBucket {
    cost: Duration,
    cap: Duration,
    credit: Duration,
    last: Option<Instant>,
}

impl TokenBucket {
    /// Linux's ICMP defaults: `icmp_msgs_per_sec` 1000, `icmp_msgs_burst` 50.
    pub const DEFAULT_RATE: u32 = 1000;
    pub const DEFAULT_BURST: u32 = 50;

    /// A bucket that starts full. `rate` 0 allows nothing.
    pub fn new(rate: u32, burst: u32) -> TokenBucket {
        let cost = if rate == 0 {
            Duration::MAX
        } else {
            Duration::from_secs(1) / rate
        };
        let cap = cost.saturating_mul(burst.max(1));
        TokenBucket {
            cost,
            cap,
            credit: cap,
            last: None,
        }
    }

    /// Takes a token at `now` if there is one.
    pub fn take(&mut self, now: Instant) -> bool {
        if let Some(last) = self.last {
            let elapsed = now.saturating_duration_since(last);
            self.credit = self.credit.saturating_add(elapsed).min(self.cap);
        }
        self.last = Some(now);
        if self.cost != Duration::MAX && self.credit >= self.cost {
            self.credit -= self.cost;
            true
        } else {
            false
        }
    }
}

impl Default for TokenBucket {
    fn default() -> TokenBucket {
        TokenBucket::new(TokenBucket::DEFAULT_RATE, TokenBucket::DEFAULT_BURST)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::fixtures::{
        ICMPV4_ECHO_REPLY, ICMPV4_FRAG_NEEDED, ICMPV4_PROTO_UNREACHABLE, ICMPV4_TIME_EXCEEDED,
        ICMPV6_PACKET_TOO_BIG, ICMPV6_PORT_UNREACHABLE, ICMPV6_TIME_EXCEEDED, IPV4_DF_1428,
        IPV4_TTL1, IPV6_1448, IPV6_FRAG_SECOND, IPV6_HLIM1,
    };
    use crate::wire::mutate;

    fn router_v4() -> ErrorSource {
        ErrorSource::Fixed {
            v4: Some(Ipv4Addr::new(192, 0, 2, 254)),
            v6: Some("2001:db8:1::fe".parse().unwrap()),
        }
    }

    /// Built from the same invoking packet, our Fragmentation Needed is the
    /// Linux router's byte for byte (its IP ident aside, which we pass in).
    #[test]
    fn frag_needed_equals_linux() {
        let mut out = [0u8; 1500];
        let n = build(
            &IPV4_DF_1428,
            ErrorKind::TooBig { mtu: 1280 },
            router_v4(),
            0x32bb,
            0,
            &mut out,
        )
        .unwrap();
        assert_eq!(&out[..n], &ICMPV4_FRAG_NEEDED[..]);
    }

    #[test]
    fn time_exceeded_equals_linux() {
        let mut out = [0u8; 1500];
        let n = build(
            &IPV4_TTL1,
            ErrorKind::TimeExceeded,
            router_v4(),
            0x330c,
            0,
            &mut out,
        )
        .unwrap();
        assert_eq!(&out[..n], &ICMPV4_TIME_EXCEEDED[..]);
    }

    /// Same for IPv6, the flow label aside (Linux picks one per flow).
    #[test]
    fn v6_errors_equal_linux() {
        let mut out = [0u8; 1500];
        let n = build(
            &IPV6_1448,
            ErrorKind::TooBig { mtu: 1280 },
            router_v4(),
            0,
            0x70e41,
            &mut out,
        )
        .unwrap();
        assert_eq!(&out[..n], &ICMPV6_PACKET_TOO_BIG[..]);
        let n = build(
            &IPV6_HLIM1,
            ErrorKind::TimeExceeded,
            router_v4(),
            0,
            0x72083,
            &mut out,
        )
        .unwrap();
        assert_eq!(&out[..n], &ICMPV6_TIME_EXCEEDED[..]);
    }

    #[test]
    fn default_source_is_the_invoking_destination() {
        let mut out = [0u8; 1500];
        let n = build(
            &IPV4_DF_1428,
            ErrorKind::TooBig { mtu: 1438 },
            ErrorSource::default(),
            1,
            0,
            &mut out,
        )
        .unwrap();
        let ip = ipv4::Packet::new_checked(&out[..n]).unwrap();
        assert_eq!(ip.src_addr(), Ipv4Addr::new(198, 51, 100, 2));
        assert_eq!(ip.dst_addr(), Ipv4Addr::new(192, 0, 2, 1));
        let icmp = icmpv4::Packet::new_checked(ip.payload()).unwrap();
        assert_eq!(icmp.next_hop_mtu(), 1438);
        assert!(icmp.verify_checksum());
        // IPv6: PTB never reports less than 1280.
        let n = build(
            &IPV6_1448,
            ErrorKind::TooBig { mtu: 1000 },
            ErrorSource::default(),
            0,
            0,
            &mut out,
        )
        .unwrap();
        let ip = ipv6::Packet::new_checked(&out[..n]).unwrap();
        assert_eq!(ip.src_addr(), "2001:db8:2::2".parse::<Ipv6Addr>().unwrap());
        let icmp = icmpv6::Packet::new_checked(ip.payload()).unwrap();
        assert_eq!(icmp.rest_of_header(), 1280);
        assert!(icmp.verify_checksum(&IpAddr::V6(ip.src_addr()), &IpAddr::V6(ip.dst_addr())));
        assert_eq!(n, 1280, "quoted up to the minimum MTU");
    }

    #[test]
    fn never_about_errors_fragments_or_multicast() {
        let mut out = [0u8; 1500];
        let e = |pkt: &[u8], kind| build(pkt, kind, ErrorSource::default(), 0, 0, &mut [0u8; 1500]);
        // ICMP errors about ICMP errors: never.
        for pkt in [&ICMPV4_FRAG_NEEDED[..], &ICMPV4_PROTO_UNREACHABLE[..]] {
            assert_eq!(e(pkt, ErrorKind::TimeExceeded), Err(NoError::NotEligible));
        }
        assert_eq!(
            e(&ICMPV6_PORT_UNREACHABLE, ErrorKind::TimeExceeded),
            Err(NoError::NotEligible)
        );
        // ICMP queries do get errors.
        assert!(e(&ICMPV4_ECHO_REPLY, ErrorKind::TimeExceeded).is_ok());
        // Non-initial fragments: no.
        assert_eq!(
            e(&IPV6_FRAG_SECOND, ErrorKind::TimeExceeded),
            Err(NoError::NotEligible)
        );
        let mut frag = IPV4_TTL1;
        {
            let mut p = ipv4::Packet::new_unchecked(&mut frag[..]);
            p.set_flags_frag(false, false, 64);
            p.fill_checksum();
        }
        assert_eq!(e(&frag, ErrorKind::TimeExceeded), Err(NoError::NotEligible));
        // Multicast destination, broadcast, unspecified source.
        for (s, d) in [
            ("192.0.2.1", "224.0.0.5"),
            ("192.0.2.1", "255.255.255.255"),
            ("0.0.0.0", "192.0.2.9"),
        ] {
            let mut p = IPV4_TTL1;
            let mut v = ipv4::Packet::new_unchecked(&mut p[..]);
            v.set_src_addr(s.parse().unwrap());
            v.set_dst_addr(d.parse().unwrap());
            v.fill_checksum();
            assert_eq!(
                e(&p, ErrorKind::TimeExceeded),
                Err(NoError::NotEligible),
                "{s} > {d}"
            );
        }
        assert_eq!(
            e(&[0x45, 0, 0], ErrorKind::TimeExceeded),
            Err(NoError::Malformed)
        );
        assert_eq!(
            build(
                &IPV4_DF_1428,
                ErrorKind::TooBig { mtu: 1280 },
                ErrorSource::default(),
                0,
                0,
                &mut out[..100]
            ),
            Err(NoError::BufferTooSmall)
        );
    }

    #[test]
    fn token_bucket() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10, 3);
        assert!(b.take(t0) && b.take(t0) && b.take(t0), "burst");
        assert!(!b.take(t0));
        assert!(!b.take(t0 + Duration::from_millis(50)));
        assert!(b.take(t0 + Duration::from_millis(100)));
        assert!(!b.take(t0 + Duration::from_millis(100)));
        // A long pause refills to the burst, no more.
        let later = t0 + Duration::from_secs(60);
        assert_eq!((0..10).filter(|_| b.take(later)).count(), 3);
        // Time going backwards does not mint tokens.
        assert!(!b.take(t0));
        let mut none = TokenBucket::new(0, 5);
        assert!(!none.take(t0));
        // Over a simulated second at the default rate: about 1000 + burst.
        let mut d = TokenBucket::default();
        let sent = (0..5000)
            .filter(|i| d.take(t0 + Duration::from_micros(200 * i)))
            .count();
        assert!((1000..=1051).contains(&sent), "{sent}");
    }

    #[test]
    fn garbage_never_panics() {
        let mut out = [0u8; 1500];
        for seed in [&IPV4_TTL1[..], &IPV6_HLIM1[..], &IPV6_FRAG_SECOND[..]] {
            mutate::variants(seed, 5000, |b| {
                for kind in [ErrorKind::TimeExceeded, ErrorKind::TooBig { mtu: 1280 }] {
                    let _ = build(b, kind, ErrorSource::default(), 0, 0, &mut out);
                }
            });
        }
    }
}
