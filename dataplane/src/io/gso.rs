//! Segmentation in userspace: what the NIC (or the kernel's software GSO,
//! `net/ipv4/tcp_offload.c: tcp_gso_segment`, `udp_offload.c`) would do to
//! a super-packet the TUN device hands us with a `virtio_net_hdr`.
//!
//! A TCP super-packet is one IP header, one TCP header and up to 64 KiB of
//! payload; `gso_size` is the MSS. Segment `i` carries payload bytes
//! `[i·mss, (i+1)·mss)` with
//!
//! - IPv4: total length of the segment, identification `id + i`, a fresh
//!   header checksum (RFC 791 §3.1); IPv6: payload length (RFC 8200 §3);
//! - TCP: sequence number `seq + i·mss`; FIN and PSH only on the last
//!   segment, CWR only on the first (as `tcp_gso_segment` does); a full
//!   checksum over the pseudo-header and the segment (RFC 9293 §3.1).
//!
//! UDP super-packets (`GSO_UDP_L4`, Linux 6.2+) become datagrams of
//! `gso_size` payload bytes, each with its own UDP length and checksum
//! (RFC 768), the last one possibly shorter.
//!
//! A packet without GSO but with `NEEDS_CSUM` gets its checksum completed
//! in place: the field holds the pseudo-header sum, so the checksum is the
//! complement of the sum from `csum_start` to the end.

use super::csum;
use super::vnet::{self, VnetHdr};

/// Most segments one super-packet may become (64 KiB at an MSS of 64).
pub const MAX_SEGMENTS: usize = 1024;

const PROTO_TCP: u8 = 6;
const PROTO_UDP: u8 = 17;
const TCP_FIN: u8 = 0x01;
const TCP_PSH: u8 = 0x08;
const TCP_CWR: u8 = 0x80;

/// Why a packet from the TUN device cannot be segmented. Counted and
/// dropped by the caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SplitError {
    /// Shorter than the headers it claims.
    Truncated,
    /// Not IPv4/IPv6, or a header field that cannot be right.
    BadHeader,
    /// A GSO type we did not enable (e.g. UFO) or that does not match the
    /// packet.
    Unsupported,
    /// `gso_size` of 0, or more than [`MAX_SEGMENTS`] segments.
    BadGsoSize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// One packet, copied as is.
    Whole,
    Tcp,
    Udp,
}

/// A packet read from the TUN device, validated and ready to be cut into
/// [`len`](Self::len) segments, each written by [`write`](Self::write)
/// into a caller buffer. Nothing is allocated.
#[derive(Debug)]
pub struct Segments<'a> {
    pkt: &'a [u8],
    kind: Kind,
    v6: bool,
    /// Offset of the L4 header (= length of the IP header and any IPv6
    /// extension headers).
    l4: usize,
    /// Offset of the payload (IP + L4 headers).
    hlen: usize,
    mss: usize,
    count: usize,
}

impl<'a> Segments<'a> {
    /// Validates `pkt` (an IP packet, the vnet header already removed) as
    /// described by `hdr`. Completes a partial checksum of a non-GSO
    /// packet in place, hence `&mut`.
    pub fn new(hdr: &VnetHdr, pkt: &'a mut [u8]) -> Result<Segments<'a>, SplitError> {
        let v6 = match pkt.first().map(|b| b >> 4) {
            Some(4) => false,
            Some(6) => true,
            Some(_) => return Err(SplitError::BadHeader),
            None => return Err(SplitError::Truncated),
        };
        let ip_min = if v6 { 40 } else { 20 };
        if pkt.len() < ip_min {
            return Err(SplitError::Truncated);
        }
        let gso = hdr.gso();
        if gso == vnet::GSO_NONE {
            if hdr.flags & vnet::F_NEEDS_CSUM != 0 {
                let start = hdr.csum_start as usize;
                let at = start + hdr.csum_offset as usize;
                if start < ip_min || at + 2 > pkt.len() {
                    return Err(SplitError::BadHeader);
                }
                // The field holds the pseudo-header sum; 0 would mean "no
                // checksum" for UDP, and 0xffff is the same value in one's
                // complement (RFC 768).
                let c = !csum::sum(&pkt[start..]);
                let c = if c == 0 { 0xffff } else { c };
                pkt[at..at + 2].copy_from_slice(&c.to_be_bytes());
            }
            let pkt: &'a [u8] = pkt;
            return Ok(Segments {
                pkt,
                kind: Kind::Whole,
                v6,
                l4: 0,
                hlen: 0,
                mss: pkt.len(),
                count: 1,
            });
        }
        let (kind, want_v6) = match gso {
            vnet::GSO_TCPV4 => (Kind::Tcp, false),
            vnet::GSO_TCPV6 => (Kind::Tcp, true),
            vnet::GSO_UDP_L4 => (Kind::Udp, v6),
            _ => return Err(SplitError::Unsupported),
        };
        if want_v6 != v6 {
            return Err(SplitError::Unsupported);
        }
        // Where L4 starts: the kernel says so in csum_start (it also
        // covers IPv6 extension headers); for IPv4 it must match IHL.
        let l4 = hdr.csum_start as usize;
        let proto = if v6 {
            if l4 < 40 {
                return Err(SplitError::BadHeader);
            }
            if l4 == 40 {
                pkt[6]
            } else if kind == Kind::Tcp {
                PROTO_TCP
            } else {
                PROTO_UDP
            }
        } else {
            let ihl = (pkt[0] & 0x0f) as usize * 4;
            if ihl < 20 || ihl != l4 {
                return Err(SplitError::BadHeader);
            }
            pkt[9]
        };
        let (want_proto, l4_len) = match kind {
            Kind::Tcp => {
                if pkt.len() < l4 + 20 {
                    return Err(SplitError::Truncated);
                }
                (PROTO_TCP, (pkt[l4 + 12] >> 4) as usize * 4)
            }
            _ => (PROTO_UDP, 8),
        };
        if proto != want_proto || l4_len < 8 {
            return Err(SplitError::BadHeader);
        }
        let hlen = l4 + l4_len;
        if pkt.len() < hlen {
            return Err(SplitError::Truncated);
        }
        let mss = hdr.gso_size as usize;
        let payload = pkt.len() - hlen;
        if mss == 0 {
            return Err(SplitError::BadGsoSize);
        }
        let count = payload.div_ceil(mss).max(1);
        if count > MAX_SEGMENTS {
            return Err(SplitError::BadGsoSize);
        }
        let pkt: &'a [u8] = pkt;
        Ok(Segments {
            pkt,
            kind,
            v6,
            l4,
            hlen,
            mss,
            count,
        })
    }

    /// Number of segments.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Always `false`: a packet is at least one segment.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Whether this is a single packet passed through whole.
    pub fn is_whole(&self) -> bool {
        self.kind == Kind::Whole
    }

    /// Length of the largest segment (the first).
    pub fn max_segment_len(&self) -> usize {
        self.segment_len(0)
    }

    fn payload_range(&self, i: usize) -> (usize, usize) {
        let start = self.hlen + i * self.mss;
        let end = (start + self.mss).min(self.pkt.len());
        (start, end)
    }

    /// Length of segment `i` (headers included).
    pub fn segment_len(&self, i: usize) -> usize {
        if self.kind == Kind::Whole {
            return self.pkt.len();
        }
        let (s, e) = self.payload_range(i);
        self.hlen + (e - s)
    }

    /// Writes segment `i < len()` into `out` and returns its length, or
    /// `None` if `out` is too small.
    pub fn write(&self, i: usize, out: &mut [u8]) -> Option<usize> {
        debug_assert!(i < self.count);
        let n = self.segment_len(i);
        let out = out.get_mut(..n)?;
        if self.kind == Kind::Whole {
            out.copy_from_slice(self.pkt);
            return Some(n);
        }
        let (ps, pe) = self.payload_range(i);
        out[..self.hlen].copy_from_slice(&self.pkt[..self.hlen]);
        out[self.hlen..].copy_from_slice(&self.pkt[ps..pe]);
        let l4_total = n - self.l4;
        let (src, dst) = if self.v6 {
            // RFC 8200 §3: payload length counts extension headers too.
            out[4..6].copy_from_slice(&((n - 40) as u16).to_be_bytes());
            (8..24, 24..40)
        } else {
            out[2..4].copy_from_slice(&(n as u16).to_be_bytes());
            let id = u16::from_be_bytes([out[4], out[5]]).wrapping_add(i as u16);
            out[4..6].copy_from_slice(&id.to_be_bytes());
            let c = csum::ipv4_header(&out[..self.l4]);
            out[10..12].copy_from_slice(&c.to_be_bytes());
            (12..16, 16..20)
        };
        let l4 = self.l4;
        let check_at = match self.kind {
            Kind::Tcp => {
                let seq = u32::from_be_bytes(out[l4 + 4..l4 + 8].try_into().ok()?)
                    .wrapping_add((i * self.mss) as u32);
                out[l4 + 4..l4 + 8].copy_from_slice(&seq.to_be_bytes());
                if i + 1 != self.count {
                    out[l4 + 13] &= !(TCP_FIN | TCP_PSH);
                }
                if i != 0 {
                    out[l4 + 13] &= !TCP_CWR;
                }
                l4 + 16
            }
            _ => {
                out[l4 + 4..l4 + 6].copy_from_slice(&(l4_total as u16).to_be_bytes());
                l4 + 6
            }
        };
        let proto = if self.kind == Kind::Tcp {
            PROTO_TCP
        } else {
            PROTO_UDP
        };
        out[check_at..check_at + 2].copy_from_slice(&[0, 0]);
        let pseudo = csum::pseudo(&out[src], &out[dst], proto, l4_total);
        let c = !csum::add(pseudo, csum::sum(&out[l4..]));
        let c = if c == 0 { 0xffff } else { c };
        out[check_at..check_at + 2].copy_from_slice(&c.to_be_bytes());
        Some(n)
    }
}

/// Test helpers shared with `gro.rs`: the captured fixtures (see
/// `fixtures/README.md`) and an independent checksum check.
#[cfg(test)]
pub(crate) mod testutil {
    use super::*;

    pub const TCP4: &[u8] = include_bytes!("fixtures/tcp4-2.bin");
    pub const TCP4_BIG: &[u8] = include_bytes!("fixtures/tcp4-30.bin");
    pub const TCP6: &[u8] = include_bytes!("fixtures/tcp6-2.bin");
    pub const TCP6_BIG: &[u8] = include_bytes!("fixtures/tcp6-30.bin");
    pub const UDP4: &[u8] = include_bytes!("fixtures/udp4-0.bin");
    pub const UDP6: &[u8] = include_bytes!("fixtures/udp6-0.bin");

    /// RFC 1071 the slow way: 16-bit big-endian words, end-around carry.
    pub fn naive_sum(parts: &[&[u8]]) -> u16 {
        let mut acc: u32 = 0;
        for p in parts {
            assert!(p.len() % 2 == 0 || std::ptr::eq(*p, *parts.last().unwrap()));
            for c in p.chunks(2) {
                let w = if c.len() == 2 {
                    u16::from_be_bytes([c[0], c[1]])
                } else {
                    u16::from_be_bytes([c[0], 0])
                };
                acc += w as u32;
                acc = (acc & 0xffff) + (acc >> 16);
            }
        }
        acc as u16
    }

    /// Whether an IPv4/IPv6 TCP or UDP packet's L4 checksum verifies.
    pub fn l4_checksum_ok(pkt: &[u8]) -> bool {
        let (l4, proto, src, dst) = if pkt[0] >> 4 == 4 {
            (
                (pkt[0] & 15) as usize * 4,
                pkt[9],
                &pkt[12..16],
                &pkt[16..20],
            )
        } else {
            (40, pkt[6], &pkt[8..24], &pkt[24..40])
        };
        let len = (pkt.len() - l4) as u32;
        let pseudo: Vec<u8> = if pkt[0] >> 4 == 4 {
            [src, dst, &[0, proto], &(len as u16).to_be_bytes()].concat()
        } else {
            [src, dst, &len.to_be_bytes()[..], &[0, 0, 0, proto]].concat()
        };
        naive_sum(&[&pseudo, &pkt[l4..]]) == 0xffff
    }

    /// A fixture split by [`Segments`]: one buffer, segments back to back.
    pub fn split(raw: &[u8]) -> (Vec<u8>, Vec<(usize, usize)>) {
        let hdr = VnetHdr::parse(raw).unwrap();
        let mut pkt = raw[vnet::VNET_HDR_LEN..].to_vec();
        let s = Segments::new(&hdr, &mut pkt).unwrap();
        let mut buf = vec![0u8; 70_000 + s.len() * 100];
        let mut at = 0;
        let mut v = Vec::new();
        for i in 0..s.len() {
            let n = s.write(i, &mut buf[at..]).unwrap();
            v.push((at, n));
            at += n;
        }
        buf.truncate(at);
        (buf, v)
    }
}

#[cfg(test)]
mod tests {
    use super::testutil::*;
    use super::*;

    fn check_tcp(raw: &[u8], v6: bool) {
        let hdr = VnetHdr::parse(raw).unwrap();
        let orig = &raw[vnet::VNET_HDR_LEN..];
        let (l4, hlen) = (hdr.csum_start as usize, hdr.hdr_len as usize);
        let mss = hdr.gso_size as usize;
        let (buf, segs) = split(raw);
        let payload = &orig[hlen..];
        assert_eq!(segs.len(), payload.len().div_ceil(mss));
        let seq0 = u32::from_be_bytes(orig[l4 + 4..l4 + 8].try_into().unwrap());
        let id0 = u16::from_be_bytes([orig[4], orig[5]]);
        let mut joined = Vec::new();
        for (i, &(o, n)) in segs.iter().enumerate() {
            let p = &buf[o..o + n];
            let last = i + 1 == segs.len();
            assert_eq!(n, hlen + if last { payload.len() - i * mss } else { mss });
            if v6 {
                assert_eq!(u16::from_be_bytes([p[4], p[5]]) as usize, n - 40);
            } else {
                assert_eq!(u16::from_be_bytes([p[2], p[3]]) as usize, n);
                assert_eq!(u16::from_be_bytes([p[4], p[5]]), id0.wrapping_add(i as u16));
                assert_eq!(naive_sum(&[&p[..20]]), 0xffff, "IPv4 header checksum");
            }
            let seq = u32::from_be_bytes(p[l4 + 4..l4 + 8].try_into().unwrap());
            assert_eq!(seq, seq0.wrapping_add((i * mss) as u32));
            // The super-packet has ACK|PSH: PSH only on the last segment.
            assert_eq!(p[l4 + 13], if last { 0x18 } else { 0x10 });
            assert!(l4_checksum_ok(p), "segment {i} TCP checksum");
            // Options (timestamps) copied unchanged.
            assert_eq!(p[l4 + 20..hlen], orig[l4 + 20..hlen]);
            joined.extend_from_slice(&p[hlen..]);
        }
        assert_eq!(joined, payload);
    }

    #[test]
    fn splits_kernel_tcp4_super_packets() {
        check_tcp(TCP4, false);
        check_tcp(TCP4_BIG, false);
    }

    #[test]
    fn splits_kernel_tcp6_super_packets() {
        check_tcp(TCP6, true);
        check_tcp(TCP6_BIG, true);
    }

    #[test]
    fn splits_kernel_udp_super_datagrams() {
        for (raw, v6) in [(UDP4, false), (UDP6, true)] {
            let (buf, segs) = split(raw);
            let l4 = if v6 { 40 } else { 20 };
            assert_eq!(segs.len(), 5);
            let mut joined = Vec::new();
            for &(o, n) in &segs {
                let p = &buf[o..o + n];
                assert_eq!(n, l4 + 8 + 1000);
                assert_eq!(u16::from_be_bytes([p[l4 + 4], p[l4 + 5]]), 1008);
                assert_eq!(u16::from_be_bytes([p[l4 + 2], p[l4 + 3]]), 9);
                assert!(l4_checksum_ok(p));
                joined.extend_from_slice(&p[l4 + 8..]);
            }
            let mut want: Vec<u8> = (0..=255u8).cycle().take(256 * 19).collect();
            want.extend_from_slice(&[0; 136]);
            assert_eq!(joined, want);
        }
    }

    #[test]
    fn completes_a_partial_checksum() {
        // The last segment of a real super-packet, with its checksum
        // replaced by the pseudo-header sum as the kernel leaves it for
        // NEEDS_CSUM.
        let (buf, segs) = split(TCP4);
        let (o, n) = *segs.last().unwrap();
        let good = buf[o..o + n].to_vec();
        let mut pkt = good.clone();
        let pseudo = csum::pseudo(&pkt[12..16], &pkt[16..20], 6, n - 20);
        pkt[36..38].copy_from_slice(&pseudo.to_be_bytes());
        let hdr = VnetHdr {
            flags: vnet::F_NEEDS_CSUM,
            csum_start: 20,
            csum_offset: 16,
            ..VnetHdr::default()
        };
        let s = Segments::new(&hdr, &mut pkt).unwrap();
        assert!(s.is_whole());
        let mut out = vec![0u8; n];
        assert_eq!(s.write(0, &mut out), Some(n));
        assert_eq!(out, good);
    }

    #[test]
    fn refuses_what_it_cannot_split() {
        let hdr = VnetHdr::parse(TCP4).unwrap();
        let mut pkt = TCP4[vnet::VNET_HDR_LEN..].to_vec();
        let zero = VnetHdr { gso_size: 0, ..hdr };
        assert_eq!(
            Segments::new(&zero, &mut pkt).unwrap_err(),
            SplitError::BadGsoSize
        );
        let v6 = VnetHdr {
            gso_type: vnet::GSO_TCPV6,
            ..hdr
        };
        assert_eq!(
            Segments::new(&v6, &mut pkt).unwrap_err(),
            SplitError::Unsupported
        );
        let ufo = VnetHdr {
            gso_type: vnet::GSO_UDP,
            ..hdr
        };
        assert_eq!(
            Segments::new(&ufo, &mut pkt).unwrap_err(),
            SplitError::Unsupported
        );
        let tiny = VnetHdr { gso_size: 1, ..hdr };
        assert_eq!(
            Segments::new(&tiny, &mut pkt).unwrap_err(),
            SplitError::BadGsoSize
        );
        assert_eq!(
            Segments::new(&hdr, &mut pkt[..40]).unwrap_err(),
            SplitError::Truncated
        );
        assert_eq!(
            Segments::new(&hdr, &mut pkt[..10]).unwrap_err(),
            SplitError::Truncated
        );
        let mut bad = pkt.clone();
        bad[0] = 0x75;
        assert_eq!(
            Segments::new(&hdr, &mut bad).unwrap_err(),
            SplitError::BadHeader
        );
        let mut udp = pkt.clone();
        udp[9] = 17;
        assert_eq!(
            Segments::new(&hdr, &mut udp).unwrap_err(),
            SplitError::BadHeader
        );
        // A too small output buffer is refused, not overrun.
        let s = Segments::new(&hdr, &mut pkt).unwrap();
        assert_eq!(s.write(0, &mut [0u8; 100]), None);
    }
}
