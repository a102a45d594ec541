//! Truncated-HMAC integrity transforms (IKEv2 Transform Type 3, ESP ICVs):
//! AUTH_HMAC_SHA1_96 (RFC 2404) and AUTH_HMAC_SHA2_256_128 / 384_192 /
//! 512_256 (RFC 4868 §2.2).
//!
//! [`Integ::compute`] / [`Integ::verify`] key the HMAC on every call, which
//! suits the IKE SK payload. [`IntegKey`] keys it once for the dataplane.

use std::fmt;

use crate::hmac::{Hash, HmacKey, MAX_OUTPUT_LEN};
use crate::secret::ct_eq;
use crate::CryptoError;

/// An integrity algorithm: HMAC truncated to its leftmost `icv_len()` bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Integ {
    /// AUTH_HMAC_SHA1_96 (RFC 2404): 20-byte key, 12-byte ICV.
    HmacSha1_96,
    /// AUTH_HMAC_SHA2_256_128 (RFC 4868): 32-byte key, 16-byte ICV.
    HmacSha256_128,
    /// AUTH_HMAC_SHA2_384_192 (RFC 4868): 48-byte key, 24-byte ICV.
    HmacSha384_192,
    /// AUTH_HMAC_SHA2_512_256 (RFC 4868): 64-byte key, 32-byte ICV.
    HmacSha512_256,
}

/// Longest ICV of any [`Integ`] (HMAC-SHA-512-256).
pub const MAX_ICV_LEN: usize = 32;

impl Integ {
    fn hash(self) -> Hash {
        match self {
            Integ::HmacSha1_96 => Hash::Sha1,
            Integ::HmacSha256_128 => Hash::Sha256,
            Integ::HmacSha384_192 => Hash::Sha384,
            Integ::HmacSha512_256 => Hash::Sha512,
        }
    }

    /// Key length in bytes: the hash output length (RFC 2404 §3,
    /// RFC 4868 §2.1.1). This is how much keying material IKE derives.
    pub fn key_len(self) -> usize {
        self.hash().output_len()
    }

    /// ICV length in bytes: half the hash output (RFC 4868 §2.3), 96 bits
    /// for SHA-1 (RFC 2404 §2).
    pub fn icv_len(self) -> usize {
        match self {
            Integ::HmacSha1_96 => 12,
            Integ::HmacSha256_128 => 16,
            Integ::HmacSha384_192 => 24,
            Integ::HmacSha512_256 => 32,
        }
    }

    /// Writes the truncated ICV over the concatenation of `data` into `out`.
    ///
    /// `key` should be `key_len()` bytes (what IKE derives); HMAC itself
    /// accepts any length, so this is not checked here — [`IntegKey::new`]
    /// checks it.
    ///
    /// # Panics
    ///
    /// If `out.len() != self.icv_len()`.
    pub fn compute(self, key: &[u8], data: &[&[u8]], out: &mut [u8]) {
        assert_eq!(out.len(), self.icv_len(), "ICV buffer length");
        HmacKey::new(self.hash(), key).mac_into(data, out);
    }

    /// Checks `icv` against the ICV over the concatenation of `data`, in
    /// constant time. An `icv` of the wrong length fails.
    pub fn verify(self, key: &[u8], data: &[&[u8]], icv: &[u8]) -> bool {
        verify_with(&HmacKey::new(self.hash(), key), self, data, icv)
    }
}

fn verify_with(key: &HmacKey, alg: Integ, data: &[&[u8]], icv: &[u8]) -> bool {
    if icv.len() != alg.icv_len() {
        return false;
    }
    let mut expected = [0u8; MAX_ICV_LEN];
    let expected = &mut expected[..alg.icv_len()];
    key.mac_into(data, expected);
    ct_eq(expected, icv)
}

const _: () = assert!(MAX_ICV_LEN <= MAX_OUTPUT_LEN);

/// An integrity key with the HMAC pads precomputed, for per-packet use:
/// `compute` and `verify` take `&self`, do not allocate, and save two hash
/// compressions per packet over [`Integ::compute`]. `Send + Sync`; the
/// precomputed state is wiped on drop and never printed.
#[derive(Clone)]
pub struct IntegKey {
    alg: Integ,
    key: HmacKey,
}

impl IntegKey {
    /// Keys `alg` with `key`, which must be exactly `alg.key_len()` bytes.
    pub fn new(alg: Integ, key: &[u8]) -> Result<Self, CryptoError> {
        if key.len() != alg.key_len() {
            return Err(CryptoError::BadKeyLength);
        }
        Ok(IntegKey {
            alg,
            key: HmacKey::new(alg.hash(), key),
        })
    }

    /// The algorithm this key is for.
    pub fn alg(&self) -> Integ {
        self.alg
    }

    /// Writes the truncated ICV over the concatenation of `data`.
    ///
    /// # Panics
    ///
    /// If `out.len() != self.alg().icv_len()`.
    pub fn compute(&self, data: &[&[u8]], out: &mut [u8]) {
        assert_eq!(out.len(), self.alg.icv_len(), "ICV buffer length");
        self.key.mac_into(data, out);
    }

    /// Checks `icv` in constant time; the wrong length fails.
    pub fn verify(&self, data: &[&[u8]], icv: &[u8]) -> bool {
        verify_with(&self.key, self.alg, data, icv)
    }
}

impl fmt::Debug for IntegKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IntegKey")
            .field("alg", &self.alg)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(s: &str) -> Vec<u8> {
        hex::decode(s.split_whitespace().collect::<String>()).unwrap()
    }

    fn icv(alg: Integ, key: &[u8], data: &[u8]) -> Vec<u8> {
        let mut out = vec![0; alg.icv_len()];
        alg.compute(key, &[data], &mut out);
        // The keyed form agrees and both verify.
        let keyed = IntegKey::new(alg, key).unwrap();
        let mut out2 = vec![0; alg.icv_len()];
        keyed.compute(&[data], &mut out2);
        assert_eq!(out, out2);
        assert!(alg.verify(key, &[data], &out));
        assert!(keyed.verify(&[data], &out));
        out
    }

    #[test]
    fn lengths() {
        for (alg, k, i) in [
            (Integ::HmacSha1_96, 20, 12),
            (Integ::HmacSha256_128, 32, 16),
            (Integ::HmacSha384_192, 48, 24),
            (Integ::HmacSha512_256, 64, 32),
        ] {
            assert_eq!((alg.key_len(), alg.icv_len()), (k, i));
        }
    }

    // RFC 2202 §3 test case 5 gives HMAC-SHA-1-96 directly. Its 20-byte
    // key happens to be AUTH_HMAC_SHA1_96's key length (RFC 2404 §3).
    #[test]
    fn rfc2202_case5_hmac_sha1_96() {
        assert_eq!(
            icv(Integ::HmacSha1_96, &[0x0c; 20], b"Test With Truncation"),
            h("4c1a03424b55e07fe7f27be1")
        );
    }

    // RFC 4868 §2.7.2.1, AUTH256-1..4 (32-byte keys).
    #[test]
    fn rfc4868_auth256() {
        let a = Integ::HmacSha256_128;
        assert_eq!(
            icv(a, &[0x0b; 32], b"Hi There"),
            h("198a607eb44bfbc69903a0f1cf2bbdc5")
        );
        assert_eq!(
            icv(a, &b"Jefe".repeat(8), b"what do ya want for nothing?"),
            h("167f928588c5cc2eef8e3093caa0e87c")
        );
        assert_eq!(
            icv(a, &[0xaa; 32], &[0xdd; 50]),
            h("cdcb1220d1ecccea91e53aba3092f962")
        );
        let key: Vec<u8> = (1..=32).collect();
        assert_eq!(
            icv(a, &key, &[0xcd; 50]),
            h("372efcf9b40b35c2115b1346903d2ef4")
        );
    }

    // RFC 4868 §2.7.2.2, AUTH384-1..3 (48-byte keys).
    #[test]
    fn rfc4868_auth384() {
        let a = Integ::HmacSha384_192;
        assert_eq!(
            icv(a, &[0x0b; 48], b"Hi There"),
            h("b6a8d5636f5c6a7224f9977dcf7ee6c7fb6d0c48cbdee973")
        );
        assert_eq!(
            icv(a, &b"Jefe".repeat(12), b"what do ya want for nothing?"),
            h("2c7353974f1842fd66d53c452ca42122b28c0b594cfb184d")
        );
        assert_eq!(
            icv(a, &[0xaa; 48], &[0xdd; 50]),
            h("809f439be00274321d4a538652164b53554a508184a0c316")
        );
    }

    // RFC 4868 §2.7.2.3, AUTH512-1..3 (64-byte keys). (AUTH512-4 is left
    // out: its key is misprinted in the RFC, see the errata.)
    #[test]
    fn rfc4868_auth512() {
        let a = Integ::HmacSha512_256;
        assert_eq!(
            icv(a, &[0x0b; 64], b"Hi There"),
            h("637edc6e01dce7e6742a99451aae82df23da3e92439e590e43e761b33e910fb8")
        );
        assert_eq!(
            icv(a, &b"Jefe".repeat(16), b"what do ya want for nothing?"),
            h("cb370917ae8a7ce28cfd1d8f4705d6141c173b2a9362c15df235dfb251b15454")
        );
        assert_eq!(
            icv(a, &[0xaa; 64], &[0xdd; 50]),
            h("2ee7acd783624ca9398710f3ee05ae41b9f9b0510c87e49e586cc9bf961733d8")
        );
    }

    #[test]
    fn verify_rejects_tampering_and_wrong_lengths() {
        let a = Integ::HmacSha256_128;
        let key = [7u8; 32];
        let data: &[&[u8]] = &[b"header", b"payload"];
        let mut good = [0u8; 16];
        a.compute(&key, data, &mut good);
        assert!(a.verify(&key, data, &good));
        assert!(a.verify(&key, &[b"headerpayload"], &good));

        let mut bad = good;
        bad[15] ^= 1;
        assert!(!a.verify(&key, data, &bad));
        assert!(!a.verify(&key, &[b"header", b"payloaD"], &good));
        assert!(!a.verify(&[8u8; 32], data, &good));
        assert!(!a.verify(&key, data, &good[..15]));
        assert!(!a.verify(&key, data, &[good.as_slice(), &[0]].concat()));
        assert!(!a.verify(&key, data, &[]));
    }

    #[test]
    fn keyed_form_checks_key_length_and_redacts() {
        assert_eq!(
            IntegKey::new(Integ::HmacSha1_96, &[0; 19]).unwrap_err(),
            CryptoError::BadKeyLength
        );
        let k = IntegKey::new(Integ::HmacSha1_96, &[0x5a; 20]).unwrap();
        assert_eq!(k.alg(), Integ::HmacSha1_96);
        let dbg = format!("{k:?}");
        assert_eq!(dbg, "IntegKey { alg: HmacSha1_96, .. }");
    }

    #[test]
    #[should_panic(expected = "ICV buffer length")]
    fn compute_insists_on_icv_len() {
        Integ::HmacSha256_128.compute(&[0; 32], &[b"x"], &mut [0; 32]);
    }

    #[test]
    fn integ_key_is_send_sync() {
        fn check<T: Send + Sync>() {}
        check::<IntegKey>();
    }
}
