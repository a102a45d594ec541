//! anyhubd's configuration file (docs/daemon-contract.md): TOML in, a fully
//! validated [`DaemonConfig`] out.
//!
//! Nothing is half-applied: [`DaemonConfig::load`] either returns the whole
//! node's configuration, every string already parsed into the IKE core's
//! types, or one [`ConfigError`] naming the file, the field and what is
//! wrong — e.g.
//! `/etc/anyhub/anyhubd.toml: tunnel[1] (site-b).esp_proposals[0]: unknown
//! or unsupported algorithm 'aes999' in proposal 'aes999'`.
//!
//! The pre-shared keys go into [`Secret`] while the file is deserialised
//! and the file's text itself is held in a `Secret`, so both are wiped when
//! dropped. No error ever quotes a line of the file (toml's own error
//! display does, which could print a key): syntax errors carry toml's
//! message with our own line and column.
//!
//! Certificate tunnels (`auth = "pubkey"`) name PEM or DER files, relative
//! to the config file's directory; they are read and checked here (the
//! certificate is valid now and names `local_id`, the key is its key, the
//! CAs are CAs), so a bad credential starts nothing either. Private key
//! files are read into a `Secret`, and the key then lives in BoringSSL only.

use anyhub_crypto::sig::PrivateKey;
use anyhub_crypto::x509::{Certificate, TrustAnchors};
use anyhub_crypto::Secret;
use anyhub_ike::auth::{id_in_certificate, PubkeyAuth, TunnelAuth};
use anyhub_ike::config::DpdAction;
use anyhub_ike::wire::registry::IdType;
use anyhub_ike::wire::TrafficSelector;
use anyhub_ike::{ts, EndpointConfig, Identity, ProposalSpec, TunnelConfig, MAX_NODE_INDEX};
use serde::{Deserialize, Deserializer};
use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// `[ike] port` when absent.
pub const DEFAULT_PORT: u16 = 500;
/// `[ike] natt_port` when absent (RFC 3948 §2.2).
pub const DEFAULT_NATT_PORT: u16 = 4500;
/// `[ike] status_socket` when absent; also anyhubctl's default.
pub const DEFAULT_STATUS_SOCKET: &str = "/run/anyhub/anyhubd.sock";
/// The port a peer's IKE listens on when `remote_address` names none
/// (RFC 7296 §2).
pub const PEER_IKE_PORT: u16 = 500;
/// `ike_proposals` when absent.
pub const DEFAULT_IKE_PROPOSALS: &[&str] = &[
    "aes256gcm16-prfsha256-x25519",
    "aes128gcm16-prfsha256-ecp256",
    "aes256-sha256-modp2048",
];
/// `esp_proposals` when absent.
pub const DEFAULT_ESP_PROPOSALS: &[&str] = &["aes256gcm16", "aes128gcm16", "aes256-sha256"];
/// `ike_lifetime` when absent: 4h.
pub const DEFAULT_IKE_LIFETIME: Duration = Duration::from_secs(4 * 3600);
/// `child_lifetime` when absent: 1h.
pub const DEFAULT_CHILD_LIFETIME: Duration = Duration::from_secs(3600);
/// Smallest `ike.fragment_size`: the datagram every IPv4 host must accept
/// (RFC 791), which RFC 7383 §2.5.1 names as the conservative choice.
pub const MIN_FRAGMENT_SIZE: u16 = 576;
/// strongSwan's customary `dpd_delay`.
pub const DEFAULT_DPD_DELAY: Duration = Duration::from_secs(30);
/// Longest lifetime accepted (365 days): far beyond any sane rekey period,
/// and small enough that `now + lifetime` can never overflow an `Instant`.
pub const MAX_LIFETIME: Duration = Duration::from_secs(365 * 86_400);

/// The node's validated configuration.
#[derive(Clone, Debug)]
pub struct DaemonConfig {
    pub node_name: String,
    pub node_index: u16,
    /// Local addresses; IKE on `port` and NAT-T on `natt_port` of each.
    pub listen: Vec<IpAddr>,
    pub port: u16,
    pub natt_port: u16,
    pub status_socket: PathBuf,
    /// What the IKE core is told (node index, tunnels, NAT-T port).
    pub endpoint: EndpointConfig,
    /// The tunnels to start at startup (`initiate = true`), in file order.
    pub initiate: Vec<Initiation>,
    /// Every tunnel with a `remote_address` this node can initiate to (for
    /// `anyhubctl initiate`), in file order.
    pub targets: Vec<Initiation>,
    /// The userspace ESP dataplane (`[dataplane]`); absent: ESP arriving
    /// on the NAT-T port is counted (`rx_esp`) and dropped.
    pub dataplane: Option<DataplaneConfig>,
    /// SA replication with the other nodes (`[sync]`); absent: none.
    pub sync: Option<SyncConfig>,
}

/// `[sync]`: this node on the SA replication bus (docs/sa-sync.md).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyncConfig {
    /// Where the QUIC endpoint listens.
    pub listen: SocketAddr,
    /// Every other fleet member: (node index, its `listen`).
    pub peers: Vec<(u16, SocketAddr)>,
    /// The fleet directory: `ca.pem` and `<node.name>.pem` / `.key`
    /// (`sa-sync-node fleet init` / `fleet add-node`), relative to the
    /// config file's directory.
    pub fleet_dir: PathBuf,
    /// The first node of a new fleet (nobody to take a snapshot from).
    pub bootstrap: bool,
    /// Which nodes must hold a child SA we negotiated as responder before
    /// the response that lets the peer use it leaves (DESIGN.md: no
    /// "invalid SPI" window after a rekey).
    pub barrier: BarrierPolicy,
    /// How long a response may be held for the barrier; then it is sent
    /// anyway (and counted as `barrier_timed_out`).
    pub barrier_timeout: Duration,
    /// Fan-out mode (docs/sa-sync.md, "Topology"): this node is a relay.
    pub relay: bool,
    /// Fan-out mode: a leaf's upstream relays in order of preference, or a
    /// relay's fellow relays; empty (and `relay` false): full mesh.
    pub relays: Vec<u16>,
}

/// `[sync] barrier`: whose acknowledgement a new child SA waits for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BarrierPolicy {
    /// Send responses at once (replication still runs behind them).
    None,
    /// Every configured peer (`"all"`, the default).
    All,
    /// A majority of the fleet, counting this node (`"quorum"`).
    Quorum,
    /// These nodes (`[2, 3]`: e.g. the nodes of this site).
    Nodes(Vec<u16>),
}

/// The default `[sync] barrier_timeout_ms`.
pub const DEFAULT_BARRIER_TIMEOUT: Duration = Duration::from_millis(1000);
/// The longest allowed hold: below the 2 s a peer's first IKE retransmit
/// usually takes (strongSwan: 4 s).
pub const MAX_BARRIER_TIMEOUT: Duration = Duration::from_millis(2000);

/// `[dataplane]`: the node's local side (a TUN device) and its workers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DataplaneConfig {
    /// TUN device name (created if missing, at most 15 bytes).
    pub tun: String,
    /// Addresses put on the TUN (`addr/len`), optional.
    pub addresses: Vec<(IpAddr, u8)>,
    /// The TUN's MTU.
    pub mtu: u32,
    /// The outer path MTU the tunnels' inner MTU and MSS clamp follow.
    pub path_mtu: u32,
    /// Worker queues (TUN queues × 2 threads).
    pub queues: usize,
    /// Routes for every tunnel's remote_ts (as configured) via the TUN in
    /// the node's kernel.
    pub kernel_routes: bool,
    /// TUN offloads (vnet header, TSO/USO) and UDP GSO/GRO.
    pub offload: bool,
    /// Anti-replay window of every inbound SA (power of two, 64..=65536).
    pub replay_window: u32,
    /// ESP straight over IP (protocol 50) for SAs negotiated without UDP
    /// encapsulation (a raw socket; default on).
    pub raw_esp: bool,
    /// GRE tunnels (`[[gre]]`), in file order.
    pub gre: Vec<GreConfig>,
}

/// `[[gre]]`: one GRE tunnel (RFC 2784, key RFC 2890) from a customer
/// router to this node's address (the one `ike.listen` address).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GreConfig {
    pub id: Arc<str>,
    /// The customer router's outer address.
    pub remote: std::net::Ipv4Addr,
    /// Our outer address: the listen address.
    pub local: std::net::Ipv4Addr,
    pub key: Option<u32>,
    /// Inner prefixes behind the customer's router, routed into the tunnel.
    pub routes: Vec<anyhub_dataplane::route::Prefix>,
    /// Outer TTL.
    pub ttl: u8,
}

/// `[dataplane] mtu` when absent.
pub const DEFAULT_TUN_MTU: u32 = 1400;
/// `[dataplane] path_mtu` when absent.
pub const DEFAULT_PATH_MTU: u32 = 1500;

/// A tunnel this node initiates: from where to where IKE_SA_INIT goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Initiation {
    pub tunnel: Arc<str>,
    /// The first listen address of the peer's family, on `port`; on
    /// `natt_port` when `remote` is on a NAT-T port (4500 or `natt_port`).
    pub local: SocketAddr,
    /// `remote_address`, on port 500 unless it names one.
    pub remote: SocketAddr,
}

/// Why a configuration file was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{}: {error}", file.display())]
    Read {
        file: PathBuf,
        error: std::io::Error,
    },
    #[error("{}: TOML syntax error at line {line}, column {column}: {message}", file.display())]
    Syntax {
        file: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    /// `field` is the path to the offending value, e.g.
    /// `tunnel[1] (site-b).esp_proposals[0]`.
    #[error("{}: {field}: {message}", file.display())]
    Invalid {
        file: PathBuf,
        field: String,
        message: String,
    },
}

impl ConfigError {
    /// The field path of an [`ConfigError::Invalid`] error.
    pub fn field(&self) -> Option<&str> {
        match self {
            ConfigError::Invalid { field, .. } => Some(field),
            _ => None,
        }
    }
}

/// A validation failure before the file name is attached.
struct FieldError {
    field: String,
    message: String,
}

impl FieldError {
    fn new(field: impl fmt::Display, message: impl fmt::Display) -> FieldError {
        FieldError {
            field: field.to_string(),
            message: message.to_string(),
        }
    }
}

type Result<T, E = FieldError> = std::result::Result<T, E>;

// ------------------------------------------------------------ file syntax

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNode {
    index: i64,
    name: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIke {
    listen: Vec<String>,
    port: Option<i64>,
    natt_port: Option<i64>,
    status_socket: Option<PathBuf>,
    /// First retransmission of an unanswered request after this long
    /// (then ×1.8 each time); default 4 s as strongSwan.
    retransmit_timeout: Option<toml::Value>,
    /// Retransmissions before the peer counts as gone; default 5.
    retransmit_tries: Option<i64>,
    /// IKE fragmentation (RFC 7383); default on.
    fragmentation: Option<bool>,
    /// Half-open IKE SAs (in total / from one address) from which on
    /// IKE_SA_INIT needs a COOKIE (RFC 7296 §2.6).
    cookie_threshold: Option<i64>,
    cookie_threshold_ip: Option<i64>,
    /// Half-open IKE SAs one address may have.
    half_open_per_ip: Option<i64>,
    /// Largest IP datagram an IKE message may make before it is sent as
    /// fragments; default 1280 (strongSwan's).
    fragment_size: Option<i64>,
    /// Behind a NAT, a NAT keepalive (RFC 3948 §2.3) this often; default
    /// 20 s (strongSwan's `keep_alive`), `"off"` or 0 switches them off.
    nat_keepalive: Option<toml::Value>,
    /// As initiator, UDP-encapsulate ESP even without a NAT.
    force_encap: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDataplane {
    tun: String,
    addresses: Option<Vec<String>>,
    mtu: Option<i64>,
    path_mtu: Option<i64>,
    queues: Option<i64>,
    kernel_routes: Option<bool>,
    offload: Option<bool>,
    replay_window: Option<i64>,
    raw_esp: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSync {
    listen: String,
    peers: Option<Vec<RawSyncPeer>>,
    fleet_dir: PathBuf,
    bootstrap: Option<bool>,
    barrier: Option<toml::Value>,
    barrier_timeout_ms: Option<i64>,
    relay: Option<bool>,
    relays: Option<Vec<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSyncPeer {
    index: i64,
    address: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGre {
    id: String,
    remote: String,
    key: Option<i64>,
    routes: Option<Vec<String>>,
    ttl: Option<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTunnel {
    id: String,
    local_id: String,
    remote_id: String,
    /// `"psk"` (default) or `"pubkey"`.
    auth: Option<String>,
    /// With `auth = "psk"`.
    psk: Option<Psk>,
    /// With `auth = "pubkey"`: our certificate (PEM, optionally followed by
    /// intermediates to send; or DER), its private key, the CAs we trust.
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    cacerts: Option<Vec<PathBuf>>,
    ike_proposals: Option<Vec<String>>,
    esp_proposals: Option<Vec<String>>,
    local_ts: Vec<String>,
    remote_ts: Vec<String>,
    /// A string with a unit or bare seconds (string or integer): parsed by
    /// [`parse_lifetime`] for a better message than serde's.
    ike_lifetime: Option<toml::Value>,
    child_lifetime: Option<toml::Value>,
    remote_address: Option<String>,
    initiate: Option<bool>,
    /// Liveness checks after this long without hearing from the peer;
    /// `"off"` or `0` switches them off.
    dpd_delay: Option<toml::Value>,
    /// `"clear"` or `"restart"`.
    dpd_action: Option<String>,
    /// Reauthenticate this often (a new IKE SA); absent: never.
    reauth_time: Option<toml::Value>,
}

/// The PSK, moved into a [`Secret`] the moment it is deserialised.
struct Psk(Secret);

impl<'de> Deserialize<'de> for Psk {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Psk, D::Error> {
        // An owned toml string is moved, not copied, into the Secret.
        String::deserialize(d).map(|s| Psk(Secret::new(s.into_bytes())))
    }
}

impl DaemonConfig {
    /// Reads and validates the file at `path`.
    pub fn load(path: &Path) -> Result<DaemonConfig, ConfigError> {
        let bytes = std::fs::read(path).map_err(|error| ConfigError::Read {
            file: path.to_owned(),
            error,
        })?;
        // The text holds the PSKs: keep it in a Secret so it is wiped on drop.
        let bytes = Secret::new(bytes);
        let text = std::str::from_utf8(bytes.as_bytes()).map_err(|e| ConfigError::Invalid {
            file: path.to_owned(),
            field: "(file)".into(),
            message: format!("not UTF-8 (invalid byte at offset {})", e.valid_up_to()),
        })?;
        DaemonConfig::parse(text, path)
    }

    /// Validates `text`; `file` only names it in errors.
    pub fn parse(text: &str, file: &Path) -> Result<DaemonConfig, ConfigError> {
        let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
            let (line, column) = e.span().map_or((1, 1), |s| line_column(text, s.start));
            ConfigError::Syntax {
                file: file.to_owned(),
                line,
                column,
                message: e.message().trim_end().replace('\n', "; "),
            }
        })?;
        // Credential files are named relative to the config file.
        let base = file.parent().unwrap_or(Path::new("."));
        from_table(table, base).map_err(|e| ConfigError::Invalid {
            file: file.to_owned(),
            field: e.field,
            message: e.message,
        })
    }
}

/// 1-based line and column (in characters) of byte `offset` in `text`.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

/// Deserialises one section, naming the key serde choked on.
fn section<T: serde::de::DeserializeOwned>(path: &str, value: toml::Value) -> Result<T> {
    T::deserialize(value).map_err(|e| {
        // A value-level toml error displays as "{message}\nin `{key}`" (no
        // source is attached, so no line of the file is quoted).
        let full = e.to_string();
        let key = full
            .strip_prefix(e.message())
            .and_then(|rest| rest.trim().strip_prefix("in `"))
            .and_then(|k| k.strip_suffix('`'))
            .filter(|k| !k.is_empty());
        match key {
            // serde's type errors quote the value: never for a key.
            Some("psk") => FieldError::new(format!("{path}.psk"), "must be a string"),
            Some(k) => FieldError::new(format!("{path}.{k}"), e.message()),
            None => FieldError::new(path, e.message()),
        }
    })
}

fn from_table(mut table: toml::Table, base: &Path) -> Result<DaemonConfig> {
    for key in table.keys() {
        if !matches!(
            key.as_str(),
            "node" | "ike" | "tunnel" | "dataplane" | "gre" | "sync"
        ) {
            return Err(FieldError::new(
                key,
                "unknown section, expected one of [node], [ike], [[tunnel]], [dataplane], [[gre]], [sync]",
            ));
        }
    }
    let node: RawNode = match table.remove("node") {
        Some(v @ toml::Value::Table(_)) => section("node", v)?,
        Some(_) => return Err(FieldError::new("node", "must be a table ([node])")),
        None => return Err(FieldError::new("node", "missing section [node]")),
    };
    let ike: RawIke = match table.remove("ike") {
        Some(v @ toml::Value::Table(_)) => section("ike", v)?,
        Some(_) => return Err(FieldError::new("ike", "must be a table ([ike])")),
        None => return Err(FieldError::new("ike", "missing section [ike]")),
    };
    let raw_dataplane: Option<RawDataplane> = match table.remove("dataplane") {
        Some(v @ toml::Value::Table(_)) => Some(section("dataplane", v)?),
        Some(_) => {
            return Err(FieldError::new(
                "dataplane",
                "must be a table ([dataplane])",
            ))
        }
        None => None,
    };
    let raw_sync: Option<RawSync> = match table.remove("sync") {
        Some(v @ toml::Value::Table(_)) => Some(section("sync", v)?),
        Some(_) => return Err(FieldError::new("sync", "must be a table ([sync])")),
        None => None,
    };
    let raw_gre = match table.remove("gre") {
        Some(toml::Value::Array(a)) => a,
        Some(_) => {
            return Err(FieldError::new(
                "gre",
                "must be an array of tables ([[gre]])",
            ))
        }
        None => Vec::new(),
    };
    let raw_tunnels = match table.remove("tunnel") {
        Some(toml::Value::Array(a)) => a,
        Some(_) => {
            return Err(FieldError::new(
                "tunnel",
                "must be an array of tables ([[tunnel]])",
            ))
        }
        None => Vec::new(),
    };

    let node_index = u16::try_from(node.index)
        .ok()
        .filter(|i| (1..=MAX_NODE_INDEX).contains(i))
        .ok_or_else(|| {
            FieldError::new(
                "node.index",
                format!("must be between 1 and {MAX_NODE_INDEX}, got {}", node.index),
            )
        })?;
    if node.name.trim().is_empty() {
        return Err(FieldError::new("node.name", "must not be empty"));
    }

    let listen = parse_listen(&ike.listen)?;
    let port = parse_port("ike.port", ike.port, DEFAULT_PORT)?;
    let natt_port = parse_port("ike.natt_port", ike.natt_port, DEFAULT_NATT_PORT)?;
    if port == natt_port {
        return Err(FieldError::new(
            "ike.natt_port",
            format!("must differ from ike.port ({port})"),
        ));
    }
    let status_socket = ike
        .status_socket
        .unwrap_or_else(|| DEFAULT_STATUS_SOCKET.into());
    if status_socket.as_os_str().is_empty() {
        return Err(FieldError::new("ike.status_socket", "must not be empty"));
    }

    let mut tunnels: Vec<Arc<TunnelConfig>> = Vec::with_capacity(raw_tunnels.len());
    let mut initiate = Vec::new();
    let mut targets = Vec::new();
    let mut ids: HashMap<Arc<str>, usize> = HashMap::new();
    let mut remote_ids: HashMap<Identity, usize> = HashMap::new();
    for (i, value) in raw_tunnels.into_iter().enumerate() {
        let path = match value.get("id").and_then(|v| v.as_str()) {
            Some(id) => format!("tunnel[{i}] ({id})"),
            None => format!("tunnel[{i}]"),
        };
        if !value.is_table() {
            return Err(FieldError::new(path, "must be a table ([[tunnel]])"));
        }
        let raw: RawTunnel = section(&path, value)?;
        let (tunnel, remote) = tunnel(&path, raw, &listen, base)?;
        if let Some(first) = ids.insert(tunnel.id.clone(), i) {
            return Err(FieldError::new(
                format!("{path}.id"),
                format!("duplicate tunnel id '{}' (also tunnel[{first}])", tunnel.id),
            ));
        }
        // DNs are equal regardless of case and string types: compare those
        // as DNs, everything else by value.
        let same_dn = || {
            tunnels.iter().position(|t| {
                t.remote_id.ty == IdType::DER_ASN1_DN
                    && t.remote_id.matches(&tunnel.remote_id.to_wire())
            })
        };
        let duplicate = match remote_ids.insert(tunnel.remote_id.clone(), i) {
            Some(first) => Some(first),
            None if tunnel.remote_id.ty == IdType::DER_ASN1_DN => same_dn(),
            None => None,
        };
        if let Some(first) = duplicate {
            return Err(FieldError::new(
                format!("{path}.remote_id"),
                format!(
                    "'{}' is also the remote_id of tunnel[{first}] ({}); the peer's identity selects the tunnel, so it must be unique",
                    tunnel.remote_id, tunnels[first].id
                ),
            ));
        }
        if let Some(remote) = remote {
            let local_ip = listen
                .iter()
                .copied()
                .find(|a| a.is_ipv4() == remote.is_ipv4())
                .expect("tunnel() checked the family");
            // A peer addressed on its NAT-T port gets IKE from ours, with
            // the non-ESP marker (RFC 7296 §2.23 lets an initiator start
            // on 4500; RFC 3948 §2.2 says how it is framed there).
            let local_port = if remote.port() == DEFAULT_NATT_PORT || remote.port() == natt_port {
                natt_port
            } else {
                port
            };
            let target = Initiation {
                tunnel: tunnel.id.clone(),
                local: SocketAddr::new(local_ip, local_port),
                remote,
            };
            if tunnel.initiate {
                initiate.push(target.clone());
            }
            targets.push(target);
        }
        tunnels.push(Arc::new(tunnel));
    }

    let mut endpoint = EndpointConfig::new(node_index, tunnels);
    endpoint.natt_port = natt_port;
    endpoint.ike_port = port;
    if let Some(v) = ike.retransmit_timeout {
        endpoint.retransmit.timeout =
            parse_lifetime(&v).map_err(|m| FieldError::new("ike.retransmit_timeout", m))?;
    }
    let count = |field: &str, v: i64| {
        usize::try_from(v)
            .ok()
            .filter(|n| *n <= anyhub_ike::MAX_HALF_OPEN)
            .ok_or_else(|| {
                FieldError::new(
                    field,
                    format!("must be 0..={}, got {v}", anyhub_ike::MAX_HALF_OPEN),
                )
            })
    };
    if let Some(v) = ike.cookie_threshold {
        endpoint.cookie_threshold = count("ike.cookie_threshold", v)?;
    }
    if let Some(v) = ike.cookie_threshold_ip {
        endpoint.cookie_threshold_ip = count("ike.cookie_threshold_ip", v)?;
    }
    if let Some(v) = ike.half_open_per_ip {
        endpoint.half_open_per_ip = count("ike.half_open_per_ip", v)?.max(1);
    }
    match ike.nat_keepalive {
        None => {}
        Some(toml::Value::Integer(0)) => endpoint.nat_keepalive = None,
        Some(toml::Value::String(s)) if s == "off" || s == "0" => endpoint.nat_keepalive = None,
        Some(v) => {
            endpoint.nat_keepalive =
                Some(parse_lifetime(&v).map_err(|m| FieldError::new("ike.nat_keepalive", m))?)
        }
    }
    if let Some(on) = ike.fragmentation {
        endpoint.fragmentation = on;
    }
    if let Some(on) = ike.force_encap {
        endpoint.force_encap = on;
    }
    if let Some(n) = ike.fragment_size {
        endpoint.fragment_size = u16::try_from(n)
            .ok()
            .filter(|n| *n >= MIN_FRAGMENT_SIZE)
            .ok_or_else(|| {
                FieldError::new(
                    "ike.fragment_size",
                    format!("must be {MIN_FRAGMENT_SIZE}..=65535 (bytes of IP datagram), got {n}"),
                )
            })?;
    }
    if let Some(n) = ike.retransmit_tries {
        endpoint.retransmit.tries = u32::try_from(n)
            .ok()
            .filter(|n| (1..=20).contains(n))
            .ok_or_else(|| {
                FieldError::new("ike.retransmit_tries", format!("must be 1..=20, got {n}"))
            })?;
    }
    let mut dataplane = match raw_dataplane {
        Some(d) => Some(dataplane(d, &listen)?),
        None => None,
    };
    if !raw_gre.is_empty() {
        let Some(dp) = dataplane.as_mut() else {
            return Err(FieldError::new(
                "gre",
                "GRE tunnels need the userspace dataplane: add a [dataplane] section",
            ));
        };
        let ids: Vec<&str> = endpoint.tunnels.iter().map(|t| &*t.id).collect();
        dp.gre = gre_tunnels(raw_gre, listen[0], &ids)?;
    }
    let sync = match raw_sync {
        Some(s) => Some(sync(s, node_index, base)?),
        None => None,
    };
    Ok(DaemonConfig {
        dataplane,
        sync,
        node_name: node.name,
        node_index,
        listen,
        port,
        natt_port,
        status_socket,
        endpoint,
        initiate,
        targets,
    })
}

fn sync(s: RawSync, me: u16, base: &Path) -> Result<SyncConfig> {
    let addr = |field: &str, a: &str| -> Result<SocketAddr> {
        a.trim()
            .parse()
            .map_err(|_| FieldError::new(field, format!("'{}' is not addr:port", shorten(a))))
    };
    let listen = addr("sync.listen", &s.listen)?;
    let mut peers: Vec<(u16, SocketAddr)> = Vec::new();
    for (i, p) in s.peers.unwrap_or_default().iter().enumerate() {
        let field = format!("sync.peers[{i}]");
        let index = u16::try_from(p.index)
            .ok()
            .filter(|n| (1..=MAX_NODE_INDEX).contains(n))
            .ok_or_else(|| {
                FieldError::new(
                    format!("{field}.index"),
                    format!("must be 1..={MAX_NODE_INDEX}, got {}", p.index),
                )
            })?;
        if index == me {
            return Err(FieldError::new(
                format!("{field}.index"),
                format!("{index} is this node's own index"),
            ));
        }
        if peers.iter().any(|(n, _)| *n == index) {
            return Err(FieldError::new(
                format!("{field}.index"),
                format!("node {index} is listed twice"),
            ));
        }
        peers.push((index, addr(&format!("{field}.address"), &p.address)?));
    }
    if s.fleet_dir.as_os_str().is_empty() {
        return Err(FieldError::new("sync.fleet_dir", "must not be empty"));
    }
    let barrier = match &s.barrier {
        None => BarrierPolicy::All,
        Some(toml::Value::String(v)) => match v.as_str() {
            "all" => BarrierPolicy::All,
            "quorum" => BarrierPolicy::Quorum,
            "none" => BarrierPolicy::None,
            other => {
                return Err(FieldError::new(
                    "sync.barrier",
                    format!(
                        "'{}': expected \"all\", \"quorum\", \"none\" or an array of node indices",
                        shorten(other)
                    ),
                ))
            }
        },
        Some(toml::Value::Array(a)) => {
            let mut nodes = Vec::new();
            for (i, v) in a.iter().enumerate() {
                let n = v
                    .as_integer()
                    .and_then(|n| u16::try_from(n).ok())
                    .filter(|n| *n != me && peers.iter().any(|(p, _)| p == n))
                    .ok_or_else(|| {
                        FieldError::new(
                            format!("sync.barrier[{i}]"),
                            format!("{v} is not the index of a node in sync.peers"),
                        )
                    })?;
                if !nodes.contains(&n) {
                    nodes.push(n);
                }
            }
            if nodes.is_empty() {
                return Err(FieldError::new(
                    "sync.barrier",
                    "an empty list: use \"none\" to send responses at once",
                ));
            }
            BarrierPolicy::Nodes(nodes)
        }
        Some(other) => {
            return Err(FieldError::new(
                "sync.barrier",
                format!(
                    "expected \"all\", \"quorum\", \"none\" or an array of node indices, got a {}",
                    other.type_str()
                ),
            ))
        }
    };
    let barrier_timeout = match s.barrier_timeout_ms {
        None => DEFAULT_BARRIER_TIMEOUT,
        Some(ms) => u64::try_from(ms)
            .ok()
            .map(Duration::from_millis)
            .filter(|d| !d.is_zero() && *d <= MAX_BARRIER_TIMEOUT)
            .ok_or_else(|| {
                FieldError::new(
                    "sync.barrier_timeout_ms",
                    format!("must be 1..={}, got {ms}", MAX_BARRIER_TIMEOUT.as_millis()),
                )
            })?,
    };
    let mut relays = Vec::new();
    for (i, r) in s.relays.unwrap_or_default().iter().enumerate() {
        let n = u16::try_from(*r)
            .ok()
            .filter(|n| peers.iter().any(|(p, _)| p == n))
            .ok_or_else(|| {
                FieldError::new(
                    format!("sync.relays[{i}]"),
                    format!("{r} is not the index of a node in sync.peers"),
                )
            })?;
        if relays.contains(&n) {
            return Err(FieldError::new(
                format!("sync.relays[{i}]"),
                format!("node {n} is listed twice"),
            ));
        }
        relays.push(n);
    }
    let relay = s.relay.unwrap_or(false);
    if !relay && !relays.is_empty() && relays.len() < 2 {
        // One upstream is a single point of failure for this leaf: a
        // dead relay would cut it off until it returns.
        return Err(FieldError::new(
            "sync.relays",
            "a leaf needs at least two relays (it fails over to the next)",
        ));
    }
    Ok(SyncConfig {
        listen,
        peers,
        fleet_dir: base.join(s.fleet_dir),
        bootstrap: s.bootstrap.unwrap_or(false),
        barrier,
        barrier_timeout,
        relay,
        relays,
    })
}

fn dataplane(d: RawDataplane, listen: &[IpAddr]) -> Result<DataplaneConfig> {
    if d.tun.is_empty() || d.tun.len() > 15 || d.tun.contains(['/', ' ', '%']) {
        return Err(FieldError::new(
            "dataplane.tun",
            format!(
                "'{}' is not a device name (1..=15 bytes, no '/', ' ' or '%')",
                shorten(&d.tun)
            ),
        ));
    }
    // One NAT-T socket carries the dataplane: its workers read it and
    // send from it, so ESP leaves from the address the peer talks to.
    if listen.len() != 1 {
        return Err(FieldError::new(
            "dataplane",
            format!(
                "needs exactly one ike.listen address (has {}): the dataplane serves that address's NAT-T socket",
                listen.len()
            ),
        ));
    }
    let mut addresses = Vec::new();
    for (i, a) in d.addresses.unwrap_or_default().iter().enumerate() {
        let field = format!("dataplane.addresses[{i}]");
        let bad = || FieldError::new(&field, format!("'{}' is not addr/len", shorten(a)));
        let (ip, len) = a.split_once('/').ok_or_else(bad)?;
        let ip: IpAddr = ip.trim().parse().map_err(|_| bad())?;
        let len: u8 = len.trim().parse().map_err(|_| bad())?;
        if len > if ip.is_ipv4() { 32 } else { 128 } {
            return Err(bad());
        }
        addresses.push((ip, len));
    }
    let int = |field: &str, v: Option<i64>, default: i64, lo: i64, hi: i64| -> Result<i64> {
        match v {
            None => Ok(default),
            Some(n) if (lo..=hi).contains(&n) => Ok(n),
            Some(n) => Err(FieldError::new(
                format!("dataplane.{field}"),
                format!("must be {lo}..={hi}, got {n}"),
            )),
        }
    };
    let mtu = int("mtu", d.mtu, DEFAULT_TUN_MTU.into(), 576, 65_535)? as u32;
    let path_mtu = int("path_mtu", d.path_mtu, DEFAULT_PATH_MTU.into(), 576, 65_535)? as u32;
    let queues = int("queues", d.queues, 1, 1, 16)? as usize;
    let replay_window = int("replay_window", d.replay_window, 1024, 64, 65_536)? as u32;
    if !replay_window.is_power_of_two() {
        return Err(FieldError::new(
            "dataplane.replay_window",
            format!("must be a power of two, got {replay_window}"),
        ));
    }
    Ok(DataplaneConfig {
        tun: d.tun,
        addresses,
        mtu,
        path_mtu,
        queues,
        kernel_routes: d.kernel_routes.unwrap_or(true),
        offload: d.offload.unwrap_or(true),
        replay_window,
        raw_esp: d.raw_esp.unwrap_or(true),
        gre: Vec::new(),
    })
}

fn gre_tunnels(raw: Vec<toml::Value>, local: IpAddr, ipsec: &[&str]) -> Result<Vec<GreConfig>> {
    let IpAddr::V4(local) = local else {
        return Err(FieldError::new(
            "gre",
            "GRE needs an IPv4 ike.listen address (IPv6 outer headers are not supported yet)",
        ));
    };
    let mut out: Vec<GreConfig> = Vec::with_capacity(raw.len());
    for (i, value) in raw.into_iter().enumerate() {
        let path = format!("gre[{i}]");
        let g: RawGre = section(&path, value)?;
        let path = format!("gre[{i}] ({})", shorten(&g.id));
        if g.id.trim().is_empty() {
            return Err(FieldError::new(format!("gre[{i}].id"), "must not be empty"));
        }
        if ipsec.contains(&g.id.as_str()) || out.iter().any(|o| *o.id == *g.id) {
            return Err(FieldError::new(
                format!("{path}.id"),
                "is already the id of another [[tunnel]] or [[gre]]",
            ));
        }
        let remote: std::net::Ipv4Addr = g.remote.trim().parse().map_err(|_| {
            FieldError::new(
                format!("{path}.remote"),
                format!("'{}' is not an IPv4 address", shorten(&g.remote)),
            )
        })?;
        let key = match g.key {
            None => None,
            Some(k) => Some(u32::try_from(k).map_err(|_| {
                FieldError::new(
                    format!("{path}.key"),
                    format!("must be 0..=4294967295, got {k}"),
                )
            })?),
        };
        if out.iter().any(|o| o.remote == remote && o.key == key) {
            return Err(FieldError::new(
                format!("{path}.remote"),
                "another [[gre]] has the same remote and key: packets could not be told apart",
            ));
        }
        let mut routes = Vec::new();
        for (j, r) in g.routes.unwrap_or_default().iter().enumerate() {
            let p: anyhub_dataplane::route::Prefix = r.trim().parse().map_err(|_| {
                FieldError::new(
                    format!("{path}.routes[{j}]"),
                    format!("'{}' is not a prefix (addr/len)", shorten(r)),
                )
            })?;
            routes.push(p);
        }
        let ttl = match g.ttl {
            None => anyhub_dataplane::gre::DEFAULT_TTL,
            Some(t) => u8::try_from(t).ok().filter(|t| *t > 0).ok_or_else(|| {
                FieldError::new(format!("{path}.ttl"), format!("must be 1..=255, got {t}"))
            })?,
        };
        out.push(GreConfig {
            id: g.id.into(),
            remote,
            local,
            key,
            routes,
            ttl,
        });
    }
    Ok(out)
}

/// A user-supplied string as shown in an error: at most 32 characters.
fn shorten(s: &str) -> String {
    s.chars().take(32).collect()
}

fn parse_listen(raw: &[String]) -> Result<Vec<IpAddr>> {
    if raw.is_empty() {
        return Err(FieldError::new(
            "ike.listen",
            "must name at least one address",
        ));
    }
    let mut out: Vec<IpAddr> = Vec::with_capacity(raw.len());
    for (i, s) in raw.iter().enumerate() {
        let field = format!("ike.listen[{i}]");
        let a: IpAddr = s
            .trim()
            .parse()
            .map_err(|_| FieldError::new(&field, format!("'{s}' is not an IP address")))?;
        if a.is_unspecified() {
            // Replies must leave from the address the peer sent to, and NAT
            // detection hashes our address (RFC 7296 §2.23).
            return Err(FieldError::new(
                &field,
                format!("'{s}' is a wildcard; name each local address"),
            ));
        }
        if out.contains(&a) {
            return Err(FieldError::new(&field, format!("'{s}' is listed twice")));
        }
        out.push(a);
    }
    Ok(out)
}

fn parse_port(field: &str, raw: Option<i64>, default: u16) -> Result<u16> {
    match raw {
        None => Ok(default),
        Some(p) => u16::try_from(p)
            .ok()
            .filter(|&p| p != 0)
            .ok_or_else(|| FieldError::new(field, format!("must be between 1 and 65535, got {p}"))),
    }
}

/// One `[[tunnel]]`, and where to initiate it to if `initiate = true`.
fn tunnel(
    path: &str,
    raw: RawTunnel,
    listen: &[IpAddr],
    base: &Path,
) -> Result<(TunnelConfig, Option<SocketAddr>)> {
    let field = |name: &str| format!("{path}.{name}");
    let id = raw.id.trim();
    if id.is_empty() {
        return Err(FieldError::new(field("id"), "must not be empty"));
    }
    let local_id =
        Identity::parse(&raw.local_id).map_err(|e| FieldError::new(field("local_id"), e))?;
    let remote_id =
        Identity::parse(&raw.remote_id).map_err(|e| FieldError::new(field("remote_id"), e))?;
    let (auth, local_id) = tunnel_auth(path, &raw, local_id, &remote_id, base)?;
    let ike_proposals = proposals(
        &field("ike_proposals"),
        raw.ike_proposals,
        DEFAULT_IKE_PROPOSALS,
        ProposalSpec::parse_ike,
    )?;
    let esp_proposals = proposals(
        &field("esp_proposals"),
        raw.esp_proposals,
        DEFAULT_ESP_PROPOSALS,
        ProposalSpec::parse_esp,
    )?;
    let local_ts = selectors(&field("local_ts"), &raw.local_ts)?;
    let remote_ts = selectors(&field("remote_ts"), &raw.remote_ts)?;
    let ike_lifetime = lifetime(
        &field("ike_lifetime"),
        raw.ike_lifetime,
        DEFAULT_IKE_LIFETIME,
    )?;
    let child_lifetime = lifetime(
        &field("child_lifetime"),
        raw.child_lifetime,
        DEFAULT_CHILD_LIFETIME,
    )?;
    let remote = raw
        .remote_address
        .as_deref()
        .map(|s| remote_address(s).map_err(|m| FieldError::new(field("remote_address"), m)))
        .transpose()?;
    let initiate = raw.initiate.unwrap_or(false);
    let family_ok = |r: &SocketAddr| listen.iter().any(|a| a.is_ipv4() == r.is_ipv4());
    let target = match (initiate, remote) {
        // Still a target for an operator's `anyhubctl initiate`, where the
        // family allows.
        (false, r) => r.filter(family_ok),
        (true, None) => {
            return Err(FieldError::new(
                field("remote_address"),
                "required when initiate = true",
            ))
        }
        (true, Some(r)) => {
            if !family_ok(&r) {
                let family = if r.is_ipv4() { "IPv4" } else { "IPv6" };
                return Err(FieldError::new(
                    field("remote_address"),
                    format!("is {family} but ike.listen has no {family} address to initiate from"),
                ));
            }
            Some(r)
        }
    };
    let dpd_delay = match raw.dpd_delay {
        None => Some(DEFAULT_DPD_DELAY),
        Some(toml::Value::Integer(0)) => None,
        Some(toml::Value::String(s)) if s == "off" || s == "0" => None,
        Some(v) => Some(parse_lifetime(&v).map_err(|m| FieldError::new(field("dpd_delay"), m))?),
    };
    let reauth_time = raw
        .reauth_time
        .map(|v| parse_lifetime(&v).map_err(|m| FieldError::new(field("reauth_time"), m)))
        .transpose()?;
    let dpd_action = match raw.dpd_action.as_deref() {
        None | Some("clear") => DpdAction::Clear,
        Some("restart") => DpdAction::Restart,
        Some(other) => {
            return Err(FieldError::new(
                field("dpd_action"),
                format!("'{other}': expected \"clear\" or \"restart\""),
            ))
        }
    };
    let tunnel = TunnelConfig {
        id: Arc::from(id),
        local_id,
        remote_id,
        auth,
        ike_proposals,
        esp_proposals,
        local_ts,
        remote_ts,
        ike_lifetime,
        child_lifetime,
        remote_address: remote.map(|r| r.ip()),
        initiate,
        dpd_delay,
        dpd_action,
        reauth_time,
    };
    Ok((tunnel, target))
}

/// `auth`, `psk`, `cert`, `key`, `cacerts`: the tunnel's authentication,
/// and `local_id` as we send it (a DN equal to our certificate's subject is
/// sent exactly as the certificate encodes it).
fn tunnel_auth(
    path: &str,
    raw: &RawTunnel,
    local_id: Identity,
    remote_id: &Identity,
    base: &Path,
) -> Result<(TunnelAuth, Identity)> {
    let field = |name: &str| format!("{path}.{name}");
    match raw.auth.as_deref() {
        None | Some("psk") => {
            for (name, set) in [
                ("cert", raw.cert.is_some()),
                ("key", raw.key.is_some()),
                ("cacerts", raw.cacerts.is_some()),
            ] {
                if set {
                    return Err(FieldError::new(
                        field(name),
                        "is only used with auth = \"pubkey\"",
                    ));
                }
            }
            let Some(psk) = &raw.psk else {
                return Err(FieldError::new(
                    path,
                    "missing field `psk` (or set auth = \"pubkey\" with cert, key and cacerts)",
                ));
            };
            if psk.0.is_empty() {
                return Err(FieldError::new(field("psk"), "must not be empty"));
            }
            Ok((TunnelAuth::Psk(psk.0.clone()), local_id))
        }
        Some("pubkey") => {
            if raw.psk.is_some() {
                return Err(FieldError::new(
                    field("psk"),
                    "is not used with auth = \"pubkey\" (remove it)",
                ));
            }
            let need = |name: &str, v: &Option<PathBuf>| -> Result<PathBuf> {
                v.as_ref().map(|p| base.join(p)).ok_or_else(|| {
                    FieldError::new(field(name), "is required with auth = \"pubkey\"")
                })
            };
            let cert_file = need("cert", &raw.cert)?;
            let key_file = need("key", &raw.key)?;
            let ca_files = match &raw.cacerts {
                Some(v) if !v.is_empty() => v.iter().map(|p| base.join(p)).collect::<Vec<_>>(),
                _ => {
                    return Err(FieldError::new(
                        field("cacerts"),
                        "must name at least one CA certificate file with auth = \"pubkey\"",
                    ))
                }
            };

            let certs = read_certs(&field("cert"), &cert_file)?;
            let mut certs = certs.into_iter();
            let cert = certs.next().expect("read_certs returns at least one");
            let chain: Vec<Certificate> = certs.collect();
            let now = SystemTime::now();
            if !cert.valid_at(now) {
                return Err(FieldError::new(
                    field("cert"),
                    format!(
                        "{}: the certificate '{}' is expired or not yet valid",
                        cert_file.display(),
                        cert.subject()
                    ),
                ));
            }
            let key_bytes = Secret::new(read_file(&field("key"), &key_file)?);
            let key = PrivateKey::from_pem_or_der(key_bytes.as_bytes()).map_err(|e| {
                FieldError::new(field("key"), format!("{}: {e}", key_file.display()))
            })?;
            drop(key_bytes);

            let mut cas = Vec::new();
            for (i, f) in ca_files.iter().enumerate() {
                let name = format!("{}[{i}]", field("cacerts"));
                for ca in read_certs(&name, f)? {
                    if !ca.is_ca() {
                        return Err(FieldError::new(
                            name,
                            format!(
                                "{}: '{}' is not a CA certificate (no basicConstraints CA:TRUE)",
                                f.display(),
                                ca.subject()
                            ),
                        ));
                    }
                    cas.push(ca);
                }
            }
            let anchors =
                TrustAnchors::new(cas).map_err(|e| FieldError::new(field("cacerts"), e))?;

            // The peer must find our ID in our certificate (RFC 4945 §3.1).
            if !id_in_certificate(&local_id.to_wire(), &cert) {
                let mut names: Vec<String> = cert
                    .dns_names()
                    .into_iter()
                    .map(|d| format!("fqdn:{d}"))
                    .collect();
                names.extend(cert.emails().into_iter().map(|e| format!("email:{e}")));
                names.extend(cert.ip_addresses().iter().filter_map(|a| match a.len() {
                    4 => Some(
                        std::net::Ipv4Addr::from(<[u8; 4]>::try_from(&a[..]).ok()?).to_string(),
                    ),
                    16 => Some(
                        std::net::Ipv6Addr::from(<[u8; 16]>::try_from(&a[..]).ok()?).to_string(),
                    ),
                    _ => None,
                }));
                return Err(FieldError::new(
                    field("local_id"),
                    format!(
                        "'{local_id}' is not in {} (subject '{}'{}{})",
                        cert_file.display(),
                        cert.subject(),
                        if names.is_empty() {
                            ", no subjectAltNames"
                        } else {
                            ", subjectAltNames "
                        },
                        names.join(", ")
                    ),
                ));
            }
            if remote_id.ty == IdType::KEY_ID {
                return Err(FieldError::new(
                    field("remote_id"),
                    "a keyid names no certificate field: use the peer's subject DN or a subjectAltName (fqdn, email, IP)",
                ));
            }
            let local_id = if local_id.ty == IdType::DER_ASN1_DN {
                Identity::dn(cert.subject_der())
                    .map_err(|e| FieldError::new(field("local_id"), e))?
            } else {
                local_id
            };
            let auth = PubkeyAuth::new(cert, chain, key, anchors).map_err(|e| {
                FieldError::new(
                    field("key"),
                    format!("{} with {}: {e}", key_file.display(), cert_file.display()),
                )
            })?;
            Ok((TunnelAuth::Pubkey(Arc::new(auth)), local_id))
        }
        Some(other) => Err(FieldError::new(
            field("auth"),
            format!("'{other}': expected \"psk\" or \"pubkey\""),
        )),
    }
}

fn read_file(field: &str, file: &Path) -> Result<Vec<u8>> {
    std::fs::read(file).map_err(|e| FieldError::new(field, format!("{}: {e}", file.display())))
}

/// The certificates of a PEM (one or more) or DER file; at least one.
fn read_certs(field: &str, file: &Path) -> Result<Vec<Certificate>> {
    let bytes = read_file(field, file)?;
    Certificate::parse_pem_or_der(&bytes)
        .map_err(|e| FieldError::new(field, format!("{}: {e}", file.display())))
}

fn proposals<E: fmt::Display>(
    field: &str,
    raw: Option<Vec<String>>,
    default: &[&str],
    parse: impl Fn(&str) -> Result<ProposalSpec, E>,
) -> Result<Vec<ProposalSpec>> {
    let Some(raw) = raw else {
        return Ok(default
            .iter()
            .map(|p| {
                parse(p).unwrap_or_else(|e| panic!("default proposal '{p}' does not parse: {e}"))
            })
            .collect());
    };
    if raw.is_empty() {
        return Err(FieldError::new(
            field,
            "must not be empty (omit it for the defaults)",
        ));
    }
    raw.iter()
        .enumerate()
        .map(|(i, p)| parse(p).map_err(|e| FieldError::new(format!("{field}[{i}]"), e)))
        .collect()
}

fn selectors(field: &str, raw: &[String]) -> Result<Vec<TrafficSelector>> {
    if raw.is_empty() {
        return Err(FieldError::new(
            field,
            "must name at least one traffic selector",
        ));
    }
    raw.iter()
        .enumerate()
        .map(|(i, s)| ts::parse(s).map_err(|e| FieldError::new(format!("{field}[{i}]"), e)))
        .collect()
}

fn lifetime(field: &str, raw: Option<toml::Value>, default: Duration) -> Result<Duration> {
    match raw {
        None => Ok(default),
        Some(v) => parse_lifetime(&v).map_err(|m| FieldError::new(field, m)),
    }
}

/// `"4h"`, `"30m"`, `"90s"`, `"1d"`, or bare seconds (`"3600"` or `3600`);
/// greater than zero and at most [`MAX_LIFETIME`].
pub fn parse_lifetime(v: &toml::Value) -> Result<Duration, String> {
    const EXPECTED: &str =
        "expected a duration such as \"4h\", \"30m\", \"90s\", \"1d\" or a number of seconds";
    let secs: u64 = match v {
        toml::Value::Integer(n) => {
            u64::try_from(*n).map_err(|_| format!("must be greater than zero, got {n}"))?
        }
        toml::Value::String(s) => {
            let t = s.trim();
            let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
            let (digits, unit) = t.split_at(split);
            let scale = match unit.trim() {
                "" | "s" => 1,
                "m" => 60,
                "h" => 3600,
                "d" => 86_400,
                _ => return Err(format!("'{s}': {EXPECTED}")),
            };
            let n: u64 = digits.parse().map_err(|_| format!("'{s}': {EXPECTED}"))?;
            // Saturates: anything that large fails the MAX_LIFETIME check below.
            n.saturating_mul(scale)
        }
        other => return Err(format!("{EXPECTED}, got a {}", other.type_str())),
    };
    if secs == 0 {
        return Err("must be greater than zero".into());
    }
    let d = Duration::from_secs(secs);
    if d > MAX_LIFETIME {
        return Err(format!("must be at most 365d, got {secs}s"));
    }
    Ok(d)
}

/// `198.51.100.2` (port 500), or with a port: `198.51.100.2:4500`,
/// `[2001:db8::2]:500`.
fn remote_address(s: &str) -> Result<SocketAddr, String> {
    let s = s.trim();
    let addr = match s.parse::<IpAddr>() {
        Ok(ip) => SocketAddr::new(ip, PEER_IKE_PORT),
        Err(_) => s.parse::<SocketAddr>().map_err(|_| {
            format!("'{s}' is not an IP address (optionally with a port: 192.0.2.1:500, [2001:db8::1]:500)")
        })?,
    };
    if addr.port() == 0 {
        return Err(format!("'{s}': port 0"));
    }
    if addr.ip().is_unspecified() || addr.ip().is_multicast() {
        return Err(format!("'{s}' is not a unicast address"));
    }
    Ok(addr)
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhub_ike::wire::registry::IdType;

    const FILE: &str = "/etc/anyhub/anyhubd.toml";

    const FULL: &str = r#"
[node]
index = 7
name = "edge1"

[ike]
listen = ["198.51.100.1", "2001:db8::1"]
port = 1500
natt_port = 14500
status_socket = "/tmp/anyhub-test.sock"

[[tunnel]]
id = "site-a"
local_id = "hub.example.net"
remote_id = "site-a.example.net"
psk = "correct horse battery staple"
ike_proposals = ["aes256gcm16-prfsha256-x25519"]
esp_proposals = ["aes256gcm16", "aes128gcm16-x25519"]
local_ts = ["10.20.0.0/24"]
remote_ts = ["10.10.0.0/24", "10.11.0.0/24[tcp/443]"]
ike_lifetime = "1d"
child_lifetime = 900
remote_address = "198.51.100.2"
initiate = true

[[tunnel]]
id = "site-b"
local_id = "@hub.example.net"
remote_id = "keyid:#0a0b"
psk = "another secret"
local_ts = ["10.20.0.0/24"]
remote_ts = ["2001:db8:b::/48"]
remote_address = "[2001:db8::2]:4500"
initiate = true

[[tunnel]]
id = "site-c"
local_id = "hub.example.net"
remote_id = "203.0.113.9"
psk = "third secret"
local_ts = ["0.0.0.0/0"]
remote_ts = ["10.30.0.0/16"]
ike_lifetime = "30m"
child_lifetime = "90s"
"#;

    /// The smallest valid file, with one tunnel.
    const MINIMAL: &str = r#"
[node]
index = 1
name = "edge1"

[ike]
listen = ["198.51.100.1"]

[[tunnel]]
id = "site-a"
local_id = "hub.example.net"
remote_id = "site-a.example.net"
psk = "a long secret"
local_ts = ["10.20.0.0/24"]
remote_ts = ["10.10.0.0/24"]
"#;

    fn ok(text: &str) -> DaemonConfig {
        DaemonConfig::parse(text, Path::new(FILE)).unwrap_or_else(|e| panic!("{e}"))
    }

    /// The error for `text`, checked to name the file and `field`.
    fn err(text: &str, field: &str) -> String {
        let e = DaemonConfig::parse(text, Path::new(FILE)).expect_err("config accepted");
        let msg = e.to_string();
        assert!(
            msg.starts_with(&format!("{FILE}: {field}: ")),
            "expected field '{field}' in: {msg}"
        );
        assert_eq!(e.field(), Some(field));
        msg
    }

    /// MINIMAL with `line` added to or replacing the matching line of the
    /// first tunnel (`key = …`).
    fn tunnel_with(line: &str) -> String {
        let key = line.split('=').next().unwrap().trim();
        let mut replaced = false;
        let mut out: Vec<String> = MINIMAL
            .lines()
            .map(|l| {
                if l.split('=').next().map(str::trim) == Some(key) && l.contains('=') {
                    replaced = true;
                    line.to_string()
                } else {
                    l.to_string()
                }
            })
            .collect();
        if !replaced {
            out.push(line.to_string());
        }
        out.join("\n") + "\n"
    }

    #[test]
    fn dataplane_section() {
        let with = |lines: &str| format!("{MINIMAL}\n[dataplane]\n{lines}\n");
        assert_eq!(ok(MINIMAL).dataplane, None);
        let d = ok(&with("tun = \"anyhub0\"")).dataplane.unwrap();
        assert_eq!(
            d,
            DataplaneConfig {
                tun: "anyhub0".into(),
                addresses: vec![],
                mtu: DEFAULT_TUN_MTU,
                path_mtu: DEFAULT_PATH_MTU,
                queues: 1,
                kernel_routes: true,
                offload: true,
                replay_window: 1024,
                raw_esp: true,
                gre: vec![],
            }
        );
        let d = ok(&with(
            "tun = \"t1\"\naddresses = [\"10.20.0.1/24\", \"fd00::1/64\"]\nmtu = 1380\n\
             path_mtu = 9000\nqueues = 2\nkernel_routes = false\noffload = false\nreplay_window = 4096",
        ))
        .dataplane
        .unwrap();
        assert_eq!(d.addresses.len(), 2);
        assert_eq!((d.mtu, d.path_mtu, d.queues), (1380, 9000, 2));
        assert!(!d.kernel_routes && !d.offload);
        err(&with(""), "dataplane");
        err(&with("tun = \"a-name-far-too-long\""), "dataplane.tun");
        err(
            &with("tun = \"t\"\naddresses = [\"10.0.0.1\"]"),
            "dataplane.addresses[0]",
        );
        err(
            &with("tun = \"t\"\naddresses = [\"10.0.0.1/33\"]"),
            "dataplane.addresses[0]",
        );
        err(&with("tun = \"t\"\nqueues = 0"), "dataplane.queues");
        err(&with("tun = \"t\"\nmtu = 100"), "dataplane.mtu");
        err(
            &with("tun = \"t\"\nreplay_window = 1000"),
            "dataplane.replay_window",
        );
        err(&with("tun = \"t\"\nspeed = 9"), "dataplane");
        let two = MINIMAL.replace(
            "listen = [\"198.51.100.1\"]",
            "listen = [\"198.51.100.1\", \"198.51.100.9\"]",
        );
        assert_ne!(two, MINIMAL);
        err(&format!("{two}\n[dataplane]\ntun = \"t\"\n"), "dataplane");
    }

    #[test]
    fn sync_section() {
        let with = |lines: &str| format!("{MINIMAL}\n[sync]\n{lines}\n");
        assert_eq!(ok(MINIMAL).sync, None);
        let base = "listen = \"127.0.0.1:7001\"\nfleet_dir = \"fleet\"";
        let s = ok(&with(&format!(
            "{base}\nbootstrap = true\npeers = [{{ index = 2, address = \"127.0.0.1:7002\" }}]"
        )))
        .sync
        .unwrap();
        assert_eq!(
            s,
            SyncConfig {
                listen: "127.0.0.1:7001".parse().unwrap(),
                peers: vec![(2, "127.0.0.1:7002".parse().unwrap())],
                fleet_dir: Path::new(FILE).parent().unwrap().join("fleet"),
                bootstrap: true,
                barrier: BarrierPolicy::All,
                barrier_timeout: DEFAULT_BARRIER_TIMEOUT,
                relay: false,
                relays: Vec::new(),
            }
        );

        let peers2 = "peers = [{ index = 2, address = \"127.0.0.1:7002\" }, { index = 3, address = \"127.0.0.1:7003\" }]";
        let b = |line: &str| {
            ok(&with(&format!("{base}\n{peers2}\n{line}")))
                .sync
                .unwrap()
        };
        assert_eq!(b("barrier = \"quorum\"").barrier, BarrierPolicy::Quorum);
        let r = b("relays = [3, 2]");
        assert_eq!((r.relay, r.relays), (false, vec![3, 2]));
        let r = b("relay = true\nrelays = [2]");
        assert_eq!((r.relay, r.relays), (true, vec![2]));
        assert_eq!(b("barrier = \"none\"").barrier, BarrierPolicy::None);
        assert_eq!(
            b("barrier = [3, 2, 3]").barrier,
            BarrierPolicy::Nodes(vec![3, 2])
        );
        assert_eq!(
            b("barrier_timeout_ms = 250").barrier_timeout,
            Duration::from_millis(250)
        );
        for (line, field) in [
            ("barrier = \"most\"", "sync.barrier"),
            ("barrier = []", "sync.barrier"),
            ("barrier = 2", "sync.barrier"),
            ("barrier = [2, 4]", "sync.barrier[1]"),
            ("barrier = [1]", "sync.barrier[0]"),
            ("barrier_timeout_ms = 0", "sync.barrier_timeout_ms"),
            ("barrier_timeout_ms = 2001", "sync.barrier_timeout_ms"),
            ("relays = [2]", "sync.relays"),
            ("relays = [2, 9]", "sync.relays[1]"),
            ("relays = [2, 2]", "sync.relays[1]"),
        ] {
            err(&with(&format!("{base}\n{peers2}\n{line}")), field);
        }
        assert!(!ok(&with(base)).sync.unwrap().bootstrap);
        err(&with("fleet_dir = \"f\""), "sync");
        err(
            &with("listen = \"nowhere\"\nfleet_dir = \"f\""),
            "sync.listen",
        );
        err(&with("listen = \"127.0.0.1:1\""), "sync");
        err(&with(&format!("{base}\nfleet_dir2 = 1")), "sync");
        err(
            &with(&format!(
                "{base}\npeers = [{{ index = 0, address = \"127.0.0.1:1\" }}]"
            )),
            "sync.peers[0].index",
        );
        // node.index of MINIMAL is 1: not its own peer.
        err(
            &with(&format!(
                "{base}\npeers = [{{ index = 1, address = \"127.0.0.1:1\" }}]"
            )),
            "sync.peers[0].index",
        );
        err(
            &with(&format!(
                "{base}\npeers = [{{ index = 2, address = \"127.0.0.1:1\" }}, {{ index = 2, address = \"127.0.0.1:2\" }}]"
            )),
            "sync.peers[1].index",
        );
        err(
            &with(&format!(
                "{base}\npeers = [{{ index = 2, address = \"x\" }}]"
            )),
            "sync.peers[0].address",
        );
        err(&format!("sync = 1\n{MINIMAL}"), "sync");
    }

    #[test]
    fn gre_tunnels() {
        let dp = format!("{MINIMAL}\n[dataplane]\ntun = \"t\"\n");
        let with = |lines: &str| format!("{dp}\n[[gre]]\n{lines}\n");
        let d = ok(&with(
            "id = \"g1\"\nremote = \"203.0.113.9\"\nkey = 7\nroutes = [\"10.30.0.0/24\"]",
        ))
        .dataplane
        .unwrap();
        assert_eq!(
            d.gre,
            vec![GreConfig {
                id: "g1".into(),
                remote: "203.0.113.9".parse().unwrap(),
                local: "198.51.100.1".parse().unwrap(),
                key: Some(7),
                routes: vec!["10.30.0.0/24".parse().unwrap()],
                ttl: anyhub_dataplane::gre::DEFAULT_TTL,
            }]
        );
        let g = |lines: &str| with(&format!("id = \"g1\"\nremote = \"203.0.113.9\"\n{lines}"));
        err(&g("key = -1"), "gre[0] (g1).key");
        err(&g("key = 4294967296"), "gre[0] (g1).key");
        err(&g("routes = [\"10.30.0.0/40\"]"), "gre[0] (g1).routes[0]");
        err(&g("ttl = 0"), "gre[0] (g1).ttl");
        err(&g("colour = 1"), "gre[0]");
        err(
            &with("id = \"g1\"\nremote = \"2001:db8::1\""),
            "gre[0] (g1).remote",
        );
        err(&with("id = \"\"\nremote = \"203.0.113.9\""), "gre[0].id");
        // An id of a [[tunnel]], or two tunnels no packet could tell apart.
        let tunnel_id = MINIMAL
            .lines()
            .find_map(|l| l.strip_prefix("id = "))
            .unwrap()
            .trim_matches('"')
            .to_string();
        err(
            &with(&format!("id = \"{tunnel_id}\"\nremote = \"203.0.113.9\"")),
            &format!("gre[0] ({tunnel_id}).id"),
        );
        let twice = format!(
            "{}\n[[gre]]\nid = \"g2\"\nremote = \"203.0.113.9\"\n",
            g("")
        );
        err(&twice, "gre[1] (g2).remote");
        // GRE needs the dataplane.
        err(
            &format!("{MINIMAL}\n[[gre]]\nid = \"g\"\nremote = \"203.0.113.9\"\n"),
            "gre",
        );
    }

    #[test]
    fn full_config() {
        let c = ok(FULL);
        assert_eq!(c.node_name, "edge1");
        assert_eq!(c.node_index, 7);
        assert_eq!(
            c.listen,
            [
                "198.51.100.1".parse::<IpAddr>().unwrap(),
                "2001:db8::1".parse().unwrap()
            ]
        );
        assert_eq!((c.port, c.natt_port), (1500, 14500));
        assert_eq!(c.status_socket, Path::new("/tmp/anyhub-test.sock"));
        assert_eq!(c.endpoint.node_index, 7);
        assert_eq!(c.endpoint.natt_port, 14500);
        assert_eq!(c.endpoint.tunnels.len(), 3);

        let a = c.endpoint.tunnel("site-a").unwrap();
        assert_eq!(a.local_id, Identity::parse("fqdn:hub.example.net").unwrap());
        assert_eq!(a.remote_id.ty, IdType::FQDN);
        assert!(
            matches!(&a.auth, TunnelAuth::Psk(k) if *k == Secret::from_slice(b"correct horse battery staple"))
        );
        assert_eq!(
            a.ike_proposals,
            [ProposalSpec::parse_ike("aes256gcm16-prfsha256-x25519").unwrap()]
        );
        assert_eq!(a.esp_proposals.len(), 2);
        assert_eq!(
            a.esp_proposals[1].dh.len(),
            1,
            "a group in an ESP proposal is PFS"
        );
        assert_eq!(
            a.remote_ts.iter().map(ts::display).collect::<Vec<_>>(),
            ["10.10.0.0/24", "10.11.0.0/24[tcp/443]"]
        );
        assert_eq!(a.ike_lifetime, Duration::from_secs(86_400));
        assert_eq!(a.child_lifetime, Duration::from_secs(900));
        assert_eq!(a.remote_address, Some("198.51.100.2".parse().unwrap()));
        assert!(a.initiate);

        let b = c.endpoint.tunnel("site-b").unwrap();
        assert_eq!(
            b.remote_id,
            Identity {
                ty: IdType::KEY_ID,
                data: vec![10, 11]
            }
        );
        let cc = c.endpoint.tunnel("site-c").unwrap();
        assert_eq!(cc.remote_id.ty, IdType::IPV4_ADDR);
        assert_eq!(
            (cc.ike_lifetime, cc.child_lifetime),
            (Duration::from_secs(1800), Duration::from_secs(90))
        );
        assert!(!cc.initiate);

        // Initiations leave from the first listen address of the peer's
        // family, on our IKE port — on our NAT-T port to a peer's NAT-T
        // port; the peer's port is 500 unless named.
        assert_eq!(
            c.initiate,
            [
                Initiation {
                    tunnel: "site-a".into(),
                    local: "198.51.100.1:1500".parse().unwrap(),
                    remote: "198.51.100.2:500".parse().unwrap(),
                },
                Initiation {
                    tunnel: "site-b".into(),
                    local: "[2001:db8::1]:14500".parse().unwrap(),
                    remote: "[2001:db8::2]:4500".parse().unwrap(),
                },
            ]
        );
    }

    /// Starting on the NAT-T port (RFC 7296 §2.23): a remote on 4500 (or
    /// on our own `natt_port`) is reached from our NAT-T port, anything
    /// else from our IKE port.
    #[test]
    fn initiation_to_a_natt_port_leaves_from_ours() {
        let local = |remote: &str, ports: &str| {
            let text = MINIMAL.replace(
                "[[tunnel]]",
                &format!("{ports}\n[[tunnel]]\nremote_address = \"{remote}\"\ninitiate = true"),
            );
            ok(&text).initiate[0].local
        };
        let addr = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert_eq!(local("198.51.100.2", ""), addr("198.51.100.1:500"));
        assert_eq!(local("198.51.100.2:4500", ""), addr("198.51.100.1:4500"));
        assert_eq!(local("198.51.100.2:1500", ""), addr("198.51.100.1:500"));
        let ports = "port = 1500\nnatt_port = 14500";
        assert_eq!(
            local("198.51.100.2:4500", ports),
            addr("198.51.100.1:14500")
        );
        assert_eq!(
            local("198.51.100.2:14500", ports),
            addr("198.51.100.1:14500")
        );
        assert_eq!(local("198.51.100.2:500", ports), addr("198.51.100.1:1500"));
    }

    #[test]
    fn nat_keepalive_knob() {
        let with = |line: &str| MINIMAL.replace("[[tunnel]]", &format!("{line}\n[[tunnel]]"));
        assert_eq!(
            ok(MINIMAL).endpoint.nat_keepalive,
            Some(Duration::from_secs(20))
        );
        assert_eq!(
            ok(&with("nat_keepalive = \"5s\"")).endpoint.nat_keepalive,
            Some(Duration::from_secs(5))
        );
        assert_eq!(
            ok(&with("nat_keepalive = 2")).endpoint.nat_keepalive,
            Some(Duration::from_secs(2))
        );
        assert_eq!(
            ok(&with("nat_keepalive = \"off\"")).endpoint.nat_keepalive,
            None
        );
        assert_eq!(ok(&with("nat_keepalive = 0")).endpoint.nat_keepalive, None);
        err(&with("nat_keepalive = \"soon\""), "ike.nat_keepalive");
        err(&with("nat_keepalive = -1"), "ike.nat_keepalive");
    }

    #[test]
    fn defaults() {
        let c = ok(MINIMAL);
        assert_eq!((c.port, c.natt_port), (DEFAULT_PORT, DEFAULT_NATT_PORT));
        assert_eq!(c.endpoint.natt_port, 4500);
        assert_eq!(c.status_socket, Path::new("/run/anyhub/anyhubd.sock"));
        assert!(c.initiate.is_empty());
        let t = &c.endpoint.tunnels[0];
        let ike: Vec<_> = DEFAULT_IKE_PROPOSALS
            .iter()
            .map(|p| ProposalSpec::parse_ike(p).unwrap())
            .collect();
        let esp: Vec<_> = DEFAULT_ESP_PROPOSALS
            .iter()
            .map(|p| ProposalSpec::parse_esp(p).unwrap())
            .collect();
        assert_eq!(t.ike_proposals, ike);
        assert_eq!(t.esp_proposals, esp);
        assert_eq!(t.ike_lifetime, Duration::from_secs(4 * 3600));
        assert_eq!(t.child_lifetime, Duration::from_secs(3600));
        assert_eq!(t.remote_address, None);
        assert!(!t.initiate);

        // No tunnel at all is a valid (if idle) node.
        let idle = MINIMAL.split("[[tunnel]]").next().unwrap();
        assert!(ok(idle).endpoint.tunnels.is_empty());
    }

    #[test]
    fn the_psk_never_shows() {
        let c = ok(MINIMAL);
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("a long secret"), "{dbg}");
        // Not even when it is the wrong type, or the line has a typo.
        let msg = err(&tunnel_with("psk = 987654321"), "tunnel[0] (site-a).psk");
        assert!(!msg.contains("987654321"), "{msg}");
        let msg = err(&tunnel_with("pks = \"hunter2\""), "tunnel[0] (site-a)");
        assert!(
            msg.contains("unknown field `pks`") && !msg.contains("hunter2"),
            "{msg}"
        );
        let e = DaemonConfig::parse("[node]\nindex = 1\npsk = \"hunter2\" x", Path::new(FILE))
            .unwrap_err();
        assert!(!e.to_string().contains("hunter2"), "{e}");
    }

    #[test]
    fn syntax_error_has_line_and_column() {
        let e =
            DaemonConfig::parse("[node]\nindex = 1\nname = edge1\n", Path::new(FILE)).unwrap_err();
        let msg = e.to_string();
        assert!(
            matches!(
                e,
                ConfigError::Syntax {
                    line: 3,
                    column: 8,
                    ..
                }
            ),
            "{msg}"
        );
        assert!(
            msg.starts_with(&format!("{FILE}: TOML syntax error at line 3, column 8: ")),
            "{msg}"
        );
        assert!(!msg.contains('\n'), "one line: {msg}");
    }

    #[test]
    fn missing_sections_and_fields() {
        err("[ike]\nlisten = [\"198.51.100.1\"]\n", "node");
        err("[node]\nindex = 1\nname = \"x\"\n", "ike");
        let msg = err(&MINIMAL.replace("name = \"edge1\"", ""), "node");
        assert!(msg.contains("missing field `name`"), "{msg}");
        let msg = err(
            &MINIMAL.replace("psk = \"a long secret\"", ""),
            "tunnel[0] (site-a)",
        );
        assert!(msg.contains("missing field `psk`"), "{msg}");
        let msg = err(&MINIMAL.replace("id = \"site-a\"", ""), "tunnel[0]");
        assert!(msg.contains("missing field `id`"), "{msg}");
    }

    #[test]
    fn unknown_fields_are_refused() {
        let msg = err(
            &MINIMAL.replace("name = \"edge1\"", "name = \"edge1\"\nzone = 3"),
            "node",
        );
        assert!(msg.contains("unknown field `zone`"), "{msg}");
        err(&format!("{MINIMAL}\n[extra]\nx = 1\n"), "extra");
        let msg = err(&tunnel_with("initiator = true"), "tunnel[0] (site-a)");
        assert!(msg.contains("unknown field `initiator`"), "{msg}");
    }

    #[test]
    fn wrong_types_name_the_key() {
        let msg = err(
            &tunnel_with("initiate = \"yes\""),
            "tunnel[0] (site-a).initiate",
        );
        assert!(msg.contains("invalid type"), "{msg}");
        err(
            &MINIMAL.replace("listen = [\"198.51.100.1\"]", "listen = \"198.51.100.1\""),
            "ike.listen",
        );
        err(
            &MINIMAL.replace("[node]\nindex = 1\nname = \"edge1\"", "node = 1"),
            "node",
        );
    }

    #[test]
    fn node_index_range() {
        for bad in ["0", "4096", "-1", "70000"] {
            let msg = err(
                &MINIMAL.replace("index = 1", &format!("index = {bad}")),
                "node.index",
            );
            assert!(msg.contains("between 1 and 4095"), "{msg}");
        }
        assert_eq!(
            ok(&MINIMAL.replace("index = 1", "index = 4095")).node_index,
            4095
        );
        err(
            &MINIMAL.replace("name = \"edge1\"", "name = \" \""),
            "node.name",
        );
    }

    #[test]
    fn listen_and_ports() {
        err(&MINIMAL.replace("[\"198.51.100.1\"]", "[]"), "ike.listen");
        let msg = err(
            &MINIMAL.replace("[\"198.51.100.1\"]", "[\"198.51.100.1\", \"edge1\"]"),
            "ike.listen[1]",
        );
        assert!(msg.contains("'edge1' is not an IP address"), "{msg}");
        err(
            &MINIMAL.replace("[\"198.51.100.1\"]", "[\"0.0.0.0\"]"),
            "ike.listen[0]",
        );
        err(
            &MINIMAL.replace("[\"198.51.100.1\"]", "[\"198.51.100.1\", \"198.51.100.1\"]"),
            "ike.listen[1]",
        );
        let with_ports = |p: &str| MINIMAL.replace("[ike]", &format!("[ike]\n{p}"));
        err(&with_ports("port = 0"), "ike.port");
        err(&with_ports("port = 65536"), "ike.port");
        err(&with_ports("natt_port = 500"), "ike.natt_port");
        err(&with_ports("status_socket = \"\""), "ike.status_socket");
    }

    #[test]
    fn duplicate_tunnel_ids() {
        let second = MINIMAL
            .split("[[tunnel]]")
            .nth(1)
            .unwrap()
            .replace("site-a.example.net", "other");
        let msg = err(
            &format!("{MINIMAL}[[tunnel]]{second}"),
            "tunnel[1] (site-a).id",
        );
        assert!(
            msg.contains("duplicate tunnel id 'site-a' (also tunnel[0])"),
            "{msg}"
        );
        err(&tunnel_with("id = \"  \""), "tunnel[0] (  ).id");
    }

    #[test]
    fn duplicate_remote_ids() {
        // Same identity, written differently.
        let second = MINIMAL
            .split("[[tunnel]]")
            .nth(1)
            .unwrap()
            .replace("site-a\"", "site-b\"")
            .replace("\"site-a.example.net\"", "\"fqdn:site-a.example.net\"");
        let msg = err(
            &format!("{MINIMAL}[[tunnel]]{second}"),
            "tunnel[1] (site-b).remote_id",
        );
        assert!(
            msg.contains("also the remote_id of tunnel[0] (site-a)"),
            "{msg}"
        );
        // The same DN in other case and spacing.
        let dn = |t: &str, id: &str| t.replace("\"site-a.example.net\"", &format!("\"{id}\""));
        let first = dn(MINIMAL, "C=CH, O=Customer, CN=site-a");
        let second = dn(
            &MINIMAL
                .split("[[tunnel]]")
                .nth(1)
                .unwrap()
                .replace("site-a\"", "site-b\""),
            "c=ch,o=CUSTOMER,cn=site-a",
        );
        err(
            &format!("{first}[[tunnel]]{second}"),
            "tunnel[1] (site-b).remote_id",
        );
    }

    #[test]
    fn identities() {
        let msg = err(
            &tunnel_with("local_id = \"ipv4:300.1.1.1\""),
            "tunnel[0] (site-a).local_id",
        );
        assert!(msg.contains("not an IPv4 address"), "{msg}");
        err(
            &tunnel_with("remote_id = \"\""),
            "tunnel[0] (site-a).remote_id",
        );
    }

    #[test]
    fn empty_psk() {
        err(&tunnel_with("psk = \"\""), "tunnel[0] (site-a).psk");
    }

    #[test]
    fn proposals_are_checked() {
        // The example of the brief, on the second tunnel.
        let second = MINIMAL
            .split("[[tunnel]]")
            .nth(1)
            .unwrap()
            .replace("site-a", "site-b")
            .replace("psk =", "esp_proposals = [\"aes999\"]\npsk =");
        let text = format!("{MINIMAL}[[tunnel]]{second}");
        let e = DaemonConfig::parse(&text, Path::new(FILE)).unwrap_err();
        assert_eq!(
            e.to_string(),
            "/etc/anyhub/anyhubd.toml: tunnel[1] (site-b).esp_proposals[0]: unknown or unsupported algorithm 'aes999' in proposal 'aes999'"
        );
        err(
            &tunnel_with("ike_proposals = [\"aes256gcm16-prfsha256-x25519\", \"aes256gcm16\"]"),
            "tunnel[0] (site-a).ike_proposals[1]",
        );
        err(
            &tunnel_with("ike_proposals = []"),
            "tunnel[0] (site-a).ike_proposals",
        );
        err(
            &tunnel_with("esp_proposals = [\"aes256gcm16-prfsha256\"]"),
            "tunnel[0] (site-a).esp_proposals[0]",
        );
    }

    #[test]
    fn traffic_selectors() {
        err(&tunnel_with("local_ts = []"), "tunnel[0] (site-a).local_ts");
        let msg = err(
            &tunnel_with("remote_ts = [\"10.10.0.0/24\", \"10.0.0.1/8\"]"),
            "tunnel[0] (site-a).remote_ts[1]",
        );
        assert!(msg.contains("host bits"), "{msg}");
    }

    #[test]
    fn lifetimes() {
        let life = |v: &str| {
            ok(&tunnel_with(&format!("ike_lifetime = {v}")))
                .endpoint
                .tunnels[0]
                .ike_lifetime
        };
        assert_eq!(life("\"4h\""), Duration::from_secs(14_400));
        assert_eq!(life("\"30m\""), Duration::from_secs(1800));
        assert_eq!(life("\"90s\""), Duration::from_secs(90));
        assert_eq!(life("\"1d\""), Duration::from_secs(86_400));
        assert_eq!(life("\"3600\""), Duration::from_secs(3600));
        assert_eq!(life("7200"), Duration::from_secs(7200));
        for bad in [
            "\"0s\"",
            "0",
            "-5",
            "\"4x\"",
            "\"h\"",
            "\"1.5h\"",
            "true",
            "\"400d\"",
            "\"99999999999999999999d\"",
        ] {
            err(
                &tunnel_with(&format!("ike_lifetime = {bad}")),
                "tunnel[0] (site-a).ike_lifetime",
            );
        }
        let msg = err(
            &tunnel_with("child_lifetime = \"soon\""),
            "tunnel[0] (site-a).child_lifetime",
        );
        assert!(msg.contains("'soon'"), "{msg}");
    }

    #[test]
    fn initiation_needs_a_remote_address() {
        let msg = err(
            &tunnel_with("initiate = true"),
            "tunnel[0] (site-a).remote_address",
        );
        assert!(msg.contains("required when initiate = true"), "{msg}");
        let msg = err(
            &tunnel_with("remote_address = \"2001:db8::2\"\ninitiate = true"),
            "tunnel[0] (site-a).remote_address",
        );
        assert!(msg.contains("no IPv6 address"), "{msg}");
        err(
            &tunnel_with("remote_address = \"peer.example.net\""),
            "tunnel[0] (site-a).remote_address",
        );
        err(
            &tunnel_with("remote_address = \"192.0.2.1:0\""),
            "tunnel[0] (site-a).remote_address",
        );
        // A remote address without initiate is fine (documentation only).
        let c = ok(&tunnel_with("remote_address = \"192.0.2.1\""));
        assert!(c.initiate.is_empty());
        assert_eq!(
            c.endpoint.tunnels[0].remote_address,
            Some("192.0.2.1".parse().unwrap())
        );
    }

    #[test]
    fn the_documented_example_is_valid() {
        let c = ok(include_str!("../examples/anyhubd.toml"));
        assert_eq!(c.endpoint.tunnels.len(), 2);
        assert_eq!(c.initiate.len(), 1);
    }

    #[test]
    fn unreadable_file() {
        let e = DaemonConfig::load(Path::new("/nonexistent/anyhubd.toml")).unwrap_err();
        assert!(
            e.to_string().starts_with("/nonexistent/anyhubd.toml: "),
            "{e}"
        );
    }

    #[test]
    fn line_column_counts_characters() {
        assert_eq!(line_column("ab\ncdé\nx", 0), (1, 1));
        assert_eq!(line_column("ab\ncdé\nx", 3), (2, 1));
        assert_eq!(line_column("ab\ncdé\nx", 8), (3, 1));
        assert_eq!(line_column("ab\ncdé\nx", 7), (2, 4));
    }

    /// Certificate files for `auth = "pubkey"` tests, in a directory of
    /// their own that is removed afterwards.
    struct Creds {
        dir: PathBuf,
    }

    impl Drop for Creds {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    impl Creds {
        fn new(name: &str) -> Creds {
            use anyhub_crypto::sig::{Curve, KeyKind};
            use anyhub_crypto::x509::test_pki::{self, Spec};
            let dir =
                std::env::temp_dir().join(format!("anyhub-config-{}-{name}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            let root = test_pki::ca("C=CH, O=anyhub, CN=Root", KeyKind::Ec(Curve::P256));
            let inter = test_pki::issue(
                Some(&root),
                &Spec {
                    ca: true,
                    ..Spec::new("C=CH, O=anyhub, CN=Intermediate")
                },
            );
            let hub = test_pki::issue(
                Some(&inter),
                &Spec {
                    dns: &["hub.example.net"],
                    key: KeyKind::Rsa { bits: 2048 },
                    ..Spec::new("C=CH, O=anyhub, CN=hub")
                },
            );
            let now = SystemTime::now();
            let old = test_pki::issue(
                Some(&root),
                &Spec {
                    dns: &["hub.example.net"],
                    not_before: now - Duration::from_secs(10 * 86_400),
                    not_after: now - Duration::from_secs(86_400),
                    ..Spec::new("CN=old")
                },
            );
            let w = |f: &str, b: &[u8]| std::fs::write(dir.join(f), b).unwrap();
            // hub.pem: the certificate, then the intermediate to send along.
            w(
                "hub.pem",
                &[hub.cert.to_pem(), inter.cert.to_pem()].concat(),
            );
            w("hub.der", hub.cert.der());
            w("hub.key", hub.key_pem().as_bytes());
            w("ca.pem", &root.cert.to_pem());
            w("other.key", root.key_pem().as_bytes());
            w("old.pem", &old.cert.to_pem());
            w("old.key", old.key_pem().as_bytes());
            w(
                "junk.pem",
                b"-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n",
            );
            Creds { dir }
        }

        fn file(&self) -> PathBuf {
            self.dir.join("anyhubd.toml")
        }

        /// MINIMAL with its PSK replaced by `lines`.
        fn config(&self, lines: &str) -> String {
            MINIMAL.replace("psk = \"a long secret\"", lines).replace(
                "local_id = \"hub.example.net\"",
                "local_id = \"fqdn:hub.example.net\"",
            )
        }

        fn parse(&self, lines: &str) -> Result<DaemonConfig, ConfigError> {
            DaemonConfig::parse(&self.config(lines), &self.file())
        }

        fn err(&self, lines: &str, field: &str) -> String {
            let e = self.parse(lines).expect_err("config accepted");
            let msg = e.to_string();
            let file = self.file();
            assert!(
                msg.starts_with(&format!("{}: {field}: ", file.display())),
                "expected field '{field}' in: {msg}"
            );
            msg
        }
    }

    const PUBKEY: &str =
        "auth = \"pubkey\"\ncert = \"hub.pem\"\nkey = \"hub.key\"\ncacerts = [\"ca.pem\"]";

    #[test]
    fn pubkey_tunnel_loads_relative_to_the_config_file() {
        let c = Creds::new("ok");
        let cfg = c.parse(PUBKEY).unwrap();
        let t = &cfg.endpoint.tunnels[0];
        let TunnelAuth::Pubkey(p) = &t.auth else {
            panic!("{:?}", t.auth)
        };
        assert_eq!(p.cert.subject(), "C=CH, O=anyhub, CN=hub");
        assert_eq!(p.chain.len(), 1, "the intermediate after it is sent too");
        assert_eq!(p.cas.certs().len(), 1);
        // Debug shows names, never the key.
        let dbg = format!("{cfg:?}");
        assert!(dbg.contains("PrivateKey(RSA-2048, <redacted>)"), "{dbg}");
        let key_pem = std::fs::read_to_string(c.dir.join("hub.key")).unwrap();
        let body = key_pem.lines().nth(1).unwrap();
        assert!(!dbg.contains(body));
        // DER works too; absolute paths are taken as they are.
        let abs = format!(
            "auth = \"pubkey\"\ncert = \"{}\"\nkey = \"hub.key\"\ncacerts = [\"ca.pem\"]",
            c.dir.join("hub.der").display()
        );
        let cfg = c.parse(&abs).unwrap();
        let TunnelAuth::Pubkey(p) = &cfg.endpoint.tunnels[0].auth else {
            panic!()
        };
        assert!(p.chain.is_empty());
    }

    #[test]
    fn a_dn_local_id_is_sent_as_the_certificate_encodes_it() {
        let c = Creds::new("dn");
        let text = c.config(PUBKEY).replace(
            "local_id = \"fqdn:hub.example.net\"",
            "local_id = \"c=ch, o=ANYHUB, cn=hub\"",
        );
        let cfg = DaemonConfig::parse(&text, &c.file()).unwrap();
        let t = &cfg.endpoint.tunnels[0];
        let TunnelAuth::Pubkey(p) = &t.auth else {
            panic!()
        };
        assert_eq!(t.local_id.data, p.cert.subject_der());
        // Not in the certificate: refused, with what the certificate holds.
        let text = c.config(PUBKEY).replace(
            "local_id = \"fqdn:hub.example.net\"",
            "local_id = \"fqdn:other.example.net\"",
        );
        let e = DaemonConfig::parse(&text, &c.file())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("tunnel[0] (site-a).local_id: 'fqdn:other.example.net' is not in")
                && e.contains("subjectAltNames fqdn:hub.example.net"),
            "{e}"
        );
    }

    #[test]
    fn pubkey_errors_name_the_field_and_the_file() {
        let c = Creds::new("errors");
        let with = |from: &str, to: &str| PUBKEY.replace(from, to);
        let t = "tunnel[0] (site-a)";
        for (lines, field, needle) in [
            (
                with("cert = \"hub.pem\"\n", ""),
                format!("{t}.cert"),
                "is required",
            ),
            (
                with("key = \"hub.key\"\n", ""),
                format!("{t}.key"),
                "is required",
            ),
            (
                with("cacerts = [\"ca.pem\"]", "cacerts = []"),
                format!("{t}.cacerts"),
                "at least one",
            ),
            (
                with("hub.pem", "missing.pem"),
                format!("{t}.cert"),
                "missing.pem: No such file",
            ),
            (
                with("hub.pem", "junk.pem"),
                format!("{t}.cert"),
                "junk.pem: not an X.509",
            ),
            (
                with("hub.key", "hub.pem"),
                format!("{t}.key"),
                "hub.pem: not a PEM or DER private key",
            ),
            (
                with("hub.key", "other.key"),
                format!("{t}.key"),
                "does not belong to the certificate",
            ),
            (
                with("[\"ca.pem\"]", "[\"ca.pem\", \"hub.der\"]"),
                format!("{t}.cacerts[1]"),
                "is not a CA certificate",
            ),
            (
                with(
                    "cert = \"hub.pem\"\nkey = \"hub.key\"",
                    "cert = \"old.pem\"\nkey = \"old.key\"",
                ),
                format!("{t}.cert"),
                "expired",
            ),
            (
                format!("{PUBKEY}\npsk = \"x\""),
                format!("{t}.psk"),
                "not used with auth",
            ),
            (
                with("pubkey", "rsa"),
                format!("{t}.auth"),
                "expected \"psk\" or \"pubkey\"",
            ),
            (
                "psk = \"s\"\ncert = \"hub.pem\"".to_string(),
                format!("{t}.cert"),
                "only used with auth = \"pubkey\"",
            ),
        ] {
            let msg = c.err(&lines, &field);
            assert!(msg.contains(needle), "{needle:?} not in {msg}");
        }
        let text = c.config(PUBKEY).replace(
            "remote_id = \"site-a.example.net\"",
            "remote_id = \"keyid:#0a0b\"",
        );
        let e = DaemonConfig::parse(&text, &c.file()).unwrap_err();
        assert_eq!(e.field(), Some("tunnel[0] (site-a).remote_id"));
    }
}
