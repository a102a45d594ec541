//! XFRM messages for one child SA, from the `ChildSa` the IKE core emits:
//! two states (inbound, outbound) and the policies that steer traffic into
//! them, and the messages that remove them again.
//!
//! Conventions follow iproute2 and strongSwan's kernel-netlink plugin:
//!
//! - An SA's addresses and ports are those of its packets: the inbound SA
//!   goes from the peer (`src` = remote) to us (`dst` = local), SPI
//!   `spi_in`, keys `keys_in`; the outbound SA the other way round.
//! - AEAD keys carry their 4-byte salt at the end (RFC 4106 §8.1, RFC 7634
//!   §2), as `DirectionKeys::encr` does; `alg_key_len` counts the salt.
//! - Replay state: `XFRMA_REPLAY_ESN_VAL` when ESN is on or the window is
//!   wider than the 32 bits of the legacy `replay_window` byte (then that
//!   byte is 0), exactly as `ip xfrm state add` does.
//! - The hard lifetime is the child SA's own: the IKE core rekeys before.
//! - Policies: `out` (our selectors → the peer's), `in` and `fwd` (the
//!   peer's → ours; `fwd` is what a gateway needs for forwarded traffic),
//!   each with one ESP tunnel-mode template and the SA's `reqid`. A
//!   selector range that is not one prefix becomes several policies (XFRM
//!   selectors are prefixes and port/mask pairs), up to
//!   [`MAX_POLICIES_PER_CHILD`].

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use anyhub_crypto::Secret;
use anyhub_ike::wire::registry::{EncrId, IntegId};
use anyhub_ike::wire::TrafficSelector;
use anyhub_ike::ChildSa;

use super::nla::{AlgName, EncapTmpl, Nla, ReplayEsn, UDP_ENCAP_ESPINUDP};
use super::structs::{
    family_of, Address, Id, LifetimeCfg, Selector, UserPolicyId, UserPolicyInfo, UserSaId,
    UserSaInfo, UserTmpl, IPPROTO_ESP, XFRM_MODE_TUNNEL, XFRM_POLICY_FWD, XFRM_POLICY_IN,
    XFRM_POLICY_OUT, XFRM_STATE_ESN,
};
use super::XfrmMessage;

/// Policies one child SA may expand to (ranges that are not prefixes,
/// port ranges that are not port/mask blocks): beyond this the SA is
/// refused rather than programmed half.
pub const MAX_POLICIES_PER_CHILD: usize = 64;

/// Base of computed policy priorities (lower value wins in XFRM).
pub const PRIORITY_BASE: u32 = 200_000;

/// Why a child SA cannot be expressed as XFRM messages.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum XfrmBuildError {
    #[error("ESP algorithm {0} has no XFRM equivalent here")]
    UnsupportedAlgorithm(String),
    #[error("{what} key is {got} bytes, {alg} needs {want}")]
    KeyLength {
        what: &'static str,
        alg: &'static str,
        got: usize,
        want: usize,
    },
    #[error("local and remote addresses are of different families")]
    MixedFamilies,
    #[error("traffic selectors expand to {0} policies, more than {MAX_POLICIES_PER_CHILD}")]
    TooManyPolicies(usize),
    #[error("ICMP type/code selectors are not supported by the XFRM backend")]
    IcmpSelector,
}

/// Choices the IKE child SA does not make.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SaOptions {
    /// Ties states to policy templates; one per child SA.
    pub reqid: u32,
    /// Anti-replay window in packets (inbound; the outbound SA gets the
    /// same, as strongSwan does).
    pub replay_window: u32,
}

impl Default for SaOptions {
    fn default() -> SaOptions {
        SaOptions {
            reqid: 1,
            replay_window: 1024,
        }
    }
}

/// Choices for the policies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PolicyOptions {
    pub reqid: u32,
    /// A fixed priority for every policy; `None` computes one from how
    /// specific each selector is.
    pub priority: Option<u32>,
    /// Whether to add `fwd` policies (a gateway: yes).
    pub fwd: bool,
}

impl Default for PolicyOptions {
    fn default() -> PolicyOptions {
        PolicyOptions {
            reqid: 1,
            priority: None,
            fwd: true,
        }
    }
}

/// The algorithm attributes for one direction's keys.
fn alg_nlas(
    child: &ChildSa,
    encr: &Secret,
    integ: Option<&Secret>,
) -> Result<Vec<Nla>, XfrmBuildError> {
    let p = &child.proposal;
    let e = p.encr;
    let check = |what, alg, got: usize, want: usize| {
        if got == want {
            Ok(())
        } else {
            Err(XfrmBuildError::KeyLength {
                what,
                alg,
                got,
                want,
            })
        }
    };
    let bits = |k: &Secret| (k.len() * 8) as u32;
    match e.id {
        EncrId::AES_GCM_16 => {
            check(
                "encryption",
                "AES-GCM",
                encr.len(),
                usize::from(e.key_bits) / 8 + 4,
            )?;
            Ok(vec![Nla::AlgAead {
                name: AlgName::new("rfc4106(gcm(aes))"),
                key_bits: bits(encr),
                icv_bits: 128,
                key: encr.clone(),
            }])
        }
        EncrId::CHACHA20_POLY1305 => {
            check("encryption", "ChaCha20-Poly1305", encr.len(), 36)?;
            Ok(vec![Nla::AlgAead {
                name: AlgName::new("rfc7539esp(chacha20,poly1305)"),
                key_bits: bits(encr),
                icv_bits: 128,
                key: encr.clone(),
            }])
        }
        EncrId::AES_CBC => {
            check(
                "encryption",
                "AES-CBC",
                encr.len(),
                usize::from(e.key_bits) / 8,
            )?;
            let (name, key_len, trunc) = match p.integ {
                Some(IntegId::HMAC_SHA2_256_128) => ("hmac(sha256)", 32, 128),
                Some(IntegId::HMAC_SHA2_384_192) => ("hmac(sha384)", 48, 192),
                Some(IntegId::HMAC_SHA2_512_256) => ("hmac(sha512)", 64, 256),
                Some(IntegId::HMAC_SHA1_96) => ("hmac(sha1)", 20, 96),
                other => {
                    return Err(XfrmBuildError::UnsupportedAlgorithm(format!(
                        "integrity {other:?}"
                    )))
                }
            };
            let Some(ik) = integ else {
                return Err(XfrmBuildError::KeyLength {
                    what: "integrity",
                    alg: "HMAC",
                    got: 0,
                    want: key_len,
                });
            };
            check("integrity", "HMAC", ik.len(), key_len)?;
            Ok(vec![
                Nla::AlgCrypt {
                    name: AlgName::new("cbc(aes)"),
                    key_bits: bits(encr),
                    key: encr.clone(),
                },
                Nla::AlgAuthTrunc {
                    name: AlgName::new(name),
                    key_bits: bits(ik),
                    trunc_bits: trunc,
                    key: ik.clone(),
                },
            ])
        }
        other => Err(XfrmBuildError::UnsupportedAlgorithm(format!("{other:?}"))),
    }
}

/// One direction's XFRM_MSG_NEWSA.
fn new_sa(child: &ChildSa, opts: &SaOptions, inbound: bool) -> Result<XfrmMessage, XfrmBuildError> {
    let (src, dst) = if inbound {
        (child.remote, child.local)
    } else {
        (child.local, child.remote)
    };
    if src.is_ipv4() != dst.is_ipv4() {
        return Err(XfrmBuildError::MixedFamilies);
    }
    let (spi, keys) = if inbound {
        (child.spi_in, &child.keys_in)
    } else {
        (child.spi_out, &child.keys_out)
    };
    let mut nlas = alg_nlas(child, &keys.encr, keys.integ.as_ref())?;
    if child.encap {
        nlas.push(Nla::Encap(EncapTmpl {
            encap_type: UDP_ENCAP_ESPINUDP,
            sport: src.port(),
            dport: dst.port(),
            oa: Address::default(),
        }));
    }
    let esn = child.proposal.esn;
    let w = opts.replay_window;
    // iproute2: the legacy byte holds windows up to 32 (its u32 bitmap).
    let legacy = !esn && w <= 32;
    if !legacy {
        nlas.push(Nla::ReplayEsn(ReplayEsn {
            bmp_len: w.div_ceil(32),
            replay_window: w,
            ..ReplayEsn::default()
        }));
    }
    let info = UserSaInfo {
        sel: Selector::default(),
        id: Id {
            daddr: Address::from_ip(dst.ip()),
            spi,
            proto: IPPROTO_ESP,
        },
        saddr: Address::from_ip(src.ip()),
        lft: LifetimeCfg {
            hard_add_expires_seconds: child.lifetime.as_secs(),
            ..LifetimeCfg::default()
        },
        reqid: opts.reqid,
        family: family_of(dst.ip()),
        mode: XFRM_MODE_TUNNEL,
        replay_window: if legacy { w as u8 } else { 0 },
        flags: if esn { XFRM_STATE_ESN } else { 0 },
        ..UserSaInfo::default()
    };
    Ok(XfrmMessage::NewSa {
        info,
        nlas,
        update: false,
    })
}

/// The inbound and outbound XFRM_MSG_NEWSA of `child`, in that order.
pub fn sa_messages(child: &ChildSa, opts: &SaOptions) -> Result<[XfrmMessage; 2], XfrmBuildError> {
    Ok([new_sa(child, opts, true)?, new_sa(child, opts, false)?])
}

/// The XFRM_MSG_DELSA of one of `child`'s states.
fn del_sa(child: &ChildSa, inbound: bool) -> XfrmMessage {
    let (src, dst, spi) = if inbound {
        (child.remote, child.local, child.spi_in)
    } else {
        (child.local, child.remote, child.spi_out)
    };
    XfrmMessage::DelSa {
        id: UserSaId {
            daddr: Address::from_ip(dst.ip()),
            spi,
            family: family_of(dst.ip()),
            proto: IPPROTO_ESP,
        },
        nlas: vec![Nla::SrcAddr(Address::from_ip(src.ip()))],
    }
}

/// A prefix of a selector side.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Net {
    pub(crate) addr: IpAddr,
    pub(crate) len: u8,
}

/// The smallest list of prefixes covering exactly `start..=end`, or
/// `None` past `limit`.
pub(crate) fn range_to_prefixes(start: IpAddr, end: IpAddr, limit: usize) -> Option<Vec<Net>> {
    let (s, e, bits, v4) = match (start, end) {
        (IpAddr::V4(s), IpAddr::V4(e)) => (
            u128::from(u32::from(s)),
            u128::from(u32::from(e)),
            32u32,
            true,
        ),
        (IpAddr::V6(s), IpAddr::V6(e)) => (u128::from(s), u128::from(e), 128u32, false),
        _ => return Some(Vec::new()),
    };
    let span = |k: u32| {
        if k >= 128 {
            u128::MAX
        } else {
            (1u128 << k) - 1
        }
    };
    let mut out = Vec::new();
    let mut cur = s;
    if s > e {
        return Some(out);
    }
    loop {
        // The largest block aligned at `cur` that ends at or before `e`.
        let mut k = if cur == 0 {
            bits
        } else {
            cur.trailing_zeros().min(bits)
        };
        while k > 0 && span(k) > e - cur {
            k -= 1;
        }
        if out.len() == limit {
            return None;
        }
        let addr = if v4 {
            IpAddr::V4(Ipv4Addr::from(cur as u32))
        } else {
            IpAddr::V6(Ipv6Addr::from(cur))
        };
        out.push(Net {
            addr,
            len: (bits - k) as u8,
        });
        let last = cur + span(k);
        if last >= e {
            return Some(out);
        }
        cur = last + 1;
    }
}

/// Port range → (port, mask) blocks; `(0, 0)` is "any".
fn ports_to_masks(start: u16, end: u16) -> Vec<(u16, u16)> {
    if start == 0 && end == u16::MAX {
        return vec![(0, 0)];
    }
    let mut out = Vec::new();
    let (mut cur, e) = (u32::from(start), u32::from(end));
    while cur <= e {
        let mut size_log = if cur == 0 {
            16
        } else {
            cur.trailing_zeros().min(16)
        };
        while cur + (1 << size_log) - 1 > e {
            size_log -= 1;
        }
        out.push((cur as u16, (0xffffu32 << size_log) as u16));
        cur += 1 << size_log;
    }
    out
}

/// One side of a selector: prefixes and port blocks.
struct Side {
    nets: Vec<Net>,
    ports: Vec<(u16, u16)>,
    proto: u8,
}

fn side(ts: &TrafficSelector) -> Result<Side, XfrmBuildError> {
    let nets = range_to_prefixes(ts.start_addr, ts.end_addr, MAX_POLICIES_PER_CHILD)
        .ok_or(XfrmBuildError::TooManyPolicies(MAX_POLICIES_PER_CHILD + 1))?;
    let any = ts.start_port == 0 && ts.end_port == u16::MAX;
    if (ts.ip_protocol == 1 || ts.ip_protocol == 58) && !any {
        return Err(XfrmBuildError::IcmpSelector);
    }
    Ok(Side {
        nets,
        ports: ports_to_masks(ts.start_port, ts.end_port),
        proto: ts.ip_protocol,
    })
}

/// Every XFRM selector for traffic from `src` to `dst`.
fn selectors(
    src: &TrafficSelector,
    dst: &TrafficSelector,
    out: &mut Vec<Selector>,
) -> Result<(), XfrmBuildError> {
    if src.start_addr.is_ipv4() != dst.start_addr.is_ipv4() {
        return Ok(());
    }
    let proto = match (src.ip_protocol, dst.ip_protocol) {
        (0, p) | (p, 0) => p,
        (p, q) if p == q => p,
        _ => return Ok(()),
    };
    let (s, d) = (side(src)?, side(dst)?);
    let _ = (s.proto, d.proto);
    for sn in &s.nets {
        for dn in &d.nets {
            for &(sport, sport_mask) in &s.ports {
                for &(dport, dport_mask) in &d.ports {
                    if out.len() == MAX_POLICIES_PER_CHILD {
                        return Err(XfrmBuildError::TooManyPolicies(out.len() + 1));
                    }
                    out.push(Selector {
                        daddr: Address::from_ip(dn.addr),
                        saddr: Address::from_ip(sn.addr),
                        dport,
                        dport_mask,
                        sport,
                        sport_mask,
                        family: family_of(dn.addr),
                        prefixlen_d: dn.len,
                        prefixlen_s: sn.len,
                        proto,
                        ifindex: 0,
                        user: 0,
                    });
                }
            }
        }
    }
    Ok(())
}

/// More specific selectors get lower (preferred) priorities.
fn priority(sel: &Selector, opts: &PolicyOptions) -> u32 {
    opts.priority.unwrap_or_else(|| {
        PRIORITY_BASE
            - 256 * (u32::from(sel.prefixlen_s) + u32::from(sel.prefixlen_d))
            - if sel.proto != 0 { 128 } else { 0 }
            - if sel.sport_mask != 0 { 64 } else { 0 }
            - if sel.dport_mask != 0 { 64 } else { 0 }
    })
}

/// The (direction, selector, template source, template destination) of
/// every policy of `child`.
fn policy_plan(
    child: &ChildSa,
    opts: &PolicyOptions,
) -> Result<Vec<(u8, Selector, IpAddr, IpAddr)>, XfrmBuildError> {
    let (l, r) = (child.local.ip(), child.remote.ip());
    if l.is_ipv4() != r.is_ipv4() {
        return Err(XfrmBuildError::MixedFamilies);
    }
    let mut outs = Vec::new();
    let mut ins = Vec::new();
    for lt in &child.local_ts {
        for rt in &child.remote_ts {
            selectors(lt, rt, &mut outs)?;
            selectors(rt, lt, &mut ins)?;
        }
    }
    let per_dir = if opts.fwd { 3 } else { 2 };
    if outs.len().max(ins.len()) * per_dir > MAX_POLICIES_PER_CHILD {
        return Err(XfrmBuildError::TooManyPolicies(
            outs.len().max(ins.len()) * per_dir,
        ));
    }
    let mut plan = Vec::new();
    for s in outs {
        plan.push((XFRM_POLICY_OUT, s, l, r));
    }
    for s in ins {
        plan.push((XFRM_POLICY_IN, s, r, l));
        if opts.fwd {
            plan.push((XFRM_POLICY_FWD, s, r, l));
        }
    }
    Ok(plan)
}

/// XFRM_MSG_NEWPOLICY for every policy of `child`: `out` ones first, then
/// `in` (each followed by its `fwd`).
pub fn policy_messages(
    child: &ChildSa,
    opts: &PolicyOptions,
) -> Result<Vec<XfrmMessage>, XfrmBuildError> {
    Ok(policy_plan(child, opts)?
        .into_iter()
        .map(|(dir, sel, tsrc, tdst)| XfrmMessage::NewPolicy {
            info: UserPolicyInfo {
                sel,
                lft: LifetimeCfg::default(),
                priority: priority(&sel, opts),
                dir,
                ..UserPolicyInfo::default()
            },
            nlas: vec![Nla::Tmpl(vec![UserTmpl {
                id: Id {
                    daddr: Address::from_ip(tdst),
                    spi: 0,
                    proto: IPPROTO_ESP,
                },
                family: family_of(tdst),
                saddr: Address::from_ip(tsrc),
                reqid: opts.reqid,
                mode: XFRM_MODE_TUNNEL,
                share: 0,
                optional: 0,
                aalgos: u32::MAX,
                ealgos: u32::MAX,
                calgos: u32::MAX,
            }])],
            update: false,
        })
        .collect())
}

/// Everything that removes `child` from the kernel: its policies
/// (XFRM_MSG_DELPOLICY, first, so no traffic is steered to a missing
/// state), then both states (XFRM_MSG_DELSA).
pub fn delete_messages(
    child: &ChildSa,
    opts: &PolicyOptions,
) -> Result<Vec<XfrmMessage>, XfrmBuildError> {
    let mut out: Vec<XfrmMessage> = policy_plan(child, opts)?
        .into_iter()
        .map(|(dir, sel, _, _)| XfrmMessage::DelPolicy {
            id: UserPolicyId { sel, index: 0, dir },
            nlas: Vec::new(),
        })
        .collect();
    out.push(del_sa(child, true));
    out.push(del_sa(child, false));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(s: &str, e: &str) -> Vec<String> {
        range_to_prefixes(s.parse().unwrap(), e.parse().unwrap(), 1000)
            .unwrap()
            .iter()
            .map(|n| format!("{}/{}", n.addr, n.len))
            .collect()
    }

    #[test]
    fn ranges_become_exact_prefixes() {
        assert_eq!(nets("10.1.0.0", "10.1.255.255"), ["10.1.0.0/16"]);
        assert_eq!(nets("0.0.0.0", "255.255.255.255"), ["0.0.0.0/0"]);
        assert_eq!(
            nets("::", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"),
            ["::/0"]
        );
        assert_eq!(nets("10.0.0.5", "10.0.0.5"), ["10.0.0.5/32"]);
        assert_eq!(
            nets("10.0.0.1", "10.0.0.6"),
            ["10.0.0.1/32", "10.0.0.2/31", "10.0.0.4/31", "10.0.0.6/32"]
        );
        assert_eq!(
            nets("255.255.255.254", "255.255.255.255"),
            ["255.255.255.254/31"]
        );
        assert_eq!(nets("2001:db8::", "2001:db8::ffff"), ["2001:db8::/112"]);
        assert!(range_to_prefixes(
            "0.0.0.1".parse().unwrap(),
            "255.255.255.254".parse().unwrap(),
            10
        )
        .is_none());
        // Exhaustive over small ranges: the prefixes cover exactly the range.
        for s in 0u32..40 {
            for e in s..40 {
                let got = range_to_prefixes(
                    IpAddr::V4(Ipv4Addr::from(s)),
                    IpAddr::V4(Ipv4Addr::from(e)),
                    100,
                )
                .unwrap();
                let mut covered = Vec::new();
                for n in got {
                    let base = u32::from(match n.addr {
                        IpAddr::V4(a) => a,
                        _ => unreachable!(),
                    });
                    let size = 1u64 << (32 - u32::from(n.len));
                    assert_eq!(u64::from(base) % size, 0, "aligned");
                    covered.extend((0..size).map(|i| base + i as u32));
                }
                assert_eq!(covered, (s..=e).collect::<Vec<_>>(), "{s}..{e}");
            }
        }
    }

    #[test]
    fn port_ranges_become_masks() {
        assert_eq!(ports_to_masks(0, 65535), [(0, 0)]);
        assert_eq!(ports_to_masks(443, 443), [(443, 0xffff)]);
        assert_eq!(ports_to_masks(1024, 2047), [(1024, 0xfc00)]);
        assert_eq!(ports_to_masks(8000, 8003), [(8000, 0xfffc)]);
        assert_eq!(ports_to_masks(65534, 65535), [(65534, 0xfffe)]);
        for (s, e) in [(0u16, 10u16), (1, 1000), (1000, 65535), (3, 3)] {
            let mut n = 0u32;
            for (p, m) in ports_to_masks(s, e) {
                let size = u32::from(!m) + 1;
                assert_eq!(p & !m, 0);
                n += size;
            }
            assert_eq!(n, u32::from(e) - u32::from(s) + 1);
        }
    }
}
