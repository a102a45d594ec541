//! The ESP transforms: which algorithm an SA uses, its per-packet sizes, and
//! the keys, expanded once when the SA is installed.
//!
//! | transform | IV | pad to | ICV | RFC |
//! |---|---|---|---|---|
//! | AES-GCM-16, 128/256-bit key | 8 | 4 | 16 | RFC 4106 |
//! | ChaCha20-Poly1305 | 8 | 4 | 16 | RFC 7634 |
//! | AES-CBC 128/192/256 + HMAC-SHA-256-128 / 384-192 / 512-256 / SHA1-96 | 16 | 16 | 16/24/32/12 | RFC 3602, RFC 4868, RFC 2404 |

use anyhub_crypto::aead::{AeadAlg, AeadKey};
use anyhub_crypto::cipher::AesCbc;
use anyhub_crypto::integ::{Integ, IntegKey};
use anyhub_crypto::CryptoError;
use anyhub_ike::proposal::Selected;
use anyhub_ike::wire::registry::{EncrId, IntegId};
use anyhub_ike::DirectionKeys;
use std::fmt;

/// Why an SA from IKE could not be turned into an ESP transform. Raised at
/// install time, never per packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SaError {
    #[error("ESP algorithm not supported by the dataplane")]
    UnsupportedAlgorithm,
    #[error("key material of the wrong length for the algorithm")]
    BadKeyLength,
    #[error("AES-CBC needs an integrity key")]
    MissingIntegrityKey,
    #[error("node index outside 1..=4095")]
    BadNodeIndex,
    #[error("replay window is not a power of two in 64..=65536")]
    BadReplayWindow,
}

impl From<CryptoError> for SaError {
    fn from(_: CryptoError) -> SaError {
        // AeadKey::new / AesCbc::new / IntegKey::new fail only on lengths.
        SaError::BadKeyLength
    }
}

/// An SA's cipher suite, without keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Algorithm {
    /// A combined-mode cipher (RFC 4106, RFC 7634).
    Aead(AeadAlg),
    /// AES-CBC with a `key_len`-byte key and a separate HMAC.
    CbcHmac { key_len: usize, integ: Integ },
}

impl Algorithm {
    /// The transform IKE agreed (`Selected` of the child SA).
    pub fn from_selected(sel: &Selected) -> Result<Algorithm, SaError> {
        let e = sel.encr;
        Ok(match (e.id, e.key_bits, sel.integ) {
            (EncrId::AES_GCM_16, 128, None) => Algorithm::Aead(AeadAlg::AesGcm16_128),
            (EncrId::AES_GCM_16, 256, None) => Algorithm::Aead(AeadAlg::AesGcm16_256),
            (EncrId::CHACHA20_POLY1305, _, None) => Algorithm::Aead(AeadAlg::ChaCha20Poly1305),
            (EncrId::AES_CBC, bits @ (128 | 192 | 256), Some(i)) => Algorithm::CbcHmac {
                key_len: usize::from(bits / 8),
                integ: match i {
                    IntegId::HMAC_SHA1_96 => Integ::HmacSha1_96,
                    IntegId::HMAC_SHA2_256_128 => Integ::HmacSha256_128,
                    IntegId::HMAC_SHA2_384_192 => Integ::HmacSha384_192,
                    IntegId::HMAC_SHA2_512_256 => Integ::HmacSha512_256,
                    _ => return Err(SaError::UnsupportedAlgorithm),
                },
            },
            _ => return Err(SaError::UnsupportedAlgorithm),
        })
    }

    /// Explicit IV bytes in each packet.
    pub fn iv_len(self) -> usize {
        match self {
            Algorithm::Aead(_) => 8,
            Algorithm::CbcHmac { .. } => 16,
        }
    }

    /// What payload + padding + trailer must be a multiple of (RFC 4303
    /// §2.4): the cipher block for CBC, 4 bytes for the stream-like AEADs
    /// (RFC 4106 §3.2, RFC 7634 §3).
    pub fn align(self) -> usize {
        match self {
            Algorithm::Aead(_) => 4,
            Algorithm::CbcHmac { .. } => 16,
        }
    }

    /// ICV bytes at the end of each packet.
    pub fn icv_len(self) -> usize {
        match self {
            Algorithm::Aead(a) => a.tag_len(),
            Algorithm::CbcHmac { integ, .. } => integ.icv_len(),
        }
    }
}

/// An SA's keys, expanded for per-packet use. No `Debug` of keys: the
/// crypto types print only their algorithm.
///
/// The CBC variant holds two expanded AES schedules and the HMAC pads
/// inline (~1 KiB): an SA is built once and lives in an `Arc`, and boxing
/// would add a pointer chase to every packet.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Keys {
    Aead(AeadKey),
    CbcHmac { cbc: AesCbc, integ: IntegKey },
}

impl Keys {
    /// Expands one direction's keys. For AEADs `encr` is KEYMAT = key ‖ salt
    /// (RFC 4106 §8.1, RFC 7634 §4); for CBC it is the AES key and `integ`
    /// the HMAC key (RFC 7296 §2.17 order: encryption key, then integrity).
    pub(crate) fn new(alg: Algorithm, keys: &DirectionKeys) -> Result<Keys, SaError> {
        match alg {
            Algorithm::Aead(a) => Ok(Keys::Aead(AeadKey::new(a, keys.encr.as_bytes())?)),
            Algorithm::CbcHmac { key_len, integ } => {
                if keys.encr.len() != key_len {
                    return Err(SaError::BadKeyLength);
                }
                let ik = keys.integ.as_ref().ok_or(SaError::MissingIntegrityKey)?;
                Ok(Keys::CbcHmac {
                    cbc: AesCbc::new(keys.encr.as_bytes())?,
                    integ: IntegKey::new(integ, ik.as_bytes())?,
                })
            }
        }
    }
}

impl fmt::Debug for Keys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Keys::Aead(k) => k.fmt(f),
            Keys::CbcHmac { cbc, integ } => f
                .debug_struct("CbcHmac")
                .field("cbc", cbc)
                .field("integ", integ)
                .finish(),
        }
    }
}
