//! The status document (docs/daemon-contract.md, "status JSON"), the
//! status socket's one-line protocol, and anyhubctl's human rendering.
//!
//! anyhubd builds a [`Status`] from the endpoint's snapshot and the SA
//! table; anyhubctl deserialises the same types to draw its tables, so the
//! two cannot drift apart.
//!
//! Protocol on the unix stream socket: the client writes one request line
//! ([`Request`]: `status`, `rekey <tunnel> ike|child`, `terminate <tunnel>
//! ike|child`, `initiate <tunnel>`); the daemon answers with one JSON
//! object and closes: the status document, `{"ok": "…"}` for an action it
//! started, or `{"error": "…"}`.

use anyhub_dataplane::SaSummary;
use anyhub_ike::{ts, Counters, IkeSaInfo};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The status request's line.
pub const STATUS_REQUEST: &str = "status";

/// What a client asks of the daemon, one line each.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    /// The status document.
    Status,
    /// Rekey every established IKE SA of the tunnel (`ike`), or their child
    /// SAs.
    Rekey { tunnel: String, ike: bool },
    /// Delete the tunnel's IKE SAs (and so their child SAs), or only the
    /// child SAs.
    Terminate { tunnel: String, ike: bool },
    /// Start the tunnel as initiator (it needs a `remote_address`).
    Initiate { tunnel: String },
}

impl Request {
    /// Parses a request line; the error says what is wrong, for the client.
    pub fn parse(line: &str) -> Result<Request, String> {
        let words: Vec<&str> = line.split_whitespace().collect();
        let what = |w: &str| match w {
            "ike" => Ok(true),
            "child" => Ok(false),
            other => Err(format!("'{}': expected 'ike' or 'child'", shorten(other))),
        };
        match words.as_slice() {
            ["status"] => Ok(Request::Status),
            ["rekey", tunnel, w] => Ok(Request::Rekey {
                tunnel: tunnel.to_string(),
                ike: what(w)?,
            }),
            ["terminate", tunnel, w] => Ok(Request::Terminate {
                tunnel: tunnel.to_string(),
                ike: what(w)?,
            }),
            ["initiate", tunnel] => Ok(Request::Initiate {
                tunnel: tunnel.to_string(),
            }),
            _ => Err(format!(
                "unknown request '{}' (expected 'status', 'rekey TUNNEL ike|child', 'terminate TUNNEL ike|child' or 'initiate TUNNEL')",
                shorten(line.trim())
            )),
        }
    }

    /// The request as its line (without the newline).
    pub fn line(&self) -> String {
        let w = |ike: bool| if ike { "ike" } else { "child" };
        match self {
            Request::Status => STATUS_REQUEST.to_string(),
            Request::Rekey { tunnel, ike } => format!("rekey {tunnel} {}", w(*ike)),
            Request::Terminate { tunnel, ike } => format!("terminate {tunnel} {}", w(*ike)),
            Request::Initiate { tunnel } => format!("initiate {tunnel}"),
        }
    }
}

/// A peer-controlled string as shown in an error: at most 32 characters.
fn shorten(s: &str) -> String {
    s.chars().take(32).collect()
}

/// The answer to an action the daemon started.
pub fn ok_json(message: &str) -> String {
    serde_json::json!({ "ok": message }).to_string()
}
/// The longest request line the daemon reads.
pub const MAX_REQUEST_LEN: u64 = 256;

/// The whole status document.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    pub node: NodeStatus,
    pub ike_sas: Vec<IkeSaStatus>,
    pub child_sas: Vec<ChildSaStatus>,
    pub counters: CounterStatus,
    /// `[[gre]]` tunnels with their counters (absent from older daemons).
    #[serde(default)]
    pub gre_tunnels: Vec<GreTunnelStatus>,
    /// SA replication (`[sync]`), when configured: peers, lag, counters
    /// (control/src/sync.rs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sync: Option<serde_json::Value>,
}

/// One GRE tunnel.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GreTunnelStatus {
    pub id: String,
    pub local: String,
    pub remote: String,
    pub key: Option<u32>,
    /// Inner packets decapsulated / encapsulated.
    pub in_packets: u64,
    pub in_bytes: u64,
    pub out_packets: u64,
    pub out_bytes: u64,
    /// The customer router's keepalives reflected.
    pub keepalives: u64,
    /// Drops by reason.
    pub drops: BTreeMap<String, u64>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    pub index: u16,
    pub name: String,
}

/// One IKE SA. The fields the core does not know yet (a responder SA before
/// IKE_AUTH has no tunnel, identity or, before established, age) are null.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IkeSaStatus {
    pub tunnel: Option<String>,
    /// 16 lower-case hex digits.
    pub spi_i: String,
    /// 16 lower-case hex digits (zeros until the responder answered).
    pub spi_r: String,
    /// We are the original initiator (RFC 7296 §3.1, the I flag).
    pub initiator: bool,
    /// "connecting", "established" or "deleting".
    pub state: String,
    pub local: String,
    pub remote: String,
    pub remote_id: Option<String>,
    pub proposal: Option<String>,
    pub established_secs: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChildSaStatus {
    pub tunnel: String,
    /// 8 lower-case hex digits.
    pub spi_in: String,
    pub spi_out: String,
    pub proposal: String,
    pub local_ts: Vec<String>,
    pub remote_ts: Vec<String>,
    /// ESP in UDP (RFC 3948).
    pub encap: bool,
    pub established_secs: u64,
    /// Inner packets and bytes the dataplane decrypted on this SA.
    #[serde(default)]
    pub in_packets: u64,
    #[serde(default)]
    pub in_bytes: u64,
    /// Inner packets and bytes it encrypted on it.
    #[serde(default)]
    pub out_packets: u64,
    #[serde(default)]
    pub out_bytes: u64,
    /// Drops on this SA by reason (both directions), non-zero only.
    #[serde(default)]
    pub drops: BTreeMap<String, u64>,
}

/// Every counter by name: the IKE core's ([`Counters::pairs`]) and the
/// driver's ([`DriverCounters::pairs`]). A map, so a counter added on
/// either side appears without touching this file, and a client reads a
/// daemon with more or fewer counters than it knows.
pub type CounterStatus = BTreeMap<String, u64>;

/// What the driver counts itself (the endpoint counts the rest).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DriverCounters {
    /// ESP received on the NAT-T port and dropped (no `[dataplane]`).
    pub rx_esp: u64,
    /// NAT keepalives received on the NAT-T port (RFC 3948 §2.3): one
    /// 0xFF octet from a peer behind a NAT; nothing to do but drop them.
    pub rx_keepalives: u64,
    /// Transmits whose local address matched no socket.
    pub tx_unroutable: u64,
    /// Sends the kernel refused.
    pub tx_errors: u64,
}

impl DriverCounters {
    pub fn pairs(&self) -> [(&'static str, u64); 4] {
        [
            ("rx_esp", self.rx_esp),
            ("rx_keepalives", self.rx_keepalives),
            ("tx_unroutable", self.tx_unroutable),
            ("tx_errors", self.tx_errors),
        ]
    }
}

/// The status document's counters.
pub fn counter_status(ike: &Counters, driver: &DriverCounters) -> CounterStatus {
    ike.pairs()
        .into_iter()
        .chain(driver.pairs())
        .map(|(k, v)| (k.to_string(), v))
        .collect()
}

fn secs_since(now: Instant, then: Instant) -> u64 {
    now.saturating_duration_since(then).as_secs()
}

impl IkeSaStatus {
    pub fn new(now: Instant, sa: &IkeSaInfo) -> IkeSaStatus {
        IkeSaStatus {
            tunnel: sa.tunnel.as_deref().map(str::to_owned),
            spi_i: format!("{:016x}", sa.spi_i),
            spi_r: format!("{:016x}", sa.spi_r),
            initiator: sa.initiator,
            state: sa.state.as_str().to_owned(),
            local: sa.local.to_string(),
            remote: sa.remote.to_string(),
            remote_id: sa.remote_id.as_ref().map(ToString::to_string),
            proposal: sa.proposal.clone(),
            established_secs: sa.established_at.map(|t| secs_since(now, t)),
        }
    }
}

impl ChildSaStatus {
    pub fn new(now: Instant, sa: &SaSummary) -> ChildSaStatus {
        ChildSaStatus {
            tunnel: sa.tunnel.to_string(),
            spi_in: format!("{:08x}", sa.spi_in),
            spi_out: format!("{:08x}", sa.spi_out),
            proposal: sa.proposal.clone(),
            local_ts: sa.local_ts.iter().map(ts::display).collect(),
            remote_ts: sa.remote_ts.iter().map(ts::display).collect(),
            encap: sa.encap,
            established_secs: secs_since(now, sa.installed_at),
            in_packets: 0,
            in_bytes: 0,
            out_packets: 0,
            out_bytes: 0,
            drops: BTreeMap::new(),
        }
    }
}

impl Status {
    /// The document at `now`.
    pub fn snapshot(
        node: NodeStatus,
        now: Instant,
        ike_sas: &[IkeSaInfo],
        child_sas: &[SaSummary],
        counters: CounterStatus,
    ) -> Status {
        Status {
            node,
            ike_sas: ike_sas.iter().map(|sa| IkeSaStatus::new(now, sa)).collect(),
            child_sas: child_sas
                .iter()
                .map(|sa| ChildSaStatus::new(now, sa))
                .collect(),
            counters,
            gre_tunnels: Vec::new(),
            sync: None,
        }
    }

    /// The one-object JSON the socket sends.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("status serialises: plain strings and integers")
    }

    /// anyhubctl's tables: a header line, one line per IKE SA, one line per
    /// child SA, the counters.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let plural = |n: usize, what: &str| format!("{n} {what}{}", if n == 1 { "" } else { "s" });
        let _ = writeln!(
            out,
            "{} (node {}): {}, {}",
            self.node.name,
            self.node.index,
            plural(self.ike_sas.len(), "IKE SA"),
            plural(self.child_sas.len(), "child SA"),
        );
        if let Some(s) = &self.sync {
            let _ = writeln!(
                out,
                "sync: {} peer(s) connected, {}, {} SA record(s) live",
                s["peers_connected"].as_u64().unwrap_or(0),
                if s["caught_up"] == serde_json::Value::Bool(true) {
                    "caught up"
                } else {
                    "catching up"
                },
                s["live"].as_u64().unwrap_or(0),
            );
            let c = &s["counters"];
            let n = |k: &str| c[k].as_u64().unwrap_or(0);
            let _ = writeln!(
                out,
                "sync barrier {}: {} reached, {} timed out, {} failed (longest {} ms); sequence handovers {}",
                s["barrier"],
                n("barrier_reached"),
                n("barrier_timed_out"),
                n("barrier_failed"),
                n("barrier_max_ms"),
                n("seq_jumps"),
            );
            if let Some(peers) = s["peers"].as_array().filter(|p| !p.is_empty()) {
                let cell = |v: &serde_json::Value| match v {
                    serde_json::Value::Bool(b) => if *b { "yes" } else { "no" }.to_string(),
                    serde_json::Value::Null => "-".into(),
                    other => other.to_string(),
                };
                let rows: Vec<Vec<String>> = peers
                    .iter()
                    .map(|p| {
                        ["peer", "connected", "cursor", "head", "lag", "caught_up"]
                            .iter()
                            .map(|k| cell(&p[*k]))
                            .collect()
                    })
                    .collect();
                out.push('\n');
                table(
                    &mut out,
                    &[
                        "SYNC PEER",
                        "CONNECTED",
                        "APPLIED",
                        "HEAD",
                        "LAG",
                        "CAUGHT UP",
                    ],
                    &rows,
                );
            }
        }
        let dash = |s: &Option<String>| s.clone().unwrap_or_else(|| "-".into());
        if !self.ike_sas.is_empty() {
            out.push('\n');
            let rows: Vec<Vec<String>> = self
                .ike_sas
                .iter()
                .map(|sa| {
                    vec![
                        dash(&sa.tunnel),
                        sa.state.clone(),
                        if sa.initiator {
                            "initiator"
                        } else {
                            "responder"
                        }
                        .into(),
                        sa.local.clone(),
                        sa.remote.clone(),
                        dash(&sa.remote_id),
                        format!("{}_i {}_r", sa.spi_i, sa.spi_r),
                        dash(&sa.proposal),
                        sa.established_secs.map_or_else(|| "-".into(), age),
                    ]
                })
                .collect();
            table(
                &mut out,
                &[
                    "IKE SA",
                    "STATE",
                    "ROLE",
                    "LOCAL",
                    "REMOTE",
                    "REMOTE ID",
                    "SPIS",
                    "PROPOSAL",
                    "UP",
                ],
                &rows,
            );
        }
        if !self.child_sas.is_empty() {
            out.push('\n');
            let rows: Vec<Vec<String>> = self
                .child_sas
                .iter()
                .map(|sa| {
                    vec![
                        sa.tunnel.clone(),
                        format!("{}_i {}_o", sa.spi_in, sa.spi_out),
                        sa.proposal.clone(),
                        if sa.encap { "udp" } else { "esp" }.into(),
                        format!("{} === {}", sa.local_ts.join(","), sa.remote_ts.join(",")),
                        format!("{}/{}", sa.in_packets, sa.out_packets),
                        age(sa.established_secs),
                    ]
                })
                .collect();
            table(
                &mut out,
                &[
                    "CHILD SA",
                    "SPIS",
                    "PROPOSAL",
                    "ENCAP",
                    "SELECTORS",
                    "PKTS IN/OUT",
                    "UP",
                ],
                &rows,
            );
        }
        if !self.gre_tunnels.is_empty() {
            out.push('\n');
            let rows: Vec<Vec<String>> = self
                .gre_tunnels
                .iter()
                .map(|g| {
                    vec![
                        g.id.clone(),
                        g.local.clone(),
                        g.remote.clone(),
                        g.key.map_or_else(|| "-".into(), |k| k.to_string()),
                        format!("{}/{}", g.in_packets, g.out_packets),
                        g.keepalives.to_string(),
                        g.drops.values().sum::<u64>().to_string(),
                    ]
                })
                .collect();
            table(
                &mut out,
                &[
                    "GRE",
                    "LOCAL",
                    "REMOTE",
                    "KEY",
                    "PKTS IN/OUT",
                    "KEEPALIVES",
                    "DROPS",
                ],
                &rows,
            );
        }
        out.push('\n');
        out.push_str("counters:");
        for (name, value) in &self.counters {
            let _ = write!(out, " {name}={value}");
        }
        out.push('\n');
        out
    }
}

/// Left-aligned columns two spaces apart; no trailing blanks.
fn table(out: &mut String, header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut l = String::new();
        for (cell, w) in cells.zip(&widths) {
            let _ = write!(l, "{cell:<w$}  ");
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(&mut header.iter().copied());
    for row in rows {
        line(&mut row.iter().map(String::as_str));
    }
}

/// `42s`, `5m07s`, `3h05m`, `2d04h`.
pub fn age(secs: u64) -> String {
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m{:02}s", s / 60, s % 60),
        s if s < 86_400 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        s => format!("{}d{:02}h", s / 86_400, s % 86_400 / 3600),
    }
}

/// The answer to an unknown request.
pub fn error_json(message: &str) -> String {
    serde_json::json!({ "error": message }).to_string()
}

/// Why asking the daemon failed.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error("cannot connect to {}: {error} (is anyhubd running?)", path.display())]
    Connect {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("talking to anyhubd on {}: {error}", path.display())]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("anyhubd on {} sent no JSON object: {reason}", path.display())]
    BadReply { path: PathBuf, reason: String },
    #[error("anyhubd refused: {0}")]
    Refused(String),
}

/// Asks the daemon at `socket` for its status: the raw JSON object (checked
/// to be one, and not an error answer).
pub fn query(socket: &Path, timeout: Duration) -> Result<String, QueryError> {
    ask(socket, &Request::Status, timeout)
}

/// Sends `request` to the daemon at `socket`: the raw JSON answer (checked
/// to be an object, and not an error answer).
pub fn ask(socket: &Path, request: &Request, timeout: Duration) -> Result<String, QueryError> {
    let io = |error| QueryError::Io {
        path: socket.to_owned(),
        error,
    };
    let mut stream = UnixStream::connect(socket).map_err(|error| QueryError::Connect {
        path: socket.to_owned(),
        error,
    })?;
    stream.set_read_timeout(Some(timeout)).map_err(io)?;
    stream.set_write_timeout(Some(timeout)).map_err(io)?;
    stream
        .write_all(format!("{}\n", request.line()).as_bytes())
        .map_err(io)?;
    let mut reply = String::new();
    stream.read_to_string(&mut reply).map_err(io)?;
    let bad = |reason: String| QueryError::BadReply {
        path: socket.to_owned(),
        reason,
    };
    let value: serde_json::Value = serde_json::from_str(&reply).map_err(|e| bad(e.to_string()))?;
    let Some(object) = value.as_object() else {
        return Err(bad("not an object".into()));
    };
    if let Some(e) = object.get("error") {
        return Err(QueryError::Refused(
            e.as_str().unwrap_or("(no message)").to_owned(),
        ));
    }
    Ok(reply.trim_end().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhub_ike::{Identity, IkeSaHandle, IkeState};
    use std::sync::Arc;

    fn sample(now: Instant) -> Status {
        let established = IkeSaInfo {
            handle: IkeSaHandle(1),
            tunnel: Some(Arc::from("site-a")),
            spi_i: 0x0123_4567_89ab_cdef,
            spi_r: 0x0001_a2b3_c4d5_e6f7,
            initiator: false,
            state: IkeState::Established,
            local: "198.51.100.1:4500".parse().unwrap(),
            remote: "198.51.100.2:4500".parse().unwrap(),
            remote_id: Some(Identity::parse("site-a.example.net").unwrap()),
            proposal: Some("aes256gcm16-prfsha256-x25519".into()),
            established_at: Some(now - Duration::from_secs(12)),
        };
        let half_open = IkeSaInfo {
            handle: IkeSaHandle(2),
            tunnel: None,
            spi_i: 0xfe,
            spi_r: 0x0010_0000_0000_0001,
            initiator: false,
            state: IkeState::Connecting,
            local: "198.51.100.1:500".parse().unwrap(),
            remote: "203.0.113.9:500".parse().unwrap(),
            remote_id: None,
            proposal: None,
            established_at: None,
        };
        let child = SaSummary {
            tunnel: Arc::from("site-a"),
            ike: IkeSaHandle(1),
            spi_in: 0xc001_2345,
            spi_out: 0x00f2_a1b0,
            proposal: "aes256gcm16".into(),
            local_ts: vec![ts::parse("10.20.0.0/24").unwrap()],
            remote_ts: vec![
                ts::parse("10.10.0.0/24").unwrap(),
                ts::parse("10.11.0.0/16[tcp/443]").unwrap(),
            ],
            local: "198.51.100.1:4500".parse().unwrap(),
            remote: "198.51.100.2:4500".parse().unwrap(),
            encap: true,
            lifetime: Duration::from_secs(3600),
            installed_at: now - Duration::from_secs(3725),
        };
        let counters = Counters {
            rx_datagrams: 9,
            auth_failed: 1,
            ..Counters::default()
        };
        Status::snapshot(
            NodeStatus {
                index: 1,
                name: "edge1".into(),
            },
            now,
            &[established, half_open],
            &[child],
            counter_status(
                &counters,
                &DriverCounters {
                    rx_esp: 3,
                    ..DriverCounters::default()
                },
            ),
        )
    }

    #[test]
    fn json_matches_the_contract() {
        let json = sample(Instant::now()).to_json();
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["node"], serde_json::json!({"index": 1, "name": "edge1"}));
        let ike = &v["ike_sas"][0];
        assert_eq!(
            *ike,
            serde_json::json!({
                "tunnel": "site-a", "spi_i": "0123456789abcdef", "spi_r": "0001a2b3c4d5e6f7",
                "initiator": false, "state": "established", "local": "198.51.100.1:4500",
                "remote": "198.51.100.2:4500", "remote_id": "fqdn:site-a.example.net",
                "proposal": "aes256gcm16-prfsha256-x25519", "established_secs": 12
            })
        );
        let half = &v["ike_sas"][1];
        assert_eq!(half["spi_i"], "00000000000000fe", "16 digits, zero-padded");
        assert_eq!(half["state"], "connecting");
        assert!(
            half["tunnel"].is_null()
                && half["remote_id"].is_null()
                && half["established_secs"].is_null()
        );
        assert_eq!(
            v["child_sas"][0],
            serde_json::json!({
                "tunnel": "site-a", "spi_in": "c0012345", "spi_out": "00f2a1b0", "proposal": "aes256gcm16",
                "local_ts": ["10.20.0.0/24"], "remote_ts": ["10.10.0.0/24", "10.11.0.0/16[tcp/443]"],
                "encap": true, "established_secs": 3725,
                "in_packets": 0, "in_bytes": 0, "out_packets": 0, "out_bytes": 0, "drops": {}
            })
        );
        let c = &v["counters"];
        for k in [
            "rx_datagrams",
            "rx_malformed",
            "rx_dropped",
            "auth_failed",
            "no_proposal_chosen",
            "ike_sa_established",
            "child_sa_established",
        ] {
            assert!(c[k].is_u64(), "counter {k} missing: {c}");
        }
        assert_eq!(
            (
                c["rx_datagrams"].as_u64(),
                c["auth_failed"].as_u64(),
                c["rx_esp"].as_u64()
            ),
            (Some(9), Some(1), Some(3))
        );
        assert!(!json.contains('\n'), "one line");
        let mut names: Vec<&str> = c.as_object().unwrap().keys().map(String::as_str).collect();
        names.sort_unstable();
        let mut pairs: Vec<&str> = Counters::default()
            .pairs()
            .iter()
            .chain(DriverCounters::default().pairs().iter())
            .map(|p| p.0)
            .collect();
        pairs.sort_unstable();
        assert_eq!(names, pairs, "every counter is in the JSON, once");
    }

    #[test]
    fn json_round_trips() {
        let s = sample(Instant::now());
        assert_eq!(serde_json::from_str::<Status>(&s.to_json()).unwrap(), s);
        // A daemon with fewer (older) or more (newer) counters still parses.
        let mut v: serde_json::Value = serde_json::from_str(&s.to_json()).unwrap();
        let c = v["counters"].as_object_mut().unwrap();
        c.remove("rx_esp");
        c.insert("from_the_future".into(), 7.into());
        let back: Status = serde_json::from_value(v).unwrap();
        assert_eq!(back.counters.get("rx_esp"), None);
        assert_eq!(back.counters["from_the_future"], 7);
    }

    #[test]
    fn render_is_aligned() {
        let out = sample(Instant::now()).render();
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[0], "edge1 (node 1): 2 IKE SAs, 1 child SA");
        let header = lines.iter().position(|l| l.starts_with("IKE SA ")).unwrap();
        let (h, a, b) = (lines[header], lines[header + 1], lines[header + 2]);
        assert!(
            a.starts_with("site-a  established  responder  198.51.100.1:4500  "),
            "{a}"
        );
        assert!(
            b.starts_with("-       connecting   responder  198.51.100.1:500   "),
            "{b}"
        );
        // Every column starts at the same offset on every line.
        for col in ["STATE", "LOCAL", "PROPOSAL", "UP"] {
            let at = h.find(col).unwrap();
            assert_eq!(&a[at - 2..at], "  ", "{col} misaligned:\n{h}\n{a}");
            assert_eq!(&b[at - 2..at], "  ", "{col} misaligned:\n{h}\n{b}");
        }
        assert!(a.ends_with("aes256gcm16-prfsha256-x25519  12s"), "{a}");
        assert!(b.ends_with('-'), "{b}");
        let child = lines
            .iter()
            .find(|l| l.starts_with("site-a") && l.contains(" c0012345_i 00f2a1b0_o "))
            .expect("child line");
        assert!(
            child.contains("udp")
                && child.contains("10.20.0.0/24 === 10.10.0.0/24,10.11.0.0/16[tcp/443]"),
            "{child}"
        );
        assert!(child.ends_with("1h02m"), "{child}");
        assert!(
            lines
                .last()
                .unwrap()
                .starts_with("counters: auth_failed=1 "),
            "{out}"
        );
        assert!(
            lines.iter().all(|l| !l.ends_with(' ')),
            "trailing blanks:\n{out}"
        );
    }

    #[test]
    fn ages() {
        assert_eq!(age(0), "0s");
        assert_eq!(age(59), "59s");
        assert_eq!(age(60), "1m00s");
        assert_eq!(age(3599), "59m59s");
        assert_eq!(age(3600), "1h00m");
        assert_eq!(age(86_399), "23h59m");
        assert_eq!(age(2 * 86_400 + 4 * 3600 + 5), "2d04h");
    }

    #[test]
    fn requests_parse_and_print() {
        for line in [
            "status",
            "rekey site-a ike",
            "rekey site-a child",
            "terminate site-b ike",
            "terminate site-b child",
            "initiate hub",
        ] {
            let r = Request::parse(line).unwrap();
            assert_eq!(r.line(), line);
        }
        assert_eq!(
            Request::parse("  rekey   x  ike \n").unwrap(),
            Request::Rekey {
                tunnel: "x".into(),
                ike: true
            }
        );
        for bad in [
            "",
            "rekey",
            "rekey x",
            "rekey x both",
            "status now",
            "reboot",
        ] {
            assert!(Request::parse(bad).is_err(), "{bad:?}");
        }
        let long = "x".repeat(200);
        let e = Request::parse(&long).unwrap_err();
        assert!(e.len() < 200, "errors do not echo unbounded input");
    }

    #[test]
    fn error_answer() {
        let v: serde_json::Value =
            serde_json::from_str(&error_json("unknown request 'x\"'")).unwrap();
        assert_eq!(v["error"], "unknown request 'x\"'");
    }
}
