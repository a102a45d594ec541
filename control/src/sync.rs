//! The node's side of SA replication (`[sync]`, docs/sa-sync.md).
//!
//! - Outbound: every event of our IKE endpoint that the SA database takes
//!   is mapped to a bus write ([`convert::publish_for`]) and queued to one
//!   writer task, which hands them to the bus in order. The IKE loop only
//!   pushes onto a channel: it never waits for the bus (no barrier yet).
//! - Inbound: the bus actor turns every record another node applied into
//!   the `anyhub_ike::Event` the SA database takes
//!   ([`convert::dataplane_event`]) and sends it to the loop
//!   ([`Sync::take_applied`]), which installs it like a local one.
//! - Status: a task asks the bus for its state every
//!   [`STATUS_INTERVAL`]; `anyhubctl status` shows the latest.

use crate::config::SyncConfig;
use anyhub_ike::{Endpoint, Event, IkeSaHandle};
use anyhub_sa_sync::convert::{self, Publish};
use anyhub_sa_sync::quic::{now_ms, Bus, BusConfig, Identity};
use anyhub_sa_sync::Config;
use serde_json::json;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;

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
}

/// A running sync: the bus and the loop's ends of its channels.
pub struct SyncBus {
    bus: Bus,
    index: u16,
    writes: mpsc::UnboundedSender<Publish>,
    applied: Option<mpsc::UnboundedReceiver<Event>>,
    shared: Arc<Mutex<Shared>>,
    /// Bus writes queued by the loop.
    pub queued: u64,
    /// Records from other nodes installed in / refused by the SA database.
    pub sad_applied: u64,
    pub install_refused: u64,
}

/// Starts the bus (on the current tokio runtime) with `name`'s fleet
/// certificate. Errors name the field.
pub fn start(cfg: &SyncConfig, name: &str, index: u16) -> Result<SyncBus, String> {
    let identity =
        Identity::load(&cfg.fleet_dir, name).map_err(|e| format!("sync.fleet_dir: {e}"))?;
    // New per process start: peers tell a restart from a reconnect.
    let incarnation = now_ms() ^ (u64::from(std::process::id()) << 40);
    let shared = Arc::new(Mutex::new(Shared::default()));
    let (applied_tx, applied_rx) = mpsc::unbounded_channel();
    let on_event_shared = shared.clone();
    let bus = Bus::start(
        BusConfig {
            core: Config::new(index, incarnation),
            name: name.to_owned(),
            listen: cfg.listen,
            peers: cfg.peers.clone(),
            identity,
            idle_timeout: IDLE_TIMEOUT,
        },
        move |ev| match convert::dataplane_event(ev) {
            Some(Ok(e)) => {
                // The loop is gone only when the node stops.
                let _ = applied_tx.send(e);
            }
            Some(Err(error)) => {
                lock(&on_event_shared).records_refused += 1;
                tracing::warn!(%error, "sync: a record does not convert to an SA; dropped");
            }
            None => {}
        },
    )
    .map_err(|e| format!("sync.listen: {e}"))?;
    if cfg.bootstrap {
        bus.set_bootstrapped();
    }
    tracing::info!(listen = %bus.local_addr(), peers = cfg.peers.len(), bootstrap = cfg.bootstrap, "sync bus running");

    // One writer, so the bus sees the writes in the loop's order.
    let (writes, mut writes_rx) = mpsc::unbounded_channel::<Publish>();
    let wbus = bus.clone();
    let wshared = shared.clone();
    tokio::spawn(async move {
        while let Some(p) = writes_rx.recv().await {
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
        applied: Some(applied_rx),
        shared,
        queued: 0,
        sad_applied: 0,
        install_refused: 0,
    })
}

fn lock(m: &Mutex<Shared>) -> std::sync::MutexGuard<'_, Shared> {
    // A panicking holder leaves plain counters behind: still usable.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl SyncBus {
    /// The receiver of records other nodes published, as SA database
    /// events (once; the loop owns it).
    pub fn take_applied(&mut self) -> Option<mpsc::UnboundedReceiver<Event>> {
        self.applied.take()
    }

    /// Queues the bus write for a local event (before the SA database
    /// takes it). Never waits.
    pub fn publish(&mut self, ev: &Event, endpoint: &Endpoint) {
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
        if let Some(p) = convert::publish_for(ev, spis, self.index, now_ms()) {
            self.queued += 1;
            // The writer stops only with the runtime.
            let _ = self.writes.send(p);
        }
    }

    /// The `sync` object of `anyhubctl status --json`.
    pub fn status_json(&self) -> serde_json::Value {
        let shared = lock(&self.shared);
        let mut counters = json!({
            "queued": self.queued,
            "sad_applied": self.sad_applied,
            "install_refused": self.install_refused,
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

    /// Closes every connection (peers see us go at once).
    pub fn close(&self) {
        self.bus.close();
    }
}
