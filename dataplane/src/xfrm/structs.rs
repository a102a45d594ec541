//! The fixed structs of `linux/xfrm.h`, each with its length, `parse` and
//! `emit`. Netlink is host byte order, except the fields the header marks
//! `__be` (SPIs, ports), which are network order.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::XfrmError;

pub(crate) fn ne16(b: &[u8], at: usize) -> u16 {
    u16::from_ne_bytes([b[at], b[at + 1]])
}
pub(crate) fn ne32(b: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
pub(crate) fn ne64(b: &[u8], at: usize) -> u64 {
    let mut v = [0u8; 8];
    v.copy_from_slice(&b[at..at + 8]);
    u64::from_ne_bytes(v)
}
fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}
fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
pub(crate) fn put_ne16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_ne_bytes());
}
pub(crate) fn put_ne32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_ne_bytes());
}
fn put_ne64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_ne_bytes());
}
fn put_be16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_be_bytes());
}
fn put_be32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_be_bytes());
}

fn need(b: &[u8], len: usize) -> Result<(), XfrmError> {
    if b.len() < len {
        Err(XfrmError::Truncated)
    } else {
        Ok(())
    }
}

/// Address families as XFRM carries them.
pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;

/// The address family of `a`.
pub fn family_of(a: IpAddr) -> u16 {
    if a.is_ipv4() {
        AF_INET
    } else {
        AF_INET6
    }
}

/// `xfrm_address_t`: 16 bytes, an IPv4 address in the first four. Kept raw
/// so whatever the kernel sends round-trips.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Address(pub [u8; 16]);

impl Address {
    pub const LEN: usize = 16;

    pub fn from_ip(a: IpAddr) -> Address {
        let mut b = [0u8; 16];
        match a {
            IpAddr::V4(v) => b[..4].copy_from_slice(&v.octets()),
            IpAddr::V6(v) => b.copy_from_slice(&v.octets()),
        }
        Address(b)
    }

    /// The address, read as `family` says (`None` for another family).
    pub fn to_ip(&self, family: u16) -> Option<IpAddr> {
        let b = self.0;
        match family {
            AF_INET => Some(IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3]))),
            AF_INET6 => Some(IpAddr::V6(Ipv6Addr::from(b))),
            _ => None,
        }
    }

    fn parse(b: &[u8], at: usize) -> Address {
        let mut a = [0u8; 16];
        a.copy_from_slice(&b[at..at + 16]);
        Address(a)
    }

    fn emit(&self, b: &mut [u8], at: usize) {
        b[at..at + 16].copy_from_slice(&self.0);
    }
}

/// `struct xfrm_selector` (56 bytes).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Selector {
    pub daddr: Address,
    pub saddr: Address,
    pub dport: u16,
    pub dport_mask: u16,
    pub sport: u16,
    pub sport_mask: u16,
    pub family: u16,
    pub prefixlen_d: u8,
    pub prefixlen_s: u8,
    pub proto: u8,
    pub ifindex: i32,
    pub user: u32,
}

impl Selector {
    pub const LEN: usize = 56;

    pub fn parse(b: &[u8]) -> Result<Selector, XfrmError> {
        need(b, Self::LEN)?;
        Ok(Selector {
            daddr: Address::parse(b, 0),
            saddr: Address::parse(b, 16),
            dport: be16(b, 32),
            dport_mask: be16(b, 34),
            sport: be16(b, 36),
            sport_mask: be16(b, 38),
            family: ne16(b, 40),
            prefixlen_d: b[42],
            prefixlen_s: b[43],
            proto: b[44],
            ifindex: ne32(b, 48) as i32,
            user: ne32(b, 52),
        })
    }

    pub fn emit(&self, b: &mut [u8]) {
        b[..Self::LEN].fill(0);
        self.daddr.emit(b, 0);
        self.saddr.emit(b, 16);
        put_be16(b, 32, self.dport);
        put_be16(b, 34, self.dport_mask);
        put_be16(b, 36, self.sport);
        put_be16(b, 38, self.sport_mask);
        put_ne16(b, 40, self.family);
        b[42] = self.prefixlen_d;
        b[43] = self.prefixlen_s;
        b[44] = self.proto;
        put_ne32(b, 48, self.ifindex as u32);
        put_ne32(b, 52, self.user);
    }
}

/// "No limit" in `xfrm_lifetime_cfg`.
pub const XFRM_INF: u64 = u64::MAX;

/// `struct xfrm_lifetime_cfg` (64 bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LifetimeCfg {
    pub soft_byte_limit: u64,
    pub hard_byte_limit: u64,
    pub soft_packet_limit: u64,
    pub hard_packet_limit: u64,
    pub soft_add_expires_seconds: u64,
    pub hard_add_expires_seconds: u64,
    pub soft_use_expires_seconds: u64,
    pub hard_use_expires_seconds: u64,
}

impl Default for LifetimeCfg {
    /// What iproute2 sends without `limit`: no byte or packet limit, no
    /// time limit.
    fn default() -> LifetimeCfg {
        LifetimeCfg {
            soft_byte_limit: XFRM_INF,
            hard_byte_limit: XFRM_INF,
            soft_packet_limit: XFRM_INF,
            hard_packet_limit: XFRM_INF,
            soft_add_expires_seconds: 0,
            hard_add_expires_seconds: 0,
            soft_use_expires_seconds: 0,
            hard_use_expires_seconds: 0,
        }
    }
}

impl LifetimeCfg {
    pub const LEN: usize = 64;

    pub fn parse(b: &[u8]) -> Result<LifetimeCfg, XfrmError> {
        need(b, Self::LEN)?;
        Ok(LifetimeCfg {
            soft_byte_limit: ne64(b, 0),
            hard_byte_limit: ne64(b, 8),
            soft_packet_limit: ne64(b, 16),
            hard_packet_limit: ne64(b, 24),
            soft_add_expires_seconds: ne64(b, 32),
            hard_add_expires_seconds: ne64(b, 40),
            soft_use_expires_seconds: ne64(b, 48),
            hard_use_expires_seconds: ne64(b, 56),
        })
    }

    pub fn emit(&self, b: &mut [u8]) {
        for (i, v) in [
            self.soft_byte_limit,
            self.hard_byte_limit,
            self.soft_packet_limit,
            self.hard_packet_limit,
            self.soft_add_expires_seconds,
            self.hard_add_expires_seconds,
            self.soft_use_expires_seconds,
            self.hard_use_expires_seconds,
        ]
        .into_iter()
        .enumerate()
        {
            put_ne64(b, i * 8, v);
        }
    }
}

/// `struct xfrm_lifetime_cur` (32 bytes).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LifetimeCur {
    pub bytes: u64,
    pub packets: u64,
    pub add_time: u64,
    pub use_time: u64,
}

impl LifetimeCur {
    pub const LEN: usize = 32;

    pub fn parse(b: &[u8]) -> Result<LifetimeCur, XfrmError> {
        need(b, Self::LEN)?;
        Ok(LifetimeCur {
            bytes: ne64(b, 0),
            packets: ne64(b, 8),
            add_time: ne64(b, 16),
            use_time: ne64(b, 24),
        })
    }

    pub fn emit(&self, b: &mut [u8]) {
        put_ne64(b, 0, self.bytes);
        put_ne64(b, 8, self.packets);
        put_ne64(b, 16, self.add_time);
        put_ne64(b, 24, self.use_time);
    }
}

/// `struct xfrm_stats` (12 bytes).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub replay_window: u32,
    pub replay: u32,
    pub integrity_failed: u32,
}

impl Stats {
    pub const LEN: usize = 12;

    fn parse(b: &[u8]) -> Stats {
        Stats {
            replay_window: ne32(b, 0),
            replay: ne32(b, 4),
            integrity_failed: ne32(b, 8),
        }
    }

    fn emit(&self, b: &mut [u8]) {
        put_ne32(b, 0, self.replay_window);
        put_ne32(b, 4, self.replay);
        put_ne32(b, 8, self.integrity_failed);
    }
}

/// `struct xfrm_id` (24 bytes): destination, SPI (network order), protocol.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Id {
    pub daddr: Address,
    pub spi: u32,
    pub proto: u8,
}

impl Id {
    pub const LEN: usize = 24;

    fn parse(b: &[u8]) -> Id {
        Id {
            daddr: Address::parse(b, 0),
            spi: be32(b, 16),
            proto: b[20],
        }
    }

    fn emit(&self, b: &mut [u8]) {
        self.daddr.emit(b, 0);
        put_be32(b, 16, self.spi);
        b[20] = self.proto;
        b[21..24].fill(0);
    }
}

/// IPPROTO_ESP.
pub const IPPROTO_ESP: u8 = 50;
/// XFRM_MODE_TUNNEL.
pub const XFRM_MODE_TUNNEL: u8 = 1;
/// XFRM_STATE_ESN: 64-bit sequence numbers (RFC 4303 §2.2.1).
pub const XFRM_STATE_ESN: u8 = 128;

/// `struct xfrm_usersa_info` (224 bytes): the body of XFRM_MSG_NEWSA.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UserSaInfo {
    pub sel: Selector,
    pub id: Id,
    pub saddr: Address,
    pub lft: LifetimeCfg,
    pub curlft: LifetimeCur,
    pub stats: Stats,
    pub seq: u32,
    pub reqid: u32,
    pub family: u16,
    pub mode: u8,
    pub replay_window: u8,
    pub flags: u8,
}

impl UserSaInfo {
    pub const LEN: usize = 224;

    pub fn parse(b: &[u8]) -> Result<UserSaInfo, XfrmError> {
        need(b, Self::LEN)?;
        Ok(UserSaInfo {
            sel: Selector::parse(&b[0..56])?,
            id: Id::parse(&b[56..80]),
            saddr: Address::parse(b, 80),
            lft: LifetimeCfg::parse(&b[96..160])?,
            curlft: LifetimeCur::parse(&b[160..192])?,
            stats: Stats::parse(&b[192..204]),
            seq: ne32(b, 204),
            reqid: ne32(b, 208),
            family: ne16(b, 212),
            mode: b[214],
            replay_window: b[215],
            flags: b[216],
        })
    }

    pub fn emit(&self, b: &mut [u8]) {
        b[..Self::LEN].fill(0);
        self.sel.emit(&mut b[0..56]);
        self.id.emit(&mut b[56..80]);
        self.saddr.emit(b, 80);
        self.lft.emit(&mut b[96..160]);
        self.curlft.emit(&mut b[160..192]);
        self.stats.emit(&mut b[192..204]);
        put_ne32(b, 204, self.seq);
        put_ne32(b, 208, self.reqid);
        put_ne16(b, 212, self.family);
        b[214] = self.mode;
        b[215] = self.replay_window;
        b[216] = self.flags;
    }
}

/// `struct xfrm_usersa_id` (24 bytes): the body of XFRM_MSG_DELSA.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UserSaId {
    pub daddr: Address,
    pub spi: u32,
    pub family: u16,
    pub proto: u8,
}

impl UserSaId {
    pub const LEN: usize = 24;

    pub fn parse(b: &[u8]) -> Result<UserSaId, XfrmError> {
        need(b, Self::LEN)?;
        Ok(UserSaId {
            daddr: Address::parse(b, 0),
            spi: be32(b, 16),
            family: ne16(b, 20),
            proto: b[22],
        })
    }

    pub fn emit(&self, b: &mut [u8]) {
        self.daddr.emit(b, 0);
        put_be32(b, 16, self.spi);
        put_ne16(b, 20, self.family);
        b[22] = self.proto;
        b[23] = 0;
    }
}

/// Policy directions.
pub const XFRM_POLICY_IN: u8 = 0;
pub const XFRM_POLICY_OUT: u8 = 1;
pub const XFRM_POLICY_FWD: u8 = 2;

/// `struct xfrm_userpolicy_info` (168 bytes): the body of
/// XFRM_MSG_NEWPOLICY.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UserPolicyInfo {
    pub sel: Selector,
    pub lft: LifetimeCfg,
    pub curlft: LifetimeCur,
    pub priority: u32,
    pub index: u32,
    pub dir: u8,
    /// XFRM_POLICY_ALLOW 0, XFRM_POLICY_BLOCK 1.
    pub action: u8,
    pub flags: u8,
    pub share: u8,
}

impl UserPolicyInfo {
    pub const LEN: usize = 168;

    pub fn parse(b: &[u8]) -> Result<UserPolicyInfo, XfrmError> {
        need(b, Self::LEN)?;
        Ok(UserPolicyInfo {
            sel: Selector::parse(&b[0..56])?,
            lft: LifetimeCfg::parse(&b[56..120])?,
            curlft: LifetimeCur::parse(&b[120..152])?,
            priority: ne32(b, 152),
            index: ne32(b, 156),
            dir: b[160],
            action: b[161],
            flags: b[162],
            share: b[163],
        })
    }

    pub fn emit(&self, b: &mut [u8]) {
        b[..Self::LEN].fill(0);
        self.sel.emit(&mut b[0..56]);
        self.lft.emit(&mut b[56..120]);
        self.curlft.emit(&mut b[120..152]);
        put_ne32(b, 152, self.priority);
        put_ne32(b, 156, self.index);
        b[160] = self.dir;
        b[161] = self.action;
        b[162] = self.flags;
        b[163] = self.share;
    }
}

/// `struct xfrm_userpolicy_id` (64 bytes): the body of XFRM_MSG_DELPOLICY.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UserPolicyId {
    pub sel: Selector,
    pub index: u32,
    pub dir: u8,
}

impl UserPolicyId {
    pub const LEN: usize = 64;

    pub fn parse(b: &[u8]) -> Result<UserPolicyId, XfrmError> {
        need(b, Self::LEN)?;
        Ok(UserPolicyId {
            sel: Selector::parse(&b[0..56])?,
            index: ne32(b, 56),
            dir: b[60],
        })
    }

    pub fn emit(&self, b: &mut [u8]) {
        b[..Self::LEN].fill(0);
        self.sel.emit(&mut b[0..56]);
        put_ne32(b, 56, self.index);
        b[60] = self.dir;
    }
}

/// `struct xfrm_user_tmpl` (64 bytes): one entry of XFRMA_TMPL.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UserTmpl {
    pub id: Id,
    pub family: u16,
    pub saddr: Address,
    pub reqid: u32,
    pub mode: u8,
    pub share: u8,
    pub optional: u8,
    pub aalgos: u32,
    pub ealgos: u32,
    pub calgos: u32,
}

impl UserTmpl {
    pub const LEN: usize = 64;

    pub fn parse(b: &[u8]) -> Result<UserTmpl, XfrmError> {
        need(b, Self::LEN)?;
        Ok(UserTmpl {
            id: Id::parse(&b[0..24]),
            family: ne16(b, 24),
            saddr: Address::parse(b, 28),
            reqid: ne32(b, 44),
            mode: b[48],
            share: b[49],
            optional: b[50],
            aalgos: ne32(b, 52),
            ealgos: ne32(b, 56),
            calgos: ne32(b, 60),
        })
    }

    pub fn emit(&self, b: &mut [u8]) {
        b[..Self::LEN].fill(0);
        self.id.emit(&mut b[0..24]);
        put_ne16(b, 24, self.family);
        self.saddr.emit(b, 28);
        put_ne32(b, 44, self.reqid);
        b[48] = self.mode;
        b[49] = self.share;
        b[50] = self.optional;
        put_ne32(b, 52, self.aalgos);
        put_ne32(b, 56, self.ealgos);
        put_ne32(b, 60, self.calgos);
    }
}
