//! Nanoseconds per packet for the sans-IO packet path: the forwarding
//! pipeline (selectors, route, TTL, MTU, MSS) tunnel → tunnel, and GRE
//! decapsulation + encapsulation, on 64, 512 and 1400-byte packets. The
//! baseline in the same run is a plain `memcpy` of the packet, the least
//! any dataplane does per packet.
//!
//! `flock /tmp/anyhub-heavy.lock cargo bench -p anyhub-dataplane --bench path_forward`
//!
//! Prints a table and, last, one JSON line.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Instant;

use anyhub_dataplane::gre::{Decap, GreTunnelConfig, GreTunnels};
use anyhub_dataplane::icmp_error::ErrorSource;
use anyhub_dataplane::mss::MssClamp;
use anyhub_dataplane::path::{Forwarder, Ingress, Selectors, TunnelPath, TunnelTable, Verdict};
use anyhub_dataplane::route::{Prefix, Target, TenantId, TenantSpec, Tenants, TunnelId};
use anyhub_dataplane::wire::{ipv4, tcp, IpProtocol};

fn tcp_packet(len: usize) -> Vec<u8> {
    let src = Ipv4Addr::new(10, 1, 0, 7);
    let dst = Ipv4Addr::new(10, 2, 0, 9);
    let mut b = vec![0u8; len];
    let t = tcp::Repr {
        src_port: 40000,
        dst_port: 443,
        seq_number: 1,
        ack_number: 1,
        flags: tcp::Flags(tcp::Flags::ACK | tcp::Flags::PSH),
        window_len: 1000,
        max_seg_size: None,
        window_scale: None,
        sack_permitted: false,
        timestamps: None,
        payload_len: len - 40,
    };
    t.emit(
        &mut tcp::Packet::new_unchecked(&mut b[20..]),
        &IpAddr::V4(src),
        &IpAddr::V4(dst),
        |p| p.fill(0xab),
    );
    ipv4::Repr {
        src_addr: src,
        dst_addr: dst,
        protocol: IpProtocol::TCP,
        payload_len: len - 20,
        ttl: 64,
        dscp_ecn: 0,
        ident: 1,
        dont_frag: true,
        more_frags: false,
        frag_offset: 0,
    }
    .emit(&mut ipv4::Packet::new_unchecked(&mut b[..]));
    b
}

fn time(rounds: usize, mut f: impl FnMut()) -> f64 {
    for _ in 0..rounds / 10 {
        f();
    }
    let t = Instant::now();
    for _ in 0..rounds {
        f();
    }
    t.elapsed().as_nanos() as f64 / rounds as f64
}

fn main() {
    let p = |s: &str| s.parse::<Prefix>().unwrap();
    let mut routes = vec![
        (p("10.1.0.0/16"), Target::Tunnel(TunnelId(0))),
        (p("10.2.0.0/16"), Target::Tunnel(TunnelId(1))),
        (p("0.0.0.0/0"), Target::Local),
    ];
    // A realistic table around them: 1000 other /24s.
    for i in 0..1000u32 {
        let a = Ipv4Addr::from(0x0b00_0000 | (i << 8));
        routes.push((
            Prefix::new(IpAddr::V4(a), 24).unwrap(),
            Target::Tunnel(TunnelId(1)),
        ));
    }
    let tenants = Tenants::build(&[TenantSpec {
        name: "acme".into(),
        routes,
    }])
    .unwrap();
    let ts = |s: &str| anyhub_ike::ts::parse(s).unwrap();
    let mut tunnels = TunnelTable::new();
    for (id, remote) in [(0, "10.1.0.0/16"), (1, "10.2.0.0/16")] {
        tunnels.insert(TunnelPath {
            id: TunnelId(id),
            tenant: TenantId(0),
            inner_mtu: 1438,
            mss: Some(MssClamp::for_inner_mtu(1438)),
            selectors: Selectors {
                local: vec![ts("0.0.0.0/0")],
                remote: vec![ts(remote)],
            },
            error_source: ErrorSource::default(),
        });
    }
    let gre = GreTunnels::build(vec![GreTunnelConfig {
        id: TunnelId(0),
        tenant: TenantId(0),
        remote: "192.0.2.1".parse().unwrap(),
        local: "198.51.100.2".parse().unwrap(),
        key: Some(7),
        path_mtu: 1500,
        ttl: 64,
    }])
    .unwrap();
    let g = gre.get(TunnelId(0)).unwrap().clone();
    let mut fwd = Forwarder::default();
    let mut scratch = vec![0u8; 1500];
    let now = Instant::now();
    let rounds = 2_000_000;
    let mut rows = Vec::new();
    for size in [64usize, 512, 1400] {
        let pkt = tcp_packet(size);
        let mut work = pkt.clone();
        let copy = time(rounds, || {
            work.copy_from_slice(black_box(&pkt));
            black_box(&work);
        });
        let path = time(rounds, || {
            work.copy_from_slice(&pkt);
            let v = fwd.forward(
                &tenants,
                &tunnels,
                Ingress::Tunnel {
                    id: TunnelId(0),
                    sa_selectors: None,
                },
                &mut work,
                now,
                &mut scratch,
            );
            assert!(matches!(v, Verdict::Forward { .. }));
            black_box(v);
        });
        // GRE: encapsulate into headroom, then decapsulate what we made.
        let hr = g.overhead();
        let mut gbuf = vec![0u8; hr + size];
        let gre_rt = time(rounds, || {
            gbuf[hr..].copy_from_slice(&pkt);
            let r = gre
                .encapsulate(&g, &mut gbuf, hr..hr + size, false, 1)
                .unwrap();
            black_box(&r);
        });
        // Decapsulation needs the tunnel seen from the other side.
        let rev = GreTunnels::build(vec![GreTunnelConfig {
            remote: g.local,
            local: g.remote,
            ..g.clone()
        }])
        .unwrap();
        let decap = time(rounds, || {
            let d = rev.decapsulate(black_box(&gbuf));
            assert!(matches!(d, Decap::Inner { .. }));
            black_box(d);
        });
        rows.push((size, copy, path - copy, gre_rt - copy, decap));
    }
    println!(
        "{:>6} {:>10} {:>16} {:>14} {:>14}",
        "bytes", "memcpy ns", "forward ns", "GRE encap ns", "GRE decap ns"
    );
    for (s, c, f, e, d) in &rows {
        println!("{s:>6} {c:>10.1} {f:>16.1} {e:>14.1} {d:>14.1}");
    }
    let r = rows[2];
    println!(
        "{{\"bench\":\"path_forward\",\"forward_ns_1400\":{:.1},\"gre_encap_ns_1400\":{:.1},\"gre_decap_ns_1400\":{:.1},\"memcpy_ns_1400\":{:.1},\"forward_ns_64\":{:.1}}}",
        r.2, r.3, r.4, r.1, rows[0].2
    );
}
