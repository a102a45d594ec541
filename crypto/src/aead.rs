//! Combined-mode ciphers for the IKE SK payload (RFC 5282) and ESP
//! (RFC 4106, RFC 7634): AES-GCM with a 16-octet ICV and
//! ChaCha20-Poly1305.
//!
//! All three take KEYMAT = key | salt, with the 4-octet salt being the
//! last octets of the keying material derived for that key (RFC 4106 §8.1,
//! RFC 5282 §7.1, RFC 7634 §4). The 12-octet nonce is
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                             Salt                              |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                     Initialization Vector                     |
//! |                                                               |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! ```
//!
//! (RFC 4106 §4, RFC 7634 §2), the 8-octet IV travelling in the packet.
//! The IV must never repeat under one key; a counter is the usual choice.

use std::fmt;

use zeroize::Zeroize;

use crate::sys::{AeadCtx, AeadKind, AEAD_NONCE_LEN, AEAD_TAG_LEN};
use crate::CryptoError;

/// Length of the explicit, per-packet IV.
pub const IV_LEN: usize = 8;
/// Length of the implicit salt at the end of KEYMAT.
pub const SALT_LEN: usize = 4;
/// Length of the authentication tag (ICV).
pub const TAG_LEN: usize = AEAD_TAG_LEN;

const _: () = assert!(SALT_LEN + IV_LEN == AEAD_NONCE_LEN);

/// An AEAD transform: IKEv2 Transform Type 1 ENCR_AES_GCM_16 (20) with a
/// 128- or 256-bit Key Length attribute, or ENCR_CHACHA20_POLY1305 (28).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AeadAlg {
    /// ENCR_AES_GCM_16 with a 128-bit key.
    AesGcm16_128,
    /// ENCR_AES_GCM_16 with a 256-bit key.
    AesGcm16_256,
    /// ENCR_CHACHA20_POLY1305 (RFC 7634).
    ChaCha20Poly1305,
}

impl AeadAlg {
    fn kind(self) -> AeadKind {
        match self {
            AeadAlg::AesGcm16_128 => AeadKind::Aes128Gcm,
            AeadAlg::AesGcm16_256 => AeadKind::Aes256Gcm,
            AeadAlg::ChaCha20Poly1305 => AeadKind::ChaCha20Poly1305,
        }
    }

    /// Cipher key length in bytes (without the salt).
    pub fn key_len(self) -> usize {
        match self {
            AeadAlg::AesGcm16_128 => 16,
            AeadAlg::AesGcm16_256 | AeadAlg::ChaCha20Poly1305 => 32,
        }
    }

    /// Salt length in bytes: 4 for all three.
    pub fn salt_len(self) -> usize {
        SALT_LEN
    }

    /// Keying material to derive per key: key | salt.
    pub fn keymat_len(self) -> usize {
        self.key_len() + self.salt_len()
    }

    /// Tag (ICV) length in bytes: 16.
    pub fn tag_len(self) -> usize {
        TAG_LEN
    }

    /// Explicit IV length in bytes: 8.
    pub fn iv_len(self) -> usize {
        IV_LEN
    }
}

/// An AEAD key with BoringSSL's context initialised once (AES key schedule
/// and GHASH tables expanded), for sealing and opening many messages.
///
/// `Send + Sync`: one key can be shared by dataplane workers; seal and open
/// take `&self` and never allocate. Key material is wiped on drop and never
/// printed.
pub struct AeadKey {
    alg: AeadAlg,
    salt: [u8; SALT_LEN],
    ctx: AeadCtx,
}

impl AeadKey {
    /// Builds a key from KEYMAT = key | salt, `alg.keymat_len()` bytes.
    pub fn new(alg: AeadAlg, keymat: &[u8]) -> Result<Self, CryptoError> {
        if keymat.len() != alg.keymat_len() {
            return Err(CryptoError::BadKeyLength);
        }
        let (key, salt) = keymat.split_at(alg.key_len());
        Ok(AeadKey {
            alg,
            salt: salt.try_into().map_err(|_| CryptoError::BadKeyLength)?,
            ctx: AeadCtx::new(alg.kind(), key)?,
        })
    }

    /// The algorithm this key is for.
    pub fn alg(&self) -> AeadAlg {
        self.alg
    }

    /// nonce = salt | iv (RFC 4106 §4, RFC 7634 §2).
    fn nonce(&self, iv: &[u8; IV_LEN]) -> [u8; AEAD_NONCE_LEN] {
        let mut nonce = [0u8; AEAD_NONCE_LEN];
        nonce[..SALT_LEN].copy_from_slice(&self.salt);
        nonce[SALT_LEN..].copy_from_slice(iv);
        nonce
    }

    /// Encrypts `buf` (plaintext → ciphertext of the same length) and writes
    /// the tag over `aad` and the ciphertext.
    ///
    /// Fails with [`CryptoError::Backend`] only if BoringSSL refuses, e.g.
    /// for a message beyond the algorithm's length limit (2^36 bytes for
    /// GCM).
    pub fn seal_in_place(
        &self,
        iv: &[u8; IV_LEN],
        aad: &[u8],
        buf: &mut [u8],
        tag: &mut [u8; TAG_LEN],
    ) -> Result<(), CryptoError> {
        self.ctx.seal(&self.nonce(iv), aad, buf, tag)
    }

    /// Verifies `tag` over `aad` and the ciphertext in `buf` and decrypts
    /// `buf` in place. On [`CryptoError::AuthFailed`] the contents of `buf`
    /// are unspecified (BoringSSL zeroes them) and must not be used.
    pub fn open_in_place(
        &self,
        iv: &[u8; IV_LEN],
        aad: &[u8],
        buf: &mut [u8],
        tag: &[u8; TAG_LEN],
    ) -> Result<(), CryptoError> {
        self.ctx.open(&self.nonce(iv), aad, buf, tag)
    }
}

impl Drop for AeadKey {
    fn drop(&mut self) {
        // The context wipes itself when BoringSSL frees it.
        self.salt.zeroize();
    }
}

impl fmt::Debug for AeadKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AeadKey")
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

    /// Runs one published (key, 12-byte nonce, aad, plaintext, ciphertext,
    /// tag) vector through the salt/IV split: the salt is the first four
    /// nonce bytes and is appended to the key as KEYMAT.
    fn check_vector(
        alg: AeadAlg,
        key: &str,
        nonce: &str,
        aad: &str,
        pt: &[u8],
        ct: &str,
        tag: &str,
    ) {
        let nonce = h(nonce);
        let keymat = [h(key), nonce[..4].to_vec()].concat();
        let iv: [u8; 8] = nonce[4..].try_into().unwrap();
        let aad = h(aad);
        let k = AeadKey::new(alg, &keymat).unwrap();

        let mut buf = pt.to_vec();
        let mut got_tag = [0u8; 16];
        k.seal_in_place(&iv, &aad, &mut buf, &mut got_tag).unwrap();
        assert_eq!(buf, h(ct), "{alg:?} ciphertext");
        assert_eq!(got_tag.to_vec(), h(tag), "{alg:?} tag");

        k.open_in_place(&iv, &aad, &mut buf, &got_tag).unwrap();
        assert_eq!(buf, pt, "{alg:?} round trip");

        // A flipped bit anywhere fails to open.
        let sealed = h(ct);
        let mut bad = sealed.clone();
        let mid = bad.len() / 2;
        bad[mid] ^= 0x01;
        assert_eq!(
            k.open_in_place(&iv, &aad, &mut bad, &got_tag),
            Err(CryptoError::AuthFailed)
        );
        let mut bad_tag = got_tag;
        bad_tag[0] ^= 0x80;
        let mut buf = sealed.clone();
        assert_eq!(
            k.open_in_place(&iv, &aad, &mut buf, &bad_tag),
            Err(CryptoError::AuthFailed)
        );
        let mut bad_iv = iv;
        bad_iv[7] ^= 1;
        let mut buf = sealed.clone();
        assert_eq!(
            k.open_in_place(&bad_iv, &aad, &mut buf, &got_tag),
            Err(CryptoError::AuthFailed)
        );
        let mut buf = sealed.clone();
        assert_eq!(
            k.open_in_place(&iv, b"other aad", &mut buf, &got_tag),
            Err(CryptoError::AuthFailed)
        );
        // A different salt is a different nonce.
        let mut other_salt = keymat.clone();
        *other_salt.last_mut().unwrap() ^= 1;
        let k2 = AeadKey::new(alg, &other_salt).unwrap();
        let mut buf = sealed;
        assert_eq!(
            k2.open_in_place(&iv, &aad, &mut buf, &got_tag),
            Err(CryptoError::AuthFailed)
        );
    }

    const GCM_P: &str = "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a72
                         1c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b39";

    // McGrew & Viega, "The Galois/Counter Mode of Operation (GCM)", test
    // case 4: AES-128, 60-byte plaintext, 20-byte AAD.
    // Salt = cafebabe, IV = facedbaddecaf888.
    #[test]
    fn gcm_spec_test_case_4() {
        check_vector(
            AeadAlg::AesGcm16_128,
            "feffe9928665731c6d6a8f9467308308",
            "cafebabefacedbaddecaf888",
            "feedfacedeadbeeffeedfacedeadbeefabaddad2",
            &h(GCM_P),
            "42831ec2217774244b7221b784d0d49ce3aa212f2c02a4e035c17e2329aca12e
             21d514b25466931c7d8f6a5aac84aa051ba30b396a0aac973d58e091",
            "5bc94fbc3221a5db94fae95ae7121a47",
        );
    }

    // GCM spec test case 15: AES-256, 64-byte plaintext, no AAD.
    #[test]
    fn gcm_spec_test_case_15() {
        check_vector(
            AeadAlg::AesGcm16_256,
            "feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308",
            "cafebabefacedbaddecaf888",
            "",
            &h(
                "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a72
                1c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b391aafd255",
            ),
            "522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa
             8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662898015ad",
            "b094dac5d93471bdec1a502270e3cc6c",
        );
    }

    // GCM spec test case 16: AES-256, 60-byte plaintext, 20-byte AAD.
    #[test]
    fn gcm_spec_test_case_16() {
        check_vector(
            AeadAlg::AesGcm16_256,
            "feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308",
            "cafebabefacedbaddecaf888",
            "feedfacedeadbeeffeedfacedeadbeefabaddad2",
            &h(GCM_P),
            "522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa
             8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662",
            "76fc6ece0f4e1768cddf8853bb2d551b",
        );
    }

    // RFC 8439 §2.8.2. The nonce 07000000 4041424344454647 splits into
    // salt = 07000000 and IV = 4041424344454647 (RFC 7634 §2).
    #[test]
    fn rfc8439_2_8_2() {
        check_vector(
            AeadAlg::ChaCha20Poly1305,
            "808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9f",
            "07000000 4041424344454647",
            "50515253c0c1c2c3c4c5c6c7",
            b"Ladies and Gentlemen of the class of '99: If I could offer you only one tip for the future, sunscreen would be it.",
            "d31a8d34648e60db7b86afbc53ef7ec2a4aded51296e08fea9e2b5a736ee62d6
             3dbea45e8ca9671282fafb69da92728b1a71de0a9e060b2905d6a5b67ecd3b36
             92ddbd7f2d778b8c9803aee328091b58fab324e4fad675945585808b4831d7bc
             3ff4def08e4b7a9de576d26586cec64b6116",
            "1ae10b594f09e26a7e902ecbd0600691",
        );
    }

    #[test]
    fn lengths() {
        for (alg, key, keymat) in [
            (AeadAlg::AesGcm16_128, 16, 20),
            (AeadAlg::AesGcm16_256, 32, 36),
            (AeadAlg::ChaCha20Poly1305, 32, 36),
        ] {
            assert_eq!(alg.key_len(), key);
            assert_eq!(alg.salt_len(), 4);
            assert_eq!(alg.keymat_len(), keymat);
            assert_eq!(alg.tag_len(), 16);
            assert_eq!(alg.iv_len(), 8);
            assert!(AeadKey::new(alg, &vec![0; keymat]).is_ok());
            for bad in [0, key, keymat - 1, keymat + 1] {
                assert_eq!(
                    AeadKey::new(alg, &vec![0; bad]).unwrap_err(),
                    CryptoError::BadKeyLength
                );
            }
        }
    }

    #[test]
    fn empty_plaintext_and_aad() {
        for alg in [
            AeadAlg::AesGcm16_128,
            AeadAlg::AesGcm16_256,
            AeadAlg::ChaCha20Poly1305,
        ] {
            let k = AeadKey::new(alg, &vec![3; alg.keymat_len()]).unwrap();
            let mut tag = [0u8; 16];
            k.seal_in_place(&[0; 8], &[], &mut [], &mut tag).unwrap();
            k.open_in_place(&[0; 8], &[], &mut [], &tag).unwrap();
            tag[3] ^= 4;
            assert_eq!(
                k.open_in_place(&[0; 8], &[], &mut [], &tag),
                Err(CryptoError::AuthFailed)
            );
        }
    }

    #[test]
    fn shared_across_threads() {
        fn check<T: Send + Sync>() {}
        check::<AeadKey>();
        let k = std::sync::Arc::new(AeadKey::new(AeadAlg::AesGcm16_128, &[5; 20]).unwrap());
        let handles: Vec<_> = (0..4u8)
            .map(|t| {
                let k = k.clone();
                std::thread::spawn(move || {
                    for i in 0..200u64 {
                        let iv = (i << 8 | u64::from(t)).to_be_bytes();
                        let mut buf = [t; 100];
                        let mut tag = [0; 16];
                        k.seal_in_place(&iv, b"hdr", &mut buf, &mut tag).unwrap();
                        k.open_in_place(&iv, b"hdr", &mut buf, &tag).unwrap();
                        assert_eq!(buf, [t; 100]);
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
    }

    #[test]
    fn debug_is_redacted() {
        let k = AeadKey::new(AeadAlg::ChaCha20Poly1305, &[0x77; 36]).unwrap();
        assert_eq!(format!("{k:?}"), "AeadKey { alg: ChaCha20Poly1305, .. }");
    }
}
