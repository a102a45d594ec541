//! IKE identities (RFC 7296 §3.5) and their strongSwan-style text syntax.
//!
//! A peer is matched to a tunnel by its identity, never by its address, so
//! that any node can answer any customer (DESIGN.md).

use crate::wire::{registry::IdType, Id};
use anyhub_crypto::x509;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// An IKE identity: the ID type and its data as sent on the wire.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Identity {
    pub ty: IdType,
    pub data: Vec<u8>,
}

/// Why an identity string was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct IdentityError(pub String);

impl Identity {
    /// Parses strongSwan's identity syntax:
    /// `fqdn:x`, `email:x` / `rfc822:x`, `keyid:x` (literal) or `keyid:#0a0b` (hex),
    /// `ipv4:1.2.3.4`, `ipv6:…`, `asn1dn:#hex` (a DER DN); without a prefix
    /// an IP address is ipv4/ipv6, a string with `=` a distinguished name
    /// (`C=CH, O=strongSwan, CN=site`, ID_DER_ASN1_DN), `@x` is the FQDN x,
    /// a string containing `@` is an email, else an FQDN.
    pub fn parse(s: &str) -> Result<Identity, IdentityError> {
        let s = s.trim();
        if s.is_empty() {
            return Err(IdentityError("identity is empty".into()));
        }
        if let Some(v) = s.strip_prefix("asn1dn:") {
            let hex = v.strip_prefix('#').ok_or_else(|| {
                IdentityError(format!("'{s}': asn1dn: takes hex, as asn1dn:#3031…"))
            })?;
            let der = parse_hex(hex)?;
            if !x509::dn_valid(&der) {
                return Err(IdentityError(format!(
                    "'{s}' is not a DER distinguished name"
                )));
            }
            return Identity::dn(der);
        }
        let typed = ["fqdn:", "email:", "rfc822:", "keyid:", "ipv4:", "ipv6:"]
            .iter()
            .any(|p| s.starts_with(p));
        if !typed && s.contains('=') {
            let der = x509::dn_from_text(s).map_err(|e| IdentityError(e.to_string()))?;
            return Identity::dn(der);
        }
        let (ty, data) = if let Some(v) = s.strip_prefix("fqdn:") {
            (IdType::FQDN, v.as_bytes().to_vec())
        } else if let Some(v) = s
            .strip_prefix("email:")
            .or_else(|| s.strip_prefix("rfc822:"))
        {
            (IdType::RFC822_ADDR, v.as_bytes().to_vec())
        } else if let Some(v) = s.strip_prefix("keyid:") {
            if let Some(hex) = v.strip_prefix('#') {
                (IdType::KEY_ID, parse_hex(hex)?)
            } else {
                (IdType::KEY_ID, v.as_bytes().to_vec())
            }
        } else if let Some(v) = s.strip_prefix("ipv4:") {
            let a: Ipv4Addr = v
                .parse()
                .map_err(|_| IdentityError(format!("'{v}' is not an IPv4 address")))?;
            (IdType::IPV4_ADDR, a.octets().to_vec())
        } else if let Some(v) = s.strip_prefix("ipv6:") {
            let a: Ipv6Addr = v
                .parse()
                .map_err(|_| IdentityError(format!("'{v}' is not an IPv6 address")))?;
            (IdType::IPV6_ADDR, a.octets().to_vec())
        } else if let Ok(ip) = s.parse::<IpAddr>() {
            return Ok(Identity::from_ip(ip));
        } else if let Some(v) = s.strip_prefix('@') {
            if let Some(hex) = v.strip_prefix('#') {
                (IdType::KEY_ID, parse_hex(hex)?)
            } else {
                (IdType::FQDN, v.as_bytes().to_vec())
            }
        } else if s.contains('@') {
            (IdType::RFC822_ADDR, s.as_bytes().to_vec())
        } else {
            (IdType::FQDN, s.as_bytes().to_vec())
        };
        if data.is_empty() {
            return Err(IdentityError(format!("identity '{s}' has no value")));
        }
        if data.len() > 255 {
            return Err(IdentityError("identity is longer than 255 octets".into()));
        }
        Ok(Identity { ty, data })
    }

    /// An ID_DER_ASN1_DN identity from a DER `Name`.
    pub fn dn(der: Vec<u8>) -> Result<Identity, IdentityError> {
        if der.len() > MAX_DN_LEN {
            return Err(IdentityError(format!(
                "distinguished name is longer than {MAX_DN_LEN} octets"
            )));
        }
        Ok(Identity {
            ty: IdType::DER_ASN1_DN,
            data: der,
        })
    }

    pub fn from_ip(ip: IpAddr) -> Identity {
        match ip {
            IpAddr::V4(a) => Identity {
                ty: IdType::IPV4_ADDR,
                data: a.octets().to_vec(),
            },
            IpAddr::V6(a) => Identity {
                ty: IdType::IPV6_ADDR,
                data: a.octets().to_vec(),
            },
        }
    }

    pub fn from_wire(id: &Id) -> Identity {
        Identity {
            ty: id.ty,
            data: id.data.clone(),
        }
    }

    pub fn to_wire(&self) -> Id {
        Id {
            ty: self.ty,
            data: self.data.clone(),
        }
    }

    /// Whether a received ID payload names this identity. Distinguished
    /// names compare as DNs (RFC 5280 §7.1: case, spacing and string types
    /// do not matter), everything else octet for octet.
    pub fn matches(&self, id: &Id) -> bool {
        self.ty == id.ty
            && (self.data == id.data
                || (self.ty == IdType::DER_ASN1_DN && x509::dn_eq(&self.data, &id.data)))
    }
}

/// Longest DER DN we take from a config file: real certificate subjects are
/// a few hundred octets.
const MAX_DN_LEN: usize = 1024;

fn parse_hex(s: &str) -> Result<Vec<u8>, IdentityError> {
    if s.len() % 2 != 0 || s.is_empty() {
        return Err(IdentityError(format!(
            "'{s}' is not an even number of hex digits"
        )));
    }
    (0..s.len())
        .step_by(2)
        .map(|i| {
            u8::from_str_radix(&s[i..i + 2], 16)
                .map_err(|_| IdentityError(format!("'{s}' is not hex")))
        })
        .collect()
}

impl fmt::Display for Identity {
    /// The canonical text form, which [`Identity::parse`] reads back.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = std::str::from_utf8(&self.data)
            .ok()
            .filter(|t| t.chars().all(|c| c.is_ascii_graphic()));
        match (self.ty, text) {
            (IdType::FQDN, Some(t)) => write!(f, "fqdn:{t}"),
            (IdType::RFC822_ADDR, Some(t)) => write!(f, "email:{t}"),
            (IdType::KEY_ID, Some(t)) if !t.starts_with('#') => write!(f, "keyid:{t}"),
            (IdType::IPV4_ADDR, _) if self.data.len() == 4 => {
                let o: [u8; 4] = self.data[..].try_into().expect("length checked");
                write!(f, "ipv4:{}", Ipv4Addr::from(o))
            }
            (IdType::IPV6_ADDR, _) if self.data.len() == 16 => {
                let o: [u8; 16] = self.data[..].try_into().expect("length checked");
                write!(f, "ipv6:{}", Ipv6Addr::from(o))
            }
            (IdType::KEY_ID, _) => {
                f.write_str("keyid:#")?;
                self.data.iter().try_for_each(|b| write!(f, "{b:02x}"))
            }
            (IdType::DER_ASN1_DN, _) => match x509::dn_to_text(&self.data) {
                // Read back as the same DN (parse picks strongSwan's string
                // types; `matches` ignores them).
                Some(t) => f.write_str(&t),
                None => {
                    f.write_str("asn1dn:#")?;
                    self.data.iter().try_for_each(|b| write!(f, "{b:02x}"))
                }
            },
            (ty, _) => {
                write!(f, "{ty:?}:#")?;
                self.data.iter().try_for_each(|b| write!(f, "{b:02x}"))
            }
        }
    }
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strongswan_syntax() {
        let cases = [
            ("hub.example.net", IdType::FQDN, b"hub.example.net".to_vec()),
            (
                "@hub.example.net",
                IdType::FQDN,
                b"hub.example.net".to_vec(),
            ),
            ("fqdn:x.y", IdType::FQDN, b"x.y".to_vec()),
            (
                "site@example.net",
                IdType::RFC822_ADDR,
                b"site@example.net".to_vec(),
            ),
            ("email:a@b", IdType::RFC822_ADDR, b"a@b".to_vec()),
            ("keyid:site-a", IdType::KEY_ID, b"site-a".to_vec()),
            ("keyid:#0a0b", IdType::KEY_ID, vec![10, 11]),
            ("@#0a0b", IdType::KEY_ID, vec![10, 11]),
            ("198.51.100.2", IdType::IPV4_ADDR, vec![198, 51, 100, 2]),
            ("ipv4:10.0.0.1", IdType::IPV4_ADDR, vec![10, 0, 0, 1]),
        ];
        for (s, ty, data) in cases {
            let id = Identity::parse(s).unwrap();
            assert_eq!((id.ty, &id.data), (ty, &data), "{s}");
            assert_eq!(
                Identity::parse(&id.to_string()).unwrap(),
                id,
                "round trip of {s}"
            );
        }
        assert_eq!(Identity::parse("::1").unwrap().ty, IdType::IPV6_ADDR);
    }

    #[test]
    fn distinguished_names() {
        let id = Identity::parse("C=CH, O=strongSwan, CN=site").unwrap();
        assert_eq!(id.ty, IdType::DER_ASN1_DN);
        assert_eq!(id.to_string(), "C=CH, O=strongSwan, CN=site");
        assert_eq!(Identity::parse(&id.to_string()).unwrap(), id);
        // Written differently, the same DN.
        let other = Identity::parse("c=ch,o=STRONGSWAN,  cn=site").unwrap();
        assert!(id.matches(&other.to_wire()));
        assert!(!id.matches(
            &Identity::parse("C=CH, O=strongSwan, CN=evil")
                .unwrap()
                .to_wire()
        ));
        // Raw DER, and its round trip.
        let hex: String = id.data.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(Identity::parse(&format!("asn1dn:#{hex}")).unwrap(), id);
        // An FQDN with the same text is not a DN.
        assert!(!id.matches(&Identity::parse("fqdn:site").unwrap().to_wire()));
        for bad in ["X=1", "CN=", "asn1dn:#00", "asn1dn:3031", "C=Zürich"] {
            assert!(Identity::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn refused() {
        for bad in [
            "",
            "fqdn:",
            "keyid:#abc",
            "keyid:#zz",
            "ipv4:300.1.1.1",
            "ipv6:x",
        ] {
            assert!(Identity::parse(bad).is_err(), "{bad:?} accepted");
        }
    }
}
