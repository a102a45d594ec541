//! anyhubd ↔ anyhubd traffic cases: a site anyhubd (`[dataplane]`,
//! initiating with `force_encap`) and the hub anyhubd, in the lab's two
//! namespaces. They cover what no strongSwan site can here: ESN traffic
//! (kernel-libipsec refuses ESN SAs), and each ESP proposal with anyhub's
//! ESP on both ends. Run by `interop run` after the strongSwan cases
//! (same `--filter`); `interop selfcheck` has no anyhubd and skips them.

use std::fs;
use std::path::Path;

use anyhow::{anyhow, bail, ensure, Context, Result};

use crate::anyhub::{Anyhubd, Binaries, Tunnel};
use crate::cases::Outcome;
use crate::lab::{self, Lab, Proc, HUB_ADDR, SITE_ADDR};

const PSK: &str = "interop-pair-psk-0123456789abcdef";
const IKE: &str = "aes256gcm16-prfsha256-x25519";

/// One case: the ESP proposal both ends configure.
pub struct PairCase {
    pub name: String,
    pub esp: String,
    /// No `force_encap`: with no NAT between them the pair negotiates ESP
    /// over IP (protocol 50), carried by the raw ESP socket.
    pub raw: bool,
}

pub fn all() -> Vec<PairCase> {
    let mut v = Vec::new();
    for p in [
        "aes128gcm16",
        "aes256gcm16",
        "chacha20poly1305",
        "aes256-sha256",
    ] {
        for esn in [false, true] {
            let esp = if esn {
                format!("{p}-esn")
            } else {
                p.to_string()
            };
            v.push(PairCase {
                name: format!("traffic-anyhubd-pair-{esp}"),
                esp,
                raw: false,
            });
        }
    }
    for esp in ["aes256gcm16", "aes256-sha256-esn"] {
        v.push(PairCase {
            name: format!("traffic-anyhubd-pair-raw-esp-{esp}"),
            esp: esp.into(),
            raw: true,
        });
    }
    v
}

/// The hub's tunnel for the pair.
pub fn hub_tunnel(esp: &str) -> Tunnel {
    let s = |v: &str| vec![v.to_string()];
    Tunnel {
        id: "pair".into(),
        local_id: "fqdn:hub.example.net".into(),
        remote_id: "fqdn:site.example.net".into(),
        psk: PSK.into(),
        ike_proposals: s(IKE),
        esp_proposals: s(esp),
        local_ts: s("10.20.0.0/24"),
        remote_ts: s("10.10.0.0/24"),
        remote_address: None,
        initiate: false,
        extra: vec![],
        pubkey: false,
    }
}

/// Starts the site anyhubd in the lab's site namespace: `[dataplane]`,
/// `force_encap`, initiating tunnel "pair" to the hub with `esp`.
pub fn start_site(lab: &Lab, bins: &Binaries, esp: &str) -> Result<Proc> {
    start_site_with(lab, bins, esp, true)
}

/// [`start_site`], with or without `force_encap`.
pub fn start_site_with(lab: &Lab, bins: &Binaries, esp: &str, force_encap: bool) -> Result<Proc> {
    let dir = lab.site_dir();
    let config = dir.join("anyhubd.toml");
    fs::write(
        &config,
        format!(
            "[node]\nindex = 2\nname = \"pair-site\"\n\n\
             [ike]\nlisten = [\"{SITE_ADDR}\"]\nstatus_socket = \"{}\"\nforce_encap = {force_encap}\n\n\
             [dataplane]\ntun = \"ahtun0\"\n\n\
             [[tunnel]]\nid = \"pair\"\nlocal_id = \"fqdn:site.example.net\"\n\
             remote_id = \"fqdn:hub.example.net\"\npsk = \"{PSK}\"\n\
             ike_proposals = [\"{IKE}\"]\nesp_proposals = [\"{esp}\"]\n\
             local_ts = [\"10.10.0.0/24\"]\nremote_ts = [\"10.20.0.0/24\"]\n\
             remote_address = \"{HUB_ADDR}\"\ninitiate = true\n",
            dir.join("anyhubd.sock").display()
        ),
    )?;
    let mut c = std::process::Command::new("ip");
    c.args(["netns", "exec", &lab.site_ns])
        .arg(&bins.anyhubd)
        .arg("--config")
        .arg(&config)
        .args(["--log-level", "info"]);
    Proc::spawn("anyhubd (site)", c, &dir.join("anyhubd.log"))
}

fn drive(case: &PairCase, bins: &Binaries, lab: &Lab) -> Result<()> {
    let mut hub = Anyhubd::start(
        lab.hub_addr(),
        &lab.hub_ns,
        &lab.hub_dir(),
        bins,
        &[hub_tunnel(&case.esp)],
        &crate::traffic::hub_dataplane_lines(),
    )?;
    let mut site = start_site_with(lab, bins, &case.esp, !case.raw)?;
    let (h, s) = (lab::HUB_INNER.to_string(), lab::SITE_INNER.to_string());
    let up = crate::traffic::ping_both(&lab.site_ns, &s, &h, 5)
        .and_then(|()| crate::traffic::ping_both(&lab.hub_ns, &h, &s, 5));
    if let Err(e) = up {
        bail!(
            "{e:#}; site anyhubd: {}",
            lab::tail(&site.log, 4).replace('\n', " | ")
        );
    }
    let upm = crate::traffic::iperf(lab, &lab.hub_dir(), false, 1, "up")?;
    let downm = crate::traffic::iperf(lab, &lab.hub_dir(), true, 1, "down")?;
    if site.exited().is_some() {
        bail!("the site anyhubd died: {}", lab::tail(&site.log, 5));
    }
    let st = hub.status()?;
    let c = st
        .child_sas
        .first()
        .ok_or_else(|| anyhow!("the hub lists no child SA"))?;
    let want = crate::strongswan::canonical_proposal(&case.esp, false)?;
    ensure!(
        c.proposal == want,
        "the hub's child SA is {}, expected {want}",
        c.proposal
    );
    ensure!(
        c.encap == Some(!case.raw),
        "the hub's child SA has encap {:?}, expected {}",
        c.encap,
        !case.raw
    );
    // ESP over IP really went over the raw socket, both ways.
    let raw = |k: &str| {
        st.counters
            .as_ref()
            .and_then(|m| m.get(k).copied())
            .unwrap_or(0)
    };
    if case.raw {
        ensure!(
            raw("dp_raw_esp_rx") > 1000 && raw("dp_raw_esp_tx") > 1000,
            "the hub's raw ESP socket counted {} in / {} out",
            raw("dp_raw_esp_rx"),
            raw("dp_raw_esp_tx")
        );
    } else {
        ensure!(
            raw("dp_raw_esp_rx") == 0,
            "ESP-in-UDP SAs, yet raw ESP arrived"
        );
    }
    ensure!(
        c.in_packets > 1000 && c.out_packets > 1000,
        "the hub's child SA counted {} in / {} out",
        c.in_packets,
        c.out_packets
    );
    eprintln!(
        "    {}: ping both ways, iperf3 site->hub {upm} / hub->site {downm} Mbit/s (1 s each, debug build); hub SA {} in, {} out",
        c.proposal, c.in_packets, c.out_packets
    );
    drop(site);
    Ok(())
}

/// Runs one case in a lab of its own.
pub fn run(case: &PairCase, bins: &Binaries, keep: Option<&Path>) -> Outcome {
    let lab = match Lab::create(&[], &[], keep.map(|k| k.join(&case.name))) {
        Ok(l) => l,
        Err(e) => {
            return Outcome {
                failure: Some(format!("building the lab: {e:#}")),
                logs: Vec::new(),
            }
        }
    };
    let failure = crate::failure_of(|| drive(case, bins, &lab).context("anyhubd pair"));
    let logs = crate::log_tails(
        &failure,
        &[
            ("site anyhubd".into(), lab.site_dir().join("anyhubd.log")),
            ("hub anyhubd".into(), lab.hub_dir().join("anyhubd.log")),
        ],
    );
    drop(lab);
    Outcome { failure, logs }
}
