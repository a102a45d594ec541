//! The state another node needs to take an established IKE SA over.
//!
//! anyhub runs one IKE SA on many nodes (DESIGN.md): one node owns it and
//! answers its exchanges; the others hold its child SAs (replicated by
//! sa-sync) and, with the [`IkeSaState`] published by the owner, can become
//! the owner when it dies. [`crate::Endpoint::export_ike_sa`] takes the
//! snapshot, [`crate::Endpoint::adopt_ike_sa`] installs it on another node
//! as an established SA, and [`crate::Event::IkeSaUpdated`] tells the
//! driver when to publish a new snapshot (after every exchange that moved
//! a message ID, when the peer moved, after an adoption).
//!
//! # What is in it
//!
//! Handle-independent identity (SPIs, role, addresses, tunnel, peer
//! identity, IKE algorithms), the seven keys of RFC 7296 §2.14 as
//! [`Secret`]s, NAT and fragmentation flags, the message-ID counters of
//! both directions (§2.2), the AEAD IV counter of the SK payload, the last
//! response (ciphertext, for the peer's retransmission of its last request,
//! §2.1), our request in flight (ciphertext), lifetimes as wall-clock time
//! and the child SAs' SPIs and selectors (the IKE SA deletes and rekeys
//! them; their keys travel in their own sa-sync records).
//!
//! Not in it: the IKE_SA_INIT messages and nonces (they enter only AUTH,
//! §2.15, which is done; rekeys use fresh nonces, §2.17, §2.18), Diffie-
//! Hellman state of an exchange in flight (a private key we do not ship),
//! queued tasks other than child deletes.
//!
//! # Message IDs on adoption
//!
//! RFC 7296 §2.2 makes a responder process only the request with the
//! expected Message ID. The adopting node knows the IDs as last published,
//! but the old owner may have completed exchanges after that publication
//! reached us (it dies between answering and publishing, or the record was
//! still in flight). RFC 6311 §3 solves this with an IKEV2_MESSAGE_ID_SYNC
//! exchange negotiated in IKE_AUTH; customer peers (strongSwan among them)
//! do not implement it, so we cannot rely on it. What we do instead:
//!
//! - **The peer's requests.** The peer keeps a window of one (we never send
//!   SET_WINDOW_SIZE, §2.3) and numbers its requests consecutively, so a
//!   gap means exchanges the old owner completed and we did not hear of.
//!   Until the first request after adoption, a request whose ID is up to
//!   [`MSGID_RESYNC_WINDOW`] − 1 above the expected one is accepted *if it
//!   authenticates* (the SK payload's integrity check: nobody without the
//!   keys can move our counter), and we resync to it. After that, strict
//!   §2.2 again. The peer's retransmission of the last request the old
//!   owner answered (published) gets the old owner's cached answer.
//! - **Our requests.** The peer accepts only our next ID, and we cannot
//!   probe it. The owner publishes when it *sends* a request, so the
//!   snapshot carries that request (ciphertext) and its ID; the adopting
//!   node retransmits exactly those bytes (§2.1): a peer that processed it
//!   answers from its cache, one that did not processes it now. Either way
//!   both sides agree on the next ID. The answer to a rekey that the old
//!   owner started cannot be used (its Diffie-Hellman secret stayed on the
//!   old owner): it only completes the exchange; the child SA is rekeyed
//!   again at its lifetime and the peer's extra SA expires. What cannot be
//!   repaired: a request the old owner sent and did not publish.
//! - **The SK IV counter.** AEAD IVs must never repeat under one key
//!   (RFC 5282 §3.1), and the adopting node cannot know how many messages
//!   the old owner sealed. On adoption the 64-bit counter jumps to the next
//!   2^32 block above the published value, offset by `node_index << 20`:
//!   two nodes adopting the same snapshot, or the old owner still alive
//!   (split brain, fewer than 2^32 messages later), never share an IV.
//!
//! Nothing here guarantees more than the bus does: a node adopts the last
//! snapshot it holds. Publishing with a barrier (docs/sa-sync.md) before
//! the owner *sends* makes the window small; it does not close it.

use crate::identity::Identity;
use crate::proposal::Selected;
use crate::wire::TrafficSelector;
use anyhub_crypto::Secret;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

/// How far above the published Message ID the peer's first request after
/// an adoption may be. Each step is one exchange the old owner completed
/// without publishing it; with publication after every exchange a few are
/// plenty, and every accepted request must authenticate anyway.
pub const MSGID_RESYNC_WINDOW: u32 = 16;

/// The seven keys of an IKE SA (RFC 7296 §2.14). Zeroized on drop (each a
/// [`Secret`]); `Debug` shows lengths only.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IkeSaKeys {
    pub sk_d: Secret,
    pub sk_ai: Secret,
    pub sk_ar: Secret,
    pub sk_ei: Secret,
    pub sk_er: Secret,
    pub sk_pi: Secret,
    pub sk_pr: Secret,
}

/// Our answer to the peer's last request, as sent (ciphertext), so a
/// retransmission of that request is answered the same way (§2.1).
#[derive(Clone, PartialEq, Eq)]
pub struct CachedResponse {
    pub msg_id: u32,
    /// SHA-1 of the request it answers, to recognise its retransmissions.
    pub request_hash: [u8; 20],
    /// One datagram, or its fragments (RFC 7383).
    pub datagrams: Vec<Vec<u8>>,
}

/// What our request in flight asks for, as far as another node can finish it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestKind {
    /// An empty INFORMATIONAL (liveness check).
    Dpd,
    /// DELETE of the child SA with this inbound SPI.
    DeleteChild(u32),
    /// Anything else (a rekey): the adopting node retransmits it only to
    /// keep message IDs in step and ignores the answer.
    Other,
}

/// Our request in flight (ciphertext), retransmitted by the adopting node.
#[derive(Clone, PartialEq, Eq)]
pub struct OutstandingRequest {
    pub msg_id: u32,
    pub datagrams: Vec<Vec<u8>>,
    pub kind: RequestKind,
}

/// A child SA as its IKE SA manages it (to delete or rekey it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChildRef {
    pub spi_in: u32,
    pub spi_out: u32,
    pub local_ts: Vec<TrafficSelector>,
    pub remote_ts: Vec<TrafficSelector>,
    /// `None`: not to be rekeyed by us (a rekey is under way, or the peer
    /// rekeyed it).
    pub rekey_at: Option<SystemTime>,
    pub expire_at: SystemTime,
    /// Replaced or expired: our DELETE for it is queued or in flight.
    pub deleting: bool,
    /// A newer child SA replaced it and the peer deletes it.
    pub replaced: bool,
}

/// A secret-safe snapshot of an established IKE SA (see the module doc).
#[derive(Clone, PartialEq, Eq)]
pub struct IkeSaState {
    pub spi_i: u64,
    pub spi_r: u64,
    /// We are the original initiator (RFC 7296 §3.1).
    pub initiator: bool,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub tunnel: Arc<str>,
    pub remote_id: Identity,
    /// The agreed IKE algorithms.
    pub proposal: Selected,
    pub keys: IkeSaKeys,
    /// A NAT in front of us / in front of the peer (§2.23).
    pub nat_local: bool,
    pub nat_remote: bool,
    /// Both sides support IKE fragmentation (RFC 7383).
    pub fragmentation: bool,
    /// The Message ID of our next request (§2.2).
    pub next_request_id: u32,
    /// The Message ID we expect on the peer's next request.
    pub next_peer_request_id: u32,
    /// The AEAD IV counter for the next message we seal (RFC 5282 §3.1).
    pub next_iv: u64,
    pub last_response: Option<CachedResponse>,
    pub outstanding: Option<OutstandingRequest>,
    pub children: Vec<ChildRef>,
    pub established_at: SystemTime,
    pub rekey_at: Option<SystemTime>,
    pub reauth_at: Option<SystemTime>,
    pub expire_at: Option<SystemTime>,
}

impl fmt::Debug for IkeSaState {
    /// Identity and counters; keys and message bytes never.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IkeSaState")
            .field("spi_i", &format_args!("{:016x}", self.spi_i))
            .field("spi_r", &format_args!("{:016x}", self.spi_r))
            .field("initiator", &self.initiator)
            .field("tunnel", &self.tunnel)
            .field("local", &self.local)
            .field("remote", &self.remote)
            .field("remote_id", &self.remote_id)
            .field("proposal", &format_args!("{}", self.proposal))
            .field("keys", &format_args!("<redacted>"))
            .field("next_request_id", &self.next_request_id)
            .field("next_peer_request_id", &self.next_peer_request_id)
            .field("outstanding", &self.outstanding.as_ref().map(|o| o.msg_id))
            .field("children", &self.children.len())
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for CachedResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "CachedResponse(id {}, {} datagrams)",
            self.msg_id,
            self.datagrams.len()
        )
    }
}

impl fmt::Debug for OutstandingRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "OutstandingRequest(id {}, {:?}, {} datagrams)",
            self.msg_id,
            self.kind,
            self.datagrams.len()
        )
    }
}

/// Why [`crate::Endpoint::adopt_ike_sa`] refused a state.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AdoptError {
    #[error("no tunnel named '{0}'")]
    UnknownTunnel(String),
    #[error("the peer identity does not match tunnel '{0}'")]
    IdentityMismatch(String),
    #[error("IKE algorithms not supported or not allowed by tunnel '{0}'")]
    Proposal(String),
    #[error("{0} has the wrong length for the IKE algorithms")]
    KeyLength(&'static str),
    #[error("SPIs must not be zero")]
    ZeroSpi,
    #[error("an IKE SA with our SPI {0:016x} exists already")]
    SpiInUse(u64),
    #[error("inconsistent message IDs: {0}")]
    MessageIds(&'static str),
}

/// The SK IV counter on adoption: the next 2^32 block above `published`,
/// at offset `node_index << 20` inside it (see the module doc).
pub(crate) fn adopted_iv(published: u64, node_index: u16) -> u64 {
    let block = (published >> 32).saturating_add(1);
    (block << 32) | (u64::from(node_index) << 20)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adopted_ivs_jump_past_the_old_owner_and_apart() {
        let p = 12_345;
        let b = adopted_iv(p, 2);
        let c = adopted_iv(p, 3);
        assert!(b > p + (1 << 31));
        // Disjoint ranges of 2^20 messages each.
        assert!(c >= b + (1 << 20));
        // A second adoption (of the adopter's snapshot) jumps again.
        assert!(adopted_iv(b + 5, 3) > b + (1 << 31));
    }
}
