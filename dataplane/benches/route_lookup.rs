//! Route lookups per second: anyhub's `RouteTable` against a per-prefix-
//! length `HashMap` table (the other simple design), on the same routes and
//! the same destinations, in one run.
//!
//! `flock /tmp/anyhub-heavy.lock cargo bench -p anyhub-dataplane --bench route_lookup`
//!
//! Prints a table and, last, one JSON line.

use std::collections::HashMap;
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Instant;

use anyhub_dataplane::route::{Prefix, RouteTable, Target, TunnelId};

struct XorShift(u64);
impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
}

fn mask4(a: u32, l: u8) -> u32 {
    if l == 0 {
        0
    } else {
        a & (u32::MAX << (32 - u32::from(l)))
    }
}
fn mask6(a: u128, l: u8) -> u128 {
    if l == 0 {
        0
    } else {
        a & (u128::MAX << (128 - u32::from(l)))
    }
}

/// The baseline: one HashMap per present length, longest first.
struct HashLpm {
    v4: Vec<(u8, HashMap<u32, Target>)>,
    v6: Vec<(u8, HashMap<u128, Target>)>,
}
impl HashLpm {
    fn build(routes: &[(Prefix, Target)]) -> HashLpm {
        let mut v4: HashMap<u8, HashMap<u32, Target>> = HashMap::new();
        let mut v6: HashMap<u8, HashMap<u128, Target>> = HashMap::new();
        for (p, t) in routes {
            match p.addr() {
                IpAddr::V4(a) => {
                    v4.entry(p.prefix_len())
                        .or_default()
                        .insert(u32::from(a), *t);
                }
                IpAddr::V6(a) => {
                    v6.entry(p.prefix_len())
                        .or_default()
                        .insert(u128::from(a), *t);
                }
            }
        }
        let mut v4: Vec<_> = v4.into_iter().collect();
        let mut v6: Vec<_> = v6.into_iter().collect();
        v4.sort_by_key(|l| std::cmp::Reverse(l.0));
        v6.sort_by_key(|l| std::cmp::Reverse(l.0));
        HashLpm { v4, v6 }
    }
    fn lookup(&self, dst: IpAddr) -> Option<Target> {
        match dst {
            IpAddr::V4(a) => {
                let a = u32::from(a);
                self.v4
                    .iter()
                    .find_map(|(l, m)| m.get(&mask4(a, *l)).copied())
            }
            IpAddr::V6(a) => {
                let a = u128::from(a);
                self.v6
                    .iter()
                    .find_map(|(l, m)| m.get(&mask6(a, *l)).copied())
            }
        }
    }
}

fn main() {
    let mut rng = XorShift(0x1234_5678_9abc_def1);
    let mut routes = Vec::new();
    let mut seen = std::collections::HashSet::new();
    // A large customer: 10k IPv4 routes (/8../32, most /24), 10k IPv6
    // (/32../64, most /48), plus defaults.
    let v4_lens = [8u8, 16, 20, 22, 24, 24, 24, 24, 28, 32];
    let v6_lens = [32u8, 40, 44, 48, 48, 48, 56, 64];
    while routes.len() < 10_000 {
        let l = v4_lens[(rng.next() % v4_lens.len() as u64) as usize];
        let a = mask4((rng.next() as u32 & 0x00ff_ffff) | 0x0a00_0000, l);
        let p = Prefix::new(IpAddr::V4(Ipv4Addr::from(a)), l).unwrap();
        if seen.insert(p) {
            routes.push((p, Target::Tunnel(TunnelId(routes.len() as u32))));
        }
    }
    while routes.len() < 20_000 {
        let l = v6_lens[(rng.next() % v6_lens.len() as u64) as usize];
        let a = mask6(
            (u128::from(rng.next()) << 64 & !(0xffff_ffffu128 << 96)) | (0x2001_0db8u128 << 96),
            l,
        );
        let p = Prefix::new(IpAddr::V6(Ipv6Addr::from(a)), l).unwrap();
        if seen.insert(p) {
            routes.push((p, Target::Tunnel(TunnelId(routes.len() as u32))));
        }
    }
    routes.push(("0.0.0.0/0".parse().unwrap(), Target::Local));
    routes.push(("::/0".parse().unwrap(), Target::Local));
    let t0 = Instant::now();
    let ours = RouteTable::build(&routes).unwrap();
    let build_ms = t0.elapsed().as_secs_f64() * 1e3;
    let base = HashLpm::build(&routes);

    let n = 1 << 16;
    let dsts4: Vec<IpAddr> = (0..n)
        .map(|_| {
            IpAddr::V4(Ipv4Addr::from(
                (rng.next() as u32 & 0x00ff_ffff) | 0x0a00_0000,
            ))
        })
        .collect();
    let dsts6: Vec<IpAddr> = (0..n)
        .map(|_| {
            IpAddr::V6(Ipv6Addr::from(
                (u128::from(rng.next()) << 64 | u128::from(rng.next())) & !(0xffff_ffffu128 << 96)
                    | (0x2001_0db8u128 << 96),
            ))
        })
        .collect();
    for d in dsts4.iter().chain(&dsts6).take(20_000) {
        assert_eq!(ours.lookup(*d), base.lookup(*d), "{d}");
    }

    let rounds = 40;
    let rate = |f: &dyn Fn(IpAddr) -> Option<Target>, d: &[IpAddr]| {
        let t = Instant::now();
        let mut hits = 0usize;
        for _ in 0..rounds {
            for &a in d {
                hits += black_box(f(black_box(a))).is_some() as usize;
            }
        }
        black_box(hits);
        (rounds * d.len()) as f64 / t.elapsed().as_secs_f64()
    };
    let ours4 = rate(&|a| ours.lookup(a), &dsts4);
    let base4 = rate(&|a| base.lookup(a), &dsts4);
    let ours6 = rate(&|a| ours.lookup(a), &dsts6);
    let base6 = rate(&|a| base.lookup(a), &dsts6);
    println!(
        "routes: {} (10k IPv4, 10k IPv6, 2 defaults), built in {build_ms:.1} ms",
        routes.len()
    );
    println!(
        "{:<28} {:>14} {:>14}",
        "lookups/s (one core)", "IPv4", "IPv6"
    );
    println!(
        "{:<28} {:>14.0} {:>14.0}",
        "anyhub RouteTable", ours4, ours6
    );
    println!(
        "{:<28} {:>14.0} {:>14.0}",
        "HashMap per length", base4, base6
    );
    println!(
        "{{\"bench\":\"route_lookup\",\"routes\":{},\"anyhub_v4_lookups_per_s\":{:.0},\"anyhub_v6_lookups_per_s\":{:.0},\"hashmap_v4_lookups_per_s\":{:.0},\"hashmap_v6_lookups_per_s\":{:.0}}}",
        routes.len(), ours4, ours6, base4, base6
    );
}
