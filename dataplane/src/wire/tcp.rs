//! TCP header, RFC 9293 §3.1: what the dataplane needs, which is ports
//! (traffic selectors), flags (SYN), the data offset, the options walk
//! (MSS clamping, RFC 9293 §3.7.1 / RFC 6691) and the checksum.
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |          Source Port          |       Destination Port        |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                        Sequence Number                        |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                    Acknowledgment Number                      |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |  Data |       |C|E|U|A|P|R|S|F|                               |
//! | Offset| Rsrvd |W|C|R|C|S|S|Y|I|            Window             |
//! |       |       |R|E|G|K|H|T|N|N|                               |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |           Checksum            |         Urgent Pointer        |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                           [Options]                           |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! ```

use std::net::IpAddr;

use super::checksum;
use super::{be16, be32, put16, put32, IpProtocol, Result, WireError};

mod field {
    use std::ops::Range;
    pub const SRC_PORT: Range<usize> = 0..2;
    pub const DST_PORT: Range<usize> = 2..4;
    pub const SEQ_NUM: Range<usize> = 4..8;
    pub const ACK_NUM: Range<usize> = 8..12;
    pub const FLAGS: Range<usize> = 12..14;
    pub const WIN_SIZE: Range<usize> = 14..16;
    pub const CHECKSUM: Range<usize> = 16..18;
    pub const URGENT: Range<usize> = 18..20;
}

/// Length of the header without options.
pub const HEADER_LEN: usize = field::URGENT.end;

/// The control bits (low 8 bits of the flags word).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Flags(pub u8);

impl Flags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const PSH: u8 = 0x08;
    pub const ACK: u8 = 0x10;
    pub const URG: u8 = 0x20;
    pub const ECE: u8 = 0x40;
    pub const CWR: u8 = 0x80;

    pub fn syn(self) -> bool {
        self.0 & Flags::SYN != 0
    }
    pub fn ack(self) -> bool {
        self.0 & Flags::ACK != 0
    }
    pub fn fin(self) -> bool {
        self.0 & Flags::FIN != 0
    }
    pub fn rst(self) -> bool {
        self.0 & Flags::RST != 0
    }
}

/// Option kinds (IANA "TCP Option Kind Numbers").
pub mod kind {
    pub const END: u8 = 0;
    pub const NOP: u8 = 1;
    pub const MSS: u8 = 2;
    pub const WINDOW_SCALE: u8 = 3;
    pub const SACK_PERMITTED: u8 = 4;
    pub const SACK: u8 = 5;
    pub const TIMESTAMPS: u8 = 8;
}

/// Options a header may carry at most before the walk gives up (40 bytes
/// of options hold at most 40 one-byte NOPs).
const MAX_OPTIONS: usize = 40;

/// One TCP option (RFC 9293 §3.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TcpOption<'a> {
    EndOfList,
    NoOp,
    /// Maximum segment size; `at` is the offset of its 16-bit value within
    /// the TCP header, so it can be rewritten in place.
    Mss {
        value: u16,
        at: usize,
    },
    WindowScale(u8),
    SackPermitted,
    Timestamps {
        tsval: u32,
        tsecr: u32,
    },
    Other {
        kind: u8,
        data: &'a [u8],
    },
}

/// Walks options, each length checked against the option space; malformed
/// options end the walk with an error. At most [`MAX_OPTIONS`] items.
pub struct Options<'a> {
    bytes: &'a [u8],
    at: usize,
    seen: usize,
    done: bool,
}

impl<'a> Iterator for Options<'a> {
    type Item = Result<TcpOption<'a>>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done || self.at >= self.bytes.len() {
            return None;
        }
        self.seen += 1;
        if self.seen > MAX_OPTIONS {
            self.done = true;
            return Some(Err(WireError::Malformed));
        }
        let b = self.bytes;
        let start = self.at;
        let k = b[start];
        match k {
            kind::END => {
                self.done = true;
                return Some(Ok(TcpOption::EndOfList));
            }
            kind::NOP => {
                self.at += 1;
                return Some(Ok(TcpOption::NoOp));
            }
            _ => {}
        }
        let Some(&len) = b.get(start + 1) else {
            self.done = true;
            return Some(Err(WireError::Truncated));
        };
        let len = usize::from(len);
        if len < 2 || start + len > b.len() {
            self.done = true;
            return Some(Err(WireError::Malformed));
        }
        self.at += len;
        let data = &b[start + 2..start + len];
        let opt = match (k, len) {
            (kind::MSS, 4) => TcpOption::Mss {
                value: be16(data, 0),
                at: HEADER_LEN + start + 2,
            },
            (kind::WINDOW_SCALE, 3) => TcpOption::WindowScale(data[0]),
            (kind::SACK_PERMITTED, 2) => TcpOption::SackPermitted,
            (kind::TIMESTAMPS, 10) => TcpOption::Timestamps {
                tsval: be32(data, 0),
                tsecr: be32(data, 4),
            },
            (kind::MSS | kind::WINDOW_SCALE | kind::SACK_PERMITTED | kind::TIMESTAMPS, _) => {
                self.done = true;
                return Some(Err(WireError::Malformed));
            }
            _ => TcpOption::Other { kind: k, data },
        };
        Some(Ok(opt))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    pub const fn new_unchecked(buffer: T) -> Packet<T> {
        Packet { buffer }
    }

    pub fn new_checked(buffer: T) -> Result<Packet<T>> {
        let p = Packet::new_unchecked(buffer);
        p.check_len()?;
        Ok(p)
    }

    /// Checks the fixed header is there, Data Offset is at least 5 words
    /// and the buffer holds the options. The buffer is the whole segment
    /// (TCP has no length field: the IP layer delimits it).
    pub fn check_len(&self) -> Result<()> {
        let len = self.buffer.as_ref().len();
        if len < HEADER_LEN {
            return Err(WireError::Truncated);
        }
        let hl = self.header_len();
        if hl < HEADER_LEN {
            return Err(WireError::Malformed);
        }
        if len < hl {
            return Err(WireError::Truncated);
        }
        Ok(())
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    pub fn src_port(&self) -> u16 {
        be16(self.buffer.as_ref(), field::SRC_PORT.start)
    }

    pub fn dst_port(&self) -> u16 {
        be16(self.buffer.as_ref(), field::DST_PORT.start)
    }

    pub fn seq_number(&self) -> u32 {
        be32(self.buffer.as_ref(), field::SEQ_NUM.start)
    }

    pub fn ack_number(&self) -> u32 {
        be32(self.buffer.as_ref(), field::ACK_NUM.start)
    }

    /// Header length in bytes (Data Offset × 4).
    pub fn header_len(&self) -> usize {
        usize::from(self.buffer.as_ref()[field::FLAGS.start] >> 4) * 4
    }

    pub fn flags(&self) -> Flags {
        Flags(self.buffer.as_ref()[field::FLAGS.start + 1])
    }

    pub fn window_len(&self) -> u16 {
        be16(self.buffer.as_ref(), field::WIN_SIZE.start)
    }

    pub fn checksum(&self) -> u16 {
        be16(self.buffer.as_ref(), field::CHECKSUM.start)
    }

    pub fn urgent_at(&self) -> u16 {
        be16(self.buffer.as_ref(), field::URGENT.start)
    }

    /// The option bytes. Needs a checked view.
    pub fn options_bytes(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..self.header_len()]
    }

    /// The options, walked. Needs a checked view.
    pub fn options(&self) -> Options<'_> {
        Options {
            bytes: self.options_bytes(),
            at: 0,
            seen: 0,
            done: false,
        }
    }

    /// The MSS option's value and the offset of that value in the header,
    /// if the options carry one and are well formed up to it.
    pub fn mss(&self) -> Option<(u16, usize)> {
        for o in self.options() {
            match o {
                Ok(TcpOption::Mss { value, at }) => return Some((value, at)),
                Ok(_) => {}
                Err(_) => return None,
            }
        }
        None
    }

    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[self.header_len()..]
    }

    /// Whether the checksum over pseudo-header and segment is right.
    pub fn verify_checksum(&self, src: &IpAddr, dst: &IpAddr) -> bool {
        let b = self.buffer.as_ref();
        let Ok(len) = u32::try_from(b.len()) else {
            return false;
        };
        let ph = checksum::pseudo_header(src, dst, IpProtocol::TCP, len);
        checksum::fold(ph + checksum::sum(b)) == 0xffff
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    pub fn set_src_port(&mut self, v: u16) {
        put16(self.buffer.as_mut(), field::SRC_PORT.start, v);
    }

    pub fn set_dst_port(&mut self, v: u16) {
        put16(self.buffer.as_mut(), field::DST_PORT.start, v);
    }

    pub fn set_seq_number(&mut self, v: u32) {
        put32(self.buffer.as_mut(), field::SEQ_NUM.start, v);
    }

    pub fn set_ack_number(&mut self, v: u32) {
        put32(self.buffer.as_mut(), field::ACK_NUM.start, v);
    }

    /// Sets Data Offset (from a byte length) and the control bits.
    pub fn set_header_len_flags(&mut self, header_len: usize, flags: Flags) {
        let b = self.buffer.as_mut();
        b[field::FLAGS.start] = ((header_len / 4) as u8) << 4;
        b[field::FLAGS.start + 1] = flags.0;
    }

    pub fn set_window_len(&mut self, v: u16) {
        put16(self.buffer.as_mut(), field::WIN_SIZE.start, v);
    }

    pub fn set_checksum(&mut self, v: u16) {
        put16(self.buffer.as_mut(), field::CHECKSUM.start, v);
    }

    pub fn set_urgent_at(&mut self, v: u16) {
        put16(self.buffer.as_mut(), field::URGENT.start, v);
    }

    /// Computes the checksum over pseudo-header and the whole buffer.
    pub fn fill_checksum(&mut self, src: &IpAddr, dst: &IpAddr) {
        self.set_checksum(0);
        let b = self.buffer.as_ref();
        let ph = checksum::pseudo_header(src, dst, IpProtocol::TCP, b.len() as u32);
        let c = !checksum::fold(ph + checksum::sum(b));
        self.set_checksum(c);
    }

    /// Rewrites the 16-bit word at `at` (e.g. the MSS value [`Packet::mss`]
    /// found) and patches the checksum incrementally (RFC 1624). `at` may
    /// be odd (an MSS option after a single NOP): then the two checksum
    /// words the value straddles are updated. Needs a checked view and `at`
    /// inside the options.
    pub fn rewrite_u16(&mut self, at: usize, new: u16) {
        let b = self.buffer.as_mut();
        let mut c = be16(b, field::CHECKSUM.start);
        if at % 2 == 0 {
            let old = be16(b, at);
            put16(b, at, new);
            c = checksum::update16(c, old, new);
        } else {
            // The value straddles two checksum words: [x, hi] [lo, y].
            let (w0, w1) = (be16(b, at - 1), be16(b, at + 1));
            put16(b, at, new);
            let (n0, n1) = (be16(b, at - 1), be16(b, at + 1));
            c = checksum::update16(c, w0, n0);
            c = checksum::update16(c, w1, n1);
        }
        put16(b, field::CHECKSUM.start, c);
    }
}

/// The meaning of a TCP header: the fields and the options Linux sends on
/// a SYN. Other options are not represented.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Repr {
    pub src_port: u16,
    pub dst_port: u16,
    pub seq_number: u32,
    pub ack_number: u32,
    pub flags: Flags,
    pub window_len: u16,
    pub max_seg_size: Option<u16>,
    pub window_scale: Option<u8>,
    pub sack_permitted: bool,
    pub timestamps: Option<(u32, u32)>,
    pub payload_len: usize,
}

impl Repr {
    /// Validates lengths, options and the checksum.
    pub fn parse<T: AsRef<[u8]>>(packet: &Packet<T>, src: &IpAddr, dst: &IpAddr) -> Result<Repr> {
        packet.check_len()?;
        if packet.src_port() == 0 || packet.dst_port() == 0 {
            return Err(WireError::Malformed);
        }
        if !packet.verify_checksum(src, dst) {
            return Err(WireError::Malformed);
        }
        let mut r = Repr {
            src_port: packet.src_port(),
            dst_port: packet.dst_port(),
            seq_number: packet.seq_number(),
            ack_number: packet.ack_number(),
            flags: packet.flags(),
            window_len: packet.window_len(),
            max_seg_size: None,
            window_scale: None,
            sack_permitted: false,
            timestamps: None,
            payload_len: packet.payload().len(),
        };
        for o in packet.options() {
            match o? {
                TcpOption::Mss { value, .. } => r.max_seg_size = Some(value),
                TcpOption::WindowScale(s) => r.window_scale = Some(s),
                TcpOption::SackPermitted => r.sack_permitted = true,
                TcpOption::Timestamps { tsval, tsecr } => r.timestamps = Some((tsval, tsecr)),
                _ => {}
            }
        }
        Ok(r)
    }

    /// Option bytes, laid out as Linux lays them out (`tcp_options_write`):
    /// MSS; SACK-permitted folded into the timestamps' padding; NOP + window
    /// scale.
    fn options_len(&self) -> usize {
        let mut n = 0;
        if self.max_seg_size.is_some() {
            n += 4;
        }
        if self.timestamps.is_some() || self.sack_permitted {
            n += if self.timestamps.is_some() { 12 } else { 4 };
        }
        if self.window_scale.is_some() {
            n += 4;
        }
        n
    }

    pub fn header_len(&self) -> usize {
        HEADER_LEN + self.options_len()
    }

    pub fn buffer_len(&self) -> usize {
        self.header_len() + self.payload_len
    }

    /// Writes header and options, lets `emit_payload` fill the data, then
    /// the checksum. `packet` must be exactly [`Repr::buffer_len`] bytes.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(
        &self,
        packet: &mut Packet<T>,
        src: &IpAddr,
        dst: &IpAddr,
        emit_payload: impl FnOnce(&mut [u8]),
    ) {
        let hl = self.header_len();
        packet.set_src_port(self.src_port);
        packet.set_dst_port(self.dst_port);
        packet.set_seq_number(self.seq_number);
        packet.set_ack_number(self.ack_number);
        packet.set_header_len_flags(hl, self.flags);
        packet.set_window_len(self.window_len);
        packet.set_urgent_at(0);
        {
            let b = packet.buffer.as_mut();
            let mut at = HEADER_LEN;
            if let Some(m) = self.max_seg_size {
                b[at..at + 2].copy_from_slice(&[kind::MSS, 4]);
                put16(b, at + 2, m);
                at += 4;
            }
            match (self.sack_permitted, self.timestamps) {
                (true, Some((v, e))) => {
                    b[at..at + 4].copy_from_slice(&[kind::SACK_PERMITTED, 2, kind::TIMESTAMPS, 10]);
                    put32(b, at + 4, v);
                    put32(b, at + 8, e);
                    at += 12;
                }
                (false, Some((v, e))) => {
                    b[at..at + 4].copy_from_slice(&[kind::NOP, kind::NOP, kind::TIMESTAMPS, 10]);
                    put32(b, at + 4, v);
                    put32(b, at + 8, e);
                    at += 12;
                }
                (true, None) => {
                    b[at..at + 4].copy_from_slice(&[kind::NOP, kind::NOP, kind::SACK_PERMITTED, 2]);
                    at += 4;
                }
                (false, None) => {}
            }
            if let Some(s) = self.window_scale {
                b[at..at + 4].copy_from_slice(&[kind::NOP, kind::WINDOW_SCALE, 3, s]);
            }
            emit_payload(&mut b[hl..]);
        }
        packet.fill_checksum(src, dst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::fixtures::{IPV6_EXT_SYN, TCPV4_PSH, TCPV4_SYN, TCPV4_SYN_ACK, TCPV6_SYN};
    use crate::wire::mutate;

    fn v4() -> (IpAddr, IpAddr) {
        (
            "192.0.2.1".parse().unwrap(),
            "198.51.100.2".parse().unwrap(),
        )
    }

    fn syn_repr() -> Repr {
        Repr {
            src_port: 52396,
            dst_port: 8080,
            seq_number: 701_165_774,
            ack_number: 0,
            flags: Flags(Flags::SYN),
            window_len: 64240,
            max_seg_size: Some(1460),
            window_scale: Some(10),
            sack_permitted: true,
            timestamps: Some((982_285_711, 0)),
            payload_len: 0,
        }
    }

    #[test]
    fn deconstruct() {
        let p = Packet::new_checked(&TCPV4_SYN[20..]).unwrap();
        assert_eq!(p.src_port(), 52396);
        assert_eq!(p.dst_port(), 8080);
        assert_eq!(p.seq_number(), 701_165_774);
        assert_eq!(p.ack_number(), 0);
        assert_eq!(p.header_len(), 40);
        assert!(p.flags().syn() && !p.flags().ack());
        assert_eq!(p.window_len(), 64240);
        assert_eq!(p.checksum(), 0xa1e3);
        let (s, d) = v4();
        assert!(p.verify_checksum(&s, &d));
        let opts: Vec<_> = p.options().map(|o| o.unwrap()).collect();
        assert_eq!(
            opts,
            [
                TcpOption::Mss {
                    value: 1460,
                    at: 22
                },
                TcpOption::SackPermitted,
                TcpOption::Timestamps {
                    tsval: 982_285_711,
                    tsecr: 0
                },
                TcpOption::NoOp,
                TcpOption::WindowScale(10),
            ]
        );
        assert_eq!(p.mss(), Some((1460, 22)));
        let p = Packet::new_checked(&TCPV4_SYN_ACK[20..]).unwrap();
        assert!(p.flags().syn() && p.flags().ack());
        assert_eq!(p.mss().unwrap().0, 1240);
        let p = Packet::new_checked(&TCPV4_PSH[20..]).unwrap();
        assert_eq!(p.payload(), b"hi\n");
        assert_eq!(p.mss(), None);
        let p = Packet::new_checked(&TCPV6_SYN[40..]).unwrap();
        assert_eq!(p.mss().unwrap().0, 1440);
        let p = Packet::new_checked(&IPV6_EXT_SYN[56..]).unwrap();
        assert_eq!(p.mss(), Some((1460, 22)));
    }

    #[test]
    fn construct() {
        let mut buf = [0u8; 40];
        buf[20..].copy_from_slice(&TCPV4_SYN[40..]);
        let mut p = Packet::new_unchecked(&mut buf[..]);
        p.set_src_port(52396);
        p.set_dst_port(8080);
        p.set_seq_number(701_165_774);
        p.set_ack_number(0);
        p.set_header_len_flags(40, Flags(Flags::SYN));
        p.set_window_len(64240);
        p.set_urgent_at(0);
        let (s, d) = v4();
        p.fill_checksum(&s, &d);
        assert_eq!(buf, TCPV4_SYN[20..]);
    }

    #[test]
    fn check_len() {
        assert_eq!(
            Packet::new_checked(&TCPV4_SYN[20..39]).unwrap_err(),
            WireError::Truncated
        );
        assert_eq!(
            Packet::new_checked(&TCPV4_SYN[20..59]).unwrap_err(),
            WireError::Truncated,
            "options cut"
        );
        let mut bad = TCPV4_SYN;
        bad[32] = 0x40;
        assert_eq!(
            Packet::new_checked(&bad[20..]).unwrap_err(),
            WireError::Malformed
        );
    }

    #[test]
    fn options_checked() {
        let mut bad = TCPV4_SYN;
        bad[41] = 40; // MSS option claims 40 bytes
        let p = Packet::new_checked(&bad[20..]).unwrap();
        assert_eq!(p.options().next(), Some(Err(WireError::Malformed)));
        assert_eq!(p.mss(), None);
        bad[41] = 3; // wrong MSS length
        let p = Packet::new_checked(&bad[20..]).unwrap();
        assert_eq!(p.options().next(), Some(Err(WireError::Malformed)));
        // End of list stops the walk.
        let mut eol = TCPV4_SYN;
        eol[40] = 0;
        let p = Packet::new_checked(&eol[20..]).unwrap();
        assert_eq!(p.options().count(), 1);
    }

    #[test]
    fn parse() {
        let (s, d) = v4();
        let p = Packet::new_checked(&TCPV4_SYN[20..]).unwrap();
        assert_eq!(Repr::parse(&p, &s, &d).unwrap(), syn_repr());
        let mut bad = TCPV4_SYN;
        bad[30] ^= 1;
        let p = Packet::new_checked(&bad[20..]).unwrap();
        assert_eq!(Repr::parse(&p, &s, &d).unwrap_err(), WireError::Malformed);
    }

    #[test]
    fn emit() {
        let (s, d) = v4();
        let mut buf = [0u8; 40];
        syn_repr().emit(&mut Packet::new_unchecked(&mut buf[..]), &s, &d, |_| {});
        assert_eq!(buf, TCPV4_SYN[20..], "Linux's option layout, byte for byte");
        // scapy's MSS, NOP, WS layout is the same as ours without SACK/TS.
        let (s6, d6): (IpAddr, IpAddr) = (
            "2001:db8:1::1".parse().unwrap(),
            "2001:db8:2::2".parse().unwrap(),
        );
        let p = Packet::new_checked(&IPV6_EXT_SYN[56..]).unwrap();
        let r = Repr::parse(&p, &s6, &d6).unwrap();
        let mut buf = [0u8; 28];
        r.emit(&mut Packet::new_unchecked(&mut buf[..]), &s6, &d6, |_| {});
        assert_eq!(buf, IPV6_EXT_SYN[56..]);
    }

    #[test]
    fn buffer_len() {
        assert_eq!(syn_repr().buffer_len(), 40);
        let r = Repr {
            max_seg_size: None,
            window_scale: None,
            sack_permitted: false,
            timestamps: None,
            payload_len: 3,
            ..syn_repr()
        };
        assert_eq!(r.buffer_len(), 23);
    }

    #[test]
    fn rewrite_keeps_checksum() {
        let (s, d) = v4();
        let mut seg = TCPV4_SYN[20..].to_vec();
        let mut p = Packet::new_checked(&mut seg[..]).unwrap();
        let (_, at) = p.mss().unwrap();
        p.rewrite_u16(at, 1360);
        assert!(p.verify_checksum(&s, &d));
        assert_eq!(p.mss().unwrap().0, 1360);
        // An MSS option at an odd offset (after one NOP).
        let mut seg = [0u8; 28];
        let mut p = Packet::new_unchecked(&mut seg[..]);
        p.set_src_port(1);
        p.set_dst_port(2);
        p.set_header_len_flags(28, Flags(Flags::SYN));
        seg[20..28].copy_from_slice(&[1, 2, 4, 0x05, 0xb4, 1, 1, 0]);
        let mut p = Packet::new_checked(&mut seg[..]).unwrap();
        p.fill_checksum(&s, &d);
        let (v, at) = p.mss().unwrap();
        assert_eq!((v, at % 2), (1460, 1));
        p.rewrite_u16(at, 1300);
        assert!(p.verify_checksum(&s, &d));
        assert_eq!(p.mss().unwrap().0, 1300);
    }

    #[test]
    fn garbage_never_panics() {
        let (s, d) = v4();
        for seed in [&TCPV4_SYN[20..], &IPV6_EXT_SYN[56..]] {
            mutate::variants(seed, 5000, |b| {
                if let Ok(p) = Packet::new_checked(b) {
                    let _ = (p.payload(), p.mss(), p.options().count());
                    let _ = Repr::parse(&p, &s, &d);
                }
            });
        }
    }
}
