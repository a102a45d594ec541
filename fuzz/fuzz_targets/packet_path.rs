//! The dataplane's packet path on arbitrary bytes: every wire parser, the
//! forwarding pipeline, MSS clamping, ICMP error building, GRE
//! decapsulation and the XFRM netlink parser. None may panic; whatever an
//! XFRM message parses to must re-emit to bytes that parse the same.
#![no_main]
use anyhub_dataplane::gre::{GreTunnelConfig, GreTunnels};
use anyhub_dataplane::icmp_error::{self, ErrorKind, ErrorSource};
use anyhub_dataplane::mss::{clamp_mss, MssClamp};
use anyhub_dataplane::path::{Forwarder, Ingress, Selectors, TunnelPath, TunnelTable};
use anyhub_dataplane::route::{Prefix, Target, TenantId, TenantSpec, Tenants, TunnelId};
use anyhub_dataplane::wire::{gre, icmpv4, icmpv6, ipv4, ipv6, tcp, udp};
use anyhub_dataplane::xfrm::XfrmMessage;
use libfuzzer_sys::fuzz_target;
use std::net::IpAddr;
use std::sync::OnceLock;
use std::time::Instant;

struct World {
    tenants: Tenants,
    tunnels: TunnelTable,
    gre: GreTunnels,
}

fn world() -> &'static World {
    static W: OnceLock<World> = OnceLock::new();
    W.get_or_init(|| {
        let p = |s: &str| s.parse::<Prefix>().unwrap();
        let tenants = Tenants::build(&[TenantSpec {
            name: "t".into(),
            routes: vec![
                (p("0.0.0.0/1"), Target::Tunnel(TunnelId(0))),
                (p("128.0.0.0/1"), Target::Tunnel(TunnelId(1))),
                (p("::/1"), Target::Tunnel(TunnelId(0))),
                (p("8000::/1"), Target::Local),
            ],
        }])
        .unwrap();
        let mut tunnels = TunnelTable::new();
        for id in 0..2 {
            tunnels.insert(TunnelPath {
                id: TunnelId(id),
                tenant: TenantId(0),
                inner_mtu: 600,
                mss: Some(MssClamp::for_inner_mtu(600)),
                selectors: Selectors::any(),
                error_source: ErrorSource::default(),
            });
        }
        let gre = GreTunnels::build(vec![GreTunnelConfig {
            id: TunnelId(0),
            tenant: TenantId(0),
            remote: "192.0.2.1".parse().unwrap(),
            local: "198.51.100.2".parse().unwrap(),
            key: None,
            path_mtu: 1500,
            ttl: 64,
        }])
        .unwrap();
        World { tenants, tunnels, gre }
    })
}

fuzz_target!(|data: &[u8]| {
    let (s4, d4): (IpAddr, IpAddr) = ("192.0.2.1".parse().unwrap(), "198.51.100.2".parse().unwrap());
    if let Ok(p) = ipv4::Packet::new_checked(data) {
        let _ = ipv4::Repr::parse(&p);
        let _ = (p.payload(), p.options());
    }
    if let Ok(p) = ipv6::Packet::new_checked(data) {
        let _ = ipv6::Repr::parse(&p);
        let _ = p.upper_layer();
    }
    if let Ok(p) = udp::Packet::new_checked(data) {
        let _ = udp::Repr::parse(&p, &s4, &d4);
    }
    if let Ok(p) = tcp::Packet::new_checked(data) {
        let _ = tcp::Repr::parse(&p, &s4, &d4);
        let _ = p.mss();
    }
    if let Ok(p) = icmpv4::Packet::new_checked(data) {
        let _ = icmpv4::Repr::parse(&p);
    }
    if let Ok(p) = icmpv6::Packet::new_checked(data) {
        let _ = icmpv6::Repr::parse(&p, &s4, &d4);
    }
    if let Ok(p) = gre::Packet::new_checked(data) {
        let _ = gre::Repr::parse(&p);
    }
    let w = world();
    let _ = w.gre.decapsulate(data);
    let mut scratch = [0u8; 1500];
    for kind in [ErrorKind::TimeExceeded, ErrorKind::TooBig { mtu: 1280 }] {
        let _ = icmp_error::build(data, kind, ErrorSource::default(), 1, 0, &mut scratch);
    }
    let mut buf = data.to_vec();
    let _ = clamp_mss(&mut buf, MssClamp { v4: 500, v6: 500 });
    let mut f = Forwarder::default();
    let now = Instant::now();
    let mut buf = data.to_vec();
    let _ = f.forward(&w.tenants, &w.tunnels, Ingress::Tunnel { id: TunnelId(0), sa_selectors: None }, &mut buf, now, &mut scratch);
    let mut buf = data.to_vec();
    let _ = f.forward(&w.tenants, &w.tunnels, Ingress::Local { tenant: TenantId(0) }, &mut buf, now, &mut scratch);
    if let Ok((h, m)) = XfrmMessage::parse(data) {
        let again = m.emit(h.flags, h.seq, h.pid);
        let (_, m2) = XfrmMessage::parse(&again).expect("our own emit must parse");
        assert_eq!(m2, m);
    }
});
