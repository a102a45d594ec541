//! The inner packet's way through a node, sans-IO: selectors, route, TTL,
//! MTU, MSS — one call, a verdict back (boringtun's style: the caller's
//! buffers, no allocation, an enum that says what to do).
//!
//! ```text
//!  inner packet (decrypted / decapsulated, or read from the TUN)
//!    │ parse (IPv4 header checksum checked)      ── InnerMalformed
//!    │ ingress SA/tunnel selectors (inbound)     ── SelectorMismatch
//!    │ tenant route table: longest prefix        ── NoRoute
//!    │ egress tunnel selectors (outbound)        ── SelectorMismatch
//!    │ TTL / hop limit left (tunnel → tunnel)    ── TtlExpired + ICMP Time Exceeded
//!    │ egress tunnel MTU                         ── TooBig + ICMP Frag Needed / PTB
//!    │ TTL / hop limit −1 (tunnel → tunnel, RFC 1624 checksum update)
//!    │ TCP SYN: MSS clamped (both tunnels' min)
//!    ▼
//!  Verdict::Forward { target } · Verdict::Reply (ICMP error back) · Verdict::Drop
//! ```
//!
//! TTL: the node is a router between tunnels, so a packet going from one
//! tunnel to another has its TTL decremented here. A packet handed to the
//! local side (the TUN) is routed on by the node's kernel, which
//! decrements; one read from the TUN was decremented by the kernel on its
//! way in. Neither is decremented twice.

use std::net::IpAddr;
use std::time::Instant;

use anyhub_ike::wire::TrafficSelector;

use crate::icmp_error::{self, ErrorKind, ErrorSource, TokenBucket};
use crate::mss::{clamp_mss, MssClamp};
use crate::policy::{flow_allowed, Direction, Flow};
use crate::route::{Target, TenantId, Tenants, TunnelId};
use crate::wire::{ipv4, ipv6};

/// Why the packet path dropped a packet. `Copy`, no payload: it feeds
/// counters (the lead folds these into the crate-wide `DropReason`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PathDrop {
    /// The inner packet is not a valid IPv4/IPv6 packet.
    InnerMalformed,
    /// Outside the traffic selectors of the SA / GRE tunnel (RFC 4301 §5.2).
    SelectorMismatch,
    /// The tenant's table has no route for the destination.
    NoRoute,
    /// The ingress names a tenant that does not exist (config race).
    UnknownTenant,
    /// The route names a tunnel that is not up, or of another tenant.
    TunnelDown,
    /// TTL / hop limit expired (an ICMP Time Exceeded may have been sent).
    TtlExpired,
    /// Larger than the tunnel's MTU with DF / IPv6 (an ICMP Fragmentation
    /// Needed / Packet Too Big may have been sent).
    TooBig,
    /// GRE: the outer packet is not valid IP or not GRE.
    GreMalformed,
    /// GRE: an outer fragment (we do not reassemble).
    GreFragment,
    /// GRE: no tunnel for (outer source, outer destination, key).
    GreUnknownTunnel,
    /// GRE: a version, flag or protocol type we do not carry.
    GreUnsupported,
}

impl PathDrop {
    pub const ALL: [PathDrop; 11] = [
        PathDrop::InnerMalformed,
        PathDrop::SelectorMismatch,
        PathDrop::NoRoute,
        PathDrop::UnknownTenant,
        PathDrop::TunnelDown,
        PathDrop::TtlExpired,
        PathDrop::TooBig,
        PathDrop::GreMalformed,
        PathDrop::GreFragment,
        PathDrop::GreUnknownTunnel,
        PathDrop::GreUnsupported,
    ];

    /// A stable name for counters and status.
    pub fn as_str(self) -> &'static str {
        match self {
            PathDrop::InnerMalformed => "inner_malformed",
            PathDrop::SelectorMismatch => "selector_mismatch",
            PathDrop::NoRoute => "no_route",
            PathDrop::UnknownTenant => "unknown_tenant",
            PathDrop::TunnelDown => "tunnel_down",
            PathDrop::TtlExpired => "ttl_expired",
            PathDrop::TooBig => "too_big",
            PathDrop::GreMalformed => "gre_malformed",
            PathDrop::GreFragment => "gre_fragment",
            PathDrop::GreUnknownTunnel => "gre_unknown_tunnel",
            PathDrop::GreUnsupported => "gre_unsupported",
        }
    }
}

/// A tunnel's traffic selectors: ours and the peer's (for ESP the union
/// over the tunnel's child SAs, for GRE the configured ones).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Selectors {
    pub local: Vec<TrafficSelector>,
    pub remote: Vec<TrafficSelector>,
}

impl Selectors {
    /// Everything, both families (a GRE tunnel without configured
    /// selectors).
    pub fn any() -> Selectors {
        let all = |s| anyhub_ike::ts::parse(s).expect("literal selector");
        Selectors {
            local: vec![all("0.0.0.0/0"), all("::/0")],
            remote: vec![all("0.0.0.0/0"), all("::/0")],
        }
    }
}

/// What the path needs to know about one tunnel.
#[derive(Clone, Debug)]
pub struct TunnelPath {
    pub id: TunnelId,
    pub tenant: TenantId,
    /// The largest inner packet ([`crate::mss::Encap::inner_mtu`]).
    pub inner_mtu: usize,
    /// MSS clamp for SYNs through this tunnel (`None`: no clamping).
    pub mss: Option<MssClamp>,
    pub selectors: Selectors,
    /// Source of the ICMP errors sent back into this tunnel.
    pub error_source: ErrorSource,
}

impl TunnelPath {
    /// The path facts of an IPsec tunnel from one of its child SAs: inner
    /// MTU from the real overhead of its cipher and encapsulation over
    /// `path_mtu`, the default MSS clamp from it, the SA's selectors.
    /// `None` for a cipher the dataplane does not carry.
    pub fn esp(
        id: TunnelId,
        tenant: TenantId,
        child: &anyhub_ike::ChildSa,
        path_mtu: usize,
    ) -> Option<TunnelPath> {
        let cipher = crate::mss::EspCipher::for_proposal(&child.proposal)?;
        let inner_mtu = crate::mss::Encap::Esp {
            cipher,
            udp: child.encap,
            outer_v6: child.remote.is_ipv6(),
        }
        .inner_mtu(path_mtu);
        Some(TunnelPath {
            id,
            tenant,
            inner_mtu,
            mss: Some(MssClamp::for_inner_mtu(inner_mtu)),
            selectors: Selectors {
                local: child.local_ts.clone(),
                remote: child.remote_ts.clone(),
            },
            error_source: ErrorSource::default(),
        })
    }
}

/// The node's tunnels, indexed by [`TunnelId`] (publish it whole with the
/// tenants; `None`: no such tunnel, or down).
#[derive(Clone, Debug, Default)]
pub struct TunnelTable {
    tunnels: Vec<Option<TunnelPath>>,
}

impl TunnelTable {
    pub fn new() -> TunnelTable {
        TunnelTable::default()
    }

    pub fn insert(&mut self, t: TunnelPath) {
        let i = t.id.0 as usize;
        if self.tunnels.len() <= i {
            self.tunnels.resize_with(i + 1, || None);
        }
        self.tunnels[i] = Some(t);
    }

    pub fn remove(&mut self, id: TunnelId) -> Option<TunnelPath> {
        self.tunnels.get_mut(id.0 as usize).and_then(Option::take)
    }

    #[inline]
    pub fn get(&self, id: TunnelId) -> Option<&TunnelPath> {
        self.tunnels.get(id.0 as usize)?.as_ref()
    }
}

/// Where an inner packet entered the node.
#[derive(Clone, Copy, Debug)]
pub enum Ingress<'a> {
    /// Decrypted / decapsulated from tunnel `id`; `sa_selectors`: the
    /// selectors of the very SA it arrived on (RFC 4301 §5.2), else the
    /// tunnel's.
    Tunnel {
        id: TunnelId,
        sa_selectors: Option<&'a Selectors>,
    },
    /// Read from the node's TUN device, for tenant `tenant`.
    Local { tenant: TenantId },
}

/// What to do with the packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Send the (possibly rewritten) packet to `target`. `fragment_outer`:
    /// the inner packet is bigger than the tunnel MTU but may be
    /// fragmented (IPv4 without DF; IPv6 below 1280 on a tunnel narrower
    /// than that, RFC 8200 §5): let the outer packet be fragmented.
    Forward {
        target: Target,
        fragment_outer: bool,
    },
    /// Send `scratch[..len]` (an ICMP error) back where the packet came
    /// from; the packet itself is dropped for `dropped`.
    Reply {
        len: usize,
        dropped: PathDrop,
    },
    Drop(PathDrop),
}

/// Counters the forwarder keeps itself.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ForwarderCounters {
    pub icmp_errors_sent: u64,
    /// ICMP errors not sent because the token bucket was empty.
    pub icmp_rate_limited: u64,
    pub mss_clamped: u64,
}

/// One worker's forwarding state: the ICMP token bucket and an IPv4
/// identification counter for the errors.
#[derive(Debug, Default)]
pub struct Forwarder {
    bucket: TokenBucket,
    ident: u16,
    pub counters: ForwarderCounters,
}

/// Family-generic facts the steps after parsing need.
struct Inner {
    v6: bool,
    len: usize,
    dont_frag: bool,
}

impl Forwarder {
    pub fn new(bucket: TokenBucket) -> Forwarder {
        Forwarder {
            bucket,
            ident: 0,
            counters: ForwarderCounters::default(),
        }
    }

    /// Runs `pkt` (one whole inner IP packet) through the path. May rewrite
    /// it in place (TTL, MSS); may write an ICMP error into `scratch`
    /// (give it at least 1280 bytes, else errors are not sent).
    pub fn forward(
        &mut self,
        tenants: &Tenants,
        tunnels: &TunnelTable,
        ingress: Ingress<'_>,
        pkt: &mut [u8],
        now: Instant,
        scratch: &mut [u8],
    ) -> Verdict {
        let flow = match Flow::parse(pkt) {
            Ok(f) => f,
            Err(_) => return Verdict::Drop(PathDrop::InnerMalformed),
        };
        let inner = match flow.src {
            IpAddr::V4(_) => {
                let p = ipv4::Packet::new_unchecked(&pkt[..]);
                if !p.verify_checksum() || p.reserved_flag() {
                    return Verdict::Drop(PathDrop::InnerMalformed);
                }
                Inner {
                    v6: false,
                    len: usize::from(p.total_len()),
                    dont_frag: p.dont_frag(),
                }
            }
            IpAddr::V6(_) => Inner {
                v6: true,
                len: ipv6::Packet::new_unchecked(&pkt[..]).total_len(),
                dont_frag: true,
            },
        };

        // Ingress: tenant and inbound selectors.
        let (tenant, from_tunnel) = match ingress {
            Ingress::Tunnel { id, sa_selectors } => {
                let Some(t) = tunnels.get(id) else {
                    return Verdict::Drop(PathDrop::TunnelDown);
                };
                let s = sa_selectors.unwrap_or(&t.selectors);
                if !flow_allowed(&flow, Direction::Inbound, &s.local, &s.remote) {
                    return Verdict::Drop(PathDrop::SelectorMismatch);
                }
                (t.tenant, Some(t))
            }
            Ingress::Local { tenant } => (tenant, None),
        };
        let Some(table) = tenants.table(tenant) else {
            return Verdict::Drop(PathDrop::UnknownTenant);
        };
        let Some(target) = table.lookup(flow.dst) else {
            return Verdict::Drop(PathDrop::NoRoute);
        };
        let to_tunnel = match target {
            Target::Local => None,
            Target::Tunnel(id) => match tunnels.get(id) {
                Some(t) if t.tenant == tenant => {
                    let s = &t.selectors;
                    if !flow_allowed(&flow, Direction::Outbound, &s.local, &s.remote) {
                        return Verdict::Drop(PathDrop::SelectorMismatch);
                    }
                    Some(t)
                }
                _ => return Verdict::Drop(PathDrop::TunnelDown),
            },
        };
        let error_source = from_tunnel.map(|t| t.error_source).unwrap_or_default();

        // TTL, tunnel to tunnel only (see the module doc). Checked first,
        // decremented after the MTU check, so an ICMP error quotes the
        // packet as received (as Linux's ip_forward does).
        let decrement = from_tunnel.is_some() && to_tunnel.is_some();
        if decrement {
            let left = if inner.v6 {
                ipv6::Packet::new_unchecked(&mut *pkt).hop_limit()
            } else {
                ipv4::Packet::new_unchecked(&mut *pkt).ttl()
            };
            if left <= 1 {
                return self.error(
                    pkt,
                    ErrorKind::TimeExceeded,
                    error_source,
                    PathDrop::TtlExpired,
                    now,
                    scratch,
                );
            }
        }

        // MTU of the egress tunnel.
        let mut fragment_outer = false;
        if let Some(t) = to_tunnel {
            if inner.len > t.inner_mtu {
                if inner.v6 {
                    let floor = icmp_error::IPV6_MIN_MTU as usize;
                    if inner.len <= floor {
                        // RFC 8200 §5: a link narrower than 1280 must
                        // fragment below IPv6: here, the outer packet.
                        fragment_outer = true;
                    } else {
                        let mtu = t.inner_mtu.max(floor) as u32;
                        return self.error(
                            pkt,
                            ErrorKind::TooBig { mtu },
                            error_source,
                            PathDrop::TooBig,
                            now,
                            scratch,
                        );
                    }
                } else if inner.dont_frag {
                    let mtu = t.inner_mtu as u32;
                    return self.error(
                        pkt,
                        ErrorKind::TooBig { mtu },
                        error_source,
                        PathDrop::TooBig,
                        now,
                        scratch,
                    );
                } else {
                    fragment_outer = true;
                }
            }
        }

        if decrement {
            if inner.v6 {
                ipv6::Packet::new_unchecked(&mut *pkt).decrement_hop_limit();
            } else {
                ipv4::Packet::new_unchecked(&mut *pkt).decrement_ttl();
            }
        }

        // MSS on SYNs crossing a tunnel: the smaller clamp of the two.
        let clamp = match (
            from_tunnel.and_then(|t| t.mss),
            to_tunnel.and_then(|t| t.mss),
        ) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        if let Some(c) = clamp {
            if let crate::mss::Clamped::Lowered { .. } = clamp_mss(&mut pkt[..inner.len], c) {
                self.counters.mss_clamped += 1;
            }
        }
        Verdict::Forward {
            target,
            fragment_outer,
        }
    }

    fn error(
        &mut self,
        pkt: &[u8],
        kind: ErrorKind,
        source: ErrorSource,
        dropped: PathDrop,
        now: Instant,
        scratch: &mut [u8],
    ) -> Verdict {
        if !self.bucket.take(now) {
            self.counters.icmp_rate_limited += 1;
            return Verdict::Drop(dropped);
        }
        self.ident = self.ident.wrapping_add(1);
        match icmp_error::build(pkt, kind, source, self.ident, 0, scratch) {
            Ok(len) => {
                self.counters.icmp_errors_sent += 1;
                Verdict::Reply { len, dropped }
            }
            Err(_) => Verdict::Drop(dropped),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mss::{Encap, EspCipher};
    use crate::route::{Prefix, TenantSpec};
    use crate::wire::fixtures::{
        ICMPV4_ECHO, ICMPV6_ECHO, IPV4_DF_1428, IPV4_TTL1, IPV6_1448, IPV6_HLIM1, TCPV4_SYN,
        TCPV6_SYN,
    };
    use crate::wire::{icmpv4, icmpv6, mutate, tcp};
    use anyhub_ike::ts::parse as ts;
    use std::time::Duration;

    const A: TunnelId = TunnelId(0); // site a: 192.0.2.0/24, 2001:db8:1::/48
    const B: TunnelId = TunnelId(1); // site b: 198.51.100.0/24, 2001:db8:2::/48

    fn gcm_mtu() -> usize {
        Encap::Esp {
            cipher: EspCipher::AES_GCM_16,
            udp: true,
            outer_v6: false,
        }
        .inner_mtu(1500)
    }

    fn setup() -> (Tenants, TunnelTable) {
        let p = |s: &str| s.parse::<Prefix>().unwrap();
        let tenants = Tenants::build(&[TenantSpec {
            name: "acme".into(),
            routes: vec![
                (p("192.0.2.0/24"), Target::Tunnel(A)),
                (p("2001:db8:1::/48"), Target::Tunnel(A)),
                (p("198.51.100.0/24"), Target::Tunnel(B)),
                (p("2001:db8:2::/48"), Target::Tunnel(B)),
                (p("0.0.0.0/0"), Target::Local),
            ],
        }])
        .unwrap();
        let sel = |l: &[&str], r: &[&str]| Selectors {
            local: l.iter().map(|s| ts(s).unwrap()).collect(),
            remote: r.iter().map(|s| ts(s).unwrap()).collect(),
        };
        let mut tunnels = TunnelTable::new();
        let mtu = gcm_mtu();
        tunnels.insert(TunnelPath {
            id: A,
            tenant: TenantId(0),
            inner_mtu: mtu,
            mss: Some(MssClamp::for_inner_mtu(mtu)),
            selectors: sel(&["0.0.0.0/0", "::/0"], &["192.0.2.0/24", "2001:db8:1::/48"]),
            error_source: ErrorSource::default(),
        });
        tunnels.insert(TunnelPath {
            id: B,
            tenant: TenantId(0),
            inner_mtu: 1280 - 60,
            mss: Some(MssClamp::for_inner_mtu(1280 - 60)),
            selectors: sel(
                &["0.0.0.0/0", "::/0"],
                &["198.51.100.0/24", "2001:db8:2::/48"],
            ),
            error_source: ErrorSource::default(),
        });
        (tenants, tunnels)
    }

    fn from_a() -> Ingress<'static> {
        Ingress::Tunnel {
            id: A,
            sa_selectors: None,
        }
    }

    #[test]
    fn tunnel_to_tunnel_decrements_and_clamps() {
        let (tenants, tunnels) = setup();
        let mut f = Forwarder::default();
        let mut scratch = [0u8; 1500];
        let now = Instant::now();
        let mut p = TCPV4_SYN;
        let v = f.forward(&tenants, &tunnels, from_a(), &mut p, now, &mut scratch);
        assert_eq!(
            v,
            Verdict::Forward {
                target: Target::Tunnel(B),
                fragment_outer: false
            }
        );
        let ip = ipv4::Packet::new_checked(&p[..]).unwrap();
        assert_eq!(ip.ttl(), 63);
        assert!(ip.verify_checksum());
        // B's inner MTU 1220: MSS 1180 (smaller than A's 1398).
        let t = tcp::Packet::new_checked(&p[20..]).unwrap();
        assert_eq!(t.mss().unwrap().0, 1180);
        let (s, d) = (IpAddr::V4(ip.src_addr()), IpAddr::V4(ip.dst_addr()));
        assert!(t.verify_checksum(&s, &d));
        assert_eq!(f.counters.mss_clamped, 1);
        // IPv6: hop limit, MSS 1160.
        let mut p = TCPV6_SYN;
        let v = f.forward(&tenants, &tunnels, from_a(), &mut p, now, &mut scratch);
        assert!(matches!(
            v,
            Verdict::Forward {
                target: Target::Tunnel(B),
                ..
            }
        ));
        assert_eq!(ipv6::Packet::new_checked(&p[..]).unwrap().hop_limit(), 63);
        assert_eq!(
            tcp::Packet::new_checked(&p[40..]).unwrap().mss().unwrap().0,
            1160
        );
    }

    #[test]
    fn local_side_is_not_decremented() {
        let (tenants, tunnels) = setup();
        let mut f = Forwarder::default();
        let mut scratch = [0u8; 1500];
        // From the TUN into tunnel B: TTL as the kernel left it.
        let mut p = ICMPV4_ECHO;
        let v = f.forward(
            &tenants,
            &tunnels,
            Ingress::Local {
                tenant: TenantId(0),
            },
            &mut p,
            Instant::now(),
            &mut scratch,
        );
        assert!(matches!(
            v,
            Verdict::Forward {
                target: Target::Tunnel(B),
                ..
            }
        ));
        assert_eq!(p, ICMPV4_ECHO);
        // From tunnel A to the default route (local): untouched too.
        let mut p = ICMPV4_ECHO;
        {
            let mut ip = ipv4::Packet::new_unchecked(&mut p[..]);
            ip.set_dst_addr("203.0.113.9".parse().unwrap());
            ip.fill_checksum();
        }
        let before = p;
        let v = f.forward(
            &tenants,
            &tunnels,
            from_a(),
            &mut p,
            Instant::now(),
            &mut scratch,
        );
        assert_eq!(
            v,
            Verdict::Forward {
                target: Target::Local,
                fragment_outer: false
            }
        );
        assert_eq!(p, before);
    }

    #[test]
    fn selectors_enforced_both_ways() {
        let (tenants, tunnels) = setup();
        let mut f = Forwarder::default();
        let mut scratch = [0u8; 1500];
        let now = Instant::now();
        // The SYN comes from 192.0.2.1: not inside B's remote selectors.
        let mut p = TCPV4_SYN;
        let v = f.forward(
            &tenants,
            &tunnels,
            Ingress::Tunnel {
                id: B,
                sa_selectors: None,
            },
            &mut p,
            now,
            &mut scratch,
        );
        assert_eq!(v, Verdict::Drop(PathDrop::SelectorMismatch));
        // The very SA's selectors, when given, win over the tunnel's.
        let narrow = Selectors {
            local: vec![ts("198.51.100.0/24[udp]").unwrap()],
            remote: vec![ts("192.0.2.0/24").unwrap()],
        };
        let v = f.forward(
            &tenants,
            &tunnels,
            Ingress::Tunnel {
                id: A,
                sa_selectors: Some(&narrow),
            },
            &mut p,
            now,
            &mut scratch,
        );
        assert_eq!(v, Verdict::Drop(PathDrop::SelectorMismatch));
        // Egress: B's SAs do not carry traffic from 10.9.0.0/16.
        let mut t2 = tunnels.clone();
        let mut b = t2.get(B).unwrap().clone();
        b.selectors.local = vec![ts("10.9.0.0/16").unwrap()];
        t2.insert(b);
        let mut p = TCPV4_SYN;
        let v = f.forward(&tenants, &t2, from_a(), &mut p, now, &mut scratch);
        assert_eq!(v, Verdict::Drop(PathDrop::SelectorMismatch));
        assert_eq!(p, TCPV4_SYN, "dropped packets are not rewritten");
    }

    #[test]
    fn no_route_unknown_tenant_tunnel_down() {
        let (tenants, mut tunnels) = setup();
        let mut f = Forwarder::default();
        let mut scratch = [0u8; 1500];
        let now = Instant::now();
        let mut p = ICMPV6_ECHO;
        {
            let mut ip = ipv6::Packet::new_unchecked(&mut p[..]);
            ip.set_dst_addr("2001:db8:99::1".parse().unwrap());
        }
        assert_eq!(
            f.forward(&tenants, &tunnels, from_a(), &mut p, now, &mut scratch),
            Verdict::Drop(PathDrop::NoRoute)
        );
        let mut p = ICMPV4_ECHO;
        assert_eq!(
            f.forward(
                &tenants,
                &tunnels,
                Ingress::Local {
                    tenant: TenantId(7)
                },
                &mut p,
                now,
                &mut scratch
            ),
            Verdict::Drop(PathDrop::UnknownTenant)
        );
        tunnels.remove(B);
        assert_eq!(
            f.forward(&tenants, &tunnels, from_a(), &mut p, now, &mut scratch),
            Verdict::Drop(PathDrop::TunnelDown)
        );
        let mut junk = [0x45u8, 0, 0, 10];
        assert_eq!(
            f.forward(&tenants, &tunnels, from_a(), &mut junk, now, &mut scratch),
            Verdict::Drop(PathDrop::InnerMalformed)
        );
        let mut bad_sum = ICMPV4_ECHO;
        bad_sum[10] ^= 0xff;
        assert_eq!(
            f.forward(
                &tenants,
                &tunnels,
                from_a(),
                &mut bad_sum,
                now,
                &mut scratch
            ),
            Verdict::Drop(PathDrop::InnerMalformed)
        );
    }

    #[test]
    fn expired_ttl_answers_time_exceeded() {
        let (tenants, tunnels) = setup();
        let mut f = Forwarder::default();
        let mut scratch = [0u8; 1500];
        let mut p = IPV4_TTL1;
        let v = f.forward(
            &tenants,
            &tunnels,
            from_a(),
            &mut p,
            Instant::now(),
            &mut scratch,
        );
        let Verdict::Reply { len, dropped } = v else {
            panic!("{v:?}")
        };
        assert_eq!(dropped, PathDrop::TtlExpired);
        let ip = ipv4::Packet::new_checked(&scratch[..len]).unwrap();
        assert_eq!(
            ip.dst_addr(),
            "192.0.2.1".parse::<std::net::Ipv4Addr>().unwrap()
        );
        let icmp = icmpv4::Packet::new_checked(ip.payload()).unwrap();
        assert_eq!(icmp.msg_type(), icmpv4::msg::TIME_EXCEEDED);
        assert_eq!(icmp.data(), &IPV4_TTL1[..], "quotes the packet as received");
        let mut p = IPV6_HLIM1;
        let v = f.forward(
            &tenants,
            &tunnels,
            from_a(),
            &mut p,
            Instant::now(),
            &mut scratch,
        );
        let Verdict::Reply { len, .. } = v else {
            panic!("{v:?}")
        };
        let ip = ipv6::Packet::new_checked(&scratch[..len]).unwrap();
        let icmp = icmpv6::Packet::new_checked(ip.payload()).unwrap();
        assert_eq!(icmp.msg_type(), icmpv6::msg::TIME_EXCEEDED);
        // The selector check passes for the error going back into A: its
        // source is the invoking packet's destination (in A's local side).
        let flow = Flow::parse(&scratch[..len]).unwrap();
        let a = tunnels.get(A).unwrap();
        assert!(flow_allowed(
            &flow,
            Direction::Outbound,
            &a.selectors.local,
            &a.selectors.remote
        ));
    }

    #[test]
    fn too_big_answers_with_the_tunnel_mtu() {
        let (tenants, tunnels) = setup();
        let mut f = Forwarder::default();
        let mut scratch = [0u8; 1500];
        let now = Instant::now();
        // 1428 bytes with DF to B (inner MTU 1220).
        let mut p = IPV4_DF_1428;
        let v = f.forward(&tenants, &tunnels, from_a(), &mut p, now, &mut scratch);
        let Verdict::Reply { len, dropped } = v else {
            panic!("{v:?}")
        };
        assert_eq!(dropped, PathDrop::TooBig);
        let ip = ipv4::Packet::new_checked(&scratch[..len]).unwrap();
        let icmp = icmpv4::Packet::new_checked(ip.payload()).unwrap();
        assert_eq!(
            (icmp.msg_type(), icmp.msg_code(), icmp.next_hop_mtu()),
            (
                icmpv4::msg::DST_UNREACHABLE,
                icmpv4::unreachable::FRAG_NEEDED,
                1220
            )
        );
        // Without DF: forwarded, the outer packet may fragment.
        let mut p = IPV4_DF_1428;
        {
            let mut ip = ipv4::Packet::new_unchecked(&mut p[..]);
            ip.set_flags_frag(false, false, 0);
            ip.fill_checksum();
        }
        assert_eq!(
            f.forward(&tenants, &tunnels, from_a(), &mut p, now, &mut scratch),
            Verdict::Forward {
                target: Target::Tunnel(B),
                fragment_outer: true
            }
        );
        // IPv6 1448 bytes: Packet Too Big, at least 1280.
        let mut p = IPV6_1448;
        let Verdict::Reply { len, .. } =
            f.forward(&tenants, &tunnels, from_a(), &mut p, now, &mut scratch)
        else {
            panic!()
        };
        let ip = ipv6::Packet::new_checked(&scratch[..len]).unwrap();
        let icmp = icmpv6::Packet::new_checked(ip.payload()).unwrap();
        assert_eq!(
            (icmp.msg_type(), icmp.rest_of_header()),
            (icmpv6::msg::PACKET_TOO_BIG, 1280)
        );
        // An IPv6 packet of 1240 bytes (over B's 1220, under 1280): forwarded
        // with outer fragmentation.
        let mut p = IPV6_1448[..1240].to_vec();
        ipv6::Packet::new_unchecked(&mut p[..]).set_payload_len(1200);
        assert_eq!(
            f.forward(&tenants, &tunnels, from_a(), &mut p, now, &mut scratch),
            Verdict::Forward {
                target: Target::Tunnel(B),
                fragment_outer: true
            }
        );
        assert_eq!(f.counters.icmp_errors_sent, 2);
    }

    #[test]
    fn icmp_errors_are_rate_limited() {
        let (tenants, tunnels) = setup();
        let mut f = Forwarder::new(TokenBucket::new(10, 2));
        let mut scratch = [0u8; 1500];
        let t0 = Instant::now();
        let mut replies = 0;
        for i in 0..100u64 {
            let mut p = IPV4_TTL1;
            // 100 packets within 99 ms: the burst of 2 and one refill.
            match f.forward(
                &tenants,
                &tunnels,
                from_a(),
                &mut p,
                t0 + Duration::from_millis(i),
                &mut scratch,
            ) {
                Verdict::Reply { .. } => replies += 1,
                Verdict::Drop(PathDrop::TtlExpired) => {}
                v => panic!("{v:?}"),
            }
        }
        assert_eq!(replies, 2);
        assert_eq!(f.counters.icmp_rate_limited, 98);
        // Too small a scratch buffer: dropped, no error.
        let mut p = IPV4_TTL1;
        assert_eq!(
            f.forward(
                &tenants,
                &tunnels,
                from_a(),
                &mut p,
                t0 + Duration::from_secs(9),
                &mut [0u8; 10]
            ),
            Verdict::Drop(PathDrop::TtlExpired)
        );
    }

    #[test]
    fn esp_tunnel_path_from_a_child_sa() {
        use anyhub_crypto::Secret;
        use anyhub_ike::proposal::EncrAlg;
        use anyhub_ike::wire::registry::{EncrId, ProtocolId};
        use anyhub_ike::{ChildSa, DirectionKeys, IkeSaHandle, Selected};
        let keys = || DirectionKeys {
            encr: Secret::new(vec![0; 36]),
            integ: None,
        };
        let mut child = ChildSa {
            tunnel: "t".into(),
            ike: IkeSaHandle(1),
            spi_in: 1,
            spi_out: 2,
            proposal: Selected {
                protocol: ProtocolId::ESP,
                num: 1,
                encr: EncrAlg {
                    id: EncrId::AES_GCM_16,
                    key_bits: 256,
                },
                prf: None,
                integ: None,
                dh: None,
                esn: false,
                peer_spi: vec![],
            },
            keys_in: keys(),
            keys_out: keys(),
            local_ts: vec![ts("10.1.0.0/16").unwrap()],
            remote_ts: vec![ts("10.2.0.0/16").unwrap()],
            lifetime: Duration::from_secs(3600),
            local: "192.0.2.1:4500".parse().unwrap(),
            remote: "198.51.100.2:4500".parse().unwrap(),
            encap: true,
            rekey_of: None,
        };
        let t = TunnelPath::esp(A, TenantId(0), &child, 1500).unwrap();
        assert_eq!((t.inner_mtu, t.mss.unwrap().v4), (1438, 1398));
        assert_eq!(t.selectors.remote, child.remote_ts);
        child.encap = false;
        assert_eq!(
            TunnelPath::esp(A, TenantId(0), &child, 1500)
                .unwrap()
                .inner_mtu,
            1446
        );
        child.proposal.encr.id = EncrId::AES_CTR;
        assert!(TunnelPath::esp(A, TenantId(0), &child, 1500).is_none());
    }

    #[test]
    fn drop_names_are_unique() {
        let names: std::collections::HashSet<_> =
            PathDrop::ALL.iter().map(|d| d.as_str()).collect();
        assert_eq!(names.len(), PathDrop::ALL.len());
    }

    #[test]
    fn garbage_never_panics() {
        let (tenants, tunnels) = setup();
        let mut f = Forwarder::default();
        let mut scratch = [0u8; 1500];
        let now = Instant::now();
        for seed in [
            &TCPV4_SYN[..],
            &TCPV6_SYN[..],
            &IPV4_TTL1[..],
            &IPV6_1448[..200],
        ] {
            mutate::variants(seed, 3000, |b| {
                let mut b = b.to_vec();
                let _ = f.forward(&tenants, &tunnels, from_a(), &mut b, now, &mut scratch);
                let _ = f.forward(
                    &tenants,
                    &tunnels,
                    Ingress::Local {
                        tenant: TenantId(0),
                    },
                    &mut b,
                    now,
                    &mut scratch,
                );
            });
        }
    }
}
