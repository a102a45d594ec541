//! What the IKE endpoint is told: the node, its tunnels, its timers.
//!
//! The daemon builds this from its TOML file; this module holds the already
//! validated, typed form (no strings left to parse on the hot path).

pub use crate::auth::{PubkeyAuth, TunnelAuth};
use crate::identity::Identity;
use crate::proposal::ProposalSpec;
use crate::wire::TrafficSelector;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// The highest node index: node indices live in 12 bits of every SPI the
/// node allocates (see [`crate::spi`]).
pub const MAX_NODE_INDEX: u16 = 4095;

/// A configured customer tunnel. The peer's IKE identity selects it.
#[derive(Clone, Debug)]
pub struct TunnelConfig {
    pub id: Arc<str>,
    pub local_id: Identity,
    pub remote_id: Identity,
    /// How both sides authenticate: a pre-shared key, or certificates and
    /// signatures (RFC 7296 §2.15, RFC 7427).
    pub auth: TunnelAuth,
    pub ike_proposals: Vec<ProposalSpec>,
    pub esp_proposals: Vec<ProposalSpec>,
    /// Our side of the tunnel.
    pub local_ts: Vec<TrafficSelector>,
    /// The customer's side.
    pub remote_ts: Vec<TrafficSelector>,
    /// When the IKE SA is rekeyed (minus up to 10 % jitter); it expires
    /// 10 % after this if the rekey never succeeds (strongSwan's
    /// rekey_time / over_time / rand_time).
    pub ike_lifetime: Duration,
    /// The same for child SAs.
    pub child_lifetime: Duration,
    /// Where to send IKE_SA_INIT when we initiate.
    pub remote_address: Option<IpAddr>,
    /// Start this tunnel at startup, as initiator.
    pub initiate: bool,
    /// Reauthenticate (a whole new IKE SA, RFC 7296 §2.8.3) this often:
    /// as initiator we do it (minus up to 10 % jitter); as responder we ask
    /// the initiator to with AUTH_LIFETIME (RFC 4478). `None`: only rekey.
    pub reauth_time: Option<Duration>,
    /// Liveness check (RFC 7296 §2.4) after this long without hearing from
    /// the peer; `None` switches it off.
    pub dpd_delay: Option<Duration>,
    pub dpd_action: DpdAction,
}

/// What to do when the peer stopped answering.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DpdAction {
    /// Forget the IKE SA and its child SAs.
    Clear,
    /// Forget them and, for a tunnel with a remote address, initiate anew.
    Restart,
}

/// Retransmission of requests we send (RFC 7296 §2.1): timeout × base^n for
/// n = 0..tries, then the exchange has failed. strongSwan's defaults.
#[derive(Clone, Copy, Debug)]
pub struct RetransmitConfig {
    pub timeout: Duration,
    pub base: f64,
    pub tries: u32,
}

impl Default for RetransmitConfig {
    fn default() -> Self {
        RetransmitConfig {
            timeout: Duration::from_secs(4),
            base: 1.8,
            tries: 5,
        }
    }
}

/// Where wall-clock time comes from. Only certificate validity needs it
/// (notBefore/notAfter are calendar times, which an `Instant` cannot give).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WallClock {
    /// `SystemTime::now()` when a certificate is checked: production.
    System,
    /// `wall` was the time at `instant`; later times follow the `now` the
    /// endpoint is driven with, so a virtual clock moves certificate time
    /// too (tests).
    Anchored { instant: Instant, wall: SystemTime },
}

impl WallClock {
    /// The wall-clock time at `now`.
    pub fn at(self, now: Instant) -> SystemTime {
        match self {
            WallClock::System => SystemTime::now(),
            WallClock::Anchored { instant, wall } => {
                if now >= instant {
                    wall + (now - instant)
                } else {
                    wall - (instant - now)
                }
            }
        }
    }
}

#[derive(Clone, Debug)]
pub struct EndpointConfig {
    /// This node's index in the fleet, 1..=[`MAX_NODE_INDEX`].
    pub node_index: u16,
    pub tunnels: Vec<Arc<TunnelConfig>>,
    pub retransmit: RetransmitConfig,
    /// How long a responder keeps an IKE SA whose IKE_AUTH never came.
    pub half_open_timeout: Duration,
    /// The local port of plain IKE (where a restarted tunnel starts from).
    pub ike_port: u16,
    /// Announce IKE fragmentation (RFC 7383) in IKE_SA_INIT, as initiator
    /// and, when the initiator announced it, as responder.
    pub fragmentation: bool,
    /// The largest IP datagram an IKE message of ours may make; longer
    /// encrypted messages go as fragments (strongSwan's `fragment_size`).
    pub fragment_size: u16,
    /// Require a COOKIE (RFC 7296 §2.6) in IKE_SA_INIT once this many IKE
    /// SAs are half-open (answered IKE_SA_INIT, no IKE_AUTH yet)…
    pub cookie_threshold: usize,
    /// …or once the request's source address has this many.
    pub cookie_threshold_ip: usize,
    /// Refuse IKE_SA_INIT from an address with this many half-open SAs.
    pub half_open_per_ip: usize,
    /// Behind a NAT, send a NAT keepalive (RFC 3948 §2.3) on the NAT-T port
    /// this often, to keep the mapping; `None` switches them off.
    pub nat_keepalive: Option<Duration>,
    /// The local port that carries IKE with the non-ESP marker (RFC 3948);
    /// transmits from it are flagged [`crate::Transmit::natt`].
    pub natt_port: u16,
    /// For certificate validity.
    pub wall_clock: WallClock,
    /// As initiator, pretend to be behind a NAT so the SA floats to the
    /// NAT-T port and ESP is UDP-encapsulated even without a NAT
    /// (strongSwan's `encap = yes`): our NAT_DETECTION_SOURCE_IP carries
    /// a hash of no address of ours (RFC 7296 §2.23 allows hiding it).
    /// Needed where only ESP-in-UDP can be carried (the userspace
    /// dataplane).
    pub force_encap: bool,
}

impl EndpointConfig {
    pub fn new(node_index: u16, tunnels: Vec<Arc<TunnelConfig>>) -> Self {
        EndpointConfig {
            node_index,
            tunnels,
            retransmit: RetransmitConfig::default(),
            half_open_timeout: Duration::from_secs(30),
            ike_port: 500,
            natt_port: 4500,
            fragmentation: true,
            fragment_size: 1280,
            nat_keepalive: Some(Duration::from_secs(20)),
            cookie_threshold: 64,
            cookie_threshold_ip: 8,
            half_open_per_ip: 64,
            wall_clock: WallClock::System,
            force_encap: false,
        }
    }

    pub fn tunnel(&self, id: &str) -> Option<&Arc<TunnelConfig>> {
        self.tunnels.iter().find(|t| &*t.id == id)
    }
}
