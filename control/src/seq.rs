//! Outbound sequence numbers that survive a change of writer (DESIGN.md,
//! "many senders on one SA", anti-replay).
//!
//! Every node holds every child SA, and the node that receives a site's
//! traffic answers it with the SA's outbound half. The site's router keeps
//! one replay window per SA (RFC 4303 §3.4.3): a node that starts sending
//! on an SA at sequence number 1 after another node has sent 1000 packets
//! is dropped as a replay. So sequence space is handed over like a
//! database sequence cache:
//!
//! - **Reservations.** A node that sends on an SA publishes
//!   `Seq{spi_in, node} = sent + BLOCK` before it can get there: when it
//!   negotiates the SA (BLOCK, before any packet), and, checked every
//!   [`TICK`], whenever its counter comes within BLOCK/2 of its last
//!   reservation. A writer thus never numbers past what it has published,
//!   unless its sending outruns the tick (BLOCK/2 packets in 100 ms: 20
//!   Mpps on one SA).
//! - **Floors.** Every reservation another node published is a floor: an
//!   SA this node is not sending on is moved past it at once
//!   ([`OutboundSa::advance_to`], never backwards), so when traffic is
//!   steered here the first reply already numbers above anything the old
//!   writer used, and the site's window simply moves forward.
//! - **One writer at a time.** An SA this node sent on within [`IDLE`] is
//!   not moved (two nodes leapfrogging each other would burn the sequence
//!   space): the floor is applied once it has been idle that long. Two
//!   nodes sending on one SA at the same moment (ECMP split, a flapping
//!   route) still lose the lower writer's packets at the site; forwarding
//!   outbound packets to the SA's current writer is the cure, not built yet.
//!
//! What this cannot cover: a writer that dies less than a tick after it
//! first outran its published reservation (at most BLOCK/2 + one tick of
//! its packets may then be reused by the next writer, whose packets the
//! site drops until it passes them), and a bus partition during a
//! handover. IVs never repeat either way: they carry the node index
//! (`anyhub_dataplane::esp::iv`), independent of this.

use anyhub_dataplane::Sad;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Sequence numbers reserved ahead of a writer's counter.
pub const BLOCK: u64 = 1 << 22;
/// How often reservations and deferred floors are checked.
pub const TICK: Duration = Duration::from_millis(100);
/// An SA this node sent on this recently keeps its counter.
pub const IDLE: Duration = Duration::from_millis(500);
/// How long a floor for an SA that has not arrived here yet is kept (its
/// `Seq` record can overtake the `ChildSa` record of another origin).
const ORPHAN_FLOOR: Duration = Duration::from_secs(60);

/// One SA's sequence bookkeeping on this node.
#[derive(Default, Clone, Copy)]
struct Entry {
    /// The highest reservation another node (or an earlier run of ours)
    /// published.
    floor: u64,
    /// Our own last published reservation.
    reserved: u64,
    /// The counter as last seen, and after our own last jump.
    seen: u64,
    jumped_to: u64,
    /// When the counter last moved by our own sending.
    sent_at: Option<Instant>,
    /// Whether the SA has been in our database; if not, when its first
    /// floor arrived.
    installed: bool,
    floor_at: Option<Instant>,
}

#[derive(Default)]
pub struct SeqTable {
    entries: HashMap<u32, Entry>,
    /// Floors applied (an SA moved past another writer's reservation).
    pub jumps: u64,
    /// Floors that arrived while we were sending on the SA (applied later).
    pub deferred: u64,
    /// Reservations published.
    pub reservations: u64,
}

impl SeqTable {
    /// Another node's reservation arrived (from the bus, any time).
    pub fn floor(&mut self, sadb: &Sad, spi_in: u32, reserved: u64, now: Instant) {
        let e = self.entries.entry(spi_in).or_default();
        e.floor = e.floor.max(reserved);
        e.floor_at.get_or_insert(now);
        self.apply(sadb, spi_in, now);
    }

    /// A child SA was installed: floors that arrived before it apply now.
    pub fn installed(&mut self, sadb: &Sad, spi_in: u32, now: Instant) {
        if self.entries.get(&spi_in).is_some_and(|e| e.floor > 0) {
            self.apply(sadb, spi_in, now);
        }
    }

    fn apply(&mut self, sadb: &Sad, spi_in: u32, now: Instant) {
        let Some(e) = self.entries.get_mut(&spi_in) else {
            return;
        };
        let active = e.sent_at.is_some_and(|t| now.duration_since(t) < IDLE);
        sadb.read(|snap| {
            let Some(child) = snap.inbound(spi_in) else {
                return;
            };
            let sa = &child.outbound;
            if sa.sent() >= e.floor {
                return;
            }
            if active {
                self.deferred += 1;
                return;
            }
            sa.advance_to(e.floor);
            e.jumped_to = sa.sent();
            e.seen = e.jumped_to;
            self.jumps += 1;
            tracing::info!(
                spi_in = %format_args!("{spi_in:08x}"),
                to = e.jumped_to,
                "outbound sequence moved past another node's reservation"
            );
        });
    }

    /// We negotiated `spi_in`: the first reservation, before any packet.
    /// Returns the value to publish.
    pub fn reserve_new(&mut self, spi_in: u32) -> u64 {
        let e = self.entries.entry(spi_in).or_default();
        e.reserved = e.reserved.max(BLOCK);
        self.reservations += 1;
        e.reserved
    }

    /// Every [`TICK`]: notes which SAs we send on, applies deferred floors
    /// to idle ones, and returns the reservations to publish
    /// `(spi_in, reserved, the SA's remaining lifetime)`. Forgets SAs that
    /// left the database.
    pub fn tick(&mut self, sadb: &Sad, now: Instant) -> Vec<(u32, u64, Duration)> {
        let mut publish = Vec::new();
        let mut present = std::collections::HashSet::new();
        sadb.read(|snap| {
            for child in snap.children() {
                let spi_in = child.inbound.spi();
                present.insert(spi_in);
                let e = self.entries.entry(spi_in).or_default();
                e.installed = true;
                let sent = child.outbound.sent();
                if sent > e.seen.max(e.jumped_to) {
                    e.sent_at = Some(now);
                }
                e.seen = sent;
                // Only a writer reserves: an SA that merely jumped (we
                // are idle on it) must not answer the jump with a
                // reservation of its own, or idle nodes would leapfrog.
                let writing = e.sent_at.is_some_and(|t| now.duration_since(t) < IDLE);
                if writing && sent.saturating_add(BLOCK / 2) > e.reserved {
                    e.reserved = sent.saturating_add(BLOCK);
                    let info = child.outbound.info();
                    let remaining =
                        (info.installed_at + info.lifetime).saturating_duration_since(now);
                    // At least a minute: the record must outlive the SA.
                    publish.push((spi_in, e.reserved, remaining + Duration::from_secs(60)));
                }
            }
        });
        // Gone from the database: forgotten. Not there yet: its floor waits
        // a while for it.
        self.entries.retain(|spi, e| {
            present.contains(spi)
                || (!e.installed
                    && e.floor_at
                        .is_some_and(|t| now.duration_since(t) < ORPHAN_FLOOR))
        });
        self.reservations += publish.len() as u64;
        let pending: Vec<u32> = self
            .entries
            .iter()
            .filter(|(_, e)| e.floor > e.seen)
            .map(|(spi, _)| *spi)
            .collect();
        for spi in pending {
            self.apply(sadb, spi, now);
        }
        publish
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhub_crypto::Secret;
    use anyhub_dataplane::SadConfig;
    use anyhub_ike::proposal::{EncrAlg, Selected};
    use anyhub_ike::wire::registry::{EncrId, ProtocolId};
    use anyhub_ike::{ts, ChildSa, DirectionKeys, Event, IkeSaHandle};
    use std::sync::Arc;

    fn test_child(spi_in: u32) -> ChildSa {
        let keys = || DirectionKeys {
            encr: Secret::new(vec![0x5a; 36]),
            integ: None,
        };
        ChildSa {
            tunnel: Arc::from("site-a"),
            ike: IkeSaHandle(1),
            spi_in,
            spi_out: spi_in + 1,
            proposal: Selected {
                protocol: ProtocolId::ESP,
                num: 1,
                encr: EncrAlg {
                    id: EncrId::AES_GCM_16,
                    key_bits: 256,
                },
                prf: None,
                integ: None,
                dh: None,
                esn: false,
                peer_spi: (spi_in + 1).to_be_bytes().to_vec(),
            },
            keys_in: keys(),
            keys_out: keys(),
            local_ts: vec![ts::parse("10.20.0.0/24").unwrap()],
            remote_ts: vec![ts::parse("10.10.0.0/24").unwrap()],
            lifetime: Duration::from_secs(3600),
            local: "198.51.100.1:4500".parse().unwrap(),
            remote: "203.0.113.7:4500".parse().unwrap(),
            encap: true,
            rekey_of: None,
        }
    }

    fn sad_with_child(spi_in: u32) -> Sad {
        let sad = Sad::new(SadConfig::new(2));
        let child = test_child(spi_in);
        assert!(!matches!(
            sad.handle_event(Instant::now(), Event::ChildSaEstablished(Box::new(child))),
            anyhub_dataplane::Change::Refused { .. }
        ));
        sad
    }

    fn sent(sad: &Sad, spi: u32) -> u64 {
        sad.read(|s| s.inbound(spi).unwrap().outbound.sent())
    }

    fn send(sad: &Sad, spi: u32, n: u64) {
        let now = sent(sad, spi);
        // The counter is what encrypt moves; advancing it is the same
        // observable effect for this bookkeeping.
        sad.read(|s| s.inbound(spi).unwrap().outbound.advance_to(now + n));
    }

    #[test]
    fn an_idle_sa_jumps_past_a_floor_at_once() {
        let sad = sad_with_child(7);
        let mut t = SeqTable::default();
        let now = Instant::now();
        t.floor(&sad, 7, BLOCK, now);
        assert_eq!(sent(&sad, 7), BLOCK);
        assert_eq!(t.jumps, 1);
        // A lower floor never moves it back.
        t.floor(&sad, 7, 10, now);
        assert_eq!(sent(&sad, 7), BLOCK);
        // The jump is not mistaken for our own sending: no reservation.
        assert!(t.tick(&sad, now + TICK).is_empty());
    }

    #[test]
    fn a_floor_before_the_sa_applies_at_install() {
        let sad = Sad::new(SadConfig::new(2));
        let mut t = SeqTable::default();
        let now = Instant::now();
        t.floor(&sad, 9, 5000, now);
        // Ticks before the SA arrives keep its floor.
        t.tick(&sad, now + TICK);
        let child = test_child(9);
        sad.handle_event(now, Event::ChildSaEstablished(Box::new(child)));
        t.installed(&sad, 9, now);
        assert_eq!(sent(&sad, 9), 5000);
    }

    #[test]
    fn a_sending_sa_reserves_ahead_and_defers_floors() {
        let sad = sad_with_child(7);
        let mut t = SeqTable::default();
        let t0 = Instant::now();
        assert_eq!(t.reserve_new(7), BLOCK);
        assert!(t.tick(&sad, t0).is_empty(), "nothing sent yet");
        send(&sad, 7, 100);
        assert!(
            t.tick(&sad, t0 + TICK).is_empty(),
            "100 is far below BLOCK/2"
        );
        send(&sad, 7, BLOCK / 2);
        let r = t.tick(&sad, t0 + 2 * TICK);
        assert_eq!(
            r.iter().map(|(s, v, _)| (*s, *v)).collect::<Vec<_>>(),
            vec![(7, 100 + BLOCK / 2 + BLOCK)]
        );
        // Another node's reservation while we send: deferred, not applied.
        let theirs = 10 * BLOCK;
        t.floor(&sad, 7, theirs, t0 + 2 * TICK);
        assert_eq!(t.deferred, 1);
        assert!(sent(&sad, 7) < theirs);
        // Idle for IDLE: the tick applies it.
        t.tick(&sad, t0 + 2 * TICK + IDLE);
        assert_eq!(sent(&sad, 7), theirs);
        assert_eq!(t.jumps, 1);
    }

    #[test]
    fn idle_nodes_do_not_leapfrog() {
        // Two nodes' tables over one SA each, exchanging what they publish.
        let (sad1, sad2) = (sad_with_child(7), sad_with_child(7));
        let (mut t1, mut t2) = (SeqTable::default(), SeqTable::default());
        let t0 = Instant::now();
        t1.reserve_new(7);
        send(&sad1, 7, 10);
        t1.tick(&sad1, t0);
        // Node 1 stops; node 2 takes the traffic after node 1's floor.
        t2.floor(&sad2, 7, BLOCK, t0);
        send(&sad2, 7, 10);
        let mut published = 0;
        for i in 1..50u32 {
            let now = t0 + TICK * i;
            for (_, r, _) in t2.tick(&sad2, now) {
                published += 1;
                t1.floor(&sad1, 7, r, now);
            }
            for (_, r, _) in t1.tick(&sad1, now) {
                published += 1;
                t2.floor(&sad2, 7, r, now);
            }
        }
        assert_eq!(published, 1, "only node 2's one reservation");
        assert_eq!(sent(&sad1, 7), BLOCK + 10 + BLOCK, "node 1 moved past it");
        assert_eq!(sent(&sad2, 7), BLOCK + 10);
    }

    #[test]
    fn forgets_removed_sas() {
        let sad = sad_with_child(7);
        let mut t = SeqTable::default();
        t.reserve_new(7);
        sad.remove(7);
        t.tick(&sad, Instant::now());
        assert!(t.entries.is_empty());
    }
}
