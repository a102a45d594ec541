//! The fleet's PKI: one CA per fleet, one certificate per node (rcgen).
//!
//! A node certificate names the node twice as DNS subject alternative
//! names: `node-<index>.anyhub` (what the bus checks: the index is the one
//! in the node's SPIs) and its operator-facing name (e.g. `edge3`). The bus
//! trusts exactly the fleet CA, in both directions (mutual TLS).
//!
//! Files written by [`init`] and [`add_node`] in the fleet directory:
//!
//! ```text
//! ca.pem  ca.key          the fleet CA (ca.key: 0600, keep it offline)
//! <name>.pem <name>.key   a node's certificate and key (key: 0600)
//! ```
//!
//! The CA certificate is not parsed back to sign: the issuer is rebuilt
//! from the CA key and the fixed CA name, which is what a signature needs.

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use zeroize::Zeroizing;

/// The DNS name the bus checks in a node's certificate.
pub fn node_dns_name(index: u16) -> String {
    format!("node-{index}.anyhub")
}

const CA_CN: &str = "anyhub fleet CA";

#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("certificate generation: {0}")]
    Cert(#[from] rcgen::Error),
    #[error("node index {0} out of range 1..=4095")]
    BadIndex(u16),
    #[error("node name {0:?} is not a DNS label (letters, digits, '-')")]
    BadName(String),
    #[error("{0} exists (refusing to overwrite)")]
    Exists(PathBuf),
}

/// A CA certificate and key (PEM), the key wiped on drop.
pub struct CaPem {
    pub cert: String,
    pub key: Zeroizing<String>,
}

/// A node's certificate and key (PEM), the key wiped on drop.
pub struct NodePem {
    pub cert: String,
    pub key: Zeroizing<String>,
}

impl std::fmt::Debug for CaPem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CaPem(<key redacted>)")
    }
}

impl std::fmt::Debug for NodePem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NodePem(<key redacted>)")
    }
}

fn ca_params() -> CertificateParams {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, CA_CN);
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    p.not_before = rcgen::date_time_ymd(2024, 1, 1);
    p.not_after = rcgen::date_time_ymd(2124, 1, 1);
    p
}

/// A new fleet CA (ECDSA P-256).
pub fn new_ca() -> Result<CaPem, FleetError> {
    let key = KeyPair::generate()?;
    let cert = ca_params().self_signed(&key)?;
    Ok(CaPem {
        cert: cert.pem(),
        key: Zeroizing::new(key.serialize_pem()),
    })
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

/// A node certificate signed by the CA whose key is `ca_key_pem`.
pub fn new_node(ca_key_pem: &str, index: u16, name: &str) -> Result<NodePem, FleetError> {
    if index == 0 || index > anyhub_ike::MAX_NODE_INDEX {
        return Err(FleetError::BadIndex(index));
    }
    if !valid_name(name) {
        return Err(FleetError::BadName(name.to_string()));
    }
    let ca_key = KeyPair::from_pem(ca_key_pem)?;
    let issuer = Issuer::new(ca_params(), ca_key);
    let key = KeyPair::generate()?;
    let mut p = CertificateParams::new(vec![node_dns_name(index), name.to_string()])?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    p.distinguished_name = dn;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    // The bus is mutual: every node is client and server.
    p.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    p.not_before = rcgen::date_time_ymd(2024, 1, 1);
    p.not_after = rcgen::date_time_ymd(2124, 1, 1);
    let cert = p.signed_by(&key, &issuer)?;
    Ok(NodePem {
        cert: cert.pem(),
        key: Zeroizing::new(key.serialize_pem()),
    })
}

fn write_new(path: &Path, data: &[u8], mode: u32) -> Result<(), FleetError> {
    let io = |source| FleetError::Io {
        path: path.to_path_buf(),
        source,
    };
    if path.exists() {
        return Err(FleetError::Exists(path.to_path_buf()));
    }
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(io)?;
    f.write_all(data).map_err(io)
}

fn read(path: &Path) -> Result<Zeroizing<String>, FleetError> {
    fs::read_to_string(path)
        .map(Zeroizing::new)
        .map_err(|source| FleetError::Io {
            path: path.to_path_buf(),
            source,
        })
}

/// `fleet init`: a new CA in `dir` (created if needed).
pub fn init(dir: &Path) -> Result<(), FleetError> {
    fs::create_dir_all(dir).map_err(|source| FleetError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let ca = new_ca()?;
    write_new(&dir.join("ca.key"), ca.key.as_bytes(), 0o600)?;
    write_new(&dir.join("ca.pem"), ca.cert.as_bytes(), 0o644)
}

/// `fleet add-node`: `<name>.pem` and `<name>.key` in `dir`, signed by
/// the CA there. Returns the two paths.
pub fn add_node(dir: &Path, index: u16, name: &str) -> Result<(PathBuf, PathBuf), FleetError> {
    let ca_key = read(&dir.join("ca.key"))?;
    let node = new_node(&ca_key, index, name)?;
    let cert = dir.join(format!("{name}.pem"));
    let key = dir.join(format!("{name}.key"));
    write_new(&key, node.key.as_bytes(), 0o600)?;
    write_new(&cert, node.cert.as_bytes(), 0o644)?;
    Ok((cert, key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        let ca = new_ca().unwrap();
        assert!(matches!(
            new_node(&ca.key, 0, "a"),
            Err(FleetError::BadIndex(0))
        ));
        assert!(matches!(
            new_node(&ca.key, 4096, "a"),
            Err(FleetError::BadIndex(_))
        ));
        assert!(matches!(
            new_node(&ca.key, 1, "a b"),
            Err(FleetError::BadName(_))
        ));
        let n = new_node(&ca.key, 7, "edge7").unwrap();
        assert!(n.cert.starts_with("-----BEGIN CERTIFICATE-----"));
        assert_eq!(format!("{n:?}"), "NodePem(<key redacted>)");
    }

    #[test]
    fn files_are_written_once() {
        let dir = std::env::temp_dir().join(format!("anyhub-fleet-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        init(&dir).unwrap();
        assert!(matches!(init(&dir), Err(FleetError::Exists(_))));
        let (c, k) = add_node(&dir, 3, "edge3").unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            fs::metadata(&k).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert!(fs::read_to_string(c).unwrap().contains("CERTIFICATE"));
        assert!(matches!(
            add_node(&dir, 3, "edge3"),
            Err(FleetError::Exists(_))
        ));
        fs::remove_dir_all(&dir).unwrap();
    }
}
