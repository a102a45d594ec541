//! Randomness as an explicit dependency.
//!
//! Protocol cores take a `&mut dyn Rng` instead of reaching for a global
//! generator, so that tests and fuzzers can replay a run exactly with
//! [`SeededRng`] while production passes [`SystemRng`].

use std::fmt;

use crate::hmac::{Hash, HmacKey};

/// A source of random bytes.
pub trait Rng: Send {
    /// Fills `buf` entirely with random bytes.
    fn fill(&mut self, buf: &mut [u8]);
}

/// BoringSSL's CSPRNG (`RAND_bytes`): the generator for production.
///
/// # Panics
///
/// `fill` panics only if `RAND_bytes` reports failure, which BoringSSL
/// never does: it aborts the process itself when the OS entropy source
/// fails, rather than hand out weak bytes.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemRng;

impl Rng for SystemRng {
    fn fill(&mut self, buf: &mut [u8]) {
        boring::rand::rand_bytes(buf).expect("BoringSSL RAND_bytes failed");
    }
}

/// A deterministic generator for tests and fuzzing. **Not for production:**
/// anyone who knows (or guesses) the 64-bit seed can reproduce every key
/// and nonce it produced.
///
/// The stream is HMAC-SHA-256(seed, counter) for counter = 0, 1, 2, ...
/// (both as 8-byte big-endian), concatenated, so `fill(a); fill(b)` yields
/// the same bytes as one `fill` of `a.len() + b.len()`.
#[derive(Clone)]
pub struct SeededRng {
    key: HmacKey,
    counter: u64,
    block: [u8; BLOCK_LEN],
    /// Bytes of `block` already handed out.
    used: usize,
}

const BLOCK_LEN: usize = 32;

impl SeededRng {
    /// A generator whose whole output is determined by `seed`.
    pub fn new(seed: u64) -> Self {
        SeededRng {
            key: HmacKey::new(Hash::Sha256, &seed.to_be_bytes()),
            counter: 0,
            block: [0; BLOCK_LEN],
            used: BLOCK_LEN,
        }
    }
}

impl Rng for SeededRng {
    fn fill(&mut self, mut buf: &mut [u8]) {
        while !buf.is_empty() {
            if self.used == BLOCK_LEN {
                self.key
                    .mac_into(&[&self.counter.to_be_bytes()], &mut self.block);
                self.counter = self.counter.wrapping_add(1);
                self.used = 0;
            }
            let n = buf.len().min(BLOCK_LEN - self.used);
            buf[..n].copy_from_slice(&self.block[self.used..self.used + n]);
            self.used += n;
            buf = &mut buf[n..];
        }
    }
}

impl fmt::Debug for SeededRng {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SeededRng")
            .field("counter", &self.counter)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn draw(rng: &mut dyn Rng, n: usize) -> Vec<u8> {
        let mut v = vec![0; n];
        rng.fill(&mut v);
        v
    }

    #[test]
    fn seeded_is_deterministic() {
        let a = draw(&mut SeededRng::new(42), 100);
        let b = draw(&mut SeededRng::new(42), 100);
        assert_eq!(a, b);
        assert_ne!(a, draw(&mut SeededRng::new(43), 100));
        assert_ne!(a, vec![0; 100]);
    }

    #[test]
    fn seeded_stream_is_independent_of_chunking() {
        let whole = draw(&mut SeededRng::new(7), 100);
        let mut rng = SeededRng::new(7);
        let mut pieces = Vec::new();
        for n in [1, 31, 0, 32, 5, 31] {
            pieces.extend(draw(&mut rng, n));
        }
        assert_eq!(pieces, whole);
    }

    #[test]
    fn seeded_first_block_is_hmac_of_counter_zero() {
        let want = boring::hash::hmac_sha256(&9u64.to_be_bytes(), &0u64.to_be_bytes()).unwrap();
        assert_eq!(draw(&mut SeededRng::new(9), 32), want);
    }

    #[test]
    fn system_rng_fills() {
        let mut rng = SystemRng;
        let a = draw(&mut rng, 32);
        let b = draw(&mut rng, 32);
        assert_ne!(a, b);
        rng.fill(&mut []);
    }
}
