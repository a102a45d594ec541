//! AES-CBC (RFC 3602) for ENCR_AES_CBC with a separate integrity transform,
//! in the IKE SK payload (RFC 7296 §3.14) and in ESP.
//!
//! No padding is added or removed here: IKE and ESP each pad to the block
//! size with their own trailer format, so the caller pads before encrypting
//! and strips after decrypting. Both key schedules are expanded once in
//! [`AesCbc::new`].

use std::fmt;

use crate::sys::{AesKey, AES_BLOCK_LEN};
use crate::CryptoError;

/// AES block (and CBC IV) length in bytes.
pub const BLOCK_LEN: usize = AES_BLOCK_LEN;

/// An AES-128/192/256 key expanded for CBC in both directions.
/// `Send + Sync`; the schedules are wiped on drop and never printed.
pub struct AesCbc {
    enc: AesKey,
    dec: AesKey,
    key_len: usize,
}

impl AesCbc {
    /// Expands a 16-, 24- or 32-byte key.
    pub fn new(key: &[u8]) -> Result<Self, CryptoError> {
        Ok(AesCbc {
            enc: AesKey::new_encrypt(key)?,
            dec: AesKey::new_decrypt(key)?,
            key_len: key.len(),
        })
    }

    /// Key length in bytes (16, 24 or 32).
    pub fn key_len(&self) -> usize {
        self.key_len
    }

    /// Encrypts `buf` in place with `iv` (RFC 3602 §3: the IV must be
    /// unpredictable, i.e. fresh random bytes per message).
    ///
    /// `buf.len()` must be a multiple of 16, else
    /// [`CryptoError::BadInputLength`] and `buf` is untouched.
    pub fn encrypt_in_place(
        &self,
        iv: &[u8; BLOCK_LEN],
        buf: &mut [u8],
    ) -> Result<(), CryptoError> {
        self.enc.cbc_in_place(iv, buf, true)
    }

    /// Decrypts `buf` in place with `iv`.
    ///
    /// `buf.len()` must be a multiple of 16, else
    /// [`CryptoError::BadInputLength`] and `buf` is untouched. CBC has no
    /// integrity of its own: verify the ICV first.
    pub fn decrypt_in_place(
        &self,
        iv: &[u8; BLOCK_LEN],
        buf: &mut [u8],
    ) -> Result<(), CryptoError> {
        self.dec.cbc_in_place(iv, buf, false)
    }
}

impl fmt::Debug for AesCbc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AesCbc")
            .field("key_len", &self.key_len)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(s: &str) -> Vec<u8> {
        hex::decode(s.split_whitespace().collect::<String>()).unwrap()
    }

    fn iv(s: &str) -> [u8; 16] {
        h(s).try_into().unwrap()
    }

    fn check(key: &str, iv_hex: &str, plaintext: &[u8], ciphertext: &str) {
        let c = AesCbc::new(&h(key)).unwrap();
        let mut buf = plaintext.to_vec();
        c.encrypt_in_place(&iv(iv_hex), &mut buf).unwrap();
        assert_eq!(buf, h(ciphertext));
        c.decrypt_in_place(&iv(iv_hex), &mut buf).unwrap();
        assert_eq!(buf, plaintext);
    }

    // RFC 3602 §4, Case #1: one block, AES-128.
    #[test]
    fn rfc3602_case1() {
        check(
            "06a9214036b8a15b512e03d534120006",
            "3dafba429d9eb430b422da802c9fac41",
            b"Single block msg",
            "e353779c1079aeb82708942dbe77181a",
        );
    }

    // RFC 3602 §4, Case #2: two blocks, AES-128 (exercises chaining).
    #[test]
    fn rfc3602_case2() {
        let plaintext: Vec<u8> = (0..32).collect();
        check(
            "c286696d887c9aa0611bbb3e2025a45a",
            "562e17996d093d28ddb3ba695a2e6f58",
            &plaintext,
            "d296cd94c2cccf8a3a863028b5e1dc0a 7586602d253cfff91b8266bea6d61ab1",
        );
    }

    #[test]
    fn key_lengths() {
        for n in [16, 24, 32] {
            assert_eq!(AesCbc::new(&vec![1; n]).unwrap().key_len(), n);
        }
        for n in [0, 8, 15, 17, 31, 33, 64] {
            assert_eq!(
                AesCbc::new(&vec![1; n]).unwrap_err(),
                CryptoError::BadKeyLength
            );
        }
    }

    #[test]
    fn all_key_sizes_round_trip() {
        for n in [16, 24, 32] {
            let c = AesCbc::new(&vec![0x42; n]).unwrap();
            let plain: Vec<u8> = (0..80).collect();
            let mut buf = plain.clone();
            c.encrypt_in_place(&[9; 16], &mut buf).unwrap();
            assert_ne!(buf, plain);
            c.decrypt_in_place(&[9; 16], &mut buf).unwrap();
            assert_eq!(buf, plain);
        }
    }

    #[test]
    fn partial_blocks_are_refused_untouched() {
        let c = AesCbc::new(&[0; 16]).unwrap();
        let mut buf = [7u8; 17];
        assert_eq!(
            c.encrypt_in_place(&[0; 16], &mut buf),
            Err(CryptoError::BadInputLength)
        );
        assert_eq!(
            c.decrypt_in_place(&[0; 16], &mut buf[..15]),
            Err(CryptoError::BadInputLength)
        );
        assert_eq!(buf, [7u8; 17]);
        // Zero blocks is a valid (empty) message.
        c.encrypt_in_place(&[0; 16], &mut []).unwrap();
    }

    #[test]
    fn debug_is_redacted_and_type_is_shareable() {
        fn check<T: Send + Sync>() {}
        check::<AesCbc>();
        let c = AesCbc::new(&[0xab; 16]).unwrap();
        assert_eq!(format!("{c:?}"), "AesCbc { key_len: 16, .. }");
    }
}
