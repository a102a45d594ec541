//! The node's side of SA replication (`[sync]`, docs/sa-sync.md).
//!
//! - Outbound: every event of our IKE endpoint that the SA database takes
//!   is mapped to a bus write ([`convert::publish_for`]) and queued to one
//!   writer task, which hands them to the bus in order. The IKE loop only
//!   pushes onto a channel: it never waits for the bus.
//! - Barrier (`[sync] barrier`): a child SA we just negotiated is written
//!   with a barrier; the loop holds that IKE SA's outgoing messages (the
//!   response that lets the peer use the SA, and anything after it) until
//!   [`BarrierDone`] arrives for it — reached, timed out or failed — and
//!   then sends them in order. Other IKE SAs are not held.
//! - Inbound: the bus actor turns every record another node applied into
//!   the `anyhub_ike::Event` the SA database takes
//!   ([`convert::dataplane_event`]) and installs it there at once, before
//!   the bus acknowledges the record; the loop is only told to recompute
//!   the dataplane's routes.
//! - Status: a task asks the bus for its state every
//!   [`STATUS_INTERVAL`]; `anyhubctl status` shows the latest.

use crate::config::{BarrierPolicy, SyncConfig};
use crate::seq::SeqTable;
use anyhub_dataplane::{Change, Sad};
use anyhub_ike::{Endpoint, Event, IkeSaHandle};
use anyhub_sa_sync::convert::{self, Publish};
use anyhub_sa_sync::quic::{now_ms, Bus, BusConfig, Identity};
use anyhub_sa_sync::{pb, BarrierOutcome, Config, Key, WaitFor};
use serde_json::json;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, Notify};

/// How often the status snapshot is refreshed.
pub const STATUS_INTERVAL: Duration = Duration::from_millis(250);
/// A peer silent this long is gone.
const IDLE_TIMEOUT: Duration = Duration::from_secs(3);

/// What the tasks update and the loop reads.
#[derive(Default)]
struct Shared {
    status: Option<anyhub_sa_sync::Status>,
    /// Writes the bus refused (a record it considers malformed or expired).
    publish_errors: u64,
    /// Records from other nodes that do not convert to an SA.
    records_refused: u64,
    /// Records from other nodes installed in / refused by the SA database.
    sad_applied: u64,
    install_refused: u64,
    /// Other nodes' IKE SA takeover records, by SPIs: what this node adopts
    /// when the peer's next message for one of them arrives here. Bounded by
    /// the table (one per IKE SA of the fleet); tombstones and expiry
    /// remove them.
    ike_states: std::collections::HashMap<(u64, u64), Box<pb::IkeSa>>,
}

/// One IKE SA's messages are held until this arrives (`ike` = its SPIs).
#[derive(Debug)]
pub struct BarrierDone {
    pub ike: (u64, u64),
    pub spi_in: u32,
    /// `None`: the bus refused the write or stopped.
    pub outcome: Option<BarrierOutcome>,
    pub acked: Vec<u16>,
    pub elapsed_ms: u64,
}

/// What the writer task hands to the bus, in the loop's order.
enum Write {
    Plain(Publish),
    /// A child SA write whose barrier the loop waits for.
    Barrier {
        publish: Publish,
        ike: (u64, u64),
        spi_in: u32,
        wait: WaitFor,
    },
}

/// A running sync: the bus and the loop's ends of its channels.
pub struct SyncBus {
    bus: Bus,
    index: u16,
    writes: mpsc::UnboundedSender<Write>,
    barriers: Option<mpsc::UnboundedReceiver<BarrierDone>>,
    /// (spi_i, spi_r, owner) of IKE SA records another node wrote.
    owners: Option<mpsc::UnboundedReceiver<(u64, u64, u32)>>,
    shared: Arc<Mutex<Shared>>,
    /// Outbound sequence reservations and floors (seq.rs).
    seq: Arc<Mutex<SeqTable>>,
    /// `None`: responses are not held.
    wait: Option<WaitFor>,
    policy: BarrierPolicy,
    /// Bus writes queued by the loop.
    pub queued: u64,
    /// Barriers by outcome, and the longest hold seen.
    pub barrier_reached: u64,
    pub barrier_timed_out: u64,
    pub barrier_failed: u64,
    pub barrier_max_ms: u64,
    /// IKE messages that waited for a barrier before they were sent.
    pub held_messages: u64,
    /// IKE SAs adopted from another node's record / records refused by
    /// the endpoint / our IKE SAs released to their new owner.
    pub ike_adopted: u64,
    pub ike_adopt_refused: u64,
    pub ike_released: u64,
}

/// Starts the bus (on the current tokio runtime) with `name`'s fleet
/// certificate. Errors name the field.
pub fn start(
    cfg: &SyncConfig,
    name: &str,
    index: u16,
    sadb: Arc<Sad>,
    routes_changed: Arc<Notify>,
) -> Result<SyncBus, String> {
    let identity =
        Identity::load(&cfg.fleet_dir, name).map_err(|e| format!("sync.fleet_dir: {e}"))?;
    // New per process start: peers tell a restart from a reconnect.
    let incarnation = now_ms() ^ (u64::from(std::process::id()) << 40);
    let shared = Arc::new(Mutex::new(Shared::default()));
    let on_event_shared = shared.clone();
    let seq = Arc::new(Mutex::new(SeqTable::default()));
    let cb_seq = seq.clone();
    let (owner_tx, owner_rx) = mpsc::unbounded_channel();
    // Installed here, in the bus's task, before the bus acknowledges the
    // record (quic.rs sends frames after events): another node's barrier
    // then means the SA is in our dataplane. Routes for outbound traffic
    // are recomputed by the loop, coalesced ([`Notify`]).
    let mut core = Config::new(index, incarnation);
    core.relay = cfg.relay;
    core.relays = cfg.relays.clone();
    let bus = Bus::start(
        BusConfig {
            core,
            name: name.to_owned(),
            listen: cfg.listen,
            peers: cfg.peers.clone(),
            identity,
            idle_timeout: IDLE_TIMEOUT,
        },
        move |ev| match convert::dataplane_event(ev) {
            Some(Ok(e)) => {
                log_synced(&e);
                let installed = match &e {
                    Event::ChildSaEstablished(c) => Some(c.spi_in),
                    _ => None,
                };
                let change = sadb.handle_event(Instant::now(), e);
                if let Some(spi_in) = installed {
                    lock_seq(&cb_seq).installed(&sadb, spi_in, Instant::now());
                }
                match change {
                    Change::Refused { spi_in, error } => {
                        lock(&on_event_shared).install_refused += 1;
                        tracing::warn!(spi_in = %format_args!("{spi_in:08x}"), %error, "synced child SA not installed");
                    }
                    Change::None => {}
                    _ => {
                        lock(&on_event_shared).sad_applied += 1;
                        routes_changed.notify_one();
                    }
                }
            }
            Some(Err(error)) => {
                lock(&on_event_shared).records_refused += 1;
                tracing::warn!(%error, "sync: a record does not convert to an SA; dropped");
            }
            None => match ev {
                anyhub_sa_sync::Event::Applied {
                    key: Key::Seq { spi_in, .. },
                    record,
                    ..
                } => {
                    if let Some(pb::record::Body::Seq(r)) = &record.body {
                        lock_seq(&cb_seq).floor(&sadb, *spi_in, r.reserved, Instant::now());
                    }
                }
                anyhub_sa_sync::Event::Applied {
                    key: Key::IkeSa { spi_i, spi_r },
                    record,
                    ..
                } => match &record.body {
                    Some(pb::record::Body::IkeSa(ike)) => {
                        let owner = ike.owner;
                        lock(&on_event_shared)
                            .ike_states
                            .insert((*spi_i, *spi_r), Box::new(ike.clone()));
                        if owner != u32::from(index) {
                            // If we hold it, another node took it over.
                            let _ = owner_tx.send((*spi_i, *spi_r, owner));
                        }
                    }
                    _ => {
                        lock(&on_event_shared).ike_states.remove(&(*spi_i, *spi_r));
                        // Deleted, or taken over and rekeyed, elsewhere (the
                        // feed may carry only the tombstone): if we still hold
                        // it, our copy is stale.
                        let origin = record.version.as_ref().map_or(0, |v| v.origin);
                        if origin != u32::from(index) {
                            let _ = owner_tx.send((*spi_i, *spi_r, origin));
                        }
                    }
                },
                anyhub_sa_sync::Event::Expired {
                    key: Key::IkeSa { spi_i, spi_r },
                    ..
                } => {
                    lock(&on_event_shared).ike_states.remove(&(*spi_i, *spi_r));
                }
                _ => {}
            },
        },
    )
    .map_err(|e| format!("sync.listen: {e}"))?;
    if cfg.bootstrap {
        bus.set_bootstrapped();
    }
    tracing::info!(listen = %bus.local_addr(), peers = cfg.peers.len(), bootstrap = cfg.bootstrap, "sync bus running");

    // One writer, so the bus sees the writes in the loop's order.
    let (writes, mut writes_rx) = mpsc::unbounded_channel::<Write>();
    let (barrier_tx, barrier_rx) = mpsc::unbounded_channel();
    let wait = match &cfg.barrier {
        BarrierPolicy::None => None,
        BarrierPolicy::All => Some(WaitFor::All),
        BarrierPolicy::Quorum => Some(WaitFor::Quorum),
        BarrierPolicy::Nodes(n) => Some(WaitFor::Set(n.clone())),
    };
    let timeout_ms = cfg.barrier_timeout.as_millis() as u64;
    let wbus = bus.clone();
    let wshared = shared.clone();
    tokio::spawn(async move {
        while let Some(w) = writes_rx.recv().await {
            let p = match w {
                Write::Plain(p) => p,
                Write::Barrier {
                    publish:
                        Publish::Write {
                            key,
                            body,
                            expires_ms,
                        },
                    ike,
                    spi_in,
                    wait,
                } => {
                    // Handed to the bus now (in order); awaited aside, so
                    // one slow barrier never delays the next write.
                    let started = wbus
                        .start_barrier(key, *body, expires_ms, wait, timeout_ms)
                        .map_err(drop);
                    let tx = barrier_tx.clone();
                    let bshared = wshared.clone();
                    tokio::spawn(async move {
                        let res = match started {
                            Ok(f) => f.await.map_err(|e| e.to_string()),
                            Err(()) => Err("the bus stopped".into()),
                        };
                        let done = match res {
                            Ok(b) => BarrierDone {
                                ike,
                                spi_in,
                                outcome: Some(b.outcome),
                                acked: b.acked,
                                elapsed_ms: b.elapsed_ms,
                            },
                            Err(error) => {
                                lock(&bshared).publish_errors += 1;
                                tracing::warn!(%error, "sync: barrier write refused");
                                BarrierDone {
                                    ike,
                                    spi_in,
                                    outcome: None,
                                    acked: Vec::new(),
                                    elapsed_ms: 0,
                                }
                            }
                        };
                        let _ = tx.send(done);
                    });
                    continue;
                }
                Write::Barrier { publish, .. } => publish,
            };
            let res = match p {
                Publish::Write {
                    key,
                    body,
                    expires_ms,
                } => wbus.publish(key, *body, expires_ms).await.map(drop),
                Publish::Delete(key) => wbus.delete(key).await.map(drop),
                Publish::DeleteChildrenOf { spi_i, spi_r } => {
                    wbus.delete_children_of(spi_i, spi_r).await.map(drop)
                }
                Publish::ReparentChildren { old, new } => {
                    wbus.reparent_children(old, new).await.map(drop)
                }
            };
            if let Err(error) = res {
                lock(&wshared).publish_errors += 1;
                tracing::warn!(%error, "sync: write refused");
            }
        }
    });
    let sbus = bus.clone();
    let sshared = shared.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(STATUS_INTERVAL);
        loop {
            tick.tick().await;
            match sbus.status().await {
                Ok(st) => lock(&sshared).status = Some(st),
                Err(_) => return,
            }
        }
    });
    Ok(SyncBus {
        bus,
        index,
        writes,
        barriers: Some(barrier_rx),
        owners: Some(owner_rx),
        shared,
        seq,
        wait,
        policy: cfg.barrier.clone(),
        queued: 0,
        barrier_reached: 0,
        barrier_timed_out: 0,
        barrier_failed: 0,
        barrier_max_ms: 0,
        held_messages: 0,
        ike_adopted: 0,
        ike_adopt_refused: 0,
        ike_released: 0,
    })
}

fn log_synced(event: &Event) {
    match event {
        Event::ChildSaEstablished(c) => tracing::info!(
            tunnel = %c.tunnel,
            spi_in = %format_args!("{:08x}", c.spi_in),
            spi_out = %format_args!("{:08x}", c.spi_out),
            "child SA from sync"
        ),
        Event::ChildSaDeleted { tunnel, spi_in, .. } => tracing::info!(
            tunnel = %tunnel,
            spi_in = %format_args!("{spi_in:08x}"),
            "child SA deleted by sync"
        ),
        _ => {}
    }
}

fn lock_seq(m: &Mutex<SeqTable>) -> std::sync::MutexGuard<'_, SeqTable> {
    // Plain bookkeeping: usable after a panicking holder.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn lock(m: &Mutex<Shared>) -> std::sync::MutexGuard<'_, Shared> {
    // A panicking holder leaves plain counters behind: still usable.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl SyncBus {
    /// The receiver of other nodes' IKE SA ownership (once; the loop owns it).
    pub fn take_owners(&mut self) -> Option<mpsc::UnboundedReceiver<(u64, u64, u32)>> {
        self.owners.take()
    }

    /// Another node's takeover record for this IKE SA, taken out of the
    /// map (adopt it once). `None` if there is none or it does not convert.
    pub fn take_ike_state(&mut self, spi_i: u64, spi_r: u64) -> Option<anyhub_ike::IkeSaState> {
        let mut shared = lock(&self.shared);
        let record = shared.ike_states.remove(&(spi_i, spi_r))?;
        match convert::ike_state_from_pb(&record) {
            Ok(s) => Some(s),
            Err(error) => {
                shared.records_refused += 1;
                tracing::warn!(%error, "sync: an IKE SA record does not convert; dropped");
                None
            }
        }
    }

    /// Whether another node's takeover record for these SPIs is here
    /// (cheap: one lookup per incoming IKE message).
    pub fn has_ike_state(&self, spi_i: u64, spi_r: u64) -> bool {
        lock(&self.shared).ike_states.contains_key(&(spi_i, spi_r))
    }

    /// Publishes our IKE SA's takeover state (on `Event::IkeSaUpdated`).
    pub fn publish_ike(&mut self, state: &anyhub_ike::IkeSaState) {
        /// An IKE SA without a hard lifetime: its record is refreshed on
        /// every exchange anyway.
        const FALLBACK_MS: u64 = 24 * 3600 * 1000;
        let expires_ms = convert::ike_state_expiry_ms(state, now_ms(), FALLBACK_MS);
        self.queued += 1;
        let _ = self.writes.send(Write::Plain(convert::publish_ike_state(
            state, self.index, expires_ms,
        )));
    }

    /// The receiver of barrier outcomes (once; the loop owns it).
    pub fn take_barriers(&mut self) -> Option<mpsc::UnboundedReceiver<BarrierDone>> {
        self.barriers.take()
    }

    /// Counts a barrier's outcome.
    pub fn note_barrier(&mut self, done: &BarrierDone) {
        match done.outcome {
            Some(BarrierOutcome::Reached) => self.barrier_reached += 1,
            Some(BarrierOutcome::TimedOut) => self.barrier_timed_out += 1,
            None => self.barrier_failed += 1,
        }
        self.barrier_max_ms = self.barrier_max_ms.max(done.elapsed_ms);
    }

    /// Queues the bus write for a local event (before the SA database
    /// takes it). Never waits. Returns the IKE SA (its SPIs) whose
    /// messages must wait for a barrier: a new child SA with a barrier
    /// configured.
    pub fn publish(&mut self, ev: &Event, endpoint: &Endpoint) -> Option<(u64, u64)> {
        // An IKE SA's delete event comes after it left the endpoint: its
        // SPIs are in the event.
        let spis = |h: IkeSaHandle| match ev {
            Event::IkeSaDeleted { info, .. } | Event::IkeSaFailed { info, .. }
                if info.handle == h =>
            {
                Some((info.spi_i, info.spi_r))
            }
            _ => endpoint
                .ike_sas()
                .into_iter()
                .find(|s| s.handle == h)
                .map(|s| (s.spi_i, s.spi_r)),
        };
        let p = convert::publish_for(ev, spis, self.index, now_ms())?;
        self.queued += 1;
        let reservation = match (ev, &p) {
            (Event::ChildSaEstablished(c), Publish::Write { expires_ms, .. }) => {
                Some((c.spi_in, *expires_ms))
            }
            _ => None,
        };
        let held = match (ev, &p, &self.wait) {
            (Event::ChildSaEstablished(c), Publish::Write { .. }, Some(w)) => {
                spis(c.ike).map(|ike| (ike, c.spi_in, self.barrier_set(w)))
            }
            _ => None,
        };
        // The writer stops only with the runtime.
        let _ = self.writes.send(match held.clone() {
            Some((ike, spi_in, wait)) => Write::Barrier {
                publish: p,
                ike,
                spi_in,
                wait,
            },
            None => Write::Plain(p),
        });
        if let Some((spi_in, expires_ms)) = reservation {
            // Our first reservation follows the SA in our feed: whoever
            // takes it over starts above anything we can send before the
            // next reservation (seq.rs).
            let reserved = lock_seq(&self.seq).reserve_new(spi_in);
            self.queue_reservation(spi_in, reserved, expires_ms);
        }
        held.map(|(ike, _, _)| ike)
    }

    /// `"all"` means every peer connected as of the last status poll: a
    /// node that is down receives no traffic, and holding every handshake
    /// for it would only slow the fleet down while it is gone (it catches
    /// up when it returns). Before the first poll: every configured peer.
    fn barrier_set(&self, w: &WaitFor) -> WaitFor {
        match (w, &lock(&self.shared).status) {
            (WaitFor::All, Some(st)) => WaitFor::Set(
                st.peers
                    .iter()
                    .filter(|p| p.connected)
                    .map(|p| p.peer)
                    .collect(),
            ),
            (w, _) => w.clone(),
        }
    }

    fn queue_reservation(&mut self, spi_in: u32, reserved: u64, expires_ms: u64) {
        self.queued += 1;
        let _ = self.writes.send(Write::Plain(Publish::Write {
            key: Key::Seq {
                spi_in,
                node: self.index,
            },
            body: Box::new(pb::record::Body::Seq(pb::SeqReservation { reserved })),
            expires_ms,
        }));
    }

    /// Every [`crate::seq::TICK`]: publishes the reservations our sending
    /// needs and applies deferred floors (seq.rs).
    pub fn seq_tick(&mut self, sadb: &Sad) {
        let now = Instant::now();
        let due = lock_seq(&self.seq).tick(sadb, now);
        for (spi_in, reserved, remaining) in due {
            let expires_ms = now_ms() + remaining.as_millis() as u64;
            self.queue_reservation(spi_in, reserved, expires_ms);
        }
    }

    /// The `sync` object of `anyhubctl status --json`.
    pub fn status_json(&self) -> serde_json::Value {
        let shared = lock(&self.shared);
        let seq = lock_seq(&self.seq);
        let mut counters = json!({
            "queued": self.queued,
            "sad_applied": shared.sad_applied,
            "install_refused": shared.install_refused,
            "barrier_reached": self.barrier_reached,
            "barrier_timed_out": self.barrier_timed_out,
            "barrier_failed": self.barrier_failed,
            "barrier_max_ms": self.barrier_max_ms,
            "held_messages": self.held_messages,
            "ike_adopted": self.ike_adopted,
            "ike_adopt_refused": self.ike_adopt_refused,
            "ike_released": self.ike_released,
            "seq_reservations": seq.reservations,
            "seq_jumps": seq.jumps,
            "seq_jumps_deferred": seq.deferred,
            "publish_errors": shared.publish_errors,
            "records_refused": shared.records_refused,
        });
        let Some(st) = &shared.status else {
            return json!({
                "node": self.index,
                "listen": self.bus.local_addr().to_string(),
                "running": false,
                "counters": counters,
            });
        };
        if let (Some(c), Ok(serde_json::Value::Object(core))) =
            (counters.as_object_mut(), serde_json::to_value(&st.counters))
        {
            c.extend(core);
        }
        let peers: Vec<_> = st
            .peers
            .iter()
            .map(|p| {
                json!({
                    "peer": p.peer,
                    "connected": p.connected,
                    "cursor": p.cursor,
                    "head": p.head,
                    "lag": p.head.saturating_sub(p.cursor),
                    "caught_up": p.caught_up,
                    "serving_acked": p.serving_acked,
                    "serving_inflight": p.serving_inflight,
                })
            })
            .collect();
        let connected = st.peers.iter().filter(|p| p.connected).count();
        let caught_up = st.bootstrapped && st.peers.iter().all(|p| !p.connected || p.caught_up);
        json!({
            "node": st.node,
            "listen": self.bus.local_addr().to_string(),
            "running": true,
            "barrier": self.barrier_json(),
            "bootstrapped": st.bootstrapped,
            "head": st.head,
            "entries": st.entries,
            "live": st.live,
            "table_hash": format!("{:016x}", st.table_hash),
            "peers_connected": connected,
            "caught_up": caught_up,
            "peers": peers,
            "counters": counters,
        })
    }

    fn barrier_json(&self) -> serde_json::Value {
        match &self.policy {
            BarrierPolicy::None => json!("none"),
            BarrierPolicy::All => json!("all"),
            BarrierPolicy::Quorum => json!("quorum"),
            BarrierPolicy::Nodes(n) => json!(n),
        }
    }

    /// Closes every connection (peers see us go at once).
    pub fn close(&self) {
        self.bus.close();
    }
}
