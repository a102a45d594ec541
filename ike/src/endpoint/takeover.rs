//! Export and adoption of an established IKE SA ([`crate::takeover`] has the
//! types and the reasoning).

use super::lifecycle::{queue, Pending, Task};
use super::{ChildState, Endpoint, IkeSa, Outstanding, Phase};
use crate::event::{Event, IkeSaHandle};
use crate::keys::{IkeKeys, IkeSuite};
use crate::sk::SkCrypto;
use crate::takeover::{
    adopted_iv, AdoptError, CachedResponse, ChildRef, IkeSaKeys, IkeSaState, OutstandingRequest,
    RequestKind,
};
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};

/// What an `IkeSaUpdated` covered: when any of it changes, the exported
/// state is stale. Message IDs move with every exchange (both directions),
/// addresses with a NAT rebinding, the children with creates and deletes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Fingerprint {
    next_request_id: u32,
    next_peer_request_id: u32,
    local: SocketAddr,
    remote: SocketAddr,
    children: usize,
    live_children: usize,
}

impl IkeSa {
    /// Whether another node could take this SA over: established, announced,
    /// not replaced by a rekey, with everything negotiated.
    fn exportable(&self) -> bool {
        matches!(self.phase, Phase::Established)
            && self.announced
            && !self.superseded
            && self.tunnel.is_some()
            && self.remote_id.is_some()
            && self.proposal.is_some()
            && self.keys.is_some()
            && self.sk.is_some()
    }

    fn fingerprint(&self) -> Option<Fingerprint> {
        self.exportable().then(|| Fingerprint {
            next_request_id: self.next_request_id,
            next_peer_request_id: self.next_peer_request_id,
            local: self.local,
            remote: self.remote,
            children: self.children.len(),
            live_children: self.children.iter().filter(|c| c.live()).count(),
        })
    }
}

/// Instant ⇄ wall clock, anchored at one `now` (the core reads no clock:
/// the endpoint's [`crate::WallClock`] names the wall time of `now`).
#[derive(Clone, Copy)]
struct Anchor {
    now: Instant,
    wall: SystemTime,
}

impl Anchor {
    fn wall(self, t: Instant) -> SystemTime {
        if t >= self.now {
            self.wall + (t - self.now)
        } else {
            self.wall - (self.now - t)
        }
    }

    /// A past time becomes `now` at the latest (it is due).
    fn instant(self, t: SystemTime) -> Instant {
        match t.duration_since(self.wall) {
            // A century at most: a garbage time must not overflow Instant.
            Ok(ahead) => self.now + ahead.min(Duration::from_secs(100 * 365 * 86_400)),
            Err(e) => self.now.checked_sub(e.duration()).unwrap_or(self.now),
        }
    }

    /// For deadlines: a past one is due now, not earlier.
    fn deadline(self, t: SystemTime) -> Instant {
        self.instant(t).max(self.now)
    }
}

impl Endpoint {
    /// Emits [`Event::IkeSaUpdated`] when what another node would need to
    /// take `sa` over changed since the last one (called by `put_back`,
    /// after the events of the same input).
    pub(super) fn note_update(&mut self, sa: &mut IkeSa) {
        let fp = sa.fingerprint();
        if fp.is_some() && fp != sa.published {
            self.events.push_back(Event::IkeSaUpdated(sa.handle));
        }
        sa.published = fp;
    }

    /// The IKE SA with these SPIs, if this endpoint holds it.
    pub fn ike_sa_by_spis(&self, spi_i: u64, spi_r: u64) -> Option<IkeSaHandle> {
        [spi_r, spi_i]
            .iter()
            .filter_map(|spi| self.by_spi.get(spi))
            .copied()
            .find(|h| {
                self.sas
                    .get(h)
                    .is_some_and(|sa| sa.spi_i == spi_i && sa.spi_r == spi_r)
            })
    }

    /// Another node took the IKE SA `handle` over (its replicated record
    /// names another owner): forget it here without a word to the peer —
    /// no DELETE, no event, no timer left — so two nodes never both run its
    /// message IDs, DPD or rekeys. Its child SAs are the dataplane's
    /// business (they stay: the fleet still uses them). Returns whether the
    /// SA was here.
    pub fn release_ike_sa(&mut self, handle: IkeSaHandle) -> bool {
        match self.sas.remove(&handle) {
            Some(sa) => {
                self.forget(sa);
                true
            }
            None => false,
        }
    }

    /// A snapshot of the established IKE SA `handle` that another node can
    /// [`Endpoint::adopt_ike_sa`]: keys, message IDs, children (see
    /// [`crate::takeover`]). `now` anchors its lifetimes to the wall clock.
    /// `None` for an unknown handle or an SA that is not established (or
    /// already replaced by a rekey).
    pub fn export_ike_sa(&self, now: Instant, handle: IkeSaHandle) -> Option<IkeSaState> {
        let sa = self.sas.get(&handle)?;
        if !sa.exportable() {
            return None;
        }
        let at = Anchor {
            now,
            wall: self.config.wall_clock.at(now),
        };
        let keys = sa.keys.as_ref()?;
        let outstanding = sa.outstanding.as_ref().map(|o| OutstandingRequest {
            msg_id: o.msg_id,
            datagrams: o.datagrams.clone(),
            kind: match o.pending {
                Pending::Dpd => RequestKind::Dpd,
                Pending::DeleteChild(spi) => RequestKind::DeleteChild(spi),
                _ => RequestKind::Other,
            },
        });
        let last_response = match (&sa.last_response, sa.last_request_hash) {
            (Some((msg_id, datagrams)), Some(request_hash)) => Some(CachedResponse {
                msg_id: *msg_id,
                request_hash,
                datagrams: datagrams.clone(),
            }),
            _ => None,
        };
        Some(IkeSaState {
            spi_i: sa.spi_i,
            spi_r: sa.spi_r,
            initiator: sa.initiator,
            local: sa.local,
            remote: sa.remote,
            tunnel: sa.tunnel.as_ref()?.id.clone(),
            remote_id: sa.remote_id.clone()?,
            proposal: sa.proposal.clone()?,
            keys: IkeSaKeys {
                sk_d: keys.sk_d.clone(),
                sk_ai: keys.sk_ai.clone(),
                sk_ar: keys.sk_ar.clone(),
                sk_ei: keys.sk_ei.clone(),
                sk_er: keys.sk_er.clone(),
                sk_pi: keys.sk_pi.clone(),
                sk_pr: keys.sk_pr.clone(),
            },
            nat_local: sa.nat_local,
            nat_remote: sa.nat_remote,
            fragmentation: sa.fragmentation,
            next_request_id: sa.next_request_id,
            next_peer_request_id: sa.next_peer_request_id,
            next_iv: sa.sk.as_ref()?.next_iv(),
            last_response,
            outstanding,
            children: sa
                .children
                .iter()
                .map(|c| ChildRef {
                    spi_in: c.spi_in,
                    spi_out: c.spi_out,
                    local_ts: c.local_ts.clone(),
                    remote_ts: c.remote_ts.clone(),
                    rekey_at: c.rekey_at.map(|t| at.wall(t)),
                    expire_at: at.wall(c.expire_at),
                    deleting: c.deleting,
                    replaced: c.replaced,
                })
                .collect(),
            established_at: at.wall(sa.established_at.unwrap_or(now)),
            rekey_at: sa.rekey_at.map(|t| at.wall(t)),
            reauth_at: sa.reauth_at.map(|t| at.wall(t)),
            expire_at: sa.expire_at.map(|t| at.wall(t)),
        })
    }

    /// Installs `state`, exported by another node, as an established IKE SA
    /// of ours: from now on this endpoint answers (and sends) its exchanges.
    /// The tunnel must exist here with a matching peer identity and allow
    /// the algorithms. Its child SAs' keys are not part of it (sa-sync
    /// replicates them); the SA manages them by SPI. An
    /// [`Event::IkeSaUpdated`] follows (the new owner publishes).
    ///
    /// Message IDs: see [`crate::takeover`] — the peer's next request may be
    /// up to [`crate::takeover::MSGID_RESYNC_WINDOW`] − 1 ahead; our request
    /// in flight, if any, is retransmitted at once as the old owner sent it.
    pub fn adopt_ike_sa(
        &mut self,
        now: Instant,
        state: &IkeSaState,
    ) -> Result<IkeSaHandle, AdoptError> {
        let tunnel = self
            .config
            .tunnel(&state.tunnel)
            .cloned()
            .ok_or_else(|| AdoptError::UnknownTunnel(state.tunnel.to_string()))?;
        if !tunnel.remote_id.matches(&state.remote_id.to_wire()) {
            return Err(AdoptError::IdentityMismatch(state.tunnel.to_string()));
        }
        let proposal_err = || AdoptError::Proposal(state.tunnel.to_string());
        if !state.proposal.allowed_by(&tunnel.ike_proposals) {
            return Err(proposal_err());
        }
        let suite = IkeSuite::of(&state.proposal).ok_or_else(proposal_err)?;
        if state.spi_i == 0 || state.spi_r == 0 {
            return Err(AdoptError::ZeroSpi);
        }
        let our_spi = if state.initiator {
            state.spi_i
        } else {
            state.spi_r
        };
        if self.by_spi.contains_key(&our_spi) {
            return Err(AdoptError::SpiInUse(our_spi));
        }
        let k = &state.keys;
        let prf_len = suite.prf.output_len();
        let integ_len = suite.integ.map_or(0, |i| i.key_len());
        let encr_len = suite.cipher.keymat_len();
        for (key, len, name) in [
            (&k.sk_d, prf_len, "SK_d"),
            (&k.sk_ai, integ_len, "SK_ai"),
            (&k.sk_ar, integ_len, "SK_ar"),
            (&k.sk_ei, encr_len, "SK_ei"),
            (&k.sk_er, encr_len, "SK_er"),
            (&k.sk_pi, prf_len, "SK_pi"),
            (&k.sk_pr, prf_len, "SK_pr"),
        ] {
            if key.len() != len {
                return Err(AdoptError::KeyLength(name));
            }
        }
        if let Some(o) = &state.outstanding {
            if o.msg_id.wrapping_add(1) != state.next_request_id || o.datagrams.is_empty() {
                return Err(AdoptError::MessageIds(
                    "the request in flight is not the last one sent",
                ));
            }
        }
        if let Some(r) = &state.last_response {
            if r.msg_id.wrapping_add(1) != state.next_peer_request_id || r.datagrams.is_empty() {
                return Err(AdoptError::MessageIds(
                    "the cached response is not for the last request",
                ));
            }
        }
        let keys = IkeKeys {
            suite,
            sk_d: k.sk_d.clone(),
            sk_ai: k.sk_ai.clone(),
            sk_ar: k.sk_ar.clone(),
            sk_ei: k.sk_ei.clone(),
            sk_er: k.sk_er.clone(),
            sk_pi: k.sk_pi.clone(),
            sk_pr: k.sk_pr.clone(),
        };
        let mut sk = SkCrypto::new(&keys).ok_or_else(proposal_err)?;
        sk.set_next_iv(adopted_iv(state.next_iv, self.config.node_index));

        let at = Anchor {
            now,
            wall: self.config.wall_clock.at(now),
        };
        let handle = self.new_handle();
        let mut tasks = std::collections::VecDeque::new();
        let children: Vec<ChildState> = state
            .children
            .iter()
            .map(|c| {
                let in_flight = matches!(&state.outstanding,
                    Some(o) if o.kind == RequestKind::DeleteChild(c.spi_in));
                if c.deleting && !in_flight {
                    // Its DELETE was queued on the old owner, not sent.
                    queue(&mut tasks, Task::DeleteChild(c.spi_in));
                }
                ChildState {
                    spi_in: c.spi_in,
                    spi_out: c.spi_out,
                    local_ts: c.local_ts.clone(),
                    remote_ts: c.remote_ts.clone(),
                    rekey_at: c.rekey_at.map(|t| at.deadline(t)),
                    expire_at: at.deadline(c.expire_at),
                    deleting: c.deleting,
                    replaced: c.replaced,
                }
            })
            .collect();
        // The old owner's request, retransmitted now as it was sent (§2.1):
        // the peer answers from its cache or processes it, and either way
        // the next Message ID is agreed.
        let outstanding = state.outstanding.as_ref().map(|o| {
            let pending = match o.kind {
                RequestKind::Dpd | RequestKind::Other => Pending::Dpd,
                RequestKind::DeleteChild(spi) => Pending::DeleteChild(spi),
            };
            Outstanding::new(o.msg_id, o.datagrams.clone(), now, pending)
        });
        let mut sa = IkeSa {
            spi_i: state.spi_i,
            spi_r: state.spi_r,
            tunnel: Some(tunnel),
            remote_id: Some(state.remote_id.clone()),
            proposal: Some(state.proposal.clone()),
            keys: Some(keys),
            sk: Some(sk),
            nat_local: state.nat_local,
            nat_remote: state.nat_remote,
            fragmentation: state.fragmentation,
            next_request_id: state.next_request_id,
            outstanding,
            next_peer_request_id: state.next_peer_request_id,
            last_response: state
                .last_response
                .as_ref()
                .map(|r| (r.msg_id, r.datagrams.clone())),
            last_request_hash: state.last_response.as_ref().map(|r| r.request_hash),
            children,
            established_at: Some(at.instant(state.established_at)),
            tasks,
            rekey_at: state.rekey_at.map(|t| at.deadline(t)),
            reauth_at: state.reauth_at.map(|t| at.deadline(t)),
            expire_at: state.expire_at.map(|t| at.deadline(t)),
            // A reauthentication (we are the original initiator) starts
            // over from where the SA runs now.
            origin: state.initiator.then_some((state.local, state.remote)),
            announced: true,
            msgid_resync: true,
            ..IkeSa::blank(
                handle,
                state.initiator,
                state.local,
                state.remote,
                Phase::Established,
                now,
            )
        };
        self.by_spi.insert(our_spi, handle);
        self.counters.ike_sa_adopted += 1;
        tracing::debug!(
            handle = handle.0,
            tunnel = %state.tunnel,
            spi_i = format_args!("{:016x}", state.spi_i),
            spi_r = format_args!("{:016x}", state.spi_r),
            next_request_id = state.next_request_id,
            next_peer_request_id = state.next_peer_request_id,
            "IKE SA adopted"
        );
        self.run_tasks(now, &mut sa);
        self.put_back(sa);
        Ok(handle)
    }
}
