//! The Internet checksum (RFC 1071) and its incremental update (RFC 1624).
//!
//! [`sum`] adds 16-bit big-endian words in ones' complement; a header's
//! checksum field holds `!fold(sum(header))`, and a received header is
//! valid when `fold(sum(header))` is `0xffff` (checksum included).

use std::net::IpAddr;

use super::IpProtocol;

/// Ones' complement sum of `data` as big-endian 16-bit words (an odd last
/// byte is padded with zero, RFC 1071 §4.1), not folded: add more with
/// [`combine`], finish with [`fold`].
pub fn sum(data: &[u8]) -> u64 {
    let mut acc: u64 = 0;
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        acc += u64::from(u32::from_be_bytes([c[0], c[1], c[2], c[3]]));
    }
    let rest = chunks.remainder();
    let mut i = 0;
    while i + 1 < rest.len() {
        acc += u64::from(u16::from_be_bytes([rest[i], rest[i + 1]]));
        i += 2;
    }
    if i < rest.len() {
        acc += u64::from(rest[i]) << 8;
    }
    acc
}

/// Folds a wide sum to 16 bits with end-around carry (RFC 1071 §4.1).
pub fn fold(mut acc: u64) -> u16 {
    while acc >> 16 != 0 {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

/// The sum of several partial sums.
pub fn combine(parts: &[u64]) -> u64 {
    parts.iter().sum()
}

/// The checksum field for `data` (the field itself zero inside `data`).
pub fn checksum(data: &[u8]) -> u16 {
    !fold(sum(data))
}

/// Sum of the pseudo-header TCP, UDP and ICMPv6 checksums cover: RFC 768 /
/// RFC 9293 §3.1 for IPv4 (src, dst, zero, protocol, length) and RFC 8200
/// §8.1 for IPv6 (src, dst, 32-bit length, 24 zero bits, next header).
/// Mixed address families cannot occur in one packet; they sum the bytes
/// as given.
pub fn pseudo_header(src: &IpAddr, dst: &IpAddr, proto: IpProtocol, len: u32) -> u64 {
    let addrs = |a: &IpAddr| match a {
        IpAddr::V4(a) => sum(&a.octets()),
        IpAddr::V6(a) => sum(&a.octets()),
    };
    addrs(src) + addrs(dst) + u64::from(proto.0) + u64::from(len >> 16) + u64::from(len & 0xffff)
}

/// Incremental update of a checksum field `hc` when one 16-bit word of the
/// covered data changes from `old` to `new`, RFC 1624 §3 eqn. 3:
///
/// ```text
/// HC' = ~(~HC + ~m + m')
/// ```
///
/// (Eqn. 3 rather than RFC 1141's eqn. 2, which can yield 0x0000 for a
/// header whose correct checksum is 0xffff, RFC 1624 §4.)
pub fn update16(hc: u16, old: u16, new: u16) -> u16 {
    let acc = u64::from(!hc) + u64::from(!old) + u64::from(new);
    !fold(acc)
}

/// [`update16`] for a 32-bit field (two words).
pub fn update32(hc: u16, old: u32, new: u32) -> u16 {
    let hc = update16(hc, (old >> 16) as u16, (new >> 16) as u16);
    update16(hc, old as u16, new as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 1071 §3's worked example: words 0001 f203 f4f5 f6f7 sum to ddf2.
    #[test]
    fn rfc1071_example() {
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(fold(sum(&data)), 0xddf2);
        assert_eq!(checksum(&data), !0xddf2);
        // Odd length: the last byte is the high half of a word.
        assert_eq!(fold(sum(&[0x01])), 0x0100);
        assert_eq!(fold(sum(&[0x00, 0x01, 0x02])), 0x0201);
    }

    #[test]
    fn incremental_equals_recompute() {
        let mut rng = super::super::mutate::Rng::new(7);
        for _ in 0..2000 {
            let mut data: Vec<u8> = (0..20).map(|_| rng.next() as u8).collect();
            data[10] = 0;
            data[11] = 0;
            let c = checksum(&data);
            let at = (rng.below(5) * 2) & !1;
            let at = if at == 10 { 12 } else { at };
            let old = u16::from_be_bytes([data[at], data[at + 1]]);
            let new = rng.next() as u16;
            data[at..at + 2].copy_from_slice(&new.to_be_bytes());
            let full = checksum(&data);
            let inc = update16(c, old, new);
            // Both encodings of zero are valid ones' complement results; the
            // header verifies either way. RFC 1624 eqn. 3 never turns a
            // non-zero sum into 0x0000 unless recomputation would give 0xffff.
            assert!(
                inc == full || (inc == 0xffff && full == 0) || (inc == 0 && full == 0xffff),
                "{inc:04x} vs {full:04x}"
            );
            data[10..12].copy_from_slice(&inc.to_be_bytes());
            assert_eq!(fold(sum(&data)), 0xffff);
        }
    }

    #[test]
    fn update32_matches() {
        let mut data = [0u8; 12];
        data[..4].copy_from_slice(&0xdead_beefu32.to_be_bytes());
        let c = checksum(&data);
        data[..4].copy_from_slice(&0x0102_0304u32.to_be_bytes());
        assert_eq!(update32(c, 0xdead_beef, 0x0102_0304), checksum(&data));
    }
}
