//! IKE_AUTH authentication (RFC 7296 §2.15): pre-shared keys, and
//! certificates with digital signatures beside them.
//!
//! - Signatures: RFC 7427 "Digital Signature" (auth method 14: an
//!   AlgorithmIdentifier names the scheme) whenever the peer announced the
//!   hashes it verifies with SIGNATURE_HASH_ALGORITHMS (RFC 7427 §4);
//!   otherwise the classic methods, RSA (1, PKCS#1 v1.5 with SHA-1) and
//!   ECDSA (9/10/11, RFC 4754). Any of them is accepted from the peer.
//! - CERT (§3.6): we send our end-entity certificate first, then its
//!   intermediates; the peer's first X.509 CERT carries the key its AUTH
//!   verifies with, the others help build the chain.
//! - CERTREQ (§3.7): the SHA-1 hashes of our CAs' public keys. strongSwan
//!   sends its certificate only when asked (`send_cert = ifasked`), so the
//!   responder asks in IKE_SA_INIT and the initiator in IKE_AUTH.
//! - Trust: the peer's chain must end at one of the tunnel's CAs and be
//!   valid at the endpoint's wall-clock time, and the ID it sent must be
//!   the certificate's subject DN or one of its subjectAltNames (RFC 4945
//!   §3.1): the certificate vouches for the identity that selected the
//!   tunnel.
//!
//! Both signing and verification sign the same octets the PSK MAC covers
//! ([`IkeKeys::signed_octets`]).

use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

use anyhub_crypto::secret::ct_eq;
use anyhub_crypto::sig::{Curve, Hash, KeyKind, PrivateKey, Scheme};
use anyhub_crypto::x509::{self, Certificate, TrustAnchors, MAX_CHAIN_DEPTH};
use anyhub_crypto::Secret;

use crate::config::TunnelConfig;
use crate::keys::IkeKeys;
use crate::wire::registry::{AuthMethod, CertEncoding, IdType, NotifyType, ProtocolId};
use crate::wire::{Auth, Cert, CertReq, Id, Notify, Payload};

/// Most CERT payloads of a peer we look at: its end-entity certificate and
/// a chain up to [`MAX_CHAIN_DEPTH`]. Further ones are ignored, which bounds
/// the parsing a peer can cause.
pub const MAX_PEER_CERTS: usize = 1 + MAX_CHAIN_DEPTH;

/// The hashes we verify RFC 7427 signatures with, in our order of
/// preference when we sign: announced in SIGNATURE_HASH_ALGORITHMS.
/// (SHA-1 only in the classic RSA method, for peers without RFC 7427.)
const OUR_HASHES: [Hash; 3] = [Hash::Sha256, Hash::Sha384, Hash::Sha512];

/// How a tunnel's two sides authenticate (the same method both ways).
#[derive(Clone)]
pub enum TunnelAuth {
    /// A pre-shared key (`Secret`: zeroized, never printed).
    Psk(Secret),
    /// Certificates and signatures.
    Pubkey(Arc<PubkeyAuth>),
}

impl fmt::Debug for TunnelAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TunnelAuth::Psk(s) => f.debug_tuple("Psk").field(s).finish(),
            TunnelAuth::Pubkey(p) => f.debug_tuple("Pubkey").field(p).finish(),
        }
    }
}

/// Our certificate, its key, and whom we trust.
pub struct PubkeyAuth {
    /// Our end-entity certificate, the first CERT we send.
    pub cert: Certificate,
    /// Intermediate CA certificates sent after it (may be empty).
    pub chain: Vec<Certificate>,
    /// The private key of `cert`. `Debug` shows its kind only.
    key: PrivateKey,
    /// The CAs a peer's certificate must chain to.
    pub cas: TrustAnchors,
}

/// Why [`PubkeyAuth::new`] refused a credential set.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PubkeyError {
    #[error("the private key does not belong to the certificate ({0})")]
    KeyMismatch(String),
    #[error("the certificate's keyUsage does not allow signing (digitalSignature): peers would refuse it")]
    CannotSign,
    #[error("certificate: {0}")]
    Cert(String),
}

impl PubkeyAuth {
    /// Checks that `key` is `cert`'s and that `cert` may sign IKE AUTH.
    pub fn new(
        cert: Certificate,
        chain: Vec<Certificate>,
        key: PrivateKey,
        cas: TrustAnchors,
    ) -> Result<PubkeyAuth, PubkeyError> {
        let public = cert
            .public_key()
            .map_err(|e| PubkeyError::Cert(e.to_string()))?;
        if public != key.public_key() {
            return Err(PubkeyError::KeyMismatch(cert.subject()));
        }
        if !cert.may_sign_ike() {
            return Err(PubkeyError::CannotSign);
        }
        Ok(PubkeyAuth {
            cert,
            chain,
            key,
            cas,
        })
    }

    /// Like [`PubkeyAuth::new`] without the checks: for tests that need a
    /// peer whose signatures do not verify (a key that is not its
    /// certificate's). Never used by the daemon.
    #[doc(hidden)]
    pub fn new_unchecked(
        cert: Certificate,
        chain: Vec<Certificate>,
        key: PrivateKey,
        cas: TrustAnchors,
    ) -> PubkeyAuth {
        PubkeyAuth {
            cert,
            chain,
            key,
            cas,
        }
    }

    /// The kind of our key.
    pub fn key_kind(&self) -> KeyKind {
        self.key.kind()
    }
}

impl fmt::Debug for PubkeyAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PubkeyAuth")
            .field("cert", &self.cert)
            .field("chain", &self.chain)
            .field("key", &self.key)
            .field("cas", &self.cas)
            .finish()
    }
}

/// Whether `id` is the certificate's subject DN or one of its
/// subjectAltNames of the ID's type (RFC 4945 §3.1): FQDN ↔ dNSName,
/// RFC822 ↔ rfc822Name (both without regard to case), IPv4/IPv6 ↔
/// iPAddress. KEY_ID names no certificate field and never matches.
pub fn id_in_certificate(id: &Id, cert: &Certificate) -> bool {
    let text = || std::str::from_utf8(&id.data).ok();
    match id.ty {
        IdType::DER_ASN1_DN => x509::dn_eq(&id.data, &cert.subject_der()),
        IdType::FQDN => text().is_some_and(|n| {
            cert.dns_names()
                .iter()
                .any(|d| d.eq_ignore_ascii_case(n.trim_end_matches('.')))
        }),
        IdType::RFC822_ADDR => {
            text().is_some_and(|n| cert.emails().iter().any(|e| e.eq_ignore_ascii_case(n)))
        }
        IdType::IPV4_ADDR | IdType::IPV6_ADDR => {
            cert.ip_addresses().iter().any(|a| a[..] == id.data[..])
        }
        _ => false,
    }
}

/// The hashes a peer announced in SIGNATURE_HASH_ALGORITHMS, as a set of
/// [`Hash`]es we implement; `None` if it sent no such notify (it then
/// only knows the classic methods).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct PeerHashes(u8);

impl PeerHashes {
    fn contains(self, h: Hash) -> bool {
        self.0 & (1 << h.ike_id()) != 0
    }
}

/// RFC 7427 §4: the peer's SIGNATURE_HASH_ALGORITHMS, if it sent one
/// (a list of 16-bit hash algorithm numbers; unknown numbers are skipped).
pub(crate) fn peer_hashes(payloads: &[Payload]) -> Option<PeerHashes> {
    let n = payloads.iter().find_map(|p| match p {
        Payload::Notify(n) if n.ty == NotifyType::SIGNATURE_HASH_ALGORITHMS => Some(n),
        _ => None,
    })?;
    let mut set = 0u8;
    for pair in n.data.chunks_exact(2) {
        if let Some(h) = Hash::from_ike_id(u16::from_be_bytes([pair[0], pair[1]])) {
            set |= 1 << h.ike_id();
        }
    }
    Some(PeerHashes(set))
}

/// Our SIGNATURE_HASH_ALGORITHMS notify (RFC 7427 §4): SHA2-256/384/512.
pub(crate) fn hash_algorithms_notify() -> Payload {
    Payload::Notify(Notify {
        protocol: ProtocolId::NONE,
        spi: vec![],
        ty: NotifyType::SIGNATURE_HASH_ALGORITHMS,
        data: OUR_HASHES
            .iter()
            .flat_map(|h| h.ike_id().to_be_bytes())
            .collect(),
    })
}

fn certreq(anchors: &[&TrustAnchors]) -> Option<Payload> {
    let mut data: Vec<u8> = Vec::new();
    for a in anchors {
        for h in a.certreq_data().chunks(20) {
            if !data.chunks(20).any(|d| d == h) {
                data.extend_from_slice(h);
            }
        }
    }
    (!data.is_empty()).then_some(Payload::CertReq(CertReq {
        encoding: CertEncoding::X509_SIGNATURE,
        data,
    }))
}

/// What the responder adds to its IKE_SA_INIT response when any tunnel
/// uses certificates (it does not know the tunnel yet): its
/// SIGNATURE_HASH_ALGORITHMS if the initiator sent one (RFC 7427 §4), and a
/// CERTREQ for every such tunnel's CAs (§3.7), without which strongSwan
/// does not send its certificate.
pub(crate) fn init_response_payloads(
    tunnels: &[Arc<TunnelConfig>],
    request: &[Payload],
) -> Vec<Payload> {
    let anchors: Vec<&TrustAnchors> = tunnels
        .iter()
        .filter_map(|t| match &t.auth {
            TunnelAuth::Pubkey(p) => Some(&p.cas),
            TunnelAuth::Psk(_) => None,
        })
        .collect();
    if anchors.is_empty() {
        return Vec::new();
    }
    let mut out = Vec::new();
    if peer_hashes(request).is_some() {
        out.push(hash_algorithms_notify());
    }
    out.extend(certreq(&anchors));
    out
}

/// What the initiator adds to IKE_SA_INIT for a certificate tunnel.
pub(crate) fn init_request_payloads(tunnel: &TunnelConfig) -> Vec<Payload> {
    match tunnel.auth {
        TunnelAuth::Pubkey(_) => vec![hash_algorithms_notify()],
        TunnelAuth::Psk(_) => Vec::new(),
    }
}

/// Our CERT payloads (end entity first, §3.6) and, for the initiator, a
/// CERTREQ for the tunnel's CAs. Empty for PSK tunnels.
pub(crate) fn certificate_payloads(tunnel: &TunnelConfig, with_certreq: bool) -> Vec<Payload> {
    let TunnelAuth::Pubkey(p) = &tunnel.auth else {
        return Vec::new();
    };
    let mut out: Vec<Payload> = std::iter::once(&p.cert)
        .chain(&p.chain)
        .map(|c| {
            Payload::Cert(Cert {
                encoding: CertEncoding::X509_SIGNATURE,
                data: c.der().to_vec(),
            })
        })
        .collect();
    if with_certreq {
        out.extend(certreq(&[&p.cas]));
    }
    out
}

/// How we sign with `kind` for a peer that announced `peer` (RFC 7427
/// §4: a hash from the peer's list; without a list, the classic method).
fn signing_scheme(kind: KeyKind, peer: Option<PeerHashes>) -> (AuthMethod, Scheme) {
    let common = |first: Hash| {
        let peer = peer?;
        std::iter::once(first)
            .chain(OUR_HASHES)
            .find(|&h| peer.contains(h))
    };
    match kind {
        KeyKind::Rsa { .. } => match common(Hash::Sha256) {
            Some(h) => (AuthMethod::DIGITAL_SIGNATURE, Scheme::RsaPkcs1(h)),
            // RFC 7296 §3.8 method 1: RSASSA-PKCS1-v1_5 with SHA-1.
            None => (AuthMethod::RSA_SIG, Scheme::RsaPkcs1(Hash::Sha1)),
        },
        KeyKind::Ec(c) => match common(c.hash()) {
            Some(h) => (AuthMethod::DIGITAL_SIGNATURE, Scheme::EcdsaDer(h)),
            None => (classic_ecdsa_method(c), Scheme::EcdsaRaw(c.hash())),
        },
    }
}

/// RFC 4754 §3: one method per curve, with its hash.
fn classic_ecdsa_method(c: Curve) -> AuthMethod {
    match c {
        Curve::P256 => AuthMethod::ECDSA_SHA256_P256,
        Curve::P384 => AuthMethod::ECDSA_SHA384_P384,
        Curve::P521 => AuthMethod::ECDSA_SHA512_P521,
    }
}

/// Our AUTH payload (RFC 7296 §2.15) for `id`, signed (or MACed) over the
/// octets of side `initiator`. `peer` is what the other side announced in
/// SIGNATURE_HASH_ALGORITHMS. `None` only if BoringSSL fails to sign.
#[allow(clippy::too_many_arguments)]
pub(crate) fn own_auth(
    tunnel: &TunnelConfig,
    keys: &IkeKeys,
    initiator: bool,
    real_message: &[u8],
    other_nonce: &[u8],
    id: &Id,
    peer: Option<PeerHashes>,
) -> Option<Auth> {
    match &tunnel.auth {
        TunnelAuth::Psk(psk) => Some(Auth {
            method: AuthMethod::SHARED_KEY_MIC,
            data: keys
                .psk_auth(psk, initiator, real_message, other_nonce, id)
                .as_bytes()
                .to_vec(),
        }),
        TunnelAuth::Pubkey(p) => {
            let octets = keys.signed_octets(initiator, real_message, other_nonce, id);
            let (method, scheme) = signing_scheme(p.key.kind(), peer);
            let sig = p.key.sign(scheme, &octets).ok()?;
            let data = match scheme.algorithm_identifier() {
                // RFC 7427 §3: | ASN.1 Length | AlgorithmIdentifier | Signature |
                Some(alg) if method == AuthMethod::DIGITAL_SIGNATURE => {
                    let len = u8::try_from(alg.len()).ok()?;
                    [&[len][..], &alg, &sig].concat()
                }
                _ => sig,
            };
            Some(Auth { method, data })
        }
    }
}

/// Why the peer's AUTH was not accepted: for the debug log and the
/// `auth_failed` counter; the peer only ever hears AUTHENTICATION_FAILED.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum AuthError {
    #[error("auth method {0:?} does not fit the tunnel's authentication")]
    WrongMethod(AuthMethod),
    #[error("the pre-shared key MAC does not verify")]
    PskMismatch,
    #[error("no X.509 certificate (CERT payload) from the peer")]
    NoCertificate,
    #[error("the peer's certificate does not parse")]
    BadCertificate,
    #[error("the peer's certificate is not trusted: {0}")]
    Untrusted(&'static str),
    #[error("the peer's certificate ({0}) may not sign (keyUsage, RFC 4945 §5.1.3.2)")]
    KeyUsage(String),
    #[error("the peer's ID {0} is not in its certificate ({1})")]
    IdNotInCertificate(String, String),
    #[error("unsupported signature algorithm or key")]
    UnsupportedSignature,
    #[error("the signature does not verify")]
    BadSignature,
}

/// Checks the peer's AUTH over the octets of side `peer_is_initiator`,
/// with the certificate it sent (its CERT payloads among `payloads`) when
/// the tunnel uses certificates. `at` is the wall-clock time the chain
/// must be valid at.
#[allow(clippy::too_many_arguments)]
pub(crate) fn check_peer(
    tunnel: &TunnelConfig,
    keys: &IkeKeys,
    peer_is_initiator: bool,
    real_message: &[u8],
    other_nonce: &[u8],
    id: &Id,
    auth: &Auth,
    payloads: &[Payload],
    at: SystemTime,
) -> Result<(), AuthError> {
    let p = match &tunnel.auth {
        TunnelAuth::Psk(psk) => {
            if auth.method != AuthMethod::SHARED_KEY_MIC {
                return Err(AuthError::WrongMethod(auth.method));
            }
            let expected = keys.psk_auth(psk, peer_is_initiator, real_message, other_nonce, id);
            return if ct_eq(expected.as_bytes(), &auth.data) {
                Ok(())
            } else {
                Err(AuthError::PskMismatch)
            };
        }
        TunnelAuth::Pubkey(p) => p,
    };
    let is_signature = matches!(
        auth.method,
        AuthMethod::RSA_SIG
            | AuthMethod::ECDSA_SHA256_P256
            | AuthMethod::ECDSA_SHA384_P384
            | AuthMethod::ECDSA_SHA512_P521
            | AuthMethod::DIGITAL_SIGNATURE
    );
    if !is_signature {
        return Err(AuthError::WrongMethod(auth.method));
    }
    let mut certs = payloads
        .iter()
        .filter_map(|p| match p {
            Payload::Cert(c) if c.encoding == CertEncoding::X509_SIGNATURE => Some(&c.data),
            _ => None,
        })
        .take(MAX_PEER_CERTS)
        .map(|der| Certificate::from_der(der).map_err(|_| AuthError::BadCertificate));
    let leaf = certs.next().ok_or(AuthError::NoCertificate)??;
    let intermediates = certs.collect::<Result<Vec<_>, _>>()?;
    p.cas
        .verify(&leaf, &intermediates, at)
        .map_err(|e| AuthError::Untrusted(e.0))?;
    if !leaf.may_sign_ike() {
        return Err(AuthError::KeyUsage(leaf.subject()));
    }
    if !id_in_certificate(id, &leaf) {
        return Err(AuthError::IdNotInCertificate(
            crate::Identity::from_wire(id).to_string(),
            leaf.subject(),
        ));
    }
    let public = leaf
        .public_key()
        .map_err(|_| AuthError::UnsupportedSignature)?;
    let (scheme, sig) = peer_scheme(auth, public.kind())?;
    let octets = keys.signed_octets(peer_is_initiator, real_message, other_nonce, id);
    if public.verify(scheme, &octets, sig) {
        Ok(())
    } else {
        Err(AuthError::BadSignature)
    }
}

/// The scheme and the bare signature of the peer's AUTH, checked against
/// its key: RFC 7427 §3 for method 14 (only hashes we announced), RFC 7296
/// §3.8 and RFC 4754 §3 for the classic ones (the method fixes the curve).
fn peer_scheme(auth: &Auth, kind: KeyKind) -> Result<(Scheme, &[u8]), AuthError> {
    let unsupported = AuthError::UnsupportedSignature;
    let (scheme, sig) = match auth.method {
        AuthMethod::DIGITAL_SIGNATURE => {
            let (&len, rest) = auth.data.split_first().ok_or(AuthError::BadSignature)?;
            let (alg, sig) = rest
                .split_at_checked(len as usize)
                .ok_or(AuthError::BadSignature)?;
            let scheme = Scheme::from_algorithm_identifier(alg).ok_or(unsupported.clone())?;
            if !OUR_HASHES.contains(&scheme.hash()) {
                return Err(unsupported);
            }
            (scheme, sig)
        }
        AuthMethod::RSA_SIG => (Scheme::RsaPkcs1(Hash::Sha1), &auth.data[..]),
        m => {
            let KeyKind::Ec(c) = kind else {
                return Err(unsupported);
            };
            if classic_ecdsa_method(c) != m {
                return Err(unsupported);
            }
            (Scheme::EcdsaRaw(c.hash()), &auth.data[..])
        }
    };
    if !scheme.fits(kind) {
        return Err(unsupported);
    }
    Ok((scheme, sig))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::{Cipher, IkeSuite};
    use anyhub_crypto::aead::AeadAlg;
    use anyhub_crypto::prf::Prf;
    use anyhub_crypto::x509::test_pki::{self, Spec};
    use std::time::Duration;

    fn keys() -> IkeKeys {
        let suite = IkeSuite {
            prf: Prf::HmacSha256,
            cipher: Cipher::Aead(AeadAlg::AesGcm16_256),
            integ: None,
        };
        IkeKeys::derive(
            suite,
            &Secret::from_slice(&[7; 32]),
            &[1; 32],
            &[2; 32],
            1,
            2,
        )
    }

    struct Pki {
        ca: test_pki::Issued,
    }

    impl Pki {
        fn new() -> Pki {
            Pki {
                ca: test_pki::ca("C=CH, O=anyhub, CN=Test CA", KeyKind::Ec(Curve::P256)),
            }
        }

        fn tunnel(&self, spec: &Spec, cas: &[&test_pki::Issued]) -> TunnelConfig {
            let me = test_pki::issue(Some(&self.ca), spec);
            let anchors = TrustAnchors::new(cas.iter().map(|c| c.cert.clone()).collect()).unwrap();
            let auth = PubkeyAuth::new(me.cert, vec![], me.key, anchors).unwrap();
            TunnelConfig {
                id: "t".into(),
                local_id: crate::Identity::parse("fqdn:x").unwrap(),
                remote_id: crate::Identity::parse("fqdn:y").unwrap(),
                auth: TunnelAuth::Pubkey(Arc::new(auth)),
                ike_proposals: vec![],
                esp_proposals: vec![],
                local_ts: vec![],
                remote_ts: vec![],
                ike_lifetime: Duration::from_secs(3600),
                child_lifetime: Duration::from_secs(3600),
                remote_address: None,
                initiate: false,
                dpd_delay: None,
                dpd_action: crate::config::DpdAction::Clear,
                reauth_time: None,
            }
        }
    }

    fn fqdn(s: &str) -> Id {
        crate::Identity::parse(&format!("fqdn:{s}"))
            .unwrap()
            .to_wire()
    }

    /// Both sides' view of one AUTH: `signer` signs for `id`, `checker`
    /// checks it with what `signer` sends.
    fn exchange(
        signer: &TunnelConfig,
        checker: &TunnelConfig,
        id: &Id,
        peer: Option<PeerHashes>,
    ) -> (Auth, Result<(), AuthError>) {
        let k = keys();
        let auth = own_auth(signer, &k, true, b"IKE_SA_INIT", b"nonce-r", id, peer).unwrap();
        let payloads = certificate_payloads(signer, true);
        let r = check_peer(
            checker,
            &k,
            true,
            b"IKE_SA_INIT",
            b"nonce-r",
            id,
            &auth,
            &payloads,
            SystemTime::now(),
        );
        (auth, r)
    }

    const ALL: Option<PeerHashes> = Some(PeerHashes(0b11110));

    #[test]
    fn every_key_kind_and_method_verifies() {
        let pki = Pki::new();
        for kind in [
            KeyKind::Rsa { bits: 2048 },
            KeyKind::Ec(Curve::P256),
            KeyKind::Ec(Curve::P384),
            KeyKind::Ec(Curve::P521),
        ] {
            let spec = Spec {
                dns: &["site.example.net"],
                key: kind,
                ..Spec::new("CN=site")
            };
            let site = pki.tunnel(&spec, &[&pki.ca]);
            let hub = pki.tunnel(&Spec::new("CN=hub"), &[&pki.ca]);
            let id = fqdn("site.example.net");
            // RFC 7427 when the peer announced hashes, classic otherwise.
            let (auth, r) = exchange(&site, &hub, &id, ALL);
            r.unwrap();
            assert_eq!(auth.method, AuthMethod::DIGITAL_SIGNATURE, "{kind}");
            let (auth, r) = exchange(&site, &hub, &id, None);
            r.unwrap();
            let classic = match kind {
                KeyKind::Rsa { .. } => AuthMethod::RSA_SIG,
                KeyKind::Ec(c) => classic_ecdsa_method(c),
            };
            assert_eq!(auth.method, classic, "{kind}");
            // A peer that announced only SHA-512 gets SHA-512.
            let only512 = Some(PeerHashes(1 << Hash::Sha512.ike_id()));
            let (auth, r) = exchange(&site, &hub, &id, only512);
            r.unwrap();
            let alg_len = auth.data[0] as usize;
            let scheme = Scheme::from_algorithm_identifier(&auth.data[1..1 + alg_len]).unwrap();
            assert_eq!(scheme.hash(), Hash::Sha512);
        }
    }

    #[test]
    fn the_method_14_layout_is_rfc7427s() {
        let pki = Pki::new();
        let spec = Spec {
            dns: &["site.example.net"],
            key: KeyKind::Rsa { bits: 2048 },
            ..Spec::new("CN=site")
        };
        let site = pki.tunnel(&spec, &[&pki.ca]);
        let (auth, _) = exchange(&site, &site, &fqdn("site.example.net"), ALL);
        // | 15 | sha256WithRSAEncryption | 256-octet signature |
        assert_eq!(auth.data[0], 15);
        assert_eq!(
            auth.data[1..16],
            [
                0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0b, 0x05,
                0x00
            ]
        );
        assert_eq!(auth.data.len(), 16 + 256);
    }

    #[test]
    fn refusals() {
        let pki = Pki::new();
        let spec = Spec {
            dns: &["site.example.net"],
            ..Spec::new("CN=site")
        };
        let site = pki.tunnel(&spec, &[&pki.ca]);
        let hub = pki.tunnel(&Spec::new("CN=hub"), &[&pki.ca]);
        let id = fqdn("site.example.net");
        let k = keys();
        let at = SystemTime::now();
        let check = |auth: &Auth, payloads: &[Payload], id: &Id, at: SystemTime| {
            check_peer(
                &hub,
                &k,
                true,
                b"IKE_SA_INIT",
                b"nonce-r",
                id,
                auth,
                payloads,
                at,
            )
        };
        let auth = own_auth(&site, &k, true, b"IKE_SA_INIT", b"nonce-r", &id, ALL).unwrap();
        let certs = certificate_payloads(&site, false);
        check(&auth, &certs, &id, at).unwrap();

        // No certificate.
        assert_eq!(check(&auth, &[], &id, at), Err(AuthError::NoCertificate));
        // An ID the certificate does not name.
        let other = fqdn("other.example.net");
        assert!(matches!(
            check(&auth, &certs, &other, at),
            Err(AuthError::IdNotInCertificate(..))
        ));
        // Expired by the time it is checked.
        assert!(matches!(
            check(&auth, &certs, &id, at + Duration::from_secs(400 * 86_400)),
            Err(AuthError::Untrusted(_))
        ));
        // A flipped bit in the signature, or signed over other octets.
        let mut bad = auth.clone();
        *bad.data.last_mut().unwrap() ^= 1;
        assert_eq!(check(&bad, &certs, &id, at), Err(AuthError::BadSignature));
        let wrong = own_auth(&site, &k, false, b"IKE_SA_INIT", b"nonce-r", &id, ALL).unwrap();
        assert_eq!(check(&wrong, &certs, &id, at), Err(AuthError::BadSignature));
        // A PSK MAC on a certificate tunnel.
        let psk = Auth {
            method: AuthMethod::SHARED_KEY_MIC,
            data: vec![0; 32],
        };
        assert!(matches!(
            check(&psk, &certs, &id, at),
            Err(AuthError::WrongMethod(_))
        ));
        // The classic ECDSA method for another curve than the key's.
        let p256 = own_auth(&site, &k, true, b"IKE_SA_INIT", b"nonce-r", &id, None).unwrap();
        let lying = Auth {
            method: AuthMethod::ECDSA_SHA384_P384,
            ..p256
        };
        assert_eq!(
            check(&lying, &certs, &id, at),
            Err(AuthError::UnsupportedSignature)
        );
        // Garbage where the AlgorithmIdentifier should be, and truncations.
        for n in 0..auth.data.len() {
            let t = Auth {
                method: auth.method,
                data: auth.data[..n].to_vec(),
            };
            assert!(check(&t, &certs, &id, at).is_err(), "{n}");
        }
        // Garbage in CERT.
        let junk = [Payload::Cert(Cert {
            encoding: CertEncoding::X509_SIGNATURE,
            data: vec![0x30, 0x03, 1, 2, 3],
        })];
        assert_eq!(check(&auth, &junk, &id, at), Err(AuthError::BadCertificate));

        // A certificate from a CA the hub does not trust.
        let evil = Pki::new();
        let intruder = evil.tunnel(&spec, &[&evil.ca]);
        let auth = own_auth(&intruder, &k, true, b"IKE_SA_INIT", b"nonce-r", &id, ALL).unwrap();
        assert!(matches!(
            check(&auth, &certificate_payloads(&intruder, false), &id, at),
            Err(AuthError::Untrusted(_))
        ));
    }

    #[test]
    fn ids_match_subject_and_alt_names() {
        let ca = test_pki::ca("CN=CA", KeyKind::Ec(Curve::P256));
        let leaf = test_pki::issue(
            Some(&ca),
            &Spec {
                dns: &["Site.Example.net"],
                email: &["ops@example.net"],
                ip: &["192.0.2.7", "2001:db8::7"],
                ..Spec::new("C=CH, O=anyhub, CN=site")
            },
        );
        let id = |s: &str| crate::Identity::parse(s).unwrap().to_wire();
        for yes in [
            "C=CH, O=anyhub, CN=site",
            "c=ch, o=ANYHUB, cn=site",
            "fqdn:site.example.net",
            "email:OPS@example.net",
            "ipv4:192.0.2.7",
            "ipv6:2001:db8::7",
        ] {
            assert!(id_in_certificate(&id(yes), &leaf.cert), "{yes}");
        }
        for no in [
            "C=CH, O=anyhub, CN=other",
            "fqdn:site",
            "fqdn:site.example.net.evil",
            "email:ops@example.org",
            "ipv4:192.0.2.8",
            "keyid:site",
            // The CN is not a dNSName (RFC 4945 §3.1.3: no CN matching).
            "fqdn:CN=site",
        ] {
            assert!(!id_in_certificate(&id(no), &leaf.cert), "{no}");
        }
    }

    #[test]
    fn certreq_and_hash_notify() {
        let pki = Pki::new();
        let other = test_pki::ca("CN=Other CA", KeyKind::Rsa { bits: 2048 });
        let t = pki.tunnel(&Spec::new("CN=hub"), &[&pki.ca, &other]);
        let p = certificate_payloads(&t, true);
        assert!(matches!(&p[0], Payload::Cert(c) if c.encoding == CertEncoding::X509_SIGNATURE));
        let Payload::CertReq(r) = &p[1] else {
            panic!("{p:?}")
        };
        assert_eq!(r.data.len(), 40, "two SHA-1 hashes");
        assert_eq!(&r.data[..20], pki.ca.cert.spki_sha1().unwrap());
        let Payload::Notify(n) = hash_algorithms_notify() else {
            unreachable!()
        };
        assert_eq!(n.data, [0, 2, 0, 3, 0, 4]);
        // Unknown numbers (5 = Identity, 99) are skipped.
        let announced = [Payload::Notify(Notify {
            data: vec![0, 5, 0, 4, 0, 99],
            ..n
        })];
        let set = peer_hashes(&announced).unwrap();
        assert!(set.contains(Hash::Sha512) && !set.contains(Hash::Sha256));
        assert_eq!(peer_hashes(&[]), None);
    }

    #[test]
    fn the_key_must_be_the_certificates() {
        let ca = test_pki::ca("CN=CA", KeyKind::Ec(Curve::P256));
        let a = test_pki::issue(Some(&ca), &Spec::new("CN=a"));
        let b = test_pki::issue(Some(&ca), &Spec::new("CN=b"));
        let anchors = TrustAnchors::new(vec![ca.cert.clone()]).unwrap();
        assert!(matches!(
            PubkeyAuth::new(a.cert.clone(), vec![], b.key, anchors.clone()),
            Err(PubkeyError::KeyMismatch(_))
        ));
        let enc = test_pki::issue(
            Some(&ca),
            &Spec {
                encipher_only: true,
                ..Spec::new("CN=enc")
            },
        );
        assert_eq!(
            PubkeyAuth::new(enc.cert, vec![], enc.key, anchors.clone()).unwrap_err(),
            PubkeyError::CannotSign
        );
        let ok = PubkeyAuth::new(a.cert, vec![], a.key, anchors).unwrap();
        let dbg = format!("{:?}", TunnelAuth::Pubkey(Arc::new(ok)));
        assert!(dbg.contains("PrivateKey(ECDSA-P256, <redacted>)"), "{dbg}");
    }
}
