//! Coalescing in userspace: inner TCP segments of one flow, received in one
//! batch, written to the TUN device as one super-packet with a
//! `virtio_net_hdr` (`GSO_TCPV4`/`GSO_TCPV6`, `NEEDS_CSUM`), so the kernel's
//! TCP receive path runs once per 64 KiB instead of once per segment.
//!
//! The rules follow the kernel's GRO (`net/ipv4/tcp_offload.c:
//! tcp_gro_receive`, `net/ipv4/af_inet.c: inet_gro_receive`) and
//! wireguard-go's `tun/offload_linux.go`. A segment joins the open
//! super-packet of its flow when
//!
//! - addresses and ports are the same; IPv4: same TOS, TTL and DF, no
//!   options, not a fragment; IPv6: same traffic class and flow label, same
//!   hop limit, no extension headers;
//! - its sequence number is exactly where the super-packet ends;
//! - ACK number, data offset, window and every option byte are the same,
//!   and its flags are ACK (+ PSH, + ECE like the first) — SYN, FIN, RST,
//!   URG and CWR segments are written alone;
//! - its payload is not longer than the first segment's (`gso_size`); a
//!   shorter segment, or one with PSH, is the last one;
//! - its TCP checksum is right (a bad one is written alone, for the kernel
//!   to count and drop), and the result stays under 64 KiB and
//!   [`MAX_SEGMENTS`] segments.
//!
//! Everything else (UDP, ICMP, other flows) is written as it came, in
//! order: segments of one flow never overtake each other.

use std::io::{self, IoSlice};

use super::csum;
use super::vnet::{self, VnetHdr, VNET_HDR_LEN};

/// Most segments in one coalesced packet.
pub const MAX_SEGMENTS: usize = 64;
/// Most packets one [`Gro`] holds before it must be flushed.
pub const MAX_PACKETS: usize = 1024;
/// Flows tracked at once; the oldest open one is closed when a new flow
/// needs a slot.
const MAX_FLOWS: usize = 8;
const MAX_LEN: usize = 65_535;

const TCP_FIN: u8 = 0x01;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_PSH: u8 = 0x08;
const TCP_ACK: u8 = 0x10;
const TCP_URG: u8 = 0x20;
const TCP_CWR: u8 = 0x80;

#[derive(Clone, Copy, Debug)]
struct Tcp {
    v6: bool,
    l4: u16,
    hlen: u16,
    /// Payload of the first segment: every other one is at most this.
    gso: u16,
    payload: u32,
    next_seq: u32,
    psh: bool,
    /// Segments after the first, as a list through `Gro::more`.
    head: u32,
    tail: u32,
    count: u16,
}

#[derive(Clone, Copy, Debug)]
struct Item {
    off: u32,
    len: u32,
    tcp: Option<Tcp>,
}

#[derive(Clone, Copy, Debug)]
struct More {
    off: u32,
    len: u32,
    next: u32,
}

const NIL: u32 = u32::MAX;

#[derive(Clone, Copy, Debug)]
struct Flow {
    /// Addresses and ports: 12 bytes for IPv4, 36 for IPv6.
    key: [u8; 36],
    key_len: u8,
    item: u32,
}

/// What [`Gro::flush`] wrote.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Flushed {
    /// Writes to the TUN device.
    pub writes: usize,
    /// Packets in them (a coalesced write counts its segments).
    pub packets: usize,
    /// Writes that failed (their packets are lost).
    pub errors: usize,
}

/// The coalescing table for one batch. Packets are referenced by offset
/// into the caller's buffer, which must stay the same from the first
/// [`push`](Self::push) to [`flush`](Self::flush). Allocates only in
/// [`new`](Self::new).
pub struct Gro {
    items: Vec<Item>,
    more: Vec<More>,
    flows: Vec<Flow>,
}

impl Default for Gro {
    fn default() -> Self {
        Self::new()
    }
}

impl Gro {
    /// An empty table.
    pub fn new() -> Gro {
        Gro {
            items: Vec::with_capacity(MAX_PACKETS),
            more: Vec::with_capacity(MAX_PACKETS),
            flows: Vec::with_capacity(MAX_FLOWS),
        }
    }

    /// Packets held.
    pub fn len(&self) -> usize {
        self.items.len() + self.more.len()
    }

    /// Nothing held.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Whether the table is full (flush before pushing more).
    pub fn is_full(&self) -> bool {
        self.len() >= MAX_PACKETS
    }

    /// Adds the IP packet `buf[off..off + len]`. Call [`flush`](Self::flush)
    /// first when [`is_full`](Self::is_full).
    pub fn push(&mut self, buf: &[u8], off: usize, len: usize) {
        let pkt = &buf[off..off + len];
        let Some(seg) = parse_tcp(pkt) else {
            // Not a coalescable TCP segment. If it belongs to a flow we
            // hold open (e.g. its FIN), later segments must not overtake it.
            if let Some(key) = flow_key(pkt) {
                self.close_flow(&key);
            }
            self.items.push(Item {
                off: off as u32,
                len: len as u32,
                tcp: None,
            });
            return;
        };
        let key = seg.key;
        if let Some(fi) = self.find_flow(&key) {
            let ii = self.flows[fi].item as usize;
            if self.can_append(buf, ii, pkt, &seg) {
                let plen = seg.payload as u32;
                let more = self.more.len() as u32;
                self.more.push(More {
                    off: (off + seg.hlen) as u32,
                    len: plen,
                    next: NIL,
                });
                let t = self.items[ii].tcp.as_mut().expect("flow item is TCP");
                if t.tail == NIL {
                    t.head = more;
                } else {
                    self.more[t.tail as usize].next = more;
                }
                t.tail = more;
                t.count += 1;
                t.payload += plen;
                t.next_seq = t.next_seq.wrapping_add(plen);
                let last = seg.psh || plen < t.gso as u32;
                t.psh |= seg.psh;
                if last {
                    self.flows.swap_remove(fi);
                }
                return;
            }
            self.flows.swap_remove(fi);
        }
        let ii = self.items.len() as u32;
        self.items.push(Item {
            off: off as u32,
            len: len as u32,
            tcp: Some(Tcp {
                v6: seg.v6,
                l4: seg.l4 as u16,
                hlen: seg.hlen as u16,
                gso: seg.payload as u16,
                payload: seg.payload as u32,
                next_seq: seg.seq.wrapping_add(seg.payload as u32),
                psh: seg.psh,
                head: NIL,
                tail: NIL,
                count: 1,
            }),
        });
        if !seg.psh {
            if self.flows.len() == MAX_FLOWS {
                self.flows.remove(0);
            }
            self.flows.push(Flow {
                key: key.0,
                key_len: key.1,
                item: ii,
            });
        }
    }

    fn find_flow(&self, key: &([u8; 36], u8)) -> Option<usize> {
        self.flows.iter().position(|f| {
            f.key_len == key.1 && f.key[..f.key_len as usize] == key.0[..key.1 as usize]
        })
    }

    fn close_flow(&mut self, key: &([u8; 36], u8)) {
        if let Some(fi) = self.find_flow(key) {
            self.flows.swap_remove(fi);
        }
    }

    fn can_append(&self, buf: &[u8], ii: usize, pkt: &[u8], seg: &Seg) -> bool {
        let item = &self.items[ii];
        let Some(t) = &item.tcp else { return false };
        if t.v6 != seg.v6 || t.hlen as usize != seg.hlen || t.l4 as usize != seg.l4 {
            return false;
        }
        if seg.seq != t.next_seq
            || seg.payload > t.gso as usize
            || t.count as usize >= MAX_SEGMENTS
            || t.hlen as usize + t.payload as usize + seg.payload > MAX_LEN
        {
            return false;
        }
        let first = &buf[item.off as usize..(item.off + item.len) as usize];
        let l4 = seg.l4;
        // IP fields that must agree.
        if seg.v6 {
            // version/traffic class/flow label, hop limit
            if first[..4] != pkt[..4] || first[7] != pkt[7] {
                return false;
            }
        } else if first[1] != pkt[1] || first[8] != pkt[8] || (first[6] & 0x40) != (pkt[6] & 0x40) {
            return false;
        }
        // TCP: ack (8..12), data offset + flags (except PSH) + window
        // (12..16), options (20..hlen).
        let (a, b) = (&first[l4..seg.hlen], &pkt[l4..seg.hlen]);
        a[8..12] == b[8..12]
            && a[12] == b[12]
            && (a[13] & !TCP_PSH) == (b[13] & !TCP_PSH)
            && a[14..16] == b[14..16]
            && a[20..] == b[20..]
    }

    /// Writes everything held through `write` (one call per packet written
    /// to the TUN device, vnet header first) and empties the table. The
    /// first segment of each coalesced packet has its headers rewritten in
    /// `buf`: IP length (and IPv4 checksum), PSH if any segment had it, and
    /// the TCP checksum field set to the pseudo-header sum for
    /// `NEEDS_CSUM`.
    pub fn flush(
        &mut self,
        buf: &mut [u8],
        mut write: impl FnMut(&[IoSlice<'_>]) -> io::Result<usize>,
    ) -> Flushed {
        let mut done = Flushed::default();
        let none = {
            let mut h = [0u8; VNET_HDR_LEN];
            VnetHdr::default().emit(&mut h);
            h
        };
        for item in &self.items {
            let (off, len) = (item.off as usize, item.len as usize);
            let t = match item.tcp {
                Some(t) if t.count > 1 => t,
                _ => {
                    let iov = [IoSlice::new(&none), IoSlice::new(&buf[off..off + len])];
                    done.writes += 1;
                    done.packets += 1;
                    if write(&iov).is_err() {
                        done.errors += 1;
                    }
                    continue;
                }
            };
            let (l4, hlen) = (t.l4 as usize, t.hlen as usize);
            let total = hlen + t.payload as usize;
            {
                let p = &mut buf[off..off + len];
                let (src, dst) = if t.v6 {
                    p[4..6].copy_from_slice(&((total - 40) as u16).to_be_bytes());
                    (8..24, 24..40)
                } else {
                    p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
                    let c = csum::ipv4_header(&p[..l4]);
                    p[10..12].copy_from_slice(&c.to_be_bytes());
                    (12..16, 16..20)
                };
                if t.psh {
                    p[l4 + 13] |= TCP_PSH;
                }
                let pseudo = csum::pseudo(&p[src], &p[dst], 6, total - l4);
                p[l4 + 16..l4 + 18].copy_from_slice(&pseudo.to_be_bytes());
            }
            let hdr = VnetHdr {
                flags: vnet::F_NEEDS_CSUM,
                gso_type: if t.v6 {
                    vnet::GSO_TCPV6
                } else {
                    vnet::GSO_TCPV4
                },
                hdr_len: hlen as u16,
                gso_size: t.gso,
                csum_start: l4 as u16,
                csum_offset: 16,
            };
            let mut h = [0u8; VNET_HDR_LEN];
            hdr.emit(&mut h);
            let buf: &[u8] = buf;
            let mut iov = [IoSlice::new(&[]); MAX_SEGMENTS + 1];
            iov[0] = IoSlice::new(&h);
            iov[1] = IoSlice::new(&buf[off..off + len]);
            let mut n = 2;
            let mut m = t.head;
            while m != NIL {
                let s = self.more[m as usize];
                iov[n] = IoSlice::new(&buf[s.off as usize..(s.off + s.len) as usize]);
                n += 1;
                m = s.next;
            }
            done.writes += 1;
            done.packets += t.count as usize;
            if write(&iov[..n]).is_err() {
                done.errors += 1;
            }
        }
        self.items.clear();
        self.more.clear();
        self.flows.clear();
        done
    }
}

struct Seg {
    v6: bool,
    l4: usize,
    hlen: usize,
    payload: usize,
    seq: u32,
    psh: bool,
    key: ([u8; 36], u8),
}

/// Addresses and ports of a TCP packet (for closing its flow), if it is
/// one.
fn flow_key(pkt: &[u8]) -> Option<([u8; 36], u8)> {
    let mut key = [0u8; 36];
    match pkt.first()? >> 4 {
        4 if pkt.len() >= 24 && pkt[9] == 6 => {
            let l4 = (pkt[0] & 0x0f) as usize * 4;
            key[..8].copy_from_slice(&pkt[12..20]);
            key[8..12].copy_from_slice(pkt.get(l4..l4 + 4)?);
            Some((key, 12))
        }
        6 if pkt.len() >= 44 && pkt[6] == 6 => {
            key[..32].copy_from_slice(&pkt[8..40]);
            key[32..36].copy_from_slice(&pkt[40..44]);
            Some((key, 36))
        }
        _ => None,
    }
}

/// A TCP segment that may be coalesced: plain headers, data, flags ACK
/// (+PSH, +ECE), a right checksum.
fn parse_tcp(pkt: &[u8]) -> Option<Seg> {
    let (v6, l4, src, dst) = match pkt.first()? >> 4 {
        4 => {
            if pkt.len() < 40 || pkt[0] & 0x0f != 5 || pkt[9] != 6 {
                return None;
            }
            // total length must match what we received; no fragments
            if u16::from_be_bytes([pkt[2], pkt[3]]) as usize != pkt.len()
                || u16::from_be_bytes([pkt[6], pkt[7]]) & 0x3fff != 0
            {
                return None;
            }
            (false, 20, 12..16, 16..20)
        }
        6 => {
            if pkt.len() < 60
                || pkt[6] != 6
                || u16::from_be_bytes([pkt[4], pkt[5]]) as usize + 40 != pkt.len()
            {
                return None;
            }
            (true, 40, 8..24, 24..40)
        }
        _ => return None,
    };
    let doff = (pkt[l4 + 12] >> 4) as usize * 4;
    let hlen = l4 + doff;
    if doff < 20 || pkt.len() <= hlen {
        return None;
    }
    let flags = pkt[l4 + 13];
    if flags & TCP_ACK == 0 || flags & (TCP_SYN | TCP_FIN | TCP_RST | TCP_URG | TCP_CWR) != 0 {
        return None;
    }
    let pseudo = csum::pseudo(&pkt[src], &pkt[dst], 6, pkt.len() - l4);
    if csum::add(pseudo, csum::sum(&pkt[l4..])) != 0xffff {
        return None;
    }
    let mut key = [0u8; 36];
    let key_len = if v6 {
        key[..32].copy_from_slice(&pkt[8..40]);
        key[32..36].copy_from_slice(&pkt[40..44]);
        36
    } else {
        key[..8].copy_from_slice(&pkt[12..20]);
        key[8..12].copy_from_slice(&pkt[20..24]);
        12
    };
    Some(Seg {
        v6,
        l4,
        hlen,
        payload: pkt.len() - hlen,
        seq: u32::from_be_bytes(pkt[l4 + 4..l4 + 8].try_into().ok()?),
        psh: flags & TCP_PSH != 0,
        key: (key, key_len),
    })
}

#[cfg(test)]
mod tests {
    use super::super::gso::testutil::*;
    use super::*;

    /// Runs `gro` over `pkts` (offsets into `buf`) and returns each write
    /// as bytes (vnet header + packet).
    fn coalesce(buf: &mut [u8], pkts: &[(usize, usize)]) -> Vec<Vec<u8>> {
        let mut gro = Gro::new();
        for &(o, n) in pkts {
            gro.push(buf, o, n);
        }
        let mut out = Vec::new();
        let f = gro.flush(buf, |iov| {
            let v: Vec<u8> = iov.iter().flat_map(|s| s.iter().copied()).collect();
            let n = v.len();
            out.push(v);
            Ok(n)
        });
        assert_eq!(f.writes, out.len());
        assert_eq!(f.packets, pkts.len());
        assert!(gro.is_empty());
        out
    }

    #[test]
    fn split_then_coalesce_gives_back_the_kernels_super_packet() {
        for raw in [TCP4, TCP4_BIG, TCP6, TCP6_BIG] {
            let (mut buf, segs) = split(raw);
            let out = coalesce(&mut buf, &segs);
            assert_eq!(out.len(), 1);
            // Byte for byte what the kernel handed us: vnet header
            // (NEEDS_CSUM, TCPV4/6, hdr_len, gso_size, csum_start/offset),
            // IP length, IPv4 ID and checksum, PSH, the pseudo-header sum
            // in the TCP checksum field, payload.
            assert_eq!(out[0], raw);
        }
    }

    #[test]
    fn two_flows_interleaved_stay_apart() {
        let (b4, s4) = split(TCP4);
        let (b6, s6) = split(TCP6);
        let mut buf = b4.clone();
        buf.extend_from_slice(&b6);
        let mut pkts = Vec::new();
        for i in 0..s4.len().max(s6.len()) {
            if let Some(&p) = s4.get(i) {
                pkts.push(p);
            }
            if let Some(&(o, n)) = s6.get(i) {
                pkts.push((o + b4.len(), n));
            }
        }
        let out = coalesce(&mut buf, &pkts);
        assert_eq!(out, vec![TCP4.to_vec(), TCP6.to_vec()]);
    }

    #[test]
    fn out_of_order_segments_are_written_in_arrival_order() {
        let (mut buf, segs) = split(TCP4);
        let order = [segs[0], segs[1], segs[3], segs[2], segs[4]];
        let out = coalesce(&mut buf, &order);
        // [0,1] coalesced; 3 cannot follow 1, 2 cannot follow 3, 4 cannot
        // follow 2: order is kept and nothing is merged out of sequence.
        let hlen = 52;
        let payload_of = |w: &Vec<u8>| w[VNET_HDR_LEN + hlen..].to_vec();
        let pkt = &TCP4[VNET_HDR_LEN + hlen..];
        let mss = 1348;
        assert_eq!(payload_of(&out[0]), pkt[..2 * mss]);
        assert_eq!(payload_of(&out[1]), pkt[3 * mss..4 * mss]);
        assert_eq!(payload_of(&out[2]), pkt[2 * mss..3 * mss]);
        assert_eq!(out.len(), 4);
        assert_eq!(payload_of(&out[3]), pkt[4 * mss..5 * mss]);
        // Single segments go out without GSO.
        assert_eq!(out[1][1], vnet::GSO_NONE);
    }

    #[test]
    fn a_bad_checksum_is_not_coalesced() {
        let (mut buf, segs) = split(TCP4_BIG);
        let (o, n) = segs[3];
        buf[o + n - 1] ^= 0xff;
        let out = coalesce(&mut buf, &segs);
        assert_eq!(out.len(), 3);
        let hdr = |w: &Vec<u8>| VnetHdr::parse(w).unwrap();
        assert_eq!(hdr(&out[0]).gso_type, vnet::GSO_TCPV4);
        assert_eq!(out[0].len(), VNET_HDR_LEN + 52 + 3 * 1348);
        assert_eq!(hdr(&out[1]).gso_type, vnet::GSO_NONE);
        assert_eq!(&out[1][VNET_HDR_LEN..], &buf[o..o + n]);
        assert_eq!(hdr(&out[2]).gso_type, vnet::GSO_TCPV4);
    }

    #[test]
    fn psh_ends_a_super_packet_and_other_protocols_pass_alone() {
        let (mut buf, segs) = split(TCP4_BIG);
        // PSH on segment 4 (and its checksum fixed up): 0..=4 become one,
        // 5.. another.
        let (o, n) = segs[4];
        buf[o + 33] |= TCP_PSH;
        buf[o + 36..o + 38].copy_from_slice(&[0, 0]);
        let c = !csum::add(
            csum::pseudo(&buf[o + 12..o + 16], &buf[o + 16..o + 20], 6, n - 20),
            csum::sum(&buf[o + 20..o + n]),
        );
        buf[o + 36..o + 38].copy_from_slice(&c.to_be_bytes());
        let (ub, us) = split(UDP4);
        let base = buf.len();
        buf.extend_from_slice(&ub);
        let mut pkts = segs.clone();
        pkts.insert(2, (base + us[0].0, us[0].1));
        let out = coalesce(&mut buf, &pkts);
        assert_eq!(out.len(), 3);
        // Items are written in the order they started: the UDP datagram,
        // pushed third, goes out between the two TCP super-packets.
        assert_eq!(out[1][VNET_HDR_LEN + 9], 17);
        assert_eq!(out[0].len(), VNET_HDR_LEN + 52 + 5 * 1348);
        assert_eq!(out[0][VNET_HDR_LEN + 33] & TCP_PSH, TCP_PSH);
        assert_eq!(out[2].len(), TCP4_BIG.len() - 5 * 1348);
    }
}
