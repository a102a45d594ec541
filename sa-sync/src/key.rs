//! Table keys: what one replicated entry is about.

use crate::pb;
use std::fmt;

/// The key of one table entry (the Rust twin of [`pb::Key`]), ordered and
/// hashable.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Key {
    /// A child SA by the inbound SPI its owner allocated.
    ChildSa(u32),
    /// An IKE SA by its SPIs.
    IkeSa { spi_i: u64, spi_r: u64 },
    /// A tunnel's configuration.
    Tunnel(String),
    /// An egress NAT port slice.
    PortSlice(u32),
    /// A node's health.
    Health(u16),
    /// One node's outbound sequence reservation for one child SA.
    Seq { spi_in: u32, node: u16 },
}

/// The longest tunnel name accepted in a key (a peer-controlled length).
pub const MAX_TUNNEL_NAME: usize = 255;

impl Key {
    /// From the wire; `None` if absent or malformed.
    pub fn from_pb(k: &pb::Key) -> Option<Key> {
        use pb::key::Kind;
        Some(match k.kind.as_ref()? {
            Kind::ChildSa(spi) => Key::ChildSa(*spi),
            Kind::IkeSa(s) => Key::IkeSa {
                spi_i: s.spi_i,
                spi_r: s.spi_r,
            },
            Kind::Tunnel(t) if t.len() <= MAX_TUNNEL_NAME => Key::Tunnel(t.clone()),
            Kind::Tunnel(_) => return None,
            Kind::PortSlice(p) => Key::PortSlice(*p),
            Kind::Health(n) => Key::Health(u16::try_from(*n).ok()?),
            Kind::Seq(s) => Key::Seq {
                spi_in: s.spi_in,
                node: u16::try_from(s.node).ok()?,
            },
        })
    }

    pub fn to_pb(&self) -> pb::Key {
        use pb::key::Kind;
        let kind = match self {
            Key::ChildSa(spi) => Kind::ChildSa(*spi),
            Key::IkeSa { spi_i, spi_r } => Kind::IkeSa(pb::IkeSaKey {
                spi_i: *spi_i,
                spi_r: *spi_r,
            }),
            Key::Tunnel(t) => Kind::Tunnel(t.clone()),
            Key::PortSlice(p) => Kind::PortSlice(*p),
            Key::Health(n) => Kind::Health(u32::from(*n)),
            Key::Seq { spi_in, node } => Kind::Seq(pb::SeqKey {
                spi_in: *spi_in,
                node: u32::from(*node),
            }),
        };
        pb::Key { kind: Some(kind) }
    }

    /// Whether `body` is a value this key can hold (a tombstone fits all).
    pub fn fits(&self, body: &pb::record::Body) -> bool {
        use pb::record::Body;
        matches!(
            (self, body),
            (_, Body::Tombstone(_))
                | (Key::ChildSa(_), Body::ChildSa(_))
                | (Key::IkeSa { .. }, Body::IkeSa(_))
                | (Key::Tunnel(_), Body::Tunnel(_))
                | (Key::PortSlice(_), Body::PortSlice(_))
                | (Key::Health(_), Body::Health(_))
                | (Key::Seq { .. }, Body::Seq(_))
        )
    }

    /// A stable 64-bit hash (FNV-1a over a fixed encoding, then a
    /// finaliser): the same on every node and every build, unlike std's
    /// hashers, because digests are compared across nodes.
    pub fn stable_hash(&self) -> u64 {
        let mut h = Fnv::new();
        match self {
            Key::ChildSa(spi) => {
                h.byte(1);
                h.bytes(&spi.to_be_bytes());
            }
            Key::IkeSa { spi_i, spi_r } => {
                h.byte(2);
                h.bytes(&spi_i.to_be_bytes());
                h.bytes(&spi_r.to_be_bytes());
            }
            Key::Tunnel(t) => {
                h.byte(3);
                h.bytes(t.as_bytes());
            }
            Key::PortSlice(p) => {
                h.byte(4);
                h.bytes(&p.to_be_bytes());
            }
            Key::Health(n) => {
                h.byte(5);
                h.bytes(&n.to_be_bytes());
            }
            Key::Seq { spi_in, node } => {
                h.byte(6);
                h.bytes(&spi_in.to_be_bytes());
                h.bytes(&node.to_be_bytes());
            }
        }
        h.finish()
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Key::ChildSa(spi) => write!(f, "child:{spi:08x}"),
            Key::IkeSa { spi_i, spi_r } => write!(f, "ike:{spi_i:016x}_{spi_r:016x}"),
            Key::Tunnel(t) => write!(f, "tunnel:{t}"),
            Key::PortSlice(p) => write!(f, "ports:{p}"),
            Key::Health(n) => write!(f, "health:{n}"),
            Key::Seq { spi_in, node } => write!(f, "seq:{spi_in:08x}@{node}"),
        }
    }
}

/// FNV-1a 64 (the reference constants), with murmur3's fmix64 finaliser so
/// that nearby keys land in unrelated digest buckets.
pub(crate) struct Fnv(u64);

impl Fnv {
    pub(crate) fn new() -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
    pub(crate) fn byte(&mut self, b: u8) {
        self.0 ^= u64::from(b);
        self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
    }
    pub(crate) fn bytes(&mut self, b: &[u8]) {
        for &x in b {
            self.byte(x);
        }
    }
    pub(crate) fn finish(&self) -> u64 {
        let mut k = self.0;
        k ^= k >> 33;
        k = k.wrapping_mul(0xff51_afd7_ed55_8ccd);
        k ^= k >> 33;
        k = k.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        k ^ (k >> 33)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip() {
        for k in [
            Key::ChildSa(0x0010_0001),
            Key::IkeSa { spi_i: 1, spi_r: 2 },
            Key::Tunnel("site-a".into()),
            Key::PortSlice(7),
            Key::Health(3),
            Key::Seq {
                spi_in: 9,
                node: 4095,
            },
        ] {
            assert_eq!(Key::from_pb(&k.to_pb()), Some(k));
        }
        assert_eq!(Key::from_pb(&pb::Key { kind: None }), None);
        let big = pb::Key {
            kind: Some(pb::key::Kind::Health(70_000)),
        };
        assert_eq!(Key::from_pb(&big), None);
        let long = pb::Key {
            kind: Some(pb::key::Kind::Tunnel("x".repeat(300))),
        };
        assert_eq!(Key::from_pb(&long), None);
    }

    #[test]
    fn stable_hash_is_stable() {
        // Pinned: a change here breaks digests between nodes of different builds.
        assert_eq!(Key::ChildSa(1).stable_hash(), Key::ChildSa(1).stable_hash());
        assert_ne!(Key::ChildSa(1).stable_hash(), Key::ChildSa(2).stable_hash());
        assert_ne!(
            Key::ChildSa(1).stable_hash(),
            Key::PortSlice(1).stable_hash()
        );
    }
}
