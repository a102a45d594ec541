//! The replicated table one node holds: key → newest version (a value or a
//! tombstone), with a local change feed and anti-entropy digests.
//!
//! # The change feed is the table itself
//!
//! Every change to the table takes the next local sequence number (lsn) and
//! moves its key to that lsn in [`Table::feed`]. A subscriber's whole state
//! is a cursor: "send me what changed after lsn L". Because a key lives at
//! one lsn only (its latest change), the feed is compacted by construction:
//! it never holds more than one item per key, whatever the write rate, and a
//! subscriber that falls behind simply reads the newest values when it gets
//! there. A lagging subscriber's "fallback to a snapshot" is the same code
//! path as a live one: memory per subscriber is a cursor and its in-flight
//! window, never a queue of records.
//!
//! # Expiry and tombstones
//!
//! Live entries carry an absolute expiry (a child SA's hard lifetime):
//! every node drops them then and refuses copies that arrive later. A
//! tombstone is kept until its entry's expiry plus `max_skew`, so no node
//! whose clock is within `max_skew` of ours can still hold — and spread — a
//! live copy after we forget the delete. Entries without a natural expiry
//! (IKE SA records, configuration) get `tombstone_ttl`; see docs/sa-sync.md
//! for what that bounds.

use crate::hlc;
use crate::key::{Fnv, Key};
use crate::pb;
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// Digest buckets: 8 KiB per digest, 1/1024 of the table per repaired bucket.
pub const BUCKETS: usize = 1024;

/// One entry.
#[derive(Clone, Debug)]
pub struct Entry {
    pub record: pb::Record,
    pub lsn: u64,
    /// Learned from a relay-to-relay feed (not offered to other relays again).
    pub from_relay: bool,
}

impl Entry {
    pub fn version(&self) -> (u64, u32) {
        self.record
            .version
            .as_ref()
            .map(pb::Version::order)
            .unwrap_or_default()
    }
    pub fn is_tombstone(&self) -> bool {
        is_tombstone(&self.record)
    }
    pub fn origin(&self) -> u16 {
        self.version().1 as u16
    }
}

pub fn is_tombstone(r: &pb::Record) -> bool {
    matches!(r.body, Some(pb::record::Body::Tombstone(_)))
}

/// What [`Table::apply`] did.
#[derive(Debug)]
pub enum Applied {
    /// The record replaced `old` (or filled an empty key).
    Changed { old: Option<Box<pb::Record>> },
    /// We already hold this version or a newer one.
    Stale,
    /// Live, but past its expiry (or a tombstone past its collection time).
    Expired,
}

/// Why a record was refused before it touched the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Malformed {
    NoVersion,
    NoKey,
    NoBody,
    /// The body does not belong under the key.
    KindMismatch,
    /// A live child SA without a (sane) expiry.
    BadExpiry,
    BadOrigin,
}

/// Limits that make expiry safe; see the module doc.
#[derive(Clone, Copy, Debug)]
pub struct Lifetimes {
    pub max_skew_ms: u64,
    pub tombstone_ttl_ms: u64,
    pub max_sa_lifetime_ms: u64,
}

#[derive(Debug)]
pub struct Table {
    entries: HashMap<Key, Entry>,
    feed: BTreeMap<u64, Key>,
    next_lsn: u64,
    buckets: Vec<u64>,
    /// (collection time ms, key): live entries at expiry, tombstones at
    /// expiry + skew.
    gc: BTreeSet<(u64, Key)>,
    live: usize,
    lifetimes: Lifetimes,
}

impl Table {
    pub fn new(lifetimes: Lifetimes) -> Table {
        Table {
            entries: HashMap::new(),
            feed: BTreeMap::new(),
            next_lsn: 1,
            buckets: vec![0; BUCKETS],
            gc: BTreeSet::new(),
            live: 0,
            lifetimes,
        }
    }

    pub fn get(&self, key: &Key) -> Option<&Entry> {
        self.entries.get(key)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn live_len(&self) -> usize {
        self.live
    }

    /// The newest lsn handed out (0: none).
    pub fn head(&self) -> u64 {
        self.next_lsn - 1
    }

    pub fn entries(&self) -> impl Iterator<Item = (&Key, &Entry)> {
        self.entries.iter()
    }

    /// Entries changed after `lsn`, in lsn order.
    pub fn feed_after(&self, lsn: u64) -> impl Iterator<Item = (u64, &Key, &Entry)> {
        self.feed
            .range(lsn + 1..)
            .map(|(&l, k)| (l, k, &self.entries[k]))
    }

    /// The next time [`Table::collect`] has something to do.
    pub fn next_gc(&self) -> Option<u64> {
        self.gc.first().map(|(t, _)| *t)
    }

    pub fn digest(&self) -> &[u64] {
        &self.buckets
    }

    pub fn bucket_of(key: &Key) -> usize {
        (key.stable_hash() % BUCKETS as u64) as usize
    }

    /// Entries whose key falls in one of `buckets` (sorted).
    pub fn in_buckets(&self, buckets: &[u32]) -> Vec<&Entry> {
        self.entries
            .iter()
            .filter(|(k, _)| buckets.binary_search(&(Self::bucket_of(k) as u32)).is_ok())
            .map(|(_, e)| e)
            .collect()
    }

    /// When this record's entry is collected (ms), if ever.
    fn gc_time(&self, r: &pb::Record) -> Option<u64> {
        let l = &self.lifetimes;
        if is_tombstone(r) {
            Some(if r.expires_ms != 0 {
                r.expires_ms.saturating_add(l.max_skew_ms)
            } else {
                let written = hlc::wall_ms(r.version.as_ref().map_or(0, |v| v.hlc));
                written.saturating_add(l.tombstone_ttl_ms)
            })
        } else if r.expires_ms != 0 {
            Some(r.expires_ms)
        } else {
            None
        }
    }

    /// Checks a record from the wire.
    pub fn validate(&self, r: &pb::Record, wall_ms: u64) -> Result<Key, Malformed> {
        let v = r.version.as_ref().ok_or(Malformed::NoVersion)?;
        if v.origin == 0 || v.origin > u32::from(anyhub_ike::MAX_NODE_INDEX) {
            return Err(Malformed::BadOrigin);
        }
        let key = r
            .key
            .as_ref()
            .and_then(Key::from_pb)
            .ok_or(Malformed::NoKey)?;
        let body = r.body.as_ref().ok_or(Malformed::NoBody)?;
        if !key.fits(body) {
            return Err(Malformed::KindMismatch);
        }
        if matches!(body, pb::record::Body::ChildSa(_)) {
            // A child SA lives at most its hard lifetime: an SA that never
            // expires could be resurrected after its tombstone is collected.
            let limit = wall_ms
                .saturating_add(self.lifetimes.max_sa_lifetime_ms)
                .saturating_add(self.lifetimes.max_skew_ms);
            if r.expires_ms == 0 || r.expires_ms > limit {
                return Err(Malformed::BadExpiry);
            }
        }
        Ok(key)
    }

    /// Applies a validated record: last writer wins by (hlc, origin).
    pub fn apply(
        &mut self,
        key: Key,
        record: pb::Record,
        from_relay: bool,
        wall_ms: u64,
    ) -> Applied {
        let version = record
            .version
            .as_ref()
            .map(pb::Version::order)
            .unwrap_or_default();
        if let Some(old) = self.entries.get(&key) {
            if old.version() >= version {
                return Applied::Stale;
            }
        }
        if self.gc_time(&record).is_some_and(|t| t <= wall_ms) {
            return Applied::Expired;
        }
        let lsn = self.next_lsn;
        self.next_lsn += 1;
        let bucket = Self::bucket_of(&key);
        let old = self.entries.remove(&key).map(|old| {
            self.feed.remove(&old.lsn);
            self.buckets[bucket] =
                self.buckets[bucket].wrapping_sub(contribution(&key, &old.record));
            if let Some(t) = self.gc_time(&old.record) {
                self.gc.remove(&(t, key.clone()));
            }
            if !old.is_tombstone() {
                self.live -= 1;
            }
            Box::new(old.record)
        });
        self.buckets[bucket] = self.buckets[bucket].wrapping_add(contribution(&key, &record));
        if let Some(t) = self.gc_time(&record) {
            self.gc.insert((t, key.clone()));
        }
        if !is_tombstone(&record) {
            self.live += 1;
        }
        self.feed.insert(lsn, key.clone());
        self.entries.insert(
            key,
            Entry {
                record,
                lsn,
                from_relay,
            },
        );
        Applied::Changed { old }
    }

    /// Drops what is due at `wall_ms`: expired live entries (returned, for
    /// the dataplane) and collectable tombstones.
    pub fn collect(&mut self, wall_ms: u64) -> Vec<(Key, pb::Record)> {
        let mut expired = Vec::new();
        while let Some((t, _)) = self.gc.first() {
            if *t > wall_ms {
                break;
            }
            let (_, key) = self.gc.pop_first().expect("first exists");
            let Some(e) = self.entries.remove(&key) else {
                continue;
            };
            self.feed.remove(&e.lsn);
            let b = Self::bucket_of(&key);
            self.buckets[b] = self.buckets[b].wrapping_sub(contribution(&key, &e.record));
            if !e.is_tombstone() {
                self.live -= 1;
                expired.push((key, e.record));
            }
        }
        expired
    }
}

/// An entry's share of its bucket's digest: a hash of key, version and
/// whether it is a tombstone (not of the value: one version has one value).
fn contribution(key: &Key, r: &pb::Record) -> u64 {
    let mut h = Fnv::new();
    h.bytes(&key.stable_hash().to_be_bytes());
    let (hlc, origin) = r
        .version
        .as_ref()
        .map(pb::Version::order)
        .unwrap_or_default();
    h.bytes(&hlc.to_be_bytes());
    h.bytes(&origin.to_be_bytes());
    h.byte(u8::from(is_tombstone(r)));
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    const L: Lifetimes = Lifetimes {
        max_skew_ms: 1000,
        tombstone_ttl_ms: 10_000,
        max_sa_lifetime_ms: 100_000,
    };

    fn rec(hlc_ms: u64, origin: u32, tomb: bool, expires: u64) -> pb::Record {
        pb::Record {
            version: Some(pb::Version {
                hlc: hlc_ms << 16,
                origin,
            }),
            key: Some(Key::PortSlice(1).to_pb()),
            expires_ms: expires,
            body: Some(if tomb {
                pb::record::Body::Tombstone(pb::Tombstone {})
            } else {
                pb::record::Body::PortSlice(pb::PortSlice::default())
            }),
            ..Default::default()
        }
    }

    #[test]
    fn last_writer_wins_and_feed_compacts() {
        let mut t = Table::new(L);
        let k = Key::PortSlice(1);
        assert!(matches!(
            t.apply(k.clone(), rec(10, 1, false, 0), false, 5),
            Applied::Changed { old: None }
        ));
        assert!(matches!(
            t.apply(k.clone(), rec(10, 1, false, 0), false, 5),
            Applied::Stale
        ));
        assert!(matches!(
            t.apply(k.clone(), rec(9, 2, false, 0), false, 5),
            Applied::Stale
        ));
        // Same hlc, higher origin wins.
        assert!(matches!(
            t.apply(k.clone(), rec(10, 2, false, 0), false, 5),
            Applied::Changed { old: Some(_) }
        ));
        assert_eq!(t.feed_after(0).count(), 1, "one key, one feed item");
        assert_eq!(t.feed_after(0).next().unwrap().0, 2);
        assert_eq!(t.head(), 2);
        // A tombstone wins over the older value and stays.
        assert!(matches!(
            t.apply(k.clone(), rec(11, 1, true, 0), false, 5),
            Applied::Changed { .. }
        ));
        assert_eq!(t.live_len(), 0);
        assert_eq!(t.len(), 1);
        // The stale install cannot come back.
        assert!(matches!(
            t.apply(k.clone(), rec(10, 3, false, 0), false, 5),
            Applied::Stale
        ));
        // Collected after the ttl (no expiry: written at 11 + 10 s).
        assert!(t.collect(10_010).is_empty());
        assert_eq!(t.len(), 1);
        t.collect(10_011);
        assert!(t.is_empty());
        assert_eq!(t.digest().iter().copied().fold(0u64, u64::wrapping_add), 0);
    }

    #[test]
    fn expiry_bounds_tombstones() {
        let mut t = Table::new(L);
        let k = Key::PortSlice(1);
        t.apply(k.clone(), rec(10, 1, false, 5000), false, 20);
        assert_eq!(t.collect(4999).len(), 0);
        assert_eq!(t.collect(5000).len(), 1);
        // A late copy of the expired entry is refused.
        assert!(matches!(
            t.apply(k.clone(), rec(10, 1, false, 5000), false, 5001),
            Applied::Expired
        ));
        // A tombstone of it lives until expiry + skew.
        t.apply(k.clone(), rec(12, 1, true, 5000), false, 20);
        t.collect(5999);
        assert_eq!(t.len(), 1);
        t.collect(6000);
        assert_eq!(t.len(), 0);
    }

    #[test]
    fn digests_follow_content() {
        let mut a = Table::new(L);
        let mut b = Table::new(L);
        a.apply(Key::PortSlice(1), rec(10, 1, false, 0), false, 5);
        assert_ne!(a.digest(), b.digest());
        b.apply(Key::PortSlice(1), rec(9, 1, false, 0), false, 5);
        assert_ne!(a.digest(), b.digest());
        b.apply(Key::PortSlice(1), rec(10, 1, false, 0), false, 5);
        assert_eq!(a.digest(), b.digest());
        let bucket = Table::bucket_of(&Key::PortSlice(1)) as u32;
        assert_eq!(a.in_buckets(&[bucket]).len(), 1);
    }
}
