//! IKEv2 pseudorandom functions (RFC 7296 §2.13, §3.3.2 Transform Type 2)
//! and SHA-1 for NAT detection.

use crate::hmac::{Hash, HmacKey};
use crate::Secret;

/// An IKE PRF: PRF_HMAC_SHA1 (RFC 2104), PRF_HMAC_SHA2_256/384/512
/// (RFC 4868 §2.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Prf {
    /// PRF_HMAC_SHA1, 20-byte output.
    HmacSha1,
    /// PRF_HMAC_SHA2_256, 32-byte output.
    HmacSha256,
    /// PRF_HMAC_SHA2_384, 48-byte output.
    HmacSha384,
    /// PRF_HMAC_SHA2_512, 64-byte output.
    HmacSha512,
}

impl Prf {
    fn hash(self) -> Hash {
        match self {
            Prf::HmacSha1 => Hash::Sha1,
            Prf::HmacSha256 => Hash::Sha256,
            Prf::HmacSha384 => Hash::Sha384,
            Prf::HmacSha512 => Hash::Sha512,
        }
    }

    /// Output length in bytes, which is also the preferred key length
    /// (RFC 7296 §2.13: SK_d, SK_pi and SK_pr are this long).
    pub fn output_len(self) -> usize {
        self.hash().output_len()
    }

    /// prf(K, S) where S is the concatenation of `data` (fed piecewise,
    /// never copied together). Any key length is accepted; HMAC hashes
    /// keys longer than the block size.
    pub fn compute(self, key: &[u8], data: &[&[u8]]) -> Secret {
        let mut out = vec![0u8; self.output_len()];
        HmacKey::new(self.hash(), key).mac_into(data, &mut out);
        Secret::new(out)
    }

    /// prf+ (K, S) truncated to `len` bytes, S being the concatenation of
    /// `seed` (RFC 7296 §2.13):
    ///
    /// ```text
    /// prf+ (K,S) = T1 | T2 | T3 | T4 | ...
    /// T1 = prf (K, S | 0x01)
    /// T2 = prf (K, T1 | S | 0x02)
    /// Tn = prf (K, Tn-1 | S | n)
    /// ```
    ///
    /// # Panics
    ///
    /// If `len > 255 * self.output_len()`: the block counter is one octet
    /// and RFC 7296 leaves prf+ undefined beyond it. IKE never gets close
    /// (the largest key schedule, SHA-512 PRF with AES-256-CBC and
    /// HMAC-SHA-512-256, needs 3·64 + 2·64 + 2·32 = 384 bytes), and `len` is
    /// computed from negotiated algorithms, never taken from a peer.
    pub fn prf_plus(self, key: &[u8], seed: &[&[u8]], len: usize) -> Secret {
        let mut out = vec![0u8; len];
        HmacKey::new(self.hash(), key).prf_plus_into(seed, &mut out);
        Secret::new(out)
    }
}

/// SHA-1 over the concatenation of `data`: the NAT_DETECTION_SOURCE_IP /
/// NAT_DETECTION_DESTINATION_IP hash, SHA-1(SPIi | SPIr | IP | Port)
/// (RFC 7296 §2.23).
pub fn sha1(data: &[&[u8]]) -> [u8; 20] {
    let mut h = boring::sha::Sha1::new();
    for part in data {
        h.update(part);
    }
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(s: &str) -> Vec<u8> {
        hex::decode(s.split_whitespace().collect::<String>()).unwrap()
    }

    const CASE6_DATA: &[u8] = b"Test Using Larger Than Block-Size Key - Hash Key First";

    // RFC 4231 §4.2 (test case 1): key = 0x0b x 20, data = "Hi There".
    #[test]
    fn rfc4231_case1() {
        let key = [0x0b; 20];
        let data: &[&[u8]] = &[b"Hi There"];
        assert_eq!(
            Prf::HmacSha256.compute(&key, data).as_bytes(),
            h("b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7")
        );
        assert_eq!(
            Prf::HmacSha384.compute(&key, data).as_bytes(),
            h(
                "afd03944d84895626b0825f4ab46907f15f9dadbe4101ec682aa034c7cebc59c
               faea9ea9076ede7f4af152e8b2fa9cb6"
            )
        );
        assert_eq!(
            Prf::HmacSha512.compute(&key, data).as_bytes(),
            h(
                "87aa7cdea5ef619d4ff0b4241a1d6cb02379f4e2ce4ec2787ad0b30545e17cde
               daa833b7d6b8a702038b274eaea3f4e4be9d914eeb61f1702e696c203a126854"
            )
        );
    }

    // RFC 4231 §4.3 (test case 2): key = "Jefe", a key shorter than the
    // output; data split in parts to exercise the no-copy concatenation.
    #[test]
    fn rfc4231_case2() {
        let data: &[&[u8]] = &[b"what do ya ", b"", b"want for nothing?"];
        assert_eq!(
            Prf::HmacSha256.compute(b"Jefe", data).as_bytes(),
            h("5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843")
        );
        assert_eq!(
            Prf::HmacSha384.compute(b"Jefe", data).as_bytes(),
            h(
                "af45d2e376484031617f78d2b58a6b1b9c7ef464f5a01b47e42ec3736322445e
               8e2240ca5e69e2c78b3239ecfab21649"
            )
        );
        assert_eq!(
            Prf::HmacSha512.compute(b"Jefe", data).as_bytes(),
            h(
                "164b7a7bfcf819e2e395fbe73b56e0a387bd64222e831fd610270cd7ea250554
               9758bf75c05a994a6d034f65f8f0e6fdcaeab1a34d4a6b4b636e070a38bce737"
            )
        );
    }

    // RFC 4231 §4.7 (test case 6): key = 0xaa x 131, longer than any block,
    // so it is hashed first.
    #[test]
    fn rfc4231_case6() {
        let key = [0xaa; 131];
        assert_eq!(
            Prf::HmacSha256.compute(&key, &[CASE6_DATA]).as_bytes(),
            h("60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54")
        );
        assert_eq!(
            Prf::HmacSha384.compute(&key, &[CASE6_DATA]).as_bytes(),
            h(
                "4ece084485813e9088d2c63a041bc5b44f9ef1012a2b588f3cd11f05033ac4c6
               0c2ef6ab4030fe8296248df163f44952"
            )
        );
        assert_eq!(
            Prf::HmacSha512.compute(&key, &[CASE6_DATA]).as_bytes(),
            h(
                "80b24263c7c1a3ebb71493c1dd7be8b49b46d1f41b4aeec1121b013783f8f352
               6b56d037e05f2598bd0fd2215d6a1e5295e64f73f63f0aec8b915a985d786598"
            )
        );
    }

    // RFC 4231 §4.8 (test case 7): long key and data longer than a block.
    #[test]
    fn rfc4231_case7() {
        let key = [0xaa; 131];
        let data: &[&[u8]] = &[
            b"This is a test using a larger than block-size key and a larger t",
            b"han block-size data. The key needs to be hashed before being use",
            b"d by the HMAC algorithm.",
        ];
        assert_eq!(
            Prf::HmacSha256.compute(&key, data).as_bytes(),
            h("9b09ffa71b942fcb27635fbcd5b0e944bfdc63644f0713938a7f51535c3a35e2")
        );
    }

    // RFC 2202 §3 (HMAC-SHA-1), test cases 1, 2, 3 and 6.
    #[test]
    fn rfc2202_hmac_sha1() {
        let p = Prf::HmacSha1;
        assert_eq!(
            p.compute(&[0x0b; 20], &[b"Hi There"]).as_bytes(),
            h("b617318655057264e28bc0b6fb378c8ef146be00")
        );
        assert_eq!(
            p.compute(b"Jefe", &[b"what do ya want for nothing?"])
                .as_bytes(),
            h("effcdf6ae5eb2fa2d27416d5f184df9c259a7c79")
        );
        assert_eq!(
            p.compute(&[0xaa; 20], &[&[0xdd; 50]]).as_bytes(),
            h("125d7342b9ac11cd91a39af48aa17b4f63f175d3")
        );
        assert_eq!(
            p.compute(&[0xaa; 80], &[CASE6_DATA]).as_bytes(),
            h("aa4ae5e15272d00e95705637ce8a3b55ed402112")
        );
    }

    #[test]
    fn output_lengths() {
        for (p, n) in [
            (Prf::HmacSha1, 20),
            (Prf::HmacSha256, 32),
            (Prf::HmacSha384, 48),
            (Prf::HmacSha512, 64),
        ] {
            assert_eq!(p.output_len(), n);
            assert_eq!(p.compute(b"k", &[b"d"]).len(), n);
        }
    }

    // RFC 7296 §2.13: T1 = prf(K, S | 0x01), Tn = prf(K, Tn-1 | S | n),
    // checked against direct prf computations.
    #[test]
    fn prf_plus_structure() {
        let key = b"SKEYSEED-ish key";
        let (ni, nr, spis) = (&[1u8; 16][..], &[2u8; 24][..], &[3u8; 16][..]);
        let seed: &[&[u8]] = &[ni, nr, spis];
        for p in [
            Prf::HmacSha1,
            Prf::HmacSha256,
            Prf::HmacSha384,
            Prf::HmacSha512,
        ] {
            let olen = p.output_len();
            let t1 = p.compute(key, &[ni, nr, spis, &[0x01]]);
            let t2 = p.compute(key, &[t1.as_bytes(), ni, nr, spis, &[0x02]]);
            let t3 = p.compute(key, &[t2.as_bytes(), ni, nr, spis, &[0x03]]);
            let want = [t1.as_bytes(), t2.as_bytes(), t3.as_bytes()].concat();

            let len = 2 * olen + 5;
            let got = p.prf_plus(key, seed, len);
            assert_eq!(got.len(), len);
            assert_eq!(got.as_bytes(), &want[..len], "{p:?}");

            // Shorter outputs are prefixes of longer ones.
            for short in [0, 1, olen - 1, olen, olen + 1] {
                let s = p.prf_plus(key, seed, short);
                assert_eq!(s.len(), short);
                assert_eq!(s.as_bytes(), &want[..short]);
            }
        }
    }

    #[test]
    fn prf_plus_reaches_255_blocks() {
        let out = Prf::HmacSha1.prf_plus(b"k", &[b"s"], 255 * 20);
        assert_eq!(out.len(), 5100);
        // The last block is T255 = prf(K, T254 | S | 0xff).
        let t254 = &out.as_bytes()[253 * 20..254 * 20];
        let t255 = Prf::HmacSha1.compute(b"k", &[t254, b"s", &[0xff]]);
        assert_eq!(&out.as_bytes()[254 * 20..], t255.as_bytes());
    }

    #[test]
    #[should_panic(expected = "255 blocks")]
    fn prf_plus_refuses_block_256() {
        let _ = Prf::HmacSha256.prf_plus(b"k", &[b"s"], 255 * 32 + 1);
    }

    // FIPS 180-2 Appendix A.1: SHA-1("abc"), split across parts.
    #[test]
    fn sha1_of_parts() {
        assert_eq!(
            sha1(&[b"a", b"", b"bc"]).to_vec(),
            h("a9993e364706816aba3e25717850c26c9cd0d89d")
        );
    }
}
