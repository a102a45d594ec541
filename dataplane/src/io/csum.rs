//! The Internet checksum (RFC 1071) and the TCP/UDP pseudo-headers
//! (RFC 9293 §3.1, RFC 768, RFC 8200 §8.1).
//!
//! [`sum`] adds 64-bit words in native order with end-around carry and
//! folds at the end: the one's-complement sum does not depend on byte
//! order or word width (RFC 1071 §2(A), (B)), only the final fold and swap
//! do. Pieces summed separately must have even length, except the last.

/// The one's-complement sum of `data` folded to 16 bits, in network
/// (big-endian) value order, not complemented.
pub fn sum(data: &[u8]) -> u16 {
    // Four independent 64-bit one's-complement accumulators (carries
    // counted apart and added back: 2^64 ≡ 1 mod 2^16 - 1), 32 bytes per
    // step, so the adds pipeline.
    let mut acc = [0u64; 4];
    let mut carries = 0u64;
    let mut blocks = data.chunks_exact(32);
    for b in &mut blocks {
        for (i, a) in acc.iter_mut().enumerate() {
            let w = u64::from_ne_bytes(b[i * 8..i * 8 + 8].try_into().expect("8 bytes"));
            let (s, c) = a.overflowing_add(w);
            *a = s;
            carries += c as u64;
        }
    }
    let mut total: u128 = acc.iter().map(|&a| a as u128).sum::<u128>() + carries as u128;
    let rest = blocks.remainder();
    let mut words = rest.chunks_exact(8);
    for w in &mut words {
        total += u64::from_ne_bytes(w.try_into().expect("8 bytes")) as u128;
    }
    let tail = words.remainder();
    let mut last = [0u8; 8];
    last[..tail.len()].copy_from_slice(tail);
    total += u64::from_ne_bytes(last) as u128;
    let folded = fold(
        (total as u64 & 0xffff_ffff) + ((total >> 32) as u64 & 0xffff_ffff) + (total >> 64) as u64,
    );
    u16::from_be(folded)
}

/// Folds a wide one's-complement accumulator to 16 bits.
pub fn fold(mut acc: u64) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

/// One's-complement addition of folded sums.
pub fn add(a: u16, b: u16) -> u16 {
    fold(a as u64 + b as u64)
}

/// The pseudo-header sum for an L4 segment of `len` bytes with protocol
/// `proto` between `src` and `dst` (4 or 16 bytes each: IPv4 or IPv6).
pub fn pseudo(src: &[u8], dst: &[u8], proto: u8, len: usize) -> u16 {
    let mut acc: u64 = proto as u64 + (len as u64 >> 16) + (len as u64 & 0xffff);
    for a in [src, dst] {
        for w in a.chunks_exact(2) {
            acc += u16::from_be_bytes([w[0], w[1]]) as u64;
        }
    }
    fold(acc)
}

/// The IPv4 header checksum of `hdr` with its checksum field (bytes
/// 10..12) treated as zero (RFC 791 §3.1).
pub fn ipv4_header(hdr: &[u8]) -> u16 {
    let mut acc: u64 = 0;
    for (i, w) in hdr.chunks_exact(2).enumerate() {
        if i != 5 {
            acc += u16::from_be_bytes([w[0], w[1]]) as u64;
        }
    }
    !fold(acc)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc1071_example() {
        // RFC 1071 §3: 00 01 f2 03 f4 f5 f6 f7 sums to 0xddf2.
        assert_eq!(
            sum(&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]),
            0xddf2
        );
        // Odd length: a trailing byte counts as the high byte of a word.
        assert_eq!(sum(&[0x12]), 0x1200);
        assert_eq!(
            sum(&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7, 0x01]),
            0xdef2
        );
    }

    #[test]
    fn ipv4_header_checksum() {
        // The classic worked example (UDP, 192.168.0.1 -> 192.168.0.199)
        // with its checksum 0xb861 in place.
        let h = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0xb8, 0x61, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(ipv4_header(&h), 0xb861);
        assert_eq!(!sum(&h), 0);
    }

    #[test]
    fn long_buffers_match_the_naive_sum() {
        let data: Vec<u8> = (0..3001u32).map(|i| (i * 7 + 3) as u8).collect();
        for len in [0, 1, 2, 3, 7, 8, 9, 31, 32, 33, 63, 64, 65, 1500, 3001] {
            let d = &data[..len];
            let mut naive: u64 = 0;
            for c in d.chunks(2) {
                let w = if c.len() == 2 {
                    u16::from_be_bytes([c[0], c[1]])
                } else {
                    u16::from_be_bytes([c[0], 0])
                };
                naive += w as u64;
            }
            assert_eq!(sum(d), fold(naive), "len {len}");
            let ones = vec![0xffu8; len];
            let mut naive: u64 = 0;
            for c in ones.chunks(2) {
                naive += if c.len() == 2 { 0xffff } else { 0xff00 };
            }
            assert_eq!(sum(&ones), fold(naive), "all ones, len {len}");
        }
    }
}
