//! X.509 certificates for IKEv2 (RFC 7296 §3.6, §3.7; RFC 4945): reading
//! them, validating a peer's chain against configured trust anchors with
//! BoringSSL's verifier (signatures, validity, basicConstraints, path
//! length), the names a certificate vouches for (subject DN and
//! subjectAltNames), and the CERTREQ hashes of our CAs.
//!
//! Also distinguished names in strongSwan's text syntax
//! (`C=CH, O=strongSwan, CN=site`) for `ID_DER_ASN1_DN` identities.
//!
//! Validation never reads the clock: the caller says at which time
//! (`SystemTime`) a chain must be valid.

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use boring::asn1::{Asn1Time, Asn1Type};
use boring::nid::Nid;
use boring::stack::Stack;
use boring::x509::store::{X509Store, X509StoreBuilder};
use boring::x509::verify::X509VerifyFlags;
use boring::x509::{X509Name, X509StoreContext, X509};

use crate::sig::{KeyError, PublicKey};

/// Longest chain we build from a peer's certificate to a trust anchor
/// (certificates, leaf excluded): bounds the signature checks a peer can
/// cause. Real IKE deployments use one or two intermediates.
pub const MAX_CHAIN_DEPTH: usize = 8;

/// A parsed X.509 certificate and its DER encoding.
#[derive(Clone)]
pub struct Certificate {
    x509: X509,
    der: Vec<u8>,
}

/// Why a certificate (or a DN) was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CertError {
    /// Not a DER certificate, nor PEM holding one.
    #[error("not an X.509 certificate (PEM or DER)")]
    Unreadable,
    /// PEM with no certificate in it.
    #[error("no certificate in the file")]
    Empty,
    /// The certificate's public key is not one we can use.
    #[error("certificate key: {0}")]
    Key(KeyError),
    /// Given as a CA but has no basicConstraints CA:TRUE.
    #[error("'{0}' is not a CA certificate (no basicConstraints CA:TRUE)")]
    NotCa(String),
    /// A distinguished name in text form that does not parse.
    #[error("{0}")]
    Dn(String),
}

/// Why a peer's chain did not validate: BoringSSL's reason, e.g.
/// "certificate has expired" or "unable to get local issuer certificate".
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ChainError(pub &'static str);

impl Certificate {
    /// Parses one DER certificate.
    pub fn from_der(der: &[u8]) -> Result<Certificate, CertError> {
        let x509 = X509::from_der(der).map_err(|_| CertError::Unreadable)?;
        // Keep our own re-encoding: what we send and hash is what we parsed.
        let der = x509.to_der().map_err(|_| CertError::Unreadable)?;
        Ok(Certificate { x509, der })
    }

    /// Every certificate of a PEM file (in file order), or the one
    /// certificate of a DER file.
    pub fn parse_pem_or_der(bytes: &[u8]) -> Result<Vec<Certificate>, CertError> {
        if bytes.windows(11).any(|w| w == b"-----BEGIN ") {
            let all = X509::stack_from_pem(bytes).map_err(|_| CertError::Unreadable)?;
            if all.is_empty() {
                return Err(CertError::Empty);
            }
            all.into_iter()
                .map(|x| Certificate::from_der(&x.to_der().map_err(|_| CertError::Unreadable)?))
                .collect()
        } else {
            Ok(vec![Certificate::from_der(bytes)?])
        }
    }

    /// The DER encoding (what a CERT payload carries, RFC 7296 §3.6).
    pub fn der(&self) -> &[u8] {
        &self.der
    }

    /// PEM encoding.
    pub fn to_pem(&self) -> Vec<u8> {
        self.x509.to_pem().expect("a parsed certificate re-encodes")
    }

    /// The subject's DER `Name` (what an ID_DER_ASN1_DN identity carries).
    pub fn subject_der(&self) -> Vec<u8> {
        self.x509
            .subject_name()
            .to_der()
            .expect("a parsed name re-encodes")
    }

    /// The subject in text form, for logs and errors.
    pub fn subject(&self) -> String {
        dn_to_text(&self.subject_der()).unwrap_or_else(|| "(unprintable DN)".into())
    }

    /// The subject public key.
    pub fn public_key(&self) -> Result<PublicKey, CertError> {
        let der = self
            .x509
            .public_key()
            .and_then(|k| k.public_key_to_der())
            .map_err(|_| CertError::Unreadable)?;
        PublicKey::from_spki_der(&der).map_err(CertError::Key)
    }

    /// subjectAltName dNSNames.
    pub fn dns_names(&self) -> Vec<String> {
        self.alt_names(|g| g.dnsname().map(str::to_string))
    }

    /// subjectAltName rfc822Names.
    pub fn emails(&self) -> Vec<String> {
        self.alt_names(|g| g.email().map(str::to_string))
    }

    /// subjectAltName iPAddresses (4 or 16 octets).
    pub fn ip_addresses(&self) -> Vec<Vec<u8>> {
        self.alt_names(|g| g.ipaddress().map(<[u8]>::to_vec))
    }

    fn alt_names<T>(&self, f: impl Fn(&boring::x509::GeneralNameRef) -> Option<T>) -> Vec<T> {
        self.x509
            .subject_alt_names()
            .map(|names| names.iter().filter_map(f).collect())
            .unwrap_or_default()
    }

    /// Whether basicConstraints says CA:TRUE.
    pub fn is_ca(&self) -> bool {
        crate::sys::x509_is_ca(&self.x509)
    }

    /// RFC 4945 §5.1.3.2: a keyUsage extension, if present, must allow
    /// digitalSignature or nonRepudiation for the key to sign AUTH
    /// payloads (strongSwan enforces the same).
    pub fn may_sign_ike(&self) -> bool {
        const DIGITAL_SIGNATURE: u32 = 0x80;
        const NON_REPUDIATION: u32 = 0x40;
        match crate::sys::x509_key_usage(&self.x509) {
            None => true,
            Some(ku) => ku & (DIGITAL_SIGNATURE | NON_REPUDIATION) != 0,
        }
    }

    /// SHA-1 of the SubjectPublicKeyInfo: how a CERTREQ names a CA
    /// (RFC 7296 §3.7).
    pub fn spki_sha1(&self) -> Result<[u8; 20], CertError> {
        let spki = self
            .x509
            .public_key()
            .and_then(|k| k.public_key_to_der())
            .map_err(|_| CertError::Unreadable)?;
        Ok(crate::prf::sha1(&[&spki]))
    }

    /// Whether `at` lies within notBefore..=notAfter.
    pub fn valid_at(&self, at: SystemTime) -> bool {
        let Ok(t) = Asn1Time::from_unix(unix_time(at) as _) else {
            return false;
        };
        self.x509.not_before() <= t && self.x509.not_after() >= t
    }
}

impl fmt::Debug for Certificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Certificate({})", self.subject())
    }
}

impl PartialEq for Certificate {
    fn eq(&self, other: &Self) -> bool {
        self.der == other.der
    }
}

impl Eq for Certificate {}

fn unix_time(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
    }
}

/// The CA certificates a tunnel trusts, as a BoringSSL store.
#[derive(Clone)]
pub struct TrustAnchors {
    store: std::sync::Arc<X509Store>,
    certs: Vec<Certificate>,
    certreq: Vec<u8>,
}

impl TrustAnchors {
    /// Every certificate must be a CA. Each is a trust anchor on its own,
    /// intermediate or root (as strongSwan treats `cacerts`): a chain may
    /// end at any of them.
    pub fn new(cas: Vec<Certificate>) -> Result<TrustAnchors, CertError> {
        let mut b = X509StoreBuilder::new().map_err(|_| CertError::Unreadable)?;
        let mut certreq = Vec::with_capacity(20 * cas.len());
        for ca in &cas {
            if !ca.is_ca() {
                return Err(CertError::NotCa(ca.subject()));
            }
            b.add_cert(&ca.x509).map_err(|_| CertError::Unreadable)?;
            let h = ca.spki_sha1()?;
            // The same key twice (a re-issued CA) is requested once.
            if !certreq.chunks(20).any(|c| c == h) {
                certreq.extend_from_slice(&h);
            }
        }
        b.set_flags(X509VerifyFlags::PARTIAL_CHAIN);
        Ok(TrustAnchors {
            store: std::sync::Arc::new(b.build()),
            certs: cas,
            certreq,
        })
    }

    /// The CA certificates.
    pub fn certs(&self) -> &[Certificate] {
        &self.certs
    }

    /// The concatenated SHA-1 hashes of the CAs' public keys: the data of
    /// an X509_SIGNATURE CERTREQ (RFC 7296 §3.7).
    pub fn certreq_data(&self) -> &[u8] {
        &self.certreq
    }

    /// Validates `leaf` with the untrusted `intermediates` at time `at`:
    /// a path to one of our CAs, every signature, every validity period,
    /// CA:TRUE on every issuer, path length constraints.
    pub fn verify(
        &self,
        leaf: &Certificate,
        intermediates: &[Certificate],
        at: SystemTime,
    ) -> Result<(), ChainError> {
        if intermediates.len() > MAX_CHAIN_DEPTH {
            return Err(ChainError("too many intermediate certificates"));
        }
        let internal = ChainError("certificate validation could not run");
        let mut chain = Stack::new().map_err(|_| internal)?;
        for c in intermediates {
            chain.push(c.x509.clone()).map_err(|_| internal)?;
        }
        let mut ctx = X509StoreContext::new().map_err(|_| internal)?;
        let result = ctx
            .init(&self.store, &leaf.x509, &chain, |c| {
                let p = c.verify_param_mut();
                p.set_time(unix_time(at) as _);
                p.set_depth(MAX_CHAIN_DEPTH as _);
                let ok = c.verify_cert()?;
                Ok(if ok {
                    Ok(())
                } else {
                    Err(c
                        .verify_result()
                        .err()
                        .map_or("certificate rejected", |e| e.error_string()))
                })
            })
            .map_err(|_| internal)?;
        result.map_err(ChainError)
    }
}

impl fmt::Debug for TrustAnchors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(&self.certs).finish()
    }
}

// ------------------------------------------------------ distinguished names

/// Attribute names of the DN text syntax, strongSwan's (`E` for email,
/// `SN` for serialNumber as strongSwan reads it) and OpenSSL's long forms.
const DN_ATTRS: &[(&[&str], Nid)] = &[
    (&["C"], Nid::COUNTRYNAME),
    (&["ST"], Nid::STATEORPROVINCENAME),
    (&["L"], Nid::LOCALITYNAME),
    (&["O"], Nid::ORGANIZATIONNAME),
    (&["OU"], Nid::ORGANIZATIONALUNITNAME),
    (&["CN"], Nid::COMMONNAME),
    (&["E", "Email", "emailAddress"], Nid::PKCS9_EMAILADDRESS),
    (&["SN", "serialNumber"], Nid::SERIALNUMBER),
    (&["DC"], Nid::DOMAINCOMPONENT),
    (&["UID"], Nid::USERID),
    (&["T", "title"], Nid::TITLE),
    (&["G", "givenName"], Nid::GIVENNAME),
    (&["S", "surname"], Nid::SURNAME),
];

/// X.680 PrintableString characters.
fn printable(s: &str) -> bool {
    s.chars()
        .all(|c| c.is_ascii_alphanumeric() || " '()+,-./:=?".contains(c))
}

/// Parses `C=CH, O=strongSwan, CN=site` into a DER `Name`, with the string
/// types strongSwan's `atodn` picks (PrintableString where the value
/// allows, else UTF8String; IA5String for email and DC), so that the
/// identity we send is byte-equal to what a strongSwan peer configured with
/// the same text expects. A `,` inside a value is written `\,`.
pub fn dn_from_text(s: &str) -> Result<Vec<u8>, CertError> {
    let err = |m: String| CertError::Dn(m);
    let mut b = X509Name::builder().map_err(|_| err("internal error".into()))?;
    let mut parts = Vec::new();
    let mut cur = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some(n) => cur.push(n),
                None => return Err(err(format!("'{s}' ends in a lone '\\'"))),
            },
            ',' => parts.push(std::mem::take(&mut cur)),
            c => cur.push(c),
        }
    }
    parts.push(cur);
    for part in &parts {
        let Some((k, v)) = part.split_once('=') else {
            return Err(err(format!(
                "'{}' in DN '{s}' is not attribute=value",
                part.trim()
            )));
        };
        let (k, v) = (k.trim(), v.trim());
        let nid = DN_ATTRS
            .iter()
            .find(|(names, _)| names.iter().any(|n| n.eq_ignore_ascii_case(k)))
            .map(|&(_, nid)| nid)
            .ok_or_else(|| {
                err(format!(
                    "unknown attribute '{k}' in DN '{s}' (known: C, ST, L, O, OU, CN, E, SN, DC, UID, T, G, S)"
                ))
            })?;
        if v.is_empty() {
            return Err(err(format!("attribute '{k}' in DN '{s}' has no value")));
        }
        let ty = match nid {
            Nid::PKCS9_EMAILADDRESS | Nid::DOMAINCOMPONENT if v.is_ascii() => Asn1Type::IA5STRING,
            _ if printable(v) => Asn1Type::PRINTABLESTRING,
            Nid::COUNTRYNAME | Nid::SERIALNUMBER => {
                return Err(err(format!(
                    "attribute '{k}' in DN '{s}' must be a PrintableString"
                )))
            }
            _ => Asn1Type::UTF8STRING,
        };
        b.append_entry_by_nid_with_type(nid, v, ty)
            .map_err(|_| err(format!("attribute '{k}={v}' in DN '{s}' is not acceptable")))?;
    }
    b.build()
        .to_der()
        .map_err(|_| err(format!("DN '{s}' does not encode")))
}

/// The text form of a DER `Name` that [`dn_from_text`] reads back to the
/// same DN, or `None` if it has attributes or characters the text syntax
/// cannot carry (the caller then shows hex).
pub fn dn_to_text(der: &[u8]) -> Option<String> {
    let name = X509Name::from_der(der).ok()?;
    let mut out = Vec::new();
    for e in name.entries() {
        let nid = e.object().nid();
        let (names, _) = DN_ATTRS.iter().find(|(_, n)| *n == nid)?;
        let v = e.data().as_utf8().ok()?.to_string();
        if v.is_empty() || v.trim() != v || v.chars().any(|c| c.is_control()) {
            return None;
        }
        out.push(format!(
            "{}={}",
            names[0],
            v.replace('\\', "\\\\").replace(',', "\\,")
        ));
    }
    (!out.is_empty()).then(|| out.join(", "))
}

/// Whether `der` is one DER `Name`, nothing after it.
pub fn dn_valid(der: &[u8]) -> bool {
    X509Name::from_der(der).is_ok_and(|n| n.to_der().is_ok_and(|d| d == der))
}

/// Whether two DER `Name`s are the same DN under RFC 5280 §7.1's rules as
/// BoringSSL applies them (`X509_NAME_cmp` on canonical encodings: string
/// types and case and runs of spaces do not matter). False if either does
/// not parse.
pub fn dn_eq(a: &[u8], b: &[u8]) -> bool {
    if a == b {
        return true;
    }
    let (Ok(a), Ok(b)) = (X509Name::from_der(a), X509Name::from_der(b)) else {
        return false;
    };
    matches!(a.try_cmp(&b), Ok(std::cmp::Ordering::Equal))
}

/// Certificates made at test time (no files, no external tool): a CA, and
/// end-entity certificates it issues, with chosen keys, names and validity.
#[cfg(any(test, feature = "test-pki"))]
pub mod test_pki {
    use super::*;
    use crate::sig::{KeyKind, PrivateKey};
    use crate::Secret;
    use boring::bn::BigNum;
    use boring::hash::MessageDigest;
    use boring::x509::extension::{
        AuthorityKeyIdentifier, BasicConstraints, KeyUsage, SubjectAlternativeName,
        SubjectKeyIdentifier,
    };
    use std::time::Duration;

    /// A certificate and its key.
    pub struct Issued {
        /// The certificate.
        pub cert: Certificate,
        /// Its private key.
        pub key: PrivateKey,
    }

    impl Issued {
        /// The private key as PKCS#8 PEM (for config-file tests).
        pub fn key_pem(&self) -> Secret {
            Secret::new(
                self.key
                    .pkey()
                    .private_key_to_pem_pkcs8()
                    .expect("key encodes"),
            )
        }
    }

    /// What to issue.
    pub struct Spec<'a> {
        /// Subject DN in text form.
        pub subject: &'a str,
        /// subjectAltName dNSNames.
        pub dns: &'a [&'a str],
        /// subjectAltName rfc822Names.
        pub email: &'a [&'a str],
        /// subjectAltName iPAddresses.
        pub ip: &'a [&'a str],
        /// The key to make.
        pub key: KeyKind,
        /// basicConstraints CA:TRUE (and keyCertSign).
        pub ca: bool,
        /// A keyUsage of keyEncipherment only (not allowed to sign IKE).
        pub encipher_only: bool,
        /// Validity.
        pub not_before: SystemTime,
        /// Validity.
        pub not_after: SystemTime,
    }

    impl<'a> Spec<'a> {
        /// An end entity valid from a day ago for a year, ECDSA P-256.
        pub fn new(subject: &'a str) -> Spec<'a> {
            let now = SystemTime::now();
            Spec {
                subject,
                dns: &[],
                email: &[],
                ip: &[],
                key: KeyKind::Ec(crate::sig::Curve::P256),
                ca: false,
                encipher_only: false,
                not_before: now - Duration::from_secs(86_400),
                not_after: now + Duration::from_secs(365 * 86_400),
            }
        }
    }

    /// A self-signed root CA.
    pub fn ca(subject: &str, key: KeyKind) -> Issued {
        issue(
            None,
            &Spec {
                ca: true,
                key,
                ..Spec::new(subject)
            },
        )
    }

    /// Issues `spec` with `issuer` (self-signed when `None`).
    pub fn issue(issuer: Option<&Issued>, spec: &Spec) -> Issued {
        let key = PrivateKey::generate(spec.key).expect("key generation");
        let name =
            X509Name::from_der(&dn_from_text(spec.subject).expect("test DN parses")).expect("DN");
        let mut b = X509::builder().unwrap();
        b.set_version(2).unwrap();
        let mut serial = [0u8; 8];
        boring::rand::rand_bytes(&mut serial).unwrap();
        serial[0] &= 0x7f;
        let serial = BigNum::from_slice(&serial)
            .unwrap()
            .to_asn1_integer()
            .unwrap();
        b.set_serial_number(&serial).unwrap();
        b.set_subject_name(&name).unwrap();
        let issuer_name = match issuer {
            Some(i) => X509Name::from_der(&i.cert.subject_der()).unwrap(),
            None => X509Name::from_der(&name.to_der().unwrap()).unwrap(),
        };
        b.set_issuer_name(&issuer_name).unwrap();
        b.set_pubkey(key.pkey()).unwrap();
        b.set_not_before(&Asn1Time::from_unix(unix_time(spec.not_before) as _).unwrap())
            .unwrap();
        b.set_not_after(&Asn1Time::from_unix(unix_time(spec.not_after) as _).unwrap())
            .unwrap();
        let mut bc = BasicConstraints::new();
        bc.critical();
        if spec.ca {
            bc.ca();
        }
        b.append_extension(&bc.build().unwrap()).unwrap();
        let mut ku = KeyUsage::new();
        ku.critical();
        if spec.ca {
            ku.key_cert_sign().crl_sign();
        } else if spec.encipher_only {
            ku.key_encipherment();
        } else {
            ku.digital_signature();
        }
        b.append_extension(&ku.build().unwrap()).unwrap();
        let ski = SubjectKeyIdentifier::new()
            .build(&b.x509v3_context(issuer.map(|i| &*i.cert.x509), None))
            .unwrap();
        b.append_extension(&ski).unwrap();
        if issuer.is_some() {
            let aki = AuthorityKeyIdentifier::new()
                .keyid(true)
                .build(&b.x509v3_context(issuer.map(|i| &*i.cert.x509), None))
                .unwrap();
            b.append_extension(&aki).unwrap();
        }
        if !(spec.dns.is_empty() && spec.email.is_empty() && spec.ip.is_empty()) {
            let mut san = SubjectAlternativeName::new();
            for d in spec.dns {
                san.dns(d);
            }
            for e in spec.email {
                san.email(e);
            }
            for i in spec.ip {
                san.ip(i);
            }
            let ext = san
                .build(&b.x509v3_context(issuer.map(|i| &*i.cert.x509), None))
                .unwrap();
            b.append_extension(&ext).unwrap();
        }
        let signer = issuer.map_or(key.pkey(), |i| i.key.pkey());
        b.sign(signer, MessageDigest::sha256()).unwrap();
        let cert = Certificate::from_der(&b.build().to_der().unwrap()).unwrap();
        Issued { cert, key }
    }
}

#[cfg(test)]
mod tests {
    use super::test_pki::{self, Spec};
    use super::*;
    use crate::sig::{Curve, KeyKind};
    use std::time::Duration;

    #[test]
    fn dn_text_round_trips_with_strongswan_string_types() {
        let der = dn_from_text("C=CH, O=strongSwan, CN=site").unwrap();
        // SEQUENCE { SET { SEQUENCE { 2.5.4.6, PrintableString "CH" } } ... }
        assert_eq!(
            hex::encode(&der),
            concat!(
                "3031",
                "310b3009060355040613024348",
                "31133011060355040a130a7374726f6e675377616e",
                "310d300b0603550403130473697465"
            )
        );
        assert_eq!(
            dn_to_text(&der).as_deref(),
            Some("C=CH, O=strongSwan, CN=site")
        );
        // Email as IA5String, a value that is not printable as UTF8String,
        // an escaped comma.
        let der = dn_from_text("CN=Zürich\\, HQ, E=ops@example.net").unwrap();
        let name = X509Name::from_der(&der).unwrap();
        let e: Vec<_> = name.entries().collect();
        assert_eq!(e[0].data().as_utf8().unwrap().to_string(), "Zürich, HQ");
        assert_eq!(
            dn_to_text(&der).as_deref(),
            Some("CN=Zürich\\, HQ, E=ops@example.net")
        );
        assert_eq!(dn_from_text(&dn_to_text(&der).unwrap()).unwrap(), der);
    }

    #[test]
    fn bad_dns_are_refused() {
        for bad in ["CN", "X=1", "CN=", "C=Zürich", "CN=a, ,O=b", "CN=a\\"] {
            assert!(dn_from_text(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn dn_comparison_ignores_case_spaces_and_string_types() {
        let a = dn_from_text("C=CH, O=strongSwan, CN=site").unwrap();
        let b = dn_from_text("c=ch,o=STRONGSWAN,cn=Site").unwrap();
        assert!(dn_eq(&a, &b));
        // Same text as UTF8String instead of PrintableString.
        let mut nb = X509Name::builder().unwrap();
        for (n, v) in [
            (Nid::COUNTRYNAME, "CH"),
            (Nid::ORGANIZATIONNAME, "strongSwan"),
            (Nid::COMMONNAME, "site"),
        ] {
            nb.append_entry_by_nid_with_type(n, v, Asn1Type::UTF8STRING)
                .unwrap();
        }
        let utf8 = nb.build().to_der().unwrap();
        assert_ne!(utf8, a);
        assert!(dn_eq(&a, &utf8));
        assert!(!dn_eq(
            &a,
            &dn_from_text("C=CH, O=strongSwan, CN=other").unwrap()
        ));
        assert!(!dn_eq(
            &a,
            &dn_from_text("C=CH, CN=site, O=strongSwan").unwrap()
        ));
        assert!(!dn_eq(&a, b"garbage"));
    }

    #[test]
    fn chains_validate_against_the_anchors_only() {
        let now = SystemTime::now();
        let root = test_pki::ca("C=CH, O=anyhub, CN=Root", KeyKind::Rsa { bits: 2048 });
        let inter = test_pki::issue(
            Some(&root),
            &Spec {
                ca: true,
                ..Spec::new("C=CH, O=anyhub, CN=Intermediate")
            },
        );
        let leaf = test_pki::issue(
            Some(&inter),
            &Spec {
                dns: &["site.example.net"],
                ..Spec::new("C=CH, O=anyhub, CN=site")
            },
        );
        let anchors = TrustAnchors::new(vec![root.cert.clone()]).unwrap();
        anchors
            .verify(&leaf.cert, std::slice::from_ref(&inter.cert), now)
            .unwrap();
        // Without the intermediate there is no path.
        let e = anchors.verify(&leaf.cert, &[], now).unwrap_err();
        assert!(e.0.contains("issuer"), "{e}");
        // The intermediate alone is an anchor too (strongSwan's cacerts).
        TrustAnchors::new(vec![inter.cert.clone()])
            .unwrap()
            .verify(&leaf.cert, &[], now)
            .unwrap();
        // Another CA's anchors do not accept it.
        let other = test_pki::ca("C=CH, O=evil, CN=Root", KeyKind::Ec(Curve::P256));
        let e = TrustAnchors::new(vec![other.cert.clone()])
            .unwrap()
            .verify(&leaf.cert, std::slice::from_ref(&inter.cert), now)
            .unwrap_err();
        assert!(e.0.contains("issuer"), "{e}");
        // Time matters: before notBefore and after notAfter.
        let e = anchors
            .verify(
                &leaf.cert,
                std::slice::from_ref(&inter.cert),
                now + Duration::from_secs(400 * 86_400),
            )
            .unwrap_err();
        assert!(e.0.contains("expired"), "{e}");
        assert!(anchors
            .verify(
                &leaf.cert,
                std::slice::from_ref(&inter.cert),
                now - Duration::from_secs(2 * 86_400)
            )
            .is_err());
        // An end entity cannot issue: a "CA" without CA:TRUE breaks the chain.
        let fake_ca = test_pki::issue(Some(&root), &Spec::new("CN=not a CA"));
        let victim = test_pki::issue(Some(&fake_ca), &Spec::new("CN=victim"));
        assert!(anchors
            .verify(&victim.cert, std::slice::from_ref(&fake_ca.cert), now)
            .is_err());
        // And is refused as an anchor.
        assert!(matches!(
            TrustAnchors::new(vec![fake_ca.cert.clone()]),
            Err(CertError::NotCa(_))
        ));
    }

    #[test]
    fn names_keys_and_certreq_hashes() {
        let root = test_pki::ca("CN=Root", KeyKind::Ec(Curve::P384));
        let leaf = test_pki::issue(
            Some(&root),
            &Spec {
                dns: &["a.example.net", "b.example.net"],
                email: &["ops@example.net"],
                ip: &["192.0.2.7", "2001:db8::7"],
                ..Spec::new("C=CH, CN=leaf")
            },
        );
        let c = &leaf.cert;
        assert_eq!(c.dns_names(), ["a.example.net", "b.example.net"]);
        assert_eq!(c.emails(), ["ops@example.net"]);
        assert_eq!(c.ip_addresses()[0], [192, 0, 2, 7]);
        assert_eq!(c.ip_addresses()[1].len(), 16);
        assert_eq!(c.subject(), "C=CH, CN=leaf");
        assert!(dn_eq(
            &c.subject_der(),
            &dn_from_text("C=CH, CN=leaf").unwrap()
        ));
        assert_eq!(c.public_key().unwrap(), leaf.key.public_key());
        assert!(c.may_sign_ike() && !c.is_ca() && root.cert.is_ca());
        let enc = test_pki::issue(
            Some(&root),
            &Spec {
                encipher_only: true,
                ..Spec::new("CN=enc")
            },
        );
        assert!(!enc.cert.may_sign_ike());
        // CERTREQ: SHA-1 of the CA's SubjectPublicKeyInfo (RFC 7296 §3.7).
        let anchors = TrustAnchors::new(vec![root.cert.clone(), root.cert.clone()]).unwrap();
        let spki = root.key.public_key().spki_der().to_vec();
        assert_eq!(anchors.certreq_data(), crate::prf::sha1(&[&spki]));
        // Files: PEM bundles keep their order, DER is one certificate.
        let bundle = [leaf.cert.to_pem(), root.cert.to_pem()].concat();
        let both = Certificate::parse_pem_or_der(&bundle).unwrap();
        assert_eq!(both, [leaf.cert.clone(), root.cert.clone()]);
        assert_eq!(
            Certificate::parse_pem_or_der(leaf.cert.der()).unwrap(),
            std::slice::from_ref(&leaf.cert)
        );
        assert!(Certificate::parse_pem_or_der(b"junk").is_err());
        assert!(Certificate::from_der(&leaf.cert.der()[..100]).is_err());
        assert!(c.valid_at(SystemTime::now()));
        assert!(!c.valid_at(SystemTime::now() + Duration::from_secs(800 * 86_400)));
    }
}
