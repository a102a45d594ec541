//! Digital signatures for IKEv2 authentication (RFC 7296 §2.15): RSA
//! (RSASSA-PKCS1-v1_5 and RSASSA-PSS, RFC 8017) and ECDSA over P-256, P-384
//! and P-521, in both encodings IKE uses — DER `Ecdsa-Sig-Value` for RFC 7427
//! signature authentication and fixed-width `r | s` for the classic methods
//! of RFC 4754 — plus the RFC 7427 AlgorithmIdentifier that names a scheme.
//!
//! Keys live in BoringSSL (`EVP_PKEY`); the private key never leaves it as
//! bytes. BoringSSL frees key material through `OPENSSL_free`, which
//! cleanses the allocation, so a dropped [`PrivateKey`] leaves nothing
//! behind; its `Debug` shows the key type only.

use std::fmt;

use boring::bn::BigNum;
use boring::ecdsa::EcdsaSig;
use boring::hash::MessageDigest;
use boring::nid::Nid;
use boring::pkey::{Id, PKey, Private, Public};
use boring::rsa::Padding;
use boring::sign::{RsaPssSaltlen, Signer, Verifier};

use crate::CryptoError;

/// Smallest RSA modulus we accept for our own key or a peer's, in bits
/// (NIST SP 800-131A: 2048 since 2014; strongSwan's `pki` default is 3072).
pub const MIN_RSA_BITS: u32 = 2048;
/// Largest RSA modulus we verify with: bounds the work a peer's certificate
/// can make us do (a 16384-bit verification is ~50× a 2048-bit one).
pub const MAX_RSA_BITS: u32 = 8192;

/// A hash for signatures, with its number in IANA's "IKEv2 Hash Algorithms"
/// registry (RFC 7427 §7).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Hash {
    /// SHA-1 (only for the classic RSA method 1 and old peers).
    Sha1,
    /// SHA2-256.
    Sha256,
    /// SHA2-384.
    Sha384,
    /// SHA2-512.
    Sha512,
}

impl Hash {
    /// The hash's number in SIGNATURE_HASH_ALGORITHMS (RFC 7427 §4).
    pub fn ike_id(self) -> u16 {
        match self {
            Hash::Sha1 => 1,
            Hash::Sha256 => 2,
            Hash::Sha384 => 3,
            Hash::Sha512 => 4,
        }
    }

    /// The hash with that number, if we implement it.
    pub fn from_ike_id(id: u16) -> Option<Hash> {
        Some(match id {
            1 => Hash::Sha1,
            2 => Hash::Sha256,
            3 => Hash::Sha384,
            4 => Hash::Sha512,
            _ => return None,
        })
    }

    /// Digest length in bytes.
    pub fn output_len(self) -> usize {
        match self {
            Hash::Sha1 => 20,
            Hash::Sha256 => 32,
            Hash::Sha384 => 48,
            Hash::Sha512 => 64,
        }
    }

    fn md(self) -> MessageDigest {
        match self {
            Hash::Sha1 => MessageDigest::sha1(),
            Hash::Sha256 => MessageDigest::sha256(),
            Hash::Sha384 => MessageDigest::sha384(),
            Hash::Sha512 => MessageDigest::sha512(),
        }
    }

    /// DER of the hash's OID (NIST CSOR 2.16.840.1.101.3.4.2.x, OIW 1.3.14.3.2.26).
    fn oid(self) -> &'static [u8] {
        match self {
            Hash::Sha1 => &[0x2b, 0x0e, 0x03, 0x02, 0x1a],
            Hash::Sha256 => &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01],
            Hash::Sha384 => &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x02],
            Hash::Sha512 => &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x03],
        }
    }

    fn from_oid(oid: &[u8]) -> Option<Hash> {
        [Hash::Sha1, Hash::Sha256, Hash::Sha384, Hash::Sha512]
            .into_iter()
            .find(|h| h.oid() == oid)
    }
}

/// An elliptic curve we sign and verify on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Curve {
    /// NIST P-256 (secp256r1).
    P256,
    /// NIST P-384 (secp384r1).
    P384,
    /// NIST P-521 (secp521r1).
    P521,
}

impl Curve {
    /// Octets of one coordinate (and of r and s in RFC 4754 signatures).
    pub fn field_len(self) -> usize {
        match self {
            Curve::P256 => 32,
            Curve::P384 => 48,
            Curve::P521 => 66,
        }
    }

    /// The hash that matches the curve's strength (RFC 4754 §3, RFC 5656 §6.2.1).
    pub fn hash(self) -> Hash {
        match self {
            Curve::P256 => Hash::Sha256,
            Curve::P384 => Hash::Sha384,
            Curve::P521 => Hash::Sha512,
        }
    }
}

/// What kind of key: decides which schemes can use it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KeyKind {
    /// RSA with a modulus of this many bits.
    Rsa {
        /// Modulus length.
        bits: u32,
    },
    /// ECDSA on this curve.
    Ec(Curve),
}

impl fmt::Display for KeyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyKind::Rsa { bits } => write!(f, "RSA-{bits}"),
            KeyKind::Ec(c) => write!(f, "ECDSA-{c:?}"),
        }
    }
}

/// A signature scheme: algorithm, hash, and the encoding of the signature.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Scheme {
    /// RSASSA-PKCS1-v1_5 (RFC 8017 §8.2).
    RsaPkcs1(Hash),
    /// RSASSA-PSS (RFC 8017 §8.1) with MGF1 over the same hash.
    RsaPss {
        /// Message and MGF1 hash.
        hash: Hash,
        /// Salt length in octets.
        salt_len: u16,
    },
    /// ECDSA with a DER `Ecdsa-Sig-Value` (RFC 3279 §2.2.3): what RFC 7427
    /// signature authentication carries.
    EcdsaDer(Hash),
    /// ECDSA with `r | s`, each left-padded to the curve's field length
    /// (RFC 4754 §7): IKEv2 auth methods 9, 10 and 11.
    EcdsaRaw(Hash),
}

/// Longest salt we accept in a peer's PSS parameters: no hash is longer,
/// and RFC 8017 §9.1.1 caps it at emLen − hLen − 2 anyway.
const MAX_PSS_SALT: u16 = 512;

impl Scheme {
    /// The scheme's hash.
    pub fn hash(self) -> Hash {
        match self {
            Scheme::RsaPkcs1(h)
            | Scheme::RsaPss { hash: h, .. }
            | Scheme::EcdsaDer(h)
            | Scheme::EcdsaRaw(h) => h,
        }
    }

    /// Whether a key of this kind can make or check this scheme's signatures.
    pub fn fits(self, kind: KeyKind) -> bool {
        matches!(
            (self, kind),
            (
                Scheme::RsaPkcs1(_) | Scheme::RsaPss { .. },
                KeyKind::Rsa { .. }
            ) | (Scheme::EcdsaDer(_) | Scheme::EcdsaRaw(_), KeyKind::Ec(_))
        )
    }

    /// The DER AlgorithmIdentifier naming this scheme in an RFC 7427 AUTH
    /// payload (RFC 7427 §3 and Appendix A). `None` for [`Scheme::EcdsaRaw`],
    /// which only the classic methods use.
    pub fn algorithm_identifier(self) -> Option<Vec<u8>> {
        let mut out = Vec::new();
        match self {
            // sha*WithRSAEncryption, 1.2.840.113549.1.1.{5,11,12,13}, NULL parameters.
            Scheme::RsaPkcs1(h) => {
                let last = match h {
                    Hash::Sha1 => 0x05,
                    Hash::Sha256 => 0x0b,
                    Hash::Sha384 => 0x0c,
                    Hash::Sha512 => 0x0d,
                };
                let mut oid = PKCS1_ARC.to_vec();
                oid.push(last);
                der::tlv(
                    &mut out,
                    der::SEQUENCE,
                    &[der::oid(&oid), der::NULL.to_vec()].concat(),
                );
            }
            // ecdsa-with-SHA*, 1.2.840.10045.4.{1, 3.2, 3.3, 3.4}, no parameters (RFC 5758 §3.2).
            Scheme::EcdsaDer(h) => {
                let oid: &[u8] = match h {
                    Hash::Sha1 => &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x01],
                    Hash::Sha256 => &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02],
                    Hash::Sha384 => &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x03],
                    Hash::Sha512 => &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x04],
                };
                der::tlv(&mut out, der::SEQUENCE, &der::oid(oid));
            }
            // id-RSASSA-PSS, 1.2.840.113549.1.1.10, with RSASSA-PSS-params
            // (RFC 8017 Appendix A.2.3); DEFAULT fields (SHA-1, salt 20,
            // trailer 1) are omitted as DER requires.
            Scheme::RsaPss { hash, salt_len } => {
                let mut params = Vec::new();
                if hash != Hash::Sha1 {
                    let alg = hash_algorithm(hash);
                    der::tlv(&mut params, 0xa0, &alg);
                    let mut mgf = Vec::new();
                    der::tlv(
                        &mut mgf,
                        der::SEQUENCE,
                        &[der::oid(&MGF1_OID), alg].concat(),
                    );
                    der::tlv(&mut params, 0xa1, &mgf);
                }
                if salt_len != 20 {
                    let mut int = Vec::new();
                    der::tlv(&mut int, der::INTEGER, &der::uint(salt_len));
                    der::tlv(&mut params, 0xa2, &int);
                }
                let mut seq = Vec::new();
                der::tlv(&mut seq, der::SEQUENCE, &params);
                der::tlv(&mut out, der::SEQUENCE, &[der::oid(&PSS_OID), seq].concat());
            }
            Scheme::EcdsaRaw(_) => return None,
        }
        Some(out)
    }

    /// Reads an RFC 7427 AlgorithmIdentifier. `None` for anything we do not
    /// implement or that does not parse; never panics on peer input.
    pub fn from_algorithm_identifier(der_bytes: &[u8]) -> Option<Scheme> {
        let mut r = der::Reader(der_bytes);
        let mut seq = r.expect(der::SEQUENCE)?;
        if !r.is_empty() {
            return None;
        }
        let oid = seq.expect(der::OID)?.0;
        let params = seq.0;
        if let Some(last) = oid.strip_prefix(&PKCS1_ARC[..]) {
            let hash = match last {
                [0x05] => Some(Hash::Sha1),
                [0x0b] => Some(Hash::Sha256),
                [0x0c] => Some(Hash::Sha384),
                [0x0d] => Some(Hash::Sha512),
                [0x0a] => None,
                _ => return None,
            };
            return match hash {
                // Parameters NULL (RFC 4055 §5) or, as some implementations
                // send, absent.
                Some(h) if params.is_empty() || params == der::NULL => Some(Scheme::RsaPkcs1(h)),
                Some(_) => None,
                None => pss_params(params),
            };
        }
        let hash = match oid {
            [0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x01] => Hash::Sha1,
            [0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02] => Hash::Sha256,
            [0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x03] => Hash::Sha384,
            [0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x04] => Hash::Sha512,
            _ => return None,
        };
        params.is_empty().then_some(Scheme::EcdsaDer(hash))
    }
}

/// 1.2.840.113549.1.1 (PKCS #1), without the last arc.
const PKCS1_ARC: [u8; 8] = [0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01];
/// id-RSASSA-PSS, 1.2.840.113549.1.1.10.
const PSS_OID: [u8; 9] = [0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0a];
/// id-mgf1, 1.2.840.113549.1.1.8.
const MGF1_OID: [u8; 9] = [0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x08];

/// `AlgorithmIdentifier { hash OID, NULL }` as RFC 7427 Appendix A writes it.
fn hash_algorithm(h: Hash) -> Vec<u8> {
    let mut out = Vec::new();
    der::tlv(
        &mut out,
        der::SEQUENCE,
        &[der::oid(h.oid()), der::NULL.to_vec()].concat(),
    );
    out
}

/// `HashAlgorithm`: an AlgorithmIdentifier whose parameters are NULL or absent.
fn read_hash_algorithm(mut r: der::Reader) -> Option<Hash> {
    let mut seq = r.expect(der::SEQUENCE)?;
    if !r.is_empty() {
        return None;
    }
    let h = Hash::from_oid(seq.expect(der::OID)?.0)?;
    (seq.is_empty() || seq.0 == der::NULL).then_some(h)
}

/// RSASSA-PSS-params (RFC 8017 Appendix A.2.3):
///
/// ```text
/// RSASSA-PSS-params ::= SEQUENCE {
///     hashAlgorithm      [0] HashAlgorithm      DEFAULT sha1,
///     maskGenAlgorithm   [1] MaskGenAlgorithm   DEFAULT mgf1SHA1,
///     saltLength         [2] INTEGER            DEFAULT 20,
///     trailerField       [3] TrailerField       DEFAULT trailerFieldBC }
/// ```
///
/// We verify only MGF1 over the message hash (what every IKE implementation
/// sends) and the BC trailer (the only one defined).
fn pss_params(params: &[u8]) -> Option<Scheme> {
    let mut outer = der::Reader(params);
    let mut r = outer.expect(der::SEQUENCE)?;
    if !outer.is_empty() {
        return None;
    }
    let mut hash = Hash::Sha1;
    let mut mgf_hash = Hash::Sha1;
    let mut salt_len = 20u16;
    if let Some(x) = r.optional(0xa0) {
        hash = read_hash_algorithm(x)?;
    }
    if let Some(mut x) = r.optional(0xa1) {
        let mut seq = x.expect(der::SEQUENCE)?;
        if !x.is_empty() || seq.expect(der::OID)?.0 != MGF1_OID {
            return None;
        }
        mgf_hash = read_hash_algorithm(seq)?;
    }
    if let Some(mut x) = r.optional(0xa2) {
        salt_len = der::read_uint(x.expect(der::INTEGER)?.0)?;
        if !x.is_empty() || salt_len > MAX_PSS_SALT {
            return None;
        }
    }
    if let Some(mut x) = r.optional(0xa3) {
        if der::read_uint(x.expect(der::INTEGER)?.0)? != 1 || !x.is_empty() {
            return None;
        }
    }
    (r.is_empty() && mgf_hash == hash).then_some(Scheme::RsaPss { hash, salt_len })
}

/// Why a key was refused. Carries no key material.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// Not a PEM or DER private key (PKCS#1, SEC 1 or unencrypted PKCS#8).
    #[error("not a PEM or DER private key (RSA, EC or PKCS#8; encrypted keys are not supported)")]
    Unreadable,
    /// Not an RSA or EC key.
    #[error("unsupported key type (RSA and ECDSA are supported)")]
    UnsupportedType,
    /// An EC key on a curve other than P-256, P-384, P-521.
    #[error("unsupported elliptic curve (P-256, P-384 and P-521 are supported)")]
    UnsupportedCurve,
    /// An RSA key outside [`MIN_RSA_BITS`]..=[`MAX_RSA_BITS`].
    #[error("RSA key of {0} bits (2048 to 8192 are accepted)")]
    RsaSize(u32),
}

fn kind_of<T>(pkey: &PKey<T>) -> Result<KeyKind, KeyError>
where
    T: boring::pkey::HasPublic,
{
    match pkey.id() {
        Id::RSA => {
            let bits = pkey.bits();
            if !(MIN_RSA_BITS..=MAX_RSA_BITS).contains(&bits) {
                return Err(KeyError::RsaSize(bits));
            }
            Ok(KeyKind::Rsa { bits })
        }
        Id::EC => {
            let ec = pkey.ec_key().map_err(|_| KeyError::Unreadable)?;
            match ec.group().curve_name() {
                Some(Nid::X9_62_PRIME256V1) => Ok(KeyKind::Ec(Curve::P256)),
                Some(Nid::SECP384R1) => Ok(KeyKind::Ec(Curve::P384)),
                Some(Nid::SECP521R1) => Ok(KeyKind::Ec(Curve::P521)),
                _ => Err(KeyError::UnsupportedCurve),
            }
        }
        _ => Err(KeyError::UnsupportedType),
    }
}

/// Our private key. `Debug` shows only its kind.
pub struct PrivateKey {
    pkey: PKey<Private>,
    kind: KeyKind,
}

impl PrivateKey {
    /// Reads a PEM (`RSA PRIVATE KEY`, `EC PRIVATE KEY`, `PRIVATE KEY`) or
    /// DER private key, as `pki --gen` and `openssl genpkey` write them.
    /// Encrypted keys are refused (no passphrase is ever asked for).
    pub fn from_pem_or_der(bytes: &[u8]) -> Result<PrivateKey, KeyError> {
        let pkey = if bytes.windows(11).any(|w| w == b"-----BEGIN ") {
            // An empty passphrase: an encrypted key fails to decrypt instead
            // of BoringSSL asking a terminal for one.
            PKey::private_key_from_pem_callback(bytes, |_| Ok(0))
        } else {
            PKey::private_key_from_der(bytes)
        }
        .map_err(|_| KeyError::Unreadable)?;
        let kind = kind_of(&pkey)?;
        Ok(PrivateKey { pkey, kind })
    }

    /// Generates a key (tests and tools; production keys come from files).
    pub fn generate(kind: KeyKind) -> Result<PrivateKey, CryptoError> {
        let pkey = match kind {
            KeyKind::Rsa { bits } => boring::rsa::Rsa::generate(bits).and_then(PKey::from_rsa),
            KeyKind::Ec(c) => {
                let nid = match c {
                    Curve::P256 => Nid::X9_62_PRIME256V1,
                    Curve::P384 => Nid::SECP384R1,
                    Curve::P521 => Nid::SECP521R1,
                };
                boring::ec::EcGroup::from_curve_name(nid)
                    .and_then(|g| boring::ec::EcKey::generate(&g))
                    .and_then(PKey::from_ec_key)
            }
        }
        .map_err(|_| CryptoError::Backend)?;
        Ok(PrivateKey { pkey, kind })
    }

    /// The key's kind.
    pub fn kind(&self) -> KeyKind {
        self.kind
    }

    #[cfg(any(test, feature = "test-pki"))]
    pub(crate) fn pkey(&self) -> &PKey<Private> {
        &self.pkey
    }

    /// The matching public key.
    pub fn public_key(&self) -> PublicKey {
        let der = self
            .pkey
            .public_key_to_der()
            .expect("an RSA or EC key has a SubjectPublicKeyInfo");
        PublicKey::from_spki_der(&der).expect("our own public key parses")
    }

    /// Signs `data` (hashing it with the scheme's hash).
    pub fn sign(&self, scheme: Scheme, data: &[u8]) -> Result<Vec<u8>, CryptoError> {
        if !scheme.fits(self.kind) {
            return Err(CryptoError::BadKeyLength);
        }
        let hash = scheme.hash();
        let mut signer = Signer::new(hash.md(), &self.pkey).map_err(|_| CryptoError::Backend)?;
        if let Scheme::RsaPss { salt_len, .. } = scheme {
            signer
                .set_rsa_padding(Padding::PKCS1_PSS)
                .and_then(|_| signer.set_rsa_pss_saltlen(RsaPssSaltlen::custom(salt_len.into())))
                .and_then(|_| signer.set_rsa_mgf1_md(hash.md()))
                .map_err(|_| CryptoError::Backend)?;
        }
        let sig = signer
            .sign_oneshot_to_vec(data)
            .map_err(|_| CryptoError::Backend)?;
        match (scheme, self.kind) {
            (Scheme::EcdsaRaw(_), KeyKind::Ec(c)) => ecdsa_der_to_raw(&sig, c.field_len()),
            _ => Ok(sig),
        }
    }
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PrivateKey({}, <redacted>)", self.kind)
    }
}

/// A public key (ours, or a peer's from its certificate).
#[derive(Clone)]
pub struct PublicKey {
    pkey: PKey<Public>,
    kind: KeyKind,
    spki: Vec<u8>,
}

impl PublicKey {
    /// Reads a DER SubjectPublicKeyInfo (RFC 5280 §4.1.2.7).
    pub fn from_spki_der(der: &[u8]) -> Result<PublicKey, KeyError> {
        let pkey = PKey::public_key_from_der(der).map_err(|_| KeyError::Unreadable)?;
        let kind = kind_of(&pkey)?;
        Ok(PublicKey {
            pkey,
            kind,
            spki: der.to_vec(),
        })
    }

    /// The key's kind.
    pub fn kind(&self) -> KeyKind {
        self.kind
    }

    /// The DER SubjectPublicKeyInfo.
    pub fn spki_der(&self) -> &[u8] {
        &self.spki
    }

    /// Checks `sig` over `data`. False for a wrong signature, a scheme the
    /// key cannot use, or a malformed signature; never panics.
    pub fn verify(&self, scheme: Scheme, data: &[u8], sig: &[u8]) -> bool {
        if !scheme.fits(self.kind) {
            return false;
        }
        let der;
        let sig = match (scheme, self.kind) {
            (Scheme::EcdsaRaw(_), KeyKind::Ec(c)) => match ecdsa_raw_to_der(sig, c.field_len()) {
                Some(d) => {
                    der = d;
                    &der[..]
                }
                None => return false,
            },
            _ => sig,
        };
        let hash = scheme.hash();
        let result = (|| {
            let mut v = Verifier::new(hash.md(), &self.pkey)?;
            if let Scheme::RsaPss { salt_len, .. } = scheme {
                v.set_rsa_padding(Padding::PKCS1_PSS)?;
                v.set_rsa_pss_saltlen(RsaPssSaltlen::custom(salt_len.into()))?;
                v.set_rsa_mgf1_md(hash.md())?;
            }
            v.verify_oneshot(sig, data)
        })();
        result.unwrap_or(false)
    }
}

impl PartialEq for PublicKey {
    fn eq(&self, other: &Self) -> bool {
        self.spki == other.spki
    }
}

impl Eq for PublicKey {}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.kind)
    }
}

/// DER `Ecdsa-Sig-Value ::= SEQUENCE { r INTEGER, s INTEGER }` → `r | s`
/// with each left-padded to `n` octets (RFC 4754 §7).
fn ecdsa_der_to_raw(der: &[u8], n: usize) -> Result<Vec<u8>, CryptoError> {
    let sig = EcdsaSig::from_der(der).map_err(|_| CryptoError::Backend)?;
    let mut out = sig.r().to_vec_padded(n).map_err(|_| CryptoError::Backend)?;
    out.extend(sig.s().to_vec_padded(n).map_err(|_| CryptoError::Backend)?);
    Ok(out)
}

/// `r | s` (each `n` octets) → DER; `None` if the length is wrong.
fn ecdsa_raw_to_der(raw: &[u8], n: usize) -> Option<Vec<u8>> {
    if raw.len() != 2 * n {
        return None;
    }
    let r = BigNum::from_slice(&raw[..n]).ok()?;
    let s = BigNum::from_slice(&raw[n..]).ok()?;
    EcdsaSig::from_private_components(r, s).ok()?.to_der().ok()
}

/// Just enough DER for AlgorithmIdentifiers: definite lengths up to 64 KiB,
/// one-octet tags.
mod der {
    pub const INTEGER: u8 = 0x02;
    pub const OID: u8 = 0x06;
    pub const SEQUENCE: u8 = 0x30;
    pub const NULL: &[u8] = &[0x05, 0x00];

    pub fn tlv(out: &mut Vec<u8>, tag: u8, value: &[u8]) {
        out.push(tag);
        let n = value.len();
        if n < 0x80 {
            out.push(n as u8);
        } else if n <= 0xff {
            out.extend([0x81, n as u8]);
        } else {
            out.extend([0x82, (n >> 8) as u8, n as u8]);
        }
        out.extend_from_slice(value);
    }

    pub fn oid(body: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        tlv(&mut out, OID, body);
        out
    }

    /// A non-negative INTEGER's content octets.
    pub fn uint(v: u16) -> Vec<u8> {
        let mut b: Vec<u8> = v
            .to_be_bytes()
            .into_iter()
            .skip_while(|&x| x == 0)
            .collect();
        if b.first().is_none_or(|&x| x & 0x80 != 0) {
            b.insert(0, 0);
        }
        b
    }

    pub fn read_uint(content: &[u8]) -> Option<u16> {
        let c = match content {
            [] => return None,
            [x, ..] if x & 0x80 != 0 => return None,
            [0, rest @ ..] if !rest.is_empty() => rest,
            c => c,
        };
        if c.len() > 2 {
            return None;
        }
        Some(c.iter().fold(0u16, |a, &b| (a << 8) | b as u16))
    }

    /// The unread rest of a DER value.
    #[derive(Clone, Copy)]
    pub struct Reader<'a>(pub &'a [u8]);

    impl<'a> Reader<'a> {
        pub fn is_empty(&self) -> bool {
            self.0.is_empty()
        }

        fn peek_tag(&self) -> Option<u8> {
            self.0.first().copied()
        }

        /// The next element, which must have `tag`; its content as a reader.
        pub fn expect(&mut self, tag: u8) -> Option<Reader<'a>> {
            let (&t, rest) = self.0.split_first()?;
            if t != tag {
                return None;
            }
            let (&l, mut rest) = rest.split_first()?;
            let len = match l {
                0..=0x7f => l as usize,
                0x81 => {
                    let (&a, r) = rest.split_first()?;
                    rest = r;
                    a as usize
                }
                0x82 => {
                    let (a, r) = rest.split_at_checked(2)?;
                    rest = r;
                    u16::from_be_bytes([a[0], a[1]]) as usize
                }
                _ => return None,
            };
            let (value, rest) = rest.split_at_checked(len)?;
            self.0 = rest;
            Some(Reader(value))
        }

        /// The next element if it has `tag`.
        pub fn optional(&mut self, tag: u8) -> Option<Reader<'a>> {
            if self.peek_tag() == Some(tag) {
                self.expect(tag)
            } else {
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(s: &str) -> Vec<u8> {
        hex::decode(s.replace(' ', "")).unwrap()
    }

    /// RFC 7427 Appendix A: the AlgorithmIdentifier encodings, byte for byte.
    #[test]
    fn rfc7427_appendix_a_encodings() {
        let vectors = [
            // A.1.1 – A.1.4: sha*WithRSAEncryption
            (
                "30 0d 06 09 2a 86 48 86 f7 0d 01 01 05 05 00",
                Scheme::RsaPkcs1(Hash::Sha1),
            ),
            (
                "30 0d 06 09 2a 86 48 86 f7 0d 01 01 0b 05 00",
                Scheme::RsaPkcs1(Hash::Sha256),
            ),
            (
                "30 0d 06 09 2a 86 48 86 f7 0d 01 01 0c 05 00",
                Scheme::RsaPkcs1(Hash::Sha384),
            ),
            (
                "30 0d 06 09 2a 86 48 86 f7 0d 01 01 0d 05 00",
                Scheme::RsaPkcs1(Hash::Sha512),
            ),
            // A.3: ecdsa-with-sha256/384/512
            (
                "30 0a 06 08 2a 86 48 ce 3d 04 03 02",
                Scheme::EcdsaDer(Hash::Sha256),
            ),
            (
                "30 0a 06 08 2a 86 48 ce 3d 04 03 03",
                Scheme::EcdsaDer(Hash::Sha384),
            ),
            (
                "30 0a 06 08 2a 86 48 ce 3d 04 03 04",
                Scheme::EcdsaDer(Hash::Sha512),
            ),
        ];
        for (hex, scheme) in vectors {
            let der = h(hex);
            assert_eq!(
                Scheme::from_algorithm_identifier(&der),
                Some(scheme),
                "{hex}"
            );
            assert_eq!(scheme.algorithm_identifier().unwrap(), der, "{scheme:?}");
        }
    }

    /// RFC 7427 A.4: RSASSA-PSS. A.4.3's encoding (SHA-256, salt 32) writes
    /// the DEFAULT trailerField out; we read it and emit the DER form
    /// without it.
    #[test]
    fn rfc7427_pss_encodings() {
        let a43 = h("30 46 06 09 2a 86 48 86 f7 0d 01 01 0a 30 39 a0 0f 30 0d 06 09 60 86 48 01 65 03 04 02 01 05 00 \
                     a1 1c 30 1a 06 09 2a 86 48 86 f7 0d 01 01 08 30 0d 06 09 60 86 48 01 65 03 04 02 01 05 00 \
                     a2 03 02 01 20 a3 03 02 01 01");
        let pss256 = Scheme::RsaPss {
            hash: Hash::Sha256,
            salt_len: 32,
        };
        assert_eq!(Scheme::from_algorithm_identifier(&a43), Some(pss256));
        let ours = pss256.algorithm_identifier().unwrap();
        let der = h("30 41 06 09 2a 86 48 86 f7 0d 01 01 0a 30 34 a0 0f 30 0d 06 09 60 86 48 01 65 03 04 02 01 05 00 \
                     a1 1c 30 1a 06 09 2a 86 48 86 f7 0d 01 01 08 30 0d 06 09 60 86 48 01 65 03 04 02 01 05 00 \
                     a2 03 02 01 20");
        assert_eq!(ours, der, "A.4.3 without the DEFAULT trailerField");
        assert_eq!(Scheme::from_algorithm_identifier(&ours), Some(pss256));
        // A.4.1: all defaults (SHA-1, MGF1-SHA-1, salt 20).
        let default = h("30 0d 06 09 2a 86 48 86 f7 0d 01 01 0a 30 00");
        let sha1 = Scheme::RsaPss {
            hash: Hash::Sha1,
            salt_len: 20,
        };
        assert_eq!(Scheme::from_algorithm_identifier(&default), Some(sha1));
        assert_eq!(sha1.algorithm_identifier().unwrap(), default);
        for hash in [Hash::Sha384, Hash::Sha512] {
            for salt_len in [0, 20, hash.output_len() as u16, 200] {
                let s = Scheme::RsaPss { hash, salt_len };
                let der = s.algorithm_identifier().unwrap();
                assert_eq!(Scheme::from_algorithm_identifier(&der), Some(s));
            }
        }
    }

    #[test]
    fn unknown_or_broken_algorithm_identifiers_are_refused() {
        let bad = [
            "",
            "30",
            "30 00",
            "30 0d 06 09 2a 86 48 86 f7 0d 01 01 0b 05 00 00",  // trailing byte
            "30 0e 06 09 2a 86 48 86 f7 0d 01 01 0b 05 00",     // length too long
            "30 0d 06 09 2a 86 48 86 f7 0d 01 01 04 05 00",     // md5WithRSAEncryption
            "30 0c 06 08 2a 86 48 ce 3d 04 03 02 05 00",        // ECDSA with parameters
            "30 05 06 03 2b 65 70",                             // Ed25519
            "30 0d 06 09 2a 86 48 86 f7 0d 01 01 0a 30 03 a2 01 00", // broken PSS salt
            // PSS with MGF1 over another hash than the message's
            "30 41 06 09 2a 86 48 86 f7 0d 01 01 0a 30 34 a0 0f 30 0d 06 09 60 86 48 01 65 03 04 02 01 05 00 \
             a1 1c 30 1a 06 09 2a 86 48 86 f7 0d 01 01 08 30 0d 06 09 60 86 48 01 65 03 04 02 02 05 00 \
             a2 03 02 01 20",
        ];
        for b in bad {
            assert_eq!(Scheme::from_algorithm_identifier(&h(b)), None, "{b}");
        }
        // Every truncation of a valid one.
        let good = Scheme::RsaPss {
            hash: Hash::Sha512,
            salt_len: 64,
        }
        .algorithm_identifier()
        .unwrap();
        for n in 0..good.len() {
            assert_eq!(Scheme::from_algorithm_identifier(&good[..n]), None, "{n}");
        }
        // PKCS#1 without the NULL is read as well.
        assert_eq!(
            Scheme::from_algorithm_identifier(&h("30 0b 06 09 2a 86 48 86 f7 0d 01 01 0b")),
            Some(Scheme::RsaPkcs1(Hash::Sha256))
        );
    }

    #[test]
    fn hash_ids_follow_the_iana_registry() {
        for (id, hash) in [
            (1, Hash::Sha1),
            (2, Hash::Sha256),
            (3, Hash::Sha384),
            (4, Hash::Sha512),
        ] {
            assert_eq!(hash.ike_id(), id);
            assert_eq!(Hash::from_ike_id(id), Some(hash));
        }
        // 5 is "Identity" (RFC 8420, for EdDSA), which we do not sign with.
        assert_eq!(Hash::from_ike_id(5), None);
        assert_eq!(Hash::from_ike_id(0), None);
    }

    fn schemes_for(kind: KeyKind) -> Vec<Scheme> {
        let hashes = [Hash::Sha1, Hash::Sha256, Hash::Sha384, Hash::Sha512];
        match kind {
            KeyKind::Rsa { .. } => hashes
                .iter()
                .flat_map(|&h| {
                    [
                        Scheme::RsaPkcs1(h),
                        Scheme::RsaPss {
                            hash: h,
                            salt_len: h.output_len() as u16,
                        },
                    ]
                })
                .collect(),
            KeyKind::Ec(_) => hashes
                .iter()
                .flat_map(|&h| [Scheme::EcdsaDer(h), Scheme::EcdsaRaw(h)])
                .collect(),
        }
    }

    #[test]
    fn sign_and_verify_every_scheme() {
        let data = b"InitiatorSignedOctets stand-in";
        for kind in [
            KeyKind::Rsa { bits: 2048 },
            KeyKind::Ec(Curve::P256),
            KeyKind::Ec(Curve::P384),
            KeyKind::Ec(Curve::P521),
        ] {
            let key = PrivateKey::generate(kind).unwrap();
            let other = PrivateKey::generate(kind).unwrap().public_key();
            let public = key.public_key();
            assert_eq!(public.kind(), kind);
            for scheme in schemes_for(kind) {
                let sig = key.sign(scheme, data).unwrap();
                assert!(public.verify(scheme, data, &sig), "{kind} {scheme:?}");
                assert!(!public.verify(scheme, b"other octets", &sig), "{scheme:?}");
                assert!(!other.verify(scheme, data, &sig), "{scheme:?} other key");
                let mut bad = sig.clone();
                let last = bad.len() - 1;
                bad[last] ^= 1;
                assert!(!public.verify(scheme, data, &bad), "{scheme:?} flipped bit");
                assert!(!public.verify(scheme, data, &sig[..sig.len() - 1]));
                assert!(!public.verify(scheme, data, &[]));
                if let (Scheme::EcdsaRaw(_), KeyKind::Ec(c)) = (scheme, kind) {
                    assert_eq!(sig.len(), 2 * c.field_len(), "RFC 4754 §7 r | s");
                }
            }
            // A scheme of the other key family is refused, not attempted.
            let foreign = match kind {
                KeyKind::Rsa { .. } => Scheme::EcdsaDer(Hash::Sha256),
                KeyKind::Ec(_) => Scheme::RsaPkcs1(Hash::Sha256),
            };
            assert!(key.sign(foreign, data).is_err());
            assert!(!public.verify(foreign, data, &[0; 64]));
        }
    }

    #[test]
    fn ecdsa_encodings_convert_both_ways() {
        let key = PrivateKey::generate(KeyKind::Ec(Curve::P256)).unwrap();
        let public = key.public_key();
        let der = key.sign(Scheme::EcdsaDer(Hash::Sha256), b"x").unwrap();
        let raw = ecdsa_der_to_raw(&der, 32).unwrap();
        assert_eq!(raw.len(), 64);
        assert!(public.verify(Scheme::EcdsaRaw(Hash::Sha256), b"x", &raw));
        assert_eq!(ecdsa_raw_to_der(&raw, 32).unwrap(), der);
        assert_eq!(ecdsa_raw_to_der(&raw[..63], 32), None);
    }

    #[test]
    fn keys_read_from_pem_and_der_and_never_print() {
        let key = PrivateKey::generate(KeyKind::Ec(Curve::P384)).unwrap();
        let pem = key.pkey.private_key_to_pem_pkcs8().unwrap();
        let der = key.pkey.private_key_to_der().unwrap();
        for bytes in [&pem[..], &der[..]] {
            let k = PrivateKey::from_pem_or_der(bytes).unwrap();
            assert_eq!(k.public_key(), key.public_key());
        }
        let rsa = PrivateKey::generate(KeyKind::Rsa { bits: 2048 }).unwrap();
        let pkcs1 = rsa.pkey.rsa().unwrap().private_key_to_pem().unwrap();
        assert_eq!(
            PrivateKey::from_pem_or_der(&pkcs1).unwrap().kind(),
            KeyKind::Rsa { bits: 2048 }
        );
        assert_eq!(format!("{rsa:?}"), "PrivateKey(RSA-2048, <redacted>)");

        assert_eq!(
            PrivateKey::from_pem_or_der(b"not a key").unwrap_err(),
            KeyError::Unreadable
        );
        assert_eq!(
            PrivateKey::from_pem_or_der(&pem[..pem.len() / 2]).unwrap_err(),
            KeyError::Unreadable
        );
        let encrypted = key
            .pkey
            .private_key_to_pem_pkcs8_passphrase(boring::symm::Cipher::aes_256_cbc(), b"pw")
            .unwrap();
        assert_eq!(
            PrivateKey::from_pem_or_der(&encrypted).unwrap_err(),
            KeyError::Unreadable
        );
        let small = PKey::from_rsa(boring::rsa::Rsa::generate(1024).unwrap()).unwrap();
        assert_eq!(
            PrivateKey::from_pem_or_der(&small.private_key_to_der().unwrap()).unwrap_err(),
            KeyError::RsaSize(1024)
        );
    }
}
