//! A deterministic simulator for the replication core: N nodes, a network
//! that delays (and so reorders), duplicates and loses frames, partitions
//! that cut links (the transport notices: connections close), restarts that
//! wipe a node (kill -9: the table is in memory only), and skewed clocks.
//!
//! After a chaotic phase everything heals and the fleet runs quietly; then
//! every seed must show:
//! - convergence: all nodes hold the same table (values and tombstones);
//! - durability: every write that some surviving node held is there, at
//!   its version or a newer one;
//! - no resurrection: no node holds a key at a version older than a
//!   tombstone that survived (a stale replica never wins over a delete);
//! - expiry: entries past their expiry are gone everywhere;
//! - every barrier got an outcome.

use anyhub_sa_sync::pb::{self, record::Body};
use anyhub_sa_sync::{BarrierOutcome, Config, Event, Key, Lifetimes, Node, WaitFor};
use prost::Message;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap};

/// splitmix64: small, seedable, good enough for schedules.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn chance(&mut self, per_mille: u64) -> bool {
        self.below(1000) < per_mille
    }
}

const T0: u64 = 1_700_000_000_000;

#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct InFlight {
    at: std::cmp::Reverse<(u64, u64)>,
    from: u16,
    to: u16,
    epoch: u64,
    bytes: Vec<u8>,
}

struct Sim {
    rng: Rng,
    t: u64,
    n: u16,
    nodes: BTreeMap<u16, Node>,
    skew: HashMap<u16, i64>,
    incarnations: u64,
    /// Link epoch per unordered pair; frames of an older epoch are dropped.
    epoch: HashMap<(u16, u16), u64>,
    up: HashMap<(u16, u16), bool>,
    cut: BTreeSet<(u16, u16)>,
    net: BinaryHeap<InFlight>,
    seq: u64,
    loss: u64,
    dup: u64,
    max_delay: u64,
    /// Every write: (key, version, tombstone, expires), and whether it was lost
    /// (no surviving holder at some restart).
    writes: Vec<(Key, (u64, u32), bool, u64)>,
    lost: BTreeSet<usize>,
    next_spi: HashMap<u16, u32>,
    barriers_open: BTreeSet<(u16, u64)>,
    barriers_reached: u64,
    /// Fan-out mode: the relays, and each leaf's upstream relays (empty:
    /// full mesh).
    relays: Vec<u16>,
    upstreams: HashMap<u16, Vec<u16>>,
    /// Every barrier outcome, by the node that published it.
    decided: Vec<(u16, anyhub_sa_sync::Barrier)>,
}

fn pair(a: u16, b: u16) -> (u16, u16) {
    (a.min(b), a.max(b))
}

fn config(node: u16, incarnation: u64) -> Config {
    let mut c = Config::new(node, incarnation);
    c.lifetimes = Lifetimes {
        max_skew_ms: 10_000,
        tombstone_ttl_ms: 3_600_000,
        max_sa_lifetime_ms: 3_600_000,
    };
    c.anti_entropy_ms = 500;
    c.rto_ms = 300;
    c.window = 64;
    c.batch = 16;
    c.max_repair_buckets = 16;
    c
}

impl Sim {
    fn new(seed: u64) -> Sim {
        let mut rng = Rng(seed);
        let n = 3 + rng.below(4) as u16;
        Sim::build(rng, n, 0)
    }

    /// Fan-out: `relays` relays (nodes 1..=relays, meshed), every other node
    /// a leaf with two upstream relays.
    fn fanout(seed: u64) -> Sim {
        let mut rng = Rng(seed ^ 0x000f_a110_u64);
        let relays = 2 + rng.below(2) as u16;
        let n = relays + 3 + rng.below(5) as u16;
        Sim::build(rng, n, relays)
    }

    fn build(mut rng: Rng, n: u16, relays: u16) -> Sim {
        let relay_ids: Vec<u16> = (1..=relays).collect();
        let mut upstreams = HashMap::new();
        if relays > 0 {
            for (i, leaf) in (relays + 1..=n).enumerate() {
                let a = relay_ids[i % relay_ids.len()];
                let b = relay_ids[(i + 1) % relay_ids.len()];
                upstreams.insert(leaf, vec![a, b]);
            }
        }
        let mut sim = Sim {
            relays: relay_ids,
            upstreams,
            decided: Vec::new(),
            t: T0,
            n,
            nodes: BTreeMap::new(),
            skew: HashMap::new(),
            incarnations: 0,
            epoch: HashMap::new(),
            up: HashMap::new(),
            cut: BTreeSet::new(),
            net: BinaryHeap::new(),
            seq: 0,
            loss: rng.below(60),
            dup: rng.below(60),
            max_delay: 1 + rng.below(40),
            writes: Vec::new(),
            lost: BTreeSet::new(),
            next_spi: HashMap::new(),
            barriers_open: BTreeSet::new(),
            barriers_reached: 0,
            rng,
        };
        for id in 1..=n {
            let skew = sim.rng.below(6001) as i64 - 3000;
            sim.skew.insert(id, skew);
            sim.start(id);
        }
        sim
    }

    fn now(&self, id: u16) -> u64 {
        (self.t as i64 + self.skew[&id]) as u64
    }

    fn config(&self, id: u16, incarnation: u64) -> Config {
        let mut c = config(id, incarnation);
        if self.relays.contains(&id) {
            c.relay = true;
            c.relays = self.relays.iter().copied().filter(|&r| r != id).collect();
        } else if let Some(up) = self.upstreams.get(&id) {
            c.relays = up.clone();
        }
        c
    }

    /// Whether a and b keep a connection (full mesh: every pair).
    fn linked(&self, a: u16, b: u16) -> bool {
        if self.relays.is_empty() {
            return true;
        }
        let (ra, rb) = (self.relays.contains(&a), self.relays.contains(&b));
        match (ra, rb) {
            (true, true) => true,
            (true, false) => self.upstreams[&b].contains(&a),
            (false, true) => self.upstreams[&a].contains(&b),
            (false, false) => false,
        }
    }

    fn start(&mut self, id: u16) {
        self.incarnations += 1;
        let cfg = self.config(id, self.incarnations * 7919 + u64::from(id));
        let mut node = Node::new(cfg);
        for p in 1..=self.n {
            node.add_peer(p);
        }
        if self.t == T0 {
            node.set_bootstrapped();
        }
        self.nodes.insert(id, node);
    }

    /// Brings links up or down to match node liveness and partitions.
    fn sync_links(&mut self) {
        for a in 1..=self.n {
            for b in a + 1..=self.n {
                let want = self.linked(a, b)
                    && self.nodes.contains_key(&a)
                    && self.nodes.contains_key(&b)
                    && !self.cut.contains(&(a, b));
                let is = *self.up.get(&(a, b)).unwrap_or(&false);
                if want == is {
                    continue;
                }
                *self.epoch.entry((a, b)).or_default() += 1;
                self.up.insert((a, b), want);
                for (x, y) in [(a, b), (b, a)] {
                    let now = self.now(x);
                    if let Some(node) = self.nodes.get_mut(&x) {
                        if want {
                            node.connected(y, now);
                        } else {
                            node.disconnected(y, now);
                        }
                    }
                }
            }
        }
    }

    fn flush(&mut self, id: u16) {
        let mut out = Vec::new();
        let mut events = Vec::new();
        if let Some(node) = self.nodes.get_mut(&id) {
            while let Some(tx) = node.poll_transmit() {
                out.push(tx);
            }
            while let Some(e) = node.poll_event() {
                events.push(e);
            }
        }
        for e in events {
            if let Event::Barrier(b) = e {
                assert!(
                    self.barriers_open.remove(&(id, b.id.0)),
                    "barrier decided once"
                );
                if b.outcome == BarrierOutcome::Reached {
                    self.barriers_reached += 1;
                }
                self.decided.push((id, b));
            }
        }
        for tx in out {
            let p = pair(id, tx.peer);
            if !self.up.get(&p).copied().unwrap_or(false) {
                continue;
            }
            let bytes = tx.frame.encode_to_vec();
            if self.rng.chance(self.loss) {
                continue;
            }
            let copies = if self.rng.chance(self.dup) { 2 } else { 1 };
            for _ in 0..copies {
                self.seq += 1;
                let at = self.t + 1 + self.rng.below(self.max_delay);
                self.net.push(InFlight {
                    at: std::cmp::Reverse((at, self.seq)),
                    from: id,
                    to: tx.peer,
                    epoch: self.epoch[&p],
                    bytes: bytes.clone(),
                });
            }
        }
    }

    fn deliver(&mut self) {
        while let Some(m) = self.net.peek() {
            if m.at.0 .0 > self.t {
                break;
            }
            let m = self.net.pop().expect("peeked");
            if self.epoch.get(&pair(m.from, m.to)) != Some(&m.epoch) {
                continue;
            }
            let now = self.now(m.to);
            if let Some(node) = self.nodes.get_mut(&m.to) {
                node.handle_bytes(m.from, &m.bytes, now);
            }
            self.flush(m.to);
        }
    }

    fn timers(&mut self) {
        let ids: Vec<u16> = self.nodes.keys().copied().collect();
        for id in ids {
            let now = self.now(id);
            let node = self.nodes.get_mut(&id).expect("live");
            if node.poll_timeout().is_some_and(|t| t <= now) {
                node.handle_timeout(now);
            }
            self.flush(id);
        }
    }

    fn held(&self, id: u16, key: &Key) -> Option<(u64, u32)> {
        self.nodes[&id].table().get(key).map(|e| e.version())
    }

    fn random_live(&mut self) -> Option<u16> {
        let ids: Vec<u16> = self.nodes.keys().copied().collect();
        if ids.is_empty() {
            None
        } else {
            Some(ids[self.rng.below(ids.len() as u64) as usize])
        }
    }

    fn act(&mut self, chaos: bool) {
        let r = self.rng.below(1000);
        if r < 60 {
            // Install a child SA, sometimes waiting on a barrier.
            let Some(id) = self.random_live() else { return };
            let c = self.next_spi.entry(id).or_default();
            *c += 1;
            let spi =
                (u32::from(id) << 20) | (self.incarnations as u32 & 0xff) << 12 | (*c & 0xfff);
            let now = self.now(id);
            // A few SAs expire during the run.
            let expires = if chaos && self.rng.chance(100) {
                now + 5_000
            } else {
                now + 3_000_000
            };
            let body = Body::ChildSa(pb::ChildSa {
                spi_in: spi,
                owner: u32::from(id),
                keys_in: Some(pb::DirectionKeys {
                    encr: vec![0x42; 36],
                    integ: Vec::new(),
                    has_integ: false,
                }),
                ..Default::default()
            });
            let node = self.nodes.get_mut(&id).expect("live");
            let v = if self.rng.chance(200) {
                let (v, b) = node
                    .publish_with_barrier(Key::ChildSa(spi), body, expires, WaitFor::All, 400, now)
                    .expect("valid");
                self.barriers_open.insert((id, b.0));
                v
            } else {
                node.publish(Key::ChildSa(spi), body, expires, now)
                    .expect("valid")
            };
            self.writes
                .push((Key::ChildSa(spi), v.order(), false, expires));
            self.flush(id);
        } else if r < 90 {
            // Delete something this node sees live (any node may).
            let Some(id) = self.random_live() else { return };
            let live: Vec<(Key, u64)> = self.nodes[&id]
                .table()
                .entries()
                .filter(|(_, e)| !e.is_tombstone())
                .map(|(k, e)| (k.clone(), e.record.expires_ms))
                .collect::<BTreeMap<_, _>>()
                .into_iter()
                .collect();
            if live.is_empty() {
                return;
            }
            let (key, expires) = live[self.rng.below(live.len() as u64) as usize].clone();
            let now = self.now(id);
            let node = self.nodes.get_mut(&id).expect("live");
            if let Ok(v) = node.delete(key.clone(), now) {
                self.writes.push((key, v.order(), true, expires));
            }
            self.flush(id);
        } else if chaos && r < 96 {
            // Cut or heal a link.
            let a = 1 + self.rng.below(u64::from(self.n)) as u16;
            let b = 1 + self.rng.below(u64::from(self.n)) as u16;
            if a != b {
                let p = pair(a, b);
                if !self.cut.remove(&p) {
                    self.cut.insert(p);
                }
                self.sync_links();
            }
        } else if chaos && r < 98 {
            // kill -9 and restart later, or restart a dead node.
            let id = 1 + self.rng.below(u64::from(self.n)) as u16;
            if self.nodes.contains_key(&id) {
                // Writes only this node holds are lost with it.
                for (i, (key, v, _, _)) in self.writes.iter().enumerate() {
                    let held_elsewhere = self
                        .nodes
                        .keys()
                        .filter(|&&o| o != id)
                        .any(|&o| self.held(o, key).is_some_and(|h| h >= *v));
                    if !held_elsewhere {
                        self.lost.insert(i);
                    }
                }
                self.barriers_open.retain(|(n, _)| *n != id);
                self.nodes.remove(&id);
            } else {
                self.start(id);
            }
            self.sync_links();
        }
    }

    fn run(&mut self, until: u64, chaos: bool) {
        while self.t < until {
            self.t += 1 + self.rng.below(3);
            if self.rng.chance(300) {
                self.act(chaos);
            }
            self.deliver();
            self.timers();
        }
    }

    fn check(&self, seed: u64) {
        let end = self.t;
        let ids: Vec<u16> = self.nodes.keys().copied().collect();
        assert_eq!(ids.len(), usize::from(self.n), "seed {seed}: all up");
        let table = |id: u16| -> BTreeMap<Key, ((u64, u32), bool)> {
            self.nodes[&id]
                .table()
                .entries()
                .map(|(k, e)| (k.clone(), (e.version(), e.is_tombstone())))
                .collect()
        };
        let first = table(ids[0]);
        for &id in &ids[1..] {
            let other = table(id);
            if other != first {
                let keys: BTreeSet<&Key> = first.keys().chain(other.keys()).collect();
                let diff: Vec<_> = keys
                    .into_iter()
                    .filter(|k| first.get(*k) != other.get(*k))
                    .take(5)
                    .map(|k| (k.clone(), first.get(k).copied(), other.get(k).copied()))
                    .collect();
                for (k, _, _) in &diff {
                    for n in [ids[0], id] {
                        let e = self.nodes[&n].table().get(k);
                        eprintln!(
                            "node {n} now {} {k}: {:?}",
                            self.now(n) - T0,
                            e.map(|e| (e.record.expires_ms.saturating_sub(T0), e.version(), e.lsn))
                        );
                    }
                }
                eprintln!(
                    "writes: {:?}",
                    self.writes
                        .iter()
                        .filter(|w| diff.iter().any(|d| d.0 == w.0))
                        .map(|w| (w.1, w.2, w.3 - T0))
                        .collect::<Vec<_>>()
                );
                panic!(
                    "seed {seed}: node {} and {id} differ ({} vs {} entries): {diff:?}",
                    ids[0],
                    first.len(),
                    other.len()
                );
            }
        }
        for (i, (key, v, tomb, expires)) in self.writes.iter().enumerate() {
            let expired = *expires != 0 && *expires + 3_000 < end;
            let fully_collected = *expires != 0 && *expires + 10_000 + 3_000 < end;
            if self.lost.contains(&i) {
                continue;
            }
            match first.get(key) {
                Some((held, _)) => assert!(
                    held >= v,
                    "seed {seed}: {key} held at {held:?}, older than write {v:?} (tombstone {tomb})"
                ),
                None => assert!(
                    expired,
                    "seed {seed}: {key} (write {v:?}, tombstone {tomb}) vanished"
                ),
            }
            if expired {
                assert!(
                    first.get(key).is_none_or(|(_, t)| *t),
                    "seed {seed}: {key} live after expiry"
                );
            }
            if fully_collected {
                assert!(!first.contains_key(key), "seed {seed}: {key} not collected");
            }
        }
        assert!(
            self.barriers_open.is_empty(),
            "seed {seed}: barriers without outcome: {:?}",
            self.barriers_open
        );
    }
}

fn run_seed(seed: u64) -> (usize, u64) {
    run_sim(Sim::new(seed), seed)
}

fn run_sim(mut sim: Sim, seed: u64) -> (usize, u64) {
    sim.sync_links();
    sim.run(T0 + 20_000, true);
    // Heal: every node up, every link up, no more loss.
    sim.cut.clear();
    for id in 1..=sim.n {
        if !sim.nodes.contains_key(&id) {
            sim.start(id);
        }
    }
    sim.sync_links();
    sim.loss = 0;
    sim.run(T0 + 60_000, false);
    // Quiet: let the last writes and repairs land.
    let quiet = sim.t + 5_000;
    while sim.t < quiet {
        sim.t += 1;
        sim.deliver();
        sim.timers();
    }
    sim.check(seed);
    (sim.writes.len(), sim.barriers_reached)
}

#[test]
fn converges_over_many_seeds() {
    let seeds: u64 = std::env::var("SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(40);
    let mut writes = 0;
    let mut reached = 0;
    for seed in 0..seeds {
        let (w, r) = run_seed(seed);
        writes += w;
        reached += r;
    }
    // The runs did something: many writes and some barriers reached.
    assert!(writes > seeds as usize * 100, "{writes} writes");
    assert!(reached > 0);
}

#[test]
fn partition_then_heal() {
    // A record written by a node cut off from all others reaches them
    // once the links come back (feed resumed from the cursors).
    let mut sim = Sim::new(12345);
    sim.loss = 0;
    sim.dup = 0;
    sim.sync_links();
    sim.run(sim.t + 1000, false);
    for b in 2..=sim.n {
        sim.cut.insert((1, b));
    }
    sim.sync_links();
    let now = sim.now(1);
    let v = sim
        .nodes
        .get_mut(&1)
        .unwrap()
        .publish(
            Key::PortSlice(7),
            Body::PortSlice(pb::PortSlice::default()),
            0,
            now,
        )
        .unwrap();
    sim.flush(1);
    let t = sim.t;
    sim.run(t + 2000, false);
    for b in 2..=sim.n {
        assert_eq!(sim.held(b, &Key::PortSlice(7)), None, "partitioned");
    }
    sim.cut.clear();
    sim.sync_links();
    let t = sim.t;
    sim.run(t + 3000, false);
    for b in 2..=sim.n {
        assert!(sim.held(b, &Key::PortSlice(7)) >= Some(v.order()));
    }
}

#[test]
fn relays_converge_over_many_seeds() {
    // Fan-out mode under the same chaos: relays and leaves are killed and
    // restarted, links cut, frames lost, duplicated and reordered.
    let seeds: u64 = std::env::var("SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(40);
    let mut writes = 0;
    let mut reached = 0;
    for seed in 0..seeds {
        let (w, r) = run_sim(Sim::fanout(seed), seed);
        writes += w;
        reached += r;
    }
    assert!(writes > seeds as usize * 100, "{writes} writes");
    assert!(reached > 0, "some barriers reached through relays");
}

impl Sim {
    /// Publishes `count` child SAs from `id` (no barrier).
    fn publish_many(&mut self, id: u16, count: u32) -> Vec<Key> {
        let mut keys = Vec::new();
        for _ in 0..count {
            let c = self.next_spi.entry(id).or_default();
            *c += 1;
            let spi = (u32::from(id) << 20) | (*c & 0xf_ffff);
            let now = self.now(id);
            let body = Body::ChildSa(pb::ChildSa {
                spi_in: spi,
                owner: u32::from(id),
                ..Default::default()
            });
            let node = self.nodes.get_mut(&id).expect("live");
            let v = node
                .publish(Key::ChildSa(spi), body, now + 3_000_000, now)
                .expect("valid");
            self.writes
                .push((Key::ChildSa(spi), v.order(), false, now + 3_000_000));
            keys.push(Key::ChildSa(spi));
            self.flush(id);
        }
        keys
    }

    fn quiet(&mut self, ms: u64) {
        let until = self.t + ms;
        while self.t < until {
            self.t += 1;
            self.deliver();
            self.timers();
        }
    }

    fn tables_equal(&self) -> bool {
        let table = |id: u16| -> BTreeMap<Key, (u64, u32)> {
            self.nodes[&id]
                .table()
                .entries()
                .map(|(k, e)| (k.clone(), e.version()))
                .collect()
        };
        let ids: Vec<u16> = self.nodes.keys().copied().collect();
        ids.iter().all(|&id| table(id) == table(ids[0]))
    }
}

#[test]
fn fresh_node_receives_each_record_about_once() {
    // Five nodes, four hold 4000 records of four origins; the fifth joins
    // empty. It takes one snapshot and then each origin's feed from where
    // the snapshot's cursors say: every record about once, not once per
    // path (the snapshot plus every origin's feed from 0 was twice).
    for seed in [1, 2, 3] {
        let mut sim = Sim::build(Rng(seed), 5, 0);
        sim.loss = 0;
        sim.dup = 0;
        // In order, as on a QUIC stream (reordering costs go-back-N resends,
        // which are not what this counts).
        sim.max_delay = 1;
        sim.nodes.remove(&5);
        sim.sync_links();
        for id in 1..=4 {
            sim.publish_many(id, 1000);
        }
        sim.quiet(3000);
        // Writes keep coming while it catches up.
        sim.start(5);
        sim.sync_links();
        let mut extra = 0;
        for _ in 0..20 {
            for id in 1..=4 {
                extra += sim.publish_many(id, 5).len();
            }
            sim.quiet(50);
        }
        sim.quiet(3000);
        let st = sim.nodes[&5].status();
        if !st.bootstrapped {
            eprintln!("{:#?}", st);
            eprintln!("{:#?}", sim.nodes[&1].status().peers);
        }
        assert!(
            sim.tables_equal(),
            "seed {seed}: converged ({} entries, bootstrapped {})",
            st.entries,
            st.bootstrapped
        );
        let total = (4000 + extra) as u64;
        let got = sim.nodes[&5].counters().records_received;
        assert!(
            got >= total && got <= total + total / 20,
            "seed {seed}: the fresh node received {got} records for {total}"
        );
        assert!(sim.nodes[&5].status().bootstrapped);
    }
}

#[test]
fn leaf_fails_over_to_its_second_relay() {
    // Relays 1, 2, 3; leaves 4.. with two relays each. Kill a leaf's
    // upstream: it follows its second relay from where its digests say it
    // stands (a few records, not the table again), and keeps replicating;
    // a barrier on every live node is reached through the relays.
    let mut sim = Sim::build(Rng(7), 9, 3);
    sim.loss = 0;
    sim.dup = 0;
    // Clocks agree (a barrier's ack_until_ms is a wall-clock deadline).
    for s in sim.skew.values_mut() {
        *s = 0;
    }
    sim.max_delay = 1;
    sim.sync_links();
    sim.quiet(500);
    for id in 4..=9 {
        sim.publish_many(id, 300);
    }
    sim.quiet(3000);
    assert!(sim.tables_equal());
    let leaf = 4;
    let up = sim.nodes[&leaf]
        .status()
        .peers
        .iter()
        .find(|p| p.upstream)
        .map(|p| p.peer)
        .expect("an upstream");
    let before = sim.nodes[&leaf].counters().records_received;
    sim.nodes.remove(&up);
    sim.sync_links();
    let fresh = sim.publish_many(9, 100).len() + sim.publish_many(leaf, 10).len();
    sim.quiet(3000);
    let st = sim.nodes[&leaf].status();
    let now_up = st.peers.iter().find(|p| p.upstream).map(|p| p.peer);
    assert!(
        now_up.is_some() && now_up != Some(up),
        "failed over: {now_up:?}"
    );
    assert_eq!(st.counters.failovers, 1);
    let got = st.counters.records_received - before;
    assert!(
        got <= fresh as u64 + 200,
        "after failover the leaf received {got} records for {fresh} new ones"
    );
    assert!(
        sim.tables_equal(),
        "live nodes converged without relay {up}"
    );
    // A barrier from a leaf on every other live node: acks come back
    // through the relays (the leaf talks to relays only).
    let now = sim.now(leaf);
    let live = (sim.nodes.len() - 1) as u16;
    let (_, b) = sim
        .nodes
        .get_mut(&leaf)
        .unwrap()
        .publish_with_barrier(
            Key::PortSlice(99),
            Body::PortSlice(pb::PortSlice::default()),
            0,
            WaitFor::Nodes(live),
            2000,
            now,
        )
        .unwrap();
    sim.barriers_open.insert((leaf, b.0));
    sim.quiet(2100);
    let outcome = sim
        .decided
        .iter()
        .find(|(n, x)| *n == leaf && x.id == b)
        .map(|(_, x)| x.clone());
    let outcome = outcome.expect("barrier decided");
    assert_eq!(outcome.outcome, BarrierOutcome::Reached, "{outcome:?}");
    assert_eq!(outcome.acked.len(), usize::from(live));
    // Restart the relay: it takes a snapshot and rejoins; all converge.
    sim.start(up);
    sim.sync_links();
    sim.publish_many(5, 50);
    sim.quiet(4000);
    assert!(sim.tables_equal(), "converged with relay {up} back");
}
