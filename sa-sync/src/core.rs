//! The sans-IO replication core: one [`Node`] per process.
//!
//! The driver tells the node when a peer connects or goes away, hands it
//! every frame a peer sent and the wall clock (`now`, ms since the Unix
//! epoch), and carries out what it asks: [`Node::poll_transmit`] (frames to
//! peers), [`Node::poll_event`] (records applied, entries expired, barriers
//! decided), [`Node::poll_timeout`] (when to call [`Node::handle_timeout`]).
//!
//! # Protocol (docs/sa-sync.md)
//!
//! - Every node serves its table's change feed ([`crate::table`]). A peer
//!   subscribes with a cursor `(incarnation, lsn)` and a scope: in a full
//!   mesh, `OWN` (entries whose last writer is the server), so each record
//!   travels once from its origin to every node.
//! - A node that starts (a new incarnation, an empty table) first takes a
//!   snapshot: scope `ALL` from one peer, then switches that subscription
//!   to `OWN` at the same cursor. Its own records from before the restart
//!   come back this way, and its clock learns their versions, so its new
//!   writes are newer than anything it wrote before.
//! - Batches are applied last-writer-wins by `(hlc, origin)`, so applying
//!   one twice or late changes nothing (idempotent), and one origin's
//!   records arrive in its feed order. The subscriber acknowledges its
//!   cursor (`FeedAck`); the server keeps at most `window` records in
//!   flight per subscriber and resends from the acknowledged cursor when
//!   acknowledgements stop (go-back-N, `rto_ms`). Because the feed holds
//!   one item per key, a subscriber that falls behind costs a cursor, not a
//!   queue: it reads the newest values when it gets there (a snapshot).
//! - A reconnect resumes from the cursor; a cursor of another incarnation of
//!   the server starts over from 0.
//! - Anti-entropy: every `anti_entropy_ms` each node sends each peer its
//!   bucket digests. A bucket that differs in two digests in a row (not
//!   just a record in flight) is repaired both ways with `Repair`.
//! - Barriers: a record published with a barrier carries `ack_until_ms`;
//!   every node that applies it (or holds something newer) before then
//!   acknowledges it to its origin, which reports the barrier reached or
//!   timed out.

use crate::hlc::{self, Hlc};
use crate::key::Key;
use crate::pb::{self, frame::Body as Fb, record::Body};
use crate::table::{Applied, Lifetimes, Malformed, Table, BUCKETS};
use prost::Message;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

/// Digest intervals anti-entropy waits for a feed that is behind.
const BEHIND_ROUNDS: u64 = 10;

/// A peer is named by its node index (1..=4095, the one in its SPIs).
pub type PeerId = u16;

/// Tunables of one node.
#[derive(Clone, Debug)]
pub struct Config {
    /// Our node index (1..=4095).
    pub node: u16,
    /// Random per process start.
    pub incarnation: u64,
    pub lifetimes: Lifetimes,
    /// Records in flight (sent, not acknowledged) per subscriber.
    pub window: u32,
    /// Records per batch at most.
    pub batch: usize,
    /// Digest interval per peer.
    pub anti_entropy_ms: u64,
    /// Resend / resubscribe after this long without progress.
    pub rto_ms: u64,
    /// Buckets repaired per digest round at most (bounds a repair's size).
    pub max_repair_buckets: usize,
    /// Fan-out mode: this node is a relay. It meshes with the other relays
    /// (`relays`, scope `LOCAL`), takes `OWN` from every leaf that connects
    /// and serves `ALL` to the leaves that subscribe to it.
    pub relay: bool,
    /// Fan-out mode. For a leaf (`relay` false): its upstream relays in
    /// order of preference; it takes `ALL` from the first one that is up and
    /// fails over to the next. For a relay: the other relays. Empty (and
    /// `relay` false): full mesh.
    pub relays: Vec<PeerId>,
}

impl Config {
    pub fn new(node: u16, incarnation: u64) -> Config {
        Config {
            node,
            incarnation,
            lifetimes: Lifetimes {
                max_skew_ms: 60_000,
                tombstone_ttl_ms: 24 * 3600 * 1000,
                max_sa_lifetime_ms: 7 * 24 * 3600 * 1000,
            },
            window: 8192,
            batch: 512,
            anti_entropy_ms: 1000,
            rto_ms: 2000,
            max_repair_buckets: 64,
            relay: false,
            relays: Vec::new(),
        }
    }
}

/// Whom a barrier waits for (besides ourselves).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WaitFor {
    /// Every other node of the fleet ([`Node::add_peer`]).
    All,
    /// A majority of the fleet, counting ourselves.
    Quorum,
    /// This many other nodes.
    Nodes(u16),
    /// These nodes (e.g. our own site's).
    Set(Vec<u16>),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct BarrierId(pub u64);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum BarrierOutcome {
    Reached,
    TimedOut,
}

/// A barrier's result.
#[derive(Clone, Debug, Serialize)]
pub struct Barrier {
    pub id: BarrierId,
    pub outcome: BarrierOutcome,
    /// The nodes that acknowledged (other than us), sorted.
    pub acked: Vec<u16>,
    /// From publish to the outcome.
    pub elapsed_ms: u64,
}

/// A frame for a peer; the driver encodes and sends it.
#[derive(Debug)]
pub struct Transmit {
    pub peer: PeerId,
    pub frame: pb::Frame,
}

/// What happened to the table, for the dataplane and the operator.
#[derive(Debug)]
pub enum Event {
    /// A record from another node changed the table (install, update or
    /// tombstone). `old` is what it replaced.
    Applied {
        key: Key,
        record: Box<pb::Record>,
        old: Option<Box<pb::Record>>,
    },
    /// A live entry reached its expiry and was dropped.
    Expired {
        key: Key,
        record: Box<pb::Record>,
    },
    Barrier(Barrier),
}

/// Why a local write was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PublishError {
    #[error("record refused: {0:?}")]
    Malformed(Malformed),
    #[error("record already expired")]
    Expired,
}

/// Counted, never fatal.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Counters {
    pub published: u64,
    pub applied: u64,
    pub stale: u64,
    pub expired_on_arrival: u64,
    pub malformed: u64,
    pub undecodable: u64,
    pub clock_ahead: u64,
    pub batches_sent: u64,
    pub records_sent: u64,
    pub resends: u64,
    pub resubscribes: u64,
    pub snapshots_served: u64,
    pub digests_sent: u64,
    pub repairs_sent: u64,
    pub records_repaired: u64,
    pub acks_sent: u64,
    pub expired: u64,
    /// Records received in batches and repairs (a fresh node's catch-up
    /// should receive each record about once).
    pub records_received: u64,
    /// Acknowledgements a relay passed on towards their origin.
    pub acks_forwarded: u64,
    /// Feed entries a subscription skipped because the subscriber's digest
    /// showed it held their bucket already.
    pub records_skipped: u64,
    /// Digest rounds skipped while a feed was behind (its records are on
    /// the way: comparing digests then would repair what is in flight).
    pub digests_deferred: u64,
    /// A leaf switched its upstream relay.
    pub failovers: u64,
}

/// One peer as [`Node::status`] shows it.
#[derive(Clone, Debug, Serialize)]
pub struct PeerStatus {
    pub peer: PeerId,
    pub connected: bool,
    /// Our cursor into its feed and its newest lsn as last heard.
    pub cursor: u64,
    pub head: u64,
    pub caught_up: bool,
    pub bootstrap: bool,
    /// Fan-out mode: the relay we take everything from.
    pub upstream: bool,
    /// Its cursor into our feed (acknowledged), if it subscribes.
    pub serving_acked: Option<u64>,
    pub serving_inflight: u32,
}

#[derive(Clone, Debug, Serialize)]
pub struct Status {
    pub node: u16,
    pub incarnation: u64,
    pub head: u64,
    pub entries: usize,
    pub live: usize,
    pub bootstrapped: bool,
    pub hlc: u64,
    /// A hash of every bucket digest: equal on two nodes iff (with
    /// overwhelming probability) they hold the same versions.
    pub table_hash: u64,
    pub peers: Vec<PeerStatus>,
    pub counters: Counters,
}

/// Their subscription to our feed.
#[derive(Debug)]
struct Sub {
    scope: pb::Scope,
    /// The subscriber applied everything up to here.
    acked: u64,
    /// We scanned the feed up to here.
    sent: u64,
    /// The `lsn` of the last batch sent (the next batch's `from_lsn`).
    last_batch: u64,
    /// (batch end lsn, records) not yet acknowledged.
    inflight: VecDeque<(u64, u32)>,
    inflight_records: u32,
    last_progress_ms: u64,
    /// Send a batch even if empty (answers a Subscribe).
    force: bool,
    /// Entries up to this lsn in buckets marked here are already held by
    /// the subscriber (its digest matched ours when it subscribed).
    skip: Option<(u64, Vec<bool>)>,
}

#[derive(Debug, Default)]
struct Peer {
    connected: bool,
    their_incarnation: u64,
    cursor: u64,
    their_head: u64,
    caught_up: bool,
    scope: i32,
    /// A Subscribe is out and no batch answered it yet.
    subscribed_at: Option<u64>,
    sub: Option<Sub>,
    digest_due_ms: u64,
    prev_mismatch: Vec<u32>,
    /// We subscribe to its feed (until the connection goes).
    following: bool,
    /// Its incarnation as its Hello said.
    hello_incarnation: u64,
}

#[derive(Debug)]
struct BarrierState {
    key: Key,
    version: (u64, u32),
    wait: WaitFor,
    started_ms: u64,
    deadline_ms: u64,
    acked: BTreeSet<u16>,
}

/// One node's replication state.
#[derive(Debug)]
pub struct Node {
    cfg: Config,
    hlc: Hlc,
    table: Table,
    peers: BTreeMap<PeerId, Peer>,
    bootstrapped: bool,
    bootstrap_peer: Option<PeerId>,
    /// Fan-out mode, a leaf: the relay whose `ALL` feed we follow.
    upstream: Option<PeerId>,
    transmits: VecDeque<Transmit>,
    events: VecDeque<Event>,
    barriers: BTreeMap<BarrierId, BarrierState>,
    barrier_by_version: HashMap<(Key, (u64, u32)), BarrierId>,
    next_barrier: u64,
    counters: Counters,
    /// Since when a feed we follow has been behind (anti-entropy waits,
    /// at most `BEHIND_ROUNDS` digest intervals).
    behind_since: Option<u64>,
    /// The table changed: offer it to subscribers at the next
    /// [`Node::poll_transmit`].
    pump_due: Option<u64>,
}

impl Node {
    /// A node with an empty table. `bootstrapped` false: it takes a
    /// snapshot from the first peer that connects before serving as a
    /// complete replica.
    pub fn new(cfg: Config) -> Node {
        Node {
            table: Table::new(cfg.lifetimes),
            cfg,
            hlc: Hlc::new(),
            peers: BTreeMap::new(),
            bootstrapped: false,
            bootstrap_peer: None,
            upstream: None,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            barriers: BTreeMap::new(),
            barrier_by_version: HashMap::new(),
            next_barrier: 1,
            counters: Counters::default(),
            behind_since: None,
            pump_due: None,
        }
    }

    pub fn node(&self) -> u16 {
        self.cfg.node
    }

    pub fn table(&self) -> &Table {
        &self.table
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Declares a fleet member (what [`WaitFor::All`] and quorums count).
    pub fn add_peer(&mut self, peer: PeerId) {
        if peer != self.cfg.node {
            self.peers.entry(peer).or_default();
        }
    }

    pub fn remove_peer(&mut self, peer: PeerId, now: u64) {
        self.disconnected(peer, now);
        self.peers.remove(&peer);
    }

    /// Marks ourselves as a complete replica without a snapshot (the first
    /// node of a new fleet, or tests).
    pub fn set_bootstrapped(&mut self) {
        self.bootstrapped = true;
    }

    /// A connection to `peer` is up (authenticated by the transport).
    pub fn connected(&mut self, peer: PeerId, now: u64) {
        if peer == self.cfg.node {
            return;
        }
        let p = self.peers.entry(peer).or_default();
        p.connected = true;
        p.sub = None;
        // Spread digests of different peers over the interval.
        p.digest_due_ms = now + self.cfg.anti_entropy_ms + u64::from(peer) % 97;
        p.prev_mismatch.clear();
        self.send(
            peer,
            Fb::Hello(pb::Hello {
                protocol: pb::PROTOCOL,
                node: u32::from(self.cfg.node),
                incarnation: self.cfg.incarnation,
                ..Default::default()
            }),
        );
        if self.is_leaf() {
            // A leaf follows one relay's ALL feed; the others stand by.
            let up = self.upstream.filter(|u| self.is_connected(*u));
            if up.is_none() && self.is_relay_peer(peer) {
                self.upstream = Some(peer);
                self.subscribe(peer, pb::Scope::All, now);
            }
            return;
        }
        if !self.bootstrapped {
            if self.bootstrap_peer.is_none() {
                self.bootstrap_peer = Some(peer);
                self.subscribe(peer, pb::Scope::All, now);
            }
            // Other subscriptions wait for the snapshot: its cursors say
            // where each of them starts (not at 0: every record once).
            return;
        }
        if let Some(scope) = self.steady_scope(peer) {
            self.subscribe(peer, scope, now);
        }
    }

    fn is_connected(&self, peer: PeerId) -> bool {
        self.peers.get(&peer).is_some_and(|p| p.connected)
    }

    /// Fan-out mode (relays configured, or we are one).
    fn fanout(&self) -> bool {
        self.cfg.relay || !self.cfg.relays.is_empty()
    }

    /// A leaf under relays.
    fn is_leaf(&self) -> bool {
        !self.cfg.relay && !self.cfg.relays.is_empty()
    }

    fn is_relay_peer(&self, peer: PeerId) -> bool {
        self.cfg.relays.contains(&peer)
    }

    /// The scope of our subscription to `peer` once we are a complete
    /// replica, if we subscribe to it at all.
    fn steady_scope(&self, peer: PeerId) -> Option<pb::Scope> {
        if self.is_leaf() {
            (self.upstream == Some(peer)).then_some(pb::Scope::All)
        } else if self.cfg.relay && self.is_relay_peer(peer) {
            Some(pb::Scope::Local)
        } else {
            Some(pb::Scope::Own)
        }
    }

    /// The snapshot from `from` is complete: subscribe to everybody else
    /// where the snapshot left off.
    fn finish_snapshot(&mut self, from: PeerId, cursors: Vec<pb::Cursor>, now: u64) {
        self.bootstrapped = true;
        self.bootstrap_peer = None;
        for c in cursors {
            let Ok(node) = u16::try_from(c.node) else {
                continue;
            };
            if node == self.cfg.node || node == from {
                continue;
            }
            let scope = pb::Scope::try_from(c.scope).unwrap_or(pb::Scope::Own);
            if self.steady_scope(node) != Some(scope) {
                continue;
            }
            let Some(p) = self.peers.get_mut(&node) else {
                continue;
            };
            if p.cursor == 0 || p.their_incarnation != c.incarnation {
                p.their_incarnation = c.incarnation;
                p.cursor = c.lsn;
            } else {
                p.cursor = p.cursor.max(c.lsn);
            }
            p.scope = scope as i32;
        }
        let ids: Vec<PeerId> = self
            .peers
            .iter()
            .filter(|(_, p)| p.connected)
            .map(|(&id, _)| id)
            .collect();
        for id in ids {
            match self.steady_scope(id) {
                // Same cursor: the snapshot covered everything before it.
                Some(pb::Scope::All) if id == from => {}
                Some(scope) => self.subscribe(id, scope, now),
                None => {}
            }
        }
    }

    /// Our cursors into other nodes' feeds, for a snapshot we serve.
    fn cursor_hints(&self, to: PeerId) -> Vec<pb::Cursor> {
        self.peers
            .iter()
            .filter(|(&id, p)| {
                id != to
                    && p.cursor > 0
                    && p.their_incarnation != 0
                    && p.scope != pb::Scope::All as i32
            })
            .map(|(&id, p)| pb::Cursor {
                node: u32::from(id),
                incarnation: p.their_incarnation,
                lsn: p.cursor,
                scope: p.scope,
            })
            .collect()
    }

    /// The connection to `peer` is gone. Our cursor into its feed stays, so
    /// a reconnect resumes.
    pub fn disconnected(&mut self, peer: PeerId, now: u64) {
        let Some(p) = self.peers.get_mut(&peer) else {
            return;
        };
        p.connected = false;
        p.sub = None;
        p.subscribed_at = None;
        p.caught_up = false;
        p.following = false;
        p.hello_incarnation = 0;
        if self.is_leaf() && self.upstream == Some(peer) {
            self.upstream = None;
            let next = self
                .cfg
                .relays
                .iter()
                .copied()
                .find(|&r| self.is_connected(r));
            if let Some(next) = next {
                // Its ALL feed from our old cursor into it (if any), minus
                // the buckets we already hold (Subscribe.have).
                self.counters.failovers += 1;
                self.upstream = Some(next);
                self.subscribe(next, pb::Scope::All, now);
            }
            return;
        }
        if self.bootstrap_peer == Some(peer) {
            self.bootstrap_peer = None;
            // Take the snapshot from another peer.
            let next = self
                .peers
                .iter()
                .find(|(_, p)| p.connected)
                .map(|(&id, _)| id);
            if let Some(next) = next {
                self.bootstrap_peer = Some(next);
                // A cursor into its OWN feed says nothing about the rest.
                self.peers.get_mut(&next).expect("exists").cursor = 0;
                self.subscribe(next, pb::Scope::All, now);
            }
        }
    }

    fn subscribe(&mut self, peer: PeerId, scope: pb::Scope, now: u64) {
        let p = self.peers.get_mut(&peer).expect("peer exists");
        if p.scope != scope as i32 && scope == pb::Scope::All {
            p.cursor = 0;
        }
        p.scope = scope as i32;
        p.subscribed_at = Some(now);
        p.following = true;
        let (incarnation, since_lsn) = (p.their_incarnation, p.cursor);
        // Whatever we hold already need not come again (a failover, or a
        // second snapshot source): our digests let the server skip it.
        let have = if scope == pb::Scope::All && !self.table.is_empty() {
            self.table.digest().to_vec()
        } else {
            Vec::new()
        };
        let frame = Fb::Subscribe(pb::Subscribe {
            incarnation,
            since_lsn,
            scope: scope as i32,
            window: self.cfg.window,
            have,
        });
        self.send(peer, frame);
    }

    fn send(&mut self, peer: PeerId, body: Fb) {
        self.transmits.push_back(Transmit {
            peer,
            frame: pb::Frame { body: Some(body) },
        });
    }

    /// Writes a value (an SA install or update) as its origin.
    pub fn publish(
        &mut self,
        key: Key,
        body: Body,
        expires_ms: u64,
        now: u64,
    ) -> Result<pb::Version, PublishError> {
        self.write(key, body, expires_ms, 0, now)
    }

    /// Writes a tombstone. Its expiry is the live entry's (a tombstone must
    /// outlive every copy of what it deletes).
    pub fn delete(&mut self, key: Key, now: u64) -> Result<pb::Version, PublishError> {
        let expires = self
            .table
            .get(&key)
            .filter(|e| !e.is_tombstone())
            .map_or(0, |e| e.record.expires_ms);
        self.write(key, Body::Tombstone(pb::Tombstone {}), expires, 0, now)
    }

    /// Tombstones every live child SA record of the IKE SA `(spi_i, spi_r)`
    /// (RFC 7296 §1.4.1: deleting an IKE SA closes its children), and the
    /// IKE SA's own takeover record (`Key::IkeSa`). Returns how many
    /// records it tombstoned.
    pub fn delete_children_of(&mut self, spi_i: u64, spi_r: u64, now: u64) -> usize {
        let keys: Vec<Key> = self
            .table
            .entries()
            .filter(|(k, e)| match &e.record.body {
                Some(Body::ChildSa(c)) => c.ike_spi_i == spi_i && c.ike_spi_r == spi_r,
                Some(Body::IkeSa(_)) => **k == Key::IkeSa { spi_i, spi_r },
                _ => false,
            })
            .map(|(k, _)| k.clone())
            .collect();
        let n = keys.len();
        for k in keys {
            let _ = self.delete(k, now);
        }
        n
    }

    /// The IKE SA `old` was rekeyed into `new` (RFC 7296 §2.18): its child
    /// SAs now belong to `new`. Writes every live child SA record of `old`
    /// again with `new`'s SPIs (same SA, same expiry; a new version of
    /// ours), so `old`'s delete — which tombstones its children — leaves
    /// them alone, and `new`'s delete or takeover finds them. Returns how
    /// many.
    pub fn reparent_children(&mut self, old: (u64, u64), new: (u64, u64), now: u64) -> usize {
        let children: Vec<(Key, pb::ChildSa, u64)> = self
            .table
            .entries()
            .filter_map(|(k, e)| match &e.record.body {
                Some(Body::ChildSa(c)) if (c.ike_spi_i, c.ike_spi_r) == old => {
                    Some((k.clone(), c.clone(), e.record.expires_ms))
                }
                _ => None,
            })
            .collect();
        let mut n = 0;
        for (key, mut child, expires_ms) in children {
            (child.ike_spi_i, child.ike_spi_r) = new;
            if self
                .write(key, Body::ChildSa(child), expires_ms, 0, now)
                .is_ok()
            {
                n += 1;
            }
        }
        n
    }

    /// [`Node::publish`] and wait until `wait` nodes applied it, at most
    /// `timeout_ms`; the outcome comes as [`Event::Barrier`].
    pub fn publish_with_barrier(
        &mut self,
        key: Key,
        body: Body,
        expires_ms: u64,
        wait: WaitFor,
        timeout_ms: u64,
        now: u64,
    ) -> Result<(pb::Version, BarrierId), PublishError> {
        let deadline = now + timeout_ms;
        let v = self.write(key.clone(), body, expires_ms, deadline, now)?;
        let id = BarrierId(self.next_barrier);
        self.next_barrier += 1;
        let version = v.order();
        self.barrier_by_version.insert((key.clone(), version), id);
        self.barriers.insert(
            id,
            BarrierState {
                key,
                version,
                wait,
                started_ms: now,
                deadline_ms: deadline,
                acked: BTreeSet::new(),
            },
        );
        self.check_barrier(id, now);
        Ok((v, id))
    }

    fn write(
        &mut self,
        key: Key,
        body: Body,
        expires_ms: u64,
        ack_until_ms: u64,
        now: u64,
    ) -> Result<pb::Version, PublishError> {
        let version = pb::Version {
            hlc: self.hlc.tick(now),
            origin: u32::from(self.cfg.node),
        };
        let record = pb::Record {
            version: Some(version),
            key: Some(key.to_pb()),
            incarnation: self.cfg.incarnation,
            expires_ms,
            ack_until_ms,
            body: Some(body),
        };
        self.table
            .validate(&record, now)
            .map_err(PublishError::Malformed)?;
        match self.table.apply(key, record, false, now) {
            Applied::Changed { .. } => {}
            Applied::Expired => return Err(PublishError::Expired),
            // Our clock is above every version we hold.
            Applied::Stale => unreachable!("a fresh HLC tick is newest"),
        }
        self.counters.published += 1;
        self.pump_later(now);
        Ok(version)
    }

    /// A frame from `peer` (already authenticated by the transport).
    pub fn handle_bytes(&mut self, peer: PeerId, bytes: &[u8], now: u64) {
        match pb::Frame::decode(bytes) {
            Ok(f) => self.handle(peer, f, now),
            Err(_) => self.counters.undecodable += 1,
        }
    }

    pub fn handle(&mut self, peer: PeerId, frame: pb::Frame, now: u64) {
        if !self.peers.get(&peer).is_some_and(|p| p.connected) {
            // Late frames of a closed connection.
            return;
        }
        let Some(body) = frame.body else {
            self.counters.undecodable += 1;
            return;
        };
        match body {
            Fb::Hello(h) => {
                if let Some(p) = self.peers.get_mut(&peer) {
                    p.hello_incarnation = h.incarnation;
                }
            }
            Fb::Subscribe(s) => self.on_subscribe(peer, s, now),
            Fb::Batch(b) => self.on_batch(peer, b, now),
            Fb::FeedAck(a) => self.on_feed_ack(peer, a, now),
            Fb::Acks(a) => self.on_acks(peer, a, now),
            Fb::Digest(d) => self.on_digest(peer, d, now),
            Fb::Repair(r) => self.on_repair(peer, r, now),
        }
    }

    fn on_subscribe(&mut self, peer: PeerId, s: pb::Subscribe, now: u64) {
        let scope = pb::Scope::try_from(s.scope).unwrap_or(pb::Scope::Own);
        let since = if s.incarnation == self.cfg.incarnation {
            s.since_lsn.min(self.table.head())
        } else {
            0
        };
        if since == 0 {
            self.counters.snapshots_served += 1;
        }
        let skip = (s.have.len() == BUCKETS).then(|| {
            let mine = self.table.digest();
            let mask: Vec<bool> = (0..BUCKETS).map(|i| mine[i] == s.have[i]).collect();
            (self.table.head(), mask)
        });
        let p = self.peers.get_mut(&peer).expect("connected");
        p.sub = Some(Sub {
            skip,
            scope,
            acked: since,
            sent: since,
            last_batch: since,
            inflight: VecDeque::new(),
            inflight_records: 0,
            last_progress_ms: now,
            force: true,
        });
        self.fill(peer, now);
    }

    fn on_feed_ack(&mut self, peer: PeerId, a: pb::FeedAck, now: u64) {
        if a.incarnation != self.cfg.incarnation {
            return;
        }
        let Some(sub) = self.peers.get_mut(&peer).and_then(|p| p.sub.as_mut()) else {
            return;
        };
        if a.lsn > sub.acked {
            sub.acked = a.lsn.min(sub.sent);
        }
        while let Some(&(end, n)) = sub.inflight.front() {
            if end > sub.acked {
                break;
            }
            sub.inflight.pop_front();
            sub.inflight_records -= n;
        }
        sub.last_progress_ms = now;
        self.fill(peer, now);
    }

    /// Sends what `peer`'s subscription has not seen, within its window.
    fn fill(&mut self, peer: PeerId, now: u64) {
        let head = self.table.head();
        let me = u32::from(self.cfg.node);
        let snapshot = self
            .peers
            .get(&peer)
            .and_then(|p| p.sub.as_ref())
            .is_some_and(|s| s.scope == pb::Scope::All);
        let hints = if snapshot {
            self.cursor_hints(peer)
        } else {
            Vec::new()
        };
        let mut skipped = 0;
        let sub_inc = self.peers.get(&peer).map_or(0, |p| p.hello_incarnation);
        let Some(p) = self.peers.get_mut(&peer) else {
            return;
        };
        if !p.connected {
            return;
        }
        let Some(sub) = p.sub.as_mut() else {
            return;
        };
        let mut out = Vec::new();
        while sub.inflight_records < self.cfg.window {
            let room = (self.cfg.window - sub.inflight_records) as usize;
            let max = self.cfg.batch.min(room);
            let mut records = Vec::new();
            let mut last = head;
            for (lsn, k, e) in self.table.feed_after(sub.sent) {
                let mut wanted = match sub.scope {
                    // Not what the subscriber itself wrote in this life
                    // (it has that); what it wrote before a restart, yes.
                    pb::Scope::All => {
                        !(e.origin() == peer && sub_inc != 0 && e.record.incarnation == sub_inc)
                    }
                    pb::Scope::Own => e.version().1 == me,
                    pb::Scope::Local => !e.from_relay,
                };
                if let Some((until, mask)) = &sub.skip {
                    if wanted && lsn <= *until && mask[Table::bucket_of(k)] {
                        wanted = false;
                        skipped += 1;
                    }
                }
                if wanted {
                    records.push(e.record.clone());
                    if records.len() >= max {
                        last = lsn;
                        break;
                    }
                }
            }
            if records.is_empty() {
                // Nothing in scope up to head: skip the range; the next
                // batch's from_lsn still names the last batch, so the
                // subscriber's cursor check holds.
                sub.sent = head;
                if !sub.force {
                    break;
                }
            }
            let n = records.len() as u32;
            out.push(pb::Batch {
                incarnation: self.cfg.incarnation,
                lsn: last,
                records,
                caught_up: last == head,
                head,
                from_lsn: sub.last_batch,
                cursors: if last == head {
                    hints.clone()
                } else {
                    Vec::new()
                },
            });
            sub.force = false;
            sub.sent = last;
            sub.last_batch = last;
            if n > 0 {
                if sub.inflight.is_empty() {
                    sub.last_progress_ms = now;
                }
                sub.inflight.push_back((last, n));
                sub.inflight_records += n;
            }
            if last == head {
                break;
            }
        }
        self.counters.records_skipped += skipped;
        for b in out {
            self.counters.batches_sent += 1;
            self.counters.records_sent += b.records.len() as u64;
            self.send(peer, Fb::Batch(b));
        }
    }

    /// Offers new feed items to every subscriber.
    fn pump(&mut self, now: u64) {
        let ids: Vec<PeerId> = self
            .peers
            .iter()
            .filter(|(_, p)| p.connected && p.sub.is_some())
            .map(|(&id, _)| id)
            .collect();
        for id in ids {
            self.fill(id, now);
        }
    }

    fn on_batch(&mut self, peer: PeerId, b: pb::Batch, now: u64) {
        let p = self.peers.get_mut(&peer).expect("connected");
        p.subscribed_at = None;
        if b.incarnation != p.their_incarnation && b.from_lsn == 0 {
            // The server (re)started, or this is our first batch from it.
            p.their_incarnation = b.incarnation;
            p.cursor = 0;
        }
        let contiguous = b.incarnation == p.their_incarnation && b.from_lsn <= p.cursor;
        let mut acks: BTreeMap<u32, Vec<pb::Ack>> = BTreeMap::new();
        self.counters.records_received += b.records.len() as u64;
        for r in b.records {
            self.apply_remote(peer, r, now, Some(&mut acks));
        }
        let p = self.peers.get_mut(&peer).expect("connected");
        if contiguous {
            p.cursor = p.cursor.max(b.lsn);
            p.their_head = b.head;
            p.caught_up = b.caught_up;
        }
        let ack = pb::FeedAck {
            incarnation: p.their_incarnation,
            lsn: p.cursor,
        };
        let finished_snapshot = contiguous
            && b.caught_up
            && !self.bootstrapped
            && (self.bootstrap_peer == Some(peer) || self.upstream == Some(peer))
            && p.scope == pb::Scope::All as i32;
        self.send(peer, Fb::FeedAck(ack));
        for (origin, acks) in acks {
            let Ok(origin) = u16::try_from(origin) else {
                continue;
            };
            self.counters.acks_sent += acks.len() as u64;
            self.route_acks(None, origin, acks);
        }
        if finished_snapshot {
            self.finish_snapshot(peer, b.cursors, now);
        }
        // Subscribers of scope ALL want what we just learned.
        self.pump_later(now);
    }

    /// Sends acknowledgements towards their origin: directly, or (fan-out
    /// mode) through a relay. `from`: the relay that passed them to us.
    fn route_acks(&mut self, from: Option<PeerId>, origin: u16, acks: Vec<pb::Ack>) {
        if self.is_connected(origin) {
            self.send(origin, Fb::Acks(pb::Acks { acks }));
            return;
        }
        if !self.fanout() {
            return;
        }
        if self.is_leaf() {
            let via = self.upstream.filter(|&u| self.is_connected(u)).or_else(|| {
                self.cfg
                    .relays
                    .iter()
                    .copied()
                    .find(|&r| self.is_connected(r))
            });
            if let Some(via) = via {
                self.send(via, Fb::Acks(pb::Acks { acks }));
            }
            return;
        }
        // A relay: to the other relays, once (a relay's forward is not
        // forwarded again); the one the origin is connected to delivers.
        if from.is_some_and(|f| self.is_relay_peer(f)) {
            return;
        }
        let relays: Vec<PeerId> = self
            .cfg
            .relays
            .iter()
            .copied()
            .filter(|&r| self.is_connected(r))
            .collect();
        for r in relays {
            self.counters.acks_forwarded += acks.len() as u64;
            self.send(r, Fb::Acks(pb::Acks { acks: acks.clone() }));
        }
    }

    /// Validates and applies one record from another node.
    fn apply_remote(
        &mut self,
        peer: PeerId,
        r: pb::Record,
        now: u64,
        acks: Option<&mut BTreeMap<u32, Vec<pb::Ack>>>,
    ) -> bool {
        let key = match self.table.validate(&r, now) {
            Ok(k) => k,
            Err(_) => {
                self.counters.malformed += 1;
                return false;
            }
        };
        let version = r.version.expect("validated");
        if self
            .hlc
            .observe(version.hlc, now, self.cfg.lifetimes.max_skew_ms)
        {
            self.counters.clock_ahead += 1;
        }
        let wants_ack = r.ack_until_ms > now && version.origin != u32::from(self.cfg.node);
        let ack_key = wants_ack.then(|| key.clone());
        // A relay does not offer what another relay sent it to the other
        // relays again (scope LOCAL): they have it from that relay.
        let from_relay = self.cfg.relay && self.is_relay_peer(peer);
        let changed = match self.table.apply(key.clone(), r.clone(), from_relay, now) {
            Applied::Changed { old } => {
                self.counters.applied += 1;
                self.events.push_back(Event::Applied {
                    key,
                    record: Box::new(r),
                    old,
                });
                true
            }
            Applied::Stale => {
                self.counters.stale += 1;
                false
            }
            Applied::Expired => {
                self.counters.expired_on_arrival += 1;
                return false;
            }
        };
        if let (Some(k), Some(acks)) = (ack_key, acks) {
            acks.entry(version.origin).or_default().push(pb::Ack {
                acker: u32::from(self.cfg.node),
                origin: version.origin,
                key: Some(k.to_pb()),
                version: Some(version),
            });
        }
        changed
    }

    fn on_acks(&mut self, peer: PeerId, a: pb::Acks, now: u64) {
        // Only the acker itself may speak for itself, or a relay passing
        // acknowledgements on (fan-out mode).
        let via_relay = self.is_relay_peer(peer);
        let mut forward: BTreeMap<u16, Vec<pb::Ack>> = BTreeMap::new();
        for ack in a.acks {
            if ack.acker != u32::from(peer) && !via_relay {
                self.counters.malformed += 1;
                continue;
            }
            if ack.origin != u32::from(self.cfg.node) {
                match u16::try_from(ack.origin) {
                    Ok(o) if self.cfg.relay && o != 0 => forward.entry(o).or_default().push(ack),
                    _ => self.counters.malformed += 1,
                }
                continue;
            }
            let (Some(k), Some(v)) = (ack.key.as_ref().and_then(Key::from_pb), ack.version) else {
                self.counters.malformed += 1;
                continue;
            };
            let Ok(acker) = u16::try_from(ack.acker) else {
                self.counters.malformed += 1;
                continue;
            };
            if let Some(&id) = self.barrier_by_version.get(&(k, v.order())) {
                if let Some(b) = self.barriers.get_mut(&id) {
                    b.acked.insert(acker);
                }
                self.check_barrier(id, now);
            }
        }
        for (origin, acks) in forward {
            self.route_acks(Some(peer), origin, acks);
        }
    }

    fn barrier_met(&self, b: &BarrierState) -> bool {
        match &b.wait {
            WaitFor::All => self.peers.keys().all(|p| b.acked.contains(p)),
            WaitFor::Quorum => {
                let fleet = self.peers.len() + 1;
                b.acked.len() + 1 > fleet / 2
            }
            WaitFor::Nodes(n) => b.acked.len() >= usize::from(*n),
            WaitFor::Set(set) => set
                .iter()
                .all(|p| *p == self.cfg.node || b.acked.contains(p)),
        }
    }

    fn check_barrier(&mut self, id: BarrierId, now: u64) {
        let Some(b) = self.barriers.get(&id) else {
            return;
        };
        let outcome = if self.barrier_met(b) {
            BarrierOutcome::Reached
        } else if now >= b.deadline_ms {
            BarrierOutcome::TimedOut
        } else {
            return;
        };
        let b = self.barriers.remove(&id).expect("exists");
        self.barrier_by_version.remove(&(b.key, b.version));
        self.events.push_back(Event::Barrier(Barrier {
            id,
            outcome,
            acked: b.acked.into_iter().collect(),
            elapsed_ms: now.saturating_sub(b.started_ms),
        }));
    }

    fn on_digest(&mut self, peer: PeerId, d: pb::Digest, now: u64) {
        if d.buckets.len() != BUCKETS {
            self.counters.malformed += 1;
            return;
        }
        self.update_behind(now);
        if !self.bootstrapped || self.behind(now) {
            // Our table is still filling (the snapshot, or a feed that is
            // behind): buckets differ because records are on their way, and
            // repairing them would send them a second time.
            if let Some(p) = self.peers.get_mut(&peer) {
                p.prev_mismatch.clear();
            }
            return;
        }
        let mine = self.table.digest();
        let mismatch: Vec<u32> = (0..BUCKETS)
            .filter(|&i| mine[i] != d.buckets[i])
            .map(|i| i as u32)
            .collect();
        let p = self.peers.get_mut(&peer).expect("connected");
        // Repair only what differed last time too: a record in flight
        // makes a bucket differ for a moment, a partition's leftovers stay.
        let mut persistent: Vec<u32> = mismatch
            .iter()
            .copied()
            .filter(|b| p.prev_mismatch.binary_search(b).is_ok())
            .collect();
        p.prev_mismatch = mismatch;
        persistent.truncate(self.cfg.max_repair_buckets);
        if persistent.is_empty() {
            return;
        }
        let records = self.bucket_records(&persistent);
        self.counters.repairs_sent += 1;
        self.send(
            peer,
            Fb::Repair(pb::Repair {
                buckets: persistent,
                records,
                want_back: true,
            }),
        );
    }

    /// A feed we follow is behind its head (records on their way to us),
    /// and has not been for more than `BEHIND_ROUNDS` digest intervals (a
    /// feed that never catches up must not stop anti-entropy).
    fn behind(&self, now: u64) -> bool {
        self.behind_since
            .is_some_and(|t| now < t.saturating_add(BEHIND_ROUNDS * self.cfg.anti_entropy_ms))
    }

    fn update_behind(&mut self, now: u64) {
        let lagging = self
            .peers
            .values()
            .any(|p| p.connected && p.following && !p.caught_up);
        if !lagging {
            self.behind_since = None;
        } else if self.behind_since.is_none() {
            self.behind_since = Some(now);
        }
    }

    fn bucket_records(&self, buckets: &[u32]) -> Vec<pb::Record> {
        self.table
            .in_buckets(buckets)
            .into_iter()
            .map(|e| e.record.clone())
            .collect()
    }

    fn on_repair(&mut self, peer: PeerId, r: pb::Repair, now: u64) {
        let mut buckets = r.buckets;
        buckets.sort_unstable();
        buckets.dedup();
        buckets.retain(|&b| (b as usize) < BUCKETS);
        buckets.truncate(self.cfg.max_repair_buckets);
        self.counters.records_received += r.records.len() as u64;
        for rec in r.records {
            if self.apply_remote(peer, rec, now, None) {
                self.counters.records_repaired += 1;
            }
        }
        if r.want_back {
            let records = self.bucket_records(&buckets);
            self.counters.repairs_sent += 1;
            self.send(
                peer,
                Fb::Repair(pb::Repair {
                    buckets,
                    records,
                    want_back: false,
                }),
            );
        }
        self.pump_later(now);
    }

    /// Timers: expiry, digests, resends, barrier deadlines.
    pub fn handle_timeout(&mut self, now: u64) {
        self.update_behind(now);
        for (key, record) in self.table.collect(now) {
            self.counters.expired += 1;
            self.events.push_back(Event::Expired {
                key,
                record: Box::new(record),
            });
        }
        let ids: Vec<PeerId> = self.peers.keys().copied().collect();
        for id in ids {
            let p = self.peers.get_mut(&id).expect("exists");
            if !p.connected {
                continue;
            }
            if p.subscribed_at.is_some_and(|t| now >= t + self.cfg.rto_ms) {
                self.counters.resubscribes += 1;
                let scope = pb::Scope::try_from(p.scope).unwrap_or(pb::Scope::Own);
                self.subscribe(id, scope, now);
            }
            let p = self.peers.get_mut(&id).expect("exists");
            if let Some(sub) = p.sub.as_mut() {
                if !sub.inflight.is_empty() && now >= sub.last_progress_ms + self.cfg.rto_ms {
                    // Go back to what the subscriber confirmed.
                    self.counters.resends += 1;
                    sub.sent = sub.acked;
                    sub.last_batch = sub.acked;
                    sub.inflight.clear();
                    sub.inflight_records = 0;
                    sub.last_progress_ms = now;
                    sub.force = true;
                    self.fill(id, now);
                }
            }
            let quiet = self.bootstrapped && !self.behind(now);
            let p = self.peers.get_mut(&id).expect("exists");
            if now >= p.digest_due_ms && !quiet {
                // No digests while our table is filling (see on_digest).
                p.digest_due_ms = now + self.cfg.anti_entropy_ms;
                self.counters.digests_deferred += 1;
            } else if now >= p.digest_due_ms {
                p.digest_due_ms = now + self.cfg.anti_entropy_ms;
                self.counters.digests_sent += 1;
                let buckets = self.table.digest().to_vec();
                self.send(
                    id,
                    Fb::Digest(pb::Digest {
                        buckets,
                        reply: false,
                    }),
                );
            }
        }
        let due: Vec<BarrierId> = self
            .barriers
            .iter()
            .filter(|(_, b)| now >= b.deadline_ms)
            .map(|(&id, _)| id)
            .collect();
        for id in due {
            self.check_barrier(id, now);
        }
    }

    /// When [`Node::handle_timeout`] wants to run next.
    pub fn poll_timeout(&self) -> Option<u64> {
        let mut t = self.table.next_gc();
        let mut at = |x: u64| t = Some(t.map_or(x, |t| t.min(x)));
        for p in self.peers.values().filter(|p| p.connected) {
            at(p.digest_due_ms);
            if let Some(s) = p.subscribed_at {
                at(s + self.cfg.rto_ms);
            }
            if let Some(sub) = p.sub.as_ref().filter(|s| !s.inflight.is_empty()) {
                at(sub.last_progress_ms + self.cfg.rto_ms);
            }
        }
        for b in self.barriers.values() {
            at(b.deadline_ms);
        }
        t
    }

    /// The next frame to send. New feed items are offered to subscribers
    /// here, once for everything that happened since the last call: a
    /// driver that handles several inputs before it drains the transmits
    /// sends one batch of many records instead of many batches of one.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        if let Some(now) = self.pump_due.take() {
            self.pump(now);
        }
        self.transmits.pop_front()
    }

    fn pump_later(&mut self, now: u64) {
        self.pump_due = Some(self.pump_due.map_or(now, |t| t.max(now)));
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Peers, cursors, lag and counters (no keys).
    pub fn status(&self) -> Status {
        Status {
            node: self.cfg.node,
            incarnation: self.cfg.incarnation,
            head: self.table.head(),
            entries: self.table.len(),
            live: self.table.live_len(),
            bootstrapped: self.bootstrapped,
            hlc: self.hlc.last(),
            table_hash: {
                let mut h = crate::key::Fnv::new();
                for b in self.table.digest() {
                    h.bytes(&b.to_be_bytes());
                }
                h.finish()
            },
            peers: self
                .peers
                .iter()
                .map(|(&id, p)| PeerStatus {
                    peer: id,
                    connected: p.connected,
                    cursor: p.cursor,
                    head: p.their_head,
                    caught_up: p.caught_up,
                    bootstrap: self.bootstrap_peer == Some(id),
                    upstream: self.upstream == Some(id),
                    serving_acked: p.sub.as_ref().map(|s| s.acked),
                    serving_inflight: p.sub.as_ref().map_or(0, |s| s.inflight_records),
                })
                .collect(),
            counters: self.counters.clone(),
        }
    }

    /// The wall-clock ms of our newest version (for operators).
    pub fn clock_ms(&self) -> u64 {
        hlc::wall_ms(self.hlc.last())
    }
}
