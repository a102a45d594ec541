//! anyhubd under test: config TOML, starting it in the hub namespace, and
//! reading its state with `anyhubctl status --json`. The contract lives in
//! docs/daemon-contract.md.

use std::collections::BTreeMap;
use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};
use serde_json::Value;

use crate::lab::{self, Proc};
use crate::strongswan::canonical_proposal;

/// Where anyhubd and anyhubctl are.
#[derive(Clone, Debug)]
pub struct Binaries {
    pub anyhubd: PathBuf,
    pub anyhubctl: PathBuf,
}

impl Binaries {
    /// $ANYHUBD / $ANYHUBCTL, else next to the interop binary (target/debug).
    pub fn locate() -> Result<Binaries> {
        let here = std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(Path::to_path_buf));
        let find = |env: &str, name: &str| -> Result<PathBuf> {
            if let Some(p) = std::env::var_os(env) {
                let p = PathBuf::from(p);
                if !p.is_file() {
                    bail!("{env}={} does not exist", p.display());
                }
                return Ok(p);
            }
            match &here {
                Some(dir) if dir.join(name).is_file() => Ok(dir.join(name)),
                _ => bail!(
                    "{name} not found: set {env}=/path/to/{name}, or build it next to this \
                     binary with `cargo build -p anyhub-control`{}",
                    here.as_ref()
                        .map(|d| format!(" (looked in {})", d.display()))
                        .unwrap_or_default()
                ),
            }
        };
        Ok(Binaries {
            anyhubd: find("ANYHUBD", "anyhubd")?,
            anyhubctl: find("ANYHUBCTL", "anyhubctl")?,
        })
    }
}

/// One `[[tunnel]]` of anyhubd's config. The strongSwan stand-in hub of
/// `interop selfcheck` is generated from the same struct.
#[derive(Clone, Debug)]
pub struct Tunnel {
    pub id: String,
    pub local_id: String,
    pub remote_id: String,
    pub psk: String,
    pub ike_proposals: Vec<String>,
    pub esp_proposals: Vec<String>,
    pub local_ts: Vec<String>,
    pub remote_ts: Vec<String>,
    pub remote_address: Option<String>,
    pub initiate: bool,
    /// Extra TOML lines for the tunnel (e.g. `child_lifetime = "8s"`).
    pub extra: Vec<String>,
    /// `auth = "pubkey"` with the case's `hub.pem`, `hub.key` and `ca.pem`
    /// (made by `crate::pki` next to the config) instead of `psk`.
    pub pubkey: bool,
}

/// The hub's credential files (relative to anyhubd.toml) for a `pubkey` tunnel.
pub const HUB_CERT: &str = "hub.pem";
pub const HUB_KEY: &str = "hub.key";
pub const HUB_CA: &str = "ca.pem";

/// TOML basic string (JSON string escapes are valid TOML escapes).
fn t(s: &str) -> String {
    serde_json::to_string(s).expect("string serialises")
}

fn tlist(v: &[String]) -> String {
    format!(
        "[{}]",
        v.iter().map(|s| t(s)).collect::<Vec<_>>().join(", ")
    )
}

/// anyhubd's config, listening on `listen` (`HUB_ADDR`, or the NAT lab's
/// private address).
pub fn config_toml(
    listen: &str,
    tunnels: &[Tunnel],
    status_socket: &Path,
    ike_extra: &[String],
) -> String {
    let mut s = format!(
        "# written by the anyhub interop harness\n\
         [node]\nindex = 1\nname = \"interop-hub\"\n\n\
         [ike]\nlisten = [{}]\nstatus_socket = {}\n\
         # failing cases fail fast, as the site's charon is set up to\n\
         retransmit_timeout = \"1s\"\nretransmit_tries = 3\n",
        t(listen),
        t(&status_socket.display().to_string()),
    );
    for l in ike_extra {
        s += l;
        s += "\n";
    }
    for tu in tunnels {
        let auth = if tu.pubkey {
            format!(
                "auth = \"pubkey\"\ncert = {}\nkey = {}\ncacerts = [{}]",
                t(HUB_CERT),
                t(HUB_KEY),
                t(HUB_CA)
            )
        } else {
            format!("psk = {}", t(&tu.psk))
        };
        s += &format!(
            "\n[[tunnel]]\nid = {}\nlocal_id = {}\nremote_id = {}\n{auth}\n\
             ike_proposals = {}\nesp_proposals = {}\nlocal_ts = {}\nremote_ts = {}\n",
            t(&tu.id),
            t(&tu.local_id),
            t(&tu.remote_id),
            tlist(&tu.ike_proposals),
            tlist(&tu.esp_proposals),
            tlist(&tu.local_ts),
            tlist(&tu.remote_ts),
        );
        if let Some(addr) = &tu.remote_address {
            s += &format!("remote_address = {}\n", t(addr));
        }
        if tu.initiate {
            s += "initiate = true\n";
        }
        for l in &tu.extra {
            s += l;
            s += "\n";
        }
    }
    s
}

/// A running anyhubd inside the hub namespace.
pub struct Anyhubd {
    proc: Proc,
    bins: Binaries,
    socket: PathBuf,
}

impl Anyhubd {
    /// Writes `anyhubd.toml` into `dir`, checks it with `--check`, starts
    /// anyhubd in `ns` listening on `listen` and waits until `anyhubctl
    /// status --json` answers.
    pub fn start(
        listen: &str,
        ns: &str,
        dir: &Path,
        bins: &Binaries,
        tunnels: &[Tunnel],
        ike_extra: &[String],
    ) -> Result<Anyhubd> {
        let level = std::env::var("ANYHUBD_LOG_LEVEL").unwrap_or_else(|_| "debug".into());
        Anyhubd::start_with(listen, ns, dir, bins, tunnels, ike_extra, &level, None)
    }

    /// [`Anyhubd::start`] at log level `level`, optionally pinned to one
    /// CPU with `taskset` (benchmarks).
    #[allow(clippy::too_many_arguments)]
    pub fn start_with(
        listen: &str,
        ns: &str,
        dir: &Path,
        bins: &Binaries,
        tunnels: &[Tunnel],
        ike_extra: &[String],
        level: &str,
        cpu: Option<usize>,
    ) -> Result<Anyhubd> {
        let socket = dir.join("anyhubd.sock");
        let text = config_toml(listen, tunnels, &socket, ike_extra);
        Anyhubd::start_text(ns, dir, bins, &text, level, cpu)
    }

    /// Starts anyhubd in `ns` with the config `text` (written to
    /// `dir/anyhubd.toml`, its status socket `dir/anyhubd.sock`, its log
    /// `dir/anyhubd.log`), as [`Anyhubd::start_with`].
    pub fn start_text(
        ns: &str,
        dir: &Path,
        bins: &Binaries,
        text: &str,
        level: &str,
        cpu: Option<usize>,
    ) -> Result<Anyhubd> {
        let socket = dir.join("anyhubd.sock");
        let config = dir.join("anyhubd.toml");
        fs::write(&config, text)?;

        let mut check = Command::new(&bins.anyhubd);
        check.arg("--config").arg(&config).arg("--check");
        let out = lab::run(&mut check, Duration::from_secs(10))?;
        if !out.success() {
            bail!(
                "`anyhubd --check` rejected the harness's config: {}",
                out.text.trim().replace('\n', " | ")
            );
        }

        let mut cmd = match cpu {
            Some(cpu) => {
                let mut c = Command::new("taskset");
                c.args(["-c", &cpu.to_string(), "ip"]);
                c
            }
            None => Command::new("ip"),
        };
        cmd.args(["netns", "exec", ns])
            .arg(&bins.anyhubd)
            .arg("--config")
            .arg(&config)
            .args(["--log-level", level]);
        let proc = Proc::spawn(&format!("anyhubd in {ns}"), cmd, &dir.join("anyhubd.log"))?;
        let mut hub = Anyhubd {
            proc,
            bins: bins.clone(),
            socket,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match hub.status() {
                Ok(_) => return Ok(hub),
                Err(e) => {
                    if let Some(status) = hub.proc.exited() {
                        bail!(
                            "anyhubd exited at startup ({status}): {}",
                            lab::tail(&hub.log(), 3).replace('\n', " | ")
                        );
                    }
                    if Instant::now() >= deadline {
                        return Err(e.context("anyhubd's status socket did not answer within 10 s"));
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log(&self) -> PathBuf {
        self.proc.log.clone()
    }

    /// SIGKILL: the node dies mid-stream, as in a crash.
    pub fn kill_hard(&mut self) {
        self.proc.kill_hard();
    }

    /// anyhubd's pid (`ip netns exec` execs into it).
    pub fn pid(&self) -> i32 {
        self.proc.pid()
    }

    fn ctl(&mut self, json: bool) -> Result<String> {
        if let Some(status) = self.proc.exited() {
            bail!("anyhubd exited ({status})");
        }
        let mut cmd = Command::new(&self.bins.anyhubctl);
        cmd.arg("--socket").arg(&self.socket).arg("status");
        if json {
            cmd.arg("--json");
        }
        let out = lab::run(&mut cmd, Duration::from_secs(10))?;
        if !out.success() {
            bail!(
                "`anyhubctl status{}` failed: {}",
                if json { " --json" } else { "" },
                out.text.trim().replace('\n', " | ")
            );
        }
        Ok(out.text)
    }

    /// An operator action: `anyhubctl <args>` (e.g. `rekey site-a ike`).
    pub fn act(&mut self, args: &[&str]) -> Result<String> {
        if let Some(status) = self.proc.exited() {
            bail!("anyhubd exited ({status})");
        }
        let mut cmd = Command::new(&self.bins.anyhubctl);
        cmd.arg("--socket").arg(&self.socket).args(args);
        let out = lab::run(&mut cmd, Duration::from_secs(10))?;
        if !out.success() {
            bail!(
                "`anyhubctl {}` failed: {}",
                args.join(" "),
                out.text.trim().replace('\n', " | ")
            );
        }
        Ok(out.text)
    }

    /// `anyhubctl status` (human table, for the demo).
    pub fn status_text(&mut self) -> Result<String> {
        self.ctl(false)
    }

    pub fn status(&mut self) -> Result<HubStatus> {
        let text = self.ctl(true)?;
        let v: Value = serde_json::from_str(text.trim())
            .with_context(|| format!("anyhubctl status --json printed no JSON: {}", text.trim()))?;
        HubStatus::from_json(&v).context("anyhubctl status --json breaks the contract")
    }
}

/// The hub's view of its SAs, from anyhubd's status JSON (or, in
/// `interop selfcheck`, from the strongSwan stand-in's swanctl).
#[derive(Clone, Debug, Default)]
pub struct HubStatus {
    pub ike_sas: Vec<HubIkeSa>,
    pub child_sas: Vec<HubChildSa>,
    /// `None` when the hub has no counters (the strongSwan stand-in).
    pub counters: Option<BTreeMap<String, u64>>,
    /// Half-open IKE SAs listed (not in `ike_sas`: nothing is known of them).
    pub half_open: usize,
    /// `[[gre]]` tunnels: (id, in packets, out packets, keepalives).
    pub gre: Vec<(String, u64, u64, u64)>,
    /// The `sync` object (`[sync]` configured), as printed.
    pub sync: Option<Value>,
}

#[derive(Clone, Debug)]
pub struct HubIkeSa {
    pub tunnel: String,
    pub spi_i: u64,
    pub spi_r: u64,
    pub initiator: bool,
    /// "connecting" / "established" / "deleting"
    pub state: String,
    /// As reported: typed ("fqdn:x") by anyhubd, strongSwan's display form by swanctl.
    pub remote_id: String,
    /// swanctl notation (see `canonical_proposal`), or `?<raw>` if unparseable.
    pub proposal: String,
    /// The SA's outer addresses as the hub reports them (the NAT cases).
    pub local: Option<SocketAddr>,
    pub remote: Option<SocketAddr>,
}

#[derive(Clone, Debug)]
pub struct HubChildSa {
    pub tunnel: String,
    pub spi_in: u32,
    pub spi_out: u32,
    pub proposal: String,
    pub local_ts: Vec<String>,
    pub remote_ts: Vec<String>,
    /// ESP in UDP (RFC 3948), if the hub says.
    pub encap: Option<bool>,
    /// Inner packets the hub's dataplane decrypted / encrypted on it (0
    /// without a dataplane).
    pub in_packets: u64,
    pub out_packets: u64,
}

impl HubStatus {
    pub fn from_json(v: &Value) -> Result<HubStatus> {
        let arr = |key: &str| -> Result<Vec<Value>> {
            v.get(key)
                .and_then(Value::as_array)
                .cloned()
                .ok_or_else(|| anyhow!("`{key}` missing or not an array"))
        };
        let mut st = HubStatus::default();
        for (i, sa) in arr("ike_sas")?.iter().enumerate() {
            let f = Fields(sa, format!("ike_sas[{i}]"));
            // A half-open SA (answered IKE_SA_INIT, no IKE_AUTH yet) has no
            // tunnel, identity or proposal yet: the contract says null.
            if f.get("tunnel")?.is_null() {
                ensure!(
                    f.str("state")? == "connecting",
                    "ike_sas[{i}].tunnel is null but the SA is not connecting"
                );
                st.half_open += 1;
                continue;
            }
            let proposal = f.str("proposal")?;
            st.ike_sas.push(HubIkeSa {
                tunnel: f.str("tunnel")?,
                spi_i: f.spi("spi_i", 16)?,
                spi_r: f.spi("spi_r", 16)?,
                initiator: f.bool("initiator")?,
                state: f.str("state")?,
                remote_id: f.str("remote_id")?,
                proposal: canonical_proposal(&proposal, true).unwrap_or(format!("?{proposal}")),
                local: f.addr("local")?,
                remote: f.addr("remote")?,
            });
        }
        for (i, sa) in arr("child_sas")?.iter().enumerate() {
            let f = Fields(sa, format!("child_sas[{i}]"));
            let proposal = f.str("proposal")?;
            st.child_sas.push(HubChildSa {
                tunnel: f.str("tunnel")?,
                spi_in: f.spi("spi_in", 8)? as u32,
                spi_out: f.spi("spi_out", 8)? as u32,
                proposal: canonical_proposal(&proposal, false).unwrap_or(format!("?{proposal}")),
                local_ts: f.strs("local_ts")?,
                remote_ts: f.strs("remote_ts")?,
                encap: sa.get("encap").and_then(Value::as_bool),
                in_packets: sa.get("in_packets").and_then(Value::as_u64).unwrap_or(0),
                out_packets: sa.get("out_packets").and_then(Value::as_u64).unwrap_or(0),
            });
        }
        let counters = v
            .get("counters")
            .and_then(Value::as_object)
            .ok_or_else(|| anyhow!("`counters` missing or not an object"))?;
        let mut map = BTreeMap::new();
        for (k, c) in counters {
            let n = c
                .as_u64()
                .ok_or_else(|| anyhow!("counters.{k} is not an unsigned integer"))?;
            map.insert(k.clone(), n);
        }
        st.counters = Some(map);
        st.sync = v.get("sync").filter(|s| !s.is_null()).cloned();
        for (i, g) in v
            .get("gre_tunnels")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            let f = Fields(g, format!("gre_tunnels[{i}]"));
            let n = |k: &str| -> Result<u64> {
                f.get(k)?
                    .as_u64()
                    .ok_or_else(|| anyhow!("gre_tunnels[{i}].{k} is not an unsigned integer"))
            };
            st.gre.push((
                f.str("id")?,
                n("in_packets")?,
                n("out_packets")?,
                n("keepalives")?,
            ));
        }
        Ok(st)
    }
}

/// Field access on one status JSON object, with errors naming the field.
struct Fields<'a>(&'a Value, String);

impl Fields<'_> {
    fn get(&self, key: &str) -> Result<&Value> {
        self.0
            .get(key)
            .ok_or_else(|| anyhow!("{}.{key} missing", self.1))
    }

    fn str(&self, key: &str) -> Result<String> {
        self.get(key)?
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| anyhow!("{}.{key} is not a string", self.1))
    }

    fn bool(&self, key: &str) -> Result<bool> {
        self.get(key)?
            .as_bool()
            .ok_or_else(|| anyhow!("{}.{key} is not a boolean", self.1))
    }

    /// An optional "ip:port" field.
    fn addr(&self, key: &str) -> Result<Option<SocketAddr>> {
        match self.0.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(_) => {
                let s = self.str(key)?;
                s.parse()
                    .map(Some)
                    .map_err(|_| anyhow!("{}.{key} = {s:?} is not ip:port", self.1))
            }
        }
    }

    fn strs(&self, key: &str) -> Result<Vec<String>> {
        self.get(key)?
            .as_array()
            .and_then(|a| a.iter().map(|s| s.as_str().map(str::to_string)).collect())
            .ok_or_else(|| anyhow!("{}.{key} is not an array of strings", self.1))
    }

    /// SPIs are `digits` lower-case hex digits without 0x (contract).
    fn spi(&self, key: &str, digits: usize) -> Result<u64> {
        let s = self.str(key)?;
        let ok = s.len() == digits
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if !ok {
            bail!(
                "{}.{key} = {s:?} is not {digits} lower-case hex digits",
                self.1
            );
        }
        Ok(u64::from_str_radix(&s, 16)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lab::HUB_ADDR;

    #[test]
    fn parses_contract_example() {
        let v: Value = serde_json::from_str(
            r#"{
  "node": {"index": 1, "name": "edge1"},
  "ike_sas": [
    {"tunnel": "site-a", "spi_i": "0123456789abcdef", "spi_r": "0001a2b3c4d5e6f7", "initiator": false,
     "state": "established", "local": "198.51.100.1:4500", "remote": "198.51.100.2:4500",
     "remote_id": "fqdn:site-a.example.net", "proposal": "aes256gcm16-prfsha256-x25519", "established_secs": 12}
  ],
  "child_sas": [
    {"tunnel": "site-a", "spi_in": "c0012345", "spi_out": "c6f2a1b0", "proposal": "aes256gcm16",
     "local_ts": ["10.20.0.0/24"], "remote_ts": ["10.10.0.0/24"], "encap": true, "established_secs": 12}
  ],
  "counters": {"rx_datagrams": 0, "rx_malformed": 0, "rx_dropped": 0, "auth_failed": 0, "no_proposal_chosen": 0, "ike_sa_established": 0, "child_sa_established": 0}
}"#,
        )
        .unwrap();
        let st = HubStatus::from_json(&v).unwrap();
        assert_eq!(st.ike_sas[0].spi_i, 0x0123456789abcdef);
        assert_eq!(
            st.ike_sas[0].proposal,
            "AES_GCM_16-256/PRF_HMAC_SHA2_256/CURVE_25519"
        );
        assert_eq!(st.child_sas[0].spi_in, 0xc0012345);
        assert_eq!(st.child_sas[0].proposal, "AES_GCM_16-256");
        assert_eq!(
            st.ike_sas[0].remote,
            Some("198.51.100.2:4500".parse().unwrap())
        );
        assert_eq!(st.child_sas[0].encap, Some(true));
        assert_eq!(st.counters.unwrap()["auth_failed"], 0);
    }

    #[test]
    fn rejects_bad_spi() {
        let v: Value = serde_json::from_str(
            r#"{"ike_sas": [{"tunnel": "t", "spi_i": "0x0123456789abcd", "spi_r": "0001a2b3c4d5e6f7",
            "initiator": false, "state": "established", "remote_id": "fqdn:x", "proposal": "aes256gcm16-prfsha256-x25519"}],
            "child_sas": [], "counters": {}}"#,
        )
        .unwrap();
        let e = HubStatus::from_json(&v).unwrap_err().to_string();
        assert!(e.contains("ike_sas[0].spi_i"), "{e}");
    }

    #[test]
    fn toml_has_tunnel() {
        let s = config_toml(
            HUB_ADDR,
            &[Tunnel {
                id: "site-a".into(),
                local_id: "fqdn:hub".into(),
                remote_id: "keyid:#0a0b".into(),
                psk: "p\"q".into(),
                ike_proposals: vec!["aes256gcm16-prfsha256-x25519".into()],
                esp_proposals: vec!["aes256gcm16".into()],
                local_ts: vec!["10.20.0.0/24".into()],
                remote_ts: vec!["10.10.0.0/24".into()],
                remote_address: Some("198.51.100.2".into()),
                initiate: true,
                extra: vec![],
                pubkey: false,
            }],
            Path::new("/tmp/x.sock"),
            &[],
        );
        assert!(s.contains("[[tunnel]]\nid = \"site-a\"\n"));
        assert!(s.contains("psk = \"p\\\"q\"\n"));
        assert!(s.contains("remote_address = \"198.51.100.2\"\ninitiate = true\n"));
    }
}
