//! Proposals: strongSwan's proposal-string syntax for configuration, and the
//! responder's selection among a peer's offers (RFC 7296 §3.3, §2.7).

use crate::wire::registry::{DhId, EncrId, EsnId, IntegId, PrfId, ProtocolId, TransformType};
use crate::wire::{Proposal, Transform};
use std::fmt;

/// An encryption algorithm with its key size (the KEY_LENGTH attribute).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct EncrAlg {
    pub id: EncrId,
    pub key_bits: u16,
}

impl EncrAlg {
    /// AEAD ciphers carry their own integrity: no INTEG transform goes with them.
    pub fn is_aead(self) -> bool {
        matches!(self.id, EncrId::AES_GCM_16 | EncrId::CHACHA20_POLY1305)
    }

    /// RFC 7634 §2: ChaCha20-Poly1305 has a fixed key and no KEY_LENGTH attribute.
    fn key_length_attr(self) -> Option<u16> {
        match self.id {
            EncrId::CHACHA20_POLY1305 => None,
            _ => Some(self.key_bits),
        }
    }
}

/// One configured proposal: for each transform type, the algorithms we
/// accept in order of preference (strongSwan's `aes128-aes256-sha256-…`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProposalSpec {
    pub protocol: ProtocolId,
    pub encr: Vec<EncrAlg>,
    pub prf: Vec<PrfId>,
    pub integ: Vec<IntegId>,
    pub dh: Vec<DhId>,
    pub esn: Vec<EsnId>,
}

/// Why a proposal string was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ProposalError(pub String);

/// The keywords we implement. Known-but-unimplemented algorithms (3des, md5,
/// aesxcbc, …) are refused by name, so a config never silently weakens.
fn keyword(k: &str) -> Option<Alg> {
    use Alg::*;
    Some(match k {
        "aes" | "aes128" => Encr(EncrAlg {
            id: EncrId::AES_CBC,
            key_bits: 128,
        }),
        "aes192" => Encr(EncrAlg {
            id: EncrId::AES_CBC,
            key_bits: 192,
        }),
        "aes256" => Encr(EncrAlg {
            id: EncrId::AES_CBC,
            key_bits: 256,
        }),
        "aes128gcm16" | "aes128gcm128" | "aes128gcm" => Encr(EncrAlg {
            id: EncrId::AES_GCM_16,
            key_bits: 128,
        }),
        "aes256gcm16" | "aes256gcm128" | "aes256gcm" => Encr(EncrAlg {
            id: EncrId::AES_GCM_16,
            key_bits: 256,
        }),
        "chacha20poly1305" => Encr(EncrAlg {
            id: EncrId::CHACHA20_POLY1305,
            key_bits: 256,
        }),
        "sha1" | "sha" | "sha1_96" => Integ(IntegId::HMAC_SHA1_96),
        "sha256" | "sha2_256" => Integ(IntegId::HMAC_SHA2_256_128),
        "sha384" | "sha2_384" => Integ(IntegId::HMAC_SHA2_384_192),
        "sha512" | "sha2_512" => Integ(IntegId::HMAC_SHA2_512_256),
        "prfsha1" => Prf(PrfId::HMAC_SHA1),
        "prfsha256" => Prf(PrfId::HMAC_SHA2_256),
        "prfsha384" => Prf(PrfId::HMAC_SHA2_384),
        "prfsha512" => Prf(PrfId::HMAC_SHA2_512),
        "modp2048" => Dh(DhId::MODP2048),
        "ecp256" => Dh(DhId::ECP256),
        "ecp384" => Dh(DhId::ECP384),
        "x25519" | "curve25519" => Dh(DhId::CURVE25519),
        "esn" => Esn(EsnId::ESN),
        "noesn" => Esn(EsnId::NO_ESN),
        _ => return None,
    })
}

enum Alg {
    Encr(EncrAlg),
    Prf(PrfId),
    Integ(IntegId),
    Dh(DhId),
    Esn(EsnId),
}

/// The PRF strongSwan pairs with an integrity algorithm when an IKE proposal
/// names no PRF (`aes256-sha256-modp2048` means PRF_HMAC_SHA2_256).
fn prf_for_integ(i: IntegId) -> PrfId {
    match i {
        IntegId::HMAC_SHA1_96 => PrfId::HMAC_SHA1,
        IntegId::HMAC_SHA2_384_192 => PrfId::HMAC_SHA2_384,
        IntegId::HMAC_SHA2_512_256 => PrfId::HMAC_SHA2_512,
        _ => PrfId::HMAC_SHA2_256,
    }
}

impl ProposalSpec {
    /// Parses an IKE proposal such as `aes256gcm16-prfsha256-x25519` or
    /// `aes256-sha256-modp2048`.
    pub fn parse_ike(s: &str) -> Result<ProposalSpec, ProposalError> {
        let mut p = Self::parse_common(s, ProtocolId::IKE)?;
        if p.prf.is_empty() {
            if p.integ.is_empty() {
                return Err(ProposalError(format!(
                    "IKE proposal '{s}' names no PRF (add e.g. prfsha256)"
                )));
            }
            let mut prfs: Vec<PrfId> = p.integ.iter().map(|&i| prf_for_integ(i)).collect();
            prfs.dedup();
            p.prf = prfs;
        }
        if p.dh.is_empty() {
            return Err(ProposalError(format!(
                "IKE proposal '{s}' names no key exchange group (add e.g. x25519)"
            )));
        }
        if !p.esn.is_empty() {
            return Err(ProposalError(format!(
                "IKE proposal '{s}' cannot name esn/noesn"
            )));
        }
        Ok(p)
    }

    /// Parses an ESP proposal such as `aes256gcm16`, `aes256-sha256-esn` or
    /// `aes256gcm16-x25519` (a group here means PFS on rekey).
    pub fn parse_esp(s: &str) -> Result<ProposalSpec, ProposalError> {
        let mut p = Self::parse_common(s, ProtocolId::ESP)?;
        if !p.prf.is_empty() {
            return Err(ProposalError(format!(
                "ESP proposal '{s}' cannot name a PRF"
            )));
        }
        if p.esn.is_empty() {
            p.esn.push(EsnId::NO_ESN);
        }
        Ok(p)
    }

    fn parse_common(s: &str, protocol: ProtocolId) -> Result<ProposalSpec, ProposalError> {
        let mut p = ProposalSpec {
            protocol,
            encr: vec![],
            prf: vec![],
            integ: vec![],
            dh: vec![],
            esn: vec![],
        };
        for k in s.trim().split('-') {
            let alg = keyword(&k.to_ascii_lowercase()).ok_or_else(|| {
                ProposalError(format!(
                    "unknown or unsupported algorithm '{k}' in proposal '{s}'"
                ))
            })?;
            match alg {
                Alg::Encr(e) => push_unique(&mut p.encr, e),
                Alg::Prf(x) => push_unique(&mut p.prf, x),
                Alg::Integ(x) => push_unique(&mut p.integ, x),
                Alg::Dh(x) => push_unique(&mut p.dh, x),
                Alg::Esn(x) => push_unique(&mut p.esn, x),
            }
        }
        if p.encr.is_empty() {
            return Err(ProposalError(format!(
                "proposal '{s}' names no encryption algorithm"
            )));
        }
        let aead = p.encr.iter().filter(|e| e.is_aead()).count();
        if aead != 0 && aead != p.encr.len() {
            return Err(ProposalError(format!(
                "proposal '{s}' mixes AEAD and non-AEAD ciphers (strongSwan wants them in separate proposals)"
            )));
        }
        if aead != 0 && !p.integ.is_empty() {
            return Err(ProposalError(format!(
                "proposal '{s}' names an integrity algorithm for an AEAD cipher"
            )));
        }
        if aead == 0 && p.integ.is_empty() {
            return Err(ProposalError(format!(
                "proposal '{s}' needs an integrity algorithm (e.g. sha256) for a non-AEAD cipher"
            )));
        }
        Ok(p)
    }

    /// The wire form, numbered `num`, carrying `spi`.
    pub fn to_wire(&self, num: u8, spi: Vec<u8>, with_dh: bool) -> Proposal {
        let mut transforms = Vec::new();
        for e in &self.encr {
            transforms.push(Transform {
                ty: TransformType::ENCR,
                id: e.id.0,
                key_length: e.key_length_attr(),
                other_attrs: vec![],
            });
        }
        for x in &self.prf {
            transforms.push(plain(TransformType::PRF, x.0));
        }
        for x in &self.integ {
            transforms.push(plain(TransformType::INTEG, x.0));
        }
        if with_dh {
            for x in &self.dh {
                transforms.push(plain(TransformType::DH, x.0));
            }
        }
        for x in &self.esn {
            transforms.push(plain(TransformType::ESN, x.0));
        }
        Proposal {
            num,
            protocol: self.protocol,
            spi,
            transforms,
        }
    }
}

fn plain(ty: TransformType, id: u16) -> Transform {
    Transform {
        ty,
        id,
        key_length: None,
        other_attrs: vec![],
    }
}

fn push_unique<T: PartialEq>(v: &mut Vec<T>, x: T) {
    if !v.contains(&x) {
        v.push(x);
    }
}

/// What was agreed: one algorithm per transform type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Selected {
    pub protocol: ProtocolId,
    /// The proposal number the peer gave the chosen offer (echoed back).
    pub num: u8,
    pub encr: EncrAlg,
    pub prf: Option<PrfId>,
    pub integ: Option<IntegId>,
    pub dh: Option<DhId>,
    pub esn: bool,
    /// The peer's SPI from its offer (empty in IKE_SA_INIT).
    pub peer_spi: Vec<u8>,
}

impl Selected {
    /// The single-transform-per-type proposal that answers the offer (§3.3.6).
    pub fn to_wire(&self, spi: Vec<u8>) -> Proposal {
        let mut transforms = vec![Transform {
            ty: TransformType::ENCR,
            id: self.encr.id.0,
            key_length: self.encr.key_length_attr(),
            other_attrs: vec![],
        }];
        if let Some(x) = self.prf {
            transforms.push(plain(TransformType::PRF, x.0));
        }
        if let Some(x) = self.integ {
            transforms.push(plain(TransformType::INTEG, x.0));
        }
        if let Some(x) = self.dh {
            transforms.push(plain(TransformType::DH, x.0));
        }
        if self.protocol != ProtocolId::IKE {
            let esn = if self.esn { EsnId::ESN } else { EsnId::NO_ESN };
            transforms.push(plain(TransformType::ESN, esn.0));
        }
        Proposal {
            num: self.num,
            protocol: self.protocol,
            spi,
            transforms,
        }
    }

    /// Whether this agreement is one of the configured proposals (used when a
    /// tunnel is only known after IKE_SA_INIT chose the algorithms).
    pub fn allowed_by(&self, specs: &[ProposalSpec]) -> bool {
        specs.iter().any(|s| {
            s.protocol == self.protocol
                && s.encr.contains(&self.encr)
                && self.prf.is_none_or(|p| s.prf.contains(&p))
                && self.integ.is_none_or(|i| s.integ.contains(&i))
                && self.dh.is_none_or(|d| s.dh.contains(&d))
        })
    }
}

impl fmt::Display for Selected {
    /// strongSwan's notation, e.g. `aes256gcm16-prfsha256-x25519`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let e = self.encr;
        match e.id {
            EncrId::AES_GCM_16 => write!(f, "aes{}gcm16", e.key_bits)?,
            EncrId::AES_CBC => write!(f, "aes{}", e.key_bits)?,
            EncrId::CHACHA20_POLY1305 => f.write_str("chacha20poly1305")?,
            other => write!(f, "{other:?}")?,
        }
        if let Some(i) = self.integ {
            f.write_str(match i {
                IntegId::HMAC_SHA1_96 => "-sha1",
                IntegId::HMAC_SHA2_256_128 => "-sha256",
                IntegId::HMAC_SHA2_384_192 => "-sha384",
                IntegId::HMAC_SHA2_512_256 => "-sha512",
                _ => "-integ?",
            })?;
        }
        if let Some(p) = self.prf {
            f.write_str(match p {
                PrfId::HMAC_SHA1 => "-prfsha1",
                PrfId::HMAC_SHA2_256 => "-prfsha256",
                PrfId::HMAC_SHA2_384 => "-prfsha384",
                PrfId::HMAC_SHA2_512 => "-prfsha512",
                _ => "-prf?",
            })?;
        }
        if let Some(d) = self.dh {
            f.write_str(match d {
                DhId::MODP2048 => "-modp2048",
                DhId::ECP256 => "-ecp256",
                DhId::ECP384 => "-ecp384",
                DhId::CURVE25519 => "-x25519",
                _ => "-dh?",
            })?;
        }
        if self.protocol != ProtocolId::IKE && self.esn {
            f.write_str("-esn")?;
        }
        Ok(())
    }
}

/// How to treat Diffie-Hellman transforms in a child SA offer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DhPolicy {
    /// IKE_SA_INIT: a group is required.
    Required,
    /// IKE_AUTH's first child SA: no KE is exchanged, so groups in the offer
    /// are ignored and none is selected (RFC 7296 §1.2).
    Ignore,
    /// CREATE_CHILD_SA for a child SA: a group (PFS) when both sides want
    /// one; an offer of groups only matches a spec with groups, and a spec
    /// with groups only matches an offer with one of them.
    Optional,
}

/// The responder's choice (RFC 7296 §2.7): our configured proposals in our
/// order of preference (strongSwan's default), each algorithm in our order,
/// against every offered proposal of the right protocol. An offer is only
/// acceptable if every transform type it contains is matched (§3.3.6).
pub fn select(
    configured: &[ProposalSpec],
    offered: &[Proposal],
    protocol: ProtocolId,
    dh_policy: DhPolicy,
) -> Option<Selected> {
    for spec in configured.iter().filter(|s| s.protocol == protocol) {
        for offer in offered.iter().filter(|o| o.protocol == protocol) {
            if let Some(sel) = match_offer(spec, offer, dh_policy) {
                return Some(sel);
            }
        }
    }
    None
}

fn match_offer(spec: &ProposalSpec, offer: &Proposal, dh_policy: DhPolicy) -> Option<Selected> {
    let known = [
        TransformType::ENCR,
        TransformType::PRF,
        TransformType::INTEG,
        TransformType::DH,
        TransformType::ESN,
    ];
    if offer.transforms.iter().any(|t| !known.contains(&t.ty)) {
        return None; // §3.3.6: a transform type we do not understand
    }
    let offered = |ty: TransformType| offer.transforms.iter().filter(move |t| t.ty == ty);
    // A transform with attributes we do not understand is not a match (§3.3.6).
    let usable = |t: &&Transform| t.other_attrs.is_empty();

    let encr = spec.encr.iter().copied().find(|e| {
        offered(TransformType::ENCR)
            .filter(usable)
            .any(|t| t.id == e.id.0 && t.key_length == e.key_length_attr())
    })?;

    let has = |ty| offered(ty).next().is_some();
    let pick = |ty: TransformType, ours: &[u16]| -> Option<u16> {
        ours.iter()
            .copied()
            .find(|&o| offered(ty).filter(usable).any(|t| t.id == o))
    };

    let prf = if has(TransformType::PRF) {
        let ours: Vec<u16> = spec.prf.iter().map(|p| p.0).collect();
        Some(PrfId(pick(TransformType::PRF, &ours)?))
    } else {
        None
    };
    if spec.protocol == ProtocolId::IKE && prf.is_none() {
        return None;
    }

    // INTEG: none for AEAD (an explicit NONE transform is accepted), required otherwise.
    let integ = if encr.is_aead() {
        if offered(TransformType::INTEG).any(|t| t.id != IntegId::NONE.0) {
            return None;
        }
        None
    } else {
        let ours: Vec<u16> = spec.integ.iter().map(|p| p.0).collect();
        Some(IntegId(pick(TransformType::INTEG, &ours)?))
    };

    let dh = match dh_policy {
        DhPolicy::Ignore => None,
        DhPolicy::Required => {
            let ours: Vec<u16> = spec.dh.iter().map(|p| p.0).collect();
            Some(DhId(pick(TransformType::DH, &ours)?))
        }
        DhPolicy::Optional => {
            let real_groups = offered(TransformType::DH).any(|t| t.id != DhId::NONE.0);
            let offers_none =
                !has(TransformType::DH) || offered(TransformType::DH).any(|t| t.id == DhId::NONE.0);
            if spec.dh.is_empty() {
                if !offers_none {
                    return None;
                }
                None
            } else if real_groups {
                let ours: Vec<u16> = spec.dh.iter().map(|p| p.0).collect();
                Some(DhId(pick(TransformType::DH, &ours)?))
            } else {
                return None;
            }
        }
    };

    let esn = if spec.protocol == ProtocolId::IKE {
        if has(TransformType::ESN) {
            return None;
        }
        false
    } else if has(TransformType::ESN) {
        let ours: Vec<u16> = spec.esn.iter().map(|p| p.0).collect();
        pick(TransformType::ESN, &ours)? == EsnId::ESN.0
    } else {
        // No ESN transform offered means no extended sequence numbers.
        if !spec.esn.contains(&EsnId::NO_ESN) {
            return None;
        }
        false
    };

    Some(Selected {
        protocol: spec.protocol,
        num: offer.num,
        encr,
        prf,
        integ,
        dh,
        esn,
        peer_spi: offer.spi.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pfs_in_create_child_sa() {
        let pfs = [esp("aes256gcm16-ecp256")];
        let no_pfs = [esp("aes256gcm16")];
        let offer_pfs = vec![esp("aes256gcm16-x25519-ecp256").to_wire(1, vec![0; 4], true)];
        let offer_plain = vec![esp("aes256gcm16").to_wire(1, vec![0; 4], true)];
        let s = select(&pfs, &offer_pfs, ProtocolId::ESP, DhPolicy::Optional).unwrap();
        assert_eq!(s.dh, Some(DhId::ECP256));
        assert_eq!(
            select(&no_pfs, &offer_plain, ProtocolId::ESP, DhPolicy::Optional)
                .unwrap()
                .dh,
            None
        );
        assert!(select(&no_pfs, &offer_pfs, ProtocolId::ESP, DhPolicy::Optional).is_none());
        assert!(select(&pfs, &offer_plain, ProtocolId::ESP, DhPolicy::Optional).is_none());
    }

    fn ike(s: &str) -> ProposalSpec {
        ProposalSpec::parse_ike(s).unwrap()
    }
    fn esp(s: &str) -> ProposalSpec {
        ProposalSpec::parse_esp(s).unwrap()
    }

    #[test]
    fn parses_strongswan_strings() {
        let p = ike("aes256gcm16-prfsha256-x25519");
        assert_eq!(
            p.encr,
            vec![EncrAlg {
                id: EncrId::AES_GCM_16,
                key_bits: 256
            }]
        );
        assert_eq!(p.prf, vec![PrfId::HMAC_SHA2_256]);
        assert!(p.integ.is_empty());
        assert_eq!(p.dh, vec![DhId::CURVE25519]);

        let p = ike("aes256-sha256-modp2048");
        assert_eq!(
            p.prf,
            vec![PrfId::HMAC_SHA2_256],
            "PRF derived from integrity"
        );
        assert_eq!(p.integ, vec![IntegId::HMAC_SHA2_256_128]);

        let p = esp("aes128gcm16-esn");
        assert_eq!(p.esn, vec![EsnId::ESN]);
        assert_eq!(esp("aes256gcm16").esn, vec![EsnId::NO_ESN]);
        assert_eq!(esp("aes256gcm16-x25519").dh, vec![DhId::CURVE25519]);
    }

    #[test]
    fn refuses_bad_strings() {
        for bad in [
            "",
            "aes256gcm16-x25519",
            "3des-sha1-modp2048",
            "aes256-x25519",
            "aes256gcm16-sha256-prfsha256-x25519",
            "aes256gcm16-aes256-prfsha256-x25519",
            "aes256gcm16-prfsha256",
        ] {
            assert!(ProposalSpec::parse_ike(bad).is_err(), "{bad:?} accepted");
        }
        assert!(ProposalSpec::parse_esp("aes256gcm16-prfsha256").is_err());
        let e = ProposalSpec::parse_ike("aes256gcm16-prfsha256-modp1024").unwrap_err();
        assert!(e.0.contains("modp1024"), "error names the keyword: {e}");
    }

    #[test]
    fn selects_in_our_order_and_echoes_number() {
        let ours = [ike("aes256gcm16-prfsha384-ecp256-x25519")];
        let offer = vec![
            ike("aes128gcm16-prfsha256-x25519").to_wire(1, vec![], true),
            ike("aes128gcm16-aes256gcm16-prfsha256-prfsha384-x25519-ecp256").to_wire(
                2,
                vec![],
                true,
            ),
        ];
        let s = select(&ours, &offer, ProtocolId::IKE, DhPolicy::Required).unwrap();
        assert_eq!(s.num, 2);
        assert_eq!(s.encr.key_bits, 256);
        assert_eq!(s.prf, Some(PrfId::HMAC_SHA2_384));
        assert_eq!(s.dh, Some(DhId::ECP256), "our preference wins");
        assert_eq!(s.to_string(), "aes256gcm16-prfsha384-ecp256");
        // The answer has one transform per type and reparses to the same choice.
        let answer = s.to_wire(vec![]);
        let again = select(&ours, &[answer], ProtocolId::IKE, DhPolicy::Required).unwrap();
        assert_eq!(again, s);
    }

    #[test]
    fn no_common_proposal() {
        let ours = [ike("aes256gcm16-prfsha256-x25519")];
        let offer = vec![ike("aes128-sha1-modp2048").to_wire(1, vec![], true)];
        assert!(select(&ours, &offer, ProtocolId::IKE, DhPolicy::Required).is_none());
    }

    #[test]
    fn esp_in_ike_auth_ignores_groups() {
        let ours = [esp("aes256gcm16-x25519")];
        let offer = vec![esp("aes256gcm16").to_wire(1, vec![1, 2, 3, 4], false)];
        let s = select(&ours, &offer, ProtocolId::ESP, DhPolicy::Ignore).unwrap();
        assert_eq!(s.dh, None);
        assert_eq!(s.peer_spi, vec![1, 2, 3, 4]);
        assert!(!s.esn);
        let with_dh = vec![esp("aes256gcm16-ecp384").to_wire(1, vec![1, 2, 3, 4], true)];
        assert!(select(
            &[esp("aes256gcm16")],
            &with_dh,
            ProtocolId::ESP,
            DhPolicy::Ignore
        )
        .is_some());
    }

    #[test]
    fn esn_must_match() {
        let offer = vec![esp("aes128gcm16-esn").to_wire(1, vec![0; 4], false)];
        assert!(select(
            &[esp("aes128gcm16")],
            &offer,
            ProtocolId::ESP,
            DhPolicy::Ignore
        )
        .is_none());
        let s = select(
            &[esp("aes128gcm16-esn")],
            &offer,
            ProtocolId::ESP,
            DhPolicy::Ignore,
        )
        .unwrap();
        assert!(s.esn);
    }

    #[test]
    fn unknown_transform_type_makes_offer_unacceptable() {
        let mut o = ike("aes256gcm16-prfsha256-x25519").to_wire(1, vec![], true);
        o.transforms.push(plain(TransformType(9), 1));
        assert!(select(
            &[ike("aes256gcm16-prfsha256-x25519")],
            &[o],
            ProtocolId::IKE,
            DhPolicy::Required
        )
        .is_none());
    }

    #[test]
    fn allowed_by() {
        let s = select(
            &[ike("aes256gcm16-prfsha256-x25519")],
            &[ike("aes256gcm16-prfsha256-x25519").to_wire(1, vec![], true)],
            ProtocolId::IKE,
            DhPolicy::Required,
        )
        .unwrap();
        assert!(s.allowed_by(&[ike("aes128gcm16-aes256gcm16-prfsha256-x25519")]));
        assert!(!s.allowed_by(&[ike("aes256gcm16-prfsha384-x25519")]));
    }
}
