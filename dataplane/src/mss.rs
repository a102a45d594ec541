//! Tunnel MTUs from the real encapsulation overhead, and TCP MSS clamping
//! on SYNs (RFC 9293 §3.7.1, RFC 6691; what Linux's `TCPMSS
//! --clamp-mss-to-pmtu` and Cisco's `ip tcp adjust-mss` do).
//!
//! A tunnel's *inner MTU* is the largest inner IP packet whose
//! encapsulation still fits the outer path MTU. Packets larger than it get
//! ICMP Fragmentation Needed / Packet Too Big with it as the MTU
//! ([`crate::icmp_error`]); TCP SYNs through the tunnel have their MSS
//! clamped to `inner MTU − inner IP header − TCP header`, so most TCP never
//! needs the ICMP at all.

use crate::wire::{ipv4, ipv6, tcp, IpProtocol};

/// Outer IPv4 header (no options).
pub const OUTER_V4: usize = 20;
/// Outer IPv6 header (no extension headers).
pub const OUTER_V6: usize = 40;
/// UDP header of ESP-in-UDP (RFC 3948 §2.1).
pub const UDP: usize = 8;
/// ESP header: SPI and sequence number (RFC 4303 §2).
pub const ESP_HEADER: usize = 8;
/// ESP trailer: Pad Length and Next Header (RFC 4303 §2.4, §2.6).
pub const ESP_TRAILER: usize = 2;
/// TCP header without options; MSS counts data only (RFC 6691 §2).
pub const TCP_HEADER: usize = 20;

/// What an ESP cipher adds (RFC 4303 §2.3, §2.4, §2.8).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EspCipher {
    /// Explicit IV carried in every packet.
    pub iv_len: usize,
    /// Payload + trailer must be a multiple of this (at least 4, §2.4).
    pub block: usize,
    /// Integrity Check Value.
    pub icv_len: usize,
}

impl EspCipher {
    /// AES-GCM with a 16-byte ICV (RFC 4106 §3: 8-byte IV, §3.2: no block
    /// alignment beyond ESP's 4 bytes).
    pub const AES_GCM_16: EspCipher = EspCipher {
        iv_len: 8,
        block: 4,
        icv_len: 16,
    };
    /// ChaCha20-Poly1305 (RFC 7634 §2, §3: 8-byte IV, 16-byte tag).
    pub const CHACHA20_POLY1305: EspCipher = EspCipher {
        iv_len: 8,
        block: 4,
        icv_len: 16,
    };

    /// The cipher of a negotiated ESP proposal (`None`: one the
    /// dataplane does not carry).
    pub fn for_proposal(p: &anyhub_ike::Selected) -> Option<EspCipher> {
        use anyhub_ike::wire::registry::{EncrId, IntegId};
        match p.encr.id {
            EncrId::AES_GCM_16 => Some(EspCipher::AES_GCM_16),
            EncrId::CHACHA20_POLY1305 => Some(EspCipher::CHACHA20_POLY1305),
            EncrId::AES_CBC => Some(EspCipher::aes_cbc(match p.integ? {
                IntegId::HMAC_SHA2_256_128 => 16,
                IntegId::HMAC_SHA2_384_192 => 24,
                IntegId::HMAC_SHA2_512_256 => 32,
                IntegId::HMAC_SHA1_96 => 12,
                _ => return None,
            })),
            _ => None,
        }
    }

    /// AES-CBC (RFC 3602: 16-byte IV and block) with an HMAC-SHA2
    /// truncated to `icv_len` (RFC 4868: 16, 24 or 32 bytes).
    pub const fn aes_cbc(icv_len: usize) -> EspCipher {
        EspCipher {
            iv_len: 16,
            block: 16,
            icv_len,
        }
    }
}

/// How a tunnel encapsulates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encap {
    /// ESP in tunnel mode; `udp`: ESP-in-UDP (RFC 3948).
    Esp {
        cipher: EspCipher,
        udp: bool,
        outer_v6: bool,
    },
    /// GRE; `key`: RFC 2890 key present (4 more bytes).
    Gre { key: bool, outer_v6: bool },
}

impl Encap {
    /// The largest inner packet that fits `path_mtu` once encapsulated.
    ///
    /// ESP (RFC 4303 §2.4: payload + Pad Length + Next Header padded to the
    /// cipher's block, at least 4):
    ///
    /// ```text
    /// outer IP + [UDP 8] + ESP 8 + IV + roundup(inner + 2, block) + ICV <= path_mtu
    /// inner <= rounddown(path_mtu - outer IP - [8] - 8 - IV - ICV, block) - 2
    /// ```
    ///
    /// e.g. ESP-in-UDP, AES-GCM, IPv4 outer, path MTU 1500:
    /// `rounddown(1500 - 20 - 8 - 8 - 8 - 16, 4) - 2 = 1440 - 2 = 1438`
    /// (the trailer then needs 2 bytes, no padding; overhead 62, at most 65
    /// for other inner sizes).
    ///
    /// GRE (RFC 2784 §2: 4-byte header, RFC 2890 §2.1: +4 with a key):
    ///
    /// ```text
    /// inner <= path_mtu - outer IP - 4 - [4]
    /// ```
    ///
    /// Returns 0 when nothing fits.
    pub const fn inner_mtu(self, path_mtu: usize) -> usize {
        match self {
            Encap::Esp {
                cipher,
                udp,
                outer_v6,
            } => {
                let fixed = if outer_v6 { OUTER_V6 } else { OUTER_V4 }
                    + if udp { UDP } else { 0 }
                    + ESP_HEADER
                    + cipher.iv_len
                    + cipher.icv_len;
                if path_mtu < fixed + ESP_TRAILER + cipher.block {
                    return 0;
                }
                let room = path_mtu - fixed;
                room - room % cipher.block - ESP_TRAILER
            }
            Encap::Gre { key, outer_v6 } => {
                let fixed =
                    if outer_v6 { OUTER_V6 } else { OUTER_V4 } + 4 + if key { 4 } else { 0 };
                path_mtu.saturating_sub(fixed)
            }
        }
    }
}

/// The MSS values SYNs are clamped to, per inner family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MssClamp {
    pub v4: u16,
    pub v6: u16,
}

impl MssClamp {
    /// From a tunnel's inner MTU: MSS = MTU − inner IP header − TCP header
    /// (RFC 9293 §3.7.1; options are not counted, RFC 6691 §2).
    pub fn for_inner_mtu(inner_mtu: usize) -> MssClamp {
        let m = |hdr: usize| inner_mtu.saturating_sub(hdr + TCP_HEADER).min(65535) as u16;
        MssClamp {
            v4: m(ipv4::HEADER_LEN),
            v6: m(ipv6::HEADER_LEN),
        }
    }

    /// The smaller of two clamps (a packet crossing two tunnels).
    pub fn min(self, other: MssClamp) -> MssClamp {
        MssClamp {
            v4: self.v4.min(other.v4),
            v6: self.v6.min(other.v6),
        }
    }
}

/// What [`clamp_mss`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Clamped {
    /// Not a TCP SYN with an MSS option (or not parseable): untouched.
    NotApplicable,
    /// The MSS was already at most the clamp.
    Unchanged,
    /// Rewritten from `old` to `new`, checksum patched.
    Lowered { old: u16, new: u16 },
}

/// Clamps the MSS option of a TCP SYN (or SYN-ACK) in the IP packet `pkt`
/// to `clamp`, patching the TCP checksum incrementally (RFC 1624) so the
/// rest of the segment is never read. Anything else is left alone; a SYN
/// without an MSS option is left alone too (RFC 9293 §3.7.1: the peer then
/// assumes 536 / 1220, below any clamp). Fragments are not touched.
pub fn clamp_mss(pkt: &mut [u8], clamp: MssClamp) -> Clamped {
    let (tcp_at, limit) = match pkt.first().map(|b| b >> 4) {
        Some(4) => {
            let Ok(p) = ipv4::Packet::new_checked(&pkt[..]) else {
                return Clamped::NotApplicable;
            };
            if p.protocol() != IpProtocol::TCP || p.is_non_initial_fragment() {
                return Clamped::NotApplicable;
            }
            (p.header_len(), usize::from(p.total_len()))
        }
        Some(6) => {
            let Ok(p) = ipv6::Packet::new_checked(&pkt[..]) else {
                return Clamped::NotApplicable;
            };
            match p.upper_layer() {
                Ok(u) if u.protocol == IpProtocol::TCP && u.has_header() => {
                    (u.offset, p.total_len())
                }
                _ => return Clamped::NotApplicable,
            }
        }
        _ => return Clamped::NotApplicable,
    };
    let max = if pkt[0] >> 4 == 4 { clamp.v4 } else { clamp.v6 };
    let Some(seg) = pkt.get_mut(tcp_at..limit) else {
        return Clamped::NotApplicable;
    };
    let Ok(mut t) = tcp::Packet::new_checked(seg) else {
        return Clamped::NotApplicable;
    };
    if !t.flags().syn() {
        return Clamped::NotApplicable;
    }
    match t.mss() {
        None => Clamped::NotApplicable,
        Some((old, _)) if old <= max => Clamped::Unchanged,
        Some((old, at)) => {
            t.rewrite_u16(at, max);
            Clamped::Lowered { old, new: max }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::fixtures::{
        ICMPV4_ECHO, IPV6_EXT_SYN, IPV6_FRAG_SECOND, TCPV4_PSH, TCPV4_SYN, TCPV4_SYN_ACK, TCPV6_SYN,
    };
    use crate::wire::mutate;
    use std::net::IpAddr;

    const GCM_UDP_V4: Encap = Encap::Esp {
        cipher: EspCipher::AES_GCM_16,
        udp: true,
        outer_v6: false,
    };

    /// Encapsulated size of an inner packet of `n` bytes, computed the
    /// other way round (pad to the block, add everything).
    fn esp_wire_len(n: usize, c: EspCipher, udp: bool, v6: bool) -> usize {
        let body = (n + ESP_TRAILER).div_ceil(c.block) * c.block;
        (if v6 { 40 } else { 20 }) + if udp { 8 } else { 0 } + 8 + c.iv_len + body + c.icv_len
    }

    #[test]
    fn esp_overheads() {
        assert_eq!(GCM_UDP_V4.inner_mtu(1500), 1438);
        // Raw ESP saves the UDP header; IPv6 outer costs 20 more.
        let raw = Encap::Esp {
            cipher: EspCipher::AES_GCM_16,
            udp: false,
            outer_v6: false,
        };
        assert_eq!(raw.inner_mtu(1500), 1446);
        let v6 = Encap::Esp {
            cipher: EspCipher::AES_GCM_16,
            udp: true,
            outer_v6: true,
        };
        assert_eq!(v6.inner_mtu(1500), 1418);
        let cbc = Encap::Esp {
            cipher: EspCipher::aes_cbc(16),
            udp: true,
            outer_v6: false,
        };
        // 1500-20-8-8-16-16 = 1432 → rounddown 16 = 1424 → 1422.
        assert_eq!(cbc.inner_mtu(1500), 1422);
        // The defining property, for every cipher, family and MTU: the
        // inner MTU fits, one byte more does not.
        for c in [
            EspCipher::AES_GCM_16,
            EspCipher::aes_cbc(16),
            EspCipher::aes_cbc(32),
        ] {
            for udp in [false, true] {
                for v6 in [false, true] {
                    for mtu in 576..=9000 {
                        let e = Encap::Esp {
                            cipher: c,
                            udp,
                            outer_v6: v6,
                        };
                        let m = e.inner_mtu(mtu);
                        assert!(esp_wire_len(m, c, udp, v6) <= mtu, "{e:?} {mtu}");
                        assert!(esp_wire_len(m + 1, c, udp, v6) > mtu, "{e:?} {mtu}");
                    }
                }
            }
        }
        assert_eq!(GCM_UDP_V4.inner_mtu(40), 0);
    }

    #[test]
    fn gre_overheads() {
        let g = |key, outer_v6| Encap::Gre { key, outer_v6 };
        assert_eq!(g(false, false).inner_mtu(1500), 1476);
        assert_eq!(g(true, false).inner_mtu(1500), 1472);
        assert_eq!(g(true, true).inner_mtu(1500), 1452);
        assert_eq!(g(false, false).inner_mtu(10), 0);
    }

    #[test]
    fn default_clamps() {
        let c = MssClamp::for_inner_mtu(GCM_UDP_V4.inner_mtu(1500));
        assert_eq!(c, MssClamp { v4: 1398, v6: 1378 });
        let g = MssClamp::for_inner_mtu(
            Encap::Gre {
                key: false,
                outer_v6: false,
            }
            .inner_mtu(1500),
        );
        // Cisco's documented `ip tcp adjust-mss 1436` for GRE.
        assert_eq!(g.v4, 1436);
        assert_eq!(c.min(g), c);
    }

    #[test]
    fn clamps_syn_v4() {
        let (s, d): (IpAddr, IpAddr) = (
            "192.0.2.1".parse().unwrap(),
            "198.51.100.2".parse().unwrap(),
        );
        let mut p = TCPV4_SYN;
        let c = MssClamp { v4: 1398, v6: 1378 };
        assert_eq!(
            clamp_mss(&mut p, c),
            Clamped::Lowered {
                old: 1460,
                new: 1398
            }
        );
        let t = tcp::Packet::new_checked(&p[20..]).unwrap();
        assert_eq!(t.mss().unwrap().0, 1398);
        assert!(t.verify_checksum(&s, &d), "checksum patched");
        assert_eq!(p[..20], TCPV4_SYN[..20], "IP header untouched");
        assert_eq!(clamp_mss(&mut p, c), Clamped::Unchanged);
        // The SYN-ACK (MSS 1240) is already below.
        let mut sa = TCPV4_SYN_ACK;
        assert_eq!(clamp_mss(&mut sa, c), Clamped::Unchanged);
        assert_eq!(sa, TCPV4_SYN_ACK);
        // Not SYNs, not TCP.
        let mut psh = TCPV4_PSH;
        assert_eq!(clamp_mss(&mut psh, c), Clamped::NotApplicable);
        let mut icmp = ICMPV4_ECHO;
        assert_eq!(clamp_mss(&mut icmp, c), Clamped::NotApplicable);
    }

    #[test]
    fn clamps_syn_v6_past_extension_headers() {
        let c = MssClamp { v4: 1398, v6: 1378 };
        let mut p = TCPV6_SYN;
        assert_eq!(
            clamp_mss(&mut p, c),
            Clamped::Lowered {
                old: 1440,
                new: 1378
            }
        );
        let (s, d): (IpAddr, IpAddr) = (
            "2001:db8:1::1".parse().unwrap(),
            "2001:db8:2::2".parse().unwrap(),
        );
        assert!(tcp::Packet::new_checked(&p[40..])
            .unwrap()
            .verify_checksum(&s, &d));
        let mut e = IPV6_EXT_SYN;
        assert_eq!(
            clamp_mss(&mut e, c),
            Clamped::Lowered {
                old: 1460,
                new: 1378
            }
        );
        assert!(tcp::Packet::new_checked(&e[56..])
            .unwrap()
            .verify_checksum(&s, &d));
        let mut f = IPV6_FRAG_SECOND;
        assert_eq!(clamp_mss(&mut f, c), Clamped::NotApplicable);
    }

    #[test]
    fn garbage_never_panics() {
        let c = MssClamp { v4: 1000, v6: 1000 };
        for seed in [&TCPV4_SYN[..], &IPV6_EXT_SYN[..]] {
            mutate::variants(seed, 5000, |b| {
                let mut b = b.to_vec();
                let _ = clamp_mss(&mut b, c);
            });
        }
    }
}
