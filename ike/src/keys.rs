//! The IKE key schedule (RFC 7296 §2.14, §2.15, §2.17) and the mapping from
//! negotiated transform IDs to crypto primitives.

use crate::proposal::{EncrAlg, Selected};
use crate::wire::registry::{DhId, EncrId, IntegId, PrfId};
use crate::wire::Id;
use anyhub_crypto::aead::AeadAlg;
use anyhub_crypto::dh::DhGroup;
use anyhub_crypto::dh::KeyPair;
use anyhub_crypto::integ::Integ;
use anyhub_crypto::prf::Prf;
use anyhub_crypto::{CryptoError, Rng, Secret};

pub(crate) fn prf_of(id: PrfId) -> Option<Prf> {
    Some(match id {
        PrfId::HMAC_SHA1 => Prf::HmacSha1,
        PrfId::HMAC_SHA2_256 => Prf::HmacSha256,
        PrfId::HMAC_SHA2_384 => Prf::HmacSha384,
        PrfId::HMAC_SHA2_512 => Prf::HmacSha512,
        _ => return None,
    })
}

pub(crate) fn integ_of(id: IntegId) -> Option<Integ> {
    Some(match id {
        IntegId::HMAC_SHA1_96 => Integ::HmacSha1_96,
        IntegId::HMAC_SHA2_256_128 => Integ::HmacSha256_128,
        IntegId::HMAC_SHA2_384_192 => Integ::HmacSha384_192,
        IntegId::HMAC_SHA2_512_256 => Integ::HmacSha512_256,
        _ => return None,
    })
}

pub(crate) fn group_of(id: DhId) -> Option<DhGroup> {
    Some(match id {
        DhId::MODP2048 => DhGroup::Modp2048,
        DhId::ECP256 => DhGroup::Ecp256,
        DhId::ECP384 => DhGroup::Ecp384,
        DhId::CURVE25519 => DhGroup::Curve25519,
        _ => return None,
    })
}

/// Our half of a key exchange, tagged with its IANA group.
pub(crate) struct DhState {
    id: DhId,
    pair: KeyPair,
}

impl DhState {
    /// `None` for a group we do not implement.
    pub(crate) fn generate(id: DhId, rng: &mut dyn Rng) -> Option<DhState> {
        Some(DhState {
            id,
            pair: KeyPair::generate(group_of(id)?, rng),
        })
    }

    pub(crate) fn group(&self) -> DhId {
        self.id
    }

    pub(crate) fn public(&self) -> &[u8] {
        self.pair.public()
    }

    /// g^ir, after validating the peer's public value.
    pub(crate) fn agree(&self, peer_public: &[u8]) -> Result<Secret, CryptoError> {
        self.pair.agree(peer_public)
    }
}

/// How an encryption transform is realised.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Cipher {
    Aead(AeadAlg),
    /// AES-CBC with this key length in bytes; integrity comes separately.
    AesCbc(usize),
}

pub(crate) fn cipher_of(e: EncrAlg) -> Option<Cipher> {
    Some(match (e.id, e.key_bits) {
        (EncrId::AES_GCM_16, 128) => Cipher::Aead(AeadAlg::AesGcm16_128),
        (EncrId::AES_GCM_16, 256) => Cipher::Aead(AeadAlg::AesGcm16_256),
        (EncrId::CHACHA20_POLY1305, _) => Cipher::Aead(AeadAlg::ChaCha20Poly1305),
        (EncrId::AES_CBC, 128 | 192 | 256) => Cipher::AesCbc(e.key_bits as usize / 8),
        _ => return None,
    })
}

impl Cipher {
    /// Octets of KEYMAT per direction for the encryption key: for AEADs the
    /// key and the 4-octet salt (RFC 5282 §7.1, RFC 4106 §8.1, RFC 7634 §4).
    pub(crate) fn keymat_len(self) -> usize {
        match self {
            Cipher::Aead(a) => a.keymat_len(),
            Cipher::AesCbc(n) => n,
        }
    }
}

/// The algorithms of an IKE SA, resolved.
#[derive(Clone, Copy, Debug)]
pub(crate) struct IkeSuite {
    pub prf: Prf,
    pub cipher: Cipher,
    pub integ: Option<Integ>,
}

impl IkeSuite {
    pub(crate) fn of(sel: &Selected) -> Option<IkeSuite> {
        let cipher = cipher_of(sel.encr)?;
        let integ = match (cipher, sel.integ) {
            (Cipher::Aead(_), None) => None,
            (Cipher::AesCbc(_), Some(i)) => Some(integ_of(i)?),
            _ => return None,
        };
        Some(IkeSuite {
            prf: prf_of(sel.prf?)?,
            cipher,
            integ,
        })
    }
}

/// The seven keys of an IKE SA (RFC 7296 §2.14).
#[derive(Debug)]
pub(crate) struct IkeKeys {
    pub suite: IkeSuite,
    pub sk_d: Secret,
    pub sk_ai: Secret,
    pub sk_ar: Secret,
    pub sk_ei: Secret,
    pub sk_er: Secret,
    pub sk_pi: Secret,
    pub sk_pr: Secret,
}

impl IkeKeys {
    /// RFC 7296 §2.14:
    ///   SKEYSEED = prf(Ni | Nr, g^ir)
    ///   {SK_d | SK_ai | SK_ar | SK_ei | SK_er | SK_pi | SK_pr}
    ///            = prf+ (SKEYSEED, Ni | Nr | SPIi | SPIr)
    pub(crate) fn derive(
        suite: IkeSuite,
        shared: &Secret,
        nonce_i: &[u8],
        nonce_r: &[u8],
        spi_i: u64,
        spi_r: u64,
    ) -> IkeKeys {
        // HMAC PRFs take the whole Ni | Nr as key (only fixed-key PRFs such
        // as AES-XCBC truncate it, §2.14).
        let mut nn = Vec::with_capacity(nonce_i.len() + nonce_r.len());
        nn.extend_from_slice(nonce_i);
        nn.extend_from_slice(nonce_r);
        let skeyseed = suite.prf.compute(&nn, &[shared.as_bytes()]);
        Self::from_skeyseed(suite, &skeyseed, nonce_i, nonce_r, spi_i, spi_r)
    }

    /// The keys of the IKE SA that replaces this one (RFC 7296 §2.18):
    ///   SKEYSEED = prf(SK_d (old), g^ir (new) | Ni | Nr)
    /// with the old SA's PRF for SKEYSEED and the new one's for prf+
    /// (as RFC 7296 intends and strongSwan does).
    pub(crate) fn derive_rekeyed(
        &self,
        suite: IkeSuite,
        shared: &Secret,
        nonce_i: &[u8],
        nonce_r: &[u8],
        spi_i: u64,
        spi_r: u64,
    ) -> IkeKeys {
        let skeyseed = self
            .suite
            .prf
            .compute(self.sk_d.as_bytes(), &[shared.as_bytes(), nonce_i, nonce_r]);
        Self::from_skeyseed(suite, &skeyseed, nonce_i, nonce_r, spi_i, spi_r)
    }

    /// {SK_d | SK_ai | SK_ar | SK_ei | SK_er | SK_pi | SK_pr}
    ///        = prf+ (SKEYSEED, Ni | Nr | SPIi | SPIr)
    fn from_skeyseed(
        suite: IkeSuite,
        skeyseed: &Secret,
        nonce_i: &[u8],
        nonce_r: &[u8],
        spi_i: u64,
        spi_r: u64,
    ) -> IkeKeys {
        let prf = suite.prf;
        let prf_len = prf.output_len();
        let integ_len = suite.integ.map_or(0, |i| i.key_len());
        let encr_len = suite.cipher.keymat_len();
        let total = 3 * prf_len + 2 * integ_len + 2 * encr_len;
        let stream = prf.prf_plus(
            skeyseed.as_bytes(),
            &[nonce_i, nonce_r, &spi_i.to_be_bytes(), &spi_r.to_be_bytes()],
            total,
        );
        let mut parts = Splitter {
            bytes: stream.as_bytes(),
            at: 0,
        };
        IkeKeys {
            suite,
            sk_d: parts.take(prf_len),
            sk_ai: parts.take(integ_len),
            sk_ar: parts.take(integ_len),
            sk_ei: parts.take(encr_len),
            sk_er: parts.take(encr_len),
            sk_pi: parts.take(prf_len),
            sk_pr: parts.take(prf_len),
        }
    }

    /// RFC 7296 §2.15: the octets every AUTH covers, signed with a private
    /// key or MACed with a shared key:
    ///   InitiatorSignedOctets = RealMessage1 | NonceRData | MACedIDForI
    ///   MACedIDForI = prf(SK_pi, RestOfInitIDPayload)
    /// (for the responder: RealMessage2 | NonceIData | prf(SK_pr, RestOfRespIDPayload)).
    /// `initiator` says whose AUTH this is (SK_pi for the initiator's, SK_pr
    /// for the responder's).
    pub(crate) fn signed_octets(
        &self,
        initiator: bool,
        real_message: &[u8],
        other_nonce: &[u8],
        id: &Id,
    ) -> Vec<u8> {
        let prf = self.suite.prf;
        let sk_p = if initiator { &self.sk_pi } else { &self.sk_pr };
        let maced_id = prf.compute(sk_p.as_bytes(), &[&id.rest_of_id_payload()]);
        [real_message, other_nonce, maced_id.as_bytes()].concat()
    }

    /// RFC 7296 §2.15, shared-key authentication:
    ///   AUTH = prf( prf(Shared Secret, "Key Pad for IKEv2"), <SignedOctets>)
    pub(crate) fn psk_auth(
        &self,
        psk: &Secret,
        initiator: bool,
        real_message: &[u8],
        other_nonce: &[u8],
        id: &Id,
    ) -> Secret {
        let prf = self.suite.prf;
        let key = prf.compute(psk.as_bytes(), &[b"Key Pad for IKEv2"]);
        let octets = self.signed_octets(initiator, real_message, other_nonce, id);
        prf.compute(key.as_bytes(), &[&octets])
    }

    /// RFC 7296 §2.17:
    ///   KEYMAT = prf+(SK_d, Ni | Nr)                 (no PFS)
    ///   KEYMAT = prf+(SK_d, g^ir (new) | Ni | Nr)    (PFS in CREATE_CHILD_SA)
    /// taken as encryption then integrity key for initiator→responder, then
    /// the same for responder→initiator. "Initiator" is the initiator of the
    /// exchange that created the child SA.
    pub(crate) fn child_keys(
        &self,
        child: &Selected,
        pfs: Option<&Secret>,
        nonce_i: &[u8],
        nonce_r: &[u8],
    ) -> Option<ChildKeys> {
        let cipher = cipher_of(child.encr)?;
        let integ_len = match (cipher, child.integ) {
            (Cipher::Aead(_), None) => 0,
            (Cipher::AesCbc(_), Some(i)) => integ_of(i)?.key_len(),
            _ => return None,
        };
        let encr_len = cipher.keymat_len();
        let g_ir = pfs.map_or(&[][..], |s| s.as_bytes());
        let stream = self.suite.prf.prf_plus(
            self.sk_d.as_bytes(),
            &[g_ir, nonce_i, nonce_r],
            2 * (encr_len + integ_len),
        );
        let mut parts = Splitter {
            bytes: stream.as_bytes(),
            at: 0,
        };
        let ei = parts.take(encr_len);
        let ai = parts.take(integ_len);
        let er = parts.take(encr_len);
        let ar = parts.take(integ_len);
        let integ = |k: Secret| (integ_len > 0).then_some(k);
        Some(ChildKeys {
            i_to_r: (ei, integ(ai)),
            r_to_i: (er, integ(ar)),
        })
    }
}

pub(crate) struct ChildKeys {
    pub i_to_r: (Secret, Option<Secret>),
    pub r_to_i: (Secret, Option<Secret>),
}

struct Splitter<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Splitter<'_> {
    fn take(&mut self, n: usize) -> Secret {
        let s = Secret::from_slice(&self.bytes[self.at..self.at + n]);
        self.at += n;
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_lengths_follow_the_suite() {
        let suite = IkeSuite {
            prf: Prf::HmacSha256,
            cipher: Cipher::Aead(AeadAlg::AesGcm16_256),
            integ: None,
        };
        let k = IkeKeys::derive(
            suite,
            &Secret::from_slice(&[7; 32]),
            &[1; 32],
            &[2; 32],
            1,
            2,
        );
        assert_eq!(k.sk_d.len(), 32);
        assert_eq!(k.sk_ai.len(), 0);
        assert_eq!(k.sk_ei.len(), 36, "AES-256 key + 4 octets salt");
        assert_ne!(k.sk_ei.as_bytes(), k.sk_er.as_bytes());

        let suite = IkeSuite {
            prf: Prf::HmacSha384,
            cipher: Cipher::AesCbc(32),
            integ: Some(Integ::HmacSha256_128),
        };
        let k = IkeKeys::derive(
            suite,
            &Secret::from_slice(&[7; 32]),
            &[1; 32],
            &[2; 32],
            1,
            2,
        );
        assert_eq!(
            (k.sk_d.len(), k.sk_ai.len(), k.sk_ei.len(), k.sk_pr.len()),
            (48, 32, 32, 48)
        );
    }

    /// The key stream is one prf+ output cut in RFC order: SK_d is its head.
    #[test]
    fn sk_d_is_the_head_of_prf_plus() {
        let suite = IkeSuite {
            prf: Prf::HmacSha256,
            cipher: Cipher::Aead(AeadAlg::AesGcm16_128),
            integ: None,
        };
        let shared = Secret::from_slice(&[9; 32]);
        let k = IkeKeys::derive(suite, &shared, &[1; 16], &[2; 16], 0x1122, 0x3344);
        let seed = Prf::HmacSha256.compute(&[[1u8; 16], [2u8; 16]].concat(), &[shared.as_bytes()]);
        let t1 = Prf::HmacSha256.compute(
            seed.as_bytes(),
            &[
                &[1u8; 16],
                &[2u8; 16],
                &0x1122u64.to_be_bytes(),
                &0x3344u64.to_be_bytes(),
                &[1],
            ],
        );
        assert_eq!(k.sk_d.as_bytes(), t1.as_bytes());
    }
}
