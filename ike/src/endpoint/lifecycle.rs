//! An established IKE SA's life (RFC 7296 §1.3, §1.4, §2.4, §2.8, §2.18):
//! CREATE_CHILD_SA in both roles (new child SAs, child SA rekey, IKE SA
//! rekey), lifetimes with jitter and hard expiry, liveness checks, and the
//! per-SA task queue that serialises our own requests (window size 1).
//!
//! Like strongSwan's task manager, everything we want from the peer is a
//! [`Task`]; one runs at a time, as one request whose answer is matched by
//! the [`Pending`] kept with it.

use super::{ChildState, Endpoint, IkeSa, Outstanding, Phase, Refusal, NONCE_LEN};
use crate::config::DpdAction;
use crate::event::{ChildSa, DirectionKeys, Event, SaEndReason};
use crate::keys::{group_of, DhState, IkeSuite};
use crate::proposal::{self, DhPolicy, Selected};
use crate::sk::SkCrypto;
use crate::ts;
use crate::wire::registry::{DhId, ExchangeType, NotifyType, ProtocolId};
use crate::wire::{Delete, Ke, Nonce, Notify, Payload, SaPayload, TrafficSelector, Ts};
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Something we will ask the peer for, when no other request of ours is in
/// flight.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Task {
    /// An empty INFORMATIONAL: is the peer alive?
    Dpd,
    /// Rekey the child SA with this inbound SPI, optionally with the group
    /// the peer asked for in INVALID_KE_PAYLOAD.
    RekeyChild(u32, Option<DhId>),
    RekeyIke(Option<DhId>),
    /// DELETE the child SA with this inbound SPI.
    DeleteChild(u32),
    DeleteIke,
}

/// What our outstanding request was, to interpret its answer.
pub(super) enum Pending {
    /// IKE_SA_INIT or IKE_AUTH: the SA's `Phase` carries the state.
    Handshake,
    Dpd,
    DeleteIke,
    DeleteChild(u32),
    RekeyChild {
        old_spi_in: u32,
        new_spi_in: u32,
        nonce_i: Vec<u8>,
        dh: Option<DhState>,
    },
    RekeyIke {
        new_spi_i: u64,
        nonce_i: Vec<u8>,
        dh: DhState,
    },
}

/// After an IKE SA rekey, how long the old SA waits for the peer's DELETE
/// before we delete it ourselves.
const SUPERSEDED_GRACE: Duration = Duration::from_secs(30);
/// How long to wait before retrying a rekey the peer answered with
/// TEMPORARY_FAILURE (§2.25: it is busy, e.g. with its own rekey).
const TEMPORARY_FAILURE_RETRY: (u64, u64) = (2, 10);

impl Endpoint {
    /// `(rekey at, expire at)` for something of `lifetime` created `now`:
    /// rekey at the lifetime minus up to 10 % random jitter (so two peers
    /// with equal lifetimes rarely rekey at once), hard expiry 10 % after it.
    pub(super) fn lifetimes(&mut self, now: Instant, lifetime: Duration) -> (Instant, Instant) {
        let mut b = [0u8; 4];
        self.rng.fill(&mut b);
        let frac = u32::from_be_bytes(b) as f64 / u32::MAX as f64;
        let jitter = lifetime.mul_f64(0.1 * frac);
        (now + lifetime - jitter, now + lifetime.mul_f64(1.1))
    }

    /// Timer work for an established SA: queues rekeys, expiries and
    /// liveness checks that are due. Returns false when the SA is gone.
    pub(super) fn tick(&mut self, now: Instant, sa: &mut IkeSa) -> bool {
        if !matches!(sa.phase, Phase::Established) {
            return true;
        }
        if sa.superseded_at.is_some_and(|t| t <= now) {
            sa.superseded_at = None;
            queue(&mut sa.tasks, Task::DeleteIke);
        }
        if sa.expire_at.is_some_and(|t| t <= now) {
            tracing::debug!(handle = sa.handle.0, "IKE SA hard lifetime reached");
            sa.expire_at = None;
            sa.rekey_at = None;
            queue(&mut sa.tasks, Task::DeleteIke);
        }
        if sa.rekey_at.is_some_and(|t| t <= now) {
            sa.rekey_at = None;
            queue(&mut sa.tasks, Task::RekeyIke(None));
        }
        for c in &mut sa.children {
            if c.deleting {
                continue;
            }
            if c.expire_at <= now {
                c.deleting = true;
                c.rekey_at = None;
                queue(&mut sa.tasks, Task::DeleteChild(c.spi_in));
            } else if c.rekey_at.is_some_and(|t| t <= now) {
                c.rekey_at = None;
                queue(&mut sa.tasks, Task::RekeyChild(c.spi_in, None));
            }
        }
        if let Some(due) = self.dpd_due(sa) {
            if due <= now {
                queue(&mut sa.tasks, Task::Dpd);
            }
        }
        true
    }

    /// When the next liveness check is due, if one can be.
    pub(super) fn dpd_due(&self, sa: &IkeSa) -> Option<Instant> {
        let delay = sa.tunnel.as_ref()?.dpd_delay?;
        if sa.outstanding.is_some()
            || !sa.tasks.is_empty()
            || !matches!(sa.phase, Phase::Established)
        {
            return None;
        }
        Some(sa.last_heard + delay)
    }

    /// Starts queued tasks until one sends a request.
    pub(super) fn run_tasks(&mut self, now: Instant, sa: &mut IkeSa) {
        while sa.outstanding.is_none() && matches!(sa.phase, Phase::Established) {
            let Some(task) = sa.tasks.pop_front() else {
                return;
            };
            self.start_task(now, sa, task);
        }
    }

    fn start_task(&mut self, now: Instant, sa: &mut IkeSa, task: Task) {
        match task {
            Task::Dpd => {
                self.send_request(now, sa, ExchangeType::INFORMATIONAL, vec![], Pending::Dpd)
            }
            Task::DeleteIke => {
                let delete = Payload::Delete(Delete {
                    protocol: ProtocolId::IKE,
                    spi_size: 0,
                    spis: vec![],
                });
                self.send_request(
                    now,
                    sa,
                    ExchangeType::INFORMATIONAL,
                    vec![delete],
                    Pending::DeleteIke,
                );
                sa.phase = Phase::Deleting;
            }
            Task::DeleteChild(spi_in) => {
                if !sa.children.iter().any(|c| c.spi_in == spi_in) {
                    return;
                }
                let delete = Payload::Delete(Delete {
                    protocol: ProtocolId::ESP,
                    spi_size: 4,
                    spis: vec![spi_in.to_be_bytes().to_vec()],
                });
                self.send_request(
                    now,
                    sa,
                    ExchangeType::INFORMATIONAL,
                    vec![delete],
                    Pending::DeleteChild(spi_in),
                );
            }
            Task::RekeyChild(old_spi_in, group) => {
                self.start_rekey_child(now, sa, old_spi_in, group)
            }
            Task::RekeyIke(group) => self.start_rekey_ike(now, sa, group),
        }
    }

    fn start_rekey_child(
        &mut self,
        now: Instant,
        sa: &mut IkeSa,
        old_spi_in: u32,
        group: Option<DhId>,
    ) {
        let Some(tunnel) = sa.tunnel.clone() else {
            return;
        };
        let Some(child) = sa
            .children
            .iter()
            .find(|c| c.spi_in == old_spi_in && !c.deleting)
        else {
            return;
        };
        let (local_ts, remote_ts) = (child.local_ts.clone(), child.remote_ts.clone());
        // PFS when the tunnel's ESP proposals name a group (§1.3.1).
        let group = group.or_else(|| {
            tunnel
                .esp_proposals
                .iter()
                .flat_map(|p| p.dh.iter())
                .copied()
                .find(|g| group_of(*g).is_some())
        });
        let dh = group.and_then(|g| DhState::generate(g, &mut *self.rng));
        let new_spi_in = self.fresh_esp_spi();
        let nonce_i = self.nonce();
        let mut payloads = vec![Payload::Notify(Notify {
            protocol: ProtocolId::ESP,
            spi: old_spi_in.to_be_bytes().to_vec(),
            ty: NotifyType::REKEY_SA,
            data: vec![],
        })];
        let proposals = tunnel
            .esp_proposals
            .iter()
            .enumerate()
            .map(|(i, p)| p.to_wire(i as u8 + 1, new_spi_in.to_be_bytes().to_vec(), true))
            .collect();
        payloads.push(Payload::Sa(SaPayload { proposals }));
        payloads.push(Payload::Nonce(Nonce(nonce_i.clone())));
        if let Some(dh) = &dh {
            payloads.push(Payload::Ke(Ke {
                group: dh.group(),
                data: dh.public().to_vec(),
            }));
        }
        // TSi is the side of the exchange's initiator: ours.
        payloads.push(Payload::TsI(Ts {
            selectors: local_ts,
        }));
        payloads.push(Payload::TsR(Ts {
            selectors: remote_ts,
        }));
        tracing::debug!(
            spi_in = format_args!("{old_spi_in:08x}"),
            "rekeying child SA"
        );
        let pending = Pending::RekeyChild {
            old_spi_in,
            new_spi_in,
            nonce_i,
            dh,
        };
        self.send_request(now, sa, ExchangeType::CREATE_CHILD_SA, payloads, pending);
    }

    fn start_rekey_ike(&mut self, now: Instant, sa: &mut IkeSa, group: Option<DhId>) {
        let Some(tunnel) = sa.tunnel.clone() else {
            return;
        };
        let group = group.or_else(|| sa.proposal.as_ref().and_then(|p| p.dh));
        let Some(dh) = group.and_then(|g| DhState::generate(g, &mut *self.rng)) else {
            return;
        };
        let new_spi_i = self.fresh_ike_spi();
        let nonce_i = self.nonce();
        let proposals = tunnel
            .ike_proposals
            .iter()
            .enumerate()
            .map(|(i, p)| p.to_wire(i as u8 + 1, new_spi_i.to_be_bytes().to_vec(), true))
            .collect();
        let payloads = vec![
            Payload::Sa(SaPayload { proposals }),
            Payload::Nonce(Nonce(nonce_i.clone())),
            Payload::Ke(Ke {
                group: dh.group(),
                data: dh.public().to_vec(),
            }),
        ];
        tracing::debug!(handle = sa.handle.0, "rekeying IKE SA");
        // Reserve the new SPI so no other SA takes it meanwhile.
        self.by_spi.insert(new_spi_i, sa.handle);
        self.send_request(
            now,
            sa,
            ExchangeType::CREATE_CHILD_SA,
            payloads,
            Pending::RekeyIke {
                new_spi_i,
                nonce_i,
                dh,
            },
        );
    }

    // ------------------------------------------------ answers to our tasks

    /// The answer to our request `pending`, already decrypted. Returns
    /// whether the SA lives on.
    pub(super) fn handle_task_response(
        &mut self,
        now: Instant,
        sa: &mut IkeSa,
        pending: Pending,
        payloads: Vec<Payload>,
    ) -> bool {
        match pending {
            Pending::Handshake | Pending::Dpd => true,
            Pending::DeleteIke => {
                self.child_deleted_events(sa);
                let reason = if sa.superseded {
                    SaEndReason::Rekeyed
                } else {
                    SaEndReason::DeletedLocally
                };
                tracing::debug!(handle = sa.handle.0, ?reason, "IKE SA deleted");
                self.events.push_back(Event::IkeSaDeleted {
                    info: sa.info(),
                    reason,
                });
                false
            }
            Pending::DeleteChild(spi_in) => {
                self.remove_child(sa, spi_in);
                true
            }
            Pending::RekeyChild {
                old_spi_in,
                new_spi_in,
                nonce_i,
                dh,
            } => {
                self.finish_rekey_child(now, sa, old_spi_in, new_spi_in, nonce_i, dh, payloads);
                true
            }
            Pending::RekeyIke {
                new_spi_i,
                nonce_i,
                dh,
            } => {
                self.finish_rekey_ike(now, sa, new_spi_i, nonce_i, dh, payloads);
                true
            }
        }
    }

    /// Reacts to an error notify in the answer to a rekey; returns true if
    /// there was one.
    fn rekey_refused(
        &mut self,
        now: Instant,
        sa: &mut IkeSa,
        payloads: &[Payload],
        retry: impl Fn(Option<DhId>) -> Task,
    ) -> bool {
        let Some(n) = payloads.iter().find_map(|p| match p {
            Payload::Notify(n) if n.ty.is_error() => Some(n),
            _ => None,
        }) else {
            return false;
        };
        match n.ty {
            NotifyType::INVALID_KE_PAYLOAD => {
                let g = n
                    .data
                    .get(..2)
                    .map(|b| DhId(u16::from_be_bytes([b[0], b[1]])));
                if let Some(g) = g.filter(|g| group_of(*g).is_some()) {
                    queue_front(&mut sa.tasks, retry(Some(g)));
                }
            }
            NotifyType::TEMPORARY_FAILURE => {
                // §2.25: the peer is busy (a collision); try again shortly.
                let (lo, hi) = TEMPORARY_FAILURE_RETRY;
                let mut b = [0u8; 1];
                self.rng.fill(&mut b);
                let delay = Duration::from_secs(lo + u64::from(b[0]) % (hi - lo + 1));
                sa.retry_at = Some((now + delay, retry(None)));
            }
            other => {
                tracing::debug!(handle = sa.handle.0, notify = ?other, "rekey refused; the SA will expire");
            }
        }
        true
    }

    #[allow(clippy::too_many_arguments)]
    fn finish_rekey_child(
        &mut self,
        now: Instant,
        sa: &mut IkeSa,
        old_spi_in: u32,
        new_spi_in: u32,
        nonce_i: Vec<u8>,
        dh: Option<DhState>,
        payloads: Vec<Payload>,
    ) {
        if self.rekey_refused(now, sa, &payloads, |g| Task::RekeyChild(old_spi_in, g)) {
            if payloads
                .iter()
                .any(|p| matches!(p, Payload::Notify(n) if n.ty == NotifyType::CHILD_SA_NOT_FOUND))
            {
                self.remove_child(sa, old_spi_in);
            }
            return;
        }
        let Some(tunnel) = sa.tunnel.clone() else {
            return;
        };
        let built = (|| {
            let (answer, nonce_r, ke, tsi, tsr) = child_payloads(&payloads)?;
            let chosen = proposal::select(
                &tunnel.esp_proposals,
                std::slice::from_ref(answer),
                ProtocolId::ESP,
                DhPolicy::Optional,
            )?;
            if chosen.dh != dh.as_ref().map(|d| d.group()) {
                return None;
            }
            let shared = match (&dh, ke) {
                (Some(d), Some(ke)) if ke.group == d.group() => Some(d.agree(&ke.data).ok()?),
                (None, None) => None,
                _ => return None,
            };
            let old = sa.children.iter().find(|c| c.spi_in == old_spi_in)?;
            if !narrowed_within(tsi?, &old.local_ts) || !narrowed_within(tsr?, &old.remote_ts) {
                return None;
            }
            let spi_out = super::spi_from(&chosen.peer_spi)?;
            let ck =
                sa.keys
                    .as_ref()?
                    .child_keys(&chosen, shared.as_ref(), &nonce_i, &nonce_r.0)?;
            Some(ChildSa {
                tunnel: tunnel.id.clone(),
                ike: sa.handle,
                spi_in: new_spi_in,
                spi_out,
                proposal: chosen,
                // We initiated this exchange: initiator→responder is outbound.
                keys_in: DirectionKeys {
                    encr: ck.r_to_i.0,
                    integ: ck.r_to_i.1,
                },
                keys_out: DirectionKeys {
                    encr: ck.i_to_r.0,
                    integ: ck.i_to_r.1,
                },
                local_ts: tsi?.selectors.clone(),
                remote_ts: tsr?.selectors.clone(),
                lifetime: tunnel.child_lifetime,
                local: sa.local,
                remote: sa.remote,
                encap: self.uses_encap(sa),
                rekey_of: Some(old_spi_in),
            })
        })();
        match built {
            Some(child) => {
                self.child_established(now, sa, child);
                // Make-before-break: the old SA goes only now.
                if let Some(old) = sa.children.iter_mut().find(|c| c.spi_in == old_spi_in) {
                    old.deleting = true;
                    old.rekey_at = None;
                }
                queue(&mut sa.tasks, Task::DeleteChild(old_spi_in));
            }
            None => {
                tracing::debug!(
                    spi_in = format_args!("{old_spi_in:08x}"),
                    "unusable answer to our child SA rekey"
                );
                self.counters.rx_dropped += 1;
            }
        }
    }

    fn finish_rekey_ike(
        &mut self,
        now: Instant,
        sa: &mut IkeSa,
        new_spi_i: u64,
        nonce_i: Vec<u8>,
        dh: DhState,
        payloads: Vec<Payload>,
    ) {
        if self.by_spi.get(&new_spi_i) == Some(&sa.handle) {
            self.by_spi.remove(&new_spi_i);
        }
        if self.rekey_refused(now, sa, &payloads, Task::RekeyIke) {
            return;
        }
        let Some(tunnel) = sa.tunnel.clone() else {
            return;
        };
        let mut answer = None;
        let mut nonce_r = None;
        let mut ke = None;
        for p in &payloads {
            match p {
                Payload::Sa(s) if answer.is_none() => answer = Some(s),
                Payload::Nonce(n) if nonce_r.is_none() => nonce_r = Some(n),
                Payload::Ke(k) if ke.is_none() => ke = Some(k),
                _ => {}
            }
        }
        let built = (|| {
            let [offer] = answer?.proposals.as_slice() else {
                return None;
            };
            let chosen = proposal::select(
                &tunnel.ike_proposals,
                std::slice::from_ref(offer),
                ProtocolId::IKE,
                DhPolicy::Required,
            )?;
            let ke = ke.filter(|k| Some(k.group) == chosen.dh && k.group == dh.group())?;
            let spi_r = u64::from_be_bytes(chosen.peer_spi.as_slice().try_into().ok()?);
            let shared = dh.agree(&ke.data).ok()?;
            let suite = IkeSuite::of(&chosen)?;
            let keys = sa.keys.as_ref()?.derive_rekeyed(
                suite,
                &shared,
                &nonce_i,
                &nonce_r?.0,
                new_spi_i,
                spi_r,
            );
            Some((chosen, keys, spi_r, nonce_r?.0.clone()))
        })();
        let Some((chosen, keys, spi_r, nonce_r)) = built else {
            tracing::debug!(handle = sa.handle.0, "unusable answer to our IKE SA rekey");
            self.counters.rx_dropped += 1;
            return;
        };
        // We started the rekey: we are the new SA's original initiator.
        self.install_rekeyed_ike(
            now, sa, true, new_spi_i, spi_r, chosen, keys, nonce_i, nonce_r,
        );
        queue(&mut sa.tasks, Task::DeleteIke);
    }

    // --------------------------------------------- CREATE_CHILD_SA requests

    /// A CREATE_CHILD_SA request from the peer (§1.3). Returns whether the SA
    /// lives on (always: a refused request leaves it as it was).
    pub(super) fn handle_create_child(
        &mut self,
        now: Instant,
        sa: &mut IkeSa,
        id: u32,
        payloads: Vec<Payload>,
    ) -> bool {
        let response = if payloads.iter().any(|p| matches!(p, Payload::Sa(s) if s.proposals.iter().any(|o| o.protocol == ProtocolId::IKE))) {
            self.accept_ike_rekey(now, sa, &payloads)
        } else {
            self.accept_child(now, sa, &payloads)
        };
        let response = response.unwrap_or_else(|refusal| {
            tracing::debug!(handle = sa.handle.0, ?refusal, "CREATE_CHILD_SA refused");
            if refusal == Refusal::NoProposalChosen {
                self.counters.no_proposal_chosen += 1;
            }
            vec![Payload::Notify(refusal.notify())]
        });
        self.respond(sa, ExchangeType::CREATE_CHILD_SA, id, response);
        true
    }

    fn accept_child(
        &mut self,
        now: Instant,
        sa: &mut IkeSa,
        payloads: &[Payload],
    ) -> Result<Vec<Payload>, Refusal> {
        let tunnel = sa.tunnel.clone().ok_or(Refusal::Syntax)?;
        let (offer, nonce_i, ke, tsi, tsr) =
            child_request_payloads(payloads).ok_or(Refusal::Syntax)?;
        let (tsi, tsr) = (tsi.ok_or(Refusal::Syntax)?, tsr.ok_or(Refusal::Syntax)?);
        // REKEY_SA names the SA by the SPI the peer receives on: our outbound.
        let rekey_of = match payloads.iter().find_map(|p| match p {
            Payload::Notify(n) if n.ty == NotifyType::REKEY_SA => Some(n),
            _ => None,
        }) {
            Some(n) => {
                let out = super::spi_from(&n.spi).ok_or(Refusal::Syntax)?;
                let old = sa
                    .children
                    .iter()
                    .find(|c| c.spi_out == out)
                    .ok_or(Refusal::ChildSaNotFound)?;
                Some(old.spi_in)
            }
            None => None,
        };
        let chosen = proposal::select(
            &tunnel.esp_proposals,
            &offer.proposals,
            ProtocolId::ESP,
            DhPolicy::Optional,
        )
        .ok_or(Refusal::NoProposalChosen)?;
        let spi_out = super::spi_from(&chosen.peer_spi).ok_or(Refusal::Syntax)?;
        let (dh, shared) = match chosen.dh {
            None => (None, None),
            Some(g) => {
                let ke = ke.filter(|k| k.group == g).ok_or(Refusal::InvalidKe(g))?;
                let dh = DhState::generate(g, &mut *self.rng).ok_or(Refusal::NoProposalChosen)?;
                let shared = dh.agree(&ke.data).map_err(|_| Refusal::Syntax)?;
                (Some(dh), Some(shared))
            }
        };
        let remote_ts = ts::narrow(&tsi.selectors, &tunnel.remote_ts);
        let local_ts = ts::narrow(&tsr.selectors, &tunnel.local_ts);
        if remote_ts.is_empty() || local_ts.is_empty() {
            return Err(Refusal::TsUnacceptable);
        }
        let nonce_r = self.nonce();
        let keys = sa.keys.as_ref().ok_or(Refusal::Syntax)?;
        let ck = keys
            .child_keys(&chosen, shared.as_ref(), &nonce_i.0, &nonce_r)
            .ok_or(Refusal::NoProposalChosen)?;
        let spi_in = self.fresh_esp_spi();
        let mut response = vec![
            Payload::Sa(SaPayload {
                proposals: vec![chosen.to_wire(spi_in.to_be_bytes().to_vec())],
            }),
            Payload::Nonce(Nonce(nonce_r)),
        ];
        if let Some(dh) = &dh {
            response.push(Payload::Ke(Ke {
                group: dh.group(),
                data: dh.public().to_vec(),
            }));
        }
        response.push(Payload::TsI(Ts {
            selectors: remote_ts.clone(),
        }));
        response.push(Payload::TsR(Ts {
            selectors: local_ts.clone(),
        }));
        let child = ChildSa {
            tunnel: tunnel.id.clone(),
            ike: sa.handle,
            spi_in,
            spi_out,
            proposal: chosen,
            // The peer initiated this exchange: initiator→responder is inbound.
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
            rekey_of,
        };
        if let Some(old) = rekey_of.and_then(|o| sa.children.iter_mut().find(|c| c.spi_in == o)) {
            // The peer rekeys it and will delete it; we stop rekeying it.
            old.rekey_at = None;
        }
        self.child_established(now, sa, child);
        Ok(response)
    }

    fn accept_ike_rekey(
        &mut self,
        now: Instant,
        sa: &mut IkeSa,
        payloads: &[Payload],
    ) -> Result<Vec<Payload>, Refusal> {
        let tunnel = sa.tunnel.clone().ok_or(Refusal::Syntax)?;
        if sa
            .outstanding
            .as_ref()
            .is_some_and(|o| matches!(o.pending, Pending::RekeyIke { .. }))
            || sa.superseded
        {
            // Our own IKE rekey is under way (or done): the peer retries
            // later and finds the SA rekeyed (§2.25).
            return Err(Refusal::TemporaryFailure);
        }
        let mut offer = None;
        let mut nonce_i = None;
        let mut ke = None;
        for p in payloads {
            match p {
                Payload::Sa(s) if offer.is_none() => offer = Some(s),
                Payload::Nonce(n) if nonce_i.is_none() => nonce_i = Some(n),
                Payload::Ke(k) if ke.is_none() => ke = Some(k),
                _ => {}
            }
        }
        let (offer, nonce_i, ke) = (
            offer.ok_or(Refusal::Syntax)?,
            nonce_i.ok_or(Refusal::Syntax)?,
            ke.ok_or(Refusal::Syntax)?,
        );
        let chosen = proposal::select(
            &tunnel.ike_proposals,
            &offer.proposals,
            ProtocolId::IKE,
            DhPolicy::Required,
        )
        .ok_or(Refusal::NoProposalChosen)?;
        let group = chosen.dh.ok_or(Refusal::NoProposalChosen)?;
        if ke.group != group {
            return Err(Refusal::InvalidKe(group));
        }
        let spi_i = u64::from_be_bytes(
            chosen
                .peer_spi
                .as_slice()
                .try_into()
                .map_err(|_| Refusal::Syntax)?,
        );
        let suite = IkeSuite::of(&chosen).ok_or(Refusal::NoProposalChosen)?;
        let dh = DhState::generate(group, &mut *self.rng).ok_or(Refusal::NoProposalChosen)?;
        let shared = dh.agree(&ke.data).map_err(|_| Refusal::Syntax)?;
        let spi_r = self.fresh_ike_spi();
        let nonce_r = self.nonce();
        let keys = sa
            .keys
            .as_ref()
            .ok_or(Refusal::Syntax)?
            .derive_rekeyed(suite, &shared, &nonce_i.0, &nonce_r, spi_i, spi_r);
        let response = vec![
            Payload::Sa(SaPayload {
                proposals: vec![chosen.to_wire(spi_r.to_be_bytes().to_vec())],
            }),
            Payload::Nonce(Nonce(nonce_r.clone())),
            Payload::Ke(Ke {
                group,
                data: dh.public().to_vec(),
            }),
        ];
        // The peer started the rekey: it is the new SA's original initiator.
        self.install_rekeyed_ike(
            now,
            sa,
            false,
            spi_i,
            spi_r,
            chosen,
            keys,
            nonce_i.0.clone(),
            nonce_r,
        );
        Ok(response)
    }

    /// Creates the IKE SA that replaces `old` (§2.18), moves the child SAs
    /// over and marks `old` superseded.
    #[allow(clippy::too_many_arguments)]
    fn install_rekeyed_ike(
        &mut self,
        now: Instant,
        old: &mut IkeSa,
        initiator: bool,
        spi_i: u64,
        spi_r: u64,
        chosen: Selected,
        keys: crate::keys::IkeKeys,
        nonce_i: Vec<u8>,
        nonce_r: Vec<u8>,
    ) {
        let Some(sk) = SkCrypto::new(&keys) else {
            return;
        };
        let tunnel = old.tunnel.clone();
        let (rekey_at, expire_at) = match &tunnel {
            Some(t) => {
                let (r, e) = self.lifetimes(now, t.ike_lifetime);
                (Some(r), Some(e))
            }
            None => (None, None),
        };
        let handle = self.new_handle();
        let mut new = IkeSa {
            handle,
            initiator,
            spi_i,
            spi_r,
            local: old.local,
            remote: old.remote,
            tunnel,
            remote_id: old.remote_id.clone(),
            phase: Phase::Established,
            proposal: Some(chosen),
            keys: Some(keys),
            sk: Some(sk),
            nonce_i,
            nonce_r,
            init_request: vec![],
            init_response: vec![],
            nat_local: old.nat_local,
            nat_remote: old.nat_remote,
            next_request_id: 0,
            outstanding: None,
            next_peer_request_id: 0,
            last_response: None,
            last_request_hash: None,
            children: std::mem::take(&mut old.children),
            established_at: Some(now),
            deadline: None,
            scheduled: None,
            tasks: VecDeque::new(),
            last_heard: now,
            rekey_at,
            expire_at,
            superseded: false,
            superseded_at: None,
            retry_at: None,
            origin: old.origin,
        };
        // Tasks for the children move with them.
        let (theirs, ours): (VecDeque<Task>, VecDeque<Task>) = std::mem::take(&mut old.tasks)
            .into_iter()
            .partition(|t| matches!(t, Task::RekeyChild(..) | Task::DeleteChild(_)));
        new.tasks = theirs;
        old.tasks = ours;
        old.superseded = true;
        old.superseded_at = Some(now + SUPERSEDED_GRACE);
        old.rekey_at = None;
        old.retry_at = None;
        let our_spi = new.our_spi();
        self.by_spi.insert(our_spi, handle);
        tracing::debug!(old = old.handle.0, new = handle.0, "IKE SA rekeyed");
        self.events.push_back(Event::IkeSaRekeyed {
            old: old.handle,
            new: new.info(),
        });
        self.put_back(new);
    }

    // ------------------------------------------------------------- helpers

    pub(super) fn nonce(&mut self) -> Vec<u8> {
        let mut n = vec![0u8; NONCE_LEN];
        self.rng.fill(&mut n);
        n
    }

    /// Drops a child SA (answered DELETE, or gone at the peer).
    pub(super) fn remove_child(&mut self, sa: &mut IkeSa, spi_in: u32) {
        if let Some(pos) = sa.children.iter().position(|c| c.spi_in == spi_in) {
            let c = sa.children.remove(pos);
            self.events.push_back(Event::ChildSaDeleted {
                tunnel: sa
                    .tunnel
                    .as_ref()
                    .map(|t| t.id.clone())
                    .unwrap_or_else(|| "".into()),
                ike: sa.handle,
                spi_in: c.spi_in,
                spi_out: c.spi_out,
            });
        }
    }

    /// The peer stopped answering: the SA is gone; maybe start anew.
    pub(super) fn peer_dead(&mut self, now: Instant, sa: &IkeSa) {
        let Some(tunnel) = sa.tunnel.clone() else {
            return;
        };
        if tunnel.dpd_action != DpdAction::Restart || sa.superseded {
            return;
        }
        let (local, remote) = match (sa.origin, tunnel.remote_address) {
            (Some(o), _) => o,
            (None, Some(ip)) => {
                let mut local = sa.local;
                local.set_port(self.config.ike_port);
                (local, std::net::SocketAddr::new(ip, 500))
            }
            (None, None) => return,
        };
        tracing::debug!(tunnel = %tunnel.id, "peer dead; restarting the tunnel");
        let _ = self.initiate(now, &tunnel.id, local, remote);
    }
}

pub(super) fn queue(tasks: &mut VecDeque<Task>, t: Task) {
    if !tasks.contains(&t) {
        tasks.push_back(t);
    }
}

fn queue_front(tasks: &mut VecDeque<Task>, t: Task) {
    if !tasks.contains(&t) {
        tasks.push_front(t);
    }
}

type ChildPayloads<'a> = (
    &'a crate::wire::Proposal,
    &'a Nonce,
    Option<&'a Ke>,
    Option<&'a Ts>,
    Option<&'a Ts>,
);

/// The payloads of a CREATE_CHILD_SA answer for a child SA: exactly one
/// proposal, a nonce, maybe a KE, the selectors.
fn child_payloads(payloads: &[Payload]) -> Option<ChildPayloads<'_>> {
    let (sa, nonce, ke, tsi, tsr) = child_request_payloads(payloads)?;
    let [one] = sa.proposals.as_slice() else {
        return None;
    };
    Some((one, nonce, ke, tsi, tsr))
}

type RequestPayloads<'a> = (
    &'a SaPayload,
    &'a Nonce,
    Option<&'a Ke>,
    Option<&'a Ts>,
    Option<&'a Ts>,
);

fn child_request_payloads(payloads: &[Payload]) -> Option<RequestPayloads<'_>> {
    let mut sa = None;
    let mut nonce = None;
    let mut ke = None;
    let mut tsi = None;
    let mut tsr = None;
    for p in payloads {
        match p {
            Payload::Sa(x) if sa.is_none() => sa = Some(x),
            Payload::Nonce(x) if nonce.is_none() => nonce = Some(x),
            Payload::Ke(x) if ke.is_none() => ke = Some(x),
            Payload::TsI(x) if tsi.is_none() => tsi = Some(x),
            Payload::TsR(x) if tsr.is_none() => tsr = Some(x),
            _ => {}
        }
    }
    Some((sa?, nonce?, ke, tsi, tsr))
}

/// The responder may only narrow what we proposed (§2.9).
pub(super) fn narrowed_within(got: &Ts, ours: &[TrafficSelector]) -> bool {
    !got.selectors.is_empty()
        && got
            .selectors
            .iter()
            .all(|g| ours.iter().any(|o| ts::intersect(g, o).as_ref() == Some(g)))
}

impl ChildState {
    pub(super) fn new(child: &ChildSa, rekey_at: Instant, expire_at: Instant) -> ChildState {
        ChildState {
            spi_in: child.spi_in,
            spi_out: child.spi_out,
            local_ts: child.local_ts.clone(),
            remote_ts: child.remote_ts.clone(),
            rekey_at: Some(rekey_at),
            expire_at,
            deleting: false,
        }
    }
}

impl Outstanding {
    pub(super) fn new(
        msg_id: u32,
        bytes: Vec<u8>,
        next_at: Instant,
        pending: Pending,
    ) -> Outstanding {
        Outstanding {
            msg_id,
            bytes,
            tries: 0,
            next_at,
            pending,
        }
    }
}
