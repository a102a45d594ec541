//! IVs that no two nodes can share (DESIGN.md, "many senders on one SA").
//!
//! Every node of the fleet may encrypt with the same outbound SA, hence the
//! same key. AES-GCM and ChaCha20-Poly1305 lose all security if one
//! (key, nonce) pair is used twice (RFC 4106 §3.1, RFC 7634 §2: the IV
//! "MUST be unique for each invocation for a particular SA"). Deriving the
//! IV from the sequence number, as Linux does, would repeat across nodes.
//! So the 64-bit IV is split like our SPIs (`anyhub_ike::spi`):
//!
//! ```text
//! AEAD IV (64 bits):  | node index (12) | per-node counter (52)        |
//! ```
//!
//! **Why two nodes never collide.** Nodes have distinct indices in
//! 1..=4095 (the fleet's configuration guarantees it; index 0 is invalid).
//! The index occupies bits 63..52 of every IV a node emits and the counter
//! is checked to stay below 2^52, so it never carries into those bits. Two
//! IVs from different nodes therefore differ in their top 12 bits: equal
//! IVs imply equal node indices. **Why one node never repeats.** The counter
//! comes from one atomic per outbound SA that only ever increases
//! (`fetch_add`, `fetch_max`) and is refused at 2^52, so each value is handed
//! out at most once. The salt is part of the key (RFC 4106 §4) and the same
//! on every node; it does not change the argument.
//!
//! AES-CBC needs an IV that is unpredictable, not merely unique (RFC 3602
//! §3). We take NIST SP 800-38A Appendix C's first method: encrypt a nonce
//! with the data key, IV = AES_K(node index ‖ counter ‖ 0^64). AES is a
//! permutation, so distinct nonces give distinct IVs, and without K the IVs
//! are unpredictable. No random number generator is touched per packet.

use anyhub_crypto::aead::IV_LEN;
use anyhub_crypto::cipher::{AesCbc, BLOCK_LEN};

/// Bits of the node index in the IV; the same 12 bits as in our SPIs.
pub const NODE_BITS: u32 = 12;
/// Bits of the per-node counter.
pub const COUNTER_BITS: u32 = 64 - NODE_BITS;
/// Counter values are `0..COUNTER_LIMIT`.
pub const COUNTER_LIMIT: u64 = 1 << COUNTER_BITS;
/// The highest node index (as `anyhub_ike::MAX_NODE_INDEX`).
pub const MAX_NODE: u16 = (1 << NODE_BITS) - 1;

/// The 64-bit IV value of `counter` on `node`: node ‖ counter.
///
/// Callers guarantee `1 <= node <= MAX_NODE` and `counter < COUNTER_LIMIT`
/// (the outbound SA refuses to encrypt past it); both are checked in debug
/// builds.
#[inline]
pub fn iv_value(node: u16, counter: u64) -> u64 {
    debug_assert!((1..=MAX_NODE).contains(&node));
    debug_assert!(counter < COUNTER_LIMIT);
    u64::from(node) << COUNTER_BITS | counter
}

/// The explicit IV of an AEAD packet (RFC 4106 §3.1, RFC 7634 §2).
#[inline]
pub fn aead_iv(node: u16, counter: u64) -> [u8; IV_LEN] {
    iv_value(node, counter).to_be_bytes()
}

/// The IV of an AES-CBC packet: AES_K(node ‖ counter ‖ 0^64).
#[inline]
pub fn cbc_iv(cbc: &AesCbc, node: u16, counter: u64) -> [u8; BLOCK_LEN] {
    let mut block = [0u8; BLOCK_LEN];
    block[..8].copy_from_slice(&iv_value(node, counter).to_be_bytes());
    // One block of CBC under a zero IV is the raw block cipher.
    cbc.encrypt_in_place(&[0; BLOCK_LEN], &mut block)
        .expect("one whole block");
    block
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhub_crypto::{Rng, SeededRng};
    use std::collections::HashSet;

    fn random(rng: &mut SeededRng) -> u64 {
        let mut b = [0u8; 8];
        rng.fill(&mut b);
        u64::from_le_bytes(b)
    }

    /// The node index can be read back from any IV, so IVs of distinct
    /// nodes differ: checked for every node index and adversarial counter
    /// values (0, the limit's neighbourhood, powers of two, random).
    #[test]
    fn node_is_recoverable_from_every_iv() {
        let mut rng = SeededRng::new(1);
        let mut counters = vec![0, 1, COUNTER_LIMIT - 1, COUNTER_LIMIT - 2];
        counters.extend((0..COUNTER_BITS).map(|b| 1u64 << b));
        counters.extend((0..32).map(|_| random(&mut rng) % COUNTER_LIMIT));
        for node in 1..=MAX_NODE {
            for &c in &counters {
                let v = u64::from_be_bytes(aead_iv(node, c));
                assert_eq!((v >> COUNTER_BITS) as u16, node);
                assert_eq!(v & (COUNTER_LIMIT - 1), c);
            }
        }
    }

    /// Two nodes never emit the same IV: random node pairs with the same and
    /// with random counters, plus every node pair on a few shared counters.
    #[test]
    fn two_nodes_never_share_an_iv() {
        let mut rng = SeededRng::new(2);
        for _ in 0..200_000 {
            let a = (random(&mut rng) % u64::from(MAX_NODE)) as u16 + 1;
            let b = (random(&mut rng) % u64::from(MAX_NODE)) as u16 + 1;
            if a == b {
                continue;
            }
            let ca = random(&mut rng) % COUNTER_LIMIT;
            let cb = if random(&mut rng) % 2 == 0 {
                ca
            } else {
                random(&mut rng) % COUNTER_LIMIT
            };
            assert_ne!(aead_iv(a, ca), aead_iv(b, cb), "{a}/{ca} vs {b}/{cb}");
        }
        // All 4095 nodes, each at the same counters: 4095 × 3 distinct IVs.
        let mut all = HashSet::new();
        for node in 1..=MAX_NODE {
            for c in [0, 1, COUNTER_LIMIT - 1] {
                assert!(all.insert(aead_iv(node, c)), "node {node} counter {c}");
            }
        }
    }

    /// CBC IVs: distinct nonces under one key give distinct IVs (AES is a
    /// permutation), across nodes and counters.
    #[test]
    fn cbc_ivs_are_distinct_and_not_the_nonce() {
        let cbc = AesCbc::new(&[0x42; 32]).unwrap();
        let mut seen = HashSet::new();
        for node in [1, 2, 3, 100, MAX_NODE] {
            for c in 0..2000 {
                let iv = cbc_iv(&cbc, node, c);
                assert!(seen.insert(iv), "node {node} counter {c}");
                assert_ne!(&iv[..8], &iv_value(node, c).to_be_bytes());
            }
        }
    }
}
