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
use crate::event::{ChildSa, DirectionKeys, Event, IkeSaHandle, SaEndReason};
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
        /// The old SA's selectors: the answer may only narrow them, and
        /// the old SA may be gone (deleted by the peer) when it arrives.
        local_ts: Vec<TrafficSelector>,
        remote_ts: Vec<TrafficSelector>,
        /// The peer rekeyed the same SA meanwhile (§2.8.1): the child SA
        /// its exchange created, and that exchange's lower nonce.
        collision: Option<(u32, Vec<u8>)>,
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
/// A NAT keepalive's one octet (RFC 3948 §2.3).
pub const NAT_KEEPALIVE: u8 = 0xff;

/// After a rekey collision we won, how long the peer's redundant IKE SA
/// waits for the peer's DELETE before we delete it.
const REDUNDANT_GRACE: Duration = Duration::from_secs(5);
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
        if sa.reauth_at.is_some_and(|t| t <= now) {
            sa.reauth_at = None;
            self.reauthenticate(now, sa);
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
        if self.keepalive_due(sa).is_some_and(|t| t <= now) {
            // One 0xFF octet, without the non-ESP marker (RFC 3948 §2.3).
            sa.last_keepalive = Some(now);
            self.counters.tx_keepalives += 1;
            self.transmits.push_back(crate::Transmit {
                local: sa.local,
                remote: sa.remote,
                natt: false,
                payload: vec![NAT_KEEPALIVE],
            });
        }
        true
    }

    /// A reauthentication is due after `lifetime`, less up to 10 % jitter.
    pub(super) fn reauth_delay(&mut self, lifetime: Duration) -> Duration {
        let mut b = [0u8; 4];
        self.rng.fill(&mut b);
        let frac = u32::from_be_bytes(b) as f64 / u32::MAX as f64;
        lifetime - lifetime.mul_f64(0.1 * frac)
    }

    /// Reauthentication, make-before-break (RFC 7296 §2.8.3): a whole new
    /// IKE SA with IKE_SA_INIT and IKE_AUTH to the same peer; once it is up
    /// the old one is deleted. Only the original initiator does this (it
    /// knows where the peer listens); a failure leaves the old SA to its
    /// lifetime.
    fn reauthenticate(&mut self, now: Instant, sa: &mut IkeSa) {
        let (Some(tunnel), Some((local, remote))) = (sa.tunnel.clone(), sa.origin) else {
            return;
        };
        if !sa.initiator || sa.superseded {
            return;
        }
        match self.initiate(now, &tunnel.id, local, remote) {
            Ok(new) => {
                tracing::debug!(old = sa.handle.0, new = new.0, "reauthenticating");
                self.counters.reauthentications += 1;
                let old = sa.handle;
                if let Some(n) = self.sas.get_mut(&new) {
                    n.replaces = Some(old);
                }
            }
            Err(e) => tracing::debug!(error = %e, "cannot reauthenticate"),
        }
    }

    /// When the next NAT keepalive is due: only behind a NAT, on the NAT-T
    /// port, established (RFC 3948 §2.3).
    pub(super) fn keepalive_due(&self, sa: &IkeSa) -> Option<Instant> {
        let interval = self.config.nat_keepalive?;
        if !sa.nat_local
            || sa.local.port() != self.config.natt_port
            || !matches!(sa.phase, Phase::Established)
        {
            return None;
        }
        Some(sa.last_keepalive.or(sa.established_at)? + interval)
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
        let (old_local_ts, old_remote_ts) = (local_ts.clone(), remote_ts.clone());
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
            local_ts: old_local_ts,
            remote_ts: old_remote_ts,
            collision: None,
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
                self.ike_sa_deleted(sa, reason);
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
                local_ts,
                remote_ts,
                collision,
            } => {
                let old = OldChild {
                    spi_in: old_spi_in,
                    local_ts,
                    remote_ts,
                    collision,
                };
                self.finish_rekey_child(now, sa, old, new_spi_in, nonce_i, dh, payloads);
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
        old: OldChild,
        new_spi_in: u32,
        nonce_i: Vec<u8>,
        dh: Option<DhState>,
        payloads: Vec<Payload>,
    ) {
        let old_spi_in = old.spi_in;
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
            if !narrowed_within(tsi?, &old.local_ts) || !narrowed_within(tsr?, &old.remote_ts) {
                return None;
            }
            let spi_out = super::spi_from(&chosen.peer_spi)?;
            let ck =
                sa.keys
                    .as_ref()?
                    .child_keys(&chosen, shared.as_ref(), &nonce_i, &nonce_r.0)?;
            let lowest = lowest_nonce(&nonce_i, &nonce_r.0);
            let child = ChildSa {
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
            };
            Some((child, lowest))
        })();
        match built {
            Some((child, ours_lowest)) => {
                self.child_established(now, sa, child);
                // §2.8.1: if the peer rekeyed the same SA meanwhile, "the SA
                // created with the lowest of the four nonces used in the two
                // exchanges SHOULD be closed by the endpoint that created
                // it"; the other side's creator then deletes the old SA.
                let we_lose = match &old.collision {
                    None => false,
                    Some((theirs, theirs_lowest)) => {
                        self.counters.rekey_collisions += 1;
                        let lose = nonce_lower(&ours_lowest, theirs_lowest);
                        tracing::debug!(
                            old = format_args!("{old_spi_in:08x}"),
                            ours = format_args!("{new_spi_in:08x}"),
                            theirs = format_args!("{theirs:08x}"),
                            we_lose = lose,
                            "child SA rekey collision"
                        );
                        let redundant = if lose { new_spi_in } else { *theirs };
                        if let Some(c) = sa.children.iter_mut().find(|c| c.spi_in == redundant) {
                            c.rekey_at = None;
                            if lose {
                                c.deleting = true;
                                queue(&mut sa.tasks, Task::DeleteChild(redundant));
                            } else {
                                // The peer closes it.
                                c.replaced = true;
                            }
                        }
                        lose
                    }
                };
                // Make-before-break: the old SA goes only now (if the peer
                // has not deleted it already), by us unless the peer's
                // exchange won.
                if let Some(o) = sa.children.iter_mut().find(|c| c.spi_in == old_spi_in) {
                    o.rekey_at = None;
                    if we_lose {
                        o.replaced = true;
                    } else {
                        o.deleting = true;
                        queue(&mut sa.tasks, Task::DeleteChild(old_spi_in));
                    }
                }
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
            // If the peer's own rekey of this SA crossed ours, its new SA
            // is the one left (§2.8.2).
            if let Some((winner, _)) = sa.rekey_collision.take() {
                sa.retry_at = None;
                self.adopt_children(now, sa, winner);
            }
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
        let ours_lowest = lowest_nonce(&nonce_i, &nonce_r);
        // We started the rekey: we are the new SA's original initiator.
        let Some(ours) = self.install_rekeyed_ike(
            now, sa, true, new_spi_i, spi_r, chosen, keys, nonce_i, nonce_r,
        ) else {
            return;
        };
        match sa.rekey_collision.take() {
            None => {
                self.adopt_children(now, sa, ours);
                queue(&mut sa.tasks, Task::DeleteIke);
            }
            Some((theirs, theirs_lowest)) => {
                // §2.8.2: two new IKE SAs; "the one with the lowest nonce
                // SHOULD be deleted by the node that created it"; the other
                // inherits the child SAs, and its creator deletes the old SA.
                self.counters.rekey_collisions += 1;
                let we_lose = nonce_lower(&ours_lowest, &theirs_lowest);
                tracing::debug!(handle = sa.handle.0, we_lose, "IKE SA rekey collision");
                let (winner, loser) = if we_lose {
                    (theirs, ours)
                } else {
                    (ours, theirs)
                };
                self.adopt_children(now, sa, winner);
                if we_lose {
                    // The peer deletes the old SA; we delete our redundant one.
                    self.with_sa(now, loser, |_, l| {
                        l.superseded = true;
                        queue(&mut l.tasks, Task::DeleteIke);
                    });
                } else {
                    queue(&mut sa.tasks, Task::DeleteIke);
                    // The peer deletes its redundant SA; if it does not (it may
                    // never have completed it), we do, soon.
                    self.with_sa(now, loser, |_, l| {
                        l.superseded = true;
                        l.rekey_at = None;
                        l.superseded_at = Some(now + REDUNDANT_GRACE);
                    });
                }
            }
        }
    }

    /// Runs `f` on the SA `handle` (taken out of the table meanwhile), then
    /// starts its due tasks and reschedules it.
    pub(super) fn with_sa(
        &mut self,
        now: Instant,
        handle: IkeSaHandle,
        f: impl FnOnce(&mut Self, &mut IkeSa),
    ) {
        if let Some(mut other) = self.sas.remove(&handle) {
            f(self, &mut other);
            self.run_tasks(now, &mut other);
            self.put_back(other);
        }
    }

    /// Moves the child SAs of `old` (and the tasks and notes about them) to
    /// the IKE SA `new` that replaces it (§2.18), and marks `old`
    /// superseded: only its DELETE is left to happen.
    pub(super) fn adopt_children(&mut self, now: Instant, old: &mut IkeSa, new: IkeSaHandle) {
        let Some(mut n) = self.sas.remove(&new) else {
            return;
        };
        n.children.append(&mut old.children);
        let (theirs, ours): (VecDeque<Task>, VecDeque<Task>) = std::mem::take(&mut old.tasks)
            .into_iter()
            .partition(|t| matches!(t, Task::RekeyChild(..) | Task::DeleteChild(_)));
        n.tasks.extend(theirs);
        old.tasks = ours;
        old.superseded = true;
        old.superseded_at = Some(now + SUPERSEDED_GRACE);
        old.rekey_at = None;
        old.retry_at = None;
        tracing::debug!(old = old.handle.0, new = n.handle.0, "IKE SA rekeyed");
        n.announced = true;
        self.events.push_back(Event::IkeSaRekeyed {
            old: old.handle,
            new: n.info(),
        });
        self.run_tasks(now, &mut n);
        self.put_back(n);
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
                // §2.25.1: a child SA we are closing (also because our own
                // rekey of it completed) is not rekeyed; the peer learns of
                // its replacement from our DELETE.
                if old.deleting {
                    return Err(Refusal::TemporaryFailure);
                }
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
        let nonce_r_copy = nonce_r.clone();
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
        if let Some(old_spi) = rekey_of {
            // Our own rekey of the same SA in flight: a collision (§2.8.1),
            // answered as usual and resolved once our answer is in.
            let ours = sa.outstanding.as_mut().and_then(|o| match &mut o.pending {
                Pending::RekeyChild {
                    old_spi_in,
                    collision,
                    ..
                } if *old_spi_in == old_spi => Some(collision),
                _ => None,
            });
            match ours {
                Some(collision) => {
                    *collision = Some((spi_in, lowest_nonce(&nonce_i.0, &nonce_r_copy)));
                }
                None => {
                    if let Some(old) = sa.children.iter_mut().find(|c| c.spi_in == old_spi) {
                        // The peer rekeys it and will delete it.
                        old.rekey_at = None;
                        old.replaced = true;
                    }
                }
            }
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
        // §2.25.2: an IKE SA we are closing (or have rekeyed already) is
        // not rekeyed, nor one with a child SA exchange of ours in flight;
        // the peer retries later. Our own IKE SA rekey in flight is a
        // collision, answered as usual and resolved by nonces (§2.8.2).
        let colliding = match sa.outstanding.as_ref().map(|o| &o.pending) {
            Some(Pending::RekeyIke { .. }) => true,
            Some(Pending::RekeyChild { .. } | Pending::DeleteChild(_) | Pending::DeleteIke) => {
                return Err(Refusal::TemporaryFailure)
            }
            Some(Pending::Dpd | Pending::Handshake) | None => false,
        };
        if sa.superseded || sa.rekey_collision.is_some() || matches!(sa.phase, Phase::Deleting) {
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
        let lowest = lowest_nonce(&nonce_i.0, &nonce_r);
        // The peer started the rekey: it is the new SA's original initiator.
        let new = self
            .install_rekeyed_ike(
                now,
                sa,
                false,
                spi_i,
                spi_r,
                chosen,
                keys,
                nonce_i.0.clone(),
                nonce_r,
            )
            .ok_or(Refusal::NoProposalChosen)?;
        if colliding {
            // Which new SA survives is known once our own rekey is answered.
            sa.rekey_collision = Some((new, lowest));
        } else {
            self.adopt_children(now, sa, new);
        }
        Ok(response)
    }

    /// Creates an IKE SA that may replace `old` (§2.18): same peer, path and
    /// tunnel, new keys, no child SAs yet (see [`Endpoint::adopt_children`]).
    #[allow(clippy::too_many_arguments)]
    fn install_rekeyed_ike(
        &mut self,
        now: Instant,
        old: &IkeSa,
        initiator: bool,
        spi_i: u64,
        spi_r: u64,
        chosen: Selected,
        keys: crate::keys::IkeKeys,
        nonce_i: Vec<u8>,
        nonce_r: Vec<u8>,
    ) -> Option<IkeSaHandle> {
        let sk = SkCrypto::new(&keys)?;
        let tunnel = old.tunnel.clone();
        let (rekey_at, expire_at) = match &tunnel {
            Some(t) => {
                let (r, e) = self.lifetimes(now, t.ike_lifetime);
                (Some(r), Some(e))
            }
            None => (None, None),
        };
        let handle = self.new_handle();
        let new = IkeSa {
            spi_i,
            spi_r,
            tunnel,
            remote_id: old.remote_id.clone(),
            proposal: Some(chosen),
            keys: Some(keys),
            sk: Some(sk),
            nonce_i,
            nonce_r,
            nat_local: old.nat_local,
            nat_remote: old.nat_remote,
            established_at: Some(now),
            rekey_at,
            expire_at,
            origin: old.origin,
            ..IkeSa::blank(
                handle,
                initiator,
                old.local,
                old.remote,
                Phase::Established,
                now,
            )
        };
        self.by_spi.insert(new.our_spi(), handle);
        self.put_back(new);
        Some(handle)
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

/// The child SA a rekey of ours replaces, as it was when the rekey began.
pub(super) struct OldChild {
    spi_in: u32,
    local_ts: Vec<TrafficSelector>,
    remote_ts: Vec<TrafficSelector>,
    /// See [`Pending::RekeyChild`].
    collision: Option<(u32, Vec<u8>)>,
}

/// The lower of an exchange's two nonces.
fn lowest_nonce(a: &[u8], b: &[u8]) -> Vec<u8> {
    if nonce_lower(a, b) { a } else { b }.to_vec()
}

/// Nonce order for collisions (§2.8.1): octet by octet, as unsigned
/// numbers; where one is a prefix of the other, the shorter is lower (as
/// strongSwan compares them).
pub(super) fn nonce_lower(a: &[u8], b: &[u8]) -> bool {
    a < b
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
    /// Neither being deleted nor replaced.
    pub(super) fn live(&self) -> bool {
        !self.deleting && !self.replaced
    }

    pub(super) fn new(child: &ChildSa, rekey_at: Instant, expire_at: Instant) -> ChildState {
        ChildState {
            spi_in: child.spi_in,
            spi_out: child.spi_out,
            local_ts: child.local_ts.clone(),
            remote_ts: child.remote_ts.clone(),
            rekey_at: Some(rekey_at),
            expire_at,
            deleting: false,
            replaced: false,
        }
    }
}

impl Outstanding {
    pub(super) fn new(
        msg_id: u32,
        datagrams: Vec<Vec<u8>>,
        next_at: Instant,
        pending: Pending,
    ) -> Outstanding {
        Outstanding {
            msg_id,
            datagrams,
            tries: 0,
            next_at,
            pending,
        }
    }
}
