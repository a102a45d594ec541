//! Certificates for the `cert-*` cases, made with strongSwan's own `pki`
//! tool (strongswan-pki) when the case is set up, into the case's
//! directories — so both sides' credentials come from a third, independent
//! X.509 implementation. Per case:
//!
//! ```text
//! pki --gen --type rsa --size 2048 --outform pem > ca.key
//! pki --self --ca --lifetime 30 --in ca.key --dn "C=CH, O=anyhub interop, CN=Interop CA" --outform pem > ca.pem
//! pki --gen --type ecdsa --size 256 --outform pem > site.key
//! pki --pub --in site.key --outform pem > site.pub
//! pki --issue --cacert ca.pem --cakey ca.key --in site.pub --type pub --lifetime 30 \
//!     --dn "C=CH, O=anyhub interop, CN=site.example.net" --san site.example.net --outform pem > site.pem
//! ```
//!
//! (the same for the hub). With `site_untrusted`, the site's certificate is
//! issued by a second "Rogue CA" that only the site knows. Written:
//! `site/ca.pem site/site.pem site/private/site.key` and
//! `hub/ca.pem hub/hub.pem hub/hub.key hub/private/hub.key` (`private/` is
//! where swanctl loads keys from, for the strongSwan stand-in hub).

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::lab;

/// A key as `pki --gen` makes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyType {
    Rsa(u32),
    Ecdsa(u32),
}

impl KeyType {
    fn args(self) -> [String; 4] {
        let (ty, size) = match self {
            KeyType::Rsa(n) => ("rsa", n),
            KeyType::Ecdsa(n) => ("ecdsa", n),
        };
        [
            "--type".into(),
            ty.into(),
            "--size".into(),
            size.to_string(),
        ]
    }
}

/// What a cert case needs.
#[derive(Clone, Debug)]
pub struct PkiSpec {
    pub site_key: KeyType,
    pub hub_key: KeyType,
    /// The site's certificate comes from a CA the hub does not trust.
    pub site_untrusted: bool,
}

const ORG: &str = "C=CH, O=anyhub interop";

/// Subject DN and subjectAltName for an identity in strongSwan syntax: a
/// DN identity is the subject itself (no SAN), anything else becomes the
/// SAN with a CN of the same text.
fn names(id: &str) -> (String, Option<String>) {
    if id.contains('=') {
        return (id.to_string(), None);
    }
    let value = id
        .split_once(':')
        .filter(|(t, _)| ["fqdn", "email", "ipv4", "ipv6"].contains(t))
        .map_or(id, |(_, v)| v);
    (format!("{ORG}, CN={value}"), Some(value.to_string()))
}

/// Runs `pki` with `args`, its standard output into `out`.
fn pki(args: &[String], out: &Path) -> Result<()> {
    let quoted: Vec<String> = args
        .iter()
        .map(|a| format!("'{}'", a.replace('\'', "'\\''")))
        .collect();
    let script = format!("pki {} > '{}'", quoted.join(" "), out.display());
    let res = lab::run(
        Command::new("sh").arg("-c").arg(&script),
        Duration::from_secs(60),
    )?;
    if !res.success() {
        bail!(
            "`{script}` failed: {}",
            res.text
                .lines()
                .filter(|l| !l.contains("TPM") && !l.contains("plugin 'tpm'"))
                .collect::<Vec<_>>()
                .join(" | ")
        );
    }
    Ok(())
}

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}

fn gen_key(key: KeyType, out: &Path) -> Result<()> {
    let mut args = s(&["--gen"]);
    args.extend(key.args());
    args.extend(s(&["--outform", "pem"]));
    pki(&args, out)
}

fn self_signed_ca(dir: &Path, name: &str, file: &str) -> Result<()> {
    let key = dir.join(format!("{file}.key"));
    gen_key(KeyType::Rsa(2048), &key)?;
    let mut args = s(&["--self", "--ca", "--lifetime", "30", "--in"]);
    args.push(key.display().to_string());
    args.extend(s(&[
        "--dn",
        &format!("{ORG}, CN={name}"),
        "--outform",
        "pem",
    ]));
    pki(&args, &dir.join(format!("{file}.pem")))
}

/// Key and certificate `name`.key / `name`.pem in `dir`, issued by
/// `ca`.pem / `ca`.key (in `ca_dir`) for identity `id`.
fn end_entity(
    dir: &Path,
    name: &str,
    key: KeyType,
    id: &str,
    ca_dir: &Path,
    ca: &str,
) -> Result<()> {
    let key_file = dir.join(format!("{name}.key"));
    gen_key(key, &key_file)?;
    let pub_file = dir.join(format!("{name}.pub"));
    let mut args = s(&["--pub", "--in"]);
    args.push(key_file.display().to_string());
    args.extend(s(&["--outform", "pem"]));
    pki(&args, &pub_file)?;
    let (dn, san) = names(id);
    let mut args = s(&["--issue", "--cacert"]);
    args.push(ca_dir.join(format!("{ca}.pem")).display().to_string());
    args.push("--cakey".into());
    args.push(ca_dir.join(format!("{ca}.key")).display().to_string());
    args.push("--in".into());
    args.push(pub_file.display().to_string());
    args.extend(s(&["--type", "pub", "--lifetime", "30", "--dn", &dn]));
    if let Some(san) = san {
        args.extend(["--san".to_string(), san]);
    }
    args.extend(s(&["--outform", "pem"]));
    pki(&args, &dir.join(format!("{name}.pem")))?;
    let private = dir.join("private");
    fs::create_dir_all(&private)?;
    fs::copy(&key_file, private.join(format!("{name}.key")))?;
    Ok(())
}

/// Makes the case's credentials: the site's for `site_id`, the hub's for
/// `hub_id` (identities in strongSwan syntax).
pub fn make(
    spec: &PkiSpec,
    site_dir: &Path,
    hub_dir: &Path,
    site_id: &str,
    hub_id: &str,
) -> Result<()> {
    let ca_dir = site_dir.parent().unwrap_or(site_dir).join("pki");
    fs::create_dir_all(&ca_dir)?;
    self_signed_ca(&ca_dir, "Interop CA", "ca").context("the CA")?;
    let site_ca = if spec.site_untrusted {
        self_signed_ca(&ca_dir, "Rogue CA", "rogue").context("the rogue CA")?;
        "rogue"
    } else {
        "ca"
    };
    end_entity(site_dir, "site", spec.site_key, site_id, &ca_dir, site_ca)
        .context("the site's certificate")?;
    end_entity(hub_dir, "hub", spec.hub_key, hub_id, &ca_dir, "ca")
        .context("the hub's certificate")?;
    // Both trust the real CA only.
    for dir in [site_dir, hub_dir] {
        fs::copy(ca_dir.join("ca.pem"), dir.join("ca.pem"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_identity() {
        assert_eq!(
            names("fqdn:site.example.net"),
            (
                "C=CH, O=anyhub interop, CN=site.example.net".into(),
                Some("site.example.net".into())
            )
        );
        assert_eq!(
            names("C=CH, O=x, CN=site"),
            ("C=CH, O=x, CN=site".into(), None)
        );
        assert_eq!(
            names("hub.example.net").1.as_deref(),
            Some("hub.example.net")
        );
    }
}
