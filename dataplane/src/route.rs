//! Tenants and their route tables: longest-prefix match for IPv4 and IPv6.
//!
//! Every tenant (customer) has its own table, so two customers may use the
//! same prefixes. A route sends a packet into a tunnel of that tenant or to
//! the node's local side (the TUN device).
//!
//! The structure is deliberately simple and allocation-free to read: one
//! open-addressing hash table (Fibonacci hashing, linear probing, at most
//! half full) per prefix length present in the table, tried from the
//! longest length to the shortest. A lookup costs about one probe per
//! distinct length; customer tables have few distinct lengths.
//! `benches/route_lookup.rs` measures it against a `std` `HashMap` per
//! length (sorted arrays with binary search, the first version, measured
//! 2.5× slower than that on IPv6 and were replaced).
//!
//! Tables are built whole from configuration ([`RouteTable::build`],
//! [`Tenants::build`]), validated first, and published with
//! [`crate::published::Published`]: a worker sees the old table or the new
//! one, never half of either.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;
use std::sync::Arc;

/// Names one tenant: an index into [`Tenants`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TenantId(pub u32);

/// Names one tunnel (IPsec or GRE) of the node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TunnelId(pub u32);

/// Where a route sends a packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Target {
    Tunnel(TunnelId),
    /// The node's local side: the TUN device.
    Local,
}

/// An IP prefix, `addr/len`, host bits zero.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Prefix {
    addr: IpAddr,
    len: u8,
}

/// Why a prefix or a table was refused; names the offending prefix.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    #[error("'{0}' is not a prefix (address/length)")]
    Syntax(String),
    #[error("{addr}/{len}: prefix length larger than {max}")]
    Length { addr: IpAddr, len: u8, max: u8 },
    #[error("{addr}/{len}: host bits are set (did you mean {net}/{len}?)")]
    HostBits { addr: IpAddr, len: u8, net: IpAddr },
    #[error("route {0} is configured twice")]
    Duplicate(Prefix),
    #[error("tenant '{0}' is configured twice")]
    DuplicateTenant(String),
}

impl Prefix {
    /// `addr/len`; refuses lengths beyond the family and set host bits.
    pub fn new(addr: IpAddr, len: u8) -> Result<Prefix, RouteError> {
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if len > max {
            return Err(RouteError::Length { addr, len, max });
        }
        let net = mask_addr(addr, len);
        if net != addr {
            return Err(RouteError::HostBits { addr, len, net });
        }
        Ok(Prefix { addr, len })
    }

    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    pub fn prefix_len(&self) -> u8 {
        self.len
    }

    /// Whether this is the default route (`/0`).
    pub fn is_default(&self) -> bool {
        self.len == 0
    }

    pub fn contains(&self, a: IpAddr) -> bool {
        a.is_ipv4() == self.addr.is_ipv4() && mask_addr(a, self.len) == self.addr
    }
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

impl fmt::Debug for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for Prefix {
    type Err = RouteError;

    /// `10.0.0.0/8`, `2001:db8::/32`; a bare address is a host route.
    fn from_str(s: &str) -> Result<Prefix, RouteError> {
        let syntax = || RouteError::Syntax(s.to_string());
        let (a, l) = match s.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (s, None),
        };
        let addr: IpAddr = a.trim().parse().map_err(|_| syntax())?;
        let len = match l {
            Some(l) => l.trim().parse::<u8>().map_err(|_| syntax())?,
            None if addr.is_ipv4() => 32,
            None => 128,
        };
        Prefix::new(addr, len)
    }
}

fn mask_v4(a: u32, len: u8) -> u32 {
    if len == 0 {
        0
    } else {
        a & (u32::MAX << (32 - u32::from(len)))
    }
}

fn mask_v6(a: u128, len: u8) -> u128 {
    if len == 0 {
        0
    } else {
        a & (u128::MAX << (128 - u32::from(len)))
    }
}

fn mask_addr(a: IpAddr, len: u8) -> IpAddr {
    match a {
        IpAddr::V4(v) => IpAddr::V4(Ipv4Addr::from(mask_v4(u32::from(v), len.min(32)))),
        IpAddr::V6(v) => IpAddr::V6(Ipv6Addr::from(mask_v6(u128::from(v), len.min(128)))),
    }
}

/// An address as an integer, for the per-length hash tables.
trait Key: Copy + Eq + Ord + Default {
    fn hash64(self) -> u64;
    fn and(self, mask: Self) -> Self;
}

impl Key for u32 {
    #[inline]
    fn hash64(self) -> u64 {
        u64::from(self)
    }
    #[inline]
    fn and(self, mask: u32) -> u32 {
        self & mask
    }
}

impl Key for u128 {
    #[inline]
    fn hash64(self) -> u64 {
        (self as u64) ^ ((self >> 64) as u64).rotate_left(29)
    }
    #[inline]
    fn and(self, mask: u128) -> u128 {
        self & mask
    }
}

/// The prefixes of one length in an open-addressing hash table (linear
/// probing, at most half full), keyed by the masked address.
#[derive(Clone, Debug)]
struct Level<A> {
    len: u8,
    mask: A,
    /// log2 of the slot count.
    bits: u32,
    slots: Box<[(A, Option<Target>)]>,
    count: usize,
}

impl<A: Key> Level<A> {
    fn build(len: u8, mask: A, routes: &[(A, Target)]) -> Level<A> {
        let mut bits = 1;
        while (1usize << bits) < routes.len() * 2 {
            bits += 1;
        }
        let mut slots = vec![(A::default(), None); 1 << bits].into_boxed_slice();
        for &(k, t) in routes {
            let mut i = Self::slot(k, bits);
            while slots[i].1.is_some() {
                i = (i + 1) & ((1 << bits) - 1);
            }
            slots[i] = (k, Some(t));
        }
        Level {
            len,
            mask,
            bits,
            slots,
            count: routes.len(),
        }
    }

    /// Fibonacci hashing: the high bits of key × 2^64/φ.
    #[inline]
    fn slot(k: A, bits: u32) -> usize {
        (k.hash64().wrapping_mul(0x9e37_79b9_7f4a_7c15) >> (64 - bits)) as usize
    }

    #[inline]
    fn get(&self, addr: A) -> Option<Target> {
        let k = addr.and(self.mask);
        let m = (1usize << self.bits) - 1;
        let mut i = Self::slot(k, self.bits);
        loop {
            let (sk, st) = self.slots[i];
            match st {
                None => return None,
                Some(t) if sk == k => return Some(t),
                Some(_) => i = (i + 1) & m,
            }
        }
    }
}

/// Longest-prefix match over one address family.
#[derive(Clone, Debug)]
struct Lpm<A> {
    /// Longest length first.
    levels: Box<[Level<A>]>,
}

impl<A: Key> Lpm<A> {
    fn build(mut routes: Vec<(A, u8, Target)>, mask: impl Fn(u8) -> A) -> Lpm<A> {
        routes.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        let mut levels = Vec::new();
        let mut i = 0;
        while i < routes.len() {
            let len = routes[i].1;
            let j = i + routes[i..].iter().take_while(|r| r.1 == len).count();
            let keyed: Vec<(A, Target)> = routes[i..j].iter().map(|r| (r.0, r.2)).collect();
            levels.push(Level::build(len, mask(len), &keyed));
            i = j;
        }
        Lpm {
            levels: levels.into_boxed_slice(),
        }
    }

    #[inline]
    fn lookup(&self, addr: A) -> Option<(u8, Target)> {
        for l in self.levels.iter() {
            if let Some(t) = l.get(addr) {
                return Some((l.len, t));
            }
        }
        None
    }

    fn len(&self) -> usize {
        self.levels.iter().map(|l| l.count).sum()
    }
}

fn mask4_of(len: u8) -> u32 {
    mask_v4(u32::MAX, len)
}

fn mask6_of(len: u8) -> u128 {
    mask_v6(u128::MAX, len)
}

/// One tenant's routes, both families.
#[derive(Clone, Debug)]
pub struct RouteTable {
    v4: Lpm<u32>,
    v6: Lpm<u128>,
}

impl RouteTable {
    /// Builds a table; refuses a prefix configured twice (naming it).
    pub fn build(routes: &[(Prefix, Target)]) -> Result<RouteTable, RouteError> {
        let mut seen = std::collections::HashSet::with_capacity(routes.len());
        let (mut v4, mut v6) = (Vec::new(), Vec::new());
        for &(p, t) in routes {
            if !seen.insert(p) {
                return Err(RouteError::Duplicate(p));
            }
            match p.addr {
                IpAddr::V4(a) => v4.push((u32::from(a), p.len, t)),
                IpAddr::V6(a) => v6.push((u128::from(a), p.len, t)),
            }
        }
        Ok(RouteTable {
            v4: Lpm::build(v4, mask4_of),
            v6: Lpm::build(v6, mask6_of),
        })
    }

    pub fn empty() -> RouteTable {
        RouteTable {
            v4: Lpm::build(Vec::new(), mask4_of),
            v6: Lpm::build(Vec::new(), mask6_of),
        }
    }

    /// The target of the longest prefix containing `dst`.
    #[inline]
    pub fn lookup_v4(&self, dst: Ipv4Addr) -> Option<Target> {
        self.v4.lookup(u32::from(dst)).map(|(_, t)| t)
    }

    #[inline]
    pub fn lookup_v6(&self, dst: Ipv6Addr) -> Option<Target> {
        self.v6.lookup(u128::from(dst)).map(|(_, t)| t)
    }

    #[inline]
    pub fn lookup(&self, dst: IpAddr) -> Option<Target> {
        match dst {
            IpAddr::V4(a) => self.lookup_v4(a),
            IpAddr::V6(a) => self.lookup_v6(a),
        }
    }

    /// The matching prefix length and target (for `anyhubctl route get`).
    pub fn lookup_detail(&self, dst: IpAddr) -> Option<(Prefix, Target)> {
        let (len, t) = match dst {
            IpAddr::V4(a) => self.v4.lookup(u32::from(a))?,
            IpAddr::V6(a) => self.v6.lookup(u128::from(a))?,
        };
        Some((
            Prefix {
                addr: mask_addr(dst, len),
                len,
            },
            t,
        ))
    }

    /// Number of routes.
    pub fn len(&self) -> usize {
        self.v4.len() + self.v6.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One tenant's configuration, as the route tables need it.
#[derive(Clone, Debug)]
pub struct TenantSpec {
    pub name: String,
    pub routes: Vec<(Prefix, Target)>,
}

/// Every tenant's table, indexed by [`TenantId`]: publish it whole.
#[derive(Clone, Debug)]
pub struct Tenants {
    names: Vec<Arc<str>>,
    by_name: HashMap<Arc<str>, TenantId>,
    tables: Vec<RouteTable>,
}

impl Tenants {
    /// Builds every tenant's table; the first bad route or duplicate
    /// tenant refuses the whole set (nothing half-applied). Tenant ids are
    /// the positions in `specs`.
    pub fn build(specs: &[TenantSpec]) -> Result<Tenants, RouteError> {
        let mut t = Tenants {
            names: Vec::with_capacity(specs.len()),
            by_name: HashMap::with_capacity(specs.len()),
            tables: Vec::with_capacity(specs.len()),
        };
        for (i, s) in specs.iter().enumerate() {
            let name: Arc<str> = s.name.as_str().into();
            if t.by_name.insert(name.clone(), TenantId(i as u32)).is_some() {
                return Err(RouteError::DuplicateTenant(s.name.clone()));
            }
            t.names.push(name);
            t.tables.push(RouteTable::build(&s.routes)?);
        }
        Ok(t)
    }

    #[inline]
    pub fn table(&self, id: TenantId) -> Option<&RouteTable> {
        self.tables.get(id.0 as usize)
    }

    pub fn id(&self, name: &str) -> Option<TenantId> {
        self.by_name.get(name).copied()
    }

    pub fn name(&self, id: TenantId) -> Option<&str> {
        self.names.get(id.0 as usize).map(|n| &**n)
    }

    pub fn len(&self) -> usize {
        self.tables.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tables.is_empty()
    }

    /// `dst` looked up in tenant `id`'s table.
    #[inline]
    pub fn lookup(&self, id: TenantId, dst: IpAddr) -> Option<Target> {
        self.table(id)?.lookup(dst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::mutate::Rng;

    fn p(s: &str) -> Prefix {
        s.parse().unwrap()
    }
    fn t(n: u32) -> Target {
        Target::Tunnel(TunnelId(n))
    }

    #[test]
    fn prefixes() {
        assert_eq!(p("10.0.0.0/8").to_string(), "10.0.0.0/8");
        assert_eq!(p("10.0.0.5").prefix_len(), 32);
        assert_eq!(p("2001:db8::/32").prefix_len(), 32);
        assert_eq!(p("::/0").prefix_len(), 0);
        assert!(matches!(
            "10.0.0.1/8".parse::<Prefix>(),
            Err(RouteError::HostBits { .. })
        ));
        assert!(matches!(
            "10.0.0.0/33".parse::<Prefix>(),
            Err(RouteError::Length { .. })
        ));
        assert!(matches!(
            "x/8".parse::<Prefix>(),
            Err(RouteError::Syntax(_))
        ));
        let e = "10.1.2.3/16".parse::<Prefix>().unwrap_err().to_string();
        assert!(e.contains("10.1.0.0/16"), "{e}");
        assert!(p("10.0.0.0/8").contains("10.255.0.1".parse().unwrap()));
        assert!(!p("10.0.0.0/8").contains("11.0.0.1".parse().unwrap()));
        assert!(!p("0.0.0.0/0").contains("::1".parse().unwrap()));
    }

    #[test]
    fn longest_prefix_wins() {
        let table = RouteTable::build(&[
            (p("0.0.0.0/0"), Target::Local),
            (p("10.0.0.0/8"), t(1)),
            (p("10.1.0.0/16"), t(2)),
            (p("10.1.2.0/24"), t(3)),
            (p("10.1.2.3/32"), t(4)),
            (p("2001:db8::/32"), t(5)),
            (p("2001:db8:1::/48"), t(6)),
        ])
        .unwrap();
        let l = |s: &str| table.lookup(s.parse().unwrap());
        assert_eq!(l("10.1.2.3"), Some(t(4)));
        assert_eq!(l("10.1.2.4"), Some(t(3)));
        assert_eq!(l("10.1.3.4"), Some(t(2)));
        assert_eq!(l("10.2.3.4"), Some(t(1)));
        assert_eq!(l("192.0.2.1"), Some(Target::Local));
        assert_eq!(l("2001:db8:1::9"), Some(t(6)));
        assert_eq!(l("2001:db8:2::9"), Some(t(5)));
        assert_eq!(l("2001:db9::1"), None, "no v6 default");
        assert_eq!(
            table.lookup_detail("10.1.3.4".parse().unwrap()),
            Some((p("10.1.0.0/16"), t(2)))
        );
        assert_eq!(table.len(), 7);
        assert_eq!(
            RouteTable::empty().lookup("10.0.0.1".parse().unwrap()),
            None
        );
    }

    #[test]
    fn duplicates_refused_by_name() {
        let e = RouteTable::build(&[(p("10.0.0.0/8"), t(1)), (p("10.0.0.0/8"), t(2))]).unwrap_err();
        assert_eq!(e.to_string(), "route 10.0.0.0/8 is configured twice");
    }

    /// Against a linear scan over random tables and addresses.
    #[test]
    fn matches_linear_scan() {
        let mut rng = Rng::new(42);
        for round in 0..20 {
            let mut routes = Vec::new();
            let mut seen = std::collections::HashSet::new();
            for i in 0..200 {
                let v6 = rng.below(2) == 0;
                let (addr, len) = if v6 {
                    let len = [0, 16, 32, 48, 56, 64, 128][rng.below(7)] as u8;
                    // Few distinct high bits so prefixes nest.
                    let a = (u128::from(rng.next()) << 64 | u128::from(rng.next()))
                        & !(0xfff << 116)
                        | (0x2001_0db8u128 << 96);
                    (IpAddr::V6(Ipv6Addr::from(mask_v6(a, len))), len)
                } else {
                    let len = rng.below(33) as u8;
                    let a = (rng.next() as u32 & 0x0f0f_ffff) | 0x0a00_0000;
                    (IpAddr::V4(Ipv4Addr::from(mask_v4(a, len))), len)
                };
                let pr = Prefix::new(addr, len).unwrap();
                if seen.insert(pr) {
                    routes.push((pr, t(round * 1000 + i)));
                }
            }
            let table = RouteTable::build(&routes).unwrap();
            for _ in 0..2000 {
                let dst = if rng.below(2) == 0 {
                    IpAddr::V4(Ipv4Addr::from(
                        (rng.next() as u32 & 0x0f0f_ffff) | 0x0a00_0000,
                    ))
                } else {
                    IpAddr::V6(Ipv6Addr::from(
                        (u128::from(rng.next()) << 64 | u128::from(rng.next())) & !(0xfff << 116)
                            | (0x2001_0db8u128 << 96),
                    ))
                };
                let want = routes
                    .iter()
                    .filter(|(pr, _)| pr.contains(dst))
                    .max_by_key(|(pr, _)| pr.prefix_len())
                    .map(|&(_, t)| t);
                assert_eq!(table.lookup(dst), want, "{dst}");
            }
        }
    }

    #[test]
    fn tenants_are_separate() {
        let tenants = Tenants::build(&[
            TenantSpec {
                name: "acme".into(),
                routes: vec![(p("10.1.0.0/24"), t(1)), (p("0.0.0.0/0"), Target::Local)],
            },
            TenantSpec {
                name: "globex".into(),
                routes: vec![(p("10.1.0.0/24"), t(2))],
            },
        ])
        .unwrap();
        let (a, g) = (tenants.id("acme").unwrap(), tenants.id("globex").unwrap());
        let dst = "10.1.0.7".parse().unwrap();
        assert_eq!(tenants.lookup(a, dst), Some(t(1)));
        assert_eq!(
            tenants.lookup(g, dst),
            Some(t(2)),
            "same prefix, other tenant"
        );
        assert_eq!(tenants.lookup(g, "8.8.8.8".parse().unwrap()), None);
        assert_eq!(tenants.lookup(TenantId(9), dst), None);
        assert_eq!(tenants.name(g), Some("globex"));
        let dup = Tenants::build(&[
            TenantSpec {
                name: "x".into(),
                routes: vec![],
            },
            TenantSpec {
                name: "x".into(),
                routes: vec![],
            },
        ]);
        assert!(matches!(dup, Err(RouteError::DuplicateTenant(_))));
    }

    #[test]
    fn replaced_atomically() {
        use crate::published::Published;
        let shared = Arc::new(Published::new(
            Tenants::build(&[TenantSpec {
                name: "acme".into(),
                routes: vec![(p("10.0.0.0/8"), t(1))],
            }])
            .unwrap(),
        ));
        let mut reader = shared.reader();
        let dst = "10.0.0.1".parse().unwrap();
        assert_eq!(reader.current().lookup(TenantId(0), dst), Some(t(1)));
        // A bad config is refused before anything is published.
        let bad = Tenants::build(&[TenantSpec {
            name: "acme".into(),
            routes: vec![(p("10.0.0.0/8"), t(2)), (p("10.0.0.0/8"), t(3))],
        }]);
        assert!(bad.is_err());
        assert_eq!(reader.current().lookup(TenantId(0), dst), Some(t(1)));
        shared.publish(
            Tenants::build(&[TenantSpec {
                name: "acme".into(),
                routes: vec![(p("10.0.0.0/8"), t(2))],
            }])
            .unwrap(),
        );
        assert_eq!(reader.current().lookup(TenantId(0), dst), Some(t(2)));
    }
}
