//! What the endpoint tells its driver: datagrams to send and events.
//!
//! Events, not installs (STYLE.md): an established child SA leaves the core
//! as data — SPIs, keys, selectors, algorithms, lifetimes — and the node
//! decides where it goes (dataplane, SA bus, status).

use crate::identity::Identity;
use crate::proposal::Selected;
use crate::wire::TrafficSelector;
use anyhub_crypto::Secret;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A datagram to send. `payload` is the IKE message itself; when `natt` is
/// set the driver sends it from the NAT-T port with the four-byte non-ESP
/// marker in front (RFC 3948 §2.2).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transmit {
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub natt: bool,
    pub payload: Vec<u8>,
}

/// Names one IKE SA inside an endpoint for its whole life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IkeSaHandle(pub u64);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IkeState {
    /// IKE_SA_INIT or IKE_AUTH under way.
    Connecting,
    Established,
    /// A DELETE we sent awaits its answer.
    Deleting,
}

impl IkeState {
    pub fn as_str(self) -> &'static str {
        match self {
            IkeState::Connecting => "connecting",
            IkeState::Established => "established",
            IkeState::Deleting => "deleting",
        }
    }
}

/// A snapshot of one IKE SA, for status and events.
#[derive(Clone, Debug)]
pub struct IkeSaInfo {
    pub handle: IkeSaHandle,
    /// The tunnel, once the peer's identity (or our own initiation) named it.
    pub tunnel: Option<Arc<str>>,
    pub spi_i: u64,
    pub spi_r: u64,
    pub initiator: bool,
    pub state: IkeState,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub remote_id: Option<Identity>,
    /// The agreed IKE algorithms, in strongSwan notation.
    pub proposal: Option<String>,
    pub established_at: Option<Instant>,
}

/// Keys for one direction of a child SA (RFC 7296 §2.17): the encryption key
/// (for AEADs including the 4-byte salt) and, for non-AEAD ciphers, the
/// integrity key.
#[derive(Clone, Debug)]
pub struct DirectionKeys {
    pub encr: Secret,
    pub integ: Option<Secret>,
}

/// An established child SA, everything a dataplane needs.
#[derive(Clone, Debug)]
pub struct ChildSa {
    pub tunnel: Arc<str>,
    pub ike: IkeSaHandle,
    /// SPI the peer puts on packets to us (we allocated it).
    pub spi_in: u32,
    /// SPI we put on packets to the peer.
    pub spi_out: u32,
    /// The agreed ESP algorithms.
    pub proposal: Selected,
    pub keys_in: DirectionKeys,
    pub keys_out: DirectionKeys,
    /// Our side's selectors (narrowed).
    pub local_ts: Vec<TrafficSelector>,
    /// The peer's side's selectors (narrowed).
    pub remote_ts: Vec<TrafficSelector>,
    /// Hard lifetime; a rekey is due before it.
    pub lifetime: Duration,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    /// ESP travels in UDP (RFC 3948): a NAT was detected or IKE runs on the
    /// NAT-T port.
    pub encap: bool,
    /// This child SA replaces the one with this inbound SPI (a rekey). The
    /// old one stays valid until its own `ChildSaDeleted` (make-before-break).
    pub rekey_of: Option<u32>,
}

/// Why an IKE SA went away or never came up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SaEndReason {
    /// The peer sent DELETE for it.
    DeletedByPeer,
    /// We deleted it (operator or shutdown).
    DeletedLocally,
    /// Replaced by a rekeyed SA.
    Rekeyed,
    /// Its hard lifetime passed without a successful rekey.
    Expired,
    /// INITIAL_CONTACT from the same peer identity: it restarted.
    ReplacedByInitialContact,
    /// Our requests went unanswered.
    Timeout,
    /// IKE_AUTH never arrived for a responder SA.
    HalfOpenExpired,
    AuthenticationFailed,
    NoProposalChosen,
    /// The peer's ID names no configured tunnel.
    UnknownPeer,
    /// The peer reported an error notify.
    PeerError(crate::wire::registry::NotifyType),
}

#[derive(Clone, Debug)]
pub enum Event {
    IkeSaEstablished(IkeSaInfo),
    /// The IKE SA `old` was rekeyed into `new` (RFC 7296 §2.18): its child
    /// SAs now belong to `new`; `old` ends with its own `IkeSaDeleted`.
    IkeSaRekeyed {
        old: IkeSaHandle,
        new: IkeSaInfo,
    },
    /// The peer (behind a NAT whose mapping changed, RFC 7296 §2.23) now
    /// talks from `remote`: the IKE SA and its child SAs' ESP go there.
    IkeSaMoved {
        handle: IkeSaHandle,
        local: SocketAddr,
        remote: SocketAddr,
    },
    IkeSaDeleted {
        info: IkeSaInfo,
        reason: SaEndReason,
    },
    /// An IKE SA that never became established.
    IkeSaFailed {
        info: IkeSaInfo,
        reason: SaEndReason,
    },
    ChildSaEstablished(Box<ChildSa>),
    ChildSaDeleted {
        tunnel: Arc<str>,
        ike: IkeSaHandle,
        spi_in: u32,
        spi_out: u32,
    },
    /// Traffic selectors could not be agreed; the IKE SA stays up without a child.
    ChildSaFailed {
        tunnel: Arc<str>,
        ike: IkeSaHandle,
        reason: crate::wire::registry::NotifyType,
    },
    /// What another node needs to take this established IKE SA over
    /// changed: call [`crate::Endpoint::export_ike_sa`] and publish it
    /// (sa-sync `Key::IkeSa`). It comes after the events of the change it
    /// covers, so a driver that publishes on it publishes the result, and
    /// before the driver sends that input's datagrams if it polls events
    /// first (a barrier can then hold them back). When: once the SA is
    /// established (after `IkeSaEstablished` and its first child), after
    /// every exchange that moved a Message ID in either direction
    /// (including a request of ours just sent), when the peer moved, after
    /// a child SA came or went, for the new SA of an IKE SA rekey (after
    /// `IkeSaRekeyed`), and after [`crate::Endpoint::adopt_ike_sa`] (the
    /// new owner publishes). Never for an SA that is not established or has
    /// been replaced by a rekey; its end is `IkeSaDeleted` as usual. Drivers
    /// that do not replicate IKE SAs ignore it.
    IkeSaUpdated(IkeSaHandle),
}
