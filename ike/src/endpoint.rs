//! The IKE endpoint: every IKE SA of one node, as a sans-IO state machine.
//!
//! The contract is quinn's:
//! - input: [`Endpoint::handle`] (a datagram, with `now`),
//!   [`Endpoint::handle_timeout`], [`Endpoint::initiate`];
//! - output, polled after every input until empty:
//!   [`Endpoint::poll_transmit`], [`Endpoint::poll_event`], then
//!   [`Endpoint::poll_timeout`] to arm the driver's single timer.
//!
//! Nothing here reads a clock, opens a socket or installs an SA. Randomness
//! comes from the [`Rng`] given at construction, so a seeded run is
//! reproducible byte for byte.
//!
//! Roles: "initiator" always means the *original* initiator of an IKE SA
//! (the I flag, RFC 7296 §3.1); requests and responses flow both ways.
//!
//! Logging: the core logs at debug; what an operator needs at info leaves
//! as an event, and the driver logs it once.

mod defence;
mod fragment;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
mod lifecycle;
mod takeover;

use crate::auth;
use crate::config::{EndpointConfig, TunnelConfig};
use crate::event::{
    ChildSa, DirectionKeys, Event, IkeSaHandle, IkeSaInfo, IkeState, SaEndReason, Transmit,
};
use crate::identity::Identity;
use crate::keys::{group_of, DhState, IkeKeys, IkeSuite};
use crate::proposal::{self, DhPolicy, ProposalSpec, Selected};
use crate::sk::{OpenError, SkCrypto};
use crate::spi;
use crate::ts;
use crate::wire::registry::{DhId, ExchangeType, NotifyType, PayloadType, ProtocolId};
use crate::wire::{
    Delete, Encrypted, Flags, Header, Ke, Message, Nonce, Notify, Payload, SaPayload,
    TrafficSelector, Ts,
};
use anyhub_crypto::{prf, Rng};
use defence::{Cookies, HalfOpen};
use fragment::{max_message_len, Collected, Reassembly};
use lifecycle::{queue, Pending, Task};
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Nonce length we send: 32 octets, at least half the largest PRF key size
/// (RFC 7296 §2.10).
const NONCE_LEN: usize = 32;
/// At most this many IKE SAs wait for their IKE_AUTH at once; beyond it new
/// IKE_SA_INIT requests are dropped, cookie or not. Cookies (§2.6) start
/// long before, at [`EndpointConfig::cookie_threshold`].
pub const MAX_HALF_OPEN: usize = 16_384;
/// INVALID_KE_PAYLOAD answers we follow before giving up (a peer could
/// otherwise bounce us between groups forever).
const MAX_INVALID_KE_RETRIES: u8 = 2;
/// COOKIE answers (§2.6) we follow before giving up; one is the norm.
const MAX_COOKIE_RETRIES: u8 = 3;

/// Declares [`Counters`] and its name/value listing from one field list, so
/// a new counter reaches the status document without further edits.
macro_rules! counters {
    ($( $(#[$doc:meta])* $name:ident, )*) => {
        /// What the endpoint counts. A peer's garbage lands here, never in a
        /// panic.
        #[derive(Clone, Debug, Default, PartialEq, Eq)]
        pub struct Counters {
            $( $(#[$doc])* pub $name: u64, )*
        }

        impl Counters {
            /// Every counter with its name, in declaration order.
            pub fn pairs(&self) -> Vec<(&'static str, u64)> {
                vec![$( (stringify!($name), self.$name), )*]
            }
        }
    };
}

counters! {
    rx_datagrams,
    /// Did not parse (header, lengths, payload structure).
    rx_malformed,
    /// Parsed but not for anything we have, out of the message-ID window,
    /// or not acceptable in the SA's state.
    rx_dropped,
    /// The SK payload failed its integrity check.
    rx_decrypt_failed,
    /// Retransmitted requests answered from the response cache.
    rx_retransmits,
    tx_retransmits,
    auth_failed,
    no_proposal_chosen,
    invalid_ke_sent,
    half_open_refused,
    ike_sa_established,
    child_sa_established,
    /// Both sides rekeyed the same SA at once (RFC 7296 §2.8.1, §2.8.2).
    rekey_collisions,
    /// Authenticated IKE fragments received (RFC 7383).
    rx_fragments,
    /// Messages we sent as fragments.
    tx_fragmented,
    /// Authenticated messages from a new address we did not follow (no NAT
    /// between us, §2.23).
    rx_address_ignored,
    /// A peer behind a NAT moved to a new mapping, and its SAs with it.
    peer_moved,
    /// NAT keepalives sent (RFC 3948 §2.3).
    tx_keepalives,
    /// IKE_SA_INIT answered with a COOKIE instead of state (§2.6).
    cookies_sent,
    /// IKE_SA_INIT carrying a cookie we did not make (or a stale one).
    cookies_invalid,
    /// New IKE SAs we started to reauthenticate (RFC 7296 §2.8.3).
    reauthentications,
    /// IKE SAs taken over from another node ([`Endpoint::adopt_ike_sa`]).
    ike_sa_adopted,
    /// Requests of the peer accepted ahead of the published Message ID
    /// after an adoption.
    msgid_resyncs,
}

/// Why [`Endpoint::initiate`] refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum InitiateError {
    #[error("no tunnel named '{0}'")]
    UnknownTunnel(String),
    #[error("tunnel '{0}' has no usable IKE proposal")]
    NoProposal(String),
}

/// Why we refuse a request: the one table deciding what the peer is told
/// (STYLE.md). Each refusal maps to exactly one notify.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Refusal {
    /// A required payload is missing or payloads contradict each other.
    Syntax,
    UnsupportedCritical(PayloadType),
    NoProposalChosen,
    InvalidKe(DhId),
    AuthenticationFailed,
    TsUnacceptable,
    /// REKEY_SA names a child SA we do not have.
    ChildSaNotFound,
    /// We are busy with a conflicting exchange; the peer retries (§2.25).
    TemporaryFailure,
}

impl Refusal {
    fn notify(self) -> Notify {
        let (ty, data) = match self {
            Refusal::Syntax => (NotifyType::INVALID_SYNTAX, vec![]),
            Refusal::UnsupportedCritical(t) => {
                (NotifyType::UNSUPPORTED_CRITICAL_PAYLOAD, vec![t.0])
            }
            Refusal::NoProposalChosen => (NotifyType::NO_PROPOSAL_CHOSEN, vec![]),
            Refusal::InvalidKe(g) => (NotifyType::INVALID_KE_PAYLOAD, g.0.to_be_bytes().to_vec()),
            Refusal::AuthenticationFailed => (NotifyType::AUTHENTICATION_FAILED, vec![]),
            Refusal::TsUnacceptable => (NotifyType::TS_UNACCEPTABLE, vec![]),
            Refusal::ChildSaNotFound => (NotifyType::CHILD_SA_NOT_FOUND, vec![]),
            Refusal::TemporaryFailure => (NotifyType::TEMPORARY_FAILURE, vec![]),
        };
        notify(ty, data)
    }
}

fn notify(ty: NotifyType, data: Vec<u8>) -> Notify {
    Notify {
        protocol: ProtocolId::NONE,
        spi: vec![],
        ty,
        data,
    }
}

enum Phase {
    /// We sent IKE_SA_INIT and wait for the answer.
    InitiatorInitSent {
        dh: DhState,
        /// Payloads of the request after an optional COOKIE, for a resend
        /// with a cookie or another key exchange group.
        invalid_ke_retries: u8,
        /// COOKIE answers followed so far.
        cookie_retries: u8,
    },
    /// We sent IKE_AUTH with this inbound child SPI.
    InitiatorAuthSent {
        child_spi_in: u32,
    },
    /// We answered IKE_SA_INIT; IKE_AUTH should follow.
    ResponderAwaitAuth,
    Established,
    /// We sent DELETE for the IKE SA and wait for the answer.
    Deleting,
}

struct Outstanding {
    msg_id: u32,
    /// The request as sent: one datagram, or its fragments (RFC 7383).
    datagrams: Vec<Vec<u8>>,
    tries: u32,
    next_at: Instant,
    /// What the request was, to interpret its answer.
    pending: Pending,
}

/// What an IKE SA keeps of each of its child SAs (the keys left with the
/// event).
#[derive(Clone, Debug, PartialEq, Eq)]
struct ChildState {
    spi_in: u32,
    spi_out: u32,
    local_ts: Vec<TrafficSelector>,
    remote_ts: Vec<TrafficSelector>,
    /// `None` once a rekey is under way or the peer rekeys it.
    rekey_at: Option<Instant>,
    expire_at: Instant,
    /// Replaced or expired: a DELETE is queued or sent.
    deleting: bool,
    /// A newer child SA replaced it and the peer deletes it (the peer's
    /// rekey, or its win in a rekey collision): not rekeyed again.
    replaced: bool,
}

struct IkeSa {
    handle: IkeSaHandle,
    initiator: bool,
    spi_i: u64,
    spi_r: u64,
    local: SocketAddr,
    remote: SocketAddr,
    tunnel: Option<Arc<TunnelConfig>>,
    remote_id: Option<Identity>,
    phase: Phase,
    proposal: Option<Selected>,
    keys: Option<IkeKeys>,
    sk: Option<SkCrypto>,
    nonce_i: Vec<u8>,
    nonce_r: Vec<u8>,
    /// The IKE_SA_INIT messages as sent, signed by AUTH (§2.15).
    init_request: Vec<u8>,
    init_response: Vec<u8>,
    /// A NAT in front of us / in front of the peer (§2.23).
    nat_local: bool,
    nat_remote: bool,
    next_request_id: u32,
    outstanding: Option<Outstanding>,
    next_peer_request_id: u32,
    /// Our answer to the peer's last request, as sent (one datagram or its
    /// fragments), for retransmitted requests (§2.1).
    last_response: Option<(u32, Vec<Vec<u8>>)>,
    /// SHA-1 of the request `last_response` answers, to recognise its
    /// retransmissions.
    last_request_hash: Option<[u8; 20]>,
    children: Vec<ChildState>,
    established_at: Option<Instant>,
    /// Half-open or connect deadline.
    deadline: Option<Instant>,
    /// The entry this SA has in `Endpoint::timers`.
    scheduled: Option<Instant>,
    /// Our requests-to-be, one in flight at a time.
    tasks: VecDeque<Task>,
    /// The last authenticated message from the peer (for liveness checks).
    last_heard: Instant,
    rekey_at: Option<Instant>,
    expire_at: Option<Instant>,
    /// Rekeyed into a new IKE SA: only its DELETE is left to happen.
    superseded: bool,
    /// When we delete a superseded SA ourselves if the peer has not.
    superseded_at: Option<Instant>,
    /// A task to retry later (after TEMPORARY_FAILURE).
    retry_at: Option<(Instant, Task)>,
    /// Where we first sent IKE_SA_INIT from and to, for a restart.
    origin: Option<(SocketAddr, SocketAddr)>,
    /// The peer rekeyed this IKE SA into this one while our own rekey was
    /// in flight (§2.8.2), with the lowest nonce of its exchange.
    rekey_collision: Option<(IkeSaHandle, Vec<u8>)>,
    /// Both sides announced IKEV2_FRAGMENTATION_SUPPORTED (RFC 7383 §2.3).
    fragmentation: bool,
    /// Fragments of the peer's current message.
    reassembly: Option<Reassembly>,
    /// When we last sent a NAT keepalive (we are behind a NAT).
    last_keepalive: Option<Instant>,
    /// Our entry in the half-open table, until IKE_AUTH completes.
    half_open_key: Option<(u64, SocketAddr)>,
    /// When we (the original initiator) start a new IKE SA to
    /// reauthenticate (RFC 7296 §2.8.3).
    reauth_at: Option<Instant>,
    /// This SA reauthenticates that one, which goes once this is up.
    replaces: Option<IkeSaHandle>,
    /// An event announced it (`IkeSaEstablished`, or `IkeSaRekeyed` as the
    /// new SA). The redundant SA of a rekey collision (§2.8.2) never is,
    /// and so ends without an event either.
    announced: bool,
    /// What the last `IkeSaUpdated` covered ([`takeover`]).
    published: Option<takeover::Fingerprint>,
    /// Adopted from another node and no request of the peer's seen yet: its
    /// next request may be a little ahead of the published Message ID
    /// ([`crate::takeover`]).
    msgid_resync: bool,
}

impl IkeSa {
    /// An SA with nothing negotiated yet; callers fill in what they know
    /// with struct-update syntax.
    fn blank(
        handle: IkeSaHandle,
        initiator: bool,
        local: SocketAddr,
        remote: SocketAddr,
        phase: Phase,
        now: Instant,
    ) -> IkeSa {
        IkeSa {
            handle,
            initiator,
            spi_i: 0,
            spi_r: 0,
            local,
            remote,
            tunnel: None,
            remote_id: None,
            phase,
            proposal: None,
            keys: None,
            sk: None,
            nonce_i: vec![],
            nonce_r: vec![],
            init_request: vec![],
            init_response: vec![],
            nat_local: false,
            nat_remote: false,
            next_request_id: 0,
            outstanding: None,
            next_peer_request_id: 0,
            last_response: None,
            last_request_hash: None,
            children: vec![],
            established_at: None,
            deadline: None,
            scheduled: None,
            tasks: VecDeque::new(),
            last_heard: now,
            rekey_at: None,
            expire_at: None,
            superseded: false,
            superseded_at: None,
            retry_at: None,
            origin: None,
            rekey_collision: None,
            fragmentation: false,
            reassembly: None,
            last_keepalive: None,
            half_open_key: None,
            reauth_at: None,
            replaces: None,
            announced: false,
            published: None,
            msgid_resync: false,
        }
    }

    fn our_spi(&self) -> u64 {
        if self.initiator {
            self.spi_i
        } else {
            self.spi_r
        }
    }

    fn state(&self) -> IkeState {
        match self.phase {
            Phase::Established => IkeState::Established,
            Phase::Deleting => IkeState::Deleting,
            _ => IkeState::Connecting,
        }
    }

    fn info(&self) -> IkeSaInfo {
        IkeSaInfo {
            handle: self.handle,
            tunnel: self.tunnel.as_ref().map(|t| t.id.clone()),
            spi_i: self.spi_i,
            spi_r: self.spi_r,
            initiator: self.initiator,
            state: self.state(),
            local: self.local,
            remote: self.remote,
            remote_id: self.remote_id.clone(),
            proposal: self.proposal.as_ref().map(|p| p.to_string()),
            established_at: self.established_at,
        }
    }

    fn header(&self, exchange: ExchangeType, message_id: u32, response: bool) -> Header {
        let mut flags = 0;
        if self.initiator {
            flags |= Flags::INITIATOR.0;
        }
        if response {
            flags |= Flags::RESPONSE.0;
        }
        Header {
            spi_i: self.spi_i,
            spi_r: self.spi_r,
            next_payload: PayloadType::NONE,
            major_version: 2,
            minor_version: 0,
            exchange,
            flags: Flags(flags),
            message_id,
            length: 0,
        }
    }

    /// The SA's next deadline: only what `handle_timeout` acts on in the
    /// SA's phase. Lifetimes (rekey, reauthentication, expiry, the grace of
    /// a superseded SA) are acted on only while established (`Endpoint::tick`); were they
    /// scheduled while our DELETE awaits its answer, a passed one would
    /// stay due, and `handle_timeout` would spin on it.
    fn next_timer(
        &self,
        dpd_due: Option<Instant>,
        keepalive_due: Option<Instant>,
    ) -> Option<Instant> {
        let established = matches!(self.phase, Phase::Established);
        let children = self
            .children
            .iter()
            .filter(|c| established && !c.deleting)
            .flat_map(|c| [c.rekey_at, Some(c.expire_at)]);
        let lifetimes = [
            self.rekey_at,
            self.reauth_at,
            self.expire_at,
            self.superseded_at,
        ]
        .into_iter()
        .filter(|_| established);
        [
            self.outstanding.as_ref().map(|o| o.next_at),
            self.deadline,
            self.retry_at.map(|(t, _)| t),
            keepalive_due,
            dpd_due,
        ]
        .into_iter()
        .chain(lifetimes)
        .chain(children)
        .flatten()
        .min()
    }
}

/// Every IKE SA of one node.
pub struct Endpoint {
    config: EndpointConfig,
    /// All tunnels' IKE proposals, in tunnel order: IKE_SA_INIT is answered
    /// before the peer's identity (and so its tunnel) is known.
    ike_proposals: Vec<ProposalSpec>,
    rng: Box<dyn Rng>,
    sas: HashMap<IkeSaHandle, IkeSa>,
    /// Our own SPI of each SA (responder SPI or initiator SPI) → SA.
    by_spi: HashMap<u64, IkeSaHandle>,
    /// Responder SAs awaiting IKE_AUTH by (peer SPI, peer address), to
    /// recognise a retransmitted IKE_SA_INIT.
    half_open: HalfOpen<IkeSaHandle>,
    /// COOKIE secrets (§2.6), made when first needed.
    cookies: Option<Cookies>,
    timers: BTreeSet<(Instant, IkeSaHandle)>,
    next_handle: u64,
    transmits: VecDeque<Transmit>,
    events: VecDeque<Event>,
    counters: Counters,
}

impl Endpoint {
    pub fn new(config: EndpointConfig, rng: Box<dyn Rng>) -> Endpoint {
        let mut ike_proposals: Vec<ProposalSpec> = Vec::new();
        for t in &config.tunnels {
            for p in &t.ike_proposals {
                if !ike_proposals.contains(p) {
                    ike_proposals.push(p.clone());
                }
            }
        }
        Endpoint {
            config,
            ike_proposals,
            rng,
            sas: HashMap::new(),
            by_spi: HashMap::new(),
            half_open: HalfOpen::default(),
            cookies: None,
            timers: BTreeSet::new(),
            next_handle: 1,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            counters: Counters::default(),
        }
    }

    pub fn config(&self) -> &EndpointConfig {
        &self.config
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// A snapshot of every IKE SA.
    pub fn ike_sas(&self) -> Vec<IkeSaInfo> {
        let mut v: Vec<IkeSaInfo> = self.sas.values().map(IkeSa::info).collect();
        v.sort_by_key(|i| i.handle);
        v
    }

    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.first().map(|&(t, _)| t)
    }

    // ---------------------------------------------------------------- input

    /// One datagram carrying an IKE message (on the NAT-T port the driver
    /// has already removed the non-ESP marker).
    pub fn handle(&mut self, now: Instant, local: SocketAddr, remote: SocketAddr, data: &[u8]) {
        self.counters.rx_datagrams += 1;
        let msg = match Message::parse(data) {
            Ok(m) => m,
            Err(e) => {
                self.counters.rx_malformed += 1;
                tracing::debug!(%remote, what = e.what, "malformed IKE message dropped");
                return;
            }
        };
        let h = &msg.header;
        if h.major_version != 2 {
            // §2.5: a major version we do not speak. Dropped and counted;
            // answering unauthenticated garbage would make us a reflector.
            self.counters.rx_dropped += 1;
            return;
        }
        if h.exchange == ExchangeType::IKE_SA_INIT
            && !h.flags.response()
            && h.flags.initiator()
            && h.spi_r == 0
        {
            if h.message_id != 0 {
                self.counters.rx_malformed += 1;
                return;
            }
            self.handle_init_request(now, local, remote, data, msg);
            return;
        }
        // The I flag says who sent it: the original initiator's messages
        // carry our SPI in the responder slot, and vice versa.
        let our_spi = if h.flags.initiator() {
            h.spi_r
        } else {
            h.spi_i
        };
        let Some(&handle) = self.by_spi.get(&our_spi) else {
            self.counters.rx_dropped += 1;
            tracing::debug!(%remote, spi = format_args!("{our_spi:016x}"), "IKE message for an unknown SA dropped");
            return;
        };
        let Some(mut sa) = self.sas.remove(&handle) else {
            self.counters.rx_dropped += 1;
            return;
        };
        // The sender's role must be the opposite of ours, and the other SPI
        // must be the SA's (except in the IKE_SA_INIT response, where the
        // initiator learns it).
        let role_ok = h.flags.initiator() != sa.initiator;
        let other_ok = if sa.initiator {
            sa.spi_r == h.spi_r || matches!(sa.phase, Phase::InitiatorInitSent { .. })
        } else {
            sa.spi_i == h.spi_i
        };
        if !role_ok || !other_ok {
            self.counters.rx_dropped += 1;
            self.put_back(sa);
            return;
        }
        let keep = if h.flags.response() {
            self.handle_response(now, &mut sa, local, remote, data, msg)
        } else {
            self.handle_request(now, &mut sa, local, remote, data, msg)
        };
        if keep {
            self.run_tasks(now, &mut sa);
            self.put_back(sa);
        } else {
            self.forget(sa);
        }
    }

    /// Starts the tunnel `tunnel_id` as initiator, sending IKE_SA_INIT from
    /// `local` to `remote`.
    pub fn initiate(
        &mut self,
        now: Instant,
        tunnel_id: &str,
        local: SocketAddr,
        remote: SocketAddr,
    ) -> Result<IkeSaHandle, InitiateError> {
        let tunnel = self
            .config
            .tunnel(tunnel_id)
            .cloned()
            .ok_or_else(|| InitiateError::UnknownTunnel(tunnel_id.to_string()))?;
        let group = tunnel
            .ike_proposals
            .iter()
            .flat_map(|p| p.dh.iter())
            .copied()
            .find(|&g| group_of(g).is_some())
            .ok_or_else(|| InitiateError::NoProposal(tunnel_id.to_string()))?;
        let spi_i = self.fresh_ike_spi();
        let mut nonce_i = vec![0u8; NONCE_LEN];
        self.rng.fill(&mut nonce_i);
        let dh = DhState::generate(group, &mut *self.rng).expect("group checked above");
        let handle = self.new_handle();
        let mut sa = IkeSa {
            spi_i,
            tunnel: Some(tunnel),
            nonce_i,
            deadline: Some(now + self.connect_timeout()),
            origin: Some((local, remote)),
            ..IkeSa::blank(
                handle,
                true,
                local,
                remote,
                Phase::InitiatorInitSent {
                    dh,
                    invalid_ke_retries: 0,
                    cookie_retries: 0,
                },
                now,
            )
        };
        self.by_spi.insert(spi_i, handle);
        self.send_init_request(now, &mut sa, None);
        self.put_back(sa);
        Ok(handle)
    }

    /// Deletes an IKE SA and its child SAs: an established one with an
    /// INFORMATIONAL DELETE to the peer (§1.4.1), finished when the peer
    /// answers or stops answering; one still connecting at once. Returns
    /// false for an unknown handle.
    pub fn delete_ike_sa(&mut self, now: Instant, handle: IkeSaHandle) -> bool {
        let Some(mut sa) = self.sas.remove(&handle) else {
            return false;
        };
        match sa.phase {
            Phase::Established => {
                // Queued first, sent once any request in flight is answered.
                sa.tasks.retain(|t| *t != Task::DeleteIke);
                sa.tasks.push_front(Task::DeleteIke);
                self.run_tasks(now, &mut sa);
                self.put_back(sa);
            }
            Phase::Deleting => self.put_back(sa),
            _ => {
                // Nothing to tell the peer yet: just forget it.
                self.events.push_back(Event::IkeSaFailed {
                    info: sa.info(),
                    reason: SaEndReason::DeletedLocally,
                });
                self.forget(sa);
            }
        }
        true
    }

    /// Rekeys the child SA with inbound SPI `spi_in` of IKE SA `handle` now
    /// (an operator's request; lifetimes do it on their own). Returns false
    /// if there is no such established child SA.
    pub fn rekey_child_sa(&mut self, now: Instant, handle: IkeSaHandle, spi_in: u32) -> bool {
        self.queue_task(now, handle, |sa| {
            let c = sa
                .children
                .iter_mut()
                .find(|c| c.spi_in == spi_in && c.live())?;
            c.rekey_at = None;
            Some(Task::RekeyChild(spi_in, None))
        })
    }

    /// Rekeys IKE SA `handle` now (§2.18). Returns false if it is not
    /// established or already rekeyed.
    pub fn rekey_ike_sa(&mut self, now: Instant, handle: IkeSaHandle) -> bool {
        self.queue_task(now, handle, |sa| {
            if sa.superseded {
                return None;
            }
            sa.rekey_at = None;
            Some(Task::RekeyIke(None))
        })
    }

    /// Deletes one child SA with an INFORMATIONAL DELETE (§1.4.1). Returns
    /// false if there is no such child SA.
    pub fn delete_child_sa(&mut self, now: Instant, handle: IkeSaHandle, spi_in: u32) -> bool {
        self.queue_task(now, handle, |sa| {
            let c = sa
                .children
                .iter_mut()
                .find(|c| c.spi_in == spi_in && !c.deleting)?;
            c.deleting = true;
            c.rekey_at = None;
            Some(Task::DeleteChild(spi_in))
        })
    }

    /// Queues the task `pick` returns for an established SA and starts it if
    /// nothing else is in flight.
    fn queue_task(
        &mut self,
        now: Instant,
        handle: IkeSaHandle,
        pick: impl FnOnce(&mut IkeSa) -> Option<Task>,
    ) -> bool {
        let Some(mut sa) = self.sas.remove(&handle) else {
            return false;
        };
        let task = if matches!(sa.phase, Phase::Established) {
            pick(&mut sa)
        } else {
            None
        };
        let queued = task.is_some();
        if let Some(t) = task {
            queue(&mut sa.tasks, t);
            self.run_tasks(now, &mut sa);
        }
        self.put_back(sa);
        queued
    }

    /// The inbound SPIs of an IKE SA's live child SAs (neither being
    /// deleted nor replaced by a rekey), oldest first.
    pub fn child_sas_of(&self, handle: IkeSaHandle) -> Vec<u32> {
        self.sas
            .get(&handle)
            .map(|sa| {
                sa.children
                    .iter()
                    .filter(|c| c.live())
                    .map(|c| c.spi_in)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Drives retransmissions and expiries due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(&(at, handle)) = self.timers.first() {
            if at > now {
                break;
            }
            self.timers.remove(&(at, handle));
            let Some(mut sa) = self.sas.remove(&handle) else {
                continue;
            };
            sa.scheduled = None;
            if sa.deadline.is_some_and(|d| d <= now) {
                let reason = if sa.initiator {
                    SaEndReason::Timeout
                } else {
                    SaEndReason::HalfOpenExpired
                };
                tracing::debug!(handle = handle.0, ?reason, "IKE SA did not come up in time");
                self.events.push_back(Event::IkeSaFailed {
                    info: sa.info(),
                    reason,
                });
                self.forget(sa);
                continue;
            }
            if let Some(o) = sa.outstanding.as_mut() {
                if o.next_at <= now {
                    let r = self.config.retransmit;
                    if o.tries >= r.tries {
                        tracing::debug!(handle = handle.0, "peer did not answer; IKE SA given up");
                        let reason = SaEndReason::Timeout;
                        if matches!(sa.phase, Phase::Established | Phase::Deleting) {
                            self.child_deleted_events(&sa);
                            self.ike_sa_deleted(&sa, reason);
                        } else {
                            self.events.push_back(Event::IkeSaFailed {
                                info: sa.info(),
                                reason,
                            });
                        }
                        self.peer_dead(now, &sa);
                        self.forget(sa);
                        continue;
                    }
                    o.tries += 1;
                    o.next_at = now + retransmit_delay(r.timeout, r.base, o.tries);
                    let datagrams = o.datagrams.clone();
                    self.counters.tx_retransmits += 1;
                    self.send_all(&sa, datagrams);
                }
            }
            if let Some((t, task)) = sa.retry_at {
                if t <= now {
                    sa.retry_at = None;
                    queue(&mut sa.tasks, task);
                }
            }
            self.tick(now, &mut sa);
            self.run_tasks(now, &mut sa);
            self.put_back(sa);
        }
    }

    // ------------------------------------------------------- IKE_SA_INIT (R)

    fn handle_init_request(
        &mut self,
        now: Instant,
        local: SocketAddr,
        remote: SocketAddr,
        data: &[u8],
        msg: Message,
    ) {
        let h = msg.header;
        // A retransmitted IKE_SA_INIT gets the same answer again (§2.1).
        if let Some(handle) = self.half_open.get(h.spi_i, remote) {
            if let Some(sa) = self.sas.get(&handle) {
                if sa.init_request == data {
                    self.counters.rx_retransmits += 1;
                    let bytes = sa.init_response.clone();
                    let t = self.transmit_for(sa, bytes);
                    self.transmits.push_back(t);
                } else {
                    self.counters.rx_dropped += 1;
                }
                return;
            }
        }
        if msg.encrypted.is_some() {
            self.counters.rx_malformed += 1;
            return;
        }
        // Bounds first: in total, and per peer address (many sites behind
        // one NAT share an address, hence a generous default).
        let from_ip = self.half_open.of_ip(remote.ip());
        if self.half_open.len() >= MAX_HALF_OPEN || from_ip >= self.config.half_open_per_ip as u32 {
            self.counters.half_open_refused += 1;
            return;
        }
        // Under load, only a peer that can receive our datagrams gets state:
        // it must echo the cookie we send (§2.6).
        let cookies_needed = self.half_open.len() >= self.config.cookie_threshold
            || from_ip >= self.config.cookie_threshold_ip as u32;
        if cookies_needed && !self.check_cookie(now, local, remote, &msg) {
            return;
        }
        match self.accept_init(now, local, remote, data, &msg) {
            Ok(()) => {}
            Err(refusal) => {
                match refusal {
                    Refusal::NoProposalChosen => self.counters.no_proposal_chosen += 1,
                    Refusal::InvalidKe(_) => self.counters.invalid_ke_sent += 1,
                    _ => {}
                }
                // Debug, not info: this is what a flood of garbage reaches.
                tracing::debug!(%remote, ?refusal, "IKE_SA_INIT refused");
                // Stateless answer: SPIr stays zero, nothing is kept.
                let header = Header {
                    spi_i: h.spi_i,
                    spi_r: 0,
                    next_payload: PayloadType::NONE,
                    major_version: 2,
                    minor_version: 0,
                    exchange: ExchangeType::IKE_SA_INIT,
                    flags: Flags::RESPONSE,
                    message_id: 0,
                    length: 0,
                };
                let out = Message {
                    header,
                    payloads: vec![Payload::Notify(refusal.notify())],
                    encrypted: None,
                };
                self.transmits.push_back(Transmit {
                    local,
                    remote,
                    natt: local.port() == self.config.natt_port,
                    payload: out.emit(),
                });
            }
        }
    }

    fn accept_init(
        &mut self,
        now: Instant,
        local: SocketAddr,
        remote: SocketAddr,
        data: &[u8],
        msg: &Message,
    ) -> Result<(), Refusal> {
        check_critical(&msg.payloads)?;
        let mut sa_p = None;
        let mut ke = None;
        let mut nonce = None;
        let mut nat_src = Vec::new();
        let mut nat_dst = Vec::new();
        for p in &msg.payloads {
            match p {
                Payload::Sa(s) if sa_p.is_none() => sa_p = Some(s),
                Payload::Ke(k) if ke.is_none() => ke = Some(k),
                Payload::Nonce(n) if nonce.is_none() => nonce = Some(n),
                Payload::Notify(n) if n.ty == NotifyType::NAT_DETECTION_SOURCE_IP => {
                    nat_src.push(&n.data)
                }
                Payload::Notify(n) if n.ty == NotifyType::NAT_DETECTION_DESTINATION_IP => {
                    nat_dst.push(&n.data)
                }
                _ => {}
            }
        }
        let (Some(sa_p), Some(ke), Some(nonce)) = (sa_p, ke, nonce) else {
            return Err(Refusal::Syntax);
        };
        let mut chosen = proposal::select(
            &self.ike_proposals,
            &sa_p.proposals,
            ProtocolId::IKE,
            DhPolicy::Required,
        )
        .ok_or(Refusal::NoProposalChosen)?;
        if IkeSuite::of(&chosen).is_none() {
            return Err(Refusal::NoProposalChosen);
        }
        // Take the peer's key exchange as it is when its group is acceptable
        // with the same algorithms: saves the INVALID_KE_PAYLOAD round trip.
        if chosen.dh != Some(ke.group) {
            let mut alt = chosen.clone();
            alt.dh = Some(ke.group);
            let offered = sa_p.proposals.iter().any(|p| {
                p.num == chosen.num
                    && p.transforms.iter().any(|t| {
                        t.ty == crate::wire::registry::TransformType::DH && t.id == ke.group.0
                    })
            });
            if offered && alt.allowed_by(&self.ike_proposals) && group_of(ke.group).is_some() {
                chosen = alt;
            } else {
                return Err(Refusal::InvalidKe(
                    chosen.dh.expect("IKE proposals have a group"),
                ));
            }
        }
        let suite = IkeSuite::of(&chosen).ok_or(Refusal::NoProposalChosen)?;
        let group = chosen.dh.expect("IKE proposals have a group");
        let dh = DhState::generate(group, &mut *self.rng).ok_or(Refusal::NoProposalChosen)?;
        let shared = dh.agree(&ke.data).map_err(|_| Refusal::Syntax)?;

        let spi_i = msg.header.spi_i;
        let spi_r = self.fresh_ike_spi();
        let mut nonce_r = vec![0u8; NONCE_LEN];
        self.rng.fill(&mut nonce_r);
        let keys = IkeKeys::derive(suite, &shared, &nonce.0, &nonce_r, spi_i, spi_r);
        let sk = SkCrypto::new(&keys).ok_or(Refusal::NoProposalChosen)?;

        // §2.23: the hashes in the request cover SPIi and a zero SPIr.
        let nat_remote = !nat_src.is_empty()
            && !nat_src
                .iter()
                .any(|d| d[..] == nat_detection_hash(spi_i, 0, remote));
        let nat_local = !nat_dst.is_empty()
            && !nat_dst
                .iter()
                .any(|d| d[..] == nat_detection_hash(spi_i, 0, local));
        let peer_natd = !nat_src.is_empty() || !nat_dst.is_empty();
        let fragmentation = self.config.fragmentation
            && msg.payloads.iter().any(|p| {
                matches!(p, Payload::Notify(n) if n.ty == NotifyType::IKEV2_FRAGMENTATION_SUPPORTED)
            });

        let handle = self.new_handle();
        let mut sa = IkeSa {
            spi_i,
            spi_r,
            proposal: Some(chosen.clone()),
            keys: Some(keys),
            sk: Some(sk),
            nonce_i: nonce.0.clone(),
            nonce_r: nonce_r.clone(),
            init_request: data.to_vec(),
            nat_local,
            nat_remote,
            next_peer_request_id: 1,
            deadline: Some(now + self.config.half_open_timeout),
            fragmentation,
            ..IkeSa::blank(handle, false, local, remote, Phase::ResponderAwaitAuth, now)
        };
        let mut payloads = vec![
            Payload::Sa(SaPayload {
                proposals: vec![chosen.to_wire(vec![])],
            }),
            Payload::Ke(Ke {
                group,
                data: dh.public().to_vec(),
            }),
            Payload::Nonce(Nonce(nonce_r)),
        ];
        if fragmentation {
            payloads.push(Payload::Notify(notify(
                NotifyType::IKEV2_FRAGMENTATION_SUPPORTED,
                vec![],
            )));
        }
        if peer_natd {
            payloads.push(Payload::Notify(notify(
                NotifyType::NAT_DETECTION_SOURCE_IP,
                nat_detection_hash(spi_i, spi_r, local).to_vec(),
            )));
            payloads.push(Payload::Notify(notify(
                NotifyType::NAT_DETECTION_DESTINATION_IP,
                nat_detection_hash(spi_i, spi_r, remote).to_vec(),
            )));
        }
        payloads.extend(auth::init_response_payloads(
            &self.config.tunnels,
            &msg.payloads,
        ));
        let out = Message {
            header: sa.header(ExchangeType::IKE_SA_INIT, 0, true),
            payloads,
            encrypted: None,
        }
        .emit();
        sa.init_response = out.clone();
        sa.last_response = Some((0, vec![out.clone()]));
        self.send(&sa, out);
        self.by_spi.insert(spi_r, handle);
        self.half_open.insert(spi_i, remote, handle);
        sa.half_open_key = Some((spi_i, remote));
        tracing::debug!(%remote, spi_r = format_args!("{spi_r:016x}"), proposal = %chosen, "IKE_SA_INIT answered");
        self.put_back(sa);
        Ok(())
    }

    // ------------------------------------------------------------ requests

    /// A request from the peer on an existing SA. Returns whether the SA lives on.
    fn handle_request(
        &mut self,
        now: Instant,
        sa: &mut IkeSa,
        local: SocketAddr,
        remote: SocketAddr,
        data: &[u8],
        msg: Message,
    ) -> bool {
        let id = msg.header.message_id;
        // Window size 1 (we never send SET_WINDOW_SIZE): the previous request
        // gets its cached answer again, anything else is out of window.
        if id.wrapping_add(1) == sa.next_peer_request_id {
            if let Some((rid, datagrams)) = &sa.last_response {
                // Replay only for the very request we answered, or one that
                // authenticates: a forged copy must not make us a reflector.
                // Of a fragmented request only fragment 1 triggers it, so one
                // retransmitted request gets one answer (RFC 7383 §2.6.1).
                let same = sa.last_request_hash == Some(prf::sha1(&[data]));
                if *rid == id && (same || self.authentic_first_part(sa, data, &msg)) {
                    self.counters.rx_retransmits += 1;
                    let datagrams = datagrams.clone();
                    // Answer where the retransmission came from (it may have
                    // floated to the NAT-T port meanwhile).
                    for payload in datagrams {
                        self.transmits.push_back(Transmit {
                            local,
                            remote,
                            natt: local.port() == self.config.natt_port,
                            payload,
                        });
                    }
                    return true;
                }
            }
            self.counters.rx_dropped += 1;
            return true;
        }
        // After an adoption the old owner may have answered requests we
        // never heard of: a request a little ahead is taken if it
        // authenticates ([`crate::takeover`]).
        let ahead = id.wrapping_sub(sa.next_peer_request_id);
        let resync = sa.msgid_resync && ahead < crate::takeover::MSGID_RESYNC_WINDOW;
        if id != sa.next_peer_request_id && !resync {
            self.counters.rx_dropped += 1;
            return true;
        }
        let Some(payloads) = self.open(sa, data, &msg) else {
            return true;
        };
        if sa.msgid_resync {
            sa.msgid_resync = false;
            if ahead != 0 {
                self.counters.msgid_resyncs += 1;
                tracing::debug!(
                    handle = sa.handle.0,
                    expected = sa.next_peer_request_id,
                    got = id,
                    "adopted IKE SA: message ID resynchronised"
                );
            }
        }
        self.follow_peer(sa, local, remote);
        sa.next_peer_request_id = id.wrapping_add(1);
        sa.last_request_hash = Some(prf::sha1(&[data]));
        sa.last_heard = now;
        if let Err(refusal) = check_critical(&payloads) {
            self.respond(
                sa,
                msg.header.exchange,
                id,
                vec![Payload::Notify(refusal.notify())],
            );
            return !matches!(sa.phase, Phase::ResponderAwaitAuth);
        }
        match (msg.header.exchange, &sa.phase) {
            (ExchangeType::IKE_AUTH, Phase::ResponderAwaitAuth) => {
                self.handle_auth_request(now, sa, id, payloads)
            }
            (ExchangeType::INFORMATIONAL, Phase::Established | Phase::Deleting) => {
                self.handle_informational(now, sa, id, payloads)
            }
            (ExchangeType::CREATE_CHILD_SA, Phase::Established) => {
                self.handle_create_child(now, sa, id, payloads)
            }
            _ => {
                self.counters.rx_dropped += 1;
                // Keep the window moving so the peer's retransmits are answered
                // consistently: an empty INFORMATIONAL-style answer would be
                // wrong for other exchanges, so we answer INVALID_SYNTAX.
                self.respond(
                    sa,
                    msg.header.exchange,
                    id,
                    vec![Payload::Notify(Refusal::Syntax.notify())],
                );
                true
            }
        }
    }

    fn handle_auth_request(
        &mut self,
        now: Instant,
        sa: &mut IkeSa,
        id: u32,
        payloads: Vec<Payload>,
    ) -> bool {
        match self.accept_auth(now, sa, &payloads) {
            Ok(response) => {
                self.respond(sa, ExchangeType::IKE_AUTH, id, response);
                true
            }
            Err(refusal) => {
                match refusal {
                    Refusal::AuthenticationFailed => self.counters.auth_failed += 1,
                    Refusal::NoProposalChosen => self.counters.no_proposal_chosen += 1,
                    _ => {}
                }
                tracing::debug!(remote = %sa.remote, tunnel = ?sa.tunnel.as_ref().map(|t| t.id.clone()), ?refusal, "IKE_AUTH refused");
                self.respond(
                    sa,
                    ExchangeType::IKE_AUTH,
                    id,
                    vec![Payload::Notify(refusal.notify())],
                );
                let reason = match refusal {
                    Refusal::AuthenticationFailed => SaEndReason::AuthenticationFailed,
                    Refusal::NoProposalChosen => SaEndReason::NoProposalChosen,
                    _ => SaEndReason::PeerError(refusal.notify().ty),
                };
                self.events.push_back(Event::IkeSaFailed {
                    info: sa.info(),
                    reason,
                });
                false
            }
        }
    }

    /// Authenticates the initiator and builds the IKE_AUTH response.
    fn accept_auth(
        &mut self,
        now: Instant,
        sa: &mut IkeSa,
        payloads: &[Payload],
    ) -> Result<Vec<Payload>, Refusal> {
        let mut idi = None;
        let mut idr = None;
        let mut auth = None;
        let mut sa_p = None;
        let mut tsi = None;
        let mut tsr = None;
        let mut initial_contact = false;
        for p in payloads {
            match p {
                Payload::IdI(x) if idi.is_none() => idi = Some(x),
                Payload::IdR(x) if idr.is_none() => idr = Some(x),
                Payload::Auth(x) if auth.is_none() => auth = Some(x),
                Payload::Sa(x) if sa_p.is_none() => sa_p = Some(x),
                Payload::TsI(x) if tsi.is_none() => tsi = Some(x),
                Payload::TsR(x) if tsr.is_none() => tsr = Some(x),
                Payload::Notify(n) if n.ty == NotifyType::INITIAL_CONTACT => initial_contact = true,
                _ => {}
            }
        }
        let idi = idi.ok_or(Refusal::Syntax)?;
        // No AUTH means EAP, which we do not offer.
        let auth = auth.ok_or(Refusal::AuthenticationFailed)?;
        // The peer's identity selects the tunnel, never its address.
        let tunnel = self
            .config
            .tunnels
            .iter()
            .find(|t| t.remote_id.matches(idi))
            .cloned()
            .ok_or(Refusal::AuthenticationFailed)?;
        sa.tunnel = Some(tunnel.clone());
        sa.remote_id = Some(Identity::from_wire(idi));
        if idr.is_some_and(|r| !tunnel.local_id.matches(r)) {
            return Err(Refusal::AuthenticationFailed);
        }
        let chosen = sa.proposal.as_ref().expect("set in IKE_SA_INIT");
        if !chosen.allowed_by(&tunnel.ike_proposals) {
            // The algorithms were picked for the whole node; this tunnel is
            // stricter. strongSwan, too, refuses the config then.
            return Err(Refusal::AuthenticationFailed);
        }
        let keys = sa.keys.as_ref().expect("set in IKE_SA_INIT");
        let at = self.config.wall_clock.at(now);
        if let Err(e) = auth::check_peer(
            &tunnel,
            keys,
            true,
            &sa.init_request,
            &sa.nonce_r,
            idi,
            auth,
            payloads,
            at,
        ) {
            tracing::debug!(tunnel = %tunnel.id, remote = %sa.remote, reason = %e, "initiator not authenticated");
            return Err(Refusal::AuthenticationFailed);
        }

        // Authenticated. We sign with a hash from the initiator's
        // SIGNATURE_HASH_ALGORITHMS (RFC 7427 §4), kept in its IKE_SA_INIT.
        let peer_hashes = Message::parse(&sa.init_request)
            .ok()
            .and_then(|m| auth::peer_hashes(&m.payloads));
        let our_id = tunnel.local_id.to_wire();
        let our_auth = auth::own_auth(
            &tunnel,
            keys,
            false,
            &sa.init_response,
            &sa.nonce_i,
            &our_id,
            peer_hashes,
        )
        .ok_or(Refusal::AuthenticationFailed)?;
        let mut response = vec![Payload::IdR(our_id)];
        response.extend(auth::certificate_payloads(&tunnel, false));
        response.push(Payload::Auth(our_auth));
        // As responder we cannot reauthenticate ourselves; RFC 4478 asks
        // the initiator to do it in time.
        if let Some(t) = tunnel.reauth_time {
            let secs = u32::try_from(t.as_secs()).unwrap_or(u32::MAX);
            response.push(Payload::Notify(notify(
                NotifyType::AUTH_LIFETIME,
                secs.to_be_bytes().to_vec(),
            )));
        }
        sa.phase = Phase::Established;
        sa.deadline = None;
        sa.established_at = Some(now);
        let (rekey_at, expire_at) = self.lifetimes(now, tunnel.ike_lifetime);
        (sa.rekey_at, sa.expire_at) = (Some(rekey_at), Some(expire_at));
        // The half-open key is the address IKE_SA_INIT came from (the peer
        // may have floated since).
        if let Some((spi, from)) = sa.half_open_key.take() {
            self.half_open.remove(spi, from);
        }
        self.counters.ike_sa_established += 1;
        tracing::debug!(tunnel = %tunnel.id, remote = %sa.remote, id = %Identity::from_wire(idi), proposal = ?sa.proposal.as_ref().map(|p| p.to_string()), "IKE SA established (responder)");
        if initial_contact {
            self.replace_on_initial_contact(sa);
        }
        sa.announced = true;
        self.events.push_back(Event::IkeSaEstablished(sa.info()));

        // The first child SA (§1.2). Its failure leaves the IKE SA up.
        match self.accept_first_child(sa, &tunnel, sa_p, tsi, tsr) {
            Ok((child, mut child_payloads)) => {
                response.append(&mut child_payloads);
                self.child_established(now, sa, child);
            }
            Err(refusal) => {
                tracing::debug!(tunnel = %tunnel.id, ?refusal, "first child SA refused");
                self.events.push_back(Event::ChildSaFailed {
                    tunnel: tunnel.id.clone(),
                    ike: sa.handle,
                    reason: refusal.notify().ty,
                });
                if refusal == Refusal::NoProposalChosen {
                    self.counters.no_proposal_chosen += 1;
                }
                response.push(Payload::Notify(refusal.notify()));
            }
        }
        Ok(response)
    }

    fn accept_first_child(
        &mut self,
        sa: &IkeSa,
        tunnel: &Arc<TunnelConfig>,
        sa_p: Option<&SaPayload>,
        tsi: Option<&Ts>,
        tsr: Option<&Ts>,
    ) -> Result<(ChildSa, Vec<Payload>), Refusal> {
        let (Some(sa_p), Some(tsi), Some(tsr)) = (sa_p, tsi, tsr) else {
            return Err(Refusal::Syntax);
        };
        let chosen = proposal::select(
            &tunnel.esp_proposals,
            &sa_p.proposals,
            ProtocolId::ESP,
            DhPolicy::Ignore,
        )
        .ok_or(Refusal::NoProposalChosen)?;
        let spi_out = spi_from(&chosen.peer_spi).ok_or(Refusal::Syntax)?;
        // TSi is the initiator's (the customer's) side, TSr ours (§2.9).
        let remote_ts = ts::narrow(&tsi.selectors, &tunnel.remote_ts);
        let local_ts = ts::narrow(&tsr.selectors, &tunnel.local_ts);
        if remote_ts.is_empty() || local_ts.is_empty() {
            return Err(Refusal::TsUnacceptable);
        }
        let keys = sa.keys.as_ref().expect("established");
        let ck = keys
            .child_keys(&chosen, None, &sa.nonce_i, &sa.nonce_r)
            .ok_or(Refusal::NoProposalChosen)?;
        let spi_in = self.fresh_esp_spi();
        let payloads = vec![
            Payload::Sa(SaPayload {
                proposals: vec![chosen.to_wire(spi_in.to_be_bytes().to_vec())],
            }),
            Payload::TsI(Ts {
                selectors: remote_ts.clone(),
            }),
            Payload::TsR(Ts {
                selectors: local_ts.clone(),
            }),
        ];
        let child = ChildSa {
            tunnel: tunnel.id.clone(),
            ike: sa.handle,
            spi_in,
            spi_out,
            proposal: chosen,
            keys_in: DirectionKeys {
                encr: ck.i_to_r.0,
                integ: ck.i_to_r.1,
            },
            keys_out: DirectionKeys {
                encr: ck.r_to_i.0,
                integ: ck.r_to_i.1,
            },
            local_ts,
            remote_ts,
            lifetime: tunnel.child_lifetime,
            local: sa.local,
            remote: sa.remote,
            encap: self.uses_encap(sa),
            rekey_of: None,
        };
        Ok((child, payloads))
    }

    fn handle_informational(
        &mut self,
        now: Instant,
        sa: &mut IkeSa,
        id: u32,
        payloads: Vec<Payload>,
    ) -> bool {
        let mut answer = Vec::new();
        // §2.21.2: the initiator could not authenticate us and tells us so
        // in an INFORMATIONAL: the SA is as good as deleted.
        let auth_failed = payloads
            .iter()
            .any(|p| matches!(p, Payload::Notify(n) if n.ty == NotifyType::AUTHENTICATION_FAILED));
        let mut delete_ike = auth_failed;
        let mut our_deleted = Vec::new();
        for p in &payloads {
            if let Payload::Delete(d) = p {
                match d.protocol {
                    ProtocolId::IKE => delete_ike = true,
                    ProtocolId::ESP => {
                        for s in &d.spis {
                            // The peer names its inbound SPI, our outbound one.
                            let Some(out) = spi_from(s) else { continue };
                            if let Some(c) = sa.children.iter().find(|c| c.spi_out == out) {
                                let spi_in = c.spi_in;
                                our_deleted.push(spi_in.to_be_bytes().to_vec());
                                self.remove_child(sa, spi_in);
                            }
                        }
                    }
                    _ => {}
                }
            }
        }
        if delete_ike {
            // §1.4.1: answer with an empty INFORMATIONAL, then forget.
            self.respond(sa, ExchangeType::INFORMATIONAL, id, vec![]);
            // Our own rekey of this SA collided with the peer's, and the
            // peer's won: its new SA inherits the child SAs (§2.8.2).
            if let Some((winner, _)) = sa.rekey_collision.take() {
                self.adopt_children(now, sa, winner);
            }
            self.child_deleted_events(sa);
            tracing::debug!(tunnel = ?sa.tunnel.as_ref().map(|t| t.id.clone()), remote = %sa.remote, "IKE SA deleted by peer");
            let reason = if auth_failed {
                SaEndReason::AuthenticationFailed
            } else {
                SaEndReason::DeletedByPeer
            };
            self.ike_sa_deleted(sa, reason);
            return false;
        }
        if !our_deleted.is_empty() {
            answer.push(Payload::Delete(Delete {
                protocol: ProtocolId::ESP,
                spi_size: 4,
                spis: our_deleted,
            }));
        }
        // Liveness checks (empty requests) and notifies get an answer too.
        self.respond(sa, ExchangeType::INFORMATIONAL, id, answer);
        true
    }

    // ----------------------------------------------------------- responses

    fn handle_response(
        &mut self,
        now: Instant,
        sa: &mut IkeSa,
        local: SocketAddr,
        remote: SocketAddr,
        data: &[u8],
        msg: Message,
    ) -> bool {
        let Some(out) = &sa.outstanding else {
            self.counters.rx_dropped += 1;
            return true;
        };
        if out.msg_id != msg.header.message_id {
            self.counters.rx_dropped += 1;
            return true;
        }
        match (&sa.phase, msg.header.exchange) {
            (Phase::InitiatorInitSent { .. }, ExchangeType::IKE_SA_INIT) => {
                self.handle_init_response(now, sa, data, msg)
            }
            (Phase::InitiatorAuthSent { .. }, ExchangeType::IKE_AUTH) => {
                self.handle_auth_response(now, sa, data, msg)
            }
            (Phase::Established | Phase::Deleting, _) => {
                let Some(payloads) = self.open(sa, data, &msg) else {
                    return true;
                };
                self.follow_peer(sa, local, remote);
                sa.last_heard = now;
                let Some(out) = sa.outstanding.take() else {
                    return true;
                };
                self.handle_task_response(now, sa, out.pending, payloads)
            }
            _ => {
                self.counters.rx_dropped += 1;
                true
            }
        }
    }

    fn handle_init_response(
        &mut self,
        now: Instant,
        sa: &mut IkeSa,
        data: &[u8],
        msg: Message,
    ) -> bool {
        let tunnel = sa.tunnel.clone().expect("initiator SAs know their tunnel");
        // Error answers first (§1.2, §2.6).
        for p in &msg.payloads {
            let Payload::Notify(n) = p else { continue };
            match n.ty {
                NotifyType::INVALID_KE_PAYLOAD => {
                    let Phase::InitiatorInitSent {
                        invalid_ke_retries, ..
                    } = &sa.phase
                    else {
                        unreachable!()
                    };
                    let retries = *invalid_ke_retries;
                    let wanted = n
                        .data
                        .get(..2)
                        .map(|b| DhId(u16::from_be_bytes([b[0], b[1]])));
                    let ours = wanted.filter(|g| {
                        tunnel.ike_proposals.iter().any(|p| p.dh.contains(g))
                            && group_of(*g).is_some()
                    });
                    match ours {
                        Some(g) if retries < MAX_INVALID_KE_RETRIES => {
                            tracing::debug!(tunnel = %tunnel.id, group = ?g, "peer asked for another key exchange group");
                            let dh = DhState::generate(g, &mut *self.rng).expect("checked");
                            sa.phase = Phase::InitiatorInitSent {
                                dh,
                                invalid_ke_retries: retries + 1,
                                cookie_retries: 0,
                            };
                            self.send_init_request(now, sa, None);
                            return true;
                        }
                        _ => return self.fail(sa, SaEndReason::PeerError(n.ty)),
                    }
                }
                NotifyType::COOKIE => {
                    // §2.6: repeat the request with the cookie in front — a
                    // few times at most, so a responder (or a forger) cannot
                    // keep us bouncing.
                    let Phase::InitiatorInitSent { cookie_retries, .. } = &mut sa.phase else {
                        unreachable!()
                    };
                    if *cookie_retries >= MAX_COOKIE_RETRIES
                        || n.data.is_empty()
                        || n.data.len() > 64
                    {
                        return self.fail(sa, SaEndReason::PeerError(n.ty));
                    }
                    *cookie_retries += 1;
                    let cookie = n.data.clone();
                    self.send_init_request(now, sa, Some(cookie));
                    return true;
                }
                NotifyType::NO_PROPOSAL_CHOSEN => {
                    self.counters.no_proposal_chosen += 1;
                    return self.fail(sa, SaEndReason::NoProposalChosen);
                }
                t if t.is_error() => return self.fail(sa, SaEndReason::PeerError(t)),
                _ => {}
            }
        }
        if check_critical(&msg.payloads).is_err() || msg.header.spi_r == 0 {
            self.counters.rx_malformed += 1;
            return self.fail(sa, SaEndReason::PeerError(NotifyType::INVALID_SYNTAX));
        }
        let mut sa_p = None;
        let mut ke = None;
        let mut nonce = None;
        let mut nat_src = Vec::new();
        let mut nat_dst = Vec::new();
        for p in &msg.payloads {
            match p {
                Payload::Sa(s) if sa_p.is_none() => sa_p = Some(s),
                Payload::Ke(k) if ke.is_none() => ke = Some(k),
                Payload::Nonce(n) if nonce.is_none() => nonce = Some(n),
                Payload::Notify(n) if n.ty == NotifyType::NAT_DETECTION_SOURCE_IP => {
                    nat_src.push(n.data.clone())
                }
                Payload::Notify(n) if n.ty == NotifyType::NAT_DETECTION_DESTINATION_IP => {
                    nat_dst.push(n.data.clone())
                }
                _ => {}
            }
        }
        let (Some(sa_p), Some(ke), Some(nonce)) = (sa_p, ke, nonce) else {
            self.counters.rx_malformed += 1;
            return self.fail(sa, SaEndReason::PeerError(NotifyType::INVALID_SYNTAX));
        };
        // The answer must be exactly one of our offers (§3.3.6).
        let chosen = match sa_p.proposals.as_slice() {
            [one] => proposal::select(
                &tunnel.ike_proposals,
                std::slice::from_ref(one),
                ProtocolId::IKE,
                DhPolicy::Required,
            ),
            _ => None,
        };
        let Phase::InitiatorInitSent { dh, .. } = &sa.phase else {
            unreachable!()
        };
        let Some(chosen) = chosen.filter(|c| c.dh == Some(ke.group) && dh.group() == ke.group)
        else {
            return self.fail(sa, SaEndReason::NoProposalChosen);
        };
        let Some(suite) = IkeSuite::of(&chosen) else {
            return self.fail(sa, SaEndReason::NoProposalChosen);
        };
        let Ok(shared) = dh.agree(&ke.data) else {
            self.counters.rx_malformed += 1;
            return self.fail(sa, SaEndReason::PeerError(NotifyType::INVALID_SYNTAX));
        };
        sa.spi_r = msg.header.spi_r;
        sa.nonce_r = nonce.0.clone();
        sa.init_response = data.to_vec();
        sa.fragmentation = msg.payloads.iter().any(|p| {
            matches!(p, Payload::Notify(n) if n.ty == NotifyType::IKEV2_FRAGMENTATION_SUPPORTED)
        });
        let keys = IkeKeys::derive(suite, &shared, &sa.nonce_i, &sa.nonce_r, sa.spi_i, sa.spi_r);
        let Some(sk) = SkCrypto::new(&keys) else {
            return self.fail(sa, SaEndReason::NoProposalChosen);
        };
        sa.keys = Some(keys);
        sa.sk = Some(sk);
        sa.proposal = Some(chosen);
        sa.outstanding = None;

        // §2.23: the responder's hashes cover both SPIs.
        sa.nat_remote = !nat_src.is_empty()
            && !nat_src
                .iter()
                .any(|d| d[..] == nat_detection_hash(sa.spi_i, sa.spi_r, sa.remote));
        sa.nat_local = (self.config.force_encap && !nat_dst.is_empty())
            || !nat_dst.is_empty()
                && !nat_dst
                    .iter()
                    .any(|d| d[..] == nat_detection_hash(sa.spi_i, sa.spi_r, sa.local));
        if (sa.nat_local || sa.nat_remote) && sa.local.port() != self.config.natt_port {
            // Float to the NAT-T ports for IKE_AUTH on (§2.23, RFC 3948).
            sa.local.set_port(self.config.natt_port);
            sa.remote.set_port(4500);
        }

        // IKE_AUTH request (§1.2).
        let our_id = tunnel.local_id.to_wire();
        let keys = sa.keys.as_ref().expect("just set");
        let Some(auth) = auth::own_auth(
            &tunnel,
            keys,
            true,
            &sa.init_request,
            &sa.nonce_r,
            &our_id,
            auth::peer_hashes(&msg.payloads),
        ) else {
            return self.fail(sa, SaEndReason::AuthenticationFailed);
        };
        let child_spi_in = self.fresh_esp_spi();
        let mut payloads = vec![Payload::IdI(our_id)];
        // §1.2: IDi, [CERT,] [CERTREQ,] [IDr,] AUTH.
        payloads.extend(auth::certificate_payloads(&tunnel, true));
        if !self.has_other_sa(&tunnel.id, sa.handle) {
            // §2.4: we hold no other IKE SA with this peer; it may drop its
            // stale ones.
            payloads.push(Payload::Notify(notify(NotifyType::INITIAL_CONTACT, vec![])));
        }
        payloads.push(Payload::IdR(tunnel.remote_id.to_wire()));
        payloads.push(Payload::Auth(auth));
        let proposals = tunnel
            .esp_proposals
            .iter()
            .enumerate()
            .map(|(i, p)| p.to_wire(i as u8 + 1, child_spi_in.to_be_bytes().to_vec(), false))
            .collect();
        payloads.push(Payload::Sa(SaPayload { proposals }));
        payloads.push(Payload::TsI(Ts {
            selectors: tunnel.local_ts.clone(),
        }));
        payloads.push(Payload::TsR(Ts {
            selectors: tunnel.remote_ts.clone(),
        }));
        sa.phase = Phase::InitiatorAuthSent { child_spi_in };
        self.send_request(
            now,
            sa,
            ExchangeType::IKE_AUTH,
            payloads,
            Pending::Handshake,
        );
        true
    }

    fn handle_auth_response(
        &mut self,
        now: Instant,
        sa: &mut IkeSa,
        data: &[u8],
        msg: Message,
    ) -> bool {
        let Some(payloads) = self.open(sa, data, &msg) else {
            return true;
        };
        sa.outstanding = None;
        let tunnel = sa.tunnel.clone().expect("initiator SAs know their tunnel");
        let Phase::InitiatorAuthSent { child_spi_in } = sa.phase else {
            unreachable!()
        };
        let mut idr = None;
        let mut auth = None;
        let mut sa_p = None;
        let mut tsi = None;
        let mut tsr = None;
        let mut child_error = None;
        let mut auth_lifetime = None;
        for p in &payloads {
            match p {
                Payload::IdR(x) if idr.is_none() => idr = Some(x),
                // RFC 4478: the responder wants us to reauthenticate within
                // this many seconds.
                Payload::Notify(n) if n.ty == NotifyType::AUTH_LIFETIME => {
                    auth_lifetime = n.data.get(..4).map(|b| {
                        Duration::from_secs(u64::from(u32::from_be_bytes([b[0], b[1], b[2], b[3]])))
                    });
                }
                Payload::Auth(x) if auth.is_none() => auth = Some(x),
                Payload::Sa(x) if sa_p.is_none() => sa_p = Some(x),
                Payload::TsI(x) if tsi.is_none() => tsi = Some(x),
                Payload::TsR(x) if tsr.is_none() => tsr = Some(x),
                Payload::Notify(n) if n.ty == NotifyType::AUTHENTICATION_FAILED => {
                    self.counters.auth_failed += 1;
                    return self.fail(sa, SaEndReason::AuthenticationFailed);
                }
                Payload::Notify(n) if n.ty.is_error() => child_error = Some(n.ty),
                _ => {}
            }
        }
        let (Some(idr), Some(auth)) = (idr, auth) else {
            return self.fail(
                sa,
                SaEndReason::PeerError(child_error.unwrap_or(NotifyType::INVALID_SYNTAX)),
            );
        };
        let keys = sa.keys.as_ref().expect("set after IKE_SA_INIT");
        let checked = if tunnel.remote_id.matches(idr) {
            let at = self.config.wall_clock.at(now);
            auth::check_peer(
                &tunnel,
                keys,
                false,
                &sa.init_response,
                &sa.nonce_i,
                idr,
                auth,
                &payloads,
                at,
            )
            .map_err(|e| e.to_string())
        } else {
            Err(format!("unexpected IDr {}", Identity::from_wire(idr)))
        };
        if let Err(reason) = checked {
            self.counters.auth_failed += 1;
            tracing::debug!(tunnel = %tunnel.id, %reason, "responder failed authentication");
            // The responder considers the SA up: tell it (§2.21.2), once,
            // so that neither side keeps anything.
            self.send_request(
                now,
                sa,
                ExchangeType::INFORMATIONAL,
                vec![Payload::Notify(Refusal::AuthenticationFailed.notify())],
                Pending::Dpd,
            );
            return self.fail(sa, SaEndReason::AuthenticationFailed);
        }
        sa.remote_id = Some(Identity::from_wire(idr));
        sa.phase = Phase::Established;
        sa.deadline = None;
        sa.established_at = Some(now);
        sa.next_peer_request_id = 0;
        let (rekey_at, expire_at) = self.lifetimes(now, tunnel.ike_lifetime);
        (sa.rekey_at, sa.expire_at) = (Some(rekey_at), Some(expire_at));
        self.counters.ike_sa_established += 1;
        tracing::debug!(tunnel = %tunnel.id, remote = %sa.remote, proposal = ?sa.proposal.as_ref().map(|p| p.to_string()), "IKE SA established (initiator)");
        sa.announced = true;
        self.events.push_back(Event::IkeSaEstablished(sa.info()));
        // Reauthentication (RFC 7296 §2.8.3): by our own policy or the
        // responder's AUTH_LIFETIME, whichever comes first.
        let reauth = [tunnel.reauth_time, auth_lifetime]
            .into_iter()
            .flatten()
            .min();
        sa.reauth_at = reauth.map(|d| now + self.reauth_delay(d));
        // A reauthentication of ours is complete: the SA it replaces goes,
        // with its child SAs (make-before-break: ours is up already).
        if let Some(old) = sa.replaces.take() {
            tracing::debug!(
                old = old.0,
                new = sa.handle.0,
                "reauthenticated; deleting the old IKE SA"
            );
            self.with_sa(now, old, |_, o| {
                o.superseded = true;
                queue(&mut o.tasks, Task::DeleteIke);
            });
        }

        let child = (|| {
            let (sa_p, tsi, tsr) = (sa_p?, tsi?, tsr?);
            let [answer] = sa_p.proposals.as_slice() else {
                return None;
            };
            let chosen = proposal::select(
                &tunnel.esp_proposals,
                std::slice::from_ref(answer),
                ProtocolId::ESP,
                DhPolicy::Ignore,
            )?;
            let spi_out = spi_from(&chosen.peer_spi)?;
            // The responder may only narrow what we proposed (§2.9).
            let within = |got: &[TrafficSelector], ours: &[TrafficSelector]| {
                !got.is_empty()
                    && got
                        .iter()
                        .all(|g| ours.iter().any(|o| ts::intersect(g, o).as_ref() == Some(g)))
            };
            if !within(&tsi.selectors, &tunnel.local_ts)
                || !within(&tsr.selectors, &tunnel.remote_ts)
            {
                return None;
            }
            let ck = sa
                .keys
                .as_ref()?
                .child_keys(&chosen, None, &sa.nonce_i, &sa.nonce_r)?;
            Some(ChildSa {
                tunnel: tunnel.id.clone(),
                ike: sa.handle,
                spi_in: child_spi_in,
                spi_out,
                proposal: chosen,
                keys_in: DirectionKeys {
                    encr: ck.r_to_i.0,
                    integ: ck.r_to_i.1,
                },
                keys_out: DirectionKeys {
                    encr: ck.i_to_r.0,
                    integ: ck.i_to_r.1,
                },
                local_ts: tsi.selectors.clone(),
                remote_ts: tsr.selectors.clone(),
                lifetime: tunnel.child_lifetime,
                local: sa.local,
                remote: sa.remote,
                encap: self.uses_encap(sa),
                rekey_of: None,
            })
        })();
        match child {
            Some(c) => self.child_established(now, sa, c),
            None => {
                let reason = child_error.unwrap_or(NotifyType::INVALID_SYNTAX);
                tracing::debug!(tunnel = %tunnel.id, ?reason, "first child SA not created");
                self.events.push_back(Event::ChildSaFailed {
                    tunnel: tunnel.id.clone(),
                    ike: sa.handle,
                    reason,
                });
            }
        }
        true
    }

    // ------------------------------------------------------------- helpers

    fn send_init_request(&mut self, now: Instant, sa: &mut IkeSa, cookie: Option<Vec<u8>>) {
        let tunnel = sa.tunnel.clone().expect("initiator SAs know their tunnel");
        let Phase::InitiatorInitSent { dh, .. } = &sa.phase else {
            unreachable!()
        };
        let mut payloads = Vec::new();
        if let Some(c) = cookie {
            payloads.push(Payload::Notify(notify(NotifyType::COOKIE, c)));
        }
        let proposals = tunnel
            .ike_proposals
            .iter()
            .enumerate()
            .map(|(i, p)| p.to_wire(i as u8 + 1, vec![], true))
            .collect();
        payloads.push(Payload::Sa(SaPayload { proposals }));
        payloads.push(Payload::Ke(Ke {
            group: dh.group(),
            data: dh.public().to_vec(),
        }));
        payloads.push(Payload::Nonce(Nonce(sa.nonce_i.clone())));
        if self.config.fragmentation {
            payloads.push(Payload::Notify(notify(
                NotifyType::IKEV2_FRAGMENTATION_SUPPORTED,
                vec![],
            )));
        }
        // With force_encap, the hash of an address that is not ours (the
        // unspecified one): the responder sees a NAT in front of us.
        let natd_src = if self.config.force_encap {
            SocketAddr::new(std::net::Ipv4Addr::UNSPECIFIED.into(), 0)
        } else {
            sa.local
        };
        payloads.push(Payload::Notify(notify(
            NotifyType::NAT_DETECTION_SOURCE_IP,
            nat_detection_hash(sa.spi_i, 0, natd_src).to_vec(),
        )));
        payloads.push(Payload::Notify(notify(
            NotifyType::NAT_DETECTION_DESTINATION_IP,
            nat_detection_hash(sa.spi_i, 0, sa.remote).to_vec(),
        )));
        payloads.extend(auth::init_request_payloads(&tunnel));
        let bytes = Message {
            header: sa.header(ExchangeType::IKE_SA_INIT, 0, false),
            payloads,
            encrypted: None,
        }
        .emit();
        sa.init_request = bytes.clone();
        sa.next_request_id = 1;
        let next_at = now + self.config.retransmit.timeout;
        sa.outstanding = Some(Outstanding::new(
            0,
            vec![bytes.clone()],
            next_at,
            Pending::Handshake,
        ));
        self.send(sa, bytes);
    }

    fn send_request(
        &mut self,
        now: Instant,
        sa: &mut IkeSa,
        exchange: ExchangeType,
        payloads: Vec<Payload>,
        pending: Pending,
    ) {
        let msg_id = sa.next_request_id;
        sa.next_request_id += 1;
        let header = sa.header(exchange, msg_id, false);
        let datagrams = self.protect(sa, &header, &payloads);
        let next_at = now + self.config.retransmit.timeout;
        sa.outstanding = Some(Outstanding::new(
            msg_id,
            datagrams.clone(),
            next_at,
            pending,
        ));
        self.send_all(sa, datagrams);
    }

    /// Sends an encrypted response and keeps it for retransmitted requests.
    fn respond(
        &mut self,
        sa: &mut IkeSa,
        exchange: ExchangeType,
        msg_id: u32,
        payloads: Vec<Payload>,
    ) {
        let header = sa.header(exchange, msg_id, true);
        let datagrams = self.protect(sa, &header, &payloads);
        sa.last_response = Some((msg_id, datagrams.clone()));
        self.send_all(sa, datagrams);
    }

    /// Encrypts an IKE message for `sa`'s peer: one datagram, or RFC 7383
    /// fragments when both sides support them and it would not fit the
    /// configured datagram size.
    fn protect(&mut self, sa: &mut IkeSa, header: &Header, payloads: &[Payload]) -> Vec<Vec<u8>> {
        let sk = sa.sk.as_mut().expect("keys before encrypted exchanges");
        if !sa.fragmentation {
            return vec![sk.seal(sa.initiator, header, payloads, &mut *self.rng)];
        }
        let natt = sa.local.port() == self.config.natt_port;
        let max = max_message_len(self.config.fragment_size, sa.remote, natt);
        let datagrams = sk.seal_datagrams(sa.initiator, header, payloads, max, &mut *self.rng);
        if datagrams.len() > 1 {
            self.counters.tx_fragmented += 1;
        }
        datagrams
    }

    /// Whether a retransmitted request is really the peer's: its SK payload,
    /// or its fragment number 1, authenticates.
    fn authentic_first_part(&mut self, sa: &IkeSa, data: &[u8], msg: &Message) -> bool {
        let Some(sk) = sa.sk.as_ref() else {
            return false;
        };
        match &msg.encrypted {
            Some(Encrypted::Sk { aad_len, body, .. })
            | Some(Encrypted::Skf {
                fragment_number: 1,
                aad_len,
                body,
                ..
            }) => match sk.open_raw(msg.header.flags.initiator(), data, *aad_len, body.clone()) {
                Ok(_) => true,
                Err(OpenError::Integrity) => {
                    self.counters.rx_decrypt_failed += 1;
                    false
                }
                Err(_) => {
                    self.counters.rx_malformed += 1;
                    false
                }
            },
            _ => false,
        }
    }

    /// Decrypts a protected message from the peer, counting failures. A
    /// fragment (RFC 7383) is authenticated and kept; the call that
    /// completes the message returns all of it, the others `None`.
    fn open(&mut self, sa: &mut IkeSa, data: &[u8], msg: &Message) -> Option<Vec<Payload>> {
        let Some(sk) = sa.sk.as_ref() else {
            self.counters.rx_dropped += 1;
            return None;
        };
        let from_initiator = msg.header.flags.initiator();
        let failed = |c: &mut Counters, e: OpenError| match e {
            OpenError::Integrity => c.rx_decrypt_failed += 1,
            OpenError::Malformed | OpenError::Payloads(_) => c.rx_malformed += 1,
        };
        match &msg.encrypted {
            Some(Encrypted::Sk {
                first_inner,
                aad_len,
                body,
            }) => match sk.open(from_initiator, data, *first_inner, *aad_len, body.clone()) {
                Ok(p) => Some(p),
                Err(e) => {
                    failed(&mut self.counters, e);
                    None
                }
            },
            Some(Encrypted::Skf {
                first_inner,
                fragment_number,
                total_fragments,
                aad_len,
                body,
            }) => {
                // §2.5: only a peer that announced support may fragment.
                if !sa.fragmentation {
                    self.counters.rx_dropped += 1;
                    return None;
                }
                let plain = match sk.open_raw(from_initiator, data, *aad_len, body.clone()) {
                    Ok(p) => p,
                    Err(e) => {
                        failed(&mut self.counters, e);
                        return None;
                    }
                };
                self.counters.rx_fragments += 1;
                match Reassembly::collect(
                    &mut sa.reassembly,
                    msg.header.message_id,
                    msg.header.flags.response(),
                    *fragment_number,
                    *total_fragments,
                    *first_inner,
                    plain,
                ) {
                    Collected::Complete(first, whole) => {
                        match crate::wire::parse_payloads(first, &whole) {
                            Ok(p) => Some(p),
                            Err(_) => {
                                self.counters.rx_malformed += 1;
                                None
                            }
                        }
                    }
                    Collected::Pending => None,
                    Collected::Dropped => {
                        self.counters.rx_dropped += 1;
                        None
                    }
                }
            }
            None => {
                self.counters.rx_dropped += 1;
                None
            }
        }
    }

    fn child_established(&mut self, now: Instant, sa: &mut IkeSa, child: ChildSa) {
        let (rekey_at, expire_at) = self.lifetimes(now, child.lifetime);
        sa.children
            .push(ChildState::new(&child, rekey_at, expire_at));
        self.counters.child_sa_established += 1;
        tracing::debug!(
            tunnel = %child.tunnel,
            spi_in = format_args!("{:08x}", child.spi_in),
            spi_out = format_args!("{:08x}", child.spi_out),
            proposal = %child.proposal,
            local_ts = ?child.local_ts.iter().map(ts::display).collect::<Vec<_>>(),
            remote_ts = ?child.remote_ts.iter().map(ts::display).collect::<Vec<_>>(),
            "child SA established"
        );
        self.events
            .push_back(Event::ChildSaEstablished(Box::new(child)));
    }

    fn child_deleted_events(&mut self, sa: &IkeSa) {
        let tunnel = sa
            .tunnel
            .as_ref()
            .map(|t| t.id.clone())
            .unwrap_or_else(|| "".into());
        for c in &sa.children {
            self.events.push_back(Event::ChildSaDeleted {
                tunnel: tunnel.clone(),
                ike: sa.handle,
                spi_in: c.spi_in,
                spi_out: c.spi_out,
            });
        }
    }

    /// INITIAL_CONTACT (§2.4): the peer has no other IKE SA with us, so
    /// every other IKE SA of the same tunnel and identity is stale.
    fn replace_on_initial_contact(&mut self, sa: &IkeSa) {
        let (Some(tunnel), Some(id)) = (&sa.tunnel, &sa.remote_id) else {
            return;
        };
        let stale: Vec<IkeSaHandle> = self
            .sas
            .values()
            .filter(|o| {
                o.handle != sa.handle
                    && o.tunnel.as_ref().is_some_and(|t| t.id == tunnel.id)
                    && o.remote_id.as_ref() == Some(id)
            })
            .map(|o| o.handle)
            .collect();
        for h in stale {
            if let Some(old) = self.sas.remove(&h) {
                tracing::debug!(tunnel = %tunnel.id, old = format_args!("{:016x}", old.our_spi()), "INITIAL_CONTACT: replacing the old IKE SA");
                self.child_deleted_events(&old);
                self.ike_sa_deleted(&old, SaEndReason::ReplacedByInitialContact);
                self.forget(old);
            }
        }
    }

    /// The end of an IKE SA that was up: told only if its start was.
    fn ike_sa_deleted(&mut self, sa: &IkeSa, reason: SaEndReason) {
        if sa.announced {
            self.events.push_back(Event::IkeSaDeleted {
                info: sa.info(),
                reason,
            });
        } else {
            tracing::debug!(handle = sa.handle.0, ?reason, "redundant IKE SA gone");
        }
    }

    fn has_other_sa(&self, tunnel: &str, me: IkeSaHandle) -> bool {
        self.sas.values().any(|o| {
            o.handle != me
                && matches!(o.phase, Phase::Established)
                && o.tunnel.as_ref().is_some_and(|t| &*t.id == tunnel)
        })
    }

    fn fail(&mut self, sa: &mut IkeSa, reason: SaEndReason) -> bool {
        tracing::debug!(tunnel = ?sa.tunnel.as_ref().map(|t| t.id.clone()), remote = %sa.remote, ?reason, "IKE SA failed");
        self.events.push_back(Event::IkeSaFailed {
            info: sa.info(),
            reason,
        });
        false
    }

    /// An authenticated message came from `remote` to `local` (§2.23): a
    /// peer behind a NAT is followed to its new mapping, and any peer that
    /// floats to the NAT-T port; otherwise the SA keeps its addresses (an
    /// address change without a NAT would need MOBIKE, RFC 4555). Child
    /// SAs move with the IKE SA ([`Event::IkeSaMoved`]).
    fn follow_peer(&mut self, sa: &mut IkeSa, local: SocketAddr, remote: SocketAddr) {
        if (sa.local, sa.remote) == (local, remote) {
            return;
        }
        let float = remote.ip() == sa.remote.ip() && local.port() == self.config.natt_port;
        if !(sa.nat_remote || sa.nat_local || float) {
            self.counters.rx_address_ignored += 1;
            return;
        }
        tracing::debug!(handle = sa.handle.0, from = %sa.remote, to = %remote, "peer moved");
        sa.local = local;
        sa.remote = remote;
        if matches!(sa.phase, Phase::Established | Phase::Deleting) && sa.announced {
            self.counters.peer_moved += 1;
            self.events.push_back(Event::IkeSaMoved {
                handle: sa.handle,
                local,
                remote,
            });
        }
    }

    fn uses_encap(&self, sa: &IkeSa) -> bool {
        sa.nat_local || sa.nat_remote || sa.local.port() == self.config.natt_port
    }

    fn transmit_for(&self, sa: &IkeSa, payload: Vec<u8>) -> Transmit {
        Transmit {
            local: sa.local,
            remote: sa.remote,
            natt: sa.local.port() == self.config.natt_port,
            payload,
        }
    }

    fn send(&mut self, sa: &IkeSa, payload: Vec<u8>) {
        let t = self.transmit_for(sa, payload);
        self.transmits.push_back(t);
    }

    fn send_all(&mut self, sa: &IkeSa, datagrams: Vec<Vec<u8>>) {
        for d in datagrams {
            self.send(sa, d);
        }
    }

    fn put_back(&mut self, mut sa: IkeSa) {
        self.note_update(&mut sa);
        let next = sa.next_timer(self.dpd_due(&sa), self.keepalive_due(&sa));
        if sa.scheduled != next {
            if let Some(old) = sa.scheduled {
                self.timers.remove(&(old, sa.handle));
            }
            if let Some(n) = next {
                self.timers.insert((n, sa.handle));
            }
            sa.scheduled = next;
        }
        self.sas.insert(sa.handle, sa);
    }

    /// Removes every trace of an SA (the SA itself is already out of `sas`).
    fn forget(&mut self, sa: IkeSa) {
        if let Some(t) = sa.scheduled {
            self.timers.remove(&(t, sa.handle));
        }
        if self.by_spi.get(&sa.our_spi()) == Some(&sa.handle) {
            self.by_spi.remove(&sa.our_spi());
        }
        // The SPI reserved for our IKE SA rekey in flight.
        if let Some(Outstanding {
            pending: Pending::RekeyIke { new_spi_i, .. },
            ..
        }) = &sa.outstanding
        {
            if self.by_spi.get(new_spi_i) == Some(&sa.handle) {
                self.by_spi.remove(new_spi_i);
            }
        }
        if let Some((spi, from)) = sa.half_open_key {
            self.half_open.remove(spi, from);
        }
    }

    /// Whether the IKE_SA_INIT request `msg` carries a valid cookie (as its
    /// first payload, §2.6); if not, answers statelessly with a fresh one.
    fn check_cookie(
        &mut self,
        now: Instant,
        local: SocketAddr,
        remote: SocketAddr,
        msg: &Message,
    ) -> bool {
        let cookies = self
            .cookies
            .get_or_insert_with(|| Cookies::new(now, &mut *self.rng));
        cookies.rotate(now, &mut *self.rng);
        let nonce = msg.payloads.iter().find_map(|p| match p {
            Payload::Nonce(n) => Some(&n.0),
            _ => None,
        });
        let Some(nonce) = nonce else {
            self.counters.rx_malformed += 1;
            return false;
        };
        let spi_i = msg.header.spi_i;
        if let Some(Payload::Notify(n)) = msg.payloads.first() {
            if n.ty == NotifyType::COOKIE {
                if cookies.verify(&n.data, nonce, remote.ip(), spi_i) {
                    return true;
                }
                self.counters.cookies_invalid += 1;
            }
        }
        let cookie = cookies.make(nonce, remote.ip(), spi_i);
        self.counters.cookies_sent += 1;
        let out = Message {
            header: Header {
                spi_i,
                spi_r: 0,
                next_payload: PayloadType::NONE,
                major_version: 2,
                minor_version: 0,
                exchange: ExchangeType::IKE_SA_INIT,
                flags: Flags::RESPONSE,
                message_id: 0,
                length: 0,
            },
            payloads: vec![Payload::Notify(notify(NotifyType::COOKIE, cookie))],
            encrypted: None,
        };
        self.transmits.push_back(Transmit {
            local,
            remote,
            natt: local.port() == self.config.natt_port,
            payload: out.emit(),
        });
        false
    }

    /// IKE SAs waiting for their IKE_AUTH now.
    pub fn half_open_count(&self) -> usize {
        self.half_open.len()
    }

    fn new_handle(&mut self) -> IkeSaHandle {
        let h = IkeSaHandle(self.next_handle);
        self.next_handle += 1;
        h
    }

    fn fresh_ike_spi(&mut self) -> u64 {
        loop {
            let s = spi::new_ike_spi(self.config.node_index, &mut *self.rng);
            if !self.by_spi.contains_key(&s) {
                return s;
            }
        }
    }

    fn fresh_esp_spi(&mut self) -> u32 {
        loop {
            let s = spi::new_esp_spi(self.config.node_index, &mut *self.rng);
            let taken = self
                .sas
                .values()
                .any(|sa| sa.children.iter().any(|c| c.spi_in == s));
            if !taken {
                return s;
            }
        }
    }

    fn connect_timeout(&self) -> Duration {
        let r = self.config.retransmit;
        (0..=r.tries)
            .map(|n| retransmit_delay(r.timeout, r.base, n))
            .sum::<Duration>()
            + Duration::from_secs(1)
    }
}

/// RFC 7296 §2.1 leaves the schedule to us: timeout × base^n (strongSwan's).
fn retransmit_delay(timeout: Duration, base: f64, n: u32) -> Duration {
    timeout.mul_f64(base.powi(n as i32))
}

/// NAT_DETECTION_*_IP data (RFC 7296 §2.23):
///   SHA-1(SPIi | SPIr | IP | Port)
pub fn nat_detection_hash(spi_i: u64, spi_r: u64, addr: SocketAddr) -> [u8; 20] {
    let ip = match addr.ip() {
        std::net::IpAddr::V4(a) => a.octets().to_vec(),
        std::net::IpAddr::V6(a) => a.octets().to_vec(),
    };
    prf::sha1(&[
        &spi_i.to_be_bytes(),
        &spi_r.to_be_bytes(),
        &ip,
        &addr.port().to_be_bytes(),
    ])
}

fn spi_from(b: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(b.try_into().ok()?))
}

/// RFC 7296 §2.5: a payload we do not know with the critical bit set
/// rejects the whole message.
fn check_critical(payloads: &[Payload]) -> Result<(), Refusal> {
    for p in payloads {
        if let Payload::Unknown {
            ty, critical: true, ..
        } = p
        {
            return Err(Refusal::UnsupportedCritical(*ty));
        }
    }
    Ok(())
}
