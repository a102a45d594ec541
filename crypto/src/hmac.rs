//! HMAC (RFC 2104) with the key's inner and outer pad states computed once.
//!
//! The IKE PRFs, the truncated integrity transforms and [`crate::SeededRng`]
//! all run on this. A keyed [`HmacKey`] holds the two hash states reached
//! after absorbing `K ^ ipad` and `K ^ opad`; each MAC clones them (plain
//! stack copies of BoringSSL's SHA contexts), so computing a MAC takes
//! `&self`, never allocates, and skips two compression-function calls per
//! message compared with re-keying. The states are key-equivalent and are
//! wiped on drop.
//!
//! ```text
//! HMAC(K, m) = H((K' ^ opad) | H((K' ^ ipad) | m))
//! K' = H(K) if len(K) > B else K, right-padded with zeros to B bytes
//! ```

use boring::sha::{Sha1, Sha256, Sha384, Sha512};
use zeroize::{Zeroize, Zeroizing};

use crate::sys;

/// Largest hash block size (SHA-384/512).
const MAX_BLOCK_LEN: usize = 128;
/// Largest hash output (SHA-512).
pub(crate) const MAX_OUTPUT_LEN: usize = 64;

/// The hash functions HMAC runs over here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Hash {
    Sha1,
    Sha256,
    Sha384,
    Sha512,
}

impl Hash {
    pub(crate) const fn output_len(self) -> usize {
        match self {
            Hash::Sha1 => 20,
            Hash::Sha256 => 32,
            Hash::Sha384 => 48,
            Hash::Sha512 => 64,
        }
    }
}

/// A BoringSSL incremental hasher whose state is flat data.
pub(crate) trait Digest: Clone + sys::Flat {
    const BLOCK_LEN: usize;
    const OUTPUT_LEN: usize;
    type Output: AsRef<[u8]> + Zeroize;
    fn start() -> Self;
    fn absorb(&mut self, data: &[u8]);
    fn result(self) -> Self::Output;
}

macro_rules! digest {
    ($ty:ty, $block:expr, $out:expr) => {
        impl Digest for $ty {
            const BLOCK_LEN: usize = $block;
            const OUTPUT_LEN: usize = $out;
            type Output = [u8; $out];
            fn start() -> Self {
                <$ty>::new()
            }
            fn absorb(&mut self, data: &[u8]) {
                self.update(data)
            }
            fn result(self) -> Self::Output {
                self.finish()
            }
        }
    };
}

digest!(Sha1, 64, 20);
digest!(Sha256, 64, 32);
digest!(Sha384, 128, 48);
digest!(Sha512, 128, 64);

/// Pad states for one key and one hash.
#[derive(Clone)]
pub(crate) struct Pads<D: Digest> {
    inner: D,
    outer: D,
}

impl<D: Digest> Pads<D> {
    fn new(key: &[u8]) -> Self {
        debug_assert!(D::BLOCK_LEN <= MAX_BLOCK_LEN);
        let mut block = Zeroizing::new([0u8; MAX_BLOCK_LEN]);
        let block = &mut block[..D::BLOCK_LEN];
        if key.len() > D::BLOCK_LEN {
            let mut h = D::start();
            h.absorb(key);
            let mut digest = h.result();
            block[..digest.as_ref().len()].copy_from_slice(digest.as_ref());
            digest.zeroize();
        } else {
            block[..key.len()].copy_from_slice(key);
        }

        // K' ^ ipad
        block.iter_mut().for_each(|b| *b ^= 0x36);
        let mut inner = D::start();
        inner.absorb(block);
        // K' ^ opad = (K' ^ ipad) ^ (ipad ^ opad)
        block.iter_mut().for_each(|b| *b ^= 0x36 ^ 0x5c);
        let mut outer = D::start();
        outer.absorb(block);
        Pads { inner, outer }
    }

    /// Writes the first `out.len()` bytes of HMAC(K, parts[0] | parts[1] | ...).
    fn mac_into(&self, parts: &[&[u8]], out: &mut [u8]) {
        let mut h = self.inner.clone();
        for part in parts {
            h.absorb(part);
        }
        let mut inner_hash = h.result();
        let mut h = self.outer.clone();
        h.absorb(inner_hash.as_ref());
        inner_hash.zeroize();
        let mut full = h.result();
        out.copy_from_slice(&full.as_ref()[..out.len()]);
        full.zeroize();
    }

    /// Fills `out` with prf+ (K, S) where S = seed[0] | seed[1] | ...
    /// (RFC 7296 §2.13).
    fn prf_plus_into(&self, seed: &[&[u8]], out: &mut [u8]) {
        let olen = D::OUTPUT_LEN;
        let mut t = Zeroizing::new([0u8; MAX_OUTPUT_LEN]);
        let mut t_len = 0;
        for (i, chunk) in out.chunks_mut(olen).enumerate() {
            let n = u8::try_from(i + 1).expect("prf+ length checked by the caller");
            // T1 = prf (K, S | 0x01)
            // Tn = prf (K, Tn-1 | S | n)
            let mut h = self.inner.clone();
            h.absorb(&t[..t_len]);
            for part in seed {
                h.absorb(part);
            }
            h.absorb(&[n]);
            let mut inner_hash = h.result();
            let mut h = self.outer.clone();
            h.absorb(inner_hash.as_ref());
            inner_hash.zeroize();
            let mut block = h.result();
            t[..olen].copy_from_slice(block.as_ref());
            block.zeroize();
            t_len = olen;
            chunk.copy_from_slice(&t[..chunk.len()]);
        }
    }
}

impl<D: Digest> Drop for Pads<D> {
    fn drop(&mut self) {
        sys::wipe(&mut self.inner);
        sys::wipe(&mut self.outer);
    }
}

/// HMAC keyed once, for one of the supported hashes.
#[derive(Clone)]
pub(crate) enum HmacKey {
    Sha1(Pads<Sha1>),
    Sha256(Pads<Sha256>),
    Sha384(Pads<Sha384>),
    Sha512(Pads<Sha512>),
}

macro_rules! each {
    ($key:expr, $pads:ident => $body:expr) => {
        match $key {
            HmacKey::Sha1($pads) => $body,
            HmacKey::Sha256($pads) => $body,
            HmacKey::Sha384($pads) => $body,
            HmacKey::Sha512($pads) => $body,
        }
    };
}

impl HmacKey {
    pub(crate) fn new(hash: Hash, key: &[u8]) -> Self {
        match hash {
            Hash::Sha1 => HmacKey::Sha1(Pads::new(key)),
            Hash::Sha256 => HmacKey::Sha256(Pads::new(key)),
            Hash::Sha384 => HmacKey::Sha384(Pads::new(key)),
            Hash::Sha512 => HmacKey::Sha512(Pads::new(key)),
        }
    }

    pub(crate) fn hash(&self) -> Hash {
        match self {
            HmacKey::Sha1(_) => Hash::Sha1,
            HmacKey::Sha256(_) => Hash::Sha256,
            HmacKey::Sha384(_) => Hash::Sha384,
            HmacKey::Sha512(_) => Hash::Sha512,
        }
    }

    /// Writes the first `out.len()` bytes of the MAC over the concatenation
    /// of `parts`.
    ///
    /// # Panics
    ///
    /// If `out` is longer than the hash output.
    pub(crate) fn mac_into(&self, parts: &[&[u8]], out: &mut [u8]) {
        assert!(
            out.len() <= self.hash().output_len(),
            "HMAC output too long"
        );
        each!(self, pads => pads.mac_into(parts, out))
    }

    /// Fills `out` with prf+ over the concatenation of `seed`.
    ///
    /// # Panics
    ///
    /// If `out` needs more than 255 blocks.
    pub(crate) fn prf_plus_into(&self, seed: &[&[u8]], out: &mut [u8]) {
        assert!(
            out.len() <= 255 * self.hash().output_len(),
            "prf+ is limited to 255 blocks (RFC 7296 §2.13)"
        );
        each!(self, pads => pads.prf_plus_into(seed, out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use boring::hash::MessageDigest;

    /// Cross-check against BoringSSL's own HMAC for keys around every block
    /// boundary and multi-part messages.
    #[test]
    fn matches_boringssl_hmac() {
        let cases = [
            (Hash::Sha1, MessageDigest::sha1()),
            (Hash::Sha256, MessageDigest::sha256()),
            (Hash::Sha384, MessageDigest::sha384()),
            (Hash::Sha512, MessageDigest::sha512()),
        ];
        let material: Vec<u8> = (0..300u32).map(|i| (i * 7 + 3) as u8).collect();
        for (hash, md) in cases {
            for key_len in [0, 1, 20, 63, 64, 65, 127, 128, 129, 200] {
                let key = &material[..key_len];
                for msg_len in [0, 1, 55, 56, 64, 111, 112, 128, 250] {
                    let msg = &material[key_len % 7..key_len % 7 + msg_len];
                    let mut reference = boring::hmac::Hmac::init(key, &md).unwrap();
                    reference.update(msg).unwrap();
                    let want = reference.finalize().unwrap();

                    let k = HmacKey::new(hash, key);
                    let mut got = [0u8; MAX_OUTPUT_LEN];
                    let got = &mut got[..hash.output_len()];
                    let (a, b) = msg.split_at(msg_len / 3);
                    k.mac_into(&[a, &[], b], got);
                    assert_eq!(got, &want[..], "{hash:?} key {key_len} msg {msg_len}");
                }
            }
        }
    }

    #[test]
    fn clones_are_independent_of_drops() {
        let k = HmacKey::new(Hash::Sha256, b"key");
        let c = k.clone();
        drop(k);
        let mut out = [0u8; 32];
        c.mac_into(&[b"msg"], &mut out);
        let mut reference = boring::hmac::Hmac::init(b"key", &MessageDigest::sha256()).unwrap();
        reference.update(b"msg").unwrap();
        assert_eq!(&out[..], &reference.finalize().unwrap()[..]);
    }
}
